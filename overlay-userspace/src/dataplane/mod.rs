//! The one owner of the datapath: the loaded programs, the pinned maps and links. Everything
//! else (agent, CLI, demo, tests) goes through this API and never touches a map directly.
use std::{
    collections::BTreeMap,
    fs, io,
    path::{Path, PathBuf},
};

use aya::{
    Ebpf, EbpfLoader,
    maps::{
        Array, DevMapHash, HashMap, Map, MapData, MapError, PerCpuArray, PerCpuHashMap, PerCpuValues,
        lpm_trie::{Key as LpmKey, LpmTrie},
        xdp::XdpMapError,
    },
    programs::{
        LinkOrder, ProgramError, SchedClassifier, TcAttachType, TestRun, TestRunOptions, Xdp, XdpMode,
        links::{FdLink, PinnedLink},
        tc::TcAttachOptions,
        xdp::XdpLink,
    },
    util::nr_cpus,
};
use overlay_common::{
    PIN_LAYOUT, PinLayout, Backend, Counter, CtKey, Direction, EndpointInfo, FdbEntry, FdbKey, LbCounters, LbStatsKey, MAGLEV_M, MAX_BACKENDS, MemberInfo, NameEntry, NameKey,
    NeighEntry, NeighKey, NodeConfig, PublishedEntry, PublishedKey, Reason, ServiceEntry, ServiceKey, SubnetInfo, VniCounters, VniInfo, stats_index,
};

pub mod events;

use crate::{
    defaults::{BPFFS, LINKS_SUBDIR, PIN_SUBDIR},
    control::desired::{MapState, PerVni},
};

/// The compiled programs, built by build.rs with aya-build.
pub static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/overlay-ebpf"));

/// Program names in the object.
pub const PROG_EGRESS: &str = "overlay_egress";
pub const PROG_INGRESS: &str = "overlay_ingress";
pub const PROG_PASS: &str = "overlay_pass";
/// The floor plus the monitor's check (the benchmark's measure of an idle monitor hook).
pub const PROG_MONITOR_IDLE: &str = "overlay_monitor_idle";
/// The XDP ingress of `--datapath xdp` (attached to the underlay in front of [`PROG_INGRESS`]).
pub const PROG_XDP: &str = "overlay_xdp_ingress";

const MAP_FDB: &str = "FDB";
const MAP_VNIS: &str = "VNIS";
const MAP_ENDPOINTS: &str = "ENDPOINTS";
const MAP_NEIGH: &str = "NEIGH";
const MAP_MEMBERS: &str = "MEMBERS";
const MAP_CONFIG: &str = "CONFIG";
const MAP_STATS: &str = "STATS";
const MAP_VNI_STATS: &str = "VNI_STATS";
const MAP_SUBNETS: &str = "SUBNETS";
const MAP_NAMES: &str = "NAMES";
const MAP_SERVICES: &str = "SERVICES";
const MAP_MAGLEV: &str = "MAGLEV";
const MAP_BACKENDS: &str = "BACKENDS";
const MAP_CONNECTIONS: &str = "CONNECTIONS";
const MAP_REVERSE: &str = "REVERSE";
const MAP_SERVICE_STATS: &str = "SERVICE_STATS";
const MAP_PUBLISHED: &str = "PUBLISHED";
const MAP_MESH_RETURN: &str = "MESH_RETURN";
const MAP_XDP_TARGETS: &str = "XDP_TARGETS";
const MAP_EVENTS: &str = "EVENTS";
const MAP_MONITOR: &str = "MONITOR";
const MAP_MONITOR_RATE: &str = "MONITOR_RATE";
/// The layout record: array[1] of [`PinLayout`], made and pinned by the agent (not declared by
/// the object), saying which [`PIN_LAYOUT`] the maps beside it have.
pub const MAP_LAYOUT: &str = "LAYOUT";
/// Every map and its one owner: the agent's desired state (written by [`Dataplane::apply`]
/// from a plan), the datapath itself (the connection tables: never written nor wiped by a
/// reconcile, so connections survive agent restarts and config changes), or the counters (the
/// datapath counts, `overlay stats` reads). All are pinned; `overlay down` removes them all.
const ALL_MAPS: [(&str, Owner); 22] = [
    (MAP_FDB, Owner::Desired),
    (MAP_VNIS, Owner::Desired),
    (MAP_ENDPOINTS, Owner::Desired),
    (MAP_NEIGH, Owner::Desired),
    (MAP_MEMBERS, Owner::Desired),
    (MAP_CONFIG, Owner::Desired),
    (MAP_SUBNETS, Owner::Desired),
    (MAP_NAMES, Owner::Desired),
    (MAP_SERVICES, Owner::Desired),
    (MAP_MAGLEV, Owner::Desired),
    (MAP_BACKENDS, Owner::Desired),
    (MAP_PUBLISHED, Owner::Desired),
    (MAP_XDP_TARGETS, Owner::Desired),
    (MAP_CONNECTIONS, Owner::Datapath),
    (MAP_REVERSE, Owner::Datapath),
    (MAP_MESH_RETURN, Owner::Datapath),
    (MAP_STATS, Owner::Counters),
    (MAP_VNI_STATS, Owner::Counters),
    (MAP_SERVICE_STATS, Owner::Counters),
    (MAP_EVENTS, Owner::Datapath),
    (MAP_MONITOR_RATE, Owner::Datapath),
    (MAP_MONITOR, Owner::Monitor),
];

/// Who writes a map.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Owner {
    /// Reconciled from the desired state by the agent.
    Desired,
    /// Written by the programs (connection tables, events): the agent never rewrites them.
    Datapath,
    /// Per-CPU counters of the programs, read by `overlay stats` and the metrics.
    Counters,
    /// Written by `overlay monitor` (what it asks the programs for), never by the agent.
    Monitor,
}

impl Owner {
    pub fn name(self) -> &'static str {
        match self {
            Owner::Desired => "desired",
            Owner::Datapath => "datapath",
            Owner::Counters => "counters",
            Owner::Monitor => "monitor",
        }
    }
}

const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

#[derive(Debug, thiserror::Error)]
pub enum DataplaneError {
    #[error("no bpffs at {BPFFS} and mounting one failed; mount it with `mount -t bpf bpf {BPFFS}`")]
    NoBpffs,
    #[error(
        "this process runs in a private mount namespace whose {BPFFS} is not a bpffs (`ip netns exec` remounts /sys), \
         and no other mount namespace shows the host's bpffs to join: pins made here would vanish with the process \
         and no other `overlay` command would find them. Give `overlay agent` (or `down`, `docker-plugin`) \
         `--netns NAME` instead of starting it under `ip netns exec`, or start it from a process in the host's \
         mount namespace"
    )]
    PrivateMountNs,
    #[error("{what} {path}: {source}")]
    Io { what: &'static str, path: String, source: io::Error },
    #[error("loading the eBPF programs: {0}")]
    Load(#[from] aya::EbpfError),
    #[error("program {name}: {source}")]
    Program { name: &'static str, source: ProgramError },
    #[error("map {name}: {source}")]
    Map { name: &'static str, source: MapError },
    #[error("map {name}: {source}")]
    XdpMap { name: &'static str, source: XdpMapError },
    #[error("map {0} is missing from the object or pin directory")]
    MissingMap(&'static str),
    #[error("no pinned datapath for this node at {0} (has its agent ever run?)")]
    NotPinned(String),
    #[error("link {path}: {message}")]
    Link { path: String, message: String },
    #[error("reading the maps the eBPF object declares: {0}")]
    Object(String),
    /// The pin directory holds maps another version of the agent made, which this one must not
    /// reuse. Nothing in it was changed.
    #[error(
        "pin directory {dir} holds pinned state this agent cannot use: {}; this agent expects pin layout {expected}. \
         Nothing there was changed. Run `{down}` (it removes the pins; forwarding stops until the agent starts again), \
         then start this agent",
        join_mismatches(.found)
    )]
    IncompatiblePins { dir: String, expected: u32, found: Vec<PinMismatch>, down: String },
}

/// What a map must agree on for a pin to be reused: kind, key and value sizes, entries, flags.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MapShape {
    /// `bpf_map_type`.
    pub kind: u32,
    pub key_size: u32,
    pub value_size: u32,
    pub max_entries: u32,
    pub flags: u32,
}

impl std::fmt::Display for MapShape {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match self.kind {
            1 => "hash".to_string(),
            2 => "array".to_string(),
            5 => "per-CPU hash".to_string(),
            6 => "per-CPU array".to_string(),
            9 => "LRU hash".to_string(),
            11 => "LPM trie".to_string(),
            14 => "devmap".to_string(),
            25 => "devmap hash".to_string(),
            k => format!("map type {k}"),
        };
        write!(f, "{kind} (key {} B, value {} B, {} entries, flags {:#x})", self.key_size, self.value_size, self.max_entries, self.flags)
    }
}

/// One reason a pin directory cannot be adopted.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PinMismatch {
    /// The layout record names another layout.
    #[error("its layout record {MAP_LAYOUT} says layout {0}")]
    Layout(u32),
    /// The layout record itself has a shape this agent does not know.
    #[error("its layout record {MAP_LAYOUT} is a {0}, not the record this agent knows")]
    Record(MapShape),
    /// A pinned map differs from the object's map of that name.
    #[error("map {name} is a {found}, this agent's {name} is a {expected}")]
    Map { name: String, found: MapShape, expected: MapShape },
    /// A pin this agent has no map of (another version's).
    #[error("{0} is not a map this agent knows")]
    Unknown(String),
    /// A pin that cannot be opened as a map.
    #[error("{name} cannot be opened as a map: {reason}")]
    Unreadable { name: String, reason: String },
}

fn join_mismatches(found: &[PinMismatch]) -> String {
    found.iter().map(ToString::to_string).collect::<Vec<_>>().join("; ")
}

type Result<T> = std::result::Result<T, DataplaneError>;

fn io_err(what: &'static str, path: &Path) -> impl FnOnce(io::Error) -> DataplaneError {
    let path = path.display().to_string();
    move |source| DataplaneError::Io { what, path, source }
}

fn map_err(name: &'static str) -> impl FnOnce(MapError) -> DataplaneError {
    move |source| DataplaneError::Map { name, source }
}

fn is_bpffs(path: &Path) -> bool {
    let Ok(c) = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()) else { return false };
    // SAFETY: statfs writes into the zeroed struct we own; the path is NUL-terminated.
    unsafe {
        let mut s: libc::statfs = std::mem::zeroed();
        libc::statfs(c.as_ptr(), &mut s) == 0 && s.f_type as i64 == BPF_FS_MAGIC
    }
}

/// Parent PID of `pid`, from `/proc/<pid>/stat`.
fn parent_of(pid: u32) -> Option<u32> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // "pid (comm) state ppid ...": comm may hold spaces, so split after the last ')'.
    stat.rsplit_once(')')?.1.split_whitespace().nth(1)?.parse().ok()
}

/// Where this process found the host's bpffs ([`join_host_mount_ns`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MountNs {
    /// `/sys/fs/bpf` here is a bpffs already.
    HasBpffs,
    /// Joined the mount namespace of process `pid`, which sees a bpffs at `/sys/fs/bpf`.
    Joined(u32),
    /// No bpffs anywhere, and this looks like the host's own mount namespace (a fresh machine):
    /// [`host_bpffs`] mounts one.
    HostWithoutBpffs,
}

fn mount_ns_of(pid: &str) -> Option<PathBuf> {
    fs::read_link(format!("/proc/{pid}/ns/mnt")).ok()
}

/// Every process's mount namespace that this one can read, with how many processes share it,
/// most shared first (one PID of each to reach it by).
fn mount_namespaces() -> Vec<(PathBuf, u32, usize)> {
    let mut by_ns: std::collections::HashMap<PathBuf, (u32, usize)> = std::collections::HashMap::new();
    for e in fs::read_dir("/proc").into_iter().flatten().flatten() {
        let name = e.file_name().to_string_lossy().to_string();
        let Ok(pid) = name.parse::<u32>() else { continue };
        if let Some(ns) = mount_ns_of(&name) {
            by_ns.entry(ns).or_insert((pid, 0)).1 += 1;
        }
    }
    let mut all: Vec<(PathBuf, u32, usize)> = by_ns.into_iter().map(|(ns, (pid, n))| (ns, pid, n)).collect();
    all.sort_by(|a, b| b.2.cmp(&a.2).then(a.1.cmp(&b.1)));
    all
}

/// Whether this process's mount namespace is plausibly the host's own: PID 1's, or (when
/// PID 1's cannot be read, as under some sandboxes) the one most processes share.
fn plausibly_host_mount_ns() -> bool {
    let Some(own) = mount_ns_of("self") else { return false };
    if let Some(init) = mount_ns_of("1") {
        return init == own;
    }
    let all = mount_namespaces();
    let own_count = all.iter().find(|(ns, _, _)| *ns == own).map_or(0, |x| x.2);
    all.iter().all(|(_, _, n)| *n <= own_count)
}

/// When this process sees no bpffs at `/sys/fs/bpf` because it runs in a mount namespace that
/// remounted `/sys` (`ip netns exec` does), joins a mount namespace that sees one, so pins are
/// where every other process looks: the nearest ancestor's, else PID 1's, else the one most
/// processes share (an agent whose parent exited, reparented to PID 1 or a subreaper, has no
/// ancestor left in the host's namespace, and PID 1's may not be readable). The network
/// namespace is left alone. Must run while the process is single-threaded.
///
/// Fails with [`DataplaneError::PrivateMountNs`] when no such namespace exists and this one is
/// not plausibly the host's: mounting a bpffs here would pin into a private one that vanishes
/// with the process, where no other process finds the pins.
pub fn join_host_mount_ns() -> Result<MountNs> {
    use std::os::fd::AsRawFd as _;
    if is_bpffs(Path::new(BPFFS)) {
        return Ok(MountNs::HasBpffs);
    }
    let own = mount_ns_of("self").ok_or_else(|| DataplaneError::Io {
        what: "reading",
        path: "/proc/self/ns/mnt".into(),
        source: io::Error::last_os_error(),
    })?;
    let mut candidates = Vec::new();
    let mut pid = std::os::unix::process::parent_id();
    while pid > 1 && candidates.len() < 32 {
        candidates.push(pid);
        pid = parent_of(pid).unwrap_or(0);
    }
    candidates.push(1);
    candidates.extend(mount_namespaces().into_iter().map(|(_, pid, _)| pid));
    let mut tried = vec![own];
    for pid in candidates {
        let Some(ns) = mount_ns_of(&pid.to_string()) else { continue };
        if tried.contains(&ns) {
            continue;
        }
        tried.push(ns);
        if !is_bpffs(&Path::new(&format!("/proc/{pid}/root")).join(BPFFS.trim_start_matches('/'))) {
            continue;
        }
        let path = format!("/proc/{pid}/ns/mnt");
        let Ok(f) = fs::File::open(&path) else { continue };
        // SAFETY: setns on a valid mount-namespace fd; the caller guarantees a single thread.
        if unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNS) } != 0 {
            return Err(DataplaneError::Io { what: "joining the mount namespace", path, source: io::Error::last_os_error() });
        }
        return Ok(MountNs::Joined(pid));
    }
    if plausibly_host_mount_ns() { Ok(MountNs::HostWithoutBpffs) } else { Err(DataplaneError::PrivateMountNs) }
}

/// The bpffs at `/sys/fs/bpf`, mounted there if none is and this is plausibly the host's own
/// mount namespace (call [`join_host_mount_ns`] first).
pub fn host_bpffs() -> Result<PathBuf> {
    if is_bpffs(Path::new(BPFFS)) {
        return Ok(PathBuf::from(BPFFS));
    }
    if !plausibly_host_mount_ns() {
        return Err(DataplaneError::PrivateMountNs);
    }
    // None mounted yet (a fresh machine): mount it where systemd would.
    let target = std::ffi::CString::new(BPFFS).expect("no NUL");
    let fstype = std::ffi::CString::new("bpf").expect("no NUL");
    // SAFETY: plain mount(2) with NUL-terminated strings and no data.
    let rc = unsafe { libc::mount(fstype.as_ptr(), target.as_ptr(), fstype.as_ptr(), 0, std::ptr::null()) };
    if rc == 0 && is_bpffs(Path::new(BPFFS)) {
        tracing::info!("mounted bpffs at {BPFFS}");
        return Ok(PathBuf::from(BPFFS));
    }
    Err(DataplaneError::NoBpffs)
}

/// Pin directory of `node` below `root` (default root: `<bpffs>/overlay`).
pub fn node_pin_dir(root: Option<&Path>, node: &str) -> Result<PathBuf> {
    let root = match root {
        Some(r) => r.to_path_buf(),
        None => host_bpffs()?.join(PIN_SUBDIR),
    };
    Ok(root.join(node))
}

/// The nodes whose datapath is pinned under `root` (default: `<bpffs>/overlay`): the
/// directories that hold a layout record, sorted.
pub fn pinned_nodes(root: Option<&Path>) -> Result<Vec<String>> {
    let root = match root {
        Some(r) => r.to_path_buf(),
        None => host_bpffs()?.join(PIN_SUBDIR),
    };
    let entries = match fs::read_dir(&root) {
        Ok(rd) => rd,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io_err("reading pin root", &root)(e)),
    };
    let mut nodes: Vec<String> = entries
        .filter_map(|e| e.ok())
        .filter(|e| e.path().join(MAP_LAYOUT).exists())
        .map(|e| e.file_name().to_string_lossy().to_string())
        .collect();
    nodes.sort();
    Ok(nodes)
}

/// What a pin directory holds, as far as adopting it goes.
#[derive(Debug, PartialEq, Eq)]
enum PinState {
    /// Nothing pinned (no directory, or no maps in it).
    Empty,
    /// Maps of this layout, with the record.
    Current,
    /// Maps matching this agent's in every way, without a record: an agent from before the
    /// record existed, whose layout was this one. Adopted; [`Dataplane::load`] writes the record.
    Unrecorded,
}

/// Shapes of the pinned maps as the object declares them.
fn declared_shapes() -> Result<BTreeMap<&'static str, MapShape>> {
    let obj = aya_obj::Object::parse(EBPF_OBJECT).map_err(|e| DataplaneError::Object(e.to_string()))?;
    ALL_MAPS
        .iter()
        .map(|(name, _)| {
            let m = obj.maps.get(*name).ok_or(DataplaneError::MissingMap(name))?;
            let mut shape = MapShape { kind: m.map_type(), key_size: m.key_size(), value_size: m.value_size(), max_entries: m.max_entries(), flags: m.map_flags() };
            // The kernel makes every devmap read-only for programs, and says so in its flags.
            if matches!(shape.kind, BPF_MAP_TYPE_DEVMAP | BPF_MAP_TYPE_DEVMAP_HASH) {
                shape.flags |= BPF_F_RDONLY_PROG;
            }
            Ok((*name, shape))
        })
        .collect()
}

const BPF_MAP_TYPE_DEVMAP: u32 = 14;
const BPF_MAP_TYPE_DEVMAP_HASH: u32 = 25;
const BPF_F_RDONLY_PROG: u32 = 1 << 7;

/// The shape of the layout record, which never changes.
const LAYOUT_SHAPE: MapShape = MapShape {
    kind: 2, // BPF_MAP_TYPE_ARRAY
    key_size: size_of::<u32>() as u32,
    value_size: size_of::<PinLayout>() as u32,
    max_entries: 1,
    flags: 0,
};

fn pinned_shape(path: &Path) -> std::result::Result<(MapData, MapShape), String> {
    let data = MapData::from_pin(path).map_err(|e| e.to_string())?;
    let info = data.info().map_err(|e| e.to_string())?;
    let kind = info.map_type().map(|t| t as u32).unwrap_or(u32::MAX);
    let shape = MapShape { kind, key_size: info.key_size(), value_size: info.value_size(), max_entries: info.max_entries(), flags: info.map_flags() };
    Ok((data, shape))
}

/// The command that clears `dir` for this agent: `overlay down` of its node (with
/// `--pin-root` when it is not the default one).
fn down_command(dir: &Path) -> String {
    let node = dir.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default();
    let root = dir.parent().unwrap_or(Path::new("/"));
    let default_root = Path::new(BPFFS).join(PIN_SUBDIR);
    if root == default_root {
        format!("overlay down --node {node}")
    } else {
        format!("overlay down --node {node} --pin-root {}", root.display())
    }
}

/// Compares what `dir` holds with what this agent declares, opening every pin (never creating,
/// writing or removing one). Refuses a directory of another layout, or any pinned map whose
/// kind, key or value size, entries or flags differ from the object's: aya's loader would
/// reuse such a pin as it is, and the programs and agent would misread it.
fn check_pins(dir: &Path) -> Result<PinState> {
    let entries = match fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(PinState::Empty),
        Err(e) => return Err(io_err("reading pin directory", dir)(e)),
    };
    let declared = declared_shapes()?;
    let mut found = Vec::new();
    let mut record = None;
    let mut pinned = 0;
    for entry in entries {
        let entry = entry.map_err(io_err("reading pin directory", dir))?;
        if entry.file_type().map_err(io_err("reading pin directory", dir))?.is_dir() {
            continue; // `links/`: links are replaced one by one by `attach`.
        }
        let name = entry.file_name().to_string_lossy().to_string();
        let (data, shape) = match pinned_shape(&entry.path()) {
            Ok(x) => x,
            Err(reason) => {
                found.push(PinMismatch::Unreadable { name, reason });
                continue;
            }
        };
        if name == MAP_LAYOUT {
            if shape != LAYOUT_SHAPE {
                found.push(PinMismatch::Record(shape));
                continue;
            }
            let map = Map::from_map_data(data).map_err(map_err(MAP_LAYOUT))?;
            let arr: Array<MapData, PinLayout> = Array::try_from(map).map_err(map_err(MAP_LAYOUT))?;
            let rec = arr.get(&0, 0).map_err(map_err(MAP_LAYOUT))?;
            if rec.layout != PIN_LAYOUT {
                found.push(PinMismatch::Layout(rec.layout));
            }
            record = Some(rec.layout);
            continue;
        }
        pinned += 1;
        match declared.get(name.as_str()) {
            Some(expected) if *expected == shape => {}
            Some(expected) => found.push(PinMismatch::Map { name, found: shape, expected: *expected }),
            None => found.push(PinMismatch::Unknown(name)),
        }
    }
    if !found.is_empty() {
        // Another layout first: the maps' differences follow from it.
        found.sort_by_key(|m| !matches!(m, PinMismatch::Layout(_)));
        return Err(DataplaneError::IncompatiblePins { dir: dir.display().to_string(), expected: PIN_LAYOUT, found, down: down_command(dir) });
    }
    Ok(match (record, pinned) {
        (Some(_), _) => PinState::Current,
        (None, 0) => PinState::Empty,
        (None, _) => PinState::Unrecorded,
    })
}

/// Makes and pins the layout record of `dir` (this agent's [`PIN_LAYOUT`]). The value is
/// written before the pin appears, so no reader sees an empty record.
fn write_layout_record(dir: &Path) -> Result<()> {
    let obj = aya_obj::Map::new_from_params(LAYOUT_SHAPE.kind, LAYOUT_SHAPE.key_size, LAYOUT_SHAPE.value_size, 1, 0);
    let data = MapData::create(obj, MAP_LAYOUT, None).map_err(map_err(MAP_LAYOUT))?;
    let mut map = Map::from_map_data(data).map_err(map_err(MAP_LAYOUT))?;
    {
        let mut arr: Array<&mut MapData, PinLayout> = Array::try_from(&mut map).map_err(map_err(MAP_LAYOUT))?;
        arr.set(0, PinLayout { layout: PIN_LAYOUT, version: 1 }, 0).map_err(map_err(MAP_LAYOUT))?;
    }
    let path = dir.join(MAP_LAYOUT);
    map.pin(&path).map_err(|e| DataplaneError::Io { what: "pinning the layout record", path: path.display().to_string(), source: io::Error::other(e.to_string()) })
}

/// Typed handles on the ten maps.
struct Maps {
    fdb: HashMap<MapData, FdbKey, FdbEntry>,
    vnis: HashMap<MapData, u32, VniInfo>,
    endpoints: HashMap<MapData, u32, EndpointInfo>,
    neigh: HashMap<MapData, NeighKey, NeighEntry>,
    members: HashMap<MapData, u32, MemberInfo>,
    config: Array<MapData, NodeConfig>,
    stats: PerCpuArray<MapData, Counter>,
    vni_stats: PerCpuHashMap<MapData, u32, VniCounters>,
    subnets: LpmTrie<MapData, u32, SubnetInfo>,
    names: HashMap<MapData, NameKey, NameEntry>,
    services: HashMap<MapData, ServiceKey, ServiceEntry>,
    maglev: Array<MapData, u32>,
    backends: Array<MapData, Backend>,
    published: HashMap<MapData, PublishedKey, PublishedEntry>,
    /// The XDP ingress's redirect targets (host-side veth ifindex -> itself).
    xdp_targets: DevMapHash<MapData>,
    /// Datapath-owned: read for `overlay stats`, never written here.
    connections: aya::maps::HashMap<MapData, CtKey, Backend>,
    service_stats: PerCpuHashMap<MapData, LbStatsKey, LbCounters>,
}

impl Maps {
    fn from_source(mut take: impl FnMut(&'static str) -> Result<Map>) -> Result<Self> {
        Ok(Maps {
            fdb: HashMap::try_from(take(MAP_FDB)?).map_err(map_err(MAP_FDB))?,
            vnis: HashMap::try_from(take(MAP_VNIS)?).map_err(map_err(MAP_VNIS))?,
            endpoints: HashMap::try_from(take(MAP_ENDPOINTS)?).map_err(map_err(MAP_ENDPOINTS))?,
            neigh: HashMap::try_from(take(MAP_NEIGH)?).map_err(map_err(MAP_NEIGH))?,
            members: HashMap::try_from(take(MAP_MEMBERS)?).map_err(map_err(MAP_MEMBERS))?,
            config: Array::try_from(take(MAP_CONFIG)?).map_err(map_err(MAP_CONFIG))?,
            stats: PerCpuArray::try_from(take(MAP_STATS)?).map_err(map_err(MAP_STATS))?,
            vni_stats: PerCpuHashMap::try_from(take(MAP_VNI_STATS)?).map_err(map_err(MAP_VNI_STATS))?,
            subnets: LpmTrie::try_from(take(MAP_SUBNETS)?).map_err(map_err(MAP_SUBNETS))?,
            names: HashMap::try_from(take(MAP_NAMES)?).map_err(map_err(MAP_NAMES))?,
            services: HashMap::try_from(take(MAP_SERVICES)?).map_err(map_err(MAP_SERVICES))?,
            maglev: Array::try_from(take(MAP_MAGLEV)?).map_err(map_err(MAP_MAGLEV))?,
            backends: Array::try_from(take(MAP_BACKENDS)?).map_err(map_err(MAP_BACKENDS))?,
            published: HashMap::try_from(take(MAP_PUBLISHED)?).map_err(map_err(MAP_PUBLISHED))?,
            xdp_targets: DevMapHash::try_from(take(MAP_XDP_TARGETS)?).map_err(map_err(MAP_XDP_TARGETS))?,
            connections: aya::maps::HashMap::try_from(take(MAP_CONNECTIONS)?).map_err(map_err(MAP_CONNECTIONS))?,
            service_stats: PerCpuHashMap::try_from(take(MAP_SERVICE_STATS)?).map_err(map_err(MAP_SERVICE_STATS))?,
        })
    }
}

/// How many entries one reconcile added, changed and removed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DiffSummary {
    pub added: usize,
    pub changed: usize,
    pub removed: usize,
}

impl DiffSummary {
    pub fn is_empty(&self) -> bool {
        self.added + self.changed + self.removed == 0
    }
}

impl std::fmt::Display for DiffSummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "+{} ~{} -{}", self.added, self.changed, self.removed)
    }
}

/// One table's use: see [`Dataplane::map_fill`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MapFill {
    pub name: &'static str,
    pub owner: Owner,
    pub entries: u64,
    pub max_entries: u32,
}

/// Map kinds whose entries come and go: hash, per-CPU hash, LRU hash, LRU per-CPU hash, LPM
/// trie, devmap hash.
const HASHED_KINDS: [u32; 6] = [1, 5, 9, 10, 11, BPF_MAP_TYPE_DEVMAP_HASH];

/// Entries of the map behind `fd`, by walking its keys with `BPF_MAP_GET_NEXT_KEY` (aya's typed
/// iterators need the key type; this needs only its size, so one walk serves every map). A
/// table the datapath changes during the walk (an LRU table evicting the key just read makes the
/// kernel start again from the first) is counted up to its `max_entries`.
fn count_keys(fd: i32, key_size: u32, max_entries: u32) -> io::Result<u64> {
    /// `union bpf_attr` as `BPF_MAP_GET_NEXT_KEY` reads it.
    #[repr(C)]
    struct NextKeyAttr {
        map_fd: u32,
        _pad: u32,
        key: u64,
        next_key: u64,
        flags: u64,
    }
    const BPF_MAP_GET_NEXT_KEY: libc::c_long = 4;
    let mut key = vec![0u8; key_size as usize];
    let mut next = vec![0u8; key_size as usize];
    let mut n = 0u64;
    loop {
        let attr = NextKeyAttr {
            map_fd: fd as u32,
            _pad: 0,
            // The first call passes no key: the kernel starts from the first entry.
            key: if n == 0 { 0 } else { key.as_ptr() as u64 },
            next_key: next.as_mut_ptr() as u64,
            flags: 0,
        };
        // SAFETY: attr points at two buffers of the map's key size that outlive the call.
        let r = unsafe { libc::syscall(libc::SYS_bpf, BPF_MAP_GET_NEXT_KEY, &attr as *const NextKeyAttr, size_of::<NextKeyAttr>()) };
        if r < 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::ENOENT) {
                return Ok(n);
            }
            return Err(e);
        }
        n += 1;
        if n >= max_entries as u64 {
            return Ok(n);
        }
        std::mem::swap(&mut key, &mut next);
    }
}

/// Counters summed over CPUs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// (reason, direction) -> counter, only non-zero ones.
    pub reasons: Vec<(Reason, Direction, Counter)>,
    pub vnis: BTreeMap<u32, VniCounters>,
    /// Per task of each VIP port: connections, packets, bytes (summed over CPUs).
    pub services: BTreeMap<LbStatsKey, LbCounters>,
}

impl Stats {
    pub fn get(&self, reason: Reason, dir: Direction) -> Counter {
        self.reasons.iter().find(|(r, d, _)| *r == reason && *d == dir).map(|x| x.2).unwrap_or_default()
    }
}

/// How [`Dataplane::load_with`] sizes the maps it creates.
#[derive(Clone, Debug, Default)]
pub struct LoadOptions {
    /// FDB entries instead of [`overlay_common::MAX_FDB`] (benchmarks only: pins so made are
    /// not the layout agents share).
    pub fdb_entries: Option<u32>,
}

/// The datapath of one node.
pub struct Dataplane {
    ebpf: Option<Ebpf>,
    maps: Maps,
    dir: PathBuf,
    /// What the maps hold after the last successful apply by this process. The first apply
    /// reads the maps instead (adopting what a previous agent left: mark and sweep); later ones
    /// diff against this copy, so one change costs a few syscalls whatever the table sizes.
    applied: Option<MapState>,
    /// Link pins this process attached (or re-attached) its programs to.
    attached: std::collections::HashSet<PathBuf>,
}

/// Diff of one table against the copy of what the map holds: writes only what differs.
fn sync_cached<K, V>(
    name: &'static str,
    map: &mut HashMap<MapData, K, V>,
    have: &BTreeMap<K, V>,
    want: &BTreeMap<K, V>,
    sum: &mut DiffSummary,
    removals: &mut Vec<K>,
) -> Result<()>
where
    K: aya::Pod + Ord,
    V: aya::Pod + PartialEq,
{
    for (k, v) in want {
        match have.get(k) {
            Some(old) if old == v => continue,
            Some(_) => sum.changed += 1,
            None => sum.added += 1,
        }
        map.insert(k, v, 0).map_err(map_err(name))?;
    }
    removals.extend(have.keys().filter(|k| !want.contains_key(k)).copied());
    Ok(())
}

/// [`sync_cached`] network by network, skipping each network whose part is the very one applied
/// (shared, unchanged since).
fn sync_per_vni<K, V>(
    name: &'static str,
    map: &mut HashMap<MapData, K, V>,
    have: &PerVni<K, V>,
    want: &PerVni<K, V>,
    sum: &mut DiffSummary,
    removals: &mut Vec<K>,
) -> Result<()>
where
    K: aya::Pod + Ord,
    V: aya::Pod + PartialEq,
{
    let none = BTreeMap::new();
    for vni in want.0.keys().chain(have.0.keys().filter(|v| !want.0.contains_key(v))) {
        let (h, w) = (have.0.get(vni), want.0.get(vni));
        if h.zip(w).is_some_and(|(h, w)| std::sync::Arc::ptr_eq(h, w)) {
            continue;
        }
        sync_cached(name, map, h.map_or(&none, |t| &**t), w.map_or(&none, |t| &**t), sum, removals)?;
    }
    Ok(())
}

/// Groups the entries read from a map by network.
fn per_vni<K: Ord + Clone, V: Clone>(all: BTreeMap<K, V>, vni: impl Fn(&K) -> u32) -> PerVni<K, V> {
    let mut by: BTreeMap<u32, BTreeMap<K, V>> = BTreeMap::new();
    for (k, v) in all {
        by.entry(vni(&k)).or_default().insert(k, v);
    }
    PerVni(by.into_iter().map(|(n, t)| (n, std::sync::Arc::new(t))).collect())
}

fn remove_all<K: aya::Pod, V: aya::Pod>(
    name: &'static str,
    map: &mut HashMap<MapData, K, V>,
    keys: Vec<K>,
    sum: &mut DiffSummary,
) -> Result<()> {
    for k in keys {
        match map.remove(&k) {
            Ok(()) | Err(MapError::KeyNotFound) => sum.removed += 1,
            Err(e) => return Err(map_err(name)(e)),
        }
    }
    Ok(())
}

impl Dataplane {
    /// Loads the programs, reusing the maps pinned in `dir` (or creating and pinning them).
    /// Pins of another layout, or any pinned map that differs from the object's, are refused
    /// ([`DataplaneError::IncompatiblePins`]) before anything in `dir` is touched.
    pub fn load(dir: &Path) -> Result<Self> {
        Self::load_with(dir, &LoadOptions::default())
    }

    /// [`Dataplane::load`] with `opts` (for benchmarks: a larger FDB in a pin directory of
    /// its own; a directory loaded so is refused by the agent's [`Dataplane::load`], its FDB
    /// differing from the object's).
    pub fn load_with(dir: &Path, opts: &LoadOptions) -> Result<Self> {
        let state = check_pins(dir)?;
        fs::create_dir_all(dir.join(LINKS_SUBDIR)).map_err(io_err("creating pin directory", dir))?;
        // The maps decide where every container's traffic goes: root only (the pins in bpffs
        // are 0600 already; the directories say so too, whatever the umask).
        for d in [dir.to_path_buf(), dir.join(LINKS_SUBDIR)] {
            use std::os::unix::fs::PermissionsExt as _;
            fs::set_permissions(&d, fs::Permissions::from_mode(0o700)).map_err(io_err("restricting pin directory", &d))?;
        }
        let mut loader = EbpfLoader::new();
        loader.default_map_pin_directory(dir);
        if let Some(n) = opts.fdb_entries {
            loader.map_max_entries(MAP_FDB, n);
        }
        let mut ebpf = loader.load(EBPF_OBJECT)?;
        if let Err(e) = aya_log::EbpfLogger::init(&mut ebpf) {
            tracing::debug!("eBPF logger not started: {e}");
        }
        for name in [PROG_EGRESS, PROG_INGRESS, PROG_PASS, PROG_MONITOR_IDLE] {
            let prog: &mut SchedClassifier = ebpf
                .program_mut(name)
                .ok_or(DataplaneError::Program { name, source: ProgramError::NotLoaded })?
                .try_into()
                .map_err(|source| DataplaneError::Program { name, source })?;
            prog.load().map_err(|source| DataplaneError::Program { name, source })?;
        }
        let xdp: &mut Xdp = ebpf
            .program_mut(PROG_XDP)
            .ok_or(DataplaneError::Program { name: PROG_XDP, source: ProgramError::NotLoaded })?
            .try_into()
            .map_err(|source| DataplaneError::Program { name: PROG_XDP, source })?;
        xdp.load().map_err(|source| DataplaneError::Program { name: PROG_XDP, source })?;
        let maps = Maps::from_source(|name| ebpf.take_map(name).ok_or(DataplaneError::MissingMap(name)))?;
        match state {
            PinState::Current => {}
            PinState::Empty => write_layout_record(dir)?,
            PinState::Unrecorded => {
                write_layout_record(dir)?;
                tracing::info!(dir = %dir.display(), layout = PIN_LAYOUT, "adopted pins without a layout record (every map matches this agent's) and recorded their layout");
            }
        }
        Ok(Dataplane { ebpf: Some(ebpf), maps, dir: dir.to_path_buf(), applied: None, attached: Default::default() })
    }

    /// Opens the pinned maps of a node without loading programs (for `stats`, `fdb`). Refuses
    /// pins of another layout as [`Dataplane::load`] does; writes nothing (a directory without
    /// a record gets one from the next agent).
    pub fn open_pinned(dir: &Path) -> Result<Self> {
        if !dir.join(MAP_FDB).exists() {
            return Err(DataplaneError::NotPinned(dir.display().to_string()));
        }
        check_pins(dir)?;
        let maps = Maps::from_source(|name| {
            let data = MapData::from_pin(dir.join(name)).map_err(map_err(name))?;
            Map::from_map_data(data).map_err(map_err(name))
        })?;
        Ok(Dataplane { ebpf: None, maps, dir: dir.to_path_buf(), applied: None, attached: Default::default() })
    }

    /// Reads everything the maps hold.
    pub fn read_state(&self) -> Result<MapState> {
        fn collect<K: aya::Pod + Ord, V: aya::Pod>(name: &'static str, m: &HashMap<MapData, K, V>) -> Result<BTreeMap<K, V>> {
            m.iter().map(|kv| kv.map_err(map_err(name))).collect()
        }
        let config = match self.maps.config.get(&0, 0) {
            Ok(c) => c,
            Err(e) => return Err(map_err(MAP_CONFIG)(e)),
        };
        Ok(MapState {
            config,
            vnis: collect(MAP_VNIS, &self.maps.vnis)?,
            fdb: per_vni(collect(MAP_FDB, &self.maps.fdb)?, |k| k.vni),
            endpoints: collect(MAP_ENDPOINTS, &self.maps.endpoints)?,
            neigh: per_vni(collect(MAP_NEIGH, &self.maps.neigh)?, |k| k.vni),
            members: collect(MAP_MEMBERS, &self.maps.members)?,
            subnets: self
                .maps
                .subnets
                .iter()
                .map(|kv| kv.map(|(k, v)| ((k.data(), k.prefix_len()), v)).map_err(map_err(MAP_SUBNETS)))
                .collect::<Result<_>>()?,
            names: per_vni(collect(MAP_NAMES, &self.maps.names)?, |k| k.vni),
            services: collect(MAP_SERVICES, &self.maps.services)?,
            // Not read back: the first apply of a process writes every service's tables once.
            balancing: BTreeMap::new(),
            published: collect(MAP_PUBLISHED, &self.maps.published)?,
        })
    }

    /// Makes the maps equal to `want`, writing only the difference. Additions and changes go
    /// first, removals last, so no packet of a surviving flow meets a half-updated table.
    pub fn apply(&mut self, want: &MapState) -> Result<DiffSummary> {
        let prev = self.applied.take();
        let sum = self.write_diff(prev.as_ref(), want)?;
        // Only a complete apply is remembered: after an error the next one reads the maps again.
        self.applied = Some(want.clone());
        Ok(sum)
    }

    fn write_diff(&mut self, prev: Option<&MapState>, want: &MapState) -> Result<DiffSummary> {
        // Without a copy of what was applied (first apply of this process, or after an error),
        // read the maps back: what a previous agent left is adopted, only the difference written.
        let read;
        let have = match prev {
            Some(p) => p,
            None => {
                read = self.read_state()?;
                &read
            }
        };
        let mut sum = DiffSummary::default();
        let m = &mut self.maps;
        if have.config != want.config {
            m.config.set(0, want.config, 0).map_err(map_err(MAP_CONFIG))?;
            sum.changed += 1;
        }
        let (mut rv, mut rm, mut rn, mut re, mut rf, mut rq) = (vec![], vec![], vec![], vec![], vec![], vec![]);
        sync_cached(MAP_VNIS, &mut m.vnis, &have.vnis, &want.vnis, &mut sum, &mut rv)?;
        sync_cached(MAP_MEMBERS, &mut m.members, &have.members, &want.members, &mut sum, &mut rm)?;
        sync_per_vni(MAP_NEIGH, &mut m.neigh, &have.neigh, &want.neigh, &mut sum, &mut rn)?;
        sync_cached(MAP_ENDPOINTS, &mut m.endpoints, &have.endpoints, &want.endpoints, &mut sum, &mut re)?;
        sync_per_vni(MAP_FDB, &mut m.fdb, &have.fdb, &want.fdb, &mut sum, &mut rf)?;
        sync_per_vni(MAP_NAMES, &mut m.names, &have.names, &want.names, &mut sum, &mut rq)?;
        // A service's backends and Maglev table before its entry: a new entry never points at
        // a slot still holding another service's table.
        for (id, t) in &want.balancing {
            if have.balancing.get(id).is_some_and(|h| std::sync::Arc::ptr_eq(h, t) || h == t) {
                continue;
            }
            for (i, b) in t.backends.iter().enumerate() {
                m.backends.set(id * MAX_BACKENDS + i as u32, b, 0).map_err(map_err(MAP_BACKENDS))?;
            }
            for (j, idx) in t.maglev.iter().enumerate() {
                m.maglev.set(id * MAGLEV_M + j as u32, idx, 0).map_err(map_err(MAP_MAGLEV))?;
            }
            sum.changed += 1;
        }
        let mut rs = vec![];
        sync_cached(MAP_SERVICES, &mut m.services, &have.services, &want.services, &mut sum, &mut rs)?;
        let mut rp = vec![];
        sync_cached(MAP_PUBLISHED, &mut m.published, &have.published, &want.published, &mut sum, &mut rp)?;
        // Per-VNI counters exist for exactly the configured VNIs.
        if prev.is_none_or(|p| !p.vnis.keys().eq(want.vnis.keys())) {
            let cpus = nr_cpus().map_err(|(_, e)| io_err("counting CPUs", Path::new("/sys/devices/system/cpu/possible"))(e))?;
            let have: Vec<u32> = m.vni_stats.keys().collect::<std::result::Result<_, _>>().map_err(map_err(MAP_VNI_STATS))?;
            for vni in want.vnis.keys() {
                if !have.contains(vni) {
                    let zero = PerCpuValues::try_from(vec![VniCounters::default(); cpus])
                        .map_err(io_err("sizing per-CPU values", Path::new(MAP_VNI_STATS)))?;
                    m.vni_stats.insert(vni, zero, 0).map_err(map_err(MAP_VNI_STATS))?;
                }
            }
            for vni in have.iter().filter(|v| !want.vnis.contains_key(v)) {
                let _ = m.vni_stats.remove(vni);
            }
        }
        // Overlay subnets (few): added and changed with the rest, removed last.
        for (&(addr, len), v) in &want.subnets {
            match have.subnets.get(&(addr, len)) {
                Some(old) if old == v => continue,
                Some(_) => sum.changed += 1,
                None => sum.added += 1,
            }
            m.subnets.insert(&LpmKey::new(len, addr), v, 0).map_err(map_err(MAP_SUBNETS))?;
        }
        remove_all(MAP_PUBLISHED, &mut m.published, rp, &mut sum)?;
        remove_all(MAP_SERVICES, &mut m.services, rs, &mut sum)?;
        remove_all(MAP_NAMES, &mut m.names, rq, &mut sum)?;
        remove_all(MAP_FDB, &mut m.fdb, rf, &mut sum)?;
        remove_all(MAP_ENDPOINTS, &mut m.endpoints, re, &mut sum)?;
        remove_all(MAP_NEIGH, &mut m.neigh, rn, &mut sum)?;
        remove_all(MAP_MEMBERS, &mut m.members, rm, &mut sum)?;
        remove_all(MAP_VNIS, &mut m.vnis, rv, &mut sum)?;
        for &(addr, len) in have.subnets.keys().filter(|k| !want.subnets.contains_key(k)) {
            match m.subnets.remove(&LpmKey::new(len, addr)) {
                Ok(()) | Err(MapError::KeyNotFound) => sum.removed += 1,
                Err(e) => return Err(map_err(MAP_SUBNETS)(e)),
            }
        }
        Ok(sum)
    }

    /// The connections the datapath balanced to a service task and still remembers (its
    /// connection table: written by the datapath only).
    pub fn connections(&self) -> Result<Vec<(CtKey, Backend)>> {
        self.maps.connections.iter().collect::<std::result::Result<_, _>>().map_err(map_err(MAP_CONNECTIONS))
    }

    /// One FDB entry, looked up directly (without reading the whole table).
    pub fn fdb_entry(&self, vni: u32, mac: [u8; 6]) -> Result<Option<FdbEntry>> {
        match self.maps.fdb.get(&FdbKey::new(vni, mac), 0) {
            Ok(v) => Ok(Some(v)),
            Err(MapError::KeyNotFound) => Ok(None),
            Err(e) => Err(map_err(MAP_FDB)(e)),
        }
    }

    /// Memory the kernel accounts to the datapath's maps (`memlock` of each map), in bytes.
    pub fn map_memory(&self) -> Result<u64> {
        let mut total = 0;
        for (name, _) in ALL_MAPS {
            let data = MapData::from_pin(self.dir.join(name)).map_err(map_err(name))?;
            use std::os::fd::{AsFd as _, AsRawFd as _};
            let fd = data.fd().as_fd().as_raw_fd();
            let path = PathBuf::from(format!("/proc/self/fdinfo/{fd}"));
            let info = fs::read_to_string(&path).map_err(io_err("reading", &path))?;
            total += info
                .lines()
                .find_map(|l| l.strip_prefix("memlock:"))
                .and_then(|v| v.trim().parse::<u64>().ok())
                .unwrap_or(0);
        }
        Ok(total)
    }

    /// How full each table is: entries in use next to `max_entries`, for every map whose
    /// entries come and go (hash tables, LRU tables, the trie, the devmap); arrays are always
    /// full and are left out. Counted by walking the keys of the pinned maps (one syscall per
    /// entry), so it reads what the kernel holds, whoever wrote it.
    pub fn map_fill(&self) -> Result<Vec<MapFill>> {
        let mut out = Vec::new();
        for (name, owner) in ALL_MAPS {
            let path = self.dir.join(name);
            let data = MapData::from_pin(&path).map_err(map_err(name))?;
            let info = data.info().map_err(map_err(name))?;
            let kind = info.map_type().map(|t| t as u32).unwrap_or(u32::MAX);
            if !HASHED_KINDS.contains(&kind) {
                continue;
            }
            use std::os::fd::{AsFd as _, AsRawFd as _};
            let entries = count_keys(data.fd().as_fd().as_raw_fd(), info.key_size(), info.max_entries()).map_err(io_err("counting the entries of", &path))?;
            out.push(MapFill { name, owner, entries, max_entries: info.max_entries() });
        }
        Ok(out)
    }

    /// One (reason, hook) counter summed over CPUs: one map read, for callers that check a
    /// verdict packet by packet.
    pub fn counter(&self, reason: Reason, dir: Direction) -> Result<Counter> {
        let v = self.maps.stats.get(&stats_index(reason, dir), 0).map_err(map_err(MAP_STATS))?;
        Ok(v.iter().fold(Counter::default(), |a, c| Counter { packets: a.packets + c.packets, bytes: a.bytes + c.bytes }))
    }

    /// Counters summed over CPUs.
    pub fn stats(&self) -> Result<Stats> {
        let mut out = Stats::default();
        for dir in Direction::ALL {
            for r in Reason::ALL {
                let v = self.maps.stats.get(&stats_index(*r, *dir), 0).map_err(map_err(MAP_STATS))?;
                let c = v.iter().fold(Counter::default(), |a, c| Counter { packets: a.packets + c.packets, bytes: a.bytes + c.bytes });
                if c.packets != 0 {
                    out.reasons.push((*r, *dir, c));
                }
            }
        }
        for kv in self.maps.vni_stats.iter() {
            let (vni, per_cpu) = kv.map_err(map_err(MAP_VNI_STATS))?;
            let mut t = VniCounters::default();
            for c in per_cpu.iter() {
                t.rx.packets += c.rx.packets;
                t.rx.bytes += c.rx.bytes;
                t.tx.packets += c.tx.packets;
                t.tx.bytes += c.tx.bytes;
            }
            out.vnis.insert(vni, t);
        }
        for kv in self.maps.service_stats.iter() {
            let (k, per_cpu) = kv.map_err(map_err(MAP_SERVICE_STATS))?;
            let t = per_cpu.iter().fold(LbCounters::default(), |a, c| LbCounters {
                connections: a.connections + c.connections,
                packets: a.packets + c.packets,
                bytes: a.bytes + c.bytes,
            });
            out.services.insert(k, t);
        }
        Ok(out)
    }

    fn program(&mut self, name: &'static str) -> Result<&mut SchedClassifier> {
        let ebpf = self.ebpf.as_mut().ok_or(DataplaneError::Program { name, source: ProgramError::NotLoaded })?;
        ebpf.program_mut(name)
            .ok_or(DataplaneError::Program { name, source: ProgramError::NotLoaded })?
            .try_into()
            .map_err(|source| DataplaneError::Program { name, source })
    }

    fn xdp_program(&mut self) -> Result<&mut Xdp> {
        let name = PROG_XDP;
        let ebpf = self.ebpf.as_mut().ok_or(DataplaneError::Program { name, source: ProgramError::NotLoaded })?;
        ebpf.program_mut(name)
            .ok_or(DataplaneError::Program { name, source: ProgramError::NotLoaded })?
            .try_into()
            .map_err(|source| DataplaneError::Program { name, source })
    }

    fn link_pin(&self, kind: &str, ifname: &str, ifindex: u32) -> PathBuf {
        self.dir.join(LINKS_SUBDIR).join(format!("{kind}-{ifname}-{ifindex}"))
    }

    /// Attaches `prog` to TC ingress of `ifname` through a TCX link pinned under the node's
    /// directory. If a pinned link for that interface exists (a previous agent), its program is
    /// replaced atomically: no packet goes unprocessed during an agent restart.
    fn attach(&mut self, prog: &'static str, kind: &str, ifname: &str, ifindex: u32) -> Result<()> {
        let pin = self.link_pin(kind, ifname, ifindex);
        if self.attached.contains(&pin) && pin.exists() {
            return Ok(());
        }
        let link_err = |message: String| DataplaneError::Link { path: pin.display().to_string(), message };
        let program = self.program(prog)?;
        let replaced = match PinnedLink::from_pin(&pin) {
            Ok(old) => {
                let link = FdLink::from(old).try_into().map_err(|e: aya::programs::links::LinkError| link_err(e.to_string()))?;
                match program.attach_to_link(link) {
                    Ok(id) => Some(id),
                    Err(e) => {
                        // The pin outlived its device (an interface deleted and re-created under
                        // the same name, possibly the same ifindex, while no agent ran): the link
                        // is defunct and can never be updated. Drop it and attach afresh.
                        tracing::info!(pin = %pin.display(), "dropping a pinned link that cannot be updated ({e}); attaching afresh");
                        fs::remove_file(&pin).map_err(io_err("unpinning", &pin))?;
                        None
                    }
                }
            }
            Err(_) => None,
        };
        let program = self.program(prog)?;
        let id = match replaced {
            Some(id) => id,
            None => program
                .attach_with_options(ifname, TcAttachType::Ingress, TcAttachOptions::TcxOrder(LinkOrder::default()))
                .map_err(|e| link_err(format!("attaching to {ifname}: {e}")))?,
        };
        let link = program.take_link(id).map_err(|e| link_err(e.to_string()))?;
        let fd: FdLink = link.try_into().map_err(|e: aya::programs::links::LinkError| link_err(e.to_string()))?;
        if !pin.exists() {
            fd.pin(&pin).map_err(|e| link_err(format!("pinning: {e}")))?;
        }
        self.attached.insert(pin);
        Ok(())
    }

    /// Egress program on an endpoint's host-side veth.
    pub fn attach_egress(&mut self, ifname: &str, ifindex: u32) -> Result<()> {
        self.attach(PROG_EGRESS, "egress", ifname, ifindex)
    }

    /// Ingress program on the underlay interface.
    pub fn attach_ingress(&mut self, ifname: &str, ifindex: u32) -> Result<()> {
        self.attach(PROG_INGRESS, "ingress", ifname, ifindex)
    }

    /// Attaches the XDP ingress to `ifname` (the underlay) through an XDP link pinned under the
    /// node's directory (`links/xdp-<ifname>-<ifindex>`), in front of the TC ingress. A pinned
    /// link of a previous agent gets this program atomically, as [`Self::attach_ingress`] does.
    /// `generic`: generic (skb) XDP; otherwise driver mode where the driver has it, generic
    /// where it does not (the kernel's choice). The mode of an adopted link stays as it was.
    pub fn attach_xdp(&mut self, ifname: &str, ifindex: u32, generic: bool) -> Result<()> {
        let pin = self.link_pin("xdp", ifname, ifindex);
        if self.attached.contains(&pin) && pin.exists() {
            return Ok(());
        }
        let link_err = |message: String| DataplaneError::Link { path: pin.display().to_string(), message };
        let program = self.xdp_program()?;
        let replaced = match PinnedLink::from_pin(&pin) {
            Ok(old) => {
                let link = XdpLink::try_from(FdLink::from(old)).map_err(|e| link_err(e.to_string()))?;
                match program.attach_to_link(link) {
                    Ok(id) => Some(id),
                    Err(e) => {
                        tracing::info!(pin = %pin.display(), "dropping a pinned XDP link that cannot be updated ({e}); attaching afresh");
                        fs::remove_file(&pin).map_err(io_err("unpinning", &pin))?;
                        None
                    }
                }
            }
            Err(_) => None,
        };
        let id = match replaced {
            Some(id) => id,
            None => program
                .attach_to_if_index(ifindex, if generic { XdpMode::Skb } else { XdpMode::default() })
                .map_err(|e| link_err(format!("attaching XDP to {ifname}: {e}")))?,
        };
        let link = program.take_link(id).map_err(|e| link_err(e.to_string()))?;
        let fd = FdLink::try_from(link).map_err(|e| link_err(format!("XDP link of {ifname} is not a bpf link: {e}")))?;
        if !pin.exists() {
            fd.pin(&pin).map_err(|e| link_err(format!("pinning: {e}")))?;
        }
        self.attached.insert(pin);
        Ok(())
    }

    /// Detaches the XDP ingress from `ifname` if a pinned link holds it there (`--datapath tc`
    /// after xdp). Returns whether there was one.
    pub fn detach_xdp(&mut self, ifname: &str, ifindex: u32) -> Result<bool> {
        let pin = self.link_pin("xdp", ifname, ifindex);
        self.attached.remove(&pin);
        match fs::remove_file(&pin) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(io_err("unpinning", &pin)(e)),
        }
    }

    /// Whether an XDP link of this node is pinned for `ifname` (the XDP ingress is attached).
    pub fn xdp_attached(&self, ifname: &str, ifindex: u32) -> bool {
        self.link_pin("xdp", ifname, ifindex).exists()
    }

    /// Makes the XDP ingress's redirect targets exactly `ifindexes` (the local endpoints'
    /// host-side veths): adds the missing ones, then removes the others. Each must exist.
    pub fn set_xdp_targets(&mut self, ifindexes: &[u32]) -> Result<DiffSummary> {
        let m = &mut self.maps.xdp_targets;
        let have: Vec<u32> = m.keys().collect::<std::result::Result<_, _>>().map_err(map_err(MAP_XDP_TARGETS))?;
        let mut sum = DiffSummary::default();
        for &i in ifindexes.iter().filter(|i| !have.contains(i)) {
            m.insert(i, i, None, 0).map_err(|source| DataplaneError::XdpMap { name: MAP_XDP_TARGETS, source })?;
            sum.added += 1;
        }
        for i in have.into_iter().filter(|i| !ifindexes.contains(i)) {
            match m.remove(i) {
                Ok(()) | Err(MapError::KeyNotFound) => sum.removed += 1,
                Err(e) => return Err(map_err(MAP_XDP_TARGETS)(e)),
            }
        }
        Ok(sum)
    }

    /// Removes link pins whose (interface, ifindex) is not in `keep`; their attachments go with
    /// them (or went already with the interface).
    pub fn sweep_links(&self, keep: &[(&str, u32)]) -> Result<usize> {
        let dir = self.dir.join(LINKS_SUBDIR);
        let mut removed = 0;
        for entry in fs::read_dir(&dir).map_err(io_err("reading", &dir))? {
            let entry = entry.map_err(io_err("reading", &dir))?;
            let name = entry.file_name().to_string_lossy().to_string();
            let wanted = keep.iter().any(|(ifn, idx)| {
                name == format!("egress-{ifn}-{idx}") || name == format!("ingress-{ifn}-{idx}") || name == format!("xdp-{ifn}-{idx}")
            });
            if !wanted {
                fs::remove_file(entry.path()).map_err(io_err("unpinning", &entry.path()))?;
                removed += 1;
            }
        }
        Ok(removed)
    }

    /// Runs a program once with `BPF_PROG_TEST_RUN` (or `repeat` times) on `frame`.
    /// Returns (verdict, frame out, mean duration per run).
    /// Works for the TC programs and the XDP one ([`PROG_XDP`]: its verdicts are `XDP_*`).
    pub fn test_run(&mut self, prog: &'static str, frame: &[u8], repeat: u32) -> Result<(i32, Vec<u8>, std::time::Duration)> {
        let mut out = vec![0u8; frame.len() + 256];
        let opts = TestRunOptions { data_in: Some(frame), data_out: Some(&mut out), repeat: repeat.max(1), ..Default::default() };
        let r = if prog == PROG_XDP { self.xdp_program()?.test_run(opts) } else { self.program(prog)?.test_run(opts) }
            .map_err(|source| DataplaneError::Program { name: prog, source })?;
        out.truncate(r.data_size_out as usize);
        Ok((r.return_value as i32, out, r.duration))
    }
}

/// The ids of the programs attached through the links pinned in the node directory `dir`
/// (for the kernel's per-program run-time statistics).
pub fn attached_program_ids(dir: &Path) -> Result<Vec<u32>> {
    let links = dir.join(LINKS_SUBDIR);
    let mut ids = Vec::new();
    for e in fs::read_dir(&links).map_err(io_err("reading", &links))? {
        let path = e.map_err(io_err("reading", &links))?.path();
        let link_err = |message: String| DataplaneError::Link { path: path.display().to_string(), message };
        let link = PinnedLink::from_pin(&path).map_err(|e| link_err(format!("opening: {e}")))?;
        let info = FdLink::from(link).info().map_err(|e| link_err(format!("link info: {e}")))?;
        ids.push(info.program_id());
    }
    ids.sort_unstable();
    ids.dedup();
    Ok(ids)
}

/// Removes a node's pins: maps, the layout record, links (which detaches the programs) and the
/// directory, whatever layout they have. Keeps going past errors and reports them all.
pub fn remove_pins(dir: &Path) -> std::result::Result<(), Vec<String>> {
    let mut errors = Vec::new();
    // `links/`, and any other sub-directory of pins another version of the agent made: pins
    // of every layout go (this never reads them).
    let subdirs = fs::read_dir(dir).map(|rd| rd.flatten().filter(|e| e.file_type().is_ok_and(|t| t.is_dir())).map(|e| e.path()).collect::<Vec<_>>());
    for sub in subdirs.unwrap_or_default() {
        if let Ok(rd) = fs::read_dir(&sub) {
            for e in rd.flatten() {
                if let Err(err) = fs::remove_file(e.path()) {
                    errors.push(format!("{}: {err}", e.path().display()));
                }
            }
        }
        if let Err(err) = fs::remove_dir(&sub) {
            errors.push(format!("{}: {err}", sub.display()));
        }
    }
    for m in ALL_MAPS.iter().map(|(m, _)| *m).chain([MAP_LAYOUT]) {
        let p = dir.join(m);
        match fs::remove_file(&p) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => errors.push(format!("{}: {e}", p.display())),
        }
    }
    // Maps another version of the agent pinned here (the directory is the node's, all ours).
    if let Ok(rd) = fs::read_dir(dir) {
        for e in rd.flatten().filter(|e| e.file_type().is_ok_and(|t| t.is_file())) {
            if let Err(err) = fs::remove_file(e.path()) {
                errors.push(format!("{}: {err}", e.path().display()));
            }
        }
    }
    match fs::remove_dir(dir) {
        Ok(()) => remove_pin_root_if_empty(dir),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => errors.push(format!("{}: {e}", dir.display())),
    }
    if errors.is_empty() { Ok(()) } else { Err(errors) }
}

/// After `dir` (a pin directory, or a group of them) was removed: removes the shared
/// `<bpffs>/overlay` above it too when nothing else lives there.
pub fn remove_pin_root_if_empty(dir: &Path) {
    if let Some(parent) = dir.parent().filter(|p| p.file_name().is_some_and(|n| n == PIN_SUBDIR)) {
        // Fails (and is left) when another node's or test's pins are there.
        let _ = fs::remove_dir(parent);
    }
}
