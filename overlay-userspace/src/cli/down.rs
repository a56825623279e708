//! `overlay down`: remove a node's datapath (endpoint veths, programs, pinned maps).
use clap::Args;

use super::NodeArgs;

#[derive(Args, Debug)]
pub struct DownArgs {
    #[command(flatten)]
    pub node: NodeArgs,
    /// The node's network namespace, when it is not this process's.
    #[arg(long, env = "OVERLAY_NETNS")]
    pub netns: Option<String>,
}

pub async fn run(args: DownArgs) -> anyhow::Result<()> {
    let dir = args.node.pin_dir()?;
    let errors = crate::control::agent::teardown(&args.node.node, &dir).await;
    if errors.is_empty() {
        println!("removed the datapath of node {} ({})", args.node.node, dir.display());
        Ok(())
    } else {
        anyhow::bail!("teardown of node {} finished with errors:\n  {}", args.node.node, errors.join("\n  "))
    }
}
