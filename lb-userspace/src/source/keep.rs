//! What the kube source's watch caches keep of each kind ([`Keep`]): only what the compile step
//! and the agent read. Real clusters' objects carry much more (managedFields, `kubectl apply`'s
//! last-applied annotation, a Node's image list, every endpoint's targetRef), which would
//! otherwise live in memory once per object for the agent's lifetime; an EndpointSlice's
//! endpoints are kept in the compact form of [`Slice`].

use std::fmt::Debug;

use k8s_openapi::{
    api::{
        core::v1::{Node, Service},
        discovery::v1::EndpointSlice,
    },
    apimachinery::pkg::apis::meta::v1::ObjectMeta,
};
use kube::Resource;
use serde::de::DeserializeOwned;

use crate::model::{
    kubernetes::{ANNOTATION_SELECTION, TRIGGER_TIME_ANNOTATION},
    slice::Slice,
};

/// A watched kind and what its cache keeps of each object.
pub trait Keep: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static {
    type Kept: Named + Debug + Send + Sync + 'static;

    /// The object as the cache keeps it: a fresh copy (its lists allocated to their length: a
    /// deserialized list grew by doubling, an EndpointSlice of 10 endpoints held room for 16)
    /// without what is never read.
    fn keep(self) -> Self::Kept;
}

/// An object's metadata, which the caches sort and find objects by.
pub trait Named {
    fn meta(&self) -> &ObjectMeta;
}

impl Named for Service {
    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }
}

impl Named for Node {
    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }
}

impl Named for Slice {
    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }
}

/// Drops managedFields and every annotation but `annotation`.
fn slim_meta(meta: &mut ObjectMeta, annotation: &str) {
    meta.managed_fields = None;
    if let Some(a) = meta.annotations.as_mut() {
        a.retain(|k, _| k == annotation);
    }
}

impl Keep for Service {
    type Kept = Service;

    /// Drops managedFields, every annotation but the selection one, and the pod selector
    /// (proxies follow the EndpointSlices, never the selector: point 6; a selector's map is
    /// about 600 bytes of a Service's 2.3 KB).
    fn keep(mut self) -> Service {
        slim_meta(&mut self.metadata, ANNOTATION_SELECTION);
        if let Some(spec) = self.spec.as_mut() {
            spec.selector = None;
        }
        self.clone()
    }
}

impl Keep for EndpointSlice {
    type Kept = Slice;

    /// Drops managedFields and every annotation but the change trigger time (network programming
    /// latency); each endpoint keeps its first address, conditions, nodeName and hints
    /// ([`Slice`]).
    fn keep(mut self) -> Slice {
        slim_meta(&mut self.metadata, TRIGGER_TIME_ANNOTATION);
        Slice::from(self)
    }
}

impl Keep for Node {
    type Kept = Node;

    /// Keeps the name, labels (zone), deletion timestamp, taints (the autoscaler's deletion
    /// taint turns `/healthz` to 503, point 50) and addresses.
    fn keep(mut self) -> Node {
        self.metadata.managed_fields = None;
        self.metadata.annotations = None;
        self.spec = self.spec.take().map(|s| k8s_openapi::api::core::v1::NodeSpec { taints: s.taints, ..Default::default() });
        if let Some(status) = self.status.as_mut() {
            *status = k8s_openapi::api::core::v1::NodeStatus { addresses: status.addresses.take(), ..Default::default() };
        }
        self.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The caches keep what compile and the agent read, and drop the bulk.
    #[test]
    fn stored_objects_keep_only_what_is_read() {
        let svc: Service = serde_json::from_value(serde_json::json!({
            "metadata": { "name": "a", "namespace": "ns", "annotations": {
                "kubectl.kubernetes.io/last-applied-configuration": "{...}", (ANNOTATION_SELECTION): "random" },
                "managedFields": [{ "manager": "kubectl" }] },
            "spec": { "clusterIP": "10.96.0.1", "ports": [{ "port": 80 }], "selector": { "app": "a" } },
        }))
        .unwrap();
        let svc = svc.keep();
        assert_eq!(svc.metadata.annotations.as_ref().unwrap().len(), 1);
        assert!(svc.metadata.managed_fields.is_none());
        let spec = svc.spec.as_ref().unwrap();
        assert!(spec.selector.is_none() && spec.cluster_ip.is_some() && spec.ports.is_some(), "{spec:?}");
        let slice: EndpointSlice = serde_json::from_value(serde_json::json!({
            "metadata": { "name": "a-1", "namespace": "ns", "labels": { "kubernetes.io/service-name": "a" },
                          "annotations": { (TRIGGER_TIME_ANNOTATION): "2026-01-01T00:00:00Z", "other": "x" },
                          "managedFields": [{ "manager": "kube-controller-manager" }] },
            "addressType": "IPv4",
            "ports": [{ "name": "http", "port": 8080 }],
            "endpoints": [{ "addresses": ["10.244.0.1"], "nodeName": "n1", "zone": "z",
                            "targetRef": { "kind": "Pod", "name": "a-xyz", "uid": "1234" },
                            "hints": { "forZones": [{ "name": "z" }] } }],
        }))
        .unwrap();
        let slice = slice.keep();
        let ep = &slice.endpoints[0];
        assert!(ep.addr.is_some() && ep.hints.is_some() && ep.node_name.as_deref() == Some("n1"), "{ep:?}");
        assert_eq!(slice.service_name.as_deref(), Some("a"));
        assert!(!slice.opted_out && slice.metadata.managed_fields.is_none() && slice.metadata.labels.is_none());
        assert_eq!(slice.trigger_time.as_deref(), Some("2026-01-01T00:00:00Z"));
        assert!(slice.metadata.annotations.is_none(), "the trigger time is kept on its own");
        assert_eq!((slice.address_type.as_str(), slice.ports.as_ref().map(Vec::len)), ("IPv4", Some(1)));
        let node: Node = serde_json::from_value(serde_json::json!({
            "metadata": { "name": "n1", "labels": { "topology.kubernetes.io/zone": "z" }, "deletionTimestamp": "2026-01-01T00:00:00Z" },
            "spec": { "podCIDR": "10.244.0.0/24", "taints": [{ "key": "ToBeDeletedByClusterAutoscaler", "effect": "NoSchedule" }] },
            "status": { "addresses": [{ "type": "InternalIP", "address": "192.168.0.10" }],
                        "images": [{ "names": ["registry/big:1"], "sizeBytes": 1 }] },
        }))
        .unwrap();
        let node = node.keep();
        let status = node.status.as_ref().unwrap();
        assert!(status.images.is_none() && status.addresses.as_ref().unwrap().len() == 1);
        let spec = node.spec.as_ref().unwrap();
        assert!(spec.pod_cidr.is_none() && spec.taints.as_ref().unwrap().len() == 1, "{spec:?}");
        assert!(node.metadata.labels.is_some() && node.metadata.deletion_timestamp.is_some());
    }
}
