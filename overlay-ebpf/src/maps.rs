//! The datapath's maps. All are pinned by name under the agent's per-node bpffs directory, so a
//! restarted agent finds them again and forwarding never stops. Changing a pinned map here (its
//! kind, key or value type, `max_entries`, flags, or adding, removing or renaming one) means
//! bumping `overlay_common::PIN_LAYOUT`: agents refuse pins of another layout.
use aya_ebpf::{
    macros::map,
    maps::{Array, DevMapHash, HashMap, LpmTrie, LruHashMap, PerCpuArray, PerCpuHashMap, RingBuf},
};
use overlay_common::{
    Backend, Counter, CtKey, EndpointInfo, LbCounters, LbStatsKey, FdbEntry, FdbKey, MAGLEV_M, MAX_BACKENDS,
    MAX_CONNECTIONS, MAX_ENDPOINTS, MAX_FDB, MAX_MEMBERS, MAX_NAMES, MAX_NEIGH, MAX_SERVICES,
    MAX_SUBNETS, MAX_VNIS, MONITOR_RING_BYTES, MemberInfo, MonitorConfig, MonitorRate, NameEntry, NameKey, NeighEntry, NeighKey, NodeConfig, PublishedEntry, PublishedKey,
    RevEntry, RevKey, STATS_ENTRIES, ServiceEntry, ServiceKey, SubnetInfo, VniCounters, VniInfo,
};

/// (VNI, MAC) -> local ifindex or remote VTEP.
#[map]
pub static FDB: HashMap<FdbKey, FdbEntry> = HashMap::pinned(MAX_FDB, 0);
/// VNIs present on this node.
#[map]
pub static VNIS: HashMap<u32, VniInfo> = HashMap::pinned(MAX_VNIS, 0);
/// Local endpoints by host-side veth ifindex.
#[map]
pub static ENDPOINTS: HashMap<u32, EndpointInfo> = HashMap::pinned(MAX_ENDPOINTS, 0);
/// (VNI, IPv4) -> MAC, for ARP answers.
#[map]
pub static NEIGH: HashMap<NeighKey, NeighEntry> = HashMap::pinned(MAX_NEIGH, 0);
/// Member VTEPs by underlay IPv4.
#[map]
pub static MEMBERS: HashMap<u32, MemberInfo> = HashMap::pinned(MAX_MEMBERS, 0);
/// This node's settings (index 0).
#[map]
pub static CONFIG: Array<NodeConfig> = Array::pinned(1, 0);
/// Per-CPU {packets, bytes} by (reason, direction); see `overlay_common::stats_index`.
#[map]
pub static STATS: PerCpuArray<Counter> = PerCpuArray::pinned(STATS_ENTRIES, 0);
/// Per-CPU per-VNI rx/tx counters; the agent creates an entry per VNI.
#[map]
pub static VNI_STATS: PerCpuHashMap<u32, VniCounters> = PerCpuHashMap::pinned(MAX_VNIS, 0);
/// Every overlay subnet of the cluster (IPv4 prefix, network order) -> its VNI: what the way
/// out must never reach.
#[map]
pub static SUBNETS: LpmTrie<u32, SubnetInfo> = LpmTrie::pinned(MAX_SUBNETS, 0);
/// (VNI, name in DNS wire format) -> addresses: the names the datapath answers.
#[map]
pub static NAMES: HashMap<NameKey, NameEntry> = HashMap::pinned(MAX_NAMES, 0);
/// Scratch space for the name table key of the DNS question being parsed (one per CPU).
#[map]
pub static DNS_KEY: PerCpuArray<NameKey> = PerCpuArray::with_max_entries(1, 0);
/// (VNI, VIP, port, protocol) -> the service's slot and backend count. Written by the agent.
#[map]
pub static SERVICES: HashMap<ServiceKey, ServiceEntry> = HashMap::pinned(MAX_SERVICES * 8, 0);
/// Maglev lookup tables, [`MAGLEV_M`] entries per service slot: backend index. Written by the
/// agent, the same on every node for the same task set.
#[map]
pub static MAGLEV: Array<u32> = Array::pinned(MAX_SERVICES * MAGLEV_M, 0);
/// Backends, [`MAX_BACKENDS`] per service slot. Written by the agent.
#[map]
pub static BACKENDS: Array<Backend> = Array::pinned(MAX_SERVICES * MAX_BACKENDS, 0);
/// Client flow -> its backend: every packet of a connection goes to the task its first one
/// chose. Written by the datapath (the agent never rewrites it).
#[map]
pub static CONNECTIONS: LruHashMap<CtKey, Backend> = LruHashMap::pinned(MAX_CONNECTIONS, 0);
/// The same flows seen from the task's replies -> the VIP and port they came to. Written by the
/// datapath.
#[map]
pub static REVERSE: LruHashMap<RevKey, RevEntry> = LruHashMap::pinned(MAX_CONNECTIONS, 0);
/// Per-CPU counters per task of each VIP port (connections, packets, bytes). Written by the
/// datapath (entries made on first use), read by `overlay stats`.
#[map]
pub static SERVICE_STATS: PerCpuHashMap<LbStatsKey, LbCounters> = PerCpuHashMap::pinned(MAX_SERVICES * MAX_BACKENDS, 0);
/// (published port, protocol) -> the VIP port it stands for: what every node's address answers
/// (the routing mesh). Written by the agent.
#[map]
pub static PUBLISHED: HashMap<PublishedKey, PublishedEntry> = HashMap::pinned(MAX_SERVICES, 0);
/// A mesh flow as its task's replies carry it -> the node that received the request (its VTEP
/// address, `vip`) and the published port the client asked (`vip_port`), made where the task
/// runs when the request arrives: replies go back through that node, or straight to the client
/// with that address and port as source ([`overlay_common::NODE_F_MESH_DIRECT`]). Written by the datapath.
#[map]
pub static MESH_RETURN: LruHashMap<RevKey, RevEntry> = LruHashMap::pinned(MAX_CONNECTIONS, 0);
/// The XDP ingress's redirect targets: each local endpoint's host-side veth ifindex -> that
/// interface (a devmap keyed by ifindex). Written by the agent with the endpoint table.
#[map]
pub static XDP_TARGETS: DevMapHash = DevMapHash::pinned(MAX_ENDPOINTS, 0);
/// Datapath events for `overlay monitor` (drops, sampled forwards). Written by the datapath
/// only while a monitor asks (`MONITOR`).
#[map]
pub static EVENTS: RingBuf = RingBuf::pinned(MONITOR_RING_BYTES, 0);
/// What a running `overlay monitor` asks for (index 0). Written by the monitor, never by the
/// agent.
#[map]
pub static MONITOR: Array<MonitorConfig> = Array::pinned(1, 0);
/// Per-CPU rate limit and sampling state of the events. Written by the datapath.
#[map]
pub static MONITOR_RATE: PerCpuArray<MonitorRate> = PerCpuArray::pinned(1, 0);
