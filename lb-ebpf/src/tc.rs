//! TC programs. `lb_tc_pod_ingress` runs on ingress of the host side of every pod interface, so
//! it sees pod → service packets (DNAT) and backend → client replies (reverse NAT) before the
//! node routes them. The rewrite happens before routing, so the kernel forwards the translated
//! packet like any other.

use aya_ebpf::{
    bindings::{BPF_F_MARK_MANGLED_0, BPF_F_PSEUDO_HDR, TC_ACT_OK, TC_ACT_SHOT},
    macros::classifier,
    programs::TcContext,
};
use lb_common::{
    CNT_DROP_REWRITE, CNT_PACKETS, CNT_PASS_BAD_L3, CNT_PASS_NOT_IP, CNT_VERDICT_DNAT,
    CNT_VERDICT_DROP, CNT_VERDICT_PASS, CNT_VERDICT_REVNAT, IPPROTO_TCP,
};

use crate::{
    lb::{Action, process},
    maps::count,
    parse::{
        ETH_HLEN, IPV4_CSUM_OFF, IPV4_DADDR_OFF, IPV4_SADDR_OFF, Packet, Parsed, TCP_CSUM_OFF,
        UDP_CSUM_OFF, parse,
    },
};

/// Headers we may need in the linear part of the skb: Ethernet, IPv4 with the longest options,
/// TCP without options.
const MAX_HDR_LEN: u32 = (ETH_HLEN + 60 + 20) as u32;

#[classifier]
pub fn lb_tc_pod_ingress(ctx: TcContext) -> i32 {
    count(CNT_PACKETS);
    let verdict = match try_pod_ingress(&ctx) {
        Ok(v) => v,
        Err(reason) => {
            count(reason);
            count(CNT_VERDICT_DROP);
            TC_ACT_SHOT as i32
        }
    };
    verdict
}

/// `Ok(verdict)` with its verdict counted, or `Err(drop reason)`.
#[inline(always)]
fn try_pod_ingress(ctx: &TcContext) -> Result<i32, u32> {
    // Headers of locally generated or forwarded packets may sit partly in paged data; make
    // them directly readable. Failure only means the packet is shorter than that.
    let linear = ctx.data_end() - ctx.data();
    if linear < MAX_HDR_LEN as usize && ctx.len() > linear as u32 {
        let want = if ctx.len() < MAX_HDR_LEN {
            ctx.len()
        } else {
            MAX_HDR_LEN
        };
        let _ = ctx.pull_data(want);
    }
    let p = match parse(ctx.data(), ctx.data_end()) {
        Parsed::NotIp => return Ok(pass(CNT_PASS_NOT_IP)),
        Parsed::BadL3 => return Ok(pass(CNT_PASS_BAD_L3)),
        Parsed::Ip(p) => p,
    };
    match process(&p) {
        Action::Pass => {
            count(CNT_VERDICT_PASS);
            Ok(TC_ACT_OK as i32)
        }
        Action::Drop(reason) => Err(reason),
        Action::Dnat { addr, port_be } => {
            rewrite(
                ctx,
                &p,
                p.l3_off + IPV4_DADDR_OFF,
                p.dst_v4,
                addr,
                2,
                p.dport_be,
                port_be,
            )?;
            count(CNT_VERDICT_DNAT);
            Ok(TC_ACT_OK as i32)
        }
        Action::RevNat { addr, port_be } => {
            rewrite(
                ctx,
                &p,
                p.l3_off + IPV4_SADDR_OFF,
                p.src_v4,
                addr,
                0,
                p.sport_be,
                port_be,
            )?;
            count(CNT_VERDICT_REVNAT);
            Ok(TC_ACT_OK as i32)
        }
    }
}

#[inline(always)]
fn pass(reason: u32) -> i32 {
    count(reason);
    count(CNT_VERDICT_PASS);
    TC_ACT_OK as i32
}

/// Rewrites one IPv4 address (at `addr_off`) and one L4 port (at `l4_off + port_off`), fixing
/// the IPv4 header checksum and the TCP/UDP checksum (which covers the address through the
/// pseudo-header). The kernel helpers handle both a complete checksum and a CHECKSUM_PARTIAL
/// one (pseudo-header only, as locally generated packets carry); a UDP checksum of 0 ("none")
/// stays 0 and a computed 0 is written as 0xffff (`BPF_F_MARK_MANGLED_0`).
#[inline(always)]
#[allow(clippy::too_many_arguments, reason = "one rewrite, spelled out")]
fn rewrite(
    ctx: &TcContext,
    p: &Packet,
    addr_off: usize,
    old_v4: [u8; 4],
    new_addr: [u8; 16],
    port_off: usize,
    old_port_be: u16,
    new_port_be: u16,
) -> Result<(), u32> {
    let new_v4 = [new_addr[12], new_addr[13], new_addr[14], new_addr[15]];
    // Raw (network-order) words: checksum arithmetic is byte-order independent as long as both
    // sides use the same representation.
    let old_ip = u32::from_ne_bytes(old_v4);
    let new_ip = u32::from_ne_bytes(new_v4);
    let (csum_off, mangled) = if p.proto == IPPROTO_TCP {
        (p.l4_off + TCP_CSUM_OFF, 0)
    } else {
        (p.l4_off + UDP_CSUM_OFF, u64::from(BPF_F_MARK_MANGLED_0))
    };
    if old_ip != new_ip {
        ctx.l4_csum_replace(
            csum_off,
            u64::from(old_ip),
            u64::from(new_ip),
            u64::from(BPF_F_PSEUDO_HDR) | mangled | 4,
        )
        .map_err(|_| CNT_DROP_REWRITE)?;
        ctx.l3_csum_replace(
            p.l3_off + IPV4_CSUM_OFF,
            u64::from(old_ip),
            u64::from(new_ip),
            4,
        )
        .map_err(|_| CNT_DROP_REWRITE)?;
        ctx.store(addr_off, &new_v4, 0)
            .map_err(|_| CNT_DROP_REWRITE)?;
    }
    if old_port_be != new_port_be {
        ctx.l4_csum_replace(
            csum_off,
            u64::from(old_port_be),
            u64::from(new_port_be),
            mangled | 2,
        )
        .map_err(|_| CNT_DROP_REWRITE)?;
        ctx.store(p.l4_off + port_off, &new_port_be, 0)
            .map_err(|_| CNT_DROP_REWRITE)?;
    }
    Ok(())
}
