//! The address filter's contents (`LB_ADDR_FILTER`): a bit per hashed address
//! ([`lb_common::addr_filter_slot`]) in two bitmaps, one over every frontend address (the
//! addresses in `LB_SERVICES`), one over every backend address: the backends of the state and
//! the quarantined ones ([`PlanMemory`](super::PlanMemory)), whose established flows may still
//! send replies to translate. The datapath passes a packet at once when its destination's bit
//! is clear in the frontend bitmap and its source's bit clear in the backend bitmap. A bit set by an address that is not ours costs that
//! packet a hash lookup, nothing more; a bit missing would pass a service's packets
//! untranslated, so the map table writes lost bits last (`maps::table::Transition`).

use std::collections::{BTreeMap, BTreeSet};

use lb_common::{ADDR_FILTER_BACKEND, ADDR_FILTER_FRONTEND, addr_filter_slot};

/// The whole filter for these frontend and backend addresses (the full plan).
pub fn words<'a>(
    frontends: impl IntoIterator<Item = &'a [u8; 16]>,
    backends: impl IntoIterator<Item = &'a [u8; 16]>,
) -> BTreeMap<u32, u64> {
    let mut out = BTreeMap::new();
    let all =
        frontends.into_iter().map(|a| (a, ADDR_FILTER_FRONTEND)).chain(backends.into_iter().map(|a| (a, ADDR_FILTER_BACKEND)));
    for (addr, which) in all {
        let (word, bit) = addr_filter_slot(addr, which);
        *out.entry(word).or_insert(0) |= bit;
    }
    out
}

/// The filter kept up to date as addresses come and go (the incremental planner): how many
/// users set each bit. A user is one contribution of an address (a frontend entry, a backend
/// of a ServicePort, a quarantined backend), so an address shared by several counts once per
/// use; a bit is set while its count is above zero.
///
/// One counter per bit of both bitmaps (a byte, 2 MiB allocated zeroed at the first address, so
/// the kernel maps only the pages written), in place of a hash map of users per address and one
/// of set bits (at 100,000 Services × 10 endpoints a million entries each, rehashed as they
/// grew: 8 % of the planning, ~50 MiB). A count saturates at 255 and then stays: its bit stays
/// set, which costs the packets of a foreign address that hashes there a lookup (module docs),
/// never a missed translation. The addresses that reach it are those with hundreds of frontends
/// (a node address with every NodePort, a LoadBalancer IP shared by many ports), which stay.
#[derive(Debug, Default)]
pub struct AddrCounts(Vec<u8>);

impl AddrCounts {
    /// The counter of `bit` (a single bit) in `word`.
    fn at(&mut self, word: u32, bit: u64) -> &mut u8 {
        if self.0.is_empty() {
            self.0 = vec![0; 2 * lb_common::ADDR_FILTER_BITS as usize];
        }
        &mut self.0[word as usize * 64 + bit.trailing_zeros() as usize]
    }

    /// One more user of `bit`; true when it is the first.
    fn up(&mut self, word: u32, bit: u64) -> bool {
        let n = self.at(word, bit);
        *n = n.saturating_add(1);
        *n == 1
    }

    /// One user fewer of `bit`; true when none is left (a saturated count never ends).
    fn down(&mut self, word: u32, bit: u64) -> bool {
        let n = self.at(word, bit);
        debug_assert!(*n > 0, "address filter: removing a user the bit does not have");
        if *n == u8::MAX {
            return false;
        }
        *n = n.saturating_sub(1);
        *n == 0
    }

    /// One more user of `addr` in bitmap `which`; a bit that becomes set is written to `words`
    /// and its word recorded in `touched`.
    pub fn add(&mut self, which: u32, addr: [u8; 16], words: &mut BTreeMap<u32, u64>, touched: &mut BTreeSet<u32>) {
        let (word, bit) = addr_filter_slot(&addr, which);
        if self.up(word, bit) {
            *words.entry(word).or_insert(0) |= bit;
            touched.insert(word);
        }
    }

    /// Every bit of `sticky` gets one user more (`add`) or fewer (`!add`): the pinned filter
    /// kept after a restart ([`PlanMemory::adopt`](super::PlanMemory::adopt)).
    pub fn sticky(
        &mut self,
        sticky: &BTreeMap<u32, u64>,
        add: bool,
        words: &mut BTreeMap<u32, u64>,
        touched: &mut BTreeSet<u32>,
    ) {
        for (&word, &bits) in sticky {
            for i in (0..64).filter(|i| bits & (1u64 << i) != 0) {
                let bit = 1u64 << i;
                let set = if add {
                    self.up(word, bit);
                    true
                } else {
                    !self.down_saturating_at_zero(word, bit)
                };
                let w = words.entry(word).or_insert(0);
                let before = *w;
                if set {
                    *w |= bit;
                } else {
                    *w &= !bit;
                }
                if *w != before {
                    touched.insert(word);
                }
                if *w == 0 {
                    words.remove(&word);
                }
            }
        }
    }

    /// One user fewer of `addr` (which must have one); a bit no user sets any more is
    /// cleared.
    pub fn remove(&mut self, which: u32, addr: [u8; 16], words: &mut BTreeMap<u32, u64>, touched: &mut BTreeSet<u32>) {
        let (word, bit) = addr_filter_slot(&addr, which);
        if !self.down(word, bit) {
            return;
        }
        if let Some(w) = words.get_mut(&word) {
            *w &= !bit;
            if *w == 0 {
                words.remove(&word);
            }
        }
        touched.insert(word);
    }

    /// [`AddrCounts::down`] for the pinned filter's bits, whose count may already be 0 (a
    /// sticky bit no address of the state sets).
    fn down_saturating_at_zero(&mut self, word: u32, bit: u64) -> bool {
        if *self.at(word, bit) == 0 {
            return true;
        }
        self.down(word, bit)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counted_bits_equal_the_full_computation_and_clear_only_with_their_last_address() {
        let a = lb_common::v4_mapped([10, 96, 0, 1]);
        let b = lb_common::v4_mapped([10, 244, 0, 7]);
        let (mut words_, mut touched) = (BTreeMap::new(), BTreeSet::new());
        let mut c = AddrCounts::default();
        c.add(ADDR_FILTER_FRONTEND, a, &mut words_, &mut touched);
        c.add(ADDR_FILTER_FRONTEND, a, &mut words_, &mut touched);
        c.add(ADDR_FILTER_BACKEND, b, &mut words_, &mut touched);
        assert_eq!(words_, words([&a], [&b]));
        assert_eq!(touched.len(), words_.len());
        c.remove(ADDR_FILTER_FRONTEND, a, &mut words_, &mut touched);
        assert_eq!(words_, words([&a], [&b]), "a still has a user");
        c.remove(ADDR_FILTER_FRONTEND, a, &mut words_, &mut touched);
        assert_eq!(words_, words([], [&b]));
        c.remove(ADDR_FILTER_BACKEND, b, &mut words_, &mut touched);
        assert!(words_.is_empty());
    }

    #[test]
    fn a_bit_with_more_users_than_its_counter_holds_stays_set() {
        let a = lb_common::v4_mapped([10, 244, 0, 1]);
        let (mut words_, mut touched) = (BTreeMap::new(), BTreeSet::new());
        let mut c = AddrCounts::default();
        let users = u32::from(u8::MAX) + 10;
        for _ in 0..users {
            c.add(ADDR_FILTER_BACKEND, a, &mut words_, &mut touched);
        }
        for _ in 1..users {
            c.remove(ADDR_FILTER_BACKEND, a, &mut words_, &mut touched);
        }
        assert_eq!(words_, words([], [&a]), "one user is left");
        c.remove(ADDR_FILTER_BACKEND, a, &mut words_, &mut touched);
        assert_eq!(words_, words([], [&a]), "a saturated count keeps its bit: a lookup too many, never one too few");
    }
}
