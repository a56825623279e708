//! The overlay agent and CLI as a library, so that integration tests and the demo use the same
//! code as the `overlay` binary.
pub mod agent;
pub mod attach;
pub mod bench;
pub mod cmd;
pub mod cni;
pub mod config;
pub mod dataplane;
pub mod defaults;
pub mod desired;
pub mod docker;
pub mod frames;
pub mod netlink;
pub mod sim;
pub mod store;
