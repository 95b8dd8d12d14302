//! From desired state to map contents, and from two map contents to the minimal, safely ordered
//! list of map writes. Pure: the kernel only sees the result through [`crate::dataplane`].
//!
//! # Ids
//! - `svc_id`: one per ServicePort (affinity scope, per-service counters).
//! - `select_id`: one per (ServicePort, internal|external) endpoint set; frontends of the same
//!   class share a selection table.
//! - backend id: one per (address, port, protocol), shared by every service that uses it; id 0
//!   is never allocated ([`lb_common::BACKEND_ID_NONE`]).
//!
//! Ids are never reused within a process lifetime (a reused id could make a stale conntrack
//! entry look current). A restarted agent re-learns the ids of what is already programmed from
//! the pinned maps ([`Ids::adopt`]), so adopting a running datapath rewrites nothing that is
//! already right.
//!
//! # Write order
//! Readers (the datapath) follow service → selection slot → backend. So every write makes its
//! target valid before anything points at it, and every delete removes the pointer first:
//! 1. upsert backends, 2. upsert selection slots, 3. upsert services,
//! 4. delete services, 5. delete selection slots, 6. delete backends.
//! A shrinking table has its `slot_count` lowered (step 3) before its tail slots go (step 5).

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    net::IpAddr,
};

use lb_common::{
    Backend, SVC_F_ADDR_MARKER, SVC_F_AFFINITY, SVC_F_DROP_IF_EMPTY, SVC_F_EXTERNAL, SelectKey,
    ServiceKey, ServiceValue, v4_mapped,
};

use crate::model::{DesiredState, Endpoint, EndpointSet, Protocol, ServicePortName};

/// The 16-byte map representation of an address (IPv4-mapped for IPv4).
pub fn addr16(ip: IpAddr) -> [u8; 16] {
    match ip {
        IpAddr::V4(v4) => v4_mapped(v4.octets()),
        IpAddr::V6(v6) => v6.octets(),
    }
}

/// The address for a 16-byte map address.
pub fn ip_from16(a: [u8; 16]) -> IpAddr {
    let v6 = std::net::Ipv6Addr::from(a);
    match v6.to_ipv4_mapped() {
        Some(v4) => IpAddr::V4(v4),
        None => IpAddr::V6(v6),
    }
}

/// Everything the agent writes, as it should be in the maps.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MapState {
    pub services: BTreeMap<ServiceKey, ServiceValue>,
    pub backends: BTreeMap<u32, Backend>,
    pub select: BTreeMap<SelectKey, u32>,
}

/// Which endpoint set of a ServicePort a selection table serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SetClass {
    Internal,
    External,
}

/// Id allocation, stable across applies.
#[derive(Clone, Debug)]
pub struct Ids {
    svc: HashMap<ServicePortName, u32>,
    select: HashMap<(ServicePortName, SetClass), u32>,
    backend: HashMap<(IpAddr, u16, Protocol), u32>,
    next_svc: u32,
    next_select: u32,
    next_backend: u32,
}

impl Default for Ids {
    fn default() -> Self {
        Self {
            svc: HashMap::new(),
            select: HashMap::new(),
            backend: HashMap::new(),
            next_svc: 1,
            next_select: 1,
            next_backend: 1,
        }
    }
}

impl Ids {
    /// Learns the ids already in use in `current` (read from pinned maps) for the objects of
    /// `desired`, so that re-planning the same state yields the same entries.
    pub fn adopt(&mut self, current: &MapState, desired: &DesiredState) {
        for (id, be) in &current.backends {
            if let Some(proto) = Protocol::from_number(be.proto) {
                self.backend
                    .insert((ip_from16(be.addr), u16::from_be(be.port_be), proto), *id);
            }
            self.next_backend = self.next_backend.max(id + 1);
        }
        for v in current.services.values() {
            self.next_svc = self.next_svc.max(v.svc_id + 1);
            self.next_select = self.next_select.max(v.select_id + 1);
        }
        // An id is reused only by the first desired ServicePort that claims it, and ClusterIP
        // frontends (unique to their service) claim first: a NodePort that moved from one
        // service to another while the agent was down must not merge the two.
        let mut claimed_svc: HashSet<u32> = self.svc.values().copied().collect();
        let mut claimed_select: HashSet<u32> = self.select.values().copied().collect();
        for external_pass in [false, true] {
            for (spn, sp) in &desired.services {
                for fe in sp
                    .frontends
                    .iter()
                    .filter(|f| f.kind.is_external() == external_pass)
                {
                    let key = service_key(fe.addr, fe.port, spn.protocol);
                    let Some(v) = current.services.get(&key) else {
                        continue;
                    };
                    if !self.svc.contains_key(spn) && claimed_svc.insert(v.svc_id) {
                        self.svc.insert(spn.clone(), v.svc_id);
                    }
                    let class = if fe.kind.is_external() {
                        SetClass::External
                    } else {
                        SetClass::Internal
                    };
                    let sel = (spn.clone(), class);
                    if !self.select.contains_key(&sel) && claimed_select.insert(v.select_id) {
                        self.select.insert(sel, v.select_id);
                    }
                }
            }
        }
    }

    fn svc_id(&mut self, spn: &ServicePortName) -> u32 {
        if let Some(id) = self.svc.get(spn) {
            return *id;
        }
        let id = self.next_svc;
        self.next_svc += 1;
        self.svc.insert(spn.clone(), id);
        id
    }

    fn select_id(&mut self, spn: &ServicePortName, class: SetClass) -> u32 {
        if let Some(id) = self.select.get(&(spn.clone(), class)) {
            return *id;
        }
        let id = self.next_select;
        self.next_select += 1;
        self.select.insert((spn.clone(), class), id);
        id
    }

    fn backend_id(&mut self, ep: &Endpoint, proto: Protocol) -> u32 {
        let key = (ep.addr, ep.port, proto);
        if let Some(id) = self.backend.get(&key) {
            return *id;
        }
        let id = self.next_backend;
        self.next_backend += 1;
        self.backend.insert(key, id);
        id
    }

    /// Forgets ids of objects absent from `state`, so the maps stay bounded.
    fn retain_used(&mut self, state: &MapState, desired: &DesiredState) {
        self.svc.retain(|spn, _| desired.services.contains_key(spn));
        self.select
            .retain(|(spn, _), _| desired.services.contains_key(spn));
        let used: std::collections::HashSet<u32> = state.backends.keys().copied().collect();
        self.backend.retain(|_, id| used.contains(id));
    }
}

fn service_key(addr: IpAddr, port: u16, proto: Protocol) -> ServiceKey {
    ServiceKey {
        addr: addr16(addr),
        port_be: port.to_be(),
        proto: proto.number(),
        _pad: 0,
    }
}

/// Address marker key (see [`ServiceKey`]).
fn marker_key(addr: IpAddr) -> ServiceKey {
    ServiceKey {
        addr: addr16(addr),
        port_be: 0,
        proto: 0,
        _pad: 0,
    }
}

/// Computes the map contents for `desired`, allocating ids as needed.
pub fn map_state(desired: &DesiredState, ids: &mut Ids) -> MapState {
    let mut st = MapState::default();
    for (spn, sp) in &desired.services {
        let svc_id = ids.svc_id(spn);
        for (class, set) in [
            (SetClass::Internal, &sp.internal),
            (SetClass::External, &sp.external),
        ] {
            let has_frontend = sp
                .frontends
                .iter()
                .any(|f| f.kind.is_external() == (class == SetClass::External));
            if !has_frontend {
                continue;
            }
            let select_id = ids.select_id(spn, class);
            let slot_count = write_table(&mut st, ids, select_id, set, spn.protocol);
            let mut flags = 0;
            if set.drop_if_empty {
                flags |= SVC_F_DROP_IF_EMPTY;
            }
            if class == SetClass::External {
                flags |= SVC_F_EXTERNAL;
            }
            if sp.affinity_timeout_s.is_some() {
                flags |= SVC_F_AFFINITY;
            }
            let value = ServiceValue {
                svc_id,
                select_id,
                slot_count,
                flags,
                affinity_timeout_s: sp.affinity_timeout_s.unwrap_or(0),
                cluster_select_id: select_id,
                cluster_slot_count: slot_count,
                _pad: 0,
            };
            for fe in sp
                .frontends
                .iter()
                .filter(|f| f.kind.is_external() == (class == SetClass::External))
            {
                st.services
                    .insert(service_key(fe.addr, fe.port, spn.protocol), value);
                st.services.insert(
                    marker_key(fe.addr),
                    ServiceValue {
                        flags: SVC_F_ADDR_MARKER,
                        ..ServiceValue::default()
                    },
                );
            }
        }
    }
    ids.retain_used(&st, desired);
    st
}

/// Writes a dense random-selection table; returns its slot count.
fn write_table(
    st: &mut MapState,
    ids: &mut Ids,
    select_id: u32,
    set: &EndpointSet,
    proto: Protocol,
) -> u32 {
    let mut slot = 0u32;
    for ep in &set.endpoints {
        let id = ids.backend_id(ep, proto);
        let mut flags = 0;
        if ep.local {
            flags |= lb_common::BACKEND_F_LOCAL;
        }
        if ep.terminating {
            flags |= lb_common::BACKEND_F_TERMINATING;
        }
        st.backends.insert(
            id,
            Backend {
                addr: addr16(ep.addr),
                port_be: ep.port.to_be(),
                proto: proto.number(),
                flags,
            },
        );
        st.select.insert(SelectKey { select_id, slot }, id);
        slot += 1;
    }
    slot
}

/// One map write.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    PutBackend(u32, Backend),
    PutSelect(SelectKey, u32),
    PutService(ServiceKey, ServiceValue),
    DelService(ServiceKey),
    DelSelect(SelectKey),
    DelBackend(u32),
}

/// The minimal writes that turn `old` into `new`, in the safe order (module docs).
pub fn diff(old: &MapState, new: &MapState) -> Vec<Op> {
    let mut ops = Vec::new();
    for (id, be) in &new.backends {
        if old.backends.get(id) != Some(be) {
            ops.push(Op::PutBackend(*id, *be));
        }
    }
    for (k, v) in &new.select {
        if old.select.get(k) != Some(v) {
            ops.push(Op::PutSelect(*k, *v));
        }
    }
    for (k, v) in &new.services {
        if old.services.get(k) != Some(v) {
            ops.push(Op::PutService(*k, *v));
        }
    }
    for k in old.services.keys() {
        if !new.services.contains_key(k) {
            ops.push(Op::DelService(*k));
        }
    }
    for k in old.select.keys() {
        if !new.select.contains_key(k) {
            ops.push(Op::DelSelect(*k));
        }
    }
    for id in old.backends.keys() {
        if !new.backends.contains_key(id) {
            ops.push(Op::DelBackend(*id));
        }
    }
    ops
}

impl MapState {
    /// Applies `ops` to this shadow copy (what the kernel maps hold after the same ops).
    pub fn apply(&mut self, ops: &[Op]) {
        for op in ops {
            match op {
                Op::PutBackend(id, be) => {
                    self.backends.insert(*id, *be);
                }
                Op::PutSelect(k, v) => {
                    self.select.insert(*k, *v);
                }
                Op::PutService(k, v) => {
                    self.services.insert(*k, *v);
                }
                Op::DelService(k) => {
                    self.services.remove(k);
                }
                Op::DelSelect(k) => {
                    self.select.remove(k);
                }
                Op::DelBackend(id) => {
                    self.backends.remove(id);
                }
            }
        }
    }
}

#[cfg(test)]
#[path = "plan_tests.rs"]
mod tests;
