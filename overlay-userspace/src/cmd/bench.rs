//! `overlay bench`: native vs kernel-vxlan vs eBPF, side by side.
use std::path::PathBuf;

use anyhow::{Context as _, bail};
use clap::Args;

use crate::bench::{self, BenchConfig, Mode, Test};

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
    /// Modes to build, comma-separated: native, kernel-vxlan, ebpf-tc.
    #[arg(long, value_delimiter = ',', default_value = "native,kernel-vxlan,ebpf-tc")]
    pub modes: Vec<String>,
    /// Traffic tests to run, comma-separated: tcp, udp, latency.
    #[arg(long, value_delimiter = ',', default_value = "tcp,udp,latency")]
    pub tests: Vec<String>,
    /// Write the full results (samples, summaries, ratios, targets) as JSON here.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Write the chart (SVG) here.
    #[arg(long, default_value = "overlay-bench.svg")]
    pub chart: PathBuf,
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
    let mut cfg = if args.quick { BenchConfig::quick() } else { BenchConfig::full() };
    cfg.modes = args
        .modes
        .iter()
        .map(|s| Mode::parse(s).with_context(|| format!("unknown mode {s:?} (expected native, kernel-vxlan or ebpf-tc)")))
        .collect::<anyhow::Result<_>>()?;
    cfg.tests = args
        .tests
        .iter()
        .map(|s| Test::parse(s).with_context(|| format!("unknown test {s:?} (expected tcp, udp or latency)")))
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
