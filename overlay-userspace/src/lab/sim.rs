//! A simulated cluster on one machine, for the demo and the tests: each host is a network
//! namespace whose `eth0` plugs into a bridge in a shared "underlay switch" namespace;
//! containers are namespaces the agents wire. Every namespace, agent process and pin directory
//! made here is removed on drop, even when a test panics. All traffic stays inside these
//! namespaces.
use std::{
    fs,
    io::{self, Write as _},
    net::Ipv4Addr,
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, Instant},
};

use crate::{
    dataplane,
    model::Mac,
    source::store::{Credentials, StoreAccess},
};

static SEQ: AtomicU32 = AtomicU32::new(0);

/// Underlay addresses of simulated hosts: 192.168.50.<n>.
pub fn host_vtep(n: usize) -> Ipv4Addr {
    Ipv4Addr::new(192, 168, 50, n as u8)
}

/// The router between the underlay and the outside world, in [`Sim::add_outside`].
pub const ROUTER_IP: Ipv4Addr = Ipv4Addr::new(192, 168, 50, 253);
/// The host standing for the internet in [`Sim::add_outside`].
pub const OUTSIDE_HOST: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 10);
/// The address every simulated agent forwards unknown names to (`--dns-upstream`); a test
/// that wants an upstream serves it in the outside namespace (see [`Sim::add_outside`]).
pub const OUTSIDE_DNS: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 53);

/// A container of the standard demo cluster.
#[derive(Clone, Debug)]
pub struct Container {
    pub name: String,
    pub network: &'static str,
    pub node: usize,
    pub ip: Ipv4Addr,
    pub netns: String,
}

pub struct Sim {
    pub prefix: String,
    overlay_bin: PathBuf,
    namespaces: Vec<String>,
    agents: Vec<(String, Child)>,
    /// The etcd server of [`Sim::start_etcd`], in the underlay switch namespace.
    etcd: Option<Child>,
    /// The members of [`Sim::start_etcd_cluster`], by slot (slot `i` is `members[i - 1]`).
    members: Vec<EtcdMember>,
    /// dockerd of [`Sim::start_dockerd`] and its work directory.
    dockerd: Option<(Child, PathBuf)>,
    pub pin_root: PathBuf,
    pub workdir: PathBuf,
    /// Server side of the store's TLS (see [`Sim::secure_store`]).
    etcd_tls: Option<EtcdTls>,
    /// What every component of the simulation (CLI, agents, plugins) presents to the store.
    pub store_creds: Credentials,
}

/// etcd's TLS: its certificate and key, and the CA its clients' certificates must come from
/// (etcd's `--client-cert-auth`).
#[derive(Clone, Debug)]
pub struct EtcdTls {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub client_ca: PathBuf,
}

/// Runs `ip` (the simulation harness may; the agent itself uses netlink).
pub fn ip(args: &[&str]) -> io::Result<()> {
    let out = Command::new("ip").args(args).stdin(Stdio::null()).output()?;
    if !out.status.success() {
        return Err(io::Error::other(format!("ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim())));
    }
    Ok(())
}

/// Polls `f` every 50 ms until it holds or `timeout` passes.
pub fn wait_for(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let t0 = Instant::now();
    loop {
        if f() {
            return true;
        }
        if t0.elapsed() > timeout {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

impl Sim {
    /// A new empty simulation. `tag` goes into every name, with the PID and a sequence number,
    /// so concurrent runs never collide.
    pub fn new(tag: &str, overlay_bin: &Path) -> io::Result<Self> {
        let prefix = format!("ov{tag}{}x{}", std::process::id(), SEQ.fetch_add(1, Ordering::Relaxed));
        let pin_root = dataplane::host_bpffs().map_err(io::Error::other)?.join("overlay").join(&prefix);
        let workdir = std::env::temp_dir().join(&prefix);
        fs::create_dir_all(&workdir)?;
        Ok(Sim {
            prefix,
            overlay_bin: overlay_bin.to_path_buf(),
            namespaces: vec![],
            agents: vec![],
            etcd: None,
            members: vec![],
            dockerd: None,
            pin_root,
            workdir,
            etcd_tls: None,
            store_creds: Credentials::default(),
        })
    }

    pub fn ns_name(&self, what: &str) -> String {
        format!("{}-{what}", self.prefix)
    }

    /// Creates a namespace (recorded for removal) with `lo` up.
    pub fn add_ns(&mut self, what: &str) -> io::Result<String> {
        let name = self.ns_name(what);
        ip(&["netns", "add", &name])?;
        self.namespaces.push(name.clone());
        ip(&["-n", &name, "link", "set", "lo", "up"])?;
        Ok(name)
    }

    pub fn host_ns(&self, n: usize) -> String {
        self.ns_name(&format!("h{n}"))
    }

    /// Builds the underlay: a switch namespace with a bridge, and `hosts` host namespaces with
    /// `eth0` = 192.168.50.<n>/24 (MTU 1500).
    pub fn build_underlay(&mut self, hosts: usize) -> io::Result<()> {
        let sw = self.add_ns("sw")?;
        ip(&["-n", &sw, "link", "add", "br0", "type", "bridge"])?;
        ip(&["-n", &sw, "link", "set", "br0", "up"])?;
        for n in 1..=hosts {
            self.add_host(n)?;
        }
        Ok(())
    }

    /// Adds host `n` to the underlay switch.
    pub fn add_host(&mut self, n: usize) -> io::Result<String> {
        let sw = self.ns_name("sw");
        let h = self.add_ns(&format!("h{n}"))?;
        let port = format!("p{n}");
        ip(&["-n", &sw, "link", "add", &port, "type", "veth", "peer", "name", "eth0", "netns", &h])?;
        ip(&["-n", &sw, "link", "set", &port, "master", "br0", "up"])?;
        ip(&["-n", &h, "addr", "add", &format!("{}/24", host_vtep(n)), "dev", "eth0"])?;
        ip(&["-n", &h, "link", "set", "eth0", "up"])?;
        Ok(h)
    }

    /// Adds "the outside world" behind the underlay: a router namespace on the switch
    /// (192.168.50.253) and an outside host behind it ([`OUTSIDE_HOST`], 203.0.113.0/24, a
    /// documentation range that exists only here); the router sends on that link with MTU
    /// `outside_mtu`. Every host
    /// gets its default route via the router. Returns the outside host's namespace.
    pub fn add_outside(&mut self, hosts: usize, outside_mtu: u32) -> io::Result<String> {
        let sw = self.ns_name("sw");
        let rt = self.add_ns("rt")?;
        let out = self.add_ns("out")?;
        ip(&["-n", &sw, "link", "add", "prt", "type", "veth", "peer", "name", "eth0", "netns", &rt])?;
        ip(&["-n", &sw, "link", "set", "prt", "master", "br0", "up"])?;
        ip(&["-n", &rt, "addr", "add", &format!("{ROUTER_IP}/24"), "dev", "eth0"])?;
        ip(&["-n", &rt, "link", "set", "eth0", "up"])?;
        ip(&["-n", &rt, "link", "add", "eth1", "type", "veth", "peer", "name", "eth0", "netns", &out])?;
        ip(&["-n", &rt, "addr", "add", "203.0.113.1/24", "dev", "eth1"])?;
        let mtu = outside_mtu.to_string();
        ip(&["-n", &rt, "link", "set", "eth1", "mtu", &mtu, "up"])?;
        ip(&["-n", &out, "addr", "add", &format!("{OUTSIDE_HOST}/24"), "dev", "eth0"])?;
        ip(&["-n", &out, "addr", "add", &format!("{OUTSIDE_DNS}/24"), "dev", "eth0"])?;
        // The outside host's own MTU stays 1500 (it advertises a 1460-byte MSS): only the
        // router's side is narrow, so the router has to ask senders to shrink (path-MTU discovery).
        ip(&["-n", &out, "link", "set", "eth0", "up"])?;
        ip(&["-n", &out, "link", "set", "lo", "up"])?;
        ip(&["-n", &out, "route", "add", "default", "via", "203.0.113.1"])?;
        self.exec(&rt, &["sysctl", "-qw", "net.ipv4.ip_forward=1"])?;
        for n in 1..=hosts {
            ip(&["-n", &self.host_ns(n), "route", "replace", "default", "via", &ROUTER_IP.to_string()])?;
        }
        Ok(out)
    }

    /// Runs a command inside a namespace.
    pub fn exec(&self, ns: &str, args: &[&str]) -> io::Result<Output> {
        Command::new("ip").args(["netns", "exec", ns]).args(args).stdin(Stdio::null()).output()
    }

    /// `ping` from `ns` to `dst`: true if any of `count` echoes came back.
    pub fn ping(&self, ns: &str, dst: Ipv4Addr, count: u32, payload: Option<(usize, bool)>) -> bool {
        let c = count.to_string();
        let d = dst.to_string();
        let mut args = vec!["ping", "-n", "-q", "-c", &c, "-i", "0.2", "-W", "1"];
        let s;
        if let Some((size, df)) = payload {
            s = size.to_string();
            args.extend(["-s", &s]);
            if df {
                args.extend(["-M", "do"]);
            }
        }
        args.push(&d);
        self.exec(ns, &args).map(|o| o.status.success()).unwrap_or(false)
    }

    pub fn write_file(&self, name: &str, text: &str) -> io::Result<PathBuf> {
        let p = self.workdir.join(name);
        let tmp = self.workdir.join(format!(".{name}.tmp"));
        fs::File::create(&tmp)?.write_all(text.as_bytes())?;
        fs::rename(&tmp, &p)?;
        Ok(p)
    }

    pub fn agent_log(&self, node: &str) -> PathBuf {
        self.workdir.join(format!("agent-{node}.log"))
    }

    /// Starts `overlay agent` for `node` inside host namespace `host_ns`.
    pub fn spawn_agent(&mut self, node: &str, host_ns: &str, cluster: &Path) -> io::Result<()> {
        let cluster = cluster.display().to_string();
        self.spawn_agent_with(node, host_ns, &["--cluster", &cluster])
    }

    /// Starts `overlay agent` for `node` on a cluster file with `extra` arguments (e.g.
    /// `--datapath xdp`).
    pub fn spawn_agent_extra(&mut self, node: &str, host_ns: &str, cluster: &Path, extra: &[&str]) -> io::Result<()> {
        let cluster = cluster.display().to_string();
        let mut args = vec!["--cluster", cluster.as_str()];
        args.extend_from_slice(extra);
        self.spawn_agent_with(node, host_ns, &args)
    }

    /// Starts `overlay agent --store` for `node` inside host namespace `host_ns`, registering
    /// `vtep` with a lease of `ttl` seconds.
    pub fn spawn_store_agent(&mut self, node: &str, host_ns: &str, vtep: Ipv4Addr, ttl: u32) -> io::Result<()> {
        let (url, vtep, ttl) = (self.etcd_url(), vtep.to_string(), ttl.to_string());
        self.spawn_agent_with(node, host_ns, &["--store", &url, "--vtep", &vtep, "--lease-ttl", &ttl])
    }

    /// Starts an agent with `source` arguments; its log (appended across restarts) is
    /// [`Sim::agent_log`]. `OVERLAY_SIM_AGENT_LOG` overrides its `RUST_LOG` (default `info`).
    fn spawn_agent_with(&mut self, node: &str, host_ns: &str, source: &[&str]) -> io::Result<()> {
        let log = fs::OpenOptions::new().create(true).append(true).open(self.agent_log(node))?;
        // Names the overlay does not know go to the outside world's DNS server (only ever a
        // namespace of this simulation), never to this machine's resolvers.
        let child = Command::new(&self.overlay_bin)
            .arg("agent")
            .args(source)
            .args(["--node", node, "--netns", host_ns, "--dns-upstream", &OUTSIDE_DNS.to_string(), "--pin-root"])
            .arg(&self.pin_root)
            .env("RUST_LOG", std::env::var("OVERLAY_SIM_AGENT_LOG").unwrap_or_else(|_| "info".into()))
            .envs(self.store_env())
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()?;
        self.agents.push((node.to_string(), child));
        Ok(())
    }

    /// The PID of the agent of `node`.
    pub fn agent_pid(&self, node: &str) -> Option<u32> {
        self.agents.iter().find(|(n, _)| n == node).map(|(_, c)| c.id())
    }

    /// Kills the agent of `node` with SIGKILL (a crash: nothing is cleaned up).
    pub fn kill_agent(&mut self, node: &str) -> io::Result<()> {
        if let Some(i) = self.agents.iter().position(|(n, _)| n == node) {
            let (_, mut child) = self.agents.remove(i);
            child.kill()?;
            child.wait()?;
        }
        Ok(())
    }

    /// Where [`Sim::start_etcd`] serves clients: on the underlay switch, reachable from every
    /// host namespace (and from nowhere else).
    pub fn etcd_addr(&self) -> std::net::SocketAddr {
        std::net::SocketAddr::from((ETCD_IP, 2379))
    }

    /// The store URL agents and the CLI use: every member's address after
    /// [`Sim::start_etcd_cluster`], else [`Sim::start_etcd`]'s one server.
    pub fn etcd_url(&self) -> String {
        if self.members.is_empty() {
            format!("etcd://{}", self.etcd_addr())
        } else {
            let addrs: Vec<String> = (1..=self.members.len()).map(|i| format!("{}:2379", member_ip(i))).collect();
            format!("etcd://{}", addrs.join(","))
        }
    }

    /// Gives the switch namespace an address on the underlay (for etcd, and for the harness's
    /// own clients there).
    fn switch_address(&self) -> io::Result<()> {
        let sw = self.ns_name("sw");
        let has_ip = String::from_utf8_lossy(&self.exec(&sw, &["ip", "-4", "-o", "addr", "show", "dev", "br0"])?.stdout).contains(&ETCD_IP.to_string());
        if !has_ip {
            ip(&["-n", &sw, "addr", "add", &format!("{ETCD_IP}/24"), "dev", "br0"])?;
        }
        Ok(())
    }

    /// Starts a cluster of `members` etcd members (Debian's `etcd`), each in its own namespace
    /// on the underlay switch (`e1`, `e2`, ... at [`member_ip`]; peers talk over the underlay
    /// too), data under the work directory; waits until the cluster has a leader. Agents and
    /// the CLI started afterwards get every member's address ([`Sim::etcd_url`]). Call after
    /// [`Sim::build_underlay`], instead of [`Sim::start_etcd`].
    pub fn start_etcd_cluster(&mut self, members: usize) -> io::Result<()> {
        self.switch_address()?;
        let sw = self.ns_name("sw");
        for slot in 1..=members {
            let ns = self.add_ns(&format!("e{slot}"))?;
            let port = format!("pe{slot}");
            ip(&["-n", &sw, "link", "add", &port, "type", "veth", "peer", "name", "eth0", "netns", &ns])?;
            ip(&["-n", &sw, "link", "set", &port, "master", "br0", "up"])?;
            ip(&["-n", &ns, "addr", "add", &format!("{}/24", member_ip(slot)), "dev", "eth0"])?;
            ip(&["-n", &ns, "link", "set", "eth0", "up"])?;
            self.members.push(EtcdMember { name: format!("m{slot}"), ns, child: None });
        }
        let cluster: Vec<String> = self.members.iter().enumerate().map(|(i, m)| format!("{}={}", m.name, peer_url(i + 1))).collect();
        let cluster = cluster.join(",");
        for slot in 1..=members {
            self.spawn_member(slot, &cluster, "new")?;
        }
        for slot in 1..=members {
            self.wait_member(slot)?;
        }
        if !wait_for(Duration::from_secs(20), || self.etcd_leader().is_ok()) {
            return Err(io::Error::other(format!("the etcd cluster elected no leader within 20 s:\n{}", self.member_logs())));
        }
        Ok(())
    }

    /// The log of the member in `slot` (appended across replacements).
    pub fn member_log(&self, slot: usize) -> PathBuf {
        self.workdir.join(format!("etcd-e{slot}.log"))
    }

    fn member_logs(&self) -> String {
        (1..=self.members.len()).map(|i| format!("--- etcd e{i}\n{}", fs::read_to_string(self.member_log(i)).unwrap_or_default())).collect()
    }

    /// Starts the member of `slot` under its current name, with its own data directory.
    fn spawn_member(&mut self, slot: usize, initial_cluster: &str, state: &str) -> io::Result<()> {
        let m = &self.members[slot - 1];
        let client = format!("http://{}:2379", member_ip(slot));
        let peer = peer_url(slot);
        let log = fs::OpenOptions::new().create(true).append(true).open(self.member_log(slot))?;
        let child = Command::new("ip")
            .args(["netns", "exec", &m.ns, "etcd", "--name", &m.name, "--data-dir"])
            .arg(self.workdir.join(format!("etcd-{}", m.name)))
            .args(["--listen-client-urls", &client, "--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer, "--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", initial_cluster, "--initial-cluster-state", state, "--initial-cluster-token", &self.prefix])
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()?;
        self.members[slot - 1].child = Some(child);
        Ok(())
    }

    /// Waits until the member of `slot` accepts client connections.
    fn wait_member(&self, slot: usize) -> io::Result<()> {
        let addr = std::net::SocketAddr::from((member_ip(slot), 2379));
        let ns = crate::host::netlink::netns_path(&self.ns_name("sw"));
        if !wait_for(Duration::from_secs(20), || in_netns_connect(&ns, addr)) {
            return Err(io::Error::other(format!("etcd member e{slot} did not start within 20 s:\n{}", self.member_logs())));
        }
        Ok(())
    }

    /// The PID of the member process of `slot`, while it runs.
    pub fn member_pid(&self, slot: usize) -> Option<u32> {
        self.members.get(slot - 1)?.child.as_ref().map(Child::id)
    }

    /// Asks the member of `slot` (alone) for its status: (its member id, the leader it knows,
    /// 0 if none).
    pub fn member_status(&self, slot: usize) -> io::Result<(u64, u64)> {
        self.with_members(&[slot], async |mut c| {
            let s = c.status().await.map_err(io::Error::other)?;
            Ok((s.header().map(|h| h.member_id()).unwrap_or(0), s.leader()))
        })
    }

    /// The slot of the current leader, as the running members see it (they must agree).
    pub fn etcd_leader(&self) -> io::Result<usize> {
        let mut ids = Vec::new();
        let mut leaders = Vec::new();
        for slot in 1..=self.members.len() {
            if self.member_pid(slot).is_none() {
                continue;
            }
            if let Ok((id, leader)) = self.member_status(slot) {
                ids.push((slot, id));
                leaders.push(leader);
            }
        }
        let Some(&leader) = leaders.first() else { return Err(io::Error::other("no member answers")) };
        if leader == 0 || leaders.iter().any(|l| *l != leader) {
            return Err(io::Error::other(format!("no agreed leader: {leaders:x?}")));
        }
        ids.iter().find(|(_, id)| *id == leader).map(|(slot, _)| *slot).ok_or_else(|| io::Error::other(format!("leader {leader:x} is not a running member")))
    }

    /// Moves the leadership to the member of `slot` (asked of the current leader).
    pub fn etcd_move_leader(&self, slot: usize) -> io::Result<()> {
        let leader = self.etcd_leader()?;
        if leader == slot {
            return Ok(());
        }
        let (target, _) = self.member_status(slot)?;
        self.with_members(&[leader], async move |mut c| c.move_leader(target).await.map(|_| ()).map_err(io::Error::other))
    }

    /// Kills the member of `slot` with SIGKILL by its PID (a crash); its data stays.
    pub fn kill_member(&mut self, slot: usize) -> io::Result<()> {
        if let Some(mut c) = self.members[slot - 1].child.take() {
            c.kill()?;
            c.wait()?;
        }
        Ok(())
    }

    /// Replaces the member of `slot`, which must be stopped: removes it from the cluster
    /// (etcd's member API, asked of the running members), adds a new member with the same
    /// addresses, a new name and an empty data directory, and starts it with
    /// `--initial-cluster-state existing`; returns once it accepts clients and knows the leader.
    pub fn replace_member(&mut self, slot: usize) -> io::Result<()> {
        if self.member_pid(slot).is_some() {
            return Err(io::Error::other(format!("member e{slot} still runs: kill it first")));
        }
        let others: Vec<usize> = (1..=self.members.len()).filter(|s| *s != slot && self.member_pid(*s).is_some()).collect();
        let old = self.members[slot - 1].name.clone();
        let new = format!("{old}r");
        let peer = peer_url(slot);
        let cluster = self.with_members(&others, async move |mut c| {
            let list = c.member_list().await.map_err(io::Error::other)?;
            let id = list.members().iter().find(|m| m.name() == old).map(|m| m.id()).ok_or_else(|| io::Error::other(format!("no member named {old}")))?;
            c.member_remove(id).await.map_err(io::Error::other)?;
            let added = c.member_add([peer.clone()], None).await.map_err(io::Error::other)?;
            // The new member has no name until it starts: it is the one with its peer URL.
            let cluster: Vec<String> = added
                .member_list()
                .iter()
                .map(|m| {
                    let name = if m.peer_urls().contains(&peer) { new.as_str() } else { m.name() };
                    format!("{name}={}", m.peer_urls().join(","))
                })
                .collect();
            Ok(cluster.join(","))
        })?;
        self.members[slot - 1].name = format!("{}r", self.members[slot - 1].name);
        self.spawn_member(slot, &cluster, "existing")?;
        self.wait_member(slot)?;
        if !wait_for(Duration::from_secs(20), || self.member_status(slot).is_ok_and(|(_, l)| l != 0)) {
            return Err(io::Error::other(format!("member e{slot} did not join within 20 s:\n{}", self.member_logs())));
        }
        Ok(())
    }

    /// Runs `f` with a plain etcd client (no leader required) to the members of `slots`, on a
    /// thread inside the switch namespace.
    fn with_members<T: Send + 'static>(&self, slots: &[usize], f: impl AsyncFnOnce(etcd_client::Client) -> io::Result<T> + Send + 'static) -> io::Result<T> {
        let endpoints: Vec<String> = slots.iter().map(|s| format!("http://{}:2379", member_ip(*s))).collect();
        let ns = crate::host::netlink::netns_path(&self.ns_name("sw"));
        std::thread::spawn(move || -> io::Result<T> {
            crate::host::netlink::enter_netns(&ns)?;
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            rt.block_on(async {
                let opts = etcd_client::ConnectOptions::new().with_connect_timeout(Duration::from_secs(1)).with_timeout(Duration::from_secs(3));
                let c = etcd_client::Client::connect(&endpoints, Some(opts)).await.map_err(io::Error::other)?;
                f(c).await
            })
        })
        .join()
        .map_err(|_| io::Error::other("etcd client thread panicked"))?
    }

    /// Runs the store with TLS and client-certificate authentication (call before
    /// [`Sim::start_etcd`]), and gives every component of the simulation `creds`.
    pub fn secure_store(&mut self, tls: EtcdTls, creds: Credentials) {
        self.etcd_tls = Some(tls);
        self.store_creds = creds;
    }

    /// The store's address and this simulation's credentials for it.
    pub fn store_access(&self) -> StoreAccess {
        StoreAccess::new(&self.etcd_url(), self.store_creds.clone())
    }

    /// The `OVERLAY_STORE_*` environment of [`Sim::store_creds`], as a user would set it.
    fn store_env(&self) -> Vec<(&'static str, std::ffi::OsString)> {
        let c = &self.store_creds;
        let mut env = Vec::new();
        let paths = [("OVERLAY_STORE_CACERT", &c.cacert), ("OVERLAY_STORE_CERT", &c.cert), ("OVERLAY_STORE_KEY", &c.key), ("OVERLAY_STORE_PASSWORD_FILE", &c.password_file)];
        for (k, v) in paths {
            if let Some(p) = v {
                env.push((k, p.clone().into_os_string()));
            }
        }
        if let Some(u) = &c.user {
            env.push(("OVERLAY_STORE_USER", u.into()));
        }
        env
    }

    /// Starts etcd (Debian's `etcd` binary) in the switch namespace, data under the work
    /// directory, and waits until it accepts connections. Call after [`Sim::build_underlay`];
    /// call again after [`Sim::stop_etcd`] to restart it on the same data.
    pub fn start_etcd(&mut self) -> io::Result<()> {
        let sw = self.ns_name("sw");
        self.switch_address()?;
        let scheme = if self.etcd_tls.is_some() { "https" } else { "http" };
        let client = format!("{scheme}://{}", self.etcd_addr());
        let peer = "http://127.0.0.1:2380";
        let log = fs::OpenOptions::new().create(true).append(true).open(self.workdir.join("etcd.log"))?;
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &sw, "etcd", "--name", "sim", "--data-dir"])
            .arg(self.workdir.join("etcd"))
            .args(["--listen-client-urls", &client, "--advertise-client-urls", &client])
            .args(["--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer, "--initial-cluster", &format!("sim={peer}")]);
        if let Some(t) = &self.etcd_tls {
            cmd.arg("--cert-file").arg(&t.cert).arg("--key-file").arg(&t.key).arg("--trusted-ca-file").arg(&t.client_ca).arg("--client-cert-auth");
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()?;
        self.etcd = Some(child);
        let addr = self.etcd_addr();
        let up = wait_for(Duration::from_secs(20), || in_netns_connect(&crate::host::netlink::netns_path(&sw), addr));
        if !up {
            let log = fs::read_to_string(self.workdir.join("etcd.log")).unwrap_or_default();
            return Err(io::Error::other(format!("etcd did not start within 20 s:\n{log}")));
        }
        Ok(())
    }

    /// A store-backed cluster: `hosts` hosts, etcd on the switch, network `network` created from
    /// host 1's CLI (VNI and subnet from the allocators), one store agent per host registered with
    /// a lease of `ttl` s; returns once every agent is up and its datapath pinned.
    pub fn start_store_cluster(&mut self, hosts: usize, ttl: u32, network: &str) -> io::Result<()> {
        self.build_underlay(hosts)?;
        self.start_etcd()?;
        self.start_store_agents(hosts, ttl, network)
    }

    /// Like [`Sim::start_store_cluster`] on an etcd cluster of `members` members
    /// ([`Sim::start_etcd_cluster`]); every agent and the CLI get all their addresses.
    pub fn start_store_cluster_ha(&mut self, hosts: usize, members: usize, ttl: u32, network: &str) -> io::Result<()> {
        self.build_underlay(hosts)?;
        self.start_etcd_cluster(members)?;
        self.start_store_agents(hosts, ttl, network)
    }

    /// Creates `network` from host 1's CLI and starts one store agent per host; returns once
    /// every agent is up and its datapath pinned.
    fn start_store_agents(&mut self, hosts: usize, ttl: u32, network: &str) -> io::Result<()> {
        let o = self.overlay(&self.host_ns(1), &["network", "create", network])?;
        if !o.status.success() {
            return Err(io::Error::other(format!("network create: {}", String::from_utf8_lossy(&o.stderr))));
        }
        for n in 1..=hosts {
            let h = self.host_ns(n);
            self.spawn_store_agent(&format!("node{n}"), &h, host_vtep(n), ttl)?;
        }
        let up = wait_for(Duration::from_secs(20), || {
            let live = self.overlay(&self.host_ns(1), &["node", "ls"]).is_ok_and(|o| String::from_utf8_lossy(&o.stdout).matches(" up ").count() == hosts);
            live && (1..=hosts).all(|n| dataplane::Dataplane::open_pinned(&self.pin_dir(&format!("node{n}"))).is_ok())
        });
        if !up {
            return Err(io::Error::other(format!("agents not up within 20 s:\n{}", self.agent_logs(hosts))));
        }
        Ok(())
    }

    /// The logs of the agents of node1..node`hosts`.
    pub fn agent_logs(&self, hosts: usize) -> String {
        (1..=hosts).map(|n| format!("--- node{n}\n{}", fs::read_to_string(self.agent_log(&format!("node{n}"))).unwrap_or_default())).collect()
    }

    /// The FDB entry of `ip` (VNI `vni`) on `node`, read from its pinned map.
    pub fn fdb_entry(&self, node: &str, vni: u32, ip: Ipv4Addr) -> Option<overlay_common::FdbEntry> {
        dataplane::Dataplane::open_pinned(&self.pin_dir(node)).ok()?.fdb_entry(vni, Mac::from_ip(ip).0).ok()?
    }

    /// Runs `f` with an etcd client on a thread inside the switch namespace (where etcd is).
    pub fn with_etcd<T: Send + 'static, F>(&self, f: impl FnOnce(etcd_client::Client) -> F + Send + 'static) -> io::Result<T>
    where
        F: std::future::Future<Output = io::Result<T>>,
    {
        let access = self.store_access();
        let ns = crate::host::netlink::netns_path(&self.ns_name("sw"));
        std::thread::spawn(move || -> io::Result<T> {
            crate::host::netlink::enter_netns(&ns)?;
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            rt.block_on(async {
                let store = crate::source::store::Store::open(&access).await.map_err(io::Error::other)?;
                f(store.client()).await
            })
        })
        .join()
        .map_err(|_| io::Error::other("etcd client thread panicked"))?
    }

    /// Starts Debian's dockerd in host namespace `n` with its own data root, exec root and
    /// socket under the work directory (vfs storage, no bridge, no iptables); returns the socket.
    /// `nsenter --net` rather than `ip netns exec`, which would hide the cgroup mounts.
    pub fn start_dockerd(&mut self, n: usize) -> io::Result<PathBuf> {
        let dir = self.workdir.join("docker");
        fs::create_dir_all(&dir)?;
        let sock = dir.join("docker.sock");
        let log = fs::File::create(dir.join("dockerd.log"))?;
        let child = Command::new("nsenter")
            .arg(format!("--net={}", crate::host::netlink::netns_path(&self.host_ns(n)).display()))
            .arg("dockerd")
            .arg("--data-root")
            .arg(dir.join("data"))
            .arg("--exec-root")
            .arg(dir.join("exec"))
            .arg("--pidfile")
            .arg(dir.join("docker.pid"))
            .arg("-H")
            .arg(format!("unix://{}", sock.display()))
            .args(["--bridge=none", "--iptables=false", "--ip6tables=false", "--ip-masq=false", "--storage-driver=vfs"])
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()?;
        self.dockerd = Some((child, dir.clone()));
        let up = wait_for(Duration::from_secs(30), || {
            Command::new("docker").arg("-H").arg(format!("unix://{}", sock.display())).arg("version").output().is_ok_and(|o| o.status.success())
        });
        if !up {
            return Err(io::Error::other(format!("dockerd did not start:\n{}", fs::read_to_string(dir.join("dockerd.log")).unwrap_or_default())));
        }
        Ok(sock)
    }

    /// Starts `overlay docker-plugin` for `node` in host namespace `host_ns` under plugin name
    /// `name` (`None`: the default name, as a user runs it); returns once its socket exists.
    pub fn spawn_docker_plugin(&mut self, node: &str, host_ns: &str, name: Option<&str>) -> io::Result<PathBuf> {
        let log = fs::File::create(self.workdir.join("docker-plugin.log"))?;
        let mut cmd = Command::new(&self.overlay_bin);
        cmd.args(["docker-plugin", "--store", &self.etcd_url(), "--node", node, "--netns", host_ns]);
        if let Some(n) = name {
            cmd.args(["--name", n]);
        }
        let name = name.unwrap_or(crate::defaults::DOCKER_PLUGIN_NAME);
        let sock = PathBuf::from(format!("/run/docker/plugins/{name}.sock"));
        if sock.exists() {
            return Err(io::Error::other(format!("{} exists already: another plugin of that name is running", sock.display())));
        }
        let child = cmd
            .env("RUST_LOG", "info,overlay::plugins::docker=debug")
            .envs(self.store_env())
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()?;
        self.agents.push((format!("docker-plugin-{name}"), child));
        if !wait_for(Duration::from_secs(10), || sock.exists()) {
            return Err(io::Error::other(format!("plugin socket {} did not appear", sock.display())));
        }
        Ok(sock)
    }

    /// Stops dockerd (SIGTERM, then SIGKILL) and unmounts what it left under its directory.
    fn stop_dockerd(&mut self) -> Vec<String> {
        let mut errors = Vec::new();
        if let Some((mut child, dir)) = self.dockerd.take() {
            if let Err(e) = stop_child_within(&mut child, Duration::from_secs(20)) {
                errors.push(format!("dockerd: {e}"));
            }
            let mounts = fs::read_to_string("/proc/self/mounts").unwrap_or_default();
            let mut under: Vec<&str> = mounts.lines().filter_map(|l| l.split_whitespace().nth(1)).filter(|m| Path::new(m).starts_with(&dir)).collect();
            under.sort_by_key(|m| std::cmp::Reverse(m.len()));
            for m in under {
                let c = std::ffi::CString::new(m).expect("no NUL in a mount point");
                // SAFETY: umount2 on a path string we own; MNT_DETACH for busy ones.
                if unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) } != 0 {
                    errors.push(format!("umount {m}: {}", io::Error::last_os_error()));
                }
            }
        }
        errors
    }

    /// Stops etcd (SIGTERM by PID, as an operator would); its data stays for a restart.
    pub fn stop_etcd(&mut self) -> io::Result<()> {
        match self.etcd.take() {
            Some(mut c) => stop_child(&mut c),
            None => Ok(()),
        }
    }

    /// The `overlay` CLI in host namespace `ns`, against this simulation's store and pins.
    fn overlay_cmd(&self, ns: &str, args: &[&str]) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", ns])
            .arg(&self.overlay_bin)
            .args(args)
            .env("OVERLAY_STORE", self.etcd_url())
            .envs(self.store_env())
            .env("OVERLAY_PIN_ROOT", &self.pin_root)
            .env("RUST_BACKTRACE", "0")
            .stdin(Stdio::null());
        c
    }

    /// Runs the `overlay` CLI in host namespace `ns` and waits for it.
    pub fn overlay(&self, ns: &str, args: &[&str]) -> io::Result<Output> {
        self.overlay_cmd(ns, args).output()
    }

    /// Like [`Sim::overlay`], started without waiting for it (output piped).
    pub fn overlay_spawn(&self, ns: &str, args: &[&str]) -> io::Result<Child> {
        self.overlay_cmd(ns, args).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn()
    }

    /// Stops the agent of `node` by its PID: SIGTERM, then SIGKILL after 5 s.
    pub fn stop_agent(&mut self, node: &str) -> io::Result<()> {
        if let Some(i) = self.agents.iter().position(|(n, _)| n == node) {
            let (_, mut child) = self.agents.remove(i);
            stop_child(&mut child)?;
        }
        Ok(())
    }

    pub fn pin_dir(&self, node: &str) -> PathBuf {
        self.pin_root.join(node)
    }

    /// The address of `eth0` in a namespace, once the agent has wired it.
    pub fn has_address(&self, ns: &str, ip: Ipv4Addr) -> bool {
        self.has_address_on(ns, "eth0", ip)
    }

    /// Whether interface `ifname` in namespace `ns` holds `ip`.
    pub fn has_address_on(&self, ns: &str, ifname: &str, ip: Ipv4Addr) -> bool {
        self.exec(ns, &["ip", "-4", "-o", "addr", "show", "dev", ifname])
            .map(|o| String::from_utf8_lossy(&o.stdout).contains(&format!("inet {ip}/")))
            .unwrap_or(false)
    }

    /// Removes everything: agents (by PID), namespaces, pins, work directory. Gathers every
    /// error and keeps going.
    pub fn cleanup(&mut self) -> Vec<String> {
        let mut errors = self.stop_dockerd();
        for (node, mut child) in self.agents.drain(..) {
            if let Err(e) = stop_child(&mut child) {
                errors.push(format!("agent {node}: {e}"));
            }
        }
        if let Err(e) = self.stop_etcd() {
            errors.push(format!("etcd: {e}"));
        }
        for m in &mut self.members {
            if let Some(mut c) = m.child.take() {
                if let Err(e) = stop_child(&mut c) {
                    errors.push(format!("etcd member {}: {e}", m.name));
                }
            }
        }
        for ns in self.namespaces.drain(..).rev() {
            if let Err(e) = ip(&["netns", "del", &ns]) {
                errors.push(e.to_string());
            }
            // The agents write the containers' resolv.conf there.
            let etc = Path::new(crate::host::resolv_conf::NETNS_ETC).join(&ns);
            if etc.exists() {
                if let Err(e) = fs::remove_dir_all(&etc) {
                    errors.push(format!("{}: {e}", etc.display()));
                }
            }
        }
        if let Ok(rd) = fs::read_dir(&self.pin_root) {
            for e in rd.flatten() {
                if let Err(e) = dataplane::remove_pins(&e.path()) {
                    errors.extend(e);
                }
            }
        }
        match fs::remove_dir(&self.pin_root) {
            Ok(()) => dataplane::remove_pin_root_if_empty(&self.pin_root),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => errors.push(format!("{}: {e}", self.pin_root.display())),
        }
        let _ = fs::remove_dir_all(&self.workdir);
        errors
    }
}

/// The address etcd listens on in the switch namespace.
const ETCD_IP: Ipv4Addr = Ipv4Addr::new(192, 168, 50, 254);

/// The underlay address of the etcd member in `slot` of [`Sim::start_etcd_cluster`]:
/// 192.168.50.20<slot>.
pub fn member_ip(slot: usize) -> Ipv4Addr {
    Ipv4Addr::new(192, 168, 50, 200 + slot as u8)
}

fn peer_url(slot: usize) -> String {
    format!("http://{}:2380", member_ip(slot))
}

/// A member of [`Sim::start_etcd_cluster`]: its name (a replacement gets a new one), its
/// namespace, and its process while it runs.
struct EtcdMember {
    name: String,
    ns: String,
    child: Option<Child>,
}

/// Whether a TCP connection to `addr` from inside the namespace at `ns` succeeds.
fn in_netns_connect(ns: &Path, addr: std::net::SocketAddr) -> bool {
    let ns = ns.to_path_buf();
    std::thread::spawn(move || {
        crate::host::netlink::enter_netns(&ns).is_ok() && std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
    })
    .join()
    .unwrap_or(false)
}

fn stop_child(child: &mut Child) -> io::Result<()> {
    stop_child_within(child, Duration::from_secs(5))
}

/// SIGTERM by PID, then SIGKILL after `grace`.
fn stop_child_within(child: &mut Child, grace: Duration) -> io::Result<()> {
    if child.try_wait()?.is_some() {
        return Ok(());
    }
    // SAFETY: signalling our own child by its PID.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let done = wait_for(grace, || matches!(child.try_wait(), Ok(Some(_))));
    if !done {
        child.kill()?;
        child.wait()?;
    }
    Ok(())
}

impl Drop for Sim {
    fn drop(&mut self) {
        for e in self.cleanup() {
            eprintln!("cleanup: {e}");
        }
    }
}

/// The standard simulated cluster: 3 hosts, networks `nginx-net` (VNI 4097, 10.0.1.0/24) and
/// `test-net` (VNI 4098, 10.0.2.0/24) as in Docker's overlay tutorials, containers on every
/// host and two on host 1 (to show same-host switching).
pub fn standard_containers(sim: &Sim) -> Vec<Container> {
    let c = |name: &str, network: &'static str, node: usize, ip: [u8; 4]| Container {
        name: name.to_string(),
        network,
        node,
        ip: Ipv4Addr::from(ip),
        netns: sim.ns_name(name),
    };
    vec![
        c("web1", "nginx-net", 1, [10, 0, 1, 2]),
        c("web2", "nginx-net", 2, [10, 0, 1, 3]),
        c("web3", "nginx-net", 3, [10, 0, 1, 4]),
        c("web4", "nginx-net", 1, [10, 0, 1, 5]),
        c("test1", "test-net", 1, [10, 0, 2, 2]),
        c("test2", "test-net", 2, [10, 0, 2, 3]),
        c("test3", "test-net", 3, [10, 0, 2, 4]),
    ]
}

/// The cluster file for `hosts` hosts and `containers`. `extra` is appended to the endpoints
/// (e.g. endpoints on a kernel-vxlan host).
pub fn cluster_yaml(hosts: usize, containers: &[Container], extra_nodes: &[(String, Ipv4Addr)], extra_endpoints: &str) -> String {
    let mut y = String::from("vxlan_port: 4789\nnodes:\n");
    for n in 1..=hosts {
        y += &format!("  - {{name: node{n}, vtep: {}, underlay: eth0}}\n", host_vtep(n));
    }
    for (name, vtep) in extra_nodes {
        y += &format!("  - {{name: {name}, vtep: {vtep}}}\n");
    }
    y += "networks:\n";
    y += "  - {name: nginx-net, vni: 4097, subnet: 10.0.1.0/24, mtu: 1450}\n";
    y += "  - {name: test-net, vni: 4098, subnet: 10.0.2.0/24}\n";
    y += "endpoints:\n";
    for c in containers {
        y += &format!("  - {{name: {}, network: {}, node: node{}, ip: {}, netns: {}}}\n", c.name, c.network, c.node, c.ip, c.netns);
    }
    y += extra_endpoints;
    y
}

/// Docker's MAC for a container IP.
pub fn docker_mac(ip: Ipv4Addr) -> String {
    Mac::from_ip(ip).to_string()
}

/// Starts the standard cluster: underlay, container namespaces (with a route to the other
/// network's subnet, as an attacker would add, so that isolation is the datapath's doing and not
/// a missing route), the cluster file and one agent per host. Waits until every container has
/// its address.
pub fn start_standard(sim: &mut Sim, hosts: usize) -> io::Result<(Vec<Container>, PathBuf)> {
    sim.build_underlay(hosts)?;
    let containers: Vec<Container> = standard_containers(sim).into_iter().filter(|c| c.node <= hosts).collect();
    for c in &containers {
        sim.add_ns(&c.name)?;
    }
    let file = sim.write_file("cluster.yaml", &cluster_yaml(hosts, &containers, &[], ""))?;
    for n in 1..=hosts {
        let h = sim.host_ns(n);
        sim.spawn_agent(&format!("node{n}"), &h, &file)?;
    }
    let ok = wait_for(Duration::from_secs(20), || containers.iter().all(|c| sim.has_address(&c.netns, c.ip)));
    if !ok {
        let logs: String = (1..=hosts).map(|n| fs::read_to_string(sim.agent_log(&format!("node{n}"))).unwrap_or_default()).collect();
        return Err(io::Error::other(format!("containers were not wired within 20 s; agent logs:\n{logs}")));
    }
    for c in &containers {
        let other = if c.network == "nginx-net" { "10.0.2.0/24" } else { "10.0.1.0/24" };
        ip(&["-n", &c.netns, "route", "add", other, "dev", "eth0"])?;
    }
    Ok((containers, file))
}
