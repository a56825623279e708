//! `overlay agent`: keep this node's datapath equal to the cluster file or the etcd store.
use std::path::PathBuf;

use anyhow::bail;
use clap::Args;

use super::{NodeArgs, state::parse_ip};
use crate::{model, source::store::follow::Registration};

#[derive(Args, Debug)]
pub struct AgentArgs {
    /// The cluster file every node shares (YAML; see docs/config.md). Edits are picked up
    /// within a second; a bad edit is rejected whole and the datapath keeps its last good state.
    #[arg(long, env = "OVERLAY_CLUSTER", conflicts_with = "store", required_unless_present = "store")]
    pub cluster: Option<PathBuf>,
    /// The etcd store instead of a file: etcd://HOST:PORT[,HOST:PORT...]. The agent registers
    /// this node under a lease and follows networks, nodes and endpoints from it.
    #[arg(long, env = "OVERLAY_STORE")]
    pub store: Option<String>,
    #[command(flatten)]
    pub creds: super::state::StoreCredentialArgs,
    /// This node's VTEP address (with --store; a file names it per node).
    #[arg(long, requires = "store")]
    pub vtep: Option<String>,
    /// The underlay interface [default: the interface holding the VTEP address].
    #[arg(long, requires = "store")]
    pub underlay: Option<String>,
    /// Lease TTL in seconds: other nodes drop this one this long after its agent stops renewing.
    #[arg(long, default_value_t = 10, requires = "store")]
    pub lease_ttl: i64,
    #[command(flatten)]
    pub node: NodeArgs,
    /// Run in this named network namespace (the host's, in a simulated cluster) without
    /// leaving the host's mount namespace, so pins stay where other processes look.
    #[arg(long, env = "OVERLAY_NETNS")]
    pub netns: Option<String>,
    /// Where the containers' questions for names outside the overlay go: IP[:PORT], repeatable
    /// or comma-separated [default: the nameservers of this node's /etc/resolv.conf].
    #[arg(long, env = "OVERLAY_DNS_UPSTREAM", value_delimiter = ',')]
    pub dns_upstream: Vec<String>,
    /// How the underlay receives overlay traffic: `tc` (the TC ingress alone) or `xdp` (an XDP
    /// program in front of it decapsulates and redirects what it can; the rest goes on to TC).
    /// Wins over the node's `datapath:` in the cluster file [default: that, else tc].
    #[arg(long, env = "OVERLAY_DATAPATH")]
    pub datapath: Option<model::Datapath>,
    /// How this node's tasks answer clients of a published port that came through another
    /// node: `node` (back through that node, which gives them its address and the published
    /// port as source) or `direct` (straight to the client with that source, so the receiving
    /// node carries only the requests). `direct` needs an underlay that lets this node send
    /// with another node's address as source. Wins over the node's `mesh_return:` in the
    /// cluster file [default: that, else node].
    #[arg(long, env = "OVERLAY_MESH_RETURN")]
    pub mesh_return: Option<model::MeshReturn>,
    /// Serve Prometheus metrics at http://ADDR:PORT/metrics (off unless given; bound to exactly
    /// this address: 127.0.0.1:9464 keeps them on the node). docs/metrics.md lists them.
    #[arg(long, env = "OVERLAY_METRICS", value_name = "ADDR:PORT")]
    pub metrics: Option<std::net::SocketAddr>,
}

/// `--dns-upstream`, or the node's resolv.conf.
fn dns_upstreams(given: &[String]) -> anyhow::Result<Vec<std::net::SocketAddr>> {
    if given.is_empty() {
        let text = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
        return Ok(crate::control::resolver::upstreams_from_resolv_conf(&text));
    }
    given
        .iter()
        .map(|s| {
            s.parse::<std::net::SocketAddr>()
                .or_else(|_| s.parse::<std::net::Ipv4Addr>().map(|ip| std::net::SocketAddr::from((ip, 53))))
                .map_err(|_| anyhow::anyhow!("--dns-upstream {s:?} is not IP or IP:PORT"))
        })
        .collect()
}

pub async fn run(args: AgentArgs) -> anyhow::Result<()> {
    let pin_dir = args.node.pin_dir()?;
    let dns = dns_upstreams(&args.dns_upstream)?;
    let opts = crate::control::agent::NodeOptions { datapath: args.datapath, mesh_return: args.mesh_return };
    let stop = async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    };
    if let Some(addr) = args.metrics {
        // Bound before anything else starts: a taken address fails the agent at once.
        tokio::spawn(crate::insight::metrics::serve(addr, pin_dir.clone()).await?);
    }
    match (&args.cluster, &args.store) {
        (Some(file), _) => crate::control::agent::run_with_file(&args.node.node, file, &pin_dir, dns, opts, stop).await?,
        (None, Some(url)) => {
            let Some(vtep) = &args.vtep else { bail!("--store needs --vtep: this node's underlay address") };
            if !(1..=3600).contains(&args.lease_ttl) {
                bail!("--lease-ttl {} is not between 1 and 3600 seconds", args.lease_ttl);
            }
            parse_ip("vtep", vtep)?;
            // The node's record says which datapath it runs (`node ls` shows it).
            let node = model::node_entry("agent", args.node.node.clone(), vtep, args.underlay.clone(), args.datapath.map(model::Datapath::name), args.mesh_return.map(model::MeshReturn::name))?;
            let reg = Registration { node, ttl: args.lease_ttl };
            crate::control::agent::run_with_store(&args.creds.access(url), reg, &pin_dir, dns, opts, stop).await?
        }
        (None, None) => bail!("pass --cluster FILE or --store etcd://HOST:PORT"),
    }
    Ok(())
}
