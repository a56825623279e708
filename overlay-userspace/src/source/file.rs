//! The cluster file: YAML in, a whole validated [`Cluster`] out, or one error naming the entry
//! and the field. Nothing of a rejected file is used. The agent watches the file and replaces
//! its desired cluster with every edit that validates.
use std::{
    path::{Path, PathBuf},
    sync::Arc,
};

use overlay_common::wire::VXLAN_PORT;
use serde::Deserialize;
use tracing::warn;

use crate::{
    defaults::FILE_POLL,
    model::{
        Cluster, ConfigError, EndpointSpec, Endpoints, NetworkSpec, Node, PortSpec, Rules, ServiceSpec, endpoint_entry, invalid, network_entry,
        node_entry, service_entry,
    },
};

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
    #[serde(default)]
    services: Vec<RawService>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawService {
    name: String,
    network: String,
    vip: Option<String>,
    #[serde(default)]
    ports: Vec<RawPort>,
    mode: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPort {
    port: i64,
    target: Option<i64>,
    protocol: Option<String>,
    publish: Option<i64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNode {
    name: String,
    vtep: String,
    underlay: Option<String>,
    datapath: Option<String>,
    mesh_return: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNetwork {
    name: String,
    vni: i64,
    subnet: String,
    mtu: Option<i64>,
    gateway: Option<String>,
    #[serde(default)]
    internal: bool,
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
    interface: Option<String>,
    #[serde(default)]
    aliases: Vec<String>,
    service: Option<String>,
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

fn label(list: &str, i: usize, name: &str) -> String {
    format!("{list}[{}]", if name.is_empty() { i.to_string() } else { name.to_string() })
}

fn validate(raw: RawCluster) -> Result<Cluster, ConfigError> {
    let vxlan_port = match raw.vxlan_port {
        None => VXLAN_PORT,
        Some(p) if (1..=65535).contains(&p) => p as u16,
        Some(p) => return Err(invalid("cluster", "vxlan_port", format!("{p} is not a UDP port (1-65535)"))),
    };
    let mut rules = Rules::new();
    let mut nodes: Vec<Node> = Vec::new();
    for (i, n) in raw.nodes.into_iter().enumerate() {
        let entry = label("nodes", i, &n.name);
        let node = node_entry(&entry, n.name, &n.vtep, n.underlay, n.datapath.as_deref(), n.mesh_return.as_deref())?;
        rules.check_node(&node).map_err(|c| invalid(&entry, c.field, c.message))?;
        rules.add_node(&node);
        nodes.push(node);
    }
    let mut networks = Vec::new();
    for (i, n) in raw.networks.into_iter().enumerate() {
        let entry = label("networks", i, &n.name);
        let spec = NetworkSpec { name: n.name, vni: n.vni, subnet: &n.subnet, mtu: n.mtu, gateway: n.gateway.as_deref(), internal: n.internal };
        let net = network_entry(&entry, spec)?;
        rules.check_network(&net).map_err(|c| invalid(&entry, c.field, c.message))?;
        rules.add_network(&net);
        networks.push(net);
    }
    // Services before endpoints (an endpoint names the service it is a task of); an allocated
    // VIP avoids every endpoint address the file gives.
    let listed: std::collections::HashSet<(&str, std::net::Ipv4Addr)> =
        raw.endpoints.iter().filter_map(|e| Some((e.network.as_str(), e.ip.parse().ok()?))).collect();
    let mut services = Vec::new();
    for (i, s) in raw.services.iter().enumerate() {
        let entry = label("services", i, &s.name);
        let net = rules.network(&s.network).ok_or_else(|| invalid(&entry, "network", format!("unknown network {:?}", s.network)))?.clone();
        let ports = s.ports.iter().map(|p| PortSpec { port: p.port, target: p.target, protocol: p.protocol.clone(), publish: p.publish }).collect();
        let spec = ServiceSpec { name: s.name.clone(), vip: s.vip.as_deref(), ports, mode: s.mode.as_deref() };
        let svc = service_entry(&entry, &net, spec, |ip| listed.contains(&(net.name.as_str(), ip)) || rules.ip_taken(&net.name, ip))?;
        rules.check_service(&svc).map_err(|c| invalid(&entry, c.field, c.message))?;
        rules.add_service(&svc);
        services.push(svc);
    }
    let mut endpoints = Endpoints::default();
    for (i, e) in raw.endpoints.into_iter().enumerate() {
        let entry = label("endpoints", i, &e.name);
        let net = rules.network(&e.network).ok_or_else(|| invalid(&entry, "network", format!("unknown network {:?}", e.network)))?.clone();
        // Endpoints of one node naming one namespace are one container: eth0, eth1, ... in file
        // order, unless `interface:` names it.
        let interface = match (&e.interface, &e.netns) {
            (Some(i), _) => Some(i.clone()),
            (None, Some(ns)) => Some(rules.next_interface(&e.node, ns)),
            (None, None) => None,
        };
        let spec = EndpointSpec { name: e.name, node: e.node, ip: &e.ip, mac: e.mac.as_deref(), netns: e.netns, interface, aliases: e.aliases, service: e.service };
        let ep = endpoint_entry(&entry, &net, spec)?;
        if !rules.has_node(&ep.node) {
            return Err(invalid(entry, "node", format!("unknown node {:?}", ep.node)));
        }
        rules.check_endpoint(&ep).map_err(|c| invalid(&entry, c.field, c.message))?;
        rules.add_endpoint(&ep);
        endpoints.push(ep);
    }
    Ok(Cluster { vxlan_port, nodes, networks, endpoints, services })
}

/// A file that does not name this node is rejected like any other invalid file.
pub fn check_node(c: &Cluster, node: &str) -> Result<(), ConfigError> {
    match c.node(node) {
        Some(_) => Ok(()),
        None => Err(invalid("nodes", "name", format!("this node ({node}) is not listed"))),
    }
}

/// Watches a cluster file: every edit that validates replaces the desired cluster; a bad edit
/// is rejected whole with a warning and the last good one stays.
pub async fn watch(node: String, file: PathBuf, tx: tokio::sync::watch::Sender<Option<Arc<Cluster>>>) {
    let mut last_seen: Option<Vec<u8>> = None;
    while !tx.is_closed() {
        let bytes = std::fs::read(&file).ok();
        if bytes.is_some() && bytes != last_seen {
            last_seen = bytes;
            match load(&file).and_then(|c| check_node(&c, &node).map(|()| c)) {
                Ok(mut c) => {
                    if let Some(old) = &*tx.borrow() {
                        c.endpoints.keep_generations(&old.endpoints);
                    }
                    let _ = tx.send(Some(Arc::new(c)));
                }
                Err(e) => warn!(file = %file.display(), "cluster file rejected, datapath keeps the last good state: {e}"),
            }
        }
        tokio::time::sleep(FILE_POLL).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::valid_netns;

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
        let eps: Vec<_> = c.endpoints.iter().collect();
        assert_eq!(eps[0].mac.to_string(), "02:42:0a:00:01:02", "MAC derived as Docker does");
        assert_eq!(eps[1].mac.to_string(), "02:42:0a:00:01:99");
        assert_eq!(eps[0].netns.as_deref(), Some("c1"));
    }

    #[test]
    fn unparsable_yaml() {
        let e = err("nodes: [ {name: a");
        assert!(e.starts_with("unparsable YAML"), "{e}");
        let e = err("nodes: []\nbogus: 1\n");
        assert!(e.contains("unknown field `bogus`"), "{e}");
    }

    #[test]
    fn a_node_names_its_datapath() {
        use crate::model::Datapath;
        assert_eq!(parse(GOOD).expect("valid").nodes[0].datapath, None, "no datapath: the agent's --datapath (default tc)");
        let c = parse(&with("underlay: eth0}", "underlay: eth0, datapath: xdp}")).expect("datapath: xdp is valid");
        assert_eq!(c.nodes[0].datapath, Some(Datapath::Xdp));
        let c = parse(&with("underlay: eth0}", "underlay: eth0, datapath: tc}")).expect("datapath: tc is valid");
        assert_eq!(c.nodes[0].datapath, Some(Datapath::Tc));
        let e = err(&with("underlay: eth0}", "underlay: eth0, datapath: dpdk}"));
        assert_eq!(e, "nodes[node1].datapath: \"dpdk\" is not a datapath (tc or xdp)");
    }

    #[test]
    fn a_node_names_how_its_tasks_answer_mesh_clients() {
        use crate::model::MeshReturn;
        assert_eq!(parse(GOOD).expect("valid").nodes[0].mesh_return, None, "no mesh_return: the agent's --mesh-return (default node)");
        let c = parse(&with("underlay: eth0}", "underlay: eth0, mesh_return: direct}")).expect("mesh_return: direct is valid");
        assert_eq!(c.nodes[0].mesh_return, Some(MeshReturn::Direct));
        let c = parse(&with("underlay: eth0}", "underlay: eth0, mesh_return: node}")).expect("mesh_return: node is valid");
        assert_eq!(c.nodes[0].mesh_return, Some(MeshReturn::Node));
        let e = err(&with("underlay: eth0}", "underlay: eth0, mesh_return: dsr}"));
        assert_eq!(e, "nodes[node1].mesh_return: \"dsr\" is not a mesh return (node or direct)");
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
        assert_eq!(e, "networks[test-net].vni: VNI 4097 is in use by network nginx-net");
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
        assert_eq!(e, "endpoints[web2].ip: IP 10.0.1.2 in network nginx-net is in use by endpoint web1");
    }

    #[test]
    fn duplicate_mac() {
        let e = err(&with("mac: '02:42:0a:00:01:99'", "mac: '02:42:0a:00:01:02'"));
        assert_eq!(e, "endpoints[web2].mac: MAC 02:42:0a:00:01:02 in network nginx-net is in use by endpoint web1");
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
        assert_eq!(err(&with("subnet: 10.0.2.0/24", "subnet: 10.0.1.0/25")), "networks[test-net].subnet: subnet 10.0.1.0/25 overlaps 10.0.1.0/24 of network nginx-net");
        assert_eq!(err(&with("mtu: 1450", "mtu: 20")), "networks[nginx-net].mtu: 20 is outside 68-65485");
        assert_eq!(err(&with("vtep: 192.168.50.2", "vtep: 192.168.50.1")), "nodes[node2].vtep: 192.168.50.1 is already the VTEP of node node1");
        assert_eq!(err(&with("vtep: 192.168.50.2", "vtep: banana")), "nodes[node2].vtep: \"banana\" is not an IPv4 address");
        assert_eq!(err(&format!("vxlan_port: 70000\n{GOOD}")), "cluster.vxlan_port: 70000 is not a UDP port (1-65535)");
        assert_eq!(err(&with("name: node2", "name: node1")), "nodes[node1].name: duplicate node name \"node1\"");
        assert_eq!(err(&with("name: test-net", "name: nginx-net")), "networks[nginx-net].name: a network named \"nginx-net\" already exists");
    }

    const SERVICES: &str = "
nodes:
  - {name: node1, vtep: 192.168.50.1}
  - {name: node2, vtep: 192.168.50.2}
networks:
  - {name: front, vni: 10, subnet: 10.0.1.0/24}
  - {name: back, vni: 11, subnet: 10.0.2.0/24}
services:
  - {name: api, network: front, mode: dnsrr, ports: [{port: 80, target: 8080}, {port: 53, protocol: udp}]}
endpoints:
  - {name: api1, network: front, node: node1, ip: 10.0.1.2, service: api}
  - {name: api2, network: front, node: node2, ip: 10.0.1.3, service: api}
  - {name: db1, network: back, node: node2, ip: 10.0.2.3}
";

    #[test]
    fn services_and_their_tasks() {
        let c = parse(SERVICES).expect("valid");
        let api = c.service("api").expect("api");
        assert_eq!((api.mode, api.vip, api.network.as_str()), (crate::model::ServiceMode::Dnsrr, None, "front"));
        assert_eq!(api.ports[0], crate::model::ServicePort { port: 80, target: 8080, protocol: crate::model::Protocol::Tcp, publish: None });
        assert_eq!(api.ports[1].target, 53, "target defaults to the port");
        assert_eq!(c.tasks("api").map(|e| e.name.as_str()).collect::<Vec<_>>(), ["api1", "api2"]);
        let bad = |from: &str, to: &str| {
            assert!(SERVICES.contains(from), "test bug: {from:?}");
            err(&SERVICES.replace(from, to))
        };
        assert_eq!(bad("ip: 10.0.2.3}", "ip: 10.0.2.3, service: nope}"), "endpoints[db1].service: unknown service \"nope\"");
        assert_eq!(bad("ip: 10.0.2.3}", "ip: 10.0.2.3, service: api}"), "endpoints[db1].service: service api is on network front, not back");
        assert_eq!(bad("{name: api2,", "{name: api,"), "endpoints[api].name: \"api\" is the name of a service on network front");
        parse(&SERVICES.replace("{name: db1,", "{name: api,")).expect("a service's name is free on other networks");
        assert_eq!(bad("network: front, mode: dnsrr", "network: nowhere, mode: dnsrr"), "services[api].network: unknown network \"nowhere\"");
        assert!(bad("mode: dnsrr, ports: [{port: 80,", "mode: dnsrr, ports: [{port: 80, publish: 80,").starts_with("services[api].ports.publish: 80/tcp: a dnsrr service cannot publish"));
        assert!(bad("{port: 53, protocol: udp}", "{port: 53, protocol: sctp}").starts_with("services[api].ports.protocol: \"sctp\" is not a protocol"));
        let vip = parse(&SERVICES.replace("mode: dnsrr, ", "")).expect("a VIP service");
        assert_eq!(vip.service("api").and_then(|s| s.vip), Some("10.0.1.254".parse().expect("ip")), "allocated from the top of the subnet");
        assert_eq!(bad("mode: dnsrr, ", "vip: 10.0.1.2, "), "endpoints[api1].ip: IP 10.0.1.2 in network front is the VIP of service api");
        assert!(bad("  - {name: api, network: front", "  - {name: api, network: back, mode: dnsrr}\n  - {name: api, network: front").starts_with("services[api].name: a service named \"api\" already exists"));
    }

    const MULTI: &str = "
nodes:
  - {name: node1, vtep: 192.168.50.1}
  - {name: node2, vtep: 192.168.50.2}
networks:
  - {name: front, vni: 10, subnet: 10.0.1.0/24}
  - {name: back, vni: 11, subnet: 10.0.2.0/24, gateway: 10.0.2.254, internal: true}
  - {name: db, vni: 12, subnet: 10.0.3.0/24}
endpoints:
  - {name: web1, network: front, node: node1, ip: 10.0.1.2, netns: c1}
  - {name: web1, network: back, node: node1, ip: 10.0.2.2, netns: c1, aliases: [web]}
  - {name: web1, network: db, node: node1, ip: 10.0.3.2, netns: c1, interface: data0}
  - {name: web2, network: back, node: node2, ip: 10.0.2.3, netns: c1}
";

    #[test]
    fn one_container_on_several_networks_gets_one_interface_each() {
        let c = parse(MULTI).expect("valid");
        let ifs: Vec<(&str, Option<&str>)> = c.endpoints.iter().map(|e| (e.network.as_str(), e.interface.as_deref())).collect();
        assert_eq!(ifs, [("front", Some("eth0")), ("back", Some("eth1")), ("db", Some("data0")), ("back", Some("eth0"))], "file order per node and namespace");
        assert_eq!(c.endpoints.iter().nth(1).expect("a second endpoint").aliases, ["web"]);
        let back = c.network("back").expect("back");
        assert!(back.internal);
        assert_eq!(back.gateway.to_string(), "10.0.2.254");
        assert_eq!(c.network("front").expect("front").gateway.to_string(), "10.0.1.1", "first host address by default");
    }

    #[test]
    fn multi_network_conflicts_are_named() {
        let with = |old: &str, new: &str| {
            assert!(MULTI.contains(old), "test bug: {old:?}");
            err(&MULTI.replace(old, new))
        };
        assert_eq!(
            with("netns: c1, interface: data0}", "netns: c1, interface: eth1}"),
            "endpoints[web1].interface: interface eth1 of namespace c1 on node node1 is already endpoint web1's (network back)"
        );
        assert_eq!(
            with("{name: web1, network: db, node: node1, ip: 10.0.3.2, netns: c1", "{name: web1, network: front, node: node1, ip: 10.0.1.9, netns: c9"),
            "endpoints[web1].name: an endpoint named \"web1\" already exists in network front"
        );
        assert_eq!(
            with("{name: web2, network: back, node: node2, ip: 10.0.2.3, netns: c1}", "{name: web3, network: back, node: node1, ip: 10.0.2.3, netns: c1}"),
            "endpoints[web3].netns: namespace c1 on node node1 is already attached to network back (endpoint web1)"
        );
        assert_eq!(with("gateway: 10.0.2.254", "gateway: 10.0.9.1"), "networks[back].gateway: 10.0.9.1 is not a host address of 10.0.2.0/24");
        assert_eq!(with("ip: 10.0.2.3,", "ip: 10.0.2.254,"), "endpoints[web2].ip: IP 10.0.2.254 is the gateway of network back");
        assert_eq!(with("network: db, node: node1", "network: nope, node: node1"), "endpoints[web1].network: unknown network \"nope\"");
        assert_eq!(with("interface: data0", "interface: 'a/b'"), "endpoints[web1].interface: \"a/b\" is not an interface name for a container");
    }
}
