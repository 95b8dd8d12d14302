//! The one owner of the kernel side: loads the embedded eBPF object, pins and adopts its maps,
//! attaches its programs, and applies [`plan`](crate::plan) diffs to the maps.
//!
//! # Pins and restarts
//! Everything lives under one bpffs directory (`--pin-path`, default [`DEFAULT_PIN_PATH`]), so
//! two agents with different directories never share state:
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
    fs, io,
    path::{Path, PathBuf},
};

use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, HashMap, LpmTrie, Map, MapData, MapError, lpm_trie::Key as LpmKey},
    programs::{
        CgroupAttachMode, CgroupSockAddr, LinkOrder, ProgramError, SchedClassifier, TcAttachType, Xdp, XdpMode,
        links::{FdLink, PinnedLink},
        tc::{SchedClassifierLink, TcAttachOptions},
        xdp::XdpLink,
    },
};
use lb_common::{
    Backend, Config, CtKey, CtValue, LAYOUT_VERSION, MaglevChunk, MaglevKey, MemberKey, Meta, SelectKey, ServiceKey,
    ServiceValue, SourceRangeData, SvcName,
};

use crate::{
    map_sizes::{self, MapSizes},
    plan::{MapState, Op},
    planner::Touched,
};

/// Where the agent pins its maps and links unless told otherwise.
pub const DEFAULT_PIN_PATH: &str = "/sys/fs/bpf/lb";

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
    #[error(
        "the maps pinned at {pin_dir} have layout version {found}, this build uses {expected}; \
         run `lb agent --cleanup --pin-path {pin_dir}` (drops live connections) and start again"
    )]
    LayoutMismatch { pin_dir: String, found: u32, expected: u32 },
    #[error("failed to load the eBPF object")]
    Load(#[source] aya::EbpfError),
    #[error("the eBPF object has no {kind} named {name}")]
    Missing { kind: &'static str, name: &'static str },
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
    #[error("map {name} is full: {wanted} entries needed, its limit is {limit}")]
    MapFull { name: &'static str, wanted: usize, limit: u32 },
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

pub type Result<T, E = DataplaneError> = std::result::Result<T, E>;

/// Load-time settings.
#[derive(Clone, Debug)]
pub struct DataplaneConfig {
    pub pin_path: PathBuf,
    /// Map capacities asked for when the maps are created (pinned maps keep theirs).
    pub sizes: MapSizes,
}

impl Default for DataplaneConfig {
    fn default() -> Self {
        Self { pin_path: PathBuf::from(DEFAULT_PIN_PATH), sizes: MapSizes::default() }
    }
}

/// How an external interface is attached.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ExternalMode {
    /// Native XDP if the driver has it, generic XDP otherwise.
    Auto,
    /// Native (driver) XDP only.
    Native,
    /// Generic (skb) XDP.
    Generic,
    /// TC ingress, for devices where XDP cannot attach.
    Tc,
}

impl ExternalMode {
    /// The name used in pins, logs and `lb status`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Auto => "auto",
            Self::Native => "xdp-native",
            Self::Generic => "xdp-generic",
            Self::Tc => "tc-ext",
        }
    }
}

/// Programs attached to a cgroup for socket-level translation, with their hook names.
const SOCK_PROGRAMS: [(&str, &str); 8] = [
    (lb_common::PROG_SOCK_CONNECT4, "connect4"),
    (lb_common::PROG_SOCK_SENDMSG4, "sendmsg4"),
    (lb_common::PROG_SOCK_RECVMSG4, "recvmsg4"),
    (lb_common::PROG_SOCK_GETPEERNAME4, "getpeername4"),
    (lb_common::PROG_SOCK_CONNECT6, "connect6"),
    (lb_common::PROG_SOCK_SENDMSG6, "sendmsg6"),
    (lb_common::PROG_SOCK_RECVMSG6, "recvmsg6"),
    (lb_common::PROG_SOCK_GETPEERNAME6, "getpeername6"),
];

/// The loaded datapath and the agent-written maps, with a shadow copy of their contents.
pub struct Dataplane {
    ebpf: Ebpf,
    pin_path: PathBuf,
    services: HashMap<MapData, ServiceKey, ServiceValue>,
    backends: HashMap<MapData, u32, Backend>,
    select: HashMap<MapData, SelectKey, u32>,
    maglev: HashMap<MapData, MaglevKey, MaglevChunk>,
    members: HashMap<MapData, MemberKey, u32>,
    source_ranges: LpmTrie<MapData, SourceRangeData, u32>,
    conntrack: HashMap<MapData, CtKey, CtValue>,
    names: HashMap<MapData, u32, SvcName>,
    /// The maps' real capacities.
    limits: MapSizes,
    /// What the maps hold (read at load, then updated with every applied op).
    shadow: MapState,
}

fn map_err(name: &'static str, op: &'static str) -> impl Fn(MapError) -> DataplaneError {
    move |source| DataplaneError::Map { name, op, source }
}

impl Dataplane {
    /// Loads the programs and creates or adopts the pinned maps under `config.pin_path`.
    pub fn load(config: &DataplaneConfig) -> Result<Self> {
        if OBJECT.is_empty() {
            return Err(DataplaneError::NoObject);
        }
        let pin_path = config.pin_path.clone();
        fs::create_dir_all(&pin_path).map_err(|source| DataplaneError::PinDir { path: pin_path.clone(), source })?;
        check_layout(&pin_path)?;

        let mut loader = EbpfLoader::new();
        loader.default_map_pin_directory(&pin_path);
        config.sizes.request(&mut loader);
        let mut ebpf = loader.load(OBJECT).map_err(DataplaneError::Load)?;
        let limits = MapSizes::actual(&config.sizes, |name| ebpf.map(name).and_then(map_sizes::max_entries));
        for ((name, want), (_, got)) in config.sizes.by_name().into_iter().zip(limits.by_name()) {
            if got != want {
                tracing::warn!(
                    map = name,
                    pinned = got,
                    requested = want,
                    "a pinned map keeps the size it was created with; `lb agent --cleanup` (drops live connections) and a restart resize it"
                );
            }
        }
        for name in [lb_common::PROG_TC_POD, lb_common::PROG_TC_EXT, lb_common::PROG_TC_EGRESS] {
            classifier_mut(&mut ebpf, name)?.load().map_err(|source| DataplaneError::Program { name, source })?;
        }
        xdp_mut(&mut ebpf)?.load().map_err(|source| DataplaneError::Program { name: lb_common::PROG_XDP_EXT, source })?;
        for (name, _) in SOCK_PROGRAMS {
            sock_mut(&mut ebpf, name)?.load().map_err(|source| DataplaneError::Program { name, source })?;
        }
        write_layout(&mut ebpf)?;

        let mut dp = Self {
            services: take_map(&mut ebpf, lb_common::SERVICES)?,
            backends: take_map(&mut ebpf, lb_common::BACKENDS)?,
            select: take_map(&mut ebpf, lb_common::SELECT)?,
            maglev: take_map(&mut ebpf, lb_common::MAGLEV)?,
            members: take_map(&mut ebpf, lb_common::MEMBERS)?,
            source_ranges: take_map(&mut ebpf, lb_common::SOURCE_RANGES)?,
            conntrack: take_map(&mut ebpf, lb_common::CONNTRACK)?,
            names: take_map(&mut ebpf, lb_common::SVC_NAMES)?,
            ebpf,
            pin_path,
            limits,
            shadow: MapState::default(),
        };
        dp.shadow = dp.read_state()?;
        Ok(dp)
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

    /// The pod-interface TC program (for BPF_PROG_TEST_RUN in tests).
    pub fn tc_program(&self) -> Result<&SchedClassifier> {
        self.classifier(lb_common::PROG_TC_POD)
    }

    /// A TC program by name ([`lb_common::PROG_TC_POD`] or [`lb_common::PROG_TC_EXT`]).
    pub fn classifier(&self, name: &'static str) -> Result<&SchedClassifier> {
        self.ebpf.program(name).and_then(|p| p.try_into().ok()).ok_or(DataplaneError::Missing { kind: "program", name })
    }

    /// The external-interface XDP program (for BPF_PROG_TEST_RUN in tests).
    pub fn xdp_program(&self) -> Result<&Xdp> {
        let name = lb_common::PROG_XDP_EXT;
        self.ebpf.program(name).and_then(|p| p.try_into().ok()).ok_or(DataplaneError::Missing { kind: "program", name })
    }

    /// Writes the node-wide settings (SNAT and hairpin addresses, SNAT port range).
    pub fn set_config(&mut self, cfg: &Config) -> Result<()> {
        let name = lb_common::CONFIG;
        let map = self.ebpf.map_mut(name).ok_or(DataplaneError::Missing { kind: "map", name })?;
        let mut arr: Array<&mut MapData, Config> = Array::try_from(map).map_err(map_err(name, "open"))?;
        arr.set(0, *cfg, 0).map_err(map_err(name, "write"))
    }

    /// Writes the agent's account of itself for `lb status` (see [`crate::agent_status`]).
    pub fn set_agent_status(&mut self, status: &lb_common::AgentStatus) -> Result<()> {
        let name = lb_common::AGENT;
        let map = self.ebpf.map_mut(name).ok_or(DataplaneError::Missing { kind: "map", name })?;
        let mut arr: Array<&mut MapData, lb_common::AgentStatus> = Array::try_from(map).map_err(map_err(name, "open"))?;
        arr.set(0, *status, 0).map_err(map_err(name, "write"))
    }

    /// Attaches the pod program to TC ingress of `iface` and the reply program to its egress,
    /// replacing the programs in links a previous agent pinned (atomically, no packet
    /// unprocessed) or creating and pinning them.
    pub fn attach_pod_interface(&mut self, iface: &str) -> Result<()> {
        let path = self.pin_path.join(format!("link_{iface}_tc-pod"));
        attach_tcx(classifier_mut(&mut self.ebpf, lb_common::PROG_TC_POD)?, iface, TcAttachType::Ingress, &path)?;
        self.attach_egress(iface)
    }

    /// Attaches the reply program to TC egress of `iface` (point 63: replies the node's own
    /// stack sends for a backend on one of its addresses leave through an egress).
    fn attach_egress(&mut self, iface: &str) -> Result<()> {
        let path = self.pin_path.join(format!("link_{iface}_tc-egress"));
        attach_tcx(classifier_mut(&mut self.ebpf, lb_common::PROG_TC_EGRESS)?, iface, TcAttachType::Egress, &path)
    }

    /// Attaches the external program to `iface` in `mode` (auto: native XDP, else generic),
    /// replacing a pinned attachment of the same kind atomically, and the reply program to its
    /// TC egress. Returns the mode in effect.
    pub fn attach_external(&mut self, iface: &str, mode: ExternalMode) -> Result<ExternalMode> {
        let mode = self.attach_external_ingress(iface, mode)?;
        self.attach_egress(iface)?;
        Ok(mode)
    }

    fn attach_external_ingress(&mut self, iface: &str, mode: ExternalMode) -> Result<ExternalMode> {
        let attach_err = |source| DataplaneError::Attach { iface: iface.to_owned(), source };
        let wanted: &[ExternalMode] = match mode {
            ExternalMode::Auto => &[ExternalMode::Native, ExternalMode::Generic],
            ExternalMode::Native => &[ExternalMode::Native],
            ExternalMode::Generic => &[ExternalMode::Generic],
            ExternalMode::Tc => &[ExternalMode::Tc],
        };
        // An attachment of another kind pinned for this interface is released first.
        for other in [ExternalMode::Native, ExternalMode::Generic, ExternalMode::Tc] {
            let path = self.link_path(iface, other);
            if !wanted.contains(&other) && path.exists() {
                let _ = fs::remove_file(&path);
            }
        }
        if mode == ExternalMode::Tc {
            let path = self.link_path(iface, ExternalMode::Tc);
            attach_tcx(classifier_mut(&mut self.ebpf, lb_common::PROG_TC_EXT)?, iface, TcAttachType::Ingress, &path)?;
            return Ok(ExternalMode::Tc);
        }
        let mut last = None;
        for m in wanted {
            let path = self.link_path(iface, *m);
            let prog = xdp_mut(&mut self.ebpf)?;
            if let Ok(old) = PinnedLink::from_pin(&path) {
                let reused = XdpLink::try_from(FdLink::from(old))
                    .map_err(|e| ProgramError::IOError(io::Error::other(e)))
                    .and_then(|link| prog.attach_to_link(link));
                match reused {
                    Ok(_) => return Ok(*m),
                    Err(e) => {
                        tracing::warn!(iface, error = %e, "could not reuse the pinned XDP link; attaching anew");
                        let _ = fs::remove_file(&path);
                    }
                }
            }
            let xdp_mode = if *m == ExternalMode::Native { XdpMode::Driver } else { XdpMode::Skb };
            match prog.attach(iface, xdp_mode) {
                Ok(id) => {
                    let link = prog.take_link(id).map_err(attach_err)?;
                    let fd_link = FdLink::try_from(link).map_err(|e| attach_err(ProgramError::IOError(io::Error::other(e))))?;
                    pin_link(fd_link, iface, &path)?;
                    return Ok(*m);
                }
                Err(e) => {
                    tracing::info!(iface, mode = m.as_str(), error = %e, "XDP attach failed");
                    last = Some(e);
                }
            }
        }
        Err(attach_err(last.unwrap_or_else(|| ProgramError::IOError(io::Error::other("no XDP mode to try")))))
    }

    fn link_path(&self, iface: &str, mode: ExternalMode) -> PathBuf {
        self.pin_path.join(format!("link_{iface}_{}", mode.as_str()))
    }

    /// Attaches the socket-level translation programs to the cgroup directory `cgroup` (cgroup
    /// v2). The new programs are attached before the ones a previous agent pinned are released,
    /// so no connect() goes untranslated.
    pub fn attach_cgroup(&mut self, cgroup: &Path) -> Result<()> {
        let cg_err = |source| DataplaneError::Cgroup { path: cgroup.to_owned(), source };
        let dir = fs::File::open(cgroup).map_err(|e| cg_err(ProgramError::IOError(e)))?;
        for (name, hook) in SOCK_PROGRAMS {
            let path = self.pin_path.join(format!("link_cgroup_{hook}"));
            let prog = sock_mut(&mut self.ebpf, name)?;
            // A cgroup link (kernel >= 5.7) always coexists with other programs; the link API
            // takes no ALLOW_MULTI flag (Single means flags 0).
            let id = prog.attach(&dir, CgroupAttachMode::Single).map_err(cg_err)?;
            let link = prog.take_link(id).map_err(cg_err)?;
            let fd_link = FdLink::try_from(link).map_err(|e| cg_err(ProgramError::IOError(io::Error::other(e))))?;
            let staged = self.pin_path.join(format!("staged_cgroup_{hook}"));
            let _ = fs::remove_file(&staged);
            pin_link(fd_link, hook, &staged)?;
            // Replacing the old pin releases the previous agent's program; ours is already on.
            fs::rename(&staged, &path).map_err(|e| cg_err(ProgramError::IOError(e)))?;
        }
        Ok(())
    }

    /// Re-reads the maps from the kernel and rewrites whatever differs from `desired`: entries
    /// changed or deleted outside the agent (`bpftool map update`, another tool) are repaired,
    /// strays removed. Returns the number of writes (0 when nothing drifted).
    pub fn repair(&mut self, desired: &MapState) -> Result<usize> {
        self.shadow = self.read_state()?;
        self.apply(desired)
    }

    /// Reads the agent-written maps back.
    fn read_state(&self) -> Result<MapState> {
        let mut st = MapState::default();
        for kv in self.services.iter() {
            let (k, v) = kv.map_err(map_err(lb_common::SERVICES, "read"))?;
            st.services.insert(k, v);
        }
        for kv in self.backends.iter() {
            let (k, v) = kv.map_err(map_err(lb_common::BACKENDS, "read"))?;
            st.backends.insert(k, v);
        }
        for kv in self.select.iter() {
            let (k, v) = kv.map_err(map_err(lb_common::SELECT, "read"))?;
            st.select.insert(k, v);
        }
        for kv in self.maglev.iter() {
            let (k, v) = kv.map_err(map_err(lb_common::MAGLEV, "read"))?;
            st.maglev.insert(k, std::sync::Arc::new(v));
        }
        for k in self.members.keys() {
            st.members.insert(k.map_err(map_err(lb_common::MEMBERS, "read"))?);
        }
        for kv in self.source_ranges.iter() {
            let (k, _) = kv.map_err(map_err(lb_common::SOURCE_RANGES, "read"))?;
            st.source_ranges.insert((k.prefix_len(), k.data()));
        }
        for kv in self.names.iter() {
            let (k, v) = kv.map_err(map_err(lb_common::SVC_NAMES, "read"))?;
            st.names.insert(k, v);
        }
        Ok(st)
    }

    /// Makes the maps hold `desired` with the minimal writes, in the safe order. Capacity is
    /// checked before the first write, so a state that does not fit changes nothing.
    pub fn apply(&mut self, desired: &MapState) -> Result<usize> {
        let ops = crate::plan::diff(&self.shadow, desired);
        self.apply_ops(desired, ops)
    }

    /// [`Dataplane::apply`] when only `touched` keys can differ from what the maps hold (the
    /// incremental planner's [`Touched`]): the diff looks at those keys only.
    pub fn apply_touched(&mut self, desired: &MapState, touched: &Touched) -> Result<usize> {
        let ops = crate::planner::diff_touched(&self.shadow, desired, touched);
        self.apply_ops(desired, ops)
    }

    /// Writes `ops`, which turn the maps into `desired`.
    fn apply_ops(&mut self, desired: &MapState, mut ops: Vec<Op>) -> Result<usize> {
        let l = &self.limits;
        check_capacity(lb_common::SERVICES, desired.services.len(), l.services)?;
        check_capacity(lb_common::BACKENDS, desired.backends.len(), l.backends)?;
        check_capacity(lb_common::SELECT, desired.select.len(), l.select)?;
        check_capacity(lb_common::MAGLEV, desired.maglev.len(), l.maglev)?;
        check_capacity(lb_common::MEMBERS, desired.members.len(), l.members)?;
        check_capacity(lb_common::SOURCE_RANGES, desired.source_ranges.len(), l.source_ranges)?;
        check_capacity(lb_common::SVC_NAMES, desired.names.len(), l.names)?;
        if let Some((name, peak, limit)) = transition_overflow(&self.shadow, &ops, l) {
            // Upserts-before-deletes would need old and new entries at once: more than the map
            // holds. Delete first instead; flows of the services being changed may see a
            // missing entry for the duration of this apply (milliseconds), which beats never
            // converging.
            tracing::warn!(map = name, peak, limit, "change does not fit alongside the state it replaces; deleting first");
            ops.sort_by_key(|op| !is_delete(op));
            if let Some((name, wanted, limit)) = transition_overflow(&self.shadow, &ops, &self.limits) {
                return Err(DataplaneError::MapFull { name, wanted, limit });
            }
        }
        for op in &ops {
            self.write(op)?;
            self.shadow.apply(std::slice::from_ref(op));
        }
        Ok(ops.len())
    }

    fn write(&mut self, op: &Op) -> Result<()> {
        use lb_common::{BACKENDS, MAGLEV, MEMBERS, SELECT, SERVICES, SOURCE_RANGES, SVC_NAMES};
        let put = |name| map_err(name, "write");
        let del = |name| map_err(name, "delete from");
        match op {
            Op::PutName(id, n) => self.names.insert(id, n, 0).map_err(put(SVC_NAMES)),
            Op::DelName(id) => ignore_missing(self.names.remove(id)).map_err(del(SVC_NAMES)),
            Op::PutBackend(id, be) => self.backends.insert(id, be, 0).map_err(put(BACKENDS)),
            Op::PutMember(k) => self.members.insert(k, 1, 0).map_err(put(MEMBERS)),
            Op::PutSelect(k, v) => self.select.insert(k, v, 0).map_err(put(SELECT)),
            Op::PutMaglev(k, v) => self.maglev.insert(k, v.as_ref(), 0).map_err(put(MAGLEV)),
            Op::PutSourceRange(l, d) => self.source_ranges.insert(&LpmKey::new(*l, *d), 1, 0).map_err(put(SOURCE_RANGES)),
            Op::PutService(k, v) => self.services.insert(k, v, 0).map_err(put(SERVICES)),
            Op::DelService(k) => ignore_missing(self.services.remove(k)).map_err(del(SERVICES)),
            Op::DelSourceRange(l, d) => {
                ignore_missing(self.source_ranges.remove(&LpmKey::new(*l, *d))).map_err(del(SOURCE_RANGES))
            }
            Op::DelMaglev(k) => ignore_missing(self.maglev.remove(k)).map_err(del(MAGLEV)),
            Op::DelSelect(k) => ignore_missing(self.select.remove(k)).map_err(del(SELECT)),
            Op::DelMember(k) => ignore_missing(self.members.remove(k)).map_err(del(MEMBERS)),
            Op::DelBackend(id) => ignore_missing(self.backends.remove(id)).map_err(del(BACKENDS)),
        }
    }

    /// Deletes conntrack entries idle longer than their lifetime (the LRU reclaims the rest
    /// under pressure).
    pub fn sweep_conntrack(&mut self) -> Result<Sweep> {
        let now = monotonic_ns();
        let mut listed = 0;
        let stale: Vec<CtKey> = self
            .conntrack
            .iter()
            .filter_map(std::result::Result::ok)
            .inspect(|_| listed += 1)
            .filter(|(k, v)| now.saturating_sub(v.last_seen_ns) > ct_lifetime_ns(k, v))
            .map(|(k, _)| k)
            .collect();
        // Listing a large table takes long enough for a new connection to reuse a stale entry's
        // key (same client port) before we get to it: re-read each entry right before deleting
        // it and keep it if it has been refreshed. (The kernel offers no compare-and-delete; the
        // window left is the one between this lookup and the delete, microseconds.)
        let mut removed = 0;
        for k in &stale {
            let still_stale = match self.conntrack.get(k, 0) {
                Ok(v) => monotonic_ns().saturating_sub(v.last_seen_ns) > ct_lifetime_ns(k, &v),
                Err(_) => false, // gone already (or expired by the LRU)
            };
            if still_stale {
                ignore_missing(self.conntrack.remove(k)).map_err(map_err(lb_common::CONNTRACK, "delete from"))?;
                removed += 1;
            }
        }
        Ok(Sweep { removed, remaining: listed - removed })
    }
}

/// What a conntrack sweep did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sweep {
    /// Idle entries deleted.
    pub removed: usize,
    /// Entries left in the table (two per flow), out of [`Dataplane::limits`]' `conntrack`.
    pub remaining: usize,
}

fn is_delete(op: &Op) -> bool {
    matches!(
        op,
        Op::DelService(_)
            | Op::DelSourceRange(..)
            | Op::DelMaglev(_)
            | Op::DelSelect(_)
            | Op::DelMember(_)
            | Op::DelBackend(_)
            | Op::DelName(_)
    )
}

/// Walks `ops` from `shadow`, counting each map's entries: the first map whose count would exceed
/// its capacity at some point, as (name, peak, limit).
fn transition_overflow(shadow: &MapState, ops: &[Op], limits: &MapSizes) -> Option<(&'static str, usize, u32)> {
    use lb_common as c;
    // In the order of `count` below.
    let maps = [c::SERVICES, c::BACKENDS, c::SELECT, c::MAGLEV, c::MEMBERS, c::SOURCE_RANGES, c::SVC_NAMES]
        .map(|name| (name, limits.of(name).unwrap_or(u32::MAX)));
    let mut count = [
        shadow.services.len(),
        shadow.backends.len(),
        shadow.select.len(),
        shadow.maglev.len(),
        shadow.members.len(),
        shadow.source_ranges.len(),
        shadow.names.len(),
    ];
    let mut peak = count;
    for op in ops {
        // (map index, +1 for a new key / -1 for a removed one; updates in place count 0)
        let (i, grows) = match op {
            Op::PutService(k, _) => (0, !shadow.services.contains_key(k)),
            Op::PutBackend(id, _) => (1, !shadow.backends.contains_key(id)),
            Op::PutSelect(k, _) => (2, !shadow.select.contains_key(k)),
            Op::PutMaglev(k, _) => (3, !shadow.maglev.contains_key(k)),
            Op::PutMember(k) => (4, !shadow.members.contains(k)),
            Op::PutSourceRange(l, d) => (5, !shadow.source_ranges.contains(&(*l, *d))),
            Op::PutName(id, _) => (6, !shadow.names.contains_key(id)),
            Op::DelService(_) => (0, false),
            Op::DelBackend(_) => (1, false),
            Op::DelSelect(_) => (2, false),
            Op::DelMaglev(_) => (3, false),
            Op::DelMember(_) => (4, false),
            Op::DelSourceRange(..) => (5, false),
            Op::DelName(_) => (6, false),
        };
        if is_delete(op) {
            count[i] -= 1;
        } else if grows {
            count[i] += 1;
            peak[i] = peak[i].max(count[i]);
        }
    }
    maps.iter().zip(peak).find(|((_, limit), p)| *p > *limit as usize).map(|((name, limit), p)| (*name, p, *limit))
}

/// The lifetime the datapath gives a conntrack entry (see `lb-ebpf/src/lb.rs`).
pub fn ct_lifetime_ns(k: &CtKey, v: &CtValue) -> u64 {
    if k.proto != lb_common::IPPROTO_TCP {
        lb_common::CT_UDP_LIFETIME_NS
    } else if v.flags & lb_common::CT_F_CLOSING != 0 {
        lb_common::CT_TCP_CLOSING_LIFETIME_NS
    } else {
        lb_common::CT_TCP_LIFETIME_NS
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
        return Err(DataplaneError::MapFull { name, wanted, limit });
    }
    Ok(())
}

fn classifier_mut<'a>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut SchedClassifier> {
    ebpf.program_mut(name).and_then(|p| p.try_into().ok()).ok_or(DataplaneError::Missing { kind: "program", name })
}

fn xdp_mut(ebpf: &mut Ebpf) -> Result<&mut Xdp> {
    let name = lb_common::PROG_XDP_EXT;
    ebpf.program_mut(name).and_then(|p| p.try_into().ok()).ok_or(DataplaneError::Missing { kind: "program", name })
}

fn sock_mut<'a>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut CgroupSockAddr> {
    ebpf.program_mut(name).and_then(|p| p.try_into().ok()).ok_or(DataplaneError::Missing { kind: "program", name })
}

/// Attaches `prog` to TC `direction` of `iface` through a TCX link pinned at `path`, reusing
/// (and atomically updating) a link already pinned there.
fn attach_tcx(prog: &mut SchedClassifier, iface: &str, direction: TcAttachType, path: &Path) -> Result<()> {
    let attach_err = |source| DataplaneError::Attach { iface: iface.to_owned(), source };
    if let Ok(old) = PinnedLink::from_pin(path) {
        let reused = SchedClassifierLink::try_from(FdLink::from(old))
            .map_err(|e| ProgramError::IOError(io::Error::other(e)))
            .and_then(|link| prog.attach_to_link(link));
        match reused {
            Ok(_) => return Ok(()),
            Err(e) => {
                // The interface behind the old link is gone (a recreated pod interface): start
                // over with a new link.
                tracing::warn!(iface, error = %e, "could not reuse the pinned link; attaching anew");
                let _ = fs::remove_file(path);
            }
        }
    }
    let id = prog.attach_with_options(iface, direction, TcAttachOptions::TcxOrder(LinkOrder::default())).map_err(attach_err)?;
    let link = prog.take_link(id).map_err(attach_err)?;
    let fd_link = FdLink::try_from(link).map_err(|e| attach_err(ProgramError::IOError(io::Error::other(e))))?;
    pin_link(fd_link, iface, path)
}

fn pin_link(link: FdLink, what: &str, path: &Path) -> Result<()> {
    link.pin(path).map(|_| ()).map_err(|e| DataplaneError::PinLink {
        what: what.to_owned(),
        path: path.to_owned(),
        source: io::Error::other(e),
    })
}

/// CLOCK_MONOTONIC in nanoseconds: the clock of `bpf_ktime_get_ns()`.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes into the timespec we own.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

fn take_map<T: TryFrom<Map, Error = MapError>>(ebpf: &mut Ebpf, name: &'static str) -> Result<T> {
    let map = ebpf.take_map(name).ok_or(DataplaneError::Missing { kind: "map", name })?;
    T::try_from(map).map_err(map_err(name, "open"))
}

/// Refuses to adopt maps pinned by a build with another layout (before aya reuses them).
pub(crate) fn check_layout(pin_path: &Path) -> Result<()> {
    let meta_path = pin_path.join(lb_common::META);
    let Ok(data) = MapData::from_pin(&meta_path) else {
        return Ok(()); // nothing pinned yet
    };
    let name = lb_common::META;
    let map = Map::from_map_data(data).map_err(map_err(name, "open"))?;
    let found = match Array::<_, Meta>::try_from(map) {
        Ok(arr) => arr.get(&0, 0).map_err(map_err(name, "read"))?.layout_version,
        // A META map of another shape is another layout too.
        Err(_) => u32::MAX,
    };
    if found != 0 && found != LAYOUT_VERSION {
        return Err(DataplaneError::LayoutMismatch { pin_dir: pin_path.display().to_string(), found, expected: LAYOUT_VERSION });
    }
    Ok(())
}

fn write_layout(ebpf: &mut Ebpf) -> Result<()> {
    let name = lb_common::META;
    let map = ebpf.map_mut(name).ok_or(DataplaneError::Missing { kind: "map", name })?;
    let mut arr: Array<&mut MapData, Meta> = Array::try_from(map).map_err(map_err(name, "open"))?;
    let mut agent_version = [0u16; 3];
    for (slot, part) in agent_version.iter_mut().zip(env!("CARGO_PKG_VERSION").split('.')) {
        *slot = part.parse().unwrap_or(0);
    }
    arr.set(0, Meta { layout_version: LAYOUT_VERSION, agent_version, _pad: 0 }, 0).map_err(map_err(name, "write"))
}

/// Removes every pin under `pin_path`: detaches the pinned links and frees the maps once no
/// program uses them.
pub fn cleanup(pin_path: &Path) -> Result<()> {
    match fs::remove_dir_all(pin_path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(DataplaneError::Cleanup { path: pin_path.to_owned(), source }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lb_common::Backend;

    /// A full backends map whose every backend is replaced by a new id: in the safe order the
    /// map would hold old and new at once.
    #[test]
    fn a_replacement_of_a_full_map_is_detected_and_fits_when_deleting_first() {
        let max = lb_common::BACKENDS_MAX;
        let mut shadow = MapState::default();
        shadow.backends.extend((0..max).map(|id| (id, Backend::default())));
        let mut ops: Vec<Op> = (max..max + 10).map(|id| Op::PutBackend(id, Backend::default())).collect();
        ops.extend((0..10).map(Op::DelBackend));
        let limits = MapSizes::default();
        assert_eq!(transition_overflow(&shadow, &ops, &limits), Some((lb_common::BACKENDS, max as usize + 10, max)));
        ops.sort_by_key(|op| !is_delete(op));
        assert!(matches!(ops[0], Op::DelBackend(0)));
        assert_eq!(transition_overflow(&shadow, &ops, &limits), None);
        // Updates in place never grow a map.
        let updates: Vec<Op> = (0..max).map(|id| Op::PutBackend(id, Backend { port_be: 1, ..Backend::default() })).collect();
        assert_eq!(transition_overflow(&shadow, &updates, &limits), None);
    }
}
