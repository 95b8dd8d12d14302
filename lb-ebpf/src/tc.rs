//! TC programs.
//! - `lb_tc_pod_ingress` runs on ingress of the host side of every pod interface: pod → service
//!   packets (DNAT, hairpin SNAT) and backend → client replies (reverse NAT), before the node
//!   routes them, so the kernel forwards the translated packet like any other.
//! - `lb_tc_ext_ingress` is the TC fallback of the XDP program for external interfaces whose
//!   driver cannot run XDP: same logic, skb rewrite.
//! - `lb_tc_egress` runs on egress of pod and external interfaces and only translates replies:
//!   those of a backend on the node's own address (a hostNetwork pod, point 63), which the
//!   node's stack sends out without passing any ingress hook (towards a local pod through its
//!   interface, towards an outside client through the external one). Other packets pass: a
//!   reply entry is keyed backend → client, which no packet translated at ingress carries.

use aya_ebpf::{
    bindings::{BPF_F_MARK_MANGLED_0, BPF_F_PSEUDO_HDR, TC_ACT_OK, TC_ACT_REDIRECT, TC_ACT_SHOT},
    helpers::{bpf_redirect, bpf_skb_adjust_room, bpf_skb_change_tail},
    macros::classifier,
    programs::TcContext,
};
use lb_common::{
    CNT_DROP_NO_BACKEND, CNT_DROP_REWRITE, CNT_PACKETS, CNT_REJECT_ICMP, CNT_REJECT_TCP, CNT_VERDICT_DROP, CNT_VERDICT_PASS,
    CNT_VERDICT_REJECT, IPPROTO_TCP, IPPROTO_UDP,
};

use crate::{
    lb::{Endpoint, Hook, Kind, Nat, decide},
    maps::{count, scratch},
    parse::{
        ETH_HLEN, IPV4_CSUM_OFF, IPV4_DADDR_OFF, IPV4_SADDR_OFF, IPV6_DADDR_OFF, IPV6_SADDR_OFF, Packet, TCP_CSUM_OFF,
        UDP_CSUM_OFF,
    },
    reject::{capture, icmp_growth, icmp_len, rst_len, write_icmp_unreach, write_rst},
    rewrite::apply_icmp,
};

/// Headers we may need in the linear part of the skb: Ethernet, IPv4 with the longest options,
/// and an ICMP error quoting another IPv4 header with options and 8 bytes.
const MAX_HDR_LEN: u32 = (ETH_HLEN + 60 + 8 + 60 + 8) as u32;
const BPF_ADJ_ROOM_MAC: u32 = 1;

#[classifier]
pub fn lb_tc_pod_ingress(ctx: TcContext) -> i32 {
    run(&ctx, Hook::Pod)
}

#[classifier]
pub fn lb_tc_ext_ingress(ctx: TcContext) -> i32 {
    run(&ctx, Hook::External)
}

#[classifier]
pub fn lb_tc_egress(ctx: TcContext) -> i32 {
    run(&ctx, Hook::Egress)
}

/// Every packet ends in exactly one verdict counter.
#[inline(always)]
fn run(ctx: &TcContext, hook: Hook) -> i32 {
    count(CNT_PACKETS);
    match try_run(ctx, hook) {
        Ok(v) => v,
        Err(reason) => {
            count(reason);
            count(CNT_VERDICT_DROP);
            TC_ACT_SHOT
        }
    }
}

/// `Ok(verdict)` with its verdict counted, or `Err(drop reason)`.
#[inline(always)]
fn try_run(ctx: &TcContext, hook: Hook) -> Result<i32, u32> {
    // Headers of locally generated or forwarded packets may sit partly in paged data; make
    // them directly accessible (and writable). Failure only means the packet is shorter.
    let linear = ctx.data_end() - ctx.data();
    if linear < MAX_HDR_LEN as usize && ctx.len() > linear as u32 {
        let want = if ctx.len() < MAX_HDR_LEN { ctx.len() } else { MAX_HDR_LEN };
        let _ = ctx.pull_data(want);
    }
    let (action, p) = decide(ctx.data(), ctx.data_end(), hook)?;
    match action.kind {
        Kind::Drop => Err(action.reason),
        Kind::Nat => {
            let sc = scratch().ok_or(CNT_DROP_REWRITE)?;
            apply_nat(ctx, p, &sc.nat)?;
            count(sc.nat.verdict);
            Ok(TC_ACT_OK)
        }
        Kind::Icmp => {
            let sc = scratch().ok_or(CNT_DROP_REWRITE)?;
            apply_icmp(ctx.data(), ctx.data_end(), p, &sc.icmp).ok_or(CNT_DROP_REWRITE)?;
            count(lb_common::CNT_VERDICT_REVNAT);
            Ok(TC_ACT_OK)
        }
        Kind::Reject => reject(ctx, p),
        // Pass (and stage kinds, which cannot remain after `decide`).
        _ => Ok(pass(action.reason)),
    }
}

/// Passes untouched, counting the reason if any.
#[inline(always)]
fn pass(reason: u32) -> i32 {
    if reason != 0 {
        count(reason);
    }
    count(CNT_VERDICT_PASS);
    TC_ACT_OK
}

#[inline(never)]
fn apply_nat(ctx: &TcContext, p: &Packet, nat: &Nat) -> Result<(), u32> {
    let (saddr_off, daddr_off) = if p.is_v6 { (IPV6_SADDR_OFF, IPV6_DADDR_OFF) } else { (IPV4_SADDR_OFF, IPV4_DADDR_OFF) };
    if nat.dst.set {
        rewrite(ctx, p, daddr_off, &p.dst, nat.dst.to, 2, p.dport_be)?;
    }
    if nat.src.set {
        rewrite(ctx, p, saddr_off, &p.src, nat.src.to, 0, p.sport_be)?;
    }
    Ok(())
}

/// Rewrites one address (at `addr_off` in the IP header) and, when the L4 header is in the
/// packet, one port (at `l4_off + port_off`), fixing the IPv4 header checksum and the TCP/UDP
/// checksum (which covers the address through the pseudo-header: one word for IPv4, four for
/// IPv6). The kernel helpers handle both a complete checksum and a CHECKSUM_PARTIAL one
/// (pseudo-header only, as locally generated packets carry); an IPv4 UDP checksum of 0 ("none")
/// stays 0 and a computed 0 is written as 0xffff (`BPF_F_MARK_MANGLED_0`).
#[inline(always)]
fn rewrite(
    ctx: &TcContext,
    p: &Packet,
    addr_off: usize,
    old: &[u8; 16],
    new: Endpoint,
    port_off: usize,
    old_port_be: u16,
) -> Result<(), u32> {
    let l3 = usize::from(p.l3_off);
    let l4 = if !p.l4_in_packet {
        None
    } else if p.proto == IPPROTO_TCP {
        Some((usize::from(p.l4_off) + TCP_CSUM_OFF, 0))
    } else if p.proto == IPPROTO_UDP {
        Some((usize::from(p.l4_off) + UDP_CSUM_OFF, u64::from(BPF_F_MARK_MANGLED_0)))
    } else {
        None
    };
    if old != &new.addr {
        // Raw (network-order) words: checksum arithmetic is byte-order independent as long as
        // both sides use the same representation.
        let first = if p.is_v6 { 0 } else { 3 };
        let mut i = first;
        while i < 4 {
            let from = u32::from_ne_bytes([old[i * 4], old[i * 4 + 1], old[i * 4 + 2], old[i * 4 + 3]]);
            let to = u32::from_ne_bytes([new.addr[i * 4], new.addr[i * 4 + 1], new.addr[i * 4 + 2], new.addr[i * 4 + 3]]);
            if let Some((csum_off, mangled)) = l4 {
                ctx.l4_csum_replace(csum_off, u64::from(from), u64::from(to), u64::from(BPF_F_PSEUDO_HDR) | mangled | 4)
                    .map_err(|_| CNT_DROP_REWRITE)?;
            }
            if !p.is_v6 {
                ctx.l3_csum_replace(l3 + IPV4_CSUM_OFF, u64::from(from), u64::from(to), 4).map_err(|_| CNT_DROP_REWRITE)?;
            }
            i += 1;
        }
        if p.is_v6 {
            ctx.store(l3 + addr_off, &new.addr, 0).map_err(|_| CNT_DROP_REWRITE)?;
        } else {
            let v4 = [new.addr[12], new.addr[13], new.addr[14], new.addr[15]];
            ctx.store(l3 + addr_off, &v4, 0).map_err(|_| CNT_DROP_REWRITE)?;
        }
    }
    if let Some((csum_off, mangled)) = l4
        && old_port_be != new.port_be
    {
        ctx.l4_csum_replace(csum_off, u64::from(old_port_be), u64::from(new.port_be), mangled | 2)
            .map_err(|_| CNT_DROP_REWRITE)?;
        ctx.store(usize::from(p.l4_off) + port_off, &new.port_be, 0).map_err(|_| CNT_DROP_REWRITE)?;
    }
    Ok(())
}

/// Turns the packet into a TCP RST or an ICMP port unreachable and sends it back out of the
/// interface it came in on.
#[inline(never)]
fn reject(ctx: &TcContext, p: &Packet) -> Result<i32, u32> {
    let Some(orig) = capture(ctx.data(), ctx.data_end(), p) else {
        return Err(CNT_DROP_NO_BACKEND);
    };
    let skb = ctx.skb.skb;
    if p.proto == IPPROTO_TCP {
        // SAFETY: helper on our own context.
        if unsafe { bpf_skb_change_tail(skb.cast(), rst_len(p.is_v6) as u32, 0) } != 0 {
            return Err(CNT_DROP_REWRITE);
        }
        write_rst(ctx.data(), ctx.data_end(), &orig).ok_or(CNT_DROP_REWRITE)?;
        count(CNT_REJECT_TCP);
    } else if p.proto == IPPROTO_UDP {
        // SAFETY: helpers on our own context. Room for the new IPv4 + ICMP headers goes after
        // the MAC header, so the original IPv4 header ends up quoted where ICMP wants it.
        unsafe {
            if bpf_skb_adjust_room(skb.cast(), icmp_growth(p.is_v6) as i32, BPF_ADJ_ROOM_MAC, 0) != 0
                || bpf_skb_change_tail(skb.cast(), icmp_len(p.is_v6) as u32, 0) != 0
            {
                return Err(CNT_DROP_REWRITE);
            }
        }
        write_icmp_unreach(ctx.data(), ctx.data_end(), &orig).ok_or(CNT_DROP_REWRITE)?;
        count(CNT_REJECT_ICMP);
    } else {
        return Err(CNT_DROP_NO_BACKEND);
    }
    count(CNT_VERDICT_REJECT);
    // SAFETY: reading the ingress ifindex of our own skb.
    let ifindex = unsafe { (*skb).ifindex };
    // SAFETY: helper without pointers.
    let r = unsafe { bpf_redirect(ifindex, 0) };
    Ok(if r as i32 == TC_ACT_REDIRECT { TC_ACT_REDIRECT } else { TC_ACT_SHOT })
}
