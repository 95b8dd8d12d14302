//! Unit tests of the map planner: desired state → map contents (`map_state`), id allocation and
//! adoption (`PlanMemory`), minimal ordered writes (`diff`) and the shadow copy (`MapState::apply`).
//! Point numbers refer to `docs/semantics.md`: in
//! the test name (`point_NN_...`) or in the test's doc comment.
//!
//! The desired states are written directly in model types, so these tests do not depend on the
//! compile step.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
    sync::Arc,
};

use lb_common::{
    BACKEND_F_LOCAL, BACKEND_F_TERMINATING, BACKEND_ID_NONE, Backend, IPPROTO_SCTP, IPPROTO_TCP, IPPROTO_UDP, SVC_F_ADDR_MARKER,
    SVC_F_AFFINITY, SVC_F_DROP_IF_EMPTY, SVC_F_EXTERNAL, SVC_F_EXTERNAL_IP, SVC_F_LOADBALANCER, SVC_F_NODEPORT, SVC_F_SNAT,
    SVC_F_SOURCE_RANGES, SelectKey, ServiceKey, ServiceValue, SourceRangeData, SourceRangeKey,
};

use super::{PlanConfig, map_state, memory::PlanMemory, service::source_range};
use crate::maps::{MapState, Op, addr16, diff, ip_from16};

/// The planner with default settings.
fn plan_state(d: &DesiredState, ids: &mut PlanMemory) -> MapState {
    map_state(d, ids, &PlanConfig::default())
}
use crate::model::{
    Cidr, DesiredState, Endpoint, EndpointSet, Family, Frontend, FrontendKind, Protocol, Selection, ServicePortName,
    ServicePortState,
};

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn spn(name: &str, protocol: Protocol) -> ServicePortName {
    ServicePortName { namespace: "ns".into(), name: name.into(), port_name: String::new(), protocol, family: Family::V4 }
}

/// The IPv6 ServicePort of the same name.
fn spn6(name: &str, protocol: Protocol) -> ServicePortName {
    ServicePortName { family: Family::V6, ..spn(name, protocol) }
}

fn fe(addr: &str, port: u16, kind: FrontendKind) -> Frontend {
    Frontend { addr: ip(addr), port, kind }
}

fn cip(addr: &str, port: u16) -> Frontend {
    fe(addr, port, FrontendKind::ClusterIp)
}

fn np(addr: &str, port: u16) -> Frontend {
    fe(addr, port, FrontendKind::NodePort)
}

fn ep(addr: &str, port: u16) -> Endpoint {
    Endpoint { addr: ip(addr), port, local: false, terminating: false, host: false }
}

fn set(endpoints: &[Endpoint]) -> EndpointSet {
    EndpointSet { endpoints: endpoints.into(), drop_if_empty: false }
}

/// A ServicePort whose internal and external sets are both `endpoints`.
fn sp(frontends: Vec<Frontend>, endpoints: &[Endpoint]) -> ServicePortState {
    ServicePortState {
        frontends,
        internal: set(endpoints),
        external: set(endpoints),
        cluster: endpoints.into(),
        serving: endpoints.into(),
        external_snat: true,
        source_ranges: Vec::new(),
        affinity_timeout_s: None,
        selection: Selection::Random,
        labels: "app=web,tier=front".into(),
    }
}

fn desired(items: Vec<(ServicePortName, ServicePortState)>) -> DesiredState {
    DesiredState { services: items.into_iter().map(|(k, v)| (k, Arc::new(v))).collect(), rejected: Vec::new() }
}

/// A representative desired state: NodePort with ETP=Local and affinity, a shared backend,
/// TCP and UDP on the same port, an empty service, a LoadBalancer, SCTP and IPv6.
fn sample() -> DesiredState {
    let mut local = ep("10.0.1.1", 8080);
    local.local = true;
    let mut terminating = ep("10.0.1.3", 8080);
    terminating.terminating = true;
    let web_eps = [local.clone(), ep("10.0.1.2", 8080), terminating];
    let mut web = sp(vec![cip("10.96.0.10", 80), np("10.1.0.10", 30080), np("192.168.0.10", 30080)], &web_eps);
    web.external = EndpointSet { endpoints: vec![local.clone()].into(), drop_if_empty: true };
    web.affinity_timeout_s = Some(300);

    let mut itp_local = sp(vec![cip("10.96.0.14", 80)], &[]);
    itp_local.internal.drop_if_empty = true;

    desired(vec![
        (spn("web", Protocol::Tcp), web),
        (spn("web2", Protocol::Tcp), sp(vec![cip("10.96.0.11", 80)], &[local, ep("10.0.1.9", 8080)])),
        (spn("dns", Protocol::Udp), sp(vec![cip("10.96.0.53", 53)], &[ep("10.0.2.1", 53), ep("10.0.2.2", 53)])),
        (spn("dns", Protocol::Tcp), sp(vec![cip("10.96.0.53", 53)], &[ep("10.0.2.1", 53)])),
        (spn("empty", Protocol::Tcp), sp(vec![cip("10.96.0.12", 80)], &[])),
        (spn("itp-local", Protocol::Tcp), itp_local),
        (
            spn("lb", Protocol::Tcp),
            sp(
                vec![
                    cip("10.96.0.13", 443),
                    fe("198.51.100.7", 443, FrontendKind::LoadBalancer),
                    fe("203.0.113.5", 443, FrontendKind::ExternalIp),
                ],
                &[ep("10.0.3.1", 8443)],
            ),
        ),
        (spn("sctp", Protocol::Sctp), sp(vec![cip("10.96.0.15", 5060)], &[ep("10.0.4.1", 5060)])),
        (spn6("v6", Protocol::Tcp), sp(vec![cip("fd00:96::10", 80)], &[ep("fd00:1::1", 8080)])),
    ])
}

fn plan(d: &DesiredState) -> MapState {
    plan_state(d, &mut PlanMemory::default())
}

/// The map key of a frontend, built from explicit bytes (not through the code under test).
fn key_bytes(addr16: [u8; 16], port: u16, proto: u8) -> ServiceKey {
    ServiceKey { addr: addr16, port_be: u16::from_ne_bytes(port.to_be_bytes()), proto, _pad: 0 }
}

fn v4_bytes(a: [u8; 4]) -> [u8; 16] {
    [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, a[0], a[1], a[2], a[3]]
}

fn key_of(addr: &str, port: u16, proto: Protocol) -> ServiceKey {
    let a16 = match ip(addr) {
        IpAddr::V4(v4) => v4_bytes(v4.octets()),
        IpAddr::V6(v6) => v6.octets(),
    };
    key_bytes(a16, port, proto.number())
}

fn is_marker(v: &ServiceValue) -> bool {
    v.flags & SVC_F_ADDR_MARKER != 0
}

/// Follows service → selection slots → backends the way the datapath does.
fn try_resolve(st: &MapState, k: &ServiceKey) -> Result<Vec<Backend>, String> {
    let v = st.services.get(k).ok_or("no service entry")?;
    (0..v.slot_count)
        .map(|slot| {
            let sk = SelectKey { select_id: v.select_id, slot };
            let id = st.select.get(&sk).ok_or_else(|| format!("slot {slot} of table {} missing", v.select_id))?;
            if *id == BACKEND_ID_NONE {
                return Err(format!("slot {slot} of table {} holds id 0", v.select_id));
            }
            st.backends.get(id).copied().ok_or_else(|| format!("backend {id} missing"))
        })
        .collect()
}

fn resolve(st: &MapState, k: &ServiceKey) -> Vec<Backend> {
    try_resolve(st, k).unwrap_or_else(|e| panic!("{k:?}: {e}"))
}

/// `addr:port/proto` of backends, for readable assertions.
fn show(backends: &[Backend]) -> Vec<String> {
    backends
        .iter()
        .map(|b| {
            let port = u16::from_be(b.port_be);
            match ip_from16(b.addr) {
                IpAddr::V4(a) => format!("{a}:{port}/{}", b.proto),
                IpAddr::V6(a) => format!("[{a}]:{port}/{}", b.proto),
            }
        })
        .collect()
}

/// The phase of an op in the safe order. The bitmaps' words (the address filter's, then the
/// policy-Local marks') are first and last, but a word losing bits is also written again with the
/// deletes (`maps::table::Transition`): [`is_bitmap`] ops are checked by their own test.
fn rank(op: &Op) -> u8 {
    match op {
        Op::PutFilterWord(..) | Op::PutLocalMarks(..) => 0,
        Op::DelFilterWord(..) | Op::DelLocalMarks(..) => 11,
        Op::PutName(..) | Op::PutLabels(..) | Op::PutBackend(..) => 1,
        Op::PutMember(..) => 2,
        Op::PutSelect(..) | Op::PutMaglev(..) => 3,
        Op::PutSourceRange(..) => 4,
        Op::PutService(..) => 5,
        Op::DelService(..) => 6,
        Op::DelSourceRange(..) => 7,
        Op::DelSelect(..) | Op::DelMaglev(..) => 8,
        Op::DelMember(..) => 9,
        Op::DelBackend(..) | Op::DelName(..) | Op::DelLabels(..) => 10,
    }
}

/// Bitmap writes (the address filter, the policy-Local marks) come before every other write or
/// after every other delete.
fn assert_bitmap_ops_at_the_edges(ops: &[Op]) {
    let first = ops.iter().position(|op| !is_bitmap(op)).unwrap_or(ops.len());
    let last = ops.iter().rposition(|op| !is_bitmap(op)).map_or(0, |i| i + 1);
    assert!(ops[first..last].iter().all(|op| !is_bitmap(op)), "a bitmap write between the others: {ops:#?}");
}

fn is_bitmap(op: &Op) -> bool {
    matches!(op, Op::PutFilterWord(..) | Op::DelFilterWord(..) | Op::PutLocalMarks(..) | Op::DelLocalMarks(..))
}

fn applied(old: &MapState, ops: &[Op]) -> MapState {
    let mut st = old.clone();
    st.apply(ops);
    st
}

/// After every prefix of `diff(old, new)`, every frontend still resolves completely, and only to
/// backends it has in `old` or in `new` (readers never see a dangling or foreign entry).
fn assert_every_step_readable(old: &MapState, new: &MapState) {
    let ops = diff(old, new);
    let filtered = !old.addr_filter.is_empty() || !new.addr_filter.is_empty();
    for i in 0..=ops.len() {
        let st = applied(old, &ops[..i]);
        // The address filter lets through every frontend and backend address at every step.
        let filter_has = |addr: &[u8; 16], which| {
            let (w, bit) = lb_common::addr_filter_slot(addr, which);
            st.addr_filter.get(&w).is_some_and(|v| v & bit != 0)
        };
        if filtered {
            for k in st.services.keys() {
                assert!(filter_has(&k.addr, lb_common::ADDR_FILTER_FRONTEND), "after op {i}: frontend {k:?} filtered out");
            }
            for b in st.backends.values() {
                assert!(filter_has(&b.addr, lb_common::ADDR_FILTER_BACKEND), "after op {i}: backend {b:?} filtered out");
            }
        }
        for (k, v) in &st.services {
            if is_marker(v) {
                continue;
            }
            let got = try_resolve(&st, k).unwrap_or_else(|e| {
                let last = i.checked_sub(1).and_then(|j| ops.get(j));
                panic!("after op {i} ({last:?}): {k:?}: {e}")
            });
            let allowed: BTreeSet<(_, _, _)> = [old, new]
                .iter()
                .filter_map(|s| try_resolve(s, k).ok())
                .flatten()
                .map(|b| (b.addr, b.port_be, b.proto))
                .collect();
            for b in got {
                assert!(
                    allowed.contains(&(b.addr, b.port_be, b.proto)),
                    "after op {i}: {k:?} reaches foreign backend {:?}",
                    show(&[b])
                );
            }
        }
    }
    assert_eq!(&applied(old, &ops), new);
}

// ---------------------------------------------------------------------------------------------
// map_state
// ---------------------------------------------------------------------------------------------

/// Points 5, 11, 13, 55: every frontend (per family, per protocol) gets a `ServiceKey` in the
/// shared layout: port in network byte order, IPv4 addresses IPv4-mapped, IPv6 verbatim.
#[test]
fn map_state_keys_use_network_byte_order_and_ipv4_mapped_addresses() {
    let st = plan(&sample());
    // 10.96.0.10:80/TCP, spelled out byte by byte.
    let k = ServiceKey {
        addr: [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 10, 96, 0, 10],
        port_be: u16::from_ne_bytes([0, 80]),
        proto: 6,
        _pad: 0,
    };
    assert!(st.services.contains_key(&k), "{:?}", st.services.keys());
    // NodePort 30080 = 0x7580 on every node address.
    let np_key = key_bytes(v4_bytes([192, 168, 0, 10]), 30080, IPPROTO_TCP);
    assert_eq!(np_key.port_be.to_ne_bytes(), [0x75, 0x80]);
    assert!(st.services.contains_key(&np_key));
    // UDP and SCTP protocol numbers; IPv6 addresses verbatim.
    assert!(st.services.contains_key(&key_bytes(v4_bytes([10, 96, 0, 53]), 53, IPPROTO_UDP)));
    assert!(st.services.contains_key(&key_bytes(v4_bytes([10, 96, 0, 15]), 5060, IPPROTO_SCTP)));
    assert!(st.services.contains_key(&key_bytes(ip6("fd00:96::10"), 80, IPPROTO_TCP)));
    // Every frontend of every ServicePort has its key.
    let d = sample();
    for (spn, sp) in &d.services {
        for f in &sp.frontends {
            let k = key_of(&f.addr.to_string(), f.port, spn.protocol);
            assert!(st.services.contains_key(&k), "{spn}: {f:?} missing");
            assert_eq!(k._pad, 0);
        }
    }
    // Backends: 10.0.1.1:8080 (0x1f90) IPv4-mapped, network order.
    let b = st.backends.values().find(|b| b.addr == v4_bytes([10, 0, 1, 1])).expect("backend 10.0.1.1");
    assert_eq!(b.port_be.to_ne_bytes(), [0x1f, 0x90]);
    assert_eq!(b.proto, IPPROTO_TCP);
    assert!(st.backends.values().any(|b| b.addr == ip6("fd00:1::1")));
}

fn ip6(s: &str) -> [u8; 16] {
    match ip(s) {
        IpAddr::V6(a) => a.octets(),
        IpAddr::V4(_) => panic!("not IPv6"),
    }
}

/// Points 41, 46, 47, 58: exactly the frontends are keys, plus one address marker per address
/// (lets the datapath drop untranslatable packets to a service address instead of leaking them).
#[test]
fn map_state_has_exactly_the_frontends_and_one_marker_per_address() {
    let d = sample();
    let st = plan(&d);
    let mut want = BTreeSet::new();
    let mut addrs = BTreeSet::new();
    for (spn, sp) in &d.services {
        for f in &sp.frontends {
            want.insert(key_of(&f.addr.to_string(), f.port, spn.protocol));
            addrs.insert(f.addr);
        }
    }
    let real: BTreeSet<_> = st.services.iter().filter(|(_, v)| !is_marker(v)).map(|(k, _)| *k).collect();
    assert_eq!(real, want);
    let markers: BTreeMap<_, _> = st.services.iter().filter(|(_, v)| is_marker(v)).collect();
    assert_eq!(markers.len(), addrs.len());
    for a in addrs {
        let mk = key_bytes(addr16(a), 0, 0);
        let v = markers.get(&mk).unwrap_or_else(|| panic!("no marker for {a}"));
        assert_eq!(**v, ServiceValue { flags: SVC_F_ADDR_MARKER, ..ServiceValue::default() });
    }
}

/// Point 37: backend id 0 is reserved ("no backend"), so allocation starts at 1.
#[test]
fn map_state_backend_ids_start_at_1_and_0_is_never_used() {
    let st = plan(&sample());
    assert!(!st.backends.contains_key(&BACKEND_ID_NONE));
    let ids: Vec<u32> = st.backends.keys().copied().collect();
    let want: Vec<u32> = (1..=ids.len() as u32).collect();
    assert_eq!(ids, want, "a fresh allocator hands out 1, 2, 3, ...");
    assert!(st.select.values().all(|id| *id != BACKEND_ID_NONE));
    // Service and table ids of real frontends are never 0 either.
    for v in st.services.values().filter(|v| !is_marker(v)) {
        assert_ne!(v.svc_id, 0);
        assert_ne!(v.select_id, 0);
    }
}

/// Points 9, 11: a backend is (address, port, protocol); TCP and UDP on the same port differ.
#[test]
fn map_state_shares_backends_per_address_port_and_protocol() {
    let st = plan(&sample());
    // 10.0.1.1:8080/TCP serves web (internal and external) and web2: one backend.
    let n = st.backends.values().filter(|b| b.addr == v4_bytes([10, 0, 1, 1])).count();
    assert_eq!(n, 1);
    // 10.0.2.1:53 over TCP and over UDP: two backends.
    let dns: BTreeSet<u8> = st.backends.values().filter(|b| b.addr == v4_bytes([10, 0, 2, 1])).map(|b| b.proto).collect();
    assert_eq!(dns, BTreeSet::from([IPPROTO_TCP, IPPROTO_UDP]));
    // Distinct (addr, port, proto) triples ↔ backends.
    let triples: BTreeSet<_> = st.backends.values().map(|b| (b.addr, b.port_be, b.proto)).collect();
    assert_eq!(triples.len(), st.backends.len());
}

/// Points 22, 30: each frontend resolves to exactly the endpoint set of its class, densely.
#[test]
fn map_state_tables_resolve_to_the_endpoint_sets() {
    let d = sample();
    let st = plan(&d);
    for (spn, sp) in &d.services {
        for f in &sp.frontends {
            let k = key_of(&f.addr.to_string(), f.port, spn.protocol);
            let set = if f.kind.is_external() { &sp.external } else { &sp.internal };
            let got = resolve(&st, &k);
            let want: Vec<_> = set.endpoints.iter().map(|e| (addr16(e.addr), e.port.to_be(), spn.protocol.number())).collect();
            let got_t: Vec<_> = got.iter().map(|b| (b.addr, b.port_be, b.proto)).collect();
            assert_eq!(got_t, want, "{spn} via {f:?}");
            assert_eq!(st.services[&k].slot_count as usize, set.endpoints.len());
        }
    }
    // No stray slots: the select map holds exactly the slots of the tables in use.
    let tables: BTreeMap<u32, u32> =
        st.services.values().filter(|v| !is_marker(v)).map(|v| (v.select_id, v.slot_count)).collect();
    assert_eq!(st.select.len() as u32, tables.values().sum::<u32>());
}

/// Points 19, 30: local and terminating endpoints are flagged on their backend.
#[test]
fn map_state_backend_flags_mark_local_and_terminating_endpoints() {
    let st = plan(&sample());
    let flags = |a: [u8; 4]| st.backends.values().find(|b| b.addr == v4_bytes(a)).unwrap().flags;
    assert_eq!(flags([10, 0, 1, 1]), BACKEND_F_LOCAL);
    assert_eq!(flags([10, 0, 1, 2]), 0);
    assert_eq!(flags([10, 0, 1, 3]), BACKEND_F_TERMINATING);
}

#[test]
fn point_25_30_service_values_per_class_flags_and_affinity() {
    let st = plan(&sample());
    let tcp = Protocol::Tcp;
    let cluster = st.services[&key_of("10.96.0.10", 80, tcp)];
    let node1 = st.services[&key_of("10.1.0.10", 30080, tcp)];
    let node2 = st.services[&key_of("192.168.0.10", 30080, tcp)];
    // Point 25: one svc_id (the affinity scope) for every address of the ServicePort.
    assert_eq!(cluster.svc_id, node1.svc_id);
    // Point 30: internal and external traffic use different tables; external frontends share.
    assert_ne!(cluster.select_id, node1.select_id);
    assert_eq!(node1, node2);
    assert_eq!(cluster.slot_count, 3);
    assert_eq!(node1.slot_count, 1);
    assert_eq!(cluster.flags, SVC_F_AFFINITY);
    assert_eq!(node1.flags, SVC_F_AFFINITY | SVC_F_EXTERNAL | SVC_F_DROP_IF_EMPTY | SVC_F_SNAT | SVC_F_NODEPORT);
    assert_eq!((cluster.affinity_timeout_s, node1.affinity_timeout_s), (300, 300));
    // Other ServicePorts have their own svc_id, no affinity.
    let web2 = st.services[&key_of("10.96.0.11", 80, tcp)];
    assert_ne!(web2.svc_id, cluster.svc_id);
    assert_eq!((web2.flags, web2.affinity_timeout_s), (0, 0));
    // TCP and UDP on 10.96.0.53:53 are different ServicePorts (point 11).
    let dns_u = st.services[&key_of("10.96.0.53", 53, Protocol::Udp)];
    let dns_t = st.services[&key_of("10.96.0.53", 53, tcp)];
    assert_ne!(dns_u.svc_id, dns_t.svc_id);
    assert_ne!(dns_u.select_id, dns_t.select_id);
    assert_eq!((dns_u.slot_count, dns_t.slot_count), (2, 1));
    // LB and externalIP frontends are external, source-NATed under policy Cluster (point 32).
    // Each frontend carries its kind, for the CLI.
    for (k, kind) in
        [(key_of("198.51.100.7", 443, tcp), SVC_F_LOADBALANCER), (key_of("203.0.113.5", 443, tcp), SVC_F_EXTERNAL_IP)]
    {
        assert_eq!(st.services[&k].flags, SVC_F_EXTERNAL | SVC_F_SNAT | kind);
    }
}

#[test]
fn point_37_38_empty_tables_reject_or_drop() {
    let st = plan(&sample());
    // Point 37: no endpoints anywhere → slot_count 0 without DROP (the datapath rejects).
    let empty = st.services[&key_of("10.96.0.12", 80, Protocol::Tcp)];
    assert_eq!((empty.slot_count, empty.flags & SVC_F_DROP_IF_EMPTY), (0, 0));
    // Point 38: endpoints only elsewhere under a Local policy → slot_count 0 with DROP.
    let local = st.services[&key_of("10.96.0.14", 80, Protocol::Tcp)];
    assert_eq!((local.slot_count, local.flags), (0, SVC_F_DROP_IF_EMPTY));
    // Empty tables have no slots at all.
    assert!(st.select.keys().all(|k| k.select_id != empty.select_id));
}

/// Point 30: a ClusterIP-only port has no external table.
#[test]
fn map_state_allocates_no_table_for_a_class_without_frontends() {
    // A ClusterIP-only port has an external set in the model but no external frontend.
    let d = desired(vec![(spn("a", Protocol::Tcp), sp(vec![cip("10.96.0.10", 80)], &[ep("10.0.1.1", 8080)]))]);
    let st = plan(&d);
    let tables: BTreeSet<u32> = st.select.keys().map(|k| k.select_id).collect();
    assert_eq!(tables.len(), 1);
    assert_eq!(st.select.len(), 1);
}

/// Point 21 / 59: re-planning an unchanged state writes nothing.
#[test]
fn map_state_is_deterministic_and_stable_across_replans() {
    let d = sample();
    let mut ids = PlanMemory::default();
    let first = plan_state(&d, &mut ids);
    assert_eq!(plan_state(&d, &mut ids), first, "re-planning must not move anything");
    assert_eq!(plan(&d), first, "a fresh allocator gives the same result");
    assert!(diff(&first, &plan_state(&d, &mut ids)).is_empty());
}

/// Points 21, 57, 60: ids are stable across changes and never reused until released (by a
/// conntrack sweep that finds no entry naming them, `plan::memory`), so a stale conntrack or
/// affinity entry can never point at a different backend or service.
#[test]
fn ids_survive_changes_and_stay_unused_until_released() {
    let one = |eps: &[Endpoint]| {
        desired(vec![
            (spn("a", Protocol::Tcp), sp(vec![cip("10.96.0.10", 80)], eps)),
            (spn("b", Protocol::Tcp), sp(vec![cip("10.96.0.11", 80)], &[ep("10.0.2.1", 80)])),
        ])
    };
    let mut ids = PlanMemory::default();
    let s1 = plan_state(&one(&[ep("10.0.1.1", 80), ep("10.0.1.2", 80)]), &mut ids);
    let id_of = |st: &MapState, a: [u8; 4]| {
        *st.backends.iter().find(|(_, b)| b.addr == v4_bytes(a)).unwrap_or_else(|| panic!("no backend {a:?}")).0
    };
    let id1 = id_of(&s1, [10, 0, 1, 1]);
    let id2 = id_of(&s1, [10, 0, 1, 2]);
    let max1 = *s1.backends.keys().max().unwrap();
    // Adding an endpoint keeps every existing id.
    let s2 = plan_state(&one(&[ep("10.0.1.1", 80), ep("10.0.1.2", 80), ep("10.0.1.3", 80)]), &mut ids);
    assert_eq!((id_of(&s2, [10, 0, 1, 1]), id_of(&s2, [10, 0, 1, 2])), (id1, id2));
    assert!(id_of(&s2, [10, 0, 1, 3]) > max1);
    let a_key = key_of("10.96.0.10", 80, Protocol::Tcp);
    assert_eq!(s2.services[&a_key].svc_id, s1.services[&a_key].svc_id);
    assert_eq!(s2.services[&a_key].select_id, s1.services[&a_key].select_id);
    // Removing an endpoint and adding it back gives it a fresh id.
    let s3 = plan_state(&one(&[ep("10.0.1.1", 80)]), &mut ids);
    assert!(!s3.backends.values().any(|b| b.addr == v4_bytes([10, 0, 1, 2])));
    let s4 = plan_state(&one(&[ep("10.0.1.1", 80), ep("10.0.1.2", 80)]), &mut ids);
    let all_before: BTreeSet<u32> = [&s1, &s2, &s3].iter().flat_map(|s| s.backends.keys().copied()).collect();
    assert!(id_of(&s4, [10, 0, 1, 2]) > *all_before.iter().max().unwrap());
    // A deleted and re-created ServicePort gets fresh svc and table ids.
    let only_b = desired(vec![(spn("b", Protocol::Tcp), sp(vec![cip("10.96.0.11", 80)], &[ep("10.0.2.1", 80)]))]);
    plan_state(&only_b, &mut ids);
    let s5 = plan_state(&one(&[ep("10.0.1.1", 80)]), &mut ids);
    assert!(s5.services[&a_key].svc_id > s4.services.values().map(|v| v.svc_id).max().unwrap());
    assert!(s5.services[&a_key].select_id > s4.services.values().map(|v| v.select_id).max().unwrap());
}

/// Point 55: one 16-byte address format for both families.
#[test]
fn addr16_round_trips_both_families() {
    for s in ["10.96.0.10", "0.0.0.0", "255.255.255.255", "fd00::1", "::1", "2001:db8::cb00:71fa"] {
        assert_eq!(ip_from16(addr16(ip(s))), ip(s), "{s}");
    }
    assert_eq!(addr16(ip("10.96.0.10")), v4_bytes([10, 96, 0, 10]));
}

// ---------------------------------------------------------------------------------------------
// diff and apply
// ---------------------------------------------------------------------------------------------

/// Point 59: an unchanged state produces no map writes.
#[test]
fn diff_of_identical_states_is_empty() {
    let st = plan(&sample());
    assert!(diff(&st, &st.clone()).is_empty());
    assert!(diff(&MapState::default(), &MapState::default()).is_empty());
}

/// Points 39, 59: programming from scratch only puts; removing everything only deletes.
#[test]
fn diff_from_and_to_empty_puts_or_deletes_everything() {
    let st = plan(&sample());
    let up = diff(&MapState::default(), &st);
    assert_eq!(
        up.len(),
        st.names.len()
            + st.labels.len()
            + st.backends.len()
            + st.members.len()
            + st.select.len()
            + st.maglev.len()
            + st.source_ranges.len()
            + st.services.len()
            + st.addr_filter.len()
            + st.local_marks.len()
    );
    assert!(up.iter().all(|op| rank(op) <= 5));
    let down = diff(&st, &MapState::default());
    assert_eq!(down.len(), up.len());
    assert!(down.iter().all(|op| rank(op) >= 6));
    assert_every_step_readable(&MapState::default(), &st);
    assert_every_step_readable(&st, &MapState::default());
}

/// Point 21: write order backends → select → services → delete services → delete select →
/// delete backends, so new connections never see a dangling or removed backend.
#[test]
fn diff_orders_backends_select_services_then_deletes_in_reverse() {
    let mut ids = PlanMemory::default();
    let old = plan_state(
        &desired(vec![
            (spn("keep", Protocol::Tcp), sp(vec![cip("10.96.0.10", 80)], &[ep("10.0.1.1", 80), ep("10.0.1.2", 80)])),
            // UDP: their tables' membership is written (and deleted) too.
            (spn("gone", Protocol::Udp), sp(vec![cip("10.96.0.11", 80)], &[ep("10.0.2.1", 80)])),
        ]),
        &mut ids,
    );
    let new = plan_state(
        &desired(vec![
            (spn("keep", Protocol::Tcp), sp(vec![cip("10.96.0.10", 80)], &[ep("10.0.1.2", 80)])),
            (spn("new", Protocol::Udp), sp(vec![cip("10.96.0.12", 80)], &[ep("10.0.3.1", 80), ep("10.0.3.2", 80)])),
        ]),
        &mut ids,
    );
    let all_ops = diff(&old, &new);
    assert_bitmap_ops_at_the_edges(&all_ops);
    let ops: Vec<Op> = all_ops.into_iter().filter(|op| !is_bitmap(op)).collect();
    let ranks: Vec<u8> = ops.iter().map(rank).collect();
    assert!(ranks.windows(2).all(|w| w[0] <= w[1]), "ops out of order: {ops:#?}");
    // Every kind of write occurs in this change (no source ranges are involved).
    assert_eq!(ranks.iter().copied().collect::<BTreeSet<u8>>(), [1, 2, 3, 5, 6, 8, 9, 10].into_iter().collect::<BTreeSet<u8>>());
    assert_every_step_readable(&old, &new);
}

/// Point 21: only the entries that changed are written.
#[test]
fn diff_is_minimal() {
    let d = sample();
    let mut ids = PlanMemory::default();
    let old = plan_state(&d, &mut ids);
    // Changing only web's affinity rewrites only web's frontends.
    let mut d2 = d.clone();
    Arc::make_mut(d2.services.get_mut(&spn("web", Protocol::Tcp)).unwrap()).affinity_timeout_s = Some(60);
    let new = plan_state(&d2, &mut ids);
    let ops = diff(&old, &new);
    assert_eq!(ops.len(), 3, "{ops:#?}"); // no address changed: the filter is not written
    assert!(ops.iter().all(|op| matches!(op, Op::PutService(_, v) if v.affinity_timeout_s == 60)));
    // Adding one endpoint to dns/UDP: one backend, one slot, one service value.
    let mut d3 = d.clone();
    let dns = Arc::make_mut(d3.services.get_mut(&spn("dns", Protocol::Udp)).unwrap());
    dns.internal.endpoints = pushed(&dns.internal.endpoints, ep("10.0.2.3", 53));
    dns.serving = pushed(&dns.serving, ep("10.0.2.3", 53));
    let ops = diff(&old, &plan_state(&d3, &mut ids));
    // The new address's bit, one backend, its membership, one slot, one service value.
    assert_eq!(ops.iter().map(rank).collect::<Vec<_>>(), [0, 1, 2, 3, 5], "{ops:#?}");
}

/// Points 21, 60: scaling down lowers `slot_count` (PutService) before the tail slots go.
#[test]
fn diff_scaling_3_to_1_lowers_slot_count_before_deleting_the_tail() {
    let state = |eps: &[Endpoint]| {
        desired(vec![(spn("web", Protocol::Tcp), sp(vec![cip("10.96.0.10", 80), np("192.168.0.10", 30080)], eps))])
    };
    let mut ids = PlanMemory::default();
    let old = plan_state(&state(&[ep("10.0.1.1", 80), ep("10.0.1.2", 80), ep("10.0.1.3", 80)]), &mut ids);
    // Keep the middle one, so slot 0 is rewritten too.
    let new = plan_state(&state(&[ep("10.0.1.2", 80)]), &mut ids);
    let ops = diff(&old, &new);
    let puts: Vec<usize> = ops
        .iter()
        .enumerate()
        .filter(|(_, op)| matches!(op, Op::PutService(_, v) if v.slot_count == 1))
        .map(|(i, _)| i)
        .collect();
    let dels: Vec<usize> =
        ops.iter().enumerate().filter(|(_, op)| matches!(op, Op::DelSelect(k) if k.slot >= 1)).map(|(i, _)| i).collect();
    assert_eq!(puts.len(), 2, "both frontends get slot_count 1: {ops:#?}");
    assert_eq!(dels.len(), 4, "slots 1 and 2 of both tables go: {ops:#?}");
    assert!(puts.iter().max() < dels.iter().min(), "{ops:#?}");
    // The retargeted slot 0 is written before the services, removed backends go last.
    let slot0 = ops.iter().position(|op| matches!(op, Op::PutSelect(k, _) if k.slot == 0)).expect("slot 0 retargeted");
    assert!(slot0 < *puts.iter().min().unwrap());
    let first_del_backend = ops.iter().position(|op| matches!(op, Op::DelBackend(_))).unwrap();
    assert!(first_del_backend > *dels.iter().max().unwrap());
    assert_eq!(ops.iter().filter(|op| matches!(op, Op::DelBackend(_))).count(), 2);
    assert_every_step_readable(&old, &new);
}

/// Points 21, 60: scaling up writes the new slots before raising `slot_count`.
#[test]
fn diff_scaling_1_to_3_writes_slots_before_raising_slot_count() {
    let state = |eps: &[Endpoint]| desired(vec![(spn("web", Protocol::Tcp), sp(vec![cip("10.96.0.10", 80)], eps))]);
    let mut ids = PlanMemory::default();
    let old = plan_state(&state(&[ep("10.0.1.1", 80)]), &mut ids);
    let new = plan_state(&state(&[ep("10.0.1.1", 80), ep("10.0.1.2", 80), ep("10.0.1.3", 80)]), &mut ids);
    let ops = diff(&old, &new);
    let put_svc = ops.iter().position(|op| matches!(op, Op::PutService(_, v) if v.slot_count == 3)).expect("slot_count raised");
    let last_slot = ops.iter().rposition(|op| matches!(op, Op::PutSelect(..))).unwrap();
    assert!(last_slot < put_svc, "{ops:#?}");
    assert_every_step_readable(&old, &new);
}

/// Point 21: after every single write, every frontend resolves completely, and only to
/// backends of its old or new endpoint set.
#[test]
fn diff_every_intermediate_state_is_readable() {
    let base = sample();
    let mut changed = base.clone();
    // web loses two endpoints and gains one, dns/UDP goes, a new service appears, lb changes
    // its external address, and a terminating endpoint becomes ready (flags change in place).
    {
        let web = Arc::make_mut(changed.services.get_mut(&spn("web", Protocol::Tcp)).unwrap());
        web.internal.endpoints = vec![ep("10.0.1.2", 8080), ep("10.0.1.3", 8080), ep("10.0.1.7", 8080)].into();
        web.external = set(&[]);
    }
    changed.services.remove(&spn("dns", Protocol::Udp));
    changed.services.insert(
        spn("fresh", Protocol::Udp),
        Arc::new(sp(vec![cip("10.96.0.99", 53)], &[ep("10.0.2.1", 53), ep("10.0.9.9", 53)])),
    );
    Arc::make_mut(changed.services.get_mut(&spn("lb", Protocol::Tcp)).unwrap()).frontends[1] =
        fe("198.51.100.8", 443, FrontendKind::LoadBalancer);

    let mut ids = PlanMemory::default();
    let a = plan_state(&base, &mut ids);
    let b = plan_state(&changed, &mut ids);
    let c = plan_state(&DesiredState::default(), &mut ids);
    let d = plan_state(&base, &mut ids);
    for (old, new) in [(&a, &b), (&b, &a), (&b, &c), (&c, &d), (&a, &d), (&d, &b)] {
        assert_every_step_readable(old, new);
    }
}

/// Point 59: the shadow copy after `apply(diff(old, new))` is exactly `new`.
#[test]
fn apply_of_diff_turns_old_into_new() {
    let base = sample();
    let mut other = base.clone();
    other.services.remove(&spn("web", Protocol::Tcp));
    {
        let sp = Arc::make_mut(other.services.get_mut(&spn("dns", Protocol::Tcp)).unwrap());
        sp.internal.endpoints = pushed(&sp.internal.endpoints, ep("10.0.2.2", 53));
    }
    let mut ids = PlanMemory::default();
    let states = [
        MapState::default(),
        plan_state(&base, &mut ids),
        plan_state(&other, &mut ids),
        plan_state(&base, &mut ids),
        MapState::default(),
    ];
    for old in &states {
        for new in &states {
            let mut st = old.clone();
            st.apply(&diff(old, new));
            assert_eq!(&st, new);
        }
    }
}

/// The dataplane's one-map-at-a-time apply (`diff_map`: every map's early writes in table
/// order, then every map's late writes in reverse, each computed on the state reached so far)
/// makes exactly the writes of `diff`, in the same order.
#[test]
fn diff_map_phases_make_the_writes_of_diff() {
    use crate::maps::{MapId, diff_map};
    let base = sample();
    let mut other = base.clone();
    other.services.remove(&spn("web", Protocol::Tcp));
    {
        let sp = Arc::make_mut(other.services.get_mut(&spn("dns", Protocol::Tcp)).unwrap());
        sp.internal.endpoints = pushed(&sp.internal.endpoints, ep("10.0.2.2", 53));
    }
    let mut ids = PlanMemory::default();
    let states = [MapState::default(), plan_state(&base, &mut ids), plan_state(&other, &mut ids), MapState::default()];
    for old in &states {
        for new in &states {
            let mut st = old.clone();
            let mut written = Vec::new();
            for &map in MapId::ALL {
                let (early, _) = diff_map(&st, new, map);
                st.apply(&early);
                written.extend(early);
            }
            for &map in MapId::ALL.iter().rev() {
                let (early, late) = diff_map(&st, new, map);
                assert!(early.is_empty(), "{map:?}: nothing early is left after the first phase");
                st.apply(&late);
                written.extend(late);
            }
            assert_eq!(&st, new);
            assert_eq!(written, diff(old, new));
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Restart adoption (PlanMemory::adopt)
// ---------------------------------------------------------------------------------------------

#[test]
fn point_59_adopt_after_restart_replans_the_same_state_with_zero_ops() {
    let d = sample();
    // The previous agent ran for a while, so ids are not simply 1..n.
    let mut old_ids = PlanMemory::default();
    plan_state(&desired(vec![(spn("x", Protocol::Tcp), sp(vec![cip("10.96.9.9", 80)], &[ep("10.9.9.9", 80)]))]), &mut old_ids);
    let pinned = plan_state(&d, &mut old_ids);
    // New process: fresh ids, adopt what is pinned.
    let mut ids = PlanMemory::default();
    ids.adopt(&pinned, &d);
    let replanned = plan_state(&d, &mut ids);
    assert_eq!(replanned, pinned);
    assert!(diff(&pinned, &replanned).is_empty());
}

#[test]
fn point_59_adopt_then_change_allocates_ids_above_the_adopted_ones() {
    let d = sample();
    let pinned = plan(&d);
    let mut ids = PlanMemory::default();
    ids.adopt(&pinned, &d);
    let mut d2 = d.clone();
    {
        let sp = Arc::make_mut(d2.services.get_mut(&spn("web2", Protocol::Tcp)).unwrap());
        sp.internal.endpoints = pushed(&sp.internal.endpoints, ep("10.0.1.10", 8080));
    }
    d2.services.insert(spn("late", Protocol::Tcp), Arc::new(sp(vec![cip("10.96.0.77", 80)], &[ep("10.0.7.7", 80)])));
    let st = plan_state(&d2, &mut ids);
    let max_backend = *pinned.backends.keys().max().unwrap();
    let max_svc = pinned.services.values().map(|v| v.svc_id).max().unwrap();
    let max_sel = pinned.services.values().map(|v| v.select_id).max().unwrap();
    let new_backends: Vec<u32> = st.backends.keys().filter(|id| !pinned.backends.contains_key(id)).copied().collect();
    assert_eq!(new_backends.len(), 2);
    assert!(new_backends.iter().all(|id| *id > max_backend));
    let late = st.services[&key_of("10.96.0.77", 80, Protocol::Tcp)];
    assert!(late.svc_id > max_svc && late.select_id > max_sel);
    // Everything that was already right is left alone.
    let ops = diff(&pinned, &st);
    assert!(ops.iter().all(|op| !matches!(op, Op::DelBackend(_) | Op::DelSelect(_) | Op::DelService(_))), "{ops:#?}");
    assert_every_step_readable(&pinned, &st);
}

#[test]
fn point_59_adopt_with_a_service_deleted_while_down_removes_only_it() {
    let d = sample();
    let pinned = plan(&d);
    let mut d2 = d.clone();
    d2.services.remove(&spn("lb", Protocol::Tcp));
    let mut ids = PlanMemory::default();
    ids.adopt(&pinned, &d2);
    let st = plan_state(&d2, &mut ids);
    let ops: Vec<Op> = diff(&pinned, &st).into_iter().filter(|op| !is_bitmap(op)).collect();
    assert!(ops.iter().all(|op| rank(op) >= 6), "only deletes expected: {ops:#?}");
    // 3 frontends + 3 markers, one table slot per class (2; a TCP ServicePort without affinity
    // has no membership entries), one backend, one name and its labels.
    assert_eq!(ops.len(), 3 + 3 + 2 + 1 + 1 + 1, "{ops:#?}");
}

#[test]
fn point_59_adopt_never_gives_two_service_ports_the_same_ids() {
    // While the agent was down, service x's nodePort 30080 was changed to 30081 and the freed
    // 30080 was given to a new service a. The pinned maps still hold x's old entries.
    let x_before = sp(
        vec![cip("10.96.0.1", 80), np("192.168.0.10", 30080), fe("198.51.100.1", 80, FrontendKind::LoadBalancer)],
        &[ep("10.0.1.1", 8080)],
    );
    let pinned = plan(&desired(vec![(spn("x", Protocol::Tcp), x_before)]));
    let now = desired(vec![
        (spn("a", Protocol::Tcp), sp(vec![cip("10.96.0.2", 80), np("192.168.0.10", 30080)], &[ep("10.0.9.1", 8080)])),
        (
            spn("x", Protocol::Tcp),
            sp(
                vec![cip("10.96.0.1", 80), np("192.168.0.10", 30081), fe("198.51.100.1", 80, FrontendKind::LoadBalancer)],
                &[ep("10.0.1.1", 8080)],
            ),
        ),
    ]);
    let mut ids = PlanMemory::default();
    ids.adopt(&pinned, &now);
    let st = plan_state(&now, &mut ids);
    let tcp = Protocol::Tcp;
    // Each frontend reaches its own service's endpoints...
    assert_eq!(show(&resolve(&st, &key_of("192.168.0.10", 30080, tcp))), ["10.0.9.1:8080/6"]);
    assert_eq!(show(&resolve(&st, &key_of("198.51.100.1", 80, tcp))), ["10.0.1.1:8080/6"]);
    // ...and the two ServicePorts have distinct affinity scopes and tables.
    let a = st.services[&key_of("10.96.0.2", 80, tcp)];
    let x = st.services[&key_of("10.96.0.1", 80, tcp)];
    assert_ne!(a.svc_id, x.svc_id);
    let tables_a = [a.select_id, st.services[&key_of("192.168.0.10", 30080, tcp)].select_id];
    let tables_x = [x.select_id, st.services[&key_of("198.51.100.1", 80, tcp)].select_id];
    assert!(tables_a.iter().all(|t| !tables_x.contains(t)), "{tables_a:?} {tables_x:?}");
}

#[test]
fn point_59_adopt_when_ports_swapped_while_down_routes_correctly() {
    // Ports 80 and 81 of one Service swapped names while the agent was down: the adopted ids
    // swap with them, but every frontend must still reach its own endpoints.
    let named = |name: &str| ServicePortName { port_name: name.into(), ..spn("svc", Protocol::Tcp) };
    let before = desired(vec![
        (named("p"), sp(vec![cip("10.96.0.1", 80)], &[ep("10.0.1.1", 8080)])),
        (named("q"), sp(vec![cip("10.96.0.1", 81)], &[ep("10.0.1.1", 8081)])),
    ]);
    let after = desired(vec![
        (named("p"), sp(vec![cip("10.96.0.1", 81)], &[ep("10.0.1.1", 8080)])),
        (named("q"), sp(vec![cip("10.96.0.1", 80)], &[ep("10.0.1.1", 8081)])),
    ]);
    let pinned = plan(&before);
    let mut ids = PlanMemory::default();
    ids.adopt(&pinned, &after);
    let st = plan_state(&after, &mut ids);
    let tcp = Protocol::Tcp;
    assert_eq!(show(&resolve(&st, &key_of("10.96.0.1", 81, tcp))), ["10.0.1.1:8080/6"]);
    assert_eq!(show(&resolve(&st, &key_of("10.96.0.1", 80, tcp))), ["10.0.1.1:8081/6"]);
    assert_every_step_readable(&pinned, &st);
}

// ---------------------------------------------------------------------------------------------
// Dual-stack (point 55) and IPv6 keys
// ---------------------------------------------------------------------------------------------

/// A dual-stack Service's port as the compile step gives it: one ServicePort per family, the
/// same name, the same port, each with its family's frontends and endpoints.
fn dual_stack() -> DesiredState {
    let mut lb6 = sp(
        vec![cip("fd00:96::10", 80), np("fd00::10", 30080), fe("2001:db8::7", 80, FrontendKind::LoadBalancer)],
        &[ep("fd00:1::1", 8080), ep("fd00:1::2", 8080)],
    );
    lb6.source_ranges = vec![Cidr { addr: ip("2001:db8:1:2:3::"), prefix: 64 }];
    let mut lb4 = sp(
        vec![cip("10.96.0.10", 80), np("192.168.0.10", 30080), fe("198.51.100.7", 80, FrontendKind::LoadBalancer)],
        &[ep("10.0.1.1", 8080), ep("10.0.1.2", 8080)],
    );
    lb4.source_ranges = vec![Cidr { addr: ip("203.0.113.77"), prefix: 24 }];
    desired(vec![(spn("web", Protocol::Tcp), lb4), (spn6("web", Protocol::Tcp), lb6)])
}

/// Point 55: the two families of a ServicePort have their own svc_id, names and selection
/// tables, and every frontend resolves only to backends of its own family; IPv6 addresses are
/// stored as they are (not mapped), IPv4 ones IPv4-mapped.
#[test]
fn point_55_each_family_has_its_own_svc_id_and_tables() {
    let st = plan(&dual_stack());
    let v = |addr: &str, port: u16| st.services[&key_of(addr, port, Protocol::Tcp)];
    let (c4, n4, l4) = (v("10.96.0.10", 80), v("192.168.0.10", 30080), v("198.51.100.7", 80));
    let (c6, n6, l6) = (v("fd00:96::10", 80), v("fd00::10", 30080), v("2001:db8::7", 80));
    assert!([n4, l4].iter().all(|x| x.svc_id == c4.svc_id));
    assert!([n6, l6].iter().all(|x| x.svc_id == c6.svc_id));
    assert_ne!(c4.svc_id, c6.svc_id);
    let tables4: BTreeSet<u32> = [c4, n4, l4].iter().flat_map(|x| [x.select_id, x.cluster_select_id]).collect();
    let tables6: BTreeSet<u32> = [c6, n6, l6].iter().flat_map(|x| [x.select_id, x.cluster_select_id]).collect();
    assert!(tables4.is_disjoint(&tables6), "{tables4:?} {tables6:?}");
    assert_eq!(st.names[&c4.svc_id].as_str(), "ns/web/TCP");
    assert_eq!(st.names[&c6.svc_id].as_str(), "ns/web/TCP/IPv6");
    for addr in ["10.96.0.10", "192.168.0.10", "198.51.100.7"] {
        let port = if addr.starts_with("192.") { 30080 } else { 80 };
        assert_eq!(show(&resolve(&st, &key_of(addr, port, Protocol::Tcp))), ["10.0.1.1:8080/6", "10.0.1.2:8080/6"]);
    }
    for addr in ["fd00:96::10", "fd00::10", "2001:db8::7"] {
        let port = if addr == "fd00::10" { 30080 } else { 80 };
        assert_eq!(show(&resolve(&st, &key_of(addr, port, Protocol::Tcp))), ["[fd00:1::1]:8080/6", "[fd00:1::2]:8080/6"]);
    }
    // Byte layout: the IPv6 ClusterIP and backend verbatim, an address marker per address.
    assert!(st.services.contains_key(&key_bytes(ip6("fd00:96::10"), 80, IPPROTO_TCP)));
    assert!(st.services.get(&key_bytes(ip6("fd00:96::10"), 0, 0)).is_some_and(is_marker));
    assert!(st.backends.values().any(|b| b.addr == ip6("fd00:1::1") && b.port_be.to_ne_bytes() == [0x1f, 0x90]));
    assert!(st.backends.values().any(|b| b.addr == v4_bytes([10, 0, 1, 1])));
}

/// Point 48: an IPv6 source range is keyed with prefix length 128 + n (no 96 offset: the
/// address is stored as is) and its host bits cleared; an IPv4 range with 128 + 96 + n.
#[test]
fn point_48_ipv6_source_range_keys() {
    let SourceRangeKey { prefix_len: len, data } =
        source_range(ip("2001:db8::7"), &Cidr { addr: ip("2001:db8:1:2:3::"), prefix: 64 });
    assert_eq!(len, 128 + 64);
    assert_eq!(data.frontend, ip6("2001:db8::7"));
    assert_eq!(data.source, ip6("2001:db8:1:2::"), "host bits cleared");
    let SourceRangeKey { prefix_len: len, data } =
        source_range(ip("2001:db8::7"), &Cidr { addr: ip("2001:db8:1:2:3::"), prefix: 51 });
    assert_eq!(len, 128 + 51);
    assert_eq!(data.source, ip6("2001:db8:1::"), "/51 keeps 3 bits of the 4th group (2 = 0b000..010)");
    let SourceRangeKey { prefix_len: len, data } = source_range(ip("2001:db8::7"), &Cidr { addr: ip("::"), prefix: 0 });
    assert_eq!((len, data.source), (128, [0; 16]), "::/0 matches every IPv6 source");
    let SourceRangeKey { prefix_len: len, data } =
        source_range(ip("2001:db8::7"), &Cidr { addr: ip("2001:db8::1"), prefix: 128 });
    assert_eq!((len, data.source), (256, ip6("2001:db8::1")));
    // IPv4: mapped, 96 + n.
    let SourceRangeKey { prefix_len: len, data } =
        source_range(ip("198.51.100.7"), &Cidr { addr: ip("203.0.113.77"), prefix: 24 });
    assert_eq!(len, 128 + 96 + 24);
    assert_eq!(data.frontend, v4_bytes([198, 51, 100, 7]));
    assert_eq!(data.source, v4_bytes([203, 0, 113, 0]));
}

/// Point 48 per family (55): each family's LoadBalancer IP gets its family's ranges only.
#[test]
fn point_48_55_source_ranges_are_planned_per_family() {
    let st = plan(&dual_stack());
    let lb4 = st.services[&key_of("198.51.100.7", 80, Protocol::Tcp)];
    let lb6 = st.services[&key_of("2001:db8::7", 80, Protocol::Tcp)];
    assert!(lb4.flags & SVC_F_SOURCE_RANGES != 0 && lb6.flags & SVC_F_SOURCE_RANGES != 0);
    for k in ["10.96.0.10", "fd00:96::10"] {
        assert_eq!(st.services[&key_of(k, 80, Protocol::Tcp)].flags & SVC_F_SOURCE_RANGES, 0, "ClusterIP {k}");
    }
    let range = |prefix_len, frontend, source| (SourceRangeKey { prefix_len, data: SourceRangeData { frontend, source } }, ());
    let want: BTreeMap<SourceRangeKey, ()> = [
        range(128 + 96 + 24, v4_bytes([198, 51, 100, 7]), v4_bytes([203, 0, 113, 0])),
        range(128 + 64, ip6("2001:db8::7"), ip6("2001:db8:1:2::")),
    ]
    .into();
    assert_eq!(st.source_ranges, want);
}

/// Point 48: ranges of the other family never apply to a LoadBalancer IP (they could never
/// match its sources); with none of its own family it is not restricted, as in kube-proxy,
/// whose per-family proxier only sees its family's ranges.
#[test]
fn point_48_ranges_of_the_other_family_do_not_restrict() {
    let mut d = dual_stack();
    let v6 = Arc::make_mut(d.services.get_mut(&spn6("web", Protocol::Tcp)).unwrap());
    v6.source_ranges = vec![Cidr { addr: ip("203.0.113.0"), prefix: 24 }];
    let st = plan(&d);
    let lb6 = st.services[&key_of("2001:db8::7", 80, Protocol::Tcp)];
    assert_eq!(lb6.flags & SVC_F_SOURCE_RANGES, 0);
    assert!(st.source_ranges.keys().all(|r| r.data.frontend != ip6("2001:db8::7")), "{:?}", st.source_ranges);
}

/// Point 59 with dual-stack: a restarted agent adopts both families' ids and rewrites nothing.
#[test]
fn point_59_adopting_a_dual_stack_state_rewrites_nothing() {
    let d = dual_stack();
    let pinned = plan(&d);
    let mut ids = PlanMemory::default();
    ids.adopt(&pinned, &d);
    let st = plan_state(&d, &mut ids);
    assert_eq!(diff(&pinned, &st), []);
}

/// Point 55: a family added to a running Service (SingleStack → PreferDualStack) is written
/// without touching the other family's entries, and every step stays readable.
#[test]
fn point_55_adding_the_second_family_leaves_the_first_alone() {
    let full = dual_stack();
    let mut v4only = full.clone();
    v4only.services.remove(&spn6("web", Protocol::Tcp));
    let mut ids = PlanMemory::default();
    let before = plan_state(&v4only, &mut ids);
    let after = plan_state(&full, &mut ids);
    let ops = diff(&before, &after);
    assert!(
        ops.iter().all(|op| !matches!(op, Op::DelService(_) | Op::DelBackend(_) | Op::DelSelect(_) | Op::DelMember(_))),
        "{ops:?}"
    );
    for (k, v) in &before.services {
        assert_eq!(after.services.get(k), Some(v), "IPv4 entry rewritten");
    }
    assert_every_step_readable(&before, &after);
}

/// Point 57: the serving set shares a selection table's members when it equals the table's set,
/// and is a members-only table of its own otherwise; frontends point at it either way, and an
/// agent restarted on the maps adopts it.
#[test]
fn point_57_serving_members_reuse_an_equal_table_or_get_their_own() {
    let eps = [ep("10.0.1.1", 80), ep("10.0.1.2", 80)];
    let mut all_ready = sp(vec![cip("10.96.0.10", 80)], &eps);
    all_ready.serving = eps.into();
    let d = desired(vec![(spn("web", Protocol::Udp), all_ready.clone())]);
    let st = plan_state(&d, &mut PlanMemory::default());
    let v = st.services.values().find(|v| v.flags & SVC_F_ADDR_MARKER == 0).unwrap();
    assert_eq!(v.serving_select_id, v.select_id, "the internal table's members are the serving set");

    let mut draining = all_ready;
    draining.internal.endpoints = draining.internal.endpoints[..1].into();
    draining.cluster = draining.cluster[..1].into();
    draining.external.endpoints = draining.external.endpoints[..1].into();
    let d2 = desired(vec![(spn("web", Protocol::Udp), draining)]);
    let mut ids = PlanMemory::default();
    let st2 = plan_state(&d2, &mut ids);
    let v = *st2.services.values().find(|v| v.flags & SVC_F_ADDR_MARKER == 0).unwrap();
    assert_ne!(v.serving_select_id, v.select_id);
    let serving: Vec<u32> = st2.members.keys().filter(|m| m.select_id == v.serving_select_id).map(|m| m.backend_id).collect();
    assert_eq!(serving.len(), 2, "both endpoints still serve");
    assert!(!st2.select.keys().any(|k| k.select_id == v.serving_select_id), "members only, no slots");
    assert_every_step_readable(&st, &st2);
    // A restarted agent adopts the same ids and writes nothing.
    let mut fresh = PlanMemory::default();
    fresh.adopt(&st2, &d2);
    assert_eq!(plan_state(&d2, &mut fresh), st2);
}

/// Points 27 and 57 are where the datapath reads a table's membership: affinity (a remembered
/// backend still in the set) and datagram flows (a backend still serving). A TCP ServicePort
/// without affinity gets no membership entries; the others do; `lb` reads the same set of
/// backends for every table either way, Maglev or random.
#[test]
fn membership_is_written_where_the_datapath_reads_it_and_every_table_lists_its_backends() {
    let eps = [ep("10.0.1.1", 80), ep("10.0.1.2", 80), ep("10.0.1.3", 80)];
    let tcp = sp(vec![cip("10.96.0.10", 80)], &eps);
    let mut affinity = sp(vec![cip("10.96.0.11", 80)], &eps);
    affinity.affinity_timeout_s = Some(10_800);
    let mut maglev = sp(vec![cip("10.96.0.12", 80)], &eps);
    maglev.selection = Selection::Maglev;
    let udp = sp(vec![cip("10.96.0.13", 53)], &eps);
    let d = desired(vec![
        (spn("tcp", Protocol::Tcp), tcp),
        (spn("affinity", Protocol::Tcp), affinity),
        (spn("maglev", Protocol::Tcp), maglev),
        (spn("udp", Protocol::Udp), udp),
    ]);
    let st = plan_state(&d, &mut PlanMemory::default());
    let table = |vip: &str, port: u16, proto: Protocol| st.services[&key_of(vip, port, proto)].select_id;
    let members = |t: u32| st.members.keys().filter(|m| m.select_id == t).count();
    assert_eq!(members(table("10.96.0.10", 80, Protocol::Tcp)), 0, "TCP without affinity: never read");
    assert_eq!(members(table("10.96.0.12", 80, Protocol::Tcp)), 0, "the same with Maglev");
    assert_eq!(members(table("10.96.0.11", 80, Protocol::Tcp)), 3, "affinity (point 27)");
    assert_eq!(members(table("10.96.0.13", 53, Protocol::Udp)), 3, "datagrams (point 57)");
    let addrs = |t: u32| -> BTreeSet<[u8; 16]> { st.table_backends(t).iter().map(|id| st.backends[id].addr).collect() };
    let want = addrs(table("10.96.0.13", 53, Protocol::Udp));
    assert_eq!(want.len(), 3);
    for (vip, port) in [("10.96.0.10", 80), ("10.96.0.11", 80), ("10.96.0.12", 80)] {
        assert_eq!(addrs(table(vip, port, Protocol::Tcp)), want, "{vip}: the same three backends");
    }
}

/// `list` with `e` added at its end.
fn pushed(list: &[Endpoint], e: Endpoint) -> crate::model::Endpoints {
    list.iter().cloned().chain([e]).collect()
}
