//! Attaching a network namespace to a network, as the CLI, the CNI plugin and the Docker plugin
//! all do it: find this node, publish the endpoint (IPAM in the store), wait until this node's
//! agent has wired it, and withdraw it if that does not happen.
use std::{
    net::Ipv4Addr,
    path::Path,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use overlay_common::FDB_LOCAL;

use crate::{
    model::Mac,
    dataplane::{Dataplane, node_pin_dir},
    host::netlink::Netlink,
    source::store::{EndpointRecord, EndpointSpec, Store},
};

/// Publishes `spec` and, with `wait`, waits that long for this node's agent to wire it; if it
/// does not, the endpoint is withdrawn and the error says so.
pub async fn attach(store: &Store, spec: &EndpointSpec, pin_root: Option<&Path>, wait: Option<Duration>) -> anyhow::Result<EndpointRecord> {
    let r = store.endpoint_add(spec).await?;
    if let Some(timeout) = wait {
        let ip: Ipv4Addr = r.ip.parse().context("address just allocated")?;
        let (net, _) = store.network(&r.network).await?;
        let pin_dir = node_pin_dir(pin_root, &spec.node)?;
        if let Err(e) = wait_wired(&pin_dir, net.vni, Mac::from_ip(ip), timeout).await {
            let undo = match store.endpoint_rm(&r.network, &r.name).await {
                Ok(_) => "the endpoint was withdrawn".to_string(),
                Err(u) => format!("withdrawing it failed too: {u}"),
            };
            bail!("endpoint {} ({}) was published but node {}'s agent did not wire it: {e}; {undo}", r.name, r.ip, spec.node);
        }
    }
    Ok(r)
}

/// The node this process runs on: the registered node whose VTEP is an address in this network
/// namespace, else the one named like this host.
pub async fn this_node(store: &Store) -> anyhow::Result<String> {
    let (nodes, _) = store.nodes().await?;
    let nl = Netlink::new()?;
    let mut mine = Vec::new();
    for (n, _) in &nodes {
        if let Ok(vtep) = n.vtep.parse::<Ipv4Addr>() {
            if nl.interface_with_address(vtep).await.is_ok() {
                mine.push(n.name.clone());
            }
        }
    }
    if let [one] = mine.as_slice() {
        return Ok(one.clone());
    }
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default().trim().to_string();
    if nodes.iter().any(|(n, _)| n.name == host) {
        return Ok(host);
    }
    let known: Vec<String> = nodes.iter().map(|(n, _)| format!("{} ({})", n.name, n.vtep)).collect();
    bail!(
        "cannot tell which node this is: {} of the registered nodes [{}] has its VTEP here and none is named {host:?}; pass --node or set OVERLAY_NODE",
        if mine.is_empty() { "none".to_string() } else { format!("more than one ({})", mine.join(", ")) },
        known.join(", ")
    )
}

/// Waits until the node's datapath holds the endpoint as a local FDB entry.
pub async fn wait_wired(pin_dir: &std::path::Path, vni: u32, mac: Mac, timeout: Duration) -> anyhow::Result<()> {
    let t0 = Instant::now();
    loop {
        let found = match Dataplane::open_pinned(pin_dir) {
            Ok(dp) => dp.fdb_entry(vni, mac.0)?.is_some_and(|e| e.kind == FDB_LOCAL),
            Err(_) => false,
        };
        if found {
            return Ok(());
        }
        if t0.elapsed() >= timeout {
            if !pin_dir.exists() {
                bail!("no datapath pinned at {} (is `overlay agent` running on this node?)", pin_dir.display());
            }
            bail!("not in its datapath after {:.1} s (see the agent's log)", timeout.as_secs_f64());
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}
