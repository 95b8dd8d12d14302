//! The operator CLI against a running agent, from another process, as `kubectl exec ds/lb --
//! lb ...` would run it: the JSON parses and says what is programmed, the tables are readable,
//! and the errors say what to check.

use std::{
    collections::BTreeSet,
    process::{Command, Output},
    time::Duration,
};

use lb_tests::{
    agent::{Agent, AgentOptions},
    bins, privilege,
    topology::{HTTP_PORT, Topology},
};
use serde_json::Value;

const MANIFESTS: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: kubia, namespace: demo, labels: {app: kubia, tier: front}}
spec:
  clusterIP: 10.96.3.3
  sessionAffinity: ClientIP
  ports: [{name: http, port: 80, targetPort: 8080}]
"#;

fn slice(a: &str, b: &str) -> String {
    format!(
        "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: kubia-1, namespace: demo, labels: {{kubernetes.io/service-name: kubia}}}}\naddressType: IPv4\nports: [{{name: http, port: {HTTP_PORT}}}]\nendpoints:\n- addresses: [\"{a}\"]\n- addresses: [\"{b}\"]\n"
    )
}

fn lb(args: &[&str]) -> Output {
    Command::new(bins::lb()).args(args).output().expect("running lb")
}

fn json(agent: &Agent, args: &[&str]) -> Value {
    let pin = agent.pin_path.display().to_string();
    let mut all = args.to_vec();
    all.extend(["-o", "json", "--pin-path", &pin]);
    let out = lb(&all);
    assert!(out.status.success(), "lb {all:?}: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("lb {all:?} printed invalid JSON ({e}): {}", String::from_utf8_lossy(&out.stdout)))
}

fn table(agent: &Agent, args: &[&str]) -> String {
    let pin = agent.pin_path.display().to_string();
    let mut all = args.to_vec();
    all.extend(["--pin-path", &pin]);
    let out = lb(&all);
    assert!(out.status.success(), "lb {all:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

/// A node with the two kubia pods and a client pod, and an agent serving the kubia Service
/// (10.96.3.3:80) from the file source: (topology, client pod, agent).
fn kubia() -> (Topology, usize, Agent) {
    let mut topo = Topology::new(1).unwrap();
    for name in ["kubia-1", "kubia-2"] {
        let i = topo.add_pod(0, name).unwrap();
        topo.start_workload(i, &bins::testpod()).unwrap();
    }
    let client = topo.add_pod(0, "client").unwrap();
    let slices = slice(&topo.pod("kubia-1").ip.to_string(), &topo.pod("kubia-2").ip.to_string());
    let opts = AgentOptions::pods(&topo.nodes[0].ns, "node-0", topo.pod_interfaces(0));
    let mut agent = Agent::start(&bins::lb(), &opts, &[("svc.yaml", MANIFESTS), ("slice.yaml", &slices)]).unwrap();
    agent.wait_services("kubia", |rows| rows.iter().any(|r| r["frontend"] == "10.96.3.3:80")).unwrap();
    (topo, client, agent)
}

#[test]
fn cli_shows_services_backends_counters_and_attachments_of_a_running_agent() {
    if !privilege::require("cli_shows_services_backends_counters_and_attachments_of_a_running_agent") {
        return;
    }
    let (topo, client, mut agent) = kubia();
    for _ in 0..5 {
        topo.curl(client, "http://10.96.3.3/", 5).unwrap();
    }

    // lb service list: the Kubernetes name, the frontend, both backends.
    let list = json(&agent, &["service", "list"]);
    let svc =
        list.as_array().unwrap().iter().find(|s| s["service"] == "demo/kubia:http/TCP").unwrap_or_else(|| panic!("{list:#}"));
    assert_eq!(svc["frontends"], serde_json::json!(["10.96.3.3:80/TCP"]));
    let backends: Vec<&str> = svc["backends"].as_array().unwrap().iter().map(|b| b["address"].as_str().unwrap()).collect();
    assert_eq!(backends.len(), 2, "{svc:#}");
    assert!(svc["kind"].as_array().unwrap().contains(&"affinity".into()), "{svc:#}");
    assert_eq!(svc["type"], "ClusterIP", "{svc:#}");
    let t = table(&agent, &["service", "list"]);
    assert!(t.starts_with("SERVICE") && t.contains("demo/kubia:http/TCP") && t.contains("10.96.3.3:80/TCP"), "{t}");
    let row = t.lines().find(|l| l.contains("10.96.3.3:80/TCP")).unwrap();
    assert_eq!(
        row.split_whitespace().take(4).collect::<Vec<_>>(),
        ["demo/kubia:http/TCP", "ClusterIP", "10.96.3.3:80/TCP", "ClusterIP"],
        "{t}"
    );
    // Filters: by labels (as kubectl -l), namespace and type.
    for (args, rows) in [
        (&["--selector", "app=kubia,tier"][..], 1),
        (&["-l", "app=kubia,!canary"][..], 1),
        (&["--selector", "app=other"][..], 0),
        (&["--namespace", "demo", "--type", "clusterip"][..], 1),
        (&["--namespace", "default"][..], 0),
        (&["--type", "nodeport"][..], 0),
    ] {
        let mut all = vec!["service", "list"];
        all.extend_from_slice(args);
        assert_eq!(json(&agent, &all).as_array().unwrap().len(), rows, "{args:?}");
    }

    // lb stats: 5 new flows for the service (affinity: all on one backend).
    let stats = json(&agent, &["stats"]);
    let s = &stats["services"].as_array().unwrap().iter().find(|s| s["name"] == "demo/kubia:http/TCP").unwrap().clone();
    assert_eq!(s["new_flows"], 5, "{stats:#}");
    assert!(stats["counters"]["verdict_dnat"].as_u64().unwrap() >= 5, "{stats:#}");
    assert_eq!(stats["counters"]["affinity_hits"], 4, "{stats:#}");

    // lb maps dump: services with names, the Maglev table, affinity records, conntrack.
    let services = json(&agent, &["maps", "dump", "services"]);
    assert_eq!(services[0]["service"], "demo/kubia:http/TCP");
    let maglev = json(&agent, &["maps", "dump", "maglev"]);
    let share: u64 = maglev[0]["share"].as_object().unwrap().values().map(|v| v.as_u64().unwrap()).sum();
    assert_eq!(share, maglev[0]["slots"].as_u64().unwrap(), "every slot of the table is owned: {maglev:#}");
    let affinity = json(&agent, &["maps", "dump", "affinity"]);
    assert_eq!(affinity[0]["client"], topo.pods[client].ip.to_string());
    let ct = json(&agent, &["maps", "dump", "conntrack"]);
    assert!(ct.as_array().unwrap().len() >= 10, "two entries per connection: {ct:#}");
    // Conntrack filters: by Service, by backend (affinity: all five went to one), by address.
    let by_svc = json(&agent, &["maps", "dump", "conntrack", "--service", "demo/kubia"]);
    assert_eq!(by_svc.as_array().unwrap().len(), ct.as_array().unwrap().len(), "{by_svc:#}");
    assert_eq!(json(&agent, &["maps", "dump", "conntrack", "--service", "demo/other"]), serde_json::json!([]));
    let chosen = by_svc[0]["backend"].as_str().unwrap().to_owned();
    let chosen_ip = chosen.rsplit_once(':').unwrap().0.to_owned();
    let by_backend = json(&agent, &["maps", "dump", "conntrack", "--backend", &chosen_ip]);
    assert!(by_backend.as_array().unwrap().iter().all(|r| r["backend"] == chosen.as_str()), "{by_backend:#}");
    assert_eq!(by_backend.as_array().unwrap().len(), ct.as_array().unwrap().len(), "affinity: one backend for all");
    let client_ip = topo.pods[client].ip.to_string();
    let by_addr = json(&agent, &["maps", "dump", "conntrack", "--addr", &client_ip]);
    assert_eq!(by_addr.as_array().unwrap().len(), ct.as_array().unwrap().len(), "every flow is the client's");
    assert_eq!(json(&agent, &["maps", "dump", "conntrack", "--addr", "192.0.2.99"]), serde_json::json!([]));
    let pin = agent.pin_path.display().to_string();
    let misuse = lb(&["maps", "dump", "services", "--service", "demo/kubia", "--pin-path", &pin]);
    assert!(!misuse.status.success() && String::from_utf8_lossy(&misuse.stderr).contains("filter the conntrack dump"));
    // Members: both backends of the table; no source ranges on a ClusterIP.
    let members = json(&agent, &["maps", "dump", "members"]);
    let member_backends: BTreeSet<&str> = members.as_array().unwrap().iter().map(|m| m["backend"].as_str().unwrap()).collect();
    assert_eq!(member_backends, backends.iter().copied().collect(), "{members:#}");
    assert_eq!(json(&agent, &["maps", "dump", "source-ranges"]), serde_json::json!([]));
    assert!(json(&agent, &["maps", "dump", "sock-revnat"]).is_array());

    // lb status: where the programs are attached, fill levels, versions.
    let status = json(&agent, &["status"]);
    let attached: Vec<(&str, &str)> = status["attachments"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| (a["on"].as_str().unwrap(), a["mode"].as_str().unwrap()))
        .collect();
    // Each pod interface: the pod program on ingress, the reply program on egress.
    assert_eq!(attached.len(), 6, "{status:#}");
    for mode in ["tc-pod", "tc-egress"] {
        assert_eq!(attached.iter().filter(|(_, m)| *m == mode).count(), 3, "{status:#}");
    }
    assert_eq!(status["layout_version"], lb_common::LAYOUT_VERSION);
    assert_eq!(status["agent_version"], env!("CARGO_PKG_VERSION"));
    let services_fill = status["maps"].as_array().unwrap().iter().find(|m| m["map"] == "LB_SERVICES").unwrap();
    assert_eq!(services_fill["entries"], 2, "frontend + address marker: {status:#}");
    let t = table(&agent, &["status"]);
    assert!(t.contains("ATTACHED TO") && t.contains("LB_CONNTRACK"), "{t}");

    // Stopping the agent leaves the datapath and the pins; the CLI still reads them.
    agent.stop().unwrap();
    topo.curl(client, "http://10.96.3.3/", 5).unwrap();
    assert_eq!(json(&agent, &["service", "list"]).as_array().unwrap().len(), 1);
}

/// Issue 17, item 1: one owner per pin path. A second agent on the same `--pin-path` is refused
/// at once with a message naming the owner, and `--cleanup` is refused while the owner runs; the
/// first agent keeps its maps and keeps serving. Once it is gone (even by SIGKILL) a new agent
/// starts on the same pins.
#[test]
fn a_second_agent_on_the_same_pins_is_refused_and_the_first_keeps_serving() {
    if !privilege::require("a_second_agent_on_the_same_pins_is_refused_and_the_first_keeps_serving") {
        return;
    }
    let (topo, client, mut agent) = kubia();
    topo.curl(client, "http://10.96.3.3/", 5).unwrap();
    let pid = agent.pid().unwrap();

    let (exited, code, err) = agent.run_beside(&[], Duration::from_secs(20)).unwrap();
    assert!(exited && code.is_some_and(|c| c != 0), "the second agent must stop at once with an error: {exited} {code:?}\n{err}");
    let first = err.lines().find(|l| l.contains("another lb agent owns the pins")).unwrap_or_else(|| panic!("{err}"));
    assert!(first.contains(&format!("pid {pid}")) && first.contains("--pin-path"), "names the owner and what to do: {first}");
    let (exited, code, err) = agent.run_beside(&["--cleanup"], Duration::from_secs(20)).unwrap();
    assert!(exited && code.is_some_and(|c| c != 0) && err.contains("another lb agent owns the pins"), "{code:?}\n{err}");

    // The first agent is unharmed: its Service is listed and served.
    assert_eq!(json(&agent, &["service", "list"]).as_array().unwrap().len(), 1);
    for _ in 0..3 {
        topo.curl(client, "http://10.96.3.3/", 5).unwrap();
    }
    // The lock dies with its process: after SIGKILL a new agent adopts the pins.
    agent.kill().unwrap();
    agent.start_again().unwrap();
    let new_pid = agent.pid().map(u64::from);
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        let status = json(&agent, &["status"]);
        if status["agent"]["pid"].as_u64() == new_pid && status["agent"]["running"] == true {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the restarted agent never took the pins:\n{status:#}\n{}",
            agent.log_text()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    topo.curl(client, "http://10.96.3.3/", 5).unwrap();
}

#[test]
fn cli_errors_say_what_to_check() {
    if !privilege::require("cli_errors_say_what_to_check") {
        return;
    }
    let out = lb(&["status", "--pin-path", "/sys/fs/bpf/lbt-no-such-agent"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no lb agent maps at /sys/fs/bpf/lbt-no-such-agent") && err.contains("is the agent running"), "{err}");
    // Not root: one sentence naming what is missing.
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(bins::lb())
        .args(["service", "list"])
        .output()
        .expect("setpriv");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("needs root"), "{err}");
}

#[test]
fn point_55_v6_cli_shows_ipv6_frontends_backends_and_family_names() {
    if !privilege::require("point_55_v6_cli_shows_ipv6_frontends_backends_and_family_names") {
        return;
    }
    let mut topo = Topology::new(1).unwrap();
    for name in ["kubia-1", "kubia-2"] {
        let i = topo.add_pod(0, name).unwrap();
        topo.start_workload(i, &bins::testpod()).unwrap();
    }
    let client = topo.add_pod(0, "client").unwrap();
    let svc = "apiVersion: v1\nkind: Service\nmetadata: {name: kubia, namespace: demo}\nspec:\n  ipFamilyPolicy: RequireDualStack\n  ipFamilies: [IPv4, IPv6]\n  clusterIP: 10.96.3.4\n  clusterIPs: [10.96.3.4, \"fd00:96::3:4\"]\n  ports: [{name: http, port: 80, targetPort: 8080}]\n";
    let (a, b) = (topo.pod("kubia-1").ip6, topo.pod("kubia-2").ip6);
    let slice6 = format!(
        "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: kubia-6, namespace: demo, labels: {{kubernetes.io/service-name: kubia}}}}\naddressType: IPv6\nports: [{{name: http, port: {HTTP_PORT}}}]\nendpoints:\n- addresses: [\"{a}\"]\n- addresses: [\"{b}\"]\n"
    );
    let opts = AgentOptions::pods(&topo.nodes[0].ns, "node-0", topo.pod_interfaces(0));
    let mut agent = Agent::start(&bins::lb(), &opts, &[("svc.yaml", svc), ("slice6.yaml", &slice6)]).unwrap();
    agent.wait_services("kubia over IPv6", |rows| rows.iter().any(|r| r["frontend"] == "[fd00:96::3:4]:80")).unwrap();
    let body = lb_tests::topology::curl_in(&topo.pods[client].ns, "http://[fd00:96::3:4]/", 5).unwrap();
    assert!(body.starts_with("You've hit kubia-"), "{body}");
    let list = json(&agent, &["service", "list"]);
    let v6 = list
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["service"] == "demo/kubia:http/TCP/IPv6")
        .unwrap_or_else(|| panic!("{list:#}"));
    assert_eq!(v6["frontends"], serde_json::json!(["[fd00:96::3:4]:80/TCP"]));
    let backends: BTreeSet<String> =
        v6["backends"].as_array().unwrap().iter().map(|b| b["address"].as_str().unwrap().to_owned()).collect();
    assert_eq!(backends, BTreeSet::from([format!("[{a}]:{HTTP_PORT}"), format!("[{b}]:{HTTP_PORT}")]));
    // The IPv4 ClusterIP has no IPv4 endpoints: programmed, empty (it rejects).
    let v4 =
        list.as_array().unwrap().iter().find(|s| s["service"] == "demo/kubia:http/TCP").unwrap_or_else(|| panic!("{list:#}"));
    assert_eq!(v4["backends"].as_array().unwrap().len(), 0);
    let t = table(&agent, &["maps", "dump", "backends"]);
    assert!(t.contains(&format!("[{a}]:{HTTP_PORT}")), "{t}");
}

/// `--log-format json`: every line the agent writes is one JSON object with its level, its
/// message and its fields, for log collectors; `lb service get` shows one Service;
/// `lb --version` names the commit.
#[test]
fn json_logs_service_get_and_the_version() {
    if !privilege::require("json_logs_service_get_and_the_version") {
        return;
    }
    let topo = Topology::new(1).unwrap();
    let mut opts = AgentOptions::pods(&topo.nodes[0].ns, "node-0", vec![]);
    opts.extra_args = vec!["--log-format".into(), "json".into()];
    let mut agent = Agent::start(&bins::lb(), &opts, &[("svc.yaml", MANIFESTS)]).unwrap();
    agent.wait_services("kubia", |rows| rows.iter().any(|r| r["frontend"] == "10.96.3.3:80")).unwrap();
    let log = agent.log_text();
    let lines: Vec<Value> = log
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    assert!(lines.iter().all(|l| l["level"].is_string() && l["timestamp"].is_string()), "{log}");
    let synced = lines.iter().find(|l| l["message"] == "synced").unwrap_or_else(|| panic!("no synced line: {log}"));
    assert_eq!(synced["level"], "INFO");
    assert_eq!(synced["service_ports"], 1, "fields are JSON values: {synced}");

    // `lb service get NAMESPACE/NAME`: that Service's rows; a Service not programmed is an error
    // that says where to look.
    let rows = json(&agent, &["service", "get", "demo/kubia"]);
    let rows = rows.as_array().unwrap();
    assert!(!rows.is_empty() && rows.iter().all(|r| r["service"].as_str().unwrap().starts_with("demo/kubia:")), "{rows:?}");
    let pin = agent.pin_path.display().to_string();
    let missing = lb(&["service", "get", "demo/nope", "--pin-path", &pin]);
    let err = String::from_utf8_lossy(&missing.stderr);
    assert!(!missing.status.success() && err.contains("demo/nope is not programmed") && err.contains("lb status"), "{err}");

    let version = lb(&["--version"]);
    let v = String::from_utf8_lossy(&version.stdout);
    assert!(v.starts_with("lb ") && v.contains("(commit "), "{v}");
}
