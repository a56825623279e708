//! The cluster file: parsing and whole-file validation. A file is either entirely valid or
//! rejected with one error naming the entry and the field; nothing of a rejected file is used.
use std::{fmt, net::Ipv4Addr, path::Path};

use ipnet::Ipv4Net;
use overlay_common::wire::{MAX_VNI, VXLAN_PORT};
use serde::Deserialize;

/// A validated cluster description.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cluster {
    pub vxlan_port: u16,
    pub nodes: Vec<Node>,
    pub networks: Vec<Network>,
    pub endpoints: Vec<Endpoint>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Node {
    pub name: String,
    pub vtep: Ipv4Addr,
    pub underlay: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Network {
    pub name: String,
    pub vni: u32,
    pub subnet: Ipv4Net,
    pub mtu: Option<u32>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    pub name: String,
    pub network: String,
    pub node: String,
    pub ip: Ipv4Addr,
    pub mac: Mac,
    pub netns: Option<String>,
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

/// Why a cluster file was rejected.
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

fn invalid(entry: impl Into<String>, field: &'static str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid { entry: entry.into(), field, message: message.into() }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCluster {
    vxlan_port: Option<u32>,
    #[serde(default)]
    nodes: Vec<RawNode>,
    #[serde(default)]
    networks: Vec<RawNetwork>,
    #[serde(default)]
    endpoints: Vec<RawEndpoint>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNode {
    name: String,
    vtep: String,
    underlay: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNetwork {
    name: String,
    vni: i64,
    subnet: String,
    mtu: Option<i64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEndpoint {
    name: String,
    network: String,
    node: String,
    ip: String,
    mac: Option<String>,
    netns: Option<String>,
}

/// Reads and validates a cluster file.
pub fn load(path: &Path) -> Result<Cluster, ConfigError> {
    let text = std::fs::read_to_string(path)
        .map_err(|source| ConfigError::Read { path: path.display().to_string(), source })?;
    parse(&text)
}

/// Parses and validates cluster YAML.
pub fn parse(text: &str) -> Result<Cluster, ConfigError> {
    let raw: RawCluster = serde_yaml::from_str(text).map_err(|e| ConfigError::Yaml(e.to_string()))?;
    validate(raw)
}

fn check_name(entry: &str, what: &str, name: &str) -> Result<(), ConfigError> {
    if name.is_empty() || name.contains(['/', ' ', '\0']) {
        return Err(invalid(entry, "name", format!("{what} name {name:?} must be non-empty, without '/' or spaces")));
    }
    Ok(())
}

fn validate(raw: RawCluster) -> Result<Cluster, ConfigError> {
    let vxlan_port = match raw.vxlan_port {
        None => VXLAN_PORT,
        Some(p) if (1..=65535).contains(&p) => p as u16,
        Some(p) => return Err(invalid("cluster", "vxlan_port", format!("{p} is not a UDP port (1-65535)"))),
    };

    let mut nodes: Vec<Node> = Vec::new();
    for (i, n) in raw.nodes.into_iter().enumerate() {
        let entry = format!("nodes[{}]", if n.name.is_empty() { i.to_string() } else { n.name.clone() });
        let node = node_entry(&entry, n.name, &n.vtep, n.underlay)?;
        if nodes.iter().any(|o| o.name == node.name) {
            return Err(invalid(entry, "name", format!("duplicate node name {:?}", node.name)));
        }
        if let Some(other) = nodes.iter().find(|o| o.vtep == node.vtep) {
            return Err(invalid(entry, "vtep", format!("{} is already the VTEP of node {}", node.vtep, other.name)));
        }
        nodes.push(node);
    }

    let mut networks: Vec<Network> = Vec::new();
    for (i, n) in raw.networks.into_iter().enumerate() {
        let entry = format!("networks[{}]", if n.name.is_empty() { i.to_string() } else { n.name.clone() });
        let net = network_entry(&entry, n.name, n.vni, &n.subnet, n.mtu)?;
        if let Some((field, message)) = network_conflict(&networks, &net) {
            return Err(invalid(entry, field, message));
        }
        networks.push(net);
    }

    let mut endpoints: Vec<Endpoint> = Vec::new();
    for (i, e) in raw.endpoints.into_iter().enumerate() {
        let entry = format!("endpoints[{}]", if e.name.is_empty() { i.to_string() } else { e.name.clone() });
        let net = networks.iter().find(|n| n.name == e.network).ok_or_else(|| invalid(&entry, "network", format!("unknown network {:?}", e.network)))?;
        let ep = endpoint_entry(&entry, e.name, net, e.node, &e.ip, e.mac.as_deref(), e.netns)?;
        if !nodes.iter().any(|n| n.name == ep.node) {
            return Err(invalid(entry, "node", format!("unknown node {:?}", ep.node)));
        }
        if let Some((field, message)) = endpoint_conflict(&endpoints, &ep) {
            return Err(invalid(entry, field, message));
        }
        endpoints.push(ep);
    }
    Ok(Cluster { vxlan_port, nodes, networks, endpoints })
}

/// One node entry, checked on its own (`entry` names it in errors).
pub fn node_entry(entry: &str, name: String, vtep: &str, underlay: Option<String>) -> Result<Node, ConfigError> {
    check_name(entry, "node", &name)?;
    let vtep: Ipv4Addr = vtep.parse().map_err(|_| invalid(entry, "vtep", format!("{vtep:?} is not an IPv4 address")))?;
    if vtep.is_unspecified() || vtep.is_multicast() || vtep.is_broadcast() {
        return Err(invalid(entry, "vtep", format!("{vtep} cannot be a VTEP address")));
    }
    if let Some(u) = &underlay {
        if u.is_empty() || u.len() > 15 || u.contains(['/', ' ']) {
            return Err(invalid(entry, "underlay", format!("{u:?} is not an interface name")));
        }
    }
    Ok(Node { name, vtep, underlay })
}

/// One network entry, checked on its own.
pub fn network_entry(entry: &str, name: String, vni: i64, subnet: &str, mtu: Option<i64>) -> Result<Network, ConfigError> {
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
    Ok(Network { name, vni: vni as u32, subnet, mtu })
}

/// Why `net` cannot join `existing`: (field, message), or `None`.
pub fn network_conflict(existing: &[Network], net: &Network) -> Option<(&'static str, String)> {
    if existing.iter().any(|o| o.name == net.name) {
        return Some(("name", format!("duplicate network name {:?}", net.name)));
    }
    if let Some(o) = existing.iter().find(|o| o.vni == net.vni) {
        return Some(("vni", format!("duplicate VNI {}: already used by network {}", net.vni, o.name)));
    }
    existing
        .iter()
        .find(|o| o.subnet.contains(&net.subnet.network()) || net.subnet.contains(&o.subnet.network()))
        .map(|o| ("subnet", format!("{} overlaps {} of network {}", net.subnet, o.subnet, o.name)))
}

/// One endpoint entry of network `net`, checked on its own.
pub fn endpoint_entry(
    entry: &str,
    name: String,
    net: &Network,
    node: String,
    ip: &str,
    mac: Option<&str>,
    netns: Option<String>,
) -> Result<Endpoint, ConfigError> {
    check_name(entry, "endpoint", &name)?;
    let ip: Ipv4Addr = ip.parse().map_err(|_| invalid(entry, "ip", format!("{ip:?} is not an IPv4 address")))?;
    if !net.subnet.contains(&ip) {
        return Err(invalid(entry, "ip", format!("{ip} is outside subnet {} of network {}", net.subnet, net.name)));
    }
    if ip == net.subnet.network() || ip == net.subnet.broadcast() {
        return Err(invalid(entry, "ip", format!("{ip} is the network or broadcast address of {}", net.subnet)));
    }
    let mac = match mac {
        None => Mac::from_ip(ip),
        Some(s) => s.parse::<Mac>().map_err(|_| invalid(entry, "mac", format!("{s:?} is not a MAC address like 02:42:0a:00:01:02")))?,
    };
    if mac.0[0] & 1 != 0 || mac.0 == [0; 6] {
        return Err(invalid(entry, "mac", format!("{mac} is not a unicast address")));
    }
    if let Some(ns) = &netns {
        if !valid_netns(ns) {
            return Err(invalid(entry, "netns", format!("{ns:?} is not a namespace name or absolute path")));
        }
    }
    Ok(Endpoint { name, network: net.name.clone(), node, ip, mac, netns })
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

/// Why `ep` cannot join `existing`: (field, message), or `None`.
pub fn endpoint_conflict(existing: &[Endpoint], ep: &Endpoint) -> Option<(&'static str, String)> {
    if existing.iter().any(|o| o.name == ep.name) {
        return Some(("name", format!("duplicate endpoint name {:?}", ep.name)));
    }
    for o in existing.iter().filter(|o| o.network == ep.network) {
        if o.ip == ep.ip {
            return Some(("ip", format!("duplicate IP {} in network {}: already endpoint {}", ep.ip, ep.network, o.name)));
        }
        if o.mac == ep.mac {
            return Some(("mac", format!("duplicate MAC {} in network {}: already endpoint {}", ep.mac, ep.network, o.name)));
        }
    }
    if let Some(ns) = &ep.netns {
        if let Some(o) = existing.iter().find(|o| o.node == ep.node && o.netns.as_deref() == Some(ns)) {
            return Some(("netns", format!("namespace {ns} on node {} already holds endpoint {}", ep.node, o.name)));
        }
    }
    None
}

impl Cluster {
    pub fn node(&self, name: &str) -> Option<&Node> {
        self.nodes.iter().find(|n| n.name == name)
    }
    pub fn network(&self, name: &str) -> Option<&Network> {
        self.networks.iter().find(|n| n.name == name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "
nodes:
  - {name: node1, vtep: 192.168.50.1, underlay: eth0}
  - {name: node2, vtep: 192.168.50.2}
networks:
  - {name: nginx-net, vni: 4097, subnet: 10.0.1.0/24, mtu: 1450}
  - {name: test-net, vni: 4098, subnet: 10.0.2.0/24}
endpoints:
  - {name: web1, network: nginx-net, node: node1, ip: 10.0.1.2, netns: c1}
  - {name: web2, network: nginx-net, node: node2, ip: 10.0.1.3, mac: '02:42:0a:00:01:99'}
";

    fn err(text: &str) -> String {
        match parse(text) {
            Ok(_) => panic!("expected the file to be rejected:\n{text}"),
            Err(e) => e.to_string(),
        }
    }

    fn with(old: &str, new: &str) -> String {
        assert!(GOOD.contains(old), "test bug: {old:?} not in the base file");
        GOOD.replace(old, new)
    }

    #[test]
    fn good_file_parses_with_defaults() {
        let c = parse(GOOD).expect("valid file");
        assert_eq!(c.vxlan_port, 4789, "default VXLAN port");
        assert_eq!(c.nodes[1].underlay, None);
        assert_eq!(c.networks[1].mtu, None);
        assert_eq!(c.endpoints[0].mac.to_string(), "02:42:0a:00:01:02", "MAC derived as Docker does");
        assert_eq!(c.endpoints[1].mac.to_string(), "02:42:0a:00:01:99");
        assert_eq!(c.endpoints[0].netns.as_deref(), Some("c1"));
    }

    #[test]
    fn unparsable_yaml() {
        let e = err("nodes: [ {name: a");
        assert!(e.starts_with("unparsable YAML"), "{e}");
        let e = err("nodes: []\nbogus: 1\n");
        assert!(e.contains("unknown field `bogus`"), "{e}");
    }

    #[test]
    fn unknown_network() {
        let e = err(&with("network: nginx-net, node: node1", "network: nope-net, node: node1"));
        assert_eq!(e, "endpoints[web1].network: unknown network \"nope-net\"");
    }

    #[test]
    fn unknown_node() {
        let e = err(&with("node: node2, ip", "node: node9, ip"));
        assert_eq!(e, "endpoints[web2].node: unknown node \"node9\"");
    }

    #[test]
    fn duplicate_vni() {
        let e = err(&with("vni: 4098", "vni: 4097"));
        assert_eq!(e, "networks[test-net].vni: duplicate VNI 4097: already used by network nginx-net");
    }

    #[test]
    fn vni_out_of_24_bits() {
        let e = err(&with("vni: 4098", "vni: 16777216"));
        assert_eq!(e, "networks[test-net].vni: 16777216 is out of the 24-bit VNI range 1-16777215");
        let e = err(&with("vni: 4098", "vni: 0"));
        assert!(e.contains("networks[test-net].vni: 0 is out of"), "{e}");
    }

    #[test]
    fn duplicate_ip() {
        let e = err(&with("ip: 10.0.1.3", "ip: 10.0.1.2"));
        assert_eq!(e, "endpoints[web2].ip: duplicate IP 10.0.1.2 in network nginx-net: already endpoint web1");
    }

    #[test]
    fn duplicate_mac() {
        let e = err(&with("mac: '02:42:0a:00:01:99'", "mac: '02:42:0a:00:01:02'"));
        assert_eq!(e, "endpoints[web2].mac: duplicate MAC 02:42:0a:00:01:02 in network nginx-net: already endpoint web1");
    }

    #[test]
    fn ip_outside_subnet() {
        let e = err(&with("ip: 10.0.1.3", "ip: 10.0.2.3"));
        assert_eq!(e, "endpoints[web2].ip: 10.0.2.3 is outside subnet 10.0.1.0/24 of network nginx-net");
    }

    #[test]
    fn namespaces_by_name_or_absolute_path() {
        for ok in ["c1", "/var/run/netns/cni-1234", "/proc/42/ns/net", "/run/docker/netns/ab12"] {
            assert!(valid_netns(ok), "{ok}");
        }
        for bad in ["", "a/b", "/", "/a/../b", "/a//b", "..", "a b", "/a/"] {
            assert!(!valid_netns(bad), "{bad:?}");
        }
    }

    #[test]
    fn bad_values() {
        assert_eq!(err(&with("ip: 10.0.1.3", "ip: 10.0.1.300")), "endpoints[web2].ip: \"10.0.1.300\" is not an IPv4 address");
        assert_eq!(err(&with("ip: 10.0.1.3", "ip: 10.0.1.255")), "endpoints[web2].ip: 10.0.1.255 is the network or broadcast address of 10.0.1.0/24");
        assert!(err(&with("mac: '02:42:0a:00:01:99'", "mac: 'zz'")).starts_with("endpoints[web2].mac: \"zz\" is not a MAC"));
        assert_eq!(err(&with("mac: '02:42:0a:00:01:99'", "mac: '03:42:0a:00:01:99'")), "endpoints[web2].mac: 03:42:0a:00:01:99 is not a unicast address");
        assert_eq!(err(&with("subnet: 10.0.2.0/24", "subnet: 10.0.2.1/24")), "networks[test-net].subnet: 10.0.2.1/24 has host bits set (did you mean 10.0.2.0/24?)");
        assert_eq!(err(&with("subnet: 10.0.2.0/24", "subnet: 10.0.1.0/25")), "networks[test-net].subnet: 10.0.1.0/25 overlaps 10.0.1.0/24 of network nginx-net");
        assert_eq!(err(&with("mtu: 1450", "mtu: 20")), "networks[nginx-net].mtu: 20 is outside 68-65485");
        assert_eq!(err(&with("vtep: 192.168.50.2", "vtep: 192.168.50.1")), "nodes[node2].vtep: 192.168.50.1 is already the VTEP of node node1");
        assert_eq!(err(&with("vtep: 192.168.50.2", "vtep: banana")), "nodes[node2].vtep: \"banana\" is not an IPv4 address");
        assert_eq!(err(&format!("vxlan_port: 70000\n{GOOD}")), "cluster.vxlan_port: 70000 is not a UDP port (1-65535)");
        assert_eq!(err(&with("name: node2", "name: node1")), "nodes[node1].name: duplicate node name \"node1\"");
        assert_eq!(err(&with("name: test-net", "name: nginx-net")), "networks[nginx-net].name: duplicate network name \"nginx-net\"");
    }
}
