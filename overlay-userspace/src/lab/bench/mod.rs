//! `overlay bench`: the same two-host topology built three ways (native routing, Docker's
//! kernel-vxlan overlay, this datapath), measured side by side in one run.
//!
//! Modes alternate within every round (A B C, A B C, ...) so that drift on a shared machine hits
//! all of them; each metric is reported as the median over rounds with its min-max, and every
//! ratio is taken round by round inside the same run.
pub mod control;
pub mod dns;
pub mod progcost;
pub mod report;
pub mod service;
pub mod stats;
pub mod topo;
pub mod traffic;
pub mod wayout;

use std::{
    collections::BTreeMap,
    path::Path,
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use anyhow::bail;
use serde::Serialize;
pub use stats::Summary;
pub use topo::Mode;

/// Set by Ctrl-C: the run stops at the next measurement and removes what it built.
pub static INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// What is measured, per mode.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub enum Metric {
    #[serde(rename = "tcp_gbps_1")]
    TcpGbps1,
    #[serde(rename = "tcp_gbps_4")]
    TcpGbps4,
    #[serde(rename = "udp_pps")]
    UdpPps,
    #[serde(rename = "latency_mean_us")]
    LatencyMeanUs,
    #[serde(rename = "latency_p99_us")]
    LatencyP99Us,
    #[serde(rename = "cpu_ns_per_packet")]
    CpuNsPerPacket,
}

impl Metric {
    pub const ALL: [Metric; 6] =
        [Metric::TcpGbps1, Metric::TcpGbps4, Metric::UdpPps, Metric::LatencyMeanUs, Metric::LatencyP99Us, Metric::CpuNsPerPacket];

    pub fn key(self) -> &'static str {
        match self {
            Metric::TcpGbps1 => "tcp_gbps_1",
            Metric::TcpGbps4 => "tcp_gbps_4",
            Metric::UdpPps => "udp_pps",
            Metric::LatencyMeanUs => "latency_mean_us",
            Metric::LatencyP99Us => "latency_p99_us",
            Metric::CpuNsPerPacket => "cpu_ns_per_packet",
        }
    }

    pub fn title(self) -> &'static str {
        match self {
            Metric::TcpGbps1 => "TCP, 1 stream (Gbit/s)",
            Metric::TcpGbps4 => "TCP, 4 streams (Gbit/s)",
            Metric::UdpPps => "UDP 64 B (Mpackets/s)",
            Metric::LatencyMeanUs => "latency mean (us)",
            Metric::LatencyP99Us => "latency p99 (us)",
            Metric::CpuNsPerPacket => "sender CPU per UDP pkt (ns)",
        }
    }

    /// The value as displayed (packets/s shown in millions).
    pub fn display(self, v: f64) -> f64 {
        if self == Metric::UdpPps { v / 1e6 } else { v }
    }

    pub fn higher_is_better(self) -> bool {
        matches!(self, Metric::TcpGbps1 | Metric::TcpGbps4 | Metric::UdpPps)
    }
}

/// How long and how often to measure.
#[derive(Clone, Debug, Serialize)]
pub struct BenchConfig {
    pub modes: Vec<Mode>,
    pub rounds: u32,
    /// Seconds per TCP and UDP measurement.
    pub seconds: f64,
    /// TCP slow-start seconds left out by iperf3.
    pub omit_seconds: u32,
    /// Ping-pongs per latency measurement.
    pub latency_count: usize,
    /// UDP payload bytes (packet rate and latency).
    pub payload: usize,
    /// Test-run packets per program.
    pub prog_packets: u64,
    /// Which traffic tests to run.
    pub tests: Vec<Test>,
}

/// A traffic test; each gives one or more metrics.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Test {
    /// iperf3, 1 and 4 streams.
    Tcp,
    /// 64-byte UDP packet rate and CPU per packet.
    Udp,
    /// UDP ping-pong.
    Latency,
}

impl Test {
    pub const ALL: [Test; 3] = [Test::Tcp, Test::Udp, Test::Latency];

    pub fn parse(s: &str) -> Option<Test> {
        match s {
            "tcp" => Some(Test::Tcp),
            "udp" => Some(Test::Udp),
            "latency" => Some(Test::Latency),
            _ => None,
        }
    }
}

impl BenchConfig {
    pub fn quick() -> Self {
        BenchConfig {
            modes: Mode::DEFAULT.to_vec(),
            rounds: 3,
            seconds: 1.0,
            omit_seconds: 0,
            latency_count: 2000,
            payload: progcost::PAYLOAD,
            prog_packets: 100_000,
            tests: Test::ALL.to_vec(),
        }
    }

    pub fn full() -> Self {
        BenchConfig { rounds: 7, seconds: 3.0, omit_seconds: 1, latency_count: 10_000, prog_packets: 500_000, ..Self::quick() }
    }
}

/// One mode's samples (one per round) and their summaries.
#[derive(Clone, Debug, Default, Serialize)]
pub struct ModeResult {
    pub samples: BTreeMap<Metric, Vec<f64>>,
    pub summary: BTreeMap<Metric, Summary>,
    /// TCP retransmissions reported by iperf3 (1 stream, per round).
    pub tcp_retransmits: Vec<u64>,
    /// UDP packets sent but not received, as a fraction (per round).
    pub udp_loss: Vec<f64>,
    /// Ping-pongs that got no answer (per round); their round trips are not in the latency.
    pub latency_lost: Vec<usize>,
    /// The softirq (datapath) part of the sending CPU's time per UDP packet (per round).
    pub udp_softirq_ns_per_packet: Vec<f64>,
    /// Measurements that failed, with the reason; their samples are NaN and left out of the
    /// summaries.
    pub errors: Vec<String>,
}

/// `mode` / `against` for one metric, taken round by round.
#[derive(Clone, Debug, Serialize)]
pub struct Ratio {
    pub metric: Metric,
    pub mode: Mode,
    pub against: Mode,
    pub summary: Summary,
}

/// A target of the issue, checked on the medians of this run.
#[derive(Clone, Debug, Serialize)]
pub struct Target {
    pub what: String,
    pub value: f64,
    /// ">=" or "<=" (or "<" for program costs).
    pub op: &'static str,
    pub threshold: f64,
    /// False when the metric was not measured in this run (a test left out, or every sample
    /// failed); `met` is then false too.
    pub measured: bool,
    pub met: bool,
}

#[derive(Clone, Debug, Serialize)]
pub struct Machine {
    pub kernel: String,
    pub cpus: usize,
    pub cpu_model: String,
}

impl Machine {
    pub fn here() -> Self {
        let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim().to_string();
        let cpu_model = std::fs::read_to_string("/proc/cpuinfo")
            .unwrap_or_default()
            .lines()
            .find_map(|l| l.strip_prefix("model name").map(|r| r.trim_start_matches([' ', '\t', ':']).to_string()))
            .unwrap_or_default();
        Machine { kernel, cpus: std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1), cpu_model }
    }
}

/// Everything a run found.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub version: u32,
    pub machine: Machine,
    pub config: BenchConfig,
    pub results: BTreeMap<Mode, ModeResult>,
    pub ratios: Vec<Ratio>,
    pub prog_cost: progcost::ProgCosts,
    pub targets: Vec<Target>,
    pub duration_seconds: f64,
}

fn check_interrupted() -> anyhow::Result<()> {
    if INTERRUPTED.load(Ordering::Relaxed) {
        bail!("interrupted");
    }
    Ok(())
}

/// Runs the benchmark. `progress` receives one line per step.
pub fn run(cfg: &BenchConfig, overlay_bin: &Path, mut progress: impl FnMut(&str)) -> anyhow::Result<Report> {
    let t0 = Instant::now();
    for tool in ["ip", "iperf3", "sysctl", "bridge", "ping"] {
        if std::process::Command::new("which").arg(tool).output().map(|o| !o.status.success()).unwrap_or(true) {
            bail!("`{tool}` is not installed; run `cargo xtask setup`");
        }
    }
    progress(&format!("program cost: BPF_PROG_TEST_RUN, {} packets per program", cfg.prog_packets));
    traffic::wait_quiet(Duration::from_secs(10));
    let prog_cost = traffic::on_cpu(0, || progcost::measure(cfg.prog_packets, 10))?;

    let mut topos = Vec::new();
    for &m in &cfg.modes {
        check_interrupted()?;
        progress(&format!("building {}", m.name()));
        let t = topo::build(m, overlay_bin)?;
        t.check()?;
        topos.push(t);
    }
    let mut results: BTreeMap<Mode, ModeResult> = cfg.modes.iter().map(|&m| (m, ModeResult::default())).collect();
    let secs = Duration::from_secs_f64(cfg.seconds);
    let tcp_secs = cfg.seconds.ceil().max(1.0) as u32;
    for round in 1..=cfg.rounds {
        for t in &topos {
            check_interrupted()?;
            let busy = traffic::wait_quiet(Duration::from_secs(5));
            if busy >= 0.10 {
                progress(&format!("note: the machine is {:.0}% busy before measuring {} (round {round})", busy * 100.0, t.mode.name()));
            }
            let r = results.get_mut(&t.mode).expect("every mode has a result");
            let push = |m: Metric, v: anyhow::Result<f64>, r: &mut ModeResult| {
                let v = v.unwrap_or_else(|e| {
                    r.errors.push(format!("round {round}, {}: {e:#}", m.key()));
                    f64::NAN
                });
                r.samples.entry(m).or_default().push(v);
                v
            };
            let (c, s, ip) = (&t.client_ns, &t.server_ns, t.server_ip);
            let (mut a, mut b, mut p, mut cpu, mut lm, mut lp) = (f64::NAN, f64::NAN, f64::NAN, f64::NAN, f64::NAN, f64::NAN);
            if cfg.tests.contains(&Test::Tcp) {
                let tcp1 = traffic::iperf3(c, s, ip, 1, tcp_secs, cfg.omit_seconds);
                if let Ok(x) = &tcp1 {
                    r.tcp_retransmits.push(x.retransmits);
                }
                a = push(Metric::TcpGbps1, tcp1.map(|x| x.gbps), r);
                b = push(Metric::TcpGbps4, traffic::iperf3(c, s, ip, 4, tcp_secs, cfg.omit_seconds).map(|x| x.gbps), r);
            }
            if cfg.tests.contains(&Test::Udp) {
                let udp = traffic::udp_pps(c, s, ip, cfg.payload, Duration::from_millis(200), secs);
                let (pps, cpu_res) = match udp {
                    Ok(u) => {
                        r.udp_loss.push(u.loss);
                        r.udp_softirq_ns_per_packet.push(u.softirq_ns_per_packet);
                        (Ok(u.pps), Ok(u.cpu_ns_per_packet))
                    }
                    Err(e) => (Err(anyhow::anyhow!("{e:#}")), Err(e)),
                };
                p = push(Metric::UdpPps, pps, r);
                cpu = push(Metric::CpuNsPerPacket, cpu_res, r);
            }
            if cfg.tests.contains(&Test::Latency) {
                let lat = traffic::udp_latency(c, s, ip, cfg.payload, cfg.latency_count, secs.max(Duration::from_secs(1)));
                let (mean, p99) = match lat {
                    Ok(l) => {
                        r.latency_lost.push(l.lost);
                        (Ok(l.mean_us), Ok(l.p99_us))
                    }
                    Err(e) => (Err(anyhow::anyhow!("{e:#}")), Err(e)),
                };
                lm = push(Metric::LatencyMeanUs, mean, r);
                lp = push(Metric::LatencyP99Us, p99, r);
            }
            progress(&format!(
                "round {round}/{} {:<13} tcp1 {a:6.2} Gbit/s  tcp4 {b:6.2} Gbit/s  udp {:5.3} Mpps  cpu {cpu:6.0} ns/pkt  rtt {lm:6.1}/{lp:6.1} us",
                cfg.rounds,
                t.mode.name(),
                p / 1e6
            ));
        }
    }
    // Remove the topologies now, reporting what could not be removed.
    for mut t in topos {
        for e in t.sim.cleanup() {
            progress(&format!("cleanup: {e}"));
        }
    }
    for r in results.values_mut() {
        r.summary = r.samples.iter().map(|(m, v)| (*m, Summary::of(v))).collect();
    }
    let ratios = ratios(&results);
    let targets = targets(&results, &ratios, &prog_cost);
    Ok(Report {
        version: 1,
        machine: Machine::here(),
        config: cfg.clone(),
        results,
        ratios,
        prog_cost,
        targets,
        duration_seconds: t0.elapsed().as_secs_f64(),
    })
}

/// Every eBPF mode against kernel-vxlan and native, per metric, round by round.
pub fn ratios(results: &BTreeMap<Mode, ModeResult>) -> Vec<Ratio> {
    let mut out = Vec::new();
    for (&mode, r) in results.iter().filter(|(m, _)| m.is_ebpf()) {
        for against in [Mode::KernelVxlan, Mode::Native] {
            let Some(base) = results.get(&against) else { continue };
            for m in Metric::ALL {
                let (Some(a), Some(b)) = (r.samples.get(&m), base.samples.get(&m)) else { continue };
                let per_round: Vec<f64> = a.iter().zip(b).map(|(x, y)| x / y).collect();
                out.push(Ratio { metric: m, mode, against, summary: Summary::of(&per_round) });
            }
        }
    }
    out
}

fn ratio_of(ratios: &[Ratio], mode: Mode, against: Mode, metric: Metric) -> f64 {
    ratios
        .iter()
        .find(|r| r.mode == mode && r.against == against && r.metric == metric)
        .map(|r| r.summary.median)
        .unwrap_or(f64::NAN)
}

/// The issue's targets, on this run's medians.
pub fn targets(results: &BTreeMap<Mode, ModeResult>, ratios: &[Ratio], pc: &progcost::ProgCosts) -> Vec<Target> {
    let mut out = Vec::new();
    let mut t = |what: String, value: f64, op: &'static str, threshold: f64| {
        let met = match op {
            ">=" => value >= threshold,
            "<=" => value <= threshold,
            _ => value < threshold,
        };
        out.push(Target { what, value, op, threshold, measured: value.is_finite(), met });
    };
    for &mode in results.keys().filter(|m| m.is_ebpf()) {
        let n = mode.name();
        let k = Mode::KernelVxlan;
        let nat = Mode::Native;
        t(format!("{n} / kernel-vxlan, UDP packets/s"), ratio_of(ratios, mode, k, Metric::UdpPps), ">=", 1.5);
        t(format!("{n} / kernel-vxlan, TCP 1 stream"), ratio_of(ratios, mode, k, Metric::TcpGbps1), ">=", 1.2);
        t(format!("{n} / kernel-vxlan, latency mean"), ratio_of(ratios, mode, k, Metric::LatencyMeanUs), "<=", 0.8);
        t(format!("{n} / kernel-vxlan, latency p99"), ratio_of(ratios, mode, k, Metric::LatencyP99Us), "<=", 0.8);
        t(format!("{n} / native, TCP 1 stream"), ratio_of(ratios, mode, nat, Metric::TcpGbps1), ">=", 0.9);
        t(format!("{n} / native, TCP 4 streams"), ratio_of(ratios, mode, nat, Metric::TcpGbps4), ">=", 0.9);
        t(format!("{n} / native, UDP packets/s"), ratio_of(ratios, mode, nat, Metric::UdpPps), ">=", 0.9);
    }
    t("encapsulation / pass-through floor, ns per packet".into(), pc.encap.vs_floor, "<", 2.0);
    t("decapsulation / pass-through floor, ns per packet".into(), pc.decap.vs_floor, "<", 2.0);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn result(samples: &[(Metric, &[f64])]) -> ModeResult {
        let mut r = ModeResult::default();
        for (m, v) in samples {
            r.samples.insert(*m, v.to_vec());
        }
        r.summary = r.samples.iter().map(|(m, v)| (*m, Summary::of(v))).collect();
        r
    }

    fn cost(ns: f64, floor: f64) -> progcost::ProgCost {
        progcost::ProgCost { program: "p", path: "", ns_per_packet: ns, min_ns: ns, max_ns: ns, vs_floor: ns / floor }
    }

    #[test]
    fn json_keys_are_the_metric_keys() {
        for m in Metric::ALL {
            assert_eq!(serde_json::to_value(m).expect("serialisable"), serde_json::Value::from(m.key()));
        }
    }

    #[test]
    fn ratios_are_taken_round_by_round() {
        let mut results = BTreeMap::new();
        // Round 2 is slower for everyone (drift); the per-round ratio stays 2.
        results.insert(Mode::KernelVxlan, result(&[(Metric::UdpPps, &[100.0, 50.0, 100.0])]));
        results.insert(Mode::Native, result(&[(Metric::UdpPps, &[200.0, 100.0, 200.0])]));
        results.insert(Mode::EbpfTc, result(&[(Metric::UdpPps, &[200.0, 100.0, 200.0])]));
        let r = ratios(&results);
        let k = r.iter().find(|x| x.against == Mode::KernelVxlan).expect("vs kernel-vxlan");
        assert_eq!((k.summary.median, k.summary.min, k.summary.max), (2.0, 2.0, 2.0));
        let n = r.iter().find(|x| x.against == Mode::Native).expect("vs native");
        assert_eq!(n.summary.median, 1.0);
        assert!(r.iter().all(|x| x.mode == Mode::EbpfTc), "only eBPF modes are compared");
    }

    #[test]
    fn targets_use_the_issue_thresholds() {
        let mut results = BTreeMap::new();
        results.insert(Mode::KernelVxlan, result(&[(Metric::UdpPps, &[100.0]), (Metric::LatencyMeanUs, &[20.0])]));
        results.insert(Mode::Native, result(&[(Metric::UdpPps, &[100.0])]));
        results.insert(Mode::EbpfTc, result(&[(Metric::UdpPps, &[149.0]), (Metric::LatencyMeanUs, &[16.0])]));
        let r = ratios(&results);
        let pc = progcost::ProgCosts {
            packets_per_program: 1,
            floor: cost(100.0, 100.0),
            encap: cost(199.0, 100.0),
            decap: cost(200.0, 100.0),
            floor_repeat_ns: 1.0,
        };
        let t = targets(&results, &r, &pc);
        let get = |what: &str| t.iter().find(|x| x.what == what).unwrap_or_else(|| panic!("target {what}"));
        assert!(!get("ebpf-tc / kernel-vxlan, UDP packets/s").met, "1.49 < 1.5");
        assert!(get("ebpf-tc / kernel-vxlan, latency mean").met, "0.8 <= 0.8");
        assert!(get("ebpf-tc / native, UDP packets/s").met, "1.49 >= 0.9");
        assert!(!get("ebpf-tc / kernel-vxlan, TCP 1 stream").met, "a metric not measured is not met");
        assert!(get("encapsulation / pass-through floor, ns per packet").met, "1.99 < 2");
        assert!(!get("decapsulation / pass-through floor, ns per packet").met, "2.0 is not < 2");
    }
}
