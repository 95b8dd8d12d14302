//! Internet checksum arithmetic (RFC 1071, RFC 1624). Values are the raw words as they sit in the
//! packet: one's-complement arithmetic gives the same result in either byte order as long as
//! every word is taken the same way.

/// Folds a sum to 16 bits with end-around carries.
#[inline(always)]
fn fold(mut sum: u64) -> u16 {
    sum = (sum & 0xffff_ffff) + (sum >> 32);
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    sum as u16
}

/// The change of a sum when words are replaced: `Σ(~old + new)` (RFC 1624, eqn. 3). One delta
/// updates a checksum for every field it covers at once, directly ([`Delta::apply`]) or through
/// the kernel's `*_csum_replace` helpers in diff mode ([`Delta::wsum`]).
#[derive(Clone, Copy, Default)]
pub struct Delta(u64);

impl Delta {
    /// A 32-bit word changed from `old` to `new`.
    #[inline(always)]
    pub fn word(&mut self, old: u32, new: u32) {
        self.0 += u64::from(!old) + u64::from(new);
    }

    /// A 16-bit word changed from `old` to `new`.
    #[inline(always)]
    pub fn half(&mut self, old: u16, new: u16) {
        self.0 += u64::from(!old) + u64::from(new);
    }

    /// Adds another delta.
    #[inline(always)]
    pub fn add(&mut self, other: Delta) {
        self.0 += other.0;
    }

    /// The checksum `check` after the change: `~(~check + delta)`.
    #[inline(always)]
    pub fn apply(self, check: u16) -> u16 {
        !fold(u64::from(!check) + self.0)
    }

    /// A partial checksum (`CHECKSUM_PARTIAL`: the field holds the pseudo-header's sum, not
    /// complemented, and the stack or the NIC adds the rest) after a pseudo-header change:
    /// `check + delta`, as the kernel's `inet_proto_csum_replace*` update it.
    #[inline(always)]
    pub fn apply_partial(self, check: u16) -> u16 {
        fold(u64::from(check) + self.0)
    }

    /// The delta as the 32-bit `__wsum` the kernel's checksum helpers take.
    #[inline(always)]
    pub fn wsum(self) -> u32 {
        let mut s = (self.0 & 0xffff_ffff) + (self.0 >> 32);
        s = (s & 0xffff_ffff) + (s >> 32);
        s as u32
    }
}

/// The Internet checksum of `len` 16-bit words at `words` plus `initial` (a partial sum).
///
/// # Safety
/// `words .. words + len` must be inside the packet.
#[inline(always)]
pub unsafe fn checksum_words(words: *const u16, len: usize, initial: u32) -> u16 {
    let mut sum = u64::from(initial);
    let mut i = 0;
    while i < len {
        // SAFETY: the caller guarantees the range.
        sum += u64::from(unsafe { core::ptr::read_unaligned(words.add(i)) });
        i += 1;
    }
    !fold(sum)
}
