//! The agent's copy of the store: every key under the overlay prefix that matters to the
//! datapath, parsed once when it arrives, and turned into the same [`Cluster`] the file backend
//! produces. Pure: no I/O, so it is tested without etcd.
//!
//! Unlike a cluster file, the store is never rejected whole: a malformed or conflicting entry is
//! skipped with a warning naming its key, and everything else is used. Entries are taken in the
//! order they were created, so when two conflict (same VNI, same IP) the older one wins.
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use overlay_common::wire::VXLAN_PORT;

use super::records::{
    ALIVE, AliveRecord, ENDPOINTS, EndpointRecord, Malformed, NETWORKS, NODES, NetworkRecord, NodeRecord,
};
use crate::config::{Cluster, Network, Node};

struct Entry<T> {
    create_rev: i64,
    value: Result<T, Malformed>,
}

/// Keys of one kind, by the name at the end of the key.
type Table<T> = BTreeMap<String, Entry<T>>;

#[derive(Default)]
pub struct Mirror {
    networks: Table<Network>,
    nodes: Table<Node>,
    alive: BTreeSet<String>,
    endpoints: Table<EndpointRecord>,
    /// The store revision this copy reflects.
    pub revision: i64,
    /// Conflict warnings already given, so a rebuild does not repeat them.
    warned: HashSet<String>,
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
        self.networks.clear();
        self.nodes.clear();
        self.alive.clear();
        self.endpoints.clear();
    }

    /// Records a put. Returns the problem if the value is malformed (it is kept as such, so a
    /// later valid value replaces it and a delete removes it).
    pub fn put(&mut self, key: &str, value: &[u8], create_rev: i64) -> Option<Malformed> {
        if let Some(name) = key.strip_prefix(NETWORKS) {
            put(&mut self.networks, name, create_rev, NetworkRecord::parse(key, value).map(|(_, n)| n))
        } else if let Some(name) = key.strip_prefix(NODES) {
            put(&mut self.nodes, name, create_rev, NodeRecord::parse(key, value))
        } else if let Some(name) = key.strip_prefix(ALIVE) {
            // The key's existence is the liveness; a bad value is worth a warning only.
            self.alive.insert(name.to_string());
            AliveRecord::parse(key, value).err()
        } else if let Some(name) = key.strip_prefix(ENDPOINTS) {
            put(&mut self.endpoints, name, create_rev, EndpointRecord::parse(key, value))
        } else {
            None
        }
    }

    pub fn delete(&mut self, key: &str) {
        if let Some(name) = key.strip_prefix(NETWORKS) {
            self.networks.remove(name);
        } else if let Some(name) = key.strip_prefix(NODES) {
            self.nodes.remove(name);
        } else if let Some(name) = key.strip_prefix(ALIVE) {
            self.alive.remove(name);
        } else if let Some(name) = key.strip_prefix(ENDPOINTS) {
            self.endpoints.remove(name);
        }
    }

    /// Whether a key is one the cluster is built from (others, like IPAM's, are not).
    pub fn relevant(key: &str) -> bool {
        [NETWORKS, NODES, ALIVE, ENDPOINTS].iter().any(|p| key.starts_with(p))
    }

    /// Names of live nodes.
    pub fn alive(&self) -> impl Iterator<Item = &str> {
        self.alive.iter().map(String::as_str)
    }

    pub fn node(&self, name: &str) -> Option<&Node> {
        self.nodes.get(name).and_then(|e| e.value.as_ref().ok())
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

        let mut networks: Vec<Network> = Vec::new();
        let (mut vnis, mut names) = (HashMap::new(), HashMap::new());
        for (name, net) in by_age(&self.networks) {
            let key = format!("{NETWORKS}{name}");
            if let Some(other) = vnis.get(&net.vni) {
                warn(format!("{key}: skipped: VNI {} is already network {other}'s", net.vni), &mut self.warned);
                continue;
            }
            if let Some(o) = networks.iter().find(|o| o.subnet.contains(&net.subnet.network()) || net.subnet.contains(&o.subnet.network())) {
                warn(format!("{key}: skipped: {} overlaps {} of network {}", net.subnet, o.subnet, o.name), &mut self.warned);
                continue;
            }
            vnis.insert(net.vni, net.name.clone());
            names.insert(net.name.clone(), networks.len());
            networks.push(net.clone());
        }

        let mut nodes: Vec<Node> = vec![me.clone()];
        let mut vteps: HashMap<_, String> = HashMap::from([(me.vtep, me.name.clone())]);
        for (name, node) in by_age(&self.nodes) {
            if name == me.name || !self.alive.contains(name) {
                continue;
            }
            if let Some(other) = vteps.get(&node.vtep) {
                warn(format!("{NODES}{name}: skipped: VTEP {} is already node {other}'s", node.vtep), &mut self.warned);
                continue;
            }
            vteps.insert(node.vtep, node.name.clone());
            nodes.push(node.clone());
        }
        let live: HashSet<&str> = nodes.iter().map(|n| n.name.as_str()).collect();

        let mut endpoints = Vec::new();
        let (mut ips, mut macs, mut spaces) = (HashMap::new(), HashMap::new(), HashMap::new());
        for (name, r) in by_age(&self.endpoints) {
            let key = format!("{ENDPOINTS}{name}");
            // Endpoints of nodes that are down are not reachable: left out until the node is back.
            if !live.contains(r.node.as_str()) {
                continue;
            }
            let Some(&ni) = names.get(&r.network) else {
                warn(format!("{key}: skipped: unknown network {:?}", r.network), &mut self.warned);
                continue;
            };
            let ep = match r.to_endpoint(&key, &networks[ni]) {
                Ok(ep) => ep,
                Err(e) => {
                    warn(e.to_string(), &mut self.warned);
                    continue;
                }
            };
            if let Some(o) = ips.get(&(ni, ep.ip)) {
                warn(format!("{key}: skipped: IP {} in network {} is already endpoint {o}'s", ep.ip, ep.network), &mut self.warned);
                continue;
            }
            if let Some(o) = macs.get(&(ni, ep.mac)) {
                warn(format!("{key}: skipped: MAC {} in network {} is already endpoint {o}'s", ep.mac, ep.network), &mut self.warned);
                continue;
            }
            if let Some(ns) = &ep.netns {
                if let Some(o) = spaces.get(&(ep.node.clone(), ns.clone())) {
                    warn(format!("{key}: skipped: namespace {ns} on node {} already holds endpoint {o}", ep.node), &mut self.warned);
                    continue;
                }
                spaces.insert((ep.node.clone(), ns.clone()), ep.name.clone());
            }
            ips.insert((ni, ep.ip), ep.name.clone());
            macs.insert((ni, ep.mac), ep.name.clone());
            endpoints.push(ep);
        }
        (Cluster { vxlan_port: VXLAN_PORT, nodes, networks, endpoints }, warnings)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::records::{alive_key, endpoint_key, network_key, node_key};

    fn me() -> Node {
        Node { name: "a".into(), vtep: "192.168.50.1".parse().expect("ip"), underlay: None }
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
        let mac = crate::config::Mac::from_ip(ip.parse().expect("ip"));
        let v = format!(r#"{{"name":"{name}","network":"{network}","node":"{node}","ip":"{ip}","mac":"{mac}","netns":"{name}"}}"#);
        assert_eq!(m.put(&endpoint_key(name), v.as_bytes(), rev), None);
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
        crate::desired::plan(&c, "a").expect("plannable");
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
        let (c, w) = m.cluster(&me());
        assert_eq!(c.networks.len(), 1, "only the oldest of conflicting networks");
        assert_eq!(c.nodes.len(), 2);
        assert_eq!(c.endpoints.len(), 1);
        let all = w.join("\n");
        for needle in [
            "/overlay/networks/n2: skipped: VNI 4096 is already network n1's",
            "/overlay/networks/n3: skipped: 10.0.0.0/24 overlaps 10.0.0.0/24 of network n1",
            "/overlay/nodes/dup: skipped: VTEP 192.168.50.2 is already node b's",
            "/overlay/endpoints/e2: skipped: IP 10.0.0.2 in network n1 is already endpoint e1's",
            "/overlay/endpoints/e3: skipped: unknown network \"nope\"",
            "/overlay/endpoints/e4: ip: 10.9.9.9 is outside subnet",
        ] {
            assert!(all.contains(needle), "missing warning {needle:?} in:\n{all}");
        }
        assert!(m.cluster(&me()).1.is_empty(), "warnings are given once");
        // A valid value replaces the malformed one.
        net(&mut m, 2, "bad", 4099, "10.0.5.0/24");
        assert_eq!(m.cluster(&me()).0.networks.len(), 2);
    }
}
