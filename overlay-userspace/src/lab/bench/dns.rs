//! `overlay bench --dns`: lookups per second and round-trip latency of overlay names answered
//! by the datapath (the egress program), by the agent's resolver (the same name asked by a
//! container on two networks, which the datapath leaves to the agent), and, as the reference,
//! by dnsmasq serving the same name on the same node. One simulated host; every client runs in
//! a container namespace and asks over UDP: the rate with 32 questions in flight per client (as
//! dnsperf keeps them, sent and collected in batches), the round trip one question at a time.
use std::{
    net::{Ipv4Addr, SocketAddr, UdpSocket},
    process::{Child, Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use hickory_proto::{
    op::{Message, Query},
    rr::{Name, RecordType},
};
use serde::Serialize;

use super::{INTERRUPTED, Summary, stats::percentile, traffic};
use crate::{
    host::netlink,
    lab::sim::{self, Sim},
};

#[derive(Clone, Copy, Debug)]
pub struct DnsConfig {
    pub rounds: u32,
    pub secs: f64,
    pub clients: usize,
}

/// One path's samples per round.
#[derive(Debug, Default, Serialize)]
pub struct PathResult {
    pub qps: Vec<f64>,
    pub mean_us: Vec<f64>,
    pub p99_us: Vec<f64>,
    pub failed: u64,
    pub qps_summary: Summary,
    pub mean_summary: Summary,
    pub p99_summary: Summary,
}

#[derive(Debug, Default, Serialize)]
pub struct DnsReport {
    pub datapath: PathResult,
    pub agent: PathResult,
    pub dnsmasq: PathResult,
    /// Per round: datapath qps / agent qps, datapath qps / dnsmasq qps.
    pub qps_vs_agent: Summary,
    pub qps_vs_dnsmasq: Summary,
    /// The egress program's time per answer under BPF_PROG_TEST_RUN, and the pass-through
    /// floor's, ns: what the datapath path costs without the clients.
    pub answer_ns: Summary,
    pub floor_ns: Summary,
}

const SINGLE: Ipv4Addr = Ipv4Addr::new(10, 0, 1, 2);
const MULTI: Ipv4Addr = Ipv4Addr::new(10, 0, 1, 3);
const GATEWAY: Ipv4Addr = Ipv4Addr::new(10, 0, 1, 1);
/// dnsmasq listens on the node's underlay address, this port.
const DNSMASQ_PORT: u16 = 5353;

fn query_bytes() -> anyhow::Result<Vec<u8>> {
    let mut q = Message::query();
    q.metadata.id = 0x4242;
    q.metadata.recursion_desired = true;
    q.add_query(Query::query(Name::from_ascii("web2.")?, RecordType::A));
    Ok(q.to_vec()?)
}

struct KillOnDrop(Child);
impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Questions each client keeps in flight, as dnsperf does with its outstanding-queries limit.
const IN_FLIGHT: usize = 32;

/// [`IN_FLIGHT`] copies of one question sent with one `sendmmsg` and their answers collected
/// with `recvmmsg`, as a load generator does (dnsperf, resperf): the client's own system calls
/// then cost little next to the server's work, on paths that share the node's cores with it.
struct Batch {
    query: Vec<u8>,
    answers: Vec<[u8; 512]>,
}

impl Batch {
    fn new(query: &[u8]) -> Self {
        Self { query: query.to_vec(), answers: vec![[0u8; 512]; IN_FLIGHT] }
    }

    /// Sends the batch on the connected socket `s` and counts the answers that arrive (a
    /// missing answer counts as failed after the socket's read timeout).
    fn round_trip(&mut self, s: &UdpSocket) -> anyhow::Result<u64> {
        use std::os::fd::AsRawFd as _;
        let fd = s.as_raw_fd();
        // SAFETY: zeroed plain C structs, filled below with pointers into buffers that outlive
        // the calls.
        let mut send_iov = [libc::iovec { iov_base: self.query.as_ptr() as *mut _, iov_len: self.query.len() }; IN_FLIGHT];
        let mut msgs: [libc::mmsghdr; IN_FLIGHT] = unsafe { std::mem::zeroed() };
        for (m, iov) in msgs.iter_mut().zip(send_iov.iter_mut()) {
            m.msg_hdr.msg_iov = iov;
            m.msg_hdr.msg_iovlen = 1;
        }
        let mut sent = 0;
        while sent < IN_FLIGHT {
            // SAFETY: msgs[sent..] are valid mmsghdrs.
            let n = unsafe { libc::sendmmsg(fd, msgs[sent..].as_mut_ptr(), (IN_FLIGHT - sent) as u32, 0) };
            if n < 0 {
                return Err(std::io::Error::last_os_error()).context("sendmmsg");
            }
            sent += n as usize;
        }
        let mut recv_iov: Vec<libc::iovec> =
            self.answers.iter_mut().map(|b| libc::iovec { iov_base: b.as_mut_ptr() as *mut _, iov_len: b.len() }).collect();
        let mut got = 0usize;
        while got < IN_FLIGHT {
            let mut msgs: [libc::mmsghdr; IN_FLIGHT] = unsafe { std::mem::zeroed() };
            for (m, iov) in msgs.iter_mut().zip(recv_iov.iter_mut()) {
                m.msg_hdr.msg_iov = iov;
                m.msg_hdr.msg_iovlen = 1;
            }
            // SAFETY: as above; MSG_WAITFORONE blocks (up to the read timeout) for the first
            // answer only and returns what else has arrived.
            let n = unsafe {
                libc::recvmmsg(fd, msgs.as_mut_ptr(), (IN_FLIGHT - got) as u32, libc::MSG_WAITFORONE, std::ptr::null_mut())
            };
            if n <= 0 {
                break;
            }
            for (m, b) in msgs.iter().zip(self.answers.iter()).take(n as usize) {
                // An answer: a response with at least one record.
                if m.msg_len > 12 && b[7] > 0 {
                    got += 1;
                }
            }
        }
        Ok(got as u64)
    }
}

/// Asks `server` from namespace `ns` with `clients` threads for `secs`, each keeping
/// [`IN_FLIGHT`] questions in flight in batches ([`Batch`]): (answers per second, failures).
fn rate(ns: &str, server: SocketAddr, q: &[u8], clients: usize, secs: f64) -> anyhow::Result<(f64, u64)> {
    let done = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let path = netlink::netns_path(ns);
    let handles: Vec<_> = (0..clients)
        .map(|_| {
            let (done, failed, stop, path, q) = (done.clone(), failed.clone(), stop.clone(), path.clone(), q.to_vec());
            std::thread::spawn(move || -> anyhow::Result<()> {
                netlink::enter_netns(&path)?;
                let s = UdpSocket::bind(("0.0.0.0", 0))?;
                s.connect(server)?;
                s.set_read_timeout(Some(Duration::from_millis(200)))?;
                let mut batch = Batch::new(&q);
                while !stop.load(Ordering::Relaxed) {
                    let got = batch.round_trip(&s)?;
                    done.fetch_add(got, Ordering::Relaxed);
                    failed.fetch_add(IN_FLIGHT as u64 - got, Ordering::Relaxed);
                }
                Ok(())
            })
        })
        .collect();
    let t0 = Instant::now();
    std::thread::sleep(Duration::from_secs_f64(secs));
    stop.store(true, Ordering::Relaxed);
    for h in handles {
        h.join().map_err(|_| anyhow::anyhow!("client panicked"))??;
    }
    Ok((done.load(Ordering::Relaxed) as f64 / t0.elapsed().as_secs_f64(), failed.load(Ordering::Relaxed)))
}

/// `count` sequential questions from `ns`: (mean, p99) round trip in microseconds, failures.
fn latency(ns: &str, server: SocketAddr, q: &[u8], count: usize) -> anyhow::Result<(f64, f64, u64)> {
    let path = netlink::netns_path(ns);
    let q = q.to_vec();
    std::thread::spawn(move || -> anyhow::Result<(f64, f64, u64)> {
        netlink::enter_netns(&path)?;
        let s = UdpSocket::bind(("0.0.0.0", 0))?;
        s.connect(server)?;
        s.set_read_timeout(Some(Duration::from_millis(500)))?;
        let mut buf = [0u8; 512];
        let mut rtts = Vec::with_capacity(count);
        let mut failed = 0;
        for _ in 0..count {
            let t = Instant::now();
            s.send(&q)?;
            match s.recv(&mut buf) {
                Ok(n) if n > 12 && buf[7] > 0 => rtts.push(t.elapsed().as_secs_f64() * 1e6),
                _ => failed += 1,
            }
        }
        if rtts.is_empty() {
            bail!("no answer from {server}");
        }
        rtts.sort_by(f64::total_cmp);
        Ok((rtts.iter().sum::<f64>() / rtts.len() as f64, percentile(&rtts, 99.0), failed))
    })
    .join()
    .map_err(|_| anyhow::anyhow!("latency client panicked"))?
}

/// Builds the topology, measures the three paths in turn each round, removes everything.
pub fn run(cfg: &DnsConfig, exe: &std::path::Path, progress: &mut dyn FnMut(&str)) -> anyhow::Result<DnsReport> {
    let mut sim = Sim::new("n", exe)?;
    sim.build_underlay(1)?;
    let (single, multi) = (sim.add_ns("single")?, sim.add_ns("multi")?);
    let yaml = format!(
        "nodes:\n  - {{name: node1, vtep: {}, underlay: eth0}}\nnetworks:\n  - {{name: front, vni: 4096, subnet: 10.0.1.0/24}}\n  - {{name: back, vni: 4097, subnet: 10.0.2.0/24}}\nendpoints:\n  - {{name: single, network: front, node: node1, ip: {SINGLE}, netns: {single}}}\n  - {{name: multi, network: front, node: node1, ip: {MULTI}, netns: {multi}}}\n  - {{name: multi, network: back, node: node1, ip: 10.0.2.3, netns: {multi}}}\n  - {{name: web2, network: front, node: node1, ip: 10.0.1.9}}\n",
        sim::host_vtep(1)
    );
    let file = sim.write_file("cluster.yaml", &yaml)?;
    let h1 = sim.host_ns(1);
    sim.spawn_agent("node1", &h1, &file)?;
    if !sim::wait_for(Duration::from_secs(20), || sim.has_address(&single, SINGLE) && sim.has_address_on(&multi, "eth1", Ipv4Addr::new(10, 0, 2, 3))) {
        bail!("containers not wired:\n{}", sim.agent_logs(1));
    }
    let node = sim::host_vtep(1);
    let dnsmasq = Command::new("ip")
        .args(["netns", "exec", &h1, "/usr/sbin/dnsmasq", "--keep-in-foreground", "--no-resolv", "--no-hosts", "--bind-interfaces"])
        .arg(format!("--listen-address={node}"))
        .arg(format!("--port={DNSMASQ_PORT}"))
        .arg("--address=/web2/10.0.1.9")
        .args(["--conf-file=/dev/null", "--cache-size=0", "--pid-file=", "--user=root"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting dnsmasq (cargo xtask setup installs dnsmasq-base)")?;
    let _dnsmasq = KillOnDrop(dnsmasq);
    let q = query_bytes()?;
    let gw: SocketAddr = (GATEWAY, 53).into();
    let dm: SocketAddr = (node, DNSMASQ_PORT).into();
    // Every path answers before measuring.
    for (ns, server, what) in [(&single, gw, "the datapath"), (&multi, gw, "the agent"), (&single, dm, "dnsmasq")] {
        let ok = sim::wait_for(Duration::from_secs(10), || latency(ns, server, &q, 1).is_ok_and(|(_, _, f)| f == 0));
        if !ok {
            bail!("{what} does not answer web2 from {ns}:\n{}", sim.agent_logs(1));
        }
    }
    let mut r = DnsReport::default();
    let (mut vs_agent, mut vs_dnsmasq) = (Vec::new(), Vec::new());
    for round in 1..=cfg.rounds {
        if INTERRUPTED.load(Ordering::Relaxed) {
            bail!("interrupted");
        }
        let mut qps = [0.0; 3];
        for (i, (ns, server, res)) in [(&single, gw, &mut r.datapath), (&multi, gw, &mut r.agent), (&single, dm, &mut r.dnsmasq)].into_iter().enumerate() {
            traffic::wait_quiet(Duration::from_secs(5));
            let (rate, failed) = rate(ns, server, &q, cfg.clients, cfg.secs)?;
            let (mean, p99, lost) = latency(ns, server, &q, 2000)?;
            res.qps.push(rate);
            res.mean_us.push(mean);
            res.p99_us.push(p99);
            res.failed += failed + lost;
            qps[i] = rate;
        }
        vs_agent.push(qps[0] / qps[1]);
        vs_dnsmasq.push(qps[0] / qps[2]);
        progress(&format!(
            "round {round}: lookups/s datapath {:.0}, agent {:.0}, dnsmasq {:.0}; p99 us {:.1} / {:.1} / {:.1}",
            qps[0],
            qps[1],
            qps[2],
            r.datapath.p99_us.last().copied().unwrap_or(f64::NAN),
            r.agent.p99_us.last().copied().unwrap_or(f64::NAN),
            r.dnsmasq.p99_us.last().copied().unwrap_or(f64::NAN)
        ));
    }
    for p in [&mut r.datapath, &mut r.agent, &mut r.dnsmasq] {
        p.qps_summary = Summary::of(&p.qps);
        p.mean_summary = Summary::of(&p.mean_us);
        p.p99_summary = Summary::of(&p.p99_us);
    }
    r.qps_vs_agent = Summary::of(&vs_agent);
    r.qps_vs_dnsmasq = Summary::of(&vs_dnsmasq);
    traffic::wait_quiet(Duration::from_secs(5));
    let (answer, floor) = super::progcost::dns_answer_cost(200_000, cfg.rounds.max(3))?;
    r.answer_ns = answer;
    r.floor_ns = floor;
    for e in sim.cleanup() {
        progress(&format!("cleanup: {e}"));
    }
    Ok(r)
}

pub fn table(r: &DnsReport) -> String {
    let s = |x: &Summary| format!("{:>9.1} ({:.1}-{:.1})", x.median, x.min, x.max);
    let mut o = format!("{:<22} {:>30} {:>30} {:>30}\n", "median (min-max)", "lookups/s", "mean round trip, us", "p99 round trip, us");
    for (name, p) in [("datapath (TC program)", &r.datapath), ("agent's resolver", &r.agent), ("dnsmasq (reference)", &r.dnsmasq)] {
        o += &format!("{:<22} {:>30} {:>30} {:>30}   failed {}\n", name, s(&p.qps_summary), s(&p.mean_summary), s(&p.p99_summary), p.failed);
    }
    o += &format!("datapath / agent lookups/s, per round: {}; datapath / dnsmasq: {}   (target >= 5x)\n", s(&r.qps_vs_agent), s(&r.qps_vs_dnsmasq));
    o += &format!(
        "egress program per answer (BPF_PROG_TEST_RUN): {} ns; pass-through floor {} ns\n",
        s(&r.answer_ns),
        s(&r.floor_ns)
    );
    o
}
