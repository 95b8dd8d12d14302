//! One ServicePort's map entries: its name, its selection tables with their backends and
//! members, its frontends with their address markers, and its source ranges.
//!
//! Both families share the maps: IPv4 addresses are written IPv4-mapped, IPv6 addresses as they
//! are ([`addr16`]). A dual-stack Service's port is two ServicePorts
//! ([`ServicePortName::family`]), so each family has its own `svc_id` (affinity scope,
//! counters, name `ns/name:port/TCP` or `ns/name:port/TCP/IPv6`) and its own selection tables:
//! a frontend only ever selects backends of its own family.

use std::{net::IpAddr, sync::Arc};

use lb_common::{
    Backend, MaglevKey, MemberKey, SVC_F_ADDR_MARKER, SVC_F_AFFINITY, SVC_F_DROP_IF_EMPTY, SVC_F_EXTERNAL, SVC_F_EXTERNAL_IP,
    SVC_F_LOADBALANCER, SVC_F_MAGLEV, SVC_F_NODEPORT, SVC_F_SNAT, SVC_F_SOURCE_RANGES, SelectKey, ServiceValue, SourceRangeData,
    SourceRangeKey, SvcLabels, SvcName,
};

use super::{
    PlanConfig,
    keys::{marker_key, service_key},
    memory::{PlanMemory, SetClass},
};
use crate::{
    maps::{Chunk, MapState, addr16},
    model::{Cidr, Endpoint, FrontendKind, Protocol, Selection, ServicePortName, ServicePortState},
};

/// Writes one ServicePort's entries into `st`: its name, its tables (with their backends and
/// members), its frontends with their address markers, and its source ranges. Entries it shares
/// with other ServicePorts (backends, markers, a frontend two Services claim) are overwritten:
/// in [`map_state`] the last ServicePort in name order wins.
pub(crate) fn plan_service(
    st: &mut MapState,
    ids: &mut PlanMemory,
    spn: &Arc<ServicePortName>,
    sp: &ServicePortState,
    cfg: &PlanConfig,
) {
    let svc_id = ids.svc_id(spn);
    st.names.insert(svc_id, Arc::new(SvcName::new(&spn.to_string())));
    if !sp.labels.is_empty() {
        st.labels.insert(svc_id, Arc::new(SvcLabels::new(&sp.labels)));
    }
    let maglev = sp.selection == Selection::Maglev;
    let mut base = 0;
    if maglev {
        base |= SVC_F_MAGLEV;
    }
    if sp.affinity_timeout_s.is_some() {
        base |= SVC_F_AFFINITY;
    }
    let sets = table_sets(sp);
    let how = TableKind { proto: spn.protocol, maglev, membership: needs_membership(spn.protocol, sp) };
    let internal = sets.internal.map(|eps| write_table(st, ids, (spn, SetClass::Internal), eps, how, cfg));
    let (external, cluster) = match sets.external {
        None => (None, None),
        Some((eps, cluster_set)) => {
            let ext = write_table(st, ids, (spn, SetClass::External), eps, how, cfg);
            let cluster = match (cluster_set, internal) {
                (ClusterSet::AsExternal, _) => ext,
                (ClusterSet::AsInternal, Some(int)) => int,
                _ => write_table(st, ids, (spn, SetClass::Cluster), &sp.cluster, how, cfg),
            };
            (Some(ext), Some(cluster))
        }
    };
    // Point 57: the serving set, usually equal to one of the tables above (every endpoint ready,
    // no topology, no Local policy): then that table's members are its members.
    let serving = match (internal, external, cluster) {
        (Some((id, _)), _, _) if sp.internal.endpoints == sp.serving => id,
        (_, Some((id, _)), _) if sp.external.endpoints == sp.serving => id,
        (_, _, Some((id, _))) if sp.cluster == sp.serving => id,
        _ => write_members(st, ids, (spn, SetClass::Serving), &sp.serving, how),
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
                st.source_ranges.insert(source_range(fe.addr, r), ());
            }
        }
    }
}

/// Where the Cluster set's table comes from (point 34: this node's pods and the node itself
/// get the Cluster set on external frontends): an identical table is reused rather than
/// written twice.
#[derive(Clone, Copy)]
enum ClusterSet {
    AsExternal,
    AsInternal,
    Own,
}

/// The endpoint sets of `sp` that get a selection table: the internal one (with internal
/// frontends), the external one (with external frontends) and where the Cluster set's comes from.
struct TableSets<'a> {
    internal: Option<&'a [Endpoint]>,
    external: Option<(&'a [Endpoint], ClusterSet)>,
}

fn table_sets(sp: &ServicePortState) -> TableSets<'_> {
    let has_internal = sp.frontends.iter().any(|f| !f.kind.is_external());
    let has_external = sp.frontends.iter().any(|f| f.kind.is_external());
    let external = has_external.then(|| {
        let cluster = if sp.external.endpoints == sp.cluster {
            ClusterSet::AsExternal
        } else if has_internal && sp.internal.endpoints == sp.cluster {
            ClusterSet::AsInternal
        } else {
            ClusterSet::Own
        };
        (&sp.external.endpoints[..], cluster)
    });
    TableSets { internal: has_internal.then_some(&sp.internal.endpoints[..]), external }
}

/// The Maglev tables [`plan_service`] looks up for `sp`, as the table cache keys them
/// (endpoints, table size): for computing them ahead, several at once
/// ([`super::maglev::TableCache::prefill`]).
pub(crate) fn maglev_tables(sp: &ServicePortState, cfg: &PlanConfig) -> Vec<super::maglev::TableKey> {
    if sp.selection != Selection::Maglev {
        return Vec::new();
    }
    let sets = table_sets(sp);
    let cluster = match sets.external {
        Some((_, ClusterSet::Own)) => Some(&sp.cluster[..]),
        _ => None,
    };
    let all = sets.internal.into_iter().chain(sets.external.map(|(eps, _)| eps)).chain(cluster);
    all.filter(|eps| !eps.is_empty()).map(|eps| maglev_key(eps, cfg)).collect()
}

/// The table cache's key for the Maglev table of `endpoints`: their addresses and ports, and
/// the table size.
fn maglev_key(endpoints: &[Endpoint], cfg: &PlanConfig) -> super::maglev::TableKey {
    let m = super::maglev::table_size(endpoints.len(), cfg.maglev_table_size);
    (super::maglev::TableEndpoints::new(endpoints.iter().map(|e| (e.addr, e.port))), m)
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
        let kind = match fe.kind {
            FrontendKind::ClusterIp => 0,
            FrontendKind::NodePort => SVC_F_NODEPORT,
            FrontendKind::ExternalIp => SVC_F_EXTERNAL_IP,
            FrontendKind::LoadBalancer => SVC_F_LOADBALANCER,
        };
        let (key, value) = (service_key(fe.addr, fe.port, proto), ServiceValue { flags: value.flags | kind, ..value });
        super::local_marks::mark(&mut st.local_marks, &key, &value);
        st.services.insert(key, value);
        st.services.insert(marker_key(fe.addr), ServiceValue { flags: SVC_F_ADDR_MARKER, ..ServiceValue::default() });
    }
}

/// The LPM entry allowing `range` to reach LoadBalancer IP `frontend`: prefix length 128 (the
/// frontend, matched whole) plus the source prefix in the 16-byte format: `96 + n` for an
/// IPv4 `/n` (stored IPv4-mapped), `n` for an IPv6 `/n` (stored as is). `range` must be of the
/// frontend's family.
pub fn source_range(frontend: IpAddr, range: &Cidr) -> SourceRangeKey {
    let bits = if range.addr.is_ipv4() { 96 + u32::from(range.prefix.min(32)) } else { u32::from(range.prefix.min(128)) };
    // The trie compares only the prefix, but the key must not carry host bits.
    let mut source = addr16(range.addr);
    for (i, b) in source.iter_mut().enumerate() {
        let keep = bits.saturating_sub(i as u32 * 8).min(8);
        *b &= if keep == 0 { 0 } else { 0xffu8 << (8 - keep) };
    }
    SourceRangeKey { prefix_len: 128 + bits, data: SourceRangeData { frontend: addr16(frontend), source } }
}

/// How a ServicePort's tables are written.
#[derive(Clone, Copy)]
struct TableKind {
    proto: Protocol,
    maglev: bool,
    /// Whether the tables' `LB_MEMBERS` entries are written ([`needs_membership`]).
    membership: bool,
}

/// Whether the datapath reads the membership of `sp`'s tables: to check that a remembered
/// affinity backend is still in its set (point 27) and that a datagram flow's backend still
/// serves its ServicePort (point 57). A TCP ServicePort without affinity never does (its
/// established flows keep their backend whatever the sets hold, as conntrack does), so its
/// tables get no `LB_MEMBERS` entries: 10 map writes fewer for a Service of 10 endpoints, a
/// third of what a full sync of 10,000 such Services wrote. `lb` reads such a table's set from
/// its slots or Maglev chunks ([`MapState::table_backends`]).
fn needs_membership(proto: Protocol, sp: &ServicePortState) -> bool {
    proto != Protocol::Tcp || sp.affinity_timeout_s.is_some()
}

/// Writes the selection table of one endpoint set (and its backends and membership); returns
/// its id and slot count (0 = empty).
fn write_table(
    st: &mut MapState,
    ids: &mut PlanMemory,
    (spn, class): (&Arc<ServicePortName>, SetClass),
    endpoints: &[Endpoint],
    how: TableKind,
    cfg: &PlanConfig,
) -> (u32, u32) {
    let select_id = ids.select_id(spn, class);
    let backend_ids = add_members(st, ids, select_id, endpoints, how);
    if backend_ids.is_empty() {
        return (select_id, 0);
    }
    if !how.maglev {
        for (slot, id) in backend_ids.iter().enumerate() {
            st.select.insert(SelectKey { select_id, slot: slot as u32 }, *id);
        }
        return (select_id, backend_ids.len() as u32);
    }
    let (key, m) = maglev_key(endpoints, cfg);
    let table = ids.maglev.table(key, m);
    // The chunks refer to the table (its slots shared with the cache, its ids held once).
    for (chunk, c) in Chunk::all(table, backend_ids) {
        st.maglev.insert(MaglevKey { select_id, chunk }, c);
    }
    (select_id, m)
}

/// Writes a table that has members only (no slots): its backends and membership; returns its id.
fn write_members(
    st: &mut MapState,
    ids: &mut PlanMemory,
    (spn, class): (&Arc<ServicePortName>, SetClass),
    endpoints: &[Endpoint],
    how: TableKind,
) -> u32 {
    let select_id = ids.select_id(spn, class);
    add_members(st, ids, select_id, endpoints, how);
    select_id
}

/// Writes the backends of `endpoints` and, where the datapath reads it, their membership in
/// table `select_id`; returns their backend ids in order.
fn add_members(st: &mut MapState, ids: &mut PlanMemory, select_id: u32, endpoints: &[Endpoint], how: TableKind) -> Vec<u32> {
    let proto = how.proto;
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
        if how.membership {
            st.members.insert(MemberKey { select_id, backend_id: id }, ());
        }
        backend_ids.push(id);
    }
    backend_ids
}
