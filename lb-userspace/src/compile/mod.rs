//! The pure compile step: (Services, EndpointSlices, this node) → [`DesiredState`], with
//! kube-proxy's semantics. Point numbers refer to the semantics reference
//! (`docs/semantics.md`); the unit tests below name them.
//!
//! # Dual-stack (points 5, 15, 46-48, 55)
//! kube-proxy runs one proxier per family. Our maps hold both families (16-byte addresses), so
//! the agent compiles both families into one [`DesiredState`] with [`compile_all`]: each family
//! is compiled exactly as a single-family proxier would ([`compile`]), and a ServicePort of
//! family F ([`ServicePortName::family`]) gets only family-F frontends (its ClusterIP of F, the
//! node's addresses of F for NodePorts, externalIPs and LoadBalancer IPs of F), family-F
//! endpoints (slices of `addressType` F) and family-F `loadBalancerSourceRanges`. A Service
//! without a ClusterIP of F has nothing in F, not even its NodePort on the node's F addresses.

use std::{
    borrow::Borrow,
    collections::{BTreeMap, BTreeSet, HashSet},
    net::IpAddr,
    sync::Arc,
};

use k8s_openapi::api::core::v1::Service;

use crate::model::slice::Slice;

use crate::model::{
    Cidr, DesiredState, Endpoint, EndpointSet, Endpoints, Family, Frontend, FrontendKind, HealthCheck, HealthChecks, Protocol,
    RejectedField, Rejection, Selection, ServicePortName, ServicePortState, Skipped,
    kubernetes::{
        ANNOTATION_SELECTION, DEFAULT_AFFINITY_TIMEOUT_S, MAX_AFFINITY_TIMEOUT_S, NodeContext, namespace_of, opts_out,
        parse_ip_sloppy,
    },
};

/// Compiles every Service and EndpointSlice into the desired state of one node and one family
/// (what one kube-proxy proxier programs). Every ServicePort it returns has
/// [`ServicePortName::family`] `== family`.
pub fn compile(
    services: &[impl Borrow<Service>],
    slices: &[impl Borrow<Slice>],
    node: &NodeContext,
    family: Family,
) -> DesiredState {
    compile_with_health_checks(services, slices, node, family).0
}

/// [`compile`], and the health-check node ports of the Services it programs in `family`
/// (point 49: `type: LoadBalancer`, `externalTrafficPolicy: Local`, a non-zero
/// `healthCheckNodePort`), counting the local ready endpoints of `family` only.
pub fn compile_with_health_checks(
    services: &[impl Borrow<Service>],
    slices: &[impl Borrow<Slice>],
    node: &NodeContext,
    family: Family,
) -> (DesiredState, HealthChecks) {
    compile_families(services, slices, node, &[family])
}

/// Both families into one desired state: what the agent programs (module docs, point 55).
///
/// - ServicePorts: the union of [`compile`] for IPv4 and for IPv6; a dual-stack Service's port
///   appears once per family, told apart by [`ServicePortName::family`].
/// - Rejections: a Service that is invalid in either family is rejected as a whole (none of
///   its ports is programmed in any family), each distinct reason reported once.
/// - Health checks (point 49): one per Service whichever families it has. `local_ready` is the
///   larger of the two families' counts of distinct local ready endpoint IPs: a dual-stack pod
///   has one address of each family and must count once, not twice; a single-stack Service
///   counts its one family. (kube-proxy's two proxiers would each answer with their own
///   family's count; with dual-stack pods both counts are the same.)
pub fn compile_all(
    services: &[impl Borrow<Service>],
    slices: &[impl Borrow<Slice>],
    node: &NodeContext,
) -> (DesiredState, HealthChecks) {
    compile_families(services, slices, node, &Family::ALL)
}

fn compile_families(
    services: &[impl Borrow<Service>],
    slices: &[impl Borrow<Slice>],
    node: &NodeContext,
    families: &[Family],
) -> (DesiredState, HealthChecks) {
    let mut state = DesiredState::default();
    let mut health_checks = HealthChecks::new();
    let indexes: Vec<(Family, SlicesByService)> = families.iter().map(|f| (*f, index_slices(slices, *f))).collect();
    for svc in services {
        let svc: &Service = svc.borrow();
        let ns = namespace_of(&svc.metadata).to_owned();
        let name = svc.metadata.name.clone().unwrap_or_default();
        let mut ports = Vec::new();
        let mut health_check: Option<HealthCheck> = None;
        let mut reasons: Vec<Rejection> = Vec::new();
        for (family, slices_by_service) in &indexes {
            match compile_service(svc, &ns, &name, slices_by_service, node, *family) {
                Ok((family_ports, family_check)) => {
                    ports.extend(family_ports);
                    if let Some(hc) = family_check {
                        health_check = Some(match health_check {
                            Some(prev) => HealthCheck { local_ready: prev.local_ready.max(hc.local_ready), ..prev },
                            None => hc,
                        });
                    }
                }
                Err(CompileSkip::ByDesign) => {}
                Err(CompileSkip::Invalid(reason)) => {
                    if !reasons.contains(&reason) {
                        reasons.push(reason);
                    }
                }
            }
        }
        if reasons.is_empty() {
            state.services.extend(ports.into_iter().map(|(spn, sp)| (spn, Arc::new(sp))));
            if let Some(hc) = health_check {
                health_checks.insert((ns, name), hc);
            }
        } else {
            state.rejected.extend(reasons.into_iter().map(|reason| Skipped { object: format!("Service {ns}/{name}"), reason }));
        }
    }
    (state, health_checks)
}

enum CompileSkip {
    /// Not ours to program (headless, ExternalName, opted out, other family).
    ByDesign,
    /// Invalid: skipped with a reason, reported and counted.
    Invalid(Rejection),
}

/// EndpointSlices by `(namespace, service name)`.
type SlicesByService<'a> = BTreeMap<(String, String), Vec<&'a Slice>>;

/// EndpointSlices of the right family grouped by `(namespace, service name)` (points 6, 14, 15).
fn index_slices(slices: &[impl Borrow<Slice>], family: Family) -> SlicesByService<'_> {
    let mut by_service: BTreeMap<(String, String), Vec<&Slice>> = BTreeMap::new();
    for slice in slices {
        let slice: &Slice = slice.borrow();
        if slice.address_type != family.k8s_name() {
            continue;
        }
        let Some(svc) = slice.service_name.as_deref() else {
            continue;
        };
        if slice.opted_out {
            continue;
        }
        let ns = namespace_of(&slice.metadata).to_owned();
        by_service.entry((ns, svc.to_owned())).or_default().push(slice);
    }
    by_service
}

/// A Service's ServicePorts, and its health check when it needs one.
type CompiledService = (Vec<(ServicePortName, ServicePortState)>, Option<HealthCheck>);

fn compile_service(
    svc: &Service,
    ns: &str,
    name: &str,
    slices: &SlicesByService,
    node: &NodeContext,
    family: Family,
) -> Result<CompiledService, CompileSkip> {
    let invalid = CompileSkip::Invalid;
    // Point 4: label opt-outs.
    if svc.metadata.labels.as_ref().is_some_and(opts_out) {
        return Err(CompileSkip::ByDesign);
    }
    let Some(spec) = &svc.spec else {
        return Err(invalid(Rejection::of(RejectedField::Spec, "missing")));
    };
    // Point 2: ExternalName is never proxied.
    if spec.type_.as_deref() == Some("ExternalName") {
        return Err(CompileSkip::ByDesign);
    }
    // Point 1: headless.
    let primary = spec.cluster_ip.as_deref().unwrap_or("");
    if primary.is_empty() || primary == "None" {
        return Err(CompileSkip::ByDesign);
    }
    // Point 5: the ClusterIP of this family.
    let cluster_ip = cluster_ip_for_family(spec, family).map_err(invalid)?;
    let Some(cluster_ip) = cluster_ip else {
        return Err(CompileSkip::ByDesign);
    };

    let svc_type = spec.type_.as_deref().unwrap_or("ClusterIP");
    let (nodeport_allowed, lb) = match svc_type {
        "ClusterIP" => (false, false),
        "NodePort" => (true, false),
        "LoadBalancer" => (true, true),
        other => return Err(invalid(Rejection::of(RejectedField::Type, format!("unknown type {other:?}")))),
    };

    let external_ips = external_ips(spec.external_ips.as_deref(), family, node.external_ip_cidrs.as_deref()).map_err(invalid)?;
    let lb_ips: Vec<IpAddr> =
        if lb { lb_ingress_ips(svc, family, node.lb_ip_cidrs.as_deref()).map_err(invalid)? } else { Vec::new() };
    let externally_accessible = nodeport_allowed || !external_ips.is_empty() || !lb_ips.is_empty();
    // Points 29, 30.
    let etp_local = externally_accessible && spec.external_traffic_policy.as_deref() == Some("Local");
    let itp_local = spec.internal_traffic_policy.as_deref() == Some("Local");
    let affinity_timeout_s = affinity_timeout(spec).map_err(invalid)?;
    let labels: Arc<str> = svc
        .metadata
        .labels
        .as_ref()
        .map(|l| l.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(","))
        .unwrap_or_default()
        .into();
    let selection = match svc.metadata.annotations.as_ref().and_then(|a| a.get(ANNOTATION_SELECTION)).map(String::as_str) {
        None | Some("maglev") => Selection::Maglev,
        Some("random") => Selection::Random,
        Some(other) => {
            let at = format!("metadata.annotations[{ANNOTATION_SELECTION}]");
            return Err(invalid(Rejection::new(
                RejectedField::SelectionAnnotation,
                at,
                format!("{other:?} is not maglev or random"),
            )));
        }
    };
    // Point 48.
    let source_ranges =
        if lb { parse_cidrs(spec.load_balancer_source_ranges.as_deref(), family).map_err(invalid)? } else { Vec::new() };

    // Point 49: `NeedsHealthCheck` (LoadBalancer with ETP=Local), in every family the Service
    // has (`compile_all` merges the families into one check per Service).
    let needs_health_check = lb && etp_local;
    let health_check_port = match spec.health_check_node_port.filter(|_| needs_health_check) {
        None | Some(0) => None,
        Some(n) => {
            let bad =
                || invalid(Rejection::of(RejectedField::HealthCheckNodePort, format!("{n} is not a port number (1-65535)")));
            Some(valid_port(n).ok_or_else(bad)?)
        }
    };
    // Distinct IPs of ready local endpoints over every port (`LocalReadyEndpoints`).
    let mut local_ready: BTreeSet<IpAddr> = BTreeSet::new();

    let ports = spec.ports.as_deref().unwrap_or_default();
    if ports.is_empty() {
        return Err(invalid(Rejection::of(RejectedField::Ports, "a Service needs at least one port")));
    }
    // Point 11: ports are keyed by (port, protocol); names must be unique too.
    let mut seen_ports = HashSet::new();
    let mut seen_names = HashSet::new();
    let mut out = Vec::with_capacity(ports.len());
    let empty = Vec::new();
    let svc_slices = slices.get(&(ns.to_owned(), name.to_owned())).unwrap_or(&empty);
    for (i, port) in ports.iter().enumerate() {
        let field = format!("spec.ports[{i}]");
        let protocol = Protocol::from_k8s(port.protocol.as_deref()).ok_or_else(|| {
            let what = format!("unknown protocol {:?}", port.protocol.as_deref().unwrap_or(""));
            invalid(Rejection::new(RejectedField::PortProtocol, format!("{field}.protocol"), what))
        })?;
        let number = valid_port(port.port).ok_or_else(|| {
            let what = format!("{} is not a port number (1-65535)", port.port);
            invalid(Rejection::new(RejectedField::PortNumber, format!("{field}.port"), what))
        })?;
        if !seen_ports.insert((number, protocol)) {
            return Err(invalid(Rejection::new(RejectedField::Ports, field, format!("duplicate port {number}/{protocol}"))));
        }
        let port_name = port.name.clone().unwrap_or_default();
        if !seen_names.insert((port_name.clone(), protocol)) {
            let what = format!("duplicate port name {port_name:?}");
            return Err(invalid(Rejection::new(RejectedField::PortName, format!("{field}.name"), what)));
        }
        let node_port = match port.node_port {
            None | Some(0) => None,
            Some(n) => {
                let what = format!("{n} is not a port number (1-65535)");
                Some(
                    valid_port(n)
                        .ok_or_else(|| invalid(Rejection::new(RejectedField::NodePort, format!("{field}.nodePort"), what)))?,
                )
            }
        };

        let spn =
            ServicePortName { namespace: ns.to_owned(), name: name.to_owned(), port_name: port_name.clone(), protocol, family };
        let mut frontends = vec![Frontend { addr: cluster_ip, port: number, kind: FrontendKind::ClusterIp }];
        // Point 3: NodePort (0 = none, e.g. allocateLoadBalancerNodePorts: false).
        if let (true, Some(np)) = (nodeport_allowed, node_port) {
            for addr in node.addresses.iter().filter(|a| family.matches(a)) {
                frontends.push(Frontend { addr: *addr, port: np, kind: FrontendKind::NodePort });
            }
        }
        // Point 46.
        frontends.extend(external_ips.iter().map(|a| Frontend { addr: *a, port: number, kind: FrontendKind::ExternalIp }));
        // Point 47.
        frontends.extend(lb_ips.iter().map(|a| Frontend { addr: *a, port: number, kind: FrontendKind::LoadBalancer }));
        frontends.sort();
        frontends.dedup_by(|a, b| a.addr == b.addr && a.port == b.port);

        let raw = collect_endpoints(svc_slices, &port_name, protocol, family);
        if health_check_port.is_some() {
            local_ready.extend(raw.iter().filter(|r| r.ready && is_local(r, node)).map(|r| r.addr));
        }
        let eps = categorize(raw, node);
        // One list for the sets that are equal (usually all of them).
        let cluster: Endpoints = eps.cluster.into();
        let share = |list: Vec<Endpoint>| if list[..] == cluster[..] { cluster.clone() } else { Endpoints::from(list) };
        let local = share(eps.local);
        let serving = share(eps.serving);
        let internal = if itp_local {
            EndpointSet { endpoints: local.clone(), drop_if_empty: eps.has_any }
        } else {
            EndpointSet { endpoints: cluster.clone(), drop_if_empty: false }
        };
        let external = if etp_local {
            EndpointSet { endpoints: local, drop_if_empty: eps.has_any }
        } else {
            EndpointSet { endpoints: cluster.clone(), drop_if_empty: false }
        };
        out.push((
            spn,
            ServicePortState {
                frontends,
                internal,
                external,
                cluster,
                serving,
                external_snat: !etp_local,
                source_ranges: source_ranges.clone(),
                affinity_timeout_s,
                selection,
                labels: labels.clone(),
            },
        ));
    }
    let health_check = health_check_port.map(|node_port| HealthCheck { node_port, local_ready: local_ready.len() });
    Ok((out, health_check))
}

fn valid_port(p: i32) -> Option<u16> {
    u16::try_from(p).ok().filter(|p| *p != 0)
}

/// Point 5: `GetClusterIPByFamily`.
fn cluster_ip_for_family(spec: &k8s_openapi::api::core::v1::ServiceSpec, family: Family) -> Result<Option<IpAddr>, Rejection> {
    let families = spec.ip_families.as_deref().unwrap_or_default();
    let ips = spec.cluster_ips.as_deref().unwrap_or_default();
    if families.is_empty() || ips.is_empty() {
        let raw = spec.cluster_ip.as_deref().unwrap_or("");
        let ip = parse_ip_sloppy(raw)
            .ok_or_else(|| Rejection::of(RejectedField::ClusterIp, format!("{raw:?} is not an IP address")))?;
        return Ok(family.matches(&ip).then_some(ip));
    }
    for (i, fam) in families.iter().enumerate() {
        if fam == family.k8s_name() {
            let Some(raw) = ips.get(i) else {
                return Ok(None);
            };
            let ip = parse_ip_sloppy(raw).ok_or_else(|| {
                Rejection::new(
                    RejectedField::ClusterIps,
                    format!("spec.clusterIPs[{i}]"),
                    format!("{raw:?} is not an IP address"),
                )
            })?;
            return Ok(family.matches(&ip).then_some(ip));
        }
    }
    Ok(None)
}

/// Point 46: the addresses of `spec.externalIPs` of this family; every entry (of either family)
/// must be in `allowed` when it is given (CVE-2020-8554).
fn external_ips(list: Option<&[String]>, family: Family, allowed: Option<&[Cidr]>) -> Result<Vec<IpAddr>, Rejection> {
    let mut out = Vec::new();
    for (i, raw) in list.unwrap_or_default().iter().enumerate() {
        let ip = parse_ip_sloppy(raw).ok_or_else(|| {
            Rejection::new(RejectedField::ExternalIps, format!("spec.externalIPs[{i}]"), format!("{raw:?} is not an IP address"))
        })?;
        if let Some(allowed) = allowed
            && !allowed.iter().any(|c| c.contains(ip))
        {
            return Err(Rejection::new(
                RejectedField::ExternalIps,
                format!("spec.externalIPs[{i}]"),
                format!(
                    "{ip} is outside --external-ip-cidrs (externalIPs capture traffic to any address: CVE-2020-8554); \
                     allow its prefix with --external-ip-cidrs"
                ),
            ));
        }
        if family.matches(&ip) {
            out.push(ip);
        }
    }
    Ok(out)
}

/// Point 48: CIDRs, whitespace-trimmed, of this family.
fn parse_cidrs(list: Option<&[String]>, family: Family) -> Result<Vec<Cidr>, Rejection> {
    let mut out = Vec::new();
    for (i, raw) in list.unwrap_or_default().iter().enumerate() {
        let bad = || {
            let at = format!("spec.loadBalancerSourceRanges[{i}]");
            Rejection::new(RejectedField::LoadBalancerSourceRanges, at, format!("{raw:?} is not a CIDR"))
        };
        let (ip, len) = raw.trim().split_once('/').ok_or_else(bad)?;
        let addr = parse_ip_sloppy(ip).ok_or_else(bad)?;
        let prefix: u8 = len.parse().map_err(|_| bad())?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        if prefix > max {
            return Err(bad());
        }
        if family.matches(&addr) {
            out.push(Cidr { addr, prefix });
        }
    }
    Ok(out)
}

/// Point 47: ingress entries with an IP and `ipMode` unset or `VIP`.
/// Point 47: every ingress IP (of either family) must be in `allowed` when it is given.
fn lb_ingress_ips(svc: &Service, family: Family, allowed: Option<&[Cidr]>) -> Result<Vec<IpAddr>, Rejection> {
    let ingress =
        svc.status.as_ref().and_then(|s| s.load_balancer.as_ref()).and_then(|lb| lb.ingress.as_deref()).unwrap_or_default();
    let mut out = Vec::new();
    for (i, ing) in ingress.iter().enumerate() {
        let Some(raw) = ing.ip.as_deref().filter(|s| !s.is_empty()) else {
            continue;
        };
        if !matches!(ing.ip_mode.as_deref(), None | Some("VIP")) {
            continue;
        }
        let ip = parse_ip_sloppy(raw).ok_or_else(|| {
            let at = format!("status.loadBalancer.ingress[{i}].ip");
            Rejection::new(RejectedField::LoadBalancerIngressIp, at, format!("{raw:?} is not an IP address"))
        })?;
        if let Some(allowed) = allowed
            && !allowed.iter().any(|c| c.contains(ip))
        {
            return Err(Rejection::new(
                RejectedField::LoadBalancerIngressIp,
                format!("status.loadBalancer.ingress[{i}].ip"),
                format!("{ip} is outside --loadbalancer-ip-cidrs (CVE-2020-8554); allow its prefix with --loadbalancer-ip-cidrs"),
            ));
        }
        if family.matches(&ip) {
            out.push(ip);
        }
    }
    Ok(out)
}

/// Point 24.
fn affinity_timeout(spec: &k8s_openapi::api::core::v1::ServiceSpec) -> Result<Option<u32>, Rejection> {
    match spec.session_affinity.as_deref() {
        None | Some("None") => Ok(None),
        Some("ClientIP") => {
            let t = spec.session_affinity_config.as_ref().and_then(|c| c.client_ip.as_ref()).and_then(|c| c.timeout_seconds);
            match t {
                None => Ok(Some(DEFAULT_AFFINITY_TIMEOUT_S)),
                Some(t) if t > 0 && t as u32 <= MAX_AFFINITY_TIMEOUT_S => Ok(Some(t as u32)),
                Some(t) => {
                    Err(Rejection::of(RejectedField::AffinityTimeout, format!("{t} is outside 1-{MAX_AFFINITY_TIMEOUT_S}")))
                }
            }
        }
        Some(other) => Err(Rejection::of(RejectedField::SessionAffinity, format!("unknown value {other:?}"))),
    }
}

/// An endpoint as read from a slice, before categorisation.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct RawEndpoint {
    addr: IpAddr,
    port: u16,
    ready: bool,
    serving: bool,
    terminating: bool,
    node: Option<String>,
    zones: Option<BTreeSet<String>>,
    nodes: Option<BTreeSet<String>>,
}

/// Points 9, 10, 14, 16, 17, 20: endpoints of one ServicePort across all its slices (of
/// `family`, point 15; an address of the other family in such a slice, which the API server
/// does not allow, is ignored: a frontend never selects a backend of another family).
fn collect_endpoints(slices: &[&Slice], port_name: &str, protocol: Protocol, family: Family) -> Vec<RawEndpoint> {
    let mut by_addr: BTreeMap<(IpAddr, u16), RawEndpoint> = BTreeMap::new();
    for slice in slices {
        // Point 9: join by (name, protocol), never by number. Point 10: skip null/0 ports.
        let Some(port) = slice.ports.as_deref().unwrap_or_default().iter().find_map(|p| {
            let name = p.name.as_deref().unwrap_or("");
            let proto = Protocol::from_k8s(p.protocol.as_deref())?;
            (name == port_name && proto == protocol).then_some(p.port).flatten().and_then(valid_port)
        }) else {
            continue;
        };
        for ep in &slice.endpoints {
            // Point 16: only addresses[0], canonicalised (at ingestion, `model::slice`).
            let Some(addr) = ep.addr.filter(|a| family.matches(a)) else {
                continue;
            };
            // Point 17: nil handling (at ingestion).
            let (ready, serving, terminating) = (ep.ready(), ep.serving(), ep.terminating());
            let hints = ep.hints.as_deref();
            let zones = hints.and_then(|h| h.zones.clone());
            let nodes = hints.and_then(|h| h.nodes.clone());
            let raw = RawEndpoint {
                addr,
                port,
                ready,
                serving,
                terminating,
                node: ep.node_name.as_deref().map(str::to_owned),
                zones,
                nodes,
            };
            // Point 20: de-duplicate; a non-terminating copy wins.
            match by_addr.get(&(addr, port)) {
                Some(existing) if !existing.terminating => {}
                _ => {
                    by_addr.insert((addr, port), raw);
                }
            }
        }
    }
    by_addr.into_values().collect()
}

/// The endpoint runs on this node (never when the node has no name).
fn is_local(r: &RawEndpoint, node: &NodeContext) -> bool {
    r.node.as_deref() == Some(node.name.as_str()) && !node.name.is_empty()
}

struct Categorized {
    cluster: Vec<Endpoint>,
    local: Vec<Endpoint>,
    /// Point 57: every endpoint a UDP flow may stay on (ready, or serving while terminating).
    serving: Vec<Endpoint>,
    /// The ServicePort has usable endpoints anywhere (`hasEndpoints`).
    has_any: bool,
}

/// Point 19 (and 53 for hints): the Cluster and Local endpoint sets, each with its own
/// serving-terminating fallback.
fn categorize(raw: Vec<RawEndpoint>, node: &NodeContext) -> Categorized {
    let to_ep = |r: &RawEndpoint| Endpoint {
        addr: r.addr,
        port: r.port,
        local: is_local(r, node),
        terminating: r.terminating,
        // Point 63: a hostNetwork endpoint, served by this node's own stack.
        host: node.addresses.contains(&r.addr),
    };
    let ready: Vec<&RawEndpoint> = raw.iter().filter(|r| r.ready).collect();
    let fallback: Vec<&RawEndpoint> = raw.iter().filter(|r| r.serving && r.terminating).collect();

    // Point 53: topology hints apply to the Cluster set of ready endpoints only.
    let topo: Vec<&RawEndpoint> = topology_filter(&ready, node);
    let mut cluster: Vec<Endpoint> =
        if topo.is_empty() { fallback.iter().map(|r| to_ep(r)).collect() } else { topo.iter().map(|r| to_ep(r)).collect() };
    let local_ready: Vec<Endpoint> = ready.iter().map(|r| to_ep(r)).filter(|e| e.local).collect();
    let mut local =
        if local_ready.is_empty() { fallback.iter().map(|r| to_ep(r)).filter(|e| e.local).collect() } else { local_ready };
    cluster.sort();
    local.sort();
    let has_any = !ready.is_empty() || !fallback.is_empty();
    // `raw` is sorted by address and port, so this is too.
    let serving: Vec<Endpoint> = raw.iter().filter(|r| r.ready || r.serving).map(to_ep).collect();
    Categorized { cluster, local, serving, has_any }
}

/// Point 53: node hints first, then zone hints; otherwise all ready endpoints.
fn topology_filter<'a>(ready: &[&'a RawEndpoint], node: &NodeContext) -> Vec<&'a RawEndpoint> {
    if ready.is_empty() {
        return Vec::new();
    }
    if !node.name.is_empty() && ready.iter().all(|r| r.nodes.is_some()) {
        let mine: Vec<_> = ready.iter().copied().filter(|r| r.nodes.as_ref().is_some_and(|n| n.contains(&node.name))).collect();
        if !mine.is_empty() {
            return mine;
        }
    }
    if let Some(zone) = &node.zone
        && ready.iter().all(|r| r.zones.is_some())
    {
        let mine: Vec<_> = ready.iter().copied().filter(|r| r.zones.as_ref().is_some_and(|z| z.contains(zone))).collect();
        if !mine.is_empty() {
            return mine;
        }
    }
    ready.to_vec()
}

pub mod memo;

#[cfg(test)]
mod tests;

#[cfg(test)]
mod health_tests;
