//! A Maglev chunk as the agent holds it (`LB_MAGLEV` values): 256 slots of a table
//! (`MAGLEV_CHUNK`), each the id of a backend. The kernel stores 256 four-byte ids (1 KiB) per
//! chunk; the agent keeps a planned chunk as a reference into its table instead: the table's
//! slots as small indices ([`Slots`], shared with the planner's table cache and by all of the
//! table's chunks) and the table's backend ids (held once per table). At 10,000 Services with
//! 1,021-slot tables that is 40,000 chunks, 40 MB as kernel images and about 2 MB as
//! references. A chunk read back from the kernel
//! (adopted at start) keeps its kernel image until the planner replaces it.

use std::sync::Arc;

use lb_common::{MAGLEV_CHUNK, MaglevChunk};

use super::codec::Kernel;

/// A Maglev table's slots, each the index of its backend in the table's backend list: half a
/// byte a slot when the table has at most 16 backends (a 1,021-slot table of 10 backends takes
/// 511 bytes; most Services have so few), one byte up to 256 backends, two bytes otherwise (a
/// service has at most `BACKENDS_MAX` backends, far below 65,536 in one table). Shared: a
/// clone copies a pointer.
#[derive(Clone, Debug)]
pub enum Slots {
    /// Slot `i` in the low half of byte `i / 2` when `i` is even, the high half when odd;
    /// `odd`: the last byte holds one slot only.
    Nibble {
        halves: Arc<[u8]>,
        odd: bool,
    },
    Narrow(Arc<[u8]>),
    Wide(Arc<[u16]>),
}

impl Slots {
    /// The slots `indices` (each below `backends`).
    pub fn new(indices: &[u32], backends: usize) -> Self {
        if backends <= 16 {
            let halves = indices.chunks(2).map(|p| p[0] as u8 | p.get(1).map_or(0, |&hi| (hi as u8) << 4)).collect();
            Self::Nibble { halves, odd: indices.len() % 2 == 1 }
        } else if backends <= 256 {
            Self::Narrow(indices.iter().map(|&i| i as u8).collect())
        } else {
            Self::Wide(indices.iter().map(|&i| i as u16).collect())
        }
    }

    pub fn len(&self) -> usize {
        match self {
            Self::Nibble { halves, odd } => 2 * halves.len() - usize::from(*odd),
            Self::Narrow(s) => s.len(),
            Self::Wide(s) => s.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The backend index in slot `slot`, if the table has that slot.
    pub fn get(&self, slot: usize) -> Option<usize> {
        match self {
            Self::Nibble { .. } if slot >= self.len() => None,
            Self::Nibble { halves, .. } => Some(usize::from(halves[slot / 2] >> (4 * (slot % 2)) & 0xf)),
            Self::Narrow(s) => s.get(slot).map(|&i| usize::from(i)),
            Self::Wide(s) => s.get(slot).map(|&i| usize::from(i)),
        }
    }

    /// The very same slots (not only equal ones).
    pub fn same(&self, other: &Slots) -> bool {
        match (self, other) {
            (Self::Nibble { halves: a, .. }, Self::Nibble { halves: b, .. }) => Arc::ptr_eq(a, b),
            (Self::Narrow(a), Self::Narrow(b)) => Arc::ptr_eq(a, b),
            (Self::Wide(a), Self::Wide(b)) => Arc::ptr_eq(a, b),
            _ => false,
        }
    }

    /// Holders of these slots (the cache that computed them counts as one).
    pub fn holders(&self) -> usize {
        match self {
            Self::Nibble { halves, .. } => Arc::strong_count(halves),
            Self::Narrow(s) => Arc::strong_count(s),
            Self::Wide(s) => Arc::strong_count(s),
        }
    }

    /// Every slot's backend index, in slot order.
    pub fn iter(&self) -> impl Iterator<Item = usize> + '_ {
        (0..self.len()).filter_map(|slot| self.get(slot))
    }
}

/// A planned Maglev table: its slots (shared with the planner's table cache), and the backend
/// ids their indices name.
#[derive(Debug)]
pub struct Table {
    pub slots: Slots,
    pub ids: Box<[u32]>,
}

/// One `LB_MAGLEV` value (16 bytes: small in every write and shadow that holds it). Two chunks
/// are equal when they hold the same ids, however held.
#[derive(Clone, Debug)]
pub enum Chunk {
    /// Chunk `chunk` of a planned table: slot `chunk * MAGLEV_CHUNK + i` holds `ids[slots[..]]`; slots
    /// past the table's end hold 0.
    Planned { table: Arc<Table>, chunk: u32 },
    /// The chunk as the kernel holds it.
    Raw(Arc<MaglevChunk>),
}
const _: () = assert!(size_of::<Chunk>() == 16);

impl Chunk {
    /// Every chunk of the table whose slots are `slots` (indices into `ids`), in chunk order.
    pub fn all(slots: Slots, ids: Vec<u32>) -> impl Iterator<Item = (u32, Chunk)> {
        let n = (slots.len() as u32).div_ceil(MAGLEV_CHUNK);
        let table = Arc::new(Table { slots, ids: ids.into_boxed_slice() });
        (0..n).map(move |chunk| (chunk, Self::Planned { table: table.clone(), chunk }))
    }

    /// The backend id in slot `i` (0..64) of the chunk.
    pub fn id(&self, i: usize) -> u32 {
        match self {
            Self::Planned { table, chunk } => {
                let slot = *chunk as usize * MAGLEV_CHUNK as usize + i;
                table.slots.get(slot).map_or(0, |idx| table.ids[idx])
            }
            Self::Raw(c) => c.ids[i],
        }
    }

    /// The kernel image: the `MAGLEV_CHUNK` ids.
    pub fn ids(&self) -> [u32; MAGLEV_CHUNK as usize] {
        match self {
            Self::Planned { .. } => std::array::from_fn(|i| self.id(i)),
            Self::Raw(c) => c.ids,
        }
    }
}

impl From<MaglevChunk> for Chunk {
    fn from(c: MaglevChunk) -> Self {
        Self::Raw(Arc::new(c))
    }
}

impl Default for Chunk {
    fn default() -> Self {
        MaglevChunk::default().into()
    }
}

impl PartialEq for Chunk {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            // The same chunk of the same table: a state compared with the one it was planned
            // from, the common case of a sync.
            (Self::Planned { table: t1, chunk: c1 }, Self::Planned { table: t2, chunk: c2 })
                if c1 == c2 && Arc::ptr_eq(t1, t2) =>
            {
                true
            }
            (Self::Raw(a), Self::Raw(b)) if Arc::ptr_eq(a, b) => true,
            _ => self.ids() == other.ids(),
        }
    }
}

impl Eq for Chunk {}

impl Kernel for Chunk {
    const SIZE: usize = MaglevChunk::SIZE;

    fn to_bytes(&self) -> Vec<u8> {
        MaglevChunk { ids: self.ids() }.to_bytes()
    }

    fn from_bytes(bytes: &[u8]) -> Self {
        MaglevChunk::from_bytes(bytes).into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_planned_chunk_is_the_kernel_chunk_it_stands_for() {
        // A table one chunk and 6 slots long over three backends: chunk 1 has 6 slots, then zeros.
        let n = MAGLEV_CHUNK + 6;
        let indices: Vec<u32> = (0..n).map(|s| s % 3).collect();
        let slots = Slots::new(&indices, 3);
        assert!(matches!(slots, Slots::Nibble { .. }));
        let chunks: Vec<(u32, Chunk)> = Chunk::all(slots.clone(), vec![11, 22, 33]).collect();
        assert_eq!(chunks.iter().map(|(i, _)| *i).collect::<Vec<_>>(), [0, 1]);
        let (c0, c1) = (chunks[0].1.clone(), chunks[1].1.clone());
        assert_eq!(c0.id(0), 11);
        assert_eq!(c0.id(5), 33);
        assert_eq!(c1.id(0), [11, 22, 33][MAGLEV_CHUNK as usize % 3]);
        assert_eq!(c1.id(6), 0, "past the table's end");
        let read = Chunk::from_bytes(&c1.to_bytes());
        assert!(matches!(read, Chunk::Raw(_)));
        assert_eq!(read, c1, "equal to its kernel image");
        assert_eq!(read.ids(), c1.ids());
        assert_ne!(c0, c1);
        // Another table with the same slots and ids is the same chunk.
        let copy = Chunk::all(Slots::new(&indices, 3), vec![11, 22, 33]).nth(1).unwrap().1;
        assert_eq!(copy, c1);
        let moved = Chunk::all(slots, vec![11, 22, 34]).next().unwrap().1;
        assert_ne!(moved, c0, "a backend id changed");
        // The same table held one or two bytes a slot is the same chunk.
        let wide = Slots::Wide(indices.iter().map(|&i| i as u16).collect());
        assert_eq!(Chunk::all(wide, vec![11, 22, 33]).nth(1).unwrap().1, c1);
        let narrow = Slots::Narrow(indices.iter().map(|&i| i as u8).collect());
        assert_eq!(Chunk::all(narrow, vec![11, 22, 33]).nth(1).unwrap().1, c1);
    }

    #[test]
    fn slots_take_half_a_byte_up_to_16_backends() {
        for len in [1usize, 2, 1021, 1022] {
            let indices: Vec<u32> = (0..len as u32).map(|s| (s * 7 + s / 3) % 16).collect();
            let slots = Slots::new(&indices, 16);
            assert!(matches!(slots, Slots::Nibble { .. }));
            assert_eq!(slots.len(), len);
            assert_eq!(slots.iter().collect::<Vec<_>>(), indices.iter().map(|&i| i as usize).collect::<Vec<_>>(), "len {len}");
            assert_eq!(slots.get(len), None);
        }
        assert!(matches!(Slots::new(&[16], 17), Slots::Narrow(_)));
    }

    #[test]
    fn slots_take_one_byte_up_to_256_backends_and_two_above() {
        let indices: Vec<u32> = (0..1021).map(|s| s % 257).collect();
        let wide = Slots::new(&indices, 257);
        assert!(matches!(wide, Slots::Wide(_)));
        assert_eq!(wide.get(256), Some(256));
        assert_eq!(wide.get(1021), None);
        let narrow = Slots::new(&indices.iter().map(|i| i % 256).collect::<Vec<_>>(), 256);
        assert!(matches!(narrow, Slots::Narrow(_)));
        assert_eq!(narrow.get(255), Some(255));
        assert_eq!(narrow.iter().count(), 1021);
    }
}
