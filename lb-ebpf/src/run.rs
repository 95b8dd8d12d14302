//! The one run path of the packet programs: parse once, decide, apply the verdict through the
//! hook's [`Context`] (XDP or TC), count exactly one verdict. Every stage is inlined into the
//! entry point, apart from the rare ICMP-error steps.
//!
//! # The decision
//! 1. Not IP, or a broken IP header: pass (with its reason).
//! 2. An ICMP error quoting a translated flow: translate it (see `icmp`).
//! 3. The address filter: a destination that is no frontend's and a source that is no
//!    backend's pass at once (most of a node's traffic).
//! 4. To a frontend: an established flow's translation (one conntrack lookup), else the frontend
//!    itself and a new flow (selection, conntrack entries, SNAT where the policy says).
//! 5. From a backend: the reverse translation of a reply.
//!
//! Step 3 comes first where the headers alone show that steps 1 and 2 cannot apply
//! (`parse::filter_addrs`): such a packet that is none of ours passes before it is parsed.
//!
//! Later fragments take their first fragment's ports; a packet to a service address that cannot
//! be translated (truncated L4 header, orphan fragment) is dropped, never passed untranslated.

use lb_common::{
    CNT_DROP_BAD_L4, CNT_DROP_FRAGMENT, CNT_DROP_NO_BACKEND, CNT_DROP_NO_LOCAL_BACKEND, CNT_DROP_REWRITE, CNT_DROP_SOURCE_RANGE,
    CNT_NEW_FLOWS, CNT_PACKETS, CNT_PASS_BAD_L3, CNT_PASS_NOT_IP, CNT_VERDICT_DROP, CNT_VERDICT_PASS, CNT_VERDICT_REJECT,
    CNT_VERDICT_REVNAT, EVENT_DROP, EVENT_NEW_FLOW, EVENT_REJECT, IPPROTO_TCP, SVC_F_MAGLEV, SVC_F_SOURCE_RANGES,
};

use crate::{
    clock::now,
    conntrack::{self, random},
    counters::{count, count_flow},
    frag,
    hook::Hook,
    icmp,
    monitor::{About, report},
    nat::Nat,
    parse::{Packet, Parsed, TCP_FLAG_RST, filter_addrs, parse},
    reject::Original,
    scratch::{Flow, Keys, Scratch, scratch},
    select::{self, endpoint_set},
    service::{frontend, is_service_addr, may_be_ours, source_allowed},
};

/// What happens to a packet.
pub enum Verdict {
    /// Passed untouched, with a `CNT_PASS_*` reason or 0.
    Pass(u32),
    /// Dropped, with its `CNT_DROP_*` reason.
    Drop(u32),
    /// Translated (the translation is in the scratch space's `flow.nat`).
    Nat,
    /// A new flow, translated like `Nat` (reported to a monitor that asks for flows).
    NewFlow,
    /// An ICMP error translated (the translation is in the scratch space).
    Icmp,
    /// Answered with a TCP RST or an ICMP port unreachable (no endpoints, point 37).
    Reject,
}

/// What the XDP and TC programs do differently: how the packet is reached, how it is rewritten
/// and answered, and their return codes.
pub trait Context {
    type Ret;
    fn data(&self) -> usize;
    fn data_end(&self) -> usize;
    /// The interface the packet came in on (for events).
    fn ifindex(&self) -> u32;
    /// Makes the headers directly accessible (TC: a local packet's may sit in paged data).
    fn linearize(&self) {}
    /// Applies a translation to the packet `p` describes.
    fn nat(&self, p: &Packet, nat: &Nat) -> Result<(), ()>;
    /// Turns the packet into a RST or an ICMP port unreachable sent back where it came from:
    /// the return code and the `CNT_REJECT_*` counter, or a drop reason.
    fn reject(&self, p: &Packet, orig: &mut Original) -> Result<(Self::Ret, u32), u32>;
    /// The packet goes on (untouched or translated).
    fn pass(&self) -> Self::Ret;
    fn drop(&self) -> Self::Ret;
}

/// Runs a program: every packet ends in exactly one verdict counter.
#[inline(always)]
pub fn run<C: Context>(ctx: &C, hook: Hook) -> C::Ret {
    count(CNT_PACKETS);
    ctx.linearize();
    // Step 3 first where the headers allow it (most of a node's traffic): a packet the address
    // filter finds none of ours passes before the scratch space is reached or anything written.
    let ours = filter_addrs(ctx.data(), ctx.data_end(), may_be_ours);
    if ours == Some((false, false)) {
        count(CNT_VERDICT_PASS);
        return ctx.pass();
    }
    // SAFETY: the one reference to the scratch space in this run.
    let Some(sc) = (unsafe { scratch() }) else {
        return drop(ctx, CNT_DROP_REWRITE);
    };
    let verdict = decide(ctx.data(), ctx.data_end(), hook, ours, sc);
    let p = &sc.pkt;
    // An event for `lb monitor` (only the drop, reject and new-flow paths look whether one
    // runs); every drop of a parsed packet is reported.
    let event = |kind, reason, svc_id, backend_id| {
        report(p, &About { kind, reason, svc_id, backend_id, hook, ifindex: ctx.ifindex() });
    };
    let dropped = |reason| {
        event(EVENT_DROP, reason, 0, 0);
        drop(ctx, reason)
    };
    match verdict {
        Verdict::Pass(reason) => {
            if reason != 0 {
                count(reason);
            }
            count(CNT_VERDICT_PASS);
            ctx.pass()
        }
        Verdict::Drop(reason) => dropped(reason),
        Verdict::Nat | Verdict::NewFlow => match ctx.nat(p, &sc.flow.nat) {
            Ok(()) => {
                count(sc.flow.nat.verdict);
                if matches!(verdict, Verdict::NewFlow) {
                    event(EVENT_NEW_FLOW, 0, sc.flow.svc.svc_id, sc.flow.backend_id);
                }
                ctx.pass()
            }
            Err(()) => dropped(CNT_DROP_REWRITE),
        },
        Verdict::Icmp => match icmp::apply(ctx.data(), ctx.data_end(), p, &sc.keys.icmp) {
            Some(()) => {
                count(CNT_VERDICT_REVNAT);
                ctx.pass()
            }
            None => dropped(CNT_DROP_REWRITE),
        },
        Verdict::Reject => match ctx.reject(p, &mut sc.keys.orig) {
            Ok((ret, kind)) => {
                count(kind);
                count(CNT_VERDICT_REJECT);
                event(EVENT_REJECT, kind, sc.flow.svc.svc_id, 0);
                ret
            }
            Err(reason) => dropped(reason),
        },
    }
}

#[inline(always)]
fn drop<C: Context>(ctx: &C, reason: u32) -> C::Ret {
    count(reason);
    count(CNT_VERDICT_DROP);
    ctx.drop()
}

/// The verdict for the packet in `[data, end)` (module docs); `ours`: the address filter's
/// answer if `run` already asked it.
#[inline(always)]
fn decide(data: usize, end: usize, hook: Hook, ours: Option<(bool, bool)>, sc: &mut Scratch) -> Verdict {
    let Scratch { pkt: p, keys, flow } = sc;
    match parse(data, end, p) {
        Parsed::NotIp => return Verdict::Pass(CNT_PASS_NOT_IP),
        Parsed::BadL3 => return Verdict::Pass(CNT_PASS_BAD_L3),
        Parsed::Ip => {}
    }
    if p.is_icmp_error {
        return if icmp::translation(p, keys) { Verdict::Icmp } else { Verdict::Pass(0) };
    }
    // `to_service`: possibly to a service address (what may not pass untranslated when it cannot
    // be translated); `to_frontend`: frontends are looked up (never at egress: the ingress hooks
    // translate those).
    let (to_service, from_backend) = ours.unwrap_or_else(|| {
        let (src, dst) = p.addr_words();
        may_be_ours(src, dst)
    });
    let to_frontend = to_service && hook != Hook::Egress;
    if !to_service && !from_backend {
        return Verdict::Pass(0);
    }
    let now = now();
    if p.frag_later {
        if !frag::follow(p, keys, now) {
            return if to_service && is_service_addr(p.dst) { Verdict::Drop(CNT_DROP_FRAGMENT) } else { Verdict::Pass(0) };
        }
    } else if !p.has_ports {
        return if p.l4_truncated && to_service && is_service_addr(p.dst) {
            Verdict::Drop(CNT_DROP_BAD_L4)
        } else {
            Verdict::Pass(0)
        };
    } else if p.frag_first {
        frag::remember_first(p, keys, now);
    }
    if to_frontend {
        if conntrack::forward(p, keys, &mut flow.nat, hook, from_backend, now) {
            return Verdict::Nat;
        }
        if frontend(p, &mut flow.svc) {
            // A later fragment never starts a flow: its first fragment did, or was dropped.
            if p.frag_later {
                return Verdict::Drop(CNT_DROP_FRAGMENT);
            }
            return new_flow(p, keys, flow, hook, now);
        }
    }
    if from_backend && conntrack::reply(p, keys, &mut flow.nat, now) {
        return Verdict::Nat;
    }
    Verdict::Pass(0)
}

/// A new flow to frontend `svc`: source ranges, the endpoint set, a backend, its conntrack
/// entries.
#[inline(always)]
fn new_flow(p: &Packet, keys: &mut Keys, flow: &mut Flow, hook: Hook, now: u64) -> Verdict {
    let svc = &flow.svc;
    // Point 48: loadBalancerSourceRanges.
    if svc.flags & SVC_F_SOURCE_RANGES != 0 && !source_allowed(p) {
        return Verdict::Drop(CNT_DROP_SOURCE_RANGE);
    }
    let set = endpoint_set(svc, hook == Hook::Pod);
    if set.slots == 0 {
        // Points 37, 38: no endpoint anywhere → reject; policy Local without a local one → drop.
        // A RST is never answered (RFC 793), whatever the service.
        if set.drop_if_empty {
            return Verdict::Drop(CNT_DROP_NO_LOCAL_BACKEND);
        }
        if p.proto == IPPROTO_TCP && p.tcp_flags & TCP_FLAG_RST != 0 {
            return Verdict::Drop(CNT_DROP_NO_BACKEND);
        }
        return Verdict::Reject;
    }
    let hash = if svc.flags & SVC_F_MAGLEV != 0 { select::flow_hash(p) } else { random() };
    match select::pick(svc, set, hash, (&mut keys.akey, &mut keys.aval), p.src, now) {
        Ok((id, be)) => {
            flow.backend_id = id;
            flow.be = be;
        }
        Err(reason) => return Verdict::Drop(reason),
    }
    match conntrack::establish(p, keys, flow, hook, now) {
        Ok(()) => {
            count(CNT_NEW_FLOWS);
            count_flow(flow.svc.svc_id, flow.backend_id, p.ip_len, true);
            Verdict::NewFlow
        }
        Err(reason) => Verdict::Drop(reason),
    }
}
