//! `overlay demo`: a simulated 3-host cluster on this machine, end to end.
use std::{
    net::Ipv4Addr,
    process::{Command, Stdio},
    sync::atomic::{AtomicBool, Ordering},
    time::Duration,
};

use anyhow::{Context as _, bail};
use clap::Args;

use crate::{
    dataplane::Dataplane,
    lab::sim::{self, Container, Sim},
};

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

#[derive(Args, Debug)]
pub struct DemoArgs {
    /// Keep the cluster running until Ctrl-C after printing the results.
    #[arg(long)]
    pub hold: bool,
}

fn check_interrupted() -> anyhow::Result<()> {
    if INTERRUPTED.load(Ordering::Relaxed) {
        bail!("interrupted");
    }
    Ok(())
}

pub async fn run(args: DemoArgs) -> anyhow::Result<()> {
    tokio::spawn(async {
        if tokio::signal::ctrl_c().await.is_ok() {
            INTERRUPTED.store(true, Ordering::Relaxed);
        }
    });
    tokio::task::spawn_blocking(move || demo(args)).await?
}

/// Reachability of every ordered pair, pinged in parallel.
pub fn matrix(sim: &Sim, cs: &[Container]) -> Vec<Vec<Option<bool>>> {
    std::thread::scope(|s| {
        let handles: Vec<Vec<_>> = cs
            .iter()
            .map(|a| cs.iter().map(|b| (a.name != b.name).then(|| s.spawn(|| sim.ping(&a.netns, b.ip, 3, None)))).collect())
            .collect();
        handles.into_iter().map(|row| row.into_iter().map(|h| h.map(|h| h.join().unwrap_or(false))).collect()).collect()
    })
}

/// One VXLAN frame's outer fields, from a pcap file with Ethernet link type.
pub struct VxlanFrame {
    pub outer_src: Ipv4Addr,
    pub outer_dst: Ipv4Addr,
    pub sport: u16,
    pub dport: u16,
    pub vni: u32,
    pub flags: u8,
    pub len: usize,
}

/// Reads the first frame of a classic pcap file and decodes its outer headers.
pub fn first_vxlan_frame(pcap: &[u8]) -> Option<VxlanFrame> {
    if pcap.len() < 24 + 16 {
        return None;
    }
    let le = pcap[0..4] == [0xd4, 0xc3, 0xb2, 0xa1];
    let rd = |b: &[u8]| if le { u32::from_le_bytes([b[0], b[1], b[2], b[3]]) } else { u32::from_be_bytes([b[0], b[1], b[2], b[3]]) };
    let caplen = rd(&pcap[24 + 8..24 + 12]) as usize;
    let f = pcap.get(40..40 + caplen)?;
    if f.len() < 50 || f[12..14] != [0x08, 0x00] || f[23] != 17 {
        return None;
    }
    let ihl = (f[14] & 0x0f) as usize * 4;
    let u = 14 + ihl;
    let v = u + 8;
    let g = f.get(v..v + 8)?;
    Some(VxlanFrame {
        outer_src: Ipv4Addr::new(f[26], f[27], f[28], f[29]),
        outer_dst: Ipv4Addr::new(f[30], f[31], f[32], f[33]),
        sport: u16::from_be_bytes([f[u], f[u + 1]]),
        dport: u16::from_be_bytes([f[u + 2], f[u + 3]]),
        flags: g[0],
        vni: u32::from_be_bytes([0, g[4], g[5], g[6]]),
        len: f.len(),
    })
}

fn demo(args: DemoArgs) -> anyhow::Result<()> {
    for tool in ["ip", "ping", "tcpdump"] {
        if Command::new(tool).arg("-V").stdout(Stdio::null()).stderr(Stdio::null()).status().is_err() {
            bail!("`{tool}` is not installed; run `cargo xtask setup`");
        }
    }
    let exe = std::env::current_exe().context("finding the overlay binary")?;
    let mut sim = Sim::new("d", &exe)?;
    println!("== building a simulated cluster: 3 hosts on an underlay switch (192.168.50.0/24), prefix {}", sim.prefix);
    let (cs, file) = sim::start_standard(&mut sim, 3)?;
    println!("   cluster file: {}", file.display());
    println!("   agents: node1..node3, pins under {}", sim.pin_root.display());
    for c in &cs {
        println!("   container {:<6} {:<10} on node{}  {}  {}", c.name, c.network, c.node, c.ip, sim::docker_mac(c.ip));
    }
    check_interrupted()?;

    println!("\n== connectivity matrix (ping, row -> column; every container has a route to the other network too)");
    let m = matrix(&sim, &cs);
    print!("{:>8}", "");
    for c in &cs {
        print!("{:>7}", c.name);
    }
    println!();
    let mut wrong = 0;
    for (i, a) in cs.iter().enumerate() {
        print!("{:>8}", a.name);
        for (j, b) in cs.iter().enumerate() {
            let cell = match m[i][j] {
                None => "-".to_string(),
                Some(ok) => {
                    let expect = a.network == b.network;
                    if ok != expect {
                        wrong += 1;
                    }
                    match (ok, expect) {
                        (true, true) => "ok".into(),
                        (false, false) => "x".into(),
                        (true, false) => "LEAK".into(),
                        (false, true) => "FAIL".into(),
                    }
                }
            };
            print!("{cell:>7}");
        }
        println!();
    }
    println!("   ok = reachable (same network, across hosts and on one host); x = isolated (other network)");
    if wrong == 0 {
        println!("   all {} pairs as expected", cs.len() * (cs.len() - 1));
    } else {
        println!("   {wrong} pairs NOT as expected");
    }
    check_interrupted()?;

    let (web1, web2) = (&cs[0], &cs[1]);
    let mtu = sim.exec(&web1.netns, &["cat", "/sys/class/net/eth0/mtu"])?;
    println!("\n== container MTU: {} (eth0 of {})", String::from_utf8_lossy(&mtu.stdout).trim(), web1.name);
    let ok1450 = sim.ping(&web1.netns, web2.ip, 1, Some((1422, true)));
    let ok1451 = sim.ping(&web1.netns, web2.ip, 1, Some((1423, true)));
    println!("   1450-byte IPv4 packet with DF, web1 -> web2 across hosts: {}", if ok1450 { "delivered" } else { "LOST" });
    println!("   1451-byte IPv4 packet with DF: {}", if ok1451 { "delivered (unexpected)" } else { "refused (larger than the MTU)" });
    check_interrupted()?;

    println!("\n== one VXLAN frame on host 2's underlay (tcpdump -i eth0 udp port 4789)");
    let pcap = sim.workdir.join("vxlan.pcap");
    let h2 = sim.host_ns(2);
    let mut dump = Command::new("ip")
        .args(["netns", "exec", &h2, "timeout", "10", "tcpdump", "-i", "eth0", "-nn", "-c", "1", "-U", "-w"])
        .arg(&pcap)
        .args(["udp", "port", "4789"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    std::thread::sleep(Duration::from_millis(700));
    sim.ping(&web1.netns, web2.ip, 2, None);
    let _ = dump.wait();
    match std::fs::read(&pcap).ok().as_deref().and_then(first_vxlan_frame) {
        Some(f) => {
            println!(
                "   outer {} -> {}  UDP {} -> {}  VXLAN flags {:#04x} VNI {}  ({} bytes on the wire)",
                f.outer_src, f.outer_dst, f.sport, f.dport, f.flags, f.vni, f.len
            );
            if let Ok(o) = Command::new("tcpdump").args(["-nn", "-e", "-r"]).arg(&pcap).stderr(Stdio::null()).output() {
                for l in String::from_utf8_lossy(&o.stdout).lines() {
                    println!("   tcpdump: {l}");
                }
            }
        }
        None => println!("   no VXLAN frame captured"),
    }
    check_interrupted()?;

    println!("\n== per-VNI counters (overlay stats --node nodeN)");
    for n in 1..=3 {
        let dp = Dataplane::open_pinned(&sim.pin_dir(&format!("node{n}")))?;
        println!("-- node{n}");
        for l in super::stats::render(&dp.stats()?).lines() {
            println!("   {l}");
        }
    }
    if args.hold {
        println!("\nholding the cluster; Ctrl-C removes it");
        while !INTERRUPTED.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    println!("\n== removing the simulated cluster");
    let errors = sim.cleanup();
    for e in &errors {
        println!("   cleanup: {e}");
    }
    if wrong != 0 || !ok1450 || ok1451 {
        bail!("the demo saw unexpected results (see above)");
    }
    Ok(())
}
