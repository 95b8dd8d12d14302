//! Unit tests of the health-check node ports the compile step derives (point 49 of
//! `docs/semantics.md`): which Services need one, and the number of local
//! ready endpoints it reports.

use std::net::IpAddr;

use k8s_openapi::api::core::v1::Service;

use crate::model::slice::Slice;
use serde_json::{Value, json};

use super::*;
use crate::model::{HealthCheck, HealthChecks};

const NS: &str = "ns";
const NODE: &str = "node-a";
const OTHER_NODE: &str = "node-b";

fn node() -> NodeContext {
    NodeContext {
        external_ip_cidrs: None,
        lb_ip_cidrs: None,
        name: NODE.into(),
        addresses: vec!["192.168.0.10".parse::<IpAddr>().unwrap()],
        zone: None,
    }
}

fn svc(name: &str, spec: Value) -> Service {
    serde_json::from_value(json!({ "metadata": { "name": name, "namespace": NS }, "spec": spec })).expect("test Service")
}

/// A LoadBalancer Service with two TCP ports (`http` 80, `https` 443) and the given
/// externalTrafficPolicy and healthCheckNodePort.
fn lb_svc(name: &str, etp: &str, hc_port: Option<i32>) -> Service {
    let mut spec = json!({
        "type": "LoadBalancer",
        "clusterIP": "10.96.0.20",
        "externalTrafficPolicy": etp,
        "ports": [
            { "name": "http", "port": 80, "protocol": "TCP", "nodePort": 30080 },
            { "name": "https", "port": 443, "protocol": "TCP", "nodePort": 30443 },
        ],
    });
    if let Some(p) = hc_port {
        spec["healthCheckNodePort"] = json!(p);
    }
    svc(name, spec)
}

fn slice(service: &str, slice_name: &str, address_type: &str, ports: Value, endpoints: Value) -> Slice {
    serde_json::from_value(json!({
        "metadata": {
            "name": slice_name,
            "namespace": NS,
            "labels": { "kubernetes.io/service-name": service },
        },
        "addressType": address_type,
        "ports": ports,
        "endpoints": endpoints,
    }))
    .expect("test EndpointSlice")
}

fn ports(names: &[(&str, i32)]) -> Value {
    Value::Array(names.iter().map(|(n, p)| json!({ "name": n, "port": p, "protocol": "TCP" })).collect())
}

fn ep(addr: &str, node: &str, ready: bool, serving: bool, terminating: bool) -> Value {
    json!({
        "addresses": [addr],
        "nodeName": node,
        "conditions": { "ready": ready, "serving": serving, "terminating": terminating },
    })
}

fn checks(services: &[Service], slices: &[Slice]) -> HealthChecks {
    let (_, hc) = compile_with_health_checks(services, slices, &node(), Family::V4);
    hc
}

fn key(name: &str) -> (String, String) {
    (NS.into(), name.into())
}

#[test]
fn point_49_lb_local_gets_a_health_check_counting_distinct_local_ready_ips() {
    let services = [lb_svc("web", "Local", Some(32000))];
    let slices = [
        // Both ports, one slice: 10.0.0.1 and 10.0.0.2 local and ready, 10.0.0.3 remote.
        slice(
            "web",
            "web-a",
            "IPv4",
            ports(&[("http", 8080), ("https", 8443)]),
            json!([
                ep("10.0.0.1", NODE, true, true, false),
                ep("10.0.0.2", NODE, true, true, false),
                ep("10.0.0.3", OTHER_NODE, true, true, false),
            ]),
        ),
        // The same local IP again under a second slice and another target port: still one.
        slice("web", "web-b", "IPv4", ports(&[("http", 9090)]), json!([ep("10.0.0.1", NODE, true, true, false)])),
    ];
    let hc = checks(&services, &slices);
    assert_eq!(hc, [(key("web"), HealthCheck { node_port: 32000, local_ready: 2 })].into());
}

#[test]
fn point_49_terminating_and_unready_local_endpoints_do_not_count() {
    let services = [lb_svc("web", "Local", Some(32000))];
    let slices = [slice(
        "web",
        "web-a",
        "IPv4",
        ports(&[("http", 8080)]),
        json!([
            // Serving and terminating: still gets traffic through the fallback, not counted.
            ep("10.0.0.1", NODE, false, true, true),
            // Not ready, not serving.
            ep("10.0.0.2", NODE, false, false, false),
        ]),
    )];
    let (desired, hc) = compile_with_health_checks(&services, &slices, &node(), Family::V4);
    assert_eq!(hc[&key("web")], HealthCheck { node_port: 32000, local_ready: 0 });
    // The datapath still uses the terminating endpoint (point 19) while the check says 0.
    let any_port = desired.services.values().next().expect("programmed");
    assert_eq!(any_port.external.endpoints.len(), 1);
}

#[test]
fn point_49_ready_condition_absent_means_ready() {
    let services = [lb_svc("web", "Local", Some(32000))];
    let slices =
        [slice("web", "web-a", "IPv4", ports(&[("http", 8080)]), json!([{ "addresses": ["10.0.0.1"], "nodeName": NODE }]))];
    assert_eq!(checks(&services, &slices)[&key("web")].local_ready, 1);
}

#[test]
fn point_49_no_local_endpoints_still_serves_the_port_with_zero() {
    let services = [lb_svc("web", "Local", Some(32000))];
    let slices =
        [slice("web", "web-a", "IPv4", ports(&[("http", 8080)]), json!([ep("10.0.0.3", OTHER_NODE, true, true, false)]))];
    assert_eq!(checks(&services, &slices), [(key("web"), HealthCheck { node_port: 32000, local_ready: 0 })].into());
    assert_eq!(checks(&services, &[]).len(), 1, "no slices at all: still served");
}

#[test]
fn point_49_only_loadbalancer_with_local_policy_and_a_port_needs_one() {
    let nodeport_local = svc(
        "np",
        json!({
            "type": "NodePort",
            "clusterIP": "10.96.0.21",
            "externalTrafficPolicy": "Local",
            "healthCheckNodePort": 32001,
            "ports": [{ "port": 80, "protocol": "TCP", "nodePort": 30081 }],
        }),
    );
    let services = [
        lb_svc("cluster", "Cluster", Some(32002)),
        lb_svc("no-port", "Local", None),
        lb_svc("zero-port", "Local", Some(0)),
        nodeport_local,
    ];
    let (desired, hc) = compile_with_health_checks(&services, &[] as &[Slice], &node(), Family::V4);
    assert!(hc.is_empty(), "{hc:?}");
    assert!(desired.rejected.is_empty(), "{:?}", desired.rejected);
}

#[test]
fn point_49_an_invalid_health_check_port_rejects_the_service() {
    let (desired, hc) = compile_with_health_checks(&[lb_svc("web", "Local", Some(70000))], &[] as &[Slice], &node(), Family::V4);
    assert!(hc.is_empty());
    assert_eq!(desired.rejected.len(), 1);
    assert!(desired.rejected[0].reason.to_string().starts_with("spec.healthCheckNodePort: 70000"), "{:?}", desired.rejected);
    // Ignored where no health check is needed.
    let (desired, _) = compile_with_health_checks(&[lb_svc("web", "Cluster", Some(70000))], &[] as &[Slice], &node(), Family::V4);
    assert!(desired.rejected.is_empty());
}

/// `lb_svc` made dual-stack: ClusterIPs 10.96.0.20 and fd00::20.
fn dual_lb_svc(name: &str, families: &[&str]) -> Service {
    let mut s = lb_svc(name, "Local", Some(32000));
    let spec = s.spec.as_mut().unwrap();
    spec.ip_families = Some(families.iter().map(|f| (*f).to_owned()).collect());
    spec.cluster_ips = Some(families.iter().map(|f| if *f == "IPv4" { "10.96.0.20" } else { "fd00::20" }.to_owned()).collect());
    spec.cluster_ip = spec.cluster_ips.as_ref().unwrap().first().cloned();
    s
}

#[test]
fn point_49_each_family_pass_counts_its_own_endpoints() {
    let dual = dual_lb_svc("web", &["IPv4", "IPv6"]);
    let slices = [slice("web", "web-v6", "IPv6", ports(&[("http", 8080)]), json!([ep("fd00::1", NODE, true, true, false)]))];
    let (v6, hc6) = compile_with_health_checks(std::slice::from_ref(&dual), &slices, &node(), Family::V6);
    assert!(!v6.services.is_empty(), "programmed for IPv6");
    assert_eq!(hc6[&key("web")], HealthCheck { node_port: 32000, local_ready: 1 });
    // The IPv4 pass counts IPv4 endpoints only.
    assert_eq!(checks(&[dual], &slices)[&key("web")].local_ready, 0);
}

/// Point 49 with dual-stack (point 55): one health check per Service whatever its families; a
/// dual-stack pod (one address per family) counts once, not twice.
#[test]
fn point_49_55_dual_stack_service_has_one_health_check_counting_pods_once() {
    let dual = dual_lb_svc("web", &["IPv4", "IPv6"]);
    let slices = [
        // Two local dual-stack pods and a remote one.
        slice(
            "web",
            "web-v4",
            "IPv4",
            ports(&[("http", 8080)]),
            json!([
                ep("10.0.0.1", NODE, true, true, false),
                ep("10.0.0.2", NODE, true, true, false),
                ep("10.0.0.3", OTHER_NODE, true, true, false),
            ]),
        ),
        slice(
            "web",
            "web-v6",
            "IPv6",
            ports(&[("http", 8080)]),
            json!([
                ep("fd00::1", NODE, true, true, false),
                ep("fd00::2", NODE, true, true, false),
                ep("fd00::3", OTHER_NODE, true, true, false),
            ]),
        ),
    ];
    let (desired, hc) = compile_all(std::slice::from_ref(&dual), &slices, &node());
    assert_eq!(hc, [(key("web"), HealthCheck { node_port: 32000, local_ready: 2 })].into());
    assert_eq!(desired.services.len(), 4, "two ports in two families: {:?}", desired.services.keys());
    // Only the IPv6 slice so far (its IPv4 slice not written yet): the family that has local
    // endpoints counts.
    let (_, hc) = compile_all(&[dual], &slices[1..], &node());
    assert_eq!(hc[&key("web")].local_ready, 2);
}

#[test]
fn point_49_55_single_stack_ipv6_service_gets_its_health_check() {
    let v6only = dual_lb_svc("web6", &["IPv6"]);
    let slices = [slice("web6", "web6-a", "IPv6", ports(&[("http", 8080)]), json!([ep("fd00::1", NODE, true, true, false)]))];
    let (desired, hc) = compile_all(&[v6only], &slices, &node());
    assert_eq!(hc, [(key("web6"), HealthCheck { node_port: 32000, local_ready: 1 })].into());
    assert!(desired.services.keys().all(|k| k.family == Family::V6));
}

/// An invalid health-check port of a dual-stack Service is one rejection, not one per family.
#[test]
fn point_49_55_an_invalid_health_check_port_is_reported_once() {
    let mut dual = dual_lb_svc("web", &["IPv4", "IPv6"]);
    dual.spec.as_mut().unwrap().health_check_node_port = Some(70000);
    let (desired, hc) = compile_all(&[dual], &[] as &[Slice], &node());
    assert!(hc.is_empty());
    assert!(desired.services.is_empty(), "no family programmed");
    assert_eq!(desired.rejected.len(), 1, "{:?}", desired.rejected);
}

#[test]
fn point_49_a_node_without_a_name_has_no_local_endpoints() {
    let services = [lb_svc("web", "Local", Some(32000))];
    let slices = [slice(
        "web",
        "web-a",
        "IPv4",
        ports(&[("http", 8080)]),
        json!([{ "addresses": ["10.0.0.1"], "conditions": { "ready": true } }]),
    )];
    let anonymous = NodeContext { name: String::new(), ..node() };
    let (_, hc) = compile_with_health_checks(&services, &slices, &anonymous, Family::V4);
    assert_eq!(hc[&key("web")].local_ready, 0);
}

#[test]
fn compile_is_the_state_part_of_compile_with_health_checks() {
    let services = [lb_svc("web", "Local", Some(32000)), lb_svc("other", "Cluster", None)];
    let slices = [slice(
        "web",
        "web-a",
        "IPv4",
        ports(&[("http", 8080), ("https", 8443)]),
        json!([ep("10.0.0.1", NODE, true, true, false)]),
    )];
    assert_eq!(
        compile(&services, &slices, &node(), Family::V4),
        compile_with_health_checks(&services, &slices, &node(), Family::V4).0
    );
}
