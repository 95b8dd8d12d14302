//! Address and port translation: what a translation is ([`Nat`]), the header edits it makes, and
//! the checksum changes they cause ([`plan`]), applied by direct packet writes ([`write`]). The
//! XDP context applies the L4 checksum change directly too; the TC context leaves it to the
//! kernel's helpers, which also handle partial and complete checksums of skbs (see `tc.rs`).
//!
//! Addresses are 16 bytes in the packet description; an IPv4 packet holds the last 4 of them.
//! IPv4 has a header checksum; IPv6 has none, but its pseudo-header (covered by TCP, UDP and
//! ICMPv6 checksums) holds all 16 bytes of both addresses.

use lb_common::{IPPROTO_TCP, IPPROTO_UDP};

use crate::{
    csum::Delta,
    parse::{IPV4_CSUM_OFF, IPV4_DADDR_OFF, IPV4_SADDR_OFF, IPV6_DADDR_OFF, IPV6_SADDR_OFF, Packet, TCP_CSUM_OFF, UDP_CSUM_OFF},
};

/// An address (16-byte format) and port (network byte order). Aligned to 4 so that addresses
/// are copied in and out with word moves (see `lb_common`'s layout rules).
#[repr(C, align(4))]
#[derive(Clone, Copy, Default)]
pub struct Endpoint {
    pub addr: [u8; 16],
    pub port_be: u16,
}

/// Copies a 16-byte address between two 4-aligned places with four word moves. (A plain array
/// assignment between two places the compiler cannot prove distinct compiles to a call of the
/// BPF `memmove`, a byte loop; volatile keeps the moves from being merged back into one.)
///
/// # Safety
/// `to` and `from` must be 4-aligned (fields at 4-aligned offsets of 4-aligned `repr(C)`
/// structs: `CtValue`'s addresses, `Endpoint::addr`).
#[inline(always)]
pub unsafe fn copy_addr(to: &mut [u8; 16], from: &[u8; 16]) {
    let (t, f) = (to.as_mut_ptr().cast::<u32>(), from.as_ptr().cast::<u32>());
    let mut i = 0;
    while i < 4 {
        // SAFETY: in bounds; aligned by the caller's promise.
        unsafe { t.add(i).write_volatile(f.add(i).read_volatile()) };
        i += 1;
    }
}

/// An optional rewrite. (A plain struct, not an `Option<Endpoint>`: every field is always
/// written, so no undefined payload ever reaches the verifier.)
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

/// A translation: new source and/or destination, and the verdict counter it counts.
#[derive(Clone, Copy, Default)]
pub struct Nat {
    pub src: Rewrite,
    pub dst: Rewrite,
    /// `CNT_VERDICT_DNAT` or `CNT_VERDICT_REVNAT`.
    pub verdict: u32,
}

impl Nat {
    /// Fills the translation in place: `(set, address, port)` for the new source and the new
    /// destination. Field by field: a whole `Nat` built and copied compiles to a `memmove` call.
    ///
    /// # Safety
    /// Both addresses must be 4-aligned (see [`copy_addr`]).
    #[inline(always)]
    pub unsafe fn fill(&mut self, src: (bool, &[u8; 16], u16), dst: (bool, &[u8; 16], u16), verdict: u32) {
        self.src.set = src.0;
        self.dst.set = dst.0;
        // SAFETY: `Endpoint` is 4-aligned with its address first; the sources by the caller.
        unsafe {
            copy_addr(&mut self.src.to.addr, src.1);
            copy_addr(&mut self.dst.to.addr, dst.1);
        }
        self.src.to.port_be = src.2;
        self.dst.to.port_be = dst.2;
        self.verdict = verdict;
    }
}

/// The translation of an ICMP error about a translated flow, back to what its receiver sent
/// (outer ports are ignored). Found and applied by `icmp`; here with the other translations, so
/// that the scratch space that holds one depends on nothing above it.
#[derive(Clone, Copy, Default)]
pub struct IcmpNat {
    pub outer_src: Rewrite,
    pub outer_dst: Rewrite,
    /// The quoted packet's source and destination.
    pub inner_src: Rewrite,
    pub inner_dst: Rewrite,
}

/// Re-bounds an offset that travelled through memory (the verifier forgets a scalar's range when
/// it is reassembled from narrower loads). Every header offset is below 256.
#[inline(always)]
pub fn bounded(off: usize) -> usize {
    off & 0xff
}

/// The i-th 32-bit word of an address, raw.
#[inline(always)]
pub fn word(a: &[u8; 16], i: usize) -> u32 {
    u32::from_ne_bytes([a[i * 4], a[i * 4 + 1], a[i * 4 + 2], a[i * 4 + 3]])
}

/// Offsets of the source and destination addresses in an IP header.
#[inline(always)]
pub fn addr_offsets(v6: bool) -> (usize, usize) {
    if v6 { (IPV6_SADDR_OFF, IPV6_DADDR_OFF) } else { (IPV4_SADDR_OFF, IPV4_DADDR_OFF) }
}

/// The checksum change of an address replaced (IPv4: its one word; IPv6: four).
#[inline(always)]
pub fn addr_delta(old: &[u8; 16], new: &[u8; 16], v6: bool) -> Delta {
    words_delta(words(old), words(new), v6)
}

/// [`addr_delta`] of addresses given as their words (read from aligned places with one load
/// each; `word` reads a byte at a time).
#[inline(always)]
pub fn words_delta(old: [u32; 4], new: [u32; 4], v6: bool) -> Delta {
    let mut d = Delta::default();
    if v6 {
        let mut i = 0;
        while i < 4 {
            d.word(old[i], new[i]);
            i += 1;
        }
    } else {
        d.word(old[3], new[3]);
    }
    d
}

#[inline(always)]
fn words(a: &[u8; 16]) -> [u32; 4] {
    [word(a, 0), word(a, 1), word(a, 2), word(a, 3)]
}

impl Endpoint {
    /// The address as 32-bit words (four aligned loads).
    #[inline(always)]
    pub fn addr_words(&self) -> [u32; 4] {
        let w = (&self.addr as *const [u8; 16]).cast::<u32>();
        // SAFETY: `Endpoint` is 4-aligned with `addr` first; four words are 16 bytes.
        unsafe { [w.read(), w.add(1).read(), w.add(2).read(), w.add(3).read()] }
    }
}

/// Where a packet's L4 checksum is and how it treats zero.
#[derive(Clone, Copy)]
pub struct L4Csum {
    pub off: usize,
    /// UDP: 0 means "no checksum" (IPv4) and a computed 0 is written as 0xffff.
    pub udp: bool,
}

/// A translation's edits: the checksum changes they cause, and where the L4 checksum is.
#[derive(Clone, Copy)]
pub struct Plan {
    /// IPv4 header checksum change (the addresses).
    pub ip: Delta,
    /// L4 checksum change through the pseudo-header (the addresses).
    pub pseudo: Delta,
    /// L4 checksum change of the ports themselves.
    pub ports: Delta,
    /// `None` when the L4 header is not in this packet (a later fragment) or not TCP/UDP.
    pub l4: Option<L4Csum>,
    /// An address, and a port, really change (a frontend's port often equals its target
    /// port): an unchanged part's delta is a one's-complement zero, which the TC context need
    /// not hand to a helper.
    pub addr_changed: bool,
    pub port_changed: bool,
}

/// The checksum changes of `nat` applied to `p`.
#[inline(always)]
pub fn plan(p: &Packet, nat: &Nat) -> Plan {
    let mut out = Plan {
        ip: Delta::default(),
        pseudo: Delta::default(),
        ports: Delta::default(),
        l4: l4_csum(p),
        addr_changed: false,
        port_changed: false,
    };
    let (src, dst) = p.addr_words();
    if nat.dst.set {
        let to = nat.dst.to.addr_words();
        let d = words_delta(dst, to, p.is_v6);
        out.ip.add(d);
        out.pseudo.add(d);
        out.ports.half(p.dport_be, nat.dst.to.port_be);
        out.addr_changed |= dst != to;
        out.port_changed |= p.dport_be != nat.dst.to.port_be;
    }
    if nat.src.set {
        let to = nat.src.to.addr_words();
        let d = words_delta(src, to, p.is_v6);
        out.ip.add(d);
        out.pseudo.add(d);
        out.ports.half(p.sport_be, nat.src.to.port_be);
        out.addr_changed |= src != to;
        out.port_changed |= p.sport_be != nat.src.to.port_be;
    }
    out
}

/// The L4 checksum of `p`, if its L4 header is in the packet.
#[inline(always)]
pub fn l4_csum(p: &Packet) -> Option<L4Csum> {
    let l4 = bounded(usize::from(p.l4_off));
    if !p.l4_in_packet {
        None
    } else if p.proto == IPPROTO_TCP {
        Some(L4Csum { off: l4 + TCP_CSUM_OFF, udp: false })
    } else if p.proto == IPPROTO_UDP {
        Some(L4Csum { off: l4 + UDP_CSUM_OFF, udp: true })
    } else {
        None
    }
}

/// Reads a raw value at `off` of the packet `[data, end)`.
#[inline(always)]
pub fn load<T: Copy>(data: usize, end: usize, off: usize) -> Option<T> {
    let p = crate::parse::ptr_at::<T>(data, end, off)?;
    // SAFETY: bounds checked by `ptr_at`.
    Some(unsafe { core::ptr::read_unaligned(p) })
}

/// Writes a raw value at `off` of the packet `[data, end)`.
#[inline(always)]
pub fn store<T: Copy>(data: usize, end: usize, off: usize, v: T) -> Option<()> {
    let p = crate::parse::ptr_at_mut::<T>(data, end, off)?;
    // SAFETY: bounds checked by `ptr_at_mut`.
    unsafe { core::ptr::write_unaligned(p, v) };
    Some(())
}

/// Writes an address at `off` in the packet's format (4 or 16 bytes).
#[inline(always)]
pub fn store_addr(data: usize, end: usize, off: usize, a: &[u8; 16], v6: bool) -> Option<()> {
    if !v6 {
        return store(data, end, off, [a[12], a[13], a[14], a[15]]);
    }
    let to = crate::parse::ptr_at_mut::<[u8; 16]>(data, end, off)?.cast::<u8>();
    let mut i = 0;
    while i < 16 {
        // SAFETY: inside the 16 bytes bounds-checked above. Volatile byte stores: a 16-byte
        // unaligned store compiles to a call of the BPF `memmove` (a byte loop with a call).
        unsafe { to.add(i).write_volatile(a[i]) };
        i += 1;
    }
    Some(())
}

/// Writes `nat`'s addresses and ports and the IPv4 header checksum into `[data, end)`, by
/// direct access. The L4 checksum is the caller's ([`write_l4_csum`] or the TC helpers).
#[inline(always)]
pub fn write(data: usize, end: usize, p: &Packet, nat: &Nat, plan: &Plan) -> Option<()> {
    let l3 = bounded(usize::from(p.l3_off));
    let l4 = bounded(usize::from(p.l4_off));
    let (saddr, daddr) = addr_offsets(p.is_v6);
    if nat.dst.set {
        store_addr(data, end, l3 + daddr, &nat.dst.to.addr, p.is_v6)?;
        if p.l4_in_packet {
            store(data, end, l4 + 2, nat.dst.to.port_be)?;
        }
    }
    if nat.src.set {
        store_addr(data, end, l3 + saddr, &nat.src.to.addr, p.is_v6)?;
        if p.l4_in_packet {
            store(data, end, l4, nat.src.to.port_be)?;
        }
    }
    if !p.is_v6 {
        let c: u16 = load(data, end, l3 + IPV4_CSUM_OFF)?;
        store(data, end, l3 + IPV4_CSUM_OFF, plan.ip.apply(c))?;
    }
    Some(())
}

/// Applies the L4 checksum change of `plan` by direct access, for packets whose checksum is
/// complete (as a NIC delivers them to XDP). An IPv4 UDP checksum of 0 ("none") stays 0.
#[inline(always)]
pub fn write_l4_csum(data: usize, end: usize, plan: &Plan) -> Option<()> {
    let Some(l4) = plan.l4 else {
        return Some(());
    };
    let check: u16 = load(data, end, l4.off)?;
    if l4.udp && check == 0 {
        return Some(());
    }
    let mut d = plan.pseudo;
    d.add(plan.ports);
    let mut new = d.apply(check);
    if l4.udp && new == 0 {
        new = 0xffff;
    }
    store(data, end, l4.off, new)
}

/// Applies the pseudo-header part of `plan` to a partial L4 checksum (`CHECKSUM_PARTIAL`, a local
/// packet whose checksum the stack or the NIC completes later): ports are not in that sum. The
/// zero rules of a UDP checksum are the helper's (`BPF_F_MARK_MANGLED_0`).
#[inline(always)]
pub fn write_l4_csum_partial(data: usize, end: usize, plan: &Plan) -> Option<()> {
    let Some(l4) = plan.l4 else {
        return Some(());
    };
    if !plan.addr_changed {
        return Some(());
    }
    let check: u16 = load(data, end, l4.off)?;
    if l4.udp && check == 0 {
        return Some(());
    }
    let mut new = plan.pseudo.apply_partial(check);
    if l4.udp && new == 0 {
        new = 0xffff;
    }
    store(data, end, l4.off, new)
}
