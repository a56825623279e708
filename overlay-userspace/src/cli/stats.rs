//! `overlay stats`: per-VNI and per-reason counters from the pinned maps (agent running or not).
use clap::Args;
use overlay_common::Reason;

use super::NodeArgs;
use crate::dataplane::{Dataplane, Stats};

#[derive(Args, Debug)]
pub struct StatsArgs {
    #[command(flatten)]
    pub node: NodeArgs,
    /// Print JSON instead of tables.
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: StatsArgs) -> anyhow::Result<()> {
    let dp = Dataplane::open_pinned(&args.node.pin_dir()?)?;
    let s = dp.stats()?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&to_json(&s))?);
    } else {
        print!("{}", render(&s));
    }
    Ok(())
}

pub fn to_json(s: &Stats) -> serde_json::Value {
    serde_json::json!({
        "vnis": s.vnis.iter().map(|(v, c)| serde_json::json!({
            "vni": v, "rx_packets": c.rx.packets, "rx_bytes": c.rx.bytes,
            "tx_packets": c.tx.packets, "tx_bytes": c.tx.bytes,
        })).collect::<Vec<_>>(),
        "reasons": s.reasons.iter().map(|(r, d, c)| serde_json::json!({
            "reason": r.name(), "code": *r as u32, "direction": d.name(),
            "drop": r.is_drop(), "packets": c.packets, "bytes": c.bytes,
        })).collect::<Vec<_>>(),
    })
}

pub fn render(s: &Stats) -> String {
    let mut out = String::new();
    out += &format!("{:>9} {:>12} {:>14} {:>12} {:>14}\n", "VNI", "rx packets", "rx bytes", "tx packets", "tx bytes");
    for (vni, c) in &s.vnis {
        out += &format!("{:>9} {:>12} {:>14} {:>12} {:>14}\n", vni, c.rx.packets, c.rx.bytes, c.tx.packets, c.tx.bytes);
    }
    out += &format!("\n{:<24} {:<8} {:>12} {:>14}\n", "verdict", "hook", "packets", "bytes");
    for (r, d, c) in &s.reasons {
        out += &format!("{:<24} {:<8} {:>12} {:>14}\n", r.name(), d.name(), c.packets, c.bytes);
    }
    if s.reasons.iter().all(|(r, _, _)| !Reason::is_drop(*r)) {
        out += "(no drops)\n";
    }
    out
}
