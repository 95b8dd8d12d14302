//! `lb stats`: the datapath's verdict and drop-reason counters, and the per-service and
//! per-backend packets, bytes and new flows.

use std::collections::BTreeMap;

use lb_common::COUNTER_NAMES;
use serde::Serialize;

use super::output::{Output, endpoint, render, service_name};
use crate::maps::{MapError, pinned::PinnedMaps};

#[derive(Serialize)]
struct StatsView {
    counters: BTreeMap<&'static str, u64>,
    services: Vec<FlowStats>,
    backends: Vec<FlowStats>,
    /// `lb monitor`'s events: written to the ring, lost (over the rate or a full ring).
    monitor: MonitorCounts,
}

#[derive(Serialize)]
struct MonitorCounts {
    written: u64,
    lost: u64,
}

#[derive(Serialize)]
struct FlowStats {
    name: String,
    packets: u64,
    bytes: u64,
    new_flows: u64,
}

/// `lb stats`: per-service and per-backend counters, verdicts and drop reasons.
pub fn show(maps: &PinnedMaps, output: Output) -> Result<String, MapError> {
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
    let m = maps.monitor_stats()?;
    let mut view = StatsView { counters, services, backends, monitor: MonitorCounts { written: m.written, lost: m.lost } };
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
            let monitor = [("monitor_events_written", view.monitor.written), ("monitor_events_lost", view.monitor.lost)];
            let nonzero = view
                .counters
                .iter()
                .map(|(k, v)| (*k, *v))
                .chain(monitor)
                .filter(|(_, v)| *v > 0)
                .map(|(k, v)| vec![k.to_owned(), v.to_string()]);
            format!(
                "{}\n{}\n{}",
                render(&["COUNTER", "VALUE"], nonzero),
                flows("SERVICE", &view.services),
                flows("BACKEND", &view.backends)
            )
        }
    })
}
