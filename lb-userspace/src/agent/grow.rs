//! Syncs that grow the maps: a state that does not fit a map grows it online
//! ([`crate::dataplane::grow`]), re-attaches the programs where the configuration says, and is
//! applied again. Only what cannot grow (its ceiling, `--map-max`, or the kernel's memory) fails
//! the sync.

use std::time::Instant;

use anyhow::Context as _;
use tracing::{info, warn};

use super::{AgentConfig, attach_all, metrics::Metrics, status::StatusRecord, sync::SyncError, sync::SyncState};
use crate::{dataplane::Dataplane, source::ClusterObjects};

/// Growths tried for one sync (each grows every map the state overflows).
const MAX_GROWTHS_PER_SYNC: usize = 8;

/// [`SyncState::apply`], growing every map the state does not fit while it can grow.
pub(super) fn apply_growing(
    sync: &mut SyncState,
    dp: &mut Dataplane,
    cfg: &AgentConfig,
    objects: &ClusterObjects,
    metrics: &Metrics,
    status: &mut StatusRecord,
) -> Result<(), SyncError> {
    let mut grown = 0;
    loop {
        let err = match sync.apply(dp, cfg, objects) {
            Ok(()) => return Ok(()),
            Err(e) => e,
        };
        let Some((map, wanted)) = err.full() else {
            return Err(err);
        };
        if grown == MAX_GROWTHS_PER_SYNC {
            return Err(err);
        }
        let Some(sizes) = dp.sizes_to_fit(sync.planner.state(), (map, wanted)) else {
            // At its ceiling: the caller leaves out what does not fit.
            return Err(err);
        };
        match grow(dp, cfg, &sizes, metrics) {
            Ok(n) => {
                grown += 1;
                status.grew(n);
            }
            Err(e) => {
                warn!(map, wanted, error = format!("{e:#}"), "growing the map failed; it keeps its size");
                return Err(err);
            }
        }
    }
}

/// Grows the maps to `sizes` and swaps the programs onto them; returns the maps grown.
fn grow(dp: &mut Dataplane, cfg: &AgentConfig, sizes: &crate::maps::sizes::MapSizes, metrics: &Metrics) -> anyhow::Result<usize> {
    let started = Instant::now();
    let (new, growths) = dp.grow(sizes).context("loading the datapath with larger maps")?;
    let old = std::mem::replace(dp, new);
    // The pins name the new maps now: whatever happens next, the new datapath is the one to
    // keep (an interface that fails to attach fails the same way at a restart).
    let attached = attach_all(dp, cfg);
    let finished = dp.finish_growth(old, &growths);
    metrics.set_map_sizes(*dp.limits());
    for g in &growths {
        metrics.map_resized(g.map);
        info!(
            map = g.map,
            from = g.from,
            to = g.to,
            took_ms = (started.elapsed().as_secs_f64() * 1e4).round() / 10.0,
            "grew a map online (programs swapped through their pinned links, conntrack kept)"
        );
    }
    attached.context("attaching the programs of the grown datapath")?;
    finished.context("copying the counters of the grown maps")?;
    Ok(growths.len())
}
