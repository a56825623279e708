//! Names, as Docker's embedded DNS gives them on user-defined networks: every endpoint's name
//! and aliases resolve, for containers on the same network, to its address there; `NAME.NETWORK`
//! too; a container on several networks sees the names of all of them (its first network wins a
//! clash). Pure: built from the desired cluster, asked by the resolver.
use std::{
    collections::HashMap,
    net::Ipv4Addr,
};

use hickory_proto::{
    op::{Message, MessageType, OpCode, ResponseCode},
    rr::{Name, RData, Record, RecordType, rdata},
};
use ipnet::Ipv4Net;

use crate::model::Cluster;

/// TTL of the answers for overlay names, seconds. Docker's 600 s keeps a dead container's
/// address in caches for ten minutes; ours follow the control plane within seconds.
pub const NAME_TTL: u32 = 5;

/// Who may resolve what, built from one cluster.
#[derive(Debug, Default)]
pub struct NameView {
    /// network -> lowercased name (endpoint names and aliases) -> addresses, in cluster order.
    names: HashMap<String, HashMap<String, Vec<Ipv4Addr>>>,
    /// (network, address) -> endpoint name, for PTR.
    by_addr: HashMap<(String, Ipv4Addr), String>,
    /// (network, address) -> the networks of the container holding it, in its order.
    seen_by: HashMap<(String, Ipv4Addr), Vec<String>>,
    /// Overlay subnets and their networks.
    subnets: Vec<(Ipv4Net, String)>,
    /// Gateway address -> its network.
    gateways: HashMap<Ipv4Addr, String>,
}

/// What the resolver does with a query.
#[derive(Debug, PartialEq)]
pub enum Answer {
    /// Answered from the overlay's names.
    Local(Message),
    /// Not an overlay name: the node's upstream resolvers answer it.
    Forward,
}

fn key(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

impl NameView {
    pub fn build(c: &Cluster) -> Self {
        let mut v = NameView::default();
        for n in &c.networks {
            v.subnets.push((n.subnet, n.name.clone()));
            v.gateways.insert(n.gateway, n.name.clone());
        }
        // A container is the endpoints of one node sharing a namespace; without a namespace, an
        // endpoint is a container of its own.
        let mut containers: HashMap<(&str, &str), Vec<String>> = HashMap::new();
        for e in &c.endpoints {
            let names = v.names.entry(e.network.clone()).or_default();
            for n in std::iter::once(&e.name).chain(&e.aliases) {
                names.entry(key(n)).or_default().push(e.ip);
            }
            v.by_addr.insert((e.network.clone(), e.ip), e.name.clone());
            if let Some(ns) = &e.netns {
                containers.entry((e.node.as_str(), ns.as_str())).or_default().push(e.network.clone());
            }
        }
        // Services: their names and `tasks.NAME`, after the endpoints' (as in the datapath's
        // table: one list, `desired::service_names`).
        for n in &c.networks {
            let eps: Vec<&crate::model::Endpoint> = c.endpoints.of(&n.name).iter().map(|(_, e)| e).collect();
            let services: Vec<crate::model::Service> = c.services.iter().filter(|s| s.network == n.name).cloned().collect();
            for (_, name, ip) in super::desired::service_names(&services, &eps) {
                v.names.entry(n.name.clone()).or_default().entry(key(&name)).or_default().push(ip);
            }
        }
        for e in &c.endpoints {
            let nets = match &e.netns {
                Some(ns) => containers[&(e.node.as_str(), ns.as_str())].clone(),
                None => vec![e.network.clone()],
            };
            v.seen_by.insert((e.network.clone(), e.ip), nets);
        }
        v
    }

    /// The networks whose names a query from `asker` sent to `gateway` sees: those of the
    /// asker's container, or (an address the cluster does not know) the gateway's network.
    pub fn networks_of(&self, asker: Ipv4Addr, gateway: Ipv4Addr) -> Vec<String> {
        let Some(net) = self.gateways.get(&gateway) else { return vec![] };
        match self.seen_by.get(&(net.clone(), asker)) {
            Some(nets) => nets.clone(),
            None => vec![net.clone()],
        }
    }

    /// The addresses of `name` (`NAME` or `NAME.NETWORK`) for a container on `nets`.
    pub fn lookup(&self, nets: &[String], name: &str) -> Option<&[Ipv4Addr]> {
        let name = key(name);
        for net in nets {
            if let Some(ips) = self.names.get(net).and_then(|m| m.get(&name)) {
                return Some(ips);
            }
        }
        for net in nets {
            let Some(short) = name.strip_suffix(&format!(".{}", key(net))) else { continue };
            if let Some(ips) = self.names.get(net).and_then(|m| m.get(short)) {
                return Some(ips);
            }
        }
        None
    }

    /// The endpoint name of `ip` on one of `nets`.
    pub fn ptr(&self, nets: &[String], ip: Ipv4Addr) -> Option<&str> {
        nets.iter().find_map(|n| self.by_addr.get(&(n.clone(), ip))).map(String::as_str)
    }

    /// Whether `ip` is inside an overlay subnet (its PTR is ours to answer, or NXDOMAIN).
    pub fn is_overlay(&self, ip: Ipv4Addr) -> bool {
        self.subnets.iter().any(|(s, _)| s.contains(&ip))
    }

    /// Answers `query` (from `asker`, sent to `gateway`) from the overlay's names, or says it
    /// is not ours. `shuffle` picks the order of several addresses (DNS round robin).
    pub fn answer(&self, query: &Message, asker: Ipv4Addr, gateway: Ipv4Addr, shuffle: u64) -> Answer {
        let [q] = query.queries.as_slice() else { return Answer::Forward };
        if query.metadata.message_type != MessageType::Query || query.metadata.op_code != OpCode::Query {
            return Answer::Forward;
        }
        let nets = self.networks_of(asker, gateway);
        let qname = q.name().to_ascii();
        let mut reply = Message::response(query.metadata.id, OpCode::Query);
        reply.metadata.recursion_desired = query.metadata.recursion_desired;
        reply.metadata.recursion_available = true;
        reply.metadata.authoritative = true;
        reply.add_query(q.clone());
        match q.query_type() {
            RecordType::A | RecordType::AAAA => {
                let Some(ips) = self.lookup(&nets, &qname) else { return Answer::Forward };
                if q.query_type() == RecordType::A {
                    let mut ips = ips.to_vec();
                    if ips.len() > 1 {
                        let k = (shuffle % ips.len() as u64) as usize;
                        ips.rotate_left(k);
                        if shuffle & (1 << 32) != 0 {
                            ips.reverse();
                        }
                    }
                    for ip in ips {
                        reply.add_answer(Record::from_rdata(q.name().clone(), NAME_TTL, RData::A(rdata::A(ip))));
                    }
                }
                // AAAA of a known name: NOERROR, no records (the overlay is IPv4).
                Answer::Local(reply)
            }
            RecordType::PTR => {
                let Some(ip) = arpa_v4(q.name()) else { return Answer::Forward };
                if !self.is_overlay(ip) {
                    return Answer::Forward;
                }
                match self.ptr(&nets, ip).and_then(|n| Name::from_ascii(format!("{n}.")).ok()) {
                    Some(target) => {
                        reply.add_answer(Record::from_rdata(q.name().clone(), NAME_TTL, RData::PTR(rdata::PTR(target))));
                    }
                    None => reply.metadata.response_code = ResponseCode::NXDomain,
                }
                Answer::Local(reply)
            }
            _ => Answer::Forward,
        }
    }
}

/// The IPv4 address of a `d.c.b.a.in-addr.arpa.` name.
fn arpa_v4(name: &Name) -> Option<Ipv4Addr> {
    let s = key(&name.to_ascii());
    let rest = s.strip_suffix(".in-addr.arpa")?;
    let parts: Vec<u8> = rest.split('.').map(|p| p.parse().ok()).collect::<Option<_>>()?;
    let [d, c, b, a] = parts.as_slice() else { return None };
    Some(Ipv4Addr::new(*a, *b, *c, *d))
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::op::Query;

    const FILE: &str = "
nodes:
  - {name: node1, vtep: 192.168.50.1}
  - {name: node2, vtep: 192.168.50.2}
networks:
  - {name: front, vni: 10, subnet: 10.0.1.0/24}
  - {name: back, vni: 11, subnet: 10.0.2.0/24}
endpoints:
  - {name: app, network: front, node: node1, ip: 10.0.1.2, netns: c1}
  - {name: app, network: back, node: node1, ip: 10.0.2.2, netns: c1}
  - {name: web, network: front, node: node2, ip: 10.0.1.3, netns: c2, aliases: [www]}
  - {name: web2, network: front, node: node2, ip: 10.0.1.4, netns: c3, aliases: [www]}
  - {name: db, network: back, node: node2, ip: 10.0.2.3, netns: c4}
";

    fn view() -> NameView {
        NameView::build(&crate::source::file::parse(FILE).expect("valid"))
    }

    fn ask(v: &NameView, from: [u8; 4], gw: [u8; 4], name: &str, t: RecordType) -> Answer {
        let mut m = Message::query();
        m.metadata.id = 7;
        m.add_query(Query::query(Name::from_ascii(name).expect("name"), t));
        v.answer(&m, Ipv4Addr::from(from), Ipv4Addr::from(gw), 0)
    }

    fn addrs(a: &Answer) -> Vec<String> {
        match a {
            Answer::Local(m) => m.answers.iter().map(|r| r.data.to_string()).collect(),
            Answer::Forward => vec!["forward".into()],
        }
    }

    #[test]
    fn names_resolve_within_the_network_only() {
        let v = view();
        let gw1 = [10, 0, 1, 1];
        assert_eq!(addrs(&ask(&v, [10, 0, 1, 3], gw1, "app.", RecordType::A)), ["10.0.1.2"], "front's address for front");
        assert_eq!(addrs(&ask(&v, [10, 0, 1, 3], gw1, "APP.front.", RecordType::A)), ["10.0.1.2"], "NAME.NETWORK, any case");
        assert_eq!(addrs(&ask(&v, [10, 0, 1, 3], gw1, "db.", RecordType::A)), ["forward"], "back's names are not front's");
        assert_eq!(addrs(&ask(&v, [10, 0, 1, 3], gw1, "db.back.", RecordType::A)), ["forward"]);
        // app is on both networks: it sees both, its first network first.
        assert_eq!(addrs(&ask(&v, [10, 0, 1, 2], gw1, "db.", RecordType::A)), ["10.0.2.3"]);
        assert_eq!(addrs(&ask(&v, [10, 0, 2, 2], [10, 0, 2, 1], "app.", RecordType::A)), ["10.0.1.2"], "a clash: the first network wins");
        // An alias on two endpoints: both addresses.
        let mut www = addrs(&ask(&v, [10, 0, 1, 2], gw1, "www.", RecordType::A));
        www.sort();
        assert_eq!(www, ["10.0.1.3", "10.0.1.4"]);
        match ask(&v, [10, 0, 1, 2], gw1, "web.", RecordType::AAAA) {
            Answer::Local(m) => assert!(m.answers.is_empty() && m.metadata.response_code == ResponseCode::NoError, "AAAA: NOERROR, empty"),
            other => panic!("AAAA of a known name is ours: {other:?}"),
        }
        assert_eq!(addrs(&ask(&v, [10, 0, 1, 2], gw1, "3.1.0.10.in-addr.arpa.", RecordType::PTR)), ["web."]);
        assert_eq!(addrs(&ask(&v, [10, 0, 1, 2], gw1, "example.org.", RecordType::A)), ["forward"]);
        assert_eq!(addrs(&ask(&v, [10, 0, 1, 2], gw1, "8.8.8.8.in-addr.arpa.", RecordType::PTR)), ["forward"]);
    }

    #[test]
    fn round_robin_rotates() {
        let v = view();
        let mut m = Message::query();
        m.add_query(Query::query(Name::from_ascii("www.").expect("name"), RecordType::A));
        let first = |s: u64| match v.answer(&m, Ipv4Addr::new(10, 0, 1, 2), Ipv4Addr::new(10, 0, 1, 1), s) {
            Answer::Local(r) => r.answers[0].data.to_string(),
            Answer::Forward => panic!("ours"),
        };
        assert_ne!(first(0), first(1), "another shuffle, another first address");
    }
}
