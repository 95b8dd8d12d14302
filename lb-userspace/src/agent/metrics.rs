//! Prometheus metrics (`--metrics-addr`, `GET /metrics`, text exposition format 0.0.4).
//!
//! The agent records what its syncs did in [`Metrics`]; the datapath's own counters are read
//! from the pinned maps at scrape time, so they are right even for packets counted while no
//! agent ran.
//!
//! | metric | type | labels |
//! | --- | --- | --- |
//! | `lb_service_ports_programmed`, `lb_frontends_programmed`, `lb_backends_programmed` | gauge | |
//! | `lb_sync_duration_seconds` | histogram | |
//! | `lb_sync_total` | counter | `result` = `ok`, `error` |
//! | `lb_sync_errors_total` | counter | `reason` = `map_full`, `map_write`, `source`, `other` |
//! | `lb_map_capacity` | gauge | `map` |
//! | `lb_map_resizes_total` (maps grown online) | counter | `map` |
//! | `lb_services_left_out` (Services not programmed: a map at its ceiling) | gauge | `map` |
//! | `lb_objects_rejected_total` | counter | `reason` = field path, e.g. `spec.ports.port` |
//! | `lb_objects_invalid` (objects skipped now; its own family, apart from the counter's) | gauge | |
//! | `lb_source_invalid_files` | gauge | |
//! | `kubeproxy_sync_proxy_rules_duration_seconds` (the work of one sync: compile, plan, map writes) | histogram | |
//! | `kubeproxy_sync_proxy_rules_last_timestamp_seconds` (unix time of the last successful sync) | gauge | |
//! | `kubeproxy_network_programming_duration_seconds` (an EndpointSlice's `endpoints.kubernetes.io/last-change-trigger-time` → the maps hold it; changes after the agent started) | histogram | |
//! | `kubeproxy_sync_proxy_rules_service_changes_total`, `kubeproxy_sync_proxy_rules_endpoint_changes_total` (watch events of Services and EndpointSlices, kube source) | counter | |
//! | `lb_backend_packets_total`, `lb_backend_bytes_total` (only with `--metrics-backends`) | counter | `backend` (endpoint), `protocol` |
//! | `lb_build_info` (always 1) | gauge | `version`, `commit` |
//! | `process_resident_memory_bytes`, `process_virtual_memory_bytes`, `process_cpu_seconds_total`, `process_open_fds`, `process_max_fds`, `process_start_time_seconds` | Prometheus' process collector names | |
//! | `lb_events_total` (Kubernetes Events on skipped Services, kube source) | counter | `result` = `created`, `exists` (another node's agent wrote it), `failed`, `dropped` (queue full) |
//! | `lb_datapath_packets_total` (every packet a program saw) | counter | |
//! | `lb_datapath_verdicts_total` (one per packet: they sum to the packets) | counter | `verdict` = `pass`, `dnat`, `revnat`, `drop`, `reject` |
//! | `lb_datapath_drops_total` (why the dropped ones were) | counter | `reason` |
//! | `lb_datapath_pass_reasons_total` (passes on unusual paths) | counter | `reason` |
//! | `lb_datapath_events_total` (new flows, conntrack hits, SNAT, affinity hits, ...) | counter | `event` |
//! | `lb_monitor_events_total` (`lb monitor`'s events written, lost) | counter | `result` |
//! | `lb_service_packets_total`, `lb_service_bytes_total`, `lb_service_new_flows_total` | counter | `namespace`, `service`, `port`, `protocol`, `ip_family` (`IPv4`, `IPv6`: a dual-stack Service's port is one ServicePort per family) |

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt::Write as _,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::Duration,
};

use lb_common::FlowCounters;
use tracing::debug;

pub use super::exposition::Histogram;
use super::{
    exposition::{header, histogram},
    http::{self, Handler, Response},
    kubeproxy_metrics::KubeProxyState,
};
use crate::{
    maps::{pinned::PinnedMaps, sizes::MapSizes},
    model::{ServicePortName, Skipped},
};

/// Upper bounds of the sync duration buckets, in seconds.
pub const SYNC_DURATION_BUCKETS: &[f64] =
    &[0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0];

/// `reason` of `lb_sync_errors_total`, always exported (0 until it happens).
pub const SYNC_ERROR_REASONS: &[&str] = &["map_full", "map_write", "source", "other"];

/// `result` of `lb_events_total`, always exported (0 until it happens).
pub const EVENT_RESULTS: &[&str] = &["created", "exists", "failed", "dropped"];

pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// What the last successful sync programmed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Programmed {
    pub service_ports: usize,
    /// Frontends (address, port, protocol) in the services map; address markers not included.
    pub frontends: usize,
    pub backends: usize,
    /// `svc_id` of every programmed ServicePort, to name the per-service datapath counters.
    pub names: BTreeMap<u32, Arc<ServicePortName>>,
}

/// Everything the agent records, as exported.
#[derive(Clone, Debug, PartialEq)]
pub struct State {
    pub programmed: Programmed,
    pub sync_duration: Histogram,
    pub sync_ok: u64,
    pub sync_error: u64,
    pub sync_errors: BTreeMap<String, u64>,
    pub rejected_total: BTreeMap<String, u64>,
    /// `(object, reason)` currently rejected.
    pub rejected: BTreeSet<(String, String)>,
    /// Conntrack entries counted by the last sweep, IPv4 and IPv6 table (`None` before the
    /// first).
    pub conntrack_entries: Option<[usize; 2]>,
    /// Live SNAT port slots counted by the last sweep (`None` before the first).
    pub snat_slots: Option<usize>,
    /// The maps' real capacities (the defaults until the datapath is loaded).
    pub map_sizes: MapSizes,
    /// Map entries rewritten by drift repair.
    pub repaired: u64,
    /// Online growths, by map.
    pub map_resizes: BTreeMap<&'static str, u64>,
    /// Services left out now, by the map they do not fit.
    pub left_out: BTreeMap<&'static str, usize>,
    /// Manifest files whose current content is invalid (file source).
    pub invalid_files: usize,
    /// Kubernetes Events written (or not), by result ([`EVENT_RESULTS`]).
    pub events: BTreeMap<&'static str, u64>,
    /// What kube-proxy's metrics report.
    pub kube_proxy: KubeProxyState,
}

impl Default for State {
    fn default() -> Self {
        Self {
            programmed: Programmed::default(),
            sync_duration: Histogram::new(SYNC_DURATION_BUCKETS),
            sync_ok: 0,
            sync_error: 0,
            sync_errors: SYNC_ERROR_REASONS.iter().map(|r| ((*r).to_owned(), 0)).collect(),
            rejected_total: BTreeMap::new(),
            rejected: BTreeSet::new(),
            conntrack_entries: None,
            snat_slots: None,
            map_sizes: MapSizes::default(),
            repaired: 0,
            map_resizes: BTreeMap::new(),
            left_out: BTreeMap::new(),
            invalid_files: 0,
            events: EVENT_RESULTS.iter().map(|r| (*r, 0)).collect(),
            kube_proxy: KubeProxyState::default(),
        }
    }
}

/// The agent's metrics, shared between the sync loop and the metrics server.
#[derive(Debug)]
pub struct Metrics {
    /// Where the datapath counters are read at scrape time (`None`: not exported).
    pin_path: Option<PathBuf>,
    /// Export a series per backend too (`--metrics-backends`).
    per_backend: bool,
    state: Mutex<State>,
}

impl Metrics {
    pub fn new(pin_path: Option<PathBuf>) -> Self {
        Self { pin_path, per_backend: false, state: Mutex::new(State::default()) }
    }

    /// With a packet and a byte series per backend (two series per endpoint of the cluster:
    /// opt-in, `--metrics-backends`).
    pub fn with_backend_series(mut self) -> Self {
        self.per_backend = true;
        self
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A sync succeeded, `latency` after the change it applied was seen; its own work took
    /// `work`; it ended at `now`.
    pub fn sync_ok(&self, latency: Duration, work: Duration, now: std::time::SystemTime) {
        let mut s = self.lock();
        s.sync_ok += 1;
        s.sync_duration.observe(latency.as_secs_f64());
        s.kube_proxy.sync_work.observe(work.as_secs_f64());
        s.kube_proxy.last_sync_unix = now.duration_since(std::time::UNIX_EPOCH).ok().map(|d| d.as_secs_f64());
    }

    /// EndpointSlice changes reached the maps this long after their trigger times.
    pub fn programmed(&self, latencies: &[Duration]) {
        let mut s = self.lock();
        for l in latencies {
            s.kube_proxy.programming.observe(l.as_secs_f64());
        }
    }

    /// The source's watch events so far (Services, EndpointSlices).
    pub fn set_changes(&self, services: u64, endpoint_slices: u64) {
        let mut s = self.lock();
        s.kube_proxy.service_changes = services;
        s.kube_proxy.endpoint_changes = endpoint_slices;
    }

    /// A sync failed (`reason` is one of [`SYNC_ERROR_REASONS`]).
    pub fn sync_failed(&self, reason: &str) {
        let mut s = self.lock();
        s.sync_error += 1;
        *s.sync_errors.entry(reason.to_owned()).or_default() += 1;
    }

    pub fn set_programmed(&self, programmed: Programmed) {
        self.lock().programmed = programmed;
    }

    /// What the last sync programmed, keeping the ServicePort names as they were (they did
    /// not change).
    pub fn set_programmed_counts(&self, service_ports: usize, frontends: usize, backends: usize) {
        let p = &mut self.lock().programmed;
        (p.service_ports, p.frontends, p.backends) = (service_ports, frontends, backends);
    }

    /// The objects the compile step rejected: each newly rejected `(object, reason)` counts
    /// once, however many syncs see it again.
    pub fn set_rejected(&self, rejected: &[Skipped]) {
        let now: BTreeMap<(String, String), &'static str> =
            rejected.iter().map(|r| ((r.object.clone(), r.reason.to_string()), r.reason.field.label())).collect();
        let mut s = self.lock();
        for (key, label) in &now {
            if !s.rejected.contains(key) {
                *s.rejected_total.entry((*label).to_owned()).or_default() += 1;
            }
        }
        s.rejected = now.into_keys().collect();
    }

    /// A Kubernetes Event was written or not (`result` is one of [`EVENT_RESULTS`]).
    pub fn event(&self, result: &'static str) {
        *self.lock().events.entry(result).or_default() += 1;
    }

    /// How many manifest files are invalid now (their last good objects stay programmed).
    pub fn set_invalid_files(&self, n: usize) {
        self.lock().invalid_files = n;
    }

    /// Drift repair rewrote `writes` map entries.
    pub fn repaired(&self, writes: usize) {
        self.lock().repaired += writes as u64;
    }

    /// The capacities of the loaded maps.
    /// Map `name` was grown online.
    pub fn map_resized(&self, name: &'static str) {
        *self.lock().map_resizes.entry(name).or_default() += 1;
    }

    /// Services left out now, by the map they do not fit.
    pub fn set_left_out(&self, by_map: BTreeMap<&'static str, usize>) {
        self.lock().left_out = by_map;
    }

    pub fn set_map_sizes(&self, sizes: MapSizes) {
        self.lock().map_sizes = sizes;
    }

    /// The conntrack fill (the fullest IPv4 table, the IPv6 table), as the last sweep counted it.
    pub fn set_conntrack_entries(&self, entries: [usize; 2]) {
        self.lock().conntrack_entries = Some(entries);
    }

    /// The live SNAT port slots, as the last sweep counted them.
    pub fn set_snat_slots(&self, live: usize) {
        self.lock().snat_slots = Some(live);
    }

    pub fn snapshot(&self) -> State {
        self.lock().clone()
    }

    /// The exposition, with the datapath counters read now from the pinned maps.
    pub fn scrape(&self) -> String {
        let datapath = self.pin_path.as_deref().and_then(|p| match read_datapath(p, self.per_backend) {
            Ok(d) => Some(d),
            Err(e) => {
                debug!(error = %e, "datapath counters not readable");
                None
            }
        });
        render(&self.snapshot(), datapath.as_ref())
    }
}

/// The datapath's counters, summed over CPUs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DatapathCounters {
    /// Indexed like [`lb_common::COUNTER_NAMES`].
    pub global: Vec<u64>,
    pub services: Vec<(u32, FlowCounters)>,
    /// Per backend, when asked for (`--metrics-backends`).
    pub backends: Vec<(lb_common::Backend, FlowCounters)>,
    /// `lb monitor`'s events written and lost.
    pub monitor: lb_common::MonitorStats,
}

pub fn read_datapath(pin_path: &Path, per_backend: bool) -> Result<DatapathCounters, crate::maps::MapError> {
    let maps = PinnedMaps::open(pin_path)?;
    let backends = if per_backend { maps.backend_counters_by_backend()? } else { Vec::new() };
    Ok(DatapathCounters {
        global: maps.counters()?,
        services: maps.service_counters()?,
        backends,
        monitor: maps.monitor_stats()?,
    })
}

/// A label value, escaped.
fn esc(v: &str) -> String {
    v.replace('\\', r"\\").replace('"', "\\\"").replace('\n', r"\n")
}

/// The text exposition of `state` and, when readable, the datapath counters.
pub fn render(state: &State, datapath: Option<&DatapathCounters>) -> String {
    let mut o = String::new();
    let p = &state.programmed;
    for (name, help, v) in [
        ("lb_service_ports_programmed", "ServicePorts programmed by the last successful sync.", p.service_ports),
        ("lb_frontends_programmed", "Frontends (address, port, protocol) programmed by the last successful sync.", p.frontends),
        ("lb_backends_programmed", "Backends programmed by the last successful sync.", p.backends),
    ] {
        header(&mut o, name, "gauge", help);
        let _ = writeln!(o, "{name} {v}");
    }
    // Counting a 131,072-entry LRU map at every scrape would cost the scraper; the agent counts
    // it at every conntrack sweep instead. Alert on entries / capacity: a full table evicts
    // live flows (BENCHMARKS.md, B2: conntrack sizing).
    header(
        &mut o,
        "lb_conntrack_capacity",
        "gauge",
        "Capacity of each conntrack table, by family (entries; two per flow, one per direction).",
    );
    for family in ["ipv4", "ipv6"] {
        let _ = writeln!(o, "lb_conntrack_capacity{{family=\"{family}\"}} {}", state.map_sizes.conntrack);
    }
    header(
        &mut o,
        "lb_map_repairs_total",
        "counter",
        "Map entries rewritten because they differed from the plan (changed outside the agent).",
    );
    let _ = writeln!(o, "lb_map_repairs_total {}", state.repaired);
    header(&mut o, "lb_map_capacity", "gauge", "Capacity of each agent-sized map, in entries (`lb status` shows the fill).");
    for (name, n) in state.map_sizes.by_name() {
        let _ = writeln!(o, "lb_map_capacity{{map=\"{name}\"}} {n}");
    }
    header(&mut o, "lb_map_resizes_total", "counter", "Maps grown online because a state did not fit, by map.");
    for (name, _) in state.map_sizes.by_name().into_iter().filter(|(n, _)| *n != lb_common::CONNTRACK) {
        let _ = writeln!(o, "lb_map_resizes_total{{map=\"{name}\"}} {}", state.map_resizes.get(name).copied().unwrap_or(0));
    }
    header(
        &mut o,
        "lb_services_left_out",
        "gauge",
        "Services not programmed because a map they need is at its ceiling (--map-max), by map.",
    );
    for (name, _) in state.map_sizes.by_name().into_iter().filter(|(n, _)| *n != lb_common::CONNTRACK) {
        let _ = writeln!(o, "lb_services_left_out{{map=\"{name}\"}} {}", state.left_out.get(name).copied().unwrap_or(0));
    }
    if let Some([v4, v6]) = state.conntrack_entries {
        header(
            &mut o,
            "lb_conntrack_entries",
            "gauge",
            "Conntrack entries counted by the agent's last sweep (every 30 s), by family (IPv4: the fuller of its client and flow tables; each table holds lb_conntrack_capacity).",
        );
        let _ = writeln!(o, "lb_conntrack_entries{{family=\"ipv4\"}} {v4}");
        let _ = writeln!(o, "lb_conntrack_entries{{family=\"ipv6\"}} {v6}");
    }
    if let Some(live) = state.snat_slots {
        header(
            &mut o,
            "lb_snat_slots_in_use",
            "gauge",
            "External IPv4 source-NATed flows whose reply entry is their SNAT port's slot (counted by the last sweep). Each protocol has a slot per port of --snat-ports (up to 8192); flows that find none free take two conntrack entries instead.",
        );
        let _ = writeln!(o, "lb_snat_slots_in_use {live}");
    }

    histogram(
        &mut o,
        "lb_sync_duration_seconds",
        "Time from a change being seen in the source to the maps holding it.",
        &state.sync_duration,
    );
    super::kubeproxy_metrics::render(&mut o, &state.kube_proxy);
    super::process_metrics::render(&mut o);

    header(&mut o, "lb_sync_total", "counter", "Syncs of the source to the maps, by result.");
    let _ = writeln!(o, "lb_sync_total{{result=\"ok\"}} {}", state.sync_ok);
    let _ = writeln!(o, "lb_sync_total{{result=\"error\"}} {}", state.sync_error);
    header(&mut o, "lb_sync_errors_total", "counter", "Failed syncs, by reason.");
    for (reason, n) in &state.sync_errors {
        let _ = writeln!(o, "lb_sync_errors_total{{reason=\"{}\"}} {n}", esc(reason));
    }

    header(
        &mut o,
        "lb_objects_rejected_total",
        "counter",
        "Invalid objects skipped by the compile step, counted when they become invalid, by field.",
    );
    for (reason, n) in &state.rejected_total {
        let _ = writeln!(o, "lb_objects_rejected_total{{reason=\"{}\"}} {n}", esc(reason));
    }
    header(&mut o, "lb_objects_invalid", "gauge", "Objects currently skipped as invalid.");
    let _ = writeln!(o, "lb_objects_invalid {}", state.rejected.len());
    header(
        &mut o,
        "lb_source_invalid_files",
        "gauge",
        "Manifest files whose content is invalid now (file source; their last good objects stay programmed).",
    );
    let _ = writeln!(o, "lb_source_invalid_files {}", state.invalid_files);
    header(
        &mut o,
        "lb_events_total",
        "counter",
        "Kubernetes Events on skipped or left-out Services, by result (exists: another node's agent wrote the same Event).",
    );
    for (result, n) in &state.events {
        let _ = writeln!(o, "lb_events_total{{result=\"{result}\"}} {n}");
    }

    let Some(dp) = datapath else {
        return o;
    };
    datapath_families(&mut o, &dp.global);
    header(
        &mut o,
        "lb_monitor_events_total",
        "counter",
        "lb monitor's events: written to the ring, or lost (over the per-CPU rate, or the ring full).",
    );
    let _ = writeln!(o, "lb_monitor_events_total{{result=\"written\"}} {}", dp.monitor.written);
    let _ = writeln!(o, "lb_monitor_events_total{{result=\"lost\"}} {}", dp.monitor.lost);
    backend_families(&mut o, &dp.backends);
    // Per ServicePort, in label order; counters of ids no longer programmed are left out.
    let mut per_service: Vec<(&ServicePortName, &FlowCounters)> =
        dp.services.iter().filter_map(|(id, st)| p.names.get(id).map(|n| (n.as_ref(), st))).collect();
    per_service.sort_by(|a, b| a.0.cmp(b.0));
    for (name, help, field) in [
        ("lb_service_packets_total", "Packets translated for a ServicePort.", 0),
        ("lb_service_bytes_total", "Bytes translated for a ServicePort.", 1),
        ("lb_service_new_flows_total", "New connections of a ServicePort (backend selected).", 2),
    ] {
        header(&mut o, name, "counter", help);
        for (spn, st) in &per_service {
            let v = [st.packets, st.bytes, st.new_flows][field];
            let _ = writeln!(
                o,
                "{name}{{namespace=\"{}\",service=\"{}\",port=\"{}\",protocol=\"{}\",ip_family=\"{}\"}} {v}",
                esc(&spn.namespace),
                esc(&spn.name),
                esc(&spn.port_name),
                spn.protocol,
                spn.family
            );
        }
    }
    o
}

/// `--metrics-backends`: packets and bytes each backend received, labelled with its endpoint
/// and protocol.
fn backend_families(o: &mut String, backends: &[(lb_common::Backend, FlowCounters)]) {
    if backends.is_empty() {
        return;
    }
    for (name, help, bytes) in [
        ("lb_backend_packets_total", "Packets translated to a backend.", false),
        ("lb_backend_bytes_total", "Bytes translated to a backend.", true),
    ] {
        header(o, name, "counter", help);
        for (be, c) in backends {
            let endpoint = std::net::SocketAddr::new(crate::maps::ip_from16(be.addr), u16::from_be(be.port_be));
            let protocol = match be.proto {
                lb_common::IPPROTO_TCP => "TCP",
                lb_common::IPPROTO_UDP => "UDP",
                _ => "SCTP",
            };
            let v = if bytes { c.bytes } else { c.packets };
            let _ = writeln!(o, "{name}{{backend=\"{endpoint}\",protocol=\"{protocol}\"}} {v}");
        }
    }
}

/// The datapath's counters ([`lb_common::COUNTER_NAMES`]) as families whose sums mean
/// something: the packets, their verdicts (one each: they sum to the packets), the drop reasons
/// (they sum to the drop verdicts), the pass reasons of unusual paths, and the events (new flows,
/// conntrack hits, SNAT, ...), which count packets already counted by a verdict.
fn datapath_families(o: &mut String, global: &[u64]) {
    let named = || lb_common::COUNTER_NAMES.iter().zip(global);
    header(o, "lb_datapath_packets_total", "counter", "Packets seen by the datapath's programs.");
    for (_, v) in named().filter(|(n, _)| **n == "packets") {
        let _ = writeln!(o, "lb_datapath_packets_total {v}");
    }
    for (family, help, label, prefix) in [
        ("lb_datapath_verdicts_total", "Packets by verdict (one per packet).", "verdict", "verdict_"),
        ("lb_datapath_drops_total", "Dropped packets by reason.", "reason", "drop_"),
        ("lb_datapath_pass_reasons_total", "Packets passed untouched on an unusual path, by reason.", "reason", "pass_"),
    ] {
        header(o, family, "counter", help);
        for (name, v) in named().filter_map(|(n, v)| Some((n.strip_prefix(prefix)?, v))) {
            let _ = writeln!(o, "{family}{{{label}=\"{name}\"}} {v}");
        }
    }
    header(o, "lb_datapath_events_total", "counter", "Datapath events (new flows, conntrack hits, SNAT, ...), by event.");
    for (name, v) in named().filter(|(n, _)| **n != "packets" && !["verdict_", "drop_", "pass_"].iter().any(|p| n.starts_with(p)))
    {
        let _ = writeln!(o, "lb_datapath_events_total{{event=\"{name}\"}} {v}");
    }
}

/// The `--metrics-addr` server: `/metrics`, 404 elsewhere.
pub fn metrics_handler(metrics: Arc<Metrics>) -> Handler {
    http::handler(move |req| {
        let metrics = metrics.clone();
        async move {
            if req.path != "/metrics" {
                return Response::not_found();
            }
            // Reading the maps is a few syscalls per entry: off the async workers.
            match tokio::task::spawn_blocking(move || metrics.scrape()).await {
                Ok(body) => Response::new(200, CONTENT_TYPE, body),
                Err(_) => Response::new(500, "text/plain; charset=utf-8", "scrape failed\n"),
            }
        }
    })
}

#[cfg(test)]
#[path = "metrics_tests.rs"]
mod tests;
