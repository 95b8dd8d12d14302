//! ICMP and ICMPv6 errors about translated flows, translated both ways, so path-MTU discovery
//! works through a Service: the outer addresses, the quoted header's addresses and ports, the
//! quoted IPv4 header checksum and UDP checksum, and the ICMP checksum over all of those changes
//! (for ICMPv6 also over the outer addresses, which its pseudo-header covers). Rare, so its
//! steps are subprograms of their own and keep the hot paths small.

use lb_common::{CNT_ICMP_TRANSLATED, CT_DIR_FORWARD, CT_DIR_REPLY, CT_F_SNAT, CtValue, IPPROTO_UDP};

use crate::{
    conntrack::{client_entry, entry, same_addr, set_key},
    counters::count,
    csum::Delta,
    nat::{Endpoint, IcmpNat, Rewrite, addr_delta, addr_offsets, bounded, load, store, store_addr},
    parse::{IPV4_CSUM_OFF, Packet, UDP_CSUM_OFF},
    scratch::Keys,
    snat,
};

/// Finds the translation of ICMP error `p` and leaves it in `sc.icmp`; false for an error about
/// no translated flow. (The result stays in the scratch space: values crossing a subprogram
/// boundary through memory must be fully written, which an `Option` payload is not.)
#[inline(never)]
pub fn translation(p: &Packet, sc: &mut Keys) -> bool {
    let inner = p.icmp;
    // 1. An error on its way back to the client about a packet the backend received (from the
    //    backend itself or a router on the way): the quoted packet went client (or SNAT
    //    address) → backend, so its flow's reply entry is the quote reversed, or its client's
    //    entry is the quote's source when the flow has one entry.
    // SAFETY: `Inner` is 4-aligned with its addresses first.
    unsafe { set_key(&mut sc.rkey, &inner.dst, inner.dport_be, &inner.src, inner.sport_be, inner.proto, CT_DIR_REPLY) };
    // SAFETY: copied out immediately.
    let to_backend = entry(&sc.rkey, p.is_v6)
        // SAFETY: `Inner`'s addresses (4-aligned).
        .or_else(|| unsafe {
            snat::quoted_reply_entry(&inner.dst, inner.dport_be, &inner.src, inner.sport_be, inner.proto, p.is_v6)
        })
        .map(|v| unsafe { *v })
        .or_else(|| {
            // The one-entry flow as its reply entry would be: the frontend to write back.
            // SAFETY: as above.
            let c =
                unsafe { client_entry(&mut sc.ckey, &inner.src, inner.sport_be, inner.proto, p.is_v6) }.map(|v| unsafe { *v })?;
            // SAFETY: a copied map value's and `Inner`'s addresses (4-aligned).
            let named = c.nat_port_be == inner.dport_be && unsafe { same_addr(&c.nat_addr, &inner.dst) };
            named.then_some(CtValue { nat_addr: c.snat_addr, nat_port_be: c.snat_port_be, flags: 0, ..c })
        });
    if let Some(v) = to_backend {
        let snat = v.flags & CT_F_SNAT != 0;
        count(CNT_ICMP_TRANSLATED);
        sc.icmp = IcmpNat {
            // An error the backend itself sent appears to come from the frontend.
            outer_src: Rewrite::when(p.src == inner.dst, v.nat_addr, 0),
            outer_dst: Rewrite::when(snat, v.snat_addr, 0),
            inner_src: Rewrite::when(snat, v.snat_addr, v.snat_port_be),
            inner_dst: Rewrite::to(v.nat_addr, v.nat_port_be),
        };
        return true;
    }
    // 2. An error from the client (or a router before it) about a reply it received: the quoted
    //    packet went frontend → client, so the flow's forward entry is the quote reversed, or
    //    its client's entry is the quote's destination. It goes to the backend, about what the
    //    backend sent.
    // SAFETY: as above.
    unsafe { set_key(&mut sc.fkey, &inner.dst, inner.dport_be, &inner.src, inner.sport_be, inner.proto, CT_DIR_FORWARD) };
    // SAFETY: copied out immediately.
    let to_client = entry(&sc.fkey, p.is_v6)
        .map(|v| unsafe { *v })
        .or_else(|| snat::quoted_forward_entry(&mut sc.fval, &inner, p.is_v6).then_some(sc.fval))
        .or_else(|| {
            // SAFETY: as above.
            let c =
                unsafe { client_entry(&mut sc.ckey, &inner.dst, inner.dport_be, inner.proto, p.is_v6) }.map(|v| unsafe { *v })?;
            // SAFETY: as above.
            let named = c.snat_port_be == inner.sport_be && unsafe { same_addr(&c.snat_addr, &inner.src) };
            // The one-entry flow as its forward entry would be: no source NAT.
            named.then_some(CtValue { flags: 0, ..c })
        });
    let Some(v) = to_client else {
        return false;
    };
    let snat = v.flags & CT_F_SNAT != 0;
    count(CNT_ICMP_TRANSLATED);
    sc.icmp = IcmpNat {
        outer_src: Rewrite::when(snat, v.snat_addr, 0),
        outer_dst: Rewrite::to(v.nat_addr, 0),
        inner_src: Rewrite::to(v.nat_addr, v.nat_port_be),
        inner_dst: Rewrite::when(snat, v.snat_addr, v.snat_port_be),
    };
    true
}

/// Applies `n` to the error in `[data, end)` by direct access (every hook: ICMP checksums are
/// never offloaded). Each address is its own subprogram call, so the 16-byte values stay off
/// one big stack frame.
#[inline(never)]
pub fn apply(data: usize, end: usize, p: &Packet, n: &IcmpNat) -> Option<()> {
    if !p.is_icmp_error || usize::from(p.l4_off) > 255 {
        return None;
    }
    if n.inner_src.set {
        inner(data, end, p, false, &n.inner_src.to)?;
    }
    if n.inner_dst.set {
        inner(data, end, p, true, &n.inner_dst.to)?;
    }
    if n.outer_src.set {
        outer(data, end, p, false, &n.outer_src.to)?;
    }
    if n.outer_dst.set {
        outer(data, end, p, true, &n.outer_dst.to)?;
    }
    Some(())
}

/// `check` after a 16-bit word changed from `old` to `new`.
#[inline(always)]
fn replace16(check: u16, old: u16, new: u16) -> u16 {
    let mut d = Delta::default();
    d.half(old, new);
    d.apply(check)
}

/// Rewrites the quoted packet's source (`dst == false`) or destination and its port.
#[inline(never)]
fn inner(data: usize, end: usize, p: &Packet, dst: bool, new: &Endpoint) -> Option<()> {
    let v6 = p.is_v6;
    let quoted = &p.icmp;
    let icmp_csum_off = bounded(usize::from(p.l4_off)) + 2;
    let il3 = bounded(usize::from(quoted.l3_off));
    let il4 = bounded(usize::from(quoted.l4_off));
    let (saddr_off, daddr_off) = addr_offsets(v6);
    let (addr_off, port_off, old) = if dst { (daddr_off, 2, &quoted.dst) } else { (saddr_off, 0, &quoted.src) };
    let mut icmp_check: u16 = load(data, end, icmp_csum_off)?;
    let old_port: u16 = load(data, end, il4 + port_off)?;
    icmp_check = addr_delta(old, &new.addr, v6).apply(icmp_check);
    icmp_check = replace16(icmp_check, old_port, new.port_be);
    if !v6 {
        let old_ipc: u16 = load(data, end, il3 + IPV4_CSUM_OFF)?;
        let new_ipc = addr_delta(old, &new.addr, false).apply(old_ipc);
        icmp_check = replace16(icmp_check, old_ipc, new_ipc);
        store(data, end, il3 + IPV4_CSUM_OFF, new_ipc)?;
    }
    if quoted.proto == IPPROTO_UDP {
        let old_uc: u16 = load(data, end, il4 + UDP_CSUM_OFF)?;
        if old_uc != 0 {
            let mut uc = replace16(addr_delta(old, &new.addr, v6).apply(old_uc), old_port, new.port_be);
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
fn outer(data: usize, end: usize, p: &Packet, dst: bool, new: &Endpoint) -> Option<()> {
    let v6 = p.is_v6;
    let l3 = bounded(usize::from(p.l3_off));
    let (saddr_off, daddr_off) = addr_offsets(v6);
    let (addr_off, old) = if dst { (daddr_off, &p.dst) } else { (saddr_off, &p.src) };
    let csum_off = if v6 { bounded(usize::from(p.l4_off)) + 2 } else { l3 + IPV4_CSUM_OFF };
    let c: u16 = load(data, end, csum_off)?;
    store(data, end, csum_off, addr_delta(old, &new.addr, v6).apply(c))?;
    store_addr(data, end, l3 + addr_off, &new.addr, v6)
}
