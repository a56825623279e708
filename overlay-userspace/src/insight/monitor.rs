//! `overlay monitor`: the datapath's events, one line each. The programs copy each event's
//! first bytes (see [`overlay_common::MonitorEvent`]); this module reads the headers from them:
//! for a VXLAN frame on the underlay, the outer addresses, the VNI and the inner frame.
use std::{
    net::Ipv4Addr,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant, SystemTime},
};

use overlay_common::{Direction, MONITOR_CAPTURE, MonitorEvent, Reason};
use serde::Serialize;

use crate::{
    dataplane::events::{Ask, Events, monotonic_ns},
    model::Mac,
};

/// One event, read.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Line {
    /// Wall-clock time of the program's decision, RFC 3339 with microseconds.
    pub time: String,
    pub hook: &'static str,
    /// `drop` or `forward`.
    pub verdict: &'static str,
    /// The drop reason or the kind of forward (as `overlay stats` names them).
    pub reason: String,
    pub vni: Option<u32>,
    /// The network's name, where the monitor was given the cluster state.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub network: Option<String>,
    /// The tunnel's addresses, for a VXLAN frame on the underlay.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub outer_src: Option<Ipv4Addr>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub outer_dst: Option<Ipv4Addr>,
    pub src_mac: Option<String>,
    pub dst_mac: Option<String>,
    pub src_ip: Option<Ipv4Addr>,
    pub dst_ip: Option<Ipv4Addr>,
    /// `tcp`, `udp`, `icmp`, `arp`, or the IP protocol / ethertype number.
    pub protocol: Option<String>,
    pub src_port: Option<u16>,
    pub dst_port: Option<u16>,
    /// The packet's length as the hook saw it.
    pub len: u32,
    pub ifindex: u32,
}

/// The headers of an Ethernet frame: MACs, then IPv4 or ARP addresses, protocol and ports.
#[derive(Default)]
struct Headers {
    src_mac: Option<[u8; 6]>,
    dst_mac: Option<[u8; 6]>,
    src_ip: Option<Ipv4Addr>,
    dst_ip: Option<Ipv4Addr>,
    protocol: Option<String>,
    src_port: Option<u16>,
    dst_port: Option<u16>,
    /// Where the L4 header starts, for an IPv4 frame whose first fragment this is.
    l4: Option<(u8, usize)>,
}

fn be16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

fn ipv4_at(b: &[u8], at: usize) -> Option<Ipv4Addr> {
    let o: [u8; 4] = b.get(at..at + 4)?.try_into().ok()?;
    Some(Ipv4Addr::from(o))
}

/// Reads what it can of the frame in `b` (it may be cut anywhere).
fn headers(b: &[u8]) -> Headers {
    let mut h = Headers::default();
    let Some(mac) = b.get(0..12) else { return h };
    h.dst_mac = mac[0..6].try_into().ok();
    h.src_mac = mac[6..12].try_into().ok();
    let Some(ethertype) = be16(b, 12) else { return h };
    match ethertype {
        0x0806 => {
            h.protocol = Some("arp".into());
            // ARP for IPv4 over Ethernet: sender IP at 14+14, target IP at 14+24.
            h.src_ip = ipv4_at(b, 28);
            h.dst_ip = ipv4_at(b, 38);
        }
        0x0800 => {
            let Some(&vihl) = b.get(14) else { return h };
            let ihl = (vihl & 0x0f) as usize * 4;
            h.src_ip = ipv4_at(b, 26);
            h.dst_ip = ipv4_at(b, 30);
            let Some(&proto) = b.get(23) else { return h };
            h.protocol = Some(match proto {
                1 => "icmp".into(),
                6 => "tcp".into(),
                17 => "udp".into(),
                p => p.to_string(),
            });
            let first_fragment = be16(b, 20).is_some_and(|f| f & 0x1fff == 0);
            if ihl >= 20 && first_fragment {
                h.l4 = Some((proto, 14 + ihl));
                if proto == 6 || proto == 17 {
                    h.src_port = be16(b, 14 + ihl);
                    h.dst_port = be16(b, 14 + ihl + 2);
                }
            }
        }
        t => h.protocol = Some(format!("ethertype 0x{t:04x}")),
    }
    h
}

/// Reads one event. `vxlan_port`: the node's, to recognise VXLAN on the underlay;
/// `endpoint_vni`: the VNI of the endpoint behind the event's interface, if it is one.
pub fn decode(ev: &MonitorEvent, vxlan_port: u16, endpoint_vni: Option<u32>, now_wall: SystemTime, now_mono_ns: u64) -> Line {
    let cap = (ev.cap_len as usize).min(MONITOR_CAPTURE);
    let b = &ev.data[..cap];
    let hook = Direction::ALL.iter().copied().find(|d| *d as u32 == ev.hook);
    let reason = Reason::from_code(ev.reason);
    let mut h = headers(b);
    let (mut outer_src, mut outer_dst, mut vni) = (None, None, None);
    // On the underlay's hooks a frame to the VXLAN port is a tunnel: show what it carries.
    if hook != Some(Direction::Egress) {
        if let Some((17, l4)) = h.l4 {
            if be16(b, l4 + 2) == Some(vxlan_port) {
                outer_src = h.src_ip;
                outer_dst = h.dst_ip;
                let vx = l4 + 8;
                vni = b.get(vx + 4..vx + 7).map(|v| u32::from_be_bytes([0, v[0], v[1], v[2]]));
                h = headers(b.get(vx + 8..).unwrap_or(&[]));
            }
        }
    }
    let vni = if ev.vni != 0 { Some(ev.vni) } else { vni.or(endpoint_vni) };
    let age = Duration::from_nanos(now_mono_ns.saturating_sub(ev.ts_ns));
    Line {
        time: crate::timefmt::rfc3339_micros(now_wall.checked_sub(age).unwrap_or(now_wall)),
        hook: hook.map_or("?", |d| d.name()),
        verdict: if reason.is_some_and(|r| r.is_drop()) { "drop" } else { "forward" },
        reason: reason.map_or_else(|| format!("reason {}", ev.reason), |r| r.name().to_string()),
        vni,
        network: None,
        outer_src,
        outer_dst,
        src_mac: h.src_mac.map(|m| Mac(m).to_string()),
        dst_mac: h.dst_mac.map(|m| Mac(m).to_string()),
        src_ip: h.src_ip,
        dst_ip: h.dst_ip,
        protocol: h.protocol,
        src_port: h.src_port,
        dst_port: h.dst_port,
        len: ev.len,
        ifindex: ev.ifindex,
    }
}

impl std::fmt::Display for Line {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {:<7} {:<7} {:<22}", self.time, self.hook, self.verdict, self.reason)?;
        match (&self.vni, &self.network) {
            (Some(v), Some(n)) => write!(f, " vni {v} ({n})")?,
            (Some(v), None) => write!(f, " vni {v}")?,
            _ => write!(f, " vni -")?,
        }
        if let (Some(s), Some(d)) = (self.outer_src, self.outer_dst) {
            write!(f, " vtep {s} > {d}")?;
        }
        let opt = |m: &Option<String>| m.clone().unwrap_or_else(|| "?".into());
        write!(f, " {} > {}", opt(&self.src_mac), opt(&self.dst_mac))?;
        if let (Some(s), Some(d)) = (self.src_ip, self.dst_ip) {
            match (self.src_port, self.dst_port) {
                (Some(sp), Some(dp)) => write!(f, " {s}:{sp} > {d}:{dp}")?,
                _ => write!(f, " {s} > {d}")?,
            }
        }
        if let Some(p) = &self.protocol {
            write!(f, " {p}")?;
        }
        write!(f, " len {}", self.len)
    }
}

/// What to show.
#[derive(Clone, Debug)]
pub struct Filter {
    /// Sampled forwards too, not only drops.
    pub all: bool,
    /// Only this VNI.
    pub vni: Option<u32>,
}

/// Reads the node's events until `stop` is set or `count` lines were shown, handing each line
/// that passes `filter` to `out`. Reports events the rate limit held back through `held_back`.
/// Blocking: run it on a thread of its own.
pub fn follow(
    events: &mut Events,
    ask: Ask,
    filter: &Filter,
    count: Option<u64>,
    stop: &Arc<AtomicBool>,
    mut out: impl FnMut(Line) -> bool,
    mut held_back: impl FnMut(u64),
) -> Result<(), crate::dataplane::DataplaneError> {
    let vxlan_port = events.vxlan_port();
    let mut shown = 0u64;
    let mut suppressed = events.suppressed()?;
    let mut renewed = Instant::now();
    events.ask(ask)?;
    let result = (|| {
        while !stop.load(Ordering::Relaxed) {
            if renewed.elapsed() >= Duration::from_secs(1) {
                events.ask(ask)?;
                renewed = Instant::now();
                let now = events.suppressed()?;
                if now > suppressed {
                    held_back(now - suppressed);
                }
                suppressed = now;
            }
            let mut pfd = libc::pollfd { fd: events.raw_fd(), events: libc::POLLIN, revents: 0 };
            // SAFETY: one valid pollfd; a bounded wait so that `stop` and renewals are seen.
            unsafe { libc::poll(&mut pfd, 1, 200) };
            let (wall, mono) = (SystemTime::now(), monotonic_ns());
            while let Some(ev) = events.next_event() {
                let ep_vni = events.endpoint(ev.ifindex).filter(|_| ev.hook == Direction::Egress as u32).map(|e| e.vni);
                let line = decode(&ev, vxlan_port, ep_vni, wall, mono);
                if !filter.all && line.verdict != "drop" {
                    continue;
                }
                if filter.vni.is_some_and(|v| line.vni != Some(v)) {
                    continue;
                }
                if !out(line) {
                    return Ok(());
                }
                shown += 1;
                if count.is_some_and(|c| shown >= c) {
                    return Ok(());
                }
            }
        }
        Ok(())
    })();
    // Withdrawn whatever happened: the datapath stops writing events for this monitor.
    let withdrawn = events.withdraw();
    result.and(withdrawn)
}

#[cfg(test)]
mod tests {
    use std::time::UNIX_EPOCH;

    use super::*;
    use crate::lab::frames;

    fn event(hook: Direction, reason: Reason, frame: &[u8]) -> MonitorEvent {
        let mut data = [0u8; MONITOR_CAPTURE];
        let n = frame.len().min(MONITOR_CAPTURE);
        data[..n].copy_from_slice(&frame[..n]);
        MonitorEvent { ts_ns: 1_000, ifindex: 7, len: frame.len() as u32, reason: reason as u32, hook: hook as u32, cap_len: n as u32, vni: 0, data }
    }

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().expect("ip")
    }

    #[test]
    fn a_spoofed_udp_packet_from_a_container_reads_back() {
        let (c1, c2) = (ip("10.0.1.2"), ip("10.0.1.3"));
        let mut f = frames::eth(Mac::from_ip(c2).0, Mac::from_ip(c1).0, 0x0800);
        f.extend(frames::ipv4(ip("10.0.1.99"), c2, 17, 8 + 4, 0x4000, &[]));
        f.extend(frames::udp(40000, 5201, 4));
        f.extend([0; 4]);
        let l = decode(&event(Direction::Egress, Reason::SpoofedIp, &f), 4789, Some(4097), UNIX_EPOCH + Duration::from_secs(1), 1_000);
        assert_eq!(l.verdict, "drop");
        assert_eq!(l.reason, "drop-spoofed-ip");
        assert_eq!(l.vni, Some(4097), "the endpoint's VNI on egress");
        assert_eq!((l.src_ip, l.dst_ip), (Some(ip("10.0.1.99")), Some(c2)));
        assert_eq!((l.src_port, l.dst_port), (Some(40000), Some(5201)));
        assert_eq!(l.protocol.as_deref(), Some("udp"));
        assert_eq!(l.src_mac.as_deref(), Some(Mac::from_ip(c1).to_string().as_str()));
        assert_eq!(l.time, "1970-01-01T00:00:01.000000Z");
    }

    #[test]
    fn a_vxlan_frame_on_the_underlay_shows_tunnel_vni_and_inner_frame() {
        let (c1, c2) = (ip("10.0.1.2"), ip("10.0.1.3"));
        let mut inner = frames::eth(Mac::from_ip(c2).0, Mac::from_ip(c1).0, 0x0800);
        inner.extend(frames::ipv4(c1, c2, 6, 20, 0x4000, &[]));
        inner.extend([0x9c, 0x40, 0x00, 0x50]); // ports 40000 -> 80, the rest cut off
        let f = frames::vxlan_frame(ip("192.168.50.9"), ip("192.168.50.2"), 4789, 0x08, 5000, &inner);
        let l = decode(&event(Direction::Ingress, Reason::NotMember, &f), 4789, None, UNIX_EPOCH, 1_000);
        assert_eq!((l.outer_src, l.outer_dst), (Some(ip("192.168.50.9")), Some(ip("192.168.50.2"))));
        assert_eq!(l.vni, Some(5000));
        assert_eq!((l.src_ip, l.dst_ip, l.src_port, l.dst_port), (Some(c1), Some(c2), Some(40000), Some(80)));
        assert_eq!(l.reason, "drop-not-member");
    }

    #[test]
    fn any_cut_of_a_frame_reads_without_panicking() {
        let mut inner = frames::eth([2; 6], [4; 6], 0x0800);
        inner.extend(frames::ipv4(ip("10.0.0.1"), ip("10.0.0.2"), 17, 8, 0, &[]));
        inner.extend(frames::udp(1, 2, 0));
        let f = frames::vxlan_frame(ip("192.168.50.9"), ip("192.168.50.2"), 4789, 0x08, 5000, &inner);
        for n in 0..=f.len() {
            let mut ev = event(Direction::Xdp, Reason::Truncated, &f[..n]);
            let _ = decode(&ev, 4789, None, UNIX_EPOCH, 0);
            ev.cap_len = u32::MAX;
            let _ = decode(&ev, 4789, None, UNIX_EPOCH, 0);
        }
    }
}
