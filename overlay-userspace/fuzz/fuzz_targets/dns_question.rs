//! A container's DNS question as the agent's resolver reads it: the datagram (or TCP frame)
//! through `control::resolver::decide` (hickory's parser, FORMERR for a bad one, the answer from
//! the overlay's names, or the question to relay) and `servfail` for a relayed one no upstream
//! answered.
#![no_main]

use std::{net::Ipv4Addr, sync::{Arc, LazyLock}};

use libfuzzer_sys::fuzz_target;
use overlay::{
    control::{
        names::NameView,
        resolver::{Decision, decide, servfail},
    },
    source::file,
};

/// Names to answer from: two networks, a container on both, an alias on two endpoints, services.
const CLUSTER: &str = "
nodes:
  - {name: node1, vtep: 192.168.50.1}
  - {name: node2, vtep: 192.168.50.2}
networks:
  - {name: front, vni: 4201, subnet: 10.0.1.0/24}
  - {name: back, vni: 4202, subnet: 10.0.2.0/24, gateway: 10.0.2.254, internal: true}
services:
  - {name: web, network: front, ports: [{port: 80, target: 8080}]}
  - {name: cache, network: front, mode: dnsrr, ports: [{port: 6379}]}
endpoints:
  - {name: c1, network: front, node: node1, ip: 10.0.1.2, netns: c1}
  - {name: c1, network: back, node: node1, ip: 10.0.2.2, netns: c1, aliases: [api]}
  - {name: c2, network: back, node: node2, ip: 10.0.2.3, netns: c2, aliases: [api]}
  - {name: web1, network: front, node: node1, ip: 10.0.1.20, netns: web1, service: web}
  - {name: cache1, network: front, node: node2, ip: 10.0.1.10, netns: cache1, service: cache}
";

static VIEW: LazyLock<Arc<NameView>> =
    LazyLock::new(|| Arc::new(NameView::build(&file::parse(CLUSTER).expect("the fixed cluster is valid"))));

/// (asker, gateway): a container on two networks, an address the cluster does not know, a
/// gateway that is none.
const ASKERS: [([u8; 4], [u8; 4]); 3] = [([10, 0, 1, 2], [10, 0, 1, 1]), ([10, 0, 2, 99], [10, 0, 2, 254]), ([10, 0, 1, 2], [10, 9, 9, 9])];

fuzz_target!(|data: &[u8]| {
    for (i, (asker, gw)) in ASKERS.into_iter().enumerate() {
        let shuffle = [0, u64::MAX, 0x1_0000_0003][i];
        match decide(data, Ipv4Addr::from(asker), Ipv4Addr::from(gw), || VIEW.clone(), shuffle) {
            Decision::Forward(query) => {
                let _ = servfail(&query);
            }
            Decision::Drop | Decision::Reply(_) => {}
        }
    }
});
