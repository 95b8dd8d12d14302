//! `lb service list`: every Service port as the datapath holds it, each frontend with its
//! backends and their state (like `cilium service list`); `lb service get NAMESPACE/NAME`: one
//! Service's rows.

use std::collections::BTreeMap;

use lb_common::{SVC_F_ADDR_MARKER, SVC_F_EXTERNAL_IP, SVC_F_LOADBALANCER, SVC_F_NODEPORT};
use serde::Serialize;

use super::output::{Output, endpoint, flag_names, proto_name, render, service_name};
use crate::maps::{MapError, MapState, pinned::PinnedMaps};

#[derive(Serialize)]
struct ServiceView {
    id: u32,
    service: String,
    /// The Service's type as this node programs it: `LoadBalancer` when any of its ports has a
    /// LoadBalancer IP, else `NodePort` when one has a node port, else `ClusterIP`.
    #[serde(rename = "type")]
    service_type: &'static str,
    frontends: Vec<String>,
    /// The kind of each frontend (same order): `ClusterIP`, `NodePort`, `ExternalIP`,
    /// `LoadBalancer`.
    frontend_kinds: Vec<&'static str>,
    kind: Vec<&'static str>,
    backends: Vec<BackendView>,
}

#[derive(Serialize)]
struct BackendView {
    id: u32,
    address: String,
    state: &'static str,
}

/// Which Services to show.
#[derive(Clone, Debug, Default)]
pub struct Filter {
    /// A ServicePort name prefix (`NAMESPACE/NAME:`, `lb service get`).
    pub prefix: Option<String>,
    pub namespace: Option<String>,
    /// Service type, case-insensitive: clusterip, nodeport, loadbalancer.
    pub service_type: Option<String>,
    /// A label selector (`kubectl get -l`): requirements joined by `,`.
    pub selector: Option<Selector>,
}

/// An equality-based label selector, as `kubectl get -l` takes it: `key=value`, `key==value`,
/// `key!=value`, `key` (has the label), `!key` (has not), joined by `,` (all must hold).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Selector(Vec<Requirement>);

#[derive(Clone, Debug, PartialEq, Eq)]
enum Requirement {
    Equals(String, String),
    NotEquals(String, String),
    Exists(String),
    NotExists(String),
}

impl std::str::FromStr for Selector {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let mut reqs = Vec::new();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let key_ok = |k: &str| !k.is_empty() && k.chars().all(|c| c.is_ascii_alphanumeric() || "-_./".contains(c));
            let req = if let Some((k, v)) = part.split_once("!=") {
                Requirement::NotEquals(k.trim().into(), v.trim().into())
            } else if let Some((k, v)) = part.split_once("==").or_else(|| part.split_once('=')) {
                Requirement::Equals(k.trim().into(), v.trim().into())
            } else if let Some(k) = part.strip_prefix('!') {
                Requirement::NotExists(k.trim().into())
            } else {
                Requirement::Exists(part.into())
            };
            let (Requirement::Equals(k, _) | Requirement::NotEquals(k, _) | Requirement::Exists(k) | Requirement::NotExists(k)) =
                &req;
            if !key_ok(k) {
                return Err(format!(
                    "{part:?}: a requirement is key=value, key!=value, key or !key (set-based `in` is not supported)"
                ));
            }
            reqs.push(req);
        }
        if reqs.is_empty() {
            return Err("an empty selector: give key=value (e.g. app=kubia)".into());
        }
        Ok(Self(reqs))
    }
}

impl Selector {
    /// Whether labels `key=value,...` (as `LB_SVC_LABELS` holds them) satisfy every requirement.
    pub fn matches(&self, labels: &str) -> bool {
        let get = |key: &str| labels.split(',').filter_map(|kv| kv.split_once('=')).find(|(k, _)| *k == key).map(|(_, v)| v);
        self.0.iter().all(|r| match r {
            Requirement::Equals(k, v) => get(k) == Some(v.as_str()),
            Requirement::NotEquals(k, v) => get(k) != Some(v.as_str()),
            Requirement::Exists(k) => get(k).is_some(),
            Requirement::NotExists(k) => get(k).is_none(),
        })
    }
}

/// `lb service list`: every frontend → its backends, a row per frontend (like `cilium service
/// list`), with the Service's type and the frontend's kind. A dual-stack Service's port is
/// listed per family (names `ns/name:port/TCP` and `ns/name:port/TCP/IPv6`).
pub fn list(maps: &PinnedMaps, filter: &Filter, output: Output) -> Result<String, MapError> {
    Ok(render_service_list(&maps.state()?, output, filter))
}

/// `lb service get NAMESPACE/NAME`: the rows of one Service (every port and family); `None`
/// when the maps hold none of it.
pub fn get(maps: &PinnedMaps, name: &str, output: Output) -> Result<Option<String>, MapError> {
    let st = maps.state()?;
    let prefix = format!("{name}:");
    let held = st.names.values().any(|n| n.as_str().starts_with(&prefix));
    let filter = Filter { prefix: Some(prefix), ..Filter::default() };
    Ok(held.then(|| render_service_list(&st, output, &filter)))
}

/// A frontend's kind from its flags.
fn frontend_kind(flags: u32) -> &'static str {
    if flags & SVC_F_LOADBALANCER != 0 {
        "LoadBalancer"
    } else if flags & SVC_F_NODEPORT != 0 {
        "NodePort"
    } else if flags & SVC_F_EXTERNAL_IP != 0 {
        "ExternalIP"
    } else {
        "ClusterIP"
    }
}

/// The rows of every ServicePort that passes `filter`.
fn render_service_list(st: &MapState, output: Output, filter: &Filter) -> String {
    // The Service's type, over all its ports and families (by `namespace/name`): the widest
    // of its frontends' (an externalIP does not change a Service's type).
    const TYPES: [&str; 3] = ["ClusterIP", "NodePort", "LoadBalancer"];
    let mut types: BTreeMap<String, usize> = BTreeMap::new();
    for v in st.services.values().filter(|v| v.flags & SVC_F_ADDR_MARKER == 0) {
        let name = service_name(st, v.svc_id);
        let svc = name.split_once(':').map_or(name.as_str(), |(s, _)| s).to_owned();
        let rank = if v.flags & SVC_F_LOADBALANCER != 0 { 2 } else { usize::from(v.flags & SVC_F_NODEPORT != 0) };
        let e = types.entry(svc).or_default();
        *e = (*e).max(rank);
    }
    let mut views: Vec<ServiceView> = Vec::new();
    // One view per (ServicePort, endpoint set): frontends sharing a table are listed together.
    let mut by_table: BTreeMap<(u32, u32), usize> = BTreeMap::new();
    for (k, v) in st.services.iter().filter(|(_, v)| v.flags & SVC_F_ADDR_MARKER == 0) {
        let i = *by_table.entry((v.svc_id, v.select_id)).or_insert_with(|| {
            let backends = st
                .table_backends(v.select_id)
                .into_iter()
                .filter_map(|id| st.backends.get(&id).map(|b| (id, b)))
                .map(|(id, b)| BackendView {
                    id,
                    address: endpoint(b.addr, b.port_be),
                    state: if b.flags & lb_common::BACKEND_F_TERMINATING != 0 { "terminating" } else { "active" },
                })
                .collect();
            let service = service_name(st, v.svc_id);
            let svc = service.split_once(':').map_or(service.as_str(), |(s, _)| s);
            let service_type = TYPES[types.get(svc).copied().unwrap_or(0)];
            views.push(ServiceView {
                id: v.svc_id,
                service,
                service_type,
                frontends: Vec::new(),
                frontend_kinds: Vec::new(),
                kind: flag_names(v.flags),
                backends,
            });
            views.len() - 1
        });
        views[i].frontends.push(format!("{}/{}", endpoint(k.addr, k.port_be), proto_name(k.proto)));
        views[i].frontend_kinds.push(frontend_kind(v.flags));
    }
    views.retain(|v| {
        filter.prefix.as_ref().is_none_or(|p| v.service.starts_with(p))
            && filter.namespace.as_ref().is_none_or(|ns| v.service.split_once('/').is_some_and(|(n, _)| n == ns))
            && filter.service_type.as_ref().is_none_or(|t| v.service_type.eq_ignore_ascii_case(t))
            && filter.selector.as_ref().is_none_or(|s| s.matches(st.labels.get(&v.id).map_or("", |l| l.as_str())))
    });
    views.sort_by(|a, b| (&a.service, &a.frontends).cmp(&(&b.service, &b.frontends)));
    match output {
        Output::Json => {
            let mut s = serde_json::to_string_pretty(&views).unwrap_or_default();
            s.push('\n');
            s
        }
        Output::Table => {
            let mut rows = Vec::new();
            for v in &views {
                let backends: Vec<String> = if v.backends.is_empty() {
                    vec!["(none)".into()]
                } else {
                    v.backends.iter().map(|b| format!("{}) {} ({})", b.id, b.address, b.state)).collect()
                };
                // A row per frontend, its backends on the following lines.
                for (fe, kind) in v.frontends.iter().zip(&v.frontend_kinds) {
                    for (i, b) in backends.iter().enumerate() {
                        let first = i == 0;
                        let cell = |s: &str| if first { s.to_owned() } else { String::new() };
                        rows.push(vec![
                            cell(&v.service),
                            cell(v.service_type),
                            cell(fe),
                            cell(kind),
                            cell(&v.kind.join(",")),
                            b.clone(),
                        ]);
                    }
                }
            }
            render(&["SERVICE", "TYPE", "FRONTEND", "KIND", "FLAGS", "BACKENDS"], rows.into_iter())
        }
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    /// A dual-stack Service (ClusterIP and NodePort in both families) as the agent plans it.
    pub(in crate::cli) fn dual_stack_state() -> MapState {
        use crate::{
            model::NodeContext,
            plan::{PlanConfig, PlanMemory, map_state},
        };
        let svc: k8s_openapi::api::core::v1::Service = serde_json::from_value(serde_json::json!({
            "metadata": { "name": "web", "namespace": "ns" },
            "spec": {
                "type": "NodePort",
                "clusterIP": "10.96.0.10",
                "clusterIPs": ["10.96.0.10", "fd00:96::10"],
                "ipFamilies": ["IPv4", "IPv6"],
                "ports": [{ "name": "http", "port": 80, "nodePort": 30080 }],
            },
        }))
        .unwrap();
        let slice = |family: &str, addr: &str| -> crate::model::slice::Slice {
            serde_json::from_value(serde_json::json!({
                "metadata": { "name": format!("web-{family}"), "namespace": "ns",
                              "labels": { "kubernetes.io/service-name": "web" } },
                "addressType": family,
                "ports": [{ "name": "http", "port": 8080, "protocol": "TCP" }],
                "endpoints": [{ "addresses": [addr], "nodeName": "n" }],
            }))
            .unwrap()
        };
        let node = NodeContext {
            external_ip_cidrs: None,
            lb_ip_cidrs: None,
            name: "n".into(),
            addresses: vec!["192.168.0.10".parse().unwrap(), "fd00::10".parse().unwrap()],
            zone: None,
        };
        let (desired, _) = crate::compile::compile_all(&[svc], &[slice("IPv4", "10.0.1.1"), slice("IPv6", "fd00:1::1")], &node);
        map_state(&desired, &mut PlanMemory::default(), &PlanConfig::default())
    }

    /// Point 55: `lb service list` shows both families of a dual-stack Service as their own rows
    /// (one per family and endpoint set: ClusterIP, NodePort), each with only its family's
    /// frontends and backends.
    #[test]
    fn point_55_service_list_shows_both_families() {
        let st = dual_stack_state();
        let json: serde_json::Value = serde_json::from_str(&render_service_list(&st, Output::Json, &Filter::default())).unwrap();
        let strings = |v: &serde_json::Value| -> Vec<String> {
            v.as_array().unwrap().iter().map(|s| s.as_str().unwrap().to_owned()).collect()
        };
        // service name -> (svc ids, frontends, backends) over its rows.
        type Rows = (Vec<u64>, Vec<String>, Vec<String>);
        let mut by_name: BTreeMap<String, Rows> = BTreeMap::new();
        for row in json.as_array().unwrap() {
            let e = by_name.entry(row["service"].as_str().unwrap().to_owned()).or_default();
            e.0.push(row["id"].as_u64().unwrap());
            e.1.extend(strings(&row["frontends"]));
            e.2.extend(row["backends"].as_array().unwrap().iter().map(|b| b["address"].as_str().unwrap().to_owned()));
        }
        assert_eq!(by_name.keys().collect::<Vec<_>>(), ["ns/web:http/TCP", "ns/web:http/TCP/IPv6"], "{json:#}");
        let (ids4, mut fe4, mut be4) = by_name["ns/web:http/TCP"].clone();
        let (ids6, mut fe6, mut be6) = by_name["ns/web:http/TCP/IPv6"].clone();
        assert!(ids4.iter().all(|id| !ids6.contains(id)), "one svc_id per family: {json:#}");
        for v in [&mut fe4, &mut be4, &mut fe6, &mut be6] {
            v.sort();
            v.dedup();
        }
        assert_eq!(fe4, ["10.96.0.10:80/TCP", "192.168.0.10:30080/TCP"]);
        assert_eq!(fe6, ["[fd00:96::10]:80/TCP", "[fd00::10]:30080/TCP"]);
        assert_eq!(be4, ["10.0.1.1:8080"]);
        assert_eq!(be6, ["[fd00:1::1]:8080"]);
        // In the table: the IPv4 rows, then the IPv6 rows.
        // In the table: a row per frontend, the IPv4 ones, then the IPv6 ones, each with the
        // Service's type and the frontend's kind.
        let table = render_service_list(&st, Output::Table, &Filter::default());
        let rows: Vec<Vec<&str>> = table.lines().skip(1).map(|l| l.split_whitespace().collect()).collect();
        let names: Vec<&str> = rows.iter().map(|r| r[0]).collect();
        assert_eq!(names, ["ns/web:http/TCP", "ns/web:http/TCP", "ns/web:http/TCP/IPv6", "ns/web:http/TCP/IPv6"], "{table}");
        let kinds: Vec<(&str, &str, &str)> = rows.iter().map(|r| (r[1], r[2], r[3])).collect();
        assert_eq!(
            kinds,
            [
                ("NodePort", "10.96.0.10:80/TCP", "ClusterIP"),
                ("NodePort", "192.168.0.10:30080/TCP", "NodePort"),
                ("NodePort", "[fd00:96::10]:80/TCP", "ClusterIP"),
                ("NodePort", "[fd00::10]:30080/TCP", "NodePort"),
            ],
            "{table}"
        );
        assert!(table.contains("[fd00:1::1]:8080 (active)"), "{table}");
        assert_eq!(json[0]["type"], "NodePort", "{json:#}");
    }

    /// `lb service get ns/web` is the rows of that Service only (both families, every port).
    #[test]
    fn get_shows_one_service() {
        let st = dual_stack_state();
        let all = render_service_list(&st, Output::Table, &Filter::default());
        let only = |prefix: &str| Filter { prefix: Some(prefix.into()), ..Filter::default() };
        assert_eq!(render_service_list(&st, Output::Table, &only("ns/web:")), all);
        let none = render_service_list(&st, Output::Json, &only("ns/other:"));
        assert_eq!(none.trim(), "[]");
    }

    /// `--namespace` and `--type` keep the Services of that namespace and type.
    #[test]
    fn list_filters_by_namespace_and_type() {
        let st = dual_stack_state();
        let all = render_service_list(&st, Output::Table, &Filter::default());
        let f = |namespace: Option<&str>, t: Option<&str>| Filter {
            prefix: None,
            namespace: namespace.map(Into::into),
            service_type: t.map(Into::into),
            selector: None,
        };
        assert_eq!(render_service_list(&st, Output::Table, &f(Some("ns"), Some("nodeport"))), all);
        for other in [f(Some("kube-system"), None), f(None, Some("LoadBalancer")), f(None, Some("ClusterIP"))] {
            assert_eq!(render_service_list(&st, Output::Json, &other).trim(), "[]", "{other:?}");
        }
    }

    /// `--selector` takes kubectl's equality-based requirements.
    #[test]
    fn selectors_match_labels_as_kubectl_does() {
        let sel = |s: &str| s.parse::<Selector>().unwrap();
        let labels = "app=kubia,tier=front";
        assert!(sel("app=kubia").matches(labels));
        assert!(sel("app==kubia,tier").matches(labels));
        assert!(sel("tier!=back,!canary").matches(labels));
        assert!(!sel("app=other").matches(labels));
        assert!(!sel("canary").matches(labels));
        assert!(!sel("app=kubia,!tier").matches(labels));
        assert!(sel("app!=kubia").matches(""), "no label: not equal");
        for bad in ["", "app in (a,b)", "=x"] {
            assert!(bad.parse::<Selector>().is_err(), "{bad:?}");
        }
    }
}
