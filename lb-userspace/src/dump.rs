//! What the CLI prints from a running agent's pinned maps: `lb maps dump <map>`, and the joined
//! views `lb service list`, `lb stats` and `lb status`. Tables for people, `-o json` for scripts.

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    net::IpAddr,
};

use lb_common::{
    COUNTER_NAMES, CT_DIR_FORWARD, MAGLEV_CHUNK, SVC_F_ADDR_MARKER, SVC_F_AFFINITY,
    SVC_F_DROP_IF_EMPTY, SVC_F_EXTERNAL, SVC_F_MAGLEV, SVC_F_SNAT, SVC_F_SOURCE_RANGES,
    ServiceValue,
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

/// Renders `table` from the maps pinned at `maps`.
pub fn dump(maps: &PinnedMaps, table: Table, output: Output) -> Result<String, DataplaneError> {
    let now = monotonic_ns();
    let idle = |t: u64| now.saturating_sub(t) / 1_000_000_000;
    Ok(match table {
        Table::Services => {
            let rows = service_rows(&maps.state()?);
            out(output, &rows, &["FRONTEND", "PROTO", "SERVICE", "SLOTS", "FLAGS"], |r| {
                vec![r.frontend.clone(), r.protocol.clone(), r.service.clone(), r.slots.to_string(), r.flags.join(",")]
            })
        }
        Table::Backends => {
            let rows: Vec<BackendRow> = maps
                .state()?
                .backends
                .into_iter()
                .map(|(id, b)| BackendRow {
                    id,
                    address: ip_from16(b.addr),
                    port: u16::from_be(b.port_be),
                    protocol: proto_name(b.proto),
                    local: b.flags & lb_common::BACKEND_F_LOCAL != 0,
                    terminating: b.flags & lb_common::BACKEND_F_TERMINATING != 0,
                })
                .collect();
            out(output, &rows, &["ID", "BACKEND", "PROTO", "LOCAL", "TERMINATING"], |r| {
                vec![
                    r.id.to_string(),
                    endpoint(crate::plan::addr16(r.address), r.port.to_be()),
                    r.protocol.clone(),
                    r.local.to_string(),
                    r.terminating.to_string(),
                ]
            })
        }
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
                let row = rows.entry(k.select_id).or_insert(MaglevRow { select_id: k.select_id, slots: m, share: BTreeMap::new() });
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
/// `cilium service list`).
pub fn service_list(maps: &PinnedMaps, output: Output) -> Result<String, DataplaneError> {
    let st = maps.state()?;
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
                service: service_name(&st, v.svc_id),
                frontends: Vec::new(),
                kind: flag_names(v.flags),
                backends,
            });
            views.len() - 1
        });
        views[i].frontends.push(format!("{}/{}", endpoint(k.addr, k.port_be), proto_name(k.proto)));
    }
    views.sort_by(|a, b| (&a.service, &a.frontends).cmp(&(&b.service, &b.frontends)));
    Ok(match output {
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
    })
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
                    rows.iter().map(|r| vec![r.name.clone(), r.packets.to_string(), r.bytes.to_string(), r.new_flows.to_string()]),
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
    attachments: Vec<Attachment>,
    maps: Vec<MapFill>,
}

#[derive(Serialize)]
struct Attachment {
    /// Interface name, or `cgroup`.
    on: String,
    /// `xdp-native`, `xdp-generic`, `tc-ext`, `tc-pod`, or the socket hook.
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
                "pin path: {}\nlayout version: {}\nagent version: {} (this CLI: {})\n\n",
                view.pin_path, view.layout_version, view.agent_version, view.cli_version
            );
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
}
