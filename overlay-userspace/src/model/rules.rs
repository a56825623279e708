//! The one rule book: what must stay unique across a cluster. [`Rules`] holds what was admitted
//! so far; `check_*` says why a new entry conflicts with it (naming the entry it conflicts
//! with), `add_*` admits it. The cluster file rejects the whole file on the first conflict, the
//! store mirror skips the entry with a warning naming its key, and the store checks a write
//! against it before its transaction.
use std::{
    collections::{HashMap, HashSet},
    net::Ipv4Addr,
};

use super::{Endpoint, Mac, Network, Node, Protocol, Service};

/// Why an entry cannot join: the field at fault and a message naming the other entry.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct Conflict {
    pub field: &'static str,
    pub message: String,
}

fn conflict(field: &'static str, message: String) -> Result<(), Conflict> {
    Err(Conflict { field, message })
}

/// Maps keyed by strings hash with foldhash (hashbrown's default: several times faster than
/// SipHash on short keys, still seeded per process); at 100,000 endpoints admission is most of
/// a full build.
type Map<K, V> = HashMap<K, V, foldhash::fast::RandomState>;
type Set<K> = HashSet<K, foldhash::fast::RandomState>;

/// Per network (or node, namespace): the inner maps are looked up by `&str`, without building
/// an owned key, and each network's name is held once, not once per endpoint.
type Nested<V> = Map<String, V>;

/// Inserts `v` under `outer`/`k`.
fn nest<K: std::hash::Hash + Eq, V>(m: &mut Nested<Map<K, V>>, outer: &str, k: K, v: V) {
    match m.get_mut(outer) {
        Some(inner) => {
            inner.insert(k, v);
        }
        None => {
            m.entry(outer.to_string()).or_default().insert(k, v);
        }
    }
}

/// Removes `outer`/`k`, and `outer` once empty.
fn unnest<K: std::hash::Hash + Eq + std::borrow::Borrow<Q>, Q: std::hash::Hash + Eq + ?Sized, V>(m: &mut Nested<Map<K, V>>, outer: &str, k: &Q) {
    if let Some(inner) = m.get_mut(outer) {
        inner.remove(k);
        if inner.is_empty() {
            m.remove(outer);
        }
    }
}

fn nested<'a, K: std::hash::Hash + Eq + std::borrow::Borrow<Q>, Q: std::hash::Hash + Eq + ?Sized, V>(m: &'a Nested<Map<K, V>>, outer: &str, k: &Q) -> Option<&'a V> {
    m.get(outer)?.get(k)
}

/// The admitted entries, indexed by everything that must stay unique.
#[derive(Clone, Debug, Default)]
pub struct Rules {
    nodes: Set<String>,
    vteps: Map<Ipv4Addr, String>,
    networks: Map<String, Network>,
    vnis: Map<u32, String>,
    /// network -> endpoint name -> ()
    names: Nested<Map<String, ()>>,
    /// network -> IP -> endpoint
    ips: Nested<Map<Ipv4Addr, String>>,
    /// network -> MAC -> endpoint
    macs: Nested<Map<Mac, String>>,
    /// (node, netns) -> network -> endpoint: a container joins a network once.
    attached: Nested<Map<String, String>>,
    /// (node, netns) -> interface -> (endpoint, network): interface names within a container.
    interfaces: Nested<Map<String, (String, String)>>,
    /// Service name -> its network (names are unique across the cluster, as in a swarm).
    services: Map<String, String>,
    /// (network, VIP) -> service.
    vips: Map<(String, Ipv4Addr), String>,
    /// (protocol, published port) -> service: the routing mesh answers each on every node.
    published: Map<(Protocol, u16), String>,
}

/// The key of a container: its node and namespace (a namespace name holds no NUL).
fn container(node: &str, netns: &str) -> String {
    format!("{node}\0{netns}")
}

impl Rules {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn check_node(&self, n: &Node) -> Result<(), Conflict> {
        if self.nodes.contains(&n.name) {
            return conflict("name", format!("duplicate node name {:?}", n.name));
        }
        if let Some(o) = self.vteps.get(&n.vtep) {
            return conflict("vtep", format!("{} is already the VTEP of node {o}", n.vtep));
        }
        Ok(())
    }

    pub fn add_node(&mut self, n: &Node) {
        self.nodes.insert(n.name.clone());
        self.vteps.insert(n.vtep, n.name.clone());
    }

    pub fn has_node(&self, name: &str) -> bool {
        self.nodes.contains(name)
    }

    pub fn check_network(&self, n: &Network) -> Result<(), Conflict> {
        if self.networks.contains_key(&n.name) {
            return conflict("name", format!("a network named {:?} already exists", n.name));
        }
        if let Some(o) = self.vnis.get(&n.vni) {
            return conflict("vni", format!("VNI {} is in use by network {o}", n.vni));
        }
        let mut others: Vec<&Network> = self.networks.values().collect();
        others.sort_by(|a, b| a.name.cmp(&b.name));
        if let Some(o) = others.iter().find(|o| o.subnet.contains(&n.subnet.network()) || n.subnet.contains(&o.subnet.network())) {
            return conflict("subnet", format!("subnet {} overlaps {} of network {}", n.subnet, o.subnet, o.name));
        }
        Ok(())
    }

    pub fn add_network(&mut self, n: &Network) {
        self.vnis.insert(n.vni, n.name.clone());
        self.networks.insert(n.name.clone(), n.clone());
    }

    pub fn network(&self, name: &str) -> Option<&Network> {
        self.networks.get(name)
    }

    /// Checks an endpoint against its network (which must be admitted) and the endpoints
    /// admitted so far.
    pub fn check_endpoint(&self, e: &Endpoint) -> Result<(), Conflict> {
        // The endpoint's own fields against its network (inside the subnet, not the gateway)
        // are `model::endpoint_entry`'s, which built it.
        if !self.networks.contains_key(&e.network) {
            return conflict("network", format!("unknown network {:?}", e.network));
        }
        if let Some(ns) = &e.netns {
            let c = container(&e.node, ns);
            if let Some(o) = nested(&self.attached, &c, e.network.as_str()) {
                return conflict("netns", format!("namespace {ns} on node {} is already attached to network {} (endpoint {o})", e.node, e.network));
            }
            if let Some(i) = &e.interface {
                if let Some((o, on)) = nested(&self.interfaces, &c, i.as_str()) {
                    return conflict("interface", format!("interface {i} of namespace {ns} on node {} is already endpoint {o}'s (network {on})", e.node));
                }
            }
        }
        if let Some(o) = nested(&self.ips, &e.network, &e.ip) {
            return conflict("ip", format!("IP {} in network {} is in use by endpoint {o}", e.ip, e.network));
        }
        if !self.vips.is_empty() {
            if let Some(o) = self.vips.get(&(e.network.clone(), e.ip)) {
                return conflict("ip", format!("IP {} in network {} is the VIP of service {o}", e.ip, e.network));
            }
        }
        if let Some(s) = &e.service {
            match self.services.get(s) {
                None => return conflict("service", format!("unknown service {s:?}")),
                Some(n) if *n != e.network => return conflict("service", format!("service {s} is on network {n}, not {}", e.network)),
                Some(_) => {}
            }
        }
        if self.services.get(&e.name) == Some(&e.network) {
            return conflict("name", format!("{:?} is the name of a service on network {}", e.name, e.network));
        }
        if let Some(o) = nested(&self.macs, &e.network, &e.mac) {
            return conflict("mac", format!("MAC {} in network {} is in use by endpoint {o}", e.mac, e.network));
        }
        if self.has_endpoint(&e.network, &e.name) {
            return conflict("name", format!("an endpoint named {:?} already exists in network {}", e.name, e.network));
        }
        Ok(())
    }

    pub fn add_endpoint(&mut self, e: &Endpoint) {
        nest(&mut self.names, &e.network, e.name.clone(), ());
        nest(&mut self.ips, &e.network, e.ip, e.name.clone());
        nest(&mut self.macs, &e.network, e.mac, e.name.clone());
        if let Some(ns) = &e.netns {
            let c = container(&e.node, ns);
            nest(&mut self.attached, &c, e.network.clone(), e.name.clone());
            if let Some(i) = &e.interface {
                nest(&mut self.interfaces, &c, i.clone(), (e.name.clone(), e.network.clone()));
            }
        }
    }

    /// Whether endpoint `name` of `network` is admitted.
    pub fn has_endpoint(&self, network: &str, name: &str) -> bool {
        nested(&self.names, network, name).is_some()
    }

    /// Forgets an admitted endpoint (it must be the one admitted under its keys).
    pub fn remove_endpoint(&mut self, e: &Endpoint) {
        unnest(&mut self.names, &e.network, e.name.as_str());
        unnest(&mut self.ips, &e.network, &e.ip);
        unnest(&mut self.macs, &e.network, &e.mac);
        if let Some(ns) = &e.netns {
            let c = container(&e.node, ns);
            unnest(&mut self.attached, &c, e.network.as_str());
            if let Some(i) = &e.interface {
                unnest(&mut self.interfaces, &c, i.as_str());
            }
        }
    }

    /// Checks a service against its network (which must be admitted), the services and the
    /// endpoints admitted so far.
    pub fn check_service(&self, s: &Service) -> Result<(), Conflict> {
        if !self.networks.contains_key(&s.network) {
            return conflict("network", format!("unknown network {:?}", s.network));
        }
        if let Some(n) = self.services.get(&s.name) {
            return conflict("name", format!("a service named {:?} already exists (on network {n})", s.name));
        }
        if self.has_endpoint(&s.network, &s.name) {
            return conflict("name", format!("{:?} is the name of an endpoint on network {}", s.name, s.network));
        }
        if let Some(vip) = s.vip {
            if let Some(o) = nested(&self.ips, &s.network, &vip) {
                return conflict("vip", format!("{vip} in network {} is the address of endpoint {o}", s.network));
            }
            if let Some(o) = self.vips.get(&(s.network.clone(), vip)) {
                return conflict("vip", format!("{vip} in network {} is the VIP of service {o}", s.network));
            }
        }
        for p in &s.ports {
            if let Some(x) = p.publish {
                if let Some(o) = self.published.get(&(p.protocol, x)) {
                    return conflict("ports.publish", format!("{x}/{} is already published by service {o}", p.protocol));
                }
            }
        }
        Ok(())
    }

    pub fn add_service(&mut self, s: &Service) {
        self.services.insert(s.name.clone(), s.network.clone());
        if let Some(vip) = s.vip {
            self.vips.insert((s.network.clone(), vip), s.name.clone());
        }
        for p in &s.ports {
            if let Some(x) = p.publish {
                self.published.insert((p.protocol, x), s.name.clone());
            }
        }
    }

    /// Whether `ip` of `network` is taken by an endpoint or a VIP.
    pub fn ip_taken(&self, network: &str, ip: Ipv4Addr) -> bool {
        nested(&self.ips, network, &ip).is_some() || self.vips.contains_key(&(network.to_string(), ip))
    }

    /// The first `ethN` not yet used in namespace `netns` of `node`.
    pub fn next_interface(&self, node: &str, netns: &str) -> String {
        (0..)
            .map(|i| format!("eth{i}"))
            .find(|n| nested(&self.interfaces, &container(node, netns), n.as_str()).is_none())
            .expect("some ethN is free")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{EndpointSpec, NetworkSpec, endpoint_entry, network_entry};

    fn net(name: &str, vni: i64, subnet: &str) -> Network {
        network_entry("n", NetworkSpec { name: name.into(), vni, subnet, mtu: None, gateway: None, internal: false }).expect("valid network")
    }

    fn ep(n: &Network, name: &str, ip: &str, ns: &str, interface: Option<&str>) -> Endpoint {
        let spec = EndpointSpec { name: name.into(), node: "node1".into(), ip, mac: None, netns: Some(ns.into()), interface: interface.map(str::to_string), aliases: vec![], service: None };
        endpoint_entry("e", n, spec).expect("valid endpoint")
    }

    #[test]
    fn services_keep_vips_and_published_ports_unique() {
        use crate::model::{PortSpec, ServiceSpec, service_entry};
        let front = net("front", 10, "10.0.1.0/24");
        let mut r = Rules::new();
        r.add_network(&front);
        let svc = |name: &str, vip: Option<&'static str>, publish: i64| {
            let ports = vec![PortSpec { port: 80, target: None, protocol: None, publish: Some(publish) }];
            service_entry("s", &front, ServiceSpec { name: name.into(), vip, ports, mode: None }, |_| false).expect("valid entry")
        };
        let e = endpoint_entry("e", &front, EndpointSpec { name: "web1".into(), node: "n".into(), ip: "10.0.1.2", mac: None, netns: None, interface: None, aliases: vec![], service: None }).expect("valid");
        r.add_endpoint(&e);
        assert_eq!(r.check_service(&svc("a", Some("10.0.1.2"), 80)).expect_err("conflict").message, "10.0.1.2 in network front is the address of endpoint web1");
        assert_eq!(r.check_service(&svc("web1", None, 80)).expect_err("conflict").message, "\"web1\" is the name of an endpoint on network front");
        let a = svc("a", Some("10.0.1.100"), 80);
        r.check_service(&a).expect("free VIP and port");
        r.add_service(&a);
        assert!(r.ip_taken("front", "10.0.1.100".parse().expect("ip")), "a VIP is taken");
        assert_eq!(r.check_service(&svc("b", Some("10.0.1.100"), 81)).expect_err("conflict").message, "10.0.1.100 in network front is the VIP of service a");
        assert_eq!(r.check_service(&svc("b", None, 80)).expect_err("conflict").message, "80/tcp is already published by service a");
        assert_eq!(r.check_service(&svc("a", None, 81)).expect_err("conflict").message, "a service named \"a\" already exists (on network front)");
        let on_vip = endpoint_entry("e", &front, EndpointSpec { name: "x".into(), node: "n".into(), ip: "10.0.1.100", mac: None, netns: None, interface: None, aliases: vec![], service: Some("a".into()) }).expect("valid");
        assert_eq!(r.check_endpoint(&on_vip).expect_err("conflict").message, "IP 10.0.1.100 in network front is the VIP of service a");
    }

    #[test]
    fn network_conflicts_name_the_other_network() {
        let mut r = Rules::new();
        r.add_network(&net("web", 10, "10.0.1.0/24"));
        assert_eq!(r.check_network(&net("web", 11, "10.0.2.0/24")).expect_err("a conflict").to_string(), "a network named \"web\" already exists");
        assert_eq!(r.check_network(&net("db", 10, "10.0.2.0/24")).expect_err("a conflict").to_string(), "VNI 10 is in use by network web");
        let e = r.check_network(&net("db", 11, "10.0.1.128/25")).expect_err("a conflict");
        assert_eq!((e.field, e.message.as_str()), ("subnet", "subnet 10.0.1.128/25 overlaps 10.0.1.0/24 of network web"));
        assert!(r.check_network(&net("db", 11, "10.0.2.0/24")).is_ok());
    }

    #[test]
    fn endpoint_names_are_per_network_and_a_container_joins_a_network_once() {
        let (web, db) = (net("web", 10, "10.0.1.0/24"), net("db", 11, "10.0.2.0/24"));
        let mut r = Rules::new();
        r.add_network(&web);
        r.add_network(&db);
        let a = ep(&web, "c1", "10.0.1.2", "ns1", Some("eth0"));
        r.check_endpoint(&a).expect("first");
        r.add_endpoint(&a);
        // The same container on the other network, same name: allowed.
        let b = ep(&db, "c1", "10.0.2.2", "ns1", Some("eth1"));
        r.check_endpoint(&b).expect("same name on another network");
        let e = r.check_endpoint(&ep(&web, "c1", "10.0.1.3", "ns2", Some("eth0"))).expect_err("a conflict");
        assert_eq!(e.to_string(), "an endpoint named \"c1\" already exists in network web");
        let e = r.check_endpoint(&ep(&web, "c2", "10.0.1.2", "ns2", None)).expect_err("a conflict");
        assert_eq!(e.to_string(), "IP 10.0.1.2 in network web is in use by endpoint c1");
        let e = r.check_endpoint(&ep(&web, "c2", "10.0.1.3", "ns1", Some("eth1"))).expect_err("a conflict");
        assert_eq!(e.to_string(), "namespace ns1 on node node1 is already attached to network web (endpoint c1)");
        let e = r.check_endpoint(&ep(&db, "c1", "10.0.2.2", "ns1", Some("eth0"))).expect_err("a conflict");
        assert_eq!((e.field, e.message.as_str()), ("interface", "interface eth0 of namespace ns1 on node node1 is already endpoint c1's (network web)"));
        assert_eq!(r.next_interface("node1", "ns1"), "eth1");
        r.add_endpoint(&b);
        assert_eq!(r.next_interface("node1", "ns1"), "eth2");
        r.remove_endpoint(&a);
        assert_eq!(r.next_interface("node1", "ns1"), "eth0", "a freed name is reused");
        r.check_endpoint(&ep(&web, "c1", "10.0.1.2", "ns1", Some("eth0"))).expect("free again after removal");
    }

    #[test]
    fn gateway_is_nobody_s_address() {
        let web = net("web", 10, "10.0.1.0/24");
        assert_eq!(web.gateway, Ipv4Addr::new(10, 0, 1, 1), "first host address by default");
        let spec = EndpointSpec { name: "x".into(), node: "n".into(), ip: "10.0.1.1", mac: None, netns: None, interface: None, aliases: vec![], service: None };
        let e = endpoint_entry("endpoints[x]", &web, spec).expect_err("a conflict");
        assert_eq!(e.to_string(), "endpoints[x].ip: IP 10.0.1.1 is the gateway of network web");
    }
}
