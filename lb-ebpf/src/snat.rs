//! SNAT ports of external IPv4 source-NATed flows, and the slots that hold their conntrack
//! entries (`LB_SNAT4_SLOTS`, see `lb_common::SnatSlot4`).
//!
//! A new flow tries the slot of the port its hash picks (lb-common's `snat_slot_hash`, seeded
//! with `LB_SNAT_SEED`: RFC 6056's hash-based port selection), then of the next port
//! (`SNAT_SLOT_PROBES`): one array element, read and written by index (no hashing, no bucket
//! lock, no LRU list). The slot holds both its entries: the forward path finds it by the same
//! hash of its packet, the reply path by the port it is addressed to. A new flow so costs no
//! hash-table write at all, where two LRU inserts (and a lookup that misses) were most of its
//! cost in B1; the slot's first read is still a cache miss when its port was not used lately.
//! A slot is the node's for its port: it holds one flow whatever the backend, so a busy node
//! fills them; a flow that finds both its slots live reserves a random port in the hash table
//! instead, as every source-NATed flow did before the slots (`CT_DIR_REPLY` entries, whose key
//! names the backend: each backend has the whole range), with its forward entry there too.
//!
//! The two reservations must never give two flows the same translated 5-tuple: a port reserved in
//! the hash table marks its slot `SNAT_SLOT_F_SHARED`, and a flow claiming a marked slot first
//! looks its own backend's key up in the hash table; a flow reserving a port in the hash table
//! skips the port when its slot is live for the same backend.
//!
//! Kernel-facing invariants: a slot is claimed with a compare-and-exchange on its `last_seen_ns`
//! (two CPUs never both win a slot); the claimer then clears the backend, writes the entry and
//! writes the backend last, so a reply from the slot's previous backend never matches the new
//! entry half-written (the reply path matches the backend first), nor does a forward packet
//! (which needs a backend). Stores are in program order on x86-64; on weaker CPUs a packet
//! racing a claim within nanoseconds may read the old entry, which only a packet of the expired
//! flow could match.

use core::intrinsics::{AtomicOrdering, atomic_cxchg};

use aya_ebpf::bindings::BPF_NOEXIST;
use lb_common::{
    CtKey, CtValue, SNAT_SLOT_F_FORWARD, SNAT_SLOT_F_SHARED, SNAT_SLOT_PROBES, SnatSlot4, ct_lifetime_ns, snat_slot_hash,
    snat_slot_index, snat_slot_probe_port,
};

use crate::{
    clock::age,
    conntrack::{entry, insert, random, same_addr, v4_word},
    maps::{LB_CONFIG, LB_SNAT4_SLOTS},
    nat::{Nat, copy_addr},
    parse::Inner,
};

/// The seed of the flows' port hash (lb-common's `GLOBAL_SNAT_SEED`, set by the agent at load).
/// In `.rodata`: frozen after load, so the verifier knows it and the hash costs no memory read.
#[unsafe(no_mangle)]
static LB_SNAT_SEED: u32 = 0;
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

/// The backend word of slot `s` (see `backend_word`), read whole.
///
/// # Safety
/// `s` must come from a lookup of this program run.
#[inline(always)]
unsafe fn read_backend_word(s: *const SnatSlot4) -> u64 {
    // SAFETY: by the caller's promise; 8-aligned map value.
    unsafe { s.cast::<u64>().add(7).read_volatile() }
}

/// The ports word of a conntrack value: `nat_port_be`, then `snat_port_be` (bytes 48..52; a
/// slot's frontend and client ports).
///
/// # Safety
/// `v` must point to a `CtValue` (8-aligned).
#[inline(always)]
unsafe fn ports_word(v: *const CtValue) -> u32 {
    // SAFETY: by the caller's promise; the offset is asserted in `conntrack`.
    unsafe { v.cast::<u8>().add(48).cast::<u32>().read() }
}

/// Whether slot `s` holds a flow from backend `addr`:`port_be` (the v4 word of its address).
///
/// # Safety
/// `s` must come from a lookup of this program run.
#[inline(always)]
unsafe fn holds(s: *const SnatSlot4, addr: u32, port_be: u16) -> bool {
    // SAFETY: by the caller's promise.
    let w = unsafe { read_backend_word(s) };
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

/// Where the slots of a flow's SNAT ports are: its port hash (lb-common's `snat_slot_hash`) and
/// the configured range.
#[derive(Clone, Copy)]
pub struct Probe {
    hash: u32,
    /// The flow as the slots hold it: client and frontend addresses (native words), and the
    /// ports word of `CtValue` (frontend port, then client port).
    client: u32,
    frontend: u32,
    ports: u32,
    proto: u8,
    port_min: u16,
    port_max: u16,
}

impl Probe {
    /// The probes of IPv4 flow `client`:`client_port_be` → `frontend`:`frontend_port_be` with
    /// SNAT ports `port_min..=port_max`.
    ///
    /// # Safety
    /// The addresses must be 4-aligned (see `nat::copy_addr`).
    #[inline(always)]
    pub unsafe fn of(
        (client, client_port_be): (&[u8; 16], u16),
        (frontend, frontend_port_be): (&[u8; 16], u16),
        proto: u8,
        port_min: u16,
        port_max: u16,
    ) -> Self {
        // SAFETY: a read of our own global; volatile, or the compiler would fold in the object's 0.
        let seed = unsafe { core::ptr::read_volatile(&LB_SNAT_SEED) };
        // SAFETY: 4-aligned by the caller's promise.
        let (client, frontend) = unsafe { (v4_word(client), v4_word(frontend)) };
        Self {
            hash: snat_slot_hash(seed, client, client_port_be, frontend, frontend_port_be, proto),
            client,
            frontend,
            ports: u32::from(frontend_port_be) | u32::from(client_port_be) << 16,
            proto,
            port_min,
            port_max,
        }
    }

    /// The port of probe `i`, network byte order.
    #[inline(always)]
    fn port_be(&self, i: u32) -> u16 {
        snat_slot_probe_port(self.hash, i, self.port_min, self.port_max).to_be()
    }

    /// Whether slot `s` holds this flow (its age aside; a slot being claimed, whose backend is
    /// not written yet, does not).
    ///
    /// # Safety
    /// `s` must come from a lookup of this program run.
    #[inline(always)]
    unsafe fn held_by(&self, s: *const SnatSlot4) -> bool {
        // SAFETY: by the caller's promise.
        unsafe {
            let ct = &(*s).ct;
            ct.last_seen_ns != 0
                && ports_word(ct) == self.ports
                && v4_word(&ct.snat_addr) == self.client
                && v4_word(&ct.nat_addr) == self.frontend
                && (*s).backend_port_be != 0
        }
    }

    /// The slot holding the flow, found among its probes, and its port (network byte order).
    /// `stop_at_free`: a new connection's SYN, which stops at the first free slot: its flow, if
    /// any, was placed there or before (a flow that was placed after it, when it was taken, is
    /// an earlier connection of the same ports, and is replaced).
    #[inline(always)]
    pub fn find(&self, stop_at_free: bool, now: u64) -> Option<(*mut SnatSlot4, u16)> {
        let mut i = 0;
        while i < SNAT_SLOT_PROBES {
            let port_be = self.port_be(i);
            let s = slot(self.proto, port_be, self.port_min)?;
            // SAFETY: `s` from the lookup above.
            if unsafe { self.held_by(s) } {
                return Some((s, port_be));
            }
            // SAFETY: as above.
            if stop_at_free && !unsafe { live(s, self.proto, now) } {
                return None;
            }
            i += 1;
        }
        None
    }
}

/// Whether slot `s` holds the flow whose entry `rv` is about to be written (an earlier connection
/// of the same ports): the same client, frontend and ports. (Compared with `rv`, in the scratch
/// space, rather than the probe's words, which would take registers that a new flow's path has
/// none left of: the verifier's stack limit is near.)
///
/// # Safety
/// `s` must come from a lookup of this program run.
#[inline(always)]
unsafe fn same_flow(s: *const SnatSlot4, rv: &CtValue) -> bool {
    // SAFETY: by the caller's promise.
    unsafe {
        let ct = &raw const (*s).ct;
        ports_word(ct) == ports_word(rv)
            && v4_word(&(*ct).snat_addr) == v4_word(&rv.snat_addr)
            && v4_word(&(*ct).nat_addr) == v4_word(&rv.nat_addr)
            && (*ct).last_seen_ns != 0
    }
}

/// Writes the translation of a forward packet (to `frontend`, 4-aligned) of the flow in slot `s`
/// on port `port_be` into `out`: from the SNAT address `snat_addr` and the port, to the backend.
///
/// # Safety
/// `s` must come from a lookup of this program run; the addresses must be 4-aligned.
#[inline(always)]
pub unsafe fn forward_nat(out: &mut Nat, s: *const SnatSlot4, port_be: u16, snat_addr: &[u8; 16], frontend: &[u8; 16]) {
    // SAFETY: by the caller's promise.
    let w = unsafe { read_backend_word(s) };
    // The backend's IPv4-mapped address: the frontend's prefix, then the backend's word.
    // SAFETY: 4-aligned by the caller's promise.
    unsafe {
        out.fill((true, snat_addr, port_be), (true, frontend, (w >> 32) as u16), lb_common::CNT_VERDICT_DNAT);
        out.dst.to.addr.as_mut_ptr().cast::<u32>().add(3).write(w as u32);
    }
}

/// Writes into `out` the forward entry held in a slot of the flow a quoted packet (in an ICMP
/// error) belongs to, when it went from an IPv4 frontend (`inner`'s source) to an external
/// client (its destination), as the hash table would hold it; false when no slot holds it. A
/// subprogram of its own, written in place: the ICMP steps' stack frames are near the verifier's
/// limit.
#[inline(never)]
pub fn quoted_forward_entry(out: &mut CtValue, inner: &Inner, v6: bool) -> bool {
    let Some(cfg) = LB_CONFIG.get(0) else {
        return false;
    };
    if v6 {
        return false;
    }
    let (client, frontend) = ((&inner.dst, inner.dport_be), (&inner.src, inner.sport_be));
    // SAFETY: `Inner`'s addresses are 4-aligned.
    let probe = unsafe { Probe::of(client, frontend, inner.proto, cfg.snat_port_min, cfg.snat_port_max) };
    let Some((s, port_be)) = probe.find(false, 0) else {
        return false;
    };
    // SAFETY: `s` from the lookup above (8-aligned map value); 4-aligned addresses of a map value,
    // `Inner` and `out`.
    unsafe {
        let w = read_backend_word(s);
        out.last_seen_ns = (*s).ct.last_seen_ns;
        out.backend_id = (*s).ct.backend_id;
        out.svc_id = (*s).ct.svc_id;
        out.flags = (*s).ct.flags | lb_common::CT_F_SNAT;
        out.nat_port_be = (w >> 32) as u16;
        out.snat_port_be = port_be;
        copy_addr(&mut out.nat_addr, &inner.src);
        out.nat_addr.as_mut_ptr().cast::<u32>().add(3).write(w as u32);
        copy_addr(&mut out.snat_addr, &cfg.snat_addr);
    }
    true
}

/// Where a new source-NATed flow's reply entry went.
pub enum Reserved {
    /// In the slot of this port (network byte order), with its forward entry.
    Slot(u16),
    /// In the hash table, under `rkey` (its `dport_be` is the port).
    Hash,
}

/// Reserves an SNAT port for a new external IPv4 flow from `rkey`'s backend (`rkey`: its reply
/// key, SNAT address as destination, port unset) and writes its entry `rv` (as the reply entry):
/// in the slot of one of the flow's `SNAT_SLOT_PROBES` ports that is free or holds an earlier
/// connection of the same ports (which `conntrack::forward` turned down), else in the hash table
/// on a random port; `None` when no port was free.
#[inline(always)]
pub fn reserve(rkey: &mut CtKey, rv: &CtValue, probe: &Probe, now: u64) -> Option<Reserved> {
    // SAFETY: `CtKey`'s addresses are 4-aligned.
    let be_addr = unsafe { v4_word(&rkey.src) };
    let mut i = 0;
    while i < SNAT_SLOT_PROBES {
        let port_be = probe.port_be(i);
        if let Some(s) = slot(rkey.proto, port_be, probe.port_min) {
            rkey.dport_be = port_be;
            // SAFETY: `s` from the lookup above.
            if unsafe { claim(s, rkey, rv, be_addr, same_flow(s, rv), now) } {
                return Some(Reserved::Slot(port_be));
            }
        }
        i += 1;
    }
    let mut i = 0;
    while i < HASH_TRIES {
        let port_be = random_port(probe.port_min, probe.port_max);
        rkey.dport_be = port_be;
        let s = slot(rkey.proto, port_be, probe.port_min);
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

/// Claims slot `s` for the flow of reply key `rkey` (port in `dport_be`) and writes its entry,
/// which is its forward entry too; false when the slot is live (unless `take_over`: it holds an
/// earlier connection of the same flow, to be replaced), or its port is reserved for this backend
/// in the hash table, or another CPU claimed it first.
///
/// # Safety
/// `s` must come from a lookup of this program run.
#[inline(always)]
unsafe fn claim(s: *mut SnatSlot4, rkey: &CtKey, rv: &CtValue, be_addr: u32, take_over: bool, now: u64) -> bool {
    // SAFETY: by the caller's promise.
    unsafe {
        let old = (*s).ct.last_seen_ns;
        if !take_over && old != 0 && age(now, old) <= ct_lifetime_ns(rkey.proto, (*s).ct.flags) {
            return false;
        }
        let flags = (*s).flags;
        if flags & SNAT_SLOT_F_SHARED != 0 && entry(rkey, false).is_some() {
            return false;
        }
        // `last_seen_ns` is the slot's first, 8-aligned word, only ever accessed as a whole: the
        // kernel's compare-and-exchange on map values (BPF_CMPXCHG; core's atomic types offer
        // none on the BPF target, whose specification claims no compare-and-swap). The new value
        // differs from the old (a slot taken over may have been seen this very tick), so a second
        // CPU's exchange from the old value fails.
        let stamp = &raw mut (*s).ct.last_seen_ns;
        let new = if old == now { now + 1 } else { now };
        if !atomic_cxchg::<u64, { AtomicOrdering::SeqCst }, { AtomicOrdering::SeqCst }>(stamp, old, new).1 {
            return false;
        }
        let flags = flags | SNAT_SLOT_F_FORWARD;
        let w = s.cast::<u64>();
        w.add(7).write_volatile(backend_word(0, 0, flags));
        // The entry's words after `last_seen_ns`.
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
