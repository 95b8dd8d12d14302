//! From the desired state to map contents: what planning remembers between plans ([`memory`]:
//! ids and Maglev tables), one ServicePort's entries ([`service`]), Maglev tables ([`maglev`]), the
//! address filter and the policy-Local marks ([`addr_filter`], [`local_marks`]), the
//! incremental planner the agent runs ([`incremental`]) and the full plan it is tested against
//! ([`full`]). Pure: the kernel only sees the result, through `dataplane`, as a [`crate::maps::MapState`].

pub mod addr_filter;
pub mod full;
pub mod incremental;
mod keys;
pub mod local_marks;
pub mod maglev;
pub mod memory;
pub mod service;
mod writers;

pub use full::map_state;
pub use incremental::Planner;
pub use memory::PlanMemory;

/// The planner's hash maps and sets: foldhash, seeded per process (keys are names and
/// addresses; std's SipHash was a tenth of a plan of every ServicePort).
type HashMap<K, V> = foldhash::HashMap<K, V>;
type HashSet<K> = foldhash::HashSet<K>;

/// Planner settings.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PlanConfig {
    /// Maglev table size for every service (a prime); `None` picks per service the smallest
    /// size at least 100 × its backends ([`crate::plan::maglev::table_size`]).
    pub maglev_table_size: Option<u32>,
}

#[cfg(test)]
mod tests;
