//! Frontends: the address filter that lets most packets pass without a hash lookup, the lookup
//! of a frontend, the address markers, and `loadBalancerSourceRanges` (point 48).

use lb_common::{
    ADDR_FILTER_BACKEND, ADDR_FILTER_FRONTEND, SVC_F_ADDR_MARKER, ServiceKey, ServiceValue, SourceRangeData,
    addr_filter_slot_words, local_mark_slot,
};

use crate::{
    maps::{LB_ADDR_FILTER, LB_LOCAL_MARKS, LB_SERVICES, LB_SOURCE_RANGES},
    parse::Packet,
};

/// Whether destination `dst` may be a frontend address and source `src` a backend's (addresses
/// as the 32-bit words of their 16-byte forms): false for certain, true possibly (a hash of
/// every frontend and backend address sets a bit; two inlined array reads decide for most
/// packets that they are none of ours).
#[inline(always)]
pub fn may_be_ours(src: [u32; 4], dst: [u32; 4]) -> (bool, bool) {
    (filter_has(dst, ADDR_FILTER_FRONTEND), filter_has(src, ADDR_FILTER_BACKEND))
}

#[inline(always)]
fn filter_has(addr: [u32; 4], which: u32) -> bool {
    let (word, bit) = addr_filter_slot_words(addr, which);
    LB_ADDR_FILTER.get(word).is_some_and(|w| w & bit != 0)
}

/// Whether IPv4 packet `p` goes to a frontend marked as one of policy Local (its flows have no
/// source NAT): one inlined array read (see `lb_common::local_mark_slot`).
#[inline(always)]
pub fn local_marked(p: &Packet) -> bool {
    let (word, bit) = local_mark_slot(p.addr_words().1[3], p.dport_be, p.proto);
    LB_LOCAL_MARKS.get(word).is_some_and(|w| w & bit != 0)
}

/// The `LB_SERVICES` key of frontend `addr` (as its 32-bit words):`port_be`/`proto`, written as
/// five 32-bit words (the kernel hashes it word by word right after: see `conntrack::key4`).
#[inline(always)]
pub fn service_key(addr: [u32; 4], port_be: u16, proto: u8) -> ServiceKey {
    let mut key = core::mem::MaybeUninit::<ServiceKey>::uninit();
    let w = key.as_mut_ptr().cast::<u32>();
    // SAFETY: `ServiceKey` is 20 bytes, 4-aligned, of plain integers, covered by the five writes
    // (the last: port, protocol and a zero `_pad`, asserted below).
    unsafe {
        w.write(addr[0]);
        w.add(1).write(addr[1]);
        w.add(2).write(addr[2]);
        w.add(3).write(addr[3]);
        w.add(4).write(u32::from(port_be) | u32::from(proto) << 16);
        key.assume_init()
    }
}
const _: () = assert!(
    core::mem::offset_of!(ServiceKey, port_be) == 16
        && core::mem::offset_of!(ServiceKey, proto) == 18
        && size_of::<ServiceKey>() == 20
        && align_of::<ServiceKey>() == 4
);

/// Copies the value of the frontend `p` is addressed to into `out`; false when there is none
/// (or only an address marker).
#[inline(always)]
pub fn frontend(p: &Packet, out: &mut ServiceValue) -> bool {
    let key = service_key(p.addr_words().1, p.dport_be, p.proto);
    // SAFETY: copied out immediately; the agent replaces whole values.
    let Some(svc) = (unsafe { LB_SERVICES.get(&key) }) else {
        return false;
    };
    // Field by field: a struct copy from a map value compiles to a `memmove` call (a byte loop).
    out.svc_id = svc.svc_id;
    out.select_id = svc.select_id;
    out.slot_count = svc.slot_count;
    out.flags = svc.flags;
    out.affinity_timeout_s = svc.affinity_timeout_s;
    out.cluster_select_id = svc.cluster_select_id;
    out.cluster_slot_count = svc.cluster_slot_count;
    out.serving_select_id = svc.serving_select_id;
    out.flags & SVC_F_ADDR_MARKER == 0
}

/// `addr` is a frontend's address (its address marker is programmed): traffic to it that cannot
/// be translated is dropped, never passed on untranslated.
#[inline(always)]
pub fn is_service_addr(addr: [u8; 16]) -> bool {
    let marker = ServiceKey { addr, port_be: 0, proto: 0, _pad: 0 };
    // SAFETY: presence check only.
    unsafe { LB_SERVICES.get(&marker) }.is_some()
}

/// Point 48: the source is inside the LoadBalancer IP's ranges.
#[inline(always)]
pub fn source_allowed(p: &Packet) -> bool {
    let key = aya_ebpf::maps::lpm_trie::Key::new(256, SourceRangeData { frontend: p.dst, source: p.src });
    LB_SOURCE_RANGES.get(&key).is_some()
}
