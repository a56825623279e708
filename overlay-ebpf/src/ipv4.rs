//! IPv4 helpers.
use network_types::ip::Ipv4Hdr;
use overlay_common::wire::IPV4_HLEN;

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

/// Internet checksum of a 20-byte header whose checksum field is zero.
#[inline(always)]
pub fn header_checksum(h: &[u8; IPV4_HLEN]) -> u16 {
    let mut sum: u32 = 0;
    let mut i = 0;
    while i < IPV4_HLEN {
        sum += u16::from_be_bytes([h[i], h[i + 1]]) as u32;
        i += 2;
    }
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    !(sum as u16)
}
