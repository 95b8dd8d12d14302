//! Where the agent's Kubernetes objects come from: YAML files ([`mod@file`]), the API server through
//! kube-rs ([`kube`]), and this node's identity ([`node`]). Each hands the agent snapshots of
//! shared objects ([`ClusterObjects`]).

use std::sync::Arc;

use k8s_openapi::api::core::v1::{Node, Service};

use crate::model::{changes::ObjectChanges, slice::Slice};

pub mod file;
pub mod keep;
pub mod kube;
pub mod node;

/// The objects the agent consumes, shared: a snapshot of the watch caches shares their lists
/// (copy on write), so taking one costs the same at 10 and at 100,000 Services.
#[derive(Clone, Debug, Default)]
pub struct ClusterObjects {
    pub services: SharedList<Service>,
    /// EndpointSlices, with compact endpoints ([`Slice`]).
    pub slices: SharedList<Slice>,
    pub nodes: SharedList<Node>,
    /// The watch caches' last changes (the kube source), ending at these lists, which are then
    /// sorted by namespace and name; `None` from the file source.
    pub changes: Option<ObjectChanges>,
}

impl ClusterObjects {
    /// Adds `other`'s objects (shared, not copied). The result has no change log.
    pub fn extend(&mut self, other: &ClusterObjects) {
        self.changes = None;
        self.services.extend(other.services.iter().cloned());
        self.slices.extend(other.slices.iter().cloned());
        self.nodes.extend(other.nodes.iter().cloned());
    }
}

/// A list of shared objects that is itself shared: a clone copies one pointer, and a change
/// (through `DerefMut`) copies the list first only while another clone still holds it.
#[derive(Debug)]
pub struct SharedList<K>(Arc<Vec<Arc<K>>>);

impl<K> SharedList<K> {
    pub fn with_capacity(n: usize) -> Self {
        Self(Arc::new(Vec::with_capacity(n)))
    }
}

impl<K> Clone for SharedList<K> {
    fn clone(&self) -> Self {
        Self(Arc::clone(&self.0))
    }
}

impl<K> Default for SharedList<K> {
    fn default() -> Self {
        Self(Arc::default())
    }
}

impl<K> From<Vec<Arc<K>>> for SharedList<K> {
    fn from(v: Vec<Arc<K>>) -> Self {
        Self(Arc::new(v))
    }
}

impl<K> std::ops::Deref for SharedList<K> {
    type Target = Vec<Arc<K>>;

    fn deref(&self) -> &Vec<Arc<K>> {
        &self.0
    }
}

impl<K> std::ops::DerefMut for SharedList<K> {
    /// The list to change: copied first if another clone holds it (its holder keeps seeing the
    /// list as it was).
    fn deref_mut(&mut self) -> &mut Vec<Arc<K>> {
        Arc::make_mut(&mut self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_clone_keeps_the_list_it_was_taken_from() {
        let mut list: SharedList<u32> = vec![Arc::new(1), Arc::new(2)].into();
        let snapshot = list.clone();
        assert!(Arc::ptr_eq(&list.0, &snapshot.0), "a clone shares the list");
        list.push(Arc::new(3));
        list[0] = Arc::new(10);
        assert_eq!(snapshot.iter().map(|x| **x).collect::<Vec<_>>(), [1, 2]);
        assert_eq!(list.iter().map(|x| **x).collect::<Vec<_>>(), [10, 2, 3]);
        drop(snapshot);
        let before = Arc::as_ptr(&list.0);
        list.push(Arc::new(4));
        assert!(std::ptr::eq(before, Arc::as_ptr(&list.0)), "a list held once is changed in place");
    }
}
