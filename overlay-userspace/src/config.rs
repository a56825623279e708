//! The cluster file: parsing and whole-file validation. A file is either entirely valid or
//! rejected with one error naming the entry and the field; nothing of a rejected file is used.
use std::{collections::HashMap, fmt, net::Ipv4Addr, path::Path};

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

    let mut nodes = Vec::new();
    let mut node_names = HashMap::new();
    let mut vteps = HashMap::new();
    for (i, n) in raw.nodes.into_iter().enumerate() {
        let entry = format!("nodes[{}]", if n.name.is_empty() { i.to_string() } else { n.name.clone() });
        check_name(&entry, "node", &n.name)?;
        if node_names.insert(n.name.clone(), ()).is_some() {
            return Err(invalid(entry, "name", format!("duplicate node name {:?}", n.name)));
        }
        let vtep: Ipv4Addr = n.vtep.parse().map_err(|_| invalid(&entry, "vtep", format!("{:?} is not an IPv4 address", n.vtep)))?;
        if vtep.is_unspecified() || vtep.is_multicast() || vtep.is_broadcast() {
            return Err(invalid(entry, "vtep", format!("{vtep} cannot be a VTEP address")));
        }
        if let Some(other) = vteps.insert(vtep, n.name.clone()) {
            return Err(invalid(entry, "vtep", format!("{vtep} is already the VTEP of node {other}")));
        }
        if let Some(u) = &n.underlay {
            if u.is_empty() || u.len() > 15 || u.contains(['/', ' ']) {
                return Err(invalid(entry, "underlay", format!("{u:?} is not an interface name")));
            }
        }
        nodes.push(Node { name: n.name, vtep, underlay: n.underlay });
    }

    let mut networks: Vec<Network> = Vec::new();
    let mut vnis = HashMap::new();
    for (i, n) in raw.networks.into_iter().enumerate() {
        let entry = format!("networks[{}]", if n.name.is_empty() { i.to_string() } else { n.name.clone() });
        check_name(&entry, "network", &n.name)?;
        if networks.iter().any(|o| o.name == n.name) {
            return Err(invalid(entry, "name", format!("duplicate network name {:?}", n.name)));
        }
        if n.vni < 1 || n.vni > MAX_VNI as i64 {
            return Err(invalid(entry, "vni", format!("{} is out of the 24-bit VNI range 1-{MAX_VNI}", n.vni)));
        }
        let vni = n.vni as u32;
        if let Some(other) = vnis.insert(vni, n.name.clone()) {
            return Err(invalid(entry, "vni", format!("duplicate VNI {vni}: already used by network {other}")));
        }
        let subnet: Ipv4Net = n.subnet.parse().map_err(|_| invalid(&entry, "subnet", format!("{:?} is not an IPv4 CIDR such as 10.0.1.0/24", n.subnet)))?;
        if subnet.trunc() != subnet {
            return Err(invalid(entry, "subnet", format!("{subnet} has host bits set (did you mean {}?)", subnet.trunc())));
        }
        if subnet.prefix_len() > 30 {
            return Err(invalid(entry, "subnet", format!("{subnet} is too small for endpoints (at most /30)")));
        }
        if let Some(o) = networks.iter().find(|o| o.subnet.contains(&subnet.network()) || subnet.contains(&o.subnet.network())) {
            return Err(invalid(entry, "subnet", format!("{subnet} overlaps {} of network {}", o.subnet, o.name)));
        }
        let mtu = match n.mtu {
            None => None,
            Some(m) if (68..=65_485).contains(&m) => Some(m as u32),
            Some(m) => return Err(invalid(entry, "mtu", format!("{m} is outside 68-65485"))),
        };
        networks.push(Network { name: n.name, vni, subnet, mtu });
    }

    let mut endpoints: Vec<Endpoint> = Vec::new();
    for (i, e) in raw.endpoints.into_iter().enumerate() {
        let entry = format!("endpoints[{}]", if e.name.is_empty() { i.to_string() } else { e.name.clone() });
        check_name(&entry, "endpoint", &e.name)?;
        if endpoints.iter().any(|o| o.name == e.name) {
            return Err(invalid(entry, "name", format!("duplicate endpoint name {:?}", e.name)));
        }
        let net = networks.iter().find(|n| n.name == e.network).ok_or_else(|| invalid(&entry, "network", format!("unknown network {:?}", e.network)))?;
        if !node_names.contains_key(&e.node) {
            return Err(invalid(entry, "node", format!("unknown node {:?}", e.node)));
        }
        let ip: Ipv4Addr = e.ip.parse().map_err(|_| invalid(&entry, "ip", format!("{:?} is not an IPv4 address", e.ip)))?;
        if !net.subnet.contains(&ip) {
            return Err(invalid(entry, "ip", format!("{ip} is outside subnet {} of network {}", net.subnet, net.name)));
        }
        if ip == net.subnet.network() || ip == net.subnet.broadcast() {
            return Err(invalid(entry, "ip", format!("{ip} is the network or broadcast address of {}", net.subnet)));
        }
        let mac = match &e.mac {
            None => Mac::from_ip(ip),
            Some(s) => s.parse::<Mac>().map_err(|_| invalid(&entry, "mac", format!("{s:?} is not a MAC address like 02:42:0a:00:01:02")))?,
        };
        if mac.0[0] & 1 != 0 || mac.0 == [0; 6] {
            return Err(invalid(entry, "mac", format!("{mac} is not a unicast address")));
        }
        for o in endpoints.iter().filter(|o| o.network == e.network) {
            if o.ip == ip {
                return Err(invalid(entry, "ip", format!("duplicate IP {ip} in network {}: already endpoint {}", e.network, o.name)));
            }
            if o.mac == mac {
                return Err(invalid(entry, "mac", format!("duplicate MAC {mac} in network {}: already endpoint {}", e.network, o.name)));
            }
        }
        if let Some(ns) = &e.netns {
            if ns.is_empty() || ns.contains(['/', ' ', '\0']) || ns == "." || ns == ".." {
                return Err(invalid(entry, "netns", format!("{ns:?} is not a namespace name")));
            }
            if let Some(o) = endpoints.iter().find(|o| o.node == e.node && o.netns.as_deref() == Some(ns)) {
                return Err(invalid(entry, "netns", format!("namespace {ns} on node {} already holds endpoint {}", e.node, o.name)));
            }
        }
        endpoints.push(Endpoint { name: e.name, network: e.network, node: e.node, ip, mac, netns: e.netns });
    }
    Ok(Cluster { vxlan_port, nodes, networks, endpoints })
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
