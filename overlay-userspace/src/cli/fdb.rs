//! `overlay fdb`: the node's tables, readable.
use std::net::Ipv4Addr;

use clap::Args;
use overlay_common::{FDB_GATEWAY, FDB_LOCAL, VNI_F_INTERNAL, ip_from_map};

use super::NodeArgs;
use crate::{model::Mac, dataplane::Dataplane, control::desired::MapState};

#[derive(Args, Debug)]
pub struct FdbArgs {
    #[command(flatten)]
    pub node: NodeArgs,
}

pub fn run(args: FdbArgs) -> anyhow::Result<()> {
    let dp = Dataplane::open_pinned(&args.node.pin_dir()?)?;
    print!("{}", render(&dp.read_state()?));
    Ok(())
}

fn ip(v: u32) -> Ipv4Addr {
    Ipv4Addr::from(ip_from_map(v))
}

pub fn render(s: &MapState) -> String {
    let mut o = String::new();
    o += &format!(
        "node: vtep {} underlay ifindex {} vxlan port {}\n",
        ip(s.config.vtep), s.config.underlay_ifindex, s.config.vxlan_port
    );
    o += "\nVNIs:";
    for (v, info) in &s.vnis {
        let internal = if info.flags & VNI_F_INTERNAL != 0 { " (internal)" } else { "" };
        o += &format!(" {v}{internal}");
    }
    o += "\n\noverlay subnets (never reached through a gateway):";
    for ((addr, len), info) in &s.subnets {
        o += &format!(" {}/{len} (VNI {})", ip(*addr), info.vni);
    }
    o += "\n\nmember VTEPs:";
    for m in s.members.keys() {
        o += &format!(" {}", ip(*m));
    }
    o += &format!("\n\n{:>9}  {:<17}  {}\n", "VNI", "MAC", "where");
    for (k, v) in &s.fdb {
        let at = match v.kind {
            FDB_LOCAL => format!("local ifindex {}", v.ifindex),
            FDB_GATEWAY => "gateway (the way out through this node)".to_string(),
            _ => format!("vtep {}", ip(v.vtep)),
        };
        o += &format!("{:>9}  {:<17}  {}\n", k.vni, Mac(k.mac).to_string(), at);
    }
    o += &format!("\n{:>9}  {:<15}  {}\n", "VNI", "IPv4", "MAC (ARP answers)");
    for (k, v) in &s.neigh {
        o += &format!("{:>9}  {:<15}  {}\n", k.vni, ip(k.ip).to_string(), Mac(v.mac));
    }
    o += &format!("\n{:>9}  {:>9}  {:<15}  {}\n", "ifindex", "VNI", "IPv4", "MAC (local endpoints)");
    for (k, v) in &s.endpoints {
        o += &format!("{:>9}  {:>9}  {:<15}  {}\n", k, v.vni, ip(v.ip).to_string(), Mac(v.mac));
    }
    o
}
