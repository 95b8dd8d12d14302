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
//! | `lb_objects_rejected_total` | counter | `reason` = field path, e.g. `spec.ports.port` |
//! | `lb_objects_rejected` | gauge | |
//! | `lb_source_invalid_files` | gauge | |
//! | `lb_datapath_packets_total` | counter | `counter` = [`lb_common::COUNTER_NAMES`] |
//! | `lb_service_packets_total`, `lb_service_bytes_total`, `lb_service_new_flows_total` | counter | `service`, `port`, `protocol`, `ip_family` (`IPv4`, `IPv6`: a dual-stack Service's port is one ServicePort per family) |

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt::Write as _,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::Duration,
};

use lb_common::FlowCounters;
use tracing::debug;

use super::http::{self, Handler, Response};
use crate::{
    maps::{pinned::PinnedMaps, sizes::MapSizes},
    model::{ServicePortName, Skipped},
};

/// Upper bounds of the sync duration buckets, in seconds.
pub const SYNC_DURATION_BUCKETS: &[f64] =
    &[0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0];

/// `reason` of `lb_sync_errors_total`, always exported (0 until it happens).
pub const SYNC_ERROR_REASONS: &[&str] = &["map_full", "map_write", "source", "other"];

pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// A Prometheus histogram with fixed buckets.
#[derive(Clone, Debug, PartialEq)]
pub struct Histogram {
    bounds: &'static [f64],
    /// Non-cumulative count per bucket (the last one is `+Inf`).
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

impl Histogram {
    pub fn new(bounds: &'static [f64]) -> Self {
        Self { bounds, counts: vec![0; bounds.len() + 1], sum: 0.0, count: 0 }
    }

    pub fn observe(&mut self, v: f64) {
        let i = self.bounds.iter().position(|b| v <= *b).unwrap_or(self.bounds.len());
        self.counts[i] += 1;
        self.sum += v;
        self.count += 1;
    }
}

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
    /// Conntrack entries counted by the last sweep (`None` before the first).
    pub conntrack_entries: Option<usize>,
    /// The maps' real capacities (the defaults until the datapath is loaded).
    pub map_sizes: MapSizes,
    /// Map entries rewritten by drift repair.
    pub repaired: u64,
    /// Manifest files whose current content is invalid (file source).
    pub invalid_files: usize,
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
            map_sizes: MapSizes::default(),
            repaired: 0,
            invalid_files: 0,
        }
    }
}

/// The agent's metrics, shared between the sync loop and the metrics server.
#[derive(Debug)]
pub struct Metrics {
    /// Where the datapath counters are read at scrape time (`None`: not exported).
    pin_path: Option<PathBuf>,
    state: Mutex<State>,
}

impl Metrics {
    pub fn new(pin_path: Option<PathBuf>) -> Self {
        Self { pin_path, state: Mutex::new(State::default()) }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A sync succeeded, `latency` after the change it applied was seen.
    pub fn sync_ok(&self, latency: Duration) {
        let mut s = self.lock();
        s.sync_ok += 1;
        s.sync_duration.observe(latency.as_secs_f64());
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

    /// How many manifest files are invalid now (their last good objects stay programmed).
    pub fn set_invalid_files(&self, n: usize) {
        self.lock().invalid_files = n;
    }

    /// Drift repair rewrote `writes` map entries.
    pub fn repaired(&self, writes: usize) {
        self.lock().repaired += writes as u64;
    }

    /// The capacities of the loaded maps.
    pub fn set_map_sizes(&self, sizes: MapSizes) {
        self.lock().map_sizes = sizes;
    }

    /// The conntrack table's fill, as the last sweep counted it.
    pub fn set_conntrack_entries(&self, entries: usize) {
        self.lock().conntrack_entries = Some(entries);
    }

    pub fn snapshot(&self) -> State {
        self.lock().clone()
    }

    /// The exposition, with the datapath counters read now from the pinned maps.
    pub fn scrape(&self) -> String {
        let datapath = self.pin_path.as_deref().and_then(|p| match read_datapath(p) {
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
}

pub fn read_datapath(pin_path: &Path) -> Result<DatapathCounters, crate::maps::MapError> {
    let maps = PinnedMaps::open(pin_path)?;
    Ok(DatapathCounters { global: maps.counters()?, services: maps.service_counters()? })
}

/// A label value, escaped.
fn esc(v: &str) -> String {
    v.replace('\\', r"\\").replace('"', "\\\"").replace('\n', r"\n")
}

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
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
        "Capacity of the conntrack table (entries; two per flow, one per direction).",
    );
    let _ = writeln!(o, "lb_conntrack_capacity {}", state.map_sizes.conntrack);
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
    if let Some(n) = state.conntrack_entries {
        header(&mut o, "lb_conntrack_entries", "gauge", "Conntrack entries counted by the agent's last sweep (every 30 s).");
        let _ = writeln!(o, "lb_conntrack_entries {n}");
    }

    let h = &state.sync_duration;
    header(
        &mut o,
        "lb_sync_duration_seconds",
        "histogram",
        "Time from a change being seen in the source to the maps holding it.",
    );
    let mut cumulative = 0;
    for (bound, n) in h.bounds.iter().zip(&h.counts) {
        cumulative += n;
        let _ = writeln!(o, "lb_sync_duration_seconds_bucket{{le=\"{bound}\"}} {cumulative}");
    }
    let _ = writeln!(o, "lb_sync_duration_seconds_bucket{{le=\"+Inf\"}} {}", h.count);
    let _ = writeln!(o, "lb_sync_duration_seconds_sum {}", h.sum);
    let _ = writeln!(o, "lb_sync_duration_seconds_count {}", h.count);

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
    header(&mut o, "lb_objects_rejected", "gauge", "Objects currently skipped as invalid.");
    let _ = writeln!(o, "lb_objects_rejected {}", state.rejected.len());
    header(
        &mut o,
        "lb_source_invalid_files",
        "gauge",
        "Manifest files whose content is invalid now (file source; their last good objects stay programmed).",
    );
    let _ = writeln!(o, "lb_source_invalid_files {}", state.invalid_files);

    let Some(dp) = datapath else {
        return o;
    };
    header(&mut o, "lb_datapath_packets_total", "counter", "Datapath counters (packets), by counter.");
    for (name, v) in lb_common::COUNTER_NAMES.iter().zip(&dp.global) {
        let _ = writeln!(o, "lb_datapath_packets_total{{counter=\"{name}\"}} {v}");
    }
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
                "{name}{{service=\"{}/{}\",port=\"{}\",protocol=\"{}\",ip_family=\"{}\"}} {v}",
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
mod tests {
    use super::*;
    use crate::model::{Family, Protocol};

    fn spn(ns: &str, name: &str, port: &str, protocol: Protocol) -> ServicePortName {
        ServicePortName { namespace: ns.into(), name: name.into(), port_name: port.into(), protocol, family: Family::V4 }
    }

    fn lines(s: &str) -> Vec<&str> {
        s.lines().filter(|l| !l.starts_with('#')).collect()
    }

    #[test]
    fn a_fresh_agent_exports_zeroes_and_every_error_reason() {
        let out = render(&State::default(), None);
        for want in [
            "lb_service_ports_programmed 0",
            "lb_frontends_programmed 0",
            "lb_backends_programmed 0",
            "lb_sync_duration_seconds_bucket{le=\"+Inf\"} 0",
            "lb_sync_duration_seconds_count 0",
            "lb_sync_total{result=\"ok\"} 0",
            "lb_sync_total{result=\"error\"} 0",
            "lb_sync_errors_total{reason=\"map_full\"} 0",
            "lb_sync_errors_total{reason=\"source\"} 0",
            "lb_objects_rejected 0",
        ] {
            assert!(lines(&out).contains(&want), "missing {want:?} in\n{out}");
        }
        assert!(!out.contains("lb_datapath_packets_total"), "no datapath without pins");
        // Every sample has a TYPE line before it, exactly once per family.
        assert_eq!(out.matches("# TYPE lb_sync_total counter").count(), 1);
        assert!(out.contains("# TYPE lb_sync_duration_seconds histogram"));
        assert!(out.ends_with('\n'));
    }

    #[test]
    fn conntrack_fill_is_exported_once_a_sweep_counted_it() {
        let m = Metrics::new(None);
        let out = render(&m.snapshot(), None);
        assert!(lines(&out).contains(&"lb_conntrack_capacity 131072"), "{out}");
        assert!(lines(&out).contains(&"lb_map_capacity{map=\"LB_MAGLEV\"} 262144"), "{out}");
        m.set_map_sizes(MapSizes::for_services(100_000));
        let out = render(&m.snapshot(), None);
        assert!(lines(&out).contains(&"lb_map_capacity{map=\"LB_MAGLEV\"} 1600000"), "{out}");
        assert!(!out.contains("lb_conntrack_entries"), "no count before the first sweep:\n{out}");
        m.set_conntrack_entries(4_242);
        let out = render(&m.snapshot(), None);
        assert!(lines(&out).contains(&"lb_conntrack_entries 4242"), "{out}");
        assert_eq!(out.matches("# TYPE lb_conntrack_entries gauge").count(), 1);
    }

    #[test]
    fn the_histogram_is_cumulative_with_sum_and_count() {
        let m = Metrics::new(None);
        m.sync_ok(Duration::from_micros(500)); // <= 0.001
        m.sync_ok(Duration::from_millis(20)); // <= 0.025
        m.sync_ok(Duration::from_millis(20));
        m.sync_ok(Duration::from_secs(120)); // +Inf only
        let out = render(&m.snapshot(), None);
        let l = lines(&out);
        for want in [
            "lb_sync_duration_seconds_bucket{le=\"0.001\"} 1",
            "lb_sync_duration_seconds_bucket{le=\"0.01\"} 1",
            "lb_sync_duration_seconds_bucket{le=\"0.025\"} 3",
            "lb_sync_duration_seconds_bucket{le=\"60\"} 3",
            "lb_sync_duration_seconds_bucket{le=\"+Inf\"} 4",
            "lb_sync_duration_seconds_count 4",
            "lb_sync_total{result=\"ok\"} 4",
        ] {
            assert!(l.contains(&want), "missing {want:?} in\n{out}");
        }
        let sum: f64 = l.iter().find_map(|l| l.strip_prefix("lb_sync_duration_seconds_sum ")).unwrap().parse().unwrap();
        assert!((sum - 120.0405).abs() < 1e-9, "{sum}");
        assert!(!out.contains("e-"), "no exponent notation: {out}");
    }

    #[test]
    fn sync_errors_count_by_reason_and_in_the_total() {
        let m = Metrics::new(None);
        m.sync_failed("map_full");
        m.sync_failed("map_full");
        m.sync_failed("source");
        let out = render(&m.snapshot(), None);
        let l = lines(&out);
        assert!(l.contains(&"lb_sync_errors_total{reason=\"map_full\"} 2"), "{out}");
        assert!(l.contains(&"lb_sync_errors_total{reason=\"source\"} 1"), "{out}");
        assert!(l.contains(&"lb_sync_errors_total{reason=\"map_write\"} 0"), "{out}");
        assert!(l.contains(&"lb_sync_total{result=\"error\"} 3"), "{out}");
    }

    #[test]
    fn sync_error_reasons_come_from_the_dataplane_error() {
        use crate::{agent::sync::SyncError, dataplane::DataplaneError, maps::MapError};
        let full = SyncError::Apply(DataplaneError::Map(MapError::Full { name: "LB_SERVICES", wanted: 10, limit: 5 }));
        assert_eq!(full.reason(), "map_full");
        let write = MapError::Write { name: "LB_CONFIG", source: std::io::Error::from_raw_os_error(libc::EPERM) };
        assert_eq!(SyncError::NodeSettings(DataplaneError::Map(write)).reason(), "map_write");
        assert_eq!(SyncError::Apply(DataplaneError::NoObject).reason(), "other");
    }

    #[test]
    fn a_rejected_object_counts_once_while_it_stays_rejected() {
        let m = Metrics::new(None);
        let bad = |object: &str, at: &str, what: &str| Skipped {
            object: object.into(),
            reason: crate::model::Rejection::new(crate::model::RejectedField::PortNumber, at, what),
        };
        let a = bad("Service ns/a", "spec.ports[0].port", "0 is not a port number (1-65535)");
        let b = bad("Service ns/b", "spec.ports[2].port", "70000 is not a port number (1-65535)");
        m.set_rejected(std::slice::from_ref(&a));
        m.set_rejected(std::slice::from_ref(&a));
        m.set_rejected(&[a.clone(), b.clone()]);
        let out = render(&m.snapshot(), None);
        assert!(lines(&out).contains(&"lb_objects_rejected_total{reason=\"spec.ports.port\"} 2"), "{out}");
        assert!(lines(&out).contains(&"lb_objects_rejected 2"), "{out}");
        // Fixed, then broken again: counted again.
        m.set_rejected(&[]);
        assert!(lines(&render(&m.snapshot(), None)).contains(&"lb_objects_rejected 0"));
        m.set_rejected(&[a]);
        let out = render(&m.snapshot(), None);
        assert!(lines(&out).contains(&"lb_objects_rejected_total{reason=\"spec.ports.port\"} 3"), "{out}");
    }

    #[test]
    fn datapath_counters_are_named_and_services_labelled() {
        let m = Metrics::new(None);
        m.set_programmed(Programmed {
            service_ports: 2,
            frontends: 3,
            backends: 4,
            names: [
                (7, Arc::new(spn("default", "kubia", "", Protocol::Tcp))),
                (3, Arc::new(spn("kube-system", "dns", "dns\"udp", Protocol::Udp))),
            ]
            .into(),
        });
        let mut global = vec![0u64; lb_common::CNT_MAX as usize];
        global[lb_common::CNT_PACKETS as usize] = 100;
        global[lb_common::CNT_VERDICT_DNAT as usize] = 42;
        let dp = DatapathCounters {
            global,
            services: vec![
                (7, FlowCounters { packets: 10, bytes: 1000, new_flows: 2 }),
                (3, FlowCounters { packets: 5, bytes: 500, new_flows: 5 }),
                (99, FlowCounters { packets: 1, bytes: 1, new_flows: 1 }), // no longer programmed
            ],
        };
        let out = render(&m.snapshot(), Some(&dp));
        let l = lines(&out);
        for want in [
            "lb_service_ports_programmed 2",
            "lb_frontends_programmed 3",
            "lb_backends_programmed 4",
            "lb_datapath_packets_total{counter=\"packets\"} 100",
            "lb_datapath_packets_total{counter=\"verdict_dnat\"} 42",
            "lb_datapath_packets_total{counter=\"sock_translated\"} 0",
            "lb_service_packets_total{service=\"default/kubia\",port=\"\",protocol=\"TCP\",ip_family=\"IPv4\"} 10",
            "lb_service_bytes_total{service=\"default/kubia\",port=\"\",protocol=\"TCP\",ip_family=\"IPv4\"} 1000",
            "lb_service_new_flows_total{service=\"default/kubia\",port=\"\",protocol=\"TCP\",ip_family=\"IPv4\"} 2",
            "lb_service_packets_total{service=\"kube-system/dns\",port=\"dns\\\"udp\",protocol=\"UDP\",ip_family=\"IPv4\"} 5",
        ] {
            assert!(l.contains(&want), "missing {want:?} in\n{out}");
        }
        assert_eq!(l.iter().filter(|l| l.starts_with("lb_datapath_packets_total")).count(), lb_common::COUNTER_NAMES.len());
        assert_eq!(l.iter().filter(|l| l.starts_with("lb_service_packets_total")).count(), 2);
        // Sorted by labels: default/kubia before kube-system/dns.
        let kubia = out.find("lb_service_packets_total{service=\"default/kubia\"").unwrap();
        let dns = out.find("lb_service_packets_total{service=\"kube-system/dns\"").unwrap();
        assert!(kubia < dns);
    }

    /// Point 55: the two families of a dual-stack Service's port are two series, told apart by
    /// `ip_family` (without it they would be one series exported twice).
    #[test]
    fn dual_stack_service_ports_are_separate_series() {
        let m = Metrics::new(None);
        let v6 = ServicePortName { family: Family::V6, ..spn("default", "kubia", "http", Protocol::Tcp) };
        m.set_programmed(Programmed {
            names: [(1, Arc::new(spn("default", "kubia", "http", Protocol::Tcp))), (2, Arc::new(v6))].into(),
            ..Programmed::default()
        });
        let stats = |packets| FlowCounters { packets, bytes: 0, new_flows: 0 };
        let dp = DatapathCounters { global: vec![0; lb_common::CNT_MAX as usize], services: vec![(1, stats(3)), (2, stats(4))] };
        let out = render(&m.snapshot(), Some(&dp));
        let l = lines(&out);
        for want in [
            "lb_service_packets_total{service=\"default/kubia\",port=\"http\",protocol=\"TCP\",ip_family=\"IPv4\"} 3",
            "lb_service_packets_total{service=\"default/kubia\",port=\"http\",protocol=\"TCP\",ip_family=\"IPv6\"} 4",
        ] {
            assert!(l.contains(&want), "missing {want:?} in\n{out}");
        }
    }

    #[test]
    fn every_sample_line_is_well_formed() {
        let m = Metrics::new(None);
        m.sync_ok(Duration::from_millis(3));
        let reason = crate::model::Rejection::of(crate::model::RejectedField::Spec, "missing");
        m.set_rejected(&[Skipped { object: "Service a/b".into(), reason }]);
        let dp = DatapathCounters { global: vec![1; lb_common::CNT_MAX as usize], services: vec![] };
        let out = render(&m.snapshot(), Some(&dp));
        let mut typed = BTreeSet::new();
        for line in out.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                assert!(typed.insert(rest.split(' ').next().unwrap().to_owned()), "TYPE twice: {line}");
                continue;
            }
            if line.starts_with("# HELP ") {
                continue;
            }
            let (series, value) = line.rsplit_once(' ').expect(line);
            value.parse::<f64>().unwrap_or_else(|_| panic!("bad value in {line:?}"));
            let name = series.split('{').next().unwrap();
            let family = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| name.strip_suffix(s).filter(|f| typed.contains(*f)))
                .unwrap_or(name);
            assert!(typed.contains(family), "sample before its TYPE: {line}");
            assert!(name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'), "{line}");
        }
    }
}
