//! Growing maps online. A state that does not fit a map is not an error while the map can still
//! grow (up to its ceiling, `--map-max`): the datapath is loaded anew with the larger capacity,
//! as a restarting agent loads it, except that the maps to grow are created afresh.
//!
//! 1. The pin of each map to grow is moved aside (`<pin>/replaced_NAME`); the attached programs
//!    keep using the old map through their own references.
//! 2. The object is loaded again ([`Dataplane::grow`]): it creates and pins a larger map at
//!    each freed name and adopts every other pinned map as is (conntrack, affinity and
//!    fragments included: established flows keep their backends).
//! 3. The new maps are filled with what the old ones hold, before any program can see them.
//! 4. The caller attaches the new programs: each pinned link is switched to its new program
//!    atomically (`bpf_link_update`), so a packet meets either the old programs with the old maps
//!    or the new programs with the new maps, never a program without its entries.
//! 5. [`Dataplane::finish_growth`] copies the per-CPU counters of grown counter arrays (no
//!    attached program writes the old ones any more) and removes the moved-aside pins; the old
//!    maps are freed with the old programs.
//!
//! An agent killed between 1 and 5 leaves `replaced_NAME` behind: the next start puts it back
//! where no new map took its place and removes it where one did ([`recover_interrupted`]).

use std::{fs, io, path::Path};

use aya::maps::MapData;

use super::{Dataplane, DataplaneConfig, DataplaneError, Result};
use crate::maps::{MapError, MapId, MapState, raw::RawMap, sizes::MapSizes};

/// The prefix of a pin moved aside during a growth (bpffs refuses names with a dot).
const REPLACED_PREFIX: &str = "replaced_";

/// One map that grew, in entries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Growth {
    pub map: &'static str,
    pub from: u32,
    pub to: u32,
}

impl Dataplane {
    /// The capacities that fit `desired` and `needed` (a map and the entries a failed apply
    /// found it needs, e.g. old and new entries at once): every map that is too small grown
    /// ([`MapSizes::grown`]) as far as its ceiling allows. `None` when no map can grow.
    pub fn sizes_to_fit(&self, desired: &MapState, needed: (&str, usize)) -> Option<MapSizes> {
        let mut sizes = self.limits;
        let mut any = false;
        for (name, wanted) in super::apply::entries_needed(desired).into_iter().chain([needed]) {
            let (Some(current), Some(ceiling)) = (sizes.of(name), self.max_sizes.of(name)) else {
                continue;
            };
            if wanted <= current as usize {
                continue;
            }
            if let Some(to) = MapSizes::grown(current, wanted, ceiling).filter(|to| *to > current) {
                sizes.set(name, to);
                any = true;
            }
        }
        any.then_some(sizes)
    }

    /// Steps 1 to 3 (module docs): a datapath whose maps have `sizes`, the grown ones filled
    /// with what this one's hold, its programs loaded but not attached. On failure the pins
    /// are as they were.
    pub fn grow(&self, sizes: &MapSizes) -> Result<(Dataplane, Vec<Growth>)> {
        let growths: Vec<Growth> = self
            .limits
            .by_name()
            .into_iter()
            .zip(sizes.by_name())
            .filter(|((_, from), (_, to))| to > from)
            .map(|((map, from), (_, to))| Growth { map, from, to })
            .collect();
        let pins = moved_pins(&growths);
        move_aside(&self.pin_path, &pins)?;
        let config = DataplaneConfig { pin_path: self.pin_path.clone(), sizes: *sizes, max_sizes: self.max_sizes };
        // The adopted maps hold what this datapath's do; the new ones nothing yet.
        let mut known = self.shadow.clone();
        for id in growths.iter().filter_map(|g| MapId::by_name(g.map)) {
            known.clear(id);
        }
        let grown = Self::load_object(&config, Some(known)).and_then(|mut new| {
            new.apply(&self.shadow)?;
            Ok(new)
        });
        match grown {
            Ok(new) => Ok((new, growths)),
            Err(e) => {
                put_back(&self.pin_path, &pins);
                Err(e)
            }
        }
    }

    /// Step 5 (module docs), once this datapath's programs are attached in `old`'s place.
    pub fn finish_growth(&mut self, old: Dataplane, growths: &[Growth]) -> Result<()> {
        let moved = moved_pins(growths);
        // The per-CPU counter arrays among them.
        let copied = moved
            .iter()
            .filter(|name| [lb_common::SVC_STATS, lb_common::BACKEND_STATS].contains(name))
            .try_for_each(|name| copy_counters(&self.pin_path, name));
        for name in moved {
            remove_replaced(&self.pin_path, name);
        }
        drop(old);
        copied
    }
}

/// The pins a growth moves aside: the grown maps, and `LB_BACKEND_STATS` with `LB_BACKENDS`
/// (indexed by backend id too, so of the same size).
fn moved_pins(growths: &[Growth]) -> Vec<&'static str> {
    let mut pins: Vec<&'static str> = growths.iter().map(|g| g.map).collect();
    if pins.contains(&lb_common::BACKENDS) {
        pins.push(lb_common::BACKEND_STATS);
    }
    pins
}

/// Copies the non-zero per-CPU counters of array `name` from the map moved aside to the one
/// now pinned in its place (larger), read in batches: the counters of idle ids (most of them)
/// are all-zero slots, neither copied nor written.
fn copy_counters(pin_path: &Path, name: &'static str) -> Result<()> {
    let (pin, aside) = paths(pin_path, name);
    let open = |path: &Path| {
        MapData::from_pin(path).map_err(|source| MapError::Open { name, source }).and_then(|data| RawMap::any(name, data))
    };
    let (src, dst) = (open(&aside)?, open(&pin)?);
    let mut written = Ok(());
    src.for_each_entry(|key, values| {
        if written.is_ok() {
            written = dst.update(key, values);
        }
    })?;
    Ok(written?)
}

/// Moves the pins of `names` aside (all or, on failure, none).
pub(super) fn move_aside(pin_path: &Path, names: &[&'static str]) -> Result<()> {
    for (i, name) in names.iter().enumerate() {
        let (pin, aside) = paths(pin_path, name);
        if let Err(source) = fs::rename(&pin, &aside) {
            put_back(pin_path, &names[..i]);
            return Err(DataplaneError::Grow { path: pin, source });
        }
    }
    Ok(())
}

/// Undoes [`move_aside`]: whatever a failed load pinned at the names is removed first.
pub(super) fn put_back(pin_path: &Path, names: &[&'static str]) {
    for name in names {
        let (pin, aside) = paths(pin_path, name);
        let _ = fs::remove_file(&pin);
        if let Err(e) = fs::rename(&aside, &pin) {
            tracing::error!(pin = %pin.display(), error = %e, "could not put a map's pin back after a failed growth: restart the agent; it restores an unfinished growth at start");
        }
    }
}

pub(super) fn remove_replaced(pin_path: &Path, name: &str) {
    let (_, aside) = paths(pin_path, name);
    match fs::remove_file(&aside) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => {
            tracing::warn!(pin = %aside.display(), error = %e, "could not remove the pin of a replaced map: remove it by hand (the datapath no longer uses it; it holds kernel memory until removed)")
        }
    }
}

pub(super) fn paths(pin_path: &Path, name: &str) -> (std::path::PathBuf, std::path::PathBuf) {
    (pin_path.join(name), pin_path.join(format!("{REPLACED_PREFIX}{name}")))
}

/// After an agent died during a growth: a moved-aside map whose name is free again goes back
/// (the attached programs still use it, with its entries); one whose name a new map holds is
/// removed (this start adopts the new one and its first sync rewrites whatever it lacks).
pub(super) fn recover_interrupted(pin_path: &Path) -> Result<()> {
    let Ok(dir) = fs::read_dir(pin_path) else {
        return Ok(());
    };
    for entry in dir.flatten() {
        let file = entry.file_name();
        let Some(name) = file.to_str().and_then(|f| f.strip_prefix(REPLACED_PREFIX)) else {
            continue;
        };
        let (pin, aside) = paths(pin_path, name);
        if pin.exists() {
            remove_replaced(pin_path, name);
        } else {
            fs::rename(&aside, &pin).map_err(|source| DataplaneError::Grow { path: aside.clone(), source })?;
            tracing::warn!(map = name, "restored a map whose growth an earlier agent did not finish");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// After an agent died mid-growth: a moved-aside pin whose name is free goes back; one whose
    /// name a new map took is removed. (Plain files stand in for pins: only names matter here.)
    #[test]
    fn an_interrupted_growth_is_put_back_or_finished() {
        let dir = std::env::temp_dir().join(format!("lb-grow-recover-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        for f in ["LB_BACKENDS", "replaced_LB_BACKENDS", "replaced_LB_SERVICES", "LB_MEMBERS"] {
            fs::write(dir.join(f), f).unwrap();
        }
        recover_interrupted(&dir).unwrap();
        let mut left: Vec<String> =
            fs::read_dir(&dir).unwrap().flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect();
        left.sort();
        assert_eq!(left, ["LB_BACKENDS", "LB_MEMBERS", "LB_SERVICES"]);
        assert_eq!(fs::read_to_string(dir.join("LB_BACKENDS")).unwrap(), "LB_BACKENDS", "the new map is kept");
        assert_eq!(fs::read_to_string(dir.join("LB_SERVICES")).unwrap(), "replaced_LB_SERVICES", "the old one is back");
        fs::remove_dir_all(&dir).unwrap();
    }
}
