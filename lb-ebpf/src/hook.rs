//! Where a program runs: what the run path (`run`) and the SNAT decision (`conntrack`) need to
//! know about the hook, in a module of its own so that neither depends on the other for it.

/// Where a program runs.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Hook {
    /// Ingress from a pod on this node (TC on the host side of its interface).
    Pod,
    /// Ingress from outside the node (XDP, or its TC fallback).
    External,
    /// Egress of pod and external interfaces: only replies (and ICMP errors) of translated
    /// flows, the ones the node's own stack sends for a backend on its address (point 63).
    Egress,
}
