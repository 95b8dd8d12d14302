//! Capacities of the agent-written maps: the defaults from `lb_common`, scaled up for large
//! clusters with `--services-max`, and the sizes the kernel actually gave the maps (pinned maps
//! keep the size they were created with).
//!
//! The service maps are hash maps created with `BPF_F_NO_PREALLOC`: an entry's memory is taken
//! when it is written, so a large capacity costs only the bucket array (16 bytes per entry,
//! rounded up to a power of two) until it fills.

use aya::{
    EbpfLoader,
    maps::{Map, MapData},
};
use lb_common as c;

/// One capacity per resizable map, in entries.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct MapSizes {
    /// `LB_SERVICES`: frontends and address markers.
    pub services: u32,
    /// `LB_BACKENDS`: distinct (address, port) backends; backend ids are below it (an array,
    /// and `LB_BACKEND_STATS` has the same size).
    pub backends: u32,
    /// `LB_SELECT`: slots of random-selection tables.
    pub select: u32,
    /// `LB_MAGLEV`: 64-slot chunks of Maglev tables.
    pub maglev: u32,
    /// `LB_MEMBERS`: (selection table, backend) pairs.
    pub members: u32,
    /// `LB_SVC_STATS`: per-ServicePort counters; svc_ids are below it (an array of
    /// `lb_common::STATS_BLOCK`-id blocks: the capacity is in ids, a multiple of the block).
    pub svc_stats: u32,
    /// `LB_SVC_NAMES`: the names `lb` shows for each ServicePort.
    pub names: u32,
    /// `LB_SVC_LABELS`: the labels of labelled Services' ports.
    pub labels: u32,
    /// `LB_SOURCE_RANGES`: loadBalancerSourceRanges prefixes.
    pub source_ranges: u32,
    /// `LB_CT4_CLIENT`, `LB_CONNTRACK4` and `LB_CONNTRACK`, each: one entry per flow of its family, two per
    /// source-NATed flow (an LRU: preallocated in full).
    pub conntrack: u32,
    /// `LB_ADDR_FILTER`: words of the address bitmaps (fixed).
    pub addr_filter: u32,
    /// `LB_LOCAL_MARKS`: words of the policy-Local frontend bitmap (fixed).
    pub local_marks: u32,
}

impl Default for MapSizes {
    fn default() -> Self {
        Self {
            services: c::SERVICES_MAX,
            backends: c::BACKENDS_MAX,
            select: c::SELECT_MAX,
            maglev: c::MAGLEV_CHUNKS_MAX,
            members: c::MEMBERS_MAX,
            svc_stats: c::SVC_STATS_MAX,
            names: c::SVC_NAMES_MAX,
            labels: c::SVC_LABELS_MAX,
            source_ranges: c::SOURCE_RANGES_MAX,
            conntrack: c::CONNTRACK_MAX,
            addr_filter: c::ADDR_FILTER_WORDS,
            local_marks: c::LOCAL_MARK_WORDS,
        }
    }
}

/// Maglev chunks a service with up to 10 endpoints takes (a 1,021-slot table).
const CHUNKS_PER_SERVICE: u32 = 1021_u32.div_ceil(c::MAGLEV_CHUNK);

impl MapSizes {
    /// Sizes for `n` ServicePorts of up to 10 endpoints each, never below the defaults (which
    /// hold about 16,000): per ServicePort 4 frontends (ClusterIP, its address marker, room for
    /// NodePorts and external IPs), a Maglev table of 4 chunks, 10 members and random-selection
    /// slots, and 2 counter and name entries (one per family of a dual-stack Service).
    pub fn for_services(n: u32) -> Self {
        let d = Self::default();
        let scale = |per: u32, default: u32| n.saturating_mul(per).max(default);
        Self {
            services: scale(4, d.services),
            select: scale(10, d.select),
            maglev: scale(CHUNKS_PER_SERVICE, d.maglev),
            members: scale(10, d.members),
            svc_stats: scale(2, d.svc_stats),
            names: scale(2, d.names),
            labels: scale(2, d.labels),
            ..d
        }
    }

    /// The most each map grows to online unless `--map-max` says otherwise: far above
    /// Kubernetes' published limits (10,000 Services, 150,000 pods per cluster), below what
    /// a node's memory can hold. The per-CPU counter arrays (`LB_SVC_STATS`, and
    /// `LB_BACKEND_STATS` beside `LB_BACKENDS`) cost 24 bytes per id per CPU, so their
    /// ceilings are the lowest. Conntrack is not grown (size it with `--conntrack-max`).
    pub fn ceilings() -> Self {
        Self {
            services: 1 << 24,
            backends: 1 << 21,
            select: 1 << 25,
            maglev: 1 << 24,
            members: 1 << 24,
            svc_stats: 1 << 20,
            names: 1 << 20,
            labels: 1 << 20,
            source_ranges: 1 << 20,
            conntrack: c::CONNTRACK_MAX,
            addr_filter: c::ADDR_FILTER_WORDS,
            local_marks: c::LOCAL_MARK_WORDS,
        }
    }

    /// The capacity map `name` grows to when `wanted` entries do not fit in `current`: half as
    /// much again as wanted (so that the next few changes fit too) and at least double, never
    /// above `ceiling`. `None` when even the ceiling is too small.
    pub fn grown(current: u32, wanted: usize, ceiling: u32) -> Option<u32> {
        let wanted = u32::try_from(wanted).ok()?;
        if wanted > ceiling {
            return None;
        }
        Some(wanted.saturating_add(wanted / 2).max(current.saturating_mul(2)).min(ceiling))
    }

    /// `(map name, capacity)` for every map these sizes cover.
    pub fn by_name(&self) -> [(&'static str, u32); 10] {
        [
            (c::SERVICES, self.services),
            (c::BACKENDS, self.backends),
            (c::SELECT, self.select),
            (c::MAGLEV, self.maglev),
            (c::MEMBERS, self.members),
            (c::SVC_STATS, self.svc_stats),
            (c::SVC_NAMES, self.names),
            (c::SVC_LABELS, self.labels),
            (c::SOURCE_RANGES, self.source_ranges),
            (c::CONNTRACK, self.conntrack),
        ]
    }

    /// The capacity of map `name`, if these sizes cover it.
    pub fn of(&self, name: &str) -> Option<u32> {
        self.by_name().into_iter().find(|(n, _)| *n == name).map(|(_, v)| v)
    }

    /// Sets the capacity of map `name` (nothing for a map these sizes do not cover).
    pub fn set(&mut self, name: &str, v: u32) {
        let slot = match name {
            c::SERVICES => &mut self.services,
            c::BACKENDS => &mut self.backends,
            c::SELECT => &mut self.select,
            c::MAGLEV => &mut self.maglev,
            c::MEMBERS => &mut self.members,
            c::SVC_STATS => &mut self.svc_stats,
            c::SVC_NAMES => &mut self.names,
            c::SVC_LABELS => &mut self.labels,
            c::SOURCE_RANGES => &mut self.source_ranges,
            c::CONNTRACK => &mut self.conntrack,
            _ => return,
        };
        *slot = v;
    }

    /// Asks the loader for these sizes (used only for maps it creates, not adopted pins).
    pub(crate) fn request(&self, loader: &mut EbpfLoader<'_>) {
        for (name, n) in self.by_name() {
            loader.map_max_entries(name, n);
        }
        // The counter arrays hold blocks of ids.
        loader.map_max_entries(c::SVC_STATS, c::stats_blocks(self.svc_stats));
        loader.map_max_entries(c::BACKEND_STATS, c::stats_blocks(self.backends));
        loader.map_max_entries(c::CONNTRACK4, self.conntrack);
        loader.map_max_entries(c::CONNTRACK4_CLIENT, self.conntrack);
    }

    /// The sizes the loaded maps really have: pinned maps adopted from an earlier agent keep the
    /// size they were created with, whatever was requested. Maps whose size cannot be read keep
    /// the requested size.
    pub(crate) fn actual(requested: &Self, maps: impl Fn(&str) -> Option<u32>) -> Self {
        let mut out = *requested;
        for (name, _) in requested.by_name() {
            if let Some(n) = maps(name) {
                // A counter array's entries are blocks of ids.
                out.set(name, if name == c::SVC_STATS { n.saturating_mul(c::STATS_BLOCK) } else { n });
            }
        }
        out
    }
}

/// `max_entries` of a loaded map, read from the kernel.
pub(crate) fn max_entries(map: &Map) -> Option<u32> {
    let data: &MapData = match map {
        Map::HashMap(d) | Map::LruHashMap(d) | Map::PerCpuHashMap(d) | Map::LpmTrie(d) | Map::Array(d) | Map::PerCpuArray(d) => d,
        _ => return None,
    };
    data.info().ok().map(|i| i.max_entries())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_the_common_capacities_and_small_counts_never_shrink_them() {
        let d = MapSizes::default();
        assert_eq!(d.of(c::SERVICES), Some(c::SERVICES_MAX));
        assert_eq!(d.of(c::MAGLEV), Some(c::MAGLEV_CHUNKS_MAX));
        assert_eq!(d.of(c::CONNTRACK), Some(c::CONNTRACK_MAX));
        assert_eq!(d.of(c::STATS), None, "arrays are not resizable");
        assert_eq!(MapSizes::for_services(10), d);
    }

    #[test]
    fn a_hundred_thousand_services_get_room_for_frontends_and_maglev_tables() {
        let s = MapSizes::for_services(100_000);
        assert_eq!(s.services, 400_000);
        assert_eq!(s.maglev, 400_000);
        assert_eq!(s.select, 1_000_000);
        assert_eq!(s.members, 1_000_000);
        assert_eq!((s.svc_stats, s.names), (200_000, 200_000));
        // Not scaled: backends are pods, not services; conntrack is per flow.
        assert_eq!((s.backends, s.conntrack), (c::BACKENDS_MAX, c::CONNTRACK_MAX));
        // Saturates rather than wrapping.
        assert_eq!(MapSizes::for_services(u32::MAX).maglev, u32::MAX);
    }

    #[test]
    fn growth_leaves_room_doubles_at_least_and_stops_at_the_ceiling() {
        assert_eq!(MapSizes::grown(65_536, 100_000, 1 << 21), Some(150_000));
        assert_eq!(MapSizes::grown(65_536, 65_537, 1 << 21), Some(131_072));
        assert_eq!(MapSizes::grown(64, 100, 120), Some(120));
        assert_eq!(MapSizes::grown(64, 121, 120), None);
        let ceil = MapSizes::ceilings();
        for (name, n) in MapSizes::default().by_name() {
            assert!(ceil.of(name).unwrap() >= n, "{name}: the ceiling is below the default");
        }
    }

    #[test]
    fn adopted_maps_report_their_own_size() {
        let want = MapSizes::for_services(100_000);
        let got = MapSizes::actual(&want, |name| match name {
            c::MAGLEV => Some(c::MAGLEV_CHUNKS_MAX),
            c::SVC_STATS => Some(10), // blocks
            _ => None,
        });
        assert_eq!(got.maglev, c::MAGLEV_CHUNKS_MAX);
        assert_eq!(got.svc_stats, 10 * c::STATS_BLOCK, "in ids");
        assert_eq!(got.services, want.services);
    }
}
