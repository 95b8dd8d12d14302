//! Conntrack: a translated flow has one entry or two (see `lb_common::CtKey`), in the tables of
//! its family: IPv4 one-entry flows in `LB_CT4_CLIENT` (8-byte client keys), other IPv4 flows in
//! `LB_CONNTRACK4` (16-byte keys), IPv6 flows in `LB_CONNTRACK` (40-byte keys).
//! - A flow without source NAT has one entry for both directions, keyed by its client's address
//!   and port alone (`CT_DIR_CLIENT`; it names the frontend and the backend, which a packet must
//!   match): a new flow costs one LRU insert, the larger part of its cost.
//! - A source-NATed flow, or one whose client address and port already have a live entry for
//!   another frontend, has a forward entry (client → frontend, as the datapath first saw it)
//!   and a reply entry (backend → client, or → the SNAT address). Entries written by older
//!   builds are of this kind too: both layouts are looked up.
//!
//! The stages build every flow key in the 40-byte form ([`CtKey`]); [`entry`], [`insert`] and
//! [`remove`] shorten an IPv4 one at the map. Client keys are built at the map by
//! [`client_entry`] and [`client_insert`] (an IPv4 one straight from the address). An entry
//! lives `lb_common::ct_lifetime_ns` after its flow's last packet (the agent sweeps idle
//! entries; the LRU reclaims the least recently used under pressure).
//!
//! When a backend leaves its Service:
//! - TCP flows keep going to it, as kube-proxy's conntrack DNAT entries do: a terminating pod can
//!   finish its connections, a pod that is gone stops answering. New connections never select
//!   it (point 21). The forward lookup comes first, before the frontend's: an established flow
//!   needs no other lookup, and keeps its translation even if its frontend changes or goes (as
//!   conntrack keeps established connections whatever the rules say now).
//! - A UDP flow keeps its backend only while the backend serves *its* ServicePort (point 57:
//!   kube-proxy deletes UDP conntrack entries whose endpoint no longer serves that Service): its
//!   packets look the frontend up too, and select anew when the backend left its serving set.

use core::mem::MaybeUninit;

use aya_ebpf::{bindings::BPF_NOEXIST, helpers::bpf_get_prandom_u32};
use lb_common::{
    BACKEND_F_HOST, CFG_F_HAIRPIN_READY, CFG_F_HAIRPIN6_READY, CFG_F_SNAT_READY, CFG_F_SNAT6_READY, CNT_CT_HIT, CNT_CT_RESELECT,
    CNT_DROP_CT_INSERT, CNT_DROP_SNAT_PORTS, CNT_HAIRPIN, CNT_SNAT, CNT_VERDICT_DNAT, CNT_VERDICT_REVNAT, CT_DIR_CLIENT,
    CT_DIR_FORWARD, CT_DIR_REPLY, CT_F_CLOSING, CT_F_SNAT, CT_F_SNAT_SLOT, CT_REFRESH_NS, CtClientKey4, CtKey, CtKey4, CtValue,
    IPPROTO_TCP, MemberKey, SVC_F_EXTERNAL, SVC_F_SNAT, ct_lifetime_ns,
};

use crate::{
    clock::age,
    counters::{count, count_flow},
    hook::Hook,
    maps::{LB_CONFIG, LB_CONNTRACK, LB_CONNTRACK4, LB_CT4_CLIENT, LB_MEMBERS, LB_SERVICES},
    nat::{Nat, copy_addr},
    parse::{Packet, TCP_FLAG_ACK, TCP_FLAG_FIN, TCP_FLAG_RST, TCP_FLAG_SYN},
    scratch::{Flow, Keys},
    service::{local_marked, service_key},
    snat,
};

/// The address of no SNAT (a 4-aligned source for `copy_addr`).
#[repr(C, align(4))]
struct Aligned([u8; 16]);
static ZERO_ADDR: Aligned = Aligned([0; 16]);

#[inline(always)]
pub fn random() -> u32 {
    // SAFETY: helper without arguments.
    unsafe { bpf_get_prandom_u32() }
}

/// Fills a conntrack key in place.
///
/// # Safety
/// `src` and `dst` must be 4-aligned (see `nat::copy_addr`): the packet description's, a map
/// value's or the scratch space's addresses.
#[inline(always)]
pub unsafe fn set_key(k: &mut CtKey, src: &[u8; 16], sport_be: u16, dst: &[u8; 16], dport_be: u16, proto: u8, dir: u8) {
    // SAFETY: `CtKey` is 8-aligned with its addresses at 0 and 16; the sources by the caller.
    unsafe {
        copy_addr(&mut k.src, src);
        copy_addr(&mut k.dst, dst);
    }
    let tail = ports_word(sport_be, dport_be, proto, dir);
    // SAFETY: `CtKey` is 8-aligned and its last 8 bytes (from `sport_be`, asserted below) are
    // plain integers.
    unsafe { (k as *mut CtKey).cast::<u64>().add(4).write(tail) };
}

/// The last 8 bytes of a conntrack key (`CtKey` and `CtKey4` alike): ports, protocol, direction
/// and zero padding, as one little-endian word (see `key4` on why whole words).
#[inline(always)]
fn ports_word(sport_be: u16, dport_be: u16, proto: u8, dir: u8) -> u64 {
    u64::from(sport_be) | u64::from(dport_be) << 16 | u64::from(proto) << 32 | u64::from(dir) << 40
}

// The word layouts `set_key` and `set_tail` write.
const _: () = assert!(core::mem::offset_of!(CtKey, sport_be) == 32 && core::mem::offset_of!(CtKey, _pad) == 38);
const _: () = assert!(
    core::mem::offset_of!(CtValue, backend_id) == 40
        && core::mem::offset_of!(CtValue, svc_id) == 44
        && core::mem::offset_of!(CtValue, nat_port_be) == 48
        && core::mem::offset_of!(CtValue, snat_port_be) == 50
        && core::mem::offset_of!(CtValue, flags) == 52
        && size_of::<CtValue>() == 56
        && align_of::<CtValue>() == 8
);

/// Writes the ids, ports and flags of a conntrack value as two 64-bit words (the kernel copies
/// a new entry's value in 8-byte moves right after: see `key4`).
#[inline(always)]
fn set_tail(v: &mut CtValue, backend_id: u32, svc_id: u32, nat_port_be: u16, snat_port_be: u16, flags: u16) {
    let ids = u64::from(backend_id) | u64::from(svc_id) << 32;
    let rest = u64::from(nat_port_be) | u64::from(snat_port_be) << 16 | u64::from(flags) << 32;
    let w = (v as *mut CtValue).cast::<u64>();
    // SAFETY: `CtValue` is 8-aligned; bytes 40..56 are these fields and `_pad` (asserted above).
    unsafe {
        w.add(5).write(ids);
        w.add(6).write(rest);
    }
}

// `key4` builds its words for a little-endian target (bpfel).
const _: () = assert!(cfg!(target_endian = "little"));

/// The IPv4 form of `k`, whose addresses are IPv4-mapped: the last word of each address.
///
/// Written as two 64-bit words, never field by field: the kernel hashes the key (jhash2, word by
/// word) right after these stores, and copies it in 8-byte moves when it inserts it, while the
/// stores still wait in the CPU's store buffer; a load that spans several narrower pending stores
/// cannot be forwarded from it (it waits until they reach the cache). Field stores cost a
/// conntrack hit 3-5 ns on Intel in B1.
#[inline(always)]
fn key4(k: &CtKey) -> CtKey4 {
    // SAFETY: `CtKey` is 8-aligned with its addresses at 0 and 16.
    let (src, dst) = unsafe { (v4_word(&k.src), v4_word(&k.dst)) };
    // Little-endian words (bpfel): the lower-addressed field in the low bits.
    let addrs = u64::from(src) | u64::from(dst) << 32;
    let tail = ports_word(k.sport_be, k.dport_be, k.proto, k.dir);
    let mut key = MaybeUninit::<CtKey4>::uninit();
    let w = key.as_mut_ptr().cast::<u64>();
    // SAFETY: `CtKey4` is 16 bytes, 8-aligned, of plain integers (any bits are a valid value);
    // the two word writes cover it, `_pad` with zeros.
    unsafe {
        w.write(addrs);
        w.add(1).write(tail);
        key.assume_init()
    }
}

/// The 8-byte key of IPv4 client `addr` (the native word of its wire bytes):`port_be`, written
/// as one 64-bit word (see `key4`).
#[inline(always)]
fn client_key4(addr: u32, port_be: u16, proto: u8) -> CtClientKey4 {
    // Little-endian (bpfel): `addr` in bytes 0..4, the port in 4..6, the protocol in 6, `_pad` 0.
    let word = u64::from(addr) | u64::from(port_be) << 32 | u64::from(proto) << 48;
    let mut key = MaybeUninit::<CtClientKey4>::uninit();
    // SAFETY: `CtClientKey4` is 8 bytes, 8-aligned, of plain integers; the one word covers it.
    unsafe {
        key.as_mut_ptr().cast::<u64>().write(word);
        key.assume_init()
    }
}

/// The IPv4 address in the last word of 4-aligned IPv4-mapped address `addr`.
///
/// # Safety
/// `addr` must be 4-aligned (see `copy_addr`).
#[inline(always)]
pub unsafe fn v4_word(addr: &[u8; 16]) -> u32 {
    // SAFETY: in bounds; aligned by the caller's promise.
    unsafe { addr.as_ptr().cast::<u32>().add(3).read() }
}

/// The entry of flow key `k` in its family's table (`v6`: the packet is IPv6).
#[inline(always)]
pub fn entry(k: &CtKey, v6: bool) -> Option<*mut CtValue> {
    if v6 { LB_CONNTRACK.get_ptr_mut(k) } else { LB_CONNTRACK4.get_ptr_mut(&key4(k)) }
}

/// Writes the entry of `k` (`flags`: `BPF_NOEXIST` or 0); false when the map refuses it.
#[inline(always)]
pub fn insert(k: &CtKey, v: &CtValue, flags: u64, v6: bool) -> bool {
    if v6 { LB_CONNTRACK.insert(k, v, flags).is_ok() } else { LB_CONNTRACK4.insert(&key4(k), v, flags).is_ok() }
}

#[inline(always)]
fn remove(k: &CtKey, v6: bool) {
    let _ = if v6 { LB_CONNTRACK.remove(k) } else { LB_CONNTRACK4.remove(&key4(k)) };
}

/// A packet of its flow: marks the entry closing on FIN/RST, and refreshes its time when it is
/// older than `CT_REFRESH_NS` (not on every packet: see `lb_common::CT_REFRESH_NS`).
#[inline(always)]
fn touch(ct: *mut CtValue, tcp_flags: u8, now: u64) {
    // SAFETY: pointer from a map lookup, valid for this program run. Another CPU may update the
    // same entry concurrently; these plain stores can only race with each other, harmlessly.
    unsafe {
        if tcp_flags & (TCP_FLAG_FIN | TCP_FLAG_RST) != 0 && (*ct).flags & CT_F_CLOSING == 0 {
            (*ct).flags |= CT_F_CLOSING;
            (*ct).last_seen_ns = now;
        } else if age(now, (*ct).last_seen_ns) > CT_REFRESH_NS {
            (*ct).last_seen_ns = now;
        }
    }
}

/// Whether two 4-aligned addresses are equal (up to four word compares, the last word first:
/// the one two IPv4-mapped addresses differ in, and the host part of IPv6 ones, so unequal
/// addresses are told apart by one compare).
///
/// # Safety
/// `a` and `b` must be 4-aligned (see `copy_addr`).
#[inline(always)]
pub unsafe fn same_addr(a: &[u8; 16], b: &[u8; 16]) -> bool {
    let (x, y) = (a.as_ptr().cast::<u32>(), b.as_ptr().cast::<u32>());
    // SAFETY: in bounds; aligned by the caller's promise.
    unsafe {
        x.add(3).read() == y.add(3).read()
            && x.read() == y.read()
            && x.add(1).read() == y.add(1).read()
            && x.add(2).read() == y.add(2).read()
    }
}

/// The `CT_DIR_CLIENT` entry of client `addr`:`port_be` (an IPv6 key built in `ck`).
///
/// # Safety
/// `addr` must be 4-aligned (see `copy_addr`).
#[inline(always)]
pub unsafe fn client_entry(ck: &mut CtKey, addr: &[u8; 16], port_be: u16, proto: u8, v6: bool) -> Option<*mut CtValue> {
    if !v6 {
        // IPv4: the 8-byte key straight from the address (no 40-byte key first).
        // SAFETY: 4-aligned by the caller's promise.
        return LB_CT4_CLIENT.get_ptr_mut(&client_key4(unsafe { v4_word(addr) }, port_be, proto));
    }
    // SAFETY: 4-aligned by the caller's promise.
    unsafe { set_key(ck, addr, port_be, addr, port_be, proto, CT_DIR_CLIENT) };
    LB_CONNTRACK.get_ptr_mut(ck)
}

/// Writes `v` as the `CT_DIR_CLIENT` entry of client `addr`:`port_be` (`flags`: `BPF_NOEXIST`
/// or 0); false when the map refuses it.
///
/// # Safety
/// `addr` must be 4-aligned (see `copy_addr`).
#[inline(always)]
unsafe fn client_insert(ck: &mut CtKey, addr: &[u8; 16], port_be: u16, proto: u8, v6: bool, v: &CtValue, flags: u64) -> bool {
    if !v6 {
        // SAFETY: 4-aligned by the caller's promise.
        return LB_CT4_CLIENT.insert(&client_key4(unsafe { v4_word(addr) }, port_be, proto), v, flags).is_ok();
    }
    // SAFETY: 4-aligned by the caller's promise.
    unsafe { set_key(ck, addr, port_be, addr, port_be, proto, CT_DIR_CLIENT) };
    LB_CONNTRACK.insert(ck, v, flags).is_ok()
}

/// What the client entry of a packet to a frontend says.
enum ClientEntry {
    /// The one-entry flow of the packet: its client's entry names the packet's destination as
    /// the frontend.
    Flow(*mut CtValue),
    /// The client's address and port have an entry for another frontend.
    Other,
    /// No entry.
    None,
}

/// The client entry of packet `p` to a frontend.
#[inline(always)]
fn client_flow_to(p: &Packet, sc: &mut Keys) -> ClientEntry {
    // SAFETY: the packet description's addresses are 4-aligned.
    let Some(ct) = (unsafe { client_entry(&mut sc.ckey, &p.src, p.sport_be, p.proto, p.is_v6) }) else {
        return ClientEntry::None;
    };
    // SAFETY: pointer from a map lookup, valid for this program run.
    let v = unsafe { &*ct };
    // SAFETY: a map value's and the packet description's addresses (4-aligned).
    let named = v.snat_port_be == p.dport_be && unsafe { same_addr(&v.snat_addr, &p.dst) };
    if named { ClientEntry::Flow(ct) } else { ClientEntry::Other }
}

/// The one-entry flow of reply `p` (backend → client): its client's entry, when it names `p`'s
/// source as the backend.
#[inline(always)]
fn client_flow_from(p: &Packet, sc: &mut Keys) -> Option<*mut CtValue> {
    // SAFETY: as in `client_flow_to`.
    let ct = unsafe { client_entry(&mut sc.ckey, &p.dst, p.dport_be, p.proto, p.is_v6) }?;
    // SAFETY: as in `client_flow_to`.
    let v = unsafe { &*ct };
    // SAFETY: as in `client_flow_to`.
    let named = v.nat_port_be == p.sport_be && unsafe { same_addr(&v.nat_addr, &p.src) };
    named.then_some(ct)
}

/// Writes the translation of a packet of an established flow to a frontend into `out`; false
/// when there is none (no entry, an expired or reused one, or a UDP flow whose backend left its
/// ServicePort: select anew). From pods the one-entry layout is looked up first (flows without
/// SNAT); from outside the SNAT port slots of the flow's hash (IPv4, see `snat`), then the forward
/// entry (under the default policy Cluster, external flows are source-NATed).
///
/// From outside, a packet to a frontend of policy Local (marked in `LB_LOCAL_MARKS`, see
/// `lb_common::local_mark_slot`) looks its client's entry up first: its flow has no source NAT.
/// Any other looks at its slots first. A TCP SYN without a flow there (or, without slots, without
/// a forward entry) looks no further: its flow, if any, is a one-entry flow (a backend on the
/// node's address), and `establish` finds that entry when it writes the client key (a
/// retransmitted SYN then selects again, as below), or a source-NATed flow that found no free
/// slot, which starts afresh. (What the slots cost the flows without source NAT of unmarked
/// frontends: a packet that is no SYN reads its two slots before its own entries.)
///
/// `from_backend`: the address filter says the client may be a backend. A TCP SYN from a pod
/// whose client entry is missing skips the forward-entry lookup when the client is no backend:
/// a pod's two-entry flows are hairpin flows (the client is the backend) and flows whose client
/// port has an entry for another frontend (then present), so there is none to find. (What this
/// gives up: a SYN retransmitted across an upgrade from a build that wrote two entries per flow,
/// or after the other frontend's entry of a shared client port expired, starts its flow afresh.)
#[inline(always)]
pub fn forward(p: &mut Packet, sc: &mut Keys, out: &mut Nat, hook: Hook, from_backend: bool, now: u64) -> bool {
    let v6 = p.is_v6;
    let tcp = p.proto == IPPROTO_TCP;
    let new_syn = tcp && p.tcp_flags & (TCP_FLAG_SYN | TCP_FLAG_ACK) == TCP_FLAG_SYN;
    let found = if hook == Hook::External {
        // External IPv4 flows with source NAT are in the slots of their ports (see `snat`); a
        // SYN finding no flow there looks no further (a retransmitted SYN of a flow in the hash
        // table, which found no free slot, starts its flow afresh). Flows to a frontend of
        // policy Local (marked) have no source NAT: their client's entry is looked at first.
        match LB_CONFIG.get(0) {
            Some(cfg) if !v6 && cfg.flags & CFG_F_SNAT_READY != 0 => {
                let client = if local_marked(p) { client_flow_to(p, sc) } else { ClientEntry::None };
                if let ClientEntry::Flow(ct) = client {
                    Some((ct, Hit::Client))
                } else {
                    // SAFETY: the packet description's addresses are 4-aligned.
                    let probe = unsafe {
                        snat::Probe::of((&p.src, p.sport_be), (&p.dst, p.dport_be), p.proto, cfg.snat_port_min, cfg.snat_port_max)
                    };
                    match probe.find(new_syn, now) {
                        // SAFETY: `s` from a lookup of this run; `ct` is its first field.
                        Some((s, port_be)) => Some((unsafe { &raw mut (*s).ct }, Hit::Slot(s, port_be))),
                        None if new_syn => None,
                        // The forward entry: of a source-NATed flow that found no free slot, or
                        // of an older build.
                        // (The mark read again rather than kept: the stack of this frame is
                        // near its limit.)
                        None if local_marked(p) => entry(p.flow_key(CT_DIR_FORWARD), v6).map(|ct| (ct, Hit::Entry)),
                        // Unmarked, a flow in neither slot mostly has no source NAT all the same
                        // (a backend on the node's address): its client's entry first.
                        None => match client_flow_to(p, sc) {
                            ClientEntry::Flow(ct) => Some((ct, Hit::Client)),
                            _ => entry(p.flow_key(CT_DIR_FORWARD), v6).map(|ct| (ct, Hit::Entry)),
                        },
                    }
                }
            }
            _ => match entry(p.flow_key(CT_DIR_FORWARD), v6) {
                Some(ct) => Some((ct, Hit::Entry)),
                None if new_syn => None,
                None => match client_flow_to(p, sc) {
                    ClientEntry::Flow(ct) => Some((ct, Hit::Client)),
                    _ => None,
                },
            },
        }
    } else {
        match client_flow_to(p, sc) {
            ClientEntry::Flow(ct) => Some((ct, Hit::Client)),
            ClientEntry::None if new_syn && !from_backend => None,
            _ => entry(p.flow_key(CT_DIR_FORWARD), v6).map(|ct| (ct, Hit::Entry)),
        }
    };
    let Some((ct, hit)) = found else {
        return false;
    };
    // SAFETY: pointer from a map lookup, valid for this program run.
    let (last_seen, flags, svc_id, backend_id) = unsafe { ((*ct).last_seen_ns, (*ct).flags, (*ct).svc_id, (*ct).backend_id) };
    // A SYN on a closing entry is a new connection reusing the 4-tuple.
    if age(now, last_seen) > ct_lifetime_ns(p.proto, flags) || new_syn && flags & CT_F_CLOSING != 0 {
        return false;
    }
    if !tcp && !still_serving(p, svc_id, backend_id) {
        count(CNT_CT_RESELECT);
        return false;
    }
    // SAFETY: as above; the entry stays valid for this run.
    let v = unsafe { &*ct };
    // A one-entry flow has no source NAT (its `snat_*` is the frontend).
    let snat_on = flags & CT_F_SNAT != 0;
    // A retransmitted SYN of a two-entry flow whose reply entry is gone (LRU eviction, a sweep)
    // would never get its SYN-ACK translated: start the connection afresh instead. Only SYNs pay
    // for this lookup; nothing is established yet, so choosing again is harmless. (A flow in a
    // slot has its two entries in one place.)
    if new_syn && matches!(hit, Hit::Entry) {
        let held = if flags & CT_F_SNAT_SLOT != 0 {
            let port_min = LB_CONFIG.get(0).map_or(0, |c| c.snat_port_min);
            // SAFETY: `ct` from the lookup above; the packet description's address (4-aligned).
            unsafe { snat::reply_held(ct, &p.src, p.sport_be, p.proto, port_min, now) }
        } else {
            let (peer, peer_port_be) = if snat_on { (&v.snat_addr, v.snat_port_be) } else { (&p.src, p.sport_be) };
            // SAFETY: addresses of a map value and of the packet description (4-aligned).
            unsafe { set_key(&mut sc.rkey, &v.nat_addr, v.nat_port_be, peer, peer_port_be, p.proto, CT_DIR_REPLY) };
            entry(&sc.rkey, v6).is_some()
        };
        if !held {
            count(CNT_CT_RESELECT);
            return false;
        }
    }
    touch(ct, p.tcp_flags, now);
    count(CNT_CT_HIT);
    count_flow(svc_id, backend_id, p.ip_len, false);
    match hit {
        Hit::Slot(s, port_be) => {
            let Some(cfg) = LB_CONFIG.get(0) else { return false };
            // SAFETY: `s` from a lookup of this run; a map value's and the packet description's
            // addresses (4-aligned).
            unsafe { snat::forward_nat(out, s, port_be, &cfg.snat_addr, &p.dst) }
        }
        // SAFETY: a map value's addresses (`CtValue`: 8-aligned, addresses at 8 and 24).
        _ => unsafe { out.fill((snat_on, &v.snat_addr, v.snat_port_be), (true, &v.nat_addr, v.nat_port_be), CNT_VERDICT_DNAT) },
    }
    true
}

/// Where `forward` found a flow.
enum Hit {
    /// Its forward entry in the hash table.
    Entry,
    /// Its client's one entry.
    Client,
    /// The slot of its SNAT port (this port, network byte order).
    Slot(*const lb_common::SnatSlot4, u16),
}

/// Point 57: the backend of a datagram flow still serves the flow's ServicePort.
#[inline(always)]
fn still_serving(p: &Packet, svc_id: u32, backend_id: u32) -> bool {
    let key = service_key(p.addr_words().1, p.dport_be, p.proto);
    // SAFETY: copied out immediately.
    let Some(svc) = (unsafe { LB_SERVICES.get(&key) }).copied() else {
        return false;
    };
    if svc.svc_id != svc_id {
        return false;
    }
    // 0: maps written by an older agent, not yet synced.
    svc.serving_select_id == 0 || {
        // SAFETY: presence check only.
        unsafe { LB_MEMBERS.get(&MemberKey { select_id: svc.serving_select_id, backend_id }) }.is_some()
    }
}

/// Writes the reverse translation of a reply (backend → client) of a translated flow into `out`;
/// false when there is none. Both layouts are looked up, a reply to the SNAT or hairpin address
/// (of a source-NATed flow) first in the reply entries, any other first in the client entries.
#[inline(always)]
pub fn reply(p: &mut Packet, sc: &mut Keys, out: &mut Nat, now: u64) -> bool {
    let v6 = p.is_v6;
    let found = if let Some(to_snat) = to_snat_addr(p) {
        // SAFETY: the packet description's address (4-aligned).
        let slot = to_snat.port_min.and_then(|min| unsafe { snat::reply_entry(&p.src, p.sport_be, p.dport_be, p.proto, min) });
        match slot.or_else(|| entry(p.flow_key(CT_DIR_REPLY), v6)) {
            Some(ct) => Some((ct, false)),
            None => client_flow_from(p, sc).map(|ct| (ct, true)),
        }
    } else {
        match client_flow_from(p, sc) {
            Some(ct) => Some((ct, true)),
            None => entry(p.flow_key(CT_DIR_REPLY), v6).map(|ct| (ct, false)),
        }
    };
    let Some((ct, one_entry)) = found else {
        return false;
    };
    // SAFETY: pointer from a map lookup, valid for this program run.
    let v = unsafe { &*ct };
    if age(now, v.last_seen_ns) > ct_lifetime_ns(p.proto, v.flags) {
        return false;
    }
    // SAFETY: a map value's addresses (see `forward`).
    unsafe {
        if one_entry {
            // The frontend (`snat_*` of a one-entry flow) becomes the source again.
            out.fill((true, &v.snat_addr, v.snat_port_be), (false, &v.nat_addr, 0), CNT_VERDICT_REVNAT);
        } else {
            let snat_on = v.flags & CT_F_SNAT != 0;
            out.fill((true, &v.nat_addr, v.nat_port_be), (snat_on, &v.snat_addr, v.snat_port_be), CNT_VERDICT_REVNAT);
        }
    }
    count_flow(v.svc_id, v.backend_id, p.ip_len, false);
    touch(ct, p.tcp_flags, now);
    true
}

/// A packet to the node's SNAT or hairpin address of its family.
struct ToSnat {
    /// To the IPv4 SNAT address: the start of the SNAT port range, whose ports have slots.
    port_min: Option<u16>,
}

/// Whether `p` goes to the node's SNAT or hairpin address of its family.
#[inline(always)]
fn to_snat_addr(p: &Packet) -> Option<ToSnat> {
    let cfg = LB_CONFIG.get(0)?;
    let (snat, hairpin) = if p.is_v6 { (&cfg.snat6_addr, &cfg.hairpin6_addr) } else { (&cfg.snat_addr, &cfg.hairpin_addr) };
    // SAFETY: `Config`'s addresses sit at 4-aligned offsets of a map value; the packet
    // description's are 4-aligned.
    unsafe {
        if same_addr(snat, &p.dst) {
            Some(ToSnat { port_min: (!p.is_v6).then_some(cfg.snat_port_min) })
        } else if same_addr(hairpin, &p.dst) {
            Some(ToSnat { port_min: None })
        } else {
            None
        }
    }
}

/// Creates the conntrack entries of a new flow to `flow.be`, with SNAT where the traffic needs
/// it, and writes its translation to `flow.nat`: one entry for a flow without SNAT whose client
/// has no live entry for another frontend, else two, of which either both are written or neither
/// (a reply entry whose forward entry cannot be written is deleted again). `Err` is the drop
/// reason.
#[inline(always)]
pub fn establish(p: &Packet, sc: &mut Keys, flow: &mut Flow, hook: Hook, now: u64) -> Result<(), u32> {
    let (svc, be, backend_id) = (&flow.svc, &flow.be, flow.backend_id);
    let Some(cfg) = LB_CONFIG.get(0) else {
        return Err(CNT_DROP_SNAT_PORTS);
    };
    let (snat_ready, hairpin_ready) = if p.is_v6 {
        (cfg.flags & CFG_F_SNAT6_READY != 0, cfg.flags & CFG_F_HAIRPIN6_READY != 0)
    } else {
        (cfg.flags & CFG_F_SNAT_READY != 0, cfg.flags & CFG_F_HAIRPIN_READY != 0)
    };
    // External traffic to a policy-Cluster frontend, and ClusterIP traffic from outside, is
    // masqueraded (points 31, 32); a pod reaching itself is source-NATed to the hairpin address
    // so its own reply comes back through the node (point 51). A backend on the node's own
    // address (point 63) is never source-NATed: the node's stack answers it, and the egress hook
    // translates the reply on its way out. (Plain values, not Options: see `nat::Rewrite`.)
    // (The addresses are referenced, never copied onto the stack: see `nat::copy_addr`.)
    let mut snat = false;
    let mut snat_addr: &[u8; 16] = &ZERO_ADDR.0;
    let host_backend = be.flags & BACKEND_F_HOST != 0;
    if hook == Hook::External && !host_backend && (svc.flags & SVC_F_SNAT != 0 || svc.flags & SVC_F_EXTERNAL == 0) {
        if snat_ready {
            count(CNT_SNAT);
            snat = true;
            snat_addr = if p.is_v6 { &cfg.snat6_addr } else { &cfg.snat_addr };
        }
    } else if hook == Hook::Pod && be.addr == p.src && hairpin_ready {
        count(CNT_HAIRPIN);
        snat = true;
        snat_addr = if p.is_v6 { &cfg.hairpin6_addr } else { &cfg.hairpin_addr };
    }

    if !snat && one_entry(p, sc, flow, now)? {
        // SAFETY: 4-aligned addresses (see the note on the reply entry below).
        unsafe { flow.nat.fill((false, &ZERO_ADDR.0, 0), (true, &flow.be.addr, flow.be.port_be), CNT_VERDICT_DNAT) };
        return Ok(());
    }
    // The reply entry: backend → client (or → the SNAT address), translated back to
    // frontend → client.
    let rv = &mut sc.rval;
    rv.last_seen_ns = now;
    // Every `copy_addr` and `set_key` below moves addresses of the packet description, the
    // scratch space, `ZERO_ADDR` and map values, all 4-aligned.
    // SAFETY: 4-aligned addresses (above).
    unsafe {
        copy_addr(&mut rv.nat_addr, &p.dst);
        copy_addr(&mut rv.snat_addr, &p.src);
    }
    set_tail(rv, backend_id, svc.svc_id, p.dport_be, p.sport_be, if snat { CT_F_SNAT } else { 0 });
    let mut snat_port_be = 0u16;
    if !snat {
        // SAFETY: 4-aligned addresses (see the note on the reply entry above).
        unsafe { set_key(&mut sc.rkey, &be.addr, be.port_be, &p.src, p.sport_be, p.proto, CT_DIR_REPLY) };
        if !insert(&sc.rkey, &sc.rval, 0, p.is_v6) {
            return Err(CNT_DROP_CT_INSERT);
        }
    } else if hook == Hook::External && !p.is_v6 {
        // External IPv4 SNAT: a slot when one is free, else the hash table (see `snat`).
        // SAFETY: 4-aligned addresses (see the note on the reply entry above).
        unsafe { set_key(&mut sc.rkey, &be.addr, be.port_be, snat_addr, 0, p.proto, CT_DIR_REPLY) };
        // SAFETY: the packet description's addresses are 4-aligned.
        let probe =
            unsafe { snat::Probe::of((&p.src, p.sport_be), (&p.dst, p.dport_be), p.proto, cfg.snat_port_min, cfg.snat_port_max) };
        match snat::reserve(&mut sc.rkey, &sc.rval, &probe, now) {
            Some(snat::Reserved::Slot(port_be)) => {
                // The slot holds the forward entry too.
                // SAFETY: 4-aligned addresses (see the note on the reply entry above).
                unsafe { flow.nat.fill((true, snat_addr, port_be), (true, &flow.be.addr, flow.be.port_be), CNT_VERDICT_DNAT) };
                return Ok(());
            }
            Some(snat::Reserved::Hash) => snat_port_be = sc.rkey.dport_be,
            None => return Err(CNT_DROP_SNAT_PORTS),
        }
    } else {
        // External IPv6 SNAT draws ports from the configured range, which the node's own sockets
        // do not use; the hairpin address is ours alone, so the client's port is kept when free.
        // BPF_NOEXIST makes the reply entry the port's reservation: two flows never share a
        // translated 5-tuple.
        let (min, max) = (cfg.snat_port_min, cfg.snat_port_max);
        let first = if hook == Hook::Pod { p.sport_be } else { snat::random_port(min, max) };
        // SAFETY: 4-aligned addresses (see the note on the reply entry above).
        unsafe { set_key(&mut sc.rkey, &be.addr, be.port_be, snat_addr, first, p.proto, CT_DIR_REPLY) };
        let mut found = false;
        let mut i = 0;
        while i < snat::HASH_TRIES {
            if insert(&sc.rkey, &sc.rval, u64::from(BPF_NOEXIST), p.is_v6) {
                found = true;
                break;
            }
            sc.rkey.dport_be = snat::random_port(min, max);
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
    // SAFETY: 4-aligned addresses (see the note on the reply entry above).
    unsafe {
        copy_addr(&mut fv.nat_addr, &be.addr);
        copy_addr(&mut fv.snat_addr, snat_addr);
    }
    set_tail(fv, backend_id, svc.svc_id, be.port_be, snat_port_be, if snat { CT_F_SNAT } else { 0 });
    // SAFETY: 4-aligned addresses (see the note on the reply entry above).
    unsafe { set_key(&mut sc.fkey, &p.src, p.sport_be, &p.dst, p.dport_be, p.proto, CT_DIR_FORWARD) };
    if !insert(&sc.fkey, &sc.fval, 0, p.is_v6) {
        // No half-made flow: its reply entry (and SNAT port) goes too.
        remove(&sc.rkey, p.is_v6);
        return Err(CNT_DROP_CT_INSERT);
    }
    // SAFETY: 4-aligned addresses (see the note on the reply entry above).
    unsafe { flow.nat.fill((snat, snat_addr, snat_port_be), (true, &flow.be.addr, flow.be.port_be), CNT_VERDICT_DNAT) };
    Ok(())
}

/// Writes the one entry of a new flow without SNAT, keyed by its client: true when written, false
/// when the client's address and port have a live entry for another frontend (the flow then
/// takes two entries). An entry for the same frontend is the end of an earlier flow (expired,
/// closing, or a datagram flow whose backend left: `forward` said so), and is replaced.
#[inline(always)]
fn one_entry(p: &Packet, sc: &mut Keys, flow: &Flow, now: u64) -> Result<bool, u32> {
    let (svc, be) = (&flow.svc, &flow.be);
    let v = &mut sc.fval;
    v.last_seen_ns = now;
    // SAFETY: 4-aligned addresses: the packet description's, a map value's (`Backend`).
    unsafe {
        copy_addr(&mut v.nat_addr, &be.addr);
        copy_addr(&mut v.snat_addr, &p.dst);
    }
    set_tail(v, flow.backend_id, svc.svc_id, be.port_be, p.dport_be, 0);
    let write = |sc: &mut Keys, flags: u64| {
        // SAFETY: the packet description's addresses are 4-aligned.
        unsafe { client_insert(&mut sc.ckey, &p.src, p.sport_be, p.proto, p.is_v6, &sc.fval, flags) }
    };
    if write(sc, u64::from(BPF_NOEXIST)) {
        return Ok(true);
    }
    // SAFETY: as above.
    let Some(old) = (unsafe { client_entry(&mut sc.ckey, &p.src, p.sport_be, p.proto, p.is_v6) }) else {
        // Gone meanwhile (evicted, swept): the key is free after all.
        return if write(sc, 0) { Ok(true) } else { Err(CNT_DROP_CT_INSERT) };
    };
    // SAFETY: pointer from a map lookup, valid for this program run; 4-aligned addresses.
    let replace = unsafe {
        let o = &*old;
        age(now, o.last_seen_ns) > ct_lifetime_ns(p.proto, o.flags)
            || o.snat_port_be == p.dport_be && same_addr(&o.snat_addr, &p.dst)
    };
    if !replace {
        return Ok(false);
    }
    if write(sc, 0) { Ok(true) } else { Err(CNT_DROP_CT_INSERT) }
}
