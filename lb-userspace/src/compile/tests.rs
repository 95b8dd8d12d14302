//! Unit tests of the pure compile step. Every test names the point of the semantics reference
//! (`docs/semantics.md`) it proves (`point_NN_...`), or cites it in its doc
//! comment (the `bad_input_*` tests).
//!
//! Objects are written as JSON (or YAML) the way the API server would serve them and
//! deserialised into the k8s-openapi types, so the tests exercise the same field spellings as
//! real manifests.
//!
//! `&[obj.clone()]` is kept over `slice::from_ref(&obj)` for readability.
#![allow(clippy::cloned_ref_to_slice_refs)]

use std::{collections::BTreeSet, net::IpAddr};

use k8s_openapi::api::core::v1::Service;

use crate::model::{
    kubernetes::{LABEL_HEADLESS, LABEL_SERVICE_NAME, LABEL_SERVICE_PROXY_NAME},
    slice::Slice,
};
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use super::*;
use crate::model::{DesiredState, EndpointSet, FrontendKind, Protocol, ServicePortName, ServicePortState};

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

const NS: &str = "ns";
const NODE: &str = "node-a";
const OTHER_NODE: &str = "node-b";

fn obj<T: DeserializeOwned>(v: Value) -> T {
    serde_json::from_value(v).expect("test object must deserialise")
}

fn yaml<T: DeserializeOwned>(s: &str) -> T {
    serde_yaml::from_str(s).expect("test manifest must deserialise")
}

/// A Service in namespace `ns` with the given spec.
fn svc(name: &str, spec: Value) -> Service {
    obj(json!({ "metadata": { "name": name, "namespace": NS }, "spec": spec }))
}

/// A `type: ClusterIP` Service with one unnamed TCP port 80 → 8080.
fn simple_svc(name: &str, cluster_ip: &str) -> Service {
    svc(
        name,
        json!({
            "type": "ClusterIP",
            "clusterIP": cluster_ip,
            "ports": [{ "port": 80, "protocol": "TCP", "targetPort": 8080 }],
        }),
    )
}

/// An IPv4 EndpointSlice of `service` in namespace `ns`.
fn slice(service: &str, slice_name: &str, ports: Value, endpoints: Value) -> Slice {
    slice_of("IPv4", NS, service, slice_name, ports, endpoints)
}

fn slice_of(address_type: &str, ns: &str, service: &str, slice_name: &str, ports: Value, endpoints: Value) -> Slice {
    obj(json!({
        "metadata": {
            "name": slice_name,
            "namespace": ns,
            "labels": { "kubernetes.io/service-name": service },
        },
        "addressType": address_type,
        "ports": ports,
        "endpoints": endpoints,
    }))
}

/// The slice port list matching [`simple_svc`]'s unnamed port.
fn unnamed_port(port: i32) -> Value {
    json!([{ "name": "", "port": port, "protocol": "TCP" }])
}

/// A ready, serving, not terminating endpoint.
fn ep(addr: &str, node: &str) -> Value {
    ep_cond(addr, node, true, true, false)
}

fn ep_cond(addr: &str, node: &str, ready: bool, serving: bool, terminating: bool) -> Value {
    json!({
        "addresses": [addr],
        "nodeName": node,
        "conditions": { "ready": ready, "serving": serving, "terminating": terminating },
    })
}

/// Not ready, still serving, terminating: the serving-terminating fallback candidate.
fn ep_terminating(addr: &str, node: &str) -> Value {
    ep_cond(addr, node, false, true, true)
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// This node: two IPv4 addresses and one IPv6 address, zone `zone-a`.
fn node() -> NodeContext {
    NodeContext {
        external_ip_cidrs: None,
        lb_ip_cidrs: None,
        name: NODE.into(),
        addresses: vec![ip("192.168.0.10"), ip("10.1.0.10"), ip("fd00::10")],
        zone: Some("zone-a".into()),
    }
}

fn v4(services: &[Service], slices: &[Slice]) -> DesiredState {
    compile(services, slices, &node(), Family::V4)
}

fn v6(services: &[Service], slices: &[Slice]) -> DesiredState {
    compile(services, slices, &node(), Family::V6)
}

fn spn(family: Family, name: &str, port_name: &str, protocol: Protocol) -> ServicePortName {
    ServicePortName { namespace: NS.into(), name: name.into(), port_name: port_name.into(), protocol, family }
}

/// The state of one ServicePort of a single-family state (from [`v4`] or [`v6`]): the port of
/// whichever family the state holds; panics listing what was compiled instead.
fn port<'a>(st: &'a DesiredState, name: &str, port_name: &str, protocol: Protocol) -> &'a ServicePortState {
    let found: Vec<Family> =
        Family::ALL.into_iter().filter(|f| st.services.contains_key(&spn(*f, name, port_name, protocol))).collect();
    match found[..] {
        [family] => port_in(st, family, name, port_name, protocol),
        [] => port_in(st, Family::V4, name, port_name, protocol),
        _ => panic!("{name}:{port_name} compiled in both families; use port_in"),
    }
}

/// The state of one ServicePort of one family; panics listing what was compiled instead.
fn port_in<'a>(st: &'a DesiredState, family: Family, name: &str, port_name: &str, protocol: Protocol) -> &'a ServicePortState {
    let key = spn(family, name, port_name, protocol);
    st.services.get(&key).unwrap_or_else(|| {
        panic!(
            "{key} not compiled; have {:?}, rejected {:?}",
            st.services.keys().map(ToString::to_string).collect::<Vec<_>>(),
            st.rejected
        )
    })
}

/// The unnamed TCP port of a [`simple_svc`]-like Service.
fn tcp<'a>(st: &'a DesiredState, name: &str) -> &'a ServicePortState {
    port(st, name, "", Protocol::Tcp)
}

/// `addr:port` of every endpoint of a set, in the set's order.
fn eps(set: &EndpointSet) -> Vec<String> {
    set.endpoints
        .iter()
        .map(|e| match e.addr {
            IpAddr::V4(a) => format!("{a}:{}", e.port),
            IpAddr::V6(a) => format!("[{a}]:{}", e.port),
        })
        .collect()
}

/// `kind addr:port` of every frontend.
fn fes(sp: &ServicePortState) -> BTreeSet<String> {
    sp.frontends
        .iter()
        .map(|f| {
            let kind = match f.kind {
                FrontendKind::ClusterIp => "cluster",
                FrontendKind::NodePort => "nodeport",
                FrontendKind::ExternalIp => "external",
                FrontendKind::LoadBalancer => "lb",
            };
            match f.addr {
                IpAddr::V4(a) => format!("{kind} {a}:{}", f.port),
                IpAddr::V6(a) => format!("{kind} [{a}]:{}", f.port),
            }
        })
        .collect()
}

fn set_of(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| s.to_string()).collect()
}

fn names(st: &DesiredState) -> BTreeSet<String> {
    st.services.keys().map(|k| k.name.clone()).collect()
}

/// `spec.ports[0].port` → `spec.ports.port`: a path with its list indices and map keys removed.
fn without_indices(at: &str) -> String {
    let mut out = String::new();
    let mut depth = 0usize;
    for c in at.chars() {
        match c {
            '[' => depth += 1,
            ']' => depth = depth.saturating_sub(1),
            _ if depth > 0 => {}
            c => out.push(c),
        }
    }
    out
}

/// Asserts that exactly `bad` was rejected, once, with a reason containing `field`; that no
/// port of it was programmed; and that `good` compiled exactly as it does alone.
fn assert_rejected(bad: Service, field: &str) {
    let good = simple_svc("good", "10.96.0.10");
    let good_slice = slice("good", "good-1", unnamed_port(8080), json!([ep("10.0.1.1", NODE)]));
    let bad_slice = slice("bad", "bad-1", unnamed_port(8080), json!([ep("10.0.2.1", NODE)]));
    let alone = v4(&[good.clone()], &[good_slice.clone()]);
    let st = v4(&[bad, good], &[bad_slice, good_slice]);
    assert_eq!(st.rejected.len(), 1, "{:?}", st.rejected);
    assert_eq!(st.rejected[0].object, "Service ns/bad");
    let reason = &st.rejected[0].reason;
    assert!(reason.to_string().contains(field), "reason {reason} does not name {field:?}");
    // The metric label is the field's path without list indices and map keys.
    assert_eq!(reason.field.label(), without_indices(&reason.at), "{reason}");
    assert!(st.services.keys().all(|k| k.name != "bad"), "a port of a rejected Service was programmed");
    assert_eq!(st.services, alone.services, "the valid Service was affected");
}

// ---------------------------------------------------------------------------------------------
// 1.A Which objects are programmed
// ---------------------------------------------------------------------------------------------

#[test]
fn point_01_headless_service_is_not_programmed() {
    let none = simple_svc("none", "None");
    let empty = simple_svc("empty", "");
    let absent = svc("absent", json!({ "ports": [{ "port": 80 }] }));
    let control = simple_svc("control", "10.96.0.10");
    let slices: Vec<_> = ["none", "empty", "absent", "control"]
        .iter()
        .map(|s| slice(s, &format!("{s}-1"), unnamed_port(8080), json!([ep("10.0.1.1", NODE)])))
        .collect();
    let st = v4(&[none, empty, absent, control], &slices);
    assert_eq!(names(&st), set_of(&["control"]));
    // Skipped by design, not rejected.
    assert!(st.rejected.is_empty(), "{:?}", st.rejected);
}

#[test]
fn point_02_external_name_service_is_not_programmed_even_with_a_cluster_ip() {
    let spec = |ty: &str| {
        json!({
            "type": ty,
            "externalName": "example.com",
            "clusterIP": "10.96.0.20",
            "ports": [{ "port": 80 }],
        })
    };
    let slices = [slice("ext", "ext-1", unnamed_port(8080), json!([ep("10.0.1.1", NODE)]))];
    // ClusterIP → ExternalName transition: the old ClusterIP is no longer programmed.
    let before = v4(&[svc("ext", spec("ClusterIP"))], &slices);
    assert_eq!(fes(tcp(&before, "ext")), set_of(&["cluster 10.96.0.20:80"]));
    let after = v4(&[svc("ext", spec("ExternalName"))], &slices);
    assert!(after.services.is_empty());
    assert!(after.rejected.is_empty(), "{:?}", after.rejected);
}

#[test]
fn point_03_cluster_ip_type_programs_only_the_cluster_ip() {
    // `type` absent is the API default, ClusterIP.
    let implicit = svc("implicit", json!({ "clusterIP": "10.96.0.11", "ports": [{ "port": 80 }] }));
    let explicit = simple_svc("explicit", "10.96.0.10");
    let st = v4(&[implicit, explicit], &[]);
    assert_eq!(fes(tcp(&st, "explicit")), set_of(&["cluster 10.96.0.10:80"]));
    assert_eq!(fes(tcp(&st, "implicit")), set_of(&["cluster 10.96.0.11:80"]));
}

#[test]
fn point_03_node_port_type_adds_node_ports() {
    let s = svc(
        "np",
        json!({
            "type": "NodePort",
            "clusterIP": "10.96.0.10",
            "ports": [{ "port": 80, "nodePort": 30080 }],
        }),
    );
    let st = v4(&[s], &[]);
    assert_eq!(
        fes(tcp(&st, "np")),
        set_of(&["cluster 10.96.0.10:80", "nodeport 10.1.0.10:30080", "nodeport 192.168.0.10:30080",])
    );
}

#[test]
fn point_03_load_balancer_implies_node_port_and_ingress_ips() {
    let s: Service = yaml(
        r#"
apiVersion: v1
kind: Service
metadata: { name: lb, namespace: ns }
spec:
  type: LoadBalancer
  clusterIP: 10.96.0.10
  clusterIPs: [10.96.0.10]
  ipFamilies: [IPv4]
  ports:
  - { name: http, port: 80, targetPort: 8080, nodePort: 30080, protocol: TCP }
status:
  loadBalancer:
    ingress:
    - ip: 198.51.100.7
"#,
    );
    let st = v4(&[s], &[]);
    assert_eq!(
        fes(port(&st, "lb", "http", Protocol::Tcp)),
        set_of(&["cluster 10.96.0.10:80", "lb 198.51.100.7:80", "nodeport 10.1.0.10:30080", "nodeport 192.168.0.10:30080",])
    );
}

#[test]
fn point_03_load_balancer_without_node_ports_programs_no_node_port() {
    // allocateLoadBalancerNodePorts: false → nodePort absent or 0.
    let mk = |name: &str, node_port: Value| {
        let mut p = json!({ "port": 80 });
        if !node_port.is_null() {
            p["nodePort"] = node_port;
        }
        obj::<Service>(json!({
            "metadata": { "name": name, "namespace": NS },
            "spec": {
                "type": "LoadBalancer",
                "clusterIP": "10.96.0.10",
                "allocateLoadBalancerNodePorts": false,
                "ports": [p],
            },
            "status": { "loadBalancer": { "ingress": [{ "ip": "198.51.100.7" }] } },
        }))
    };
    let st = v4(&[mk("absent", Value::Null), mk("zero", json!(0))], &[]);
    for name in ["absent", "zero"] {
        assert_eq!(fes(tcp(&st, name)), set_of(&["cluster 10.96.0.10:80", "lb 198.51.100.7:80"]), "{name}");
    }
    assert!(st.rejected.is_empty(), "{:?}", st.rejected);
}

#[test]
fn point_03_ingress_status_is_ignored_unless_type_load_balancer() {
    let s: Service = obj(json!({
        "metadata": { "name": "np", "namespace": NS },
        "spec": {
            "type": "NodePort",
            "clusterIP": "10.96.0.10",
            "ports": [{ "port": 80, "nodePort": 30080 }],
        },
        "status": { "loadBalancer": { "ingress": [{ "ip": "198.51.100.7" }] } },
    }));
    let st = v4(&[s], &[]);
    assert!(!fes(tcp(&st, "np")).iter().any(|f| f.starts_with("lb ")), "{:?}", fes(tcp(&st, "np")));
}

#[test]
fn point_04_label_opt_outs_are_not_programmed() {
    let labelled = |name: &str, label: &str| -> Service {
        obj(json!({
            "metadata": { "name": name, "namespace": NS, "labels": { label: "anything" } },
            "spec": { "clusterIP": "10.96.0.30", "ports": [{ "port": 80 }] },
        }))
    };
    let st = v4(
        &[
            labelled("proxied-elsewhere", LABEL_SERVICE_PROXY_NAME),
            labelled("headless-label", LABEL_HEADLESS),
            simple_svc("control", "10.96.0.10"),
        ],
        &[],
    );
    assert_eq!(names(&st), set_of(&["control"]));
    assert!(st.rejected.is_empty(), "{:?}", st.rejected);
    // Removing the label brings it back.
    let back = v4(&[simple_svc("proxied-elsewhere", "10.96.0.30")], &[]);
    assert_eq!(names(&back), set_of(&["proxied-elsewhere"]));
}

#[test]
fn point_04_opted_out_endpoint_slices_are_ignored() {
    // The EndpointSlice controller copies Service labels onto slices; kube-proxy's label
    // selector applies to the slice informer too.
    let mut opted_out = slice("web", "web-2", unnamed_port(8080), json!([ep("10.0.1.2", NODE)]));
    opted_out
        .set_labels(Some(&[(LABEL_SERVICE_NAME.into(), "web".into()), (LABEL_SERVICE_PROXY_NAME.into(), "other".into())].into()));
    let mut headless = slice("web", "web-3", unnamed_port(8080), json!([ep("10.0.1.3", NODE)]));
    headless.set_labels(Some(&[(LABEL_SERVICE_NAME.into(), "web".into()), (LABEL_HEADLESS.into(), String::new())].into()));
    let normal = slice("web", "web-1", unnamed_port(8080), json!([ep("10.0.1.1", NODE)]));
    let st = v4(&[simple_svc("web", "10.96.0.10")], &[normal, opted_out, headless]);
    assert_eq!(eps(&tcp(&st, "web").internal), ["10.0.1.1:8080"]);
}

#[test]
fn point_05_dual_stack_service_uses_the_cluster_ip_of_each_family() {
    let s = svc(
        "ds",
        json!({
            "type": "NodePort",
            "clusterIP": "fd00:96::10",
            "clusterIPs": ["fd00:96::10", "10.96.0.10"],
            "ipFamilies": ["IPv6", "IPv4"],
            "ports": [{ "port": 80, "nodePort": 30080 }],
        }),
    );
    let slices = [
        slice_of("IPv4", NS, "ds", "ds-v4", unnamed_port(8080), json!([ep("10.0.1.1", NODE)])),
        slice_of("IPv6", NS, "ds", "ds-v6", unnamed_port(8080), json!([ep("fd00:1::1", NODE)])),
    ];
    let st4 = v4(&[s.clone()], &slices);
    assert_eq!(
        fes(tcp(&st4, "ds")),
        set_of(&["cluster 10.96.0.10:80", "nodeport 10.1.0.10:30080", "nodeport 192.168.0.10:30080",])
    );
    assert_eq!(eps(&tcp(&st4, "ds").internal), ["10.0.1.1:8080"]);
    let st6 = v6(&[s], &slices);
    assert_eq!(fes(tcp(&st6, "ds")), set_of(&["cluster [fd00:96::10]:80", "nodeport [fd00::10]:30080"]));
    assert_eq!(eps(&tcp(&st6, "ds").internal), ["[fd00:1::1]:8080"]);
}

#[test]
fn point_05_single_stack_service_is_not_programmed_in_the_other_family() {
    let s = svc(
        "v4only",
        json!({
            "type": "NodePort",
            "clusterIP": "10.96.0.10",
            "clusterIPs": ["10.96.0.10"],
            "ipFamilies": ["IPv4"],
            "ports": [{ "port": 80, "nodePort": 30080 }],
        }),
    );
    // Not even its NodePort on the node's IPv6 address.
    let st6 = v6(&[s.clone()], &[]);
    assert!(st6.services.is_empty(), "{:?}", st6.services);
    assert!(st6.rejected.is_empty(), "{:?}", st6.rejected);
    assert_eq!(names(&v4(&[s], &[])), set_of(&["v4only"]));
}

#[test]
fn point_05_without_ip_families_the_cluster_ip_family_decides() {
    let s4 = simple_svc("legacy4", "10.96.0.10");
    let s6 = simple_svc("legacy6", "fd00:96::10");
    let st4 = v4(&[s4.clone(), s6.clone()], &[]);
    assert_eq!(names(&st4), set_of(&["legacy4"]));
    let st6 = v6(&[s4, s6], &[]);
    assert_eq!(names(&st6), set_of(&["legacy6"]));
    assert_eq!(fes(tcp(&st6, "legacy6")), set_of(&["cluster [fd00:96::10]:80"]));
}

#[test]
fn point_06_selectorless_service_takes_any_slice_labelled_with_its_name() {
    // No spec.selector; slices created by hand (managed-by ignored), in several slices.
    let s = simple_svc("manual", "10.96.0.10");
    let mut hand_made = slice("manual", "manual-a", unnamed_port(8080), json!([ep("10.0.1.1", NODE)]));
    hand_made.set_labels(Some(
        &[(LABEL_SERVICE_NAME.into(), "manual".into()), ("endpointslice.kubernetes.io/managed-by".into(), "someone-else".into())]
            .into(),
    ));
    let other_ns = slice_of("IPv4", "elsewhere", "manual", "manual-b", unnamed_port(8080), json!([ep("10.0.9.9", NODE)]));
    let mut unlabelled = slice("manual", "manual-c", unnamed_port(8080), json!([ep("10.0.8.8", NODE)]));
    unlabelled.set_labels(None);
    let st = v4(&[s], &[hand_made, other_ns, unlabelled]);
    assert_eq!(eps(&tcp(&st, "manual").internal), ["10.0.1.1:8080"]);
}

// ---------------------------------------------------------------------------------------------
// 1.B Per-port model and endpoint resolution
// ---------------------------------------------------------------------------------------------

#[test]
fn point_08_target_port_is_not_used_the_slice_port_is() {
    let s = svc(
        "web",
        json!({
            "clusterIP": "10.96.0.10",
            "ports": [{ "name": "http", "port": 80, "targetPort": 9999, "nodePort": 30080 }],
        }),
    );
    let sl = slice("web", "web-1", json!([{ "name": "http", "port": 8080, "protocol": "TCP" }]), json!([ep("10.0.1.1", NODE)]));
    let st = v4(&[s], &[sl]);
    let p = port(&st, "web", "http", Protocol::Tcp);
    assert_eq!(eps(&p.internal), ["10.0.1.1:8080"]);
    // The frontend uses `port`, never `targetPort`; type ClusterIP ignores nodePort.
    assert_eq!(fes(p), set_of(&["cluster 10.96.0.10:80"]));
}

#[test]
fn point_09_named_port_resolves_to_different_numbers_on_different_endpoints() {
    let s = svc(
        "multi",
        json!({
            "clusterIP": "10.96.0.10",
            "ports": [{ "name": "http", "port": 80, "targetPort": "web" }],
        }),
    );
    // The controller groups endpoints by identical port sets: one slice per number.
    let a =
        slice("multi", "multi-a", json!([{ "name": "http", "port": 8080, "protocol": "TCP" }]), json!([ep("10.0.1.1", NODE)]));
    let b = slice(
        "multi",
        "multi-b",
        json!([{ "name": "http", "port": 9090, "protocol": "TCP" }]),
        json!([ep("10.0.1.2", OTHER_NODE)]),
    );
    let st = v4(&[s], &[a, b]);
    assert_eq!(eps(&port(&st, "multi", "http", Protocol::Tcp).internal), ["10.0.1.1:8080", "10.0.1.2:9090"]);
}

#[test]
fn point_09_ports_are_joined_by_name_and_protocol_never_by_number() {
    let s = svc(
        "mp",
        json!({
            "clusterIP": "10.96.0.10",
            "ports": [
                { "name": "port80", "port": 80 },
                { "name": "port81", "port": 81 },
            ],
        }),
    );
    // Same IP, two ports; slice port numbers deliberately equal the "other" service port, and a
    // same-named UDP port must not be picked for the TCP ServicePort.
    let sl = slice(
        "mp",
        "mp-1",
        json!([
            { "name": "port80", "port": 81, "protocol": "UDP" },
            { "name": "port81", "port": 80, "protocol": "TCP" },
            { "name": "port80", "port": 8090, "protocol": "TCP" },
        ]),
        json!([ep("10.0.1.1", NODE)]),
    );
    let st = v4(&[s], &[sl]);
    assert_eq!(eps(&port(&st, "mp", "port80", Protocol::Tcp).internal), ["10.0.1.1:8090"]);
    assert_eq!(eps(&port(&st, "mp", "port81", Protocol::Tcp).internal), ["10.0.1.1:80"]);
}

#[test]
fn point_10_slice_ports_with_null_or_zero_port_are_ignored() {
    let s = simple_svc("web", "10.96.0.10");
    let null_port = slice("web", "web-null", json!([{ "name": "", "protocol": "TCP" }]), json!([ep("10.0.1.1", NODE)]));
    let zero_port =
        slice("web", "web-zero", json!([{ "name": "", "port": 0, "protocol": "TCP" }]), json!([ep("10.0.1.2", NODE)]));
    let no_ports = slice("web", "web-none", Value::Null, json!([ep("10.0.1.3", NODE)]));
    let good = slice("web", "web-good", unnamed_port(8080), json!([ep("10.0.1.4", NODE)]));
    let st = v4(&[s], &[null_port, zero_port, no_ports, good]);
    let p = tcp(&st, "web");
    assert_eq!(eps(&p.internal), ["10.0.1.4:8080"]);
}

#[test]
fn point_10_null_slice_port_protocol_defaults_to_tcp() {
    let s = svc(
        "dns",
        json!({
            "clusterIP": "10.96.0.10",
            "ports": [
                { "name": "dns-tcp", "port": 53, "protocol": "TCP" },
                { "name": "dns", "port": 53, "protocol": "UDP" },
            ],
        }),
    );
    let sl = slice(
        "dns",
        "dns-1",
        json!([{ "name": "dns-tcp", "port": 5353 }, { "name": "dns", "port": 5353 }]),
        json!([ep("10.0.1.1", NODE)]),
    );
    let st = v4(&[s], &[sl]);
    assert_eq!(eps(&port(&st, "dns", "dns-tcp", Protocol::Tcp).internal), ["10.0.1.1:5353"]);
    // The protocol-less "dns" slice port is TCP, so the UDP ServicePort has no endpoint.
    assert!(port(&st, "dns", "dns", Protocol::Udp).internal.endpoints.is_empty());
}

#[test]
fn point_10_null_slice_port_name_matches_the_unnamed_service_port() {
    // The API server defaults a null slice port name to "" (and kube-proxy would skip a literal
    // null); the compile step applies the API default.
    let s = simple_svc("web", "10.96.0.10");
    let sl = slice("web", "web-1", json!([{ "port": 8080, "protocol": "TCP" }]), json!([ep("10.0.1.1", NODE)]));
    let st = v4(&[s], &[sl]);
    assert_eq!(eps(&tcp(&st, "web").internal), ["10.0.1.1:8080"]);
}

#[test]
fn point_11_same_port_number_tcp_and_udp_are_independent_service_ports() {
    let spec = |ports: Value| {
        json!({
            "type": "NodePort",
            "clusterIP": "10.96.0.10",
            "ports": ports,
        })
    };
    let both = json!([
        { "name": "tcp", "port": 80, "protocol": "TCP", "nodePort": 30080 },
        { "name": "udp", "port": 80, "protocol": "UDP", "nodePort": 30081 },
    ]);
    let sl = slice(
        "mix",
        "mix-1",
        json!([
            { "name": "tcp", "port": 8080, "protocol": "TCP" },
            { "name": "udp", "port": 8081, "protocol": "UDP" },
        ]),
        json!([ep("10.0.1.1", NODE)]),
    );
    let st = v4(&[svc("mix", spec(both))], &[sl.clone()]);
    assert_eq!(st.services.len(), 2);
    let t = port(&st, "mix", "tcp", Protocol::Tcp);
    let u = port(&st, "mix", "udp", Protocol::Udp);
    assert_eq!(eps(&t.internal), ["10.0.1.1:8080"]);
    assert_eq!(eps(&u.internal), ["10.0.1.1:8081"]);
    assert!(fes(t).contains("nodeport 10.1.0.10:30080"));
    assert!(fes(u).contains("nodeport 10.1.0.10:30081"));
    // Removing the UDP port leaves TCP exactly as it was.
    let tcp_only = json!([{ "name": "tcp", "port": 80, "protocol": "TCP", "nodePort": 30080 }]);
    let st2 = v4(&[svc("mix", spec(tcp_only))], &[sl]);
    assert_eq!(st2.services.len(), 1);
    assert_eq!(port(&st2, "mix", "tcp", Protocol::Tcp), t);
}

#[test]
fn point_11_same_port_number_and_protocol_twice_is_rejected() {
    let bad = svc(
        "bad",
        json!({
            "clusterIP": "10.96.0.20",
            "ports": [
                { "name": "a", "port": 80, "protocol": "TCP" },
                { "name": "b", "port": 80 },
            ],
        }),
    );
    assert_rejected(bad, "spec.ports[1]");
}

#[test]
fn point_13_sctp_is_programmed_like_tcp() {
    let s = svc("sctp", json!({ "clusterIP": "10.96.0.10", "ports": [{ "port": 5060, "protocol": "SCTP" }] }));
    let sl = slice("sctp", "sctp-1", json!([{ "name": "", "port": 5060, "protocol": "SCTP" }]), json!([ep("10.0.1.1", NODE)]));
    let st = v4(&[s], &[sl]);
    assert_eq!(eps(&port(&st, "sctp", "", Protocol::Sctp).internal), ["10.0.1.1:5060"]);
}

// ---------------------------------------------------------------------------------------------
// 1.C EndpointSlice handling and endpoint conditions
// ---------------------------------------------------------------------------------------------

#[test]
fn point_14_endpoints_are_the_union_over_slices_and_slices_remove_independently() {
    let s = simple_svc("web", "10.96.0.10");
    let a = slice("web", "web-a", unnamed_port(8080), json!([ep("10.0.1.1", NODE), ep("10.0.1.2", OTHER_NODE)]));
    let b = slice("web", "web-b", unnamed_port(8080), json!([ep("10.0.1.3", OTHER_NODE)]));
    let st = v4(&[s.clone()], &[a.clone(), b.clone()]);
    assert_eq!(eps(&tcp(&st, "web").internal), ["10.0.1.1:8080", "10.0.1.2:8080", "10.0.1.3:8080"]);
    let only_b = v4(&[s.clone()], &[b]);
    assert_eq!(eps(&tcp(&only_b, "web").internal), ["10.0.1.3:8080"]);
    let only_a = v4(&[s], &[a]);
    assert_eq!(eps(&tcp(&only_a, "web").internal), ["10.0.1.1:8080", "10.0.1.2:8080"]);
}

#[test]
fn point_14_endpoints_are_sorted_whatever_the_slice_order() {
    let s = simple_svc("web", "10.96.0.10");
    let a = slice("web", "web-a", unnamed_port(8080), json!([ep("10.0.1.9", NODE)]));
    let b = slice("web", "web-b", unnamed_port(8080), json!([ep("10.0.1.5", NODE), ep("10.0.1.1", NODE)]));
    let ab = v4(&[s.clone()], &[a.clone(), b.clone()]);
    let ba = v4(&[s], &[b, a]);
    assert_eq!(ab, ba);
    assert_eq!(eps(&tcp(&ab, "web").internal), ["10.0.1.1:8080", "10.0.1.5:8080", "10.0.1.9:8080"]);
}

#[test]
fn point_15_only_slices_of_the_programmed_family_are_used() {
    let s = svc(
        "ds",
        json!({
            "clusterIP": "10.96.0.10",
            "clusterIPs": ["10.96.0.10", "fd00:96::10"],
            "ipFamilies": ["IPv4", "IPv6"],
            "ports": [{ "port": 80 }],
        }),
    );
    let slices = [
        slice_of("IPv4", NS, "ds", "ds-4", unnamed_port(8080), json!([ep("10.0.1.1", NODE)])),
        slice_of("IPv6", NS, "ds", "ds-6", unnamed_port(8080), json!([ep("fd00:1::1", NODE)])),
        slice_of("FQDN", NS, "ds", "ds-f", unnamed_port(8080), json!([ep("example.com", NODE)])),
    ];
    assert_eq!(eps(&tcp(&v4(&[s.clone()], &slices), "ds").internal), ["10.0.1.1:8080"]);
    assert_eq!(eps(&tcp(&v6(&[s], &slices), "ds").internal), ["[fd00:1::1]:8080"]);
}

#[test]
fn point_16_only_the_first_address_is_used_canonicalised() {
    let s = simple_svc("web", "10.96.0.10");
    let sl = slice(
        "web",
        "web-1",
        unnamed_port(8080),
        json!([
            { "addresses": ["10.0.1.01", "10.0.1.2"], "nodeName": NODE },
            { "addresses": [], "nodeName": NODE },
            { "addresses": ["not-an-ip"], "nodeName": NODE },
            { "addresses": ["10.0.1.3"], "nodeName": NODE },
        ]),
    );
    let st = v4(&[s], &[sl]);
    assert_eq!(eps(&tcp(&st, "web").internal), ["10.0.1.1:8080", "10.0.1.3:8080"]);
}

#[test]
fn point_17_missing_conditions_mean_ready_serving_not_terminating() {
    let s = simple_svc("web", "10.96.0.10");
    let endpoints = json!([
        // No conditions at all: ready, serving, not terminating.
        { "addresses": ["10.0.1.1"], "nodeName": NODE },
        // Empty conditions: the same.
        { "addresses": ["10.0.1.2"], "nodeName": NODE, "conditions": {} },
        // Not ready, serving defaults true, terminating defaults false: never used.
        { "addresses": ["10.0.1.3"], "nodeName": NODE, "conditions": { "ready": false } },
    ]);
    let st = v4(&[s.clone()], &[slice("web", "web-1", unnamed_port(8080), endpoints)]);
    let p = tcp(&st, "web");
    assert_eq!(eps(&p.internal), ["10.0.1.1:8080", "10.0.1.2:8080"]);
    assert!(p.internal.endpoints.iter().all(|e| !e.terminating));

    // Serving defaults to true: a not-ready terminating endpoint without `serving` is a
    // fallback candidate.
    let terminating = json!([
        { "addresses": ["10.0.1.4"], "nodeName": NODE,
          "conditions": { "ready": false, "terminating": true } },
        { "addresses": ["10.0.1.3"], "nodeName": NODE, "conditions": { "ready": false } },
    ]);
    let st = v4(&[s], &[slice("web", "web-1", unnamed_port(8080), terminating)]);
    let p = tcp(&st, "web");
    assert_eq!(eps(&p.internal), ["10.0.1.4:8080"]);
    assert!(p.internal.endpoints[0].terminating);
}

#[test]
fn point_19_cluster_set_falls_back_to_serving_terminating_endpoints() {
    let s = simple_svc("web", "10.96.0.10");
    let sl = slice(
        "web",
        "web-1",
        unnamed_port(8080),
        json!([
            ep_terminating("10.0.1.1", OTHER_NODE),
            ep_terminating("10.0.1.2", NODE),
            // Terminating but not serving: never used.
            ep_cond("10.0.1.3", OTHER_NODE, false, false, true),
            // Neither ready nor terminating: never used.
            ep_cond("10.0.1.4", OTHER_NODE, false, false, false),
            ep_cond("10.0.1.5", OTHER_NODE, false, true, false),
        ]),
    );
    let st = v4(&[s], &[sl]);
    let p = tcp(&st, "web");
    assert_eq!(eps(&p.internal), ["10.0.1.1:8080", "10.0.1.2:8080"]);
    assert!(p.internal.endpoints.iter().all(|e| e.terminating));
    assert_eq!(p.internal.endpoints.iter().map(|e| e.local).collect::<Vec<_>>(), [false, true]);
}

#[test]
fn point_19_ready_endpoints_exclude_the_terminating_fallback() {
    let s = simple_svc("web", "10.96.0.10");
    let sl = slice("web", "web-1", unnamed_port(8080), json!([ep("10.0.1.1", OTHER_NODE), ep_terminating("10.0.1.2", NODE)]));
    let st = v4(&[s], &[sl]);
    assert_eq!(eps(&tcp(&st, "web").internal), ["10.0.1.1:8080"]);
}

#[test]
fn point_19_ready_and_terminating_endpoint_is_used_as_ready() {
    // publishNotReadyAddresses: the controller writes ready=true even while terminating; the
    // proxy trusts `ready` (point 18).
    let s = simple_svc("web", "10.96.0.10");
    let sl = slice(
        "web",
        "web-1",
        unnamed_port(8080),
        json!([ep_cond("10.0.1.1", NODE, true, false, true), ep("10.0.1.2", OTHER_NODE)]),
    );
    let st = v4(&[s], &[sl]);
    assert_eq!(eps(&tcp(&st, "web").internal), ["10.0.1.1:8080", "10.0.1.2:8080"]);
}

/// Point 57: the serving set a UDP flow may stay on is every endpoint that is ready or still
/// serving, on any node, whatever the traffic policy and topology pick for new flows.
#[test]
fn point_57_the_serving_set_keeps_terminating_endpoints_that_still_serve() {
    let s = policy_svc("web", "Local", "Cluster");
    let sl = slice(
        "web",
        "web-1",
        unnamed_port(8080),
        json!([
            ep("10.0.1.1", OTHER_NODE),
            ep_terminating("10.0.1.2", NODE),
            ep_cond("10.0.1.3", OTHER_NODE, false, false, true),
            ep("10.0.1.4", NODE),
        ]),
    );
    let st = v4(&[s], &[sl]);
    let p = tcp(&st, "web");
    assert_eq!(eps(&p.internal), ["10.0.1.4:8080"], "ITP Local: the local ready endpoint");
    assert_eq!(eps(&EndpointSet { endpoints: p.cluster.clone(), drop_if_empty: false }), ["10.0.1.1:8080", "10.0.1.4:8080"]);
    let serving = EndpointSet { endpoints: p.serving.clone(), drop_if_empty: false };
    assert_eq!(eps(&serving), ["10.0.1.1:8080", "10.0.1.2:8080", "10.0.1.4:8080"], "not the one that stopped serving");
}

/// Point 63: an endpoint whose address is one of this node's (a hostNetwork pod) is marked so
/// the datapath neither source-NATs traffic to it nor misses its replies.
#[test]
fn point_63_an_endpoint_on_a_node_address_is_marked_host() {
    let s = simple_svc("web", "10.96.0.10");
    let sl = slice("web", "web-1", unnamed_port(8080), json!([ep("10.1.0.10", NODE), ep("10.1.0.11", OTHER_NODE)]));
    let st = v4(&[s], &[sl]);
    let hosts: Vec<(String, bool)> = tcp(&st, "web").internal.endpoints.iter().map(|e| (e.addr.to_string(), e.host)).collect();
    assert_eq!(hosts, [("10.1.0.10".to_owned(), true), ("10.1.0.11".to_owned(), false)]);
}

/// A NodePort Service with the given traffic policies.
fn policy_svc(name: &str, itp: &str, etp: &str) -> Service {
    svc(
        name,
        json!({
            "type": "NodePort",
            "clusterIP": "10.96.0.10",
            "internalTrafficPolicy": itp,
            "externalTrafficPolicy": etp,
            "ports": [{ "port": 80, "nodePort": 30080 }],
        }),
    )
}

#[test]
fn point_19_cluster_and_local_fall_back_independently_itp_local() {
    // A remote ready endpoint and a local endpoint that is only serving-terminating.
    let sl = slice("web", "web-1", unnamed_port(8080), json!([ep("10.0.1.1", OTHER_NODE), ep_terminating("10.0.1.2", NODE)]));
    let st = v4(&[policy_svc("web", "Local", "Cluster")], &[sl]);
    let p = tcp(&st, "web");
    // Local set: no local ready endpoint → local serving-terminating fallback (point 36).
    assert_eq!(eps(&p.internal), ["10.0.1.2:8080"]);
    assert!(p.internal.endpoints[0].terminating && p.internal.endpoints[0].local);
    // Cluster set: a ready endpoint exists, so no fallback.
    assert_eq!(eps(&p.external), ["10.0.1.1:8080"]);
    assert!(!p.external.drop_if_empty);
}

#[test]
fn point_19_cluster_and_local_fall_back_independently_etp_local() {
    let sl = slice("web", "web-1", unnamed_port(8080), json!([ep("10.0.1.1", OTHER_NODE), ep_terminating("10.0.1.2", NODE)]));
    let st = v4(&[policy_svc("web", "Cluster", "Local")], &[sl]);
    let p = tcp(&st, "web");
    assert_eq!(eps(&p.internal), ["10.0.1.1:8080"]);
    assert_eq!(eps(&p.external), ["10.0.1.2:8080"]);
    assert!(p.external.endpoints[0].terminating);
}

#[test]
fn point_19_local_set_prefers_local_ready_over_local_terminating() {
    let sl = slice(
        "web",
        "web-1",
        unnamed_port(8080),
        json!([ep("10.0.1.1", NODE), ep_terminating("10.0.1.2", NODE), ep("10.0.1.3", OTHER_NODE),]),
    );
    let st = v4(&[policy_svc("web", "Local", "Local")], &[sl]);
    let p = tcp(&st, "web");
    assert_eq!(eps(&p.internal), ["10.0.1.1:8080"]);
    assert_eq!(eps(&p.external), ["10.0.1.1:8080"]);
    assert!(p.internal.endpoints[0].local && !p.internal.endpoints[0].terminating);
}

#[test]
fn point_30_local_endpoint_needs_a_matching_non_empty_node_name() {
    // Local endpoint = slice `nodeName` equals this node's name (semantics conventions).
    let sl = slice(
        "web",
        "web-1",
        unnamed_port(8080),
        json!([
            { "addresses": ["10.0.1.1"], "nodeName": "" },
            { "addresses": ["10.0.1.2"] },
            { "addresses": ["10.0.1.3"], "nodeName": OTHER_NODE },
            { "addresses": ["10.0.1.4"], "nodeName": NODE },
        ]),
    );
    let s = policy_svc("web", "Local", "Cluster");
    let st = v4(&[s.clone()], &[sl.clone()]);
    let p = tcp(&st, "web");
    assert_eq!(eps(&p.internal), ["10.0.1.4:8080"]);
    let local: Vec<bool> = p.external.endpoints.iter().map(|e| e.local).collect();
    assert_eq!(local, [false, false, false, true]);
    // A node context without a name has no local endpoint, not even those with nodeName "".
    let nameless = NodeContext { name: String::new(), ..node() };
    let st = compile(&[s], &[sl], &nameless, Family::V4);
    let p = tcp(&st, "web");
    assert!(p.internal.endpoints.is_empty() && p.internal.drop_if_empty);
    assert!(p.external.endpoints.iter().all(|e| !e.local));
}

#[test]
fn point_20_duplicate_endpoints_across_slices_are_merged_non_terminating_wins() {
    let s = simple_svc("web", "10.96.0.10");
    let terminating = slice("web", "web-old", unnamed_port(8080), json!([ep_terminating("10.0.1.1", NODE)]));
    let ready = slice("web", "web-new", unnamed_port(8080), json!([ep("10.0.1.1", NODE)]));
    for slices in [[terminating.clone(), ready.clone()], [ready.clone(), terminating.clone()]] {
        let st = v4(&[s.clone()], &slices);
        let p = tcp(&st, "web");
        assert_eq!(eps(&p.internal), ["10.0.1.1:8080"]);
        assert!(!p.internal.endpoints[0].terminating);
    }
    // Two ready copies: one endpoint.
    let st = v4(&[s], &[ready.clone(), ready]);
    assert_eq!(eps(&tcp(&st, "web").internal), ["10.0.1.1:8080"]);
}

// ---------------------------------------------------------------------------------------------
// 1.E Session affinity
// ---------------------------------------------------------------------------------------------

fn affinity_svc(name: &str, affinity: Value) -> Service {
    let mut spec = json!({ "clusterIP": "10.96.0.10", "ports": [{ "port": 80 }] });
    for (k, v) in affinity.as_object().unwrap() {
        spec[k.as_str()] = v.clone();
    }
    svc(name, spec)
}

#[test]
fn point_24_client_ip_affinity_defaults_to_10800_seconds() {
    let st = v4(
        &[
            affinity_svc("dflt", json!({ "sessionAffinity": "ClientIP" })),
            affinity_svc("noconf", json!({ "sessionAffinity": "ClientIP", "sessionAffinityConfig": {} })),
            affinity_svc(
                "notimeout",
                json!({ "sessionAffinity": "ClientIP",
                        "sessionAffinityConfig": { "clientIP": {} } }),
            ),
        ],
        &[],
    );
    assert!(st.rejected.is_empty(), "{:?}", st.rejected);
    for name in ["dflt", "noconf", "notimeout"] {
        assert_eq!(tcp(&st, name).affinity_timeout_s, Some(10_800), "{name}");
    }
    assert_eq!(DEFAULT_AFFINITY_TIMEOUT_S, 10_800);
}

#[test]
fn point_24_explicit_timeouts_up_to_86400_are_accepted() {
    let with = |name: &str, t: i32| {
        affinity_svc(
            name,
            json!({ "sessionAffinity": "ClientIP",
                    "sessionAffinityConfig": { "clientIP": { "timeoutSeconds": t } } }),
        )
    };
    let st = v4(&[with("one", 1), with("short", 300), with("max", 86_400)], &[]);
    assert!(st.rejected.is_empty(), "{:?}", st.rejected);
    assert_eq!(tcp(&st, "one").affinity_timeout_s, Some(1));
    assert_eq!(tcp(&st, "short").affinity_timeout_s, Some(300));
    assert_eq!(tcp(&st, "max").affinity_timeout_s, Some(86_400));
}

#[test]
fn point_24_timeouts_outside_1_to_86400_are_rejected() {
    for t in [86_401, 0, -1] {
        let bad = affinity_svc(
            "bad",
            json!({ "sessionAffinity": "ClientIP",
                    "sessionAffinityConfig": { "clientIP": { "timeoutSeconds": t } } }),
        );
        assert_rejected(bad, "spec.sessionAffinityConfig.clientIP.timeoutSeconds");
    }
}

#[test]
fn point_24_affinity_none_ignores_any_config() {
    let st = v4(
        &[
            affinity_svc("unset", json!({})),
            affinity_svc(
                "none",
                json!({ "sessionAffinity": "None",
                        "sessionAffinityConfig": { "clientIP": { "timeoutSeconds": 999_999 } } }),
            ),
        ],
        &[],
    );
    assert!(st.rejected.is_empty(), "{:?}", st.rejected);
    assert_eq!(tcp(&st, "unset").affinity_timeout_s, None);
    assert_eq!(tcp(&st, "none").affinity_timeout_s, None);
}

#[test]
fn point_24_unknown_session_affinity_is_rejected() {
    assert_rejected(affinity_svc("bad", json!({ "sessionAffinity": "Cookie" })), "spec.sessionAffinity");
}

#[test]
fn point_25_affinity_applies_to_every_frontend_of_the_service_port() {
    // One timeout per ServicePort, shared by internal and external frontends.
    let s = svc(
        "np",
        json!({
            "type": "NodePort",
            "clusterIP": "10.96.0.10",
            "sessionAffinity": "ClientIP",
            "sessionAffinityConfig": { "clientIP": { "timeoutSeconds": 60 } },
            "ports": [{ "name": "a", "port": 80, "nodePort": 30080 },
                      { "name": "b", "port": 81, "nodePort": 30081 }],
        }),
    );
    let st = v4(&[s], &[]);
    assert_eq!(port(&st, "np", "a", Protocol::Tcp).affinity_timeout_s, Some(60));
    assert_eq!(port(&st, "np", "b", Protocol::Tcp).affinity_timeout_s, Some(60));
}

// ---------------------------------------------------------------------------------------------
// 1.F / 1.G Traffic policies; no endpoints → reject, no local endpoints → drop
// ---------------------------------------------------------------------------------------------

fn mixed_slice(name: &str) -> Slice {
    slice(
        name,
        &format!("{name}-1"),
        unnamed_port(8080),
        json!([ep("10.0.1.1", NODE), ep("10.0.1.2", OTHER_NODE), ep("10.0.1.3", OTHER_NODE)]),
    )
}

fn remote_only_slice(name: &str) -> Slice {
    slice(name, &format!("{name}-1"), unnamed_port(8080), json!([ep("10.0.1.2", OTHER_NODE), ep("10.0.1.3", OTHER_NODE)]))
}

#[test]
fn point_29_policies_default_to_cluster() {
    let s = svc(
        "web",
        json!({
            "type": "NodePort",
            "clusterIP": "10.96.0.10",
            "ports": [{ "port": 80, "nodePort": 30080 }],
        }),
    );
    let st = v4(&[s], &[mixed_slice("web")]);
    let p = tcp(&st, "web");
    let all = ["10.0.1.1:8080", "10.0.1.2:8080", "10.0.1.3:8080"];
    assert_eq!(eps(&p.internal), all);
    assert_eq!(eps(&p.external), all);
    assert!(!p.internal.drop_if_empty && !p.external.drop_if_empty);
}

#[test]
fn point_29_etp_local_only_counts_for_externally_accessible_services() {
    // ClusterIP without externalIPs: ETP=Local is meaningless; external set = Cluster set.
    let plain = svc(
        "plain",
        json!({ "clusterIP": "10.96.0.10", "externalTrafficPolicy": "Local",
                "ports": [{ "port": 80 }] }),
    );
    // ClusterIP with externalIPs is externally accessible: ETP=Local applies.
    let ext = svc(
        "ext",
        json!({ "clusterIP": "10.96.0.11", "externalTrafficPolicy": "Local",
                "externalIPs": ["203.0.113.5"], "ports": [{ "port": 80 }] }),
    );
    let st = v4(&[plain, ext], &[mixed_slice("plain"), mixed_slice("ext")]);
    let all = ["10.0.1.1:8080", "10.0.1.2:8080", "10.0.1.3:8080"];
    let p = tcp(&st, "plain");
    assert_eq!(eps(&p.internal), all);
    assert_eq!(eps(&p.external), all);
    assert!(!p.external.drop_if_empty);
    let e = tcp(&st, "ext");
    assert_eq!(eps(&e.internal), all);
    assert_eq!(eps(&e.external), ["10.0.1.1:8080"]);
}

#[test]
fn point_30_internal_and_external_sets_follow_their_own_policy() {
    let st = v4(
        &[policy_svc("itp", "Local", "Cluster"), policy_svc("etp", "Cluster", "Local"), policy_svc("both", "Local", "Local")],
        &[mixed_slice("itp"), mixed_slice("etp"), mixed_slice("both")],
    );
    let all = ["10.0.1.1:8080", "10.0.1.2:8080", "10.0.1.3:8080"];
    let local = ["10.0.1.1:8080"];
    let itp = tcp(&st, "itp");
    assert_eq!(eps(&itp.internal), local);
    assert_eq!(eps(&itp.external), all);
    let etp = tcp(&st, "etp");
    assert_eq!(eps(&etp.internal), all);
    assert_eq!(eps(&etp.external), local);
    let both = tcp(&st, "both");
    assert_eq!(eps(&both.internal), local);
    assert_eq!(eps(&both.external), local);
    assert!(both.internal.endpoints.iter().all(|e| e.local));
}

#[test]
fn point_33_38_etp_local_without_local_endpoints_drops_when_endpoints_exist_elsewhere() {
    let st = v4(&[policy_svc("web", "Cluster", "Local")], &[remote_only_slice("web")]);
    let p = tcp(&st, "web");
    assert!(p.external.endpoints.is_empty());
    assert!(p.external.drop_if_empty, "no local endpoint but remote ones: drop");
    assert_eq!(eps(&p.internal), ["10.0.1.2:8080", "10.0.1.3:8080"]);
    assert!(!p.internal.drop_if_empty);
}

#[test]
fn point_35_38_itp_local_uses_local_endpoints_and_drops_without_them() {
    let st = v4(
        &[policy_svc("has-local", "Local", "Cluster"), policy_svc("no-local", "Local", "Cluster")],
        &[mixed_slice("has-local"), remote_only_slice("no-local")],
    );
    let p = tcp(&st, "has-local");
    assert_eq!(eps(&p.internal), ["10.0.1.1:8080"]);
    let p = tcp(&st, "no-local");
    assert!(p.internal.endpoints.is_empty());
    assert!(p.internal.drop_if_empty, "no local endpoint but remote ones: drop");
    // External traffic still works (Cluster policy).
    assert_eq!(eps(&p.external), ["10.0.1.2:8080", "10.0.1.3:8080"]);
}

#[test]
fn point_35_38_remote_terminating_endpoints_count_as_existing_elsewhere() {
    // hasEndpoints includes the serving-terminating fallback (point 19).
    let sl = slice("web", "web-1", unnamed_port(8080), json!([ep_terminating("10.0.1.2", OTHER_NODE)]));
    let st = v4(&[policy_svc("web", "Local", "Local")], &[sl]);
    let p = tcp(&st, "web");
    assert!(p.internal.endpoints.is_empty() && p.internal.drop_if_empty);
    assert!(p.external.endpoints.is_empty() && p.external.drop_if_empty);
}

#[test]
fn point_37_no_endpoints_gives_empty_sets_that_reject() {
    let unusable = |name: &str| {
        slice(
            name,
            &format!("{name}-1"),
            unnamed_port(8080),
            json!([ep_cond("10.0.1.1", NODE, false, false, false), ep_cond("10.0.1.2", OTHER_NODE, false, false, true),]),
        )
    };
    let st = v4(
        &[
            policy_svc("cluster-none", "Cluster", "Cluster"),
            policy_svc("local-none", "Local", "Local"),
            policy_svc("local-unusable", "Local", "Local"),
            policy_svc("cluster-unusable", "Cluster", "Cluster"),
        ],
        &[unusable("local-unusable"), unusable("cluster-unusable")],
    );
    for name in ["cluster-none", "local-none", "local-unusable", "cluster-unusable"] {
        let p = tcp(&st, name);
        // Still programmed (so the datapath can reject), with empty sets that do not drop.
        assert!(!p.frontends.is_empty(), "{name}");
        for set in [&p.internal, &p.external] {
            assert!(set.endpoints.is_empty(), "{name}");
            assert!(!set.drop_if_empty, "{name}: no endpoints anywhere must reject, not drop");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// 1.H NodePorts
// ---------------------------------------------------------------------------------------------

#[test]
fn point_41_node_ports_are_served_on_every_node_address_of_the_family() {
    let s = svc(
        "np",
        json!({
            "type": "NodePort",
            "clusterIP": "10.96.0.10",
            "clusterIPs": ["10.96.0.10", "fd00:96::10"],
            "ipFamilies": ["IPv4", "IPv6"],
            "ports": [{ "port": 80, "nodePort": 30080 }],
        }),
    );
    let ctx = NodeContext {
        addresses: vec![ip("192.168.0.10"), ip("10.1.0.10"), ip("172.16.0.10"), ip("fd00::10"), ip("fd01::10")],
        ..node()
    };
    let st4 = compile(&[s.clone()], &[] as &[Slice], &ctx, Family::V4);
    let np4: BTreeSet<_> = fes(tcp(&st4, "np")).into_iter().filter(|f| f.starts_with("nodeport")).collect();
    assert_eq!(np4, set_of(&["nodeport 10.1.0.10:30080", "nodeport 172.16.0.10:30080", "nodeport 192.168.0.10:30080",]));
    let st6 = compile(&[s], &[] as &[Slice], &ctx, Family::V6);
    let np6: BTreeSet<_> = fes(tcp(&st6, "np")).into_iter().filter(|f| f.starts_with("nodeport")).collect();
    assert_eq!(np6, set_of(&["nodeport [fd00::10]:30080", "nodeport [fd01::10]:30080"]));
    // NodePort frontends are external traffic (ETP applies), the ClusterIP is not.
    assert!(FrontendKind::NodePort.is_external() && !FrontendKind::ClusterIp.is_external());
}

// ---------------------------------------------------------------------------------------------
// 1.I externalIPs, LoadBalancer ingress
// ---------------------------------------------------------------------------------------------

#[test]
fn point_46_external_ips_are_external_frontends_of_the_family() {
    let s = svc(
        "ext",
        json!({
            "clusterIP": "10.96.0.10",
            "clusterIPs": ["10.96.0.10", "fd00:96::10"],
            "ipFamilies": ["IPv4", "IPv6"],
            "externalIPs": ["203.0.113.250", "2001:db8::cb00:71fa"],
            "ports": [{ "port": 80 }],
        }),
    );
    let st4 = v4(&[s.clone()], &[]);
    assert_eq!(fes(tcp(&st4, "ext")), set_of(&["cluster 10.96.0.10:80", "external 203.0.113.250:80"]));
    let st6 = v6(&[s], &[]);
    assert_eq!(fes(tcp(&st6, "ext")), set_of(&["cluster [fd00:96::10]:80", "external [2001:db8::cb00:71fa]:80"]));
    assert!(FrontendKind::ExternalIp.is_external());
}

/// Point 46, CVE-2020-8554: with an allow list (`--external-ip-cidrs`), a Service whose
/// externalIPs (of either family) fall outside it is rejected whole, naming the entry and the
/// CVE; one inside is programmed as before; an empty list allows none.
#[test]
fn point_46_external_ips_outside_the_allowed_prefixes_reject_the_service() {
    let ext = |name: &str, ips: Value| {
        svc(name, json!({ "clusterIP": "10.96.0.30", "externalIPs": ips, "ports": [{ "port": 53, "protocol": "UDP" }] }))
    };
    let allowed = Some(vec![Cidr { addr: "203.0.113.0".parse().unwrap(), prefix: 24 }]);
    let policed = NodeContext { external_ip_cidrs: allowed, ..node() };
    let ok = ext("ok", json!(["203.0.113.53"]));
    let capture = ext("capture", json!(["8.8.8.8"]));
    let mixed = ext("mixed", json!(["203.0.113.54", "2001:4860:4860::8888"]));
    let st = compile(&[ok.clone(), capture.clone(), mixed], &[] as &[Slice], &policed, Family::V4);
    let rejected: Vec<(&str, String)> = st.rejected.iter().map(|r| (r.object.as_str(), r.reason.to_string())).collect();
    assert_eq!(rejected.len(), 2, "{rejected:?}");
    assert!(
        rejected
            .iter()
            .any(|(o, r)| *o == "Service ns/capture" && r.contains("spec.externalIPs[0]") && r.contains("CVE-2020-8554"))
    );
    assert!(
        rejected.iter().any(|(o, r)| *o == "Service ns/mixed" && r.contains("spec.externalIPs[1]")),
        "the other family's entry counts too"
    );
    assert_eq!(st.services.keys().map(|k| k.name.as_str()).collect::<Vec<_>>(), ["ok"]);
    // No list: kube-proxy's behaviour; an empty list: none.
    assert!(v4(&[capture.clone()], &[]).rejected.is_empty());
    let none = NodeContext { external_ip_cidrs: Some(vec![]), ..node() };
    assert_eq!(compile(&[ok], &[] as &[Slice], &none, Family::V4).rejected.len(), 1);
}

/// Point 47, CVE-2020-8554's other half: with `--loadbalancer-ip-cidrs`, a LoadBalancer whose
/// ingress IP falls outside is rejected whole; inside, it is programmed; no list allows any.
#[test]
fn point_47_ingress_ips_outside_the_allowed_prefixes_reject_the_service() {
    let lb = |name: &str, ip: &str| -> Service {
        obj(json!({
            "metadata": { "name": name, "namespace": NS },
            "spec": { "type": "LoadBalancer", "clusterIP": "10.96.0.40", "ports": [{ "port": 80, "nodePort": 30040 }] },
            "status": { "loadBalancer": { "ingress": [{ "ip": ip }] } },
        }))
    };
    let policed = NodeContext { lb_ip_cidrs: Some(vec![Cidr { addr: "198.51.100.0".parse().unwrap(), prefix: 24 }]), ..node() };
    let st = compile(&[lb("inside", "198.51.100.7"), lb("outside", "8.8.8.8")], &[] as &[Slice], &policed, Family::V4);
    assert_eq!(st.rejected.len(), 1, "{:?}", st.rejected);
    assert_eq!(st.rejected[0].object, "Service ns/outside");
    assert!(st.rejected[0].reason.to_string().contains("status.loadBalancer.ingress[0].ip"));
    assert_eq!(st.services.keys().map(|k| k.name.as_str()).collect::<Vec<_>>(), ["inside"]);
    assert!(v4(&[lb("outside", "8.8.8.8")], &[]).rejected.is_empty(), "any by default");
}

/// Point 46 / bad input: an invalid `externalIPs` entry rejects the whole Service (the compile
/// step's rule for invalid IPs). Note: kube-proxy's `MapIPsByIPFamily` would skip just that
/// entry; the API server's validation keeps such entries out of real clusters.
#[test]
fn point_46_invalid_external_ip_is_rejected() {
    let bad = svc(
        "bad",
        json!({ "clusterIP": "10.96.0.20", "externalIPs": ["203.0.113.5", "203.0.113.999"],
                "ports": [{ "port": 80 }] }),
    );
    assert_rejected(bad, "spec.externalIPs[1]");
}

#[test]
fn point_47_only_vip_mode_ingress_ips_of_the_family_are_programmed() {
    let s: Service = obj(json!({
        "metadata": { "name": "lb", "namespace": NS },
        "spec": {
            "type": "LoadBalancer",
            "clusterIP": "10.96.0.10",
            "ports": [{ "port": 80, "nodePort": 30080 }],
        },
        "status": { "loadBalancer": { "ingress": [
            { "ip": "198.51.100.1" },
            { "ip": "198.51.100.2", "ipMode": "VIP" },
            { "ip": "198.51.100.3", "ipMode": "Proxy" },
            { "hostname": "lb.example.com" },
            { "ip": "", "hostname": "lb2.example.com" },
            { "ip": "2001:db8::1" },
        ] } },
    }));
    let st = v4(&[s], &[]);
    let lbs: BTreeSet<_> = fes(tcp(&st, "lb")).into_iter().filter(|f| f.starts_with("lb ")).collect();
    assert_eq!(lbs, set_of(&["lb 198.51.100.1:80", "lb 198.51.100.2:80"]));
    assert!(st.rejected.is_empty(), "{:?}", st.rejected);
}

#[test]
fn point_47_invalid_ingress_ip_is_rejected() {
    let bad: Service = obj(json!({
        "metadata": { "name": "bad", "namespace": NS },
        "spec": { "type": "LoadBalancer", "clusterIP": "10.96.0.20",
                  "ports": [{ "port": 80, "nodePort": 30080 }] },
        "status": { "loadBalancer": { "ingress": [{ "ip": "198.51.100.300" }] } },
    }));
    assert_rejected(bad, "status.loadBalancer.ingress[0].ip");
}

// ---------------------------------------------------------------------------------------------
// 1.L Topology hints
// ---------------------------------------------------------------------------------------------

fn hinted(addr: &str, node: &str, zones: &[&str]) -> Value {
    let mut e = ep(addr, node);
    e["hints"] = json!({ "forZones": zones.iter().map(|z| json!({ "name": z })).collect::<Vec<_>>() });
    e
}

fn hints_svc(itp: &str) -> Service {
    svc(
        "web",
        json!({ "clusterIP": "10.96.0.10", "internalTrafficPolicy": itp,
                "ports": [{ "port": 80 }] }),
    )
}

fn hints_slice(endpoints: Value) -> Slice {
    slice("web", "web-1", unnamed_port(8080), endpoints)
}

#[test]
fn point_53_zone_hints_select_endpoints_for_this_zone() {
    let sl = hints_slice(json!([
        hinted("10.0.1.1", OTHER_NODE, &["zone-a"]),
        hinted("10.0.1.2", NODE, &["zone-b"]),
        hinted("10.0.1.3", OTHER_NODE, &["zone-b", "zone-a"]),
        // Not ready: does not need a hint for hints to apply.
        ep_cond("10.0.1.4", OTHER_NODE, false, false, false),
    ]));
    let st = v4(&[hints_svc("Cluster")], &[sl.clone()]);
    assert_eq!(eps(&tcp(&st, "web").internal), ["10.0.1.1:8080", "10.0.1.3:8080"]);
    // Local policy ignores hints.
    let st = v4(&[hints_svc("Local")], &[sl]);
    assert_eq!(eps(&tcp(&st, "web").internal), ["10.0.1.2:8080"]);
}

#[test]
fn point_53_zone_hints_are_ignored_unless_every_ready_endpoint_has_one() {
    let sl = hints_slice(json!([
        hinted("10.0.1.1", OTHER_NODE, &["zone-a"]),
        ep("10.0.1.2", OTHER_NODE),
        // An empty forZones list is no hint.
        hinted("10.0.1.3", OTHER_NODE, &[]),
    ]));
    let st = v4(&[hints_svc("Cluster")], &[sl]);
    assert_eq!(eps(&tcp(&st, "web").internal), ["10.0.1.1:8080", "10.0.1.2:8080", "10.0.1.3:8080"]);
    let sl = hints_slice(json!([hinted("10.0.1.1", OTHER_NODE, &["zone-a"]), hinted("10.0.1.3", OTHER_NODE, &[]),]));
    let st = v4(&[hints_svc("Cluster")], &[sl]);
    assert_eq!(eps(&tcp(&st, "web").internal), ["10.0.1.1:8080", "10.0.1.3:8080"]);
}

#[test]
fn point_53_zone_hints_are_ignored_when_none_is_for_this_zone() {
    let sl = hints_slice(json!([hinted("10.0.1.1", OTHER_NODE, &["zone-b"]), hinted("10.0.1.2", OTHER_NODE, &["zone-c"]),]));
    let st = v4(&[hints_svc("Cluster")], &[sl.clone()]);
    assert_eq!(eps(&tcp(&st, "web").internal), ["10.0.1.1:8080", "10.0.1.2:8080"]);
    // A node without a zone label ignores hints too.
    let zoneless = NodeContext { zone: None, ..node() };
    let sl = hints_slice(json!([hinted("10.0.1.1", OTHER_NODE, &["zone-a"]), hinted("10.0.1.2", OTHER_NODE, &["zone-b"]),]));
    let st = compile(&[hints_svc("Cluster")], &[sl], &zoneless, Family::V4);
    assert_eq!(eps(&tcp(&st, "web").internal), ["10.0.1.1:8080", "10.0.1.2:8080"]);
}

#[test]
fn point_53_terminating_fallback_ignores_zone_hints() {
    let mut a = ep_terminating("10.0.1.1", OTHER_NODE);
    a["hints"] = json!({ "forZones": [{ "name": "zone-b" }] });
    let mut b = ep_terminating("10.0.1.2", OTHER_NODE);
    b["hints"] = json!({ "forZones": [{ "name": "zone-a" }] });
    let st = v4(&[hints_svc("Cluster")], &[hints_slice(json!([a, b]))]);
    assert_eq!(eps(&tcp(&st, "web").internal), ["10.0.1.1:8080", "10.0.1.2:8080"]);
}

#[test]
fn point_53_node_hints_are_checked_before_zone_hints() {
    let with_node = |addr: &str, zone: &str, for_node: &str| {
        let mut e = ep(addr, OTHER_NODE);
        e["hints"] = json!({
            "forZones": [{ "name": zone }],
            "forNodes": [{ "name": for_node }],
        });
        e
    };
    let sl = hints_slice(json!([with_node("10.0.1.1", "zone-a", OTHER_NODE), with_node("10.0.1.2", "zone-b", NODE),]));
    let st = v4(&[hints_svc("Cluster")], &[sl]);
    assert_eq!(eps(&tcp(&st, "web").internal), ["10.0.1.2:8080"]);
}

#[test]
fn point_53_hints_do_not_apply_to_local_external_sets() {
    let s = svc(
        "web",
        json!({ "type": "NodePort", "clusterIP": "10.96.0.10", "externalTrafficPolicy": "Local",
                "ports": [{ "port": 80, "nodePort": 30080 }] }),
    );
    let sl = hints_slice(json!([hinted("10.0.1.1", OTHER_NODE, &["zone-a"]), hinted("10.0.1.2", NODE, &["zone-b"]),]));
    let st = v4(&[s], &[sl]);
    let p = tcp(&st, "web");
    assert_eq!(eps(&p.internal), ["10.0.1.1:8080"]);
    assert_eq!(eps(&p.external), ["10.0.1.2:8080"]);
}

// ---------------------------------------------------------------------------------------------
// 1.M Dual-stack: `compile_all`, both families into one state
// ---------------------------------------------------------------------------------------------

/// Both families, as the agent compiles them.
fn all(services: &[Service], slices: &[Slice]) -> DesiredState {
    let (st, _) = compile_all(services, slices, &node());
    st
}

/// The ServicePort names of a state, as displayed.
fn spns(st: &DesiredState) -> Vec<String> {
    st.services.keys().map(ToString::to_string).collect()
}

/// A dual-stack Service: `families` in order, ClusterIPs 10.96.0.10 / fd00:96::10.
fn dual_svc(name: &str, type_: &str, families: &[&str], extra: Value) -> Service {
    let ips: Vec<&str> = families.iter().map(|f| if *f == "IPv4" { "10.96.0.10" } else { "fd00:96::10" }).collect();
    let mut spec = json!({
        "type": type_,
        "clusterIP": ips[0],
        "clusterIPs": ips,
        "ipFamilies": families,
        "ipFamilyPolicy": if families.len() == 2 { "RequireDualStack" } else { "SingleStack" },
        "ports": [{ "name": "http", "port": 80, "protocol": "TCP", "nodePort": 30080 }],
    });
    if type_ == "ClusterIP" {
        spec["ports"][0].as_object_mut().unwrap().remove("nodePort");
    }
    for (k, v) in extra.as_object().unwrap() {
        spec[k] = v.clone();
    }
    svc(name, spec)
}

/// Both slices of a dual-stack Service: `addressType` IPv4 and IPv6, port `http` → 8080.
fn dual_slices(service: &str, v4_eps: Value, v6_eps: Value) -> [Slice; 2] {
    let ports = json!([{ "name": "http", "port": 8080, "protocol": "TCP" }]);
    [
        slice_of("IPv4", NS, service, &format!("{service}-v4"), ports.clone(), v4_eps),
        slice_of("IPv6", NS, service, &format!("{service}-v6"), ports, v6_eps),
    ]
}

#[test]
fn point_55_dual_stack_service_is_one_service_port_per_family() {
    let s = dual_svc("ds", "ClusterIP", &["IPv4", "IPv6"], json!({}));
    let slices = dual_slices(
        "ds",
        json!([ep("10.0.1.1", NODE), ep("10.0.1.2", OTHER_NODE)]),
        json!([ep("fd00:1::1", NODE), ep("fd00:1::2", OTHER_NODE)]),
    );
    let st = all(&[s.clone()], &slices);
    assert!(st.rejected.is_empty(), "{:?}", st.rejected);
    // Point 55: two ServicePorts, the IPv4 name as single-stack always had it.
    assert_eq!(spns(&st), ["ns/ds:http/TCP", "ns/ds:http/TCP/IPv6"]);
    // Point 5: each family's ClusterIP; point 15: endpoints from the slices of its addressType.
    let p4 = port_in(&st, Family::V4, "ds", "http", Protocol::Tcp);
    assert_eq!(fes(p4), set_of(&["cluster 10.96.0.10:80"]));
    assert_eq!(eps(&p4.internal), ["10.0.1.1:8080", "10.0.1.2:8080"]);
    assert_eq!(p4.cluster, p4.internal.endpoints);
    let p6 = port_in(&st, Family::V6, "ds", "http", Protocol::Tcp);
    assert_eq!(fes(p6), set_of(&["cluster [fd00:96::10]:80"]));
    assert_eq!(eps(&p6.internal), ["[fd00:1::1]:8080", "[fd00:1::2]:8080"]);
    // Never an endpoint of the other family, in any set.
    for (family, p) in [(Family::V4, p4), (Family::V6, p6)] {
        let sets = [&p.internal.endpoints, &p.external.endpoints, &p.cluster];
        assert!(sets.iter().flat_map(|s| s.iter()).all(|e| family.matches(&e.addr)), "{p:?}");
        assert!(p.frontends.iter().all(|f| family.matches(&f.addr)), "{p:?}");
    }
    // `compile_all` is exactly the two single-family compiles.
    let mut both = v4(&[s.clone()], &slices);
    both.services.extend(v6(&[s], &slices).services);
    assert_eq!(st, both);
}

/// Point 5: `ipFamilies` order decides which family is primary, not which one is programmed:
/// an IPv6-primary dual-stack Service is programmed in both families just the same.
#[test]
fn point_05_55_ipv6_primary_dual_stack_service_programs_both_families() {
    let s = dual_svc("ds", "ClusterIP", &["IPv6", "IPv4"], json!({}));
    let st = all(&[s], &[]);
    assert_eq!(spns(&st), ["ns/ds:http/TCP", "ns/ds:http/TCP/IPv6"]);
    assert_eq!(fes(port_in(&st, Family::V6, "ds", "http", Protocol::Tcp)), set_of(&["cluster [fd00:96::10]:80"]));
    assert_eq!(fes(port_in(&st, Family::V4, "ds", "http", Protocol::Tcp)), set_of(&["cluster 10.96.0.10:80"]));
}

/// Point 5: PreferDualStack on a single-stack cluster gets one ClusterIP (the API server
/// allocates one family): only that family is programmed, whatever slices exist.
#[test]
fn point_05_prefer_dual_stack_with_one_cluster_ip_programs_one_family() {
    let s = svc(
        "pds",
        json!({
            "type": "NodePort",
            "clusterIP": "10.96.0.10",
            "clusterIPs": ["10.96.0.10"],
            "ipFamilies": ["IPv4"],
            "ipFamilyPolicy": "PreferDualStack",
            "ports": [{ "name": "http", "port": 80, "nodePort": 30080 }],
        }),
    );
    let slices = dual_slices("pds", json!([ep("10.0.1.1", NODE)]), json!([ep("fd00:1::1", NODE)]));
    let st = all(&[s], &slices);
    assert_eq!(spns(&st), ["ns/pds:http/TCP"]);
    let p = port_in(&st, Family::V4, "pds", "http", Protocol::Tcp);
    assert_eq!(eps(&p.internal), ["10.0.1.1:8080"]);
    assert!(p.frontends.iter().all(|f| f.addr.is_ipv4()), "{:?}", p.frontends);
    // ipFamilies naming IPv6 without a second ClusterIP (mid-update): still IPv4 only.
    let half = svc(
        "half",
        json!({
            "clusterIP": "10.96.0.11",
            "clusterIPs": ["10.96.0.11"],
            "ipFamilies": ["IPv4", "IPv6"],
            "ipFamilyPolicy": "PreferDualStack",
            "ports": [{ "port": 80 }],
        }),
    );
    let st = all(&[half], &[]);
    assert_eq!(spns(&st), ["ns/half/TCP"]);
    assert!(st.rejected.is_empty(), "{:?}", st.rejected);
}

#[test]
fn point_55_ipv6_only_service_is_programmed_in_ipv6_only() {
    let s = dual_svc("v6", "LoadBalancer", &["IPv6"], json!({ "externalIPs": ["2001:db8::cb00:71fa"] }));
    let mut s = s;
    s.status = Some(obj(json!({ "loadBalancer": { "ingress": [{ "ip": "2001:db8::1" }] } })));
    let slices = dual_slices("v6", json!([ep("10.0.1.1", NODE)]), json!([ep("fd00:1::1", NODE)]));
    let st = all(&[s], &slices);
    assert!(st.rejected.is_empty(), "{:?}", st.rejected);
    assert_eq!(spns(&st), ["ns/v6:http/TCP/IPv6"]);
    let p = port_in(&st, Family::V6, "v6", "http", Protocol::Tcp);
    assert_eq!(
        fes(p),
        set_of(&[
            "cluster [fd00:96::10]:80",
            "nodeport [fd00::10]:30080",
            "external [2001:db8::cb00:71fa]:80",
            "lb [2001:db8::1]:80",
        ])
    );
    assert_eq!(eps(&p.internal), ["[fd00:1::1]:8080"]);
    assert_eq!(eps(&p.external), ["[fd00:1::1]:8080"]);
}

/// Points 41, 55: NodePorts of each family on the node's addresses of that family; a
/// SingleStack IPv4 Service is not reachable on the node's IPv6 address (nor the reverse).
#[test]
fn point_41_55_node_ports_on_each_node_address_family() {
    let dual = dual_svc("dual", "NodePort", &["IPv4", "IPv6"], json!({}));
    let only4 = svc(
        "only4",
        json!({
            "type": "NodePort", "clusterIP": "10.96.0.20", "clusterIPs": ["10.96.0.20"],
            "ipFamilies": ["IPv4"], "ipFamilyPolicy": "SingleStack",
            "ports": [{ "port": 80, "nodePort": 30081 }],
        }),
    );
    let only6 = svc(
        "only6",
        json!({
            "type": "NodePort", "clusterIP": "fd00:96::20", "clusterIPs": ["fd00:96::20"],
            "ipFamilies": ["IPv6"], "ipFamilyPolicy": "SingleStack",
            "ports": [{ "port": 80, "nodePort": 30082 }],
        }),
    );
    let st = all(&[dual, only4, only6], &[]);
    assert_eq!(spns(&st), ["ns/dual:http/TCP", "ns/dual:http/TCP/IPv6", "ns/only4/TCP", "ns/only6/TCP/IPv6"]);
    let nodeports =
        |p: &ServicePortState| -> BTreeSet<String> { fes(p).into_iter().filter(|f| f.starts_with("nodeport")).collect() };
    assert_eq!(
        nodeports(port_in(&st, Family::V4, "dual", "http", Protocol::Tcp)),
        set_of(&["nodeport 10.1.0.10:30080", "nodeport 192.168.0.10:30080"])
    );
    assert_eq!(nodeports(port_in(&st, Family::V6, "dual", "http", Protocol::Tcp)), set_of(&["nodeport [fd00::10]:30080"]));
    assert_eq!(
        nodeports(port_in(&st, Family::V4, "only4", "", Protocol::Tcp)),
        set_of(&["nodeport 10.1.0.10:30081", "nodeport 192.168.0.10:30081"])
    );
    assert_eq!(nodeports(port_in(&st, Family::V6, "only6", "", Protocol::Tcp)), set_of(&["nodeport [fd00::10]:30082"]));
    // Nothing at all on [fd00::10]:30081 or on 192.168.0.10:30082.
    let all_fes: Vec<(IpAddr, u16)> = st.services.values().flat_map(|p| p.frontends.iter().map(|f| (f.addr, f.port))).collect();
    assert!(!all_fes.contains(&(ip("fd00::10"), 30081)), "{all_fes:?}");
    assert!(!all_fes.contains(&(ip("192.168.0.10"), 30082)), "{all_fes:?}");
}

/// Points 46, 47, 55: externalIPs and LoadBalancer ingress IPs of mixed families each go to
/// the ServicePort of their family.
#[test]
fn point_46_47_55_external_and_lb_ips_mixing_families() {
    let mut s = dual_svc(
        "mix",
        "LoadBalancer",
        &["IPv4", "IPv6"],
        json!({ "externalIPs": ["203.0.113.250", "2001:db8::cb00:71fa", "203.0.113.251"] }),
    );
    s.status = Some(obj(json!({ "loadBalancer": { "ingress": [
        { "ip": "198.51.100.1" },
        { "ip": "2001:db8::1" },
        { "ip": "2001:db8::2", "ipMode": "Proxy" },
        { "hostname": "lb.example.com" },
    ] } })));
    let st = all(&[s], &[]);
    assert!(st.rejected.is_empty(), "{:?}", st.rejected);
    let external = |p: &ServicePortState| -> BTreeSet<String> {
        fes(p).into_iter().filter(|f| f.starts_with("external") || f.starts_with("lb ")).collect()
    };
    assert_eq!(
        external(port_in(&st, Family::V4, "mix", "http", Protocol::Tcp)),
        set_of(&["external 203.0.113.250:80", "external 203.0.113.251:80", "lb 198.51.100.1:80"])
    );
    assert_eq!(
        external(port_in(&st, Family::V6, "mix", "http", Protocol::Tcp)),
        set_of(&["external [2001:db8::cb00:71fa]:80", "lb [2001:db8::1]:80"])
    );
}

/// Points 48, 55: `loadBalancerSourceRanges` are split by family, each ServicePort keeping
/// its own. A family without ranges is unrestricted (kube-proxy's per-family proxier only
/// sees its family's ranges and installs no firewall without any).
#[test]
fn point_48_55_source_ranges_per_family() {
    let lb = |name: &str, ranges: Value| {
        let mut s = dual_svc(name, "LoadBalancer", &["IPv4", "IPv6"], json!({ "loadBalancerSourceRanges": ranges }));
        s.status = Some(obj(json!({ "loadBalancer": { "ingress": [
            { "ip": "198.51.100.1" }, { "ip": "2001:db8::1" },
        ] } })));
        s
    };
    let ranges = |st: &DesiredState, name: &str, family: Family| -> Vec<String> {
        port_in(st, family, name, "http", Protocol::Tcp)
            .source_ranges
            .iter()
            .map(|c| format!("{}/{}", c.addr, c.prefix))
            .collect()
    };
    let st = all(
        &[
            lb("both", json!(["10.0.0.0/8", " 2001:db8:1::/48 ", "192.168.0.0/16", "::/0"])),
            lb("v4ranges", json!(["10.0.0.0/8"])),
        ],
        &[],
    );
    assert!(st.rejected.is_empty(), "{:?}", st.rejected);
    assert_eq!(ranges(&st, "both", Family::V4), ["10.0.0.0/8", "192.168.0.0/16"]);
    assert_eq!(ranges(&st, "both", Family::V6), ["2001:db8:1::/48", "::/0"]);
    assert_eq!(ranges(&st, "v4ranges", Family::V4), ["10.0.0.0/8"]);
    assert!(ranges(&st, "v4ranges", Family::V6).is_empty());
    // An invalid range of either family rejects the Service once, in no family programmed.
    let st = all(&[lb("bad", json!(["10.0.0.0/8", "2001:db8::/129"]))], &[]);
    assert_eq!(st.rejected.len(), 1, "{:?}", st.rejected);
    assert!(st.rejected[0].reason.to_string().starts_with("spec.loadBalancerSourceRanges[1]"), "{:?}", st.rejected);
    assert!(st.services.is_empty());
}

/// Point 15: an address of the other family inside a slice (which the API server refuses) is
/// never an endpoint: a frontend never selects a backend of another family.
#[test]
fn point_15_55_an_address_of_the_other_family_in_a_slice_is_ignored() {
    let s = dual_svc("ds", "ClusterIP", &["IPv4", "IPv6"], json!({}));
    let slices = dual_slices(
        "ds",
        json!([ep("10.0.1.1", NODE), ep("fd00:1::9", NODE)]),
        json!([ep("fd00:1::1", NODE), ep("10.0.1.9", NODE)]),
    );
    let st = all(&[s], &slices);
    assert_eq!(eps(&port_in(&st, Family::V4, "ds", "http", Protocol::Tcp).internal), ["10.0.1.1:8080"]);
    assert_eq!(eps(&port_in(&st, Family::V6, "ds", "http", Protocol::Tcp).internal), ["[fd00:1::1]:8080"]);
}

/// Points 5, 55: a Service invalid in one family (an unparsable second ClusterIP) is rejected
/// as a whole, once, and not programmed in the other family either; its neighbours are.
#[test]
fn point_55_a_service_invalid_in_one_family_is_rejected_once() {
    let mut bad = dual_svc("bad", "ClusterIP", &["IPv4", "IPv6"], json!({}));
    bad.spec.as_mut().unwrap().cluster_ips = Some(vec!["10.96.0.10".into(), "fd00::zz".into()]);
    let good = dual_svc("good", "ClusterIP", &["IPv4", "IPv6"], json!({}));
    let st = all(&[bad, good], &[]);
    assert_eq!(st.rejected.len(), 1, "{:?}", st.rejected);
    assert_eq!(st.rejected[0].object, "Service ns/bad");
    assert!(st.rejected[0].reason.to_string().starts_with("spec.clusterIPs[1]"), "{:?}", st.rejected);
    assert_eq!(spns(&st), ["ns/good:http/TCP", "ns/good:http/TCP/IPv6"]);
    // An error both families see (a bad port) is reported once too.
    let mut twice = dual_svc("twice", "ClusterIP", &["IPv4", "IPv6"], json!({}));
    twice.spec.as_mut().unwrap().ports.as_mut().unwrap()[0].port = 0;
    let st = all(&[twice], &[]);
    assert_eq!(st.rejected.len(), 1, "{:?}", st.rejected);
}

/// Point 61 / 55: `::ffff:a.b.c.d` is the IPv4 address (Go's `net.IP` says IPv4; the maps
/// store both identically), so it can never be programmed as an IPv6 frontend.
#[test]
fn point_61_ipv4_mapped_ipv6_is_ipv4() {
    assert_eq!(parse_ip_sloppy("::ffff:10.96.0.1"), Some(ip("10.96.0.1")));
    assert_eq!(parse_ip_sloppy("::ffff:a60:1"), Some(ip("10.96.0.1")));
    let s = simple_svc("mapped", "::ffff:10.96.0.1");
    let st = all(&[s], &[]);
    assert_eq!(spns(&st), ["ns/mapped/TCP"]);
    assert_eq!(fes(tcp(&st, "mapped")), set_of(&["cluster 10.96.0.1:80"]));
}

/// `compile_all` on the whole fixture set of this file's single-stack tests equals the union of
/// the two single-family compiles (plus both families' rejections, once each).
#[test]
fn compile_all_is_the_union_of_both_families() {
    let services = [
        simple_svc("a", "10.96.0.10"),
        simple_svc("b", "fd00:96::11"),
        dual_svc("c", "NodePort", &["IPv6", "IPv4"], json!({})),
        simple_svc("bad", "10.96.0.999"),
    ];
    let mut slices = dual_slices("c", json!([ep("10.0.1.1", NODE)]), json!([ep("fd00:1::1", NODE)])).to_vec();
    slices.push(slice("a", "a-1", unnamed_port(8080), json!([ep("10.0.2.1", NODE)])));
    let (st, _) = compile_all(&services, &slices, &node());
    let (s4, s6) = (v4(&services, &slices), v6(&services, &slices));
    let mut union = s4.services.clone();
    union.extend(s6.services.clone());
    assert_eq!(st.services, union);
    assert_eq!(st.rejected, s4.rejected, "the bad ClusterIP is one rejection");
    assert_eq!(s6.rejected, s4.rejected);
    assert!(st.services.keys().all(|k| k.family == Family::of(&st.services[k].frontends[0].addr)));
}

// ---------------------------------------------------------------------------------------------
// 1.O Miscellaneous
// ---------------------------------------------------------------------------------------------

#[test]
fn point_61_leading_zero_ipv4_is_parsed_as_decimal_never_octal() {
    let cases = [
        ("10.0.0.011", Some("10.0.0.11")),
        ("010.000.000.011", Some("10.0.0.11")),
        ("10.0.0.010", Some("10.0.0.10")),
        ("10.0.0.08", Some("10.0.0.8")),
        ("10.0.0.1", Some("10.0.0.1")),
        ("fd00::0001", Some("fd00::1")),
        ("10.0.0.256", None),
        ("10.0.0", None),
        ("10.0.0.1.2", None),
        ("10..0.1", None),
        ("10.0.0.", None),
        ("0x0a.0.0.1", None),
        ("+1.0.0.1", None),
        ("", None),
        ("None", None),
    ];
    for (input, want) in cases {
        assert_eq!(parse_ip_sloppy(input), want.map(ip), "{input:?}");
    }

    let s = svc(
        "funny",
        json!({
            "clusterIP": "10.0.0.011",
            "externalIPs": ["203.0.113.010"],
            "ports": [{ "port": 80 }],
        }),
    );
    let sl = slice("funny", "funny-1", unnamed_port(8080), json!([ep("10.0.1.010", NODE)]));
    let st = v4(&[s], &[sl]);
    let p = tcp(&st, "funny");
    assert_eq!(fes(p), set_of(&["cluster 10.0.0.11:80", "external 203.0.113.10:80"]));
    assert_eq!(eps(&p.internal), ["10.0.1.10:8080"]);
    // Never the octal reading (011 = 9, 010 = 8).
    assert!(p.frontends.iter().all(|f| f.addr != ip("10.0.0.9")));
}

// ---------------------------------------------------------------------------------------------
// Bad input: the Service lands in `rejected` with a reason naming the field; others unaffected.
// ---------------------------------------------------------------------------------------------

/// Point 8 (`port` is a used field) / bad input: port 0 is not a port.
#[test]
fn bad_input_port_zero_is_rejected() {
    let bad = svc("bad", json!({ "clusterIP": "10.96.0.20", "ports": [{ "port": 0 }] }));
    assert_rejected(bad, "spec.ports[0].port");
}

/// Point 8 / bad input: a missing `port` reads as 0.
#[test]
fn bad_input_missing_port_number_is_rejected() {
    let bad = svc("bad", json!({ "clusterIP": "10.96.0.20", "ports": [{ "name": "x" }] }));
    assert_rejected(bad, "spec.ports[0].port");
}

/// Point 8 / bad input: ports outside 1-65535.
#[test]
fn bad_input_port_out_of_range_is_rejected() {
    for p in [65_536, -80] {
        let bad = svc(
            "bad",
            json!({ "clusterIP": "10.96.0.20",
                    "ports": [{ "name": "ok", "port": 80 }, { "name": "x", "port": p }] }),
        );
        assert_rejected(bad, "spec.ports[1].port");
    }
}

/// Points 3, 8 / bad input: `nodePort` outside 1-65535 (0 means none, point 3).
#[test]
fn bad_input_node_port_out_of_range_is_rejected() {
    let bad = svc(
        "bad",
        json!({ "type": "NodePort", "clusterIP": "10.96.0.20",
                "ports": [{ "port": 80, "nodePort": 70_000 }] }),
    );
    assert_rejected(bad, "spec.ports[0].nodePort");
}

/// Point 8 / bad input: `protocol` must be TCP, UDP or SCTP.
#[test]
fn bad_input_unknown_protocol_is_rejected() {
    let bad = svc(
        "bad",
        json!({ "clusterIP": "10.96.0.20",
                "ports": [{ "name": "a", "port": 80 }, { "name": "b", "port": 81, "protocol": "ICMP" }] }),
    );
    assert_rejected(bad, "spec.ports[1].protocol");
    // Protocols are case-sensitive in the API.
    let lower = svc("bad", json!({ "clusterIP": "10.96.0.20", "ports": [{ "port": 80, "protocol": "tcp" }] }));
    assert_rejected(lower, "spec.ports[0].protocol");
}

/// Points 5, 61 / bad input: a ClusterIP that is not an IP (even sloppily) rejects the Service.
#[test]
fn bad_input_invalid_cluster_ip_is_rejected() {
    assert_rejected(simple_svc("bad", "10.96.0.300"), "spec.clusterIP");
    assert_rejected(simple_svc("bad", "not-an-ip"), "spec.clusterIP");
    let bad = svc(
        "bad",
        json!({ "clusterIP": "10.96.0.20", "clusterIPs": ["10.96.0.2x"], "ipFamilies": ["IPv4"],
                "ports": [{ "port": 80 }] }),
    );
    assert_rejected(bad, "spec.clusterIPs[0]");
}

/// Point 11 / bad input: `spec.ports` is keyed by (port, protocol); names must be unique.
#[test]
fn bad_input_duplicate_ports_are_rejected() {
    // Same (port, protocol) twice, unnamed.
    let dup = svc(
        "bad",
        json!({ "clusterIP": "10.96.0.20",
                "ports": [{ "port": 80 }, { "port": 80, "protocol": "TCP" }] }),
    );
    assert_rejected(dup, "spec.ports[1]");
    // Same port name twice (would be the same ServicePortName).
    let dup_name = svc(
        "bad",
        json!({ "clusterIP": "10.96.0.20",
                "ports": [{ "name": "http", "port": 80 }, { "name": "http", "port": 81 }] }),
    );
    assert_rejected(dup_name, "spec.ports[1].name");
}

/// Point 8 / bad input: a Service needs at least one port.
#[test]
fn bad_input_service_without_ports_is_rejected() {
    assert_rejected(svc("bad", json!({ "clusterIP": "10.96.0.20" })), "spec.ports");
    assert_rejected(svc("bad", json!({ "clusterIP": "10.96.0.20", "ports": [] })), "spec.ports");
}

/// Point 3 / bad input: only ClusterIP, NodePort, LoadBalancer (and ExternalName, point 2).
#[test]
fn bad_input_unknown_type_or_missing_spec_is_rejected() {
    let bad = svc("bad", json!({ "type": "Magic", "clusterIP": "10.96.0.20", "ports": [{ "port": 80 }] }));
    assert_rejected(bad, "spec.type");
    let no_spec: Service = obj(json!({ "metadata": { "name": "bad", "namespace": NS } }));
    assert_rejected(no_spec, "spec");
}

/// Bad input (points 5, 8): each invalid Service is reported once; the others are unaffected.
#[test]
fn bad_input_every_invalid_service_is_reported_and_valid_ones_all_compile() {
    let services = [
        simple_svc("a", "10.96.0.1"),
        svc("bad1", json!({ "clusterIP": "10.96.0.2", "ports": [{ "port": 0 }] })),
        simple_svc("b", "10.96.0.3"),
        simple_svc("bad2", "10.96.0.999"),
        simple_svc("c", "10.96.0.5"),
    ];
    let st = v4(&services, &[]);
    assert_eq!(names(&st), set_of(&["a", "b", "c"]));
    let rejected: Vec<_> = st.rejected.iter().map(|r| r.object.as_str()).collect();
    assert_eq!(rejected, ["Service ns/bad1", "Service ns/bad2"]);
}

/// Point 6 / conventions: the ServicePort key is (namespace, name, port name, protocol).
#[test]
fn service_namespace_defaults_to_default() {
    let s: Service = obj(json!({
        "metadata": { "name": "web" },
        "spec": { "clusterIP": "10.96.0.10", "ports": [{ "port": 80 }] },
    }));
    let st = v4(&[s], &[]);
    let key = st.services.keys().next().unwrap();
    assert_eq!((key.namespace.as_str(), key.name.as_str()), ("default", "web"));
}

/// Points 14, 41: the result does not depend on input order (stable plans, no spurious writes).
#[test]
fn compile_is_deterministic_and_frontends_are_sorted() {
    let s = policy_svc("web", "Cluster", "Cluster");
    let a = v4(&[s.clone()], &[mixed_slice("web")]);
    let b = v4(&[s], &[mixed_slice("web")]);
    assert_eq!(a, b);
    let fe = &tcp(&a, "web").frontends;
    assert!(fe.windows(2).all(|w| w[0] < w[1]), "{fe:?}");
}

/// The Service's labels ride along with each of its ports, in key order, for
/// `lb service list --selector`.
#[test]
fn a_services_labels_are_carried_in_key_order() {
    let mut s = simple_svc("web", "10.96.0.10");
    s.metadata.labels = Some([("tier".to_owned(), "front".to_owned()), ("app".to_owned(), "web".to_owned())].into());
    let st = v4(&[s, simple_svc("bare", "10.96.0.11")], &[]);
    assert_eq!(&*tcp(&st, "web").labels, "app=web,tier=front");
    assert_eq!(&*tcp(&st, "bare").labels, "");
}
