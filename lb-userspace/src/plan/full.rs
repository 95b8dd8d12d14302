//! The full plan: every ServicePort planned from scratch into one state. The agent plans
//! incrementally ([`super::incremental::Planner`]); this is the oracle the tests hold the
//! incremental plan to, and what a fixture that programs a whole state at once uses.

use super::{PlanConfig, memory::PlanMemory, service::plan_service};
use crate::{maps::MapState, model::DesiredState};

/// Computes the map contents for `desired`, allocating ids as needed.
pub fn map_state(desired: &DesiredState, ids: &mut PlanMemory, cfg: &PlanConfig) -> MapState {
    let mut st = MapState::default();
    for (spn, sp) in &desired.services {
        plan_service(&mut st, ids, &std::sync::Arc::new(spn.clone()), sp, cfg);
    }
    ids.retain_used(&st, desired);
    let quarantined: Vec<[u8; 16]> = ids.quarantined_backends().filter_map(|(_, a)| *a).collect();
    st.addr_filter =
        super::addr_filter::words(st.services.keys().map(|k| &k.addr), st.backends.values().map(|b| &b.addr).chain(&quarantined));
    for (word, bits) in ids.sticky_filter() {
        *st.addr_filter.entry(*word).or_insert(0) |= bits;
    }
    st
}
