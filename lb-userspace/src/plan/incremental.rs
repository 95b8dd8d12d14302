//! The plan of one sync, kept up to date incrementally: only ServicePorts whose desired state
//! changed are planned again, and the map state is patched rather than rebuilt. Each sync then
//! costs a comparison per ServicePort ([`Planner::plan`]), or only per ServicePort the compile
//! step reports as changed ([`Planner::plan_changed`]), plus work proportional to what changed,
//! where [`map_state`](crate::plan::map_state) costs a full plan of every table.
//!
//! # Equal to the full plan
//! [`Planner::plan`] always leaves [`Planner::state`] equal to what `map_state` gives for the
//! same sequence of desired states (the tests hold it to that), with the same ids:
//! - A ServicePort owns its name (by svc_id) and its selection tables, Maglev chunks and members
//!   (by select_id): nobody else writes them, so they are removed and written whole.
//! - Backends, address markers, a frontend two Services claim and source ranges can come from
//!   several ServicePorts. Each such key keeps every ServicePort's value, and the map holds the
//!   one of the last ServicePort in name order, as the full plan's last write.
//! - Changed ServicePorts are planned in name order, so new ids are allocated in the order the
//!   full plan allocates them; a backend left without users is forgotten only at the end of the
//!   pass (the full plan forgets it only if no ServicePort uses it any more).
//!
//! # What changed
//! The keys a plan may have changed accumulate in [`Planner::pending`] until the caller reports
//! them applied ([`Planner::applied`]), so that a failed apply is retried in full by the next.

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::Arc,
};

use lb_common::{
    ADDR_FILTER_BACKEND, ADDR_FILTER_FRONTEND, Backend, MaglevKey, MemberKey, SelectKey, ServiceKey, ServiceValue, SourceRangeKey,
};

use super::{
    PlanConfig, PlanMemory,
    addr_filter::AddrCounts,
    local_marks::MarkCounts,
    memory::Released,
    service::{maglev_tables, plan_service},
    writers::{ById, ByKey},
};
use crate::{
    compile::memo::Changed,
    maps::{
        MapState,
        touched::{Touched, chunks_of, members_of, slots_of},
    },
    model::{DesiredState, ServicePortName, ServicePortState},
};

/// What one ServicePort contributed to the maps.
#[derive(Debug, Default)]
struct Contribution {
    svc_id: Option<u32>,
    tables: Vec<u32>,
    /// Backend ids (their values are in the state while anyone writes them).
    backends: Vec<u32>,
    /// Frontend and marker keys (their values are in the state while anyone writes them).
    services: Vec<ServiceKey>,
    source_ranges: Vec<SourceRangeKey>,
    /// Words of its policy-Local marks.
    local_marks: Vec<(u32, u64)>,
}

/// The incremental planner (module docs).
pub struct Planner {
    ids: PlanMemory,
    cfg: PlanConfig,
    /// Every planned ServicePort: the state it was planned from and what it wrote.
    /// The state is shared with the compile step's (one copy of each ServicePort's state).
    planned: BTreeMap<Arc<ServicePortName>, (Arc<ServicePortState>, Contribution)>,
    state: MapState,
    /// Keys several ServicePorts may write, with each one's value ([`super::writers`]).
    backends: ById<Backend>,
    services: ByKey<ServiceKey, ServiceValue>,
    source_ranges: ByKey<SourceRangeKey, ()>,
    /// Users of each address in the address filter: frontend keys, backends of ServicePorts and
    /// quarantined backends.
    filter: AddrCounts,
    /// ServicePorts setting each policy-Local mark.
    marks: MarkCounts,
    /// Every planned ServicePort by its svc_id (names for the per-service counters).
    svc_names: BTreeMap<u32, Arc<ServicePortName>>,
    /// Bumped whenever `svc_names` gains, loses or renames an id, so that a reader copies it
    /// only then (at 100,000 ServicePorts a copy per sync cost more than the sync's planning).
    svc_names_version: u64,
    /// Names withdrawn since the version was last read: a replanned ServicePort is withdrawn
    /// and contributed again under the same id and name, which changes nothing.
    withdrawn_names: Vec<(u32, Arc<ServicePortName>)>,
    pending: Touched,
    /// Frontends in `state.services` (keys of a protocol; address markers have none), kept as
    /// the keys come and go: what `lb service list` counts, without a walk per sync.
    frontends: usize,
    /// Ids were adopted: the next pass forgets every id its state does not use, as the full
    /// plan does after adopting.
    adopted: bool,
}

impl Planner {
    /// After a large sync: room in the planner's hash maps for the changes to come
    /// ([`crate::room`]).
    pub fn make_room(&mut self) {
        self.services.make_room();
        self.source_ranges.make_room();
        self.ids.make_room();
    }

    pub fn new(cfg: PlanConfig) -> Self {
        Self {
            ids: PlanMemory::default(),
            cfg,
            planned: BTreeMap::new(),
            state: MapState::default(),
            backends: ById::default(),
            services: ByKey::default(),
            source_ranges: ByKey::default(),
            filter: AddrCounts::default(),
            marks: MarkCounts::default(),
            svc_names: BTreeMap::new(),
            svc_names_version: 0,
            withdrawn_names: Vec::new(),
            pending: Touched { all: true, ..Touched::default() },
            frontends: 0,
            adopted: false,
        }
    }

    /// Learns the ids of a running datapath's maps before the first plan ([`PlanMemory::adopt`]).
    pub fn adopt(&mut self, current: &MapState, desired: &DesiredState) {
        self.ids.adopt(current, desired);
        self.filter.sticky(self.ids.sticky_filter(), true, &mut self.state.addr_filter, &mut self.pending.filter);
        // Maps holding nothing (a fresh start) give no ids to learn, so none to forget after
        // the plan: the walk over every id (`PlanMemory::retain_used`, ~0.9 s at 100,000
        // Services) is skipped.
        self.adopted = current.counts().iter().any(|&n| n > 0);
    }

    /// Plans on the calling thread only (`true`), or computes many new Maglev tables on every
    /// CPU (`false`, the default).
    pub fn set_one_cpu(&mut self, one_cpu: bool) {
        self.ids.maglev.one_cpu = one_cpu;
    }

    /// What the maps should hold for the last planned desired state.
    pub fn state(&self) -> &MapState {
        &self.state
    }

    /// The frontends [`Planner::state`] holds: its `services` keys other than address markers.
    pub fn frontends(&self) -> usize {
        self.frontends
    }

    /// Every planned ServicePort by its svc_id: the id its frontends carry, unless another
    /// ServicePort claims the same frontend.
    pub fn svc_names(&self) -> &BTreeMap<u32, Arc<ServicePortName>> {
        &self.svc_names
    }

    /// Changes whenever [`Planner::svc_names`] does.
    pub fn svc_names_version(&mut self) -> u64 {
        let withdrawn = std::mem::take(&mut self.withdrawn_names);
        if withdrawn.iter().any(|(id, name)| self.svc_names.get(id) != Some(name)) {
            self.svc_names_version += 1;
        }
        self.svc_names_version
    }

    /// Keys that may differ from the maps since the last [`Planner::applied`].
    pub fn pending(&self) -> &Touched {
        &self.pending
    }

    /// Packs the state's B-trees ([`MapState::pack`]): done once, after the first plan (the
    /// largest, every key new), so that the peak of a start holds them packed.
    pub fn pack(&mut self) {
        self.state.pack();
        let planned = std::mem::take(&mut self.planned);
        self.planned = planned.into_iter().collect();
        let names = std::mem::take(&mut self.svc_names);
        self.svc_names = names.into_iter().collect();
    }

    /// The maps now hold [`Planner::state`].
    pub fn applied(&mut self) {
        self.pending = Touched::default();
    }

    /// The quarantined svc ids and backend ids ([`PlanMemory::quarantined_ids`]).
    pub fn quarantined_ids(&self) -> (BTreeSet<u32>, BTreeSet<u32>) {
        self.ids.quarantined_ids()
    }

    /// Frees quarantined ids that nothing names any more ([`PlanMemory::release`]); the released
    /// backends' addresses leave the address filter with the next apply.
    pub fn release(&mut self, svc_in_use: impl FnMut(u32) -> bool, backend_in_use: impl FnMut(u32) -> bool) -> Released {
        let released = self.ids.release(svc_in_use, backend_in_use);
        for addr in released.backends.iter().filter_map(|(_, a)| *a) {
            self.filter.remove(ADDR_FILTER_BACKEND, addr, &mut self.state.addr_filter, &mut self.pending.filter);
        }
        self.filter.sticky(&released.sticky_filter, false, &mut self.state.addr_filter, &mut self.pending.filter);
        released
    }

    /// Brings [`Planner::state`] to the plan of `desired`, comparing every ServicePort with the
    /// one last planned; returns how many were planned again.
    pub fn plan(&mut self, desired: &DesiredState) -> usize {
        self.plan_changed(desired, &Changed::All)
    }

    /// [`Planner::plan`] when only the ServicePorts in `changed` can differ from the last
    /// desired state (what [`CompileMemo`](crate::compile::memo::CompileMemo) reports): only
    /// those are compared.
    pub fn plan_changed(&mut self, desired: &DesiredState, changed: &Changed) -> usize {
        let redo = match changed {
            Changed::All => self.differing(desired),
            Changed::Only(spns) => spns
                .iter()
                .filter(|spn| match (self.planned.get(*spn), desired.services.get(*spn)) {
                    (Some((was, _)), Some(sp)) => was != sp,
                    (None, None) => false,
                    _ => true,
                })
                .cloned()
                .collect(),
        };
        self.replan(desired, &redo);
        redo.len()
    }

    /// Changed, new and removed ServicePorts, in name order (one walk over both maps).
    fn differing(&self, desired: &DesiredState) -> Vec<ServicePortName> {
        use std::cmp::Ordering;
        let mut redo: Vec<ServicePortName> = Vec::new();
        let mut old = self.planned.iter().peekable();
        for (spn, sp) in &desired.services {
            loop {
                match old.peek().map(|(o, _)| o.as_ref().cmp(spn)) {
                    Some(Ordering::Less) => redo.extend(old.next().map(|(gone, _)| ServicePortName::clone(gone))),
                    Some(Ordering::Equal) => {
                        if old.next().is_some_and(|(_, (was, _))| was != sp) {
                            redo.push(spn.clone());
                        }
                        break;
                    }
                    Some(Ordering::Greater) | None => {
                        redo.push(spn.clone());
                        break;
                    }
                }
            }
        }
        redo.extend(old.map(|(gone, _)| ServicePortName::clone(gone)));
        redo
    }

    /// Withdraws and plans again the ServicePorts `redo` (in name order).
    fn replan(&mut self, desired: &DesiredState, redo: &[ServicePortName]) {
        let cfg = self.cfg;
        let tables = redo.iter().filter_map(|spn| desired.services.get(spn)).flat_map(|sp| maglev_tables(sp, &cfg));
        self.ids.maglev.prefill(tables);
        let mut unused_backends = Vec::new();
        for spn in redo {
            // The name stays shared (its writers and ids hold the same copy).
            let mut shared = None;
            if let Some((name, (_, contribution))) = self.planned.remove_entry(spn) {
                self.withdraw(spn, &contribution, &mut unused_backends);
                shared = Some(name);
            }
            match desired.services.get(spn) {
                Some(sp) => {
                    let spn = shared.unwrap_or_else(|| Arc::new(spn.clone()));
                    let contribution = self.contribute(&spn, sp);
                    self.planned.insert(spn, (sp.clone(), contribution));
                }
                None => self.ids.forget_service_port(spn),
            }
        }
        if std::mem::take(&mut self.adopted) {
            for addr in self.ids.retain_used(&self.state, desired) {
                self.filter.add(ADDR_FILTER_BACKEND, addr, &mut self.state.addr_filter, &mut self.pending.filter);
            }
            return;
        }
        for (id, be) in unused_backends {
            // Unless a ServicePort planned later in the pass took it up again.
            if !self.backends.contains(&id) && self.ids.forget_backend(&be) {
                self.filter.add(ADDR_FILTER_BACKEND, be.addr, &mut self.state.addr_filter, &mut self.pending.filter);
            }
        }
        self.ids.end_partial_pass();
    }

    /// Plans `sp` alone and merges its entries into the state.
    fn contribute(&mut self, spn: &Arc<ServicePortName>, sp: &ServicePortState) -> Contribution {
        let mut own = MapState::default();
        plan_service(&mut own, &mut self.ids, spn, sp, &self.cfg);
        let mut tables: BTreeSet<u32> = own.select.keys().map(|k| k.select_id).collect();
        tables.extend(own.maglev.keys().map(|k| k.select_id));
        tables.extend(own.members.keys().map(|k| k.select_id));
        let contribution = Contribution {
            svc_id: own.names.keys().next().copied(),
            tables: tables.into_iter().collect(),
            backends: own.backends.keys().copied().collect(),
            services: own.services.keys().copied().collect(),
            source_ranges: own.source_ranges.into_keys().collect(),
            local_marks: own.local_marks.into_iter().collect(),
        };
        let p = &mut self.pending;
        // Before the first apply every key is compared (`all`): naming each one as well only
        // costs time and memory (1.4 million keys at 100,000 Services, inserted here and freed
        // after the apply).
        let record = !p.all;
        for (id, name) in own.names {
            self.state.names.insert(id, name);
            let withdrawn = self.withdrawn_names.iter().any(|(w, name)| *w == id && name == spn);
            if self.svc_names.insert(id, spn.clone()).is_none_or(|old| old != *spn) && !withdrawn {
                self.svc_names_version += 1;
            }
            if record {
                p.names.insert(id);
            }
        }
        self.state.labels.extend(own.labels);
        for &t in &contribution.tables {
            if record {
                p.tables.insert(t);
            }
        }
        self.state.select.extend(own.select);
        self.state.maglev.extend(own.maglev);
        self.state.members.extend(own.members);
        for (&id, be) in &own.backends {
            let held = self.state.backends.get(&id);
            let now = self.backends.add(spn, id, *be, held);
            self.state.backends.insert(id, now);
            self.filter.add(ADDR_FILTER_BACKEND, be.addr, &mut self.state.addr_filter, &mut p.filter);
            if record {
                p.backends.insert(id);
            }
        }
        for (key, v) in &own.services {
            let now = self.services.add(spn, *key, *v, self.state.services.get(key));
            let added = self.state.services.insert(*key, now).is_none();
            self.frontends += usize::from(added && key.proto != 0);
            self.filter.add(ADDR_FILTER_FRONTEND, key.addr, &mut self.state.addr_filter, &mut p.filter);
            if record {
                p.services.insert(*key);
            }
        }
        self.marks.update(&contribution.local_marks, true, &mut self.state.local_marks, &mut p.local_marks);
        for r in &contribution.source_ranges {
            self.source_ranges.add(spn, *r, (), self.state.source_ranges.get(r));
            self.state.source_ranges.insert(*r, ());
            if record {
                p.source_ranges.insert(*r);
            }
        }
        contribution
    }

    /// Removes what `spn` contributed; backends it was the last user of go to `unused`.
    fn withdraw(&mut self, spn: &ServicePortName, own: &Contribution, unused: &mut Vec<(u32, Backend)>) {
        let p = &mut self.pending;
        let record = !p.all;
        if let Some(id) = own.svc_id {
            self.state.names.remove(&id);
            self.state.labels.remove(&id);
            if let Some(name) = self.svc_names.remove(&id) {
                self.withdrawn_names.push((id, name));
            }
            if record {
                p.names.insert(id);
            }
        }
        for &t in &own.tables {
            let slots: Vec<SelectKey> = self.state.select.range(slots_of(t)).map(|(k, _)| *k).collect();
            let chunks: Vec<MaglevKey> = self.state.maglev.range(chunks_of(t)).map(|(k, _)| *k).collect();
            let members: Vec<MemberKey> = self.state.members.range(members_of(t)).map(|(k, _)| *k).collect();
            for k in &slots {
                self.state.select.remove(k);
            }
            for k in &chunks {
                self.state.maglev.remove(k);
            }
            for k in &members {
                self.state.members.remove(k);
            }
            if record {
                p.tables.insert(t);
            }
        }
        for id in &own.backends {
            // Every writer's value has the same address, port and protocol (the id's key).
            let Some(be) = self.state.backends.get(id).copied() else {
                debug_assert!(false, "backend {id} of {spn} is not in the state");
                continue;
            };
            if let Some(last) = self.backends.remove(spn, *id, Some(&be)) {
                self.state.backends.insert(*id, last);
            } else {
                self.state.backends.remove(id);
                unused.push((*id, be));
            }
            self.filter.remove(ADDR_FILTER_BACKEND, be.addr, &mut self.state.addr_filter, &mut p.filter);
            if record {
                p.backends.insert(*id);
            }
        }
        for key in &own.services {
            if let Some(last) = self.services.remove(spn, *key, self.state.services.get(key)) {
                self.state.services.insert(*key, last);
            } else if self.state.services.remove(key).is_some() && key.proto != 0 {
                self.frontends -= 1;
            }
            self.filter.remove(ADDR_FILTER_FRONTEND, key.addr, &mut self.state.addr_filter, &mut p.filter);
            if record {
                p.services.insert(*key);
            }
        }
        self.marks.update(&own.local_marks, false, &mut self.state.local_marks, &mut p.local_marks);
        for r in &own.source_ranges {
            if self.source_ranges.remove(spn, *r, self.state.source_ranges.get(r)).is_none() {
                self.state.source_ranges.remove(r);
            }
            if record {
                p.source_ranges.insert(*r);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;
    use crate::model::{Endpoint, EndpointSet, Frontend, FrontendKind, Protocol, Selection};

    fn port(name: &str, vip: u8, backends: &[u8]) -> (ServicePortName, Arc<ServicePortState>) {
        let eps: Vec<Endpoint> = backends
            .iter()
            .map(|b| Endpoint {
                addr: Ipv4Addr::new(10, 244, 0, *b).into(),
                port: 8080,
                local: true,
                terminating: false,
                host: false,
            })
            .collect();
        let set = EndpointSet { endpoints: eps.clone().into(), drop_if_empty: false };
        let spn = ServicePortName {
            namespace: "ns".into(),
            name: name.into(),
            port_name: String::new(),
            protocol: Protocol::Tcp,
            family: crate::model::Family::V4,
        };
        let sp = ServicePortState {
            frontends: vec![Frontend { addr: Ipv4Addr::new(10, 96, 0, vip).into(), port: 80, kind: FrontendKind::ClusterIp }],
            internal: set.clone(),
            external: set,
            cluster: eps.clone().into(),
            serving: eps.into(),
            external_snat: true,
            source_ranges: vec![],
            affinity_timeout_s: None,
            selection: Selection::Maglev,
            labels: Default::default(),
        };
        (spn, Arc::new(sp))
    }

    /// Module docs: only changed ServicePorts are planned again; a backend two of them share
    /// stays while either uses it; what a plan touched is what the next apply looks at.
    #[test]
    fn only_changed_service_ports_are_planned_and_shared_backends_stay_while_used() {
        let mut d = DesiredState::default();
        d.services.extend([port("a", 1, &[1, 2]), port("b", 2, &[2, 3])]);
        let mut p = Planner::new(PlanConfig::default());
        assert_eq!(p.plan(&d), 2);
        assert!(p.pending().all, "before the first apply everything is compared");
        p.applied();
        assert_eq!(p.plan(&d), 0, "nothing changed, nothing planned");
        assert!(p.pending().is_empty());
        assert_eq!(p.state().backends.len(), 3);

        // a drops 10.244.0.2, which b still uses; then b goes, and 10.244.0.2 with it.
        d.services.extend([port("a", 1, &[1])]);
        assert_eq!(p.plan(&d), 1);
        assert_eq!(p.state().backends.len(), 3, "b still uses 10.244.0.2");
        assert!(!p.pending().tables.is_empty() && p.pending().services.len() == 2, "a's frontend and marker");
        p.applied();
        d.services.retain(|spn, _| spn.name == "a");
        assert_eq!(p.plan(&d), 1);
        assert_eq!(p.state().backends.len(), 1);
        let left: Vec<[u8; 16]> = p.state().backends.values().map(|b| b.addr).collect();
        assert_eq!(left, vec![lb_common::v4_mapped([10, 244, 0, 1])]);
    }

    fn filter_has(st: &MapState, addr: [u8; 16], which: u32) -> bool {
        let (w, bit) = lb_common::addr_filter_slot(&addr, which);
        st.addr_filter.get(&w).is_some_and(|v| v & bit != 0)
    }

    /// Module docs of `memory` and `addr_filter`: a removed backend's id waits in quarantine,
    /// its address still in the filter (replies of its flows are translated), until a sweep
    /// finds no conntrack entry naming it; then the id is the next one given out and the
    /// address leaves the filter. The incremental filter equals the full computation throughout.
    /// The names version moves when a ServicePort comes or goes, not when one is planned again
    /// with new endpoints (the agent copies the names to its metrics only then).
    #[test]
    fn the_names_version_moves_only_when_service_ports_come_or_go() {
        let mut d = DesiredState::default();
        d.services.extend([port("a", 1, &[1, 2]), port("b", 2, &[3])]);
        let mut p = Planner::new(PlanConfig::default());
        p.plan(&d);
        let v0 = p.svc_names_version();
        d.services.extend([port("a", 1, &[1, 4])]);
        assert_eq!(p.plan(&d), 1);
        assert_eq!(p.svc_names_version(), v0, "a replanned ServicePort keeps its name");
        d.services.extend([port("c", 3, &[5])]);
        p.plan(&d);
        let v1 = p.svc_names_version();
        assert_ne!(v1, v0, "a new ServicePort");
        d.services.remove(&port("b", 2, &[]).0);
        p.plan(&d);
        assert_ne!(p.svc_names_version(), v1, "a ServicePort gone");
        assert_eq!(p.svc_names().len(), 2);
    }

    #[test]
    fn a_freed_backend_id_is_reused_only_after_release_and_its_address_filtered_until_then() {
        let gone = lb_common::v4_mapped([10, 244, 0, 2]);
        let full = |p: &Planner| {
            let quarantined: Vec<[u8; 16]> = p.ids.quarantined_backends().filter_map(|(_, a)| *a).collect();
            crate::plan::addr_filter::words(
                p.state().services.keys().map(|k| &k.addr),
                p.state().backends.values().map(|b| &b.addr).chain(&quarantined),
            )
        };
        let mut d = DesiredState::default();
        d.services.extend([port("a", 1, &[1, 2])]);
        let mut p = Planner::new(PlanConfig::default());
        p.plan(&d);
        let id_gone = *p.state().backends.iter().find(|(_, b)| b.addr == gone).unwrap().0;
        d.services.extend([port("a", 1, &[1])]);
        p.plan(&d);
        assert!(!p.state().backends.contains_key(&id_gone));
        assert!(filter_has(p.state(), gone, ADDR_FILTER_BACKEND), "quarantined: replies still translated");
        assert_eq!(p.state().addr_filter, full(&p));
        // Still named by a conntrack entry: kept.
        let r = p.release(|_| false, |id| id == id_gone);
        assert!(r.backends.is_empty());
        d.services.extend([port("a", 1, &[1, 3])]);
        p.plan(&d);
        assert!(!p.state().backends.contains_key(&id_gone), "not reused while quarantined");
        // Released: gone from the filter, and the next new backend gets the id.
        let r = p.release(|_| false, |_| false);
        assert_eq!(r.backends, vec![(id_gone, Some(gone))]);
        assert!(!filter_has(p.state(), gone, ADDR_FILTER_BACKEND));
        assert!(p.pending().filter.contains(&lb_common::addr_filter_slot(&gone, ADDR_FILTER_BACKEND).0));
        assert_eq!(p.state().addr_filter, full(&p));
        d.services.extend([port("a", 1, &[1, 3, 4])]);
        p.plan(&d);
        let id_new = *p.state().backends.iter().find(|(_, b)| b.addr == lb_common::v4_mapped([10, 244, 0, 4])).unwrap().0;
        assert_eq!(id_new, id_gone, "the lowest free id is given out first");
        assert_eq!(p.state().addr_filter, full(&p));
        // A removed ServicePort's svc_id is quarantined and released the same way.
        let svc_a = *p.state().names.keys().next().unwrap();
        d.services.clear();
        p.plan(&d);
        assert!(p.state().addr_filter.is_empty() || p.state().addr_filter == full(&p));
        let r = p.release(|_| false, |_| false);
        assert_eq!(r.svc_ids, vec![svc_a]);
        assert!(p.state().addr_filter.is_empty(), "nothing left: {:?}", p.state().addr_filter);
    }
}
