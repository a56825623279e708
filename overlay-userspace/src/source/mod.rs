//! Where the desired cluster comes from: the etcd store (the cluster file lives in `model`).
pub mod store;
