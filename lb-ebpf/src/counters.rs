//! Counters: a global one per verdict and reason (`CNT_*`), and packets, bytes and new flows per
//! ServicePort and per backend. All per-CPU arrays, so a count is an inlined lookup and a plain
//! add: no helper call, no atomic. The per-id ones hold blocks of `STATS_BLOCK` ids an entry
//! (`lb_common::FlowCounterBlock`); `lb_zero_counters` zeroes released ids' slots.

use aya_ebpf::{macros::raw_tracepoint, maps::PerCpuArray, programs::RawTracePointContext};
use lb_common::{FlowCounterBlock, FlowCounters, STATS_BLOCK, ZERO_COUNTERS_BACKEND, ZERO_COUNTERS_IDS};

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
fn add(map: &PerCpuArray<FlowCounterBlock>, id: u32, bytes: u32, new_flow: bool) {
    if let Some(block) = map.get_ptr_mut(id / STATS_BLOCK) {
        // The slot index is masked, so the verifier sees an offset inside the block's value.
        const _: () = assert!(STATS_BLOCK.is_power_of_two());
        // SAFETY: this CPU's block; `id % STATS_BLOCK` indexes inside it; only this program run
        // writes it now.
        unsafe {
            let s = (*block).ids.as_mut_ptr().add((id & (STATS_BLOCK - 1)) as usize);
            (*s).packets += 1;
            (*s).bytes += u64::from(bytes);
            (*s).new_flows += u64::from(new_flow);
        }
    }
}

/// Zeroes this CPU's counters of up to `ZERO_COUNTERS_IDS` released ids (see
/// `lb_common::PROG_ZERO_COUNTERS` for the arguments). Run by the agent through
/// BPF_PROG_TEST_RUN on each CPU in turn, never attached: on its CPU it may interrupt a packet
/// program, but never one counting a released id (nothing refers to it any more), and it writes
/// that id's slot alone. Returns the number of slots zeroed.
#[raw_tracepoint]
pub fn lb_zero_counters(ctx: RawTracePointContext) -> i32 {
    let map = if ctx.arg::<u64>(0) == ZERO_COUNTERS_BACKEND { &LB_BACKEND_STATS } else { &LB_SVC_STATS };
    let n = ctx.arg::<u64>(1);
    // Context reads at constant offsets (the verifier refuses a variable offset into it).
    let a = |i: usize| ctx.arg::<u64>(i) as u32;
    let ids: [u32; ZERO_COUNTERS_IDS] = [a(2), a(3), a(4), a(5), a(6), a(7), a(8), a(9), a(10), a(11)];
    let mut zeroed = 0;
    for (i, id) in ids.into_iter().enumerate() {
        if i as u64 >= n {
            break;
        }
        if let Some(block) = map.get_ptr_mut(id / STATS_BLOCK) {
            // SAFETY: this CPU's block; the masked index stays inside it.
            unsafe { *(*block).ids.as_mut_ptr().add((id & (STATS_BLOCK - 1)) as usize) = FlowCounters::default() };
            zeroed += 1;
        }
    }
    zeroed
}
