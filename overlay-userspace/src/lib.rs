//! The overlay agent and CLI as a library, so that integration tests and the demo use the same
//! code as the `overlay` binary. The folders follow the architecture, dependencies pointing down:
//!
//! - [`cli`]: one file per `overlay` subcommand (the edge: `anyhow` errors, printing).
//! - [`plugins`]: the container runtimes' entry points (CNI, Docker's remote network driver).
//! - [`source`]: where the desired cluster comes from (a cluster file, the etcd store).
//! - [`control`]: the reconcile loop: desired cluster -> node plan -> host wiring + map diff.
//! - [`model`]: the typed cluster (networks, nodes, endpoints) and the one rule book every
//!   source validates with.
//! - [`dataplane`]: the only owner of the loaded programs, maps and pins.
//! - [`host`]: the node's kernel outside BPF: netlink links/addresses/routes, namespaces.
//! - [`insight`]: watching a node: Prometheus metrics, the live stream of datapath events.
//! - [`timefmt`]: timestamps as people read them (RFC 3339, UTC).
//! - [`lab`]: simulated clusters, frames and benchmarks (demo, tests, `overlay bench`).
pub mod cli;
pub mod control;
pub mod dataplane;
pub mod defaults;
pub mod host;
pub mod insight;
pub mod lab;
pub mod model;
pub mod plugins;
pub mod source;
pub mod timefmt;
