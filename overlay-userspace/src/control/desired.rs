//! From a cluster description to what one node's datapath must hold. Pure functions: the
//! description source (file today, a store tomorrow) does not matter here.
use std::{collections::BTreeMap, net::Ipv4Addr};

use ipnet::Ipv4Net;
use overlay_common::{
    DNS_ADDRS_MAX, DNS_NAME_MAX, EP_F_MULTI_NETWORK, EndpointInfo, FdbEntry, FdbKey, MemberInfo,
    NameEntry, NameKey, NeighEntry, NeighKey, NodeConfig, SubnetInfo, VNI_F_INTERNAL, VniInfo,
    ip_to_map,
};

use crate::{
    model::{Cluster, Mac},
    defaults::{HOST_VETH_PREFIX, OVERLAY_OVERHEAD, PEER_VETH_PREFIX, SRC_PORT_MAX, SRC_PORT_MIN},
};

/// Everything the maps of one node hold: the unit the dataplane reconciles.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MapState {
    pub config: NodeConfig,
    pub vnis: BTreeMap<u32, VniInfo>,
    pub fdb: BTreeMap<FdbKey, FdbEntry>,
    pub endpoints: BTreeMap<u32, EndpointInfo>,
    pub neigh: BTreeMap<NeighKey, NeighEntry>,
    pub members: BTreeMap<u32, MemberInfo>,
    /// Every overlay subnet: (network-order address, prefix length) -> its VNI.
    pub subnets: BTreeMap<(u32, u32), SubnetInfo>,
    /// Names the datapath answers: (VNI, name) -> addresses. Shared: every plan and copy of a
    /// node's state holds the same table (10,000 endpoints make 20,000 names).
    pub names: std::sync::Arc<BTreeMap<NameKey, NameEntry>>,
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

/// Computes the plan of `node` in `cluster`.
pub fn plan(cluster: &Cluster, node: &str) -> Result<NodePlan, PlanError> {
    let me = cluster.node(node).ok_or_else(|| PlanError::UnknownNode(node.to_string()))?;
    let vtep_of: BTreeMap<&str, Ipv4Addr> =
        cluster.nodes.iter().map(|n| (n.name.as_str(), n.vtep)).collect();
    let mut base = MapState {
        config: NodeConfig {
            vtep: ip_to_map(me.vtep.octets()),
            underlay_ifindex: 0,
            vxlan_port: cluster.vxlan_port,
            _pad0: 0,
            src_port_min: SRC_PORT_MIN,
            src_port_range: SRC_PORT_MAX - SRC_PORT_MIN + 1,
        },
        ..Default::default()
    };
    let mut way_out = WayOut { vxlan_port: cluster.vxlan_port, ..Default::default() };
    for net in &cluster.networks {
        let flags = if net.internal { VNI_F_INTERNAL } else { 0 };
        base.vnis.insert(net.vni, VniInfo { mtu: net.mtu.unwrap_or(0), flags });
        // The gateway: answered by ARP on every node, its MAC the way out of this node.
        let gw_mac = gateway_mac(net.gateway);
        base.neigh.insert(NeighKey { vni: net.vni, ip: ip_to_map(net.gateway.octets()) }, NeighEntry { mac: gw_mac.0, _pad: [0; 2] });
        base.fdb.insert(FdbKey::new(net.vni, gw_mac.0), FdbEntry::gateway());
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
    let mut local = Vec::new();
    let mut unwired = Vec::new();
    // Namespaces whose default route is taken (by their first non-internal network), and whose
    // resolver is (by their first network).
    let mut routed: std::collections::HashSet<&str> = Default::default();
    let mut resolved: std::collections::HashSet<&str> = Default::default();
    for ep in &cluster.endpoints {
        let net = cluster.network(&ep.network).expect("validated: endpoint network exists");
        base.neigh.insert(
            NeighKey { vni: net.vni, ip: ip_to_map(ep.ip.octets()) },
            NeighEntry { mac: ep.mac.0, _pad: [0; 2] },
        );
        if ep.node != me.name {
            let vtep = vtep_of[ep.node.as_str()];
            base.fdb.insert(FdbKey::new(net.vni, ep.mac.0), FdbEntry::remote(ip_to_map(vtep.octets())));
        } else if let Some(ns) = &ep.netns {
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
    // Names the datapath answers: every endpoint's name and aliases, and NAME.NETWORK, per
    // network, as the agent's resolver answers them for a container on one network.
    let mut flat: Vec<(NameKey, u32)> = Vec::with_capacity(cluster.endpoints.len() * 2);
    for ep in &cluster.endpoints {
        let net = cluster.network(&ep.network).expect("validated: endpoint network exists");
        let ip = ip_to_map(ep.ip.octets());
        for n in std::iter::once(&ep.name).chain(&ep.aliases) {
            for w in [dns_wire_of(&[n]), dns_wire_of(&[n, &net.name])].into_iter().flatten() {
                flat.push((NameKey { vni: net.vni, name: w }, ip));
            }
        }
    }
    // Sorted, then grouped: one entry per name with its addresses in cluster order.
    flat.sort_by_key(|(k, _)| *k);
    let mut names = Vec::with_capacity(flat.len());
    let mut i = 0;
    while i < flat.len() {
        let j = flat[i..].iter().position(|(k, _)| *k != flat[i].0).map_or(flat.len(), |p| i + p);
        if j - i <= DNS_ADDRS_MAX {
            let mut addrs = [0u32; DNS_ADDRS_MAX];
            for (slot, (_, ip)) in addrs.iter_mut().zip(&flat[i..j]) {
                *slot = *ip;
            }
            names.push((flat[i].0, NameEntry { count: (j - i) as u32, addrs }));
        }
        i = j;
    }
    base.names = std::sync::Arc::new(names.into_iter().collect());
    Ok(NodePlan {
        node: me.name.clone(),
        vtep: me.vtep,
        underlay: me.underlay.clone(),
        vxlan_port: cluster.vxlan_port,
        base,
        local,
        unwired,
        way_out,
    })
}

impl NodePlan {
    /// The complete map state once the underlay and the local endpoints' host-side interfaces
    /// are known: `wired` pairs an endpoint of `self.local` with its host-side ifindex.
    pub fn map_state(&self, underlay_ifindex: u32, wired: &[(&LocalEndpoint, u32)]) -> MapState {
        let mut s = self.base.clone();
        s.config.underlay_ifindex = underlay_ifindex;
        for (ep, ifindex) in wired {
            s.fdb.insert(FdbKey::new(ep.vni, ep.mac.0), FdbEntry::local(*ifindex));
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
        assert_eq!(p.base.fdb[&FdbKey::new(10, [0x02, 0x42, 10, 0, 1, 1])], FdbEntry::gateway(), "gateway of network a");
        assert_eq!(p.base.subnets.len(), 2);
        assert_eq!(p.way_out.egress.len(), 2);
        assert!(p.local[0].default_route, "the container's only network carries its default route");
        let k1 = p.base.fdb[&FdbKey::new(10, [0x02, 0x42, 10, 0, 1, 9])];
        assert_eq!(k1, FdbEntry::remote(ip_to_map([192, 168, 50, 9])));
        assert_eq!(p.local.len(), 1);
        assert_eq!(p.local[0].netns, "c1");
        assert!(p.local[0].host_ifname.len() <= 15);
        assert_eq!(p.unwired, vec![("b".to_string(), "b1".to_string())]);
        let s = p.map_state(7, &[(&p.local[0], 42)]);
        assert_eq!(s.config.underlay_ifindex, 7);
        assert_eq!(s.fdb[&FdbKey::new(10, [0x02, 0x42, 10, 0, 1, 2])], FdbEntry::local(42));
        assert_eq!(s.endpoints[&42].vni, 10);
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
