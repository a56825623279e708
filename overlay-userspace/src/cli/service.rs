//! `overlay service create|ls|inspect|rm`, as `docker service` does them for a swarm's
//! services: a VIP on a network balanced over the tasks (endpoints that join with `--service`).
use anyhow::{Context as _, bail};
use clap::{Args, Subcommand};
use serde_json::json;

use super::state::{StateArgs, remove_each, rfc3339};
use crate::{model::PortSpec, source::store::ServiceSpec};

#[derive(Args, Debug)]
pub struct ServiceArgs {
    #[command(flatten)]
    pub state: StateArgs,
    #[command(subcommand)]
    pub command: ServiceCommand,
}

#[derive(Subcommand, Debug)]
pub enum ServiceCommand {
    /// Create a service on a network. Its tasks join with `endpoint add --service NAME` (or
    /// `network connect --service NAME`).
    Create {
        name: String,
        /// The network the VIP and the tasks are on.
        #[arg(long)]
        network: String,
        /// The VIP [default: the subnet's highest free address]; `vip` mode only.
        #[arg(long)]
        vip: Option<String>,
        /// PORT:TARGET[/udp]: PORT on the VIP goes to TARGET on a task (repeatable).
        #[arg(long = "port", value_name = "PORT:TARGET[/udp]")]
        ports: Vec<String>,
        /// PUBLISHED:TARGET[/udp]: TARGET published on every node's address at port PUBLISHED
        /// (the routing mesh), as Docker's `--publish published=P,target=T`. With a `--port`
        /// of the same target it publishes that VIP port; otherwise the VIP port is TARGET.
        #[arg(long = "publish", value_name = "PUBLISHED:TARGET[/udp]")]
        publish: Vec<String>,
        /// vip (a virtual IP balanced over the tasks) or dnsrr (the name resolves to the tasks).
        #[arg(long, default_value = "vip")]
        mode: String,
    },
    /// List services.
    Ls,
    /// Show services as JSON, shaped like `docker service inspect` (with the VIP and the tasks).
    Inspect {
        #[arg(required = true)]
        names: Vec<String>,
    },
    /// Remove services; refused while a service has tasks.
    Rm {
        #[arg(required = true)]
        names: Vec<String>,
    },
}

/// `A:B[/udp]` (or `/tcp`) -> (A, B, protocol).
/// A port as `service ls` shows it: `80->8080/tcp`, and when published (as Docker shows
/// published ports) `*:30080->8080/tcp` too.
fn port_text(port: impl std::fmt::Display, target: impl std::fmt::Display, protocol: impl std::fmt::Display, publish: Option<u16>) -> String {
    match publish {
        Some(x) => format!("{port}->{target}/{protocol},*:{x}->{target}/{protocol}"),
        None => format!("{port}->{target}/{protocol}"),
    }
}

fn port_pair(flag: &str, s: &str) -> anyhow::Result<(i64, i64, String)> {
    let (ports, proto) = match s.split_once('/') {
        Some((p, proto)) => (p, proto.to_string()),
        None => (s, "tcp".to_string()),
    };
    let (a, b) = ports.split_once(':').with_context(|| format!("--{flag} {s:?}: expected A:B[/udp], e.g. 80:8080"))?;
    let n = |x: &str| x.parse::<i64>().with_context(|| format!("--{flag} {s:?}: {x:?} is not a port number"));
    Ok((n(a)?, n(b)?, proto))
}

pub async fn run(args: ServiceArgs) -> anyhow::Result<()> {
    let state = args.state.open().await?;
    match args.command {
        ServiceCommand::Create { name, network, vip, ports, publish, mode } => {
            let store = state.writable("service create")?;
            let vip = vip.map(|v| super::state::parse_ip("vip", &v)).transpose()?;
            let mut specs = Vec::new();
            for p in &ports {
                let (port, target, protocol) = port_pair("port", p)?;
                specs.push(PortSpec { port, target: Some(target), protocol: Some(protocol), publish: None });
            }
            for p in &publish {
                // As Docker's --publish published=P,target=T: the VIP port is the target.
                let (published, target, protocol) = port_pair("publish", p)?;
                let same = specs.iter_mut().find(|s| s.target == Some(target) && s.protocol.as_deref() == Some(protocol.as_str()) && s.publish.is_none());
                match same {
                    Some(s) => s.publish = Some(published),
                    None => specs.push(PortSpec { port: target, target: Some(target), protocol: Some(protocol), publish: Some(published) }),
                }
            }
            let r = store.service_create(&ServiceSpec { name, network, vip, ports: specs, mode: Some(mode) }).await?;
            let ports: Vec<String> = r.ports.iter().map(|p| port_text(p.port, p.target, &p.protocol, p.publish)).collect();
            println!("{} (network {}, {} {}, ports {})", r.name, r.network, r.mode, r.vip.as_deref().unwrap_or("-"), if ports.is_empty() { "-".into() } else { ports.join(",") });
        }
        ServiceCommand::Ls => {
            let eps = state.endpoints(None).await?;
            println!("{:<20} {:<6} {:<15} {:<16} {:>5}  PORTS", "NAME", "MODE", "VIP", "NETWORK", "TASKS");
            for s in state.services().await? {
                let tasks = eps.iter().filter(|e| e.network == s.network && e.service.as_deref() == Some(s.name.as_str())).count();
                let ports: Vec<String> = s.ports.iter().map(|p| port_text(p.port, p.target, &p.protocol, p.publish)).collect();
                println!("{:<20} {:<6} {:<15} {:<16} {:>5}  {}", s.name, s.mode, s.vip.as_deref().unwrap_or("-"), s.network, tasks, ports.join(","));
            }
        }
        ServiceCommand::Inspect { names } => {
            let all = state.services().await?;
            let mut out = Vec::new();
            for name in &names {
                let Some(s) = all.iter().find(|s| &s.name == name) else { bail!("no service named {name:?} (see `overlay service ls`)") };
                let net = state.network(&s.network).await?;
                let prefix = net.subnet.split('/').nth(1).unwrap_or("32").to_string();
                let tasks: Vec<serde_json::Value> = state
                    .endpoints(Some(&s.network))
                    .await?
                    .into_iter()
                    .filter(|e| e.service.as_deref() == Some(s.name.as_str()))
                    .map(|e| json!({"Name": e.name, "Node": e.node, "Addresses": [format!("{}/{prefix}", e.ip)]}))
                    .collect();
                let ports: Vec<serde_json::Value> = s
                    .ports
                    .iter()
                    .map(|p| json!({"Protocol": p.protocol, "TargetPort": p.target, "ServicePort": p.port, "PublishedPort": p.publish}))
                    .collect();
                let vips: Vec<serde_json::Value> = s.vip.iter().map(|v| json!({"NetworkID": s.network, "Addr": format!("{v}/{prefix}")})).collect();
                out.push(json!({
                    "Spec": {
                        "Name": s.name,
                        "TaskTemplate": {"Networks": [{"Target": s.network}]},
                        "EndpointSpec": {"Mode": s.mode, "Ports": ports},
                    },
                    "CreatedAt": rfc3339(s.created),
                    "Endpoint": {"Spec": {"Mode": s.mode}, "Ports": ports, "VirtualIPs": vips},
                    "Tasks": tasks,
                }));
            }
            println!("{}", serde_json::to_string_pretty(&out)?);
        }
        ServiceCommand::Rm { names } => {
            let store = state.writable("service rm")?;
            remove_each(&names, |n| async move { store.service_rm(&n).await }).await?;
        }
    }
    Ok(())
}
