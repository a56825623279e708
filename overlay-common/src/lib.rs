//! Types shared by the eBPF datapath (`overlay-ebpf`) and the agent (`overlay-userspace`).
//!
//! Every map key and value is `#[repr(C)]`, `Copy`, has explicit padding and holds no `bool`,
//! `Option` or enum, so both sides agree on the bytes. IPv4 addresses are stored in network byte
//! order (as they sit in a packet) in a `u32` read with native endianness; [`ip_to_map`] and
//! [`ip_from_map`] convert. The pinned maps outlive the agent: changing any key or value type
//! here (or a map's kind or size) means bumping [`PIN_LAYOUT`].
#![no_std]

pub mod reason;
pub mod wire;

pub use reason::{Direction, Reason};

/// Layout version of the pinned maps under `<bpffs>/overlay/<node>/`. Pins outlive the binary
/// that made them, so an agent adopts a pin directory only when it records this same number.
/// **Bump it whenever any pinned map changes**: a key or value type below (its fields, their
/// meaning or its size), a map's kind or `max_entries`, or a map added, removed or renamed.
/// History: 1, the maps of `overlay-ebpf/src/maps.rs` when the record was introduced; 2, the
/// XDP mode (`STATS` grew a third direction, [`Direction::Xdp`], and the devmap `XDP_TARGETS`)
/// and FDB, NEIGH and NAMES grown from 65,536 to 262,144 entries (100,000 endpoints and their
/// names), in one step; 3, the monitor's maps (`EVENTS`, `MONITOR`, `MONITOR_RATE`); 4, the
/// value of `MESH_RETURN` from a node address alone to a [`RevEntry`] (node address and the
/// published port, for replies sent straight back: [`NODE_F_MESH_DIRECT`]).
pub const PIN_LAYOUT: u32 = 4;

/// Value of the layout record `LAYOUT` (array[1]) that the agent pins beside the maps. Its own
/// shape never changes (it is how every version tells the others apart): `layout` is
/// [`PIN_LAYOUT`] of the agent that made the directory.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PinLayout {
    pub layout: u32,
    /// The record's own format (1); for readers that do not know a newer one.
    pub version: u32,
}

/// Key of the FDB: which VTEP (or local interface) owns `mac` in network `vni`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FdbKey {
    pub vni: u32,
    pub mac: [u8; 6],
    pub _pad: [u8; 2],
}

impl FdbKey {
    pub const fn new(vni: u32, mac: [u8; 6]) -> Self {
        Self { vni, mac, _pad: [0; 2] }
    }
}

/// `FdbEntry::kind`: the MAC belongs to an endpoint on this node.
pub const FDB_LOCAL: u32 = 1;
/// `FdbEntry::kind`: the MAC belongs to an endpoint behind a remote VTEP.
pub const FDB_REMOTE: u32 = 2;
/// `FdbEntry::kind`: the MAC is the network's gateway: the way out through this node.
pub const FDB_GATEWAY: u32 = 3;
/// `FdbEntry::kind`: the MAC is a service's VIP (`Mac::from_ip(vip)`): translated to a task.
pub const FDB_SERVICE: u32 = 4;

/// Value of the FDB.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FdbEntry {
    /// [`FDB_LOCAL`] or [`FDB_REMOTE`].
    pub kind: u32,
    /// Local entries: ifindex of the endpoint's host-side veth. Remote and gateway entries: 0.
    pub ifindex: u32,
    /// Remote entries: the VTEP's underlay IPv4 (network order). Local entries: 0.
    pub vtep: u32,
    pub _pad: u32,
}

impl FdbEntry {
    pub const fn local(ifindex: u32) -> Self {
        Self { kind: FDB_LOCAL, ifindex, vtep: 0, _pad: 0 }
    }
    pub const fn remote(vtep: u32) -> Self {
        Self { kind: FDB_REMOTE, ifindex: 0, vtep, _pad: 0 }
    }
    pub const fn gateway() -> Self {
        Self { kind: FDB_GATEWAY, ifindex: 0, vtep: 0, _pad: 0 }
    }
    pub const fn service() -> Self {
        Self { kind: FDB_SERVICE, ifindex: 0, vtep: 0, _pad: 0 }
    }
}

/// Value of the VNI table (key: VNI as `u32`). Presence means the network exists on this node.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct VniInfo {
    /// Container MTU of the network (informational for the datapath; used by the agent).
    pub mtu: u32,
    /// `VNI_F_*` bits.
    pub flags: u32,
}

/// `VniInfo::flags`: the network is internal: nothing leaves it through the gateway.
pub const VNI_F_INTERNAL: u32 = 1;

/// Value of the subnet table (an LPM trie keyed by IPv4 prefix, network order): every overlay
/// subnet of the cluster. A packet sent to a gateway but addressed inside one is dropped: the
/// way out never carries traffic from one overlay into another.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SubnetInfo {
    pub vni: u32,
    pub _pad: u32,
}

/// Value of the endpoint table, keyed by the ifindex of the endpoint's host-side veth.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct EndpointInfo {
    pub vni: u32,
    /// The endpoint's IPv4 (network order): the only source address it may send from.
    pub ip: u32,
    /// The endpoint's MAC: the only source MAC it may send from.
    pub mac: [u8; 6],
    /// `EP_F_*` bits.
    pub flags: u8,
    pub _pad: u8,
}

/// `EndpointInfo::flags`: the endpoint's container is on several networks: it sees names the
/// name table of this network alone cannot answer, so its DNS questions go to the agent.
pub const EP_F_MULTI_NETWORK: u8 = 1;

/// Key of the service table: one port of one service's VIP in network `vni`. `port` is in
/// network order (as in the packet); `proto` 6 (TCP) or 17 (UDP); `port` and `proto` 0: the
/// VIP itself (it exists; it answers ping).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServiceKey {
    pub vni: u32,
    pub vip: u32,
    pub port: u16,
    pub proto: u8,
    pub _pad: u8,
}

/// Value of the service table: the service's slot in the Maglev and backend tables, and how
/// many backends (tasks) it has (0: connections are refused and counted).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ServiceEntry {
    pub id: u32,
    pub backends: u32,
}

/// Size of one service's Maglev lookup table (a prime, as Maglev requires): each entry names a
/// backend; a flow's hash picks the entry.
pub const MAGLEV_M: u32 = 1021;
/// Services one node can balance.
pub const MAX_SERVICES: u32 = 256;
/// Backends (tasks) one service can have.
pub const MAX_BACKENDS: u32 = 64;
/// Entries of the connection tables (LRU: the least recently used connection goes first).
pub const MAX_CONNECTIONS: u32 = 65_536;

/// One backend of a service: a task's address and the target port (network order).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Backend {
    pub ip: u32,
    pub port: u16,
    pub _pad: u16,
}

/// Key of the connection table: a client's flow to a VIP port, as the client sends it (ports
/// in network order).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct CtKey {
    pub vni: u32,
    pub client: u32,
    pub vip: u32,
    pub client_port: u16,
    pub vip_port: u16,
    pub proto: u8,
    pub _pad: [u8; 3],
}

/// Key of the reverse table: the same flow as the task's replies carry it.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct RevKey {
    pub vni: u32,
    pub backend: u32,
    pub client: u32,
    pub backend_port: u16,
    pub client_port: u16,
    pub proto: u8,
    pub _pad: [u8; 3],
}

/// Where a reply's source is rewritten back to: the VIP and its port (network order), or for
/// the routing mesh ([`REV_F_MESH`]) the node address and published port the client used.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct RevEntry {
    pub vip: u32,
    pub vip_port: u16,
    /// `REV_F_*` bits (what was padding before: old entries read 0).
    pub flags: u16,
}

/// `RevEntry::flags`: the flow came through the routing mesh; its replies leave the node by
/// the underlay towards a client outside the overlay.
pub const REV_F_MESH: u16 = 1;

/// Key of the published-port table (the routing mesh): a port (network order) and protocol
/// that every node's address answers.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PublishedKey {
    pub port: u16,
    pub proto: u8,
    pub _pad: u8,
}

/// Value of the published-port table: the VIP port it stands for (whose slot, backends and
/// Maglev table pick the task) and the MAC of its network's gateway (the source MAC the task
/// sees on a mesh client's frames, and where it sends its replies).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PublishedEntry {
    pub service: ServiceKey,
    pub gw_mac: [u8; 6],
    /// The network's MTU: larger packets are not carried through the mesh.
    pub mtu: u16,
}

/// The low (reserved) byte of the VXLAN header between our own VTEPs: a frame of the routing
/// mesh. `MESH_IN`: a client's frame for a task, with the client's own (outside) address;
/// `MESH_OUT`: a task's reply to such a client, back to the node that received the request.
/// Only accepted from member VTEPs; other VXLAN peers never set it (RFC 7348: reserved, zero).
/// A `MESH_IN` frame also carries the published port the client asked (network order) in the
/// header's 2nd and 3rd reserved bytes ([`VXLAN_MESH_PORT_OFF`]): the task's node needs it to
/// send replies straight back ([`NODE_F_MESH_DIRECT`]); 0 from a node that does not say it.
pub const VXLAN_MESH_IN: u8 = 1;
pub const VXLAN_MESH_OUT: u8 = 2;
/// Offset in the VXLAN header of a `MESH_IN` frame's published port (2 bytes, network order).
pub const VXLAN_MESH_PORT_OFF: usize = 2;

/// Key of the per-task service counters: one task of one VIP port.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LbStatsKey {
    pub vni: u32,
    pub vip: u32,
    pub task: u32,
    /// Network order, as in the packet.
    pub vip_port: u16,
    pub proto: u8,
    pub _pad: u8,
}

/// Per-CPU counters of one task of one VIP port: connections it was picked for, and the
/// packets and bytes sent to it through the VIP.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct LbCounters {
    pub connections: u64,
    pub packets: u64,
    pub bytes: u64,
}

/// The flow hash that picks a backend: the client's address and port, the protocol and the
/// service port (not the node: every node picks the same task for a flow). Ports in network
/// order as in the packet. Shared by the datapath and the agent's tests.
pub const fn flow_hash(client: u32, client_port: u16, proto: u8, service_port: u16) -> u32 {
    let mut x = client ^ 0x9e37_79b9;
    x ^= (client_port as u32) << 16 | service_port as u32;
    x = x.wrapping_mul(0x85eb_ca6b) ^ proto as u32;
    x ^= x >> 13;
    x = x.wrapping_mul(0xc2b2_ae35);
    x ^= x >> 16;
    x
}

/// Longest DNS name (wire format: length-prefixed labels and the final zero) the datapath
/// answers; longer names go to the agent's resolver.
pub const DNS_NAME_MAX: usize = 64;
/// Most addresses one name has in the name table; names with more go to the agent.
pub const DNS_ADDRS_MAX: usize = 8;
/// TTL of overlay names, seconds (the agent's resolver uses the same).
pub const DNS_TTL: u32 = 5;

/// Key of the name table: a name of network `vni` in DNS wire format, lowercased, zero-padded.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NameKey {
    pub vni: u32,
    pub name: [u8; DNS_NAME_MAX],
}

/// Value of the name table: the name's addresses (network order), `count` of them.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct NameEntry {
    pub count: u32,
    pub addrs: [u32; DNS_ADDRS_MAX],
}

/// Key of the neighbour table: (VNI, IPv4 network order) -> MAC, used to answer ARP.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NeighKey {
    pub vni: u32,
    pub ip: u32,
}

/// Value of the neighbour table.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct NeighEntry {
    pub mac: [u8; 6],
    pub _pad: [u8; 2],
}

/// Value of the member table (key: VTEP IPv4, network order). Presence means "member VTEP".
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct MemberInfo {
    /// Index of the node in the cluster description; informational.
    pub node_id: u32,
    pub _pad: u32,
}

/// The node's own settings: single entry (index 0) of the config array.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct NodeConfig {
    /// This node's VTEP address (network order). 0 means "not configured": the programs drop
    /// overlay traffic with [`Reason::NoConfig`] and pass everything else.
    pub vtep: u32,
    /// ifindex of the underlay interface encapsulated frames leave by.
    pub underlay_ifindex: u32,
    /// VXLAN UDP port, host order.
    pub vxlan_port: u16,
    /// `NODE_F_*` bits (what was padding before: old pins read 0).
    pub flags: u16,
    /// Lowest and number of UDP source ports used for flow entropy, host order.
    pub src_port_min: u16,
    pub src_port_range: u16,
}

/// `NodeConfig::flags`: the cluster has VIP services, so frames entering containers are
/// checked against the reverse translation table (skipped otherwise: no lookup per packet).
pub const NODE_F_SERVICES: u16 = 1;
/// `NodeConfig::flags`: the cluster publishes ports (the routing mesh): non-overlay traffic to
/// this node's address is checked against the published-port table, and replies of tasks to
/// addresses outside the overlay against the mesh's return table.
pub const NODE_F_MESH: u16 = 2;
/// `NodeConfig::flags`: the node's underlay lets it send packets with another node's address
/// as source (`overlay agent --mesh-return direct`): its tasks' replies to mesh clients that
/// came through another node leave from here, with that node's address and published port as
/// source, instead of going back through it (direct server return).
pub const NODE_F_MESH_DIRECT: u16 = 4;

/// One counter: packets and bytes. Per-CPU in the maps; the agent sums over CPUs.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct Counter {
    pub packets: u64,
    pub bytes: u64,
}

/// Per-VNI traffic counters (per-CPU hash keyed by VNI).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct VniCounters {
    /// Frames received from the underlay and delivered to a local endpoint.
    pub rx: Counter,
    /// Frames sent by local endpoints: encapsulated to a remote VTEP or switched locally.
    pub tx: Counter,
}

/// Number of slots in the per-CPU reason counter array: `reason + direction * REASON_SLOTS`.
pub const REASON_SLOTS: u32 = 64;
/// Size of the stats array: one block of [`REASON_SLOTS`] per [`Direction`].
pub const STATS_ENTRIES: u32 = REASON_SLOTS * 3;

/// Index into the stats array for a (reason, direction) pair.
#[inline(always)]
pub const fn stats_index(reason: Reason, dir: Direction) -> u32 {
    reason as u32 + (dir as u32) * REASON_SLOTS
}

/// Map sizes (part of the pinned layout: changing one means bumping [`PIN_LAYOUT`]).
pub const MAX_FDB: u32 = 262_144;
pub const MAX_VNIS: u32 = 4_096;
pub const MAX_ENDPOINTS: u32 = 4_096;
pub const MAX_NEIGH: u32 = 262_144;
pub const MAX_MEMBERS: u32 = 4_096;
pub const MAX_SUBNETS: u32 = 4_096;
pub const MAX_NAMES: u32 = 262_144;

/// Bytes of each monitored packet copied into its event (from the first byte of the frame as
/// the hook sees it: a VXLAN frame's outer headers, VXLAN and the inner headers fit).
pub const MONITOR_CAPTURE: usize = 128;
/// Size of the monitor's ring buffer `EVENTS` (a power of two, a multiple of the page size).
pub const MONITOR_RING_BYTES: u32 = 256 * 1024;

/// One datapath event for `overlay monitor`, written by the programs into the ring buffer
/// `EVENTS`: a drop, or a sampled forward.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MonitorEvent {
    /// `bpf_ktime_get_ns()` (CLOCK_MONOTONIC) when the program decided.
    pub ts_ns: u64,
    /// The interface the packet came in by (the endpoint's host-side veth, or the underlay).
    pub ifindex: u32,
    /// The packet's length as the hook saw it (before any rewrite).
    pub len: u32,
    /// [`Reason`] code: a drop reason, or the kind of forward.
    pub reason: u32,
    /// [`Direction`] code: the hook.
    pub hook: u32,
    /// Bytes of `data` that hold the packet (at most [`MONITOR_CAPTURE`]).
    pub cap_len: u32,
    /// The VNI where the program knew it (forwards); 0 otherwise (read from the bytes).
    pub vni: u32,
    /// The packet's first bytes (for a forward: after the program's rewrite).
    pub data: [u8; MONITOR_CAPTURE],
}

/// What `overlay monitor` asks of the programs (`MONITOR`, array[1]). A program emits a drop
/// event while `drops_until_ns`, a sampled forward while `all_until_ns`, is later than now: a
/// monitor renews them every second, so one that dies without clearing them stops costing the
/// datapath anything two seconds later. Zero (nobody listening) costs one array read.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MonitorConfig {
    pub drops_until_ns: u64,
    pub all_until_ns: u64,
    /// With forwards asked for: one forward in this many (per CPU) becomes an event.
    pub sample_every: u32,
    /// Events per CPU per second at most; the rest are counted in [`MonitorRate::suppressed`].
    pub max_per_sec: u32,
}

/// Per-CPU state of the monitor's rate limit and sampling (`MONITOR_RATE`, per-CPU array[1]).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MonitorRate {
    /// Start of the current one-second window.
    pub window_ns: u64,
    /// Events sent in the window.
    pub sent: u32,
    /// Forwards seen since the last sampled one.
    pub seen: u32,
    /// Events not sent: over the rate limit, or the ring buffer full.
    pub suppressed: u64,
}

/// Converts an IPv4 address to its map representation (network byte order in a native `u32`).
#[inline(always)]
pub const fn ip_to_map(octets: [u8; 4]) -> u32 {
    u32::from_ne_bytes(octets)
}

/// Converts a map IPv4 back to octets.
#[inline(always)]
pub const fn ip_from_map(v: u32) -> [u8; 4] {
    v.to_ne_bytes()
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: all of these are `#[repr(C)]`, `Copy`, have explicit padding fields and contain
    // only integers and byte arrays, so every bit pattern is valid.
    unsafe impl aya::Pod for super::PinLayout {}
    unsafe impl aya::Pod for super::MonitorConfig {}
    unsafe impl aya::Pod for super::MonitorRate {}
    unsafe impl aya::Pod for super::MonitorEvent {}
    unsafe impl aya::Pod for super::FdbKey {}
    unsafe impl aya::Pod for super::FdbEntry {}
    unsafe impl aya::Pod for super::VniInfo {}
    unsafe impl aya::Pod for super::EndpointInfo {}
    unsafe impl aya::Pod for super::NeighKey {}
    unsafe impl aya::Pod for super::NeighEntry {}
    unsafe impl aya::Pod for super::MemberInfo {}
    unsafe impl aya::Pod for super::NodeConfig {}
    unsafe impl aya::Pod for super::Counter {}
    unsafe impl aya::Pod for super::VniCounters {}
    unsafe impl aya::Pod for super::SubnetInfo {}
    unsafe impl aya::Pod for super::NameKey {}
    unsafe impl aya::Pod for super::NameEntry {}
    unsafe impl aya::Pod for super::ServiceKey {}
    unsafe impl aya::Pod for super::ServiceEntry {}
    unsafe impl aya::Pod for super::Backend {}
    unsafe impl aya::Pod for super::CtKey {}
    unsafe impl aya::Pod for super::RevKey {}
    unsafe impl aya::Pod for super::RevEntry {}
    unsafe impl aya::Pod for super::LbStatsKey {}
    unsafe impl aya::Pod for super::LbCounters {}
    unsafe impl aya::Pod for super::PublishedKey {}
    unsafe impl aya::Pod for super::PublishedEntry {}
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use core::mem::size_of;

    #[test]
    fn layouts_have_no_implicit_padding() {
        assert_eq!(size_of::<FdbKey>(), 12, "FdbKey: vni(4) + mac(6) + pad(2)");
        assert_eq!(size_of::<FdbEntry>(), 16);
        assert_eq!(size_of::<VniInfo>(), 8);
        assert_eq!(size_of::<EndpointInfo>(), 16);
        assert_eq!(size_of::<NeighKey>(), 8);
        assert_eq!(size_of::<NeighEntry>(), 8);
        assert_eq!(size_of::<MemberInfo>(), 8);
        assert_eq!(size_of::<NodeConfig>(), 16);
        assert_eq!(size_of::<Counter>(), 16);
        assert_eq!(size_of::<VniCounters>(), 32);
        assert_eq!(size_of::<SubnetInfo>(), 8);
        assert_eq!(size_of::<NameKey>(), 4 + DNS_NAME_MAX);
        assert_eq!(size_of::<NameEntry>(), 4 + 4 * DNS_ADDRS_MAX);
        assert_eq!(size_of::<ServiceKey>(), 12);
        assert_eq!(size_of::<ServiceEntry>(), 8);
        assert_eq!(size_of::<Backend>(), 8);
        assert_eq!(size_of::<CtKey>(), 20);
        assert_eq!(size_of::<RevKey>(), 20);
        assert_eq!(size_of::<RevEntry>(), 8);
        assert_eq!(size_of::<LbStatsKey>(), 16);
        assert_eq!(size_of::<LbCounters>(), 24);
    }

    #[test]
    fn ip_conversion_round_trips_and_is_network_order() {
        let v = ip_to_map([192, 168, 50, 1]);
        assert_eq!(v.to_ne_bytes(), [192, 168, 50, 1]);
        assert_eq!(ip_from_map(v), [192, 168, 50, 1]);
    }

    #[test]
    fn stats_index_separates_directions() {
        let e = stats_index(Reason::FwdEncap, Direction::Egress);
        let i = stats_index(Reason::FwdEncap, Direction::Ingress);
        assert_ne!(e, i);
        assert!(i < STATS_ENTRIES && e < STATS_ENTRIES);
        for r in Reason::ALL {
            assert!((*r as u32) < REASON_SLOTS, "{:?} does not fit the stats array", r);
        }
    }

    #[test]
    fn reason_codes_are_stable() {
        // These numbers are an interface: never renumber, retire in place.
        assert_eq!(Reason::FwdLocal as u32, 1);
        assert_eq!(Reason::FwdEncap as u32, 2);
        assert_eq!(Reason::FwdDecap as u32, 3);
        assert_eq!(Reason::ArpReply as u32, 4);
        assert_eq!(Reason::PassNotOverlay as u32, 5);
        assert_eq!(Reason::Truncated as u32, 16);
        assert_eq!(Reason::VtepMismatch as u32, 30);
        for (i, a) in Reason::ALL.iter().enumerate() {
            for b in &Reason::ALL[i + 1..] {
                assert_ne!(*a as u32, *b as u32, "duplicate code");
                assert_ne!(a.name(), b.name(), "duplicate name");
            }
            assert_eq!(Reason::from_code(*a as u32), Some(*a));
        }
    }

    #[test]
    fn wire_constants() {
        assert_eq!(wire::VXLAN_ENCAP_LEN, 50);
        assert_eq!(wire::vxlan_vni_field(4097).to_be_bytes(), [0, 0x10, 0x01, 0]);
        assert_eq!(wire::MAX_VNI, 0x00ff_ffff);
    }
}
