//! Lists: a collection GET without `watch`, answered with `kind`, `apiVersion` and
//! `metadata.resourceVersion` from the current objects or, with `resourceVersionMatch=Exact`,
//! from the state rebuilt at that resourceVersion; paged with `limit`/`continue` over a
//! consistent snapshot whose unknown tokens are 410 `Expired`.

use std::{collections::VecDeque, sync::Arc};

use serde_json::{Value, json};

use super::{
    kinds::KindInfo,
    query::Query,
    selectors::Filter,
    shared::{Shared, lock},
    status::{status, too_large, too_old},
};

/// The status code and body of a list request.
pub(super) fn list(shared: &Shared, info: &'static KindInfo, filter: &Filter, q: &Query) -> (u16, Value) {
    lock(&shared.stats).lists += 1;
    let mut store = lock(&shared.store);
    if store.fail_lists > 0 {
        store.fail_lists -= 1;
        return (500, status(500, "InternalError", "injected failure"));
    }
    let requested = match q.requested_rv() {
        Ok(rv) => rv,
        Err(m) => return (400, status(400, "BadRequest", &m)),
    };
    let (rv, mut items): (u64, VecDeque<Arc<Value>>) = if let Some(token) = &q.continue_token {
        if requested.is_some() {
            return (400, status(400, "BadRequest", "specifying resource version is not allowed when using continue"));
        }
        let Some(snapshot) = store.resume(token) else {
            lock(&shared.stats).expired += 1;
            return (
                410,
                status(
                    410,
                    "Expired",
                    "The provided continue parameter is too old to display a consistent list result. You can start a new list without the continue parameter.",
                ),
            );
        };
        snapshot
    } else {
        let exact = q.resource_version_match.as_deref() == Some("Exact");
        match requested {
            Some(0) if exact => {
                return (422, status(422, "Invalid", "resourceVersionMatch: Exact requires a non-zero resourceVersion"));
            }
            Some(n) if n != 0 => {
                let (s, reached) = shared.wait_for_rv(store, n);
                store = s;
                if !reached {
                    return too_large(n);
                }
            }
            _ => {}
        }
        match requested {
            Some(n) if exact && n < store.floor => {
                lock(&shared.stats).expired += 1;
                return (410, too_old(n, store.floor));
            }
            Some(n) if exact => (n, store.state_at(info.kind, n).filter(|o| filter.matches(o)).map(Arc::new).collect()),
            _ => (store.rv, store.snapshot_of(info.kind, filter).cloned().collect()),
        }
    };
    let mut metadata = json!({"resourceVersion": rv.to_string()});
    if let Some(limit) = q.limit.filter(|&l| l > 0 && l < items.len()) {
        let rest = items.split_off(limit);
        let remaining = rest.len();
        metadata["continue"] = store.park(rv, rest).into();
        metadata["remainingItemCount"] = remaining.into();
    }
    // Built-in list responses omit the items' kind and apiVersion: this page's items are copied
    // to drop them (the snapshot shares the stored objects; the parked rest is copied when its
    // own page goes out).
    let items: Vec<Value> = items
        .into_iter()
        .map(|item| {
            let mut item = Arc::unwrap_or_clone(item);
            if let Some(o) = item.as_object_mut() {
                o.remove("kind");
                o.remove("apiVersion");
            }
            item
        })
        .collect();
    (
        200,
        json!({
            "kind": info.list_kind, "apiVersion": info.api_version,
            "metadata": metadata, "items": items,
        }),
    )
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use crate::apiserver::{
        ApiServer,
        client::{Conn, rv, svc},
    };

    #[test]
    fn list_has_kind_api_version_and_resource_version() {
        let server = ApiServer::start().unwrap();
        server.apply(svc("a", json!({}))).unwrap();
        let mut other = svc("b", json!({}));
        other["metadata"]["namespace"] = "other".into();
        let last = server.apply(other).unwrap();
        let (code, list) = Conn::json(&server, "/api/v1/services?&limit=500");
        assert_eq!(code, 200);
        assert_eq!(list["kind"], "ServiceList");
        assert_eq!(list["apiVersion"], "v1");
        assert_eq!(rv(&list), last);
        let items = list["items"].as_array().unwrap();
        assert_eq!(items.len(), 2);
        assert!(items[0].get("kind").is_none(), "built-in lists omit item kinds");
        assert!(list["metadata"].get("continue").is_none());
        let (_, ns) = Conn::json(&server, "/api/v1/namespaces/other/services");
        assert_eq!(ns["items"].as_array().unwrap().len(), 1);
        assert_eq!(ns["items"][0]["metadata"]["name"], "b");
        let (code, one) = Conn::json(&server, "/api/v1/namespaces/default/services/a");
        assert_eq!((code, one["kind"].as_str()), (200, Some("Service")));
        let (code, missing) = Conn::json(&server, "/api/v1/namespaces/default/services/zz");
        assert_eq!((code, missing["reason"].as_str()), (404, Some("NotFound")));
        let (_, slices) = Conn::json(&server, "/apis/discovery.k8s.io/v1/endpointslices");
        assert_eq!(slices["kind"], "EndpointSliceList");
        assert_eq!(slices["apiVersion"], "discovery.k8s.io/v1");
        assert_eq!(slices["items"], json!([]));
    }

    #[test]
    fn paging_is_a_consistent_snapshot_and_unknown_tokens_expire() {
        let server = ApiServer::start().unwrap();
        for i in 0..5 {
            server.apply(svc(&format!("s{i}"), json!({}))).unwrap();
        }
        let (_, p1) = Conn::json(&server, "/api/v1/services?&limit=2");
        let token = p1["metadata"]["continue"].as_str().unwrap().to_owned();
        assert_eq!(p1["metadata"]["remainingItemCount"], 3);
        server.delete("Service", "default", "s4").unwrap();
        let (_, p2) = Conn::json(&server, &format!("/api/v1/services?&limit=2&continue={token}"));
        assert_eq!(rv(&p2), rv(&p1), "every page reports the list resourceVersion");
        let token2 = p2["metadata"]["continue"].as_str().unwrap().to_owned();
        let (_, p3) = Conn::json(&server, &format!("/api/v1/services?&limit=2&continue={token2}"));
        assert!(p3["metadata"].get("continue").is_none());
        let names: Vec<_> = [&p1, &p2, &p3]
            .iter()
            .flat_map(|p| p["items"].as_array().unwrap().clone())
            .map(|i| i["metadata"]["name"].as_str().unwrap().to_owned())
            .collect();
        assert_eq!(names, ["s0", "s1", "s2", "s3", "s4"]);
        let (code, gone) = Conn::json(&server, "/api/v1/services?&limit=2&continue=bogus");
        assert_eq!((code, gone["code"].as_u64()), (410, Some(410)));
        assert_eq!(gone["reason"], "Expired");
    }

    #[test]
    fn exact_list_rebuilds_an_older_state() {
        let server = ApiServer::start().unwrap();
        let rv1 = server.apply(svc("a", json!({"v": "1"}))).unwrap();
        server.apply(svc("a", json!({"v": "2"}))).unwrap();
        server.apply(svc("b", json!({}))).unwrap();
        let (_, old) = Conn::json(&server, &format!("/api/v1/services?resourceVersion={rv1}&resourceVersionMatch=Exact"));
        assert_eq!(rv(&old), rv1);
        let items = old["items"].as_array().unwrap();
        assert_eq!(items.len(), 1);
        assert_eq!(items[0]["metadata"]["labels"]["v"], "1");
        server.compact();
        let (code, _) = Conn::json(&server, &format!("/api/v1/services?resourceVersion={rv1}&resourceVersionMatch=Exact"));
        assert_eq!(code, 410);
    }

    #[test]
    fn injected_list_failures_are_500() {
        let server = ApiServer::start().unwrap();
        server.fail_next_lists(1);
        assert_eq!(Conn::json(&server, "/api/v1/services").0, 500);
        assert_eq!(Conn::json(&server, "/api/v1/services").0, 200);
    }
}
