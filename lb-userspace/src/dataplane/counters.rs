//! The per-id counter arrays (`LB_SVC_STATS`, `LB_BACKEND_STATS`: per-CPU blocks of
//! `lb_common::STATS_BLOCK` ids): released ids' counters zeroed before the ids are given out
//! again, and arrays pinned by a build before the blocks (one id an entry) replaced at start
//! with their counts carried over.

use std::{collections::BTreeMap, path::Path};

use aya::{
    maps::MapData,
    programs::{ProgramError, RawTracePoint, RawTracePointRunOptions, TestRun as _},
};
use lb_common::{FlowCounterBlock, FlowCounters, STATS_BLOCK};

use super::{Dataplane, DataplaneError, Result, grow};
use crate::maps::{MapError, raw::RawMap, sizes::MapSizes};

/// The counter arrays.
const ARRAYS: [&str; 2] = [lb_common::SVC_STATS, lb_common::BACKEND_STATS];

/// Counter arrays pinned by an earlier build, moved aside for the load to create block arrays
/// in their place: each array's name and the ids it held.
pub(super) struct Unblocked(Vec<(&'static str, u32)>);

impl Unblocked {
    /// Moves aside the counter arrays under `pin_path` whose entries are not blocks, and raises
    /// `sizes` so that the new arrays hold every id the old ones did.
    pub(super) fn set_aside(pin_path: &Path, sizes: &mut MapSizes) -> Result<Self> {
        let mut found = Vec::new();
        for name in ARRAYS {
            let Ok(data) = MapData::from_pin(pin_path.join(name)) else { continue };
            let info = data.info().map_err(|source| MapError::Open { name, source })?;
            if info.value_size() as usize == size_of::<FlowCounterBlock>() {
                continue;
            }
            let ids = info.max_entries();
            if name == lb_common::SVC_STATS {
                sizes.svc_stats = sizes.svc_stats.max(ids);
            } else {
                sizes.backends = sizes.backends.max(ids);
            }
            found.push((name, ids));
        }
        let names: Vec<&'static str> = found.iter().map(|(name, _)| *name).collect();
        grow::move_aside(pin_path, &names)?;
        if !names.is_empty() {
            tracing::info!(maps = ?names, "replacing counter arrays pinned by an earlier build (one id an entry) with arrays of blocks");
        }
        Ok(Self(found))
    }

    /// After a failed load: the old arrays go back.
    pub(super) fn put_back(&self, pin_path: &Path) {
        grow::put_back(pin_path, &self.names());
    }

    /// Copies the old arrays' counts into the new ones (before any program using the new ones is
    /// attached: nothing else writes them yet) and removes the old pins. The old programs count
    /// into the old arrays until the new ones are attached: those last packets are not carried
    /// over, and no counter goes down.
    pub(super) fn carry_over(self, pin_path: &Path) -> Result<()> {
        for name in self.names() {
            let (pin, aside) = grow::paths(pin_path, name);
            let open = |path: &Path| {
                MapData::from_pin(path).map_err(|source| MapError::Open { name, source }).and_then(|d| RawMap::any(name, d))
            };
            let (old, new) = (open(&aside)?, open(&pin)?);
            let cpus = aya::util::nr_cpus().map_err(|(_, source)| MapError::Read { name, source })?;
            let blocks = blocks_of(&old, cpus, new.max_entries())?;
            for (index, block) in &blocks {
                new.update(&index.to_ne_bytes(), block)?;
            }
            grow::remove_replaced(pin_path, name);
            tracing::info!(map = name, blocks = blocks.len(), "carried the counters of an earlier build's array over");
        }
        Ok(())
    }

    fn names(&self) -> Vec<&'static str> {
        self.0.iter().map(|(name, _)| *name).collect()
    }
}

/// The per-CPU values of `old` (one id an entry, `cpus` values each) as per-CPU blocks, by block
/// index below `blocks_max`: the bytes a per-CPU update of a block array takes.
fn blocks_of(old: &RawMap, cpus: usize, blocks_max: u32) -> Result<BTreeMap<u32, Vec<u8>>> {
    const ONE: usize = size_of::<FlowCounters>();
    const BLOCK: usize = size_of::<FlowCounterBlock>();
    let mut blocks: BTreeMap<u32, Vec<u8>> = BTreeMap::new();
    old.for_each_entry(|key, values| {
        let Some(id) = key.try_into().ok().map(u32::from_ne_bytes) else { return };
        if id / STATS_BLOCK >= blocks_max || values.len() < cpus * ONE {
            return;
        }
        let block = blocks.entry(id / STATS_BLOCK).or_insert_with(|| vec![0; cpus * BLOCK]);
        let slot = (id % STATS_BLOCK) as usize * ONE;
        for cpu in 0..cpus {
            block[cpu * BLOCK + slot..][..ONE].copy_from_slice(&values[cpu * ONE..][..ONE]);
        }
    })?;
    Ok(blocks)
}

impl Dataplane {
    /// Zeroes the per-CPU counters of ids freed for reuse ([`crate::plan::memory::Released`]),
    /// so that a new owner of an id starts from zero. The counter arrays hold blocks of ids, and
    /// a write from userspace replaces a block on every CPU at once (a neighbour's packet counted
    /// between a read and that write would be taken back: a counter going down): the object's
    /// `lb_zero_counters` program zeroes the released slots alone, run on each online CPU in turn
    /// (`lb_common::PROG_ZERO_COUNTERS`).
    pub fn zero_counters(&mut self, released: &crate::plan::memory::Released) -> Result<()> {
        let backends: Vec<u32> = released.backends.iter().map(|(id, _)| *id).collect();
        // An id beyond the array was never programmed (a plan that did not fit): nothing to zero.
        let svc_ids: Vec<u32> = released.svc_ids.iter().copied().filter(|id| *id < self.limits.svc_stats).collect();
        let backends: Vec<u32> = backends.into_iter().filter(|id| *id < self.limits.backends).collect();
        if svc_ids.is_empty() && backends.is_empty() {
            return Ok(());
        }
        let name = lb_common::PROG_ZERO_COUNTERS;
        let prog: &mut RawTracePoint = self
            .ebpf
            .program_mut(name)
            .ok_or(DataplaneError::MissingProgram { name })?
            .try_into()
            .map_err(|source: ProgramError| DataplaneError::Program { name, source })?;
        if prog.fd().is_err() {
            prog.load().map_err(|source| DataplaneError::Program { name, source })?;
        }
        let cpus = aya::util::online_cpus().map_err(|(_, source)| MapError::Write { name: lb_common::SVC_STATS, source })?;
        for (which, ids) in [(lb_common::ZERO_COUNTERS_SVC, &svc_ids), (lb_common::ZERO_COUNTERS_BACKEND, &backends)] {
            for chunk in ids.chunks(lb_common::ZERO_COUNTERS_IDS) {
                let mut args = [0u64; 12];
                args[0] = which;
                args[1] = chunk.len() as u64;
                for (slot, id) in args[2..].iter_mut().zip(chunk) {
                    *slot = u64::from(*id);
                }
                for &cpu in &cpus {
                    let opts = RawTracePointRunOptions { args, cpu: Some(cpu) };
                    prog.test_run(opts).map_err(|source| DataplaneError::Program { name, source })?;
                }
            }
        }
        Ok(())
    }
}
