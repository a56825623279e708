//! Every path, name, port and default of the agent in one place.
use std::time::Duration;

/// Where bpffs is normally mounted.
pub const BPFFS: &str = "/sys/fs/bpf";
/// Sub-directory of bpffs holding one directory per node.
pub const PIN_SUBDIR: &str = "overlay";
/// Sub-directory of a node's pin directory holding its pinned TCX links.
pub const LINKS_SUBDIR: &str = "links";
/// Named network namespaces (as `ip netns` keeps them).
pub const NETNS_DIR: &str = "/run/netns";
/// Host-side veth names start with this; anything with the prefix is the agent's to sweep.
pub const HOST_VETH_PREFIX: &str = "ovl";
/// Temporary name of the container side before it is renamed inside the namespace.
pub const PEER_VETH_PREFIX: &str = "ovp";
/// Name of the endpoint's interface inside its namespace.
pub const CONTAINER_IFNAME: &str = "eth0";
/// Outer UDP source ports (the kernel's default local port range, as its vxlan driver uses).
pub const SRC_PORT_MIN: u16 = 32768;
pub const SRC_PORT_MAX: u16 = 60999;
/// VXLAN + outer headers over IPv4: container MTU = underlay MTU - this.
pub const OVERLAY_OVERHEAD: u32 = 50;
/// The Docker plugin's default name (`docker network create -d ebpf-overlay`). Not `overlay`:
/// Docker's built-in drivers win over a plugin of the same name, so `-d overlay` would reach
/// Docker's own swarm driver ("This node is not a swarm manager").
pub const DOCKER_PLUGIN_NAME: &str = "ebpf-overlay";
/// Driver names Docker keeps for itself; a plugin under one of them is never reached.
pub const DOCKER_BUILTIN_DRIVERS: &[&str] = &["bridge", "host", "overlay", "macvlan", "ipvlan", "null", "none"];
/// How often the agent looks at the cluster file.
pub const FILE_POLL: Duration = Duration::from_millis(200);
/// How often a partly failed apply (e.g. a namespace not there yet, or a container interface
/// Docker has not moved in yet) is retried.
pub const RETRY_INTERVAL: Duration = Duration::from_millis(500);

/// Source ports the nodes use for their own connections and the way out's masquerade (Linux's
/// default local port range): never a published port, whose replies would be taken for the
/// mesh's.
pub const EPHEMERAL_PORTS: (u16, u16) = (32768, 60999);
