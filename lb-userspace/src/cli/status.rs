//! `lb status`: the agent owning the pins (pid, uptime, last sync and error, problems), where
//! the programs are attached, the maps' fill against their capacity, and the versions.

use serde::Serialize;

use super::output::{Output, ago, render};
use crate::maps::{MapError, pinned::PinnedMaps};

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
    report: crate::maps::agent_record::AgentReport,
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
pub fn show(maps: &PinnedMaps, output: Output) -> Result<String, MapError> {
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
    if r.map_resizes > 0 {
        s.push_str(&format!("maps grown online: {} (capacities below)\n", r.map_resizes));
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
