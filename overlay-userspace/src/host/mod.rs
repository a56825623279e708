//! The node's kernel outside BPF: links, addresses, routes and namespaces over netlink, and the
//! way out's forwarding and NAT table.
pub mod netlink;
pub mod wayout;
