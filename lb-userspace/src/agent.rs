//! The agent loop: read the source, compile, plan, apply; repeat on change. The datapath keeps
//! serving the last applied state whatever happens here (a bad file, a restart, a crash).

use std::{net::IpAddr, path::PathBuf, time::Duration};

use anyhow::Context as _;
use tracing::{info, warn};

use crate::{
    compile::{Family, compile},
    dataplane::{Dataplane, DataplaneConfig},
    model::DesiredState,
    node::node_context,
    plan::{Ids, map_state},
    source_file,
};

/// Where the agent reads Kubernetes objects from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    /// YAML manifests in a directory, re-read when they change.
    File(PathBuf),
}

impl std::str::FromStr for Source {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.split_once(':') {
            Some(("file", dir)) if !dir.is_empty() => Ok(Self::File(PathBuf::from(dir))),
            _ => Err(format!("unknown source {s:?}; expected file:DIR")),
        }
    }
}

#[derive(Clone, Debug)]
pub struct AgentConfig {
    pub source: Source,
    pub dataplane: DataplaneConfig,
    /// Host-side pod interfaces to attach the TC program to.
    pub pod_interfaces: Vec<String>,
    pub node_name: String,
    pub node_addresses: Vec<IpAddr>,
    /// How often the file source is checked for changes.
    pub poll_interval: Duration,
}

/// Runs until SIGINT or SIGTERM. Returns after leaving the datapath attached and serving.
pub async fn run(cfg: AgentConfig) -> anyhow::Result<()> {
    let mut dp = Dataplane::load(&cfg.dataplane).context("loading the datapath")?;
    info!(pin_path = %dp.pin_path().display(), adopted_services = dp.state().services.len(), "datapath loaded");
    for iface in &cfg.pod_interfaces {
        dp.attach_pod_interface(iface)
            .with_context(|| format!("attaching to {iface}"))?;
        info!(iface, "attached tc ingress");
    }

    let mut ids = Ids::default();
    let mut first = true;
    let mut last: Option<DesiredState> = None;
    let mut last_files: Option<Vec<(PathBuf, std::time::SystemTime, u64)>> = None;
    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    loop {
        let Source::File(dir) = &cfg.source;
        let files = file_stamps(dir);
        if files.as_ref().ok() != last_files.as_ref() || last.is_none() {
            match sync_from_dir(dir, &cfg, &mut dp, &mut ids, first, last.as_ref()) {
                Ok(Some(desired)) => {
                    first = false;
                    last = Some(desired);
                }
                Ok(None) => {}
                Err(e) => warn!(
                    error = format!("{e:#}"),
                    "sync failed; the datapath keeps the last applied state"
                ),
            }
            last_files = files.ok();
        }
        tokio::select! {
            () = tokio::time::sleep(cfg.poll_interval) => {}
            _ = tokio::signal::ctrl_c() => break,
            _ = sigterm.recv() => break,
        }
    }
    info!("shutting down; the datapath stays attached and serving");
    Ok(())
}

/// Returns the new desired state when it was applied, `None` when nothing changed.
fn sync_from_dir(
    dir: &std::path::Path,
    cfg: &AgentConfig,
    dp: &mut Dataplane,
    ids: &mut Ids,
    first: bool,
    last: Option<&DesiredState>,
) -> anyhow::Result<Option<DesiredState>> {
    let objects = source_file::load_dir(dir)?;
    let node = node_context(&cfg.node_name, &cfg.node_addresses, &objects.nodes);
    let desired = compile(&objects.services, &objects.slices, &node, Family::V4);
    if last == Some(&desired) {
        return Ok(None);
    }
    for r in &desired.rejected {
        warn!(object = %r.object, reason = %r.reason, "skipped invalid object");
    }
    if first {
        ids.adopt(dp.state(), &desired);
    }
    let state = map_state(&desired, ids);
    let writes = dp.apply(&state)?;
    info!(
        service_ports = desired.services.len(),
        frontends = state.services.len(),
        backends = state.backends.len(),
        writes,
        "synced"
    );
    Ok(Some(desired))
}

/// Name, modification time and length of every manifest: cheap change detection.
fn file_stamps(
    dir: &std::path::Path,
) -> anyhow::Result<Vec<(PathBuf, std::time::SystemTime, u64)>> {
    let mut out = Vec::new();
    for p in source_file::manifest_files(dir)? {
        let m = std::fs::metadata(&p)?;
        out.push((p, m.modified()?, m.len()));
    }
    Ok(out)
}
