//! The kube-rs source (`lb agent --source kube`): Services, EndpointSlices and this node's Node
//! list/watched from the API server into caches of our own ([`Cache`]): each kind's objects
//! sorted by namespace and name, kept so by the watch events themselves, so that a snapshot
//! shares the lists instead of copying and sorting every object at every sync.
//!
//! - Services and EndpointSlices are watched with kube-proxy's server-side label selector
//!   [`PROXY_LABEL_SELECTOR`] (semantics point 4), so adding `service.kubernetes.io/service-proxy-name`
//!   or `service.kubernetes.io/headless` at runtime removes the objects from the stores (the API
//!   server turns the label change into a `DELETED` event) and removing it brings them back.
//! - The Node is watched with `fieldSelector=metadata.name=<node>` (only with a node name).
//! - Every watcher restarts by itself with kube's default backoff (0.8 s doubling to 30 s, with
//!   jitter): a lost connection resumes from the last resourceVersion, a 410 relists, and a relist
//!   replaces a cache atomically once complete. Errors are logged, never returned: while the API
//!   server is away the caches keep the last state and the datapath keeps serving it.
//! - Objects are reduced before they are stored ([`Keep`]): managedFields, annotations other
//!   than lb's and a Node's status beyond its addresses never reach the caches, and an
//!   EndpointSlice's endpoints are kept as compact records ([`crate::model::slice::Slice`]).

use std::{
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use futures::StreamExt as _;
use k8s_openapi::{
    api::{
        core::v1::{Node, Service},
        discovery::v1::EndpointSlice,
    },
    apimachinery::pkg::apis::meta::v1::ObjectMeta,
};
use kube::{
    Api, Client, Config,
    config::{InferConfigError, KubeConfigOptions, Kubeconfig, KubeconfigError},
    runtime::{WatchStreamExt as _, watcher},
};
use tokio::{sync::watch, task::JoinHandle};
use tracing::{debug, error, info, warn};

use super::{
    ClusterObjects, SharedList,
    keep::{Keep, Named},
};
use crate::model::changes::{Change, Changes, ObjectChanges};

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

/// Caches of the objects the agent consumes, kept up to date by background tasks (stopped when
/// this is dropped).
pub struct KubeSource {
    services: Watched<Service>,
    slices: Watched<EndpointSlice>,
    nodes: Option<Watched<Node>>,
    changes: watch::Receiver<u64>,
    /// Watch events (added, modified, deleted) of Services and of EndpointSlices since start.
    service_events: Arc<AtomicU64>,
    slice_events: Arc<AtomicU64>,
    tasks: Vec<JoinHandle<()>>,
    /// When [`KubeSource::changed`] last resolved.
    last_wake: Option<tokio::time::Instant>,
}

/// One kind's cache, shared with its watch task, and whether its first list is in.
struct Watched<K: Keep> {
    cache: Arc<std::sync::Mutex<Cache<K>>>,
    ready: watch::Receiver<bool>,
}

impl<K: Keep> Watched<K> {
    fn objects(&self) -> SharedList<K::Kept> {
        lock(&self.cache).objects.clone()
    }

    /// The objects and the change log that ends at them (one lock: they agree).
    fn logged(&self) -> (SharedList<K::Kept>, Changes<K::Kept>) {
        let cache = lock(&self.cache);
        (cache.objects.clone(), cache.changes())
    }

    fn listed(&self) -> bool {
        *self.ready.borrow()
    }

    /// The complete list once the first one is in; until then, the objects of the first list
    /// received so far, in the API server's order (namespace, name).
    fn listed_so_far(&self) -> SharedList<K::Kept> {
        let cache = lock(&self.cache);
        if self.listed() { cache.objects.clone() } else { cache.listing.clone().into() }
    }
}

/// Objects per page of a list. Each page is parsed whole into k8s-openapi objects before the
/// cache keeps what it needs of them, so the page is a transient peak on top of everything
/// kept: 500 (kube's default) EndpointSlices of 10 endpoints were about 10 MB, a tenth of the
/// agent's heap at 10,000 Services. A page of 100 costs one more request per 100 objects.
const LIST_PAGE: u32 = 100;

impl KubeSource {
    /// Starts reflectors for Services and EndpointSlices (with [`PROXY_LABEL_SELECTOR`]) and,
    /// when `node_name` is not empty, for this node's Node. Does no I/O itself: it succeeds
    /// while the API server is unreachable, and the reflectors keep retrying.
    pub async fn start(client: Client, node_name: &str) -> Result<Self, SourceKubeError> {
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| SourceKubeError::NoRuntime)?;
        let (tx, changes) = watch::channel(0u64);
        let tx = Arc::new(tx);
        let mut tasks = Vec::new();
        let selected = watcher::Config::default().labels(PROXY_LABEL_SELECTOR).page_size(LIST_PAGE);
        let (service_events, slice_events) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let services = spawn_watch(
            &runtime,
            Api::<Service>::all(client.clone()),
            selected.clone(),
            ("services", &tx, Some(service_events.clone())),
            &mut tasks,
        );
        let slices = spawn_watch(
            &runtime,
            Api::<EndpointSlice>::all(client.clone()),
            selected,
            ("endpointslices", &tx, Some(slice_events.clone())),
            &mut tasks,
        );
        let nodes = (!node_name.is_empty()).then(|| {
            spawn_watch(
                &runtime,
                Api::<Node>::all(client),
                watcher::Config::default().fields(&format!("metadata.name={node_name}")),
                ("nodes", &tx, None),
                &mut tasks,
            )
        });
        Ok(Self { services, slices, nodes, changes, service_events, slice_events, tasks, last_wake: None })
    }

    /// Watch events of Services and of EndpointSlices since start (kube-proxy's change
    /// counters).
    pub fn change_counts(&self) -> (u64, u64) {
        (self.service_events.load(Ordering::Relaxed), self.slice_events.load(Ordering::Relaxed))
    }

    /// Resolves once every reflector has completed its initial list (point 7: never program
    /// before that). Never resolves if a reflector task died before that.
    pub async fn wait_ready(&self) {
        let mut ready = vec![self.services.ready.clone(), self.slices.ready.clone()];
        ready.extend(self.nodes.as_ref().map(|n| n.ready.clone()));
        for mut r in ready {
            if r.wait_for(|listed| *listed).await.is_err() {
                error!(
                    "a watch task stopped before its initial list: restart the agent; until then nothing is programmed from the API server"
                );
                std::future::pending::<()>().await;
            }
        }
    }

    /// The current objects, sorted by namespace and name, as the file source returns them.
    /// The lists are shared with the caches (the next change to a cache copies its list only
    /// if this snapshot is still held then).
    pub fn snapshot(&self) -> ClusterObjects {
        let (services, service_changes) = self.services.logged();
        let (slices, slice_changes) = self.slices.logged();
        ClusterObjects {
            services,
            slices,
            nodes: self.nodes.as_ref().map(Watched::objects).unwrap_or_default(),
            changes: Some(ObjectChanges { services: service_changes, slices: slice_changes }),
        }
    }

    /// While the initial lists stream in: the Services and EndpointSlices received so far (no
    /// change log), once this node's Node is in; `None` before. Point 7: nothing may be
    /// programmed from it; the agent plans ahead with it. (Both lists arrive in name order, at
    /// about the same pace: waiting for the whole Service list left the planning ahead half the
    /// streaming time.)
    pub fn partial_snapshot(&self) -> Option<ClusterObjects> {
        if self.nodes.as_ref().is_some_and(|n| !n.listed()) {
            return None;
        }
        Some(ClusterObjects {
            services: self.services.listed_so_far(),
            slices: self.slices.listed_so_far(),
            nodes: self.nodes.as_ref().map(Watched::objects).unwrap_or_default(),
            changes: None,
        })
    }

    /// Resolves when any cache changed since the last call: at once after a quiet period, else
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

/// One kind's objects as the watch events left them, sorted by namespace and name, and their
/// last changes.
struct Cache<K: Keep> {
    objects: SharedList<K::Kept>,
    /// The objects of a list in progress: a (re)list replaces `objects` once complete, so a
    /// snapshot never sees half a list.
    listing: Vec<Arc<K::Kept>>,
    /// This list's epoch (a new one at each complete list) and version (one per change since).
    epoch: u64,
    version: u64,
    /// The last [`CHANGE_LOG_MAX`] changes, ending at `version`.
    log: std::collections::VecDeque<Change<K::Kept>>,
}

/// Changes a cache remembers: a sync further behind finds the changed objects by walking
/// every object instead.
const CHANGE_LOG_MAX: usize = 1024;

/// Epochs of every cache of this process, so that no two lists share one.
static EPOCHS: AtomicU64 = AtomicU64::new(1);

impl<K: Keep> Default for Cache<K> {
    fn default() -> Self {
        Self {
            objects: SharedList::default(),
            listing: Vec::new(),
            epoch: EPOCHS.fetch_add(1, Ordering::Relaxed),
            version: 0,
            log: Default::default(),
        }
    }
}

impl<K: Keep> Cache<K> {
    fn changes(&self) -> Changes<K::Kept> {
        Changes {
            epoch: self.epoch,
            from: self.version - self.log.len() as u64,
            version: self.version,
            entries: self.log.iter().cloned().collect(),
        }
    }

    fn logged(&mut self, change: Change<K::Kept>) {
        if self.log.len() == CHANGE_LOG_MAX {
            self.log.pop_front();
        }
        self.log.push_back(change);
        self.version += 1;
    }
}

impl<K: Keep> Cache<K> {
    /// Applies one watch event; true when the objects changed (an event of a list in progress
    /// changes nothing until the list is complete).
    fn apply(&mut self, event: watcher::Event<K>) -> bool {
        match event {
            watcher::Event::Init => {
                self.listing.clear();
                false
            }
            watcher::Event::InitApply(o) => {
                self.listing.push(Arc::new(o.keep()));
                false
            }
            watcher::Event::InitDone => {
                let mut listed = std::mem::take(&mut self.listing);
                listed.sort_by(|a, b| by_name(&**a, &**b));
                // One object per name, as the API server lists them; the last one wins.
                listed.dedup_by(|later, earlier| {
                    let same = by_name(&**later, &**earlier).is_eq();
                    if same {
                        std::mem::swap(later, earlier);
                    }
                    same
                });
                self.objects = listed.into();
                self.epoch = EPOCHS.fetch_add(1, Ordering::Relaxed);
                self.version = 0;
                self.log.clear();
                true
            }
            watcher::Event::Apply(o) => {
                let o = Arc::new(o.keep());
                let list = &mut *self.objects;
                let before = match list.binary_search_by(|x| by_name(&**x, &*o)) {
                    Ok(at) => Some(std::mem::replace(&mut list[at], o.clone())),
                    Err(at) => {
                        list.insert(at, o.clone());
                        None
                    }
                };
                self.logged((before, Some(o)));
                true
            }
            watcher::Event::Delete(o) => {
                let Ok(at) = self.objects.binary_search_by(|x| by_meta(x.meta(), o.meta())) else {
                    return false;
                };
                let before = self.objects.remove(at);
                self.logged((Some(before), None));
                true
            }
        }
    }
}

fn by_name<K: Named>(a: &K, b: &K) -> std::cmp::Ordering {
    by_meta(a.meta(), b.meta())
}

fn by_meta(a: &ObjectMeta, b: &ObjectMeta) -> std::cmp::Ordering {
    (a.namespace.as_deref(), a.name.as_deref()).cmp(&(b.namespace.as_deref(), b.name.as_deref()))
}

/// Spawns `watcher → backoff → keep → cache` for one resource, bumping `changes` whenever the
/// cache changes and `events` (if any) at every watch event after the initial list. Returns
/// the cache and its readiness (true once the first list is in).
fn spawn_watch<K>(
    runtime: &tokio::runtime::Handle,
    api: Api<K>,
    config: watcher::Config,
    (resource, changes, events): (&'static str, &Arc<watch::Sender<u64>>, Option<Arc<AtomicU64>>),
    tasks: &mut Vec<JoinHandle<()>>,
) -> Watched<K>
where
    K: Keep,
{
    let cache = Arc::new(std::sync::Mutex::new(Cache::default()));
    let (ready_tx, ready) = watch::channel(false);
    let stream = watcher(api, config).default_backoff();
    let changes = changes.clone();
    let writer = Arc::clone(&cache);
    tasks.push(runtime.spawn(async move {
        let mut stream = std::pin::pin!(stream);
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
            let kind = match &event {
                watcher::Event::Init | watcher::Event::InitApply(_) => None,
                watcher::Event::InitDone => Some(true),
                watcher::Event::Apply(_) | watcher::Event::Delete(_) => Some(false),
            };
            let changed = lock(&writer).apply(event);
            match kind {
                None => continue,
                Some(true) => {
                    if !*ready_tx.borrow() {
                        info!(resource, "initial list received");
                        ready_tx.send_replace(true);
                    } else {
                        debug!(resource, "relisted");
                    }
                }
                Some(false) => {
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
            if changed {
                changes.send_modify(|n| *n = n.wrapping_add(1));
            }
        }
    }));
    Watched { cache, ready }
}

#[cfg(test)]
mod tests {

    /// The watch events keep each cache sorted as a full sort would; a relist replaces it only
    /// once complete; a snapshot taken before a change keeps what it saw.
    #[test]
    fn a_cache_follows_watch_events_in_name_order_and_snapshots_keep_what_they_saw() {
        use watcher::Event;
        let svc = |ns: &str, name: &str, ip: &str| -> Service {
            serde_json::from_value(serde_json::json!({
                "metadata": { "name": name, "namespace": ns }, "spec": { "clusterIP": ip },
            }))
            .unwrap()
        };
        let names = |v: &[Arc<Service>]| -> Vec<String> {
            v.iter()
                .map(|s| format!("{}/{}", s.metadata.namespace.as_deref().unwrap(), s.metadata.name.as_deref().unwrap()))
                .collect()
        };
        let ns = |i: i32| if i % 2 == 0 { "a" } else { "b" };
        let mut cache = Cache::<Service>::default();
        assert!(!cache.apply(Event::Init));
        for i in (0..300).rev() {
            assert!(!cache.apply(Event::InitApply(svc(ns(i), &format!("s{i}"), "10.96.0.1"))));
        }
        assert!(cache.objects.is_empty(), "a list in progress is not visible");
        assert!(cache.apply(Event::InitDone));
        let mut expected: Vec<String> = (0..300).map(|i| format!("{}/s{i}", ns(i))).collect();
        expected.sort();
        assert_eq!(names(&cache.objects), expected);

        let before = cache.objects.clone();
        assert!(cache.apply(Event::Apply(svc("a", "s288", "10.96.0.2"))));
        assert!(cache.apply(Event::Delete(svc("a", "s20", ""))));
        assert!(cache.apply(Event::Apply(svc("a", "new-1", "10.96.0.3"))));
        assert!(cache.apply(Event::Apply(svc("c", "new-2", "10.96.0.4"))));
        expected.retain(|n| n != "a/s20");
        expected.extend(["a/new-1".to_owned(), "c/new-2".to_owned()]);
        expected.sort();
        assert_eq!(names(&cache.objects), expected);
        let ip = |v: &[Arc<Service>], name: &str| {
            v.iter().find(|s| s.metadata.name.as_deref() == Some(name)).and_then(|s| s.spec.as_ref()?.cluster_ip.clone())
        };
        assert_eq!(ip(&cache.objects, "s288").as_deref(), Some("10.96.0.2"), "the new version");
        assert_eq!(ip(&before, "s288").as_deref(), Some("10.96.0.1"), "the snapshot keeps the old one");
        assert_eq!(before.len(), 300);

        // A relist: the old objects stay visible until it is complete, then only the listed ones.
        cache.apply(Event::Init);
        cache.apply(Event::InitApply(svc("z", "only", "10.96.0.9")));
        assert_eq!(cache.objects.len(), 301);
        cache.apply(Event::InitDone);
        assert_eq!(names(&cache.objects), ["z/only"]);
    }

    /// A memo fed from the caches' change logs compiles, after any sequence of watch events
    /// and whichever snapshots it skips, exactly what compile_all gives for the same lists, and
    /// reads most syncs' changes from the logs.
    #[test]
    fn the_memo_fed_from_change_logs_gives_what_compile_all_gives() {
        use watcher::Event;

        use crate::compile::{compile_all, memo::CompileMemo};
        let service = |name: &str, port: i32| -> Service {
            serde_json::from_value(serde_json::json!({
                "metadata": { "name": name, "namespace": "ns" },
                "spec": { "clusterIP": format!("10.96.0.{}", name[1..].parse::<u32>().unwrap() + 1),
                          "ports": [{ "name": "http", "port": port, "targetPort": 8080 }] },
            }))
            .unwrap()
        };
        let slice = |name: &str, svc: &str, ep: u32| -> EndpointSlice {
            serde_json::from_value(serde_json::json!({
                "metadata": { "name": name, "namespace": "ns", "labels": { "kubernetes.io/service-name": svc } },
                "addressType": "IPv4",
                "ports": [{ "name": "http", "port": 8080, "protocol": "TCP" }],
                "endpoints": [{ "addresses": [format!("10.244.{}.{}", ep / 200, ep % 200 + 1)], "conditions": { "ready": true } }],
            }))
            .unwrap()
        };
        let node = crate::model::NodeContext {
            name: "n1".into(),
            addresses: vec!["192.168.0.10".parse().unwrap()],
            ..Default::default()
        };
        let mut rng = 0x2545_f491_4f6c_dd1du64;
        let mut next = move |n: u64| {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng % n
        };
        let (mut services, mut slices) = (Cache::<Service>::default(), Cache::<EndpointSlice>::default());
        // What the API server holds, for the relists.
        let mut held: std::collections::BTreeMap<String, EndpointSlice> = Default::default();
        services.apply(Event::Init);
        slices.apply(Event::Init);
        for i in 0..30 {
            services.apply(Event::InitApply(service(&format!("s{i}"), 80)));
            let s = slice(&format!("s{i}-a"), &format!("s{i}"), i);
            held.insert(format!("s{i}-a"), s.clone());
            slices.apply(Event::InitApply(s));
        }
        services.apply(Event::InitDone);
        slices.apply(Event::InitDone);
        let mut memo = CompileMemo::default();
        let mut compiled = 0;
        for step in 0..600 {
            let svc = format!("s{}", next(40));
            let name = format!("{svc}-{}", ["a", "b", "c"][next(3) as usize]);
            match next(20) {
                0..=7 => {
                    let s = slice(&name, &svc, next(5000) as u32);
                    held.insert(name, s.clone());
                    slices.apply(Event::Apply(s));
                }
                8..=9 => {
                    held.remove(&name);
                    slices.apply(Event::Delete(slice(&name, &svc, 0)));
                }
                // A slice whose label moves to another Service.
                10 => {
                    let name = format!("s{}-a", next(40));
                    let s = slice(&name, &svc, next(5000) as u32);
                    held.insert(name, s.clone());
                    slices.apply(Event::Apply(s));
                }
                11..=13 => drop(services.apply(Event::Apply(service(&svc, 80 + next(3) as i32)))),
                14..=15 => drop(services.apply(Event::Delete(service(&svc, 80)))),
                16 if step % 97 == 0 => {
                    // A relist of the slices: a new epoch.
                    slices.apply(Event::Init);
                    for s in held.values() {
                        slices.apply(Event::InitApply(s.clone()));
                    }
                    slices.apply(Event::InitDone);
                }
                _ => {}
            }
            // Syncs see some of the versions only.
            if next(3) == 0 {
                continue;
            }
            let changes = ObjectChanges { services: services.changes(), slices: slices.changes() };
            let (svc_list, slice_list) = (services.objects.clone(), slices.objects.clone());
            let out = memo.compile_logged(&svc_list, &slice_list, Some(&changes), &node);
            let got = (out.desired.clone(), out.health_checks.clone());
            assert_eq!(got, compile_all(&svc_list, &slice_list, &node), "step {step}");
            compiled += 1;
        }
        assert!(memo.logged_calls() > compiled / 2, "{} of {compiled} calls read the logs", memo.logged_calls());
    }

    use super::*;

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
