//! The layout version record (`LB_META`): a build refuses maps pinned by a build whose layouts
//! differ (`lb_common::LAYOUT_VERSION`), whether it adopts them (the agent) or only reads them
//! (the CLI).

use std::path::Path;

use aya::maps::{Array, Map, MapData};
use lb_common::{LAYOUT_VERSION, Meta};

use super::MapError;

/// Refuses maps under `pin_path` pinned by a build with another layout (before anything reuses
/// them); no pins at all is fine.
pub fn check(pin_path: &Path) -> Result<(), MapError> {
    let name = lb_common::META;
    let Ok(data) = MapData::from_pin(pin_path.join(name)) else {
        return Ok(()); // nothing pinned yet
    };
    let map = Map::from_map_data(data).map_err(MapError::typed(name, "open"))?;
    let found = match Array::<_, Meta>::try_from(map) {
        Ok(arr) => arr.get(&0, 0).map_err(MapError::typed(name, "read"))?.layout_version,
        // A META map of another shape is another layout too.
        Err(_) => u32::MAX,
    };
    if found != 0 && found != LAYOUT_VERSION {
        return Err(MapError::LayoutVersion { pin_dir: pin_path.display().to_string(), found, expected: LAYOUT_VERSION });
    }
    Ok(())
}
