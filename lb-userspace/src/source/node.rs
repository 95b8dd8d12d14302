//! This node's identity: its name, the addresses NodePorts are served on, and its zone.

use std::net::IpAddr;

use k8s_openapi::api::core::v1::Node;

use crate::model::{NodeContext, parse_ip_sloppy};

/// Zone label read for topology hints (point 53).
pub const LABEL_ZONE: &str = "topology.kubernetes.io/zone";

/// Builds the node context from the flags and, when present, this node's Node object.
/// Addresses given as flags come first; the Node's InternalIP and ExternalIP addresses are
/// added (point 41), of both families (a dual-stack Node lists one of each; each family's
/// NodePorts are served on that family's addresses only, point 55).
pub fn node_context(name: &str, flag_addresses: &[IpAddr], nodes: &[impl std::borrow::Borrow<Node>]) -> NodeContext {
    let mut ctx = NodeContext {
        name: name.to_owned(),
        // `::ffff:a.b.c.d` is an IPv4 address (see `parse_ip_sloppy`).
        addresses: flag_addresses.iter().map(|a| a.to_canonical()).collect(),
        zone: None,
        external_ip_cidrs: None,
        lb_ip_cidrs: None,
    };
    if let Some(node) = nodes.iter().map(std::borrow::Borrow::borrow).find(|n: &&Node| n.metadata.name.as_deref() == Some(name)) {
        ctx.zone = node.metadata.labels.as_ref().and_then(|l| l.get(LABEL_ZONE)).cloned();
        let addrs = node.status.as_ref().and_then(|s| s.addresses.as_deref()).unwrap_or_default();
        for a in addrs {
            if matches!(a.type_.as_str(), "InternalIP" | "ExternalIP")
                && let Some(ip) = parse_ip_sloppy(&a.address)
                && !ctx.addresses.contains(&ip)
            {
                ctx.addresses.push(ip);
            }
        }
    }
    ctx
}
