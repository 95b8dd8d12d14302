//! A Maglev chunk as the agent holds it (`LB_MAGLEV` values): 256 slots of a table
//! (`MAGLEV_CHUNK`), each the id of a backend. The kernel stores 256 four-byte ids (1 KiB) per
//! chunk; the agent keeps a planned chunk as a reference into its table instead: the table's
//! slots as two-byte indices (shared with the planner's table cache and by all of the table's
//! chunks) and the table's backend ids (held once per table). At 10,000 Services with
//! 1,021-slot tables that is 40,000 chunks, 40 MB as kernel images and about 2 MB as
//! references. A chunk read back from the kernel
//! (adopted at start) keeps its kernel image until the planner replaces it.

use std::sync::Arc;

use lb_common::{MAGLEV_CHUNK, MaglevChunk};

use super::codec::Kernel;

/// A planned Maglev table: slot → index into `ids` (the slots shared with the planner's table
/// cache), and the backend ids those indices name.
#[derive(Debug)]
pub struct Table {
    pub slots: Arc<[u16]>,
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
    pub fn all(slots: Arc<[u16]>, ids: Vec<u32>) -> impl Iterator<Item = (u32, Chunk)> {
        let n = (slots.len() as u32).div_ceil(MAGLEV_CHUNK);
        let table = Arc::new(Table { slots, ids: ids.into_boxed_slice() });
        (0..n).map(move |chunk| (chunk, Self::Planned { table: table.clone(), chunk }))
    }

    /// The backend id in slot `i` (0..64) of the chunk.
    pub fn id(&self, i: usize) -> u32 {
        match self {
            Self::Planned { table, chunk } => {
                let slot = *chunk as usize * MAGLEV_CHUNK as usize + i;
                table.slots.get(slot).map_or(0, |idx| table.ids[*idx as usize])
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
        let n = MAGLEV_CHUNK as u16 + 6;
        let slots: Arc<[u16]> = (0..n).map(|s| s % 3).collect();
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
        let copy = Chunk::all((0..n).map(|s| s % 3).collect(), vec![11, 22, 33]).nth(1).unwrap().1;
        assert_eq!(copy, c1);
        let moved = Chunk::all(slots, vec![11, 22, 34]).next().unwrap().1;
        assert_ne!(moved, c0, "a backend id changed");
    }
}
