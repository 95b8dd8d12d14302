//! The pins' layout record and their removal: the agent stamps the maps it creates or adopts
//! with this build's layout version (checked before adoption by `maps::layout`), and
//! `lb agent --cleanup` removes the whole pin directory.

use std::{io, path::Path};

use aya::{
    Ebpf,
    maps::{Array, MapData},
};
use lb_common::{LAYOUT_VERSION, Meta};

use super::{DataplaneError, Result};
use crate::maps::MapError;

/// Writes this build's layout version and agent version into `LB_META`.
pub(super) fn write(ebpf: &mut Ebpf) -> Result<()> {
    let name = lb_common::META;
    let map = ebpf.map_mut(name).ok_or(MapError::Missing { name })?;
    let mut arr: Array<&mut MapData, Meta> = Array::try_from(map).map_err(MapError::typed(name, "open"))?;
    let mut agent_version = [0u16; 3];
    for (slot, part) in agent_version.iter_mut().zip(env!("CARGO_PKG_VERSION").split('.')) {
        *slot = part.parse().unwrap_or(0);
    }
    let meta = Meta { layout_version: LAYOUT_VERSION, agent_version, _pad: 0 };
    Ok(arr.set(0, meta, 0).map_err(MapError::typed(name, "write"))?)
}

/// Removes every pin under `pin_path`: detaches the pinned links and frees the maps once no
/// program uses them.
pub fn cleanup(pin_path: &Path) -> Result<()> {
    match std::fs::remove_dir_all(pin_path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(DataplaneError::Cleanup { path: pin_path.to_owned(), source }),
    }
}
