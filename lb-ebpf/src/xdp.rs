//! `lb_xdp_ext`, XDP on the node's external interfaces (NodePorts on the node's addresses,
//! LoadBalancer IPs, externalIPs, ClusterIPs routed to the node, and the replies of backends on
//! other nodes), and its [`Context`]: packets as a NIC delivers them, with complete checksums,
//! rewritten directly with incremental checksum updates; rejects sent back with `XDP_TX`;
//! translated packets continue with `XDP_PASS` and the kernel routes them.

use aya_ebpf::{
    bindings::xdp_action::{XDP_DROP, XDP_PASS, XDP_TX},
    helpers::{bpf_xdp_adjust_head, bpf_xdp_adjust_tail},
    macros::xdp,
    programs::XdpContext,
};
use lb_common::{CNT_DROP_NO_BACKEND, CNT_DROP_REWRITE, CNT_REJECT_ICMP, CNT_REJECT_TCP, IPPROTO_TCP, IPPROTO_UDP};

use crate::{
    hook::Hook,
    nat::{self, Nat},
    parse::Packet,
    reject::{Original, capture, icmp_growth, icmp_len, rst_len, write_icmp_unreach, write_rst},
    run::{Context, run},
};

#[xdp]
pub fn lb_xdp_ext(ctx: XdpContext) -> u32 {
    run(&ctx, Hook::External)
}

impl Context for XdpContext {
    type Ret = u32;

    #[inline(always)]
    fn data(&self) -> usize {
        XdpContext::data(self)
    }

    #[inline(always)]
    fn data_end(&self) -> usize {
        XdpContext::data_end(self)
    }

    #[inline(always)]
    fn ifindex(&self) -> u32 {
        // SAFETY: reading our own context.
        unsafe { (*self.ctx).ingress_ifindex }
    }

    #[inline(always)]
    fn nat(&self, p: &Packet, nat: &Nat) -> Result<(), ()> {
        let (data, end) = (XdpContext::data(self), XdpContext::data_end(self));
        let plan = nat::plan(p, nat);
        nat::write(data, end, p, nat, &plan).ok_or(())?;
        nat::write_l4_csum(data, end, &plan).ok_or(())
    }

    #[inline(never)]
    fn reject(&self, p: &Packet, orig: &mut Original) -> Result<(u32, u32), u32> {
        capture(XdpContext::data(self), XdpContext::data_end(self), p, orig).ok_or(CNT_DROP_NO_BACKEND)?;
        let orig = &*orig;
        let len = (XdpContext::data_end(self) - XdpContext::data(self)) as i32;
        let kind = if p.proto == IPPROTO_TCP {
            // SAFETY: helper on our own context.
            if unsafe { bpf_xdp_adjust_tail(self.ctx, rst_len(p.is_v6) as i32 - len) } != 0 {
                return Err(CNT_DROP_REWRITE);
            }
            write_rst(XdpContext::data(self), XdpContext::data_end(self), orig).ok_or(CNT_DROP_REWRITE)?;
            CNT_REJECT_TCP
        } else if p.proto == IPPROTO_UDP {
            // SAFETY: helpers on our own context: room in front for the new headers (the
            // original IP header then sits where the ICMP error quotes it), then cut after the
            // quoted 8 bytes. The new length is derived from the old one: subtracting packet
            // pointers after adjust_head would let the compiler fold it into arithmetic on
            // data_end, which the verifier prohibits.
            unsafe {
                let growth = icmp_growth(p.is_v6) as i32;
                if bpf_xdp_adjust_head(self.ctx, -growth) != 0 {
                    return Err(CNT_DROP_REWRITE);
                }
                if bpf_xdp_adjust_tail(self.ctx, icmp_len(p.is_v6) as i32 - (len + growth)) != 0 {
                    return Err(CNT_DROP_REWRITE);
                }
            }
            write_icmp_unreach(XdpContext::data(self), XdpContext::data_end(self), orig).ok_or(CNT_DROP_REWRITE)?;
            CNT_REJECT_ICMP
        } else {
            return Err(CNT_DROP_NO_BACKEND);
        };
        Ok((XDP_TX, kind))
    }

    #[inline(always)]
    fn pass(&self) -> u32 {
        XDP_PASS
    }

    #[inline(always)]
    fn drop(&self) -> u32 {
        XDP_DROP
    }
}
