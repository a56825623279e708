//! Services, as Docker swarm's: a name on one network, a virtual IP (VIP) load-balanced over
//! the service's tasks (endpoints that join it with `service: NAME`), ports mapped from the VIP
//! to the tasks, and ports published on every node (the routing mesh). Or, in `dnsrr` mode, no
//! VIP: the name resolves to the tasks' addresses. [`service_entry`] checks one entry on its own
//! and against its network; what must be unique across the cluster is [`super::Rules`]'.
use std::{fmt, net::Ipv4Addr};

use super::{ConfigError, Network, invalid};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Protocol {
    Tcp,
    Udp,
}

impl Protocol {
    /// The IP protocol number.
    pub fn number(self) -> u8 {
        match self {
            Protocol::Tcp => 6,
            Protocol::Udp => 17,
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        })
    }
}

/// One port of a service: `port` on the VIP goes to `target` on a task; `publish`, when set,
/// is the port every node answers on (the routing mesh).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ServicePort {
    pub port: u16,
    pub target: u16,
    pub protocol: Protocol,
    pub publish: Option<u16>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ServiceMode {
    /// A virtual IP, load-balanced over the tasks (Docker's default).
    Vip,
    /// DNS round robin: the name resolves to the tasks' addresses, no VIP.
    Dnsrr,
}

impl fmt::Display for ServiceMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ServiceMode::Vip => "vip",
            ServiceMode::Dnsrr => "dnsrr",
        })
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Service {
    pub name: String,
    pub network: String,
    /// `Some` exactly in `vip` mode.
    pub vip: Option<Ipv4Addr>,
    pub ports: Vec<ServicePort>,
    pub mode: ServiceMode,
}

/// What a port entry says, before it is checked.
#[derive(Clone, Debug, Default)]
pub struct PortSpec {
    pub port: i64,
    /// Default: the same as `port`.
    pub target: Option<i64>,
    /// `tcp` (default) or `udp`.
    pub protocol: Option<String>,
    pub publish: Option<i64>,
}

/// What a service entry says, before it is checked.
pub struct ServiceSpec<'a> {
    pub name: String,
    pub vip: Option<&'a str>,
    pub ports: Vec<PortSpec>,
    /// `vip` (default) or `dnsrr`.
    pub mode: Option<&'a str>,
}

fn port_number(entry: &str, field: &'static str, p: i64) -> Result<u16, ConfigError> {
    u16::try_from(p).ok().filter(|p| *p != 0).ok_or_else(|| invalid(entry, field, format!("{p} is not a port (1-65535)")))
}

/// The VIP a service gets when none is given: the highest host address of the subnet that is
/// not the gateway and not `taken` (endpoints are given addresses from the bottom up).
pub fn allocate_vip(net: &Network, taken: impl Fn(Ipv4Addr) -> bool) -> Option<Ipv4Addr> {
    let (first, last) = (u32::from(net.subnet.network()) + 1, u32::from(net.subnet.broadcast()) - 1);
    (first..=last).rev().map(Ipv4Addr::from).find(|ip| *ip != net.gateway && !taken(*ip))
}

/// One service entry on network `net`, checked on its own and against its network. Without a
/// `vip` in `vip` mode, one is allocated among the addresses `taken` does not hold.
pub fn service_entry(entry: &str, net: &Network, spec: ServiceSpec<'_>, taken: impl Fn(Ipv4Addr) -> bool) -> Result<Service, ConfigError> {
    let ServiceSpec { name, vip, ports, mode } = spec;
    if name.is_empty() || name.len() > 63 || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') || name.starts_with('-') {
        return Err(invalid(entry, "name", format!("service name {name:?} must be 1-63 letters, digits, '-' or '_' (it is a DNS label)")));
    }
    let mode = match mode {
        None | Some("vip") => ServiceMode::Vip,
        Some("dnsrr") => ServiceMode::Dnsrr,
        Some(m) => return Err(invalid(entry, "mode", format!("{m:?} is not a mode (vip or dnsrr)"))),
    };
    let mut checked: Vec<ServicePort> = Vec::with_capacity(ports.len());
    for p in ports {
        let port = port_number(entry, "ports.port", p.port)?;
        let target = port_number(entry, "ports.target", p.target.unwrap_or(p.port))?;
        let protocol = match p.protocol.as_deref() {
            None | Some("tcp") => Protocol::Tcp,
            Some("udp") => Protocol::Udp,
            Some(x) => return Err(invalid(entry, "ports.protocol", format!("{x:?} is not a protocol (tcp or udp)"))),
        };
        let publish = p.publish.map(|x| port_number(entry, "ports.publish", x)).transpose()?;
        if checked.iter().any(|c| c.port == port && c.protocol == protocol) {
            return Err(invalid(entry, "ports.port", format!("{port}/{protocol} is listed twice")));
        }
        if let Some(x) = publish {
            if checked.iter().any(|c| c.publish == Some(x) && c.protocol == protocol) {
                return Err(invalid(entry, "ports.publish", format!("{x}/{protocol} is published twice")));
            }
        }
        if let Some(x) = publish {
            if (crate::defaults::EPHEMERAL_PORTS.0..=crate::defaults::EPHEMERAL_PORTS.1).contains(&x) {
                return Err(invalid(
                    entry,
                    "ports.publish",
                    format!(
                        "{x}/{protocol}: published ports must be outside {}-{}, the nodes' own ephemeral and masquerade ports (their replies would be taken for the mesh's); Docker publishes from 30000-32767",
                        crate::defaults::EPHEMERAL_PORTS.0,
                        crate::defaults::EPHEMERAL_PORTS.1
                    ),
                ));
            }
            if protocol == Protocol::Udp && x == overlay_common::wire::VXLAN_PORT {
                return Err(invalid(entry, "ports.publish", format!("{x}/udp is VXLAN's port")));
            }
        }
        if let (Some(x), true) = (publish, net.internal) {
            return Err(invalid(
                entry,
                "ports.publish",
                format!("{x}/{protocol}: network {} is internal: its tasks have no way out to answer clients of a published port", net.name),
            ));
        }
        checked.push(ServicePort { port, target, protocol, publish });
    }
    let vip = match (mode, vip) {
        (ServiceMode::Dnsrr, Some(v)) => return Err(invalid(entry, "vip", format!("{v}: a dnsrr service has no VIP (its name resolves to its tasks)"))),
        (ServiceMode::Dnsrr, None) => {
            if let Some(p) = checked.iter().find(|p| p.publish.is_some()) {
                return Err(invalid(
                    entry,
                    "ports.publish",
                    format!("{}/{}: a dnsrr service cannot publish ports (the routing mesh balances over a VIP), as in Docker", p.publish.unwrap_or(0), p.protocol),
                ));
            }
            None
        }
        (ServiceMode::Vip, Some(v)) => {
            let ip: Ipv4Addr = v.parse().map_err(|_| invalid(entry, "vip", format!("{v:?} is not an IPv4 address")))?;
            if !net.subnet.contains(&ip) || ip == net.subnet.network() || ip == net.subnet.broadcast() {
                return Err(invalid(entry, "vip", format!("{ip} is not a host address of subnet {} of network {}", net.subnet, net.name)));
            }
            if ip == net.gateway {
                return Err(invalid(entry, "vip", format!("{ip} is the gateway of network {}", net.name)));
            }
            Some(ip)
        }
        (ServiceMode::Vip, None) => {
            Some(allocate_vip(net, taken).ok_or_else(|| invalid(entry, "vip", format!("no free address left in {} for a VIP", net.subnet)))?)
        }
    };
    Ok(Service { name, network: net.name.clone(), vip, ports: checked, mode })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{NetworkSpec, network_entry};

    fn net() -> Network {
        network_entry("n", NetworkSpec { name: "front".into(), vni: 10, subnet: "10.0.1.0/24", mtu: None, gateway: None, internal: false }).expect("valid")
    }

    fn spec(vip: Option<&'static str>, mode: Option<&'static str>, ports: Vec<PortSpec>) -> ServiceSpec<'static> {
        ServiceSpec { name: "web".into(), vip, ports, mode }
    }

    fn port(port: i64, target: Option<i64>, protocol: Option<&str>, publish: Option<i64>) -> PortSpec {
        PortSpec { port, target, protocol: protocol.map(str::to_string), publish }
    }

    #[test]
    fn defaults_and_allocation() {
        let s = service_entry("services[web]", &net(), spec(None, None, vec![port(80, None, None, Some(8080))]), |ip| ip == Ipv4Addr::new(10, 0, 1, 254)).expect("valid");
        assert_eq!(s.mode, ServiceMode::Vip);
        assert_eq!(s.vip, Some(Ipv4Addr::new(10, 0, 1, 253)), "the highest free host address");
        assert_eq!(s.ports, vec![ServicePort { port: 80, target: 80, protocol: Protocol::Tcp, publish: Some(8080) }]);
        let d = service_entry("services[web]", &net(), spec(None, Some("dnsrr"), vec![port(53, None, Some("udp"), None)]), |_| false).expect("valid");
        assert_eq!((d.mode, d.vip), (ServiceMode::Dnsrr, None));
    }

    #[test]
    fn published_ports_avoid_internal_networks_ephemeral_ports_and_vxlan() {
        let mut internal = net();
        internal.internal = true;
        let e = service_entry("services[web]", &internal, spec(None, None, vec![port(80, None, None, Some(30080))]), |_| false).expect_err("refused");
        assert_eq!(e.to_string(), "services[web].ports.publish: 30080/tcp: network front is internal: its tasks have no way out to answer clients of a published port");
        service_entry("services[web]", &internal, spec(None, None, vec![port(80, None, None, None)]), |_| false).expect("a VIP without published ports is fine");
        let e = service_entry("services[web]", &net(), spec(None, None, vec![port(80, None, None, Some(40000))]), |_| false).expect_err("refused");
        assert!(e.to_string().starts_with("services[web].ports.publish: 40000/tcp: published ports must be outside 32768-60999"), "{e}");
        let e = service_entry("services[web]", &net(), spec(None, None, vec![port(80, None, Some("udp"), Some(4789))]), |_| false).expect_err("refused");
        assert_eq!(e.to_string(), "services[web].ports.publish: 4789/udp is VXLAN's port");
    }

    #[test]
    fn bad_entries_name_their_field() {
        let cases: Vec<(ServiceSpec<'static>, &str)> = vec![
            (ServiceSpec { name: "we b".into(), vip: None, ports: vec![], mode: None }, "services[web].name: service name"),
            (spec(Some("10.0.2.5"), None, vec![]), "services[web].vip: 10.0.2.5 is not a host address of subnet 10.0.1.0/24"),
            (spec(Some("10.0.1.1"), None, vec![]), "services[web].vip: 10.0.1.1 is the gateway"),
            (spec(Some("nope"), None, vec![]), "services[web].vip: \"nope\" is not an IPv4 address"),
            (spec(None, Some("ipvs"), vec![]), "services[web].mode: \"ipvs\" is not a mode"),
            (spec(None, None, vec![port(0, None, None, None)]), "services[web].ports.port: 0 is not a port"),
            (spec(None, None, vec![port(80, Some(70000), None, None)]), "services[web].ports.target: 70000 is not a port"),
            (spec(None, None, vec![port(80, None, Some("sctp"), None)]), "services[web].ports.protocol: \"sctp\" is not a protocol"),
            (spec(None, None, vec![port(80, None, None, Some(-1))]), "services[web].ports.publish: -1 is not a port"),
            (spec(None, None, vec![port(80, None, None, None), port(80, Some(81), None, None)]), "services[web].ports.port: 80/tcp is listed twice"),
            (spec(None, None, vec![port(80, None, None, Some(1)), port(81, None, None, Some(1))]), "services[web].ports.publish: 1/tcp is published twice"),
            (spec(Some("10.0.1.9"), Some("dnsrr"), vec![]), "services[web].vip: 10.0.1.9: a dnsrr service has no VIP"),
            (spec(None, Some("dnsrr"), vec![port(80, None, None, Some(80))]), "services[web].ports.publish: 80/tcp: a dnsrr service cannot publish"),
        ];
        for (s, want) in cases {
            let e = service_entry("services[web]", &net(), s, |_| false).expect_err(want).to_string();
            assert!(e.starts_with(want), "{e:?} should start with {want:?}");
        }
        // The same port number over two protocols is two ports.
        service_entry("services[web]", &net(), spec(None, None, vec![port(53, None, None, None), port(53, None, Some("udp"), None)]), |_| false).expect("tcp and udp");
        // A full subnet has no VIP left.
        let e = service_entry("services[web]", &net(), spec(None, None, vec![]), |_| true).expect_err("full").to_string();
        assert!(e.contains("no free address left in 10.0.1.0/24"), "{e}");
    }
}
