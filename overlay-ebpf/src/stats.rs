//! Verdicts and their counters: every forward and every drop is counted, per CPU.
use aya_ebpf::bindings::{TC_ACT_SHOT, xdp_action::XDP_DROP};
use overlay_common::{Direction, Reason, stats_index};

use crate::maps::{STATS, VNI_STATS};

/// What a program decided for a packet it forwards (or passes).
pub struct Verdict {
    /// The TC action (or XDP action) to return.
    pub action: i32,
    pub reason: Reason,
    /// VNI the packet belongs to (0: none, e.g. passed underlay traffic).
    pub vni: u32,
    /// Length of the inner frame for per-VNI byte counters.
    pub inner_len: u32,
}

#[inline(always)]
fn count(reason: Reason, dir: Direction, len: u32) {
    if let Some(c) = STATS.get_ptr_mut(stats_index(reason, dir)) {
        // SAFETY: per-CPU slot, no concurrent writer on this CPU.
        unsafe {
            (*c).packets += 1;
            (*c).bytes += len as u64;
        }
    }
}

/// Counts a forward and returns its action.
#[inline(always)]
pub fn forward(v: Verdict, dir: Direction, len: u32) -> i32 {
    count(v.reason, dir, len);
    if v.vni != 0 {
        if let Some(c) = VNI_STATS.get_ptr_mut(v.vni) {
            // SAFETY: per-CPU value, no concurrent writer on this CPU.
            unsafe {
                let side = match dir {
                    Direction::Egress => &mut (*c).tx,
                    Direction::Ingress | Direction::Xdp => &mut (*c).rx,
                };
                side.packets += 1;
                side.bytes += v.inner_len as u64;
            }
        }
    }
    v.action
}

/// Counts a drop and returns `TC_ACT_SHOT`.
#[inline(always)]
pub fn drop(reason: Reason, dir: Direction, len: u32) -> i32 {
    count(reason, dir, len);
    TC_ACT_SHOT
}

/// Counts a drop of the XDP ingress and returns `XDP_DROP`.
#[inline(always)]
pub fn xdp_drop(reason: Reason, len: u32) -> u32 {
    count(reason, Direction::Xdp, len);
    XDP_DROP
}
