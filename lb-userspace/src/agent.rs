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
    agent_status::{AgentReport, unix_ms},
    compile::NodeContext,
    compile_memo::CompileMemo,
    dataplane::{Dataplane, DataplaneConfig, ExternalMode},
    health::{HealthCheckServers, ProxyHealth, health_handler, http::spawn_listener},
    metrics::{Metrics, Programmed, metrics_handler, sync_error_reason},
    model::{HealthChecks, Skipped},
    node::node_context,
    plan::{PlanConfig, addr16},
    planner::Planner,
    source_file::{ClusterObjects, FileSource},
    source_kube::KubeSource,
};

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
    pub plan: PlanConfig,
    /// How often the file source is checked for changes.
    pub poll_interval: Duration,
    /// Prometheus metrics listener (`GET /metrics`); `None`: no listener.
    pub metrics_addr: Option<SocketAddr>,
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
    // Up first: /healthz says 503 until the first sync, including while the source starts.
    let health = Arc::new(ProxyHealth::new(cfg.sync_period));
    let metrics = Arc::new(Metrics::new(Some(cfg.dataplane.pin_path.clone())));
    if let Some(addr) = cfg.health_addr {
        spawn_listener("health (/healthz, /livez)", addr, health_handler(health.clone()));
    }
    if let Some(addr) = cfg.metrics_addr {
        spawn_listener("metrics (/metrics)", addr, metrics_handler(metrics.clone()));
    }
    let mut dp = Dataplane::load(&cfg.dataplane).context("loading the datapath")?;
    metrics.set_map_sizes(*dp.limits());
    let mut report = AgentReport::new();
    let mut written = report.encode();
    dp.set_agent_status(&written).context("writing the agent status")?;
    info!(pin_path = %dp.pin_path().display(), adopted_frontends = dp.state().services.len(), "datapath loaded");
    attach_all(&mut dp, &cfg)?;

    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    // Starting the source may wait for the API server; a signal meanwhile ends the agent
    // cleanly (the datapath keeps serving what the pinned maps hold).
    let mut feed = tokio::select! {
        feed = Feed::start(&cfg) => feed?,
        _ = tokio::signal::ctrl_c() => return Ok(()),
        _ = sigterm.recv() => return Ok(()),
    };
    let mut sync = Sync {
        compile: CompileMemo::default(),
        planner: Planner::new(cfg.plan),
        first: true,
        rejected: Vec::new(),
        node: None,
        health_checks: HealthChecks::new(),
        metrics: metrics.clone(),
    };
    let mut health_check_ports = HealthCheckServers::new(cfg.netns.clone(), health.clone());
    let mut last_sweep = Instant::now();
    let mut last_repair = Instant::now();
    // A snapshot whose sync failed (a full map, a transient map error) is retried every tick,
    // with the time its oldest unapplied change was seen (the start of the sync latency).
    let mut pending: Option<(ClusterObjects, Instant)> = None;
    loop {
        let polled = feed.poll(&metrics);
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
                warn!(error = format!("{e:#}"), "reading the source failed; the datapath keeps the last applied state");
            }
        }
        if let Some((objects, since)) = &pending {
            health.set_node_eligible(node_eligible(&cfg.node_name, &objects.nodes));
            match sync.apply(&mut dp, &cfg, objects) {
                Ok(()) => {
                    metrics.sync_ok(since.elapsed());
                    health.updated(Instant::now(), SystemTime::now());
                    report.last_sync_unix_ms = Some(unix_ms(SystemTime::now()));
                    pending = None;
                }
                Err(e) => {
                    metrics.sync_failed(sync_error_reason(&e));
                    warn!(error = format!("{e:#}"), "sync failed; the datapath keeps the last applied state, retrying");
                    report.last_error = Some((unix_ms(SystemTime::now()), format!("{e:#}")));
                }
            }
        }
        // `lb status` reads what the agent says of itself; written only when it changed.
        report.problems = feed.problems();
        report.problems.extend(sync.rejected.iter().map(|r| format!("skipped {}: {}", r.object, r.reason)));
        report.problems_total = report.problems.len();
        let status = report.encode();
        if status != written {
            match dp.set_agent_status(&status) {
                Ok(()) => written = status,
                Err(e) => warn!(error = format!("{e:#}"), "writing the agent status for `lb status` failed"),
            }
        }
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
                Err(e) => warn!(error = format!("{e:#}"), "repairing the maps failed; retrying next period"),
            }
        }
        if last_sweep.elapsed() >= CT_SWEEP_INTERVAL {
            last_sweep = Instant::now();
            match dp.sweep_conntrack() {
                Ok(sweep) => {
                    metrics.set_conntrack_entries(sweep.remaining);
                    if sweep.removed > 0 {
                        info!(entries = sweep.removed, remaining = sweep.remaining, "swept idle conntrack entries");
                    }
                }
                Err(e) => warn!(error = format!("{e:#}"), "conntrack sweep failed"),
            }
        }
        tokio::select! {
            () = feed.wait(cfg.poll_interval) => {}
            _ = tokio::signal::ctrl_c() => break,
            _ = sigterm.recv() => break,
        }
    }
    info!("shutting down; the datapath stays attached and serving");
    Ok(())
}

/// Attaches every program where the configuration says.
fn attach_all(dp: &mut Dataplane, cfg: &AgentConfig) -> anyhow::Result<()> {
    let ns = cfg.netns.as_deref();
    for iface in &cfg.pod_interfaces {
        crate::netns::run_in(ns, || dp.attach_pod_interface(iface))
            .context("entering the network namespace")?
            .with_context(|| format!("attaching to pod interface {iface}"))?;
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
            .with_context(|| format!("attaching to external interface {iface}"))?;
        info!(iface, mode = mode.as_str(), "attached: external");
    }
    if let Some(cg) = &cfg.cgroup {
        dp.attach_cgroup(cg).with_context(|| format!("attaching socket programs to {}", cg.display()))?;
        info!(cgroup = %cg.display(), "attached: socket-level translation");
    }
    Ok(())
}

/// The object source, as a stream of snapshots.
enum Feed {
    File(FileSource),
    Kube { source: KubeSource, changed: bool },
}

impl Feed {
    async fn start(cfg: &AgentConfig) -> anyhow::Result<Self> {
        Ok(match &cfg.source {
            Source::File(dir) => Self::File(FileSource::new(dir)),
            Source::Kube(kubeconfig) => {
                let client = crate::source_kube::client(kubeconfig.as_deref()).await.context("connecting to the API server")?;
                let source = KubeSource::start(client, &cfg.node_name).await.context("starting the watches")?;
                info!("waiting for the initial lists of Services, EndpointSlices and Nodes");
                // Point 7: nothing is programmed (or flushed) before every initial list is in.
                source.wait_ready().await;
                Self::Kube { source, changed: true }
            }
        })
    }

    /// A new snapshot when something changed since the last one. A manifest file that turned
    /// invalid is reported here once (log and metric) and keeps its last good objects; the
    /// other files' changes go on.
    fn poll(&mut self, metrics: &Metrics) -> anyhow::Result<Option<ClusterObjects>> {
        match self {
            Self::File(files) => {
                let polled = files.poll().with_context(|| format!("reading the manifests in {}", files.dir().display()))?;
                for e in &polled.failed {
                    metrics.sync_failed("source");
                    warn!(
                        error = format!("{:#}", anyhow::Error::from(Arc::clone(e))),
                        "invalid manifest: fix the file; its last good objects stay programmed, the other files are read as usual"
                    );
                }
                for path in &polled.recovered {
                    info!(file = %path.display(), "manifest valid again");
                }
                metrics.set_invalid_files(files.errors().count());
                Ok(polled.objects)
            }
            Self::Kube { source, changed } => Ok(std::mem::take(changed).then(|| source.snapshot())),
        }
    }

    /// What is wrong with the source now (one line each), for `lb status`.
    fn problems(&self) -> Vec<String> {
        match self {
            Self::File(files) => files.errors().map(|e| format!("invalid manifest: {e}")).collect(),
            Self::Kube { .. } => Vec::new(),
        }
    }

    /// Waits for the next change (kube) or poll tick (files).
    async fn wait(&mut self, poll: Duration) {
        match self {
            Self::File { .. } => tokio::time::sleep(poll).await,
            // A tick also when nothing changes: sweeps and retries run in a quiet cluster too.
            Self::Kube { source, changed } => tokio::select! {
                () = source.changed() => *changed = true,
                () = tokio::time::sleep(poll) => {}
            },
        }
    }
}

/// State carried between syncs.
struct Sync {
    /// Compile results of unchanged Services, kept between syncs.
    compile: CompileMemo,
    /// The map state, planned again only for ServicePorts that changed.
    planner: Planner,
    first: bool,
    /// Invalid objects of the last sync (each is logged when it first shows).
    rejected: Vec<Skipped>,
    node: Option<NodeContext>,
    /// Health-check node ports of the last applied state.
    health_checks: HealthChecks,
    metrics: Arc<Metrics>,
}

impl Sync {
    fn apply(&mut self, dp: &mut Dataplane, cfg: &AgentConfig, objects: &ClusterObjects) -> anyhow::Result<()> {
        let started = Instant::now();
        let node = node_context(&cfg.node_name, &cfg.node_addresses, &objects.nodes);
        if self.node.as_ref() != Some(&node) {
            let settings = node_config(&node, (cfg.hairpin_addr, cfg.hairpin6_addr), cfg.snat_ports);
            dp.set_config(&settings).context("writing the node settings")?;
            self.node = Some(node.clone());
        }
        // Both families into one state (point 55): one set of maps holds IPv4 and IPv6.
        let out = self.compile.compile(&objects.services, &objects.slices, &node);
        let desired = out.desired;
        self.metrics.set_rejected(&desired.rejected);
        if desired.rejected != self.rejected {
            for r in desired.rejected.iter().filter(|r| !self.rejected.contains(r)) {
                warn!(object = %r.object, reason = %r.reason, "skipped invalid object");
            }
            self.rejected = desired.rejected.clone();
        }
        if self.first {
            self.planner.adopt(dp.state(), desired);
        }
        // Unchanged ServicePorts keep their plan; only the ones the compile step reports as
        // changed are compared, and only what they touched (or what failed to apply last time)
        // is compared with the maps.
        let replanned = self.planner.plan_changed(desired, &out.changed);
        self.health_checks.clone_from(out.health_checks);
        if replanned == 0 && self.planner.pending().is_empty() {
            return Ok(());
        }
        let state = self.planner.state();
        let writes = dp.apply_touched(state, self.planner.pending())?;
        self.planner.applied();
        self.first = false;
        let state = self.planner.state();
        self.metrics.set_programmed(Programmed {
            service_ports: desired.services.len(),
            frontends: state.services.keys().filter(|k| k.proto != 0).count(),
            backends: state.backends.len(),
            names: self.planner.svc_names().clone(),
        });
        info!(
            service_ports = desired.services.len(),
            replanned,
            frontends = state.services.len(),
            backends = state.backends.len(),
            writes,
            took_ms = started.elapsed().as_secs_f64() * 1e3,
            "synced"
        );
        Ok(())
    }
}

/// Point 50: `/healthz` fails while this node's Node object is being deleted.
fn node_eligible(node_name: &str, nodes: &[impl std::borrow::Borrow<k8s_openapi::api::core::v1::Node>]) -> bool {
    !nodes.iter().map(std::borrow::Borrow::borrow).any(|n: &k8s_openapi::api::core::v1::Node| {
        n.metadata.name.as_deref() == Some(node_name) && n.metadata.deletion_timestamp.is_some()
    })
}

/// Node-wide datapath settings, per family: the node's first IPv4 address (IPv4-mapped) and
/// first IPv6 address (as is) as SNAT sources of external traffic, flagged ready only when the
/// node has one; the two hairpin addresses, always set.
fn node_config(node: &NodeContext, hairpin: (Ipv4Addr, Ipv6Addr), snat_ports: (u16, u16)) -> lb_common::Config {
    let snat = node.addresses.iter().find(|a| a.is_ipv4()).copied();
    let snat6 = node.addresses.iter().find(|a| a.is_ipv6()).copied();
    let mut flags = lb_common::CFG_F_HAIRPIN_READY | lb_common::CFG_F_HAIRPIN6_READY;
    if snat.is_some() {
        flags |= lb_common::CFG_F_SNAT_READY;
    }
    if snat6.is_some() {
        flags |= lb_common::CFG_F_SNAT6_READY;
    }
    lb_common::Config {
        snat_addr: snat.map(addr16).unwrap_or_default(),
        hairpin_addr: addr16(IpAddr::V4(hairpin.0)),
        snat6_addr: snat6.map(addr16).unwrap_or_default(),
        hairpin6_addr: addr16(IpAddr::V6(hairpin.1)),
        snat_port_min: snat_ports.0,
        snat_port_max: snat_ports.1,
        flags,
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use k8s_openapi::api::{
        core::v1::{Node, Service},
        discovery::v1::EndpointSlice,
    };
    use serde_json::json;

    use super::*;
    use crate::plan::{Ids, map_state};

    fn service(name: &str, cluster_ip: &str, ports: serde_json::Value) -> Service {
        serde_json::from_value(json!({
            "metadata": { "name": name, "namespace": "ns" },
            "spec": { "type": "NodePort", "clusterIP": cluster_ip, "ports": ports },
        }))
        .unwrap()
    }

    #[test]
    fn svc_ids_name_the_service_ports_they_were_planned_from() {
        let services = [
            service(
                "web",
                "10.96.0.1",
                json!([
                    { "name": "http", "port": 80, "nodePort": 30080 },
                    { "name": "dns", "port": 53, "protocol": "UDP" },
                ]),
            ),
            service("api", "10.96.0.2", json!([{ "port": 443, "nodePort": 30443 }])),
        ];
        let node = NodeContext { name: "n".into(), addresses: vec!["192.168.0.10".parse().unwrap()], zone: None };
        let desired = crate::compile::compile(&services, &[] as &[EndpointSlice], &node, crate::model::Family::V4);
        let mut planner = Planner::new(PlanConfig::default());
        planner.plan(&desired);
        let state = planner.state();
        let got: BTreeMap<String, u32> = planner.svc_names().iter().map(|(id, spn)| (spn.to_string(), *id)).collect();
        assert_eq!(got.len(), 3, "{got:?}");
        for spn in desired.services.keys() {
            let id = got[&spn.to_string()];
            // Every frontend of the ServicePort carries that id.
            for fe in &desired.services[spn].frontends {
                let key = lb_common::ServiceKey {
                    addr: addr16(fe.addr),
                    port_be: fe.port.to_be(),
                    proto: spn.protocol.number(),
                    _pad: 0,
                };
                assert_eq!(state.services[&key].svc_id, id, "{spn} {fe:?}");
            }
        }
    }

    /// Point 55: a dual-stack Service is two ServicePorts, one per family, each with its own
    /// svc_id and name (`/IPv6` for the IPv6 one), and each frontend carries its family's id.
    #[test]
    fn point_55_dual_stack_service_ports_get_one_svc_id_and_name_per_family() {
        let mut web = service("web", "10.96.0.1", json!([{ "name": "http", "port": 80, "nodePort": 30080 }]));
        let spec = web.spec.as_mut().unwrap();
        spec.ip_families = Some(vec!["IPv4".into(), "IPv6".into()]);
        spec.cluster_ips = Some(vec!["10.96.0.1".into(), "fd00:96::1".into()]);
        let node = NodeContext {
            name: "n".into(),
            addresses: vec!["192.168.0.10".parse().unwrap(), "fd00::10".parse().unwrap()],
            zone: None,
        };
        let (desired, _) = crate::compile::compile_all(&[web], &[] as &[EndpointSlice], &node);
        let mut planner = Planner::new(PlanConfig::default());
        planner.plan(&desired);
        let state = planner.state();
        assert_eq!(state, &map_state(&desired, &mut Ids::default(), &PlanConfig::default()));
        let got: BTreeMap<String, u32> = planner.svc_names().iter().map(|(id, spn)| (spn.to_string(), *id)).collect();
        assert_eq!(got.keys().map(String::as_str).collect::<Vec<_>>(), ["ns/web:http/TCP", "ns/web:http/TCP/IPv6"]);
        assert_ne!(got["ns/web:http/TCP"], got["ns/web:http/TCP/IPv6"]);
        let id_of = |addr: &str, port: u16| {
            let key = lb_common::ServiceKey {
                addr: addr16(addr.parse().unwrap()),
                port_be: port.to_be(),
                proto: lb_common::IPPROTO_TCP,
                _pad: 0,
            };
            state.services[&key].svc_id
        };
        assert_eq!(id_of("10.96.0.1", 80), got["ns/web:http/TCP"]);
        assert_eq!(id_of("192.168.0.10", 30080), got["ns/web:http/TCP"]);
        assert_eq!(id_of("fd00:96::1", 80), got["ns/web:http/TCP/IPv6"]);
        assert_eq!(id_of("fd00::10", 30080), got["ns/web:http/TCP/IPv6"]);
        // The names record (what `lb service list` reads) says the same.
        assert_eq!(state.names[&got["ns/web:http/TCP/IPv6"]].as_str(), "ns/web:http/TCP/IPv6");
    }

    #[test]
    fn node_settings_per_family() {
        let hairpin = (Ipv4Addr::new(169, 254, 42, 1), DEFAULT_HAIRPIN6_ADDR);
        let dual = NodeContext {
            name: "n".into(),
            addresses: ["fd00::10", "192.168.0.10", "fd00::11", "10.1.0.10"].iter().map(|a| a.parse().unwrap()).collect(),
            zone: None,
        };
        let c = node_config(&dual, hairpin, (61000, 65000));
        assert_eq!(c.snat_addr, lb_common::v4_mapped([192, 168, 0, 10]), "first IPv4, IPv4-mapped");
        assert_eq!(c.snat6_addr, "fd00::10".parse::<Ipv6Addr>().unwrap().octets(), "first IPv6, as is");
        assert_eq!(c.hairpin_addr, lb_common::v4_mapped([169, 254, 42, 1]));
        assert_eq!(c.hairpin6_addr, [0xfd, 0, 0x6c, 0x62, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
        assert_eq!((c.snat_port_min, c.snat_port_max), (61000, 65000));
        let all = lb_common::CFG_F_SNAT_READY
            | lb_common::CFG_F_HAIRPIN_READY
            | lb_common::CFG_F_SNAT6_READY
            | lb_common::CFG_F_HAIRPIN6_READY;
        assert_eq!(c.flags, all);

        // IPv4-only node: no IPv6 SNAT source, flag clear; hairpin addresses still set.
        let v4only = NodeContext { addresses: vec!["192.168.0.10".parse().unwrap()], ..dual.clone() };
        let c = node_config(&v4only, hairpin, (61000, 65000));
        assert_eq!(c.snat6_addr, [0; 16]);
        assert_eq!(c.flags, all & !lb_common::CFG_F_SNAT6_READY);
        // IPv6-only node.
        let v6only = NodeContext { addresses: vec!["fd00::10".parse().unwrap()], ..dual };
        let c = node_config(&v6only, hairpin, (61000, 65000));
        assert_eq!(c.snat_addr, [0; 16]);
        assert_eq!(c.flags, all & !lb_common::CFG_F_SNAT_READY);
    }

    #[test]
    fn point_50_a_node_being_deleted_is_not_eligible() {
        let node = |name: &str, deleting: bool| -> Node {
            let mut meta = json!({ "name": name });
            if deleting {
                meta["deletionTimestamp"] = json!("2024-01-01T00:00:00Z");
            }
            serde_json::from_value(json!({ "metadata": meta })).unwrap()
        };
        assert!(node_eligible("a", &[] as &[Node]));
        assert!(node_eligible("a", &[node("a", false), node("b", true)]));
        assert!(!node_eligible("a", &[node("a", true)]));
    }
}
