//! Tier 1: BPF_PROG_TEST_RUN fixtures, IPv4 and IPv6. The real eBPF object is loaded into the
//! real kernel, its maps are programmed through the agent's own planner and `Dataplane`, and
//! packets go in to come out with a verdict. Point numbers refer to docs/semantics.md.
//!
//! Four programs are exercised: the pod-interface TC program (`Fixture::run`), the external XDP
//! program (`Fixture::run_xdp`), its TC fallback (`Fixture::run_ext` with `Ext::Tc`) and the
//! egress program for replies of endpoints on the node's own address (`Fixture::run_tc` with
//! `PROG_TC_EGRESS`). External fixtures model the node of `lb_tests::addresses`, whose agent
//! configured SNAT to the node's addresses (ports 61000..=65000) and the hairpin addresses.
//!
//! # One case, both families
//! Every case is written once, as `fn case<F: Family>(test: &str)`, against the roles of
//! [`Family`]: the same cluster (ClusterIPs, pods, the node, a client outside, ...) with each
//! family's addresses, and what differs in its frames (header length, ICMP types). The modules
//! [`v4`] and [`v6`] at the end instantiate every case with [`V4`] and with [`V6`]
//! (`instantiate!(both families: V4)`), so each runs as `v4::<case>` and as `v6::<case>`
//! (`cargo xtask test -- --test datapath_fixtures v6::point_58`). The few cases only one family
//! has (IPv4 options and header lengths, IPv6 extension headers) are plain `fn case(test: &str)`
//! in the "IPv4 only" and "IPv6 only" sections, run by their family's module
//! (`instantiate!(this family: ...)`).

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    time::Duration,
};

use lb_common::{
    CNT_AFFINITY_HIT, CNT_CT_RESELECT, CNT_DROP_BAD_L4, CNT_DROP_FRAGMENT, CNT_DROP_NO_BACKEND, CNT_DROP_NO_LOCAL_BACKEND,
    CNT_DROP_SOURCE_RANGE, CNT_FRAG_FOLLOWED, CNT_HAIRPIN, CNT_ICMP_TRANSLATED, CNT_NEW_FLOWS, CNT_PASS_BAD_L3, CNT_PASS_NOT_IP,
    CNT_REJECT_ICMP, CNT_REJECT_TCP, CNT_SNAT, CNT_VERDICT_DNAT, CNT_VERDICT_DROP, CNT_VERDICT_PASS, CNT_VERDICT_REJECT,
    CNT_VERDICT_REVNAT, FlowCounters, PROG_TC_EGRESS,
};
use lb_tests::{
    addresses::{self, SNAT_PORTS},
    packet::{
        ETH_HEADER_LEN, ETHERTYPE_IPV4, ETHERTYPE_IPV6, ICMP_DEST_UNREACH, ICMP_FRAG_NEEDED, ICMP_PARAMETER_PROBLEM,
        ICMP_PORT_UNREACH, ICMP_TIME_EXCEEDED, ICMPV6_DEST_UNREACH, ICMPV6_PACKET_TOO_BIG, ICMPV6_PARAMETER_PROBLEM,
        ICMPV6_PORT_UNREACH, ICMPV6_TIME_EXCEEDED, IPV4_HEADER_LEN, IPV6_HEADER_LEN, MAC_DST, MAC_SRC, NEXT_AH,
        NEXT_DEST_OPTIONS, NEXT_HOP_BY_HOP, NEXT_ROUTING, PROTO_ICMP, PROTO_ICMPV6, PROTO_TCP, PROTO_UDP, TCP_ACK, TCP_FIN,
        TCP_RST, TCP_SYN, checksum, fragment_frame, frame_with_destination, frame_with_source, icmp_error_frame, ip_frame,
        ipv4_frame, ipv6_frame, ipv6_options_header, ipv6_router_alert_header, ipv6_routing_header, parse_flow, parse_icmp_error,
        parse_ip_header, parse_l4_bytes, parse_tcp, pseudo_header_sum, quoted_tcp, tcp_frame, tcp_segment, truncated_frame,
        udp_datagram, udp_frame, udp_frame_without_checksum, verify_checksums, verify_ip_header_checksum, verify_udp_datagram,
    },
    verdict::{TC_ACT_OK, TC_ACT_REDIRECT, TC_ACT_SHOT, XDP_DROP, XDP_PASS, XDP_TX},
};
use lb_userspace::{
    maps::addr16,
    maps::pinned::PinnedMaps,
    model::{
        Cidr, DesiredState, Endpoint, EndpointSet, Frontend, FrontendKind, Protocol, Selection, ServicePortName, ServicePortState,
    },
};

mod common;

use common::{Ext, Fixture, clusterip_service, conntrack_key, desired_state, endpoint};

// =============================================================================================
// The families
// =============================================================================================

/// ICMP type, code and the 4 bytes after the checksum of an error message.
type IcmpKind = (u8, u8, [u8; 4]);

/// The next-hop MTU (1400) an ICMP "fragmentation needed" or ICMPv6 "packet too big" carries.
const MTU_1400: [u8; 4] = [0, 0, 0x05, 0x78];

/// `loadBalancerSourceRanges` of the point 48 case, in one family.
struct SourceRanges {
    /// The range first programmed.
    range: Cidr,
    /// Inside it: its first address plus some, and its last but one.
    inside: [IpAddr; 2],
    /// Outside it: far away, just above and just below.
    outside: [IpAddr; 3],
    /// The range programmed next: it holds `outside[0]` and not `inside[0]`.
    next_range: Cidr,
    /// A pod outside every range.
    pod: IpAddr,
}

/// An address family as the cases see it: the modelled node and cluster, whose roles are the
/// same in both families (each implementation gives its addresses), and how the family's frames
/// differ (which follows from the family).
trait Family {
    /// This node: NodePort frontend and SNAT source.
    const NODE: IpAddr;
    /// The source of hairpinned traffic.
    const HAIRPIN: IpAddr;
    /// A client outside the cluster.
    const EXT_CLIENT: IpAddr;
    /// A pod of this node that is a client.
    const CLIENT: IpAddr;
    /// Pods of this node that are endpoints.
    const POD1: IpAddr;
    const POD2: IpAddr;
    const POD3: IpAddr;
    /// Endpoints on another node.
    const REMOTE1: IpAddr;
    const REMOTE2: IpAddr;
    /// A router between this node and the pods (source of ICMP errors that are no endpoint's).
    const ROUTER: IpAddr;
    /// ClusterIPs: TCP kubia, UDP dns, a second UDP Service (syslog), Services without
    /// endpoints (TCP, UDP), the NodePort Services ("web", "single") and the LoadBalancer.
    const VIP: IpAddr;
    const UDP_VIP: IpAddr;
    const SYSLOG_VIP: IpAddr;
    const EMPTY_VIP: IpAddr;
    const EMPTY_UDP_VIP: IpAddr;
    const NP_VIP: IpAddr;
    const SINGLE_VIP: IpAddr;
    const LB_VIP: IpAddr;
    /// LoadBalancer IPs: one restricted by source ranges, one every node announces (Maglev).
    const LB_IP: IpAddr;
    const MAGLEV_LB_IP: IpAddr;
    const SOURCE_RANGES: SourceRanges;

    /// Address `host` of pod subnet `subnet` (clients and endpoints in bulk).
    fn pod_address(subnet: u8, host: u8) -> IpAddr;

    /// Whether the family is IPv4: the frame details below follow from it.
    const IS_IPV4: bool = Self::NODE.is_ipv4();
    /// The IP header without options or extension headers.
    const IP_HEADER_LEN: usize = if Self::IS_IPV4 { IPV4_HEADER_LEN } else { IPV6_HEADER_LEN };
    const ETHERTYPE: u16 = if Self::IS_IPV4 { ETHERTYPE_IPV4 } else { ETHERTYPE_IPV6 };
    /// The bytes of a frame before anything NAT rewrites: Ethernet and the IP header up to its
    /// checksum (IPv4) or its addresses (IPv6).
    const UNTOUCHED_PREFIX: usize = ETH_HEADER_LEN + if Self::IS_IPV4 { 10 } else { 8 };
    /// ICMP or ICMPv6.
    const ICMP: u8 = if Self::IS_IPV4 { PROTO_ICMP } else { PROTO_ICMPV6 };
    /// ICMP type and code of "port unreachable".
    const PORT_UNREACHABLE: (u8, u8) =
        if Self::IS_IPV4 { (ICMP_DEST_UNREACH, ICMP_PORT_UNREACH) } else { (ICMPV6_DEST_UNREACH, ICMPV6_PORT_UNREACH) };
    /// ICMP type and code of the error that carries a path MTU ([`MTU_1400`]).
    const PACKET_TOO_BIG: (u8, u8) =
        if Self::IS_IPV4 { (ICMP_DEST_UNREACH, ICMP_FRAG_NEEDED) } else { (ICMPV6_PACKET_TOO_BIG, 0) };
    /// Errors a router on the path sends about a packet: too big, time exceeded, parameter
    /// problem (pointing at the protocol or next header field).
    const ROUTER_ERRORS: [IcmpKind; 3] = if Self::IS_IPV4 {
        [
            (Self::PACKET_TOO_BIG.0, Self::PACKET_TOO_BIG.1, MTU_1400),
            (ICMP_TIME_EXCEEDED, 0, [0; 4]),
            (ICMP_PARAMETER_PROBLEM, 0, [9, 0, 0, 0]),
        ]
    } else {
        [
            (Self::PACKET_TOO_BIG.0, Self::PACKET_TOO_BIG.1, MTU_1400),
            (ICMPV6_TIME_EXCEEDED, 0, [0; 4]),
            (ICMPV6_PARAMETER_PROBLEM, 0, [0, 0, 0, 6]),
        ]
    };
    /// The L4 bytes of the first fragment of a datagram cut for a 1500-byte MTU: what the IP
    /// header (and IPv6's fragment header) leave, down to a multiple of 8.
    const FIRST_FRAGMENT_LEN: usize = (1500 - Self::IP_HEADER_LEN - if Self::IS_IPV4 { 0 } else { 8 }) / 8 * 8;
}

/// IPv4: the addresses of [`lb_tests::addresses`] and their fixture-only neighbours.
struct V4;

const fn v4(a: u8, b: u8, c: u8, d: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(a, b, c, d))
}

/// Each role given as the constant of that name in [`lb_tests::addresses`].
macro_rules! roles_from_addresses {
    ($($role:ident),+ $(,)?) => {
        $(const $role: IpAddr = IpAddr::V4(addresses::$role);)+
    };
}

impl Family for V4 {
    roles_from_addresses!(NODE, HAIRPIN, EXT_CLIENT, CLIENT, POD1, POD2, POD3, REMOTE1, REMOTE2, ROUTER, VIP, UDP_VIP, LB_IP);
    const SYSLOG_VIP: IpAddr = v4(10, 96, 0, 21);
    const EMPTY_VIP: IpAddr = v4(10, 96, 0, 30);
    const EMPTY_UDP_VIP: IpAddr = v4(10, 96, 0, 31);
    const NP_VIP: IpAddr = v4(10, 96, 0, 40);
    const SINGLE_VIP: IpAddr = v4(10, 96, 0, 41);
    const LB_VIP: IpAddr = v4(10, 96, 0, 50);
    const MAGLEV_LB_IP: IpAddr = v4(198, 51, 100, 9);
    const SOURCE_RANGES: SourceRanges = SourceRanges {
        range: Cidr { addr: v4(10, 0, 0, 0), prefix: 8 },
        inside: [v4(10, 1, 2, 3), v4(10, 255, 255, 254)],
        outside: [v4(192, 168, 9, 9), v4(11, 0, 0, 1), v4(9, 255, 255, 255)],
        next_range: Cidr { addr: v4(192, 168, 0, 0), prefix: 16 },
        pod: v4(172, 16, 0, 5),
    };

    fn pod_address(subnet: u8, host: u8) -> IpAddr {
        v4(10, 244, subnet, host)
    }
}

/// IPv6: unique local addresses mirroring the IPv4 ones (`10.96.0.10` → `fd00:96::10`).
struct V6;

const fn v6(segments: [u16; 8]) -> IpAddr {
    let [a, b, c, d, e, f, g, h] = segments;
    IpAddr::V6(Ipv6Addr::new(a, b, c, d, e, f, g, h))
}

impl Family for V6 {
    const NODE: IpAddr = IpAddr::V6(addresses::NODE6);
    const HAIRPIN: IpAddr = IpAddr::V6(addresses::HAIRPIN6);
    const EXT_CLIENT: IpAddr = v6([0xfd00, 0x77, 0, 0, 0, 0, 0, 0x50]);
    const CLIENT: IpAddr = v6([0xfd00, 0x244, 0, 0, 0, 0, 0, 0x50]);
    const POD1: IpAddr = v6([0xfd00, 0x244, 0, 0, 0, 0, 0, 0x11]);
    const POD2: IpAddr = v6([0xfd00, 0x244, 0, 0, 0, 0, 0, 0x12]);
    const POD3: IpAddr = v6([0xfd00, 0x244, 0, 0, 0, 0, 0, 0x13]);
    const REMOTE1: IpAddr = v6([0xfd00, 0x244, 1, 0, 0, 0, 0, 0x21]);
    const REMOTE2: IpAddr = v6([0xfd00, 0x244, 1, 0, 0, 0, 0, 0x22]);
    const ROUTER: IpAddr = v6([0xfd00, 0x244, 0, 0, 0, 0, 0, 0x1]);
    const VIP: IpAddr = v6([0xfd00, 0x96, 0, 0, 0, 0, 0, 0x10]);
    const UDP_VIP: IpAddr = v6([0xfd00, 0x96, 0, 0, 0, 0, 0, 0x20]);
    const SYSLOG_VIP: IpAddr = v6([0xfd00, 0x96, 0, 0, 0, 0, 0, 0x21]);
    const EMPTY_VIP: IpAddr = v6([0xfd00, 0x96, 0, 0, 0, 0, 0, 0x30]);
    const EMPTY_UDP_VIP: IpAddr = v6([0xfd00, 0x96, 0, 0, 0, 0, 0, 0x31]);
    const NP_VIP: IpAddr = v6([0xfd00, 0x96, 0, 0, 0, 0, 0, 0x40]);
    const SINGLE_VIP: IpAddr = v6([0xfd00, 0x96, 0, 0, 0, 0, 0, 0x41]);
    const LB_VIP: IpAddr = v6([0xfd00, 0x96, 0, 0, 0, 0, 0, 0x50]);
    const LB_IP: IpAddr = v6([0x2001, 0xdb8, 0x100, 0, 0, 0, 0, 7]);
    const MAGLEV_LB_IP: IpAddr = v6([0x2001, 0xdb8, 0x100, 0, 0, 0, 0, 9]);
    const SOURCE_RANGES: SourceRanges = SourceRanges {
        range: Cidr { addr: v6([0xfd0a, 0, 0, 0, 0, 0, 0, 0]), prefix: 16 },
        inside: [v6([0xfd0a, 1, 2, 0, 0, 0, 0, 3]), v6([0xfd0a, 0xffff, 0xffff, 0xffff, 0xffff, 0xffff, 0xffff, 0xfffe])],
        outside: [
            v6([0x2001, 0xdb8, 9, 0, 0, 0, 0, 9]),
            v6([0xfd0b, 0, 0, 0, 0, 0, 0, 1]),
            v6([0xfd09, 0xffff, 0xffff, 0xffff, 0xffff, 0xffff, 0xffff, 0xffff]),
        ],
        next_range: Cidr { addr: v6([0x2001, 0xdb8, 0, 0, 0, 0, 0, 0]), prefix: 32 },
        pod: v6([0xfd00, 0x172, 0x16, 0, 0, 0, 0, 5]),
    };

    fn pod_address(subnet: u8, host: u8) -> IpAddr {
        v6([0xfd00, 0x244, subnet.into(), 0, 0, 0, 0, host.into()])
    }
}

// =============================================================================================
// The cluster
// =============================================================================================

/// The NodePort of the "web" Services.
const NODEPORT: u16 = 30080;

fn local(ip: IpAddr, port: u16) -> Endpoint {
    endpoint(ip, port, true)
}

fn remote(ip: IpAddr, port: u16) -> Endpoint {
    endpoint(ip, port, false)
}

/// A NodePort Service (ClusterIP `vip`:80 and NODE:`nodeport`) with externalTrafficPolicy
/// Cluster: every endpoint serves external traffic, which is source-NATed to the node.
fn nodeport_service<F: Family>(
    name: &str,
    vip: IpAddr,
    nodeport: u16,
    proto: Protocol,
    eps: Vec<Endpoint>,
) -> (ServicePortName, ServicePortState) {
    let (spn, mut sp) = clusterip_service(name, vip, 80, proto, eps);
    sp.frontends.push(Frontend { addr: F::NODE, port: nodeport, kind: FrontendKind::NodePort });
    (spn, sp)
}

/// kubia (TCP 80 → 8080 on three pods), a UDP Service (dns, 53 → 9000 on two) and a Service
/// without endpoints.
fn cluster<F: Family>() -> DesiredState {
    desired_state([
        clusterip_service(
            "kubia",
            F::VIP,
            80,
            Protocol::Tcp,
            vec![local(F::POD1, 8080), local(F::POD2, 8080), local(F::POD3, 8080)],
        ),
        clusterip_service("dns", F::UDP_VIP, 53, Protocol::Udp, vec![local(F::POD1, 9000), local(F::POD2, 9000)]),
        clusterip_service("empty", F::EMPTY_VIP, 80, Protocol::Tcp, vec![]),
    ])
}

/// kubia's endpoints.
fn backends<F: Family>() -> BTreeSet<IpAddr> {
    [F::POD1, F::POD2, F::POD3].into()
}

/// A SYN from the client to kubia.
fn syn<F: Family>(sport: u16) -> Vec<u8> {
    tcp_frame((F::CLIENT, sport), (F::VIP, 80), 1000, 0, TCP_SYN)
}

// =============================================================================================
// ClusterIPs: translation both ways, what is left alone, malformed traffic
// =============================================================================================

fn point_22_syn_to_clusterip_is_dnated_to_a_backend_with_valid_checksums<F: Family>(test: &str) {
    let Some(mut f) = Fixture::new(test) else { return };
    f.program(&cluster::<F>());
    let (verdict, out) = f.run(&syn::<F>(40000));
    assert_eq!(verdict, TC_ACT_OK, "a translated packet continues to the stack");
    let fl = parse_flow(&out);
    assert!(backends::<F>().contains(&fl.dst.ip()), "destination {} is not a kubia backend", fl.dst);
    assert_eq!(fl.dst.port(), 8080, "destination port is the endpoint's port");
    assert_eq!(fl.src, (F::CLIENT, 40000).into(), "source is preserved (point 31)");
    verify_checksums(&out).expect("checksums after DNAT");
    assert_eq!(out.len(), syn::<F>(40000).len());
    assert_eq!(
        &out[..F::UNTOUCHED_PREFIX],
        &syn::<F>(40000)[..F::UNTOUCHED_PREFIX],
        "Ethernet and the IP header's start unchanged"
    );
    assert_eq!(f.counter(CNT_VERDICT_DNAT), 1);
}

fn point_23_reply_from_backend_is_reverse_nated_to_the_clusterip<F: Family>(test: &str) {
    let Some(mut f) = Fixture::new(test) else { return };
    f.program(&cluster::<F>());
    let (_, out) = f.run(&syn::<F>(40001));
    let backend = parse_flow(&out).dst;
    let reply = tcp_frame(backend, (F::CLIENT, 40001), 1000, 1001, TCP_SYN | TCP_ACK);
    let (verdict, back) = f.run(&reply);
    assert_eq!(verdict, TC_ACT_OK);
    let fl = parse_flow(&back);
    assert_eq!(fl.src, (F::VIP, 80).into(), "the client must see the ClusterIP:port");
    assert_eq!(fl.dst, (F::CLIENT, 40001).into());
    verify_checksums(&back).expect("checksums after reverse NAT");
    assert_eq!(f.counter(CNT_VERDICT_REVNAT), 1);
}

fn point_23_every_packet_of_a_flow_keeps_its_backend<F: Family>(test: &str) {
    let Some(mut f) = Fixture::new(test) else { return };
    f.program(&cluster::<F>());
    let (_, first) = f.run(&syn::<F>(40002));
    let chosen = parse_flow(&first).dst;
    for _ in 0..30 {
        let (_, out) = f.run(&tcp_frame((F::CLIENT, 40002), (F::VIP, 80), 1001, 0, TCP_ACK));
        assert_eq!(parse_flow(&out).dst, chosen, "an established flow moved to another backend");
    }
}

/// Point 22: new flows are each DNATed (source kept, checksums valid) and reach every backend.
fn point_22_new_flows_reach_every_backend<F: Family>(test: &str) {
    let Some(mut f) = Fixture::new(test) else { return };
    f.program(&cluster::<F>());
    let mut seen = BTreeSet::new();
    for sport in 41000..41060 {
        let (verdict, out) = f.run(&syn::<F>(sport));
        assert_eq!(verdict, TC_ACT_OK);
        let fl = parse_flow(&out);
        assert!(backends::<F>().contains(&fl.dst.ip()), "destination {} is not a kubia backend", fl.dst);
        assert_eq!((fl.dst.port(), fl.src), (8080, (F::CLIENT, sport).into()));
        verify_checksums(&out).expect("checksums after DNAT");
        seen.insert(fl.dst.ip());
    }
    assert_eq!(seen, backends::<F>(), "60 new flows must reach all three backends");
    assert_eq!(f.counter(CNT_VERDICT_DNAT), 60);
}

fn udp_to_clusterip_is_translated_both_ways_with_valid_checksums<F: Family>(test: &str) {
    let Some(mut f) = Fixture::new(test) else { return };
    f.program(&cluster::<F>());
    let (verdict, out) = f.run(&udp_frame((F::CLIENT, 5353), (F::UDP_VIP, 53), b"query"));
    assert_eq!(verdict, TC_ACT_OK);
    let fl = parse_flow(&out);
    assert!([F::POD1, F::POD2].contains(&fl.dst.ip()));
    assert_eq!((fl.proto, fl.dst.port()), (PROTO_UDP, 9000));
    verify_checksums(&out).expect("UDP checksum after DNAT");
    let (verdict, back) = f.run(&udp_frame(fl.dst, (F::CLIENT, 5353), b"answer"));
    assert_eq!(verdict, TC_ACT_OK);
    assert_eq!(parse_flow(&back).src, (F::UDP_VIP, 53).into());
    verify_checksums(&back).expect("UDP checksum after reverse NAT");
}

/// A frontend port equal to its target port (as many Services have: 443 → 443, DNS 53 → 53):
/// only the addresses change, so the TC context updates the L4 checksum through the
/// pseudo-header alone; both directions, TCP and UDP, new flow and conntrack hit, stay valid.
fn frontend_port_equal_to_the_target_port_keeps_valid_checksums_both_ways<F: Family>(test: &str) {
    let Some(mut f) = Fixture::new(test) else { return };
    f.program(&desired_state([
        clusterip_service("web", F::VIP, 8443, Protocol::Tcp, vec![local(F::POD1, 8443), local(F::POD2, 8443)]),
        clusterip_service("dns", F::UDP_VIP, 53, Protocol::Udp, vec![local(F::POD1, 53), local(F::POD2, 53)]),
    ]));
    let client = (F::CLIENT, 40100);
    for (seq, flags) in [(1000, TCP_SYN), (1001, TCP_ACK)] {
        let (verdict, out) = f.run(&tcp_frame(client, (F::VIP, 8443), seq, 1, flags));
        assert_eq!(verdict, TC_ACT_OK);
        let fl = parse_flow(&out);
        assert!([F::POD1, F::POD2].contains(&fl.dst.ip()) && fl.dst.port() == 8443, "DNAT to a pod's 8443: {}", fl.dst);
        verify_checksums(&out).expect("TCP checksum after DNAT with the port kept");
        let (_, back) = f.run(&tcp_frame(fl.dst, client, 1, seq + 1, TCP_ACK));
        assert_eq!(parse_flow(&back).src, (F::VIP, 8443).into());
        verify_checksums(&back).expect("TCP checksum after reverse NAT with the port kept");
    }
    let (_, out) = f.run(&udp_frame((F::CLIENT, 5355), (F::UDP_VIP, 53), b"query"));
    let fl = parse_flow(&out);
    assert_eq!(fl.dst.port(), 53);
    verify_checksums(&out).expect("UDP checksum after DNAT with the port kept");
    let (_, back) = f.run(&udp_frame(fl.dst, (F::CLIENT, 5355), b"answer"));
    assert_eq!(parse_flow(&back).src, (F::UDP_VIP, 53).into());
    verify_checksums(&back).expect("UDP checksum after reverse NAT with the port kept");
    assert_eq!(f.counter(lb_common::CNT_CT_HIT), 1, "the ACK took the conntrack path");
}

/// A zero UDP checksum is "no checksum" in IPv4, and invalid in IPv6 (RFC 8200 §8.1) where the
/// datapath cannot make one up incrementally: in both it stays zero (an IPv6 receiver drops it
/// as it would have without translation); only addresses and ports change.
fn udp_without_checksum_stays_without_checksum<F: Family>(test: &str) {
    let Some(mut f) = Fixture::new(test) else { return };
    f.program(&cluster::<F>());
    let query = udp_frame_without_checksum((F::CLIENT, 5354), (F::UDP_VIP, 53), b"query");
    let (verdict, out) = f.run(&query);
    assert_eq!(verdict, TC_ACT_OK);
    let fl = parse_flow(&out);
    assert_eq!((fl.src, fl.dst.port()), ((F::CLIENT, 5354).into(), 9000));
    assert!([F::POD1, F::POD2].contains(&fl.dst.ip()));
    let udp = ETH_HEADER_LEN + F::IP_HEADER_LEN;
    assert_eq!(&out[udp + 6..udp + 8], &[0, 0], "a zero UDP checksum means none and must stay zero");
    assert_eq!(&out[..F::UNTOUCHED_PREFIX], &query[..F::UNTOUCHED_PREFIX]);
    assert_eq!(&out[udp + 4..], &query[udp + 4..], "length, checksum and payload unchanged");
    verify_ip_header_checksum(&out).expect("IPv4 header checksum");
}

fn traffic_that_is_not_for_a_service_passes_untouched<F: Family>(test: &str) {
    let Some(mut f) = Fixture::new(test) else { return };
    f.program(&cluster::<F>());
    let frames = [
        // pod to pod
        tcp_frame((F::CLIENT, 40004), (F::POD1, 8080), 1000, 0, TCP_SYN),
        // the ClusterIP on a port the service does not define
        tcp_frame((F::CLIENT, 40005), (F::VIP, 81), 1000, 0, TCP_SYN),
        // UDP to a TCP service port
        udp_frame((F::CLIENT, 40006), (F::VIP, 80), b"x"),
        // a reply-looking packet without a flow
        tcp_frame((F::POD1, 8080), (F::CLIENT, 40007), 1000, 0, TCP_SYN | TCP_ACK),
    ];
    for frame in &frames {
        let (verdict, out) = f.run(frame);
        assert_eq!(verdict, TC_ACT_OK);
        assert_eq!(&out, frame, "non-service traffic must be byte-for-byte unchanged");
    }
    assert_eq!(f.counter(CNT_VERDICT_PASS), frames.len() as u64);
    assert_eq!(f.counter(CNT_PASS_NOT_IP), 0);
    // A non-IP frame (ARP).
    let mut arp = vec![0xff; 6];
    arp.extend_from_slice(&[2, 0, 0, 0, 0, 1, 0x08, 0x06]);
    arp.extend_from_slice(&[0u8; 28]);
    let (verdict, out) = f.run(&arp);
    assert_eq!((verdict, &out), (TC_ACT_OK, &arp));
    assert_eq!(f.counter(CNT_PASS_NOT_IP), 1);
}

fn truncated_l4_header_to_a_service_address_is_dropped<F: Family>(test: &str) {
    let Some(mut f) = Fixture::new(test) else { return };
    f.program(&cluster::<F>());
    let cut = truncated_frame(&syn::<F>(40011), 8); // 8 of 20 TCP header bytes
    let (verdict, _) = f.run(&cut);
    assert_eq!(verdict, TC_ACT_SHOT, "untranslatable traffic to a VIP must not leak");
    assert_eq!(f.counter(CNT_DROP_BAD_L4), 1);
    // The same truncation to an address that is no service passes untouched.
    let other = truncated_frame(&tcp_frame((F::CLIENT, 40012), (F::POD1, 80), 1000, 0, TCP_SYN), 8);
    let (verdict, out) = f.run(&other);
    assert_eq!((verdict, out), (TC_ACT_OK, other));
    assert_eq!(f.counter(CNT_DROP_BAD_L4), 1);
}

// =============================================================================================
// Point 62: fragments
// =============================================================================================

/// Point 62 (large UDP datagrams through the VIP): a fragmented datagram is translated as a
/// whole. The first fragment (offset 0, more fragments) selects the backend and has its ports
/// rewritten; later fragments (no L4 header) get the same destination and nothing else changes
/// but the IPv4 header checksum; reassembled, the datagram carries a valid UDP checksum for its
/// new addresses. The same holds for a fragmented reply. A later fragment whose first fragment
/// was never seen is dropped if it is addressed to a service address, and passed untouched
/// otherwise.
fn point_62_later_fragments_follow_their_first_fragment_and_orphans_to_a_service_are_dropped<F: Family>(test: &str) {
    let Some(mut f) = Fixture::new(test) else { return };
    f.program(&cluster::<F>());
    let client = SocketAddr::new(F::CLIENT, 5355);
    let payload: Vec<u8> = (0..100u8).collect();
    let dgram = udp_datagram(client, (F::UDP_VIP, 53), &payload); // 108 bytes
    let to_dns = |id, offset, more, data: &[u8]| fragment_frame(F::CLIENT, F::UDP_VIP, PROTO_UDP, id, offset, more, data);
    let id = 0x5151;
    let first = to_dns(id, 0, true, &dgram[..64]);
    let middle = to_dns(id, 64, true, &dgram[64..88]);
    let last = to_dns(id, 88, false, &dgram[88..]);

    let (verdict, out_first) = f.run(&first);
    assert_eq!(verdict, TC_ACT_OK, "the first fragment is translated like any packet");
    let h = parse_ip_header(&out_first);
    let backend = h.dst;
    assert!([F::POD1, F::POD2].contains(&backend), "first fragment sent to {backend}, not a dns backend");
    assert_eq!(&out_first[..F::UNTOUCHED_PREFIX], &first[..F::UNTOUCHED_PREFIX], "only addresses and ports change");
    assert_eq!(
        (h.src, h.fragment, h.total_len),
        (F::CLIENT, parse_ip_header(&first).fragment, parse_ip_header(&first).total_len)
    );
    verify_ip_header_checksum(&out_first).expect("IPv4 header checksum of the first fragment");
    let udp = parse_l4_bytes(&out_first);
    assert_eq!(u16::from_be_bytes([udp[2], udp[3]]), 9000, "the first fragment's destination port is the endpoint's");
    assert_eq!(u16::from_be_bytes([udp[0], udp[1]]), 5355);

    let mut reassembled = udp.to_vec();
    for later in [&middle, &last] {
        let (verdict, out) = f.run(later);
        assert_eq!(verdict, TC_ACT_OK, "a later fragment of a known datagram is translated");
        verify_ip_header_checksum(&out).expect("IPv4 header checksum of a later fragment");
        assert_eq!(
            out,
            frame_with_destination(later, backend),
            "a later fragment gets the first fragment's destination (IP header and IPv4 checksum only)"
        );
        reassembled.extend_from_slice(parse_l4_bytes(&out));
    }
    assert_eq!(reassembled.len(), dgram.len());
    verify_udp_datagram(F::CLIENT, backend, &reassembled).expect("the reassembled datagram's UDP checksum after DNAT");
    assert_eq!(&reassembled[8..], &payload[..], "payload untouched");
    assert_eq!(f.counter(CNT_FRAG_FOLLOWED), 2);
    assert_eq!(f.counter(CNT_VERDICT_DNAT), 3);
    assert_eq!(f.counter(CNT_NEW_FLOWS), 1, "the datagram is one flow");

    // The backend's fragmented answer is reverse-translated fragment by fragment.
    let answer = udp_datagram((backend, 9000), client, &payload);
    let a_first = fragment_frame(backend, F::CLIENT, PROTO_UDP, 0x6262, 0, true, &answer[..64]);
    let a_last = fragment_frame(backend, F::CLIENT, PROTO_UDP, 0x6262, 64, false, &answer[64..]);
    let (verdict, out) = f.run(&a_first);
    assert_eq!(verdict, TC_ACT_OK);
    assert_eq!(parse_flow(&out).src, (F::UDP_VIP, 53).into(), "the first reply fragment comes from the ClusterIP:port");
    let mut reply = parse_l4_bytes(&out).to_vec();
    let (verdict, out) = f.run(&a_last);
    assert_eq!(verdict, TC_ACT_OK);
    assert_eq!(out, frame_with_source(&a_last, F::UDP_VIP), "a later reply fragment gets the ClusterIP as source");
    reply.extend_from_slice(parse_l4_bytes(&out));
    verify_udp_datagram(F::UDP_VIP, F::CLIENT, &reply).expect("the reassembled reply's UDP checksum after reverse NAT");
    assert_eq!(f.counter(CNT_FRAG_FOLLOWED), 3);
    assert_eq!(f.counter(CNT_VERDICT_REVNAT), 2);

    // A later fragment whose first fragment was never seen: dropped when addressed to a service
    // address (even on a port no service defines), passed untouched otherwise.
    assert_eq!(f.counter(CNT_DROP_FRAGMENT), 0);
    let (verdict, _) = f.run(&to_dns(0x7373, 64, false, &dgram[64..]));
    assert_eq!(verdict, TC_ACT_SHOT, "an untranslatable fragment to a service address must not leak");
    assert_eq!(f.counter(CNT_DROP_FRAGMENT), 1);
    let orphan_tcp = fragment_frame(F::CLIENT, F::VIP, PROTO_TCP, 0x7374, 64, false, &[0u8; 32]);
    let (verdict, _) = f.run(&orphan_tcp);
    assert_eq!(verdict, TC_ACT_SHOT);
    assert_eq!(f.counter(CNT_DROP_FRAGMENT), 2);
    let elsewhere = fragment_frame(F::CLIENT, F::POD1, PROTO_UDP, 0x7375, 64, false, &dgram[64..]);
    let (verdict, out) = f.run(&elsewhere);
    assert_eq!((verdict, out), (TC_ACT_OK, elsewhere), "fragments to other addresses pass untouched");
    assert_eq!(f.counter(CNT_DROP_FRAGMENT), 2);
    assert_eq!(f.counter(CNT_FRAG_FOLLOWED), 3);
}

/// Sends `datagram` (UDP) `src → dst` to XDP in fragments of [`Family::FIRST_FRAGMENT_LEN`]
/// bytes; each must pass with a valid IPv4 header checksum, translated to `translated` (source,
/// destination), its place in the datagram unchanged. Each fragment sent, and what came out.
fn fragments_over_xdp<F: Family>(
    f: &Fixture,
    (src, dst): (IpAddr, IpAddr),
    id: u32,
    datagram: &[u8],
    translated: (IpAddr, IpAddr),
) -> Vec<(Vec<u8>, Vec<u8>)> {
    let pieces = datagram.chunks(F::FIRST_FRAGMENT_LEN).enumerate();
    pieces
        .map(|(k, piece)| {
            let offset = k * F::FIRST_FRAGMENT_LEN;
            let input = fragment_frame(src, dst, PROTO_UDP, id, offset, offset + piece.len() < datagram.len(), piece);
            let (verdict, out) = f.run_xdp(&input);
            assert_eq!(verdict, XDP_PASS, "fragment {k} of {src} → {dst}");
            verify_ip_header_checksum(&out).expect("IPv4 header checksum");
            let h = parse_ip_header(&out);
            assert_eq!((h.src, h.dst), translated, "fragment {k} of {src} → {dst}");
            assert_eq!(h.fragment, parse_ip_header(&input).fragment, "fragment {k}: its place in the datagram is unchanged");
            (input, out)
        })
        .collect()
}

/// The L4 bytes of the frames that came out of [`fragments_over_xdp`], reassembled.
fn reassembled(fragments: &[(Vec<u8>, Vec<u8>)]) -> Vec<u8> {
    fragments.iter().flat_map(|(_, out)| parse_l4_bytes(out).to_vec()).collect()
}

/// Point 62 over XDP with SNAT: every fragment of a datagram to a UDP NodePort gets the same
/// DNAT and SNAT (later fragments in the IP header only), and so does the fragmented reply.
fn point_62_fragmented_datagram_to_a_udp_nodeport_is_translated_over_xdp<F: Family>(test: &str) {
    let Some(mut f) = Fixture::node(test) else { return };
    f.program(&desired_state([nodeport_service::<F>("dns", F::UDP_VIP, 30053, Protocol::Udp, vec![remote(F::REMOTE1, 9000)])]));
    let client = SocketAddr::new(F::EXT_CLIENT, 5362);
    let payload = vec![0x5a; 2000 - 8];
    let dgram = udp_datagram(client, (F::NODE, 30053), &payload);
    let sent = fragments_over_xdp::<F>(&f, (F::EXT_CLIENT, F::NODE), 0x4444, &dgram, (F::NODE, F::REMOTE1));
    assert_eq!(sent.len(), 2);
    let first = parse_l4_bytes(&sent[0].1);
    let snat = u16::from_be_bytes([first[0], first[1]]);
    assert!(SNAT_PORTS.contains(&snat));
    assert_eq!(u16::from_be_bytes([first[2], first[3]]), 9000);
    let (later, out) = &sent[1];
    assert_eq!(
        out,
        &frame_with_source(&frame_with_destination(later, F::REMOTE1), F::NODE),
        "a later fragment changes in its IP header only"
    );
    verify_udp_datagram(F::NODE, F::REMOTE1, &reassembled(&sent)).expect("UDP checksum of the reassembled datagram");

    let answer = udp_datagram((F::REMOTE1, 9000), (F::NODE, snat), &payload);
    let reply = reassembled(&fragments_over_xdp::<F>(&f, (F::REMOTE1, F::NODE), 0x4545, &answer, (F::NODE, F::EXT_CLIENT)));
    assert_eq!(u16::from_be_bytes([reply[0], reply[1]]), 30053);
    assert_eq!(u16::from_be_bytes([reply[2], reply[3]]), client.port());
    verify_udp_datagram(F::NODE, F::EXT_CLIENT, &reply).expect("UDP checksum of the reassembled reply");
    assert_eq!(f.counter(CNT_FRAG_FOLLOWED), 2);
}

// =============================================================================================
// Point 37: Services without endpoints reject
// =============================================================================================

/// kubia, dns and empty, plus a UDP service without endpoints.
fn cluster_with_empty_udp<F: Family>() -> DesiredState {
    let mut d = cluster::<F>();
    d.services.extend(
        [clusterip_service("empty-dns", F::EMPTY_UDP_VIP, 53, Protocol::Udp, vec![])]
            .into_iter()
            .map(|(k, v)| (k, std::sync::Arc::new(v))),
    );
    d
}

/// Checks the Ethernet header and the IP header of a reject `frontend` → `client` carrying
/// `l4_len` bytes of `proto`.
fn assert_reject_headers<F: Family>(out: &[u8], client: IpAddr, frontend: IpAddr, proto: u8, l4_len: usize) {
    assert_eq!(out.len(), ETH_HEADER_LEN + F::IP_HEADER_LEN + l4_len, "no options, no extension headers, no data");
    assert_eq!(&out[0..6], &MAC_SRC, "sent back to the client's MAC");
    assert_eq!(&out[6..12], &MAC_DST, "from the MAC the packet was sent to");
    assert_eq!(out[12..14], F::ETHERTYPE.to_be_bytes());
    let h = parse_ip_header(out);
    assert_eq!((h.src, h.dst, h.proto, h.header_len), (frontend, client, proto, F::IP_HEADER_LEN));
    assert_eq!((h.total_len, h.ttl), (F::IP_HEADER_LEN + l4_len, 64), "the length and TTL (hop limit) reject.rs writes");
}

/// Checks a TCP RST|ACK answering a SYN `client → frontend` with sequence number `seq`.
fn assert_rst_answers_syn<F: Family>(out: &[u8], client: SocketAddr, frontend: SocketAddr, seq: u32) {
    assert_reject_headers::<F>(out, client.ip(), frontend.ip(), PROTO_TCP, 20);
    let t = parse_tcp(out);
    assert_eq!((t.sport, t.dport), (frontend.port(), client.port()), "the RST comes from the frontend to the client's port");
    assert_eq!(t.flags, TCP_RST | TCP_ACK, "RST|ACK");
    assert_eq!(t.ack, seq.wrapping_add(1), "it acknowledges the SYN (RFC 793 reset generation)");
    assert_eq!((t.seq, t.header_len), (0, 20));
    verify_checksums(out).expect("RST checksums");
}

/// Checks an ICMP port unreachable answering `orig` (a UDP frame `client → frontend`).
fn assert_port_unreachable_answers<F: Family>(out: &[u8], orig: &[u8], client: IpAddr, frontend: IpAddr) {
    let quote_len = F::IP_HEADER_LEN + 8;
    assert_reject_headers::<F>(out, client, frontend, F::ICMP, 8 + quote_len);
    let i = parse_icmp_error(out);
    assert_eq!((i.ty, i.code, i.rest), (F::PORT_UNREACHABLE.0, F::PORT_UNREACHABLE.1, [0; 4]), "port unreachable");
    assert_eq!(&out[i.quoted_off..], &orig[ETH_HEADER_LEN..ETH_HEADER_LEN + quote_len], "quotes the IP header and 8 bytes");
    verify_checksums(out).expect("ICMP checksums");
}

/// Point 37: a service without endpoints rejects new connections: a TCP SYN gets a RST|ACK from
/// the ClusterIP:port, a UDP datagram an ICMP port unreachable, both sent back out of the
/// interface the packet came in on (TC_ACT_REDIRECT).
fn point_37_service_without_endpoints_rejects_tcp_with_rst_and_udp_with_icmp_port_unreachable<F: Family>(test: &str) {
    let Some(mut f) = Fixture::new(test) else { return };
    f.program(&cluster_with_empty_udp::<F>());
    let seq = 0x1234_5678;
    let (client, frontend) = (SocketAddr::new(F::CLIENT, 40013), SocketAddr::new(F::EMPTY_VIP, 80));
    let (verdict, out) = f.run(&tcp_frame(client, frontend, seq, 0, TCP_SYN));
    assert_eq!(verdict, TC_ACT_REDIRECT, "the RST goes back out of the interface");
    assert_rst_answers_syn::<F>(&out, client, frontend, seq);
    assert_eq!((f.counter(CNT_REJECT_TCP), f.counter(CNT_VERDICT_REJECT)), (1, 1));

    let query = udp_frame((F::CLIENT, 5357), (F::EMPTY_UDP_VIP, 53), b"query");
    let (verdict, out) = f.run(&query);
    assert_eq!(verdict, TC_ACT_REDIRECT);
    assert_port_unreachable_answers::<F>(&out, &query, F::CLIENT, F::EMPTY_UDP_VIP);
    assert_eq!(f.counter(CNT_REJECT_ICMP), 1);
    assert_eq!(f.counter(CNT_VERDICT_REJECT), 2);
    assert_eq!(f.counter(CNT_VERDICT_DNAT), 0, "never forwarded");
    assert_eq!(f.counter(CNT_DROP_NO_BACKEND), 0);
}

/// Point 37, RFC 793 reset generation for segments other than a bare SYN: a SYN carrying data
/// is acknowledged with its data; a segment with ACK is answered with seq = its ack and no ACK;
/// a FIN counts as one byte.
fn point_37_resets_for_other_segments_follow_rfc_793<F: Family>(test: &str) {
    let Some(mut f) = Fixture::new(test) else { return };
    f.program(&cluster::<F>());
    let client = SocketAddr::new(F::CLIENT, 40060);
    let reset = |seq, ack, flags, data: &[u8]| {
        let seg = tcp_segment(client, (F::EMPTY_VIP, 80), seq, ack, flags, data);
        let (verdict, out) = f.run(&ip_frame(F::CLIENT, F::EMPTY_VIP, PROTO_TCP, &seg));
        assert_eq!(verdict, TC_ACT_REDIRECT);
        assert_eq!(out.len(), ETH_HEADER_LEN + F::IP_HEADER_LEN + 20, "the answer carries no data");
        verify_checksums(&out).expect("RST checksums");
        parse_tcp(&out)
    };
    // SYN with 10 bytes of data (TCP Fast Open): ack = seq + 1 + 10.
    let t = reset(500, 0, TCP_SYN, &[1; 10]);
    assert_eq!((t.seq, t.ack, t.flags), (0, 511, TCP_RST | TCP_ACK));
    // A data segment with ACK (no flow known): RST with seq = its ack, no ACK flag.
    let t = reset(600, 0xabcd_0001, TCP_ACK, &[2; 33]);
    assert_eq!((t.sport, t.dport), (80, client.port()));
    assert_eq!((t.seq, t.ack, t.flags), (0xabcd_0001, 0, TCP_RST));
    // A FIN with 5 bytes of data and no ACK: ack = seq + 5 + 1.
    let t = reset(900, 0, TCP_FIN, &[3; 5]);
    assert_eq!((t.seq, t.ack, t.flags), (0, 906, TCP_RST | TCP_ACK));
    assert_eq!(f.counter(CNT_REJECT_TCP), 3);
}

/// Point 37 must never answer a reset with a reset (RFC 793: "an incoming segment containing a
/// RST is discarded"; Linux's REJECT --reject-with tcp-reset does not answer RSTs either).
fn point_37_a_reset_to_a_service_without_endpoints_is_not_answered<F: Family>(test: &str) {
    let Some(mut f) = Fixture::new(test) else { return };
    f.program(&cluster::<F>());
    for (i, flags) in [TCP_RST, TCP_RST | TCP_ACK].into_iter().enumerate() {
        let (verdict, out) = f.run(&tcp_frame((F::CLIENT, 40070 + i as u16), (F::EMPTY_VIP, 80), 700, 800, flags));
        assert_ne!(verdict, TC_ACT_REDIRECT, "a RST (flags {flags:#x}) was answered: {out:02x?}");
        assert_eq!(verdict, TC_ACT_SHOT, "a RST to a service without endpoints is dropped");
    }
    assert_eq!(f.counter(CNT_REJECT_TCP), 0);
    assert_eq!(f.counter(CNT_VERDICT_DNAT), 0);
}

/// Point 37 on external frontends: a NodePort without endpoints rejects over XDP (XDP_TX).
fn point_37_nodeport_without_endpoints_rejects_over_xdp<F: Family>(test: &str) {
    let Some(mut f) = Fixture::node(test) else { return };
    f.program(&desired_state([
        nodeport_service::<F>("empty-web", F::NP_VIP, NODEPORT, Protocol::Tcp, vec![]),
        nodeport_service::<F>("empty-dns", F::EMPTY_UDP_VIP, 30053, Protocol::Udp, vec![]),
    ]));
    let seq = 0xffff_ffff; // the acknowledgement wraps
    let (client, frontend) = (SocketAddr::new(F::EXT_CLIENT, 40000), SocketAddr::new(F::NODE, NODEPORT));
    let (verdict, out) = f.run_xdp(&tcp_frame(client, frontend, seq, 0, TCP_SYN));
    assert_eq!(verdict, XDP_TX, "the RST is sent back out of the interface");
    assert_rst_answers_syn::<F>(&out, client, frontend, seq);
    let query = udp_frame((F::EXT_CLIENT, 5357), (F::NODE, 30053), b"query");
    let (verdict, out) = f.run_xdp(&query);
    assert_eq!(verdict, XDP_TX);
    assert_port_unreachable_answers::<F>(&out, &query, F::EXT_CLIENT, F::NODE);
    assert_eq!((f.counter(CNT_REJECT_TCP), f.counter(CNT_REJECT_ICMP), f.counter(CNT_VERDICT_REJECT)), (1, 1, 2));
    assert_eq!(f.counter(CNT_SNAT), 0);
}

// =============================================================================================
// Points 21, 23, 57: flows keep (or leave) their backends
// =============================================================================================

/// Runs `query` (a datagram to dns): the dns endpoint it reached, and dns's other endpoint.
fn dns_backend_reached<F: Family>(f: &Fixture, query: &[u8]) -> (IpAddr, IpAddr) {
    let reached = parse_flow(&f.run(query).1).dst.ip();
    (reached, if reached == F::POD1 { F::POD2 } else { F::POD1 })
}

fn point_57_udp_flow_moves_when_its_backend_is_removed_and_tcp_flow_stays<F: Family>(test: &str) {
    let Some(mut f) = Fixture::new(test) else { return };
    f.program(&cluster::<F>());
    let query = udp_frame((F::CLIENT, 5356), (F::UDP_VIP, 53), b"q");
    let (udp_backend, other_dns) = dns_backend_reached::<F>(&f, &query);
    // A TCP flow whose backend is not dns's other backend, so that dns keeps one endpoint after
    // the removal (with none left the UDP flow would be rejected, not moved).
    let (tcp_sport, tcp_backend_at) = (40014..40114)
        .map(|sport| (sport, parse_flow(&f.run(&syn::<F>(sport)).1).dst))
        .find(|(_, b)| b.ip() != other_dns)
        .expect("100 new flows all went to one backend");
    let tcp_backend = tcp_backend_at.ip();

    // Remove both backends from both services.
    let mut d = cluster::<F>();
    for sp in d.services.values_mut() {
        let sp = std::sync::Arc::make_mut(sp);
        let gone = |e: &Endpoint| e.addr == udp_backend || e.addr == tcp_backend;
        for set in [&mut sp.internal.endpoints, &mut sp.external.endpoints, &mut sp.cluster, &mut sp.serving] {
            *set = set.iter().filter(|e| !gone(e)).cloned().collect();
        }
    }
    f.program(&d);

    let (verdict, out) = f.run(&query);
    assert_eq!(verdict, TC_ACT_OK);
    let moved = parse_flow(&out).dst;
    assert_ne!(moved.ip(), udp_backend, "the UDP flow must leave its removed backend");
    assert_eq!(moved, (other_dns, 9000).into(), "the UDP flow moves to dns's remaining backend");
    verify_checksums(&out).expect("UDP checksum after re-selection");
    assert_eq!(f.counter(CNT_CT_RESELECT), 1);
    let (verdict, out) = f.run(&tcp_frame((F::CLIENT, tcp_sport), (F::VIP, 80), 1001, 0, TCP_ACK));
    assert_eq!(verdict, TC_ACT_OK);
    assert_eq!(parse_flow(&out).dst.ip(), tcp_backend, "established TCP keeps its backend, as with kube-proxy's conntrack");
    // And its replies are still translated: a removed backend's address stays in the address
    // filter while a conntrack entry may name it.
    let (verdict, back) = f.run(&tcp_frame(tcp_backend_at, (F::CLIENT, tcp_sport), 5000, 1002, TCP_ACK));
    assert_eq!(verdict, TC_ACT_OK);
    assert_eq!(parse_flow(&back).src, (F::VIP, 80).into(), "the reply of the removed backend must still come from the ClusterIP");
    verify_checksums(&back).unwrap();
    // New TCP connections never go to a removed backend (point 21).
    for i in 0..30 {
        let dst = parse_flow(&f.run(&syn::<F>(42000 + i)).1).dst.ip();
        assert!(dst != tcp_backend && dst != udp_backend, "new connection sent to removed backend {dst}");
    }
}

/// Point 57, per Service: a UDP flow leaves a backend that left *its* Service, although the pod
/// still serves another Service (its backend entry stays in the maps).
fn point_57_udp_flow_leaves_a_backend_removed_from_its_service_while_another_keeps_it<F: Family>(test: &str) {
    let Some(mut f) = Fixture::new(test) else { return };
    let syslog = |eps| clusterip_service("syslog", F::SYSLOG_VIP, 514, Protocol::Udp, eps);
    let mut d = cluster::<F>();
    d.services
        .extend([syslog(vec![local(F::POD1, 9000), local(F::POD2, 9000)])].into_iter().map(|(k, v)| (k, std::sync::Arc::new(v))));
    f.program(&d);
    let query = udp_frame((F::CLIENT, 5360), (F::UDP_VIP, 53), b"q");
    let (old, new) = dns_backend_reached::<F>(&f, &query);
    // A blue/green switch: dns now selects only `new`; syslog keeps both pods.
    let mut d = cluster::<F>();
    d.services.extend(
        [
            clusterip_service("dns", F::UDP_VIP, 53, Protocol::Udp, vec![local(new, 9000)]),
            syslog(vec![local(F::POD1, 9000), local(F::POD2, 9000)]),
        ]
        .into_iter()
        .map(|(k, v)| (k, std::sync::Arc::new(v))),
    );
    f.program(&d);
    assert!(f.dp.state().backends.values().any(|b| b.addr == addr16(old)), "the old pod is still a backend");
    let (verdict, out) = f.run(&query);
    assert_eq!(verdict, TC_ACT_OK);
    assert_eq!(parse_flow(&out).dst, (new, 9000).into(), "the same client port reaches the new endpoint");
    verify_checksums(&out).unwrap();
    assert_eq!(f.counter(CNT_CT_RESELECT), 1);
    // The flow now stays on `new`.
    for _ in 0..5 {
        assert_eq!(parse_flow(&f.run(&query).1).dst, (new, 9000).into());
    }
}

/// Point 57 keeps what kube-proxy keeps: a terminating endpoint that still serves is no longer
/// selected by new flows (point 19), but an existing UDP flow stays on it.
fn point_57_udp_flow_stays_on_a_terminating_backend_that_still_serves<F: Family>(test: &str) {
    let Some(mut f) = Fixture::new(test) else { return };
    f.program(&cluster::<F>());
    let query = udp_frame((F::CLIENT, 5361), (F::UDP_VIP, 53), b"q");
    let (old, other) = dns_backend_reached::<F>(&f, &query);
    let mut d = cluster::<F>();
    let dns = std::sync::Arc::make_mut(d.services.iter_mut().find(|(n, _)| n.name == "dns").unwrap().1);
    for set in [&mut dns.internal.endpoints, &mut dns.external.endpoints, &mut dns.cluster] {
        *set = set.iter().filter(|e| e.addr == other).cloned().collect();
    }
    dns.serving = dns.serving.iter().map(|e| Endpoint { terminating: e.addr == old, ..e.clone() }).collect();
    f.program(&d);
    for _ in 0..5 {
        assert_eq!(parse_flow(&f.run(&query).1).dst, (old, 9000).into(), "a flow stays on a serving endpoint");
    }
    assert_eq!(f.counter(CNT_CT_RESELECT), 0);
    for sport in 6000..6020 {
        let out = f.run(&udp_frame((F::CLIENT, sport), (F::UDP_VIP, 53), b"q")).1;
        assert_eq!(parse_flow(&out).dst, (other, 9000).into(), "new flows select only ready endpoints");
    }
}

/// Point 23: a connection whose reply entry was lost (LRU eviction under pressure) before the
/// handshake completed is healed by the client's retransmitted SYN; without it the SYN-ACK
/// would leave untranslated and `connect()` would time out. Only a two-entry flow has a reply
/// entry of its own to lose: here the client's port is already in a live flow to another
/// frontend, so the flow to kubia cannot take the one entry keyed by the client.
fn point_23_a_retransmitted_syn_restores_a_lost_reply_entry<F: Family>(test: &str) {
    let Some(mut f) = Fixture::new(test) else { return };
    let mut d = cluster::<F>();
    d.services.extend(
        // On another target port than kubia's: the two flows' replies never share a 5-tuple.
        [clusterip_service("kubia-admin", F::UDP_VIP, 8000, Protocol::Tcp, vec![local(F::POD1, 9090)])]
            .into_iter()
            .map(|(k, v)| (k, std::sync::Arc::new(v))),
    );
    f.program(&d);
    let mut ct = common::ConntrackPins::open(f.dp.pin_path());
    let client_key = lb_common::CtKey::client(addr16(F::CLIENT), 40300u16.to_be(), PROTO_TCP);
    let first = f.run(&tcp_frame((F::CLIENT, 40300), (F::UDP_VIP, 8000), 1000, 0, TCP_SYN)).1;
    assert_eq!(parse_flow(&first).dst, (F::POD1, 9090).into());
    assert!(ct.raw(&client_key).is_some(), "a flow without SNAT takes one entry, keyed by its client");
    let backend = parse_flow(&f.run(&syn::<F>(40300)).1).dst;
    let reply_key = conntrack_key(backend, (F::CLIENT, 40300), PROTO_TCP, lb_common::CT_DIR_REPLY);
    assert_eq!(
        ct.raw(&client_key).map(|v| v.snat_addr),
        Some(addr16(F::UDP_VIP)),
        "the client's entry still belongs to its first flow"
    );
    assert!(ct.remove(&reply_key), "the second flow of the client's port took a reply entry of its own");
    // The retransmission: translated again, and the reply entry is back.
    let (verdict, out) = f.run(&syn::<F>(40300));
    assert_eq!(verdict, TC_ACT_OK);
    let again = parse_flow(&out).dst;
    assert!(backends::<F>().contains(&again.ip()) && again.port() == 8080);
    verify_checksums(&out).unwrap();
    assert_eq!(f.counter(CNT_CT_RESELECT), 1, "the orphaned entry was replaced");
    let (verdict, back) = f.run(&tcp_frame(again, (F::CLIENT, 40300), 1000, 1001, TCP_SYN | TCP_ACK));
    assert_eq!(verdict, TC_ACT_OK);
    assert_eq!(parse_flow(&back).src, (F::VIP, 80).into(), "the SYN-ACK is reverse-NATed to the ClusterIP");
    verify_checksums(&back).unwrap();
    // A retransmitted SYN with both entries present keeps its backend and is no re-selection.
    assert_eq!(parse_flow(&f.run(&syn::<F>(40300)).1).dst, again);
    assert_eq!(f.counter(CNT_CT_RESELECT), 1);
    // The first flow kept its one entry, and its replies still come from its own frontend.
    let (_, back) = f.run(&tcp_frame((F::POD1, 9090), (F::CLIENT, 40300), 1, 1001, TCP_SYN | TCP_ACK));
    assert_eq!(parse_flow(&back).src, (F::UDP_VIP, 8000).into(), "the first flow's reply comes from its frontend");
}

fn stats_of(v: &[(u32, FlowCounters)], id: u32) -> FlowCounters {
    v.iter().find(|(k, _)| *k == id).map(|(_, s)| *s).unwrap_or_default()
}

/// Point 23 (a flow is one connection to one backend), as the operator sees it: every packet of
/// a flow, both directions, counts against its service and its backend (its IP length: header
/// and TCP header here), and the flow counts once as a new connection.
fn point_23_per_service_and_per_backend_counters_count_every_packet_of_a_flow<F: Family>(test: &str) {
    let Some(mut f) = Fixture::new(test) else { return };
    f.program(&cluster::<F>());
    let client = SocketAddr::new(F::CLIENT, 40040);
    let (_, out) = f.run(&syn::<F>(client.port()));
    let backend = parse_flow(&out).dst;
    for _ in 0..4 {
        f.run(&tcp_frame(client, (F::VIP, 80), 1001, 0, TCP_ACK));
    }
    for _ in 0..3 {
        let (_, back) = f.run(&tcp_frame(backend, client, 1, 1001, TCP_ACK));
        assert_eq!(parse_flow(&back).src, (F::VIP, 80).into());
    }
    let pins = PinnedMaps::open(f.dp.pin_path()).expect("open pins");
    let svc = f.svc_id(F::VIP, 80, PROTO_TCP);
    let be = f.backend_id(backend.ip(), 8080, PROTO_TCP);
    let expected = FlowCounters { packets: 8, bytes: 8 * (F::IP_HEADER_LEN as u64 + 20), new_flows: 1 };
    assert_eq!(stats_of(&pins.service_counters().expect("service counters"), svc), expected);
    assert_eq!(stats_of(&pins.backend_counters().expect("backend counters"), be), expected);
    for other in [F::POD1, F::POD2, F::POD3].into_iter().filter(|p| *p != backend.ip()) {
        let id = f.backend_id(other, 8080, PROTO_TCP);
        assert_eq!(stats_of(&pins.backend_counters().unwrap(), id), FlowCounters::default(), "backend {other} saw no packet");
    }
    let dns = f.svc_id(F::UDP_VIP, 53, PROTO_UDP);
    assert_eq!(stats_of(&pins.service_counters().unwrap(), dns), FlowCounters::default());
}

// =============================================================================================
// Point 63: endpoints on the node's own address
// =============================================================================================

/// An endpoint on the node's own address (a hostNetwork pod): the NodePort Service whose one
/// endpoint is NODE:8080.
fn host_backend_service<F: Family>() -> DesiredState {
    let mut host = local(F::NODE, 8080);
    host.host = true;
    desired_state([nodeport_service::<F>("ingress", F::NP_VIP, NODEPORT, Protocol::Tcp, vec![host])])
}

/// Point 63, external client: the NodePort SYN reaches the node's own socket with the client's
/// address (no SNAT, as kube-proxy delivers it), and the node's SYN-ACK, which leaves through
/// the external interface's egress, is translated back to the NodePort there.
fn point_63_nodeport_to_a_host_backend_keeps_the_client_and_its_reply_is_translated_on_egress<F: Family>(test: &str) {
    let Some(mut f) = Fixture::node(test) else { return };
    f.program(&host_backend_service::<F>());
    for ext in [Ext::Xdp, Ext::Tc] {
        let client = SocketAddr::new(F::EXT_CLIENT, if ext == Ext::Xdp { 40700 } else { 40701 });
        let (verdict, out) = f.run_ext(ext, &tcp_frame(client, (F::NODE, NODEPORT), 1, 0, TCP_SYN));
        assert_eq!(verdict, ext.pass(), "{ext:?}");
        assert_eq!(parse_flow(&out).src, client, "{ext:?}: the host backend sees the client");
        assert_eq!(parse_flow(&out).dst, (F::NODE, 8080).into(), "{ext:?}");
        verify_checksums(&out).unwrap();
        let reply = tcp_frame((F::NODE, 8080), client, 7, 2, TCP_SYN | TCP_ACK);
        let (verdict, back) = f.run_tc(PROG_TC_EGRESS, &reply);
        assert_eq!(verdict, TC_ACT_OK);
        assert_eq!((parse_flow(&back).src, parse_flow(&back).dst), ((F::NODE, NODEPORT).into(), client), "{ext:?}");
        verify_checksums(&back).unwrap();
    }
    assert_eq!(f.counter(CNT_SNAT), 0);
    assert_eq!(f.counter(CNT_VERDICT_REVNAT), 2);
    // Anything else leaving the node passes untouched.
    let other = tcp_frame((F::NODE, 8080), (F::EXT_CLIENT, 9999), 7, 2, TCP_ACK);
    let (verdict, out) = f.run_tc(PROG_TC_EGRESS, &other);
    assert_eq!((verdict, out), (TC_ACT_OK, other));
}

/// Point 63, pod client: a pod reaching a ClusterIP whose endpoint is the node itself; the
/// node's reply leaves through the pod interface's egress and is translated there.
fn point_63_clusterip_from_a_pod_to_a_host_backend_is_translated_back_on_the_pod_egress<F: Family>(test: &str) {
    let Some(mut f) = Fixture::node(test) else { return };
    f.program(&host_backend_service::<F>());
    let client = SocketAddr::new(F::CLIENT, 40710);
    let (verdict, out) = f.run(&tcp_frame(client, (F::NP_VIP, 80), 1000, 0, TCP_SYN));
    assert_eq!(verdict, TC_ACT_OK);
    assert_eq!((parse_flow(&out).src, parse_flow(&out).dst), (client, (F::NODE, 8080).into()));
    let reply = tcp_frame((F::NODE, 8080), client, 1000, 1001, TCP_SYN | TCP_ACK);
    let (verdict, back) = f.run_tc(PROG_TC_EGRESS, &reply);
    assert_eq!(verdict, TC_ACT_OK);
    assert_eq!((parse_flow(&back).src, parse_flow(&back).dst), ((F::NP_VIP, 80).into(), client));
    verify_checksums(&back).unwrap();
    assert_eq!(f.counter(CNT_VERDICT_REVNAT), 1);
}

// =============================================================================================
// Point 22: Maglev
// =============================================================================================

fn maglev_backends<F: Family>() -> [IpAddr; 5] {
    [1, 2, 3, 4, 5].map(|host| F::pod_address(2, host))
}

/// A Maglev Service with a LoadBalancer IP every node announces (ECMP): the case Maglev is for.
fn maglev_state<F: Family>(backends: &[IpAddr]) -> DesiredState {
    let (spn, mut sp) = clusterip_service("web", F::VIP, 80, Protocol::Tcp, backends.iter().map(|b| remote(*b, 8080)).collect());
    sp.frontends.push(Frontend { addr: F::MAGLEV_LB_IP, port: 80, kind: FrontendKind::LoadBalancer });
    sp.selection = Selection::Maglev;
    desired_state([(spn, sp)])
}

/// 200 distinct flows: 50 clients, several source ports each.
fn maglev_flows<F: Family>() -> Vec<SocketAddr> {
    (0..200u16).map(|i| SocketAddr::new(F::pod_address(9, (i % 50) as u8 + 1), 30000 + i * 7)).collect()
}

/// The backend each of [`maglev_flows`] gets from a datapath programmed with `backends`.
fn maglev_choices<F: Family>(f: &mut Fixture, backends: &[IpAddr]) -> Vec<IpAddr> {
    f.program(&maglev_state::<F>(backends));
    maglev_flows::<F>()
        .into_iter()
        .map(|src| {
            let (verdict, out) = f.run(&tcp_frame(src, (F::VIP, 80), 1000, 0, TCP_SYN));
            assert_eq!(verdict, TC_ACT_OK);
            verify_checksums(&out).expect("checksums after DNAT");
            let dst = parse_flow(&out).dst;
            assert_eq!(dst.port(), 8080);
            dst.ip()
        })
        .collect()
}

/// Point 22 with Maglev: the choice depends on the flow alone, so two nodes (two separately
/// loaded datapaths, with their own ids) send the same 5-tuple to the same backend, and new
/// flows spread over every backend.
fn point_22_maglev_picks_the_same_backend_for_a_flow_on_every_node_and_reaches_all<F: Family>(test: &str) {
    let Some(mut node_a) = Fixture::new(test) else { return };
    let Some(mut node_b) = Fixture::new(test) else { return };
    // Node b learns the endpoints in another order (ids differ); the table must not.
    let all = maglev_backends::<F>();
    let mut reversed = all;
    reversed.reverse();
    let a = maglev_choices::<F>(&mut node_a, &all);
    let b = maglev_choices::<F>(&mut node_b, &reversed);
    let differ = a.iter().zip(&b).filter(|(x, y)| x != y).count();
    assert_eq!(differ, 0, "{differ} of 200 flows got another backend on the second node");
    let mut per: BTreeMap<IpAddr, usize> = BTreeMap::new();
    for b in &a {
        *per.entry(*b).or_default() += 1;
    }
    assert_eq!(per.keys().copied().collect::<Vec<_>>(), all.to_vec(), "200 flows must reach all 5 backends");
    for (b, n) in &per {
        assert!(*n >= 15, "backend {b} got only {n} of 200 flows (expected about 40): {per:?}");
    }
    // The same flow again on the same node (a new connection after the first closed, here a
    // retransmitted SYN) stays where it is.
    let again = maglev_choices::<F>(&mut node_a, &all);
    assert_eq!(again, a);
    // External flows to the LoadBalancer IP over XDP: the same on both nodes too.
    let over_xdp = |f: &Fixture| -> Vec<IpAddr> {
        maglev_flows::<F>()
            .into_iter()
            .map(|src| {
                let (verdict, out) = f.run_xdp(&tcp_frame((F::EXT_CLIENT, src.port()), (F::MAGLEV_LB_IP, 80), 1000, 0, TCP_SYN));
                assert_eq!(verdict, XDP_PASS);
                verify_checksums(&out).expect("checksums after DNAT");
                parse_flow(&out).dst.ip()
            })
            .collect()
    };
    let (xa, xb) = (over_xdp(&node_a), over_xdp(&node_b));
    assert_eq!(xa, xb, "an external flow must get the same backend on whichever node ECMP sends it to");
    assert_eq!(xa.into_iter().collect::<BTreeSet<_>>(), all.into_iter().collect::<BTreeSet<_>>());
}

/// Maglev's point: removing one of 5 backends moves (almost) no flow whose backend survived.
/// Each side is measured in a fresh datapath, so no conntrack entry hides a move.
fn point_22_maglev_removing_one_of_five_backends_keeps_the_flows_of_the_others<F: Family>(test: &str) {
    let Some(mut before) = Fixture::new(test) else { return };
    let Some(mut after) = Fixture::new(test) else { return };
    let all = maglev_backends::<F>();
    let removed = all[2];
    let rest: Vec<IpAddr> = all.iter().copied().filter(|b| *b != removed).collect();
    let old = maglev_choices::<F>(&mut before, &all);
    let new = maglev_choices::<F>(&mut after, &rest);
    assert!(!new.contains(&removed), "a flow was sent to the removed backend");
    let survivors: Vec<usize> = (0..old.len()).filter(|i| old[*i] != removed).collect();
    let moved = survivors.iter().filter(|i| old[**i] != new[**i]).count();
    assert!(survivors.len() >= 120, "only {} of 200 flows were on surviving backends", survivors.len());
    assert!(moved * 10 <= survivors.len(), "{moved} of {} flows whose backend survived moved (at most 10% may)", survivors.len());
}

/// The same with 3 backends going to 2.
fn point_22_maglev_removing_one_of_three_backends_keeps_the_flows_of_the_others<F: Family>(test: &str) {
    let Some(mut before) = Fixture::new(test) else { return };
    let Some(mut after) = Fixture::new(test) else { return };
    let all = maglev_backends::<F>();
    let three = &all[..3];
    let old = maglev_choices::<F>(&mut before, three);
    let new = maglev_choices::<F>(&mut after, &three[..2]);
    assert!(!new.contains(&three[2]), "a flow was sent to the removed backend");
    let survivors: Vec<usize> = (0..old.len()).filter(|i| old[*i] != three[2]).collect();
    let moved = survivors.iter().filter(|i| old[**i] != new[**i]).count();
    assert!(moved * 10 <= survivors.len(), "{moved} of {} flows whose backend survived moved (at most 10% may)", survivors.len());
}

// =============================================================================================
// Points 24-28: session affinity
// =============================================================================================

fn sticky_state<F: Family>(timeout: Option<u32>, backends: &[IpAddr]) -> DesiredState {
    let (spn, mut sp) =
        clusterip_service("sticky", F::VIP, 80, Protocol::Tcp, backends.iter().map(|b| local(*b, 8080)).collect());
    sp.affinity_timeout_s = timeout;
    desired_state([(spn, sp)])
}

/// A new connection from `client:sport` to the sticky service: the backend it was sent to.
fn connect<F: Family>(f: &Fixture, client: IpAddr, sport: u16) -> IpAddr {
    let (verdict, out) = f.run(&tcp_frame((client, sport), (F::VIP, 80), 1000, 0, TCP_SYN));
    assert_eq!(verdict, TC_ACT_OK);
    let fl = parse_flow(&out);
    assert_eq!((fl.src, fl.dst.port()), ((client, sport).into(), 8080));
    fl.dst.ip()
}

/// Points 24, 25: with ClientIP affinity every new connection of a client (any source port)
/// goes to one backend; the key is the client address, so different clients spread.
fn point_24_25_client_ip_affinity_sends_every_connection_of_a_client_to_one_backend<F: Family>(test: &str) {
    let Some(mut f) = Fixture::new(test) else { return };
    f.program(&sticky_state::<F>(Some(10800), &[F::POD1, F::POD2, F::POD3]));
    let chosen: BTreeSet<IpAddr> = (0..20).map(|i| connect::<F>(&f, F::CLIENT, 43000 + i)).collect();
    assert_eq!(chosen.len(), 1, "20 connections of one client went to {chosen:?}");
    assert_eq!(f.counter(CNT_AFFINITY_HIT), 19);
    let mut firsts = BTreeSet::new();
    for c in 1..=12u8 {
        let client = F::pod_address(3, c);
        let theirs: BTreeSet<IpAddr> = (0..5).map(|i| connect::<F>(&f, client, 44000 + i)).collect();
        assert_eq!(theirs.len(), 1, "client {client}: {theirs:?}");
        firsts.extend(theirs);
    }
    assert!(firsts.len() >= 2, "12 clients all went to {firsts:?}: the first choice of a client must be random");
    assert_eq!(f.counter(CNT_AFFINITY_HIT), 19 + 12 * 4);
    assert_eq!(f.counter(CNT_NEW_FLOWS), 20 + 12 * 5);
}

/// Point 25: the affinity record is per ServicePort, whichever of its addresses was used: a
/// client that reached a backend through the ClusterIP gets it through the NodePort too.
fn point_25_affinity_applies_whichever_address_of_the_service_is_used<F: Family>(test: &str) {
    let Some(mut f) = Fixture::node(test) else { return };
    let (spn, mut sp) = nodeport_service::<F>(
        "web",
        F::NP_VIP,
        NODEPORT,
        Protocol::Tcp,
        vec![local(F::POD1, 8080), local(F::POD2, 8080), local(F::POD3, 8080)],
    );
    sp.affinity_timeout_s = Some(10800);
    f.program(&desired_state([(spn, sp)]));
    for c in 1..=6u8 {
        let client = F::pod_address(5, c);
        let (_, out) = f.run(&tcp_frame((client, 47000), (F::NP_VIP, 80), 1000, 0, TCP_SYN));
        let chosen = parse_flow(&out).dst.ip();
        assert!(backends::<F>().contains(&chosen));
        for i in 1..4 {
            let (_, out) = f.run(&tcp_frame((client, 47000 + i), (F::NODE, NODEPORT), 1000, 0, TCP_SYN));
            assert_eq!(parse_flow(&out).dst.ip(), chosen, "{client}: the NodePort must honour the ClusterIP's affinity record");
        }
    }
    assert_eq!(f.counter(CNT_AFFINITY_HIT), 6 * 3);
}

/// Point 28: turning affinity off (and on again) takes effect for the next connections.
fn point_28_toggling_affinity_takes_effect_for_new_connections<F: Family>(test: &str) {
    let Some(mut f) = Fixture::new(test) else { return };
    let pods = [F::POD1, F::POD2, F::POD3];
    f.program(&sticky_state::<F>(Some(10800), &pods));
    let on: BTreeSet<IpAddr> = (0..5).map(|i| connect::<F>(&f, F::CLIENT, 43000 + i)).collect();
    assert_eq!(on.len(), 1);
    f.program(&sticky_state::<F>(None, &pods));
    let hits = f.counter(CNT_AFFINITY_HIT);
    let off: BTreeSet<IpAddr> = (0..40).map(|i| connect::<F>(&f, F::CLIENT, 43100 + i)).collect();
    assert!(off.len() >= 2, "with affinity off 40 new connections all went to {off:?}");
    assert_eq!(f.counter(CNT_AFFINITY_HIT), hits, "no affinity hit while affinity is off");
    f.program(&sticky_state::<F>(Some(10800), &pods));
    let on_again: BTreeSet<IpAddr> = (0..10).map(|i| connect::<F>(&f, F::CLIENT, 43200 + i)).collect();
    assert_eq!(on_again.len(), 1, "affinity back on: {on_again:?}");
}

/// Point 26: the record expires `timeoutSeconds` after the last new connection (sliding), after
/// which the next connection selects at random again.
fn point_26_affinity_slides_with_each_connection_and_expires_after_the_timeout<F: Family>(test: &str) {
    let Some(mut f) = Fixture::new(test) else { return };
    f.program(&sticky_state::<F>(Some(1), &[F::POD1, F::POD2, F::POD3]));
    let clients: Vec<IpAddr> = (1..=30u8).map(|c| F::pod_address(4, c)).collect();
    let mut first = Vec::new();
    for c in &clients {
        let b = connect::<F>(&f, *c, 45000);
        assert_eq!(connect::<F>(&f, *c, 45001), b, "{c}: a second connection within the timeout");
        first.push(b);
    }
    assert_eq!(f.counter(CNT_AFFINITY_HIT), 30);
    // Sliding: 0.6 s apart, each connection is within 1 s of the previous one.
    for sport in [45002, 45003] {
        std::thread::sleep(Duration::from_millis(600));
        assert_eq!(connect::<F>(&f, clients[0], sport), first[0], "the record slides with every new connection");
    }
    assert_eq!(f.counter(CNT_AFFINITY_HIT), 32);
    std::thread::sleep(Duration::from_millis(1200));
    let changed = clients.iter().zip(&first).filter(|(c, b)| connect::<F>(&f, **c, 45010) != **b).count();
    assert_eq!(f.counter(CNT_AFFINITY_HIT), 32, "expired records must not be used");
    assert!(changed >= 5, "after expiry only {changed} of 30 clients got another backend: selection must be random again");
}

/// Point 27: a remembered backend that left the endpoint set is not used; the client falls
/// through to random selection and sticks to the new choice.
fn point_27_a_remembered_backend_removed_from_the_set_is_not_used<F: Family>(test: &str) {
    let Some(mut f) = Fixture::new(test) else { return };
    f.program(&sticky_state::<F>(Some(10800), &[F::POD1, F::POD2, F::POD3]));
    let remembered = connect::<F>(&f, F::CLIENT, 46000);
    for i in 1..5 {
        assert_eq!(connect::<F>(&f, F::CLIENT, 46000 + i), remembered);
    }
    let rest: Vec<IpAddr> = [F::POD1, F::POD2, F::POD3].into_iter().filter(|b| *b != remembered).collect();
    f.program(&sticky_state::<F>(Some(10800), &rest));
    let after: BTreeSet<IpAddr> = (0..10).map(|i| connect::<F>(&f, F::CLIENT, 46100 + i)).collect();
    assert!(!after.contains(&remembered), "a new connection went to the removed backend {remembered}");
    assert_eq!(after.len(), 1, "the client sticks to its new backend: {after:?}");
    assert_eq!(f.counter(CNT_AFFINITY_HIT), 4 + 9);
}

// =============================================================================================
// Points 32, 33, 34, 38, 41, 48: NodePorts and LoadBalancer IPs over XDP and its TC fallback
// =============================================================================================

/// Two NodePort services with externalTrafficPolicy Cluster: "web" (two remote endpoints) on
/// NODE:30080 and "single" (one remote endpoint) on NODE:30081.
fn nodeport_cluster_state<F: Family>() -> DesiredState {
    desired_state([
        nodeport_service::<F>(
            "web",
            F::NP_VIP,
            NODEPORT,
            Protocol::Tcp,
            vec![remote(F::REMOTE1, 8080), remote(F::REMOTE2, 8080)],
        ),
        nodeport_service::<F>("single", F::SINGLE_VIP, 30081, Protocol::Tcp, vec![remote(F::REMOTE1, 8080)]),
    ])
}

fn nodeport_cluster_policy<F: Family>(test: &str, ext: Ext) {
    let Some(mut f) = Fixture::node(test) else { return };
    f.program(&nodeport_cluster_state::<F>());
    let client = SocketAddr::new(F::EXT_CLIENT, 40000);
    let syn = tcp_frame(client, (F::NODE, NODEPORT), 5000, 0, TCP_SYN);
    let (verdict, out) = f.run_ext(ext, &syn);
    assert_eq!(verdict, ext.pass(), "a translated packet continues to the stack");
    assert_eq!(out.len(), syn.len());
    verify_checksums(&out).expect("checksums after DNAT + SNAT");
    let fl = parse_flow(&out);
    assert!([F::REMOTE1, F::REMOTE2].contains(&fl.dst.ip()), "sent to {}, not a backend", fl.dst);
    assert_eq!(fl.dst.port(), 8080);
    assert_eq!(fl.src.ip(), F::NODE, "point 32: external traffic is masqueraded to the node address");
    let snat = fl.src;
    assert!(SNAT_PORTS.contains(&snat.port()), "SNAT port {} outside {SNAT_PORTS:?}", snat.port());
    assert_eq!(parse_tcp(&out).seq, 5000);
    let backend = fl.dst;

    // The backend's SYN-ACK to node:port goes back to the client from node:nodeport.
    let synack = tcp_frame(backend, snat, 9000, 5001, TCP_SYN | TCP_ACK);
    let (verdict, back) = f.run_ext(ext, &synack);
    assert_eq!(verdict, ext.pass());
    verify_checksums(&back).expect("checksums after reverse NAT");
    let fl = parse_flow(&back);
    assert_eq!(fl.src, (F::NODE, NODEPORT).into(), "the client sees the NodePort");
    assert_eq!(fl.dst, client, "un-SNATed back to the client");
    assert_eq!((parse_tcp(&back).seq, parse_tcp(&back).ack), (9000, 5001));

    // The rest of the flow keeps its backend and its SNAT port.
    let (verdict, out) = f.run_ext(ext, &tcp_frame(client, (F::NODE, NODEPORT), 5001, 9001, TCP_ACK));
    assert_eq!(verdict, ext.pass());
    assert_eq!((parse_flow(&out).src, parse_flow(&out).dst), (snat, backend));
    verify_checksums(&out).expect("checksums of an established packet");

    // 20 parallel flows of one client to a one-backend service: 20 distinct SNAT ports (the
    // translated 5-tuples would collide otherwise), each reply back to its own client port.
    let mut ports = BTreeSet::new();
    for i in 0..20u16 {
        let client = SocketAddr::new(F::EXT_CLIENT, 41000 + i);
        let (verdict, out) = f.run_ext(ext, &tcp_frame(client, (F::NODE, 30081), 1, 0, TCP_SYN));
        assert_eq!(verdict, ext.pass());
        verify_checksums(&out).expect("checksums after DNAT + SNAT");
        let fl = parse_flow(&out);
        assert_eq!((fl.src.ip(), fl.dst), (F::NODE, (F::REMOTE1, 8080).into()));
        assert!(SNAT_PORTS.contains(&fl.src.port()));
        assert!(ports.insert(fl.src.port()), "SNAT port {} given to two flows", fl.src.port());
        let (verdict, back) = f.run_ext(ext, &tcp_frame((F::REMOTE1, 8080), fl.src, 1, 2, TCP_SYN | TCP_ACK));
        assert_eq!(verdict, ext.pass());
        assert_eq!((parse_flow(&back).src, parse_flow(&back).dst), ((F::NODE, 30081).into(), client));
        verify_checksums(&back).expect("checksums after reverse NAT");
    }
    assert_eq!(f.counter(CNT_SNAT), 21);
    assert_eq!(f.counter(CNT_NEW_FLOWS), 21);
    assert_eq!(f.counter(CNT_VERDICT_REVNAT), 21);
}

/// Points 32, 41: a NodePort on the node address over XDP, externalTrafficPolicy Cluster:
/// DNAT to any endpoint plus SNAT to the node with a port from the configured range; replies
/// are un-SNATed to the client.
fn point_32_41_nodeport_over_xdp_with_cluster_policy_is_snated_and_reverse_translated<F: Family>(test: &str) {
    nodeport_cluster_policy::<F>(test, Ext::Xdp);
}

/// The same through the TC fallback of the XDP program.
fn point_32_41_nodeport_over_tc_fallback_with_cluster_policy_is_snated_and_reverse_translated<F: Family>(test: &str) {
    nodeport_cluster_policy::<F>(test, Ext::Tc);
}

/// Point 32, IPv4: a source-NATed flow's two entries are the slot of its SNAT port
/// (`LB_SNAT4_SLOTS`), a node-wide reservation; a flow that finds the slot taken by a live flow
/// of another backend reserves the port for its own backend in the hash table instead (each
/// backend has the whole range), and no two live flows ever get the same translated 5-tuple:
/// a slot taken for the same backend, or a port the hash table holds for the backend, is not
/// given out again. The range is narrowed to one port so every flow wants the same slot.
fn point_32_snat_reply_entries_live_in_port_slots_and_a_taken_slot_falls_back_to_the_backends_ports(test: &str) {
    use lb_common::{CNT_DROP_SNAT_PORTS, CT_DIR_FORWARD, CT_DIR_REPLY, CT_F_CLOSING, CT_F_SNAT_SLOT};
    let Some(mut f) = Fixture::node(test) else { return };
    const PORT: u16 = 61000;
    f.dp.set_config(&lb_common::Config { snat_port_min: PORT, snat_port_max: PORT, ..common::node_config() })
        .expect("a one-port SNAT range");
    f.program(&desired_state([
        nodeport_service::<V4>("to-remote1", V4::NP_VIP, 30081, Protocol::Tcp, vec![remote(V4::REMOTE1, 8080)]),
        nodeport_service::<V4>("to-remote2", V4::SINGLE_VIP, 30082, Protocol::Tcp, vec![remote(V4::REMOTE2, 8080)]),
    ]));
    let mut ct = common::ConntrackPins::open(f.dp.pin_path());
    let snat: SocketAddr = (V4::NODE, PORT).into();
    let (b1, b2): (SocketAddr, SocketAddr) = ((V4::REMOTE1, 8080).into(), (V4::REMOTE2, 8080).into());
    let client = |port: u16| SocketAddr::new(V4::EXT_CLIENT, port);
    let syn_to = |f: &Fixture, c: SocketAddr, nodeport: u16| {
        let (verdict, out) = f.run_xdp(&tcp_frame(c, (V4::NODE, nodeport), 7, 0, TCP_SYN));
        (verdict, (verdict == XDP_PASS).then(|| parse_flow(&out)))
    };
    let reply_to = |f: &Fixture, from: SocketAddr| {
        let (verdict, back) = f.run_xdp(&tcp_frame(from, snat, 9, 8, TCP_SYN | TCP_ACK));
        assert_eq!(verdict, XDP_PASS);
        verify_checksums(&back).expect("checksums after reverse NAT");
        parse_flow(&back)
    };
    let forward = |c: SocketAddr, nodeport: u16| conntrack_key(c, (V4::NODE, nodeport), PROTO_TCP, CT_DIR_FORWARD);
    let forward_flags =
        |ct: &common::ConntrackPins, c: SocketAddr, nodeport: u16| ct.raw(&forward(c, nodeport)).expect("forward entry").flags;

    // Flow 1 (to REMOTE1) takes the free slot: no entry in the hash table.
    let (_, fl) = syn_to(&f, client(41000), 30081);
    assert_eq!(fl.map(|fl| (fl.src, fl.dst)), Some((snat, b1)));
    let r1 = conntrack_key(b1, snat, PROTO_TCP, CT_DIR_REPLY);
    assert!(ct.slot(&r1).is_some(), "the reply entry is the port's slot");
    assert!(ct.get_16_byte_key(&r1).is_none(), "and not a hash entry");
    assert!(ct.slot(&forward(client(41000), 30081)).is_some(), "so is the forward entry");
    assert!(ct.get_16_byte_key(&forward(client(41000), 30081)).is_none());
    assert_ne!(forward_flags(&ct, client(41000), 30081) & CT_F_SNAT_SLOT, 0);
    assert_eq!(reply_to(&f, b1).dst, client(41000), "the reply goes back to its client");
    let (_, again) = syn_to(&f, client(41000), 30081);
    assert_eq!(again.map(|fl| fl.src), Some(snat), "a retransmitted SYN keeps its port");
    let (verdict, ack) = f.run_xdp(&tcp_frame(client(41000), (V4::NODE, 30081), 8, 10, TCP_ACK));
    assert_eq!((verdict, parse_flow(&ack).src, parse_flow(&ack).dst), (XDP_PASS, snat, b1), "the flow's next packet");
    verify_checksums(&ack).expect("checksums after DNAT and SNAT");
    assert_eq!(f.counter(CNT_CT_RESELECT), 0);

    // Flow 2 (to REMOTE2): the slot is live for REMOTE1, so the port is reserved for REMOTE2 in
    // the hash table, with its forward entry; both flows' replies reach their own clients.
    let (_, fl) = syn_to(&f, client(41001), 30082);
    assert_eq!(fl.map(|fl| (fl.src, fl.dst)), Some((snat, b2)));
    let r2 = conntrack_key(b2, snat, PROTO_TCP, CT_DIR_REPLY);
    assert!(ct.get_16_byte_key(&r2).is_some(), "a hash reply entry for the other backend");
    assert!(ct.get_16_byte_key(&forward(client(41001), 30082)).is_some(), "and a hash forward entry");
    assert_eq!(forward_flags(&ct, client(41001), 30082) & CT_F_SNAT_SLOT, 0);
    let (verdict, ack) = f.run_xdp(&tcp_frame(client(41001), (V4::NODE, 30082), 8, 10, TCP_ACK));
    assert_eq!((verdict, parse_flow(&ack).src, parse_flow(&ack).dst), (XDP_PASS, snat, b2), "found in the hash table");
    assert_eq!(reply_to(&f, b2).dst, client(41001));
    assert_eq!(reply_to(&f, b1).dst, client(41000));

    // The agent's sweep counts the live slot, keeps the ids it names, and leaves it in place.
    let sweep = f.dp.sweep_conntrack().expect("sweep");
    assert_eq!(sweep.snat_slots, 1);
    assert!(sweep.backend_ids.contains(&f.backend_id(V4::REMOTE1, 8080, PROTO_TCP)), "the slot's backend id stays reserved");
    assert_eq!(sweep.removed, 0);
    assert!(ct.slot(&r1).is_some());

    // Flow 3 (to REMOTE1) has no port: the slot and REMOTE1's port are flow 1's.
    assert_eq!(syn_to(&f, client(41002), 30081), (XDP_DROP, None));
    assert_eq!(f.counter(CNT_DROP_SNAT_PORTS), 1);

    // Flow 1 ends (its entry expires): flow 3 gets the slot, though REMOTE2 holds the port in the
    // hash table; flow 1's retransmitted SYN then finds no flow of its own, and no port left.
    let expire = |ct: &mut common::ConntrackPins, k: &lb_common::CtKey| {
        let v = ct.slot(k).expect("slot entry");
        ct.set_slot(k, lb_common::CtValue { last_seen_ns: 1, flags: v.flags | CT_F_CLOSING, ..v });
    };
    expire(&mut ct, &r1);
    let (_, fl) = syn_to(&f, client(41002), 30081);
    assert_eq!(fl.map(|fl| (fl.src, fl.dst)), Some((snat, b1)));
    assert_eq!(reply_to(&f, b1).dst, client(41002), "the slot is flow 3's now");
    assert_eq!(syn_to(&f, client(41000), 30081).0, XDP_DROP);
    assert_eq!((f.counter(CNT_CT_RESELECT), f.counter(CNT_DROP_SNAT_PORTS)), (0, 2));

    // Flow 4 (to REMOTE2) has no port either: REMOTE2's is flow 2's, in the hash table.
    assert_eq!(syn_to(&f, client(41003), 30082).0, XDP_DROP);
    // Nor when the slot is free again: its port is still REMOTE2's in the hash table.
    expire(&mut ct, &r1);
    assert_eq!(syn_to(&f, client(41003), 30082).0, XDP_DROP);
    assert_eq!(f.counter(CNT_DROP_SNAT_PORTS), 4);
    assert_eq!(reply_to(&f, b2).dst, client(41001), "flow 2 is untouched");
    assert_eq!(f.dp.sweep_conntrack().expect("sweep").snat_slots, 0, "an expired slot is not counted");
}

/// Point 32, IPv4: an external flow's SNAT port is the one its hash picks (RFC 6056's hash-based
/// selection, seeded with the node's boot id), or the next when that port's slot is taken, so
/// its next packets find its slot from their own addresses and ports; a new connection on the
/// ports of a closing one takes its slot over, port and all.
fn point_32_an_external_flows_snat_port_is_picked_by_its_hash_and_its_packets_find_its_slot(test: &str) {
    use lb_common::{CNT_CT_HIT, IPPROTO_TCP, snat_slot_hash, snat_slot_probe_port};
    let Some(mut f) = Fixture::node(test) else { return };
    f.program(&nodeport_cluster_state::<V4>());
    let cfg = common::node_config();
    let seed = lb_userspace::maps::snat_seed();
    let word = |a: Ipv4Addr| u32::from_ne_bytes(a.octets());
    let probes = |c: SocketAddr| {
        let h = snat_slot_hash(
            seed,
            word(addresses::EXT_CLIENT),
            c.port().to_be(),
            word(addresses::NODE),
            NODEPORT.to_be(),
            IPPROTO_TCP,
        );
        [0, 1].map(|i| snat_slot_probe_port(h, i, cfg.snat_port_min, cfg.snat_port_max))
    };
    let frontend: SocketAddr = (V4::NODE, NODEPORT).into();
    let mut first_probe = 0;
    for i in 0..32u16 {
        let client = SocketAddr::new(V4::EXT_CLIENT, 42000 + i);
        let (verdict, out) = f.run_xdp(&tcp_frame(client, frontend, 7, 0, TCP_SYN));
        assert_eq!(verdict, XDP_PASS);
        let (snat, backend) = (parse_flow(&out).src, parse_flow(&out).dst);
        assert_eq!(snat.ip(), V4::NODE);
        let want = probes(client);
        assert!(want.contains(&snat.port()), "{client}: port {} is one of its probes {want:?}", snat.port());
        first_probe += usize::from(snat.port() == want[0]);
        // Its next packets, either way, find it.
        let (_, ack) = f.run_xdp(&tcp_frame(client, frontend, 8, 10, TCP_ACK));
        assert_eq!((parse_flow(&ack).src, parse_flow(&ack).dst), (snat, backend), "{client}: the flow's next packet");
        verify_checksums(&ack).expect("checksums after DNAT and SNAT");
        let (_, back) = f.run_xdp(&tcp_frame(backend, snat, 10, 9, TCP_ACK));
        assert_eq!((parse_flow(&back).src, parse_flow(&back).dst), (frontend, client), "{client}: the reply");
    }
    assert_eq!(f.counter(CNT_CT_HIT), 32);
    assert!(first_probe >= 28, "32 flows over 4,001 ports rarely collide: {first_probe} on their first probe");

    // A new connection on the ports of a closing one takes its slot over.
    let client = SocketAddr::new(V4::EXT_CLIENT, 42000);
    let (_, out) = f.run_xdp(&tcp_frame(client, frontend, 8, 10, TCP_FIN | TCP_ACK));
    let snat = parse_flow(&out).src;
    let (verdict, out) = f.run_xdp(&tcp_frame(client, frontend, 5000, 0, TCP_SYN));
    assert_eq!(verdict, XDP_PASS);
    assert_eq!(parse_flow(&out).src, snat, "the same port: the closing connection's slot");
    let backend = parse_flow(&out).dst;
    let (_, back) = f.run_xdp(&tcp_frame(backend, snat, 6000, 5001, TCP_SYN | TCP_ACK));
    assert_eq!(parse_flow(&back).dst, client, "the new connection's reply");
    let ct = common::ConntrackPins::open(f.dp.pin_path());
    let v = ct.raw(&conntrack_key(client, frontend, PROTO_TCP, lb_common::CT_DIR_FORWARD)).expect("its forward entry");
    assert_eq!(v.flags & lb_common::CT_F_CLOSING, 0, "a new connection, not the closing one");
    assert_eq!(ct.slots_in_use(), 32, "no second slot for the same ports");
}

/// A NodePort service with externalTrafficPolicy Local: external traffic goes to local
/// endpoints only, without SNAT; pods of this node get the Cluster set.
fn nodeport_local_state<F: Family>(endpoints: Vec<Endpoint>) -> DesiredState {
    let local_endpoints: Vec<Endpoint> = endpoints.iter().filter(|e| e.local).cloned().collect();
    let (spn, mut sp) = nodeport_service::<F>("web", F::NP_VIP, NODEPORT, Protocol::Tcp, endpoints);
    let drop_if_empty = local_endpoints.is_empty() && !sp.cluster.is_empty();
    sp.external = EndpointSet { drop_if_empty, endpoints: local_endpoints.into() };
    sp.external_snat = false;
    desired_state([(spn, sp)])
}

/// Point 33: with externalTrafficPolicy Local external traffic reaches only local endpoints and
/// keeps the client's source address (no SNAT); the reply still comes from the NodePort.
fn point_33_local_policy_nodeport_keeps_the_client_source_and_uses_local_endpoints<F: Family>(test: &str) {
    let Some(mut f) = Fixture::node(test) else { return };
    f.program(&nodeport_local_state::<F>(vec![local(F::POD1, 8080), remote(F::REMOTE1, 8080)]));
    for ext in [Ext::Xdp, Ext::Tc] {
        for i in 0..10u16 {
            let client = SocketAddr::new(F::EXT_CLIENT, 40000 + i + if ext == Ext::Tc { 100 } else { 0 });
            let (verdict, out) = f.run_ext(ext, &tcp_frame(client, (F::NODE, NODEPORT), 1000, 0, TCP_SYN));
            assert_eq!(verdict, ext.pass());
            verify_checksums(&out).expect("checksums after DNAT");
            let fl = parse_flow(&out);
            assert_eq!(fl.dst, (F::POD1, 8080).into(), "{ext:?}: only the local endpoint serves external traffic");
            assert_eq!(fl.src, client, "{ext:?}: the client's source address and port are kept");
            // The local endpoint answers through its pod interface.
            let (verdict, back) = f.run(&tcp_frame((F::POD1, 8080), client, 1000, 1001, TCP_SYN | TCP_ACK));
            assert_eq!(verdict, TC_ACT_OK);
            assert_eq!((parse_flow(&back).src, parse_flow(&back).dst), ((F::NODE, NODEPORT).into(), client));
            verify_checksums(&back).expect("checksums after reverse NAT");
        }
    }
    // A retransmitted SYN (an external SYN looks up no client entry: its flow is written anew
    // over the one it had) still reaches the local endpoint, and its reply is still translated.
    let client = SocketAddr::new(F::EXT_CLIENT, 40000);
    let (verdict, out) = f.run_ext(Ext::Xdp, &tcp_frame(client, (F::NODE, NODEPORT), 1000, 0, TCP_SYN));
    assert_eq!(verdict, Ext::Xdp.pass());
    assert_eq!(parse_flow(&out).dst, (F::POD1, 8080).into(), "the retransmitted SYN goes where the first went");
    let (_, back) = f.run(&tcp_frame((F::POD1, 8080), client, 1000, 1001, TCP_SYN | TCP_ACK));
    assert_eq!(parse_flow(&back).src, (F::NODE, NODEPORT).into(), "its reply is still reverse-NATed");
    assert_eq!(f.counter(CNT_SNAT), 0);
}

/// Points 32, 33, IPv4: a packet from outside to a frontend of policy Local looks its flow up by
/// its client first (the frontend is marked in `LB_LOCAL_MARKS`), one to any other frontend by
/// its SNAT port slot first. Seen where both hold a flow of the same ports: a client whose
/// connection began under policy Local, was opened again under policy Cluster (a slot, source
/// NAT) and goes on after the Service is back to Local keeps its source address, as Local
/// promises; without the frontend's mark, the same packet takes the slot's flow.
fn point_33_packets_to_a_local_policy_frontend_find_their_client_entry_before_any_snat_slot(test: &str) {
    use aya::maps::{Array, MapData};
    let Some(mut f) = Fixture::node(test) else { return };
    let local = nodeport_local_state::<V4>(vec![local(V4::POD1, 8080), remote(V4::REMOTE1, 8080)]);
    let (client, frontend): (SocketAddr, SocketAddr) = ((V4::EXT_CLIENT, 40000).into(), (V4::NODE, NODEPORT).into());
    f.program(&local);
    let (_, out) = f.run_xdp(&tcp_frame(client, frontend, 1000, 0, TCP_SYN));
    assert_eq!((parse_flow(&out).src, parse_flow(&out).dst), (client, (V4::POD1, 8080).into()), "policy Local: no SNAT");
    f.program(&nodeport_cluster_state::<V4>());
    let (_, out) = f.run_xdp(&tcp_frame(client, frontend, 5000, 0, TCP_SYN));
    let snat = parse_flow(&out).src;
    assert_eq!(snat.ip(), V4::NODE, "policy Cluster: source-NATed, the flow in a slot");
    f.program(&local);
    let ack = tcp_frame(client, frontend, 1001, 1, TCP_ACK);
    let (verdict, out) = f.run_xdp(&ack);
    assert_eq!(verdict, XDP_PASS);
    assert_eq!(
        (parse_flow(&out).src, parse_flow(&out).dst),
        (client, (V4::POD1, 8080).into()),
        "back to Local: the client's own flow, its source kept"
    );
    verify_checksums(&out).expect("checksums after DNAT");

    let pin = f.dp.pin_path().join(lb_common::LOCAL_MARKS);
    let mut marks: Array<MapData, u64> =
        Array::try_from(aya::maps::Map::Array(MapData::from_pin(pin).expect("marks pin"))).unwrap();
    let set: Vec<u32> = (0..lb_common::LOCAL_MARK_WORDS).filter(|i| marks.get(i, 0).is_ok_and(|w| w != 0)).collect();
    assert_eq!(set.len(), 1, "one Local frontend, one marked word");
    marks.set(set[0], 0, 0).expect("clearing the mark");
    let (_, out) = f.run_xdp(&ack);
    assert_eq!(parse_flow(&out).src, snat, "unmarked: the slot is looked at first");
}

/// Points 33, 38: externalTrafficPolicy Local without a local endpoint (endpoints exist on other
/// nodes): external traffic is dropped silently, not rejected.
fn point_33_38_local_policy_without_local_endpoint_drops_external_traffic<F: Family>(test: &str) {
    let Some(mut f) = Fixture::node(test) else { return };
    f.program(&nodeport_local_state::<F>(vec![remote(F::REMOTE1, 8080)]));
    let syn = tcp_frame((F::EXT_CLIENT, 40000), (F::NODE, NODEPORT), 1000, 0, TCP_SYN);
    let (verdict, _) = f.run_xdp(&syn);
    assert_eq!(verdict, XDP_DROP);
    assert_eq!(f.counter(CNT_DROP_NO_LOCAL_BACKEND), 1);
    let (verdict, _) = f.run_ext(Ext::Tc, &syn);
    assert_eq!(verdict, Ext::Tc.drop());
    assert_eq!(f.counter(CNT_DROP_NO_LOCAL_BACKEND), 2);
    assert_eq!(f.counter(CNT_VERDICT_DROP), 2);
    assert_eq!(f.counter(CNT_VERDICT_REJECT), 0, "point 38: drop, never reject");
    assert_eq!(f.counter(CNT_VERDICT_DNAT), 0);
}

/// Point 34: a pod on this node reaching the NodePort of an externalTrafficPolicy Local service
/// gets the Cluster set, so it succeeds although no endpoint is local.
fn point_34_pod_to_nodeport_of_local_policy_service_uses_the_cluster_set<F: Family>(test: &str) {
    let Some(mut f) = Fixture::node(test) else { return };
    f.program(&nodeport_local_state::<F>(vec![remote(F::REMOTE1, 8080)]));
    let client = SocketAddr::new(F::CLIENT, 40020);
    let (verdict, out) = f.run(&tcp_frame(client, (F::NODE, NODEPORT), 1000, 0, TCP_SYN));
    assert_eq!(verdict, TC_ACT_OK);
    let fl = parse_flow(&out);
    assert_eq!(fl.dst, (F::REMOTE1, 8080).into(), "the Cluster set serves this node's pods");
    assert_eq!(fl.src, client, "pod traffic is not source-NATed");
    verify_checksums(&out).expect("checksums after DNAT");
    let (_, back) = f.run(&tcp_frame((F::REMOTE1, 8080), client, 1000, 1001, TCP_SYN | TCP_ACK));
    assert_eq!((parse_flow(&back).src, parse_flow(&back).dst), ((F::NODE, NODEPORT).into(), client));
    verify_checksums(&back).expect("checksums after reverse NAT");
    assert_eq!(f.counter(CNT_DROP_NO_LOCAL_BACKEND), 0);
}

/// Point 48: source ranges restrict the LoadBalancer IP only; the same service's NodePort (and
/// ClusterIP) are not restricted; a change of the ranges takes effect live.
fn point_48_load_balancer_source_ranges_restrict_only_the_load_balancer_ip<F: Family>(test: &str) {
    let Some(mut f) = Fixture::node(test) else { return };
    let SourceRanges { range, inside, outside, next_range, pod } = F::SOURCE_RANGES;
    let (spn, mut sp) = clusterip_service("lb", F::LB_VIP, 443, Protocol::Tcp, vec![remote(F::REMOTE1, 8443)]);
    sp.frontends.push(Frontend { addr: F::NODE, port: 30443, kind: FrontendKind::NodePort });
    sp.frontends.push(Frontend { addr: F::LB_IP, port: 443, kind: FrontendKind::LoadBalancer });
    sp.source_ranges = vec![range];
    f.program(&desired_state([(spn.clone(), sp.clone())]));
    let range_name = format!("{}/{}", range.addr, range.prefix);
    let to_lb = |src: IpAddr, sport| tcp_frame((src, sport), (F::LB_IP, 443), 1000, 0, TCP_SYN);

    for (src, allowed) in inside.map(|s| (s, true)).into_iter().chain(outside.map(|s| (s, false))) {
        let (verdict, out) = f.run_xdp(&to_lb(src, 40000));
        if allowed {
            assert_eq!(verdict, XDP_PASS, "{src} is inside {range_name}");
            assert_eq!(parse_flow(&out).dst, (F::REMOTE1, 8443).into());
            verify_checksums(&out).expect("checksums");
        } else {
            assert_eq!(verdict, XDP_DROP, "{src} is outside {range_name}");
        }
    }
    assert_eq!(f.counter(CNT_DROP_SOURCE_RANGE), 3);
    // The NodePort of the same service is not subject to the ranges.
    let (verdict, out) = f.run_xdp(&tcp_frame((outside[0], 40001), (F::NODE, 30443), 1000, 0, TCP_SYN));
    assert_eq!(verdict, XDP_PASS);
    assert_eq!(parse_flow(&out).dst, (F::REMOTE1, 8443).into());
    // Nor is the ClusterIP, from a pod outside the ranges.
    let (verdict, out) = f.run(&tcp_frame((pod, 40002), (F::LB_VIP, 443), 1000, 0, TCP_SYN));
    assert_eq!(verdict, TC_ACT_OK);
    assert_eq!(parse_flow(&out).dst, (F::REMOTE1, 8443).into());
    assert_eq!(f.counter(CNT_DROP_SOURCE_RANGE), 3);
    assert_eq!(f.counter(CNT_NEW_FLOWS), 4);

    // Changing the ranges takes effect live: the next range only, then none.
    sp.source_ranges = vec![next_range];
    f.program(&desired_state([(spn.clone(), sp.clone())]));
    let (verdict, _) = f.run_xdp(&to_lb(outside[0], 40010));
    assert_eq!(verdict, XDP_PASS, "{} is inside the new range", outside[0]);
    let (verdict, _) = f.run_xdp(&to_lb(inside[0], 40011));
    assert_eq!(verdict, XDP_DROP, "{} is outside the new range", inside[0]);
    sp.source_ranges.clear();
    f.program(&desired_state([(spn, sp)]));
    let (verdict, _) = f.run_xdp(&to_lb(inside[0], 40012));
    assert_eq!(verdict, XDP_PASS, "without ranges every source is allowed");
    assert_eq!(f.counter(CNT_DROP_SOURCE_RANGE), 4);
}

// =============================================================================================
// Point 51: hairpin
// =============================================================================================

/// Point 51: a pod reaching itself through its service is source-NATed to the hairpin address
/// (its own port kept), so its reply comes back through the node and is translated back.
fn point_51_pod_reaching_itself_through_its_service_is_hairpinned<F: Family>(test: &str) {
    let Some(mut f) = Fixture::node(test) else { return };
    f.program(&desired_state([clusterip_service("self", F::VIP, 80, Protocol::Tcp, vec![local(F::POD1, 8080)])]));
    let (verdict, out) = f.run(&tcp_frame((F::POD1, 45000), (F::VIP, 80), 77, 0, TCP_SYN));
    assert_eq!(verdict, TC_ACT_OK);
    verify_checksums(&out).expect("checksums after DNAT + hairpin SNAT");
    assert_eq!(parse_flow(&out).dst, (F::POD1, 8080).into());
    assert_eq!(parse_flow(&out).src, (F::HAIRPIN, 45000).into(), "source-NATed to the hairpin address, port kept");
    let (verdict, back) = f.run(&tcp_frame((F::POD1, 8080), (F::HAIRPIN, 45000), 900, 78, TCP_SYN | TCP_ACK));
    assert_eq!(verdict, TC_ACT_OK);
    verify_checksums(&back).expect("checksums after reverse NAT");
    assert_eq!(parse_flow(&back).src, (F::VIP, 80).into(), "the pod sees its service");
    assert_eq!(parse_flow(&back).dst, (F::POD1, 45000).into());
    assert_eq!(f.counter(CNT_HAIRPIN), 1);
    // Another pod reaching the same service keeps its source (point 31).
    let (_, out) = f.run(&tcp_frame((F::CLIENT, 45001), (F::VIP, 80), 1000, 0, TCP_SYN));
    assert_eq!(parse_flow(&out).src, (F::CLIENT, 45001).into());
    assert_eq!(f.counter(CNT_HAIRPIN), 1);
}

/// Point 51 through a NodePort: the endpoint pod reaching its own service's NodePort (the
/// networking "endpoint-Service" check) is hairpinned too.
fn point_51_pod_reaching_itself_through_its_nodeport_is_hairpinned<F: Family>(test: &str) {
    let Some(mut f) = Fixture::node(test) else { return };
    f.program(&desired_state([nodeport_service::<F>("self", F::NP_VIP, NODEPORT, Protocol::Tcp, vec![local(F::POD1, 8080)])]));
    let (verdict, out) = f.run(&tcp_frame((F::POD1, 45100), (F::NODE, NODEPORT), 1000, 0, TCP_SYN));
    assert_eq!(verdict, TC_ACT_OK);
    verify_checksums(&out).expect("checksums after DNAT + hairpin SNAT");
    assert_eq!((parse_flow(&out).src, parse_flow(&out).dst), ((F::HAIRPIN, 45100).into(), (F::POD1, 8080).into()));
    let (_, back) = f.run(&tcp_frame((F::POD1, 8080), (F::HAIRPIN, 45100), 1000, 1001, TCP_SYN | TCP_ACK));
    assert_eq!((parse_flow(&back).src, parse_flow(&back).dst), ((F::NODE, NODEPORT).into(), (F::POD1, 45100).into()));
    verify_checksums(&back).expect("checksums after reverse NAT");
    assert_eq!(f.counter(CNT_HAIRPIN), 1);
}

// =============================================================================================
// Point 58: ICMP errors about translated flows
// =============================================================================================

/// Point 58 (nothing of a translated flow reaches the client with the backend's address): an
/// ICMP error from the backend about a DNATed flow is translated back: the quoted packet becomes
/// what the client sent (destination VIP:80) and the error comes from the VIP; errors from a
/// router on the path (too big, time exceeded, parameter problem) keep their source. Every
/// checksum stays valid (ICMPv6's covers the pseudo-header, the quoted IPv4 header has its own).
fn point_58_icmp_errors_about_a_clusterip_flow_are_translated_back<F: Family>(test: &str) {
    let Some(mut f) = Fixture::new(test) else { return };
    f.program(&cluster::<F>());
    let client = SocketAddr::new(F::CLIENT, 40030);
    let (_, out) = f.run(&tcp_frame(client, (F::VIP, 80), 1000, 0, TCP_SYN));
    let backend = parse_flow(&out).dst;
    assert!(backends::<F>().contains(&backend.ip()));

    let (too_big, too_big_code) = F::PACKET_TOO_BIG;
    let quote = quoted_tcp(client, backend, 1480, 1001);
    let err = icmp_error_frame(backend.ip(), F::CLIENT, too_big, too_big_code, MTU_1400, &quote);
    verify_checksums(&err).expect("the built error");
    let (verdict, out) = f.run(&err);
    assert_eq!(verdict, TC_ACT_OK);
    assert_eq!(out.len(), err.len());
    let h = parse_ip_header(&out);
    let sent = parse_ip_header(&err);
    assert_eq!(
        (h.src, h.dst, h.total_len),
        (F::VIP, F::CLIENT, sent.total_len),
        "an error the backend sent appears to come from the VIP"
    );
    let i = parse_icmp_error(&out);
    assert_eq!((i.ty, i.code, i.rest), (too_big, too_big_code, MTU_1400));
    assert_eq!(i.quoted.src, client, "quoted source unchanged (no SNAT)");
    assert_eq!(i.quoted.dst, (F::VIP, 80).into(), "the quoted packet is what the client sent");
    assert_eq!(&out[i.quoted_l4_off + 4..], &err[i.quoted_l4_off + 4..], "the quoted sequence number is untouched");
    verify_checksums(&out).expect("ICMP checksums");
    assert_eq!(f.counter(CNT_ICMP_TRANSLATED), 1);

    // From a router on the path (quoting more than 8 bytes, as Linux does): the outer source is
    // the router's and stays.
    let mut long_quote = quote;
    long_quote.extend_from_slice(&[0x50, 0x10, 0xff, 0xff, 0, 0, 0, 0]);
    long_quote.extend_from_slice(&[0xab; 101]);
    for (k, (ty, code, rest)) in F::ROUTER_ERRORS.into_iter().enumerate() {
        let err = icmp_error_frame(F::ROUTER, F::CLIENT, ty, code, rest, &long_quote);
        let (verdict, out) = f.run(&err);
        assert_eq!(verdict, TC_ACT_OK, "type {ty}");
        let h = parse_ip_header(&out);
        assert_eq!((h.src, h.dst), (F::ROUTER, F::CLIENT), "type {ty}: a router's error keeps the router's address");
        let i = parse_icmp_error(&out);
        assert_eq!((i.ty, i.code, i.rest), (ty, code, rest));
        assert_eq!((i.quoted.src, i.quoted.dst), (client, (F::VIP, 80).into()), "type {ty}");
        assert_eq!(&out[out.len() - 101..], &[0xab; 101][..], "the rest of the quote is untouched");
        verify_checksums(&out).expect("ICMP checksums");
        assert_eq!(f.counter(CNT_ICMP_TRANSLATED), 2 + k as u64);
    }

    // A UDP flow: the backend's port unreachable quoting the whole datagram it received. Once
    // translated, the quote is byte for byte what the client sent (the quoted UDP checksum too).
    let query = udp_frame((F::CLIENT, 5360), (F::UDP_VIP, 53), b"query");
    let (_, received) = f.run(&query);
    let backend = parse_flow(&received).dst;
    assert_eq!(backend.port(), 9000);
    let (unreachable, code) = F::PORT_UNREACHABLE;
    let err = icmp_error_frame(backend.ip(), F::CLIENT, unreachable, code, [0; 4], &received[ETH_HEADER_LEN..]);
    let (verdict, out) = f.run(&err);
    assert_eq!(verdict, TC_ACT_OK);
    assert_eq!(parse_ip_header(&out).src, F::UDP_VIP);
    let quoted_off = parse_icmp_error(&out).quoted_off;
    assert_eq!(&out[quoted_off..], &query[ETH_HEADER_LEN..], "the quoted datagram is the client's, checksums included");
    verify_checksums(&out).expect("ICMP checksums");
    assert_eq!(f.counter(CNT_ICMP_TRANSLATED), 5);

    // An error quoting a flow that was never translated passes untouched.
    let unknown = quoted_tcp((F::CLIENT, 40031), (F::POD3, 8080), 1480, 1);
    let other = icmp_error_frame(F::POD3, F::CLIENT, too_big, too_big_code, MTU_1400, &unknown);
    let (verdict, out) = f.run(&other);
    assert_eq!((verdict, out), (TC_ACT_OK, other));
    assert_eq!(f.counter(CNT_ICMP_TRANSLATED), 5);
}

/// Point 58, the other direction: a UDP client that closed its socket answers the backend's
/// (reverse-translated) reply VIP:53 → client with an ICMP port unreachable addressed to the VIP.
/// Like conntrack's RELATED NAT it must reach the backend (outer destination and quoted source
/// translated to the backend), not leave for the VIP untranslated.
fn point_58_icmp_error_from_the_client_about_a_reply_reaches_the_backend<F: Family>(test: &str) {
    let Some(mut f) = Fixture::new(test) else { return };
    f.program(&cluster::<F>());
    let client = SocketAddr::new(F::CLIENT, 5361);
    let (_, received) = f.run(&udp_frame(client, (F::UDP_VIP, 53), b"query"));
    let backend = parse_flow(&received).dst;
    let answer = udp_frame(backend, client, b"answer");
    let (_, delivered) = f.run(&answer);
    assert_eq!(parse_flow(&delivered).src, (F::UDP_VIP, 53).into());
    // The client's kernel quotes what it received: VIP:53 → client.
    let (unreachable, code) = F::PORT_UNREACHABLE;
    let err = icmp_error_frame(F::CLIENT, F::UDP_VIP, unreachable, code, [0; 4], &delivered[ETH_HEADER_LEN..]);
    let (verdict, out) = f.run(&err);
    assert_eq!(verdict, TC_ACT_OK);
    let h = parse_ip_header(&out);
    assert_eq!((h.src, h.dst), (F::CLIENT, backend.ip()), "the error must go to the backend, not to the VIP");
    let i = parse_icmp_error(&out);
    assert_eq!((i.ty, i.code), (unreachable, code));
    assert_eq!(i.quoted.src, backend, "the quote is what the backend sent");
    assert_eq!(&out[i.quoted_off..], &answer[ETH_HEADER_LEN..], "byte for byte, checksums included");
    verify_checksums(&out).expect("ICMP checksums");
    assert_eq!(f.counter(CNT_ICMP_TRANSLATED), 1);
}

/// Point 58 for a source-NATed NodePort flow: the backend's error is addressed to the node and
/// quotes node:snat-port → backend; it must reach the client quoting what the client sent
/// (client:port → node:nodeport).
fn snated_icmp_error<F: Family>(test: &str, ext: Ext) {
    let Some(mut f) = Fixture::node(test) else { return };
    f.program(&nodeport_cluster_state::<F>());
    let client = SocketAddr::new(F::EXT_CLIENT, 40000);
    let (verdict, out) = f.run_ext(ext, &tcp_frame(client, (F::NODE, NODEPORT), 5000, 0, TCP_SYN));
    assert_eq!(verdict, ext.pass());
    let (snat, backend) = (parse_flow(&out).src, parse_flow(&out).dst);
    assert_eq!(snat.ip(), F::NODE);

    let (too_big, code) = F::PACKET_TOO_BIG;
    let err = icmp_error_frame(backend.ip(), F::NODE, too_big, code, MTU_1400, &quoted_tcp(snat, backend, 1480, 5001));
    let (verdict, out) = f.run_ext(ext, &err);
    assert_eq!(verdict, ext.pass());
    assert_eq!(out.len(), err.len());
    let h = parse_ip_header(&out);
    assert_eq!(h.dst, F::EXT_CLIENT, "the error is addressed to the client");
    assert_eq!(h.src, F::NODE, "from the address the client talked to");
    let i = parse_icmp_error(&out);
    assert_eq!((i.ty, i.code, i.rest), (too_big, code, MTU_1400));
    assert_eq!(i.quoted.src, client, "quoted source: the client, un-SNATed");
    assert_eq!(i.quoted.dst, (F::NODE, NODEPORT).into(), "quoted destination: the NodePort");
    verify_checksums(&out).expect("ICMP checksums");
    assert_eq!(f.counter(CNT_ICMP_TRANSLATED), 1);

    // The other way: the client's error about a reply it received (node:nodeport → client)
    // reaches the backend, quoting what the backend sent (backend → node:snat-port). (An IPv4
    // flow's forward entry is in its port's slot: the error finds it by the flow's hash.)
    let err =
        icmp_error_frame(F::EXT_CLIENT, F::NODE, too_big, code, MTU_1400, &quoted_tcp((F::NODE, NODEPORT), client, 1480, 9000));
    let (verdict, out) = f.run_ext(ext, &err);
    assert_eq!(verdict, ext.pass());
    let h = parse_ip_header(&out);
    assert_eq!((h.src, h.dst), (snat.ip(), backend.ip()), "from the SNAT address to the backend");
    let i = parse_icmp_error(&out);
    assert_eq!((i.quoted.src, i.quoted.dst), (backend, snat), "the quote is what the backend sent");
    verify_checksums(&out).expect("ICMP checksums");
    assert_eq!(f.counter(CNT_ICMP_TRANSLATED), 2);
}

fn point_58_icmp_error_about_a_snated_nodeport_flow_reaches_the_client_over_xdp<F: Family>(test: &str) {
    snated_icmp_error::<F>(test, Ext::Xdp);
}

/// The same through the TC fallback.
fn point_58_icmp_error_about_a_snated_nodeport_flow_reaches_the_client_over_tc_fallback<F: Family>(test: &str) {
    snated_icmp_error::<F>(test, Ext::Tc);
}

// =============================================================================================
// IPv4 only: options, header length
// =============================================================================================

/// A TCP SYN from the client to kubia carrying IPv4 `options`.
fn syn_with_options(sport: u16, options: &[u8]) -> Vec<u8> {
    let (client, vip) = ((addresses::CLIENT, sport), (addresses::VIP, 80));
    ipv4_frame(addresses::CLIENT, addresses::VIP, PROTO_TCP, 1, 0, options, &tcp_segment(client, vip, 1000, 0, TCP_SYN, &[]))
}

/// IPv4 options (a router alert) are skipped through IHL: the port behind them is rewritten and
/// the checksums stay valid.
fn ipv4_options_are_honoured(test: &str) {
    let Some(mut f) = Fixture::new(test) else { return };
    f.program(&cluster::<V4>());
    let (verdict, out) = f.run(&syn_with_options(40003, &[0x94, 0x04, 0, 0])); // router alert
    assert_eq!(verdict, TC_ACT_OK);
    let fl = parse_flow(&out);
    assert!(backends::<V4>().contains(&fl.dst.ip()));
    assert_eq!(fl.dst.port(), 8080, "the port after the options was rewritten");
    verify_checksums(&out).expect("checksums with options");
}

/// A malformed IPv4 header (total length below the header's, IHL below 5, a wrong version, options
/// beyond the packet) is passed untouched (`CNT_PASS_BAD_L3`): the kernel's IP input drops it.
fn malformed_ipv4_headers_pass_untouched(test: &str) {
    let Some(mut f) = Fixture::new(test) else { return };
    f.program(&cluster::<V4>());
    let good = syn::<V4>(40010);
    // (A frame whose IPv4 header is cut below 20 bytes cannot be fed in: BPF_PROG_TEST_RUN
    // refuses it with EINVAL. The parser's bound check covers it the same way as these.)
    let mut short_total = good.clone();
    short_total[16..18].copy_from_slice(&12u16.to_be_bytes()); // total length < header length
    let mut bad_ihl = good.clone();
    bad_ihl[14] = 0x44; // IHL 4 (< 5)
    let mut bad_version = good.clone();
    bad_version[14] = 0x55;
    let mut options_missing = good[..14 + 20].to_vec();
    options_missing[14] = 0x4f; // claims 60 bytes of header
    for frame in [short_total, bad_ihl, bad_version, options_missing] {
        let (verdict, out) = f.run(&frame);
        assert_eq!(verdict, TC_ACT_OK, "the kernel's IP input validates these");
        assert_eq!(out, frame, "an invalid IPv4 header is never modified");
    }
    assert_eq!(f.counter(CNT_PASS_BAD_L3), 4);
}

/// Point 41: a NodePort packet carrying IPv4 options (router alert; the longest possible, 40
/// bytes) is translated with the L4 header found through IHL, options kept, checksums valid,
/// over XDP and its TC fallback; so is its reply.
fn point_41_nodeport_packets_with_ipv4_options_are_translated(test: &str) {
    let Some(mut f) = Fixture::node(test) else { return };
    f.program(&nodeport_cluster_state::<V4>());
    let (node, ext_client) = (addresses::NODE, addresses::EXT_CLIENT);
    let router_alert = vec![0x94, 0x04, 0, 0];
    let mut longest = vec![1u8; 39]; // NOPs
    longest.push(0); // end of options
    let mut sport = 40100;
    for ext in [Ext::Xdp, Ext::Tc] {
        for opts in [&router_alert, &longest] {
            sport += 1;
            let client = SocketAddr::from((ext_client, sport));
            let seg = tcp_segment(client, (node, NODEPORT), 10, 0, TCP_SYN, b"");
            let frame = ipv4_frame(ext_client, node, PROTO_TCP, 1, 0, opts, &seg);
            let (verdict, out) = f.run_ext(ext, &frame);
            assert_eq!(verdict, ext.pass(), "{ext:?} with {} bytes of options", opts.len());
            assert_eq!(out.len(), frame.len());
            verify_checksums(&out).expect("checksums with options");
            let ihl = IPV4_HEADER_LEN + opts.len();
            assert_eq!(parse_ip_header(&out).header_len, ihl);
            assert_eq!(&out[ETH_HEADER_LEN + IPV4_HEADER_LEN..ETH_HEADER_LEN + ihl], &opts[..], "options kept");
            let fl = parse_flow(&out);
            assert!([V4::REMOTE1, V4::REMOTE2].contains(&fl.dst.ip()));
            assert_eq!(fl.dst.port(), 8080, "the port after the options was rewritten");
            assert_eq!(fl.src.ip(), V4::NODE);
            assert!(SNAT_PORTS.contains(&fl.src.port()));
            let IpAddr::V4(backend) = fl.dst.ip() else { unreachable!("an IPv4 flow") };
            let reply_seg = tcp_segment(fl.dst, fl.src, 20, 11, TCP_SYN | TCP_ACK, b"");
            let reply = ipv4_frame(backend, node, PROTO_TCP, 2, 0, opts, &reply_seg);
            let (verdict, back) = f.run_ext(ext, &reply);
            assert_eq!(verdict, ext.pass());
            verify_checksums(&back).expect("checksums of the reply with options");
            assert_eq!((parse_flow(&back).src, parse_flow(&back).dst), ((node, NODEPORT).into(), client));
        }
    }
    assert_eq!(f.counter(CNT_SNAT), 4);
}

// =============================================================================================
// IPv6 only: extension headers, a header cut short
// =============================================================================================

/// The IPv6 address of a family-neutral one of [`V6`].
fn ip6(ip: IpAddr) -> Ipv6Addr {
    let IpAddr::V6(a) = ip else { unreachable!("{ip} is an IPv4 address") };
    a
}

/// A TCP SYN from `client:sport` to `dst:dport` behind the extension headers `ext` (the first
/// of which is a hop-by-hop header).
fn syn_behind(ext: &[u8], client: (IpAddr, u16), dst: (IpAddr, u16)) -> Vec<u8> {
    ipv6_frame(ip6(client.0), ip6(dst.0), NEXT_HOP_BY_HOP, ext, &tcp_segment(client, dst, 1000, 0, TCP_SYN, &[]))
}

/// Hop-by-hop and destination options headers are skipped (the L4 header is found behind
/// them), kept byte for byte, and the checksum stays valid; so are up to 4 skippable headers.
/// Chains the parser does not follow (a 5th header, or an L4 header beyond byte 255) to a
/// service address are dropped, never leaked.
fn hop_by_hop_and_destination_options_are_honoured(test: &str) {
    let Some(mut f) = Fixture::new(test) else { return };
    f.program(&cluster::<V6>());
    let mut hop_dest = ipv6_router_alert_header(NEXT_DEST_OPTIONS);
    hop_dest.extend(ipv6_options_header(PROTO_TCP, 16));
    let mut four = ipv6_router_alert_header(NEXT_DEST_OPTIONS);
    four.extend(ipv6_options_header(NEXT_ROUTING, 8));
    four.extend(ipv6_routing_header(NEXT_DEST_OPTIONS));
    four.extend(ipv6_options_header(PROTO_TCP, 200 - 24)); // L4 header at byte 254
    for (i, ext) in [hop_dest, four].into_iter().enumerate() {
        let client = (V6::CLIENT, 40003 + i as u16);
        let input = syn_behind(&ext, client, (V6::VIP, 80));
        let (verdict, out) = f.run(&input);
        assert_eq!(verdict, TC_ACT_OK, "{} bytes of extension headers", ext.len());
        assert_eq!(out.len(), input.len());
        let fl = parse_flow(&out);
        assert!(backends::<V6>().contains(&fl.dst.ip()));
        assert_eq!(fl.dst.port(), 8080, "the port behind the extension headers was rewritten");
        assert_eq!(fl.src, client.into());
        let ext_start = ETH_HEADER_LEN + IPV6_HEADER_LEN;
        assert_eq!(&out[ext_start..ext_start + ext.len()], &ext[..], "extension headers kept");
        verify_checksums(&out).expect("TCP checksum behind extension headers");
    }
    assert_eq!(f.counter(CNT_VERDICT_DNAT), 2);
    let mut five = ipv6_router_alert_header(NEXT_DEST_OPTIONS);
    five.extend(ipv6_options_header(NEXT_ROUTING, 8));
    five.extend(ipv6_routing_header(NEXT_DEST_OPTIONS));
    five.extend(ipv6_options_header(NEXT_DEST_OPTIONS, 8));
    five.extend(ipv6_options_header(PROTO_TCP, 8));
    let mut beyond = ipv6_router_alert_header(NEXT_DEST_OPTIONS);
    beyond.extend(ipv6_options_header(PROTO_TCP, 208 - 8)); // L4 header at byte 262
    for ext in [five, beyond] {
        let (verdict, _) = f.run(&syn_behind(&ext, (V6::CLIENT, 40010), (V6::VIP, 80)));
        assert_eq!(verdict, TC_ACT_SHOT, "a chain the parser does not follow, to a service address");
    }
    assert_eq!(f.counter(CNT_DROP_BAD_L4), 2);
    assert_eq!(f.counter(CNT_VERDICT_DNAT), 2);
}

/// Extension headers the parser does not follow (AH) or that claim more bytes than the
/// packet holds: to a service address such a packet is dropped, never leaked; to any other
/// address it passes untouched.
fn unfollowed_or_truncated_extension_headers_to_a_service_address_are_dropped(test: &str) {
    let Some(mut f) = Fixture::new(test) else { return };
    f.program(&cluster::<V6>());
    let client = (V6::CLIENT, 40002);
    let mut ah = vec![PROTO_TCP, 4, 0, 0];
    ah.extend_from_slice(&[0u8; 20]);
    let behind_ah =
        |dst: IpAddr| ipv6_frame(ip6(V6::CLIENT), ip6(dst), NEXT_AH, &ah, &tcp_segment(client, (dst, 80), 1000, 0, TCP_SYN, &[]));
    // A hop-by-hop header claiming 16 bytes where the payload has 8.
    let short_hop_by_hop = |dst: IpAddr| {
        let mut hop = ipv6_router_alert_header(PROTO_TCP);
        hop[1] = 1;
        ipv6_frame(ip6(V6::CLIENT), ip6(dst), NEXT_HOP_BY_HOP, &hop, &[])
    };
    for (k, frame) in [behind_ah(V6::VIP), short_hop_by_hop(V6::VIP)].into_iter().enumerate() {
        let (verdict, _) = f.run(&frame);
        assert_eq!(verdict, TC_ACT_SHOT, "frame {k}");
        assert_eq!(f.counter(CNT_DROP_BAD_L4), k as u64 + 1);
    }
    for other in [behind_ah(V6::POD1), short_hop_by_hop(V6::POD1)] {
        let (verdict, out) = f.run(&other);
        assert_eq!((verdict, out), (TC_ACT_OK, other));
    }
    assert_eq!(f.counter(CNT_DROP_BAD_L4), 2);
}

/// What the parser does with malformed IPv6 headers: a wrong version nibble, an IPv4-mapped
/// source or destination (the maps' spelling of IPv4, never valid on an IPv6 wire) and an IPv6
/// header cut short are passed untouched (`CNT_PASS_BAD_L3`). A payload length larger than
/// the packet is not checked by the parser (nor is an IPv4 total length larger than the
/// packet): such a packet with a complete TCP header is translated like any other (the
/// kernel's IPv6 input then drops it as truncated).
fn malformed_ipv6_headers_pass_untouched(test: &str) {
    let Some(mut f) = Fixture::new(test) else { return };
    f.program(&cluster::<V6>());
    let good = syn::<V6>(40010);
    let mut version4 = good.clone();
    version4[14] = 0x40;
    let mut version7 = good.clone();
    version7[14] = 0x70;
    // Neither address is a frontend's or a backend's: nothing but the header check counts them.
    let mapped = [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 192, 0, 2, 1];
    let (src, dst) = (14 + 8..14 + 24, 14 + 24..14 + 40);
    let mut mapped_src = good.clone();
    mapped_src.copy_within(src.clone(), dst.start);
    mapped_src[src].copy_from_slice(&mapped);
    let mut mapped_dst = good.clone();
    mapped_dst[dst].copy_from_slice(&mapped);
    for frame in [version4, version7, mapped_src, mapped_dst] {
        let (verdict, out) = f.run(&frame);
        assert_eq!(verdict, TC_ACT_OK, "the kernel's IPv6 input validates these");
        assert_eq!(out, frame, "an invalid IPv6 header is never modified");
    }
    // 20 of the 40 header bytes: BPF_PROG_TEST_RUN refuses such a frame on a TC program
    // (EINVAL) but not on XDP, which runs the same parser.
    let cut = good[..14 + 20].to_vec();
    let (verdict, out) = f.run_xdp(&cut);
    assert_eq!((verdict, out), (XDP_PASS, cut), "a truncated IPv6 header passes untouched");
    assert_eq!(f.counter(CNT_PASS_BAD_L3), 5);
    assert_eq!(f.counter(CNT_VERDICT_DNAT), 0);
    // Payload length 1000 in a frame carrying 20 bytes: translated.
    let mut long = good.clone();
    long[18..20].copy_from_slice(&1000u16.to_be_bytes());
    let (verdict, out) = f.run(&long);
    assert_eq!(verdict, TC_ACT_OK);
    assert_eq!(out.len(), long.len());
    let fl = parse_flow(&out);
    assert!(backends::<V6>().contains(&fl.dst.ip()));
    assert_eq!((fl.src, fl.dst.port()), ((V6::CLIENT, 40010).into(), 8080));
    assert_eq!(&out[18..20], &1000u16.to_be_bytes(), "the payload length is not touched");
    let t = &out[ETH_HEADER_LEN + IPV6_HEADER_LEN..];
    let sum = pseudo_header_sum(fl.src.ip(), fl.dst.ip(), PROTO_TCP, t.len());
    assert_eq!(checksum(t, sum), 0, "TCP checksum over the 20 bytes present");
    assert_eq!(f.counter(CNT_VERDICT_DNAT), 1);
    assert_eq!(f.counter(CNT_PASS_BAD_L3), 5);
}

/// Point 41 with extension headers, the IPv6 counterpart of IPv4 options: a NodePort packet
/// carrying a hop-by-hop router alert, or the longest chain the parser follows (200 bytes
/// that put the TCP header at byte 254), is translated with the L4 header found behind them,
/// headers kept, checksum valid, over XDP and its TC fallback; so is its reply.
fn point_41_nodeport_packets_with_extension_headers_are_translated(test: &str) {
    let Some(mut f) = Fixture::node(test) else { return };
    f.program(&nodeport_cluster_state::<V6>());
    let router = ipv6_router_alert_header(PROTO_TCP);
    let mut longest = ipv6_router_alert_header(NEXT_DEST_OPTIONS);
    longest.extend(ipv6_options_header(PROTO_TCP, 192));
    let mut sport = 40100;
    for ext in [Ext::Xdp, Ext::Tc] {
        for hdrs in [&router, &longest] {
            sport += 1;
            let client = (V6::EXT_CLIENT, sport);
            let input = syn_behind(hdrs, client, (V6::NODE, NODEPORT));
            let (verdict, out) = f.run_ext(ext, &input);
            assert_eq!(verdict, ext.pass(), "{ext:?} with {} bytes of extension headers", hdrs.len());
            assert_eq!(out.len(), input.len());
            verify_checksums(&out).expect("checksum behind extension headers");
            assert_eq!(parse_ip_header(&out).next_header, NEXT_HOP_BY_HOP);
            let ext_start = ETH_HEADER_LEN + IPV6_HEADER_LEN;
            assert_eq!(&out[ext_start..ext_start + hdrs.len()], &hdrs[..], "extension headers kept");
            let fl = parse_flow(&out);
            assert!([V6::REMOTE1, V6::REMOTE2].contains(&fl.dst.ip()));
            assert_eq!(fl.dst.port(), 8080, "the port behind the extension headers was rewritten");
            assert_eq!(fl.src.ip(), V6::NODE);
            assert!(SNAT_PORTS.contains(&fl.src.port()));
            let reply_seg = tcp_segment(fl.dst, fl.src, 20, 11, TCP_SYN | TCP_ACK, b"");
            let reply = ipv6_frame(ip6(fl.dst.ip()), ip6(V6::NODE), NEXT_HOP_BY_HOP, hdrs, &reply_seg);
            let (verdict, back) = f.run_ext(ext, &reply);
            assert_eq!(verdict, ext.pass());
            verify_checksums(&back).expect("checksum of the reply behind extension headers");
            assert_eq!((parse_flow(&back).src, parse_flow(&back).dst), ((V6::NODE, NODEPORT).into(), client.into()));
        }
    }
    assert_eq!(f.counter(CNT_SNAT), 4);
}

// =============================================================================================
// The tests: every case above once with V4 and once with V6, and each family's own
// =============================================================================================

/// Instantiates cases as `#[test]`s of the module it is invoked in, each named after its case
/// (the test name the fixture logs is its module path): `both families: V4` every case written
/// for both families, with that family; `this family: a, b` the plain `fn case(test: &str)`s
/// listed.
/// A new agent loading the datapath on `f`'s pins (as after an upgrade), then exiting.
fn restart_on_the_same_pins(f: &Fixture) {
    let restarted = lb_userspace::dataplane::Dataplane::load(&lb_userspace::dataplane::DataplaneConfig {
        pin_path: f.dp.pin_path().to_owned(),
        ..Default::default()
    })
    .expect("adopting the pins");
    drop(restarted);
}

/// Programs the IPv4 cluster and starts a flow from the client's port `port` to the ClusterIP:
/// the client, the backend selected for it, and a backend selection did not pick (which only a
/// carried-over entry can send the flow to).
fn flow_and_another_backend(f: &mut Fixture, port: u16) -> (SocketAddr, SocketAddr, SocketAddr) {
    f.program(&cluster::<V4>());
    let client: SocketAddr = (V4::CLIENT, port).into();
    let selected = parse_flow(&f.run(&syn::<V4>(port)).1).dst;
    let other: SocketAddr = (*backends::<V4>().iter().find(|b| **b != selected.ip()).unwrap(), 8080).into();
    (client, selected, other)
}

/// The established IPv4 flow of `client` to the ClusterIP still goes to `other`, as a conntrack
/// hit, and its replies from `other` are translated back with valid checksums.
fn assert_flow_kept_its_backend(f: &mut Fixture, client: SocketAddr, other: SocketAddr) {
    let hits = f.counter(lb_common::CNT_CT_HIT);
    let (verdict, out) = f.run(&tcp_frame(client, (V4::VIP, 80), 1001, 1, TCP_ACK));
    assert_eq!(verdict, TC_ACT_OK);
    assert_eq!(parse_flow(&out).dst, other, "the established flow kept the backend it had before the upgrade");
    assert_eq!(f.counter(lb_common::CNT_CT_HIT), hits + 1);
    let (_, back) = f.run(&tcp_frame(other, client, 1, 1002, TCP_ACK));
    assert_eq!(parse_flow(&back).src, (V4::VIP, 80).into(), "its replies are still translated back");
    verify_checksums(&back).expect("checksums after reverse NAT");
}

/// An upgrade from a build that kept IPv4 flows in the IPv6 table (`LB_CONNTRACK`, 40-byte keys)
/// keeps every such flow on its backend: the new agent moves the entries into `LB_CONNTRACK4`
/// when it loads. The flow here is pinned to a backend that selection would not pick for it now,
/// so only its moved entries can send its packets there and translate its replies.
#[test]
fn ipv4_flows_kept_in_the_ipv6_table_by_an_older_build_keep_their_backend_after_the_upgrade() {
    use aya::maps::{HashMap as BpfHashMap, Map, MapData};
    use lb_common::{CT_DIR_FORWARD, CT_DIR_REPLY, CtKey, CtValue};
    let Some(mut f) = Fixture::new("ipv4_flows_kept_in_the_ipv6_table_by_an_older_build_keep_their_backend_after_the_upgrade")
    else {
        return;
    };
    let (client, selected, other) = flow_and_another_backend(&mut f, 40500);
    // What the older build would have written for this flow to `other`, in the IPv6 table.
    let mut tables = common::ConntrackPins::open(f.dp.pin_path());
    let (fwd, rev) = (
        conntrack_key(client, (V4::VIP, 80), PROTO_TCP, CT_DIR_FORWARD),
        conntrack_key(selected, client, PROTO_TCP, CT_DIR_REPLY),
    );
    let (mut fv, rv) = (tables.get(&fwd).expect("forward entry"), tables.get(&rev).expect("reply entry"));
    assert!(tables.remove(&CtKey::client(addr16(client.ip()), client.port().to_be(), PROTO_TCP)), "the SYN's one entry");
    fv.nat_addr = addr16(other.ip());
    let old_rev = conntrack_key(other, client, PROTO_TCP, CT_DIR_REPLY);
    let mut v6: BpfHashMap<MapData, CtKey, CtValue> =
        BpfHashMap::try_from(Map::from_map_data(MapData::from_pin(f.dp.pin_path().join(lb_common::CONNTRACK)).unwrap()).unwrap())
            .unwrap();
    v6.insert(fwd, fv, 0).unwrap();
    v6.insert(old_rev, rv, 0).unwrap();

    restart_on_the_same_pins(&f);
    assert_eq!(v6.keys().count(), 0, "IPv4 entries left in the IPv6 table");
    assert_eq!(tables.get(&fwd).map(|v| v.nat_addr), Some(addr16(other.ip())), "the forward entry moved");
    assert!(tables.get(&old_rev).is_some(), "the reply entry moved");

    assert_flow_kept_its_backend(&mut f, client, other);
}

/// An upgrade from a build that kept the one entry of an IPv4 flow without source NAT in
/// `LB_CONNTRACK4` (a 16-byte `CT_DIR_CLIENT` key) keeps the flow on its backend: the new agent
/// moves the entry into `LB_CT4_CLIENT` (8-byte keys) when it loads. The flow is pinned to a
/// backend that selection would not pick for it now, so only the moved entry can send its
/// packets there and translate its replies.
#[test]
fn ipv4_client_entries_kept_in_the_16_byte_table_by_an_older_build_keep_their_backend_after_the_upgrade() {
    use lb_common::CtKey;
    let Some(mut f) =
        Fixture::new("ipv4_client_entries_kept_in_the_16_byte_table_by_an_older_build_keep_their_backend_after_the_upgrade")
    else {
        return;
    };
    let (client, _, other) = flow_and_another_backend(&mut f, 40600);
    let mut tables = common::ConntrackPins::open(f.dp.pin_path());
    let key = CtKey::client(addr16(client.ip()), client.port().to_be(), PROTO_TCP);
    let mut v = tables.raw(&key).expect("the SYN's one entry, in the client table");
    assert_eq!(tables.get_16_byte_key(&key), None, "a new flow's entry is not written in the 16-byte table");
    // What the older build would have written for this flow to `other`: the same entry under
    // the 16-byte key.
    assert!(tables.remove(&key));
    v.nat_addr = addr16(other.ip());
    tables.insert_as_16_byte_key(&key, v);

    restart_on_the_same_pins(&f);
    assert_eq!(tables.get_16_byte_key(&key), None, "the client entry left the 16-byte table");
    assert_eq!(tables.raw(&key).map(|v| v.nat_addr), Some(addr16(other.ip())), "the client entry moved");

    assert_flow_kept_its_backend(&mut f, client, other);
}

/// The datapath's clock (jiffies, calibrated at load against the kernel's coarse monotonic clock)
/// is the agent's CLOCK_MONOTONIC: a new flow's conntrack entry carries the time it was made, as
/// the sweep and `lb conntrack list` read it. The coarse clock is the monotonic time of a recent
/// tick: never ahead of a reading taken after the packet, and a tick or two behind one taken
/// before it (4–8 ms at HZ 250 here); a wrong HZ or offset is off by far more.
#[test]
fn a_new_flows_entry_carries_the_agents_monotonic_time() {
    let Some(mut f) = Fixture::new("a_new_flows_entry_carries_the_agents_monotonic_time") else { return };
    let cal = f.dp.clock().expect("reading the clock calibration").expect("this kernel runs the calibrated clock");
    f.program(&cluster::<V4>());
    let ct = common::ConntrackPins::open(f.dp.pin_path());
    for sport in 41000..41006 {
        let before = lb_userspace::maps::monotonic_ns();
        let (verdict, _) = f.run(&syn::<V4>(sport));
        let after = lb_userspace::maps::monotonic_ns();
        assert_eq!(verdict, TC_ACT_OK);
        let key = conntrack_key((V4::CLIENT, sport), (V4::VIP, 80), PROTO_TCP, lb_common::CT_DIR_FORWARD);
        let stamped = ct.get(&key).expect("the SYN's forward entry").last_seen_ns;
        assert!(
            stamped <= after && stamped + 3 * cal.tick_ns >= before,
            "entry stamped {stamped}, agent's clock {before}..{after} ({cal:?})"
        );
        std::thread::sleep(Duration::from_millis(7));
    }
}

/// A restarted agent's programs run another calibration of the clock than the ones that stamped
/// the live entries (or, after an upgrade, the helper clock): an entry may carry a time a tick
/// after what the new programs read. That flow is live, not expired: its packets keep their
/// backend and its replies are translated back.
#[test]
fn entries_stamped_a_little_ahead_by_earlier_programs_stay_live() {
    let Some(mut f) = Fixture::new("entries_stamped_a_little_ahead_by_earlier_programs_stay_live") else { return };
    f.program(&cluster::<V4>());
    let backend = parse_flow(&f.run(&syn::<V4>(41100)).1).dst;
    let mut ct = common::ConntrackPins::open(f.dp.pin_path());
    let ahead = lb_userspace::maps::monotonic_ns() + 8_000_000;
    // A flow without SNAT has one entry, keyed by its client, for both directions.
    let key = lb_common::CtKey::client(addr16(V4::CLIENT), 41100u16.to_be(), PROTO_TCP);
    let v = ct.raw(&key).expect("the SYN's entry");
    ct.insert(&key, lb_common::CtValue { last_seen_ns: ahead, ..v });
    let hits = f.counter(lb_common::CNT_CT_HIT);
    let (_, out) = f.run(&tcp_frame((V4::CLIENT, 41100), (V4::VIP, 80), 1, 1, TCP_ACK));
    assert_eq!(parse_flow(&out).dst, backend, "the established flow keeps its backend");
    assert_eq!(f.counter(lb_common::CNT_CT_HIT), hits + 1, "a conntrack hit, not a new selection");
    let (_, back) = f.run(&tcp_frame(backend, (V4::CLIENT, 41100), 1, 2, TCP_ACK));
    assert_eq!(parse_flow(&back).src, (V4::VIP, 80).into(), "its reply is translated back");
}

/// Released ids start from zero for their next owner, and only they: the counter arrays hold
/// blocks of 64 ids, and zeroing one id leaves the other ids of its block (another backend that
/// keeps serving) and the ServicePort's counters as they were.
#[test]
fn a_released_backends_counters_are_zeroed_and_its_neighbours_keep_theirs() {
    let Some(mut f) = Fixture::new("a_released_backends_counters_are_zeroed_and_its_neighbours_keep_theirs") else { return };
    f.program(&cluster::<V4>());
    let mut reached = BTreeSet::new();
    for sport in 42000..42064 {
        let (verdict, out) = f.run(&syn::<V4>(sport));
        assert_eq!(verdict, TC_ACT_OK);
        reached.insert(parse_flow(&out).dst.ip());
    }
    let ids: Vec<u32> = reached.iter().map(|ip| f.backend_id(*ip, 8080, PROTO_TCP)).collect();
    assert!(ids.len() >= 2 && ids.iter().all(|id| *id / lb_common::STATS_BLOCK == ids[0] / lb_common::STATS_BLOCK));
    let pins = PinnedMaps::open(f.dp.pin_path()).expect("open pins");
    let before = pins.backend_counters().expect("backend counters");
    let svc = f.svc_id(V4::VIP, 80, PROTO_TCP);
    let svc_before = stats_of(&pins.service_counters().unwrap(), svc);
    let (gone, kept) = (ids[0], ids[1]);
    assert!(stats_of(&before, gone).packets > 0 && stats_of(&before, kept).packets > 0);

    let released = lb_userspace::plan::memory::Released { svc_ids: vec![], backends: vec![(gone, None)], ..Default::default() };
    f.dp.zero_counters(&released).expect("zeroing the released id's counters");
    let after = pins.backend_counters().unwrap();
    assert_eq!(stats_of(&after, gone), FlowCounters::default(), "the released id starts from zero");
    for id in &ids[1..] {
        assert_eq!(stats_of(&after, *id), stats_of(&before, *id), "backend id {id} of the same block keeps its counts");
    }
    assert_eq!(stats_of(&pins.service_counters().unwrap(), svc), svc_before);
}

/// An agent of this build started on the pins of a build whose counter arrays hold one id an
/// entry: the arrays are replaced by arrays of blocks and the counts carried over, ids in the
/// first and in later blocks alike; the datapath loads and counts on.
#[test]
fn counter_arrays_pinned_by_an_earlier_build_are_replaced_with_their_counts_carried_over() {
    let test = "counter_arrays_pinned_by_an_earlier_build_are_replaced_with_their_counts_carried_over";
    let Some(mut f) = Fixture::new(test) else { return };
    let pin_path = f.dp.pin_path().to_path_buf();
    let cpus = aya::util::nr_cpus().unwrap();
    // The earlier build's LB_SVC_STATS: 256 ids, one per-CPU entry each.
    std::fs::remove_file(pin_path.join(lb_common::SVC_STATS)).unwrap();
    let old = common::create_pinned_map(&pin_path.join(lb_common::SVC_STATS), 6 /* per-CPU array */, 4, 24, 256);
    let mut arr: aya::maps::PerCpuArray<_, FlowCounters> =
        aya::maps::PerCpuArray::try_from(aya::maps::Map::PerCpuArray(old)).unwrap();
    let counts = |id: u32, cpu: usize| FlowCounters {
        packets: u64::from(id) * 10 + cpu as u64,
        bytes: 1000 + u64::from(id),
        new_flows: 1,
    };
    for id in [3u32, 70, 200] {
        let vals = aya::maps::PerCpuValues::try_from((0..cpus).map(|cpu| counts(id, cpu)).collect::<Vec<_>>()).unwrap();
        arr.set(id, vals, 0).unwrap();
    }
    drop(arr);

    let cfg = lb_userspace::dataplane::DataplaneConfig { pin_path: pin_path.clone(), ..Default::default() };
    let restarted = lb_userspace::dataplane::Dataplane::load(&cfg).expect("loading over the earlier build's pins");
    assert!(restarted.limits().svc_stats >= 256, "room for every id the old array held");
    let data = aya::maps::MapData::from_pin(pin_path.join(lb_common::SVC_STATS)).unwrap();
    assert_eq!(data.info().unwrap().value_size() as usize, size_of::<lb_common::FlowCounterBlock>());
    let blocks: aya::maps::PerCpuArray<_, lb_common::FlowCounterBlock> =
        aya::maps::PerCpuArray::try_from(aya::maps::Map::PerCpuArray(data)).unwrap();
    for id in [3u32, 70, 200, 4] {
        let per_cpu = blocks.get(&(id / lb_common::STATS_BLOCK), 0).unwrap();
        for (cpu, block) in per_cpu.iter().enumerate() {
            let want = if id == 4 { FlowCounters::default() } else { counts(id, cpu) };
            assert_eq!(block.ids[(id % lb_common::STATS_BLOCK) as usize], want, "id {id}, CPU {cpu}");
        }
    }
    assert!(!pin_path.join(format!("replaced_{}", lb_common::SVC_STATS)).exists(), "the old array's pin is gone");
    // The new programs count into the new arrays.
    f.dp = restarted;
    f.program(&cluster::<V4>());
    let svc = f.svc_id(V4::VIP, 80, PROTO_TCP);
    let pins = PinnedMaps::open(&pin_path).unwrap();
    let carried = stats_of(&pins.service_counters().unwrap(), svc).new_flows;
    let (verdict, _) = f.run(&syn::<V4>(42100));
    assert_eq!(verdict, TC_ACT_OK);
    assert_eq!(stats_of(&pins.service_counters().unwrap(), svc).new_flows, carried + 1);
}

/// An agent of this build started on the pins of a build whose Maglev chunks held 64 slots: the
/// tables are regrouped into this build's chunks before its programs see them, so they hold the
/// same backends slot for slot, and new flows after the restart still reach every backend.
#[test]
fn maglev_tables_pinned_by_an_earlier_build_are_regrouped_into_this_builds_chunks() {
    use aya::maps::{HashMap as BpfHashMap, Map, MapData};
    let test = "maglev_tables_pinned_by_an_earlier_build_are_regrouped_into_this_builds_chunks";
    let Some(mut f) = Fixture::new(test) else { return };
    let all = maglev_backends::<V4>();
    maglev_choices::<V4>(&mut f, &all);
    let pin_path = f.dp.pin_path().to_path_buf();
    let open_maglev = || {
        let data = MapData::from_pin(pin_path.join(lb_common::MAGLEV)).unwrap();
        BpfHashMap::<MapData, lb_common::MaglevKey, lb_common::MaglevChunk>::try_from(Map::HashMap(data)).unwrap()
    };
    let original: BTreeMap<lb_common::MaglevKey, lb_common::MaglevChunk> = open_maglev().iter().map(|e| e.unwrap()).collect();
    assert!(!original.is_empty());

    // The earlier build's LB_MAGLEV: the same tables in chunks of 64 slots.
    const OLD: usize = 64;
    let per = lb_common::MAGLEV_CHUNK as usize / OLD;
    std::fs::remove_file(pin_path.join(lb_common::MAGLEV)).unwrap();
    let old = common::create_pinned_map(&pin_path.join(lb_common::MAGLEV), 1 /* hash */, 8, 4 * OLD as u32, 4096);
    let mut old: BpfHashMap<MapData, lb_common::MaglevKey, [u32; OLD]> = BpfHashMap::try_from(Map::HashMap(old)).unwrap();
    for (k, chunk) in &original {
        for part in 0..per {
            let ids: [u32; OLD] = chunk.ids[part * OLD..][..OLD].try_into().unwrap();
            let key = lb_common::MaglevKey { select_id: k.select_id, chunk: k.chunk * per as u32 + part as u32 };
            old.insert(key, ids, 0).unwrap();
        }
    }
    drop(old);

    let cfg = lb_userspace::dataplane::DataplaneConfig { pin_path: pin_path.clone(), ..Default::default() };
    let restarted = lb_userspace::dataplane::Dataplane::load(&cfg).expect("loading over the earlier build's pins");
    let converted: BTreeMap<lb_common::MaglevKey, lb_common::MaglevChunk> = open_maglev().iter().map(|e| e.unwrap()).collect();
    assert_eq!(converted, original, "every table holds the same backends, slot for slot");
    assert_eq!(restarted.state().maglev.len(), original.len(), "the agent's copy of the maps is the converted one");
    assert!(!pin_path.join(format!("replaced_{}", lb_common::MAGLEV)).exists(), "the old map's pin is gone");

    // New flows (source ports the old programs never saw) through the new programs.
    f.dp = restarted;
    let mut reached = BTreeSet::new();
    for i in 0..100u16 {
        let src = SocketAddr::new(V4::pod_address(9, (i % 50) as u8 + 1), 50000 + i);
        let (verdict, out) = f.run(&tcp_frame(src, (V4::VIP, 80), 1000, 0, TCP_SYN));
        assert_eq!(verdict, TC_ACT_OK);
        reached.insert(parse_flow(&out).dst.ip());
    }
    assert_eq!(reached.into_iter().collect::<Vec<_>>(), all.to_vec(), "new flows reach every backend");
}

macro_rules! instantiate {
    (both families: $family:ident) => {
        instantiate!(@tests [::<$family>]
            point_22_syn_to_clusterip_is_dnated_to_a_backend_with_valid_checksums,
            point_23_reply_from_backend_is_reverse_nated_to_the_clusterip,
            point_23_every_packet_of_a_flow_keeps_its_backend,
            point_22_new_flows_reach_every_backend,
            udp_to_clusterip_is_translated_both_ways_with_valid_checksums,
            udp_without_checksum_stays_without_checksum,
            frontend_port_equal_to_the_target_port_keeps_valid_checksums_both_ways,
            traffic_that_is_not_for_a_service_passes_untouched,
            truncated_l4_header_to_a_service_address_is_dropped,
            point_62_later_fragments_follow_their_first_fragment_and_orphans_to_a_service_are_dropped,
            point_62_fragmented_datagram_to_a_udp_nodeport_is_translated_over_xdp,
            point_37_service_without_endpoints_rejects_tcp_with_rst_and_udp_with_icmp_port_unreachable,
            point_37_resets_for_other_segments_follow_rfc_793,
            point_37_a_reset_to_a_service_without_endpoints_is_not_answered,
            point_37_nodeport_without_endpoints_rejects_over_xdp,
            point_57_udp_flow_moves_when_its_backend_is_removed_and_tcp_flow_stays,
            point_57_udp_flow_leaves_a_backend_removed_from_its_service_while_another_keeps_it,
            point_57_udp_flow_stays_on_a_terminating_backend_that_still_serves,
            point_23_a_retransmitted_syn_restores_a_lost_reply_entry,
            point_23_per_service_and_per_backend_counters_count_every_packet_of_a_flow,
            point_63_nodeport_to_a_host_backend_keeps_the_client_and_its_reply_is_translated_on_egress,
            point_63_clusterip_from_a_pod_to_a_host_backend_is_translated_back_on_the_pod_egress,
            point_22_maglev_picks_the_same_backend_for_a_flow_on_every_node_and_reaches_all,
            point_22_maglev_removing_one_of_five_backends_keeps_the_flows_of_the_others,
            point_22_maglev_removing_one_of_three_backends_keeps_the_flows_of_the_others,
            point_24_25_client_ip_affinity_sends_every_connection_of_a_client_to_one_backend,
            point_25_affinity_applies_whichever_address_of_the_service_is_used,
            point_28_toggling_affinity_takes_effect_for_new_connections,
            point_26_affinity_slides_with_each_connection_and_expires_after_the_timeout,
            point_27_a_remembered_backend_removed_from_the_set_is_not_used,
            point_32_41_nodeport_over_xdp_with_cluster_policy_is_snated_and_reverse_translated,
            point_32_41_nodeport_over_tc_fallback_with_cluster_policy_is_snated_and_reverse_translated,
            point_33_local_policy_nodeport_keeps_the_client_source_and_uses_local_endpoints,
            point_33_38_local_policy_without_local_endpoint_drops_external_traffic,
            point_34_pod_to_nodeport_of_local_policy_service_uses_the_cluster_set,
            point_48_load_balancer_source_ranges_restrict_only_the_load_balancer_ip,
            point_51_pod_reaching_itself_through_its_service_is_hairpinned,
            point_51_pod_reaching_itself_through_its_nodeport_is_hairpinned,
            point_58_icmp_errors_about_a_clusterip_flow_are_translated_back,
            point_58_icmp_error_from_the_client_about_a_reply_reaches_the_backend,
            point_58_icmp_error_about_a_snated_nodeport_flow_reaches_the_client_over_xdp,
            point_58_icmp_error_about_a_snated_nodeport_flow_reaches_the_client_over_tc_fallback,
        );
    };
    (this family: $($case:ident),+ $(,)?) => {
        instantiate!(@tests [] $($case),+);
    };
    (@tests [$($generics:tt)*] $case:ident $(, $rest:ident)* $(,)?) => {
        #[test]
        fn $case() {
            super::$case$($generics)*(concat!(module_path!(), "::", stringify!($case)));
        }
        instantiate!(@tests [$($generics)*] $($rest),*);
    };
    (@tests [$($generics:tt)*]) => {};
}

/// IPv4: every case, and the IPv4-only ones.
mod v4 {
    use super::V4;

    instantiate!(both families: V4);
    instantiate!(
        this family: ipv4_options_are_honoured,
        malformed_ipv4_headers_pass_untouched,
        point_32_snat_reply_entries_live_in_port_slots_and_a_taken_slot_falls_back_to_the_backends_ports,
        point_32_an_external_flows_snat_port_is_picked_by_its_hash_and_its_packets_find_its_slot,
        point_33_packets_to_a_local_policy_frontend_find_their_client_entry_before_any_snat_slot,
        point_41_nodeport_packets_with_ipv4_options_are_translated,
    );
}

/// IPv6: every case, and the IPv6-only ones.
mod v6 {
    use super::V6;

    instantiate!(both families: V6);
    instantiate!(
        this family: hop_by_hop_and_destination_options_are_honoured,
        unfollowed_or_truncated_extension_headers_to_a_service_address_are_dropped,
        malformed_ipv6_headers_pass_untouched,
        point_41_nodeport_packets_with_extension_headers_are_translated,
    );
}
