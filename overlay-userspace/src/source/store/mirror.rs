//! The agent's copy of the store: every key under the overlay prefix that matters to the
//! datapath, parsed once when it arrives, and turned into the same [`Cluster`] the file backend
//! produces. Pure: no I/O, so it is tested without etcd.
//!
//! Unlike a cluster file, the store is never rejected whole: a malformed or conflicting entry is
//! skipped with a warning naming its key, and everything else is used. Entries are taken in the
//! order they were created, so when two conflict (same VNI, same IP) the older one wins.
use std::collections::{BTreeMap, BTreeSet, HashSet};

use overlay_common::wire::VXLAN_PORT;

use super::records::{
    ALIVE, AliveRecord, ENDPOINTS, EndpointRecord, Malformed, NETWORKS, NODES, NetworkRecord, NodeRecord, SERVICES, ServiceRecord,
};
use crate::model::{Cluster, Endpoint, Mac, Network, Node, Rules, Service};

struct Entry<T> {
    create_rev: i64,
    value: Result<T, Malformed>,
}

/// An endpoint record with the fields that do not depend on its network already checked, so a
/// malformed value is reported when it arrives.
struct Parsed {
    rec: EndpointRecord,
}

fn parse_endpoint(key: &str, value: &[u8]) -> Result<Parsed, Malformed> {
    let rec = EndpointRecord::parse(key, value)?;
    let bad = |message: String| Malformed { key: key.to_string(), message };
    let _: std::net::Ipv4Addr = rec.ip.parse().map_err(|_| bad(format!("ip: {:?} is not an IPv4 address", rec.ip)))?;
    let _: Mac = rec.mac.parse().map_err(|_| bad(format!("mac: {:?} is not a MAC address", rec.mac)))?;
    if let Some(ns) = &rec.netns {
        if !crate::model::valid_netns(ns) {
            return Err(bad(format!("netns: {ns:?} is not a namespace name or absolute path")));
        }
    }
    Ok(Parsed { rec })
}

/// Keys of one kind, by what follows the kind's prefix (`<name>`, or `<network>/<name>` for
/// endpoints).
type Table<T> = BTreeMap<String, Entry<T>>;

#[derive(Default)]
pub struct Mirror {
    networks: Table<Network>,
    services: Table<ServiceRecord>,
    nodes: Table<Node>,
    alive: BTreeSet<String>,
    endpoints: Table<Parsed>,
    /// The store revision this copy reflects.
    pub revision: i64,
    /// Conflict warnings already given, so a rebuild does not repeat them.
    warned: HashSet<String>,
    /// What the last full build admitted, so that the common change (an endpoint added or
    /// removed) extends the published cluster in place instead of rebuilding it.
    index: Option<Index>,
}

/// What the last build admitted: the one rule book's index, plus the live nodes. (Which
/// endpoints are admitted is the rule book's: their names are unique per network, as their keys
/// are; no copy of them is kept here.)
#[derive(Default)]
struct Index {
    live: HashSet<String>,
    rules: Rules,
    /// Some endpoint lost a uniqueness conflict: removing another could admit it, which only a
    /// full build gets right.
    conflicted: bool,
}

enum Admit {
    Yes(Endpoint),
    /// Its node is down: left out until it is back.
    Out,
    /// Skipped with a warning; `conflict` when another endpoint holds what must be unique.
    No { warning: String, conflict: bool },
}

impl Index {
    fn admit(&self, key: &str, p: &Parsed) -> Admit {
        let r = &p.rec;
        if !self.live.contains(&r.node) {
            return Admit::Out;
        }
        let Some(net) = self.rules.network(&r.network) else {
            return Admit::No { warning: format!("{key}: skipped: unknown network {:?}", r.network), conflict: false };
        };
        let ep = match r.to_endpoint(key, net) {
            Ok(ep) => ep,
            Err(m) => return Admit::No { warning: m.to_string(), conflict: false },
        };
        match self.rules.check_endpoint(&ep) {
            Ok(()) => Admit::Yes(ep),
            Err(c) => Admit::No { warning: format!("{key}: skipped: {}: {}", c.field, c.message), conflict: true },
        }
    }

    /// Forgets the endpoint of record `p` if it was admitted (it is rebuilt from its record as
    /// admission built it: its network has not changed since, or the index would be new).
    fn remove(&mut self, key: &str, p: &Parsed) -> bool {
        let r = &p.rec;
        if !self.rules.has_endpoint(&r.network, &r.name) {
            return false;
        }
        let Some(ep) = self.rules.network(&r.network).and_then(|net| r.to_endpoint(key, net).ok()) else { return false };
        self.rules.remove_endpoint(&ep);
        true
    }
}

/// How one store event changes the published cluster.
#[derive(Debug, PartialEq)]
pub enum Step {
    /// Not at all (a key the cluster is not built from, or an endpoint of a node that is down).
    Nothing,
    /// One endpoint joins (it is the newest, so it goes last, as a full build would put it).
    Add(Endpoint),
    /// One endpoint leaves.
    Remove { network: String, name: String },
    /// Anything else: build it again from the mirror.
    Rebuild,
}

fn put<T>(t: &mut Table<T>, name: &str, create_rev: i64, value: Result<T, Malformed>) -> Option<Malformed> {
    let warn = value.as_ref().err().cloned();
    t.insert(name.to_string(), Entry { create_rev, value });
    warn
}

/// Entries that parsed, oldest first.
fn by_age<T>(t: &Table<T>) -> Vec<(&str, &T)> {
    let mut v: Vec<(i64, &str, &T)> =
        t.iter().filter_map(|(k, e)| e.value.as_ref().ok().map(|v| (e.create_rev, k.as_str(), v))).collect();
    v.sort_by_key(|(rev, name, _)| (*rev, *name));
    v.into_iter().map(|(_, k, v)| (k, v)).collect()
}

impl Mirror {
    pub fn new() -> Self {
        Self::default()
    }

    /// Forgets everything (before a full resync).
    pub fn clear(&mut self) {
        self.index = None;
        self.networks.clear();
        self.services.clear();
        self.nodes.clear();
        self.alive.clear();
        self.endpoints.clear();
    }

    /// Records a put. Returns the problem if the value is malformed (it is kept as such, so a
    /// later valid value replaces it and a delete removes it).
    pub fn put(&mut self, key: &str, value: &[u8], create_rev: i64) -> Option<Malformed> {
        if let Some(name) = key.strip_prefix(NETWORKS) {
            put(&mut self.networks, name, create_rev, NetworkRecord::parse(key, value).map(|(_, n)| n))
        } else if let Some(name) = key.strip_prefix(SERVICES) {
            put(&mut self.services, name, create_rev, ServiceRecord::parse(key, value))
        } else if let Some(name) = key.strip_prefix(NODES) {
            put(&mut self.nodes, name, create_rev, NodeRecord::parse(key, value))
        } else if let Some(name) = key.strip_prefix(ALIVE) {
            // The key's existence is the liveness; a bad value is worth a warning only.
            self.alive.insert(name.to_string());
            AliveRecord::parse(key, value).err()
        } else if let Some(name) = key.strip_prefix(ENDPOINTS) {
            put(&mut self.endpoints, name, create_rev, parse_endpoint(key, value))
        } else {
            None
        }
    }

    pub fn delete(&mut self, key: &str) {
        if let Some(name) = key.strip_prefix(NETWORKS) {
            self.networks.remove(name);
        } else if let Some(name) = key.strip_prefix(SERVICES) {
            self.services.remove(name);
        } else if let Some(name) = key.strip_prefix(NODES) {
            self.nodes.remove(name);
        } else if let Some(name) = key.strip_prefix(ALIVE) {
            self.alive.remove(name);
        } else if let Some(name) = key.strip_prefix(ENDPOINTS) {
            self.endpoints.remove(name);
        }
    }

    /// Records a put (`value` given) or a delete, and says how the published cluster changes.
    /// Also returns the problem of a malformed value.
    pub fn event(&mut self, key: &str, value: Option<&[u8]>, create_rev: i64) -> (Step, Option<Malformed>) {
        if !Self::relevant(key) {
            return (Step::Nothing, None);
        }
        let fast = self.index.as_ref().is_some_and(|i| !i.conflicted);
        let Some(name) = key.strip_prefix(ENDPOINTS).filter(|_| fast) else {
            let bad = match value {
                Some(v) => self.put(key, v, create_rev),
                None => {
                    self.delete(key);
                    None
                }
            };
            return (Step::Rebuild, bad);
        };
        let index = self.index.as_mut().expect("fast path has an index");
        match value {
            Some(v) => {
                let existed = self.endpoints.contains_key(name);
                let parsed = parse_endpoint(key, v);
                let bad = parsed.as_ref().err().cloned();
                let step = match &parsed {
                    _ if existed => Step::Rebuild,
                    Err(_) => Step::Nothing,
                    Ok(p) => match index.admit(key, p) {
                        Admit::Yes(ep) => {
                            index.rules.add_endpoint(&ep);
                            Step::Add(ep)
                        }
                        Admit::Out => Step::Nothing,
                        Admit::No { .. } => Step::Rebuild,
                    },
                };
                self.endpoints.insert(name.to_string(), Entry { create_rev, value: parsed });
                (step, bad)
            }
            None => {
                let removed = self.endpoints.remove(name);
                if removed.and_then(|e| e.value.ok()).is_some_and(|p| index.remove(key, &p)) {
                    let (network, ep) = name.split_once('/').unwrap_or(("", name));
                    (Step::Remove { network: network.to_string(), name: ep.to_string() }, None)
                } else {
                    (Step::Nothing, None)
                }
            }
        }
    }

    /// The kinds of keys the cluster is built from (others, like IPAM's, are not).
    pub const PREFIXES: [&str; 5] = [NETWORKS, SERVICES, NODES, ALIVE, ENDPOINTS];

    /// Whether a key is one the cluster is built from.
    pub fn relevant(key: &str) -> bool {
        Self::PREFIXES.iter().any(|p| key.starts_with(p))
    }

    /// The cluster as node `me` sees it: every network, the live nodes (always including `me`,
    /// whatever the store says about it right now), and the endpoints of live nodes. Returns the
    /// conflicts not warned about before.
    pub fn cluster(&mut self, me: &Node) -> (Cluster, Vec<String>) {
        let mut warnings = Vec::new();
        let mut warn = |w: String, seen: &mut HashSet<String>| {
            if seen.insert(w.clone()) {
                warnings.push(w);
            }
        };

        let mut rules = Rules::new();
        let mut networks: Vec<Network> = Vec::new();
        for (name, net) in by_age(&self.networks) {
            match rules.check_network(net) {
                Ok(()) => {
                    rules.add_network(net);
                    networks.push(net.clone());
                }
                Err(c) => warn(format!("{NETWORKS}{name}: skipped: {}: {}", c.field, c.message), &mut self.warned),
            }
        }

        // Services after networks (a service names its network) and before endpoints (a task
        // names its service).
        let mut services: Vec<Service> = Vec::new();
        for (name, rec) in by_age(&self.services) {
            let key = format!("{SERVICES}{name}");
            let Some(net) = rules.network(&rec.network).cloned() else {
                warn(format!("{key}: skipped: unknown network {:?}", rec.network), &mut self.warned);
                continue;
            };
            let svc = match rec.to_service(&key, &net) {
                Ok(s) => s,
                Err(m) => {
                    warn(format!("{}: skipped: {}", m.key, m.message), &mut self.warned);
                    continue;
                }
            };
            match rules.check_service(&svc) {
                Ok(()) => {
                    rules.add_service(&svc);
                    services.push(svc);
                }
                Err(c) => warn(format!("{key}: skipped: {}: {}", c.field, c.message), &mut self.warned),
            }
        }

        let mut nodes: Vec<Node> = vec![me.clone()];
        rules.add_node(me);
        for (name, node) in by_age(&self.nodes) {
            if name == me.name || !self.alive.contains(name) {
                continue;
            }
            match rules.check_node(node) {
                Ok(()) => {
                    rules.add_node(node);
                    nodes.push(node.clone());
                }
                Err(c) => warn(format!("{NODES}{name}: skipped: {}: {}", c.field, c.message), &mut self.warned),
            }
        }
        let mut index = Index { live: nodes.iter().map(|n| n.name.clone()).collect(), rules, ..Default::default() };
        let mut endpoints = crate::model::Endpoints::default();
        let mut conflicts = Vec::new();
        for (suffix, p) in by_age(&self.endpoints) {
            match index.admit(&format!("{ENDPOINTS}{suffix}"), p) {
                Admit::Yes(ep) => {
                    index.rules.add_endpoint(&ep);
                    endpoints.push(ep);
                }
                Admit::Out => {}
                Admit::No { warning, conflict } => {
                    conflicts.push(warning);
                    index.conflicted |= conflict;
                }
            }
        }
        self.index = Some(index);
        for w in conflicts {
            warn(w, &mut self.warned);
        }
        (Cluster { vxlan_port: VXLAN_PORT, nodes, networks, endpoints, services }, warnings)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::store::records::{alive_key, endpoint_key, network_key, node_key};

    fn me() -> Node {
        Node { name: "a".into(), vtep: "192.168.50.1".parse().expect("ip"), underlay: None, datapath: None, mesh_return: None }
    }

    fn net(m: &mut Mirror, rev: i64, name: &str, vni: u32, subnet: &str) {
        let v = format!(r#"{{"name":"{name}","vni":{vni},"subnet":"{subnet}","gateway":"{}"}}"#, subnet.replace(".0/24", ".1"));
        assert_eq!(m.put(&network_key(name), v.as_bytes(), rev), None);
    }

    fn node(m: &mut Mirror, rev: i64, name: &str, vtep: &str, alive: bool) {
        let v = format!(r#"{{"name":"{name}","vtep":"{vtep}"}}"#);
        assert_eq!(m.put(&node_key(name), v.as_bytes(), rev), None);
        if alive {
            assert_eq!(m.put(&alive_key(name), br#"{"since":1,"ttl":10}"#, rev), None);
        }
    }

    fn ep(m: &mut Mirror, rev: i64, name: &str, network: &str, node: &str, ip: &str) {
        let mac = crate::model::Mac::from_ip(ip.parse().expect("ip"));
        let v = format!(r#"{{"name":"{name}","network":"{network}","node":"{node}","ip":"{ip}","mac":"{mac}","netns":"{name}"}}"#);
        assert_eq!(m.put(&endpoint_key(network, name), v.as_bytes(), rev), None);
    }

    #[test]
    fn builds_the_cluster_of_live_nodes() {
        let mut m = Mirror::new();
        net(&mut m, 1, "n1", 4096, "10.0.0.0/24");
        node(&mut m, 2, "b", "192.168.50.2", true);
        node(&mut m, 3, "c", "192.168.50.3", false);
        ep(&mut m, 4, "e1", "n1", "b", "10.0.0.2");
        ep(&mut m, 5, "e2", "n1", "c", "10.0.0.3");
        ep(&mut m, 6, "e3", "n1", "a", "10.0.0.4");
        let (c, w) = m.cluster(&me());
        assert!(w.is_empty(), "{w:?}");
        let names: Vec<&str> = c.nodes.iter().map(|n| n.name.as_str()).collect();
        assert_eq!(names, ["a", "b"], "self always, c is down");
        let eps: Vec<&str> = c.endpoints.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(eps, ["e1", "e3"], "the down node's endpoint is left out");
        // The node comes back: its endpoint returns.
        m.put(&alive_key("c"), br#"{"since":2,"ttl":10}"#, 7);
        assert_eq!(m.cluster(&me()).0.endpoints.len(), 3);
        m.delete(&alive_key("c"));
        assert_eq!(m.cluster(&me()).0.endpoints.len(), 2);
        // The result passes the same validation as a cluster file.
        crate::control::desired::plan(&c, "a").expect("plannable");
    }

    #[test]
    fn malformed_and_conflicting_entries_are_skipped_with_their_key() {
        let mut m = Mirror::new();
        net(&mut m, 1, "n1", 4096, "10.0.0.0/24");
        let w = m.put(&network_key("bad"), b"garbage", 2).expect("warned");
        assert!(w.to_string().starts_with("/overlay/networks/bad: not a valid record"), "{w}");
        net(&mut m, 3, "n2", 4096, "10.0.1.0/24");
        net(&mut m, 4, "n3", 4097, "10.0.0.0/24");
        node(&mut m, 5, "b", "192.168.50.2", true);
        node(&mut m, 6, "dup", "192.168.50.2", true);
        ep(&mut m, 7, "e1", "n1", "b", "10.0.0.2");
        ep(&mut m, 8, "e2", "n1", "b", "10.0.0.2");
        ep(&mut m, 9, "e3", "nope", "b", "10.0.0.3");
        ep(&mut m, 10, "e4", "n1", "b", "10.9.9.9");
        // The same namespace on one network twice; an interface name taken in a namespace.
        let raw = |name: &str, net: &str, ip: &str, ns: &str, ifname: &str| {
            let mac = crate::model::Mac::from_ip(ip.parse().expect("ip"));
            format!(r#"{{"name":"{name}","network":"{net}","node":"b","ip":"{ip}","mac":"{mac}","netns":"{ns}","interface":"{ifname}"}}"#)
        };
        assert_eq!(m.put(&endpoint_key("n1", "e5"), raw("e5", "n1", "10.0.0.5", "e1", "eth1").as_bytes(), 11), None);
        net(&mut m, 12, "n4", 4100, "10.0.4.0/24");
        assert_eq!(m.put(&endpoint_key("n4", "e6"), raw("e6", "n4", "10.0.4.2", "s", "eth0").as_bytes(), 13), None);
        assert_eq!(m.put(&endpoint_key("n1", "e7"), raw("e7", "n1", "10.0.0.7", "s", "eth0").as_bytes(), 14), None);
        let (c, w) = m.cluster(&me());
        assert_eq!(c.networks.len(), 2, "only the oldest of conflicting networks, and n4");
        assert_eq!(c.nodes.len(), 2);
        let eps: Vec<&str> = c.endpoints.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(eps, ["e1", "e6"]);
        let all = w.join("\n");
        for needle in [
            "/overlay/networks/n2: skipped: vni: VNI 4096 is in use by network n1",
            "/overlay/networks/n3: skipped: subnet: subnet 10.0.0.0/24 overlaps 10.0.0.0/24 of network n1",
            "/overlay/nodes/dup: skipped: vtep: 192.168.50.2 is already the VTEP of node b",
            "/overlay/endpoints/n1/e2: skipped: ip: IP 10.0.0.2 in network n1 is in use by endpoint e1",
            "/overlay/endpoints/nope/e3: skipped: unknown network \"nope\"",
            "/overlay/endpoints/n1/e4: ip: 10.9.9.9 is outside subnet 10.0.0.0/24 of network n1",
            "/overlay/endpoints/n1/e5: skipped: netns: namespace e1 on node b is already attached to network n1 (endpoint e1)",
            "/overlay/endpoints/n1/e7: skipped: interface: interface eth0 of namespace s on node b is already endpoint e6's (network n4)",
        ] {
            assert!(all.contains(needle), "missing warning {needle:?} in:\n{all}");
        }
        assert!(m.cluster(&me()).1.is_empty(), "warnings are given once");
        // A valid value replaces the malformed one.
        net(&mut m, 2, "bad", 4099, "10.0.5.0/24");
        assert_eq!(m.cluster(&me()).0.networks.len(), 3);
    }
}

#[cfg(test)]
mod fast_path {
    use super::*;
    use crate::source::store::{
        follow::apply_steps,
        records::{alive_key, endpoint_key, network_key, node_key},
    };

    fn ep(name: &str, node: &str, ip: &str, netns: &str) -> Vec<u8> {
        let mac = Mac::from_ip(ip.parse().expect("ip"));
        format!(r#"{{"name":"{name}","network":"n","node":"{node}","ip":"{ip}","mac":"{mac}","netns":"{netns}"}}"#).into_bytes()
    }

    /// A published cluster changed step by step always equals a full build of the same mirror.
    #[test]
    fn in_place_steps_equal_a_full_build() {
        let me = Node { name: "a".into(), vtep: "192.168.50.1".parse().expect("ip"), underlay: None, datapath: None, mesh_return: None };
        let mut m = Mirror::new();
        m.put(&network_key("n"), br#"{"name":"n","vni":7,"subnet":"10.0.0.0/24","gateway":"10.0.0.1"}"#, 1);
        m.put(&node_key("b"), br#"{"name":"b","vtep":"192.168.50.2"}"#, 2);
        m.put(&alive_key("b"), br#"{"since":1,"ttl":5}"#, 3);
        m.put(&node_key("c"), br#"{"name":"c","vtep":"192.168.50.3"}"#, 4);
        let (mut published, _) = m.cluster(&me);
        let mut rev = 10;
        let mut check = |m: &mut Mirror, key: &str, value: Option<Vec<u8>>, want: &str| {
            rev += 1;
            let (step, _) = m.event(key, value.as_deref(), rev);
            let kind = match &step {
                Step::Nothing => "nothing",
                Step::Add(_) => "add",
                Step::Remove { .. } => "remove",
                Step::Rebuild => "rebuild",
            };
            assert_eq!(kind, want, "step for {key}");
            if step == Step::Rebuild {
                published = m.cluster(&me).0;
            } else {
                apply_steps(&mut published, vec![step]);
            }
            assert_eq!(published, m.cluster(&me).0, "after {key}");
        };
        check(&mut m, &endpoint_key("n", "e1"), Some(ep("e1", "b", "10.0.0.2", "x")), "add");
        check(&mut m, &endpoint_key("n", "e2"), Some(ep("e2", "a", "10.0.0.3", "y")), "add");
        check(&mut m, &endpoint_key("n", "e3"), Some(ep("e3", "c", "10.0.0.4", "z")), "nothing");
        check(&mut m, &endpoint_key("n", "bad"), Some(b"junk".to_vec()), "nothing");
        check(&mut m, &endpoint_key("n", "e1"), None, "remove");
        check(&mut m, &endpoint_key("n", "e3"), None, "nothing");
        check(&mut m, &endpoint_key("n", "e4"), Some(ep("e4", "b", "10.0.0.3", "w")), "rebuild");
        // e4 lost to e2: removing e2 must admit e4, which only a rebuild does.
        check(&mut m, &endpoint_key("n", "e2"), None, "rebuild");
        check(&mut m, &alive_key("c"), Some(br#"{"since":1,"ttl":5}"#.to_vec()), "rebuild");
        check(&mut m, &endpoint_key("n", "e5"), Some(ep("e5", "c", "10.0.0.9", "v")), "add");
        check(&mut m, &endpoint_key("n", "e5"), Some(ep("e5", "c", "10.0.0.10", "v")), "rebuild");
        check(&mut m, "/overlay/ipam/n/10.0.0.9", Some(b"e5".to_vec()), "nothing");
    }
}
