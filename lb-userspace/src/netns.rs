//! Running work inside another network namespace (`--netns`) without moving the agent: the
//! agent's sockets (API server, metrics) stay where it was started, and only the operations
//! that act on interfaces by name (attaching programs, binding node-address listeners) run on a
//! helper thread that entered the namespace.

use std::{fs::File, io, os::fd::AsRawFd as _, path::Path};

/// Moves the calling thread into the network namespace at `path` (such as `/run/netns/NAME`).
pub fn enter(path: &Path) -> io::Result<()> {
    let f = File::open(path)?;
    // SAFETY: plain syscall on an fd we own; it affects the calling thread only.
    if unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Runs `f` in the network namespace at `path` (on a scoped thread), or right here when `path`
/// is `None`.
pub fn run_in<T: Send>(path: Option<&Path>, f: impl FnOnce() -> T + Send) -> io::Result<T> {
    let Some(path) = path else {
        return Ok(f());
    };
    std::thread::scope(|s| {
        s.spawn(|| {
            enter(path)?;
            Ok(f())
        })
        .join()
        .unwrap_or_else(|_| Err(io::Error::other("thread in the network namespace panicked")))
    })
}
