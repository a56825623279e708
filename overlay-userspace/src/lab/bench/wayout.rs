//! `overlay bench --way-out`: what the way out costs next to a plain routed path. One simulated
//! host with an agent, a container on an overlay network, and the outside host behind the
//! router; each round measures, in turn, the host's own traffic to the outside host (routed by
//! the host, no overlay, no NAT) and the container's (through its veth, the egress program's
//! gateway decision, the host's forwarding and the nftables masquerade). TCP throughput with
//! iperf3 (both ends on one CPU, as in the main benchmark) and UDP request/response latency.
use std::{path::Path, time::Duration};

use anyhow::{Context as _, bail};
use serde::Serialize;

use super::{INTERRUPTED, Summary, traffic};
use crate::lab::sim::{self, OUTSIDE_HOST, Sim};

/// What one run measures.
#[derive(Clone, Copy, Debug)]
pub struct WayOutConfig {
    pub rounds: u32,
    pub secs: u32,
}

/// Samples per round and their summaries; ratios are way out / routed, round by round.
#[derive(Debug, Default, Serialize)]
pub struct WayOutReport {
    pub routed_tcp_gbps: Vec<f64>,
    pub way_out_tcp_gbps: Vec<f64>,
    pub routed_rtt_us: Vec<f64>,
    pub way_out_rtt_us: Vec<f64>,
    pub tcp_ratio: Summary,
    pub rtt_ratio: Summary,
    pub routed_tcp: Summary,
    pub way_out_tcp: Summary,
    pub routed_rtt: Summary,
    pub way_out_rtt: Summary,
}

const CONTAINER_IP: std::net::Ipv4Addr = std::net::Ipv4Addr::new(10, 0, 1, 2);

/// Builds the topology and measures; everything is removed when it returns.
pub fn run(cfg: &WayOutConfig, exe: &Path, progress: &mut dyn FnMut(&str)) -> anyhow::Result<WayOutReport> {
    let mut sim = Sim::new("w", exe)?;
    sim.build_underlay(1)?;
    let outside = sim.add_outside(1, 1500)?;
    let web = sim.add_ns("web1")?;
    let yaml = format!(
        "nodes:\n  - {{name: node1, vtep: {}, underlay: eth0}}\nnetworks:\n  - {{name: front, vni: 4096, subnet: 10.0.1.0/24}}\nendpoints:\n  - {{name: web1, network: front, node: node1, ip: {CONTAINER_IP}, netns: {web}}}\n",
        sim::host_vtep(1)
    );
    let file = sim.write_file("cluster.yaml", &yaml)?;
    let h1 = sim.host_ns(1);
    sim.spawn_agent("node1", &h1, &file)?;
    if !sim::wait_for(Duration::from_secs(20), || sim.has_address(&web, CONTAINER_IP)) {
        bail!("the container was not wired:\n{}", sim.agent_logs(1));
    }
    if !sim.ping(&web, OUTSIDE_HOST, 2, None) || !sim.ping(&h1, OUTSIDE_HOST, 2, None) {
        bail!("the outside host does not answer:\n{}", sim.agent_logs(1));
    }
    let mut r = WayOutReport::default();
    for round in 1..=cfg.rounds {
        if INTERRUPTED.load(std::sync::atomic::Ordering::Relaxed) {
            bail!("interrupted");
        }
        traffic::wait_quiet(Duration::from_secs(5));
        let routed = traffic::iperf3(&h1, &outside, OUTSIDE_HOST, 1, cfg.secs, 1).context("iperf3 from the host")?;
        traffic::wait_quiet(Duration::from_secs(5));
        let way = traffic::iperf3(&web, &outside, OUTSIDE_HOST, 1, cfg.secs, 1).context("iperf3 from the container")?;
        let lat_routed = traffic::udp_latency(&h1, &outside, OUTSIDE_HOST, 64, 2000, Duration::from_secs(10))?;
        let lat_way = traffic::udp_latency(&web, &outside, OUTSIDE_HOST, 64, 2000, Duration::from_secs(10))?;
        progress(&format!(
            "round {round}: TCP routed {:.2} Gbit/s, way out {:.2} Gbit/s; UDP RTT routed {:.1} us, way out {:.1} us",
            routed.gbps, way.gbps, lat_routed.mean_us, lat_way.mean_us
        ));
        r.routed_tcp_gbps.push(routed.gbps);
        r.way_out_tcp_gbps.push(way.gbps);
        r.routed_rtt_us.push(lat_routed.mean_us);
        r.way_out_rtt_us.push(lat_way.mean_us);
    }
    let ratios = |a: &[f64], b: &[f64]| a.iter().zip(b).map(|(x, y)| x / y).collect::<Vec<f64>>();
    r.tcp_ratio = Summary::of(&ratios(&r.way_out_tcp_gbps, &r.routed_tcp_gbps));
    r.rtt_ratio = Summary::of(&ratios(&r.way_out_rtt_us, &r.routed_rtt_us));
    r.routed_tcp = Summary::of(&r.routed_tcp_gbps);
    r.way_out_tcp = Summary::of(&r.way_out_tcp_gbps);
    r.routed_rtt = Summary::of(&r.routed_rtt_us);
    r.way_out_rtt = Summary::of(&r.way_out_rtt_us);
    for e in sim.cleanup() {
        progress(&format!("cleanup: {e}"));
    }
    Ok(r)
}

/// The report as a table.
pub fn table(r: &WayOutReport) -> String {
    let s = |x: &Summary| format!("{:>8.2} ({:.2}-{:.2})", x.median, x.min, x.max);
    let mut o = String::new();
    o += &format!("{:<34} {:>26} {:>26}\n", "median (min-max) over rounds", "routed (host itself)", "way out (container)");
    o += &format!("{:<34} {:>26} {:>26}\n", "TCP, 1 stream, Gbit/s", s(&r.routed_tcp), s(&r.way_out_tcp));
    o += &format!("{:<34} {:>26} {:>26}\n", "UDP 64-byte round trip, mean us", s(&r.routed_rtt), s(&r.way_out_rtt));
    o += &format!("way out / routed, per round: TCP {} ; RTT {}\n", s(&r.tcp_ratio), s(&r.rtt_ratio));
    o
}
