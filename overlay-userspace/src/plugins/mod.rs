//! Container runtimes' entry points: the CNI plugin and Docker's remote network driver.
pub mod cni;
pub mod docker;
