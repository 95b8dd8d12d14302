//! What planning remembers from one plan to the next ([`PlanMemory`]): the ids it gave out,
//! stable across applies and restarts, and the Maglev tables of the endpoint sets it saw.
//!
//! - `svc_id`: one per ServicePort (affinity scope, per-service counters).
//! - `select_id`: one per (ServicePort, endpoint set) table ([`SetClass`]); frontends of the
//!   same class share a selection table.
//! - backend id: one per (address, port, protocol), shared by every service that uses it; id 0
//!   is never allocated ([`lb_common::BACKEND_ID_NONE`]).
//!
//! Ids are never reused within a process lifetime (a reused id could make a stale conntrack
//! entry look current). A restarted agent re-learns the ids of what is already programmed from
//! the pinned maps ([`PlanMemory::adopt`]), so adopting a running datapath rewrites nothing that is
//! already right.

use std::{
    collections::{HashMap, HashSet},
    net::IpAddr,
};

use lb_common::Backend;

use super::keys::service_key;
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

/// The ids given out (never reused) and the Maglev tables computed, kept between plans.
#[derive(Clone, Debug)]
pub struct PlanMemory {
    svc: HashMap<ServicePortName, u32>,
    select: HashMap<(ServicePortName, SetClass), u32>,
    backend: HashMap<(IpAddr, u16, Protocol), u32>,
    next_svc: u32,
    next_select: u32,
    next_backend: u32,
    /// Maglev tables of the last plan, so that an unchanged endpoint set costs no recompute.
    pub(super) maglev: super::maglev::TableCache,
}

impl Default for PlanMemory {
    fn default() -> Self {
        Self {
            svc: HashMap::new(),
            select: HashMap::new(),
            backend: HashMap::new(),
            next_svc: 1,
            next_select: 1,
            next_backend: 1,
            maglev: super::maglev::TableCache::default(),
        }
    }
}

impl PlanMemory {
    /// Learns the ids already in use in `current` (read from pinned maps) for the objects of
    /// `desired` (their own and Cluster tables), so that re-planning the same state yields the
    /// same entries. Ids of pinned objects not adopted are never allocated again.
    pub fn adopt(&mut self, current: &MapState, desired: &DesiredState) {
        for (id, be) in &current.backends {
            if let Some(proto) = Protocol::from_number(be.proto) {
                self.backend.insert((ip_from16(be.addr), u16::from_be(be.port_be), proto), *id);
            }
            self.next_backend = self.next_backend.max(id + 1);
        }
        for v in current.services.values() {
            self.next_svc = self.next_svc.max(v.svc_id + 1);
        }
        // Every pinned table's id, whoever points at it (a frontend's own or Cluster table, or
        // a table left by an interrupted apply), stays taken: a new table given one of them
        // would have its slots written (step 2) while old values still point at it (step 3).
        self.next_select = self.next_select.max(next_select_id(current));
        // An id is reused only by the first desired ServicePort that claims it, and ClusterIP
        // frontends (unique to their service) claim first: a NodePort that moved from one
        // service to another while the agent was down must not merge the two.
        let mut claimed_svc: HashSet<u32> = self.svc.values().copied().collect();
        let mut claimed_select: HashSet<u32> = self.select.values().copied().collect();
        for external_pass in [false, true] {
            for (spn, sp) in &desired.services {
                for fe in sp.frontends.iter().filter(|f| f.kind.is_external() == external_pass) {
                    let key = service_key(fe.addr, fe.port, spn.protocol);
                    let Some(v) = current.services.get(&key) else {
                        continue;
                    };
                    if !self.svc.contains_key(spn) && claimed_svc.insert(v.svc_id) {
                        self.svc.insert(spn.clone(), v.svc_id);
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
                if v.serving_select_id != 0 && self.svc.get(spn) == Some(&v.svc_id) {
                    self.adopt_select(spn, SetClass::Serving, v.serving_select_id, &mut claimed_select);
                }
            }
        }
    }

    /// Gives table `id` to `(spn, class)` unless either already has its table.
    fn adopt_select(&mut self, spn: &ServicePortName, class: SetClass, id: u32, claimed: &mut HashSet<u32>) {
        let sel = (spn.clone(), class);
        if !self.select.contains_key(&sel) && claimed.insert(id) {
            self.select.insert(sel, id);
        }
    }

    pub(super) fn svc_id(&mut self, spn: &ServicePortName) -> u32 {
        if let Some(id) = self.svc.get(spn) {
            return *id;
        }
        let id = self.next_svc;
        self.next_svc += 1;
        self.svc.insert(spn.clone(), id);
        id
    }

    pub(super) fn select_id(&mut self, spn: &ServicePortName, class: SetClass) -> u32 {
        if let Some(id) = self.select.get(&(spn.clone(), class)) {
            return *id;
        }
        let id = self.next_select;
        self.next_select += 1;
        self.select.insert((spn.clone(), class), id);
        id
    }

    pub(super) fn backend_id(&mut self, ep: &Endpoint, proto: Protocol) -> u32 {
        let key = (ep.addr, ep.port, proto);
        if let Some(id) = self.backend.get(&key) {
            return *id;
        }
        let id = self.next_backend;
        self.next_backend += 1;
        self.backend.insert(key, id);
        id
    }

    /// Forgets the svc_id and table ids of ServicePort `spn` (gone from the desired state).
    pub(crate) fn forget_service_port(&mut self, spn: &ServicePortName) {
        self.svc.remove(spn);
        for class in [SetClass::Internal, SetClass::External, SetClass::Cluster, SetClass::Serving] {
            self.select.remove(&(spn.clone(), class));
        }
    }

    /// Forgets the id of a backend no longer in the maps (a later reuse of its address gets a
    /// new id).
    pub(crate) fn forget_backend(&mut self, be: &Backend) {
        if let Some(proto) = Protocol::from_number(be.proto) {
            self.backend.remove(&(ip_from16(be.addr), u16::from_be(be.port_be), proto));
        }
    }

    /// Ends a planning pass: Maglev tables not used since the last one are dropped.
    pub(crate) fn end_pass(&mut self) {
        self.maglev.end_pass();
    }

    /// Forgets ids of objects absent from `state`, so the maps stay bounded.
    pub(crate) fn retain_used(&mut self, state: &MapState, desired: &DesiredState) {
        self.svc.retain(|spn, _| desired.services.contains_key(spn));
        self.select.retain(|(spn, _), _| desired.services.contains_key(spn));
        let used: HashSet<u32> = state.backends.keys().copied().collect();
        self.backend.retain(|_, id| used.contains(id));
        self.maglev.end_pass();
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
