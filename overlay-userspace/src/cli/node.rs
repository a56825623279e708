//! `overlay node ls`: the nodes agents registered, with liveness.
use clap::{Args, Subcommand};

use super::state::{Liveness, StateArgs, rfc3339};

#[derive(Args, Debug)]
pub struct NodeCmdArgs {
    #[command(flatten)]
    pub state: StateArgs,
    #[command(subcommand)]
    pub command: NodeCommand,
}

#[derive(Subcommand, Debug)]
pub enum NodeCommand {
    /// List nodes: up while their agent's lease lives, down after it expired.
    Ls,
}

pub async fn run(args: NodeCmdArgs) -> anyhow::Result<()> {
    let state = args.state.open().await?;
    match args.command {
        NodeCommand::Ls => {
            let nodes = state.nodes().await?;
            let eps = state.endpoints(None).await?;
            println!("{:<20} {:<15} {:<10} {:<8} {:<6} {:>9}  SINCE", "NAME", "VTEP", "UNDERLAY", "DATAPATH", "STATUS", "ENDPOINTS");
            for (n, live) in nodes {
                let count = eps.iter().filter(|e| e.node == n.name).count();
                let (status, since) = match live {
                    Liveness::Up(a) => ("up", format!("{} (lease TTL {} s)", rfc3339(a.since), a.ttl)),
                    Liveness::Down => ("down", "-".to_string()),
                    Liveness::Unknown => ("-", "(cluster file)".to_string()),
                };
                let datapath = n.datapath.as_deref().unwrap_or("-");
                println!("{:<20} {:<15} {:<10} {:<8} {:<6} {:>9}  {}", n.name, n.vtep, n.underlay.as_deref().unwrap_or("-"), datapath, status, count, since);
            }
        }
    }
    Ok(())
}
