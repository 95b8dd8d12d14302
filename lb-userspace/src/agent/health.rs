//! The agent's health, the way kube-proxy reports it:
//!
//! - `/healthz` and `/livez` on `--health-addr` (semantics point 50): 200 while the datapath
//!   keeps up with the source, 503 before the first sync and once a change has been waiting
//!   longer than twice the sync period; `/healthz` is also 503 while this node is being deleted.
//! - Health-check node ports (point 49): for every `type: LoadBalancer` Service with
//!   `externalTrafficPolicy: Local`, `spec.healthCheckNodePort` answers any path on the node
//!   addresses with the number of ready endpoints on this node, so that cloud load balancers only
//!   send to nodes that have some.
//!
//! Both are served by [`super::http`], a minimal HTTP/1.1 responder (one request per connection).

use std::{
    collections::{BTreeMap, BTreeSet},
    io,
    net::{IpAddr, Ipv4Addr},
    path::PathBuf,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use super::http::{self, Handler, Response};
use crate::model::HealthChecks;

/// Default sync period: `/healthz` turns 503 when a change waits longer than twice this.
pub const DEFAULT_SYNC_PERIOD: Duration = Duration::from_secs(30);

// ---------------------------------------------------------------------------------------------
// Proxy health (point 50)
// ---------------------------------------------------------------------------------------------

/// kube-proxy's `ProxierHealthServer` state: when the datapath last matched the source, and
/// since when a change has been waiting.
#[derive(Debug)]
pub struct ProxyHealth {
    timeout: Duration,
    state: Mutex<HealthState>,
}

#[derive(Clone, Copy, Debug)]
struct HealthState {
    /// Last successful sync, or last confirmation that nothing needed changing.
    last_updated: Option<(Instant, SystemTime)>,
    /// The oldest change seen and not yet written to the maps.
    pending_since: Option<Instant>,
    /// This node is not being deleted.
    node_eligible: bool,
}

/// What `/healthz`, `/livez` and the health-check node ports report.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProxyStatus {
    /// The datapath is programmed and keeps up with the source.
    pub healthy: bool,
    pub last_updated: Option<SystemTime>,
    pub node_eligible: bool,
}

impl ProxyHealth {
    /// Health with a staleness limit of twice `sync_period` (kube-proxy's `healthTimeout`).
    pub fn new(sync_period: Duration) -> Self {
        Self {
            timeout: sync_period.saturating_mul(2),
            state: Mutex::new(HealthState { last_updated: None, pending_since: None, node_eligible: true }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HealthState> {
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A change was seen at `at` and is not in the maps yet (`QueuedUpdate`). An older pending
    /// change keeps its time.
    pub fn queued(&self, at: Instant) {
        let mut s = self.lock();
        s.pending_since.get_or_insert(at);
    }

    /// The maps hold everything the source had at `at` (`Updated`): after a successful sync,
    /// or when a poll found nothing to do.
    pub fn updated(&self, at: Instant, wall: SystemTime) {
        let mut s = self.lock();
        s.last_updated = Some((at, wall));
        s.pending_since = None;
    }

    /// `false` while this node's Node object is being deleted (`/healthz` only).
    pub fn set_node_eligible(&self, eligible: bool) {
        self.lock().node_eligible = eligible;
    }

    /// Healthy when the datapath was programmed at least once and either nothing is pending or
    /// the last update is no older than the timeout.
    pub fn status(&self, now: Instant) -> ProxyStatus {
        let s = *self.lock();
        let healthy = match (s.last_updated, s.pending_since) {
            (None, _) => false,
            (Some(_), None) => true,
            (Some((at, _)), Some(_)) => now.saturating_duration_since(at) <= self.timeout,
        };
        ProxyStatus { healthy, last_updated: s.last_updated.map(|(_, wall)| wall), node_eligible: s.node_eligible }
    }

    pub fn is_healthy(&self) -> bool {
        self.status(Instant::now()).healthy
    }
}

/// RFC 3339 in UTC with second precision; `None` is Go's zero time, as kube-proxy prints a
/// proxy that never synced.
pub fn rfc3339(t: Option<SystemTime>) -> String {
    let Some(t) = t else {
        return "0001-01-01T00:00:00Z".into();
    };
    let u = lb_common::utc_time(t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()));
    format!("{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z", u.year, u.month, u.day, u.hour, u.minute, u.second)
}

fn json_response(status: u16, body: String) -> Response {
    Response::new(status, "application/json", body).header("X-Content-Type-Options", "nosniff")
}

/// `/healthz`: 200 when healthy and the node is eligible, else 503.
pub fn healthz_response(status: &ProxyStatus, now: SystemTime) -> Response {
    let ok = status.healthy && status.node_eligible;
    json_response(
        if ok { 200 } else { 503 },
        format!(
            r#"{{"lastUpdated": "{}", "currentTime": "{}", "nodeEligible": {}}}"#,
            rfc3339(status.last_updated),
            rfc3339(Some(now)),
            status.node_eligible
        ),
    )
}

/// `/livez`: like `/healthz`, whatever the node's eligibility.
pub fn livez_response(status: &ProxyStatus, now: SystemTime) -> Response {
    json_response(
        if status.healthy { 200 } else { 503 },
        format!(r#"{{"lastUpdated": "{}", "currentTime": "{}"}}"#, rfc3339(status.last_updated), rfc3339(Some(now))),
    )
}

/// The `--health-addr` server: `/healthz`, `/livez`, 404 elsewhere.
pub fn health_handler(health: Arc<ProxyHealth>) -> Handler {
    http::handler(move |req| {
        let status = health.status(Instant::now());
        let now = SystemTime::now();
        let resp = match req.path.as_str() {
            "/healthz" => healthz_response(&status, now),
            "/livez" => livez_response(&status, now),
            _ => Response::not_found(),
        };
        std::future::ready(resp)
    })
}

// ---------------------------------------------------------------------------------------------
// Health-check node ports (point 49)
// ---------------------------------------------------------------------------------------------

/// A health-check node port's answer to any request.
pub fn health_check_response(namespace: &str, name: &str, local_ready: usize, proxy_healthy: bool) -> Response {
    // Field order as kube-proxy writes it; names JSON-escaped.
    let quote = |s: &str| serde_json::Value::from(s).to_string();
    let body = format!(
        r#"{{"service":{{"namespace":{},"name":{}}},"localEndpoints":{local_ready},"serviceProxyHealthy":{proxy_healthy}}}"#,
        quote(namespace),
        quote(name)
    );
    json_response(if local_ready > 0 && proxy_healthy { 200 } else { 503 }, body)
        .header("X-Load-Balancing-Endpoint-Weight", local_ready.to_string())
}

/// How long a failed bind waits before it is tried again.
const BIND_RETRY: Duration = Duration::from_secs(10);

/// The listeners of every health-check node port, reconciled with the compiled
/// [`HealthChecks`] after each sync.
pub struct HealthCheckServers {
    netns: Option<PathBuf>,
    proxy: Arc<ProxyHealth>,
    served: BTreeMap<(String, String), Served>,
}

struct Served {
    node_port: u16,
    local_ready: Arc<AtomicUsize>,
    listeners: BTreeMap<IpAddr, JoinHandle<()>>,
    /// Addresses whose bind failed, and when.
    failed: BTreeMap<IpAddr, Instant>,
}

impl HealthCheckServers {
    /// Listeners are bound inside `netns` when given (the node's namespace), and served from
    /// the agent's runtime.
    pub fn new(netns: Option<PathBuf>, proxy: Arc<ProxyHealth>) -> Self {
        Self { netns, proxy, served: BTreeMap::new() }
    }

    /// `(service, port, address)` of every listener currently bound.
    pub fn listening(&self) -> Vec<((String, String), u16, IpAddr)> {
        self.served.iter().flat_map(|(k, s)| s.listeners.keys().map(move |a| (k.clone(), s.node_port, *a))).collect()
    }

    /// Starts, updates and stops listeners so that every entry of `wanted` is served on every
    /// address of `node_addresses` (all addresses when there are none), and nothing else.
    /// Failed binds are logged and retried on a later call.
    pub async fn reconcile(&mut self, wanted: &HealthChecks, node_addresses: &[IpAddr]) {
        let mut addrs: BTreeSet<IpAddr> = node_addresses.iter().copied().collect();
        if addrs.is_empty() {
            addrs.insert(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
        }
        // Stop what is no longer wanted, or wanted on another port.
        let gone: Vec<_> = self
            .served
            .iter()
            .filter(|(k, s)| wanted.get(*k).is_none_or(|hc| hc.node_port != s.node_port))
            .map(|(k, _)| k.clone())
            .collect();
        for key in gone {
            if let Some(s) = self.served.remove(&key) {
                info!(service = %format_args!("{}/{}", key.0, key.1), port = s.node_port, "health-check node port stopped");
                for (_, task) in s.listeners {
                    stop(task).await;
                }
            }
        }
        // Update counts, drop listeners on addresses the node no longer has, find what to bind.
        let now = Instant::now();
        let mut to_bind: Vec<((String, String), u16, IpAddr)> = Vec::new();
        for (key, hc) in wanted {
            let s = self.served.entry(key.clone()).or_insert_with(|| Served {
                node_port: hc.node_port,
                local_ready: Arc::new(AtomicUsize::new(hc.local_ready)),
                listeners: BTreeMap::new(),
                failed: BTreeMap::new(),
            });
            s.local_ready.store(hc.local_ready, Ordering::Relaxed);
            let stale: Vec<IpAddr> = s.listeners.keys().filter(|a| !addrs.contains(a)).copied().collect();
            for a in stale {
                if let Some(task) = s.listeners.remove(&a) {
                    stop(task).await;
                }
            }
            s.failed.retain(|a, _| addrs.contains(a));
            for a in &addrs {
                let due = s.failed.get(a).is_none_or(|t| now.duration_since(*t) >= BIND_RETRY);
                if !s.listeners.contains_key(a) && due {
                    to_bind.push((key.clone(), hc.node_port, *a));
                }
            }
        }
        if to_bind.is_empty() {
            return;
        }
        // One trip into the namespace for every bind.
        let binds: Vec<(IpAddr, u16)> = to_bind.iter().map(|(_, p, a)| (*a, *p)).collect();
        let results: Vec<io::Result<std::net::TcpListener>> = match crate::netns::run_in(self.netns.as_deref(), || {
            binds.iter().map(|(a, p)| std::net::TcpListener::bind((*a, *p))).collect()
        }) {
            Ok(r) => r,
            Err(e) => {
                binds.iter().map(|_| Err(io::Error::new(e.kind(), format!("entering the network namespace: {e}")))).collect()
            }
        };
        for ((key, port, addr), result) in to_bind.into_iter().zip(results) {
            let Some(s) = self.served.get_mut(&key) else {
                continue;
            };
            let service = format!("{}/{}", key.0, key.1);
            match result.and_then(|l| {
                l.set_nonblocking(true)?;
                tokio::net::TcpListener::from_std(l)
            }) {
                Ok(listener) => {
                    s.failed.remove(&addr);
                    let handler = health_check_handler(key.0.clone(), key.1.clone(), s.local_ready.clone(), self.proxy.clone());
                    s.listeners.insert(addr, tokio::spawn(http::serve(listener, handler)));
                    info!(service = %service, port, %addr, "health-check node port serving");
                }
                Err(e) => {
                    if s.failed.insert(addr, now).is_none() {
                        warn!(service = %service, port, %addr, error = %e, "cannot serve the health-check node port: another process on the node holds it (`ss -ltnp`): free it, or the load balancer sees this node as unhealthy for the Service; retrying");
                    } else {
                        debug!(service = %service, port, %addr, error = %e, "health-check node port bind failed again");
                    }
                }
            }
        }
    }
}

fn health_check_handler(namespace: String, name: String, local_ready: Arc<AtomicUsize>, proxy: Arc<ProxyHealth>) -> Handler {
    http::handler(move |_req| {
        std::future::ready(health_check_response(&namespace, &name, local_ready.load(Ordering::Relaxed), proxy.is_healthy()))
    })
}

/// Stops a listener task and waits until its socket is closed, so the port can be bound again.
async fn stop(task: JoinHandle<()>) {
    task.abort();
    let _ = task.await;
}

#[cfg(test)]
#[path = "health_tests.rs"]
mod tests;
