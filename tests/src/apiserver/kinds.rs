//! The resource types the server knows (core/v1 Services and Nodes, discovery.k8s.io/v1
//! EndpointSlices, events.k8s.io/v1 Events): their names, group versions, scope and selectable fields, in the one table
//! that the store, the selectors, the routes and the discovery documents all read.

/// A resource type the server knows.
#[derive(Debug)]
pub(super) struct KindInfo {
    pub(super) kind: &'static str,
    pub(super) list_kind: &'static str,
    pub(super) api_version: &'static str,
    /// Path segments of the group version: `["api", "v1"]`, `["apis", "discovery.k8s.io", "v1"]`.
    pub(super) group_path: &'static [&'static str],
    pub(super) plural: &'static str,
    pub(super) singular: &'static str,
    pub(super) short_names: &'static [&'static str],
    pub(super) namespaced: bool,
    /// Field selector labels besides `metadata.name` and `metadata.namespace`.
    pub(super) fields: &'static [&'static str],
    /// Clients may create objects of this kind (`POST` to a namespaced collection). Only Events:
    /// what the agent writes; everything it reads is written by the tests.
    pub(super) creatable: bool,
}

pub(super) const KINDS: &[KindInfo] = &[
    KindInfo {
        kind: "Service",
        list_kind: "ServiceList",
        api_version: "v1",
        group_path: &["api", "v1"],
        plural: "services",
        singular: "service",
        short_names: &["svc"],
        namespaced: true,
        fields: &["spec.clusterIP", "spec.type"],
        creatable: false,
    },
    KindInfo {
        kind: "EndpointSlice",
        list_kind: "EndpointSliceList",
        api_version: "discovery.k8s.io/v1",
        group_path: &["apis", "discovery.k8s.io", "v1"],
        plural: "endpointslices",
        singular: "endpointslice",
        short_names: &[],
        namespaced: true,
        fields: &[],
        creatable: false,
    },
    KindInfo {
        kind: "Node",
        list_kind: "NodeList",
        api_version: "v1",
        group_path: &["api", "v1"],
        plural: "nodes",
        singular: "node",
        short_names: &["no"],
        namespaced: false,
        fields: &["spec.unschedulable"],
        creatable: false,
    },
    KindInfo {
        kind: "Event",
        list_kind: "EventList",
        api_version: "events.k8s.io/v1",
        group_path: &["apis", "events.k8s.io", "v1"],
        plural: "events",
        singular: "event",
        short_names: &["ev"],
        namespaced: true,
        fields: &["reason", "regarding.name", "regarding.kind"],
        creatable: true,
    },
];

/// The table entry of a kind (`"Service"`, `"EndpointSlice"`, `"Node"`, `"Event"`).
pub(super) fn kind_info(kind: &str) -> Option<&'static KindInfo> {
    KINDS.iter().find(|k| k.kind == kind)
}
