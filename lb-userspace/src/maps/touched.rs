//! The keys a plan touched: what may differ between the maps and a planned state, so that the
//! next apply compares only those ([`diff_touched`]) instead of the whole state. A table's
//! keys in LB_SELECT, LB_MAGLEV and LB_MEMBERS are contiguous ranges ([`slots_of`],
//! [`chunks_of`], [`members_of`]) and are touched together.

use std::collections::{BTreeMap, BTreeSet};

use lb_common::{MaglevKey, MemberKey, SelectKey, ServiceKey, SourceRangeKey};

use super::{MapState, Op, diff};

/// Keys that may differ between the maps and a planned state (the incremental planner's
/// `Planner::pending`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Touched {
    pub services: BTreeSet<ServiceKey>,
    pub backends: BTreeSet<u32>,
    /// Tables: their selection slots, Maglev chunks and members.
    pub tables: BTreeSet<u32>,
    pub source_ranges: BTreeSet<SourceRangeKey>,
    /// ServicePorts whose name or labels may differ.
    pub names: BTreeSet<u32>,
    /// Words of the address filter.
    pub filter: BTreeSet<u32>,
    /// Words of the policy-Local marks.
    pub local_marks: BTreeSet<u32>,
    /// Everything may differ (before the first apply): diff the whole state.
    pub all: bool,
}

impl Touched {
    pub fn is_empty(&self) -> bool {
        !self.all
            && self.services.is_empty()
            && self.backends.is_empty()
            && self.tables.is_empty()
            && self.source_ranges.is_empty()
            && self.names.is_empty()
            && self.filter.is_empty()
            && self.local_marks.is_empty()
    }
}

/// The keys of table `t` in LB_SELECT, LB_MAGLEV and LB_MEMBERS.
pub fn slots_of(t: u32) -> std::ops::RangeInclusive<SelectKey> {
    SelectKey { select_id: t, slot: 0 }..=SelectKey { select_id: t, slot: u32::MAX }
}

pub fn chunks_of(t: u32) -> std::ops::RangeInclusive<MaglevKey> {
    MaglevKey { select_id: t, chunk: 0 }..=MaglevKey { select_id: t, chunk: u32::MAX }
}

pub fn members_of(t: u32) -> std::ops::RangeInclusive<MemberKey> {
    MemberKey { select_id: t, backend_id: 0 }..=MemberKey { select_id: t, backend_id: u32::MAX }
}

/// The writes that turn `old` into `new`, looking only at `touched` keys: exactly
/// [`diff`]`(old, new)` when every key that differs is touched, at the cost of
/// the touched keys instead of the whole state.
pub fn diff_touched(old: &MapState, new: &MapState, touched: &Touched) -> Vec<Op> {
    if touched.all {
        return diff(old, new);
    }
    let (a, b) = (restrict(old, touched), restrict(new, touched));
    diff(&a, &b)
}

/// The part of `st` under `touched` keys.
fn restrict(st: &MapState, touched: &Touched) -> MapState {
    fn pick<K: Ord + Copy, V: Clone>(from: &BTreeMap<K, V>, keys: &BTreeSet<K>) -> BTreeMap<K, V> {
        keys.iter().filter_map(|k| from.get(k).map(|v| (*k, v.clone()))).collect()
    }
    fn range<K: Ord + Copy, V: Clone>(from: &BTreeMap<K, V>, keys: std::ops::RangeInclusive<K>) -> impl Iterator<Item = (K, V)> {
        from.range(keys).map(|(k, v)| (*k, v.clone()))
    }
    let mut out = MapState {
        services: pick(&st.services, &touched.services),
        backends: pick(&st.backends, &touched.backends),
        names: pick(&st.names, &touched.names),
        labels: pick(&st.labels, &touched.names),
        source_ranges: pick(&st.source_ranges, &touched.source_ranges),
        addr_filter: pick(&st.addr_filter, &touched.filter),
        local_marks: pick(&st.local_marks, &touched.local_marks),
        ..MapState::default()
    };
    for &t in &touched.tables {
        out.select.extend(range(&st.select, slots_of(t)));
        out.maglev.extend(range(&st.maglev, chunks_of(t)));
        out.members.extend(range(&st.members, members_of(t)));
    }
    out
}
