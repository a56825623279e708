//! ARP for Ethernet/IPv4 (RFC 826), the only kind the overlay answers.

/// The 28-byte Ethernet/IPv4 ARP body.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct EthArp {
    pub htype: [u8; 2],
    pub ptype: [u8; 2],
    pub hlen: u8,
    pub plen: u8,
    pub oper: [u8; 2],
    pub sha: [u8; 6],
    pub spa: [u8; 4],
    pub tha: [u8; 6],
    pub tpa: [u8; 4],
}

impl EthArp {
    /// Ethernet hardware, IPv4 protocol, 6- and 4-byte addresses.
    #[inline(always)]
    pub fn is_eth_ipv4(&self) -> bool {
        self.htype == [0, 1] && self.ptype == [0x08, 0x00] && self.hlen == 6 && self.plen == 4
    }
}
