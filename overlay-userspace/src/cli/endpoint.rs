//! `overlay endpoint add|rm|ls`: put a network namespace on a network (as `docker network
//! connect` does for a container) and take it off again.
use std::{path::PathBuf, time::Duration};

use anyhow::bail;
use clap::{Args, Subcommand};

use super::state::{StateArgs, parse_ip, remove_each};
use crate::{
    control::attach::{attach, this_node},
    host::netlink::netns_path,
    source::store::EndpointSpec,
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
            let spec = EndpointSpec { name: name.unwrap_or_else(|| netns.clone()), network, node, netns: Some(netns), ip };
            let wait = (!no_wait).then(|| Duration::from_secs_f64(timeout));
            let r = attach(store, &spec, pin_root.as_deref(), wait).await?;
            println!("{} {} {} {} {}", r.name, r.network, r.node, r.ip, r.mac);
        }
        EndpointCommand::Rm { names } => {
            let store = state.writable("endpoint rm")?;
            remove_each(&names, |n| async move { store.endpoint_rm(&n).await }).await?;
        }
        EndpointCommand::Ls { network } => {
            if let Some(n) = &network {
                state.network(n).await?;
            }
            let eps = state.endpoints(network.as_deref()).await?;
            println!("{:<20} {:<20} {:<20} {:<15} {:<17} NETNS", "NAME", "NETWORK", "NODE", "IP", "MAC");
            for e in eps {
                println!("{:<20} {:<20} {:<20} {:<15} {:<17} {}", e.name, e.network, e.node, e.ip, e.mac, e.netns.as_deref().unwrap_or("-"));
            }
        }
    }
    Ok(())
}

