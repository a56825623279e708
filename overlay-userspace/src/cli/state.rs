//! Where the CLI finds cluster state: an etcd store (read and written) or a cluster file (read
//! only: it is edited by hand). Both are shown through the same records.
use std::path::PathBuf;

use anyhow::{Context as _, bail};
use clap::Args;

pub use crate::timefmt::rfc3339;
use crate::{
    model,
    source::store::{self, AliveRecord, EndpointRecord, NetworkRecord, NodeRecord, Store},
};

#[derive(Args, Debug, Clone)]
pub struct StateArgs {
    /// The etcd store: etcd://HOST:PORT[,HOST:PORT...].
    #[arg(long, env = "OVERLAY_STORE", conflicts_with = "cluster", global = true)]
    pub store: Option<String>,
    #[command(flatten)]
    pub creds: StoreCredentialArgs,
    /// A cluster file instead of a store (read only).
    #[arg(long, env = "OVERLAY_CLUSTER", global = true)]
    pub cluster: Option<PathBuf>,
}

/// How to prove ourselves to the store, and check it: the same flags for every component
/// (agent, CLI, Docker plugin; the CNI plugin takes them as config fields).
#[derive(Args, Debug, Clone, Default)]
pub struct StoreCredentialArgs {
    /// CA certificate (PEM) that signed etcd's server certificate: connects over TLS and checks
    /// the server against it (its subjectAltName must hold the address in --store).
    #[arg(long, env = "OVERLAY_STORE_CACERT", value_name = "FILE", global = true)]
    pub store_cacert: Option<PathBuf>,
    /// Client certificate (PEM) presented to etcd (etcd's --client-cert-auth); needs --store-key.
    #[arg(long, env = "OVERLAY_STORE_CERT", value_name = "FILE", global = true)]
    pub store_cert: Option<PathBuf>,
    /// Private key (PEM) of --store-cert.
    #[arg(long, env = "OVERLAY_STORE_KEY", value_name = "FILE", global = true)]
    pub store_key: Option<PathBuf>,
    /// etcd user, for etcd's own authentication (`etcdctl auth enable`); needs
    /// --store-password-file.
    #[arg(long, env = "OVERLAY_STORE_USER", value_name = "NAME", global = true)]
    pub store_user: Option<String>,
    /// File whose first line is the etcd user's password (never given on the command line).
    #[arg(long, env = "OVERLAY_STORE_PASSWORD_FILE", value_name = "FILE", global = true)]
    pub store_password_file: Option<PathBuf>,
}

impl StoreCredentialArgs {
    pub fn access(&self, url: &str) -> store::StoreAccess {
        store::StoreAccess::new(
            url,
            store::Credentials {
                cacert: self.store_cacert.clone(),
                cert: self.store_cert.clone(),
                key: self.store_key.clone(),
                user: self.store_user.clone(),
                password_file: self.store_password_file.clone(),
            },
        )
    }
}

/// Cluster state opened for the CLI.
pub enum State {
    /// Boxed: the etcd client is large, and this is built once per command.
    Store(Box<Store>),
    File(PathBuf, model::Cluster),
}

impl StateArgs {
    pub async fn open(&self) -> anyhow::Result<State> {
        match (&self.store, &self.cluster) {
            (Some(url), _) => Ok(State::Store(Box::new(Store::open(&self.creds.access(url)).await?))),
            (None, Some(path)) => Ok(State::File(path.clone(), crate::source::file::load(path)?)),
            (None, None) => bail!("no cluster state given: pass --store etcd://HOST:PORT (or set OVERLAY_STORE), or --cluster FILE"),
        }
    }
}

impl State {
    /// The store, for commands that change state.
    pub fn writable(&self, what: &str) -> anyhow::Result<&Store> {
        match self {
            State::Store(s) => Ok(s),
            State::File(p, _) => bail!("{what} needs a store (--store etcd://...): the cluster file {} is edited by hand (see docs/config.md)", p.display()),
        }
    }

    pub async fn networks(&self) -> anyhow::Result<Vec<NetworkRecord>> {
        match self {
            State::Store(s) => {
                let (ok, bad, _) = s.networks().await?;
                warn_malformed(&bad);
                Ok(ok)
            }
            State::File(_, c) => Ok(c
                .networks
                .iter()
                .map(|n| NetworkRecord {
                    name: n.name.clone(),
                    vni: n.vni,
                    subnet: n.subnet.to_string(),
                    gateway: n.gateway.to_string(),
                    mtu: n.mtu,
                    attachable: true,
                    internal: n.internal,
                    created: 0,
                })
                .collect()),
        }
    }

    pub async fn network(&self, name: &str) -> anyhow::Result<NetworkRecord> {
        self.networks().await?.into_iter().find(|n| n.name == name).ok_or_else(|| store::StoreError::UnknownNetwork(name.to_string()).into())
    }

    /// Services, oldest first.
    pub async fn services(&self) -> anyhow::Result<Vec<store::ServiceRecord>> {
        match self {
            State::Store(s) => {
                let (ok, bad) = s.services().await?;
                warn_malformed(&bad);
                Ok(ok.into_iter().map(|(r, _)| r).collect())
            }
            State::File(_, c) => Ok(c.services.iter().map(|s| store::ServiceRecord::of(s, 0)).collect()),
        }
    }

    pub async fn endpoints(&self, network: Option<&str>) -> anyhow::Result<Vec<EndpointRecord>> {
        match self {
            State::Store(s) => {
                let (ok, bad) = s.endpoints(network).await?;
                warn_malformed(&bad);
                Ok(ok)
            }
            State::File(_, c) => Ok(c
                .endpoints
                .iter()
                .filter(|e| network.is_none_or(|n| n == e.network))
                .map(|e| EndpointRecord {
                    name: e.name.clone(),
                    network: e.network.clone(),
                    node: e.node.clone(),
                    ip: e.ip.to_string(),
                    mac: e.mac.to_string(),
                    netns: e.netns.clone(),
                    interface: e.interface.clone(),
                    aliases: e.aliases.clone(),
                    service: e.service.clone(),
                })
                .collect()),
        }
    }

    /// Nodes and, for a store, whether each is live (a file says nothing about liveness).
    pub async fn nodes(&self) -> anyhow::Result<Vec<(NodeRecord, Liveness)>> {
        match self {
            State::Store(s) => {
                let (ok, bad) = s.nodes().await?;
                warn_malformed(&bad);
                Ok(ok.into_iter().map(|(n, a)| (n, a.map_or(Liveness::Down, Liveness::Up))).collect())
            }
            State::File(_, c) => Ok(c
                .nodes
                .iter()
                .map(|n| (NodeRecord::of(n), Liveness::Unknown))
                .collect()),
        }
    }
}

pub enum Liveness {
    Up(AliveRecord),
    Down,
    /// From a cluster file.
    Unknown,
}

fn warn_malformed(bad: &[store::Malformed]) {
    for b in bad {
        eprintln!("warning: skipping malformed store entry {b}");
    }
}

/// Runs `remove` for each name, printing the ones removed; stops at once if the store is
/// unreachable, otherwise reports every refusal together at the end.
pub async fn remove_each<F, Fut, T>(names: &[String], remove: F) -> anyhow::Result<()>
where
    F: Fn(String) -> Fut,
    Fut: std::future::Future<Output = Result<T, store::StoreError>>,
{
    let mut failed = Vec::new();
    for name in names {
        match remove(name.clone()).await {
            Ok(_) => println!("{name}"),
            Err(e @ store::StoreError::Unreachable { .. }) => return Err(e.into()),
            Err(e) => failed.push(e.to_string()),
        }
    }
    if !failed.is_empty() {
        bail!("{}", failed.join("\n"));
    }
    Ok(())
}

/// Parses an IPv4 flag value with the flag's name in the error.
pub fn parse_ip(flag: &str, v: &str) -> anyhow::Result<std::net::Ipv4Addr> {
    v.parse().with_context(|| format!("--{flag} {v:?} is not an IPv4 address"))
}
