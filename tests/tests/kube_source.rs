//! The agent's kube-rs source against the in-process API server (`lb_tests::apiserver`): the real
//! kube client and `kube_runtime` watchers over real HTTP list/watch. Unprivileged.

use std::{
    path::PathBuf,
    time::{Duration, Instant},
};

use lb_tests::apiserver::ApiServer;
use lb_userspace::source::{
    ClusterObjects,
    kube::{self as kube_source, KubeSource},
};
use serde_json::{Value, json};

/// Upper bound for anything to show up in the source (watch restarts back off up to 3.2 s after
/// a few failures, so this leaves ample margin).
const WAIT: Duration = Duration::from_secs(30);

const OPT_OUT: &str = "service.kubernetes.io/service-proxy-name";
const HEADLESS: &str = "service.kubernetes.io/headless";

/// A test API server and a kubeconfig pointing at it (removed on drop).
struct Cluster {
    server: ApiServer,
    kubeconfig: PathBuf,
}

impl Cluster {
    fn new() -> Self {
        let server = ApiServer::start().expect("starting the test API server");
        let kubeconfig = std::env::temp_dir().join(format!("lbt-{}-kubeconfig", lb_tests::netns::unique_token()));
        server.kubeconfig(&kubeconfig).unwrap();
        Self { server, kubeconfig }
    }

    /// A kube source on the real client, ready (initial lists complete).
    async fn source(&self, node_name: &str) -> KubeSource {
        let client = kube_source::client(Some(&self.kubeconfig)).await.expect("kube client");
        let source = KubeSource::start(client, node_name).await.expect("starting the kube source");
        if tokio::time::timeout(WAIT, source.wait_ready()).await.is_err() {
            panic!("the kube source was not ready within {WAIT:?}; requests:\n{}", self.requests_tail());
        }
        source
    }

    fn requests_tail(&self) -> String {
        let r = self.server.requests();
        r[r.len().saturating_sub(30)..].join("\n")
    }

    fn apply(&self, v: Value) -> u64 {
        self.server.apply(v).expect("apply")
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.kubeconfig);
    }
}

/// Waits until `pred` holds for a snapshot of `source`, waking on its change notifications.
async fn wait_until(
    cluster: &Cluster,
    source: &mut KubeSource,
    what: &str,
    pred: impl Fn(&ClusterObjects) -> bool,
) -> ClusterObjects {
    let deadline = Instant::now() + WAIT;
    loop {
        let snap = source.snapshot();
        if pred(&snap) {
            return snap;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            panic!(
                "timed out waiting for {what}; snapshot: {}; server stats: {:?}; last requests:\n{}",
                summary(&snap),
                cluster.server.stats(),
                cluster.requests_tail()
            );
        }
        // A change notification, or a poll now and then (the predicate is re-checked anyway).
        let _ = tokio::time::timeout(left.min(Duration::from_millis(500)), source.changed()).await;
    }
}

fn summary(o: &ClusterObjects) -> String {
    let names = |v: Vec<(Option<String>, Option<String>)>| {
        v.into_iter().map(|(ns, n)| format!("{}/{}", ns.unwrap_or_default(), n.unwrap_or_default())).collect::<Vec<_>>().join(",")
    };
    format!(
        "services [{}] slices [{}] nodes [{}]",
        names(o.services.iter().map(|s| (s.metadata.namespace.clone(), s.metadata.name.clone())).collect()),
        names(o.slices.iter().map(|s| (s.metadata.namespace.clone(), s.metadata.name.clone())).collect()),
        names(o.nodes.iter().map(|s| (None, s.metadata.name.clone())).collect()),
    )
}

fn service_names(o: &ClusterObjects) -> Vec<String> {
    o.services
        .iter()
        .map(|s| {
            format!("{}/{}", s.metadata.namespace.as_deref().unwrap_or_default(), s.metadata.name.as_deref().unwrap_or_default())
        })
        .collect()
}

fn slice_endpoints(o: &ClusterObjects, name: &str) -> Option<usize> {
    o.slices.iter().find(|s| s.metadata.name.as_deref() == Some(name)).map(|s| s.endpoints.len())
}

fn has_service(o: &ClusterObjects, name: &str) -> bool {
    o.services.iter().any(|s| s.metadata.name.as_deref() == Some(name))
}

fn has_slice(o: &ClusterObjects, name: &str) -> bool {
    slice_endpoints(o, name).is_some()
}

/// A ClusterIP Service as a user writes it (the API server assigns the ClusterIP).
fn service(name: &str, labels: Value) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": name, "namespace": "default", "labels": labels},
        "spec": {"selector": {"app": name}, "ports": [{"name": "http", "port": 80, "targetPort": 8080}]},
    })
}

/// An EndpointSlice of `svc` with one ready endpoint per address (none: `endpoints` omitted).
fn slice(svc: &str, name: &str, n: usize, labels: Value) -> Value {
    let mut l = labels;
    l["kubernetes.io/service-name"] = svc.into();
    let mut s = json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": name, "namespace": "default", "labels": l},
        "addressType": "IPv4",
        "ports": [{"name": "http", "protocol": "TCP", "port": 8080}],
    });
    if n > 0 {
        s["endpoints"] = (1..=n)
            .map(|i| {
                json!({"addresses": [format!("10.244.1.{i}")], "conditions": {"ready": true},
                       "nodeName": "node-a"})
            })
            .collect();
    }
    s
}

fn node(name: &str, zone: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": name, "labels": {"topology.kubernetes.io/zone": zone}},
        "status": {"addresses": [{"type": "InternalIP", "address": "192.168.1.10"}]},
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn initial_list_is_complete_when_ready() {
    let c = Cluster::new();
    let mut web = service("web", json!({"app": "web"}));
    web["metadata"]["managedFields"] = json!([{"manager": "kubectl", "operation": "Apply",
        "apiVersion": "v1", "fieldsType": "FieldsV1", "fieldsV1": {"f:spec": {}}}]);
    c.apply(web);
    c.apply(service("api", json!({})));
    let mut other = service("db", json!({}));
    other["metadata"]["namespace"] = "other".into();
    c.apply(other);
    c.apply(slice("web", "web-1", 3, json!({})));
    c.apply(slice("api", "api-1", 1, json!({})));
    c.apply(node("node-a", "zone-a"));
    c.apply(node("node-b", "zone-b"));
    // The first lists fail: the source retries and is ready only once every list succeeded.
    c.server.fail_next_lists(2);

    let mut src = c.source("node-a").await;
    let snap = src.snapshot();
    assert_eq!(service_names(&snap), ["default/api", "default/web", "other/db"], "sorted by namespace and name");
    assert_eq!(slice_endpoints(&snap, "web-1"), Some(3));
    assert_eq!(slice_endpoints(&snap, "api-1"), Some(1));
    assert_eq!(snap.nodes.len(), 1, "only this node: {}", summary(&snap));
    assert_eq!(snap.nodes[0].metadata.name.as_deref(), Some("node-a"));
    let web = snap.services.iter().find(|s| s.metadata.name.as_deref() == Some("web")).unwrap();
    assert!(web.metadata.managed_fields.as_ref().is_none_or(Vec::is_empty), "managedFields are stripped");
    let ip = web.spec.as_ref().and_then(|s| s.cluster_ip.as_deref()).unwrap();
    assert!(ip.starts_with("10.96."), "the server assigned the ClusterIP: {ip}");
    assert!(c.server.stats().lists >= 5, "{:?}", c.server.stats());

    // What was asked of the server: kube-proxy's label selector on Services and EndpointSlices,
    // this node by name.
    let requests = c.server.requests();
    let selector = "labelSelector=%21service.kubernetes.io%2Fservice-proxy-name%2C%21service.kubernetes.io%2Fheadless";
    for path in ["/api/v1/services?", "/apis/discovery.k8s.io/v1/endpointslices?"] {
        assert!(
            requests.iter().any(|r| r.contains(path) && r.contains(selector) && !r.contains("watch=")),
            "a list of {path} with the selector: {requests:#?}"
        );
    }
    assert!(
        requests.iter().any(|r| r.contains("/api/v1/nodes?") && r.contains("fieldSelector=metadata.name%3Dnode-a")),
        "{requests:#?}"
    );

    // This node's changes arrive; other nodes never show up.
    c.apply(node("node-b", "zone-c"));
    c.apply(node("node-a", "zone-z"));
    let snap = wait_until(&c, &mut src, "node-a's new zone", |o| {
        o.nodes.iter().any(|n| {
            n.metadata.labels.as_ref().and_then(|l| l.get("topology.kubernetes.io/zone")).map(String::as_str) == Some("zone-z")
        })
    })
    .await;
    assert_eq!(snap.nodes.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn services_and_slices_are_added_modified_and_deleted() {
    let c = Cluster::new();
    let mut src = c.source("").await;
    let snap = src.snapshot();
    assert!(snap.services.is_empty() && snap.slices.is_empty() && snap.nodes.is_empty());

    c.apply(service("web", json!({})));
    c.apply(slice("web", "web-1", 2, json!({})));
    wait_until(&c, &mut src, "web and its slice", |o| has_service(o, "web") && slice_endpoints(o, "web-1") == Some(2)).await;

    let mut changed = service("web", json!({}));
    changed["spec"]["ports"][0]["port"] = 8000.into();
    c.apply(changed);
    wait_until(&c, &mut src, "web's new port", |o| {
        o.services.iter().any(|s| s.spec.as_ref().and_then(|s| s.ports.as_ref()).is_some_and(|p| p[0].port == 8000))
    })
    .await;

    c.server.delete("EndpointSlice", "default", "web-1").unwrap();
    wait_until(&c, &mut src, "the slice deleted", |o| !has_slice(o, "web-1")).await;
    c.server.delete("Service", "default", "web").unwrap();
    let snap = wait_until(&c, &mut src, "web deleted", |o| o.services.is_empty()).await;
    assert!(snap.slices.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoints_scale_3_1_0_5() {
    let c = Cluster::new();
    c.apply(service("web", json!({})));
    c.apply(slice("web", "web-1", 3, json!({})));
    let mut src = c.source("").await;
    assert_eq!(slice_endpoints(&src.snapshot(), "web-1"), Some(3));
    // 0: the API server serves `"endpoints": null` for an empty slice.
    for n in [1, 0, 5] {
        c.apply(slice("web", "web-1", n, json!({})));
        let snap = wait_until(&c, &mut src, &format!("{n} endpoints"), |o| slice_endpoints(o, "web-1") == Some(n)).await;
        let addrs: Vec<String> = snap.slices[0].endpoints.iter().map(|e| e.addr.expect("an address").to_string()).collect();
        let expected: Vec<String> = (1..=n).map(|i| format!("10.244.1.{i}")).collect();
        assert_eq!(addrs, expected);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opt_out_labels_remove_and_restore_the_service() {
    let c = Cluster::new();
    c.apply(service("web", json!({"app": "web"})));
    c.apply(slice("web", "web-1", 2, json!({"app": "web"})));
    c.apply(service("other", json!({})));
    let mut src = c.source("").await;
    assert!(has_service(&src.snapshot(), "web"));

    // Another proxy takes the Service over; the EndpointSlice controller copies the label.
    c.apply(service("web", json!({"app": "web", OPT_OUT: "other-proxy"})));
    let snap = wait_until(&c, &mut src, "web opted out", |o| !has_service(o, "web")).await;
    assert!(has_service(&snap, "other"));
    c.apply(slice("web", "web-1", 2, json!({"app": "web", OPT_OUT: "other-proxy"})));
    wait_until(&c, &mut src, "web's slice opted out", |o| !has_slice(o, "web-1")).await;

    // Changes while opted out are not seen; removing the label brings the current state back.
    c.apply(slice("web", "web-1", 4, json!({"app": "web", OPT_OUT: "other-proxy"})));
    c.apply(service("web", json!({"app": "web"})));
    c.apply(slice("web", "web-1", 4, json!({"app": "web"})));
    wait_until(&c, &mut src, "web back with 4 endpoints", |o| has_service(o, "web") && slice_endpoints(o, "web-1") == Some(4))
        .await;

    // The headless label works the same way.
    c.apply(service("web", json!({"app": "web", HEADLESS: ""})));
    wait_until(&c, &mut src, "web marked headless", |o| !has_service(o, "web")).await;
    c.apply(service("web", json!({"app": "web"})));
    wait_until(&c, &mut src, "web back", |o| has_service(o, "web")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watches_relist_after_410_and_keep_following() {
    let mut c = Cluster::new();
    c.apply(service("a", json!({})));
    let mut src = c.source("").await;
    assert!(has_service(&src.snapshot(), "a"));

    // History forgotten: both watches end, re-watch from their old resourceVersion, get the 410
    // ERROR event, relist and watch again.
    let lists = c.server.stats().lists;
    c.server.compact();
    assert!(
        c.server.wait_for(WAIT, |s| s.expired >= 2 && s.lists >= lists + 2 && s.open_watches >= 2),
        "no relist after the 410: {:?}\n{}",
        c.server.stats(),
        c.requests_tail()
    );
    c.apply(service("b", json!({})));
    c.apply(slice("b", "b-1", 1, json!({})));
    wait_until(&c, &mut src, "b after the relist", |o| has_service(o, "a") && has_service(o, "b") && has_slice(o, "b-1")).await;

    // Missed changes are reconciled by the relist: while the server is away the objects change
    // and the history is compacted; when it returns the watches get 410, and the relist both
    // adds what is new and drops what was deleted meanwhile.
    c.server.stop();
    c.server.delete("Service", "default", "a").unwrap();
    c.apply(service("c", json!({})));
    c.server.compact();
    let expired = c.server.stats().expired;
    c.server.restart().unwrap();
    let snap =
        wait_until(&c, &mut src, "a gone and c present after the relist", |o| !has_service(o, "a") && has_service(o, "c")).await;
    assert_eq!(service_names(&snap), ["default/b", "default/c"]);
    assert!(c.server.stats().expired > expired, "{:?}", c.server.stats());
    c.apply(service("d", json!({})));
    wait_until(&c, &mut src, "d after the second relist", |o| has_service(o, "d")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_server_vanishing_and_returning() {
    let mut c = Cluster::new();
    c.apply(service("a", json!({})));
    c.apply(slice("a", "a-1", 2, json!({})));
    let mut src = c.source("node-a").await;
    assert!(c.server.wait_for(WAIT, |s| s.open_watches >= 3), "{:?}", c.server.stats());
    let lists = c.server.stats().lists;

    c.server.stop();
    // Away for a while: the source keeps the last state (the datapath keeps serving it).
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let snap = src.snapshot();
    assert!(has_service(&snap, "a") && slice_endpoints(&snap, "a-1") == Some(2), "{}", summary(&snap));
    c.apply(service("b", json!({}))); // made while the clients cannot see it

    c.server.restart().unwrap();
    c.apply(slice("a", "a-1", 5, json!({})));
    c.apply(node("node-a", "zone-a"));
    wait_until(&c, &mut src, "every change after the outage", |o| {
        has_service(o, "a") && has_service(o, "b") && slice_endpoints(o, "a-1") == Some(5) && o.nodes.len() == 1
    })
    .await;
    // The watches resumed from their resourceVersions: no relist was needed.
    assert_eq!(c.server.stats().lists, lists, "{}", c.requests_tail());

    // A second, shorter outage.
    c.server.stop();
    c.server.restart().unwrap();
    c.server.delete("Service", "default", "b").unwrap();
    wait_until(&c, &mut src, "b deleted after the second outage", |o| !has_service(o, "b")).await;
}
