//! The typed cluster: nodes, networks and endpoints (one per container interface), the checks
//! of each entry on its own, and ([`rules`]) the one rule book that decides whether entries
//! conflict. Every source builds these types and validates with these rules: the cluster file
//! (rejects the whole file), the store mirror (skips the entry with a warning naming its key)
//! and the store's transactions (refuse the write).
use std::{fmt, net::Ipv4Addr};

use ipnet::Ipv4Net;
use overlay_common::wire::MAX_VNI;

pub mod rules;
pub mod service;

pub use rules::{Conflict, Rules};
pub use service::{PortSpec, Protocol, Service, ServiceMode, ServicePort, ServiceSpec, service_entry};

/// A validated cluster description.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cluster {
    pub vxlan_port: u16,
    pub nodes: Vec<Node>,
    pub networks: Vec<Network>,
    pub endpoints: Endpoints,
    /// Services (swarm's): each on one network, with its tasks the endpoints naming it.
    pub services: Vec<Service>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Node {
    pub name: String,
    pub vtep: Ipv4Addr,
    pub underlay: Option<String>,
    /// How the node receives overlay traffic; `None`: the agent's `--datapath` (default tc).
    pub datapath: Option<Datapath>,
    /// How the node's tasks answer mesh clients that came through another node; `None`: the
    /// agent's `--mesh-return` (default node).
    pub mesh_return: Option<MeshReturn>,
}

/// How a node's underlay receives overlay traffic.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Datapath {
    /// The TC ingress program alone (decapsulates and delivers with `bpf_redirect_peer`).
    #[default]
    Tc,
    /// The XDP ingress program in front of the TC one: what it can carry is decapsulated and
    /// redirected into the endpoint's veth before the stack; the rest goes on to TC.
    Xdp,
}

impl Datapath {
    pub const fn name(self) -> &'static str {
        match self {
            Datapath::Tc => "tc",
            Datapath::Xdp => "xdp",
        }
    }
}

impl std::fmt::Display for Datapath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Datapath {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "tc" => Ok(Datapath::Tc),
            "xdp" => Ok(Datapath::Xdp),
            _ => Err(format!("{s:?} is not a datapath (tc or xdp)")),
        }
    }
}

/// How a node's tasks answer clients of a published port that came through another node.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum MeshReturn {
    /// Back through the node that received the request, which restores its own address and
    /// the published port as source: works on any underlay.
    #[default]
    Node,
    /// Straight from the task's node to the client, with the receiving node's address and the
    /// published port as source (direct server return): the receiving node carries only the
    /// requests. Only for an underlay that lets a host send with another host's address as
    /// source (no source-address check between the nodes and the clients).
    Direct,
}

impl MeshReturn {
    pub const fn name(self) -> &'static str {
        match self {
            MeshReturn::Node => "node",
            MeshReturn::Direct => "direct",
        }
    }
}

impl std::fmt::Display for MeshReturn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for MeshReturn {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "node" => Ok(MeshReturn::Node),
            "direct" => Ok(MeshReturn::Direct),
            _ => Err(format!("{s:?} is not a mesh return (node or direct)")),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Network {
    pub name: String,
    pub vni: u32,
    pub subnet: Ipv4Net,
    pub mtu: Option<u32>,
    /// The network's gateway: answered by the datapath's ARP, the containers' default route
    /// (unless `internal`), never an endpoint's address. Default: the first host address.
    pub gateway: Ipv4Addr,
    /// No way out of the overlay (Docker's `--internal`): no default route, packets to
    /// addresses outside every overlay dropped and counted.
    pub internal: bool,
}

/// One interface of a container on one network.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    /// Unique within its network; the same container keeps its name on every network.
    pub name: String,
    pub network: String,
    pub node: String,
    pub ip: Ipv4Addr,
    pub mac: Mac,
    pub netns: Option<String>,
    /// The interface's name inside the namespace (`eth0`, `eth1`, ...). `None`: as the runtime
    /// named it (Docker renames the interface it is handed), or the first free `ethN` when the
    /// agent creates it.
    pub interface: Option<String>,
    /// Further names of the endpoint on its network.
    pub aliases: Vec<String>,
    /// The service (of the same network) this endpoint is a task of.
    pub service: Option<String>,
}

/// An Ethernet address.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Mac(pub [u8; 6]);

impl Mac {
    /// Docker's derivation: 02:42 followed by the four IPv4 bytes.
    pub fn from_ip(ip: Ipv4Addr) -> Self {
        let o = ip.octets();
        Mac([0x02, 0x42, o[0], o[1], o[2], o[3]])
    }
}

impl fmt::Display for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let m = self.0;
        write!(f, "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}", m[0], m[1], m[2], m[3], m[4], m[5])
    }
}

impl std::str::FromStr for Mac {
    type Err = ();
    fn from_str(s: &str) -> Result<Self, ()> {
        let mut out = [0u8; 6];
        let mut parts = s.split(':');
        for b in &mut out {
            let p = parts.next().ok_or(())?;
            if p.len() != 2 {
                return Err(());
            }
            *b = u8::from_str_radix(p, 16).map_err(|_| ())?;
        }
        if parts.next().is_some() {
            return Err(());
        }
        Ok(Mac(out))
    }
}

/// Why a cluster description (or one entry of it) was rejected.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("unparsable YAML: {0}")]
    Yaml(String),
    /// `entry` names the list and the entry (`endpoints[web1]`), `field` the field.
    #[error("{entry}.{field}: {message}")]
    Invalid { entry: String, field: &'static str, message: String },
}

pub fn invalid(entry: impl Into<String>, field: &'static str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid { entry: entry.into(), field, message: message.into() }
}

fn check_name(entry: &str, what: &str, name: &str) -> Result<(), ConfigError> {
    if name.is_empty() || name.contains(['/', ' ', '\0']) {
        return Err(invalid(entry, "name", format!("{what} name {name:?} must be non-empty, without '/' or spaces")));
    }
    Ok(())
}

/// An interface name the kernel accepts (at most 15 bytes, no '/', ':' or spaces).
pub fn valid_ifname(name: &str) -> bool {
    !name.is_empty() && name.len() <= 15 && name != "." && name != ".." && !name.contains(['/', ' ', ':', '\0'])
}

/// One node entry, checked on its own (`entry` names it in errors).
pub fn node_entry(entry: &str, name: String, vtep: &str, underlay: Option<String>, datapath: Option<&str>, mesh_return: Option<&str>) -> Result<Node, ConfigError> {
    check_name(entry, "node", &name)?;
    let vtep: Ipv4Addr = vtep.parse().map_err(|_| invalid(entry, "vtep", format!("{vtep:?} is not an IPv4 address")))?;
    if vtep.is_unspecified() || vtep.is_multicast() || vtep.is_broadcast() {
        return Err(invalid(entry, "vtep", format!("{vtep} cannot be a VTEP address")));
    }
    if let Some(u) = &underlay {
        if !valid_ifname(u) {
            return Err(invalid(entry, "underlay", format!("{u:?} is not an interface name")));
        }
    }
    let datapath = datapath.map(|d| d.parse::<Datapath>().map_err(|m| invalid(entry, "datapath", m))).transpose()?;
    let mesh_return = mesh_return.map(|m| m.parse::<MeshReturn>().map_err(|e| invalid(entry, "mesh_return", e))).transpose()?;
    Ok(Node { name, vtep, underlay, datapath, mesh_return })
}

/// What a network entry says, before it is checked.
pub struct NetworkSpec<'a> {
    pub name: String,
    pub vni: i64,
    pub subnet: &'a str,
    pub mtu: Option<i64>,
    pub gateway: Option<&'a str>,
    pub internal: bool,
}

/// The gateway a network gets when none is given: its first host address, as Docker does.
pub fn default_gateway(subnet: Ipv4Net) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(subnet.network()) + 1)
}

/// One network entry, checked on its own.
pub fn network_entry(entry: &str, spec: NetworkSpec<'_>) -> Result<Network, ConfigError> {
    let NetworkSpec { name, vni, subnet, mtu, gateway, internal } = spec;
    check_name(entry, "network", &name)?;
    if vni < 1 || vni > MAX_VNI as i64 {
        return Err(invalid(entry, "vni", format!("{vni} is out of the 24-bit VNI range 1-{MAX_VNI}")));
    }
    let subnet: Ipv4Net = subnet.parse().map_err(|_| invalid(entry, "subnet", format!("{subnet:?} is not an IPv4 CIDR such as 10.0.1.0/24")))?;
    if subnet.trunc() != subnet {
        return Err(invalid(entry, "subnet", format!("{subnet} has host bits set (did you mean {}?)", subnet.trunc())));
    }
    if subnet.prefix_len() > 30 {
        return Err(invalid(entry, "subnet", format!("{subnet} is too small for endpoints (at most /30)")));
    }
    let mtu = match mtu {
        None => None,
        Some(m) if (68..=65_485).contains(&m) => Some(m as u32),
        Some(m) => return Err(invalid(entry, "mtu", format!("{m} is outside 68-65485"))),
    };
    let gateway = match gateway {
        None => default_gateway(subnet),
        Some(g) => {
            let g: Ipv4Addr = g.parse().map_err(|_| invalid(entry, "gateway", format!("{g:?} is not an IPv4 address")))?;
            if !subnet.contains(&g) || g == subnet.network() || g == subnet.broadcast() {
                return Err(invalid(entry, "gateway", format!("{g} is not a host address of {subnet}")));
            }
            g
        }
    };
    Ok(Network { name, vni: vni as u32, subnet, mtu, gateway, internal })
}

/// What an endpoint entry says, before it is checked.
pub struct EndpointSpec<'a> {
    pub name: String,
    pub node: String,
    pub ip: &'a str,
    pub mac: Option<&'a str>,
    pub netns: Option<String>,
    pub interface: Option<String>,
    pub aliases: Vec<String>,
    pub service: Option<String>,
}

/// One endpoint entry of network `net`, checked on its own and against its network (address
/// inside the subnet, a host address, not the gateway).
pub fn endpoint_entry(entry: &str, net: &Network, spec: EndpointSpec<'_>) -> Result<Endpoint, ConfigError> {
    let EndpointSpec { name, node, ip, mac, netns, interface, aliases, service } = spec;
    check_name(entry, "endpoint", &name)?;
    let ip: Ipv4Addr = ip.parse().map_err(|_| invalid(entry, "ip", format!("{ip:?} is not an IPv4 address")))?;
    if !net.subnet.contains(&ip) {
        return Err(invalid(entry, "ip", format!("{ip} is outside subnet {} of network {}", net.subnet, net.name)));
    }
    if ip == net.subnet.network() || ip == net.subnet.broadcast() {
        return Err(invalid(entry, "ip", format!("{ip} is the network or broadcast address of {}", net.subnet)));
    }
    if ip == net.gateway {
        return Err(invalid(entry, "ip", format!("IP {ip} is the gateway of network {}", net.name)));
    }
    let mac = match mac {
        None => Mac::from_ip(ip),
        Some(s) => s.parse::<Mac>().map_err(|_| invalid(entry, "mac", format!("{s:?} is not a MAC address like 02:42:0a:00:01:02")))?,
    };
    if mac.0[0] & 1 != 0 || mac.0 == [0; 6] {
        return Err(invalid(entry, "mac", format!("{mac} is not a unicast address")));
    }
    if mac == Mac::from_ip(net.gateway) {
        return Err(invalid(entry, "mac", format!("{mac} is the gateway's MAC in network {}", net.name)));
    }
    if let Some(ns) = &netns {
        if !valid_netns(ns) {
            return Err(invalid(entry, "netns", format!("{ns:?} is not a namespace name or absolute path")));
        }
    }
    if let Some(i) = &interface {
        if !valid_ifname(i) || i == "lo" {
            return Err(invalid(entry, "interface", format!("{i:?} is not an interface name for a container")));
        }
    }
    for a in &aliases {
        if a.is_empty() || a.len() > 253 || !a.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.') {
            return Err(invalid(entry, "aliases", format!("{a:?} is not a DNS name")));
        }
    }
    Ok(Endpoint { name, network: net.name.clone(), node, ip, mac, netns, interface, aliases, service })
}

/// A network namespace is named (as under `/run/netns`) or given by absolute path (as container
/// runtimes do: `/var/run/netns/cni-...`, `/proc/<pid>/ns/net`, Docker's sandbox keys).
pub fn valid_netns(ns: &str) -> bool {
    if ns.is_empty() || ns.contains([' ', '\0', '\n']) {
        return false;
    }
    match ns.strip_prefix('/') {
        Some(rest) => !rest.is_empty() && rest.split('/').all(|c| !c.is_empty() && c != "." && c != ".."),
        None => !ns.contains('/') && ns != "." && ns != "..",
    }
}

impl Cluster {
    pub fn node(&self, name: &str) -> Option<&Node> {
        self.nodes.iter().find(|n| n.name == name)
    }
    pub fn network(&self, name: &str) -> Option<&Network> {
        self.networks.iter().find(|n| n.name == name)
    }
    pub fn service(&self, name: &str) -> Option<&Service> {
        self.services.iter().find(|s| s.name == name)
    }
    /// The tasks of service `name`, in cluster order (they are on the service's network).
    pub fn tasks<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a Endpoint> + 'a {
        let net = self.service(name).map_or("", |s| s.network.as_str());
        self.endpoints.of(net).iter().map(|(_, e)| e).filter(move |e| e.service.as_deref() == Some(name))
    }
}

/// A fresh generation: unique in the process, so a network's (name, generation) names one
/// content of its endpoint list whichever cluster (or copy) it is read from.
fn next_generation() -> u64 {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

/// The cluster's endpoints, kept by network: a change touches one network's list, and a
/// planner reuses every network whose generation it has seen (at 100,000 endpoints, visiting
/// them all on each change was what a change cost). Each endpoint keeps its place in the
/// cluster order (oldest first), which decides between a container's networks.
#[derive(Clone, Debug, Default)]
pub struct Endpoints {
    by_network: std::collections::HashMap<String, Members>,
    /// The next place in the cluster order.
    next: u64,
    len: usize,
}

/// One network's endpoints in cluster order, each with its place in that order.
#[derive(Clone, Debug, Default)]
pub struct Members {
    pub list: Vec<(u64, Endpoint)>,
    /// Changes whenever `list` does (see [`Endpoints::keep_generations`]).
    pub generation: u64,
}

impl Endpoints {
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Adds an endpoint at the end of the cluster order.
    pub fn push(&mut self, e: Endpoint) {
        let m = self.by_network.entry(e.network.clone()).or_default();
        m.list.push((self.next, e));
        m.generation = next_generation();
        self.next += 1;
        self.len += 1;
    }

    /// Removes endpoint `name` of `network`; whether it was there.
    pub fn remove(&mut self, network: &str, name: &str) -> bool {
        let Some(m) = self.by_network.get_mut(network) else { return false };
        let Some(i) = m.list.iter().position(|(_, e)| e.name == name) else { return false };
        m.list.remove(i);
        m.generation = next_generation();
        self.len -= 1;
        if m.list.is_empty() {
            self.by_network.remove(network);
        }
        true
    }

    /// Network `network`'s endpoints in cluster order.
    pub fn of(&self, network: &str) -> &[(u64, Endpoint)] {
        self.by_network.get(network).map_or(&[], |m| &m.list)
    }

    /// The generation of `network`'s list (0: no endpoints).
    pub fn generation(&self, network: &str) -> u64 {
        self.by_network.get(network).map_or(0, |m| m.generation)
    }

    /// Every endpoint in cluster order.
    pub fn iter(&self) -> impl Iterator<Item = &Endpoint> {
        let mut all: Vec<&(u64, Endpoint)> = self.by_network.values().flat_map(|m| &m.list).collect();
        all.sort_unstable_by_key(|(at, _)| *at);
        all.into_iter().map(|(_, e)| e)
    }

    /// Gives each network whose endpoints are the same as in `old` (a cluster built again from
    /// scratch after a change elsewhere) `old`'s generation, so what was planned from them is
    /// reused.
    pub fn keep_generations(&mut self, old: &Endpoints) {
        for (net, m) in &mut self.by_network {
            if let Some(o) = old.by_network.get(net) {
                if o.list.len() == m.list.len() && o.list.iter().zip(&m.list).all(|((_, a), (_, b))| a == b) {
                    m.generation = o.generation;
                }
            }
        }
    }
}

impl FromIterator<Endpoint> for Endpoints {
    fn from_iter<I: IntoIterator<Item = Endpoint>>(iter: I) -> Self {
        let mut out = Endpoints::default();
        for e in iter {
            out.push(e);
        }
        out
    }
}

impl<'a> IntoIterator for &'a Endpoints {
    type Item = &'a Endpoint;
    type IntoIter = std::vec::IntoIter<&'a Endpoint>;
    fn into_iter(self) -> Self::IntoIter {
        self.iter().collect::<Vec<_>>().into_iter()
    }
}

/// The same endpoints in the same order (places and generations are bookkeeping).
impl PartialEq for Endpoints {
    fn eq(&self, other: &Self) -> bool {
        self.len == other.len && self.iter().eq(other.iter())
    }
}

impl Eq for Endpoints {}
