//! The in-place cost of the eBPF programs while traffic runs: the kernel's own run-time
//! statistics (`run_time_ns` / `run_cnt` of each program, kept while BPF statistics are
//! enabled), read for the programs attached by one topology's agents.
//!
//! Statistics are switched on with `BPF_ENABLE_STATS` rather than by writing the
//! `kernel.bpf_stats_enabled` sysctl: the kernel keeps them on while the returned descriptor is
//! open and goes back to the previous setting by itself when it closes, even if the benchmark
//! is killed, so there is no old value to restore by hand.
use std::{collections::BTreeMap, os::fd::OwnedFd};

use anyhow::Context as _;
use aya::programs::loaded_programs;
use serde::Serialize;

/// BPF run-time statistics, on while this lives.
pub struct StatsOn(#[expect(dead_code, reason = "held for its drop, which turns statistics off")] OwnedFd);

pub fn enable_stats() -> anyhow::Result<StatsOn> {
    aya::sys::enable_stats(aya::sys::Stats::RunTime).map(StatsOn).context("enabling BPF run-time statistics (BPF_ENABLE_STATS)")
}

/// Cumulative (run time ns, runs) per program name, summed over the given program ids.
#[derive(Clone, Debug, Default)]
pub struct Snapshot(BTreeMap<String, (u64, u64)>);

/// The ids of the programs attached through the links pinned under `<pin dir>/links` of each
/// directory in `pin_dirs` (the agents' node directories).
pub fn attached_programs(pin_dirs: &[std::path::PathBuf]) -> anyhow::Result<Vec<u32>> {
    let mut ids = Vec::new();
    for dir in pin_dirs {
        ids.extend(crate::dataplane::attached_program_ids(dir)?);
    }
    ids.sort_unstable();
    ids.dedup();
    Ok(ids)
}

/// The current statistics of programs `ids`, summed by program name.
pub fn snapshot(ids: &[u32]) -> anyhow::Result<Snapshot> {
    let mut out: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    for info in loaded_programs() {
        let info = info.context("listing loaded programs")?;
        if !ids.contains(&info.id()) {
            continue;
        }
        let name = info.name_as_str().unwrap_or("?").to_string();
        let e = out.entry(name).or_default();
        e.0 += info.run_time().as_nanos() as u64;
        e.1 += info.run_count();
    }
    Ok(Snapshot(out))
}

/// One program's in-place cost over a measurement.
#[derive(Clone, Debug, Serialize)]
pub struct InPlace {
    pub program: String,
    pub runs: u64,
    pub ns_per_run: f64,
}

/// What ran between two snapshots: ns per run of each program that ran.
pub fn delta(before: &Snapshot, after: &Snapshot) -> Vec<InPlace> {
    after
        .0
        .iter()
        .filter_map(|(name, &(ns1, n1))| {
            let (ns0, n0) = before.0.get(name).copied().unwrap_or_default();
            let runs = n1.saturating_sub(n0);
            (runs > 0).then(|| InPlace { program: name.clone(), runs, ns_per_run: ns1.saturating_sub(ns0) as f64 / runs as f64 })
        })
        .collect()
}

/// Statistics of programs attached by the agents pinning under `pin_dirs`, around `f`.
pub fn around<T>(pin_dirs: &[std::path::PathBuf], f: impl FnOnce() -> anyhow::Result<T>) -> anyhow::Result<(T, Vec<InPlace>)> {
    let _on = enable_stats()?;
    let ids = attached_programs(pin_dirs)?;
    let a = snapshot(&ids)?;
    let v = f()?;
    let b = snapshot(&ids)?;
    Ok((v, delta(&a, &b)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delta_is_per_run_of_what_ran() {
        let a = Snapshot([("overlay_egress".to_string(), (1000, 10)), ("overlay_ingress".to_string(), (500, 5))].into());
        let b = Snapshot([("overlay_egress".to_string(), (4000, 40)), ("overlay_ingress".to_string(), (500, 5))].into());
        let d = delta(&a, &b);
        assert_eq!(d.len(), 1, "a program that did not run is left out: {d:?}");
        assert_eq!((d[0].program.as_str(), d[0].runs, d[0].ns_per_run), ("overlay_egress", 30, 100.0));
    }
}
