//! A container's whole network, in simulated clusters with real traffic: several overlays per
//! container (one interface each, isolation per interface) and the way out to an "outside"
//! host behind a router namespace (masqueraded to the node's address, nothing opened from
//! outside, internal networks without one). Every namespace, agent and pin made here is
//! removed when the test ends (the `Sim` guard); traffic stays inside these namespaces.
mod support;

use std::{
    io::{Read, Write},
    net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream},
    path::Path,
    process::Stdio,
    time::Duration,
};

use overlay::{
    dataplane::{Dataplane, Stats},
    lab::sim::{self, OUTSIDE_HOST, Sim, host_vtep, wait_for},
};
use overlay_common::{Direction, Reason};
use support::*;

fn new_sim(tag: &str) -> Sim {
    require_root();
    Sim::new(tag, Path::new(OVERLAY_BIN)).expect("simulation")
}

fn stats(sim: &Sim, node: &str) -> Stats {
    Dataplane::open_pinned(&sim.pin_dir(node)).expect("pinned maps").stats().expect("stats")
}

fn sh(sim: &Sim, ns: &str, args: &[&str]) -> String {
    let o = sim.exec(ns, args).expect("exec");
    String::from_utf8_lossy(&o.stdout).to_string() + &String::from_utf8_lossy(&o.stderr)
}

/// Container namespaces of the multi-network cluster: `multi` (node 1) on front and back, `fa`
/// (node 2) on front, `bb` (node 3) and `bc` (node 2) on back.
struct Multi {
    multi: String,
    fa: String,
    bb: String,
    bc: String,
}

const FRONT: &str = "10.0.1";
const BACK: &str = "10.0.2";

fn multi_yaml(m: &Multi, multi_on_back: bool) -> String {
    let mut y = String::from("nodes:\n");
    for n in 1..=3 {
        y += &format!("  - {{name: node{n}, vtep: {}, underlay: eth0}}\n", host_vtep(n));
    }
    y += "networks:\n";
    y += &format!("  - {{name: front, vni: 4101, subnet: {FRONT}.0/24}}\n");
    y += &format!("  - {{name: back, vni: 4102, subnet: {BACK}.0/24}}\n");
    y += "endpoints:\n";
    y += &format!("  - {{name: multi, network: front, node: node1, ip: {FRONT}.2, netns: {}}}\n", m.multi);
    if multi_on_back {
        y += &format!("  - {{name: multi, network: back, node: node1, ip: {BACK}.2, netns: {}}}\n", m.multi);
    }
    y += &format!("  - {{name: fa, network: front, node: node2, ip: {FRONT}.3, netns: {}}}\n", m.fa);
    y += &format!("  - {{name: bb, network: back, node: node3, ip: {BACK}.3, netns: {}}}\n", m.bb);
    y += &format!("  - {{name: bc, network: back, node: node2, ip: {BACK}.4, netns: {}}}\n", m.bc);
    y
}

fn start_multi(sim: &mut Sim, multi_on_back: bool) -> (Multi, std::path::PathBuf) {
    sim.build_underlay(3).expect("underlay");
    let m = Multi {
        multi: sim.add_ns("multi").expect("ns"),
        fa: sim.add_ns("fa").expect("ns"),
        bb: sim.add_ns("bb").expect("ns"),
        bc: sim.add_ns("bc").expect("ns"),
    };
    let file = sim.write_file("cluster.yaml", &multi_yaml(&m, multi_on_back)).expect("file");
    for n in 1..=3 {
        let h = sim.host_ns(n);
        sim.spawn_agent(&format!("node{n}"), &h, &file).expect("agent");
    }
    let ip = |s: &str| -> Ipv4Addr { s.parse().expect("ip") };
    let wired = wait_for(Duration::from_secs(20), || {
        sim.has_address(&m.multi, ip(&format!("{FRONT}.2")))
            && (!multi_on_back || sim.has_address_on(&m.multi, "eth1", ip(&format!("{BACK}.2"))))
            && sim.has_address(&m.fa, ip(&format!("{FRONT}.3")))
            && sim.has_address(&m.bb, ip(&format!("{BACK}.3")))
            && sim.has_address(&m.bc, ip(&format!("{BACK}.4")))
    });
    assert!(wired, "every interface wired:\n{}", sim.agent_logs(3));
    (m, file)
}

fn a(s: &str) -> Ipv4Addr {
    s.parse().expect("ip")
}

#[test]
fn a_container_on_two_networks_reaches_both_and_they_stay_apart() {
    let mut sim = new_sim("n");
    let (m, _) = start_multi(&mut sim, true);
    // One interface per network, in file order, the default route on the first.
    let addrs = sh(&sim, &m.multi, &["ip", "-4", "-o", "addr"]);
    assert!(addrs.contains(&format!("eth0    inet {FRONT}.2/24")) && addrs.contains(&format!("eth1    inet {BACK}.2/24")), "{addrs}");
    let route = sh(&sim, &m.multi, &["ip", "route", "show", "default"]);
    assert!(route.contains(&format!("via {FRONT}.1 dev eth0")), "default route via front's gateway: {route}");
    // It reaches members of both networks, on other hosts.
    assert!(sim.ping(&m.multi, a(&format!("{FRONT}.3")), 2, None), "multi -> fa (front, node2)");
    assert!(sim.ping(&m.multi, a(&format!("{BACK}.3")), 2, None), "multi -> bb (back, node3)");
    assert!(sim.ping(&m.bc, a(&format!("{BACK}.2")), 2, None), "bc -> multi's eth1 (back)");
    // Members of one network still cannot reach the other: not directly...
    let before = stats(&sim, "node2").get(Reason::GatewayOverlay, Direction::Egress).packets;
    assert!(!sim.ping(&m.fa, a(&format!("{BACK}.4")), 2, None), "fa (front) must not reach bc (back)");
    assert!(!sim.ping(&m.fa, a(&format!("{BACK}.2")), 1, None), "fa (front) must not reach multi's back address");
    let after = stats(&sim, "node2").get(Reason::GatewayOverlay, Direction::Egress).packets;
    assert!(after >= before + 3, "the attempts went to the gateway and were dropped as drop-gateway-overlay ({before} -> {after})");
    // ...nor through the container's other interface: frames with back's address sent out of
    // its front interface are dropped and counted.
    sh(&sim, &m.multi, &["ip", "route", "add", &format!("{BACK}.3/32"), "dev", "eth0", "src", &format!("{BACK}.2")]);
    let spoof_before = stats(&sim, "node1").get(Reason::SpoofedIp, Direction::Egress).packets;
    assert!(!sim.ping(&m.multi, a(&format!("{BACK}.3")), 2, None), "back's address out of the front interface must not get through");
    let spoof_after = stats(&sim, "node1").get(Reason::SpoofedIp, Direction::Egress).packets;
    assert!(spoof_after > spoof_before, "counted as drop-spoofed-ip on node1 ({spoof_before} -> {spoof_after})");
}

/// Pings `count` times from `ns` to `dst` at 100 per second in the background.
fn flood(sim: &Sim, ns: &str, dst: Ipv4Addr, count: u32) -> std::process::Child {
    std::process::Command::new("ip")
        .args(["netns", "exec", ns, "ping", "-q", "-i", "0.01", "-W", "1", "-c", &count.to_string(), &dst.to_string()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("ping in {}: {e}", sim.prefix))
}

/// Received count of a finished `ping -q`, asserting every packet came back.
fn assert_no_loss(child: std::process::Child, count: u32, what: &str) {
    let out = child.wait_with_output().expect("ping result");
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().find(|l| l.contains("packets transmitted")).unwrap_or_else(|| panic!("no ping summary for {what}:\n{text}"));
    assert!(line.starts_with(&format!("{count} packets transmitted, {count} received")), "{what}: {line}");
}

#[test]
fn connect_and_disconnect_at_runtime_lose_nothing_on_the_other_interface() {
    let mut sim = new_sim("c");
    let (m, file) = start_multi(&mut sim, false);
    let count = 400;
    let pinger = flood(&sim, &m.multi, a(&format!("{FRONT}.3")), count);
    std::thread::sleep(Duration::from_millis(500));
    // Connect: the cluster file gains multi's back endpoint.
    std::fs::write(&file, multi_yaml(&m, true)).expect("edit");
    assert!(wait_for(Duration::from_secs(5), || sim.has_address_on(&m.multi, "eth1", a(&format!("{BACK}.2")))), "eth1 appears");
    // The other host's agent reads the edited file on its own (within a second): the new
    // interface carries traffic once it has.
    assert!(wait_for(Duration::from_secs(5), || sim.ping(&m.multi, a(&format!("{BACK}.3")), 1, None)), "the new interface carries traffic");
    // Disconnect again.
    std::fs::write(&file, multi_yaml(&m, false)).expect("edit");
    assert!(
        wait_for(Duration::from_secs(5), || !sh(&sim, &m.multi, &["ip", "-o", "link"]).contains("eth1")),
        "eth1 goes with the endpoint"
    );
    assert_no_loss(pinger, count, "ping on eth0 while eth1 came and went");
    assert!(sh(&sim, &m.multi, &["ip", "route", "show", "default"]).contains("dev eth0"), "the default route stayed on eth0");
}

// ---------------------------------------------------------------------------------------------
// The way out

/// Two hosts, the outside world behind a router (link MTU `outside_mtu`), containers `web1`
/// (node 1) and `web2` (node 2) on `front`, and `iso` (node 1) on the internal network `back`.
struct WayOut {
    sim: Sim,
    web1: String,
    web2: String,
    iso: String,
    outside: String,
}

fn start_way_out(tag: &str, outside_mtu: u32) -> WayOut {
    let mut sim = new_sim(tag);
    sim.build_underlay(2).expect("underlay");
    let outside = sim.add_outside(2, outside_mtu).expect("outside");
    let (web1, web2, iso) = (sim.add_ns("web1").expect("ns"), sim.add_ns("web2").expect("ns"), sim.add_ns("iso").expect("ns"));
    let mut y = String::from("nodes:\n");
    for n in 1..=2 {
        y += &format!("  - {{name: node{n}, vtep: {}, underlay: eth0}}\n", host_vtep(n));
    }
    y += &format!("networks:\n  - {{name: front, vni: 4201, subnet: {FRONT}.0/24}}\n  - {{name: back, vni: 4202, subnet: {BACK}.0/24, internal: true}}\n");
    y += "endpoints:\n";
    y += &format!("  - {{name: web1, network: front, node: node1, ip: {FRONT}.2, netns: {web1}}}\n");
    y += &format!("  - {{name: web2, network: front, node: node2, ip: {FRONT}.3, netns: {web2}}}\n");
    y += &format!("  - {{name: iso, network: back, node: node1, ip: {BACK}.2, netns: {iso}}}\n");
    let file = sim.write_file("cluster.yaml", &y).expect("file");
    for n in 1..=2 {
        let h = sim.host_ns(n);
        sim.spawn_agent(&format!("node{n}"), &h, &file).expect("agent");
    }
    let ok = wait_for(Duration::from_secs(20), || {
        sim.has_address(&web1, a(&format!("{FRONT}.2"))) && sim.has_address(&web2, a(&format!("{FRONT}.3"))) && sim.has_address(&iso, a(&format!("{BACK}.2")))
    });
    assert!(ok, "containers wired:\n{}", sim.agent_logs(2));
    WayOut { sim, web1, web2, iso, outside }
}

/// A TCP server in the outside namespace: accepts `n` connections, reads each to its end and
/// returns (peer address, bytes, FNV-1a of the bytes) per connection.
fn outside_server(ns: &str, port: u16, n: usize) -> std::thread::JoinHandle<Vec<(Ipv4Addr, usize, u64)>> {
    let (tx, rx) = std::sync::mpsc::channel();
    let h = in_netns(ns, move || {
        let l = TcpListener::bind(SocketAddr::from((OUTSIDE_HOST, port))).expect("bind");
        tx.send(()).expect("ready");
        let mut seen = Vec::new();
        l.set_nonblocking(false).expect("blocking");
        for _ in 0..n {
            let (mut s, peer) = l.accept().expect("accept");
            s.set_read_timeout(Some(Duration::from_secs(20))).expect("timeout");
            let mut buf = Vec::new();
            s.read_to_end(&mut buf).expect("read");
            let ip = match peer.ip() {
                std::net::IpAddr::V4(v) => v,
                other => panic!("IPv6 peer {other}"),
            };
            seen.push((ip, buf.len(), fnv(&buf)));
        }
        seen
    });
    rx.recv_timeout(Duration::from_secs(5)).expect("server ready");
    h
}

fn fnv(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ *b as u64).wrapping_mul(0x100_0000_01b3))
}

/// Sends `data` from namespace `ns` to the outside host over TCP.
fn send_out(ns: &str, port: u16, data: Vec<u8>) -> std::thread::JoinHandle<std::io::Result<()>> {
    in_netns(ns, move || {
        let mut s = TcpStream::connect_timeout(&SocketAddr::from((OUTSIDE_HOST, port)), Duration::from_secs(5))?;
        s.set_write_timeout(Some(Duration::from_secs(20)))?;
        s.write_all(&data)?;
        s.shutdown(std::net::Shutdown::Write)
    })
}

#[test]
fn containers_reach_the_outside_masqueraded_and_nothing_comes_in() {
    let w = start_way_out("w", 1280);
    let sim = &w.sim;
    // ICMP from containers on both hosts.
    assert!(sim.ping(&w.web1, OUTSIDE_HOST, 2, None), "web1 (node1) pings the outside host:\n{}", sim.agent_logs(2));
    assert!(sim.ping(&w.web2, OUTSIDE_HOST, 2, None), "web2 (node2) pings the outside host");
    // TCP: the outside host sees each node's own address; 1 MB from web1 crosses the 1280-byte
    // hop (path-MTU discovery through the way out: the router's "fragmentation needed" reaches
    // the container).
    let data: Vec<u8> = (0..1_000_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let server = outside_server(&w.outside, 8080, 2);
    send_out(&w.web1, 8080, data.clone()).join().expect("thread").expect("web1 sends 1 MB through the 1280-byte hop");
    send_out(&w.web2, 8080, b"hello from web2".to_vec()).join().expect("thread").expect("web2 connects");
    let seen = server.join().expect("server");
    assert_eq!(seen[0], (host_vtep(1), data.len(), fnv(&data)), "web1's megabyte arrived whole, from node1's address");
    assert_eq!(seen[1].0, host_vtep(2), "web2's connection came from node2's address");
    let s1 = stats(sim, "node1");
    assert!(s1.get(Reason::FwdGateway, Direction::Egress).packets > 0, "counted as fwd-gateway");
    let pmtu = sh(sim, &w.web1, &["ip", "route", "get", &OUTSIDE_HOST.to_string()]);
    assert!(pmtu.contains("mtu 1280"), "web1 learnt the 1280-byte path MTU from the router's ICMP error: {pmtu}");

    // A UDP flow from source port 4789 (the VXLAN port) gets its replies: masquerading moves it
    // off that port, so the ingress program does not take the replies for overlay traffic.
    let echo = in_netns(&w.outside, || {
        let s = std::net::UdpSocket::bind((OUTSIDE_HOST, 7777)).expect("bind");
        s.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
        let mut buf = [0u8; 64];
        let (n, peer) = s.recv_from(&mut buf).expect("a datagram from web1");
        s.send_to(&buf[..n], peer).expect("echo");
        peer
    });
    std::thread::sleep(Duration::from_millis(200));
    let got = in_netns(&w.web1, || {
        let s = std::net::UdpSocket::bind(("0.0.0.0", 4789)).expect("bind 4789");
        s.set_read_timeout(Some(Duration::from_secs(3))).expect("timeout");
        s.send_to(b"ping-4789", (OUTSIDE_HOST, 7777)).expect("send");
        let mut buf = [0u8; 64];
        s.recv_from(&mut buf).map(|(n, _)| buf[..n].to_vec()).ok()
    });
    assert_eq!(got.join().expect("thread").as_deref(), Some(&b"ping-4789"[..]), "the reply to a source-port-4789 flow reached web1");
    let peer = echo.join().expect("thread");
    assert!(peer.port() != 4789 && peer.ip() == std::net::IpAddr::V4(host_vtep(1)), "masqueraded to node1 off port 4789: {peer}");

    // Nothing from outside opens a connection to a container, even with a route to it.
    let listener = in_netns(&w.web1, || {
        let l = TcpListener::bind(SocketAddr::from(([0, 0, 0, 0], 9090))).expect("bind");
        l.set_nonblocking(true).expect("nonblocking");
        std::thread::sleep(Duration::from_secs(3));
        l.accept().is_ok()
    });
    let rt = sim.ns_name("rt");
    sim::ip(&["-n", &rt, "route", "add", &format!("{FRONT}.0/24"), "via", &host_vtep(1).to_string()]).expect("router route");
    let attempt = in_netns(&w.outside, || TcpStream::connect_timeout(&SocketAddr::from(([10, 0, 1, 2], 9090)), Duration::from_secs(2)).is_ok());
    assert!(!attempt.join().expect("thread"), "the outside host must not connect to web1");
    assert!(!listener.join().expect("thread"), "web1's listener saw no connection");
    assert!(!sim.ping(&w.outside, a(&format!("{FRONT}.2")), 1, None), "nor ping it");
    let chain = sh(sim, &sim.host_ns(1), &["nft", "list", "chain", "ip", "overlay", "forward"]);
    let dropped = chain.lines().find(|l| l.contains("overlay:in-new")).and_then(|l| l.split("packets ").nth(1)).and_then(|v| v.split_whitespace().next()).and_then(|v| v.parse::<u64>().ok());
    assert!(dropped.is_some_and(|n| n >= 2), "node1's table dropped the inbound attempts (SYN and echo request):\n{chain}");

    // The internal network has no way out: dropped and counted.
    let before = stats(sim, "node1").get(Reason::GatewayInternal, Direction::Egress).packets;
    let route = sh(sim, &w.iso, &["ip", "route", "show", "default"]);
    assert!(route.trim().is_empty(), "an internal network's container gets no default route: {route}");
    sh(sim, &w.iso, &["ip", "route", "add", "default", "via", &format!("{BACK}.1")]);
    assert!(!sim.ping(&w.iso, OUTSIDE_HOST, 2, None), "iso (internal) must not get out");
    let after = stats(sim, "node1").get(Reason::GatewayInternal, Direction::Egress).packets;
    assert!(after >= before + 2, "counted as drop-gateway-internal ({before} -> {after})");
}

#[test]
fn the_way_out_survives_an_agent_restart_and_down_removes_it() {
    let mut w = start_way_out("x", 1500);
    let h1 = w.sim.host_ns(1);
    let forwarding = |sim: &Sim| sh(sim, &h1, &["cat", "/proc/sys/net/ipv4/ip_forward"]).trim().to_string();
    let accept_local = |sim: &Sim| sh(sim, &h1, &["cat", "/proc/sys/net/ipv4/conf/lo/accept_local"]).trim().to_string();
    let tables = |sim: &Sim| sh(sim, &h1, &["nft", "list", "tables"]);
    assert!(tables(&w.sim).contains("table ip overlay"), "the agent made its table");
    assert_eq!(forwarding(&w.sim), "1", "and turned forwarding on");
    assert_eq!(accept_local(&w.sim), "1", "and lo's accept_local (the mesh's replies to the node itself)");
    assert!(w.sim.ping(&w.web1, OUTSIDE_HOST, 1, None), "the way out works");
    // A table the agent did not make stays as it is, whatever the agent does.
    sh(&w.sim, &h1, &["nft", "add", "table", "ip", "someone-else"]);
    sh(&w.sim, &h1, &["nft", "add", "chain", "ip", "someone-else", "c"]);
    sh(&w.sim, &h1, &["nft", "add", "rule", "ip", "someone-else", "c", "counter"]);
    let foreign = sh(&w.sim, &h1, &["nft", "list", "table", "ip", "someone-else"]);
    let count = 500;
    let pinger = flood(&w.sim, &w.web1, OUTSIDE_HOST, count);
    std::thread::sleep(Duration::from_millis(500));
    let file = w.sim.workdir.join("cluster.yaml");
    w.sim.stop_agent("node1").expect("stop");
    std::thread::sleep(Duration::from_millis(500));
    w.sim.spawn_agent("node1", &h1, &file).expect("restart");
    assert_no_loss(pinger, count, "ping through the way out across an agent restart");
    let log = std::fs::read_to_string(w.sim.agent_log("node1")).unwrap_or_default();
    assert_eq!(log.matches("change=Table").count(), 1, "the restarted agent adopted the table instead of rebuilding it:\n{log}");
    // Tampered with while no agent runs (forward rules flushed, a set element gone, forwarding
    // off, a container's route deleted): the next agent repairs all of it.
    w.sim.stop_agent("node1").expect("stop");
    sh(&w.sim, &h1, &["nft", "flush", "chain", "ip", "overlay", "forward"]);
    sh(&w.sim, &h1, &["nft", "delete", "element", "ip", "overlay", "egress", &format!("{{ {FRONT}.0/24 }}")]);
    sh(&w.sim, &h1, &["sysctl", "-qw", "net.ipv4.ip_forward=0"]);
    sh(&w.sim, &h1, &["sysctl", "-qw", "net.ipv4.conf.lo.accept_local=0"]);
    sh(&w.sim, &h1, &["ip", "route", "del", &format!("{FRONT}.2/32")]);
    assert!(!w.sim.ping(&w.web1, OUTSIDE_HOST, 1, None), "sanity: the tampering broke the way out");
    w.sim.spawn_agent("node1", &h1, &file).expect("restart");
    assert!(wait_for(Duration::from_secs(10), || w.sim.ping(&w.web1, OUTSIDE_HOST, 1, None)), "the next agent repaired the way out");
    let chain = sh(&w.sim, &h1, &["nft", "list", "chain", "ip", "overlay", "forward"]);
    assert!(chain.contains("overlay:in-new:v1"), "forward rules back:\n{chain}");
    assert_eq!(forwarding(&w.sim), "1", "forwarding back on");
    assert_eq!(accept_local(&w.sim), "1", "lo's accept_local back on");
    assert_eq!(sh(&w.sim, &h1, &["nft", "list", "table", "ip", "someone-else"]), foreign, "the other table is untouched");
    w.sim.stop_agent("node1").expect("stop");
    let down = w.sim.overlay(&h1, &["down", "--node", "node1", "--pin-root", &w.sim.pin_root.display().to_string()]).expect("down");
    assert!(down.status.success(), "{}", String::from_utf8_lossy(&down.stderr));
    assert!(!tables(&w.sim).contains("table ip overlay"), "down removed the table: {}", tables(&w.sim));
    assert_eq!(sh(&w.sim, &h1, &["nft", "list", "table", "ip", "someone-else"]), foreign, "down left the other table alone");
    assert_eq!(forwarding(&w.sim), "0", "and put forwarding back as it was");
    assert_eq!(accept_local(&w.sim), "0", "and lo's accept_local");
    let routes = sh(&w.sim, &h1, &["ip", "route"]);
    assert!(!routes.contains(FRONT), "no route to a container left: {routes}");
}
