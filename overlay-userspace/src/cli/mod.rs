//! One file per subcommand of `overlay`.
pub mod agent;
pub mod bench;
pub mod cni;
pub mod demo;
pub mod docker_plugin;
pub mod down;
pub mod endpoint;
pub mod fdb;
pub mod monitor;
pub mod network;
pub mod node;
pub mod service;
pub mod state;
pub mod stats;

use std::path::PathBuf;

use clap::Args;

/// Where a node's pinned maps and links live.
#[derive(Args, Debug, Clone)]
pub struct NodeArgs {
    /// Node name, as in the cluster description.
    #[arg(long, env = "OVERLAY_NODE")]
    pub node: String,
    /// Directory holding one pin directory per node [default: <bpffs>/overlay].
    #[arg(long, env = "OVERLAY_PIN_ROOT")]
    pub pin_root: Option<PathBuf>,
}

impl NodeArgs {
    pub fn pin_dir(&self) -> anyhow::Result<PathBuf> {
        Ok(crate::dataplane::node_pin_dir(self.pin_root.as_deref(), &self.node)?)
    }
}
