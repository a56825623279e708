//! Simulated clusters in network namespaces with real traffic: agents, programs and kernel as in
//! production. Every namespace, agent and pin made here is removed when the test ends, pass or
//! fail (the `Sim` guard). Traffic stays inside these namespaces.
mod support;

use std::{
    io::{Read, Write},
    net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream},
    path::Path,
    time::{Duration, Instant},
};

use overlay::{
    cli::demo::matrix,
    dataplane::Dataplane,
    lab::sim::{self, Container, Sim, ip, wait_for},
};
use overlay_common::{Direction, Reason};
use support::*;

fn new_sim(tag: &str) -> Sim {
    require_root();
    Sim::new(tag, Path::new(OVERLAY_BIN)).expect("simulation")
}

fn state(sim: &Sim, node: &str) -> overlay::control::desired::MapState {
    Dataplane::open_pinned(&sim.pin_dir(node)).expect("pinned maps").read_state().expect("read")
}

fn stats(sim: &Sim, node: &str) -> overlay::dataplane::Stats {
    Dataplane::open_pinned(&sim.pin_dir(node)).expect("pinned maps").stats().expect("stats")
}

#[test]
fn three_hosts_two_networks_reach_within_and_are_isolated_across() {
    let mut sim = new_sim("m");
    let (cs, _) = sim::start_standard(&mut sim, 3).expect("cluster up");
    let m = matrix(&sim, &cs);
    let mut wrong = Vec::new();
    for (i, a) in cs.iter().enumerate() {
        for (j, b) in cs.iter().enumerate() {
            if let Some(ok) = m[i][j] {
                if ok != (a.network == b.network) {
                    wrong.push(format!("{} -> {}: {}", a.name, b.name, if ok { "reachable across networks" } else { "unreachable within its network" }));
                }
            }
        }
    }
    assert!(wrong.is_empty(), "connectivity matrix wrong:\n{}", wrong.join("\n"));
    // Same-host traffic was switched locally, cross-host traffic encapsulated and decapsulated,
    // and the cross-network attempts were stopped by the datapath (ARP unanswered).
    let s1 = stats(&sim, "node1");
    assert!(s1.get(Reason::FwdLocal, Direction::Egress).packets > 0, "web1<->web4 switched on node1");
    assert!(s1.get(Reason::FwdEncap, Direction::Egress).packets > 0, "node1 encapsulated");
    assert!(s1.get(Reason::FwdDecap, Direction::Ingress).packets > 0, "node1 decapsulated");
    assert!(s1.get(Reason::ArpUnanswered, Direction::Egress).packets > 0, "cross-network ARP went unanswered");
    assert!(s1.vnis[&4097].tx.packets > 0 && s1.vnis[&4098].tx.packets > 0, "per-VNI counters moved");
}

#[test]
fn mtu_boundary_1450_passes_1451_does_not() {
    let mut sim = new_sim("u");
    let (cs, _) = sim::start_standard(&mut sim, 2).expect("cluster up");
    let (web1, web2) = (&cs[0], &cs[1]);
    let mtu = sim.exec(&web1.netns, &["cat", "/sys/class/net/eth0/mtu"]).expect("exec");
    assert_eq!(String::from_utf8_lossy(&mtu.stdout).trim(), "1450", "container MTU");
    assert!(sim.ping(&web1.netns, web2.ip, 2, Some((1422, true))), "a 1450-byte DF packet must cross hosts");
    assert!(!sim.ping(&web1.netns, web2.ip, 1, Some((1423, true))), "a 1451-byte DF packet must not be sent");
}

fn fnv(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ *b as u64).wrapping_mul(0x100_0000_01b3))
}

#[test]
fn tcp_transfer_across_hosts_is_byte_exact_and_keeps_gso() {
    let mut sim = new_sim("t");
    let (cs, _) = sim::start_standard(&mut sim, 2).expect("cluster up");
    let (web1, web2) = (cs[0].clone(), cs[1].clone());
    const LEN: usize = 32 << 20;
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let data: Vec<u8> = (0..LEN).map(|_| { x ^= x << 13; x ^= x >> 7; x ^= x << 17; x as u8 }).collect();
    let want = fnv(&data);
    let before = stats(&sim, "node1").get(Reason::FwdEncap, Direction::Egress);
    let (tx, rx) = std::sync::mpsc::channel();
    let addr = SocketAddr::from((web2.ip, 5001));
    let server = in_netns(&web2.netns, move || {
        let l = TcpListener::bind(addr).expect("bind in web2");
        tx.send(()).expect("ready");
        let (mut s, _) = l.accept().expect("accept");
        s.set_read_timeout(Some(Duration::from_secs(30))).expect("timeout");
        let mut got = Vec::with_capacity(LEN);
        s.read_to_end(&mut got).expect("read");
        got
    });
    rx.recv_timeout(Duration::from_secs(5)).expect("server ready");
    let t0 = Instant::now();
    let client = in_netns(&web1.netns, move || {
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("connect web1 -> web2");
        s.set_write_timeout(Some(Duration::from_secs(30))).expect("timeout");
        s.write_all(&data).expect("write");
    });
    client.join().expect("client");
    let got = server.join().expect("server");
    let secs = t0.elapsed().as_secs_f64();
    assert_eq!(got.len(), LEN, "all bytes arrived");
    assert_eq!(fnv(&got), want, "the bytes arrived unchanged");
    let after = stats(&sim, "node1").get(Reason::FwdEncap, Direction::Egress);
    let (p, b) = (after.packets - before.packets, after.bytes - before.bytes);
    eprintln!("TCP 32 MiB web1 -> web2 in {secs:.2} s ({:.0} Mbit/s), {p} encapsulated skbs, {} bytes each on average", LEN as f64 * 8.0 / secs / 1e6, b / p.max(1));
    assert!(b / p.max(1) > 3000, "encapsulated TCP must stay GSO superframes, not MTU-sized segments: {} bytes/skb", b / p.max(1));
}

/// Host 3 runs the kernel's own vxlan device, wired the way Docker's overlay driver does
/// (bridge + vxlan `nolearning proxy` + static FDB and neighbour entries).
fn kernel_vxlan_host(sim: &mut Sim, peers: &[(Ipv4Addr, Ipv4Addr)]) -> String {
    let h = sim.add_host(3).expect("host 3");
    let kc = sim.add_ns("kc").expect("kernel container");
    let cmds: Vec<Vec<String>> = vec![
        "link add vxlan0 type vxlan id 4097 dstport 4789 local 192.168.50.3 nolearning proxy dev eth0".into(),
        "link add br0 type bridge".into(),
        "link set vxlan0 mtu 1450 master br0 up".into(),
        "link set br0 up".into(),
        format!("link add k0 type veth peer name eth0 netns {kc}"),
        "link set k0 mtu 1450 master br0 up".into(),
    ]
    .into_iter()
    .map(|s: String| s.split(' ').map(String::from).collect())
    .collect();
    for c in cmds {
        let mut a = vec!["-n", h.as_str()];
        a.extend(c.iter().map(String::as_str));
        ip(&a).expect("kernel vxlan host setup");
    }
    for c in ["link set eth0 address 02:42:0a:00:01:0a mtu 1450 up", "addr add 10.0.1.10/24 dev eth0"] {
        let mut a = vec!["-n", kc.as_str()];
        a.extend(c.split(' '));
        ip(&a).expect("kernel container setup");
    }
    for (cip, vtep) in peers {
        let m = sim::docker_mac(*cip);
        let out = std::process::Command::new("bridge")
            .args(["-n", &h, "fdb", "add", &m, "dev", "vxlan0", "dst", &vtep.to_string(), "self", "permanent"])
            .output()
            .expect("bridge");
        assert!(out.status.success(), "bridge fdb add: {}", String::from_utf8_lossy(&out.stderr));
        ip(&["-n", &h, "neigh", "add", &cip.to_string(), "lladdr", &m, "dev", "vxlan0", "nud", "permanent"]).expect("neigh");
    }
    kc
}

#[test]
fn interoperates_with_a_kernel_vxlan_host_both_ways() {
    let mut sim = new_sim("k");
    sim.build_underlay(2).expect("underlay");
    let c = |name: &str, node, ip: [u8; 4]| Container { name: name.into(), network: "nginx-net", node, ip: ip.into(), netns: sim.ns_name(name) };
    let cs = vec![c("web1", 1, [10, 0, 1, 2]), c("web2", 2, [10, 0, 1, 3])];
    for c in &cs {
        sim.add_ns(&c.name).expect("ns");
    }
    let kc = kernel_vxlan_host(&mut sim, &[(cs[0].ip, sim::host_vtep(1)), (cs[1].ip, sim::host_vtep(2))]);
    let yaml = sim::cluster_yaml(2, &cs, &[("node3".into(), sim::host_vtep(3))], "  - {name: k1, network: nginx-net, node: node3, ip: 10.0.1.10}\n");
    let file = sim.write_file("cluster.yaml", &yaml).expect("file");
    for n in 1..=2 {
        let h = sim.host_ns(n);
        sim.spawn_agent(&format!("node{n}"), &h, &file).expect("agent");
    }
    assert!(wait_for(Duration::from_secs(20), || cs.iter().all(|c| sim.has_address(&c.netns, c.ip))), "endpoints wired");
    let k1 = Ipv4Addr::new(10, 0, 1, 10);

    // Capture on the kernel host's underlay while our nodes talk to it.
    let pcap = sim.workdir.join("interop.pcap");
    let h3 = sim.host_ns(3);
    let mut dump = std::process::Command::new("ip")
        .args(["netns", "exec", &h3, "timeout", "15", "tcpdump", "-i", "eth0", "-nn", "-U", "-c", "4", "-w"])
        .arg(&pcap)
        .args(["udp", "port", "4789", "and", "src", "host", "192.168.50.1"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("tcpdump");
    std::thread::sleep(Duration::from_millis(700));
    assert!(sim.ping(&cs[0].netns, k1, 3, None), "our node -> kernel vxlan host");
    assert!(sim.ping(&cs[1].netns, k1, 3, None), "our node 2 -> kernel vxlan host");
    assert!(sim.ping(&kc, cs[0].ip, 3, None), "kernel vxlan host -> our node 1");
    assert!(sim.ping(&kc, cs[1].ip, 3, None), "kernel vxlan host -> our node 2");
    assert!(sim.ping(&kc, cs[1].ip, 2, Some((1422, true))), "full-size 1450-byte frames from the kernel host are decapsulated");
    let _ = dump.wait();
    let s = stats(&sim, "node1");
    assert!(s.get(Reason::FwdDecap, Direction::Ingress).packets >= 3, "frames from the kernel's driver were decapsulated by our program");

    // tshark decodes our frames as VXLAN with the right VNI and nothing malformed.
    let out = std::process::Command::new("tshark").args(["-n", "-V", "-r"]).arg(&pcap).output().expect("tshark");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("Virtual eXtensible Local Area Network"), "tshark sees VXLAN:\n{text}");
    assert!(text.contains("VXLAN Network Identifier (VNI): 4097"), "tshark reads VNI 4097:\n{text}");
    assert!(text.contains("Internet Control Message Protocol"), "tshark decodes the inner packet:\n{text}");
    assert!(!text.contains("Malformed"), "tshark finds nothing malformed:\n{text}");
}

#[test]
fn bad_cluster_file_edit_while_traffic_flows_changes_nothing() {
    let mut sim = new_sim("e");
    let (cs, file) = sim::start_standard(&mut sim, 2).expect("cluster up");
    let good = std::fs::read_to_string(&file).expect("read");
    let before = (state(&sim, "node1"), state(&sim, "node2"));
    let (web1, web2) = (&cs[0], &cs[1]);
    let pinger = std::process::Command::new("ip")
        .args(["netns", "exec", &web1.netns, "ping", "-n", "-q", "-c", "40", "-i", "0.05", "-W", "1", &web2.ip.to_string()])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("ping");
    std::thread::sleep(Duration::from_millis(300));
    // Duplicate IP: web4 takes web1's address.
    let bad = good.replace("ip: 10.0.1.5,", "ip: 10.0.1.2,");
    assert_ne!(bad, good, "test bug: edit did not apply");
    sim.write_file("cluster.yaml", &bad).expect("write bad");
    let log = sim.agent_log("node1");
    assert!(
        wait_for(Duration::from_secs(3), || std::fs::read_to_string(&log).unwrap_or_default().contains("cluster file rejected")),
        "the agent must report the rejected file"
    );
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(text.contains("endpoints[web4].ip: IP 10.0.1.2 in network nginx-net is in use by endpoint web1"), "the error names the entry and field:\n{text}");
    let out = pinger.wait_with_output().expect("ping result");
    let summary = String::from_utf8_lossy(&out.stdout);
    assert!(summary.contains(" 0% packet loss"), "traffic must not notice a rejected edit:\n{summary}");
    assert_eq!((state(&sim, "node1"), state(&sim, "node2")), before, "a rejected file changes no map");

    // A good edit (web4 removed) is picked up everywhere.
    let web4 = cs.iter().find(|c| c.name == "web4").expect("web4 in the cluster");
    let web4_mac = overlay::model::Mac::from_ip(web4.ip).0;
    let without = good.lines().filter(|l| !l.contains("name: web4,")).collect::<Vec<_>>().join("\n") + "\n";
    let t0 = Instant::now();
    sim.write_file("cluster.yaml", &without).expect("write good");
    let gone = wait_for(Duration::from_secs(3), || {
        !state(&sim, "node2").fdb.keys().any(|k| k.mac == web4_mac) && !state(&sim, "node1").fdb.keys().any(|k| k.mac == web4_mac)
    });
    assert!(gone, "web4 must leave every node's FDB; node2 log:\n{}", std::fs::read_to_string(sim.agent_log("node2")).unwrap_or_default());
    // How fast is the benchmark's business (the file is polled every 200 ms); 3 s only bounds it.
    eprintln!("edit converged on both nodes in {:?}", t0.elapsed());
    assert!(sim.ping(&web1.netns, web2.ip, 2, None), "the remaining endpoints still talk");
    assert!(!sim.has_address(&web4.netns, web4.ip), "web4's interface was removed");
}

/// A runtime that re-attaches a container after a crash publishes the same endpoint again, with
/// a new namespace or a new address: the agent replaces the veth whose container end is in the
/// old namespace, and gives a reused interface the new address and MAC (and drops the old).
#[test]
fn endpoint_re_published_with_another_namespace_or_address_is_rewired() {
    let mut sim = new_sim("m");
    let (cs, file) = sim::start_standard(&mut sim, 2).expect("cluster up");
    let by_name = |n: &str| cs.iter().find(|c| c.name == n).expect("in the cluster");
    let (web1, web2, web4) = (by_name("web1"), by_name("web2"), by_name("web4"));
    let fresh = sim.add_ns("web4b").expect("ns");
    let new_ip: Ipv4Addr = "10.0.1.20".parse().expect("ip");
    let good = std::fs::read_to_string(&file).expect("read");
    let edited = good
        .replace(&format!("netns: {}}}", web4.netns), &format!("netns: {fresh}}}"))
        .replace(&format!("ip: {}, netns: {}}}", web1.ip, web1.netns), &format!("ip: {new_ip}, netns: {}}}", web1.netns));
    assert_eq!(edited.lines().zip(good.lines()).filter(|(a, b)| a != b).count(), 2, "test bug: edit did not apply");
    // One write: the agent sees both changes in one apply.
    sim.write_file("cluster.yaml", &edited).expect("write");
    let log = || std::fs::read_to_string(sim.agent_log("node1")).unwrap_or_default();
    assert!(wait_for(Duration::from_secs(5), || sim.has_address(&fresh, web4.ip)), "web4 must be wired in its new namespace; node1 log:\n{}", log());
    assert!(!sim.has_address(&web4.netns, web4.ip), "the old namespace lost its interface");
    assert!(sim.ping(&fresh, web2.ip, 2, None), "web4 in its new namespace reaches web2 across hosts");
    assert!(log().contains("replacing a veth whose container end is not in the endpoint's namespace"), "{}", log());

    assert!(wait_for(Duration::from_secs(5), || sim.has_address(&web1.netns, new_ip)), "web1 must get its new address; node1 log:\n{}", log());
    assert!(!sim.has_address(&web1.netns, web1.ip), "web1's old address is gone");
    let link = sim.exec(&web1.netns, &["ip", "-o", "link", "show", "dev", "eth0"]).expect("ip link");
    let mac = sim::docker_mac(new_ip);
    assert!(String::from_utf8_lossy(&link.stdout).contains(&mac), "web1's MAC follows its address ({mac}): {}", String::from_utf8_lossy(&link.stdout));
    assert!(sim.ping(&web2.netns, new_ip, 2, None), "web2 reaches web1 at its new address");
}

#[test]
fn agent_restart_keeps_forwarding_from_the_pins() {
    let mut sim = new_sim("r");
    let (cs, file) = sim::start_standard(&mut sim, 2).expect("cluster up");
    let (web1, web2) = (&cs[0], &cs[1]);
    let before = state(&sim, "node2");
    sim.stop_agent("node2").expect("stop");
    assert!(sim.ping(&web1.netns, web2.ip, 3, None), "forwarding goes on with the agent stopped");
    // Agent logs are appended across restarts: wait for the new agent's first apply.
    let applies = |sim: &Sim| std::fs::read_to_string(sim.agent_log("node2")).unwrap_or_default().matches("applied cluster state").count();
    let before_restart = applies(&sim);
    let h2 = sim.host_ns(2);
    sim.spawn_agent("node2", &h2, &file).expect("restart");
    assert!(wait_for(Duration::from_secs(10), || applies(&sim) > before_restart), "restarted agent applies");
    assert_eq!(state(&sim, "node2"), before, "the restarted agent adopts the pinned maps unchanged");
    assert!(sim.ping(&web1.netns, web2.ip, 3, None), "forwarding after restart");
}

#[test]
fn cli_finds_the_pins_from_inside_ip_netns_exec_and_down_removes_everything() {
    let mut sim = new_sim("p");
    let (cs, _) = sim::start_standard(&mut sim, 2).expect("cluster up");
    let web1 = cs[0].clone();
    // `ip netns exec` remounts /sys: the pins must still be found (through /proc/1/root).
    let dir = sim.pin_dir("node1");
    let h1 = sim.host_ns(1);
    let out = sim.exec(&h1, &[OVERLAY_BIN, "fdb", "--node", "node1", "--pin-root", &sim.pin_root.display().to_string()]).expect("fdb");
    let direct = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success() && direct.contains("02:42:0a:00:01:03"), "overlay fdb under ip netns exec:\n{direct}\n{}", String::from_utf8_lossy(&out.stderr));
    let out = sim.exec(&h1, &[OVERLAY_BIN, "stats", "--json", "--node", "node1", "--pin-root", &sim.pin_root.display().to_string()]).expect("stats");
    assert!(out.status.success(), "overlay stats under ip netns exec: {}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("stats --json is JSON");
    assert!(v["vnis"].as_array().is_some_and(|a| a.len() == 2), "two VNIs in {v}");
    // The default pin root resolves to the host's bpffs even inside `ip netns exec`.
    let rel = dir.strip_prefix(overlay::dataplane::host_bpffs().expect("bpffs").join("overlay")).expect("pin dir under the default root");
    let out = sim.exec(&h1, &[OVERLAY_BIN, "fdb", "--node", &rel.display().to_string()]).expect("fdb");
    assert!(out.status.success(), "default pin root under ip netns exec: {}", String::from_utf8_lossy(&out.stderr));

    sim.stop_agent("node1").expect("stop");
    let out = std::process::Command::new(OVERLAY_BIN)
        .args(["down", "--node", "node1", "--netns", &h1, "--pin-root"])
        .arg(&sim.pin_root)
        .output()
        .expect("down");
    assert!(out.status.success(), "overlay down: {}", String::from_utf8_lossy(&out.stderr));
    assert!(!dir.exists(), "pins of node1 removed");
    assert!(!sim.has_address(&web1.netns, web1.ip), "web1's veth removed");
}

/// The underlay of a stopped node is deleted and re-created under the same name and ifindex (a
/// re-created namespace, a NIC re-plugged): the pinned link on the old device can never be
/// updated. The restarted agent must drop it and attach afresh, not retry it forever.
#[test]
fn restarted_agent_reattaches_to_a_re_created_underlay() {
    let mut sim = new_sim("r");
    let (cs, file) = sim::start_standard(&mut sim, 2).expect("cluster up");
    let (web1, web2) = (&cs[0], &cs[1]);
    assert!(sim.ping(&web1.netns, web2.ip, 1, None), "web1 -> web2 before");
    sim.stop_agent("node1").expect("stop agent");
    let (h1, sw) = (sim.host_ns(1), sim.ns_name("sw"));
    let o = sim.exec(&h1, &["cat", "/sys/class/net/eth0/ifindex"]).expect("exec");
    let index = String::from_utf8_lossy(&o.stdout).trim().parse::<u32>().expect("underlay ifindex").to_string();
    ip(&["-n", &h1, "link", "del", "eth0"]).expect("delete underlay");
    ip(&["-n", &h1, "link", "add", "eth0", "index", &index, "type", "veth", "peer", "name", "p1", "netns", &sw]).expect("re-create underlay");
    ip(&["-n", &sw, "link", "set", "p1", "master", "br0", "up"]).expect("switch port");
    ip(&["-n", &h1, "addr", "add", &format!("{}/24", sim::host_vtep(1)), "dev", "eth0"]).expect("address");
    ip(&["-n", &h1, "link", "set", "eth0", "up"]).expect("up");
    let again = sim.exec(&h1, &["cat", "/sys/class/net/eth0/ifindex"]).expect("exec");
    assert_eq!(String::from_utf8_lossy(&again.stdout).trim(), index, "the test wants the same ifindex (the pin's name)");
    let before = std::fs::read_to_string(sim.agent_log("node1")).unwrap_or_default().len();
    sim.spawn_agent("node1", &h1, &file).expect("restart agent");
    let ok = wait_for(Duration::from_secs(10), || sim.ping(&web1.netns, web2.ip, 1, None) && sim.ping(&web2.netns, web1.ip, 1, None));
    let log = std::fs::read_to_string(sim.agent_log("node1")).unwrap_or_default();
    let log = &log[before..];
    assert!(ok, "traffic must cross the re-created underlay after the restart; agent log:\n{log}");
    assert!(!log.contains("apply failed"), "the restarted agent applied at once:\n{log}");
    assert!(log.contains("dropping a pinned link that cannot be updated"), "the stale link was dropped:\n{log}");
}
