//! The agent's Kubernetes control plane end to end: the real `lb agent --source kube` (kube-rs
//! list/watch) against the in-process API server, programming the real datapath in a netns
//! node, checked with real HTTP requests from a client pod. Point numbers refer to
//! docs/semantics.md.

use std::{
    collections::BTreeSet,
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use lb_tests::{
    agent::{AGENT_API_CALLS, Agent, AgentOptions},
    apiserver::ApiServer,
    bins,
    netns::{Netns, unique_token},
    privilege,
    topology::{HTTP_PORT, Topology},
};
use serde_json::json;

/// The address family a test runs over (every test has an IPv4 and an IPv6 twin).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Family {
    V4,
    V6,
}

impl Family {
    fn vip(self) -> &'static str {
        match self {
            Self::V4 => "10.96.7.7",
            Self::V6 => "fd00:96::7:7",
        }
    }

    fn frontend(self) -> SocketAddr {
        match self {
            Self::V4 => "10.96.7.7:80".parse().unwrap(),
            Self::V6 => "[fd00:96::7:7]:80".parse().unwrap(),
        }
    }
}

/// The kubia Service: single-stack in the test's family.
fn service(f: Family) -> serde_json::Value {
    let fam = if f == Family::V4 { "IPv4" } else { "IPv6" };
    json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "kubia", "namespace": "default"},
        "spec": {"clusterIP": f.vip(), "clusterIPs": [f.vip()], "ipFamilies": [fam], "ipFamilyPolicy": "SingleStack",
                 "ports": [{"port": 80, "targetPort": HTTP_PORT}], "selector": {"app": "kubia"}}
    })
}

fn slice(f: Family, topo: &Topology, pods: &[&str]) -> serde_json::Value {
    let endpoints: Vec<_> = pods
        .iter()
        .map(|p| {
            let ip = if f == Family::V4 { topo.pod(p).ip.to_string() } else { topo.pod(p).ip6.to_string() };
            json!({"addresses": [ip], "conditions": {"ready": true}, "nodeName": "node-0"})
        })
        .collect();
    json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": "kubia-abc", "namespace": "default", "labels": {"kubernetes.io/service-name": "kubia"}},
        "addressType": if f == Family::V4 { "IPv4" } else { "IPv6" },
        "ports": [{"port": HTTP_PORT, "protocol": "TCP"}],
        "endpoints": endpoints
    })
}

/// One HTTP request on a new connection from inside `ns`: the pod that answered.
fn hit(ns: &Netns, f: Family) -> Result<String, String> {
    ns.run_in(move || -> Result<String, String> {
        let addr = f.frontend();
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).map_err(|e| e.to_string())?;
        s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        s.write_all(b"GET / HTTP/1.1\r\nHost: kubia\r\n\r\n").map_err(|e| e.to_string())?;
        let mut body = String::new();
        s.read_to_string(&mut body).map_err(|e| e.to_string())?;
        body.lines().last().and_then(|l| l.strip_prefix("You've hit ")).map(str::to_owned).ok_or(body)
    })
    .map_err(|e| e.to_string())?
}

/// Polls until `ok(answers of `n` requests)` holds.
fn eventually(ns: &Netns, f: Family, what: &str, n: usize, ok: impl Fn(&[Result<String, String>]) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let got: Vec<_> = (0..n).map(|_| hit(ns, f)).collect();
        if ok(&got) {
            return;
        }
        assert!(Instant::now() < deadline, "{what}: last answers {got:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn pods_seen(got: &[Result<String, String>]) -> BTreeSet<String> {
    got.iter().filter_map(|r| r.as_ref().ok().cloned()).collect()
}

struct Setup {
    agent: Agent,
    api: ApiServer,
    topo: Topology,
    client: usize,
    kubeconfig: std::path::PathBuf,
}

impl Drop for Setup {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.kubeconfig);
    }
}

/// A kubeconfig file pointing at a test API server, removed however the test ends.
struct Kubeconfig(std::path::PathBuf);

impl Drop for Kubeconfig {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// A test API server and a kubeconfig for it.
fn api_server() -> (ApiServer, Kubeconfig) {
    let api = ApiServer::start().expect("api server");
    let kubeconfig = Kubeconfig(std::env::temp_dir().join(format!("lbt-{}-kubeconfig", unique_token())));
    api.kubeconfig(&kubeconfig.0).expect("kubeconfig");
    (api, kubeconfig)
}

fn setup(test: &str) -> Option<Setup> {
    if !privilege::require(test) {
        return None;
    }
    let api = ApiServer::start().expect("api server");
    let kubeconfig = std::env::temp_dir().join(format!("lbt-{}-kubeconfig", unique_token()));
    api.kubeconfig(&kubeconfig).expect("kubeconfig");
    let mut topo = Topology::new(1).expect("topology");
    for name in ["kubia-1", "kubia-2", "kubia-3", "kubia-4", "kubia-5"] {
        let i = topo.add_pod(0, name).expect("pod");
        topo.start_workload(i, &bins::testpod()).expect("workload");
    }
    let client = topo.add_pod(0, "client").expect("client");
    let mut opts = AgentOptions::pods(&topo.nodes[0].ns, "node-0", topo.pod_interfaces(0));
    opts.source = Some(format!("kube:{}", kubeconfig.display()));
    let agent = Agent::start(&bins::lb(), &opts, &[]).expect("agent");
    Some(Setup { agent, api, topo, client, kubeconfig })
}

#[test]
fn service_lifecycle_through_the_api_server_scaling_3_1_5_and_delete() {
    lifecycle("service_lifecycle_through_the_api_server_scaling_3_1_5_and_delete", Family::V4);
}

#[test]
fn point_55_v6_service_lifecycle_through_the_api_server_scaling_3_1_5_and_delete() {
    lifecycle("point_55_v6_service_lifecycle_through_the_api_server_scaling_3_1_5_and_delete", Family::V6);
}

fn lifecycle(test: &str, f: Family) {
    let Some(s) = setup(test) else { return };
    let ns = &s.topo.pods[s.client].ns;
    s.api.apply(service(f)).unwrap();
    s.api.apply(slice(f, &s.topo, &["kubia-1", "kubia-2", "kubia-3"])).unwrap();
    eventually(ns, f, "the Service answers on its ClusterIP from all 3 pods", 30, |got| {
        pods_seen(got) == ["kubia-1", "kubia-2", "kubia-3"].map(String::from).into()
    });
    // Point 21: once the update is applied, no new connection goes to a removed endpoint.
    s.api.apply(slice(f, &s.topo, &["kubia-1"])).unwrap();
    eventually(ns, f, "scaled to 1", 20, |got| got.iter().all(|r| r.as_deref() == Ok("kubia-1")));
    s.api.apply(slice(f, &s.topo, &["kubia-1", "kubia-2", "kubia-3", "kubia-4", "kubia-5"])).unwrap();
    eventually(ns, f, "scaled to 5", 40, |got| pods_seen(got).len() == 5 && got.iter().all(Result::is_ok));
    // Point 39: a deleted Service is no longer intercepted.
    s.api.delete("Service", "default", "kubia").unwrap();
    eventually(ns, f, "deleted", 3, |got| got.iter().all(Result::is_err));
}

/// Runs requests on new connections from `ns` until `stop`, counting answers and failures.
fn load(
    ns: &Netns,
    f: Family,
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
    errors: Arc<std::sync::Mutex<Vec<String>>>,
) {
    while !stop.load(Ordering::Relaxed) {
        match hit(ns, f) {
            Ok(_) => ok.fetch_add(1, Ordering::Relaxed),
            Err(e) => {
                errors.lock().unwrap().push(e);
                failed.fetch_add(1, Ordering::Relaxed)
            }
        };
    }
}

#[test]
fn point_59_agent_restart_and_kill_under_load_fail_zero_requests() {
    restart_under_load("point_59_agent_restart_and_kill_under_load_fail_zero_requests", Family::V4);
}

#[test]
fn point_59_v6_agent_restart_and_kill_under_load_fail_zero_requests() {
    restart_under_load("point_59_v6_agent_restart_and_kill_under_load_fail_zero_requests", Family::V6);
}

fn restart_under_load(test: &str, f: Family) {
    let Some(mut s) = setup(test) else { return };
    s.api.apply(service(f)).unwrap();
    s.api.apply(slice(f, &s.topo, &["kubia-1", "kubia-2", "kubia-3"])).unwrap();
    let ns = &s.topo.pods[s.client].ns;
    eventually(ns, f, "the Service answers", 10, |got| got.iter().all(Result::is_ok));

    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let errors = Arc::new(std::sync::Mutex::new(Vec::new()));
    std::thread::scope(|scope| {
        let h = {
            let (stop, ok, failed, errors) = (stop.clone(), ok.clone(), failed.clone(), errors.clone());
            scope.spawn(move || load(ns, f, stop, ok, failed, errors))
        };
        std::thread::sleep(Duration::from_millis(500));
        // A graceful restart (SIGTERM), then a crash (SIGKILL) and start, with an endpoint
        // change while the agent is down: the datapath serves throughout.
        s.agent.restart().unwrap();
        std::thread::sleep(Duration::from_millis(1500));
        s.agent.kill().unwrap();
        s.api.apply(slice(f, &s.topo, &["kubia-1", "kubia-2"])).unwrap();
        std::thread::sleep(Duration::from_millis(500));
        s.agent.start_again().unwrap();
        std::thread::sleep(Duration::from_millis(2000));
        stop.store(true, Ordering::Relaxed);
        h.join().unwrap();
    });
    let (ok, failed) = (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    eprintln!("restart under load: {ok} requests answered, {failed} failed");
    assert!(ok > 20, "the load ran ({ok} answers)");
    assert_eq!(
        failed,
        0,
        "{failed} of {} requests failed: {:?}\nagent log:\n{}",
        ok + failed,
        errors.lock().unwrap(),
        s.agent.log_text()
    );
    // The restarted agent picked up the change made while it was down.
    eventually(ns, f, "the change made while the agent was down", 20, |got| {
        got.iter().all(|r| matches!(r.as_deref(), Ok("kubia-1" | "kubia-2")))
    });
    assert!(
        s.agent.log_text().contains("adopted_frontends=2"),
        "the restarted agent adopted the pinned maps:\n{}",
        s.agent.log_text()
    );
}

/// `GET path` on `addr`: the whole reply, or `None` when nothing answers.
fn http_get(addr: SocketAddr, path: &str) -> Option<String> {
    let mut c = TcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok()?;
    c.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(c, "GET {path} HTTP/1.1\r\nHost: lb\r\nConnection: close\r\n\r\n").ok()?;
    let mut reply = String::new();
    let _ = c.read_to_string(&mut reply);
    Some(reply)
}

/// `GET /healthz` on `addr`: the status code, or `None` when nothing answers.
fn healthz(addr: SocketAddr) -> Option<u16> {
    http_get(addr, "/healthz")?.split_whitespace().nth(1)?.parse().ok()
}

/// A sample's value in the agent's `/metrics` on `addr` (the whole line before the value, as
/// `lb_events_total{result="created"}`).
fn metric(addr: SocketAddr, sample: &str) -> Option<u64> {
    let body = http_get(addr, "/metrics")?;
    // Whole seconds of a timestamp are enough for the tests.
    body.lines().find_map(|l| l.strip_prefix(sample)?.strip_prefix(' ')?.trim().parse::<f64>().ok()).map(|v| v as u64)
}

/// A free port on 127.0.0.1 (for an agent's listener).
fn free_addr() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("a free port")
}

/// Issue 17 (items 5 and 6): a Service the agents refuse (here an externalIP outside
/// `--external-ip-cidrs`) gets a Kubernetes Event that `kubectl describe service` shows: one
/// Event for the cluster however many agents refuse it (two nodes here), a Warning with the
/// reason `ServiceSkipped`, the field and the CVE in its note, and the Service's uid. A Service
/// that is fixed gets no more; one broken again another way gets a new Event.
#[test]
fn point_46_a_refused_service_gets_one_kubernetes_event_for_the_cluster() {
    let test = "point_46_a_refused_service_gets_one_kubernetes_event_for_the_cluster";
    if !privilege::require(test) {
        return;
    }
    let (api, kubeconfig) = api_server();
    let topo = Topology::new(2).expect("topology");
    let capture = |external_ip: &str| {
        json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "capture", "namespace": "mallory"},
            "spec": {"clusterIP": "10.96.7.2", "externalIPs": [external_ip],
                     "ports": [{"port": 53, "protocol": "UDP"}], "selector": {"app": "dns"}}
        })
    };
    api.apply(service(Family::V4)).unwrap();
    api.apply(capture("198.51.100.53")).unwrap();
    let uid = api.get("Service", "mallory", "capture").unwrap()["metadata"]["uid"].as_str().unwrap().to_owned();
    let metrics = [free_addr(), free_addr()];
    let names = ["node-0", "node-1"];
    let agents: Vec<Agent> = (0..2)
        .map(|i| {
            let mut opts = AgentOptions::pods(&topo.nodes[i].ns, names[i], vec![]);
            opts.source = Some(format!("kube:{}", kubeconfig.0.display()));
            opts.extra_args =
                vec!["--external-ip-cidrs".into(), "203.0.113.0/24".into(), "--metrics-addr".into(), metrics[i].to_string()];
            Agent::start(&bins::lb(), &opts, &[]).expect("agent")
        })
        .collect();
    let logs = || agents.iter().map(Agent::log_text).collect::<Vec<_>>().join("\n---\n");
    let events_for = |name: &str| -> Vec<serde_json::Value> {
        api.list("Event").into_iter().filter(|e| e["regarding"]["name"] == name).collect()
    };
    let results = |result: &str| -> u64 {
        metrics.iter().map(|a| metric(*a, &format!("lb_events_total{{result=\"{result}\"}}")).unwrap_or(0)).sum()
    };
    let wait = |what: &str, pred: &dyn Fn() -> bool| {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !pred() {
            assert!(Instant::now() < deadline, "{what}\nEvents: {:#?}\n{}", api.list("Event"), logs());
            std::thread::sleep(Duration::from_millis(100));
        }
    };

    // Both agents refuse it; the first Event write wins, the other finds it written.
    wait("both agents report the refused Service's Event", &|| results("created") + results("exists") == 2);
    assert_eq!(results("created"), 1, "{}", logs());
    assert_eq!(results("failed") + results("dropped"), 0, "{}", logs());
    let events = events_for("capture");
    assert_eq!(events.len(), 1, "one Event for the cluster: {events:#?}");
    let e = &events[0];
    assert_eq!(e["type"], "Warning");
    assert_eq!(e["reason"], "ServiceSkipped");
    assert_eq!(e["reportingController"], "lb-agent");
    assert!(["lb-agent-node-0", "lb-agent-node-1"].contains(&e["reportingInstance"].as_str().unwrap_or_default()), "{e:#}");
    assert_eq!(e["metadata"]["namespace"], "mallory");
    assert_eq!(e["regarding"]["kind"], "Service");
    assert_eq!(e["regarding"]["uid"], uid.as_str(), "kubectl describe finds Events by the object's uid");
    let note = e["note"].as_str().unwrap_or_default();
    assert!(note.contains("spec.externalIPs[0]") && note.contains("CVE-2020-8554"), "{note}");
    assert!(e["eventTime"].is_string(), "{e:#}");
    assert!(events_for("kubia").is_empty(), "the programmed Service has no Event");

    // Fixed: programmed, and no new Event.
    api.apply(capture("203.0.113.53")).unwrap();
    wait("the fixed Service is programmed on both nodes", &|| {
        agents.iter().all(|a| {
            a.dump("services")
                .is_ok_and(|rows| rows.as_array().is_some_and(|r| r.iter().any(|r| r["frontend"] == "203.0.113.53:53")))
        })
    });
    assert_eq!(events_for("capture").len(), 1);
    // Broken again another way: a new Event (and still one for the cluster).
    api.apply(capture("192.0.2.53")).unwrap();
    wait("a new Event for the new refusal", &|| events_for("capture").len() == 2);
    wait("both agents report it", &|| results("created") + results("exists") == 4);
    assert_eq!(results("created"), 2, "{}", logs());
    assert!(events_for("capture").iter().any(|e| e["note"].as_str().is_some_and(|n| n.contains("192.0.2.53"))));

    // What the agents called is what deploy/rbac.yaml grants (tests/tests/manifests.rs), no more
    // and no less.
    let expected: BTreeSet<(String, String, String)> =
        AGENT_API_CALLS.iter().map(|(g, r, v)| ((*g).to_owned(), (*r).to_owned(), (*v).to_owned())).collect();
    assert_eq!(api.verbs_used(), expected, "the agents' API calls against the ClusterRole's grants");
}

/// Point 50 (issue 17, item 4): as kube-proxy, `/healthz` answers 503 while this node carries
/// the cluster autoscaler's `ToBeDeletedByClusterAutoscaler` taint, so that load balancers drain
/// it, and 200 again once the taint is gone.
#[test]
fn point_50_healthz_fails_while_the_node_carries_the_autoscaler_deletion_taint() {
    let test = "point_50_healthz_fails_while_the_node_carries_the_autoscaler_deletion_taint";
    if !privilege::require(test) {
        return;
    }
    let (api, kubeconfig) = api_server();
    let topo = Topology::new(1).expect("topology");
    let addr = std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("a free port");
    let mut opts = AgentOptions::pods(&topo.nodes[0].ns, "node-0", vec![]);
    opts.source = Some(format!("kube:{}", kubeconfig.0.display()));
    opts.extra_args = vec!["--health-addr".into(), addr.to_string()];
    let node = |taints: serde_json::Value| {
        json!({
            "apiVersion": "v1", "kind": "Node",
            "metadata": { "name": "node-0" },
            "spec": { "taints": taints }
        })
    };
    api.apply(node(json!([]))).unwrap();
    let agent = Agent::start(&bins::lb(), &opts, &[]).expect("agent");
    let wait_for = |code: u16, what: &str| {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let got = healthz(addr);
            if got == Some(code) {
                return;
            }
            assert!(Instant::now() < deadline, "{what}: /healthz answered {got:?}, expected {code}\n{}", agent.log_text());
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    wait_for(200, "synced, node untainted");
    api.apply(node(json!([
        { "key": "ToBeDeletedByClusterAutoscaler", "value": "1700000000", "effect": "NoSchedule" }
    ])))
    .unwrap();
    wait_for(503, "tainted ToBeDeletedByClusterAutoscaler");
    api.apply(node(json!([]))).unwrap();
    wait_for(200, "taint removed");
}

/// The exposition parsed by Prometheus' own parser (the `prometheus_client` Python package,
/// installed by `cargo xtask setup`): `family type` per line.
fn prometheus_families(exposition: &str) -> Vec<String> {
    use std::process::{Command, Stdio};
    let script = "import sys\nfrom prometheus_client.parser import text_string_to_metric_families as parse\n\
                  for f in parse(sys.stdin.read()):\n    print(f.name, f.type, len(f.samples))\n";
    let mut child = Command::new("python3")
        .args(["-c", script])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3");
    child.stdin.take().unwrap().write_all(exposition.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "Prometheus' parser refused the exposition (or prometheus_client is missing: run `cargo xtask setup`):\n{}\n{exposition}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).lines().map(str::to_owned).collect()
}

/// Issue 18 (item 3): kube-proxy's metrics under kube-proxy's names, for the dashboards and
/// SLOs built on them. An EndpointSlice change carrying the EndpointSlice controller's
/// `endpoints.kubernetes.io/last-change-trigger-time` is reported in
/// `kubeproxy_network_programming_duration_seconds` from that time to the maps holding it; the
/// sync duration, last sync time and change counters move; the whole exposition parses with
/// Prometheus' own parser.
#[test]
fn kube_proxy_metrics_report_network_programming_latency() {
    let test = "kube_proxy_metrics_report_network_programming_latency";
    if !privilege::require(test) {
        return;
    }
    let (api, kubeconfig) = api_server();
    let topo = Topology::new(1).expect("topology");
    let addr = free_addr();
    let mut opts = AgentOptions::pods(&topo.nodes[0].ns, "node-0", vec![]);
    opts.source = Some(format!("kube:{}", kubeconfig.0.display()));
    opts.extra_args = vec!["--metrics-addr".into(), addr.to_string(), "--metrics-backends".into()];
    let agent = Agent::start(&bins::lb(), &opts, &[]).expect("agent");
    let get = |sample: &str| metric(addr, sample);
    let wait = |what: &str, pred: &dyn Fn() -> bool| {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !pred() {
            assert!(
                Instant::now() < deadline,
                "{what}\n{}\n{}",
                http_get(addr, "/metrics").unwrap_or_default(),
                agent.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    wait("the first sync", &|| get("kubeproxy_sync_proxy_rules_last_timestamp_seconds").is_some_and(|t| t > 0));
    api.apply(service(Family::V4)).unwrap();
    wait("a Service change counted", &|| get("kubeproxy_sync_proxy_rules_service_changes_total").is_some_and(|n| n >= 1));
    assert_eq!(get("kubeproxy_network_programming_duration_seconds_count"), Some(0), "nothing programmed from a trigger yet");

    // The EndpointSlice controller stamps the change that made it write the slice (here 700 ms
    // before the write).
    std::thread::sleep(Duration::from_millis(800));
    let trigger = k8s_openapi::jiff::Timestamp::now() - k8s_openapi::jiff::SignedDuration::from_millis(700);
    api.apply(json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": "kubia-abc", "namespace": "default", "labels": {"kubernetes.io/service-name": "kubia"},
                     "annotations": {"endpoints.kubernetes.io/last-change-trigger-time": trigger.to_string()}},
        "addressType": "IPv4",
        "ports": [{"port": HTTP_PORT, "protocol": "TCP"}],
        "endpoints": [{"addresses": ["10.244.0.77"], "conditions": {"ready": true}, "nodeName": "node-0"}]
    }))
    .unwrap();
    wait("the slice's programming latency", &|| get("kubeproxy_network_programming_duration_seconds_count") == Some(1));
    let body = http_get(addr, "/metrics").unwrap();
    let sum: f64 = body
        .lines()
        .find_map(|l| l.strip_prefix("kubeproxy_network_programming_duration_seconds_sum "))
        .and_then(|v| v.trim().parse().ok())
        .expect("the histogram's sum");
    assert!((0.7..10.0).contains(&sum), "trigger 700 ms before the write → at least 0.7 s: {sum}");
    assert!(get("kubeproxy_sync_proxy_rules_endpoint_changes_total").is_some_and(|n| n >= 1), "{body}");
    assert!(get("kubeproxy_sync_proxy_rules_duration_seconds_count").is_some_and(|n| n >= 2), "{body}");
    // The same slice again (no new trigger time): not counted twice.
    let mut again = api.get("EndpointSlice", "default", "kubia-abc").unwrap();
    again["endpoints"][0]["addresses"] = json!(["10.244.0.78"]);
    api.apply(again).unwrap();
    wait("the edit synced", &|| get("kubeproxy_sync_proxy_rules_endpoint_changes_total").is_some_and(|n| n >= 2));
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(get("kubeproxy_network_programming_duration_seconds_count"), Some(1), "a trigger time is counted once");
    // `--metrics-backends`: the backend's own series, by endpoint (no traffic sent: 0).
    wait("the backend's series", &|| {
        get(&format!("lb_backend_packets_total{{backend=\"10.244.0.78:{HTTP_PORT}\",protocol=\"TCP\"}}")) == Some(0)
    });

    let families = prometheus_families(http_get(addr, "/metrics").unwrap().split_once("\r\n\r\n").unwrap().1);
    for want in [
        "kubeproxy_network_programming_duration_seconds histogram",
        "kubeproxy_sync_proxy_rules_duration_seconds histogram",
        "kubeproxy_sync_proxy_rules_last_timestamp_seconds gauge",
        "kubeproxy_sync_proxy_rules_endpoint_changes counter",
        "kubeproxy_sync_proxy_rules_service_changes counter",
        "lb_build_info gauge",
        "process_resident_memory_bytes gauge",
        "lb_sync_duration_seconds histogram",
        "lb_backend_packets counter",
    ] {
        assert!(families.iter().any(|f| f.starts_with(&format!("{want} "))), "{want}: {families:#?}");
    }
}
