//! Map declarations, nothing else. Every static's name equals the `lb_common` constant of the same
//! map (`LB_SERVICES` = `lb_common::SERVICES`, ...): aya names maps after the symbol, and the agent
//! opens and pins them by those names. Maps written by the agent are pinned, so a restarting
//! agent adopts them with their contents; its hash maps use `BPF_F_NO_PREALLOC`, so their memory
//! follows what is programmed, not the capacity. Arrays are read by inlined lookups (no helper
//! call): the per-packet counters, the address filter and the backends. (The private per-CPU
//! scratch map lives with its module, `scratch`.)

use aya_ebpf::{
    bindings::{BPF_F_MMAPABLE, BPF_F_NO_PREALLOC},
    macros::map,
    maps::{Array, HashMap, LpmTrie, LruHashMap, PerCpuArray, RingBuf},
};
use lb_common::{
    ADDR_FILTER_WORDS, AFFINITY_MAX, AffinityKey, AffinityValue, AgentStatus, BACKEND_STATS_MAX, BACKENDS_MAX, Backend, CNT_MAX,
    CONNTRACK_MAX, ClockCalibration, Config, CtClientKey4, CtKey, CtKey4, CtValue, EVENTS_BYTES, FRAGS_MAX, FlowCounterBlock,
    FragKey, FragValue, LOCAL_MARK_WORDS, MAGLEV_CHUNKS_MAX, MEMBERS_MAX, MaglevChunk, MaglevKey, MemberKey, Meta, MonitorConfig,
    MonitorStats, SELECT_MAX, SERVICES_MAX, SNAT_SLOTS_MAX, SOCK_REVNAT_MAX, SOURCE_RANGES_MAX, SVC_LABELS_MAX, SVC_NAMES_MAX,
    SVC_STATS_MAX, SelectKey, ServiceKey, ServiceValue, SnatSlot4, SockRevKey, SockRevValue, SourceRangeData, SvcLabels, SvcName,
    stats_blocks,
};

/// Frontends `(address, port, protocol)` and address markers → the service's tables and flags.
#[map]
pub static LB_SERVICES: HashMap<ServiceKey, ServiceValue> = HashMap::pinned(SERVICES_MAX, BPF_F_NO_PREALLOC);

/// Backends by id (dense ids; an unused slot is all zeros).
#[map]
pub static LB_BACKENDS: Array<Backend> = Array::pinned(BACKENDS_MAX, 0);

/// Slots of random-selection tables → backend id.
#[map]
pub static LB_SELECT: HashMap<SelectKey, u32> = HashMap::pinned(SELECT_MAX, BPF_F_NO_PREALLOC);

/// Chunks of `MAGLEV_CHUNK` (256) slots of Maglev tables → backend ids.
#[map]
pub static LB_MAGLEV: HashMap<MaglevKey, MaglevChunk> = HashMap::pinned(MAGLEV_CHUNKS_MAX, BPF_F_NO_PREALLOC);

/// Membership of a backend in a table: affinity checks (point 27), serving sets (point 57).
#[map]
pub static LB_MEMBERS: HashMap<MemberKey, u32> = HashMap::pinned(MEMBERS_MAX, BPF_F_NO_PREALLOC);

/// `loadBalancerSourceRanges` per LoadBalancer IP.
#[map]
pub static LB_SOURCE_RANGES: LpmTrie<SourceRangeData, u32> = LpmTrie::pinned(SOURCE_RANGES_MAX, 0);

/// Bitmaps of frontend and backend addresses, by hash (see `lb_common::addr_filter_slot`).
#[map]
pub static LB_ADDR_FILTER: Array<u64> = Array::pinned(ADDR_FILTER_WORDS, 0);

/// Bitmap of the IPv4 external frontends of policy Local, by hash (see
/// `lb_common::local_mark_slot`): which lookup their packets make first.
#[map]
pub static LB_LOCAL_MARKS: Array<u64> = Array::pinned(LOCAL_MARK_WORDS, 0);

/// Translated IPv4 flows of two entries, one per direction: source-NATed flows and flows whose
/// client port is in another live flow (see `conntrack`). An LRU: under pressure the least recently used flows are evicted rather than new
/// flows failing.
#[map]
pub static LB_CONNTRACK4: LruHashMap<CtKey4, CtValue> = LruHashMap::pinned(CONNTRACK_MAX, 0);

/// IPv4 flows without source NAT, one entry each, keyed by their client alone (8 bytes; see
/// `conntrack`). An LRU, as `LB_CONNTRACK4`.
#[map]
pub static LB_CT4_CLIENT: LruHashMap<CtClientKey4, CtValue> = LruHashMap::pinned(CONNTRACK_MAX, 0);

/// The entries of external IPv4 source-NATed flows, one slot per SNAT port and protocol (see
/// `snat`). An array: read by an inlined lookup, and its slots free themselves by age.
/// `BPF_F_MMAPABLE` only for its layout: the kernel then starts the values on a page, so each
/// 64-byte slot is one cache line (otherwise they start 8-aligned and a slot's first read of a
/// new flow is two cache misses; never mapped). A pin made by an earlier build is adopted as it
/// is (its flags too): the layout applies once its pins are made anew.
#[map]
pub static LB_SNAT4_SLOTS: Array<SnatSlot4> = Array::pinned(SNAT_SLOTS_MAX, BPF_F_MMAPABLE);

/// Translated IPv6 flows (as `LB_CONNTRACK4`).
#[map]
pub static LB_CONNTRACK: LruHashMap<CtKey, CtValue> = LruHashMap::pinned(CONNTRACK_MAX, 0);

/// `sessionAffinity: ClientIP` records.
#[map]
pub static LB_AFFINITY: LruHashMap<AffinityKey, AffinityValue> = LruHashMap::pinned(AFFINITY_MAX, 0);

/// First fragments' ports, for the later fragments of their datagram.
#[map]
pub static LB_FRAGS: LruHashMap<FragKey, FragValue> = LruHashMap::pinned(FRAGS_MAX, 0);

/// A node process's UDP socket and the backend it sent to → the frontend it asked for.
#[map]
pub static LB_SOCK_REVNAT: LruHashMap<SockRevKey, SockRevValue> = LruHashMap::pinned(SOCK_REVNAT_MAX, 0);

/// Global counters, indexed by `CNT_*`.
#[map]
pub static LB_STATS: PerCpuArray<u64> = PerCpuArray::pinned(CNT_MAX, 0);

/// Per-ServicePort counters, blocks of `STATS_BLOCK` svc_ids.
#[map]
pub static LB_SVC_STATS: PerCpuArray<FlowCounterBlock> = PerCpuArray::pinned(stats_blocks(SVC_STATS_MAX), 0);

/// Per-backend counters, blocks of `STATS_BLOCK` backend ids.
#[map]
pub static LB_BACKEND_STATS: PerCpuArray<FlowCounterBlock> = PerCpuArray::pinned(stats_blocks(BACKEND_STATS_MAX), 0);

/// Node-wide settings the agent writes (SNAT and hairpin addresses, SNAT ports).
#[map]
pub static LB_CONFIG: Array<Config> = Array::pinned(1, 0);

/// The clock's calibration (see `clock`); one entry, not pinned: written at each load.
#[map]
pub static LB_CLOCK: Array<ClockCalibration> = Array::with_max_entries(1, 0);

/// Layout version of the pinned maps (checked by the agent before adopting them).
#[map]
pub static LB_META: Array<Meta> = Array::pinned(1, 0);

/// ServicePort names by svc_id, for other processes (`lb service list`); never read here.
#[map]
pub static LB_SVC_NAMES: HashMap<u32, SvcName> = HashMap::pinned(SVC_NAMES_MAX, BPF_F_NO_PREALLOC);

/// Service labels by svc_id, for `lb service list --selector`; never read here.
#[map]
pub static LB_SVC_LABELS: HashMap<u32, SvcLabels> = HashMap::pinned(SVC_LABELS_MAX, BPF_F_NO_PREALLOC);

/// The agent's own account for `lb status`; never read here.
#[map]
pub static LB_AGENT: Array<AgentStatus> = Array::pinned(1, 0);

/// `lb monitor`'s events (see `monitor`).
#[map]
pub static LB_EVENTS: RingBuf = RingBuf::pinned(EVENTS_BYTES, 0);

/// What a running `lb monitor` asks for; written by the CLI.
#[map]
pub static LB_MONITOR: Array<MonitorConfig> = Array::pinned(1, 0);

/// Events written and lost, per CPU.
#[map]
pub static LB_MONITOR_STATS: PerCpuArray<MonitorStats> = PerCpuArray::pinned(1, 0);
