//! The store as a three-member etcd cluster (Debian's `etcd` 3.4, each member in its own
//! namespace on the simulated underlay): the agents and the CLI are given every member's
//! address, the leader is killed under a ping flood and during an `endpoint add`, then the dead
//! member is replaced through etcd's member API. Every namespace and process (agents and etcd
//! members, by PID) is removed when the test ends, pass or fail (the `Sim` guard). Traffic stays
//! inside these namespaces.
//!
//! Prints what it measured (time for each agent to resume its watch, packets lost, time for an
//! endpoint added during the election to converge):
//! `cargo test --test etcd_cluster -- --nocapture --test-threads=1` (with
//! `RUST_LOG=overlay::source::store=debug` it also prints the CLI's retries during the election).
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

/// Lease TTL of the agents (the default).
const TTL: u32 = 10;
const HOSTS: usize = 3;
const MEMBERS: usize = 3;
/// The flood across the leader's death: 5000 echoes at 500/s (10 s).
const FLOOD: u32 = 5000;



/// The IP `endpoint add` printed (name network node ip mac interface).
fn ip_of(out: &str) -> Ipv4Addr {
    let f: Vec<&str> = out.split_whitespace().collect();
    assert_eq!(f.len(), 6, "endpoint add prints name network node ip mac interface: {out}");
    f[3].parse().unwrap_or_else(|_| panic!("an IPv4 address in {out}"))
}

/// Whether every node has `ip` of network `web` (VNI 4096), local on `home`, remote elsewhere.
fn everywhere(sim: &Sim, home: usize, ip: Ipv4Addr) -> bool {
    (1..=HOSTS).all(|n| match sim.fdb_entry(&format!("node{n}"), 4096, ip) {
        Some(e) if n == home => e.kind == FDB_LOCAL,
        Some(e) => e.kind == FDB_REMOTE && e.vtep == ip_to_map(host_vtep(home).octets()),
        None => false,
    })
}

/// `ping` from namespace `ns`, bounded by count and by a deadline; returns (sent, received).
fn ping_counts(ns: &str, dst: Ipv4Addr, count: u32, interval: &str) -> (u32, u32) {
    let deadline = (count as f64 * interval.parse::<f64>().expect("interval") * 2.0 + 10.0) as u32;
    let o = std::process::Command::new("ip")
        .args(["netns", "exec", ns, "ping", "-n", "-q", "-i", interval, "-c", &count.to_string(), "-W", "2", "-w", &deadline.to_string(), &dst.to_string()])
        .output()
        .expect("ping");
    let s = String::from_utf8_lossy(&o.stdout);
    let line = s.lines().find(|l| l.contains("packets transmitted")).unwrap_or_else(|| panic!("no ping summary:\n{s}"));
    let num = |i: usize| line.split(',').nth(i).and_then(|p| p.split_whitespace().next()).and_then(|v| v.parse().ok()).expect("count");
    (num(0), num(1))
}

fn log_of(sim: &Sim, n: usize) -> String {
    std::fs::read_to_string(sim.agent_log(&format!("node{n}"))).unwrap_or_default()
}

/// The member id (hex) node `n`'s agent last said it watches on, from its log.
fn watch_member(sim: &Sim, n: usize) -> Option<String> {
    let log = log_of(sim, n);
    let line = log.lines().rev().find(|l| l.contains("watching the store on member ") || l.contains("resumed the watch after"))?;
    let rest = &line[line.find(" on member ")? + " on member ".len()..];
    Some(rest.split_whitespace().next()?.to_string())
}

/// The `resumed the watch after X ms` lines of node `n`'s log after `from` bytes: (ms, line).
fn resumes(sim: &Sim, n: usize, from: usize) -> Vec<(u64, String)> {
    let log = log_of(sim, n);
    log.get(from..)
        .unwrap_or("")
        .lines()
        .filter_map(|l| {
            let i = l.find("resumed the watch after ")? + "resumed the watch after ".len();
            let ms = l[i..].split_whitespace().next()?.parse().ok()?;
            Some((ms, l.to_string()))
        })
        .collect()
}

#[test]
fn the_leader_dies_under_a_ping_flood_and_during_an_endpoint_add_then_is_replaced() {
    require_root();
    let mut sim = Sim::new("ha", Path::new(OVERLAY_BIN)).expect("simulation");
    sim.start_store_cluster_ha(HOSTS, MEMBERS, TTL, "web").expect("store cluster on three etcd members");
    let url = sim.etcd_url();
    assert_eq!(url.matches(':').count(), 1 + MEMBERS, "the agents get every member: {url}");

    let c1 = sim.add_ns("c1").expect("namespace");
    let ip1 = ip_of(&ok(&sim, 1, &["endpoint", "add", "--network", "web", "--netns", &c1]));
    let c2 = sim.add_ns("c2").expect("namespace");
    let ip2 = ip_of(&ok(&sim, 2, &["endpoint", "add", "--network", "web", "--netns", &c2]));
    for (home, ip) in [(1, ip1), (2, ip2)] {
        assert!(wait_for(Duration::from_secs(10), || everywhere(&sim, home, ip)), "{ip} on every node:\n{}", sim.agent_logs(HOSTS));
    }
    assert!(sim.ping(&c1, ip2, 2, None), "c1 reaches c2 before the failover");

    // The member serving node1's watch becomes the leader, so that killing the leader takes at
    // least one agent's watch with it (the client spreads the agents over the members).
    let mut member_ids = Vec::new();
    for slot in 1..=MEMBERS {
        let (id, _) = sim.member_status(slot).expect("member status");
        member_ids.push(format!("{id:x}"));
    }
    assert!(wait_for(Duration::from_secs(10), || watch_member(&sim, 1).is_some()), "node1 logs its watch's member:\n{}", log_of(&sim, 1));
    let watched = watch_member(&sim, 1).expect("a member");
    let slot = member_ids.iter().position(|m| *m == watched).map(|i| i + 1).unwrap_or_else(|| panic!("member {watched} of node1's watch is not one of {member_ids:?}"));
    sim.etcd_move_leader(slot).expect("move the leadership");
    assert!(wait_for(Duration::from_secs(10), || sim.etcd_leader().is_ok_and(|l| l == slot)), "e{slot} became the leader");
    let leader = slot;
    let log_len: Vec<usize> = (1..=HOSTS).map(|n| log_of(&sim, n).len()).collect();
    let watchers: Vec<usize> = (1..=HOSTS).filter(|n| watch_member(&sim, *n).as_deref() == Some(watched.as_str())).collect();
    eprintln!("leader e{leader} (member {watched}) serves the watch of node(s) {watchers:?}");

    // The flood across the failover.
    let flood = {
        let ns = c1.clone();
        thread::spawn(move || ping_counts(&ns, ip2, FLOOD, "0.002"))
    };
    let c3 = sim.add_ns("c3").expect("namespace");
    thread::sleep(Duration::from_secs(2));
    let killed = Instant::now();
    sim.kill_member(leader).expect("kill the leader");
    // An endpoint added during the election, from host 3's CLI as a user would: one run, which
    // must succeed (its requests are sent again until a new leader answers). Meanwhile the
    // harness watches for the new leader.
    let (out, cli_started, cli_took, election) = thread::scope(|s| {
        let sim = &sim;
        let poll = s.spawn(move || wait_for(Duration::from_secs(20), || sim.etcd_leader().is_ok_and(|l| l != leader)).then(|| killed.elapsed()));
        let started = killed.elapsed();
        let out = sim.overlay(&sim.host_ns(3), &["endpoint", "add", "--network", "web", "--netns", &c3]).expect("run overlay");
        let took = killed.elapsed();
        (out, started, took, poll.join().expect("leader poll"))
    });
    assert!(out.status.success(), "endpoint add during the election failed:\n{}\n{}", text(&out), sim.agent_logs(HOSTS));
    // Empty unless RUST_LOG asks for more (`overlay::source::store=debug` shows each retry).
    let cli_log = String::from_utf8_lossy(&out.stderr);
    if !cli_log.trim().is_empty() {
        eprintln!("endpoint add during the election, its log:\n{cli_log}");
    }
    let election = election.unwrap_or_else(|| panic!("no new leader within 20 s of the kill"));
    let ip3 = ip_of(&String::from_utf8_lossy(&out.stdout));
    // Polled in the maps (every 50 ms), then by a ping (whose failed tries wait 1 s each).
    let in_maps = wait_for(Duration::from_secs(20), || everywhere(&sim, 3, ip3));
    let in_maps_after = killed.elapsed();
    let converged = in_maps && wait_for(Duration::from_secs(20), || sim.ping(&c1, ip3, 1, None));
    let convergence = killed.elapsed();
    assert!(converged, "c3 ({ip3}), added during the election, converges on every node and answers c1:\n{}", sim.agent_logs(HOSTS));
    let (sent, received) = flood.join().expect("flood thread");
    let lost = sent - received;
    assert!(sent >= FLOOD && lost == 0, "ping flood across the leader's death: {sent} sent, {received} received");

    // The agents say what they lost and where they resumed, without a full resync.
    let mut resumed = Vec::new();
    for n in 1..=HOSTS {
        let r = resumes(&sim, n, log_len[n - 1]);
        let log = log_of(&sim, n);
        let tail = log.get(log_len[n - 1]..).unwrap_or("");
        assert!(!tail.contains("full resync") && !tail.contains("read the whole store"), "node{n} resumed without a resync:\n{tail}");
        if watchers.contains(&n) {
            assert!(tail.contains(&format!("lost etcd: the watch on member {watched}")), "node{n} logs the member it lost:\n{tail}");
            assert!(r.iter().any(|(_, l)| l.contains("no resync") && !l.contains(&format!(" on member {watched} "))), "node{n} resumed elsewhere:\n{tail}");
        }
        for l in tail.lines().filter(|l| l.contains("lost etcd") || l.contains("resumed the watch") || l.contains("keep-alive moved") || l.contains("lease expired")) {
            eprintln!("node{n}: {}", l.trim());
        }
        resumed.push((n, r));
    }

    // Replace the dead member: remove it, add a new one at the same addresses, and keep going.
    let t = Instant::now();
    sim.replace_member(leader).expect("replace the dead member");
    let replaced = t.elapsed();
    let c4 = sim.add_ns("c4").expect("namespace");
    let t = Instant::now();
    let ip4 = ip_of(&ok(&sim, 2, &["endpoint", "add", "--network", "web", "--netns", &c4]));
    assert!(wait_for(Duration::from_secs(20), || everywhere(&sim, 2, ip4) && sim.ping(&c3, ip4, 1, None)), "c4 converges after the replacement:\n{}", sim.agent_logs(HOSTS));
    let after_replace = t.elapsed();
    let (_, new_leader) = sim.member_status(leader).expect("the new member answers");
    assert_ne!(new_leader, 0, "the new member follows a leader");
    assert!(sim.ping(&c1, ip2, 2, None) && sim.ping(&c2, ip3, 2, None), "everyone still talks");

    eprintln!("--- etcd cluster failover (3 members, leader e{leader} killed with SIGKILL under a {FLOOD}-echo flood at 500/s)");
    eprintln!("new leader elected after        ~{} ms (polled)", election.as_millis());
    for (n, r) in &resumed {
        match r.as_slice() {
            [] => eprintln!("node{n}: watch untouched (served by a surviving member)"),
            r => eprintln!("node{n}: resumed the watch after {} ms", r.iter().map(|(ms, _)| ms.to_string()).collect::<Vec<_>>().join(", ")),
        }
    }
    eprintln!("ping flood: {sent} sent, {received} received, {lost} lost");
    eprintln!("endpoint add during the election: started {} ms after the kill, returned after {} ms", cli_started.as_millis(), cli_took.as_millis());
    eprintln!(
        "endpoint in every node's map {} ms after the kill; answers a ping from another host {} ms after the kill",
        in_maps_after.as_millis(),
        convergence.as_millis()
    );
    eprintln!("member replaced (remove + add + start) in {} ms; next endpoint converged in {} ms", replaced.as_millis(), after_replace.as_millis());
}
