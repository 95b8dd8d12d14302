//! The agent loop: read the source, compile, plan, apply; repeat on change. The datapath keeps
//! serving the last applied state whatever happens here (a bad file, the API server away, a
//! restart, a crash).

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    path::PathBuf,
    sync::Arc,
    time::{Duration, Instant, SystemTime},
};

use anyhow::Context as _;
use tracing::{info, warn};

use crate::{
    dataplane::{Dataplane, DataplaneConfig, ExternalMode},
    plan::PlanConfig,
    source::ClusterObjects,
};

mod ahead;
mod events;
mod exposition;
mod feed;
mod fit;
pub mod health;
pub mod http;
mod kubeproxy_metrics;
pub mod metrics;
pub mod preflight;
mod process_metrics;
mod status;
pub(crate) mod sync;

use feed::Feed;
use health::{HealthCheckServers, ProxyHealth, health_handler};
use http::spawn_listener;
use metrics::{Metrics, metrics_handler};
use status::StatusRecord;
use sync::{SyncState, node_eligible};

/// Where the agent reads Kubernetes objects from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    /// YAML manifests in a directory, re-read when they change.
    File(PathBuf),
    /// The API server, through list/watch (in-cluster config, `$KUBECONFIG`, or this file).
    Kube(Option<PathBuf>),
}

impl std::str::FromStr for Source {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.split_once(':') {
            None if s == "kube" => Ok(Self::Kube(None)),
            Some(("kube", path)) if !path.is_empty() => Ok(Self::Kube(Some(PathBuf::from(path)))),
            Some(("file", dir)) if !dir.is_empty() => Ok(Self::File(PathBuf::from(dir))),
            _ => Err(format!("unknown source {s:?}; expected file:DIR, kube or kube:KUBECONFIG")),
        }
    }
}

#[derive(Clone, Debug)]
pub struct AgentConfig {
    pub source: Source,
    pub dataplane: DataplaneConfig,
    /// Host-side pod interfaces to attach the pod TC program to.
    pub pod_interfaces: Vec<String>,
    /// The node's external interfaces (NodePort, LoadBalancer IPs, externalIPs).
    pub external_interfaces: Vec<String>,
    pub external_mode: ExternalMode,
    /// cgroup v2 directory for socket-level translation of the node's own processes.
    pub cgroup: Option<PathBuf>,
    /// Network namespace the interfaces live in (`None`: the agent's own).
    pub netns: Option<PathBuf>,
    pub node_name: String,
    pub node_addresses: Vec<IpAddr>,
    /// Source address of IPv4 hairpin traffic (a pod reaching itself through a service).
    pub hairpin_addr: Ipv4Addr,
    /// Source address of IPv6 hairpin traffic (`--hairpin-ip6`, default
    /// [`DEFAULT_HAIRPIN6_ADDR`]).
    pub hairpin6_addr: Ipv6Addr,
    /// SNAT source ports for external traffic.
    pub snat_ports: (u16, u16),
    /// Point 46, CVE-2020-8554: the prefixes `spec.externalIPs` may use (`None`: any).
    pub external_ip_cidrs: Option<Vec<crate::model::Cidr>>,
    /// Point 47: the prefixes LoadBalancer ingress IPs may use (`None`: any).
    pub lb_ip_cidrs: Option<Vec<crate::model::Cidr>>,
    pub plan: PlanConfig,
    /// How often the file source is checked for changes.
    pub poll_interval: Duration,
    /// Prometheus metrics listener (`GET /metrics`); `None`: no listener.
    pub metrics_addr: Option<SocketAddr>,
    /// Per-backend series in the metrics (`--metrics-backends`).
    pub metrics_backends: bool,
    /// `/healthz` and `/livez` listener; `None`: no listener.
    pub health_addr: Option<SocketAddr>,
    /// `/healthz` fails once a change has waited longer than twice this.
    pub sync_period: Duration,
    /// How often the maps are read back and anything changed outside the agent rewritten.
    pub repair_period: Duration,
}

/// Default IPv6 hairpin source (`--hairpin-ip6`): `fd00:6c62::1`, in a unique local prefix
/// (RFC 4193; `6c62` is "lb"), the IPv6 counterpart of the IPv4 link-local 169.254.42.1. Like
/// the IPv4 one it must be an address the node owns (e.g. on `lo`, as the tests set it up), so
/// that a hairpinned pod's reply, addressed to it, comes back to the node and is translated.
pub const DEFAULT_HAIRPIN6_ADDR: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x6c62, 0, 0, 0, 0, 0, 1);

/// How often idle conntrack entries are swept.
const CT_SWEEP_INTERVAL: Duration = Duration::from_secs(30);

/// Runs until SIGINT or SIGTERM. Returns after leaving the datapath attached and serving.
pub async fn run(cfg: AgentConfig) -> anyhow::Result<()> {
    // Settings first: a start that fails here leaves nothing behind.
    preflight::check(&cfg)?;
    // A start that fails after this point removes what it pinned, but only when nothing was
    // pinned before it: never what a previous agent left serving.
    let fresh = FreshStart::check(&cfg.dataplane.pin_path);
    // One agent per pin directory, before anything listens, loads or adopts
    // (`dataplane::lock`); held until this function returns.
    let _pin_lock = crate::dataplane::lock::PinLock::create_and_acquire(&cfg.dataplane.pin_path)?;
    // Up first: /healthz says 503 until the first sync, including while the source starts.
    let health = Arc::new(ProxyHealth::new(cfg.sync_period));
    let metrics = Metrics::new(Some(cfg.dataplane.pin_path.clone()));
    let metrics = Arc::new(if cfg.metrics_backends { metrics.with_backend_series() } else { metrics });
    if let Some(addr) = cfg.health_addr {
        spawn_listener("health (/healthz, /livez)", addr, health_handler(health.clone()));
    }
    if let Some(addr) = cfg.metrics_addr {
        spawn_listener("metrics (/metrics)", addr, metrics_handler(metrics.clone()));
    }
    // The source first: the kube source's initial lists stream in while the datapath loads
    // (starting it does no I/O; the lists are waited for below, after the attach).
    let mut feed = Feed::start(&cfg).await.map_err(|e| fresh.undo(e))?;
    let mut dp = Dataplane::load(&cfg.dataplane).context("loading the datapath").map_err(|e| fresh.undo(e))?;
    metrics.set_map_sizes(*dp.limits());
    let mut status = StatusRecord::new();
    status.write(&mut dp);
    info!(pin_path = %dp.pin_path().display(), adopted_frontends = dp.state().services.len(), "datapath loaded");
    if let Err(e) = attach_all(&mut dp, &cfg) {
        drop(dp);
        return Err(fresh.undo(e));
    }
    // IPv4 flows an older build's programs added to the IPv6 table until the attach above.
    if let Err(e) = dp.move_ipv4_flows() {
        warn!(error = format!("{e:#}"), "moving IPv4 conntrack entries to their own table failed: {}", e.what_to_do());
    }

    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut sync = SyncState::new(cfg.plan, metrics.clone());
    let fresh_maps = dp.state().counts().iter().all(|&n| n == 0);
    // The initial lists may wait for the API server; a signal meanwhile ends the agent
    // cleanly (the datapath keeps serving what the pinned maps hold). Meanwhile, on maps that
    // hold nothing, the Services whose EndpointSlices are in are compiled and planned ahead,
    // without a write (`ahead`).
    tokio::select! {
        () = feed.wait_ready() => {}
        () = ahead::plan_ahead(&feed, &mut sync, &cfg), if fresh_maps => {}
        _ = tokio::signal::ctrl_c() => return Ok(()),
        _ = sigterm.recv() => return Ok(()),
    }
    let mut events = events::ServiceEvents::start(feed.client(), &cfg.node_name, metrics.clone());
    let mut programming = kubeproxy_metrics::ProgrammingLatency::new(SystemTime::now());
    let mut health_check_ports = HealthCheckServers::new(cfg.netns.clone(), health.clone());
    let mut last_sweep = Instant::now();
    let mut last_repair = Instant::now();
    // A snapshot whose sync failed (a full map, a transient map error) is retried every tick,
    // with the time its oldest unapplied change was seen (the start of the sync latency).
    let mut pending: Option<(ClusterObjects, Instant)> = None;
    loop {
        let polled = feed.poll(&metrics);
        let (service_changes, slice_changes) = feed.change_counts();
        metrics.set_changes(service_changes, slice_changes);
        let seen = Instant::now();
        match polled {
            Ok(Some(objects)) => {
                let since = pending.take().map_or(seen, |(_, since)| since);
                health.queued(since);
                pending = Some((objects, since));
            }
            // Nothing new and nothing pending: the maps hold what the source has.
            Ok(None) if pending.is_none() => health.updated(seen, SystemTime::now()),
            Ok(None) => {}
            Err(e) => {
                metrics.sync_failed("source");
                warn!(
                    error = format!("{e:#}"),
                    "reading the manifest directory failed: check that it exists and the agent can read it; the datapath keeps the last applied state"
                );
            }
        }
        if let Some((objects, since)) = &pending {
            health.set_node_eligible(node_eligible(&cfg.node_name, &objects.nodes));
            let work = Instant::now();
            match fit::apply_fitting(&mut sync, &mut dp, &cfg, objects, &metrics, &mut status) {
                Ok(()) => {
                    let now = SystemTime::now();
                    metrics.sync_ok(since.elapsed(), work.elapsed(), now);
                    metrics.programmed(&programming.synced(objects, sync.changed_slices().as_deref(), now));
                    health.updated(Instant::now(), now);
                    status.synced();
                    events.observe(&sync.rejected, &sync.left_out, objects);
                    pending = None;
                }
                Err(e) => {
                    metrics.sync_failed(e.reason());
                    let what_to_do = e.what_to_do();
                    let e = anyhow::Error::from(e);
                    warn!(
                        error = format!("{e:#}"),
                        "sync failed: {what_to_do}; the datapath keeps the last applied state, retrying"
                    );
                    status.failed(&e);
                }
            }
        }
        // `lb status` reads what the agent says of itself.
        let mut problems = feed.problems();
        problems.extend(sync.rejected.iter().map(|r| format!("skipped {}: {}", r.object, r.reason)));
        problems.extend(sync.left_out.iter().map(|(svc, (_, reason))| format!("left out Service {svc}: {reason}")));
        status.set_problems(problems);
        status.write(&mut dp);
        // Point 49: health-check node ports follow the applied state (failed binds retry).
        let node_addresses = sync.node.as_ref().map(|n| n.addresses.as_slice()).unwrap_or_default();
        health_check_ports.reconcile(&sync.health_checks, node_addresses).await;
        // Drift repair (kube-proxy's periodic full sync): only with nothing pending, so the
        // maps are compared with a plan they already hold.
        if pending.is_none() && !sync.first && last_repair.elapsed() >= cfg.repair_period {
            last_repair = Instant::now();
            match dp.repair(sync.planner.state()) {
                Ok(0) => {}
                Ok(writes) => {
                    metrics.repaired(writes);
                    warn!(writes, "repaired map entries that differed from the plan (changed outside the agent)");
                }
                Err(e) => warn!(error = format!("{e:#}"), "repairing the maps failed: {}; retrying next period", e.what_to_do()),
            }
        }
        if last_sweep.elapsed() >= CT_SWEEP_INTERVAL {
            last_sweep = Instant::now();
            match dp.sweep_conntrack() {
                Ok(sweep) => {
                    metrics.set_conntrack_entries(sweep.by_family);
                    metrics.set_snat_slots(sweep.snat_slots);
                    if sweep.removed > 0 {
                        info!(entries = sweep.removed, remaining = sweep.remaining, "swept idle conntrack entries");
                    }
                    match sync.release_ids(&mut dp, &sweep) {
                        Ok(0) => {}
                        Ok(ids) => tracing::debug!(ids, "freed ids no conntrack entry names any more"),
                        Err(e) => {
                            let what_to_do = e.what_to_do();
                            warn!(
                                error = format!("{:#}", anyhow::Error::from(e)),
                                "freeing ids after the sweep failed: {what_to_do}; retrying at the next"
                            )
                        }
                    }
                }
                Err(e) => warn!(
                    error = format!("{e:#}"),
                    "conntrack sweep failed: {}; idle flows stay until the next sweep (the LRU still evicts under pressure)",
                    e.what_to_do()
                ),
            }
        }
        // Everything this turn worked with is dropped by now.
        sync.release_freed_memory();
        tokio::select! {
            () = feed.wait(cfg.poll_interval) => {}
            _ = tokio::signal::ctrl_c() => break,
            _ = sigterm.recv() => break,
        }
    }
    info!("shutting down; the datapath stays attached and serving");
    Ok(())
}

/// Whether this start found the pin directory empty (or absent), so that a start failing after
/// it pinned something can remove it all.
struct FreshStart {
    pin_path: Option<PathBuf>,
}

impl FreshStart {
    fn check(pin_path: &std::path::Path) -> Self {
        let empty = std::fs::read_dir(pin_path).map_or(true, |mut d| d.next().is_none());
        Self { pin_path: empty.then(|| pin_path.to_owned()) }
    }

    /// After a failed start: removes the pin directory if this start created everything in it
    /// (detaching what it attached); returns the error, with a note when something was kept.
    fn undo(&self, e: anyhow::Error) -> anyhow::Error {
        match &self.pin_path {
            Some(pin) => match crate::dataplane::cleanup(pin) {
                Ok(()) => {
                    warn!(pin_path = %pin.display(), "start failed: removed the maps and links it had pinned");
                    e
                }
                Err(c) => e.context(format!("and removing what it pinned under {} failed too: {c}", pin.display())),
            },
            None => e,
        }
    }
}

/// Attaches every program where the configuration says.
fn attach_all(dp: &mut Dataplane, cfg: &AgentConfig) -> anyhow::Result<()> {
    let ns = cfg.netns.as_deref();
    for iface in &cfg.pod_interfaces {
        crate::netns::run_in(ns, || dp.attach_pod_interface(iface)).context("entering the network namespace")?.with_context(
            || format!("attaching to pod interface {iface} failed: check that it exists in that network namespace and is up"),
        )?;
        info!(iface, "attached: tc ingress (pod)");
    }
    if !cfg.external_interfaces.is_empty() || !cfg.pod_interfaces.is_empty() {
        // SNAT to the node's address and the reverse translation of replies happen before the
        // kernel routes the packet, so the stack sees a packet with one of its own addresses
        // as source arriving on an interface: without accept_local it drops it as a martian.
        crate::netns::run_in(ns, || std::fs::write("/proc/sys/net/ipv4/conf/all/accept_local", "1"))
            .context("entering the network namespace")?
            .context("setting net.ipv4.conf.all.accept_local=1")?;
    }
    for iface in &cfg.external_interfaces {
        let mode = crate::netns::run_in(ns, || dp.attach_external(iface, cfg.external_mode))
            .context("entering the network namespace")?
            .with_context(|| {
                format!(
                    "attaching to external interface {iface} ({}) failed: if its driver lacks that XDP mode, use \
                     --xdp-mode generic (or tc)",
                    cfg.external_mode.as_str()
                )
            })?;
        info!(iface, mode = mode.as_str(), "attached: external");
    }
    if let Some(cg) = &cfg.cgroup {
        dp.attach_cgroup(cg).with_context(|| {
            format!(
                "attaching socket programs to {} failed: it must be a cgroup v2 directory (e.g. /sys/fs/cgroup)",
                cg.display()
            )
        })?;
        info!(cgroup = %cg.display(), "attached: socket-level translation");
    }
    Ok(())
}
