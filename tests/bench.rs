//! `overlay bench` itself, with bounds small enough for CI: it must build all three modes, run
//! every test, produce well-formed JSON and a chart, and leave nothing behind. The figures are
//! the benchmark's business, not this test's: only their presence and sanity are checked.
mod support;

use std::process::Command;

use support::*;

fn netns_list() -> String {
    let out = Command::new("ip").args(["netns", "list"]).output().expect("ip netns list");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn quick_bench_reports_all_modes_as_json_and_svg_and_cleans_up() {
    require_root();
    let dir = std::env::temp_dir().join(format!("overlay-bench-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    struct RmDir(std::path::PathBuf);
    impl Drop for RmDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
    let _guard = RmDir(dir.clone());
    let json = dir.join("bench.json");
    let svg = dir.join("bench.svg");
    let child = Command::new(OVERLAY_BIN)
        .args(["bench", "--quick", "--rounds", "1", "--seconds", "0.5", "--json"])
        .arg(&json)
        .arg("--chart")
        .arg(&svg)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("starting overlay bench");
    let pid = child.id();
    let out = child.wait_with_output().expect("waiting for overlay bench");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "overlay bench failed:\n{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    for needle in ["median (min-max)", "native", "kernel-vxlan", "ebpf-tc", "Targets", "overlay_pass", "95% CI", "In place during the UDP test"] {
        assert!(stdout.contains(needle), "the table lacks {needle:?}:\n{stdout}");
    }

    let r: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&json).expect("JSON written")).expect("well-formed JSON");
    // Every metric, old and new (issue 14: TCP_RR, TCP_CRR, 8 streams, CPU per Gbit/s, p50/p90).
    let metrics = [
        "tcp_gbps_1",
        "tcp_gbps_8",
        "tcp_rr_tps_1",
        "tcp_rr_tps_8",
        "tcp_crr_tps_1",
        "tcp_crr_tps_8",
        "udp_pps",
        "cpu_ns_per_packet",
        "cpu_s_per_gbit",
        "latency_mean_us",
        "latency_p50_us",
        "latency_p90_us",
        "latency_p99_us",
    ];
    let modes: Vec<String> = r["results"].as_object().expect("results by mode").keys().cloned().collect();
    for must in ["native", "kernel-vxlan", "ebpf-tc"] {
        assert!(modes.iter().any(|m| m == must), "results for {must} missing: {modes:?}");
    }
    for mode in modes.iter().map(String::as_str) {
        let m = &r["results"][mode];
        assert!(m.is_object(), "results for {mode} missing");
        assert_eq!(m["errors"].as_array().map(Vec::len), Some(0), "{mode} had failed measurements: {}", m["errors"]);
        for k in metrics {
            let s = &m["summary"][k];
            assert_eq!(s["n"], 1, "{mode} {k}: one sample per round");
            let v = s["median"].as_f64().unwrap_or_else(|| panic!("{mode} {k}: median is not a number: {s}"));
            assert!(v.is_finite() && v > 0.0, "{mode} {k}: median {v}");
            assert!(s["min"].as_f64() <= Some(v) && s["max"].as_f64() >= Some(v), "{mode} {k}: min <= median <= max");
        }
        assert_eq!(m["latency_lost"].as_array().map(Vec::len), Some(1), "{mode}: lost ping-pongs recorded per round");
        // Sanity of the figures' units: latency in microseconds, not seconds or nanoseconds.
        let rtt = m["summary"]["latency_mean_us"]["median"].as_f64().unwrap_or(0.0);
        assert!((1.0..100_000.0).contains(&rtt), "{mode}: mean round trip {rtt} us");
        let p = |k: &str| m["summary"][k]["median"].as_f64().unwrap_or(f64::NAN);
        assert!(p("latency_p50_us") <= p("latency_p90_us") && p("latency_p90_us") <= p("latency_p99_us"), "{mode}: p50 <= p90 <= p99");
        // CPU per Gbit/s: CPU-seconds per Gbit, at most the 2 CPUs' whole time over the run.
        let cpu = p("cpu_s_per_gbit");
        assert!(cpu < 100.0, "{mode}: {cpu} CPU-s per Gbit");
        let reached = m["cpu_test_gbps"].as_array().and_then(|v| v.first()).and_then(|v| v.as_f64()).unwrap_or(0.0);
        assert!(reached > 0.0, "{mode}: the fixed-rate TCP test carried traffic");
        if mode.starts_with("ebpf") {
            let progs = m["in_place_ns_per_run"].as_object().expect("in-place costs of an eBPF mode");
            assert!(!progs.is_empty(), "{mode}: in-place cost of its programs");
            if mode == "ebpf-tc" {
                assert!(progs.contains_key("overlay_egress") && progs.contains_key("overlay_ingress"), "{mode}: in-place cost of both programs: {progs:?}");
            }
            for (prog, v) in progs {
                let ns = v[0].as_f64().unwrap_or(f64::NAN);
                assert!(ns.is_finite() && ns > 0.0, "{mode} {prog}: {ns} ns per run");
            }
        }
    }
    let ratios = r["ratios"].as_array().expect("ratios");
    for against in ["kernel-vxlan", "native"] {
        for k in metrics {
            let found = ratios.iter().any(|x| {
                x["mode"] == "ebpf-tc" && x["against"] == against && x["metric"] == k && x["summary"]["median"].as_f64().is_some_and(|v| v > 0.0) && x["ci95"].is_object()
            });
            assert!(found, "ratio ebpf-tc/{against} for {k} (with its interval) missing");
        }
    }
    let targets = r["targets"].as_array().expect("targets");
    assert_eq!(targets.len(), 15, "13 ratio targets for the eBPF mode and 2 program-cost targets");
    assert!(targets.iter().all(|t| t["value"].as_f64().is_some() && t["met"].is_boolean()));
    // One round gives no confidence interval: no ratio target can be met.
    assert!(targets.iter().filter(|t| t["what"].as_str().is_some_and(|w| w.starts_with("ebpf"))).all(|t| t["met"] == false), "met on one round");
    let pc = &r["prog_cost"];
    let floor = pc["floor"]["ns_per_packet"].as_f64().expect("floor");
    for p in ["encap", "decap"] {
        let v = pc[p]["ns_per_packet"].as_f64().expect("program cost");
        assert!(v > floor, "{p} ({v} ns) must cost more than the pass-through floor ({floor} ns)");
    }

    let chart = std::fs::read_to_string(&svg).expect("chart written");
    assert!(chart.starts_with("<svg") && chart.trim_end().ends_with("</svg>"), "an SVG document");
    for needle in ["native", "kernel-vxlan", "ebpf-tc", "encap"] {
        assert!(chart.contains(needle), "the chart names {needle}");
    }

    // Nothing left behind: namespaces and pins of that run.
    let left: Vec<String> = netns_list().lines().filter(|l| l.contains(&format!("{pid}x"))).map(str::to_string).collect();
    assert!(left.is_empty(), "namespaces left behind: {left:?}");
    let pins = overlay::dataplane::host_bpffs().expect("bpffs").join("overlay");
    let stale: Vec<String> = std::fs::read_dir(&pins)
        .map(|rd| rd.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).filter(|n| n.contains(&pid.to_string())).collect())
        .unwrap_or_default();
    assert!(stale.is_empty(), "pins left behind: {stale:?}");
}

#[test]
fn control_plane_bench_reports_every_figure_and_cleans_up() {
    require_root();
    let json = std::env::temp_dir().join(format!("overlay-cp-bench-{}.json", std::process::id()));
    let before = netns_list();
    let out = Command::new(OVERLAY_BIN)
        .args(["bench", "--control-plane", "--samples", "3", "--nodes", "10", "--endpoints", "600", "--changes", "4", "--json"])
        .arg(&json)
        .env("RUST_BACKTRACE", "0")
        .output()
        .expect("running overlay bench --control-plane");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "bench failed:\n{text}");
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).expect("JSON written")).expect("valid JSON");
    let _ = std::fs::remove_file(&json);
    for k in ["convergence", "convergence_from_publish", "convergence_remote_from_publish"] {
        assert_eq!(v[k]["n"], 3, "{k}: {v}");
        let (p50, p99) = (v[k]["p50_ms"].as_f64().expect("p50"), v[k]["p99_ms"].as_f64().expect("p99"));
        assert!(p50 >= 0.0 && p50 <= p99 && p99 < 10_000.0, "{k}: {v}");
    }
    // 600 endpoints over 10 nodes: the measured node's 60 have no namespace and are not remote;
    // each of the 2 networks adds its gateway (an FDB entry and an ARP answer).
    assert_eq!(v["fdb_entries"], 540 + 2, "{v}");
    assert_eq!(v["neigh_entries"], 600 + 2, "{v}");
    assert_eq!(v["one_change"]["n"], 4, "{v}");
    assert!(v["initial_sync_ms"].as_f64().is_some_and(|t| t > 0.0), "{v}");
    assert!(v["rss_mib"].as_f64().is_some_and(|m| m > 1.0), "{v}");
    assert!(v["map_memory_mib"].as_f64().is_some_and(|m| m > 0.0), "{v}");
    // An endpoint removed: its FDB and neighbour entries and its two names (NAME, NAME.NETWORK).
    assert!(v["last_change_log"].as_str().is_some_and(|l| l.contains("diff=+0 ~0 -4")), "one change is a diff: {v}");
    assert!(text.contains("[target < 2000 ms:") && text.contains("[target p99 < 20 ms:") && text.contains("[target < 64 MiB:"), "targets printed:\n{text}");
    assert_eq!(netns_list(), before, "no namespace left behind");
}
