//! The control plane's benchmark (`overlay bench --control-plane`): how fast a change in etcd
//! reaches the datapaths, and what one agent costs at 10,000 endpoints.
//!
//! * Convergence: a simulated 3-host cluster with etcd on its underlay switch and one store
//!   agent per host. Each sample runs `overlay endpoint add` on a host (it returns once its own
//!   node has wired the endpoint) and then times until the endpoint's FDB entry is in every
//!   node's pinned map (polled directly, every 100 µs).
//! * Scale: 100 nodes and 10,000 endpoints written straight into etcd, then one agent (node
//!   `s000`, one of the 100; its own endpoints have no namespace, so nothing is wired locally) is
//!   started and timed until it has programmed all of them; then single-endpoint changes are
//!   timed from the etcd write returning to the entry in (or out of) its map.
use std::{
    fs,
    net::Ipv4Addr,
    path::Path,
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use etcd_client::{Client, PutOptions, Txn, TxnOp};
use serde::Serialize;

use super::stats::percentile;
use crate::{
    model::Mac,
    dataplane::Dataplane,
    lab::sim::{Sim, host_vtep, wait_for},
    source::store::{
        EndpointRecord, NetworkRecord, NodeRecord,
        records::{AliveRecord, endpoint_key, ipam_key, network_key, node_key, alive_key, now_secs},
    },
};

#[derive(Clone, Debug)]
pub struct ControlConfig {
    /// Convergence samples of each kind.
    pub samples: usize,
    pub nodes: usize,
    pub endpoints: usize,
    /// Single changes timed at scale.
    pub changes: usize,
    /// What the scale figures are held to.
    pub targets: Targets,
}

/// The scale figures' targets.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct Targets {
    pub initial_sync_ms: f64,
    pub one_change_p99_ms: f64,
    pub rss_mib: f64,
}

impl Targets {
    /// 10,000 endpoints over 100 nodes (the default run).
    pub const DEFAULT: Targets = Targets { initial_sync_ms: 2000.0, one_change_p99_ms: 20.0, rss_mib: 64.0 };
    /// `--scale N` (issue 14: 100,000 endpoints over 1,000 nodes).
    pub const SCALE: Targets = Targets { initial_sync_ms: 5000.0, one_change_p99_ms: 20.0, rss_mib: 256.0 };
}

impl Default for Targets {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// Whether each scale figure met its target.
#[derive(Debug, Default, Serialize)]
pub struct Met {
    pub initial_sync: bool,
    pub one_change_p99: bool,
    pub rss: bool,
}

/// The most endpoints the scale test writes: each has an FDB and a neighbour entry and two
/// names (`NAME`, `NAME.NETWORK`), and the names table holds [`overlay_common::MAX_NAMES`].
pub const MAX_SCALE_ENDPOINTS: usize = 120_000;

#[derive(Debug, Default, Serialize)]
pub struct Percentiles {
    pub n: usize,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

impl Percentiles {
    fn of(mut v: Vec<f64>) -> Self {
        v.sort_by(f64::total_cmp);
        if v.is_empty() {
            return Self::default();
        }
        Percentiles { n: v.len(), p50_ms: percentile(&v, 50.0), p99_ms: percentile(&v, 99.0), max_ms: *v.last().unwrap_or(&0.0) }
    }
}

#[derive(Debug, Default, Serialize)]
pub struct ControlReport {
    /// `endpoint add` (which returns once its own node has wired it) returned -> every node.
    pub convergence: Percentiles,
    /// `endpoint add --no-wait` (returns once published in etcd) returned -> every node,
    /// including the hosting node's wiring (veth, namespace, program attach).
    pub convergence_from_publish: Percentiles,
    /// `endpoint add --no-wait` returned -> the two other nodes (no wiring: the store path only).
    pub convergence_remote_from_publish: Percentiles,
    pub scale_nodes: usize,
    pub scale_endpoints: usize,
    /// Agent start to every entry programmed (includes loading the programs).
    pub initial_sync_ms: f64,
    /// The agent's own figures for the initial apply (plan + map writes), from its log.
    pub initial_apply_ms: f64,
    pub rss_mib: f64,
    pub peak_rss_mib: f64,
    pub map_memory_mib: f64,
    pub fdb_entries: usize,
    pub neigh_entries: usize,
    /// etcd write returning to the map holding the change (add) or not (remove).
    pub one_change: Percentiles,
    /// The agent's logged diff for the last change (proof it is a diff, not a resync).
    pub last_change_log: String,
    pub targets: Targets,
    pub met: Met,
}

/// Runs `f` with an etcd client where etcd listens (see [`Sim::with_etcd`]).
fn with_etcd<T: Send + 'static, F>(sim: &Sim, f: impl FnOnce(Client) -> F + Send + 'static) -> anyhow::Result<T>
where
    F: std::future::Future<Output = anyhow::Result<T>> + 'static,
{
    Ok(sim.with_etcd(move |c| async move { f(c).await.map_err(std::io::Error::other) })?)
}

fn vm_kib(pid: u32, field: &str) -> f64 {
    fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with(field)).and_then(|l| l.split_whitespace().nth(1)).and_then(|v| v.parse().ok()))
        .unwrap_or(0.0)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Convergence with 3 agents: (after `endpoint add`, after `endpoint add --no-wait`, the other
/// two nodes after `endpoint add --no-wait`), samples taken in turn.
pub fn convergence(cfg: &ControlConfig, bin: &Path, progress: &mut impl FnMut(&str)) -> anyhow::Result<(Percentiles, Percentiles, Percentiles)> {
    let mut sim = Sim::new("cc", bin)?;
    sim.build_underlay(3)?;
    sim.start_etcd()?;
    let o = sim.overlay(&sim.host_ns(1), &["network", "create", "bench", "--subnet", "10.60.0.0/16"])?;
    if !o.status.success() {
        bail!("network create: {}", String::from_utf8_lossy(&o.stderr));
    }
    for n in 1..=3 {
        let h = sim.host_ns(n);
        sim.spawn_store_agent(&format!("node{n}"), &h, host_vtep(n), 10)?;
    }
    let up = wait_for(Duration::from_secs(20), || {
        sim.overlay(&sim.host_ns(1), &["node", "ls"]).is_ok_and(|o| String::from_utf8_lossy(&o.stdout).matches(" up ").count() == 3)
    });
    if !up {
        bail!("agents did not register within 20 s");
    }
    wait_for(Duration::from_secs(20), || (1..=3).all(|n| Dataplane::open_pinned(&sim.pin_dir(&format!("node{n}"))).is_ok()));
    let maps: Vec<Dataplane> = (1..=3)
        .map(|n| Dataplane::open_pinned(&sim.pin_dir(&format!("node{n}"))))
        .collect::<Result<_, _>>()
        .context("opening the agents' pinned maps")?;
    let (mut waited, mut published, mut remote) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..cfg.samples * 2 {
        let host = 1 + i % 3;
        let ns = sim.add_ns(&format!("e{i}"))?;
        let mut args = vec!["endpoint", "add", "--network", "bench", "--netns", &ns];
        if i % 2 == 1 {
            args.push("--no-wait");
        }
        let out = sim.overlay(&sim.host_ns(host), &args)?;
        let t0 = Instant::now();
        if !out.status.success() {
            bail!("endpoint add: {}", String::from_utf8_lossy(&out.stderr));
        }
        let ip: Ipv4Addr = String::from_utf8_lossy(&out.stdout).split_whitespace().nth(3).context("endpoint add output")?.parse()?;
        let mac = Mac::from_ip(ip).0;
        let mut remote_done = None;
        loop {
            let have: Vec<bool> = maps.iter().map(|m| m.fdb_entry(4096, mac).ok().flatten().is_some()).collect();
            if remote_done.is_none() && have.iter().enumerate().all(|(n, h)| *h || n + 1 == host) {
                remote_done = Some(t0.elapsed());
            }
            if have.iter().all(|h| *h) {
                break;
            }
            if t0.elapsed() > Duration::from_secs(10) {
                bail!("endpoint {ip} not on every node within 10 s");
            }
            thread::sleep(Duration::from_micros(100));
        }
        if i % 2 == 1 {
            remote.push(ms(remote_done.unwrap_or_default()));
        }
        if i % 2 == 1 { &mut published } else { &mut waited }.push(ms(t0.elapsed()));
        if (i + 1) % 20 == 0 {
            progress(&format!("convergence: {} of {} samples", i + 1, cfg.samples * 2));
        }
    }
    Ok((Percentiles::of(waited), Percentiles::of(published), Percentiles::of(remote)))
}

fn node_name(i: usize) -> String {
    format!("s{i:03}")
}

/// Network `net` of the scale set: a /23 from 10.100.0.0 on (128 per second octet).
fn scale_subnet(net: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, (100 + net / 128) as u8, ((net % 128) * 2) as u8, 0)
}

/// Address `host` (2..510) of network `net` of the scale set.
fn scale_ip(net: usize, host: usize) -> Ipv4Addr {
    let [a, b, c, _] = scale_subnet(net).octets();
    Ipv4Addr::new(a, b, c + (host / 256) as u8, (host % 256) as u8)
}

/// Endpoint `i` of the scale set: networks of 500 endpoints (each a /23), spread over nodes.
fn scale_endpoint(i: usize, nodes: usize) -> EndpointRecord {
    let net = i / 500;
    let ip = scale_ip(net, i % 500 + 2);
    let node = i % nodes;
    EndpointRecord {
        name: format!("x{i:05}"),
        network: format!("scale{net}"),
        node: node_name(node),
        ip: ip.to_string(),
        mac: Mac::from_ip(ip).to_string(),
        // The measured node's own endpoints have no namespace here: nothing to wire locally.
        netns: (node != 0).then(|| format!("ns{i}")),
        interface: None,
        aliases: vec![],
        service: None,
    }
}

/// Puts `ops` in transactions of at most 100 (etcd's default limit is 128 per transaction).
async fn put_batched(c: &mut Client, ops: Vec<TxnOp>) -> anyhow::Result<()> {
    let mut ops = ops.into_iter().peekable();
    while ops.peek().is_some() {
        let batch: Vec<TxnOp> = ops.by_ref().take(100).collect();
        c.txn(Txn::new().and_then(batch)).await?;
    }
    Ok(())
}

pub fn scale(cfg: &ControlConfig, bin: &Path, progress: &mut impl FnMut(&str)) -> anyhow::Result<ControlReport> {
    if cfg.endpoints > MAX_SCALE_ENDPOINTS {
        bail!("at most {MAX_SCALE_ENDPOINTS} endpoints");
    }
    let mut sim = Sim::new("cs", bin)?;
    sim.build_underlay(1)?;
    sim.start_etcd()?;
    let (nodes, endpoints) = (cfg.nodes, cfg.endpoints);
    progress(&format!("writing {nodes} nodes and {endpoints} endpoints to etcd"));
    with_etcd(&sim, move |mut c| async move {
        let lease = c.lease_grant(600, None).await?.id();
        let mut ops = Vec::new();
        for net in 0..endpoints.div_ceil(500) {
            let name = format!("scale{net}");
            let subnet = format!("{}/23", scale_subnet(net));
            let r = NetworkRecord { name: name.clone(), vni: 5000 + net as u32, subnet, gateway: scale_ip(net, 1).to_string(), mtu: None, attachable: false, internal: false, created: now_secs() };
            ops.push(TxnOp::put(network_key(&name), serde_json::to_vec(&r)?, None));
        }
        // Node 0 is the measured agent: it registers itself.
        for i in 1..nodes {
            let name = node_name(i);
            let r = NodeRecord { name: name.clone(), vtep: Ipv4Addr::new(172, 16 + (i / 250) as u8, (i % 250) as u8, 10).to_string(), underlay: None, datapath: None, mesh_return: None };
            ops.push(TxnOp::put(node_key(&name), serde_json::to_vec(&r)?, None));
            let a = AliveRecord { since: now_secs(), ttl: 600 };
            ops.push(TxnOp::put(alive_key(&name), serde_json::to_vec(&a)?, Some(PutOptions::new().with_lease(lease))));
        }
        for i in 0..endpoints {
            let e = scale_endpoint(i, nodes);
            ops.push(TxnOp::put(endpoint_key(&e.network, &e.name), serde_json::to_vec(&e)?, None));
            ops.push(TxnOp::put(ipam_key(&e.network, e.ip.parse()?), e.name.as_bytes(), None));
        }
        put_batched(&mut c, ops).await
    })?;

    progress("starting the agent");
    let h = sim.host_ns(1);
    let t0 = Instant::now();
    sim.spawn_store_agent(&node_name(0), &h, host_vtep(1), 30)?;
    let log_path = sim.agent_log(&node_name(0));
    let want = format!("endpoints={endpoints}");
    let synced = wait_for_fast(Duration::from_secs(120), || {
        fs::read_to_string(&log_path).is_ok_and(|l| l.lines().any(|l| l.contains("applied cluster state") && l.contains(&want)))
    });
    let initial = t0.elapsed();
    if !synced {
        bail!("the agent did not sync within 120 s:\n{}", fs::read_to_string(&log_path).unwrap_or_default());
    }
    let log = fs::read_to_string(&log_path)?;
    let initial_apply_ms = log
        .lines()
        .find(|l| l.contains("applied cluster state"))
        .and_then(|l| l.split("took_us=").nth(1))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse::<f64>().ok())
        .map_or(0.0, |us| us / 1000.0);
    let pid = sim.agent_pid(&node_name(0)).context("agent pid")?;
    let dp = Dataplane::open_pinned(&sim.pin_dir(&node_name(0)))?;
    let state = dp.read_state()?;
    let mut r = ControlReport {
        scale_nodes: nodes,
        scale_endpoints: endpoints,
        initial_sync_ms: ms(initial),
        initial_apply_ms,
        rss_mib: vm_kib(pid, "VmRSS:") / 1024.0,
        peak_rss_mib: vm_kib(pid, "VmHWM:") / 1024.0,
        map_memory_mib: dp.map_memory()? as f64 / (1024.0 * 1024.0),
        fdb_entries: state.fdb.len(),
        neigh_entries: state.neigh.len(),
        ..Default::default()
    };
    progress(&format!("initial sync {:.0} ms; timing {} single changes", r.initial_sync_ms, cfg.changes));

    // One change at a time: add an endpoint on another node, then remove it.
    let mut samples = Vec::new();
    for k in 0..cfg.changes {
        let add = k % 2 == 0;
        // The same endpoint comes and goes: address 506 of the last network, on node s001.
        let net = endpoints.div_ceil(500) - 1;
        let ip = scale_ip(net, 506);
        let e = EndpointRecord { name: "chg".into(), network: format!("scale{net}"), node: node_name(1), ip: ip.to_string(), mac: Mac::from_ip(ip).to_string(), netns: Some("chg".into()), interface: None, aliases: vec![], service: None };
        let key = endpoint_key(&e.network, &e.name);
        let value = serde_json::to_vec(&e)?;
        let vni = 5000 + net as u32;
        let t0 = with_etcd(&sim, move |mut c| async move {
            if add {
                c.put(key, value, None).await?;
            } else {
                c.delete(key, None).await?;
            }
            Ok(Instant::now())
        })?;
        let ok = wait_for_fast(Duration::from_secs(5), || dp.fdb_entry(vni, Mac::from_ip(ip).0).ok().flatten().is_some() == add);
        let took = t0.elapsed();
        if !ok {
            bail!("change {k} did not reach the map within 5 s");
        }
        samples.push(ms(took));
    }
    r.one_change = Percentiles::of(samples);
    thread::sleep(Duration::from_millis(200));
    r.last_change_log = fs::read_to_string(&log_path)?
        .lines()
        .rev()
        .find(|l| l.contains("applied cluster state"))
        .map(|l| l.split("applied cluster state").nth(1).unwrap_or(l).trim().to_string())
        .unwrap_or_default();
    if let Some(keep) = std::env::var_os("OVERLAY_BENCH_KEEP_LOG") {
        fs::copy(&log_path, &keep)?;
    }
    let pid_rss = vm_kib(pid, "VmRSS:") / 1024.0;
    r.rss_mib = r.rss_mib.max(pid_rss);
    r.peak_rss_mib = vm_kib(pid, "VmHWM:") / 1024.0;
    r.targets = cfg.targets;
    r.met = Met {
        initial_sync: r.initial_sync_ms < cfg.targets.initial_sync_ms,
        one_change_p99: r.one_change.p99_ms < cfg.targets.one_change_p99_ms,
        rss: r.peak_rss_mib < cfg.targets.rss_mib,
    };
    Ok(r)
}

/// Polls `f` every 100 µs until it holds or `timeout` passes.
fn wait_for_fast(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let t0 = Instant::now();
    while t0.elapsed() < timeout {
        if f() {
            return true;
        }
        thread::sleep(Duration::from_micros(100));
    }
    f()
}

pub fn table(r: &ControlReport) -> String {
    let mut o = String::new();
    if r.convergence.n > 0 {
        o += &convergence_table(r);
    }
    o += &scale_table(r);
    o
}

fn convergence_table(r: &ControlReport) -> String {
    let mut o = String::new();
    let c = &r.convergence;
    o += &format!("convergence, 3 agents (endpoint add returned -> entry on every node): n={} p50 {:.2} ms  p99 {:.2} ms  max {:.2} ms\n", c.n, c.p50_ms, c.p99_ms, c.max_ms);
    let c = &r.convergence_from_publish;
    o += &format!("  from `endpoint add --no-wait` returning (published; includes wiring): n={} p50 {:.2} ms  p99 {:.2} ms  max {:.2} ms\n", c.n, c.p50_ms, c.p99_ms, c.max_ms);
    let c = &r.convergence_remote_from_publish;
    o += &format!("  same, the two other nodes only (etcd watch -> map, no wiring): n={} p50 {:.2} ms  p99 {:.2} ms  max {:.2} ms\n", c.n, c.p50_ms, c.p99_ms, c.max_ms);
    o
}

fn scale_table(r: &ControlReport) -> String {
    let (mut o, t) = (String::new(), &r.targets);
    o += &format!("scale: {} endpoints over {} nodes\n", r.scale_endpoints, r.scale_nodes);
    let mark = |ok: bool| if ok { "ok" } else { "MISS" };
    o += &format!("  initial sync (agent start -> all programmed): {:.0} ms  [target < {:.0} ms: {}]\n", r.initial_sync_ms, t.initial_sync_ms, mark(r.met.initial_sync));
    o += &format!("  of which the initial apply (plan + map writes): {:.0} ms\n", r.initial_apply_ms);
    o += &format!("  maps: {} FDB entries, {} neighbour entries, {:.1} MiB of map memory\n", r.fdb_entries, r.neigh_entries, r.map_memory_mib);
    o += &format!("  agent RSS {:.1} MiB (peak {:.1} MiB)  [target < {:.0} MiB: {}]\n", r.rss_mib, r.peak_rss_mib, t.rss_mib, mark(r.met.rss));
    let c = &r.one_change;
    o += &format!("  one change (etcd write -> map): n={} p50 {:.2} ms  p99 {:.2} ms  max {:.2} ms  [target p99 < {:.0} ms: {}]\n", c.n, c.p50_ms, c.p99_ms, c.max_ms, t.one_change_p99_ms, mark(r.met.one_change_p99));
    o += &format!("  agent's log of the last change: {}\n", r.last_change_log);
    o
}
