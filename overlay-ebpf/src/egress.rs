//! Frames sent by a local endpoint. Decide, then act: [`decide`] parses and checks the frame
//! (anti-spoofing) and looks up where it goes, returning one [`Action`]; [`act`] does the
//! packet surgery for that action (ARP answer, local switch, encapsulation, hand-off to the
//! node's stack for the way out).
use aya_ebpf::{
    bindings::{
        bpf_adj_room_mode::BPF_ADJ_ROOM_MAC,
        BPF_F_ADJ_ROOM_ENCAP_L2_ETH, BPF_F_ADJ_ROOM_ENCAP_L3_IPV4,
        BPF_F_ADJ_ROOM_ENCAP_L4_UDP, BPF_F_ADJ_ROOM_FIXED_GSO, TC_ACT_OK, TC_ACT_REDIRECT,
    },
    helpers::{bpf_redirect_neigh, bpf_redirect_peer, bpf_skb_change_type},
    maps::lpm_trie::Key,
    programs::TcContext,
};
use network_types::{eth::EthHdr, ip::Ipv4Hdr};
use overlay_common::{
    Backend, EP_F_MULTI_NETWORK, EndpointInfo, LbStatsKey, RevEntry, VXLAN_MESH_OUT, FDB_GATEWAY, FDB_LOCAL, FDB_REMOTE, FDB_SERVICE, FdbKey, NameEntry, NeighKey, NodeConfig, Reason, VNI_F_INTERNAL,
    wire::{
        ARP_OP_REPLY, ARP_OP_REQUEST, ETH_HLEN, ETH_P_ARP, ETH_P_IP, IPPROTO_TCP, IPPROTO_UDP, IPV4_HLEN,
        OUTER_TTL, UDP_HLEN, VXLAN_ENCAP_LEN, VXLAN_FLAG_I, VXLAN_HLEN, vxlan_vni_field,
    },
};

use crate::{
    arp::EthArp,
    dns::{self, Question},
    eth, ipv4,
    mesh::{self, Return},
    maps::{CONFIG, DNS_KEY, ENDPOINTS, FDB, NAMES, NEIGH, SUBNETS, VNIS},
    ptr::{ptr_at, ptr_at_mut, put},
    service::{self, Decision, Next},
    stats::Verdict,
};

/// `PACKET_HOST`: the frame is for this host (skb->pkt_type).
const PACKET_HOST: u32 = 0;
/// DNS, as containers ask their gateway.
const DNS_PORT: u16 = 53;

/// `BPF_F_ADJ_ROOM_ENCAP_L2(len)`: the inner L2 header length, in the top byte of the flags.
const fn encap_l2_len(len: u64) -> u64 {
    (len & 0xff) << 56
}

/// Encapsulation flags: the kernel records the tunnel (outer IPv4/UDP, inner Ethernet) so that
/// GSO/TSO of encapsulated TCP keeps working; FIXED_GSO keeps the inner MSS, which the 1450-byte
/// container MTU already leaves room for.
const ENCAP_FLAGS: u64 = (BPF_F_ADJ_ROOM_FIXED_GSO
    | BPF_F_ADJ_ROOM_ENCAP_L3_IPV4
    | BPF_F_ADJ_ROOM_ENCAP_L4_UDP
    | BPF_F_ADJ_ROOM_ENCAP_L2_ETH) as u64
    | encap_l2_len(ETH_HLEN as u64);

/// What happens to a frame an endpoint sent.
pub enum Action {
    /// Answer its ARP request: `ip` is at `mac`.
    ArpReply { ip: u32, mac: [u8; 6] },
    /// Switch it to the local endpoint behind host-side veth `ifindex`.
    Peer { ifindex: u32 },
    /// Encapsulate it to the remote VTEP `vtep`.
    Encap { vtep: u32 },
    /// Hand it to this node's stack: the way out (routed, masqueraded by the node).
    ToHost,
    /// Hand it to this node's stack for the agent's resolver on the gateway's address.
    Resolver,
    /// Answer its DNS question for a known overlay name, here.
    DnsReply { question: Question, entry: *const NameEntry, gw_mac: [u8; 6] },
    /// Answer its ping to a service's VIP.
    VipEcho { vip_mac: [u8; 6] },
    /// A task's reply to a client of a published port that came through node `vtep`: back
    /// to that node, encapsulated and marked for the mesh.
    MeshReturn { vtep: u32 },
    /// A task's reply to a client of a published port that came through this node: source
    /// restored (`rev`), out to the client.
    MeshOut { rev: RevEntry },
    /// Translate it from a VIP to one of the service's tasks, then switch or encapsulate it.
    Service { proto: u8, backend: Backend, mac: [u8; 6], next: Next, stats: LbStatsKey, new: bool },
}

/// Parses, checks and looks up: where the frame from the endpoint behind `ifindex` goes.
#[inline(always)]
pub fn decide(ctx: &TcContext, ep: &EndpointInfo) -> Result<Action, Reason> {
    let eth = ptr_at::<EthHdr>(ctx, 0)?;
    // SAFETY: bounds checked by ptr_at.
    let (src, dst, ethertype) = unsafe { ((*eth).src_addr, (*eth).dst_addr, eth::ethertype(&*eth)) };
    if src != ep.mac {
        return Err(Reason::SpoofedMac);
    }
    if eth::is_vlan(ethertype) {
        return Err(Reason::Vlan);
    }
    if ethertype == ETH_P_ARP {
        return decide_arp(ctx, ep);
    }
    if ethertype != ETH_P_IP {
        return Err(Reason::UnsupportedEthertype);
    }
    let ip = ptr_at::<Ipv4Hdr>(ctx, ETH_HLEN)?;
    // SAFETY: bounds checked by ptr_at.
    let ip = unsafe { &*ip };
    if u32::from_ne_bytes(ip.src_addr) != ep.ip {
        return Err(Reason::SpoofedIp);
    }
    if eth::is_group(&dst) {
        return Err(Reason::Broadcast);
    }
    let entry = *unsafe { FDB.get(FdbKey::new(ep.vni, dst)) }.ok_or(Reason::UnknownDestination)?;
    if entry.kind == FDB_LOCAL || entry.kind == FDB_REMOTE {
        service::forget_direct(ctx, ep.vni, ip);
    }
    match entry.kind {
        FDB_LOCAL => Ok(Action::Peer { ifindex: entry.ifindex }),
        FDB_GATEWAY => decide_gateway(ctx, ep, ip, dst),
        FDB_SERVICE => match service::decide(ctx, ep, ip)? {
            Decision::Echo => Ok(Action::VipEcho { vip_mac: dst }),
            Decision::Task { backend, mac, next, stats, new } => Ok(Action::Service { proto: ip.proto, backend, mac, next, stats, new }),
        },
        _ => Ok(Action::Encap { vtep: entry.vtep }),
    }
}

/// A packet for the gateway: a DNS question to the gateway's own address goes to the node's
/// resolver (internal networks too); anything else leaves the overlay, unless the network is
/// internal or the destination is inside an overlay (isolation holds through the way out too).
#[inline(always)]
fn decide_gateway(ctx: &TcContext, ep: &EndpointInfo, ip: &Ipv4Hdr, gw_mac: [u8; 6]) -> Result<Action, Reason> {
    let dst = u32::from_ne_bytes(ip.dst_addr);
    let to_gateway = unsafe { NEIGH.get(NeighKey { vni: ep.vni, ip: dst }) }.is_some_and(|n| n.mac == gw_mac);
    if to_gateway {
        let hlen = ipv4::header_len(ip);
        let l4 = ETH_HLEN + hlen;
        let dns = (ip.proto == IPPROTO_UDP || ip.proto == IPPROTO_TCP)
            && ipv4::frag_offset(ip) == 0
            && ipv4::frag_bits(ip) == 0
            && ctx.load::<[u8; 2]>(l4 + 2).is_ok_and(|p| u16::from_be_bytes(p) == DNS_PORT);
        if !dns {
            return Err(Reason::GatewayOverlay);
        }
        // A plain UDP question for a name of this network: answered here. A container on
        // several networks sees names this network's table does not hold: its resolver answers.
        if ip.proto == IPPROTO_UDP && hlen == IPV4_HLEN && ep.flags & EP_F_MULTI_NETWORK == 0 {
            if let Some(q) = dns::question(ctx, ep.vni) {
                let key = DNS_KEY.get_ptr(0).ok_or(Reason::NoConfig)?;
                // SAFETY: the per-CPU slot question() just filled.
                if let Some(entry) = unsafe { NAMES.get(&*key) } {
                    return Ok(Action::DnsReply { question: q, entry: entry as *const NameEntry, gw_mac });
                }
            }
        }
        return Ok(Action::Resolver);
    }
    if let Some(cfg) = CONFIG.get(0) {
        match mesh::returning(ctx, cfg, ep) {
            Some(Return::Node { vtep }) => return Ok(Action::MeshReturn { vtep }),
            Some(Return::Here { rev }) => return Ok(Action::MeshOut { rev }),
            None => {}
        }
    }
    let internal = unsafe { VNIS.get(ep.vni) }.is_none_or(|v| v.flags & VNI_F_INTERNAL != 0);
    if internal {
        return Err(Reason::GatewayInternal);
    }
    if SUBNETS.get(Key::new(32, dst)).is_some() {
        return Err(Reason::GatewayOverlay);
    }
    Ok(Action::ToHost)
}

/// An ARP request for an address of the endpoint's network (its gateway included), answered
/// from the neighbour table. Nothing floods.
#[inline(always)]
fn decide_arp(ctx: &TcContext, ep: &EndpointInfo) -> Result<Action, Reason> {
    let arp = ptr_at::<EthArp>(ctx, ETH_HLEN)?;
    // SAFETY: bounds checked by ptr_at.
    let arp = unsafe { &*arp };
    if !arp.is_eth_ipv4() || arp.oper != ARP_OP_REQUEST.to_be_bytes() {
        return Err(Reason::ArpUnanswered);
    }
    if arp.sha != ep.mac {
        return Err(Reason::SpoofedMac);
    }
    let spa = u32::from_ne_bytes(arp.spa);
    let tpa = u32::from_ne_bytes(arp.tpa);
    // A probe (sender 0.0.0.0) or a question about its own address gets no answer.
    if spa == 0 || tpa == ep.ip {
        return Err(Reason::ArpUnanswered);
    }
    if spa != ep.ip {
        return Err(Reason::SpoofedIp);
    }
    let neigh = unsafe { NEIGH.get(NeighKey { vni: ep.vni, ip: tpa }) }.ok_or(Reason::ArpUnanswered)?;
    Ok(Action::ArpReply { ip: tpa, mac: neigh.mac })
}

/// Does what [`decide`] chose.
#[inline(always)]
pub fn act(ctx: &TcContext, ep: &EndpointInfo, ifindex: u32, action: Action) -> Result<Verdict, Reason> {
    let len = ctx.len();
    match action {
        Action::ArpReply { ip, mac } => {
            arp_reply(ctx, ep, ip, mac)?;
            // SAFETY: plain helper call; into the ingress of the veth's other end, the
            // endpoint's interface.
            let action = unsafe { bpf_redirect_peer(ifindex, 0) } as i32;
            if action != TC_ACT_REDIRECT as i32 {
                return Err(Reason::RedirectFailed);
            }
            Ok(Verdict { action, reason: Reason::ArpReply, vni: 0, inner_len: 0 })
        }
        Action::Peer { ifindex } => {
            // A task's reply to a client of its service leaves here with the VIP as source.
            service::reverse(ctx, ep.vni)?;
            peer(ep, ifindex, len)
        }
        Action::Encap { vtep } => encap(ctx, ep.vni, vtep, len, (0, 0), Reason::FwdEncap),
        Action::MeshReturn { vtep } => encap(ctx, ep.vni, vtep, len, (VXLAN_MESH_OUT, 0), Reason::FwdMeshOut),
        Action::MeshOut { rev } => {
            let cfg = *CONFIG.get(0).ok_or(Reason::NoConfig)?;
            let action = mesh::send_out(ctx, &cfg, &rev)?;
            Ok(Verdict { action, reason: Reason::FwdMeshOut, vni: ep.vni, inner_len: len })
        }
        Action::VipEcho { vip_mac } => {
            service::echo_reply(ctx, ep, vip_mac)?;
            // SAFETY: plain helper call; back into the endpoint's own interface.
            let action = unsafe { bpf_redirect_peer(ifindex, 0) } as i32;
            if action != TC_ACT_REDIRECT as i32 {
                return Err(Reason::RedirectFailed);
            }
            Ok(Verdict { action, reason: Reason::VipEchoReply, vni: ep.vni, inner_len: len })
        }
        Action::Service { proto, backend, mac, next, stats, new } => {
            service::to_task(ctx, proto, &backend, &mac)?;
            service::count(&stats, new, len);
            match next {
                Next::Peer { ifindex } => peer(ep, ifindex, len),
                Next::Encap { vtep } => encap(ctx, ep.vni, vtep, len, (0, 0), Reason::FwdEncap),
            }
        }
        Action::DnsReply { question, entry, gw_mac } => {
            // SAFETY: a value of the NAMES map, valid while the program runs.
            dns::reply(ctx, ep, gw_mac, &question, unsafe { &*entry })?;
            // SAFETY: plain helper call. Straight into the ingress of the veth's other end, the
            // endpoint's interface, in this same pass (no second trip through the veth's queue).
            let action = unsafe { bpf_redirect_peer(ifindex, 0) } as i32;
            if action != TC_ACT_REDIRECT as i32 {
                return Err(Reason::RedirectFailed);
            }
            Ok(Verdict { action, reason: Reason::DnsReply, vni: ep.vni, inner_len: len })
        }
        a @ (Action::ToHost | Action::Resolver) => {
            // The frame is addressed to the gateway's MAC, not the host veth's: mark it for this
            // host so that IP takes it (and routes it out, or delivers it to the resolver)
            // instead of dropping it as "other host".
            // SAFETY: the context pointer is valid; PACKET_HOST is an allowed type.
            if unsafe { bpf_skb_change_type(ctx.skb.skb, PACKET_HOST) } != 0 {
                return Err(Reason::RedirectFailed);
            }
            let reason = if matches!(a, Action::Resolver) { Reason::FwdResolver } else { Reason::FwdGateway };
            Ok(Verdict { action: TC_ACT_OK as i32, reason, vni: ep.vni, inner_len: len })
        }
    }
}

/// Switches the frame to the local endpoint behind `ifindex`, into its namespace.
#[inline(always)]
fn peer(ep: &EndpointInfo, ifindex: u32, len: u32) -> Result<Verdict, Reason> {
    // SAFETY: plain helper call.
    let action = unsafe { bpf_redirect_peer(ifindex, 0) } as i32;
    if action != TC_ACT_REDIRECT as i32 {
        return Err(Reason::RedirectFailed);
    }
    Ok(Verdict { action, reason: Reason::FwdLocal, vni: ep.vni, inner_len: len })
}

/// Encapsulates the frame of network `vni` to the remote VTEP `vtep` and sends it out of the
/// underlay; counted as `reason`. `mark`: the VXLAN header's low reserved byte and the published
/// port for its 2nd and 3rd (network order), see [`overlay_common::VXLAN_MESH_IN`]; `(0, 0)`
/// for plain overlay traffic.
#[inline(always)]
pub fn encap(ctx: &TcContext, vni: u32, vtep: u32, len: u32, mark: (u8, u16), reason: Reason) -> Result<Verdict, Reason> {
    let cfg = *CONFIG.get(0).ok_or(Reason::NoConfig)?;
    if cfg.vtep == 0 {
        return Err(Reason::NoConfig);
    }
    let hash = flow_hash(ctx);
    encapsulate(ctx, &cfg, vni, vtep, len, hash, mark)?;
    // Outer L2 comes from the kernel's neighbour table after a FIB lookup of the remote VTEP.
    // SAFETY: plain helper call; a null nexthop asks the kernel to look the route up.
    let action = unsafe { bpf_redirect_neigh(cfg.underlay_ifindex, core::ptr::null_mut(), 0, 0) } as i32;
    if action != TC_ACT_REDIRECT as i32 {
        return Err(Reason::RedirectFailed);
    }
    Ok(Verdict { action, reason, vni, inner_len: len })
}

/// The endpoint behind the veth this frame entered by.
#[inline(always)]
pub fn try_egress(ctx: &TcContext) -> Result<Verdict, Reason> {
    // SAFETY: the context pointer is valid for the program's lifetime.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    let ep = *unsafe { ENDPOINTS.get(ifindex) }.ok_or(Reason::NoEndpoint)?;
    let action = decide(ctx, &ep)?;
    act(ctx, &ep, ifindex, action)
}

/// Flow entropy for the outer UDP source port: the skb's hash when the stack already set one (a
/// TCP socket's `sk_txhash`, as the kernel driver's `skb_get_hash` would use), otherwise a cheap
/// mix of the inner addresses, protocol and ports. Recomputing the hash with the flow dissector
/// (`bpf_get_hash_recalc`) cost more than the rest of encapsulation together.
#[inline(always)]
fn flow_hash(ctx: &TcContext) -> u32 {
    // SAFETY: the context pointer is valid for the program's lifetime.
    let h = unsafe { (*ctx.skb.skb).hash };
    if h != 0 {
        return h;
    }
    let Ok(ip) = ptr_at::<Ipv4Hdr>(ctx, ETH_HLEN) else { return 0 };
    // SAFETY: bounds checked by ptr_at.
    let ip = unsafe { &*ip };
    let mut x = u32::from_ne_bytes(ip.src_addr) ^ u32::from_ne_bytes(ip.dst_addr).rotate_left(16) ^ ((ip.proto as u32) << 8);
    // Ports for TCP and UDP only (ICMP's checksum would split one flow over many ports).
    let has_ports = ip.proto == IPPROTO_TCP || ip.proto == IPPROTO_UDP;
    if has_ports && ipv4::header_len(ip) == IPV4_HLEN && ipv4::frag_offset(ip) == 0 {
        if let Ok(ports) = ptr_at::<u32>(ctx, ETH_HLEN + IPV4_HLEN) {
            // SAFETY: bounds checked by ptr_at.
            x ^= unsafe { core::ptr::read_unaligned(ports) };
        }
    }
    // murmur3's finaliser: every input bit reaches every output bit.
    x ^= x >> 16;
    x = x.wrapping_mul(0x85eb_ca6b);
    x ^= x >> 13;
    x = x.wrapping_mul(0xc2b2_ae35);
    x ^ (x >> 16)
}

/// One's-complement sum of the outer IPv4 header's 16-bit words (checksum field zero).
#[inline(always)]
fn outer_ip_checksum(total_len: u16, src: u32, dst: u32) -> u16 {
    let (s, d) = (src.to_ne_bytes(), dst.to_ne_bytes());
    let mut sum: u32 = 0x4500
        + total_len as u32
        + (((OUTER_TTL as u32) << 8) | IPPROTO_UDP as u32)
        + u16::from_be_bytes([s[0], s[1]]) as u32
        + u16::from_be_bytes([s[2], s[3]]) as u32
        + u16::from_be_bytes([d[0], d[1]]) as u32
        + u16::from_be_bytes([d[2], d[3]]) as u32;
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    !(sum as u16)
}

/// Wraps the frame in outer Ethernet/IPv4/UDP/VXLAN, writing the headers straight into the
/// packet. The outer MACs are left zero for `bpf_redirect_neigh` to fill.
#[inline(always)]
fn encapsulate(ctx: &TcContext, cfg: &NodeConfig, vni: u32, vtep: u32, len: u32, hash: u32, mark: (u8, u16)) -> Result<(), Reason> {
    let sport = cfg.src_port_min.wrapping_add(((hash as u64 * cfg.src_port_range as u64) >> 32) as u16);
    ctx.adjust_room(VXLAN_ENCAP_LEN as i32, BPF_ADJ_ROOM_MAC, ENCAP_FLAGS)
        .map_err(|_| Reason::AdjustFailed)?;
    // The room was opened behind the original Ethernet header: [eth][50 new bytes][IPv4 ...].
    const HDR: usize = ETH_HLEN + VXLAN_ENCAP_LEN;
    let p = ptr_at_mut::<[u8; HDR]>(ctx, 0).map_err(|_| Reason::AdjustFailed)? as *mut u8;
    let ip_total = (len as usize + IPV4_HLEN + UDP_HLEN + VXLAN_HLEN) as u16;
    const IP: usize = ETH_HLEN;
    const UDP: usize = IP + IPV4_HLEN;
    const VX: usize = UDP + UDP_HLEN;
    // SAFETY: all offsets are below HDR, which ptr_at_mut checked.
    unsafe {
        // Inner Ethernet: the frame's own header, moved behind the tunnel headers.
        put::eth_header(p.add(VX + VXLAN_HLEN), p);
        // Outer Ethernet: MACs zero (filled by the neighbour subsystem), type IPv4.
        put::raw32(p, 0, 0);
        put::raw32(p, 4, 0);
        put::raw32(p, 8, 0);
        put::be16(p, 12, ETH_P_IP);
        // Outer IPv4: no options, DF clear (as the kernel driver sends), id 0.
        put::be16(p, IP, 0x4500);
        put::be16(p, IP + 2, ip_total);
        put::raw32(p, IP + 4, 0);
        put::be16(p, IP + 8, ((OUTER_TTL as u16) << 8) | IPPROTO_UDP as u16);
        put::be16(p, IP + 10, outer_ip_checksum(ip_total, cfg.vtep, vtep));
        put::raw32(p, IP + 12, cfg.vtep);
        put::raw32(p, IP + 16, vtep);
        // UDP: checksum 0, allowed for VXLAN over IPv4 (RFC 7348 section 5).
        put::be16(p, UDP, sport);
        put::be16(p, UDP + 2, cfg.vxlan_port);
        put::be16(p, UDP + 4, ip_total - IPV4_HLEN as u16);
        put::be16(p, UDP + 6, 0);
        // VXLAN: I flag, the VNI, and for the routing mesh our mark in the low reserved byte
        // and the published port in the 2nd and 3rd (VXLAN_MESH_PORT_OFF).
        let port = mark.1.to_ne_bytes();
        put::raw32(p, VX, u32::from_ne_bytes([VXLAN_FLAG_I, 0, port[0], port[1]]));
        put::raw32(p, VX + 4, (vxlan_vni_field(vni) | mark.0 as u32).to_be());
    }
    Ok(())
}

/// Turns the ARP request into the reply (`ip` is at `mac`), in place.
#[inline(always)]
fn arp_reply(ctx: &TcContext, ep: &EndpointInfo, ip: u32, mac: [u8; 6]) -> Result<(), Reason> {
    let eth = ptr_at_mut::<EthHdr>(ctx, 0)?;
    let arp = ptr_at_mut::<EthArp>(ctx, ETH_HLEN)?;
    // SAFETY: both bounds checked by ptr_at_mut; no helper has moved the data since.
    unsafe {
        (*eth).dst_addr = ep.mac;
        (*eth).src_addr = mac;
        (*arp).oper = ARP_OP_REPLY.to_be_bytes();
        (*arp).tha = ep.mac;
        (*arp).tpa = (*arp).spa;
        (*arp).sha = mac;
        (*arp).spa = ip.to_ne_bytes();
    }
    Ok(())
}
