//! The conntrack sweep: idle entries are deleted by the agent, with the lifetime rule the
//! datapath applies ([`lb_common::ct_lifetime_ns`]); the LRU reclaims the rest under pressure.
//! The sweep also reports which svc_ids and backend ids the remaining entries name: the ids the
//! planner may not give out again yet (`plan::memory`).

use std::collections::HashSet;

use lb_common::{CtKey, CtValue, ct_lifetime_ns};

use super::{Dataplane, Result};
use crate::maps::{MapError, monotonic_ns};

/// What a conntrack sweep did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sweep {
    /// Idle entries deleted.
    pub removed: usize,
    /// Entries left in the table (two per flow), out of [`Dataplane::limits`]' `conntrack`.
    pub remaining: usize,
    /// svc_ids named by the entries left.
    pub svc_ids: HashSet<u32>,
    /// Backend ids named by the entries left.
    pub backend_ids: HashSet<u32>,
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
        let (mut svc_ids, mut backend_ids) = (HashSet::new(), HashSet::new());
        let stale: Vec<CtKey> = self
            .conntrack
            .iter()
            .filter_map(std::result::Result::ok)
            .inspect(|_| listed += 1)
            .filter(|(k, v)| {
                let stale = expired(k, v, now);
                if !stale {
                    svc_ids.insert(v.svc_id);
                    backend_ids.insert(v.backend_id);
                }
                stale
            })
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
            if !still_stale {
                // Refreshed meanwhile: its ids are in use after all.
                if let Ok(v) = self.conntrack.get(k, 0) {
                    svc_ids.insert(v.svc_id);
                    backend_ids.insert(v.backend_id);
                }
            } else {
                match self.conntrack.remove(k) {
                    Ok(()) | Err(aya::maps::MapError::KeyNotFound | aya::maps::MapError::ElementNotFound) => {}
                    Err(aya::maps::MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(libc::ENOENT) => {}
                    Err(e) => return Err(MapError::typed(lb_common::CONNTRACK, "delete from")(e).into()),
                }
                removed += 1;
            }
        }
        Ok(Sweep { removed, remaining: listed - removed, svc_ids, backend_ids })
    }
}

impl Dataplane {
    /// Zeroes the per-CPU counters of ids freed for reuse ([`crate::plan::memory::Released`]),
    /// so that a new owner of an id starts from zero.
    pub fn zero_counters(&mut self, released: &crate::plan::memory::Released) -> Result<()> {
        let backends: Vec<u32> = released.backends.iter().map(|(id, _)| *id).collect();
        for (name, ids, size) in [
            (lb_common::SVC_STATS, &released.svc_ids, self.limits.svc_stats),
            (lb_common::BACKEND_STATS, &backends, self.limits.backends),
        ] {
            if ids.is_empty() {
                continue;
            }
            let map = self.ebpf.map_mut(name).ok_or(MapError::Missing { name })?;
            let mut arr: aya::maps::PerCpuArray<&mut aya::maps::MapData, lb_common::FlowCounters> =
                aya::maps::PerCpuArray::try_from(map).map_err(MapError::typed(name, "open"))?;
            let cpus = aya::util::nr_cpus().map_err(|(_, source)| MapError::Write { name, source })?;
            // An id beyond the array was never programmed (a plan that did not fit): nothing to zero.
            for &id in ids.iter().filter(|id| **id < size) {
                let zeros = aya::maps::PerCpuValues::try_from(vec![lb_common::FlowCounters::default(); cpus])
                    .map_err(|source| MapError::Write { name, source })?;
                arr.set(id, zeros, 0).map_err(MapError::typed(name, "write"))?;
            }
        }
        Ok(())
    }
}
