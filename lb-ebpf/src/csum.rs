//! Incremental Internet checksum updates (RFC 1624: HC' = ~(~HC + ~m + m')) for rewrites done by
//! direct packet access (XDP, ICMP errors). Values are the raw words as they sit in the packet:
//! one's-complement arithmetic gives the same result in either byte order as long as every word
//! is taken the same way.

#[inline(always)]
fn fold(mut sum: u32) -> u16 {
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    sum as u16
}

/// Checksum after a 16-bit word changed from `old` to `new`.
#[inline(always)]
pub fn replace16(check: u16, old: u16, new: u16) -> u16 {
    let sum = u32::from(!check) + u32::from(!old) + u32::from(new);
    !fold(sum)
}

/// Checksum after a 32-bit word changed from `old` to `new`.
#[inline(always)]
pub fn replace32(check: u16, old: u32, new: u32) -> u16 {
    let check = replace16(check, old as u16, new as u16);
    replace16(check, (old >> 16) as u16, (new >> 16) as u16)
}

/// The Internet checksum of `len` 16-bit words at `words` plus `initial` (a partial sum).
///
/// # Safety
/// `words .. words + len` must be inside the packet.
#[inline(always)]
pub unsafe fn checksum_words(words: *const u16, len: usize, initial: u32) -> u16 {
    let mut sum = initial;
    let mut i = 0;
    while i < len {
        // SAFETY: the caller guarantees the range.
        sum += u32::from(unsafe { core::ptr::read_unaligned(words.add(i)) });
        i += 1;
    }
    !fold(sum)
}
