//! The agent's resolver: what containers ask their gateway on port 53 (UDP and TCP). Overlay
//! names are answered from the [`NameView`]; every other question is relayed to the node's
//! upstream resolvers (a truncated UDP answer is fetched again over TCP; no answer within
//! [`FORWARD_DEADLINE`] gives SERVFAIL). The gateways' addresses sit on the node's link
//! [`DNS_LINK`], so the node's stack delivers the questions here; the egress program passes
//! only DNS to a gateway address.
use std::{
    collections::HashMap,
    net::{Ipv4Addr, SocketAddr},
    sync::{Arc, RwLock},
    time::Duration,
};

use hickory_proto::op::{Message, MessageType, OpCode, ResponseCode};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream, UdpSocket},
    task::JoinHandle,
};
use tracing::{debug, warn};

use super::names::{Answer, NameView};
use crate::model::Cluster;

/// The node's link holding every gateway address (as /32), where the resolver listens: a bridge
/// without ports, which only holds addresses.
pub const DNS_LINK: &str = "ovdns0";
/// How long one upstream gets over UDP.
pub const UPSTREAM_TIMEOUT: Duration = Duration::from_millis(1500);
/// Everything a forwarded question may take before the container gets SERVFAIL.
pub const FORWARD_DEADLINE: Duration = Duration::from_secs(4);

/// The upstream resolvers of a node: `--dns-upstream`, else its /etc/resolv.conf.
pub fn upstreams_from_resolv_conf(text: &str) -> Vec<SocketAddr> {
    text.lines()
        .filter_map(|l| l.trim().strip_prefix("nameserver"))
        .filter_map(|a| a.trim().parse::<Ipv4Addr>().ok())
        .filter(|a| !a.is_loopback())
        .map(|a| SocketAddr::from((a, 53)))
        .collect()
}

/// Where the resolver reads the cluster when it builds its view: the reconcile loop's desired
/// state, read when needed rather than held, so that the source can change it in place (a copy
/// held here would make every change copy the whole cluster).
pub type ClusterSource = Box<dyn Fn() -> Option<Arc<Cluster>> + Send + Sync>;

struct Shared {
    /// The view of the names, once a question needed it: built on the first question after a
    /// change, not on every change (at 10,000 endpoints a build costs milliseconds, and most
    /// questions never reach the agent).
    view: RwLock<Option<Arc<NameView>>>,
    cluster: ClusterSource,
    upstreams: Vec<SocketAddr>,
}

impl Shared {
    fn view(&self) -> Arc<NameView> {
        if let Some(v) = &*self.view.read().unwrap_or_else(|e| e.into_inner()) {
            return v.clone();
        }
        let mut g = self.view.write().unwrap_or_else(|e| e.into_inner());
        g.get_or_insert_with(|| {
            let empty = || Arc::new(Cluster { vxlan_port: 0, nodes: vec![], networks: vec![], endpoints: Default::default(), services: vec![] });
            Arc::new(NameView::build(&(self.cluster)().unwrap_or_else(empty)))
        })
        .clone()
    }
}

/// Listeners on every gateway address, sharing one view of the names.
pub struct Resolver {
    shared: Arc<Shared>,
    listeners: HashMap<Ipv4Addr, Vec<JoinHandle<()>>>,
}

impl Drop for Resolver {
    fn drop(&mut self) {
        for h in self.listeners.values().flatten() {
            h.abort();
        }
    }
}

impl Resolver {
    pub fn new(upstreams: Vec<SocketAddr>, cluster: ClusterSource) -> Self {
        Resolver { shared: Arc::new(Shared { view: RwLock::new(None), cluster, upstreams }), listeners: HashMap::new() }
    }

    /// Forgets the view of the names (the cluster changed: the next question builds it from
    /// the new one) and listens on exactly `gateways` (their addresses must be local already).
    /// Returns the gateways it could not listen on, with why.
    pub async fn update(&mut self, gateways: &[Ipv4Addr]) -> Vec<String> {
        *self.shared.view.write().unwrap_or_else(|e| e.into_inner()) = None;
        self.listeners.retain(|gw, tasks| {
            let keep = gateways.contains(gw);
            if !keep {
                tasks.iter().for_each(JoinHandle::abort);
            }
            keep
        });
        let mut errors = Vec::new();
        for gw in gateways.iter().filter(|g| !self.listeners.contains_key(g)).copied().collect::<Vec<_>>() {
            match listen(gw, self.shared.clone()).await {
                Ok(tasks) => {
                    self.listeners.insert(gw, tasks);
                }
                Err(e) => errors.push(format!("resolver on {gw}:53: {e}")),
            }
        }
        errors
    }
}

async fn listen(gw: Ipv4Addr, shared: Arc<Shared>) -> std::io::Result<Vec<JoinHandle<()>>> {
    let udp = Arc::new(UdpSocket::bind((gw, 53)).await?);
    let tcp = TcpListener::bind((gw, 53)).await?;
    let s = shared.clone();
    let u = tokio::spawn(async move {
        let mut buf = vec![0u8; 4096];
        loop {
            let Ok((n, from)) = udp.recv_from(&mut buf).await else { continue };
            let (q, udp, s) = (buf[..n].to_vec(), udp.clone(), s.clone());
            tokio::spawn(async move {
                let SocketAddr::V4(from4) = from else { return };
                if let Some(reply) = handle(&q, *from4.ip(), gw, &s).await {
                    let _ = udp.send_to(&reply, from).await;
                }
            });
        }
    });
    let t = tokio::spawn(async move {
        loop {
            let Ok((stream, from)) = tcp.accept().await else { continue };
            let s = shared.clone();
            tokio::spawn(async move {
                let SocketAddr::V4(from4) = from else { return };
                let _ = tokio::time::timeout(Duration::from_secs(10), serve_tcp(stream, *from4.ip(), gw, &s)).await;
            });
        }
    });
    Ok(vec![u, t])
}

async fn serve_tcp(mut stream: TcpStream, asker: Ipv4Addr, gw: Ipv4Addr, s: &Shared) -> std::io::Result<()> {
    loop {
        let len = match stream.read_u16().await {
            Ok(l) => l as usize,
            Err(_) => return Ok(()),
        };
        let mut q = vec![0u8; len];
        stream.read_exact(&mut q).await?;
        if let Some(reply) = handle(&q, asker, gw, s).await {
            stream.write_u16(reply.len() as u16).await?;
            stream.write_all(&reply).await?;
        }
    }
}

/// The reply to one question (`None`: dropped, as for an unparsable header).
async fn handle(q: &[u8], asker: Ipv4Addr, gw: Ipv4Addr, s: &Shared) -> Option<Vec<u8>> {
    match decide(q, asker, gw, || s.view(), rand_u64()) {
        Decision::Drop => None,
        Decision::Reply(r) => Some(r),
        Decision::Forward(query) => match forward(q, &s.upstreams).await {
            Some(r) => Some(r),
            None => servfail(&query),
        },
    }
}

/// What to do with one question, decided from its bytes alone (no I/O).
#[derive(Debug)]
pub enum Decision {
    /// No reply (a response, or a header too short to answer).
    Drop,
    /// Send these bytes back.
    Reply(Vec<u8>),
    /// Not an overlay name: relay the question upstream ([`servfail`] if none answers).
    Forward(Message),
}

/// Reads one question from a datagram (or a TCP frame) and answers it from the names of `view`
/// (built only when the question is a parsable query), sent by `asker` to `gw`. `shuffle` picks
/// the order of several addresses. This is every step that reads the asker's bytes.
pub fn decide(q: &[u8], asker: Ipv4Addr, gw: Ipv4Addr, view: impl FnOnce() -> Arc<NameView>, shuffle: u64) -> Decision {
    let query = match Message::from_vec(q) {
        Ok(m) => m,
        Err(e) => {
            debug!(%asker, "malformed DNS query: {e}");
            return form_err(q).map_or(Decision::Drop, Decision::Reply);
        }
    };
    if query.metadata.message_type != MessageType::Query {
        return Decision::Drop;
    }
    match view().answer(&query, asker, gw, shuffle) {
        Answer::Local(m) => m.to_vec().map_or(Decision::Drop, Decision::Reply),
        Answer::Forward => Decision::Forward(query),
    }
}

/// SERVFAIL for a forwarded question no upstream answered.
pub fn servfail(query: &Message) -> Option<Vec<u8>> {
    let mut m = Message::response(query.metadata.id, query.metadata.op_code);
    m.metadata.recursion_desired = query.metadata.recursion_desired;
    m.metadata.recursion_available = true;
    m.metadata.response_code = ResponseCode::ServFail;
    m.add_queries(query.queries.clone());
    m.to_vec().ok()
}

/// FORMERR for a query whose header (id) can at least be read.
fn form_err(q: &[u8]) -> Option<Vec<u8>> {
    let id = u16::from_be_bytes([*q.first()?, *q.get(1)?]);
    if q.len() < 12 || q[2] & 0x80 != 0 {
        return None;
    }
    let mut m = Message::response(id, OpCode::Query);
    m.metadata.response_code = ResponseCode::FormErr;
    m.to_vec().ok()
}

fn rand_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0));
    h.finish()
}

/// Relays `q` to the upstreams in turn; a truncated answer is fetched again over TCP. `None`
/// when none answered within [`FORWARD_DEADLINE`].
async fn forward(q: &[u8], upstreams: &[SocketAddr]) -> Option<Vec<u8>> {
    tokio::time::timeout(FORWARD_DEADLINE, async {
        for up in upstreams {
            match ask_udp(q, *up).await {
                Ok(r) if r.len() > 2 && r[2] & 0x02 != 0 => match ask_tcp(q, *up).await {
                    Ok(full) => return Some(full),
                    Err(e) => warn!(upstream = %up, "truncated answer, and over TCP: {e}"),
                },
                Ok(r) => return Some(r),
                Err(e) => debug!(upstream = %up, "upstream did not answer: {e}"),
            }
        }
        None
    })
    .await
    .ok()
    .flatten()
}

async fn ask_udp(q: &[u8], up: SocketAddr) -> std::io::Result<Vec<u8>> {
    let sock = UdpSocket::bind(("0.0.0.0", 0)).await?;
    sock.send_to(q, up).await?;
    let mut buf = vec![0u8; 4096];
    let deadline = tokio::time::Instant::now() + UPSTREAM_TIMEOUT;
    loop {
        let (n, from) = tokio::time::timeout_at(deadline, sock.recv_from(&mut buf)).await.map_err(|_| std::io::ErrorKind::TimedOut)??;
        // Only the upstream's answer to this question counts.
        if from == up && n >= 2 && buf[..2] == q[..2] {
            return Ok(buf[..n].to_vec());
        }
    }
}

async fn ask_tcp(q: &[u8], up: SocketAddr) -> std::io::Result<Vec<u8>> {
    tokio::time::timeout(UPSTREAM_TIMEOUT, async {
        let mut s = TcpStream::connect(up).await?;
        s.write_u16(q.len() as u16).await?;
        s.write_all(q).await?;
        let n = s.read_u16().await? as usize;
        let mut r = vec![0u8; n];
        s.read_exact(&mut r).await?;
        Ok(r)
    })
    .await
    .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upstreams_come_from_resolv_conf_without_loopback_stubs() {
        let t = "# comment\nnameserver 10.9.9.9\nnameserver 127.0.0.53\nsearch x\nnameserver 192.0.2.1\n";
        assert_eq!(upstreams_from_resolv_conf(t), vec!["10.9.9.9:53".parse().expect("addr"), "192.0.2.1:53".parse().expect("addr")]);
    }

    #[test]
    fn form_err_keeps_the_id_and_drops_responses() {
        let r = form_err(&[0x12, 0x34, 0x01, 0, 0, 1, 0, 0, 0, 0, 0, 0]).expect("a FORMERR");
        assert_eq!(&r[..2], &[0x12, 0x34]);
        assert_eq!(r[3] & 0x0f, 1, "RCODE 1");
        assert_eq!(form_err(&[0x12, 0x34, 0x81, 0, 0, 1, 0, 0, 0, 0, 0, 0]), None, "a response is not answered");
        assert_eq!(form_err(&[0x12]), None);
    }
}
