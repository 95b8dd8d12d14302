//! Rewrites by direct packet access with incremental checksums: the XDP path's NAT, and the
//! translation of ICMP and ICMPv6 errors on every hook. (The TC NAT path uses the kernel's
//! checksum helpers instead, because skbs from local sockets can carry partial checksums.)
//!
//! XDP sees packets as a NIC delivers them, with complete checksums, so RFC 1624 updates are
//! exact. (On veth test topologies the sending side turns TX checksum offload off for the same
//! reason.)
//!
//! Addresses are 16 bytes in the packet description; an IPv4 packet holds the last 4 of them.
//! IPv4 has a header checksum; IPv6 has none, but its pseudo-header (covered by TCP, UDP and
//! ICMPv6 checksums) holds all 16 bytes of both addresses.

use lb_common::{IPPROTO_TCP, IPPROTO_UDP};

use crate::{
    csum::{replace16, replace32},
    lb::{Endpoint, IcmpNat, Nat},
    parse::{
        IPV4_CSUM_OFF, IPV4_DADDR_OFF, IPV4_SADDR_OFF, IPV6_DADDR_OFF, IPV6_SADDR_OFF, Packet, TCP_CSUM_OFF, UDP_CSUM_OFF,
        ptr_at_mut,
    },
};

/// Largest offset of an L4 header (see `parse`: larger ones are never translated). Bounding
/// offsets keeps the verifier's ranges finite.
const MAX_L4_OFF: usize = 255;

/// Re-bounds an offset that travelled through memory (the verifier forgets a scalar's range
/// when it is reassembled from narrower loads). Every header offset is below 256.
#[inline(always)]
fn bounded(off: usize) -> usize {
    off & 0xff
}

/// Reads a raw value at `off`.
#[inline(always)]
fn load<T: Copy>(data: usize, end: usize, off: usize) -> Option<T> {
    let p = ptr_at_mut::<T>(data, end, off)?;
    // SAFETY: bounds checked by `ptr_at_mut`.
    Some(unsafe { core::ptr::read_unaligned(p) })
}

/// Writes a raw value at `off`.
#[inline(always)]
fn store<T: Copy>(data: usize, end: usize, off: usize, v: T) -> Option<()> {
    let p = ptr_at_mut::<T>(data, end, off)?;
    // SAFETY: bounds checked by `ptr_at_mut`.
    unsafe { core::ptr::write_unaligned(p, v) };
    Some(())
}

/// The i-th 32-bit word of an address, raw.
#[inline(always)]
fn word(a: &[u8; 16], i: usize) -> u32 {
    u32::from_ne_bytes([a[i * 4], a[i * 4 + 1], a[i * 4 + 2], a[i * 4 + 3]])
}

/// A checksum after an address changed from `old` to `new` (IPv4: its one word; IPv6: four).
#[inline(always)]
pub fn csum_addr(mut check: u16, old: &[u8; 16], new: &[u8; 16], v6: bool) -> u16 {
    if v6 {
        let mut i = 0;
        while i < 4 {
            check = replace32(check, word(old, i), word(new, i));
            i += 1;
        }
        check
    } else {
        replace32(check, word(old, 3), word(new, 3))
    }
}

/// Writes an address at `off` in the packet's format (4 or 16 bytes).
#[inline(always)]
fn store_addr(data: usize, end: usize, off: usize, a: &[u8; 16], v6: bool) -> Option<()> {
    if v6 { store(data, end, off, *a) } else { store(data, end, off, [a[12], a[13], a[14], a[15]]) }
}

/// Offsets of the source and destination addresses in an IP header.
#[inline(always)]
fn addr_offsets(v6: bool) -> (usize, usize) {
    if v6 { (IPV6_SADDR_OFF, IPV6_DADDR_OFF) } else { (IPV4_SADDR_OFF, IPV4_DADDR_OFF) }
}

/// Rewrites one address of the IP header at `l3` (and, when the L4 header is present, one
/// port), updating the IPv4 header checksum and the L4 checksum (which covers the address
/// through the pseudo-header). `csum` is the L4 checksum offset and whether it is UDP's.
#[inline(always)]
#[allow(clippy::too_many_arguments, reason = "one rewrite, spelled out")]
fn rewrite_one(
    data: usize,
    end: usize,
    p: &Packet,
    addr_off: usize,
    old: &[u8; 16],
    new: Endpoint,
    port_off: Option<usize>,
    csum: Option<(usize, bool)>,
) -> Option<()> {
    let l3 = bounded(usize::from(p.l3_off));
    if !p.is_v6 {
        let ip_check: u16 = load(data, end, l3 + IPV4_CSUM_OFF)?;
        store(data, end, l3 + IPV4_CSUM_OFF, csum_addr(ip_check, old, &new.addr, false))?;
    }
    store_addr(data, end, l3 + addr_off, &new.addr, p.is_v6)?;
    let Some((csum_off, udp)) = csum else {
        return Some(());
    };
    let mut check: u16 = load(data, end, csum_off)?;
    // A zero UDP checksum means "none" (IPv4): leave it.
    if udp && check == 0 {
        if let Some(port_off) = port_off {
            store(data, end, port_off, new.port_be)?;
        }
        return Some(());
    }
    check = csum_addr(check, old, &new.addr, p.is_v6);
    if let Some(port_off) = port_off {
        let old_port: u16 = load(data, end, port_off)?;
        check = replace16(check, old_port, new.port_be);
        store(data, end, port_off, new.port_be)?;
    }
    if udp && check == 0 {
        check = 0xffff;
    }
    store(data, end, csum_off, check)
}

/// Applies a NAT to the packet in `[data, end)` (XDP).
#[inline(never)]
pub fn apply_nat(data: usize, end: usize, p: &Packet, nat: &Nat) -> Option<()> {
    let l4 = bounded(usize::from(p.l4_off));
    if l4 > MAX_L4_OFF {
        return None;
    }
    let csum = if !p.l4_in_packet {
        None
    } else if p.proto == IPPROTO_TCP {
        Some((l4 + TCP_CSUM_OFF, false))
    } else if p.proto == IPPROTO_UDP {
        Some((l4 + UDP_CSUM_OFF, true))
    } else {
        None
    };
    let ports = p.l4_in_packet;
    let (saddr_off, daddr_off) = addr_offsets(p.is_v6);
    if nat.dst.set {
        rewrite_one(data, end, p, daddr_off, &p.dst, nat.dst.to, ports.then_some(l4 + 2), csum)?;
    }
    if nat.src.set {
        rewrite_one(data, end, p, saddr_off, &p.src, nat.src.to, ports.then_some(l4), csum)?;
    }
    Some(())
}

/// Translates an ICMP or ICMPv6 error (any hook): outer addresses, the quoted header's
/// addresses and ports, the quoted IPv4 checksum, the quoted UDP checksum, and the ICMP
/// checksum over all of those changes (for ICMPv6 also over the outer addresses, which its
/// pseudo-header covers). Each address is its own subprogram call, so the 16-byte values stay
/// off one big stack frame.
#[inline(never)]
pub fn apply_icmp(data: usize, end: usize, p: &Packet, n: &IcmpNat) -> Option<()> {
    if !p.is_icmp_error || usize::from(p.l4_off) > MAX_L4_OFF {
        return None;
    }
    if n.inner_src.set {
        icmp_inner(data, end, p, false, &n.inner_src.to)?;
    }
    if n.inner_dst.set {
        icmp_inner(data, end, p, true, &n.inner_dst.to)?;
    }
    if n.outer_src.set {
        icmp_outer(data, end, p, false, &n.outer_src.to)?;
    }
    if n.outer_dst.set {
        icmp_outer(data, end, p, true, &n.outer_dst.to)?;
    }
    Some(())
}

/// Rewrites the quoted packet's source (`dst == false`) or destination and its port.
#[inline(never)]
fn icmp_inner(data: usize, end: usize, p: &Packet, dst: bool, new: &Endpoint) -> Option<()> {
    let v6 = p.is_v6;
    let inner = &p.icmp;
    let icmp_csum_off = bounded(usize::from(p.l4_off)) + 2;
    let il3 = bounded(usize::from(inner.l3_off));
    let il4 = bounded(usize::from(inner.l4_off));
    let (saddr_off, daddr_off) = addr_offsets(v6);
    let (addr_off, port_off, old) = if dst { (daddr_off, 2, &inner.dst) } else { (saddr_off, 0, &inner.src) };
    let mut icmp_check: u16 = load(data, end, icmp_csum_off)?;
    let old_port: u16 = load(data, end, il4 + port_off)?;
    icmp_check = csum_addr(icmp_check, old, &new.addr, v6);
    icmp_check = replace16(icmp_check, old_port, new.port_be);
    if !v6 {
        let old_ipc: u16 = load(data, end, il3 + IPV4_CSUM_OFF)?;
        let new_ipc = csum_addr(old_ipc, old, &new.addr, false);
        icmp_check = replace16(icmp_check, old_ipc, new_ipc);
        store(data, end, il3 + IPV4_CSUM_OFF, new_ipc)?;
    }
    if inner.proto == IPPROTO_UDP {
        let old_uc: u16 = load(data, end, il4 + UDP_CSUM_OFF)?;
        if old_uc != 0 {
            let mut uc = csum_addr(old_uc, old, &new.addr, v6);
            uc = replace16(uc, old_port, new.port_be);
            if uc == 0 {
                uc = 0xffff;
            }
            icmp_check = replace16(icmp_check, old_uc, uc);
            store(data, end, il4 + UDP_CSUM_OFF, uc)?;
        }
    }
    store_addr(data, end, il3 + addr_off, &new.addr, v6)?;
    store(data, end, il4 + port_off, new.port_be)?;
    store(data, end, icmp_csum_off, icmp_check)
}

/// Rewrites the error's own source (`dst == false`) or destination address (an ICMPv4
/// checksum has no pseudo-header; an ICMPv6 one does).
#[inline(never)]
fn icmp_outer(data: usize, end: usize, p: &Packet, dst: bool, new: &Endpoint) -> Option<()> {
    let v6 = p.is_v6;
    let l3 = bounded(usize::from(p.l3_off));
    let (saddr_off, daddr_off) = addr_offsets(v6);
    let (addr_off, old) = if dst { (daddr_off, &p.dst) } else { (saddr_off, &p.src) };
    if v6 {
        let icmp_csum_off = bounded(usize::from(p.l4_off)) + 2;
        let c: u16 = load(data, end, icmp_csum_off)?;
        store(data, end, icmp_csum_off, csum_addr(c, old, &new.addr, true))?;
    } else {
        let c: u16 = load(data, end, l3 + IPV4_CSUM_OFF)?;
        store(data, end, l3 + IPV4_CSUM_OFF, csum_addr(c, old, &new.addr, false))?;
    }
    store_addr(data, end, l3 + addr_off, &new.addr, v6)
}
