//! Syncs that fit. A state that does not fit a map grows it online
//! ([`crate::dataplane::grow`]: the programs re-attached where the configuration says) and is
//! applied again. What still cannot fit (a map at its ceiling, `--map-max`, or out of kernel
//! memory) never holds the rest back: the Services that changed are left out, as many of them
//! as fit are taken back (halving the set that failed until each part fits or is one Service),
//! and the ones that remain out are logged, listed by `lb status`, counted in
//! `lb_services_left_out{map}` and tried again at the next change.

use std::{
    collections::{BTreeMap, BTreeSet},
    time::Instant,
};

use anyhow::Context as _;
use tracing::{info, warn};

use super::{
    AgentConfig, attach_all,
    metrics::Metrics,
    status::StatusRecord,
    sync::{SyncError, SyncState, service_key},
};
use crate::{dataplane::Dataplane, maps::sizes::MapSizes, source::ClusterObjects};

/// Growths tried for one apply (each grows every map the state overflows).
const MAX_GROWTHS_PER_APPLY: usize = 4;

/// What one sync works with.
struct Ctx<'a> {
    sync: &'a mut SyncState,
    dp: &'a mut Dataplane,
    cfg: &'a AgentConfig,
    objects: &'a ClusterObjects,
    metrics: &'a Metrics,
    status: &'a mut StatusRecord,
}

/// Applies `objects`, growing maps as needed and leaving out only what cannot fit.
pub(super) fn apply_fitting(
    sync: &mut SyncState,
    dp: &mut Dataplane,
    cfg: &AgentConfig,
    objects: &ClusterObjects,
    metrics: &Metrics,
    status: &mut StatusRecord,
) -> Result<(), SyncError> {
    let mut cx = Ctx { sync, dp, cfg, objects, metrics, status };
    let quarantined = cx.sync.planner.quarantined_ids();
    // Everything first, the Services left out before included: room may have appeared.
    let err = match cx.apply_growing(&BTreeSet::new()) {
        Ok(()) => {
            cx.set_left_out(BTreeMap::new());
            return Ok(());
        }
        Err(e) if e.full().is_none() => return Err(e),
        Err(e) => e,
    };
    // The maps are as before that attempt (a state that does not fit writes nothing).
    let in_use = SyncState::ids_in_use(cx.dp, quarantined);
    // The Services that changed (all of them after a restart) and those left out before.
    let present: BTreeSet<String> = objects.services.iter().map(|s| service_key(s)).collect();
    let mut candidates: BTreeSet<String> = match &cx.sync.changed_services {
        Some(changed) => changed.clone(),
        None => present.clone(),
    };
    candidates.extend(cx.sync.left_out.keys().cloned());
    candidates.retain(|k| present.contains(k));
    let mut without = candidates.clone();
    if cx.apply_growing(&without).is_err() {
        // Even without them it does not fit: nothing to leave out that would help.
        return Err(err);
    }
    cx.sync.forget_unprogrammed(cx.dp, &in_use)?;
    let mut left_out = BTreeMap::new();
    let candidates: Vec<String> = candidates.into_iter().collect();
    cx.take_back(&candidates, &mut without, &mut left_out)?;
    cx.set_left_out(left_out);
    Ok(())
}

impl Ctx<'_> {
    /// [`SyncState::apply`] without `without`, growing every map the state does not fit while
    /// it can grow.
    fn apply_growing(&mut self, without: &BTreeSet<String>) -> Result<(), SyncError> {
        let mut grown = 0;
        loop {
            let err = match self.sync.apply(self.dp, self.cfg, self.objects, without) {
                Ok(()) => return Ok(()),
                Err(e) => e,
            };
            let Some((map, wanted)) = err.full() else {
                return Err(err);
            };
            if grown == MAX_GROWTHS_PER_APPLY {
                return Err(err);
            }
            let Some(sizes) = self.dp.sizes_to_fit(self.sync.planner.state(), (map, wanted)) else {
                return Err(err); // at its ceiling
            };
            match grow(self.dp, self.cfg, &sizes, self.metrics) {
                Ok(n) => {
                    grown += 1;
                    self.status.grew(n);
                }
                Err(e) => {
                    warn!(
                        map,
                        wanted,
                        error = format!("{e:#}"),
                        "growing the map failed: check the node's free memory and the agent's memlock limit, or lower --map-max; the map keeps its size and Services that do not fit are left out"
                    );
                    return Err(err);
                }
            }
        }
    }

    /// Takes `group` back from `without` if it fits; else each half, down to single Services,
    /// which stay out with their reason in `left_out`.
    fn take_back(
        &mut self,
        group: &[String],
        without: &mut BTreeSet<String>,
        left_out: &mut BTreeMap<String, (&'static str, String)>,
    ) -> Result<(), SyncError> {
        if group.is_empty() {
            return Ok(());
        }
        let in_use = SyncState::ids_in_use(self.dp, self.sync.planner.quarantined_ids());
        for k in group {
            without.remove(k);
        }
        let err = match self.apply_growing(without) {
            Ok(()) => return Ok(()),
            Err(e) => e,
        };
        // Back to the state without the group (it fitted), and the ids its plan took freed.
        without.extend(group.iter().cloned());
        self.apply_growing(without)?;
        self.sync.forget_unprogrammed(self.dp, &in_use)?;
        let Some((map, wanted)) = err.full() else {
            return Err(err);
        };
        if let [one] = group {
            let limit = self.dp.limits().of(map).unwrap_or(0);
            let reason = format!(
                "does not fit {map}: {wanted} entries needed, {limit} available at its ceiling (raise it with --map-max {map}=N)"
            );
            left_out.insert(one.clone(), (map, reason));
            return Ok(());
        }
        let (a, b) = group.split_at(group.len() / 2);
        self.take_back(a, without, left_out)?;
        self.take_back(b, without, left_out)
    }

    /// Records, logs and counts the Services left out now.
    fn set_left_out(&mut self, now: BTreeMap<String, (&'static str, String)>) {
        for (svc, (_, reason)) in &now {
            if !self.sync.left_out.contains_key(svc) {
                warn!(service = %svc, reason, "Service left out: not programmed until room appears (retried at every change)");
            }
        }
        for svc in self.sync.left_out.keys().filter(|k| !now.contains_key(*k)) {
            info!(service = %svc, "Service programmed again: it fits now (or is gone)");
        }
        let mut by_map: BTreeMap<&'static str, usize> = BTreeMap::new();
        for (map, _) in now.values() {
            *by_map.entry(map).or_default() += 1;
        }
        self.metrics.set_left_out(by_map);
        self.sync.left_out = now;
    }
}

/// Grows the maps to `sizes` and swaps the programs onto them; returns the maps grown.
fn grow(dp: &mut Dataplane, cfg: &AgentConfig, sizes: &MapSizes, metrics: &Metrics) -> anyhow::Result<usize> {
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
