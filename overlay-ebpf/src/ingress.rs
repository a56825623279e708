//! Frames from the underlay: VXLAN for this node is checked, decapsulated and delivered into the
//! endpoint's namespace; everything else passes to the kernel untouched. Decide, then act:
//! [`decide`] parses, checks and looks up, returning one [`Action`]; [`act`] does it.
use aya_ebpf::{
    bindings::{
        BPF_F_ADJ_ROOM_FIXED_GSO, TC_ACT_OK, TC_ACT_REDIRECT, bpf_adj_room_mode::BPF_ADJ_ROOM_MAC,
    },
    helpers::bpf_redirect_peer,
    programs::TcContext,
};
use network_types::{eth::EthHdr, ip::Ipv4Hdr};
use overlay_common::{
    FDB_LOCAL, FdbKey, NodeConfig, Reason, RevEntry, VXLAN_MESH_IN, VXLAN_MESH_OUT,
    wire::{ETH_HLEN, ETH_P_IP, VXLAN_ENCAP_LEN},
};

use crate::{
    egress, eth,
    mesh::{self, Inbound},
    service::Next,
    maps::{CONFIG, FDB},
    ptr::{ptr_at, ptr_at_mut, put},
    stats::Verdict,
    underlay::{INNER_ETH_OFF, INNER_IP_OFF, Underlay, classify},
};

/// `BPF_F_ADJ_ROOM_DECAP_L3_IPV4`: the L3 behind the removed headers is IPv4.
const BPF_F_ADJ_ROOM_DECAP_L3_IPV4: u64 = 1 << 7;
/// FIXED_GSO: a GRO/GSO train keeps its inner MSS when the outer headers go.
const DECAP_FLAGS: u64 = BPF_F_ADJ_ROOM_FIXED_GSO as u64 | BPF_F_ADJ_ROOM_DECAP_L3_IPV4;

/// What happens to a frame from the underlay.
pub enum Action {
    /// Not overlay traffic for this node: the kernel's, untouched.
    Pass,
    /// Decapsulate it and deliver it to the local endpoint behind host-side veth `ifindex`.
    Decap { ifindex: u32, vni: u32 },
    /// A client's packet to a published port of this node: to its task (the routing mesh).
    MeshIn(Inbound),
    /// A task's reply to a mesh client of this node: decapsulate, restore the source (`rev`),
    /// send it out to the client.
    MeshOut { vni: u32, rev: RevEntry },
}

/// Not VXLAN for this node, but to its address: a published port's (the mesh), or the node's.
#[inline(always)]
fn published_or_pass(ctx: &TcContext, cfg: &NodeConfig, ip: &Ipv4Hdr) -> Result<Action, Reason> {
    if !mesh::enabled(cfg) {
        return pass();
    }
    match mesh::published(ctx, cfg, ip)? {
        Some(m) => Ok(Action::MeshIn(m)),
        None => pass(),
    }
}

#[inline(always)]
fn pass() -> Result<Action, Reason> {
    Ok(Action::Pass)
}

#[inline(always)]
pub fn try_ingress(ctx: &TcContext) -> Result<Verdict, Reason> {
    let action = decide(ctx)?;
    act(ctx, action)
}

/// Parses and checks the frame with the code the XDP ingress shares ([`classify`]: VXLAN for
/// this VTEP, from a member that owns the inner source, a known VNI, an IPv4 inner frame for a
/// local endpoint), then what only TC carries: the routing mesh.
#[inline(always)]
pub fn decide(ctx: &TcContext) -> Result<Action, Reason> {
    let Some(cfg) = CONFIG.get(0) else { return pass() };
    match classify(ctx, cfg)? {
        Underlay::NotOurs => pass(),
        Underlay::ToNode => {
            // Checked by `classify` already; derived again here to read it.
            let Ok(ip) = ptr_at::<Ipv4Hdr>(ctx, ETH_HLEN) else { return pass() };
            // SAFETY: bounds checked by ptr_at.
            published_or_pass(ctx, cfg, unsafe { &*ip })
        }
        Underlay::Mesh { vni, from, mark } => decide_mesh(ctx, vni, from, mark),
        Underlay::Decap { ifindex, vni } => Ok(Action::Decap { ifindex, vni }),
    }
}

/// A VXLAN frame of the routing mesh ([`VXLAN_MESH_IN`] or [`VXLAN_MESH_OUT`]) from `from`.
#[inline(always)]
fn decide_mesh(ctx: &TcContext, vni: u32, from: u32, mark: u8) -> Result<Action, Reason> {
    let inner = ptr_at::<EthHdr>(ctx, INNER_ETH_OFF)?;
    // SAFETY: bounds checked by ptr_at.
    let (dst, ethertype) = unsafe { ((*inner).dst_addr, eth::ethertype(&*inner)) };
    if ethertype != ETH_P_IP {
        return Err(Reason::UnsupportedEthertype);
    }
    match mark {
        VXLAN_MESH_IN => {
            let target = *unsafe { FDB.get(FdbKey::new(vni, dst)) }.ok_or(Reason::UnknownDestination)?;
            if target.kind != FDB_LOCAL {
                return Err(Reason::UnknownDestination);
            }
            mesh::arrival(ctx, vni, from, INNER_IP_OFF)?;
            Ok(Action::Decap { ifindex: target.ifindex, vni })
        }
        VXLAN_MESH_OUT => Ok(Action::MeshOut { vni, rev: mesh::reply(ctx, vni, from, INNER_IP_OFF)? }),
        _ => Err(Reason::VxlanFlags),
    }
}

/// Removes outer IPv4 + UDP + VXLAN + inner Ethernet behind the outer Ethernet header, then puts
/// the inner Ethernet header in its place. Returns the inner frame's length.
#[inline(always)]
fn strip(ctx: &TcContext) -> Result<u32, Reason> {
    let inner = ptr_at::<[u8; ETH_HLEN]>(ctx, INNER_ETH_OFF)?;
    // SAFETY: bounds checked by ptr_at; copied before a helper moves the data.
    let inner_eth: [u8; ETH_HLEN] = unsafe { *inner };
    let inner_len = ctx.len() - VXLAN_ENCAP_LEN as u32;
    ctx.adjust_room(-(VXLAN_ENCAP_LEN as i32), BPF_ADJ_ROOM_MAC, DECAP_FLAGS)
        .map_err(|_| Reason::AdjustFailed)?;
    let p = ptr_at_mut::<[u8; ETH_HLEN]>(ctx, 0).map_err(|_| Reason::AdjustFailed)? as *mut u8;
    // SAFETY: 14 bytes checked by ptr_at_mut; the source is on the stack.
    unsafe { put::eth_header(p, inner_eth.as_ptr()) };
    Ok(inner_len)
}

/// Does what [`decide`] chose.
#[inline(always)]
pub fn act(ctx: &TcContext, action: Action) -> Result<Verdict, Reason> {
    let (ifindex, vni) = match action {
        Action::Pass => return Ok(Verdict { action: TC_ACT_OK as i32, reason: Reason::PassNotOverlay, vni: 0, inner_len: 0 }),
        Action::Decap { ifindex, vni } => (ifindex, vni),
        Action::MeshIn(m) => return mesh_in(ctx, &m),
        Action::MeshOut { vni, rev } => {
            let inner_len = strip(ctx)?;
            let cfg = *CONFIG.get(0).ok_or(Reason::NoConfig)?;
            let action = mesh::send_out(ctx, &cfg, &rev)?;
            return Ok(Verdict { action, reason: Reason::FwdMeshOut, vni, inner_len });
        }
    };
    let inner_len = strip(ctx)?;
    // A task's reply to a client of its service enters with the VIP as source.
    crate::service::reverse(ctx, vni)?;
    // SAFETY: plain helper call; switches to the veth peer inside the endpoint's namespace.
    let action = unsafe { bpf_redirect_peer(ifindex, 0) } as i32;
    if action != TC_ACT_REDIRECT as i32 {
        return Err(Reason::RedirectFailed);
    }
    Ok(Verdict { action, reason: Reason::FwdDecap, vni, inner_len })
}

/// A client's packet to a published port: translated to its task, then into the task's
/// namespace here or across the overlay (marked [`VXLAN_MESH_IN`]) to the task's node.
#[inline(always)]
fn mesh_in(ctx: &TcContext, m: &Inbound) -> Result<Verdict, Reason> {
    let len = ctx.len();
    mesh::to_task(ctx, m)?;
    crate::service::count(&m.stats, m.new, len);
    match m.next {
        Next::Peer { ifindex } => {
            // SAFETY: plain helper call; into the task's namespace.
            let action = unsafe { bpf_redirect_peer(ifindex, 0) } as i32;
            if action != TC_ACT_REDIRECT as i32 {
                return Err(Reason::RedirectFailed);
            }
            Ok(Verdict { action, reason: Reason::FwdMeshIn, vni: m.vni, inner_len: len })
        }
        Next::Encap { vtep } => egress::encap(ctx, m.vni, vtep, len, (VXLAN_MESH_IN, m.port), Reason::FwdMeshIn),
    }
}
