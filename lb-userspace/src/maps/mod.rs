//! The kernel image: what the maps the agent writes hold ([`MapState`]), the writes that change
//! them ([`Op`], ordered safely by [`diff`]), and their kernel handles ([`KernelMaps`]) — all
//! from the one map table (`table.rs`) — plus the addresses' 16-byte form, the maps' sizes, the
//! keys a plan touched, the agent's status record and the read-only view other processes take
//! of the pins. Nothing here plans or decides: `plan` computes states, `dataplane` writes them.

pub mod addr;
pub mod agent_record;
mod chunk;
mod codec;
pub mod layout;
pub mod pinned;
pub(crate) mod raw;
pub mod sizes;
mod table;
pub mod touched;

pub use addr::{addr16, ip_from16};
pub use chunk::{Chunk, Slots};
pub use table::{KernelMaps, MapId, MapState, Op, diff, diff_map};

/// CLOCK_MONOTONIC in nanoseconds: the clock of the datapath's timestamps
/// (the datapath's clock is the same at jiffy resolution: lb-common's `ClockCalibration`)
/// in conntrack, affinity and fragment entries.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes into the timespec we own.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// The kernel's boot id: random at every boot, the same for every process until the next.
pub const BOOT_ID: &str = "/proc/sys/kernel/random/boot_id";

/// The seed of the SNAT port hash (lb-common's `snat_seed`): from the kernel's boot id, so every
/// load of the datapath during one boot, and every reader of its maps, has the same; 0 where the
/// boot id cannot be read (the ports are then predictable, the datapath as correct).
pub fn snat_seed() -> u32 {
    std::fs::read(BOOT_ID).map(|id| lb_common::snat_seed(id.trim_ascii())).unwrap_or(0)
}

/// Where an agent pins its maps and links unless told otherwise.
pub const DEFAULT_PIN_PATH: &str = "/sys/fs/bpf/lb";

/// A map that cannot be opened, read or written, or that does not fit.
#[derive(Debug, thiserror::Error)]
pub enum MapError {
    #[error("the eBPF object has no map named {name}")]
    Missing { name: &'static str },
    #[error("failed to open map {name}")]
    Open {
        name: &'static str,
        #[source]
        source: aya::maps::MapError,
    },
    #[error(
        "map {name} has keys of {} and values of {} bytes where this build expects {} and {}: it was pinned by an incompatible build; run `lb agent --cleanup` (drops live connections) and start again",
        found.0, found.1, expected.0, expected.1
    )]
    Layout { name: &'static str, expected: (usize, usize), found: (usize, usize) },
    #[error("failed to read map {name}")]
    Read {
        name: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("failed to write map {name}")]
    Write {
        name: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("failed to delete from map {name}")]
    Delete {
        name: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("map {name} is full: {wanted} entries needed, its limit is {limit}")]
    Full { name: &'static str, wanted: usize, limit: u32 },
    /// A map reached through aya's typed maps (records, counters, conntrack).
    #[error("failed to {op} map {name}")]
    Typed {
        name: &'static str,
        op: &'static str,
        #[source]
        source: aya::maps::MapError,
    },
    #[error(
        "the maps pinned at {pin_dir} have layout version {found}, this build uses {expected}; \
         run `lb agent --cleanup --pin-path {pin_dir}` (drops live connections) and start again"
    )]
    LayoutVersion { pin_dir: String, found: u32, expected: u32 },
}

impl MapError {
    /// The error of an aya typed-map operation `op` on map `name`.
    pub fn typed(name: &'static str, op: &'static str) -> impl Fn(aya::maps::MapError) -> Self {
        move |source| Self::Typed { name, op, source }
    }
}
