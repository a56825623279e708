//! What the agent and the CLI read from the etcd store: each record parser of
//! `source::store::records` on a key and a value, then the same entries through the agent's
//! mirror (`Mirror::event`, `Mirror::cluster`), both full rebuilds and the in-place path.
//!
//! Input: entries separated by a NUL byte (never raw in valid JSON), each `KEY\nVALUE`; an
//! entry without a newline is a delete of KEY.
#![no_main]

use libfuzzer_sys::fuzz_target;
use overlay::{
    model::Node,
    source::store::{
        AliveRecord, EndpointRecord, NetworkRecord, NodeRecord, ServiceRecord,
        mirror::Mirror,
    },
};

/// A valid network for the checks that need one, when the input holds none.
const NETWORK: (&str, &[u8]) = ("/overlay/networks/front", br#"{"name":"front","vni":4201,"subnet":"10.0.1.0/24","gateway":"10.0.1.1"}"#);

fuzz_target!(|data: &[u8]| {
    let entries: Vec<(&str, Option<&[u8]>)> = data
        .split(|b| *b == 0)
        .filter_map(|e| match e.iter().position(|b| *b == b'\n') {
            Some(i) => Some((std::str::from_utf8(&e[..i]).ok()?, Some(&e[i + 1..]))),
            None => Some((std::str::from_utf8(e).ok()?, None)),
        })
        .collect();

    // Each parser on every value, whatever its key: the store's reads name the kind themselves.
    let (_, mut net) = NetworkRecord::parse(NETWORK.0, NETWORK.1).expect("the fixed network is valid");
    for (key, value) in &entries {
        let Some(value) = value else { continue };
        if let Ok((rec, n)) = NetworkRecord::parse(key, value) {
            let _ = rec.subnet();
            net = n;
        }
        if let Ok(rec) = ServiceRecord::parse(key, value) {
            let _ = rec.to_service(key, &net);
        }
        let _ = NodeRecord::parse(key, value);
        let _ = AliveRecord::parse(key, value);
        if let Ok(rec) = EndpointRecord::parse(key, value) {
            let _ = rec.to_endpoint(key, &net);
        }
    }

    // The agent's mirror: every entry as a watch event, the cluster built, then the events
    // again (the endpoints' in-place path once a cluster was built) and the cluster again.
    let me = Node { name: "node1".into(), vtep: [192, 168, 50, 1].into(), underlay: None, datapath: None, mesh_return: None };
    let mut mirror = Mirror::new();
    for round in 0..2 {
        for (rev, (key, value)) in entries.iter().enumerate() {
            let _ = mirror.event(key, *value, (round * entries.len() + rev) as i64 + 1);
        }
        let _ = mirror.cluster(&me);
    }
});
