//! Hook-independent service logic: frontend lookup, backend selection (random or Maglev, with
//! session affinity), source ranges, conntrack, SNAT, hairpin, fragments and ICMP errors.
//! Returns what to do with the packet; the entry point performs the rewrite.
//!
//! # Conntrack semantics
//! Each translated flow has a forward entry (client → frontend) and a reply entry
//! (backend → client, or → SNAT address). Entries expire after `CT_*_LIFETIME_NS` without
//! traffic, after `CT_TCP_CLOSING_LIFETIME_NS` once a FIN or RST was seen, and the LRU reclaims
//! the least recently used under pressure (the agent also sweeps expired entries).
//!
//! When a backend is removed from a service:
//! - TCP flows keep going to it, exactly like kube-proxy's conntrack DNAT entries: a pod that is
//!   terminating gracefully can finish its connections, and a pod that is gone simply stops
//!   answering (the client times out or gets a RST from whoever holds the address). New
//!   connections never select it (point 21).
//! - UDP flows select a new backend on their next packet once theirs is no longer a serving
//!   endpoint of *their* ServicePort (point 57: kube-proxy deletes UDP conntrack entries whose
//!   endpoint no longer serves that Service), even while the pod still serves another Service.
//!
//! # Backends on the node's own address (point 63)
//! A hostNetwork endpoint is served by this node's stack. Traffic to it is never source-NATed
//! (kube-proxy masquerades only what leaves the node), and its replies leave the node's stack
//! through an egress (the pod interface towards a local client, the external interface towards
//! an outside one), where `lb_tc_egress` ([`Hook::Egress`]) translates them: that hook runs
//! only the reply stages, never a frontend lookup.

use aya_ebpf::helpers::{bpf_get_prandom_u32, bpf_ktime_get_ns};
use lb_common::{
    AffinityKey, AffinityValue, BACKEND_F_HOST, Backend, CFG_F_HAIRPIN_READY, CFG_F_HAIRPIN6_READY, CFG_F_SNAT_READY,
    CFG_F_SNAT6_READY, CNT_AFFINITY_HIT, CNT_CT_HIT, CNT_CT_RESELECT, CNT_DROP_BACKEND_MISSING, CNT_DROP_BAD_L4,
    CNT_DROP_CT_INSERT, CNT_DROP_FRAGMENT, CNT_DROP_NO_BACKEND, CNT_DROP_NO_LOCAL_BACKEND, CNT_DROP_REWRITE, CNT_DROP_SNAT_PORTS,
    CNT_DROP_SOURCE_RANGE, CNT_FRAG_FOLLOWED, CNT_HAIRPIN, CNT_ICMP_TRANSLATED, CNT_NEW_FLOWS, CNT_PASS_BAD_L3, CNT_PASS_NOT_IP,
    CNT_SNAT, CNT_VERDICT_DNAT, CNT_VERDICT_REVNAT, CT_DIR_FORWARD, CT_DIR_REPLY, CT_F_CLOSING, CT_F_SNAT, FRAG_LIFETIME_NS,
    FragKey, FragValue, IPPROTO_TCP, MAGLEV_CHUNK, MaglevKey, MemberKey, SVC_F_ADDR_MARKER, SVC_F_AFFINITY, SVC_F_DROP_IF_EMPTY,
    SVC_F_EXTERNAL, SVC_F_MAGLEV, SVC_F_SNAT, SVC_F_SOURCE_RANGES, SelectKey, ServiceKey, ServiceValue, SourceRangeData,
    ct_lifetime_ns,
};

use crate::{
    maps::packet,
    maps::{
        LB_AFFINITY, LB_BACKENDS, LB_CONFIG, LB_CONNTRACK, LB_FRAGS, LB_MAGLEV, LB_MEMBERS, LB_SELECT, LB_SERVICES,
        LB_SOURCE_RANGES, count, count_flow, scratch,
    },
    parse::{Packet, Parsed, TCP_FLAG_ACK, TCP_FLAG_FIN, TCP_FLAG_RST, TCP_FLAG_SYN, parse},
};

/// Ports tried for SNAT before the flow is dropped.
const SNAT_TRIES: u32 = 4;

/// Where the program runs; decides which endpoint set external frontends use and whether
/// traffic is source-NATed.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Hook {
    /// Ingress from a pod on this node.
    Pod,
    /// Ingress from outside the node (XDP, or its TC fallback).
    External,
    /// Egress of pod and external interfaces: only replies (and ICMP errors) of translated
    /// flows, the ones the node's own stack sends for a host backend (point 63).
    Egress,
}

/// An address (16-byte format) and port (network byte order) to write.
#[derive(Clone, Copy, Default)]
pub struct Endpoint {
    pub addr: [u8; 16],
    pub port_be: u16,
}

/// An optional rewrite. (Not an `Option<Endpoint>`: these values cross BPF subprogram
/// boundaries through memory, and the undefined payload of a `None` compiles to reads of
/// uninitialised registers, which the verifier rejects. Every field here is always written.)
#[derive(Clone, Copy, Default)]
pub struct Rewrite {
    pub set: bool,
    pub to: Endpoint,
}

impl Rewrite {
    #[inline(always)]
    pub fn to(addr: [u8; 16], port_be: u16) -> Self {
        Self { set: true, to: Endpoint { addr, port_be } }
    }

    #[inline(always)]
    pub fn when(cond: bool, addr: [u8; 16], port_be: u16) -> Self {
        Self { set: cond, to: Endpoint { addr, port_be } }
    }
}

/// A translation: new source and/or destination.
#[derive(Clone, Copy, Default)]
pub struct Nat {
    pub src: Rewrite,
    pub dst: Rewrite,
    /// `CNT_VERDICT_DNAT` or `CNT_VERDICT_REVNAT`.
    pub verdict: u32,
}

/// The translation of an ICMP error about a translated flow, back to what its receiver sent
/// (outer ports are ignored).
#[derive(Clone, Copy, Default)]
pub struct IcmpNat {
    pub outer_src: Rewrite,
    pub outer_dst: Rewrite,
    /// The quoted packet's source and destination.
    pub inner_src: Rewrite,
    pub inner_dst: Rewrite,
}

/// What to do with a packet.
#[derive(Clone, Copy, Default, PartialEq, Eq)]
pub enum Kind {
    /// Not service traffic: pass untouched.
    #[default]
    Pass,
    /// Drop, counting `Action::reason`.
    Drop,
    /// Rewrite (`Action::nat`) and pass on.
    Nat,
    /// The service has no endpoints: answer with a TCP RST or an ICMP port unreachable.
    Reject,
    /// Translate an ICMP error (`Action::icmp`).
    Icmp,
    /// First stage only: continue with [`new_flow`] (the frontend is in the scratch space).
    NewFlow,
    /// First stage only: continue with [`reply`].
    Reply,
    /// First stage only: continue with [`icmp_error`].
    IcmpError,
}

/// A stage's verdict, a plain struct whose fields are always initialised (see [`Rewrite`]).
/// The entry point calls the stages one after the other, not one inside another, which keeps
/// the deepest call chain within the verifier's 512-byte stack budget. The rewrite itself
/// (`Kind::Nat`, `Kind::Icmp`) is left in the scratch space (`Scratch::nat`, `Scratch::icmp`),
/// so verdicts stay small on the stack.
#[derive(Clone, Copy, Default)]
pub struct Action {
    pub kind: Kind,
    /// `CNT_DROP_*` reason for `Kind::Drop`; for `Kind::Pass`, a `CNT_PASS_*` reason or 0.
    pub reason: u32,
}

impl Action {
    #[inline(always)]
    pub fn pass() -> Self {
        Self::default()
    }

    #[inline(always)]
    pub fn drop(reason: u32) -> Self {
        Self { kind: Kind::Drop, reason }
    }

    #[inline(always)]
    pub fn reject() -> Self {
        Self { kind: Kind::Reject, reason: 0 }
    }

    #[inline(always)]
    pub fn next(kind: Kind) -> Self {
        Self { kind, reason: 0 }
    }

    /// A NAT, left in the scratch space.
    #[inline(always)]
    pub fn nat(nat: Nat) -> Self {
        match scratch() {
            Some(sc) => {
                sc.nat = nat;
                Self::next(Kind::Nat)
            }
            None => Self::drop(CNT_DROP_REWRITE),
        }
    }

    /// An ICMP error translation, left in the scratch space.
    #[inline(always)]
    pub fn icmp(icmp: IcmpNat) -> Self {
        match scratch() {
            Some(sc) => {
                sc.icmp = icmp;
                Self::next(Kind::Icmp)
            }
            None => Self::drop(CNT_DROP_REWRITE),
        }
    }
}

#[inline(always)]
fn now_ns() -> u64 {
    // SAFETY: helper without arguments.
    unsafe { bpf_ktime_get_ns() }
}

#[inline(always)]
fn random() -> u32 {
    // SAFETY: helper without arguments.
    unsafe { bpf_get_prandom_u32() }
}

/// Refreshes an entry for a packet of its flow; marks it closing on FIN/RST.
#[inline(always)]
fn touch(ct: *mut lb_common::CtValue, tcp_flags: u8, now: u64) {
    // SAFETY: pointer from a map lookup, valid for this program run. Concurrent updates of the
    // same entry from another CPU can only race on these plain stores, which is harmless.
    unsafe {
        (*ct).last_seen_ns = now;
        if tcp_flags & (TCP_FLAG_FIN | TCP_FLAG_RST) != 0 {
            (*ct).flags |= CT_F_CLOSING;
        }
    }
}

/// Fills a conntrack key in place.
#[inline(always)]
fn set_ct_key(k: &mut lb_common::CtKey, src: [u8; 16], sport_be: u16, dst: [u8; 16], dport_be: u16, proto: u8, dir: u8) {
    k.src = src;
    k.dst = dst;
    k.sport_be = sport_be;
    k.dport_be = dport_be;
    k.proto = proto;
    k.dir = dir;
    k._pad = [0; 2];
}

#[inline(always)]
fn is_service_addr(addr: [u8; 16]) -> bool {
    let marker = ServiceKey { addr, port_be: 0, proto: 0, _pad: 0 };
    // SAFETY: read-only lookup; the value is not used.
    unsafe { LB_SERVICES.get(&marker) }.is_some()
}

/// Parses the packet in `[data, end)` and runs the stages, each a BPF subprogram called from
/// here one after the other (never nested), so that the deepest call chain (entry point + one
/// stage) stays within the verifier's 512-byte stack budget. Returns the verdict — a pass before
/// any lookup carries its `CNT_PASS_*` reason — and the packet description, or `Err(reason)`.
#[inline(always)]
pub fn decide(data: usize, end: usize, hook: Hook) -> Result<(Action, &'static Packet), u32> {
    // The description lives in a per-CPU map, not on the stack (see `maps::LB_PKT`).
    let p = packet().ok_or(CNT_DROP_REWRITE)?;
    match parse(data, end, p) {
        Parsed::NotIp => return Ok((Action { kind: Kind::Pass, reason: CNT_PASS_NOT_IP }, p)),
        Parsed::BadL3 => return Ok((Action { kind: Kind::Pass, reason: CNT_PASS_BAD_L3 }, p)),
        Parsed::Ip => {}
    }
    let action = process(p, hook != Hook::Egress);
    let action = match action.kind {
        Kind::NewFlow => new_flow(p, hook),
        Kind::Reply => reply(p),
        Kind::IcmpError => icmp_error(p),
        _ => action,
    };
    Ok((action, p))
}

/// Decides what to do with a parsed packet: the verdict, or the next stage the entry point
/// must call (`Kind::NewFlow`, `Kind::Reply`, `Kind::IcmpError`). Without `frontends` (the
/// egress hook) a packet is only ever a reply.
#[inline(never)]
pub fn process(p: &mut Packet, frontends: bool) -> Action {
    if p.is_icmp_error {
        return Action::next(Kind::IcmpError);
    }
    let Some(sc) = scratch() else {
        return Action::pass();
    };
    if p.frag_later {
        // Later fragments follow their first fragment's ports.
        sc.frag = FragKey { src: p.src, dst: p.dst, id: p.frag_id, proto: p.proto, _pad: [0; 3] };
        // SAFETY: copied out immediately.
        match unsafe { LB_FRAGS.get(&sc.frag) }.copied() {
            Some(f) if now_ns().wrapping_sub(f.seen_ns) < FRAG_LIFETIME_NS => {
                p.sport_be = f.sport_be;
                p.dport_be = f.dport_be;
                p.has_ports = true;
                count(CNT_FRAG_FOLLOWED);
            }
            _ => {
                return if is_service_addr(p.dst) { Action::drop(CNT_DROP_FRAGMENT) } else { Action::pass() };
            }
        }
    } else if !p.has_ports {
        if p.l4_truncated && is_service_addr(p.dst) {
            return Action::drop(CNT_DROP_BAD_L4);
        }
        return Action::pass();
    } else if p.frag_first {
        sc.frag = FragKey { src: p.src, dst: p.dst, id: p.frag_id, proto: p.proto, _pad: [0; 3] };
        sc.fragv = FragValue { seen_ns: now_ns(), sport_be: p.sport_be, dport_be: p.dport_be, _pad: 0 };
        // Losing this entry only makes later fragments unmatched (dropped if for a service).
        let _ = LB_FRAGS.insert(&sc.frag, &sc.fragv, 0);
    }

    if !frontends {
        return Action::next(Kind::Reply);
    }
    let key = ServiceKey { addr: p.dst, port_be: p.dport_be, proto: p.proto, _pad: 0 };
    // SAFETY: the value is copied out immediately; userspace replaces whole values.
    if let Some(svc) = unsafe { LB_SERVICES.get(&key) } {
        let svc = *svc;
        if svc.flags & SVC_F_ADDR_MARKER == 0 {
            return forward(p, &svc);
        }
    }
    Action::next(Kind::Reply)
}

/// A packet that is no frontend's: the reply of a translated flow, or not ours at all.
#[inline(never)]
pub fn reply(p: &Packet) -> Action {
    let Some(sc) = scratch() else {
        return Action::pass();
    };
    set_ct_key(&mut sc.rkey, p.src, p.sport_be, p.dst, p.dport_be, p.proto, CT_DIR_REPLY);
    let Some(ct) = LB_CONNTRACK.get_ptr_mut(&sc.rkey) else {
        return Action::pass();
    };
    let now = now_ns();
    // SAFETY: pointer from a map lookup, valid for this program run.
    let v = unsafe { *ct };
    if now.wrapping_sub(v.last_seen_ns) > ct_lifetime_ns(p.proto, v.flags) {
        return Action::pass();
    }
    touch(ct, p.tcp_flags, now);
    count_flow(v.svc_id, v.backend_id, p.ip_len, false);
    Action::nat(Nat {
        src: Rewrite::to(v.nat_addr, v.nat_port_be),
        dst: Rewrite::when(v.flags & CT_F_SNAT != 0, v.snat_addr, v.snat_port_be),
        verdict: CNT_VERDICT_REVNAT,
    })
}

/// An ICMP error quoting a packet of a translated flow, on its way back to the client: the
/// quoted packet is what the backend received (client or SNAT address → backend), so it is
/// found through the flow's reply entry and translated back to what the client sent.
#[inline(never)]
pub fn icmp_error(p: &Packet) -> Action {
    if !p.is_icmp_error {
        return Action::pass();
    }
    let inner = p.icmp;
    let Some(sc) = scratch() else {
        return Action::pass();
    };
    // 1. An error on its way back to the client about a packet the backend received (from the
    //    backend itself or a router on the way): the quoted packet went client (or SNAT
    //    address) → backend, so its flow's reply entry is the quote reversed.
    set_ct_key(&mut sc.rkey, inner.dst, inner.dport_be, inner.src, inner.sport_be, inner.proto, CT_DIR_REPLY);
    // SAFETY: copied out immediately.
    if let Some(v) = (unsafe { LB_CONNTRACK.get(&sc.rkey) }).copied() {
        let frontend = v.nat_addr;
        let snat = v.flags & CT_F_SNAT != 0;
        let client = v.snat_addr;
        count(CNT_ICMP_TRANSLATED);
        return Action::icmp(IcmpNat {
            // An error the backend itself sent appears to come from the frontend.
            outer_src: Rewrite::when(p.src == inner.dst, frontend, 0),
            outer_dst: Rewrite::when(snat, client, 0),
            inner_src: Rewrite::when(snat, client, v.snat_port_be),
            inner_dst: Rewrite::to(frontend, v.nat_port_be),
        });
    }
    // 2. An error from the client (or a router before it) about a reply it received: the quoted
    //    packet went frontend → client, so the flow's forward entry is the quote reversed. It
    //    goes to the backend, about what the backend sent.
    set_ct_key(&mut sc.fkey, inner.dst, inner.dport_be, inner.src, inner.sport_be, inner.proto, CT_DIR_FORWARD);
    // SAFETY: copied out immediately.
    if let Some(v) = (unsafe { LB_CONNTRACK.get(&sc.fkey) }).copied() {
        let backend = v.nat_addr;
        let snat = v.flags & CT_F_SNAT != 0;
        count(CNT_ICMP_TRANSLATED);
        return Action::icmp(IcmpNat {
            outer_src: Rewrite::when(snat, v.snat_addr, 0),
            outer_dst: Rewrite::to(backend, 0),
            inner_src: Rewrite::to(backend, v.nat_port_be),
            inner_dst: Rewrite::when(snat, v.snat_addr, v.snat_port_be),
        });
    }
    Action::pass()
}

/// An existing flow's translation, or `Kind::NewFlow` (frontend left in scratch).
#[inline(always)]
fn forward(p: &Packet, svc: &ServiceValue) -> Action {
    // Point 48: loadBalancerSourceRanges.
    if svc.flags & SVC_F_SOURCE_RANGES != 0 {
        let key = aya_ebpf::maps::lpm_trie::Key::new(256, SourceRangeData { frontend: p.dst, source: p.src });
        if LB_SOURCE_RANGES.get(&key).is_none() {
            return Action::drop(CNT_DROP_SOURCE_RANGE);
        }
    }
    let now = now_ns();
    let Some(sc) = scratch() else {
        return Action::drop(CNT_DROP_CT_INSERT);
    };
    set_ct_key(&mut sc.fkey, p.src, p.sport_be, p.dst, p.dport_be, p.proto, CT_DIR_FORWARD);
    let new_syn = p.proto == IPPROTO_TCP && p.tcp_flags & (TCP_FLAG_SYN | TCP_FLAG_ACK) == TCP_FLAG_SYN;
    if let Some(ct) = LB_CONNTRACK.get_ptr_mut(&sc.fkey) {
        // SAFETY: pointer from a map lookup, valid for this program run. Only the fields needed
        // are read (a whole copy would cost 56 bytes of stack).
        let (last_seen, flags, svc_id, backend_id, nat_port_be, snat_port_be) =
            unsafe { ((*ct).last_seen_ns, (*ct).flags, (*ct).svc_id, (*ct).backend_id, (*ct).nat_port_be, (*ct).snat_port_be) };
        // SAFETY: as above.
        let (nat, snat) = unsafe { ((*ct).nat_addr, (*ct).snat_addr) };
        let alive = now.wrapping_sub(last_seen) <= ct_lifetime_ns(p.proto, flags);
        // A SYN on a closing entry is a new connection reusing the 4-tuple.
        let reused = new_syn && flags & CT_F_CLOSING != 0;
        if alive && !reused && svc_id == svc.svc_id {
            // Datagram flows follow endpoint removal (point 57): the backend is kept only while
            // it serves this ServicePort. (0: maps written by an older agent, not yet synced.)
            let keep = p.proto == IPPROTO_TCP || svc.serving_select_id == 0 || {
                let member = MemberKey { select_id: svc.serving_select_id, backend_id };
                // SAFETY: presence check only.
                unsafe { LB_MEMBERS.get(&member) }.is_some()
            };
            // A retransmitted SYN whose reply entry is gone (LRU eviction, a sweep) would never
            // get its SYN-ACK translated: start the connection afresh instead. Only SYNs pay
            // for this lookup; nothing is established yet, so choosing again is harmless.
            let orphan = new_syn && {
                let snat_on = flags & CT_F_SNAT != 0;
                let (peer, peer_port_be) = if snat_on { (snat, snat_port_be) } else { (p.src, p.sport_be) };
                set_ct_key(&mut sc.rkey, nat, nat_port_be, peer, peer_port_be, p.proto, CT_DIR_REPLY);
                LB_CONNTRACK.get_ptr(&sc.rkey).is_none()
            };
            if keep && !orphan {
                touch(ct, p.tcp_flags, now);
                count(CNT_CT_HIT);
                count_flow(svc_id, backend_id, p.ip_len, false);
                return Action::nat(Nat {
                    src: Rewrite::when(flags & CT_F_SNAT != 0, snat, snat_port_be),
                    dst: Rewrite::to(nat, nat_port_be),
                    verdict: CNT_VERDICT_DNAT,
                });
            }
            count(CNT_CT_RESELECT);
        }
    }
    if p.frag_later {
        // A later fragment never starts a flow: its first fragment did or was dropped.
        return Action::drop(CNT_DROP_FRAGMENT);
    }
    sc.svc = *svc;
    Action::next(Kind::NewFlow)
}

/// Picks the endpoint set: point 34, pods on this node reaching an external frontend get the
/// Cluster set whatever the external traffic policy.
#[inline(always)]
fn endpoint_set(svc: &ServiceValue, hook: Hook) -> (u32, u32, bool) {
    if hook == Hook::Pod && svc.flags & SVC_F_EXTERNAL != 0 {
        (svc.cluster_select_id, svc.cluster_slot_count, false)
    } else {
        (svc.select_id, svc.slot_count, svc.flags & SVC_F_DROP_IF_EMPTY != 0)
    }
}

/// A flow hash that is the same on every node for the same 5-tuple (Maglev).
#[inline(always)]
fn flow_hash(p: &Packet) -> u32 {
    let mut h: u32 = 0x9e37_79b9;
    let word = |a: &[u8; 16], i: usize| u32::from_ne_bytes([a[i], a[i + 1], a[i + 2], a[i + 3]]);
    for w in [
        word(&p.src, 0) ^ word(&p.src, 4) ^ word(&p.src, 8),
        word(&p.src, 12),
        word(&p.dst, 0) ^ word(&p.dst, 4) ^ word(&p.dst, 8),
        word(&p.dst, 12),
        (u32::from(p.sport_be) << 16) | u32::from(p.dport_be),
        u32::from(p.proto),
    ] {
        h ^= w;
        h = h.wrapping_mul(0x85eb_ca6b);
        h ^= h >> 13;
        h = h.wrapping_mul(0xc2b2_ae35);
        h ^= h >> 16;
    }
    h
}

/// The backend in `slot` of a selection table.
#[inline(always)]
fn slot_backend(select_id: u32, slot: u32, maglev: bool) -> Option<u32> {
    if maglev {
        let key = MaglevKey { select_id, chunk: slot / MAGLEV_CHUNK };
        let chunk = LB_MAGLEV.get_ptr(&key)?;
        let i = (slot % MAGLEV_CHUNK) as usize;
        // SAFETY: `i < MAGLEV_CHUNK`, inside the chunk the lookup returned.
        let id = unsafe { (*chunk).ids.get(i).copied() }?;
        Some(id)
    } else {
        // SAFETY: copied out immediately.
        unsafe { LB_SELECT.get(&SelectKey { select_id, slot }) }.copied()
    }
}

/// Point 27: a remembered backend is used only while it is in the set.
#[inline(always)]
fn affinity_backend(p: &Packet, svc: &ServiceValue, select_id: u32, now: u64) -> Option<u32> {
    let sc = scratch()?;
    sc.akey = AffinityKey { client: p.src, svc_id: svc.svc_id };
    let a = LB_AFFINITY.get_ptr(&sc.akey)?;
    // SAFETY: map value pointer, valid for this program run.
    let (last_used, backend_id) = unsafe { ((*a).last_used_ns, (*a).backend_id) };
    if now.wrapping_sub(last_used) > u64::from(svc.affinity_timeout_s) * 1_000_000_000 {
        return None;
    }
    // SAFETY: read-only presence check.
    unsafe { LB_MEMBERS.get(&MemberKey { select_id, backend_id }) }?;
    Some(backend_id)
}

/// Selects a backend for a new flow to the frontend [`process`] left in the scratch space, and
/// establishes the flow.
#[inline(never)]
pub fn new_flow(p: &Packet, hook: Hook) -> Action {
    let Some(sc) = scratch() else {
        return Action::drop(CNT_DROP_CT_INSERT);
    };
    // A copy: `establish` takes the scratch space again.
    let svc = &{ sc.svc };
    let now = now_ns();
    let (select_id, slots, drop_if_empty) = endpoint_set(svc, hook);
    if slots == 0 {
        // Points 37, 38: no endpoint anywhere → reject; policy Local without a local one → drop.
        // A RST is never answered (RFC 793), whatever the service.
        if drop_if_empty {
            return Action::drop(CNT_DROP_NO_LOCAL_BACKEND);
        }
        if p.proto == IPPROTO_TCP && p.tcp_flags & TCP_FLAG_RST != 0 {
            return Action::drop(CNT_DROP_NO_BACKEND);
        }
        return Action::reject();
    }
    let affinity = svc.flags & SVC_F_AFFINITY != 0;
    let remembered = if affinity { affinity_backend(p, svc, select_id, now) } else { None };
    let backend_id = match remembered {
        Some(id) => {
            count(CNT_AFFINITY_HIT);
            id
        }
        None => {
            let maglev = svc.flags & SVC_F_MAGLEV != 0;
            let slot = if maglev { flow_hash(p) } else { random() } % slots;
            match slot_backend(select_id, slot, maglev) {
                Some(id) => id,
                None => return Action::drop(CNT_DROP_BACKEND_MISSING),
            }
        }
    };
    // SAFETY: copied out immediately.
    let Some(be) = (unsafe { LB_BACKENDS.get(backend_id) }).copied() else {
        return Action::drop(CNT_DROP_BACKEND_MISSING);
    };
    if affinity {
        // Sliding expiry (point 26): every new connection refreshes the record.
        if let Some(sc) = scratch() {
            sc.akey = AffinityKey { client: p.src, svc_id: svc.svc_id };
            sc.aval = AffinityValue { last_used_ns: now, backend_id, _pad: 0 };
            let _ = LB_AFFINITY.insert(&sc.akey, &sc.aval, 0);
        }
    }
    match establish(p, svc, hook, backend_id, &be, now) {
        Ok(nat) => {
            count(CNT_NEW_FLOWS);
            count_flow(svc.svc_id, backend_id, p.ip_len, true);
            Action::nat(nat)
        }
        Err(reason) => Action::drop(reason),
    }
}

/// Creates both conntrack entries of a new flow, with SNAT where needed.
#[inline(always)]
fn establish(p: &Packet, svc: &ServiceValue, hook: Hook, backend_id: u32, be: &Backend, now: u64) -> Result<Nat, u32> {
    let backend = Endpoint { addr: be.addr, port_be: be.port_be };
    let Some(cfg) = LB_CONFIG.get_ptr(0) else {
        return Err(CNT_DROP_SNAT_PORTS);
    };
    // SAFETY: array element pointer, valid for this program run; only read.
    let cfg = unsafe { &*cfg };
    // External traffic to a policy-Cluster frontend, and ClusterIP traffic from outside, is
    // masqueraded (points 31, 32); a pod reaching itself is source-NATed to the hairpin address
    // so its own reply comes back through the node (point 51). (Plain values, not Options: see
    // `Rewrite`.)
    let mut snat = false;
    let mut snat_addr = [0u8; 16];
    let (snat_ready, hairpin_ready) = if p.is_v6 {
        (cfg.flags & CFG_F_SNAT6_READY != 0, cfg.flags & CFG_F_HAIRPIN6_READY != 0)
    } else {
        (cfg.flags & CFG_F_SNAT_READY != 0, cfg.flags & CFG_F_HAIRPIN_READY != 0)
    };
    // A backend on the node's own address (point 63) is never source-NATed: the node's stack
    // answers it, and `Hook::Egress` translates the reply on its way out.
    let host_backend = be.flags & BACKEND_F_HOST != 0;
    if hook == Hook::External && !host_backend && (svc.flags & SVC_F_SNAT != 0 || svc.flags & SVC_F_EXTERNAL == 0) {
        if snat_ready {
            count(CNT_SNAT);
            snat = true;
            snat_addr = if p.is_v6 { cfg.snat6_addr } else { cfg.snat_addr };
        }
    } else if hook == Hook::Pod && backend.addr == p.src && hairpin_ready {
        count(CNT_HAIRPIN);
        snat = true;
        snat_addr = if p.is_v6 { cfg.hairpin6_addr } else { cfg.hairpin_addr };
    }

    let Some(sc) = scratch() else {
        return Err(CNT_DROP_CT_INSERT);
    };
    // The reply entry: backend → client (or → the SNAT address), translated back to
    // frontend → client.
    let rv = &mut sc.rval;
    rv.last_seen_ns = now;
    rv.nat_addr = p.dst;
    rv.snat_addr = p.src;
    rv.backend_id = backend_id;
    rv.svc_id = svc.svc_id;
    rv.nat_port_be = p.dport_be;
    rv.snat_port_be = p.sport_be;
    rv.flags = 0;
    rv._pad = 0;
    let mut snat_port_be = 0u16;
    if !snat {
        set_ct_key(&mut sc.rkey, backend.addr, backend.port_be, p.src, p.sport_be, p.proto, CT_DIR_REPLY);
        LB_CONNTRACK.insert(&sc.rkey, &sc.rval, 0).map_err(|_| CNT_DROP_CT_INSERT)?;
    } else {
        sc.rval.flags = CT_F_SNAT;
        // External SNAT draws ports from the configured range, which the node's own sockets do
        // not use; the hairpin address is ours alone, so the client's port is kept when free.
        // BPF_NOEXIST makes the reply entry the port's reservation: two flows never share a
        // translated 5-tuple.
        let (min, max) = (cfg.snat_port_min, cfg.snat_port_max);
        let span = u32::from(max.saturating_sub(min)) + 1;
        let first = if hook == Hook::Pod { p.sport_be } else { ((u32::from(min) + random() % span) as u16).to_be() };
        set_ct_key(&mut sc.rkey, backend.addr, backend.port_be, snat_addr, first, p.proto, CT_DIR_REPLY);
        let mut found = false;
        let mut i = 0;
        while i < SNAT_TRIES {
            if LB_CONNTRACK.insert(&sc.rkey, &sc.rval, u64::from(aya_ebpf::bindings::BPF_NOEXIST)).is_ok() {
                found = true;
                break;
            }
            sc.rkey.dport_be = ((u32::from(min) + random() % span) as u16).to_be();
            i += 1;
        }
        if !found {
            return Err(CNT_DROP_SNAT_PORTS);
        }
        snat_port_be = sc.rkey.dport_be;
    }
    // The forward entry: client → frontend, translated to (SNAT address →) backend.
    let fv = &mut sc.fval;
    fv.last_seen_ns = now;
    fv.nat_addr = be.addr;
    fv.snat_addr = snat_addr;
    fv.backend_id = backend_id;
    fv.svc_id = svc.svc_id;
    fv.nat_port_be = be.port_be;
    fv.snat_port_be = snat_port_be;
    fv.flags = if snat { CT_F_SNAT } else { 0 };
    fv._pad = 0;
    set_ct_key(&mut sc.fkey, p.src, p.sport_be, p.dst, p.dport_be, p.proto, CT_DIR_FORWARD);
    LB_CONNTRACK.insert(&sc.fkey, &sc.fval, 0).map_err(|_| CNT_DROP_CT_INSERT)?;
    Ok(Nat {
        src: Rewrite::when(snat, snat_addr, snat_port_be),
        dst: Rewrite::to(backend.addr, backend.port_be),
        verdict: CNT_VERDICT_DNAT,
    })
}
