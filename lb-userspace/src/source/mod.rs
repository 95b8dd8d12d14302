//! Where the agent's Kubernetes objects come from: YAML files ([`mod@file`]), the API server through
//! kube-rs ([`kube`]), and this node's identity ([`node`]). Each hands the agent snapshots of
//! shared objects ([`ClusterObjects`]).

use std::sync::Arc;

use k8s_openapi::api::{
    core::v1::{Node, Service},
    discovery::v1::EndpointSlice,
};

pub mod file;
pub mod kube;
pub mod node;

/// The objects the agent consumes, shared (a snapshot of the watch caches copies pointers,
/// not objects).
#[derive(Clone, Debug, Default)]
pub struct ClusterObjects {
    pub services: Vec<Arc<Service>>,
    pub slices: Vec<Arc<EndpointSlice>>,
    pub nodes: Vec<Arc<Node>>,
}

impl ClusterObjects {
    /// Adds `other`'s objects (shared, not copied).
    pub fn extend(&mut self, other: &ClusterObjects) {
        self.services.extend(other.services.iter().cloned());
        self.slices.extend(other.slices.iter().cloned());
        self.nodes.extend(other.nodes.iter().cloned());
    }
}
