//! `overlay endpoint add|rm|ls`: put a network namespace on a network (as `docker network
//! connect` does for a container) and take it off again.
use std::{path::PathBuf, time::Duration};

use anyhow::bail;
use clap::{Args, Subcommand};

use super::state::{StateArgs, parse_ip, remove_each};
use crate::{
    control::attach::{attach, this_node},
    host::netlink::netns_path,
    source::store::{EndpointRecord, EndpointSpec, Store},
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
        /// The namespace (a name under /run/netns) that gets an interface on the network.
        #[arg(long)]
        netns: String,
        #[command(flatten)]
        opts: Box<JoinOpts>,
    },
    /// Detach endpoints (NAME, or NETWORK/NAME when several networks have a NAME): their agent
    /// removes the interface, every node forgets them.
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
        EndpointCommand::Add { network, netns, opts } => {
            let store = state.writable("endpoint add")?;
            let r = join(store, network, netns, *opts).await?;
            println!("{} {} {} {} {} {}", r.name, r.network, r.node, r.ip, r.mac, r.interface.as_deref().unwrap_or("-"));
        }
        EndpointCommand::Rm { names } => {
            let store = state.writable("endpoint rm")?;
            remove_each(&names, |n| async move {
                let (net, name) = store.resolve_endpoint(&n).await?;
                store.endpoint_rm(&net, &name).await
            })
            .await?;
        }
        EndpointCommand::Ls { network } => {
            if let Some(n) = &network {
                state.network(n).await?;
            }
            let eps = state.endpoints(network.as_deref()).await?;
            println!("{:<20} {:<20} {:<20} {:<15} {:<17} {:<9} NETNS", "NAME", "NETWORK", "NODE", "IP", "MAC", "INTERFACE");
            for e in eps {
                let ifname = e.interface.as_deref().unwrap_or("-");
                println!("{:<20} {:<20} {:<20} {:<15} {:<17} {:<9} {}", e.name, e.network, e.node, e.ip, e.mac, ifname, e.netns.as_deref().unwrap_or("-"));
            }
        }
    }
    Ok(())
}

/// How a namespace of this node joins a network: the options `endpoint add` and `network
/// connect` share.
#[derive(Args, Debug)]
pub struct JoinOpts {
    /// The interface's name in the namespace [default: the first free ethN there].
    #[arg(long)]
    pub interface: Option<String>,
    /// Another name of the endpoint on this network (repeatable).
    #[arg(long = "alias")]
    pub aliases: Vec<String>,
    /// Join service NAME (of the same network) as one of its tasks (see `overlay service`).
    #[arg(long)]
    pub service: Option<String>,
    /// A fixed address instead of the next free one.
    #[arg(long)]
    pub ip: Option<String>,
    /// Endpoint name [default: the namespace's name].
    #[arg(long)]
    pub name: Option<String>,
    /// The node hosting the namespace [default: the node whose VTEP is an address here, else
    /// the one named like this host].
    #[arg(long, env = "OVERLAY_NODE")]
    pub node: Option<String>,
    /// Directory holding one pin directory per node [default: <bpffs>/overlay].
    #[arg(long, env = "OVERLAY_PIN_ROOT")]
    pub pin_root: Option<PathBuf>,
    /// Return once published, without waiting for the agent to wire it.
    #[arg(long)]
    pub no_wait: bool,
    /// How long to wait for the agent, in seconds; after that the endpoint is withdrawn.
    #[arg(long, default_value_t = 10.0)]
    pub timeout: f64,
}

/// Publishes the endpoint and (unless `no_wait`) waits until this node's agent wired it.
pub async fn join(store: &Store, network: String, netns: String, j: JoinOpts) -> anyhow::Result<EndpointRecord> {
    let ip = j.ip.map(|v| parse_ip("ip", &v)).transpose()?;
    if !(0.0..=3600.0).contains(&j.timeout) {
        bail!("--timeout {} is not between 0 and 3600 seconds", j.timeout);
    }
    let path = netns_path(&netns);
    if netns.contains('/') || !path.exists() {
        bail!("network namespace {netns:?} does not exist ({})", path.display());
    }
    let node = match j.node {
        Some(n) => n,
        None => this_node(store).await?,
    };
    let spec = EndpointSpec {
        name: j.name.unwrap_or_else(|| netns.clone()),
        network,
        node,
        netns: Some(netns),
        ip,
        interface: j.interface,
        aliases: j.aliases,
        service: j.service,
    };
    let wait = (!j.no_wait).then(|| Duration::from_secs_f64(j.timeout));
    attach(store, &spec, j.pin_root.as_deref(), wait).await
}

