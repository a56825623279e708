//! From a cluster description to what one node's datapath must hold. Pure functions: the
//! description source (file today, a store tomorrow) does not matter here.
use std::{
    collections::{BTreeMap, HashMap},
    net::Ipv4Addr,
    sync::Arc,
};

use ipnet::Ipv4Net;
use overlay_common::{
    Backend, DNS_ADDRS_MAX, DNS_NAME_MAX, EP_F_MULTI_NETWORK, EndpointInfo, FdbEntry, FdbKey, MAX_BACKENDS, MAX_SERVICES,
    MemberInfo, NODE_F_SERVICES, NameEntry, NameKey, NeighEntry, NeighKey, NodeConfig, PublishedEntry, PublishedKey, ServiceEntry, ServiceKey, NODE_F_MESH, SubnetInfo, VNI_F_INTERNAL,
    VniInfo, ip_to_map,
};

use crate::{
    model::{Cluster, Endpoint, Mac, Network, Service, ServiceMode},
    defaults::{HOST_VETH_PREFIX, OVERLAY_OVERHEAD, PEER_VETH_PREFIX, SRC_PORT_MAX, SRC_PORT_MIN},
};

/// Everything the maps of one node hold: the unit the dataplane reconciles.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MapState {
    pub config: NodeConfig,
    pub vnis: BTreeMap<u32, VniInfo>,
    /// Per network: gateway, remote endpoints, and (after [`NodePlan::map_state`]) local ones.
    pub fdb: PerVni<FdbKey, FdbEntry>,
    pub endpoints: BTreeMap<u32, EndpointInfo>,
    /// Per network: the gateway's and every endpoint's address.
    pub neigh: PerVni<NeighKey, NeighEntry>,
    pub members: BTreeMap<u32, MemberInfo>,
    /// Every overlay subnet: (network-order address, prefix length) -> its VNI.
    pub subnets: BTreeMap<(u32, u32), SubnetInfo>,
    /// Per network: (VNI, name) -> addresses, the names the datapath answers.
    pub names: PerVni<NameKey, NameEntry>,
    /// Every VIP port (and each VIP itself, port and protocol 0) -> its slot and task count.
    pub services: BTreeMap<ServiceKey, ServiceEntry>,
    /// Slot -> the backends of one VIP port and its Maglev table.
    pub balancing: BTreeMap<u32, Arc<Balancing>>,
    /// Published port and protocol -> the VIP port it stands for (the routing mesh).
    pub published: BTreeMap<PublishedKey, PublishedEntry>,
}

impl MapState {
    /// Completes what depends on the underlay's MTU: the largest packet a published port takes
    /// for a network whose MTU follows the underlay's.
    pub fn underlay_mtu(&mut self, mtu: u32) {
        let derived = mtu.saturating_sub(OVERLAY_OVERHEAD).min(u16::MAX as u32) as u16;
        for e in self.published.values_mut().filter(|e| e.mtu == 0) {
            e.mtu = derived;
        }
    }
}

/// How one VIP port is balanced: its backends (tasks and target port) and the Maglev table
/// over them ([`super::maglev::table`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Balancing {
    pub backends: Vec<Backend>,
    pub maglev: Vec<u32>,
}

/// A table kept per network (VNI): each network's part is shared, by every plan and copy of a
/// node's state, for as long as the network's endpoints do not change. A change then rebuilds
/// and compares one network's part, not the cluster's (10,000 endpoints make 10,000 FDB and
/// neighbour entries and 20,000 names).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PerVni<K, V>(pub BTreeMap<u32, Arc<BTreeMap<K, V>>>);

impl<K, V> Default for PerVni<K, V> {
    fn default() -> Self {
        Self(BTreeMap::new())
    }
}

impl<K: Ord + Clone, V: Clone> PerVni<K, V> {
    pub fn len(&self) -> usize {
        self.0.values().map(|t| t.len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.0.values().all(|t| t.is_empty())
    }

    /// Every entry, network by network.
    pub fn iter(&self) -> impl Iterator<Item = (&K, &V)> {
        self.0.values().flat_map(|t| t.iter())
    }

    pub fn keys(&self) -> impl Iterator<Item = &K> {
        self.iter().map(|(k, _)| k)
    }

    pub fn get(&self, vni: u32, k: &K) -> Option<&V> {
        self.0.get(&vni)?.get(k)
    }

    /// Adds an entry to network `vni`'s part (copying that part if it is shared).
    pub fn insert(&mut self, vni: u32, k: K, v: V) {
        Arc::make_mut(self.0.entry(vni).or_default()).insert(k, v);
    }
}

impl<'a, K: Ord + Clone, V: Clone> IntoIterator for &'a PerVni<K, V> {
    type Item = (&'a K, &'a V);
    type IntoIter = Box<dyn Iterator<Item = (&'a K, &'a V)> + 'a>;
    fn into_iter(self) -> Self::IntoIter {
        Box::new(self.iter())
    }
}

/// A network's parts of the tables, reused while what they were built from stays the same: the
/// network, its services, and its endpoint list (by generation: the list is not visited).
#[derive(Debug)]
struct CachedNetwork {
    network: Network,
    services: Vec<Service>,
    generation: u64,
    /// Where this node's endpoints are in the network's list.
    local_at: Vec<usize>,
    fdb: Arc<BTreeMap<FdbKey, FdbEntry>>,
    neigh: Arc<BTreeMap<NeighKey, NeighEntry>>,
    names: Arc<BTreeMap<NameKey, NameEntry>>,
}

/// Plans a node's state again and again as the cluster changes (the agent keeps one), reusing
/// what did not change: the parts of the tables of networks whose endpoints are the same.
#[derive(Debug, Default)]
pub struct Planner {
    /// By VNI.
    networks: HashMap<u32, CachedNetwork>,
    /// The node planned for and every node's VTEP when the parts were built: a remote
    /// endpoint's FDB entry names its node's VTEP.
    node: String,
    vteps: HashMap<String, Ipv4Addr>,
}

/// `name` in DNS wire format (length-prefixed labels, final zero), lowercased, zero-padded; `None`
/// when it does not fit the name table (the agent's resolver answers it then).
pub fn dns_wire(name: &str) -> Option<[u8; DNS_NAME_MAX]> {
    dns_wire_of(&[name])
}

/// [`dns_wire`] of the names in `parts` joined by dots, without building the joined string.
fn dns_wire_of(parts: &[&str]) -> Option<[u8; DNS_NAME_MAX]> {
    let mut out = [0u8; DNS_NAME_MAX];
    let mut i = 0;
    for label in parts.iter().flat_map(|p| p.trim_end_matches('.').split('.')) {
        let l = label.as_bytes();
        if l.is_empty() || l.len() > 63 || i + 1 + l.len() + 1 > DNS_NAME_MAX {
            return None;
        }
        out[i] = l.len() as u8;
        for (j, b) in l.iter().enumerate() {
            out[i + 1 + j] = b.to_ascii_lowercase();
        }
        i += 1 + l.len();
    }
    Some(out)
}

/// A local endpoint the agent wires into its namespace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LocalEndpoint {
    pub name: String,
    pub network: String,
    pub vni: u32,
    pub ip: Ipv4Addr,
    pub prefix_len: u8,
    pub mac: Mac,
    /// Container MTU; `None`: underlay MTU - 50, known once the underlay is.
    pub mtu: Option<u32>,
    pub netns: String,
    /// Host-side veth name (stable for the endpoint).
    pub host_ifname: String,
    /// Container-side name before it moves into the namespace.
    pub peer_ifname: String,
    /// Its name in the namespace; `None`: as the runtime named it, or the first free `ethN`.
    pub ifname: Option<String>,
    pub gateway: Ipv4Addr,
    /// The network has no way out.
    pub internal: bool,
    /// The container's default route goes through this interface: it is on the container's
    /// first network that is not internal.
    pub default_route: bool,
    /// The container's resolver is this network's gateway: it is the container's first network.
    pub resolver: bool,
    /// The container is on several networks (its DNS questions go to the agent's resolver).
    pub multi_network: bool,
}

impl LocalEndpoint {
    pub fn mtu_for(&self, underlay_mtu: u32) -> u32 {
        self.mtu.unwrap_or(underlay_mtu.saturating_sub(OVERLAY_OVERHEAD))
    }

    /// Whether `other` is wired exactly like this one (it may differ in what only the maps and
    /// the resolver file carry: whether the container is on other networks too, which of its
    /// networks names its resolver).
    pub fn same_wiring(&self, other: &LocalEndpoint) -> bool {
        let mut o = other.clone();
        o.multi_network = self.multi_network;
        o.resolver = self.resolver;
        *self == o
    }
}

/// What the cluster asks of one node, before local interfaces exist.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodePlan {
    pub node: String,
    pub vtep: Ipv4Addr,
    pub underlay: Option<String>,
    /// The node's `datapath:` in the cluster description (the agent's `--datapath` wins).
    pub datapath: Option<crate::model::Datapath>,
    /// The node's `mesh_return:` in the cluster description (the agent's `--mesh-return` wins).
    pub mesh_return: Option<crate::model::MeshReturn>,
    pub vxlan_port: u16,
    /// Everything but the local FDB and endpoint entries.
    pub base: MapState,
    pub local: Vec<LocalEndpoint>,
    /// Local endpoints without a namespace to wire, as (network, name): published to peers,
    /// nothing to do here.
    pub unwired: Vec<(String, String)>,
    /// What the node's way out serves.
    pub way_out: WayOut,
}

/// The node's share of the way out: which sources it masquerades and which destinations stay
/// inside the overlay.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WayOut {
    /// Subnets of networks that are not internal: their containers may leave.
    pub egress: Vec<Ipv4Net>,
    /// Every overlay subnet: never a destination of the way out.
    pub overlay: Vec<Ipv4Net>,
    /// The VXLAN port (masqueraded flows keep off it).
    pub vxlan_port: u16,
    /// Every network's gateway: the containers' resolver addresses, local on the node.
    pub gateways: Vec<Ipv4Addr>,
}

#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    #[error("node {0:?} is not in the cluster description")]
    UnknownNode(String),
    #[error("more than {0} service ports (the datapath's service table is full)")]
    TooManyServicePorts(u32),
}

/// A short stable suffix for interface names (names are limited to 15 bytes).
fn ifname_suffix(endpoint: &str) -> String {
    // FNV-1a: stable across runs and versions, unlike the std hasher.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in endpoint.bytes() {
        h ^= b as u64;
        h = h.wrapping_mul(0x100_0000_01b3);
    }
    format!("{:08x}", (h ^ (h >> 32)) as u32)
}

/// Host-side veth name of endpoint `name` of `network` (names are unique per network).
pub fn host_ifname(network: &str, name: &str) -> String {
    format!("{HOST_VETH_PREFIX}{}", ifname_suffix(&format!("{network}/{name}")))
}

/// Temporary name of the endpoint's container side, before it is renamed in its namespace.
pub fn peer_ifname(network: &str, name: &str) -> String {
    format!("{PEER_VETH_PREFIX}{}", ifname_suffix(&format!("{network}/{name}")))
}

/// The MAC the datapath answers for a network's gateway (Docker's derivation from its address,
/// which no endpoint may hold).
pub fn gateway_mac(gateway: Ipv4Addr) -> Mac {
    Mac::from_ip(gateway)
}

/// Computes the plan of `node` in `cluster` (from scratch; [`Planner`] reuses earlier work).
pub fn plan(cluster: &Cluster, node: &str) -> Result<NodePlan, PlanError> {
    Planner::default().plan(cluster, node)
}

/// The names the datapath answers for `net`, whose endpoints are `eps` and services `services`
/// (in cluster order): every endpoint's name and aliases; every service's name (its VIP, or in
/// `dnsrr` mode its tasks' addresses) and `tasks.NAME` (its tasks' addresses); and each with
/// `.NETWORK`, as the agent's resolver answers them for a container on one network. A name held
/// by more addresses than an entry holds is left to the resolver.
fn name_table(net: &Network, eps: &[&Endpoint], services: &[Service]) -> BTreeMap<NameKey, NameEntry> {
    let mut flat: Vec<(NameKey, u32)> = Vec::with_capacity(eps.len() * 2);
    let mut add = |name: &str, ip: Ipv4Addr| {
        for w in [dns_wire_of(&[name]), dns_wire_of(&[name, &net.name])].into_iter().flatten() {
            flat.push((NameKey { vni: net.vni, name: w }, ip_to_map(ip.octets())));
        }
    };
    for ep in eps {
        for n in std::iter::once(&ep.name).chain(&ep.aliases) {
            add(n, ep.ip);
        }
    }
    for (_, name, ip) in service_names(services, eps) {
        add(&name, ip);
    }
    // Sorted (stable: addresses stay in cluster order), then grouped: one entry per name.
    flat.sort_by_key(|(k, _)| *k);
    let mut names = Vec::with_capacity(flat.len());
    for group in flat.chunk_by(|a, b| a.0 == b.0) {
        if group.len() <= DNS_ADDRS_MAX {
            let mut addrs = [0u32; DNS_ADDRS_MAX];
            for (slot, (_, ip)) in addrs.iter_mut().zip(group) {
                *slot = *ip;
            }
            names.push((group[0].0, NameEntry { count: group.len() as u32, addrs }));
        }
    }
    names.into_iter().collect()
}

/// The names services add to their network, in order: (service, name, address): `NAME` (the
/// VIP, or each task's address in `dnsrr` mode) and `tasks.NAME` (each task's address). Tasks
/// are `eps` naming the service, in cluster order. The agent's resolver uses the same list.
pub fn service_names<'a>(services: &'a [Service], eps: &[&'a Endpoint]) -> Vec<(&'a str, String, Ipv4Addr)> {
    let mut out = Vec::new();
    for s in services {
        let tasks: Vec<Ipv4Addr> = eps.iter().filter(|e| e.service.as_deref() == Some(s.name.as_str())).map(|e| e.ip).collect();
        match (s.mode, s.vip) {
            (ServiceMode::Vip, Some(vip)) => out.push((s.name.as_str(), s.name.clone(), vip)),
            _ => out.extend(tasks.iter().map(|ip| (s.name.as_str(), s.name.clone(), *ip))),
        }
        out.extend(tasks.iter().map(|ip| (s.name.as_str(), format!("tasks.{}", s.name), *ip)));
    }
    out
}

impl Planner {
    /// Network `net`'s parts of the FDB, neighbour and name tables, from the cache while the
    /// network, its services and its endpoints' generation are the same.
    fn network_parts(&mut self, net: &Network, services: Vec<Service>, members: &[(u64, Endpoint)], generation: u64, node: &str) -> &CachedNetwork {
        let same = |c: &CachedNetwork| c.generation == generation && c.network == *net && c.services == services;
        if !self.networks.get(&net.vni).is_some_and(same) {
            // The gateway: answered by ARP on every node, its MAC the way out of this node.
            let gw_mac = gateway_mac(net.gateway);
            let mut neigh = BTreeMap::new();
            let mut fdb = BTreeMap::new();
            neigh.insert(NeighKey { vni: net.vni, ip: ip_to_map(net.gateway.octets()) }, NeighEntry { mac: gw_mac.0, _pad: [0; 2] });
            fdb.insert(FdbKey::new(net.vni, gw_mac.0), FdbEntry::gateway());
            // A VIP: answered by ARP with its own MAC, which the FDB marks as a service's.
            for vip in services.iter().filter_map(|s| s.vip) {
                let mac = Mac::from_ip(vip);
                neigh.insert(NeighKey { vni: net.vni, ip: ip_to_map(vip.octets()) }, NeighEntry { mac: mac.0, _pad: [0; 2] });
                fdb.insert(FdbKey::new(net.vni, mac.0), FdbEntry::service());
            }
            let mut local_at = Vec::new();
            for (i, (_, ep)) in members.iter().enumerate() {
                neigh.insert(NeighKey { vni: net.vni, ip: ip_to_map(ep.ip.octets()) }, NeighEntry { mac: ep.mac.0, _pad: [0; 2] });
                if ep.node == node {
                    local_at.push(i);
                } else {
                    let vtep = self.vteps.get(ep.node.as_str()).expect("validated: an endpoint's node is in the cluster");
                    fdb.insert(FdbKey::new(net.vni, ep.mac.0), FdbEntry::remote(ip_to_map(vtep.octets())));
                }
            }
            let bare: Vec<&Endpoint> = members.iter().map(|(_, e)| e).collect();
            let names = Arc::new(name_table(net, &bare, &services));
            let cached = CachedNetwork { network: net.clone(), services, generation, local_at, fdb: Arc::new(fdb), neigh: Arc::new(neigh), names };
            self.networks.insert(net.vni, cached);
        }
        &self.networks[&net.vni]
    }

    /// Each network's FDB part as held now (for tests of what is reused).
    #[cfg(test)]
    pub(crate) fn cached_fdb(&self) -> Vec<(u32, Arc<BTreeMap<FdbKey, FdbEntry>>)> {
        self.networks.iter().map(|(vni, c)| (*vni, c.fdb.clone())).collect()
    }

    /// Computes the plan of `node` in `cluster`. Visits the nodes, networks and services, and
    /// the endpoints of networks whose endpoint list changed since the last plan only.
    pub fn plan(&mut self, cluster: &Cluster, node: &str) -> Result<NodePlan, PlanError> {
        let me = cluster.node(node).ok_or_else(|| PlanError::UnknownNode(node.to_string()))?;
        // Another node, or a node's VTEP changed: nothing built before holds.
        if self.node != me.name || cluster.nodes.iter().any(|n| self.vteps.get(&n.name).is_some_and(|v| *v != n.vtep)) {
            self.networks.clear();
            self.node = me.name.clone();
        }
        self.vteps.clear();
        self.vteps.extend(cluster.nodes.iter().map(|n| (n.name.clone(), n.vtep)));
        let mut base = MapState {
            config: NodeConfig {
                vtep: ip_to_map(me.vtep.octets()),
                underlay_ifindex: 0,
                vxlan_port: cluster.vxlan_port,
                flags: if cluster.services.iter().any(|s| s.vip.is_some()) { NODE_F_SERVICES } else { 0 }
                    | if cluster.services.iter().any(|s| s.ports.iter().any(|p| p.publish.is_some())) { NODE_F_MESH } else { 0 },
                src_port_min: SRC_PORT_MIN,
                src_port_range: SRC_PORT_MAX - SRC_PORT_MIN + 1,
            },
            ..Default::default()
        };
        let mut way_out = WayOut { vxlan_port: cluster.vxlan_port, ..Default::default() };
        for net in &cluster.networks {
            let flags = if net.internal { VNI_F_INTERNAL } else { 0 };
            base.vnis.insert(net.vni, VniInfo { mtu: net.mtu.unwrap_or(0), flags });
            base.subnets.insert((ip_to_map(net.subnet.network().octets()), net.subnet.prefix_len() as u32), SubnetInfo { vni: net.vni, _pad: 0 });
            way_out.overlay.push(net.subnet);
            way_out.gateways.push(net.gateway);
            if !net.internal {
                way_out.egress.push(net.subnet);
            }
        }
        for (i, n) in cluster.nodes.iter().enumerate() {
            if n.name != me.name {
                base.members.insert(ip_to_map(n.vtep.octets()), MemberInfo { node_id: i as u32, _pad: 0 });
            }
        }
        // Each network's parts of the FDB, neighbour and name tables, and where this node's
        // endpoints are: (place in the cluster order, network index, endpoint).
        let vnis: std::collections::HashSet<u32> = cluster.networks.iter().map(|n| n.vni).collect();
        self.networks.retain(|vni, _| vnis.contains(vni));
        let mut mine: Vec<(u64, usize, &Endpoint)> = Vec::new();
        for (ni, net) in cluster.networks.iter().enumerate() {
            let services: Vec<Service> = cluster.services.iter().filter(|s| s.network == net.name).cloned().collect();
            let members = cluster.endpoints.of(&net.name);
            let parts = self.network_parts(net, services, members, cluster.endpoints.generation(&net.name), &me.name);
            base.fdb.0.insert(net.vni, parts.fdb.clone());
            base.neigh.0.insert(net.vni, parts.neigh.clone());
            base.names.0.insert(net.vni, parts.names.clone());
            mine.extend(parts.local_at.iter().map(|&i| (members[i].0, ni, &members[i].1)));
        }
        mine.sort_unstable_by_key(|(at, _, _)| *at);
        let mut local = Vec::new();
        let mut unwired = Vec::new();
        // Namespaces whose default route is taken (by their first non-internal network), and whose
        // resolver is (by their first network).
        let mut routed: std::collections::HashSet<&str> = Default::default();
        let mut resolved: std::collections::HashSet<&str> = Default::default();
        let net_index: HashMap<&str, usize> = cluster.networks.iter().enumerate().map(|(i, n)| (n.name.as_str(), i)).collect();
        for (_, ni, ep) in mine {
            let net = &cluster.networks[ni];
            if let Some(ns) = &ep.netns {
                let default_route = !net.internal && routed.insert(ns.as_str());
                let resolver = resolved.insert(ns.as_str());
                local.push(LocalEndpoint {
                    name: ep.name.clone(),
                    network: net.name.clone(),
                    vni: net.vni,
                    ip: ep.ip,
                    prefix_len: net.subnet.prefix_len(),
                    mac: ep.mac,
                    mtu: net.mtu,
                    netns: ns.clone(),
                    host_ifname: host_ifname(&net.name, &ep.name),
                    peer_ifname: peer_ifname(&net.name, &ep.name),
                    ifname: ep.interface.clone(),
                    gateway: net.gateway,
                    internal: net.internal,
                    default_route,
                    resolver,
                    multi_network: false,
                });
            } else {
                unwired.push((net.name.clone(), ep.name.clone()));
            }
        }
        for i in 0..local.len() {
            let ns = local[i].netns.clone();
            local[i].multi_network = local.iter().filter(|e| e.netns == ns).count() > 1;
        }
        // VIP services: every port gets a slot, its backends (the tasks, with the target port)
        // and a Maglev table; the VIP itself an entry (it answers ping).
        let mut slot = 0u32;
        for svc in &cluster.services {
            let (Some(vip), Some(ni)) = (svc.vip, net_index.get(svc.network.as_str())) else { continue };
            let net = &cluster.networks[*ni];
            let vni = net.vni;
            let vip_m = ip_to_map(vip.octets());
            let tasks: Vec<u32> = cluster.tasks(&svc.name).map(|e| ip_to_map(e.ip.octets())).take(MAX_BACKENDS as usize).collect();
            base.services.insert(ServiceKey { vni, vip: vip_m, port: 0, proto: 0, _pad: 0 }, ServiceEntry { id: 0, backends: 0 });
            for p in &svc.ports {
                if slot >= MAX_SERVICES {
                    return Err(PlanError::TooManyServicePorts(MAX_SERVICES));
                }
                let backends: Vec<Backend> = tasks.iter().map(|ip| Backend { ip: *ip, port: p.target.to_be(), _pad: 0 }).collect();
                let maglev = super::maglev::table(&backends);
                let key = ServiceKey { vni, vip: vip_m, port: p.port.to_be(), proto: p.protocol.number(), _pad: 0 };
                base.services.insert(key, ServiceEntry { id: slot, backends: backends.len() as u32 });
                if let Some(x) = p.publish {
                    // 0: the containers' MTU follows the underlay's ([`MapState::underlay_mtu`]).
                    let mtu = net.mtu.unwrap_or(0).min(u16::MAX as u32) as u16;
                    base.published.insert(
                        PublishedKey { port: x.to_be(), proto: p.protocol.number(), _pad: 0 },
                        PublishedEntry { service: key, gw_mac: gateway_mac(net.gateway).0, mtu },
                    );
                }
                base.balancing.insert(slot, Arc::new(Balancing { backends, maglev }));
                slot += 1;
            }
        }
        Ok(NodePlan {
            node: me.name.clone(),
            vtep: me.vtep,
            underlay: me.underlay.clone(),
            datapath: me.datapath,
            mesh_return: me.mesh_return,
            vxlan_port: cluster.vxlan_port,
            base,
            local,
            unwired,
            way_out,
        })
    }
}

impl NodePlan {
    /// The complete map state once the underlay and the local endpoints' host-side interfaces
    /// are known: `wired` pairs an endpoint of `self.local` with its host-side ifindex.
    pub fn map_state(&self, underlay_ifindex: u32, wired: &[(&LocalEndpoint, u32)]) -> MapState {
        let mut s = self.base.clone();
        s.config.underlay_ifindex = underlay_ifindex;
        for (ep, ifindex) in wired {
            s.fdb.insert(ep.vni, FdbKey::new(ep.vni, ep.mac.0), FdbEntry::local(*ifindex));
            s.endpoints.insert(
                *ifindex,
                EndpointInfo {
                    vni: ep.vni,
                    ip: ip_to_map(ep.ip.octets()),
                    mac: ep.mac.0,
                    flags: if ep.multi_network { EP_F_MULTI_NETWORK } else { 0 },
                    _pad: 0,
                },
            );
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::file::parse;

    const FILE: &str = "
nodes:
  - {name: node1, vtep: 192.168.50.1}
  - {name: node2, vtep: 192.168.50.2}
  - {name: kernel, vtep: 192.168.50.9}
networks:
  - {name: a, vni: 10, subnet: 10.0.1.0/24}
  - {name: b, vni: 11, subnet: 10.0.2.0/24, mtu: 1400}
endpoints:
  - {name: a1, network: a, node: node1, ip: 10.0.1.2, netns: c1}
  - {name: a2, network: a, node: node2, ip: 10.0.1.3, netns: c2}
  - {name: b1, network: b, node: node1, ip: 10.0.2.2}
  - {name: k1, network: a, node: kernel, ip: 10.0.1.9}
";

    #[test]
    fn plan_for_node1() {
        let c = parse(FILE).expect("valid");
        let p = plan(&c, "node1").expect("node exists");
        assert_eq!(p.base.members.len(), 2, "every other node is a member, self is not");
        assert!(!p.base.members.contains_key(&ip_to_map([192, 168, 50, 1])));
        assert_eq!(p.base.vnis.len(), 2);
        assert_eq!(p.base.neigh.len(), 6, "every endpoint and both gateways are answerable by ARP");
        assert_eq!(p.base.fdb.len(), 4, "remote endpoints a2 and k1, and the two gateways");
        assert_eq!(p.base.fdb.get(10, &FdbKey::new(10, [0x02, 0x42, 10, 0, 1, 1])).copied().expect("gateway entry"), FdbEntry::gateway(), "gateway of network a");
        assert_eq!(p.base.subnets.len(), 2);
        assert_eq!(p.way_out.egress.len(), 2);
        assert!(p.local[0].default_route, "the container's only network carries its default route");
        let k1 = *p.base.fdb.get(10, &FdbKey::new(10, [0x02, 0x42, 10, 0, 1, 9])).expect("k1 entry");
        assert_eq!(k1, FdbEntry::remote(ip_to_map([192, 168, 50, 9])));
        assert_eq!(p.local.len(), 1);
        assert_eq!(p.local[0].netns, "c1");
        assert!(p.local[0].host_ifname.len() <= 15);
        assert_eq!(p.unwired, vec![("b".to_string(), "b1".to_string())]);
        let s = p.map_state(7, &[(&p.local[0], 42)]);
        assert_eq!(s.config.underlay_ifindex, 7);
        assert_eq!(*s.fdb.get(10, &FdbKey::new(10, [0x02, 0x42, 10, 0, 1, 2])).expect("local entry"), FdbEntry::local(42));
        assert_eq!(s.endpoints[&42].vni, 10);
    }

    #[test]
    fn a_planner_reuses_unchanged_networks_and_plans_what_a_fresh_plan_does() {
        let mut planner = Planner::default();
        let c = parse(FILE).expect("valid");
        let first = planner.plan(&c, "node1").expect("plans");
        assert_eq!(first, plan(&c, "node1").expect("plans"));
        // An alias in network a, then a2 moved to another node, then network b renamed: each
        // plan equals a fresh one, and only the changed network's parts are new.
        let edits: [(&str, &str, bool, bool); 3] = [
            ("{name: a2, network: a, node: node2, ip: 10.0.1.3, netns: c2}", "{name: a2, network: a, node: node2, ip: 10.0.1.3, netns: c2, aliases: [web]}", false, true),
            ("{name: a2, network: a, node: node2,", "{name: a2, network: a, node: kernel,", false, true),
            ("{name: b, vni: 11,", "{name: bb, vni: 11,", true, false),
        ];
        let mut text = FILE.to_string();
        let mut prev = first;
        let mut last = c;
        for (from, to, b_changes, a_changes) in edits {
            text = text.replace(from, to).replace("network: b,", if b_changes { "network: bb," } else { "network: b," });
            let mut c = parse(&text).unwrap_or_else(|e| panic!("{to}: {e}"));
            // As the sources do: a network whose endpoints are the same keeps its generation.
            c.endpoints.keep_generations(&last.endpoints);
            let next = planner.plan(&c, "node1").expect("plans");
            assert_eq!(next, plan(&c, "node1").expect("plans"), "after {to}: the same plan as from scratch");
            for (vni, changed) in [(10, a_changes), (11, b_changes)] {
                let same = Arc::ptr_eq(&prev.base.names.0[&vni], &next.base.names.0[&vni])
                    && Arc::ptr_eq(&prev.base.fdb.0[&vni], &next.base.fdb.0[&vni])
                    && Arc::ptr_eq(&prev.base.neigh.0[&vni], &next.base.neigh.0[&vni]);
                assert_eq!(same, !changed, "after {to}: VNI {vni}'s parts {}", if changed { "rebuilt" } else { "reused" });
            }
            prev = next;
            last = c;
        }
        let k1 = FdbKey::new(10, [0x02, 0x42, 10, 0, 1, 3]);
        assert_eq!(prev.base.fdb.get(10, &k1), Some(&FdbEntry::remote(ip_to_map([192, 168, 50, 9]))), "a2 is behind the kernel node now");
    }

    #[test]
    fn unknown_node_is_an_error() {
        let c = parse(FILE).expect("valid");
        match plan(&c, "nodeX") {
            Ok(_) => panic!("expected an error for a node that is not listed"),
            Err(e) => assert_eq!(e.to_string(), "node \"nodeX\" is not in the cluster description"),
        }
    }

    #[test]
    fn interface_names_are_stable_and_short() {
        assert_eq!(host_ifname("n", "web1"), host_ifname("n", "web1"));
        assert_ne!(host_ifname("n", "web1"), host_ifname("n", "web2"));
        assert_ne!(host_ifname("n", "web1"), host_ifname("m", "web1"), "one container's interfaces on two networks");
        assert_eq!(host_ifname("n", "a-very-long-endpoint-name-indeed").len(), 11);
    }
}

