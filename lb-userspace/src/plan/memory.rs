//! What planning remembers from one plan to the next ([`PlanMemory`]): the ids it gave out,
//! stable across applies and restarts, and the Maglev tables of the endpoint sets it saw.
//!
//! - `svc_id`: one per ServicePort (affinity scope, per-service counters).
//! - `select_id`: one per (ServicePort, endpoint set) table ([`SetClass`]); frontends of the
//!   same class share a selection table.
//! - backend id: one per (address, port, protocol), shared by every service that uses it; id 0
//!   is never allocated ([`lb_common::BACKEND_ID_NONE`]).
//!
//! svc_ids and backend ids are dense: they index the datapath's arrays (`LB_BACKENDS` and the
//! per-CPU counters), so a freed id is given out again, lowest first. Not at once: a freed id
//! waits in quarantine until a conntrack sweep has seen no entry that names it
//! ([`PlanMemory::release`]); until then a UDP flow's membership check or a counter could
//! mistake the new owner for the old. A quarantined backend's address also stays in the address
//! filter, so replies of its established flows are still translated (see `addr_filter`).
//! Select ids are not dense (they only key hash maps) and are never reused within a process.
//!
//! A restarted agent re-learns the ids of what is already programmed from the pinned maps
//! ([`PlanMemory::adopt`]), so adopting a running datapath rewrites nothing that is already
//! right; ids below the highest one that are not programmed start in quarantine (a conntrack
//! entry may still name them).

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
    sync::Arc,
};

use lb_common::Backend;

use super::{HashMap, HashSet, keys::service_key};
use crate::{
    maps::{MapState, ip_from16},
    model::{DesiredState, Endpoint, Protocol, ServicePortName},
};

/// Which endpoint set of a ServicePort a selection table serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SetClass {
    Internal,
    External,
    /// The Cluster set of a service whose external and internal sets both differ from it.
    Cluster,
    /// The serving endpoints (members only, no slots) of a service whose serving set differs
    /// from its internal and external sets (point 57).
    Serving,
}

/// The ids of one ServicePort (0: none given yet; neither kind of id is ever 0).
#[derive(Clone, Copy, Debug, Default)]
struct PortIds {
    svc: u32,
    /// By [`SetClass`].
    select: [u32; 4],
}

/// Dense ids: the lowest free one is given out first; a freed id is quarantined until a sweep
/// releases it (module docs).
#[derive(Clone, Debug)]
pub struct DensePool<T> {
    /// Above every id ever given out.
    next: u32,
    free: BTreeSet<u32>,
    /// Freed ids, with what the id named (the backend, for its address).
    quarantined: BTreeMap<u32, T>,
}

impl<T> Default for DensePool<T> {
    fn default() -> Self {
        Self { next: 1, free: BTreeSet::new(), quarantined: BTreeMap::new() }
    }
}

impl<T: Clone> DensePool<T> {
    fn take(&mut self) -> u32 {
        if let Some(id) = self.free.pop_first() {
            return id;
        }
        let id = self.next;
        self.next += 1;
        id
    }

    fn quarantine(&mut self, id: u32, what: T) {
        self.quarantined.insert(id, what);
    }

    /// Ids known in use (adopted): everything below them that is not in use is quarantined
    /// with `unknown`.
    fn adopt(&mut self, used: &BTreeSet<u32>, unknown: T) {
        let top = used.last().map_or(0, |id| id + 1).max(self.next);
        for id in self.next..top {
            if !used.contains(&id) {
                self.quarantined.insert(id, unknown.clone());
            }
        }
        self.next = top.max(1);
        self.free.retain(|id| !used.contains(id));
    }

    /// Frees every quarantined id for which `may_free` holds; returns them with what they named.
    fn release(&mut self, mut may_free: impl FnMut(u32) -> bool) -> Vec<(u32, T)> {
        let out: Vec<(u32, T)> =
            self.quarantined.iter().filter(|(id, _)| may_free(**id)).map(|(id, t)| (*id, t.clone())).collect();
        for (id, _) in &out {
            self.quarantined.remove(id);
            self.free.insert(*id);
        }
        out
    }

    pub fn quarantined(&self) -> impl Iterator<Item = (&u32, &T)> {
        self.quarantined.iter()
    }
}

/// Ids a sweep found no conntrack entry naming, now free for reuse: their counters must be
/// zeroed before a new owner counts on them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Released {
    pub svc_ids: Vec<u32>,
    pub backends: Vec<(u32, Option<[u8; 16]>)>,
    /// The adopted filter words, no longer kept once no id of unknown owner is quarantined.
    pub sticky_filter: BTreeMap<u32, u64>,
}

/// The ids given out and the Maglev tables computed, kept between plans.
#[derive(Clone, Debug)]
pub struct PlanMemory {
    /// Each ServicePort's ids, under the name the planner shares (one copy of each name).
    ports: HashMap<Arc<ServicePortName>, PortIds>,
    backend: HashMap<(IpAddr, u16, Protocol), u32>,
    svc_pool: DensePool<()>,
    /// With the quarantined backend's address (`None`: an adopted id of unknown owner).
    backend_pool: DensePool<Option<[u8; 16]>>,
    next_select: u32,
    /// The pinned address filter's words at adoption, kept set while ids of unknown owner are
    /// quarantined (see [`PlanMemory::adopt`]).
    sticky_filter: BTreeMap<u32, u64>,
    /// Maglev tables of the last plan, so that an unchanged endpoint set costs no recompute.
    pub(super) maglev: super::maglev::TableCache,
}

impl Default for PlanMemory {
    fn default() -> Self {
        Self {
            ports: HashMap::default(),
            backend: HashMap::default(),
            svc_pool: DensePool::default(),
            backend_pool: DensePool::default(),
            next_select: 1,
            sticky_filter: BTreeMap::new(),
            maglev: super::maglev::TableCache::default(),
        }
    }
}

impl PlanMemory {
    /// Room for the changes to come ([`crate::room`]).
    pub fn make_room(&mut self) {
        crate::room::make_room(&mut self.ports);
        crate::room::make_room(&mut self.backend);
        self.maglev.make_room();
    }

    /// Learns the ids already in use in `current` (read from pinned maps) for the objects of
    /// `desired` (their own and Cluster tables), so that re-planning the same state yields the
    /// same entries. Ids of pinned objects not adopted are never allocated again.
    pub fn adopt(&mut self, current: &MapState, desired: &DesiredState) {
        for (id, be) in &current.backends {
            if let Some(proto) = Protocol::from_number(be.proto) {
                self.backend.insert((ip_from16(be.addr), u16::from_be(be.port_be), proto), *id);
            }
        }
        self.backend_pool.adopt(&current.backends.keys().copied().collect(), None);
        // Backends quarantined by the previous agent are among the ids of unknown owner: their
        // addresses are not known, so the pinned filter's bits stay set until those ids are
        // released.
        if self.backend_pool.quarantined().any(|(_, addr)| addr.is_none()) {
            self.sticky_filter.clone_from(&current.addr_filter);
        }
        let svc_ids: BTreeSet<u32> = current.services.values().map(|v| v.svc_id).chain(current.names.keys().copied()).collect();
        self.svc_pool.adopt(&svc_ids, ());
        // Every pinned table's id, whoever points at it (a frontend's own or Cluster table, or
        // a table left by an interrupted apply), stays taken: a new table given one of them
        // would have its slots written (step 2) while old values still point at it (step 3).
        self.next_select = self.next_select.max(next_select_id(current));
        // An id is reused only by the first desired ServicePort that claims it, and ClusterIP
        // frontends (unique to their service) claim first: a NodePort that moved from one
        // service to another while the agent was down must not merge the two.
        let mut claimed_svc: HashSet<u32> = self.ports.values().map(|p| p.svc).filter(|&id| id != 0).collect();
        let mut claimed_select: HashSet<u32> = self.ports.values().flat_map(|p| p.select).filter(|&id| id != 0).collect();
        for external_pass in [false, true] {
            for (spn, sp) in &desired.services {
                for fe in sp.frontends.iter().filter(|f| f.kind.is_external() == external_pass) {
                    let key = service_key(fe.addr, fe.port, spn.protocol);
                    let Some(v) = current.services.get(&key) else {
                        continue;
                    };
                    if self.ports.get(spn).is_none_or(|p| p.svc == 0) && claimed_svc.insert(v.svc_id) {
                        self.entry(spn, || Arc::new(spn.clone())).svc = v.svc_id;
                    }
                    let class = if fe.kind.is_external() { SetClass::External } else { SetClass::Internal };
                    self.adopt_select(spn, class, v.select_id, &mut claimed_select);
                    // A separate Cluster table (the other two sets both differ from the Cluster
                    // set). One equal to the internal table has the internal frontends' id,
                    // claimed as Internal in the first pass.
                    if fe.kind.is_external() && v.cluster_select_id != v.select_id {
                        self.adopt_select(spn, SetClass::Cluster, v.cluster_select_id, &mut claimed_select);
                    }
                }
            }
        }
        // A separate serving table (point 57), once every slot table above is claimed: a serving
        // id equal to one of them is that table. 0, from an older agent, is no table.
        for (spn, sp) in &desired.services {
            for fe in &sp.frontends {
                let Some(v) = current.services.get(&service_key(fe.addr, fe.port, spn.protocol)) else {
                    continue;
                };
                if v.serving_select_id != 0 && self.ports.get(spn).is_some_and(|p| p.svc == v.svc_id) {
                    self.adopt_select(spn, SetClass::Serving, v.serving_select_id, &mut claimed_select);
                }
            }
        }
    }

    /// Gives table `id` to `(spn, class)` unless either already has its table.
    fn adopt_select(&mut self, spn: &ServicePortName, class: SetClass, id: u32, claimed: &mut HashSet<u32>) {
        if self.ports.get(spn).is_none_or(|p| p.select[class as usize] == 0) && claimed.insert(id) {
            self.entry(spn, || Arc::new(spn.clone())).select[class as usize] = id;
        }
    }

    /// `spn`'s entry, made (with no ids, under the name `shared` gives) if it has none.
    fn entry(&mut self, spn: &ServicePortName, shared: impl FnOnce() -> Arc<ServicePortName>) -> &mut PortIds {
        if !self.ports.contains_key(spn) {
            self.ports.insert(shared(), PortIds::default());
        }
        self.ports.get_mut(spn).expect("just inserted")
    }

    pub(super) fn svc_id(&mut self, spn: &Arc<ServicePortName>) -> u32 {
        if let Some(p) = self.ports.get(spn.as_ref()).filter(|p| p.svc != 0) {
            return p.svc;
        }
        let id = self.svc_pool.take();
        self.entry(spn, || spn.clone()).svc = id;
        id
    }

    pub(super) fn select_id(&mut self, spn: &Arc<ServicePortName>, class: SetClass) -> u32 {
        if let Some(&id) = self.ports.get(spn.as_ref()).map(|p| &p.select[class as usize]).filter(|&&id| id != 0) {
            return id;
        }
        let id = self.next_select;
        self.next_select += 1;
        self.entry(spn, || spn.clone()).select[class as usize] = id;
        id
    }

    pub(super) fn backend_id(&mut self, ep: &Endpoint, proto: Protocol) -> u32 {
        let key = (ep.addr, ep.port, proto);
        if let Some(id) = self.backend.get(&key) {
            return *id;
        }
        let id = self.backend_pool.take();
        self.backend.insert(key, id);
        id
    }

    /// Forgets the svc_id and table ids of ServicePort `spn` (gone from the desired state).
    pub(crate) fn forget_service_port(&mut self, spn: &ServicePortName) {
        if let Some(p) = self.ports.remove(spn).filter(|p| p.svc != 0) {
            self.svc_pool.quarantine(p.svc, ());
        }
    }

    /// Forgets the id of a backend no longer in the maps (a later reuse of its address gets a
    /// new id); the id is quarantined. Returns whether it was.
    pub(crate) fn forget_backend(&mut self, be: &Backend) -> bool {
        let Some(proto) = Protocol::from_number(be.proto) else {
            return false;
        };
        let Some(id) = self.backend.remove(&(ip_from16(be.addr), u16::from_be(be.port_be), proto)) else {
            return false;
        };
        self.backend_pool.quarantine(id, Some(be.addr));
        true
    }

    /// Quarantined backend ids and addresses (module docs): the addresses stay in the address
    /// filter.
    pub fn quarantined_backends(&self) -> impl Iterator<Item = (&u32, &Option<[u8; 16]>)> {
        self.backend_pool.quarantined()
    }

    /// The quarantined svc ids and backend ids.
    pub fn quarantined_ids(&self) -> (BTreeSet<u32>, BTreeSet<u32>) {
        (self.svc_pool.quarantined().map(|(id, _)| *id).collect(), self.backend_pool.quarantined().map(|(id, _)| *id).collect())
    }

    /// Frees the quarantined ids that `in_use` says nothing names any more (a conntrack sweep's
    /// finding, and not in the kernel's maps).
    pub fn release(&mut self, mut svc_in_use: impl FnMut(u32) -> bool, mut backend_in_use: impl FnMut(u32) -> bool) -> Released {
        let released = Released {
            svc_ids: self.svc_pool.release(|id| !svc_in_use(id)).into_iter().map(|(id, ())| id).collect(),
            backends: self.backend_pool.release(|id| !backend_in_use(id)),
            sticky_filter: BTreeMap::new(),
        };
        if self.backend_pool.quarantined().any(|(_, addr)| addr.is_none()) {
            return released;
        }
        Released { sticky_filter: std::mem::take(&mut self.sticky_filter), ..released }
    }

    /// Filter words kept from the pinned maps (see [`PlanMemory::adopt`]).
    pub fn sticky_filter(&self) -> &BTreeMap<u32, u64> {
        &self.sticky_filter
    }

    /// Ends a planning pass over some ServicePorts (see [`super::maglev::TableCache::end_partial_pass`]).
    pub(crate) fn end_partial_pass(&mut self) {
        self.maglev.end_partial_pass();
    }

    /// Forgets ids of objects absent from `state`, so the maps stay bounded; their svc and
    /// backend ids are quarantined. Returns the addresses of the backends quarantined.
    pub(crate) fn retain_used(&mut self, state: &MapState, desired: &DesiredState) -> Vec<[u8; 16]> {
        let gone_svc: Vec<u32> = self
            .ports
            .iter()
            .filter(|(spn, p)| p.svc != 0 && !desired.services.contains_key(spn.as_ref()))
            .map(|(_, p)| p.svc)
            .collect();
        for id in gone_svc {
            self.svc_pool.quarantine(id, ());
        }
        self.ports.retain(|spn, _| desired.services.contains_key(spn.as_ref()));
        let gone: Vec<(u32, [u8; 16])> = self
            .backend
            .iter()
            .filter(|(_, id)| !state.backends.contains_key(id))
            .map(|((addr, _, _), id)| (*id, crate::maps::addr16(*addr)))
            .collect();
        for (id, addr) in &gone {
            self.backend_pool.quarantine(*id, Some(*addr));
        }
        self.backend.retain(|_, id| state.backends.contains_key(id));
        self.maglev.end_pass();
        gone.into_iter().map(|(_, addr)| addr).collect()
    }
}

/// The lowest select id above every table of `st`: those the services point at (own and
/// Cluster tables) and those holding slots, Maglev chunks or members.
fn next_select_id(st: &MapState) -> u32 {
    let services = st.services.values().flat_map(|v| [v.select_id, v.cluster_select_id, v.serving_select_id]);
    let tables = st.select.keys().map(|k| k.select_id).chain(st.maglev.keys().map(|k| k.select_id));
    let members = st.members.keys().map(|k| k.select_id);
    services.chain(tables).chain(members).max().map_or(1, |id| id.saturating_add(1))
}
