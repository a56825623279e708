//! The Docker network plugin: libnetwork's remote driver protocol (as Docker 20.10 speaks it)
//! over a unix socket in `/run/docker/plugins/`, backed by the etcd store.
//!
//! Docker's default IPAM chooses subnets and addresses; the plugin publishes them in the store
//! (so every other node, the CLI and the CNI plugin see them). At `Join` the plugin creates the
//! endpoint's veth pair under the agent's names and hands the container end to Docker, which
//! moves it into the container as `eth0` and configures it; the node's agent then finds it there
//! and programs the datapath, as for any endpoint.
use std::{net::Ipv4Addr, path::PathBuf, sync::Arc};

use axum::{Router, body::Bytes, extract::State, http::header, response::IntoResponse, routing::post};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tracing::{info, warn};

use crate::{
    model::Mac,
    defaults::OVERLAY_OVERHEAD,
    control::desired::{host_ifname, peer_ifname},
    host::netlink::Netlink,
    source::store::{EndpointSpec, NetworkSpec, Store, StoreError, records::PREFIX},
};

/// Where a Docker network's store network is recorded: `{"network": NAME, "owned": BOOL}`.
fn mapping_key(network_id: &str) -> String {
    format!("{PREFIX}docker/networks/{network_id}")
}

#[derive(Serialize, Deserialize)]
struct Mapping {
    network: String,
    /// Created for this Docker network (removed with it), not adopted with `-o network=NAME`.
    owned: bool,
}

/// The store endpoint of a Docker endpoint.
pub fn endpoint_name(endpoint_id: &str) -> String {
    format!("dk-{}", head(endpoint_id, 20))
}

/// The first `n` characters of an ID (Docker's are hex; a byte slice would panic inside any
/// other character).
fn head(id: &str, n: usize) -> &str {
    id.char_indices().nth(n).map_or(id, |(i, _)| &id[..i])
}

pub struct Plugin {
    pub store: Store,
    pub node: String,
    /// The scope reported to Docker: "local" (each daemon keeps its own network objects; the
    /// overlay's state is shared through etcd anyway) or "global" (swarm managers only: Docker
    /// 20.10 outside swarm refuses to create global-scope networks, "This node is not a swarm
    /// manager"). Connectivity scope is always global.
    pub scope: String,
}

type Shared = Arc<Plugin>;

/// A refusal, sent to Docker as `{"Err": ...}`.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct DriverError(pub String);

impl From<StoreError> for DriverError {
    fn from(e: StoreError) -> Self {
        DriverError(e.to_string())
    }
}

type Reply = Result<Value, DriverError>;

fn field<'a>(req: &'a Value, name: &str) -> Result<&'a str, DriverError> {
    req.get(name).and_then(Value::as_str).ok_or_else(|| DriverError(format!("request has no {name}")))
}

/// `-o key=value` options of `docker network create`.
fn generic_option<'a>(req: &'a Value, key: &str) -> Option<&'a str> {
    req.get("Options")?.get("com.docker.network.generic")?.get(key)?.as_str()
}

/// One call of the protocol as read from Docker's request body: everything the plugin takes from
/// those bytes, checked before the store is asked anything.
#[derive(Debug)]
pub enum Request {
    Activate,
    GetCapabilities,
    CreateNetwork(CreateNetwork),
    DeleteNetwork { network_id: String },
    CreateEndpoint(CreateEndpoint),
    DeleteEndpoint { network_id: String, endpoint: String },
    EndpointOperInfo,
    Join { network_id: String, endpoint: String, sandbox: String },
    Leave { network_id: String, endpoint: String },
    /// Calls acknowledged with `{}` (discovery, external connectivity, swarm allocation).
    Acknowledge,
}

/// `CreateNetwork`: the IPv4 pool Docker's IPAM chose and the `-o` options.
#[derive(Debug)]
pub struct CreateNetwork {
    pub network_id: String,
    pub pool: String,
    pub gateway: Option<Ipv4Addr>,
    pub vni: Option<u32>,
    pub mtu: Option<u32>,
    pub internal: bool,
    /// The overlay network: `-o network=NAME` (adopted), else `docker-<id prefix>` (created).
    pub name: String,
    pub adopt: bool,
}

/// `CreateEndpoint`: the address Docker's IPAM chose, and the MAC if the user gave one.
#[derive(Debug)]
pub struct CreateEndpoint {
    pub network_id: String,
    /// The store endpoint ([`endpoint_name`]).
    pub endpoint: String,
    pub ip: Option<Ipv4Addr>,
    /// Empty: Docker takes the MAC from the reply.
    pub mac: String,
}

impl Request {
    /// Reads the body of a call to `method` (libnetwork's path without the slash). A body that
    /// is not JSON reads as `{}`, as libnetwork sends no body for some calls.
    pub fn parse(method: &str, body: &[u8]) -> Result<Request, DriverError> {
        let req: Value = if body.is_empty() { json!({}) } else { serde_json::from_slice(body).unwrap_or(json!({})) };
        tracing::debug!(method, request = %req, "call");
        let req = &req;
        Ok(match method {
            "Plugin.Activate" => Request::Activate,
            "NetworkDriver.GetCapabilities" => Request::GetCapabilities,
            "NetworkDriver.CreateNetwork" => Request::CreateNetwork(CreateNetwork::parse(req)?),
            "NetworkDriver.DeleteNetwork" => Request::DeleteNetwork { network_id: field(req, "NetworkID")?.to_string() },
            "NetworkDriver.CreateEndpoint" => Request::CreateEndpoint(CreateEndpoint::parse(req)?),
            "NetworkDriver.DeleteEndpoint" => {
                let endpoint = endpoint_name(field(req, "EndpointID")?);
                Request::DeleteEndpoint { network_id: field(req, "NetworkID")?.to_string(), endpoint }
            }
            "NetworkDriver.EndpointOperInfo" => Request::EndpointOperInfo,
            "NetworkDriver.Join" => Request::Join {
                endpoint: endpoint_name(field(req, "EndpointID")?),
                sandbox: field(req, "SandboxKey")?.to_string(),
                network_id: field(req, "NetworkID")?.to_string(),
            },
            "NetworkDriver.Leave" => {
                let endpoint = endpoint_name(field(req, "EndpointID")?);
                Request::Leave { network_id: field(req, "NetworkID")?.to_string(), endpoint }
            }
            "NetworkDriver.DiscoverNew"
            | "NetworkDriver.DiscoverDelete"
            | "NetworkDriver.ProgramExternalConnectivity"
            | "NetworkDriver.RevokeExternalConnectivity"
            | "NetworkDriver.AllocateNetwork"
            | "NetworkDriver.FreeNetwork" => Request::Acknowledge,
            other => return Err(DriverError(format!("{other} is not implemented by the overlay plugin"))),
        })
    }
}

impl CreateNetwork {
    fn parse(req: &Value) -> Result<CreateNetwork, DriverError> {
        let id = field(req, "NetworkID")?;
        let v4 = req.get("IPv4Data").and_then(|d| d.get(0)).ok_or_else(|| DriverError("no IPv4 pool: the overlay needs an IPv4 subnet".into()))?;
        let pool = v4.get("Pool").and_then(Value::as_str).ok_or_else(|| DriverError("no IPv4 pool".into()))?;
        let gateway = v4
            .get("Gateway")
            .and_then(Value::as_str)
            .map(|g| g.split('/').next().unwrap_or(g).parse::<Ipv4Addr>().map_err(|_| DriverError(format!("gateway {g:?} is not IPv4"))))
            .transpose()?;
        let vni = generic_option(req, "vni").map(|v| v.parse::<u32>().map_err(|_| DriverError(format!("-o vni={v}: not a number")))).transpose()?;
        let mtu = generic_option(req, "mtu")
            .or_else(|| generic_option(req, "com.docker.network.driver.mtu"))
            .map(|v| v.parse::<u32>().map_err(|_| DriverError(format!("-o mtu={v}: not a number"))))
            .transpose()?;
        // `docker network create --internal` (libnetwork passes it as an option), or -o internal.
        let internal = req.get("Options").and_then(|o| o.get("com.docker.network.internal")).and_then(Value::as_bool).unwrap_or(false)
            || generic_option(req, "internal").is_some_and(|v| v == "true" || v == "1");
        let (name, adopt) = match generic_option(req, "network") {
            Some(n) => (n.to_string(), true),
            None => (format!("docker-{}", head(id, 12)), false),
        };
        Ok(CreateNetwork { network_id: id.to_string(), pool: pool.to_string(), gateway, vni, mtu, internal, name, adopt })
    }
}

impl CreateEndpoint {
    fn parse(req: &Value) -> Result<CreateEndpoint, DriverError> {
        let network_id = field(req, "NetworkID")?.to_string();
        let endpoint = endpoint_name(field(req, "EndpointID")?);
        let iface = req.get("Interface").unwrap_or(&Value::Null);
        let ip = match iface.get("Address").and_then(Value::as_str).filter(|a| !a.is_empty()) {
            Some(a) => Some(a.split('/').next().unwrap_or(a).parse::<Ipv4Addr>().map_err(|_| DriverError(format!("address {a:?} is not IPv4")))?),
            None => None,
        };
        let mac = iface.get("MacAddress").and_then(Value::as_str).unwrap_or("").to_string();
        Ok(CreateEndpoint { network_id, endpoint, ip, mac })
    }
}

impl Plugin {
    async fn mapping(&self, network_id: &str) -> Result<Mapping, DriverError> {
        let raw = self.store.get_raw(&mapping_key(network_id)).await?;
        let raw = raw.ok_or_else(|| DriverError(format!("network {network_id} is not an overlay network of this store (was it created with another plugin?)")))?;
        serde_json::from_slice(&raw).map_err(|e| DriverError(format!("{}: malformed: {e}", mapping_key(network_id))))
    }

    async fn create_network(&self, req: CreateNetwork) -> Reply {
        let CreateNetwork { network_id: id, pool, gateway, vni, mtu, internal, name, adopt } = req;
        let owned = match self.store.network(&name).await {
            Ok((existing, _)) if adopt => {
                if existing.subnet != pool {
                    return Err(DriverError(format!("overlay network {name} has subnet {}, not {pool}", existing.subnet)));
                }
                false
            }
            Ok(_) => return Err(DriverError(format!("overlay network {name} already exists"))),
            Err(StoreError::UnknownNetwork(_)) => {
                let spec = NetworkSpec { name: name.clone(), vni, subnet: Some(pool.clone()), gateway, mtu, attachable: true, internal };
                let r = self.store.network_create(&spec).await?;
                info!(network = %name, vni = r.vni, subnet = %r.subnet, docker_id = id, "created overlay network for Docker");
                true
            }
            Err(e) => return Err(e.into()),
        };
        let m = serde_json::to_vec(&Mapping { network: name, owned }).expect("serialises");
        self.store.put_raw(&mapping_key(&id), m).await?;
        Ok(json!({}))
    }

    async fn delete_network(&self, id: &str) -> Reply {
        let m = match self.mapping(id).await {
            Ok(m) => m,
            Err(_) => return Ok(json!({})),
        };
        if m.owned {
            match self.store.network_rm(&m.network).await {
                Ok(_) | Err(StoreError::UnknownNetwork(_)) => {}
                Err(e) => return Err(e.into()),
            }
        }
        self.store.delete_raw(&mapping_key(id)).await?;
        Ok(json!({}))
    }

    async fn create_endpoint(&self, req: CreateEndpoint) -> Reply {
        let m = self.mapping(&req.network_id).await?;
        let (name, ip) = (req.endpoint, req.ip);
        // The interface is named by Docker (DstPrefix eth: eth0, eth1, ... in the container).
        let spec = EndpointSpec { name: name.clone(), network: m.network.clone(), node: self.node.clone(), netns: None, ip, interface: None, aliases: vec![], service: None };
        let r = self.store.endpoint_add(&spec).await?;
        let given_mac = req.mac.as_str();
        if !given_mac.is_empty() && !given_mac.eq_ignore_ascii_case(&r.mac) {
            let _ = self.store.endpoint_rm(&m.network, &name).await;
            return Err(DriverError(format!("MAC address {given_mac} is not supported: the overlay derives it from the IP ({})", r.mac)));
        }
        info!(endpoint = %name, network = %m.network, ip = %r.ip, "endpoint created for Docker");
        // Docker takes the MAC from the reply when it did not choose one.
        let interface = if given_mac.is_empty() { json!({"MacAddress": r.mac}) } else { json!({}) };
        Ok(json!({"Interface": interface}))
    }

    async fn delete_endpoint(&self, network_id: &str, name: &str) -> Reply {
        let Ok(m) = self.mapping(network_id).await else { return Ok(json!({})) };
        match self.store.endpoint_rm(&m.network, name).await {
            Ok(_) | Err(StoreError::UnknownEndpoint(_)) => Ok(json!({})),
            Err(e) => Err(e.into()),
        }
    }

    /// The container MTU: the network's, else the underlay's minus the VXLAN overhead.
    async fn mtu(&self, network: &str) -> Result<u32, DriverError> {
        let (net, _) = self.store.network(network).await?;
        if let Some(m) = net.mtu {
            return Ok(m);
        }
        let (nodes, _) = self.store.nodes().await?;
        let vtep: Option<Ipv4Addr> = nodes.iter().find(|(n, _)| n.name == self.node).and_then(|(n, _)| n.vtep.parse().ok());
        let nl = Netlink::new().map_err(|e| DriverError(e.to_string()))?;
        let underlay = match vtep {
            Some(v) => nl.interface_with_address(v).await.map(|l| l.mtu).unwrap_or(1500),
            None => 1500,
        };
        Ok(underlay.saturating_sub(OVERLAY_OVERHEAD))
    }

    async fn join(&self, network_id: &str, name: String, sandbox: String) -> Reply {
        let m = self.mapping(network_id).await?;
        let (r, _) = self.store.endpoint(&m.network, &name).await?;
        let (net, _) = self.store.network(&m.network).await?;
        let mtu = self.mtu(&r.network).await?;
        let (host, peer) = (host_ifname(&r.network, &name), peer_ifname(&r.network, &name));
        let nl = Netlink::new().map_err(|e| DriverError(e.to_string()))?;
        for stale in [&host, &peer] {
            if let Some(l) = nl.link(stale).await.map_err(|e| DriverError(e.to_string()))? {
                nl.delete(l.index).await.map_err(|e| DriverError(e.to_string()))?;
            }
        }
        nl.create_veth(&host, &peer, mtu).await.map_err(|e| DriverError(format!("creating the veth pair: {e}")))?;
        let p = nl.link(&peer).await.map_err(|e| DriverError(e.to_string()))?.ok_or_else(|| DriverError(format!("{peer} vanished")))?;
        let mac: Mac = r.mac.parse().map_err(|_| DriverError(format!("endpoint {name} has MAC {:?}", r.mac)))?;
        nl.configure(p.index, &peer, Some(mac), mtu).await.map_err(|e| DriverError(e.to_string()))?;
        // The agent wires it once Docker has moved it into the sandbox.
        self.store.endpoint_set_netns(&r.network, &name, Some(&sandbox)).await?;
        info!(endpoint = %name, %sandbox, ifname = %peer, "joined");
        // The way out is the overlay's own gateway (answered by the datapath, masqueraded by the
        // node), on the container's interface: no docker_gwbridge. An internal network has none.
        let mut reply = json!({
            "InterfaceName": {"SrcName": peer, "DstPrefix": "eth"},
            "DisableGatewayService": true,
            "StaticRoutes": [],
        });
        if !net.internal {
            reply["Gateway"] = json!(net.gateway);
        }
        Ok(reply)
    }

    async fn leave(&self, network_id: &str, name: &str) -> Reply {
        let Ok(m) = self.mapping(network_id).await else { return Ok(json!({})) };
        match self.store.endpoint_set_netns(&m.network, name, None).await {
            Ok(_) | Err(StoreError::UnknownEndpoint(_)) => Ok(json!({})),
            Err(e) => Err(e.into()),
        }
    }

    /// Handles one call of the protocol by its path.
    pub async fn call(&self, method: &str, body: &[u8]) -> Value {
        let r = match Request::parse(method, body) {
            Err(e) => Err(e),
            Ok(Request::Activate) => Ok(json!({"Implements": ["NetworkDriver"]})),
            Ok(Request::GetCapabilities) => Ok(json!({"Scope": self.scope, "ConnectivityScope": "global"})),
            Ok(Request::CreateNetwork(r)) => self.create_network(r).await,
            Ok(Request::DeleteNetwork { network_id }) => self.delete_network(&network_id).await,
            Ok(Request::CreateEndpoint(r)) => self.create_endpoint(r).await,
            Ok(Request::DeleteEndpoint { network_id, endpoint }) => self.delete_endpoint(&network_id, &endpoint).await,
            Ok(Request::EndpointOperInfo) => Ok(json!({"Value": {}})),
            Ok(Request::Join { network_id, endpoint, sandbox }) => self.join(&network_id, endpoint, sandbox).await,
            Ok(Request::Leave { network_id, endpoint }) => self.leave(&network_id, &endpoint).await,
            Ok(Request::Acknowledge) => Ok(json!({})),
        };
        match r {
            Ok(v) => v,
            Err(DriverError(e)) => {
                warn!(method, "refused: {e}");
                json!({"Err": e})
            }
        }
    }
}

async fn handle(State(p): State<Shared>, uri: axum::http::Uri, body: Bytes) -> impl IntoResponse {
    let method = uri.path().trim_start_matches('/').to_string();
    let v = p.call(&method, &body).await;
    ([(header::CONTENT_TYPE, "application/vnd.docker.plugins.v1+json")], v.to_string())
}

/// Serves the protocol on `socket` until `stop` resolves; removes the socket afterwards.
pub async fn serve(plugin: Plugin, socket: PathBuf, stop: impl std::future::Future<Output = ()> + Send + 'static) -> std::io::Result<()> {
    if let Some(dir) = socket.parent() {
        std::fs::create_dir_all(dir)?;
    }
    match std::fs::remove_file(&socket) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let listener = tokio::net::UnixListener::bind(&socket)?;
    // Whoever can write to the socket attaches containers to any network: root (dockerd) only.
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o600))?;
    }
    info!(socket = %socket.display(), node = %plugin.node, "Docker network plugin listening");
    let app = Router::new().route("/{*method}", post(handle)).with_state(Arc::new(plugin));
    let r = axum::serve(listener, app).with_graceful_shutdown(stop).await;
    let _ = std::fs::remove_file(&socket);
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_cut_at_characters_not_bytes() {
        // Found by the docker_request fuzz target: a 2-byte character across byte 12 panicked.
        let body = r#"{"NetworkID": "3f2b07a6b\u02dc\u02d6e2f1a0b", "IPv4Data": [{"Pool": "172.18.0.0/16"}]}"#;
        let Ok(Request::CreateNetwork(r)) = Request::parse("NetworkDriver.CreateNetwork", body.as_bytes()) else {
            panic!("expected a CreateNetwork request")
        };
        assert_eq!(r.name, "docker-3f2b07a6b\u{2dc}\u{2d6}e", "the first 12 characters of the ID");
        let body = r#"{"NetworkID": "n", "EndpointID": "0123456789abcdef012\u00e9\u00e9", "SandboxKey": "/k"}"#;
        let Ok(Request::Join { endpoint, .. }) = Request::parse("NetworkDriver.Join", body.as_bytes()) else { panic!("expected a Join request") };
        assert_eq!(endpoint, "dk-0123456789abcdef012\u{e9}", "the first 20 characters of the ID");
        assert_eq!(endpoint_name("abc"), "dk-abc", "a short ID whole");
    }
}
