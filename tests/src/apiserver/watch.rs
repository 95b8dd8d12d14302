//! Watches: the events of one watch request, from its start (the synthetic `ADDED` of the
//! current objects, every change after the requested resourceVersion, or the 410 `ERROR` event
//! of one that is too old; a streaming list's initial events end with the
//! `k8s.io/initial-events-end` bookmark) through the changes with the selector transition
//! semantics and the periodic `BOOKMARK`s, to its end: `timeoutSeconds`, closed watches, history
//! lost while streaming (another 410), or the server stopping.

use std::{
    sync::{PoisonError, atomic::Ordering},
    time::{Duration, Instant},
};

use serde_json::{Value, json};

use super::{
    kinds::KindInfo,
    query::Query,
    selectors::Filter,
    shared::{Shared, lock},
    status::{status, too_large, too_old},
    store::Store,
};

/// How long a watch lasts without `timeoutSeconds` (the real server picks 30–60 min).
const DEFAULT_WATCH_TIMEOUT: Duration = Duration::from_secs(1800);
/// Bookmark that ends the initial events of a streaming list.
const INITIAL_EVENTS_END: &str = "k8s.io/initial-events-end";

/// What a watch stream does next.
pub(super) enum Next {
    /// Send these events, then ask again.
    Send(Vec<Value>),
    /// End the stream cleanly (timeout, closed watches, 410), after these events.
    End(Vec<Value>),
    /// The server is stopping: cut the connection.
    Cut,
}

/// An accepted watch request, counted in the open watches until it is dropped.
pub(super) struct Watch<'a> {
    shared: &'a Shared,
    info: &'static KindInfo,
    filter: &'a Filter,
    bookmarks: bool,
    /// The server generation the connection belongs to: a stop moves past it.
    generation: u64,
    /// The store's watch epoch when the watch started: a change ends the stream.
    epoch: u64,
    deadline: Instant,
    interval: Duration,
    /// When the next bookmark is due; set once the initial events are out.
    next_bookmark: Option<Instant>,
    /// Events up to this resourceVersion have been sent.
    cursor: u64,
    /// The initial events and whether they are a 410 `ERROR`, until handed out.
    first: Option<(Vec<Value>, bool)>,
}

impl<'a> Watch<'a> {
    /// Starts a watch of the objects of `info` that `filter` lets through, or refuses it with
    /// the status code and `Status` to answer.
    pub(super) fn start(
        shared: &'a Shared,
        info: &'static KindInfo,
        filter: &'a Filter,
        q: &Query,
        generation: u64,
    ) -> Result<Self, (u16, Value)> {
        lock(&shared.stats).watches += 1;
        let invalid = |message: &str| (422, status(422, "Invalid", message));
        if q.send_initial_events {
            if q.resource_version_match.as_deref() != Some("NotOlderThan") {
                return Err(invalid("sendInitialEvents requires resourceVersionMatch=NotOlderThan"));
            }
            if !q.bookmarks {
                return Err(invalid("sendInitialEvents requires allowWatchBookmarks=true"));
            }
        } else if q.resource_version_match.is_some() {
            return Err(invalid("resourceVersionMatch is forbidden for watch unless sendInitialEvents is provided"));
        }
        let requested = q.requested_rv().map_err(|m| (400, status(400, "BadRequest", &m)))?;
        let timeout = q.timeout_seconds.filter(|&t| t > 0).map_or(DEFAULT_WATCH_TIMEOUT, Duration::from_secs);
        let deadline = Instant::now() + timeout;

        let mut store = lock(&shared.store);
        if let Some(n) = requested.filter(|&n| n != 0) {
            let (s, reached) = shared.wait_for_rv(store, n);
            store = s;
            if !reached {
                return Err(too_large(n));
            }
        }
        let mut first = Vec::new();
        let mut cursor = store.rv;
        let mut expired = false;
        match requested {
            Some(n) if n != 0 && !q.send_initial_events => {
                if n < store.floor {
                    expired = true;
                    first.push(json!({"type": "ERROR", "object": too_old(n, store.floor)}));
                } else {
                    cursor = n;
                }
            }
            _ => {
                first.extend(store.objects_of(info.kind, filter).map(|o| json!({"type": "ADDED", "object": o})));
                if q.send_initial_events {
                    first.push(bookmark(info, cursor, true));
                }
            }
        }
        let watch = Self {
            shared,
            info,
            filter,
            bookmarks: q.bookmarks,
            generation,
            epoch: store.watch_epoch,
            deadline,
            interval: store.bookmark_interval,
            next_bookmark: None,
            cursor,
            first: Some((first, expired)),
        };
        drop(store);
        lock(&shared.stats).open_watches += 1;
        Ok(watch)
    }

    /// The initial events first, then blocks until there is something to send or the stream
    /// ends.
    pub(super) fn next(&mut self) -> Next {
        if let Some((events, expired)) = self.first.take() {
            if expired {
                lock(&self.shared.stats).expired += 1;
                return Next::End(events);
            }
            return Next::Send(events);
        }
        let interval = self.interval;
        let next_bookmark = self.next_bookmark.get_or_insert_with(|| Instant::now() + interval);
        let mut store = lock(&self.shared.store);
        loop {
            if self.shared.generation.load(Ordering::SeqCst) != self.generation {
                return Next::Cut;
            }
            let now = Instant::now();
            if store.watch_epoch != self.epoch || now >= self.deadline {
                return Next::End(Vec::new());
            }
            if self.cursor < store.floor {
                // Fell out of the retained history while streaming.
                let st = too_old(self.cursor, store.floor);
                lock(&self.shared.stats).expired += 1;
                return Next::End(vec![json!({"type": "ERROR", "object": st})]);
            }
            let events = events_since(&store, self.cursor, self.info.kind, self.filter);
            self.cursor = store.rv;
            if !events.is_empty() {
                return Next::Send(events);
            }
            if store.bookmark_interval != self.interval {
                self.interval = store.bookmark_interval;
                *next_bookmark = now + self.interval;
            }
            if self.bookmarks && now >= *next_bookmark {
                *next_bookmark = now + self.interval;
                lock(&self.shared.stats).bookmarks += 1;
                return Next::Send(vec![bookmark(self.info, store.rv, false)]);
            }
            let mut wake = self.deadline.min(now + Duration::from_secs(1));
            if self.bookmarks {
                wake = wake.min(*next_bookmark);
            }
            store = self
                .shared
                .cond
                .wait_timeout(store, wake.saturating_duration_since(now))
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }
}

impl Drop for Watch<'_> {
    fn drop(&mut self) {
        let mut stats = lock(&self.shared.stats);
        stats.open_watches = stats.open_watches.saturating_sub(1);
    }
}

/// Watch events for every change after `cursor`, with the selector transition semantics: an
/// update that makes an object start matching is `ADDED`, one that makes it stop matching is
/// `DELETED` (its previous content with the new resourceVersion).
fn events_since(store: &Store, cursor: u64, kind: &'static str, filter: &Filter) -> Vec<Value> {
    let mut events = Vec::new();
    for c in store.changes_since(cursor) {
        if c.kind != kind {
            continue;
        }
        let was = c.old.as_ref().is_some_and(|o| filter.matches(o));
        let is = c.new.as_ref().is_some_and(|o| filter.matches(o));
        let event = match (was, is, &c.old, &c.new) {
            (false, true, _, Some(new)) => json!({"type": "ADDED", "object": new}),
            (true, true, _, Some(new)) => json!({"type": "MODIFIED", "object": new}),
            (true, false, Some(old), _) => {
                let mut last = old.clone();
                last["metadata"]["resourceVersion"] = c.rv.to_string().into();
                json!({"type": "DELETED", "object": last})
            }
            _ => continue,
        };
        events.push(event);
    }
    events
}

/// A `BOOKMARK` event: only the kind, apiVersion and resourceVersion, plus the annotation when
/// it ends a streaming list's initial events.
fn bookmark(info: &KindInfo, rv: u64, initial_events_end: bool) -> Value {
    let mut meta = json!({"resourceVersion": rv.to_string()});
    if initial_events_end {
        meta["annotations"] = json!({INITIAL_EVENTS_END: "true"});
    }
    json!({"type": "BOOKMARK", "object": {"kind": info.kind, "apiVersion": info.api_version, "metadata": meta}})
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use serde_json::json;

    use super::INITIAL_EVENTS_END;
    use crate::apiserver::{
        ApiServer,
        client::{Conn, rv, svc},
        store::resource_version_of,
    };

    #[test]
    fn watch_from_a_resource_version_streams_every_later_change() {
        let server = ApiServer::start().unwrap();
        let rv0 = server.apply(svc("a", json!({}))).unwrap();
        let rv1 = server.apply(svc("b", json!({}))).unwrap();
        let (mut w, code, headers) = Conn::get(
            &server,
            &format!("/api/v1/namespaces/default/services?&watch=true&timeoutSeconds=30&resourceVersion={rv0}"),
        );
        assert_eq!(code, 200);
        assert!(headers.contains(&("transfer-encoding".into(), "chunked".into())));
        let e = w.change();
        assert_eq!((e["type"].as_str(), rv(&e["object"])), (Some("ADDED"), rv1));
        assert_eq!(e["object"]["kind"], "Service");
        assert_eq!(e["object"]["apiVersion"], "v1");
        let rv2 = server.apply(svc("a", json!({"x": "y"}))).unwrap();
        let e = w.change();
        assert_eq!((e["type"].as_str(), rv(&e["object"])), (Some("MODIFIED"), rv2));
        let rv3 = server.delete("Service", "default", "a").unwrap();
        let e = w.change();
        assert_eq!(e["type"], "DELETED");
        assert_eq!(rv(&e["object"]), rv3, "DELETED carries the deletion revision");
        assert_eq!(e["object"]["metadata"]["labels"]["x"], "y", "and the last state");
        // Other kinds and namespaces share the counter but never appear here.
        let node = json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "n1"}});
        let rv4 = server.apply(node).unwrap();
        assert_eq!(rv4, rv3 + 1);
        let rv5 = server.apply(svc("c", json!({}))).unwrap();
        let e = w.change();
        assert_eq!((e["type"].as_str(), rv(&e["object"])), (Some("ADDED"), rv5));
        assert_eq!(server.stats().open_watches, 1);
    }

    #[test]
    fn watch_without_resource_version_starts_with_synthetic_added() {
        let server = ApiServer::start().unwrap();
        server.apply(svc("a", json!({}))).unwrap();
        server.apply(svc("b", json!({}))).unwrap();
        for rv in ["", "&resourceVersion=0"] {
            let (mut w, _, _) = Conn::get(&server, &format!("/api/v1/services?watch=1{rv}"));
            let names: Vec<_> = (0..2)
                .map(|_| w.change())
                .inspect(|e| assert_eq!(e["type"], "ADDED"))
                .map(|e| e["object"]["metadata"]["name"].as_str().unwrap().to_owned())
                .collect();
            assert_eq!(names, ["a", "b"]);
        }
    }

    #[test]
    fn too_old_resource_version_is_a_410_error_event_in_a_200_stream() {
        let server = ApiServer::start().unwrap();
        let old = server.apply(svc("a", json!({}))).unwrap();
        server.apply(svc("b", json!({}))).unwrap();
        server.compact();
        let (mut w, code, _) =
            Conn::get(&server, &format!("/api/v1/services?&watch=true&allowWatchBookmarks=true&resourceVersion={old}"));
        assert_eq!(code, 200, "never a 410 at the HTTP layer for watches");
        let e = w.event().unwrap();
        assert_eq!(e["type"], "ERROR");
        assert_eq!(e["object"]["kind"], "Status");
        assert_eq!(e["object"]["code"], 410);
        assert_eq!(e["object"]["reason"], "Expired");
        let msg = e["object"]["message"].as_str().unwrap();
        assert!(msg.starts_with(&format!("too old resource version: {old} (")), "{msg}");
        assert_eq!(w.event(), None, "then the stream ends");
        assert_eq!(server.stats().expired, 1);
        // The list after compaction gives a resourceVersion that can be watched.
        let (_, list) = Conn::json(&server, "/api/v1/services");
        let (mut w, _, _) = Conn::get(&server, &format!("/api/v1/services?watch=true&resourceVersion={}", rv(&list)));
        let rv_c = server.apply(svc("c", json!({}))).unwrap();
        assert_eq!(rv(&w.change()["object"]), rv_c);
    }

    #[test]
    fn history_limit_expires_old_resource_versions() {
        let server = ApiServer::start().unwrap();
        server.set_history_limit(2);
        let first = server.apply(svc("a", json!({"n": "1"}))).unwrap();
        server.apply(svc("a", json!({"n": "2"}))).unwrap();
        server.apply(svc("a", json!({"n": "3"}))).unwrap();
        let (mut w, _, _) = Conn::get(&server, &format!("/api/v1/services?watch=true&resourceVersion={}", first - 1));
        assert_eq!(w.event().unwrap()["object"]["code"], 410);
        let (mut w, _, _) = Conn::get(&server, &format!("/api/v1/services?watch=true&resourceVersion={first}"));
        assert_eq!(w.change()["object"]["metadata"]["labels"]["n"], "2");
    }

    #[test]
    fn bookmarks_carry_only_kind_api_version_and_resource_version() {
        let server = ApiServer::start().unwrap();
        server.set_bookmark_interval(Duration::from_millis(50));
        let (mut w, _, _) = Conn::get(&server, "/apis/discovery.k8s.io/v1/endpointslices?&watch=true&allowWatchBookmarks=true");
        let node = json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "n1"}});
        let rv = server.apply(node).unwrap();
        let bm = loop {
            let e = w.event().unwrap();
            assert_eq!(e["type"], "BOOKMARK");
            if resource_version_of(&e["object"]) == rv {
                break e;
            }
        };
        assert_eq!(
            bm["object"],
            json!({"kind": "EndpointSlice", "apiVersion": "discovery.k8s.io/v1", "metadata": {"resourceVersion": rv.to_string()}})
        );
        assert!(server.stats().bookmarks >= 1);
        // No bookmarks unless asked for.
        let (mut w, _, _) = Conn::get(&server, "/api/v1/nodes?watch=true&timeoutSeconds=1");
        assert_eq!(w.event().unwrap()["type"], "ADDED");
        assert_eq!(w.event(), None, "only the timeout ends it, with no bookmark before");
    }

    #[test]
    fn label_selector_transitions_are_added_and_deleted() {
        let server = ApiServer::start().unwrap();
        server.apply(svc("a", json!({"app": "a"}))).unwrap();
        let sel = "%21service.kubernetes.io%2Fservice-proxy-name%2C%21service.kubernetes.io%2Fheadless";
        let (_, list) = Conn::json(&server, &format!("/api/v1/services?&labelSelector={sel}&limit=500"));
        assert_eq!(list["items"].as_array().unwrap().len(), 1);
        let (mut w, _, _) =
            Conn::get(&server, &format!("/api/v1/services?&watch=true&labelSelector={sel}&resourceVersion={}", rv(&list)));
        let rv_out = server.apply(svc("a", json!({"app": "a", "service.kubernetes.io/service-proxy-name": "other"}))).unwrap();
        let e = w.change();
        assert_eq!(e["type"], "DELETED");
        assert_eq!(rv(&e["object"]), rv_out, "the event's new revision");
        assert!(
            e["object"]["metadata"]["labels"].get("service.kubernetes.io/service-proxy-name").is_none(),
            "the previous content"
        );
        // Changes while not matching are invisible.
        server.apply(svc("a", json!({"app": "b", "service.kubernetes.io/service-proxy-name": "other"}))).unwrap();
        let rv_in = server.apply(svc("a", json!({"app": "c"}))).unwrap();
        let e = w.change();
        assert_eq!((e["type"].as_str(), rv(&e["object"])), (Some("ADDED"), rv_in));
        server.apply(svc("a", json!({"app": "d"}))).unwrap();
        assert_eq!(w.change()["type"], "MODIFIED");
        server.apply(svc("h", json!({"service.kubernetes.io/headless": ""}))).unwrap();
        let rv_z = server.apply(svc("z", json!({}))).unwrap();
        let e = w.change();
        assert_eq!((e["object"]["metadata"]["name"].as_str(), rv(&e["object"])), (Some("z"), rv_z));
    }

    #[test]
    fn streaming_list_ends_initial_events_with_an_annotated_bookmark() {
        let server = ApiServer::start().unwrap();
        let rv = server.apply(svc("a", json!({}))).unwrap();
        let (mut w, _, _) = Conn::get(
            &server,
            "/api/v1/services?&watch=true&timeoutSeconds=290&allowWatchBookmarks=true&sendInitialEvents=true&resourceVersionMatch=NotOlderThan&resourceVersion=0",
        );
        assert_eq!(w.event().unwrap()["type"], "ADDED");
        let bm = w.event().unwrap();
        assert_eq!(bm["type"], "BOOKMARK");
        assert_eq!(bm["object"]["metadata"]["annotations"][INITIAL_EVENTS_END], "true");
        assert_eq!(resource_version_of(&bm["object"]), rv);
        let (code, _) = Conn::json(&server, "/api/v1/services?watch=true&sendInitialEvents=true");
        assert_eq!(code, 422);
    }
}
