//! A private run of the datapath, for `lb explain`: the embedded object (the code the agent
//! attached, compared by program tag) loaded a second time, sharing the running agent's
//! configuration maps (services, backends, selection tables, members, source ranges, address
//! filter, node settings) read-only through their pins, with **private** copies of the maps the
//! datapath writes (`lb_common::DATAPATH_STATE_MAPS`: conntrack, affinity, fragments, socket
//! reverse NAT, counters). A synthetic packet goes through that program with BPF_PROG_TEST_RUN:
//! it decides exactly as the attached program would, and whatever it writes (conntrack and
//! affinity entries, a SNAT port, counters) lands in the private maps, which go away with the
//! probe. The live maps are never written.
//!
//! The caller seeds the private maps with the live entries that concern the packet (its
//! conntrack entries, its client's affinity record), so that an established flow or a
//! remembered backend is explained as the node would handle it.

use std::{
    fs, io,
    path::{Path, PathBuf},
};

use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, HashMap, MapData, PerCpuArray},
    programs::{SchedClassifier, TestRun as _, TestRunOptions, Xdp},
};
use lb_common::{AffinityKey, AffinityValue, CNT_MAX, Config, CtClientKey4, CtKey, CtKey4, CtTableKey, CtValue, SnatSlot4};

use super::{DataplaneError, OBJECT, Result};
use crate::maps::{
    MapError,
    pinned::{as_two_entry_views, slot_entries},
};

/// Capacities of the private state maps: a probe writes at most a few entries.
const PRIVATE_SIZES: [(&str, u32); 8] = [
    (lb_common::CONNTRACK4_CLIENT, 1024),
    (lb_common::CONNTRACK4, 1024),
    (lb_common::CONNTRACK, 1024),
    (lb_common::AFFINITY, 256),
    (lb_common::FRAGS, 16),
    (lb_common::SOCK_REVNAT, 16),
    // Per-ServicePort and per-backend counters are not reported: one slot each (the program's
    // counting of a higher id simply finds no slot).
    (lb_common::SVC_STATS, 1),
    (lb_common::BACKEND_STATS, 1),
];

/// The datapath loaded privately (module docs).
pub struct Probe {
    ebpf: Ebpf,
    program: &'static str,
    /// bpffs directory of the private maps' pins; removed on drop.
    private_dir: PathBuf,
}

/// What one probe run did.
#[derive(Debug)]
pub struct ProbeRun {
    /// The program's return code (`XDP_*` or `TC_ACT_*`).
    pub ret: u32,
    /// The packet as the program left it.
    pub packet: Vec<u8>,
    /// The global counters it counted, indexed by `CNT_*` (summed over CPUs).
    pub counters: Vec<u64>,
    /// The private conntrack after the run (the seeded entries and those it wrote).
    pub conntrack: Vec<(CtKey, CtValue)>,
    /// The private affinity records after the run.
    pub affinity: Vec<(AffinityKey, AffinityValue)>,
}

impl Probe {
    /// Loads `program` (`lb_common::PROG_*` of a packet program) privately against the agent's
    /// pins under `pin_path`.
    pub fn load(pin_path: &Path, program: &'static str) -> Result<Self> {
        if OBJECT.is_empty() {
            return Err(DataplaneError::NoObject);
        }
        crate::maps::layout::check(pin_path)?;
        let shared: Vec<&'static str> =
            lb_common::ALL_MAPS.iter().copied().filter(|m| !lb_common::DATAPATH_STATE_MAPS.contains(m)).collect();
        // aya would create (and pin) a map whose pin is missing: refuse before that.
        for name in &shared {
            if !pin_path.join(name).exists() {
                return Err(DataplaneError::NotRunning { path: pin_path.to_owned(), missing: name });
            }
        }
        // The private pins live next to the agent's directory on the same bpffs (whose names take
        // no dots).
        let parent = pin_path.parent().unwrap_or(Path::new("/sys/fs/bpf"));
        remove_abandoned(parent);
        let stamp = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
        let private_dir = parent.join(format!("{PRIVATE_PREFIX}{}-{stamp}", std::process::id()));
        fs::create_dir_all(&private_dir).map_err(|source| DataplaneError::PinDir { path: private_dir.clone(), source })?;
        // From here on `Drop` removes the directory (and with it the private maps).
        let shared_pins: Vec<(&'static str, PathBuf)> = shared.iter().map(|n| (*n, pin_path.join(n))).collect();
        let object = super::object::prepared();
        let mut loader = EbpfLoader::new();
        loader.default_map_pin_directory(&private_dir);
        object.configure(&mut loader);
        for (name, path) in &shared_pins {
            loader.map_pin_path(name, path.as_path());
        }
        for (name, size) in PRIVATE_SIZES {
            loader.map_max_entries(name, size);
        }
        let loaded = loader.load(object.bytes()).map_err(DataplaneError::Load);
        let mut ebpf = match loaded {
            Ok(e) => e,
            Err(e) => {
                let _ = fs::remove_dir_all(&private_dir);
                return Err(e);
            }
        };
        let res = load_program(&mut ebpf, program).and_then(|()| super::clock::write(&mut ebpf));
        let probe = Self { ebpf, program, private_dir };
        res.map(|()| probe)
    }

    /// The tag of the loaded program: equal to an attached program's tag iff both are the same
    /// code (the kernel's tag leaves map references out).
    pub fn tag(&self) -> Result<u64> {
        let prog = self.ebpf.program(self.program).ok_or(DataplaneError::MissingProgram { name: self.program })?;
        let info = match prog {
            aya::programs::Program::Xdp(p) => p.info(),
            aya::programs::Program::SchedClassifier(p) => p.info(),
            _ => return Err(DataplaneError::MissingProgram { name: self.program }),
        };
        info.map(|i| i.tag()).map_err(|source| DataplaneError::Program { name: self.program, source })
    }

    /// Copies live conntrack entries into the private conntrack (each into its family's table).
    pub fn seed_conntrack(&mut self, entries: &[(CtKey, CtValue)]) -> Result<()> {
        for (k, v) in entries {
            match k.table_key() {
                CtTableKey::Client4(c) => {
                    let name = lb_common::CONNTRACK4_CLIENT;
                    let mut map: HashMap<&mut MapData, CtClientKey4, CtValue> = self.private_map(name)?;
                    map.insert(c, v, 0).map_err(MapError::typed(name, "write"))?;
                }
                CtTableKey::Flow4(k4) => {
                    let name = lb_common::CONNTRACK4;
                    let mut map: HashMap<&mut MapData, CtKey4, CtValue> = self.private_map(name)?;
                    map.insert(k4, v, 0).map_err(MapError::typed(name, "write"))?;
                }
                CtTableKey::V6(_) => {
                    let name = lb_common::CONNTRACK;
                    let mut map: HashMap<&mut MapData, CtKey, CtValue> = self.private_map(name)?;
                    map.insert(k, v, 0).map_err(MapError::typed(name, "write"))?;
                }
            }
        }
        Ok(())
    }

    /// Copies live affinity records into the private affinity map.
    pub fn seed_affinity(&mut self, entries: &[(AffinityKey, AffinityValue)]) -> Result<()> {
        let name = lb_common::AFFINITY;
        let mut map: HashMap<&mut MapData, AffinityKey, AffinityValue> = self.private_map(name)?;
        for (k, v) in entries {
            map.insert(k, v, 0).map_err(MapError::typed(name, "write"))?;
        }
        Ok(())
    }

    fn private_map<'a, K: aya::Pod, V: aya::Pod>(&'a mut self, name: &'static str) -> Result<HashMap<&'a mut MapData, K, V>> {
        let map = self.ebpf.map_mut(name).ok_or(MapError::Missing { name })?;
        Ok(HashMap::try_from(map).map_err(MapError::typed(name, "open"))?)
    }

    /// Runs the program once on `frame` (an Ethernet frame).
    pub fn run(&self, frame: &[u8]) -> Result<ProbeRun> {
        // Room for a reject that grows the packet (an ICMP error quoting it).
        let mut out = vec![0u8; frame.len() + 256];
        let opts = TestRunOptions { data_in: Some(frame), data_out: Some(&mut out), ..TestRunOptions::default() };
        let prog = self.ebpf.program(self.program).ok_or(DataplaneError::MissingProgram { name: self.program })?;
        let res = match prog {
            aya::programs::Program::Xdp(p) => p.test_run(opts),
            aya::programs::Program::SchedClassifier(p) => p.test_run(opts),
            _ => return Err(DataplaneError::MissingProgram { name: self.program }),
        }
        .map_err(|source| DataplaneError::Program { name: self.program, source })?;
        out.truncate(res.data_size_out as usize);

        let name = lb_common::STATS;
        let stats: PerCpuArray<&MapData, u64> = PerCpuArray::try_from(self.ebpf.map(name).ok_or(MapError::Missing { name })?)
            .map_err(MapError::typed(name, "open"))?;
        let counters = (0..CNT_MAX)
            .map(|i| stats.get(&i, 0).map(|v| v.iter().sum()).map_err(MapError::typed(name, "read")))
            .collect::<std::result::Result<Vec<u64>, _>>()?;
        Ok(ProbeRun {
            ret: res.return_value,
            packet: out,
            counters,
            conntrack: {
                let client: Vec<(CtClientKey4, CtValue)> = self.entries(lb_common::CONNTRACK4_CLIENT)?;
                let v4: Vec<(CtKey4, CtValue)> = self.entries(lb_common::CONNTRACK4)?;
                let mut all: Vec<(CtKey, CtValue)> = client.into_iter().map(|(k, v)| (k.to_key(), v)).collect();
                all.extend(v4.into_iter().map(|(k, v)| (k.to_key(), v)));
                all.extend(self.slot_entries()?);
                all.extend(self.entries::<CtKey, CtValue>(lb_common::CONNTRACK)?);
                as_two_entry_views(all)
            },
            affinity: self.entries(lb_common::AFFINITY)?,
        })
    }

    /// The reply entries the run wrote into SNAT port slots, under the keys they stand for.
    fn slot_entries(&self) -> Result<Vec<(CtKey, CtValue)>> {
        let array = |name: &'static str| self.ebpf.map(name).ok_or(MapError::Missing { name });
        let name = lb_common::CONFIG;
        let config: Array<&MapData, Config> = Array::try_from(array(name)?).map_err(MapError::typed(name, "open"))?;
        let cfg = config.get(&0, 0).map_err(MapError::typed(name, "read"))?;
        let name = lb_common::SNAT4_SLOTS;
        let slots: Array<&MapData, SnatSlot4> = Array::try_from(array(name)?).map_err(MapError::typed(name, "open"))?;
        Ok(slot_entries(&slots, &cfg)?)
    }

    fn entries<K: aya::Pod, V: aya::Pod>(&self, name: &'static str) -> Result<Vec<(K, V)>> {
        let map: HashMap<&MapData, K, V> =
            HashMap::try_from(self.ebpf.map(name).ok_or(MapError::Missing { name })?).map_err(MapError::typed(name, "open"))?;
        Ok(map.iter().collect::<std::result::Result<Vec<_>, _>>().map_err(MapError::typed(name, "read"))?)
    }
}

fn load_program(ebpf: &mut Ebpf, name: &'static str) -> Result<()> {
    let prog = ebpf.program_mut(name).ok_or(DataplaneError::MissingProgram { name })?;
    let res = if let Ok(p) = <&mut Xdp>::try_from(&mut *prog) {
        p.load()
    } else if let Ok(p) = <&mut SchedClassifier>::try_from(prog) {
        p.load()
    } else {
        return Err(DataplaneError::MissingProgram { name });
    };
    res.map_err(|source| DataplaneError::Program { name, source })
}

impl Drop for Probe {
    fn drop(&mut self) {
        // Unpinning frees the private maps once the object's descriptors close.
        if let Err(e) = fs::remove_dir_all(&self.private_dir)
            && e.kind() != io::ErrorKind::NotFound
        {
            tracing::warn!(path = %self.private_dir.display(), error = %e, "could not remove the explain's private pins");
        }
    }
}

/// The name prefix of a probe's private pin directory (`lb-explain-PID-STAMP`).
const PRIVATE_PREFIX: &str = "lb-explain-";

/// Removes the private pin directories of probes whose process is gone (an `lb explain` killed
/// before it could clean up would otherwise leave its private maps pinned).
fn remove_abandoned(parent: &Path) {
    let Ok(entries) = fs::read_dir(parent) else { return };
    for e in entries.flatten() {
        let name = e.file_name();
        let Some(pid) = name.to_str().and_then(|n| n.strip_prefix(PRIVATE_PREFIX)).and_then(|r| r.split('-').next()) else {
            continue;
        };
        if pid.parse::<u32>().is_ok() && !Path::new("/proc").join(pid).exists() {
            let _ = fs::remove_dir_all(e.path());
        }
    }
}

/// The tag of the program attached through the link pinned at `link_pin` (a `link_*` pin of the
/// agent), to compare with [`Probe::tag`].
pub fn attached_tag(link_pin: &Path) -> Option<u64> {
    let link = aya::programs::links::FdLink::from(aya::programs::links::PinnedLink::from_pin(link_pin).ok()?);
    let id = link.info().ok()?.program_id();
    aya::programs::loaded_programs().flatten().find(|p| p.id() == id).map(|p| p.tag())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A dead process's private directory goes; a live one's and anything else stay.
    #[test]
    fn abandoned_private_directories_are_removed() {
        let parent = std::env::temp_dir().join(format!("lb-probe-test-{}", std::process::id()));
        let dead = parent.join(format!("{PRIVATE_PREFIX}4000000000-1"));
        let live = parent.join(format!("{PRIVATE_PREFIX}{}-2", std::process::id()));
        let other = parent.join("lb");
        for d in [&dead, &live, &other] {
            fs::create_dir_all(d).unwrap();
        }
        fs::write(dead.join("LB_CONNTRACK"), b"").unwrap();
        remove_abandoned(&parent);
        assert!(!dead.exists() && live.exists() && other.exists());
        fs::remove_dir_all(&parent).unwrap();
    }
}
