//! The Docker network plugin under Debian's real dockerd (20.10), started by the harness inside
//! a simulated host with its own data root and socket; the image is imported from
//! busybox-static (nothing is pulled). Containers on the plugin's network reach each other and a
//! namespace endpoint on a second host over VXLAN; removing them leaves nothing behind. Every
//! process (by PID), namespace, mount and pin is removed at the end (`Sim`).
mod support;

use std::{
    net::Ipv4Addr,
    path::{Path, PathBuf},
    process::{Command, Output},
    time::Duration,
};

use overlay::lab::sim::{Sim, wait_for};
use overlay_common::FDB_LOCAL;
use support::*;


struct Docker(PathBuf);

impl Docker {
    fn run(&self, args: &[&str]) -> Output {
        Command::new("docker").arg("-H").arg(format!("unix://{}", self.0.display())).args(args).output().expect("docker CLI")
    }

    fn ok(&self, args: &[&str]) -> String {
        let o = self.run(args);
        assert!(o.status.success(), "docker {} failed:\n{}", args.join(" "), text(&o));
        String::from_utf8_lossy(&o.stdout).trim().to_string()
    }
}

/// A minimal image: busybox-static and a few applet links, imported (no registry here).
fn import_busybox(docker: &Docker, dir: &Path) {
    let bin = dir.join("bin");
    std::fs::create_dir_all(&bin).expect("rootfs");
    std::fs::copy("/bin/busybox", bin.join("busybox")).expect("busybox-static (cargo xtask setup installs it)");
    for applet in ["sh", "ping", "ip", "sleep", "cat", "nslookup"] {
        std::os::unix::fs::symlink("busybox", bin.join(applet)).expect("applet link");
    }
    let tar = Command::new("tar").arg("-C").arg(dir).args(["-c", "."]).output().expect("tar");
    let mut child = Command::new("docker")
        .arg("-H")
        .arg(format!("unix://{}", docker.0.display()))
        .args(["import", "-", "ovbusybox:test"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("docker import");
    std::io::Write::write_all(&mut child.stdin.take().expect("stdin"), &tar.stdout).expect("image");
    assert!(child.wait().expect("import").success(), "docker import");
}

#[test]
fn docker_containers_on_the_plugin_network_reach_each_other_and_another_host() {
    require_root();
    // dockerd 20.10 writes its trust key to /etc/docker/key.json whatever its data root: remove it
    // afterwards if this test is what created it.
    struct RemoveIfNew(Vec<&'static str>);
    impl Drop for RemoveIfNew {
        fn drop(&mut self) {
            for p in &self.0 {
                let _ = std::fs::remove_file(p).or_else(|_| std::fs::remove_dir(p));
            }
        }
    }
    let _key = RemoveIfNew(["/etc/docker/key.json", "/etc/docker"].into_iter().filter(|p| !Path::new(p).exists()).collect());
    let mut sim = Sim::new("d", Path::new(OVERLAY_BIN)).expect("simulation");
    // The store as production runs it: TLS and client certificates, for the plugin too.
    secure_store(&mut sim);
    sim.start_store_cluster(2, 3, "web").expect("store cluster");
    let h1 = sim.host_ns(1);
    // The plugin under its default name, as the README runs it: `-d ebpf-overlay` must reach it
    // (under `overlay`, Docker's built-in swarm driver answered instead).
    let plugin = overlay::defaults::DOCKER_PLUGIN_NAME.to_string();
    assert_ne!(plugin, "overlay", "Docker's built-in overlay driver shadows a plugin named overlay");
    let sock = sim.spawn_docker_plugin("node1", &h1, None).expect("plugin");
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&sock).expect("socket").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "the plugin socket attaches containers to any network: root (dockerd) only");
    }
    let docker = Docker(sim.start_dockerd(1).expect("dockerd"));
    import_busybox(&docker, &sim.workdir.join("rootfs"));

    // Errors come back as Docker shows them.
    let o = docker.run(&["network", "create", "-d", &plugin, "--subnet", "10.0.1.0/24", "-o", "vni=4096", "bad-net"]);
    assert!(!o.status.success() && text(&o).contains("VNI 4096 is in use by network web"), "{}", text(&o));

    docker.ok(&["network", "create", "-d", &plugin, "--subnet", "10.0.1.0/24", "--gateway", "10.0.1.254", "-o", "vni=5001", "-o", "mtu=1400", "nginx-net"]);
    let nets = String::from_utf8_lossy(&sim.overlay(&h1, &["network", "ls"]).expect("ls").stdout).to_string();
    let line = nets.lines().find(|l| l.contains(" 5001 ")).unwrap_or_else(|| panic!("no VNI 5001 network:\n{nets}"));
    assert!(line.contains("10.0.1.0/24") && line.contains("10.0.1.254") && line.contains(" 1400 "), "--subnet, --gateway, -o vni, -o mtu honoured: {line}");
    let store_net = line.split_whitespace().next().expect("name").to_string();

    for c in ["ca", "cb"] {
        docker.ok(&["run", "-d", "--name", c, "--network", "nginx-net", "ovbusybox:test", "sleep", "600"]);
    }
    let ip = |c: &str| -> Ipv4Addr { docker.ok(&["inspect", "-f", "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}", c]).parse().expect("container IP") };
    let (ip_a, ip_b) = (ip("ca"), ip("cb"));
    for addr in [ip_a, ip_b] {
        let wired = wait_for(Duration::from_secs(15), || sim.fdb_entry("node1", 5001, addr).is_some_and(|e| e.kind == FDB_LOCAL) && sim.fdb_entry("node2", 5001, addr).is_some());
        assert!(wired, "{addr} wired on node1 and known on node2:\n{}", sim.agent_logs(2));
    }
    let ping = |from: &str, to: Ipv4Addr| docker.run(&["exec", from, "ping", "-c", "2", "-W", "2", &to.to_string()]);
    assert_eq!(docker.ok(&["exec", "ca", "cat", "/sys/class/net/eth0/mtu"]), "1400", "container MTU from -o mtu");
    let o = ping("ca", ip_b);
    assert!(o.status.success(), "container a -> b:\n{}", text(&o));

    // A namespace endpoint on host 2, through the CLI, in the same overlay network.
    let x2 = sim.add_ns("x2").expect("ns");
    let out = sim.overlay(&sim.host_ns(2), &["endpoint", "add", "--network", &store_net, "--netns", &x2]).expect("endpoint add");
    assert!(out.status.success(), "{}", text(&out));
    let ip_x: Ipv4Addr = String::from_utf8_lossy(&out.stdout).split_whitespace().nth(3).expect("ip").parse().expect("ip");
    assert!(![ip_a, ip_b].contains(&ip_x), "the store knows Docker's addresses");
    let o = ping("ca", ip_x);
    assert!(o.status.success(), "container a -> namespace on host 2 over VXLAN:\n{}", text(&o));
    // Names: with `--dns <gateway>`, Docker's embedded resolver forwards names it does not know
    // to the overlay's resolver, which knows the endpoint on host 2.
    docker.ok(&["run", "-d", "--name", "cdns", "--network", "nginx-net", "--ip", "10.0.1.50", "--dns", "10.0.1.254", "ovbusybox:test", "sleep", "600"]);
    let looked_up = wait_for(Duration::from_secs(10), || docker.run(&["exec", "cdns", "nslookup", &x2]).status.success());
    let o = docker.run(&["exec", "cdns", "nslookup", &x2]);
    assert!(looked_up && text(&o).contains(&ip_x.to_string()), "a Docker container resolves an endpoint of another host by name:\n{}\n{}", text(&o), sim.agent_logs(2));
    docker.ok(&["rm", "-f", "cdns"]);
    assert!(sim.ping(&x2, ip_b, 2, None), "namespace on host 2 -> container b");

    // The way out: Docker took the overlay's gateway from Join as the default route, and the
    // container reaches the outside host through it, masqueraded by node1.
    let routes = docker.ok(&["exec", "ca", "ip", "route"]);
    assert!(routes.contains("default via 10.0.1.254 dev eth0"), "default route via the network's gateway:\n{routes}");
    sim.add_outside(2, 1500).expect("outside");
    let o = docker.run(&["exec", "ca", "ping", "-c", "2", "-W", "2", &overlay::lab::sim::OUTSIDE_HOST.to_string()]);
    assert!(o.status.success(), "a Docker container reaches the outside host through the way out:\n{}\n{}", text(&o), sim.agent_logs(2));

    // `docker network connect` of a running container: a second interface on another overlay
    // network; `disconnect` takes it away; the networks stay apart.
    docker.ok(&["network", "create", "-d", &plugin, "--internal", "--subnet", "10.0.2.0/24", "-o", "vni=5002", "back-net"]);
    let nets = String::from_utf8_lossy(&sim.overlay(&h1, &["network", "ls"]).expect("ls").stdout).to_string();
    let back_net = nets.lines().find(|l| l.contains(" 5002 ")).and_then(|l| l.split_whitespace().next()).expect("VNI 5002 network").to_string();
    let v: serde_json::Value = serde_json::from_slice(&sim.overlay(&h1, &["network", "inspect", &back_net]).expect("inspect").stdout).expect("JSON");
    assert_eq!(v[0]["Internal"], true, "docker network create --internal reaches the store: {v}");
    docker.ok(&["run", "-d", "--name", "cc", "--network", "back-net", "ovbusybox:test", "sleep", "600"]);
    let ip_c = ip("cc");
    docker.ok(&["network", "connect", "back-net", "ca"]);
    let addrs = docker.ok(&["exec", "ca", "ip", "-o", "-4", "addr"]);
    assert!(addrs.contains("eth1") && addrs.contains("inet 10.0.2."), "ca got eth1 on back-net:\n{addrs}");
    let o = ping("ca", ip_c);
    assert!(o.status.success(), "ca reaches cc over its new interface:\n{}\n{}", text(&o), sim.agent_logs(2));
    let routes = docker.ok(&["exec", "ca", "ip", "route"]);
    assert!(routes.contains("default via 10.0.1.254 dev eth0") && !routes.contains("default via 10.0.2."), "the internal network adds no way out:\n{routes}");
    let o = docker.run(&["exec", "cb", "ping", "-c", "1", "-W", "1", &ip_c.to_string()]);
    assert!(!o.status.success(), "cb (nginx-net only) must not reach cc (back-net)");
    docker.ok(&["network", "disconnect", "back-net", "ca"]);
    let gone = wait_for(Duration::from_secs(10), || !docker.ok(&["exec", "ca", "ip", "-o", "link"]).contains("eth1"));
    assert!(gone, "eth1 left ca");
    let o = ping("ca", ip_b);
    assert!(o.status.success(), "ca's eth0 still carries traffic after the disconnect:\n{}", text(&o));
    docker.ok(&["rm", "-f", "cc"]);
    docker.ok(&["network", "rm", "back-net"]);

    // Removal leaves no veth, map entry or store key.
    assert!(sim.overlay(&h1, &["endpoint", "rm", &x2]).expect("rm").status.success());
    docker.ok(&["rm", "-f", "ca", "cb"]);
    docker.ok(&["network", "rm", "nginx-net"]);
    let clean = wait_for(Duration::from_secs(15), || {
        let links = String::from_utf8_lossy(&Command::new("ip").args(["-n", &h1, "-o", "link"]).output().expect("ip link").stdout).to_string();
        !links.contains(": ovl") && [ip_a, ip_b, ip_x].iter().all(|a| sim.fdb_entry("node1", 5001, *a).is_none() && sim.fdb_entry("node2", 5001, *a).is_none())
    });
    let plugin_log = std::fs::read_to_string(sim.workdir.join("docker-plugin.log")).unwrap_or_default();
    assert!(clean, "veths and map entries gone:\n{}\n--- plugin\n{plugin_log}", sim.agent_logs(2));
    let keys: Vec<String> = sim
        .with_etcd(|mut c| async move {
            let r = c.get("/overlay/", Some(etcd_client::GetOptions::new().with_prefix().with_keys_only())).await.map_err(std::io::Error::other)?;
            Ok(r.kvs().iter().map(|kv| String::from_utf8_lossy(kv.key()).to_string()).collect())
        })
        .expect("keys");
    let leftover: Vec<&String> = keys.iter().filter(|k| k.contains("/docker/") || k.contains("/dk-") || k.contains(&store_net) || k.contains("10.0.1.") || k.contains("10.0.2.")).collect();
    assert!(leftover.is_empty(), "store keys left behind: {leftover:?}");
}
