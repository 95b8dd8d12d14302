//! The Kubernetes vocabulary the agent reads: the labels and annotations it honours, how an
//! object's namespace and an IP address are read (as Kubernetes reads them), and what the
//! compile step knows about this node.

use std::net::{IpAddr, Ipv4Addr};

/// What the compile step needs to know about the node it programs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeContext {
    /// `spec.nodeName` of local endpoints.
    pub name: String,
    /// Addresses NodePorts are served on (point 41), both families: each family's NodePorts
    /// are served on the addresses of that family only (point 55). The first IPv4 and the
    /// first IPv6 address are also the SNAT sources of external traffic (`lb agent`).
    pub addresses: Vec<IpAddr>,
    /// `topology.kubernetes.io/zone` of this node, for zone hints (point 53).
    pub zone: Option<String>,
    /// Point 46, CVE-2020-8554: the prefixes every `spec.externalIPs` entry must fall in
    /// (`lb agent --external-ip-cidrs`); a Service with an entry outside them is rejected.
    /// `None`: any address, as kube-proxy.
    pub external_ip_cidrs: Option<Vec<super::Cidr>>,
    /// Point 47, the same for `status.loadBalancer.ingress` IPs (`--loadbalancer-ip-cidrs`):
    /// setting them takes write access to `services/status`, so `None` (any) is the default.
    pub lb_ip_cidrs: Option<Vec<super::Cidr>>,
}

/// An object's namespace, with the API's default for objects that name none.
pub fn namespace_of(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> &str {
    meta.namespace.as_deref().unwrap_or("default")
}

/// Label that opts a Service out of this proxy (point 4).
pub const LABEL_SERVICE_PROXY_NAME: &str = "service.kubernetes.io/service-proxy-name";
/// Label that marks a Service headless for proxies (point 4).
pub const LABEL_HEADLESS: &str = "service.kubernetes.io/headless";
/// Labels that opt an object (a Service, or an EndpointSlice, which carries its Service's labels)
/// out of this proxy (point 4).
pub fn opts_out(labels: &std::collections::BTreeMap<String, String>) -> bool {
    labels.contains_key(LABEL_SERVICE_PROXY_NAME) || labels.contains_key(LABEL_HEADLESS)
}

/// Label linking an EndpointSlice to its Service (point 6).
pub const LABEL_SERVICE_NAME: &str = "kubernetes.io/service-name";
/// Annotation choosing the backend selection of a Service: `maglev` (default) or `random`.
pub const ANNOTATION_SELECTION: &str = "lb.dev/selection";
/// The EndpointSlice annotation the EndpointSlice controller sets to the time of the change (a
/// pod becoming ready, a Service edited) that made it write the slice: the start of kube-proxy's
/// network programming latency.
pub const TRIGGER_TIME_ANNOTATION: &str = "endpoints.kubernetes.io/last-change-trigger-time";
/// API default of `sessionAffinityConfig.clientIP.timeoutSeconds` (point 24).
pub const DEFAULT_AFFINITY_TIMEOUT_S: u32 = 10_800;
/// Maximum accepted affinity timeout (point 24).
pub const MAX_AFFINITY_TIMEOUT_S: u32 = 86_400;

/// Parses an IP the way Kubernetes does (`ParseIPSloppy`): IPv4 octets with leading zeros are
/// decimal, never octal (point 61). An IPv4-mapped IPv6 address (`::ffff:a.b.c.d`) is the IPv4
/// address, as in Go's `net.IP` (`To4()` succeeds, so Kubernetes counts it as IPv4): in the
/// maps it is the very same 16 bytes, so it must never become an IPv6 frontend or backend.
pub fn parse_ip_sloppy(s: &str) -> Option<IpAddr> {
    let s = s.trim();
    if s.contains(':') {
        return s.parse::<IpAddr>().ok().map(|ip| ip.to_canonical());
    }
    let mut octets = [0u8; 4];
    let mut n = 0;
    for part in s.split('.') {
        if n == 4 || part.is_empty() || part.len() > 3 || !part.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        octets[n] = part.parse::<u8>().ok()?;
        n += 1;
    }
    (n == 4).then(|| IpAddr::V4(Ipv4Addr::from(octets)))
}
