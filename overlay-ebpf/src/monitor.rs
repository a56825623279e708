//! Events for `overlay monitor`: a drop (and, when asked, one forward in `sample_every`) becomes
//! a [`MonitorEvent`] in the ring buffer `EVENTS`, with the packet's first bytes. Nothing is
//! written unless a monitor asked in `MONITOR` within the last two seconds: with nobody
//! listening, a drop costs one array read and a forward one array read more. Events are limited
//! per CPU (`max_per_sec`) so that a flood of drops cannot turn into a flood of events; what is
//! not sent is counted.
use aya_ebpf::{
    helpers::{bpf_ktime_get_ns, generated::{bpf_skb_load_bytes, bpf_xdp_load_bytes}},
    programs::{TcContext, XdpContext},
};
use overlay_common::{Direction, MONITOR_CAPTURE, MonitorEvent, Reason};

use crate::maps::{EVENTS, MONITOR, MONITOR_RATE};

const SECOND_NS: u64 = 1_000_000_000;

/// Whether an event may be sent now on this CPU (and counts it), given `until` from the
/// monitor's request. `sample`: a forward, sent only one time in `sample_every`.
#[inline(always)]
fn admit(reason: Reason, sample: bool) -> bool {
    // The node's own traffic passing the underlay's hooks is not the overlay's to show.
    if reason as u32 == Reason::PassNotOverlay as u32 {
        return false;
    }
    let Some(cfg) = MONITOR.get(0) else { return false };
    let until = if sample { cfg.all_until_ns } else { cfg.drops_until_ns };
    if until == 0 {
        return false;
    }
    // SAFETY: plain helper call.
    let now = unsafe { bpf_ktime_get_ns() };
    if now > until {
        return false;
    }
    let Some(rate) = MONITOR_RATE.get_ptr_mut(0) else { return false };
    // SAFETY: per-CPU slot, no concurrent writer on this CPU.
    let rate = unsafe { &mut *rate };
    if sample {
        rate.seen += 1;
        if rate.seen < cfg.sample_every {
            return false;
        }
        rate.seen = 0;
    }
    if now.wrapping_sub(rate.window_ns) >= SECOND_NS {
        rate.window_ns = now;
        rate.sent = 0;
    }
    if rate.sent >= cfg.max_per_sec {
        rate.suppressed += 1;
        return false;
    }
    rate.sent += 1;
    true
}

/// Counts an event the ring buffer had no room for.
#[inline(always)]
fn ring_full() {
    if let Some(rate) = MONITOR_RATE.get_ptr_mut(0) {
        // SAFETY: per-CPU slot, no concurrent writer on this CPU.
        unsafe { (*rate).suppressed += 1 };
    }
}

/// Bytes to copy of a packet of `len` (> 0) bytes: 1..=MONITOR_CAPTURE, in a form the verifier
/// can bound (a mask, not only a comparison).
#[inline(always)]
fn capture_len(len: u32) -> u32 {
    const _: () = assert!(MONITOR_CAPTURE.is_power_of_two());
    let n = if len < MONITOR_CAPTURE as u32 { len } else { MONITOR_CAPTURE as u32 };
    ((n - 1) & (MONITOR_CAPTURE as u32 - 1)) + 1
}

/// The event's fixed fields.
#[inline(always)]
fn fill(ev: &mut MonitorEvent, ifindex: u32, reason: u32, hook: u32, len: u32, vni: u32) {
    // SAFETY: plain helper call.
    ev.ts_ns = unsafe { bpf_ktime_get_ns() };
    ev.ifindex = ifindex;
    ev.len = len;
    ev.reason = reason;
    ev.hook = hook;
    ev.vni = vni;
}

/// A TC program's event: `len` is the packet's length when the program started, `vni` the
/// network where known (0: read from the bytes). The check is inlined (all a packet pays with
/// nobody listening); writing the event is a call of its own, so that its stack frame stays out
/// of the programs' own.
#[inline(always)]
pub fn tc_event(ctx: &TcContext, reason: Reason, hook: Direction, len: u32, vni: u32, sample: bool) {
    if admit(reason, sample) {
        tc_emit(ctx, reason as u32, hook as u32, len, vni);
    }
}

#[inline(never)]
fn tc_emit(ctx: &TcContext, reason: u32, hook: u32, len: u32, vni: u32) {
    let Some(mut entry) = EVENTS.reserve::<MonitorEvent>(0) else { return ring_full() };
    // SAFETY: the reserved entry is ours until submitted; every field is written below.
    let ev = unsafe { &mut *entry.as_mut_ptr() };
    // SAFETY: the context pointer is valid for the program's lifetime.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    fill(ev, ifindex, reason, hook, len, vni);
    ev.cap_len = 0;
    let len = ctx.len();
    if len > 0 {
        let n = capture_len(len);
        // SAFETY: the helper copies n bytes of the packet into the entry's data (n <= its size).
        if unsafe { bpf_skb_load_bytes(ctx.skb.skb as *const _, 0, ev.data.as_mut_ptr().cast(), n) } == 0 {
            ev.cap_len = n;
        }
    }
    entry.submit(0);
}

/// The XDP ingress's event (see [`tc_event`]).
#[inline(always)]
pub fn xdp_event(ctx: &XdpContext, reason: Reason, len: u32, vni: u32, sample: bool) {
    if admit(reason, sample) {
        xdp_emit(ctx, reason as u32, len, vni);
    }
}

#[inline(never)]
fn xdp_emit(ctx: &XdpContext, reason: u32, len: u32, vni: u32) {
    let Some(mut entry) = EVENTS.reserve::<MonitorEvent>(0) else { return ring_full() };
    // SAFETY: the reserved entry is ours until submitted; every field is written below.
    let ev = unsafe { &mut *entry.as_mut_ptr() };
    // SAFETY: the context pointer is valid for the program's lifetime.
    let ifindex = unsafe { (*ctx.ctx).ingress_ifindex };
    fill(ev, ifindex, reason, Direction::Xdp as u32, len, vni);
    let avail = (ctx.data_end() - ctx.data()) as u32;
    ev.cap_len = 0;
    if avail > 0 {
        let n = capture_len(avail);
        // SAFETY: the helper copies n bytes of the frame into the entry's data (n <= its size).
        if unsafe { bpf_xdp_load_bytes(ctx.ctx, 0, ev.data.as_mut_ptr().cast(), n) } == 0 {
            ev.cap_len = n;
        }
    }
    entry.submit(0);
}
