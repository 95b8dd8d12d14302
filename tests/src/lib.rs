//! Test harness shared by the privileged tests in `tests/tests/`, the benches and `cargo xtask
//! demo`: network namespaces with cleanup on drop, the pod topology, the agent process, the
//! modelled node's addresses, packet building, parsing and checksum checks, the programs'
//! verdicts, and the privilege gate.

pub mod addresses;
pub mod agent;
pub mod apiserver;
pub mod bins;
pub mod cgroup;
pub mod cluster;
pub mod netns;
pub mod packet;
pub mod privilege;
pub mod requests;
pub mod topology;
pub mod verdict;
