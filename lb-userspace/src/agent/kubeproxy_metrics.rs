//! The metrics kube-proxy exports that dashboards and SLOs are built on, under kube-proxy's
//! names, so that a cluster moving from kube-proxy to lb keeps its dashboards: sync duration and
//! last sync time, network programming latency, and the change counters. Plus `lb_build_info`.
//! (Computed by the agent: [`super::metrics::Metrics`]; the programming latency by
//! [`ProgrammingLatency`].)

use std::{
    collections::{HashMap, HashSet},
    fmt::Write as _,
    sync::Arc,
    time::{Duration, SystemTime},
};

use k8s_openapi::jiff::Timestamp;

use crate::model::slice::Slice;

use super::exposition::{Histogram, header, histogram};
use crate::source::ClusterObjects;

/// Buckets of `kubeproxy_sync_proxy_rules_duration_seconds`: kube-proxy's (1 ms doubling to
/// 16 s), so that its dashboards' quantiles read the same.
pub const SYNC_WORK_BUCKETS: &[f64] =
    &[0.001, 0.002, 0.004, 0.008, 0.016, 0.032, 0.064, 0.128, 0.256, 0.512, 1.024, 2.048, 4.096, 8.192, 16.384];

/// Buckets of `kubeproxy_network_programming_duration_seconds`: finer than kube-proxy's at the
/// low end (an eBPF sync takes milliseconds), its range (to 5 minutes) at the top.
pub const PROGRAMMING_BUCKETS: &[f64] =
    &[0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 3.0, 5.0, 10.0, 15.0, 30.0, 60.0, 120.0, 300.0];

/// What kube-proxy's metrics report, as the agent records it.
#[derive(Clone, Debug, PartialEq)]
pub struct KubeProxyState {
    /// The work of each successful sync (kube-proxy's `sync_proxy_rules_duration`).
    pub sync_work: Histogram,
    /// Unix time of the last successful sync.
    pub last_sync_unix: Option<f64>,
    /// Trigger time of an EndpointSlice change → the maps hold it.
    pub programming: Histogram,
    /// Watch events of Services and EndpointSlices (kube source).
    pub service_changes: u64,
    pub endpoint_changes: u64,
}

impl Default for KubeProxyState {
    fn default() -> Self {
        Self {
            sync_work: Histogram::new(SYNC_WORK_BUCKETS),
            last_sync_unix: None,
            programming: Histogram::new(PROGRAMMING_BUCKETS),
            service_changes: 0,
            endpoint_changes: 0,
        }
    }
}

pub(super) fn render(o: &mut String, state: &KubeProxyState) {
    histogram(
        o,
        "kubeproxy_sync_proxy_rules_duration_seconds",
        "The work of one sync of the proxy rules (here: compile, plan and map writes).",
        &state.sync_work,
    );
    header(o, "kubeproxy_sync_proxy_rules_last_timestamp_seconds", "gauge", "The last time the proxy rules were synced.");
    let _ = writeln!(o, "kubeproxy_sync_proxy_rules_last_timestamp_seconds {}", state.last_sync_unix.unwrap_or(0.0));
    histogram(
        o,
        "kubeproxy_network_programming_duration_seconds",
        "From an EndpointSlice's last-change-trigger-time to the datapath holding the change.",
        &state.programming,
    );
    for (name, help, v) in [
        ("kubeproxy_sync_proxy_rules_service_changes_total", "Service changes seen (watch events).", state.service_changes),
        (
            "kubeproxy_sync_proxy_rules_endpoint_changes_total",
            "EndpointSlice changes seen (watch events).",
            state.endpoint_changes,
        ),
    ] {
        header(o, name, "counter", help);
        let _ = writeln!(o, "{name} {v}");
    }
    header(o, "lb_build_info", "gauge", "The agent's version and the commit it was built from (always 1).");
    let _ = writeln!(o, "lb_build_info{{version=\"{}\",commit=\"{}\"}} 1", env!("CARGO_PKG_VERSION"), env!("LB_GIT_COMMIT"));
}

/// Network programming latency as kube-proxy measures it: for each EndpointSlice whose
/// trigger time is new since the last sync, the time from that trigger to the end of the sync
/// that put it in the maps. Trigger times before the agent started are not counted (as
/// kube-proxy ignores those before its tracker started): the first sync would otherwise report
/// the age of every slice in the cluster.
pub(super) struct ProgrammingLatency {
    started: SystemTime,
    /// The trigger time last counted, by EndpointSlice `namespace/name`.
    counted: HashMap<String, Timestamp>,
}

impl ProgrammingLatency {
    pub(super) fn new(started: SystemTime) -> Self {
        Self { started, counted: HashMap::new() }
    }

    /// After a successful sync ending at `now` that applied `objects`, where only the Services
    /// owning `changed` slices changed (`None`: any): the latencies to report. Runs after every
    /// sync, so it looks at the changed Services' slices only (the compile memo knows them),
    /// not at every slice of the cluster.
    pub(super) fn synced(&mut self, objects: &ClusterObjects, changed: Option<&[&Arc<Slice>]>, now: SystemTime) -> Vec<Duration> {
        let Ok(started) = Timestamp::try_from(self.started) else { return Vec::new() };
        let Ok(now_ts) = Timestamp::try_from(now) else { return Vec::new() };
        let candidates: Box<dyn Iterator<Item = &Arc<Slice>>> = match changed {
            Some(c) => Box::new(c.iter().copied()),
            None => Box::new(objects.slices.iter()),
        };
        let mut out = Vec::new();
        for slice in candidates {
            let meta = &slice.metadata;
            let ns = meta.namespace.as_deref().unwrap_or("default");
            let Some(trigger) = slice.trigger_time.as_deref() else { continue };
            let Ok(t) = trigger.parse::<Timestamp>() else { continue };
            if t < started {
                continue;
            }
            let key = format!("{ns}/{}", meta.name.as_deref().unwrap_or_default());
            if self.counted.get(&key) == Some(&t) {
                continue;
            }
            if let Ok(d) = now_ts.duration_since(t).try_into() {
                out.push(d);
            }
            self.counted.insert(key, t);
        }
        // Slices are deleted and recreated under new names: forget those gone, now and then.
        if self.counted.len() > 2 * objects.slices.len() + 64 {
            let live: HashSet<String> = objects
                .slices
                .iter()
                .map(|s| {
                    format!(
                        "{}/{}",
                        s.metadata.namespace.as_deref().unwrap_or("default"),
                        s.metadata.name.as_deref().unwrap_or_default()
                    )
                })
                .collect();
            self.counted.retain(|k, _| live.contains(k));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use crate::model::slice::Slice;

    use super::*;

    fn slice(name: &str, service: &str, trigger: Option<&str>) -> Arc<Slice> {
        let mut s = Slice::default();
        s.metadata.name = Some(name.into());
        s.metadata.namespace = Some("shop".into());
        s.service_name = Some(service.into());
        s.trigger_time = trigger.map(Box::from);
        Arc::new(s)
    }

    #[test]
    fn each_new_trigger_time_after_the_start_is_counted_once() {
        let started: SystemTime = "2026-12-04T10:00:00Z".parse::<Timestamp>().unwrap().into();
        let now: SystemTime = "2026-12-04T10:00:05Z".parse::<Timestamp>().unwrap().into();
        let mut p = ProgrammingLatency::new(started);
        let mut objects = ClusterObjects {
            slices: vec![
                slice("web-a", "web", Some("2026-12-04T10:00:03.5Z")),
                slice("old-a", "old", Some("2026-12-04T09:00:00Z")),
                slice("none-a", "none", None),
                slice("bad-a", "bad", Some("yesterday")),
            ]
            .into(),
            ..ClusterObjects::default()
        };
        assert_eq!(p.synced(&objects, None, now), [Duration::from_millis(1500)]);
        assert!(p.synced(&objects, None, now).is_empty(), "counted once");
        objects.slices[0] = slice("web-a", "web", Some("2026-12-04T10:00:04Z"));
        let other = slice("other-a", "other", None);
        assert!(p.synced(&objects, Some(&[&other]), now).is_empty(), "its Service did not change in this sync");
        assert_eq!(p.synced(&objects, Some(&[&objects.slices[0]]), now), [Duration::from_secs(1)]);
    }
}
