//! What changed in a watch cache between two of its versions, as its watch events said: how a
//! source hands the compile step the changed objects, so that a sync costs the changes, not a
//! walk over every object.

use std::sync::Arc;

use k8s_openapi::api::core::v1::Service;

use super::slice::Slice;

/// One change: the object before and after it (`None`: absent). A new version of an object is
/// a new `Arc`; an `Arc` held here keeps its address from being reused.
pub type Change<K> = (Option<Arc<K>>, Option<Arc<K>>);

/// The changes of one kind's cache that a snapshot carries: its last ones, oldest first, each
/// moving the cache one version on, ending at the snapshot's version.
#[derive(Debug)]
pub struct Changes<K> {
    /// The cache and its list: a relist starts another epoch, whose versions begin at 0.
    pub epoch: u64,
    /// The version the first entry started from (`version` when there are none).
    pub from: u64,
    /// The version of the snapshot's list.
    pub version: u64,
    pub entries: Vec<Change<K>>,
}

impl<K> Clone for Changes<K> {
    fn clone(&self) -> Self {
        Self { epoch: self.epoch, from: self.from, version: self.version, entries: self.entries.clone() }
    }
}

impl<K> Changes<K> {
    /// The changes since version `at` of epoch `epoch`, if this log still holds all of them.
    pub fn since(&self, epoch: u64, at: u64) -> Option<&[Change<K>]> {
        if epoch != self.epoch || at < self.from || at > self.version {
            return None;
        }
        self.entries.get((at - self.from) as usize..)
    }
}

/// The change logs a snapshot of the kube source's caches comes with: its lists are sorted by
/// namespace and name, and each log ends at its list's version.
#[derive(Clone, Debug)]
pub struct ObjectChanges {
    pub services: Changes<Service>,
    pub slices: Changes<Slice>,
}
