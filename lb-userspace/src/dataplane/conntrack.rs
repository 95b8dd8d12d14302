//! The conntrack sweep: idle entries are deleted by the agent, with the lifetime rule the
//! datapath applies ([`lb_common::ct_lifetime_ns`]); the LRU reclaims the rest under pressure.

use lb_common::{CtKey, CtValue, ct_lifetime_ns};

use super::{Dataplane, Result};
use crate::maps::{MapError, monotonic_ns};

/// What a conntrack sweep did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sweep {
    /// Idle entries deleted.
    pub removed: usize,
    /// Entries left in the table (two per flow), out of [`Dataplane::limits`]' `conntrack`.
    pub remaining: usize,
}

/// Whether `v` (an entry of `k`) has been idle longer than its lifetime at `now`.
fn expired(k: &CtKey, v: &CtValue, now: u64) -> bool {
    now.saturating_sub(v.last_seen_ns) > ct_lifetime_ns(k.proto, v.flags)
}

impl Dataplane {
    /// Deletes conntrack entries idle longer than their lifetime.
    pub fn sweep_conntrack(&mut self) -> Result<Sweep> {
        let now = monotonic_ns();
        let mut listed = 0;
        let stale: Vec<CtKey> = self
            .conntrack
            .iter()
            .filter_map(std::result::Result::ok)
            .inspect(|_| listed += 1)
            .filter(|(k, v)| expired(k, v, now))
            .map(|(k, _)| k)
            .collect();
        // Listing a large table takes long enough for a new connection to reuse a stale entry's
        // key (same client port) before we get to it: re-read each entry right before deleting
        // it and keep it if it has been refreshed. (The kernel offers no compare-and-delete; the
        // window left is the one between this lookup and the delete, microseconds.)
        let mut removed = 0;
        for k in &stale {
            let still_stale = match self.conntrack.get(k, 0) {
                Ok(v) => expired(k, &v, monotonic_ns()),
                Err(_) => false, // gone already (or expired by the LRU)
            };
            if still_stale {
                match self.conntrack.remove(k) {
                    Ok(()) | Err(aya::maps::MapError::KeyNotFound | aya::maps::MapError::ElementNotFound) => {}
                    Err(aya::maps::MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(libc::ENOENT) => {}
                    Err(e) => return Err(MapError::typed(lb_common::CONNTRACK, "delete from")(e).into()),
                }
                removed += 1;
            }
        }
        Ok(Sweep { removed, remaining: listed - removed })
    }
}
