//! The CNI plugin (spec 1.0.0): `ADD`, `DEL`, `CHECK`, `VERSION`.
//!
//! ADD publishes the container's namespace as an endpoint of the configured overlay network
//! (the address from the store's IPAM, or from a delegated IPAM plugin such as `host-local`) and
//! returns once this node's agent has wired it: the agent creates the veth pair, moves one end
//! into the namespace as `eth0`, configures it and programs the maps, exactly as for an endpoint
//! added from the CLI. DEL withdraws it (idempotent). CHECK verifies the endpoint, the address
//! in the namespace and the datapath entry.
use std::{
    collections::HashMap,
    io::Write as _,
    net::Ipv4Addr,
    path::PathBuf,
    process::{Command, Stdio},
    time::Duration,
};

use serde::Deserialize;
use serde_json::{Value, json};

use crate::{
    control::attach::{attach, this_node, wait_wired},
    model::Mac,
    dataplane::node_pin_dir,
    host::netlink::Netlink,
    source::store::{Credentials, EndpointSpec, Store, StoreAccess, StoreError},
};

pub const CNI_VERSION: &str = "1.0.0";
const SUPPORTED: &[&str] = &["0.4.0", "1.0.0"];
/// How long ADD waits for the agent to wire the namespace.
const WIRE_TIMEOUT: Duration = Duration::from_secs(10);

/// A CNI error: the spec's code and message (and details), printed as its error JSON.
#[derive(Debug)]
pub struct CniError {
    pub code: u32,
    pub msg: String,
    pub details: String,
}

impl CniError {
    fn new(code: u32, msg: impl Into<String>, details: impl std::fmt::Display) -> Self {
        CniError { code, msg: msg.into(), details: details.to_string() }
    }

    pub fn to_json(&self, version: &str) -> String {
        json!({"cniVersion": version, "code": self.code, "msg": self.msg, "details": self.details}).to_string()
    }
}

/// Spec error codes.
pub mod code {
    pub const INCOMPATIBLE_VERSION: u32 = 1;
    pub const CONTAINER_UNKNOWN: u32 = 3;
    pub const INVALID_ENV: u32 = 4;
    pub const IO: u32 = 5;
    pub const DECODE: u32 = 6;
    pub const INVALID_CONFIG: u32 = 7;
    pub const TRY_AGAIN_LATER: u32 = 11;
    /// Plugin-specific (100+): the overlay refused the request (network, address, name).
    pub const REFUSED: u32 = 100;
    /// Plugin-specific: CHECK found the attachment not as ADD left it.
    pub const CHECK_FAILED: u32 = 101;
}

/// Our network configuration (the spec's fields plus ours).
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NetConf {
    pub cni_version: String,
    pub name: String,
    #[serde(rename = "type")]
    pub kind: String,
    /// The overlay network [default: `name`].
    #[serde(default)]
    pub network: Option<String>,
    /// etcd://HOST:PORT[,HOST:PORT...].
    pub store: String,
    /// The store's credentials: `storeCACert`, `storeCert`, `storeKey`, `storeUser`,
    /// `storePasswordFile` (the `--store-*` flags' files).
    #[serde(flatten)]
    pub store_creds: Credentials,
    /// This node's name [default: the registered node whose VTEP is an address here].
    #[serde(default)]
    pub node: Option<String>,
    /// Pin root of the agents [default: <bpffs>/overlay].
    #[serde(default)]
    pub pin_root: Option<PathBuf>,
    /// Delegated IPAM (e.g. `{"type": "host-local", ...}`); without it the store allocates.
    #[serde(default)]
    pub ipam: Option<Value>,
    #[serde(default)]
    pub prev_result: Option<Value>,
}

/// The CNI_* environment of one invocation.
#[derive(Debug, Clone)]
pub struct Env {
    pub command: String,
    pub container_id: String,
    pub netns: String,
    pub ifname: String,
    pub path: String,
}

impl Env {
    pub fn from_env(vars: &HashMap<String, String>) -> Result<Env, CniError> {
        let get = |k: &str| vars.get(k).cloned().unwrap_or_default();
        let env = Env { command: get("CNI_COMMAND"), container_id: get("CNI_CONTAINERID"), netns: get("CNI_NETNS"), ifname: get("CNI_IFNAME"), path: get("CNI_PATH") };
        if env.command.is_empty() {
            return Err(CniError::new(code::INVALID_ENV, "CNI_COMMAND is not set", "expected ADD, DEL, CHECK or VERSION"));
        }
        Ok(env)
    }

    fn require(&self, what: &str, value: &str) -> Result<(), CniError> {
        if value.is_empty() {
            return Err(CniError::new(code::INVALID_ENV, format!("{what} is not set"), format!("required for {}", self.command)));
        }
        Ok(())
    }

    /// The endpoint name of this attachment: stable for (container, interface).
    pub fn endpoint_name(&self) -> String {
        let id: String = self.container_id.chars().filter(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_' || *c == '.').collect();
        format!("cni-{id}-{}", self.ifname)
    }
}

/// The network configuration on stdin, decoded and checked, and the credential files it names
/// read.
fn parse_conf(stdin: &[u8]) -> Result<NetConf, CniError> {
    let conf = decode_conf(stdin)?;
    conf.store_access().check().map_err(|e| CniError::new(code::INVALID_CONFIG, "invalid store credentials", e))?;
    Ok(conf)
}

/// The network configuration on stdin, decoded and checked without reading any file (the
/// runtime's bytes, the part of [`parse_conf`] a fuzz target can call).
pub fn decode_conf(stdin: &[u8]) -> Result<NetConf, CniError> {
    let v: Value = serde_json::from_slice(stdin).map_err(|e| CniError::new(code::DECODE, "network configuration is not valid JSON", e))?;
    let conf: NetConf = serde_json::from_value(v).map_err(|e| CniError::new(code::INVALID_CONFIG, "invalid network configuration", e))?;
    if !SUPPORTED.contains(&conf.cni_version.as_str()) {
        return Err(CniError::new(code::INCOMPATIBLE_VERSION, format!("CNI version {} is not supported", conf.cni_version), format!("supported: {}", SUPPORTED.join(", "))));
    }
    crate::source::store::parse_url(&conf.store).map_err(|e| CniError::new(code::INVALID_CONFIG, "invalid \"store\"", e))?;
    Ok(conf)
}

impl NetConf {
    /// The store and the credentials of the config's store* fields.
    pub fn store_access(&self) -> StoreAccess {
        StoreAccess::new(&self.store, self.store_creds.clone())
    }
}

fn store_err(e: StoreError) -> CniError {
    match e {
        StoreError::Unreachable { .. } => CniError::new(code::TRY_AGAIN_LATER, "the overlay store is unreachable", e),
        other => CniError::new(code::REFUSED, other.to_string(), ""),
    }
}

fn refused(e: anyhow::Error) -> CniError {
    match e.downcast::<StoreError>() {
        Ok(s) => store_err(s),
        Err(e) => CniError::new(code::REFUSED, format!("{e:#}"), ""),
    }
}

/// Runs the delegated IPAM plugin (`ipam.type` from CNI_PATH) with the same configuration.
fn delegate_ipam(env: &Env, conf_bytes: &[u8], ipam: &Value, command: &str) -> Result<Option<Value>, CniError> {
    let kind = ipam.get("type").and_then(Value::as_str).ok_or_else(|| CniError::new(code::INVALID_CONFIG, "ipam has no \"type\"", ""))?;
    let bin = env
        .path
        .split(':')
        .map(|d| PathBuf::from(d).join(kind))
        .find(|p| p.is_file())
        .ok_or_else(|| CniError::new(code::INVALID_CONFIG, format!("IPAM plugin {kind:?} not found in CNI_PATH"), &env.path))?;
    let mut child = Command::new(&bin)
        .env("CNI_COMMAND", command)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| CniError::new(code::IO, format!("running {}", bin.display()), e))?;
    child.stdin.take().expect("piped").write_all(conf_bytes).map_err(|e| CniError::new(code::IO, "writing to the IPAM plugin", e))?;
    let out = child.wait_with_output().map_err(|e| CniError::new(code::IO, "waiting for the IPAM plugin", e))?;
    ipam_output(kind, out.status.success(), &out.stdout, &out.stderr)
}

/// What a delegated IPAM plugin printed: its result (`None`: nothing, as DEL and CHECK print),
/// or, when it failed, its own error passed on.
pub fn ipam_output(kind: &str, success: bool, stdout: &[u8], stderr: &[u8]) -> Result<Option<Value>, CniError> {
    if !success {
        let v: Value = serde_json::from_slice(stdout).unwrap_or(json!({}));
        return Err(CniError::new(
            v.get("code").and_then(Value::as_u64).and_then(|c| u32::try_from(c).ok()).unwrap_or(code::REFUSED),
            format!("IPAM plugin {kind}: {}", v.get("msg").and_then(Value::as_str).unwrap_or("failed")),
            String::from_utf8_lossy(stderr),
        ));
    }
    if stdout.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    serde_json::from_slice(stdout).map(Some).map_err(|e| CniError::new(code::DECODE, format!("IPAM plugin {kind} returned invalid JSON"), e))
}

/// The address an IPAM result gives the container (its first `ips` entry).
pub fn ipam_address(result: &Value) -> Result<Ipv4Addr, CniError> {
    let addr = result["ips"][0]["address"].as_str().ok_or_else(|| CniError::new(code::REFUSED, "the IPAM plugin returned no address", result.to_string()))?;
    addr.split('/').next().unwrap_or("").parse().map_err(|_| CniError::new(code::REFUSED, format!("the IPAM plugin returned {addr:?}, not an IPv4 address"), ""))
}

/// Runs one invocation; returns what to print on success.
pub async fn run(env: &Env, stdin: &[u8]) -> Result<String, CniError> {
    if env.command == "VERSION" {
        return Ok(json!({"cniVersion": CNI_VERSION, "supportedVersions": SUPPORTED}).to_string());
    }
    let conf = parse_conf(stdin)?;
    if conf.kind != "overlay" {
        return Err(CniError::new(code::INVALID_CONFIG, format!("\"type\" is {:?}, this plugin is \"overlay\"", conf.kind), ""));
    }
    env.require("CNI_CONTAINERID", &env.container_id)?;
    env.require("CNI_IFNAME", &env.ifname)?;
    let network = conf.network.clone().unwrap_or_else(|| conf.name.clone());
    let name = env.endpoint_name();
    match env.command.as_str() {
        "ADD" => {
            env.require("CNI_NETNS", &env.netns)?;
            if !crate::model::valid_ifname(&env.ifname) || env.ifname == "lo" {
                return Err(CniError::new(code::INVALID_ENV, format!("CNI_IFNAME {:?} is not an interface name", env.ifname), ""));
            }
            if !crate::model::valid_netns(&env.netns) || !std::path::Path::new(&env.netns).exists() {
                return Err(CniError::new(code::CONTAINER_UNKNOWN, format!("network namespace {} does not exist", env.netns), ""));
            }
            let store = Store::open(&conf.store_access()).await.map_err(store_err)?;
            let (net, _) = store.network(&network).await.map_err(store_err)?;
            let node = match &conf.node {
                Some(n) => n.clone(),
                None => this_node(&store).await.map_err(refused)?,
            };
            // An ADD that crashed half-way left its endpoint behind: start again from nothing.
            match store.endpoint_rm(&network, &name).await {
                Ok(_) | Err(StoreError::UnknownEndpoint(_)) => {}
                Err(e) => return Err(store_err(e)),
            }
            let ip = match &conf.ipam {
                None => None,
                Some(ipam) => {
                    let r = delegate_ipam(env, stdin, ipam, "ADD")?.ok_or_else(|| CniError::new(code::REFUSED, "the IPAM plugin returned no result", ""))?;
                    Some(ipam_address(&r)?)
                }
            };
            let spec = EndpointSpec {
                name: name.clone(),
                network: network.clone(),
                node,
                netns: Some(env.netns.clone()),
                ip,
                interface: Some(env.ifname.clone()),
                aliases: vec![],
                service: None,
            };
            let r = match attach(&store, &spec, conf.pin_root.as_deref(), Some(WIRE_TIMEOUT)).await {
                Ok(r) => r,
                Err(e) => {
                    if let Some(ipam) = &conf.ipam {
                        let _ = delegate_ipam(env, stdin, ipam, "DEL");
                    }
                    return Err(refused(e));
                }
            };
            let prefix = net.subnet.split('/').nth(1).unwrap_or("32");
            let host_if = crate::control::desired::host_ifname(&r.network, &r.name);
            // The way out: a default route via the network's gateway, unless it is internal.
            // The agent installs it on the first non-internal network's interface.
            let routes = if net.internal { json!([]) } else { json!([{"dst": "0.0.0.0/0", "gw": net.gateway}]) };
            let result = json!({
                "cniVersion": conf.cni_version,
                "interfaces": [
                    {"name": host_if},
                    {"name": env.ifname, "mac": r.mac, "sandbox": env.netns},
                ],
                "ips": [{"address": format!("{}/{prefix}", r.ip), "gateway": net.gateway, "interface": 1}],
                "routes": routes,
                // The container's resolver: its network's gateway, answered by the node.
                "dns": {"nameservers": [net.gateway]},
            });
            Ok(result.to_string())
        }
        "DEL" => {
            // Idempotent: nothing to remove is success, and the store being away is worth a retry.
            let store = Store::open(&conf.store_access()).await.map_err(store_err)?;
            match store.endpoint_rm(&network, &name).await {
                Ok(_) | Err(StoreError::UnknownEndpoint(_)) => {}
                Err(e) => return Err(store_err(e)),
            }
            if let Some(ipam) = &conf.ipam {
                delegate_ipam(env, stdin, ipam, "DEL")?;
            }
            Ok(String::new())
        }
        "CHECK" => {
            env.require("CNI_NETNS", &env.netns)?;
            let store = Store::open(&conf.store_access()).await.map_err(store_err)?;
            let (eps, _) = store.endpoints(Some(&network)).await.map_err(store_err)?;
            let fail = |m: String| CniError::new(code::CHECK_FAILED, m, "");
            let ep = eps.into_iter().find(|e| e.name == name).ok_or_else(|| fail(format!("no endpoint {name} in network {network}")))?;
            if ep.netns.as_deref() != Some(env.netns.as_str()) {
                return Err(fail(format!("endpoint {name} is attached to {:?}, not {}", ep.netns, env.netns)));
            }
            let ip: Ipv4Addr = ep.ip.parse().map_err(|_| fail(format!("endpoint {name} has no valid address")))?;
            let (net, _) = store.network(&network).await.map_err(store_err)?;
            let pin_dir = node_pin_dir(conf.pin_root.as_deref(), &ep.node).map_err(|e| fail(e.to_string()))?;
            wait_wired(&pin_dir, net.vni, Mac::from_ip(ip), Duration::ZERO).await.map_err(|e| fail(format!("endpoint {name}: {e}")))?;
            let inside = Netlink::in_netns(std::path::Path::new(&env.netns)).map_err(|e| fail(e.to_string()))?;
            let ifname = &env.ifname;
            let link = inside.link(ifname).await.map_err(|e| fail(e.to_string()))?.ok_or_else(|| fail(format!("no {ifname} in {}", env.netns)))?;
            if !inside.has_address(link.index, ip).await.map_err(|e| fail(e.to_string()))? {
                return Err(fail(format!("{ifname} in {} does not hold {ip}", env.netns)));
            }
            if let Some(ipam) = &conf.ipam {
                delegate_ipam(env, stdin, ipam, "CHECK")?;
            }
            Ok(String::new())
        }
        other => Err(CniError::new(code::INVALID_ENV, format!("unknown CNI_COMMAND {other:?}"), "expected ADD, DEL, CHECK or VERSION")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(cmd: &str) -> Env {
        Env { command: cmd.into(), container_id: "abc123".into(), netns: "/run/netns/x".into(), ifname: "eth0".into(), path: String::new() }
    }

    #[tokio::test]
    async fn version_and_config_errors_use_the_spec_codes() {
        let v: Value = serde_json::from_str(&run(&env("VERSION"), b"").await.expect("version")).expect("json");
        assert_eq!(v["supportedVersions"], json!(["0.4.0", "1.0.0"]));
        let e = run(&env("ADD"), b"{not json").await.expect_err("bad JSON");
        assert_eq!(e.code, code::DECODE);
        let e = run(&env("ADD"), br#"{"cniVersion":"1.0.0","name":"n","type":"overlay"}"#).await.expect_err("no store");
        assert_eq!((e.code, e.msg.as_str()), (code::INVALID_CONFIG, "invalid network configuration"));
        assert!(e.details.contains("missing field `store`"), "{e:?}");
        let e = run(&env("ADD"), br#"{"cniVersion":"0.3.1","name":"n","type":"overlay","store":"etcd://a:1"}"#).await.expect_err("old version");
        assert_eq!(e.code, code::INCOMPATIBLE_VERSION);
        let e = run(&env("ADD"), br#"{"cniVersion":"1.0.0","name":"n","type":"overlay","store":"http://a"}"#).await.expect_err("bad store");
        assert_eq!(e.code, code::INVALID_CONFIG);
        let mut no_id = env("ADD");
        no_id.container_id.clear();
        let e = run(&no_id, br#"{"cniVersion":"1.0.0","name":"n","type":"overlay","store":"etcd://a:1"}"#).await.expect_err("no id");
        assert_eq!((e.code, e.msg.as_str()), (code::INVALID_ENV, "CNI_CONTAINERID is not set"));
        let j: Value = serde_json::from_str(&e.to_json("1.0.0")).expect("error JSON");
        assert_eq!(j["code"], 4);
        assert_eq!(env("ADD").endpoint_name(), "cni-abc123-eth0");
    }
}
