//! The programs under `BPF_PROG_TEST_RUN`: exact frames in, exact frames and verdicts out, and
//! the counter of every verdict. Inputs include real frames written by the kernel's vxlan driver
//! (tests/data/kernel-vxlan.pcap: host 1 = 192.168.50.1 with 10.0.1.2, host 2 = 192.168.50.2
//! with 10.0.1.3). The datapath under test plays host 2.
mod support;

use std::net::Ipv4Addr;

use overlay::{
    dataplane::{PROG_EGRESS, PROG_INGRESS, PROG_PASS, PROG_XDP},
    control::desired,
};
use overlay_common::{Direction, NODE_F_MESH_DIRECT, Reason};
use support::*;

use overlay_common::wire::{TC_ACT_OK, TC_ACT_REDIRECT, TC_ACT_SHOT, XDP_DROP, XDP_PASS, XDP_REDIRECT};

/// Test-run packets arrive on loopback (ifindex 1): the local endpoint 10.0.1.3 sits there.
const LOCAL_IFINDEX: u32 = 1;

const CLUSTER: &str = "
nodes:
  - {name: node1, vtep: 192.168.50.1}
  - {name: node2, vtep: 192.168.50.2}
  - {name: node3, vtep: 192.168.50.3}
networks:
  - {name: nginx-net, vni: 4097, subnet: 10.0.1.0/24}
  - {name: test-net, vni: 4098, subnet: 10.0.2.0/24}
endpoints:
  - {name: web1, network: nginx-net, node: node1, ip: 10.0.1.2}
  - {name: web2, network: nginx-net, node: node2, ip: 10.0.1.3, netns: c2}
  - {name: web3, network: nginx-net, node: node3, ip: 10.0.1.4}
  - {name: test1, network: test-net, node: node1, ip: 10.0.2.2}
";

fn host2() -> TestDataplane {
    let mut t = TestDataplane::new("prog");
    let cluster = overlay::source::file::parse(CLUSTER).expect("valid cluster");
    let plan = desired::plan(&cluster, "node2").expect("node2 exists");
    let state = plan.map_state(LOCAL_IFINDEX, &[(&plan.local[0], LOCAL_IFINDEX)]);
    let diff = t.dp.apply(&state).expect("apply");
    assert!(diff.added > 0, "first apply adds entries");
    assert_eq!(t.dp.read_state().expect("read back"), state, "maps hold exactly what was applied");
    // The XDP ingress redirects into the local endpoint's interface through the devmap.
    let d = t.dp.set_xdp_targets(&[LOCAL_IFINDEX]).expect("devmap");
    assert_eq!(d.added, 1, "the endpoint's interface is added to the devmap");
    t
}

/// The ingress hooks under test: TC and XDP run the same checks on the same frames; each
/// answers with its own verdicts and counts under its own direction.
#[derive(Clone, Copy)]
struct Hook {
    prog: &'static str,
    dir: Direction,
    redirect: i32,
    pass: i32,
    name: &'static str,
}

const TC: Hook = Hook { prog: PROG_INGRESS, dir: Direction::Ingress, redirect: TC_ACT_REDIRECT, pass: TC_ACT_OK, name: "TC" };
const XDP: Hook = Hook { prog: PROG_XDP, dir: Direction::Xdp, redirect: XDP_REDIRECT, pass: XDP_PASS, name: "XDP" };

fn run(t: &mut TestDataplane, prog: &'static str, frame: &[u8]) -> (i32, Vec<u8>) {
    let (v, out, _) = t.dp.test_run(prog, frame, 1).unwrap_or_else(|e| panic!("test run of {prog}: {e:?}"));
    (v, out)
}

/// Runs `frame` and asserts a drop counted under `reason`.
fn expect_drop(t: &mut TestDataplane, prog: &'static str, frame: &[u8], reason: Reason, what: &str) {
    let (dir, shot) = match prog {
        PROG_EGRESS => (Direction::Egress, TC_ACT_SHOT),
        PROG_XDP => (Direction::Xdp, XDP_DROP),
        _ => (Direction::Ingress, TC_ACT_SHOT),
    };
    let before = t.dp.stats().expect("stats").get(reason, dir).packets;
    let (v, _) = run(t, prog, frame);
    assert_eq!(v, shot, "expected a drop ({prog} verdict {shot}) for {what}");
    let after = t.dp.stats().expect("stats").get(reason, dir).packets;
    assert_eq!(after, before + 1, "expected one {} drop counted for {what}", reason.name());
}

const WEB1: [u8; 6] = [0x02, 0x42, 10, 0, 1, 2];
const WEB2: [u8; 6] = [0x02, 0x42, 10, 0, 1, 3];
const WEB3: [u8; 6] = [0x02, 0x42, 10, 0, 1, 4];
const IP1: Ipv4Addr = Ipv4Addr::new(10, 0, 1, 2);
const IP2: Ipv4Addr = Ipv4Addr::new(10, 0, 1, 3);
const VTEP1: Ipv4Addr = Ipv4Addr::new(192, 168, 50, 1);
const VTEP2: Ipv4Addr = Ipv4Addr::new(192, 168, 50, 2);
const VTEP3: Ipv4Addr = Ipv4Addr::new(192, 168, 50, 3);

/// An ICMP-ish IPv4 frame from web2 (the local endpoint) to `dst_mac`.
fn from_web2(dst_mac: [u8; 6], dst: Ipv4Addr) -> Vec<u8> {
    let mut f = eth(dst_mac, WEB2, 0x0800);
    f.extend(ipv4(IP2, dst, 1, 8, 0x4000, &[]));
    f.extend([8, 0, 0, 0, 0, 1, 0, 1]);
    f
}

/// An inner frame from web1 (remote, behind VTEP1) to web2.
fn inner_to_web2() -> Vec<u8> {
    let mut f = eth(WEB2, WEB1, 0x0800);
    f.extend(ipv4(IP1, IP2, 1, 8, 0, &[]));
    f.extend([8, 0, 0, 0, 0, 1, 0, 1]);
    f
}

#[test]
fn decapsulates_every_frame_the_kernel_sent_to_this_host() {
    decapsulates_kernel_frames(TC);
}

#[test]
fn xdp_decapsulates_every_frame_the_kernel_sent_to_this_host() {
    decapsulates_kernel_frames(XDP);
}

fn decapsulates_kernel_frames(h: Hook) {
    let mut t = host2();
    let frames: Vec<_> = kernel_frames().into_iter().filter(|f| outer_src(f) == VTEP1).collect();
    assert!(frames.len() >= 8, "the capture holds the kernel's frames to host 2");
    let before = t.dp.stats().expect("stats");
    for (i, f) in frames.iter().enumerate() {
        let (v, out) = run(&mut t, h.prog, f);
        assert_eq!(v, h.redirect, "{}: frame {i}: expected a redirect into the local endpoint", h.name);
        assert_eq!(out, f[50..], "{}: frame {i}: expected exactly the inner frame after decapsulation", h.name);
    }
    let after = t.dp.stats().expect("stats");
    let n = frames.len() as u64;
    assert_eq!(after.get(Reason::FwdDecap, h.dir).packets - before.get(Reason::FwdDecap, h.dir).packets, n, "{}: every frame counted as fwd-decap", h.name);
    let inner: u64 = frames.iter().map(|f| f.len() as u64 - 50).sum();
    assert_eq!(after.vnis[&4097].rx.packets, n, "per-VNI rx packets");
    assert_eq!(after.vnis[&4097].rx.bytes, inner, "per-VNI rx bytes count the inner frames");
}

#[test]
fn frames_not_for_this_vtep_pass_untouched() {
    frames_not_for_this_vtep_pass(TC);
}

#[test]
fn xdp_passes_frames_not_for_this_vtep_untouched() {
    frames_not_for_this_vtep_pass(XDP);
}

fn frames_not_for_this_vtep_pass(h: Hook) {
    let mut t = host2();
    // Host 2's own outgoing frames are addressed to VTEP 1: not ours to decapsulate.
    for f in kernel_frames().into_iter().filter(|f| outer_src(f) == VTEP2) {
        let (v, out) = run(&mut t, h.prog, &f);
        assert_eq!(v, h.pass, "{}: expected a pass for VXLAN to another VTEP", h.name);
        assert_eq!(out, f, "a passed frame is not modified");
    }
    // UDP to another port, TCP, ARP and IPv6 on the underlay: the node's own traffic.
    let inner = inner_to_web2();
    let other_port = vxlan_frame(VTEP1, VTEP2, 4790, 0x08, 4097, &inner);
    let mut tcp = eth([1; 6], [2; 6], 0x0800);
    tcp.extend(ipv4(VTEP1, VTEP2, 6, 20, 0, &[]));
    tcp.extend([0u8; 20]);
    let mut arp_req = eth([0xff; 6], [2; 6], 0x0806);
    arp_req.extend(arp(1, [2; 6], VTEP1, [0; 6], VTEP2));
    let mut v6 = eth([1; 6], [2; 6], 0x86dd);
    v6.extend([0x60u8; 40]);
    let before = t.dp.stats().expect("stats").get(Reason::PassNotOverlay, h.dir).packets;
    for (what, f) in [("UDP to port 4790", &other_port), ("TCP", &tcp), ("ARP", &arp_req), ("IPv6", &v6)] {
        let (v, out) = run(&mut t, h.prog, f);
        assert_eq!(v, h.pass, "{}: expected a pass for {what} on the underlay", h.name);
        assert_eq!(&out, f, "{}: {what} must pass unmodified", h.name);
    }
    let after = t.dp.stats().expect("stats").get(Reason::PassNotOverlay, h.dir).packets;
    assert_eq!(after - before, 4, "passes are counted too");
}

#[test]
fn encapsulation_matches_golden_bytes_and_the_kernel_driver() {
    let mut t = host2();
    let kernel: Vec<_> = kernel_frames().into_iter().filter(|f| outer_src(f) == VTEP2).collect();
    let mut ports = Vec::new();
    for (i, k) in kernel.iter().enumerate() {
        let inner = &k[50..];
        let (v, out) = run(&mut t, PROG_EGRESS, inner);
        assert_eq!(v, TC_ACT_REDIRECT, "frame {i}: expected TC_ACT_REDIRECT to the underlay for a remote MAC");
        assert_eq!(out.len(), inner.len() + 50, "frame {i}: 50 bytes of outer headers");
        let sport = u16::from_be_bytes([out[34], out[35]]);
        assert!((32768..=60999).contains(&sport), "frame {i}: source port {sport} outside the entropy range");
        ports.push(sport);
        // Golden: outer MACs zero (filled by bpf_redirect_neigh), IPv4 without options, id 0, DF
        // clear, TTL 64, UDP checksum 0, VXLAN I flag and VNI 4097, then the inner frame as sent.
        let total = (inner.len() + 36) as u16;
        let mut want = vec![0u8; 12];
        want.extend([0x08, 0x00]);
        let mut ip = vec![0x45, 0x00];
        ip.extend(total.to_be_bytes());
        ip.extend([0, 0, 0, 0, 64, 17, 0, 0, 192, 168, 50, 2, 192, 168, 50, 1]);
        let c = ipv4_checksum(&ip);
        ip[10..12].copy_from_slice(&c.to_be_bytes());
        want.extend(ip);
        want.extend(sport.to_be_bytes());
        want.extend([0x12, 0xb5]);
        want.extend((total - 20).to_be_bytes());
        want.extend([0, 0, 0x08, 0, 0, 0, 0x00, 0x10, 0x01, 0x00]);
        want.extend_from_slice(inner);
        assert_eq!(out, want, "frame {i}: encapsulated bytes differ from the golden frame");
        // Interop: the fields a kernel VTEP checks equal what its own driver sent.
        assert_eq!(out[16..18], k[16..18], "frame {i}: outer total length as the kernel's");
        assert_eq!(out[22], k[22], "frame {i}: TTL as the kernel's");
        assert_eq!(out[26..34], k[26..34], "frame {i}: outer addresses as the kernel's");
        assert_eq!(out[36..40], k[36..40], "frame {i}: UDP port and length as the kernel's");
        assert_eq!(out[42..50], k[42..50], "frame {i}: VXLAN header as the kernel's");
    }
    // The echo replies of one ping are one flow: one source port, as the kernel driver does.
    let (a, b) = (run(&mut t, PROG_EGRESS, &kernel[0][50..]).1, run(&mut t, PROG_EGRESS, &kernel[1][50..]).1);
    assert_eq!(a[34..36], b[34..36], "one flow, one UDP source port");
    let stats = t.dp.stats().expect("stats");
    assert_eq!(stats.vnis[&4097].tx.packets, kernel.len() as u64 + 2, "per-VNI tx packets");
}

#[test]
fn local_destination_is_switched_without_encapsulation() {
    let mut t = host2();
    // A second local endpoint in the same VNI: add its FDB entry by hand-built state.
    let cluster = overlay::source::file::parse(&CLUSTER.replace(
        "  - {name: web3, network: nginx-net, node: node3, ip: 10.0.1.4}",
        "  - {name: web3, network: nginx-net, node: node2, ip: 10.0.1.4, netns: c3}",
    ))
    .expect("valid");
    let plan = desired::plan(&cluster, "node2").expect("plan");
    let web3 = plan.local.iter().find(|e| e.name == "web3").expect("web3 local");
    let web2 = plan.local.iter().find(|e| e.name == "web2").expect("web2 local");
    t.dp.apply(&plan.map_state(LOCAL_IFINDEX, &[(web2, LOCAL_IFINDEX), (web3, 77)])).expect("apply");
    let f = from_web2(WEB3, Ipv4Addr::new(10, 0, 1, 4));
    let (v, out) = run(&mut t, PROG_EGRESS, &f);
    assert_eq!(v, TC_ACT_REDIRECT, "expected TC_ACT_REDIRECT (peer) for a local MAC");
    assert_eq!(out, f, "a locally switched frame is not modified");
    assert_eq!(t.dp.stats().expect("stats").get(Reason::FwdLocal, Direction::Egress).packets, 1);
}

#[test]
fn arp_request_is_answered_from_the_neighbour_table() {
    let mut t = host2();
    let mut req = eth([0xff; 6], WEB2, 0x0806);
    req.extend(arp(1, WEB2, IP2, [0; 6], IP1));
    let (v, out) = run(&mut t, PROG_EGRESS, &req);
    assert_eq!(v, TC_ACT_REDIRECT, "expected TC_ACT_REDIRECT back to the asking endpoint");
    let mut want = eth(WEB2, WEB1, 0x0806);
    want.extend(arp(2, WEB1, IP1, WEB2, IP2));
    assert_eq!(out, want, "expected the exact ARP reply: 10.0.1.2 is at 02:42:0a:00:01:02");
    assert_eq!(t.dp.stats().expect("stats").get(Reason::ArpReply, Direction::Egress).packets, 1);
}

#[test]
fn egress_drops_are_counted_by_reason() {
    let mut t = host2();
    let good = from_web2(WEB1, IP1);
    let (v, _) = run(&mut t, PROG_EGRESS, &good);
    assert_eq!(v, TC_ACT_REDIRECT, "sanity: the unmodified frame is forwarded");

    // (A frame cut inside the IPv4 header cannot be fed in: BPF_PROG_TEST_RUN itself rejects an
    // IPv4 frame shorter than its header. The same bounds check guards the ARP body below and
    // the inner headers at ingress.)
    let mut arp_req = eth([0xff; 6], WEB2, 0x0806);
    arp_req.extend(arp(1, WEB2, IP2, [0; 6], IP1));
    expect_drop(&mut t, PROG_EGRESS, &arp_req[..14 + 27], Reason::Truncated, "an ARP body cut short");

    let mut spoof_mac = good.clone();
    spoof_mac[6..12].copy_from_slice(&WEB3);
    expect_drop(&mut t, PROG_EGRESS, &spoof_mac, Reason::SpoofedMac, "another endpoint's source MAC");
    let mut spoof_ip = eth(WEB1, WEB2, 0x0800);
    spoof_ip.extend(ipv4(Ipv4Addr::new(10, 0, 1, 99), IP1, 1, 8, 0, &[]));
    spoof_ip.extend([0u8; 8]);
    expect_drop(&mut t, PROG_EGRESS, &spoof_ip, Reason::SpoofedIp, "a forged source IPv4");
    let mut arp_spoof = eth([0xff; 6], WEB2, 0x0806);
    arp_spoof.extend(arp(1, WEB2, Ipv4Addr::new(10, 0, 1, 99), [0; 6], IP1));
    expect_drop(&mut t, PROG_EGRESS, &arp_spoof, Reason::SpoofedIp, "ARP with a forged sender address");

    let mut vlan = eth(WEB1, WEB2, 0x8100);
    vlan.extend([0, 5, 0x08, 0x00]);
    vlan.extend_from_slice(&good[14..]);
    expect_drop(&mut t, PROG_EGRESS, &vlan, Reason::Vlan, "a VLAN-tagged frame");
    let mut v6 = eth(WEB1, WEB2, 0x86dd);
    v6.extend([0x60u8; 40]);
    expect_drop(&mut t, PROG_EGRESS, &v6, Reason::UnsupportedEthertype, "IPv6");

    expect_drop(&mut t, PROG_EGRESS, &from_web2([0xff; 6], IP1), Reason::Broadcast, "broadcast: no flooding");
    expect_drop(&mut t, PROG_EGRESS, &from_web2([0x01, 0, 0x5e, 0, 0, 1], IP1), Reason::Broadcast, "multicast: no flooding");
    expect_drop(&mut t, PROG_EGRESS, &from_web2([0x02, 0x42, 10, 0, 1, 77], IP1), Reason::UnknownDestination, "unknown unicast");
    // test-net's endpoint is in another VNI: not reachable from nginx-net, whatever the MAC.
    expect_drop(&mut t, PROG_EGRESS, &from_web2([0x02, 0x42, 10, 0, 2, 2], Ipv4Addr::new(10, 0, 2, 2)), Reason::UnknownDestination, "a MAC of another network");
    let mut arp_other_net = eth([0xff; 6], WEB2, 0x0806);
    arp_other_net.extend(arp(1, WEB2, IP2, [0; 6], Ipv4Addr::new(10, 0, 2, 2)));
    expect_drop(&mut t, PROG_EGRESS, &arp_other_net, Reason::ArpUnanswered, "ARP for another network's address");
    let mut arp_reply = eth(WEB1, WEB2, 0x0806);
    arp_reply.extend(arp(2, WEB2, IP2, WEB1, IP1));
    expect_drop(&mut t, PROG_EGRESS, &arp_reply, Reason::ArpUnanswered, "an ARP reply (nothing asks)");

    // No endpoint on this interface: nothing is forwarded from it.
    let cluster = overlay::source::file::parse(CLUSTER).expect("valid");
    let plan = desired::plan(&cluster, "node2").expect("plan");
    t.dp.apply(&plan.map_state(LOCAL_IFINDEX, &[])).expect("apply without endpoints");
    expect_drop(&mut t, PROG_EGRESS, &good, Reason::NoEndpoint, "an interface with no endpoint");
}

#[test]
fn ingress_drops_are_counted_by_reason() {
    ingress_drops(TC);
}

#[test]
fn xdp_drops_the_same_frames_for_the_same_reasons() {
    ingress_drops(XDP);
}

fn ingress_drops(h: Hook) {
    let mut t = host2();
    let inner = inner_to_web2();
    let good = vxlan_frame(VTEP1, VTEP2, 4789, 0x08, 4097, &inner);
    let (v, out) = run(&mut t, h.prog, &good);
    assert_eq!((v, out.as_slice()), (h.redirect, inner.as_slice()), "{}: sanity: the crafted frame is delivered", h.name);

    expect_drop(&mut t, h.prog, &good[..42 + 4], Reason::Truncated, "a frame cut inside the VXLAN header");
    expect_drop(&mut t, h.prog, &good[..50 + 10], Reason::Truncated, "a frame cut inside the inner Ethernet header");
    expect_drop(&mut t, h.prog, &good[..64 + 10], Reason::Truncated, "a frame cut inside the inner IPv4 header");
    expect_drop(&mut t, h.prog, &vxlan_frame(VTEP1, VTEP2, 4789, 0x00, 4097, &inner), Reason::VxlanFlags, "VXLAN flags without I");
    expect_drop(&mut t, h.prog, &vxlan_frame(VTEP1, VTEP2, 4789, 0x08, 999, &inner), Reason::UnknownVni, "an unknown VNI");
    expect_drop(&mut t, h.prog, &vxlan_frame(Ipv4Addr::new(192, 168, 50, 66), VTEP2, 4789, 0x08, 4097, &inner), Reason::NotMember, "a VTEP that is not a member");

    // IPv4 options (IHL 6, one NOP word) in front of UDP 4789.
    let mut opts = eth([0xaa; 6], [0xbb; 6], 0x0800);
    opts.extend(ipv4(VTEP1, VTEP2, 17, 16 + inner.len(), 0, &[1, 1, 1, 0]));
    opts.extend(udp(40000, 4789, 8 + inner.len()));
    opts.extend(vxlan(0x08, 4097));
    opts.extend_from_slice(&inner);
    expect_drop(&mut t, h.prog, &opts, Reason::IpOptions, "outer IPv4 options");
    // First fragment (MF set) of a VXLAN datagram.
    let mut frag = good.clone();
    frag[20] = 0x20;
    let c = ipv4_checksum(&{ let mut h = frag[14..34].to_vec(); h[10] = 0; h[11] = 0; h });
    frag[24..26].copy_from_slice(&c.to_be_bytes());
    expect_drop(&mut t, h.prog, &frag, Reason::Fragment, "an outer fragment");

    let mut vlan_inner = eth(WEB2, WEB1, 0x8100);
    vlan_inner.extend([0, 5, 0x08, 0x00]);
    vlan_inner.extend_from_slice(&inner[14..]);
    expect_drop(&mut t, h.prog, &vxlan_frame(VTEP1, VTEP2, 4789, 0x08, 4097, &vlan_inner), Reason::Vlan, "a VLAN-tagged inner frame");
    let mut arp_inner = eth(WEB2, WEB1, 0x0806);
    arp_inner.extend(arp(1, WEB1, IP1, [0; 6], IP2));
    expect_drop(&mut t, h.prog, &vxlan_frame(VTEP1, VTEP2, 4789, 0x08, 4097, &arp_inner), Reason::UnsupportedEthertype, "inner ARP (answered locally, never tunnelled)");
    // VTEP 3 is a member, but web1's MAC lives behind VTEP 1: impersonation.
    expect_drop(&mut t, h.prog, &vxlan_frame(VTEP3, VTEP2, 4789, 0x08, 4097, &inner), Reason::VtepMismatch, "a member speaking for another host's MAC");
    // Nor may a member claim this node's own endpoint.
    let mut claim_local = eth(WEB2, WEB2, 0x0800);
    claim_local.extend_from_slice(&inner[14..]);
    expect_drop(&mut t, h.prog, &vxlan_frame(VTEP1, VTEP2, 4789, 0x08, 4097, &claim_local), Reason::VtepMismatch, "a member claiming a local MAC");
    let mut to_unknown = eth([0x02, 0x42, 10, 0, 1, 77], WEB1, 0x0800);
    to_unknown.extend_from_slice(&inner[14..]);
    expect_drop(&mut t, h.prog, &vxlan_frame(VTEP1, VTEP2, 4789, 0x08, 4097, &to_unknown), Reason::UnknownDestination, "an inner MAC not on this node");
    // web2's MAC exists only in VNI 4097: the same frame in VNI 4098 reaches nobody.
    expect_drop(&mut t, h.prog, &vxlan_frame(VTEP1, VTEP2, 4789, 0x08, 4098, &inner), Reason::UnknownDestination, "a MAC of another VNI");
    let mut bcast = eth([0xff; 6], WEB1, 0x0800);
    bcast.extend_from_slice(&inner[14..]);
    expect_drop(&mut t, h.prog, &vxlan_frame(VTEP1, VTEP2, 4789, 0x08, 4097, &bcast), Reason::Broadcast, "an inner broadcast");
}

/// Runs `frame` through the XDP ingress and asserts it was passed on untouched, counted under
/// `reason` (direction xdp).
fn expect_xdp_pass(t: &mut TestDataplane, frame: &[u8], reason: Reason, what: &str) {
    let before = t.dp.stats().expect("stats").get(reason, Direction::Xdp).packets;
    let (v, out) = run(t, PROG_XDP, frame);
    assert_eq!(v, XDP_PASS, "expected XDP_PASS for {what}");
    assert_eq!(out, frame, "{what}: a passed frame is not modified");
    let after = t.dp.stats().expect("stats").get(reason, Direction::Xdp).packets;
    assert_eq!(after, before + 1, "expected one {} counted for {what}", reason.name());
}

#[test]
fn xdp_leaves_to_tc_what_only_tc_carries() {
    let mut t = host2();
    let inner = inner_to_web2();
    let good = vxlan_frame(VTEP1, VTEP2, 4789, 0x08, 4097, &inner);
    // The routing mesh (marked VXLAN) rewrites addresses and tracks flows: TC's.
    expect_xdp_pass(&mut t, &mesh_frame(VTEP1, 1, &inner), Reason::PassToTc, "a routing-mesh frame");
    expect_xdp_pass(&mut t, &mesh_frame(VTEP1, 2, &inner), Reason::PassToTc, "a routing-mesh reply");
    // Larger than one frame of the network (1450 here: the VNI's MTU follows the underlay's):
    // a GRO aggregate as generic XDP shows it, which a redirect would lose. TC carries it.
    let mut big_inner = eth(WEB2, WEB1, 0x0800);
    big_inner.extend(ipv4(IP1, IP2, 1, 1586, 0, &[]));
    big_inner.extend(vec![0u8; 1586]);
    expect_xdp_pass(&mut t, &vxlan_frame(VTEP1, VTEP2, 4789, 0x08, 4097, &big_inner), Reason::PassToTc, "a 1620-byte inner frame");
    // An endpoint whose interface is not in the devmap is still reached, through TC.
    t.dp.set_xdp_targets(&[]).expect("empty the devmap");
    expect_xdp_pass(&mut t, &good, Reason::PassToTc, "an endpoint missing from the devmap");
    let (v, out) = run(&mut t, PROG_INGRESS, &good);
    assert_eq!((v, out.as_slice()), (TC_ACT_REDIRECT, inner.as_slice()), "the TC ingress behind XDP delivers what XDP passed");
    // With services, replies may need the VIP restored: TC's too.
    let mut s = svc_host();
    s.dp.set_xdp_targets(&[LOCAL_IFINDEX]).expect("devmap");
    expect_xdp_pass(&mut s, &good, Reason::PassToTc, "a frame for an endpoint of a cluster with services");
    // Counted under the xdp direction only.
    let stats = t.dp.stats().expect("stats");
    assert_eq!(stats.get(Reason::PassToTc, Direction::Ingress).packets, 0, "pass-to-tc is an XDP verdict");
}

#[test]
fn reconcile_writes_only_the_difference() {
    let mut t = host2();
    let cluster = overlay::source::file::parse(CLUSTER).expect("valid");
    let plan = desired::plan(&cluster, "node2").expect("plan");
    let state = plan.map_state(LOCAL_IFINDEX, &[(&plan.local[0], LOCAL_IFINDEX)]);
    assert!(t.dp.apply(&state).expect("apply").is_empty(), "re-applying the same state writes nothing");
    let edited = overlay::source::file::parse(&CLUSTER.replace("ip: 10.0.1.4}", "ip: 10.0.1.14}")).expect("valid");
    let plan2 = desired::plan(&edited, "node2").expect("plan");
    let d = t.dp.apply(&plan2.map_state(LOCAL_IFINDEX, &[(&plan2.local[0], LOCAL_IFINDEX)])).expect("apply");
    // web3: new MAC (derived from the IP) and new neighbour entry; old ones removed; its two
    // names (web3, web3.nginx-net) now hold the new address.
    assert_eq!((d.added, d.changed, d.removed), (2, 2, 2), "one endpoint moved: {d}");
}

#[test]
fn pass_through_floor_program_passes() {
    let mut t = host2();
    let f = from_web2(WEB1, IP1);
    let (v, out) = run(&mut t, PROG_PASS, &f);
    assert_eq!((v, out), (TC_ACT_OK, f), "the benchmark floor returns TC_ACT_OK and changes nothing");
}

const GATEWAY_CLUSTER: &str = "
nodes:
  - {name: node1, vtep: 192.168.50.1}
  - {name: node2, vtep: 192.168.50.2}
networks:
  - {name: nginx-net, vni: 4097, subnet: 10.0.1.0/24}
  - {name: test-net, vni: 4098, subnet: 10.0.2.0/24, internal: true}
endpoints:
  - {name: web2, network: nginx-net, node: node2, ip: 10.0.1.3, netns: c2}
  - {name: web2, network: test-net, node: node2, ip: 10.0.2.3, netns: c2}
  - {name: web1, network: nginx-net, node: node1, ip: 10.0.1.2}
";

/// Node 2 with its endpoint number `which` (0: on nginx-net, 1: on the internal test-net)
/// behind the test-run ifindex.
fn gateway_host(which: usize) -> TestDataplane {
    let mut t = TestDataplane::new("gw");
    let cluster = overlay::source::file::parse(GATEWAY_CLUSTER).expect("valid cluster");
    let plan = desired::plan(&cluster, "node2").expect("node2 exists");
    assert_eq!(plan.local[1].ifname.as_deref(), Some("eth1"), "the container's second network is its eth1");
    let state = plan.map_state(LOCAL_IFINDEX, &[(&plan.local[which], LOCAL_IFINDEX)]);
    t.dp.apply(&state).expect("apply");
    t
}

const GW1: [u8; 6] = [0x02, 0x42, 10, 0, 1, 1];
const GW1_IP: Ipv4Addr = Ipv4Addr::new(10, 0, 1, 1);
/// An address outside every overlay (documentation range; the frame is only test-run).
const OUTSIDE: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 10);

#[test]
fn gateway_answers_arp_and_hands_outside_traffic_to_the_node() {
    let mut t = gateway_host(0);
    let mut req = eth([0xff; 6], WEB2, 0x0806);
    req.extend(arp(1, WEB2, IP2, [0; 6], GW1_IP));
    let (v, out) = run(&mut t, PROG_EGRESS, &req);
    assert_eq!(v, TC_ACT_REDIRECT, "expected the gateway's ARP reply back into the container");
    let mut want = eth(WEB2, GW1, 0x0806);
    want.extend(arp(2, GW1, GW1_IP, WEB2, IP2));
    assert_eq!(out, want, "expected: 10.0.1.1 is at 02:42:0a:00:01:01");

    let out_frame = from_web2(GW1, OUTSIDE);
    let (v, out) = run(&mut t, PROG_EGRESS, &out_frame);
    assert_eq!(v, TC_ACT_OK, "expected TC_ACT_OK: the node's stack routes it out");
    assert_eq!(out, out_frame, "the frame reaches the node's stack unchanged");
    let s = t.dp.stats().expect("stats");
    assert_eq!(s.get(Reason::FwdGateway, Direction::Egress).packets, 1, "counted as fwd-gateway");
    assert_eq!(s.vnis[&4097].tx.packets, 1, "and in the network's tx counter");
}

#[test]
fn the_way_out_never_joins_two_overlays_and_internal_networks_have_none() {
    let mut t = gateway_host(0);
    let other_net = from_web2(GW1, Ipv4Addr::new(10, 0, 2, 3));
    expect_drop(&mut t, PROG_EGRESS, &other_net, Reason::GatewayOverlay, "another overlay's address through the gateway");
    let own_net = from_web2(GW1, Ipv4Addr::new(10, 0, 1, 2));
    expect_drop(&mut t, PROG_EGRESS, &own_net, Reason::GatewayOverlay, "its own network's address the long way round");
    // The other network's gateway MAC is not in this network's FDB.
    let wrong_gw = from_web2([0x02, 0x42, 10, 0, 2, 1], OUTSIDE);
    expect_drop(&mut t, PROG_EGRESS, &wrong_gw, Reason::UnknownDestination, "another network's gateway");

    let mut t = gateway_host(1);
    let (mac, ip) = ([0x02, 0x42, 10, 0, 2, 3], Ipv4Addr::new(10, 0, 2, 3));
    let mut f = eth([0x02, 0x42, 10, 0, 2, 1], mac, 0x0800);
    f.extend(ipv4(ip, OUTSIDE, 1, 8, 0x4000, &[]));
    f.extend([8, 0, 0, 0, 0, 1, 0, 1]);
    expect_drop(&mut t, PROG_EGRESS, &f, Reason::GatewayInternal, "the internal network's gateway");
    // Its gateway still answers ARP (the names issue serves DNS there).
    let mut req = eth([0xff; 6], mac, 0x0806);
    req.extend(arp(1, mac, ip, [0; 6], Ipv4Addr::new(10, 0, 2, 1)));
    assert_eq!(run(&mut t, PROG_EGRESS, &req).0, TC_ACT_REDIRECT, "the internal network's gateway answers ARP");
}

/// A DNS question (UDP or TCP header only, port 53) from web2 to `dst`, sent to the gateway MAC.
fn dns_to(dst: Ipv4Addr, proto: u8, dport: u16) -> Vec<u8> {
    let mut f = eth(GW1, WEB2, 0x0800);
    let l4_len: usize = if proto == 17 { 8 } else { 20 };
    f.extend(ipv4(IP2, dst, proto, l4_len, 0x4000, &[]));
    let mut l4 = vec![0u8; l4_len];
    l4[0..2].copy_from_slice(&40000u16.to_be_bytes());
    l4[2..4].copy_from_slice(&dport.to_be_bytes());
    if proto == 17 {
        l4[4..6].copy_from_slice(&8u16.to_be_bytes());
    } else {
        l4[12] = 0x50;
    }
    f.extend(l4);
    f
}

#[test]
fn dns_to_the_gateway_goes_to_the_node_s_resolver_and_nothing_else_does() {
    let mut t = gateway_host(0);
    for (proto, what) in [(17u8, "UDP"), (6u8, "TCP")] {
        let q = dns_to(GW1_IP, proto, 53);
        let (v, out) = run(&mut t, PROG_EGRESS, &q);
        assert_eq!(v, TC_ACT_OK, "expected TC_ACT_OK for DNS over {what} to the gateway");
        assert_eq!(out, q, "handed to the node unchanged");
    }
    assert_eq!(t.dp.stats().expect("stats").get(Reason::FwdResolver, Direction::Egress).packets, 2, "counted as fwd-resolver");
    expect_drop(&mut t, PROG_EGRESS, &dns_to(GW1_IP, 17, 80), Reason::GatewayOverlay, "another port of the gateway's address");
    // An internal network's containers ask their gateway too.
    let mut t = gateway_host(1);
    let (mac, ip) = ([0x02, 0x42, 10, 0, 2, 3], Ipv4Addr::new(10, 0, 2, 3));
    let mut q = eth([0x02, 0x42, 10, 0, 2, 1], mac, 0x0800);
    q.extend(ipv4(ip, Ipv4Addr::new(10, 0, 2, 1), 17, 8, 0x4000, &[]));
    q.extend([0x9c, 0x40, 0, 53, 0, 8, 0, 0]);
    assert_eq!(run(&mut t, PROG_EGRESS, &q).0, TC_ACT_OK, "DNS to an internal network's gateway reaches the resolver");
}

const DNS_CLUSTER: &str = "
nodes:
  - {name: node1, vtep: 192.168.50.1}
  - {name: node2, vtep: 192.168.50.2}
networks:
  - {name: nginx-net, vni: 4097, subnet: 10.0.1.0/24}
  - {name: test-net, vni: 4098, subnet: 10.0.2.0/24}
services:
  - {name: api, network: nginx-net, mode: dnsrr, ports: [{port: 80}]}
  - {name: other, network: test-net, mode: dnsrr}
endpoints:
  - {name: web2, network: nginx-net, node: node2, ip: 10.0.1.3, netns: c2}
  - {name: web1, network: nginx-net, node: node1, ip: 10.0.1.2, aliases: [www], service: api}
  - {name: web4, network: nginx-net, node: node1, ip: 10.0.1.5, aliases: [www], service: api}
  - {name: test1, network: test-net, node: node1, ip: 10.0.2.2, service: other}
";

fn dns_host() -> (TestDataplane, overlay::control::names::NameView) {
    let mut t = TestDataplane::new("dns");
    let cluster = overlay::source::file::parse(DNS_CLUSTER).expect("valid cluster");
    let plan = desired::plan(&cluster, "node2").expect("node2 exists");
    t.dp.apply(&plan.map_state(LOCAL_IFINDEX, &[(&plan.local[0], LOCAL_IFINDEX)])).expect("apply");
    (t, overlay::control::names::NameView::build(&cluster))
}

/// A DNS question from web2 to its gateway: header (id 0x1234, RD), `qd` questions of `name`
/// (already in wire format) with `qtype`, then `extra` bytes.
fn dns_query(hdr_flags: u16, counts: [u16; 4], qname: &[u8], qtype: u16, extra: &[u8]) -> Vec<u8> {
    let mut dns = vec![0x12, 0x34];
    dns.extend(hdr_flags.to_be_bytes());
    for c in counts {
        dns.extend(c.to_be_bytes());
    }
    dns.extend(qname);
    dns.extend(qtype.to_be_bytes());
    dns.extend(1u16.to_be_bytes());
    dns.extend(extra);
    let mut f = eth(GW1, WEB2, 0x0800);
    f.extend(ipv4(IP2, GW1_IP, 17, 8 + dns.len(), 0x4000, &[]));
    f.extend(40000u16.to_be_bytes());
    f.extend(53u16.to_be_bytes());
    f.extend(((8 + dns.len()) as u16).to_be_bytes());
    f.extend([0, 0]);
    f.extend(dns);
    f
}

fn wire(name: &str) -> Vec<u8> {
    let mut w = Vec::new();
    for l in name.split('.') {
        w.push(l.len() as u8);
        w.extend(l.as_bytes());
    }
    w.push(0);
    w
}

/// The A addresses and RCODE of a DNS message.
fn answer_of(dns: &[u8]) -> (Vec<Ipv4Addr>, hickory_proto::op::ResponseCode) {
    let m = hickory_proto::op::Message::from_vec(dns).expect("a valid DNS reply");
    let mut a: Vec<Ipv4Addr> = m
        .answers
        .iter()
        .filter_map(|r| match &r.data {
            hickory_proto::rr::RData::A(x) => Some(x.0),
            _ => None,
        })
        .collect();
    a.sort();
    (a, m.metadata.response_code)
}

#[test]
fn known_names_are_answered_by_the_datapath_exactly() {
    let (mut t, _) = dns_host();
    let q = dns_query(0x0100, [1, 0, 0, 0], &wire("WEB1"), 1, &[]);
    let (v, out) = run(&mut t, PROG_EGRESS, &q);
    assert_eq!(v, TC_ACT_REDIRECT, "expected the answer redirected back into the container");
    // Exactly: addresses, ports and MACs swapped, a response (AA, RD, RA) with one A record
    // pointing at the question, TTL 5, UDP checksum 0, a fresh IPv4 checksum.
    let mut dns = vec![0x12, 0x34, 0x85, 0x80, 0, 1, 0, 1, 0, 0, 0, 0];
    dns.extend(wire("WEB1"));
    dns.extend([0, 1, 0, 1]);
    dns.extend([0xc0, 0x0c, 0, 1, 0, 1, 0, 0, 0, 5, 0, 4, 10, 0, 1, 2]);
    let mut want = eth(WEB2, GW1, 0x0800);
    let mut ip = ipv4(GW1_IP, IP2, 17, 8 + dns.len(), 0x4000, &[]);
    ip[4..6].copy_from_slice(&[0, 0]);
    ip[10..12].copy_from_slice(&[0, 0]);
    let c = overlay::lab::frames::ipv4_checksum(&ip);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    want.extend(ip);
    want.extend(53u16.to_be_bytes());
    want.extend(40000u16.to_be_bytes());
    want.extend(((8 + dns.len()) as u16).to_be_bytes());
    want.extend([0, 0]);
    want.extend(dns);
    assert_eq!(out, want, "expected the exact answer: web1 is 10.0.1.2");
    assert_eq!(t.dp.stats().expect("stats").get(Reason::DnsReply, Direction::Egress).packets, 1, "counted as dns-reply");
    // The alias on two endpoints: both, in random rotation.
    let (v, out) = run(&mut t, PROG_EGRESS, &dns_query(0x0100, [1, 0, 0, 0], &wire("www"), 1, &[]));
    assert_eq!(v, TC_ACT_REDIRECT);
    assert_eq!(answer_of(&out[42..]).0, [Ipv4Addr::new(10, 0, 1, 2), Ipv4Addr::new(10, 0, 1, 5)]);
    // NAME.NETWORK, and AAAA of a known name: NOERROR, no records.
    let (v, out) = run(&mut t, PROG_EGRESS, &dns_query(0x0100, [1, 0, 0, 0], &wire("web1.nginx-net"), 1, &[]));
    assert_eq!((v, answer_of(&out[42..]).0), (TC_ACT_REDIRECT, vec![Ipv4Addr::new(10, 0, 1, 2)]));
    let (v, out) = run(&mut t, PROG_EGRESS, &dns_query(0x0100, [1, 0, 0, 0], &wire("web1"), 28, &[]));
    assert_eq!((v, answer_of(&out[42..])), (TC_ACT_REDIRECT, (vec![], hickory_proto::op::ResponseCode::NoError)));
    // Another network's name, an unknown one, PTR: the resolver's.
    for (name, qtype) in [("test1", 1u16), ("nope", 1), ("web1", 12)] {
        let q = dns_query(0x0100, [1, 0, 0, 0], &wire(name), qtype, &[]);
        assert_eq!(run(&mut t, PROG_EGRESS, &q), (TC_ACT_OK, q.clone()), "{name}/{qtype} goes to the resolver unchanged");
    }
}

#[test]
fn malformed_or_unusual_questions_are_never_answered_by_the_datapath() {
    let (mut t, _) = dns_host();
    let name = wire("web1");
    let mut long = Vec::new();
    for _ in 0..30 {
        long.extend(wire("abcdefgh").split_last().expect("label").1);
    }
    long.push(0);
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("a truncated header", {
            let mut f = dns_query(0x0100, [1, 0, 0, 0], &[], 1, &[]);
            f.truncate(42 + 6);
            let udp = (f.len() - 34) as u16;
            f[38..40].copy_from_slice(&udp.to_be_bytes());
            f
        }),
        ("a label running past the packet", {
            let mut f = dns_query(0x0100, [1, 0, 0, 0], &[9, b'w', b'e', b'b'], 1, &[]);
            f.truncate(f.len() - 4);
            let udp = (f.len() - 34) as u16;
            f[38..40].copy_from_slice(&udp.to_be_bytes());
            f
        }),
        ("a compression pointer in the question", dns_query(0x0100, [1, 0, 0, 0], &[0xc0, 0x0c], 1, &[])),
        ("a name longer than the table's (and over 255 bytes)", dns_query(0x0100, [1, 0, 0, 0], &long, 1, &[])),
        ("no question", dns_query(0x0100, [0, 0, 0, 0], &name, 1, &[])),
        ("two questions", dns_query(0x0100, [2, 0, 0, 0], &name, 1, &[0x04, b'w', b'e', b'b', b'1', 0, 0, 1, 0, 1])),
        ("the QR bit set", dns_query(0x8100, [1, 0, 0, 0], &name, 1, &[])),
        ("a huge count field", dns_query(0x0100, [0xffff, 0, 0, 0], &name, 1, &[])),
        ("an EDNS0 OPT record", dns_query(0x0100, [1, 0, 0, 1], &name, 1, &[0, 0, 41, 0x10, 0, 0, 0, 0, 0, 0, 0])),
        ("trailing bytes", dns_query(0x0100, [1, 0, 0, 0], &name, 1, &[0xde, 0xad])),
        ("another opcode", dns_query(0x2800, [1, 0, 0, 0], &name, 1, &[])),
    ];
    for (what, q) in cases {
        let before = t.dp.stats().expect("stats").get(Reason::DnsReply, Direction::Egress).packets;
        let (v, out) = run(&mut t, PROG_EGRESS, &q);
        assert_eq!((v, &out), (TC_ACT_OK, &q), "{what}: expected TC_ACT_OK, unchanged, for the agent's resolver");
        assert_eq!(t.dp.stats().expect("stats").get(Reason::DnsReply, Direction::Egress).packets, before, "{what}: not answered here");
    }
}

#[test]
fn the_datapath_and_the_agent_give_the_same_answers() {
    use hickory_proto::{
        op::{Message, Query},
        rr::{Name, RecordType},
    };
    let (mut t, view) = dns_host();
    // A dnsrr service's name and `tasks.NAME` answer its tasks' addresses, in both paths.
    let tasks = vec![Ipv4Addr::new(10, 0, 1, 2), Ipv4Addr::new(10, 0, 1, 5)];
    for name in ["api", "tasks.api", "API.nginx-net", "tasks.api.nginx-net"] {
        let (v, out) = run(&mut t, PROG_EGRESS, &dns_query(0x0100, [1, 0, 0, 0], &wire(name), 1, &[]));
        assert_eq!(v, TC_ACT_REDIRECT, "{name}: answered by the datapath");
        assert_eq!(answer_of(&out[42..]).0, tasks, "{name}: the service's tasks");
    }
    // A service of another network is not seen (the agent forwards it upstream).
    let (v, _) = run(&mut t, PROG_EGRESS, &dns_query(0x0100, [1, 0, 0, 0], &wire("tasks.other"), 1, &[]));
    assert_eq!(v, TC_ACT_OK, "tasks.other is test-net's: not answered for nginx-net");
    for name in ["web1", "WEB1", "www", "web4", "web1.nginx-net", "www.nginx-net", "web2", "api", "tasks.api", "tasks.api.nginx-net"] {
        for (qtype, rt) in [(1u16, RecordType::A), (28, RecordType::AAAA)] {
            let (v, out) = run(&mut t, PROG_EGRESS, &dns_query(0x0100, [1, 0, 0, 0], &wire(name), qtype, &[]));
            assert_eq!(v, TC_ACT_REDIRECT, "{name}/{qtype}: answered by the datapath");
            let mut q = Message::query();
            q.add_query(Query::query(Name::from_ascii(format!("{name}.")).expect("name"), rt));
            let agent = match view.answer(&q, IP2, GW1_IP, 0) {
                overlay::control::names::Answer::Local(m) => m.to_vec().expect("encode"),
                other => panic!("{name}: the agent answers it too: {other:?}"),
            };
            assert_eq!(answer_of(&out[42..]), answer_of(&agent), "{name}/{qtype}: same addresses and RCODE");
        }
    }
}

/// `overlay down`'s pin removal also takes maps another agent version pinned in the node's
/// directory (here: a map pinned under a name this version does not know).
#[test]
fn removing_pins_takes_maps_of_other_versions_too() {
    let t = TestDataplane::new("pins");
    let fdb = aya::maps::MapData::from_pin(t.dir.join("FDB")).expect("FDB pin");
    fdb.pin(t.dir.join("OLD_VERSION_MAP")).expect("pin under another name");
    overlay::dataplane::remove_pins(&t.dir).expect("every pin removed");
    assert!(!t.dir.exists(), "the node's pin directory is gone");
}

const SVC_CLUSTER: &str = "
nodes:
  - {name: node1, vtep: 192.168.50.1}
  - {name: node2, vtep: 192.168.50.2}
networks:
  - {name: nginx-net, vni: 4097, subnet: 10.0.1.0/24}
services:
  - {name: web, network: nginx-net, vip: 10.0.1.100, ports: [{port: 80, target: 8080, publish: 30080}, {port: 53, protocol: udp}]}
endpoints:
  - {name: web2, network: nginx-net, node: node2, ip: 10.0.1.3, netns: c2}
  - {name: t1, network: nginx-net, node: node1, ip: 10.0.1.10, service: web}
  - {name: t2, network: nginx-net, node: node1, ip: 10.0.1.11, service: web}
  - {name: t3, network: nginx-net, node: node1, ip: 10.0.1.12, service: web}
";
const VIP: Ipv4Addr = Ipv4Addr::new(10, 0, 1, 100);
const VIP_MAC: [u8; 6] = [0x02, 0x42, 10, 0, 1, 100];

fn svc_host() -> TestDataplane {
    let mut t = TestDataplane::new("svc");
    let cluster = overlay::source::file::parse(SVC_CLUSTER).expect("valid cluster");
    let plan = desired::plan(&cluster, "node2").expect("node2 exists");
    t.dp.apply(&plan.map_state(LOCAL_IFINDEX, &[(&plan.local[0], LOCAL_IFINDEX)])).expect("apply");
    t
}

/// The one's-complement sum of `pseudo header + segment` folded: 0 when the L4 checksum holds.
fn l4_sum(src: &[u8], dst: &[u8], proto: u8, seg: &[u8]) -> u16 {
    let mut b = Vec::new();
    b.extend(src);
    b.extend(dst);
    b.extend([0, proto]);
    b.extend((seg.len() as u16).to_be_bytes());
    b.extend(seg);
    if b.len() % 2 == 1 {
        b.push(0);
    }
    let mut s: u32 = b.chunks(2).map(|c| u16::from_be_bytes([c[0], c[1]]) as u32).sum();
    while s > 0xffff {
        s = (s & 0xffff) + (s >> 16);
    }
    !(s as u16)
}

/// A TCP segment from web2 (port `sport`) to `dst`:`dport` with `flags`, checksum filled.
fn tcp_from_web2(dst_mac: [u8; 6], dst: Ipv4Addr, sport: u16, dport: u16, flags: u8) -> Vec<u8> {
    tcp_frame(dst_mac, WEB2, IP2, dst, sport, dport, flags)
}

#[test]
fn a_vip_is_balanced_to_its_tasks_and_replies_come_back_from_it() {
    let mut t = svc_host();
    let tasks = [Ipv4Addr::new(10, 0, 1, 10), Ipv4Addr::new(10, 0, 1, 11), Ipv4Addr::new(10, 0, 1, 12)];
    let mut seen = std::collections::BTreeMap::new();
    for sport in 40000..40300u16 {
        let syn = tcp_from_web2(VIP_MAC, VIP, sport, 80, 0x02);
        let (v, out) = run(&mut t, PROG_EGRESS, &syn);
        assert_eq!(v, TC_ACT_REDIRECT, "port {sport}: encapsulated to a task's node");
        let inner = &out[50..];
        let task = Ipv4Addr::new(inner[30], inner[31], inner[32], inner[33]);
        assert!(tasks.contains(&task), "port {sport}: sent to {task}, not a task");
        assert_eq!(inner[0..6], [0x02, 0x42, 10, 0, 1, inner[33]], "the task's MAC");
        assert_eq!(inner[26..30], IP2.octets(), "the client's address is kept");
        assert_eq!(u16::from_be_bytes([inner[36], inner[37]]), 8080, "the target port");
        assert_eq!(u16::from_be_bytes([inner[34], inner[35]]), sport, "the client's port is kept");
        assert_eq!(ipv4_checksum(&inner[14..34]), 0, "IPv4 checksum holds");
        assert_eq!(l4_sum(&inner[26..30], &inner[30..34], 6, &inner[34..]), 0, "TCP checksum holds");
        *seen.entry(task).or_insert(0u32) += 1;
        // The next packet of the flow goes to the same task.
        let ack = tcp_from_web2(VIP_MAC, VIP, sport, 80, 0x10);
        let (_, out2) = run(&mut t, PROG_EGRESS, &ack);
        assert_eq!(out2[80..84], inner[30..34], "port {sport}: every packet of a flow to one task");
        // The task's reply, arriving from node1, enters the client from the VIP and port 80.
        if sport % 50 == 0 {
            let reply = tcp_frame(WEB2, [0x02, 0x42, 10, 0, 1, task.octets()[3]], task, IP2, 8080, sport, 0x12);
            let (v, back) = run(&mut t, PROG_INGRESS, &vxlan_frame(VTEP1, VTEP2, 4789, 0x08, 4097, &reply));
            assert_eq!(v, TC_ACT_REDIRECT, "the reply is delivered");
            assert_eq!(back[6..12], VIP_MAC, "from the VIP's MAC");
            assert_eq!(back[26..30], VIP.octets(), "from the VIP");
            assert_eq!(u16::from_be_bytes([back[34], back[35]]), 80, "from the service port");
            assert_eq!(ipv4_checksum(&back[14..34]), 0, "IPv4 checksum holds");
            assert_eq!(l4_sum(&back[26..30], &back[30..34], 6, &back[34..]), 0, "TCP checksum holds");
        }
    }
    // Maglev spreads 300 flows evenly enough over three tasks.
    assert_eq!(seen.len(), 3, "every task chosen: {seen:?}");
    assert!(seen.values().all(|n| (70..=130).contains(n)), "each task within 30% of 100 flows: {seen:?}");
    // The choice is the flow hash's alone: the same flow picks the same task on every node.
    let cluster = overlay::source::file::parse(SVC_CLUSTER).expect("valid");
    let plan = desired::plan(&cluster, "node2").expect("plan");
    let bal = &plan.base.balancing[&0];
    let flow = overlay_common::flow_hash(u32::from_ne_bytes(IP2.octets()), 40123u16.to_be(), 6, 80u16.to_be());
    let want = bal.backends[bal.maglev[(flow % overlay_common::MAGLEV_M) as usize] as usize];
    let (_, out) = run(&mut t, PROG_EGRESS, &tcp_from_web2(VIP_MAC, VIP, 40123, 80, 0x10));
    assert_eq!(out[80..84], want.ip.to_ne_bytes(), "the task the agent's Maglev table gives");
    assert!(!t.dp.connections().expect("connection table").is_empty(), "connections are remembered");

    // The same client port later used to reach the task directly: its replies are the task's
    // own, not rewritten to the VIP (the earlier VIP flow's reverse entry goes with the SYN).
    let (_, out) = run(&mut t, PROG_EGRESS, &tcp_from_web2(VIP_MAC, VIP, 41000, 80, 0x02));
    let task = Ipv4Addr::new(out[80], out[81], out[82], out[83]);
    let task_mac = [0x02, 0x42, 10, 0, 1, task.octets()[3]];
    let (v, direct) = run(&mut t, PROG_EGRESS, &tcp_from_web2(task_mac, task, 41000, 8080, 0x02));
    assert_eq!(v, TC_ACT_REDIRECT);
    assert_eq!(direct[80..84], task.octets(), "a direct SYN is not translated");
    let reply = tcp_frame(WEB2, task_mac, task, IP2, 8080, 41000, 0x12);
    let (_, back) = run(&mut t, PROG_INGRESS, &vxlan_frame(VTEP1, VTEP2, 4789, 0x08, 4097, &reply));
    assert_eq!(back, reply, "the direct flow's reply enters unchanged");
}

#[test]
fn a_vip_answers_ping_and_refuses_other_ports() {
    let mut t = svc_host();
    let mut icmp = vec![8u8, 0, 0, 0, 0x12, 0x34, 0, 1, b'p', b'i', b'n', b'g'];
    let c = ipv4_checksum(&icmp);
    icmp[2..4].copy_from_slice(&c.to_be_bytes());
    let mut ping = eth(VIP_MAC, WEB2, 0x0800);
    ping.extend(ipv4(IP2, VIP, 1, icmp.len(), 0x4000, &[]));
    ping.extend(&icmp);
    let (v, out) = run(&mut t, PROG_EGRESS, &ping);
    assert_eq!(v, TC_ACT_REDIRECT, "the echo reply goes back into the container");
    assert_eq!(out[0..6], WEB2, "to the client's MAC");
    assert_eq!(out[6..12], VIP_MAC, "from the VIP's MAC");
    assert_eq!(out[26..30], VIP.octets(), "from the VIP");
    assert_eq!(out[30..34], IP2.octets(), "to the client");
    assert_eq!(out[34], 0, "an echo reply");
    assert_eq!(ipv4_checksum(&out[14..34]), 0, "IPv4 checksum holds");
    assert_eq!(ipv4_checksum(&out[34..]), 0, "ICMP checksum holds");
    expect_drop(&mut t, PROG_EGRESS, &tcp_from_web2(VIP_MAC, VIP, 40000, 81, 0x02), Reason::ServiceNoPort, "a port the service does not serve");
    expect_drop(&mut t, PROG_EGRESS, &tcp_from_web2(VIP_MAC, VIP, 40000, 53, 0x02), Reason::ServiceNoPort, "53/tcp when only 53/udp is served");
    // With no task left, a connection is refused and counted.
    let cluster = overlay::source::file::parse(&SVC_CLUSTER.replace(", service: web}", "}")).expect("valid");
    let plan = desired::plan(&cluster, "node2").expect("plan");
    t.dp.apply(&plan.map_state(LOCAL_IFINDEX, &[(&plan.local[0], LOCAL_IFINDEX)])).expect("apply");
    expect_drop(&mut t, PROG_EGRESS, &tcp_from_web2(VIP_MAC, VIP, 40001, 80, 0x02), Reason::ServiceNoBackend, "a service without tasks");
}

/// A TCP segment `src`:`sport` -> `dst`:`dport` with `flags` in an Ethernet frame
/// `smac` -> `dmac`, checksums filled.
fn tcp_frame(dmac: [u8; 6], smac: [u8; 6], src: Ipv4Addr, dst: Ipv4Addr, sport: u16, dport: u16, flags: u8) -> Vec<u8> {
    let mut seg = vec![0u8; 20];
    seg[0..2].copy_from_slice(&sport.to_be_bytes());
    seg[2..4].copy_from_slice(&dport.to_be_bytes());
    seg[4..8].copy_from_slice(&7u32.to_be_bytes());
    seg[12] = 5 << 4;
    seg[13] = flags;
    seg[14..16].copy_from_slice(&64240u16.to_be_bytes());
    let c = l4_sum(&src.octets(), &dst.octets(), 6, &seg);
    seg[16..18].copy_from_slice(&c.to_be_bytes());
    let mut f = eth(dmac, smac, 0x0800);
    f.extend(ipv4(src, dst, 6, 20, 0x4000, &[]));
    f.extend(seg);
    f
}

/// A VXLAN frame of the routing mesh: `mark` in the header's reserved byte.
fn mesh_frame(from: Ipv4Addr, mark: u8, inner: &[u8]) -> Vec<u8> {
    mesh_frame_port(from, mark, 0, inner)
}

/// A mesh frame that also carries the published port (a `MESH_IN` frame from a current node).
fn mesh_frame_port(from: Ipv4Addr, mark: u8, port: u16, inner: &[u8]) -> Vec<u8> {
    let mut f = vxlan_frame(from, VTEP2, 4789, 0x08, 4097, inner);
    f[14 + 20 + 8 + 2..14 + 20 + 8 + 4].copy_from_slice(&port.to_be_bytes());
    f[14 + 20 + 8 + 7] = mark;
    f
}

/// The routing mesh on node2 (no task of `web` there): an outside client's SYN to node2's
/// published port goes to a task on node1 with the client's address, in a frame marked
/// MESH_IN, byte for byte the client's but for the task's MACs, address and port; the task's
/// reply marked MESH_OUT leaves with node2's address and the published port. Forged and
/// unknown mesh frames are dropped and counted; other ports pass to the node untouched.
#[test]
fn a_published_port_forwards_with_the_clients_address_and_replies_leave_from_the_node() {
    let mut t = svc_host();
    let cluster = overlay::source::file::parse(SVC_CLUSTER).expect("valid");
    let plan = desired::plan(&cluster, "node2").expect("plan");
    let mut state = plan.map_state(LOCAL_IFINDEX, &[(&plan.local[0], LOCAL_IFINDEX)]);
    state.underlay_mtu(1500);
    t.dp.apply(&state).expect("apply");
    const CLIENT: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 10);
    const GW_MAC: [u8; 6] = [0x02, 0x42, 10, 0, 1, 1];
    let (router, node) = ([0xaa; 6], [0xbb; 6]);
    let tasks = [Ipv4Addr::new(10, 0, 1, 10), Ipv4Addr::new(10, 0, 1, 11), Ipv4Addr::new(10, 0, 1, 12)];

    let syn = tcp_frame(node, router, CLIENT, VTEP2, 40000, 30080, 0x02);
    let (v, out) = run(&mut t, PROG_INGRESS, &syn);
    assert_eq!(v, TC_ACT_REDIRECT, "forwarded across the overlay");
    assert_eq!(out[26..30], VTEP2.octets(), "outer source: this node");
    assert_eq!(out[30..34], VTEP1.octets(), "outer destination: the tasks' node");
    assert_eq!(u16::from_be_bytes([out[36], out[37]]), 4789, "VXLAN");
    assert_eq!(out[42..50], [0x08, 0, 0x75, 0x80, 0, 0x10, 0x01, 1], "I flag, published port 30080, VNI 4097, marked MESH_IN");
    let inner = &out[50..];
    let task = Ipv4Addr::new(inner[30], inner[31], inner[32], inner[33]);
    assert!(tasks.contains(&task), "sent to {task}, not a task");
    let want = tcp_frame([0x02, 0x42, 10, 0, 1, task.octets()[3]], GW_MAC, CLIENT, task, 40000, 8080, 0x02);
    assert_eq!(inner, &want[..], "the client's frame, to the task's MAC, address and target port, from the gateway's MAC");
    // The next packet of the flow (not a SYN) keeps its task.
    let (_, out2) = run(&mut t, PROG_INGRESS, &tcp_frame(node, router, CLIENT, VTEP2, 40000, 30080, 0x10));
    assert_eq!(out2[80..84], task.octets(), "every packet of a flow to one task");
    // The task's reply, back from node1 marked MESH_OUT: out with node2's address and port 30080.
    let reply = tcp_frame(GW_MAC, [0x02, 0x42, 10, 0, 1, task.octets()[3]], task, CLIENT, 8080, 40000, 0x12);
    let (v, back) = run(&mut t, PROG_INGRESS, &mesh_frame(VTEP1, 2, &reply));
    assert_eq!(v, TC_ACT_REDIRECT, "the reply leaves by the underlay");
    let mut want = tcp_frame(GW_MAC, [0x02, 0x42, 10, 0, 1, task.octets()[3]], VTEP2, CLIENT, 30080, 40000, 0x12);
    want[0..12].copy_from_slice(&back[0..12]);
    assert_eq!(back, want, "the reply from the published address and port (MACs are the neighbour table's)");
    // Mesh frames nobody asked for.
    let forged = tcp_frame(GW_MAC, [0x02, 0x42, 10, 0, 1, 10], tasks[0], CLIENT, 8080, 40999, 0x12);
    expect_drop(&mut t, PROG_INGRESS, &mesh_frame(VTEP1, 2, &forged), Reason::MeshNoFlow, "a mesh reply without its flow");
    expect_drop(&mut t, PROG_INGRESS, &mesh_frame(Ipv4Addr::new(192, 168, 50, 99), 2, &reply), Reason::NotMember, "a mesh reply from a non-member");
    let to_web2 = tcp_frame(WEB2, GW_MAC, CLIENT, IP2, 40001, 8080, 0x02);
    expect_drop(&mut t, PROG_INGRESS, &mesh_frame(Ipv4Addr::new(192, 168, 50, 99), 1, &to_web2), Reason::NotMember, "a mesh request from a non-member");
    let spoofed = tcp_frame(WEB2, GW_MAC, Ipv4Addr::new(10, 0, 1, 50), IP2, 40001, 8080, 0x02);
    expect_drop(&mut t, PROG_INGRESS, &mesh_frame(VTEP1, 1, &spoofed), Reason::SpoofedIp, "a mesh request claiming an overlay address");
    expect_drop(&mut t, PROG_INGRESS, &mesh_frame(VTEP1, 7, &to_web2), Reason::VxlanFlags, "an unknown mark");
    // Not published: the node's own traffic, untouched.
    for (port, what) in [(8080u16, "a task's target port"), (80, "the VIP's port"), (30081, "an unpublished port")] {
        let f = tcp_frame(node, router, CLIENT, VTEP2, 40000, port, 0x02);
        let (v, out) = run(&mut t, PROG_INGRESS, &f);
        assert_eq!((v, out), (TC_ACT_OK, f), "{what} passes to the node");
    }
    // Larger than the overlay carries: dropped and counted, not fragmented.
    let mut big = eth(node, router, 0x0800);
    big.extend(ipv4(CLIENT, VTEP2, 6, 1460, 0x4000, &[]));
    let mut seg = vec![0u8; 1460];
    seg[0..2].copy_from_slice(&40002u16.to_be_bytes());
    seg[2..4].copy_from_slice(&30080u16.to_be_bytes());
    seg[12] = 5 << 4;
    seg[13] = 0x10;
    big.extend(seg);
    expect_drop(&mut t, PROG_INGRESS, &big, Reason::MeshTooBig, "a 1480-byte packet for a 1450-byte overlay");

    // On a task's node: the request enters the task (web2 stands for one here) with the
    // client's address, and the task's reply goes back to the node that received it.
    let (v, into) = run(&mut t, PROG_INGRESS, &mesh_frame(VTEP1, 1, &to_web2));
    assert_eq!(v, TC_ACT_REDIRECT, "delivered into the task");
    assert_eq!(into, to_web2, "the request as the mesh node sent it");
    let answer = tcp_frame(GW_MAC, WEB2, IP2, CLIENT, 8080, 40001, 0x12);
    let (v, out) = run(&mut t, PROG_EGRESS, &answer);
    assert_eq!(v, TC_ACT_REDIRECT, "the task's reply is encapsulated");
    assert_eq!(out[30..34], VTEP1.octets(), "back to the node that received the request");
    assert_eq!(out[42..50], [0x08, 0, 0, 0, 0, 0x10, 0x01, 2], "marked MESH_OUT");
    assert_eq!(&out[50..], &answer[..], "unchanged inside");
    // Without a mesh flow, a reply to an outside address takes the way out as before.
    let (v, out) = run(&mut t, PROG_EGRESS, &tcp_frame(GW_MAC, WEB2, IP2, CLIENT, 8080, 40555, 0x12));
    assert_eq!(v, TC_ACT_OK, "handed to the node's stack");
    assert_eq!(out.len(), answer.len(), "not encapsulated");

    // A request that carries its published port, on a node without direct return
    // (`--mesh-return node`): the reply goes back through the receiving node all the same.
    // (`client`:`sport`'s request through node1 with the published port 30080, then web2's reply.)
    let through_node1 = |t: &mut TestDataplane, client: Ipv4Addr, sport: u16| {
        let request = tcp_frame(WEB2, GW_MAC, client, IP2, sport, 8080, 0x02);
        let (v, _) = run(t, PROG_INGRESS, &mesh_frame_port(VTEP1, 1, 30080, &request));
        assert_eq!(v, TC_ACT_REDIRECT, "delivered into the task");
        run(t, PROG_EGRESS, &tcp_frame(GW_MAC, WEB2, IP2, client, 8080, sport, 0x12))
    };
    let (v, out) = through_node1(&mut t, CLIENT, 40004);
    assert_eq!(v, TC_ACT_REDIRECT, "the task's reply is encapsulated");
    assert_eq!((out[30..34].to_vec(), out[49]), (VTEP1.octets().to_vec(), 2), "back to node1, marked MESH_OUT");

    // Direct return (`--mesh-return direct`): the task's reply leaves from this node by the
    // underlay with the receiving node's address and the published port its request carried.
    state.config.flags |= NODE_F_MESH_DIRECT;
    t.dp.apply(&state).expect("apply");
    let (v, out) = through_node1(&mut t, CLIENT, 40002);
    assert_eq!(v, TC_ACT_REDIRECT, "the reply leaves by the underlay");
    let mut want = tcp_frame(GW_MAC, WEB2, VTEP1, CLIENT, 30080, 40002, 0x12);
    want[0..12].copy_from_slice(&out[0..12]);
    assert_eq!(out, want, "not encapsulated: from the receiving node's address and published port");
    // A request that did not carry its port (from a node of an older version): back through it.
    let (v, out) = run(&mut t, PROG_EGRESS, &answer);
    assert_eq!(v, TC_ACT_REDIRECT, "the task's reply is encapsulated");
    assert_eq!((out[30..34].to_vec(), out[49]), (VTEP1.octets().to_vec(), 2), "back to node1, marked MESH_OUT");
    // A client that is the receiving node itself: back through it too (its own address as
    // source would be a martian there).
    let (v, out) = through_node1(&mut t, VTEP1, 40003);
    assert_eq!(v, TC_ACT_REDIRECT, "the task's reply is encapsulated");
    assert_eq!((out[30..34].to_vec(), out[49]), (VTEP1.octets().to_vec(), 2), "back to node1, marked MESH_OUT");
}

/// A UDP datagram from web2 (port `sport`) to the VIP's port 53, checksum 0 (none).
fn udp_to_vip(sport: u16) -> Vec<u8> {
    let mut f = eth(VIP_MAC, WEB2, 0x0800);
    f.extend(ipv4(IP2, VIP, 17, 8 + 4, 0x4000, &[]));
    f.extend(udp(sport, 53, 4));
    f.extend(b"ping");
    f
}

/// Drain, not drop, for UDP too: a flow stays with a task removed from the service (its
/// endpoint still there), and moves to another task with the next datagram once the task's
/// endpoint is gone, as soon as the agent has applied that.
#[test]
fn a_udp_flow_stays_with_a_drained_task_and_moves_when_the_task_is_gone() {
    let mut t = svc_host();
    let (v, out) = run(&mut t, PROG_EGRESS, &udp_to_vip(45000));
    assert_eq!(v, TC_ACT_REDIRECT, "sent to a task");
    let task = Ipv4Addr::new(out[80], out[81], out[82], out[83]);
    let line = SVC_CLUSTER.lines().find(|l| l.contains(&format!("ip: {task},"))).expect("the task's line").to_string();
    let apply = |t: &mut TestDataplane, yaml: &str| {
        let cluster = overlay::source::file::parse(yaml).expect("valid");
        let plan = desired::plan(&cluster, "node2").expect("plan");
        t.dp.apply(&plan.map_state(LOCAL_IFINDEX, &[(&plan.local[0], LOCAL_IFINDEX)])).expect("apply");
    };
    // Drained: out of the service, the endpoint still there.
    apply(&mut t, &SVC_CLUSTER.replace(&line, &line.replace(", service: web}", "}")));
    let (_, out) = run(&mut t, PROG_EGRESS, &udp_to_vip(45000));
    assert_eq!(out[80..84], task.octets(), "the flow carries on with its drained task");
    let (_, fresh) = run(&mut t, PROG_EGRESS, &udp_to_vip(45001));
    let mut others = std::collections::BTreeSet::new();
    for sport in 46000..46100u16 {
        let (_, o) = run(&mut t, PROG_EGRESS, &udp_to_vip(sport));
        others.insert([o[80], o[81], o[82], o[83]]);
    }
    assert!(!others.contains(&task.octets()) && fresh[80..84] != task.octets(), "no new flow goes to the drained task: {others:?}");
    // Gone: the endpoint deleted. The same flow's next datagram goes to another task.
    apply(&mut t, &SVC_CLUSTER.replace(&format!("{line}\n"), ""));
    let (v, out) = run(&mut t, PROG_EGRESS, &udp_to_vip(45000));
    assert_eq!(v, TC_ACT_REDIRECT, "still delivered");
    let moved = Ipv4Addr::new(out[80], out[81], out[82], out[83]);
    assert_ne!(moved, task, "the flow moved off the deleted task");
    assert!(others.contains(&moved.octets()), "to one of the remaining tasks: {moved}");
    let (_, again) = run(&mut t, PROG_EGRESS, &udp_to_vip(45000));
    assert_eq!(again[80..84], moved.octets(), "and stays there");
}
