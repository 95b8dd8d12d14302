//! The map table: every map the agent writes, described once. From this one list come the
//! shadow of the maps ([`MapState`], one ordered map each), the writes ([`Op`], a put and a
//! delete each), their safe order ([`diff`]), their effect on a shadow ([`MapState::apply`]),
//! the kernel handles that read and write them ([`KernelMaps`]), and each map's capacity in
//! [`MapSizes`].
//!
//! # Adding a map
//! Declare its key and value types and its name in `lb_common` (and the map in `lb-ebpf`), add
//! a line here, give it a capacity in [`MapSizes`] (and its value a [`Transition`]), and compute
//! its contents in the planner (`plan`). Nothing else names it: the dataplane, the pinned reader, the capacity checks and
//! the drift repair all go through this table.
//!
//! # Order
//! The datapath follows service → selection slot → backend. Writes therefore go in table order
//! (every target is valid before anything points at it) and deletes in reverse (every pointer is
//! gone before its target): the address filter, the policy-Local marks, names, backends,
//! members, selection slots, Maglev chunks, source ranges, then frontends. Source ranges are
//! written before the frontend that enables them and removed after it.

use std::{collections::BTreeMap, sync::Arc};

use aya::maps::MapData;
use lb_common::{Backend, MaglevKey, MemberKey, SelectKey, ServiceKey, ServiceValue, SourceRangeKey, SvcLabels, SvcName};

use super::{MapError, chunk::Chunk, codec::Kernel, raw::RawMap, sizes::MapSizes};

macro_rules! agent_maps {
    ($(
        $(#[doc = $doc:literal])*
        $field:ident ($id:ident): $name:path, $key:ty => $value:ty, $put:ident / $del:ident, capacity $cap:ident;
    )*) => {
        /// One agent-written map.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub enum MapId {
            $($id,)*
        }

        impl MapId {
            /// Every agent-written map, in write order.
            pub const ALL: &'static [MapId] = &[$(MapId::$id,)*];
            pub const COUNT: usize = Self::ALL.len();

            /// The map's name (its symbol in the eBPF object and its pin file).
            pub fn name(self) -> &'static str {
                match self {
                    $(MapId::$id => $name,)*
                }
            }

            /// The map's capacity in `sizes`.
            pub fn capacity(self, sizes: &MapSizes) -> u32 {
                match self {
                    $(MapId::$id => sizes.$cap,)*
                }
            }

            /// The map called `name`.
            pub fn by_name(name: &str) -> Option<Self> {
                Self::ALL.iter().copied().find(|m| m.name() == name)
            }
        }

        /// What the agent-written maps hold, or should hold: one ordered map per map.
        #[derive(Clone, Debug, Default, PartialEq, Eq)]
        pub struct MapState {
            $(
                $(#[doc = $doc])*
                pub $field: BTreeMap<$key, $value>,
            )*
        }

        /// One map write.
        #[derive(Clone, Debug, PartialEq, Eq)]
        pub enum Op {
            $($put($key, $value), $del($key),)*
        }

        // One write is small (a Maglev chunk or a name is a reference, not its kernel bytes).
        const _: () = assert!(size_of::<Op>() <= 64);

        impl Op {
            /// The map it writes.
            pub fn map(&self) -> MapId {
                match self {
                    $(Op::$put(..) | Op::$del(..) => MapId::$id,)*
                }
            }

            pub fn is_delete(&self) -> bool {
                match self {
                    $(Op::$put(..) => false, Op::$del(..) => true,)*
                }
            }

            /// The write adds a key that `st` does not hold (an update in place does not).
            pub fn adds_to(&self, st: &MapState) -> bool {
                match self {
                    $(Op::$put(k, _) => !st.$field.contains_key(k), Op::$del(_) => false,)*
                }
            }
        }

        impl MapState {
            /// Applies `ops` to this shadow (what the kernel maps hold after the same ops).
            pub fn apply(&mut self, ops: &[Op]) {
                for op in ops {
                    match op {
                        $(
                            Op::$put(k, v) => {
                                self.$field.insert(*k, v.clone());
                            }
                            Op::$del(k) => {
                                self.$field.remove(k);
                            }
                        )*
                    }
                }
            }

            /// [`MapState::apply`] of `ops`; when they are all puts to one map that holds
            /// nothing yet (a first sync's upserts, in key order), in one pass: building a B-tree
            /// from sorted entries costs a fraction of inserting them one by one (a million
            /// backends: 96 ms one by one).
            pub fn apply_puts(&mut self, ops: &[Op]) {
                let Some(first) = ops.first() else { return };
                if ops.iter().any(|op| op.is_delete() || op.map() != first.map()) {
                    return self.apply(ops);
                }
                match first.map() {
                    $(
                        MapId::$id if self.$field.is_empty() => {
                            // A diff puts each key once.
                            self.$field = ops
                                .iter()
                                .filter_map(|op| match op {
                                    Op::$put(k, v) => Some((*k, v.clone())),
                                    _ => None,
                                })
                                .collect();
                        }
                    )*
                    _ => self.apply(ops),
                }
            }

            /// Rebuilds every map's B-tree from its entries, its nodes full. Keys inserted in
            /// ascending order (new ids, ServicePorts planned in name order) leave each node
            /// about half full: a first plan's B-trees shrink to about half (5.5 of 12 MB at
            /// 10,000 Services × 10 endpoints), for a walk over every entry.
            pub fn pack(&mut self) {
                $(self.$field = std::mem::take(&mut self.$field).into_iter().collect();)*
            }

            /// Forgets what map `map` holds (a map created afresh holds nothing).
            pub fn clear(&mut self, map: MapId) {
                match map {
                    $(MapId::$id => self.$field.clear(),)*
                }
            }

            /// Entries of each map, in [`MapId::ALL`] order.
            pub fn counts(&self) -> [usize; MapId::COUNT] {
                [$(self.$field.len(),)*]
            }
        }

        /// The minimal writes that turn `old` into `new`, in the safe order (module docs): every
        /// map's early writes in table order, then every map's late writes in reverse.
        pub fn diff(old: &MapState, new: &MapState) -> Vec<Op> {
            let mut ops = Vec::new();
            let mut deletes: Vec<Vec<Op>> = Vec::with_capacity(MapId::COUNT);
            for map in MapId::ALL {
                let (early, late) = diff_map(old, new, *map);
                ops.extend(early);
                deletes.push(late);
            }
            ops.extend(deletes.into_iter().rev().flatten());
            ops
        }

        /// One map's part of [`diff`]: its early writes (upserts, or a widened value first) and
        /// its late writes (the final value after a widening, and the deletes). Applying every
        /// map's early writes in table order and then, on the result, every map's late writes
        /// in reverse order (`diff_map` again) writes exactly what [`diff`] would, one map's
        /// writes in memory at a time.
        pub fn diff_map(old: &MapState, new: &MapState, map: MapId) -> (Vec<Op>, Vec<Op>) {
            let (mut early, mut late) = (Vec::new(), Vec::new());
            match map {
                $(MapId::$id => {
                    let delta = merge(&old.$field, &new.$field);
                    // Sized once: growing by doubling held a first sync's largest map of writes
                    // one and a half times (7 of 124 MB at 10,000 Services).
                    early.reserve_exact(delta.upserts.len());
                    for (k, v) in delta.upserts {
                        match old.$field.get(k).and_then(|o| Transition::widened(o, v)) {
                            Some(wide) => {
                                if old.$field.get(k) != Some(&wide) {
                                    early.push(Op::$put(*k, wide));
                                }
                                late.push(Op::$put(*k, v.clone()));
                            }
                            None => early.push(Op::$put(*k, v.clone())),
                        }
                    }
                    late.extend(delta.removed.into_iter().map(|k| Op::$del(*k)));
                })*
            }
            (early, late)
        }

        /// The kernel's agent-written maps, each checked to have the table's key and value
        /// sizes.
        pub struct KernelMaps {
            $($field: RawMap,)*
        }

        impl KernelMaps {
            /// Opens every map of the table through `open` (a loaded object's maps, or pins).
            pub fn open(mut open: impl FnMut(&'static str) -> Result<MapData, MapError>) -> Result<Self, MapError> {
                Ok(Self {
                    $($field: RawMap::new($name, open($name)?, <$key as Kernel>::SIZE, <$value as Kernel>::SIZE)?,)*
                })
            }

            /// Reads every map back.
            pub fn read(&self) -> Result<MapState, MapError> {
                let mut st = MapState::default();
                self.read_into(&mut st)?;
                Ok(st)
            }

            /// Replaces `st` with what the maps hold, one map at a time: `st`'s old copy of a
            /// map is freed before the next map is read, so reading back a large state (drift
            /// repair) holds one map twice at most, never the whole state. A value equal to the
            /// one `st` holds keeps `st`'s (a planned Maglev chunk stays a 16-byte reference
            /// rather than becoming its 1 KiB kernel image). On an error, the maps read so
            /// far are replaced and the others kept.
            pub fn read_into(&self, st: &mut MapState) -> Result<(), MapError> {
                $(
                    let mut $field = BTreeMap::new();
                    self.$field.for_each_entry(|k, v| {
                        let (k, v) = (<$key as Kernel>::from_bytes(k), <$value as Kernel>::from_bytes(v));
                        let v = match st.$field.get(&k) {
                            Some(old) if *old == v => old.clone(),
                            _ => v,
                        };
                        $field.insert(k, v);
                    })?;
                    st.$field = $field;
                )*
                Ok(())
            }

            /// Performs one write.
            pub fn write(&self, op: &Op) -> Result<(), MapError> {
                match op {
                    $(
                        Op::$put(k, v) => self.$field.update(&k.to_bytes(), &v.to_bytes()),
                        Op::$del(k) => self.$field.delete(&k.to_bytes()),
                    )*
                }
            }

            /// Performs `ops`, which must all be puts to one map, in order, in one batch. Returns
            /// how many were written: all, or those before an error.
            pub fn put_batch(&self, ops: &[Op]) -> (usize, Result<(), MapError>) {
                match ops.first() {
                    $(
                        Some(Op::$put(..)) => {
                            let mut keys = Vec::with_capacity(ops.len() * <$key as Kernel>::SIZE);
                            let mut values = Vec::with_capacity(ops.len() * <$value as Kernel>::SIZE);
                            for op in ops {
                                let Op::$put(k, v) = op else {
                                    unreachable!("a batch holds puts to one map");
                                };
                                keys.extend_from_slice(&k.to_bytes());
                                values.extend_from_slice(&v.to_bytes());
                            }
                            self.$field.update_batch(&keys, &values, ops.len())
                        }
                    )*
                    _ => (0, Ok(())),
                }
            }

            /// The capacities the kernel gave the maps (a pinned map keeps the size it was
            /// created with), in [`MapId::ALL`] order.
            pub fn capacities(&self) -> [(MapId, u32); MapId::COUNT] {
                [$((MapId::$id, self.$field.max_entries()),)*]
            }
        }
    };
}

agent_maps! {
    /// The address filter's words (bitmaps of frontend and backend addresses). First: a bit is
    /// set before any frontend or backend needs it, and cleared only after them.
    addr_filter (AddrFilter): lb_common::ADDR_FILTER, u32 => u64, PutFilterWord / DelFilterWord, capacity addr_filter;
    /// The words of the bitmap of IPv4 external frontends of policy Local (which lookup their
    /// packets make first: any order is correct, so its place in the order is free).
    local_marks (LocalMarks): lb_common::LOCAL_MARKS, u32 => u64, PutLocalMarks / DelLocalMarks, capacity local_marks;
    /// ServicePort names by svc_id, for `lb service list` and the metrics in other processes.
    names (Names): lb_common::SVC_NAMES, u32 => Arc<SvcName>, PutName / DelName, capacity names;
    /// Service labels by svc_id (labelled Services only), for `lb service list --selector`.
    labels (Labels): lb_common::SVC_LABELS, u32 => Arc<SvcLabels>, PutLabels / DelLabels, capacity labels;
    /// Backends by id (0 is never used).
    backends (Backends): lb_common::BACKENDS, u32 => Backend, PutBackend / DelBackend, capacity backends;
    /// Set membership of a backend in a selection table (affinity checks, point 27; the serving
    /// set of UDP flows, point 57).
    members (Members): lb_common::MEMBERS, MemberKey => (), PutMember / DelMember, capacity members;
    /// Slots of random-selection tables.
    select (Select): lb_common::SELECT, SelectKey => u32, PutSelect / DelSelect, capacity select;
    /// Chunks of Maglev tables, each held once however many states share it.
    maglev (Maglev): lb_common::MAGLEV, MaglevKey => Chunk, PutMaglev / DelMaglev, capacity maglev;
    /// Allowed (LoadBalancer IP, source prefix) pairs of `loadBalancerSourceRanges`.
    source_ranges (SourceRanges): lb_common::SOURCE_RANGES, SourceRangeKey => (), PutSourceRange / DelSourceRange,
        capacity source_ranges;
    /// Frontends and address markers.
    services (Services): lb_common::SERVICES, ServiceKey => ServiceValue, PutService / DelService, capacity services;
}

/// The ids a state uses, which index the counter arrays.
impl MapState {
    /// Every svc_id: those with a name and those a frontend carries.
    pub fn svc_ids(&self) -> impl Iterator<Item = u32> + '_ {
        self.names.keys().copied().chain(self.services.values().map(|v| v.svc_id))
    }

    /// The highest svc_id of a planned state: the last name's (the planner writes a name for
    /// every svc_id a frontend carries, so no walk over the frontends is needed: this runs at
    /// every apply, over 200,000 frontends at 100,000 Services).
    pub fn top_svc_id(&self) -> Option<u32> {
        debug_assert!(
            self.services.values().all(|v| v.flags & lb_common::SVC_F_ADDR_MARKER != 0 || self.names.contains_key(&v.svc_id))
        );
        self.names.keys().next_back().copied()
    }

    /// The highest backend id.
    pub fn top_backend_id(&self) -> Option<u32> {
        self.backends.keys().next_back().copied()
    }

    /// The backend ids of table `select_id`: its `LB_MEMBERS` entries where the planner wrote
    /// them, otherwise those its random-selection slots or its Maglev chunks name (a TCP
    /// ServicePort without affinity has no membership entries: the datapath never reads them).
    pub fn table_backends(&self, select_id: u32) -> std::collections::BTreeSet<u32> {
        use super::touched::{chunks_of, members_of, slots_of};
        let mut ids: std::collections::BTreeSet<u32> =
            self.members.range(members_of(select_id)).map(|(k, _)| k.backend_id).collect();
        if ids.is_empty() {
            ids.extend(self.select.range(slots_of(select_id)).map(|(_, id)| *id));
            for (_, chunk) in self.maglev.range(chunks_of(select_id)) {
                ids.extend(chunk.ids().into_iter().filter(|id| *id != 0));
            }
        }
        ids
    }
}

/// How a value changes in place without ever meaning less than both versions in between: a
/// bitmap word that loses bits is first written as the union of old and new (in the upsert
/// phase) and as the new value only with the deletes (after whatever needed the lost bits is
/// gone). Every other value is simply replaced.
pub trait Transition: Sized {
    /// The value to hold between the upserts and the deletes, when it is not `new`.
    fn widened(_old: &Self, _new: &Self) -> Option<Self> {
        None
    }
}

impl Transition for u64 {
    fn widened(old: &Self, new: &Self) -> Option<Self> {
        (old & !new != 0).then_some(old | new)
    }
}

impl Transition for u32 {}
impl Transition for () {}
impl Transition for Arc<SvcName> {}
impl Transition for Arc<SvcLabels> {}
impl Transition for Backend {}
impl Transition for ServiceValue {}
impl Transition for Chunk {}

/// What differs between two versions of one map.
struct MapDelta<'a, K, V> {
    /// Keys that are new or whose value changed, with the new value, in key order.
    upserts: Vec<(&'a K, &'a V)>,
    /// Keys only in the old map, in key order.
    removed: Vec<&'a K>,
}

/// One ordered walk over both maps (linear, no lookup per key): a sync of a large, mostly
/// unchanged state costs a comparison per entry.
fn merge<'a, K: Ord, V: PartialEq>(old: &'a BTreeMap<K, V>, new: &'a BTreeMap<K, V>) -> MapDelta<'a, K, V> {
    use std::cmp::Ordering;
    let mut delta = MapDelta { upserts: Vec::new(), removed: Vec::new() };
    let (mut o, mut n) = (old.iter().peekable(), new.iter().peekable());
    loop {
        match (o.peek(), n.peek()) {
            (None, None) => break,
            (Some(_), None) => delta.removed.extend(o.by_ref().map(|(k, _)| k)),
            (None, Some(_)) => delta.upserts.extend(n.by_ref()),
            (Some((ok, ov)), Some((nk, nv))) => match ok.cmp(nk) {
                Ordering::Less => {
                    delta.removed.push(*ok);
                    o.next();
                }
                Ordering::Greater => {
                    delta.upserts.push((*nk, *nv));
                    n.next();
                }
                Ordering::Equal => {
                    if ov != nv {
                        delta.upserts.push((*nk, *nv));
                    }
                    o.next();
                    n.next();
                }
            },
        }
    }
    delta
}

#[cfg(test)]
mod tests {
    use super::*;

    fn be(n: u32) -> Backend {
        Backend { port_be: (n as u16).to_be(), ..Backend::default() }
    }

    /// A first sync's puts build an empty map in one pass, into what one-by-one puts give; puts
    /// to a map that holds entries, or a mix of writes, go one by one.
    #[test]
    fn puts_to_an_empty_map_build_what_one_by_one_puts_build() {
        let puts: Vec<Op> = (1..=5000).map(|id| Op::PutBackend(id, be(id))).collect();
        let (mut bulk, mut one_by_one) = (MapState::default(), MapState::default());
        bulk.apply_puts(&puts);
        one_by_one.apply(&puts);
        assert_eq!(bulk, one_by_one);
        assert_eq!(bulk.backends.len(), 5000);

        let more: Vec<Op> = (4000..=6000).rev().map(|id| Op::PutBackend(id, be(id + 1))).collect();
        bulk.apply_puts(&more);
        one_by_one.apply(&more);
        assert_eq!(bulk, one_by_one, "a map holding entries takes the puts one by one");

        let mixed = vec![Op::DelBackend(1), Op::PutBackend(7000, be(7)), Op::PutName(1, Arc::new(SvcName::default()))];
        bulk.apply_puts(&mixed);
        one_by_one.apply(&mixed);
        assert_eq!(bulk, one_by_one);
    }
}
