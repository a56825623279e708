//! Nanoseconds per packet of each program under `BPF_PROG_TEST_RUN`, next to the pass-through
//! floor loaded the same way.
//!
//! The kernel runs a test-run program `repeat` times on the *same* skb, so a program that
//! rewrites its packet (encapsulation grows it by 50 bytes, decapsulation strips them) would see
//! its own output from the second repetition on. Each measurement is therefore one packet per
//! call (`repeat = 1`) over many calls, using the duration the kernel measures around the
//! program; the floor is measured the same way, so the fixed cost of the harness is in both.
use std::{net::Ipv4Addr, path::PathBuf};

use anyhow::bail;
use serde::Serialize;

use crate::{
    model,
    dataplane::{self, Dataplane, PROG_EGRESS, PROG_INGRESS, PROG_MONITOR_IDLE, PROG_PASS},
    control::desired, lab::frames,
};

use overlay_common::wire::{TC_ACT_OK, TC_ACT_REDIRECT};

/// The node the programs play (node2), with its local endpoint on loopback's ifindex, which is
/// where test-run packets arrive.
pub(super) const CLUSTER: &str = "
nodes:
  - {name: node1, vtep: 192.168.50.1}
  - {name: node2, vtep: 192.168.50.2}
networks:
  - {name: bench-net, vni: 4097, subnet: 10.0.1.0/24}
endpoints:
  - {name: c1, network: bench-net, node: node1, ip: 10.0.1.2}
  - {name: c2, network: bench-net, node: node2, ip: 10.0.1.3, netns: c2}
";
pub(super) const TEST_RUN_IFINDEX: u32 = 1;
pub(super) const C1: Ipv4Addr = Ipv4Addr::new(10, 0, 1, 2);
pub(super) const C2: Ipv4Addr = Ipv4Addr::new(10, 0, 1, 3);
pub(super) const VTEP1: Ipv4Addr = Ipv4Addr::new(192, 168, 50, 1);
pub(super) const VTEP2: Ipv4Addr = Ipv4Addr::new(192, 168, 50, 2);
/// UDP payload of the measured packets, as in the traffic benchmark.
pub const PAYLOAD: usize = 64;

#[derive(Clone, Debug, Serialize)]
pub struct ProgCost {
    /// Program name.
    pub program: &'static str,
    /// What the packet exercises.
    pub path: &'static str,
    /// Median over batches of the mean kernel-measured duration, ns per packet.
    pub ns_per_packet: f64,
    pub min_ns: f64,
    pub max_ns: f64,
    /// ns_per_packet / floor's ns_per_packet.
    pub vs_floor: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct ProgCosts {
    pub packets_per_program: u64,
    pub floor: ProgCost,
    pub encap: ProgCost,
    pub decap: ProgCost,
    /// The floor plus the monitor's check with nobody listening (`overlay_monitor_idle`): what
    /// the drop monitor's hook costs every packet when no `overlay monitor` runs.
    pub monitor_idle: ProgCost,
    /// The floor run with a large repeat count inside one call (the program alone, without the
    /// per-call harness), for reference.
    pub floor_repeat_ns: f64,
}

pub(super) fn mac(ip: Ipv4Addr) -> [u8; 6] {
    model::Mac::from_ip(ip).0
}

/// c2 (local) -> c1 (behind VTEP1): the encapsulation path.
pub fn encap_frame() -> Vec<u8> {
    let mut f = frames::eth(mac(C1), mac(C2), 0x0800);
    f.extend(frames::ipv4(C2, C1, 17, 8 + PAYLOAD, 0x4000, &[]));
    f.extend(frames::udp(40000, 5201, PAYLOAD));
    f.extend([0x5a; PAYLOAD]);
    f
}

/// c1 -> c2 inside VXLAN from VTEP1: the decapsulation path.
pub fn decap_frame() -> Vec<u8> {
    let mut inner = frames::eth(mac(C2), mac(C1), 0x0800);
    inner.extend(frames::ipv4(C1, C2, 17, 8 + PAYLOAD, 0x4000, &[]));
    inner.extend(frames::udp(40000, 5201, PAYLOAD));
    inner.extend([0x5a; PAYLOAD]);
    frames::vxlan_frame(VTEP1, VTEP2, 4789, 0x08, 4097, &inner)
}

/// A loaded datapath in its own pin directory, removed on drop.
pub(super) struct Loaded {
    pub(super) dp: Dataplane,
    pub(super) dir: PathBuf,
}

impl Drop for Loaded {
    fn drop(&mut self) {
        if let Err(e) = dataplane::remove_pins(&self.dir) {
            eprintln!("cleanup of {}: {e:?}", self.dir.display());
        }
    }
}

impl Loaded {
    /// Loads the datapath into `dir` (with `opts`); a failed load removes what it pinned there.
    pub(super) fn load(dir: PathBuf, opts: &dataplane::LoadOptions) -> anyhow::Result<Self> {
        match Dataplane::load_with(&dir, opts) {
            Ok(dp) => Ok(Loaded { dp, dir }),
            Err(e) => {
                if let Err(c) = dataplane::remove_pins(&dir) {
                    eprintln!("cleanup of {}: {c:?}", dir.display());
                }
                Err(anyhow::Error::new(e).context("loading the datapath for test runs"))
            }
        }
    }
}

/// Measures the programs (and the idle monitor hook) with `packets` packets each, in `batches`
/// batches.
pub fn measure(packets: u64, batches: u32) -> anyhow::Result<ProgCosts> {
    let dir = dataplane::host_bpffs()?.join("overlay").join(format!("bench-progcost-{}", std::process::id()));
    let mut l = Loaded::load(dir, &Default::default())?;
    let cluster = crate::source::file::parse(CLUSTER)?;
    let plan = desired::plan(&cluster, "node2")?;
    let state = plan.map_state(TEST_RUN_IFINDEX, &[(&plan.local[0], TEST_RUN_IFINDEX)]);
    l.dp.apply(&state)?;

    let enc = encap_frame();
    let dec = decap_frame();
    let per_batch = (packets / batches as u64).max(1);
    // The programs take turns batch by batch, so that drift hits all of them.
    let progs: [(&'static str, &[u8], i32); 4] = [
        (PROG_PASS, &enc, TC_ACT_OK),
        (PROG_EGRESS, &enc, TC_ACT_REDIRECT),
        (PROG_INGRESS, &dec, TC_ACT_REDIRECT),
        (PROG_MONITOR_IDLE, &enc, TC_ACT_OK),
    ];
    for (prog, frame, want) in progs {
        // Warm caches and the branch predictor.
        batch(&mut l.dp, prog, frame, want, 1000)?;
    }
    let mut means: [Vec<f64>; 4] = Default::default();
    for _ in 0..batches {
        for (i, (prog, frame, want)) in progs.iter().enumerate() {
            means[i].push(batch(&mut l.dp, prog, frame, *want, per_batch)?);
        }
    }
    let cost = |i: usize| {
        let s = super::stats::Summary::of(&means[i]);
        ProgCost { program: progs[i].0, path: "", ns_per_packet: s.median, min_ns: s.min, max_ns: s.max, vs_floor: 0.0 }
    };
    let (mut floor, mut encap, mut decap, mut monitor_idle) = (cost(0), cost(1), cost(2), cost(3));
    let f = floor.ns_per_packet;
    for c in [&mut floor, &mut encap, &mut decap, &mut monitor_idle] {
        c.vs_floor = c.ns_per_packet / f;
    }
    floor.path = "pass-through (TC_ACT_OK)";
    encap.path = "encapsulate 64-byte UDP, redirect_neigh";
    decap.path = "decapsulate 64-byte UDP, redirect_peer";
    monitor_idle.path = "pass-through + the monitor's check, nobody listening";
    let (_, _, d) = l.dp.test_run(PROG_PASS, &enc, 1_000_000)?;
    Ok(ProgCosts { packets_per_program: per_batch * batches as u64, floor, encap, decap, monitor_idle, floor_repeat_ns: d.as_nanos() as f64 })
}

/// Mean kernel-measured ns of `n` single-packet runs of `prog`, checking every verdict.
pub(super) fn batch(dp: &mut Dataplane, prog: &'static str, frame: &[u8], want: i32, n: u64) -> anyhow::Result<f64> {
    let mut total = 0u128;
    for _ in 0..n {
        let (v, _, d) = dp.test_run(prog, frame, 1)?;
        if v != want {
            bail!("{prog} returned {v} instead of {want}: the measured path is not the intended one");
        }
        total += d.as_nanos();
    }
    Ok(total as f64 / n as f64)
}

/// c2 asks its gateway for `c1` (A): the datapath's DNS answer path.
pub fn dns_frame() -> Vec<u8> {
    let mut dns = vec![0x42, 0x42, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0, 2, b'c', b'1', 0, 0, 1, 0, 1];
    let gw = Ipv4Addr::new(10, 0, 1, 1);
    let mut f = frames::eth(mac(gw), mac(C2), 0x0800);
    f.extend(frames::ipv4(C2, gw, 17, 8 + dns.len(), 0x4000, &[]));
    f.extend(frames::udp(40000, 53, dns.len()));
    f.append(&mut dns);
    f
}

/// ns per DNS answer of the egress program and of the pass-through floor under
/// `BPF_PROG_TEST_RUN`, `packets` each in `batches` batches (medians): (answer, floor).
pub fn dns_answer_cost(packets: u64, batches: u32) -> anyhow::Result<(super::stats::Summary, super::stats::Summary)> {
    let dir = dataplane::host_bpffs()?.join("overlay").join(format!("bench-dnscost-{}", std::process::id()));
    let mut l = Loaded::load(dir, &Default::default())?;
    let cluster = crate::source::file::parse(CLUSTER)?;
    let plan = desired::plan(&cluster, "node2")?;
    l.dp.apply(&plan.map_state(TEST_RUN_IFINDEX, &[(&plan.local[0], TEST_RUN_IFINDEX)]))?;
    let q = dns_frame();
    let per_batch = (packets / batches as u64).max(1);
    batch(&mut l.dp, PROG_EGRESS, &q, TC_ACT_REDIRECT, 1000)?;
    let (mut answer, mut floor) = (Vec::new(), Vec::new());
    for _ in 0..batches {
        answer.push(batch(&mut l.dp, PROG_EGRESS, &q, TC_ACT_REDIRECT, per_batch)?);
        floor.push(batch(&mut l.dp, PROG_PASS, &q, TC_ACT_OK, per_batch)?);
    }
    Ok((super::stats::Summary::of(&answer), super::stats::Summary::of(&floor)))
}
