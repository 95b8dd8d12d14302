//! `lb explain` against a running node (issue 18, item 1): the real program decides a synthetic
//! packet against the live maps, and the answer matches what a real packet with the same
//! addresses and ports then does: the same backend for a ClusterIP and for a NodePort with
//! source NAT, the remembered backend of session affinity, a refusal for a Service without
//! endpoints. The maps are byte-for-byte the same after the explanations (the counters apart
//! from the node's other traffic, which the attached programs keep passing meanwhile).

use std::process::Command;

use lb_tests::{
    bins,
    cluster::{TwoNodeCluster, slice_yaml},
    privilege,
    topology::{HTTP_PORT, Topology},
};
use lb_userspace::maps::pinned::PinnedMaps;
use serde_json::Value;

fn services() -> String {
    format!(
        r#"
apiVersion: v1
kind: Service
metadata: {{name: web}}
spec:
  type: NodePort
  clusterIP: 10.96.4.10
  externalTrafficPolicy: Cluster
  ports: [{{name: http, port: 80, targetPort: {HTTP_PORT}, nodePort: 30090}}]
---
apiVersion: v1
kind: Service
metadata: {{name: sticky}}
spec:
  clusterIP: 10.96.4.11
  sessionAffinity: ClientIP
  ports: [{{name: http, port: 80, targetPort: {HTTP_PORT}}}]
---
apiVersion: v1
kind: Service
metadata: {{name: empty}}
spec:
  clusterIP: 10.96.4.12
  ports: [{{name: http, port: 80, targetPort: {HTTP_PORT}}}]
"#
    )
}

fn manifests(t: &Topology) -> Vec<(String, String)> {
    let ip = |pod: &str| t.pod(pod).ip.to_string();
    let (a, a2, b) = (ip("kubia-a"), ip("kubia-a2"), ip("kubia-b"));
    let (a, a2, b) = ((a.as_str(), "node-0"), (a2.as_str(), "node-0"), (b.as_str(), "node-1"));
    let slice = |service: &str, endpoints: &[(&str, &str)]| slice_yaml(service, Some("http"), HTTP_PORT, endpoints);
    let slices = [slice("web", &[a, b]), slice("sticky", &[a, a2, b])];
    vec![("services.yaml".into(), services()), ("slices.yaml".into(), slices.concat())]
}

/// `lb explain ARGS -o json` against the agent's pins.
fn explain(pin: &str, args: &[&str]) -> Value {
    let out = Command::new(bins::lb()).arg("explain").args(args).args(["-o", "json", "--pin-path", pin]).output().unwrap();
    assert!(out.status.success(), "lb explain {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)))
}

/// curl from `ns` with a fixed source port: the body, trimmed.
fn curl_from_port(ns: &lb_tests::netns::Netns, port: u16, url: &str) -> Result<String, String> {
    let out = ns
        .command("curl")
        .args(["-sS", "--connect-timeout", "3", "--max-time", "5", "--local-port", &port.to_string(), url])
        .output()
        .unwrap();
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    } else {
        Err(format!("{}: {}", out.status, String::from_utf8_lossy(&out.stderr).trim()))
    }
}

/// The pod that answers at `backend` (`ADDRESS:PORT`).
fn pod_at<'a>(t: &'a Topology, backend: &str) -> &'a str {
    let ip = backend.rsplit_once(':').unwrap().0;
    &t.pods.iter().find(|p| p.ip.to_string() == ip).unwrap_or_else(|| panic!("no pod at {backend}")).name
}

#[test]
fn lb_explain_answers_as_real_packets_then_do_and_writes_no_map() {
    if !privilege::require("lb_explain_answers_as_real_packets_then_do_and_writes_no_map") {
        return;
    }
    let mut c = TwoNodeCluster::start(&[], manifests, "10.96.4.10:80").expect("cluster");
    let client = c.topo.pod("client");
    let client_ip = client.ip.to_string();
    // Session affinity needs a record: one real connection first.
    let first = curl_from_port(&client.ns, 40999, "http://10.96.4.11/").expect("sticky");
    let pin = c.agents[0].pin_path.display().to_string();
    // The datapath serves on without its agent; stopped, nothing else writes the maps (no
    // conntrack sweep, no status record) while they are compared.
    c.agents[0].stop().unwrap();
    let maps = PinnedMaps::open(&c.agents[0].pin_path).unwrap();
    let before = maps.snapshot().unwrap();

    // A pod to a ClusterIP (Maglev, two endpoints).
    let clusterip = explain(&pin, &["tcp", &format!("{client_ip}:41000"), "->", "10.96.4.10:80"]);
    assert_eq!(clusterip["verdict"], "dnat", "{clusterip:#}");
    assert_eq!(clusterip["conntrack"], "new", "{clusterip:#}");
    assert_eq!(clusterip["program"], lb_common::PROG_TC_POD);
    assert_eq!(clusterip["same_code_as_attached"], true, "{clusterip:#}");
    assert!(clusterip["service"].as_str().unwrap().starts_with("default/web:http"), "{clusterip:#}");
    assert!(clusterip["maglev_slot"].is_u64() && clusterip["snat"].is_null(), "{clusterip:#}");
    assert_eq!(clusterip["checksums_ok"], true, "{clusterip:#}");
    let backend = clusterip["backend"].as_str().unwrap().to_owned();
    assert!(clusterip["packet_out"].as_str().unwrap().contains(&format!("{client_ip}:41000 -> {backend}")), "{clusterip:#}");

    // From outside to the NodePort through u0 (XDP): DNAT and SNAT to the node.
    let outside = c.topo.clients[0].ip.to_string();
    let nodeport =
        explain(&pin, &["tcp", &format!("{outside}:42000"), "->", "192.168.77.1:30090", "--from", "external", "--iface", "u0"]);
    assert_eq!((&nodeport["verdict"], &nodeport["program"]), (&"dnat".into(), &lb_common::PROG_XDP_EXT.into()), "{nodeport:#}");
    assert_eq!(nodeport["return_code"], "XDP_PASS", "{nodeport:#}");
    assert!(nodeport["snat"].as_str().unwrap().starts_with("192.168.77.1:"), "policy Cluster from outside: SNAT: {nodeport:#}");
    let np_backend = nodeport["backend"].as_str().unwrap().to_owned();
    assert!(
        nodeport["packet_out"]
            .as_str()
            .unwrap()
            .starts_with(&format!("tcp {} -> {np_backend}", nodeport["snat"].as_str().unwrap())),
        "{nodeport:#}"
    );

    // Session affinity: the client's record is found.
    let sticky = explain(&pin, &["tcp", &format!("{client_ip}:43000"), "->", "10.96.4.11:80"]);
    assert_eq!((&sticky["affinity"], &sticky["verdict"]), (&"hit".into(), &"dnat".into()), "{sticky:#}");
    let sticky_backend = sticky["backend"].as_str().unwrap().to_owned();
    assert_eq!(format!("You've hit {}", pod_at(&c.topo, &sticky_backend)), first, "{sticky:#}");

    // No endpoints: refused with a RST.
    let empty = explain(&pin, &["tcp", &format!("{client_ip}:44000"), "->", "10.96.4.12:80"]);
    assert_eq!((&empty["verdict"], &empty["return_code"]), (&"reject".into(), &"TC_ACT_REDIRECT".into()), "{empty:#}");
    assert!(empty["packet_out"].as_str().unwrap().contains("RST"), "{empty:#}");

    // The table spells the steps out.
    let out = Command::new(bins::lb())
        .args(["explain", "tcp", &format!("{client_ip}:41000"), "->", "10.96.4.10:80", "--pin-path", &pin])
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&out.stdout);
    for step in ["program", "frontend", "endpoints", "selection", "Maglev", "verdict", "live maps"] {
        assert!(table.contains(step), "{step}: {table}");
    }
    // A wrong interface is an error that names what is attached.
    let out = Command::new(bins::lb())
        .args(["explain", "tcp", "10.0.0.1:1", "->", "10.96.4.10:80", "--iface", "nosuch", "--pin-path", &pin])
        .output()
        .unwrap();
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("no pod attachment"));

    // Nothing was written: every map byte for byte as before. The one exception is what other
    // traffic does meanwhile: the node's own packets that are no service's (IPv6 neighbour
    // discovery, ...) pass through the attached programs, counted as packets passed; an
    // explanation written to the live counters would show as translations, new flows, a
    // reject.
    let after = maps.snapshot().unwrap();
    for ((name, b), (_, a)) in before.iter().zip(&after) {
        if *name != lb_common::STATS {
            assert!(b == a, "{name} changed under lb explain: {} entries before, {} after", b.len(), a.len());
            continue;
        }
        let sum = |entries: &[(Vec<u8>, Vec<u8>)], i: u32| -> u64 {
            let v = &entries.iter().find(|(k, _)| k[..] == i.to_ne_bytes()).map(|(_, v)| v.clone()).unwrap_or_default();
            v.chunks(8).map(|c| u64::from_ne_bytes(c.try_into().unwrap())).sum()
        };
        let passed = sum(a, lb_common::CNT_VERDICT_PASS) - sum(b, lb_common::CNT_VERDICT_PASS);
        assert_eq!(sum(a, lb_common::CNT_PACKETS) - sum(b, lb_common::CNT_PACKETS), passed, "only passes came in meanwhile");
        for i in (0..lb_common::CNT_MAX).filter(|i| ![lb_common::CNT_PACKETS, lb_common::CNT_VERDICT_PASS].contains(i)) {
            assert_eq!(sum(a, i), sum(b, i), "counter {} changed under lb explain", lb_common::COUNTER_NAMES[i as usize]);
        }
    }

    // Real packets with the same addresses and ports go where the explanations said.
    assert_eq!(
        curl_from_port(&client.ns, 41000, "http://10.96.4.10/").unwrap(),
        format!("You've hit {}", pod_at(&c.topo, &backend))
    );
    let ns = &c.topo.clients[0].ns;
    assert_eq!(
        curl_from_port(ns, 42000, "http://192.168.77.1:30090/").unwrap(),
        format!("You've hit {}", pod_at(&c.topo, &np_backend))
    );
    assert_eq!(curl_from_port(&client.ns, 43000, "http://10.96.4.11/").unwrap(), first);
    let refused = curl_from_port(&client.ns, 44000, "http://10.96.4.12/").unwrap_err();
    assert!(refused.contains("exit status: 7"), "a refusal: {refused}");

    // A later segment of the connection just made is an established flow: the live entry,
    // copied into the explanation, keeps its backend.
    let later = explain(&pin, &["tcp", &format!("{client_ip}:41000"), "->", "10.96.4.10:80", "--tcp-flags", "ack"]);
    assert_eq!((&later["conntrack"], &later["verdict"]), (&"hit".into(), &"dnat".into()), "{later:#}");
    assert_eq!(later["backend"], backend.as_str(), "{later:#}");
}
