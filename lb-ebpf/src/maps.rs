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
    maps::{Array, HashMap, LpmTrie, LruHashMap, PerCpuArray, PerCpuHashMap},
};
use lb_common::{
    AFFINITY_MAX, AffinityKey, AffinityValue, AgentStatus, BACKEND_STATS_MAX, BACKENDS_MAX, Backend, CNT_MAX, CONNTRACK_MAX,
    Config, CtKey, CtValue, FRAGS_MAX, FlowCounters, FragKey, FragValue, MAGLEV_CHUNKS_MAX, MEMBERS_MAX, MaglevChunk, MaglevKey,
    MemberKey, Meta, SELECT_MAX, SERVICES_MAX, SOCK_REVNAT_MAX, SOURCE_RANGES_MAX, SVC_NAMES_MAX, SVC_STATS_MAX, SelectKey,
    ServiceKey, ServiceValue, SockRevKey, SockRevValue, SourceRangeData, SvcName,
};

#[map]
pub static LB_SERVICES: HashMap<ServiceKey, ServiceValue> = HashMap::pinned(SERVICES_MAX, BPF_F_NO_PREALLOC);

#[map]
pub static LB_BACKENDS: HashMap<u32, Backend> = HashMap::pinned(BACKENDS_MAX, BPF_F_NO_PREALLOC);

#[map]
pub static LB_SELECT: HashMap<SelectKey, u32> = HashMap::pinned(SELECT_MAX, BPF_F_NO_PREALLOC);

/// LRU: under pressure the least recently used flows are evicted rather than new flows failing.
#[map]
pub static LB_CONNTRACK: LruHashMap<CtKey, CtValue> = LruHashMap::pinned(CONNTRACK_MAX, 0);

#[map]
pub static LB_AFFINITY: LruHashMap<AffinityKey, AffinityValue> = LruHashMap::pinned(AFFINITY_MAX, 0);

#[map]
pub static LB_STATS: PerCpuArray<u64> = PerCpuArray::pinned(CNT_MAX, 0);

#[map]
pub static LB_SVC_STATS: PerCpuHashMap<u32, FlowCounters> = PerCpuHashMap::pinned(SVC_STATS_MAX, BPF_F_NO_PREALLOC);

#[map]
pub static LB_META: Array<Meta> = Array::pinned(1, 0);

#[map]
pub static LB_MAGLEV: HashMap<MaglevKey, MaglevChunk> = HashMap::pinned(MAGLEV_CHUNKS_MAX, BPF_F_NO_PREALLOC);

#[map]
pub static LB_MEMBERS: HashMap<MemberKey, u32> = HashMap::pinned(MEMBERS_MAX, BPF_F_NO_PREALLOC);

#[map]
pub static LB_BACKEND_STATS: PerCpuHashMap<u32, FlowCounters> = PerCpuHashMap::pinned(BACKEND_STATS_MAX, BPF_F_NO_PREALLOC);

#[map]
pub static LB_SOURCE_RANGES: LpmTrie<SourceRangeData, u32> = LpmTrie::pinned(SOURCE_RANGES_MAX, 0);

#[map]
pub static LB_FRAGS: LruHashMap<FragKey, FragValue> = LruHashMap::pinned(FRAGS_MAX, 0);

#[map]
pub static LB_CONFIG: Array<Config> = Array::pinned(1, 0);

/// Names of ServicePorts by svc_id, for other processes (`lb service list`); never read here.
#[map]
pub static LB_SVC_NAMES: HashMap<u32, SvcName> = HashMap::pinned(SVC_NAMES_MAX, BPF_F_NO_PREALLOC);

/// The agent's own account for `lb status` (pid, syncs, problems); never read here.
#[map]
pub static LB_AGENT: Array<AgentStatus> = Array::pinned(1, 0);

#[map]
pub static LB_SOCK_REVNAT: LruHashMap<SockRevKey, SockRevValue> = LruHashMap::pinned(SOCK_REVNAT_MAX, 0);

/// Per-CPU scratch space for the conntrack keys and values a new flow writes: the BPF stack
/// (512 bytes across all frames of a call chain) cannot hold them next to everything else.
/// Private to the datapath; never pinned.
#[repr(C)]
pub struct Scratch {
    pub fkey: CtKey,
    pub rkey: CtKey,
    pub fval: CtValue,
    pub rval: CtValue,
    pub frag: FragKey,
    pub fragv: FragValue,
    pub akey: AffinityKey,
    pub aval: AffinityValue,
    /// The frontend a new flow is for, handed from `process` to `new_flow`.
    pub svc: ServiceValue,
    /// A stage's rewrite, handed to the entry point (see `lb::Action`).
    pub nat: crate::lb::Nat,
    pub icmp: crate::lb::IcmpNat,
}

/// The packet description of the current run, per CPU: built by `parse`, read by every stage.
/// Kept off the BPF stack (its 16-byte addresses would not fit next to everything else).
#[map]
pub static LB_PKT: PerCpuArray<crate::parse::Packet> = PerCpuArray::with_max_entries(1, 0);

/// This CPU's packet description (see [`scratch`] for why the slot is exclusively ours).
#[inline(always)]
pub fn packet() -> Option<&'static mut crate::parse::Packet> {
    // SAFETY: as for `scratch`.
    LB_PKT.get_ptr_mut(0).map(|p| unsafe { &mut *p })
}

/// This CPU's scratch space. Programs run to completion on one CPU without preemption by
/// another program of ours, so the slot is exclusively ours for the run.
#[inline(always)]
pub fn scratch() -> Option<&'static mut Scratch> {
    // SAFETY: see above; the pointer is a valid map value for the program run.
    LB_SCRATCH.get_ptr_mut(0).map(|p| unsafe { &mut *p })
}

#[map]
pub static LB_SCRATCH: PerCpuArray<Scratch> = PerCpuArray::with_max_entries(1, 0);

/// Adds one to a global counter. Per-CPU, so no atomics are needed.
#[inline(always)]
pub fn count(index: u32) {
    if let Some(c) = LB_STATS.get_ptr_mut(index) {
        // SAFETY: per-CPU slot, only this CPU writes it while this program runs.
        unsafe { *c += 1 };
    }
}

/// Adds a packet (and optionally a new flow) to a service's and a backend's counters.
#[inline(always)]
pub fn count_flow(svc_id: u32, backend_id: u32, bytes: u32, new_flow: bool) {
    count_in(&LB_SVC_STATS, svc_id, bytes, new_flow);
    count_in(&LB_BACKEND_STATS, backend_id, bytes, new_flow);
}

#[inline(always)]
fn count_in(map: &PerCpuHashMap<u32, FlowCounters>, id: u32, bytes: u32, new_flow: bool) {
    if let Some(s) = map.get_ptr_mut(id) {
        // SAFETY: per-CPU value, only this CPU writes it while this program runs.
        unsafe {
            (*s).packets += 1;
            (*s).bytes += u64::from(bytes);
            if new_flow {
                (*s).new_flows += 1;
            }
        }
    } else {
        let s = FlowCounters { packets: 1, bytes: u64::from(bytes), new_flows: u64::from(new_flow) };
        // A full map only loses these counters, never the packet.
        let _ = map.insert(id, s, 0);
    }
}
