//! Maps an earlier build pinned with another value layout, replaced at start with their
//! contents converted, before the new programs are attached (the old ones keep using the old
//! maps until then):
//! - the counter arrays (`LB_SVC_STATS`, `LB_BACKEND_STATS`) of one id an entry become arrays
//!   of blocks of `lb_common::STATS_BLOCK` ids. The packets the old programs count after the
//!   copy are not carried over; no counter goes down.
//! - `LB_MAGLEV` chunks of fewer slots are regrouped into chunks of `lb_common::MAGLEV_CHUNK`
//!   slots: every table reads the same backends, so new flows keep being spread as before.
//!
//! Each old map is moved aside as a growth moves a map (`replaced_NAME`, put back if the load
//! fails, and handled by `grow::recover_interrupted` if the agent dies meanwhile).

use std::{collections::BTreeMap, path::Path};

use aya::maps::MapData;
use lb_common::{FlowCounterBlock, FlowCounters, MaglevChunk, MaglevKey, STATS_BLOCK};

use super::{Result, grow};
use crate::maps::{MapError, raw::RawMap, sizes::MapSizes};

/// How an old map's contents become the new map's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Convert {
    /// One id an entry → blocks of ids.
    CounterBlocks,
    /// Maglev chunks of `old value size / 4` slots → chunks of `MAGLEV_CHUNK` slots.
    MaglevChunks,
}

/// The maps whose layout changed, with the value size this build gives them.
const CHANGED: [(&str, usize, Convert); 3] = [
    (lb_common::SVC_STATS, size_of::<FlowCounterBlock>(), Convert::CounterBlocks),
    (lb_common::BACKEND_STATS, size_of::<FlowCounterBlock>(), Convert::CounterBlocks),
    (lb_common::MAGLEV, size_of::<MaglevChunk>(), Convert::MaglevChunks),
];

/// The old maps moved aside, for the load to create maps of this build's layout in their place.
pub(super) struct Replaced(Vec<(&'static str, Convert)>);

impl Replaced {
    /// Moves aside the maps under `pin_path` of another layout than this build's, and raises
    /// `sizes` so that the new maps hold what the old ones did.
    pub(super) fn set_aside(pin_path: &Path, sizes: &mut MapSizes) -> Result<Self> {
        let mut found = Vec::new();
        for (name, value_size, how) in CHANGED {
            let Ok(data) = MapData::from_pin(pin_path.join(name)) else { continue };
            let info = data.info().map_err(|source| MapError::Open { name, source })?;
            let old_value = info.value_size() as usize;
            if old_value == value_size {
                continue;
            }
            if how == Convert::MaglevChunks
                && (!old_value.is_multiple_of(4) || old_value == 0 || !value_size.is_multiple_of(old_value))
            {
                return Err(MapError::Layout { name, expected: (8, value_size), found: (8, old_value) }.into());
            }
            let entries = info.max_entries();
            match (how, name) {
                (Convert::CounterBlocks, lb_common::SVC_STATS) => sizes.svc_stats = sizes.svc_stats.max(entries),
                (Convert::CounterBlocks, _) => sizes.backends = sizes.backends.max(entries),
                (Convert::MaglevChunks, _) => {
                    sizes.maglev = sizes.maglev.max(entries.div_ceil((value_size / old_value) as u32));
                }
            }
            found.push((name, how));
        }
        let names: Vec<&'static str> = found.iter().map(|(name, _)| *name).collect();
        grow::move_aside(pin_path, &names)?;
        if !names.is_empty() {
            tracing::info!(maps = ?names, "replacing maps an earlier build pinned with another layout (contents converted)");
        }
        Ok(Self(found))
    }

    /// Whether any map was set aside (the load's read-back of the maps predates the conversion).
    pub(super) fn any(&self) -> bool {
        !self.0.is_empty()
    }

    /// After a failed load: the old maps go back.
    pub(super) fn put_back(&self, pin_path: &Path) {
        let names: Vec<&'static str> = self.0.iter().map(|(name, _)| *name).collect();
        grow::put_back(pin_path, &names);
    }

    /// Writes the old maps' contents into the new ones (no attached program uses the new ones
    /// yet) and removes the old pins.
    pub(super) fn convert(self, pin_path: &Path) -> Result<()> {
        for (name, how) in self.0 {
            let (pin, aside) = grow::paths(pin_path, name);
            let open = |path: &Path| {
                MapData::from_pin(path).map_err(|source| MapError::Open { name, source }).and_then(|d| RawMap::any(name, d))
            };
            let (old, new) = (open(&aside)?, open(&pin)?);
            let entries = match how {
                Convert::CounterBlocks => {
                    let cpus = aya::util::nr_cpus().map_err(|(_, source)| MapError::Read { name, source })?;
                    counter_blocks(&old, cpus, new.max_entries())?
                }
                Convert::MaglevChunks => maglev_chunks(&old)?,
            };
            for (key, value) in &entries {
                new.update(key, value)?;
            }
            grow::remove_replaced(pin_path, name);
            tracing::info!(map = name, entries = entries.len(), "converted an earlier build's map");
        }
        Ok(())
    }
}

/// The per-CPU values of `old` (one id an entry, `cpus` values each) as per-CPU blocks below
/// `blocks_max`: (key, value) as a per-CPU update of a block array takes them.
fn counter_blocks(old: &RawMap, cpus: usize, blocks_max: u32) -> Result<BTreeMap<Vec<u8>, Vec<u8>>> {
    const ONE: usize = size_of::<FlowCounters>();
    const BLOCK: usize = size_of::<FlowCounterBlock>();
    let mut blocks: BTreeMap<Vec<u8>, Vec<u8>> = BTreeMap::new();
    old.for_each_entry(|key, values| {
        let Some(id) = key.try_into().ok().map(u32::from_ne_bytes) else { return };
        if id / STATS_BLOCK >= blocks_max || values.len() < cpus * ONE {
            return;
        }
        let block = blocks.entry((id / STATS_BLOCK).to_ne_bytes().to_vec()).or_insert_with(|| vec![0; cpus * BLOCK]);
        let slot = (id % STATS_BLOCK) as usize * ONE;
        for cpu in 0..cpus {
            block[cpu * BLOCK + slot..][..ONE].copy_from_slice(&values[cpu * ONE..][..ONE]);
        }
    })?;
    Ok(blocks)
}

/// `old`'s Maglev chunks (of `old value size / 4` slots) regrouped into chunks of
/// `MAGLEV_CHUNK` slots: old chunk `c` of a table is part `c % k` of new chunk `c / k`.
fn maglev_chunks(old: &RawMap) -> Result<BTreeMap<Vec<u8>, Vec<u8>>> {
    const NEW: usize = size_of::<MaglevChunk>();
    let mut chunks: BTreeMap<Vec<u8>, Vec<u8>> = BTreeMap::new();
    old.for_each_entry(|key, value| {
        let Some(k) = (key.len() == size_of::<MaglevKey>()).then(|| {
            let word = |i: usize| u32::from_ne_bytes([key[i], key[i + 1], key[i + 2], key[i + 3]]);
            MaglevKey { select_id: word(0), chunk: word(4) }
        }) else {
            return;
        };
        let per_new = (NEW / value.len().max(1)) as u32;
        if per_new == 0 {
            return;
        }
        let new_key = MaglevKey { select_id: k.select_id, chunk: k.chunk / per_new };
        let mut key_bytes = new_key.select_id.to_ne_bytes().to_vec();
        key_bytes.extend_from_slice(&new_key.chunk.to_ne_bytes());
        let chunk = chunks.entry(key_bytes).or_insert_with(|| vec![0; NEW]);
        let at = (k.chunk % per_new) as usize * value.len();
        chunk[at..][..value.len()].copy_from_slice(value);
    })?;
    Ok(chunks)
}
