//! The XDP ingress (`--datapath xdp`): the underlay's frames before the stack sees them. VXLAN
//! for this node that [`classify`] (the TC ingress's own checks) finds deliverable is
//! decapsulated with `bpf_xdp_adjust_head` and redirected through the devmap `XDP_TARGETS` into
//! the endpoint's host-side veth, from where the veth hands it to the container. Checked frames
//! that fail are dropped and counted as the TC ingress would. Everything else is passed on to
//! the stack and the TC ingress program, which still run behind this one: the node's own
//! traffic, the routing mesh, replies that need the services' reverse translation, endpoints
//! missing from the devmap. Multi-buffer frames never reach it: it is loaded without
//! `BPF_F_XDP_HAS_FRAGS`, so it only ever sees linear frames.
use aya_ebpf::{
    bindings::xdp_action::XDP_PASS,
    helpers::generated::bpf_xdp_adjust_head,
    programs::XdpContext,
};
use network_types::eth::EthHdr;
use overlay_common::{NODE_F_SERVICES, Reason, wire::{ETH_HLEN, VXLAN_ENCAP_LEN}};

use crate::{
    maps::{CONFIG, VNIS, XDP_TARGETS},
    ptr::ptr_at,
    stats::Verdict,
    underlay::{INNER_ETH_OFF, Underlay, classify},
};

// The inner Ethernet header starts right after the encapsulation: removing the first
// `VXLAN_ENCAP_LEN` bytes leaves exactly the inner frame.
const _: () = assert!(INNER_ETH_OFF == VXLAN_ENCAP_LEN);

/// Inner frames up to this MTU are redirected without reading the network's MTU.
const STANDARD_MTU: usize = 1500;

/// What the XDP ingress does with a frame.
pub enum Action {
    /// To the stack and the TC ingress program, untouched, counted under `reason`.
    Pass(Reason),
    /// Strip the encapsulation and redirect the inner frame into host-side veth `ifindex`.
    Redirect { ifindex: u32, vni: u32 },
}

#[inline(always)]
pub fn try_ingress(ctx: &XdpContext) -> Result<Verdict, Reason> {
    let action = decide(ctx)?;
    act(ctx, action)
}

/// The TC ingress's checks ([`classify`]), then what XDP can carry.
#[inline(always)]
pub fn decide(ctx: &XdpContext) -> Result<Action, Reason> {
    let Some(cfg) = CONFIG.get(0) else { return Ok(Action::Pass(Reason::PassNotOverlay)) };
    match classify(ctx, cfg)? {
        Underlay::NotOurs | Underlay::ToNode => Ok(Action::Pass(Reason::PassNotOverlay)),
        // The routing mesh rewrites addresses and tracks flows: the TC program's.
        Underlay::Mesh { .. } => Ok(Action::Pass(Reason::PassToTc)),
        Underlay::Decap { ifindex, vni } => {
            // With services, a task's reply may need its source turned back into the VIP.
            if cfg.flags & NODE_F_SERVICES != 0 {
                return Ok(Action::Pass(Reason::PassToTc));
            }
            // An endpoint not in the devmap (yet) is reached through TC as before.
            if XDP_TARGETS.get(ifindex).is_none() {
                return Ok(Action::Pass(Reason::PassToTc));
            }
            // Larger than one frame of the network: a GRO/GSO aggregate that generic XDP shows
            // whole (driver mode never does). A redirect would drop it (the devmap checks the
            // target's MTU); TC decapsulates it as one train.
            let inner_len = ctx.data_end() - ctx.data() - VXLAN_ENCAP_LEN;
            if inner_len > ETH_HLEN + STANDARD_MTU {
                let mtu = unsafe { VNIS.get(vni) }.map_or(0, |v| v.mtu as usize);
                if mtu == 0 || inner_len > ETH_HLEN + mtu {
                    return Ok(Action::Pass(Reason::PassToTc));
                }
            }
            Ok(Action::Redirect { ifindex, vni })
        }
    }
}

/// Does what [`decide`] chose.
#[inline(always)]
pub fn act(ctx: &XdpContext, action: Action) -> Result<Verdict, Reason> {
    let (ifindex, vni) = match action {
        Action::Pass(reason) => return Ok(Verdict { action: XDP_PASS as i32, reason, vni: 0, inner_len: 0 }),
        Action::Redirect { ifindex, vni } => (ifindex, vni),
    };
    let inner_len = (ctx.data_end() - ctx.data()) as u32 - VXLAN_ENCAP_LEN as u32;
    // SAFETY: plain helper call on our own context; the frame holds at least the encapsulation
    // and the inner Ethernet header (checked by `classify`).
    if unsafe { bpf_xdp_adjust_head(ctx.ctx, VXLAN_ENCAP_LEN as i32) } != 0 {
        return Err(Reason::AdjustFailed);
    }
    // Packet pointers are void after the helper: the inner Ethernet header is now at 0.
    ptr_at::<EthHdr>(ctx, 0).map_err(|_| Reason::AdjustFailed)?;
    let action = XDP_TARGETS.redirect(ifindex, 0).map_err(|_| Reason::RedirectFailed)?;
    Ok(Verdict { action: action as i32, reason: Reason::FwdDecap, vni, inner_len })
}
