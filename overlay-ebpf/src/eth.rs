//! Ethernet helpers.
use network_types::eth::EthHdr;
use overlay_common::wire::{ETH_P_8021AD, ETH_P_8021Q};

#[inline(always)]
pub fn ethertype(eth: &EthHdr) -> u16 {
    u16::from_be(eth.ether_type)
}

#[inline(always)]
pub fn is_vlan(ethertype: u16) -> bool {
    ethertype == ETH_P_8021Q || ethertype == ETH_P_8021AD
}

/// Broadcast and multicast MACs have the group bit set.
#[inline(always)]
pub fn is_group(mac: &[u8; 6]) -> bool {
    mac[0] & 1 != 0
}
