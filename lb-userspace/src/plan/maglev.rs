//! Maglev consistent hashing (Eisenbud et al., NSDI 2016, §3.4): a lookup table of a prime size
//! M in which every backend owns about M/N slots, and removing one backend reassigns little more
//! than its own slots. Computed here, in userspace, from the backends' identities alone, so every
//! node computes the same table for the same endpoint set and a flow hashes to the same backend
//! on every node.

use std::{
    collections::hash_map::Entry,
    net::{IpAddr, SocketAddr},
};

use super::HashMap;
use crate::maps::Slots;

/// A table's endpoints (in the caller's order) and size.
pub(crate) type TableKey = (TableEndpoints, u32);

/// A table's endpoints as the cache keys them, each address and port packed: 7 bytes for IPv4,
/// 19 for IPv6 (a list of `(IpAddr, u16)` took 20 each; the cache keeps a key per table).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TableEndpoints(Box<[u8]>);

impl TableEndpoints {
    const V4: u8 = 4;
    const V6: u8 = 6;

    pub fn new(endpoints: impl IntoIterator<Item = (IpAddr, u16)>) -> Self {
        let mut out = Vec::new();
        for (addr, port) in endpoints {
            match addr {
                IpAddr::V4(a) => {
                    out.push(Self::V4);
                    out.extend(a.octets());
                }
                IpAddr::V6(a) => {
                    out.push(Self::V6);
                    out.extend(a.octets());
                }
            }
            out.extend(port.to_be_bytes());
        }
        Self(out.into_boxed_slice())
    }

    /// The endpoints, in order.
    pub fn iter(&self) -> impl Iterator<Item = (IpAddr, u16)> + '_ {
        let mut rest = &self.0[..];
        std::iter::from_fn(move || {
            let (&tag, after) = rest.split_first()?;
            let len = if tag == Self::V4 { 4 } else { 16 };
            let (addr, after) = after.split_at(len);
            let (port, after) = after.split_at(2);
            rest = after;
            let addr = match <[u8; 4]>::try_from(addr) {
                Ok(a) => IpAddr::from(a),
                Err(_) => IpAddr::from(<[u8; 16]>::try_from(addr).expect("16 bytes")),
            };
            Some((addr, u16::from_be_bytes([port[0], port[1]])))
        })
    }
}

impl From<Vec<(IpAddr, u16)>> for TableEndpoints {
    fn from(v: Vec<(IpAddr, u16)>) -> Self {
        Self::new(v)
    }
}

/// Table sizes the agent chooses from: primes, each four times the previous, so that a service's
/// size changes rarely (every change remaps new flows; conntrack keeps the established ones).
pub const TABLE_SIZES: [u32; 4] = [1021, 4093, 16381, 65521];

/// The table size for `backends` backends: the smallest listed prime at least 100 × backends
/// (1021 up to 10 backends, 4093 up to 40, 16381 up to 163), or `fixed` when the operator set
/// one (a fixed size never remaps).
pub fn table_size(backends: usize, fixed: Option<u32>) -> u32 {
    if let Some(m) = fixed {
        return m;
    }
    let want = (backends as u64).saturating_mul(100);
    TABLE_SIZES.iter().copied().find(|m| u64::from(*m) >= want).unwrap_or(TABLE_SIZES[TABLE_SIZES.len() - 1])
}

/// Whether `m` is a prime the datapath accepts as a table size.
pub fn valid_table_size(m: u32) -> bool {
    (2..=lb_common::MAGLEV_MAX_SIZE).contains(&m) && (2..).take_while(|d| d * d <= m).all(|d| !m.is_multiple_of(d))
}

/// FNV-1a, 64 bits, with a seed folded in first: stable across builds and machines (unlike
/// std's hasher), which the same-table-on-every-node property needs.
fn fnv1a(seed: u64, bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325 ^ seed;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    // Final avalanche (splitmix64), so nearby names spread.
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

/// The lookup table: for each of the `m` slots, the index into `names` of its backend.
/// `names` identify backends (e.g. `10.244.1.5:8080`); their order does not matter.
/// Returns an empty table when there are no backends.
pub fn table(names: &[String], m: u32) -> Vec<u32> {
    let n = names.len();
    if n == 0 {
        return Vec::new();
    }
    let m64 = u64::from(m);
    // Order-independent: work on the names sorted, map back to the caller's indices.
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by(|a, b| names[*a].cmp(&names[*b]));
    // Each backend walks its permutation `offset, offset + skip, offset + 2 skip, ... (mod m)`.
    // `pos` is where its walk stands; stepping adds `skip` and wraps by one subtraction
    // (both are below m), which is the paper's `(offset + j * skip) mod m` without a division
    // per probe: the same table, several times faster.
    let mut walks: Vec<(u64, u64)> = order
        .iter()
        .map(|&i| {
            let offset = fnv1a(0x6d61_676c_6576_3031, names[i].as_bytes()) % m64;
            let skip = fnv1a(0x736b_6970_5f76_3031, names[i].as_bytes()) % (m64 - 1) + 1;
            (offset, skip)
        })
        .collect();
    let mut entry = vec![u32::MAX; m as usize];
    let mut filled = 0u32;
    'fill: loop {
        for (k, (pos, skip)) in walks.iter_mut().enumerate() {
            while entry[*pos as usize] != u32::MAX {
                *pos += *skip;
                if *pos >= m64 {
                    *pos -= m64;
                }
            }
            entry[*pos as usize] = order[k] as u32;
            *pos += *skip;
            if *pos >= m64 {
                *pos -= m64;
            }
            filled += 1;
            if filled == m {
                break 'fill;
            }
        }
    }
    entry
}

/// Tables [`TableCache::prefill`] computes on other threads only when at least this many are
/// missing (below, a thread costs more than it saves).
const PREFILL_MIN: usize = 256;

/// The table of size `m` for `endpoints`, slot → index into `endpoints`.
fn compute(endpoints: &TableEndpoints, m: u32) -> Slots {
    let names: Vec<String> = endpoints.iter().map(|(a, p)| SocketAddr::new(a, p).to_string()).collect();
    Slots::new(&table(&names, m), names.len())
}

/// Tables already computed, by endpoint list and size: a change to one Service recomputes its
/// own table only, not every Service's. After a plan of every ServicePort, the entries it did
/// not use are dropped ([`TableCache::end_pass`]); after a plan of some of them, the entries no
/// plan refers to any more, once the cache has doubled ([`TableCache::end_partial_pass`]). So
/// the cache holds about one table per live endpoint set.
#[derive(Clone, Default)]
pub struct TableCache {
    tables: HashMap<TableKey, (Slots, u64)>,
    pass: u64,
    /// Entries left by the last drop (the growth that triggers the next one is measured
    /// from it).
    kept: usize,
    /// Compute on the calling thread only ([`TableCache::prefill`] does nothing).
    pub(super) one_cpu: bool,
}

impl std::fmt::Debug for TableCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TableCache").field("tables", &self.tables.len()).field("pass", &self.pass).finish()
    }
}

impl TableCache {
    /// Room for the changes to come ([`crate::room`]).
    pub fn make_room(&mut self) {
        crate::room::make_room(&mut self.tables);
    }

    /// The table of size `m` for `endpoints` (address, port), in their order: slot → index
    /// into `endpoints` (what [`table`] returns for their `address:port` names).
    pub fn table(&mut self, endpoints: impl Into<TableEndpoints>, m: u32) -> Slots {
        let pass = self.pass;
        match self.tables.entry((endpoints.into(), m)) {
            Entry::Occupied(mut e) => {
                e.get_mut().1 = pass;
                e.get().0.clone()
            }
            Entry::Vacant(e) => {
                let t = compute(&e.key().0, m);
                e.insert((t.clone(), pass));
                t
            }
        }
    }

    /// Computes the tables of `wanted` the cache lacks ahead of a plan that will look them up,
    /// on every CPU when there are many (the first plan after a start computes one per
    /// ServicePort: 10,000 tables of 1,021 slots took 190 ms on one CPU).
    pub fn prefill(&mut self, wanted: impl IntoIterator<Item = TableKey>) {
        if self.one_cpu {
            return; // computed one at a time as the plan asks
        }
        let mut missing: Vec<TableKey> = wanted.into_iter().filter(|k| !self.tables.contains_key(k)).collect();
        if missing.len() < PREFILL_MIN {
            return; // computed one at a time as the plan asks
        }
        missing.sort_unstable();
        missing.dedup();
        let computed = crate::parallel::map_on_cpus(&missing, |(eps, m)| compute(eps, *m));
        let pass = self.pass;
        for (key, t) in missing.into_iter().zip(computed) {
            self.tables.insert(key, (t, pass));
        }
    }

    /// Ends a plan of every ServicePort: forgets the tables it did not use.
    pub fn end_pass(&mut self) {
        let pass = self.pass;
        self.tables.retain(|_, (_, used)| *used == pass);
        self.kept = self.tables.len();
        self.pass += 1;
    }

    /// Ends a plan of some ServicePorts (the others keep their tables without using the cache):
    /// once the cache has doubled since the last drop, forgets the tables nothing else holds
    /// (a planned Maglev chunk holds its table), so a plan of one ServicePort costs no walk
    /// over every table. (Forgetting every table this plan did not use would empty the cache
    /// at the first change: 100,000 tables freed, ~70 ms at 100,000 Services, and every table
    /// computed again at the next plan of all.)
    pub fn end_partial_pass(&mut self) {
        if self.tables.len() > 2 * self.kept + 1024 {
            self.tables.retain(|_, (t, _)| t.holders() > 1);
            self.kept = self.tables.len();
        }
        self.pass += 1;
    }

    pub fn len(&self) -> usize {
        self.tables.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tables.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("10.244.{}.{}:8080", i / 200, i % 200 + 10)).collect()
    }

    #[test]
    fn sizes_are_prime_and_chosen_well_above_100_per_backend() {
        for m in TABLE_SIZES {
            assert!(valid_table_size(m), "{m}");
        }
        assert_eq!(table_size(1, None), 1021);
        assert_eq!(table_size(3, None), 1021);
        assert_eq!(table_size(10, None), 1021);
        assert_eq!(table_size(11, None), 4093);
        assert_eq!(table_size(100, None), 16381);
        assert!(table_size(50, None) >= 5000);
        assert_eq!(table_size(3, Some(16381)), 16381);
        assert!(!valid_table_size(1000));
        assert!(!valid_table_size(65537)); // prime, but above the datapath's limit
    }

    #[test]
    fn every_slot_is_filled_and_load_is_balanced() {
        for n in [1, 2, 3, 7, 10, 50] {
            let m = table_size(n, None);
            let t = table(&names(n), m);
            assert_eq!(t.len(), m as usize);
            let mut per = vec![0u32; n];
            for &b in &t {
                per[b as usize] += 1;
            }
            let ideal = f64::from(m) / n as f64;
            for c in per {
                assert!((f64::from(c) - ideal).abs() <= ideal * 0.1 + 1.0, "n={n}: {c} slots vs ideal {ideal:.1}");
            }
        }
    }

    #[test]
    fn removing_one_of_n_backends_moves_about_one_nth_of_the_table() {
        for n in [3usize, 5, 10, 20, 40] {
            let all = names(n);
            let m = table_size(n, None);
            let before: Vec<String> = table(&all, m).iter().map(|&i| all[i as usize].clone()).collect();
            for removed in [0, n / 2, n - 1] {
                let rest: Vec<String> = all.iter().enumerate().filter(|(i, _)| *i != removed).map(|(_, s)| s.clone()).collect();
                let after: Vec<String> = table(&rest, m).iter().map(|&i| rest[i as usize].clone()).collect();
                let moved = before.iter().zip(&after).filter(|(a, b)| a != b && **a != all[removed]).count();
                // Slots of the removed backend must move; of the others, Maglev moves only a
                // small fraction (the paper's bound is a few percent of the table).
                let share = moved as f64 / f64::from(m);
                assert!(share <= 1.0 / n as f64, "n={n} removed={removed}: {:.3} of the surviving slots moved", share);
                let total = before.iter().zip(&after).filter(|(a, b)| a != b).count() as f64 / f64::from(m);
                assert!(total <= 2.0 / n as f64 + 0.01, "n={n}: {total:.3} of the table moved in all");
            }
        }
    }

    #[test]
    fn the_table_does_not_depend_on_backend_order_so_every_node_agrees() {
        let a = names(7);
        let mut b = a.clone();
        b.reverse();
        let m = table_size(7, None);
        let ta: Vec<&String> = table(&a, m).iter().map(|&i| &a[i as usize]).collect();
        let tb: Vec<&String> = table(&b, m).iter().map(|&i| &b[i as usize]).collect();
        assert_eq!(ta, tb);
    }

    /// The paper's fill loop, one division per probe: [`table`] must give the same tables.
    fn reference_table(names: &[String], m: u32) -> Vec<u32> {
        let m64 = u64::from(m);
        let mut order: Vec<usize> = (0..names.len()).collect();
        order.sort_by(|a, b| names[*a].cmp(&names[*b]));
        let perms: Vec<(u64, u64)> = order
            .iter()
            .map(|&i| {
                let b = names[i].as_bytes();
                (fnv1a(0x6d61_676c_6576_3031, b) % m64, fnv1a(0x736b_6970_5f76_3031, b) % (m64 - 1) + 1)
            })
            .collect();
        let mut next = vec![0u64; names.len()];
        let mut entry = vec![u32::MAX; m as usize];
        let mut filled = 0;
        'fill: loop {
            for (k, &(offset, skip)) in perms.iter().enumerate() {
                let mut c = (offset + next[k] * skip) % m64;
                while entry[c as usize] != u32::MAX {
                    next[k] += 1;
                    c = (offset + next[k] * skip) % m64;
                }
                entry[c as usize] = order[k] as u32;
                next[k] += 1;
                filled += 1;
                if filled == m {
                    break 'fill;
                }
            }
        }
        entry
    }

    #[test]
    fn the_fast_fill_gives_the_papers_table() {
        for n in [1, 2, 3, 10, 11, 40, 163] {
            for m in [251, 1021, 4093, 16381] {
                assert_eq!(table(&names(n), m), reference_table(&names(n), m), "n={n} m={m}");
            }
        }
    }

    #[test]
    fn the_cache_returns_the_same_tables_and_forgets_unused_ones() {
        let eps = |n: usize| -> Vec<(IpAddr, u16)> {
            names(n).iter().map(|s| s.parse::<SocketAddr>().unwrap()).map(|a| (a.ip(), a.port())).collect()
        };
        let mut cache = TableCache::default();
        let t3 = cache.table(eps(3), 1021);
        let direct: Vec<usize> = table(&names(3), 1021).into_iter().map(|i| i as usize).collect();
        assert_eq!(t3.iter().collect::<Vec<_>>(), direct);
        assert!(t3.same(&cache.table(eps(3), 1021)), "a hit is the same table");
        cache.table(eps(5), 1021);
        cache.end_pass();
        assert_eq!(cache.len(), 2);
        // The next pass uses only the 5-endpoint table: the 3-endpoint one is dropped.
        cache.table(eps(5), 1021);
        cache.end_pass();
        assert_eq!(cache.len(), 1);
        // Same endpoints, other size: another table.
        assert_ne!(cache.table(eps(5), 4093).len(), 1021);
    }

    #[test]
    fn a_partial_plan_keeps_the_tables_held_elsewhere_and_drops_the_others_once_grown() {
        let eps = |first: usize| -> Vec<(IpAddr, u16)> {
            (first..first + 3).map(|i| (IpAddr::from([10, 244, (i / 200) as u8, (i % 200) as u8]), 8080)).collect()
        };
        let mut cache = TableCache::default();
        // A full plan: every table is held by the plan (here: `held`).
        let held: Vec<Slots> = (0..100).map(|i| cache.table(eps(i * 3), 251)).collect();
        cache.end_pass();
        assert_eq!(cache.len(), 100);
        // Partial plans of one ServicePort each: the others' tables stay, used or not.
        let t = cache.table(eps(100_000), 251);
        cache.end_partial_pass();
        assert_eq!(cache.len(), 101);
        drop(t);
        // Tables no one holds pile up until the cache doubles (plus a margin), then go.
        for i in 0..1200 {
            drop(cache.table(eps(200_000 + i * 3), 251));
            cache.end_partial_pass();
        }
        assert!(cache.len() < 1200, "dropped once grown: {}", cache.len());
        for (i, t) in held.iter().enumerate() {
            assert!(t.same(&cache.table(eps(i * 3), 251)), "a table the plan holds is kept");
        }
    }

    #[test]
    fn tables_computed_ahead_are_the_ones_a_plan_would_compute() {
        let eps = |first: usize| -> Vec<(IpAddr, u16)> {
            (first..first + 4).map(|i| (IpAddr::from([10, 244, (i / 200) as u8, (i % 200) as u8]), 8080)).collect()
        };
        let mut cache = TableCache::default();
        let keys: Vec<TableKey> = (0..PREFILL_MIN + 40).map(|i| (eps(i * 4).into(), 251)).collect();
        // One of them twice, and one the cache already has.
        let had = cache.table(eps(0), 251);
        cache.prefill(keys.iter().cloned().chain([keys[7].clone()]));
        if std::thread::available_parallelism().map_or(1, |n| n.get()) > 1 {
            assert_eq!(cache.len(), keys.len(), "every table computed ahead, once");
        }
        assert!(had.same(&cache.table(eps(0), 251)), "a table the cache had is kept");
        for (endpoints, m) in keys {
            let names: Vec<String> = endpoints.iter().map(|(a, p)| SocketAddr::new(a, p).to_string()).collect();
            let direct: Vec<usize> = table(&names, m).into_iter().map(|i| i as usize).collect();
            assert_eq!(cache.table(endpoints, m).iter().collect::<Vec<_>>(), direct);
        }
        cache.end_pass();
        assert_eq!(cache.len(), PREFILL_MIN + 40, "all used by this pass");
    }

    #[test]
    fn packed_endpoints_read_back_as_written() {
        let list: Vec<(IpAddr, u16)> =
            vec![("10.0.0.1".parse().unwrap(), 80), ("fd00::1".parse().unwrap(), 8443), ("0.0.0.0".parse().unwrap(), 0)];
        assert_eq!(TableEndpoints::new(list.clone()).iter().collect::<Vec<_>>(), list);
        assert_eq!(TableEndpoints::new([]).iter().count(), 0);
    }

    #[test]
    fn no_backends_no_table() {
        assert!(table(&[], 251).is_empty());
    }
}
