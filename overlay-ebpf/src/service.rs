//! Services: a frame a container sends to a VIP is translated, at the container's own interface,
//! to one of the service's tasks (destination address, port and MAC), then switched or
//! encapsulated like any other frame; the task's replies get the VIP back as their source just
//! before they enter the client's namespace ([`reverse`]). The task is picked by Maglev over the
//! flow's hash ([`overlay_common::flow_hash`]: client address and port, protocol, service port),
//! the same on every node, and kept in the connection table for every later packet of the flow.
//! A ping to a VIP is answered here.
use aya_ebpf::{
    bindings::{BPF_F_PSEUDO_HDR, BPF_NOEXIST},
    programs::TcContext,
};
use network_types::ip::Ipv4Hdr;
use overlay_common::{
    Backend, CtKey, EndpointInfo, FDB_LOCAL, FDB_REMOTE, FdbKey, LbCounters, LbStatsKey, MAGLEV_M, MAX_BACKENDS, NODE_F_SERVICES, NeighKey,
    Reason,
    RevEntry, RevKey,
    ServiceEntry, ServiceKey, flow_hash,
    wire::{ETH_HLEN, IPPROTO_TCP, IPPROTO_UDP, IPV4_HLEN},
};

use crate::{
    ipv4,
    maps::{BACKENDS, CONFIG, CONNECTIONS, FDB, MAGLEV, NEIGH, REVERSE, SERVICE_STATS, SERVICES},
    ptr::ptr_at,
};

const IPPROTO_ICMP: u8 = 1;
const ICMP_ECHO_REQUEST: u8 = 8;
const L4_OFF: usize = ETH_HLEN + IPV4_HLEN;
/// `BPF_F_MARK_MANGLED_0`: a UDP checksum of 0 (none) stays 0; a computed 0 becomes 0xffff.
const BPF_F_MARK_MANGLED_0: u64 = 1 << 5;
/// TCP flags byte: SYN without ACK opens a connection.
const TCP_SYN: u8 = 0x02;
const TCP_ACK: u8 = 0x10;

/// Where a translated frame goes next.
#[derive(Clone, Copy)]
pub enum Next {
    Peer { ifindex: u32 },
    Encap { vtep: u32 },
}

/// What to do with a frame to a VIP.
pub enum Decision {
    /// Answer the ping.
    Echo,
    /// Send it to `backend` (whose MAC is `mac`), then on to `next`; `stats` counts it, `new`:
    /// the task was picked for this packet (a new connection).
    Task { backend: Backend, mac: [u8; 6], next: Next, stats: LbStatsKey, new: bool },
}

/// A frame to the MAC of a VIP: a ping to it, or a connection to one of its ports.
#[inline(always)]
pub fn decide(ctx: &TcContext, ep: &EndpointInfo, ip: &Ipv4Hdr) -> Result<Decision, Reason> {
    let vip = u32::from_ne_bytes(ip.dst_addr);
    if ipv4::header_len(ip) != IPV4_HLEN {
        return Err(Reason::IpOptions);
    }
    if ipv4::frag_bits(ip) != 0 {
        return Err(Reason::Fragment);
    }
    if ip.proto == IPPROTO_ICMP {
        let t = ptr_at::<u8>(ctx, L4_OFF)?;
        // SAFETY: bounds checked by ptr_at.
        let exists = unsafe { SERVICES.get(&ServiceKey { vni: ep.vni, vip, port: 0, proto: 0, _pad: 0 }) }.is_some();
        if exists && unsafe { *t } == ICMP_ECHO_REQUEST {
            return Ok(Decision::Echo);
        }
        return Err(Reason::ServiceNoPort);
    }
    if ip.proto != IPPROTO_TCP && ip.proto != IPPROTO_UDP {
        return Err(Reason::ServiceNoPort);
    }
    let ports = ptr_at::<[u16; 2]>(ctx, L4_OFF)?;
    // SAFETY: bounds checked by ptr_at; ports stay in network order.
    let [sport, dport] = unsafe { *ports };
    let svc = *unsafe { SERVICES.get(&ServiceKey { vni: ep.vni, vip, port: dport, proto: ip.proto, _pad: 0 }) }.ok_or(Reason::ServiceNoPort)?;
    let opening = opening(ctx, ip.proto, L4_OFF);
    let ct = CtKey { vni: ep.vni, client: ep.ip, vip, client_port: sport, vip_port: dport, proto: ip.proto, _pad: [0; 3] };
    let rev = RevEntry { vip, vip_port: dport, flags: 0 };
    let (backend, mac, new) = pick(&ct, &svc, dport, opening, &rev)?;
    let next = next_hop(ep.vni, &mac)?;
    let stats = LbStatsKey { vni: ep.vni, vip, task: backend.ip, vip_port: dport, proto: ip.proto, _pad: 0 };
    Ok(Decision::Task { backend, mac, next, stats, new })
}

/// The task of flow `ct` to a service port (`svc`, service port `port`): the one its
/// connection table entry names, unless the flow is `opening` (a TCP SYN) or that task's
/// endpoint is gone; otherwise picked by Maglev over the flow's hash and recorded, with the
/// reverse entry `rev` its replies are rewritten by. Returns (task, its MAC, newly picked).
#[inline(always)]
pub fn pick(ct: &CtKey, svc: &ServiceEntry, port: u16, opening: bool, rev: &RevEntry) -> Result<(Backend, [u8; 6], bool), Reason> {
    let kept = if opening { None } else { unsafe { CONNECTIONS.get(ct) }.copied() };
    // A kept task whose endpoint is gone is not used: its flow moves (UDP within a packet).
    if let Some(b) = kept {
        if let Some(n) = unsafe { NEIGH.get(NeighKey { vni: ct.vni, ip: b.ip }) } {
            return Ok((b, n.mac, false));
        }
    }
    if svc.backends == 0 {
        return Err(Reason::ServiceNoBackend);
    }
    let slot = flow_hash(ct.client, ct.client_port, ct.proto, port) % MAGLEV_M;
    let idx = *MAGLEV.get(svc.id * MAGLEV_M + slot).ok_or(Reason::ServiceNoBackend)?;
    let b = *BACKENDS.get(svc.id * MAX_BACKENDS + (idx % MAX_BACKENDS)).ok_or(Reason::ServiceNoBackend)?;
    let n = unsafe { NEIGH.get(NeighKey { vni: ct.vni, ip: b.ip }) }.ok_or(Reason::ServiceNoBackend)?;
    // Failing to record the flow only costs its stickiness; the packet still goes.
    let _ = CONNECTIONS.insert(ct, &b, 0);
    let key = RevKey { vni: ct.vni, backend: b.ip, client: ct.client, backend_port: b.port, client_port: ct.client_port, proto: ct.proto, _pad: [0; 3] };
    let _ = REVERSE.insert(&key, rev, 0);
    Ok((b, n.mac, true))
}

/// Where the task with `mac` in network `vni` is: behind a local veth or a remote VTEP.
#[inline(always)]
pub fn next_hop(vni: u32, mac: &[u8; 6]) -> Result<Next, Reason> {
    let to = unsafe { FDB.get(FdbKey::new(vni, *mac)) }.ok_or(Reason::UnknownDestination)?;
    match to.kind {
        FDB_LOCAL => Ok(Next::Peer { ifindex: to.ifindex }),
        FDB_REMOTE => Ok(Next::Encap { vtep: to.vtep }),
        _ => Err(Reason::UnknownDestination),
    }
}

/// Whether a TCP/UDP frame (option-less IPv4 header) opens a connection: a TCP SYN without ACK.
/// A new connection always picks afresh: a task drained from the service gets no new
/// connection even from a client port it served before.
#[inline(always)]
pub fn opening(ctx: &TcContext, proto: u8, l4: usize) -> bool {
    proto == IPPROTO_TCP && ptr_at::<u8>(ctx, l4 + 13).is_ok_and(|f| {
        // SAFETY: bounds checked by ptr_at.
        let f = unsafe { *f };
        f & TCP_SYN != 0 && f & TCP_ACK == 0
    })
}

/// Counts a packet (and a connection, when `new`) of the task and VIP port in `key`.
#[inline(always)]
pub fn count(key: &LbStatsKey, new: bool, len: u32) {
    if SERVICE_STATS.get_ptr_mut(key).is_none() {
        let _ = SERVICE_STATS.insert(key, &LbCounters::default(), BPF_NOEXIST as u64);
    }
    if let Some(c) = SERVICE_STATS.get_ptr_mut(key) {
        // SAFETY: a per-CPU value of this program; no concurrent writer on this CPU.
        unsafe {
            (*c).connections += new as u64;
            (*c).packets += 1;
            (*c).bytes += len as u64;
        }
    }
}

/// Whether the cluster has VIP services at all: without any, the reverse table is never looked
/// at (no cost per packet for clusters that do not use services).
#[inline(always)]
fn any() -> bool {
    CONFIG.get(0).is_some_and(|c| c.flags & NODE_F_SERVICES != 0)
}

/// Offset of the L4 checksum of `proto` behind an option-less IPv4 header.
#[inline(always)]
fn l4_csum_off(proto: u8) -> usize {
    if proto == IPPROTO_TCP { L4_OFF + 16 } else { L4_OFF + 6 }
}

#[inline(always)]
fn l4_flags(proto: u8) -> u64 {
    if proto == IPPROTO_UDP { BPF_F_MARK_MANGLED_0 } else { 0 }
}

/// Rewrites one address (`at`: 12 source, 16 destination) and the port at `port_at` (0 source,
/// 2 destination) of an option-less IPv4 TCP/UDP frame, with both checksums.
#[inline(always)]
pub fn rewrite(ctx: &TcContext, proto: u8, at: usize, ip: u32, port_at: usize, port: u16) -> Result<(), Reason> {
    let old_ip: u32 = ctx.load(ETH_HLEN + at).map_err(|_| Reason::Truncated)?;
    let old_port: u16 = ctx.load(L4_OFF + port_at).map_err(|_| Reason::Truncated)?;
    let csum = l4_csum_off(proto);
    let flags = l4_flags(proto);
    ctx.l4_csum_replace(csum, old_ip as u64, ip as u64, flags | BPF_F_PSEUDO_HDR as u64 | 4).map_err(|_| Reason::AdjustFailed)?;
    ctx.l4_csum_replace(csum, old_port as u64, port as u64, flags | 2).map_err(|_| Reason::AdjustFailed)?;
    ctx.l3_csum_replace(ETH_HLEN + 10, old_ip as u64, ip as u64, 4).map_err(|_| Reason::AdjustFailed)?;
    ctx.store(ETH_HLEN + at, &ip, 0).map_err(|_| Reason::AdjustFailed)?;
    ctx.store(L4_OFF + port_at, &port, 0).map_err(|_| Reason::AdjustFailed)?;
    Ok(())
}

/// Sends the frame to `backend`: destination address, port and MAC.
#[inline(always)]
pub fn to_task(ctx: &TcContext, proto: u8, backend: &Backend, mac: &[u8; 6]) -> Result<(), Reason> {
    rewrite(ctx, proto, 16, backend.ip, 2, backend.port)?;
    ctx.store(0, mac, 0).map_err(|_| Reason::AdjustFailed)
}

/// Turns a ping to the VIP into its answer, in place: addresses and MACs swapped, echo reply.
#[inline(always)]
pub fn echo_reply(ctx: &TcContext, ep: &EndpointInfo, vip_mac: [u8; 6]) -> Result<(), Reason> {
    let addrs: [u32; 2] = ctx.load(ETH_HLEN + 12).map_err(|_| Reason::Truncated)?;
    // Type 8 -> 0 (the code byte stays): the checksum moves by the same difference.
    let from = u16::from_ne_bytes([ICMP_ECHO_REQUEST, 0]);
    ctx.l4_csum_replace(L4_OFF + 2, from as u64, 0, 2).map_err(|_| Reason::AdjustFailed)?;
    ctx.store(L4_OFF, &0u8, 0).map_err(|_| Reason::AdjustFailed)?;
    // Swapping source and destination leaves the IPv4 checksum as it is.
    ctx.store(ETH_HLEN + 12, &[addrs[1], addrs[0]], 0).map_err(|_| Reason::AdjustFailed)?;
    let m = ep.mac;
    let eth: [u8; 12] = [m[0], m[1], m[2], m[3], m[4], m[5], vip_mac[0], vip_mac[1], vip_mac[2], vip_mac[3], vip_mac[4], vip_mac[5]];
    ctx.store(0, &eth, 0).map_err(|_| Reason::AdjustFailed)
}

/// A task's reply about to enter its client's namespace: when the flow came to a VIP, its
/// source becomes the VIP and port again (and the VIP's MAC). Anything else is left as it is.
#[inline(always)]
pub fn reverse(ctx: &TcContext, vni: u32) -> Result<(), Reason> {
    if !any() {
        return Ok(());
    }
    let Ok(ip) = ptr_at::<Ipv4Hdr>(ctx, ETH_HLEN) else { return Ok(()) };
    // SAFETY: bounds checked by ptr_at.
    let ip = unsafe { &*ip };
    let proto = ip.proto;
    if (proto != IPPROTO_TCP && proto != IPPROTO_UDP) || ipv4::header_len(ip) != IPV4_HLEN || ipv4::frag_offset(ip) != 0 {
        return Ok(());
    }
    let (src, dst) = (u32::from_ne_bytes(ip.src_addr), u32::from_ne_bytes(ip.dst_addr));
    let Ok(ports) = ptr_at::<[u16; 2]>(ctx, L4_OFF) else { return Ok(()) };
    // SAFETY: bounds checked by ptr_at.
    let [sport, dport] = unsafe { *ports };
    let key = RevKey { vni, backend: src, client: dst, backend_port: sport, client_port: dport, proto, _pad: [0; 3] };
    let Some(r) = (unsafe { REVERSE.get(&key) }).copied() else { return Ok(()) };
    rewrite(ctx, proto, 12, r.vip, 0, r.vip_port)?;
    let v = r.vip.to_ne_bytes();
    ctx.store(6, &[0x02u8, 0x42, v[0], v[1], v[2], v[3]], 0).map_err(|_| Reason::AdjustFailed)
}

/// A frame a container sends to another address directly (not to a VIP): if it opens a flow
/// (TCP SYN without ACK, or any UDP datagram) whose replies match a `REVERSE` entry left by an
/// earlier flow through a VIP with the same addresses and ports, that entry goes, so the replies
/// are not rewritten to come from the VIP.
#[inline(always)]
pub fn forget_direct(ctx: &TcContext, vni: u32, ip: &Ipv4Hdr) {
    if !any() {
        return;
    }
    let proto = ip.proto;
    if (proto != IPPROTO_TCP && proto != IPPROTO_UDP) || ipv4::header_len(ip) != IPV4_HLEN || ipv4::frag_offset(ip) != 0 {
        return;
    }
    if proto == IPPROTO_TCP {
        let Ok(f) = ptr_at::<u8>(ctx, L4_OFF + 13) else { return };
        // SAFETY: bounds checked by ptr_at.
        let f = unsafe { *f };
        if f & TCP_SYN == 0 || f & TCP_ACK != 0 {
            return;
        }
    }
    let Ok(ports) = ptr_at::<[u16; 2]>(ctx, L4_OFF) else { return };
    // SAFETY: bounds checked by ptr_at.
    let [sport, dport] = unsafe { *ports };
    let key = RevKey {
        vni,
        backend: u32::from_ne_bytes(ip.dst_addr),
        client: u32::from_ne_bytes(ip.src_addr),
        backend_port: dport,
        client_port: sport,
        proto,
        _pad: [0; 3],
    };
    // A lookup first: it takes no lock, and the entry is almost never there.
    if unsafe { REVERSE.get(&key) }.is_some() {
        let _ = REVERSE.remove(&key);
    }
}
