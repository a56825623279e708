//! `overlay bench`: native vs kernel-vxlan vs eBPF, side by side.
use std::path::PathBuf;

use anyhow::{Context as _, bail};
use clap::Args;

use crate::lab::bench::{self, BenchConfig, Mode, Test};

#[derive(Args, Debug)]
pub struct BenchArgs {
    /// Short run (3 rounds of 1 s measurements, under two minutes) instead of the full one
    /// (7 rounds of 3 s, under ten).
    #[arg(long)]
    pub quick: bool,
    /// Rounds (each measures every mode once, in turn) [default: 3 quick, 7 full].
    #[arg(long)]
    pub rounds: Option<u32>,
    /// Seconds per TCP and UDP measurement [default: 1 quick, 3 full].
    #[arg(long)]
    pub seconds: Option<f64>,
    /// Modes to build, comma-separated: native, kernel-vxlan, ebpf-tc, ebpf-xdp.
    #[arg(long, value_delimiter = ',', default_value = "native,kernel-vxlan,ebpf-tc")]
    pub modes: Vec<String>,
    /// Traffic tests to run, comma-separated: tcp (iperf3 1 and 8 streams, CPU per Gbit/s at a
    /// fixed rate), rr (TCP_RR and TCP_CRR, 1 and 8 flows), udp (64-byte packet rate, CPU per
    /// packet, in-place program cost), latency (UDP ping-pong mean, p50, p90, p99); or `dns`
    /// alone (as --dns).
    #[arg(long, value_delimiter = ',', default_value = "tcp,rr,udp,latency")]
    pub tests: Vec<String>,
    /// Write the full results (samples, summaries, ratios, targets) as JSON here.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Write the chart (SVG) here.
    #[arg(long, default_value = "overlay-bench.svg")]
    pub chart: PathBuf,
    /// Measure the control plane instead (etcd): convergence with 3 agents, and one agent's
    /// initial sync, memory and single-change cost at scale.
    #[arg(long)]
    pub control_plane: bool,
    /// Measure the way out instead: TCP throughput and UDP round trip from a container to an
    /// outside host through its gateway and the node's masquerade, next to the host's own
    /// routed traffic to the same host (uses --rounds, --seconds, --json).
    #[arg(long, conflicts_with = "control_plane")]
    pub way_out: bool,
    /// Measure names instead: lookups/s and round trips of a name answered by the datapath, by
    /// the agent's resolver, and by dnsmasq on the same node (uses --rounds, --seconds, --json).
    #[arg(long, conflicts_with_all = ["control_plane", "way_out"])]
    pub dns: bool,
    /// Measure services instead: short TCP connections per second and request/response round
    /// trips from a container to a task on another host, directly and through the service's
    /// VIP (uses --rounds, --seconds, --json).
    #[arg(long, conflicts_with_all = ["control_plane", "way_out", "dns"])]
    pub services: bool,
    /// Services: every agent's `--mesh-return` (`node`: replies go back through the node that
    /// received the request; `direct`: straight from the task's node to the client).
    #[arg(long, default_value = "node", requires = "services")]
    pub mesh_return: crate::model::MeshReturn,
    /// Measure the programs alone instead: ns per packet of encapsulation, decapsulation and
    /// the pass-through floor under BPF_PROG_TEST_RUN (no namespaces; 100,000 packets each with
    /// --quick, 500,000 without). With --fdb-scale, both.
    #[arg(long, conflicts_with_all = ["control_plane", "way_out", "dns", "services"])]
    pub prog_cost: bool,
    /// Measure the data plane's scale instead: ns per packet of encapsulation and decapsulation
    /// under BPF_PROG_TEST_RUN with 1,000 and with 1,000,000 FDB entries over 4,000 VNIs, and
    /// the ratio (issue 14: at most 1.3).
    #[arg(long, conflicts_with_all = ["control_plane", "way_out", "dns", "services"])]
    pub fdb_scale: bool,
    /// FDB scale: different frames cycled through (the same for both tables). The default hits
    /// far more entries than the caches hold; a few hundred show the lookups with warm caches.
    #[arg(long, default_value_t = bench::fdbscale::FRAMES, requires = "fdb_scale")]
    pub fdb_frames: u32,
    /// Control plane: convergence samples of each kind (after `endpoint add`, after
    /// `endpoint add --no-wait`).
    #[arg(long, default_value_t = 100, requires = "control_plane")]
    pub samples: usize,
    /// Control plane: nodes in the scale test.
    #[arg(long, default_value_t = 100, requires = "control_plane")]
    pub nodes: usize,
    /// Control plane: endpoints in the scale test.
    #[arg(long, default_value_t = 10_000, requires = "control_plane")]
    pub endpoints: usize,
    /// Control plane: single changes timed at scale.
    #[arg(long, default_value_t = 40, requires = "control_plane")]
    pub changes: usize,
    /// Control plane: the scale test alone at N endpoints (nodes: N/100, at most 1,000, unless
    /// --nodes is given), held to issue 14's targets (initial sync < 5 s, one change p99
    /// < 20 ms, agent RSS < 256 MiB); skips the 3-agent convergence samples.
    #[arg(long, value_name = "N", requires = "control_plane", conflicts_with = "endpoints")]
    pub scale: Option<usize>,
}

pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    tokio::spawn(async {
        if tokio::signal::ctrl_c().await.is_ok() {
            bench::INTERRUPTED.store(true, std::sync::atomic::Ordering::Relaxed);
        }
    });
    tokio::task::spawn_blocking(move || run_blocking(args)).await?
}

fn run_blocking(args: BenchArgs) -> anyhow::Result<()> {
    if args.control_plane {
        return run_control(args);
    }
    if args.way_out {
        return run_way_out(args);
    }
    if args.services {
        return run_services(args);
    }
    if args.prog_cost || args.fdb_scale {
        return run_programs(args);
    }
    if args.dns || args.tests.iter().any(|t| t == "dns") {
        if args.tests.iter().any(|t| t != "dns") && !args.dns {
            bail!("--tests dns runs on its own topology: give it alone (--tests dns)");
        }
        return run_dns(args);
    }
    let mut cfg = if args.quick { BenchConfig::quick() } else { BenchConfig::full() };
    cfg.modes = args
        .modes
        .iter()
        .map(|s| {
            let known: Vec<&str> = Mode::ALL.iter().map(|m| m.name()).collect();
            Mode::parse(s).with_context(|| format!("unknown mode {s:?} (expected one of {})", known.join(", ")))
        })
        .collect::<anyhow::Result<_>>()?;
    cfg.tests = args
        .tests
        .iter()
        .map(|s| Test::parse(s).with_context(|| format!("unknown test {s:?} (expected tcp, rr, udp or latency)")))
        .collect::<anyhow::Result<_>>()?;
    if cfg.modes.is_empty() {
        bail!("--modes is empty");
    }
    if let Some(r) = args.rounds {
        if r == 0 || r > 50 {
            bail!("--rounds {r}: expected 1 to 50");
        }
        cfg.rounds = r;
    }
    if let Some(s) = args.seconds {
        if !(0.2..=60.0).contains(&s) {
            bail!("--seconds {s}: expected 0.2 to 60");
        }
        cfg.seconds = s;
    }
    let exe = std::env::current_exe().context("finding the overlay binary")?;
    let report = bench::run(&cfg, &exe, |line| println!("{line}"))?;
    println!("\n{}", bench::report::table(&report));
    if let Some(p) = &args.json {
        bench::report::write_json(&report, p)?;
        println!("JSON: {}", p.display());
    }
    bench::report::write_chart(&report, &args.chart)?;
    println!("chart: {}", args.chart.display());
    println!("took {:.0} s", report.duration_seconds);
    Ok(())
}

fn run_way_out(args: BenchArgs) -> anyhow::Result<()> {
    let rounds = args.rounds.unwrap_or(if args.quick { 3 } else { 7 });
    let secs = args.seconds.unwrap_or(if args.quick { 1.0 } else { 3.0 });
    if !(1..=100).contains(&rounds) || !(1.0..=60.0).contains(&secs) {
        bail!("--rounds {rounds} / --seconds {secs}: expected 1-100 rounds of 1-60 s");
    }
    let cfg = bench::wayout::WayOutConfig { rounds, secs: secs as u32 };
    let exe = std::env::current_exe().context("finding the overlay binary")?;
    let t0 = std::time::Instant::now();
    let mut progress = |line: &str| println!("{line}");
    let report = bench::wayout::run(&cfg, &exe, &mut progress)?;
    finish(&bench::wayout::table(&report), &report, args.json.as_deref(), t0)
}

/// Prints the table, writes the report as JSON when asked, and says how long it took.
fn finish(table: &str, report: &impl serde::Serialize, json: Option<&std::path::Path>, t0: std::time::Instant) -> anyhow::Result<()> {
    println!("\n{table}");
    if let Some(p) = json {
        std::fs::write(p, serde_json::to_string_pretty(report)?).with_context(|| format!("writing {}", p.display()))?;
        println!("JSON: {}", p.display());
    }
    println!("took {:.0} s", t0.elapsed().as_secs_f64());
    Ok(())
}

fn run_dns(args: BenchArgs) -> anyhow::Result<()> {
    let rounds = args.rounds.unwrap_or(if args.quick { 3 } else { 7 });
    let secs = args.seconds.unwrap_or(if args.quick { 1.0 } else { 3.0 });
    if !(1..=100).contains(&rounds) || !(0.2..=60.0).contains(&secs) {
        bail!("--rounds {rounds} / --seconds {secs}: expected 1-100 rounds of 0.2-60 s");
    }
    let cfg = bench::dns::DnsConfig { rounds, secs, clients: 4 };
    let exe = std::env::current_exe().context("finding the overlay binary")?;
    let t0 = std::time::Instant::now();
    let mut progress = |line: &str| println!("{line}");
    let report = bench::dns::run(&cfg, &exe, &mut progress)?;
    finish(&bench::dns::table(&report), &report, args.json.as_deref(), t0)
}

/// What `--prog-cost` and `--fdb-scale` found (either may be absent).
#[derive(serde::Serialize)]
struct ProgramsReport {
    machine: bench::Machine,
    prog_cost: Option<bench::progcost::ProgCosts>,
    fdb_scale: Option<bench::fdbscale::FdbScale>,
}

fn run_programs(args: BenchArgs) -> anyhow::Result<()> {
    let packets: u64 = if args.quick { 100_000 } else { 500_000 };
    let t0 = std::time::Instant::now();
    let busy = bench::traffic::wait_quiet(std::time::Duration::from_secs(10));
    if busy >= 0.10 {
        println!("note: the machine is {:.0}% busy", busy * 100.0);
    }
    let mut table = String::new();
    let prog_cost = if args.prog_cost {
        println!("program cost: BPF_PROG_TEST_RUN, {packets} packets per program");
        let pc = bench::traffic::on_cpu(0, || bench::progcost::measure(packets, 10))?;
        table.push_str(&bench::report::prog_cost_table(&pc));
        Some(pc)
    } else {
        None
    };
    let fdb_scale = if args.fdb_scale {
        println!("FDB scale: BPF_PROG_TEST_RUN, {packets} packets per program and table");
        let r = bench::traffic::on_cpu(0, || bench::fdbscale::measure(packets, 10, args.fdb_frames, &mut |l: &str| println!("{l}")))?;
        table.push_str(&bench::fdbscale::table(&r));
        Some(r)
    } else {
        None
    };
    let report = ProgramsReport { machine: bench::Machine::here(), prog_cost, fdb_scale };
    finish(&table, &report, args.json.as_deref(), t0)
}

fn run_services(args: BenchArgs) -> anyhow::Result<()> {
    let rounds = args.rounds.unwrap_or(if args.quick { 3 } else { 7 });
    let secs = args.seconds.unwrap_or(if args.quick { 1.0 } else { 3.0 });
    if !(1..=100).contains(&rounds) || !(0.2..=60.0).contains(&secs) {
        bail!("--rounds {rounds} / --seconds {secs}: expected 1-100 rounds of 0.2-60 s");
    }
    let exe = std::env::current_exe().context("finding the overlay binary")?;
    let t0 = std::time::Instant::now();
    let mut progress = |line: &str| println!("{line}");
    let report = bench::service::run(&bench::service::ServiceConfig { rounds, secs, mesh_return: args.mesh_return }, &exe, &mut progress)?;
    finish(&bench::service::table(&report), &report, args.json.as_deref(), t0)
}

fn run_control(args: BenchArgs) -> anyhow::Result<()> {
    use bench::control::{MAX_SCALE_ENDPOINTS, Targets};
    let max = MAX_SCALE_ENDPOINTS;
    if !(1..=10_000).contains(&args.samples) {
        bail!("--samples {}: expected 1 to 10000", args.samples);
    }
    // --scale N: N/100 nodes (at most 1,000) unless --nodes was given.
    let nodes_given = std::env::args().any(|a| a == "--nodes" || a.starts_with("--nodes="));
    let (endpoints, nodes, targets) = match args.scale {
        Some(n) => (n, if nodes_given { args.nodes } else { (n / 100).clamp(2, 1000) }, Targets::SCALE),
        None => (args.endpoints, args.nodes, Targets::DEFAULT),
    };
    if !(2..=1000).contains(&nodes) {
        bail!("--nodes {nodes}: expected 2 to 1000");
    }
    if !(1..=max).contains(&endpoints) {
        bail!("{} {endpoints}: expected 1 to {max}", if args.scale.is_some() { "--scale" } else { "--endpoints" });
    }
    if !(2..=10_000).contains(&args.changes) {
        bail!("--changes {}: expected 2 to 10000", args.changes);
    }
    let cfg = bench::control::ControlConfig { samples: args.samples, nodes, endpoints, changes: args.changes, targets };
    let exe = std::env::current_exe().context("finding the overlay binary")?;
    let t0 = std::time::Instant::now();
    let mut progress = |line: &str| println!("{line}");
    let convergence = match args.scale {
        Some(_) => None,
        None => Some(bench::control::convergence(&cfg, &exe, &mut progress)?),
    };
    let mut report = bench::control::scale(&cfg, &exe, &mut progress)?;
    if let Some((waited, published, remote)) = convergence {
        report.convergence = waited;
        report.convergence_from_publish = published;
        report.convergence_remote_from_publish = remote;
    }
    finish(&bench::control::table(&report), &report, args.json.as_deref(), t0)
}
