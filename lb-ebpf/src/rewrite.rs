//! Rewrites by direct packet access with incremental checksums: the XDP path's NAT, and the
//! translation of ICMP errors on every hook. (The TC NAT path uses the kernel's checksum
//! helpers instead, because skbs from local sockets can carry partial checksums.)
//!
//! XDP sees packets as a NIC delivers them, with complete checksums, so RFC 1624 updates are
//! exact. (On veth test topologies the sending side turns TX checksum offload off for the same
//! reason.)

use lb_common::{IPPROTO_TCP, IPPROTO_UDP};

use crate::{
    csum::{replace16, replace32},
    lb::{Endpoint4, IcmpNat, Nat},
    parse::{
        ICMP_HLEN, IPV4_CSUM_OFF, IPV4_DADDR_OFF, IPV4_SADDR_OFF, Packet, TCP_CSUM_OFF,
        UDP_CSUM_OFF, ptr_at_mut,
    },
};

/// Largest offset of an L4 header: Ethernet + IPv4 with 40 bytes of options. Bounding offsets
/// keeps the verifier's ranges finite.
const MAX_L4_OFF: usize = 14 + 60;

/// Re-bounds an offset that travelled through memory (the verifier forgets a scalar's range
/// when it is reassembled from narrower loads). Every header offset is below 256.
#[inline(always)]
fn bounded(off: usize) -> usize {
    off & 0xff
}

/// Reads a raw word at `off`.
#[inline(always)]
fn load<T: Copy>(data: usize, end: usize, off: usize) -> Option<T> {
    let p = ptr_at_mut::<T>(data, end, off)?;
    // SAFETY: bounds checked by `ptr_at_mut`.
    Some(unsafe { core::ptr::read_unaligned(p) })
}

/// Writes a raw word at `off`.
#[inline(always)]
fn store<T: Copy>(data: usize, end: usize, off: usize, v: T) -> Option<()> {
    let p = ptr_at_mut::<T>(data, end, off)?;
    // SAFETY: bounds checked by `ptr_at_mut`.
    unsafe { core::ptr::write_unaligned(p, v) };
    Some(())
}

/// Rewrites one address (and, when the L4 header is present, one port) of the IPv4 header at
/// `l3` / the L4 header at `l4`, updating the IPv4 checksum and the L4 checksum (which covers the
/// address through the pseudo-header). `csum_off` is the L4 checksum offset, `None` to leave it.
#[inline(always)]
#[allow(clippy::too_many_arguments, reason = "one rewrite, spelled out")]
fn rewrite_one(
    data: usize,
    end: usize,
    l3: usize,
    addr_off: usize,
    new: Endpoint4,
    port_off: Option<usize>,
    csum_off: Option<(usize, bool)>,
) -> Option<()> {
    let old_ip: u32 = load(data, end, l3 + addr_off)?;
    let new_ip = u32::from_ne_bytes(new.addr);
    let ip_check: u16 = load(data, end, l3 + IPV4_CSUM_OFF)?;
    store(data, end, l3 + IPV4_CSUM_OFF, replace32(ip_check, old_ip, new_ip))?;
    store(data, end, l3 + addr_off, new_ip)?;
    let Some((csum, udp)) = csum_off else {
        return Some(());
    };
    let mut check: u16 = load(data, end, csum)?;
    // A zero UDP checksum means "none": leave it.
    if udp && check == 0 {
        if let Some(port_off) = port_off {
            store(data, end, port_off, new.port_be)?;
        }
        return Some(());
    }
    check = replace32(check, old_ip, new_ip);
    if let Some(port_off) = port_off {
        let old_port: u16 = load(data, end, port_off)?;
        check = replace16(check, old_port, new.port_be);
        store(data, end, port_off, new.port_be)?;
    }
    if udp && check == 0 {
        check = 0xffff;
    }
    store(data, end, csum, check)
}

/// Applies a NAT to the packet in `[data, end)` (XDP).
#[inline(never)]
pub fn apply_nat(data: usize, end: usize, p: &Packet, nat: &Nat) -> Option<()> {
    let l3 = bounded(usize::from(p.l3_off));
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
    if nat.dst.set {
        rewrite_one(data, end, l3, IPV4_DADDR_OFF, nat.dst.to, ports.then_some(l4 + 2), csum)?;
    }
    if nat.src.set {
        rewrite_one(data, end, l3, IPV4_SADDR_OFF, nat.src.to, ports.then_some(l4), csum)?;
    }
    Some(())
}

/// Translates an ICMP error (any hook): outer addresses, the quoted header's addresses and
/// ports, the quoted IPv4 checksum, the quoted UDP checksum, and the ICMP checksum over all of
/// those changes.
#[inline(never)]
pub fn apply_icmp(data: usize, end: usize, p: &Packet, n: &IcmpNat) -> Option<()> {
    if !p.is_icmp_error {
        return None;
    }
    let inner = p.icmp;
    let l3 = bounded(usize::from(p.l3_off));
    let icmp = bounded(usize::from(p.l4_off));
    let il3 = bounded(usize::from(inner.l3_off));
    let il4 = bounded(usize::from(inner.l4_off));
    if icmp > MAX_L4_OFF || il4 > MAX_L4_OFF + ICMP_HLEN + 60 {
        return None;
    }
    let icmp_csum_off = icmp + 2;
    let mut icmp_check: u16 = load(data, end, icmp_csum_off)?;
    // The quoted packet: its addresses are covered by the quoted IPv4 checksum and the quoted
    // UDP checksum (pseudo-header), and all of those bytes by the ICMP checksum.
    let udp = inner.proto == IPPROTO_UDP;
    for (addr_off, port_off, new) in [
        (IPV4_SADDR_OFF, 0usize, n.inner_src),
        (IPV4_DADDR_OFF, 2usize, n.inner_dst),
    ] {
        if !new.set {
            continue;
        }
        let new = new.to;
        let old_ip: u32 = load(data, end, il3 + addr_off)?;
        let new_ip = u32::from_ne_bytes(new.addr);
        let old_ipc: u16 = load(data, end, il3 + IPV4_CSUM_OFF)?;
        let new_ipc = replace32(old_ipc, old_ip, new_ip);
        let old_port: u16 = load(data, end, il4 + port_off)?;
        icmp_check = replace32(icmp_check, old_ip, new_ip);
        icmp_check = replace16(icmp_check, old_ipc, new_ipc);
        icmp_check = replace16(icmp_check, old_port, new.port_be);
        if udp {
            let old_uc: u16 = load(data, end, il4 + UDP_CSUM_OFF)?;
            if old_uc != 0 {
                let mut uc = replace32(old_uc, old_ip, new_ip);
                uc = replace16(uc, old_port, new.port_be);
                if uc == 0 {
                    uc = 0xffff;
                }
                icmp_check = replace16(icmp_check, old_uc, uc);
                store(data, end, il4 + UDP_CSUM_OFF, uc)?;
            }
        }
        store(data, end, il3 + addr_off, new_ip)?;
        store(data, end, il3 + IPV4_CSUM_OFF, new_ipc)?;
        store(data, end, il4 + port_off, new.port_be)?;
    }
    store(data, end, icmp_csum_off, icmp_check)?;
    // The outer header (the ICMP checksum has no pseudo-header).
    for (addr_off, new) in [(IPV4_SADDR_OFF, n.outer_src), (IPV4_DADDR_OFF, n.outer_dst)] {
        if !new.set {
            continue;
        }
        let old_ip: u32 = load(data, end, l3 + addr_off)?;
        let new_ip = u32::from_ne_bytes(new.to.addr);
        let c: u16 = load(data, end, l3 + IPV4_CSUM_OFF)?;
        store(data, end, l3 + IPV4_CSUM_OFF, replace32(c, old_ip, new_ip))?;
        store(data, end, l3 + addr_off, new_ip)?;
    }
    Some(())
}
