//! `overlay endpoint add|rm|ls`: put a network namespace on a network (as `docker network
//! connect` does for a container) and take it off again.
use std::{
    net::Ipv4Addr,
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use clap::{Args, Subcommand};
use overlay_common::FDB_LOCAL;

use super::state::{StateArgs, parse_ip};
use crate::{
    config::Mac,
    dataplane::{Dataplane, node_pin_dir},
    netlink::{Netlink, netns_path},
    store::{EndpointSpec, Store, StoreError},
};

#[derive(Args, Debug)]
pub struct EndpointArgs {
    #[command(flatten)]
    pub state: StateArgs,
    #[command(subcommand)]
    pub command: EndpointCommand,
}

#[derive(Subcommand, Debug)]
pub enum EndpointCommand {
    /// Attach a network namespace of this node to a network: take an address (the next free
    /// one unless --ip), publish the endpoint, and wait until this node's agent has wired it.
    Add {
        /// The network to join.
        #[arg(long)]
        network: String,
        /// The namespace (a name under /run/netns) that gets `eth0` on the network.
        #[arg(long)]
        netns: String,
        /// A fixed address instead of the next free one.
        #[arg(long)]
        ip: Option<String>,
        /// Endpoint name [default: the namespace's name].
        #[arg(long)]
        name: Option<String>,
        /// The node hosting the namespace [default: the node whose VTEP is an address here,
        /// else the one named like this host].
        #[arg(long, env = "OVERLAY_NODE")]
        node: Option<String>,
        /// Directory holding one pin directory per node [default: <bpffs>/overlay].
        #[arg(long, env = "OVERLAY_PIN_ROOT")]
        pin_root: Option<PathBuf>,
        /// Return once published, without waiting for the agent to wire it.
        #[arg(long)]
        no_wait: bool,
        /// How long to wait for the agent, in seconds; after that the endpoint is withdrawn.
        #[arg(long, default_value_t = 10.0)]
        timeout: f64,
    },
    /// Detach endpoints: their agent removes the interface, every node forgets them.
    Rm {
        #[arg(required = true)]
        names: Vec<String>,
    },
    /// List endpoints.
    Ls {
        /// Only this network's.
        #[arg(long)]
        network: Option<String>,
    },
}

pub async fn run(args: EndpointArgs) -> anyhow::Result<()> {
    let state = args.state.open().await?;
    match args.command {
        EndpointCommand::Add { network, netns, ip, name, node, pin_root, no_wait, timeout } => {
            let store = state.writable("endpoint add")?;
            let ip = ip.map(|v| parse_ip("ip", &v)).transpose()?;
            if !(0.0..=3600.0).contains(&timeout) {
                bail!("--timeout {timeout} is not between 0 and 3600 seconds");
            }
            let path = netns_path(&netns);
            if netns.contains('/') || !path.exists() {
                bail!("network namespace {netns:?} does not exist ({})", path.display());
            }
            let node = match node {
                Some(n) => n,
                None => this_node(store).await?,
            };
            let spec = EndpointSpec { name: name.unwrap_or_else(|| netns.clone()), network, node: node.clone(), netns: Some(netns), ip };
            let r = store.endpoint_add(&spec).await?;
            if !no_wait {
                let ip: Ipv4Addr = r.ip.parse().context("address just allocated")?;
                let (net, _) = store.network(&r.network).await?;
                let pin_dir = node_pin_dir(pin_root.as_deref(), &node)?;
                if let Err(e) = wait_wired(&pin_dir, net.vni, Mac::from_ip(ip), Duration::from_secs_f64(timeout)).await {
                    let undo = match store.endpoint_rm(&r.name).await {
                        Ok(_) => "the endpoint was withdrawn".to_string(),
                        Err(u) => format!("withdrawing it failed too: {u}"),
                    };
                    bail!("endpoint {} ({}) was published but node {node}'s agent did not wire it: {e}; {undo}", r.name, r.ip);
                }
            }
            println!("{} {} {} {} {}", r.name, r.network, r.node, r.ip, r.mac);
        }
        EndpointCommand::Rm { names } => {
            let store = state.writable("endpoint rm")?;
            let mut failed = Vec::new();
            for name in &names {
                match store.endpoint_rm(name).await {
                    Ok(_) => println!("{name}"),
                    Err(e @ StoreError::Unreachable { .. }) => return Err(e.into()),
                    Err(e) => failed.push(e.to_string()),
                }
            }
            if !failed.is_empty() {
                bail!("{}", failed.join("\n"));
            }
        }
        EndpointCommand::Ls { network } => {
            if let Some(n) = &network {
                state.network(n).await?;
            }
            let eps = state.endpoints(network.as_deref()).await?;
            println!("{:<20} {:<20} {:<20} {:<15} {:<17} {}", "NAME", "NETWORK", "NODE", "IP", "MAC", "NETNS");
            for e in eps {
                println!("{:<20} {:<20} {:<20} {:<15} {:<17} {}", e.name, e.network, e.node, e.ip, e.mac, e.netns.as_deref().unwrap_or("-"));
            }
        }
    }
    Ok(())
}

/// The node this command runs on: the registered node whose VTEP is an address in this network
/// namespace, else the one named like this host.
async fn this_node(store: &Store) -> anyhow::Result<String> {
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
async fn wait_wired(pin_dir: &std::path::Path, vni: u32, mac: Mac, timeout: Duration) -> anyhow::Result<()> {
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
