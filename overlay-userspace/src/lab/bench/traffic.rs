//! Traffic generators: TCP throughput with iperf3, and built-in UDP packet-rate and
//! request/response latency tests run by threads that enter the containers' namespaces. Every
//! loop is bounded by a deadline; every process started here is ended by its PID.
use std::{
    fs,
    mem::MaybeUninit,
    io::{Read as _, Write as _},
    net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream, UdpSocket},
    os::fd::AsRawFd,
    process::{Child, Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use super::stats::percentile;
use crate::host::netlink;

/// The CPU that sends (client side) and the one that receives, when the machine has two.
const CLIENT_CPU: usize = 0;
const SERVER_CPU: usize = 1;
/// The CPU both iperf3 ends run on (see [`iperf3`]).
const TCP_CPU: usize = 0;
const UDP_PORT: u16 = 9000;
const PING_PORT: u16 = 9001;
const IPERF_PORT: u16 = 5201;
const RR_PORT: u16 = 9002;
/// A ping-pong without an answer after this long counts as lost.
const REPLY_TIMEOUT: Duration = Duration::from_millis(200);

fn ncpus() -> usize {
    thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
}

/// Pins the calling thread to `cpu` (if it exists).
fn pin_to(cpu: usize) {
    if cpu >= ncpus() {
        return;
    }
    // SAFETY: a zeroed cpu_set_t is valid; sched_setaffinity(0) affects the calling thread.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

/// Runs `f` on a new thread pinned to `cpu`, and waits for it.
pub fn on_cpu<T: Send>(cpu: usize, f: impl FnOnce() -> anyhow::Result<T> + Send) -> anyhow::Result<T> {
    thread::scope(|s| {
        s.spawn(|| {
            pin_to(cpu);
            f()
        })
        .join()
        .map_err(|_| anyhow::anyhow!("a benchmark thread panicked"))?
    })
}

/// Runs `f` on a new thread inside network namespace `ns`, pinned to `cpu`.
fn spawn_in<T: Send + 'static>(
    ns: &str,
    cpu: usize,
    f: impl FnOnce() -> anyhow::Result<T> + Send + 'static,
) -> thread::JoinHandle<anyhow::Result<T>> {
    let path = netlink::netns_path(ns);
    thread::spawn(move || {
        netlink::enter_netns(&path).with_context(|| format!("entering {}", path.display()))?;
        pin_to(cpu);
        f()
    })
}

fn join<T>(h: thread::JoinHandle<anyhow::Result<T>>) -> anyhow::Result<T> {
    h.join().map_err(|_| anyhow::anyhow!("a benchmark thread panicked"))?
}

/// Busy and softirq time of one CPU, in ns, from /proc/stat.
#[derive(Clone, Copy, Debug)]
pub struct CpuTimes {
    busy_ns: u64,
    softirq_ns: u64,
}

impl CpuTimes {
    pub fn now(cpu: usize) -> Option<Self> {
        let s = fs::read_to_string("/proc/stat").ok()?;
        let tag = format!("cpu{cpu} ");
        let line = s.lines().find(|l| l.starts_with(&tag))?;
        let v: Vec<u64> = line.split_whitespace().skip(1).filter_map(|x| x.parse().ok()).collect();
        if v.len() < 5 {
            return None;
        }
        // user nice system idle iowait irq softirq steal ...: busy = all but idle and iowait,
        // and not steal (time another guest ran).
        let busy: u64 = v.iter().take(7).sum::<u64>() - v[3] - v[4];
        // SAFETY: sysconf has no preconditions.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
        let ns = |t: u64| t * 1_000_000_000 / hz;
        Some(CpuTimes { busy_ns: ns(busy), softirq_ns: ns(v[6]) })
    }
}

/// Idle ns of the online CPUs together and how many they are, from /proc/stat's idle and iowait
/// (kept by the tickless idle tracking, which counts an idle period still going on; read in
/// 10 ms units). The cpuidle states' residency in sysfs is finer but only grows when a CPU wakes
/// up, so a CPU asleep through a whole window would show no idle time at all.
pub fn all_idle_ns() -> Option<(u64, usize)> {
    let s = fs::read_to_string("/proc/stat").ok()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    let (mut idle, mut cpus) = (0u64, 0usize);
    for line in s.lines().filter(|l| l.starts_with("cpu") && l.as_bytes().get(3).is_some_and(u8::is_ascii_digit)) {
        let v: Vec<u64> = line.split_whitespace().skip(1).filter_map(|x| x.parse().ok()).collect();
        idle += v.get(3)? + v.get(4)?;
        cpus += 1;
    }
    (cpus > 0).then_some((idle * 1_000_000_000 / hz, cpus))
}

/// Busy fraction of all CPUs together over `window`.
fn busy_fraction(window: Duration) -> Option<f64> {
    let n = ncpus();
    let sum = || (0..n).map(CpuTimes::now).try_fold(0u64, |acc, c| c.map(|c| acc + c.busy_ns));
    let a = sum()?;
    thread::sleep(window);
    let b = sum()?;
    Some((b - a) as f64 / (window.as_nanos() as f64 * n as f64))
}

/// Waits (at most `limit`) until the machine is nearly idle, e.g. after the kernel's
/// asynchronous clean-up of deleted namespaces, so that it does not run during a measurement.
/// Returns the last busy fraction seen.
pub fn wait_quiet(limit: Duration) -> f64 {
    let t0 = Instant::now();
    loop {
        let busy = busy_fraction(Duration::from_millis(200)).unwrap_or(0.0);
        if busy < 0.10 || t0.elapsed() >= limit {
            return busy;
        }
    }
}

/// UDP packet rate: what the receiver counted and what the sender's CPU spent per packet.
#[derive(Clone, Copy, Debug)]
pub struct UdpResult {
    pub pps: f64,
    /// Busy time of the sending CPU per received packet. The whole path, from `sendmmsg` through
    /// both hosts' datapaths to the receiver's socket, runs on that CPU (veth hand-offs are
    /// processed by the same CPU's softirq), so this is the cost of one packet end to end.
    pub cpu_ns_per_packet: f64,
    /// The part of it spent in softirq context (the datapath proper).
    pub softirq_ns_per_packet: f64,
    /// Packets sent and not received (dropped anywhere on the way), as a fraction.
    pub loss: f64,
}

fn set_int_opt(fd: i32, level: i32, name: i32, value: i32) {
    // SAFETY: valid fd and a c_int option value.
    unsafe {
        libc::setsockopt(fd, level, name, (&value as *const i32).cast(), std::mem::size_of::<i32>() as u32);
    }
}

/// Sends 64-byte UDP payloads from `client_ns` to `server` as fast as `sendmmsg` allows for
/// `warm + secs`, counting what the server receives during the last `secs`.
pub fn udp_pps(client_ns: &str, server_ns: &str, server: Ipv4Addr, payload: usize, warm: Duration, secs: Duration) -> anyhow::Result<UdpResult> {
    let stop = Arc::new(AtomicBool::new(false));
    let received = Arc::new(AtomicU64::new(0));
    let sent = Arc::new(AtomicU64::new(0));
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let rx = {
        let (stop, received) = (stop.clone(), received.clone());
        spawn_in(server_ns, SERVER_CPU, move || {
            let sock = UdpSocket::bind(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, UDP_PORT)).context("binding the UDP receiver")?;
            set_int_opt(sock.as_raw_fd(), libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, 8 << 20);
            sock.set_nonblocking(true)?;
            let _ = ready_tx.send(());
            recv_count(&sock, &stop, &received);
            Ok(())
        })
    };
    ready_rx.recv_timeout(Duration::from_secs(5)).context("the UDP receiver did not start")?;
    let deadline = Instant::now() + warm + secs;
    let tx = {
        let sent = sent.clone();
        spawn_in(client_ns, CLIENT_CPU, move || {
            let sock = UdpSocket::bind(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0))?;
            sock.connect(SocketAddrV4::new(server, UDP_PORT)).context("connecting the UDP sender")?;
            send_until(&sock, payload, deadline, &sent);
            Ok(())
        })
    };
    thread::sleep(warm);
    let (r0, s0, c0, t0) = (received.load(Ordering::Relaxed), sent.load(Ordering::Relaxed), CpuTimes::now(CLIENT_CPU), Instant::now());
    thread::sleep(secs);
    let (r1, s1, c1, t1) = (received.load(Ordering::Relaxed), sent.load(Ordering::Relaxed), CpuTimes::now(CLIENT_CPU), Instant::now());
    let tx_res = join(tx);
    // Let packets in flight land, then stop the receiver.
    thread::sleep(Duration::from_millis(100));
    stop.store(true, Ordering::Relaxed);
    join(rx)?;
    tx_res?;
    let packets = r1 - r0;
    if packets == 0 {
        bail!("no UDP packet reached {server}");
    }
    let (cpu, softirq) = match (c0, c1) {
        (Some(a), Some(b)) => ((b.busy_ns - a.busy_ns) as f64 / packets as f64, (b.softirq_ns - a.softirq_ns) as f64 / packets as f64),
        _ => (f64::NAN, f64::NAN),
    };
    let sent = (s1 - s0).max(1);
    Ok(UdpResult {
        pps: packets as f64 / (t1 - t0).as_secs_f64(),
        cpu_ns_per_packet: cpu,
        softirq_ns_per_packet: softirq,
        loss: 1.0 - (packets as f64 / sent as f64).min(1.0),
    })
}

const BATCH: usize = 64;

fn send_until(sock: &UdpSocket, payload: usize, deadline: Instant, sent: &AtomicU64) {
    let buf = vec![0x5au8; payload];
    let mut iov: Vec<libc::iovec> = (0..BATCH).map(|_| libc::iovec { iov_base: buf.as_ptr() as *mut _, iov_len: payload }).collect();
    // SAFETY: mmsghdr is plain data; zeroed is a valid starting value.
    let mut msgs: Vec<libc::mmsghdr> = (0..BATCH).map(|_| unsafe { MaybeUninit::zeroed().assume_init() }).collect();
    for (m, v) in msgs.iter_mut().zip(iov.iter_mut()) {
        m.msg_hdr.msg_iov = v;
        m.msg_hdr.msg_iovlen = 1;
    }
    while Instant::now() < deadline {
        // SAFETY: msgs points at BATCH initialised headers whose iovecs point into `buf`.
        let n = unsafe { libc::sendmmsg(sock.as_raw_fd(), msgs.as_mut_ptr(), BATCH as u32, 0) };
        if n > 0 {
            sent.fetch_add(n as u64, Ordering::Relaxed);
        }
    }
}

fn recv_count(sock: &UdpSocket, stop: &AtomicBool, received: &AtomicU64) {
    let mut bufs = vec![[0u8; 2048]; BATCH];
    let mut iov: Vec<libc::iovec> = bufs.iter_mut().map(|b| libc::iovec { iov_base: b.as_mut_ptr().cast(), iov_len: b.len() }).collect();
    // SAFETY: see send_until.
    let mut msgs: Vec<libc::mmsghdr> = (0..BATCH).map(|_| unsafe { MaybeUninit::zeroed().assume_init() }).collect();
    for (m, v) in msgs.iter_mut().zip(iov.iter_mut()) {
        m.msg_hdr.msg_iov = v;
        m.msg_hdr.msg_iovlen = 1;
    }
    while !stop.load(Ordering::Relaxed) {
        // SAFETY: msgs points at BATCH headers whose iovecs point into `bufs`; the socket is
        // non-blocking. Spinning keeps the receiver awake, so no packet pays for a wake-up
        // (an inter-processor interrupt, costly in a VM) and the datapath is what is measured.
        let n = unsafe { libc::recvmmsg(sock.as_raw_fd(), msgs.as_mut_ptr(), BATCH as u32, 0, std::ptr::null_mut()) };
        if n > 0 {
            received.fetch_add(n as u64, Ordering::Relaxed);
        }
    }
}

/// Request/response latency over UDP: round-trip times in microseconds.
#[derive(Clone, Copy, Debug)]
pub struct Latency {
    pub mean_us: f64,
    pub p50_us: f64,
    pub p90_us: f64,
    pub p99_us: f64,
    /// Ping-pongs without an answer within the reply timeout (left out of mean and p99).
    pub lost: usize,
}

/// `count` 64-byte UDP ping-pongs (after `count / 10` warm-up ones), bounded by `limit`.
pub fn udp_latency(client_ns: &str, server_ns: &str, server: Ipv4Addr, payload: usize, count: usize, limit: Duration) -> anyhow::Result<Latency> {
    let stop = Arc::new(AtomicBool::new(false));
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let echo = {
        let stop = stop.clone();
        spawn_in(server_ns, SERVER_CPU, move || {
            let sock = UdpSocket::bind(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, PING_PORT)).context("binding the echo server")?;
            sock.set_nonblocking(true)?;
            let _ = ready_tx.send(());
            let mut buf = [0u8; 2048];
            // Busy-polling, as sockperf and netperf do for latency: no wake-up in the path.
            while !stop.load(Ordering::Relaxed) {
                if let Ok((n, from)) = sock.recv_from(&mut buf) {
                    let _ = sock.send_to(&buf[..n], from);
                }
            }
            Ok(())
        })
    };
    ready_rx.recv_timeout(Duration::from_secs(5)).context("the echo server did not start")?;
    let client = spawn_in(client_ns, CLIENT_CPU, move || {
        let sock = UdpSocket::bind(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0))?;
        sock.connect(SocketAddrV4::new(server, PING_PORT))?;
        sock.set_nonblocking(true)?;
        let msg = vec![0x5au8; payload];
        let mut buf = [0u8; 2048];
        let deadline = Instant::now() + limit;
        let warm = count / 10;
        let (mut rtts, mut lost) = (Vec::with_capacity(count), 0usize);
        for i in 0..warm + count {
            if Instant::now() > deadline {
                break;
            }
            let t = Instant::now();
            sock.send(&msg)?;
            let answer = loop {
                match sock.recv(&mut buf) {
                    Ok(n) => break n == payload,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock && t.elapsed() < REPLY_TIMEOUT => continue,
                    Err(_) => break false,
                }
            };
            if !answer {
                lost += 1;
            } else if i >= warm {
                rtts.push(t.elapsed().as_secs_f64() * 1e6);
            }
        }
        Ok((rtts, lost))
    });
    let res = join(client);
    stop.store(true, Ordering::Relaxed);
    join(echo)?;
    let (mut rtts, lost) = res?;
    if rtts.is_empty() {
        bail!("no ping-pong came back from {server}");
    }
    rtts.sort_by(f64::total_cmp);
    Ok(Latency {
        mean_us: rtts.iter().sum::<f64>() / rtts.len() as f64,
        p50_us: percentile(&rtts, 50.0),
        p90_us: percentile(&rtts, 90.0),
        p99_us: percentile(&rtts, 99.0),
        lost,
    })
}

/// TCP throughput from iperf3's JSON report.
#[derive(Clone, Copy, Debug)]
pub struct Tcp {
    pub gbps: f64,
    pub retransmits: u64,
    /// Mean rate of iperf3's one-second intervals after the first (the steady state).
    pub steady_gbps: f64,
}

/// Waits for `child` (its stdout piped) at most `limit`, reading its output meanwhile; past the
/// limit it is ended by its PID and that is the error.
fn wait_bounded(mut child: Child, limit: Duration) -> anyhow::Result<std::process::Output> {
    let mut stdout = child.stdout.take().context("the child's stdout")?;
    let reader = thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = stdout.read_to_end(&mut buf);
        buf
    });
    if !crate::lab::sim::wait_for(limit, || !matches!(child.try_wait(), Ok(None))) {
        let _ = child.kill();
        let _ = child.wait();
        bail!("still running after {limit:?}: ended");
    }
    let status = child.wait()?;
    let stdout = reader.join().map_err(|_| anyhow::anyhow!("reading the child's output"))?;
    Ok(std::process::Output { status, stdout, stderr: Vec::new() })
}

struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
        }
        let _ = self.0.wait();
    }
}

/// iperf3 with `streams` parallel streams for `secs` seconds (after `omit` seconds of slow start
/// left out), client in `client_ns`, a one-off server in `server_ns`.
///
/// Client and server share one CPU. On one kernel, a TCP sender whose receiver runs on another
/// CPU sends partly from its own CPU and partly from the ACK-processing softirq on the other
/// one; the two halves cross the per-CPU veth backlogs in parallel and arrive out of order
/// (the receiver's `TcpExtTCPOFOQueue` counts them, every interface reports zero drops), which
/// triggers spurious fast retransmissions in every mode. On one CPU there is no such reordering
/// and the figure is the CPU cost of the whole path per byte, which is what differs between
/// the modes.
pub fn iperf3(client_ns: &str, server_ns: &str, server: Ipv4Addr, streams: u32, secs: u32, omit: u32) -> anyhow::Result<Tcp> {
    iperf3_at(client_ns, server_ns, server, streams, secs, omit, None, &mut |_: &mut Child| None::<()>).map(|(t, _)| t)
}

/// CPU cost of TCP at a fixed offered rate: busy CPU-seconds of all CPUs per Gbit received.
#[derive(Clone, Copy, Debug)]
pub struct TcpCpu {
    pub gbps: f64,
    /// Busy seconds of all CPUs together (from /proc/stat) per second of the run, per Gbit/s
    /// received: the CPU time the path costs per Gbit/s.
    pub cpu_per_gbps: f64,
}

/// Seconds of a paced run before the CPU window opens: the processes have started, the
/// connection is up and the pacing is steady.
const CPU_WARMUP: Duration = Duration::from_millis(1200);

/// One iperf3 stream paced at `rate_mbps`, with the busy time of all CPUs measured over `secs`
/// seconds of its steady state: wall time times the online CPUs minus the idle time the kernel
/// kept ([`all_idle_ns`]) over a window that starts [`CPU_WARMUP`] into the run and ends before
/// it does, per Gbit carried at the steady rate. Starting and ending processes (`ip netns
/// exec`, iperf3's own start) stay outside the window: at 2 Gbit/s the path itself keeps the
/// CPUs only a few percent busy, and the processes' start, counted before, made the figure
/// swing tenfold between rounds.
pub fn tcp_cpu(client_ns: &str, server_ns: &str, server: Ipv4Addr, rate_mbps: u32, secs: u32) -> anyhow::Result<TcpCpu> {
    let window = Duration::from_secs(u64::from(secs.max(1)));
    let sample = || Some((Instant::now(), all_idle_ns()?));
    let (t, busy_ns) = iperf3_at(client_ns, server_ns, server, 1, secs + 2, 0, Some(rate_mbps), &mut |client: &mut Child| {
        thread::sleep(CPU_WARMUP);
        // A client that already ended (refused: the server was not listening yet) is retried.
        if !matches!(client.try_wait(), Ok(None)) {
            return None;
        }
        let a = sample()?;
        thread::sleep(window);
        let b = sample()?;
        if a.1.1 != b.1.1 {
            return None;
        }
        let wall = b.0.duration_since(a.0).as_nanos() as f64 * b.1.1 as f64;
        Some(((wall - b.1.0.saturating_sub(a.1.0) as f64).max(0.0), b.0.duration_since(a.0).as_secs_f64()))
    })?;
    let (busy_ns, window_s) = busy_ns.context("measuring the CPUs' idle time (a CPU went on- or offline?)")?;
    if t.steady_gbps <= 0.0 {
        bail!("iperf3 at {rate_mbps} Mbit/s received nothing");
    }
    // Busy s over the window / Gbit carried in it at the steady rate.
    Ok(TcpCpu { gbps: t.gbps, cpu_per_gbps: busy_ns / 1e9 / (t.steady_gbps * window_s) })
}

/// iperf3 as [`iperf3`], paced at `rate_mbps` per stream if given; `during` runs while the
/// client does (from its start), and what it returns comes back with the figures.
#[allow(clippy::too_many_arguments)]
fn iperf3_at<T>(
    client_ns: &str,
    server_ns: &str,
    server: Ipv4Addr,
    streams: u32,
    secs: u32,
    omit: u32,
    rate_mbps: Option<u32>,
    during: &mut dyn FnMut(&mut Child) -> Option<T>,
) -> anyhow::Result<(Tcp, Option<T>)> {
    let port = IPERF_PORT.to_string();
    let affinity = |cpu: usize| if cpu < ncpus() { vec!["-A".to_string(), cpu.to_string()] } else { vec![] };
    let srv = Command::new("ip")
        .args(["netns", "exec", server_ns, "iperf3", "-s", "-1", "-p", &port])
        .args(affinity(TCP_CPU))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting iperf3 (run `cargo xtask setup`)")?;
    let _srv = KillOnDrop(srv);
    let mut last_err = String::new();
    // The server needs a moment to listen: retry a refused connection, a bounded number of times.
    for _ in 0..20 {
        thread::sleep(Duration::from_millis(100));
        let rate = rate_mbps.map(|r| vec!["-b".to_string(), format!("{r}M")]).unwrap_or_default();
        let mut client = Command::new("ip")
            .args(["netns", "exec", client_ns, "iperf3", "-c", &server.to_string(), "-p", &port, "-J"])
            .args(["-t", &secs.to_string(), "-O", &omit.to_string(), "-P", &streams.to_string()])
            .args(rate)
            .args(affinity(TCP_CPU))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .context("running iperf3")?;
        let pid = client.id();
        let seen = during(&mut client);
        // Bounded: iperf3 ends on its own after `secs`; if it hangs, it is ended by its PID.
        let out = wait_bounded(client, Duration::from_secs(u64::from(secs + omit) + 20)).with_context(|| format!("iperf3 client (pid {pid})"))?;
        let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        if let Some(e) = report.get("error").and_then(|e| e.as_str()) {
            last_err = e.to_string();
            if e.contains("refused") {
                continue;
            }
            bail!("iperf3 to {server}: {e}");
        }
        let end = &report["end"];
        let bps = end["sum_received"]["bits_per_second"].as_f64().context("iperf3 report without end.sum_received")?;
        let retransmits = end["sum_sent"]["retransmits"].as_u64().unwrap_or(0);
        let steady: Vec<f64> = report["intervals"]
            .as_array()
            .map(|v| v.iter().filter(|i| i["sum"]["start"].as_f64().is_some_and(|s| s >= 1.0)).filter_map(|i| i["sum"]["bits_per_second"].as_f64()).collect())
            .unwrap_or_default();
        let steady_gbps = if steady.is_empty() { bps } else { steady.iter().sum::<f64>() / steady.len() as f64 } / 1e9;
        return Ok((Tcp { gbps: bps / 1e9, retransmits, steady_gbps }, seen));
    }
    bail!("iperf3 could not connect to {server}: {last_err}")
}

/// TCP request/response figures (netperf's TCP_RR and TCP_CRR).
#[derive(Clone, Debug)]
pub struct Rr {
    /// Transactions per second, all flows together.
    pub tps: f64,
    /// Transaction times of the first flow, sorted, in microseconds.
    pub rtts_us: Vec<f64>,
}

/// A one-byte echo server in `server_ns` on [`RR_PORT`] with `workers` threads pinned to the
/// server CPU, each accepting one connection at a time and echoing until the client closes.
/// Stops (within 100 ms) when `stop` is set.
fn rr_server(server_ns: &str, workers: usize, stop: Arc<AtomicBool>) -> anyhow::Result<Vec<thread::JoinHandle<anyhow::Result<()>>>> {
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let listener = spawn_in(server_ns, SERVER_CPU, move || {
        let l = TcpListener::bind(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, RR_PORT)).context("binding the TCP_RR server")?;
        // Blocking accepts (a connection wakes a worker at once) that give up every 100 ms so
        // the workers see `stop`.
        let tv = libc::timeval { tv_sec: 0, tv_usec: 100_000 };
        // SAFETY: a valid socket and a timeval of the size given.
        let rc = unsafe {
            libc::setsockopt(l.as_raw_fd(), libc::SOL_SOCKET, libc::SO_RCVTIMEO, (&tv as *const libc::timeval).cast(), std::mem::size_of::<libc::timeval>() as u32)
        };
        if rc != 0 {
            return Err(std::io::Error::last_os_error()).context("setting the accept timeout");
        }
        let _ = ready_tx.send(l);
        Ok(())
    });
    join(listener)?;
    let l = ready_rx.recv_timeout(Duration::from_secs(5)).context("the TCP_RR server did not start")?;
    let mut handles = Vec::new();
    for _ in 0..workers {
        let (l, stop) = (l.try_clone()?, stop.clone());
        handles.push(spawn_in(server_ns, SERVER_CPU, move || {
            while !stop.load(Ordering::Relaxed) {
                let mut s = match l.accept() {
                    Ok((s, _)) => s,
                    Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut | std::io::ErrorKind::Interrupted) => continue,
                    Err(e) => return Err(e).context("accepting a TCP_RR connection"),
                };
                s.set_nodelay(true)?;
                s.set_read_timeout(Some(Duration::from_millis(100)))?;
                let mut b = [0u8; 1];
                while !stop.load(Ordering::Relaxed) {
                    match s.read(&mut b) {
                        Ok(0) => break,
                        Ok(_) => {
                            if s.write_all(&b).is_err() {
                                break;
                            }
                        }
                        Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => continue,
                        Err(_) => break,
                    }
                }
            }
            Ok(())
        }));
    }
    Ok(handles)
}

/// One-byte request/response transactions from `client_ns` to `server` for `secs`, over `flows`
/// parallel flows (client threads on the client CPU, server threads on the server CPU). With
/// `new_connection` every transaction opens its own connection (connect, request, response,
/// close: TCP_CRR); otherwise each flow keeps one connection (TCP_RR).
pub fn tcp_rr(client_ns: &str, server_ns: &str, server: Ipv4Addr, flows: usize, secs: Duration, new_connection: bool) -> anyhow::Result<Rr> {
    let stop = Arc::new(AtomicBool::new(false));
    let servers = rr_server(server_ns, flows, stop.clone())?;
    let to = SocketAddr::V4(SocketAddrV4::new(server, RR_PORT));
    let t0 = Instant::now();
    let clients: Vec<_> = (0..flows)
        .map(|i| {
            spawn_in(client_ns, CLIENT_CPU, move || {
                let record = i == 0;
                let mut rtts = Vec::new();
                let mut n = 0u64;
                let connect = || -> anyhow::Result<TcpStream> {
                    let s = TcpStream::connect_timeout(&to, Duration::from_secs(2)).with_context(|| format!("connecting to {to}"))?;
                    s.set_nodelay(true)?;
                    s.set_read_timeout(Some(REPLY_TIMEOUT * 10))?;
                    Ok(s)
                };
                let mut conn = if new_connection { None } else { Some(connect()?) };
                let mut b = [0u8; 1];
                while t0.elapsed() < secs {
                    let t = Instant::now();
                    let mut s = match conn.take() {
                        Some(s) => s,
                        None => connect()?,
                    };
                    s.write_all(b"x").context("sending a request")?;
                    s.read_exact(&mut b).context("reading a response")?;
                    if record && rtts.len() < 1_000_000 {
                        rtts.push(t.elapsed().as_secs_f64() * 1e6);
                    }
                    n += 1;
                    if !new_connection {
                        conn = Some(s);
                    }
                }
                Ok((n, rtts))
            })
        })
        .collect();
    let mut total = 0u64;
    let mut first = Vec::new();
    let mut err = None;
    for c in clients {
        match join(c) {
            Ok((n, r)) => {
                total += n;
                if !r.is_empty() {
                    first = r;
                }
            }
            Err(e) => err = err.or(Some(e)),
        }
    }
    let elapsed = t0.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    for s in servers {
        if let Err(e) = join(s) {
            err = err.or(Some(e));
        }
    }
    if let Some(e) = err {
        return Err(e);
    }
    if total == 0 {
        bail!("no TCP transaction completed with {server}");
    }
    first.sort_by(f64::total_cmp);
    Ok(Rr { tps: total as f64 / elapsed, rtts_us: first })
}
