//! An in-process Kubernetes API server for tests: real list/watch over HTTP/1.1, on std threads,
//! following `k8s-service-semantics.md` §3 so that the real kube-rs client and
//! `kube_runtime::watcher` can be pointed at it.
//!
//! What it serves (GET only; objects are written with [`ApiServer::apply`] and
//! [`ApiServer::delete`], not over HTTP):
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
//! - discovery documents (`/version`, `/api`, `/api/v1`, `/apis`, `/apis/discovery.k8s.io[/v1]`)
//!   and `/healthz`, `/livez`, `/readyz`.
//!
//! Fault injection: [`ApiServer::compact`] (forget history: old resourceVersions get 410),
//! [`ApiServer::close_watches`], [`ApiServer::fail_next_lists`], and [`ApiServer::stop`] /
//! [`ApiServer::restart`] (the server vanishes, every connection is cut, then it listens again
//! on the same port with the same objects). Dropping the server stops every thread and closes the
//! port.

mod defaults;
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
    io::{self, BufRead as _, BufReader, Read as _, Write as _},
    net::{Shutdown, SocketAddr, TcpListener, TcpStream},
    os::fd::AsRawFd as _,
    path::Path,
    sync::{Arc, atomic::Ordering},
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use serde_json::{Value, json};

pub use self::shared::Stats;
use self::{
    kinds::{KINDS, KindInfo, kind_info},
    list::list,
    query::Query,
    selectors::Filter,
    shared::{Shared, lock},
    status::status,
    watch::{Next, Watch},
};

/// Requests remembered by [`ApiServer::requests`].
const MAX_REQUEST_LOG: usize = 10_000;

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
                .spawn(move || accept_loop(&shared, &listener, generation))?,
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

// ------------------------------------------------------------------------------------------
// HTTP

#[derive(Debug)]
struct Request {
    method: String,
    path: String,
    query: String,
    close: bool,
}

fn read_request(r: &mut BufReader<TcpStream>) -> io::Result<Option<Request>> {
    let mut line = String::new();
    loop {
        line.clear();
        if r.read_line(&mut line)? == 0 {
            return Ok(None);
        }
        if !line.trim().is_empty() {
            break;
        }
    }
    let mut parts = line.split_whitespace();
    let (Some(method), Some(target)) = (parts.next(), parts.next()) else {
        return Ok(None);
    };
    let (method, target) = (method.to_owned(), target.to_owned());
    let mut close = parts.next() == Some("HTTP/1.0");
    let mut content_length = 0u64;
    for _ in 0..200 {
        let mut h = String::new();
        if r.read_line(&mut h)? == 0 {
            return Ok(None);
        }
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        if let Some((name, value)) = h.split_once(':') {
            let value = value.trim();
            match name.trim().to_ascii_lowercase().as_str() {
                "connection" => close = value.eq_ignore_ascii_case("close"),
                "content-length" => content_length = value.parse().unwrap_or(0),
                _ => {}
            }
        }
    }
    if content_length > 0 {
        io::copy(&mut r.by_ref().take(content_length), &mut io::sink())?;
    }
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p.to_owned(), q.to_owned()),
        None => (target, String::new()),
    };
    Ok(Some(Request { method, path, query, close }))
}

fn reason_phrase(code: u16) -> &'static str {
    match code {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        410 => "Gone",
        422 => "Unprocessable Entity",
        500 => "Internal Server Error",
        504 => "Gateway Timeout",
        _ => "Unknown",
    }
}

fn respond_bytes(out: &mut TcpStream, code: u16, content_type: &str, body: &[u8]) -> io::Result<()> {
    let mut msg = format!(
        "HTTP/1.1 {code} {}\r\nContent-Type: {content_type}\r\nCache-Control: no-cache, private\r\nContent-Length: {}\r\n\r\n",
        reason_phrase(code),
        body.len()
    )
    .into_bytes();
    msg.extend_from_slice(body);
    out.write_all(&msg)
}

fn respond(out: &mut TcpStream, code: u16, body: &Value) -> io::Result<()> {
    respond_bytes(out, code, "application/json", body.to_string().as_bytes())
}

fn respond_status(out: &mut TcpStream, code: u16, reason: &str, message: &str) -> io::Result<()> {
    respond(out, code, &status(code, reason, message))
}

/// One event per chunk, one line per event.
fn write_event(out: &mut TcpStream, event: &Value) -> io::Result<()> {
    let line = format!("{event}\n");
    let mut chunk = format!("{:x}\r\n", line.len()).into_bytes();
    chunk.extend_from_slice(line.as_bytes());
    chunk.extend_from_slice(b"\r\n");
    out.write_all(&chunk)
}

fn accept_loop(shared: &Arc<Shared>, listener: &TcpListener, generation: u64) {
    while shared.generation.load(Ordering::SeqCst) == generation {
        let mut pfd = libc::pollfd { fd: listener.as_raw_fd(), events: libc::POLLIN, revents: 0 };
        // SAFETY: one valid pollfd for the duration of the call.
        unsafe { libc::poll(&raw mut pfd, 1, 50) };
        let Ok((stream, _)) = listener.accept() else {
            continue;
        };
        if shared.generation.load(Ordering::SeqCst) != generation {
            break;
        }
        let _ = stream.set_nonblocking(false);
        let _ = stream.set_nodelay(true);
        let Ok(registered) = stream.try_clone() else {
            continue;
        };
        let id = shared.next_conn.fetch_add(1, Ordering::SeqCst);
        lock(&shared.conns).insert(id, registered);
        lock(&shared.stats).connections += 1;
        let sh = shared.clone();
        let spawned = std::thread::Builder::new().name(format!("apiserver-conn-{id}")).spawn(move || {
            let _ = serve_connection(&sh, stream, generation);
            lock(&sh.conns).remove(&id);
        });
        if let Ok(handle) = spawned {
            let mut threads = lock(&shared.threads);
            threads.retain(|t| !t.is_finished());
            threads.push(handle);
        }
    }
}

fn serve_connection(shared: &Shared, stream: TcpStream, generation: u64) -> io::Result<()> {
    let mut out = stream.try_clone()?;
    let mut reader = BufReader::new(stream);
    while let Some(req) = read_request(&mut reader)? {
        if shared.generation.load(Ordering::SeqCst) != generation {
            break;
        }
        {
            let mut log = lock(&shared.log);
            if log.len() >= MAX_REQUEST_LOG {
                log.pop_front();
            }
            let sep = if req.query.is_empty() { "" } else { "?" };
            log.push_back(format!("{} {}{sep}{}", req.method, req.path, req.query));
        }
        lock(&shared.stats).requests += 1;
        let keep = dispatch(shared, &mut out, &req, generation)?;
        if !keep || req.close {
            break;
        }
    }
    let _ = out.shutdown(Shutdown::Both);
    Ok(())
}

enum Route {
    Json(Value),
    Text(&'static str),
    Collection { info: &'static KindInfo, namespace: Option<String> },
    Object { info: &'static KindInfo, namespace: Option<String>, name: String },
    NotFound,
}

fn route(path: &str, port: u16) -> Route {
    let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    match segs.as_slice() {
        ["healthz" | "livez" | "readyz"] => return Route::Text("ok"),
        ["version"] => return Route::Json(version_info()),
        ["api"] => {
            return Route::Json(json!({
                "kind": "APIVersions", "versions": ["v1"],
                "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": format!("127.0.0.1:{port}")}],
            }));
        }
        ["apis"] => {
            return Route::Json(json!({
                "kind": "APIGroupList", "apiVersion": "v1",
                "groups": [api_group("discovery.k8s.io")],
            }));
        }
        ["apis", "discovery.k8s.io"] => {
            let mut g = api_group("discovery.k8s.io");
            g["kind"] = "APIGroup".into();
            g["apiVersion"] = "v1".into();
            return Route::Json(g);
        }
        ["api", "v1"] => return Route::Json(resource_list("v1")),
        ["apis", "discovery.k8s.io", "v1"] => {
            return Route::Json(resource_list("discovery.k8s.io/v1"));
        }
        _ => {}
    }
    for info in KINDS {
        let Some(rest) = segs.strip_prefix(info.group_path) else {
            continue;
        };
        match (rest, info.namespaced) {
            ([plural], _) if *plural == info.plural => {
                return Route::Collection { info, namespace: None };
            }
            ([plural, name], false) if *plural == info.plural => {
                return Route::Object { info, namespace: None, name: (*name).to_owned() };
            }
            (["namespaces", ns, plural], true) if *plural == info.plural => {
                return Route::Collection { info, namespace: Some((*ns).to_owned()) };
            }
            (["namespaces", ns, plural, name], true) if *plural == info.plural => {
                return Route::Object { info, namespace: Some((*ns).to_owned()), name: (*name).to_owned() };
            }
            _ => {}
        }
    }
    Route::NotFound
}

fn version_info() -> Value {
    json!({
        "major": "1", "minor": "34", "gitVersion": "v1.34.0-lb-test",
        "gitCommit": "0000000000000000000000000000000000000000", "gitTreeState": "clean",
        "buildDate": "2026-01-01T00:00:00Z", "goVersion": "go1.24.0", "compiler": "gc",
        "platform": "linux/amd64",
    })
}

fn api_group(name: &str) -> Value {
    let gv = json!({"groupVersion": format!("{name}/v1"), "version": "v1"});
    json!({"name": name, "versions": [gv.clone()], "preferredVersion": gv})
}

fn resource_list(group_version: &str) -> Value {
    let resources: Vec<Value> = KINDS
        .iter()
        .filter(|k| k.api_version == group_version)
        .map(|k| {
            json!({
                "name": k.plural, "singularName": k.singular, "namespaced": k.namespaced,
                "kind": k.kind, "verbs": ["get", "list", "watch"], "shortNames": k.short_names,
            })
        })
        .collect();
    json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": group_version, "resources": resources})
}

/// Serves one request. Returns whether the connection may be reused.
fn dispatch(shared: &Shared, out: &mut TcpStream, req: &Request, generation: u64) -> io::Result<bool> {
    if req.method != "GET" {
        respond_status(out, 405, "MethodNotAllowed", &format!("the test API server only serves GET, not {}", req.method))?;
        return Ok(true);
    }
    let q = match Query::parse(&req.query) {
        Ok(q) => q,
        Err(m) => {
            respond_status(out, 400, "BadRequest", &m)?;
            return Ok(true);
        }
    };
    match route(&req.path, shared.port) {
        Route::Json(v) => respond(out, 200, &v)?,
        Route::Text(t) => respond_bytes(out, 200, "text/plain; charset=utf-8", t.as_bytes())?,
        Route::NotFound => {
            respond_status(out, 404, "NotFound", &format!("the server could not find the requested resource ({})", req.path))?
        }
        Route::Object { info, namespace, name } => {
            let obj = lock(&shared.store).get(info, namespace.as_deref().unwrap_or_default(), &name).cloned();
            match obj {
                Some(o) => respond(out, 200, &o)?,
                None => {
                    let mut st = status(404, "NotFound", &format!("{} \"{name}\" not found", info.plural));
                    st["details"] = json!({"name": name, "kind": info.plural});
                    respond(out, 404, &st)?;
                }
            }
        }
        Route::Collection { info, namespace } => {
            let filter = match Filter::new(info, namespace, q.label_selector.as_deref(), q.field_selector.as_deref()) {
                Ok(filter) => filter,
                Err(m) => {
                    respond_status(out, 400, "BadRequest", &m)?;
                    return Ok(true);
                }
            };
            if q.watch {
                return stream_watch(shared, out, info, &filter, &q, generation);
            }
            let (code, body) = list(shared, info, &filter, &q);
            respond(out, code, &body)?;
        }
    }
    Ok(true)
}

/// Serves a watch request: a refusal is a plain response; otherwise a 200 whose chunked body
/// carries the events until the stream ends with the terminating chunk (the connection stays
/// usable) or is cut because the server stops. Returns whether the connection may be reused.
fn stream_watch(
    shared: &Shared,
    out: &mut TcpStream,
    info: &'static KindInfo,
    filter: &Filter,
    q: &Query,
    generation: u64,
) -> io::Result<bool> {
    let mut watch = match Watch::start(shared, info, filter, q, generation) {
        Ok(watch) => watch,
        Err((code, body)) => {
            respond(out, code, &body)?;
            return Ok(true);
        }
    };
    out.write_all(
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nCache-Control: no-cache, private\r\nTransfer-Encoding: chunked\r\n\r\n",
    )?;
    loop {
        match watch.next() {
            Next::Send(events) => {
                for e in &events {
                    write_event(out, e)?;
                }
            }
            Next::End(events) => {
                for e in &events {
                    write_event(out, e)?;
                }
                out.write_all(b"0\r\n\r\n")?;
                return Ok(true);
            }
            Next::Cut => {
                let _ = out.shutdown(Shutdown::Both);
                return Ok(false);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apiserver::client::{Conn, rv, svc};

    #[test]
    fn timeout_seconds_ends_the_stream_cleanly_and_the_connection_is_reused() {
        let server = ApiServer::start().unwrap();
        let started = Instant::now();
        let (mut w, _, _) = Conn::get(&server, "/api/v1/services?watch=true&timeoutSeconds=1");
        assert_eq!(w.event(), None);
        let took = started.elapsed();
        assert!(took >= Duration::from_millis(900) && took < Duration::from_secs(3), "{took:?}");
        let s = w.reader.get_mut();
        write!(s, "GET /api/v1/nodes HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
        let mut line = String::new();
        w.reader.read_line(&mut line).unwrap();
        assert!(line.starts_with("HTTP/1.1 200"), "{line}");
    }

    #[test]
    fn discovery_and_health_endpoints() {
        let server = ApiServer::start().unwrap();
        let (_, v) = Conn::json(&server, "/version");
        assert_eq!(v["major"], "1");
        let (_, api) = Conn::json(&server, "/api");
        assert_eq!(api["versions"], json!(["v1"]));
        let (_, r) = Conn::json(&server, "/api/v1");
        let names: Vec<_> = r["resources"].as_array().unwrap().iter().map(|r| r["name"].clone()).collect();
        assert_eq!(names, [json!("services"), json!("nodes")]);
        let (_, g) = Conn::json(&server, "/apis");
        assert_eq!(g["groups"][0]["name"], "discovery.k8s.io");
        let (_, code, _) = Conn::get(&server, "/healthz");
        assert_eq!(code, 200);
        let (code, _) = Conn::json(&server, "/api/v1/pods");
        assert_eq!(code, 404);
    }

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
