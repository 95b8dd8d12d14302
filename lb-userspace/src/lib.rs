//! The lb agent and CLI as a library: the binary (`src/main.rs`) is a thin clap front end, and
//! the privileged tests drive the same code.

pub mod agent;
pub mod agent_status;
pub mod compile;
pub mod compile_memo;
pub mod dataplane;
pub mod dump;
pub mod health;
pub mod maglev;
pub mod map_sizes;
pub mod metrics;
pub mod model;
pub mod netns;
pub mod node;
pub mod pinned;
pub mod plan;
pub mod planner;
#[cfg(test)]
mod prop_tests;
pub mod source_file;
pub mod source_kube;
