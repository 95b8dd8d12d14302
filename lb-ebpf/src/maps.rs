//! Map declarations. Every static's name equals the `lb_common` constant of the same map
//! (`LB_SERVICES` = `lb_common::SERVICES`, ...): aya names maps after the symbol, and the agent
//! opens them, and pins them, by those names.
//!
//! Maps written by the agent are pinned by name so that a restarting agent adopts them with their
//! contents (no packet is ever processed against empty maps). Hash maps written only by userspace
//! use `BPF_F_NO_PREALLOC`, so their memory follows what is programmed, not the capacity.

use aya_ebpf::{
    bindings::BPF_F_NO_PREALLOC,
    macros::map,
    maps::{Array, HashMap, LruHashMap, PerCpuArray, PerCpuHashMap},
};
use lb_common::{
    AFFINITY_MAX, AffinityKey, AffinityValue, BACKENDS_MAX, Backend, CNT_MAX, CONNTRACK_MAX, CtKey,
    CtValue, Meta, SELECT_MAX, SERVICES_MAX, SVC_STATS_MAX, SelectKey, ServiceKey, ServiceValue,
    SvcStats,
};

#[map]
pub static LB_SERVICES: HashMap<ServiceKey, ServiceValue> =
    HashMap::pinned(SERVICES_MAX, BPF_F_NO_PREALLOC);

#[map]
pub static LB_BACKENDS: HashMap<u32, Backend> = HashMap::pinned(BACKENDS_MAX, BPF_F_NO_PREALLOC);

#[map]
pub static LB_SELECT: HashMap<SelectKey, u32> = HashMap::pinned(SELECT_MAX, BPF_F_NO_PREALLOC);

/// LRU: under pressure the least recently used flows are evicted rather than new flows failing.
#[map]
pub static LB_CONNTRACK: LruHashMap<CtKey, CtValue> = LruHashMap::pinned(CONNTRACK_MAX, 0);

#[map]
pub static LB_AFFINITY: LruHashMap<AffinityKey, AffinityValue> =
    LruHashMap::pinned(AFFINITY_MAX, 0);

#[map]
pub static LB_STATS: PerCpuArray<u64> = PerCpuArray::pinned(CNT_MAX, 0);

#[map]
pub static LB_SVC_STATS: PerCpuHashMap<u32, SvcStats> =
    PerCpuHashMap::pinned(SVC_STATS_MAX, BPF_F_NO_PREALLOC);

#[map]
pub static LB_META: Array<Meta> = Array::pinned(1, 0);

/// Adds one to a global counter. Per-CPU, so no atomics are needed.
#[inline(always)]
pub fn count(index: u32) {
    if let Some(c) = LB_STATS.get_ptr_mut(index) {
        // SAFETY: per-CPU slot, only this CPU writes it while this program runs.
        unsafe { *c += 1 };
    }
}

/// Adds a packet (and optionally a new flow) to a service's counters.
#[inline(always)]
pub fn count_service(svc_id: u32, bytes: u32, new_flow: bool) {
    if let Some(s) = LB_SVC_STATS.get_ptr_mut(svc_id) {
        // SAFETY: per-CPU value, only this CPU writes it while this program runs.
        unsafe {
            (*s).packets += 1;
            (*s).bytes += u64::from(bytes);
            if new_flow {
                (*s).new_flows += 1;
            }
        }
    } else {
        let s = SvcStats {
            packets: 1,
            bytes: u64::from(bytes),
            new_flows: u64::from(new_flow),
        };
        // A full map only loses this service's counters, never the packet.
        let _ = LB_SVC_STATS.insert(svc_id, s, 0);
    }
}
