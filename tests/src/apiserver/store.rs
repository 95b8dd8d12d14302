//! The objects and their history: one global, strictly increasing resourceVersion shared by
//! every kind; writes that stamp metadata (uid, creationTimestamp, resourceVersion) and apply the
//! API defaulting; the retained changes, a bounded ring that compaction clears, below whose floor
//! a resourceVersion is too old; the state of a past resourceVersion rebuilt from it; and the
//! snapshots that paged lists continue from.

use std::{
    collections::{BTreeMap, VecDeque},
    sync::Arc,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context as _, bail};
use serde_json::{Value, json};

use super::{
    defaults::{Allocator, default_endpoint_slice, default_service},
    kinds::{KindInfo, kind_info},
    selectors::Filter,
};

/// Paged-list snapshots kept for `continue` tokens.
const MAX_CONTINUATIONS: usize = 64;

/// An object's identity: kind, namespace (empty for cluster-scoped kinds), name.
type Key = (&'static str, String, String);

/// One write: `old` is the previous stored object, `new` the stored object after it
/// (`None` for create and delete respectively). Both carry their own resourceVersion.
#[derive(Debug)]
pub(super) struct Change {
    pub(super) rv: u64,
    pub(super) kind: &'static str,
    pub(super) old: Option<Value>,
    pub(super) new: Option<Value>,
}

/// A paged list in progress: the rest of its snapshot.
#[derive(Debug)]
struct Continuation {
    token: String,
    rv: u64,
    remaining: VecDeque<Arc<Value>>,
}

/// Everything the server stores, behind one lock.
#[derive(Debug)]
pub(super) struct Store {
    /// The last resourceVersion handed out.
    pub(super) rv: u64,
    /// Shared with the snapshots of paged lists (a list of 100,000 objects copied each one:
    /// seconds, with the store locked).
    objects: BTreeMap<Key, Arc<Value>>,
    /// Every change with `rv > floor`, ascending.
    history: VecDeque<Change>,
    /// Watches (and exact lists) from a resourceVersion below this get 410.
    pub(super) floor: u64,
    history_limit: usize,
    /// Bumped to end every open watch cleanly.
    pub(super) watch_epoch: u64,
    continuations: VecDeque<Continuation>,
    next_token: u64,
    next_uid: u64,
    /// The server's port, part of every uid so that servers in one process never share one.
    port: u16,
    alloc: Allocator,
    /// How many of the next lists fail with a 500.
    pub(super) fail_lists: u32,
    /// How often watches that allow bookmarks get one; here because the watch loops read it
    /// under this lock.
    pub(super) bookmark_interval: Duration,
}

impl Store {
    /// An empty store at resourceVersion 1 for the server listening on `port`.
    pub(super) fn new(port: u16) -> Self {
        Self {
            rv: 1,
            objects: BTreeMap::new(),
            history: VecDeque::new(),
            floor: 0,
            history_limit: 10_000,
            watch_epoch: 0,
            continuations: VecDeque::new(),
            next_token: 1,
            next_uid: 1,
            port,
            alloc: Allocator::default(),
            fail_lists: 0,
            bookmark_interval: Duration::from_secs(1),
        }
    }

    /// Creates or replaces an object (by kind, namespace, name), with the API defaulting when
    /// `defaulting`. An update that changes nothing is a no-op. Returns the object's
    /// resourceVersion.
    pub(super) fn apply(&mut self, mut object: Value, defaulting: bool) -> anyhow::Result<u64> {
        let kind = object.get("kind").and_then(Value::as_str).context("object has no kind")?.to_owned();
        let info = kind_info(&kind).with_context(|| format!("unsupported kind {kind}"))?;
        let obj = object.as_object_mut().context("object is not a JSON object")?;
        match obj.get("apiVersion").and_then(Value::as_str) {
            None => {
                obj.insert("apiVersion".into(), info.api_version.into());
            }
            Some(v) if v == info.api_version => {}
            Some(v) => bail!("{kind} has apiVersion {v}, expected {}", info.api_version),
        }
        let meta = obj.entry("metadata").or_insert_with(|| json!({})).as_object_mut().context("metadata is not an object")?;
        let name =
            meta.get("name").and_then(Value::as_str).filter(|n| !n.is_empty()).context("metadata.name is missing")?.to_owned();
        let namespace = if info.namespaced {
            let ns = meta.get("namespace").and_then(Value::as_str).filter(|n| !n.is_empty()).unwrap_or("default").to_owned();
            meta.insert("namespace".into(), ns.clone().into());
            ns
        } else {
            meta.remove("namespace");
            String::new()
        };
        let key: Key = (info.kind, namespace, name);

        let old = self.objects.get(&key).map(|o| Value::clone(o));
        if defaulting {
            match info.kind {
                "Service" => {
                    let services = self.objects.iter().filter(|((k, _, _), _)| *k == "Service").map(|(_, v)| &**v);
                    default_service(&mut object, old.as_ref(), services, &mut self.alloc);
                }
                "EndpointSlice" => default_endpoint_slice(&mut object),
                _ => {}
            }
        }
        let meta = object["metadata"].as_object_mut().context("metadata is not an object")?;
        let old_meta = old.as_ref().and_then(|o| o.get("metadata"));
        let uid = match old_meta.and_then(|m| m.get("uid")) {
            Some(uid) => uid.clone(),
            None => {
                let n = self.next_uid;
                self.next_uid += 1;
                format!("{:08x}-0000-4000-8000-{:012x}", self.port, n).into()
            }
        };
        meta.insert("uid".into(), uid);
        let created =
            old_meta.and_then(|m| m.get("creationTimestamp")).cloned().unwrap_or_else(|| rfc3339(SystemTime::now()).into());
        meta.insert("creationTimestamp".into(), created);
        if let Some(old) = &old {
            meta.insert("resourceVersion".into(), old["metadata"]["resourceVersion"].clone());
            if *old == object {
                return Ok(resource_version_of(old));
            }
        }
        self.rv += 1;
        let rv = self.rv;
        object["metadata"]["resourceVersion"] = rv.to_string().into();
        self.objects.insert(key, Arc::new(object.clone()));
        self.record(Change { rv, kind: info.kind, old, new: Some(object) });
        Ok(rv)
    }

    /// Deletes an object (`namespace` is ignored for cluster-scoped kinds), recording its last
    /// state. Returns the deletion resourceVersion.
    pub(super) fn delete(&mut self, kind: &str, namespace: &str, name: &str) -> anyhow::Result<u64> {
        let info = kind_info(kind).with_context(|| format!("unsupported kind {kind}"))?;
        let ns = if info.namespaced { namespace } else { "" };
        let key: Key = (info.kind, ns.to_owned(), name.to_owned());
        let old = self.objects.remove(&key).with_context(|| format!("{kind} {namespace}/{name} not found"))?;
        let old = Arc::unwrap_or_clone(old);
        self.rv += 1;
        let rv = self.rv;
        self.record(Change { rv, kind: info.kind, old: Some(old), new: None });
        Ok(rv)
    }

    /// The stored object (`namespace` is ignored for cluster-scoped kinds).
    pub(super) fn get(&self, info: &KindInfo, namespace: &str, name: &str) -> Option<&Value> {
        let ns = if info.namespaced { namespace } else { "" };
        self.objects.get(&(info.kind, ns.to_owned(), name.to_owned())).map(|v| &**v)
    }

    /// Forgets the history, like an etcd compaction after an unrelated write: the
    /// resourceVersion advances by one, every older one is too old, pending `continue` tokens
    /// expire, and open watches end.
    pub(super) fn compact(&mut self) {
        self.rv += 1;
        self.floor = self.rv;
        self.history.clear();
        self.continuations.clear();
        self.watch_epoch += 1;
    }

    /// Keeps only the last `limit` changes (at least one).
    pub(super) fn set_history_limit(&mut self, limit: usize) {
        self.history_limit = limit.max(1);
        self.trim();
    }

    fn record(&mut self, change: Change) {
        self.history.push_back(change);
        self.trim();
    }

    fn trim(&mut self) {
        while self.history.len() > self.history_limit {
            if let Some(c) = self.history.pop_front() {
                self.floor = c.rv;
            }
        }
    }

    /// The current objects of `kind` that `filter` lets through, in key order.
    pub(super) fn objects_of<'a>(&'a self, kind: &'static str, filter: &'a Filter) -> impl Iterator<Item = &'a Value> + 'a {
        self.snapshot_of(kind, filter).map(|v| &**v)
    }

    /// [`Self::objects_of`] as shared references: a paged list's snapshot copies no object.
    pub(super) fn snapshot_of<'a>(&'a self, kind: &'static str, filter: &'a Filter) -> impl Iterator<Item = &'a Arc<Value>> + 'a {
        self.objects.iter().filter(move |((k, _, _), v)| *k == kind && filter.matches(v)).map(|(_, v)| v)
    }

    /// The objects of `kind` as they were at `rv` (which must be `>= floor`), in key order.
    pub(super) fn state_at(&self, kind: &'static str, rv: u64) -> impl Iterator<Item = Value> {
        let mut state: BTreeMap<Key, Value> =
            self.objects.iter().filter(|((k, _, _), _)| *k == kind).map(|(k, v)| (k.clone(), Value::clone(v))).collect();
        for change in self.history.iter().rev() {
            if change.rv <= rv {
                break;
            }
            if change.kind != kind {
                continue;
            }
            let any = change.new.as_ref().or(change.old.as_ref());
            let Some(key) = any.map(|o| key_of(kind, o)) else {
                continue;
            };
            match &change.old {
                Some(old) => state.insert(key, old.clone()),
                None => state.remove(&key),
            };
        }
        state.into_values()
    }

    /// The retained changes after `cursor`, oldest first.
    pub(super) fn changes_since(&self, cursor: u64) -> impl Iterator<Item = &Change> {
        let start = self.history.partition_point(|c| c.rv <= cursor);
        self.history.range(start..)
    }

    /// Keeps the rest of a paged list's snapshot at `rv`; returns the token that continues it.
    /// Only the last few are kept: older tokens expire.
    pub(super) fn park(&mut self, rv: u64, remaining: VecDeque<Arc<Value>>) -> String {
        let token = format!("lbt-continue-{}", self.next_token);
        self.next_token += 1;
        self.continuations.push_back(Continuation { token: token.clone(), rv, remaining });
        while self.continuations.len() > MAX_CONTINUATIONS {
            self.continuations.pop_front();
        }
        token
    }

    /// The resourceVersion and rest of the snapshot that `token` continues (once); `None` when
    /// the token is unknown or expired.
    pub(super) fn resume(&mut self, token: &str) -> Option<(u64, VecDeque<Arc<Value>>)> {
        let i = self.continuations.iter().position(|c| c.token == token)?;
        let c = self.continuations.remove(i)?;
        Some((c.rv, c.remaining))
    }
}

fn key_of(kind: &'static str, obj: &Value) -> Key {
    let s = |f: &str| obj["metadata"][f].as_str().unwrap_or_default().to_owned();
    (kind, s("namespace"), s("name"))
}

/// The resourceVersion in an object's metadata (0 when it has none).
pub(super) fn resource_version_of(obj: &Value) -> u64 {
    obj["metadata"]["resourceVersion"].as_str().and_then(|s| s.parse().ok()).unwrap_or(0)
}

/// RFC 3339 UTC with second precision, as Kubernetes writes timestamps. (The agent formats
/// `/healthz`'s `lastUpdated` the same way, from the same calendar arithmetic in lb-common; this
/// library must not depend on lb-userspace, which xtask cannot build before bpf-linker is
/// installed.)
fn rfc3339(t: SystemTime) -> String {
    let u = lb_common::utc_time(t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()));
    format!("{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z", u.year, u.month, u.day, u.hour, u.minute, u.second)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_rfc3339() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00Z");
        let t = UNIX_EPOCH + Duration::from_secs(1_767_225_600 + 3_723); // 2026-01-01 01:02:03
        assert_eq!(rfc3339(t), "2026-01-01T01:02:03Z");
        let leap = UNIX_EPOCH + Duration::from_secs(951_782_400); // 2000-02-29
        assert_eq!(rfc3339(leap), "2000-02-29T00:00:00Z");
    }
}
