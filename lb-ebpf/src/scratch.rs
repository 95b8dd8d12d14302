//! Per-CPU scratch space of one program run: the parsed packet and the conntrack, fragment and
//! affinity keys and values a run builds. The BPF stack (512 bytes across every frame of a call
//! chain) could not hold them next to everything else; a per-CPU array slot is reached by an
//! inlined lookup.

use aya_ebpf::{macros::map, maps::PerCpuArray};
use lb_common::{AffinityKey, AffinityValue, Backend, CtKey, CtValue, FragKey, FragValue, ServiceValue};

use crate::{nat::Nat, parse::Packet};

/// This CPU's scratch slot; private, never pinned.
#[map]
static LB_SCRATCH: PerCpuArray<Scratch> = PerCpuArray::with_max_entries(1, 0);

#[repr(C)]
pub struct Scratch {
    /// The packet being processed, as `parse` described it.
    pub pkt: Packet,
    /// Keys and values the stages build (apart from the packet, so both can be borrowed).
    pub keys: Keys,
    /// The flow being decided: its frontend, backend and translation.
    pub flow: Flow,
}

/// What a run decides about a flow. Here rather than on the stack: with the keys, the packet and
/// the rewrite's temporaries the entry point's frame would exceed 512 bytes.
#[repr(C)]
pub struct Flow {
    /// The frontend's value (a copy: the agent replaces whole values).
    pub svc: ServiceValue,
    /// The chosen backend and its id.
    pub be: Backend,
    pub backend_id: u32,
    /// The translation to apply (`Verdict::Nat`).
    pub nat: Nat,
}

#[repr(C)]
pub struct Keys {
    /// A flow's forward and reply conntrack keys and values (a one-entry flow's value in `fval`).
    pub fkey: CtKey,
    pub rkey: CtKey,
    /// The key of an IPv6 one-entry flow (`CT_DIR_CLIENT`; an IPv4 one is built at the map).
    pub ckey: CtKey,
    pub fval: CtValue,
    pub rval: CtValue,
    pub frag: FragKey,
    pub fragv: FragValue,
    pub akey: AffinityKey,
    pub aval: AffinityValue,
    /// The translation `icmp::translation` found for an ICMP error.
    pub icmp: crate::nat::IcmpNat,
    /// What a rejection's answer needs from the packet.
    pub orig: crate::reject::Original,
}

/// This CPU's scratch space.
///
/// # Safety
/// At most one reference may be alive at a time: take it once at the start of a program run and
/// hand it down. (A program runs to completion on one CPU without being preempted by another
/// program of ours, so nothing else uses the slot meanwhile.)
#[inline(always)]
pub unsafe fn scratch() -> Option<&'static mut Scratch> {
    // SAFETY: a valid per-CPU map value for this run; exclusivity is the caller's promise.
    LB_SCRATCH.get_ptr_mut(0).map(|p| unsafe { &mut *p })
}
