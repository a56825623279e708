//! Wire constants (RFC 7348 VXLAN over IPv4/UDP), used by programs, agent and tests alike.

/// IANA VXLAN port.
pub const VXLAN_PORT: u16 = 4789;
pub const ETH_HLEN: usize = 14;
pub const IPV4_HLEN: usize = 20;
pub const UDP_HLEN: usize = 8;
pub const VXLAN_HLEN: usize = 8;
/// Bytes added in front of the inner Ethernet frame: outer Ethernet + IPv4 + UDP + VXLAN.
/// Equals the space added by encapsulation behind the (reused) Ethernet header: IPv4 + UDP +
/// VXLAN + inner Ethernet.
pub const VXLAN_ENCAP_LEN: usize = IPV4_HLEN + UDP_HLEN + VXLAN_HLEN + ETH_HLEN;
/// VXLAN flags byte with the I (valid VNI) bit.
pub const VXLAN_FLAG_I: u8 = 0x08;
/// Largest VNI (24 bits).
pub const MAX_VNI: u32 = 0x00ff_ffff;
/// Default container MTU on a 1500-byte underlay.
pub const DEFAULT_OVERLAY_MTU: u32 = 1450;
/// TTL of the outer IPv4 header (the kernel vxlan driver's default).
pub const OUTER_TTL: u8 = 64;

pub const ETH_P_IP: u16 = 0x0800;
pub const ETH_P_ARP: u16 = 0x0806;
pub const ETH_P_8021Q: u16 = 0x8100;
pub const ETH_P_8021AD: u16 = 0x88A8;
pub const IPPROTO_UDP: u8 = 17;
pub const IPPROTO_TCP: u8 = 6;
pub const ARP_OP_REQUEST: u16 = 1;
pub const ARP_OP_REPLY: u16 = 2;

/// TC verdicts as userspace sees them in `BPF_PROG_TEST_RUN` results (the programs use aya's
/// bindings of the same uapi values).
pub const TC_ACT_OK: i32 = 0;
pub const TC_ACT_SHOT: i32 = 2;
pub const TC_ACT_REDIRECT: i32 = 7;
/// XDP verdicts, likewise (`enum xdp_action`).
pub const XDP_DROP: i32 = 1;
pub const XDP_PASS: i32 = 2;
pub const XDP_REDIRECT: i32 = 4;

/// The 32-bit "VNI + reserved" word of the VXLAN header, host order (`vni << 8`).
#[inline(always)]
pub const fn vxlan_vni_field(vni: u32) -> u32 {
    (vni & MAX_VNI) << 8
}
