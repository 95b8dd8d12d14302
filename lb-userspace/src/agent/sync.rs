//! One sync: the source's objects compiled (only the Services that changed), planned (only the
//! ServicePorts that changed) and applied (only the keys the plan touched), with the node's
//! settings written when the node changed.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    sync::Arc,
    time::Instant,
};

use tracing::{debug, info, warn};

use super::{
    AgentConfig,
    metrics::{Metrics, Programmed},
};
use crate::{
    compile::memo::CompileMemo,
    dataplane::{Dataplane, DataplaneError},
    maps::addr16,
    model::{HealthChecks, NodeContext, Skipped},
    plan::Planner,
    source::{ClusterObjects, node::node_context},
};

/// Why a sync failed: the datapath kept the last applied state.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error("writing the node settings (SNAT and hairpin addresses)")]
    NodeSettings(#[source] DataplaneError),
    #[error("applying the plan to the maps")]
    Apply(#[source] DataplaneError),
}

impl SyncError {
    /// The map a state did not fit, and the entries it needed.
    pub fn full(&self) -> Option<(&'static str, usize)> {
        match self {
            Self::Apply(DataplaneError::Map(crate::maps::MapError::Full { name, wanted, .. })) => Some((name, *wanted)),
            _ => None,
        }
    }

    /// What to do about it (the first words of the log line).
    pub fn what_to_do(&self) -> &'static str {
        match self {
            Self::NodeSettings(e) | Self::Apply(e) => e.what_to_do(),
        }
    }

    /// The `reason` label of `lb_sync_errors_total`.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::NodeSettings(e) | Self::Apply(e) => e.reason(),
        }
    }
}

/// Milliseconds to 0.1 (a sync's log lines: the parts are cumulative, compiled, then planned,
/// then written).
fn ms(d: std::time::Duration) -> f64 {
    (d.as_secs_f64() * 1e4).round() / 10.0
}

/// State carried between syncs.
pub(super) struct SyncState {
    /// Compile results of unchanged Services, kept between syncs.
    compile: CompileMemo,
    /// The map state, planned again only for ServicePorts that changed.
    pub(super) planner: Planner,
    /// No sync has been applied yet (the planner adopts the pinned ids at the first).
    pub(super) first: bool,
    /// Invalid objects of the last sync (each is logged when it first shows).
    pub(super) rejected: Vec<Skipped>,
    pub(super) node: Option<NodeContext>,
    /// Health-check node ports of the last applied state.
    pub(super) health_checks: HealthChecks,
    /// Services (`namespace/name`) the last compile found changed; `None`: possibly all.
    pub(super) changed_services: Option<BTreeSet<String>>,
    /// Services left out because they do not fit (`agent::fit`), with the full map and why.
    pub(super) left_out: BTreeMap<String, (&'static str, String)>,
    /// The planner's names version the metrics hold (`Planner::svc_names_version`).
    names_version: Option<u64>,
    /// A large sync happened since the last [`SyncState::release_freed_memory`].
    large_sync: bool,
    metrics: Arc<Metrics>,
}

/// A Service's `namespace/name`, the key of [`SyncState::left_out`].
pub(super) fn service_key(svc: &k8s_openapi::api::core::v1::Service) -> String {
    format!("{}/{}", svc.metadata.namespace.as_deref().unwrap_or("default"), svc.metadata.name.as_deref().unwrap_or_default())
}

impl SyncState {
    pub(super) fn new(plan: crate::plan::PlanConfig, metrics: Arc<Metrics>) -> Self {
        Self {
            compile: CompileMemo::default(),
            planner: Planner::new(plan),
            first: true,
            rejected: Vec::new(),
            node: None,
            health_checks: HealthChecks::new(),
            changed_services: None,
            left_out: BTreeMap::new(),
            names_version: None,
            large_sync: false,
            metrics,
        }
    }

    /// The EndpointSlices of the Services the last compile found changed; `None`: possibly
    /// any (look at every slice).
    pub(super) fn changed_slices(&self) -> Option<Vec<&Arc<crate::model::slice::Slice>>> {
        let changed = self.changed_services.as_ref()?;
        Some(changed.iter().filter_map(|s| s.split_once('/')).flat_map(|(ns, name)| self.compile.slices_of(ns, name)).collect())
    }

    /// Compiles and plans `objects` without writing anything, so that the first
    /// [`SyncState::apply`] compiles and plans only what differs from them (`agent::ahead`).
    /// Only before the first apply, and only on maps that hold nothing: with no ids to adopt,
    /// planning before the adoption plans what planning after it would.
    pub(super) fn prepare(&mut self, node: &NodeContext, objects: &ClusterObjects) -> usize {
        debug_assert!(self.first);
        let out = self.compile.compile_logged(&objects.services, &objects.slices, None, node);
        // The lists still streaming in need a CPU of their own.
        self.planner.set_one_cpu(true);
        let replanned = self.planner.plan_changed(out.desired, &out.changed);
        self.planner.set_one_cpu(false);
        replanned
    }

    /// Compiles, plans and applies `objects` without the Services in `without`.
    pub(super) fn apply(
        &mut self,
        dp: &mut Dataplane,
        cfg: &AgentConfig,
        objects: &ClusterObjects,
        without: &BTreeSet<String>,
    ) -> Result<(), SyncError> {
        let started = Instant::now();
        let node = node_of(cfg, objects);
        if self.node.as_ref() != Some(&node) {
            let settings = node_config(&node, (cfg.hairpin_addr, cfg.hairpin6_addr), cfg.snat_ports);
            dp.set_config(&settings).map_err(SyncError::NodeSettings)?;
            self.node = Some(node.clone());
        }
        // Both families into one state (point 55): one set of maps holds IPv4 and IPv6.
        let kept: Vec<Arc<k8s_openapi::api::core::v1::Service>>;
        let services = if without.is_empty() {
            &objects.services
        } else {
            kept = objects.services.iter().filter(|s| !without.contains(&service_key(s))).cloned().collect();
            &kept
        };
        // A change log describes the lists as the source gave them, not without some Services.
        let changes = objects.changes.as_ref().filter(|_| without.is_empty());
        let out = self.compile.compile_logged(services, &objects.slices, changes, &node);
        let compiled = started.elapsed();
        let found_by = out.found_by;
        self.changed_services = match &out.changed {
            crate::compile::memo::Changed::All => None,
            crate::compile::memo::Changed::Only(spns) => {
                Some(spns.iter().map(|spn| format!("{}/{}", spn.namespace, spn.name)).collect())
            }
        };
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
        let planned = started.elapsed();
        debug!(replanned, compiled_ms = ms(compiled), planned_ms = ms(planned), "planned");
        self.health_checks.clone_from(out.health_checks);
        if replanned == 0 && self.planner.pending().is_empty() {
            return Ok(());
        }
        if self.first {
            self.planner.pack();
            crate::heap::release_free_memory();
        }
        let state = self.planner.state();
        let writes = dp.apply_touched(state, self.planner.pending()).map_err(SyncError::Apply)?;
        let applied = started.elapsed();
        self.planner.applied();
        self.first = false;
        let version = self.planner.svc_names_version();
        let state = self.planner.state();
        // `frontends` as `lb service list` and `lb_frontends_programmed` count them (address
        // markers are not frontends).
        let frontends = self.planner.frontends();
        if self.names_version == Some(version) {
            self.metrics.set_programmed_counts(desired.services.len(), frontends, state.backends.len());
        } else {
            self.metrics.set_programmed(Programmed {
                service_ports: desired.services.len(),
                frontends,
                backends: state.backends.len(),
                names: self.planner.svc_names().clone(),
            });
            self.names_version = Some(version);
        }
        info!(
            service_ports = desired.services.len(),
            replanned,
            frontends,
            backends = state.backends.len(),
            writes,
            took_ms = ms(started.elapsed()),
            compiled_ms = ms(compiled),
            %found_by,
            planned_ms = ms(planned),
            written_ms = ms(applied),
            "synced"
        );
        if found_by == crate::compile::memo::FoundBy::All || writes >= LARGE_SYNC_WRITES {
            self.compile.make_room();
            self.planner.make_room();
            self.large_sync = true;
        }
        Ok(())
    }
}

impl SyncState {
    /// After a conntrack sweep: frees the quarantined ids no remaining entry names (nor the
    /// maps), zeroes their counters, and applies what that changed (the address filter).
    pub(super) fn release_ids(
        &mut self,
        dp: &mut Dataplane,
        sweep: &crate::dataplane::conntrack::Sweep,
    ) -> Result<usize, SyncError> {
        if self.first {
            return Ok(0);
        }
        // Only the quarantined ids are asked about, one lookup each (a frontend's svc_id is the
        // key of its Service's name; the frontends' ids are collected only for an id without
        // one), instead of sets of every id in the maps: 1,000,000 backends at 100,000
        // Services, every sweep, delayed the changes that arrived meanwhile by ~100 ms.
        let released = {
            let maps = dp.state();
            let mut frontend_ids = None;
            self.planner.release(
                |id| svc_id_in_use(maps, &sweep.svc_ids, &mut frontend_ids, id),
                |id| backend_id_in_use(maps, &sweep.backend_ids, id),
            )
        };
        self.apply_released(dp, &released)
    }

    /// After a plan taken back before it reached the maps (a Service that did not fit, left out
    /// again): frees the ids that plan gave out. They were in no map and in no quarantine
    /// `before` it and are in no map now, so no conntrack entry can name them; without this
    /// every attempt would use up ids until the next conntrack sweep.
    pub(super) fn forget_unprogrammed(&mut self, dp: &mut Dataplane, before: &IdsInUse) -> Result<(), SyncError> {
        let in_use = IdsInUse::of(dp.state(), (before.svc_ids.clone(), before.backend_ids.clone()));
        self.release_unused(dp, &in_use).map(|_| ())
    }

    /// Frees the quarantined ids `in_use` does not hold, zeroes their counters, and applies
    /// what that changed (the address filter). Returns how many ids were freed.
    fn release_unused(&mut self, dp: &mut Dataplane, in_use: &IdsInUse) -> Result<usize, SyncError> {
        let released = self.planner.release(|id| in_use.svc_ids.contains(&id), |id| in_use.backend_ids.contains(&id));
        self.apply_released(dp, &released)
    }

    /// Zeroes the counters of `released` ids and applies what their release changed (the
    /// address filter). Returns how many ids were freed.
    fn apply_released(&mut self, dp: &mut Dataplane, released: &crate::plan::memory::Released) -> Result<usize, SyncError> {
        dp.zero_counters(released).map_err(SyncError::Apply)?;
        if !self.planner.pending().is_empty() {
            dp.apply_touched(self.planner.state(), self.planner.pending()).map_err(SyncError::Apply)?;
            self.planner.applied();
        }
        Ok(released.svc_ids.len() + released.backends.len())
    }

    /// The ids in use before a plan that may be taken back: `quarantined` as it was before
    /// that plan ([`crate::plan::Planner::quarantined_ids`], cheap to take before every sync)
    /// and what the maps hold (unchanged by a plan that did not fit; read only then).
    pub(super) fn ids_in_use(dp: &Dataplane, quarantined: (BTreeSet<u32>, BTreeSet<u32>)) -> IdsInUse {
        IdsInUse::of(dp.state(), quarantined)
    }
}

/// A sync with at least this many map writes (a first sync, a refill after a growth) frees
/// enough to be worth [`SyncState::release_freed_memory`].
const LARGE_SYNC_WRITES: usize = 10_000;

impl SyncState {
    /// After a large sync, once what it worked with is dropped (the agent calls this at the
    /// end of each turn of its loop, after the synced snapshot and a grown datapath's old
    /// state are gone): hands the memory it freed back to the kernel and sorts glibc's free
    /// lists now rather than at the next change. glibc leaves freed blocks in an unsorted list
    /// (`malloc_trim` moves its fast lists there too), which each later allocation that finds
    /// no exact fit sorts, at most 10,000 blocks a call: after a sync of 100,000 Services the
    /// first change's compile made the allocations that sorted millions of them (15–20 ms of
    /// its 21 ms p99, against 0.1 ms for the next changes). Large-block requests that no free
    /// block fits exactly sort the whole list here (22 ms at 100,000 Services; a sorted list
    /// makes each request a few hundred nanoseconds).
    pub(super) fn release_freed_memory(&mut self) {
        if !std::mem::take(&mut self.large_sync) {
            return;
        }
        #[cfg(all(target_os = "linux", target_env = "gnu"))]
        // SAFETY: malloc_trim only walks and releases the allocator's own free memory; each
        // block allocated is freed at once, untouched.
        unsafe {
            libc::malloc_trim(0);
            // Below the mmap threshold (128 KiB), in the large-block range; black_box keeps
            // the pair from being optimised away.
            for _ in 0..SORT_FREE_LISTS_REQUESTS {
                libc::free(std::hint::black_box(libc::malloc(100_000)));
            }
        }
    }
}

/// Requests that sort glibc's unsorted free list after a large sync ([`SyncState::release_freed_memory`]):
/// each sorts up to 10,000 blocks, so up to 20 million.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const SORT_FREE_LISTS_REQUESTS: usize = 2_000;

/// Svc ids and backend ids that something may name: programmed in the maps, or named elsewhere
/// (in quarantine, or by a conntrack entry).
pub(super) struct IdsInUse {
    svc_ids: BTreeSet<u32>,
    backend_ids: BTreeSet<u32>,
}

impl IdsInUse {
    /// The ids `maps` holds, and `also` (svc ids, backend ids).
    fn of(maps: &crate::maps::MapState, also: (BTreeSet<u32>, BTreeSet<u32>)) -> Self {
        let (mut svc_ids, mut backend_ids) = also;
        svc_ids.extend(maps.svc_ids());
        backend_ids.extend(maps.backends.keys().copied());
        Self { svc_ids, backend_ids }
    }
}

/// `id` is a svc_id that `maps` holds (a name, or a frontend's value) or that `also` names.
/// `frontend_ids` caches the frontends' ids, collected at the first id without a name.
fn svc_id_in_use(
    maps: &crate::maps::MapState,
    also: &std::collections::HashSet<u32>,
    frontend_ids: &mut Option<BTreeSet<u32>>,
    id: u32,
) -> bool {
    also.contains(&id)
        || maps.names.contains_key(&id)
        || frontend_ids.get_or_insert_with(|| maps.services.values().map(|v| v.svc_id).collect()).contains(&id)
}

/// `id` is a backend id that `maps` holds or that `also` names.
fn backend_id_in_use(maps: &crate::maps::MapState, also: &std::collections::HashSet<u32>, id: u32) -> bool {
    also.contains(&id) || maps.backends.contains_key(&id)
}

/// What the compile step knows of this node: the Node object's and the agent's settings.
pub(super) fn node_of(cfg: &AgentConfig, objects: &ClusterObjects) -> NodeContext {
    let mut node = node_context(&cfg.node_name, &cfg.node_addresses, &objects.nodes);
    node.external_ip_cidrs.clone_from(&cfg.external_ip_cidrs);
    node.lb_ip_cidrs.clone_from(&cfg.lb_ip_cidrs);
    node
}

pub(super) fn node_eligible(node_name: &str, nodes: &[impl std::borrow::Borrow<k8s_openapi::api::core::v1::Node>]) -> bool {
    !nodes.iter().map(std::borrow::Borrow::borrow).any(|n: &k8s_openapi::api::core::v1::Node| {
        let tainted =
            n.spec.as_ref().and_then(|s| s.taints.as_ref()).is_some_and(|t| t.iter().any(|t| t.key == TO_BE_DELETED_TAINT));
        n.metadata.name.as_deref() == Some(node_name) && (n.metadata.deletion_timestamp.is_some() || tainted)
    })
}

/// The taint the cluster autoscaler puts on a node it is about to remove; kube-proxy's
/// `/healthz` then answers 503 so that load balancers drain the node first.
const TO_BE_DELETED_TAINT: &str = "ToBeDeletedByClusterAutoscaler";

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

    use k8s_openapi::api::core::v1::{Node, Service};
    use serde_json::json;

    use super::*;
    use crate::{
        agent::DEFAULT_HAIRPIN6_ADDR,
        plan::{PlanConfig, PlanMemory, map_state},
    };

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
        let node = NodeContext {
            external_ip_cidrs: None,
            lb_ip_cidrs: None,
            name: "n".into(),
            addresses: vec!["192.168.0.10".parse().unwrap()],
            zone: None,
        };
        let desired = crate::compile::compile(&services, &[] as &[crate::model::slice::Slice], &node, crate::model::Family::V4);
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
            external_ip_cidrs: None,
            lb_ip_cidrs: None,
            name: "n".into(),
            addresses: vec!["192.168.0.10".parse().unwrap(), "fd00::10".parse().unwrap()],
            zone: None,
        };
        let (desired, _) = crate::compile::compile_all(&[web], &[] as &[crate::model::slice::Slice], &node);
        let mut planner = Planner::new(PlanConfig::default());
        planner.plan(&desired);
        let state = planner.state();
        assert_eq!(state, &map_state(&desired, &mut PlanMemory::default(), &PlanConfig::default()));
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
            external_ip_cidrs: None,
            lb_ip_cidrs: None,
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

    /// Point 50, as kube-proxy: the cluster autoscaler's deletion taint makes the node ineligible
    /// too (other taints do not).
    #[test]
    fn point_50_a_node_the_autoscaler_is_removing_is_not_eligible() {
        let tainted = |name: &str, key: &str| -> Node {
            serde_json::from_value(json!({
                "metadata": { "name": name },
                "spec": { "taints": [{ "key": key, "value": "1700000000", "effect": "NoSchedule" }] }
            }))
            .unwrap()
        };
        assert!(!node_eligible("a", &[tainted("a", "ToBeDeletedByClusterAutoscaler")]));
        assert!(node_eligible("a", &[tainted("a", "node.kubernetes.io/unschedulable")]));
        assert!(node_eligible("a", &[tainted("b", "ToBeDeletedByClusterAutoscaler")]));
    }

    /// The per-id lookups the conntrack sweep's release uses answer as the sets of every id
    /// in the maps did.
    #[test]
    fn ids_in_use_looked_up_one_by_one_match_the_sets_of_every_id() {
        use lb_common::{Backend, ServiceKey, ServiceValue, SvcName};
        let mut maps = crate::maps::MapState::default();
        let name = Arc::new(SvcName::default());
        maps.names.insert(1, name.clone());
        maps.names.insert(2, name);
        let key = |port: u16| ServiceKey { addr: [0; 16], port_be: port.to_be(), proto: 6, _pad: 0 };
        maps.services.insert(key(80), ServiceValue { svc_id: 1, ..ServiceValue::default() });
        // A frontend whose id has no name (maps written by an older agent) and a marker.
        maps.services.insert(key(81), ServiceValue { svc_id: 7, ..ServiceValue::default() });
        maps.services.insert(key(0), ServiceValue { flags: lb_common::SVC_F_ADDR_MARKER, ..ServiceValue::default() });
        maps.backends.insert(5, Backend::default());
        maps.backends.insert(6, Backend::default());
        let (svc_also, backend_also): (std::collections::HashSet<u32>, std::collections::HashSet<u32>) =
            ([9].into(), [11].into());
        let sets = IdsInUse::of(&maps, (svc_also.iter().copied().collect(), backend_also.iter().copied().collect()));
        let mut frontend_ids = None;
        for id in 0..16 {
            assert_eq!(svc_id_in_use(&maps, &svc_also, &mut frontend_ids, id), sets.svc_ids.contains(&id), "svc_id {id}");
            assert_eq!(backend_id_in_use(&maps, &backend_also, id), sets.backend_ids.contains(&id), "backend id {id}");
        }
    }
}
