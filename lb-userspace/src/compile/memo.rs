//! The compile step of one sync, reusing the last sync's results for every Service whose
//! objects did not change. The watch caches hand out shared objects (`Arc`) and replace an
//! object's `Arc` whenever the API server sends a new version, so "the same Service and the
//! same EndpointSlices" is a pointer comparison: a change to one Service recompiles that
//! Service only, not the whole cluster.
//!
//! The result is always exactly [`compile_all`] over the same objects (each Service compiles
//! from its own objects only: its spec and the slices labelled with its name in its
//! namespace); the tests below hold it to that.

use std::{collections::BTreeMap, sync::Arc};

/// A fast hash (foldhash) for the per-sync indexes of Service and slice names: the keys are
/// cluster object names, the maps rebuilt or walked at every sync.
type HashMap<K, V> = foldhash::HashMap<K, V>;

use k8s_openapi::api::core::v1::Service;

use crate::model::slice::Slice;

use super::compile_all;
use crate::model::{
    DesiredState, HealthChecks, ServicePortName, ServicePortState, Skipped,
    changes::{Change, ObjectChanges},
    kubernetes::{NodeContext, namespace_of},
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
    /// The objects of the last call by address (held, so that no other object can take an
    /// address while it is listed here), with the hash of the Service each slice belongs to:
    /// what lets a call find what changed without a lookup by name per Service
    /// ([`CompileMemo::compile`]).
    last: LastObjects,
    /// Calls that compiled only the changed Services found by address.
    partial_calls: u64,
    /// Calls that found them in the source's change log, without a walk over every object.
    logged_calls: u64,
    /// The cache versions the last call's objects were at (epoch and version of the Services'
    /// cache, then of the slices'), when its input came with a change log.
    log_at: Option<[u64; 4]>,
}

/// The objects that are new since the last call and those of the last call that are gone.
struct Found {
    new_services: Vec<Arc<Service>>,
    gone_services: Vec<Arc<Service>>,
    new_slices: Vec<Arc<Slice>>,
    gone_slices: Vec<Arc<Slice>>,
}

/// The objects of the last call by address ([`CompileMemo::last`]), each with the last call
/// that listed it (so that the objects no longer listed are found without a set of every
/// address now).
#[derive(Default)]
struct LastObjects {
    services: HashMap<usize, (Arc<Service>, u64)>,
    slices: HashMap<usize, (Arc<Slice>, Option<u64>, u64)>,
}

/// A Service's `(namespace, name)`, hashed alike wherever it is computed.
fn key_hash(ns: &str, name: &str) -> u64 {
    use std::hash::BuildHasher as _;
    foldhash::fast::FixedState::with_seed(0x1b5e_55e2).hash_one((ns, name))
}

/// The Service a slice belongs to (its label), if any.
pub(crate) fn slice_service(slice: &Slice) -> Option<(&str, &str)> {
    Some((namespace_of(&slice.metadata), slice.service_name.as_deref()?))
}

/// An object's address.
fn addr<T>(a: &Arc<T>) -> usize {
    Arc::as_ptr(a) as usize
}

/// One call's result: the desired state, health checks, and which ServicePorts may differ
/// from the previous call's (for [`Planner::plan_changed`](crate::plan::Planner::plan_changed);
/// every call's must reach the planner, as the agent's syncs do).
pub struct CompileOutput<'a> {
    pub desired: &'a DesiredState,
    pub health_checks: &'a HealthChecks,
    pub changed: Changed,
    pub found_by: FoundBy,
}

/// How a call found the changed Services.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FoundBy {
    /// Read from the source's change log.
    Log,
    /// By address, over every object.
    Walk,
    /// Every Service compiled, or compared by name.
    All,
}

impl std::fmt::Display for FoundBy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            FoundBy::Log => "log",
            FoundBy::Walk => "walk",
            FoundBy::All => "all",
        })
    }
}

/// One Service's objects (as the pointers it was compiled from) and what they compiled to.
struct Compiled {
    service: Arc<Service>,
    slices: Vec<Arc<Slice>>,
    /// Its ServicePorts, in order (a vector: a map of one or two entries held a 1 KB node,
    /// 10 MB at 10,000 Services).
    ports: Vec<(ServicePortName, Arc<ServicePortState>)>,
    rejected: Vec<Skipped>,
    health_checks: HealthChecks,
    /// The last call that saw this Service.
    seen: u64,
}

impl CompileMemo {
    /// After a large sync: room in the memo's hash maps for the changes to come
    /// ([`crate::room`]).
    pub fn make_room(&mut self) {
        crate::room::make_room(&mut self.last.services);
        crate::room::make_room(&mut self.last.slices);
        crate::room::make_room(&mut self.by_service);
        self.by_service.values_mut().for_each(crate::room::make_room);
    }

    fn output(&self, changed: Changed, found_by: FoundBy) -> CompileOutput<'_> {
        CompileOutput { desired: &self.desired, health_checks: &self.health_checks, changed, found_by }
    }

    /// Calls that read the changed objects from the source's change log.
    pub fn logged_calls(&self) -> u64 {
        self.logged_calls
    }

    /// The EndpointSlices Service `namespace/name` was last compiled from (none when it is
    /// not in the memo).
    pub fn slices_of(&self, namespace: &str, name: &str) -> &[Arc<Slice>] {
        self.by_service.get(namespace).and_then(|by_name| by_name.get(name)).map_or(&[], |c| &c.slices)
    }

    /// [`compile_all`] of `services` and `slices` for `node`, compiling only the Services whose
    /// Service object or EndpointSlices are not the ones of the last call, and patching the
    /// last result with theirs (the rest is neither compiled nor copied).
    pub fn compile(&mut self, services: &[Arc<Service>], slices: &[Arc<Slice>], node: &NodeContext) -> CompileOutput<'_> {
        self.compile_logged(services, slices, None, node)
    }

    /// [`CompileMemo::compile`] of lists that come with their source's change log (`changes`,
    /// whose lists are sorted by namespace and name): when the log holds every change since the
    /// last call, the changed objects are read from it instead of found by a walk over every
    /// object.
    pub fn compile_logged(
        &mut self,
        services: &[Arc<Service>],
        slices: &[Arc<Slice>],
        changes: Option<&ObjectChanges>,
        node: &NodeContext,
    ) -> CompileOutput<'_> {
        let log_at = std::mem::replace(
            &mut self.log_at,
            changes.map(|c| [c.services.epoch, c.services.version, c.slices.epoch, c.slices.version]),
        );
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
        if !matches!(changed, Changed::All) && !self.rebuild {
            let logged = changes.zip(log_at).and_then(|(c, [se, sv, le, lv])| {
                let found = found_in_log(c.services.since(se, sv)?, c.slices.since(le, lv)?, &self.last);
                self.compile_changed(services, slices, found, true, node, pass)
            });
            if let Some(changed) = logged {
                self.logged_calls += 1;
                return self.output(changed, FoundBy::Log);
            }
            let found = self.found_by_address(services, slices, pass);
            if let Some(changed) = self.compile_changed(services, slices, found, false, node, pass) {
                self.partial_calls += 1;
                return self.output(changed, FoundBy::Walk);
            }
        }
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
            let fresh: Vec<(String, String)> = fresh.iter().map(|(ns, name)| ((*ns).to_owned(), (*name).to_owned())).collect();
            changed.merge(self.patch_union(services, &stale, &fresh));
        }
        self.last = LastObjects {
            services: services.iter().map(|s| (addr(s), (s.clone(), pass))).collect(),
            slices: slices
                .iter()
                .map(|s| (addr(s), (s.clone(), slice_service(s).map(|(ns, name)| key_hash(ns, name)), pass)))
                .collect(),
        };
        self.output(changed, FoundBy::All)
    }

    /// Patches the union with the results of the Services compiled again or for the first
    /// time (`fresh`, whose entries hold the new results) in place of the `stale` ones; the
    /// ServicePorts that may differ.
    fn patch_union(&mut self, services: &[Arc<Service>], stale: &[Compiled], fresh: &[(String, String)]) -> Changed {
        let mut spns = std::collections::BTreeSet::new();
        for old in stale {
            for spn in old.ports.iter().map(|(spn, _)| spn) {
                self.desired.services.remove(spn);
                spns.insert(spn.clone());
            }
            for key in old.health_checks.keys() {
                self.health_checks.remove(key);
            }
        }
        for (ns, name) in fresh {
            let c = &self.by_service[ns][name];
            spns.extend(c.ports.iter().map(|(spn, _)| spn.clone()));
            self.desired.services.extend(c.ports.iter().map(|(k, v)| (k.clone(), v.clone())));
            self.health_checks.extend(c.health_checks.iter().map(|(k, v)| (k.clone(), *v)));
        }
        // Rejections in input order, as compile_all lists them (none, usually: then no walk).
        let mut touched = stale.iter().chain(fresh.iter().map(|(ns, name)| &self.by_service[ns][name]));
        if !self.desired.rejected.is_empty() || touched.any(|c| !c.rejected.is_empty()) {
            self.desired.rejected.clear();
            for svc in services {
                let c = &self.by_service[namespace_of(&svc.metadata)][svc.metadata.name.as_deref().unwrap_or_default()];
                self.desired.rejected.extend(c.rejected.iter().cloned());
            }
        }
        Changed::Only(spns)
    }

    /// The objects not at the last call's addresses (new versions and new objects) and the
    /// last call's objects no longer listed, found by address alone (at 100,000 Services a walk
    /// by name cost tens of milliseconds per sync; this walk still costs a hash lookup per
    /// object).
    fn found_by_address(&mut self, services: &[Arc<Service>], slices: &[Arc<Slice>], pass: u64) -> Found {
        // Objects at new addresses (the others marked as listed by this call), and the last
        // call's objects no longer listed (not marked; looked for only when some are missing).
        // Marks left by a call that compiles nothing afterwards do no harm: the full walk
        // replaces them all.
        let mut new_services: Vec<Arc<Service>> = Vec::new();
        for s in services {
            match self.last.services.get_mut(&addr(s)) {
                Some((_, seen)) => *seen = pass,
                None => new_services.push(s.clone()),
            }
        }
        let mut gone_services: Vec<Arc<Service>> = Vec::new();
        if services.len() - new_services.len() < self.last.services.len() {
            gone_services.extend(self.last.services.values().filter(|(_, seen)| *seen != pass).map(|(s, _)| s.clone()));
        }
        let mut new_slices: Vec<Arc<Slice>> = Vec::new();
        for s in slices {
            match self.last.slices.get_mut(&addr(s)) {
                Some((_, _, seen)) => *seen = pass,
                None => new_slices.push(s.clone()),
            }
        }
        let mut gone_slices: Vec<Arc<Slice>> = Vec::new();
        if slices.len() - new_slices.len() < self.last.slices.len() {
            gone_slices.extend(self.last.slices.values().filter(|(_, _, seen)| *seen != pass).map(|(s, _, _)| s.clone()));
        }
        Found { new_services, gone_services, new_slices, gone_slices }
    }

    /// The call's work when few objects changed (`found`: by address, or from the source's
    /// change log when `logged`): the new objects and the last call's objects gone name the
    /// Services that may differ; only those are compiled again, from their objects now. `None`,
    /// having changed nothing, when the full walk must decide: many changes, or two Service
    /// objects with one namespace/name. (An unchanged object keeps its address: the watch
    /// caches and the file source replace an object's `Arc` for every new version.)
    fn compile_changed(
        &mut self,
        services: &[Arc<Service>],
        slices: &[Arc<Slice>],
        found: Found,
        logged: bool,
        node: &NodeContext,
        pass: u64,
    ) -> Option<Changed> {
        let Found { new_services, gone_services, new_slices, gone_slices } = found;
        let changes = new_services.len() + gone_services.len() + new_slices.len() + gone_slices.len();
        if changes > 64 + services.len() / 16 {
            return None;
        }
        // The Services that may differ.
        let name_of = |s: &Service| (namespace_of(&s.metadata).to_owned(), s.metadata.name.clone().unwrap_or_default());
        let mut dirty: std::collections::BTreeSet<(String, String)> = std::collections::BTreeSet::new();
        dirty.extend(new_services.iter().map(|s| name_of(s)));
        dirty.extend(gone_services.iter().map(|s| name_of(s)));
        for s in new_slices.iter().chain(gone_slices.iter()).map(|s| &**s) {
            if let Some((ns, name)) = slice_service(s) {
                dirty.insert((ns.to_owned(), name.to_owned()));
            }
        }
        // Each one's Service object now: the memo's if still listed, or a new one; two of them
        // are duplicates, which the full walk handles.
        let gone: foldhash::HashSet<usize> = gone_services.iter().map(addr).collect();
        let mut now_of: BTreeMap<&(String, String), Arc<Service>> = BTreeMap::new();
        for key in &dirty {
            if let Some(c) = self.by_service.get(&key.0).and_then(|m| m.get(&key.1))
                && !gone.contains(&addr(&c.service))
            {
                now_of.insert(key, c.service.clone());
            }
        }
        for s in &new_services {
            let key = dirty.get(&name_of(s))?;
            if now_of.insert(key, Arc::clone(s)).is_some() {
                return None;
            }
        }
        // Their slices now, in input order. From a change log: the slices each was compiled
        // from at the last call, less the ones gone, with the new ones labelled with it, in
        // name order (a change log's lists are sorted by namespace and name) — when every
        // Service listed now was in the memo (a new Service may name slices listed before it).
        let mut slices_of: BTreeMap<&(String, String), Vec<Arc<Slice>>> = BTreeMap::new();
        let from_memo = logged && now_of.keys().all(|key| self.by_service.get(&key.0).is_some_and(|m| m.contains_key(&key.1)));
        let hashes: foldhash::HashSet<u64> = dirty.iter().map(|(ns, name)| key_hash(ns, name)).collect();
        if from_memo {
            let gone: foldhash::HashSet<usize> = gone_slices.iter().map(addr).collect();
            for key in now_of.keys() {
                let c = &self.by_service[&key.0][&key.1];
                let mut own: Vec<Arc<Slice>> = c.slices.iter().filter(|s| !gone.contains(&addr(s))).cloned().collect();
                own.extend(new_slices.iter().filter(|s| slice_service(s) == Some((key.0.as_str(), key.1.as_str()))).cloned());
                own.sort_by(|a, b| {
                    (namespace_of(&a.metadata), a.metadata.name.as_deref())
                        .cmp(&(namespace_of(&b.metadata), b.metadata.name.as_deref()))
                });
                slices_of.insert(*key, own);
            }
        }
        for s in slices.iter().filter(|_| !from_memo) {
            let hash = match self.last.slices.get(&addr(s)) {
                Some((_, h, _)) => *h,
                None => slice_service(s).map(|(ns, name)| key_hash(ns, name)),
            };
            if !hash.is_some_and(|h| hashes.contains(&h)) {
                continue;
            }
            if let Some((ns, name)) = slice_service(s)
                && let Some(key) = dirty.get(&(ns.to_owned(), name.to_owned()))
            {
                slices_of.entry(key).or_default().push(s.clone());
            }
        }

        // Compile them (nothing was changed before this point).
        let mut stale: Vec<Compiled> = Vec::new();
        let mut fresh: Vec<(String, String)> = Vec::new();
        for key in &dirty {
            let own = slices_of.remove(key).unwrap_or_default();
            let entry = self.by_service.get_mut(&key.0).and_then(|m| m.get_mut(&key.1));
            match (now_of.get(key), entry) {
                (Some(svc), Some(c)) => {
                    if Arc::ptr_eq(&c.service, svc) && same_slices(&c.slices, own.iter().cloned()) {
                        c.seen = pass;
                        continue;
                    }
                    stale.push(std::mem::replace(c, compile_one(svc, own, node, pass)));
                    fresh.push(key.clone());
                }
                (Some(svc), None) => {
                    let compiled = compile_one(svc, own, node, pass);
                    self.by_service.entry(key.0.clone()).or_default().insert(key.1.clone(), compiled);
                    fresh.push(key.clone());
                }
                (None, Some(_)) => {
                    if let Some(by_name) = self.by_service.get_mut(&key.0) {
                        stale.extend(by_name.remove(&key.1));
                        if by_name.is_empty() {
                            self.by_service.remove(&key.0);
                        }
                    }
                }
                (None, None) => {}
            }
        }
        let changed = self.patch_union(services, &stale, &fresh);
        for s in &gone_services {
            self.last.services.remove(&addr(s));
        }
        for s in &gone_slices {
            self.last.slices.remove(&addr(s));
        }
        self.last.services.extend(new_services.iter().map(|s| (addr(s), (Arc::clone(s), pass))));
        self.last.slices.extend(
            new_slices.iter().map(|s| (addr(s), (Arc::clone(s), slice_service(s).map(|(ns, name)| key_hash(ns, name)), pass))),
        );
        Some(changed)
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
            desired.services.extend(c.ports.iter().map(|(k, v)| (k.clone(), v.clone())));
            desired.rejected.extend(c.rejected.iter().cloned());
            health_checks.extend(c.health_checks.iter().map(|(k, v)| (k.clone(), *v)));
        }
        self.desired = desired;
        self.health_checks = health_checks;
    }
}

/// The new and gone objects of a change log's entries since the last call (`last`: the last
/// call's objects by address). An object both added and replaced (or deleted) since is neither.
fn found_in_log(services: &[Change<Service>], slices: &[Change<Slice>], last: &LastObjects) -> Found {
    fn net<K, V>(entries: &[Change<K>], last: &HashMap<usize, V>) -> (Vec<Arc<K>>, Vec<Arc<K>>) {
        let replaced: foldhash::HashSet<usize> = entries.iter().filter_map(|(before, _)| before.as_ref().map(addr)).collect();
        let new = entries.iter().filter_map(|(_, after)| after.clone()).filter(|a| !replaced.contains(&addr(a))).collect();
        let gone = entries.iter().filter_map(|(before, _)| before.clone()).filter(|b| last.contains_key(&addr(b))).collect();
        (new, gone)
    }
    let (new_services, gone_services) = net(services, &last.services);
    let (new_slices, gone_slices) = net(slices, &last.slices);
    Found { new_services, gone_services, new_slices, gone_slices }
}

/// Compiles one Service with its slices.
fn compile_one(svc: &Arc<Service>, own: Vec<Arc<Slice>>, node: &NodeContext, pass: u64) -> Compiled {
    let (desired, health_checks) = compile_all(std::slice::from_ref(svc), &own, node);
    let DesiredState { services, rejected } = desired;
    Compiled { service: svc.clone(), slices: own, ports: services.into_iter().collect(), rejected, health_checks, seen: pass }
}

/// Whether `memo` holds exactly the slices `now` lists, in order.
fn same_slices<'a>(memo: &[Arc<Slice>], mut now: impl Iterator<Item = Arc<Slice>> + 'a) -> bool {
    memo.iter().all(|a| now.next().is_some_and(|b| Arc::ptr_eq(a, &b))) && now.next().is_none()
}

/// EndpointSlices grouped by the Service they name, in input order, without a list per
/// Service: each slice links to the next of the same Service.
struct SlicesByService<'a> {
    slices: &'a [Arc<Slice>],
    /// (first, last) slice index per Service.
    ends: HashMap<(&'a str, &'a str), (u32, u32)>,
    next: Vec<u32>,
}

impl<'a> SlicesByService<'a> {
    const END: u32 = u32::MAX;

    fn new(slices: &'a [Arc<Slice>]) -> Self {
        let mut ends: HashMap<(&str, &str), (u32, u32)> =
            HashMap::with_capacity_and_hasher(slices.len(), foldhash::fast::RandomState::default());
        let mut next = vec![Self::END; slices.len()];
        for (i, slice) in slices.iter().enumerate() {
            let Some(svc) = slice.service_name.as_deref() else { continue };
            let i = i as u32;
            ends.entry((namespace_of(&slice.metadata), svc))
                .and_modify(|(_, last)| {
                    next[*last as usize] = i;
                    *last = i;
                })
                .or_insert((i, i));
        }
        Self { slices, ends, next }
    }

    /// The slices of Service `ns/name`, in input order.
    fn of(&self, ns: &str, name: &str) -> impl Iterator<Item = Arc<Slice>> + Clone + '_ {
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
mod tests;
