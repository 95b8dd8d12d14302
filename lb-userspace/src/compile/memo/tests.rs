//! The memo against `compile_all`: every call's result equals a full compile.

use serde_json::json;

use super::*;

fn service(name: &str, ip: &str, policy: &str) -> Arc<Service> {
    Arc::new(
        serde_json::from_value(json!({
            "metadata": { "name": name, "namespace": "ns" },
            "spec": { "type": "LoadBalancer", "clusterIP": ip, "externalTrafficPolicy": policy,
                      "healthCheckNodePort": 32000,
                      "ports": [{ "name": "http", "port": 80, "targetPort": 8080, "nodePort": 30080 }] },
            "status": { "loadBalancer": { "ingress": [{ "ip": "192.0.2.10" }] } },
        }))
        .unwrap(),
    )
}

fn slice(name: &str, service: &str, addrs: &[&str], node: &str) -> Arc<Slice> {
    let eps: Vec<_> =
        addrs.iter().map(|a| json!({ "addresses": [a], "conditions": { "ready": true }, "nodeName": node })).collect();
    Arc::new(
        serde_json::from_value(json!({
            "metadata": { "name": name, "namespace": "ns", "labels": { "kubernetes.io/service-name": service } },
            "addressType": "IPv4",
            "ports": [{ "name": "http", "port": 8080, "protocol": "TCP" }],
            "endpoints": eps,
        }))
        .unwrap(),
    )
}

fn node(name: &str) -> NodeContext {
    NodeContext {
        external_ip_cidrs: None,
        lb_ip_cidrs: None,
        name: name.into(),
        addresses: vec!["192.168.0.10".parse().unwrap()],
        zone: None,
    }
}

/// Every step of a sequence of cluster states compiles through the memo to exactly what
/// compile_all gives for the same objects.
#[test]
fn the_memo_always_gives_what_compile_all_gives() {
    let mut memo = CompileMemo::default();
    let mut services = vec![service("a", "10.96.0.1", "Cluster"), service("b", "10.96.0.2", "Local")];
    let mut slices = vec![
        slice("a-1", "a", &["10.244.0.1", "10.244.0.2"], "n1"),
        slice("b-1", "b", &["10.244.1.1"], "n2"),
        slice("b-2", "b", &["10.244.1.2"], "n1"),
    ];
    let check = |memo: &mut CompileMemo, services: &[Arc<Service>], slices: &[Arc<Slice>], n: &NodeContext, step: &str| {
        let before = memo.desired.clone();
        let out = memo.compile(services, slices, n);
        let got = (out.desired.clone(), out.health_checks.clone());
        assert_eq!(got, compile_all(services, slices, n), "{step}");
        // Every ServicePort that differs from the last call's is reported.
        if let Changed::Only(spns) = out.changed {
            let keys: std::collections::BTreeSet<_> = before.services.keys().chain(got.0.services.keys()).collect();
            for spn in keys {
                if before.services.get(spn) != got.0.services.get(spn) {
                    assert!(spns.contains(spn), "{step}: {spn} changed, not reported");
                }
            }
        }
        got
    };
    let first = check(&mut memo, &services, &slices, &node("n1"), "initial");
    assert_eq!(first.0.services.len(), 2);
    check(&mut memo, &services, &slices, &node("n1"), "unchanged");
    // An endpoint of b replaced (a new slice object).
    slices[2] = slice("b-2", "b", &["10.244.1.3"], "n1");
    let after = check(&mut memo, &services, &slices, &node("n1"), "endpoint replaced");
    assert_ne!(after, first, "the change shows");
    // b's last local endpoint goes: its health check says 0 local endpoints.
    slices.remove(2);
    let (_, hc) = check(&mut memo, &services, &slices, &node("n1"), "slice deleted");
    assert_eq!(hc[&("ns".to_owned(), "b".to_owned())].local_ready, 0);
    // The Service object changes (a new ClusterIP), then is invalid, then valid again.
    services[0] = service("a", "10.96.0.9", "Cluster");
    check(&mut memo, &services, &slices, &node("n1"), "service changed");
    services[0] = service("a", "not-an-ip", "Cluster");
    let (bad, _) = check(&mut memo, &services, &slices, &node("n1"), "service invalid");
    assert_eq!(bad.rejected.len(), 1);
    services[0] = service("a", "10.96.0.1", "Cluster");
    check(&mut memo, &services, &slices, &node("n1"), "service valid again");
    // Another node context: which endpoints are local changes for every Service.
    check(&mut memo, &services, &slices, &node("n2"), "node changed");
    // A Service deleted, then created again with its slices still there.
    let b = services.remove(1);
    check(&mut memo, &services, &slices, &node("n2"), "service deleted");
    services.push(b);
    check(&mut memo, &services, &slices, &node("n2"), "service back");
    // A slice moved to another Service by its label.
    slices[0] = slice("a-1", "b", &["10.244.0.1"], "n2");
    check(&mut memo, &services, &slices, &node("n2"), "slice relabelled");
    // Two Service objects with one namespace/name (files can hold that), then one again.
    services.push(service("a", "10.96.0.7", "Local"));
    check(&mut memo, &services, &slices, &node("n2"), "duplicate added");
    check(&mut memo, &services, &slices, &node("n2"), "duplicate unchanged");
    services.pop();
    check(&mut memo, &services, &slices, &node("n2"), "duplicate removed");
    services[1] = service("b", "10.96.0.8", "Cluster");
    check(&mut memo, &services, &slices, &node("n2"), "after the duplicate, a change");
}

/// Among many Services, single changes (an endpoint, a new Service with its slice, a
/// Service and its slice deleted, a slice relabelled, a slice without a Service) are
/// found by address, without the walk by name, and still compile to exactly what
/// compile_all gives.
#[test]
fn single_changes_among_many_services_are_found_by_address() {
    let mut memo = CompileMemo::default();
    let mut services: Vec<Arc<Service>> =
        (0..200).map(|i| service(&format!("s{i}"), &format!("10.96.1.{i}"), "Cluster")).collect();
    let mut slices: Vec<Arc<Slice>> =
        (0..200).map(|i| slice(&format!("s{i}-1"), &format!("s{i}"), &[&format!("10.244.1.{i}")], "n1")).collect();
    let n = node("n1");
    let step = |memo: &mut CompileMemo, services: &[Arc<Service>], slices: &[Arc<Slice>], what: &str| {
        let before = memo.partial_calls;
        let got = memo.compile(services, slices, &n).desired.clone();
        assert_eq!((got, memo.health_checks.clone()), compile_all(services, slices, &n), "{what}");
        memo.partial_calls > before
    };
    assert!(!step(&mut memo, &services, &slices, "first"), "the first call compiles everything");
    assert!(step(&mut memo, &services, &slices, "unchanged"));
    slices[7] = slice("s7-1", "s7", &["10.244.2.7"], "n1");
    assert!(step(&mut memo, &services, &slices, "an endpoint replaced"));
    services.push(service("t", "10.96.2.1", "Cluster"));
    slices.push(slice("t-1", "t", &["10.244.3.1"], "n1"));
    assert!(step(&mut memo, &services, &slices, "a Service with its slice"));
    services.remove(3);
    slices.remove(3);
    assert!(step(&mut memo, &services, &slices, "a Service and its slice deleted"));
    slices[10] = slice("s11-1", "s12", &["10.244.1.11"], "n1");
    assert!(step(&mut memo, &services, &slices, "a slice relabelled"));
    slices.push(slice("orphan-1", "nobody", &["10.244.9.9"], "n1"));
    assert!(step(&mut memo, &services, &slices, "a slice of no Service"));
    services.push(service("s5", "10.96.3.5", "Cluster"));
    assert!(!step(&mut memo, &services, &slices, "a duplicate: the full walk"));
    services.pop();
    step(&mut memo, &services, &slices, "the duplicate gone");
    let all: Vec<Arc<Slice>> = slices.iter().map(|s| Arc::new((**s).clone())).collect();
    assert!(!step(&mut memo, &services, &all, "every object new: the full walk"));
}
