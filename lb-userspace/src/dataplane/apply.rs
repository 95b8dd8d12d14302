//! Applying a planned state to the maps: the writes of the map table's [`diff`] in its safe
//! order, a capacity check of every map before the first write (a state that does not fit
//! changes nothing), and drift repair (the maps read back and rewritten where someone else
//! changed them).

use super::{Dataplane, Result};
use crate::maps::{
    KernelMaps, MapError, MapId, MapState, Op, diff, diff_map,
    sizes::MapSizes,
    touched::{Touched, diff_touched},
};

impl Dataplane {
    /// Re-reads the maps from the kernel and rewrites whatever differs from `desired`: entries
    /// changed or deleted outside the agent (`bpftool map update`, another tool) are repaired,
    /// strays removed. Returns the number of writes (0 when nothing drifted).
    pub fn repair(&mut self, desired: &MapState) -> Result<usize> {
        self.maps.read_into(&mut self.shadow)?;
        self.apply(desired)
    }

    /// Makes the maps hold `desired` with the minimal writes, in the safe order. Capacity is
    /// checked before the first write, so a state that does not fit changes nothing.
    ///
    /// The writes are computed and made one map at a time (every map's upserts in table order,
    /// then every map's deletes in reverse, [`diff_map`]): a first sync of 400,000 entries holds
    /// one map's writes in memory, not all of them. A map whose upserts would overflow it
    /// before its deletes make room takes the path of [`Dataplane::apply_touched`] (deletes
    /// first) from where the maps are.
    pub fn apply(&mut self, desired: &MapState) -> Result<usize> {
        self.check_fits(desired)?;
        let mut writes = 0;
        for &map in MapId::ALL {
            let (early, _) = diff_map(&self.shadow, desired, map);
            let adds = early.iter().filter(|op| op.adds_to(&self.shadow)).count();
            if self.shadow.counts()[map as usize] + adds > map.capacity(&self.limits) as usize {
                let ops = diff(&self.shadow, desired);
                return Ok(writes + self.apply_ops(desired, ops)?);
            }
            writes += self.write_ops(&early)?;
        }
        for &map in MapId::ALL.iter().rev() {
            let (early, late) = diff_map(&self.shadow, desired, map);
            writes += self.write_ops(&early)? + self.write_ops(&late)?;
        }
        Ok(writes)
    }

    /// [`Dataplane::apply`] when only `touched` keys can differ from what the maps hold (the
    /// incremental planner's pending keys): the diff looks at those keys only.
    pub fn apply_touched(&mut self, desired: &MapState, touched: &Touched) -> Result<usize> {
        if touched.all {
            return self.apply(desired);
        }
        let ops = diff_touched(&self.shadow, desired, touched);
        self.apply_ops(desired, ops)
    }

    /// Refuses a state that cannot fit the maps, before any write.
    fn check_fits(&self, desired: &MapState) -> Result<()> {
        for (map, wanted) in MapId::ALL.iter().zip(desired.counts()) {
            let limit = map.capacity(&self.limits);
            if wanted > limit as usize {
                return Err(MapError::Full { name: map.name(), wanted, limit }.into());
            }
        }
        check_ids_fit(desired, &self.limits)?;
        Ok(())
    }

    /// Writes `ops`, which turn the maps into `desired`.
    fn apply_ops(&mut self, desired: &MapState, mut ops: Vec<Op>) -> Result<usize> {
        self.check_fits(desired)?;
        if let Some((map, peak, limit)) = transition_overflow(&self.shadow, &ops, &self.limits) {
            // Upserts-before-deletes would need old and new entries at once: more than the map
            // holds. Delete first instead; flows of the services being changed may see a
            // missing entry for the duration of this apply (milliseconds), which beats never
            // converging.
            tracing::warn!(map = map.name(), peak, limit, "change does not fit alongside the state it replaces; deleting first");
            ops.sort_by_key(|op| !op.is_delete());
            if let Some((map, wanted, limit)) = transition_overflow(&self.shadow, &ops, &self.limits) {
                return Err(MapError::Full { name: map.name(), wanted, limit }.into());
            }
        }
        self.write_ops(&ops)
    }

    /// Makes `ops` in order, the shadow following each write. Runs of puts to one map go in
    /// batches (one syscall each); deletes one by one. Many puts to one map and nothing else (a
    /// first sync's upserts of a map) are written in two halves on two CPUs: their order does
    /// not matter (each key once), and most of a hash map's insert is the kernel's, under
    /// per-bucket locks.
    fn write_ops(&mut self, ops: &[Op]) -> Result<usize> {
        if ops.len() >= SPLIT_MIN && ops.iter().all(|op| !op.is_delete() && op.map() == ops[0].map()) {
            // One more thread, not two: each thread's allocations (the batch buffers) stay in
            // an arena of its own.
            let (first, second) = ops.split_at(ops.len() / 2);
            let maps = &self.maps;
            let (a, b) = std::thread::scope(|s| {
                let other = s.spawn(|| put_all(maps, second));
                (put_all(maps, first), other.join().unwrap_or_else(|e| std::panic::resume_unwind(e)))
            });
            if a.0 == first.len() && b.0 == second.len() {
                self.shadow.apply_puts(ops);
            } else {
                self.shadow.apply(&first[..a.0]);
                self.shadow.apply(&second[..b.0]);
            }
            a.1?;
            b.1?;
            return Ok(ops.len());
        }
        let (done, written) = put_all(&self.maps, ops);
        self.shadow.apply(&ops[..done]);
        written?;
        Ok(ops.len())
    }
}

/// Puts at least this many are written on two CPUs (below, a thread costs more than it saves).
const SPLIT_MIN: usize = 8192;

/// Makes `ops` in order: runs of puts to one map in batches (one syscall each), deletes one by
/// one. Returns how many were made: all, or those before an error.
fn put_all(maps: &KernelMaps, ops: &[Op]) -> (usize, std::result::Result<(), MapError>) {
    let mut i = 0;
    while i < ops.len() {
        let run = batch_run(&ops[i..]);
        let (done, written) = if run == 1 { (1, maps.write(&ops[i])) } else { maps.put_batch(&ops[i..i + run]) };
        if let Err(e) = written {
            return (i + if run == 1 { 0 } else { done }, Err(e));
        }
        i += run;
    }
    (ops.len(), Ok(()))
}

/// Entries per batch write: large enough that the syscall is amortised, small enough that the
/// key and value buffers stay small (1 MiB for Maglev chunks, whose values are 1 KiB).
const BATCH: usize = 1024;

/// How many of `ops` (at least one) go in the next write: the run of puts to the first op's map,
/// up to [`BATCH`]; a delete alone.
fn batch_run(ops: &[Op]) -> usize {
    let Some(first) = ops.first() else { return 0 };
    if first.is_delete() {
        return 1;
    }
    ops.iter().take(BATCH).take_while(|op| !op.is_delete() && op.map() == first.map()).count()
}

/// Ids index arrays: backend ids `LB_BACKENDS` (and `LB_BACKEND_STATS`, of the same size),
/// svc_ids `LB_SVC_STATS`. An id at or above its array's size would be a backend nobody can read
/// or a service whose packets go uncounted: the state does not fit.
fn check_ids_fit(desired: &MapState, limits: &MapSizes) -> std::result::Result<(), MapError> {
    if let Some(id) = desired.top_backend_id().filter(|id| *id >= limits.backends) {
        return Err(MapError::Full { name: lb_common::BACKENDS, wanted: id as usize + 1, limit: limits.backends });
    }
    if let Some(id) = desired.top_svc_id().filter(|id| *id >= limits.svc_stats) {
        return Err(MapError::Full { name: lb_common::SVC_STATS, wanted: id as usize + 1, limit: limits.svc_stats });
    }
    Ok(())
}

/// The entries each map needs to hold `desired`: its entry count, and for the arrays indexed by
/// ids (`LB_BACKENDS`, `LB_SVC_STATS`) the highest id + 1.
pub(super) fn entries_needed(desired: &MapState) -> Vec<(&'static str, usize)> {
    let mut out: Vec<(&'static str, usize)> = MapId::ALL.iter().map(|m| m.name()).zip(desired.counts()).collect();
    out.extend(desired.top_backend_id().map(|id| (lb_common::BACKENDS, id as usize + 1)));
    out.extend(desired.top_svc_id().map(|id| (lb_common::SVC_STATS, id as usize + 1)));
    out
}

/// Walks `ops` from `shadow`, counting each map's entries: the first map whose count would
/// exceed its capacity at some point, as (map, peak, limit).
fn transition_overflow(shadow: &MapState, ops: &[Op], limits: &MapSizes) -> Option<(MapId, usize, u32)> {
    let mut count = shadow.counts();
    let mut peak = count;
    for op in ops {
        let i = op.map() as usize;
        if op.is_delete() {
            count[i] -= 1;
        } else if op.adds_to(shadow) {
            count[i] += 1;
            peak[i] = peak[i].max(count[i]);
        }
    }
    MapId::ALL.iter().zip(peak).map(|(m, p)| (*m, p, m.capacity(limits))).find(|(_, p, limit)| *p > *limit as usize)
}

#[cfg(test)]
mod tests {
    use lb_common::{Backend, MemberKey};

    use super::*;

    /// A full backends map whose every backend is replaced by a new id: in the safe order the
    /// map would hold old and new at once.
    /// Puts to one map go together, in order, up to the batch size; a delete or another map
    /// ends the run.
    #[test]
    fn batches_are_runs_of_puts_to_one_map() {
        let be = |id| Op::PutBackend(id, Backend::default());
        let ops = vec![be(1), be(2), be(3), Op::PutMember(MemberKey::default(), ()), Op::DelBackend(9), be(4)];
        assert_eq!(batch_run(&ops), 3);
        assert_eq!(batch_run(&ops[3..]), 1);
        assert_eq!(batch_run(&ops[4..]), 1, "a delete goes alone");
        assert_eq!(batch_run(&ops[5..]), 1);
        assert_eq!(batch_run(&[]), 0);
        let many: Vec<Op> = (0..10_000).map(be).collect();
        assert_eq!(batch_run(&many), BATCH);
    }

    #[test]
    fn ids_beyond_their_arrays_do_not_fit() {
        let limits = MapSizes { backends: 8, svc_stats: 4, ..MapSizes::default() };
        let mut st = MapState::default();
        st.backends.insert(7, Backend::default());
        st.names.insert(3, std::sync::Arc::default());
        assert!(check_ids_fit(&st, &limits).is_ok());
        st.backends.insert(8, Backend::default());
        let e = check_ids_fit(&st, &limits).unwrap_err().to_string();
        assert_eq!(e, "map LB_BACKENDS is full: 9 entries needed, its limit is 8");
        st.backends.remove(&8);
        st.names.insert(4, std::sync::Arc::default());
        assert!(check_ids_fit(&st, &limits).unwrap_err().to_string().starts_with("map LB_SVC_STATS is full"));
    }

    #[test]
    fn a_replacement_of_a_full_map_is_detected_and_fits_when_deleting_first() {
        let max = lb_common::BACKENDS_MAX;
        let mut shadow = MapState::default();
        shadow.backends.extend((0..max).map(|id| (id, Backend::default())));
        let mut ops: Vec<Op> = (max..max + 10).map(|id| Op::PutBackend(id, Backend::default())).collect();
        ops.extend((0..10).map(Op::DelBackend));
        let limits = MapSizes::default();
        assert_eq!(transition_overflow(&shadow, &ops, &limits), Some((MapId::Backends, max as usize + 10, max)));
        ops.sort_by_key(|op| !op.is_delete());
        assert!(matches!(ops[0], Op::DelBackend(0)));
        assert_eq!(transition_overflow(&shadow, &ops, &limits), None);
        // Updates in place never grow a map.
        let updates: Vec<Op> = (0..max).map(|id| Op::PutBackend(id, Backend { port_be: 1, ..Backend::default() })).collect();
        assert_eq!(transition_overflow(&shadow, &updates, &limits), None);
    }
}
