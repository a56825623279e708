//! Frame builders: the benchmark's test-run inputs and the tests' exact frames.
use std::net::Ipv4Addr;

pub fn ipv4_checksum(h: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    for c in h.chunks(2) {
        sum += u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]) as u32;
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// An Ethernet header.
pub fn eth(dst: [u8; 6], src: [u8; 6], ethertype: u16) -> Vec<u8> {
    let mut v = Vec::with_capacity(14);
    v.extend_from_slice(&dst);
    v.extend_from_slice(&src);
    v.extend_from_slice(&ethertype.to_be_bytes());
    v
}

/// An IPv4 header (20 bytes, or more with `options`) with a correct checksum.
pub fn ipv4(src: Ipv4Addr, dst: Ipv4Addr, proto: u8, payload_len: usize, frags: u16, options: &[u8]) -> Vec<u8> {
    let hlen = 20 + options.len();
    let mut h = vec![0u8; hlen];
    h[0] = 0x40 | (hlen / 4) as u8;
    h[2..4].copy_from_slice(&((hlen + payload_len) as u16).to_be_bytes());
    h[6..8].copy_from_slice(&frags.to_be_bytes());
    h[8] = 64;
    h[9] = proto;
    h[12..16].copy_from_slice(&src.octets());
    h[16..20].copy_from_slice(&dst.octets());
    h[20..].copy_from_slice(options);
    let c = ipv4_checksum(&h);
    h[10..12].copy_from_slice(&c.to_be_bytes());
    h
}

/// A UDP header with checksum 0.
pub fn udp(sport: u16, dport: u16, payload_len: usize) -> Vec<u8> {
    let mut h = Vec::with_capacity(8);
    h.extend_from_slice(&sport.to_be_bytes());
    h.extend_from_slice(&dport.to_be_bytes());
    h.extend_from_slice(&((8 + payload_len) as u16).to_be_bytes());
    h.extend_from_slice(&[0, 0]);
    h
}

pub fn vxlan(flags: u8, vni: u32) -> Vec<u8> {
    let v = (vni << 8).to_be_bytes();
    vec![flags, 0, 0, 0, v[0], v[1], v[2], v[3]]
}

/// An ARP body for Ethernet/IPv4.
pub fn arp(op: u16, sha: [u8; 6], spa: Ipv4Addr, tha: [u8; 6], tpa: Ipv4Addr) -> Vec<u8> {
    let mut v = vec![0, 1, 8, 0, 6, 4];
    v.extend_from_slice(&op.to_be_bytes());
    v.extend_from_slice(&sha);
    v.extend_from_slice(&spa.octets());
    v.extend_from_slice(&tha);
    v.extend_from_slice(&tpa.octets());
    v
}

/// A whole VXLAN frame around `inner`, outer src -> dst.
pub fn vxlan_frame(src: Ipv4Addr, dst: Ipv4Addr, dport: u16, flags: u8, vni: u32, inner: &[u8]) -> Vec<u8> {
    let mut f = eth([0xaa; 6], [0xbb; 6], 0x0800);
    f.extend(ipv4(src, dst, 17, 8 + 8 + inner.len(), 0, &[]));
    f.extend(udp(40000, dport, 8 + inner.len()));
    f.extend(vxlan(flags, vni));
    f.extend_from_slice(inner);
    f
}
