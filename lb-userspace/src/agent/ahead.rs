//! Planning ahead while the initial lists stream in.
//!
//! Point 7: nothing is programmed before every initial list is in. But compiling and planning
//! a large cluster takes about as long as listing it (at 100,000 Services, 7 s after 7.5 s of
//! lists), and while the lists stream in the agent's own thread has nothing to do. So on a
//! fresh start, every [`PERIOD`] until the lists are complete, the agent compiles and plans the
//! Services received so far whose EndpointSlices have arrived, and writes nothing (it starts
//! with the first objects, not when the Service list is complete: at 100,000 Services that list
//! takes half the streaming time). The first sync
//! then finds most ServicePorts compiled and planned already: the compile memo and the planner
//! recognise unchanged objects by identity, and the watch cache keeps the very objects it
//! received. What remains for it is the rest of the Services and the map writes.
//!
//! Which Services: those with at least one EndpointSlice received, except the Service of the
//! last slice received (its next slice may be on its way). The API server lists in name order
//! and a controller names a slice after its Service, so a Service's slices arrive together.
//! Any other order costs work, never correctness: the first sync compiles and plans the
//! complete lists whatever was planned ahead.
//!
//! Only on maps that hold nothing. A restarted agent first adopts the ids of what the pinned
//! maps hold, for the complete lists; its datapath serves the old state meanwhile.

use std::{collections::BTreeSet, time::Duration};

use tokio::time::Instant;
use tracing::debug;

use super::{
    AgentConfig,
    feed::Feed,
    sync::{SyncState, node_of},
};
use crate::{
    compile::memo::slice_service,
    model::{NodeContext, kubernetes::namespace_of},
    source::{ClusterObjects, SharedList},
};

/// How long the agent waits between two passes.
const PERIOD: Duration = Duration::from_millis(20);

/// Services planned ahead in one pass at most: [`STEP`], or a quarter of those planned ahead
/// already when that is more. The lists may complete during a pass, and their sync waits for
/// its end (then plans on one CPU what it would have planned on every CPU); but every pass also
/// walks every object received so far (the compile step's identity check, the Services whose
/// slices arrived), so small steps late in a large list spend the time on walks: at 100,000
/// Services, passes of 2,000 took 150 ms at the start and 300-450 ms at the end.
fn step(planned: usize) -> usize {
    STEP.max(planned / 4)
}

/// The smallest step (about 0.15 s on our machines).
const STEP: usize = 2_000;

/// Plans ahead (module docs) until the caller stops polling it: it never returns, and is raced
/// against the initial lists' completion.
pub(super) async fn plan_ahead(feed: &Feed, sync: &mut SyncState, cfg: &AgentConfig) {
    let mut planned = 0;
    loop {
        tokio::time::sleep(PERIOD).await;
        if let Some(objects) = feed.partial_snapshot() {
            planned = pass(sync, &node_of(cfg, &objects), &objects, planned, step(planned));
        }
    }
}

/// One pass: plans ahead up to `step` more of the Services whose slices have arrived, when
/// there are more. Returns how many are planned ahead now.
fn pass(sync: &mut SyncState, node: &NodeContext, objects: &ClusterObjects, planned: usize, step: usize) -> usize {
    let arrived = with_slices_arrived(objects, planned + step);
    if arrived.services.len() <= planned {
        return planned;
    }
    let started = Instant::now();
    let replanned = sync.prepare(node, &arrived);
    debug!(
        services = arrived.services.len(),
        slices = objects.slices.len(),
        replanned,
        took_ms = started.elapsed().as_millis() as u64,
        "planned ahead of the initial lists"
    );
    arrived.services.len()
}

/// The first `limit` Services of `objects` whose EndpointSlices have arrived (module docs), all
/// the slices and the nodes.
fn with_slices_arrived(objects: &ClusterObjects, limit: usize) -> ClusterObjects {
    let mut arrived: BTreeSet<(&str, &str)> = objects.slices.iter().filter_map(|s| slice_service(s)).collect();
    if let Some(last) = objects.slices.last().and_then(|s| slice_service(s)) {
        arrived.remove(&last);
    }
    let services: Vec<_> = objects
        .services
        .iter()
        .filter(|s| arrived.contains(&(namespace_of(&s.metadata), s.metadata.name.as_deref().unwrap_or_default())))
        .take(limit)
        .cloned()
        .collect();
    ClusterObjects {
        services: SharedList::from(services),
        slices: objects.slices.clone(),
        nodes: objects.nodes.clone(),
        changes: None,
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use k8s_openapi::api::core::v1::Service;

    use crate::model::slice::Slice;
    use serde_json::json;

    use super::*;
    use crate::{agent::metrics::Metrics, plan::PlanConfig};

    fn service(name: &str, i: u8) -> Arc<Service> {
        Arc::new(
            serde_json::from_value(json!({
                "metadata": {"namespace": "ns", "name": name},
                "spec": {"clusterIP": format!("10.96.0.{i}"), "ports": [{"port": 80, "targetPort": 8080}]}
            }))
            .unwrap(),
        )
    }

    fn slice(name: &str, service: &str, i: u8) -> Arc<Slice> {
        let endpoints: Vec<_> =
            (1..=3).map(|e| json!({"addresses": [format!("10.244.{i}.{e}")], "conditions": {"ready": true}})).collect();
        Arc::new(
            serde_json::from_value(json!({
                "metadata": {"namespace": "ns", "name": name, "labels": {"kubernetes.io/service-name": service}},
                "addressType": "IPv4",
                "endpoints": endpoints,
                "ports": [{"port": 8080, "protocol": "TCP"}]
            }))
            .unwrap(),
        )
    }

    fn objects(services: &[Arc<Service>], slices: &[Arc<Slice>]) -> ClusterObjects {
        ClusterObjects {
            services: services.to_vec().into(),
            slices: slices.to_vec().into(),
            nodes: SharedList::default(),
            changes: None,
        }
    }

    fn names(objects: &ClusterObjects) -> Vec<&str> {
        objects.services.iter().map(|s| s.metadata.name.as_deref().unwrap()).collect()
    }

    #[test]
    fn services_are_planned_ahead_once_their_slices_are_in_the_last_ones_slices_may_be_incomplete() {
        let services = [service("a", 1), service("b", 2), service("c", 3), service("d", 4)];
        let slices = [slice("a-1", "a", 1), slice("b-1", "b", 2), slice("b-2", "b", 12), slice("c-1", "c", 3)];
        let objects = objects(&services, &slices);
        let arrived = with_slices_arrived(&objects, 10);
        // c's next slice may still come; d has none yet.
        assert_eq!(names(&arrived), ["a", "b"]);
        assert_eq!(arrived.slices.len(), 4);
        // The same objects, not copies: the first sync recognises them.
        assert!(Arc::ptr_eq(&arrived.services[0], &objects.services[0]));
        // One pass plans a bounded number of them, the first in name order.
        assert_eq!(names(&with_slices_arrived(&objects, 1)), ["a"]);
    }

    /// Point 7 holds (planning ahead writes nothing: `prepare` has no dataplane), and what the
    /// first sync plans is what it would have planned without planning ahead; it replans only
    /// the ServicePorts that were not planned ahead with their final objects.
    #[test]
    fn planning_ahead_leaves_the_first_sync_the_same_plan_and_less_to_do() {
        let services: Vec<_> = (1..=6).map(|i| service(&format!("s{i}"), i)).collect();
        let slices: Vec<_> = (1..=6).map(|i| slice(&format!("s{i}-x"), &format!("s{i}"), i)).collect();
        let node = NodeContext { name: "n".into(), ..Default::default() };
        let complete = objects(&services, &slices);
        let new_sync = || SyncState::new(PlanConfig::default(), Arc::new(Metrics::new(None)));

        let mut direct = new_sync();
        assert_eq!(direct.prepare(&node, &complete), 6);

        let mut ahead = new_sync();
        let mut planned = 0;
        for (listed, now_planned) in [(2, 1), (3, 2), (5, 4), (5, 4)] {
            planned = pass(&mut ahead, &node, &objects(&services, &slices[..listed]), planned, 2);
            assert_eq!(planned, now_planned);
        }
        // s1..s4 planned ahead (s5's slices may have been incomplete; s6 had none).
        assert_eq!(ahead.prepare(&node, &complete), 2);
        assert_eq!(ahead.planner.state(), direct.planner.state());
    }
}
