//! Services, in a simulated three-host cluster with real TCP: a VIP balanced over four tasks on
//! three hosts (each a tiny server that answers with its name and the client address it saw),
//! connections that stay with their task, a task drained from the service, an agent restart
//! under open connections, ping to the VIP, names, and isolation from another network. Every
//! namespace, agent and pin made here is removed when the test ends (the `Sim` guard).
mod support;

use std::{
    collections::BTreeMap,
    io::{BufRead, BufReader, Write},
    net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream},
    path::Path,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::Duration,
};

use overlay::{
    lab::sim::{Sim, host_vtep, wait_for},
};
use support::*;

const VIP: Ipv4Addr = Ipv4Addr::new(10, 0, 1, 100);
const CLIENT: Ipv4Addr = Ipv4Addr::new(10, 0, 1, 2);
/// (task, node, address)
const TASKS: [(&str, usize, Ipv4Addr); 4] = [
    ("t1", 1, Ipv4Addr::new(10, 0, 1, 10)),
    ("t2", 2, Ipv4Addr::new(10, 0, 1, 11)),
    ("t3", 3, Ipv4Addr::new(10, 0, 1, 12)),
    ("t4", 3, Ipv4Addr::new(10, 0, 1, 13)),
];

/// A task's server on port 8080: to each connection it first writes "NAME CLIENT-ADDRESS\n",
/// then echoes every line until the client closes. Stops when `stop` is set.
fn serve(ns: &str, name: &'static str, stop: Arc<AtomicBool>) -> JoinHandle<()> {
    serve_on(ns, name, 8080, stop)
}

/// [`serve`] on `port`.
fn serve_on(ns: &str, name: &'static str, port: u16, stop: Arc<AtomicBool>) -> JoinHandle<()> {
    let (tx, rx) = std::sync::mpsc::channel();
    let h = in_netns(ns, move || {
        let l = TcpListener::bind(("0.0.0.0", port)).expect("bind");
        l.set_nonblocking(true).expect("nonblocking");
        tx.send(()).expect("ready");
        while !stop.load(Ordering::Relaxed) {
            match l.accept() {
                Ok((s, peer)) => {
                    let stop = stop.clone();
                    std::thread::spawn(move || {
                        let _ = s.set_nonblocking(false);
                        let _ = s.set_read_timeout(Some(Duration::from_millis(200)));
                        let mut w = s.try_clone().expect("clone");
                        let _ = writeln!(w, "{name} {}", peer.ip());
                        let mut r = BufReader::new(s);
                        let mut line = String::new();
                        while !stop.load(Ordering::Relaxed) {
                            line.clear();
                            match r.read_line(&mut line) {
                                Ok(0) => break,
                                Ok(_) => {
                                    let _ = w.write_all(line.as_bytes());
                                }
                                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock || e.kind() == std::io::ErrorKind::TimedOut => {}
                                Err(_) => break,
                            }
                        }
                    });
                }
                Err(_) => std::thread::sleep(Duration::from_millis(5)),
            }
        }
    });
    rx.recv_timeout(Duration::from_secs(5)).expect("server listening");
    h
}

/// One connection to the VIP from inside the current namespace: (task name, address it saw).
fn hello(to: SocketAddr) -> std::io::Result<(TcpStream, String, String)> {
    let s = TcpStream::connect_timeout(&to, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    let mut line = String::new();
    BufReader::new(s.try_clone()?).read_line(&mut line)?;
    let mut it = line.split_whitespace();
    let (name, saw) = (it.next().unwrap_or_default().to_string(), it.next().unwrap_or_default().to_string());
    Ok((s, name, saw))
}

/// Sends a line on `s` and reads it back.
fn echo(s: &mut TcpStream, text: &str) -> bool {
    if writeln!(s, "{text}").is_err() {
        return false;
    }
    let mut line = String::new();
    BufReader::new(s.try_clone().expect("clone")).read_line(&mut line).is_ok() && line.trim() == text
}

/// `n` new connections from namespace `ns`: how many reached each task, and the client
/// addresses the tasks saw.
fn spread(ns: &str, n: usize) -> (BTreeMap<String, usize>, Vec<String>) {
    in_netns(ns, move || {
        let mut per = BTreeMap::new();
        let mut saw = Vec::new();
        for _ in 0..n {
            let (_, name, addr) = hello((VIP, 80).into()).expect("a connection through the VIP");
            *per.entry(name).or_insert(0) += 1;
            saw.push(addr);
        }
        (per, saw)
    })
    .join()
    .expect("client")
}

fn yaml(sim: &Sim, tasks: &[(&str, usize, Ipv4Addr)], in_service: &[&str], client: &str, other: &str) -> String {
    let mut y = String::from("nodes:\n");
    for i in 1..=3 {
        y += &format!("  - {{name: node{i}, vtep: {}, underlay: eth0}}\n", host_vtep(i));
    }
    y += "networks:\n  - {name: front, vni: 4401, subnet: 10.0.1.0/24}\n  - {name: back, vni: 4402, subnet: 10.0.2.0/24}\n";
    y += &format!("services:\n  - {{name: web, network: front, vip: {VIP}, ports: [{{port: 80, target: 8080}}]}}\n");
    y += "endpoints:\n";
    y += &format!("  - {{name: client, network: front, node: node1, ip: {CLIENT}, netns: {client}}}\n");
    y += &format!("  - {{name: other, network: back, node: node1, ip: 10.0.2.2, netns: {other}}}\n");
    for (name, node, ip) in tasks {
        let svc = if in_service.contains(name) { ", service: web" } else { "" };
        y += &format!("  - {{name: {name}, network: front, node: node{node}, ip: {ip}, netns: {}{svc}}}\n", sim.ns_name(name));
    }
    y
}

#[test]
fn a_vip_balances_connections_over_tasks_on_every_host() {
    require_root();
    let mut sim = Sim::new("v", Path::new(OVERLAY_BIN)).expect("simulation");
    sim.build_underlay(3).expect("underlay");
    let client = sim.add_ns("client").expect("ns");
    let other = sim.add_ns("other").expect("ns");
    for (t, _, _) in TASKS {
        sim.add_ns(t).expect("ns");
    }
    let all: Vec<&str> = TASKS.iter().map(|t| t.0).collect();
    let file = sim.write_file("cluster.yaml", &yaml(&sim, &TASKS, &all, &client, &other)).expect("file");
    for i in 1..=3 {
        let h = sim.host_ns(i);
        sim.spawn_agent(&format!("node{i}"), &h, &file).expect("agent");
    }
    let wired = wait_for(Duration::from_secs(20), || {
        // The address comes first, the resolver file (and the maps) with the rest of the apply.
        sim.has_address(&client, CLIENT)
            && Path::new(&format!("/etc/netns/{client}/resolv.conf")).exists()
            && TASKS.iter().all(|(t, _, ip)| sim.has_address(&sim.ns_name(t), *ip))
    });
    assert!(wired, "wired:\n{}", sim.agent_logs(3));
    let stop = Arc::new(AtomicBool::new(false));
    let servers: Vec<_> = TASKS.iter().map(|(t, _, _)| serve(&sim.ns_name(t), t, stop.clone())).collect();

    // Ping and names.
    assert!(sim.ping(&client, VIP, 2, None), "the VIP answers ping:\n{}", sim.agent_logs(3));
    let getent = |what: &str| String::from_utf8_lossy(&sim.exec(&client, &["getent", "ahostsv4", what]).expect("getent").stdout).to_string();
    assert!(getent("web").lines().all(|l| l.starts_with("10.0.1.100 ")) && !getent("web").is_empty(), "web resolves to its VIP");
    let tasks_seen: std::collections::BTreeSet<String> = getent("tasks.web").lines().filter_map(|l| l.split_whitespace().next().map(str::to_string)).collect();
    assert_eq!(tasks_seen.len(), 4, "tasks.web resolves to the four tasks: {tasks_seen:?}");

    // 1,000 new connections: every task within 30% of its fair share; each saw the client.
    let (per, saw) = spread(&client, 1000);
    assert_eq!(per.len(), 4, "every task is reached: {per:?}");
    assert!(per.values().all(|n| (175..=325).contains(n)), "each task within 30% of 250: {per:?}");
    assert!(saw.iter().all(|a| a == &CLIENT.to_string()), "tasks see the client's own address");
    // The client's node counted each task's connections (what `overlay stats` shows).
    let st = overlay::dataplane::Dataplane::open_pinned(&sim.pin_dir("node1")).expect("pins").stats().expect("stats");
    for (t, _, ip) in TASKS {
        let c = st.services.iter().find(|(k, _)| k.task == u32::from_ne_bytes(ip.octets())).map(|(_, c)| *c).unwrap_or_default();
        assert_eq!(c.connections, per[t] as u64, "{t}: connections counted");
        assert!(c.packets >= 3 * c.connections && c.bytes > 0, "{t}: packets and bytes counted: {c:?}");
    }
    let shown = overlay::cli::stats::render(&st);
    assert!(shown.contains("10.0.1.100:80/tcp") && shown.contains("(all tasks)"), "overlay stats shows the VIP port:\n{shown}");

    // Another network cannot reach the VIP.
    let refused = in_netns(&other, || TcpStream::connect_timeout(&(VIP, 80).into(), Duration::from_secs(1)).is_err()).join().expect("other");
    assert!(refused, "a container on another network does not reach the VIP");

    // Long-lived connections: one keeps its task while that task is drained from the service,
    // and both survive a restart of the client node's agent.
    let (mut long, drained, _) = in_netns(&client, || hello((VIP, 80).into())).join().expect("client").expect("long-lived connection");
    let (mut long2, _, _) = in_netns(&client, || hello((VIP, 80).into())).join().expect("client").expect("second connection");
    let kept: Vec<&str> = all.iter().copied().filter(|t| **t != drained).collect();
    sim.write_file("cluster.yaml", &yaml(&sim, &TASKS, &kept, &client, &other)).expect("file");
    let gone = wait_for(Duration::from_secs(10), || !spread(&client, 40).0.contains_key(&drained));
    assert!(gone, "{drained} gets no new connection once drained:\n{}", sim.agent_logs(3));
    let (per, _) = spread(&client, 200);
    assert!(!per.contains_key(&drained), "no new connection reaches the drained {drained}: {per:?}");
    assert!(echo(&mut long, "still-there"), "the connection to the drained task carries on");
    let log1 = sim.agent_log("node1");
    let applied = move || std::fs::read_to_string(&log1).unwrap_or_default().matches("applied cluster state").count();
    let before = applied();
    sim.kill_agent("node1").expect("kill");
    assert!(echo(&mut long, "agent-down") && echo(&mut long2, "agent-down"), "connections carry on with the agent down");
    assert_eq!(spread(&client, 20).0.values().sum::<usize>(), 20, "new connections work with the agent down");
    let h1 = sim.host_ns(1);
    sim.spawn_agent("node1", &h1, &file).expect("agent");
    assert!(wait_for(Duration::from_secs(10), || applied() > before), "agent back:\n{}", sim.agent_logs(1));
    assert!(echo(&mut long, "agent-back") && echo(&mut long2, "agent-back"), "connections survive the agent's restart");

    stop.store(true, Ordering::Relaxed);
    drop((long, long2));
    for s in servers {
        s.join().expect("server");
    }
}

/// A task's UDP server on port 9000: answers every datagram with "NAME CLIENT-ADDRESS".
fn serve_udp(ns: &str, name: &'static str, stop: Arc<AtomicBool>) -> JoinHandle<()> {
    let (tx, rx) = std::sync::mpsc::channel();
    let h = in_netns(ns, move || {
        let s = std::net::UdpSocket::bind(("0.0.0.0", 9000)).expect("bind 9000");
        s.set_read_timeout(Some(Duration::from_millis(100))).expect("timeout");
        tx.send(()).expect("ready");
        let mut buf = [0u8; 1500];
        while !stop.load(Ordering::Relaxed) {
            if let Ok((_, peer)) = s.recv_from(&mut buf) {
                let _ = s.send_to(format!("{name} {}", peer.ip()).as_bytes(), peer);
            }
        }
    });
    rx.recv_timeout(Duration::from_secs(5)).expect("server listening");
    h
}

/// One datagram to `to` from a socket bound to `from_port` (0: any) and its answer:
/// (task name, address it saw, address the answer came from).
fn ask_udp(to: SocketAddr, from_port: u16) -> std::io::Result<(String, String, SocketAddr)> {
    let s = std::net::UdpSocket::bind(("0.0.0.0", from_port))?;
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    s.send_to(b"hello", to)?;
    let mut buf = [0u8; 256];
    let (n, from) = s.recv_from(&mut buf)?;
    let text = String::from_utf8_lossy(&buf[..n]).to_string();
    let mut it = text.split_whitespace();
    Ok((it.next().unwrap_or_default().to_string(), it.next().unwrap_or_default().to_string(), from))
}

const PUBLISHED_TCP: u16 = 30080;
const PUBLISHED_UDP: u16 = 30090;

/// Four hosts: the tasks of [`TASKS`] on hosts 1-3, none on host 4; `web` publishes its TCP
/// port on 30080 and its UDP port on 30090 of every host; an outside client behind a router.
fn mesh_yaml(sim: &Sim, in_service: &[&str]) -> String {
    mesh_yaml_with(sim, in_service, &[])
}

/// [`mesh_yaml`], the nodes of `direct` (1-4) marked `mesh_return: direct`.
fn mesh_yaml_with(sim: &Sim, in_service: &[&str], direct: &[usize]) -> String {
    let mut y = String::from("nodes:\n");
    for i in 1..=4 {
        let mode = if direct.contains(&i) { ", mesh_return: direct" } else { "" };
        y += &format!("  - {{name: node{i}, vtep: {}, underlay: eth0{mode}}}\n", host_vtep(i));
    }
    y += "networks:\n  - {name: front, vni: 4401, subnet: 10.0.1.0/24}\n";
    y += &format!(
        "services:\n  - {{name: web, network: front, vip: {VIP}, ports: [{{port: 80, target: 8080, publish: {PUBLISHED_TCP}}}, {{port: 81, target: 8081}}, {{port: 9000, protocol: udp, publish: {PUBLISHED_UDP}}}]}}\n"
    );
    y += "endpoints:\n";
    for (name, node, ip) in TASKS {
        let svc = if in_service.contains(&name) { ", service: web" } else { "" };
        y += &format!("  - {{name: {name}, network: front, node: node{node}, ip: {ip}, netns: {}{svc}}}\n", sim.ns_name(name));
    }
    y
}

/// `n` new TCP connections from namespace `ns` to the published port, spread over the nodes'
/// addresses in turn: how many reached each task, and the client addresses the tasks saw.
fn mesh_spread(ns: &str, n: usize) -> (BTreeMap<String, usize>, Vec<String>) {
    in_netns(ns, move || {
        let mut per = BTreeMap::new();
        let mut saw = Vec::new();
        for i in 0..n {
            let node = host_vtep(1 + i % 4);
            let (_, name, addr) = hello((node, PUBLISHED_TCP).into()).unwrap_or_else(|e| panic!("a connection to {node}:{PUBLISHED_TCP}: {e}"));
            *per.entry(name).or_insert(0) += 1;
            saw.push(addr);
        }
        (per, saw)
    })
    .join()
    .expect("client")
}

/// The mesh's cluster ([`mesh_yaml`], every task in the service) on four hosts and an outside
/// client behind a router; the nodes of `direct_by_file` return directly by the cluster file's
/// `mesh_return: direct`, those of `direct_by_flag` by their agent's `--mesh-return direct`:
/// (simulation, the outside client's namespace, the tasks, the cluster file).
fn mesh_cluster(prefix: &str, direct_by_file: &[usize], direct_by_flag: &[usize]) -> (Sim, String, Vec<&'static str>, std::path::PathBuf) {
    let mut sim = Sim::new(prefix, Path::new(OVERLAY_BIN)).expect("simulation");
    sim.build_underlay(4).expect("underlay");
    let outside = sim.add_outside(4, 1500).expect("outside");
    for (t, _, _) in TASKS {
        sim.add_ns(t).expect("ns");
    }
    let all: Vec<&'static str> = TASKS.iter().map(|t| t.0).collect();
    let file = sim.write_file("cluster.yaml", &mesh_yaml_with(&sim, &all, direct_by_file)).expect("file");
    for i in 1..=4 {
        let h = sim.host_ns(i);
        let args: &[&str] = if direct_by_flag.contains(&i) { &["--mesh-return", "direct"] } else { &[] };
        sim.spawn_agent_extra(&format!("node{i}"), &h, &file, args).expect("agent");
    }
    (sim, outside, all, file)
}

#[test]
fn published_ports_answer_on_every_node_with_the_clients_address() {
    require_root();
    let (mut sim, outside, all, file) = mesh_cluster("m", &[], &[]);
    let wired = wait_for(Duration::from_secs(20), || TASKS.iter().all(|(t, _, ip)| sim.has_address(&sim.ns_name(t), *ip)));
    assert!(wired, "wired:\n{}", sim.agent_logs(4));
    let stop = Arc::new(AtomicBool::new(false));
    let mut servers: Vec<_> = TASKS.iter().map(|(t, _, _)| serve(&sim.ns_name(t), t, stop.clone())).collect();
    servers.extend(TASKS.iter().map(|(t, _, _)| serve_udp(&sim.ns_name(t), t, stop.clone())));
    // The service's unpublished port has a server too: it must still be out of reach.
    servers.extend(TASKS.iter().map(|(t, _, _)| serve_on(&sim.ns_name(t), t, 8081, stop.clone())));
    let outside_addr = overlay::lab::sim::OUTSIDE_HOST.to_string();

    // Every node answers the published TCP and UDP ports, node 4 (no task) across the overlay;
    // the UDP answer comes from the address and port the client asked.
    for i in 1..=4 {
        let node = host_vtep(i);
        let (_, name, saw) = in_netns(&outside, move || hello((node, PUBLISHED_TCP).into())).join().expect("client").unwrap_or_else(|e| {
            panic!("{node}:{PUBLISHED_TCP}/tcp answers: {e}\n{}", sim.agent_logs(4))
        });
        assert!(all.contains(&name.as_str()) && saw == outside_addr, "{node}: task {name} saw {saw}");
        let (name, saw, from) = in_netns(&outside, move || ask_udp((node, PUBLISHED_UDP).into(), 0)).join().expect("client").unwrap_or_else(|e| {
            panic!("{node}:{PUBLISHED_UDP}/udp answers: {e}\n{}", sim.agent_logs(4))
        });
        assert!(all.contains(&name.as_str()) && saw == outside_addr, "{node}/udp: task {name} saw {saw}");
        assert_eq!(from, SocketAddr::from((node, PUBLISHED_UDP)), "the answer comes from the published address");
    }

    // 1,000 connections from outside over the four nodes: every task within 30% of its fair
    // share, and every task saw the outside client's own address.
    let (per, saw) = mesh_spread(&outside, 1000);
    assert_eq!(per.len(), 4, "every task is reached: {per:?}");
    assert!(per.values().all(|n| (175..=325).contains(n)), "each task within 30% of 250: {per:?}");
    assert!(saw.iter().all(|a| *a == outside_addr), "tasks see the outside client's address");

    // One client address and port through two different nodes: the same task.
    let same = in_netns(&outside, || {
        (0..20u16)
            .map(|i| {
                let port = 41000 + i;
                let a = ask_udp((host_vtep(1), PUBLISHED_UDP).into(), port).expect("via node1").0;
                let b = ask_udp((host_vtep(4), PUBLISHED_UDP).into(), port).expect("via node4").0;
                (port, a, b)
            })
            .collect::<Vec<_>>()
    })
    .join()
    .expect("client");
    assert!(same.iter().all(|(_, a, b)| a == b), "a flow picks the same task whichever node receives it: {same:?}");
    assert!(same.iter().map(|(_, a, _)| a).collect::<std::collections::BTreeSet<_>>().len() > 1, "different ports spread: {same:?}");

    // Nothing else is reachable from outside (each has a listening server behind it): the
    // service's unpublished port, the published port's target on the addresses of nodes with a
    // task, a task's own address.
    let closed = in_netns(&outside, || {
        let try_ = |a: Ipv4Addr, p: u16| TcpStream::connect_timeout(&(a, p).into(), Duration::from_millis(700)).is_ok();
        [try_(host_vtep(4), 81), try_(host_vtep(1), 8081), try_(host_vtep(1), 8080), try_(host_vtep(3), 8080), try_(TASKS[0].2, 8080)]
    })
    .join()
    .expect("client");
    assert_eq!(closed, [false; 5], "only published ports are reachable from outside");

    // The node itself, on its own address: with and without a task of its own.
    for i in [1, 4] {
        let node = host_vtep(i);
        let (_, name, saw) = in_netns(&sim.host_ns(i), move || hello((node, PUBLISHED_TCP).into())).join().expect("client").unwrap_or_else(|e| {
            let st = overlay::dataplane::Dataplane::open_pinned(&sim.pin_dir(&format!("node{i}"))).and_then(|d| d.stats()).map(|s| overlay::cli::stats::render(&s));
            panic!("node{i} reaches its own published port: {e}\n{st:?}\n{}", sim.agent_logs(4))
        });
        assert!(all.contains(&name.as_str()) && saw == node.to_string(), "node{i}: task {name} saw {saw}");
    }

    // A long-lived connection through node 4 carries on when its task is drained from the
    // service and across restarts of the receiving node's and the task's agents; no new
    // connection reaches the drained task.
    let (mut long, drained, _) = in_netns(&outside, || hello((host_vtep(4), PUBLISHED_TCP).into())).join().expect("client").expect("long-lived");
    let kept: Vec<&str> = all.iter().copied().filter(|t| **t != drained).collect();
    sim.write_file("cluster.yaml", &mesh_yaml(&sim, &kept)).expect("file");
    let gone = wait_for(Duration::from_secs(10), || !mesh_spread(&outside, 40).0.contains_key(&drained));
    assert!(gone, "{drained} gets no new connection once drained:\n{}", sim.agent_logs(4));
    assert!(echo(&mut long, "still-there"), "the mesh connection to the drained task carries on");
    let task_node = TASKS.iter().find(|t| t.0 == drained).map(|t| t.1).expect("task");
    for n in [4, task_node] {
        let node = format!("node{n}");
        let log = sim.agent_log(&node);
        let applied = move || std::fs::read_to_string(&log).unwrap_or_default().matches("applied cluster state").count();
        let before = applied();
        // A stream of new connections through node 4 for the whole restart: every one answers.
        let streaming = Arc::new(AtomicBool::new(true));
        let flag = streaming.clone();
        let stream = in_netns(&outside, move || {
            let (mut ok, mut failed) = (0, Vec::new());
            while flag.load(Ordering::Relaxed) {
                match hello((host_vtep(4), PUBLISHED_TCP).into()) {
                    Ok(_) => ok += 1,
                    Err(e) => failed.push(e.to_string()),
                }
            }
            (ok, failed)
        });
        sim.kill_agent(&node).expect("kill");
        assert!(echo(&mut long, "agent-down"), "the mesh connection carries on with {node}'s agent down");
        let h = sim.host_ns(n);
        sim.spawn_agent(&node, &h, &file).expect("agent");
        assert!(wait_for(Duration::from_secs(10), || applied() > before), "agent back:\n{}", sim.agent_logs(4));
        assert!(echo(&mut long, "agent-back"), "the mesh connection survives {node}'s agent restart");
        streaming.store(false, Ordering::Relaxed);
        let (ok, failed) = stream.join().expect("stream");
        assert!(ok > 0 && failed.is_empty(), "new connections through the mesh across {node}'s restart: {ok} answered, failed: {failed:?}");
    }
    let (per, _) = mesh_spread(&outside, 40);
    assert!(!per.contains_key(&drained) && per.values().sum::<usize>() == 40, "after the restarts: {per:?}");

    stop.store(true, Ordering::Relaxed);
    drop(long);
    for s in servers {
        s.join().expect("server");
    }
}

/// Forwards counted as `reason` by `hook` on `node`'s datapath.
fn forwarded(sim: &Sim, node: &str, reason: overlay_common::Reason, hook: overlay_common::Direction) -> u64 {
    let stats = overlay::dataplane::Dataplane::open_pinned(&sim.pin_dir(node)).and_then(|d| d.stats()).expect("stats");
    stats.get(reason, hook).packets
}

/// `--mesh-return direct`, or `mesh_return: direct` in the cluster file (direct server return): a task's replies to an outside client that
/// came through node 4 (no task) leave from the task's node with node 4's address and the
/// published port as source, straight to the client: node 4 carries the requests only. The
/// client sees answers from the address it asked, the task sees the client's address, and the
/// node's own connections to its published port still get their replies back through it.
#[test]
fn with_direct_return_replies_leave_from_the_tasks_node_with_the_published_address() {
    require_root();
    // The tasks' nodes: node 1 by its agent's flag, nodes 2 and 3 by the cluster file.
    let (sim, outside, all, _) = mesh_cluster("md", &[2, 3], &[1]);
    let wired = wait_for(Duration::from_secs(20), || TASKS.iter().all(|(t, _, ip)| sim.has_address(&sim.ns_name(t), *ip)));
    assert!(wired, "wired:\n{}", sim.agent_logs(4));
    let stop = Arc::new(AtomicBool::new(false));
    let mut servers: Vec<_> = TASKS.iter().map(|(t, _, _)| serve(&sim.ns_name(t), t, stop.clone())).collect();
    servers.extend(TASKS.iter().map(|(t, _, _)| serve_udp(&sim.ns_name(t), t, stop.clone())));
    let outside_addr = overlay::lab::sim::OUTSIDE_HOST.to_string();
    let node4 = host_vtep(4);

    // TCP and UDP through node 4: answered from node 4's address and published port.
    let tcp = in_netns(&outside, move || {
        (0..50)
            .map(|_| {
                let (mut s, name, saw) = hello((node4, PUBLISHED_TCP).into())?;
                let ok = echo(&mut s, "more-data");
                Ok::<_, std::io::Error>((name, saw, ok, s.peer_addr()?))
            })
            .collect::<Result<Vec<_>, _>>()
    })
    .join()
    .expect("client")
    .unwrap_or_else(|e| panic!("{node4}:{PUBLISHED_TCP}/tcp answers: {e}\n{}", sim.agent_logs(4)));
    for (name, saw, ok, peer) in &tcp {
        assert!(all.contains(&name.as_str()) && *saw == outside_addr && *ok, "task {name} saw {saw}, echo {ok}");
        assert_eq!(*peer, SocketAddr::from((node4, PUBLISHED_TCP)), "connected to the published address");
    }
    assert!(tcp.iter().map(|t| &t.0).collect::<std::collections::BTreeSet<_>>().len() > 1, "spread over the tasks: {tcp:?}");
    let (name, saw, from) = in_netns(&outside, move || ask_udp((node4, PUBLISHED_UDP).into(), 0)).join().expect("client").unwrap_or_else(|e| {
        panic!("{node4}:{PUBLISHED_UDP}/udp answers: {e}\n{}", sim.agent_logs(4))
    });
    assert!(all.contains(&name.as_str()) && saw == outside_addr, "udp: task {name} saw {saw}");
    assert_eq!(from, SocketAddr::from((node4, PUBLISHED_UDP)), "the answer comes from the published address");

    // Node 4 forwarded the requests and sent none of the replies: the tasks' nodes did.
    let in4 = forwarded(&sim, "node4", overlay_common::Reason::FwdMeshIn, overlay_common::Direction::Ingress);
    let out4 = forwarded(&sim, "node4", overlay_common::Reason::FwdMeshOut, overlay_common::Direction::Ingress);
    let direct: u64 = (1..=3).map(|i| forwarded(&sim, &format!("node{i}"), overlay_common::Reason::FwdMeshOut, overlay_common::Direction::Egress)).sum();
    assert!(in4 >= 150, "node 4 forwarded the requests ({in4})");
    assert_eq!(out4, 0, "no reply went back through node 4");
    assert!(direct >= 150, "the tasks' nodes sent the replies out themselves ({direct})");

    // The node itself on its own address: its replies come back through it (they would carry
    // its own address as source otherwise).
    let (_, name, saw) = in_netns(&sim.host_ns(4), move || hello((node4, PUBLISHED_TCP).into())).join().expect("client").unwrap_or_else(|e| {
        panic!("node4 reaches its own published port: {e}\n{}", sim.agent_logs(4))
    });
    assert!(all.contains(&name.as_str()) && saw == node4.to_string(), "node4: task {name} saw {saw}");
    assert!(forwarded(&sim, "node4", overlay_common::Reason::FwdMeshOut, overlay_common::Direction::Ingress) > 0, "node 4's own connection returned through it");

    stop.store(true, Ordering::Relaxed);
    for s in servers {
        s.join().expect("server");
    }
}
