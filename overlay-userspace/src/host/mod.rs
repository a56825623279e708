//! The node's kernel outside BPF: links, addresses, routes and namespaces over netlink.
pub mod netlink;
