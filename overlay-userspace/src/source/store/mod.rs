//! Cluster state in etcd: the records, the operations of the CLI (networks, endpoints, IPAM),
//! and the agent's registration and watch ([`follow`]).
//!
//! Every allocation is one etcd transaction whose comparisons make it fail if anything it
//! relied on changed since it was read; it is then retried on fresh data. So two concurrent
//! `endpoint add` never get the same address, and two `network create` never the same VNI or
//! overlapping subnets.
//!
//! With several members (`etcd://H1:P1,H2:P2,H3:P3`) every request is sent again, for up to
//! [`RETRY_FOR`], when it failed in a way that may pass: a member down, between two leaders,
//! too slow ([`transient`]). A write whose answer was lost may have been applied before it is
//! sent again; its compare then fails, and the operation re-reads: when the store already holds
//! exactly what it wrote (or no longer holds what it removed), that was its own doing and it
//! succeeds. So a retried `endpoint add` returns the endpoint it created instead of
//! "already exists". Only when the retries run out is the outcome unknown (the error says
//! "etcd unreachable"; `endpoint ls` tells whether it was applied).
pub mod access;
pub mod follow;
pub mod mirror;
pub mod records;

use std::{net::Ipv4Addr, time::Duration};

use etcd_client::{Client, Compare, CompareOp, ConnectOptions, GetOptions, KeyValue, Txn, TxnOp};
use ipnet::Ipv4Net;
use overlay_common::wire::MAX_VNI;

pub use access::{Credentials, StoreAccess};
pub use records::{AliveRecord, EndpointRecord, Malformed, NetworkRecord, NodeRecord, PortRecord, ServiceRecord};
use records::*;

use crate::model::{self, Mac};

/// VNIs given to networks created without one start here, as Docker swarm's do.
pub const VNI_FIRST: u32 = 4096;
/// Subnets given to networks created without one: 10.0.N.0/24 from this pool, as Docker's.
pub const POOL: &str = "10.0.0.0/8";
pub const POOL_PREFIX: u8 = 24;
/// How long one attempt of a request to etcd may take.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(3);
/// How long a request is sent again while it fails transiently (a member down, no leader, a
/// leader change) before the store counts as unreachable: enough for an election (about a
/// second after a leader dies with etcd's default 1 s election timeout) with a wide margin.
pub const RETRY_FOR: Duration = Duration::from_secs(10);
/// The pause between two attempts of a request, at first and at most. Short at first: the
/// usual failure with several members is one dead member's refused connection, and the next
/// attempt likely goes to another.
const RETRY_PAUSE_MIN: Duration = Duration::from_millis(10);
const RETRY_PAUSE_MAX: Duration = Duration::from_millis(250);
/// Keys fetched per page when reading a whole prefix.
const PAGE: i64 = 2000;
/// Attempts of one allocation before giving up (each lost race re-reads and tries again).
const TXN_ATTEMPTS: usize = 200;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{0:?} is not a store address: expected etcd://HOST:PORT[,HOST:PORT...]")]
    BadUrl(String),
    #[error("etcd unreachable at {addrs}: {message}")]
    Unreachable { addrs: String, message: String },
    #[error("etcd at {addrs}: {message}")]
    Etcd { addrs: String, message: String },
    /// TLS or authentication refused: the message says which file or flag and which check.
    #[error("etcd at {addrs} refused the connection: {message}")]
    Refused { addrs: String, message: String },
    #[error("{flag} {}: {message}", path.display())]
    BadFile { flag: &'static str, path: std::path::PathBuf, message: String },
    /// Credentials that do not go together.
    #[error("{0}")]
    Access(String),
    #[error("no network named {0:?} (see `overlay network ls`)")]
    UnknownNetwork(String),
    /// The write breaks a rule of the cluster (the one rule book, `model::rules`).
    #[error(transparent)]
    Conflict(#[from] model::Conflict),
    #[error("no free VNI left in {VNI_FIRST}-{MAX_VNI}")]
    VnisExhausted,
    #[error("no free /{POOL_PREFIX} left in the default pool {POOL}; pass --subnet")]
    PoolExhausted,
    #[error("network {network}: subnet {subnet} is exhausted (no free address left)")]
    SubnetExhausted { network: String, subnet: Ipv4Net },
    #[error("network {network} still has {count} endpoint(s) ({names}); remove them first")]
    NetworkInUse { network: String, count: usize, names: String },
    #[error("no endpoint named {0:?} (see `overlay endpoint ls`)")]
    UnknownEndpoint(String),
    #[error("no service named {0:?} (see `overlay service ls`)")]
    UnknownService(String),
    #[error("unknown node {0:?}: no agent has registered it (see `overlay node ls`)")]
    UnknownNode(String),
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Malformed(#[from] Malformed),
    #[error("gave up after {TXN_ATTEMPTS} attempts: the store kept changing under {0}")]
    Contended(String),
}

type Result<T> = std::result::Result<T, StoreError>;

/// gRPC status codes (google.golang.org/grpc/codes) that etcd and tonic use for failures that
/// may pass when the request is sent again.
const GRPC_CANCELLED: i32 = 1;
const GRPC_UNKNOWN: i32 = 2;
const GRPC_DEADLINE_EXCEEDED: i32 = 4;
const GRPC_UNAVAILABLE: i32 = 14;

/// Whether a failed request may succeed if sent again shortly: the connection failed, or etcd
/// answered "unavailable" (etcd's code for no leader, leader changed, not capable, stopping,
/// request timed out) or the deadline passed. Refusals (a failed compare, a bad request,
/// permission) are not transient.
pub fn transient(e: &etcd_client::Error) -> bool {
    match e {
        etcd_client::Error::TransportError(_) | etcd_client::Error::IoError(_) => true,
        etcd_client::Error::GRpcStatus(s) => match s.code() as i32 {
            GRPC_CANCELLED | GRPC_DEADLINE_EXCEEDED | GRPC_UNAVAILABLE => true,
            // Made by the client from a broken connection (it carries that error as its source),
            // not sent by etcd.
            GRPC_UNKNOWN => std::error::Error::source(s).is_some(),
            _ => false,
        },
        _ => false,
    }
}

/// A request's answer, and whether an earlier attempt failed after it may have reached etcd
/// (a write may then have been applied already).
struct Answer<T> {
    value: T,
    retried: bool,
}

/// An etcd client error in a few words: gRPC's message and the innermost cause
/// ("tcp connect error: Connection refused (os error 111)"), not the whole debug chain.
pub fn short(e: &etcd_client::Error) -> String {
    let mut last: Option<String> = None;
    let mut src = std::error::Error::source(access::inner(e));
    while let Some(s) = src {
        last = Some(s.to_string());
        src = s.source();
    }
    let head = match e {
        etcd_client::Error::GRpcStatus(s) => s.message().to_string(),
        other => other.to_string(),
    };
    match last {
        Some(l) if l != head && !head.contains(&l) => format!("{head}: {l}"),
        _ => head,
    }
}

/// Parses `etcd://HOST:PORT[,HOST:PORT...]` into the members' HOST:PORT.
pub fn parse_url(url: &str) -> Result<Vec<String>> {
    let rest = url.strip_prefix("etcd://").ok_or_else(|| StoreError::BadUrl(url.to_string()))?;
    let rest = rest.trim_end_matches('/');
    let mut out = Vec::new();
    for hp in rest.split(',') {
        let ok = hp.rsplit_once(':').is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok_and(|p| p > 0));
        if !ok {
            return Err(StoreError::BadUrl(url.to_string()));
        }
        out.push(hp.to_string());
    }
    Ok(out)
}

/// A connection to the store.
#[derive(Clone)]
pub struct Store {
    client: Client,
    /// The addresses, for error messages.
    pub addrs: String,
    /// How it was reached (to explain refusals, and for components that reconnect).
    pub access: StoreAccess,
}

/// The outcome of [`Store::txn`].
struct Committed {
    succeeded: bool,
    retried: bool,
}

/// A whole prefix at one revision.
pub struct Snapshot {
    pub revision: i64,
    pub kvs: Vec<KeyValue>,
}

fn str_of(kv: &KeyValue) -> String {
    String::from_utf8_lossy(kv.key()).to_string()
}

fn first_free_subnet(taken: &[Ipv4Net]) -> Option<Ipv4Net> {
    let pool: Ipv4Net = POOL.parse().expect("constant pool");
    pool.subnets(POOL_PREFIX).ok()?.find(|s| !taken.iter().any(|t| t.contains(&s.network()) || s.contains(&t.network())))
}

/// The gateway Docker reserves: the first host address.
pub fn gateway_of(subnet: Ipv4Net) -> Ipv4Addr {
    model::default_gateway(subnet)
}

/// What `network create` asks for.
#[derive(Clone, Debug, Default)]
pub struct NetworkSpec {
    pub name: String,
    pub vni: Option<u32>,
    pub subnet: Option<String>,
    /// [default: the first host address of the subnet]
    pub gateway: Option<Ipv4Addr>,
    pub mtu: Option<u32>,
    pub attachable: bool,
    /// No way out of the overlay.
    pub internal: bool,
}

/// What `endpoint add` asks for.
#[derive(Clone, Debug)]
pub struct EndpointSpec {
    pub name: String,
    pub network: String,
    pub node: String,
    pub netns: Option<String>,
    pub ip: Option<Ipv4Addr>,
    /// The interface's name in the namespace. `None` with a namespace: the first free `ethN`
    /// there; `None` without one: as the runtime names it (Docker).
    pub interface: Option<String>,
    pub aliases: Vec<String>,
    /// The service the endpoint is a task of.
    pub service: Option<String>,
}

/// What `service create` asks for.
#[derive(Clone, Debug)]
pub struct ServiceSpec {
    pub name: String,
    pub network: String,
    /// [default: allocated: the subnet's highest free address]
    pub vip: Option<Ipv4Addr>,
    pub ports: Vec<model::PortSpec>,
    /// `vip` or `dnsrr` [default: vip]
    pub mode: Option<String>,
}

impl Store {
    /// Connects without TLS or user and checks that etcd answers.
    pub async fn connect(url: &str) -> Result<Store> {
        Store::open(&StoreAccess::plain(url)).await
    }

    /// Connects with the credentials of `access` and checks that etcd answers. A refusal (TLS,
    /// certificate, user) is [`StoreError::Refused`] with what to fix; a member away is
    /// [`StoreError::Unreachable`].
    pub async fn open(access: &StoreAccess) -> Result<Store> {
        let members = parse_url(&access.url)?;
        let addrs = members.join(",");
        let loaded = access.creds.load()?;
        let scheme = if access.tls() { "https" } else { "http" };
        let endpoints: Vec<String> = members.iter().map(|m| format!("{scheme}://{m}")).collect();
        let opts = ConnectOptions::new()
            .with_connect_timeout(REQUEST_TIMEOUT)
            .with_timeout(REQUEST_TIMEOUT)
            // etcd closes connections that ping more often than every 5 s (--grpc-keepalive-min-time).
            .with_keep_alive(Duration::from_secs(10), Duration::from_secs(5))
            // A member that lost its leader refuses requests ("no leader", retried elsewhere) and
            // cancels watches, rather than serving stale reads or a watch that never moves.
            .with_require_leader(true);
        let opts = loaded.apply(opts);
        let client = match tokio::time::timeout(REQUEST_TIMEOUT, Client::connect(&endpoints, Some(opts))).await {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => {
                return Err(match access::refusal(access, &e) {
                    Some(message) => StoreError::Refused { addrs, message },
                    None => StoreError::Unreachable { addrs, message: short(&e) },
                });
            }
            Err(_) => return Err(StoreError::Unreachable { addrs, message: format!("no answer within {REQUEST_TIMEOUT:?}") }),
        };
        let store = Store { client, addrs, access: access.clone() };
        // One attempt first: a refusal (TLS, certificate, user) shows at once and is explained;
        // only an outage is worth the retries of `ping`.
        let once = tokio::time::timeout(REQUEST_TIMEOUT, store.client().get(PREFIX, Some(GetOptions::new().with_count_only()))).await;
        match once {
            Ok(Ok(_)) => return Ok(store),
            Ok(Err(e)) => match store.etcd(e) {
                StoreError::Unreachable { .. } => {
                    if let Some(refused) = store.diagnose(&members).await {
                        return Err(refused);
                    }
                }
                other => return Err(other),
            },
            Err(_) => {}
        }
        store.ping().await?;
        Ok(store)
    }

    /// After a failure that looks like an outage: whether a member is in fact refusing us. A
    /// plain client at a TLS port, or a TLS client whose certificate (or its absence) etcd
    /// refuses after the handshake, sees only a closed connection.
    async fn diagnose(&self, members: &[String]) -> Option<StoreError> {
        let addrs = self.addrs.clone();
        for m in members {
            if !self.access.tls() {
                if access::serves_tls(m).await {
                    let message = format!("{m} serves TLS and this client does not use it: pass --store-cacert (and --store-cert/--store-key if etcd asks for a client certificate)");
                    return Some(StoreError::Refused { addrs, message });
                }
            } else if let Some(why) = access::tls_refusal(&self.access, m).await {
                let message = if members.len() > 1 { format!("{why} (at {m})") } else { why };
                return Some(StoreError::Refused { addrs, message });
            }
        }
        None
    }

    /// One cheap read: fails with [`StoreError::Unreachable`] if etcd does not answer.
    pub async fn ping(&self) -> Result<i64> {
        let r = self.request("read", |mut c| async move { c.get(PREFIX, Some(GetOptions::new().with_count_only())).await }).await?;
        Ok(r.value.header().map(|h| h.revision()).unwrap_or(0))
    }

    /// Sends one request (`send`, given a client) until it succeeds, fails for good, or has
    /// failed transiently for [`RETRY_FOR`]; then fails with [`StoreError::Unreachable`] naming
    /// the last failure. Every attempt has [`REQUEST_TIMEOUT`]; the balanced client sends each
    /// to one of the members it still reaches.
    // A closure taking an owned client rather than an async closure borrowing one: the futures
    // stay `Send` for `tokio::spawn` (async closures over references are not, yet).
    async fn request<T, F>(&self, what: &str, mut send: impl FnMut(Client) -> F) -> Result<Answer<T>>
    where
        F: std::future::Future<Output = std::result::Result<T, etcd_client::Error>>,
    {
        let t0 = std::time::Instant::now();
        let mut pause = RETRY_PAUSE_MIN;
        let mut retried = false;
        loop {
            let why = match tokio::time::timeout(REQUEST_TIMEOUT, send(self.client.clone())).await {
                Ok(Ok(value)) => {
                    if retried {
                        tracing::debug!(took_ms = t0.elapsed().as_millis() as u64, "{what}: answered after retrying");
                    }
                    return Ok(Answer { value, retried });
                }
                // A refusal (TLS, certificate, user) does not pass by waiting.
                Ok(Err(e)) if transient(&e) && access::refusal(&self.access, &e).is_none() => short(&e),
                Ok(Err(e)) => return Err(self.etcd(e)),
                Err(_) => format!("{what}: no answer within {REQUEST_TIMEOUT:?}"),
            };
            retried = true;
            if t0.elapsed() + pause > RETRY_FOR {
                let message = format!("{why} (retried for {:.1} s)", t0.elapsed().as_secs_f64());
                return Err(StoreError::Unreachable { addrs: self.addrs.clone(), message });
            }
            tracing::debug!("{what}: {why}; retrying in {pause:?}");
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(RETRY_PAUSE_MAX);
        }
    }

    pub fn client(&self) -> Client {
        self.client.clone()
    }

    fn etcd(&self, e: etcd_client::Error) -> StoreError {
        if let Some(message) = access::refusal(&self.access, &e) {
            StoreError::Refused { addrs: self.addrs.clone(), message }
        } else if transient(&e) {
            StoreError::Unreachable { addrs: self.addrs.clone(), message: short(&e) }
        } else {
            StoreError::Etcd { addrs: self.addrs.clone(), message: e.to_string() }
        }
    }

    /// A lease of `ttl` seconds (retried as every request).
    pub async fn lease_grant(&self, ttl: i64) -> Result<i64> {
        Ok(self.request("lease grant", |mut c| async move { c.lease_grant(ttl, None).await }).await?.value.id())
    }

    /// Every key under `prefix` at one revision (`revision` 0: the newest), page by page.
    pub async fn snapshot(&self, prefix: &str, revision: i64) -> Result<Snapshot> {
        let mut kvs = Vec::new();
        let revision = self.pages(prefix, revision, |page| kvs.extend(page)).await?;
        Ok(Snapshot { revision, kvs })
    }

    /// Reads every key under `prefix` at `revision` (0: the current one) page by page, handing
    /// each page to `f` as it arrives (a large prefix is never held whole). Returns the
    /// revision read.
    pub async fn pages(&self, prefix: &str, revision: i64, mut f: impl FnMut(Vec<KeyValue>)) -> Result<i64> {
        let end = range_end(prefix);
        let mut from = prefix.as_bytes().to_vec();
        let mut rev = revision;
        loop {
            let mut opts = GetOptions::new().with_range(end.clone()).with_limit(PAGE);
            if rev > 0 {
                opts = opts.with_revision(rev);
            }
            // Pages after the first read the first one's revision: a page retried on another
            // member still belongs to the same snapshot.
            let mut r = self
                .request("read", |mut c| {
                    let (from, opts) = (from.clone(), opts.clone());
                    async move { c.get(from, Some(opts)).await }
                })
                .await?
                .value;
            if rev == 0 {
                rev = r.header().map(|h| h.revision()).unwrap_or(0);
            }
            let more = r.more();
            let page = r.take_kvs();
            if let Some(last) = page.last() {
                from = last.key().to_vec();
                from.push(0);
            }
            let empty = page.is_empty();
            f(page);
            if !more || empty {
                break;
            }
        }
        Ok(rev)
    }

    async fn get_one(&self, key: &str) -> Result<(Option<KeyValue>, i64)> {
        let mut r = self.request("read", |mut c| async move { c.get(key, None).await }).await?.value;
        let rev = r.header().map(|h| h.revision()).unwrap_or(0);
        Ok((r.take_kvs().into_iter().next(), rev))
    }

    /// Runs a transaction: whether its compares held, and whether an earlier attempt may have
    /// been applied already (then a failed compare may be that attempt's doing: see
    /// [`Store::holds`]).
    async fn txn(&self, txn: Txn) -> Result<Committed> {
        let a = self
            .request("transaction", |mut c| {
                let txn = txn.clone();
                async move { c.txn(txn).await }
            })
            .await?;
        Ok(Committed { succeeded: a.value.succeeded(), retried: a.retried })
    }

    /// Whether `key` holds exactly `value` (`None`: whether it is absent). After a transaction
    /// that was sent again and whose compares failed, this tells whether the first attempt was
    /// applied: the store then holds what it wrote.
    async fn holds(&self, key: &str, value: Option<&[u8]>) -> Result<bool> {
        let (kv, _) = self.get_one(key).await?;
        Ok(kv.as_ref().map(|kv| kv.value()) == value)
    }

    /// Networks, oldest first; malformed ones are returned apart.
    pub async fn networks(&self) -> Result<(Vec<NetworkRecord>, Vec<Malformed>, i64)> {
        let s = self.snapshot(NETWORKS, 0).await?;
        let mut ok: Vec<(i64, NetworkRecord)> = Vec::new();
        let mut bad = Vec::new();
        for kv in &s.kvs {
            match NetworkRecord::parse(&str_of(kv), kv.value()) {
                Ok((r, _)) => ok.push((kv.create_revision(), r)),
                Err(e) => bad.push(e),
            }
        }
        ok.sort_by_key(|(rev, _)| *rev);
        Ok((ok.into_iter().map(|(_, r)| r).collect(), bad, s.revision))
    }

    pub async fn network(&self, name: &str) -> Result<(NetworkRecord, i64)> {
        let key = network_key(name);
        match self.get_one(&key).await?.0 {
            None => Err(StoreError::UnknownNetwork(name.to_string())),
            Some(kv) => Ok((NetworkRecord::parse(&key, kv.value())?.0, kv.create_revision())),
        }
    }

    /// The networks and endpoints of the store in the one rule book (entries that conflict
    /// with older ones are left out, as the agents leave them out).
    async fn rules(&self, with_endpoints: bool) -> Result<(model::Rules, i64)> {
        let (nets, _, rev) = self.networks().await?;
        let mut rules = model::Rules::new();
        for r in &nets {
            if let Ok(n) = r.to_network() {
                if rules.check_network(&n).is_ok() {
                    rules.add_network(&n);
                }
            }
        }
        for (r, _) in self.services().await?.0 {
            let Some(net) = rules.network(&r.network).cloned() else { continue };
            if let Ok(svc) = r.to_service(&service_key(&r.name), &net) {
                if rules.check_service(&svc).is_ok() {
                    rules.add_service(&svc);
                }
            }
        }
        if with_endpoints {
            let s = self.snapshot(ENDPOINTS, 0).await?;
            for kv in &s.kvs {
                let key = str_of(kv);
                let Ok(r) = EndpointRecord::parse(&key, kv.value()) else { continue };
                let Some(net) = rules.network(&r.network).cloned() else { continue };
                if let Ok(e) = r.to_endpoint(&key, &net) {
                    if rules.check_endpoint(&e).is_ok() {
                        rules.add_endpoint(&e);
                    }
                }
            }
        }
        Ok((rules, rev))
    }

    /// Creates a network, allocating its VNI and subnet when not given.
    pub async fn network_create(&self, spec: &NetworkSpec) -> Result<NetworkRecord> {
        let entry = |vni: u32, subnet: &str, gateway: Option<Ipv4Addr>| {
            let gw = gateway.map(|g| g.to_string());
            let s = model::NetworkSpec {
                name: spec.name.clone(),
                vni: vni as i64,
                subnet,
                mtu: spec.mtu.map(i64::from),
                gateway: gw.as_deref(),
                internal: spec.internal,
            };
            model::network_entry("network", s).map_err(|e| match e {
                model::ConfigError::Invalid { field, message, .. } => StoreError::Invalid(format!("{field}: {message}")),
                other => StoreError::Invalid(other.to_string()),
            })
        };
        // Everything that does not depend on the store is checked first.
        entry(spec.vni.unwrap_or(VNI_FIRST), spec.subnet.as_deref().unwrap_or("10.0.0.0/24"), spec.gateway.filter(|_| spec.subnet.is_some()))?;
        for _ in 0..TXN_ATTEMPTS {
            let (existing, _, rev) = self.networks().await?;
            let (rules, _) = self.rules(false).await?;
            let vni = match spec.vni {
                Some(v) => v,
                None => (VNI_FIRST..=MAX_VNI).find(|v| !existing.iter().any(|n| n.vni == *v)).ok_or(StoreError::VnisExhausted)?,
            };
            let subnet = match &spec.subnet {
                Some(s) => s.clone(),
                None => {
                    let taken: Vec<Ipv4Net> = existing.iter().filter_map(|n| n.subnet()).collect();
                    first_free_subnet(&taken).ok_or(StoreError::PoolExhausted)?.to_string()
                }
            };
            let net = entry(vni, &subnet, spec.gateway)?;
            rules.check_network(&net)?;
            let rec = NetworkRecord {
                name: spec.name.clone(),
                vni,
                subnet: net.subnet.to_string(),
                gateway: net.gateway.to_string(),
                mtu: spec.mtu,
                attachable: spec.attachable,
                internal: spec.internal,
                created: now_secs(),
            };
            let value = serde_json::to_vec(&rec).expect("records serialise");
            // Fails if any network was created or changed since the read.
            let txn = Txn::new()
                .when([Compare::mod_revision(NETWORKS, CompareOp::Less, rev + 1).with_range(range_end(NETWORKS))])
                .and_then([TxnOp::put(network_key(&spec.name), value.clone(), None)]);
            let t = self.txn(txn).await?;
            if t.succeeded || (t.retried && self.holds(&network_key(&spec.name), Some(&value)).await?) {
                return Ok(rec);
            }
        }
        Err(StoreError::Contended(NETWORKS.to_string()))
    }

    /// Removes a network; refused while it has endpoints.
    pub async fn network_rm(&self, name: &str) -> Result<NetworkRecord> {
        for _ in 0..TXN_ATTEMPTS {
            let key = network_key(name);
            let Some(kv) = self.get_one(&key).await?.0 else { return Err(StoreError::UnknownNetwork(name.to_string())) };
            let rec = NetworkRecord::parse(&key, kv.value()).map(|(r, _)| r).ok();
            let used = self.snapshot(&ipam_prefix(name), 0).await?;
            if !used.kvs.is_empty() {
                let names: Vec<String> = used.kvs.iter().take(5).map(|kv| String::from_utf8_lossy(kv.value()).to_string()).collect();
                let more = if used.kvs.len() > 5 { ", ..." } else { "" };
                return Err(StoreError::NetworkInUse { network: name.to_string(), count: used.kvs.len(), names: format!("{}{more}", names.join(", ")) });
            }
            let ipam = ipam_prefix(name);
            let txn = Txn::new()
                .when([
                    Compare::mod_revision(key.as_str(), CompareOp::Equal, kv.mod_revision()),
                    Compare::version(ipam.as_str(), CompareOp::Equal, 0).with_range(range_end(&ipam)),
                ])
                .and_then([TxnOp::delete(key.as_str(), None)]);
            let t = self.txn(txn).await?;
            if t.succeeded || (t.retried && self.holds(&key, None).await?) {
                return Ok(rec.unwrap_or(NetworkRecord {
                    name: name.to_string(),
                    vni: 0,
                    subnet: String::new(),
                    gateway: String::new(),
                    mtu: None,
                    attachable: false,
                    internal: false,
                    created: 0,
                }));
            }
        }
        Err(StoreError::Contended(network_key(name)))
    }

    /// Services, oldest first, with their create revisions; malformed ones apart.
    pub async fn services(&self) -> Result<(Vec<(ServiceRecord, i64)>, Vec<Malformed>)> {
        let s = self.snapshot(SERVICES, 0).await?;
        let (mut ok, mut bad) = (Vec::new(), Vec::new());
        for kv in &s.kvs {
            match ServiceRecord::parse(&str_of(kv), kv.value()) {
                Ok(r) => ok.push((r, kv.create_revision())),
                Err(e) => bad.push(e),
            }
        }
        ok.sort_by_key(|(_, rev)| *rev);
        Ok((ok, bad))
    }

    /// Creates a service; in `vip` mode its VIP (given, or the subnet's highest free address)
    /// is taken in the network's address space, so no endpoint gets it.
    pub async fn service_create(&self, spec: &ServiceSpec) -> Result<ServiceRecord> {
        let invalid = |e: model::ConfigError| match e {
            model::ConfigError::Invalid { field, message, .. } => StoreError::Invalid(format!("{field}: {message}")),
            other => StoreError::Invalid(other.to_string()),
        };
        for _ in 0..TXN_ATTEMPTS {
            let (rec, net_rev) = self.network(&spec.network).await?;
            let net = rec.to_network().map_err(|m| Malformed { key: network_key(&rec.name), message: m })?;
            let (rules, _) = self.rules(true).await?;
            let used = self.snapshot(&ipam_prefix(&spec.network), 0).await?;
            let taken: std::collections::HashSet<Vec<u8>> = used.kvs.iter().map(|kv| kv.key().to_vec()).collect();
            let vip = spec.vip.map(|v| v.to_string());
            let m = model::ServiceSpec { name: spec.name.clone(), vip: vip.as_deref(), ports: spec.ports.clone(), mode: spec.mode.as_deref() };
            let svc = model::service_entry("service", &net, m, |ip| taken.contains(ipam_key(&net.name, ip).as_bytes()) || rules.ip_taken(&net.name, ip))
                .map_err(invalid)?;
            rules.check_service(&svc)?;
            if let Some(v) = svc.vip {
                if taken.contains(ipam_key(&net.name, v).as_bytes()) {
                    return Err(StoreError::Invalid(format!("vip: {v} is taken in network {}", net.name)));
                }
            }
            let r = ServiceRecord::of(&svc, now_secs());
            let key = service_key(&svc.name);
            let value = serde_json::to_vec(&r).expect("records serialise");
            let mut when = vec![
                Compare::create_revision(network_key(&spec.network), CompareOp::Equal, net_rev),
                Compare::create_revision(key.as_str(), CompareOp::Equal, 0),
            ];
            let mut then = vec![TxnOp::put(key.as_str(), value.clone(), None)];
            if let Some(v) = svc.vip {
                let ipam = ipam_key(&net.name, v);
                when.push(Compare::create_revision(ipam.as_str(), CompareOp::Equal, 0));
                then.push(TxnOp::put(ipam, format!("service:{}", svc.name), None));
            }
            let t = self.txn(Txn::new().when(when).and_then(then)).await?;
            if t.succeeded || (t.retried && self.holds(&key, Some(&value)).await?) {
                return Ok(r);
            }
            if self.get_one(&key).await?.0.is_some() {
                return Err(model::Conflict { field: "name", message: format!("a service named {:?} already exists", spec.name) }.into());
            }
        }
        Err(StoreError::Contended(service_key(&spec.name)))
    }

    /// Removes a service and frees its VIP; refused while endpoints are its tasks.
    pub async fn service_rm(&self, name: &str) -> Result<ServiceRecord> {
        let key = service_key(name);
        for _ in 0..TXN_ATTEMPTS {
            let Some(kv) = self.get_one(&key).await?.0 else { return Err(StoreError::UnknownService(name.to_string())) };
            let rec = ServiceRecord::parse(&key, kv.value())?;
            let (eps, _) = self.endpoints(Some(&rec.network)).await?;
            let tasks: Vec<String> = eps.iter().filter(|e| e.service.as_deref() == Some(name)).map(|e| e.name.clone()).collect();
            if !tasks.is_empty() {
                return Err(StoreError::Invalid(format!("service {name} still has {} task(s) ({}); remove them first", tasks.len(), tasks.join(", "))));
            }
            let mut then = vec![TxnOp::delete(key.as_str(), None)];
            if let Some(v) = rec.vip.as_deref().and_then(|v| v.parse::<Ipv4Addr>().ok()) {
                then.push(TxnOp::delete(ipam_key(&rec.network, v), None));
            }
            let txn = Txn::new().when([Compare::mod_revision(key.as_str(), CompareOp::Equal, kv.mod_revision())]).and_then(then);
            let t = self.txn(txn).await?;
            if t.succeeded || (t.retried && self.holds(&key, None).await?) {
                return Ok(rec);
            }
        }
        Err(StoreError::Contended(key))
    }

    /// Nodes with liveness: (record, alive), by name; malformed ones apart.
    pub async fn nodes(&self) -> Result<(Vec<(NodeRecord, Option<AliveRecord>)>, Vec<Malformed>)> {
        let nodes = self.snapshot(NODES, 0).await?;
        let alive = self.snapshot(ALIVE, nodes.revision).await?;
        let mut bad = Vec::new();
        let mut out = Vec::new();
        for kv in &nodes.kvs {
            let key = str_of(kv);
            match NodeRecord::parse(&key, kv.value()) {
                Ok(n) => {
                    let a = alive.kvs.iter().find(|a| str_of(a) == alive_key(&n.name));
                    let a = a.map(|a| AliveRecord::parse(&str_of(a), a.value()).unwrap_or(AliveRecord { since: 0, ttl: 0 }));
                    out.push((NodeRecord::of(&n), a));
                }
                Err(e) => bad.push(e),
            }
        }
        Ok((out, bad))
    }

    /// Endpoints by name, optionally of one network; malformed ones apart.
    pub async fn endpoints(&self, network: Option<&str>) -> Result<(Vec<EndpointRecord>, Vec<Malformed>)> {
        let s = self.snapshot(ENDPOINTS, 0).await?;
        let mut ok = Vec::new();
        let mut bad = Vec::new();
        for kv in &s.kvs {
            match EndpointRecord::parse(&str_of(kv), kv.value()) {
                Ok(r) if network.is_none_or(|n| n == r.network) => ok.push(r),
                Ok(_) => {}
                Err(e) => bad.push(e),
            }
        }
        Ok((ok, bad))
    }

    /// Publishes an endpoint, taking the next free address of its network (or the one asked
    /// for) and, in a namespace, the next free `ethN` (or the interface asked for) in the same
    /// transaction. Checked first against the one rule book.
    pub async fn endpoint_add(&self, spec: &EndpointSpec) -> Result<EndpointRecord> {
        let bad = |m: String| StoreError::Invalid(m);
        if spec.name.is_empty() || spec.name.contains(['/', ' ', '\0']) {
            return Err(bad(format!("endpoint name {:?} must be non-empty, without '/' or spaces", spec.name)));
        }
        let (node, _) = self.get_one(&node_key(&spec.node)).await?;
        if node.is_none() {
            return Err(StoreError::UnknownNode(spec.node.clone()));
        }
        for _ in 0..TXN_ATTEMPTS {
            let (rec, net_rev) = self.network(&spec.network).await?;
            let net = rec.to_network().map_err(|m| Malformed { key: network_key(&rec.name), message: m })?;
            let (mut rules, _) = self.rules(true).await?;
            if rules.network(&net.name) != Some(&net) {
                // The network itself conflicts with an older one: agents skip it.
                rules = model::Rules::new();
                rules.add_network(&net);
            }
            let used = self.snapshot(&ipam_prefix(&spec.network), 0).await?;
            let ip = match spec.ip {
                Some(ip) => ip,
                None => {
                    let used: std::collections::HashSet<&[u8]> = used.kvs.iter().map(|kv| kv.key()).collect();
                    net.subnet
                        .hosts()
                        .find(|ip| *ip != net.gateway && !used.contains(ipam_key(&spec.network, *ip).as_bytes()))
                        .ok_or(StoreError::SubnetExhausted { network: net.name.clone(), subnet: net.subnet })?
                }
            };
            let interface = match (&spec.interface, &spec.netns) {
                (Some(i), _) => Some(i.clone()),
                (None, Some(ns)) => Some(rules.next_interface(&spec.node, ns)),
                (None, None) => None,
            };
            let ip_s = ip.to_string();
            let es = model::EndpointSpec {
                name: spec.name.clone(),
                node: spec.node.clone(),
                ip: &ip_s,
                mac: None,
                netns: spec.netns.clone(),
                interface: interface.clone(),
                aliases: spec.aliases.clone(),
                service: spec.service.clone(),
            };
            let ep = model::endpoint_entry("endpoint", &net, es).map_err(|e| match e {
                model::ConfigError::Invalid { field, message, .. } => bad(format!("{field}: {message}")),
                other => bad(other.to_string()),
            })?;
            rules.check_endpoint(&ep)?;
            let r = EndpointRecord {
                name: spec.name.clone(),
                network: spec.network.clone(),
                node: spec.node.clone(),
                ip: ip.to_string(),
                mac: Mac::from_ip(ip).to_string(),
                netns: spec.netns.clone(),
                interface: interface.clone(),
                aliases: spec.aliases.clone(),
                service: spec.service.clone(),
            };
            let key = endpoint_key(&spec.network, &spec.name);
            let record = serde_json::to_vec(&r).expect("records serialise");
            let value = format!("{}/{}", spec.network, spec.name);
            let mut when = vec![
                Compare::create_revision(network_key(&spec.network), CompareOp::Equal, net_rev),
                Compare::create_revision(key.as_str(), CompareOp::Equal, 0),
                Compare::create_revision(ipam_key(&spec.network, ip), CompareOp::Equal, 0),
            ];
            let mut then = vec![
                TxnOp::put(key.as_str(), record.clone(), None),
                TxnOp::put(ipam_key(&spec.network, ip), spec.name.as_bytes(), None),
            ];
            if let Some(ns) = &spec.netns {
                when.push(Compare::create_revision(attach_key(&spec.node, &spec.network, ns), CompareOp::Equal, 0));
                then.push(TxnOp::put(attach_key(&spec.node, &spec.network, ns), spec.name.as_bytes(), None));
                if let Some(i) = &interface {
                    when.push(Compare::create_revision(ifname_key(&spec.node, i, ns), CompareOp::Equal, 0));
                    then.push(TxnOp::put(ifname_key(&spec.node, i, ns), value.as_bytes(), None));
                }
            }
            let t = self.txn(Txn::new().when(when).and_then(then)).await?;
            // Sent again after a lost answer, the first attempt may have been applied: the record
            // is then exactly this one (same address, node, namespace, interface).
            if t.succeeded || (t.retried && self.holds(&key, Some(&record)).await?) {
                return Ok(r);
            }
            // Lost a race: the next round re-reads and says what is taken.
            tokio::time::sleep(Duration::from_millis(1 + (std::process::id() as u64 % 7))).await;
        }
        Err(StoreError::Contended(ipam_prefix(&spec.network)))
    }

    /// The endpoint `name` of `network`.
    pub async fn endpoint(&self, network: &str, name: &str) -> Result<(EndpointRecord, i64)> {
        let key = endpoint_key(network, name);
        match self.get_one(&key).await?.0 {
            None => Err(StoreError::UnknownEndpoint(format!("{network}/{name}"))),
            Some(kv) => Ok((EndpointRecord::parse(&key, kv.value())?, kv.mod_revision())),
        }
    }

    /// The claims an endpoint holds besides its record: its address, its namespace's join of
    /// the network and its interface name there.
    fn claims(r: &EndpointRecord) -> Vec<String> {
        let mut keys = Vec::new();
        if let Ok(ip) = r.ip.parse::<Ipv4Addr>() {
            keys.push(ipam_key(&r.network, ip));
        }
        if let Some(ns) = &r.netns {
            keys.push(attach_key(&r.node, &r.network, ns));
            if let Some(i) = &r.interface {
                keys.push(ifname_key(&r.node, i, ns));
            }
        }
        keys
    }

    /// Attaches an endpoint to a namespace (or detaches it with `None`), moving its namespace
    /// claims in the same transaction.
    pub async fn endpoint_set_netns(&self, network: &str, name: &str, netns: Option<&str>) -> Result<EndpointRecord> {
        for _ in 0..TXN_ATTEMPTS {
            let (mut r, rev) = self.endpoint(network, name).await?;
            let key = endpoint_key(network, name);
            let mut when = vec![Compare::mod_revision(key.as_str(), CompareOp::Equal, rev)];
            let mut then = Vec::new();
            if let Some(old) = &r.netns {
                then.push(TxnOp::delete(attach_key(&r.node, &r.network, old), None));
                if let Some(i) = &r.interface {
                    then.push(TxnOp::delete(ifname_key(&r.node, i, old), None));
                }
            }
            if let Some(ns) = netns {
                if !model::valid_netns(ns) {
                    return Err(StoreError::Invalid(format!("{ns:?} is not a namespace name or absolute path")));
                }
                if r.netns.as_deref() != Some(ns) {
                    when.push(Compare::create_revision(attach_key(&r.node, &r.network, ns), CompareOp::Equal, 0));
                }
                then.push(TxnOp::put(attach_key(&r.node, &r.network, ns), name.as_bytes(), None));
                if let Some(i) = &r.interface {
                    then.push(TxnOp::put(ifname_key(&r.node, i, ns), format!("{network}/{name}").into_bytes(), None));
                }
            }
            r.netns = netns.map(str::to_string);
            let record = serde_json::to_vec(&r).expect("records serialise");
            then.push(TxnOp::put(key.as_str(), record.clone(), None));
            let t = self.txn(Txn::new().when(when).and_then(then)).await?;
            if t.succeeded || (t.retried && self.holds(&key, Some(&record)).await?) {
                return Ok(r);
            }
        }
        Err(StoreError::Contended(endpoint_key(network, name)))
    }

    /// A raw value under `key` (for keys other than the overlay's records).
    pub async fn get_raw(&self, key: &str) -> Result<Option<Vec<u8>>> {
        Ok(self.get_one(key).await?.0.map(|kv| kv.value().to_vec()))
    }

    pub async fn put_raw(&self, key: &str, value: Vec<u8>) -> Result<()> {
        self.request("write", |mut c| {
            let value = value.clone();
            async move { c.put(key, value, None).await }
        })
        .await?;
        Ok(())
    }

    pub async fn delete_raw(&self, key: &str) -> Result<()> {
        self.request("delete", |mut c| async move { c.delete(key, None).await }).await?;
        Ok(())
    }

    /// Removes an endpoint and frees its address, namespace and interface claims.
    pub async fn endpoint_rm(&self, network: &str, name: &str) -> Result<EndpointRecord> {
        let key = endpoint_key(network, name);
        for _ in 0..TXN_ATTEMPTS {
            let Some(kv) = self.get_one(&key).await?.0 else { return Err(StoreError::UnknownEndpoint(format!("{network}/{name}"))) };
            let mut then = vec![TxnOp::delete(key.as_str(), None)];
            let rec = EndpointRecord::parse(&key, kv.value());
            if let Ok(r) = &rec {
                then.extend(Self::claims(r).into_iter().map(|k| TxnOp::delete(k, None)));
            }
            let txn = Txn::new().when([Compare::mod_revision(key.as_str(), CompareOp::Equal, kv.mod_revision())]).and_then(then);
            let t = self.txn(txn).await?;
            if t.succeeded || (t.retried && self.holds(&key, None).await?) {
                // A malformed record is still removed: that is how an operator clears one.
                return Ok(rec.unwrap_or(EndpointRecord {
                    name: name.to_string(),
                    network: network.to_string(),
                    node: String::new(),
                    ip: String::new(),
                    mac: String::new(),
                    netns: None,
                    interface: None,
                    aliases: vec![],
                    service: None,
                }));
            }
        }
        Err(StoreError::Contended(key))
    }

    /// Finds endpoints by `NAME` (in whichever network holds it; refused when several do) or
    /// `NETWORK/NAME`.
    pub async fn resolve_endpoint(&self, what: &str) -> Result<(String, String)> {
        if let Some((net, name)) = what.split_once('/') {
            return Ok((net.to_string(), name.to_string()));
        }
        let (all, _) = self.endpoints(None).await?;
        let hits: Vec<&EndpointRecord> = all.iter().filter(|r| r.name == what).collect();
        match hits.as_slice() {
            [] => Err(StoreError::UnknownEndpoint(what.to_string())),
            [one] => Ok((one.network.clone(), one.name.clone())),
            many => {
                let nets: Vec<&str> = many.iter().map(|r| r.network.as_str()).collect();
                Err(StoreError::Invalid(format!("endpoint {what:?} exists in networks {}: say NETWORK/{what}", nets.join(", "))))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_urls() {
        assert_eq!(parse_url("etcd://127.0.0.1:2379").expect("one"), vec!["127.0.0.1:2379"]);
        assert_eq!(parse_url("etcd://a:1,b:2/").expect("two"), vec!["a:1", "b:2"]);
        for bad in ["http://a:1", "etcd://a", "etcd://:1", "etcd://a:0", "etcd://a:99999", "etcd://a:1,"] {
            let e = parse_url(bad).expect_err(bad).to_string();
            assert!(e.contains("is not a store address: expected etcd://HOST:PORT"), "{e}");
        }
    }

    #[test]
    fn transient_errors() {
        let io = etcd_client::Error::IoError(std::io::Error::from(std::io::ErrorKind::ConnectionRefused));
        assert!(transient(&io), "a refused connection passes when another member answers");
        assert!(!transient(&etcd_client::Error::InvalidArgs("x".into())), "a bad request fails the same way again");
        assert!(!transient(&etcd_client::Error::WatchError("x".into())));
    }

    #[test]
    fn pool_and_gateway() {
        let n = |s: &str| s.parse::<Ipv4Net>().expect("cidr");
        assert_eq!(first_free_subnet(&[]), Some(n("10.0.0.0/24")));
        assert_eq!(first_free_subnet(&[n("10.0.0.0/24"), n("10.0.2.0/24")]), Some(n("10.0.1.0/24")));
        assert_eq!(first_free_subnet(&[n("10.0.0.0/22")]), Some(n("10.0.4.0/24")), "a wider subnet covers several");
        assert_eq!(first_free_subnet(&[n("10.0.0.0/8")]), None);
        assert_eq!(gateway_of(n("10.0.3.0/24")), Ipv4Addr::new(10, 0, 3, 1));
    }
}
