//! Read-only view of a running agent's pinned maps and links, from another process: what
//! `lb maps dump`, `lb service list`, `lb stats` and `lb status` print, and what the metrics
//! read at scrape time. The agent-written maps are read through the map table.

use std::{
    fs,
    path::{Path, PathBuf},
};

use aya::maps::{Array, HashMap, Map, MapData, PerCpuArray};
use lb_common::{
    CNT_MAX, Config, CtClientKey4, CtKey, CtKey4, CtTableKey, CtValue, FlowCounterBlock, FlowCounters, SNAT_SLOTS_MAX,
    STATS_BLOCK, SnatSlot4,
};

use super::{KernelMaps, MapError, MapState, layout, raw::RawMap};

pub struct PinnedMaps {
    pin_path: PathBuf,
    maps: KernelMaps,
}

/// A conntrack entry as read from its table (an IPv4 key in its IPv4-mapped form).
pub type CtEntry = (CtKey, CtValue);

/// `entries` with each one-entry flow (`CT_DIR_CLIENT`) as the forward and reply entries it
/// stands for (`lb_common::client_entry_views`): how the CLI shows and explains flows.
pub fn as_two_entry_views(entries: Vec<CtEntry>) -> Vec<CtEntry> {
    entries.into_iter().flat_map(|(k, v)| lb_common::client_entry_views(&k, &v).map_or_else(|| vec![(k, v)], Vec::from)).collect()
}

/// The live flows held in SNAT port slots (`slots`, as the datapath with settings `cfg` wrote
/// them), as their reply entries under the `CT_DIR_REPLY` keys they stand for, and their forward
/// entries where the slot holds that too (`SNAT_SLOT_F_FORWARD`). (An expired slot
/// is free, and stays as it was until a flow claims it: it is left out.)
pub fn slot_entries<T: std::borrow::Borrow<MapData>>(slots: &Array<T, SnatSlot4>, cfg: &Config) -> Result<Vec<CtEntry>> {
    let now = super::monotonic_ns();
    let mut out = Vec::new();
    for i in 0..SNAT_SLOTS_MAX {
        let s = slots.get(&i, 0).map_err(MapError::typed(lb_common::SNAT4_SLOTS, "read"))?;
        if s.live(i, now) {
            out.push((s.reply_key(i, cfg.snat_addr, cfg.snat_port_min), s.ct));
            out.extend(s.forward_entry(i, cfg.snat_addr, cfg.snat_port_min));
        }
    }
    Ok(out)
}

/// A map's entries as raw (key, value) bytes.
pub type RawEntries = Vec<(Vec<u8>, Vec<u8>)>;

type Result<T, E = MapError> = std::result::Result<T, E>;

impl PinnedMaps {
    /// Opens the pins under `pin_path`; fails when there are none or their layout differs.
    pub fn open(pin_path: &Path) -> Result<Self> {
        layout::check(pin_path)?;
        let maps = KernelMaps::open(|name| pin(pin_path, name))?;
        Ok(Self { pin_path: pin_path.to_owned(), maps })
    }

    pub fn pin_path(&self) -> &Path {
        &self.pin_path
    }

    fn map(&self, name: &'static str) -> Result<Map> {
        Map::from_map_data(pin(&self.pin_path, name)?).map_err(MapError::typed(name, "open"))
    }

    fn hash<K: aya::Pod, V: aya::Pod>(&self, name: &'static str) -> Result<Vec<(K, V)>> {
        let map: HashMap<MapData, K, V> = HashMap::try_from(self.map(name)?).map_err(MapError::typed(name, "open"))?;
        map.iter().collect::<Result<Vec<_>, _>>().map_err(MapError::typed(name, "read"))
    }

    /// The agent-written maps.
    pub fn state(&self) -> Result<MapState> {
        self.maps.read()
    }

    /// The entries of the conntrack tables, IPv4 first, each flow as its forward and reply
    /// entries: a one-entry flow (`CT_DIR_CLIENT`) reads as the two it stands for. (Pins of a
    /// build before an IPv4 table have none there: it reads as empty.)
    pub fn conntrack(&self) -> Result<Vec<CtEntry>> {
        let mut entries: Vec<CtEntry> = Vec::new();
        if self.has(lb_common::CONNTRACK4_CLIENT) {
            let client = self.hash::<CtClientKey4, CtValue>(lb_common::CONNTRACK4_CLIENT)?;
            entries.extend(client.into_iter().map(|(k, v)| (k.to_key(), v)));
        }
        if self.has(lb_common::CONNTRACK4) {
            entries.extend(self.hash::<CtKey4, CtValue>(lb_common::CONNTRACK4)?.into_iter().map(|(k, v)| (k.to_key(), v)));
        }
        entries.extend(self.snat_slots()?);
        entries.extend(self.hash::<CtKey, CtValue>(lb_common::CONNTRACK)?);
        Ok(as_two_entry_views(entries))
    }

    /// The reply entries held in SNAT port slots (`lb_common::SnatSlot4`), under the
    /// `CT_DIR_REPLY` keys they stand for; none for pins of a build before the slots.
    fn snat_slots(&self) -> Result<Vec<CtEntry>> {
        let (Some(slots), Some(cfg)) = (self.slot_array()?, self.config()?) else {
            return Ok(Vec::new());
        };
        slot_entries(&slots, &cfg)
    }

    fn slot_array(&self) -> Result<Option<Array<MapData, SnatSlot4>>> {
        if !self.has(lb_common::SNAT4_SLOTS) {
            return Ok(None);
        }
        let name = lb_common::SNAT4_SLOTS;
        Array::try_from(self.map(name)?).map(Some).map_err(MapError::typed(name, "open"))
    }

    /// The node-wide settings (`LB_CONFIG`), if written.
    fn config(&self) -> Result<Option<Config>> {
        let name = lb_common::CONFIG;
        let map: Array<MapData, Config> = Array::try_from(self.map(name)?).map_err(MapError::typed(name, "open"))?;
        map.get(&0, 0).map(Some).map_err(MapError::typed(name, "read"))
    }

    /// The slot entry of reply or forward key `key`, when a SNAT port slot holds its flow (a
    /// forward key's slot is found as the datapath finds it: `maps::snat_seed`).
    fn slot_entry(&self, key: &CtKey) -> Result<Option<CtValue>> {
        let (Some(slots), Some(cfg)) = (self.slot_array()?, self.config()?) else {
            return Ok(None);
        };
        let read = |i: u32| slots.get(&i, 0).map_err(MapError::typed(lb_common::SNAT4_SLOTS, "read"));
        Ok(lb_common::snat_slot_entry(key, &cfg, super::snat_seed(), read)?.map(|(_, v)| v))
    }

    /// Whether map `name` is pinned.
    fn has(&self, name: &str) -> bool {
        self.pin_path.join(name).exists()
    }

    /// One entry of a hash map, if present. (A lookup from userspace leaves an LRU entry's
    /// recency as it was.)
    fn lookup<K: aya::Pod, V: aya::Pod>(&self, name: &'static str, key: &K) -> Result<Option<V>> {
        let map: HashMap<MapData, K, V> = HashMap::try_from(self.map(name)?).map_err(MapError::typed(name, "open"))?;
        match map.get(key, 0) {
            Ok(v) => Ok(Some(v)),
            Err(aya::maps::MapError::KeyNotFound) => Ok(None),
            Err(e) => Err(MapError::typed(name, "read")(e)),
        }
    }

    /// The conntrack entry of `key` (a forward or reply key), if any: the entry itself, or the
    /// view of it that its client's one entry holds (see [`Self::conntrack`]).
    pub fn conntrack_entry(&self, key: &CtKey) -> Result<Option<CtValue>> {
        if let Some(v) = self.raw_conntrack_entry(key)? {
            return Ok(Some(v));
        }
        let Some((client, view)) = lb_common::client_key_of(key) else {
            return Ok(None);
        };
        let Some(v) = self.raw_conntrack_entry(&client)? else {
            return Ok(None);
        };
        Ok(lb_common::client_entry_views(&client, &v).and_then(|views| (views[view].0 == *key).then_some(views[view].1)))
    }

    fn raw_conntrack_entry(&self, key: &CtKey) -> Result<Option<CtValue>> {
        // Pins of an older agent may lack the client table (client entries then sit in
        // `LB_CONNTRACK4` under their 16-byte key) or both IPv4 tables (all in `LB_CONNTRACK`).
        match (key.table_key(), CtKey4::from_key(key)) {
            (CtTableKey::Client4(c), _) if self.has(lb_common::CONNTRACK4_CLIENT) => {
                self.lookup(lb_common::CONNTRACK4_CLIENT, &c)
            }
            (_, Some(k4)) if self.has(lb_common::CONNTRACK4) => match self.lookup(lb_common::CONNTRACK4, &k4)? {
                Some(v) => Ok(Some(v)),
                None => self.slot_entry(key),
            },
            _ => self.lookup(lb_common::CONNTRACK, key),
        }
    }

    /// The affinity record of `key`, if any.
    pub fn affinity_record(&self, key: &lb_common::AffinityKey) -> Result<Option<lb_common::AffinityValue>> {
        self.lookup(lb_common::AFFINITY, key)
    }

    /// The layout and agent version record.
    pub fn meta(&self) -> Result<lb_common::Meta> {
        let name = lb_common::META;
        let arr: Array<MapData, lb_common::Meta> = Array::try_from(self.map(name)?).map_err(MapError::typed(name, "open"))?;
        arr.get(&0, 0).map_err(MapError::typed(name, "read"))
    }

    /// The account of the agent that owns the pins; `None` when none was ever written (or
    /// the pins predate the record).
    pub fn agent(&self) -> Option<super::agent_record::AgentReport> {
        let name = lb_common::AGENT;
        let arr: Array<MapData, lb_common::AgentStatus> = Array::try_from(self.map(name).ok()?).ok()?;
        super::agent_record::AgentReport::decode(&arr.get(&0, 0).ok()?)
    }

    pub fn affinity(&self) -> Result<Vec<(lb_common::AffinityKey, lb_common::AffinityValue)>> {
        self.hash(lb_common::AFFINITY)
    }

    /// The socket programs' reverse translations (a node process's connected UDP socket →
    /// the frontend its replies come from).
    pub fn sock_revnat(&self) -> Result<Vec<(lb_common::SockRevKey, lb_common::SockRevValue)>> {
        self.hash(lb_common::SOCK_REVNAT)
    }

    /// Global counters summed over CPUs, indexed by `CNT_*`.
    pub fn counters(&self) -> Result<Vec<u64>> {
        let name = lb_common::STATS;
        let arr: PerCpuArray<MapData, u64> = PerCpuArray::try_from(self.map(name)?).map_err(MapError::typed(name, "open"))?;
        (0..CNT_MAX).map(|i| arr.get(&i, 0).map(|v| v.iter().sum()).map_err(MapError::typed(name, "read"))).collect()
    }

    /// Per-service counters summed over CPUs, by `svc_id`: the ServicePorts `LB_SVC_NAMES`
    /// names (the array's other slots belong to nobody).
    pub fn service_counters(&self) -> Result<Vec<(u32, FlowCounters)>> {
        let ids: Vec<u32> = self.hash::<u32, lb_common::SvcName>(lb_common::SVC_NAMES)?.into_iter().map(|(id, _)| id).collect();
        self.per_cpu_stats(lb_common::SVC_STATS, ids)
    }

    /// Per-backend counters summed over CPUs, by backend id: the backends `LB_BACKENDS` holds.
    pub fn backend_counters(&self) -> Result<Vec<(u32, FlowCounters)>> {
        let ids = self.backends()?.into_iter().map(|(id, _)| id).collect();
        self.per_cpu_stats(lb_common::BACKEND_STATS, ids)
    }

    /// Per-backend counters with each backend (address, port, protocol).
    pub fn backend_counters_by_backend(&self) -> Result<Vec<(lb_common::Backend, FlowCounters)>> {
        let backends: std::collections::BTreeMap<u32, lb_common::Backend> = self.backends()?.into_iter().collect();
        let ids = backends.keys().copied().collect();
        Ok(self
            .per_cpu_stats(lb_common::BACKEND_STATS, ids)?
            .into_iter()
            .filter_map(|(id, c)| Some((*backends.get(&id)?, c)))
            .collect())
    }

    /// The backends `LB_BACKENDS` holds, by id.
    fn backends(&self) -> Result<Vec<(u32, lb_common::Backend)>> {
        let name = lb_common::BACKENDS;
        let arr: Array<MapData, lb_common::Backend> = Array::try_from(self.map(name)?).map_err(MapError::typed(name, "open"))?;
        let mut out = Vec::new();
        for (id, be) in arr.iter().enumerate() {
            let be = be.map_err(MapError::typed(name, "read"))?;
            if be.is_set() {
                out.push((id as u32, be));
            }
        }
        Ok(out)
    }

    /// The counters of `ids` in counter array `name` (blocks of `STATS_BLOCK` ids), summed over
    /// CPUs: one read per block.
    fn per_cpu_stats(&self, name: &'static str, mut ids: Vec<u32>) -> Result<Vec<(u32, FlowCounters)>> {
        let arr: PerCpuArray<MapData, FlowCounterBlock> =
            PerCpuArray::try_from(self.map(name)?).map_err(MapError::typed(name, "open"))?;
        ids.sort_unstable();
        ids.dedup();
        let mut out = Vec::with_capacity(ids.len());
        let mut block: Option<(u32, aya::maps::PerCpuValues<FlowCounterBlock>)> = None;
        for id in ids {
            let index = id / STATS_BLOCK;
            let vals = match &block {
                Some((i, vals)) if *i == index => vals,
                _ => &block.insert((index, arr.get(&index, 0).map_err(MapError::typed(name, "read"))?)).1,
            };
            let slot = (id % STATS_BLOCK) as usize;
            let sum = vals.iter().fold(FlowCounters::default(), |a, v| FlowCounters {
                packets: a.packets + v.ids[slot].packets,
                bytes: a.bytes + v.ids[slot].bytes,
                new_flows: a.new_flows + v.ids[slot].new_flows,
            });
            out.push((id, sum));
        }
        Ok(out)
    }

    /// `lb monitor`'s counts (events written to the ring, events lost), summed over CPUs.
    pub fn monitor_stats(&self) -> Result<lb_common::MonitorStats> {
        let name = lb_common::MONITOR_STATS;
        let arr: PerCpuArray<MapData, lb_common::MonitorStats> =
            PerCpuArray::try_from(self.map(name)?).map_err(MapError::typed(name, "open"))?;
        let per_cpu = arr.get(&0, 0).map_err(MapError::typed(name, "read"))?;
        Ok(per_cpu.iter().fold(lb_common::MonitorStats::default(), |a, s| lb_common::MonitorStats {
            written: a.written + s.written,
            lost: a.lost + s.lost,
        }))
    }

    /// Writes `lb monitor`'s request: the one map the CLI writes (see
    /// `lb_common::MonitorConfig`).
    pub fn set_monitor(&self, cfg: &lb_common::MonitorConfig) -> Result<()> {
        let name = lb_common::MONITOR;
        let mut arr: Array<MapData, lb_common::MonitorConfig> =
            Array::try_from(self.map(name)?).map_err(MapError::typed(name, "open"))?;
        arr.set(0, *cfg, 0).map_err(MapError::typed(name, "write"))
    }

    /// The events ring of `lb monitor`.
    pub fn events(&self) -> Result<aya::maps::RingBuf<MapData>> {
        let name = lb_common::EVENTS;
        aya::maps::RingBuf::try_from(self.map(name)?).map_err(MapError::typed(name, "open"))
    }

    /// Every pinned map's entries as raw bytes (key, value), in key order: two snapshots compare
    /// equal iff nothing wrote the maps in between (what `lb explain` promises).
    pub fn snapshot(&self) -> Result<Vec<(&'static str, RawEntries)>> {
        lb_common::ALL_MAPS
            .iter()
            .map(|name| {
                let data = pin(&self.pin_path, name)?;
                if matches!(data.info().map(|i| i.map_type()), Ok(Ok(aya::maps::MapType::RingBuf))) {
                    // A ring buffer has no entries to read (its reader consumes it).
                    return Ok((*name, Vec::new()));
                }
                let raw = RawMap::any(name, data)?;
                let mut entries = Vec::new();
                raw.for_each_entry(|k, v| entries.push((k.to_vec(), v.to_vec())))?;
                entries.sort();
                entries.dedup();
                Ok((*name, entries))
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
                let data = pin(&self.pin_path, name).ok()?;
                let info = data.info().ok()?;
                let array = matches!(info.map_type(), Ok(aya::maps::MapType::Array | aya::maps::MapType::PerCpuArray));
                let max = info.max_entries();
                let raw = RawMap::new(name, data, info.key_size() as usize, info.value_size() as usize).ok()?;
                let used = if array { None } else { raw.len().ok() };
                Some((*name, used, max))
            })
            .collect()
    }
}

/// The pinned map `name` under `pin_path`.
fn pin(pin_path: &Path, name: &'static str) -> Result<MapData> {
    MapData::from_pin(pin_path.join(name)).map_err(|source| MapError::Open { name, source })
}
