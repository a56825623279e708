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

use overlay::lab::sim::{Sim, wait_for};
use serde_json::{Value, json};
use support::*;

/// Where Debian's containernetworking-plugins puts the reference plugins.
const CNI_PATH: &str = "/usr/lib/cni";

/// Runs `plugin` (our binary without arguments, as runtimes call it, or a reference plugin) in
/// host namespace `host_ns`. Returns (success, stdout as JSON or Null, stderr).
fn cni(host_ns: &str, plugin: &str, command: &str, container: &str, netns: &str, conf: &str) -> (bool, Value, String) {
    cni_if(host_ns, plugin, command, container, netns, conf, "eth0")
}

/// [`cni`] with `CNI_IFNAME` = `ifname`.
fn cni_if(host_ns: &str, plugin: &str, command: &str, container: &str, netns: &str, conf: &str, ifname: &str) -> (bool, Value, String) {
    let mut child = Command::new("ip")
        .args(["netns", "exec", host_ns, plugin])
        .env("CNI_COMMAND", command)
        .env("CNI_CONTAINERID", container)
        .env("CNI_NETNS", netns)
        .env("CNI_IFNAME", ifname)
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
    with_store_creds(sim, c).to_string()
}

/// `conf` with the simulation's store credentials in the CNI fields (the store runs TLS with
/// client certificates when the test secured it).
fn with_store_creds(sim: &Sim, mut conf: Value) -> Value {
    let c = &sim.store_creds;
    let fields = [("storeCACert", &c.cacert), ("storeCert", &c.cert), ("storeKey", &c.key)];
    if let Some(o) = conf.as_object_mut() {
        for (k, v) in fields {
            if let Some(p) = v {
                o.insert(k.to_string(), json!(p));
            }
        }
    }
    conf
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
    // The store with TLS and client certificates: the plugin reads them from its config.
    secure_store(&mut sim);
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
    assert_eq!(r1["routes"], json!([{"dst": "0.0.0.0/0", "gw": "10.0.0.1"}]), "the way out via web's gateway: {r1}");
    assert_eq!(r1["ips"][0]["gateway"], "10.0.0.1");
    // ...and it works: the container reaches an outside host, masqueraded by its node.
    sim.add_outside(2, 1500).expect("outside");
    assert!(sim.ping(&ns1.replace("/run/netns/", ""), overlay::lab::sim::OUTSIDE_HOST, 2, None), "a CNI container gets out:\n{}", sim.agent_logs(2));

    // A second ADD of the same container with CNI_IFNAME=eth1 on another network: a second
    // interface; its DEL removes only that one.
    let back = sim.overlay(&h1, &["network", "create", "back", "--subnet", "10.0.9.0/24", "--internal"]).expect("network create");
    assert!(back.status.success(), "{}", String::from_utf8_lossy(&back.stderr));
    let conf_back = with_store_creds(&sim, json!({"cniVersion": "1.0.0", "name": "back", "type": "overlay", "store": sim.etcd_url(), "pinRoot": sim.pin_root})).to_string();
    let (ok, rb, err) = cni_if(&h1, OVERLAY_BIN, "ADD", "ctr1", &ns1, &conf_back, "eth1");
    assert!(ok, "ADD eth1: {rb} {err}");
    assert_eq!((rb["interfaces"][1]["name"].as_str(), rb["ips"][0]["address"].as_str()), (Some("eth1"), Some("10.0.9.2/24")), "{rb}");
    assert_eq!(rb["routes"], json!([]), "an internal network gives no route out: {rb}");
    let c1 = ns1.replace("/run/netns/", "");
    let ip_back: Ipv4Addr = "10.0.9.2".parse().expect("ip");
    assert!(sim.has_address_on(&c1, "eth1", ip_back), "eth1 in ctr1 holds 10.0.9.2");
    let mut check_b = serde_json::from_str::<Value>(&conf_back).expect("conf");
    check_b["prevResult"] = rb.clone();
    let (ok, v, err) = cni_if(&h1, OVERLAY_BIN, "CHECK", "ctr1", &ns1, &check_b.to_string(), "eth1");
    assert!(ok, "CHECK eth1: {v} {err}");
    let (ok, v, err) = cni_if(&h1, OVERLAY_BIN, "DEL", "ctr1", &ns1, &conf_back, "eth1");
    assert!(ok, "DEL eth1: {v} {err}");
    assert!(wait_for(Duration::from_secs(10), || !sim.has_address_on(&c1, "eth1", ip_back)), "eth1 removed");
    assert!(sim.has_address(&c1, "10.0.0.2".parse().expect("ip")), "eth0 untouched by eth1's DEL");
    assert!(endpoints(&sim).contains("cni-ctr1-eth0") && !endpoints(&sim).contains("cni-ctr1-eth1"), "only eth1's endpoint went");
    let rm = sim.overlay(&h1, &["network", "rm", "back"]).expect("network rm");
    assert!(rm.status.success(), "{}", String::from_utf8_lossy(&rm.stderr));

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

    // ADD after a crash mid-way: a leftover endpoint of the same attachment, already wired into
    // another namespace, is replaced: the agent moves it (a new veth) into the fresh namespace.
    let ns3 = sim.add_ns("c3").expect("ns");
    let leftover = sim.overlay(&h1, &["endpoint", "add", "--network", "web", "--netns", &ns3, "--name", "cni-ctr3-eth0"]).expect("leftover");
    assert!(leftover.status.success(), "leftover: {}", String::from_utf8_lossy(&leftover.stderr));
    let ns4 = format!("/run/netns/{}", sim.add_ns("c4").expect("ns"));
    let (ok, r3, err) = cni(&h1, OVERLAY_BIN, "ADD", "ctr3", &ns4, &conf(&sim, json!({})));
    assert!(ok, "ADD over a leftover: {r3} {err}");
    let eps = endpoints(&sim);
    let line = eps.lines().find(|l| l.starts_with("cni-ctr3-eth0")).expect("ctr3 listed");
    assert!(line.ends_with(&ns4), "the fresh attachment replaced the leftover: {line}");
    assert_eq!(eps.matches("cni-ctr3-eth0").count(), 1);
    let ip3: Ipv4Addr = r3["ips"][0]["address"].as_str().and_then(|a| a.split('/').next()).and_then(|a| a.parse().ok()).expect("ctr3 address");
    assert!(sim.has_address(&ns4.replace("/run/netns/", ""), ip3), "the fresh namespace has the address");
    assert!(!sim.has_address(&ns3, ip3), "the old namespace lost its interface");
    assert!(sim.ping(&ns4.replace("/run/netns/", ""), ip1, 2, None), "ping ctr3 (moved) -> ctr1");
    let (ok, _, _) = cni(&h1, OVERLAY_BIN, "DEL", "ctr3", &ns4, &conf(&sim, json!({})));
    assert!(ok);
    let (ok, _, _) = cni(&h1, OVERLAY_BIN, "DEL", "ctr1", &ns1, &conf(&sim, json!({})));
    assert!(ok);
    assert_eq!(endpoints(&sim).lines().count(), 1, "nothing left in the store:\n{}", endpoints(&sim));
}

/// Podman 4.3 (Debian) with its CNI backend, run inside a simulated host: one container on our
/// network reaches a namespace endpoint on another host. Podman calls our plugin itself.
#[test]
fn podman_runs_a_container_on_the_overlay_through_cni() {
    require_root();
    if Command::new("podman").arg("--version").output().is_err() {
        panic!("podman missing (cargo xtask setup installs it)");
    }
    // Podman keeps a blob cache in /var/lib/containers/cache whatever --root says: remove it
    // afterwards if this test is what created it.
    struct RemoveIfNew(Option<&'static str>);
    impl Drop for RemoveIfNew {
        fn drop(&mut self) {
            if let Some(d) = self.0 {
                let _ = std::fs::remove_dir_all(d);
            }
        }
    }
    let _cache = RemoveIfNew((!Path::new("/var/lib/containers").exists()).then_some("/var/lib/containers"));
    let mut sim = Sim::new("q", Path::new(OVERLAY_BIN)).expect("simulation");
    sim.start_store_cluster(2, 3, "web").expect("store cluster");
    let w = sim.workdir.join("podman");
    let (bin_dir, conf_dir) = (w.join("cni-bin"), w.join("cni-conf"));
    std::fs::create_dir_all(&bin_dir).expect("dir");
    std::fs::create_dir_all(&conf_dir).expect("dir");
    std::os::unix::fs::symlink(OVERLAY_BIN, bin_dir.join("overlay")).expect("plugin link");
    let conflist = json!({"cniVersion": "1.0.0", "name": "web", "plugins": [
        {"type": "overlay", "store": sim.etcd_url(), "node": "node1", "pinRoot": sim.pin_root}
    ]});
    std::fs::write(conf_dir.join("web.conflist"), conflist.to_string()).expect("conflist");
    let containers_conf = w.join("containers.conf");
    std::fs::write(
        &containers_conf,
        format!(
            "[network]\nnetwork_backend = \"cni\"\ncni_plugin_dirs = [\"{}\", \"{CNI_PATH}\"]\nnetwork_config_dir = \"{}\"\n\
             [engine]\nruntime = \"runc\"\ncgroup_manager = \"cgroupfs\"\nevents_logger = \"file\"\nevents_logfile_path = \"{}\"\n",
            bin_dir.display(),
            conf_dir.display(),
            w.join("events.log").display()
        ),
    )
    .expect("containers.conf");
    let h1 = overlay::host::netlink::netns_path(&sim.host_ns(1));
    let podman = |args: &[&str]| {
        Command::new("nsenter")
            .arg(format!("--net={}", h1.display()))
            .arg("podman")
            .arg("--root")
            .arg(w.join("root"))
            .arg("--runroot")
            .arg(w.join("run"))
            .args(["--storage-driver", "vfs"])
            .args(args)
            .env("CONTAINERS_CONF", &containers_conf)
            .output()
            .expect("podman")
    };
    // The image: busybox-static, imported.
    let rootfs = w.join("rootfs");
    std::fs::create_dir_all(rootfs.join("bin")).expect("rootfs");
    std::fs::copy("/bin/busybox", rootfs.join("bin/busybox")).expect("busybox-static");
    for a in ["sh", "ping", "ip", "sleep"] {
        std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(a)).expect("applet");
    }
    let tar = w.join("rootfs.tar");
    assert!(Command::new("tar").arg("-C").arg(&rootfs).arg("-cf").arg(&tar).arg(".").status().expect("tar").success());
    let o = podman(&["import", &tar.display().to_string(), "ovbusybox:test"]);
    assert!(o.status.success(), "podman import: {}", String::from_utf8_lossy(&o.stderr));

    // A namespace endpoint on host 2 to reach.
    let x2 = sim.add_ns("x2").expect("ns");
    let out = sim.overlay(&sim.host_ns(2), &["endpoint", "add", "--network", "web", "--netns", &x2]).expect("endpoint add");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let ip_x = String::from_utf8_lossy(&out.stdout).split_whitespace().nth(3).expect("ip").to_string();
    // Podman asks for nofile/nproc limits above what this process may raise to: keep the host's.
    let o = podman(&["run", "--rm", "--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1024:1024", "--network", "web", "ovbusybox:test", "sh", "-c", &format!("ip -4 addr show eth0 && ping -c 2 -W 2 {ip_x}")]);
    let text = format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    assert!(o.status.success() && text.contains("inet 10.0.0."), "podman container on the overlay pings host 2:\n{text}\n{}", sim.agent_logs(2));
    // --rm ran CNI DEL: only the namespace endpoint is left.
    let eps = String::from_utf8_lossy(&sim.overlay(&sim.host_ns(1), &["endpoint", "ls"]).expect("ls").stdout).to_string();
    assert_eq!(eps.lines().count(), 2, "the container's endpoint was removed:\n{eps}");
}
