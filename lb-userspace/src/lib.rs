//! The lb agent and CLI as a library: the binary (`src/main.rs`) is a thin front end, and the
//! privileged tests drive the same code.
//!
//! # Layers
//! Imports point one way, from the top down:
//! - [`cli`] and [`agent`]: the two programs, on top of everything below;
//! - [`dataplane`]: the one writer of the kernel (load, attach, apply, conntrack sweep);
//! - [`plan`]: desired state → map contents (ids, Maglev, incremental planner);
//! - [`maps`]: the kernel image (the map table, `MapState`, writes, sizes, pinned reader);
//! - [`compile`]: Kubernetes objects → desired state, pure;
//! - [`source`]: where the objects come from (files, the API server, this node);
//! - [`model`]: the desired state's types; [`netns`]: entering a network namespace.
//!
//! `plan` depends on `compile` and `maps`; `dataplane` on `maps` only; `compile` and `source` on
//! `model` only.

pub mod agent;
pub mod cli;
pub mod compile;
pub mod dataplane;
pub mod heap;
pub mod maps;
pub mod model;
pub mod netns;
mod parallel;
pub mod plan;
mod room;
pub mod source;

/// Property tests across the layers: parse, compile, plan, diff.
#[cfg(test)]
mod prop_tests;
