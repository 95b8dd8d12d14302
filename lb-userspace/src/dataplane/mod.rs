//! The one writer of the kernel side: loads the embedded eBPF object, pins and adopts its maps
//! (`layout.rs`), attaches its programs ([`attach`]), applies planned states to the maps through
//! the map table ([`apply`]) and sweeps conntrack ([`conntrack`]).
//!
//! # Pins and restarts
//! Everything lives under one bpffs directory (`--pin-path`, default
//! [`DEFAULT_PIN_PATH`]), so two agents with different directories never share state:
//! - maps: `<pin>/LB_*`, adopted with their contents by the next agent;
//! - attachments: links pinned at `<pin>/link_<where>_<kind>` (`link_eth0_xdp-native`,
//!   `link_lxc1_tc-pod`, `link_cgroup_connect4`, ...). A restarting agent atomically swaps its
//!   freshly loaded program into an existing TC or XDP link (`bpf_link_update`), and attaches
//!   its socket programs before releasing the old ones, so no packet or connect() ever meets a
//!   hook without a program.
//!
//! An agent that exits leaves all of it in place: the datapath keeps serving the last state.
//! [`cleanup`] removes the directory, which detaches the links and frees the maps.

use std::{
    io,
    path::{Path, PathBuf},
};

use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, Map, MapData},
    programs::{ProgramError, SchedClassifier, Xdp},
};
use lb_common::{AgentStatus, Config};

pub use crate::maps::DEFAULT_PIN_PATH;
use crate::maps::{KernelMaps, MapError, MapState, sizes::MapSizes};

pub mod apply;
pub mod attach;
mod clock;
pub mod conntrack;
mod counters;
pub mod grow;
mod kernel_btf;
mod layout;
pub mod lock;
mod object;
pub mod probe;
mod upgrade;

pub use attach::ExternalMode;
pub use layout::cleanup;

/// The eBPF object, built by `build.rs` through aya-build and embedded at compile time.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/lb-ebpf"));

#[derive(Debug, thiserror::Error)]
pub enum DataplaneError {
    #[error("this lb binary was built without its eBPF object (AYA_BUILD_SKIP was set); rebuild without it")]
    NoObject,
    #[error("failed to create the pin directory {path}")]
    PinDir {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("failed to load the eBPF object")]
    Load(#[source] aya::EbpfError),
    #[error("the eBPF object has no program named {name}")]
    MissingProgram { name: &'static str },
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
    #[error("failed to attach the socket programs to cgroup {path}")]
    Cgroup {
        path: PathBuf,
        #[source]
        source: ProgramError,
    },
    #[error("failed to pin the link of {what} at {path}")]
    PinLink {
        what: String,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(transparent)]
    Map(#[from] MapError),
    #[error(
        "another lb agent owns the pins at {} ({owner}); stop it first, or give this agent its own --pin-path",
        path.display()
    )]
    Locked { path: PathBuf, owner: String },
    #[error("no running lb agent's maps at {} ({missing} is not pinned): is the agent running, and is --pin-path right?", path.display())]
    NotRunning { path: PathBuf, missing: &'static str },
    #[error("failed to move the pin {path} while growing its map")]
    Grow {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("failed to remove {path}")]
    Cleanup {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

impl DataplaneError {
    /// What an operator should do about this error while the agent runs (the first words of
    /// the log line; the error chain follows it).
    pub fn what_to_do(&self) -> &'static str {
        match self {
            Self::Map(MapError::Full { .. }) => {
                "a map is at its ceiling: raise it with --map-max MAP=ENTRIES (`lb status` shows each map's fill)"
            }
            Self::Map(MapError::Layout { .. } | MapError::LayoutVersion { .. }) => {
                "the pinned maps belong to an incompatible build: run `lb agent --cleanup` (drops live connections) and restart the agent"
            }
            Self::Map(MapError::Missing { .. } | MapError::Open { .. }) | Self::Grow { .. } | Self::PinDir { .. } => {
                "the agent's pins changed under it (removed or replaced by hand?): restart the agent; it adopts or recreates them"
            }
            Self::Map(MapError::Write { source, .. } | MapError::Delete { source, .. })
                if matches!(source.raw_os_error(), Some(libc::EPERM | libc::EACCES)) =>
            {
                "the kernel refuses writes to a map (frozen by another program, or a security policy): find what holds it (`bpftool map show`, the pin path) and restart the agent"
            }
            Self::Map(_) => {
                "the kernel refused a map operation: check the node's memory and the agent's memlock limit (dmesg may say more); the agent retries"
            }
            Self::Locked { .. } => "another agent owns these pins: stop it, or give this agent its own --pin-path",
            _ => "see the error below; restart the agent if it persists",
        }
    }

    /// The `reason` label of a sync that failed with this error.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Map(MapError::Full { .. }) => "map_full",
            Self::Map(_) => "map_write",
            _ => "other",
        }
    }
}

pub type Result<T, E = DataplaneError> = std::result::Result<T, E>;

/// Load-time settings.
#[derive(Clone, Debug)]
pub struct DataplaneConfig {
    pub pin_path: PathBuf,
    /// Map capacities asked for when the maps are created (pinned maps keep theirs).
    pub sizes: MapSizes,
    /// The most each map grows to online ([`grow`]).
    pub max_sizes: MapSizes,
}

impl Default for DataplaneConfig {
    fn default() -> Self {
        Self { pin_path: PathBuf::from(DEFAULT_PIN_PATH), sizes: MapSizes::default(), max_sizes: MapSizes::ceilings() }
    }
}

/// The loaded datapath and the agent-written maps, with a shadow copy of their contents.
pub struct Dataplane {
    ebpf: Ebpf,
    pin_path: PathBuf,
    /// The agent-written maps (the map table).
    maps: KernelMaps,
    conntrack: conntrack::Tables,
    /// The maps' real capacities.
    limits: MapSizes,
    /// The most each map grows to.
    max_sizes: MapSizes,
    /// What the maps hold (read at load, then updated with every applied op).
    shadow: MapState,
}

impl Dataplane {
    /// Loads the programs and creates or adopts the pinned maps under `config.pin_path`.
    pub fn load(config: &DataplaneConfig) -> Result<Self> {
        if OBJECT.is_empty() {
            return Err(DataplaneError::NoObject);
        }
        let pin_path = &config.pin_path;
        std::fs::create_dir_all(pin_path).map_err(|source| DataplaneError::PinDir { path: pin_path.clone(), source })?;
        crate::maps::layout::check(pin_path)?;
        grow::recover_interrupted(pin_path)?;
        if let Some(why) = &object::prepared().fallback {
            tracing::warn!(reason = %why, "TC programs keep the checksum helpers (one or two helper calls more per translated packet)");
        }
        // Maps an earlier build pinned with another layout give way to this build's.
        let mut config = config.clone();
        let replaced = upgrade::Replaced::set_aside(pin_path, &mut config.sizes)?;
        let mut dp = Self::load_object(&config, None).inspect_err(|_| replaced.put_back(pin_path))?;
        if replaced.any() {
            replaced.convert(pin_path)?;
            dp.shadow = dp.maps.read()?;
        }
        // Flows an older build kept in the IPv6 table (the running programs may add more until
        // the new ones are attached: the agent moves those right after attaching).
        dp.move_ipv4_flows()?;
        Ok(dp)
    }

    /// Loads the object, adopting the maps pinned under `config.pin_path` and creating (and
    /// pinning) the others. `shadow`: what the adopted maps are known to hold (else they are read
    /// back).
    fn load_object(config: &DataplaneConfig, shadow: Option<MapState>) -> Result<Self> {
        let pin_path = config.pin_path.clone();

        let object = object::prepared();
        let mut loader = EbpfLoader::new();
        loader.default_map_pin_directory(&pin_path);
        config.sizes.request(&mut loader);
        object.configure(&mut loader);
        let mut ebpf = loader.load(object.bytes()).map_err(DataplaneError::Load)?;
        let limits = MapSizes::actual(&config.sizes, |name| ebpf.map(name).and_then(crate::maps::sizes::max_entries));
        for ((name, want), (_, got)) in config.sizes.by_name().into_iter().zip(limits.by_name()) {
            if got != want {
                tracing::warn!(
                    map = name,
                    pinned = got,
                    requested = want,
                    "a pinned map keeps the size it was created with until a state needs more room (it then grows online)"
                );
            }
        }
        attach::load_programs(&mut ebpf)?;
        clock::write(&mut ebpf)?;
        layout::write(&mut ebpf)?;

        let maps = KernelMaps::open(|name| take_map_data(&mut ebpf, name))?;
        let conntrack = conntrack::Tables::open(&mut ebpf)?;
        let shadow = match shadow {
            Some(s) => s,
            None => maps.read()?,
        };
        Ok(Self { ebpf, pin_path, maps, conntrack, limits, max_sizes: config.max_sizes, shadow })
    }

    pub fn pin_path(&self) -> &Path {
        &self.pin_path
    }

    /// The maps' real capacities (an adopted pin keeps the size it was created with).
    pub fn limits(&self) -> &MapSizes {
        &self.limits
    }

    /// What the agent-written maps hold now.
    pub fn state(&self) -> &MapState {
        &self.shadow
    }

    /// The datapath clock's calibration in this object (`None`: not calibrated, the programs
    /// call `bpf_ktime_get_coarse_ns`).
    pub fn clock(&self) -> Result<Option<lb_common::ClockCalibration>> {
        clock::read(&self.ebpf)
    }

    /// The pod-interface TC program (for BPF_PROG_TEST_RUN in tests).
    pub fn tc_program(&self) -> Result<&SchedClassifier> {
        self.classifier(lb_common::PROG_TC_POD)
    }

    /// A TC program by name ([`lb_common::PROG_TC_POD`], [`lb_common::PROG_TC_EXT`] or
    /// [`lb_common::PROG_TC_EGRESS`]).
    pub fn classifier(&self, name: &'static str) -> Result<&SchedClassifier> {
        self.ebpf.program(name).and_then(|p| p.try_into().ok()).ok_or(DataplaneError::MissingProgram { name })
    }

    /// The external-interface XDP program (for BPF_PROG_TEST_RUN in tests).
    pub fn xdp_program(&self) -> Result<&Xdp> {
        let name = lb_common::PROG_XDP_EXT;
        self.ebpf.program(name).and_then(|p| p.try_into().ok()).ok_or(DataplaneError::MissingProgram { name })
    }

    /// Writes the node-wide settings (SNAT and hairpin addresses, SNAT port range).
    pub fn set_config(&mut self, cfg: &Config) -> Result<()> {
        self.set_record(lb_common::CONFIG, *cfg)
    }

    /// Writes the agent's account of itself for `lb status` (see
    /// [`crate::maps::agent_record`]).
    pub fn set_agent_status(&mut self, status: &AgentStatus) -> Result<()> {
        self.set_record(lb_common::AGENT, *status)
    }

    /// Writes the one record of array map `name`.
    fn set_record<T: aya::Pod>(&mut self, name: &'static str, value: T) -> Result<()> {
        let map = self.ebpf.map_mut(name).ok_or(MapError::Missing { name })?;
        let mut arr: Array<&mut MapData, T> = Array::try_from(map).map_err(MapError::typed(name, "open"))?;
        Ok(arr.set(0, value, 0).map_err(MapError::typed(name, "write"))?)
    }
}

/// The data of map `name`, taken out of the loaded object.
fn take_map_data(ebpf: &mut Ebpf, name: &'static str) -> std::result::Result<MapData, MapError> {
    match ebpf.take_map(name).ok_or(MapError::Missing { name })? {
        Map::HashMap(d) | Map::LruHashMap(d) | Map::LpmTrie(d) | Map::Array(d) | Map::PerCpuArray(d) | Map::PerCpuHashMap(d) => {
            Ok(d)
        }
        _ => Err(MapError::Missing { name }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runtime errors are logged as "<what to do>; <what happens meanwhile>" before the chain.
    #[test]
    fn each_runtime_map_error_says_what_to_do_first() {
        let io = |errno| io::Error::from_raw_os_error(errno);
        let full = DataplaneError::Map(MapError::Full { name: "LB_BACKENDS", wanted: 10, limit: 5 });
        assert!(full.what_to_do().contains("--map-max"));
        let frozen = DataplaneError::Map(MapError::Write { name: "LB_SERVICES", source: io(libc::EPERM) });
        assert!(frozen.what_to_do().starts_with("the kernel refuses writes") && frozen.what_to_do().contains("bpftool map show"));
        let nomem = DataplaneError::Map(MapError::Write { name: "LB_SERVICES", source: io(libc::ENOMEM) });
        assert!(nomem.what_to_do().contains("memlock"));
        let layout = DataplaneError::Map(MapError::LayoutVersion { pin_dir: "/sys/fs/bpf/lb".into(), found: 1, expected: 2 });
        assert!(layout.what_to_do().contains("lb agent --cleanup"));
        let gone = DataplaneError::Map(MapError::Missing { name: "LB_SERVICES" });
        assert!(gone.what_to_do().contains("restart the agent"));
    }
}
