//! The discovery documents clients read before they list and watch: `/version`, `/api`,
//! `/api/v1`, `/apis`, `/apis/GROUP` and `/apis/GROUP/v1` (discovery.k8s.io, events.k8s.io),
//! the resource lists built from the kinds table.

use serde_json::{Value, json};

use super::kinds::KINDS;

/// The discovery document at a path (its non-empty segments), if it is one; `port` is the
/// server's, which `/api` advertises.
pub(super) fn document(segs: &[&str], port: u16) -> Option<Value> {
    let doc = match segs {
        ["version"] => version_info(),
        ["api"] => json!({
            "kind": "APIVersions", "versions": ["v1"],
            "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": format!("127.0.0.1:{port}")}],
        }),
        ["apis"] => json!({
            "kind": "APIGroupList", "apiVersion": "v1",
            "groups": GROUPS.iter().map(|g| api_group(g)).collect::<Vec<_>>(),
        }),
        ["apis", group] if GROUPS.contains(group) => {
            let mut g = api_group(group);
            g["kind"] = "APIGroup".into();
            g["apiVersion"] = "v1".into();
            g
        }
        ["api", "v1"] => resource_list("v1"),
        ["apis", group, "v1"] if GROUPS.contains(group) => resource_list(&format!("{group}/v1")),
        _ => return None,
    };
    Some(doc)
}

/// The named API groups (all at `v1`).
const GROUPS: &[&str] = &["discovery.k8s.io", "events.k8s.io"];

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
                "kind": k.kind, "verbs": if k.creatable { &["create", "get", "list", "watch"][..] } else { &["get", "list", "watch"][..] },
                "shortNames": k.short_names,
            })
        })
        .collect();
    json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": group_version, "resources": resources})
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use crate::apiserver::{ApiServer, client::Conn};

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
}
