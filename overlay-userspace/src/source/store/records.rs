//! What the store holds: the key layout and the JSON value of each kind of key.
//!
//! ```text
//! /overlay/networks/<name>        NetworkRecord   persistent
//! /overlay/nodes/<name>           NodeRecord      persistent (what `node ls` lists)
//! /overlay/alive/<name>           AliveRecord     under the agent's lease: liveness
//! /overlay/endpoints/<network>/<name>      EndpointRecord  persistent
//! /overlay/services/<name>                 ServiceRecord   persistent (its VIP also under ipam)
//! /overlay/ipam/<network>/<ip>             endpoint name   the address is taken (IPAM)
//! /overlay/attach/<node>/<network>/<netns> endpoint name   the namespace joined the network
//! /overlay/ifname/<node>/<ifname>/<netns>  network/name    the interface name is taken
//! ```
//!
//! Endpoint names are unique within their network: a container keeps its name on every
//! network it joins. The namespace comes last in its keys because it may be a path.
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

use crate::model::{self, ConfigError, Endpoint, EndpointSpec, Network, NetworkSpec, Node, PortSpec, Service, ServiceMode, ServiceSpec};

/// Every key of the overlay starts with this.
pub const PREFIX: &str = "/overlay/";
pub const NETWORKS: &str = "/overlay/networks/";
pub const NODES: &str = "/overlay/nodes/";
pub const ALIVE: &str = "/overlay/alive/";
pub const ENDPOINTS: &str = "/overlay/endpoints/";
pub const IPAM: &str = "/overlay/ipam/";
pub const ATTACH: &str = "/overlay/attach/";
pub const IFNAME: &str = "/overlay/ifname/";
pub const SERVICES: &str = "/overlay/services/";

pub fn service_key(name: &str) -> String {
    format!("{SERVICES}{name}")
}

pub fn network_key(name: &str) -> String {
    format!("{NETWORKS}{name}")
}
pub fn node_key(name: &str) -> String {
    format!("{NODES}{name}")
}
pub fn alive_key(name: &str) -> String {
    format!("{ALIVE}{name}")
}
pub fn endpoint_key(network: &str, name: &str) -> String {
    format!("{ENDPOINTS}{network}/{name}")
}
/// All addresses taken in `network`.
pub fn ipam_prefix(network: &str) -> String {
    format!("{IPAM}{network}/")
}
pub fn ipam_key(network: &str, ip: Ipv4Addr) -> String {
    format!("{IPAM}{network}/{ip}")
}
/// Namespace `netns` of `node` joined `network` (once).
pub fn attach_key(node: &str, network: &str, netns: &str) -> String {
    format!("{ATTACH}{node}/{network}/{netns}")
}
/// Interface `ifname` of namespace `netns` of `node` is taken.
pub fn ifname_key(node: &str, ifname: &str, netns: &str) -> String {
    format!("{IFNAME}{node}/{ifname}/{netns}")
}

/// The end of the key range holding every key that starts with `prefix` (etcd's convention).
pub fn range_end(prefix: &str) -> Vec<u8> {
    let mut end = prefix.as_bytes().to_vec();
    if let Some(last) = end.last_mut() {
        *last += 1;
    }
    end
}

/// A network, as `network create` writes it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkRecord {
    pub name: String,
    pub vni: u32,
    pub subnet: String,
    /// Reserved as Docker reserves it (first host address); never given to an endpoint.
    pub gateway: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    #[serde(default)]
    pub attachable: bool,
    /// No way out of the overlay (Docker's `--internal`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub internal: bool,
    /// Seconds since the Unix epoch.
    #[serde(default)]
    pub created: u64,
}

/// A node, as its agent registers it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeRecord {
    pub name: String,
    pub vtep: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub underlay: Option<String>,
    /// `tc` or `xdp`, as the agent's `--datapath` says; absent (older agents, or no
    /// `--datapath`): unset, which is tc.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub datapath: Option<String>,
    /// `node` or `direct`, as the agent's `--mesh-return` says; absent (older agents, or no
    /// `--mesh-return`): unset, which is node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mesh_return: Option<String>,
}

/// Written under the agent's lease: the node is up while this key exists.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AliveRecord {
    /// Seconds since the Unix epoch when this agent registered.
    pub since: u64,
    pub ttl: i64,
}

/// An endpoint, as `endpoint add` publishes it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EndpointRecord {
    pub name: String,
    pub network: String,
    pub node: String,
    pub ip: String,
    pub mac: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub netns: Option<String>,
    /// The interface's name in the namespace; absent: as the runtime names it (Docker), or the
    /// first free `ethN` when the agent creates it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interface: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub aliases: Vec<String>,
    /// The service this endpoint is a task of.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
}

/// A service, as `service create` writes it (its VIP allocated then, so every node agrees).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceRecord {
    pub name: String,
    pub network: String,
    /// `vip` or `dnsrr`.
    pub mode: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vip: Option<String>,
    #[serde(default)]
    pub ports: Vec<PortRecord>,
    pub created: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PortRecord {
    pub port: u16,
    pub target: u16,
    pub protocol: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub publish: Option<u16>,
}

impl ServiceRecord {
    pub fn parse(key: &str, value: &[u8]) -> Result<ServiceRecord, Malformed> {
        let r: ServiceRecord = json(key, value)?;
        check_name(key, SERVICES, &r.name)?;
        Ok(r)
    }

    /// The service, checked against its network. A VIP-mode record carries its VIP (nothing is
    /// allocated here: every node must read the same one).
    pub fn to_service(&self, key: &str, net: &Network) -> Result<Service, Malformed> {
        if self.mode == "vip" && self.vip.is_none() {
            return Err(malformed(key, "vip: missing (service create allocates it)"));
        }
        let ports = self
            .ports
            .iter()
            .map(|p| PortSpec { port: p.port as i64, target: Some(p.target as i64), protocol: Some(p.protocol.clone()), publish: p.publish.map(i64::from) })
            .collect();
        let spec = ServiceSpec { name: self.name.clone(), vip: self.vip.as_deref(), ports, mode: Some(&self.mode) };
        checked(key, model::service_entry("service", net, spec, |_| true))
    }

    pub fn of(s: &Service, created: u64) -> ServiceRecord {
        ServiceRecord {
            name: s.name.clone(),
            network: s.network.clone(),
            mode: s.mode.to_string(),
            vip: s.vip.map(|v| v.to_string()),
            ports: s.ports.iter().map(|p| PortRecord { port: p.port, target: p.target, protocol: p.protocol.to_string(), publish: p.publish }).collect(),
            created,
        }
    }

    pub fn is_vip(&self) -> bool {
        self.mode == ServiceMode::Vip.to_string()
    }
}

/// A value that is not what its key promises.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{key}: {message}")]
pub struct Malformed {
    pub key: String,
    pub message: String,
}

fn malformed(key: &str, message: impl ToString) -> Malformed {
    Malformed { key: key.to_string(), message: message.to_string() }
}

fn json<T: serde::de::DeserializeOwned>(key: &str, value: &[u8]) -> Result<T, Malformed> {
    serde_json::from_slice(value).map_err(|e| malformed(key, format!("not a valid record: {e}")))
}

/// The name a key ends with, which its record must repeat.
fn check_name(key: &str, prefix: &str, name: &str) -> Result<(), Malformed> {
    match key.strip_prefix(prefix) {
        Some(n) if n == name => Ok(()),
        _ => Err(malformed(key, format!("record names {name:?}, the key says otherwise"))),
    }
}

fn checked<T>(key: &str, r: Result<T, ConfigError>) -> Result<T, Malformed> {
    r.map_err(|e| match e {
        ConfigError::Invalid { field, message, .. } => malformed(key, format!("{field}: {message}")),
        other => malformed(key, other),
    })
}

impl NetworkRecord {
    pub fn parse(key: &str, value: &[u8]) -> Result<(NetworkRecord, Network), Malformed> {
        let r: NetworkRecord = json(key, value)?;
        check_name(key, NETWORKS, &r.name)?;
        let net = r.to_network().map_err(|e| malformed(key, e))?;
        Ok((r, net))
    }

    pub fn to_network(&self) -> Result<Network, String> {
        let spec = NetworkSpec {
            name: self.name.clone(),
            vni: self.vni as i64,
            subnet: &self.subnet,
            mtu: self.mtu.map(i64::from),
            gateway: Some(&self.gateway),
            internal: self.internal,
        };
        model::network_entry("network", spec).map_err(|e| match e {
            ConfigError::Invalid { field, message, .. } => format!("{field}: {message}"),
            other => other.to_string(),
        })
    }

    pub fn subnet(&self) -> Option<Ipv4Net> {
        self.subnet.parse().ok()
    }
}

impl NodeRecord {
    pub fn parse(key: &str, value: &[u8]) -> Result<Node, Malformed> {
        let r: NodeRecord = json(key, value)?;
        check_name(key, NODES, &r.name)?;
        checked(key, model::node_entry("node", r.name, &r.vtep, r.underlay, r.datapath.as_deref(), r.mesh_return.as_deref()))
    }

    pub fn of(n: &Node) -> NodeRecord {
        NodeRecord { name: n.name.clone(), vtep: n.vtep.to_string(), underlay: n.underlay.clone(), datapath: n.datapath.map(|d| d.name().to_string()), mesh_return: n.mesh_return.map(|m| m.name().to_string()) }
    }
}

impl AliveRecord {
    pub fn parse(key: &str, value: &[u8]) -> Result<AliveRecord, Malformed> {
        json(key, value)
    }
}

impl EndpointRecord {
    pub fn parse(key: &str, value: &[u8]) -> Result<EndpointRecord, Malformed> {
        let r: EndpointRecord = json(key, value)?;
        if key != endpoint_key(&r.network, &r.name) {
            return Err(malformed(key, format!("record names endpoint {:?} of network {:?}, the key says otherwise", r.name, r.network)));
        }
        Ok(r)
    }

    /// The endpoint, checked against its network.
    pub fn to_endpoint(&self, key: &str, net: &Network) -> Result<Endpoint, Malformed> {
        let spec = EndpointSpec {
            name: self.name.clone(),
            node: self.node.clone(),
            ip: &self.ip,
            mac: Some(&self.mac),
            netns: self.netns.clone(),
            interface: self.interface.clone(),
            aliases: self.aliases.clone(),
            service: self.service.clone(),
        };
        checked(key, model::endpoint_entry("endpoint", net, spec))
    }
}

pub fn now_secs() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn range_end_is_the_prefix_successor() {
        assert_eq!(range_end("/overlay/"), b"/overlay0".to_vec());
        assert_eq!(range_end(&ipam_prefix("a")), b"/overlay/ipam/a0".to_vec());
    }

    #[test]
    fn a_node_record_carries_its_datapath_and_older_records_without_one_still_read() {
        let k = node_key("n1");
        let old = NodeRecord::parse(&k, br#"{"name":"n1","vtep":"192.168.50.1"}"#).expect("a record without datapath");
        assert_eq!(old.datapath, None, "absent: unset (tc)");
        let xdp = NodeRecord::parse(&k, br#"{"name":"n1","vtep":"192.168.50.1","datapath":"xdp"}"#).expect("valid");
        assert_eq!(xdp.datapath, Some(model::Datapath::Xdp));
        let bad = NodeRecord::parse(&k, br#"{"name":"n1","vtep":"192.168.50.1","datapath":"dpdk"}"#).expect_err("not a datapath");
        assert_eq!(bad.to_string(), "/overlay/nodes/n1: datapath: \"dpdk\" is not a datapath (tc or xdp)");
        // Written back as read; an unset datapath is left out, as older agents wrote it.
        assert_eq!(serde_json::to_string(&NodeRecord::of(&xdp)).expect("json"), r#"{"name":"n1","vtep":"192.168.50.1","datapath":"xdp"}"#);
        // The mesh return, the same way.
        assert_eq!(old.mesh_return, None, "absent: unset (node)");
        let direct = NodeRecord::parse(&k, br#"{"name":"n1","vtep":"192.168.50.1","mesh_return":"direct"}"#).expect("valid");
        assert_eq!(direct.mesh_return, Some(model::MeshReturn::Direct));
        let bad = NodeRecord::parse(&k, br#"{"name":"n1","vtep":"192.168.50.1","mesh_return":"dsr"}"#).expect_err("not a mesh return");
        assert_eq!(bad.to_string(), "/overlay/nodes/n1: mesh_return: \"dsr\" is not a mesh return (node or direct)");
        assert_eq!(serde_json::to_string(&NodeRecord::of(&direct)).expect("json"), r#"{"name":"n1","vtep":"192.168.50.1","mesh_return":"direct"}"#);
        assert_eq!(serde_json::to_string(&NodeRecord::of(&old)).expect("json"), r#"{"name":"n1","vtep":"192.168.50.1"}"#);
    }

    #[test]
    fn records_parse_and_malformed_ones_name_the_key() {
        let k = network_key("n1");
        let ok = br#"{"name":"n1","vni":4096,"subnet":"10.0.0.0/24","gateway":"10.0.0.1"}"#;
        let (r, net) = NetworkRecord::parse(&k, ok).expect("valid record");
        assert_eq!((r.vni, net.subnet.to_string()), (4096, "10.0.0.0/24".to_string()));
        let e = NetworkRecord::parse(&k, b"{not json").expect_err("garbage");
        assert!(e.to_string().starts_with("/overlay/networks/n1: not a valid record"), "{e}");
        let e = NetworkRecord::parse(&network_key("n2"), ok).expect_err("name mismatch");
        assert_eq!(e.key, "/overlay/networks/n2");
        let bad_vni = br#"{"name":"n1","vni":0,"subnet":"10.0.0.0/24","gateway":"10.0.0.1"}"#;
        let e = NetworkRecord::parse(&k, bad_vni).expect_err("VNI 0");
        assert!(e.message.contains("VNI range"), "{e}");
        let e = NodeRecord::parse(&node_key("a"), br#"{"name":"a","vtep":"banana"}"#).expect_err("bad vtep");
        assert_eq!(e.to_string(), "/overlay/nodes/a: vtep: \"banana\" is not an IPv4 address");
        let ep = EndpointRecord::parse(&endpoint_key("n1", "e"), br#"{"name":"e","network":"n1","node":"a","ip":"10.0.1.5","mac":"02:42:0a:00:01:05"}"#)
            .expect("endpoint record");
        let e = ep.to_endpoint("k", &net).expect_err("IP outside the subnet");
        assert!(e.message.contains("outside subnet 10.0.0.0/24"), "{e}");
    }
}
