//! Point 46 and CVE-2020-8554 as a user meets them: externalIPs are served only inside the
//! prefixes `--external-ip-cidrs` allows. A Service in another namespace that claims an address
//! outside them (here one a pod might dial, as `8.8.8.8` would be) is not programmed, so the
//! pod's traffic to that address is not captured, and `lb status` names the Service, the entry
//! and the CVE; an allowed externalIP answers as before.

use lb_tests::{
    agent::{Agent, AgentOptions},
    bins, privilege,
    topology::{CurlOutcome, HTTP_PORT, Topology, curl_outcome},
};

fn service(ns: &str, name: &str, cluster_ip: &str, external_ip: &str, pods: &[String]) -> String {
    let eps: String = pods.iter().map(|ip| format!("- addresses: [\"{ip}\"]\n")).collect();
    format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: {ns}}}\nspec:\n  clusterIP: {cluster_ip}\n  externalIPs: [{external_ip}]\n  ports: [{{port: 80, targetPort: {HTTP_PORT}}}]\n---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: {name}, namespace: {ns}, labels: {{kubernetes.io/service-name: {name}}}}}\naddressType: IPv4\nports: [{{port: {HTTP_PORT}}}]\nendpoints:\n{eps}---\n"
    )
}

#[test]
fn point_46_an_external_ip_outside_the_allowed_prefixes_is_not_captured_and_is_reported() {
    if !privilege::require("point_46_an_external_ip_outside_the_allowed_prefixes_is_not_captured_and_is_reported") {
        return;
    }
    let mut topo = Topology::new(1).unwrap();
    let server = topo.add_pod(0, "kubia-1").unwrap();
    topo.start_workload(server, &bins::testpod()).unwrap();
    let client = topo.add_pod(0, "client").unwrap();
    let pods = vec![topo.pods[server].ip.to_string()];
    let manifests = [
        service("demo", "kubia", "10.96.7.1", "203.0.113.10", &pods),
        // Another namespace's Service claiming an address outside the allowed prefix.
        service("mallory", "capture", "10.96.7.2", "198.51.100.53", &pods),
    ]
    .concat();
    let mut opts = AgentOptions::pods(&topo.nodes[0].ns, "node-0", topo.pod_interfaces(0));
    opts.extra_args.extend(["--external-ip-cidrs".to_owned(), "203.0.113.0/24".to_owned()]);
    let mut agent = Agent::start(&bins::lb(), &opts, &[("svc.yaml", &manifests)]).unwrap();
    agent.wait_services("kubia's externalIP", |rows| rows.iter().any(|r| r["frontend"] == "203.0.113.10:80")).unwrap();

    // The allowed externalIP answers from a pod.
    match curl_outcome(&topo.pods[client].ns, "http://203.0.113.10/", 3).unwrap() {
        CurlOutcome::Body(b) => assert!(b.contains("You've hit kubia-1"), "{b}"),
        other => panic!("the allowed externalIP does not answer: {other:?}\n{}", agent.log_text()),
    }
    // The disallowed one is not programmed at all, and the pod's traffic to it is not captured.
    let frontends = agent.dump("services").unwrap();
    let programmed: Vec<&str> = frontends.as_array().unwrap().iter().filter_map(|r| r["frontend"].as_str()).collect();
    assert!(!programmed.iter().any(|f| f.starts_with("198.51.100.53") || f.starts_with("10.96.7.2")), "{programmed:?}");
    let outcome = curl_outcome(&topo.pods[client].ns, "http://198.51.100.53/", 2).unwrap();
    assert!(!matches!(&outcome, CurlOutcome::Body(b) if b.contains("You've hit")), "captured: {outcome:?}");

    // Reported by name, entry and CVE.
    let st = agent.status().unwrap();
    let problems: Vec<&str> = st["agent"]["problems"].as_array().unwrap().iter().filter_map(|p| p.as_str()).collect();
    assert!(
        problems
            .iter()
            .any(|p| p.contains("Service mallory/capture") && p.contains("spec.externalIPs[0]") && p.contains("CVE-2020-8554")),
        "{problems:?}"
    );
    let log = agent.log_text();
    assert!(log.contains("mallory/capture") && log.contains("--external-ip-cidrs"), "{log}");
}
