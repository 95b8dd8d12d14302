//! Socket-level translation for processes in the node's own network namespace (hostNetwork
//! pods, the kubelet, node agents): cgroup `connect4`/`sendmsg4` hooks rewrite the destination
//! a socket asks for from a service frontend to a backend, and `recvmsg4`/`getpeername4` show
//! the frontend again. Point 42: the node reaches ClusterIPs and its own NodePorts.
//!
//! Why socket hooks rather than TC egress: traffic a node process sends to a ClusterIP is
//! routed (and may not even have a route) before any egress hook sees it, and it leaves through
//! whatever interface the route picks. Translating at connect() time, as Cilium does, needs no
//! route to the virtual IP, costs nothing per packet, and keeps the client's source address.
//!
//! Host traffic gets the Cluster endpoint set for external frontends (point 34b) and the
//! internal set for ClusterIPs (internalTrafficPolicy applies to host clients too, point 35).
//! A frontend without usable endpoints makes connect()/sendmsg() fail with ECONNREFUSED.

use aya_ebpf::{
    helpers::{bpf_get_socket_cookie, bpf_set_retval},
    macros::cgroup_sock_addr,
    programs::SockAddrContext,
};
use lb_common::{
    AffinityKey, AffinityValue, CNT_SOCK_TRANSLATED, IPPROTO_TCP, IPPROTO_UDP, SVC_F_ADDR_MARKER, ServiceKey, SockRevKey,
    SockRevValue, v4_mapped,
};

use crate::{
    clock::now,
    counters::{count, count_flow},
    maps::{LB_CONFIG, LB_SERVICES, LB_SOCK_REVNAT},
    select::{endpoint_set, pick},
};

const ALLOW: i32 = 1;
const DENY: i32 = 0;
const ECONNREFUSED: i32 = 111;

#[cgroup_sock_addr(connect4)]
pub fn lb_sock_connect4(ctx: SockAddrContext) -> i32 {
    translate(&ctx, false)
}

#[cgroup_sock_addr(sendmsg4)]
pub fn lb_sock_sendmsg4(ctx: SockAddrContext) -> i32 {
    translate(&ctx, false)
}

#[cgroup_sock_addr(recvmsg4)]
pub fn lb_sock_recvmsg4(ctx: SockAddrContext) -> i32 {
    untranslate(&ctx, false);
    ALLOW
}

#[cgroup_sock_addr(getpeername4)]
pub fn lb_sock_getpeername4(ctx: SockAddrContext) -> i32 {
    untranslate(&ctx, false);
    ALLOW
}

#[cgroup_sock_addr(connect6)]
pub fn lb_sock_connect6(ctx: SockAddrContext) -> i32 {
    translate(&ctx, true)
}

#[cgroup_sock_addr(sendmsg6)]
pub fn lb_sock_sendmsg6(ctx: SockAddrContext) -> i32 {
    translate(&ctx, true)
}

#[cgroup_sock_addr(recvmsg6)]
pub fn lb_sock_recvmsg6(ctx: SockAddrContext) -> i32 {
    untranslate(&ctx, true);
    ALLOW
}

#[cgroup_sock_addr(getpeername6)]
pub fn lb_sock_getpeername6(ctx: SockAddrContext) -> i32 {
    untranslate(&ctx, true);
    ALLOW
}

/// The destination a socket asked for, in the 16-byte format. IPv6 sockets asking for an
/// IPv4-mapped address get the IPv4 services, as the maps store IPv4 that way.
#[inline(always)]
fn user_addr(sa: *mut aya_ebpf::bindings::bpf_sock_addr, v6: bool) -> [u8; 16] {
    // SAFETY: the context pointer is valid for this program run; the field matches the hook.
    unsafe {
        if v6 {
            let w = (*sa).user_ip6;
            let mut a = [0u8; 16];
            let mut i = 0;
            while i < 4 {
                let b = w[i].to_ne_bytes();
                a[i * 4] = b[0];
                a[i * 4 + 1] = b[1];
                a[i * 4 + 2] = b[2];
                a[i * 4 + 3] = b[3];
                i += 1;
            }
            a
        } else {
            v4_mapped((*sa).user_ip4.to_ne_bytes())
        }
    }
}

/// Writes the destination shown to / used by the socket.
#[inline(always)]
fn set_user_addr(sa: *mut aya_ebpf::bindings::bpf_sock_addr, v6: bool, a: &[u8; 16], port_be: u16) {
    // SAFETY: these hooks may rewrite the socket's address; the field matches the hook.
    unsafe {
        if v6 {
            let mut i = 0;
            while i < 4 {
                (*sa).user_ip6[i] = u32::from_ne_bytes([a[i * 4], a[i * 4 + 1], a[i * 4 + 2], a[i * 4 + 3]]);
                i += 1;
            }
        } else {
            (*sa).user_ip4 = u32::from_ne_bytes([a[12], a[13], a[14], a[15]]);
        }
        (*sa).user_port = u32::from(port_be);
    }
}

#[inline(always)]
fn mix(mut h: u64) -> u32 {
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h as u32
}

#[inline(always)]
fn translate(ctx: &SockAddrContext, v6: bool) -> i32 {
    let sa = ctx.sock_addr;
    // SAFETY: the context pointer is valid for this program run; fields read as the verifier
    // allows for these attach types.
    let (port, proto) = unsafe { ((*sa).user_port as u16, (*sa).protocol as u8) };
    if proto != IPPROTO_TCP && proto != IPPROTO_UDP {
        return ALLOW;
    }
    let frontend = user_addr(sa, v6);
    let key = ServiceKey { addr: frontend, port_be: port, proto, _pad: 0 };
    // SAFETY: copied out immediately.
    let Some(svc) = (unsafe { LB_SERVICES.get(&key) }).copied() else {
        return ALLOW;
    };
    if svc.flags & SVC_F_ADDR_MARKER != 0 {
        return ALLOW;
    }
    let set = endpoint_set(&svc, true);
    if set.slots == 0 {
        // SAFETY: helper without pointers.
        unsafe { bpf_set_retval(-ECONNREFUSED) };
        return DENY;
    }
    // SAFETY: helper on our own context.
    let cookie = unsafe { bpf_get_socket_cookie(sa.cast()) };
    // Affinity is by client address: the node's, as its traffic is seen elsewhere.
    let client = LB_CONFIG.get(0).map_or([0; 16], |c| if v6 { c.snat6_addr } else { c.snat_addr });
    let (mut akey, mut aval) = (AffinityKey::default(), AffinityValue::default());
    // One socket, one choice: the same socket keeps its backend while the set holds.
    let Ok((backend_id, be)) = pick(&svc, set, mix(cookie), (&mut akey, &mut aval), client, now()) else {
        return ALLOW;
    };
    let rkey = SockRevKey { cookie, backend: be.addr, backend_port_be: be.port_be, _pad: [0; 6] };
    let rval = SockRevValue { frontend, frontend_port_be: port, _pad: [0; 6] };
    let _ = LB_SOCK_REVNAT.insert(&rkey, &rval, 0);
    set_user_addr(sa, v6, &be.addr, be.port_be);
    count(CNT_SOCK_TRANSLATED);
    count_flow(svc.svc_id, backend_id, 0, true);
    ALLOW
}

#[inline(always)]
fn untranslate(ctx: &SockAddrContext, v6: bool) {
    let sa = ctx.sock_addr;
    // SAFETY: helper on our own context; fields as the verifier allows for these hooks.
    let (cookie, port) = unsafe { (bpf_get_socket_cookie(sa.cast()), (*sa).user_port as u16) };
    let key = SockRevKey { cookie, backend: user_addr(sa, v6), backend_port_be: port, _pad: [0; 6] };
    // SAFETY: copied out immediately.
    if let Some(v) = unsafe { LB_SOCK_REVNAT.get(&key) }.copied() {
        set_user_addr(sa, v6, &v.frontend, v.frontend_port_be);
    }
}
