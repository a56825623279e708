//! `overlay network create|ls|inspect|rm`, as `docker network` does them for overlays.
use std::collections::BTreeMap;

use clap::{Args, Subcommand};
use serde_json::json;

use super::state::{StateArgs, remove_each, rfc3339};
use crate::source::store::NetworkSpec;

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
        NetworkCommand::Create { name, vni, subnet, gateway, mtu, attachable } => {
            let store = state.writable("network create")?;
            let gateway = gateway.map(|g| super::state::parse_ip("gateway", &g)).transpose()?;
            let r = store.network_create(&NetworkSpec { name, vni, subnet, gateway, mtu, attachable }).await?;
            println!("{} (VNI {}, subnet {}, gateway {})", r.name, r.vni, r.subnet, r.gateway);
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
