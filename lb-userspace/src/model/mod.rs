//! The desired datapath state in Kubernetes terms: what [`crate::compile`] produces and
//! [`crate::plan`] turns into map entries. Pure data, no kernel.

use std::{collections::BTreeMap, fmt, net::IpAddr, sync::Arc};

use serde::Serialize;

pub mod changes;
pub mod kubernetes;
pub mod slice;

pub use kubernetes::{NodeContext, parse_ip_sloppy};

/// An L4 protocol a ServicePort can carry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub enum Protocol {
    Tcp,
    Udp,
    Sctp,
}

impl Protocol {
    /// Parses the Kubernetes spelling; `None` (field absent) is the API default, TCP.
    pub fn from_k8s(s: Option<&str>) -> Option<Self> {
        match s {
            None | Some("TCP") => Some(Self::Tcp),
            Some("UDP") => Some(Self::Udp),
            Some("SCTP") => Some(Self::Sctp),
            Some(_) => None,
        }
    }

    /// IP protocol number.
    pub fn number(self) -> u8 {
        match self {
            Self::Tcp => lb_common::IPPROTO_TCP,
            Self::Udp => lb_common::IPPROTO_UDP,
            Self::Sctp => lb_common::IPPROTO_SCTP,
        }
    }

    pub fn from_number(n: u8) -> Option<Self> {
        match n {
            lb_common::IPPROTO_TCP => Some(Self::Tcp),
            lb_common::IPPROTO_UDP => Some(Self::Udp),
            lb_common::IPPROTO_SCTP => Some(Self::Sctp),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Tcp => "TCP",
            Self::Udp => "UDP",
            Self::Sctp => "SCTP",
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An IP address family. kube-proxy runs one proxier per family (semantics point 55); this
/// agent compiles both families into one [`DesiredState`], where the family is part of every
/// [`ServicePortName`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub enum Family {
    #[default]
    V4,
    V6,
}

impl Family {
    /// Both families, IPv4 first.
    pub const ALL: [Self; 2] = [Self::V4, Self::V6];

    /// The family of an address.
    pub fn of(ip: &IpAddr) -> Self {
        match ip {
            IpAddr::V4(_) => Self::V4,
            IpAddr::V6(_) => Self::V6,
        }
    }

    /// `ip` is an address of this family.
    pub fn matches(self, ip: &IpAddr) -> bool {
        Self::of(ip) == self
    }

    /// The Kubernetes spelling (`spec.ipFamilies`, EndpointSlice `addressType`).
    pub fn k8s_name(self) -> &'static str {
        match self {
            Self::V4 => "IPv4",
            Self::V6 => "IPv6",
        }
    }
}

impl fmt::Display for Family {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.k8s_name())
    }
}

/// kube-proxy's `ServicePortName`: everything (VIPs, endpoints, affinity) is per ServicePort.
/// The same port of a dual-stack Service is two ServicePorts here, one per family, each with
/// its own `svc_id` and selection tables (an IPv4 frontend never selects an IPv6 backend).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct ServicePortName {
    pub namespace: String,
    pub name: String,
    /// The port's name; empty for a single unnamed port.
    pub port_name: String,
    pub protocol: Protocol,
    /// The family of its frontends and endpoints.
    pub family: Family,
}

/// `namespace/name[:port]/PROTOCOL`, with `/IPv6` appended for IPv6 (so IPv4 names are the
/// ones single-stack IPv4 always had).
impl fmt::Display for ServicePortName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)?;
        if !self.port_name.is_empty() {
            write!(f, ":{}", self.port_name)?;
        }
        write!(f, "/{}", self.protocol)?;
        if self.family == Family::V6 {
            write!(f, "/{}", self.family)?;
        }
        Ok(())
    }
}

/// How a frontend address was obtained.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub enum FrontendKind {
    ClusterIp,
    NodePort,
    ExternalIp,
    LoadBalancer,
}

impl FrontendKind {
    /// External traffic (semantics conventions): NodePort, externalIPs, LoadBalancer IPs.
    pub fn is_external(self) -> bool {
        !matches!(self, Self::ClusterIp)
    }
}

/// One address:port a ServicePort is reached on.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct Frontend {
    pub addr: IpAddr,
    pub port: u16,
    pub kind: FrontendKind,
}

/// One endpoint of a ServicePort, with the port resolved for that endpoint.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct Endpoint {
    pub addr: IpAddr,
    pub port: u16,
    /// On this node.
    pub local: bool,
    /// Used through the serving-and-terminating fallback.
    pub terminating: bool,
    /// The address is one of this node's own (a hostNetwork pod, the API server on a
    /// control-plane node; point 63): the node's stack serves it, so external traffic to it is
    /// not source-NATed and its replies are translated on the node's egress.
    pub host: bool,
}

/// A list of endpoints, shared: a ServicePort's internal, external, Cluster and serving sets
/// are usually one list (policies Cluster, nothing terminating), held once.
pub type Endpoints = Arc<[Endpoint]>;

/// The endpoint set for one class of traffic (internal or external).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct EndpointSet {
    /// Endpoints to select among, sorted (shared with the ServicePort's other sets when equal).
    pub endpoints: Endpoints,
    /// When `endpoints` is empty: drop silently (traffic policy Local while the service has
    /// endpoints elsewhere) rather than reject (no endpoints at all).
    pub drop_if_empty: bool,
}

/// Backend selection algorithm of a ServicePort.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub enum Selection {
    /// Maglev consistent hashing of the flow's 5-tuple: every node picks the same backend for
    /// the same flow, and removing one of N backends moves only about 1/N of the flows.
    #[default]
    Maglev,
    /// Uniform random choice per new connection (kube-proxy's behaviour).
    Random,
}

/// A CIDR (`loadBalancerSourceRanges` entry).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct Cidr {
    pub addr: IpAddr,
    pub prefix: u8,
}

impl Cidr {
    /// `ip` is in this prefix (an address of the other family never is).
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(a)) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(self.prefix.min(32))).unwrap_or(0);
                u32::from(net) & mask == u32::from(a) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(a)) => {
                let mask = u128::MAX.checked_shl(128 - u32::from(self.prefix.min(128))).unwrap_or(0);
                u128::from(net) & mask == u128::from(a) & mask
            }
            _ => false,
        }
    }
}

/// Everything the datapath needs for one ServicePort.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ServicePortState {
    pub frontends: Vec<Frontend>,
    /// Serves ClusterIP traffic (per internalTrafficPolicy).
    pub internal: EndpointSet,
    /// Serves NodePort, externalIP and LoadBalancer traffic (per externalTrafficPolicy).
    pub external: EndpointSet,
    /// The Cluster set (ready endpoints anywhere, with the terminating fallback): what traffic
    /// from this node's pods and from the node itself gets on external frontends (point 34).
    pub cluster: Endpoints,
    /// Every serving endpoint (ready, or serving while terminating; any node, no topology),
    /// sorted: a UDP flow keeps its backend only while it is one of these (point 57).
    pub serving: Endpoints,
    /// External traffic is source-NATed to the node (`externalTrafficPolicy: Cluster`).
    pub external_snat: bool,
    /// `loadBalancerSourceRanges` of this family (applies to LoadBalancer frontends only).
    pub source_ranges: Vec<Cidr>,
    /// `sessionAffinity: ClientIP` timeout.
    pub affinity_timeout_s: Option<u32>,
    pub selection: Selection,
    /// The Service's labels as `key=value` pairs joined by `,`, in key order (empty: none), for
    /// `lb service list --selector`; shared by its ports.
    pub labels: Arc<str>,
}

/// An object the compile step refused, with why.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Skipped {
    /// `Service ns/name` or `EndpointSlice ns/name`.
    pub object: String,
    pub reason: Rejection,
}

/// The field of a Service that made the compile step refuse it; its [`RejectedField::label`]
/// is the `reason` label of `lb_objects_rejected_total` (a bounded set of values).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub enum RejectedField {
    Spec,
    Type,
    SelectionAnnotation,
    HealthCheckNodePort,
    Ports,
    PortProtocol,
    PortNumber,
    PortName,
    NodePort,
    ClusterIp,
    ClusterIps,
    ExternalIps,
    LoadBalancerIngressIp,
    LoadBalancerSourceRanges,
    SessionAffinity,
    AffinityTimeout,
}

impl RejectedField {
    /// The field's path without list indices or map keys.
    pub fn label(self) -> &'static str {
        match self {
            Self::Spec => "spec",
            Self::Type => "spec.type",
            Self::SelectionAnnotation => "metadata.annotations",
            Self::HealthCheckNodePort => "spec.healthCheckNodePort",
            Self::Ports => "spec.ports",
            Self::PortProtocol => "spec.ports.protocol",
            Self::PortNumber => "spec.ports.port",
            Self::PortName => "spec.ports.name",
            Self::NodePort => "spec.ports.nodePort",
            Self::ClusterIp => "spec.clusterIP",
            Self::ClusterIps => "spec.clusterIPs",
            Self::ExternalIps => "spec.externalIPs",
            Self::LoadBalancerIngressIp => "status.loadBalancer.ingress.ip",
            Self::LoadBalancerSourceRanges => "spec.loadBalancerSourceRanges",
            Self::SessionAffinity => "spec.sessionAffinity",
            Self::AffinityTimeout => "spec.sessionAffinityConfig.clientIP.timeoutSeconds",
        }
    }
}

/// Why the compile step refused a Service: the field, where it is in the object (with indices:
/// `spec.ports[0].port`), and what is wrong. Shown as `spec.ports[0].port: 0 is not a port
/// number (1-65535)`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Rejection {
    pub field: RejectedField,
    pub at: String,
    pub message: String,
}

impl Rejection {
    pub fn new(field: RejectedField, at: impl Into<String>, message: impl Into<String>) -> Self {
        Self { field, at: at.into(), message: message.into() }
    }

    /// At the field itself (no index).
    pub fn of(field: RejectedField, message: impl Into<String>) -> Self {
        Self::new(field, field.label(), message)
    }
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.at, self.message)
    }
}

/// A Service's health-check node port (`spec.healthCheckNodePort`, point 49): served for
/// `type: LoadBalancer` Services with `externalTrafficPolicy: Local`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct HealthCheck {
    pub node_port: u16,
    /// Distinct IPs of this node's ready endpoints, over all the Service's ports (terminating
    /// endpoints do not count, even when they still get traffic through the fallback). For a
    /// dual-stack Service, the larger of the two families' counts: a dual-stack pod has one
    /// address per family and counts once ([`crate::compile::compile_all`]).
    pub local_ready: usize,
}

/// Health-check node ports by Service `(namespace, name)`.
pub type HealthChecks = BTreeMap<(String, String), HealthCheck>;

/// The whole desired state for one node: one address family ([`crate::compile::compile`]) or
/// both ([`crate::compile::compile_all`]), told apart by [`ServicePortName::family`].
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct DesiredState {
    pub services: BTreeMap<ServicePortName, Arc<ServicePortState>>,
    /// Objects that were not programmed because they are invalid (not the ones skipped by
    /// design, such as headless services).
    pub rejected: Vec<Skipped>,
}
