//! Counters: a global one per verdict and reason (`CNT_*`), and packets, bytes and new flows per
//! ServicePort and per backend. All per-CPU arrays, so a count is an inlined lookup and a plain
//! add: no helper call, no atomic.

use aya_ebpf::maps::PerCpuArray;
use lb_common::FlowCounters;

use crate::maps::{LB_BACKEND_STATS, LB_STATS, LB_SVC_STATS};

/// Adds one to global counter `index` (`CNT_*`).
#[inline(always)]
pub fn count(index: u32) {
    if let Some(c) = LB_STATS.get_ptr_mut(index) {
        // SAFETY: this CPU's slot; only this program run writes it now.
        unsafe { *c += 1 };
    }
}

/// Adds a packet of `bytes` (and, with `new_flow`, a flow) to a ServicePort's and a backend's
/// counters.
#[inline(always)]
pub fn count_flow(svc_id: u32, backend_id: u32, bytes: u32, new_flow: bool) {
    add(&LB_SVC_STATS, svc_id, bytes, new_flow);
    add(&LB_BACKEND_STATS, backend_id, bytes, new_flow);
}

#[inline(always)]
fn add(map: &PerCpuArray<FlowCounters>, id: u32, bytes: u32, new_flow: bool) {
    if let Some(s) = map.get_ptr_mut(id) {
        // SAFETY: this CPU's slot; only this program run writes it now.
        unsafe {
            (*s).packets += 1;
            (*s).bytes += u64::from(bytes);
            (*s).new_flows += u64::from(new_flow);
        }
    }
}
