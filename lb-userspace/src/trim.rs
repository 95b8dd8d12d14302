//! Handing freed heap memory back to the kernel before the agent's peak.
//!
//! Each thread allocates from an arena of its own (glibc), and memory freed in one arena is
//! not reused by allocations in another. A start parses every object on the runtime's threads
//! (transient: list pages, JSON) and then plans and writes the maps: the parsing's freed memory
//! would stay resident through the writes, the peak of a start.

/// Returns the free memory of every arena to the kernel (`malloc_trim`); a no-op where the
/// C library has no such call.
pub fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only walks the allocator's own free lists.
    unsafe {
        libc::malloc_trim(0);
    }
}
