//! Where the desired cluster comes from: a cluster file, or the etcd store.
pub mod file;
pub mod store;
