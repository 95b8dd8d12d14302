//! `lb maps dump`: the pinned maps of a running agent as tables or JSON.

use std::{fmt::Write as _, net::IpAddr};

use lb_common::{
    COUNTER_NAMES, CT_DIR_FORWARD, SVC_F_ADDR_MARKER, SVC_F_AFFINITY, SVC_F_DROP_IF_EMPTY,
    SVC_F_EXTERNAL,
};
use serde::Serialize;

use crate::{
    dataplane::DataplaneError,
    pinned::PinnedMaps,
    model::Protocol,
    plan::ip_from16,
};

/// Which map to dump.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Table {
    Services,
    Backends,
    Select,
    Conntrack,
    Stats,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Output {
    #[default]
    Table,
    Json,
}

#[derive(Serialize)]
struct ServiceRow {
    frontend: String,
    address: IpAddr,
    port: u16,
    protocol: String,
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
struct CtRow {
    direction: &'static str,
    source: String,
    destination: String,
    protocol: String,
    nat_to: String,
    backend_id: u32,
    svc_id: u32,
    closing: bool,
}

#[derive(Serialize)]
struct StatRow {
    counter: &'static str,
    value: u64,
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
    let mut v = Vec::new();
    for (bit, name) in [
        (SVC_F_EXTERNAL, "external"),
        (SVC_F_AFFINITY, "affinity"),
        (SVC_F_DROP_IF_EMPTY, "drop-if-empty"),
    ] {
        if flags & bit != 0 {
            v.push(name);
        }
    }
    v
}

/// Renders `table` from the maps pinned at `maps`.
pub fn dump(maps: &PinnedMaps, table: Table, output: Output) -> Result<String, DataplaneError> {
    let json = output == Output::Json;
    let text = match table {
        Table::Services => {
            let rows: Vec<ServiceRow> = maps
                .state()?
                .services
                .into_iter()
                .filter(|(_, v)| v.flags & SVC_F_ADDR_MARKER == 0)
                .map(|(k, v)| ServiceRow {
                    frontend: endpoint(k.addr, k.port_be),
                    address: ip_from16(k.addr),
                    port: u16::from_be(k.port_be),
                    protocol: proto_name(k.proto),
                    svc_id: v.svc_id,
                    select_id: v.select_id,
                    slots: v.slot_count,
                    flags: flag_names(v.flags),
                    affinity_timeout_s: v.affinity_timeout_s,
                })
                .collect();
            if json {
                to_json(&rows)
            } else {
                render(
                    &["FRONTEND", "PROTO", "SVC-ID", "SELECT-ID", "SLOTS", "FLAGS"],
                    rows.iter().map(|r| {
                        vec![
                            r.frontend.clone(),
                            r.protocol.clone(),
                            r.svc_id.to_string(),
                            r.select_id.to_string(),
                            r.slots.to_string(),
                            r.flags.join(","),
                        ]
                    }),
                )
            }
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
            if json {
                to_json(&rows)
            } else {
                render(
                    &["ID", "BACKEND", "PROTO", "LOCAL", "TERMINATING"],
                    rows.iter().map(|r| {
                        vec![
                            r.id.to_string(),
                            endpoint(crate::plan::addr16(r.address), r.port.to_be()),
                            r.protocol.clone(),
                            r.local.to_string(),
                            r.terminating.to_string(),
                        ]
                    }),
                )
            }
        }
        Table::Select => {
            let rows: Vec<SelectRow> = maps
                .state()?
                .select
                .into_iter()
                .map(|(k, v)| SelectRow {
                    select_id: k.select_id,
                    slot: k.slot,
                    backend_id: v,
                })
                .collect();
            if json {
                to_json(&rows)
            } else {
                render(
                    &["SELECT-ID", "SLOT", "BACKEND-ID"],
                    rows.iter().map(|r| {
                        vec![
                            r.select_id.to_string(),
                            r.slot.to_string(),
                            r.backend_id.to_string(),
                        ]
                    }),
                )
            }
        }
        Table::Conntrack => {
            let mut rows: Vec<CtRow> = maps
                .conntrack()?
                .into_iter()
                .map(|(k, v)| CtRow {
                    direction: if k.dir == CT_DIR_FORWARD {
                        "forward"
                    } else {
                        "reply"
                    },
                    source: endpoint(k.src, k.sport_be),
                    destination: endpoint(k.dst, k.dport_be),
                    protocol: proto_name(k.proto),
                    nat_to: endpoint(v.nat_addr, v.nat_port_be),
                    backend_id: v.backend_id,
                    svc_id: v.svc_id,
                    closing: v.flags & lb_common::CT_F_CLOSING != 0,
                })
                .collect();
            rows.sort_by(|a, b| {
                (a.direction, &a.source, &a.destination).cmp(&(
                    b.direction,
                    &b.source,
                    &b.destination,
                ))
            });
            if json {
                to_json(&rows)
            } else {
                render(
                    &[
                        "DIR",
                        "SOURCE",
                        "DESTINATION",
                        "PROTO",
                        "NAT",
                        "BACKEND-ID",
                        "CLOSING",
                    ],
                    rows.iter().map(|r| {
                        vec![
                            r.direction.to_owned(),
                            r.source.clone(),
                            r.destination.clone(),
                            r.protocol.clone(),
                            r.nat_to.clone(),
                            r.backend_id.to_string(),
                            r.closing.to_string(),
                        ]
                    }),
                )
            }
        }
        Table::Stats => {
            let rows: Vec<StatRow> = maps
                .counters()?
                .into_iter()
                .zip(COUNTER_NAMES)
                .map(|(value, counter)| StatRow { counter, value })
                .collect();
            if json {
                to_json(&rows)
            } else {
                render(
                    &["COUNTER", "VALUE"],
                    rows.iter()
                        .map(|r| vec![r.counter.to_owned(), r.value.to_string()]),
                )
            }
        }
    };
    Ok(text)
}

fn to_json<T: Serialize>(rows: &T) -> String {
    // Serializing plain rows of strings and numbers cannot fail.
    let mut s = serde_json::to_string_pretty(rows).unwrap_or_default();
    s.push('\n');
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
