//! The agent: keeps one node's datapath equal to the cluster description.
//!
//! Desired state in, diff out: a source (the cluster file) yields a whole validated
//! [`Cluster`]; [`Agent::apply`] wires local endpoints, then hands the complete [`MapState`] to
//! the dataplane, which writes only the difference. A rejected description changes nothing.
use std::{
    collections::HashMap,
    path::Path,
    sync::Arc,
    time::Instant,
};

use tracing::{debug, info, warn};
use overlay_common::{NODE_F_MESH, NODE_F_MESH_DIRECT};

use crate::{
    model::{self, Cluster, Datapath, MeshReturn},
    dataplane::{Dataplane, DataplaneError, DiffSummary},
    defaults::{HOST_VETH_PREFIX, RETRY_INTERVAL},
    control::{
        desired::{self, LocalEndpoint, NodePlan, WayOut},
        resolver::{ClusterSource, DNS_LINK, Resolver},
    },
    host::{
        netlink::{self, Netlink, NetlinkError},
        resolv_conf, wayout,
    },
    source::store::{
        StoreAccess,
        follow::{Registration, follow},
    },
};

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error(transparent)]
    Config(#[from] model::ConfigError),
    #[error(transparent)]
    Plan(#[from] desired::PlanError),
    #[error(transparent)]
    Dataplane(#[from] DataplaneError),
    #[error(transparent)]
    Netlink(#[from] NetlinkError),
    #[error("endpoint {endpoint}: {message}")]
    Endpoint { endpoint: String, message: String },
    #[error("store: {0}")]
    Store(String),
}

/// Result of one apply.
#[derive(Debug, Default)]
pub struct ApplyReport {
    pub diff: DiffSummary,
    /// Endpoints that could not be wired this time (retried later), with the reason.
    pub pending: Vec<String>,
    /// Time spent planning (cluster -> desired state) and writing the difference to the maps.
    pub plan_us: u64,
    pub maps_us: u64,
    /// This node's endpoints in the datapath, and those still waiting (no namespace yet, or
    /// their wiring failed and is retried).
    pub wired: usize,
    pub waiting: usize,
}

pub struct Agent {
    node: String,
    /// The node's pin directory: with the node, what marks the files this agent writes.
    pin_dir: std::path::PathBuf,
    dataplane: Dataplane,
    nl: Netlink,
    /// Endpoints this agent wired (by host-side veth name), as wired, with their host-side
    /// ifindex: an unchanged endpoint is not wired again, so one change costs one endpoint's
    /// work, not all of them.
    wired: HashMap<String, (LocalEndpoint, u32)>,
    /// The way out as last applied (the node's NAT table and forwarding).
    way_out: Option<WayOut>,
    /// The (wired endpoints, endpoints of this node without a namespace, underlay) the last
    /// sweep kept; the next sweep runs when it differs.
    swept: Option<Swept>,
    /// Answers the containers' DNS questions on the gateways' addresses.
    resolver: Resolver,
    /// The gateways the resolver listens on, as last set up.
    dns_gateways: Option<Vec<std::net::Ipv4Addr>>,
    /// Veth pairs nobody's yet, both ends still here, by when they were first seen so.
    orphans: HashMap<String, Instant>,
    /// Plans each change, reusing what the last one computed (the unchanged networks' names).
    planner: desired::Planner,
    /// The command line's choices for this node (`--datapath`, `--mesh-return`).
    opts: NodeOptions,
    /// The datapath mode last applied (`None` before the first apply).
    mode: Option<Datapath>,
}

/// How long a veth pair made here (both ends in the node's namespace) may belong to no endpoint
/// before a sweep removes it: the Docker plugin makes the pair at Join, and the endpoint it
/// published just before may reach this agent a moment later.
const ORPHAN_GRACE: std::time::Duration = std::time::Duration::from_secs(5);

/// What a sweep kept: (host veth, ifindex) of wired endpoints, (network, name) of this node's
/// endpoints without a namespace yet, underlay ifindex.
/// The loopback interface: with published ports, the ingress program serves it too.
const LOOPBACK: &str = "lo";

type Swept = (Vec<(String, u32)>, Vec<(String, String)>, Vec<(String, u32)>);

/// What the agent's command line decides for this node, beside the cluster description.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NodeOptions {
    /// `--datapath`: wins over the node's `datapath:` in the cluster description.
    pub datapath: Option<Datapath>,
    /// `--mesh-return`: how this node's tasks answer mesh clients that came through another
    /// node; wins over the node's `mesh_return:` in the cluster description (default: back
    /// through that node).
    pub mesh_return: Option<MeshReturn>,
}

impl Agent {
    /// `cluster` is where the resolver reads the names from ([`ClusterSource`]).
    pub fn new(node: &str, pin_dir: &Path, dns_upstreams: Vec<std::net::SocketAddr>, opts: NodeOptions, cluster: ClusterSource) -> Result<Self, AgentError> {
        let dataplane = Dataplane::load(pin_dir)?;
        Ok(Agent {
            node: node.to_string(),
            pin_dir: pin_dir.to_path_buf(),
            dataplane,
            nl: Netlink::new()?,
            wired: HashMap::new(),
            way_out: None,
            swept: None,
            resolver: Resolver::new(dns_upstreams, cluster),
            dns_gateways: None,
            orphans: HashMap::new(),
            planner: desired::Planner::default(),
            opts,
            mode: None,
        })
    }

    /// Tells the resolver the cluster changed (its names are read again on the next question)
    /// and makes it listen on every gateway address, which the node's link [`DNS_LINK`] holds.
    pub async fn update_names(&mut self, gateways: &[std::net::Ipv4Addr]) -> Vec<String> {
        let mut errors = Vec::new();
        if self.dns_gateways.as_deref() != Some(gateways) {
            match self.nl.ensure_address_link(DNS_LINK).await {
                Ok(l) => match self.nl.set_host_addresses(l.index, gateways).await {
                    Ok(()) => self.dns_gateways = Some(gateways.to_vec()),
                    Err(e) => errors.push(format!("{DNS_LINK}: {e}")),
                },
                Err(e) => errors.push(format!("{DNS_LINK}: {e}")),
            }
        }
        errors.extend(self.resolver.update(gateways).await);
        errors
    }

    /// Makes the node match `cluster`. Validation already happened; what can still fail here is
    /// the host (a namespace missing, an interface gone): those endpoints are reported pending
    /// and everything else is applied.
    pub async fn apply(&mut self, cluster: &Cluster) -> Result<ApplyReport, AgentError> {
        let t0 = Instant::now();
        let plan = self.planner.plan(cluster, &self.node)?;
        let plan_us = t0.elapsed().as_micros() as u64;
        let underlay = match &plan.underlay {
            Some(name) => self.nl.link(name).await?.ok_or_else(|| NetlinkError::NoSuchLink(name.clone()))?,
            None => self.nl.interface_with_address(plan.vtep).await?,
        };
        self.dataplane.attach_ingress(&underlay.name, underlay.index)?;
        let mode = self.opts.datapath.or(plan.datapath).unwrap_or_default();
        if self.mode != Some(mode) {
            // Every endpoint is wired again in the new mode (XDP needs GRO on the container side).
            self.wired.clear();
            self.swept = None;
        }
        match mode {
            // In front of the TC ingress, which keeps handling what XDP passes on.
            // A veth underlay (simulated hosts) gets generic XDP: frames between veths carry
            // checksums still to be computed (CHECKSUM_PARTIAL), which a veth's driver-mode XDP
            // turns into frames with bad checksums. Real NICs get driver mode where they have it.
            Datapath::Xdp => self.dataplane.attach_xdp(&underlay.name, underlay.index, underlay.is_veth())?,
            Datapath::Tc => {
                if self.dataplane.detach_xdp(&underlay.name, underlay.index)? {
                    info!(underlay = %underlay.name, "XDP ingress detached (datapath tc)");
                }
            }
        }
        if self.mode != Some(mode) {
            info!(datapath = %mode, underlay = %underlay.name, "datapath mode");
            self.mode = Some(mode);
        }
        // Interfaces the ingress program serves: the underlay, and with published ports `lo`
        // too (the node's own connections to its published ports).
        let mut ingress = vec![(underlay.name.clone(), underlay.index)];
        if plan.base.config.flags & NODE_F_MESH != 0 {
            let lo = self.nl.link(LOOPBACK).await?.ok_or_else(|| NetlinkError::NoSuchLink(LOOPBACK.to_string()))?;
            self.dataplane.attach_ingress(&lo.name, lo.index)?;
            ingress.push((lo.name.clone(), lo.index));
        }
        let mut report = ApplyReport { plan_us, ..Default::default() };
        // The way out first: a container given a default route can use it at once.
        // A way out that cannot be set up (no `nft`, say) is reported and retried; the overlay
        // itself is applied all the same.
        if self.way_out.as_ref() != Some(&plan.way_out) {
            let d = wayout::Desired { egress: plan.way_out.egress.clone(), overlay: plan.way_out.overlay.clone(), vxlan_port: plan.way_out.vxlan_port };
            match wayout::apply(&d) {
                Ok(change) => {
                    if change != wayout::Change::Nothing {
                        info!(?change, table = wayout::TABLE, "way out (forwarding, masquerade) reconciled");
                    }
                    self.way_out = Some(plan.way_out.clone());
                }
                Err(e) => report.pending.push(format!("the way out (table ip {}): {e}", wayout::TABLE)),
            }
        }
        let mut wired: Vec<(&LocalEndpoint, u32)> = Vec::new();
        for ep in &plan.local {
            if let Some((done, ifindex)) = self.wired.get(&ep.host_ifname).cloned() {
                // What does not touch the interfaces (another network joined or left by the same
                // container) changes only the maps and the resolver file: no re-wiring.
                if done.same_wiring(ep) {
                    if ep.resolver && !done.resolver {
                        if let Err(e) = resolv_conf::write(&self.node, &self.pin_dir, &ep.netns, ep.gateway) {
                            warn!(netns = %ep.netns, "writing its resolv.conf: {e}");
                        }
                    }
                    self.wired.insert(ep.host_ifname.clone(), (ep.clone(), ifindex));
                    wired.push((ep, ifindex));
                    continue;
                }
            }
            match self.wire(ep, underlay.mtu).await {
                Ok(ifindex) => {
                    self.wired.insert(ep.host_ifname.clone(), (ep.clone(), ifindex));
                    wired.push((ep, ifindex));
                }
                Err(e) => {
                    self.wired.remove(&ep.host_ifname);
                    report.pending.push(format!("{} (network {}): {e}", ep.name, ep.network));
                }
            }
        }
        let t0 = Instant::now();
        let mut state = plan.map_state(underlay.index, &wired);
        state.underlay_mtu(underlay.mtu);
        if self.opts.mesh_return.or(plan.mesh_return).unwrap_or_default() == MeshReturn::Direct {
            state.config.flags |= NODE_F_MESH_DIRECT;
        }
        report.diff = self.dataplane.apply(&state)?;
        // The XDP ingress redirects into the wired endpoints' host-side veths (none in tc mode).
        let targets: Vec<u32> = if mode == Datapath::Xdp { wired.iter().map(|(_, i)| *i).collect() } else { Vec::new() };
        self.dataplane.set_xdp_targets(&targets)?;
        report.maps_us = t0.elapsed().as_micros() as u64;
        report.wired = wired.len();
        report.waiting = plan.local.len() - wired.len() + plan.unwired.len();
        let kept: Vec<(String, u32)> = wired.iter().map(|(e, i)| (e.host_ifname.clone(), *i)).collect();
        let swept = Some((kept, plan.unwired.clone(), ingress.clone()));
        if !report.pending.is_empty() || self.swept != swept {
            self.sweep(&plan, &wired, &ingress).await?;
            self.wired.retain(|host, _| plan.local.iter().any(|e| &e.host_ifname == host));
            // Pending endpoints, or pairs in their grace time: the next apply sweeps again.
            self.swept = if report.pending.is_empty() && self.orphans.is_empty() { swept } else { None };
        }
        Ok(report)
    }

    /// Creates (or finds) the endpoint's veth pair, configures the namespace side as `eth0` and
    /// attaches the egress program to the host side. Idempotent. Returns the host-side ifindex.
    async fn wire(&mut self, ep: &LocalEndpoint, underlay_mtu: u32) -> Result<u32, AgentError> {
        let mtu = ep.mtu_for(underlay_mtu);
        let ns = netlink::netns_path(&ep.netns);
        let fail = |message: String| AgentError::Endpoint { endpoint: ep.name.clone(), message };
        if !ns.exists() {
            return Err(fail(format!("network namespace {} does not exist", ep.netns)));
        }
        let inside = Netlink::in_netns(&ns)?;
        // The container end of an existing host veth must be in this namespace, or still here
        // (the Docker plugin creates the pair and Docker moves it). An endpoint moved to another
        // namespace under the same name (a runtime re-attaching after a crash) leaves a veth
        // whose other end is in the old one: that veth is replaced.
        let mut host = self.nl.link(&ep.host_ifname).await?;
        if let Some(h) = &host {
            let here = self.nl.links().await?.iter().any(|l| Some(l.index) == h.peer && l.name == ep.peer_ifname);
            if !here && !inside.links().await?.iter().any(|l| l.peer == Some(h.index)) {
                info!(endpoint = %ep.name, ifname = %h.name, netns = %ep.netns, "replacing a veth whose container end is not in the endpoint's namespace");
                self.nl.delete(h.index).await?;
                host = None;
            }
        }
        let host = match host {
            Some(l) => l,
            None => {
                netlink::disable_ipv6_in(&ns).map_err(|e| fail(format!("disabling IPv6 in {}: {e}", ep.netns)))?;
                // A leftover peer from an interrupted attempt would block the name.
                if let Some(stale) = self.nl.link(&ep.peer_ifname).await? {
                    self.nl.delete(stale.index).await?;
                }
                self.nl.create_veth(&ep.host_ifname, &ep.peer_ifname, mtu).await?;
                let peer = self.nl.link(&ep.peer_ifname).await?.ok_or_else(|| NetlinkError::NoSuchLink(ep.peer_ifname.clone()))?;
                self.nl.move_to_netns(peer.index, &ns).await?;
                self.nl.link(&ep.host_ifname).await?.ok_or_else(|| NetlinkError::NoSuchLink(ep.host_ifname.clone()))?
            }
        };
        // Container side: the other end of the host veth, under its temporary name if just moved
        // in, else under the name it was given (by this agent, or by the runtime).
        let links = inside.links().await?;
        let c = links
            .iter()
            .find(|l| l.peer == Some(host.index))
            .ok_or_else(|| fail(format!("the other end of {} is not in namespace {}", host.name, ep.netns)))?;
        let name = match &ep.ifname {
            Some(n) => n.clone(),
            None if c.name != ep.peer_ifname => c.name.clone(),
            // The first free ethN (the runtime did not name it, nor did the endpoint).
            None => (0..).map(|i| format!("eth{i}")).find(|n| !links.iter().any(|l| &l.name == n)).expect("a free ethN"),
        };
        if c.name != name {
            // An interface of another endpoint may still hold the name (a container whose
            // interfaces were renumbered): move it aside first; its own wiring renames it.
            if let Some(other) = links.iter().find(|l| l.name == name && l.index != c.index) {
                inside.configure(other.index, &format!("ovt{}", other.index), None, other.mtu).await?;
            }
        }
        if c.name != name || c.mtu != mtu || c.mac != Some(ep.mac.0) {
            inside.configure(c.index, &name, Some(ep.mac), mtu).await?;
        } else {
            inside.set_up(c.index).await?;
        }
        // Old addresses go first: deleting a primary address takes its secondaries with it.
        inside.remove_ipv4_except(c.index, ep.ip).await?;
        inside.add_address(c.index, ep.ip, ep.prefix_len).await?;
        if let Some(lo) = links.iter().find(|l| l.name == "lo") {
            inside.set_up(lo.index).await?;
        }
        // XDP redirects into the pair land on this end, which needs NAPI: GRO on, once it is up.
        if self.mode == Some(Datapath::Xdp) {
            netlink::enable_gro_in(&ns, c.index).map_err(|e| fail(format!("enabling GRO on {name} in {}: {e}", ep.netns)))?;
        }
        // The container's default route: via the gateway of its first network that is not
        // internal. Another interface's is left alone; this one's goes if it lost the role.
        if ep.default_route {
            if inside.default_route_dev().await? != Some(c.index) || !self.routed(&inside, c.index, ep).await? {
                inside.replace_default_route(c.index, ep.gateway).await?;
            }
        } else {
            inside.remove_default_route_via(c.index).await?;
        }
        if host.mtu != mtu {
            self.nl.set_mtu(host.index, mtu).await?;
        }
        self.nl.set_up(host.index).await?;
        // Replies of the way out and of the node's resolver reach the container through its
        // host-side veth: a route to its address and a permanent neighbour entry (its ARP
        // replies are not for the datapath).
        self.nl.replace_neighbour(host.index, ep.ip, ep.mac).await?;
        if !self.nl.has_host_route(host.index, ep.ip).await? {
            self.nl.replace_host_route(host.index, ep.ip).await?;
        }
        if ep.resolver {
            if let Err(e) = resolv_conf::write(&self.node, &self.pin_dir, &ep.netns, ep.gateway) {
                warn!(netns = %ep.netns, "writing its resolv.conf: {e}");
            }
        }
        self.dataplane.attach_egress(&host.name, host.index)?;
        Ok(host.index)
    }

    /// Whether the namespace's default route already goes via `ep`'s gateway.
    async fn routed(&self, inside: &Netlink, index: u32, ep: &LocalEndpoint) -> Result<bool, AgentError> {
        Ok(inside.default_route_via(index).await? == Some(ep.gateway))
    }

    /// Removes what the plan no longer holds: veths of deleted endpoints and their link pins.
    async fn sweep(&mut self, plan: &NodePlan, wired: &[(&LocalEndpoint, u32)], ingress: &[(String, u32)]) -> Result<(), AgentError> {
        // A veth of an endpoint of this node without a namespace yet is kept too: the Docker
        // plugin creates the pair at Join, before Docker moves one end into the container.
        let mut keep_ifs: Vec<String> = plan.local.iter().map(|e| e.host_ifname.clone()).collect();
        keep_ifs.extend(plan.unwired.iter().map(|(net, name)| desired::host_ifname(net, name)));
        let links = self.nl.links().await?;
        let now = Instant::now();
        let mut orphans = HashMap::new();
        for l in links.iter().filter(|l| l.name.starts_with(HOST_VETH_PREFIX) && !keep_ifs.contains(&l.name)) {
            // A pair whose other end is still here was made a moment ago by the Docker plugin
            // (at Join), possibly before its endpoint reached this agent: it goes only when it
            // is still nobody's a while later.
            let fresh_pair = links.iter().any(|o| Some(o.index) == l.peer && o.peer == Some(l.index));
            let since = self.orphans.get(&l.name).copied().unwrap_or(now);
            if fresh_pair && now.duration_since(since) < ORPHAN_GRACE {
                orphans.insert(l.name.clone(), since);
                continue;
            }
            info!(ifname = %l.name, "removing veth of a deleted endpoint");
            self.nl.delete(l.index).await?;
        }
        self.orphans = orphans;
        let spaces: Vec<&str> = plan.local.iter().map(|e| e.netns.as_str()).collect();
        for e in resolv_conf::sweep(&self.node, &self.pin_dir, &spaces) {
            warn!("{e}");
        }
        let mut keep: Vec<(&str, u32)> = wired.iter().map(|(e, i)| (e.host_ifname.as_str(), *i)).collect();
        keep.extend(ingress.iter().map(|(n, i)| (n.as_str(), *i)));
        self.dataplane.sweep_links(&keep)?;
        Ok(())
    }
}

/// The desired cluster as the reconcile loop receives it: `None` until the source has a
/// complete, valid description. A source replaces it whole; the loop always applies the latest.
pub type Desired = tokio::sync::watch::Receiver<Option<Arc<Cluster>>>;

/// Keeps the node equal to what `desired` says until `stop` resolves or the source goes away.
/// This loop is the one reconcile path of every source (file or store). The datapath stays in
/// place when it returns: forwarding does not depend on the agent running.
pub async fn reconcile(
    node: &str,
    pin_dir: &Path,
    dns: Vec<std::net::SocketAddr>,
    opts: NodeOptions,
    mut desired: Desired,
    stop: impl std::future::Future<Output = ()>,
) -> Result<(), AgentError> {
    // The resolver reads the latest cluster when it needs it and holds no copy, so that the
    // source changes the published cluster in place (see `follow::apply_steps`).
    let names_from = desired.clone();
    let mut agent = Agent::new(node, pin_dir, dns, opts, Box::new(move || names_from.borrow().clone()))?;
    // The resolver has not taken the latest change yet (or failed to).
    let mut names_stale = true;
    info!(node, pin_dir = %pin_dir.display(), "datapath loaded");
    tokio::pin!(stop);
    let mut retry_at: Option<Instant> = None;
    let mut first = true;
    loop {
        let changed = tokio::select! {
            _ = &mut stop => break,
            r = desired.changed() => {
                if r.is_err() {
                    break;
                }
                true
            }
            _ = sleep_until(retry_at) => false,
        };
        let Some(cluster) = desired.borrow_and_update().clone() else { continue };
        let t0 = Instant::now();
        match agent.apply(&cluster).await {
            Ok(mut r) => {
                crate::insight::metrics::agent().reconciled(t0.elapsed(), r.wired, r.waiting);
                // Names follow the cluster (again only when it changed, or after a failure).
                if changed || names_stale {
                    let gateways: Vec<std::net::Ipv4Addr> = cluster.networks.iter().map(|n| n.gateway).collect();
                    let errors = agent.update_names(&gateways).await;
                    names_stale = !errors.is_empty();
                    r.pending.extend(errors);
                }
                if !r.diff.is_empty() || first {
                    info!(
                        diff = %r.diff,
                        networks = cluster.networks.len(),
                        nodes = cluster.nodes.len(),
                        endpoints = cluster.endpoints.len(),
                        took_us = t0.elapsed().as_micros() as u64,
                        plan_us = r.plan_us,
                        maps_us = r.maps_us,
                        "applied cluster state"
                    );
                    first = false;
                } else if changed {
                    debug!(took_us = t0.elapsed().as_micros() as u64, "cluster changed, datapath already matches");
                }
                for p in &r.pending {
                    warn!("not applied yet (retrying): {p}");
                }
                // Also while a veth pair waits out its grace time, so that it goes when it ends.
                retry_at = (!r.pending.is_empty() || !agent.orphans.is_empty()).then(|| Instant::now() + RETRY_INTERVAL);
            }
            Err(e) => {
                warn!("apply failed (retrying): {e}");
                retry_at = Some(Instant::now() + RETRY_INTERVAL);
            }
        }
    }
    info!(node, "agent stopping; the datapath stays pinned and keeps forwarding");
    Ok(())
}

async fn sleep_until(t: Option<Instant>) {
    match t {
        Some(t) => tokio::time::sleep_until(t.into()).await,
        None => std::future::pending().await,
    }
}

/// Runs the agent on a cluster file until `stop` resolves.
pub async fn run_with_file(
    node: &str,
    file: &Path,
    pin_dir: &Path,
    dns: Vec<std::net::SocketAddr>,
    opts: NodeOptions,
    stop: impl std::future::Future<Output = ()>,
) -> Result<(), AgentError> {
    let (tx, rx) = tokio::sync::watch::channel(None);
    let source = tokio::spawn(crate::source::file::watch(node.to_string(), file.to_path_buf(), tx));
    let r = reconcile(node, pin_dir, dns, opts, rx, stop).await;
    source.abort();
    r
}

/// Runs the agent on an etcd store until `stop` resolves: registers the node, follows the store
/// and reconciles. Fails early only if the node cannot be registered at all.
pub async fn run_with_store(
    access: &StoreAccess,
    reg: Registration,
    pin_dir: &Path,
    dns: Vec<std::net::SocketAddr>,
    opts: NodeOptions,
    stop: impl std::future::Future<Output = ()>,
) -> Result<(), AgentError> {
    access.check().map_err(|e| AgentError::Store(e.to_string()))?;
    let node = reg.node.name.clone();
    let (tx, rx) = tokio::sync::watch::channel(None);
    // Held here so that the reconcile loop never sees the channel close: when the source stops
    // with an error (a refusal on the first connection), that error is what the agent reports.
    let _held = tx.clone();
    let mut source = tokio::spawn(follow(access.clone(), reg, tx));
    let r = tokio::select! {
        s = &mut source => match s {
            Ok(Err(e)) => Err(AgentError::Store(e.to_string())),
            Ok(Ok(())) => Ok(()),
            Err(e) => Err(AgentError::Store(format!("store task failed: {e}"))),
        },
        r = reconcile(&node, pin_dir, dns, opts, rx, stop) => r,
    };
    source.abort();
    r
}

/// Everything `overlay down` removes for a node: local endpoint veths (their routes and
/// neighbour entries go with them), the way out's table (forwarding back as it was) and the pins.
pub async fn teardown(node: &str, pin_dir: &Path) -> Vec<String> {
    let mut errors = resolv_conf::sweep(node, pin_dir, &[]);
    if let Err(e) = wayout::remove() {
        errors.push(format!("removing table ip {}: {e}", wayout::TABLE));
    }
    match Netlink::new() {
        Ok(nl) => match nl.links().await {
            Ok(links) => {
                for l in links.into_iter().filter(|l| l.name.starts_with(HOST_VETH_PREFIX) || l.name == DNS_LINK) {
                    if let Err(e) = nl.delete(l.index).await {
                        errors.push(format!("deleting {}: {e}", l.name));
                    }
                }
            }
            Err(e) => errors.push(e.to_string()),
        },
        Err(e) => errors.push(e.to_string()),
    }
    if let Err(e) = crate::dataplane::remove_pins(pin_dir) {
        errors.extend(e);
    }
    errors
}
