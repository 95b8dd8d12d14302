//! `lb service list`: every Service port as the datapath holds it, each frontend with its
//! backends and their state (like `cilium service list`); `lb service get NAMESPACE/NAME`: one
//! Service's rows.

use std::collections::BTreeMap;

use lb_common::SVC_F_ADDR_MARKER;
use serde::Serialize;

use super::output::{Output, endpoint, flag_names, proto_name, render, service_name};
use crate::maps::{MapError, MapState, pinned::PinnedMaps};

#[derive(Serialize)]
struct ServiceView {
    id: u32,
    service: String,
    frontends: Vec<String>,
    kind: Vec<&'static str>,
    backends: Vec<BackendView>,
}

#[derive(Serialize)]
struct BackendView {
    id: u32,
    address: String,
    state: &'static str,
}

/// `lb service list`: every frontend → its backends, grouped by ServicePort (like
/// `cilium service list`). A dual-stack Service's port is two rows, one per family (names
/// `ns/name:port/TCP` and `ns/name:port/TCP/IPv6`).
pub fn list(maps: &PinnedMaps, output: Output) -> Result<String, MapError> {
    Ok(render_service_list(&maps.state()?, output, None))
}

/// `lb service get NAMESPACE/NAME`: the rows of one Service (every port and family); `None`
/// when the maps hold none of it.
pub fn get(maps: &PinnedMaps, name: &str, output: Output) -> Result<Option<String>, MapError> {
    let st = maps.state()?;
    let prefix = format!("{name}:");
    let held = st.names.values().any(|n| n.as_str().starts_with(&prefix));
    Ok(held.then(|| render_service_list(&st, output, Some(&prefix))))
}

/// The rows of every ServicePort, or of those whose name starts with `only`.
fn render_service_list(st: &MapState, output: Output, only: Option<&str>) -> String {
    let mut views: Vec<ServiceView> = Vec::new();
    // One row per (ServicePort, endpoint set): frontends sharing a table are listed together.
    let mut by_table: BTreeMap<(u32, u32), usize> = BTreeMap::new();
    for (k, v) in st.services.iter().filter(|(_, v)| v.flags & SVC_F_ADDR_MARKER == 0) {
        let i = *by_table.entry((v.svc_id, v.select_id)).or_insert_with(|| {
            let backends = st
                .members
                .keys()
                .filter(|m| m.select_id == v.select_id)
                .filter_map(|m| st.backends.get(&m.backend_id).map(|b| (m.backend_id, b)))
                .map(|(id, b)| BackendView {
                    id,
                    address: endpoint(b.addr, b.port_be),
                    state: if b.flags & lb_common::BACKEND_F_TERMINATING != 0 { "terminating" } else { "active" },
                })
                .collect();
            views.push(ServiceView {
                id: v.svc_id,
                service: service_name(st, v.svc_id),
                frontends: Vec::new(),
                kind: flag_names(v.flags),
                backends,
            });
            views.len() - 1
        });
        views[i].frontends.push(format!("{}/{}", endpoint(k.addr, k.port_be), proto_name(k.proto)));
    }
    views.retain(|v| only.is_none_or(|p| v.service.starts_with(p)));
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
                for (i, b) in backends.iter().enumerate() {
                    let first = i == 0;
                    rows.push(vec![
                        if first { v.service.clone() } else { String::new() },
                        if first { v.frontends.join(" ") } else { String::new() },
                        if first { v.kind.join(",") } else { String::new() },
                        b.clone(),
                    ]);
                }
            }
            render(&["SERVICE", "FRONTENDS", "FLAGS", "BACKENDS"], rows.into_iter())
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
        let slice = |family: &str, addr: &str| -> k8s_openapi::api::discovery::v1::EndpointSlice {
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
        let json: serde_json::Value = serde_json::from_str(&render_service_list(&st, Output::Json, None)).unwrap();
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
        let table = render_service_list(&st, Output::Table, None);
        let names: Vec<&str> = table.lines().skip(1).filter_map(|l| l.split_whitespace().next()).collect();
        assert_eq!(names, ["ns/web:http/TCP", "ns/web:http/TCP", "ns/web:http/TCP/IPv6", "ns/web:http/TCP/IPv6"], "{table}");
        assert!(table.contains("[fd00:96::10]:80/TCP") && table.contains("[fd00:1::1]:8080 (active)"), "{table}");
    }

    /// `lb service get ns/web` is the rows of that Service only (both families, every port).
    #[test]
    fn get_shows_one_service() {
        let st = dual_stack_state();
        let all = render_service_list(&st, Output::Table, None);
        assert_eq!(render_service_list(&st, Output::Table, Some("ns/web:")), all);
        let none = render_service_list(&st, Output::Json, Some("ns/other:"));
        assert_eq!(none.trim(), "[]");
    }
}
