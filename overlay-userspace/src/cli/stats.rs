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
        "services": s.services.iter().map(|(k, c)| serde_json::json!({
            "vni": k.vni, "vip": vip_port(k), "task": ip(k.task).to_string(),
            "connections": c.connections, "packets": c.packets, "bytes": c.bytes,
        })).collect::<Vec<_>>(),
    })
}

fn ip(v: u32) -> std::net::Ipv4Addr {
    overlay_common::ip_from_map(v).into()
}

/// `VIP:port/proto` of a counter's key.
fn vip_port(k: &overlay_common::LbStatsKey) -> String {
    let proto = if k.proto == 17 { "udp" } else { "tcp" };
    format!("{}:{}/{proto}", ip(k.vip), u16::from_be(k.vip_port))
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
    if !s.services.is_empty() {
        // Per task, then the service port's total (all its tasks).
        out += &format!("\n{:<24} {:<15} {:>12} {:>12} {:>14}\n", "VIP port", "task", "connections", "packets", "bytes");
        let mut keys: Vec<_> = s.services.keys().collect();
        keys.sort_by_key(|k| (k.vni, u32::from_be(k.vip), u16::from_be(k.vip_port), k.proto, u32::from_be(k.task)));
        let mut i = 0;
        while i < keys.len() {
            let group: Vec<_> = keys[i..].iter().take_while(|k| (k.vni, k.vip, k.vip_port, k.proto) == (keys[i].vni, keys[i].vip, keys[i].vip_port, keys[i].proto)).collect();
            let (mut tc, mut tp, mut tb) = (0, 0, 0);
            for k in &group {
                let c = &s.services[k];
                out += &format!("{:<24} {:<15} {:>12} {:>12} {:>14}\n", vip_port(k), ip(k.task).to_string(), c.connections, c.packets, c.bytes);
                (tc, tp, tb) = (tc + c.connections, tp + c.packets, tb + c.bytes);
            }
            out += &format!("{:<24} {:<15} {:>12} {:>12} {:>14}\n", vip_port(keys[i]), "(all tasks)", tc, tp, tb);
            i += group.len();
        }
    }
    out
}
