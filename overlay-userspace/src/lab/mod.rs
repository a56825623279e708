//! Simulated clusters in network namespaces, test frames and the benchmarks.
pub mod bench;
pub mod frames;
pub mod sim;
