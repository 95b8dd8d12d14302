//! The compile step of one sync, reusing the last sync's results for every Service whose
//! objects did not change. The watch caches hand out shared objects (`Arc`) and replace an
//! object's `Arc` whenever the API server sends a new version, so "the same Service and the
//! same EndpointSlices" is a pointer comparison: a change to one Service recompiles that
//! Service only, not the whole cluster.
//!
//! The result is always exactly [`compile_all`] over the same objects (each Service compiles
//! from its own objects only: its spec and the slices labelled with its name in its
//! namespace); the tests below hold it to that.

use std::sync::Arc;

/// A fast hash (foldhash) for the per-sync indexes of Service and slice names: the keys are
/// cluster object names, the maps rebuilt or walked at every sync.
type HashMap<K, V> = foldhash::HashMap<K, V>;

use k8s_openapi::api::{core::v1::Service, discovery::v1::EndpointSlice};

use super::compile_all;
use crate::model::{
    DesiredState, HealthChecks, ServicePortName,
    kubernetes::{LABEL_SERVICE_NAME, NodeContext, namespace_of},
};

/// Which ServicePorts may differ from the last desired state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Changed {
    /// Any of them.
    All,
    /// Only these (a superset of those that do).
    Only(std::collections::BTreeSet<ServicePortName>),
}

impl Changed {
    /// Adds `other`'s ServicePorts.
    pub fn merge(&mut self, other: Changed) {
        match (&mut *self, other) {
            (Changed::All, _) => {}
            (_, Changed::All) => *self = Changed::All,
            (Changed::Only(a), Changed::Only(b)) => a.extend(b),
        }
    }
}

/// Compile results by Service, valid for one node context, and their union, patched in place.
#[derive(Default)]
pub struct CompileMemo {
    node: Option<NodeContext>,
    /// By namespace, then name (two levels, so that a lookup borrows the object's strings).
    by_service: HashMap<String, HashMap<String, Compiled>>,
    /// Number of the current call; an entry not seen in it belongs to a deleted Service.
    pass: u64,
    desired: DesiredState,
    health_checks: HealthChecks,
    /// The last call saw two Service objects with one namespace/name: the union is not the
    /// sum of the memo's entries, so the next call rebuilds it.
    rebuild: bool,
}

/// One call's result: the desired state, health checks, and which ServicePorts may differ
/// from the previous call's (for [`Planner::plan_changed`](crate::plan::Planner::plan_changed);
/// every call's must reach the planner, as the agent's syncs do).
pub struct CompileOutput<'a> {
    pub desired: &'a DesiredState,
    pub health_checks: &'a HealthChecks,
    pub changed: Changed,
}

/// One Service's objects (as the pointers it was compiled from) and what they compiled to.
struct Compiled {
    service: Arc<Service>,
    slices: Vec<Arc<EndpointSlice>>,
    desired: DesiredState,
    health_checks: HealthChecks,
    /// The last call that saw this Service.
    seen: u64,
}

impl CompileMemo {
    /// The EndpointSlices Service `namespace/name` was last compiled from (none when it is
    /// not in the memo).
    pub fn slices_of(&self, namespace: &str, name: &str) -> &[Arc<EndpointSlice>] {
        self.by_service.get(namespace).and_then(|by_name| by_name.get(name)).map_or(&[], |c| &c.slices)
    }

    /// [`compile_all`] of `services` and `slices` for `node`, compiling only the Services whose
    /// Service object or EndpointSlices are not the ones of the last call, and patching the
    /// last result with theirs (the rest is neither compiled nor copied).
    pub fn compile(&mut self, services: &[Arc<Service>], slices: &[Arc<EndpointSlice>], node: &NodeContext) -> CompileOutput<'_> {
        let mut changed = Changed::Only(Default::default());
        if self.node.as_ref() != Some(node) || self.pass == 0 {
            changed = Changed::All;
            self.by_service.clear();
            self.desired = DesiredState::default();
            self.health_checks.clear();
            self.node = Some(node.clone());
        }
        self.pass += 1;
        let pass = self.pass;
        // Slices by the Service they name (in input order), whatever their family or labels:
        // compile filters them exactly as it filters the full list.
        let slices_of = SlicesByService::new(slices);
        // Replaced entries and the keys of new ones: what the union is patched with.
        let mut stale: Vec<Compiled> = Vec::new();
        let mut fresh: Vec<(&str, &str)> = Vec::new();
        // Duplicates' own results (compile_all programs them too), in input order.
        let mut duplicates: Vec<Compiled> = Vec::new();
        for svc in services {
            let (ns, name) = (namespace_of(&svc.metadata), svc.metadata.name.as_deref().unwrap_or_default());
            let own = slices_of.of(ns, name);
            let entry = self.by_service.get_mut(ns).and_then(|by_name| by_name.get_mut(name));
            match entry {
                Some(c) if c.seen == pass => {
                    // Two Service objects with one namespace/name (not from an API server;
                    // files can hold duplicates): the first keeps the entry, both are
                    // compiled as compile_all does.
                    duplicates.push(compile_one(svc, own.collect(), node, pass));
                }
                Some(c) if Arc::ptr_eq(&c.service, svc) && same_slices(&c.slices, own.clone()) => {
                    c.seen = pass;
                }
                Some(c) => {
                    stale.push(std::mem::replace(c, compile_one(svc, own.collect(), node, pass)));
                    fresh.push((ns, name));
                }
                None => {
                    let by_name = self.by_service.entry(ns.to_owned()).or_default();
                    by_name.insert(name.to_owned(), compile_one(svc, own.collect(), node, pass));
                    fresh.push((ns, name));
                }
            }
        }
        // Services gone since the last call.
        for by_name in self.by_service.values_mut() {
            let gone: Vec<String> = by_name.iter().filter(|(_, c)| c.seen != pass).map(|(n, _)| n.clone()).collect();
            stale.extend(gone.iter().filter_map(|n| by_name.remove(n)));
        }
        self.by_service.retain(|_, by_name| !by_name.is_empty());

        // Duplicates now or at the last call: the union is rebuilt rather than patched.
        let had_duplicates = std::mem::replace(&mut self.rebuild, !duplicates.is_empty());
        if had_duplicates || self.rebuild {
            self.rebuild_union(services, &duplicates);
            changed = Changed::All;
        } else {
            let mut spns = std::collections::BTreeSet::new();
            for old in &stale {
                for spn in old.desired.services.keys() {
                    self.desired.services.remove(spn);
                    spns.insert(spn.clone());
                }
                for key in old.health_checks.keys() {
                    self.health_checks.remove(key);
                }
            }
            for &(ns, name) in &fresh {
                let c = &self.by_service[ns][name];
                spns.extend(c.desired.services.keys().cloned());
                self.desired.services.extend(c.desired.services.iter().map(|(k, v)| (k.clone(), v.clone())));
                self.health_checks.extend(c.health_checks.iter().map(|(k, v)| (k.clone(), *v)));
            }
            // Rejections in input order, as compile_all lists them (none, usually: then no walk).
            let mut touched = stale.iter().chain(fresh.iter().map(|(ns, name)| &self.by_service[*ns][*name]));
            if !self.desired.rejected.is_empty() || touched.any(|c| !c.desired.rejected.is_empty()) {
                self.desired.rejected.clear();
                for svc in services {
                    let c = &self.by_service[namespace_of(&svc.metadata)][svc.metadata.name.as_deref().unwrap_or_default()];
                    self.desired.rejected.extend(c.desired.rejected.iter().cloned());
                }
            }
            changed.merge(Changed::Only(spns));
        }
        CompileOutput { desired: &self.desired, health_checks: &self.health_checks, changed }
    }

    /// The union of every Service's result in input order, duplicates included: what
    /// compile_all gives when two Service objects share a namespace/name.
    fn rebuild_union(&mut self, services: &[Arc<Service>], duplicates: &[Compiled]) {
        let mut desired = DesiredState::default();
        let mut health_checks = HealthChecks::new();
        let mut first_seen = std::collections::HashSet::new();
        let mut extra = duplicates.iter();
        for svc in services {
            let (ns, name) = (namespace_of(&svc.metadata), svc.metadata.name.as_deref().unwrap_or_default());
            let c = if first_seen.insert((ns, name)) { &self.by_service[ns][name] } else { extra.next().expect("a duplicate") };
            desired.services.extend(c.desired.services.iter().map(|(k, v)| (k.clone(), v.clone())));
            desired.rejected.extend(c.desired.rejected.iter().cloned());
            health_checks.extend(c.health_checks.iter().map(|(k, v)| (k.clone(), *v)));
        }
        self.desired = desired;
        self.health_checks = health_checks;
    }
}

/// Compiles one Service with its slices.
fn compile_one(svc: &Arc<Service>, own: Vec<Arc<EndpointSlice>>, node: &NodeContext, pass: u64) -> Compiled {
    let (desired, health_checks) = compile_all(std::slice::from_ref(svc), &own, node);
    Compiled { service: svc.clone(), slices: own, desired, health_checks, seen: pass }
}

/// Whether `memo` holds exactly the slices `now` lists, in order.
fn same_slices<'a>(memo: &[Arc<EndpointSlice>], mut now: impl Iterator<Item = Arc<EndpointSlice>> + 'a) -> bool {
    memo.iter().all(|a| now.next().is_some_and(|b| Arc::ptr_eq(a, &b))) && now.next().is_none()
}

/// EndpointSlices grouped by the Service they name, in input order, without a list per
/// Service: each slice links to the next of the same Service.
struct SlicesByService<'a> {
    slices: &'a [Arc<EndpointSlice>],
    /// (first, last) slice index per Service.
    ends: HashMap<(&'a str, &'a str), (u32, u32)>,
    next: Vec<u32>,
}

impl<'a> SlicesByService<'a> {
    const END: u32 = u32::MAX;

    fn new(slices: &'a [Arc<EndpointSlice>]) -> Self {
        let mut ends: HashMap<(&str, &str), (u32, u32)> =
            HashMap::with_capacity_and_hasher(slices.len(), foldhash::fast::RandomState::default());
        let mut next = vec![Self::END; slices.len()];
        for (i, slice) in slices.iter().enumerate() {
            let Some(svc) = slice.metadata.labels.as_ref().and_then(|l| l.get(LABEL_SERVICE_NAME)) else { continue };
            let i = i as u32;
            ends.entry((namespace_of(&slice.metadata), svc.as_str()))
                .and_modify(|(_, last)| {
                    next[*last as usize] = i;
                    *last = i;
                })
                .or_insert((i, i));
        }
        Self { slices, ends, next }
    }

    /// The slices of Service `ns/name`, in input order.
    fn of(&self, ns: &str, name: &str) -> impl Iterator<Item = Arc<EndpointSlice>> + Clone + '_ {
        let mut at = self.ends.get(&(ns, name)).map_or(Self::END, |(first, _)| *first);
        std::iter::from_fn(move || {
            let i = at;
            (i != Self::END).then(|| {
                at = self.next[i as usize];
                Arc::clone(&self.slices[i as usize])
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn service(name: &str, ip: &str, policy: &str) -> Arc<Service> {
        Arc::new(
            serde_json::from_value(json!({
                "metadata": { "name": name, "namespace": "ns" },
                "spec": { "type": "LoadBalancer", "clusterIP": ip, "externalTrafficPolicy": policy,
                          "healthCheckNodePort": 32000,
                          "ports": [{ "name": "http", "port": 80, "targetPort": 8080, "nodePort": 30080 }] },
                "status": { "loadBalancer": { "ingress": [{ "ip": "192.0.2.10" }] } },
            }))
            .unwrap(),
        )
    }

    fn slice(name: &str, service: &str, addrs: &[&str], node: &str) -> Arc<EndpointSlice> {
        let eps: Vec<_> =
            addrs.iter().map(|a| json!({ "addresses": [a], "conditions": { "ready": true }, "nodeName": node })).collect();
        Arc::new(
            serde_json::from_value(json!({
                "metadata": { "name": name, "namespace": "ns", "labels": { "kubernetes.io/service-name": service } },
                "addressType": "IPv4",
                "ports": [{ "name": "http", "port": 8080, "protocol": "TCP" }],
                "endpoints": eps,
            }))
            .unwrap(),
        )
    }

    fn node(name: &str) -> NodeContext {
        NodeContext {
            external_ip_cidrs: None,
            lb_ip_cidrs: None,
            name: name.into(),
            addresses: vec!["192.168.0.10".parse().unwrap()],
            zone: None,
        }
    }

    /// Every step of a sequence of cluster states compiles through the memo to exactly what
    /// compile_all gives for the same objects.
    #[test]
    fn the_memo_always_gives_what_compile_all_gives() {
        let mut memo = CompileMemo::default();
        let mut services = vec![service("a", "10.96.0.1", "Cluster"), service("b", "10.96.0.2", "Local")];
        let mut slices = vec![
            slice("a-1", "a", &["10.244.0.1", "10.244.0.2"], "n1"),
            slice("b-1", "b", &["10.244.1.1"], "n2"),
            slice("b-2", "b", &["10.244.1.2"], "n1"),
        ];
        let check =
            |memo: &mut CompileMemo, services: &[Arc<Service>], slices: &[Arc<EndpointSlice>], n: &NodeContext, step: &str| {
                let before = memo.desired.clone();
                let out = memo.compile(services, slices, n);
                let got = (out.desired.clone(), out.health_checks.clone());
                assert_eq!(got, compile_all(services, slices, n), "{step}");
                // Every ServicePort that differs from the last call's is reported.
                if let Changed::Only(spns) = out.changed {
                    let keys: std::collections::BTreeSet<_> = before.services.keys().chain(got.0.services.keys()).collect();
                    for spn in keys {
                        if before.services.get(spn) != got.0.services.get(spn) {
                            assert!(spns.contains(spn), "{step}: {spn} changed, not reported");
                        }
                    }
                }
                got
            };
        let first = check(&mut memo, &services, &slices, &node("n1"), "initial");
        assert_eq!(first.0.services.len(), 2);
        check(&mut memo, &services, &slices, &node("n1"), "unchanged");
        // An endpoint of b replaced (a new slice object).
        slices[2] = slice("b-2", "b", &["10.244.1.3"], "n1");
        let after = check(&mut memo, &services, &slices, &node("n1"), "endpoint replaced");
        assert_ne!(after, first, "the change shows");
        // b's last local endpoint goes: its health check says 0 local endpoints.
        slices.remove(2);
        let (_, hc) = check(&mut memo, &services, &slices, &node("n1"), "slice deleted");
        assert_eq!(hc[&("ns".to_owned(), "b".to_owned())].local_ready, 0);
        // The Service object changes (a new ClusterIP), then is invalid, then valid again.
        services[0] = service("a", "10.96.0.9", "Cluster");
        check(&mut memo, &services, &slices, &node("n1"), "service changed");
        services[0] = service("a", "not-an-ip", "Cluster");
        let (bad, _) = check(&mut memo, &services, &slices, &node("n1"), "service invalid");
        assert_eq!(bad.rejected.len(), 1);
        services[0] = service("a", "10.96.0.1", "Cluster");
        check(&mut memo, &services, &slices, &node("n1"), "service valid again");
        // Another node context: which endpoints are local changes for every Service.
        check(&mut memo, &services, &slices, &node("n2"), "node changed");
        // A Service deleted, then created again with its slices still there.
        let b = services.remove(1);
        check(&mut memo, &services, &slices, &node("n2"), "service deleted");
        services.push(b);
        check(&mut memo, &services, &slices, &node("n2"), "service back");
        // A slice moved to another Service by its label.
        slices[0] = slice("a-1", "b", &["10.244.0.1"], "n2");
        check(&mut memo, &services, &slices, &node("n2"), "slice relabelled");
        // Two Service objects with one namespace/name (files can hold that), then one again.
        services.push(service("a", "10.96.0.7", "Local"));
        check(&mut memo, &services, &slices, &node("n2"), "duplicate added");
        check(&mut memo, &services, &slices, &node("n2"), "duplicate unchanged");
        services.pop();
        check(&mut memo, &services, &slices, &node("n2"), "duplicate removed");
        services[1] = service("b", "10.96.0.8", "Cluster");
        check(&mut memo, &services, &slices, &node("n2"), "after the duplicate, a change");
    }
}
