//! How keys and values of the agent-written maps sit in the kernel: as the bytes of their
//! `#[repr(C)]` layout from `lb_common` (which has no implicit padding and a size assertion per
//! type), except for the values that are not plain records: a set member (`()`, stored as the
//! value 1), a value shared between states (`Arc<T>`, stored as the `T`) and a Maglev chunk
//! (`chunk::Chunk`, stored as its `MAGLEV_CHUNK` ids).

use std::sync::Arc;

use lb_common::{
    Backend, MaglevChunk, MaglevKey, MemberKey, SelectKey, ServiceKey, ServiceValue, SourceRangeKey, SvcLabels, SvcName,
};

/// A key or value type of an agent-written map, with its kernel encoding.
pub trait Kernel: Sized {
    /// Bytes in the kernel map.
    const SIZE: usize;
    fn to_bytes(&self) -> Vec<u8>;
    /// `bytes` holds exactly [`Kernel::SIZE`] bytes read from the map.
    fn from_bytes(bytes: &[u8]) -> Self;
}

/// Plain records: their bytes are their layout.
macro_rules! plain {
    ($($t:ty),* $(,)?) => {$(
        // Every type here is `aya::Pod` (lb_common: repr(C), integers and byte arrays, no
        // implicit padding): any bit pattern is a value and its bytes are fully initialised.
        impl Kernel for $t {
            const SIZE: usize = size_of::<$t>();

            fn to_bytes(&self) -> Vec<u8> {
                // SAFETY: see above; reading the object's own bytes.
                unsafe { std::slice::from_raw_parts((self as *const $t).cast::<u8>(), Self::SIZE) }.to_vec()
            }

            fn from_bytes(bytes: &[u8]) -> Self {
                assert_eq!(bytes.len(), Self::SIZE, concat!("bytes of a ", stringify!($t)));
                // SAFETY: SIZE bytes, any bit pattern valid (see above); unaligned read.
                unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<$t>()) }
            }
        }
    )*};
}

plain!(
    u32,
    u64,
    SvcName,
    SvcLabels,
    Backend,
    MemberKey,
    SelectKey,
    MaglevKey,
    MaglevChunk,
    SourceRangeKey,
    ServiceKey,
    ServiceValue
);

/// A set member: the key is what matters; the kernel value is 1.
impl Kernel for () {
    const SIZE: usize = size_of::<u32>();

    fn to_bytes(&self) -> Vec<u8> {
        1u32.to_ne_bytes().to_vec()
    }

    fn from_bytes(_: &[u8]) -> Self {}
}

/// A value held once by every state that has it (names): the planned state, the
/// shadow of the maps and the writes share it, and a write stays small.
impl<T: Kernel> Kernel for Arc<T> {
    const SIZE: usize = T::SIZE;

    fn to_bytes(&self) -> Vec<u8> {
        self.as_ref().to_bytes()
    }

    fn from_bytes(bytes: &[u8]) -> Self {
        Arc::new(T::from_bytes(bytes))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_through_their_bytes() {
        let k = ServiceKey { addr: lb_common::v4_mapped([10, 96, 0, 1]), port_be: 80u16.to_be(), proto: 6, _pad: 0 };
        assert_eq!(ServiceKey::from_bytes(&k.to_bytes()), k);
        assert_eq!(k.to_bytes().len(), 20);
        let mut chunk = MaglevChunk::default();
        chunk.ids[63] = 7;
        assert_eq!(*<Arc<MaglevChunk>>::from_bytes(&Arc::new(chunk).to_bytes()), chunk);
        assert_eq!(().to_bytes(), 1u32.to_ne_bytes());
    }

    /// An LPM trie key is `{ u32 prefix length; data }` in the kernel: the record's layout.
    #[test]
    fn a_source_range_key_is_the_lpm_layout() {
        let key = SourceRangeKey { prefix_len: 128 + 120, data: Default::default() };
        assert_eq!(key.to_bytes()[..4], (128u32 + 120).to_ne_bytes());
        assert_eq!(SourceRangeKey::SIZE, 4 + 32);
    }
}
