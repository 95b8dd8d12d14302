//! The object source as the agent loop sees it: a snapshot when something changed, the file
//! source's problems (for `lb status`), and a wait for the next change or poll tick.

use std::{sync::Arc, time::Duration};

use anyhow::Context as _;
use tracing::{info, warn};

use super::{AgentConfig, Source, metrics::Metrics};
use crate::source::{ClusterObjects, file::FileSource, kube::KubeSource};

/// The object source, as a stream of snapshots.
pub(super) enum Feed {
    File(FileSource),
    Kube { source: KubeSource, changed: bool, client: kube::Client },
}

impl Feed {
    /// Starts the source: the kube source's watches begin listing in the background (they
    /// run while the datapath loads); [`Feed::wait_ready`] waits for their initial lists.
    pub(super) async fn start(cfg: &AgentConfig) -> anyhow::Result<Self> {
        Ok(match &cfg.source {
            Source::File(dir) => Self::File(FileSource::new(dir)),
            Source::Kube(kubeconfig) => {
                let client = crate::source::kube::client(kubeconfig.as_deref()).await.context("connecting to the API server")?;
                let source = KubeSource::start(client.clone(), &cfg.node_name).await.context("starting the watches")?;
                Self::Kube { source, changed: true, client }
            }
        })
    }

    /// Point 7: nothing is programmed (or flushed) before every initial list is in.
    pub(super) async fn wait_ready(&self) {
        if let Self::Kube { source, .. } = self {
            info!("waiting for the initial lists of Services, EndpointSlices and Nodes");
            source.wait_ready().await;
        }
    }

    /// Watch events of Services and EndpointSlices so far (the kube source; 0 for files).
    pub(super) fn change_counts(&self) -> (u64, u64) {
        match self {
            Self::File(_) => (0, 0),
            Self::Kube { source, .. } => source.change_counts(),
        }
    }

    /// The API server's client (the kube source), for what the agent writes back: Events.
    pub(super) fn client(&self) -> Option<kube::Client> {
        match self {
            Self::File(_) => None,
            Self::Kube { client, .. } => Some(client.clone()),
        }
    }

    /// A new snapshot when something changed since the last one. A manifest file that turned
    /// invalid is reported here once (log and metric) and keeps its last good objects; the
    /// other files' changes go on.
    pub(super) fn poll(&mut self, metrics: &Metrics) -> anyhow::Result<Option<ClusterObjects>> {
        match self {
            Self::File(files) => {
                let polled = files.poll().with_context(|| format!("reading the manifests in {}", files.dir().display()))?;
                for e in &polled.failed {
                    metrics.sync_failed("source");
                    warn!(
                        error = format!("{:#}", anyhow::Error::from(Arc::clone(e))),
                        "invalid manifest: fix the file; its last good objects stay programmed, the other files are read as usual"
                    );
                }
                for path in &polled.recovered {
                    info!(file = %path.display(), "manifest valid again");
                }
                metrics.set_invalid_files(files.errors().count());
                Ok(polled.objects)
            }
            Self::Kube { source, changed, .. } => Ok(std::mem::take(changed).then(|| source.snapshot())),
        }
    }

    /// The kube source's objects while its initial lists stream in
    /// ([`KubeSource::partial_snapshot`]); `None` for files (read whole at each poll).
    pub(super) fn partial_snapshot(&self) -> Option<ClusterObjects> {
        match self {
            Self::File(_) => None,
            Self::Kube { source, .. } => source.partial_snapshot(),
        }
    }

    /// What is wrong with the source now (one line each), for `lb status`.
    pub(super) fn problems(&self) -> Vec<String> {
        match self {
            Self::File(files) => files.errors().map(|e| format!("invalid manifest: {e}")).collect(),
            Self::Kube { .. } => Vec::new(),
        }
    }

    /// Waits for the next change (kube) or poll tick (files).
    pub(super) async fn wait(&mut self, poll: Duration) {
        match self {
            Self::File { .. } => tokio::time::sleep(poll).await,
            // A tick also when nothing changes: sweeps and retries run in a quiet cluster too.
            Self::Kube { source, changed, .. } => tokio::select! {
                () = source.changed() => *changed = true,
                () = tokio::time::sleep(poll) => {}
            },
        }
    }
}
