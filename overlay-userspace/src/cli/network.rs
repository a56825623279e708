//! `overlay network create|ls|inspect|rm`, as `docker network` does them for overlays.
use std::collections::BTreeMap;

use clap::{Args, Subcommand};
use serde_json::json;


use super::{
    endpoint::{JoinOpts, join},
    state::{StateArgs, remove_each, rfc3339},
};
use crate::{control::attach::this_node, source::store::NetworkSpec};

#[derive(Args, Debug)]
pub struct NetworkArgs {
    #[command(flatten)]
    pub state: StateArgs,
    #[command(subcommand)]
    pub command: NetworkCommand,
}

#[derive(Subcommand, Debug)]
pub enum NetworkCommand {
    /// Create a network: a VNI (from 4096 up unless given) and a subnet (10.0.N.0/24 from the
    /// default pool unless given).
    Create {
        name: String,
        /// VXLAN network identifier (1-16777215).
        #[arg(long)]
        vni: Option<u32>,
        /// IPv4 subnet in CIDR form.
        #[arg(long)]
        subnet: Option<String>,
        /// Address reserved as the gateway, never given to an endpoint [default: the subnet's
        /// first host address].
        #[arg(long)]
        gateway: Option<String>,
        /// Container MTU [default: underlay MTU - 50].
        #[arg(long)]
        mtu: Option<u32>,
        /// Let standalone containers attach (recorded and shown, as Docker's flag).
        #[arg(long)]
        attachable: bool,
        /// No way out of the overlay: no default route, packets to outside addresses dropped
        /// (Docker's --internal).
        #[arg(long)]
        internal: bool,
    },
    /// Connect a network namespace of this node to a network, as `docker network connect`
    /// does: a further interface (eth1, eth2, ...) in it, the others untouched.
    Connect {
        network: String,
        /// The namespace (a name under /run/netns).
        netns: String,
        #[command(flatten)]
        opts: Box<JoinOpts>,
    },
    /// Disconnect a network namespace of this node from a network: its interface on that
    /// network goes, the others stay.
    Disconnect {
        network: String,
        netns: String,
        /// The node hosting the namespace [default: as for connect].
        #[arg(long, env = "OVERLAY_NODE")]
        node: Option<String>,
    },
    /// List networks.
    Ls,
    /// Show networks as JSON, like `docker network inspect`.
    Inspect {
        #[arg(required = true)]
        names: Vec<String>,
    },
    /// Remove networks; refused while a network has endpoints.
    Rm {
        #[arg(required = true)]
        names: Vec<String>,
    },
}

pub async fn run(args: NetworkArgs) -> anyhow::Result<()> {
    let state = args.state.open().await?;
    match args.command {
        NetworkCommand::Create { name, vni, subnet, gateway, mtu, attachable, internal } => {
            let store = state.writable("network create")?;
            let gateway = gateway.map(|g| super::state::parse_ip("gateway", &g)).transpose()?;
            let r = store.network_create(&NetworkSpec { name, vni, subnet, gateway, mtu, attachable, internal }).await?;
            let internal = if r.internal { ", internal" } else { "" };
            println!("{} (VNI {}, subnet {}, gateway {}{internal})", r.name, r.vni, r.subnet, r.gateway);
        }
        NetworkCommand::Connect { network, netns, opts } => {
            let store = state.writable("network connect")?;
            let r = join(store, network, netns, *opts).await?;
            println!("{} {} {} {} {} {}", r.name, r.network, r.node, r.ip, r.mac, r.interface.as_deref().unwrap_or("-"));
        }
        NetworkCommand::Disconnect { network, netns, node } => {
            let store = state.writable("network disconnect")?;
            state.network(&network).await?;
            let node = match node {
                Some(n) => n,
                None => this_node(store).await?,
            };
            let (eps, _) = store.endpoints(Some(&network)).await?;
            let Some(e) = eps.iter().find(|e| e.node == node && e.netns.as_deref() == Some(netns.as_str())) else {
                anyhow::bail!("namespace {netns} on node {node} is not connected to network {network}");
            };
            store.endpoint_rm(&e.network, &e.name).await?;
            println!("{} {} {}", e.name, e.network, e.interface.as_deref().unwrap_or("-"));
        }
        NetworkCommand::Ls => {
            let nets = state.networks().await?;
            let eps = state.endpoints(None).await?;
            println!("{:<20} {:>9} {:<18} {:<15} {:>5} {:>9}", "NAME", "VNI", "SUBNET", "GATEWAY", "MTU", "ENDPOINTS");
            for n in nets {
                let count = eps.iter().filter(|e| e.network == n.name).count();
                let mtu = n.mtu.map_or("-".to_string(), |m| m.to_string());
                println!("{:<20} {:>9} {:<18} {:<15} {:>5} {:>9}", n.name, n.vni, n.subnet, n.gateway, mtu, count);
            }
        }
        NetworkCommand::Inspect { names } => {
            let mut out = Vec::new();
            for name in &names {
                let n = state.network(name).await?;
                let prefix = n.subnet.split('/').nth(1).unwrap_or("32").to_string();
                let containers: BTreeMap<String, serde_json::Value> = state
                    .endpoints(Some(name))
                    .await?
                    .into_iter()
                    .map(|e| {
                        let v = json!({
                            "Name": e.name,
                            "MacAddress": e.mac,
                            "IPv4Address": format!("{}/{prefix}", e.ip),
                            "Node": e.node,
                            "Netns": e.netns,
                            "Interface": e.interface,
                            "Aliases": e.aliases,
                        });
                        (e.name, v)
                    })
                    .collect();
                let mut options = serde_json::Map::new();
                options.insert("com.docker.network.driver.overlay.vxlanid_list".into(), json!(n.vni.to_string()));
                if let Some(m) = n.mtu {
                    options.insert("com.docker.network.driver.mtu".into(), json!(m.to_string()));
                }
                out.push(json!({
                    "Name": n.name,
                    "Created": rfc3339(n.created),
                    "Scope": "swarm",
                    "Driver": "overlay",
                    "EnableIPv6": false,
                    "IPAM": {"Driver": "default", "Config": [{"Subnet": n.subnet, "Gateway": n.gateway}]},
                    "Attachable": n.attachable,
                    "Internal": n.internal,
                    "VNI": n.vni,
                    "Containers": containers,
                    "Options": options,
                }));
            }
            println!("{}", serde_json::to_string_pretty(&out)?);
        }
        NetworkCommand::Rm { names } => {
            let store = state.writable("network rm")?;
            remove_each(&names, |n| async move { store.network_rm(&n).await }).await?;
        }
    }
    Ok(())
}
