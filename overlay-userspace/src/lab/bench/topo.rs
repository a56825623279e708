//! The benchmark's two-host topology, built three ways. Each mode gets its own simulated
//! underlay (a switch namespace, hosts h1 and h2 on 192.168.50.0/24) and one container on each
//! host; only the way the containers are connected differs. Everything lives in namespaces of
//! a [`Sim`], removed when it drops.
use std::{net::Ipv4Addr, path::Path, time::Duration};

use anyhow::{Context as _, bail};
use serde::Serialize;

use crate::{
    model::Mac,
    host::netlink,
    lab::sim::{self, Sim, host_vtep, ip},
};

/// How the two containers are connected.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// No overlay: each host routes the other's container subnet (the physical-limit reference).
    Native,
    /// Docker's overlay driver: bridge + kernel vxlan device + static FDB and neighbour entries.
    KernelVxlan,
    /// This project: the agent and its TC programs.
    EbpfTc,
    /// This project with `datapath: xdp`: the XDP ingress in front of the TC one.
    EbpfXdp,
}

impl Mode {
    pub const ALL: [Mode; 4] = [Mode::Native, Mode::KernelVxlan, Mode::EbpfTc, Mode::EbpfXdp];
    /// What a run builds unless told otherwise.
    pub const DEFAULT: [Mode; 3] = [Mode::Native, Mode::KernelVxlan, Mode::EbpfTc];

    pub fn name(self) -> &'static str {
        match self {
            Mode::Native => "native",
            Mode::KernelVxlan => "kernel-vxlan",
            Mode::EbpfTc => "ebpf-tc",
            Mode::EbpfXdp => "ebpf-xdp",
        }
    }

    pub fn parse(s: &str) -> Option<Mode> {
        Mode::ALL.into_iter().find(|m| m.name() == s)
    }

    pub fn is_ebpf(self) -> bool {
        matches!(self, Mode::EbpfTc | Mode::EbpfXdp)
    }
}

/// VNI and overlay subnet of the overlay modes (Docker's first swarm VNI).
pub const VNI: u32 = 4097;
/// Container MTU of the overlay modes, as Docker sets it.
pub const OVERLAY_MTU: u32 = 1450;

/// One built topology: traffic goes from `client` (on host 1) to `server` (on host 2).
pub struct Topology {
    pub mode: Mode,
    pub sim: Sim,
    pub client_ns: String,
    pub server_ns: String,
    pub server_ip: Ipv4Addr,
    /// Container MTU.
    pub mtu: u32,
}

/// Runs `sysctl -w` inside a namespace.
fn sysctl(sim: &Sim, ns: &str, kv: &str) -> anyhow::Result<()> {
    let out = sim.exec(ns, &["sysctl", "-q", "-w", kv])?;
    if !out.status.success() {
        bail!("sysctl {kv} in {ns}: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}

/// A container namespace with `eth0` (the peer of `host_if` in `host_ns`): address (/24), MAC, MTU,
/// default route via `gw` if given. IPv6 is off so that no stray traffic is measured.
fn container(
    sim: &mut Sim,
    name: &str,
    host_ns: &str,
    host_if: &str,
    addr: Ipv4Addr,
    mtu: u32,
    gw: Option<Ipv4Addr>,
) -> anyhow::Result<String> {
    let ns = sim.add_ns(name)?;
    let mtu_s = mtu.to_string();
    ip(&["-n", host_ns, "link", "add", host_if, "mtu", &mtu_s, "type", "veth", "peer", "name", "eth0", "netns", &ns])?;
    netlink::disable_ipv6_in(&netlink::netns_path(&ns))?;
    ip(&["-n", &ns, "link", "set", "eth0", "address", &Mac::from_ip(addr).to_string(), "mtu", &mtu_s, "up"])?;
    ip(&["-n", &ns, "addr", "add", &format!("{addr}/24"), "dev", "eth0"])?;
    if let Some(gw) = gw {
        ip(&["-n", &ns, "route", "add", "default", "via", &gw.to_string()])?;
    }
    ip(&["-n", host_ns, "link", "set", host_if, "up"])?;
    Ok(ns)
}

/// Builds `mode`'s topology. `overlay_bin` runs the agents of the eBPF modes.
pub fn build(mode: Mode, overlay_bin: &Path) -> anyhow::Result<Topology> {
    let tag = match mode {
        Mode::Native => "bn",
        Mode::KernelVxlan => "bk",
        Mode::EbpfTc => "be",
        Mode::EbpfXdp => "bx",
    };
    let mut sim = Sim::new(tag, overlay_bin)?;
    sim.build_underlay(2)?;
    // The switch namespace stands for a physical switch: it does not run the host firewall's
    // hooks on bridged frames (br_netfilter, when loaded, enables them in every namespace).
    // Hosts keep the kernel's defaults, as Docker hosts do.
    let sw = sim.ns_name("sw");
    for key in ["iptables", "ip6tables", "arptables"] {
        let _ = sim.exec(&sw, &["sysctl", "-q", "-w", &format!("net.bridge.bridge-nf-call-{key}=0")]);
    }
    let (h1, h2) = (sim.host_ns(1), sim.host_ns(2));
    for h in [&h1, &h2] {
        netlink::disable_ipv6_in(&netlink::netns_path(h))?;
    }
    let built = match mode {
        Mode::Native => native(&mut sim, &h1, &h2),
        Mode::KernelVxlan => kernel_vxlan(&mut sim, &h1, &h2),
        Mode::EbpfTc => ebpf(&mut sim, "tc"),
        Mode::EbpfXdp => ebpf(&mut sim, "xdp"),
    };
    let (client_ns, server_ns, server_ip, mtu) = built.with_context(|| format!("building the {} topology", mode.name()))?;
    // TCP_CRR opens thousands of connections per second from the client, each leaving a
    // TIME_WAIT socket on its port: let new connections reuse them (and use the whole port
    // range), as netperf users do, so the test does not run out of ports.
    sysctl(&sim, &client_ns, "net.ipv4.tcp_tw_reuse=1")?;
    sysctl(&sim, &client_ns, "net.ipv4.ip_local_port_range=1024 65000")?;
    Ok(Topology { mode, sim, client_ns, server_ns, server_ip, mtu })
}

type Built = (String, String, Ipv4Addr, u32);

/// Host n routes 10.201.n.0/24 to its container and the other container subnet via the other
/// host's underlay address.
fn native(sim: &mut Sim, h1: &str, h2: &str) -> anyhow::Result<Built> {
    let sub = |n: u8, h: u8| Ipv4Addr::new(10, 201, n, h);
    let c1 = container(sim, "c1", h1, "vc1", sub(1, 2), 1500, Some(sub(1, 1)))?;
    let c2 = container(sim, "c2", h2, "vc2", sub(2, 2), 1500, Some(sub(2, 1)))?;
    for (n, h, dev, other) in [(1u8, h1, "vc1", 2u8), (2, h2, "vc2", 1)] {
        ip(&["-n", h, "addr", "add", &format!("{}/24", sub(n, 1)), "dev", dev])?;
        ip(&["-n", h, "route", "add", &format!("10.201.{other}.0/24"), "via", &host_vtep(other as usize).to_string()])?;
        sysctl(sim, h, "net.ipv4.ip_forward=1")?;
    }
    Ok((c1, c2, sub(2, 2), 1500))
}

/// What libnetwork's overlay driver builds on each host: a bridge holding the vxlan device
/// (`learning off, proxy, l2miss, l3miss`, UDP 4789, MTU 1450) and the containers' veths; for
/// each remote container a permanent neighbour entry on the vxlan device (answered by its ARP
/// proxy) and a bridge FDB entry pointing at the remote VTEP.
fn kernel_vxlan(sim: &mut Sim, h1: &str, h2: &str) -> anyhow::Result<Built> {
    let cip = |n: u8| Ipv4Addr::new(10, 0, 1, n + 1);
    let vni = VNI.to_string();
    let mtu = OVERLAY_MTU.to_string();
    for (n, h) in [(1usize, h1), (2, h2)] {
        ip(&["-n", h, "link", "add", "br0", "mtu", &mtu, "type", "bridge"])?;
        ip(&[
            "-n", h, "link", "add", "vxlan0", "mtu", &mtu, "type", "vxlan", "id", &vni, "local", &host_vtep(n).to_string(),
            "dstport", "4789", "dev", "eth0", "nolearning", "proxy", "l2miss", "l3miss",
        ])?;
        ip(&["-n", h, "link", "set", "vxlan0", "master", "br0", "up"])?;
        ip(&["-n", h, "link", "set", "br0", "up"])?;
    }
    let c1 = container(sim, "c1", h1, "vc1", cip(1), OVERLAY_MTU, None)?;
    let c2 = container(sim, "c2", h2, "vc2", cip(2), OVERLAY_MTU, None)?;
    for (h, dev) in [(h1, "vc1"), (h2, "vc2")] {
        ip(&["-n", h, "link", "set", dev, "master", "br0"])?;
    }
    for (h, remote) in [(h1, 2u8), (h2, 1u8)] {
        let rip = cip(remote).to_string();
        let rmac = Mac::from_ip(cip(remote)).to_string();
        ip(&["-n", h, "neigh", "add", &rip, "lladdr", &rmac, "dev", "vxlan0", "nud", "permanent"])?;
        let out = sim.exec(h, &["bridge", "fdb", "add", &rmac, "dev", "vxlan0", "dst", &host_vtep(remote as usize).to_string(), "self", "permanent"])?;
        if !out.status.success() {
            bail!("bridge fdb add in {h}: {}", String::from_utf8_lossy(&out.stderr).trim());
        }
    }
    Ok((c1, c2, cip(2), OVERLAY_MTU))
}

/// The agent on each host, from a cluster file naming the two containers; `datapath` is the
/// nodes' `datapath:` (tc or xdp).
fn ebpf(sim: &mut Sim, datapath: &str) -> anyhow::Result<Built> {
    let c1 = sim.add_ns("c1")?;
    let c2 = sim.add_ns("c2")?;
    let (ip1, ip2) = (Ipv4Addr::new(10, 0, 1, 2), Ipv4Addr::new(10, 0, 1, 3));
    let file = format!(
        "vxlan_port: 4789\nnodes:\n  - {{name: node1, vtep: {}, underlay: eth0, datapath: {datapath}}}\n  - {{name: node2, vtep: {}, underlay: eth0, datapath: {datapath}}}\n\
         networks:\n  - {{name: bench-net, vni: {VNI}, subnet: 10.0.1.0/24, mtu: {OVERLAY_MTU}}}\n\
         endpoints:\n  - {{name: c1, network: bench-net, node: node1, ip: {ip1}, netns: {c1}}}\n  - {{name: c2, network: bench-net, node: node2, ip: {ip2}, netns: {c2}}}\n",
        host_vtep(1),
        host_vtep(2),
    );
    let path = sim.write_file("cluster.yaml", &file)?;
    for n in 1..=2 {
        let h = sim.host_ns(n);
        sim.spawn_agent(&format!("node{n}"), &h, &path)?;
    }
    if !sim::wait_for(Duration::from_secs(20), || sim.has_address(&c1, ip1) && sim.has_address(&c2, ip2)) {
        let logs: String = (1..=2).map(|n| std::fs::read_to_string(sim.agent_log(&format!("node{n}"))).unwrap_or_default()).collect();
        bail!("the agents did not wire the containers within 20 s; agent logs:\n{logs}");
    }
    Ok((c1, c2, ip2, OVERLAY_MTU))
}

impl Topology {
    /// The pin directories of the agents of an eBPF mode (the links under them name the
    /// programs attached); empty for the other modes.
    pub fn agent_pin_dirs(&self) -> Vec<std::path::PathBuf> {
        if !self.mode.is_ebpf() {
            return Vec::new();
        }
        (1..=2).map(|n| self.sim.pin_dir(&format!("node{n}"))).collect()
    }

    /// Checks that the client reaches the server before anything is measured.
    pub fn check(&self) -> anyhow::Result<()> {
        if !sim::wait_for(Duration::from_secs(5), || self.sim.ping(&self.client_ns, self.server_ip, 1, None)) {
            bail!("{}: {} does not answer ping from the client container", self.mode.name(), self.server_ip);
        }
        Ok(())
    }
}
