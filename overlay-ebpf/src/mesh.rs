//! The routing mesh: a published port answers on every node's address. A client's packet to
//! `NODE:PUBLISHED` (from the underlay, or from the node itself through `lo`) is translated to a
//! task picked exactly as for the VIP ([`service::pick`]: same hash, same Maglev table, so any
//! node picks the same task for a flow) and sent to it with the client's own address as source:
//! into the task's namespace when it runs here, otherwise across the overlay in a VXLAN frame
//! marked [`VXLAN_MESH_IN`]. The task's node notes which node the flow came through
//! (`MESH_RETURN`); the task's replies, sent to its gateway for an address outside the overlay,
//! go back to that node in frames marked [`VXLAN_MESH_OUT`], where the reverse table gives them
//! the node's address and the published port as source before they leave by the underlay; or,
//! on a node that returns directly ([`NODE_F_MESH_DIRECT`], `--mesh-return direct`), they get
//! that source on the task's node (the published port came in the `MESH_IN` frame's VXLAN
//! header) and leave from there straight to the client.
//! Nothing is rewritten to a node address on the way in: the task sees the real client.
use aya_ebpf::{
    bindings::{BPF_F_INGRESS, TC_ACT_REDIRECT},
    helpers::{bpf_redirect, bpf_redirect_neigh},
    maps::lpm_trie::Key,
    programs::TcContext,
};
use network_types::ip::Ipv4Hdr;
use overlay_common::{
    Backend, CtKey, EndpointInfo, LbStatsKey, NODE_F_MESH, NODE_F_MESH_DIRECT, NodeConfig, PublishedKey, REV_F_MESH, Reason, RevEntry, RevKey,
    VXLAN_MESH_PORT_OFF,
    wire::{ETH_HLEN, IPPROTO_TCP, IPPROTO_UDP, IPV4_HLEN},
};

use crate::{
    ipv4,
    maps::{MEMBERS, MESH_RETURN, PUBLISHED, REVERSE, SERVICES, SUBNETS},
    ptr::ptr_at,
    service::{self, Next},
    underlay::VXLAN_OFF,
};

/// The loopback interface: ifindex 1 in every network namespace.
const LO_IFINDEX: u32 = 1;

/// A client's packet to a published port, decided.
#[derive(Clone, Copy)]
pub struct Inbound {
    pub vni: u32,
    pub proto: u8,
    pub backend: Backend,
    pub mac: [u8; 6],
    pub gw_mac: [u8; 6],
    pub next: Next,
    pub stats: LbStatsKey,
    pub new: bool,
    /// The published port the client asked (network order): told to the task's node.
    pub port: u16,
}

/// Whether the node publishes ports at all (no lookup per packet otherwise).
#[inline(always)]
pub fn enabled(cfg: &NodeConfig) -> bool {
    cfg.flags & NODE_F_MESH != 0
}

/// A packet to this node's address that is not VXLAN for it: if its destination port is
/// published, the task it goes to. `None`: not the mesh's, the node's own traffic.
#[inline(always)]
pub fn published(ctx: &TcContext, cfg: &NodeConfig, ip: &Ipv4Hdr) -> Result<Option<Inbound>, Reason> {
    let proto = ip.proto;
    if (proto != IPPROTO_TCP && proto != IPPROTO_UDP) || ipv4::header_len(ip) != IPV4_HLEN || ipv4::frag_offset(ip) != 0 {
        return Ok(None);
    }
    let Ok(ports) = ptr_at::<[u16; 2]>(ctx, ETH_HLEN + IPV4_HLEN) else { return Ok(None) };
    // SAFETY: bounds checked by ptr_at; ports stay in network order.
    let [sport, dport] = unsafe { *ports };
    let Some(p) = (unsafe { PUBLISHED.get(&PublishedKey { port: dport, proto, _pad: 0 }) }).copied() else { return Ok(None) };
    if ipv4::frag_bits(ip) != 0 {
        return Err(Reason::Fragment);
    }
    // One frame at a time (not a GRO train the kernel segments later): it must fit the overlay.
    // SAFETY: the context pointer is valid for the program's lifetime.
    let gso = unsafe { (*ctx.skb.skb).gso_size };
    if gso == 0 && p.mtu != 0 && ctx.len() > ETH_HLEN as u32 + p.mtu as u32 {
        return Err(Reason::MeshTooBig);
    }
    let svc = *unsafe { SERVICES.get(&p.service) }.ok_or(Reason::ServiceNoPort)?;
    let vni = p.service.vni;
    let client = u32::from_ne_bytes(ip.src_addr);
    let ct = CtKey { vni, client, vip: cfg.vtep, client_port: sport, vip_port: dport, proto, _pad: [0; 3] };
    let rev = RevEntry { vip: cfg.vtep, vip_port: dport, flags: REV_F_MESH };
    let opening = service::opening(ctx, proto, ETH_HLEN + IPV4_HLEN);
    let (backend, mac, new) = service::pick(&ct, &svc, p.service.port, opening, &rev)?;
    let next = service::next_hop(vni, &mac)?;
    if new {
        if let Next::Peer { .. } = next {
            // The task runs here: its replies are turned back on this node.
            let key = RevKey { vni, backend: backend.ip, client, backend_port: backend.port, client_port: sport, proto, _pad: [0; 3] };
            let _ = MESH_RETURN.insert(&key, &rev, 0);
        }
    }
    let stats = LbStatsKey { vni, vip: p.service.vip, task: backend.ip, vip_port: p.service.port, proto, _pad: 0 };
    Ok(Some(Inbound { vni, proto, backend, mac, gw_mac: p.gw_mac, next, stats, new, port: dport }))
}

/// Translates the client's packet to its task: destination address, port and MAC; the source
/// MAC becomes the network's gateway's (the source address stays the client's).
#[inline(always)]
pub fn to_task(ctx: &TcContext, m: &Inbound) -> Result<(), Reason> {
    service::to_task(ctx, m.proto, &m.backend, &m.mac)?;
    ctx.store(6, &m.gw_mac, 0).map_err(|_| Reason::AdjustFailed)
}

/// The (TCP/UDP, option-less) flow of the IPv4 packet at `l3`, seen from its task: the key of
/// the reverse and mesh return tables. `from_task`: the packet is the task's reply (source =
/// task); otherwise it is the client's (destination = task).
#[inline(always)]
fn flow_key(ctx: &TcContext, vni: u32, l3: usize, from_task: bool) -> Option<RevKey> {
    let ip = ptr_at::<Ipv4Hdr>(ctx, l3).ok()?;
    // SAFETY: bounds checked by ptr_at.
    let ip = unsafe { &*ip };
    let proto = ip.proto;
    if (proto != IPPROTO_TCP && proto != IPPROTO_UDP) || ipv4::header_len(ip) != IPV4_HLEN || ipv4::frag_offset(ip) != 0 {
        return None;
    }
    let ports = ptr_at::<[u16; 2]>(ctx, l3 + IPV4_HLEN).ok()?;
    // SAFETY: bounds checked by ptr_at.
    let [sport, dport] = unsafe { *ports };
    let (src, dst) = (u32::from_ne_bytes(ip.src_addr), u32::from_ne_bytes(ip.dst_addr));
    Some(if from_task {
        RevKey { vni, backend: src, client: dst, backend_port: sport, client_port: dport, proto, _pad: [0; 3] }
    } else {
        RevKey { vni, backend: dst, client: src, backend_port: dport, client_port: sport, proto, _pad: [0; 3] }
    })
}

/// A frame marked [`VXLAN_MESH_IN`] from VTEP `from`, inner IPv4 at `l3`: a member's mesh
/// client for one of our tasks. The client must be outside every overlay (a member cannot
/// speak for an overlay address this way); the flow's node, and the published port the frame
/// carries in its VXLAN header, are noted for the replies.
#[inline(always)]
pub fn arrival(ctx: &TcContext, vni: u32, from: u32, l3: usize) -> Result<(), Reason> {
    if unsafe { MEMBERS.get(from) }.is_none() {
        return Err(Reason::NotMember);
    }
    let key = flow_key(ctx, vni, l3, false).ok_or(Reason::MeshNoFlow)?;
    if SUBNETS.get(Key::new(32, key.client)).is_some() {
        return Err(Reason::SpoofedIp);
    }
    let port = ptr_at::<[u8; 2]>(ctx, VXLAN_OFF + VXLAN_MESH_PORT_OFF)?;
    // SAFETY: bounds checked by ptr_at; the port stays in network order.
    let back = RevEntry { vip: from, vip_port: u16::from_ne_bytes(unsafe { *port }), flags: REV_F_MESH };
    // A lookup first: no bucket lock for every packet of the flow.
    if unsafe { MESH_RETURN.get(&key) }.copied() != Some(back) {
        let _ = MESH_RETURN.insert(&key, &back, 0);
    }
    Ok(())
}

/// A frame marked [`VXLAN_MESH_OUT`] from VTEP `from`, inner IPv4 at `l3`: a task's reply to a
/// mesh client of this node. Returns how its source is restored.
#[inline(always)]
pub fn reply(ctx: &TcContext, vni: u32, from: u32, l3: usize) -> Result<RevEntry, Reason> {
    if unsafe { MEMBERS.get(from) }.is_none() {
        return Err(Reason::NotMember);
    }
    let key = flow_key(ctx, vni, l3, true).ok_or(Reason::MeshNoFlow)?;
    let r = *unsafe { REVERSE.get(&key) }.ok_or(Reason::MeshNoFlow)?;
    if r.flags & REV_F_MESH == 0 {
        return Err(Reason::MeshNoFlow);
    }
    Ok(r)
}

/// Where a task's frame to an address outside the overlay goes when it answers a mesh client.
pub enum Return {
    /// Back to the node that received the request, encapsulated.
    Node { vtep: u32 },
    /// Out from here with the source `rev` (the node that received the request and the
    /// published port): that node is this one, or this node returns directly.
    Here { rev: RevEntry },
}

/// A frame the local task `ep` sends to its gateway for an address outside the overlay: the
/// reply of a mesh flow, or `None` (the way out as usual). A reply to a client that came
/// through another node goes back through it, unless this node returns directly
/// ([`NODE_F_MESH_DIRECT`]) and knows the published port; a client that is that node itself,
/// or this one, always gets its replies the long way (a packet with a host's own address as
/// source would be a martian to it).
#[inline(always)]
pub fn returning(ctx: &TcContext, cfg: &NodeConfig, ep: &EndpointInfo) -> Option<Return> {
    if !enabled(cfg) {
        return None;
    }
    let key = flow_key(ctx, ep.vni, ETH_HLEN, true)?;
    if key.backend != ep.ip {
        return None;
    }
    let back = *unsafe { MESH_RETURN.get(&key) }?;
    let node = back.vip;
    if node != cfg.vtep {
        let direct = cfg.flags & NODE_F_MESH_DIRECT != 0 && back.vip_port != 0 && key.client != node && key.client != cfg.vtep;
        if direct {
            return Some(Return::Here { rev: back });
        }
        return Some(Return::Node { vtep: node });
    }
    let rev = *unsafe { REVERSE.get(&key) }?;
    (rev.flags & REV_F_MESH != 0).then_some(Return::Here { rev })
}

/// Gives a reply the node's address and published port as source (`rev`) and sends it to the
/// client: out of the underlay (next hop from the kernel's FIB and neighbours), or, when the
/// client is this node itself, into its own stack through `lo`.
#[inline(always)]
pub fn send_out(ctx: &TcContext, cfg: &NodeConfig, rev: &RevEntry) -> Result<i32, Reason> {
    let ip = ptr_at::<Ipv4Hdr>(ctx, ETH_HLEN)?;
    // SAFETY: bounds checked by ptr_at.
    let (proto, dst) = unsafe { ((*ip).proto, u32::from_ne_bytes((*ip).dst_addr)) };
    service::rewrite(ctx, proto, 12, rev.vip, 0, rev.vip_port)?;
    let action = if dst == cfg.vtep {
        // Entering `lo` runs eth_type_trans: the frame is for this host only when addressed to
        // lo's all-zero MAC (a task's frame is for its gateway's MAC).
        ctx.store(0, &[0u8; 12], 0).map_err(|_| Reason::AdjustFailed)?;
        // SAFETY: plain helper call.
        unsafe { bpf_redirect(LO_IFINDEX, BPF_F_INGRESS as u64) as i32 }
    } else {
        // SAFETY: plain helper call; a null nexthop asks the kernel to look the route up.
        unsafe { bpf_redirect_neigh(cfg.underlay_ifindex, core::ptr::null_mut(), 0, 0) as i32 }
    };
    if action != TC_ACT_REDIRECT as i32 {
        return Err(Reason::RedirectFailed);
    }
    Ok(action)
}
