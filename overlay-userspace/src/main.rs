//! `overlay`: agent and CLI of the kernel-accelerated VXLAN overlay.
use clap::{Parser, Subcommand};
use overlay::cli;
use tracing_subscriber::EnvFilter;

/// A VXLAN overlay for containers whose datapath is eBPF (TC programs written with aya).
///
/// Each node runs `overlay agent`; it fills the datapath's maps from the cluster description and
/// never touches a packet. Maps and program links are pinned in bpffs, so forwarding goes on
/// while the agent restarts or is stopped.
#[derive(Parser, Debug)]
#[command(version, about, long_about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the node agent: load the datapath and keep it equal to the cluster file or store.
    Agent(cli::agent::AgentArgs),
    /// Create, list, inspect and remove networks (in the etcd store).
    Network(cli::network::NetworkArgs),
    /// Attach network namespaces to networks, detach and list them.
    Endpoint(cli::endpoint::EndpointArgs),
    /// Create, list, inspect and remove services: a VIP balanced over tasks (in the etcd store).
    Service(cli::service::ServiceArgs),
    /// List the cluster's nodes and whether they are up.
    Node(cli::node::NodeCmdArgs),
    /// Show per-VNI and per-verdict counters from the node's pinned maps.
    Stats(cli::stats::StatsArgs),
    /// Show the node's tables: FDB, neighbours, endpoints, members, VNIs.
    Fdb(cli::fdb::FdbArgs),
    /// Live stream of the datapath's events: drops with their reason (and with --type all a
    /// sampled share of forwards), one line each.
    Monitor(cli::monitor::MonitorArgs),
    /// Build a simulated 3-host cluster here, show connectivity, isolation, MTU, a VXLAN frame
    /// and counters, then remove it all.
    Demo(cli::demo::DemoArgs),
    /// Measure native routing, Docker's kernel-vxlan overlay and this datapath side by side.
    Bench(cli::bench::BenchArgs),
    /// Serve Docker's remote network driver API (libnetwork) for this node, beside its agent.
    DockerPlugin(cli::docker_plugin::DockerPluginArgs),
    /// Act as a CNI plugin (spec 1.0.0): CNI_* environment, configuration on stdin. Runtimes
    /// call the binary without arguments; this form is for trying it by hand.
    Cni,
    /// Remove a node's datapath: endpoint veths, programs and pinned maps.
    Down(cli::down::DownArgs),
}

/// Whether this process was started as a CNI plugin: `overlay cni`, or the runtime's call of the
/// plugin binary without arguments and with CNI_COMMAND set.
fn invoked_as_cni() -> bool {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("cni") => true,
        None => std::env::var_os("CNI_COMMAND").is_some(),
        _ => false,
    }
}

fn main() -> anyhow::Result<()> {
    if invoked_as_cni() {
        // CNI: stdout is the protocol; logs (warnings only) go to stderr.
        tracing_subscriber::fmt().with_env_filter(EnvFilter::new("warn")).with_writer(std::io::stderr).with_ansi(false).init();
        let _ = overlay::dataplane::join_host_mount_ns();
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        let code = rt.block_on(cli::cni::run());
        std::process::exit(if code == std::process::ExitCode::SUCCESS { 0 } else { 1 });
    }
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let _ = tracing_log::LogTracer::init();
    // Enter the node's network namespace before any thread exists, so every runtime thread is
    // in it; the mount namespace stays the host's.
    let netns = match &cli.command {
        Command::Agent(a) => a.netns.clone(),
        Command::Down(d) => d.netns.clone(),
        Command::DockerPlugin(d) => d.netns.clone(),
        _ => None,
    };
    if let Some(ns) = netns {
        let path = overlay::host::netlink::netns_path(&ns);
        overlay::host::netlink::enter_netns(&path).map_err(|e| anyhow::anyhow!("entering network namespace {}: {e}", path.display()))?;
    }
    // `ip netns exec` remounts /sys: find the host's bpffs (and pins) again while still
    // single-threaded. Commands that pin refuse to run without it rather than pin into a
    // private bpffs nobody else sees.
    let pins = matches!(cli.command, Command::Agent(_) | Command::Down(_) | Command::DockerPlugin(_) | Command::Stats(_) | Command::Fdb(_) | Command::Monitor(_));
    match overlay::dataplane::join_host_mount_ns() {
        Ok(overlay::dataplane::MountNs::Joined(pid)) => tracing::debug!(pid, "joined the host's mount namespace (of that process) to reach its bpffs"),
        Ok(_) => {}
        Err(e) if pins => return Err(e.into()),
        Err(e) => tracing::debug!("no host bpffs: {e}"),
    }
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    rt.block_on(async move {
        match cli.command {
            Command::Agent(a) => cli::agent::run(a).await,
            Command::Network(a) => cli::network::run(a).await,
            Command::Endpoint(a) => cli::endpoint::run(a).await,
            Command::Service(a) => cli::service::run(a).await,
            Command::Node(a) => cli::node::run(a).await,
            Command::Stats(a) => cli::stats::run(a),
            Command::Fdb(a) => cli::fdb::run(a),
            Command::Monitor(a) => cli::monitor::run(a).await,
            Command::Demo(a) => cli::demo::run(a).await,
            Command::Down(a) => cli::down::run(a).await,
            Command::Bench(a) => cli::bench::run(a).await,
            Command::DockerPlugin(a) => cli::docker_plugin::run(a).await,
            Command::Cni => unreachable!("handled before argument parsing"),
        }
    })
}
