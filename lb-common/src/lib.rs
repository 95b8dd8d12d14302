//! Everything the kernel side (`lb-ebpf`) and the userspace side (`lb-userspace`) must agree on:
//! map key and value layouts, map names, capacities, flag bits and counter indices. One file on
//! purpose (longer than our usual 600 lines): it is the whole contract between the two sides,
//! read top to bottom map by map, and `#![no_std]` code for both.
//!
//! # Layout rules
//! Every map type is `#[repr(C)]`, built only from fixed-width integers and byte arrays, with
//! explicit `_pad` fields so that there is no implicit padding (the kernel compares keys
//! byte-wise, so uninitialised padding would make equal keys differ). No `bool`, `enum`,
//! `Option` or `usize`. Each type has a compile-time size assertion. Byte order is named on every
//! field: `_be` fields are network byte order, everything else is host byte order. The keys the
//! datapath builds on every packet (`CtKey`, `ServiceKey`) and `Backend` carry an explicit
//! alignment (asserted with their size; it adds no padding): the BPF backend copies a 16-byte
//! address of a 4-aligned struct with four word moves, but one of a 1- or 2-aligned struct with a
//! call of its byte-loop `memmove`.
//!
//! # Addresses: one 16-byte format for both families
//! All addresses are stored as 16 bytes in network byte order. IPv4 addresses are stored
//! IPv4-mapped (`::ffff:a.b.c.d`, RFC 4291 §2.5.5.2), so one set of maps serves IPv4 and IPv6
//! and a dual-stack Service needs no second code path in userspace. The cost is a few more key
//! bytes per lookup; the benefit is that IPv6 support is a parser and rewrite change only, not a
//! map-layout change.
//!
//! # Map model
//! - [`SERVICES`]: frontend `(address, port, protocol)` → [`ServiceValue`]: which selection table
//!   to use, how many slots it has, and flags.
//! - [`BACKENDS`]: backend id → [`Backend`], an array: ids are dense (the agent reuses an id once
//!   no conntrack entry names it any more). Id [`BACKEND_ID_NONE`] (0) is never given out, and an
//!   unused slot is all zeros ([`Backend::is_set`] false).
//! - [`ADDR_FILTER`]: two bitmaps over a hash of addresses: every frontend address, and every
//!   backend address. A packet whose destination is no frontend's and whose source is no
//!   backend's passes after two inlined array reads, without a hash lookup ([`addr_filter_slot`]).
//! - [`LOCAL_MARKS`]: a bitmap over a hash of the IPv4 external frontends whose flows are not
//!   source-NATed (`externalTrafficPolicy: Local`): their packets look their client's one entry
//!   up before the SNAT port slots ([`local_mark_slot`]).
//! - [`SELECT`]: `(select_id, slot)` → backend id: the dense random-selection table of an
//!   endpoint set, written by userspace.
//! - [`MAGLEV`]: `(select_id, chunk)` → 64 backend ids: the Maglev lookup table of an endpoint
//!   set, computed in userspace, stored in chunks so a table costs about 4 bytes a slot and an
//!   update rewrites only the chunks whose slots changed.
//! - [`MEMBERS`]: `(select_id, backend id)` → present: set membership, to check that a
//!   remembered affinity backend is still in the set (point 27) and that a datagram flow's
//!   backend still serves (point 57). Written only for the tables of ServicePorts with affinity
//!   or of another protocol than TCP: nothing reads the others'.
//! - [`CONNTRACK4_CLIENT`]: LRU table of the IPv4 flows without source NAT, keyed by their
//!   client alone in 8 bytes ([`CtClientKey4`], the [`CT_DIR_CLIENT`] entries): one entry for
//!   both directions of a flow.
//! - [`CONNTRACK4`]: LRU flow table of the other IPv4 flows, keyed by 16 bytes ([`CtKey4`]):
//!   one entry per direction of a source-NATed flow or of a flow whose client address and port
//!   are already in another live flow. Builds before the client table kept the client entries
//!   here too: the agent moves them at start.
//! - [`SNAT4_SLOTS`]: an array of the conntrack entries of external IPv4 source-NATed flows, one
//!   slot per SNAT port and protocol ([`SnatSlot4`]), each holding a flow's two entries; a flow
//!   that finds no free slot keeps its entries in [`CONNTRACK4`].
//! - [`CONNTRACK`]: the same for IPv6 flows (40-byte keys, [`CtKey`]). Maps pinned by builds
//!   before the IPv4 table hold IPv4 flows here too: the agent moves them at start.
//! - [`AFFINITY`]: LRU client-IP affinity records for `sessionAffinity: ClientIP`.
//! - [`STATS`]: per-CPU global counters, indexed by the `CNT_*` constants.
//! - [`SVC_STATS`]: per-CPU per-service counters, an array of [`FlowCounterBlock`]s indexed by
//!   `svc_id / STATS_BLOCK` (dense ids). Pins of builds before the blocks (one id an entry) are
//!   replaced at start, their counters carried over.
//! - [`BACKEND_STATS`]: per-CPU per-backend counters, blocks as [`SVC_STATS`], by backend id.
//! - [`SOURCE_RANGES`]: LPM trie of `loadBalancerSourceRanges` per LoadBalancer IP.
//! - [`FRAGS`]: LRU of fragment ids (IPv4 and IPv6) → ports, so later fragments follow the first.
//! - [`CONFIG`]: node-wide settings the agent writes (SNAT address, hairpin address, SNAT ports).
//! - [`META`]: one record with the layout version, so a new agent knows what it is adopting.
//! - [`SOCK_REVNAT`]: LRU of (socket, backend) → frontend, so a node process's UDP replies show
//!   the address it sent to.
//! - [`SVC_NAMES`]: ServicePort names by `svc_id`, for the CLI (never read by the datapath).
//! - [`AGENT`]: the running agent's own account (pid, syncs, problems), for `lb status` (never
//!   read by the datapath).
#![no_std]

use core::mem::size_of;

/// Bumped whenever a map layout, map name or the meaning of a field changes in a way the agent
/// cannot convert at start (the counter arrays' blocks and the Maglev chunks' size it converts:
/// `lb-userspace/src/dataplane/upgrade.rs`). The agent refuses to adopt pinned maps written by
/// a build with a different version (see `lb agent --cleanup`).
pub const LAYOUT_VERSION: u32 = 2;

// ---------------------------------------------------------------------------------------------
// Map names (the symbol names in the eBPF object; also the pin file names).
// ---------------------------------------------------------------------------------------------

pub const SERVICES: &str = "LB_SERVICES";
pub const BACKENDS: &str = "LB_BACKENDS";
pub const SELECT: &str = "LB_SELECT";
pub const CONNTRACK: &str = "LB_CONNTRACK";
pub const CONNTRACK4: &str = "LB_CONNTRACK4";
pub const CONNTRACK4_CLIENT: &str = "LB_CT4_CLIENT";
pub const SNAT4_SLOTS: &str = "LB_SNAT4_SLOTS";
pub const AFFINITY: &str = "LB_AFFINITY";
pub const STATS: &str = "LB_STATS";
pub const SVC_STATS: &str = "LB_SVC_STATS";
pub const META: &str = "LB_META";
pub const MAGLEV: &str = "LB_MAGLEV";
pub const MEMBERS: &str = "LB_MEMBERS";
pub const BACKEND_STATS: &str = "LB_BACKEND_STATS";
pub const SOURCE_RANGES: &str = "LB_SOURCE_RANGES";
pub const FRAGS: &str = "LB_FRAGS";
pub const CONFIG: &str = "LB_CONFIG";
pub const ADDR_FILTER: &str = "LB_ADDR_FILTER";
pub const LOCAL_MARKS: &str = "LB_LOCAL_MARKS";
pub const SOCK_REVNAT: &str = "LB_SOCK_REVNAT";
pub const SVC_NAMES: &str = "LB_SVC_NAMES";
pub const AGENT: &str = "LB_AGENT";
pub const SVC_LABELS: &str = "LB_SVC_LABELS";
pub const EVENTS: &str = "LB_EVENTS";
pub const MONITOR: &str = "LB_MONITOR";
pub const MONITOR_STATS: &str = "LB_MONITOR_STATS";
/// The datapath clock's calibration ([`ClockCalibration`]). Not pinned: each loaded object has
/// its own, written by the agent right after loading, before anything is attached.
pub const CLOCK: &str = "LB_CLOCK";

/// Every map the datapath pins.
pub const ALL_MAPS: [&str; 26] = [
    SERVICES,
    BACKENDS,
    SELECT,
    MAGLEV,
    MEMBERS,
    CONNTRACK,
    CONNTRACK4,
    CONNTRACK4_CLIENT,
    SNAT4_SLOTS,
    AFFINITY,
    STATS,
    SVC_STATS,
    BACKEND_STATS,
    SOURCE_RANGES,
    FRAGS,
    CONFIG,
    ADDR_FILTER,
    LOCAL_MARKS,
    SOCK_REVNAT,
    SVC_NAMES,
    SVC_LABELS,
    AGENT,
    META,
    EVENTS,
    MONITOR,
    MONITOR_STATS,
];

/// The maps the datapath itself writes (flow state and counters); the agent writes or reads
/// every other map. `lb explain` runs the datapath against private copies of these, so that a
/// synthetic packet leaves no trace in the live ones.
pub const DATAPATH_STATE_MAPS: [&str; 12] = [
    CONNTRACK,
    CONNTRACK4,
    CONNTRACK4_CLIENT,
    SNAT4_SLOTS,
    AFFINITY,
    FRAGS,
    SOCK_REVNAT,
    STATS,
    SVC_STATS,
    BACKEND_STATS,
    EVENTS,
    MONITOR_STATS,
];

// ---------------------------------------------------------------------------------------------
// Program names (function names in the eBPF object).
// ---------------------------------------------------------------------------------------------

/// TC ingress on the host side of pod interfaces: pod → service DNAT and backend → client
/// reverse NAT.
pub const PROG_TC_POD: &str = "lb_tc_pod_ingress";
/// XDP on the node's external interfaces: NodePort, LoadBalancer IPs, externalIPs.
pub const PROG_XDP_EXT: &str = "lb_xdp_ext";
/// TC ingress fallback of [`PROG_XDP_EXT`] for devices where XDP cannot attach.
pub const PROG_TC_EXT: &str = "lb_tc_ext_ingress";
/// TC egress on pod and external interfaces: reverse NAT of the replies the node's own stack
/// sends for a backend that is one of the node's addresses (a hostNetwork pod, the API server
/// on a control-plane node). Those replies are routed by the node and leave through an egress,
/// never through an ingress where the other programs run.
pub const PROG_TC_EGRESS: &str = "lb_tc_egress";
/// XDP, never attached: writes one sample of both kernel clocks into its packet, for the agent's
/// calibration of the datapath clock through BPF_PROG_TEST_RUN ([`ClockCalibration`]).
pub const PROG_CLOCK_SAMPLE: &str = "lb_clock_sample";
/// Raw tracepoint, never attached: zeroes the counters of released ids on the CPU the agent
/// runs it on (BPF_PROG_TEST_RUN with `BPF_F_TEST_RUN_ON_CPU`), the slot alone, so the other
/// ids of a block keep counting; a write from userspace would replace the whole block on every
/// CPU and could take back a neighbour's packet counted meanwhile. Arguments (u64 each):
/// [`ZERO_COUNTERS_SVC`] or [`ZERO_COUNTERS_BACKEND`], the number of ids (up to
/// [`ZERO_COUNTERS_IDS`]), the ids.
pub const PROG_ZERO_COUNTERS: &str = "lb_zero_counters";
/// [`PROG_ZERO_COUNTERS`]' first argument: the ids are svc_ids (`LB_SVC_STATS`).
pub const ZERO_COUNTERS_SVC: u64 = 0;
/// [`PROG_ZERO_COUNTERS`]' first argument: the ids are backend ids (`LB_BACKEND_STATS`).
pub const ZERO_COUNTERS_BACKEND: u64 = 1;
/// Ids one run of [`PROG_ZERO_COUNTERS`] zeroes at most (a raw tracepoint takes 12 arguments).
pub const ZERO_COUNTERS_IDS: usize = 10;
/// cgroup connect4: socket-level translation for processes in the node's namespace.
pub const PROG_SOCK_CONNECT4: &str = "lb_sock_connect4";
/// cgroup sendmsg4: the same for unconnected UDP sends.
pub const PROG_SOCK_SENDMSG4: &str = "lb_sock_sendmsg4";
/// cgroup recvmsg4: un-translates the source of UDP replies.
pub const PROG_SOCK_RECVMSG4: &str = "lb_sock_recvmsg4";
/// cgroup getpeername4: un-translates the peer of connected sockets.
pub const PROG_SOCK_GETPEERNAME4: &str = "lb_sock_getpeername4";
/// The IPv6 counterparts (IPv6 sockets, including IPv4-mapped destinations).
pub const PROG_SOCK_CONNECT6: &str = "lb_sock_connect6";
pub const PROG_SOCK_SENDMSG6: &str = "lb_sock_sendmsg6";
pub const PROG_SOCK_RECVMSG6: &str = "lb_sock_recvmsg6";
pub const PROG_SOCK_GETPEERNAME6: &str = "lb_sock_getpeername6";

// ---------------------------------------------------------------------------------------------
// Kernel symbols the loader resolves (aya 0.14 cannot load kfunc calls or CO-RE offsets itself).
// ---------------------------------------------------------------------------------------------

/// The helper id the TC programs call in place of the `bpf_cast_to_kern_ctx` kfunc (no helper
/// has it). Before loading, the agent rewrites every such call into a call of that kfunc found
/// in the kernel's BTF, or into `r0 = 0` (no kernel context: the checksum helpers are used) where
/// the kernel has no BTF or no such kfunc.
pub const KFUNC_CAST_TO_KERN_CTX_PLACEHOLDER: u32 = 0x7fff_c001;
/// The kfunc's name in the kernel's BTF.
pub const KFUNC_CAST_TO_KERN_CTX: &str = "bpf_cast_to_kern_ctx";
/// Read-only global the agent sets from the kernel's BTF: the byte offset in `struct sk_buff`
/// of the byte holding the 2-bit `ip_summed`, or 0 when unknown (the byte is never at offset 0).
pub const GLOBAL_SKB_IP_SUMMED_BYTE: &str = "LB_SKB_IP_SUMMED_BYTE";
/// Read-only global: the bit position of `ip_summed` in that byte (little-endian bit order).
pub const GLOBAL_SKB_IP_SUMMED_SHIFT: &str = "LB_SKB_IP_SUMMED_SHIFT";
/// Read-only global the agent sets: the seed of [`snat_slot_hash`], [`snat_seed`] of the
/// kernel's boot id, so that every load of the object during one boot (agent restarts, upgrades)
/// finds the slots of the flows that earlier loads placed.
pub const GLOBAL_SNAT_SEED: &str = "LB_SNAT_SEED";

/// The seed of [`snat_slot_hash`] from the kernel's boot id (`/proc/sys/kernel/random/boot_id`,
/// random at every boot and never sent on the network): FNV-1a over its bytes.
#[must_use]
pub fn snat_seed(boot_id: &[u8]) -> u32 {
    boot_id.iter().fold(0x811c_9dc5u32, |h, b| (h ^ u32::from(*b)).wrapping_mul(0x0100_0193))
}
/// `skb->ip_summed` values (include/linux/skbuff.h).
pub const CHECKSUM_NONE: u8 = 0;
pub const CHECKSUM_UNNECESSARY: u8 = 1;
pub const CHECKSUM_COMPLETE: u8 = 2;
pub const CHECKSUM_PARTIAL: u8 = 3;

// ---------------------------------------------------------------------------------------------
// Capacities (defaults; the agent can override some at load time).
// ---------------------------------------------------------------------------------------------

pub const SERVICES_MAX: u32 = 65_536;
/// Holds 10,000 Services (Kubernetes' published limit) of 10 endpoints each, every endpoint its
/// own pod; the array itself is 24 bytes an entry, its counters
/// ([`BACKEND_STATS`], the same size) 24 bytes an entry per CPU.
pub const BACKENDS_MAX: u32 = 131_072;
pub const SELECT_MAX: u32 = 262_144;
pub const CONNTRACK_MAX: u32 = 131_072;
pub const AFFINITY_MAX: u32 = 65_536;
pub const SVC_STATS_MAX: u32 = 65_536;
pub const MAGLEV_CHUNKS_MAX: u32 = 65_536;
pub const MEMBERS_MAX: u32 = 262_144;
pub const BACKEND_STATS_MAX: u32 = BACKENDS_MAX;
pub const SOURCE_RANGES_MAX: u32 = 16_384;
pub const FRAGS_MAX: u32 = 8_192;
pub const SOCK_REVNAT_MAX: u32 = 65_536;
pub const SVC_NAMES_MAX: u32 = 65_536;
pub const SVC_LABELS_MAX: u32 = 65_536;

/// Backend ids per [`MAGLEV`] chunk: 4 chunks for a Service of up to 10 endpoints (1,021
/// slots). The map's entries are what the agent writes most at a full sync (16 per Service with
/// 64-slot chunks, 40 % of 10,000 Services' writes); the lookup costs the same whatever the
/// value's size. A 1 KiB value takes a 2 KiB kernel allocation, as four 256-byte ones took four
/// 512-byte ones.
pub const MAGLEV_CHUNK: u32 = 256;
/// Largest Maglev table size the datapath accepts (a prime).
pub const MAGLEV_MAX_SIZE: u32 = 65_521;

// ---------------------------------------------------------------------------------------------
// Protocol numbers and conntrack timeouts.
// ---------------------------------------------------------------------------------------------

pub const IPPROTO_ICMP: u8 = 1;
pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;
pub const IPPROTO_SCTP: u8 = 132;

/// A TCP flow whose last packet is older than this is treated as gone (a new packet selects
/// again). Matches the order of `nf_conntrack_tcp_timeout_established` scaled down, since an LRU
/// also reclaims entries under pressure.
pub const CT_TCP_LIFETIME_NS: u64 = 6 * 3600 * 1_000_000_000;
/// After a FIN or RST the entry only lives this long.
pub const CT_TCP_CLOSING_LIFETIME_NS: u64 = 10 * 1_000_000_000;
/// UDP and other datagram flows.
pub const CT_UDP_LIFETIME_NS: u64 = 60 * 1_000_000_000;
/// How long a conntrack entry lives after its last packet: the one rule the datapath applies on
/// every lookup and the agent's sweep applies to idle entries. `flags` are the entry's `CT_F_*`.
#[inline(always)]
#[must_use]
pub const fn ct_lifetime_ns(proto: u8, flags: u16) -> u64 {
    if proto != IPPROTO_TCP {
        CT_UDP_LIFETIME_NS
    } else if flags & CT_F_CLOSING != 0 {
        CT_TCP_CLOSING_LIFETIME_NS
    } else {
        CT_TCP_LIFETIME_NS
    }
}

/// A conntrack entry's `last_seen_ns` is rewritten by a packet of its flow only once it is older
/// than this (or on FIN/RST): an established flow does not write its entry on every packet, which
/// would bounce a cache line between CPUs; lifetimes are seconds to hours, so the granularity
/// costs nothing. The datapath's clock is CLOCK_MONOTONIC at jiffy resolution
/// ([`ClockCalibration`]), which the agent's sweep compares with CLOCK_MONOTONIC.
pub const CT_REFRESH_NS: u64 = 1_000_000_000;

/// A fragment id entry lives this long (reassembly timeouts are 30 s on Linux).
pub const FRAG_LIFETIME_NS: u64 = 30 * 1_000_000_000;

/// A UTC calendar time (proleptic Gregorian calendar), for the timestamps people and Kubernetes
/// read (`lastUpdated`, `creationTimestamp`, report dates). Not a map type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UtcTime {
    pub year: i64,
    pub month: u32,
    pub day: u32,
    pub hour: u32,
    pub minute: u32,
    pub second: u32,
}

/// The UTC calendar time `secs` seconds after the Unix epoch (Howard Hinnant's
/// `civil_from_days`).
#[must_use]
pub const fn utc_time(secs: u64) -> UtcTime {
    let (days, rem) = ((secs / 86_400) as i64, secs % 86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + if month <= 2 { 1 } else { 0 };
    UtcTime { year, month, day, hour: (rem / 3600) as u32, minute: (rem / 60 % 60) as u32, second: (rem % 60) as u32 }
}

/// An IPv4 address in the 16-byte format: `::ffff:a.b.c.d`.
#[must_use]
pub const fn v4_mapped(octets: [u8; 4]) -> [u8; 16] {
    [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, octets[0], octets[1], octets[2], octets[3]]
}

// ---------------------------------------------------------------------------------------------
// LB_SERVICES
// ---------------------------------------------------------------------------------------------

/// A frontend: ClusterIP, NodePort on a node address, externalIP or LoadBalancer IP.
///
/// A key with `port_be == 0` and `proto == 0` is the *address marker* the agent writes once per
/// frontend address: it lets the datapath recognise traffic to a service address that it cannot
/// translate (fragments, truncated L4 headers) and drop it instead of leaking it untranslated.
#[repr(C, align(4))]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct ServiceKey {
    /// Frontend address, network byte order, IPv4-mapped for IPv4.
    pub addr: [u8; 16],
    /// Frontend port, network byte order.
    pub port_be: u16,
    /// IP protocol number (`IPPROTO_*`).
    pub proto: u8,
    pub _pad: u8,
}
const _: () = assert!(size_of::<ServiceKey>() == 20 && align_of::<ServiceKey>() == 4);

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct ServiceValue {
    /// Stable id of the Kubernetes ServicePort `(namespace, name, port name, protocol)`: scope of
    /// session affinity and index of the per-service counters. Host byte order.
    pub svc_id: u32,
    /// Which selection table in [`SELECT`] this frontend uses. Host byte order.
    pub select_id: u32,
    /// Number of slots in that table. 0 = no usable endpoint (see `SVC_F_DROP_IF_EMPTY`).
    pub slot_count: u32,
    /// `SVC_F_*` bits.
    pub flags: u32,
    /// `sessionAffinity: ClientIP` timeout in seconds; only read with `SVC_F_AFFINITY`.
    pub affinity_timeout_s: u32,
    /// External frontends: the Cluster endpoint set, used instead of the frontend's own set for
    /// traffic from pods on this node and from the node itself (point 34: those get Cluster
    /// semantics even with `externalTrafficPolicy: Local`). Equal to the main set otherwise.
    pub cluster_select_id: u32,
    pub cluster_slot_count: u32,
    /// The ServicePort's serving endpoints (ready, or serving while terminating, on any node),
    /// as members of this table in [`MEMBERS`] (it may have no slots of its own): a UDP flow
    /// keeps its backend only while the backend is one of them (point 57). 0 = not written (maps
    /// pinned by an older agent): the flow then keeps its backend while the backend exists.
    /// Host byte order.
    pub serving_select_id: u32,
}
const _: () = assert!(size_of::<ServiceValue>() == 32);

/// Address marker entry (see [`ServiceKey`]); not a real frontend.
pub const SVC_F_ADDR_MARKER: u32 = 1 << 0;
/// `sessionAffinity: ClientIP`.
pub const SVC_F_AFFINITY: u32 = 1 << 1;
/// Selection table is a Maglev table (slot = flow hash % `slot_count`) instead of a dense
/// array (slot = random % `slot_count`).
pub const SVC_F_MAGLEV: u32 = 1 << 2;
/// With `slot_count == 0`: drop silently (traffic policy Local without local endpoints) instead
/// of rejecting (no endpoints at all).
pub const SVC_F_DROP_IF_EMPTY: u32 = 1 << 3;
/// Frontend is external (NodePort, externalIP, LoadBalancer IP).
pub const SVC_F_EXTERNAL: u32 = 1 << 4;
/// Traffic from outside the node is source-NATed to the node address (`externalTrafficPolicy:
/// Cluster`, point 32).
pub const SVC_F_SNAT: u32 = 1 << 5;
/// Sources must match [`SOURCE_RANGES`] for this frontend (`loadBalancerSourceRanges`).
pub const SVC_F_SOURCE_RANGES: u32 = 1 << 6;
/// The kind of frontend, for the CLI (the datapath never reads these bits): a node port, an
/// `externalIPs` entry, a LoadBalancer IP; none of them set is a ClusterIP.
pub const SVC_F_NODEPORT: u32 = 1 << 7;
pub const SVC_F_EXTERNAL_IP: u32 = 1 << 8;
pub const SVC_F_LOADBALANCER: u32 = 1 << 9;

// ---------------------------------------------------------------------------------------------
// LB_BACKENDS
// ---------------------------------------------------------------------------------------------

/// Backend id 0 is reserved: never programmed, means "none".
pub const BACKEND_ID_NONE: u32 = 0;

impl Backend {
    /// The slot holds a backend (an unused array slot is all zeros: protocol 0).
    #[inline(always)]
    #[must_use]
    pub const fn is_set(&self) -> bool {
        self.proto != 0
    }
}

#[repr(C, align(4))]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Backend {
    /// Endpoint address, network byte order, IPv4-mapped for IPv4.
    pub addr: [u8; 16],
    /// Endpoint (target) port, network byte order.
    pub port_be: u16,
    /// IP protocol number.
    pub proto: u8,
    /// `BACKEND_F_*` bits.
    pub flags: u8,
}
const _: () = assert!(size_of::<Backend>() == 20 && align_of::<Backend>() == 4);

/// The endpoint runs on this node.
pub const BACKEND_F_LOCAL: u8 = 1 << 0;
/// The endpoint is terminating (used only through the serving-terminating fallback).
pub const BACKEND_F_TERMINATING: u8 = 1 << 1;
/// The endpoint's address is one of this node's own (a hostNetwork pod, the API server on a
/// control-plane node; point 63). Traffic to it is delivered by the node's own stack, so it is
/// never source-NATed (kube-proxy masquerades only what leaves the node), and its replies are
/// translated back by [`PROG_TC_EGRESS`] on their way out.
pub const BACKEND_F_HOST: u8 = 1 << 2;

// ---------------------------------------------------------------------------------------------
// LB_ADDR_FILTER
// ---------------------------------------------------------------------------------------------

/// Bits per bitmap of [`ADDR_FILTER`] (a power of two): at 100,000 addresses about one
/// non-service packet in ten pays a hash lookup for nothing.
pub const ADDR_FILTER_BITS: u32 = 1 << 20;
/// `u64` words of [`ADDR_FILTER`]: the frontend bitmap, then the backend bitmap.
pub const ADDR_FILTER_WORDS: u32 = 2 * ADDR_FILTER_BITS / 64;
/// Which bitmap of [`ADDR_FILTER`].
pub const ADDR_FILTER_FRONTEND: u32 = 0;
pub const ADDR_FILTER_BACKEND: u32 = 1;

/// The word index and bit of `addr` in bitmap `which` of [`ADDR_FILTER`]: a multiplicative hash
/// of the 16-byte address (network byte order words read in host order, as the datapath reads
/// them).
#[inline(always)]
#[must_use]
pub const fn addr_filter_slot(addr: &[u8; 16], which: u32) -> (u32, u64) {
    addr_filter_slot_words([word(addr, 0), word(addr, 4), word(addr, 8), word(addr, 12)], which)
}

/// [`addr_filter_slot`] of an address given as its four 32-bit words as they lie in memory
/// (the datapath reads them from an aligned copy with four loads).
#[inline(always)]
#[must_use]
pub const fn addr_filter_slot_words(w: [u32; 4], which: u32) -> (u32, u64) {
    let x = (w[0] ^ w[1].rotate_left(8) ^ w[2].rotate_left(16) ^ w[3]).wrapping_mul(0x9e37_79b1);
    let bit = x >> (32 - 20);
    (which * (ADDR_FILTER_BITS / 64) + bit / 64, 1u64 << (bit % 64))
}
const _: () = assert!(ADDR_FILTER_BITS == 1 << 20);

/// An address as its four 32-bit words as they lie in memory (what the datapath loads from it).
#[inline(always)]
#[must_use]
pub const fn addr_words(addr: &[u8; 16]) -> [u32; 4] {
    [word(addr, 0), word(addr, 4), word(addr, 8), word(addr, 12)]
}

/// The 32-bit word at byte `i` of an address, as the bytes lie in memory.
#[inline(always)]
const fn word(addr: &[u8; 16], i: usize) -> u32 {
    u32::from_ne_bytes([addr[i], addr[i + 1], addr[i + 2], addr[i + 3]])
}

// ---------------------------------------------------------------------------------------------
// LB_LOCAL_MARKS
// ---------------------------------------------------------------------------------------------

/// Bits of [`LOCAL_MARKS`] (a power of two). A frontend whose bit another one set by chance
/// only looks its flows up in another order (see [`local_mark_slot`]).
pub const LOCAL_MARK_BITS: u32 = 1 << 16;
/// `u64` words of [`LOCAL_MARKS`].
pub const LOCAL_MARK_WORDS: u32 = LOCAL_MARK_BITS / 64;

/// The word index and bit of IPv4 frontend `addr`:`port_be`/`proto` in [`LOCAL_MARKS`] (`addr`:
/// the native word of the address's wire bytes, as the datapath loads it). The bit is set for
/// the external frontends (NodePorts on each node address, LoadBalancer IPs, external IPs)
/// whose flows are never source-NATed, those of `externalTrafficPolicy: Local`. A packet from
/// outside to a marked frontend looks its client's one entry up first, one to any other looks
/// at the SNAT port slots first ([`SNAT4_SLOTS`]): each finds its flow in the first lookup, and
/// a wrong guess (a hash collision, a flow of another kind) costs a lookup, never the flow.
#[inline(always)]
#[must_use]
pub const fn local_mark_slot(addr: u32, port_be: u16, proto: u8) -> (u32, u64) {
    let x = (addr ^ (port_be as u32 | (proto as u32) << 16).rotate_left(11)).wrapping_mul(0x9e37_79b1);
    let bit = x >> (32 - 16);
    (bit / 64, 1u64 << (bit % 64))
}
const _: () = assert!(LOCAL_MARK_BITS == 1 << 16);

// ---------------------------------------------------------------------------------------------
// LB_SELECT
// ---------------------------------------------------------------------------------------------

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct SelectKey {
    /// [`ServiceValue::select_id`]. Host byte order.
    pub select_id: u32,
    /// Slot index in `0..slot_count`. Host byte order.
    pub slot: u32,
}
const _: () = assert!(size_of::<SelectKey>() == 8);

// ---------------------------------------------------------------------------------------------
// LB_CONNTRACK
// ---------------------------------------------------------------------------------------------

/// The flow as seen on the wire by the datapath, before translation.
///
/// A translated flow has one entry or two:
/// - `CT_DIR_CLIENT` (one entry for both directions): keyed by the client's address and port
///   alone (in both the source and the destination fields), for a flow without source NAT
///   whose client address and port are in no other live flow. Its value holds the backend in
///   `nat_*` and the frontend in `snat_*` (without `CT_F_SNAT`): a packet to the frontend
///   matches it when its destination is that frontend, a reply when its source is that backend.
///   One insert per new flow instead of two; [`client_entry_views`] turns it into the two
///   entries below, for readers outside the datapath.
/// - `CT_DIR_FORWARD` keyed by client → frontend, and `CT_DIR_REPLY` keyed by backend → client
///   (the reply as it arrives from the backend): source-NATed flows (whose replies come back to
///   the SNAT address, not the client), and a flow whose client address and port already have a
///   live `CT_DIR_CLIENT` entry for another frontend (a UDP socket asking two Services).
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct CtKey {
    /// Source address, network byte order.
    pub src: [u8; 16],
    /// Destination address, network byte order.
    pub dst: [u8; 16],
    /// Source port, network byte order.
    pub sport_be: u16,
    /// Destination port, network byte order.
    pub dport_be: u16,
    pub proto: u8,
    /// `CT_DIR_*`.
    pub dir: u8,
    pub _pad: [u8; 2],
}
const _: () = assert!(size_of::<CtKey>() == 40 && align_of::<CtKey>() == 8);

/// [`CtKey`] of an IPv4 flow: the 16-byte key of [`CONNTRACK4`] (hashed and compared in 16
/// bytes rather than 40: the conntrack lookup is most of an established packet's cost).
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct CtKey4 {
    /// Source address: the four bytes as on the wire (network byte order), read as a native
    /// word (`u32::from_ne_bytes(octets)`).
    pub src: u32,
    /// Destination address, as `src`.
    pub dst: u32,
    /// Source port, network byte order.
    pub sport_be: u16,
    /// Destination port, network byte order.
    pub dport_be: u16,
    pub proto: u8,
    /// `CT_DIR_*`.
    pub dir: u8,
    pub _pad: [u8; 2],
}
const _: () = assert!(size_of::<CtKey4>() == 16 && align_of::<CtKey4>() == 8);

/// The first 12 bytes of an IPv4-mapped IPv6 address (`::ffff:a.b.c.d`).
const V4_MAPPED_PREFIX: [u8; 12] = [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff];

/// The IPv4 address of IPv4-mapped `addr` as the native word of its wire bytes (what the
/// datapath loads from the address's last word); `None` for an IPv6 address.
#[must_use]
pub fn ipv4_word(addr: &[u8; 16]) -> Option<u32> {
    (addr[..12] == V4_MAPPED_PREFIX).then(|| u32::from_ne_bytes([addr[12], addr[13], addr[14], addr[15]]))
}

impl CtKey4 {
    /// The IPv4 key of `k`, when both of its addresses are IPv4-mapped.
    pub fn from_key(k: &CtKey) -> Option<Self> {
        Some(Self {
            src: ipv4_word(&k.src)?,
            dst: ipv4_word(&k.dst)?,
            sport_be: k.sport_be,
            dport_be: k.dport_be,
            proto: k.proto,
            dir: k.dir,
            _pad: [0; 2],
        })
    }

    /// The same flow as a [`CtKey`] (IPv4-mapped addresses).
    pub fn to_key(&self) -> CtKey {
        let mapped = |w: u32| {
            let mut a = [0u8; 16];
            a[..12].copy_from_slice(&V4_MAPPED_PREFIX);
            a[12..].copy_from_slice(&w.to_ne_bytes());
            a
        };
        CtKey {
            src: mapped(self.src),
            dst: mapped(self.dst),
            sport_be: self.sport_be,
            dport_be: self.dport_be,
            proto: self.proto,
            dir: self.dir,
            _pad: [0; 2],
        }
    }
}

/// The [`CT_DIR_CLIENT`] key of an IPv4 client: the 8-byte key of [`CONNTRACK4_CLIENT`]. A
/// flow without source NAT is looked up by its client alone, so half of [`CtKey4`] would be a
/// copy of the other half; 8 bytes hash in half the rounds (the lookup is the largest part of
/// an established packet's cost).
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct CtClientKey4 {
    /// The client's address: the four bytes as on the wire (network byte order), read as a
    /// native word (`u32::from_ne_bytes(octets)`).
    pub addr: u32,
    /// The client's port, network byte order.
    pub port_be: u16,
    pub proto: u8,
    pub _pad: u8,
}
const _: () = assert!(size_of::<CtClientKey4>() == 8 && align_of::<CtClientKey4>() == 8);

impl CtClientKey4 {
    /// The 8-byte key of `k`, when it is the `CT_DIR_CLIENT` key of an IPv4 client.
    pub fn from_key(k: &CtKey) -> Option<Self> {
        Self::from_key4(&CtKey4::from_key(k)?)
    }

    /// The 8-byte key of `k4`, when it is a `CT_DIR_CLIENT` key (as builds before
    /// [`CONNTRACK4_CLIENT`] kept it in [`CONNTRACK4`]).
    pub fn from_key4(k4: &CtKey4) -> Option<Self> {
        (k4.dir == CT_DIR_CLIENT).then_some(Self { addr: k4.src, port_be: k4.sport_be, proto: k4.proto, _pad: 0 })
    }

    /// The same key as a [`CtKey`] ([`CtKey::client`] of the IPv4-mapped address).
    pub fn to_key(&self) -> CtKey {
        CtKey4 {
            src: self.addr,
            dst: self.addr,
            sport_be: self.port_be,
            dport_be: self.port_be,
            proto: self.proto,
            dir: CT_DIR_CLIENT,
            _pad: [0; 2],
        }
        .to_key()
    }
}

/// Where the entry of a conntrack key lives: the IPv4 client table, the IPv4 flow table or the
/// IPv6 table, with the key in that table's form.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CtTableKey {
    /// [`CONNTRACK4_CLIENT`].
    Client4(CtClientKey4),
    /// [`CONNTRACK4`].
    Flow4(CtKey4),
    /// [`CONNTRACK`].
    V6(CtKey),
}

impl CtKey {
    /// The table of this key's entry, and the key in that table's form.
    pub fn table_key(&self) -> CtTableKey {
        match (CtClientKey4::from_key(self), CtKey4::from_key(self)) {
            (Some(c), _) => CtTableKey::Client4(c),
            (None, Some(k4)) => CtTableKey::Flow4(k4),
            (None, None) => CtTableKey::V6(*self),
        }
    }
}

pub const CT_DIR_FORWARD: u8 = 0;
pub const CT_DIR_REPLY: u8 = 1;
/// The one entry of both directions of a flow without source NAT (see [`CtKey`]).
pub const CT_DIR_CLIENT: u8 = 2;

impl CtKey {
    /// The `CT_DIR_CLIENT` key of client `addr`:`port_be` (its address and port in both places,
    /// so the IPv4 form of an IPv4 client's key is [`CtKey4`] like any other).
    pub fn client(addr: [u8; 16], port_be: u16, proto: u8) -> Self {
        Self { src: addr, dst: addr, sport_be: port_be, dport_be: port_be, proto, dir: CT_DIR_CLIENT, _pad: [0; 2] }
    }
}

/// The `CT_DIR_CLIENT` key whose entry may stand for forward or reply key `k`, and the index of
/// `k`'s view in [`client_entry_views`]; `None` for another direction.
pub fn client_key_of(k: &CtKey) -> Option<(CtKey, usize)> {
    match k.dir {
        CT_DIR_FORWARD => Some((CtKey::client(k.src, k.sport_be, k.proto), 0)),
        CT_DIR_REPLY => Some((CtKey::client(k.dst, k.dport_be, k.proto), 1)),
        _ => None,
    }
}

/// The forward and reply entries (as a two-entry flow would have them) that the one
/// `CT_DIR_CLIENT` entry `(k, v)` stands for; `None` for an entry of another direction.
pub fn client_entry_views(k: &CtKey, v: &CtValue) -> Option<[(CtKey, CtValue); 2]> {
    if k.dir != CT_DIR_CLIENT {
        return None;
    }
    let (frontend, frontend_port_be) = (v.snat_addr, v.snat_port_be);
    let (backend, backend_port_be) = (v.nat_addr, v.nat_port_be);
    let flags = v.flags & !CT_F_SNAT;
    let key = |src, sport_be, dst, dport_be, dir| CtKey { src, dst, sport_be, dport_be, proto: k.proto, dir, _pad: [0; 2] };
    let forward = (
        key(k.src, k.sport_be, frontend, frontend_port_be, CT_DIR_FORWARD),
        CtValue { snat_addr: [0; 16], snat_port_be: 0, flags, ..*v },
    );
    let reply = (
        key(backend, backend_port_be, k.src, k.sport_be, CT_DIR_REPLY),
        CtValue { nat_addr: frontend, nat_port_be: frontend_port_be, snat_addr: k.src, snat_port_be: k.sport_be, flags, ..*v },
    );
    Some([forward, reply])
}

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct CtValue {
    /// The datapath's clock ([`ClockCalibration`]) at the last packet seen in this direction (refreshed at most
    /// every [`CT_REFRESH_NS`]).
    pub last_seen_ns: u64,
    /// Forward: the backend address written as destination. Reply: the frontend address written
    /// back as source. Network byte order.
    pub nat_addr: [u8; 16],
    /// With `CT_F_SNAT`: forward: the source address written (node or hairpin address); reply:
    /// the client address written back as destination. Network byte order.
    pub snat_addr: [u8; 16],
    /// The backend chosen at flow start. Host byte order.
    pub backend_id: u32,
    /// [`ServiceValue::svc_id`] of the frontend. Host byte order.
    pub svc_id: u32,
    /// Port counterpart of `nat_addr`, network byte order.
    pub nat_port_be: u16,
    /// Port counterpart of `snat_addr`, network byte order.
    pub snat_port_be: u16,
    /// `CT_F_*` bits.
    pub flags: u16,
    pub _pad: u16,
}
const _: () = assert!(size_of::<CtValue>() == 56);
// The datapath copies these addresses with word moves (see the layout rules).
const _: () = assert!(core::mem::offset_of!(CtValue, nat_addr) % 4 == 0 && core::mem::offset_of!(CtValue, snat_addr) % 4 == 0);

/// A FIN or RST was seen: the entry lives only `CT_TCP_CLOSING_LIFETIME_NS` more.
pub const CT_F_CLOSING: u16 = 1 << 0;
/// The source is translated too (`snat_addr`, `snat_port_be`).
pub const CT_F_SNAT: u16 = 1 << 1;
/// On a forward entry with `CT_F_SNAT`: the flow's reply entry is its SNAT port's slot in
/// [`SNAT4_SLOTS`], not a `CT_DIR_REPLY` entry of the hash table (a forward entry that a slot
/// holds too, as [`SnatSlot4::forward_entry`] shows it, or that a build before the hashed ports
/// wrote in [`CONNTRACK4`]).
pub const CT_F_SNAT_SLOT: u16 = 1 << 2;

// ---------------------------------------------------------------------------------------------
// LB_SNAT4_SLOTS
// ---------------------------------------------------------------------------------------------

/// SNAT ports per protocol with a slot: the first `SNAT_SLOT_PORTS` ports of the configured range
/// (`Config::snat_port_min` on; the default range, 61000-65000, has 4,001).
pub const SNAT_SLOT_PORTS: u32 = 8_192;
/// Protocols with slots: TCP, then UDP (other protocols' SNAT flows use the hash table).
pub const SNAT_SLOT_PROTOS: u32 = 2;
/// Entries of [`SNAT4_SLOTS`]: 64 bytes each, 1 MiB in all.
pub const SNAT_SLOTS_MAX: u32 = SNAT_SLOT_PORTS * SNAT_SLOT_PROTOS;

/// The slot of IPv4 SNAT port `port` (host byte order) of protocol `proto` when the range starts
/// at `port_min`, if it has one.
#[inline(always)]
#[must_use]
pub const fn snat_slot_index(proto: u8, port: u16, port_min: u16) -> Option<u32> {
    let proto_base = match proto {
        IPPROTO_TCP => 0,
        IPPROTO_UDP => SNAT_SLOT_PORTS,
        _ => return None,
    };
    if port < port_min || (port - port_min) as u32 >= SNAT_SLOT_PORTS {
        return None;
    }
    Some(proto_base + (port - port_min) as u32)
}

/// The entries of an external IPv4 source-NATed flow, in the slot of its SNAT port (an array:
/// the reply path reads it by index, the forward path by the index its hash gives
/// ([`snat_slot_probe_port`]), neither hashing a key into a table; 8,192 slots stay in the
/// CPU's caches where a hash bucket of the conntrack table is a cache miss). The slot stores the
/// reply entry; the forward entry is made of it ([`SnatSlot4::forward_entry`]). A slot belongs
/// to one flow at a time, whatever its backend: the port space is the node's, and a flow that
/// finds no free slot in its probes takes the per-backend port space of the hash table (`CT_DIR_REPLY` entries)
/// instead, so capacity is as without slots.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct SnatSlot4 {
    /// The reply entry, as a `CT_DIR_REPLY` value (`CT_F_SNAT` set): `last_seen_ns` 0 or
    /// expired (`ct_lifetime_ns`) means the slot is free.
    pub ct: CtValue,
    /// The backend the reply comes from (its source), network byte order.
    pub backend_addr: [u8; 4],
    /// Its port, network byte order.
    pub backend_port_be: u16,
    /// [`SNAT_SLOT_F_SHARED`], [`SNAT_SLOT_F_FORWARD`].
    pub flags: u8,
    pub _pad: u8,
}
const _: () = assert!(size_of::<SnatSlot4>() == 64 && align_of::<SnatSlot4>() == 8);

/// The protocol and port (host byte order) of slot `index` when the range starts at `port_min`:
/// the inverse of [`snat_slot_index`].
#[must_use]
pub const fn snat_slot_port(index: u32, port_min: u16) -> (u8, u16) {
    let proto = if index < SNAT_SLOT_PORTS { IPPROTO_TCP } else { IPPROTO_UDP };
    (proto, port_min.wrapping_add((index % SNAT_SLOT_PORTS) as u16))
}

impl SnatSlot4 {
    /// Whether the slot holds a flow (its age aside): a free slot's `last_seen_ns` is 0 or its
    /// backend port is 0.
    #[must_use]
    pub fn in_use(&self) -> bool {
        self.ct.last_seen_ns != 0 && self.backend_port_be != 0
    }

    /// Whether the slot, as slot `index`, holds a flow whose lifetime (`ct_lifetime_ns`) has not
    /// run out at `now` (the datapath's clock): the rule the datapath claims slots by.
    #[must_use]
    pub fn live(&self, index: u32, now: u64) -> bool {
        self.in_use() && now.saturating_sub(self.ct.last_seen_ns) <= ct_lifetime_ns(snat_slot_port(index, 0).0, self.ct.flags)
    }

    /// With [`SNAT_SLOT_F_FORWARD`]: the `CT_DIR_FORWARD` entry the slot holds too, under its
    /// key, as slot `index` with the IPv4 SNAT address `snat_addr` and ports from `port_min`.
    #[must_use]
    pub fn forward_entry(&self, index: u32, snat_addr: [u8; 16], port_min: u16) -> Option<(CtKey, CtValue)> {
        if self.flags & SNAT_SLOT_F_FORWARD == 0 {
            return None;
        }
        let (proto, port) = snat_slot_port(index, port_min);
        let c = &self.ct;
        let key = CtKey {
            src: c.snat_addr,
            dst: c.nat_addr,
            sport_be: c.snat_port_be,
            dport_be: c.nat_port_be,
            proto,
            dir: CT_DIR_FORWARD,
            _pad: [0; 2],
        };
        let value = CtValue {
            nat_addr: v4_mapped(self.backend_addr),
            nat_port_be: self.backend_port_be,
            snat_addr,
            snat_port_be: port.to_be(),
            flags: c.flags | CT_F_SNAT | CT_F_SNAT_SLOT,
            ..*c
        };
        Some((key, value))
    }

    /// The `CT_DIR_REPLY` key the slot's entry stands for, as slot `index` with the IPv4 SNAT
    /// address `snat_addr` (IPv4-mapped) and ports from `port_min`.
    #[must_use]
    pub fn reply_key(&self, index: u32, snat_addr: [u8; 16], port_min: u16) -> CtKey {
        let (proto, port) = snat_slot_port(index, port_min);
        CtKey {
            src: v4_mapped(self.backend_addr),
            dst: snat_addr,
            sport_be: self.backend_port_be,
            dport_be: port.to_be(),
            proto,
            dir: CT_DIR_REPLY,
            _pad: [0; 2],
        }
    }
}

/// The slot of `CT_DIR_REPLY` key `k` when it is a reply to the IPv4 SNAT address `snat_addr`
/// (IPv4-mapped) on a port with a slot (ports from `port_min`).
#[must_use]
pub fn snat_slot_of(k: &CtKey, snat_addr: &[u8; 16], port_min: u16) -> Option<u32> {
    if k.dir != CT_DIR_REPLY || k.dst != *snat_addr || k.dst[..12] != V4_MAPPED_PREFIX {
        return None;
    }
    snat_slot_index(k.proto, u16::from_be(k.dport_be), port_min)
}

/// The slots that may hold the flow of `CT_DIR_FORWARD` key `k` (an IPv4 flow of a protocol with
/// slots) in its forward entry, with the node's seed and SNAT port range: its probes, in order.
pub fn snat_slots_of_forward(k: &CtKey, seed: u32, port_min: u16, port_max: u16) -> impl Iterator<Item = u32> + use<> {
    let v4 = k.dir == CT_DIR_FORWARD && k.src[..12] == V4_MAPPED_PREFIX && k.dst[..12] == V4_MAPPED_PREFIX;
    let word = |a: &[u8; 16]| u32::from_ne_bytes([a[12], a[13], a[14], a[15]]);
    let hash = snat_slot_hash(seed, word(&k.src), k.sport_be, word(&k.dst), k.dport_be, k.proto);
    let proto = k.proto;
    (0..if v4 { SNAT_SLOT_PROBES } else { 0 })
        .filter_map(move |i| snat_slot_index(proto, snat_slot_probe_port(hash, i, port_min, port_max), port_min))
}

/// The slot holding the flow of key `k` (a reply to the IPv4 SNAT address, or a forward key) and
/// the entry it holds under `k`, found as the datapath finds it with the node's settings `cfg`
/// and seed `seed`; `read` reads a slot by index.
pub fn snat_slot_entry<E>(
    k: &CtKey,
    cfg: &Config,
    seed: u32,
    mut read: impl FnMut(u32) -> Result<SnatSlot4, E>,
) -> Result<Option<(u32, CtValue)>, E> {
    if let Some(i) = snat_slot_of(k, &cfg.snat_addr, cfg.snat_port_min) {
        let s = read(i)?;
        return Ok(snat_slot_holds(&s, k).then_some((i, s.ct)));
    }
    for i in snat_slots_of_forward(k, seed, cfg.snat_port_min, cfg.snat_port_max) {
        if let Some((_, v)) = read(i)?.forward_entry(i, cfg.snat_addr, cfg.snat_port_min).filter(|(fk, _)| fk == k) {
            return Ok(Some((i, v)));
        }
    }
    Ok(None)
}

/// Whether the slot `s` holds the flow of reply key `k` (its backend is `k`'s source).
#[must_use]
pub fn snat_slot_holds(s: &SnatSlot4, k: &CtKey) -> bool {
    s.in_use() && k.src == v4_mapped(s.backend_addr) && k.sport_be == s.backend_port_be
}

/// The slot's port was also reserved in the hash table (a flow that found no free slot took it
/// for another backend): a flow claiming the slot checks the hash table for its own backend
/// first. Never cleared by the datapath.
pub const SNAT_SLOT_F_SHARED: u8 = 1 << 0;
/// The slot holds its flow's forward entry too (builds before kept it in [`CONNTRACK4`], with
/// [`CT_F_SNAT_SLOT`]): the forward path finds it at a port of [`snat_slot_probe_port`].
pub const SNAT_SLOT_F_FORWARD: u8 = 1 << 1;

/// Ports a new flow tries, from the one its hash gives on, before the hash table's port space;
/// the forward path looks at as many.
pub const SNAT_SLOT_PROBES: u32 = 2;
const _: () = assert!(SNAT_SLOT_PROBES <= 2);

/// The hash of an external IPv4 flow (client `client`:`client_port_be` to frontend
/// `frontend`:`frontend_port_be`, addresses as the native words of their wire bytes) that picks
/// its SNAT port (RFC 6056's hash-based selection): the forward path finds the flow's slot again
/// from its packet alone. `seed` is the node's secret (see `GLOBAL_SNAT_SEED`), so that the
/// port cannot be predicted from outside. The datapath and the CLI share it: part of the maps'
/// format.
#[inline(always)]
#[must_use]
pub const fn snat_slot_hash(seed: u32, client: u32, client_port_be: u16, frontend: u32, frontend_port_be: u16, proto: u8) -> u32 {
    // Three multiplies in one dependency chain, then a final mix (murmur3's): a few ns, where
    // a hash of several full rounds per word showed in B1's established-flow row.
    let ports = ((client_port_be as u32) << 16) | frontend_port_be as u32;
    let mut h = (seed ^ client).wrapping_mul(0x9e37_79b1);
    h = (h ^ frontend ^ (proto as u32) << 24).wrapping_mul(0x85eb_ca6b);
    h = (h ^ ports).wrapping_mul(0xc2b2_ae35);
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h
}

/// The SNAT port (host byte order) of probe `i` (below [`SNAT_SLOT_PROBES`]) of a flow of hash
/// `hash` ([`snat_slot_hash`]) with the range `port_min..=port_max`: one of the ports with a slot,
/// the next one for each further probe (wrapping once at most: `i` is below
/// [`SNAT_SLOT_PROBES`], 2, and a range has a port at least).
#[inline(always)]
#[must_use]
pub const fn snat_slot_probe_port(hash: u32, i: u32, port_min: u16, port_max: u16) -> u16 {
    let span = if port_max < port_min { 1 } else { (port_max - port_min) as u32 + 1 };
    let ports = if span < SNAT_SLOT_PORTS { span } else { SNAT_SLOT_PORTS };
    // `hash` scaled into `0..ports` by a multiply (no division: tens of cycles on a hit path).
    let first = ((hash as u64 * ports as u64) >> 32) as u32;
    let mut j = first + i;
    if j >= ports {
        j -= ports;
    }
    port_min.wrapping_add(j as u16)
}

// ---------------------------------------------------------------------------------------------
// LB_AFFINITY
// ---------------------------------------------------------------------------------------------

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct AffinityKey {
    /// Client source address (no port: point 25), network byte order.
    pub client: [u8; 16],
    /// [`ServiceValue::svc_id`]. Host byte order.
    pub svc_id: u32,
}
const _: () = assert!(size_of::<AffinityKey>() == 20);

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct AffinityValue {
    /// The datapath's clock ([`ClockCalibration`]) at the last new connection that used this record.
    pub last_used_ns: u64,
    pub backend_id: u32,
    pub _pad: u32,
}
const _: () = assert!(size_of::<AffinityValue>() == 16);

// ---------------------------------------------------------------------------------------------
// LB_MAGLEV, LB_MEMBERS
// ---------------------------------------------------------------------------------------------

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct MaglevKey {
    /// [`ServiceValue::select_id`]. Host byte order.
    pub select_id: u32,
    /// Slot / [`MAGLEV_CHUNK`]. Host byte order.
    pub chunk: u32,
}
const _: () = assert!(size_of::<MaglevKey>() == 8);

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MaglevChunk {
    /// Backend ids of slots `chunk * MAGLEV_CHUNK ..` the next chunk's. Host byte order.
    pub ids: [u32; MAGLEV_CHUNK as usize],
}
const _: () = assert!(size_of::<MaglevChunk>() == 1024);

/// The flow hash that picks a Maglev slot (`hash % slot_count`): the same on every node for
/// the same 5-tuple, so a flow that moves between nodes keeps its backend. `src` and `dst` are
/// the addresses' words as they lie in memory ([`addr_words`]), ports in network byte order.
/// The datapath and `lb explain` both compute it here.
#[inline(always)]
#[must_use]
pub const fn maglev_flow_hash(src: [u32; 4], dst: [u32; 4], sport_be: u16, dport_be: u16, proto: u8) -> u32 {
    let words = [
        src[0] ^ src[1] ^ src[2],
        src[3],
        dst[0] ^ dst[1] ^ dst[2],
        dst[3],
        ((sport_be as u32) << 16) | dport_be as u32,
        proto as u32,
    ];
    let mut h: u32 = 0x9e37_79b9;
    let mut i = 0;
    while i < words.len() {
        h ^= words[i];
        h = h.wrapping_mul(0x85eb_ca6b);
        h ^= h >> 13;
        h = h.wrapping_mul(0xc2b2_ae35);
        h ^= h >> 16;
        i += 1;
    }
    h
}

impl Default for MaglevChunk {
    fn default() -> Self {
        Self { ids: [0; MAGLEV_CHUNK as usize] }
    }
}

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct MemberKey {
    pub select_id: u32,
    pub backend_id: u32,
}
const _: () = assert!(size_of::<MemberKey>() == 8);

// ---------------------------------------------------------------------------------------------
// LB_SOURCE_RANGES
// ---------------------------------------------------------------------------------------------

/// LPM trie data: the LoadBalancer IP (always matched whole), then the client source. An entry's
/// prefix length is 128 (the frontend) plus the source prefix in the 16-byte format (96 + n for
/// an IPv4 /n); a lookup uses the full 256 bits.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct SourceRangeData {
    /// LoadBalancer IP, network byte order, IPv4-mapped.
    pub frontend: [u8; 16],
    /// Allowed source prefix, network byte order, IPv4-mapped.
    pub source: [u8; 16],
}
const _: () = assert!(size_of::<SourceRangeData>() == 32);

/// A key of [`SOURCE_RANGES`] as the kernel's LPM trie stores it (`struct bpf_lpm_trie_key`:
/// the prefix length in bits, host byte order, then the data); the datapath builds the same
/// layout with aya's `lpm_trie::Key`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct SourceRangeKey {
    pub prefix_len: u32,
    pub data: SourceRangeData,
}
const _: () = assert!(size_of::<SourceRangeKey>() == 36);

// ---------------------------------------------------------------------------------------------
// LB_FRAGS
// ---------------------------------------------------------------------------------------------

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct FragKey {
    pub src: [u8; 16],
    pub dst: [u8; 16],
    /// IPv4 identification, network byte order (widened).
    pub id: u32,
    pub proto: u8,
    pub _pad: [u8; 3],
}
const _: () = assert!(size_of::<FragKey>() == 40);

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct FragValue {
    pub seen_ns: u64,
    pub sport_be: u16,
    pub dport_be: u16,
    pub _pad: u32,
}
const _: () = assert!(size_of::<FragValue>() == 16);

// ---------------------------------------------------------------------------------------------
// LB_SOCK_REVNAT
// ---------------------------------------------------------------------------------------------

/// A UDP socket that sent to a service through socket-level translation, and the backend it was
/// sent to: replies from that backend are shown to the socket as coming from the service.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct SockRevKey {
    pub cookie: u64,
    pub backend: [u8; 16],
    pub backend_port_be: u16,
    pub _pad: [u8; 6],
}
const _: () = assert!(size_of::<SockRevKey>() == 32);

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct SockRevValue {
    pub frontend: [u8; 16],
    pub frontend_port_be: u16,
    pub _pad: [u8; 6],
}
const _: () = assert!(size_of::<SockRevValue>() == 24);

// ---------------------------------------------------------------------------------------------
// LB_SVC_LABELS
// ---------------------------------------------------------------------------------------------

/// The labels of a ServicePort's Service (`key=value` pairs joined by `,`, in key order), by
/// `svc_id`, for `lb service list --selector`; only for Services that have labels. Written by
/// the agent; the datapath never reads it.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SvcLabels {
    /// Bytes of `text` in use (UTF-8).
    pub len: u32,
    pub text: [u8; 252],
}
const _: () = assert!(size_of::<SvcLabels>() == 256);

impl Default for SvcLabels {
    fn default() -> Self {
        Self { len: 0, text: [0; 252] }
    }
}

impl SvcLabels {
    /// The text, cut after the last whole `key=value` pair that fits in 252 bytes.
    #[must_use]
    pub fn new(s: &str) -> Self {
        let mut end = s.len();
        if end > 252 {
            end = s[..252].rfind(',').unwrap_or(0);
        }
        let mut l = Self::default();
        l.text[..end].copy_from_slice(&s.as_bytes()[..end]);
        l.len = end as u32;
        l
    }

    #[must_use]
    pub fn as_str(&self) -> &str {
        let len = (self.len as usize).min(self.text.len());
        core::str::from_utf8(&self.text[..len]).unwrap_or("")
    }
}

// ---------------------------------------------------------------------------------------------
// LB_EVENTS, LB_MONITOR, LB_MONITOR_STATS: `lb monitor`
// ---------------------------------------------------------------------------------------------

/// Bytes of the [`EVENTS`] ring buffer (a power of two, a multiple of the page size): about
/// 3,600 events waiting for the reader.
pub const EVENTS_BYTES: u32 = 256 * 1024;

/// What `lb monitor` asks of the datapath, written by the CLI while it runs (index 0 of
/// [`MONITOR`]). Events are written only while `active` is set and `until_ns` is ahead of the
/// datapath's clock: a monitor that dies without clearing `active` stops costing anything once
/// its lease runs out.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct MonitorConfig {
    /// End of the lease: `CLOCK_MONOTONIC_COARSE` in ns (the datapath's clock, [`ClockCalibration`]),
    /// renewed by the running monitor every second.
    pub until_ns: u64,
    /// 1 while a monitor runs.
    pub active: u32,
    /// `MON_F_*`: which events.
    pub flags: u32,
    /// New flows: one in this many is reported (0 or 1: all).
    pub flow_sample: u32,
    /// Events each CPU may write per second; more are counted as lost (a flood cannot swamp
    /// the ring or the CPU).
    pub rate_per_cpu: u32,
}
const _: () = assert!(size_of::<MonitorConfig>() == 24);

/// Drops, with their reason.
pub const MON_F_DROPS: u32 = 1 << 0;
/// Rejects (TCP RST, ICMP port unreachable).
pub const MON_F_REJECTS: u32 = 1 << 1;
/// New flows with the backend chosen (sampled).
pub const MON_F_FLOWS: u32 = 1 << 2;

/// One event in [`EVENTS`].
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct MonitorEvent {
    /// The datapath's clock ([`ClockCalibration`]) when it happened.
    pub ts_ns: u64,
    /// `EVENT_*`.
    pub kind: u8,
    pub proto: u8,
    /// `HOOK_*`: where the packet entered.
    pub hook: u8,
    pub _pad: u8,
    /// The `CNT_*` counter of the drop reason or reject kind; 0 for new flows.
    pub reason: u32,
    /// The frontend's ServicePort (0: none known). Host byte order.
    pub svc_id: u32,
    /// The chosen backend (new flows; 0: none). Host byte order.
    pub backend_id: u32,
    /// The interface the packet came in on.
    pub ifindex: u32,
    /// Ports, network byte order.
    pub sport_be: u16,
    pub dport_be: u16,
    /// Addresses, network byte order, IPv4-mapped for IPv4.
    pub src: [u8; 16],
    pub dst: [u8; 16],
}
const _: () = assert!(size_of::<MonitorEvent>() == 64);

pub const EVENT_DROP: u8 = 1;
pub const EVENT_REJECT: u8 = 2;
pub const EVENT_NEW_FLOW: u8 = 3;

/// Where a packet entered, in events.
pub const HOOK_POD: u8 = 1;
pub const HOOK_EXTERNAL: u8 = 2;
pub const HOOK_EGRESS: u8 = 3;

/// Per-CPU counts of the monitor's events (index 0 of [`MONITOR_STATS`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct MonitorStats {
    /// Events written to the ring.
    pub written: u64,
    /// Events not written: over the per-CPU rate, or the ring full.
    pub lost: u64,
}
const _: () = assert!(size_of::<MonitorStats>() == 16);

// ---------------------------------------------------------------------------------------------
// LB_SVC_NAMES
// ---------------------------------------------------------------------------------------------

/// The Kubernetes name of a ServicePort (`namespace/name:port/PROTOCOL`), by `svc_id`: written
/// by the agent so that another process (`lb service list`, `lb stats`) can name what the maps
/// hold. The datapath never reads it.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SvcName {
    /// Bytes of `name` in use (UTF-8).
    pub len: u32,
    pub name: [u8; 124],
}
const _: () = assert!(size_of::<SvcName>() == 128);

impl Default for SvcName {
    fn default() -> Self {
        Self { len: 0, name: [0; 124] }
    }
}

impl SvcName {
    /// The name, truncated to 124 bytes at a character boundary.
    #[must_use]
    pub fn new(s: &str) -> Self {
        let mut end = s.len().min(124);
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        let mut n = Self::default();
        n.name[..end].copy_from_slice(&s.as_bytes()[..end]);
        n.len = end as u32;
        n
    }

    #[must_use]
    pub fn as_str(&self) -> &str {
        let len = (self.len as usize).min(self.name.len());
        core::str::from_utf8(&self.name[..len]).unwrap_or("")
    }
}

// ---------------------------------------------------------------------------------------------
// LB_AGENT
// ---------------------------------------------------------------------------------------------

/// Bytes of [`AgentStatus::last_error`].
pub const AGENT_ERROR_LEN: usize = 512;
/// Bytes of [`AgentStatus::problems`].
pub const AGENT_PROBLEMS_LEN: usize = 3072;

/// What the agent owning the pins says about itself, for `lb status` in another process: written
/// by the agent whenever it changes, never read by the datapath. Text fields are UTF-8.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AgentStatus {
    /// Process id of the agent that wrote this record; 0 = never written.
    pub pid: u32,
    /// Lines in `problems`, and problems in all (more than fit are counted, not listed).
    pub problems_shown: u32,
    pub problems_total: u32,
    /// Maps the agent grew online since it started (an earlier build wrote 0 here).
    pub map_resizes: u32,
    /// Milliseconds since the Unix epoch (CLOCK_REALTIME): when the agent started, its last
    /// successful sync (0 = none yet) and its last failed sync (0 = none).
    pub started_unix_ms: u64,
    pub last_sync_unix_ms: u64,
    pub last_error_unix_ms: u64,
    /// Bytes in use of `last_error` and `problems`.
    pub last_error_len: u32,
    pub problems_len: u32,
    /// The last failed sync's error, its first line saying what to do.
    pub last_error: [u8; AGENT_ERROR_LEN],
    /// What is wrong now (an invalid manifest, a rejected object, ...), one per line.
    pub problems: [u8; AGENT_PROBLEMS_LEN],
}
const _: () = assert!(size_of::<AgentStatus>() == 3632);

impl Default for AgentStatus {
    fn default() -> Self {
        Self {
            pid: 0,
            problems_shown: 0,
            problems_total: 0,
            map_resizes: 0,
            started_unix_ms: 0,
            last_sync_unix_ms: 0,
            last_error_unix_ms: 0,
            last_error_len: 0,
            problems_len: 0,
            last_error: [0; AGENT_ERROR_LEN],
            problems: [0; AGENT_PROBLEMS_LEN],
        }
    }
}

// ---------------------------------------------------------------------------------------------
// LB_CONFIG
// ---------------------------------------------------------------------------------------------

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Config {
    /// Source address for SNAT of external IPv4 traffic (the node's IPv4 address), network byte
    /// order, IPv4-mapped.
    pub snat_addr: [u8; 16],
    /// Source address for IPv4 hairpin traffic (a pod reaching itself through a service).
    pub hairpin_addr: [u8; 16],
    /// The same two for IPv6.
    pub snat6_addr: [u8; 16],
    pub hairpin6_addr: [u8; 16],
    /// SNAT source ports are drawn from `snat_port_min..=snat_port_max` (host byte order).
    pub snat_port_min: u16,
    pub snat_port_max: u16,
    /// `CFG_F_*` bits.
    pub flags: u32,
}
const _: () = assert!(size_of::<Config>() == 72);

/// `snat_addr` is set: external IPv4 traffic of `SVC_F_SNAT` frontends is source-NATed.
pub const CFG_F_SNAT_READY: u32 = 1 << 0;
/// `hairpin_addr` is set.
pub const CFG_F_HAIRPIN_READY: u32 = 1 << 1;
/// `snat6_addr` is set.
pub const CFG_F_SNAT6_READY: u32 = 1 << 2;
/// `hairpin6_addr` is set.
pub const CFG_F_HAIRPIN6_READY: u32 = 1 << 3;

// ---------------------------------------------------------------------------------------------
// LB_CLOCK
// ---------------------------------------------------------------------------------------------

/// How the datapath reads CLOCK_MONOTONIC at jiffy resolution without a helper call:
/// `jiffies × tick_ns + offset_ns` (wrapping u64 arithmetic). `bpf_jiffies64` is inlined by the
/// verifier into a load of `jiffies`; `bpf_ktime_get_coarse_ns`, which gives the same clock, is a
/// helper call, a tenth of a conntrack hit's cost on some CPUs (B1). The agent measures both
/// clocks through the `PROG_CLOCK_SAMPLE` program at load; `tick_ns` 0 (not calibrated) makes the
/// datapath call `bpf_ktime_get_coarse_ns` instead. Host byte order.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct ClockCalibration {
    /// Nanoseconds per jiffy (the kernel's TICK_NSEC).
    pub tick_ns: u64,
    /// CLOCK_MONOTONIC minus `jiffies × tick_ns`, modulo 2^64.
    pub offset_ns: u64,
}
const _: () = assert!(size_of::<ClockCalibration>() == 16);

impl ClockCalibration {
    /// CLOCK_MONOTONIC (jiffy resolution) at `jiffies`.
    #[inline(always)]
    #[must_use]
    pub const fn at(&self, jiffies: u64) -> u64 {
        jiffies.wrapping_mul(self.tick_ns).wrapping_add(self.offset_ns)
    }
}

// ---------------------------------------------------------------------------------------------
// LB_SVC_STATS, LB_BACKEND_STATS
// ---------------------------------------------------------------------------------------------

/// Per-CPU traffic counters of one ServicePort (`LB_SVC_STATS`, by `svc_id`) or one backend
/// (`LB_BACKEND_STATS`, by backend id).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct FlowCounters {
    pub packets: u64,
    pub bytes: u64,
    /// New connections (flows that selected a backend).
    pub new_flows: u64,
}
const _: () = assert!(size_of::<FlowCounters>() == 24);

/// Ids per entry of the per-CPU counter arrays (`LB_SVC_STATS`, `LB_BACKEND_STATS`): the
/// kernel allocates a per-CPU array element by element (about 0.75 µs each on our machines), so
/// 65,536 one-id entries took 49 ms to create and as long to free at every load and growth; 1,024
/// blocks of 64 take 2 ms. The datapath indexes entry `id / STATS_BLOCK`, slot
/// `id % STATS_BLOCK`, as cheaply as one id per entry.
pub const STATS_BLOCK: u32 = 64;

/// Entries of a counter array with room for `ids` ids.
#[must_use]
pub const fn stats_blocks(ids: u32) -> u32 {
    ids.div_ceil(STATS_BLOCK)
}

/// One entry of `LB_SVC_STATS` / `LB_BACKEND_STATS`: the counters of ids
/// `entry * STATS_BLOCK .. entry * STATS_BLOCK + STATS_BLOCK`, for one CPU.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FlowCounterBlock {
    pub ids: [FlowCounters; STATS_BLOCK as usize],
}
const _: () = assert!(size_of::<FlowCounterBlock>() == 24 * 64);

impl Default for FlowCounterBlock {
    fn default() -> Self {
        Self { ids: [FlowCounters::default(); STATS_BLOCK as usize] }
    }
}

// ---------------------------------------------------------------------------------------------
// LB_META
// ---------------------------------------------------------------------------------------------

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Meta {
    /// [`LAYOUT_VERSION`] of the agent that created the pinned maps; 0 = never written.
    pub layout_version: u32,
    /// Version (major, minor, patch) of the agent that last loaded the datapath.
    pub agent_version: [u16; 3],
    pub _pad: u16,
}
const _: () = assert!(size_of::<Meta>() == 12);

// ---------------------------------------------------------------------------------------------
// LB_STATS counter indices. Every packet the datapath sees ends in exactly one verdict counter
// (`CNT_VERDICT_*`); drops and passes on unusual paths also count a reason.
// ---------------------------------------------------------------------------------------------

/// Packets seen by any program.
pub const CNT_PACKETS: u32 = 0;
/// Verdict: passed unmodified, not service traffic.
pub const CNT_VERDICT_PASS: u32 = 1;
/// Verdict: forward direction translated (frontend → backend).
pub const CNT_VERDICT_DNAT: u32 = 2;
/// Verdict: reply direction translated (backend → frontend).
pub const CNT_VERDICT_REVNAT: u32 = 3;
/// Verdict: dropped (a `CNT_DROP_*` reason is counted too).
pub const CNT_VERDICT_DROP: u32 = 4;
/// Verdict: answered with a TCP RST or an ICMP port unreachable (no endpoints, point 37).
pub const CNT_VERDICT_REJECT: u32 = 5;
/// New flows that selected a backend.
pub const CNT_NEW_FLOWS: u32 = 6;
/// Forward packets that hit an existing conntrack entry.
pub const CNT_CT_HIT: u32 = 7;
/// Pass reason: neither IPv4 nor IPv6 (another ethertype, VLAN-tagged frames included).
pub const CNT_PASS_NOT_IP: u32 = 8;
/// Pass reason: an IPv4 or IPv6 header that is invalid or truncated (the kernel's IP input drops
/// these).
pub const CNT_PASS_BAD_L3: u32 = 9;
/// Drop reason: packet to a service address whose TCP/UDP header is truncated.
pub const CNT_DROP_BAD_L4: u32 = 10;
/// Drop reason: an IPv4 fragment to a service address whose first fragment was not seen.
pub const CNT_DROP_FRAGMENT: u32 = 11;
/// Drop reason: the service has no endpoints and the packet cannot be rejected.
pub const CNT_DROP_NO_BACKEND: u32 = 12;
/// Drop reason: the selection table pointed at a missing backend (update in progress).
pub const CNT_DROP_BACKEND_MISSING: u32 = 13;
/// A UDP flow's backend was removed: the flow selected a new one (point 57).
pub const CNT_CT_RESELECT: u32 = 14;
/// Drop reason: a packet rewrite helper failed.
pub const CNT_DROP_REWRITE: u32 = 15;
/// Drop reason: conntrack insert failed.
pub const CNT_DROP_CT_INSERT: u32 = 16;
/// Drop reason: traffic policy Local and no endpoint on this node (points 33, 35, 38).
pub const CNT_DROP_NO_LOCAL_BACKEND: u32 = 17;
/// Drop reason: source outside `loadBalancerSourceRanges` (point 48).
pub const CNT_DROP_SOURCE_RANGE: u32 = 18;
/// Drop reason: no free SNAT source port after several tries.
pub const CNT_DROP_SNAT_PORTS: u32 = 19;
/// New flows that were source-NATed (external traffic, policy Cluster).
pub const CNT_SNAT: u32 = 20;
/// New flows from a pod to itself, source-NATed to the hairpin address (point 51).
pub const CNT_HAIRPIN: u32 = 21;
/// New flows that reused a session-affinity backend (points 24-28).
pub const CNT_AFFINITY_HIT: u32 = 22;
/// ICMP errors about a translated flow, translated back.
pub const CNT_ICMP_TRANSLATED: u32 = 23;
/// Non-first fragments translated like their first fragment.
pub const CNT_FRAG_FOLLOWED: u32 = 24;
/// TCP RSTs sent for services without endpoints.
pub const CNT_REJECT_TCP: u32 = 25;
/// ICMP port unreachable sent for services without endpoints.
pub const CNT_REJECT_ICMP: u32 = 26;
/// Socket-level translations (node processes connecting to a service).
pub const CNT_SOCK_TRANSLATED: u32 = 27;
/// Number of counters.
pub const CNT_MAX: u32 = 28;

/// Display names of the counters, indexed by `CNT_*`.
pub const COUNTER_NAMES: [&str; CNT_MAX as usize] = [
    "packets",
    "verdict_pass",
    "verdict_dnat",
    "verdict_revnat",
    "verdict_drop",
    "verdict_reject",
    "new_flows",
    "conntrack_hits",
    "pass_not_ip",
    "pass_bad_l3",
    "drop_bad_l4",
    "drop_fragment",
    "drop_no_backend",
    "drop_backend_missing",
    "conntrack_reselect",
    "drop_rewrite",
    "drop_conntrack_insert",
    "drop_no_local_backend",
    "drop_source_range",
    "drop_snat_ports",
    "snat",
    "hairpin",
    "affinity_hits",
    "icmp_errors_translated",
    "fragments_followed",
    "reject_tcp_rst",
    "reject_icmp",
    "sock_translated",
];

#[cfg(feature = "user")]
mod pod {
    use super::{
        AffinityKey, AffinityValue, AgentStatus, Backend, ClockCalibration, Config, CtClientKey4, CtKey, CtKey4, CtValue,
        FlowCounterBlock, FlowCounters, FragKey, FragValue, MaglevChunk, MaglevKey, MemberKey, Meta, MonitorConfig, MonitorEvent,
        MonitorStats, SelectKey, ServiceKey, ServiceValue, SnatSlot4, SockRevKey, SockRevValue, SourceRangeData, SourceRangeKey,
        SvcLabels, SvcName,
    };
    /// Implements `aya::Pod` for the map types.
    macro_rules! pod {
        ($($t:ty),* $(,)?) => {$(
            // SAFETY: every map type is repr(C), made of integers and byte arrays, with no
            // implicit padding (checked by the size assertions above): every bit pattern is a
            // value.
            unsafe impl aya::Pod for $t {}
        )*};
    }
    pod!(
        ServiceKey,
        ServiceValue,
        Backend,
        SelectKey,
        CtKey,
        CtKey4,
        CtClientKey4,
        CtValue,
        SnatSlot4,
        AffinityKey,
        AffinityValue,
        FlowCounters,
        FlowCounterBlock,
        Meta,
        MaglevKey,
        MaglevChunk,
        MemberKey,
        SourceRangeData,
        SourceRangeKey,
        FragKey,
        FragValue,
        Config,
        SockRevKey,
        SockRevValue,
        SvcName,
        SvcLabels,
        AgentStatus,
        MonitorConfig,
        MonitorEvent,
        MonitorStats,
        ClockCalibration
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counter_names_are_unique_and_complete() {
        for (i, a) in COUNTER_NAMES.iter().enumerate() {
            assert!(!a.is_empty());
            for b in &COUNTER_NAMES[i + 1..] {
                assert_ne!(a, b);
            }
        }
    }

    #[test]
    fn utc_times_are_calendar_dates() {
        let t = utc_time(1_767_225_600 + 3_723);
        assert_eq!((t.year, t.month, t.day, t.hour, t.minute, t.second), (2026, 1, 1, 1, 2, 3));
        let leap = utc_time(951_782_400);
        assert_eq!((leap.year, leap.month, leap.day), (2000, 2, 29));
        assert_eq!(utc_time(0), UtcTime { year: 1970, month: 1, day: 1, hour: 0, minute: 0, second: 0 });
    }

    #[test]
    fn ipv4_conntrack_keys_are_the_mapped_keys_shortened() {
        let k = CtKey {
            src: v4_mapped([10, 244, 1, 7]),
            dst: v4_mapped([10, 96, 0, 1]),
            sport_be: 40000u16.to_be(),
            dport_be: 80u16.to_be(),
            proto: IPPROTO_TCP,
            dir: CT_DIR_REPLY,
            _pad: [0; 2],
        };
        let k4 = CtKey4::from_key(&k).unwrap();
        assert_eq!(k4.src.to_ne_bytes(), [10, 244, 1, 7]);
        assert_eq!(k4.dst.to_ne_bytes(), [10, 96, 0, 1]);
        assert_eq!((k4.sport_be, k4.dport_be, k4.proto, k4.dir), (k.sport_be, k.dport_be, IPPROTO_TCP, CT_DIR_REPLY));
        assert_eq!(k4.to_key(), k);
        let mut v6 = k;
        v6.dst[0] = 0xfd;
        assert_eq!(CtKey4::from_key(&v6), None);
    }

    #[test]
    fn an_ipv4_client_key_lives_in_the_client_table_in_8_bytes_and_every_other_key_elsewhere() {
        let client = v4_mapped([10, 244, 1, 7]);
        let k = CtKey::client(client, 40000u16.to_be(), IPPROTO_TCP);
        let CtTableKey::Client4(c) = k.table_key() else { panic!("an IPv4 client key belongs in the client table") };
        assert_eq!(c.addr.to_ne_bytes(), [10, 244, 1, 7]);
        assert_eq!((c.port_be, c.proto, c._pad), (40000u16.to_be(), IPPROTO_TCP, 0));
        assert_eq!(c.to_key(), k, "the 8-byte key reads back as the client key");
        let forward = CtKey { dst: v4_mapped([10, 96, 0, 1]), dport_be: 80u16.to_be(), dir: CT_DIR_FORWARD, ..k };
        assert_eq!(forward.table_key(), CtTableKey::Flow4(CtKey4::from_key(&forward).unwrap()));
        assert_eq!(CtClientKey4::from_key(&forward), None);
        let mut v6 = k;
        v6.src[0] = 0xfd;
        v6.dst[0] = 0xfd;
        assert_eq!(v6.table_key(), CtTableKey::V6(v6), "an IPv6 client stays in the IPv6 table");
    }

    #[test]
    fn a_client_entry_reads_as_the_forward_and_reply_entries_of_its_flow() {
        let (client, frontend, backend) = (v4_mapped([10, 244, 1, 7]), v4_mapped([10, 96, 0, 1]), v4_mapped([10, 244, 2, 9]));
        let (cport, fport, bport) = (40000u16.to_be(), 80u16.to_be(), 8080u16.to_be());
        let k = CtKey::client(client, cport, IPPROTO_TCP);
        assert_eq!(CtKey4::from_key(&k).map(|k4| k4.to_key()), Some(k), "an IPv4 client's key has its 16-byte form");
        let v = CtValue {
            last_seen_ns: 7,
            nat_addr: backend,
            snat_addr: frontend,
            backend_id: 3,
            svc_id: 4,
            nat_port_be: bport,
            snat_port_be: fport,
            flags: CT_F_CLOSING,
            _pad: 0,
        };
        let [(fk, fv), (rk, rv)] = client_entry_views(&k, &v).unwrap();
        let key =
            |src, sport_be, dst, dport_be, dir| CtKey { src, dst, sport_be, dport_be, proto: IPPROTO_TCP, dir, _pad: [0; 2] };
        assert_eq!(fk, key(client, cport, frontend, fport, CT_DIR_FORWARD));
        assert_eq!(rk, key(backend, bport, client, cport, CT_DIR_REPLY));
        assert_eq!((fv.nat_addr, fv.nat_port_be, fv.snat_addr, fv.flags), (backend, bport, [0; 16], CT_F_CLOSING));
        assert_eq!((rv.nat_addr, rv.nat_port_be, rv.snat_addr, rv.snat_port_be), (frontend, fport, client, cport));
        assert_eq!((fv.backend_id, fv.svc_id, rv.backend_id, rv.svc_id, rv.last_seen_ns), (3, 4, 3, 4, 7));
        // Either view's key leads back to the client's entry, and to its own view.
        assert_eq!(client_key_of(&fk), Some((k, 0)));
        assert_eq!(client_key_of(&rk), Some((k, 1)));
        assert_eq!(client_key_of(&k), None);
        assert_eq!(client_entry_views(&fk, &fv), None, "only a client entry has views");
    }

    #[test]
    fn snat_slots_cover_the_first_ports_of_the_range_per_protocol_and_name_their_reply_key() {
        let min = 61000;
        assert_eq!(snat_slot_index(IPPROTO_TCP, 61000, min), Some(0));
        assert_eq!(snat_slot_index(IPPROTO_UDP, 65000, min), Some(SNAT_SLOT_PORTS + 4000));
        assert_eq!(snat_slot_index(IPPROTO_TCP, 60999, min), None, "below the range");
        assert_eq!(snat_slot_index(IPPROTO_SCTP, 61000, min), None, "no slots for SCTP");
        assert_eq!(snat_slot_index(IPPROTO_TCP, 1024 + 8192, 1024), None, "past the slots of a wide range");
        for (proto, port) in [(IPPROTO_TCP, 61000), (IPPROTO_TCP, 63210), (IPPROTO_UDP, 65000)] {
            let i = snat_slot_index(proto, port, min).unwrap();
            assert!(i < SNAT_SLOTS_MAX);
            assert_eq!(snat_slot_port(i, min), (proto, port));
        }

        let snat_addr = v4_mapped([192, 168, 1, 1]);
        let slot = SnatSlot4 {
            ct: CtValue { last_seen_ns: 5_000, flags: CT_F_SNAT, ..CtValue::default() },
            backend_addr: [10, 0, 1, 5],
            backend_port_be: 8080u16.to_be(),
            flags: 0,
            _pad: 0,
        };
        let i = snat_slot_index(IPPROTO_TCP, 61007, min).unwrap();
        let k = slot.reply_key(i, snat_addr, min);
        assert_eq!(
            (k.src, k.sport_be, k.dst, k.dport_be),
            (v4_mapped([10, 0, 1, 5]), 8080u16.to_be(), snat_addr, 61007u16.to_be())
        );
        assert_eq!((k.proto, k.dir), (IPPROTO_TCP, CT_DIR_REPLY));
        assert_eq!(snat_slot_of(&k, &snat_addr, min), Some(i));
        assert!(snat_slot_holds(&slot, &k));
        assert!(!snat_slot_holds(&slot, &CtKey { sport_be: 9090u16.to_be(), ..k }), "another backend port");
        assert_eq!(snat_slot_of(&CtKey { dst: v4_mapped([192, 168, 1, 2]), ..k }, &snat_addr, min), None);
        assert_eq!(snat_slot_of(&CtKey { dir: CT_DIR_FORWARD, ..k }, &snat_addr, min), None);

        assert!(slot.live(i, 5_000 + CT_TCP_LIFETIME_NS));
        assert!(!slot.live(i, 5_001 + CT_TCP_LIFETIME_NS), "expired: free");
        assert!(!SnatSlot4::default().live(i, 0), "never used: free");
        assert!(!slot.live(i + SNAT_SLOT_PORTS, 5_001 + CT_UDP_LIFETIME_NS), "a UDP slot lives as a UDP flow");
    }

    #[test]
    fn a_flows_slot_is_found_from_its_forward_key_and_holds_its_forward_entry_too() {
        let (min, max) = (61000, 65000);
        let (client, frontend, backend) = ([192, 168, 1, 50], [192, 168, 1, 1], [10, 0, 1, 5]);
        let k = CtKey {
            src: v4_mapped(client),
            dst: v4_mapped(frontend),
            sport_be: 40000u16.to_be(),
            dport_be: 30080u16.to_be(),
            proto: IPPROTO_TCP,
            dir: CT_DIR_FORWARD,
            _pad: [0; 2],
        };
        let h = snat_slot_hash(7, u32::from_ne_bytes(client), k.sport_be, u32::from_ne_bytes(frontend), k.dport_be, IPPROTO_TCP);
        let ports = [0, 1].map(|i| snat_slot_probe_port(h, i, min, max));
        assert!(ports.iter().all(|p| (min..=max).contains(p)));
        assert_eq!(ports[1], if ports[0] == max { min } else { ports[0] + 1 }, "then the next port, wrapping");
        let two = |mut it: core::iter::Peekable<_>| -> [u32; 2] {
            let first = it.next().unwrap();
            let second = it.next().unwrap();
            assert!(it.peek().is_none());
            [first, second]
        };
        let slots = two(snat_slots_of_forward(&k, 7, min, max).peekable());
        assert_eq!(slots, ports.map(|p| snat_slot_index(IPPROTO_TCP, p, min).unwrap()));
        assert_ne!(two(snat_slots_of_forward(&k, 8, min, max).peekable()), slots, "another seed, other ports");
        assert_eq!(snat_slots_of_forward(&CtKey { dir: CT_DIR_REPLY, ..k }, 7, min, max).count(), 0);
        assert_eq!(snat_slot_probe_port(h, 1, 61000, 61000), 61000, "a one-port range");

        let snat_addr = v4_mapped(frontend);
        let mut slot = SnatSlot4 {
            ct: CtValue {
                last_seen_ns: 5,
                nat_addr: k.dst,
                nat_port_be: k.dport_be,
                snat_addr: k.src,
                snat_port_be: k.sport_be,
                backend_id: 3,
                svc_id: 4,
                flags: CT_F_SNAT,
                ..CtValue::default()
            },
            backend_addr: backend,
            backend_port_be: 8080u16.to_be(),
            flags: SNAT_SLOT_F_FORWARD,
            _pad: 0,
        };
        let (fk, fv) = slot.forward_entry(slots[0], snat_addr, min).unwrap();
        assert_eq!(fk, k);
        assert_eq!((fv.nat_addr, fv.nat_port_be), (v4_mapped(backend), 8080u16.to_be()), "to the backend");
        assert_eq!((fv.snat_addr, fv.snat_port_be), (snat_addr, ports[0].to_be()), "from the slot's port");
        assert_eq!((fv.flags, fv.backend_id, fv.svc_id, fv.last_seen_ns), (CT_F_SNAT | CT_F_SNAT_SLOT, 3, 4, 5));
        slot.flags = SNAT_SLOT_F_SHARED;
        assert_eq!(slot.forward_entry(slots[0], snat_addr, min), None, "a slot of an older build: reply entry only");
    }

    #[test]
    fn v4_mapped_layout() {
        let a = v4_mapped([10, 96, 0, 1]);
        assert_eq!(&a[..10], &[0; 10]);
        assert_eq!(&a[10..12], &[0xff, 0xff]);
        assert_eq!(&a[12..], &[10, 96, 0, 1]);
    }
}
