//! The HTTP/1.1 server: the accept loop and a thread per connection (keep-alive, registered so
//! that a stop can cut it, and logged and counted per request), request parsing, routing of
//! paths to health checks, discovery documents, objects and collections, JSON responses with a
//! `Content-Length`, and watch streams as chunked bodies with one JSON event per chunk and line.

use std::{
    io::{self, BufRead as _, BufReader, Read as _, Write as _},
    net::{Shutdown, TcpListener, TcpStream},
    os::fd::AsRawFd as _,
    sync::{Arc, atomic::Ordering},
};

use serde_json::{Value, json};

use super::{
    discovery,
    kinds::{KINDS, KindInfo},
    list::list,
    query::Query,
    selectors::Filter,
    shared::{Shared, lock},
    status::status,
    watch::{Next, Watch},
};

/// Requests remembered by [`ApiServer::requests`](super::ApiServer::requests).
const MAX_REQUEST_LOG: usize = 10_000;

#[derive(Debug)]
struct Request {
    method: String,
    path: String,
    query: String,
    close: bool,
    /// The request body (only creates have one).
    body: Vec<u8>,
}

/// The largest request body read (an Event is a few hundred bytes).
const MAX_BODY: u64 = 1 << 20;

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
    let mut body = Vec::new();
    if content_length > 0 {
        r.by_ref().take(content_length.min(MAX_BODY)).read_to_end(&mut body)?;
        io::copy(&mut r.by_ref().take(content_length.saturating_sub(MAX_BODY)), &mut io::sink())?;
    }
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p.to_owned(), q.to_owned()),
        None => (target, String::new()),
    };
    Ok(Some(Request { method, path, query, close, body }))
}

fn reason_phrase(code: u16) -> &'static str {
    match code {
        200 => "OK",
        201 => "Created",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        409 => "Conflict",
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

/// Accepts connections until the server's generation moves past `generation` (a stop); each
/// is served on its own thread, registered in `shared` so that the stop can cut and join it.
/// The listener closes when this returns.
pub(super) fn accept_loop(shared: &Arc<Shared>, listener: &TcpListener, generation: u64) {
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

pub(super) enum Route {
    Json(Value),
    Text(&'static str),
    Collection { info: &'static KindInfo, namespace: Option<String> },
    Object { info: &'static KindInfo, namespace: Option<String>, name: String },
    NotFound,
}

pub(super) fn route(path: &str, port: u16) -> Route {
    let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    if let ["healthz" | "livez" | "readyz"] = segs.as_slice() {
        return Route::Text("ok");
    }
    if let Some(doc) = discovery::document(&segs, port) {
        return Route::Json(doc);
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

/// Serves one request. Returns whether the connection may be reused.
fn dispatch(shared: &Shared, out: &mut TcpStream, req: &Request, generation: u64) -> io::Result<bool> {
    if req.method == "POST" {
        let (code, body) = create(shared, &req.path, &req.body);
        respond(out, code, &body)?;
        return Ok(true);
    }
    if req.method != "GET" {
        respond_status(
            out,
            405,
            "MethodNotAllowed",
            &format!("the test API server only serves GET (and POST of Events), not {}", req.method),
        )?;
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

/// `POST` to a namespaced collection of a creatable kind (Events): stores the object as sent
/// (no defaulting) and answers 201 with it, or 409 `AlreadyExists` when the name is taken, as
/// the API server does.
fn create(shared: &Shared, path: &str, body: &[u8]) -> (u16, Value) {
    let (info, namespace) = match route(path, shared.port) {
        Route::Collection { info, namespace: Some(ns) } if info.creatable => (info, ns),
        Route::Collection { info, .. } | Route::Object { info, .. } => {
            return (405, status(405, "MethodNotAllowed", &format!("the test API server does not create {}", info.plural)));
        }
        _ => return (404, status(404, "NotFound", &format!("the server could not find the requested resource ({path})"))),
    };
    let mut obj: Value = match serde_json::from_slice(body) {
        Ok(Value::Object(o)) => Value::Object(o),
        Ok(_) => return (400, status(400, "BadRequest", "the body is not a JSON object")),
        Err(e) => return (400, status(400, "BadRequest", &format!("the body is not JSON: {e}"))),
    };
    if obj["kind"].as_str().is_some_and(|k| k != info.kind) {
        return (400, status(400, "BadRequest", &format!("the body's kind is not {}", info.kind)));
    }
    obj["kind"] = info.kind.into();
    match obj["metadata"]["namespace"].as_str() {
        Some(ns) if ns != namespace => {
            return (
                400,
                status(
                    400,
                    "BadRequest",
                    "the namespace of the provided object does not match the namespace sent on the request",
                ),
            );
        }
        _ => obj["metadata"]["namespace"] = namespace.clone().into(),
    }
    let Some(name) = obj["metadata"]["name"].as_str().filter(|n| !n.is_empty()).map(str::to_owned) else {
        return (422, status(422, "Invalid", "metadata.name: Required value"));
    };
    let mut store = lock(&shared.store);
    if store.get(info, &namespace, &name).is_some() {
        let mut st = status(409, "AlreadyExists", &format!("{}.{} \"{name}\" already exists", info.plural, group_of(info)));
        st["details"] = json!({"name": name, "group": group_of(info), "kind": info.plural});
        return (409, st);
    }
    match store.apply(obj, false) {
        Ok(_) => (201, store.get(info, &namespace, &name).cloned().unwrap_or(Value::Null)),
        Err(e) => (422, status(422, "Invalid", &format!("{e:#}"))),
    }
}

/// The API group of a kind (`""` for core).
fn group_of(info: &KindInfo) -> &'static str {
    info.api_version.rsplit_once('/').map_or("", |(g, _)| g)
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
    use std::{
        io::{BufRead as _, Write as _},
        time::{Duration, Instant},
    };

    use crate::apiserver::{ApiServer, client::Conn};

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
}

#[cfg(test)]
mod create_tests {
    use std::io::{Read as _, Write as _};

    use serde_json::{Value, json};

    use crate::apiserver::ApiServer;

    fn post(server: &ApiServer, path: &str, body: &Value) -> (u16, Value) {
        let mut s = std::net::TcpStream::connect(server.addr()).unwrap();
        let body = body.to_string();
        write!(
            s,
            "POST {path} HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
        .unwrap();
        let mut reply = String::new();
        s.read_to_string(&mut reply).unwrap();
        let code = reply.split_whitespace().nth(1).unwrap().parse().unwrap();
        let body = reply.split_once("\r\n\r\n").map_or("", |(_, b)| b);
        (code, serde_json::from_str(body).unwrap_or(Value::Null))
    }

    #[test]
    fn events_are_created_once_by_name_and_nothing_else_is_creatable() {
        let server = ApiServer::start().unwrap();
        let ev = json!({"apiVersion": "events.k8s.io/v1", "kind": "Event", "metadata": {"name": "web.lb-1"}, "reason": "ServiceSkipped"});
        let (code, stored) = post(&server, "/apis/events.k8s.io/v1/namespaces/shop/events", &ev);
        assert_eq!(code, 201, "{stored}");
        assert_eq!(stored["metadata"]["namespace"], "shop");
        assert!(stored["metadata"]["uid"].is_string() && stored["metadata"]["resourceVersion"].is_string());
        assert_eq!(server.list("Event").len(), 1);
        let (code, st) = post(&server, "/apis/events.k8s.io/v1/namespaces/shop/events", &ev);
        assert_eq!((code, st["reason"].as_str()), (409, Some("AlreadyExists")), "{st}");
        let mut elsewhere = ev.clone();
        elsewhere["metadata"]["namespace"] = "shop".into();
        let (code, _) = post(&server, "/apis/events.k8s.io/v1/namespaces/other/events", &elsewhere);
        assert_eq!(code, 400, "the body's namespace differs from the path's");
        let svc = json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "x"}});
        assert_eq!(post(&server, "/api/v1/namespaces/default/services", &svc).0, 405);
        assert_eq!(server.list("Event").len(), 1);
        let used = server.verbs_used();
        assert!(used.contains(&("events.k8s.io".into(), "events".into(), "create".into())), "{used:?}");
    }
}
