//! A reference model, in plain Rust, of what the datapath's programs decide for one frame given
//! the maps: the action returned, the reason counted, and the bytes that leave. tests/model.rs
//! runs random frames through the loaded programs with `BPF_PROG_TEST_RUN` and requires the
//! programs and this model to agree byte for byte and verdict for verdict.
//!
//! It is written from the protocol and the maps, not from the programs' code paths: each check
//! says what it rejects and why, in the order the datapath applies them (the first failed check
//! is the counted reason). Its scope is the overlay's switching core: egress (anti-spoofing,
//! ARP answers, local switching, encapsulation, the gateway and the way out), the TC ingress
//! (the underlay's checks, decapsulation, the routing mesh's markings) and the XDP ingress.
//! Service translation, names answered in the datapath and the connection tables are outside
//! it: the maps given must hold no service, no name, and the node's flags neither services nor
//! the mesh ([`in_scope`] says whether a state qualifies).
use overlay_common::{
    EP_F_MULTI_NETWORK, FDB_GATEWAY, FDB_LOCAL, FDB_REMOTE, FDB_SERVICE, FdbKey, NODE_F_MESH, NODE_F_SERVICES, NeighKey, Reason, VNI_F_INTERNAL,
    VXLAN_MESH_IN, VXLAN_MESH_OUT,
    wire::{
        ARP_OP_REPLY, ARP_OP_REQUEST, ETH_HLEN, ETH_P_8021AD, ETH_P_8021Q, ETH_P_ARP, ETH_P_IP, IPPROTO_TCP, IPPROTO_UDP, IPV4_HLEN, OUTER_TTL, UDP_HLEN,
        VXLAN_ENCAP_LEN, VXLAN_FLAG_I, VXLAN_HLEN,
    },
};

use crate::control::desired::MapState;

/// `TC_ACT_OK`, `TC_ACT_REDIRECT`; `XDP_PASS`, `XDP_REDIRECT` (as the programs return them).
pub const TC_OK: i32 = 0;
pub const TC_SHOT: i32 = 2;
pub const TC_REDIRECT: i32 = 7;
pub const XDP_DROP: i32 = 1;
pub const XDP_PASS: i32 = 2;
pub const XDP_REDIRECT: i32 = 4;

/// What a program does with one frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outcome {
    /// The return value.
    pub action: i32,
    /// The counter it goes to (a forward kind or a drop reason).
    pub reason: Reason,
    /// The frame as it leaves (for a drop: as it came).
    pub bytes: Vec<u8>,
}

/// Whether the model covers `state` (see the module's scope).
pub fn in_scope(state: &MapState) -> bool {
    state.services.is_empty()
        && state.published.is_empty()
        && state.names.is_empty()
        && state.config.flags & (NODE_F_SERVICES | NODE_F_MESH) == 0
        && state.fdb.iter().all(|(_, e)| e.kind != FDB_SERVICE)
}

fn be16(f: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([f[at], f[at + 1]])
}

/// An IPv4 address as the maps hold it (network order in a native u32).
fn ip_at(f: &[u8], at: usize) -> u32 {
    u32::from_ne_bytes([f[at], f[at + 1], f[at + 2], f[at + 3]])
}

fn mac_at(f: &[u8], at: usize) -> [u8; 6] {
    [f[at], f[at + 1], f[at + 2], f[at + 3], f[at + 4], f[at + 5]]
}

fn is_vlan(ethertype: u16) -> bool {
    ethertype == ETH_P_8021Q || ethertype == ETH_P_8021AD
}

fn is_group(mac: &[u8; 6]) -> bool {
    mac[0] & 1 != 0
}

/// Whether `ip` falls in one of the overlay subnets (longest-prefix table `SUBNETS`).
fn in_overlay(state: &MapState, ip: u32) -> bool {
    let host = u32::from_be_bytes(ip.to_ne_bytes());
    state.subnets.keys().any(|&(addr, len)| {
        let net = u32::from_be_bytes(addr.to_ne_bytes());
        let mask = if len == 0 { 0 } else { u32::MAX << (32 - len.min(32)) };
        host & mask == net & mask
    })
}

fn drop(reason: Reason, frame: &[u8], action: i32) -> Outcome {
    Outcome { action, reason, bytes: frame.to_vec() }
}

fn forward(action: i32, reason: Reason, bytes: Vec<u8>) -> Outcome {
    Outcome { action, reason, bytes }
}

/// The IPv4 header fields the decisions read.
struct Ip {
    hlen: usize,
    proto: u8,
    /// Fragment offset (0 for a first or whole packet).
    offset: u16,
    /// Offset and more-fragments bits together (DF ignored).
    frag_bits: u16,
    src: u32,
    dst: u32,
}

/// The IPv4 header at `at`, if 20 bytes are there.
fn ip(f: &[u8], at: usize) -> Option<Ip> {
    if f.len() < at + IPV4_HLEN {
        return None;
    }
    let frags = be16(f, at + 6);
    Some(Ip {
        hlen: (f[at] & 0x0f) as usize * 4,
        proto: f[at + 9],
        offset: frags & 0x1fff,
        frag_bits: frags & 0x3fff,
        src: ip_at(f, at + 12),
        dst: ip_at(f, at + 16),
    })
}

/// `overlay_egress` on the host-side veth `ifindex` of an endpoint (or of nothing).
pub fn egress(state: &MapState, ifindex: u32, f: &[u8]) -> Outcome {
    assert!(in_scope(state), "the reference model does not cover services, names or the mesh");
    let shot = |r| drop(r, f, TC_SHOT);
    let Some(ep) = state.endpoints.get(&ifindex).copied() else { return shot(Reason::NoEndpoint) };
    if f.len() < ETH_HLEN {
        return shot(Reason::Truncated);
    }
    let (dst, src, ethertype) = (mac_at(f, 0), mac_at(f, 6), be16(f, 12));
    // Anti-spoofing first: a container speaks only with its own MAC...
    if src != ep.mac {
        return shot(Reason::SpoofedMac);
    }
    if is_vlan(ethertype) {
        return shot(Reason::Vlan);
    }
    if ethertype == ETH_P_ARP {
        return arp(state, &ep, f);
    }
    if ethertype != ETH_P_IP {
        return shot(Reason::UnsupportedEthertype);
    }
    let Some(h) = ip(f, ETH_HLEN) else { return shot(Reason::Truncated) };
    // ...and only from its own address.
    if h.src != ep.ip {
        return shot(Reason::SpoofedIp);
    }
    // Nothing floods: every address is known.
    if is_group(&dst) {
        return shot(Reason::Broadcast);
    }
    let Some(entry) = state.fdb.get(ep.vni, &FdbKey::new(ep.vni, dst)).copied() else { return shot(Reason::UnknownDestination) };
    match entry.kind {
        FDB_LOCAL => forward(TC_REDIRECT, Reason::FwdLocal, f.to_vec()),
        FDB_GATEWAY => gateway(state, &ep, &h, dst, f),
        _ => encapsulate(state, ep.vni, entry.vtep, f),
    }
}

/// An ARP request for an address of the endpoint's network: answered from the neighbour table.
fn arp(state: &MapState, ep: &overlay_common::EndpointInfo, f: &[u8]) -> Outcome {
    let shot = |r| drop(r, f, TC_SHOT);
    if f.len() < ETH_HLEN + 28 {
        return shot(Reason::Truncated);
    }
    let a = &f[ETH_HLEN..];
    let eth_ipv4 = a[0..2] == [0, 1] && a[2..4] == [0x08, 0x00] && a[4] == 6 && a[5] == 4;
    if !eth_ipv4 || be16(a, 6) != ARP_OP_REQUEST {
        return shot(Reason::ArpUnanswered);
    }
    if mac_at(a, 8) != ep.mac {
        return shot(Reason::SpoofedMac);
    }
    let (spa, tpa) = (ip_at(a, 14), ip_at(a, 24));
    // Probes and questions about its own address get no answer.
    if spa == 0 || tpa == ep.ip {
        return shot(Reason::ArpUnanswered);
    }
    if spa != ep.ip {
        return shot(Reason::SpoofedIp);
    }
    let Some(n) = state.neigh.get(ep.vni, &NeighKey { vni: ep.vni, ip: tpa }) else { return shot(Reason::ArpUnanswered) };
    // The request turned into the reply: tpa is at n.mac, told to the asker.
    let mut out = f.to_vec();
    out[0..6].copy_from_slice(&ep.mac);
    out[6..12].copy_from_slice(&n.mac);
    let r = ETH_HLEN;
    out[r + 6..r + 8].copy_from_slice(&ARP_OP_REPLY.to_be_bytes());
    out[r + 8..r + 14].copy_from_slice(&n.mac);
    out[r + 14..r + 18].copy_from_slice(&tpa.to_ne_bytes());
    out[r + 18..r + 24].copy_from_slice(&ep.mac);
    out[r + 24..r + 28].copy_from_slice(&spa.to_ne_bytes());
    forward(TC_REDIRECT, Reason::ArpReply, out)
}

/// A frame to the gateway's MAC: the resolver (DNS to the gateway's address), or the way out
/// for addresses outside every overlay of a network that is not internal.
fn gateway(state: &MapState, ep: &overlay_common::EndpointInfo, h: &Ip, gw_mac: [u8; 6], f: &[u8]) -> Outcome {
    let shot = |r| drop(r, f, TC_SHOT);
    let to_gateway = state.neigh.get(ep.vni, &NeighKey { vni: ep.vni, ip: h.dst }).is_some_and(|n| n.mac == gw_mac);
    if to_gateway {
        // Only DNS (UDP or TCP, whole packets, to port 53) is for the gateway's own address.
        let dport_at = ETH_HLEN + h.hlen + 2;
        let dns = (h.proto == IPPROTO_UDP || h.proto == IPPROTO_TCP) && h.frag_bits == 0 && f.len() >= dport_at + 2 && be16(f, dport_at) == 53;
        if !dns {
            return shot(Reason::GatewayOverlay);
        }
        // No names in the datapath's table here: every question goes to the node's resolver.
        let _ = ep.flags & EP_F_MULTI_NETWORK;
        return forward(TC_OK, Reason::FwdResolver, f.to_vec());
    }
    let internal = state.vnis.get(&ep.vni).is_none_or(|v| v.flags & VNI_F_INTERNAL != 0);
    if internal {
        return shot(Reason::GatewayInternal);
    }
    // Isolation holds through the way out too.
    if in_overlay(state, h.dst) {
        return shot(Reason::GatewayOverlay);
    }
    forward(TC_OK, Reason::FwdGateway, f.to_vec())
}

/// The UDP source port's entropy for a frame: inner addresses, protocol, and ports of whole
/// TCP/UDP packets without options, mixed by murmur3's finaliser (the skb has no hash in a test
/// run).
fn flow_hash(f: &[u8]) -> u32 {
    let Some(h) = ip(f, ETH_HLEN) else { return 0 };
    let mut x = h.src ^ h.dst.rotate_left(16) ^ ((h.proto as u32) << 8);
    if (h.proto == IPPROTO_TCP || h.proto == IPPROTO_UDP) && h.hlen == IPV4_HLEN && h.offset == 0 && f.len() >= ETH_HLEN + IPV4_HLEN + 4 {
        x ^= ip_at(f, ETH_HLEN + IPV4_HLEN);
    }
    x ^= x >> 16;
    x = x.wrapping_mul(0x85eb_ca6b);
    x ^= x >> 13;
    x = x.wrapping_mul(0xc2b2_ae35);
    x ^ (x >> 16)
}

/// The frame inside outer Ethernet (MACs left zero for the kernel's neighbour table), IPv4
/// (no options, id 0, DF clear, TTL 64), UDP (checksum 0) and VXLAN (I flag, VNI) to `vtep`.
fn encapsulate(state: &MapState, vni: u32, vtep: u32, f: &[u8]) -> Outcome {
    let cfg = state.config;
    if cfg.vtep == 0 {
        return drop(Reason::NoConfig, f, TC_SHOT);
    }
    let hash = flow_hash(f);
    let sport = cfg.src_port_min.wrapping_add(((hash as u64 * cfg.src_port_range as u64) >> 32) as u16);
    let total = (f.len() + IPV4_HLEN + UDP_HLEN + VXLAN_HLEN) as u16;
    let mut out = vec![0u8; 12];
    out.extend(ETH_P_IP.to_be_bytes());
    let mut iph = vec![0x45, 0x00];
    iph.extend(total.to_be_bytes());
    iph.extend([0, 0, 0, 0, OUTER_TTL, IPPROTO_UDP, 0, 0]);
    iph.extend(cfg.vtep.to_ne_bytes());
    iph.extend(vtep.to_ne_bytes());
    let c = super::frames::ipv4_checksum(&iph);
    iph[10..12].copy_from_slice(&c.to_be_bytes());
    out.extend(iph);
    out.extend(sport.to_be_bytes());
    out.extend(cfg.vxlan_port.to_be_bytes());
    out.extend((total - IPV4_HLEN as u16).to_be_bytes());
    out.extend([0, 0]);
    out.extend([VXLAN_FLAG_I, 0, 0, 0]);
    out.extend(&(vni << 8).to_be_bytes());
    out.extend_from_slice(f);
    forward(TC_REDIRECT, Reason::FwdEncap, out)
}

/// What the underlay's checks (shared by the TC and XDP ingress) make of a frame.
enum Underlay {
    NotOurs,
    ToNode,
    Mesh { vni: u32, from: u32, mark: u8 },
    Decap { ifindex: u32, vni: u32 },
}

const UDP_OFF: usize = ETH_HLEN + IPV4_HLEN;
const VXLAN_OFF: usize = UDP_OFF + UDP_HLEN;
const INNER_ETH_OFF: usize = VXLAN_OFF + VXLAN_HLEN;
const INNER_IP_OFF: usize = INNER_ETH_OFF + ETH_HLEN;

/// The underlay's checks: anything not addressed to this VTEP's VXLAN port is the kernel's;
/// VXLAN for it must come from a member that owns the inner source MAC, in a known VNI, and
/// carry a unicast IPv4 frame for a local endpoint.
fn classify(state: &MapState, f: &[u8]) -> Result<Underlay, Reason> {
    let cfg = state.config;
    if f.len() < ETH_HLEN || be16(f, 12) != ETH_P_IP {
        return Ok(Underlay::NotOurs);
    }
    let Some(h) = ip(f, ETH_HLEN) else { return Ok(Underlay::NotOurs) };
    if f[ETH_HLEN] >> 4 != 4 || cfg.vtep == 0 || h.dst != cfg.vtep {
        return Ok(Underlay::NotOurs);
    }
    if h.proto != IPPROTO_UDP || h.offset != 0 {
        return Ok(Underlay::ToNode);
    }
    let more_fragments = h.frag_bits != 0;
    if h.hlen != IPV4_HLEN {
        if h.hlen < IPV4_HLEN {
            return Ok(Underlay::NotOurs);
        }
        // Behind options: for our port it is refused, anything else is the node's.
        let at = ETH_HLEN + h.hlen + 2;
        if f.len() < at + 2 {
            return Ok(Underlay::NotOurs);
        }
        if be16(f, at) != cfg.vxlan_port {
            return Ok(Underlay::ToNode);
        }
        return Err(Reason::IpOptions);
    }
    if f.len() < UDP_OFF + UDP_HLEN {
        return Ok(Underlay::NotOurs);
    }
    if be16(f, UDP_OFF + 2) != cfg.vxlan_port {
        return Ok(Underlay::ToNode);
    }
    // Addressed to our VXLAN port: from here every failure is a counted drop.
    if more_fragments {
        return Err(Reason::Fragment);
    }
    if f.len() < VXLAN_OFF + VXLAN_HLEN {
        return Err(Reason::Truncated);
    }
    if f[VXLAN_OFF] & VXLAN_FLAG_I == 0 {
        return Err(Reason::VxlanFlags);
    }
    let vni = u32::from_be_bytes([0, f[VXLAN_OFF + 4], f[VXLAN_OFF + 5], f[VXLAN_OFF + 6]]);
    let mark = f[VXLAN_OFF + 7];
    if mark != 0 {
        return Ok(Underlay::Mesh { vni, from: h.src, mark });
    }
    if f.len() < INNER_ETH_OFF + ETH_HLEN {
        return Err(Reason::Truncated);
    }
    let (dst, src, ethertype) = (mac_at(f, INNER_ETH_OFF), mac_at(f, INNER_ETH_OFF + 6), be16(f, INNER_ETH_OFF + 12));
    // The sender must own the inner source: its FDB entry places it behind this VTEP.
    match state.fdb.get(vni, &FdbKey::new(vni, src)) {
        Some(owner) if owner.kind == FDB_REMOTE && owner.vtep == h.src => {}
        Some(_) => {
            if !state.members.contains_key(&h.src) {
                return Err(Reason::NotMember);
            }
            return Err(Reason::VtepMismatch);
        }
        None => {
            if !state.vnis.contains_key(&vni) {
                return Err(Reason::UnknownVni);
            }
            if !state.members.contains_key(&h.src) {
                return Err(Reason::NotMember);
            }
        }
    }
    if is_vlan(ethertype) {
        return Err(Reason::Vlan);
    }
    if ethertype != ETH_P_IP {
        return Err(Reason::UnsupportedEthertype);
    }
    if f.len() < INNER_IP_OFF + IPV4_HLEN {
        return Err(Reason::Truncated);
    }
    if is_group(&dst) {
        return Err(Reason::Broadcast);
    }
    match state.fdb.get(vni, &FdbKey::new(vni, dst)) {
        Some(t) if t.kind == FDB_LOCAL => Ok(Underlay::Decap { ifindex: t.ifindex, vni }),
        _ => Err(Reason::UnknownDestination),
    }
}

/// The inner frame of a VXLAN frame (the outer 50 bytes removed).
fn decapsulated(f: &[u8]) -> Vec<u8> {
    f[VXLAN_ENCAP_LEN..].to_vec()
}

/// `overlay_ingress` on the underlay.
pub fn ingress(state: &MapState, f: &[u8]) -> Outcome {
    assert!(in_scope(state), "the reference model does not cover services, names or the mesh");
    let shot = |r| drop(r, f, TC_SHOT);
    let pass = || forward(TC_OK, Reason::PassNotOverlay, f.to_vec());
    match classify(state, f) {
        Err(r) => shot(r),
        // Without published ports (mesh off) everything to the node's address is the node's.
        Ok(Underlay::NotOurs | Underlay::ToNode) => pass(),
        Ok(Underlay::Decap { .. }) => forward(TC_REDIRECT, Reason::FwdDecap, decapsulated(f)),
        Ok(Underlay::Mesh { vni, from, mark }) => {
            // A routing-mesh frame from another node: client requests for a local task, or a
            // task's replies to our clients (which need a flow this node made).
            if f.len() < INNER_ETH_OFF + ETH_HLEN {
                return shot(Reason::Truncated);
            }
            if be16(f, INNER_ETH_OFF + 12) != ETH_P_IP {
                return shot(Reason::UnsupportedEthertype);
            }
            let flow = ip(f, INNER_IP_OFF)
                .filter(|h| (h.proto == IPPROTO_TCP || h.proto == IPPROTO_UDP) && h.hlen == IPV4_HLEN && h.offset == 0 && f.len() >= INNER_IP_OFF + IPV4_HLEN + 4);
            match mark {
                VXLAN_MESH_IN => {
                    let dst = mac_at(f, INNER_ETH_OFF);
                    match state.fdb.get(vni, &FdbKey::new(vni, dst)) {
                        Some(t) if t.kind == FDB_LOCAL => {}
                        _ => return shot(Reason::UnknownDestination),
                    }
                    if !state.members.contains_key(&from) {
                        return shot(Reason::NotMember);
                    }
                    let Some(h) = flow else { return shot(Reason::MeshNoFlow) };
                    // The client must be outside every overlay.
                    if in_overlay(state, h.src) {
                        return shot(Reason::SpoofedIp);
                    }
                    forward(TC_REDIRECT, Reason::FwdDecap, decapsulated(f))
                }
                VXLAN_MESH_OUT => {
                    if !state.members.contains_key(&from) {
                        return shot(Reason::NotMember);
                    }
                    // No flow of ours is in the (empty) connection tables.
                    shot(Reason::MeshNoFlow)
                }
                _ => shot(Reason::VxlanFlags),
            }
        }
    }
}

/// `overlay_xdp_ingress` on the underlay; `targets`: the endpoints in its devmap.
pub fn xdp(state: &MapState, targets: &[u32], f: &[u8]) -> Outcome {
    assert!(in_scope(state), "the reference model does not cover services, names or the mesh");
    match classify(state, f) {
        Err(r) => drop(r, f, XDP_DROP),
        Ok(Underlay::NotOurs | Underlay::ToNode) => forward(XDP_PASS, Reason::PassNotOverlay, f.to_vec()),
        // The mesh is the TC program's.
        Ok(Underlay::Mesh { .. }) => forward(XDP_PASS, Reason::PassToTc, f.to_vec()),
        Ok(Underlay::Decap { ifindex, vni }) => {
            if !targets.contains(&ifindex) {
                return forward(XDP_PASS, Reason::PassToTc, f.to_vec());
            }
            // Larger than one frame of the network (a GRO train): TC carries it.
            let inner = f.len() - VXLAN_ENCAP_LEN;
            if inner > ETH_HLEN + 1500 {
                let mtu = state.vnis.get(&vni).map_or(0, |v| v.mtu as usize);
                if mtu == 0 || inner > ETH_HLEN + mtu {
                    return forward(XDP_PASS, Reason::PassToTc, f.to_vec());
                }
            }
            forward(XDP_REDIRECT, Reason::FwdDecap, decapsulated(f))
        }
    }
}
