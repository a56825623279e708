//! `overlay docker-plugin`: serve Docker's remote network driver API for this node.
use std::path::PathBuf;

use clap::Args;

use crate::{
    control::attach::this_node,
    defaults::{DOCKER_BUILTIN_DRIVERS, DOCKER_PLUGIN_NAME},
    plugins::docker::{Plugin, serve},
    source::store::Store,
};

#[derive(Args, Debug)]
pub struct DockerPluginArgs {
    /// The etcd store: etcd://HOST:PORT[,HOST:PORT...].
    #[arg(long, env = "OVERLAY_STORE")]
    pub store: String,
    #[command(flatten)]
    pub creds: super::state::StoreCredentialArgs,
    /// This node [default: the registered node whose VTEP is an address here, else the one
    /// named like this host].
    #[arg(long, env = "OVERLAY_NODE")]
    pub node: Option<String>,
    /// Plugin name: `docker network create -d NAME` [the socket is <socket-dir>/NAME.sock].
    #[arg(long, default_value = DOCKER_PLUGIN_NAME)]
    pub name: String,
    /// Scope reported to Docker: `local` works with any daemon (each keeps its own network
    /// object; the overlay state is shared through etcd), `global` only on swarm managers.
    #[arg(long, default_value = "local", value_parser = ["local", "global"])]
    pub scope: String,
    /// Where Docker looks for plugin sockets.
    #[arg(long, default_value = "/run/docker/plugins")]
    pub socket_dir: PathBuf,
    /// Run in this named network namespace (the host's, in a simulated cluster): where Docker
    /// runs and the veth pairs are made.
    #[arg(long, env = "OVERLAY_NETNS")]
    pub netns: Option<String>,
}

pub async fn run(args: DockerPluginArgs) -> anyhow::Result<()> {
    if args.name.is_empty() || args.name.contains(['/', ' ']) {
        anyhow::bail!("--name {:?} is not a plugin name", args.name);
    }
    if DOCKER_BUILTIN_DRIVERS.contains(&args.name.as_str()) {
        anyhow::bail!("--name {}: Docker's built-in {} driver would answer `docker network create -d {}` instead of this plugin; keep the default ({DOCKER_PLUGIN_NAME}) or choose another name", args.name, args.name, args.name);
    }
    let store = Store::open(&args.creds.access(&args.store)).await?;
    let node = match args.node {
        Some(n) => n,
        None => this_node(&store).await?,
    };
    let socket = args.socket_dir.join(format!("{}.sock", args.name));
    let stop = async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    };
    serve(Plugin { store, node, scope: args.scope }, socket, stop).await?;
    Ok(())
}
