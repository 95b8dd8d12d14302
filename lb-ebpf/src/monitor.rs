//! Events for `lb monitor`: drops with their reason, rejects, and (sampled) new flows with the
//! backend chosen, written to the `LB_EVENTS` ring buffer while a monitor runs.
//!
//! Cost when nobody listens: only the drop, reject and new-flow paths look, with one inlined
//! array read of `LB_MONITOR` and a test of its `active` word; the hit and pass paths never
//! look. A monitor that died without clearing `active` costs a clock read more on those paths
//! until its lease (`until_ns`) is seen to have run out. A flood cannot swamp the ring: each CPU
//! writes at most `rate_per_cpu` events per second and counts the rest as lost.

use aya_ebpf::{macros::map, maps::PerCpuArray};
use lb_common::{EVENT_NEW_FLOW, HOOK_EGRESS, HOOK_EXTERNAL, HOOK_POD, MON_F_DROPS, MON_F_FLOWS, MON_F_REJECTS, MonitorEvent};

use crate::{
    clock::{age, now},
    conntrack::random,
    hook::Hook,
    maps::{LB_EVENTS, LB_MONITOR, LB_MONITOR_STATS},
    nat::copy_addr,
    parse::Packet,
};

/// A CPU's rate window: when it began, and the events written in it.
#[repr(C)]
pub struct Window {
    start_ns: u64,
    written: u64,
}

/// Each CPU's rate window; private, never pinned.
#[map]
static LB_MONITOR_WINDOW: PerCpuArray<Window> = PerCpuArray::with_max_entries(1, 0);

const SECOND_NS: u64 = 1_000_000_000;

/// What an event is about, apart from the packet.
pub struct About {
    pub kind: u8,
    /// The `CNT_*` reason (drops, rejects).
    pub reason: u32,
    pub svc_id: u32,
    pub backend_id: u32,
    pub hook: Hook,
    pub ifindex: u32,
}

/// Writes an event about packet `p` if a monitor asked for events of its kind.
#[inline(always)]
pub fn report(p: &Packet, about: &About) {
    let Some(cfg) = LB_MONITOR.get(0) else {
        return;
    };
    if cfg.active == 0 {
        return;
    }
    let wanted = match about.kind {
        lb_common::EVENT_DROP => MON_F_DROPS,
        lb_common::EVENT_REJECT => MON_F_REJECTS,
        _ => MON_F_FLOWS,
    };
    if cfg.flags & wanted == 0 {
        return;
    }
    let t = now();
    if t > cfg.until_ns {
        return;
    }
    if about.kind == EVENT_NEW_FLOW && cfg.flow_sample > 1 && !random().is_multiple_of(cfg.flow_sample) {
        return;
    }
    let (Some(w), Some(stats)) = (LB_MONITOR_WINDOW.get_ptr_mut(0), LB_MONITOR_STATS.get_ptr_mut(0)) else {
        return;
    };
    // SAFETY: this CPU's slots; only this program run writes them now.
    unsafe {
        if age(t, (*w).start_ns) >= SECOND_NS {
            (*w).start_ns = t;
            (*w).written = 0;
        }
        if (*w).written >= u64::from(cfg.rate_per_cpu) {
            (*stats).lost += 1;
            return;
        }
        (*w).written += 1;
    }
    let Some(mut entry) = LB_EVENTS.reserve::<MonitorEvent>(0) else {
        // SAFETY: as above.
        unsafe { (*stats).lost += 1 };
        return;
    };
    let e = entry.as_mut_ptr();
    // SAFETY: `e` is the reserved, 8-aligned record, written field by field before it is
    // submitted; the addresses are the packet description's (4-aligned) into the record's
    // (offsets 32 and 48).
    unsafe {
        (*e).ts_ns = t;
        (*e).kind = about.kind;
        (*e).proto = p.proto;
        (*e).hook = match about.hook {
            Hook::Pod => HOOK_POD,
            Hook::External => HOOK_EXTERNAL,
            Hook::Egress => HOOK_EGRESS,
        };
        (*e)._pad = 0;
        (*e).reason = about.reason;
        (*e).svc_id = about.svc_id;
        (*e).backend_id = about.backend_id;
        (*e).ifindex = about.ifindex;
        (*e).sport_be = p.sport_be;
        (*e).dport_be = p.dport_be;
        copy_addr(&mut (*e).src, &p.src);
        copy_addr(&mut (*e).dst, &p.dst);
    }
    entry.submit(0);
    // SAFETY: as above.
    unsafe { (*stats).written += 1 };
}
