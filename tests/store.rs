//! The etcd store end to end: a real etcd (Debian's `etcd`) started by the harness on the
//! simulated underlay switch, agents in host namespaces, the `overlay` CLI run on the hosts, and
//! real traffic. Every namespace, process (etcd and agents, by PID) and pin is removed when the
//! test ends, pass or fail (the `Sim` guard). Traffic stays inside these namespaces.
mod support;

use std::{
    net::Ipv4Addr,
    path::Path,
    thread,
    time::{Duration, Instant},
};

use overlay::lab::sim::{Sim, host_vtep, wait_for};
use overlay_common::{FDB_LOCAL, FDB_REMOTE, ip_to_map};
use support::*;

/// Lease TTL of the agents in these tests (seconds).
const TTL: u32 = 3;



/// Runs the CLI on host `n`; panics unless it fails; returns its error output.
fn fails(sim: &Sim, n: usize, args: &[&str]) -> String {
    let o = sim.overlay(&sim.host_ns(n), args).expect("run overlay");
    assert!(!o.status.success(), "overlay {} should have failed:\n{}", args.join(" "), text(&o));
    String::from_utf8_lossy(&o.stderr).to_string()
}

/// A simulation with `hosts` hosts, etcd on the switch, a network `web` (VNI 4096 and
/// 10.0.0.0/24 from the allocators) and one store agent per host.
fn store_cluster(tag: &str, hosts: usize) -> Sim {
    require_root();
    let mut sim = Sim::new(tag, Path::new(OVERLAY_BIN)).expect("simulation");
    sim.start_store_cluster(hosts, TTL, "web").expect("store cluster");
    let v: serde_json::Value = serde_json::from_str(&ok(&sim, 1, &["network", "inspect", "web"])).expect("inspect is JSON");
    assert_eq!((v[0]["VNI"].as_u64(), v[0]["IPAM"]["Config"][0]["Subnet"].as_str()), (Some(4096), Some("10.0.0.0/24")), "allocated from 4096 and 10.0.N.0/24");
    sim
}

fn logs(sim: &Sim, hosts: usize) -> String {
    sim.agent_logs(hosts)
}

fn fdb(sim: &Sim, node: &str, vni: u32, ip: Ipv4Addr) -> Option<overlay_common::FdbEntry> {
    sim.fdb_entry(node, vni, ip)
}

/// Whether every node in `1..=hosts` has `ip` (local on `home`, remote elsewhere), or none has.
fn everywhere(sim: &Sim, hosts: usize, home: usize, ip: Ipv4Addr, present: bool) -> bool {
    (1..=hosts).all(|n| match fdb(sim, &format!("node{n}"), 4096, ip) {
        Some(e) if present => {
            if n == home {
                e.kind == FDB_LOCAL
            } else {
                e.kind == FDB_REMOTE && e.vtep == ip_to_map(host_vtep(home).octets())
            }
        }
        Some(_) => false,
        None => !present,
    })
}

/// Adds a container namespace on host `n` and attaches it to `web` from that host's CLI (the
/// node is found by its VTEP). Returns (namespace, IP).
fn attach(sim: &mut Sim, name: &str, n: usize) -> (String, Ipv4Addr) {
    let ns = sim.add_ns(name).expect("namespace");
    let out = ok(sim, n, &["endpoint", "add", "--network", "web", "--netns", &ns]);
    let f: Vec<&str> = out.split_whitespace().collect();
    assert_eq!(f.len(), 6, "endpoint add prints name network node ip mac interface: {out}");
    assert_eq!((f[0], f[1], f[2], f[5]), (ns.as_str(), "web", format!("node{n}").as_str(), "eth0"), "{out}");
    (ns, f[3].parse().expect("an IPv4 address"))
}

/// `ping` from namespace `ns` with a short interval; returns (transmitted, received).
fn ping_counts(ns: &str, dst: Ipv4Addr, count: u32, interval: &str) -> (u32, u32) {
    let o = std::process::Command::new("ip")
        .args(["netns", "exec", ns, "ping", "-n", "-q", "-i", interval, "-c", &count.to_string(), "-W", "2", &dst.to_string()])
        .output()
        .expect("ping");
    let s = String::from_utf8_lossy(&o.stdout);
    let line = s.lines().find(|l| l.contains("packets transmitted")).unwrap_or_else(|| panic!("no ping summary:\n{s}"));
    let num = |i: usize| line.split(',').nth(i).and_then(|p| p.split_whitespace().next()).and_then(|v| v.parse().ok()).expect("count");
    (num(0), num(1))
}

#[test]
fn three_agents_converge_and_cli_endpoints_appear_and_vanish_everywhere() {
    let mut sim = store_cluster("s", 3);
    let (c1, ip1) = attach(&mut sim, "c1", 1);
    let (_c2, ip2) = attach(&mut sim, "c2", 2);
    let (c3, ip3) = attach(&mut sim, "c3", 3);
    assert_eq!([ip1, ip2, ip3], [[10, 0, 0, 2], [10, 0, 0, 3], [10, 0, 0, 4]].map(Ipv4Addr::from), "next free addresses, gateway .1 reserved");
    for (home, ip) in [(1, ip1), (2, ip2), (3, ip3)] {
        assert!(wait_for(Duration::from_secs(10), || everywhere(&sim, 3, home, ip, true)), "{ip} on every node:\n{}", logs(&sim, 3));
    }
    assert!(sim.ping(&c1, ip2, 2, None) && sim.ping(&c1, ip3, 2, None), "ping across hosts through the etcd path");

    // What the CLI shows.
    let ls = ok(&sim, 2, &["endpoint", "ls"]);
    assert_eq!(ls.lines().count(), 4, "header and three endpoints:\n{ls}");
    let v: serde_json::Value = serde_json::from_str(&ok(&sim, 2, &["network", "inspect", "web"])).expect("inspect is JSON");
    assert_eq!(v[0]["VNI"], 4096);
    assert_eq!(v[0]["IPAM"]["Config"][0]["Subnet"], "10.0.0.0/24");
    assert_eq!(v[0]["IPAM"]["Config"][0]["Gateway"], "10.0.0.1");
    assert_eq!(v[0]["Containers"][&c1]["IPv4Address"], "10.0.0.2/24");
    assert_eq!(v[0]["Containers"][&c1]["MacAddress"], "02:42:0a:00:00:02");
    assert_eq!(v[0]["Containers"][&c1]["Node"], "node1");
    let nodes = ok(&sim, 1, &["node", "ls"]);
    assert!(nodes.contains("node3") && nodes.contains("192.168.50.3"), "{nodes}");

    // Removal: gone from every node's map, its veth gone from its host.
    ok(&sim, 1, &["endpoint", "rm", &c3]);
    assert!(wait_for(Duration::from_secs(10), || everywhere(&sim, 3, 3, ip3, false)), "c3 gone everywhere");
    assert!(wait_for(Duration::from_secs(10), || !sim.has_address(&c3, ip3)), "c3's interface removed by node3's agent");
    assert!(sim.ping(&c1, ip2, 1, None), "the others still talk");
    // The freed address is the next one given.
    let (_, ip4) = attach(&mut sim, "c4", 3);
    assert_eq!(ip4, ip3, "freed address reused");
    assert!(wait_for(Duration::from_secs(10), || everywhere(&sim, 3, 3, ip4, true)), "c4 on every node");
}

#[test]
fn bad_input_is_refused_with_a_clear_error_and_changes_nothing() {
    let mut sim = store_cluster("e", 1);
    let before = ok(&sim, 1, &["network", "ls"]);
    let e = fails(&sim, 1, &["network", "create", "web"]);
    assert!(e.contains("a network named \"web\" already exists"), "{e}");
    let e = fails(&sim, 1, &["network", "create", "other", "--vni", "4096"]);
    assert!(e.contains("VNI 4096 is in use by network web"), "{e}");
    let e = fails(&sim, 1, &["network", "create", "other", "--subnet", "10.0.0.128/25"]);
    assert!(e.contains("subnet 10.0.0.128/25 overlaps 10.0.0.0/24 of network web"), "{e}");
    let e = fails(&sim, 1, &["network", "create", "other", "--vni", "16777216"]);
    assert!(e.contains("16777216 is out of the 24-bit VNI range"), "{e}");
    assert_eq!(ok(&sim, 1, &["network", "ls"]), before, "nothing created by the refused commands");

    let ns = sim.add_ns("x1").expect("namespace");
    let e = fails(&sim, 1, &["endpoint", "add", "--network", "nope", "--netns", &ns]);
    assert!(e.contains("no network named \"nope\""), "{e}");
    let e = fails(&sim, 1, &["endpoint", "add", "--network", "web", "--netns", "no-such-ns"]);
    assert!(e.contains("network namespace \"no-such-ns\" does not exist"), "{e}");
    // A /30 holds two addresses: the gateway and one endpoint.
    ok(&sim, 1, &["network", "create", "tiny", "--subnet", "10.9.0.0/30"]);
    ok(&sim, 1, &["endpoint", "add", "--network", "tiny", "--netns", &ns]);
    let ns2 = sim.add_ns("x2").expect("namespace");
    let e = fails(&sim, 1, &["endpoint", "add", "--network", "tiny", "--netns", &ns2]);
    assert!(e.contains("network tiny: subnet 10.9.0.0/30 is exhausted"), "{e}");
    // The same container joins a second network: its eth1. Names are unique per network.
    let out = ok(&sim, 1, &["network", "connect", "web", &ns]);
    assert!(out.trim().ends_with(" eth1"), "second interface: {out}");
    let e = fails(&sim, 1, &["endpoint", "add", "--network", "web", "--netns", &ns2, "--name", &ns]);
    assert!(e.contains(&format!("an endpoint named \"{ns}\" already exists in network web")), "{e}");
    let e = fails(&sim, 1, &["endpoint", "add", "--network", "web", "--netns", &ns, "--name", "second"]);
    assert!(e.contains(&format!("namespace {ns} on node node1 is already attached to network web (endpoint {ns})")), "{e}");
    let e = fails(&sim, 1, &["network", "connect", "web", &ns]);
    assert!(e.contains("is already attached to network web"), "connected twice: {e}");
    ok(&sim, 1, &["network", "create", "third", "--subnet", "10.9.1.0/24"]);
    let e = fails(&sim, 1, &["network", "connect", "third", &ns, "--interface", "eth1"]);
    assert!(e.contains(&format!("interface eth1 of namespace {ns} on node node1 is already endpoint {ns}'s (network web)")), "{e}");
    let e = fails(&sim, 1, &["network", "connect", "nope", &ns]);
    assert!(e.contains("no network named \"nope\""), "{e}");
    let e = fails(&sim, 1, &["network", "create", "gw", "--subnet", "10.9.2.0/24", "--gateway", "10.9.3.1"]);
    assert!(e.contains("gateway: 10.9.3.1 is not a host address of 10.9.2.0/24"), "{e}");
    let e = fails(&sim, 1, &["network", "rm", "tiny"]);
    assert!(e.contains("network tiny still has 1 endpoint(s)"), "{e}");
    let e = fails(&sim, 1, &["endpoint", "rm", "nope"]);
    assert!(e.contains("no endpoint named \"nope\""), "{e}");
    let e = fails(&sim, 1, &["endpoint", "rm", &ns]);
    assert!(e.contains(&format!("endpoint \"{ns}\" exists in networks tiny, web: say NETWORK/{ns}")), "{e}");
    let eps = ok(&sim, 1, &["endpoint", "ls"]);
    assert_eq!(eps.lines().count(), 3, "only the endpoints that were accepted:\n{eps}");
    ok(&sim, 1, &["network", "disconnect", "web", &ns]);
    ok(&sim, 1, &["endpoint", "rm", &format!("tiny/{ns}")]);
    ok(&sim, 1, &["network", "rm", "tiny", "third"]);

    // etcd unreachable: the address tried is in the error.
    let o = sim.exec(&sim.host_ns(1), &[OVERLAY_BIN, "network", "ls", "--store", "etcd://192.168.50.77:2379"]).expect("run");
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && e.contains("etcd unreachable at 192.168.50.77:2379"), "{e}");
    let e = fails(&sim, 1, &["network", "ls", "--store", "http://x:1"]);
    assert!(e.contains("is not a store address: expected etcd://HOST:PORT"), "{e}");

    // Malformed values in the store are skipped with a warning naming the key; the agent keeps
    // working and the CLI lists what is valid.
    put_raw(&sim, "/overlay/endpoints/garbage", b"{not json");
    put_raw(&sim, "/overlay/networks/bad", br#"{"name":"bad","vni":0,"subnet":"10.7.0.0/24","gateway":"10.7.0.1"}"#);
    let warned = wait_for(Duration::from_secs(10), || {
        let log = std::fs::read_to_string(sim.agent_log("node1")).unwrap_or_default();
        log.contains("/overlay/endpoints/garbage: not a valid record") && log.contains("/overlay/networks/bad: ")
    });
    assert!(warned, "agent warns naming the keys:\n{}", logs(&sim, 1));
    let o = sim.overlay(&sim.host_ns(1), &["endpoint", "ls"]).expect("run");
    assert!(o.status.success() && text(&o).contains("skipping malformed store entry /overlay/endpoints/garbage"), "{}", text(&o));
    let (_, ip) = attach(&mut sim, "x3", 1);
    assert!(wait_for(Duration::from_secs(10), || everywhere(&sim, 1, 1, ip, true)), "the agent still converges");
    assert!(sim.overlay(&sim.host_ns(1), &["network", "ls"]).is_ok_and(|o| o.status.success()), "network ls survives a bad record");
}

/// Runs `f` with an etcd client from inside the switch namespace (where etcd is).
fn with_etcd<T: Send + 'static, F>(sim: &Sim, f: impl FnOnce(etcd_client::Client) -> F + Send + 'static) -> T
where
    F: std::future::Future<Output = T>,
{
    sim.with_etcd(move |c| async move { Ok(f(c).await) }).expect("etcd client")
}

/// Writes a raw value into the store (as a buggy tool would).
fn put_raw(sim: &Sim, key: &str, value: &[u8]) {
    let (key, value) = (key.to_string(), value.to_vec());
    with_etcd(sim, move |mut c| async move { c.put(key, value, None).await.expect("put") });
}

#[test]
fn fifty_concurrent_endpoint_adds_never_share_an_ip() {
    let mut sim = store_cluster("c", 2);
    let mut spaces = Vec::new();
    for i in 0..50 {
        spaces.push(sim.add_ns(&format!("k{i}")).expect("namespace"));
    }
    // 50 processes at once, from both hosts, each publishing without waiting for wiring.
    let children: Vec<_> = spaces
        .iter()
        .enumerate()
        .map(|(i, ns)| {
            let host = 1 + i % 2;
            sim.overlay_spawn(&sim.host_ns(host), &["endpoint", "add", "--network", "web", "--netns", ns, "--no-wait"]).expect("spawn")
        })
        .collect();
    let mut ips = Vec::new();
    for c in children {
        let o = c.wait_with_output().expect("wait");
        assert!(o.status.success(), "endpoint add failed: {}", text(&o));
        ips.push(String::from_utf8_lossy(&o.stdout).split_whitespace().nth(3).expect("ip").to_string());
    }
    let mut unique = ips.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), 50, "50 distinct addresses: {ips:?}");
    assert!(!ips.contains(&"10.0.0.1".to_string()), "the gateway is never given");
    // The store agrees, and both datapaths end up with all 50.
    let ls = ok(&sim, 1, &["endpoint", "ls", "--network", "web"]);
    assert_eq!(ls.lines().count(), 51, "{ls}");
    let all = |node: &str| ips.iter().all(|ip| fdb(&sim, node, 4096, ip.parse().expect("ip")).is_some());
    assert!(wait_for(Duration::from_secs(60), || all("node1") && all("node2")), "every endpoint in both datapaths:\n{}", logs(&sim, 2));
}

#[test]
fn agent_restart_and_a_10s_etcd_outage_under_ping_flood_lose_nothing() {
    let mut sim = store_cluster("h", 2);
    let (c1, _) = attach(&mut sim, "c1", 1);
    let (_, ip2) = attach(&mut sim, "c2", 2);
    assert!(wait_for(Duration::from_secs(10), || everywhere(&sim, 2, 2, ip2, true)), "c2 everywhere");
    assert!(sim.ping(&c1, ip2, 2, None), "warm-up ping (ARP answered locally)");

    // 1. Agent restart on both ends of the flow, in the middle of a 5 s flood at 500 packets/s.
    let flood = {
        let ns = c1.clone();
        thread::spawn(move || ping_counts(&ns, ip2, 2500, "0.002"))
    };
    thread::sleep(Duration::from_millis(1000));
    for n in [1, 2] {
        let node = format!("node{n}");
        sim.stop_agent(&node).expect("stop");
        let h = sim.host_ns(n);
        sim.spawn_store_agent(&node, &h, host_vtep(n), TTL).expect("restart");
    }
    let (tx, rx) = flood.join().expect("flood");
    assert!(tx >= 2500 && rx == tx, "agent restart under a ping flood: {tx} sent, {rx} received");

    // 2. etcd stopped for 10 s in the middle of a 15 s flood.
    let flood = {
        let ns = c1.clone();
        thread::spawn(move || ping_counts(&ns, ip2, 7500, "0.002"))
    };
    thread::sleep(Duration::from_millis(1500));
    sim.stop_etcd().expect("stop etcd");
    let t0 = Instant::now();
    thread::sleep(Duration::from_secs(10));
    sim.start_etcd().expect("restart etcd");
    let outage = t0.elapsed();
    let (tx, rx) = flood.join().expect("flood");
    assert!(tx >= 7500 && rx == tx, "etcd outage of {outage:?} under a ping flood: {tx} sent, {rx} received");

    // The agents resync by themselves; the next change converges as usual.
    let (_, ip3) = attach(&mut sim, "c3", 2);
    assert!(wait_for(Duration::from_secs(15), || everywhere(&sim, 2, 2, ip3, true)), "c3 converges after the outage:\n{}", logs(&sim, 2));
    assert!(sim.ping(&c1, ip3, 2, None), "and carries traffic");
    let log = logs(&sim, 2);
    assert!(log.contains("lost etcd") && log.contains("etcd reachable again"), "the agents noticed and recovered:\n{log}");
}

#[test]
fn a_killed_agent_s_lease_expires_and_its_node_vanishes_everywhere() {
    let mut sim = store_cluster("k", 3);
    let (c1, _) = attach(&mut sim, "c1", 1);
    let (_, ip3) = attach(&mut sim, "c3", 3);
    assert!(wait_for(Duration::from_secs(10), || everywhere(&sim, 3, 3, ip3, true)), "c3 everywhere");
    let vtep3 = host_vtep(3).to_string();
    let fdb_cli = |sim: &Sim, n: usize| ok(sim, n, &["fdb", "--node", &format!("node{n}")]);
    assert!(fdb_cli(&sim, 1).contains(&vtep3), "node1 knows node3's VTEP before");

    let t0 = Instant::now();
    sim.kill_agent("node3").expect("SIGKILL");
    let gone = wait_for(Duration::from_secs(TTL as u64 + 5), || {
        [1, 2].iter().all(|n| fdb(&sim, &format!("node{n}"), 4096, ip3).is_none() && !fdb_cli(&sim, *n).contains(&vtep3))
    });
    let took = t0.elapsed();
    assert!(gone, "node3's VTEP and endpoints removed from node1 and node2 after its lease ({TTL} s):\n{}", logs(&sim, 3));
    assert!(took >= Duration::from_secs(1), "removed by lease expiry, not at once ({took:?})");
    let nodes = ok(&sim, 1, &["node", "ls"]);
    assert!(nodes.lines().any(|l| l.starts_with("node3") && l.contains(" down ")), "node ls shows node3 down:\n{nodes}");
    // node3's own datapath keeps its last state (no agent to change it).
    assert!(fdb(&sim, "node3", 4096, ip3).is_some_and(|e| e.kind == FDB_LOCAL));

    // The agent comes back: node3 and its endpoint return everywhere.
    let h3 = sim.host_ns(3);
    sim.spawn_store_agent("node3", &h3, host_vtep(3), TTL).expect("restart");
    assert!(wait_for(Duration::from_secs(10), || everywhere(&sim, 3, 3, ip3, true)), "node3 back everywhere");
    assert!(sim.ping(&c1, ip3, 2, None), "traffic to node3 again");
}

#[test]
fn a_partitioned_agent_resyncs_after_compaction_and_registers_again() {
    let mut sim = store_cluster("z", 2);
    let (c1, _) = attach(&mut sim, "c1", 1);
    let (_, ip2) = attach(&mut sim, "c2", 2);
    assert!(wait_for(Duration::from_secs(10), || everywhere(&sim, 2, 2, ip2, true)), "c2 everywhere");
    // Cut node2 off etcd (a blackhole route to etcd's address inside its host namespace only;
    // the overlay's own underlay traffic is untouched).
    let h2 = sim.host_ns(2);
    let etcd_ip = sim.etcd_addr().ip().to_string();
    overlay::lab::sim::ip(&["-n", &h2, "route", "add", "blackhole", &format!("{etcd_ip}/32")]).expect("blackhole");
    assert!(wait_for(Duration::from_secs(15), || std::fs::read_to_string(sim.agent_log("node2")).unwrap_or_default().contains("lost etcd")), "node2 notices");
    // Meanwhile: an endpoint comes, another goes, and etcd compacts its history.
    let (_, ip3) = attach(&mut sim, "c3", 1);
    ok(&sim, 1, &["endpoint", "rm", &c1]);
    let rev: i64 = with_etcd(&sim, |mut c| async move {
        let rev = c.get("/", None).await.expect("get").header().expect("header").revision();
        c.compact(rev, None).await.expect("compact");
        rev
    });
    assert!(rev > 0);
    let down = wait_for(Duration::from_secs(TTL as u64 + 5), || {
        ok(&sim, 1, &["node", "ls"]).lines().any(|l| l.starts_with("node2") && l.contains(" down "))
    });
    assert!(down, "node2's lease expires during the partition");
    // The partition heals: node2 finds its revision compacted away, reads everything again and
    // ends up with exactly the store's state; its lease expired meanwhile, so it registers again.
    overlay::lab::sim::ip(&["-n", &h2, "route", "del", "blackhole", &format!("{etcd_ip}/32")]).expect("heal");
    let c1_ip = Ipv4Addr::new(10, 0, 0, 2);
    let synced = wait_for(Duration::from_secs(20), || fdb(&sim, "node2", 4096, ip3).is_some() && fdb(&sim, "node2", 4096, c1_ip).is_none());
    let log = std::fs::read_to_string(sim.agent_log("node2")).unwrap_or_default();
    assert!(synced, "node2 caught up after the partition:\n{log}");
    assert!(log.contains("compacted away; full resync"), "by a full resync:\n{log}");
    assert!(wait_for(Duration::from_secs(10), || everywhere(&sim, 2, 2, ip2, true)), "node2 registered again: its endpoint is back on node1");
    let nodes = ok(&sim, 1, &["node", "ls"]);
    assert_eq!(nodes.matches(" up ").count(), 2, "{nodes}");
}

#[test]
fn the_cli_reads_a_cluster_file_and_refuses_to_change_it() {
    let dir = std::env::temp_dir().join(format!("overlay-cli-file-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let file = dir.join("cluster.yaml");
    std::fs::write(
        &file,
        "nodes:\n  - {name: n1, vtep: 192.168.50.1}\nnetworks:\n  - {name: web, vni: 4097, subnet: 10.0.1.0/24, mtu: 1450}\n\
         endpoints:\n  - {name: a, network: web, node: n1, ip: 10.0.1.2, netns: c1}\n",
    )
    .expect("write");
    let run = |args: &[&str]| {
        std::process::Command::new(OVERLAY_BIN).args(args).arg("--cluster").arg(&file).env_remove("OVERLAY_STORE").env("RUST_BACKTRACE", "0").output().expect("run")
    };
    let ls = run(&["network", "ls"]);
    let out = String::from_utf8_lossy(&ls.stdout);
    assert!(ls.status.success() && out.contains("web") && out.contains("4097") && out.contains("10.0.1.1"), "{}", text(&ls));
    let insp = run(&["network", "inspect", "web"]);
    let v: serde_json::Value = serde_json::from_slice(&insp.stdout).expect("JSON");
    assert_eq!(v[0]["Containers"]["a"]["IPv4Address"], "10.0.1.2/24");
    let eps = run(&["endpoint", "ls"]);
    assert!(String::from_utf8_lossy(&eps.stdout).contains("02:42:0a:00:01:02"), "{}", text(&eps));
    let nodes = run(&["node", "ls"]);
    assert!(String::from_utf8_lossy(&nodes.stdout).contains("(cluster file)"), "{}", text(&nodes));
    let create = run(&["network", "create", "x"]);
    let e = String::from_utf8_lossy(&create.stderr);
    assert!(!create.status.success() && e.contains("network create needs a store (--store etcd://...)"), "{e}");
    let before = std::fs::read(&file).expect("read");
    assert_eq!(std::fs::read(&file).expect("read"), before, "file untouched");
    let none = std::process::Command::new(OVERLAY_BIN).args(["network", "ls"]).env_remove("OVERLAY_STORE").env_remove("OVERLAY_CLUSTER").output().expect("run");
    assert!(String::from_utf8_lossy(&none.stderr).contains("no cluster state given"), "{}", text(&none));
    let _ = std::fs::remove_dir_all(&dir);
}

/// `overlay network connect` gives a running container a second interface on another network
/// across hosts, `disconnect` takes it away, and the container's first interface loses nothing
/// meanwhile; the two networks stay apart.
#[test]
fn network_connect_and_disconnect_a_running_container_across_hosts() {
    let mut sim = store_cluster("k", 2);
    ok(&sim, 1, &["network", "create", "back", "--subnet", "10.0.7.0/24"]);
    let (c1, _) = attach(&mut sim, "c1", 1);
    let (c2, ip2) = attach(&mut sim, "c2", 2);
    let c3 = sim.add_ns("c3").expect("namespace");
    let out = ok(&sim, 2, &["endpoint", "add", "--network", "back", "--netns", &c3]);
    let ip3: Ipv4Addr = out.split_whitespace().nth(3).expect("ip").parse().expect("ip");
    let (c1c, c2c) = (c1.clone(), c2.clone());
    let flood = std::thread::spawn(move || ping_counts(&c1c, ip2, 300, "0.01"));
    std::thread::sleep(Duration::from_millis(300));
    let out = ok(&sim, 1, &["network", "connect", "back", &c1, "--alias", "api"]);
    let f: Vec<&str> = out.split_whitespace().collect();
    assert_eq!((f[1], f[5]), ("back", "eth1"), "connected as eth1: {out}");
    let back_ip: Ipv4Addr = f[3].parse().expect("ip");
    assert!(sim.has_address_on(&c1, "eth1", back_ip), "eth1 holds its back address");
    let (t, r) = ping_counts(&c1, ip3, 2, "0.2");
    assert_eq!((t, r), (2, 2), "c1 reaches c3 on back through eth1");
    let v: serde_json::Value = serde_json::from_str(&ok(&sim, 1, &["network", "inspect", "back"])).expect("JSON");
    assert_eq!(v[0]["Containers"][c1.as_str()]["Interface"], "eth1", "inspect lists the interface: {v}");
    assert_eq!(v[0]["Containers"][c1.as_str()]["Aliases"][0], "api");
    let (_, r) = ping_counts(&c2c, ip3, 2, "0.2");
    assert_eq!(r, 0, "c2 (web only) still cannot reach c3 (back)");
    ok(&sim, 1, &["network", "disconnect", "back", &c1]);
    assert!(wait_for(Duration::from_secs(10), || !sim.has_address_on(&c1, "eth1", back_ip)), "eth1 goes");
    let (t, r) = flood.join().expect("flood");
    assert_eq!((t, r), (300, 300), "nothing lost on eth0 while eth1 came and went");
    let e = fails(&sim, 1, &["network", "disconnect", "back", &c1]);
    assert!(e.contains(&format!("namespace {c1} on node node1 is not connected to network back")), "{e}");
}

/// Services through the store and the CLI: `service create` allocates a VIP that no endpoint
/// gets, tasks join with `--service`, every agent balances the VIP (a TCP server in each task,
/// reached through the VIP from a container on another host), `service ls`/`inspect` show it,
/// bad definitions are refused with their message, `service rm` is refused while tasks remain.
#[test]
fn services_are_created_joined_and_balanced_through_the_store() {
    let mut sim = store_cluster("sv", 2);
    let out = ok(&sim, 1, &["service", "create", "api", "--network", "web", "--port", "80:8080", "--publish", "30080:8080"]);
    assert!(out.starts_with("api (network web, vip 10.0.0.254, ports 80->8080/tcp,*:30080->8080/tcp)"), "{out}");
    // Bad definitions: each refused with its field, nothing written.
    for (args, want) in [
        (vec!["service", "create", "api", "--network", "web"], "a service named \"api\" already exists"),
        (vec!["service", "create", "x", "--network", "nope"], "no network named \"nope\""),
        (vec!["service", "create", "x", "--network", "web", "--port", "80"], "expected A:B[/udp]"),
        (vec!["service", "create", "x", "--network", "web", "--port", "80:70000"], "ports.target: 70000 is not a port"),
        (vec!["service", "create", "x", "--network", "web", "--vip", "10.0.0.254"], "10.0.0.254 in network web is the VIP of service api"),
        (vec!["service", "create", "x", "--network", "web", "--publish", "30080:80"], "30080/tcp is already published by service api"),
        (vec!["service", "create", "x", "--network", "web", "--mode", "ipvs"], "mode: \"ipvs\" is not a mode"),
    ] {
        let e = fails(&sim, 1, &args);
        assert!(e.contains(want), "{args:?}: {e}");
    }
    assert_eq!(ok(&sim, 1, &["service", "ls"]).lines().count(), 2, "only api was created");
    // Tasks on both hosts; a client on host 1.
    let mut tasks = Vec::new();
    for (name, n) in [("a1", 1), ("a2", 2)] {
        let ns = sim.add_ns(name).expect("ns");
        let out = ok(&sim, n, &["endpoint", "add", "--network", "web", "--netns", &ns, "--service", "api"]);
        tasks.push((ns, out.split_whitespace().nth(3).expect("ip").to_string()));
    }
    let zz = sim.add_ns("zz").expect("ns");
    let e = fails(&sim, 1, &["endpoint", "add", "--network", "web", "--netns", &zz, "--service", "nope"]);
    assert!(e.contains("unknown service \"nope\""), "{e}");
    let (client, _) = attach(&mut sim, "cl", 1);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut servers = Vec::new();
    for (ns, _) in &tasks {
        let (stop, name) = (stop.clone(), ns.clone());
        let (tx, rx) = std::sync::mpsc::channel();
        servers.push(in_netns(ns, move || {
            let l = std::net::TcpListener::bind(("0.0.0.0", 8080)).expect("bind");
            l.set_nonblocking(true).expect("nonblocking");
            tx.send(()).expect("ready");
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                match l.accept() {
                    Ok((mut s, _)) => {
                        use std::io::Write as _;
                        let _ = writeln!(s, "{name}");
                    }
                    Err(_) => thread::sleep(Duration::from_millis(5)),
                }
            }
        }));
        rx.recv_timeout(Duration::from_secs(5)).expect("server up");
    }
    let reached = in_netns(&client, move || {
        let mut seen = std::collections::BTreeSet::new();
        let deadline = Instant::now() + Duration::from_secs(10);
        while seen.len() < 2 && Instant::now() < deadline {
            let Ok(s) = std::net::TcpStream::connect_timeout(&(Ipv4Addr::new(10, 0, 0, 254), 80).into(), Duration::from_millis(500)) else {
                thread::sleep(Duration::from_millis(100));
                continue;
            };
            let mut line = String::new();
            let _ = std::io::BufRead::read_line(&mut std::io::BufReader::new(s), &mut line);
            seen.insert(line.trim().to_string());
        }
        seen
    })
    .join()
    .expect("client");
    // The published port on host 1's address, from host 2 (a client outside the overlay).
    let node1 = host_vtep(1);
    let published = in_netns(&sim.host_ns(2), move || {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(s) = std::net::TcpStream::connect_timeout(&(node1, 30080).into(), Duration::from_millis(500)) {
                let mut line = String::new();
                let _ = std::io::BufRead::read_line(&mut std::io::BufReader::new(s), &mut line);
                return line.trim().to_string();
            }
            thread::sleep(Duration::from_millis(100));
        }
        String::new()
    })
    .join()
    .expect("client");
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for s in servers {
        s.join().expect("server");
    }
    assert_eq!(reached.len(), 2, "connections through the VIP reach both tasks: {reached:?}\n{}", logs(&sim, 2));
    assert!(reached.contains(&published), "the published port on host 1's address reaches a task: {published:?}\n{}", logs(&sim, 2));
    let ls = ok(&sim, 2, &["service", "ls"]);
    assert!(ls.lines().nth(1).is_some_and(|l| l.split_whitespace().collect::<Vec<_>>() == ["api", "vip", "10.0.0.254", "web", "2", "80->8080/tcp,*:30080->8080/tcp"]), "{ls}");
    let v: serde_json::Value = serde_json::from_str(&ok(&sim, 2, &["service", "inspect", "api"])).expect("JSON");
    assert_eq!(v[0]["Endpoint"]["VirtualIPs"][0]["Addr"], "10.0.0.254/24");
    assert_eq!(v[0]["Endpoint"]["Ports"][0]["PublishedPort"], 30080);
    assert_eq!(v[0]["Tasks"].as_array().map(Vec::len), Some(2));
    let e = fails(&sim, 1, &["service", "rm", "api"]);
    assert!(e.contains("service api still has 2 task(s)"), "{e}");
    for (ns, _) in &tasks {
        ok(&sim, 1, &["endpoint", "rm", &format!("web/{ns}")]);
    }
    assert_eq!(ok(&sim, 1, &["service", "rm", "api"]).trim(), "api");
    assert_eq!(ok(&sim, 1, &["service", "ls"]).lines().count(), 1, "gone");
}
