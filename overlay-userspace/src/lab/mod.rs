//! Simulated clusters in network namespaces, test frames, the reference model of the programs
//! and the benchmarks.
pub mod bench;
pub mod frames;
pub mod reference;
pub mod sim;
