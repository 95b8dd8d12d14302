//! The per-id counter arrays (`LB_SVC_STATS`, `LB_BACKEND_STATS`: per-CPU blocks of
//! `lb_common::STATS_BLOCK` ids): released ids' counters zeroed before the ids are given out
//! again.

use aya::programs::{RawTracePoint, RawTracePointRunOptions, TestRun as _};

use super::{Dataplane, DataplaneError, Result};
use crate::maps::MapError;

impl Dataplane {
    /// Zeroes the per-CPU counters of ids freed for reuse ([`crate::plan::memory::Released`]),
    /// so that a new owner of an id starts from zero. The counter arrays hold blocks of ids, and
    /// a write from userspace replaces a block on every CPU at once (a neighbour's packet counted
    /// between a read and that write would be taken back: a counter going down): the object's
    /// `lb_zero_counters` program zeroes the released slots alone, run on each online CPU in turn
    /// (`lb_common::PROG_ZERO_COUNTERS`).
    pub fn zero_counters(&mut self, released: &crate::plan::memory::Released) -> Result<()> {
        // An id beyond the array was never programmed (a plan that did not fit): nothing to zero.
        let svc_ids: Vec<u32> = released.svc_ids.iter().copied().filter(|id| *id < self.limits.svc_stats).collect();
        let backends: Vec<u32> = released.backends.iter().map(|(id, _)| *id).filter(|id| *id < self.limits.backends).collect();
        if svc_ids.is_empty() && backends.is_empty() {
            return Ok(());
        }
        let name = lb_common::PROG_ZERO_COUNTERS;
        let prog = super::attach::helper_program(&mut self.ebpf, name, RawTracePoint::load)?;
        let cpus = aya::util::online_cpus().map_err(|(_, source)| MapError::Write { name: lb_common::SVC_STATS, source })?;
        for (which, ids) in [(lb_common::ZERO_COUNTERS_SVC, &svc_ids), (lb_common::ZERO_COUNTERS_BACKEND, &backends)] {
            for chunk in ids.chunks(lb_common::ZERO_COUNTERS_IDS) {
                let mut args = [0u64; 12];
                args[0] = which;
                args[1] = chunk.len() as u64;
                for (slot, id) in args[2..].iter_mut().zip(chunk) {
                    *slot = u64::from(*id);
                }
                for &cpu in &cpus {
                    let opts = RawTracePointRunOptions { args, cpu: Some(cpu) };
                    prog.test_run(opts).map_err(|source| DataplaneError::Program { name, source })?;
                }
            }
        }
        Ok(())
    }
}
