//! Backend selection, shared by the packet programs and the socket hooks: which endpoint set a
//! frontend's traffic uses, a remembered `sessionAffinity: ClientIP` backend (points 24-28),
//! otherwise a slot of the set's table (Maglev: a hash of the flow; random otherwise), and the
//! backend itself.

use lb_common::{
    AffinityKey, AffinityValue, Backend, CNT_AFFINITY_HIT, CNT_DROP_BACKEND_MISSING, MAGLEV_CHUNK, MaglevKey, MemberKey,
    SVC_F_AFFINITY, SVC_F_DROP_IF_EMPTY, SVC_F_EXTERNAL, SVC_F_MAGLEV, SelectKey, ServiceValue, maglev_flow_hash,
};

use crate::{
    clock::age,
    counters::count,
    maps::{LB_AFFINITY, LB_BACKENDS, LB_MAGLEV, LB_MEMBERS, LB_SELECT},
};

/// An endpoint set: its table, its slot count, and whether an empty set drops (traffic policy
/// Local with endpoints elsewhere) rather than rejects.
#[derive(Clone, Copy)]
pub struct Set {
    pub select_id: u32,
    pub slots: u32,
    pub drop_if_empty: bool,
}

/// The set a frontend's traffic selects from. Point 34: traffic from this node (its pods, its
/// own processes) to an external frontend gets the Cluster set, whatever the external policy.
#[inline(always)]
pub fn endpoint_set(svc: &ServiceValue, from_this_node: bool) -> Set {
    if from_this_node && svc.flags & SVC_F_EXTERNAL != 0 {
        Set { select_id: svc.cluster_select_id, slots: svc.cluster_slot_count, drop_if_empty: false }
    } else {
        Set { select_id: svc.select_id, slots: svc.slot_count, drop_if_empty: svc.flags & SVC_F_DROP_IF_EMPTY != 0 }
    }
}

/// A flow hash that is the same on every node for the same 5-tuple (Maglev; see
/// `lb_common::maglev_flow_hash`, which `lb explain` shares).
#[inline(always)]
pub fn flow_hash(p: &crate::parse::Packet) -> u32 {
    let (s, d) = p.addr_words();
    maglev_flow_hash(s, d, p.sport_be, p.dport_be, p.proto)
}

/// The backend in slot `slot` of a table.
#[inline(always)]
fn slot_backend(select_id: u32, slot: u32, maglev: bool) -> Option<u32> {
    if maglev {
        let chunk = LB_MAGLEV.get_ptr(&MaglevKey { select_id, chunk: slot / MAGLEV_CHUNK })?;
        // SAFETY: the index is below MAGLEV_CHUNK, inside the chunk the lookup returned.
        unsafe { (*chunk).ids.get((slot % MAGLEV_CHUNK) as usize).copied() }
    } else {
        // SAFETY: copied out immediately.
        unsafe { LB_SELECT.get(&SelectKey { select_id, slot }) }.copied()
    }
}

/// Backend `id`, if its slot holds one (an inlined array read).
#[inline(always)]
pub fn backend(id: u32) -> Option<Backend> {
    LB_BACKENDS.get(id).copied().filter(Backend::is_set)
}

/// Point 27: the backend remembered for `client`, while fresh and still in the set.
#[inline(always)]
fn remembered(key: &AffinityKey, timeout_s: u32, select_id: u32, now: u64) -> Option<u32> {
    let a = LB_AFFINITY.get_ptr(key)?;
    // SAFETY: map value pointer, valid for this program run.
    let (last_used, backend_id) = unsafe { ((*a).last_used_ns, (*a).backend_id) };
    if age(now, last_used) > u64::from(timeout_s) * 1_000_000_000 {
        return None;
    }
    // SAFETY: presence check only.
    unsafe { LB_MEMBERS.get(&MemberKey { select_id, backend_id }) }?;
    Some(backend_id)
}

/// A new flow's backend from `set` (non-empty): the remembered one with affinity, otherwise the
/// one in slot `hash % slots` (`hash`: a flow hash for Maglev, random otherwise). With affinity
/// the record is written (sliding expiry, point 26); `akey` and `aval` are the caller's space for
/// it. `Err` is the drop reason.
#[inline(always)]
pub fn pick(
    svc: &ServiceValue,
    set: Set,
    hash: u32,
    (akey, aval): (&mut AffinityKey, &mut AffinityValue),
    client: [u8; 16],
    now: u64,
) -> Result<(u32, Backend), u32> {
    let affinity = svc.flags & SVC_F_AFFINITY != 0;
    let mut id = 0;
    if affinity {
        *akey = AffinityKey { client, svc_id: svc.svc_id };
        if let Some(b) = remembered(akey, svc.affinity_timeout_s, set.select_id, now) {
            count(CNT_AFFINITY_HIT);
            id = b;
        }
    }
    if id == 0 {
        id = slot_backend(set.select_id, hash % set.slots, svc.flags & SVC_F_MAGLEV != 0).ok_or(CNT_DROP_BACKEND_MISSING)?;
    }
    let be = backend(id).ok_or(CNT_DROP_BACKEND_MISSING)?;
    if affinity {
        *aval = AffinityValue { last_used_ns: now, backend_id: id, _pad: 0 };
        let _ = LB_AFFINITY.insert(&*akey, &*aval, 0);
    }
    Ok((id, be))
}
