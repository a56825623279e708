//! `overlay bench --services`: the cost of a VIP and of the routing mesh. Short TCP connections
//! per second (connect, the server's one-line answer, close: netperf's TCP_CRR) and
//! request/response round trips on one connection (TCP_RR) to one task on host 2:
//! - from a client container on host 1: directly to the task's address, and through the VIP;
//! - from a client outside the overlay on the hosts' own network (as a load balancer in front of
//!   a cluster sits) to host 3, which runs no task:
//!   through our published port, and through the kernel's best mesh on this machine (no IPVS
//!   here), built as Docker builds its ingress: the host DNATs the published port to an
//!   ingress sandbox (a namespace on the overlay network, joined to the host by a veth), whose
//!   nftables DNAT balances over the tasks (`numgen`) and masquerades to its overlay address.
//!
//! Each round measures every path in turn.
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
    /// How the task's node answers mesh clients (every agent runs with this `--mesh-return`).
    pub mesh_return: crate::model::MeshReturn,
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
    /// The agents' `--mesh-return` (`node` or `direct`).
    pub mesh_return: String,
    pub direct: PathResult,
    pub vip: PathResult,
    pub published: PathResult,
    pub nft_mesh: PathResult,
    /// Per round: VIP / direct connection rate, VIP / direct mean round trip.
    pub conn_ratio: Summary,
    pub rr_ratio: Summary,
    /// Per round: published / nftables mesh connection rate, and mean round trip.
    pub mesh_conn_ratio: Summary,
    pub mesh_rr_ratio: Summary,
}

const CLIENT: Ipv4Addr = Ipv4Addr::new(10, 0, 1, 2);
const SANDBOX: Ipv4Addr = Ipv4Addr::new(10, 0, 1, 3);
const TASK: Ipv4Addr = Ipv4Addr::new(10, 0, 1, 10);
const VIP: Ipv4Addr = Ipv4Addr::new(10, 0, 1, 100);
/// Our published ports (of the VIP's ports 80 and 81: the task's [`CRR_PORT`] and
/// [`RR_PORT`]), and the nftables mesh's.
const PUBLISHED: [u16; 2] = [30080, 30081];
const NFT_PUBLISHED: [u16; 2] = [30180, 30181];
/// The veth between host 3 and the ingress sandbox.
const SBOX_HOST: &str = "172.30.0.1";
const SBOX_PEER: &str = "172.30.0.2";

fn in_netns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> anyhow::Result<T> + Send + 'static) -> anyhow::Result<T> {
    let p = netlink::netns_path(ns);
    std::thread::spawn(move || {
        netlink::enter_netns(&p)?;
        f()
    })
    .join()
    .map_err(|_| anyhow::anyhow!("thread panicked"))?
}

/// Ports of the task's servers: [`CRR_PORT`] answers "hello\n" and closes (netperf's TCP_CRR
/// server), [`RR_PORT`] answers "hello\n" then echoes bytes until the client closes.
const CRR_PORT: u16 = 8080;
const RR_PORT: u16 = 8081;

/// A listener on `port` whose `accept` gives up every 100 ms (so the loop sees `stop`).
fn listener(port: u16) -> std::io::Result<TcpListener> {
    use std::os::fd::AsRawFd as _;
    let l = TcpListener::bind(("0.0.0.0", port))?;
    let tv = libc::timeval { tv_sec: 0, tv_usec: 100_000 };
    // SAFETY: a valid socket and a timeval of the size given.
    let rc = unsafe {
        libc::setsockopt(l.as_raw_fd(), libc::SOL_SOCKET, libc::SO_RCVTIMEO, (&tv as *const libc::timeval).cast(), std::mem::size_of::<libc::timeval>() as libc::socklen_t)
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(l)
}

/// The task's servers ([`CRR_PORT`], [`RR_PORT`]) in namespace `ns`, until `stop`.
fn serve(ns: &str, stop: Arc<AtomicBool>) -> anyhow::Result<Vec<std::thread::JoinHandle<()>>> {
    let mut handles = Vec::new();
    for port in [CRR_PORT, RR_PORT] {
        let p = netlink::netns_path(ns);
        let stop = stop.clone();
        let (tx, rx) = std::sync::mpsc::channel();
        handles.push(std::thread::spawn(move || {
            if netlink::enter_netns(&p).is_err() {
                return;
            }
            let Ok(l) = listener(port) else { return };
            let _ = tx.send(());
            while !stop.load(Ordering::Relaxed) {
                let Ok((mut s, _)) = l.accept() else { continue };
                let _ = s.set_nodelay(true);
                let _ = s.write_all(b"hello\n");
                if port == CRR_PORT {
                    continue;
                }
                std::thread::spawn(move || {
                    let mut b = [0u8; 64];
                    while let Ok(n) = s.read(&mut b) {
                        if n == 0 || s.write_all(&b[..n]).is_err() {
                            break;
                        }
                    }
                });
            }
        }));
        rx.recv_timeout(Duration::from_secs(5)).with_context(|| format!("the task's server on port {port} did not start"))?;
    }
    Ok(handles)
}

/// Parallel clients of the connection rate test: enough to keep both CPUs busy, so that the
/// rate shows what a connection costs the hosts rather than one client's round trips.
const CRR_CLIENTS: usize = 8;

/// Connections per second to `to` for `secs`, from [`CRR_CLIENTS`] clients each opening one at
/// a time: connect, read the answer, close.
fn crr(ns: &str, to: SocketAddr, secs: f64) -> anyhow::Result<f64> {
    in_netns(ns, move || {
        let t0 = Instant::now();
        // Threads made here share this thread's network namespace.
        let workers: Vec<_> = (0..CRR_CLIENTS)
            .map(|_| {
                std::thread::spawn(move || -> anyhow::Result<u64> {
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
                    Ok(n)
                })
            })
            .collect();
        let mut n = 0;
        for w in workers {
            n += w.join().map_err(|_| anyhow::anyhow!("client thread panicked"))??;
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

/// Runs `cmd` in namespace `ns`, failing with its output.
fn sh(sim: &Sim, ns: &str, cmd: &[&str]) -> anyhow::Result<()> {
    let o = sim.exec(ns, cmd)?;
    if !o.status.success() {
        bail!("{} in {ns}: {}", cmd.join(" "), String::from_utf8_lossy(&o.stderr).trim());
    }
    Ok(())
}

/// Loads an nftables ruleset (`nft -f -`) in namespace `ns`.
fn nft(ns: &str, rules: &str) -> anyhow::Result<()> {
    let mut child = std::process::Command::new("ip")
        .args(["netns", "exec", ns, "nft", "-f", "-"])
        .stdin(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .context("running nft")?;
    child.stdin.take().context("nft's stdin")?.write_all(rules.as_bytes())?;
    let o = child.wait_with_output()?;
    if !o.status.success() {
        bail!("nft in {ns}: {}", String::from_utf8_lossy(&o.stderr).trim());
    }
    Ok(())
}

/// The kernel's mesh on host 3, as Docker builds its ingress: the host DNATs
/// [`NFT_PUBLISHED`] ports to the ingress sandbox over a veth; the sandbox (an overlay endpoint)
/// balances with nftables DNAT over the tasks and masquerades to its overlay address; its
/// replies to outside clients go back over the veth.
fn nft_mesh(sim: &Sim, host: &str, sbox: &str, tasks: &[Ipv4Addr]) -> anyhow::Result<()> {
    sim::ip(&["-n", host, "link", "add", "sbx0", "type", "veth", "peer", "name", "eth1", "netns", sbox])?;
    sim::ip(&["-n", host, "addr", "add", &format!("{SBOX_HOST}/30"), "dev", "sbx0"])?;
    sim::ip(&["-n", host, "link", "set", "sbx0", "up"])?;
    sim::ip(&["-n", sbox, "addr", "add", &format!("{SBOX_PEER}/30"), "dev", "eth1"])?;
    sim::ip(&["-n", sbox, "link", "set", "eth1", "up"])?;
    sim::ip(&["-n", sbox, "route", "add", "192.168.50.0/24", "via", SBOX_HOST])?;
    sh(sim, sbox, &["sysctl", "-qw", "net.ipv4.ip_forward=1"])?;
    let [a, b] = NFT_PUBLISHED;
    nft(host, &format!("table ip bench_mesh {{\n chain pre {{\n  type nat hook prerouting priority dstnat\n  tcp dport {{ {a}, {b} }} dnat to {SBOX_PEER}\n }}\n}}\n"))?;
    let map: Vec<String> = tasks.iter().enumerate().map(|(i, t)| format!("{i} : {t}")).collect();
    let (n, map) = (tasks.len(), map.join(", "));
    nft(
        sbox,
        &format!(
            "table ip ingress {{\n chain pre {{\n  type nat hook prerouting priority dstnat\n  tcp dport {a} dnat to numgen inc mod {n} map {{ {map} }} : {CRR_PORT}\n  tcp dport {b} dnat to numgen inc mod {n} map {{ {map} }} : {RR_PORT}\n }}\n chain post {{\n  type nat hook postrouting priority srcnat\n  oifname \"eth0\" masquerade\n }}\n}}\n"
        ),
    )
}

/// One round's samples of two paths ([connection rate address, round trip address], result):
/// (connections/s, mean us) of each.
fn measure(sim: &Sim, ns: &str, cfg: &ServiceConfig, paths: [([SocketAddr; 2], &mut PathResult); 2]) -> anyhow::Result<[(f64, f64); 2]> {
    let mut got = [(0.0, 0.0); 2];
    for (i, ([to_crr, to_rr], res)) in paths.into_iter().enumerate() {
        // Each path its own half of the client's ports. The task keeps the connections it
        // closed in TIME_WAIT with the client's last timestamp; the kernel offsets timestamps
        // per destination address, so a SYN through the VIP on a port a direct connection just
        // used carries timestamps from another offset, fails the task's PAWS check and waits a
        // second to be sent again: an artefact of one client using both paths, not a cost of
        // either.
        sh(sim, ns, &["sysctl", "-qw", if i == 0 { "net.ipv4.ip_local_port_range=1024 32999" } else { "net.ipv4.ip_local_port_range=33000 65000" }])?;
        traffic::wait_quiet(Duration::from_secs(5));
        let rate = crr(ns, to_crr, cfg.secs)?;
        let (mean, p99) = rr(ns, to_rr, 5000)?;
        res.conn_per_s.push(rate);
        res.rr_mean_us.push(mean);
        res.rr_p99_us.push(p99);
        got[i] = (rate, mean);
    }
    Ok(got)
}

/// Builds the topology, measures every path in turn each round, removes everything.
pub fn run(cfg: &ServiceConfig, exe: &std::path::Path, progress: &mut dyn FnMut(&str)) -> anyhow::Result<ServiceReport> {
    let mut sim = Sim::new("s", exe)?;
    sim.build_underlay(3)?;
    // The switch namespace stands for a physical switch, as in the datapath benchmark: it does
    // not run the host firewall's hooks on bridged frames (br_netfilter, when loaded, enables
    // them in every namespace). Hosts keep the kernel's defaults.
    let sw = sim.ns_name("sw");
    for key in ["iptables", "ip6tables", "arptables"] {
        let _ = sim.exec(&sw, &["sysctl", "-q", "-w", &format!("net.bridge.bridge-nf-call-{key}=0")]);
    }
    // The client outside the overlay: a machine on the hosts' network, 192.168.50.200.
    let outside = sim.add_host(200)?;
    let (client, task, sbox) = (sim.add_ns("client")?, sim.add_ns("task")?, sim.add_ns("sbox")?);
    let yaml = format!(
        "nodes:\n  - {{name: node1, vtep: {}, underlay: eth0}}\n  - {{name: node2, vtep: {}, underlay: eth0}}\n  - {{name: node3, vtep: {}, underlay: eth0}}\nnetworks:\n  - {{name: front, vni: 4501, subnet: 10.0.1.0/24}}\nservices:\n  - {{name: web, network: front, vip: {VIP}, ports: [{{port: 80, target: {CRR_PORT}, publish: {}}}, {{port: 81, target: {RR_PORT}, publish: {}}}]}}\nendpoints:\n  - {{name: client, network: front, node: node1, ip: {CLIENT}, netns: {client}}}\n  - {{name: task, network: front, node: node2, ip: {TASK}, netns: {task}, service: web}}\n  - {{name: ingress-sbox, network: front, node: node3, ip: {SANDBOX}, netns: {sbox}}}\n",
        sim::host_vtep(1),
        sim::host_vtep(2),
        sim::host_vtep(3),
        PUBLISHED[0],
        PUBLISHED[1]
    );
    let file = sim.write_file("cluster.yaml", &yaml)?;
    for i in 1..=3 {
        let h = sim.host_ns(i);
        sim.spawn_agent_extra(&format!("node{i}"), &h, &file, &["--mesh-return", cfg.mesh_return.name()])?;
    }
    if !sim::wait_for(Duration::from_secs(20), || sim.has_address(&client, CLIENT) && sim.has_address(&task, TASK) && sim.has_address(&sbox, SANDBOX)) {
        bail!("containers not wired:\n{}", sim.agent_logs(3));
    }
    nft_mesh(&sim, &sim.host_ns(3), &sbox, &[TASK])?;
    // A load generator's settings, in the clients' own namespaces: the connection rate test
    // opens tens of thousands of connections, and the closing side keeps each port in
    // TIME_WAIT for a minute; reusing them (safe with TCP timestamps) keeps the rate from
    // collapsing into the kernel's search for a free port.
    for ns in [&client, &outside] {
        for (key, value) in [("net.ipv4.tcp_tw_reuse", "1"), ("net.ipv4.ip_local_port_range", "1024 65000")] {
            sh(&sim, ns, &["sysctl", "-qw", &format!("{key}={value}")])?;
        }
    }
    let stop = Arc::new(AtomicBool::new(false));
    let servers = serve(&task, stop.clone())?;
    let node3 = sim::host_vtep(3);
    let direct: [SocketAddr; 2] = [(TASK, CRR_PORT).into(), (TASK, RR_PORT).into()];
    let vip: [SocketAddr; 2] = [(VIP, 80).into(), (VIP, 81).into()];
    let published: [SocketAddr; 2] = PUBLISHED.map(|p| (node3, p).into());
    let nft_published: [SocketAddr; 2] = NFT_PUBLISHED.map(|p| (node3, p).into());
    for (ns, to, what) in [(&client, direct, "the task"), (&client, vip, "the VIP"), (&outside, published, "the published port"), (&outside, nft_published, "the nftables mesh")] {
        let c = ns.clone();
        if !sim::wait_for(Duration::from_secs(10), || crr(&c, to[0], 0.05).is_ok() && rr(&c, to[1], 1).is_ok()) {
            bail!("{what} does not answer:\n{}", sim.agent_logs(3));
        }
    }
    let mut r = ServiceReport { mesh_return: cfg.mesh_return.name().to_string(), ..Default::default() };
    let (mut conn_ratio, mut rr_ratio, mut mesh_conn, mut mesh_rr) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for round in 1..=cfg.rounds {
        if INTERRUPTED.load(Ordering::Relaxed) {
            bail!("interrupted");
        }
        let got = measure(&sim, &client, cfg, [(direct, &mut r.direct), (vip, &mut r.vip)])?;
        conn_ratio.push(got[1].0 / got[0].0);
        rr_ratio.push(got[1].1 / got[0].1);
        let mesh = measure(&sim, &outside, cfg, [(published, &mut r.published), (nft_published, &mut r.nft_mesh)])?;
        mesh_conn.push(mesh[0].0 / mesh[1].0);
        mesh_rr.push(mesh[0].1 / mesh[1].1);
        progress(&format!(
            "round {round}: connections/s direct {:.0}, VIP {:.0}, published {:.0}, nftables mesh {:.0}; round trip us direct {:.1}, VIP {:.1}, published {:.1}, nftables mesh {:.1}",
            got[0].0, got[1].0, mesh[0].0, mesh[1].0, got[0].1, got[1].1, mesh[0].1, mesh[1].1
        ));
    }
    r.mesh_conn_ratio = Summary::of(&mesh_conn);
    r.mesh_rr_ratio = Summary::of(&mesh_rr);
    for p in [&mut r.direct, &mut r.vip, &mut r.published, &mut r.nft_mesh] {
        p.conn_summary = Summary::of(&p.conn_per_s);
        p.mean_summary = Summary::of(&p.rr_mean_us);
        p.p99_summary = Summary::of(&p.rr_p99_us);
    }
    r.conn_ratio = Summary::of(&conn_ratio);
    r.rr_ratio = Summary::of(&rr_ratio);
    stop.store(true, Ordering::Relaxed);
    for s in servers {
        let _ = s.join();
    }
    for e in sim.cleanup() {
        progress(&format!("cleanup: {e}"));
    }
    Ok(r)
}

pub fn table(r: &ServiceReport) -> String {
    let s = |x: &Summary| format!("{:>9.1} ({:.1}-{:.1})", x.median, x.min, x.max);
    let mut o = format!("{:<22} {:>30} {:>30} {:>30}\n", "median (min-max)", "connections/s (TCP_CRR)", "round trip mean, us (TCP_RR)", "round trip p99, us");
    for (name, p) in [
        ("direct to the task", &r.direct),
        ("through the VIP", &r.vip),
        ("published (our mesh)", &r.published),
        ("published (nftables)", &r.nft_mesh),
    ] {
        o += &format!("{:<22} {:>30} {:>30} {:>30}\n", name, s(&p.conn_summary), s(&p.mean_summary), s(&p.p99_summary));
    }
    o += &format!(
        "VIP / direct, per round: connections/s {}; mean round trip {}   (target: within 10%)\n",
        s(&r.conn_ratio),
        s(&r.rr_ratio)
    );
    o += &format!("published ports: replies of the task's node {}\n", if r.mesh_return == "direct" { "straight to the client (--mesh-return direct)" } else { "back through the receiving node (--mesh-return node)" });
    o += &format!(
        "our mesh / nftables mesh, per round: connections/s {} (target: >= 1.5); mean round trip {}\n",
        s(&r.mesh_conn_ratio),
        s(&r.mesh_rr_ratio)
    );
    o
}
