//! Read-only view of a running agent's pinned maps and links, from another process: what
//! `lb maps dump`, `lb service list`, `lb stats` and `lb status` print.

use std::{
    fs,
    os::fd::{AsFd as _, AsRawFd as _},
    path::{Path, PathBuf},
};

use aya::maps::{HashMap, LpmTrie, Map, MapData, MapError, PerCpuArray, PerCpuHashMap};
use lb_common::{CNT_MAX, CtKey, CtValue, MemberKey, SourceRangeData, SvcStats};

use crate::{
    dataplane::{DataplaneError, Result, check_layout},
    plan::MapState,
};

pub struct PinnedMaps {
    pin_path: PathBuf,
}

/// A conntrack entry as read from the map.
pub type CtEntry = (CtKey, CtValue);

fn map_err(name: &'static str, op: &'static str) -> impl Fn(MapError) -> DataplaneError {
    move |source| DataplaneError::Map { name, op, source }
}

impl PinnedMaps {
    /// Opens the pins under `pin_path`; fails when there are none or their layout differs.
    pub fn open(pin_path: &Path) -> Result<Self> {
        let me = Self { pin_path: pin_path.to_owned() };
        me.map(lb_common::SERVICES)?;
        check_layout(pin_path)?;
        Ok(me)
    }

    pub fn pin_path(&self) -> &Path {
        &self.pin_path
    }

    fn map(&self, name: &'static str) -> Result<Map> {
        let data = MapData::from_pin(self.pin_path.join(name)).map_err(map_err(name, "open the pin of"))?;
        Map::from_map_data(data).map_err(map_err(name, "open"))
    }

    fn hash<K: aya::Pod, V: aya::Pod>(&self, name: &'static str) -> Result<Vec<(K, V)>> {
        let map: HashMap<MapData, K, V> = HashMap::try_from(self.map(name)?).map_err(map_err(name, "open"))?;
        map.iter().collect::<Result<Vec<_>, _>>().map_err(map_err(name, "read"))
    }

    /// The agent-written maps.
    pub fn state(&self) -> Result<MapState> {
        let name = lb_common::SOURCE_RANGES;
        let trie: LpmTrie<MapData, SourceRangeData, u32> = LpmTrie::try_from(self.map(name)?).map_err(map_err(name, "open"))?;
        let source_ranges = trie
            .iter()
            .map(|kv| kv.map(|(k, _)| (k.prefix_len(), k.data())))
            .collect::<Result<_, _>>()
            .map_err(map_err(name, "read"))?;
        Ok(MapState {
            services: self.hash(lb_common::SERVICES)?.into_iter().collect(),
            backends: self.hash(lb_common::BACKENDS)?.into_iter().collect(),
            select: self.hash(lb_common::SELECT)?.into_iter().collect(),
            maglev: self.hash(lb_common::MAGLEV)?.into_iter().map(|(k, v)| (k, std::sync::Arc::new(v))).collect(),
            members: self.hash::<MemberKey, u32>(lb_common::MEMBERS)?.into_iter().map(|(k, _)| k).collect(),
            source_ranges,
            names: self.hash(lb_common::SVC_NAMES)?.into_iter().collect(),
        })
    }

    pub fn conntrack(&self) -> Result<Vec<CtEntry>> {
        self.hash(lb_common::CONNTRACK)
    }

    /// The layout and agent version record.
    pub fn meta(&self) -> Result<lb_common::Meta> {
        let name = lb_common::META;
        let arr: aya::maps::Array<MapData, lb_common::Meta> =
            aya::maps::Array::try_from(self.map(name)?).map_err(map_err(name, "open"))?;
        arr.get(&0, 0).map_err(map_err(name, "read"))
    }

    /// The account of the agent that owns the pins; `None` when none was ever written (or
    /// the pins predate the record).
    pub fn agent(&self) -> Option<crate::agent_status::AgentReport> {
        let name = lb_common::AGENT;
        let arr: aya::maps::Array<MapData, lb_common::AgentStatus> = aya::maps::Array::try_from(self.map(name).ok()?).ok()?;
        crate::agent_status::AgentReport::decode(&arr.get(&0, 0).ok()?)
    }

    pub fn affinity(&self) -> Result<Vec<(lb_common::AffinityKey, lb_common::AffinityValue)>> {
        self.hash(lb_common::AFFINITY)
    }

    /// Global counters summed over CPUs, indexed by `CNT_*`.
    pub fn counters(&self) -> Result<Vec<u64>> {
        let name = lb_common::STATS;
        let arr: PerCpuArray<MapData, u64> = PerCpuArray::try_from(self.map(name)?).map_err(map_err(name, "open"))?;
        (0..CNT_MAX).map(|i| arr.get(&i, 0).map(|v| v.iter().sum()).map_err(map_err(name, "read"))).collect()
    }

    /// Per-service counters summed over CPUs, by `svc_id`.
    pub fn service_counters(&self) -> Result<Vec<(u32, SvcStats)>> {
        self.per_cpu_stats(lb_common::SVC_STATS)
    }

    /// Per-backend counters summed over CPUs, by backend id.
    pub fn backend_counters(&self) -> Result<Vec<(u32, SvcStats)>> {
        self.per_cpu_stats(lb_common::BACKEND_STATS)
    }

    fn per_cpu_stats(&self, name: &'static str) -> Result<Vec<(u32, SvcStats)>> {
        let map: PerCpuHashMap<MapData, u32, SvcStats> =
            PerCpuHashMap::try_from(self.map(name)?).map_err(map_err(name, "open"))?;
        map.iter()
            .map(|kv| {
                kv.map(|(k, vals)| {
                    let sum = vals.iter().fold(SvcStats::default(), |a, v| SvcStats {
                        packets: a.packets + v.packets,
                        bytes: a.bytes + v.bytes,
                        new_flows: a.new_flows + v.new_flows,
                    });
                    (k, sum)
                })
                .map_err(map_err(name, "read"))
            })
            .collect()
    }

    /// The link pins: `(interface or "cgroup", attachment kind)`, e.g. `("eth0", "xdp-native")`.
    pub fn attachments(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        if let Ok(rd) = fs::read_dir(&self.pin_path) {
            for e in rd.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if let Some((what, kind)) = name.strip_prefix("link_").and_then(|r| r.rsplit_once('_')) {
                    out.push((what.to_owned(), kind.to_owned()));
                }
            }
        }
        out.sort();
        out
    }

    /// Entries in use and capacity of every map: `(name, entries, capacity)`; entries is
    /// `None` for arrays (always full by construction).
    pub fn fill_levels(&self) -> Vec<(&'static str, Option<usize>, u32)> {
        lb_common::ALL_MAPS
            .iter()
            .filter_map(|name| {
                let map = self.map(name).ok()?;
                let (data, hash) = match &map {
                    Map::HashMap(d) | Map::LruHashMap(d) | Map::PerCpuHashMap(d) | Map::LpmTrie(d) => (d, true),
                    Map::Array(d) | Map::PerCpuArray(d) => (d, false),
                    _ => return None,
                };
                let info = data.info().ok()?;
                let used = hash.then(|| count_keys(data, info.key_size() as usize));
                Some((*name, used, info.max_entries()))
            })
            .collect()
    }
}

/// Number of keys in a map, walked with BPF_MAP_GET_NEXT_KEY (works for any key size).
fn count_keys(data: &MapData, key_size: usize) -> usize {
    #[repr(C)]
    struct Attr {
        map_fd: u32,
        _pad: u32,
        key: u64,
        next_key: u64,
    }
    let fd = data.fd().as_fd().as_raw_fd();
    let mut key = vec![0u8; key_size];
    let mut next = vec![0u8; key_size];
    let mut n = 0usize;
    let mut first = true;
    loop {
        let attr = Attr {
            map_fd: fd as u32,
            _pad: 0,
            key: if first { 0 } else { key.as_ptr() as u64 },
            next_key: next.as_mut_ptr() as u64,
        };
        // SAFETY: BPF_MAP_GET_NEXT_KEY (4) with key buffers of the map's key size that we own.
        let r = unsafe { libc::syscall(libc::SYS_bpf, 4, &raw const attr, std::mem::size_of::<Attr>() as u32) };
        if r != 0 {
            return n;
        }
        n += 1;
        first = false;
        std::mem::swap(&mut key, &mut next);
    }
}
