//! `lb_xdp_ext`: XDP on the node's external interfaces. Handles traffic to NodePorts on the
//! node's addresses, LoadBalancer IPs and externalIPs (and ClusterIPs routed to the node):
//! DNAT, SNAT for `externalTrafficPolicy: Cluster`, the un-SNAT/reverse NAT of replies from
//! backends on other nodes, ICMP errors, and rejects (sent back with XDP_TX). Translated packets
//! continue with XDP_PASS: the kernel routes them to the local pod or over the underlay.

use aya_ebpf::{
    bindings::xdp_action::{XDP_DROP, XDP_PASS, XDP_TX},
    helpers::{bpf_xdp_adjust_head, bpf_xdp_adjust_tail},
    macros::xdp,
    programs::XdpContext,
};
use lb_common::{
    CNT_DROP_NO_BACKEND, CNT_DROP_REWRITE, CNT_PACKETS, CNT_REJECT_ICMP, CNT_REJECT_TCP, CNT_VERDICT_DROP, CNT_VERDICT_PASS,
    CNT_VERDICT_REJECT, CNT_VERDICT_REVNAT, IPPROTO_TCP, IPPROTO_UDP,
};

use crate::{
    lb::{Hook, Kind, decide},
    maps::{count, scratch},
    parse::Packet,
    reject::{capture, icmp_growth, icmp_len, rst_len, write_icmp_unreach, write_rst},
    rewrite::{apply_icmp, apply_nat},
};

#[xdp]
pub fn lb_xdp_ext(ctx: XdpContext) -> u32 {
    count(CNT_PACKETS);
    match try_xdp(&ctx) {
        Ok(v) => v,
        Err(reason) => {
            count(reason);
            count(CNT_VERDICT_DROP);
            XDP_DROP
        }
    }
}

#[inline(always)]
fn try_xdp(ctx: &XdpContext) -> Result<u32, u32> {
    let (action, p) = decide(ctx.data(), ctx.data_end(), Hook::External)?;
    match action.kind {
        Kind::Drop => Err(action.reason),
        Kind::Nat => {
            let sc = scratch().ok_or(CNT_DROP_REWRITE)?;
            apply_nat(ctx.data(), ctx.data_end(), p, &sc.nat).ok_or(CNT_DROP_REWRITE)?;
            count(sc.nat.verdict);
            Ok(XDP_PASS)
        }
        Kind::Icmp => {
            let sc = scratch().ok_or(CNT_DROP_REWRITE)?;
            apply_icmp(ctx.data(), ctx.data_end(), p, &sc.icmp).ok_or(CNT_DROP_REWRITE)?;
            count(CNT_VERDICT_REVNAT);
            Ok(XDP_PASS)
        }
        Kind::Reject => reject(ctx, p),
        // Pass (and stage kinds, which cannot remain after `decide`).
        _ => Ok(pass(action.reason)),
    }
}

/// Passes untouched, counting the reason if any.
#[inline(always)]
fn pass(reason: u32) -> u32 {
    if reason != 0 {
        count(reason);
    }
    count(CNT_VERDICT_PASS);
    XDP_PASS
}

#[inline(never)]
fn reject(ctx: &XdpContext, p: &Packet) -> Result<u32, u32> {
    let Some(orig) = capture(ctx.data(), ctx.data_end(), p) else {
        return Err(CNT_DROP_NO_BACKEND);
    };
    let len = (ctx.data_end() - ctx.data()) as i32;
    if p.proto == IPPROTO_TCP {
        // SAFETY: helper on our own context.
        if unsafe { bpf_xdp_adjust_tail(ctx.ctx, rst_len(p.is_v6) as i32 - len) } != 0 {
            return Err(CNT_DROP_REWRITE);
        }
        write_rst(ctx.data(), ctx.data_end(), &orig).ok_or(CNT_DROP_REWRITE)?;
        count(CNT_REJECT_TCP);
    } else if p.proto == IPPROTO_UDP {
        // SAFETY: helpers on our own context: room in front for the new headers (the original
        // IP header then sits where the ICMP error quotes it), then cut after the quoted 8
        // bytes. The new length is derived from the old one: subtracting packet pointers after
        // adjust_head would let the compiler fold it into arithmetic on data_end, which the
        // verifier prohibits.
        unsafe {
            let growth = icmp_growth(p.is_v6) as i32;
            if bpf_xdp_adjust_head(ctx.ctx, -growth) != 0 {
                return Err(CNT_DROP_REWRITE);
            }
            if bpf_xdp_adjust_tail(ctx.ctx, icmp_len(p.is_v6) as i32 - (len + growth)) != 0 {
                return Err(CNT_DROP_REWRITE);
            }
        }
        write_icmp_unreach(ctx.data(), ctx.data_end(), &orig).ok_or(CNT_DROP_REWRITE)?;
        count(CNT_REJECT_ICMP);
    } else {
        return Err(CNT_DROP_NO_BACKEND);
    }
    count(CNT_VERDICT_REJECT);
    Ok(XDP_TX)
}
