//! `lb maps dump MAP`: one map of a running agent, entry by entry.

use std::{collections::BTreeMap, net::IpAddr};

use lb_common::{COUNTER_NAMES, CT_DIR_FORWARD, MAGLEV_CHUNK, SVC_F_ADDR_MARKER, SVC_F_MAGLEV, ServiceValue};
use serde::Serialize;

use super::output::{Output, endpoint, flag_names, out, proto_name, service_name};
use crate::maps::{MapError, MapState, ip_from16, monotonic_ns, pinned::PinnedMaps};

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
    /// Each table's members (the backends a Service's endpoint set holds).
    Members,
    /// `loadBalancerSourceRanges`: the LoadBalancer IP and the source prefixes it admits.
    SourceRanges,
    /// The socket programs' reverse translations (node processes' UDP sockets).
    SockRevnat,
}

/// Which conntrack entries `lb maps dump conntrack` shows (every given filter must match).
#[derive(Clone, Debug, Default, clap::Args)]
pub struct CtFilter {
    /// Only flows of this Service (`NAMESPACE/NAME`, any port and family).
    #[arg(long, value_name = "NAMESPACE/NAME")]
    pub service: Option<String>,
    /// Only flows translated to this backend (`IP` or `IP:PORT`, `[IPv6]:PORT`).
    #[arg(long, value_name = "IP[:PORT]")]
    pub backend: Option<String>,
    /// Only flows with this address anywhere: source, destination, translation or SNAT.
    #[arg(long, value_name = "IP")]
    pub addr: Option<IpAddr>,
}

impl CtFilter {
    fn is_empty(&self) -> bool {
        self.service.is_none() && self.backend.is_none() && self.addr.is_none()
    }

    fn keeps(&self, r: &CtRow, ips: [IpAddr; 4]) -> bool {
        self.service.as_ref().is_none_or(|s| r.service.starts_with(&format!("{s}:")))
            && self.backend.as_ref().is_none_or(|b| backend_matches(b, &r.backend))
            && self.addr.is_none_or(|a| ips.contains(&a))
    }
}

/// `IP` matches the backend's address, `IP:PORT` (or `[IPv6]:PORT`) the endpoint.
fn backend_matches(want: &str, endpoint: &str) -> bool {
    if want.contains(']') || want.matches(':').count() == 1 {
        return endpoint == want;
    }
    endpoint.rsplit_once(':').is_some_and(|(ip, _)| ip.trim_start_matches('[').trim_end_matches(']') == want)
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
    /// The backend's endpoint (the translation of the forward direction, the source of the
    /// reply).
    backend: String,
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
pub(super) fn services_table(st: &MapState, output: Output) -> String {
    let rows = service_rows(st);
    out(output, &rows, &["FRONTEND", "PROTO", "SERVICE", "SLOTS", "FLAGS"], |r| {
        vec![r.frontend.clone(), r.protocol.clone(), r.service.clone(), r.slots.to_string(), r.flags.join(",")]
    })
}

/// `lb maps dump backends`.
pub(super) fn backends_table(st: &MapState, output: Output) -> String {
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

#[derive(Serialize)]
struct MemberRow {
    select_id: u32,
    backend_id: u32,
    backend: String,
}

#[derive(Serialize)]
struct SourceRangeRow {
    frontend: IpAddr,
    source: String,
}

#[derive(Serialize)]
struct SockRevRow {
    socket_cookie: u64,
    backend: String,
    frontend: String,
}

/// Renders `table` from the maps pinned at `maps`; `filter` narrows the conntrack dump.
pub fn dump(maps: &PinnedMaps, table: Table, output: Output, filter: &CtFilter) -> Result<String, MapError> {
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
                for (i, id) in chunk.ids().iter().enumerate() {
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
        Table::Members => {
            let st = maps.state()?;
            let rows: Vec<MemberRow> = st
                .members
                .keys()
                .map(|m| MemberRow {
                    select_id: m.select_id,
                    backend_id: m.backend_id,
                    backend: st.backends.get(&m.backend_id).map_or_else(|| "(missing)".into(), |b| endpoint(b.addr, b.port_be)),
                })
                .collect();
            out(output, &rows, &["SELECT-ID", "BACKEND-ID", "BACKEND"], |r| {
                vec![r.select_id.to_string(), r.backend_id.to_string(), r.backend.clone()]
            })
        }
        Table::SourceRanges => {
            let rows: Vec<SourceRangeRow> = maps
                .state()?
                .source_ranges
                .keys()
                .map(|k| {
                    let source = ip_from16(k.data.source);
                    // The source prefix counts bits of the 16-byte form: 96 + n for IPv4 /n.
                    let bits = k.prefix_len.saturating_sub(128);
                    let len = if source.is_ipv4() { bits.saturating_sub(96) } else { bits };
                    SourceRangeRow { frontend: ip_from16(k.data.frontend), source: format!("{source}/{len}") }
                })
                .collect();
            out(output, &rows, &["LOADBALANCER-IP", "SOURCE-RANGE"], |r| vec![r.frontend.to_string(), r.source.clone()])
        }
        Table::SockRevnat => {
            let rows: Vec<SockRevRow> = maps
                .sock_revnat()?
                .into_iter()
                .map(|(k, v)| SockRevRow {
                    socket_cookie: k.cookie,
                    backend: endpoint(k.backend, k.backend_port_be),
                    frontend: endpoint(v.frontend, v.frontend_port_be),
                })
                .collect();
            out(output, &rows, &["SOCKET", "BACKEND", "FRONTEND"], |r| {
                vec![r.socket_cookie.to_string(), r.backend.clone(), r.frontend.clone()]
            })
        }
        Table::Conntrack => {
            let st = maps.state()?;
            let mut rows: Vec<CtRow> = maps
                .conntrack()?
                .into_iter()
                .filter_map(|(k, v)| {
                    let ips = [ip_from16(k.src), ip_from16(k.dst), ip_from16(v.nat_addr), ip_from16(v.snat_addr)];
                    let row = CtRow {
                        direction: if k.dir == CT_DIR_FORWARD { "forward" } else { "reply" },
                        source: endpoint(k.src, k.sport_be),
                        destination: endpoint(k.dst, k.dport_be),
                        protocol: proto_name(k.proto),
                        nat_to: endpoint(v.nat_addr, v.nat_port_be),
                        snat: (v.flags & lb_common::CT_F_SNAT != 0).then(|| endpoint(v.snat_addr, v.snat_port_be)),
                        backend_id: v.backend_id,
                        backend: if k.dir == CT_DIR_FORWARD {
                            endpoint(v.nat_addr, v.nat_port_be)
                        } else {
                            endpoint(k.src, k.sport_be)
                        },
                        service: service_name(&st, v.svc_id),
                        idle_s: idle(v.last_seen_ns),
                        closing: v.flags & lb_common::CT_F_CLOSING != 0,
                    };
                    (filter.is_empty() || filter.keeps(&row, ips)).then_some(row)
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::service::tests::dual_stack_state;

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
}
