//! Interfaces, addresses and namespaces through rtnetlink. One `Netlink` talks to one network
//! namespace: the one of the thread that created its socket.
use std::{
    fs::File,
    net::{IpAddr, Ipv4Addr},
    os::fd::AsRawFd,
    path::{Path, PathBuf},
};

use futures::TryStreamExt;
use rtnetlink::{
    Handle, LinkBridge, LinkUnspec, LinkVeth, RouteMessageBuilder,
    packet_route::{
        address::{AddressAttribute, AddressMessage},
        link::{InfoKind, LinkAttribute, LinkInfo, LinkMessage},
        neighbour::NeighbourState,
        route::{RouteAddress, RouteAttribute, RouteMessage, RouteScope},
    },
};

use crate::{model::Mac, defaults::NETNS_DIR};

#[derive(Debug, thiserror::Error)]
pub enum NetlinkError {
    #[error("netlink socket: {0}")]
    Socket(std::io::Error),
    #[error("network namespace {path}: {source}")]
    Netns { path: String, source: std::io::Error },
    #[error("{what}: {source}")]
    Request { what: String, source: rtnetlink::Error },
    #[error("interface {0} not found")]
    NoSuchLink(String),
    #[error("no interface holds address {0}")]
    NoInterfaceWithAddress(Ipv4Addr),
}

type Result<T> = std::result::Result<T, NetlinkError>;

fn req(what: impl Into<String>) -> impl FnOnce(rtnetlink::Error) -> NetlinkError {
    let what = what.into();
    move |source| NetlinkError::Request { what, source }
}

/// Path of a network namespace: a name under `/run/netns`, or an absolute path as is.
pub fn netns_path(name: &str) -> PathBuf {
    if name.starts_with('/') { PathBuf::from(name) } else { Path::new(NETNS_DIR).join(name) }
}

/// Enters the network namespace at `path` for the calling thread only.
pub fn enter_netns(path: &Path) -> std::io::Result<()> {
    let f = File::open(path)?;
    // SAFETY: setns on a valid namespace fd; affects only the calling thread.
    if unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// A link as the agent cares about it.
#[derive(Clone, Debug)]
pub struct Link {
    pub index: u32,
    pub name: String,
    pub mtu: u32,
    /// IFLA_LINK: for a veth, its peer's ifindex (in the peer's namespace).
    pub peer: Option<u32>,
    pub mac: Option<[u8; 6]>,
    /// IFLA_INFO_KIND is `veth`.
    pub veth: bool,
}

impl Link {
    /// Whether the interface is one end of a veth pair.
    pub fn is_veth(&self) -> bool {
        self.veth
    }
}

fn link_of(msg: &LinkMessage) -> Link {
    let mut l = Link { index: msg.header.index, name: String::new(), mtu: 0, peer: None, mac: None, veth: false };
    for a in &msg.attributes {
        match a {
            LinkAttribute::IfName(n) => l.name = n.clone(),
            LinkAttribute::Mtu(m) => l.mtu = *m,
            LinkAttribute::Link(i) => l.peer = Some(*i),
            LinkAttribute::Address(a) => l.mac = a.as_slice().try_into().ok(),
            LinkAttribute::LinkInfo(info) => l.veth = info.iter().any(|i| matches!(i, LinkInfo::Kind(InfoKind::Veth))),
            _ => {}
        }
    }
    l
}

/// The (local) IPv4 address an address message is about: IFA_LOCAL, else IFA_ADDRESS (they
/// differ only on point-to-point links, where IFA_ADDRESS is the peer).
fn ipv4_of(m: &AddressMessage) -> Option<Ipv4Addr> {
    let local = m.attributes.iter().find_map(|a| match *a {
        AddressAttribute::Local(IpAddr::V4(v4)) => Some(v4),
        _ => None,
    });
    local.or_else(|| {
        m.attributes.iter().find_map(|a| match *a {
            AddressAttribute::Address(IpAddr::V4(v4)) => Some(v4),
            _ => None,
        })
    })
}

pub struct Netlink {
    handle: Handle,
}

impl Netlink {
    /// A connection in the calling thread's namespace. Needs a Tokio runtime.
    pub fn new() -> Result<Self> {
        let (conn, handle, _) = rtnetlink::new_connection().map_err(NetlinkError::Socket)?;
        tokio::spawn(conn);
        Ok(Netlink { handle })
    }

    /// A connection inside the namespace at `path`: the socket is opened by a helper thread that
    /// entered the namespace, and stays bound to it.
    pub fn in_netns(path: &Path) -> Result<Self> {
        let rt = tokio::runtime::Handle::current();
        let p = path.to_path_buf();
        let res = std::thread::spawn(move || {
            enter_netns(&p).map_err(|source| NetlinkError::Netns { path: p.display().to_string(), source })?;
            let _guard = rt.enter();
            rtnetlink::new_connection().map_err(NetlinkError::Socket)
        })
        .join()
        .map_err(|_| NetlinkError::Socket(std::io::Error::other("netns helper thread panicked")))?;
        let (conn, handle, _) = res?;
        tokio::spawn(conn);
        Ok(Netlink { handle })
    }

    pub async fn links(&self) -> Result<Vec<Link>> {
        let mut s = self.handle.link().get().execute();
        let mut out = Vec::new();
        while let Some(m) = s.try_next().await.map_err(req("listing links"))? {
            out.push(link_of(&m));
        }
        Ok(out)
    }

    pub async fn link(&self, name: &str) -> Result<Option<Link>> {
        Ok(self.links().await?.into_iter().find(|l| l.name == name))
    }

    /// Whether interface `index` holds `ip`.
    pub async fn has_address(&self, index: u32, ip: Ipv4Addr) -> Result<bool> {
        let mut s = self.handle.address().get().set_link_index_filter(index).execute();
        while let Some(m) = s.try_next().await.map_err(req("listing addresses"))? {
            if m.header.index == index && ipv4_of(&m) == Some(ip) {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Removes every IPv4 address of interface `index` but `keep` (an endpoint re-published
    /// under the same name with another address).
    pub async fn remove_ipv4_except(&self, index: u32, keep: Ipv4Addr) -> Result<()> {
        let mut s = self.handle.address().get().set_link_index_filter(index).execute();
        let mut stale = Vec::new();
        while let Some(m) = s.try_next().await.map_err(req("listing addresses"))? {
            if m.header.index == index && ipv4_of(&m).is_some_and(|a| a != keep) {
                stale.push(m);
            }
        }
        for m in stale {
            self.handle.address().del(m).execute().await.map_err(req(format!("removing an old address of link {index}")))?;
        }
        Ok(())
    }

    /// Makes link `index` hold exactly the /32 addresses `want` (adding missing, removing others).
    pub async fn set_host_addresses(&self, index: u32, want: &[Ipv4Addr]) -> Result<()> {
        let mut s = self.handle.address().get().set_link_index_filter(index).execute();
        let mut have = Vec::new();
        let mut stale = Vec::new();
        while let Some(m) = s.try_next().await.map_err(req("listing addresses"))? {
            if m.header.index != index {
                continue;
            }
            match ipv4_of(&m) {
                Some(a) if want.contains(&a) => have.push(a),
                Some(_) => stale.push(m),
                None => {}
            }
        }
        for m in stale {
            self.handle.address().del(m).execute().await.map_err(req(format!("removing an address of link {index}")))?;
        }
        for ip in want.iter().filter(|a| !have.contains(a)) {
            self.add_address(index, *ip, 32).await?;
        }
        Ok(())
    }

    /// A link named `name` that only holds addresses, up (created if missing): a bridge without
    /// ports (kernels without the dummy driver have bridges).
    pub async fn ensure_address_link(&self, name: &str) -> Result<Link> {
        if self.link(name).await?.is_none() {
            self.handle.link().add(LinkBridge::new(name).build()).execute().await.map_err(req(format!("creating link {name}")))?;
        }
        let l = self.link(name).await?.ok_or_else(|| NetlinkError::NoSuchLink(name.to_string()))?;
        self.set_up(l.index).await?;
        Ok(l)
    }

    /// The interface that holds `ip`.
    pub async fn interface_with_address(&self, ip: Ipv4Addr) -> Result<Link> {
        let mut s = self.handle.address().get().execute();
        while let Some(m) = s.try_next().await.map_err(req("listing addresses"))? {
            if ipv4_of(&m) == Some(ip) {
                let idx = m.header.index;
                return self.links().await?.into_iter().find(|l| l.index == idx).ok_or(NetlinkError::NoInterfaceWithAddress(ip));
            }
        }
        Err(NetlinkError::NoInterfaceWithAddress(ip))
    }

    pub async fn create_veth(&self, name: &str, peer: &str, mtu: u32) -> Result<()> {
        self.handle
            .link()
            .add(LinkVeth::new(name, peer).mtu(mtu).build())
            .execute()
            .await
            .map_err(req(format!("creating veth {name}/{peer}")))
    }

    pub async fn move_to_netns(&self, index: u32, netns: &Path) -> Result<()> {
        let f = File::open(netns).map_err(|source| NetlinkError::Netns { path: netns.display().to_string(), source })?;
        self.handle
            .link()
            .set(LinkUnspec::new_with_index(index).setns_by_fd(f.as_raw_fd()).build())
            .execute()
            .await
            .map_err(req(format!("moving link {index} to {}", netns.display())))
    }

    /// Renames, sets MAC and MTU, and brings the link up, in one request.
    pub async fn configure(&self, index: u32, name: &str, mac: Option<Mac>, mtu: u32) -> Result<()> {
        let mut b = LinkUnspec::new_with_index(index).name(name.to_string()).mtu(mtu);
        if let Some(m) = mac {
            b = b.address(m.0.to_vec());
        }
        self.handle.link().set(b.build()).execute().await.map_err(req(format!("configuring {name}")))?;
        self.set_up(index).await
    }

    pub async fn set_up(&self, index: u32) -> Result<()> {
        self.handle
            .link()
            .set(LinkUnspec::new_with_index(index).up().build())
            .execute()
            .await
            .map_err(req(format!("setting link {index} up")))
    }

    pub async fn set_mtu(&self, index: u32, mtu: u32) -> Result<()> {
        self.handle
            .link()
            .set(LinkUnspec::new_with_index(index).mtu(mtu).build())
            .execute()
            .await
            .map_err(req(format!("setting MTU of link {index}")))
    }

    /// Adds (or keeps) `ip/prefix`; the kernel adds the subnet route with it.
    pub async fn add_address(&self, index: u32, ip: Ipv4Addr, prefix: u8) -> Result<()> {
        self.handle
            .address()
            .add(index, IpAddr::V4(ip), prefix)
            .replace()
            .execute()
            .await
            .map_err(req(format!("adding {ip}/{prefix} to link {index}")))
    }

    /// IPv4 routes of the main table.
    async fn routes(&self) -> Result<Vec<RouteMessage>> {
        let q = RouteMessageBuilder::<Ipv4Addr>::new().build();
        self.handle.route().get(q).execute().try_collect().await.map_err(req("listing routes"))
    }

    /// The interface the default route leaves by, if there is one.
    pub async fn default_route_dev(&self) -> Result<Option<u32>> {
        Ok(self.routes().await?.iter().filter(|r| r.header.destination_prefix_length == 0).find_map(oif_of))
    }

    /// The gateway of the default route leaving by link `index`, if any.
    pub async fn default_route_via(&self, index: u32) -> Result<Option<Ipv4Addr>> {
        Ok(self.routes().await?.iter().filter(|r| r.header.destination_prefix_length == 0 && oif_of(r) == Some(index)).find_map(|r| {
            r.attributes.iter().find_map(|a| match a {
                RouteAttribute::Gateway(RouteAddress::Inet(g)) => Some(*g),
                _ => None,
            })
        }))
    }

    /// Sets the default route: via `gw` out of link `index` (replacing any other).
    pub async fn replace_default_route(&self, index: u32, gw: Ipv4Addr) -> Result<()> {
        let r = RouteMessageBuilder::<Ipv4Addr>::new().gateway(gw).output_interface(index).build();
        self.handle.route().add(r).replace().execute().await.map_err(req(format!("default route via {gw}")))
    }

    /// Removes the default route if it leaves by link `index`.
    pub async fn remove_default_route_via(&self, index: u32) -> Result<()> {
        for r in self.routes().await? {
            if r.header.destination_prefix_length == 0 && oif_of(&r) == Some(index) {
                self.handle.route().del(r).execute().await.map_err(req("removing the default route"))?;
            }
        }
        Ok(())
    }

    /// Routes `ip/32` straight out of link `index` (a container behind its host-side veth).
    pub async fn replace_host_route(&self, index: u32, ip: Ipv4Addr) -> Result<()> {
        let r = RouteMessageBuilder::<Ipv4Addr>::new().destination_prefix(ip, 32).output_interface(index).scope(RouteScope::Link).build();
        self.handle.route().add(r).replace().execute().await.map_err(req(format!("route to {ip}")))
    }

    /// Whether `ip/32` is routed out of link `index`.
    pub async fn has_host_route(&self, index: u32, ip: Ipv4Addr) -> Result<bool> {
        Ok(self.routes().await?.iter().any(|r| {
            r.header.destination_prefix_length == 32
                && oif_of(r) == Some(index)
                && r.attributes.iter().any(|a| matches!(a, RouteAttribute::Destination(RouteAddress::Inet(d)) if *d == ip))
        }))
    }

    /// A permanent neighbour entry: `ip` is at `mac` on link `index` (no ARP towards the
    /// container, whose replies the datapath does not carry).
    pub async fn replace_neighbour(&self, index: u32, ip: Ipv4Addr, mac: Mac) -> Result<()> {
        self.handle
            .neighbours()
            .add(index, IpAddr::V4(ip))
            .link_layer_address(&mac.0)
            .state(NeighbourState::Permanent)
            .replace()
            .execute()
            .await
            .map_err(req(format!("neighbour {ip}")))
    }

    pub async fn delete(&self, index: u32) -> Result<()> {
        self.handle.link().del(index).execute().await.map_err(req(format!("deleting link {index}")))
    }
}

fn oif_of(r: &RouteMessage) -> Option<u32> {
    r.attributes.iter().find_map(|a| match a {
        RouteAttribute::Oif(i) => Some(*i),
        _ => None,
    })
}

/// Turns GRO on for interface `ifindex` inside `netns` (ethtool's `ETHTOOL_SGRO`). A veth
/// whose end has GRO on runs NAPI on that end, which is what lets an XDP program redirect frames
/// into the pair without an XDP program of its own there.
pub fn enable_gro_in(netns: &Path, ifindex: u32) -> std::io::Result<()> {
    const SIOCETHTOOL: libc::c_ulong = 0x8946;
    const ETHTOOL_SGRO: u32 = 0x0000_002c;
    #[repr(C)]
    struct EthtoolValue {
        cmd: u32,
        data: u32,
    }
    let p = netns.to_path_buf();
    std::thread::spawn(move || -> std::io::Result<()> {
        enter_netns(&p)?;
        let mut name = [0u8; libc::IFNAMSIZ];
        // SAFETY: if_indextoname writes at most IFNAMSIZ bytes into `name`.
        if unsafe { libc::if_indextoname(ifindex, name.as_mut_ptr() as *mut libc::c_char) }.is_null() {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: a plain socket(2); closed below.
        let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let mut value = EthtoolValue { cmd: ETHTOOL_SGRO, data: 1 };
        // SAFETY: ifreq is plain data; zeroed is a valid value.
        let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
        for (d, s) in ifr.ifr_name.iter_mut().zip(name.iter()) {
            *d = *s as libc::c_char;
        }
        ifr.ifr_ifru.ifru_data = &mut value as *mut EthtoolValue as *mut libc::c_char;
        // SAFETY: SIOCETHTOOL with an ifreq pointing at an ethtool_value that outlives the call.
        let rc = unsafe { libc::ioctl(fd, SIOCETHTOOL as _, &mut ifr) };
        let err = std::io::Error::last_os_error();
        // SAFETY: closing the socket made above.
        unsafe { libc::close(fd) };
        if rc < 0 { Err(err) } else { Ok(()) }
    })
    .join()
    .map_err(|_| std::io::Error::other("netns helper thread panicked"))?
}

/// Turns IPv6 off for new interfaces of a namespace: the overlay is IPv4-only (as Docker's is by
/// default), and router solicitations would only show up as drops.
pub fn disable_ipv6_in(netns: &Path) -> std::io::Result<()> {
    let p = netns.to_path_buf();
    std::thread::spawn(move || -> std::io::Result<()> {
        enter_netns(&p)?;
        for k in ["default", "all"] {
            let f = format!("/proc/sys/net/ipv6/conf/{k}/disable_ipv6");
            if Path::new(&f).exists() {
                std::fs::write(f, "1")?;
            }
        }
        Ok(())
    })
    .join()
    .map_err(|_| std::io::Error::other("netns helper thread panicked"))?
}
