//! An in-process Kubernetes API server for tests: real list/watch over HTTP/1.1, on std threads,
//! following the Kubernetes API conventions (lists, watches, resourceVersions) so that the real kube-rs client and
//! `kube_runtime::watcher` can be pointed at it.
//!
//! What it serves (GET, and POST of Events only: what the agent writes; the objects it reads are
//! written with [`ApiServer::apply`] and [`ApiServer::delete`], not over HTTP):
//! - core/v1 `services` and discovery.k8s.io/v1 `endpointslices`, all-namespaces and namespaced,
//!   collections and single objects; core/v1 `nodes` (cluster-scoped);
//! - lists with `kind`/`apiVersion`/`metadata.resourceVersion`, `limit`/`continue` paging over a
//!   consistent snapshot (an unknown continue token is a 410 `Expired`), `resourceVersion` +
//!   `resourceVersionMatch` (`Exact` is rebuilt from the retained history);
//! - watches (`watch=true|1`): HTTP 200, chunked, one JSON event per line flushed per event;
//!   `resourceVersion` unset/`0` = synthetic `ADDED` then changes, `N` = every change after `N`;
//!   too old `N` = a single `ERROR` event carrying a `Status` with code 410 inside the 200 stream;
//!   `timeoutSeconds` ends the stream cleanly; `allowWatchBookmarks` adds periodic `BOOKMARK`s;
//!   `sendInitialEvents` streaming lists end their initial events with the
//!   `k8s.io/initial-events-end` bookmark;
//! - `labelSelector` (`=`, `==`, `!=`, `in`, `notin`, `k`, `!k`, comma = AND) and `fieldSelector`
//!   (`metadata.name`, `metadata.namespace`, a few per-kind fields; `=`, `==`, `!=`) with the
//!   watch cache's transition semantics: an update that makes an object start matching is `ADDED`,
//!   stop matching is `DELETED` (previous content, the new resourceVersion);
//! - one global, strictly increasing resourceVersion shared by every kind;
//! - API defaulting of Services and EndpointSlices (§3.2/§3.3: type, sessionAffinity,
//!   ClusterIP and NodePort allocation, protocols, targetPort, ipFamilies, ...);
//! - events.k8s.io/v1 `events`: created by `POST` to a namespaced collection (201 with the stored
//!   object, 409 `AlreadyExists` for a taken name), listed and watched like the others, read by
//!   tests with [`ApiServer::list`];
//! - discovery documents (`/version`, `/api`, `/api/v1`, `/apis`, `/apis/discovery.k8s.io[/v1]`)
//!   and `/healthz`, `/livez`, `/readyz`.
//!
//! Fault injection: [`ApiServer::compact`] (forget history: old resourceVersions get 410),
//! [`ApiServer::close_watches`], [`ApiServer::fail_next_lists`], and [`ApiServer::stop`] /
//! [`ApiServer::restart`] (the server vanishes, every connection is cut, then it listens again
//! on the same port with the same objects). Dropping the server stops every thread and closes the
//! port.
//!
//! The parts, each on top of the ones before it: `kinds` (the resource types), `selectors`,
//! `defaults` (API defaulting), `store` (objects, resourceVersions, history, paged-list
//! snapshots), `shared` (what the threads share), `query` and `status` (request parameters and
//! error objects), `list`, `watch`, `discovery`, `http` (the server itself), and this module's
//! [`ApiServer`], the handle tests hold.

mod defaults;
mod discovery;
mod http;
mod kinds;
mod list;
mod query;
mod selectors;
mod shared;
mod status;
mod store;
mod watch;

#[cfg(test)]
mod client;

use std::{
    net::{Shutdown, SocketAddr, TcpListener},
    path::Path,
    sync::{Arc, atomic::Ordering},
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use serde_json::{Value, json};

pub use self::shared::Stats;
use self::{
    kinds::kind_info,
    shared::{Shared, lock},
};

/// The test API server. See the module documentation.
pub struct ApiServer {
    shared: Arc<Shared>,
    addr: SocketAddr,
    accept: Option<JoinHandle<()>>,
}

impl ApiServer {
    /// Starts serving on `127.0.0.1:<free port>`.
    pub fn start() -> anyhow::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").context("binding the test API server")?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared::new(addr.port()));
        let mut server = Self { shared, addr, accept: None };
        server.spawn_acceptor(listener)?;
        Ok(server)
    }

    fn spawn_acceptor(&mut self, listener: TcpListener) -> anyhow::Result<()> {
        listener.set_nonblocking(true)?;
        let shared = self.shared.clone();
        let generation = shared.generation.load(Ordering::SeqCst);
        self.accept = Some(
            std::thread::Builder::new()
                .name("apiserver-accept".into())
                .spawn(move || http::accept_loop(&shared, &listener, generation))?,
        );
        Ok(())
    }

    /// `http://127.0.0.1:PORT`
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Writes a kubeconfig (plain http, no credentials) whose current context points here.
    pub fn kubeconfig(&self, path: &Path) -> anyhow::Result<()> {
        // JSON is YAML: kube's kubeconfig loader reads it as is.
        let config = json!({
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "lb-test", "cluster": {"server": self.url()}}],
            "users": [{"name": "lb-test", "user": {}}],
            "contexts": [{"name": "lb-test", "context": {"cluster": "lb-test", "user": "lb-test", "namespace": "default"}}],
            "current-context": "lb-test",
        });
        std::fs::write(path, serde_json::to_string_pretty(&config)?).with_context(|| format!("writing {}", path.display()))
    }

    /// Creates or replaces an object (by kind, namespace, name), with the API server's
    /// defaulting. Emits `ADDED` or `MODIFIED`; an update that changes nothing is a no-op, as on
    /// a real server. Returns the object's resourceVersion.
    pub fn apply(&self, object: Value) -> anyhow::Result<u64> {
        self.write(object, true)
    }

    /// [`apply`](Self::apply) without defaulting (only metadata is stamped): for shapes a test
    /// wants served verbatim.
    pub fn apply_raw(&self, object: Value) -> anyhow::Result<u64> {
        self.write(object, false)
    }

    fn write(&self, object: Value, defaulting: bool) -> anyhow::Result<u64> {
        let rv = lock(&self.shared.store).apply(object, defaulting)?;
        self.shared.cond.notify_all();
        Ok(rv)
    }

    /// Deletes an object (`namespace` is ignored for cluster-scoped kinds). Emits `DELETED`
    /// carrying the last state with the deletion resourceVersion, which is returned.
    pub fn delete(&self, kind: &str, namespace: &str, name: &str) -> anyhow::Result<u64> {
        let rv = lock(&self.shared.store).delete(kind, namespace, name)?;
        self.shared.cond.notify_all();
        Ok(rv)
    }

    /// The stored object, if any.
    pub fn get(&self, kind: &str, namespace: &str, name: &str) -> Option<Value> {
        let info = kind_info(kind)?;
        lock(&self.shared.store).get(info, namespace, name).cloned()
    }

    /// Every stored object of `kind` (e.g. the `"Event"`s the agent created), in key order.
    pub fn list(&self, kind: &str) -> Vec<Value> {
        let Some(info) = kind_info(kind) else { return Vec::new() };
        let everything = selectors::Filter::new(info, None, None, None).expect("an empty filter parses");
        lock(&self.shared.store).objects_of(info.kind, &everything).cloned().collect()
    }

    /// The current (latest) resourceVersion.
    pub fn resource_version(&self) -> u64 {
        lock(&self.shared.store).rv
    }

    /// Forgets the history, like an etcd compaction after an unrelated write: the
    /// resourceVersion advances by one, every open watch ends cleanly, and a watch (or exact
    /// list) from any older resourceVersion gets 410 `Expired`, so clients must relist.
    /// Pending `continue` tokens expire too.
    pub fn compact(&self) {
        lock(&self.shared.store).compact();
        self.shared.cond.notify_all();
    }

    /// Ends every open watch cleanly (as `timeoutSeconds` would); clients re-watch from their
    /// last resourceVersion.
    pub fn close_watches(&self) {
        lock(&self.shared.store).watch_epoch += 1;
        self.shared.cond.notify_all();
    }

    /// The next `n` list requests fail with HTTP 500.
    pub fn fail_next_lists(&self, n: u32) {
        lock(&self.shared.store).fail_lists = n;
    }

    /// How often watches with `allowWatchBookmarks=true` get a `BOOKMARK` (default 1 s).
    pub fn set_bookmark_interval(&self, interval: Duration) {
        lock(&self.shared.store).bookmark_interval = interval;
        self.shared.cond.notify_all();
    }

    /// How many changes are kept for watches (default 10 000); older resourceVersions get 410.
    pub fn set_history_limit(&self, limit: usize) {
        lock(&self.shared.store).set_history_limit(limit);
    }

    pub fn stats(&self) -> Stats {
        lock(&self.shared.stats).clone()
    }

    /// Number of HTTP requests received so far.
    pub fn request_count(&self) -> u64 {
        self.stats().requests
    }

    /// The last requests received (`GET /api/v1/services?...`), oldest first.
    pub fn requests(&self) -> Vec<String> {
        lock(&self.shared.log).iter().cloned().collect()
    }

    /// What the clients did, as RBAC names it: `(apiGroup, resource, verb)` for every request
    /// to a resource (`list`, `watch`, `get`, `create`); discovery and health requests are not
    /// authorized by RBAC rules and are left out.
    pub fn verbs_used(&self) -> std::collections::BTreeSet<(String, String, String)> {
        let log = lock(&self.shared.log).iter().cloned().collect::<Vec<_>>();
        log.iter()
            .filter_map(|line| {
                let (method, target) = line.split_once(' ')?;
                let (path, query) = target.split_once('?').unwrap_or((target, ""));
                let (info, object) = match http::route(path, self.addr.port()) {
                    http::Route::Collection { info, .. } => (info, false),
                    http::Route::Object { info, .. } => (info, true),
                    _ => return None,
                };
                let watch = query.split('&').any(|kv| kv == "watch=true" || kv == "watch=1");
                let verb = match (method, object, watch) {
                    ("POST", _, _) => "create",
                    (_, _, true) => "watch",
                    (_, true, _) => "get",
                    _ => "list",
                };
                let group = info.api_version.rsplit_once('/').map_or("", |(g, _)| g);
                Some((group.to_owned(), info.plural.to_owned(), verb.to_owned()))
            })
            .collect()
    }

    /// Waits until `pred` holds for the stats, polling every 10 ms.
    pub fn wait_for(&self, timeout: Duration, pred: impl Fn(&Stats) -> bool) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if pred(&self.stats()) {
                return true;
            }
            if Instant::now() > deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn is_running(&self) -> bool {
        self.accept.is_some()
    }

    /// The server vanishes: the listener is closed (connections are refused) and every open
    /// connection, watches included, is cut. Objects and history are kept. Idempotent.
    pub fn stop(&mut self) {
        let Some(accept) = self.accept.take() else {
            return;
        };
        self.shared.generation.fetch_add(1, Ordering::SeqCst);
        let _ = accept.join(); // the listener is closed when the thread returns
        for (_, conn) in lock(&self.shared.conns).drain() {
            let _ = conn.shutdown(Shutdown::Both);
        }
        {
            let _store = lock(&self.shared.store);
            self.shared.cond.notify_all();
        }
        let threads = std::mem::take(&mut *lock(&self.shared.threads));
        for t in threads {
            let _ = t.join();
        }
        lock(&self.shared.stats).open_watches = 0;
    }

    /// Listens again on the same address after [`stop`](Self::stop).
    pub fn restart(&mut self) -> anyhow::Result<()> {
        if self.accept.is_some() {
            return Ok(());
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        let listener = loop {
            match TcpListener::bind(self.addr) {
                Ok(l) => break l,
                Err(e) if Instant::now() < deadline => {
                    let _ = e;
                    std::thread::sleep(Duration::from_millis(50));
                }
                Err(e) => {
                    return Err(e).with_context(|| format!("listening again on {}", self.addr));
                }
            }
        };
        self.spawn_acceptor(listener)
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        self.stop();
    }
}

#[cfg(test)]
mod tests {
    use std::{io::Read as _, net::TcpStream};

    use super::*;
    use crate::apiserver::client::{Conn, rv, svc};

    #[test]
    fn stop_cuts_connections_and_restart_listens_on_the_same_port() {
        let mut server = ApiServer::start().unwrap();
        let rv1 = server.apply(svc("a", json!({}))).unwrap();
        let addr = server.addr();
        let (mut w, _, _) = Conn::get(&server, &format!("/api/v1/services?watch=true&resourceVersion={rv1}"));
        assert!(server.wait_for(Duration::from_secs(5), |s| s.open_watches == 1));
        server.stop();
        assert!(!server.is_running());
        // The stream is cut without the terminating chunk.
        let mut rest = Vec::new();
        let _ = w.reader.read_to_end(&mut rest);
        assert!(!rest.ends_with(b"0\r\n\r\n"), "{rest:?}");
        assert!(TcpStream::connect(addr).is_err(), "connections are refused while stopped");
        let rv2 = server.apply(svc("b", json!({}))).unwrap();
        server.restart().unwrap();
        assert_eq!(server.addr(), addr);
        let (mut w, _, _) = Conn::get(&server, &format!("/api/v1/services?watch=true&resourceVersion={rv1}"));
        assert_eq!(rv(&w.change()["object"]), rv2, "state and history survive");
        let before = server.request_count();
        let (code, _) = Conn::json(&server, "/api/v1/services");
        assert_eq!(code, 200);
        assert_eq!(server.request_count(), before + 1);
        assert!(server.requests().last().unwrap().starts_with("GET /api/v1/services"));
    }

    #[test]
    fn kubeconfig_points_here() {
        let server = ApiServer::start().unwrap();
        let path = std::env::temp_dir().join(format!("lbt-{}-kubeconfig", crate::netns::unique_token()));
        server.kubeconfig(&path).unwrap();
        let v: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        std::fs::remove_file(&path).unwrap();
        assert_eq!(v["clusters"][0]["cluster"]["server"], server.url());
        assert_eq!(v["current-context"], "lb-test");
    }
}
