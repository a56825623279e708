//! The agent's side of the store: register the node under a lease and keep it alive, mirror the
//! overlay's keys with one watch, and publish the resulting [`Cluster`] to the reconcile loop.
//!
//! Losing etcd changes nothing on the node: the last published cluster stays, the datapath keeps
//! forwarding, and this loop reconnects by itself. It resumes the watch from the last revision it
//! saw; if etcd compacted that revision away, it reads everything again (a full resync: the
//! reconcile loop then repairs only the difference).
//!
//! With several members, losing the one that serves the watch (it died, or lost its leader:
//! the client requires one, so such a member cancels the watch) moves the watch to another
//! member, from the same revision, keeping the node's lease. The agent logs which member and
//! revision it lost, and where and after how long it resumed:
//! `resumed the watch after 1234 ms at revision 57 on member 8e9e05c52164694d (lost
//! fd422379fda50e48), no resync`.
use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use etcd_client::{Client, EventType, LeaseKeepAliveStream, LeaseKeeper, PutOptions, Txn, TxnOp, WatchOptions};
use futures::FutureExt as _;
use tokio::sync::watch;
use tracing::{debug, info, warn};

use super::{
    Store, StoreAccess, StoreError,
    mirror::{Mirror, Step},
    records::{AliveRecord, NodeRecord, PREFIX, alive_key, node_key, now_secs},
};
use crate::model::{Cluster, Node};

/// How long to wait before reconnecting, at first and at most.
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(1);
/// How often a broken lease keep-alive stream is opened again (through another member).
const RENEW_PAUSE: Duration = Duration::from_millis(100);

/// What the agent registers.
#[derive(Clone, Debug)]
pub struct Registration {
    pub node: Node,
    /// Lease TTL in seconds: a node whose agent stops renewing disappears after this long.
    pub ttl: i64,
}

/// Why following the store stopped for good.
#[derive(Debug, thiserror::Error)]
pub enum FollowError {
    #[error("node {node}: {message}")]
    Conflict { node: String, message: String },
    /// The store refused the credentials on the first connection (a wrong CA, no client
    /// certificate, a wrong password): retrying cannot help. Refusals after the agent has once
    /// been in are retried, as a member away is.
    #[error(transparent)]
    Refused(StoreError),
}

enum SessionEnd {
    /// Connection lost or a request failed: reconnect.
    Disconnected(String),
    /// The receivers are gone: stop.
    Closed,
    /// Registering again (the lease had expired) found the node's name or VTEP taken: stop.
    Conflict(String),
}

/// Where and when the watch was lost, until it is resumed.
struct Lost {
    at: Instant,
    /// The member that served it (etcd's member id, from the responses' headers; 0: unknown).
    member: u64,
    revision: i64,
}

/// How the watch stands between sessions.
#[derive(Default)]
struct WatchState {
    /// The member serving the current watch.
    member: u64,
    lost: Option<Lost>,
}

/// Follows the store `access` reaches until every receiver of `tx` is dropped. Returns an error only
/// when the node cannot be registered at all (another live agent has its name or VTEP).
pub async fn follow(access: StoreAccess, reg: Registration, tx: watch::Sender<Option<Arc<Cluster>>>) -> Result<(), FollowError> {
    let mut mirror = Mirror::new();
    let mut backoff = BACKOFF_MIN;
    let mut warned_down = false;
    let mut ever_in = false;
    // Kept across reconnections: the lease lives in the cluster, not in one member.
    let mut lease: Option<i64> = None;
    let mut ws = WatchState::default();
    loop {
        if tx.is_closed() {
            return Ok(());
        }
        let store = match Store::open(&access).await {
            Ok(s) => {
                ever_in = true;
                s
            }
            Err(e @ StoreError::Refused { .. }) if !ever_in => return Err(FollowError::Refused(e)),
            Err(e) => {
                if !warned_down {
                    warn!("{e}; the datapath keeps its last state, retrying");
                    warned_down = true;
                } else {
                    debug!("{e}; retrying");
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(BACKOFF_MAX);
                continue;
            }
        };
        if warned_down {
            info!(addrs = %store.addrs, revision = mirror.revision, "etcd reachable again; resuming");
            warned_down = false;
        }
        let mut held = match lease {
            Some(l) => l,
            None => match register(&store, &reg).await {
                Ok(l) => l,
                Err(Registered::Conflict(message)) => return Err(FollowError::Conflict { node: reg.node.name.clone(), message }),
                Err(Registered::Store(e)) => {
                    warn!("registering node {}: {e}; retrying", reg.node.name);
                    tokio::time::sleep(backoff).await;
                    continue;
                }
            },
        };
        backoff = BACKOFF_MIN;
        let end = session(&store, &reg, &mut held, &mut mirror, &tx, &mut ws).await;
        lease = Some(held);
        match end {
            SessionEnd::Closed => return Ok(()),
            SessionEnd::Conflict(message) => return Err(FollowError::Conflict { node: reg.node.name.clone(), message }),
            SessionEnd::Disconnected(why) => {
                crate::insight::metrics::agent().store_session(false);
                if ws.lost.is_none() {
                    warn!(
                        addrs = %store.addrs,
                        "lost etcd: the watch on member {:x} at revision {} ({why}); the datapath keeps its last state, resuming on a member that answers",
                        ws.member,
                        mirror.revision
                    );
                    ws.lost = Some(Lost { at: Instant::now(), member: ws.member, revision: mirror.revision });
                    warned_down = true;
                } else {
                    debug!("store session ended again ({why}); retrying");
                }
                tokio::time::sleep(BACKOFF_MIN).await;
            }
        }
    }
}

enum Registered {
    Conflict(String),
    Store(StoreError),
}

impl From<StoreError> for Registered {
    fn from(e: StoreError) -> Self {
        Registered::Store(e)
    }
}

/// Writes the node record and the liveness key under a fresh lease. Refuses to take a name or a
/// VTEP that another live node holds with a different identity.
async fn register(store: &Store, reg: &Registration) -> Result<i64, Registered> {
    let me = &reg.node;
    let (nodes, _) = store.nodes().await?;
    for (n, alive) in &nodes {
        if alive.is_none() {
            continue;
        }
        let same_vtep = n.vtep == me.vtep.to_string();
        if n.name == me.name && !same_vtep {
            return Err(Registered::Conflict(format!(
                "already live with VTEP {} (another agent runs under this name?); stop it or wait {} s for its lease to expire",
                n.vtep, reg.ttl
            )));
        }
        if n.name != me.name && same_vtep {
            return Err(Registered::Conflict(format!("VTEP {} is already live node {}'s", me.vtep, n.name)));
        }
    }
    let lease = store.lease_grant(reg.ttl).await?;
    let rec = NodeRecord::of(me);
    let alive = AliveRecord { since: now_secs(), ttl: reg.ttl };
    let txn = Txn::new().and_then([
        TxnOp::put(node_key(&me.name), serde_json::to_vec(&rec).expect("records serialise"), None),
        TxnOp::put(alive_key(&me.name), serde_json::to_vec(&alive).expect("records serialise"), Some(PutOptions::new().with_lease(lease))),
    ]);
    // Unconditional: sending it again after a lost answer writes the same.
    store.txn(txn).await?;
    info!(node = %me.name, vtep = %me.vtep, lease, ttl = reg.ttl, "registered in the store");
    Ok(lease)
}

/// Rebuilds the cluster from the mirror and hands it to the reconcile loop.
fn publish(mirror: &mut Mirror, me: &Node, tx: &watch::Sender<Option<Arc<Cluster>>>) -> bool {
    let t0 = Instant::now();
    let (mut cluster, warnings) = mirror.cluster(me);
    // What did not change keeps its generation: the planner rebuilds only the rest.
    if let Some(old) = &*tx.borrow() {
        cluster.endpoints.keep_generations(&old.endpoints);
    }
    debug!(revision = mirror.revision, took_us = t0.elapsed().as_micros() as u64, "cluster rebuilt from the mirror");
    for w in warnings {
        warn!("store entry {w}");
    }
    crate::insight::metrics::agent().store_revision(mirror.revision);
    tx.send(Some(Arc::new(cluster))).is_ok()
}

/// Applies the in-place steps of [`Mirror::event`] to a published cluster.
pub fn apply_steps(c: &mut Cluster, steps: Vec<Step>) {
    for s in steps {
        match s {
            Step::Add(ep) => c.endpoints.push(ep),
            Step::Remove { network, name } => {
                c.endpoints.remove(&network, &name);
            }
            Step::Nothing | Step::Rebuild => {}
        }
    }
}

/// Reads every key the cluster is built from again into an empty mirror: the kinds the mirror
/// keeps, each at the first one's revision (one snapshot), page by page (the allocations'
/// keys, as many again as the endpoints, are not read).
async fn resync(store: &Store, mirror: &mut Mirror) -> Result<(), StoreError> {
    mirror.clear();
    let (mut revision, mut keys) = (0, 0);
    for prefix in Mirror::PREFIXES {
        revision = store
            .pages(prefix, revision, |page| {
                keys += page.len();
                for kv in &page {
                    if let Some(bad) = mirror.put(&String::from_utf8_lossy(kv.key()), kv.value(), kv.create_revision()) {
                        warn!("store entry {bad}; skipped");
                    }
                }
            })
            .await?;
    }
    mirror.revision = revision;
    info!(keys, revision, "read the whole store");
    Ok(())
}

/// Opens the keep-alive stream of the node's lease. A lease etcd no longer has (it expired
/// while etcd was out of reach for longer than the TTL) is replaced by registering again.
async fn keep_alive(store: &Store, reg: &Registration, c: &mut Client, lease: &mut i64) -> Result<(LeaseKeeper, LeaseKeepAliveStream), SessionEnd> {
    match c.lease_keep_alive(*lease).await {
        Ok(k) => Ok(k),
        // The client's error when etcd's first answer has TTL 0: no such lease.
        Err(etcd_client::Error::LeaseKeepAliveError(_)) => {
            warn!(node = %reg.node.name, "lease expired; registering again");
            renew_lease(store, reg, c, lease).await
        }
        Err(e) => Err(SessionEnd::Disconnected(format!("lease keep-alive: {}", super::short(&e)))),
    }
}

/// Registers the node under a fresh lease and opens its keep-alive stream.
async fn renew_lease(store: &Store, reg: &Registration, c: &mut Client, lease: &mut i64) -> Result<(LeaseKeeper, LeaseKeepAliveStream), SessionEnd> {
    *lease = match register(store, reg).await {
        Ok(l) => l,
        Err(Registered::Conflict(m)) => return Err(SessionEnd::Conflict(m)),
        Err(Registered::Store(e)) => return Err(SessionEnd::Disconnected(e.to_string())),
    };
    c.lease_keep_alive(*lease).await.map_err(|e| SessionEnd::Disconnected(format!("lease keep-alive: {}", super::short(&e))))
}

/// One session on one client: keep the lease alive, watch from the mirror's revision. Ends on
/// the first failure (the caller reconnects) or when the receivers are gone.
async fn session(
    store: &Store,
    reg: &Registration,
    lease: &mut i64,
    mirror: &mut Mirror,
    tx: &watch::Sender<Option<Arc<Cluster>>>,
    state: &mut WatchState,
) -> SessionEnd {
    let lost = |e: &dyn std::fmt::Display| SessionEnd::Disconnected(e.to_string());
    let mut c = store.client();
    if mirror.revision == 0 {
        if let Err(e) = resync(store, mirror).await {
            return lost(&e);
        }
        if !publish(mirror, &reg.node, tx) {
            return SessionEnd::Closed;
        }
    }
    let (mut keeper, mut kstream) = match keep_alive(store, reg, &mut c, lease).await {
        Ok(k) => k,
        Err(end) => return end,
    };
    let mut watch_from = mirror.revision + 1;
    'watch: loop {
        let opts = WatchOptions::new().with_prefix().with_start_revision(watch_from).with_progress_notify();
        let mut ws = match c.watch(PREFIX, Some(opts)).await {
            Ok(w) => w,
            Err(e) => return lost(&e),
        };
        let period = Duration::from_millis((reg.ttl as u64 * 1000 / 3).max(200));
        let mut tick = tokio::time::interval(period);
        // A silent partition shows first as keep-alives going unanswered (TCP still accepts the
        // writes): two missed answers end the session well before the lease could expire.
        let mut answered = Instant::now();
        // Since when the keep-alive stream is being moved to another member.
        let mut renew: Option<Instant> = None;
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    if answered.elapsed() > period * 2 + Duration::from_millis(200) {
                        return lost(&format!("no keep-alive answer for {:.1} s", answered.elapsed().as_secs_f64()));
                    }
                    if renew.is_none() {
                        if let Err(e) = keeper.keep_alive().await {
                            debug!("lease keep-alive: {}; renewing it through another member", super::short(&e));
                            renew = Some(Instant::now());
                        }
                    }
                }
                // The keep-alive stream broke (its member died, or is between leaders) while the
                // watch may be fine on another member: only the keep-alive moves; the answer
                // deadline above still ends the session if no member renews the lease.
                _ = tokio::time::sleep(RENEW_PAUSE), if renew.is_some() => {
                    match keep_alive(store, reg, &mut c, lease).await {
                        Ok(k) => {
                            // Opening the stream renewed the lease once.
                            (keeper, kstream) = k;
                            answered = Instant::now();
                            if let Some(t) = renew.take() {
                                info!("lease keep-alive moved to another member after {} ms", t.elapsed().as_millis());
                            }
                        }
                        Err(SessionEnd::Disconnected(why)) => debug!("lease keep-alive: {why}; retrying"),
                        Err(end) => return end,
                    }
                }
                _ = tx.closed() => return SessionEnd::Closed,
                k = kstream.message(), if renew.is_none() => match k {
                    Ok(Some(r)) if r.ttl() > 0 => answered = Instant::now(),
                    Ok(Some(_)) => {
                        // The lease expired (etcd was away longer than the TTL): register again.
                        warn!(node = %reg.node.name, "lease expired; registering again");
                        (keeper, kstream) = match renew_lease(store, reg, &mut c, lease).await {
                            Ok(k) => k,
                            Err(end) => return end,
                        };
                        answered = Instant::now();
                    }
                    Ok(None) => {
                        debug!("lease keep-alive stream ended; renewing it through another member");
                        renew = Some(Instant::now());
                    }
                    Err(e) => {
                        debug!("lease keep-alive: {}; renewing it through another member", super::short(&e));
                        renew = Some(Instant::now());
                    }
                },
                m = ws.message() => {
                    let mut next = match m {
                        Ok(Some(r)) => Some(r),
                        Ok(None) => return lost(&"watch stream ended"),
                        Err(e) => return lost(&super::short(&e)),
                    };
                    let mut rebuild = false;
                    let mut steps = Vec::new();
                    // Take everything already waiting before publishing once.
                    while let Some(r) = next.take() {
                        if let Some(h) = r.header() {
                            state.member = h.member_id();
                        }
                        if r.compact_revision() > 0 {
                            warn!(wanted = watch_from, compacted = r.compact_revision(), "watch revision compacted away; full resync");
                            if let Err(e) = resync(store, mirror).await {
                                return lost(&e);
                            }
                            if let Some(l) = state.lost.take() {
                                info!(
                                    "resumed the watch after {} ms at revision {} on member {:x} (lost {:x} at revision {}), with a full resync",
                                    l.at.elapsed().as_millis(),
                                    mirror.revision,
                                    state.member,
                                    l.member,
                                    l.revision
                                );
                            }
                            if !publish(mirror, &reg.node, tx) {
                                return SessionEnd::Closed;
                            }
                            watch_from = mirror.revision + 1;
                            continue 'watch;
                        }
                        if r.canceled() {
                            return lost(&format!("watch canceled by member {:x}: {}", state.member, r.cancel_reason()));
                        }
                        if let Some(l) = state.lost.take() {
                            info!(
                                "resumed the watch after {} ms at revision {} on member {:x} (lost {:x}), no resync",
                                l.at.elapsed().as_millis(),
                                watch_from,
                                state.member,
                                l.member
                            );
                        } else if r.created() {
                            info!(revision = watch_from, "watching the store on member {:x}", state.member);
                        }
                        crate::insight::metrics::agent().store_session(true);
                        for ev in r.events() {
                            let Some(kv) = ev.kv() else { continue };
                            let key = String::from_utf8_lossy(kv.key());
                            let value = (ev.event_type() == EventType::Put).then(|| kv.value());
                            let (step, bad) = mirror.event(&key, value, kv.create_revision());
                            if let Some(bad) = bad {
                                warn!("store entry {bad}; skipped");
                            }
                            match step {
                                Step::Nothing => {}
                                Step::Rebuild => rebuild = true,
                                s => steps.push(s),
                            }
                        }
                        if let Some(h) = r.header() {
                            mirror.revision = mirror.revision.max(h.revision());
                        }
                        next = match ws.message().now_or_never() {
                            Some(Ok(Some(r))) => Some(r),
                            Some(Ok(None)) => return lost(&"watch stream ended"),
                            Some(Err(e)) => return lost(&super::short(&e)),
                            None => None,
                        };
                    }
                    watch_from = mirror.revision + 1;
                    crate::insight::metrics::agent().store_revision(mirror.revision);
                    if rebuild {
                        if !publish(mirror, &reg.node, tx) {
                            return SessionEnd::Closed;
                        }
                    } else if !steps.is_empty() {
                        // In place: neither the reconcile loop (between applies) nor the
                        // resolver holds a copy, so this does not clone the cluster.
                        tx.send_modify(|c| {
                            if let Some(c) = c {
                                apply_steps(Arc::make_mut(c), steps);
                            }
                        });
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod incremental {
    use std::time::Instant;

    use super::*;
    use crate::{
        control::desired::{self, Planner},
        model::Mac,
        source::store::records::{alive_key, endpoint_key, network_key, node_key, service_key},
    };

    fn me() -> Node {
        Node { name: "s0".into(), vtep: "172.16.0.10".parse().expect("ip"), underlay: None, datapath: None, mesh_return: None }
    }

    /// A mirror of `nets` networks of up to 250 endpoints over `nodes` nodes, `per_net` endpoints
    /// each (every third on this node, without a namespace).
    fn mirror(nodes: usize, nets: usize, per_net: usize) -> Mirror {
        let mut m = Mirror::new();
        let mut rev = 1;
        for n in 0..nets {
            let v = format!(r#"{{"name":"n{n}","vni":{},"subnet":"10.{}.{}.0/24","gateway":"10.{}.{}.1"}}"#, 100 + n, 10 + n / 256, n % 256, 10 + n / 256, n % 256);
            m.put(&network_key(&format!("n{n}")), v.as_bytes(), rev);
            rev += 1;
        }
        for i in 1..nodes {
            let name = format!("s{i}");
            let v = format!(r#"{{"name":"{name}","vtep":"172.{}.{}.10"}}"#, 16 + i / 250, i % 250);
            m.put(&node_key(&name), v.as_bytes(), rev);
            m.put(&alive_key(&name), br#"{"since":1,"ttl":10}"#, rev + 1);
            rev += 2;
        }
        for n in 0..nets {
            for h in 0..per_net {
                let i = n * per_net + h;
                let (key, value) = endpoint(n, h + 2, &format!("s{}", i % nodes), !i.is_multiple_of(3));
                m.put(&key, &value, rev);
                rev += 1;
            }
        }
        m.revision = rev;
        m
    }

    fn endpoint(net: usize, host: usize, node: &str, netns: bool) -> (String, Vec<u8>) {
        let ip: std::net::Ipv4Addr = format!("10.{}.{}.{host}", 10 + net / 256, net % 256).parse().expect("ip");
        let mac = Mac::from_ip(ip);
        let name = format!("e{net}-{host}");
        let ns = if netns { format!(r#","netns":"{name}""#) } else { String::new() };
        let v = format!(r#"{{"name":"{name}","network":"n{net}","node":"{node}","ip":"{ip}","mac":"{mac}"{ns}}}"#);
        (endpoint_key(&format!("n{net}"), &name), v.into_bytes())
    }

    /// Which of the four kinds of step this is (an index for counting them).
    fn kind(step: &Step) -> usize {
        match step {
            Step::Nothing => 0,
            Step::Add(_) => 1,
            Step::Remove { .. } => 2,
            Step::Rebuild => 3,
        }
    }

    /// A small xorshift from `seed`, the same sequence every run: each call gives a number
    /// below its argument.
    fn below(seed: u64) -> impl FnMut(usize) -> usize {
        let mut x = seed;
        move |n: usize| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x % n as u64) as usize
        }
    }

    /// Random endpoint adds and removes, each applied the agent's way (the mirror's step on the
    /// published cluster, planned by the agent's one planner that reuses unchanged networks),
    /// always plan exactly what a full rebuild planned from scratch does.
    #[test]
    fn incremental_plans_equal_full_rebuilds() {
        let me = me();
        let mut m = mirror(7, 5, 40);
        let mut published = Arc::new(m.cluster(&me).0);
        let mut planner = Planner::default();
        planner.plan(&published, &me.name).expect("plans");
        let mut next = below(0x9e37_79b9_7f4a_7c15);
        let mut rev = m.revision;
        let mut kinds = [0usize; 4];
        for round in 0..400 {
            rev += 1;
            let (net, host, node) = (next(5), 2 + next(60), format!("s{}", next(8)));
            let (key, value) = endpoint(net, host, &node, next(2) == 0);
            let put = next(3) != 0;
            let (step, _) = m.event(&key, put.then_some(value.as_slice()), rev);
            kinds[kind(&step)] += 1;
            // A reader holds the last cluster, as the reconcile loop and the resolver do.
            let held = published.clone();
            match step {
                Step::Rebuild => published = Arc::new(m.cluster(&me).0),
                Step::Nothing => {}
                s => apply_steps(Arc::make_mut(&mut published), vec![s]),
            }
            let fresh = m.cluster(&me).0;
            assert_eq!(*published, fresh, "round {round} ({key}): the published cluster equals a full build");
            let got = planner.plan(&published, &me.name).expect("plans");
            let want = desired::plan(&fresh, &me.name).expect("plans");
            assert_eq!(got, want, "round {round} ({key}): the incremental plan equals one from scratch");
            drop(held);
        }
        assert!(kinds[1] > 50 && kinds[2] > 20, "the sequence exercises adds and removes: {kinds:?}");
    }

    /// The agent's path for any sequence of changes (endpoints, networks, nodes coming and
    /// going, services): the mirror's step applied in place or a full build that keeps the
    /// generations of unchanged networks, planned by one planner that visits only changed
    /// networks, always plans exactly what a fresh plan of a full build does.
    #[test]
    fn random_changes_of_every_kind_plan_what_a_fresh_plan_does() {
        let me = me();
        let mut m = mirror(7, 5, 40);
        let (c, _) = m.cluster(&me);
        let (tx, _rx) = watch::channel(Some(Arc::new(c)));
        let mut planner = Planner::default();
        planner.plan(tx.borrow().as_ref().expect("published"), &me.name).expect("plans");
        let mut next = below(0x2545_f491_4f6c_dd1d);
        let mut rev = m.revision;
        let mut kinds = [0usize; 4];
        let mut reused = 0;
        for round in 0..600 {
            rev += 1;
            let (key, value): (String, Option<Vec<u8>>) = match next(10) {
                // Endpoints, most often (on networks that may not exist, nodes that may be down).
                0..=5 => {
                    let (net, host, node) = (next(6), 2 + next(60), format!("s{}", next(8)));
                    let (key, value) = endpoint(net, host, &node, next(2) == 0);
                    (key, (next(3) != 0).then_some(value))
                }
                // A network created or deleted (n5 is not in the initial mirror).
                6 => {
                    let n = next(6);
                    let v = format!(r#"{{"name":"n{n}","vni":{},"subnet":"10.10.{n}.0/24","gateway":"10.10.{n}.1"}}"#, 100 + n);
                    (network_key(&format!("n{n}")), (next(3) != 0).then(|| v.into_bytes()))
                }
                // A node up or down, or its VTEP changed.
                7 => {
                    let i = 1 + next(7);
                    if next(2) == 0 {
                        (alive_key(&format!("s{i}")), (next(2) == 0).then(|| br#"{"since":1,"ttl":10}"#.to_vec()))
                    } else {
                        let v = format!(r#"{{"name":"s{i}","vtep":"172.16.{}.10"}}"#, i + 10 * next(2));
                        (node_key(&format!("s{i}")), Some(v.into_bytes()))
                    }
                }
                // A service on network n0, with or without a VIP; its tasks are endpoints naming
                // it (while it is gone they conflict, and the mirror rebuilds on every change).
                8 => {
                    let vip = if next(2) == 0 { r#""mode":"vip","vip":"10.10.0.250""# } else { r#""mode":"dnsrr""# };
                    let v = format!(r#"{{"name":"svc","network":"n0",{vip},"ports":[{{"port":80,"target":8080,"protocol":"tcp"}}],"created":1}}"#);
                    (service_key("svc"), (next(6) != 0).then(|| v.into_bytes()))
                }
                // A task of that service.
                _ => {
                    let (key, value) = endpoint(0, 2 + next(60), &format!("s{}", next(8)), false);
                    let value = String::from_utf8(value).expect("utf-8").replace(r#","mac""#, r#","service":"svc","mac""#);
                    (key, (next(3) != 0).then(|| value.into_bytes()))
                }
            };
            let (step, _) = m.event(&key, value.as_deref(), rev);
            kinds[kind(&step)] += 1;
            match step {
                Step::Rebuild => assert!(publish(&mut m, &me, &tx), "published"),
                Step::Nothing => {}
                s => {
                    tx.send_modify(|c| apply_steps(Arc::make_mut(c.as_mut().expect("published")), vec![s]));
                }
            }
            let published = tx.borrow().clone().expect("published");
            let fresh = m.cluster(&me).0;
            assert_eq!(*published, fresh, "round {round} ({key}): the published cluster equals a full build");
            let before = planner.cached_fdb();
            let got = planner.plan(&published, &me.name).expect("plans");
            let want = desired::plan(&fresh, &me.name).expect("plans");
            assert_eq!(got, want, "round {round} ({key}): the incremental plan equals one from scratch");
            reused += before.iter().filter(|(vni, p)| got.base.fdb.0.get(vni).is_some_and(|f| Arc::ptr_eq(f, p))).count();
        }
        eprintln!("steps (nothing, add, remove, rebuild): {kinds:?}; parts reused {reused} times");
        assert!(kinds[1] > 20 && kinds[2] > 10 && kinds[3] > 50, "the sequence exercises in-place steps and rebuilds: {kinds:?}");
        assert!(reused > 1000, "unchanged networks' parts are reused ({reused})");
    }

    /// Where one change spends its time at scale (release build):
    /// `cargo test --release -p overlay-userspace --lib profile_one_change -- --ignored --nocapture`
    #[test]
    #[ignore = "a measurement, not a check"]
    fn profile_one_change() {
        let me = me();
        let t = Instant::now();
        let mut m = mirror(1000, 400, 250);
        eprintln!("mirror of 100,000 endpoints: {:?}", t.elapsed());
        let t = Instant::now();
        let mut published = Arc::new(m.cluster(&me).0);
        eprintln!("full build: {:?}", t.elapsed());
        let mut planner = Planner::default();
        let t = Instant::now();
        let plan = planner.plan(&published, &me.name).expect("plans");
        eprintln!("first plan: {:?} ({} FDB entries)", t.elapsed(), plan.base.fdb.len());
        let mut rev = m.revision;
        for k in 0..6 {
            rev += 1;
            let (key, value) = endpoint(399, 253, "s1", true);
            let add = k % 2 == 0;
            let t = Instant::now();
            let (step, _) = m.event(&key, add.then_some(value.as_slice()), rev);
            let t_event = t.elapsed();
            // What a reader holding the published cluster made every change cost before: a copy.
            let t = Instant::now();
            let copy = Cluster::clone(&published);
            let t_copy = t.elapsed();
            let t = Instant::now();
            drop(copy);
            let t_drop = t.elapsed();
            let t = Instant::now();
            apply_steps(Arc::make_mut(&mut published), vec![step]);
            let t_step = t.elapsed();
            let t = Instant::now();
            let p = planner.plan(&published, &me.name).expect("plans");
            let t_plan = t.elapsed();
            let t = Instant::now();
            let s = p.map_state(1, &[]);
            let t_state = t.elapsed();
            eprintln!("change {k}: event {t_event:?}, step in place {t_step:?}, plan {t_plan:?}, map_state {t_state:?}; a copy of the cluster {t_copy:?} + its drop {t_drop:?} ({} FDB)", s.fdb.len());
        }
    }
}
