//! The CNI plugin driven as a runtime drives it (CNI_* environment, configuration on stdin,
//! result or error JSON on stdout), with the real reference plugins from Debian's
//! containernetworking-plugins: `host-local` as delegated IPAM and `bandwidth` chained after us.
//! Two simulated hosts with store agents and etcd; everything is removed at the end (`Sim`).
mod support;

use std::{
    io::Write as _,
    net::Ipv4Addr,
    path::Path,
    process::{Command, Stdio},
    time::Duration,
};

use overlay::sim::{Sim, wait_for};
use serde_json::{Value, json};
use support::*;

/// Where Debian's containernetworking-plugins puts the reference plugins.
const CNI_PATH: &str = "/usr/lib/cni";

/// Runs `plugin` (our binary without arguments, as runtimes call it, or a reference plugin) in
/// host namespace `host_ns`. Returns (success, stdout as JSON or Null, stderr).
fn cni(host_ns: &str, plugin: &str, command: &str, container: &str, netns: &str, conf: &str) -> (bool, Value, String) {
    let mut child = Command::new("ip")
        .args(["netns", "exec", host_ns, plugin])
        .env("CNI_COMMAND", command)
        .env("CNI_CONTAINERID", container)
        .env("CNI_NETNS", netns)
        .env("CNI_IFNAME", "eth0")
        .env("CNI_PATH", CNI_PATH)
        .env_remove("OVERLAY_STORE")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run plugin");
    child.stdin.take().expect("stdin").write_all(conf.as_bytes()).expect("write conf");
    let out = child.wait_with_output().expect("wait");
    let v = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    (out.status.success(), v, String::from_utf8_lossy(&out.stderr).to_string())
}

fn conf(sim: &Sim, extra: Value) -> String {
    let mut c = json!({"cniVersion": "1.0.0", "name": "web", "type": "overlay", "store": sim.etcd_url(), "pinRoot": sim.pin_root});
    if let (Some(c), Some(e)) = (c.as_object_mut(), extra.as_object()) {
        c.extend(e.clone());
    }
    c.to_string()
}

fn endpoints(sim: &Sim) -> String {
    let o = sim.overlay(&sim.host_ns(1), &["endpoint", "ls"]).expect("endpoint ls");
    String::from_utf8_lossy(&o.stdout).to_string()
}

#[test]
fn cni_add_check_del_with_store_and_host_local_ipam_and_a_chained_plugin() {
    require_root();
    assert!(Path::new(CNI_PATH).join("host-local").exists(), "containernetworking-plugins missing (cargo xtask setup installs it)");
    let mut sim = Sim::new("n", Path::new(OVERLAY_BIN)).expect("simulation");
    sim.start_store_cluster(2, 3, "web").expect("store cluster");
    let (h1, h2) = (sim.host_ns(1), sim.host_ns(2));
    let ns1 = format!("/run/netns/{}", sim.add_ns("c1").expect("ns"));
    let ns2 = format!("/run/netns/{}", sim.add_ns("c2").expect("ns"));

    // VERSION.
    let (ok, v, _) = cni(&h1, OVERLAY_BIN, "VERSION", "", "", "");
    assert!(ok && v["supportedVersions"].as_array().is_some_and(|a| a.contains(&json!("1.0.0"))), "{v}");

    // Malformed configuration: the spec's error JSON, nothing created.
    let before = endpoints(&sim);
    let (ok, v, _) = cni(&h1, OVERLAY_BIN, "ADD", "bad", &ns1, "{\"cniVersion\": \"1.0.0\", ");
    assert!(!ok && v["code"] == 6 && v["msg"].as_str().is_some_and(|m| m.contains("not valid JSON")), "{v}");
    let (ok, v, _) = cni(&h1, OVERLAY_BIN, "ADD", "bad", &ns1, &conf(&sim, json!({"network": "nope"})));
    assert!(!ok && v["code"] == 100 && v["msg"].as_str().is_some_and(|m| m.contains("no network named \"nope\"")), "{v}");
    let (ok, v, _) = cni(&h1, OVERLAY_BIN, "ADD", "bad", "/run/netns/does-not-exist", &conf(&sim, json!({})));
    assert!(!ok && v["code"] == 3, "{v}");
    assert_eq!(endpoints(&sim), before, "nothing created by refused ADDs");

    // ADD on host 1 with the store's IPAM.
    let (ok, r1, err) = cni(&h1, OVERLAY_BIN, "ADD", "ctr1", &ns1, &conf(&sim, json!({})));
    assert!(ok, "ADD failed: {r1} {err}");
    assert_eq!(r1["cniVersion"], "1.0.0");
    assert_eq!(r1["ips"][0]["address"], "10.0.0.2/24", "{r1}");
    assert_eq!(r1["interfaces"][1]["sandbox"], json!(ns1));
    assert_eq!(r1["interfaces"][1]["mac"], "02:42:0a:00:00:02");

    // ADD on host 2 with host-local IPAM, then the bandwidth plugin chained on our result.
    let hl_dir = sim.workdir.join("host-local");
    let ipam = json!({"ipam": {"type": "host-local", "dataDir": hl_dir, "ranges": [[{"subnet": "10.0.0.0/24", "rangeStart": "10.0.0.100", "rangeEnd": "10.0.0.120"}]]}});
    let conf2 = conf(&sim, ipam);
    let (ok, r2, err) = cni(&h2, OVERLAY_BIN, "ADD", "ctr2", &ns2, &conf2);
    assert!(ok, "ADD with host-local failed: {r2} {err}");
    assert_eq!(r2["ips"][0]["address"], "10.0.0.100/24", "host-local's address is used: {r2}");
    let bw = json!({"cniVersion": "1.0.0", "name": "web", "type": "bandwidth", "ingressRate": 1_000_000_000u64, "ingressBurst": 10_000_000u64, "prevResult": r2}).to_string();
    let bw_bin = format!("{CNI_PATH}/bandwidth");
    let (ok, v, err) = cni(&h2, &bw_bin, "ADD", "ctr2", &ns2, &bw);
    assert!(ok, "bandwidth ADD chained on our result: {v} {err}");

    // Traffic across the hosts, and CHECK of the whole chain.
    let ip1: Ipv4Addr = "10.0.0.2".parse().expect("ip");
    let ip2: Ipv4Addr = "10.0.0.100".parse().expect("ip");
    assert!(wait_for(Duration::from_secs(10), || sim.fdb_entry("node1", 4096, ip2).is_some()), "ctr2 reached node1:\n{}", sim.agent_logs(2));
    assert!(sim.ping(&ns1.replace("/run/netns/", ""), ip2, 2, None), "ping ctr1 -> ctr2 across hosts");
    assert!(sim.ping(&ns2.replace("/run/netns/", ""), ip1, 2, None), "ping ctr2 -> ctr1 across hosts");
    let mut check1 = serde_json::from_str::<Value>(&conf(&sim, json!({}))).expect("conf");
    check1["prevResult"] = r1.clone();
    let (ok, v, err) = cni(&h1, OVERLAY_BIN, "CHECK", "ctr1", &ns1, &check1.to_string());
    assert!(ok, "CHECK ctr1: {v} {err}");
    let mut check2 = serde_json::from_str::<Value>(&conf2).expect("conf");
    check2["prevResult"] = r2.clone();
    let (ok, v, err) = cni(&h2, OVERLAY_BIN, "CHECK", "ctr2", &ns2, &check2.to_string());
    assert!(ok, "CHECK ctr2: {v} {err}");
    let (ok, v, err) = cni(&h2, &bw_bin, "CHECK", "ctr2", &ns2, &bw);
    assert!(ok, "bandwidth CHECK: {v} {err}");
    // CHECK notices what ADD did not leave: the wrong namespace.
    let (ok, v, _) = cni(&h1, OVERLAY_BIN, "CHECK", "ctr1", &ns2, &check1.to_string());
    assert!(!ok && v["code"] == 101, "CHECK with another namespace fails: {v}");

    // DEL in reverse chain order; repeated; and of something never added.
    let (ok, v, err) = cni(&h2, &bw_bin, "DEL", "ctr2", &ns2, &bw);
    assert!(ok, "bandwidth DEL: {v} {err}");
    for _ in 0..2 {
        let (ok, v, err) = cni(&h2, OVERLAY_BIN, "DEL", "ctr2", &ns2, &conf2);
        assert!(ok, "DEL (idempotent): {v} {err}");
    }
    let (ok, v, err) = cni(&h1, OVERLAY_BIN, "DEL", "never-added", &ns1, &conf(&sim, json!({})));
    assert!(ok, "DEL of a container never added: {v} {err}");
    assert!(wait_for(Duration::from_secs(10), || sim.fdb_entry("node1", 4096, ip2).is_none() && sim.fdb_entry("node2", 4096, ip2).is_none()), "ctr2 gone from both datapaths");
    assert!(!hl_dir.join("web").join("10.0.0.100").exists(), "host-local released the address");
    assert!(wait_for(Duration::from_secs(10), || !sim.has_address(&ns2.replace("/run/netns/", ""), ip2)), "ctr2's interface removed");
    assert!(!endpoints(&sim).contains("cni-ctr2-eth0"), "no store key left");

    // ADD after a crash mid-way: a leftover endpoint of the same attachment is replaced.
    let ns3 = sim.add_ns("c3").expect("ns");
    let leftover = sim.overlay(&h1, &["endpoint", "add", "--network", "web", "--netns", &ns3, "--name", "cni-ctr3-eth0", "--no-wait"]).expect("leftover");
    assert!(leftover.status.success());
    let ns4 = format!("/run/netns/{}", sim.add_ns("c4").expect("ns"));
    let (ok, r3, err) = cni(&h1, OVERLAY_BIN, "ADD", "ctr3", &ns4, &conf(&sim, json!({})));
    assert!(ok, "ADD over a leftover: {r3} {err}");
    let eps = endpoints(&sim);
    let line = eps.lines().find(|l| l.starts_with("cni-ctr3-eth0")).expect("ctr3 listed");
    assert!(line.ends_with(&ns4), "the fresh attachment replaced the leftover: {line}");
    assert_eq!(eps.matches("cni-ctr3-eth0").count(), 1);
    let (ok, _, _) = cni(&h1, OVERLAY_BIN, "DEL", "ctr3", &ns4, &conf(&sim, json!({})));
    assert!(ok);
    let (ok, _, _) = cni(&h1, OVERLAY_BIN, "DEL", "ctr1", &ns1, &conf(&sim, json!({})));
    assert!(ok);
    assert_eq!(endpoints(&sim).lines().count(), 1, "nothing left in the store:\n{}", endpoints(&sim));
}
