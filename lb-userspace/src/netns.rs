//! Entering a network namespace (`--netns`), before any thread or socket exists.

use std::{fs::File, io, os::fd::AsRawFd as _, path::Path};

/// Moves the calling thread into the network namespace at `path` (such as `/run/netns/NAME`).
/// Call it before starting other threads: they inherit the namespace of their creator.
pub fn enter(path: &Path) -> io::Result<()> {
    let f = File::open(path)?;
    // SAFETY: plain syscall on an fd we own.
    if unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
