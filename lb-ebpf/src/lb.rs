//! Hook-independent service logic: frontend lookup, backend selection, conntrack. Returns what
//! to do with the packet; the entry point performs the rewrite.
//!
//! # Conntrack semantics
//! Each translated flow has a forward entry (client → frontend) and a reply entry
//! (backend → client). Entries expire after `CT_*_LIFETIME_NS` without traffic, after
//! `CT_TCP_CLOSING_LIFETIME_NS` once a FIN or RST was seen, and the LRU reclaims the least
//! recently used under pressure.
//!
//! When a backend is removed from a service:
//! - TCP flows keep going to it, exactly like kube-proxy's conntrack DNAT entries: a pod that is
//!   terminating gracefully can finish its connections, and a pod that is gone simply stops
//!   answering (the client times out or gets a RST from whoever holds the address). New
//!   connections never select it.
//! - UDP flows select a new backend on their next packet (semantics point 57: kube-proxy deletes
//!   UDP conntrack entries of removed endpoints).

use aya_ebpf::helpers::{bpf_get_prandom_u32, bpf_ktime_get_ns};
use lb_common::{
    CNT_CT_HIT, CNT_CT_RESELECT, CNT_DROP_BACKEND_MISSING, CNT_DROP_BAD_L4, CNT_DROP_CT_INSERT,
    CNT_DROP_FRAGMENT, CNT_DROP_NO_BACKEND, CNT_NEW_FLOWS, CT_DIR_FORWARD, CT_DIR_REPLY,
    CT_F_CLOSING, CT_TCP_CLOSING_LIFETIME_NS, CT_TCP_LIFETIME_NS, CT_UDP_LIFETIME_NS, CtKey,
    CtValue, IPPROTO_TCP, SVC_F_ADDR_MARKER, SelectKey, ServiceKey, ServiceValue,
};

use crate::{
    maps::{LB_BACKENDS, LB_CONNTRACK, LB_SELECT, LB_SERVICES, count, count_service},
    parse::{Packet, TCP_FLAG_ACK, TCP_FLAG_FIN, TCP_FLAG_RST, TCP_FLAG_SYN},
};

/// What the entry point must do with a packet.
pub enum Action {
    /// Not service traffic: pass untouched.
    Pass,
    /// Drop, counting this `CNT_DROP_*` reason.
    Drop(u32),
    /// Forward direction: rewrite destination to `addr:port`.
    Dnat { addr: [u8; 16], port_be: u16 },
    /// Reply direction: rewrite source to `addr:port`.
    RevNat { addr: [u8; 16], port_be: u16 },
}

#[inline(always)]
fn now_ns() -> u64 {
    // SAFETY: helper without arguments.
    unsafe { bpf_ktime_get_ns() }
}

#[inline(always)]
fn lifetime_ns(proto: u8, flags: u16) -> u64 {
    if proto != IPPROTO_TCP {
        CT_UDP_LIFETIME_NS
    } else if flags & CT_F_CLOSING != 0 {
        CT_TCP_CLOSING_LIFETIME_NS
    } else {
        CT_TCP_LIFETIME_NS
    }
}

/// Refreshes an entry for a packet of its flow; marks it closing on FIN/RST.
#[inline(always)]
fn touch(ct: *mut CtValue, p: &Packet, now: u64) {
    // SAFETY: pointer from a map lookup, valid for this program run. Concurrent updates of the
    // same entry from another CPU can only race on these two plain stores, which is harmless.
    unsafe {
        (*ct).last_seen_ns = now;
        if p.tcp_flags & (TCP_FLAG_FIN | TCP_FLAG_RST) != 0 {
            (*ct).flags |= CT_F_CLOSING;
        }
    }
}

/// Decides what to do with a parsed IPv4 packet.
#[inline(always)]
pub fn process(p: &Packet) -> Action {
    if !p.has_ports {
        // Fragments and truncated L4 headers cannot be translated; never leak them to a
        // service address untranslated.
        if p.is_fragment || p.l4_truncated {
            let marker = ServiceKey {
                addr: p.dst,
                port_be: 0,
                proto: 0,
                _pad: 0,
            };
            // SAFETY: read-only lookup; the value is not used.
            if unsafe { LB_SERVICES.get(&marker) }.is_some() {
                return Action::Drop(if p.is_fragment {
                    CNT_DROP_FRAGMENT
                } else {
                    CNT_DROP_BAD_L4
                });
            }
        }
        return Action::Pass;
    }

    let key = ServiceKey {
        addr: p.dst,
        port_be: p.dport_be,
        proto: p.proto,
        _pad: 0,
    };
    // SAFETY: the value is copied out immediately; userspace replaces whole values.
    if let Some(svc) = unsafe { LB_SERVICES.get(&key) } {
        let svc = *svc;
        if svc.flags & SVC_F_ADDR_MARKER == 0 {
            return forward(p, &svc);
        }
    }
    reply(p)
}

#[inline(always)]
fn reply(p: &Packet) -> Action {
    let key = CtKey {
        src: p.src,
        dst: p.dst,
        sport_be: p.sport_be,
        dport_be: p.dport_be,
        proto: p.proto,
        dir: CT_DIR_REPLY,
        _pad: [0; 2],
    };
    let Some(ct) = LB_CONNTRACK.get_ptr_mut(&key) else {
        return Action::Pass;
    };
    let now = now_ns();
    // SAFETY: pointer from a map lookup, valid for this program run.
    let v = unsafe { *ct };
    if now.wrapping_sub(v.last_seen_ns) > lifetime_ns(p.proto, v.flags) {
        return Action::Pass;
    }
    touch(ct, p, now);
    count_service(v.svc_id, p.ip_len, false);
    Action::RevNat {
        addr: v.nat_addr,
        port_be: v.nat_port_be,
    }
}

#[inline(always)]
fn forward(p: &Packet, svc: &ServiceValue) -> Action {
    let now = now_ns();
    let fkey = CtKey {
        src: p.src,
        dst: p.dst,
        sport_be: p.sport_be,
        dport_be: p.dport_be,
        proto: p.proto,
        dir: CT_DIR_FORWARD,
        _pad: [0; 2],
    };
    let new_syn =
        p.proto == IPPROTO_TCP && p.tcp_flags & (TCP_FLAG_SYN | TCP_FLAG_ACK) == TCP_FLAG_SYN;
    if let Some(ct) = LB_CONNTRACK.get_ptr_mut(&fkey) {
        // SAFETY: pointer from a map lookup, valid for this program run.
        let v = unsafe { *ct };
        let alive = now.wrapping_sub(v.last_seen_ns) <= lifetime_ns(p.proto, v.flags);
        // A SYN on a closing entry is a new connection reusing the 4-tuple.
        let reused = new_syn && v.flags & CT_F_CLOSING != 0;
        if alive && !reused && v.svc_id == svc.svc_id {
            if p.proto == IPPROTO_TCP {
                touch(ct, p, now);
                count(CNT_CT_HIT);
                count_service(v.svc_id, p.ip_len, false);
                return Action::Dnat {
                    addr: v.nat_addr,
                    port_be: v.nat_port_be,
                };
            }
            // Datagram flows follow endpoint removal: keep the backend only while it exists.
            // SAFETY: copied out immediately.
            if let Some(be) = unsafe { LB_BACKENDS.get(v.backend_id) } {
                if be.addr == v.nat_addr && be.port_be == v.nat_port_be {
                    touch(ct, p, now);
                    count(CNT_CT_HIT);
                    count_service(v.svc_id, p.ip_len, false);
                    return Action::Dnat {
                        addr: v.nat_addr,
                        port_be: v.nat_port_be,
                    };
                }
            }
            count(CNT_CT_RESELECT);
        }
    }

    // New flow.
    if svc.slot_count == 0 {
        return Action::Drop(CNT_DROP_NO_BACKEND);
    }
    // SAFETY: helper without arguments.
    let slot = unsafe { bpf_get_prandom_u32() } % svc.slot_count;
    let skey = SelectKey {
        select_id: svc.select_id,
        slot,
    };
    // SAFETY: copied out immediately.
    let Some(backend_id) = (unsafe { LB_SELECT.get(&skey) }).copied() else {
        return Action::Drop(CNT_DROP_BACKEND_MISSING);
    };
    // SAFETY: copied out immediately.
    let Some(be) = (unsafe { LB_BACKENDS.get(backend_id) }).copied() else {
        return Action::Drop(CNT_DROP_BACKEND_MISSING);
    };

    let fval = CtValue {
        last_seen_ns: now,
        nat_addr: be.addr,
        backend_id,
        svc_id: svc.svc_id,
        nat_port_be: be.port_be,
        flags: 0,
        _pad: 0,
    };
    let rkey = CtKey {
        src: be.addr,
        dst: p.src,
        sport_be: be.port_be,
        dport_be: p.sport_be,
        proto: p.proto,
        dir: CT_DIR_REPLY,
        _pad: [0; 2],
    };
    let rval = CtValue {
        last_seen_ns: now,
        nat_addr: p.dst,
        backend_id,
        svc_id: svc.svc_id,
        nat_port_be: p.dport_be,
        flags: 0,
        _pad: 0,
    };
    // Reply entry first: once the forward entry exists, replies may arrive.
    if LB_CONNTRACK.insert(&rkey, &rval, 0).is_err()
        || LB_CONNTRACK.insert(&fkey, &fval, 0).is_err()
    {
        return Action::Drop(CNT_DROP_CT_INSERT);
    }
    count(CNT_NEW_FLOWS);
    count_service(svc.svc_id, p.ip_len, true);
    Action::Dnat {
        addr: be.addr,
        port_be: be.port_be,
    }
}
