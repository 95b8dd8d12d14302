//! From desired state to map contents, and from two map contents to the minimal, safely ordered
//! list of map writes. Pure: the kernel only sees the result through [`crate::dataplane`].
//!
//! # Families
//! Both families share the maps: IPv4 addresses are written IPv4-mapped (`::ffff:a.b.c.d`),
//! IPv6 addresses as they are ([`addr16`]). A dual-stack Service's port is two ServicePorts
//! ([`ServicePortName::family`]), so each family has its own `svc_id` (affinity scope,
//! counters, name `ns/name:port/TCP` or `ns/name:port/TCP/IPv6`) and its own selection tables:
//! a frontend only ever selects backends of its own family.
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
//!
//! A shrinking table has its `slot_count` lowered (step 3) before its tail slots go (step 5).

use std::{
    collections::{BTreeMap, BTreeSet, HashMap, HashSet},
    net::IpAddr,
    sync::Arc,
};

use lb_common::{
    Backend, MAGLEV_CHUNK, MaglevChunk, MaglevKey, MemberKey, SVC_F_ADDR_MARKER, SVC_F_AFFINITY, SVC_F_DROP_IF_EMPTY,
    SVC_F_EXTERNAL, SVC_F_MAGLEV, SVC_F_SNAT, SVC_F_SOURCE_RANGES, SelectKey, ServiceKey, ServiceValue, SourceRangeData, SvcName,
    v4_mapped,
};

use crate::model::{Cidr, DesiredState, Endpoint, FrontendKind, Protocol, Selection, ServicePortName, ServicePortState};

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
    /// Chunks are shared (`Arc`) between the planned state, the shadow of the maps and the
    /// writes between them: a 256-byte value is stored once.
    pub maglev: BTreeMap<MaglevKey, Arc<MaglevChunk>>,
    pub members: BTreeSet<MemberKey>,
    /// LPM entries: (prefix length, data).
    pub source_ranges: BTreeSet<(u32, SourceRangeData)>,
    /// ServicePort names by svc_id (for `lb service list` in another process).
    pub names: BTreeMap<u32, SvcName>,
}

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

/// Id allocation, stable across applies.
#[derive(Clone, Debug)]
pub struct Ids {
    svc: HashMap<ServicePortName, u32>,
    select: HashMap<(ServicePortName, SetClass), u32>,
    backend: HashMap<(IpAddr, u16, Protocol), u32>,
    next_svc: u32,
    next_select: u32,
    next_backend: u32,
    /// Maglev tables of the last plan, so that an unchanged endpoint set costs no recompute.
    maglev: crate::maglev::TableCache,
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
            maglev: crate::maglev::TableCache::default(),
        }
    }
}

impl Ids {
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
        let used: std::collections::HashSet<u32> = state.backends.keys().copied().collect();
        self.backend.retain(|_, id| used.contains(id));
        self.maglev.end_pass();
    }
}

/// The lowest select id above every table of `st`: those the services point at (own and
/// Cluster tables) and those holding slots, Maglev chunks or members.
fn next_select_id(st: &MapState) -> u32 {
    let services = st.services.values().flat_map(|v| [v.select_id, v.cluster_select_id, v.serving_select_id]);
    let tables = st.select.keys().map(|k| k.select_id).chain(st.maglev.keys().map(|k| k.select_id));
    let members = st.members.iter().map(|k| k.select_id);
    services.chain(tables).chain(members).max().map_or(1, |id| id.saturating_add(1))
}

fn service_key(addr: IpAddr, port: u16, proto: Protocol) -> ServiceKey {
    ServiceKey { addr: addr16(addr), port_be: port.to_be(), proto: proto.number(), _pad: 0 }
}

/// Address marker key (see [`ServiceKey`]).
fn marker_key(addr: IpAddr) -> ServiceKey {
    ServiceKey { addr: addr16(addr), port_be: 0, proto: 0, _pad: 0 }
}

/// Planner settings.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PlanConfig {
    /// Maglev table size for every service (a prime); `None` picks per service the smallest
    /// size at least 100 × its backends ([`crate::maglev::table_size`]).
    pub maglev_table_size: Option<u32>,
}

/// Computes the map contents for `desired`, allocating ids as needed.
pub fn map_state(desired: &DesiredState, ids: &mut Ids, cfg: &PlanConfig) -> MapState {
    let mut st = MapState::default();
    for (spn, sp) in &desired.services {
        plan_service(&mut st, ids, spn, sp, cfg);
    }
    ids.retain_used(&st, desired);
    st
}

/// Writes one ServicePort's entries into `st`: its name, its tables (with their backends and
/// members), its frontends with their address markers, and its source ranges. Entries it shares
/// with other ServicePorts (backends, markers, a frontend two Services claim) are overwritten:
/// in [`map_state`] the last ServicePort in name order wins.
pub(crate) fn plan_service(st: &mut MapState, ids: &mut Ids, spn: &ServicePortName, sp: &ServicePortState, cfg: &PlanConfig) {
    let svc_id = ids.svc_id(spn);
    st.names.insert(svc_id, SvcName::new(&spn.to_string()));
    let has_internal = sp.frontends.iter().any(|f| !f.kind.is_external());
    let has_external = sp.frontends.iter().any(|f| f.kind.is_external());
    let maglev = sp.selection == Selection::Maglev;
    let mut base = 0;
    if maglev {
        base |= SVC_F_MAGLEV;
    }
    if sp.affinity_timeout_s.is_some() {
        base |= SVC_F_AFFINITY;
    }
    let internal =
        has_internal.then(|| write_table(st, ids, (spn, SetClass::Internal), &sp.internal.endpoints, spn.protocol, maglev, cfg));
    let external =
        has_external.then(|| write_table(st, ids, (spn, SetClass::External), &sp.external.endpoints, spn.protocol, maglev, cfg));
    // Point 34: this node's pods and the node itself get the Cluster set on external frontends.
    // Reuse an identical table rather than writing it twice.
    let cluster = external.map(|ext| {
        if sp.external.endpoints == sp.cluster {
            ext
        } else if let (Some(int), true) = (internal, sp.internal.endpoints == sp.cluster) {
            int
        } else {
            write_table(st, ids, (spn, SetClass::Cluster), &sp.cluster, spn.protocol, maglev, cfg)
        }
    });
    // Point 57: the serving set, usually equal to one of the tables above (every endpoint ready,
    // no topology, no Local policy): then that table's members are its members.
    let serving = match (internal, external, cluster) {
        (Some((id, _)), _, _) if sp.internal.endpoints == sp.serving => id,
        (_, Some((id, _)), _) if sp.external.endpoints == sp.serving => id,
        (_, _, Some((id, _))) if sp.cluster == sp.serving => id,
        _ => write_members(st, ids, (spn, SetClass::Serving), &sp.serving, spn.protocol),
    };
    if let Some(own) = internal {
        let flags = base | if sp.internal.drop_if_empty { SVC_F_DROP_IF_EMPTY } else { 0 };
        let value = service_value(svc_id, own, own, serving, flags, sp);
        insert_frontends(st, sp, spn.protocol, false, value);
    }
    if let (Some(ext), Some(cluster)) = (external, cluster) {
        let mut flags = base | SVC_F_EXTERNAL;
        if sp.external.drop_if_empty {
            flags |= SVC_F_DROP_IF_EMPTY;
        }
        if sp.external_snat {
            flags |= SVC_F_SNAT;
        }
        insert_frontends(st, sp, spn.protocol, true, service_value(svc_id, ext, cluster, serving, flags, sp));
        // Point 48: source ranges restrict LoadBalancer frontends only, and only with ranges
        // of the frontend's family (the compile step keeps just those; as in kube-proxy, a
        // family without ranges is not restricted).
        for fe in sp.frontends.iter().filter(|f| f.kind == FrontendKind::LoadBalancer) {
            let ranges: Vec<&Cidr> = sp.source_ranges.iter().filter(|r| r.addr.is_ipv4() == fe.addr.is_ipv4()).collect();
            if ranges.is_empty() {
                continue;
            }
            let key = service_key(fe.addr, fe.port, spn.protocol);
            if let Some(v) = st.services.get_mut(&key) {
                v.flags |= SVC_F_SOURCE_RANGES;
            }
            for r in ranges {
                st.source_ranges.insert(source_range(fe.addr, r));
            }
        }
    }
}

fn service_value(
    svc_id: u32,
    own: (u32, u32),
    cluster: (u32, u32),
    serving_select_id: u32,
    flags: u32,
    sp: &ServicePortState,
) -> ServiceValue {
    ServiceValue {
        svc_id,
        select_id: own.0,
        slot_count: own.1,
        flags,
        affinity_timeout_s: sp.affinity_timeout_s.unwrap_or(0),
        cluster_select_id: cluster.0,
        cluster_slot_count: cluster.1,
        serving_select_id,
    }
}

fn insert_frontends(st: &mut MapState, sp: &ServicePortState, proto: Protocol, external: bool, value: ServiceValue) {
    for fe in sp.frontends.iter().filter(|f| f.kind.is_external() == external) {
        st.services.insert(service_key(fe.addr, fe.port, proto), value);
        st.services.insert(marker_key(fe.addr), ServiceValue { flags: SVC_F_ADDR_MARKER, ..ServiceValue::default() });
    }
}

/// The LPM entry allowing `range` to reach LoadBalancer IP `frontend`: prefix length 128 (the
/// frontend, matched whole) plus the source prefix in the 16-byte format: `96 + n` for an
/// IPv4 `/n` (stored IPv4-mapped), `n` for an IPv6 `/n` (stored as is). `range` must be of the
/// frontend's family.
pub fn source_range(frontend: IpAddr, range: &Cidr) -> (u32, SourceRangeData) {
    let bits = if range.addr.is_ipv4() { 96 + u32::from(range.prefix.min(32)) } else { u32::from(range.prefix.min(128)) };
    // The trie compares only the prefix, but the key must not carry host bits.
    let mut source = addr16(range.addr);
    for (i, b) in source.iter_mut().enumerate() {
        let keep = bits.saturating_sub(i as u32 * 8).min(8);
        *b &= if keep == 0 { 0 } else { 0xffu8 << (8 - keep) };
    }
    (128 + bits, SourceRangeData { frontend: addr16(frontend), source })
}

/// Writes the selection table of one endpoint set (and its backends and membership); returns
/// its id and slot count (0 = empty).
fn write_table(
    st: &mut MapState,
    ids: &mut Ids,
    (spn, class): (&ServicePortName, SetClass),
    endpoints: &[Endpoint],
    proto: Protocol,
    maglev: bool,
    cfg: &PlanConfig,
) -> (u32, u32) {
    let select_id = ids.select_id(spn, class);
    let backend_ids = add_members(st, ids, select_id, endpoints, proto);
    if backend_ids.is_empty() {
        return (select_id, 0);
    }
    if !maglev {
        for (slot, id) in backend_ids.iter().enumerate() {
            st.select.insert(SelectKey { select_id, slot: slot as u32 }, *id);
        }
        return (select_id, backend_ids.len() as u32);
    }
    let addrs: Vec<(IpAddr, u16)> = endpoints.iter().map(|e| (e.addr, e.port)).collect();
    let m = crate::maglev::table_size(addrs.len(), cfg.maglev_table_size);
    let table = ids.maglev.table(addrs, m);
    for (chunk, slots) in table.chunks(MAGLEV_CHUNK as usize).enumerate() {
        let mut c = MaglevChunk::default();
        for (i, idx) in slots.iter().enumerate() {
            c.ids[i] = backend_ids[*idx as usize];
        }
        st.maglev.insert(MaglevKey { select_id, chunk: chunk as u32 }, Arc::new(c));
    }
    (select_id, m)
}

/// Writes a table that has members only (no slots): its backends and membership; returns its id.
fn write_members(
    st: &mut MapState,
    ids: &mut Ids,
    (spn, class): (&ServicePortName, SetClass),
    endpoints: &[Endpoint],
    proto: Protocol,
) -> u32 {
    let select_id = ids.select_id(spn, class);
    add_members(st, ids, select_id, endpoints, proto);
    select_id
}

/// Writes the backends of `endpoints` and their membership in table `select_id`; returns
/// their backend ids in order.
fn add_members(st: &mut MapState, ids: &mut Ids, select_id: u32, endpoints: &[Endpoint], proto: Protocol) -> Vec<u32> {
    let mut backend_ids = Vec::with_capacity(endpoints.len());
    for ep in endpoints {
        let id = ids.backend_id(ep, proto);
        let mut flags = 0;
        if ep.local {
            flags |= lb_common::BACKEND_F_LOCAL;
        }
        if ep.terminating {
            flags |= lb_common::BACKEND_F_TERMINATING;
        }
        if ep.host {
            flags |= lb_common::BACKEND_F_HOST;
        }
        st.backends.insert(id, Backend { addr: addr16(ep.addr), port_be: ep.port.to_be(), proto: proto.number(), flags });
        st.members.insert(MemberKey { select_id, backend_id: id });
        backend_ids.push(id);
    }
    backend_ids
}

/// One map write.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    PutName(u32, SvcName),
    PutBackend(u32, Backend),
    PutMember(MemberKey),
    PutSelect(SelectKey, u32),
    PutMaglev(MaglevKey, Arc<MaglevChunk>),
    PutSourceRange(u32, SourceRangeData),
    PutService(ServiceKey, ServiceValue),
    DelService(ServiceKey),
    DelSourceRange(u32, SourceRangeData),
    DelMaglev(MaglevKey),
    DelSelect(SelectKey),
    DelMember(MemberKey),
    DelBackend(u32),
    DelName(u32),
}

/// The minimal writes that turn `old` into `new`, in the safe order (module docs). Source
/// ranges are written before the service that enables them and removed after it.
pub fn diff(old: &MapState, new: &MapState) -> Vec<Op> {
    let names = merge(&old.names, &new.names);
    let backends = merge(&old.backends, &new.backends);
    let select = merge(&old.select, &new.select);
    let maglev = merge(&old.maglev, &new.maglev);
    let services = merge(&old.services, &new.services);
    let mut ops = Vec::new();
    ops.extend(names.upserts.iter().map(|(id, n)| Op::PutName(**id, **n)));
    ops.extend(backends.upserts.iter().map(|(id, be)| Op::PutBackend(**id, **be)));
    ops.extend(new.members.difference(&old.members).map(|k| Op::PutMember(*k)));
    ops.extend(select.upserts.iter().map(|(k, v)| Op::PutSelect(**k, **v)));
    ops.extend(maglev.upserts.iter().map(|(k, v)| Op::PutMaglev(**k, Arc::clone(v))));
    ops.extend(new.source_ranges.difference(&old.source_ranges).map(|(l, d)| Op::PutSourceRange(*l, *d)));
    ops.extend(services.upserts.iter().map(|(k, v)| Op::PutService(**k, **v)));
    ops.extend(services.removed.iter().map(|k| Op::DelService(**k)));
    ops.extend(old.source_ranges.difference(&new.source_ranges).map(|(l, d)| Op::DelSourceRange(*l, *d)));
    ops.extend(maglev.removed.iter().map(|k| Op::DelMaglev(**k)));
    ops.extend(select.removed.iter().map(|k| Op::DelSelect(**k)));
    ops.extend(old.members.difference(&new.members).map(|k| Op::DelMember(*k)));
    ops.extend(backends.removed.iter().map(|id| Op::DelBackend(**id)));
    ops.extend(names.removed.iter().map(|id| Op::DelName(**id)));
    ops
}

/// What differs between two versions of one map.
struct MapDelta<'a, K, V> {
    /// Keys that are new or whose value changed, with the new value, in key order.
    upserts: Vec<(&'a K, &'a V)>,
    /// Keys only in the old map, in key order.
    removed: Vec<&'a K>,
}

/// One ordered walk over both maps (linear, no lookup per key): a sync of a large, mostly
/// unchanged state costs a comparison per entry.
fn merge<'a, K: Ord, V: PartialEq>(old: &'a BTreeMap<K, V>, new: &'a BTreeMap<K, V>) -> MapDelta<'a, K, V> {
    use std::cmp::Ordering;
    let mut delta = MapDelta { upserts: Vec::new(), removed: Vec::new() };
    let (mut o, mut n) = (old.iter().peekable(), new.iter().peekable());
    loop {
        match (o.peek(), n.peek()) {
            (None, None) => break,
            (Some(_), None) => delta.removed.extend(o.by_ref().map(|(k, _)| k)),
            (None, Some(_)) => delta.upserts.extend(n.by_ref()),
            (Some((ok, ov)), Some((nk, nv))) => match ok.cmp(nk) {
                Ordering::Less => {
                    delta.removed.push(*ok);
                    o.next();
                }
                Ordering::Greater => {
                    delta.upserts.push((*nk, *nv));
                    n.next();
                }
                Ordering::Equal => {
                    if ov != nv {
                        delta.upserts.push((*nk, *nv));
                    }
                    o.next();
                    n.next();
                }
            },
        }
    }
    delta
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
                Op::PutMember(k) => {
                    self.members.insert(*k);
                }
                Op::PutName(id, n) => {
                    self.names.insert(*id, *n);
                }
                Op::DelName(id) => {
                    self.names.remove(id);
                }
                Op::PutMaglev(k, v) => {
                    self.maglev.insert(*k, Arc::clone(v));
                }
                Op::PutSourceRange(l, d) => {
                    self.source_ranges.insert((*l, *d));
                }
                Op::DelSourceRange(l, d) => {
                    self.source_ranges.remove(&(*l, *d));
                }
                Op::DelMaglev(k) => {
                    self.maglev.remove(k);
                }
                Op::DelMember(k) => {
                    self.members.remove(k);
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
