//! One agent per pin directory: an exclusive `flock` on the directory itself (bpffs holds no
//! regular files), taken before anything is loaded or pinned and held for the life of the
//! process. A second agent on the same `--pin-path` (a botched rollout, a debug run) is refused
//! before it can adopt and rewrite the first one's maps; the lock dies with its process, so a
//! restart after `kill -9` is never blocked. `lb agent --cleanup` takes it too: it never removes
//! the pins of a running agent.

use std::{fs::File, os::fd::AsRawFd, path::Path};

use super::{DataplaneError, Result};
use crate::maps::pinned::PinnedMaps;

/// The held lock (released when dropped, or when the process ends).
#[derive(Debug)]
pub struct PinLock {
    _dir: File,
}

impl PinLock {
    /// Creates `pin_path` if needed and takes its lock: what an agent does before it loads
    /// anything ([`crate::dataplane::Dataplane::load`] itself takes no lock, so that tools and
    /// tests may open a second handle on pins they own).
    pub fn create_and_acquire(pin_path: &Path) -> Result<Self> {
        std::fs::create_dir_all(pin_path).map_err(|source| DataplaneError::PinDir { path: pin_path.to_owned(), source })?;
        Self::acquire(pin_path)
    }

    /// Takes the lock on `pin_path` (which must exist), or says which agent holds it.
    pub fn acquire(pin_path: &Path) -> Result<Self> {
        let dir = File::open(pin_path).map_err(|source| DataplaneError::PinDir { path: pin_path.to_owned(), source })?;
        // SAFETY: flock on a descriptor we own; no memory is passed.
        if unsafe { libc::flock(dir.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
            return Ok(Self { _dir: dir });
        }
        let err = std::io::Error::last_os_error();
        if err.raw_os_error() != Some(libc::EWOULDBLOCK) {
            return Err(DataplaneError::PinDir { path: pin_path.to_owned(), source: err });
        }
        Err(DataplaneError::Locked { path: pin_path.to_owned(), owner: owner(pin_path) })
    }
}

/// "pid N, started T" from the owner's status record, when it wrote one.
fn owner(pin_path: &Path) -> String {
    let Some(report) = PinnedMaps::open(pin_path).ok().and_then(|m| m.agent()) else {
        return "its status record is not written yet".to_owned();
    };
    let u = lb_common::utc_time(report.started_unix_ms / 1000);
    format!(
        "pid {}, started {:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
        report.pid, u.year, u.month, u.day, u.hour, u.minute, u.second
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Needs a directory only (flock works on any): a second lock on the same directory is
    /// refused while the first is held, and granted once it is dropped.
    #[test]
    fn a_second_lock_is_refused_until_the_first_is_dropped() {
        let dir = std::env::temp_dir().join(format!("lb-lock-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let first = PinLock::acquire(&dir).unwrap();
        let e = PinLock::acquire(&dir).unwrap_err().to_string();
        assert!(e.starts_with("another lb agent owns the pins at"), "{e}");
        assert!(e.contains("--pin-path"), "says what to do: {e}");
        drop(first);
        assert!(PinLock::acquire(&dir).is_ok());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
