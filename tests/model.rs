//! The loaded programs against the reference model (`overlay::lab::reference`): random map
//! contents and random frames (valid ones, ones cut at every header, random flags, VNIs,
//! addresses that are and are not in the tables) go through `BPF_PROG_TEST_RUN` of the egress,
//! TC ingress and XDP ingress programs; the return value, the counter that moved and every
//! output byte must be what the model says.
//!
//! A fixed seed and 20,000 cases by default (`OVERLAY_MODEL_CASES`, `OVERLAY_MODEL_SEED` change
//! them; `cargo xtask fuzz` runs many more). A disagreement prints the seed, the case, the
//! frame and the maps, enough to replay it.
mod support;

use std::net::Ipv4Addr;

use overlay::{
    control::desired::{MapState, PerVni},
    dataplane::{PROG_EGRESS, PROG_INGRESS, PROG_XDP},
    lab::{frames, reference},
};
use overlay_common::{
    Direction, EndpointInfo, FdbEntry, FdbKey, MemberInfo, NeighEntry, NeighKey, NodeConfig, Reason, SubnetInfo, VNI_F_INTERNAL, VniInfo, ip_to_map,
};
use support::*;

/// The endpoint's host-side ifindex as a test run sees it (the skb comes in on `lo`).
const TEST_RUN_IFINDEX: u32 = 1;
/// Map contents are drawn anew every this many cases.
const CASES_PER_STATE: u64 = 100;

/// xorshift64*: small, fast, and the same sequence on every machine for a seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    /// True `pct` percent of the time.
    fn chance(&mut self, pct: u64) -> bool {
        self.below(100) < pct
    }
    fn pick<T: Copy>(&mut self, from: &[T]) -> T {
        from[self.below(from.len() as u64) as usize]
    }
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

fn a(s: &str) -> Ipv4Addr {
    s.parse().expect("ip")
}

/// The pools everything is drawn from: small, so that lookups hit as often as they miss.
struct Pools {
    vteps: Vec<u32>,
    vnis: Vec<u32>,
    macs: Vec<[u8; 6]>,
    ips: Vec<u32>,
}

fn pools() -> Pools {
    let ip = |s: &str| ip_to_map(a(s).octets());
    Pools {
        vteps: ["192.168.50.1", "192.168.50.2", "192.168.50.3", "10.9.9.9"].iter().map(|s| ip(s)).collect(),
        vnis: vec![4097, 4098, 5000, 1, 0xff_ffff],
        macs: vec![
            [0x02, 0x42, 10, 0, 1, 2],
            [0x02, 0x42, 10, 0, 1, 3],
            [0x02, 0x42, 10, 0, 1, 4],
            [0x02, 0x42, 10, 0, 2, 2],
            [0x02, 0x42, 10, 0, 1, 1],
            [0xff; 6],
            [0x01, 0x00, 0x5e, 0, 0, 1],
            [0x02, 0, 0, 0, 0, 0x99],
        ],
        ips: ["10.0.1.2", "10.0.1.3", "10.0.1.4", "10.0.2.2", "10.0.1.1", "8.8.8.8", "0.0.0.0", "192.168.50.1", "10.0.1.99"]
            .iter()
            .map(|s| ip(s))
            .collect(),
    }
}

/// Random map contents within the model's scope (no services, names or mesh).
fn random_state(r: &mut Rng, p: &Pools) -> (MapState, Vec<u32>) {
    let mut s = MapState {
        config: NodeConfig {
            vtep: if r.chance(90) { p.vteps[1] } else if r.chance(50) { 0 } else { r.pick(&p.vteps) },
            underlay_ifindex: TEST_RUN_IFINDEX,
            vxlan_port: if r.chance(90) { 4789 } else { 8472 },
            flags: 0,
            src_port_min: 32768,
            src_port_range: 28232,
        },
        ..Default::default()
    };
    for &vni in &p.vnis {
        if r.chance(70) {
            let mtu = r.pick(&[0u32, 1450, 9000]);
            let flags = if r.chance(20) { VNI_F_INTERNAL } else { 0 };
            s.vnis.insert(vni, VniInfo { mtu, flags });
        }
    }
    for &v in &p.vteps {
        if r.chance(60) {
            s.members.insert(v, MemberInfo { node_id: r.below(8) as u32, _pad: 0 });
        }
    }
    let mut fdb = PerVni::default();
    for _ in 0..r.below(25) {
        let (vni, mac) = (r.pick(&p.vnis), r.pick(&p.macs));
        let kind = r.pick(&[1u32, 2, 2, 2, 3, 0, 9]);
        let ifindex = if r.chance(80) { TEST_RUN_IFINDEX } else { r.below(50) as u32 };
        fdb.insert(vni, FdbKey::new(vni, mac), FdbEntry { kind, ifindex, vtep: r.pick(&p.vteps), _pad: 0 });
    }
    s.fdb = fdb;
    let mut neigh = PerVni::default();
    for _ in 0..r.below(12) {
        let vni = r.pick(&p.vnis);
        neigh.insert(vni, NeighKey { vni, ip: r.pick(&p.ips) }, NeighEntry { mac: r.pick(&p.macs), _pad: [0; 2] });
    }
    if r.chance(90) {
        let flags = if r.chance(20) { overlay_common::EP_F_MULTI_NETWORK } else { 0 };
        let ep = EndpointInfo { vni: r.pick(&p.vnis), ip: r.pick(&p.ips), mac: r.pick(&p.macs), flags, _pad: 0 };
        s.endpoints.insert(TEST_RUN_IFINDEX, ep);
        // Most of the time its network has a gateway, as every network does.
        if r.chance(70) {
            let (gw, gw_mac) = (ip_to_map([10, 0, 1, 1]), [0x02, 0x42, 10, 0, 1, 1]);
            s.fdb.insert(ep.vni, FdbKey::new(ep.vni, gw_mac), FdbEntry::gateway());
            neigh.insert(ep.vni, NeighKey { vni: ep.vni, ip: gw }, NeighEntry { mac: gw_mac, _pad: [0; 2] });
        }
    }
    s.neigh = neigh;
    for (net, len) in [("10.0.1.0", 24), ("10.0.2.0", 24), ("10.0.0.0", 16), ("8.8.8.0", 24), ("0.0.0.0", 0)] {
        if r.chance(if len == 0 { 5 } else { 50 }) {
            s.subnets.insert((ip_to_map(a(net).octets()), len), SubnetInfo { vni: r.pick(&p.vnis), _pad: 0 });
        }
    }
    let targets = if r.chance(70) { vec![TEST_RUN_IFINDEX] } else { Vec::new() };
    (s, targets)
}

/// An Ethernet frame a container might send (or one inside VXLAN), drawn around the state:
/// IPv4 (with odd headers now and then), ARP, VLAN and other ethertypes.
fn inner_frame(r: &mut Rng, p: &Pools, s: &MapState) -> Vec<u8> {
    let ep = s.endpoints.get(&TEST_RUN_IFINDEX).copied();
    let src_mac = match ep {
        Some(e) if r.chance(85) => e.mac,
        _ => r.pick(&p.macs),
    };
    let src_ip = match ep {
        Some(e) if r.chance(85) => e.ip,
        _ => r.pick(&p.ips),
    };
    let ethertype = match r.below(100) {
        0..=69 => 0x0800,
        70..=84 => 0x0806,
        85..=88 => 0x8100,
        89..=92 => 0x86dd,
        _ => r.next() as u16,
    };
    // A destination the tables know (an address and its MAC) a third of the time.
    let known: Vec<(u32, [u8; 6])> = s.neigh.iter().map(|(k, v)| (k.ip, v.mac)).collect();
    let (dst_ip, dst_mac) = match known.len() {
        n if n > 0 && r.chance(35) => known[r.below(n as u64) as usize],
        _ => (r.pick(&p.ips), r.pick(&p.macs)),
    };
    let mut f = frames::eth(dst_mac, src_mac, ethertype);
    let octets = |v: u32| Ipv4Addr::from(v.to_ne_bytes());
    match ethertype {
        0x0806 => {
            let op = if r.chance(85) { 1 } else { r.pick(&[2u16, 3]) };
            let sha = if r.chance(85) { src_mac } else { r.pick(&p.macs) };
            let spa = if r.chance(80) { src_ip } else { r.pick(&p.ips) };
            let tpa = if r.chance(50) { dst_ip } else { r.pick(&p.ips) };
            let mut body = frames::arp(op, sha, octets(spa), [0; 6], octets(tpa));
            if r.chance(5) {
                body[r.below(6) as usize] ^= 1; // not Ethernet/IPv4
            }
            f.extend(body);
        }
        0x0800 => {
            let proto = r.pick(&[1u8, 6, 17, 17, 47]);
            let payload = r.below(48) as usize;
            let options: Vec<u8> = if r.chance(5) { vec![1; 4] } else { Vec::new() };
            let frags = r.pick(&[0u16, 0x4000, 0x4000, 0x2000, 0x0010, 0x2010]);
            let mut iph = frames::ipv4(octets(src_ip), octets(dst_ip), proto, payload, frags, &options);
            if r.chance(3) {
                iph[0] = r.next() as u8; // any version and header length
            }
            f.extend(iph);
            let dport = if r.chance(30) { 53 } else { r.below(65536) as u16 };
            let mut l4 = frames::udp(r.below(65536) as u16, dport, payload.saturating_sub(8));
            l4.truncate(payload);
            f.extend(&l4);
            f.extend(r.bytes(payload - l4.len()));
        }
        _ => {
            let n = r.below(40) as usize;
            f.extend(r.bytes(n));
        }
    }
    f
}

/// A frame from the underlay: mostly VXLAN to this node's port, with every field varied.
fn underlay_frame(r: &mut Rng, p: &Pools, s: &MapState) -> Vec<u8> {
    let mut inner = inner_frame(r, p, s);
    if r.chance(3) {
        inner.extend(r.bytes(1500)); // larger than one frame of the network
    }
    let dst = if r.chance(85) { Ipv4Addr::from(s.config.vtep.to_ne_bytes()) } else { Ipv4Addr::from(r.pick(&p.vteps).to_ne_bytes()) };
    let mut src = Ipv4Addr::from(r.pick(&p.vteps).to_ne_bytes());
    let mut vni = r.pick(&p.vnis);
    // Often a sender the tables know: a remote MAC behind its VTEP, to a local MAC of its VNI.
    let remote: Vec<(FdbKey, FdbEntry)> = s.fdb.iter().filter(|(_, e)| e.kind == overlay_common::FDB_REMOTE).map(|(k, e)| (*k, *e)).collect();
    if !remote.is_empty() && inner.len() >= 14 && r.chance(40) {
        let (k, e) = remote[r.below(remote.len() as u64) as usize];
        (src, vni) = (Ipv4Addr::from(e.vtep.to_ne_bytes()), k.vni);
        inner[6..12].copy_from_slice(&k.mac);
        let local: Vec<FdbKey> = s.fdb.iter().filter(|(l, e)| l.vni == k.vni && e.kind == overlay_common::FDB_LOCAL).map(|(l, _)| *l).collect();
        if !local.is_empty() && r.chance(70) {
            inner[0..6].copy_from_slice(&local[r.below(local.len() as u64) as usize].mac);
        }
    }
    let port = if r.chance(90) { s.config.vxlan_port } else { r.pick(&[4789u16, 8472, 53]) };
    let flags = if r.chance(90) { 0x08 } else { r.next() as u8 };
    let mut f = frames::vxlan_frame(src, dst, port, flags, vni, &inner);
    if r.chance(10) {
        f[49] = r.pick(&[1u8, 2, 3, 0xff]); // the routing mesh's mark, or garbage
    }
    match r.below(100) {
        0..=4 => f[23] = r.pick(&[6u8, 1, 47]),      // not UDP
        5..=8 => f[20..22].copy_from_slice(&r.pick(&[0x2000u16, 0x0008, 0x2008]).to_be_bytes()), // fragments
        9..=10 => f[12..14].copy_from_slice(&0x86ddu16.to_be_bytes()),
        11..=12 => f[14] = r.pick(&[0x44u8, 0x55]), // short header, version 5
        13..=14 => {
            // Options: the UDP header moves 4 bytes back, behind them.
            f[14] = 0x46;
            f.splice(34..34, [1, 1, 1, 1]);
        }
        _ => {}
    }
    f
}

#[test]
fn programs_agree_with_the_reference_model() {
    let cases: u64 = std::env::var("OVERLAY_MODEL_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(20_000);
    let seed: u64 = std::env::var("OVERLAY_MODEL_SEED").ok().and_then(|v| v.parse().ok()).unwrap_or(0x5eed_0f0b_e1a7);
    let mut t = TestDataplane::new("model");
    let mut r = Rng(seed | 1);
    let p = pools();
    let (mut state, mut targets) = (MapState::default(), Vec::new());
    let mut seen: std::collections::BTreeMap<(&str, &str), u64> = Default::default();
    let mut refused = 0u64;
    for case in 0..cases {
        if case % CASES_PER_STATE == 0 {
            (state, targets) = random_state(&mut r, &p);
            assert!(reference::in_scope(&state));
            t.dp.apply(&state).unwrap_or_else(|e| panic!("case {case}: applying the maps: {e}"));
            t.dp.set_xdp_targets(&targets).unwrap_or_else(|e| panic!("case {case}: devmap: {e}"));
        }
        let hook = r.below(3);
        let mut frame = if hook == 0 { inner_frame(&mut r, &p, &state) } else { underlay_frame(&mut r, &p, &state) };
        // Cut at a random place now and then: every header gets its truncated cases. A test
        // run needs at least an Ethernet header.
        if r.chance(15) && frame.len() > 14 {
            frame.truncate(14 + r.below(frame.len() as u64 - 14) as usize);
        }
        if r.chance(5) {
            let i = r.below(frame.len() as u64) as usize;
            frame[i] ^= 1 << r.below(8);
        }
        let (prog, dir, want) = match hook {
            0 => (PROG_EGRESS, Direction::Egress, reference::egress(&state, TEST_RUN_IFINDEX, &frame)),
            1 => (PROG_INGRESS, Direction::Ingress, reference::ingress(&state, &frame)),
            _ => (PROG_XDP, Direction::Xdp, reference::xdp(&state, &targets, &frame)),
        };
        let before = t.dp.counter(want.reason, dir).expect("counter");
        let (action, out) = match t.dp.test_run(prog, &frame, 1) {
            Ok((action, out, _)) => (action, out),
            // The kernel builds no skb for an IPv4 frame without a whole IPv4 header (nor an
            // IPv6 one without 40 bytes): such frames cannot be test-run, only counted here.
            Err(_) if hook != 2 && kernel_refuses(&frame) => {
                refused += 1;
                continue;
            }
            Err(e) => panic!("case {case}: test run of {prog} on {} ({} bytes): {e:?}", hex(&frame), frame.len()),
        };
        let after = t.dp.counter(want.reason, dir).expect("counter");
        let counted = after.packets - before.packets;
        if action != want.action || out != want.bytes || counted != 1 {
            panic!(
                "case {case} (seed {seed}): {prog} disagrees with the model\n\
                 model: action {} reason {} ({} bytes)\n\
                 program: action {action}, counter {} moved by {counted} ({} bytes)\n\
                 frame:   {}\nmodel:   {}\nprogram: {}\nmaps: {state:#?}\nxdp targets: {targets:?}",
                want.action,
                want.reason.name(),
                want.bytes.len(),
                want.reason.name(),
                out.len(),
                hex(&frame),
                hex(&want.bytes),
                hex(&out)
            );
        }
        *seen.entry((dir.name(), want.reason.name())).or_default() += 1;
    }
    // The generator must reach the decisions, not only the first checks: every verdict of the
    // model's scope is seen (a generator that only makes garbage would pass trivially).
    let want = [
        (Direction::Egress, Reason::FwdLocal),
        (Direction::Egress, Reason::FwdEncap),
        (Direction::Egress, Reason::FwdGateway),
        (Direction::Egress, Reason::FwdResolver),
        (Direction::Egress, Reason::ArpReply),
        (Direction::Egress, Reason::SpoofedMac),
        (Direction::Egress, Reason::SpoofedIp),
        (Direction::Egress, Reason::Broadcast),
        (Direction::Egress, Reason::UnknownDestination),
        (Direction::Egress, Reason::ArpUnanswered),
        (Direction::Egress, Reason::GatewayOverlay),
        (Direction::Egress, Reason::GatewayInternal),
        (Direction::Egress, Reason::NoEndpoint),
        (Direction::Egress, Reason::Vlan),
        (Direction::Egress, Reason::UnsupportedEthertype),
        (Direction::Egress, Reason::Truncated),
        (Direction::Ingress, Reason::FwdDecap),
        (Direction::Ingress, Reason::PassNotOverlay),
        (Direction::Ingress, Reason::NotMember),
        (Direction::Ingress, Reason::VtepMismatch),
        (Direction::Ingress, Reason::UnknownVni),
        (Direction::Ingress, Reason::UnknownDestination),
        (Direction::Ingress, Reason::VxlanFlags),
        (Direction::Ingress, Reason::Fragment),
        (Direction::Ingress, Reason::IpOptions),
        (Direction::Ingress, Reason::Truncated),
        (Direction::Ingress, Reason::MeshNoFlow),
        (Direction::Xdp, Reason::FwdDecap),
        (Direction::Xdp, Reason::PassToTc),
        (Direction::Xdp, Reason::PassNotOverlay),
        (Direction::Xdp, Reason::NotMember),
    ];
    if cases >= 20_000 {
        let missing: Vec<String> = want.iter().filter(|(d, r)| !seen.contains_key(&(d.name(), r.name()))).map(|(d, r)| format!("{} {}", d.name(), r.name())).collect();
        assert!(missing.is_empty(), "verdicts the generator never reached in {cases} cases: {missing:?}\nseen: {seen:?}");
    }
    assert!(refused < cases / 20, "{refused} of {cases} frames refused by the kernel's test run: the generator makes too few usable ones");
    eprintln!("{} cases (seed {seed}) agreed with the model ({refused} more the kernel's test run refused as input); verdicts: {seen:?}", cases - refused);
}

/// Frames `BPF_PROG_TEST_RUN` refuses for an skb program: an IPv4 ethertype with less than an
/// IPv4 header behind it, or IPv6 with less than 40 bytes.
fn kernel_refuses(f: &[u8]) -> bool {
    match u16::from_be_bytes([f[12], f[13]]) {
        0x0800 => f.len() < 14 + 20,
        0x86dd => f.len() < 14 + 40,
        _ => false,
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect::<Vec<_>>().join("")
}
