//! The overlay datapath: two TC programs and a pass-through floor for benchmarks.
//!
//! - [`overlay_egress`]: TC ingress hook of each local endpoint's host-side veth (frames the
//!   container sends). Answers ARP and DNS for overlay names, switches locally, encapsulates to
//!   remote VTEPs, hands the way out and other DNS questions to the node.
//! - [`overlay_ingress`]: TC ingress hook of the underlay interface. Decapsulates VXLAN for
//!   known VNIs from member VTEPs and delivers into the endpoint's namespace; passes everything
//!   else untouched.
//! - [`overlay_xdp_ingress`]: XDP on the underlay interface (`--datapath xdp`), before the TC
//!   ingress. Runs the same checks, decapsulates and redirects into the endpoint's host-side
//!   veth what it can carry; passes everything else on to the stack and [`overlay_ingress`].
//! - [`overlay_pass`]: returns `TC_ACT_OK`; the cost floor the benchmark compares against.
//! - [`overlay_monitor_idle`]: the floor plus the monitor's check, for the benchmark.
#![no_std]
#![no_main]

mod arp;
mod dns;
mod egress;
mod eth;
mod ingress;
mod ipv4;
mod maps;
mod mesh;
mod monitor;
mod ptr;
mod service;
mod stats;
mod underlay;
mod vxlan;
mod xdp;

use aya_ebpf::{
    bindings::TC_ACT_OK,
    macros::{classifier, xdp},
    programs::{TcContext, XdpContext},
};
use overlay_common::Direction;

/// Attached to: TC ingress of an endpoint's host-side veth.
/// Returns `TC_ACT_REDIRECT` (switched, encapsulated, ARP or DNS answered), `TC_ACT_OK` (handed
/// to the node: the way out, or a DNS question for the agent's resolver) or `TC_ACT_SHOT`
/// (counted drop).
#[classifier]
pub fn overlay_egress(ctx: TcContext) -> i32 {
    let len = ctx.len();
    match egress::try_egress(&ctx) {
        Ok(v) => {
            monitor::tc_event(&ctx, v.reason, Direction::Egress, len, v.vni, true);
            stats::forward(v, Direction::Egress, len)
        }
        Err(d) => {
            monitor::tc_event(&ctx, d, Direction::Egress, len, 0, false);
            stats::drop(d, Direction::Egress, len)
        }
    }
}

/// Attached to: TC ingress of the underlay interface.
/// Returns `TC_ACT_REDIRECT` (decapsulated into an endpoint), `TC_ACT_OK` (not overlay traffic,
/// untouched) or `TC_ACT_SHOT` (counted drop).
#[classifier]
pub fn overlay_ingress(ctx: TcContext) -> i32 {
    let len = ctx.len();
    match ingress::try_ingress(&ctx) {
        Ok(v) => {
            monitor::tc_event(&ctx, v.reason, Direction::Ingress, len, v.vni, true);
            stats::forward(v, Direction::Ingress, len)
        }
        Err(d) => {
            monitor::tc_event(&ctx, d, Direction::Ingress, len, 0, false);
            stats::drop(d, Direction::Ingress, len)
        }
    }
}

/// Attached to: XDP of the underlay interface, in `--datapath xdp` mode (the TC ingress stays
/// attached behind it).
/// Returns `XDP_REDIRECT` (decapsulated into an endpoint's host-side veth), `XDP_PASS` (to the
/// stack and the TC ingress, untouched) or `XDP_DROP` (counted drop).
#[xdp]
pub fn overlay_xdp_ingress(ctx: XdpContext) -> u32 {
    let len = (ctx.data_end() - ctx.data()) as u32;
    match xdp::try_ingress(&ctx) {
        Ok(v) => {
            monitor::xdp_event(&ctx, v.reason, len, v.vni, true);
            stats::forward(v, Direction::Xdp, len) as u32
        }
        Err(d) => {
            monitor::xdp_event(&ctx, d, len, 0, false);
            stats::xdp_drop(d, len)
        }
    }
}

/// Attached to: nothing in production; loaded by the benchmark as the per-packet cost floor.
/// Returns `TC_ACT_OK`.
#[classifier]
pub fn overlay_pass(_ctx: TcContext) -> i32 {
    TC_ACT_OK
}

/// Attached to: nothing in production; loaded by the benchmark to measure what the monitor's
/// hook costs a forwarded packet when nobody listens: the floor plus exactly the check every
/// entry point makes. Returns `TC_ACT_OK`.
#[classifier]
pub fn overlay_monitor_idle(ctx: TcContext) -> i32 {
    monitor::tc_event(&ctx, overlay_common::Reason::FwdLocal, Direction::Egress, ctx.len(), 0, true);
    TC_ACT_OK
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
