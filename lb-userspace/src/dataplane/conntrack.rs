//! The conntrack sweep: idle entries are deleted by the agent, with the lifetime rule the
//! datapath applies ([`lb_common::ct_lifetime_ns`]); the LRU reclaims the rest under pressure.
//! The sweep also reports which svc_ids and backend ids the remaining entries name: the ids the
//! planner may not give out again yet (`plan::memory`).

use std::collections::HashSet;

use aya::{
    Ebpf, Pod,
    maps::{Array, HashMap, MapData},
};
use lb_common::{CtClientKey4, CtKey, CtKey4, CtTableKey, CtValue, SNAT_SLOTS_MAX, SnatSlot4, ct_lifetime_ns};

use super::{Dataplane, Result};
use crate::maps::{MapError, monotonic_ns};

/// `BPF_NOEXIST` (linux/bpf.h): create only.
const BPF_NOEXIST: u64 = 1;

/// The conntrack tables: IPv4 one-entry flows in `LB_CT4_CLIENT`, other IPv4 flows in
/// `LB_CONNTRACK4` (the reply entries of external source-NATed ones in `LB_SNAT4_SLOTS` when a
/// slot was free), IPv6 flows in `LB_CONNTRACK`.
pub(super) struct Tables {
    client4: HashMap<MapData, CtClientKey4, CtValue>,
    v4: HashMap<MapData, CtKey4, CtValue>,
    v6: HashMap<MapData, CtKey, CtValue>,
    slots: Array<MapData, SnatSlot4>,
}

impl Tables {
    pub(super) fn open(ebpf: &mut Ebpf) -> Result<Self> {
        fn take<K: Pod>(ebpf: &mut Ebpf, name: &'static str) -> Result<HashMap<MapData, K, CtValue>> {
            let map = ebpf.take_map(name).ok_or(MapError::Missing { name })?;
            Ok(HashMap::try_from(map).map_err(MapError::typed(name, "open"))?)
        }
        Ok(Self {
            client4: take(ebpf, lb_common::CONNTRACK4_CLIENT)?,
            v4: take(ebpf, lb_common::CONNTRACK4)?,
            v6: take(ebpf, lb_common::CONNTRACK)?,
            slots: {
                let name = lb_common::SNAT4_SLOTS;
                let map = ebpf.take_map(name).ok_or(MapError::Missing { name })?;
                Array::try_from(map).map_err(MapError::typed(name, "open"))?
            },
        })
    }
}

/// A conntrack key: the protocol it names (for the lifetime rule).
trait FlowKey: Pod {
    fn proto(&self) -> u8;
}
impl FlowKey for CtKey {
    fn proto(&self) -> u8 {
        self.proto
    }
}
impl FlowKey for CtKey4 {
    fn proto(&self) -> u8 {
        self.proto
    }
}
impl FlowKey for CtClientKey4 {
    fn proto(&self) -> u8 {
        self.proto
    }
}

/// What a conntrack sweep did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sweep {
    /// Idle entries deleted.
    pub removed: usize,
    /// Entries left in the fullest IPv4 table (the client table or the flow table) and in the
    /// IPv6 table; each table holds [`Dataplane::limits`]' `conntrack`, so this over it is how
    /// near the family is to evicting live flows.
    pub by_family: [usize; 2],
    /// Entries left in all tables (one per flow without source NAT, two per source-NATed flow),
    /// live SNAT port slots included.
    pub remaining: usize,
    /// Live SNAT port slots (`LB_SNAT4_SLOTS`): external IPv4 source-NATed flows whose reply
    /// entry is a slot.
    pub snat_slots: usize,
    /// svc_ids named by the entries left.
    pub svc_ids: HashSet<u32>,
    /// Backend ids named by the entries left.
    pub backend_ids: HashSet<u32>,
}

/// Whether `v` (an entry of `k`) has been idle longer than its lifetime at `now`.
fn expired<K: FlowKey>(k: &K, v: &CtValue, now: u64) -> bool {
    now.saturating_sub(v.last_seen_ns) > ct_lifetime_ns(k.proto(), v.flags)
}

/// Whether a delete failed only because the entry is gone.
fn gone(e: &aya::maps::MapError) -> bool {
    match e {
        aya::maps::MapError::KeyNotFound | aya::maps::MapError::ElementNotFound => true,
        aya::maps::MapError::SyscallError(e) => e.io_error.raw_os_error() == Some(libc::ENOENT),
        _ => false,
    }
}

/// Sweeps one table (`name`) into `sweep`.
fn sweep_table<K: FlowKey>(map: &mut HashMap<MapData, K, CtValue>, name: &'static str, sweep: &mut Sweep) -> Result<usize> {
    let now = monotonic_ns();
    let mut listed = 0;
    let stale: Vec<K> = map
        .iter()
        .filter_map(std::result::Result::ok)
        .inspect(|_| listed += 1)
        .filter(|(k, v)| {
            let stale = expired(k, v, now);
            if !stale {
                sweep.svc_ids.insert(v.svc_id);
                sweep.backend_ids.insert(v.backend_id);
            }
            stale
        })
        .map(|(k, _)| k)
        .collect();
    // Listing a large table takes long enough for a new connection to reuse a stale entry's
    // key (same client port) before we get to it: re-read each entry right before deleting
    // it and keep it if it has been refreshed. (The kernel offers no compare-and-delete; the
    // window left is the one between this lookup and the delete, microseconds.)
    let mut removed = 0;
    for k in &stale {
        match map.get(k, 0) {
            Ok(v) if !expired(k, &v, monotonic_ns()) => {
                // Refreshed meanwhile: its ids are in use after all.
                sweep.svc_ids.insert(v.svc_id);
                sweep.backend_ids.insert(v.backend_id);
            }
            Err(_) => {} // gone already (or expired by the LRU)
            Ok(_) => {
                match map.remove(k) {
                    Ok(()) => {}
                    Err(e) if gone(&e) => {}
                    Err(e) => return Err(MapError::typed(name, "delete from")(e).into()),
                }
                removed += 1;
            }
        }
    }
    sweep.removed += removed;
    Ok(listed - removed)
}

/// Counts the live SNAT port slots into `sweep` (their ids are in use). Expired slots are left
/// as they are, never cleared: a slot is free once expired, and the datapath may be claiming it
/// this very moment (a write from here could undo the claim).
fn read_slots(slots: &Array<MapData, SnatSlot4>, sweep: &mut Sweep) -> Result<usize> {
    let now = monotonic_ns();
    let mut live = 0;
    for i in 0..SNAT_SLOTS_MAX {
        let s = slots.get(&i, 0).map_err(MapError::typed(lb_common::SNAT4_SLOTS, "read"))?;
        if s.live(i, now) {
            sweep.svc_ids.insert(s.ct.svc_id);
            sweep.backend_ids.insert(s.ct.backend_id);
            live += 1;
        }
    }
    Ok(live)
}

impl Dataplane {
    /// Deletes conntrack entries idle longer than their lifetime.
    pub fn sweep_conntrack(&mut self) -> Result<Sweep> {
        let mut sweep = Sweep {
            removed: 0,
            by_family: [0; 2],
            remaining: 0,
            snat_slots: 0,
            svc_ids: HashSet::new(),
            backend_ids: HashSet::new(),
        };
        let client4 = sweep_table(&mut self.conntrack.client4, lb_common::CONNTRACK4_CLIENT, &mut sweep)?;
        let flow4 = sweep_table(&mut self.conntrack.v4, lb_common::CONNTRACK4, &mut sweep)?;
        let v6 = sweep_table(&mut self.conntrack.v6, lb_common::CONNTRACK, &mut sweep)?;
        sweep.snat_slots = read_slots(&self.conntrack.slots, &mut sweep)?;
        sweep.by_family = [client4.max(flow4), v6];
        sweep.remaining = client4 + flow4 + v6 + sweep.snat_slots;
        Ok(sweep)
    }

    /// Moves entries an older build kept in another table into the table this build looks them
    /// up in, so that an upgrade keeps every connection's backend: IPv4 flows out of the IPv6
    /// table (builds before `LB_CONNTRACK4`), and IPv4 one-entry flows (`CT_DIR_CLIENT`) out of
    /// `LB_CONNTRACK4` (builds before `LB_CT4_CLIENT`). At load (the previous agent's programs
    /// may still be adding entries there) and again right after the new programs are attached.
    /// An entry the new programs already made for the same key is kept. Returns the entries
    /// moved.
    pub fn move_ipv4_flows(&mut self) -> Result<usize> {
        let t = &mut self.conntrack;
        let from_v6: Vec<(CtKey, CtValue)> =
            t.v6.iter().filter_map(std::result::Result::ok).filter(|(k, _)| CtKey4::from_key(k).is_some()).collect();
        let from_v4: Vec<(CtKey4, CtClientKey4, CtValue)> =
            t.v4.iter()
                .filter_map(std::result::Result::ok)
                .filter_map(|(k4, v)| CtClientKey4::from_key4(&k4).map(|c| (k4, c, v)))
                .collect();
        for (k, v) in &from_v6 {
            match k.table_key() {
                CtTableKey::Client4(c) => put(&mut t.client4, lb_common::CONNTRACK4_CLIENT, &c, v)?,
                CtTableKey::Flow4(k4) => put(&mut t.v4, lb_common::CONNTRACK4, &k4, v)?,
                CtTableKey::V6(_) => continue,
            }
            delete(&mut t.v6, lb_common::CONNTRACK, k)?;
        }
        for (k4, c, v) in &from_v4 {
            put(&mut t.client4, lb_common::CONNTRACK4_CLIENT, c, v)?;
            delete(&mut t.v4, lb_common::CONNTRACK4, k4)?;
        }
        let moved = from_v6.len() + from_v4.len();
        if moved > 0 {
            tracing::info!(
                from_ipv6_table = from_v6.len(),
                client_entries = from_v4.len(),
                "moved IPv4 conntrack entries an older build kept in another table to theirs"
            );
        }
        Ok(moved)
    }
}

/// Writes `v` under `k` unless the table already has an entry there.
fn put<K: Pod>(map: &mut HashMap<MapData, K, CtValue>, name: &'static str, k: &K, v: &CtValue) -> Result<()> {
    match map.insert(k, v, BPF_NOEXIST) {
        Ok(()) => Ok(()),
        Err(aya::maps::MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(libc::EEXIST) => Ok(()),
        Err(e) => Err(MapError::typed(name, "write")(e).into()),
    }
}

/// Deletes the entry of `k`, if it is still there.
fn delete<K: Pod>(map: &mut HashMap<MapData, K, CtValue>, name: &'static str, k: &K) -> Result<()> {
    match map.remove(k) {
        Ok(()) => Ok(()),
        Err(e) if gone(&e) => Ok(()),
        Err(e) => Err(MapError::typed(name, "delete from")(e).into()),
    }
}
