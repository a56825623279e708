//! The agent: keeps one node's datapath equal to the cluster description.
//!
//! Desired state in, diff out: a source (the cluster file) yields a whole validated
//! [`Cluster`]; [`Agent::apply`] wires local endpoints, then hands the complete [`MapState`] to
//! the dataplane, which writes only the difference. A rejected description changes nothing.
use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    sync::Arc,
    time::Instant,
};

use tracing::{debug, info, warn};

use crate::{
    model::{self, Cluster},
    dataplane::{Dataplane, DataplaneError, DiffSummary},
    defaults::{CONTAINER_IFNAME, FILE_POLL, HOST_VETH_PREFIX, RETRY_INTERVAL},
    control::desired::{self, LocalEndpoint, NodePlan},
    host::netlink::{self, Netlink, NetlinkError},
    source::store::follow::{Registration, follow},
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
}

pub struct Agent {
    node: String,
    dataplane: Dataplane,
    nl: Netlink,
    /// Endpoints this agent wired, as wired, with their host-side ifindex: an unchanged endpoint
    /// is not wired again, so one change costs one endpoint's work, not all of them.
    wired: HashMap<String, (LocalEndpoint, u32)>,
    /// The (wired endpoints, endpoints of this node without a namespace, underlay) the last
    /// sweep kept; the next sweep runs when it differs.
    swept: Option<Swept>,
}

/// What a sweep kept: (host veth, ifindex) of wired endpoints, names of this node's endpoints
/// without a namespace yet, underlay ifindex.
type Swept = (Vec<(String, u32)>, Vec<String>, u32);

impl Agent {
    pub fn new(node: &str, pin_dir: &Path) -> Result<Self, AgentError> {
        let dataplane = Dataplane::load(pin_dir)?;
        Ok(Agent { node: node.to_string(), dataplane, nl: Netlink::new()?, wired: HashMap::new(), swept: None })
    }

    /// Makes the node match `cluster`. Validation already happened; what can still fail here is
    /// the host (a namespace missing, an interface gone): those endpoints are reported pending
    /// and everything else is applied.
    pub async fn apply(&mut self, cluster: &Cluster) -> Result<ApplyReport, AgentError> {
        let plan = desired::plan(cluster, &self.node)?;
        let underlay = match &plan.underlay {
            Some(name) => self.nl.link(name).await?.ok_or_else(|| NetlinkError::NoSuchLink(name.clone()))?,
            None => self.nl.interface_with_address(plan.vtep).await?,
        };
        self.dataplane.attach_ingress(&underlay.name, underlay.index)?;
        let mut report = ApplyReport::default();
        let mut wired: Vec<(&LocalEndpoint, u32)> = Vec::new();
        for ep in &plan.local {
            if let Some((done, ifindex)) = self.wired.get(&ep.name) {
                if done == ep {
                    wired.push((ep, *ifindex));
                    continue;
                }
            }
            match self.wire(ep, underlay.mtu).await {
                Ok(ifindex) => {
                    self.wired.insert(ep.name.clone(), (ep.clone(), ifindex));
                    wired.push((ep, ifindex));
                }
                Err(e) => {
                    self.wired.remove(&ep.name);
                    report.pending.push(format!("{}: {e}", ep.name));
                }
            }
        }
        let state = plan.map_state(underlay.index, &wired);
        report.diff = self.dataplane.apply(&state)?;
        let kept: Vec<(String, u32)> = wired.iter().map(|(e, i)| (e.host_ifname.clone(), *i)).collect();
        let swept = Some((kept, plan.unwired.clone(), underlay.index));
        if !report.pending.is_empty() || self.swept != swept {
            self.sweep(&plan, &wired, (&underlay.name, underlay.index)).await?;
            self.wired.retain(|name, _| plan.local.iter().any(|e| &e.name == name));
            self.swept = if report.pending.is_empty() { swept } else { None };
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
        // Container side: the other end of the host veth (under its temporary name if just moved,
        // as eth0 if wired before).
        let links = inside.links().await?;
        let c = links
            .iter()
            .find(|l| l.peer == Some(host.index) && (l.name == ep.peer_ifname || l.name == CONTAINER_IFNAME))
            .ok_or_else(|| fail(format!("no {CONTAINER_IFNAME} in namespace {}", ep.netns)))?;
        if c.name != CONTAINER_IFNAME || c.mtu != mtu || c.mac != Some(ep.mac.0) {
            inside.configure(c.index, CONTAINER_IFNAME, Some(ep.mac), mtu).await?;
        } else {
            inside.set_up(c.index).await?;
        }
        // Old addresses go first: deleting a primary address takes its secondaries with it.
        inside.remove_ipv4_except(c.index, ep.ip).await?;
        inside.add_address(c.index, ep.ip, ep.prefix_len).await?;
        if let Some(lo) = links.iter().find(|l| l.name == "lo") {
            inside.set_up(lo.index).await?;
        }
        if host.mtu != mtu {
            self.nl.set_mtu(host.index, mtu).await?;
        }
        self.nl.set_up(host.index).await?;
        self.dataplane.attach_egress(&host.name, host.index)?;
        Ok(host.index)
    }

    /// Removes what the plan no longer holds: veths of deleted endpoints and their link pins.
    async fn sweep(&mut self, plan: &NodePlan, wired: &[(&LocalEndpoint, u32)], underlay: (&str, u32)) -> Result<(), AgentError> {
        // A veth of an endpoint of this node without a namespace yet is kept too: the Docker
        // plugin creates the pair at Join, before Docker moves one end into the container.
        let mut keep_ifs: Vec<String> = plan.local.iter().map(|e| e.host_ifname.clone()).collect();
        keep_ifs.extend(plan.unwired.iter().map(|name| desired::host_ifname(name)));
        for l in self.nl.links().await? {
            if l.name.starts_with(HOST_VETH_PREFIX) && !keep_ifs.contains(&l.name) {
                info!(ifname = %l.name, "removing veth of a deleted endpoint");
                self.nl.delete(l.index).await?;
            }
        }
        let mut keep: Vec<(&str, u32)> = wired.iter().map(|(e, i)| (e.host_ifname.as_str(), *i)).collect();
        keep.push(underlay);
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
pub async fn reconcile(node: &str, pin_dir: &Path, mut desired: Desired, stop: impl std::future::Future<Output = ()>) -> Result<(), AgentError> {
    let mut agent = Agent::new(node, pin_dir)?;
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
            Ok(r) => {
                if !r.diff.is_empty() || first {
                    info!(
                        diff = %r.diff,
                        networks = cluster.networks.len(),
                        nodes = cluster.nodes.len(),
                        endpoints = cluster.endpoints.len(),
                        took_us = t0.elapsed().as_micros() as u64,
                        "applied cluster state"
                    );
                    first = false;
                } else if changed {
                    debug!(took_us = t0.elapsed().as_micros() as u64, "cluster changed, datapath already matches");
                }
                for p in &r.pending {
                    warn!("endpoint not wired yet (retrying): {p}");
                }
                retry_at = (!r.pending.is_empty()).then(|| Instant::now() + RETRY_INTERVAL);
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

/// Watches a cluster file: every edit that validates replaces the desired cluster; a bad edit
/// is rejected whole with a warning and the last good one stays.
pub async fn watch_file(node: String, file: PathBuf, tx: tokio::sync::watch::Sender<Option<Arc<Cluster>>>) {
    let mut last_seen: Option<Vec<u8>> = None;
    while !tx.is_closed() {
        let bytes = std::fs::read(&file).ok();
        if bytes.is_some() && bytes != last_seen {
            last_seen = bytes;
            match model::load(&file).and_then(|c| check_node(&c, &node).map(|()| c)) {
                Ok(c) => {
                    let _ = tx.send(Some(Arc::new(c)));
                }
                Err(e) => warn!(file = %file.display(), "cluster file rejected, datapath keeps the last good state: {e}"),
            }
        }
        tokio::time::sleep(FILE_POLL).await;
    }
}

/// Runs the agent on a cluster file until `stop` resolves.
pub async fn run_with_file(node: &str, file: &Path, pin_dir: &Path, stop: impl std::future::Future<Output = ()>) -> Result<(), AgentError> {
    let (tx, rx) = tokio::sync::watch::channel(None);
    let source = tokio::spawn(watch_file(node.to_string(), file.to_path_buf(), tx));
    let r = reconcile(node, pin_dir, rx, stop).await;
    source.abort();
    r
}

/// Runs the agent on an etcd store until `stop` resolves: registers the node, follows the store
/// and reconciles. Fails early only if the node cannot be registered at all.
pub async fn run_with_store(url: &str, reg: Registration, pin_dir: &Path, stop: impl std::future::Future<Output = ()>) -> Result<(), AgentError> {
    crate::source::store::parse_url(url).map_err(|e| AgentError::Store(e.to_string()))?;
    let node = reg.node.name.clone();
    let (tx, rx) = tokio::sync::watch::channel(None);
    let mut source = tokio::spawn(follow(url.to_string(), reg, tx));
    let r = tokio::select! {
        r = reconcile(&node, pin_dir, rx, stop) => r,
        s = &mut source => match s {
            Ok(Err(e)) => Err(AgentError::Store(e.to_string())),
            Ok(Ok(())) => Ok(()),
            Err(e) => Err(AgentError::Store(format!("store task failed: {e}"))),
        },
    };
    source.abort();
    r
}

/// A file that does not name this node is rejected like any other invalid file.
fn check_node(c: &Cluster, node: &str) -> Result<(), model::ConfigError> {
    match c.node(node) {
        Some(_) => Ok(()),
        None => Err(model::ConfigError::Invalid { entry: "nodes".into(), field: "name", message: format!("this node ({node}) is not listed") }),
    }
}

/// Everything `overlay down` removes for a node: local endpoint veths and the pins.
pub async fn teardown(pin_dir: &Path) -> Vec<String> {
    let mut errors = Vec::new();
    match Netlink::new() {
        Ok(nl) => match nl.links().await {
            Ok(links) => {
                for l in links.into_iter().filter(|l| l.name.starts_with(HOST_VETH_PREFIX)) {
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
