//! TC programs and their [`Context`]:
//! - `lb_tc_pod_ingress`, on ingress of the host side of every pod interface: pod → service
//!   packets (DNAT, hairpin SNAT) and backend → client replies, before the node routes them;
//! - `lb_tc_ext_ingress`, the TC fallback of the XDP program on external interfaces whose driver
//!   cannot run XDP;
//! - `lb_tc_egress`, on egress of pod and external interfaces: only the replies of a backend on
//!   the node's own address (a hostNetwork pod, point 63), which the node's stack sends without
//!   passing any ingress hook. Other packets pass: a reply entry is keyed backend → client, which
//!   no packet translated at an ingress carries.
//!
//! Translation writes addresses, ports and the IPv4 header checksum directly. The L4 checksum
//! depends on how the skb holds it (`skb->ip_summed`, read through the kernel context: `skb`):
//! a full checksum is updated directly as on XDP; a partial one (local packets: only the
//! pseudo-header is summed yet) gets the address change alone, directly; a complete one
//! (`skb->csum` must follow) or an unknown state goes through `bpf_l4_csum_replace` in diff mode
//! (two calls: the pseudo-header part, then the ports; a part that does not change makes none).

use aya_ebpf::{
    bindings::{BPF_F_MARK_MANGLED_0, BPF_F_PSEUDO_HDR, TC_ACT_OK, TC_ACT_REDIRECT, TC_ACT_SHOT},
    helpers::{bpf_redirect, bpf_skb_adjust_room, bpf_skb_change_tail},
    macros::classifier,
    programs::TcContext,
};
use lb_common::{
    CHECKSUM_NONE, CHECKSUM_PARTIAL, CHECKSUM_UNNECESSARY, CNT_DROP_NO_BACKEND, CNT_DROP_REWRITE, CNT_REJECT_ICMP,
    CNT_REJECT_TCP, IPPROTO_TCP, IPPROTO_UDP,
};

use crate::{
    hook::Hook,
    nat::{self, Nat},
    parse::{ETH_HLEN, Packet},
    reject::{Original, capture, icmp_growth, icmp_len, rst_len, write_icmp_unreach, write_rst},
    run::{Context, run},
    skb,
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

impl Context for TcContext {
    type Ret = i32;

    #[inline(always)]
    fn data(&self) -> usize {
        TcContext::data(self)
    }

    #[inline(always)]
    fn data_end(&self) -> usize {
        TcContext::data_end(self)
    }

    #[inline(always)]
    fn ifindex(&self) -> u32 {
        // SAFETY: reading our own skb.
        unsafe { (*self.skb.skb).ifindex }
    }

    #[inline(always)]
    fn linearize(&self) {
        // Failure only means the packet is shorter than the headers asked for.
        let linear = TcContext::data_end(self) - TcContext::data(self);
        if linear < MAX_HDR_LEN as usize && self.len() > linear as u32 {
            let want = if self.len() < MAX_HDR_LEN { self.len() } else { MAX_HDR_LEN };
            let _ = self.pull_data(want);
        }
    }

    #[inline(always)]
    fn nat(&self, p: &Packet, nat: &Nat) -> Result<(), ()> {
        let plan = nat::plan(p, nat);
        let (data, end) = (TcContext::data(self), TcContext::data_end(self));
        nat::write(data, end, p, nat, &plan).ok_or(())?;
        let Some(l4) = plan.l4 else {
            return Ok(());
        };
        match skb::ip_summed(self.skb.skb) {
            // The field is a full checksum and nothing else follows it: as on XDP.
            Some(CHECKSUM_NONE | CHECKSUM_UNNECESSARY) => nat::write_l4_csum(data, end, &plan).ok_or(()),
            // A local packet: the field holds the pseudo-header's sum only.
            Some(CHECKSUM_PARTIAL) => nat::write_l4_csum_partial(data, end, &plan).ok_or(()),
            // `skb->csum` must follow the field (CHECKSUM_COMPLETE), or the state is unknown: the
            // helper handles both. Size 0: `to` is a checksum difference. Each call costs most of
            // a conntrack hit's time on some CPUs (B1), so a part that does not change makes none.
            _ => {
                let mangled = if l4.udp { u64::from(BPF_F_MARK_MANGLED_0) } else { 0 };
                if plan.addr_changed {
                    self.l4_csum_replace(l4.off, 0, u64::from(plan.pseudo.wsum()), u64::from(BPF_F_PSEUDO_HDR) | mangled)
                        .map_err(|_| ())?;
                }
                if plan.port_changed {
                    self.l4_csum_replace(l4.off, 0, u64::from(plan.ports.wsum()), mangled).map_err(|_| ())?;
                }
                Ok(())
            }
        }
    }

    #[inline(never)]
    fn reject(&self, p: &Packet, orig: &mut Original) -> Result<(i32, u32), u32> {
        capture(TcContext::data(self), TcContext::data_end(self), p, orig).ok_or(CNT_DROP_NO_BACKEND)?;
        let orig = &*orig;
        let skb = self.skb.skb;
        let kind = if p.proto == IPPROTO_TCP {
            // SAFETY: helper on our own context.
            if unsafe { bpf_skb_change_tail(skb.cast(), rst_len(p.is_v6) as u32, 0) } != 0 {
                return Err(CNT_DROP_REWRITE);
            }
            write_rst(TcContext::data(self), TcContext::data_end(self), orig).ok_or(CNT_DROP_REWRITE)?;
            CNT_REJECT_TCP
        } else if p.proto == IPPROTO_UDP {
            // SAFETY: helpers on our own context. Room for the new IP + ICMP headers goes after
            // the MAC header, so the original IP header ends up quoted where ICMP wants it.
            unsafe {
                if bpf_skb_adjust_room(skb.cast(), icmp_growth(p.is_v6) as i32, BPF_ADJ_ROOM_MAC, 0) != 0
                    || bpf_skb_change_tail(skb.cast(), icmp_len(p.is_v6) as u32, 0) != 0
                {
                    return Err(CNT_DROP_REWRITE);
                }
            }
            write_icmp_unreach(TcContext::data(self), TcContext::data_end(self), orig).ok_or(CNT_DROP_REWRITE)?;
            CNT_REJECT_ICMP
        } else {
            return Err(CNT_DROP_NO_BACKEND);
        };
        // Back out of the interface the packet came in on.
        // SAFETY: reading the ingress ifindex of our own skb; a helper without pointers.
        let r = unsafe { bpf_redirect((*skb).ifindex, 0) };
        Ok((if r as i32 == TC_ACT_REDIRECT { TC_ACT_REDIRECT } else { TC_ACT_SHOT }, kind))
    }

    #[inline(always)]
    fn pass(&self) -> i32 {
        TC_ACT_OK
    }

    #[inline(always)]
    fn drop(&self) -> i32 {
        TC_ACT_SHOT
    }
}
