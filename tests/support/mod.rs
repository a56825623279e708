//! Helpers shared by the integration tests: a pin-directory guard, the kernel's capture, and
//! frame builders.
#![allow(dead_code, reason = "each test file uses a different part of this module")]

use std::{
    net::Ipv4Addr,
    path::PathBuf,
    sync::atomic::{AtomicU32, Ordering},
};

use overlay::dataplane::{self, Dataplane};

pub const OVERLAY_BIN: &str = env!("CARGO_BIN_EXE_overlay");

pub fn require_root() {
    // SAFETY: getuid has no preconditions.
    assert_eq!(unsafe { libc::getuid() }, 0, "these tests load eBPF programs and need root (run `cargo xtask test`)");
}

static SEQ: AtomicU32 = AtomicU32::new(0);

/// A freshly loaded datapath in a unique pin directory, removed on drop.
pub struct TestDataplane {
    pub dp: Dataplane,
    dir: PathBuf,
}

impl TestDataplane {
    pub fn new(tag: &str) -> Self {
        require_root();
        let root = dataplane::host_bpffs().expect("bpffs");
        let dir = root.join("overlay").join(format!("test-{tag}-{}-{}", std::process::id(), SEQ.fetch_add(1, Ordering::Relaxed)));
        let dp = Dataplane::load(&dir).unwrap_or_else(|e| panic!("loading the datapath into {}: {e}", dir.display()));
        TestDataplane { dp, dir }
    }
}

impl Drop for TestDataplane {
    fn drop(&mut self) {
        if let Err(e) = dataplane::remove_pins(&self.dir) {
            eprintln!("cleanup of {}: {e:?}", self.dir.display());
        }
    }
}

/// Frames of the kernel capture (tests/data/kernel-vxlan.pcap), in order.
pub fn kernel_frames() -> Vec<Vec<u8>> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/data/kernel-vxlan.pcap");
    let f = std::fs::File::open(path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let mut r = pcap_file::pcap::PcapReader::new(f).expect("a pcap file");
    let mut out = Vec::new();
    while let Some(p) = r.next_packet() {
        out.push(p.expect("a readable packet").data.into_owned());
    }
    out
}

pub fn outer_src(frame: &[u8]) -> Ipv4Addr {
    Ipv4Addr::new(frame[26], frame[27], frame[28], frame[29])
}

pub fn mac(s: &str) -> [u8; 6] {
    s.parse::<overlay::config::Mac>().expect("valid MAC").0
}

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
