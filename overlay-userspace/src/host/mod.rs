//! The node's kernel outside BPF: links, addresses, routes and namespaces over netlink, the way
//! out's forwarding and NAT table, and the namespaces' resolv.conf.
pub mod netlink;
pub mod resolv_conf;
pub mod wayout;
