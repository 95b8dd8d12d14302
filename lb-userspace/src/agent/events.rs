//! Kubernetes Events on the Services (and EndpointSlices) the agent does not program: rejected
//! as invalid or outside a policy (`reason: ServiceSkipped`), or left out because a map is at
//! its ceiling (`reason: ServiceNotProgrammed`). `kubectl describe service` then shows why, next
//! to the Service, without reading agent logs.
//!
//! One Event per object and reason for the whole cluster, not one per node: every agent of the
//! DaemonSet compiles the same objects and would report the same thing, so the Event's name is
//! derived from what it says (object, uid, reason, message) and every agent creates the same
//! name; the first create wins and the others get `AlreadyExists`, which is the expected answer.
//! An object is reported when it starts to be skipped or its reason changes (as the log line),
//! not at every sync. Publishing runs on its own task behind a bounded queue: the sync loop never
//! waits on the API server, and a queue that is full (API server away) drops the notice with a
//! count in `lb_events_total{result="dropped"}`.
//!
//! RBAC: `create` on `events.k8s.io` `events` (deploy/rbac.yaml), nothing else.

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::Arc,
};

use k8s_openapi::{
    api::{core::v1::ObjectReference, events::v1::Event},
    apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta},
    jiff::Timestamp,
};
use kube::{Api, Client, api::PostParams};
use tokio::sync::mpsc;
use tracing::{debug, warn};

use super::metrics::Metrics;
use crate::{model::Skipped, source::ClusterObjects};

/// `reportingController` of every Event the agent writes.
pub const REPORTING_CONTROLLER: &str = "lb-agent";
/// Event reason of an object the compile step refused (invalid, or outside a policy flag).
pub const REASON_SKIPPED: &str = "ServiceSkipped";
/// Event reason of a Service left out because a map is at its ceiling.
pub const REASON_NOT_PROGRAMMED: &str = "ServiceNotProgrammed";
/// Notices waiting for the publishing task; beyond this, new ones are dropped (and counted).
const QUEUE: usize = 256;
/// The API's limit on `note`.
const NOTE_MAX: usize = 1024;

/// One Event to write.
#[derive(Clone, Debug)]
struct Notice {
    regarding: ObjectReference,
    reason: &'static str,
    note: String,
}

/// Decides which skipped objects are new since the last sync and hands their Events to the
/// publishing task. Without a cluster (the file source) it only keeps track.
pub(super) struct ServiceEvents {
    tx: Option<mpsc::Sender<Notice>>,
    /// `(object, reason, message)` reported so far and still skipped.
    reported: BTreeSet<(String, &'static str, String)>,
    metrics: Arc<Metrics>,
}

impl ServiceEvents {
    /// Publishes through `client` when there is one (the kube source); `instance` names this
    /// agent in the Events it writes (`reportingInstance`).
    pub(super) fn start(client: Option<Client>, instance: &str, metrics: Arc<Metrics>) -> Self {
        let tx = client.map(|client| {
            let (tx, rx) = mpsc::channel(QUEUE);
            let instance: String = format!("{REPORTING_CONTROLLER}-{instance}").chars().take(128).collect();
            tokio::spawn(publish_loop(client, instance, rx, metrics.clone()));
            tx
        });
        Self { tx, reported: BTreeSet::new(), metrics }
    }

    /// After a sync: an Event for each object that is skipped now and was not (with this
    /// reason) at the last call.
    pub(super) fn observe(
        &mut self,
        rejected: &[Skipped],
        left_out: &BTreeMap<String, (&'static str, String)>,
        objects: &ClusterObjects,
    ) {
        let now: BTreeSet<(String, &'static str, String)> = rejected
            .iter()
            .map(|r| (r.object.clone(), REASON_SKIPPED, r.reason.to_string()))
            .chain(left_out.iter().map(|(svc, (_, why))| (format!("Service {svc}"), REASON_NOT_PROGRAMMED, why.clone())))
            .collect();
        if let Some(tx) = &self.tx {
            for (object, reason, message) in now.difference(&self.reported) {
                let Some(regarding) = reference(object, objects) else { continue };
                let note = truncate(message, NOTE_MAX);
                if tx.try_send(Notice { regarding, reason, note }).is_err() {
                    self.metrics.event("dropped");
                }
            }
        }
        self.reported = now;
    }
}

/// The object reference of `Service ns/name` or `EndpointSlice ns/name`, with its uid (so that
/// `kubectl describe` finds the Event), if the object is in the snapshot.
fn reference(object: &str, objects: &ClusterObjects) -> Option<ObjectReference> {
    let (kind, key) = object.split_once(' ')?;
    let (namespace, name) = key.split_once('/')?;
    let matches = |m: &ObjectMeta| m.namespace.as_deref().unwrap_or("default") == namespace && m.name.as_deref() == Some(name);
    let (api_version, meta) = match kind {
        "Service" => ("v1", objects.services.iter().map(|s| &s.metadata).find(|m| matches(m))?),
        "EndpointSlice" => ("discovery.k8s.io/v1", objects.slices.iter().map(|s| &s.metadata).find(|m| matches(m))?),
        _ => return None,
    };
    Some(ObjectReference {
        api_version: Some(api_version.to_owned()),
        kind: Some(kind.to_owned()),
        namespace: Some(namespace.to_owned()),
        name: Some(name.to_owned()),
        uid: meta.uid.clone(),
        resource_version: meta.resource_version.clone(),
        ..Default::default()
    })
}

fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_owned();
    }
    let mut end = max - 3;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &s[..end])
}

/// The Event's name: the object's name and a hash of what the Event says, the same on every
/// node (FNV-1a, stable across builds and processes).
fn event_name(n: &Notice) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let r = &n.regarding;
    for part in [r.kind.as_deref(), r.namespace.as_deref(), r.name.as_deref(), r.uid.as_deref(), Some(n.reason), Some(&n.note)] {
        for b in part.unwrap_or_default().bytes().chain([0]) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    format!("{}.lb-{h:016x}", r.name.as_deref().unwrap_or("object"))
}

fn event(n: &Notice, instance: &str) -> Event {
    Event {
        metadata: ObjectMeta { name: Some(event_name(n)), namespace: n.regarding.namespace.clone(), ..Default::default() },
        event_time: Some(MicroTime(Timestamp::now())),
        type_: Some("Warning".to_owned()),
        reason: Some(n.reason.to_owned()),
        action: Some("Program".to_owned()),
        note: Some(n.note.clone()),
        regarding: Some(n.regarding.clone()),
        reporting_controller: Some(REPORTING_CONTROLLER.to_owned()),
        reporting_instance: Some(instance.to_owned()),
        ..Default::default()
    }
}

async fn publish_loop(client: Client, instance: String, mut rx: mpsc::Receiver<Notice>, metrics: Arc<Metrics>) {
    // A failing API server (or missing RBAC) is logged once per kind of failure, not per Event.
    let mut logged: BTreeSet<String> = BTreeSet::new();
    while let Some(n) = rx.recv().await {
        let ns = n.regarding.namespace.clone().unwrap_or_else(|| "default".to_owned());
        let api: Api<Event> = Api::namespaced(client.clone(), &ns);
        match api.create(&PostParams::default(), &event(&n, &instance)).await {
            Ok(_) => metrics.event("created"),
            // Another node's agent wrote the same Event first.
            Err(kube::Error::Api(s)) if s.code == 409 => {
                debug!(event = event_name(&n), "Event already written (by another node's agent)");
                metrics.event("exists");
            }
            Err(e) => {
                metrics.event("failed");
                let kind = match &e {
                    kube::Error::Api(s) => format!("{} {}", s.code, s.reason),
                    other => other.to_string(),
                };
                if logged.insert(kind) {
                    warn!(
                        error = format!("{e:#}"),
                        "writing a Kubernetes Event failed: check the agent's RBAC (create on events.k8s.io events); skipped Services stay in the log, `lb status` and lb_objects_rejected"
                    );
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn notice(note: &str) -> Notice {
        Notice {
            regarding: ObjectReference {
                kind: Some("Service".into()),
                namespace: Some("shop".into()),
                name: Some("web".into()),
                uid: Some("u-1".into()),
                ..Default::default()
            },
            reason: REASON_SKIPPED,
            note: note.into(),
        }
    }

    #[test]
    fn every_node_names_the_same_event_the_same_and_a_new_message_differently() {
        let a = event_name(&notice("spec.externalIPs[0]: not allowed"));
        assert_eq!(a, event_name(&notice("spec.externalIPs[0]: not allowed")));
        assert_ne!(a, event_name(&notice("spec.ports[0].port: 0 is not a port number")));
        assert!(a.starts_with("web.lb-") && a.len() <= 253, "{a}");
    }

    #[test]
    fn notes_are_cut_to_the_api_limit_on_a_char_boundary() {
        let long = "é".repeat(1000);
        let t = truncate(&long, NOTE_MAX);
        assert!(t.len() <= NOTE_MAX && t.ends_with("..."), "{}", t.len());
        assert_eq!(truncate("short", NOTE_MAX), "short");
    }
}
