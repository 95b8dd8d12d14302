//! The one owner of the kernel side: loads the embedded eBPF object, pins and adopts its maps,
//! attaches its programs, and applies [`plan`](crate::plan) diffs to the maps.
//!
//! # Pins and restarts
//! Everything lives under one bpffs directory (`--pin-path`, default [`DEFAULT_PIN_PATH`]), so
//! two agents with different directories never share state:
//! - maps: `<pin>/LB_*`, adopted with their contents by the next agent;
//! - TC attachments: TCX links pinned at `<pin>/link_<ifname>_ingress`. A restarting agent
//!   atomically swaps its freshly loaded program into the existing link (`bpf_link_update`), so
//!   no packet ever meets an interface without the program.
//!
//! An agent that exits leaves both in place: the datapath keeps serving the last state.
//! [`cleanup`] removes the directory, which detaches the links and frees the maps.

use std::{
    fs, io,
    path::{Path, PathBuf},
};

use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, HashMap, Map, MapData, MapError, PerCpuArray, PerCpuHashMap},
    programs::{
        LinkOrder, ProgramError, SchedClassifier, TcAttachType,
        links::{FdLink, PinnedLink},
        tc::{SchedClassifierLink, TcAttachOptions},
    },
};
use lb_common::{
    Backend, CNT_MAX, LAYOUT_VERSION, Meta, SelectKey, ServiceKey, ServiceValue, SvcStats,
};

use crate::plan::{MapState, Op};

/// Where the agent pins its maps and links unless told otherwise.
pub const DEFAULT_PIN_PATH: &str = "/sys/fs/bpf/lb";

/// The eBPF object, built by `build.rs` through aya-build and embedded at compile time.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/lb-ebpf"));

#[derive(Debug, thiserror::Error)]
pub enum DataplaneError {
    #[error(
        "this lb binary was built without its eBPF object (AYA_BUILD_SKIP was set); rebuild without it"
    )]
    NoObject,
    #[error("failed to create the pin directory {path}")]
    PinDir {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "the maps pinned at {pin_dir} have layout version {found}, this build uses {expected}; \
         run `lb agent --cleanup --pin-path {pin_dir}` (drops live connections) and start again"
    )]
    LayoutMismatch {
        pin_dir: String,
        found: u32,
        expected: u32,
    },
    #[error("failed to load the eBPF object")]
    Load(#[source] aya::EbpfError),
    #[error("the eBPF object has no {kind} named {name}")]
    Missing {
        kind: &'static str,
        name: &'static str,
    },
    #[error("failed to load program {name}")]
    Program {
        name: &'static str,
        #[source]
        source: ProgramError,
    },
    #[error("failed to attach to interface {iface}")]
    Attach {
        iface: String,
        #[source]
        source: ProgramError,
    },
    #[error("failed to pin the link of interface {iface} at {path}")]
    PinLink {
        iface: String,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("map {name} is full: {wanted} entries needed, its limit is {limit}")]
    MapFull {
        name: &'static str,
        wanted: usize,
        limit: u32,
    },
    #[error("failed to {op} map {name}")]
    Map {
        name: &'static str,
        op: &'static str,
        #[source]
        source: MapError,
    },
    #[error("failed to remove {path}")]
    Cleanup {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

type Result<T, E = DataplaneError> = std::result::Result<T, E>;

/// Load-time settings.
#[derive(Clone, Debug)]
pub struct DataplaneConfig {
    pub pin_path: PathBuf,
    /// Override of [`lb_common::CONNTRACK_MAX`] (only applies when the maps are created).
    pub conntrack_max: Option<u32>,
}

impl Default for DataplaneConfig {
    fn default() -> Self {
        Self {
            pin_path: PathBuf::from(DEFAULT_PIN_PATH),
            conntrack_max: None,
        }
    }
}

/// The loaded datapath and the agent-written maps, with a shadow copy of their contents.
pub struct Dataplane {
    ebpf: Ebpf,
    pin_path: PathBuf,
    services: HashMap<MapData, ServiceKey, ServiceValue>,
    backends: HashMap<MapData, u32, Backend>,
    select: HashMap<MapData, SelectKey, u32>,
    /// What the maps hold (read at load, then updated with every applied op).
    shadow: MapState,
}

impl Dataplane {
    /// Loads the programs and creates or adopts the pinned maps under `config.pin_path`.
    pub fn load(config: &DataplaneConfig) -> Result<Self> {
        if OBJECT.is_empty() {
            return Err(DataplaneError::NoObject);
        }
        let pin_path = config.pin_path.clone();
        fs::create_dir_all(&pin_path).map_err(|source| DataplaneError::PinDir {
            path: pin_path.clone(),
            source,
        })?;
        check_layout(&pin_path)?;

        let mut loader = EbpfLoader::new();
        loader.default_map_pin_directory(&pin_path);
        if let Some(n) = config.conntrack_max {
            loader.map_max_entries(lb_common::CONNTRACK, n);
        }
        let mut ebpf = loader.load(OBJECT).map_err(DataplaneError::Load)?;
        {
            let prog = tc_program_mut(&mut ebpf)?;
            prog.load().map_err(|source| DataplaneError::Program {
                name: lb_common::PROG_TC_POD,
                source,
            })?;
        }
        write_layout(&mut ebpf)?;

        let services = take_hash(&mut ebpf, lb_common::SERVICES)?;
        let backends = take_hash(&mut ebpf, lb_common::BACKENDS)?;
        let select = take_hash(&mut ebpf, lb_common::SELECT)?;
        let mut dp = Self {
            ebpf,
            pin_path,
            services,
            backends,
            select,
            shadow: MapState::default(),
        };
        dp.shadow = dp.read_state()?;
        Ok(dp)
    }

    pub fn pin_path(&self) -> &Path {
        &self.pin_path
    }

    /// What the agent-written maps hold now.
    pub fn state(&self) -> &MapState {
        &self.shadow
    }

    /// The pod-interface TC program (for attaching, and for BPF_PROG_TEST_RUN in tests).
    pub fn tc_program(&self) -> Result<&SchedClassifier> {
        self.ebpf
            .program(lb_common::PROG_TC_POD)
            .and_then(|p| p.try_into().ok())
            .ok_or(DataplaneError::Missing {
                kind: "program",
                name: lb_common::PROG_TC_POD,
            })
    }

    /// Attaches the pod program to TC ingress of `iface`, replacing the program in a link a
    /// previous agent pinned (atomically, no packet unprocessed) or creating and pinning one.
    pub fn attach_pod_interface(&mut self, iface: &str) -> Result<()> {
        let links = self.pin_path.join("links");
        fs::create_dir_all(&links).map_err(|source| DataplaneError::PinDir {
            path: links.clone(),
            source,
        })?;
        let path = self.pin_path.join(format!("link_{iface}_ingress"));
        let attach_err = |source| DataplaneError::Attach {
            iface: iface.to_owned(),
            source,
        };
        let prog = tc_program_mut(&mut self.ebpf)?;
        if let Ok(old) = PinnedLink::from_pin(&path) {
            let link = SchedClassifierLink::try_from(FdLink::from(old))
                .map_err(|e| attach_err(ProgramError::IOError(io::Error::other(e))))?;
            match prog.attach_to_link(link) {
                Ok(_) => return Ok(()),
                Err(e) => {
                    // The interface behind the old link is gone (recreated pod interface): start
                    // over with a new link.
                    tracing::warn!(iface, error = %e, "could not reuse the pinned link; attaching anew");
                    let _ = fs::remove_file(&path);
                }
            }
        }
        let id = prog
            .attach_with_options(
                iface,
                TcAttachType::Ingress,
                TcAttachOptions::TcxOrder(LinkOrder::default()),
            )
            .map_err(attach_err)?;
        let link = prog.take_link(id).map_err(attach_err)?;
        let fd_link = FdLink::try_from(link)
            .map_err(|e| attach_err(ProgramError::IOError(io::Error::other(e))))?;
        fd_link.pin(&path).map_err(|e| DataplaneError::PinLink {
            iface: iface.to_owned(),
            path: path.clone(),
            source: io::Error::other(e),
        })?;
        Ok(())
    }

    /// Reads the agent-written maps back.
    fn read_state(&self) -> Result<MapState> {
        let mut st = MapState::default();
        for kv in self.services.iter() {
            let (k, v) = kv.map_err(|source| DataplaneError::Map {
                name: lb_common::SERVICES,
                op: "read",
                source,
            })?;
            st.services.insert(k, v);
        }
        for kv in self.backends.iter() {
            let (k, v) = kv.map_err(|source| DataplaneError::Map {
                name: lb_common::BACKENDS,
                op: "read",
                source,
            })?;
            st.backends.insert(k, v);
        }
        for kv in self.select.iter() {
            let (k, v) = kv.map_err(|source| DataplaneError::Map {
                name: lb_common::SELECT,
                op: "read",
                source,
            })?;
            st.select.insert(k, v);
        }
        Ok(st)
    }

    /// Makes the maps hold `desired` with the minimal writes, in the safe order. Capacity is
    /// checked before the first write, so a state that does not fit changes nothing.
    pub fn apply(&mut self, desired: &MapState) -> Result<usize> {
        check_capacity(
            lb_common::SERVICES,
            desired.services.len(),
            lb_common::SERVICES_MAX,
        )?;
        check_capacity(
            lb_common::BACKENDS,
            desired.backends.len(),
            lb_common::BACKENDS_MAX,
        )?;
        check_capacity(
            lb_common::SELECT,
            desired.select.len(),
            lb_common::SELECT_MAX,
        )?;
        let ops = crate::plan::diff(&self.shadow, desired);
        for op in &ops {
            self.write(op)?;
            self.shadow.apply(std::slice::from_ref(op));
        }
        Ok(ops.len())
    }

    fn write(&mut self, op: &Op) -> Result<()> {
        let put = |name, source| DataplaneError::Map {
            name,
            op: "write",
            source,
        };
        let del = |name, source| DataplaneError::Map {
            name,
            op: "delete from",
            source,
        };
        match op {
            Op::PutBackend(id, be) => self
                .backends
                .insert(id, be, 0)
                .map_err(|e| put(lb_common::BACKENDS, e)),
            Op::PutSelect(k, v) => self
                .select
                .insert(k, v, 0)
                .map_err(|e| put(lb_common::SELECT, e)),
            Op::PutService(k, v) => self
                .services
                .insert(k, v, 0)
                .map_err(|e| put(lb_common::SERVICES, e)),
            Op::DelService(k) => {
                ignore_missing(self.services.remove(k)).map_err(|e| del(lb_common::SERVICES, e))
            }
            Op::DelSelect(k) => {
                ignore_missing(self.select.remove(k)).map_err(|e| del(lb_common::SELECT, e))
            }
            Op::DelBackend(id) => {
                ignore_missing(self.backends.remove(id)).map_err(|e| del(lb_common::BACKENDS, e))
            }
        }
    }
}

fn ignore_missing(r: Result<(), MapError>) -> Result<(), MapError> {
    match r {
        Err(MapError::KeyNotFound | MapError::ElementNotFound) => Ok(()),
        Err(MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(libc::ENOENT) => Ok(()),
        other => other,
    }
}

fn check_capacity(name: &'static str, wanted: usize, limit: u32) -> Result<()> {
    if wanted > limit as usize {
        return Err(DataplaneError::MapFull {
            name,
            wanted,
            limit,
        });
    }
    Ok(())
}

fn tc_program_mut(ebpf: &mut Ebpf) -> Result<&mut SchedClassifier> {
    ebpf.program_mut(lb_common::PROG_TC_POD)
        .and_then(|p| p.try_into().ok())
        .ok_or(DataplaneError::Missing {
            kind: "program",
            name: lb_common::PROG_TC_POD,
        })
}

fn take_hash<K: aya::Pod, V: aya::Pod>(
    ebpf: &mut Ebpf,
    name: &'static str,
) -> Result<HashMap<MapData, K, V>> {
    let map = ebpf
        .take_map(name)
        .ok_or(DataplaneError::Missing { kind: "map", name })?;
    HashMap::try_from(map).map_err(|source| DataplaneError::Map {
        name,
        op: "open",
        source,
    })
}

/// Refuses to adopt maps pinned by a build with another layout (before aya reuses them).
fn check_layout(pin_path: &Path) -> Result<()> {
    let meta_path = pin_path.join(lb_common::META);
    let Ok(data) = MapData::from_pin(&meta_path) else {
        return Ok(()); // nothing pinned yet
    };
    let map = Map::from_map_data(data).map_err(|source| DataplaneError::Map {
        name: lb_common::META,
        op: "open",
        source,
    })?;
    let found = match Array::<_, Meta>::try_from(map) {
        Ok(arr) => {
            arr.get(&0, 0)
                .map_err(|source| DataplaneError::Map {
                    name: lb_common::META,
                    op: "read",
                    source,
                })?
                .layout_version
        }
        // A META map of another shape is another layout too.
        Err(_) => u32::MAX,
    };
    if found != 0 && found != LAYOUT_VERSION {
        return Err(DataplaneError::LayoutMismatch {
            pin_dir: pin_path.display().to_string(),
            found,
            expected: LAYOUT_VERSION,
        });
    }
    Ok(())
}

fn write_layout(ebpf: &mut Ebpf) -> Result<()> {
    let name = lb_common::META;
    let map = ebpf
        .map_mut(name)
        .ok_or(DataplaneError::Missing { kind: "map", name })?;
    let mut arr: Array<&mut MapData, Meta> =
        Array::try_from(map).map_err(|source| DataplaneError::Map {
            name,
            op: "open",
            source,
        })?;
    arr.set(
        0,
        Meta {
            layout_version: LAYOUT_VERSION,
            _pad: 0,
        },
        0,
    )
    .map_err(|source| DataplaneError::Map {
        name,
        op: "write",
        source,
    })
}

/// Removes every pin under `pin_path`: detaches the pinned links and frees the maps once no
/// program uses them.
pub fn cleanup(pin_path: &Path) -> Result<()> {
    match fs::remove_dir_all(pin_path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(DataplaneError::Cleanup {
            path: pin_path.to_owned(),
            source,
        }),
    }
}

/// Read-only view of a running agent's pinned maps, from another process (`lb maps dump`).
pub struct PinnedMaps {
    pin_path: PathBuf,
}

/// A conntrack entry as read from the map.
pub type CtEntry = (lb_common::CtKey, lb_common::CtValue);

impl PinnedMaps {
    pub fn open(pin_path: &Path) -> Result<Self> {
        // Opening one map checks that the directory holds our pins at all.
        let me = Self {
            pin_path: pin_path.to_owned(),
        };
        me.map(lb_common::SERVICES)?;
        check_layout(pin_path)?;
        Ok(me)
    }

    fn map(&self, name: &'static str) -> Result<Map> {
        let data =
            MapData::from_pin(self.pin_path.join(name)).map_err(|source| DataplaneError::Map {
                name,
                op: "open the pin of",
                source,
            })?;
        Map::from_map_data(data).map_err(|source| DataplaneError::Map {
            name,
            op: "open",
            source,
        })
    }

    fn hash<K: aya::Pod, V: aya::Pod>(&self, name: &'static str) -> Result<Vec<(K, V)>> {
        let map: HashMap<MapData, K, V> =
            HashMap::try_from(self.map(name)?).map_err(|source| DataplaneError::Map {
                name,
                op: "open",
                source,
            })?;
        map.iter()
            .collect::<Result<Vec<_>, _>>()
            .map_err(|source| DataplaneError::Map {
                name,
                op: "read",
                source,
            })
    }

    /// The agent-written maps.
    pub fn state(&self) -> Result<MapState> {
        Ok(MapState {
            services: self.hash(lb_common::SERVICES)?.into_iter().collect(),
            backends: self.hash(lb_common::BACKENDS)?.into_iter().collect(),
            select: self.hash(lb_common::SELECT)?.into_iter().collect(),
        })
    }

    pub fn conntrack(&self) -> Result<Vec<CtEntry>> {
        self.hash(lb_common::CONNTRACK)
    }

    /// Global counters summed over CPUs, indexed by `CNT_*`.
    pub fn counters(&self) -> Result<Vec<u64>> {
        let name = lb_common::STATS;
        let arr: PerCpuArray<MapData, u64> =
            PerCpuArray::try_from(self.map(name)?).map_err(|source| DataplaneError::Map {
                name,
                op: "open",
                source,
            })?;
        (0..CNT_MAX)
            .map(|i| {
                arr.get(&i, 0)
                    .map(|v| v.iter().sum())
                    .map_err(|source| DataplaneError::Map {
                        name,
                        op: "read",
                        source,
                    })
            })
            .collect()
    }

    /// Per-service counters summed over CPUs, by `svc_id`.
    pub fn service_counters(&self) -> Result<Vec<(u32, SvcStats)>> {
        let name = lb_common::SVC_STATS;
        let map: PerCpuHashMap<MapData, u32, SvcStats> = PerCpuHashMap::try_from(self.map(name)?)
            .map_err(|source| DataplaneError::Map {
            name,
            op: "open",
            source,
        })?;
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
                .map_err(|source| DataplaneError::Map {
                    name,
                    op: "read",
                    source,
                })
            })
            .collect()
    }
}
