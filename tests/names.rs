//! Names, in a simulated cluster with real traffic: containers resolve each other by name
//! through their gateway (the node's resolver), only within their networks; other names go to
//! a fake upstream DNS server the test runs in the "outside" namespace. Every namespace, agent,
//! pin and resolv.conf made here is removed when the test ends (the `Sim` guard).
mod support;

use std::{
    io::{Read, Write},
    net::{Ipv4Addr, TcpListener, UdpSocket},
    path::Path,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use hickory_proto::{
    op::{Message, OpCode, Query, ResponseCode},
    rr::{Name, RData, Record, RecordType, rdata},
};
use overlay::{
    lab::sim::{OUTSIDE_DNS, Sim, host_vtep, wait_for},
};
use support::*;

/// Asks `server` (UDP) from inside the current namespace; `None` after `timeout`.
fn ask(server: Ipv4Addr, name: &str, t: RecordType, timeout: Duration) -> Option<Message> {
    let mut q = Message::query();
    q.metadata.id = (Instant::now().elapsed().subsec_nanos() as u16) ^ 0x5a5a;
    q.metadata.recursion_desired = true;
    q.add_query(Query::query(Name::from_ascii(name).expect("name"), t));
    let sock = UdpSocket::bind(("0.0.0.0", 0)).ok()?;
    sock.set_read_timeout(Some(timeout)).ok()?;
    sock.send_to(&q.to_vec().ok()?, (server, 53)).ok()?;
    let mut buf = [0u8; 4096];
    let (n, _) = sock.recv_from(&mut buf).ok()?;
    Message::from_vec(&buf[..n]).ok()
}

fn a_records(m: &Message) -> Vec<Ipv4Addr> {
    m.answers
        .iter()
        .filter_map(|r| match r.data {
            RData::A(a) => Some(a.0),
            _ => None,
        })
        .collect()
}

/// The fake upstream: `ext.example.` A 198.51.100.7; `big.example.` truncated over UDP and
/// A 198.51.100.8 over TCP; NXDOMAIN for everything else. Serves until `stop`.
fn upstream(ns: &str, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<()> {
    let (tx, rx) = std::sync::mpsc::channel();
    let h = in_netns(ns, move || {
        let udp = UdpSocket::bind((OUTSIDE_DNS, 53)).expect("bind udp 53");
        let tcp = TcpListener::bind((OUTSIDE_DNS, 53)).expect("bind tcp 53");
        udp.set_read_timeout(Some(Duration::from_millis(100))).expect("timeout");
        tcp.set_nonblocking(true).expect("nonblocking");
        tx.send(()).expect("ready");
        let reply = |q: &Message, tcp: bool| -> Message {
            let mut r = Message::response(q.metadata.id, OpCode::Query);
            r.metadata.recursion_available = true;
            r.add_queries(q.queries.clone());
            let name = q.queries[0].name().to_ascii();
            match name.as_str() {
                "ext.example." => {
                    r.add_answer(Record::from_rdata(q.queries[0].name().clone(), 60, RData::A(rdata::A(Ipv4Addr::new(198, 51, 100, 7)))));
                }
                "big.example." if !tcp => r.metadata.truncation = true,
                "big.example." => {
                    r.add_answer(Record::from_rdata(q.queries[0].name().clone(), 60, RData::A(rdata::A(Ipv4Addr::new(198, 51, 100, 8)))));
                }
                _ => r.metadata.response_code = ResponseCode::NXDomain,
            }
            r
        };
        let t0 = Instant::now();
        let mut buf = [0u8; 4096];
        while !stop.load(Ordering::Relaxed) && t0.elapsed() < Duration::from_secs(120) {
            if let Ok((n, from)) = udp.recv_from(&mut buf) {
                if let Ok(q) = Message::from_vec(&buf[..n]) {
                    let _ = udp.send_to(&reply(&q, false).to_vec().expect("encode"), from);
                }
            }
            if let Ok((mut s, _)) = tcp.accept() {
                s.set_nonblocking(false).expect("blocking");
                s.set_read_timeout(Some(Duration::from_secs(2))).expect("timeout");
                let mut len = [0u8; 2];
                if s.read_exact(&mut len).is_ok() {
                    let mut q = vec![0u8; u16::from_be_bytes(len) as usize];
                    if s.read_exact(&mut q).is_ok() {
                        if let Ok(q) = Message::from_vec(&q) {
                            let r = reply(&q, true).to_vec().expect("encode");
                            let _ = s.write_all(&(r.len() as u16).to_be_bytes());
                            let _ = s.write_all(&r);
                        }
                    }
                }
            }
        }
    });
    rx.recv_timeout(Duration::from_secs(5)).expect("upstream ready");
    h
}

struct Names {
    sim: Sim,
    w1: String,
    w2: String,
    w3: String,
    app: String,
    file: std::path::PathBuf,
}

fn yaml(n: &Names, late: bool) -> String {
    let mut y = String::from("nodes:\n");
    for i in 1..=3 {
        y += &format!("  - {{name: node{i}, vtep: {}, underlay: eth0}}\n", host_vtep(i));
    }
    y += "networks:\n  - {name: front, vni: 4301, subnet: 10.0.1.0/24}\n  - {name: back, vni: 4302, subnet: 10.0.2.0/24}\n";
    y += "services:\n  - {name: cache, network: front, mode: dnsrr, ports: [{port: 6379}]}\n";
    y += "endpoints:\n";
    y += &format!("  - {{name: web1, network: front, node: node1, ip: 10.0.1.2, netns: {}}}\n", n.w1);
    y += &format!("  - {{name: web2, network: front, node: node2, ip: 10.0.1.3, netns: {}, aliases: [www], service: cache}}\n", n.w2);
    y += &format!("  - {{name: web3, network: front, node: node3, ip: 10.0.1.4, netns: {}, aliases: [www], service: cache}}\n", n.w3);
    y += &format!("  - {{name: app, network: front, node: node3, ip: 10.0.1.5, netns: {}}}\n", n.app);
    y += &format!("  - {{name: app, network: back, node: node3, ip: 10.0.2.5, netns: {}}}\n", n.app);
    y += "  - {name: db1, network: back, node: node2, ip: 10.0.2.2}\n";
    if late {
        y += "  - {name: late, network: front, node: node1, ip: 10.0.1.9}\n";
    }
    y
}

fn start() -> Names {
    require_root();
    let mut sim = Sim::new("q", Path::new(OVERLAY_BIN)).expect("simulation");
    sim.build_underlay(3).expect("underlay");
    sim.add_outside(3, 1500).expect("outside");
    let (w1, w2, w3, app) = (sim.add_ns("w1").expect("ns"), sim.add_ns("w2").expect("ns"), sim.add_ns("w3").expect("ns"), sim.add_ns("app").expect("ns"));
    let mut n = Names { sim, w1, w2, w3, app, file: Default::default() };
    n.file = n.sim.write_file("cluster.yaml", &yaml(&n, false)).expect("file");
    for i in 1..=3 {
        let h = n.sim.host_ns(i);
        let f = n.file.clone();
        n.sim.spawn_agent(&format!("node{i}"), &h, &f).expect("agent");
    }
    let ok = wait_for(Duration::from_secs(20), || n.sim.has_address(&n.w1, Ipv4Addr::new(10, 0, 1, 2)) && n.sim.has_address_on(&n.app, "eth1", Ipv4Addr::new(10, 0, 2, 5)));
    assert!(ok, "wired:\n{}", n.sim.agent_logs(3));
    n
}

/// Every IPv4 address `what` resolves to in `ns` (`getent ahostsv4`), sorted, without repeats.
fn addresses(sim: &Sim, ns: &str, what: &str) -> Vec<Ipv4Addr> {
    let o = sim.exec(ns, &["getent", "ahostsv4", what]).expect("getent");
    let mut a: Vec<Ipv4Addr> = String::from_utf8_lossy(&o.stdout).lines().filter_map(|l| l.split_whitespace().next()?.parse().ok()).collect();
    a.sort();
    a.dedup();
    a
}

fn getent(sim: &Sim, ns: &str, what: &str) -> Option<String> {
    let o = sim.exec(ns, &["getent", "hosts", what]).expect("getent");
    o.status.success().then(|| String::from_utf8_lossy(&o.stdout).trim().to_string())
}

#[test]
fn containers_resolve_names_of_their_networks_across_hosts_and_others_upstream() {
    let n = start();
    let sim = &n.sim;
    let stop = Arc::new(AtomicBool::new(false));
    let up = upstream(&sim.ns_name("out"), stop.clone());
    let gw = Ipv4Addr::new(10, 0, 1, 1);
    let conf = std::fs::read_to_string(format!("/etc/netns/{}/resolv.conf", n.w1)).expect("the agent wrote w1's resolv.conf");
    assert!(conf.contains("nameserver 10.0.1.1"), "{conf}");

    // By name across hosts, with no option: `ip netns exec` mounts the resolv.conf.
    assert!(wait_for(Duration::from_secs(5), || getent(sim, &n.w1, "web2").is_some()), "web2 resolves in w1:\n{}", sim.agent_logs(3));
    assert_eq!(getent(sim, &n.w1, "web2").as_deref(), Some("10.0.1.3        web2"));
    assert!(sim.exec(&n.w1, &["ping", "-c", "1", "-W", "2", "web3"]).expect("ping").status.success(), "ping web3 by name from node1 to node3");
    assert_eq!(getent(sim, &n.w1, "web2.front").and_then(|s| s.split_whitespace().next().map(str::to_string)).as_deref(), Some("10.0.1.3"), "NAME.NETWORK");
    assert_eq!(getent(sim, &n.w1, "db1"), None, "back's name does not resolve on front");
    assert_eq!(getent(sim, &n.app, "db1").and_then(|s| s.split_whitespace().next().map(str::to_string)).as_deref(), Some("10.0.2.2"), "app, on both, sees back's names");
    assert_eq!(getent(sim, &n.app, "web1").and_then(|s| s.split_whitespace().next().map(str::to_string)).as_deref(), Some("10.0.1.2"));
    // A dnsrr service: its name and `tasks.NAME` give its tasks on other hosts, answered by the
    // datapath (w1) and by the agent's resolver (app, on two networks); not on another network.
    let tasks = vec![Ipv4Addr::new(10, 0, 1, 3), Ipv4Addr::new(10, 0, 1, 4)];
    for ns in [&n.w1, &n.app] {
        for name in ["cache", "tasks.cache", "tasks.cache.front"] {
            assert_eq!(addresses(sim, ns, name), tasks, "{name} in {ns}");
        }
    }

    let (w1, w1b) = (n.w1.clone(), n.w1.clone());
    let checks = in_netns(&w1, move || {
        let t = Duration::from_secs(3);
        // Round robin: both addresses of the shared alias, in changing order.
        let mut firsts = std::collections::BTreeSet::new();
        for _ in 0..20 {
            let m = ask(gw, "www.", RecordType::A, t).expect("www answered");
            let mut a = a_records(&m);
            firsts.insert(a[0]);
            a.sort();
            assert_eq!(a, [Ipv4Addr::new(10, 0, 1, 3), Ipv4Addr::new(10, 0, 1, 4)], "both addresses of www");
            assert!(m.answers.iter().all(|r| r.ttl <= 5), "a short TTL");
        }
        assert_eq!(firsts.len(), 2, "shuffled order (DNS round robin)");
        let aaaa = ask(gw, "web2.", RecordType::AAAA, t).expect("AAAA answered");
        assert!(aaaa.answers.is_empty() && aaaa.metadata.response_code == ResponseCode::NoError, "AAAA of a known name: NOERROR, empty");
        let ptr = ask(gw, "3.1.0.10.in-addr.arpa.", RecordType::PTR, t).expect("PTR answered");
        assert_eq!(ptr.answers.first().map(|r| r.data.to_string()).as_deref(), Some("web2."), "PTR of an overlay address");
        // Names the overlay does not know: relayed from the upstream, NXDOMAIN relayed, a
        // truncated answer completed over TCP.
        assert_eq!(a_records(&ask(gw, "ext.example.", RecordType::A, t).expect("relayed")), [Ipv4Addr::new(198, 51, 100, 7)]);
        assert_eq!(ask(gw, "nope.example.", RecordType::A, t).expect("relayed").metadata.response_code, ResponseCode::NXDomain);
        assert_eq!(a_records(&ask(gw, "big.example.", RecordType::A, t).expect("relayed over TCP")), [Ipv4Addr::new(198, 51, 100, 8)]);
    });
    checks.join().expect("checks in w1");

    // 10,000 lookups from 50 parallel clients, none failing.
    let clients: Vec<_> = (0..50)
        .map(|_| {
            in_netns(&w1b, move || {
                (0..200).filter(|_| ask(gw, "web3.", RecordType::A, Duration::from_secs(2)).is_none_or(|m| a_records(&m) != [Ipv4Addr::new(10, 0, 1, 4)])).count()
            })
        })
        .collect();
    let failed: usize = clients.into_iter().map(|h| h.join().expect("client")).sum();
    assert_eq!(failed, 0, "10,000 lookups from 50 clients: {failed} failed");

    // The datapath answered the single-network containers' questions (the pinned name table),
    // so names keep resolving while the agent is stopped.
    let dp = overlay::dataplane::Dataplane::open_pinned(&sim.pin_dir("node1")).expect("pins");
    let answered = dp.stats().expect("stats").get(overlay_common::Reason::DnsReply, overlay_common::Direction::Egress).packets;
    assert!(answered >= 10_000, "the datapath answered the lookups: {answered}");
    let mut n = n;
    n.sim.stop_agent("node1").expect("stop");
    assert_eq!(getent(&n.sim, &n.w1, "web2").as_deref(), Some("10.0.1.3        web2"), "resolves with node1's agent stopped");
    assert!(n.sim.exec(&n.w1, &["ping", "-c", "1", "-W", "2", "web3"]).expect("ping").status.success(), "ping by name with the agent stopped");
    let (h1, file) = (n.sim.host_ns(1), n.file.clone());
    n.sim.spawn_agent("node1", &h1, &file).expect("restart");
    let sim = &n.sim;

    // A name added or removed is seen on every node.
    std::fs::write(&n.file, yaml(&n, true)).expect("edit");
    for ns in [&n.w1, &n.w2, &n.w3] {
        assert!(wait_for(Duration::from_secs(5), || getent(sim, ns, "late").is_some()), "late resolves in {ns}");
    }
    std::fs::write(&n.file, yaml(&n, false)).expect("edit");
    for ns in [&n.w1, &n.w2, &n.w3] {
        assert!(wait_for(Duration::from_secs(5), || getent(sim, ns, "late").is_none()), "late is gone in {ns}");
    }

    // No upstream answering: SERVFAIL within a bounded time.
    stop.store(true, Ordering::Relaxed);
    up.join().expect("upstream");
    let t0 = Instant::now();
    let m = in_netns(&n.w2, move || ask(Ipv4Addr::new(10, 0, 1, 1), "gone.example.", RecordType::A, Duration::from_secs(8))).join().expect("ask");
    let took = t0.elapsed();
    assert_eq!(m.expect("an answer").metadata.response_code, ResponseCode::ServFail, "no upstream: SERVFAIL");
    assert!(took < Duration::from_secs(6), "within the forward deadline: {took:?}");
}
