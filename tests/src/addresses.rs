//! The node and cluster that the datapath fixtures, the fuzzer and the benches program into a
//! loaded datapath: one node (node 0 of [`crate::topology`]) with the agent's default hairpin
//! sources and SNAT ports, pods on it and on another node, a client outside, and the addresses
//! of the Services they share. Fixture-only addresses stay with the fixtures.

use std::{
    net::{Ipv4Addr, Ipv6Addr},
    ops::RangeInclusive,
};

/// This node's address: NodePort frontend and SNAT source.
pub const NODE: Ipv4Addr = Ipv4Addr::new(192, 168, 77, 1);
/// This node's IPv6 address.
pub const NODE6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x77, 0, 0, 0, 0, 0, 1);
/// The source of hairpinned traffic (a pod reaching itself through its Service): the agent's
/// default `--hairpin-ip`.
pub const HAIRPIN: Ipv4Addr = Ipv4Addr::new(169, 254, 42, 1);
/// The agent's default `--hairpin-ip6`.
pub const HAIRPIN6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x6c62, 0, 0, 0, 0, 0, 1);
/// The source ports of SNAT: the agent's default `--snat-ports`.
pub const SNAT_PORTS: RangeInclusive<u16> = 61000..=65000;

/// A client outside the cluster, on the node's network.
pub const EXT_CLIENT: Ipv4Addr = Ipv4Addr::new(192, 168, 77, 50);
/// A pod on this node, client of the Services.
pub const CLIENT: Ipv4Addr = Ipv4Addr::new(10, 244, 0, 50);
/// Pods on this node, endpoints of the Services.
pub const POD1: Ipv4Addr = Ipv4Addr::new(10, 244, 0, 11);
pub const POD2: Ipv4Addr = Ipv4Addr::new(10, 244, 0, 12);
pub const POD3: Ipv4Addr = Ipv4Addr::new(10, 244, 0, 13);
/// Endpoints on another node.
pub const REMOTE1: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 21);
pub const REMOTE2: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 22);
/// A router between this node and the pods: the source of ICMP errors that are no endpoint's.
pub const ROUTER: Ipv4Addr = Ipv4Addr::new(10, 244, 0, 1);

/// The ClusterIP of the TCP Service (kubia: 80 → 8080).
pub const VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
/// The ClusterIP of the UDP Service (dns: 53 → 9000).
pub const UDP_VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 20);
/// A LoadBalancer IP (restricted by `loadBalancerSourceRanges` where a test says so).
pub const LB_IP: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 7);
