//! The node's half of the way out: IPv4 forwarding on, and one nftables table, `ip overlay`,
//! that masquerades containers' packets leaving the overlay to the node's own address and lets
//! nothing from outside open a connection to a container. Set up through nft's JSON interface
//! (the `nftables` crate), as one atomic batch; never touches another table.
//!
//! ```text
//! table ip overlay {
//!   set egress  { type ipv4_addr; flags interval; elements = { subnets of non-internal networks } }
//!   set overlay { type ipv4_addr; flags interval; elements = { every overlay subnet } }
//!   chain postrouting { type nat hook postrouting priority srcnat; policy accept;
//!     ip saddr @egress ip daddr != @overlay meta l4proto { tcp, udp } counter masquerade to :32768-60999
//!     ip saddr @egress ip daddr != @overlay counter masquerade }
//!   chain forward { type filter hook forward priority filter; policy accept;
//!     iifname "ovl*" ip saddr @egress ip daddr != @overlay accept
//!     iifname "ovl*" counter drop
//!     oifname "ovl*" ct state established,related accept
//!     oifname "ovl*" counter drop }
//!   chain state { counter comment "overlay:ip_forward-was:N"        # what `overlay down` restores
//!                 counter comment "overlay:lo-accept_local-was:N" }
//! }
//! ```
//!
//! `net.ipv4.conf.lo.accept_local` is turned on too: a published port's replies to the node's
//! own connections enter through `lo` with the node's address as source, which the kernel takes
//! for a martian without it.
//!
//! Reconciled as a diff: an agent (re)started over an existing table adopts it; set elements
//! are added and deleted one by one; only a table whose rules differ from this version's is
//! replaced, in one transaction (no packet sees a half-built table; conntrack's NAT mappings
//! survive it).
use std::{collections::BTreeSet, fs};

use ipnet::Ipv4Net;
use nftables::{helper, schema::Nftables};
use serde_json::{Value, json};

use crate::defaults::{EPHEMERAL_PORTS, HOST_VETH_PREFIX};

/// The table the agent owns, in family `ip`.
pub const TABLE: &str = "overlay";
const IP_FORWARD: &str = "/proc/sys/net/ipv4/ip_forward";
const STATE_TAG: &str = "overlay:ip_forward-was:";
const LO_ACCEPT_LOCAL: &str = "/proc/sys/net/ipv4/conf/lo/accept_local";
const LOCAL_TAG: &str = "overlay:lo-accept_local-was:";

#[derive(Debug, thiserror::Error)]
pub enum WayOutError {
    #[error("nft: {0}")]
    Nft(helper::NftablesError),
    #[error("nft refused the change to table ip {TABLE}: {0}")]
    Refused(String),
    #[error("the batch for table ip {TABLE} does not fit nftables' schema: {0}")]
    Schema(serde_json::Error),
    #[error("nft's listing of table ip {TABLE} is not JSON: {0}")]
    Listing(serde_json::Error),
    #[error("{IP_FORWARD}: {0}")]
    Forwarding(std::io::Error),
    #[error("{0}: {1}")]
    Sysctl(&'static str, std::io::Error),
}

type Result<T> = std::result::Result<T, WayOutError>;

impl From<helper::NftablesError> for WayOutError {
    fn from(e: helper::NftablesError) -> Self {
        match e {
            helper::NftablesError::NftFailed { stderr, .. } => WayOutError::Refused(stderr.trim().to_string()),
            other => WayOutError::Nft(other),
        }
    }
}

/// What the node's way out serves.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Desired {
    /// Sources it masquerades: subnets of networks that are not internal.
    pub egress: Vec<Ipv4Net>,
    /// Destinations it never serves: every overlay subnet.
    pub overlay: Vec<Ipv4Net>,
    /// The VXLAN port: masqueraded flows never use it as their source port, or their replies
    /// would look like overlay traffic to the ingress program.
    pub vxlan_port: u16,
}

/// Source ports masqueraded TCP and UDP flows get: the kernel's default local port range,
/// unless the VXLAN port falls inside it.
pub fn nat_ports(vxlan_port: u16) -> (u16, u16) {
    let (lo, hi) = EPHEMERAL_PORTS;
    match vxlan_port {
        p if (lo..=hi).contains(&p) && p - lo >= hi - p => (lo, p - 1),
        p if (lo..=hi).contains(&p) => (p + 1, hi),
        _ => (lo, hi),
    }
}

/// What is in the kernel now.
#[derive(Debug, Default, PartialEq, Eq)]
struct Current {
    egress: BTreeSet<String>,
    overlay: BTreeSet<String>,
    /// Rule comments, in order (the state rule apart).
    rules: Vec<String>,
    /// `net.ipv4.ip_forward` before the agent turned it on.
    forward_was: Option<String>,
    /// `net.ipv4.conf.lo.accept_local` before the agent turned it on.
    local_was: Option<String>,
}

/// What one apply did.
#[derive(Debug, Default, PartialEq, Eq)]
pub enum Change {
    #[default]
    Nothing,
    /// Set elements added or deleted.
    Elements { added: usize, removed: usize },
    /// The table was created or replaced.
    Table,
}

fn set_key(n: &Ipv4Net) -> String {
    n.trunc().to_string()
}

fn elem(n: &Ipv4Net) -> Value {
    json!({"prefix": {"addr": n.network().to_string(), "len": n.prefix_len()}})
}

fn ifname_prefix() -> String {
    format!("{HOST_VETH_PREFIX}*")
}

/// The rules of this version, by chain, each tagged by its comment.
fn rules(d: &Desired) -> Vec<(&'static str, String, Value)> {
    let (lo, hi) = nat_ports(d.vxlan_port);
    let saddr = json!({"payload": {"protocol": "ip", "field": "saddr"}});
    let daddr = json!({"payload": {"protocol": "ip", "field": "daddr"}});
    let from_overlay = json!({"match": {"op": "==", "left": {"meta": {"key": "iifname"}}, "right": ifname_prefix()}});
    let to_overlay = json!({"match": {"op": "==", "left": {"meta": {"key": "oifname"}}, "right": ifname_prefix()}});
    let src_egress = json!({"match": {"op": "==", "left": saddr, "right": "@egress"}});
    let dst_outside = json!({"match": {"op": "!=", "left": daddr, "right": "@overlay"}});
    let tcp_udp = json!({"match": {"op": "==", "left": {"meta": {"key": "l4proto"}}, "right": {"set": ["tcp", "udp"]}}});
    vec![
        (
            "postrouting",
            format!("overlay:masquerade-ports-{lo}-{hi}:v1"),
            json!([src_egress, dst_outside, tcp_udp, {"counter": null}, {"masquerade": {"port": {"range": [lo, hi]}}}]),
        ),
        ("postrouting", "overlay:masquerade:v1".into(), json!([src_egress, dst_outside, {"counter": null}, {"masquerade": null}])),
        ("forward", "overlay:out:v1".into(), json!([from_overlay, src_egress, dst_outside, {"accept": null}])),
        ("forward", "overlay:out-other:v1".into(), json!([from_overlay, {"counter": null}, {"drop": null}])),
        (
            "forward",
            "overlay:in-reply:v1".into(),
            json!([to_overlay, {"match": {"op": "in", "left": {"ct": {"key": "state"}}, "right": ["established", "related"]}}, {"accept": null}]),
        ),
        ("forward", "overlay:in-new:v1".into(), json!([to_overlay, {"counter": null}, {"drop": null}])),
    ]
}

fn run(cmds: Vec<Value>) -> Result<()> {
    let batch: Nftables = serde_json::from_value(json!({ "nftables": cmds })).map_err(WayOutError::Schema)?;
    helper::apply_ruleset(&batch)?;
    Ok(())
}

/// Reads table `ip overlay`, or `None` when there is none.
fn current() -> Result<Option<Current>> {
    let raw = match helper::get_current_ruleset_raw(helper::DEFAULT_NFT, ["list", "table", "ip", TABLE]) {
        Ok(raw) => raw,
        // nft fails when the table does not exist; anything else shows up at the next write.
        Err(helper::NftablesError::NftFailed { .. }) => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    let v: Value = serde_json::from_str(&raw).map_err(WayOutError::Listing)?;
    let mut c = Current::default();
    for o in v["nftables"].as_array().into_iter().flatten() {
        if let Some(s) = o.get("set") {
            let elems: BTreeSet<String> = s["elem"].as_array().into_iter().flatten().filter_map(elem_key).collect();
            match s["name"].as_str() {
                Some("egress") => c.egress = elems,
                Some("overlay") => c.overlay = elems,
                _ => {}
            }
        } else if let Some(r) = o.get("rule") {
            let comment = r["comment"].as_str().unwrap_or("").to_string();
            if let Some(was) = comment.strip_prefix(STATE_TAG) {
                c.forward_was = Some(was.to_string());
            } else if let Some(was) = comment.strip_prefix(LOCAL_TAG) {
                c.local_was = Some(was.to_string());
            } else {
                c.rules.push(format!("{}/{comment}", r["chain"].as_str().unwrap_or("")));
            }
        }
    }
    Ok(Some(c))
}

/// A set element of nft's listing as `a.b.c.d/len`.
fn elem_key(e: &Value) -> Option<String> {
    if let Some(p) = e.get("prefix") {
        let n: Ipv4Net = format!("{}/{}", p["addr"].as_str()?, p["len"].as_u64()?).parse().ok()?;
        return Some(set_key(&n));
    }
    let ip: std::net::Ipv4Addr = e.as_str()?.parse().ok()?;
    Some(format!("{ip}/32"))
}

fn wanted_rules(d: &Desired) -> Vec<String> {
    rules(d).iter().map(|(chain, tag, _)| format!("{chain}/{tag}")).collect()
}

fn table() -> Value {
    json!({"family": "ip", "name": TABLE})
}

fn set(name: &str, elems: &[Ipv4Net]) -> Value {
    let mut s = json!({"family": "ip", "table": TABLE, "name": name, "type": "ipv4_addr", "flags": ["interval"]});
    if !elems.is_empty() {
        s["elem"] = Value::Array(elems.iter().map(elem).collect());
    }
    s
}

/// The whole table, built afresh (after deleting an old one in the same batch).
fn build(d: &Desired, forward_was: &str, local_was: &str, exists: bool) -> Vec<Value> {
    let mut cmds = Vec::new();
    if exists {
        cmds.push(json!({"delete": {"table": table()}}));
    }
    cmds.push(json!({"add": {"table": table()}}));
    cmds.push(json!({"add": {"set": set("egress", &d.egress)}}));
    cmds.push(json!({"add": {"set": set("overlay", &d.overlay)}}));
    cmds.push(json!({"add": {"chain": {"family": "ip", "table": TABLE, "name": "postrouting", "type": "nat", "hook": "postrouting", "prio": 100, "policy": "accept"}}}));
    cmds.push(json!({"add": {"chain": {"family": "ip", "table": TABLE, "name": "forward", "type": "filter", "hook": "forward", "prio": 0, "policy": "accept"}}}));
    cmds.push(json!({"add": {"chain": {"family": "ip", "table": TABLE, "name": "state"}}}));
    for (chain, tag, expr) in rules(d) {
        cmds.push(json!({"add": {"rule": {"family": "ip", "table": TABLE, "chain": chain, "comment": tag, "expr": expr}}}));
    }
    for tag in [format!("{STATE_TAG}{forward_was}"), format!("{LOCAL_TAG}{local_was}")] {
        cmds.push(json!({"add": {"rule": {"family": "ip", "table": TABLE, "chain": "state", "comment": tag, "expr": [{"counter": null}]}}}));
    }
    cmds
}

/// Elements to add and delete so that set `name` holds `want`.
fn element_diff(name: &str, have: &BTreeSet<String>, want: &[Ipv4Net], cmds: &mut Vec<Value>) -> (usize, usize) {
    let want_keys: BTreeSet<String> = want.iter().map(set_key).collect();
    let add: Vec<Value> = want.iter().filter(|n| !have.contains(&set_key(n))).map(elem).collect();
    let del: Vec<Value> = have
        .iter()
        .filter(|k| !want_keys.contains(*k))
        .filter_map(|k| k.parse::<Ipv4Net>().ok())
        .map(|n| elem(&n))
        .collect();
    let (a, r) = (add.len(), del.len());
    if !del.is_empty() {
        cmds.push(json!({"delete": {"element": {"family": "ip", "table": TABLE, "name": name, "elem": del}}}));
    }
    if !add.is_empty() {
        cmds.push(json!({"add": {"element": {"family": "ip", "table": TABLE, "name": name, "elem": add}}}));
    }
    (a, r)
}

fn read_forwarding() -> Result<String> {
    Ok(fs::read_to_string(IP_FORWARD).map_err(WayOutError::Forwarding)?.trim().to_string())
}

fn read_accept_local() -> Result<String> {
    Ok(fs::read_to_string(LO_ACCEPT_LOCAL).map_err(|e| WayOutError::Sysctl(LO_ACCEPT_LOCAL, e))?.trim().to_string())
}

/// Makes the node's way out match `d`: forwarding on, the table as this version builds it, its
/// sets holding `d`'s subnets. Writes only what differs.
pub fn apply(d: &Desired) -> Result<Change> {
    let cur = current()?;
    let forward_now = read_forwarding()?;
    let local_now = read_accept_local()?;
    let change = match &cur {
        Some(c) if c.rules == wanted_rules(d) && c.forward_was.is_some() && c.local_was.is_some() => {
            let mut cmds = Vec::new();
            let (a1, r1) = element_diff("egress", &c.egress, &d.egress, &mut cmds);
            let (a2, r2) = element_diff("overlay", &c.overlay, &d.overlay, &mut cmds);
            if cmds.is_empty() {
                Change::Nothing
            } else {
                run(cmds)?;
                Change::Elements { added: a1 + a2, removed: r1 + r2 }
            }
        }
        other => {
            // Created, or replaced when its rules are not this version's. What forwarding was
            // before the first agent stays recorded across replacements.
            let was = other.as_ref().and_then(|c| c.forward_was.clone()).unwrap_or_else(|| forward_now.clone());
            let local_was = other.as_ref().and_then(|c| c.local_was.clone()).unwrap_or_else(|| local_now.clone());
            run(build(d, &was, &local_was, other.is_some()))?;
            Change::Table
        }
    };
    if forward_now != "1" {
        fs::write(IP_FORWARD, "1").map_err(WayOutError::Forwarding)?;
    }
    if local_now != "1" {
        fs::write(LO_ACCEPT_LOCAL, "1").map_err(|e| WayOutError::Sysctl(LO_ACCEPT_LOCAL, e))?;
    }
    Ok(change)
}

/// Removes table `ip overlay` and puts `net.ipv4.ip_forward` and lo's `accept_local` back as
/// they were before the agent. Returns whether there was a table.
pub fn remove() -> Result<bool> {
    let Some(c) = current()? else { return Ok(false) };
    run(vec![json!({"delete": {"table": table()}})])?;
    if let Some(was) = c.forward_was.filter(|w| w != "1") {
        fs::write(IP_FORWARD, &was).map_err(WayOutError::Forwarding)?;
    }
    if let Some(was) = c.local_was.filter(|w| w != "1") {
        fs::write(LO_ACCEPT_LOCAL, &was).map_err(|e| WayOutError::Sysctl(LO_ACCEPT_LOCAL, e))?;
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_batch_fits_nftables_schema() {
        let d = Desired {
            egress: vec!["10.0.1.0/24".parse().expect("net")],
            overlay: vec!["10.0.1.0/24".parse().expect("net"), "10.0.2.0/24".parse().expect("net")],
            vxlan_port: 4789,
        };
        let batch: Nftables = serde_json::from_value(json!({"nftables": build(&d, "0", "0", true)})).expect("schema");
        assert_eq!(batch.objects.len(), 15, "delete, table, 2 sets, 3 chains, 6 rules, 2 state rules (ip_forward, lo accept_local)");
        let mut cmds = Vec::new();
        let have: BTreeSet<String> = ["10.0.1.0/24".to_string(), "10.0.9.0/24".to_string()].into();
        assert_eq!(element_diff("overlay", &have, &d.overlay, &mut cmds), (1, 1), "one added, one deleted");
        let _: Nftables = serde_json::from_value(json!({"nftables": cmds})).expect("schema");
        assert_eq!(elem_key(&json!({"prefix": {"addr": "10.0.2.0", "len": 24}})).as_deref(), Some("10.0.2.0/24"));
    }

    #[test]
    fn masqueraded_source_ports_never_take_the_vxlan_port() {
        assert_eq!(nat_ports(4789), (32768, 60999));
        for port in [32768, 40000, 50000, 60999, 1, 65535] {
            let (lo, hi) = nat_ports(port);
            assert!(lo < hi && !(lo..=hi).contains(&port) && hi - lo > 10_000, "port {port}: {lo}-{hi}");
        }
    }
}
