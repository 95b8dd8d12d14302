//! An EndpointSlice as the agent keeps it ([`Slice`]): the object's metadata, address type and
//! ports as the API gave them, and each endpoint reduced at ingestion to what the compile step
//! reads ([`SliceEndpoint`]: about 48 bytes instead of k8s-openapi's 352 plus its strings). At
//! 10,000 Services × 10 endpoints the watch cache holds 100,000 endpoints for the agent's
//! lifetime, so this is most of what a cache of slices costs.
//!
//! The labels and annotations are read once too: the Service the slice is for, whether it opts
//! out of this proxy, and its change trigger time are kept, the maps are not (a label map costs
//! a B-tree node of about 600 bytes however few labels it holds, and the EndpointSlice
//! controller copies every label of the Service onto its slices).
//!
//! The reduction applies the API's read rules once, when the object arrives, instead of at every
//! compile: only `addresses[0]` is kept, parsed as Kubernetes parses it (point 16); a missing
//! condition takes its nil meaning (point 17); empty hint lists count as no hints (point 53).

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
    sync::{Arc, Mutex},
};

use k8s_openapi::{
    api::discovery::v1::{Endpoint, EndpointPort, EndpointSlice},
    apimachinery::pkg::apis::meta::v1::ObjectMeta,
};

use serde::Deserialize;

use super::kubernetes::{LABEL_SERVICE_NAME, TRIGGER_TIME_ANNOTATION, opts_out, parse_ip_sloppy};

/// An EndpointSlice with compact endpoints (see the module documentation). It deserializes from
/// an EndpointSlice's JSON or YAML.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(from = "EndpointSlice")]
pub struct Slice {
    /// The object's metadata without its labels, annotations, owner references and
    /// managedFields (what the agent reads of them is in the fields below).
    pub metadata: ObjectMeta,
    /// Label `kubernetes.io/service-name`: the Service the slice is for (point 6).
    pub service_name: Option<Box<str>>,
    /// Labelled `service.kubernetes.io/service-proxy-name` or `service.kubernetes.io/headless`:
    /// no proxy of ours follows it (point 4).
    pub opted_out: bool,
    /// Annotation `endpoints.kubernetes.io/last-change-trigger-time`, as written (the network
    /// programming latency metric).
    pub trigger_time: Option<Box<str>>,
    /// `IPv4`, `IPv6` or `FQDN`, as the API spells it (point 15).
    pub address_type: String,
    pub ports: Option<Vec<EndpointPort>>,
    pub endpoints: Vec<SliceEndpoint>,
}

/// One endpoint of a [`Slice`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SliceEndpoint {
    /// `addresses[0]` parsed as Kubernetes does (point 16); `None` when absent or not an IP.
    pub addr: Option<IpAddr>,
    /// [`SliceEndpoint::READY`], [`SliceEndpoint::SERVING`], [`SliceEndpoint::TERMINATING`],
    /// with nil conditions already read as the API reads them (point 17).
    pub conditions: u8,
    /// `nodeName`: the endpoint is local when it is this node's (point 30). Interned: one
    /// string per node, however many endpoints it has ([`intern_node_name`]).
    pub node_name: Option<Arc<str>>,
    /// Topology hints, only when the endpoint has any (point 53).
    pub hints: Option<Box<Hints>>,
}

/// An endpoint's topology hints: the zones and nodes it is meant for, each `None` when empty.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Hints {
    pub zones: Option<BTreeSet<String>>,
    pub nodes: Option<BTreeSet<String>>,
}

impl SliceEndpoint {
    /// `conditions.ready`, nil meaning ready.
    pub const READY: u8 = 1;
    /// `conditions.serving`, nil meaning serving.
    pub const SERVING: u8 = 1 << 1;
    /// `conditions.terminating`, nil meaning not terminating.
    pub const TERMINATING: u8 = 1 << 2;

    pub fn ready(&self) -> bool {
        self.conditions & Self::READY != 0
    }

    pub fn serving(&self) -> bool {
        self.conditions & Self::SERVING != 0
    }

    pub fn terminating(&self) -> bool {
        self.conditions & Self::TERMINATING != 0
    }
}

impl From<&Endpoint> for SliceEndpoint {
    fn from(ep: &Endpoint) -> Self {
        let cond = ep.conditions.as_ref();
        let bit = |set: bool, b: u8| if set { b } else { 0 };
        let conditions = bit(cond.and_then(|c| c.ready).unwrap_or(true), Self::READY)
            | bit(cond.and_then(|c| c.serving).unwrap_or(true), Self::SERVING)
            | bit(cond.and_then(|c| c.terminating).unwrap_or(false), Self::TERMINATING);
        let hints = ep.hints.as_ref().map(|h| Hints {
            zones: h
                .for_zones
                .as_ref()
                .map(|z| z.iter().map(|z| z.name.clone()).collect::<BTreeSet<_>>())
                .filter(|z| !z.is_empty()),
            nodes: h
                .for_nodes
                .as_ref()
                .map(|n| n.iter().map(|n| n.name.clone()).collect::<BTreeSet<_>>())
                .filter(|n| !n.is_empty()),
        });
        Self {
            addr: ep.addresses.first().and_then(|a| parse_ip_sloppy(a)),
            conditions,
            node_name: ep.node_name.as_deref().map(intern_node_name),
            hints: hints.filter(|h| h.zones.is_some() || h.nodes.is_some()).map(Box::new),
        }
    }
}

/// The one shared copy of node name `name`. A cluster has a few thousand nodes at most and
/// every endpoint names one: at 10,000 Services × 10 endpoints an allocation per endpoint
/// held 3 MB of copies of the same few names. Names no endpoint holds any more are dropped
/// whenever the set has doubled since it was last swept (nodes come and go).
pub fn intern_node_name(name: &str) -> Arc<str> {
    static NAMES: Mutex<(BTreeSet<Arc<str>>, usize)> = Mutex::new((BTreeSet::new(), 0));
    let mut guard = NAMES.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let (names, swept) = &mut *guard;
    if let Some(known) = names.get(name) {
        return known.clone();
    }
    if names.len() >= 2 * (*swept).max(64) {
        names.retain(|n| Arc::strong_count(n) > 1);
        *swept = names.len();
    }
    let new: Arc<str> = Arc::from(name);
    names.insert(new.clone());
    new
}

impl Slice {
    /// Reads from `labels` what the agent follows ([`Slice::service_name`], [`Slice::opted_out`]).
    pub fn set_labels(&mut self, labels: Option<&BTreeMap<String, String>>) {
        self.service_name = labels.and_then(|l| l.get(LABEL_SERVICE_NAME)).map(|n| Box::from(n.as_str()));
        self.opted_out = labels.is_some_and(opts_out);
    }
}

impl From<EndpointSlice> for Slice {
    fn from(s: EndpointSlice) -> Self {
        let mut metadata = s.metadata;
        let labels = metadata.labels.take();
        let trigger_time = metadata.annotations.take().and_then(|mut a| a.remove(TRIGGER_TIME_ANNOTATION)).map(Box::from);
        metadata.managed_fields = None;
        metadata.owner_references = None;
        let mut slice = Self {
            endpoints: s.endpoints.iter().map(SliceEndpoint::from).collect(),
            metadata,
            service_name: None,
            opted_out: false,
            trigger_time,
            address_type: s.address_type,
            // Deserialized lists grow by doubling: one port held room for four.
            ports: s.ports.map(|mut p| {
                p.shrink_to_fit();
                p
            }),
        };
        slice.set_labels(labels.as_ref());
        slice
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slice(json: serde_json::Value) -> Slice {
        Slice::from(serde_json::from_value::<EndpointSlice>(json).unwrap())
    }

    #[test]
    fn point_16_17_an_endpoint_keeps_its_first_address_parsed_and_its_conditions_with_their_nil_meaning() {
        let s = slice(serde_json::json!({
            "metadata": {"name": "web-1", "namespace": "shop"},
            "addressType": "IPv4",
            "endpoints": [
                {"addresses": ["10.0.0.010", "10.0.0.2"], "nodeName": "n1"},
                {"addresses": ["not-an-ip"], "conditions": {"ready": false, "serving": true, "terminating": true}},
                {"addresses": [], "conditions": {"serving": false}}
            ]
        }));
        let [a, b, c] = &s.endpoints[..] else { panic!("three endpoints: {s:?}") };
        assert_eq!(a.addr, Some("10.0.0.10".parse().unwrap()), "leading zeros are decimal; only addresses[0]");
        assert!(a.ready() && a.serving() && !a.terminating(), "nil conditions: ready, serving, not terminating");
        assert_eq!(a.node_name.as_deref(), Some("n1"));
        assert_eq!(b.addr, None);
        assert!(!b.ready() && b.serving() && b.terminating());
        assert_eq!(c.addr, None);
        assert!(c.ready() && !c.serving() && !c.terminating(), "serving false, the rest nil");
    }

    /// Endpoints on one node share one copy of its name; a name nobody holds is swept.
    #[test]
    fn node_names_are_shared() {
        let a = intern_node_name("slice-test-node-a");
        let b = intern_node_name("slice-test-node-a");
        assert!(Arc::ptr_eq(&a, &b));
        assert_eq!(&*intern_node_name("slice-test-node-b"), "slice-test-node-b");
        for i in 0..300 {
            intern_node_name(&format!("slice-test-gone-{i}"));
        }
        assert!(Arc::ptr_eq(&a, &intern_node_name("slice-test-node-a")), "held names survive a sweep");
    }

    #[test]
    fn point_53_empty_hint_lists_are_no_hints() {
        let s = slice(serde_json::json!({
            "metadata": {"name": "web-1"},
            "addressType": "IPv4",
            "endpoints": [
                {"addresses": ["10.0.0.1"], "hints": {"forZones": [{"name": "a"}], "forNodes": []}},
                {"addresses": ["10.0.0.2"], "hints": {"forZones": []}}
            ]
        }));
        let hints = s.endpoints[0].hints.as_deref().expect("zone hints");
        assert_eq!(hints.zones, Some(BTreeSet::from(["a".to_owned()])));
        assert_eq!(hints.nodes, None);
        assert_eq!(s.endpoints[1].hints, None);
    }
}
