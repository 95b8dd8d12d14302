//! The address filter's contents (`LB_ADDR_FILTER`): a bit per hashed address
//! ([`lb_common::addr_filter_slot`]) in two bitmaps, one over every frontend address (the
//! addresses in `LB_SERVICES`), one over every backend address: the backends of the state and
//! the quarantined ones ([`PlanMemory`](super::PlanMemory)), whose established flows may still
//! send replies to translate. The datapath passes a packet at once when its destination's bit
//! is clear in the frontend bitmap and its source's bit clear in the backend bitmap. A bit set by an address that is not ours costs that
//! packet a hash lookup, nothing more; a bit missing would pass a service's packets
//! untranslated, so the map table writes lost bits last (`maps::table::Transition`).

use std::collections::{BTreeMap, BTreeSet};

use super::HashMap;

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
/// users each address has, and how many distinct addresses set each bit.
#[derive(Debug, Default)]
pub struct AddrCounts {
    users: HashMap<(u32, [u8; 16]), u32>,
    bits: BitCounts,
}

/// How many distinct addresses set each bit of the filter: one byte per bit of both bitmaps
/// (2 MiB, allocated zeroed at the first address, so the kernel maps only the pages written), in
/// place of a hash map of the set bits (at 100,000 Services × 10 endpoints a million entries,
/// rehashed as they grew: 8 % of the planning). A count saturates at 255 and then stays: its bit
/// stays set, which costs the packets of a foreign address that hashes there a lookup (module
/// docs), never a missed translation.
#[derive(Debug, Default)]
struct BitCounts(Vec<u8>);

impl BitCounts {
    /// The counter of `bit` (a single bit) in `word`.
    fn at(&mut self, word: u32, bit: u64) -> &mut u8 {
        if self.0.is_empty() {
            self.0 = vec![0; 2 * lb_common::ADDR_FILTER_BITS as usize];
        }
        &mut self.0[word as usize * 64 + bit.trailing_zeros() as usize]
    }

    /// One more address sets `bit`; true when it is the first.
    fn up(&mut self, word: u32, bit: u64) -> bool {
        let n = self.at(word, bit);
        *n = n.saturating_add(1);
        *n == 1
    }

    /// One address fewer sets `bit`; true when none is left (a saturated count never ends).
    fn down(&mut self, word: u32, bit: u64) -> bool {
        let n = self.at(word, bit);
        if *n == u8::MAX {
            return false;
        }
        *n = n.saturating_sub(1);
        *n == 0
    }
}

impl AddrCounts {
    /// Room for the changes to come ([`crate::room`]).
    pub fn make_room(&mut self) {
        crate::room::make_room(&mut self.users);
    }

    /// One more user of `addr` in bitmap `which`; a bit that becomes set is written to `words`
    /// and its word recorded in `touched`.
    pub fn add(&mut self, which: u32, addr: [u8; 16], words: &mut BTreeMap<u32, u64>, touched: &mut BTreeSet<u32>) {
        let n = self.users.entry((which, addr)).or_insert(0);
        *n += 1;
        if *n > 1 {
            return;
        }
        let (word, bit) = addr_filter_slot(&addr, which);
        if self.bits.up(word, bit) {
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
                    self.bits.up(word, bit);
                    true
                } else {
                    !self.bits.down(word, bit)
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

    /// One user fewer of `addr` (which must have one); a bit no address sets any more is
    /// cleared.
    pub fn remove(&mut self, which: u32, addr: [u8; 16], words: &mut BTreeMap<u32, u64>, touched: &mut BTreeSet<u32>) {
        let Some(n) = self.users.get_mut(&(which, addr)) else {
            debug_assert!(false, "address filter: removing an address it does not hold");
            return;
        };
        *n -= 1;
        if *n > 0 {
            return;
        }
        self.users.remove(&(which, addr));
        let (word, bit) = addr_filter_slot(&addr, which);
        if !self.bits.down(word, bit) {
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
    fn a_bit_set_by_more_addresses_than_its_counter_holds_stays_set() {
        // 300 IPv6 addresses on one bit: the hash mixes the words by XOR, so addresses whose
        // first and last words XOR to the same value (the middle ones zero) share a slot.
        let same: Vec<[u8; 16]> = (1u32..=300)
            .map(|i| {
                let mut a = [0u8; 16];
                a[..4].copy_from_slice(&(0x2001_0db8 ^ i).to_ne_bytes());
                a[12..].copy_from_slice(&i.to_ne_bytes());
                a
            })
            .collect();
        let slot = addr_filter_slot(&same[0], ADDR_FILTER_BACKEND);
        assert!(same.iter().all(|a| addr_filter_slot(a, ADDR_FILTER_BACKEND) == slot));
        let (mut words_, mut touched) = (BTreeMap::new(), BTreeSet::new());
        let mut c = AddrCounts::default();
        for a in &same {
            c.add(ADDR_FILTER_BACKEND, *a, &mut words_, &mut touched);
        }
        for a in &same[1..] {
            c.remove(ADDR_FILTER_BACKEND, *a, &mut words_, &mut touched);
        }
        assert_eq!(words_, words([], [&same[0]]), "one address still sets it");
        c.remove(ADDR_FILTER_BACKEND, same[0], &mut words_, &mut touched);
        assert_eq!(words_, words([], [&same[0]]), "a saturated count keeps its bit: a lookup too many, never one too few");
    }
}
