//! The datapath's event ring, as `overlay monitor` uses it: ask the programs for events
//! (`MONITOR`), read them from the ring buffer (`EVENTS`), and count what the per-CPU rate limit
//! held back (`MONITOR_RATE`).
use std::{os::fd::AsRawFd, path::Path, time::Duration};

use aya::maps::{Array, HashMap, Map, MapData, PerCpuArray, ring_buf::RingBuf};
use overlay_common::{EndpointInfo, MonitorConfig, MonitorEvent, MonitorRate, NodeConfig};

use super::{
    DataplaneError, MAP_CONFIG, MAP_ENDPOINTS, MAP_EVENTS, MAP_FDB, MAP_MONITOR, MAP_MONITOR_RATE, Result, check_pins, map_err,
};

/// What a monitor asks the programs for.
#[derive(Clone, Copy, Debug)]
pub struct Ask {
    /// Every drop (up to the rate limit).
    pub drops: bool,
    /// One forward in `sample_every` too.
    pub forwards: bool,
    pub sample_every: u32,
    /// Events per CPU per second at most.
    pub max_per_sec: u32,
}

/// How long one request holds: a monitor renews it well before (every second), so a monitor
/// that dies without withdrawing it stops costing the datapath anything this long after.
pub const ASK_HOLDS: Duration = Duration::from_secs(2);

/// A node's event ring, opened from its pins.
pub struct Events {
    ring: RingBuf<MapData>,
    monitor: Array<MapData, MonitorConfig>,
    rate: PerCpuArray<MapData, MonitorRate>,
    endpoints: HashMap<MapData, u32, EndpointInfo>,
    config: Array<MapData, NodeConfig>,
    /// What this monitor last wrote, to withdraw only its own request.
    written: MonitorConfig,
}

/// CLOCK_MONOTONIC in ns: the clock of `bpf_ktime_get_ns`.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: ts is a valid timespec to fill.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

fn open_map(dir: &Path, name: &'static str) -> Result<Map> {
    let data = MapData::from_pin(dir.join(name)).map_err(map_err(name))?;
    Map::from_map_data(data).map_err(map_err(name))
}

impl Events {
    /// Opens the event maps of the node pinned in `dir` (refusing pins of another layout).
    pub fn open(dir: &Path) -> Result<Self> {
        if !dir.join(MAP_FDB).exists() {
            return Err(DataplaneError::NotPinned(dir.display().to_string()));
        }
        check_pins(dir)?;
        Ok(Events {
            ring: RingBuf::try_from(open_map(dir, MAP_EVENTS)?).map_err(map_err(MAP_EVENTS))?,
            monitor: Array::try_from(open_map(dir, MAP_MONITOR)?).map_err(map_err(MAP_MONITOR))?,
            rate: PerCpuArray::try_from(open_map(dir, MAP_MONITOR_RATE)?).map_err(map_err(MAP_MONITOR_RATE))?,
            endpoints: HashMap::try_from(open_map(dir, MAP_ENDPOINTS)?).map_err(map_err(MAP_ENDPOINTS))?,
            config: Array::try_from(open_map(dir, MAP_CONFIG)?).map_err(map_err(MAP_CONFIG))?,
            written: MonitorConfig::default(),
        })
    }

    /// Asks (again) for `ask` for the next [`ASK_HOLDS`]. Another monitor's request stays as it
    /// is (each field holds the later of both).
    pub fn ask(&mut self, ask: Ask) -> Result<()> {
        let until = monotonic_ns() + ASK_HOLDS.as_nanos() as u64;
        let mut cfg = self.monitor.get(&0, 0).map_err(map_err(MAP_MONITOR))?;
        if ask.drops {
            cfg.drops_until_ns = cfg.drops_until_ns.max(until);
        }
        if ask.forwards {
            cfg.all_until_ns = cfg.all_until_ns.max(until);
            cfg.sample_every = ask.sample_every.max(1);
        }
        cfg.max_per_sec = ask.max_per_sec;
        self.monitor.set(0, cfg, 0).map_err(map_err(MAP_MONITOR))?;
        self.written = cfg;
        Ok(())
    }

    /// Withdraws this monitor's request (what another monitor extended since stays).
    pub fn withdraw(&mut self) -> Result<()> {
        let mut cfg = self.monitor.get(&0, 0).map_err(map_err(MAP_MONITOR))?;
        if cfg.drops_until_ns == self.written.drops_until_ns {
            cfg.drops_until_ns = 0;
        }
        if cfg.all_until_ns == self.written.all_until_ns {
            cfg.all_until_ns = 0;
        }
        self.monitor.set(0, cfg, 0).map_err(map_err(MAP_MONITOR))
    }

    /// The next event waiting in the ring, if any.
    pub fn next_event(&mut self) -> Option<MonitorEvent> {
        let item = self.ring.next()?;
        if item.len() < size_of::<MonitorEvent>() {
            return None;
        }
        // SAFETY: the programs write whole MonitorEvents (Pod); read unaligned from the ring.
        Some(unsafe { std::ptr::read_unaligned(item.as_ptr().cast::<MonitorEvent>()) })
    }

    /// Events held back so far, summed over CPUs (rate limit, or the ring full).
    pub fn suppressed(&self) -> Result<u64> {
        let v = self.rate.get(&0, 0).map_err(map_err(MAP_MONITOR_RATE))?;
        Ok(v.iter().map(|r| r.suppressed).sum())
    }

    /// The local endpoint behind host-side veth `ifindex`.
    pub fn endpoint(&self, ifindex: u32) -> Option<EndpointInfo> {
        self.endpoints.get(&ifindex, 0).ok()
    }

    /// The node's VXLAN port (to read VXLAN frames captured on the underlay).
    pub fn vxlan_port(&self) -> u16 {
        self.config.get(&0, 0).map(|c| c.vxlan_port).unwrap_or(overlay_common::wire::VXLAN_PORT)
    }

    /// The ring's descriptor, to wait on (readable when events are waiting).
    pub fn raw_fd(&self) -> i32 {
        self.ring.as_raw_fd()
    }
}
