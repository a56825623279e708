//! `overlay demo`: a simulated 3-host cluster on this machine, end to end.
use std::{
    net::Ipv4Addr,
    process::{Command, Stdio},
    sync::atomic::{AtomicBool, Ordering},
    time::Duration,
};

use anyhow::{Context as _, bail};
use clap::Args;

use crate::{
    dataplane::Dataplane,
    lab::sim::{self, Container, Sim},
};

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

#[derive(Args, Debug)]
pub struct DemoArgs {
    /// Keep the cluster running until Ctrl-C after printing the results.
    #[arg(long)]
    pub hold: bool,
}

fn check_interrupted() -> anyhow::Result<()> {
    if INTERRUPTED.load(Ordering::Relaxed) {
        bail!("interrupted");
    }
    Ok(())
}

pub async fn run(args: DemoArgs) -> anyhow::Result<()> {
    tokio::spawn(async {
        if tokio::signal::ctrl_c().await.is_ok() {
            INTERRUPTED.store(true, Ordering::Relaxed);
        }
    });
    tokio::task::spawn_blocking(move || demo(args)).await?
}

/// Reachability of every ordered pair, pinged in parallel.
pub fn matrix(sim: &Sim, cs: &[Container]) -> Vec<Vec<Option<bool>>> {
    std::thread::scope(|s| {
        let handles: Vec<Vec<_>> = cs
            .iter()
            .map(|a| cs.iter().map(|b| (a.name != b.name).then(|| s.spawn(|| sim.ping(&a.netns, b.ip, 3, None)))).collect())
            .collect();
        handles.into_iter().map(|row| row.into_iter().map(|h| h.map(|h| h.join().unwrap_or(false))).collect()).collect()
    })
}

/// One VXLAN frame's outer fields, from a pcap file with Ethernet link type.
pub struct VxlanFrame {
    pub outer_src: Ipv4Addr,
    pub outer_dst: Ipv4Addr,
    pub sport: u16,
    pub dport: u16,
    pub vni: u32,
    pub flags: u8,
    pub len: usize,
}

/// Reads the first frame of a classic pcap file and decodes its outer headers.
pub fn first_vxlan_frame(pcap: &[u8]) -> Option<VxlanFrame> {
    if pcap.len() < 24 + 16 {
        return None;
    }
    let le = pcap[0..4] == [0xd4, 0xc3, 0xb2, 0xa1];
    let rd = |b: &[u8]| if le { u32::from_le_bytes([b[0], b[1], b[2], b[3]]) } else { u32::from_be_bytes([b[0], b[1], b[2], b[3]]) };
    let caplen = rd(&pcap[24 + 8..24 + 12]) as usize;
    let f = pcap.get(40..40 + caplen)?;
    if f.len() < 50 || f[12..14] != [0x08, 0x00] || f[23] != 17 {
        return None;
    }
    let ihl = (f[14] & 0x0f) as usize * 4;
    let u = 14 + ihl;
    let v = u + 8;
    let g = f.get(v..v + 8)?;
    Some(VxlanFrame {
        outer_src: Ipv4Addr::new(f[26], f[27], f[28], f[29]),
        outer_dst: Ipv4Addr::new(f[30], f[31], f[32], f[33]),
        sport: u16::from_be_bytes([f[u], f[u + 1]]),
        dport: u16::from_be_bytes([f[u + 2], f[u + 3]]),
        flags: g[0],
        vni: u32::from_be_bytes([0, g[4], g[5], g[6]]),
        len: f.len(),
    })
}

/// Where `ns` stands in the demo's output.
fn verdict(ok: bool, want: bool) -> &'static str {
    match (ok, want) {
        (true, true) => "ok",
        (false, false) => "blocked, as it should be",
        (true, false) => "LEAK",
        (false, true) => "FAIL",
    }
}

/// A TCP connection from container namespace `from` to the outside host: the source address the
/// outside host saw, or `None` if it could not connect.
fn outside_sees(sim: &Sim, from: &str, port: u16) -> Option<Ipv4Addr> {
    let outside = sim.ns_name("out");
    let (tx, rx) = std::sync::mpsc::channel();
    let server = std::thread::spawn(move || -> Option<Ipv4Addr> {
        crate::host::netlink::enter_netns(&crate::host::netlink::netns_path(&outside)).ok()?;
        let l = std::net::TcpListener::bind((sim::OUTSIDE_HOST, port)).ok()?;
        l.set_nonblocking(true).ok()?;
        tx.send(()).ok()?;
        let t0 = std::time::Instant::now();
        while t0.elapsed() < Duration::from_secs(3) {
            if let Ok((_, peer)) = l.accept() {
                return match peer.ip() {
                    std::net::IpAddr::V4(v) => Some(v),
                    _ => None,
                };
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    });
    rx.recv_timeout(Duration::from_secs(3)).ok()?;
    let ns = crate::host::netlink::netns_path(from);
    let client = std::thread::spawn(move || {
        crate::host::netlink::enter_netns(&ns).is_ok()
            && std::net::TcpStream::connect_timeout(&(sim::OUTSIDE_HOST, port).into(), Duration::from_secs(2)).is_ok()
    });
    let _ = client.join();
    server.join().ok().flatten()
}

/// One container on two networks, an internal network, and the way out to an outside host
/// behind a router. Returns whether everything behaved as expected.
fn whole_network(sim: &mut Sim, cs: &[Container], file: &std::path::Path) -> anyhow::Result<bool> {
    println!("\n== a container's whole network");
    let outside = sim.add_outside(3, 1500)?;
    let app = sim.add_ns("app")?;
    let db = sim.add_ns("db1")?;
    let extra = format!(
        "  - {{name: app, network: nginx-net, node: node1, ip: 10.0.1.10, netns: {app}}}\n  - {{name: app, network: test-net, node: node1, ip: 10.0.2.10, netns: {app}}}\n  - {{name: db1, network: private-net, node: node2, ip: 10.0.3.2, netns: {db}}}\n"
    );
    let yaml = sim::cluster_yaml(3, cs, &[], &extra).replacen("endpoints:\n", "  - {name: private-net, vni: 4099, subnet: 10.0.3.0/24, internal: true}\nendpoints:\n", 1);
    std::fs::write(file, yaml)?;
    let wired = sim::wait_for(Duration::from_secs(10), || {
        sim.has_address(&app, Ipv4Addr::new(10, 0, 1, 10)) && sim.has_address_on(&app, "eth1", Ipv4Addr::new(10, 0, 2, 10)) && sim.has_address(&db, Ipv4Addr::new(10, 0, 3, 2))
    });
    if !wired {
        println!("   the new endpoints were not wired in 10 s:\n{}", sim.agent_logs(3));
        return Ok(false);
    }
    println!("   cluster file gains container `app` on node1, on nginx-net (eth0) and test-net (eth1),");
    println!("   and `db1` on node2 on private-net (10.0.3.0/24, internal: true)");
    let addrs = sim.exec(&app, &["ip", "-4", "-o", "addr", "show"])?;
    for l in String::from_utf8_lossy(&addrs.stdout).lines().filter(|l| !l.contains(" lo ")) {
        let f: Vec<&str> = l.split_whitespace().collect();
        println!("   app: {} {}", f.get(1).unwrap_or(&""), f.get(3).unwrap_or(&""));
    }
    let route = sim.exec(&app, &["ip", "route", "show", "default"])?;
    println!("   app: {}", String::from_utf8_lossy(&route.stdout).trim());
    let good = std::cell::Cell::new(true);
    let check = |what: &str, ok: bool, want: bool| {
        good.set(good.get() && ok == want);
        println!("   {what:<58} {}", verdict(ok, want));
    };
    let (web2, test2) = (&cs[1], &cs[5]);
    check("app -> web2 (nginx-net, node2) over eth0", sim.ping(&app, web2.ip, 2, None), true);
    check("app -> test2 (test-net, node2) over eth1", sim.ping(&app, test2.ip, 2, None), true);
    check("test2 -> web2 (the two networks stay apart)", sim.ping(&test2.netns, web2.ip, 1, None), false);

    println!("\n== names: containers reach each other by name (resolver: their network's gateway)");
    let resolv = std::fs::read_to_string(format!("/etc/netns/{}/resolv.conf", cs[0].netns)).unwrap_or_default();
    println!("   /etc/netns/{}/resolv.conf (written by the agent): {}", cs[0].netns, resolv.lines().filter(|l| !l.starts_with('#')).collect::<Vec<_>>().join("; "));
    let getent = |ns: &str, name: &str| {
        sim.exec(ns, &["getent", "hosts", name]).ok().filter(|o| o.status.success()).map(|o| String::from_utf8_lossy(&o.stdout).split_whitespace().next().unwrap_or("").to_string())
    };
    let web1 = &cs[0];
    let by_name = getent(&web1.netns, "web2");
    println!("   ip netns exec {} getent hosts web2        -> {}", web1.name, by_name.as_deref().unwrap_or("(nothing)"));
    check("web1 -> web2 by name (node1 -> node2)", by_name.as_deref() == Some("10.0.1.3"), true);
    let ping = sim.exec(&web1.netns, &["ping", "-c", "1", "-W", "2", "web3"]).is_ok_and(|o| o.status.success());
    check("ip netns exec web1 ping web3 (node1 -> node3)", ping, true);
    check("web1 resolves test2 (another network's name)", getent(&web1.netns, "test2").is_some(), false);
    check("app resolves test2 and web2 (it is on both networks)", getent(&app, "test2").is_some() && getent(&app, "web2").is_some(), true);
    let dp = Dataplane::open_pinned(&sim.pin_dir("node1"))?;
    let s = dp.stats()?;
    println!(
        "   node1: {} questions answered in the datapath (dns-reply), {} handed to the agent's resolver (fwd-resolver)",
        s.get(overlay_common::Reason::DnsReply, overlay_common::Direction::Egress).packets,
        s.get(overlay_common::Reason::FwdResolver, overlay_common::Direction::Egress).packets
    );

    println!("\n== the way out: an outside host {} behind a router, masqueraded by each node", sim::OUTSIDE_HOST);
    let web3 = &cs[2];
    check(&format!("web1 (node1) -> {} ping", sim::OUTSIDE_HOST), sim.ping(&web1.netns, sim::OUTSIDE_HOST, 2, None), true);
    check(&format!("web3 (node3) -> {} ping", sim::OUTSIDE_HOST), sim.ping(&web3.netns, sim::OUTSIDE_HOST, 2, None), true);
    for (c, node) in [(web1, 1), (web3, 3)] {
        let seen = outside_sees(sim, &c.netns, 8000 + node as u16);
        let ok = seen == Some(sim::host_vtep(node));
        good.set(good.get() && ok);
        match seen {
            Some(a) => println!("   {} ({}) connects over TCP; the outside host sees source {a} (node{node}'s address): {}", c.name, c.ip, if ok { "ok" } else { "UNEXPECTED" }),
            None => println!("   {} could not connect over TCP: FAIL", c.name),
        }
    }
    check("db1 (private-net, internal) -> outside", sim.ping(&db, sim::OUTSIDE_HOST, 1, None), false);
    // Even with a route to the overlay through node1 (as an attacker on the path would add),
    // nothing from outside opens a connection to a container.
    sim::ip(&["-n", &sim.ns_name("rt"), "route", "add", "10.0.1.0/24", "via", &sim::host_vtep(1).to_string()])?;
    check(&format!("outside -> web1 {} via node1 (nothing comes in)", web1.ip), sim.ping(&outside, web1.ip, 1, None), false);
    Ok(good.get())
}

/// A service's task: answers every TCP connection on port 8080 with "NAME CLIENT-ADDRESS" and
/// closes, until `stop`.
fn serve_name(ns: &str, name: String, stop: std::sync::Arc<AtomicBool>) -> anyhow::Result<std::thread::JoinHandle<()>> {
    let path = crate::host::netlink::netns_path(ns);
    let (tx, rx) = std::sync::mpsc::channel();
    let h = std::thread::spawn(move || {
        if crate::host::netlink::enter_netns(&path).is_err() {
            return;
        }
        let Ok(l) = std::net::TcpListener::bind(("0.0.0.0", 8080)) else { return };
        let _ = l.set_nonblocking(true);
        let _ = tx.send(());
        while !stop.load(Ordering::Relaxed) {
            match l.accept() {
                Ok((mut s, peer)) => {
                    let _ = std::io::Write::write_all(&mut s, format!("{name} {}\n", peer.ip()).as_bytes());
                }
                Err(_) => std::thread::sleep(Duration::from_millis(2)),
            }
        }
    });
    rx.recv_timeout(Duration::from_secs(5)).context("a task's server did not start")?;
    Ok(h)
}

/// One TCP request from namespace `ns` to `to`: (task name, client address it saw).
fn ask(ns: &str, to: std::net::SocketAddr) -> Option<(String, String)> {
    let path = crate::host::netlink::netns_path(ns);
    std::thread::spawn(move || {
        crate::host::netlink::enter_netns(&path).ok()?;
        let s = std::net::TcpStream::connect_timeout(&to, Duration::from_secs(2)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
        let mut line = String::new();
        std::io::BufRead::read_line(&mut std::io::BufReader::new(s), &mut line).ok()?;
        let mut it = line.split_whitespace();
        Some((it.next()?.to_string(), it.next()?.to_string()))
    })
    .join()
    .ok()
    .flatten()
}

/// A service with three tasks (one per host) behind a VIP and a published port: requests from
/// the outside host to every node's address, and from a container to the service's name.
fn service_mesh(sim: &mut Sim, file: &std::path::Path) -> anyhow::Result<bool> {
    const PUBLISHED: u16 = 30080;
    println!("\n== a service: a VIP, and port {PUBLISHED} published on every node (the routing mesh)");
    let mut yaml = std::fs::read_to_string(file)?;
    let mut tasks = Vec::new();
    for n in 1..=3 {
        let name = format!("hello{n}");
        let ns = sim.add_ns(&name)?;
        yaml += &format!("  - {{name: {name}, network: nginx-net, node: node{n}, ip: 10.0.1.{}, netns: {ns}, service: hello}}\n", 20 + n);
        tasks.push((name, ns, Ipv4Addr::new(10, 0, 1, 20 + n as u8)));
    }
    yaml += &format!("services:\n  - {{name: hello, network: nginx-net, vip: 10.0.1.100, ports: [{{port: 80, target: 8080, publish: {PUBLISHED}}}]}}\n");
    std::fs::write(file, &yaml)?;
    println!("   cluster file gains service `hello` (VIP 10.0.1.100, port 80 -> 8080, published {PUBLISHED})");
    println!("   and its tasks hello1..hello3, one per node, each answering its name and the client's address");
    if !sim::wait_for(Duration::from_secs(10), || tasks.iter().all(|(_, ns, ip)| sim.has_address(ns, *ip))) {
        println!("   the tasks were not wired in 10 s:\n{}", sim.agent_logs(3));
        return Ok(false);
    }
    let stop = std::sync::Arc::new(AtomicBool::new(false));
    let mut servers = Vec::new();
    for (name, ns, _) in &tasks {
        servers.push(serve_name(ns, name.clone(), stop.clone())?);
    }
    let outside = sim.ns_name("out");
    let mut good = true;
    let mut per_task = std::collections::BTreeMap::<String, usize>::new();
    for n in 1..=3 {
        let node = sim::host_vtep(n);
        let mut line = Vec::new();
        for _ in 0..4 {
            match ask(&outside, (node, PUBLISHED).into()) {
                Some((task, saw)) => {
                    good &= saw == sim::OUTSIDE_HOST.to_string();
                    *per_task.entry(task.clone()).or_default() += 1;
                    line.push(format!("{task} (saw {saw})"));
                }
                None => {
                    good = false;
                    line.push("no answer".into());
                }
            }
        }
        println!("   outside {} -> {node}:{PUBLISHED}: {}", sim::OUTSIDE_HOST, line.join(", "));
    }
    for _ in 0..60 {
        if let Some((task, _)) = ask(&outside, (sim::host_vtep(1), PUBLISHED).into()) {
            *per_task.entry(task).or_default() += 1;
        }
    }
    let spread: Vec<String> = per_task.iter().map(|(t, n)| format!("{t} {n}")).collect();
    println!("   72 requests from outside (12 over the three nodes, 60 more to node1) reached: {}", spread.join(", "));
    good &= per_task.len() == 3;
    let web1 = sim.ns_name("web1");
    let by_name = ask(&web1, (Ipv4Addr::new(10, 0, 1, 100), 80).into());
    let resolved = sim.exec(&web1, &["getent", "hosts", "hello"]).ok().map(|o| String::from_utf8_lossy(&o.stdout).split_whitespace().next().unwrap_or("").to_string());
    println!("   web1: getent hosts hello -> {}", resolved.as_deref().unwrap_or("(nothing)"));
    match &by_name {
        Some((task, saw)) => println!("   web1 -> hello:80 (the VIP) -> {task}, which saw {saw} (web1's own address)"),
        None => println!("   web1 -> hello:80 (the VIP): no answer"),
    }
    good &= resolved.as_deref() == Some("10.0.1.100") && by_name.is_some_and(|(_, saw)| saw == "10.0.1.2");
    let blocked = ask(&outside, (sim::host_vtep(1), 8080).into()).is_none();
    println!("   outside -> {}:8080 (the tasks' port, not published): {}", sim::host_vtep(1), if blocked { "no answer, as it should be" } else { "ANSWERED" });
    good &= blocked;
    println!("   every task saw the outside host's own address {}: {}", sim::OUTSIDE_HOST, if good { "yes" } else { "NO" });
    stop.store(true, Ordering::Relaxed);
    for s in servers {
        let _ = s.join();
    }
    Ok(good)
}

/// Where node1's agent serves its metrics in the demo (inside host 1's namespace).
const DEMO_METRICS: &str = "127.0.0.1:9464";

/// Watching a node: node1's agent restarted with `--metrics` (forwarding never stops), one
/// scrape, and `overlay monitor` catching a packet web1 sends from an address it does not own.
fn watching(sim: &mut Sim, cs: &[Container], file: &std::path::Path) -> anyhow::Result<bool> {
    println!("\n== watching node1: Prometheus metrics and the drop monitor");
    let h1 = sim.host_ns(1);
    sim.stop_agent("node1")?;
    sim.spawn_agent_extra("node1", &h1, file, &["--metrics", DEMO_METRICS])?;
    println!("   node1's agent restarted with --metrics {DEMO_METRICS}");
    let web1 = cs.iter().find(|c| c.name == "web1").context("web1")?;
    let web2 = cs.iter().find(|c| c.name == "web2").context("web2")?;
    let pin_root = sim.pin_root.clone();
    let mut monitor = Command::new(std::env::current_exe()?)
        .args(["monitor", "--node", "node1", "--count", "1"])
        .env("OVERLAY_PIN_ROOT", &pin_root)
        .env_remove("OVERLAY_STORE")
        .env_remove("OVERLAY_CLUSTER")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .context("starting overlay monitor")?;
    std::thread::sleep(Duration::from_millis(700));
    sim.exec(&web1.netns, &["ip", "addr", "add", "10.0.1.99/32", "dev", "eth0"])?;
    let spoofed = !sim.exec(&web1.netns, &["ping", "-c", "1", "-W", "1", "-I", "10.0.1.99", &web2.ip.to_string()])?.status.success();
    sim.exec(&web1.netns, &["ip", "addr", "del", "10.0.1.99/32", "dev", "eth0"])?;
    // The monitor stops after one event; it is ended by its PID if it saw none.
    let mut caught = String::new();
    for _ in 0..30 {
        if monitor.try_wait()?.is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    if monitor.try_wait()?.is_none() {
        // SAFETY: plain syscall on our own child's PID.
        unsafe { libc::kill(monitor.id() as i32, libc::SIGTERM) };
    }
    if let Ok(o) = monitor.wait_with_output() {
        caught = String::from_utf8_lossy(&o.stdout).trim().to_string();
    }
    println!("   web1 pings web2 from 10.0.1.99, an address it does not own: {}", if spoofed { "no answer" } else { "ANSWERED" });
    println!("   overlay monitor --node node1:");
    println!("   {}", if caught.is_empty() { "(nothing)" } else { &caught });
    let scraped = sim.exec(&h1, &["curl", "-sf", "--max-time", "5", &format!("http://{DEMO_METRICS}/metrics")])?;
    let body = String::from_utf8_lossy(&scraped.stdout);
    println!("   curl -s http://{DEMO_METRICS}/metrics (in host 1), some of its lines:");
    let wanted = ["overlay_drops_total{hook=\"egress\",reason=\"drop-spoofed-ip\"}", "overlay_vni_tx_packets_total{vni=\"4097\"}", "overlay_endpoints{", "overlay_map_entries{map=\"FDB\"", "overlay_reconcile_duration_seconds_count"];
    let lines: Vec<&str> = body.lines().filter(|l| wanted.iter().any(|w| l.starts_with(w))).collect();
    for l in &lines {
        println!("     {l}");
    }
    let ok = spoofed && caught.contains("drop-spoofed-ip") && lines.iter().any(|l| l.contains("drop-spoofed-ip"));
    if !ok {
        println!("   NOT as expected");
    }
    Ok(ok)
}

fn demo(args: DemoArgs) -> anyhow::Result<()> {
    for tool in ["ip", "ping", "tcpdump"] {
        if Command::new(tool).arg("-V").stdout(Stdio::null()).stderr(Stdio::null()).status().is_err() {
            bail!("`{tool}` is not installed; run `cargo xtask setup`");
        }
    }
    let exe = std::env::current_exe().context("finding the overlay binary")?;
    let mut sim = Sim::new("d", &exe)?;
    println!("== building a simulated cluster: 3 hosts on an underlay switch (192.168.50.0/24), prefix {}", sim.prefix);
    let (cs, file) = sim::start_standard(&mut sim, 3)?;
    println!("   cluster file: {}", file.display());
    println!("   agents: node1..node3, pins under {}", sim.pin_root.display());
    for c in &cs {
        println!("   container {:<6} {:<10} on node{}  {}  {}", c.name, c.network, c.node, c.ip, sim::docker_mac(c.ip));
    }
    check_interrupted()?;

    println!("\n== connectivity matrix (ping, row -> column; every container has a route to the other network too)");
    let m = matrix(&sim, &cs);
    print!("{:>8}", "");
    for c in &cs {
        print!("{:>7}", c.name);
    }
    println!();
    let mut wrong = 0;
    for (i, a) in cs.iter().enumerate() {
        print!("{:>8}", a.name);
        for (j, b) in cs.iter().enumerate() {
            let cell = match m[i][j] {
                None => "-".to_string(),
                Some(ok) => {
                    let expect = a.network == b.network;
                    if ok != expect {
                        wrong += 1;
                    }
                    match (ok, expect) {
                        (true, true) => "ok".into(),
                        (false, false) => "x".into(),
                        (true, false) => "LEAK".into(),
                        (false, true) => "FAIL".into(),
                    }
                }
            };
            print!("{cell:>7}");
        }
        println!();
    }
    println!("   ok = reachable (same network, across hosts and on one host); x = isolated (other network)");
    if wrong == 0 {
        println!("   all {} pairs as expected", cs.len() * (cs.len() - 1));
    } else {
        println!("   {wrong} pairs NOT as expected");
    }
    check_interrupted()?;

    let (web1, web2) = (&cs[0], &cs[1]);
    let mtu = sim.exec(&web1.netns, &["cat", "/sys/class/net/eth0/mtu"])?;
    println!("\n== container MTU: {} (eth0 of {})", String::from_utf8_lossy(&mtu.stdout).trim(), web1.name);
    let ok1450 = sim.ping(&web1.netns, web2.ip, 1, Some((1422, true)));
    let ok1451 = sim.ping(&web1.netns, web2.ip, 1, Some((1423, true)));
    println!("   1450-byte IPv4 packet with DF, web1 -> web2 across hosts: {}", if ok1450 { "delivered" } else { "LOST" });
    println!("   1451-byte IPv4 packet with DF: {}", if ok1451 { "delivered (unexpected)" } else { "refused (larger than the MTU)" });
    check_interrupted()?;

    let whole = whole_network(&mut sim, &cs, &file)?;
    check_interrupted()?;
    let services = service_mesh(&mut sim, &file)?;
    check_interrupted()?;
    let watched = watching(&mut sim, &cs, &file)?;
    check_interrupted()?;

    println!("\n== one VXLAN frame on host 2's underlay (tcpdump -i eth0 udp port 4789)");
    let pcap = sim.workdir.join("vxlan.pcap");
    let h2 = sim.host_ns(2);
    let mut dump = Command::new("ip")
        .args(["netns", "exec", &h2, "timeout", "10", "tcpdump", "-i", "eth0", "-nn", "-c", "1", "-U", "-w"])
        .arg(&pcap)
        .args(["udp", "port", "4789"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    std::thread::sleep(Duration::from_millis(700));
    sim.ping(&web1.netns, web2.ip, 2, None);
    let _ = dump.wait();
    match std::fs::read(&pcap).ok().as_deref().and_then(first_vxlan_frame) {
        Some(f) => {
            println!(
                "   outer {} -> {}  UDP {} -> {}  VXLAN flags {:#04x} VNI {}  ({} bytes on the wire)",
                f.outer_src, f.outer_dst, f.sport, f.dport, f.flags, f.vni, f.len
            );
            if let Ok(o) = Command::new("tcpdump").args(["-nn", "-e", "-r"]).arg(&pcap).stderr(Stdio::null()).output() {
                for l in String::from_utf8_lossy(&o.stdout).lines() {
                    println!("   tcpdump: {l}");
                }
            }
        }
        None => println!("   no VXLAN frame captured"),
    }
    check_interrupted()?;

    println!("\n== per-VNI counters (overlay stats --node nodeN)");
    for n in 1..=3 {
        let dp = Dataplane::open_pinned(&sim.pin_dir(&format!("node{n}")))?;
        println!("-- node{n}");
        for l in super::stats::render(&dp.stats()?).lines() {
            println!("   {l}");
        }
    }
    if args.hold {
        println!("\nholding the cluster; Ctrl-C removes it");
        while !INTERRUPTED.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    println!("\n== removing the simulated cluster");
    let errors = sim.cleanup();
    for e in &errors {
        println!("   cleanup: {e}");
    }
    if wrong != 0 || !ok1450 || ok1451 || !whole || !services || !watched {
        bail!("the demo saw unexpected results (see above)");
    }
    Ok(())
}
