//! `overlay agent`: keep this node's datapath equal to the cluster file.
use std::path::PathBuf;

use clap::Args;

use super::NodeArgs;

#[derive(Args, Debug)]
pub struct AgentArgs {
    /// The cluster file every node shares (YAML; see docs/config.md). Edits are picked up
    /// within a second; a bad edit is rejected whole and the datapath keeps its last good state.
    #[arg(long, env = "OVERLAY_CLUSTER")]
    pub cluster: PathBuf,
    #[command(flatten)]
    pub node: NodeArgs,
    /// Run in this named network namespace (the host's, in a simulated cluster) without
    /// leaving the host's mount namespace, so pins stay where other processes look.
    #[arg(long, env = "OVERLAY_NETNS")]
    pub netns: Option<String>,
}

pub async fn run(args: AgentArgs) -> anyhow::Result<()> {
    let pin_dir = args.node.pin_dir()?;
    let stop = async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    };
    crate::agent::run_with_file(&args.node.node, &args.cluster, &pin_dir, stop).await?;
    Ok(())
}
