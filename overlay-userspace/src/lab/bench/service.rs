//! `overlay bench --services`: the cost of a VIP. Short TCP connections per second (connect,
//! the server's one-line answer, close: netperf's TCP_CRR) and request/response round trips on
//! one connection (TCP_RR), from a client container to a task: directly to the task's address
//! and port, and through the service's VIP. Two simulated hosts, the task on the other host
//! (so both paths cross the tunnel); each round measures both paths in turn.
use std::{
    io::{BufRead, BufReader, Read, Write},
    net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use serde::Serialize;

use super::{INTERRUPTED, Summary, stats::percentile, traffic};
use crate::{
    host::netlink,
    lab::sim::{self, Sim},
};

#[derive(Clone, Copy, Debug)]
pub struct ServiceConfig {
    pub rounds: u32,
    pub secs: f64,
}

/// One path's samples per round.
#[derive(Debug, Default, Serialize)]
pub struct PathResult {
    pub conn_per_s: Vec<f64>,
    pub rr_mean_us: Vec<f64>,
    pub rr_p99_us: Vec<f64>,
    pub conn_summary: Summary,
    pub mean_summary: Summary,
    pub p99_summary: Summary,
}

#[derive(Debug, Default, Serialize)]
pub struct ServiceReport {
    pub direct: PathResult,
    pub vip: PathResult,
    /// Per round: VIP / direct connection rate, VIP / direct mean round trip.
    pub conn_ratio: Summary,
    pub rr_ratio: Summary,
}

const CLIENT: Ipv4Addr = Ipv4Addr::new(10, 0, 1, 2);
const TASK: Ipv4Addr = Ipv4Addr::new(10, 0, 1, 10);
const VIP: Ipv4Addr = Ipv4Addr::new(10, 0, 1, 100);

fn in_netns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> anyhow::Result<T> + Send + 'static) -> anyhow::Result<T> {
    let p = netlink::netns_path(ns);
    std::thread::spawn(move || {
        netlink::enter_netns(&p)?;
        f()
    })
    .join()
    .map_err(|_| anyhow::anyhow!("thread panicked"))?
}

/// The task's server: port 8080 answers "hello\n" to every connection, then echoes bytes until
/// the client closes.
fn serve(ns: &str, stop: Arc<AtomicBool>) -> anyhow::Result<std::thread::JoinHandle<()>> {
    let p = netlink::netns_path(ns);
    let (tx, rx) = std::sync::mpsc::channel();
    let h = std::thread::spawn(move || {
        if netlink::enter_netns(&p).is_err() {
            return;
        }
        let Ok(l) = TcpListener::bind(("0.0.0.0", 8080)) else { return };
        let _ = l.set_nonblocking(true);
        let _ = tx.send(());
        while !stop.load(Ordering::Relaxed) {
            match l.accept() {
                Ok((mut s, _)) => {
                    let _ = s.set_nonblocking(false);
                    let _ = s.set_nodelay(true);
                    let _ = s.write_all(b"hello\n");
                    std::thread::spawn(move || {
                        let mut b = [0u8; 64];
                        while let Ok(n) = s.read(&mut b) {
                            if n == 0 || s.write_all(&b[..n]).is_err() {
                                break;
                            }
                        }
                    });
                }
                Err(_) => std::thread::sleep(Duration::from_micros(200)),
            }
        }
    });
    rx.recv_timeout(Duration::from_secs(5)).context("the task's server did not start")?;
    Ok(h)
}

/// Connections per second to `to` for `secs`, one at a time: connect, read the answer, close.
fn crr(ns: &str, to: SocketAddr, secs: f64) -> anyhow::Result<f64> {
    in_netns(ns, move || {
        let t0 = Instant::now();
        let mut n = 0u64;
        while t0.elapsed().as_secs_f64() < secs {
            let s = TcpStream::connect_timeout(&to, Duration::from_secs(2)).with_context(|| format!("connecting to {to}"))?;
            s.set_read_timeout(Some(Duration::from_secs(2)))?;
            let mut line = String::new();
            BufReader::new(&s).read_line(&mut line)?;
            if line != "hello\n" {
                bail!("unexpected answer {line:?} from {to}");
            }
            n += 1;
        }
        Ok(n as f64 / t0.elapsed().as_secs_f64())
    })
}

/// `count` one-byte round trips on one connection to `to`: (mean, p99) in microseconds.
fn rr(ns: &str, to: SocketAddr, count: usize) -> anyhow::Result<(f64, f64)> {
    in_netns(ns, move || {
        let mut s = TcpStream::connect_timeout(&to, Duration::from_secs(2))?;
        s.set_nodelay(true)?;
        s.set_read_timeout(Some(Duration::from_secs(2)))?;
        let mut hello = [0u8; 6];
        s.read_exact(&mut hello)?;
        let mut rtts = Vec::with_capacity(count);
        let mut b = [0u8; 1];
        for _ in 0..count {
            let t = Instant::now();
            s.write_all(b"x")?;
            s.read_exact(&mut b)?;
            rtts.push(t.elapsed().as_secs_f64() * 1e6);
        }
        rtts.sort_by(f64::total_cmp);
        Ok((rtts.iter().sum::<f64>() / rtts.len() as f64, percentile(&rtts, 99.0)))
    })
}

/// Builds the topology, measures both paths in turn each round, removes everything.
pub fn run(cfg: &ServiceConfig, exe: &std::path::Path, progress: &mut dyn FnMut(&str)) -> anyhow::Result<ServiceReport> {
    let mut sim = Sim::new("s", exe)?;
    sim.build_underlay(2)?;
    let (client, task) = (sim.add_ns("client")?, sim.add_ns("task")?);
    let yaml = format!(
        "nodes:\n  - {{name: node1, vtep: {}, underlay: eth0}}\n  - {{name: node2, vtep: {}, underlay: eth0}}\nnetworks:\n  - {{name: front, vni: 4501, subnet: 10.0.1.0/24}}\nservices:\n  - {{name: web, network: front, vip: {VIP}, ports: [{{port: 80, target: 8080}}]}}\nendpoints:\n  - {{name: client, network: front, node: node1, ip: {CLIENT}, netns: {client}}}\n  - {{name: task, network: front, node: node2, ip: {TASK}, netns: {task}, service: web}}\n",
        sim::host_vtep(1),
        sim::host_vtep(2)
    );
    let file = sim.write_file("cluster.yaml", &yaml)?;
    for i in 1..=2 {
        let h = sim.host_ns(i);
        sim.spawn_agent(&format!("node{i}"), &h, &file)?;
    }
    if !sim::wait_for(Duration::from_secs(20), || sim.has_address(&client, CLIENT) && sim.has_address(&task, TASK)) {
        bail!("containers not wired:\n{}", sim.agent_logs(2));
    }
    // A load generator's settings, in the client's own namespace: the connection rate test
    // opens tens of thousands of connections, and the closing side keeps each port in
    // TIME_WAIT for a minute; reusing them (safe with TCP timestamps) keeps the rate from
    // collapsing into the kernel's search for a free port.
    for (key, value) in [("net.ipv4.tcp_tw_reuse", "1"), ("net.ipv4.ip_local_port_range", "1024 65000")] {
        let o = sim.exec(&client, &["sysctl", "-qw", &format!("{key}={value}")])?;
        if !o.status.success() {
            bail!("sysctl {key} in {client}: {}", String::from_utf8_lossy(&o.stderr));
        }
    }
    let stop = Arc::new(AtomicBool::new(false));
    let server = serve(&task, stop.clone())?;
    let direct: SocketAddr = (TASK, 8080).into();
    let vip: SocketAddr = (VIP, 80).into();
    for (to, what) in [(direct, "the task"), (vip, "the VIP")] {
        let c = client.clone();
        if !sim::wait_for(Duration::from_secs(10), || crr(&c, to, 0.05).is_ok()) {
            bail!("{what} does not answer:\n{}", sim.agent_logs(2));
        }
    }
    let mut r = ServiceReport::default();
    let (mut conn_ratio, mut rr_ratio) = (Vec::new(), Vec::new());
    for round in 1..=cfg.rounds {
        if INTERRUPTED.load(Ordering::Relaxed) {
            bail!("interrupted");
        }
        let mut got = [(0.0, 0.0); 2];
        for (i, (to, res)) in [(direct, &mut r.direct), (vip, &mut r.vip)].into_iter().enumerate() {
            traffic::wait_quiet(Duration::from_secs(5));
            let rate = crr(&client, to, cfg.secs)?;
            let (mean, p99) = rr(&client, to, 5000)?;
            res.conn_per_s.push(rate);
            res.rr_mean_us.push(mean);
            res.rr_p99_us.push(p99);
            got[i] = (rate, mean);
        }
        conn_ratio.push(got[1].0 / got[0].0);
        rr_ratio.push(got[1].1 / got[0].1);
        progress(&format!(
            "round {round}: connections/s direct {:.0}, VIP {:.0}; round trip us direct {:.1}, VIP {:.1}",
            got[0].0, got[1].0, got[0].1, got[1].1
        ));
    }
    for p in [&mut r.direct, &mut r.vip] {
        p.conn_summary = Summary::of(&p.conn_per_s);
        p.mean_summary = Summary::of(&p.rr_mean_us);
        p.p99_summary = Summary::of(&p.rr_p99_us);
    }
    r.conn_ratio = Summary::of(&conn_ratio);
    r.rr_ratio = Summary::of(&rr_ratio);
    stop.store(true, Ordering::Relaxed);
    let _ = server.join();
    for e in sim.cleanup() {
        progress(&format!("cleanup: {e}"));
    }
    Ok(r)
}

pub fn table(r: &ServiceReport) -> String {
    let s = |x: &Summary| format!("{:>9.1} ({:.1}-{:.1})", x.median, x.min, x.max);
    let mut o = format!("{:<22} {:>30} {:>30} {:>30}\n", "median (min-max)", "connections/s (TCP_CRR)", "round trip mean, us (TCP_RR)", "round trip p99, us");
    for (name, p) in [("direct to the task", &r.direct), ("through the VIP", &r.vip)] {
        o += &format!("{:<22} {:>30} {:>30} {:>30}\n", name, s(&p.conn_summary), s(&p.mean_summary), s(&p.p99_summary));
    }
    o += &format!(
        "VIP / direct, per round: connections/s {}; mean round trip {}   (target: within 10%)\n",
        s(&r.conn_ratio),
        s(&r.rr_ratio)
    );
    o
}
