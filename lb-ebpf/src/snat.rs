//! SNAT ports of external IPv4 source-NATed flows, and the slots that hold their reply entries
//! (`LB_SNAT4_SLOTS`, see `lb_common::SnatSlot4`).
//!
//! A new flow first tries to claim a free slot of a random port: one array element, read and
//! written by index (no hashing, no bucket lock, no LRU list). The hash table's reply key was a
//! second random hash bucket and a second LRU insert per new flow, about half of a source-NATed
//! new flow in B1; the slot's first read is still a cache miss when its port was not used lately
//! (114 of 668 ns in a B1 profile under perf), since the port is random.
//! A slot is the node's for its port: it holds one flow whatever the backend, so a busy node
//! fills them; a flow that finds none free in `SLOT_TRIES` tries reserves its port in the hash
//! table instead, as every source-NATed flow did before the slots (`CT_DIR_REPLY` entries, whose
//! key names the backend: each backend has the whole range).
//!
//! The two reservations must never give two flows the same translated 5-tuple: a port reserved in
//! the hash table marks its slot `SNAT_SLOT_F_SHARED`, and a flow claiming a marked slot first
//! looks its own backend's key up in the hash table; a flow reserving a port in the hash table
//! skips the port when its slot is live for the same backend.
//!
//! Kernel-facing invariants: a slot is claimed with a compare-and-exchange on its `last_seen_ns`
//! (two CPUs never both win a free slot); the claimer then clears the backend, writes the entry and
//! writes the backend last, so a reply from the slot's previous backend never matches the new
//! entry half-written (the reply path matches the backend first). Stores are in program order
//! on x86-64; on weaker CPUs a reply racing a claim within nanoseconds may read the old entry,
//! which only a packet of the expired flow could match.

use core::intrinsics::{AtomicOrdering, atomic_cxchg};

use aya_ebpf::bindings::BPF_NOEXIST;
use lb_common::{CtKey, CtValue, SNAT_SLOT_F_SHARED, SnatSlot4, ct_lifetime_ns, snat_slot_index};

use crate::{
    clock::age,
    conntrack::{entry, insert, random, same_addr, v4_word},
    maps::{LB_CONFIG, LB_SNAT4_SLOTS},
};

/// Random slots tried before the hash table's port space.
const SLOT_TRIES: u32 = 4;
/// Ports tried in the hash table before the flow is dropped (every source-NATed flow's last
/// resort, and the only reservation of IPv6 and hairpin flows).
pub const HASH_TRIES: u32 = 4;

/// A random port of `port_min..=port_max` (host byte order), in network byte order.
#[inline(always)]
pub fn random_port(port_min: u16, port_max: u16) -> u16 {
    let span = u32::from(port_max.saturating_sub(port_min)) + 1;
    ((u32::from(port_min) + random() % span) as u16).to_be()
}

/// The slot of IPv4 SNAT port `port_be` of protocol `proto`, if it has one.
#[inline(always)]
fn slot(proto: u8, port_be: u16, port_min: u16) -> Option<*mut SnatSlot4> {
    let i = snat_slot_index(proto, u16::from_be(port_be), port_min)?;
    LB_SNAT4_SLOTS.get_ptr_mut(i)
}

/// The backend word of a slot: address, port and flags as one little-endian word (bytes 56..64).
#[inline(always)]
fn backend_word(addr: u32, port_be: u16, flags: u8) -> u64 {
    u64::from(addr) | u64::from(port_be) << 32 | u64::from(flags) << 48
}

const _: () = assert!(
    core::mem::offset_of!(SnatSlot4, backend_addr) == 56
        && core::mem::offset_of!(SnatSlot4, backend_port_be) == 60
        && core::mem::offset_of!(SnatSlot4, flags) == 62
        && cfg!(target_endian = "little")
);

/// Whether slot `s` holds a flow from backend `addr`:`port_be` (the v4 word of its address).
///
/// # Safety
/// `s` must come from a lookup of this program run.
#[inline(always)]
unsafe fn holds(s: *const SnatSlot4, addr: u32, port_be: u16) -> bool {
    // SAFETY: by the caller's promise; 8-aligned map value.
    let w = unsafe { s.cast::<u64>().add(7).read_volatile() };
    w & 0xffff_ffff_ffff == backend_word(addr, port_be, 0)
}

/// Whether slot `s` holds a live flow of protocol `proto`.
///
/// # Safety
/// As `holds`.
#[inline(always)]
unsafe fn live(s: *const SnatSlot4, proto: u8, now: u64) -> bool {
    // SAFETY: by the caller's promise.
    let (last, flags) = unsafe { ((*s).ct.last_seen_ns, (*s).ct.flags) };
    last != 0 && age(now, last) <= ct_lifetime_ns(proto, flags)
}

/// The reply entry of a reply from backend `src`:`sport_be` to SNAT port `dport_be`, if its slot
/// holds that backend's flow (its age is the caller's to check).
///
/// # Safety
/// `src` must be 4-aligned (see `nat::copy_addr`).
#[inline(always)]
pub unsafe fn reply_entry(src: &[u8; 16], sport_be: u16, dport_be: u16, proto: u8, port_min: u16) -> Option<*mut CtValue> {
    let s = slot(proto, dport_be, port_min)?;
    // SAFETY: 4-aligned by the caller's promise; `s` from the lookup above.
    let ours = unsafe { holds(s, v4_word(src), sport_be) };
    // SAFETY: `s` from the lookup above; `ct` is its first field.
    ours.then(|| unsafe { &raw mut (*s).ct })
}

/// The slot's reply entry of the flow a quoted packet (in an ICMP error) belongs to, when it went
/// from the IPv4 SNAT address (`src`:`sport_be`) to a backend (`dst`:`dport_be`).
///
/// # Safety
/// The addresses must be 4-aligned (see `nat::copy_addr`).
#[inline(always)]
pub unsafe fn quoted_reply_entry(
    dst: &[u8; 16],
    dport_be: u16,
    src: &[u8; 16],
    sport_be: u16,
    proto: u8,
    v6: bool,
) -> Option<*mut CtValue> {
    let cfg = LB_CONFIG.get(0)?;
    // SAFETY: a map value's and the caller's 4-aligned addresses.
    if v6 || !unsafe { same_addr(&cfg.snat_addr, src) } {
        return None;
    }
    // SAFETY: by the caller's promise.
    unsafe { reply_entry(dst, dport_be, sport_be, proto, cfg.snat_port_min) }
}

/// Whether the slot of a forward entry's reply (`fwd`, with `CT_F_SNAT_SLOT`) still holds its
/// flow from client `client`:`client_port_be`.
///
/// # Safety
/// `fwd` must come from a lookup of this program run; `client` must be 4-aligned.
#[inline(always)]
pub unsafe fn reply_held(
    fwd: *const CtValue,
    client: &[u8; 16],
    client_port_be: u16,
    proto: u8,
    port_min: u16,
    now: u64,
) -> bool {
    // SAFETY: by the caller's promise (map value: 4-aligned addresses).
    let v = unsafe { &*fwd };
    // SAFETY: 4-aligned map value address.
    let Some(ct) = (unsafe { reply_entry(&v.nat_addr, v.nat_port_be, v.snat_port_be, proto, port_min) }) else {
        return false;
    };
    // SAFETY: `ct` is the slot's entry, from a lookup of this run; 4-aligned addresses.
    unsafe {
        let r = &*ct;
        r.snat_port_be == client_port_be && same_addr(&r.snat_addr, client) && live(ct.cast::<SnatSlot4>(), proto, now)
    }
}

/// Where a new source-NATed flow's reply entry went.
pub enum Reserved {
    /// In the slot of this port (network byte order).
    Slot(u16),
    /// In the hash table, under `rkey` (its `dport_be` is the port).
    Hash,
}

/// Reserves an SNAT port for a new external IPv4 flow from `rkey`'s backend (`rkey`: its reply
/// key, SNAT address as destination, port unset) and writes its reply entry `rv`, in a slot when
/// one of `SLOT_TRIES` random ports has a free one, else in the hash table; `None` when no port
/// was free.
#[inline(always)]
pub fn reserve(rkey: &mut CtKey, rv: &CtValue, port_min: u16, port_max: u16, now: u64) -> Option<Reserved> {
    let pick = || random_port(port_min, port_max);
    // SAFETY: `CtKey`'s addresses are 4-aligned.
    let be_addr = unsafe { v4_word(&rkey.src) };
    let mut i = 0;
    while i < SLOT_TRIES {
        let port_be = pick();
        if let Some(s) = slot(rkey.proto, port_be, port_min) {
            rkey.dport_be = port_be;
            // SAFETY: `s` from the lookup above.
            if unsafe { claim(s, rkey, rv, be_addr, now) } {
                return Some(Reserved::Slot(port_be));
            }
        }
        i += 1;
    }
    let mut i = 0;
    while i < HASH_TRIES {
        let port_be = pick();
        rkey.dport_be = port_be;
        let s = slot(rkey.proto, port_be, port_min);
        // SAFETY: `s` from the lookup above.
        let taken = s.is_some_and(|s| unsafe { holds(s, be_addr, rkey.sport_be) && live(s, rkey.proto, now) });
        if !taken {
            if let Some(s) = s {
                // SAFETY: as above; a plain byte store (see the module's invariants).
                unsafe { (*s).flags |= SNAT_SLOT_F_SHARED };
            }
            // BPF_NOEXIST makes the entry the port's reservation for this backend.
            if insert(rkey, rv, u64::from(BPF_NOEXIST), false) {
                return Some(Reserved::Hash);
            }
        }
        i += 1;
    }
    None
}

/// Claims slot `s` for the flow of reply key `rkey` (port in `dport_be`) and writes its entry;
/// false when the slot is live, or its port is reserved for this backend in the hash table, or
/// another CPU claimed it first.
///
/// # Safety
/// `s` must come from a lookup of this program run.
#[inline(always)]
unsafe fn claim(s: *mut SnatSlot4, rkey: &CtKey, rv: &CtValue, be_addr: u32, now: u64) -> bool {
    // SAFETY: by the caller's promise.
    unsafe {
        let old = (*s).ct.last_seen_ns;
        if old != 0 && age(now, old) <= ct_lifetime_ns(rkey.proto, (*s).ct.flags) {
            return false;
        }
        let flags = (*s).flags;
        if flags & SNAT_SLOT_F_SHARED != 0 && entry(rkey, false).is_some() {
            return false;
        }
        // `last_seen_ns` is the slot's first, 8-aligned word, only ever accessed as a whole: the
        // kernel's compare-and-exchange on map values (BPF_CMPXCHG; core's atomic types offer
        // none on the BPF target, whose specification claims no compare-and-swap).
        let stamp = &raw mut (*s).ct.last_seen_ns;
        if !atomic_cxchg::<u64, { AtomicOrdering::SeqCst }, { AtomicOrdering::SeqCst }>(stamp, old, now).1 {
            return false;
        }
        let w = s.cast::<u64>();
        w.add(7).write_volatile(backend_word(0, 0, flags));
        // The entry's words after `last_seen_ns` (already `now`, as `rv`'s).
        let from = (rv as *const CtValue).cast::<u64>();
        let mut i = 1;
        while i < 7 {
            w.add(i).write_volatile(from.add(i).read());
            i += 1;
        }
        w.add(7).write_volatile(backend_word(be_addr, rkey.sport_be, flags));
    }
    true
}

/// Frees the slot of port `port_be` (a flow whose forward entry could not be written).
#[inline(always)]
pub fn release(proto: u8, port_be: u16, port_min: u16) {
    if let Some(s) = slot(proto, port_be, port_min) {
        // SAFETY: `s` from the lookup above; 8-aligned map value.
        unsafe {
            let w = s.cast::<u64>();
            let flags = (*s).flags;
            w.add(7).write_volatile(backend_word(0, 0, flags));
            w.write_volatile(0);
        }
    }
}
