//! `overlay agent --metrics ADDR:PORT`: `/metrics` in the Prometheus text format.
//!
//! Two kinds of figures. What the datapath counts (per-VNI traffic, verdicts by reason and hook,
//! per-task service counters, table fill) is read from the node's pinned maps at each scrape, as
//! `overlay stats` reads them: counters the kernel keeps need no copy here, and they survive an
//! agent restart as the maps do. What the agent knows about itself (reconcile durations, the
//! store session, endpoints by state) is recorded as it happens in [`agent`].
//! docs/metrics.md says what each metric means.
use std::{net::SocketAddr, path::PathBuf, sync::LazyLock, time::Duration};

use prometheus::{
    Encoder as _, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
    proto::MetricFamily,
};

use crate::dataplane::{Dataplane, DataplaneError};

/// What the agent records about itself (one agent per process).
pub struct AgentMetrics {
    registry: Registry,
    reconcile: Histogram,
    endpoints: IntGaugeVec,
    store_connected: IntGauge,
    store_revision: IntGauge,
    store_lost: IntCounter,
}

/// The process's agent metrics, made on first use.
pub fn agent() -> &'static AgentMetrics {
    static M: LazyLock<AgentMetrics> = LazyLock::new(AgentMetrics::new);
    &M
}

impl AgentMetrics {
    fn new() -> Self {
        let registry = Registry::new();
        // From 100 us (one endpoint's change) to 10 s (a full sync of a large cluster).
        let buckets = vec![0.0001, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];
        let reconcile = Histogram::with_opts(
            HistogramOpts::new("overlay_reconcile_duration_seconds", "Time one reconcile took: plan, wiring, map writes").buckets(buckets),
        )
        .expect("valid histogram");
        let endpoints = IntGaugeVec::new(
            Opts::new("overlay_endpoints", "This node's endpoints by state: wired (in the datapath) or waiting (no namespace yet, or wiring failed and is retried)"),
            &["state"],
        )
        .expect("valid gauge");
        let store_connected = IntGauge::new("overlay_store_connected", "1 while the agent has a session with the etcd store, 0 while it is reconnecting (the datapath keeps its last state)").expect("valid gauge");
        let store_revision = IntGauge::new("overlay_store_watch_revision", "The last etcd revision the agent's watch has applied").expect("valid gauge");
        let store_lost = IntCounter::new("overlay_store_sessions_lost_total", "Sessions with the etcd store that ended (member down, leader lost, network)").expect("valid counter");
        for c in [Box::new(reconcile.clone()) as Box<dyn prometheus::core::Collector>, Box::new(endpoints.clone()), Box::new(store_connected.clone()), Box::new(store_revision.clone()), Box::new(store_lost.clone())] {
            registry.register(c).expect("metric names are unique");
        }
        AgentMetrics { registry, reconcile, endpoints, store_connected, store_revision, store_lost }
    }

    /// One reconcile ended: how long it took, and this node's endpoints by state.
    pub fn reconciled(&self, took: Duration, wired: usize, waiting: usize) {
        self.reconcile.observe(took.as_secs_f64());
        self.endpoints.with_label_values(&["wired"]).set(wired as i64);
        self.endpoints.with_label_values(&["waiting"]).set(waiting as i64);
    }

    /// A session with the store began (`true`) or ended (`false`).
    pub fn store_session(&self, connected: bool) {
        if !connected && self.store_connected.get() == 1 {
            self.store_lost.inc();
        }
        self.store_connected.set(connected as i64);
    }

    /// The watch applied everything up to `revision`.
    pub fn store_revision(&self, revision: i64) {
        self.store_revision.set(revision);
    }
}

#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error("--metrics {addr}: cannot listen there: {source}")]
    Bind { addr: SocketAddr, source: std::io::Error },
    #[error(transparent)]
    Dataplane(#[from] DataplaneError),
    #[error("encoding the metrics: {0}")]
    Encode(#[from] prometheus::Error),
}

/// The datapath's figures, read from the pins of `pin_dir`.
fn datapath_families(pin_dir: &std::path::Path) -> Result<Vec<MetricFamily>, MetricsError> {
    let dp = Dataplane::open_pinned(pin_dir)?;
    let s = dp.stats()?;
    let r = Registry::new();
    let counter = |name: &str, help: &str, labels: &[&str]| -> Result<IntCounterVec, MetricsError> {
        let c = IntCounterVec::new(Opts::new(name, help), labels)?;
        r.register(Box::new(c.clone()))?;
        Ok(c)
    };
    let gauge = |name: &str, help: &str, labels: &[&str]| -> Result<IntGaugeVec, MetricsError> {
        let g = IntGaugeVec::new(Opts::new(name, help), labels)?;
        r.register(Box::new(g.clone()))?;
        Ok(g)
    };
    let rx_p = counter("overlay_vni_rx_packets_total", "Frames delivered into this node's endpoints of the VNI", &["vni"])?;
    let rx_b = counter("overlay_vni_rx_bytes_total", "Bytes (inner frames) delivered into this node's endpoints of the VNI", &["vni"])?;
    let tx_p = counter("overlay_vni_tx_packets_total", "Frames this node's endpoints of the VNI sent that the datapath forwarded", &["vni"])?;
    let tx_b = counter("overlay_vni_tx_bytes_total", "Bytes (inner frames) this node's endpoints of the VNI sent that the datapath forwarded", &["vni"])?;
    for (vni, c) in &s.vnis {
        let v = vni.to_string();
        rx_p.with_label_values(&[&v]).inc_by(c.rx.packets);
        rx_b.with_label_values(&[&v]).inc_by(c.rx.bytes);
        tx_p.with_label_values(&[&v]).inc_by(c.tx.packets);
        tx_b.with_label_values(&[&v]).inc_by(c.tx.bytes);
    }
    let drops = counter("overlay_drops_total", "Packets the datapath dropped, by reason and hook (egress: from a container; ingress: TC on the underlay; xdp: XDP on the underlay)", &["reason", "hook"])?;
    let drop_b = counter("overlay_drop_bytes_total", "Bytes of the packets the datapath dropped, by reason and hook", &["reason", "hook"])?;
    let fwds = counter("overlay_forwards_total", "Packets the datapath forwarded or passed on, by kind and hook", &["kind", "hook"])?;
    let fwd_b = counter("overlay_forward_bytes_total", "Bytes of the packets the datapath forwarded or passed on, by kind and hook", &["kind", "hook"])?;
    for (reason, dir, c) in &s.reasons {
        let (p, b) = if reason.is_drop() { (&drops, &drop_b) } else { (&fwds, &fwd_b) };
        p.with_label_values(&[reason.name(), dir.name()]).inc_by(c.packets);
        b.with_label_values(&[reason.name(), dir.name()]).inc_by(c.bytes);
    }
    let conns = counter("overlay_service_connections_total", "New connections (flows) the datapath balanced to the task", &["vni", "vip", "port", "protocol", "task"])?;
    let svc_p = counter("overlay_service_packets_total", "Packets of the service port the datapath sent to the task", &["vni", "vip", "port", "protocol", "task"])?;
    let svc_b = counter("overlay_service_bytes_total", "Bytes of the service port the datapath sent to the task", &["vni", "vip", "port", "protocol", "task"])?;
    for (k, c) in &s.services {
        let ip = |v: u32| std::net::Ipv4Addr::from(overlay_common::ip_from_map(v)).to_string();
        let labels = [k.vni.to_string(), ip(k.vip), u16::from_be(k.vip_port).to_string(), if k.proto == 17 { "udp" } else { "tcp" }.to_string(), ip(k.task)];
        let l: Vec<&str> = labels.iter().map(String::as_str).collect();
        conns.with_label_values(&l).inc_by(c.connections);
        svc_p.with_label_values(&l).inc_by(c.packets);
        svc_b.with_label_values(&l).inc_by(c.bytes);
    }
    let used = gauge("overlay_map_entries", "Entries in use in the datapath's table (owner: desired = written by the agent, datapath = written by the programs, counters)", &["map", "owner"])?;
    let max = gauge("overlay_map_max_entries", "Capacity of the datapath's table", &["map", "owner"])?;
    for f in dp.map_fill()? {
        let owner = f.owner.name();
        used.with_label_values(&[f.name, owner]).set(f.entries as i64);
        max.with_label_values(&[f.name, owner]).set(f.max_entries as i64);
    }
    Ok(r.gather())
}

/// One scrape: the datapath's figures and the agent's, in the text format.
pub fn render(pin_dir: &std::path::Path) -> Result<String, MetricsError> {
    let mut families = datapath_families(pin_dir)?;
    families.extend(agent().registry.gather());
    let mut out = Vec::new();
    TextEncoder::new().encode(&families, &mut out)?;
    Ok(String::from_utf8_lossy(&out).into_owned())
}

/// Binds `addr` (so that a taken or forbidden address fails the agent's start, not a later
/// scrape) and returns the server to run: `/metrics` for the node whose pins are in `pin_dir`.
pub async fn serve(addr: SocketAddr, pin_dir: PathBuf) -> Result<impl std::future::Future<Output = ()>, MetricsError> {
    use axum::{http::StatusCode, response::IntoResponse, routing::get};
    let listener = tokio::net::TcpListener::bind(addr).await.map_err(|source| MetricsError::Bind { addr, source })?;
    let app = axum::Router::new().route(
        "/metrics",
        get(move || {
            let dir = pin_dir.clone();
            async move {
                // Reading the maps is a few thousand syscalls: off the runtime's threads.
                match tokio::task::spawn_blocking(move || render(&dir)).await {
                    Ok(Ok(text)) => ([(axum::http::header::CONTENT_TYPE, TextEncoder::new().format_type().to_string())], text).into_response(),
                    Ok(Err(e)) => (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")).into_response(),
                    Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")).into_response(),
                }
            }
        }),
    );
    tracing::info!(%addr, "serving Prometheus metrics at /metrics");
    Ok(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::warn!("metrics server stopped: {e}");
        }
    })
}
