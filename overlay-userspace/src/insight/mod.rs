//! Watching a node: the Prometheus metrics the agent serves (`overlay agent --metrics`) and the
//! live stream of datapath events (`overlay monitor`). Both only read: the pinned maps, the
//! event ring, and what the agent records about itself in [`metrics::agent`].
pub mod metrics;
pub mod monitor;
