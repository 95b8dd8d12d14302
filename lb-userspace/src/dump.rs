//! What the CLI prints from a running agent's pinned maps: `lb maps dump <map>`, and the joined
//! views `lb service list`, `lb stats` and `lb status`. Tables for people, `-o json` for scripts.

use std::{collections::BTreeMap, fmt::Write as _, net::IpAddr};

use lb_common::{
    COUNTER_NAMES, CT_DIR_FORWARD, MAGLEV_CHUNK, SVC_F_ADDR_MARKER, SVC_F_AFFINITY, SVC_F_DROP_IF_EMPTY, SVC_F_EXTERNAL,
    SVC_F_MAGLEV, SVC_F_SNAT, SVC_F_SOURCE_RANGES, ServiceValue,
};
use serde::Serialize;

use crate::{
    dataplane::{DataplaneError, monotonic_ns},
    model::Protocol,
    pinned::PinnedMaps,
    plan::{MapState, ip_from16},
};

/// Which map to dump.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Table {
    Services,
    Backends,
    Select,
    Maglev,
    Affinity,
    Conntrack,
    Stats,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Output {
    #[default]
    Table,
    Json,
}

fn proto_name(n: u8) -> String {
    Protocol::from_number(n).map_or_else(|| n.to_string(), |p| p.as_str().to_owned())
}

/// `a.b.c.d:port` for an IPv4(-mapped) address, `[v6]:port` for IPv6.
fn endpoint(addr: [u8; 16], port_be: u16) -> String {
    match ip_from16(addr) {
        IpAddr::V4(a) => format!("{a}:{}", u16::from_be(port_be)),
        IpAddr::V6(a) => format!("[{a}]:{}", u16::from_be(port_be)),
    }
}

fn flag_names(flags: u32) -> Vec<&'static str> {
    [
        (SVC_F_EXTERNAL, "external"),
        (SVC_F_SNAT, "snat"),
        (SVC_F_AFFINITY, "affinity"),
        (SVC_F_MAGLEV, "maglev"),
        (SVC_F_DROP_IF_EMPTY, "drop-if-empty"),
        (SVC_F_SOURCE_RANGES, "source-ranges"),
    ]
    .into_iter()
    .filter(|(bit, _)| flags & bit != 0)
    .map(|(_, n)| n)
    .collect()
}

fn service_name(st: &MapState, svc_id: u32) -> String {
    st.names.get(&svc_id).map_or_else(|| format!("svc-{svc_id}"), |n| n.as_str().to_owned())
}

fn out<T: Serialize>(output: Output, rows: &[T], header: &[&str], cells: impl Fn(&T) -> Vec<String>) -> String {
    match output {
        Output::Json => {
            // Serializing plain rows of strings and numbers cannot fail.
            let mut s = serde_json::to_string_pretty(rows).unwrap_or_default();
            s.push('\n');
            s
        }
        Output::Table => render(header, rows.iter().map(cells)),
    }
}

#[derive(Serialize)]
struct ServiceRow {
    frontend: String,
    address: IpAddr,
    port: u16,
    protocol: String,
    service: String,
    svc_id: u32,
    select_id: u32,
    slots: u32,
    flags: Vec<&'static str>,
    affinity_timeout_s: u32,
}

#[derive(Serialize)]
struct BackendRow {
    id: u32,
    /// `address:port`, `[address]:port` for IPv6 (the table's column; JSON has the parts).
    #[serde(skip)]
    backend: String,
    address: IpAddr,
    port: u16,
    protocol: String,
    local: bool,
    terminating: bool,
}

#[derive(Serialize)]
struct SelectRow {
    select_id: u32,
    slot: u32,
    backend_id: u32,
}

#[derive(Serialize)]
struct MaglevRow {
    select_id: u32,
    /// Slots of the table (its size M is the service's slot count).
    slots: u32,
    /// Backend id → slots it owns.
    share: BTreeMap<u32, u32>,
}

#[derive(Serialize)]
struct AffinityRow {
    client: IpAddr,
    service: String,
    backend_id: u32,
    idle_s: u64,
}

#[derive(Serialize)]
struct CtRow {
    direction: &'static str,
    source: String,
    destination: String,
    protocol: String,
    nat_to: String,
    snat: Option<String>,
    backend_id: u32,
    service: String,
    idle_s: u64,
    closing: bool,
}

#[derive(Serialize)]
struct StatRow {
    counter: &'static str,
    value: u64,
}

fn service_rows(st: &MapState) -> Vec<ServiceRow> {
    st.services
        .iter()
        .filter(|(_, v)| v.flags & SVC_F_ADDR_MARKER == 0)
        .map(|(k, v)| ServiceRow {
            frontend: endpoint(k.addr, k.port_be),
            address: ip_from16(k.addr),
            port: u16::from_be(k.port_be),
            protocol: proto_name(k.proto),
            service: service_name(st, v.svc_id),
            svc_id: v.svc_id,
            select_id: v.select_id,
            slots: v.slot_count,
            flags: flag_names(v.flags),
            affinity_timeout_s: v.affinity_timeout_s,
        })
        .collect()
}

/// `lb maps dump services`.
fn services_table(st: &MapState, output: Output) -> String {
    let rows = service_rows(st);
    out(output, &rows, &["FRONTEND", "PROTO", "SERVICE", "SLOTS", "FLAGS"], |r| {
        vec![r.frontend.clone(), r.protocol.clone(), r.service.clone(), r.slots.to_string(), r.flags.join(",")]
    })
}

/// `lb maps dump backends`.
fn backends_table(st: &MapState, output: Output) -> String {
    let rows: Vec<BackendRow> = st
        .backends
        .iter()
        .map(|(id, b)| BackendRow {
            id: *id,
            backend: endpoint(b.addr, b.port_be),
            address: ip_from16(b.addr),
            port: u16::from_be(b.port_be),
            protocol: proto_name(b.proto),
            local: b.flags & lb_common::BACKEND_F_LOCAL != 0,
            terminating: b.flags & lb_common::BACKEND_F_TERMINATING != 0,
        })
        .collect();
    out(output, &rows, &["ID", "BACKEND", "PROTO", "LOCAL", "TERMINATING"], |r| {
        vec![r.id.to_string(), r.backend.clone(), r.protocol.clone(), r.local.to_string(), r.terminating.to_string()]
    })
}

/// Renders `table` from the maps pinned at `maps`.
pub fn dump(maps: &PinnedMaps, table: Table, output: Output) -> Result<String, DataplaneError> {
    let now = monotonic_ns();
    let idle = |t: u64| now.saturating_sub(t) / 1_000_000_000;
    Ok(match table {
        Table::Services => services_table(&maps.state()?, output),
        Table::Backends => backends_table(&maps.state()?, output),
        Table::Select => {
            let rows: Vec<SelectRow> = maps
                .state()?
                .select
                .into_iter()
                .map(|(k, v)| SelectRow { select_id: k.select_id, slot: k.slot, backend_id: v })
                .collect();
            out(output, &rows, &["SELECT-ID", "SLOT", "BACKEND-ID"], |r| {
                vec![r.select_id.to_string(), r.slot.to_string(), r.backend_id.to_string()]
            })
        }
        Table::Maglev => {
            let st = maps.state()?;
            let sizes: BTreeMap<u32, u32> = st
                .services
                .values()
                .filter(|v| v.flags & SVC_F_MAGLEV != 0)
                .flat_map(|v: &ServiceValue| [(v.select_id, v.slot_count), (v.cluster_select_id, v.cluster_slot_count)])
                .collect();
            let mut rows: BTreeMap<u32, MaglevRow> = BTreeMap::new();
            for (k, chunk) in &st.maglev {
                let m = sizes.get(&k.select_id).copied().unwrap_or(0);
                let row =
                    rows.entry(k.select_id).or_insert(MaglevRow { select_id: k.select_id, slots: m, share: BTreeMap::new() });
                for (i, id) in chunk.ids.iter().enumerate() {
                    if k.chunk * MAGLEV_CHUNK + (i as u32) < m {
                        *row.share.entry(*id).or_default() += 1;
                    }
                }
            }
            let rows: Vec<MaglevRow> = rows.into_values().collect();
            out(output, &rows, &["SELECT-ID", "TABLE-SIZE", "BACKEND-ID:SLOTS"], |r| {
                vec![
                    r.select_id.to_string(),
                    r.slots.to_string(),
                    r.share.iter().map(|(b, n)| format!("{b}:{n}")).collect::<Vec<_>>().join(" "),
                ]
            })
        }
        Table::Affinity => {
            let st = maps.state()?;
            let rows: Vec<AffinityRow> = maps
                .affinity()?
                .into_iter()
                .map(|(k, v)| AffinityRow {
                    client: ip_from16(k.client),
                    service: service_name(&st, k.svc_id),
                    backend_id: v.backend_id,
                    idle_s: idle(v.last_used_ns),
                })
                .collect();
            out(output, &rows, &["CLIENT", "SERVICE", "BACKEND-ID", "IDLE-S"], |r| {
                vec![r.client.to_string(), r.service.clone(), r.backend_id.to_string(), r.idle_s.to_string()]
            })
        }
        Table::Conntrack => {
            let st = maps.state()?;
            let mut rows: Vec<CtRow> = maps
                .conntrack()?
                .into_iter()
                .map(|(k, v)| CtRow {
                    direction: if k.dir == CT_DIR_FORWARD { "forward" } else { "reply" },
                    source: endpoint(k.src, k.sport_be),
                    destination: endpoint(k.dst, k.dport_be),
                    protocol: proto_name(k.proto),
                    nat_to: endpoint(v.nat_addr, v.nat_port_be),
                    snat: (v.flags & lb_common::CT_F_SNAT != 0).then(|| endpoint(v.snat_addr, v.snat_port_be)),
                    backend_id: v.backend_id,
                    service: service_name(&st, v.svc_id),
                    idle_s: idle(v.last_seen_ns),
                    closing: v.flags & lb_common::CT_F_CLOSING != 0,
                })
                .collect();
            rows.sort_by(|a, b| (a.direction, &a.source, &a.destination).cmp(&(b.direction, &b.source, &b.destination)));
            out(output, &rows, &["DIR", "SOURCE", "DESTINATION", "PROTO", "NAT", "SNAT", "SERVICE", "IDLE-S", "CLOSING"], |r| {
                vec![
                    r.direction.to_owned(),
                    r.source.clone(),
                    r.destination.clone(),
                    r.protocol.clone(),
                    r.nat_to.clone(),
                    r.snat.clone().unwrap_or_else(|| "-".into()),
                    r.service.clone(),
                    r.idle_s.to_string(),
                    r.closing.to_string(),
                ]
            })
        }
        Table::Stats => {
            let rows: Vec<StatRow> =
                maps.counters()?.into_iter().zip(COUNTER_NAMES).map(|(value, counter)| StatRow { counter, value }).collect();
            out(output, &rows, &["COUNTER", "VALUE"], |r| vec![r.counter.to_owned(), r.value.to_string()])
        }
    })
}

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
pub fn service_list(maps: &PinnedMaps, output: Output) -> Result<String, DataplaneError> {
    Ok(render_service_list(&maps.state()?, output))
}

fn render_service_list(st: &MapState, output: Output) -> String {
    let mut views: Vec<ServiceView> = Vec::new();
    // One row per (ServicePort, endpoint set): frontends sharing a table are listed together.
    let mut by_table: BTreeMap<(u32, u32), usize> = BTreeMap::new();
    for (k, v) in st.services.iter().filter(|(_, v)| v.flags & SVC_F_ADDR_MARKER == 0) {
        let i = *by_table.entry((v.svc_id, v.select_id)).or_insert_with(|| {
            let backends = st
                .members
                .iter()
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

#[derive(Serialize)]
struct StatsView {
    counters: BTreeMap<&'static str, u64>,
    services: Vec<FlowStats>,
    backends: Vec<FlowStats>,
}

#[derive(Serialize)]
struct FlowStats {
    name: String,
    packets: u64,
    bytes: u64,
    new_flows: u64,
}

/// `lb stats`: per-service and per-backend counters, verdicts and drop reasons.
pub fn stats(maps: &PinnedMaps, output: Output) -> Result<String, DataplaneError> {
    let st = maps.state()?;
    let counters: BTreeMap<&'static str, u64> = COUNTER_NAMES.into_iter().zip(maps.counters()?).collect();
    let services = maps
        .service_counters()?
        .into_iter()
        .map(|(id, s)| FlowStats { name: service_name(&st, id), packets: s.packets, bytes: s.bytes, new_flows: s.new_flows })
        .collect();
    let backends = maps
        .backend_counters()?
        .into_iter()
        .map(|(id, s)| FlowStats {
            name: st.backends.get(&id).map_or_else(|| format!("backend-{id} (removed)"), |b| endpoint(b.addr, b.port_be)),
            packets: s.packets,
            bytes: s.bytes,
            new_flows: s.new_flows,
        })
        .collect();
    let mut view = StatsView { counters, services, backends };
    view.services.sort_by(|a, b| a.name.cmp(&b.name));
    view.backends.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(match output {
        Output::Json => {
            let mut s = serde_json::to_string_pretty(&view).unwrap_or_default();
            s.push('\n');
            s
        }
        Output::Table => {
            let flows = |title: &str, rows: &[FlowStats]| {
                render(
                    &[title, "PACKETS", "BYTES", "NEW-FLOWS"],
                    rows.iter()
                        .map(|r| vec![r.name.clone(), r.packets.to_string(), r.bytes.to_string(), r.new_flows.to_string()]),
                )
            };
            let nonzero = view.counters.iter().filter(|(_, v)| **v > 0).map(|(k, v)| vec![(*k).to_owned(), v.to_string()]);
            format!(
                "{}\n{}\n{}",
                render(&["COUNTER", "VALUE"], nonzero),
                flows("SERVICE", &view.services),
                flows("BACKEND", &view.backends)
            )
        }
    })
}

#[derive(Serialize)]
struct StatusView {
    pin_path: String,
    layout_version: u32,
    agent_version: String,
    cli_version: &'static str,
    /// The account of the agent that owns the pins (`None`: no agent ever wrote one).
    agent: Option<AgentView>,
    attachments: Vec<Attachment>,
    maps: Vec<MapFill>,
}

#[derive(Serialize)]
struct AgentView {
    #[serde(flatten)]
    report: crate::agent_status::AgentReport,
    /// Its process exists on this host.
    running: bool,
}

#[derive(Serialize)]
struct Attachment {
    /// Interface name, or `cgroup`.
    on: String,
    /// `xdp-native`, `xdp-generic`, `tc-ext`, `tc-pod`, `tc-egress`, or the socket hook.
    mode: String,
}

#[derive(Serialize)]
struct MapFill {
    map: &'static str,
    entries: Option<usize>,
    capacity: u32,
}

/// `lb status`: where the programs are attached (native XDP, generic, TC), map fill levels
/// against capacity, map layout version and the agent's version.
pub fn status(maps: &PinnedMaps, output: Output) -> Result<String, DataplaneError> {
    let meta = maps.meta()?;
    let v = meta.agent_version;
    let view = StatusView {
        pin_path: maps.pin_path().display().to_string(),
        layout_version: meta.layout_version,
        agent_version: format!("{}.{}.{}", v[0], v[1], v[2]),
        cli_version: env!("CARGO_PKG_VERSION"),
        agent: maps
            .agent()
            .map(|report| AgentView { running: std::path::Path::new(&format!("/proc/{}", report.pid)).exists(), report }),
        attachments: maps.attachments().into_iter().map(|(on, mode)| Attachment { on, mode }).collect(),
        maps: maps.fill_levels().into_iter().map(|(map, entries, capacity)| MapFill { map, entries, capacity }).collect(),
    };
    Ok(match output {
        Output::Json => {
            let mut s = serde_json::to_string_pretty(&view).unwrap_or_default();
            s.push('\n');
            s
        }
        Output::Table => {
            let mut s = format!(
                "pin path: {}\nlayout version: {}\nagent version: {} (this CLI: {})\n",
                view.pin_path, view.layout_version, view.agent_version, view.cli_version
            );
            s.push_str(&agent_lines(view.agent.as_ref(), std::time::SystemTime::now()));
            s.push('\n');
            s.push_str(&render(&["ATTACHED TO", "MODE"], view.attachments.iter().map(|a| vec![a.on.clone(), a.mode.clone()])));
            s.push('\n');
            s.push_str(&render(
                &["MAP", "ENTRIES", "CAPACITY", "FILL"],
                view.maps.iter().map(|m| {
                    let (entries, fill) = match m.entries {
                        Some(n) => (n.to_string(), format!("{:.1}%", n as f64 * 100.0 / f64::from(m.capacity.max(1)))),
                        None => ("-".into(), "-".into()),
                    };
                    vec![m.map.to_owned(), entries, m.capacity.to_string(), fill]
                }),
            ));
            s
        }
    })
}

/// The agent part of `lb status`.
fn agent_lines(agent: Option<&AgentView>, now: std::time::SystemTime) -> String {
    use crate::agent_status::ago;
    let Some(a) = agent else {
        return "agent: none has written its status here\n".into();
    };
    let r = &a.report;
    let mut s = if a.running {
        format!("agent: pid {}, running for {}\n", r.pid, ago(r.started_unix_ms, now))
    } else {
        format!(
            "agent: pid {} is not running (started {} ago); the datapath serves the last state\n",
            r.pid,
            ago(r.started_unix_ms, now)
        )
    };
    match r.last_sync_unix_ms {
        Some(t) => s.push_str(&format!("last sync: {} ago\n", ago(t, now))),
        None => s.push_str("last sync: none yet\n"),
    }
    if let Some((t, e)) = &r.last_error {
        s.push_str(&format!("last error ({} ago): {e}\n", ago(*t, now)));
    }
    if r.problems_total > 0 {
        s.push_str(&format!("problems ({}):\n", r.problems_total));
        for p in &r.problems {
            s.push_str(&format!("  {p}\n"));
        }
        if r.problems_total > r.problems.len() {
            s.push_str(&format!("  ... and {} more (see the agent's log)\n", r.problems_total - r.problems.len()));
        }
    }
    s
}

/// A left-aligned text table.
pub fn render(header: &[&str], rows: impl Iterator<Item = Vec<String>>) -> String {
    let rows: Vec<Vec<String>> = rows.collect();
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in &rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.len());
        }
    }
    let mut out = String::new();
    let mut line = |cells: Vec<&str>| {
        let mut l = String::new();
        for (i, (c, w)) in cells.iter().zip(&widths).enumerate() {
            if i + 1 == cells.len() {
                l.push_str(c);
            } else {
                let _ = write!(l, "{c:<w$}  ");
            }
        }
        out.push_str(l.trim_end());
        out.push('\n');
    };
    line(header.to_vec());
    for r in &rows {
        line(r.iter().map(String::as_str).collect());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align_columns() {
        let t = render(&["A", "LONGER"], vec![vec!["xxxx".into(), "1".into()], vec!["y".into(), "22".into()]].into_iter());
        assert_eq!(t, "A     LONGER\nxxxx  1\ny     22\n");
    }

    #[test]
    fn flags_are_named() {
        assert_eq!(flag_names(SVC_F_EXTERNAL | SVC_F_SNAT | SVC_F_MAGLEV), ["external", "snat", "maglev"]);
        assert!(flag_names(0).is_empty());
    }

    #[test]
    fn ipv6_endpoints_print_bracketed_ipv4_plain() {
        let v6: std::net::Ipv6Addr = "fd00:96::10".parse().unwrap();
        assert_eq!(endpoint(v6.octets(), 80u16.to_be()), "[fd00:96::10]:80");
        assert_eq!(endpoint(lb_common::v4_mapped([10, 96, 0, 10]), 80u16.to_be()), "10.96.0.10:80");
    }

    /// A dual-stack Service (ClusterIP and NodePort in both families) as the agent plans it.
    fn dual_stack_state() -> MapState {
        use crate::{
            compile::NodeContext,
            plan::{Ids, PlanConfig, map_state},
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
            name: "n".into(),
            addresses: vec!["192.168.0.10".parse().unwrap(), "fd00::10".parse().unwrap()],
            zone: None,
        };
        let (desired, _) = crate::compile::compile_all(&[svc], &[slice("IPv4", "10.0.1.1"), slice("IPv6", "fd00:1::1")], &node);
        map_state(&desired, &mut Ids::default(), &PlanConfig::default())
    }

    /// Point 55: `lb maps dump services` and `backends` print IPv6 addresses as `[addr]:port`.
    #[test]
    fn point_55_maps_dump_prints_ipv6_bracketed() {
        let st = dual_stack_state();
        let services = services_table(&st, Output::Table);
        for want in ["[fd00:96::10]:80", "[fd00::10]:30080", "ns/web:http/TCP/IPv6", "10.96.0.10:80", "192.168.0.10:30080"] {
            assert!(services.contains(want), "missing {want} in\n{services}");
        }
        let backends = backends_table(&st, Output::Table);
        assert!(backends.contains("[fd00:1::1]:8080") && backends.contains("10.0.1.1:8080"), "{backends}");
        let json: serde_json::Value = serde_json::from_str(&backends_table(&st, Output::Json)).unwrap();
        let addrs: Vec<&str> = json.as_array().unwrap().iter().map(|b| b["address"].as_str().unwrap()).collect();
        assert!(addrs.contains(&"fd00:1::1") && addrs.contains(&"10.0.1.1"), "{json:#}");
    }

    /// Point 55: `lb service list` shows both families of a dual-stack Service as their own rows
    /// (one per family and endpoint set: ClusterIP, NodePort), each with only its family's
    /// frontends and backends.
    #[test]
    fn point_55_service_list_shows_both_families() {
        let st = dual_stack_state();
        let json: serde_json::Value = serde_json::from_str(&render_service_list(&st, Output::Json)).unwrap();
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
        let table = render_service_list(&st, Output::Table);
        let names: Vec<&str> = table.lines().skip(1).filter_map(|l| l.split_whitespace().next()).collect();
        assert_eq!(names, ["ns/web:http/TCP", "ns/web:http/TCP", "ns/web:http/TCP/IPv6", "ns/web:http/TCP/IPv6"], "{table}");
        assert!(table.contains("[fd00:96::10]:80/TCP") && table.contains("[fd00:1::1]:8080 (active)"), "{table}");
    }
}
