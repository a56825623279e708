//! `overlay monitor`: a live stream of the datapath's events (drops, and with `--type all` a
//! sampled share of forwards), one line each, read from the node's event ring.
use std::{
    io::Write as _,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
};

use anyhow::{Context as _, bail};
use clap::{Args, ValueEnum};

use super::state::StateArgs;
use crate::{
    dataplane::{
        self,
        events::{Ask, Events},
    },
    insight::monitor::{self, Filter},
};

/// Which events to show.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum EventType {
    /// Every drop, with its reason.
    Drop,
    /// Drops, and one forward in --sample.
    All,
}

#[derive(Args, Debug)]
pub struct MonitorArgs {
    /// The node whose datapath to watch [default: the only node pinned on this machine].
    #[arg(long, env = "OVERLAY_NODE")]
    pub node: Option<String>,
    /// Directory holding one pin directory per node [default: <bpffs>/overlay].
    #[arg(long, env = "OVERLAY_PIN_ROOT")]
    pub pin_root: Option<std::path::PathBuf>,
    /// What to show.
    #[arg(long = "type", value_enum, default_value = "drop")]
    pub kind: EventType,
    /// Only this network: its VNI, or its name (looked up in --store or --cluster).
    #[arg(long)]
    pub network: Option<String>,
    /// One JSON object per line instead of text.
    #[arg(long)]
    pub json: bool,
    /// With --type all: one forward in this many (per CPU) is shown.
    #[arg(long, default_value_t = 100)]
    pub sample: u32,
    /// Events per CPU per second at most, so that a flood of drops cannot cost the datapath
    /// more than this many events; what is held back is counted and reported.
    #[arg(long, default_value_t = 1000)]
    pub rate: u32,
    /// Stop after this many events.
    #[arg(long)]
    pub count: Option<u64>,
    #[command(flatten)]
    pub state: StateArgs,
}

pub async fn run(args: MonitorArgs) -> anyhow::Result<()> {
    if args.sample == 0 || args.rate == 0 {
        bail!("--sample and --rate must be at least 1");
    }
    // A network given by name is looked up in the cluster state (only then: the events
    // themselves need nothing but the node's pins, and a monitor must work with the store down).
    let network: Option<(u32, Option<String>)> = match &args.network {
        None => None,
        Some(n) => match n.parse::<u32>() {
            Ok(v) => Some((v, None)),
            Err(_) => {
                if args.state.store.is_none() && args.state.cluster.is_none() {
                    bail!("--network {n}: give its VNI, or pass --store or --cluster to look its name up");
                }
                Some((args.state.open().await?.network(n).await?.vni, Some(n.clone())))
            }
        },
    };
    let vni = network.as_ref().map(|(v, _)| *v);
    let name = network.and_then(|(_, n)| n);
    let node = match &args.node {
        Some(n) => n.clone(),
        None => match dataplane::pinned_nodes(args.pin_root.as_deref())?.as_slice() {
            [one] => one.clone(),
            [] => bail!("no node's datapath is pinned on this machine (has an agent run here?); pass --node"),
            many => bail!("several nodes are pinned on this machine ({}): pass --node", many.join(", ")),
        },
    };
    let dir = dataplane::node_pin_dir(args.pin_root.as_deref(), &node)?;
    let mut events = Events::open(&dir).with_context(|| format!("opening the event ring of node {node}"))?;
    let ask = Ask { drops: true, forwards: args.kind == EventType::All, sample_every: args.sample, max_per_sec: args.rate };
    let filter = Filter { all: args.kind == EventType::All, vni };
    let stop = Arc::new(AtomicBool::new(false));
    let stopper = stop.clone();
    tokio::spawn(async move {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        stopper.store(true, Ordering::Relaxed);
    });
    let (json, count) = (args.json, args.count);
    tokio::task::spawn_blocking(move || {
        let mut out = std::io::stdout().lock();
        monitor::follow(
            &mut events,
            ask,
            &filter,
            count,
            &stop,
            |mut line| {
                line.network = name.clone();
                let text = if json { serde_json::to_string(&line).unwrap_or_default() } else { line.to_string() };
                // A closed pipe (`| head`) ends the monitor.
                writeln!(out, "{text}").and_then(|()| out.flush()).is_ok()
            },
            |n| eprintln!("({n} events held back by the rate limit of {} per CPU per second, or a full ring)", ask.max_per_sec),
        )
    })
    .await??;
    Ok(())
}
