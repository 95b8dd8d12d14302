//! The kube-rs source (`lb agent --source kube`): Services, EndpointSlices and this node's Node
//! list/watched from the API server into reflector stores.
//!
//! - Services and EndpointSlices are watched with kube-proxy's server-side label selector
//!   [`PROXY_LABEL_SELECTOR`] (semantics point 4), so adding `service.kubernetes.io/service-proxy-name`
//!   or `service.kubernetes.io/headless` at runtime removes the objects from the stores (the API
//!   server turns the label change into a `DELETED` event) and removing it brings them back.
//! - The Node is watched with `fieldSelector=metadata.name=<node>` (only with a node name).
//! - Every watcher restarts by itself with kube's default backoff (0.8 s doubling to 30 s, with
//!   jitter): a lost connection resumes from the last resourceVersion, a 410 relists, and a relist
//!   replaces a store atomically once complete. Errors are logged, never returned: while the API
//!   server is away the stores keep the last state and the datapath keeps serving it.
//! - Objects are slimmed before they are stored ([`Slim`]): managedFields, annotations other
//!   than lb's, endpoints' targetRefs and a Node's status beyond its addresses never reach
//!   the caches.

use std::{
    fmt::Debug,
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use futures::StreamExt as _;
use k8s_openapi::api::{
    core::v1::{Node, Service},
    discovery::v1::EndpointSlice,
};
use kube::{
    Api, Client, Config, Resource,
    config::{InferConfigError, KubeConfigOptions, Kubeconfig, KubeconfigError},
    runtime::{
        WatchStreamExt as _,
        reflector::{self, Store},
        watcher,
    },
};
use serde::de::DeserializeOwned;
use tokio::{sync::watch, task::JoinHandle};
use tracing::{debug, error, info, warn};

use super::ClusterObjects;

/// kube-proxy's informer label selector for Services and EndpointSlices (point 4).
pub const PROXY_LABEL_SELECTOR: &str = "!service.kubernetes.io/service-proxy-name,!service.kubernetes.io/headless";

/// The shortest time between two wake-ups of [`KubeSource::changed`]. A change after a quiet
/// period wakes the agent at once (as kube-proxy's bounded-frequency runner does); changes
/// within the window of the last wake-up wait for its end, so a burst (a rollout's slice updates
/// arrive within a millisecond or two) costs at most one sync per window. Events that arrive
/// while a sync runs are batched into the next one anyway.
pub const COALESCE_WINDOW: Duration = Duration::from_millis(5);

/// While a watch keeps failing, one warning per this period (the others are debug).
const ERROR_LOG_PERIOD: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum SourceKubeError {
    #[error("cannot load kubeconfig {}", path.display())]
    Kubeconfig {
        path: PathBuf,
        #[source]
        source: KubeconfigError,
    },
    #[error("no Kubernetes client configuration (tried KUBECONFIG, ~/.kube/config and the in-cluster service account)")]
    Infer(#[source] InferConfigError),
    #[error("cannot build the Kubernetes client")]
    Client(#[source] kube::Error),
    #[error("the kube source must be started inside a tokio runtime")]
    NoRuntime,
}

/// A kube client from `kubeconfig`, or else from `KUBECONFIG` / `~/.kube/config`, or else from
/// the in-cluster service account (`KUBERNETES_SERVICE_HOST`/`_PORT` and its token).
pub async fn client(kubeconfig: Option<&Path>) -> Result<Client, SourceKubeError> {
    let config = match kubeconfig {
        Some(path) => {
            let err = |source| SourceKubeError::Kubeconfig { path: path.to_owned(), source };
            let file = Kubeconfig::read_from(path).map_err(err)?;
            Config::from_custom_kubeconfig(file, &KubeConfigOptions::default()).await.map_err(err)?
        }
        None => Config::infer().await.map_err(SourceKubeError::Infer)?,
    };
    info!(server = %config.cluster_url, "Kubernetes API server");
    Client::try_from(config).map_err(SourceKubeError::Client)
}

/// Reflector stores of the objects the agent consumes, kept up to date by background tasks
/// (stopped when this is dropped).
pub struct KubeSource {
    services: Store<Service>,
    slices: Store<EndpointSlice>,
    nodes: Option<Store<Node>>,
    changes: watch::Receiver<u64>,
    /// Watch events (added, modified, deleted) of Services and of EndpointSlices since start.
    service_events: Arc<AtomicU64>,
    slice_events: Arc<AtomicU64>,
    tasks: Vec<JoinHandle<()>>,
    /// When [`KubeSource::changed`] last resolved.
    last_wake: Option<tokio::time::Instant>,
    /// The last snapshot's sorted objects, kept up to date by the changes only.
    sorted: Box<SortedCaches>,
}

/// [`Sorted`] objects of each kind the snapshot sorts incrementally.
#[derive(Default)]
struct SortedCaches {
    services: std::sync::Mutex<Sorted<Service>>,
    slices: std::sync::Mutex<Sorted<EndpointSlice>>,
}

impl KubeSource {
    /// Starts reflectors for Services and EndpointSlices (with [`PROXY_LABEL_SELECTOR`]) and,
    /// when `node_name` is not empty, for this node's Node. Does no I/O itself: it succeeds
    /// while the API server is unreachable, and the reflectors keep retrying.
    pub async fn start(client: Client, node_name: &str) -> Result<Self, SourceKubeError> {
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| SourceKubeError::NoRuntime)?;
        let (tx, changes) = watch::channel(0u64);
        let tx = Arc::new(tx);
        let mut tasks = Vec::new();
        let selected = watcher::Config::default().labels(PROXY_LABEL_SELECTOR);
        let (service_events, slice_events) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let services = spawn_reflector(
            &runtime,
            Api::<Service>::all(client.clone()),
            selected.clone(),
            ("services", &tx, Some(service_events.clone())),
            &mut tasks,
        );
        let slices = spawn_reflector(
            &runtime,
            Api::<EndpointSlice>::all(client.clone()),
            selected,
            ("endpointslices", &tx, Some(slice_events.clone())),
            &mut tasks,
        );
        let nodes = (!node_name.is_empty()).then(|| {
            spawn_reflector(
                &runtime,
                Api::<Node>::all(client),
                watcher::Config::default().fields(&format!("metadata.name={node_name}")),
                ("nodes", &tx, None),
                &mut tasks,
            )
        });
        Ok(Self {
            services,
            slices,
            nodes,
            changes,
            service_events,
            slice_events,
            tasks,
            last_wake: None,
            sorted: Box::default(),
        })
    }

    /// Watch events of Services and of EndpointSlices since start (kube-proxy's change
    /// counters).
    pub fn change_counts(&self) -> (u64, u64) {
        (self.service_events.load(Ordering::Relaxed), self.slice_events.load(Ordering::Relaxed))
    }

    /// Resolves once every reflector has completed its initial list (point 7: never program
    /// before that). Never resolves if a reflector task died before that.
    pub async fn wait_ready(&self) {
        let ready = async {
            self.services.wait_until_ready().await?;
            self.slices.wait_until_ready().await?;
            if let Some(nodes) = &self.nodes {
                nodes.wait_until_ready().await?;
            }
            Ok::<(), reflector::store::WriterDropped>(())
        };
        if let Err(e) = ready.await {
            error!(error = %e, "a reflector stopped before its initial list: restart the agent; until then nothing is programmed from the API server");
            std::future::pending::<()>().await;
        }
    }

    /// The current objects, sorted by namespace and name, as the file source returns them.
    pub fn snapshot(&self) -> ClusterObjects {
        ClusterObjects {
            services: lock(&self.sorted.services).update(self.services.state()),
            slices: lock(&self.sorted.slices).update(self.slices.state()),
            nodes: self.nodes.as_ref().map(sorted).unwrap_or_default(),
        }
    }

    /// Resolves when any store changed since the last call: at once after a quiet period, else
    /// at the end of the [`COALESCE_WINDOW`] that began with the last wake-up. Take a
    /// [`snapshot`](Self::snapshot) afterwards. Cancel-safe: a change is only consumed when this
    /// resolves, so it can race a timer in `select!`.
    pub async fn changed(&mut self) {
        // A clone shares the seen version without consuming it.
        let mut probe = self.changes.clone();
        if probe.changed().await.is_err() {
            // Every reflector task is gone (only when the runtime shuts down).
            std::future::pending::<()>().await;
        }
        if let Some(last) = self.last_wake {
            tokio::time::sleep_until(last + COALESCE_WINDOW).await;
        }
        self.last_wake = Some(tokio::time::Instant::now());
        self.changes.borrow_and_update();
    }
}

impl Drop for KubeSource {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A store's objects sorted by namespace and name, as of the last snapshot. Sorting 100,000
/// objects by their names at every sync cost about 40 ms each for Services and slices (most
/// of a sync at 100,000 Services); since a new version of an object is a new `Arc` in the store
/// and the others keep theirs, the order is brought up to date by dropping the objects gone and
/// inserting the new ones in place.
struct Sorted<K> {
    objects: Vec<Arc<K>>,
    /// The addresses of `objects`, each with the last update that listed it (so that the
    /// objects gone are found without a set of every address now).
    addresses: foldhash::HashMap<usize, u64>,
    pass: u64,
}

impl<K> Default for Sorted<K> {
    fn default() -> Self {
        Self { objects: Vec::new(), addresses: foldhash::HashMap::default(), pass: 0 }
    }
}

impl<K: Resource<DynamicType = ()>> Sorted<K> {
    /// `now` (a store's objects in any order), sorted by namespace and name.
    fn update(&mut self, now: Vec<Arc<K>>) -> Vec<Arc<K>> {
        let addr = |o: &Arc<K>| Arc::as_ptr(o) as usize;
        self.pass += 1;
        let pass = self.pass;
        let mut new: Vec<&Arc<K>> = Vec::new();
        for o in &now {
            match self.addresses.get_mut(&addr(o)) {
                Some(seen) => *seen = pass,
                None => new.push(o),
            }
        }
        if self.objects.is_empty() || new.len() > 64 + now.len() / 16 {
            let mut all = now.clone();
            all.sort_by(|a, b| by_name(&**a, &**b));
            self.objects = all;
            self.addresses = now.iter().map(|o| (addr(o), pass)).collect();
        } else {
            // Objects gone: the listed ones are marked with this pass.
            if now.len() - new.len() < self.objects.len() {
                let addresses = &mut self.addresses;
                self.objects.retain(|o| {
                    let listed = addresses.get(&addr(o)) == Some(&pass);
                    if !listed {
                        addresses.remove(&addr(o));
                    }
                    listed
                });
            }
            for o in new {
                let at = self.objects.partition_point(|x| by_name(&**x, &**o).is_lt());
                self.objects.insert(at, Arc::clone(o));
                self.addresses.insert(addr(o), pass);
            }
        }
        self.objects.clone()
    }
}

fn by_name<K: Resource>(a: &K, b: &K) -> std::cmp::Ordering {
    (a.meta().namespace.as_deref(), a.meta().name.as_deref()).cmp(&(b.meta().namespace.as_deref(), b.meta().name.as_deref()))
}

fn sorted<K: Resource<DynamicType = ()> + Clone>(store: &Store<K>) -> Vec<Arc<K>> {
    let mut objects: Vec<Arc<K>> = store.state();
    objects.sort_by(|a, b| {
        (a.meta().namespace.as_deref(), a.meta().name.as_deref()).cmp(&(b.meta().namespace.as_deref(), b.meta().name.as_deref()))
    });
    objects
}

/// What the watch caches keep of an object: only what the compile step and the agent read.
/// Real clusters' objects carry much more (managedFields, `kubectl apply`'s last-applied
/// annotation, a Node's image list, every endpoint's targetRef), which would otherwise live
/// in memory once per object for the agent's lifetime.
pub trait Slim {
    fn slim(&mut self);
}

impl Slim for Service {
    /// Drops managedFields and every annotation but the selection one.
    fn slim(&mut self) {
        self.metadata.managed_fields = None;
        if let Some(a) = self.metadata.annotations.as_mut() {
            a.retain(|k, _| k == crate::model::kubernetes::ANNOTATION_SELECTION);
        }
    }
}

impl Slim for EndpointSlice {
    /// Drops managedFields, every annotation but the change trigger time (network programming
    /// latency), and each endpoint's targetRef and deprecatedTopology (addresses, conditions,
    /// nodeName, zone and hints stay).
    fn slim(&mut self) {
        self.metadata.managed_fields = None;
        if let Some(a) = self.metadata.annotations.as_mut() {
            a.retain(|k, _| k == crate::model::kubernetes::TRIGGER_TIME_ANNOTATION);
        }
        for ep in &mut self.endpoints {
            ep.target_ref = None;
            ep.deprecated_topology = None;
        }
    }
}

impl Slim for Node {
    /// Keeps the name, labels (zone), deletion timestamp, taints (the autoscaler's deletion
    /// taint turns `/healthz` to 503, point 50) and addresses.
    fn slim(&mut self) {
        self.metadata.managed_fields = None;
        self.metadata.annotations = None;
        self.spec = self.spec.take().map(|s| k8s_openapi::api::core::v1::NodeSpec { taints: s.taints, ..Default::default() });
        if let Some(status) = self.status.as_mut() {
            *status = k8s_openapi::api::core::v1::NodeStatus { addresses: status.addresses.take(), ..Default::default() };
        }
    }
}

/// Spawns `watcher → backoff → slim → reflector` for one resource, bumping
/// `changes` whenever the store changes and `events` (if any) at every watch event after the
/// initial list. Returns the store's reader.
fn spawn_reflector<K>(
    runtime: &tokio::runtime::Handle,
    api: Api<K>,
    config: watcher::Config,
    (resource, changes, events): (&'static str, &Arc<watch::Sender<u64>>, Option<Arc<AtomicU64>>),
    tasks: &mut Vec<JoinHandle<()>>,
) -> Store<K>
where
    K: Resource<DynamicType = ()> + Slim + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
{
    let (reader, writer) = reflector::store();
    let stream = watcher(api, config).default_backoff().modify(Slim::slim).reflect(writer);
    let changes = changes.clone();
    tasks.push(runtime.spawn(async move {
        let mut stream = std::pin::pin!(stream);
        let mut synced = false;
        let mut failures = 0u64;
        let mut last_warning: Option<Instant> = None;
        while let Some(item) = stream.next().await {
            let event = match item {
                Ok(event) => event,
                // Routine: the history moved past our resourceVersion; the watcher relists.
                Err(watcher::Error::WatchError(status)) if status.code == 410 => {
                    info!(resource, detail = %status.message, "watch expired (410); relisting");
                    continue;
                }
                Err(e) => {
                    failures += 1;
                    if last_warning.is_none_or(|t| t.elapsed() >= ERROR_LOG_PERIOD) {
                        last_warning = Some(Instant::now());
                        warn!(resource, error = %e, failures, "watch failed: check that the API server is reachable from the node and that the agent may list/watch this resource (deploy/rbac.yaml); retrying with backoff, the datapath keeps the last state");
                    } else {
                        debug!(resource, error = %e, failures, "watch failed; retrying with backoff");
                    }
                    continue;
                }
            };
            match event {
                watcher::Event::Init | watcher::Event::InitApply(_) => continue,
                watcher::Event::InitDone => {
                    if !synced {
                        info!(resource, "initial list received");
                        synced = true;
                    } else {
                        debug!(resource, "relisted");
                    }
                }
                watcher::Event::Apply(_) | watcher::Event::Delete(_) => {
                    if let Some(events) = &events {
                        events.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            if failures > 0 {
                info!(resource, failures, "watch recovered");
                failures = 0;
                last_warning = None;
            }
            changes.send_modify(|n| *n = n.wrapping_add(1));
        }
    }));
    reader
}

#[cfg(test)]
mod tests {

    /// The order kept up to date by the changes is the order a full sort gives.
    #[test]
    fn the_sorted_order_follows_changes_as_a_full_sort_would() {
        let svc = |ns: &str, name: &str, ip: &str| -> Arc<Service> {
            Arc::new(
                serde_json::from_value(serde_json::json!({
                    "metadata": { "name": name, "namespace": ns }, "spec": { "clusterIP": ip },
                }))
                .unwrap(),
            )
        };
        let names = |v: &[Arc<Service>]| -> Vec<String> {
            v.iter()
                .map(|s| format!("{}/{}", s.metadata.namespace.as_deref().unwrap(), s.metadata.name.as_deref().unwrap()))
                .collect()
        };
        let full = |v: &[Arc<Service>]| {
            let mut v = v.to_vec();
            v.sort_by(|a, b| by_name(&**a, &**b));
            names(&v)
        };
        let mut objects: Vec<Arc<Service>> =
            (0..300).rev().map(|i| svc(if i % 2 == 0 { "a" } else { "b" }, &format!("s{i}"), "10.96.0.1")).collect();
        let mut sorted = Sorted::default();
        assert_eq!(names(&sorted.update(objects.clone())), full(&objects));
        // A new version of one, one gone, two new, in any order.
        let at = objects.iter().position(|s| s.metadata.name.as_deref() == Some("s288")).unwrap();
        objects[at] = svc("a", "s288", "10.96.0.2");
        objects.remove(20);
        objects.push(svc("a", "new-1", "10.96.0.3"));
        objects.insert(0, svc("c", "new-2", "10.96.0.4"));
        objects.swap(5, 200);
        let got = sorted.update(objects.clone());
        assert_eq!(names(&got), full(&objects));
        assert!(got.iter().any(|s| s.spec.as_ref().unwrap().cluster_ip.as_deref() == Some("10.96.0.2")), "the new version");
        assert_eq!(names(&sorted.update(objects.clone())), full(&objects), "nothing changed");
    }

    use super::*;

    /// The caches keep what compile and the agent read, and drop the bulk.
    #[test]
    fn stored_objects_keep_only_what_is_read() {
        let mut svc: Service = serde_json::from_value(serde_json::json!({
            "metadata": { "name": "a", "namespace": "ns", "annotations": {
                "kubectl.kubernetes.io/last-applied-configuration": "{...}", (crate::model::kubernetes::ANNOTATION_SELECTION): "random" },
                "managedFields": [{ "manager": "kubectl" }] },
            "spec": { "clusterIP": "10.96.0.1", "ports": [{ "port": 80 }] },
        }))
        .unwrap();
        svc.slim();
        assert_eq!(svc.metadata.annotations.as_ref().unwrap().len(), 1);
        assert!(svc.metadata.managed_fields.is_none() && svc.spec.is_some());
        let mut slice: EndpointSlice = serde_json::from_value(serde_json::json!({
            "metadata": { "name": "a-1", "namespace": "ns", "labels": { "kubernetes.io/service-name": "a" } },
            "addressType": "IPv4",
            "endpoints": [{ "addresses": ["10.244.0.1"], "nodeName": "n1", "zone": "z",
                            "targetRef": { "kind": "Pod", "name": "a-xyz", "uid": "1234" },
                            "hints": { "forZones": [{ "name": "z" }] } }],
        }))
        .unwrap();
        slice.slim();
        let ep = &slice.endpoints[0];
        assert!(ep.target_ref.is_none() && ep.hints.is_some() && ep.node_name.is_some() && ep.zone.is_some());
        assert!(slice.metadata.labels.is_some());
        let mut node: Node = serde_json::from_value(serde_json::json!({
            "metadata": { "name": "n1", "labels": { "topology.kubernetes.io/zone": "z" }, "deletionTimestamp": "2026-01-01T00:00:00Z" },
            "spec": { "podCIDR": "10.244.0.0/24", "taints": [{ "key": "ToBeDeletedByClusterAutoscaler", "effect": "NoSchedule" }] },
            "status": { "addresses": [{ "type": "InternalIP", "address": "192.168.0.10" }],
                        "images": [{ "names": ["registry/big:1"], "sizeBytes": 1 }] },
        }))
        .unwrap();
        node.slim();
        let status = node.status.as_ref().unwrap();
        assert!(status.images.is_none() && status.addresses.as_ref().unwrap().len() == 1);
        let spec = node.spec.as_ref().unwrap();
        assert!(spec.pod_cidr.is_none() && spec.taints.as_ref().unwrap().len() == 1, "{spec:?}");
        assert!(node.metadata.labels.is_some() && node.metadata.deletion_timestamp.is_some());
    }

    #[test]
    fn selector_is_kube_proxys() {
        assert_eq!(
            PROXY_LABEL_SELECTOR,
            format!("!{},!{}", crate::model::kubernetes::LABEL_SERVICE_PROXY_NAME, crate::model::kubernetes::LABEL_HEADLESS)
        );
    }

    #[tokio::test]
    async fn a_missing_kubeconfig_is_an_error_naming_it() {
        let err = client(Some(Path::new("/nonexistent/lb-kubeconfig"))).await.err().expect("no such file");
        assert!(err.to_string().contains("cannot load kubeconfig /nonexistent/lb-kubeconfig"), "{err}");
    }

    #[test]
    fn start_outside_a_runtime_is_an_error() {
        // A client needs a runtime to be built; start is checked from a runtime-less thread.
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let client = rt.block_on(async {
            let config = Config::new("http://127.0.0.1:1".parse().unwrap());
            Client::try_from(config).unwrap()
        });
        let started = futures::executor::block_on(KubeSource::start(client, "node-a"));
        assert!(matches!(started, Err(SourceKubeError::NoRuntime)));
    }
}
