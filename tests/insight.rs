//! Watching a node, in a simulated two-host cluster with real traffic: the agent's Prometheus
//! metrics (scraped over HTTP inside the host's namespace, checked by `promtool check metrics`,
//! counters moving with the traffic the test sends) and `overlay monitor` catching a drop the
//! test causes (a container spoofing its source address) with the right reason within a
//! second. Every namespace, agent, monitor and pin made here is removed when the test ends.
mod support;

use std::{
    collections::BTreeMap,
    io::{BufRead as _, BufReader, Write as _},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use overlay::lab::sim::{self, Container, Sim, wait_for};
use support::*;

const METRICS: &str = "127.0.0.1:19464";

struct Cluster {
    sim: Sim,
    /// Containers of the standard cluster on hosts 1 and 2 (web1, web4, test1 on host 1).
    containers: Vec<Container>,
}

/// Two hosts; node1's agent serves metrics on [`METRICS`] (inside host 1's namespace).
fn start(tag: &str) -> Cluster {
    require_root();
    let mut sim = Sim::new(tag, Path::new(OVERLAY_BIN)).expect("simulation");
    sim.build_underlay(2).expect("underlay");
    let containers: Vec<Container> = sim::standard_containers(&sim).into_iter().filter(|c| c.node <= 2).collect();
    for c in &containers {
        sim.add_ns(&c.name).expect("container namespace");
    }
    let file = sim.write_file("cluster.yaml", &sim::cluster_yaml(2, &containers, &[], "")).expect("cluster file");
    let h1 = sim.host_ns(1);
    sim.spawn_agent_extra("node1", &h1, &file, &["--metrics", METRICS]).expect("agent 1");
    let h2 = sim.host_ns(2);
    sim.spawn_agent("node2", &h2, &file).expect("agent 2");
    let wired = wait_for(Duration::from_secs(20), || containers.iter().all(|c| sim.has_address(&c.netns, c.ip)));
    assert!(wired, "containers not wired; logs:\n{}", sim.agent_logs(2));
    Cluster { sim, containers }
}

impl Cluster {
    fn ns(&self, name: &str) -> String {
        self.containers.iter().find(|c| c.name == name).expect("container").netns.clone()
    }
}

/// The body of `GET /metrics` from inside host namespace `ns`, or curl's complaint.
fn scrape(sim: &Sim, ns: &str, addr: &str) -> Result<String, String> {
    let o = sim.exec(ns, &["curl", "-sS", "--max-time", "5", "-f", &format!("http://{addr}/metrics")]).expect("curl");
    if o.status.success() { Ok(String::from_utf8_lossy(&o.stdout).to_string()) } else { Err(text(&o)) }
}

/// Samples of the exposition: `name{sorted labels}` -> value.
fn samples(body: &str) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    for line in body.lines().filter(|l| !l.starts_with('#') && !l.is_empty()) {
        let (key, value) = line.rsplit_once(' ').expect("sample line: name value");
        let key = match key.split_once('{') {
            Some((name, labels)) => {
                let mut l: Vec<&str> = labels.trim_end_matches('}').split(',').filter(|s| !s.is_empty()).collect();
                l.sort();
                format!("{name}{{{}}}", l.join(","))
            }
            None => key.to_string(),
        };
        out.insert(key, value.parse().unwrap_or_else(|_| panic!("value of {line}")));
    }
    out
}

fn get(s: &BTreeMap<String, f64>, key: &str) -> f64 {
    s.get(key).copied().unwrap_or(0.0)
}

/// `promtool check metrics` on the body: its verdict, with what it said.
fn promtool(body: &str) -> (bool, String) {
    let mut c = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (cargo xtask setup installs the prometheus package)");
    c.stdin.take().expect("stdin").write_all(body.as_bytes()).expect("feeding promtool");
    let o = c.wait_with_output().expect("promtool");
    (o.status.success(), text(&o))
}

/// Gives web1 an address the cluster does not give it.
fn add_spoofed_address(c: &Cluster) {
    let o = c.sim.exec(&c.ns("web1"), &["ip", "addr", "add", "10.0.1.99/32", "dev", "eth0"]).expect("ip addr add");
    assert!(o.status.success(), "{}", text(&o));
}

/// web1 pings web2 from that address: the datapath drops it (`drop-spoofed-ip`). Not waited
/// for (its reply never comes).
fn spoofed_ping(c: &Cluster) -> std::process::Child {
    Command::new("ip")
        .args(["netns", "exec", &c.ns("web1"), "ping", "-c", "1", "-W", "1", "-I", "10.0.1.99", "10.0.1.3"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("ping")
}

#[test]
fn metrics_are_valid_prometheus_and_move_with_traffic() {
    let mut c = start("met");
    let h1 = c.sim.host_ns(1);
    let mut before = String::new();
    let up = wait_for(Duration::from_secs(10), || match scrape(&c.sim, &h1, METRICS) {
        Ok(b) => {
            before = b;
            samples(&before).contains_key("overlay_endpoints{state=\"wired\"}")
        }
        Err(_) => false,
    });
    assert!(up, "no metrics at {METRICS} in host 1; agent log:\n{}", c.sim.agent_logs(1));
    let (valid, said) = promtool(&before);
    assert!(valid, "promtool check metrics rejected the exposition:\n{said}\n---\n{before}");
    let b = samples(&before);
    assert_eq!(get(&b, "overlay_endpoints{state=\"wired\"}"), 3.0, "web1, web4 and test1 are wired on node1:\n{before}");
    assert_eq!(get(&b, "overlay_endpoints{state=\"waiting\"}"), 0.0);
    assert!(get(&b, "overlay_reconcile_duration_seconds_count") >= 1.0, "at least one reconcile observed");
    assert!(get(&b, "overlay_map_entries{map=\"FDB\",owner=\"desired\"}") >= 5.0, "the FDB holds the cluster's endpoints:\n{before}");
    assert_eq!(get(&b, "overlay_map_max_entries{map=\"FDB\",owner=\"desired\"}"), overlay_common::MAX_FDB as f64);
    assert!(b.contains_key("overlay_map_entries{map=\"CONNECTIONS\",owner=\"datapath\"}"), "datapath-owned tables are reported too");

    // Traffic: 5 pings web1 (node1) -> web2 (node2), and one spoofed packet.
    assert!(c.sim.ping(&c.ns("web1"), "10.0.1.3".parse().expect("ip"), 5, None), "web1 reaches web2");
    add_spoofed_address(&c);
    spoofed_ping(&c).wait().expect("ping");
    let after = scrape(&c.sim, &h1, METRICS).expect("second scrape");
    let (valid, said) = promtool(&after);
    assert!(valid, "promtool check metrics rejected the exposition:\n{said}");
    let a = samples(&after);
    let moved = |key: &str| get(&a, key) - get(&b, key);
    assert!(moved("overlay_vni_tx_packets_total{vni=\"4097\"}") >= 5.0, "web1's echo requests counted as VNI 4097 tx:\n{after}");
    assert!(moved("overlay_vni_rx_packets_total{vni=\"4097\"}") >= 5.0, "web2's echo replies counted as VNI 4097 rx");
    assert!(moved("overlay_vni_tx_bytes_total{vni=\"4097\"}") >= 5.0 * 98.0, "bytes too");
    assert!(moved("overlay_forwards_total{hook=\"egress\",kind=\"fwd-encap\"}") >= 5.0, "encapsulations counted by kind and hook");
    assert!(moved("overlay_forwards_total{hook=\"ingress\",kind=\"fwd-decap\"}") >= 5.0, "decapsulations counted by kind and hook");
    assert!(moved("overlay_drops_total{hook=\"egress\",reason=\"drop-spoofed-ip\"}") >= 1.0, "the spoofed packet counted as a drop by reason:\n{after}");

    // Off unless asked: node2's agent serves nothing; and only on the address given.
    let h2 = c.sim.host_ns(2);
    assert!(scrape(&c.sim, &h2, METRICS).is_err(), "node2's agent was not asked for metrics");
    let vtep1 = sim::host_vtep(1);
    assert!(scrape(&c.sim, &h1, &format!("{vtep1}:19464")).is_err(), "metrics bound to {METRICS} only, not to the VTEP address");

    // A taken address fails the agent at once, with the address in the message.
    let file = c.sim.write_file("again.yaml", "nodes: []\nnetworks: []\nendpoints: []\n").expect("file");
    let o = Command::new("ip")
        .args(["netns", "exec", &h1, OVERLAY_BIN, "agent", "--cluster", &file.display().to_string(), "--node", "other", "--metrics", METRICS])
        .env_remove("OVERLAY_STORE")
        .env("RUST_BACKTRACE", "0")
        .output()
        .expect("second agent");
    assert!(!o.status.success(), "a second agent on the same metrics address must fail");
    assert!(text(&o).contains(&format!("--metrics {METRICS}: cannot listen there")), "clear error, got:\n{}", text(&o));
    let errors = c.sim.cleanup();
    assert!(errors.is_empty(), "cleanup: {errors:?}");
}

/// `overlay monitor` for node1, its stdout lines sent to the returned channel (and its stderr
/// lines to the second).
fn monitor(pin_root: &Path, args: &[&str]) -> (std::process::Child, mpsc::Receiver<String>, mpsc::Receiver<String>) {
    let mut child = Command::new(OVERLAY_BIN)
        .args(["monitor", "--node", "node1"])
        .args(args)
        .env("OVERLAY_PIN_ROOT", pin_root)
        .env_remove("OVERLAY_STORE")
        .env_remove("OVERLAY_CLUSTER")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("overlay monitor");
    let lines = |r: Box<dyn std::io::Read + Send>| {
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(r).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        rx
    };
    let out = lines(Box::new(child.stdout.take().expect("stdout")));
    let err = lines(Box::new(child.stderr.take().expect("stderr")));
    (child, out, err)
}

/// Lines arriving on `rx` within `d`.
fn collect(rx: &mpsc::Receiver<String>, d: Duration) -> Vec<String> {
    let end = Instant::now() + d;
    let mut v = Vec::new();
    while let Some(left) = end.checked_duration_since(Instant::now()) {
        match rx.recv_timeout(left) {
            Ok(l) => v.push(l),
            Err(_) => break,
        }
    }
    v
}

/// Ends a monitor by its PID (SIGTERM: it withdraws its request) and waits for it.
fn end(mut child: std::process::Child) {
    // SAFETY: plain syscall on our own child's PID.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(5) {
        if child.try_wait().ok().flatten().is_some() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
}

#[test]
fn monitor_shows_a_spoofed_drop_with_its_reason_within_a_second() {
    let mut c = start("mon");
    let pin_root: PathBuf = c.sim.pin_dir("node1").parent().expect("pin root").to_path_buf();
    let (child, lines, _) = monitor(&pin_root, &["--type", "drop", "--json", "--network", "4097"]);
    add_spoofed_address(&c);
    // The monitor asks the datapath for events when it starts; let it.
    std::thread::sleep(Duration::from_millis(500));
    let (sent, sent_wall) = (Instant::now(), std::time::SystemTime::now());
    let mut ping = spoofed_ping(&c);
    let line = lines.recv_timeout(Duration::from_secs(1));
    let took = sent.elapsed();
    let _ = ping.wait();
    end(child);
    let line = line.unwrap_or_else(|_| panic!("no drop event from the monitor within a second of the spoofed packet"));
    let ev: serde_json::Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("JSON line ({e}): {line}"));
    assert_eq!(ev["verdict"], "drop", "{line}");
    assert_eq!(ev["reason"], "drop-spoofed-ip", "{line}");
    assert_eq!(ev["hook"], "egress", "{line}");
    assert_eq!(ev["vni"], 4097, "{line}");
    assert_eq!(ev["src_ip"], "10.0.1.99", "the spoofed source is shown: {line}");
    assert!(took < Duration::from_secs(1), "the event came {took:?} after the packet");
    // The event's own time is the program's decision: after the packet was sent, within the wait.
    let shown = ev["time"].as_str().expect("time").to_string();
    let sent_text = overlay::timefmt::rfc3339(sent_wall.duration_since(std::time::UNIX_EPOCH).expect("clock").as_secs());
    assert!(shown.ends_with('Z') && shown.contains('.'), "RFC 3339 with a fraction: {shown}");
    assert!(shown[..19] >= sent_text[..19], "event time {shown} not before the packet was sent ({sent_text})");

    // A network by name needs the cluster state to look it up.
    let rate = Command::new(OVERLAY_BIN)
        .args(["monitor", "--node", "node1", "--count", "1", "--network", "no-such-net"])
        .env("OVERLAY_PIN_ROOT", &pin_root)
        .env_remove("OVERLAY_STORE")
        .env_remove("OVERLAY_CLUSTER")
        .output()
        .expect("monitor");
    assert!(!rate.status.success());
    assert!(text(&rate).contains("--network no-such-net: give its VNI, or pass --store or --cluster"), "{}", text(&rate));
    // Without --node: the only node pinned, or a clear refusal when there are several.
    let o = Command::new(OVERLAY_BIN)
        .args(["monitor", "--count", "1"])
        .env("OVERLAY_PIN_ROOT", &pin_root)
        .env_remove("OVERLAY_NODE")
        .env("RUST_BACKTRACE", "0")
        .output()
        .expect("monitor");
    assert!(!o.status.success());
    assert!(text(&o).contains("several nodes are pinned on this machine (node1, node2): pass --node"), "{}", text(&o));

    // --type all shows sampled forwards too (every one with --sample 1).
    let (child, lines, _) = monitor(&pin_root, &["--type", "all", "--sample", "1", "--count", "3"]);
    std::thread::sleep(Duration::from_millis(500));
    assert!(c.sim.ping(&c.ns("web1"), "10.0.1.3".parse().expect("ip"), 3, None), "web1 reaches web2");
    let got: Vec<String> = (0..3).filter_map(|_| lines.recv_timeout(Duration::from_secs(3)).ok()).collect();
    end(child);
    assert_eq!(got.len(), 3, "three events: {got:?}");
    assert!(got.iter().any(|l| l.contains(" forward ") && l.contains("fwd-encap") && l.contains("vni 4097")), "an encapsulation shown as a forward: {got:?}");

    // A flood of drops (300 spoofed packets in ~0.6 s) against a monitor limited to 3 events
    // per CPU per second: every drop is still counted by the datapath, the monitor shows at
    // most what the limit lets through and says how many it held back.
    let counted = || {
        overlay::dataplane::Dataplane::open_pinned(&c.sim.pin_dir("node1")).expect("pins").counter(overlay_common::Reason::SpoofedIp, overlay_common::Direction::Egress).expect("counter").packets
    };
    let before = counted();
    let (child, lines, errs) = monitor(&pin_root, &["--rate", "3"]);
    std::thread::sleep(Duration::from_millis(500));
    let flood = Command::new("ip")
        .args(["netns", "exec", &c.ns("web1"), "ping", "-q", "-c", "300", "-i", "0.002", "-W", "1", "-I", "10.0.1.99", "10.0.1.3"])
        .output()
        .expect("flood");
    let shown = collect(&lines, Duration::from_millis(1500));
    let held = collect(&errs, Duration::from_millis(1500));
    end(child);
    let drops = counted() - before;
    assert!(drops >= 250, "the datapath counted {drops} spoofed drops of 300 ({})", text(&flood));
    let cpus = std::thread::available_parallelism().map_or(2, |n| n.get()) as usize;
    assert!(!shown.is_empty() && shown.len() <= 3 * cpus * 3, "{} events shown for {drops} drops with --rate 3 on {cpus} CPUs: {shown:?}", shown.len());
    assert!(held.iter().any(|l| l.contains("events held back by the rate limit")), "the monitor says what it held back: {held:?}");
    let errors = c.sim.cleanup();
    assert!(errors.is_empty(), "cleanup: {errors:?}");
}
