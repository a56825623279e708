//! IPv4 helpers.
use network_types::ip::Ipv4Hdr;

/// Header length in bytes, from the IHL field.
#[inline(always)]
pub fn header_len(ip: &Ipv4Hdr) -> usize {
    ((ip.vihl & 0x0f) as usize) * 4
}

#[inline(always)]
pub fn version(ip: &Ipv4Hdr) -> u8 {
    ip.vihl >> 4
}

/// The fragment-offset and more-fragments bits (DF masked out).
#[inline(always)]
pub fn frag_bits(ip: &Ipv4Hdr) -> u16 {
    u16::from_be_bytes(ip.frags) & 0x3fff
}

/// Fragment offset alone: non-zero for every fragment but the first.
#[inline(always)]
pub fn frag_offset(ip: &Ipv4Hdr) -> u16 {
    u16::from_be_bytes(ip.frags) & 0x1fff
}
