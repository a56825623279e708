//! The benchmark's outputs: a table for the terminal, JSON, and an SVG chart.
use std::{fmt::Write as _, path::Path};

use anyhow::Context as _;
use plotters::{
    coord::ranged1d::SegmentValue,
    prelude::*,
    style::text_anchor::{HPos, Pos, VPos},
};

use super::{Metric, Mode, Report, progcost};

fn cell(s: Option<&super::Summary>, m: Metric) -> String {
    match s {
        Some(s) if s.n > 0 => {
            let (a, b, c) = (m.display(s.median), m.display(s.min), m.display(s.max));
            let p = if a >= 100.0 { 0 } else if a >= 10.0 { 1 } else { 2 };
            format!("{a:.p$} ({b:.p$}-{c:.p$})")
        }
        _ => "failed".to_string(),
    }
}

/// The terminal table: medians (min-max) per mode, then ratios, program costs and targets.
pub fn table(r: &Report) -> String {
    let modes: Vec<Mode> = r.results.keys().copied().collect();
    let ebpf: Vec<Mode> = modes.iter().copied().filter(|m| m.is_ebpf()).collect();
    let mut out = String::new();
    let _ = write!(out, "{:<26}", "median (min-max)");
    for m in &modes {
        let _ = write!(out, "{:>24}", m.name());
    }
    for e in &ebpf {
        for b in [Mode::KernelVxlan, Mode::Native].iter().filter(|b| modes.contains(b)) {
            let _ = write!(out, "{:>26}", format!("{}/{} [95% CI]", e.name(), short(*b)));
        }
    }
    out.push('\n');
    for metric in Metric::ALL {
        let _ = write!(out, "{:<26}", metric.title());
        for m in &modes {
            let _ = write!(out, "{:>24}", cell(r.results[m].summary.get(&metric), metric));
        }
        for e in &ebpf {
            for b in [Mode::KernelVxlan, Mode::Native].iter().filter(|b| modes.contains(b)) {
                let v = r
                    .ratios
                    .iter()
                    .find(|x| x.mode == *e && x.against == *b && x.metric == metric)
                    .map(|x| format!("{:.2} [{:.2}, {:.2}]", x.summary.median, x.ci95.low, x.ci95.high))
                    .unwrap_or_else(|| "-".into());
                let _ = write!(out, "{v:>26}");
            }
        }
        out.push('\n');
    }
    let retrans: Vec<String> = modes
        .iter()
        .map(|m| format!("{} {:?}", m.name(), r.results[m].tcp_retransmits))
        .collect();
    let _ = writeln!(out, "TCP 1-stream retransmissions per round: {}", retrans.join(", "));
    let lost: Vec<String> = modes.iter().map(|m| format!("{} {:?}", m.name(), r.results[m].latency_lost)).collect();
    let _ = writeln!(out, "ping-pongs without an answer per round: {}", lost.join(", "));
    out.push('\n');
    out.push_str(&prog_cost_table(&r.prog_cost));
    for (m, res) in r.results.iter().filter(|(_, x)| !x.in_place_ns_per_run.is_empty()) {
        let _ = writeln!(out, "In place during the UDP test ({}, kernel run-time statistics), ns per run, median (min-max) over rounds:", m.name());
        for (prog, v) in &res.in_place_ns_per_run {
            let s = super::Summary::of(v);
            let _ = writeln!(out, "  {prog:<16} {:>7.1} ns ({:.1}-{:.1})", s.median, s.min, s.max);
        }
    }
    let cpu_gbps: Vec<String> = modes.iter().map(|m| format!("{} {:.2?}", m.name(), r.results[m].cpu_test_gbps)).collect();
    let _ = writeln!(out, "Gbit/s reached at the offered {} Mbit/s of the CPU test: {}", r.config.cpu_rate_mbps, cpu_gbps.join(", "));
    let _ = writeln!(out, "\nTargets (median per-round ratio [95% CI]; met only where the interval clears the threshold):");
    for t in &r.targets {
        let ci = if t.ci95_low.is_finite() { format!("[{:.2}, {:.2}]", t.ci95_low, t.ci95_high) } else { String::new() };
        let mark = if !t.measured { " -- " } else if t.met { " ok " } else { "MISS" };
        let _ = writeln!(out, "  [{mark}] {:<58} {:>6.2} {:<14} {} {}", t.what, t.value, ci, t.op, t.threshold);
    }
    for (m, res) in &r.results {
        for e in &res.errors {
            let _ = writeln!(out, "error: {}: {e}", m.name());
        }
    }
    out
}

fn short(m: Mode) -> &'static str {
    match m {
        Mode::KernelVxlan => "kvxlan",
        other => other.name(),
    }
}

pub fn write_json(r: &Report, path: &Path) -> anyhow::Result<()> {
    let text = serde_json::to_string_pretty(r)?;
    std::fs::write(path, text + "\n").with_context(|| format!("writing {}", path.display()))
}

fn color(m: Mode) -> RGBColor {
    match m {
        Mode::Native => RGBColor(140, 140, 140),
        Mode::KernelVxlan => RGBColor(214, 120, 40),
        Mode::EbpfTc => RGBColor(40, 110, 190),
        Mode::EbpfXdp => RGBColor(60, 160, 90),
    }
}

/// Bars (median) with min-max whiskers, one panel per metric, plus the program costs.
pub fn write_chart(r: &Report, path: &Path) -> anyhow::Result<()> {
    let root = SVGBackend::new(path, (1600, 1300)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| anyhow::anyhow!("{e}"))?;
    let (title, body) = root.split_vertically(50);
    title
        .titled(
            &format!(
                "overlay bench: medians of {} rounds, min-max whiskers; ratios with 95% CI whiskers ({} CPUs, kernel {})",
                r.config.rounds, r.machine.cpus, r.machine.kernel
            ),
            ("sans-serif", 22),
        )
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    // One panel per metric, the program costs, and one ratio panel per baseline.
    let baselines: Vec<Mode> = [Mode::KernelVxlan, Mode::Native].into_iter().filter(|b| r.results.contains_key(b)).collect();
    let n_panels = Metric::ALL.len() + 1 + baselines.len();
    let cols = 4;
    let panels = body.split_evenly((n_panels.div_ceil(cols), cols));
    let modes: Vec<Mode> = r.results.keys().copied().collect();
    for (panel, metric) in panels.iter().zip(Metric::ALL) {
        let bars: Vec<(String, RGBColor, super::Summary)> = modes
            .iter()
            .map(|m| (m.name().to_string(), color(*m), r.results[m].summary.get(&metric).copied().unwrap_or_default()))
            .map(|(n, c, s)| (n, c, super::Summary { median: metric.display(s.median), min: metric.display(s.min), max: metric.display(s.max), n: s.n }))
            .collect();
        let better = if metric.higher_is_better() { "higher is better" } else { "lower is better" };
        bar_panel(panel, &format!("{} - {better}", metric.title()), &bars)?;
    }
    let pc = &r.prog_cost;
    let gray = RGBColor(140, 140, 140);
    let blue = color(Mode::EbpfTc);
    let s = |c: &super::progcost::ProgCost| super::Summary { median: c.ns_per_packet, min: c.min_ns, max: c.max_ns, n: 1 };
    let bars = vec![
        ("pass (floor)".to_string(), gray, s(&pc.floor)),
        ("encap".to_string(), blue, s(&pc.encap)),
        ("decap".to_string(), blue, s(&pc.decap)),
    ];
    let next = Metric::ALL.len();
    bar_panel(&panels[next], "test run, ns per packet - lower is better", &bars)?;
    // Ratios of the eBPF mode(s) against each baseline, 1.0 = same, with 95% CI whiskers.
    let several = r.results.keys().filter(|m| m.is_ebpf()).count() > 1;
    for (i, against) in baselines.iter().enumerate() {
        let ratio_bars: Vec<(String, RGBColor, super::Summary)> = r
            .ratios
            .iter()
            .filter(|x| x.against == *against)
            .map(|x| {
                let label = if several { format!("{} {}", x.metric.short(), x.mode.name()) } else { x.metric.short().to_string() };
                let ci = super::Summary { median: x.summary.median, min: x.ci95.low.max(0.0), max: x.ci95.high, n: x.summary.n };
                (label, color(x.mode), ci)
            })
            .collect();
        bar_panel(&panels[next + 1 + i], &format!("ebpf / {}, median, 95% CI (1 = same)", against.name()), &ratio_bars)?;
    }
    root.present().map_err(|e| anyhow::anyhow!("writing {}: {e}", path.display()))?;
    Ok(())
}

fn bar_panel<DB: DrawingBackend>(
    area: &DrawingArea<DB, plotters::coord::Shift>,
    caption: &str,
    bars: &[(String, RGBColor, super::Summary)],
) -> anyhow::Result<()>
where
    DB::ErrorType: 'static,
{
    let err = |e: DrawingAreaErrorKind<DB::ErrorType>| anyhow::anyhow!("drawing the chart: {e:?}");
    // Nothing measured (a test left out, or no mode to compare with): an empty panel on a unit
    // scale. A degenerate range would make the mesh generate labels without end.
    let highest = bars.iter().map(|(_, _, s)| if s.max.is_finite() { s.max } else { 0.0 }).fold(0.0, f64::max);
    let top = if highest > 0.0 { highest * 1.15 } else { 1.0 };
    let caption = if highest > 0.0 { caption.to_string() } else { format!("{caption}: not measured") };
    let names: Vec<String> = bars.iter().map(|(n, _, _)| n.clone()).collect();
    let mut chart = ChartBuilder::on(area)
        .caption(&caption, ("sans-serif", 15))
        .margin(12)
        .x_label_area_size(28)
        .y_label_area_size(48)
        // A segmented range a..b has b - a + 1 slots: one per bar.
        .build_cartesian_2d((0..bars.len().max(2) - 1).into_segmented(), 0.0..top)
        .map_err(err)?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(bars.len().max(2))
        .x_label_formatter(&|v| match v {
            SegmentValue::CenterOf(i) | SegmentValue::Exact(i) => names.get(*i).cloned().unwrap_or_default(),
            SegmentValue::Last => String::new(),
        })
        .y_label_formatter(&|v| if top >= 10.0 { format!("{v:.0}") } else { format!("{v:.2}") })
        .draw()
        .map_err(err)?;
    chart
        .draw_series(bars.iter().enumerate().filter(|(_, b)| b.2.median.is_finite()).map(|(i, (_, c, s))| {
            let mut r = Rectangle::new([(SegmentValue::Exact(i), 0.0), (SegmentValue::Exact(i + 1), s.median)], c.filled());
            r.set_margin(0, 0, 10, 10);
            r
        }))
        .map_err(err)?;
    chart
        .draw_series(bars.iter().enumerate().filter(|(_, b)| b.2.min.is_finite()).map(|(i, (_, _, s))| {
            ErrorBar::new_vertical(SegmentValue::CenterOf(i), s.min, s.median, s.max, BLACK.stroke_width(2), 12)
        }))
        .map_err(err)?;
    chart
        .draw_series(bars.iter().enumerate().filter(|(_, b)| b.2.median.is_finite()).map(|(i, (_, _, s))| {
            let p = if s.median >= 100.0 { 0 } else if s.median >= 10.0 { 1 } else { 2 };
            // The value above the whisker, centred on the bar.
            let above = if s.max.is_finite() { s.max } else { s.median };
            let style = ("sans-serif", 13).into_font().color(&BLACK).pos(Pos::new(HPos::Center, VPos::Bottom));
            EmptyElement::at((SegmentValue::CenterOf(i), above)) + Text::new(format!("{:.p$}", s.median), (0, -8), style)
        }))
        .map_err(err)?;
    Ok(())
}

/// The program costs under `BPF_PROG_TEST_RUN` (also printed alone by `overlay bench --prog-cost`).
pub fn prog_cost_table(pc: &progcost::ProgCosts) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "BPF_PROG_TEST_RUN, ns per packet (median of 10 batches, {} packets per program):", pc.packets_per_program);
    for c in [&pc.floor, &pc.encap, &pc.decap, &pc.monitor_idle] {
        let _ = writeln!(
            out,
            "  {:<20} {:>7.1} ns ({:.1}-{:.1})  {:>5.2}x floor   {}",
            c.program, c.ns_per_packet, c.min_ns, c.max_ns, c.vs_floor, c.path
        );
    }
    let _ = writeln!(out, "  (the floor alone with repeat=1000000 in one call: {:.0} ns)", pc.floor_repeat_ns);
    let _ = writeln!(
        out,
        "  the drop monitor's hook with nobody listening: {:+.1} ns per packet over the floor",
        pc.monitor_idle.ns_per_packet - pc.floor.ns_per_packet
    );
    out
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::lab::bench::{BenchConfig, Machine, ModeResult, Summary, progcost};

    fn cost(ns: f64) -> progcost::ProgCost {
        progcost::ProgCost { program: "p", path: "", ns_per_packet: ns, min_ns: ns, max_ns: ns, vs_floor: 1.0 }
    }

    /// A run with two modes and one test: panels without data must not stall the chart.
    #[test]
    fn chart_and_table_of_a_partial_run() {
        let mut results = BTreeMap::new();
        for (mode, v) in [(Mode::Native, 17.0), (Mode::EbpfTc, 15.0)] {
            let mut r = ModeResult::default();
            r.samples.insert(Metric::LatencyMeanUs, vec![v]);
            r.summary.insert(Metric::LatencyMeanUs, Summary::of(&[v]));
            results.insert(mode, r);
        }
        let ratios = crate::lab::bench::ratios(&results);
        let prog_cost = progcost::ProgCosts { packets_per_program: 1, floor: cost(100.0), encap: cost(300.0), decap: cost(250.0), monitor_idle: cost(101.0), floor_repeat_ns: 30.0 };
        let targets = crate::lab::bench::targets(&results, &ratios, &prog_cost);
        let report = Report {
            version: 1,
            machine: Machine::here(),
            config: BenchConfig::quick(),
            results,
            ratios,
            prog_cost,
            targets,
            duration_seconds: 1.0,
        };
        let path = std::env::temp_dir().join(format!("overlay-chart-test-{}.svg", std::process::id()));
        write_chart(&report, &path).expect("chart");
        let svg = std::fs::read_to_string(&path).expect("written");
        let _ = std::fs::remove_file(&path);
        assert!(svg.contains("not measured"), "empty panels say so");
        assert!(svg.contains("ebpf-tc") && svg.contains("17.0"), "the measured panel has its bars and values");
        let t = table(&report);
        assert!(t.contains("failed"), "metrics without samples are marked in the table");
        assert!(t.contains("[ -- ]"), "targets without data are not reported as met or missed");
    }
}
