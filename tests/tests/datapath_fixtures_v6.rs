//! The IPv6 twins of the BPF_PROG_TEST_RUN fixtures: the same programs, the same maps (16-byte
//! addresses), IPv6 frames. Point numbers refer to k8s-service-semantics.md section 1.

mod common;

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, Ipv6Addr},
    time::Duration,
};

use common::{Ext, Fixture, TC_ACT_OK, TC_ACT_REDIRECT, TC_ACT_SHOT, XDP_DROP, XDP_PASS, XDP_TX};
use lb_common::{
    CFG_F_HAIRPIN6_READY, CFG_F_SNAT6_READY, CNT_AFFINITY_HIT, CNT_CT_RESELECT, CNT_DROP_BAD_L4, CNT_DROP_FRAGMENT,
    CNT_DROP_NO_BACKEND, CNT_DROP_NO_LOCAL_BACKEND, CNT_DROP_SOURCE_RANGE, CNT_FRAG_FOLLOWED, CNT_HAIRPIN, CNT_ICMP_TRANSLATED,
    CNT_NEW_FLOWS, CNT_PASS_BAD_L3, CNT_PASS_NOT_IP, CNT_REJECT_ICMP, CNT_REJECT_TCP, CNT_SNAT, CNT_VERDICT_DNAT,
    CNT_VERDICT_DROP, CNT_VERDICT_PASS, CNT_VERDICT_REJECT, CNT_VERDICT_REVNAT, FlowCounters, IPPROTO_TCP, IPPROTO_UDP,
};
use lb_tests::{
    packet::{MAC_DST, MAC_SRC, checksum},
    packet6::{
        Chain, DADDR_OFF, Frag6, ICMPV6_DEST_UNREACH, ICMPV6_PARAMPROB, ICMPV6_PKT_TOOBIG, ICMPV6_PORT_UNREACH,
        ICMPV6_TIME_EXCEED, NEXT_AH, NEXT_DEST, NEXT_FRAGMENT, NEXT_HOP, NEXT_ICMPV6, NEXT_ROUTING, NEXT_TCP, NEXT_UDP,
        SADDR_OFF, chain, flow, fragment, fragment_header, frame, hop_by_hop, icmp_error, icmp6, ipv6, l4_bytes, options_header,
        packet, pseudo_sum, quote_tcp, router_alert, routing_header, tcp, tcp_frame, tcp_frame_ack, tcp_info, tcp_segment, udp,
        udp_frame, verify_checksum, verify_udp_datagram, with_addr,
    },
};
use lb_userspace::{
    maps::pinned::PinnedMaps,
    model::{
        Cidr, DesiredState, Endpoint, EndpointSet, Family, Frontend, FrontendKind, Protocol, Selection, ServicePortName,
        ServicePortState,
    },
};

const TCP_SYN: u8 = 0x02;
const TCP_ACK: u8 = 0x10;
const TCP_RST: u8 = 0x04;

fn a(s: &str) -> Ipv6Addr {
    s.parse().unwrap()
}

fn vip() -> Ipv6Addr {
    a("fd00:96::10")
}
fn udp_vip() -> Ipv6Addr {
    a("fd00:96::20")
}
fn empty_vip() -> Ipv6Addr {
    a("fd00:96::30")
}
fn client() -> Ipv6Addr {
    a("fd00:244::50")
}
fn pods() -> [Ipv6Addr; 3] {
    [a("fd00:244::11"), a("fd00:244::12"), a("fd00:244::13")]
}
fn node() -> Ipv6Addr {
    a("fd00:77::1")
}
fn ext_client() -> Ipv6Addr {
    a("fd00:77::50")
}
fn hairpin() -> Ipv6Addr {
    a("fd00:6c62::1")
}

fn ep(ip: Ipv6Addr, port: u16, local: bool) -> Endpoint {
    Endpoint { addr: IpAddr::V6(ip), port, local, terminating: false, host: false }
}

fn port_state(frontends: Vec<Frontend>, eps: Vec<Endpoint>, selection: Selection) -> ServicePortState {
    let set = EndpointSet { endpoints: eps, drop_if_empty: false };
    ServicePortState {
        frontends,
        internal: set.clone(),
        cluster: set.endpoints.clone(),
        serving: set.endpoints.clone(),
        external: set,
        external_snat: true,
        source_ranges: Vec::new(),
        affinity_timeout_s: None,
        selection,
    }
}

fn name(n: &str, protocol: Protocol) -> ServicePortName {
    ServicePortName { namespace: "default".into(), name: n.into(), port_name: String::new(), protocol, family: Family::V6 }
}

fn clusterip(ip: Ipv6Addr, port: u16) -> Frontend {
    Frontend { addr: IpAddr::V6(ip), port, kind: FrontendKind::ClusterIp }
}

/// TCP kubia on fd00:96::10:80 → three pods :8080, UDP fd00:96::20:53 → two pods :9000, an empty
/// service, and a NodePort service on the node's IPv6 address with an LB IP restricted to
/// fd00:77::/112.
fn cluster() -> DesiredState {
    let [p1, p2, p3] = pods();
    let mut d = DesiredState::default();
    d.services.insert(
        name("kubia", Protocol::Tcp),
        port_state(
            vec![clusterip(vip(), 80)],
            vec![ep(p1, 8080, true), ep(p2, 8080, true), ep(p3, 8080, true)],
            Selection::Random,
        ),
    );
    d.services.insert(
        name("dns", Protocol::Udp),
        port_state(vec![clusterip(udp_vip(), 53)], vec![ep(p1, 9000, true), ep(p2, 9000, true)], Selection::Random),
    );
    d.services.insert(name("empty", Protocol::Tcp), port_state(vec![clusterip(empty_vip(), 80)], vec![], Selection::Random));
    d.services.insert(name("empty", Protocol::Udp), port_state(vec![clusterip(empty_vip(), 53)], vec![], Selection::Random));
    let mut np = port_state(
        vec![
            clusterip(a("fd00:96::40"), 80),
            Frontend { addr: IpAddr::V6(node()), port: 30080, kind: FrontendKind::NodePort },
            Frontend { addr: IpAddr::V6(a("2001:db8::7")), port: 80, kind: FrontendKind::LoadBalancer },
        ],
        vec![ep(a("fd00:244:1::21"), 8080, false)],
        Selection::Maglev,
    );
    np.source_ranges = vec![Cidr { addr: IpAddr::V6(a("fd00:77::")), prefix: 112 }];
    d.services.insert(name("np", Protocol::Tcp), np);
    d
}

fn fixture(test: &str) -> Option<Fixture> {
    let mut f = Fixture::with_config(
        test,
        &lb_common::Config {
            snat6_addr: node().octets(),
            hairpin6_addr: hairpin().octets(),
            snat_port_min: 61000,
            snat_port_max: 65000,
            flags: CFG_F_SNAT6_READY | CFG_F_HAIRPIN6_READY,
            ..Default::default()
        },
    )?;
    f.program(&cluster());
    Some(f)
}

#[test]
fn point_22_v6_syn_to_clusterip_is_dnated_with_a_valid_checksum_and_reaches_every_backend() {
    let Some(f) = fixture("point_22_v6_syn_to_clusterip_is_dnated_with_a_valid_checksum_and_reaches_every_backend") else {
        return;
    };
    let mut seen = BTreeSet::new();
    for sport in 40000..40060 {
        let (verdict, out) = f.run(&tcp_frame((client(), sport), (vip(), 80), 1000, TCP_SYN));
        assert_eq!(verdict, TC_ACT_OK);
        let fl = flow(&out);
        assert!(pods().contains(&fl.dst.0), "destination {} is not a backend", fl.dst.0);
        assert_eq!((fl.dst.1, fl.src), (8080, (client(), sport)));
        verify_checksum(&out).expect("TCP checksum after DNAT (IPv6 pseudo-header)");
        seen.insert(fl.dst.0);
    }
    assert_eq!(seen.len(), 3, "60 new flows reach all three backends");
    assert_eq!(f.counter(CNT_VERDICT_DNAT), 60);
}

#[test]
fn point_23_v6_reply_is_reverse_nated_and_the_flow_keeps_its_backend() {
    let Some(f) = fixture("point_23_v6_reply_is_reverse_nated_and_the_flow_keeps_its_backend") else { return };
    let (_, out) = f.run(&tcp_frame((client(), 40001), (vip(), 80), 1000, TCP_SYN));
    let backend = flow(&out).dst;
    for _ in 0..10 {
        let (_, out) = f.run(&tcp_frame((client(), 40001), (vip(), 80), 1001, TCP_ACK));
        assert_eq!(flow(&out).dst, backend, "an established flow moved");
    }
    let (verdict, back) = f.run(&tcp_frame(backend, (client(), 40001), 5000, TCP_SYN | TCP_ACK));
    assert_eq!(verdict, TC_ACT_OK);
    assert_eq!(flow(&back).src, (vip(), 80), "the client sees the ClusterIP");
    verify_checksum(&back).expect("checksum after reverse NAT");
    assert_eq!(f.counter(CNT_VERDICT_REVNAT), 1);
}

#[test]
fn v6_udp_is_translated_both_ways() {
    let Some(f) = fixture("v6_udp_is_translated_both_ways") else { return };
    let (_, out) = f.run(&udp_frame((client(), 5353), (udp_vip(), 53), b"query"));
    let fl = flow(&out);
    assert_eq!((fl.next, fl.dst.1), (NEXT_UDP, 9000));
    verify_checksum(&out).unwrap();
    let (_, back) = f.run(&udp_frame(fl.dst, (client(), 5353), b"answer"));
    assert_eq!(flow(&back).src, (udp_vip(), 53));
    verify_checksum(&back).unwrap();
}

#[test]
fn v6_extension_headers_policy() {
    let Some(f) = fixture("v6_extension_headers_policy") else { return };
    // A hop-by-hop header is skipped: the segment behind it is translated.
    let seg = tcp((client(), 40002), (vip(), 80), 1000, TCP_SYN, &[]);
    let (verdict, out) = f.run(&frame(&packet(client(), vip(), NEXT_HOP, &hop_by_hop(NEXT_TCP), &seg)));
    assert_eq!(verdict, TC_ACT_OK);
    let l4 = &out[14 + 40 + 8..];
    let dport = u16::from_be_bytes([l4[2], l4[3]]);
    assert_eq!(dport, 8080, "the port behind the extension header was rewritten");
    let dst = Ipv6Addr::from(<[u8; 16]>::try_from(&out[38..54]).unwrap());
    assert!(pods().contains(&dst));
    let sum = checksum(l4, pseudo_sum(client(), dst, NEXT_TCP, l4.len()));
    assert_eq!(sum, 0, "TCP checksum behind the extension header");
    // An AH header is not followed: to a service address it is dropped, never leaked.
    let mut ah = vec![NEXT_TCP, 4, 0, 0];
    ah.extend_from_slice(&[0u8; 20]);
    let (verdict, _) = f.run(&frame(&packet(client(), vip(), NEXT_AH, &ah, &seg)));
    assert_eq!(verdict, TC_ACT_SHOT);
    assert_eq!(f.counter(CNT_DROP_BAD_L4), 1);
    // Not addressed to a service: untouched, extension headers or not.
    let other = frame(&packet(client(), pods()[0], NEXT_AH, &ah, &seg));
    let (verdict, out) = f.run(&other);
    assert_eq!((verdict, out), (TC_ACT_OK, other));
}

#[test]
fn point_62_v6_later_fragments_follow_their_first_fragment() {
    let Some(f) = fixture("point_62_v6_later_fragments_follow_their_first_fragment") else { return };
    let datagram = udp((client(), 5400), (udp_vip(), 53), &[7u8; 64]);
    let first = frame(&packet(client(), udp_vip(), NEXT_FRAGMENT, &fragment_header(NEXT_UDP, 0, true, 77), &datagram[..48]));
    let later = frame(&packet(client(), udp_vip(), NEXT_FRAGMENT, &fragment_header(NEXT_UDP, 6, false, 77), &datagram[48..]));
    let (v1, out1) = f.run(&first);
    assert_eq!(v1, TC_ACT_OK);
    let dst = Ipv6Addr::from(<[u8; 16]>::try_from(&out1[38..54]).unwrap());
    assert!(pods()[..2].contains(&dst));
    let (v2, out2) = f.run(&later);
    assert_eq!(v2, TC_ACT_OK);
    assert_eq!(&out2[38..54], &out1[38..54], "the later fragment goes to the same backend");
    assert_eq!(&out2[54..], &later[54..], "nothing but the address changes in a later fragment");
    assert_eq!(f.counter(CNT_FRAG_FOLLOWED), 1);
}

#[test]
fn point_37_v6_no_endpoints_answers_rst_and_icmpv6_port_unreachable() {
    let Some(f) = fixture("point_37_v6_no_endpoints_answers_rst_and_icmpv6_port_unreachable") else { return };
    let (verdict, out) = f.run(&tcp_frame((client(), 40003), (empty_vip(), 80), 700, TCP_SYN));
    assert_eq!(verdict, TC_ACT_REDIRECT);
    assert_eq!(out.len(), 74, "Ethernet + IPv6 + TCP");
    let fl = flow(&out);
    assert_eq!((fl.src, fl.dst, fl.next), ((empty_vip(), 80), (client(), 40003), NEXT_TCP));
    assert_eq!(out[54 + 13], 0x14, "RST|ACK");
    assert_eq!(u32::from_be_bytes([out[62], out[63], out[64], out[65]]), 701, "ack = seq + 1");
    verify_checksum(&out).expect("RST checksum");
    let (verdict, out) = f.run(&udp_frame((client(), 5401), (empty_vip(), 53), b"q"));
    assert_eq!(verdict, TC_ACT_REDIRECT);
    assert_eq!(out.len(), 110, "Ethernet + IPv6 + ICMPv6 + quoted IPv6 header + 8 bytes");
    assert_eq!((out[20], out[54], out[55]), (NEXT_ICMPV6, 1, 4), "ICMPv6 destination unreachable, port unreachable");
    assert_eq!(&out[22..38], &empty_vip().octets());
    verify_checksum(&out).expect("ICMPv6 checksum");
    assert_eq!((f.counter(CNT_REJECT_TCP), f.counter(CNT_REJECT_ICMP)), (1, 1));
    // Never answer a RST.
    let (verdict, _) = f.run(&tcp_frame((client(), 40004), (empty_vip(), 80), 700, TCP_RST));
    assert_eq!(verdict, TC_ACT_SHOT);
}

#[test]
fn point_32_v6_nodeport_over_xdp_and_tc_is_snated_and_reverse_translated() {
    for ext in [Ext::Xdp, Ext::Tc] {
        let Some(f) = fixture("point_32_v6_nodeport_over_xdp_and_tc_is_snated_and_reverse_translated") else { return };
        let (verdict, out) = f.run_ext(ext, &tcp_frame((ext_client(), 40000), (node(), 30080), 1, TCP_SYN));
        assert_eq!(verdict, ext.pass(), "{ext:?}");
        let fl = flow(&out);
        assert_eq!(fl.dst, (a("fd00:244:1::21"), 8080), "{ext:?}");
        assert_eq!(fl.src.0, node(), "{ext:?}: SNAT to the node's IPv6 address");
        assert!((61000..=65000).contains(&fl.src.1), "{ext:?}: SNAT port {}", fl.src.1);
        verify_checksum(&out).unwrap();
        let (verdict, back) = f.run_ext(ext, &tcp_frame(fl.dst, fl.src, 9, TCP_SYN | TCP_ACK));
        assert_eq!(verdict, ext.pass());
        let b = flow(&back);
        assert_eq!((b.src, b.dst), ((node(), 30080), (ext_client(), 40000)), "{ext:?}");
        verify_checksum(&back).unwrap();
    }
}

#[test]
fn point_48_v6_source_ranges_restrict_the_load_balancer_ip() {
    let Some(f) = fixture("point_48_v6_source_ranges_restrict_the_load_balancer_ip") else { return };
    let (verdict, _) = f.run_xdp(&tcp_frame((ext_client(), 40000), (a("2001:db8::7"), 80), 1, TCP_SYN));
    assert_eq!(verdict, Ext::Xdp.pass());
    let (verdict, _) = f.run_xdp(&tcp_frame((a("fd00:78::9"), 40000), (a("2001:db8::7"), 80), 1, TCP_SYN));
    assert_eq!(verdict, Ext::Xdp.drop(), "outside fd00:77::/112");
}

#[test]
fn point_51_v6_a_pod_reaches_itself_through_its_service() {
    let Some(mut f) = fixture("point_51_v6_a_pod_reaches_itself_through_its_service") else { return };
    let p = pods()[0];
    let mut d = DesiredState::default();
    d.services
        .insert(name("self", Protocol::Tcp), port_state(vec![clusterip(vip(), 80)], vec![ep(p, 8080, true)], Selection::Random));
    f.program(&d);
    let (_, out) = f.run(&tcp_frame((p, 40005), (vip(), 80), 1, TCP_SYN));
    let fl = flow(&out);
    assert_eq!((fl.src, fl.dst), ((hairpin(), 40005), (p, 8080)));
    verify_checksum(&out).unwrap();
    let (_, back) = f.run(&tcp_frame((p, 8080), (hairpin(), 40005), 1, TCP_SYN | TCP_ACK));
    let b = flow(&back);
    assert_eq!((b.src, b.dst), ((vip(), 80), (p, 40005)));
    verify_checksum(&back).unwrap();
}

#[test]
fn point_58_v6_packet_too_big_from_the_backend_reaches_the_client_translated() {
    let Some(f) = fixture("point_58_v6_packet_too_big_from_the_backend_reaches_the_client_translated") else { return };
    let (_, out) = f.run(&tcp_frame((client(), 40006), (vip(), 80), 1000, TCP_SYN));
    let backend = flow(&out).dst;
    // The backend's packet-too-big quotes what it received: client → backend.
    let quoted = packet(client(), backend.0, NEXT_TCP, &[], &tcp((client(), 40006), backend, 1000, TCP_ACK, &[0u8; 8]));
    let icmp = icmp_error(backend.0, client(), 2, 0, 1280u32.to_be_bytes(), &quoted);
    let (verdict, out) = f.run(&frame(&packet(backend.0, client(), NEXT_ICMPV6, &[], &icmp)));
    assert_eq!(verdict, TC_ACT_OK);
    assert_eq!(&out[22..38], &vip().octets(), "the error appears to come from the ClusterIP");
    let inner = 14 + 40 + 8;
    assert_eq!(&out[inner + 24..inner + 40], &vip().octets(), "quoted destination translated back");
    assert_eq!(u16::from_be_bytes([out[inner + 42], out[inner + 43]]), 80, "quoted port translated back");
    verify_checksum(&out).expect("ICMPv6 checksum (pseudo-header with the new outer source)");
    assert_eq!(f.counter(CNT_ICMP_TRANSLATED), 1);
}

#[test]
fn point_22_v6_maglev_picks_the_same_backend_on_every_node() {
    let Some(f1) = fixture("point_22_v6_maglev_picks_the_same_backend_on_every_node") else { return };
    let Some(f2) = fixture("point_22_v6_maglev_picks_the_same_backend_on_every_node") else { return };
    let mut d = DesiredState::default();
    let eps: Vec<Endpoint> = (1..=5).map(|i| ep(format!("fd00:244::{i}").parse().unwrap(), 8080, true)).collect();
    let mut rev = eps.clone();
    rev.reverse();
    d.services.insert(name("m", Protocol::Tcp), port_state(vec![clusterip(vip(), 80)], eps, Selection::Maglev));
    let mut d2 = DesiredState::default();
    d2.services.insert(name("m", Protocol::Tcp), port_state(vec![clusterip(vip(), 80)], rev, Selection::Maglev));
    let (mut f1, mut f2) = (f1, f2);
    f1.program(&d);
    f2.program(&d2);
    let mut seen = BTreeSet::new();
    for sport in 41000..41050 {
        let syn = tcp_frame((client(), sport), (vip(), 80), 1, TCP_SYN);
        let (b1, b2) = (flow(&f1.run(&syn).1).dst, flow(&f2.run(&syn).1).dst);
        assert_eq!(b1, b2, "both nodes choose the same backend for the same flow");
        seen.insert(b1);
    }
    assert_eq!(seen.len(), 5);
    let _ = XDP_TX;
}

// =============================================================================================
// The twins: one per fixture of `datapath_fixtures.rs`, named after it with `v6` after the point
// number, the same scenario and the same assertions adapted to IPv6 (no header checksum; TCP,
// UDP and ICMPv6 checksums over the IPv6 pseudo-header; ICMPv6 errors; the fragment header;
// extension headers instead of IPv4 options). The addresses mirror the IPv4 file's constants.
// (The IPv4 file's ARP frame in `traffic_that_is_not_for_a_service_passes_untouched` is
// family-independent and has no twin.)
// =============================================================================================

const VIP: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x96, 0, 0, 0, 0, 0, 0x10);
const UDP_VIP: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x96, 0, 0, 0, 0, 0, 0x20);
const EMPTY_VIP: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x96, 0, 0, 0, 0, 0, 0x30);
const EMPTY_UDP_VIP: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x96, 0, 0, 0, 0, 0, 0x31);
const CLIENT: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x244, 0, 0, 0, 0, 0, 0x50);
const POD1: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x244, 0, 0, 0, 0, 0, 0x11);
const POD2: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x244, 0, 0, 0, 0, 0, 0x12);
const POD3: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x244, 0, 0, 0, 0, 0, 0x13);
/// A router between this node and the pods (source of ICMPv6 errors that are not the backend's).
const ROUTER: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x244, 0, 0, 0, 0, 0, 0x1);
/// This node's address: NodePort frontend and SNAT source.
const NODE: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x77, 0, 0, 0, 0, 0, 0x1);
/// A client outside the cluster.
const EXT_CLIENT: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x77, 0, 0, 0, 0, 0, 0x50);
const HAIRPIN: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x6c62, 0, 0, 0, 0, 0, 0x1);
const SNAT_PORTS: std::ops::RangeInclusive<u16> = 61000..=65000;
/// Endpoints on other nodes.
const REMOTE1: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x244, 1, 0, 0, 0, 0, 0x21);
const REMOTE2: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x244, 1, 0, 0, 0, 0, 0x22);
/// ClusterIP of the NodePort services.
const NP_VIP: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x96, 0, 0, 0, 0, 0, 0x40);
const NODEPORT: u16 = 30080;
const TCP_FIN: u8 = 0x01;

/// A fixture for node [`NODE`]: SNAT to the node address, hairpin address set (IPv6 only).
fn node_fixture(test: &str) -> Option<Fixture> {
    Fixture::with_config(
        test,
        &lb_common::Config {
            snat6_addr: NODE.octets(),
            hairpin6_addr: HAIRPIN.octets(),
            snat_port_min: *SNAT_PORTS.start(),
            snat_port_max: *SNAT_PORTS.end(),
            flags: CFG_F_SNAT6_READY | CFG_F_HAIRPIN6_READY,
            ..Default::default()
        },
    )
}

fn local_ep(ip: Ipv6Addr, port: u16) -> Endpoint {
    ep(ip, port, true)
}

fn remote(ip: Ipv6Addr, port: u16) -> Endpoint {
    ep(ip, port, false)
}

fn service(n: &str, vip: Ipv6Addr, port: u16, proto: Protocol, eps: Vec<Endpoint>) -> (ServicePortName, ServicePortState) {
    (name(n, proto), port_state(vec![clusterip(vip, port)], eps, Selection::Random))
}

/// A NodePort service (ClusterIP `vip`:80 and NODE:`nodeport`) with externalTrafficPolicy
/// Cluster.
fn nodeport_service(
    n: &str,
    vip: Ipv6Addr,
    nodeport: u16,
    proto: Protocol,
    eps: Vec<Endpoint>,
) -> (ServicePortName, ServicePortState) {
    let (spn, mut sp) = service(n, vip, 80, proto, eps);
    sp.frontends.push(Frontend { addr: IpAddr::V6(NODE), port: nodeport, kind: FrontendKind::NodePort });
    (spn, sp)
}

fn state(services: impl IntoIterator<Item = (ServicePortName, ServicePortState)>) -> DesiredState {
    let mut d = DesiredState::default();
    d.services.extend(services);
    d
}

/// kubia (TCP 80 → 8080 on three pods), a UDP service (53 → 9000) and a service without
/// endpoints: the IPv4 file's `cluster()`.
fn twin_cluster() -> DesiredState {
    state([
        service("kubia", VIP, 80, Protocol::Tcp, vec![local_ep(POD1, 8080), local_ep(POD2, 8080), local_ep(POD3, 8080)]),
        service("dns", UDP_VIP, 53, Protocol::Udp, vec![local_ep(POD1, 9000), local_ep(POD2, 9000)]),
        service("empty", EMPTY_VIP, 80, Protocol::Tcp, vec![]),
    ])
}

fn backends() -> BTreeSet<Ipv6Addr> {
    [POD1, POD2, POD3].into()
}

fn syn(sport: u16) -> Vec<u8> {
    tcp_frame((CLIENT, sport), (VIP, 80), 1000, TCP_SYN)
}

#[test]
fn v6_frame_builders_round_trip() {
    let (c, v) = ((CLIENT, 1234), (VIP, 80));
    let f = tcp_frame_ack(c, v, 0xdead_beef, 7, TCP_SYN);
    verify_checksum(&f).unwrap();
    let t = tcp_info(&f);
    assert_eq!((t.sport, t.dport, t.seq, t.ack, t.flags, t.doff), (1234, 80, 0xdead_beef, 7, TCP_SYN, 20));
    let h = ipv6(&f);
    assert_eq!((h.version, h.src, h.dst, h.next, h.payload_len, h.hop_limit), (6, CLIENT, VIP, NEXT_TCP, 20, 64));
    // Behind extension headers: flow and checksum walk the chain.
    let mut ext = router_alert(NEXT_DEST);
    ext.extend(options_header(NEXT_ROUTING, 200 - 16));
    ext.extend(routing_header(NEXT_TCP));
    assert_eq!(ext.len(), 200);
    let g = frame(&packet(CLIENT, VIP, NEXT_HOP, &ext, &tcp_segment(c, v, 1, 2, TCP_ACK, b"abc")));
    assert_eq!(chain(&g), Chain { l4_off: 254, proto: NEXT_TCP, frag: None });
    assert_eq!((flow(&g).src, flow(&g).dst, flow(&g).next), (c, v, NEXT_TCP));
    verify_checksum(&g).unwrap();
    let mut bad = g.clone();
    bad[DADDR_OFF + 15] ^= 1;
    assert!(verify_checksum(&bad).is_err());
    // Fragments.
    let d = udp(c, (UDP_VIP, 53), &[9u8; 100]);
    verify_udp_datagram(CLIENT, UDP_VIP, &d).unwrap();
    let fr = fragment(CLIENT, UDP_VIP, NEXT_UDP, 64, true, 0x0102_0304, &d[64..]);
    assert_eq!(chain(&fr).frag, Some(Frag6 { offset: 64, more: true, id: 0x0102_0304 }));
    assert_eq!(l4_bytes(&fr), &d[64..]);
    assert!(verify_checksum(&fr).is_err(), "a fragment cannot be verified alone");
    // ICMPv6 errors.
    let q = quote_tcp(c, v, 1460, 5);
    let e = frame(&packet(VIP, CLIENT, NEXT_ICMPV6, &[], &icmp_error(VIP, CLIENT, ICMPV6_PKT_TOOBIG, 0, MTU_1400, &q)));
    verify_checksum(&e).unwrap();
    let i = icmp6(&e);
    assert_eq!((i.ty, i.code, i.rest, i.inner.src, i.inner.dst, i.inner.payload_len), (2, 0, MTU_1400, CLIENT, VIP, 1460));
    assert_eq!((i.inner_sport, i.inner_dport, i.inner_off), (1234, 80, 62));
    assert_eq!(with_addr(&e, SADDR_OFF, ROUTER)[SADDR_OFF..SADDR_OFF + 16], ROUTER.octets());
}

#[test]
fn point_22_v6_syn_to_clusterip_is_dnated_to_a_backend_with_valid_checksums() {
    let Some(mut f) = Fixture::new("point_22_v6_syn_to_clusterip_is_dnated_to_a_backend_with_valid_checksums") else { return };
    f.program(&twin_cluster());
    let (verdict, out) = f.run(&syn(40000));
    assert_eq!(verdict, TC_ACT_OK, "a translated packet continues to the stack");
    let fl = flow(&out);
    assert!(backends().contains(&fl.dst.0), "destination {} is not a kubia backend", fl.dst.0);
    assert_eq!(fl.dst.1, 8080, "destination port is the endpoint's port");
    assert_eq!(fl.src, (CLIENT, 40000), "source is preserved (point 31)");
    verify_checksum(&out).expect("TCP checksum after DNAT");
    assert_eq!(out.len(), syn(40000).len());
    assert_eq!(&out[..SADDR_OFF], &syn(40000)[..SADDR_OFF], "Ethernet and the IPv6 header before the addresses unchanged");
    assert_eq!(f.counter(CNT_VERDICT_DNAT), 1);
}

#[test]
fn point_23_v6_reply_from_backend_is_reverse_nated_to_the_clusterip() {
    let Some(mut f) = Fixture::new("point_23_v6_reply_from_backend_is_reverse_nated_to_the_clusterip") else { return };
    f.program(&twin_cluster());
    let (_, out) = f.run(&syn(40001));
    let backend = flow(&out).dst;
    let reply = tcp_frame(backend, (CLIENT, 40001), 1000, TCP_SYN | TCP_ACK);
    let (verdict, back) = f.run(&reply);
    assert_eq!(verdict, TC_ACT_OK);
    let fl = flow(&back);
    assert_eq!(fl.src, (VIP, 80), "the client must see the ClusterIP:port");
    assert_eq!(fl.dst, (CLIENT, 40001));
    verify_checksum(&back).expect("TCP checksum after reverse NAT");
    assert_eq!(f.counter(CNT_VERDICT_REVNAT), 1);
}

#[test]
fn point_23_v6_every_packet_of_a_flow_keeps_its_backend() {
    let Some(mut f) = Fixture::new("point_23_v6_every_packet_of_a_flow_keeps_its_backend") else { return };
    f.program(&twin_cluster());
    let (_, first) = f.run(&syn(40002));
    let chosen = flow(&first).dst;
    for _ in 0..30 {
        let (_, out) = f.run(&tcp_frame((CLIENT, 40002), (VIP, 80), 1001, TCP_ACK));
        assert_eq!(flow(&out).dst, chosen, "an established flow moved to another backend");
    }
}

#[test]
fn point_22_v6_new_flows_reach_every_backend() {
    let Some(mut f) = Fixture::new("point_22_v6_new_flows_reach_every_backend") else { return };
    f.program(&twin_cluster());
    let seen: BTreeSet<Ipv6Addr> = (0..60).map(|i| flow(&f.run(&syn(41000 + i)).1).dst.0).collect();
    assert_eq!(seen, backends(), "60 new flows must reach all three backends");
}

#[test]
fn v6_udp_to_clusterip_is_translated_both_ways_with_valid_checksums() {
    let Some(mut f) = Fixture::new("v6_udp_to_clusterip_is_translated_both_ways_with_valid_checksums") else { return };
    f.program(&twin_cluster());
    let (verdict, out) = f.run(&udp_frame((CLIENT, 5353), (UDP_VIP, 53), b"query"));
    assert_eq!(verdict, TC_ACT_OK);
    let fl = flow(&out);
    assert!([POD1, POD2].contains(&fl.dst.0));
    assert_eq!(fl.dst.1, 9000);
    verify_checksum(&out).expect("UDP checksum after DNAT");
    let (verdict, back) = f.run(&udp_frame(fl.dst, (CLIENT, 5353), b"answer"));
    assert_eq!(verdict, TC_ACT_OK);
    assert_eq!(flow(&back).src, (UDP_VIP, 53));
    verify_checksum(&back).expect("UDP checksum after reverse NAT");
}

/// A zero UDP checksum is invalid in IPv6 (RFC 8200 §8.1) but the datapath cannot make one up
/// incrementally: like IPv4's "no checksum" it stays zero (the receiver drops it as it would
/// have without translation); only addresses and ports change.
#[test]
fn v6_udp_without_checksum_stays_without_checksum() {
    let Some(mut f) = Fixture::new("v6_udp_without_checksum_stays_without_checksum") else { return };
    f.program(&twin_cluster());
    let mut query = udp_frame((CLIENT, 5354), (UDP_VIP, 53), b"query");
    query[54 + 6..54 + 8].copy_from_slice(&[0, 0]);
    let (verdict, out) = f.run(&query);
    assert_eq!(verdict, TC_ACT_OK);
    let fl = flow(&out);
    assert_eq!((fl.src, fl.dst.1), ((CLIENT, 5354), 9000));
    assert!([POD1, POD2].contains(&fl.dst.0));
    assert_eq!(&out[54 + 6..54 + 8], &[0, 0], "a zero UDP checksum must stay zero");
    assert_eq!(&out[..SADDR_OFF], &query[..SADDR_OFF]);
    assert_eq!(&out[54 + 4..], &query[54 + 4..], "length, checksum and payload unchanged");
}

/// The twin of `ipv4_options_are_honoured`: hop-by-hop and destination options headers are
/// skipped (the L4 header is found behind them), kept byte for byte, and the checksum stays
/// valid; so are up to 4 skippable headers. Chains the parser does not follow (a 5th header, or
/// an L4 header beyond byte 255) to a service address are dropped, never leaked.
#[test]
fn v6_hop_by_hop_and_destination_options_are_honoured() {
    let Some(mut f) = Fixture::new("v6_hop_by_hop_and_destination_options_are_honoured") else { return };
    f.program(&twin_cluster());
    let seg = |sport: u16| tcp_segment((CLIENT, sport), (VIP, 80), 1000, 0, TCP_SYN, &[]);
    let mut hop_dest = router_alert(NEXT_DEST);
    hop_dest.extend(options_header(NEXT_TCP, 16));
    let mut four = router_alert(NEXT_DEST);
    four.extend(options_header(NEXT_ROUTING, 8));
    four.extend(routing_header(NEXT_DEST));
    four.extend(options_header(NEXT_TCP, 200 - 24)); // L4 header at byte 254
    for (i, ext) in [hop_dest, four].into_iter().enumerate() {
        let sport = 40003 + i as u16;
        let input = frame(&packet(CLIENT, VIP, NEXT_HOP, &ext, &seg(sport)));
        let (verdict, out) = f.run(&input);
        assert_eq!(verdict, TC_ACT_OK, "{} bytes of extension headers", ext.len());
        assert_eq!(out.len(), input.len());
        let fl = flow(&out);
        assert!(backends().contains(&fl.dst.0));
        assert_eq!(fl.dst.1, 8080, "the port behind the extension headers was rewritten");
        assert_eq!(fl.src, (CLIENT, sport));
        assert_eq!(&out[54..54 + ext.len()], &ext[..], "extension headers kept");
        verify_checksum(&out).expect("TCP checksum behind extension headers");
    }
    assert_eq!(f.counter(CNT_VERDICT_DNAT), 2);
    let mut five = router_alert(NEXT_DEST);
    five.extend(options_header(NEXT_ROUTING, 8));
    five.extend(routing_header(NEXT_DEST));
    five.extend(options_header(NEXT_DEST, 8));
    five.extend(options_header(NEXT_TCP, 8));
    let mut beyond = router_alert(NEXT_DEST);
    beyond.extend(options_header(NEXT_TCP, 208 - 8)); // L4 header at byte 262
    for ext in [five, beyond] {
        let (verdict, _) = f.run(&frame(&packet(CLIENT, VIP, NEXT_HOP, &ext, &seg(40010))));
        assert_eq!(verdict, TC_ACT_SHOT, "a chain the parser does not follow, to a service address");
    }
    assert_eq!(f.counter(CNT_DROP_BAD_L4), 2);
    assert_eq!(f.counter(CNT_VERDICT_DNAT), 2);
}

#[test]
fn v6_traffic_that_is_not_for_a_service_passes_untouched() {
    let Some(mut f) = Fixture::new("v6_traffic_that_is_not_for_a_service_passes_untouched") else { return };
    f.program(&twin_cluster());
    let frames = [
        // pod to pod
        tcp_frame((CLIENT, 40004), (POD1, 8080), 1000, TCP_SYN),
        // the ClusterIP on a port the service does not define
        tcp_frame((CLIENT, 40005), (VIP, 81), 1000, TCP_SYN),
        // UDP to a TCP service port
        udp_frame((CLIENT, 40006), (VIP, 80), b"x"),
        // a reply-looking packet without a flow
        tcp_frame((POD1, 8080), (CLIENT, 40007), 1000, TCP_SYN | TCP_ACK),
    ];
    for frame in &frames {
        let (verdict, out) = f.run(frame);
        assert_eq!(verdict, TC_ACT_OK);
        assert_eq!(&out, frame, "non-service traffic must be byte-for-byte unchanged");
    }
    assert_eq!(f.counter(CNT_VERDICT_PASS), frames.len() as u64);
    assert_eq!(f.counter(CNT_PASS_NOT_IP), 0);
}

/// The twin of `malformed_ipv4_headers_pass_untouched`, asserting what `parse.rs` does: a wrong
/// version nibble and an IPv6 header cut short are passed untouched (`CNT_PASS_BAD_L3`). A
/// payload length larger than the packet is not checked by the parser (nor is an IPv4 total
/// length larger than the packet): such a packet with a complete TCP header is translated like
/// any other (the kernel's IPv6 input then drops it as truncated).
#[test]
fn malformed_ipv6_headers_pass_untouched() {
    let Some(mut f) = Fixture::new("malformed_ipv6_headers_pass_untouched") else { return };
    f.program(&twin_cluster());
    let good = syn(40010);
    let mut version4 = good.clone();
    version4[14] = 0x40;
    let mut version7 = good.clone();
    version7[14] = 0x70;
    for frame in [version4, version7] {
        let (verdict, out) = f.run(&frame);
        assert_eq!(verdict, TC_ACT_OK, "the kernel's IPv6 input validates these");
        assert_eq!(out, frame, "an invalid IPv6 header is never modified");
    }
    // 20 of the 40 header bytes: BPF_PROG_TEST_RUN refuses such a frame on a TC program
    // (EINVAL) but not on XDP, which runs the same parser.
    let cut = good[..14 + 20].to_vec();
    let (verdict, out) = f.run_xdp(&cut);
    assert_eq!((verdict, out), (XDP_PASS, cut), "a truncated IPv6 header passes untouched");
    assert_eq!(f.counter(CNT_PASS_BAD_L3), 3);
    assert_eq!(f.counter(CNT_VERDICT_DNAT), 0);
    // Payload length 1000 in a frame carrying 20 bytes: translated.
    let mut long = good.clone();
    long[18..20].copy_from_slice(&1000u16.to_be_bytes());
    let (verdict, out) = f.run(&long);
    assert_eq!(verdict, TC_ACT_OK);
    assert_eq!(out.len(), long.len());
    let fl = flow(&out);
    assert!(backends().contains(&fl.dst.0));
    assert_eq!((fl.src, fl.dst.1), ((CLIENT, 40010), 8080));
    assert_eq!(&out[18..20], &1000u16.to_be_bytes(), "the payload length is not touched");
    let t = &out[54..];
    assert_eq!(checksum(t, pseudo_sum(CLIENT, fl.dst.0, NEXT_TCP, t.len())), 0, "TCP checksum over the 20 bytes present");
    assert_eq!(f.counter(CNT_VERDICT_DNAT), 1);
    assert_eq!(f.counter(CNT_PASS_BAD_L3), 3);
}

/// The twin of `truncated_l4_header_to_a_service_address_is_dropped`, plus the IPv6 form of a
/// header that claims more than the packet holds: an extension header longer than the payload.
#[test]
fn v6_truncated_l4_header_to_a_service_address_is_dropped() {
    let Some(mut f) = Fixture::new("v6_truncated_l4_header_to_a_service_address_is_dropped") else { return };
    f.program(&twin_cluster());
    let mut cut = syn(40011)[..14 + 40 + 8].to_vec(); // 8 of 20 TCP header bytes
    cut[18..20].copy_from_slice(&8u16.to_be_bytes());
    let (verdict, _) = f.run(&cut);
    assert_eq!(verdict, TC_ACT_SHOT, "untranslatable traffic to a VIP must not leak");
    assert_eq!(f.counter(CNT_DROP_BAD_L4), 1);
    // A hop-by-hop header claiming 16 bytes where the payload has 8.
    let short_ext = |dst: Ipv6Addr| {
        let mut hop = router_alert(NEXT_TCP);
        hop[1] = 1;
        frame(&packet(CLIENT, dst, NEXT_HOP, &hop, &[]))
    };
    let (verdict, _) = f.run(&short_ext(VIP));
    assert_eq!(verdict, TC_ACT_SHOT);
    assert_eq!(f.counter(CNT_DROP_BAD_L4), 2);
    // The same truncations to an address that is no service pass untouched.
    let mut other = tcp_frame((CLIENT, 40012), (POD1, 80), 1000, TCP_SYN)[..14 + 40 + 8].to_vec();
    other[18..20].copy_from_slice(&8u16.to_be_bytes());
    for other in [other, short_ext(POD1)] {
        let (verdict, out) = f.run(&other);
        assert_eq!((verdict, out), (TC_ACT_OK, other));
    }
    assert_eq!(f.counter(CNT_DROP_BAD_L4), 2);
}

/// Point 62 (large UDP datagrams through the VIP), IPv6: fragments carry a fragment header; the
/// first (offset 0, M set) selects the backend and has its ports rewritten; later fragments get
/// the same destination and nothing else changes (IPv6 has no header checksum); reassembled, the
/// datagram carries a valid UDP checksum for its new addresses. The same holds for a fragmented
/// reply. A later fragment whose first fragment was never seen is dropped if it is addressed to a
/// service address, and passed untouched otherwise.
#[test]
fn point_62_v6_later_fragments_follow_their_first_fragment_and_orphans_to_a_service_are_dropped() {
    let Some(mut f) =
        Fixture::new("point_62_v6_later_fragments_follow_their_first_fragment_and_orphans_to_a_service_are_dropped")
    else {
        return;
    };
    f.program(&twin_cluster());
    let client = (CLIENT, 5355);
    let payload: Vec<u8> = (0..100u8).collect();
    let dgram = udp(client, (UDP_VIP, 53), &payload); // 108 bytes
    let id = 0x5151_0001;
    let first = fragment(CLIENT, UDP_VIP, NEXT_UDP, 0, true, id, &dgram[..64]);
    let middle = fragment(CLIENT, UDP_VIP, NEXT_UDP, 64, true, id, &dgram[64..88]);
    let last = fragment(CLIENT, UDP_VIP, NEXT_UDP, 88, false, id, &dgram[88..]);

    let (verdict, out_first) = f.run(&first);
    assert_eq!(verdict, TC_ACT_OK, "the first fragment is translated like any packet");
    let h = ipv6(&out_first);
    let backend = h.dst;
    assert!([POD1, POD2].contains(&backend), "first fragment sent to {backend}, not a dns backend");
    assert_eq!((h.src, h.next, h.payload_len), (CLIENT, NEXT_FRAGMENT, 8 + 64), "only addresses and ports change");
    assert_eq!(&out_first[54..62], &first[54..62], "the fragment header is unchanged");
    let u = l4_bytes(&out_first);
    assert_eq!(u16::from_be_bytes([u[2], u[3]]), 9000, "the first fragment's destination port is the endpoint's");
    assert_eq!(u16::from_be_bytes([u[0], u[1]]), 5355);

    let mut reassembled = u.to_vec();
    for later in [&middle, &last] {
        let (verdict, out) = f.run(later);
        assert_eq!(verdict, TC_ACT_OK, "a later fragment of a known datagram is translated");
        assert_eq!(
            out,
            with_addr(later, DADDR_OFF, backend),
            "a later fragment gets the first fragment's destination, nothing else"
        );
        reassembled.extend_from_slice(l4_bytes(&out));
    }
    assert_eq!(reassembled.len(), dgram.len());
    verify_udp_datagram(CLIENT, backend, &reassembled).expect("the reassembled datagram's UDP checksum after DNAT");
    assert_eq!(&reassembled[8..], &payload[..], "payload untouched");
    assert_eq!(f.counter(CNT_FRAG_FOLLOWED), 2);
    assert_eq!(f.counter(CNT_VERDICT_DNAT), 3);
    assert_eq!(f.counter(CNT_NEW_FLOWS), 1, "the datagram is one flow");

    // The backend's fragmented answer is reverse-translated fragment by fragment.
    let answer = udp((backend, 9000), client, &payload);
    let a_first = fragment(backend, CLIENT, NEXT_UDP, 0, true, 0x6262, &answer[..64]);
    let a_last = fragment(backend, CLIENT, NEXT_UDP, 64, false, 0x6262, &answer[64..]);
    let (verdict, out) = f.run(&a_first);
    assert_eq!(verdict, TC_ACT_OK);
    assert_eq!(flow(&out).src, (UDP_VIP, 53), "the first reply fragment comes from the ClusterIP:port");
    let mut reply = l4_bytes(&out).to_vec();
    let (verdict, out) = f.run(&a_last);
    assert_eq!(verdict, TC_ACT_OK);
    assert_eq!(out, with_addr(&a_last, SADDR_OFF, UDP_VIP), "a later reply fragment gets the ClusterIP as source");
    reply.extend_from_slice(l4_bytes(&out));
    verify_udp_datagram(UDP_VIP, CLIENT, &reply).expect("the reassembled reply's UDP checksum after reverse NAT");
    assert_eq!(f.counter(CNT_FRAG_FOLLOWED), 3);
    assert_eq!(f.counter(CNT_VERDICT_REVNAT), 2);

    // A later fragment whose first fragment was never seen: dropped when addressed to a service
    // address (even on a port no service defines), passed untouched otherwise.
    assert_eq!(f.counter(CNT_DROP_FRAGMENT), 0);
    let orphan = fragment(CLIENT, UDP_VIP, NEXT_UDP, 64, false, 0x7373, &dgram[64..]);
    let (verdict, _) = f.run(&orphan);
    assert_eq!(verdict, TC_ACT_SHOT, "an untranslatable fragment to a service address must not leak");
    assert_eq!(f.counter(CNT_DROP_FRAGMENT), 1);
    let orphan_tcp = fragment(CLIENT, VIP, NEXT_TCP, 64, false, 0x7374, &[0u8; 32]);
    let (verdict, _) = f.run(&orphan_tcp);
    assert_eq!(verdict, TC_ACT_SHOT);
    assert_eq!(f.counter(CNT_DROP_FRAGMENT), 2);
    let elsewhere = fragment(CLIENT, POD1, NEXT_UDP, 64, false, 0x7375, &dgram[64..]);
    let (verdict, out) = f.run(&elsewhere);
    assert_eq!((verdict, out), (TC_ACT_OK, elsewhere), "fragments to other addresses pass untouched");
    assert_eq!(f.counter(CNT_DROP_FRAGMENT), 2);
    assert_eq!(f.counter(CNT_FRAG_FOLLOWED), 3);
}

/// kubia, dns and empty, plus a UDP service without endpoints.
fn twin_cluster_with_empty_udp() -> DesiredState {
    let mut d = twin_cluster();
    d.services.extend([service("empty-dns", EMPTY_UDP_VIP, 53, Protocol::Udp, vec![])]);
    d
}

/// Checks a TCP RST|ACK answering a SYN `client → frontend` with sequence number `seq`.
fn assert_rst_answers_syn(out: &[u8], client: (Ipv6Addr, u16), frontend: (Ipv6Addr, u16), seq: u32) {
    assert_eq!(out.len(), 74, "a RST is Ethernet + IPv6 + TCP without options");
    assert_eq!(&out[0..6], &MAC_SRC, "sent back to the client's MAC");
    assert_eq!(&out[6..12], &MAC_DST, "from the MAC the SYN was sent to");
    assert_eq!(&out[12..14], &[0x86, 0xdd]);
    let h = ipv6(out);
    assert_eq!((h.version, h.src, h.dst, h.next, h.payload_len), (6, frontend.0, client.0, NEXT_TCP, 20));
    assert_eq!(h.hop_limit, 64, "the hop limit reject.rs writes");
    let t = tcp_info(out);
    assert_eq!((t.sport, t.dport), (frontend.1, client.1), "the RST comes from the frontend to the client's port");
    assert_eq!(t.flags, TCP_RST | TCP_ACK, "RST|ACK");
    assert_eq!(t.ack, seq.wrapping_add(1), "it acknowledges the SYN (RFC 793 reset generation)");
    assert_eq!((t.seq, t.doff), (0, 20));
    verify_checksum(out).expect("RST checksum");
}

/// Checks an ICMPv6 port unreachable answering `orig` (a UDP frame `client → frontend`).
fn assert_port_unreachable_answers(out: &[u8], orig: &[u8], client: Ipv6Addr, frontend: Ipv6Addr) {
    assert_eq!(out.len(), 110, "Ethernet + IPv6 + ICMPv6 + quoted IPv6 header + 8 bytes");
    assert_eq!(&out[0..6], &MAC_SRC);
    assert_eq!(&out[6..12], &MAC_DST);
    assert_eq!(&out[12..14], &[0x86, 0xdd]);
    let h = ipv6(out);
    assert_eq!((h.version, h.src, h.dst, h.next, h.payload_len), (6, frontend, client, NEXT_ICMPV6, 56));
    assert_eq!(h.hop_limit, 64, "the hop limit reject.rs writes");
    let i = icmp6(out);
    assert_eq!((i.ty, i.code, i.rest), (ICMPV6_DEST_UNREACH, ICMPV6_PORT_UNREACH, [0; 4]), "type 1 code 4");
    assert_eq!(&out[62..110], &orig[14..62], "quotes the original IPv6 header and its first 8 bytes");
    verify_checksum(out).expect("ICMPv6 checksum");
}

/// Point 37: a service without endpoints rejects new connections: a TCP SYN gets a RST|ACK from
/// the ClusterIP:port, a UDP datagram an ICMPv6 port unreachable, both sent back out of the
/// interface the packet came in on (TC_ACT_REDIRECT).
#[test]
fn point_37_v6_service_without_endpoints_rejects_tcp_with_rst_and_udp_with_icmp_port_unreachable() {
    let Some(mut f) =
        Fixture::new("point_37_v6_service_without_endpoints_rejects_tcp_with_rst_and_udp_with_icmp_port_unreachable")
    else {
        return;
    };
    f.program(&twin_cluster_with_empty_udp());
    let seq = 0x1234_5678;
    let (verdict, out) = f.run(&tcp_frame_ack((CLIENT, 40013), (EMPTY_VIP, 80), seq, 0, TCP_SYN));
    assert_eq!(verdict, TC_ACT_REDIRECT, "the RST goes back out of the interface");
    assert_rst_answers_syn(&out, (CLIENT, 40013), (EMPTY_VIP, 80), seq);
    assert_eq!((f.counter(CNT_REJECT_TCP), f.counter(CNT_VERDICT_REJECT)), (1, 1));

    let query = udp_frame((CLIENT, 5357), (EMPTY_UDP_VIP, 53), b"query");
    let (verdict, out) = f.run(&query);
    assert_eq!(verdict, TC_ACT_REDIRECT);
    assert_port_unreachable_answers(&out, &query, CLIENT, EMPTY_UDP_VIP);
    assert_eq!(f.counter(CNT_REJECT_ICMP), 1);
    assert_eq!(f.counter(CNT_VERDICT_REJECT), 2);
    assert_eq!(f.counter(CNT_VERDICT_DNAT), 0, "never forwarded");
    assert_eq!(f.counter(CNT_DROP_NO_BACKEND), 0);
}

/// Point 37, RFC 793 reset generation for segments other than a bare SYN: a SYN carrying data
/// is acknowledged with its data; a segment with ACK is answered with seq = its ack and no ACK.
#[test]
fn point_37_v6_resets_for_other_segments_follow_rfc_793() {
    let Some(mut f) = Fixture::new("point_37_v6_resets_for_other_segments_follow_rfc_793") else { return };
    f.program(&twin_cluster());
    let client = (CLIENT, 40060);
    // SYN with 10 bytes of data (TCP Fast Open): ack = seq + 1 + 10.
    let seg = tcp_segment(client, (EMPTY_VIP, 80), 500, 0, TCP_SYN, &[1; 10]);
    let (verdict, out) = f.run(&frame(&packet(CLIENT, EMPTY_VIP, NEXT_TCP, &[], &seg)));
    assert_eq!(verdict, TC_ACT_REDIRECT);
    assert_eq!(out.len(), 74);
    let t = tcp_info(&out);
    assert_eq!((t.seq, t.ack, t.flags), (0, 511, TCP_RST | TCP_ACK));
    verify_checksum(&out).expect("RST checksum");
    // A data segment with ACK (no flow known): RST with seq = its ack, no ACK flag.
    let seg = tcp_segment(client, (EMPTY_VIP, 80), 600, 0xabcd_0001, TCP_ACK, &[2; 33]);
    let (verdict, out) = f.run(&frame(&packet(CLIENT, EMPTY_VIP, NEXT_TCP, &[], &seg)));
    assert_eq!(verdict, TC_ACT_REDIRECT);
    assert_eq!(out.len(), 74, "the answer carries no data");
    let t = tcp_info(&out);
    assert_eq!((t.sport, t.dport), (80, client.1));
    assert_eq!((t.seq, t.ack, t.flags), (0xabcd_0001, 0, TCP_RST));
    verify_checksum(&out).expect("RST checksum");
    // A FIN with 5 bytes of data and no ACK: ack = seq + 5 + 1.
    let seg = tcp_segment(client, (EMPTY_VIP, 80), 900, 0, TCP_FIN, &[3; 5]);
    let (verdict, out) = f.run(&frame(&packet(CLIENT, EMPTY_VIP, NEXT_TCP, &[], &seg)));
    assert_eq!(verdict, TC_ACT_REDIRECT);
    let t = tcp_info(&out);
    assert_eq!((t.seq, t.ack, t.flags), (0, 906, TCP_RST | TCP_ACK));
    verify_checksum(&out).expect("RST checksum");
    assert_eq!(f.counter(CNT_REJECT_TCP), 3);
}

/// Point 37 must never answer a reset with a reset (RFC 793).
#[test]
fn point_37_v6_a_reset_to_a_service_without_endpoints_is_not_answered() {
    let Some(mut f) = Fixture::new("point_37_v6_a_reset_to_a_service_without_endpoints_is_not_answered") else { return };
    f.program(&twin_cluster());
    for (i, flags) in [TCP_RST, TCP_RST | TCP_ACK].into_iter().enumerate() {
        let (verdict, out) = f.run(&tcp_frame_ack((CLIENT, 40070 + i as u16), (EMPTY_VIP, 80), 700, 800, flags));
        assert_ne!(verdict, TC_ACT_REDIRECT, "a RST (flags {flags:#x}) was answered: {out:02x?}");
        assert_eq!(verdict, TC_ACT_SHOT, "a RST to a service without endpoints is dropped");
    }
    assert_eq!(f.counter(CNT_REJECT_TCP), 0);
    assert_eq!(f.counter(CNT_VERDICT_DNAT), 0);
}

/// Point 37 on external frontends: a NodePort without endpoints rejects over XDP (XDP_TX).
#[test]
fn point_37_v6_nodeport_without_endpoints_rejects_over_xdp() {
    let Some(mut f) = node_fixture("point_37_v6_nodeport_without_endpoints_rejects_over_xdp") else { return };
    f.program(&state([
        nodeport_service("empty-web", NP_VIP, NODEPORT, Protocol::Tcp, vec![]),
        nodeport_service("empty-dns", EMPTY_UDP_VIP, 30053, Protocol::Udp, vec![]),
    ]));
    let seq = 0xffff_ffff; // the acknowledgement wraps
    let (verdict, out) = f.run_xdp(&tcp_frame_ack((EXT_CLIENT, 40000), (NODE, NODEPORT), seq, 0, TCP_SYN));
    assert_eq!(verdict, XDP_TX, "the RST is sent back out of the interface");
    assert_rst_answers_syn(&out, (EXT_CLIENT, 40000), (NODE, NODEPORT), seq);
    let query = udp_frame((EXT_CLIENT, 5357), (NODE, 30053), b"query");
    let (verdict, out) = f.run_xdp(&query);
    assert_eq!(verdict, XDP_TX);
    assert_port_unreachable_answers(&out, &query, EXT_CLIENT, NODE);
    assert_eq!((f.counter(CNT_REJECT_TCP), f.counter(CNT_REJECT_ICMP), f.counter(CNT_VERDICT_REJECT)), (1, 1, 2));
    assert_eq!(f.counter(CNT_SNAT), 0);
}

#[test]
fn point_57_v6_udp_flow_moves_when_its_backend_is_removed_and_tcp_flow_stays() {
    let Some(mut f) = Fixture::new("point_57_v6_udp_flow_moves_when_its_backend_is_removed_and_tcp_flow_stays") else { return };
    f.program(&twin_cluster());
    let query = udp_frame((CLIENT, 5356), (UDP_VIP, 53), b"q");
    let udp_backend = flow(&f.run(&query).1).dst.0;
    // A TCP flow whose backend is not dns's other backend, so that dns keeps one endpoint after
    // the removal (otherwise the UDP flow is rejected, not moved: the IPv4 fixture then reads
    // the client address of the ICMP error as the "moved" backend and passes vacuously).
    let other_dns = if udp_backend == POD1 { POD2 } else { POD1 };
    let (tcp_sport, tcp_backend) = (40014..40114)
        .map(|sport| (sport, flow(&f.run(&syn(sport)).1).dst.0))
        .find(|(_, b)| *b != other_dns)
        .expect("100 new flows all went to one backend");

    // Remove both backends from both services.
    let mut d = twin_cluster();
    for sp in d.services.values_mut() {
        let gone = |e: &Endpoint| e.addr == IpAddr::V6(udp_backend) || e.addr == IpAddr::V6(tcp_backend);
        for set in [&mut sp.internal.endpoints, &mut sp.external.endpoints, &mut sp.cluster, &mut sp.serving] {
            set.retain(|e| !gone(e));
        }
    }
    f.program(&d);

    let (verdict, out) = f.run(&query);
    assert_eq!(verdict, TC_ACT_OK);
    let moved = flow(&out).dst.0;
    assert_ne!(moved, udp_backend, "the UDP flow must leave its removed backend");
    assert_eq!((moved, flow(&out).dst.1), (other_dns, 9000), "the UDP flow moves to dns's remaining backend");
    verify_checksum(&out).expect("UDP checksum after re-selection");
    assert_eq!(f.counter(CNT_CT_RESELECT), 1);
    let (verdict, out) = f.run(&tcp_frame((CLIENT, tcp_sport), (VIP, 80), 1001, TCP_ACK));
    assert_eq!(verdict, TC_ACT_OK);
    assert_eq!(flow(&out).dst.0, tcp_backend, "established TCP keeps its backend, as with kube-proxy's conntrack");
    // New TCP connections never go to a removed backend (point 21).
    for i in 0..30 {
        let dst = flow(&f.run(&syn(42000 + i)).1).dst.0;
        assert!(dst != tcp_backend && dst != udp_backend, "new connection sent to removed backend {dst}");
    }
}

// ---------------------------------------------------------------------------------------------
// Point 22: Maglev
// ---------------------------------------------------------------------------------------------

const MAGLEV_BACKENDS: [Ipv6Addr; 5] = [
    Ipv6Addr::new(0xfd00, 0x244, 2, 0, 0, 0, 0, 1),
    Ipv6Addr::new(0xfd00, 0x244, 2, 0, 0, 0, 0, 2),
    Ipv6Addr::new(0xfd00, 0x244, 2, 0, 0, 0, 0, 3),
    Ipv6Addr::new(0xfd00, 0x244, 2, 0, 0, 0, 0, 4),
    Ipv6Addr::new(0xfd00, 0x244, 2, 0, 0, 0, 0, 5),
];

/// A LoadBalancer IP every node announces (ECMP): the case Maglev is for.
const MAGLEV_LB_IP: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x100, 0, 0, 0, 0, 9);

fn maglev_state(backends: &[Ipv6Addr]) -> DesiredState {
    let (spn, mut sp) = service("web", VIP, 80, Protocol::Tcp, backends.iter().map(|b| remote(*b, 8080)).collect());
    sp.frontends.push(Frontend { addr: IpAddr::V6(MAGLEV_LB_IP), port: 80, kind: FrontendKind::LoadBalancer });
    sp.selection = Selection::Maglev;
    state([(spn, sp)])
}

/// 200 distinct flows: 50 clients, several source ports each.
fn maglev_flows() -> Vec<(Ipv6Addr, u16)> {
    (0..200u16).map(|i| (Ipv6Addr::new(0xfd00, 0x244, 9, 0, 0, 0, 0, i % 50 + 1), 30000 + i * 7)).collect()
}

/// The backend each of [`maglev_flows`] gets from a datapath programmed with `backends`.
fn maglev_choices(f: &mut Fixture, backends: &[Ipv6Addr]) -> Vec<Ipv6Addr> {
    f.program(&maglev_state(backends));
    maglev_flows()
        .into_iter()
        .map(|src| {
            let (verdict, out) = f.run(&tcp_frame(src, (VIP, 80), 1000, TCP_SYN));
            assert_eq!(verdict, TC_ACT_OK);
            verify_checksum(&out).expect("checksum after DNAT");
            let dst = flow(&out).dst;
            assert_eq!(dst.1, 8080);
            dst.0
        })
        .collect()
}

/// Point 22 with Maglev: the choice depends on the flow alone, so two nodes send the same
/// 5-tuple to the same backend, and new flows spread over every backend.
#[test]
fn point_22_v6_maglev_picks_the_same_backend_for_a_flow_on_every_node_and_reaches_all() {
    let test = "point_22_v6_maglev_picks_the_same_backend_for_a_flow_on_every_node_and_reaches_all";
    let Some(mut node_a) = Fixture::new(test) else { return };
    let Some(mut node_b) = Fixture::new(test) else { return };
    let mut reversed = MAGLEV_BACKENDS;
    reversed.reverse();
    let a = maglev_choices(&mut node_a, &MAGLEV_BACKENDS);
    let b = maglev_choices(&mut node_b, &reversed);
    let differ = a.iter().zip(&b).filter(|(x, y)| x != y).count();
    assert_eq!(differ, 0, "{differ} of 200 flows got another backend on the second node");
    let mut per: BTreeMap<Ipv6Addr, usize> = BTreeMap::new();
    for b in &a {
        *per.entry(*b).or_default() += 1;
    }
    assert_eq!(per.keys().copied().collect::<Vec<_>>(), MAGLEV_BACKENDS.to_vec(), "200 flows must reach all 5 backends");
    for (b, n) in &per {
        assert!(*n >= 15, "backend {b} got only {n} of 200 flows (expected about 40): {per:?}");
    }
    let again = maglev_choices(&mut node_a, &MAGLEV_BACKENDS);
    assert_eq!(again, a);
    let over_xdp = |f: &Fixture| -> Vec<Ipv6Addr> {
        maglev_flows()
            .into_iter()
            .map(|(_, sport)| {
                let (verdict, out) = f.run_xdp(&tcp_frame((EXT_CLIENT, sport), (MAGLEV_LB_IP, 80), 1000, TCP_SYN));
                assert_eq!(verdict, XDP_PASS);
                verify_checksum(&out).expect("checksum after DNAT");
                flow(&out).dst.0
            })
            .collect()
    };
    let (xa, xb) = (over_xdp(&node_a), over_xdp(&node_b));
    assert_eq!(xa, xb, "an external flow must get the same backend on whichever node ECMP sends it to");
    assert_eq!(xa.iter().copied().collect::<BTreeSet<_>>(), MAGLEV_BACKENDS.into_iter().collect::<BTreeSet<_>>());
}

#[test]
fn point_22_v6_maglev_removing_one_of_five_backends_keeps_the_flows_of_the_others() {
    let test = "point_22_v6_maglev_removing_one_of_five_backends_keeps_the_flows_of_the_others";
    let Some(mut before) = Fixture::new(test) else { return };
    let Some(mut after) = Fixture::new(test) else { return };
    let removed = MAGLEV_BACKENDS[2];
    let rest: Vec<Ipv6Addr> = MAGLEV_BACKENDS.iter().copied().filter(|b| *b != removed).collect();
    let old = maglev_choices(&mut before, &MAGLEV_BACKENDS);
    let new = maglev_choices(&mut after, &rest);
    assert!(!new.contains(&removed), "a flow was sent to the removed backend");
    let survivors: Vec<usize> = (0..old.len()).filter(|i| old[*i] != removed).collect();
    let moved = survivors.iter().filter(|i| old[**i] != new[**i]).count();
    assert!(survivors.len() >= 120, "only {} of 200 flows were on surviving backends", survivors.len());
    assert!(moved * 10 <= survivors.len(), "{moved} of {} flows whose backend survived moved (at most 10% may)", survivors.len());
}

#[test]
fn point_22_v6_maglev_removing_one_of_three_backends_keeps_the_flows_of_the_others() {
    let test = "point_22_v6_maglev_removing_one_of_three_backends_keeps_the_flows_of_the_others";
    let Some(mut before) = Fixture::new(test) else { return };
    let Some(mut after) = Fixture::new(test) else { return };
    let three = &MAGLEV_BACKENDS[..3];
    let old = maglev_choices(&mut before, three);
    let new = maglev_choices(&mut after, &three[..2]);
    assert!(!new.contains(&three[2]), "a flow was sent to the removed backend");
    let survivors: Vec<usize> = (0..old.len()).filter(|i| old[*i] != three[2]).collect();
    let moved = survivors.iter().filter(|i| old[**i] != new[**i]).count();
    assert!(moved * 10 <= survivors.len(), "{moved} of {} flows whose backend survived moved (at most 10% may)", survivors.len());
}

// ---------------------------------------------------------------------------------------------
// Points 24-28: session affinity
// ---------------------------------------------------------------------------------------------

fn sticky_state(timeout: Option<u32>, backends: &[Ipv6Addr]) -> DesiredState {
    let (spn, mut sp) = service("sticky", VIP, 80, Protocol::Tcp, backends.iter().map(|b| local_ep(*b, 8080)).collect());
    sp.affinity_timeout_s = timeout;
    sp.selection = Selection::Random;
    state([(spn, sp)])
}

/// A new connection from `client:sport` to the sticky service: the backend it was sent to.
fn connect(f: &Fixture, client: Ipv6Addr, sport: u16) -> Ipv6Addr {
    let (verdict, out) = f.run(&tcp_frame((client, sport), (VIP, 80), 1000, TCP_SYN));
    assert_eq!(verdict, TC_ACT_OK);
    let fl = flow(&out);
    assert_eq!((fl.src, fl.dst.1), ((client, sport), 8080));
    fl.dst.0
}

#[test]
fn point_24_25_v6_client_ip_affinity_sends_every_connection_of_a_client_to_one_backend() {
    let Some(mut f) = Fixture::new("point_24_25_v6_client_ip_affinity_sends_every_connection_of_a_client_to_one_backend") else {
        return;
    };
    f.program(&sticky_state(Some(10800), &[POD1, POD2, POD3]));
    let chosen: BTreeSet<Ipv6Addr> = (0..20).map(|i| connect(&f, CLIENT, 43000 + i)).collect();
    assert_eq!(chosen.len(), 1, "20 connections of one client went to {chosen:?}");
    assert_eq!(f.counter(CNT_AFFINITY_HIT), 19);
    let mut firsts = BTreeSet::new();
    for c in 1..=12u16 {
        let client = Ipv6Addr::new(0xfd00, 0x244, 3, 0, 0, 0, 0, c);
        let theirs: BTreeSet<Ipv6Addr> = (0..5).map(|i| connect(&f, client, 44000 + i)).collect();
        assert_eq!(theirs.len(), 1, "client {client}: {theirs:?}");
        firsts.extend(theirs);
    }
    assert!(firsts.len() >= 2, "12 clients all went to {firsts:?}: the first choice of a client must be random");
    assert_eq!(f.counter(CNT_AFFINITY_HIT), 19 + 12 * 4);
    assert_eq!(f.counter(CNT_NEW_FLOWS), 20 + 12 * 5);
}

#[test]
fn point_28_v6_toggling_affinity_takes_effect_for_new_connections() {
    let Some(mut f) = Fixture::new("point_28_v6_toggling_affinity_takes_effect_for_new_connections") else { return };
    f.program(&sticky_state(Some(10800), &[POD1, POD2, POD3]));
    let on: BTreeSet<Ipv6Addr> = (0..5).map(|i| connect(&f, CLIENT, 43000 + i)).collect();
    assert_eq!(on.len(), 1);
    f.program(&sticky_state(None, &[POD1, POD2, POD3]));
    let hits = f.counter(CNT_AFFINITY_HIT);
    let off: BTreeSet<Ipv6Addr> = (0..40).map(|i| connect(&f, CLIENT, 43100 + i)).collect();
    assert!(off.len() >= 2, "with affinity off 40 new connections all went to {off:?}");
    assert_eq!(f.counter(CNT_AFFINITY_HIT), hits, "no affinity hit while affinity is off");
    f.program(&sticky_state(Some(10800), &[POD1, POD2, POD3]));
    let on_again: BTreeSet<Ipv6Addr> = (0..10).map(|i| connect(&f, CLIENT, 43200 + i)).collect();
    assert_eq!(on_again.len(), 1, "affinity back on: {on_again:?}");
}

#[test]
fn point_26_v6_affinity_slides_with_each_connection_and_expires_after_the_timeout() {
    let Some(mut f) = Fixture::new("point_26_v6_affinity_slides_with_each_connection_and_expires_after_the_timeout") else {
        return;
    };
    f.program(&sticky_state(Some(1), &[POD1, POD2, POD3]));
    let clients: Vec<Ipv6Addr> = (1..=30u16).map(|c| Ipv6Addr::new(0xfd00, 0x244, 4, 0, 0, 0, 0, c)).collect();
    let mut first = Vec::new();
    for c in &clients {
        let b = connect(&f, *c, 45000);
        assert_eq!(connect(&f, *c, 45001), b, "{c}: a second connection within the timeout");
        first.push(b);
    }
    assert_eq!(f.counter(CNT_AFFINITY_HIT), 30);
    for sport in [45002, 45003] {
        std::thread::sleep(Duration::from_millis(600));
        assert_eq!(connect(&f, clients[0], sport), first[0], "the record slides with every new connection");
    }
    assert_eq!(f.counter(CNT_AFFINITY_HIT), 32);
    std::thread::sleep(Duration::from_millis(1200));
    let changed = clients.iter().zip(&first).filter(|(c, b)| connect(&f, **c, 45010) != **b).count();
    assert_eq!(f.counter(CNT_AFFINITY_HIT), 32, "expired records must not be used");
    assert!(changed >= 5, "after expiry only {changed} of 30 clients got another backend: selection must be random again");
}

#[test]
fn point_27_v6_a_remembered_backend_removed_from_the_set_is_not_used() {
    let Some(mut f) = Fixture::new("point_27_v6_a_remembered_backend_removed_from_the_set_is_not_used") else { return };
    f.program(&sticky_state(Some(10800), &[POD1, POD2, POD3]));
    let remembered = connect(&f, CLIENT, 46000);
    for i in 1..5 {
        assert_eq!(connect(&f, CLIENT, 46000 + i), remembered);
    }
    let rest: Vec<Ipv6Addr> = [POD1, POD2, POD3].into_iter().filter(|b| *b != remembered).collect();
    f.program(&sticky_state(Some(10800), &rest));
    let after: BTreeSet<Ipv6Addr> = (0..10).map(|i| connect(&f, CLIENT, 46100 + i)).collect();
    assert!(!after.contains(&remembered), "a new connection went to the removed backend {remembered}");
    assert_eq!(after.len(), 1, "the client sticks to its new backend: {after:?}");
    assert_eq!(f.counter(CNT_AFFINITY_HIT), 4 + 9);
}

// ---------------------------------------------------------------------------------------------
// Points 32, 33, 34, 41: NodePorts over XDP and its TC fallback
// ---------------------------------------------------------------------------------------------

/// Two NodePort services with externalTrafficPolicy Cluster: "web" (two remote endpoints) on
/// NODE:30080 and "single" (one remote endpoint) on NODE:30081.
fn nodeport_cluster_state() -> DesiredState {
    state([
        nodeport_service("web", NP_VIP, NODEPORT, Protocol::Tcp, vec![remote(REMOTE1, 8080), remote(REMOTE2, 8080)]),
        nodeport_service(
            "single",
            Ipv6Addr::new(0xfd00, 0x96, 0, 0, 0, 0, 0, 0x41),
            30081,
            Protocol::Tcp,
            vec![remote(REMOTE1, 8080)],
        ),
    ])
}

fn nodeport_cluster_policy(test: &str, ext: Ext) {
    let Some(mut f) = node_fixture(test) else { return };
    f.program(&nodeport_cluster_state());
    let client = (EXT_CLIENT, 40000);
    let syn = tcp_frame_ack(client, (NODE, NODEPORT), 5000, 0, TCP_SYN);
    let (verdict, out) = f.run_ext(ext, &syn);
    assert_eq!(verdict, ext.pass(), "a translated packet continues to the stack");
    assert_eq!(out.len(), syn.len());
    verify_checksum(&out).expect("checksum after DNAT + SNAT");
    let fl = flow(&out);
    assert!([REMOTE1, REMOTE2].contains(&fl.dst.0), "sent to {}, not a backend", fl.dst.0);
    assert_eq!(fl.dst.1, 8080);
    assert_eq!(fl.src.0, NODE, "point 32: external traffic is masqueraded to the node address");
    let snat_port = fl.src.1;
    assert!(SNAT_PORTS.contains(&snat_port), "SNAT port {snat_port} outside 61000..=65000");
    assert_eq!(tcp_info(&out).seq, 5000);
    let backend = fl.dst;

    let synack = tcp_frame_ack(backend, (NODE, snat_port), 9000, 5001, TCP_SYN | TCP_ACK);
    let (verdict, back) = f.run_ext(ext, &synack);
    assert_eq!(verdict, ext.pass());
    verify_checksum(&back).expect("checksum after reverse NAT");
    let fl = flow(&back);
    assert_eq!(fl.src, (NODE, NODEPORT), "the client sees the NodePort");
    assert_eq!(fl.dst, client, "un-SNATed back to the client");
    assert_eq!((tcp_info(&back).seq, tcp_info(&back).ack), (9000, 5001));

    let (verdict, out) = f.run_ext(ext, &tcp_frame_ack(client, (NODE, NODEPORT), 5001, 9001, TCP_ACK));
    assert_eq!(verdict, ext.pass());
    assert_eq!(flow(&out).src, (NODE, snat_port));
    assert_eq!(flow(&out).dst, backend);
    verify_checksum(&out).expect("checksum of an established packet");

    let mut ports = BTreeSet::new();
    for i in 0..20u16 {
        let client = (EXT_CLIENT, 41000 + i);
        let (verdict, out) = f.run_ext(ext, &tcp_frame_ack(client, (NODE, 30081), 1, 0, TCP_SYN));
        assert_eq!(verdict, ext.pass());
        verify_checksum(&out).expect("checksum after DNAT + SNAT");
        let fl = flow(&out);
        assert_eq!((fl.src.0, fl.dst), (NODE, (REMOTE1, 8080)));
        assert!(SNAT_PORTS.contains(&fl.src.1));
        assert!(ports.insert(fl.src.1), "SNAT port {} given to two flows", fl.src.1);
        let (verdict, back) = f.run_ext(ext, &tcp_frame_ack((REMOTE1, 8080), fl.src, 1, 2, TCP_SYN | TCP_ACK));
        assert_eq!(verdict, ext.pass());
        assert_eq!((flow(&back).src, flow(&back).dst), ((NODE, 30081), client));
        verify_checksum(&back).expect("checksum after reverse NAT");
    }
    assert_eq!(f.counter(CNT_SNAT), 21);
    assert_eq!(f.counter(CNT_NEW_FLOWS), 21);
    assert_eq!(f.counter(CNT_VERDICT_REVNAT), 21);
}

#[test]
fn point_32_41_v6_nodeport_over_xdp_with_cluster_policy_is_snated_and_reverse_translated() {
    nodeport_cluster_policy("point_32_41_v6_nodeport_over_xdp_with_cluster_policy_is_snated_and_reverse_translated", Ext::Xdp);
}

#[test]
fn point_32_41_v6_nodeport_over_tc_fallback_with_cluster_policy_is_snated_and_reverse_translated() {
    nodeport_cluster_policy(
        "point_32_41_v6_nodeport_over_tc_fallback_with_cluster_policy_is_snated_and_reverse_translated",
        Ext::Tc,
    );
}

/// A NodePort service with externalTrafficPolicy Local.
fn nodeport_local_state(endpoints: Vec<Endpoint>) -> DesiredState {
    let local: Vec<Endpoint> = endpoints.iter().filter(|e| e.local).cloned().collect();
    let (spn, mut sp) = nodeport_service("web", NP_VIP, NODEPORT, Protocol::Tcp, endpoints);
    sp.external = EndpointSet { drop_if_empty: local.is_empty() && !sp.cluster.is_empty(), endpoints: local };
    sp.external_snat = false;
    state([(spn, sp)])
}

#[test]
fn point_33_v6_local_policy_nodeport_keeps_the_client_source_and_uses_local_endpoints() {
    let Some(mut f) = node_fixture("point_33_v6_local_policy_nodeport_keeps_the_client_source_and_uses_local_endpoints") else {
        return;
    };
    f.program(&nodeport_local_state(vec![local_ep(POD1, 8080), remote(REMOTE1, 8080)]));
    for ext in [Ext::Xdp, Ext::Tc] {
        for i in 0..10u16 {
            let client = (EXT_CLIENT, 40000 + i + if ext == Ext::Tc { 100 } else { 0 });
            let (verdict, out) = f.run_ext(ext, &tcp_frame(client, (NODE, NODEPORT), 1000, TCP_SYN));
            assert_eq!(verdict, ext.pass());
            verify_checksum(&out).expect("checksum after DNAT");
            let fl = flow(&out);
            assert_eq!(fl.dst, (POD1, 8080), "{ext:?}: only the local endpoint serves external traffic");
            assert_eq!(fl.src, client, "{ext:?}: the client's source address and port are kept");
            let (verdict, back) = f.run(&tcp_frame((POD1, 8080), client, 1000, TCP_SYN | TCP_ACK));
            assert_eq!(verdict, TC_ACT_OK);
            assert_eq!((flow(&back).src, flow(&back).dst), ((NODE, NODEPORT), client));
            verify_checksum(&back).expect("checksum after reverse NAT");
        }
    }
    assert_eq!(f.counter(CNT_SNAT), 0);
}

#[test]
fn point_33_38_v6_local_policy_without_local_endpoint_drops_external_traffic() {
    let Some(mut f) = node_fixture("point_33_38_v6_local_policy_without_local_endpoint_drops_external_traffic") else { return };
    f.program(&nodeport_local_state(vec![remote(REMOTE1, 8080)]));
    let syn = tcp_frame((EXT_CLIENT, 40000), (NODE, NODEPORT), 1000, TCP_SYN);
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

#[test]
fn point_34_v6_pod_to_nodeport_of_local_policy_service_uses_the_cluster_set() {
    let Some(mut f) = node_fixture("point_34_v6_pod_to_nodeport_of_local_policy_service_uses_the_cluster_set") else { return };
    f.program(&nodeport_local_state(vec![remote(REMOTE1, 8080)]));
    let (verdict, out) = f.run(&tcp_frame((CLIENT, 40020), (NODE, NODEPORT), 1000, TCP_SYN));
    assert_eq!(verdict, TC_ACT_OK);
    let fl = flow(&out);
    assert_eq!(fl.dst, (REMOTE1, 8080), "the Cluster set serves this node's pods");
    assert_eq!(fl.src, (CLIENT, 40020), "pod traffic is not source-NATed");
    verify_checksum(&out).expect("checksum after DNAT");
    let (_, back) = f.run(&tcp_frame((REMOTE1, 8080), (CLIENT, 40020), 1000, TCP_SYN | TCP_ACK));
    assert_eq!((flow(&back).src, flow(&back).dst), ((NODE, NODEPORT), (CLIENT, 40020)));
    verify_checksum(&back).expect("checksum after reverse NAT");
    assert_eq!(f.counter(CNT_DROP_NO_LOCAL_BACKEND), 0);
}

// ---------------------------------------------------------------------------------------------
// Point 51: hairpin
// ---------------------------------------------------------------------------------------------

#[test]
fn point_51_v6_pod_reaching_itself_through_its_service_is_hairpinned() {
    let Some(mut f) = node_fixture("point_51_v6_pod_reaching_itself_through_its_service_is_hairpinned") else { return };
    f.program(&state([service("self", VIP, 80, Protocol::Tcp, vec![local_ep(POD1, 8080)])]));
    let (verdict, out) = f.run(&tcp_frame_ack((POD1, 45000), (VIP, 80), 77, 0, TCP_SYN));
    assert_eq!(verdict, TC_ACT_OK);
    verify_checksum(&out).expect("checksum after DNAT + hairpin SNAT");
    assert_eq!(flow(&out).dst, (POD1, 8080));
    assert_eq!(flow(&out).src, (HAIRPIN, 45000), "source-NATed to the hairpin address, port kept");
    let (verdict, back) = f.run(&tcp_frame_ack((POD1, 8080), (HAIRPIN, 45000), 900, 78, TCP_SYN | TCP_ACK));
    assert_eq!(verdict, TC_ACT_OK);
    verify_checksum(&back).expect("checksum after reverse NAT");
    assert_eq!(flow(&back).src, (VIP, 80), "the pod sees its service");
    assert_eq!(flow(&back).dst, (POD1, 45000));
    assert_eq!(f.counter(CNT_HAIRPIN), 1);
    let (_, out) = f.run(&tcp_frame((CLIENT, 45001), (VIP, 80), 1000, TCP_SYN));
    assert_eq!(flow(&out).src, (CLIENT, 45001));
    assert_eq!(f.counter(CNT_HAIRPIN), 1);
}

#[test]
fn point_51_v6_pod_reaching_itself_through_its_nodeport_is_hairpinned() {
    let Some(mut f) = node_fixture("point_51_v6_pod_reaching_itself_through_its_nodeport_is_hairpinned") else { return };
    f.program(&state([nodeport_service("self", NP_VIP, NODEPORT, Protocol::Tcp, vec![local_ep(POD1, 8080)])]));
    let (verdict, out) = f.run(&tcp_frame((POD1, 45100), (NODE, NODEPORT), 1000, TCP_SYN));
    assert_eq!(verdict, TC_ACT_OK);
    verify_checksum(&out).expect("checksum after DNAT + hairpin SNAT");
    assert_eq!((flow(&out).src, flow(&out).dst), ((HAIRPIN, 45100), (POD1, 8080)));
    let (_, back) = f.run(&tcp_frame((POD1, 8080), (HAIRPIN, 45100), 1000, TCP_SYN | TCP_ACK));
    assert_eq!((flow(&back).src, flow(&back).dst), ((NODE, NODEPORT), (POD1, 45100)));
    verify_checksum(&back).expect("checksum after reverse NAT");
    assert_eq!(f.counter(CNT_HAIRPIN), 1);
}

// ---------------------------------------------------------------------------------------------
// Point 58: ICMPv6 errors about translated flows
// ---------------------------------------------------------------------------------------------

/// "Packet too big, MTU 1400".
const MTU_1400: [u8; 4] = [0, 0, 0x05, 0x78];

/// An ICMPv6 error frame `src → dst` quoting `quoted`.
fn icmp_frame(src: Ipv6Addr, dst: Ipv6Addr, ty: u8, code: u8, rest: [u8; 4], quoted: &[u8]) -> Vec<u8> {
    frame(&packet(src, dst, NEXT_ICMPV6, &[], &icmp_error(src, dst, ty, code, rest, quoted)))
}

/// Point 58: ICMPv6 errors (packet too big, destination unreachable, time exceeded, parameter
/// problem) from the backend about a DNATed flow are translated back: the quoted packet becomes
/// what the client sent (destination VIP:80) and the error comes from the VIP; an error from a
/// router on the path keeps its source. The ICMPv6 checksum (pseudo-header included) stays
/// valid.
#[test]
fn point_58_v6_icmp_errors_about_a_clusterip_flow_are_translated_back() {
    let Some(mut f) = Fixture::new("point_58_v6_icmp_errors_about_a_clusterip_flow_are_translated_back") else { return };
    f.program(&twin_cluster());
    let client = (CLIENT, 40030);
    let (_, out) = f.run(&tcp_frame_ack(client, (VIP, 80), 1000, 0, TCP_SYN));
    let backend = flow(&out).dst;
    assert!(backends().contains(&backend.0));

    let quote = quote_tcp(client, backend, 1460, 1001);
    let err = icmp_frame(backend.0, CLIENT, ICMPV6_PKT_TOOBIG, 0, MTU_1400, &quote);
    verify_checksum(&err).expect("the built error");
    let (verdict, out) = f.run(&err);
    assert_eq!(verdict, TC_ACT_OK);
    assert_eq!(out.len(), err.len());
    let h = ipv6(&out);
    assert_eq!(
        (h.src, h.dst, h.payload_len),
        (VIP, CLIENT, ipv6(&err).payload_len),
        "an error the backend sent appears to come from the VIP"
    );
    let i = icmp6(&out);
    assert_eq!((i.ty, i.code, i.rest), (ICMPV6_PKT_TOOBIG, 0, MTU_1400));
    assert_eq!((i.inner.src, i.inner_sport), client, "quoted source unchanged (no SNAT)");
    assert_eq!((i.inner.dst, i.inner_dport), (VIP, 80), "the quoted packet is what the client sent");
    assert_eq!(&out[i.inner_off + 44..], &err[i.inner_off + 44..], "the quoted sequence number is untouched");
    verify_checksum(&out).expect("ICMPv6 checksum");
    assert_eq!(f.counter(CNT_ICMP_TRANSLATED), 1);

    // From a router on the path (quoting more than 8 bytes, as Linux does): the outer source is
    // the router's and stays. Time exceeded and parameter problem are translated the same way.
    let mut long_quote = quote_tcp(client, backend, 1460, 1001);
    long_quote.extend_from_slice(&[0x50, 0x10, 0xff, 0xff, 0, 0, 0, 0]);
    long_quote.extend_from_slice(&[0xab; 101]);
    for (k, (ty, code, rest)) in
        [(ICMPV6_PKT_TOOBIG, 0, MTU_1400), (ICMPV6_TIME_EXCEED, 0, [0; 4]), (ICMPV6_PARAMPROB, 0, [0, 0, 0, 6])]
            .into_iter()
            .enumerate()
    {
        let err = icmp_frame(ROUTER, CLIENT, ty, code, rest, &long_quote);
        let (verdict, out) = f.run(&err);
        assert_eq!(verdict, TC_ACT_OK, "type {ty}");
        let h = ipv6(&out);
        assert_eq!((h.src, h.dst), (ROUTER, CLIENT), "type {ty}: a router's error keeps the router's address");
        let i = icmp6(&out);
        assert_eq!((i.ty, i.code, i.rest), (ty, code, rest));
        assert_eq!((i.inner.dst, i.inner_dport), (VIP, 80), "type {ty}");
        assert_eq!((i.inner.src, i.inner_sport), client, "type {ty}");
        assert_eq!(&out[out.len() - 101..], &[0xab; 101][..], "the rest of the quote is untouched");
        verify_checksum(&out).expect("ICMPv6 checksum");
        assert_eq!(f.counter(CNT_ICMP_TRANSLATED), 2 + k as u64);
    }

    // A UDP flow: the backend's port unreachable quoting the whole datagram it received. Once
    // translated, the quote is byte for byte what the client sent (the quoted UDP checksum too).
    let query = udp_frame((CLIENT, 5360), (UDP_VIP, 53), b"query");
    let (_, received) = f.run(&query);
    let backend = flow(&received).dst;
    assert_eq!(backend.1, 9000);
    let err = icmp_frame(backend.0, CLIENT, ICMPV6_DEST_UNREACH, ICMPV6_PORT_UNREACH, [0; 4], &received[14..]);
    let (verdict, out) = f.run(&err);
    assert_eq!(verdict, TC_ACT_OK);
    assert_eq!(ipv6(&out).src, UDP_VIP);
    assert_eq!(&out[14 + 40 + 8..], &query[14..], "the quoted datagram is the client's, checksum included");
    verify_checksum(&out).expect("ICMPv6 checksum");
    assert_eq!(f.counter(CNT_ICMP_TRANSLATED), 5);

    // An error quoting a flow that was never translated passes untouched.
    let unknown = quote_tcp((CLIENT, 40031), (POD3, 8080), 1460, 1);
    let other = icmp_frame(POD3, CLIENT, ICMPV6_PKT_TOOBIG, 0, MTU_1400, &unknown);
    let (verdict, out) = f.run(&other);
    assert_eq!((verdict, out), (TC_ACT_OK, other));
    assert_eq!(f.counter(CNT_ICMP_TRANSLATED), 5);
}

#[test]
fn point_58_v6_icmp_error_about_a_snated_nodeport_flow_reaches_the_client_over_xdp() {
    snated_icmp_error("point_58_v6_icmp_error_about_a_snated_nodeport_flow_reaches_the_client_over_xdp", Ext::Xdp);
}

#[test]
fn point_58_v6_icmp_error_about_a_snated_nodeport_flow_reaches_the_client_over_tc_fallback() {
    snated_icmp_error("point_58_v6_icmp_error_about_a_snated_nodeport_flow_reaches_the_client_over_tc_fallback", Ext::Tc);
}

fn snated_icmp_error(test: &str, ext: Ext) {
    let Some(mut f) = node_fixture(test) else { return };
    f.program(&nodeport_cluster_state());
    let client = (EXT_CLIENT, 40000);
    let (verdict, out) = f.run_ext(ext, &tcp_frame_ack(client, (NODE, NODEPORT), 5000, 0, TCP_SYN));
    assert_eq!(verdict, ext.pass());
    let (snat, backend) = (flow(&out).src, flow(&out).dst);
    assert_eq!(snat.0, NODE);

    let quote = quote_tcp(snat, backend, 1460, 5001);
    let err = icmp_frame(backend.0, NODE, ICMPV6_PKT_TOOBIG, 0, MTU_1400, &quote);
    let (verdict, out) = f.run_ext(ext, &err);
    assert_eq!(verdict, ext.pass());
    assert_eq!(out.len(), err.len());
    let h = ipv6(&out);
    assert_eq!(h.dst, EXT_CLIENT, "the error is addressed to the client");
    assert_eq!(h.src, NODE, "from the address the client talked to");
    let i = icmp6(&out);
    assert_eq!((i.ty, i.code, i.rest), (ICMPV6_PKT_TOOBIG, 0, MTU_1400));
    assert_eq!((i.inner.src, i.inner_sport), client, "quoted source: the client, un-SNATed");
    assert_eq!((i.inner.dst, i.inner_dport), (NODE, NODEPORT), "quoted destination: the NodePort");
    verify_checksum(&out).expect("ICMPv6 checksum");
    assert_eq!(f.counter(CNT_ICMP_TRANSLATED), 1);
}

// ---------------------------------------------------------------------------------------------
// Point 48: loadBalancerSourceRanges
// ---------------------------------------------------------------------------------------------

#[test]
fn point_48_v6_load_balancer_source_ranges_restrict_only_the_load_balancer_ip() {
    let Some(mut f) = node_fixture("point_48_v6_load_balancer_source_ranges_restrict_only_the_load_balancer_ip") else { return };
    let lb_ip = Ipv6Addr::new(0x2001, 0xdb8, 0x100, 0, 0, 0, 0, 7);
    let lb_vip = Ipv6Addr::new(0xfd00, 0x96, 0, 0, 0, 0, 0, 0x50);
    let (spn, mut sp) = service("lb", lb_vip, 443, Protocol::Tcp, vec![remote(REMOTE1, 8443)]);
    sp.frontends.push(Frontend { addr: IpAddr::V6(NODE), port: 30443, kind: FrontendKind::NodePort });
    sp.frontends.push(Frontend { addr: IpAddr::V6(lb_ip), port: 443, kind: FrontendKind::LoadBalancer });
    sp.source_ranges = vec![Cidr { addr: IpAddr::V6(a("fd0a::")), prefix: 16 }];
    let (spn2, mut sp2) = (spn.clone(), sp.clone());
    f.program(&state([(spn, sp)]));

    for (src, allowed) in [
        (a("fd0a:1:2::3"), true),
        (a("fd0a:ffff:ffff:ffff:ffff:ffff:ffff:fffe"), true),
        (a("2001:db8:9::9"), false),
        (a("fd0b::1"), false),
        (a("fd09:ffff:ffff:ffff:ffff:ffff:ffff:ffff"), false),
    ] {
        let (verdict, out) = f.run_xdp(&tcp_frame((src, 40000), (lb_ip, 443), 1000, TCP_SYN));
        if allowed {
            assert_eq!(verdict, XDP_PASS, "{src} is inside fd0a::/16");
            assert_eq!(flow(&out).dst, (REMOTE1, 8443));
            verify_checksum(&out).expect("checksum");
        } else {
            assert_eq!(verdict, XDP_DROP, "{src} is outside fd0a::/16");
        }
    }
    assert_eq!(f.counter(CNT_DROP_SOURCE_RANGE), 3);
    // The NodePort of the same service is not subject to the ranges.
    let (verdict, out) = f.run_xdp(&tcp_frame((a("2001:db8:9::9"), 40001), (NODE, 30443), 1000, TCP_SYN));
    assert_eq!(verdict, XDP_PASS);
    assert_eq!(flow(&out).dst, (REMOTE1, 8443));
    // Nor is the ClusterIP, from a pod outside the ranges.
    let (verdict, out) = f.run(&tcp_frame((a("fd00:172:16::5"), 40002), (lb_vip, 443), 1000, TCP_SYN));
    assert_eq!(verdict, TC_ACT_OK);
    assert_eq!(flow(&out).dst, (REMOTE1, 8443));
    assert_eq!(f.counter(CNT_DROP_SOURCE_RANGE), 3);
    assert_eq!(f.counter(CNT_NEW_FLOWS), 4);

    // Changing the ranges takes effect live: 2001:db8::/32 only, then none.
    let outsider = a("2001:db8:9::9");
    sp2.source_ranges = vec![Cidr { addr: IpAddr::V6(a("2001:db8::")), prefix: 32 }];
    f.program(&state([(spn2.clone(), sp2.clone())]));
    let (verdict, _) = f.run_xdp(&tcp_frame((outsider, 40010), (lb_ip, 443), 1000, TCP_SYN));
    assert_eq!(verdict, XDP_PASS, "{outsider} is inside the new range");
    let (verdict, _) = f.run_xdp(&tcp_frame((a("fd0a:1:2::3"), 40011), (lb_ip, 443), 1000, TCP_SYN));
    assert_eq!(verdict, XDP_DROP, "fd0a:1:2::3 is outside the new range");
    sp2.source_ranges.clear();
    f.program(&state([(spn2, sp2)]));
    let (verdict, _) = f.run_xdp(&tcp_frame((a("fd0a:1:2::3"), 40012), (lb_ip, 443), 1000, TCP_SYN));
    assert_eq!(verdict, XDP_PASS, "without ranges every source is allowed");
    assert_eq!(f.counter(CNT_DROP_SOURCE_RANGE), 4);
}

// ---------------------------------------------------------------------------------------------
// Per-service and per-backend counters
// ---------------------------------------------------------------------------------------------

fn stats_of(v: &[(u32, FlowCounters)], id: u32) -> FlowCounters {
    v.iter().find(|(k, _)| *k == id).map(|(_, s)| *s).unwrap_or_default()
}

/// Point 23 as the operator sees it; an IPv6 packet counts its payload length + 40 bytes.
#[test]
fn point_23_v6_per_service_and_per_backend_counters_count_every_packet_of_a_flow() {
    let Some(mut f) = Fixture::new("point_23_v6_per_service_and_per_backend_counters_count_every_packet_of_a_flow") else {
        return;
    };
    f.program(&twin_cluster());
    let client = (CLIENT, 40040);
    let (_, out) = f.run(&syn(client.1));
    let backend = flow(&out).dst;
    for _ in 0..4 {
        f.run(&tcp_frame(client, (VIP, 80), 1001, TCP_ACK));
    }
    for _ in 0..3 {
        let (_, back) = f.run(&tcp_frame(backend, client, 1, TCP_ACK));
        assert_eq!(flow(&back).src, (VIP, 80));
    }
    let pins = PinnedMaps::open(f.dp.pin_path()).expect("open pins");
    let svc = f.svc_id(VIP, 80, IPPROTO_TCP);
    let be = f.backend_id(backend.0, 8080, IPPROTO_TCP);
    let expected = FlowCounters { packets: 8, bytes: 8 * 60, new_flows: 1 };
    assert_eq!(stats_of(&pins.service_counters().expect("service counters"), svc), expected);
    assert_eq!(stats_of(&pins.backend_counters().expect("backend counters"), be), expected);
    for other in [POD1, POD2, POD3].into_iter().filter(|p| *p != backend.0) {
        let id = f.backend_id(other, 8080, IPPROTO_TCP);
        assert_eq!(stats_of(&pins.backend_counters().unwrap(), id), FlowCounters::default(), "backend {other} saw no packet");
    }
    let dns = f.svc_id(UDP_VIP, 53, IPPROTO_UDP);
    assert_eq!(stats_of(&pins.service_counters().unwrap(), dns), FlowCounters::default());
}

// ---------------------------------------------------------------------------------------------
// Point 41 with extension headers
// ---------------------------------------------------------------------------------------------

/// Point 41, the twin of the IPv4-options fixture: a NodePort packet carrying extension headers
/// (a hop-by-hop router alert; the longest chain the parser follows, 200 bytes that put the TCP
/// header at byte 254) is translated with the L4 header found behind them, headers kept,
/// checksum valid, over XDP and its TC fallback; so is its reply.
#[test]
fn point_41_v6_nodeport_packets_with_extension_headers_are_translated() {
    let Some(mut f) = node_fixture("point_41_v6_nodeport_packets_with_extension_headers_are_translated") else { return };
    f.program(&nodeport_cluster_state());
    let router = router_alert(NEXT_TCP);
    let mut longest = router_alert(NEXT_DEST);
    longest.extend(options_header(NEXT_TCP, 192));
    let mut sport = 40100;
    for ext in [Ext::Xdp, Ext::Tc] {
        for hdrs in [&router, &longest] {
            sport += 1;
            let client = (EXT_CLIENT, sport);
            let seg = tcp_segment(client, (NODE, NODEPORT), 10, 0, TCP_SYN, b"");
            let input = frame(&packet(EXT_CLIENT, NODE, NEXT_HOP, hdrs, &seg));
            let (verdict, out) = f.run_ext(ext, &input);
            assert_eq!(verdict, ext.pass(), "{ext:?} with {} bytes of extension headers", hdrs.len());
            assert_eq!(out.len(), input.len());
            verify_checksum(&out).expect("checksum behind extension headers");
            assert_eq!(ipv6(&out).next, NEXT_HOP);
            assert_eq!(&out[54..54 + hdrs.len()], &hdrs[..], "extension headers kept");
            let fl = flow(&out);
            assert!([REMOTE1, REMOTE2].contains(&fl.dst.0));
            assert_eq!(fl.dst.1, 8080, "the port behind the extension headers was rewritten");
            assert_eq!(fl.src.0, NODE);
            assert!(SNAT_PORTS.contains(&fl.src.1));
            let reply_seg = tcp_segment(fl.dst, fl.src, 20, 11, TCP_SYN | TCP_ACK, b"");
            let reply = frame(&packet(fl.dst.0, NODE, NEXT_HOP, hdrs, &reply_seg));
            let (verdict, back) = f.run_ext(ext, &reply);
            assert_eq!(verdict, ext.pass());
            verify_checksum(&back).expect("checksum of the reply behind extension headers");
            assert_eq!((flow(&back).src, flow(&back).dst), ((NODE, NODEPORT), client));
        }
    }
    assert_eq!(f.counter(CNT_SNAT), 4);
}

// ---------------------------------------------------------------------------------------------
// Additional findings
// ---------------------------------------------------------------------------------------------

/// Point 58, the other direction: a UDP client that closed its socket answers the backend's
/// (reverse-translated) reply VIP:53 → client with an ICMPv6 port unreachable addressed to the
/// VIP; it must reach the backend (outer destination and quoted source translated).
#[test]
fn point_58_v6_icmp_error_from_the_client_about_a_reply_reaches_the_backend() {
    let Some(mut f) = Fixture::new("point_58_v6_icmp_error_from_the_client_about_a_reply_reaches_the_backend") else { return };
    f.program(&twin_cluster());
    let client = (CLIENT, 5361);
    let (_, received) = f.run(&udp_frame(client, (UDP_VIP, 53), b"query"));
    let backend = flow(&received).dst;
    let answer = udp_frame(backend, client, b"answer");
    let (_, delivered) = f.run(&answer);
    assert_eq!(flow(&delivered).src, (UDP_VIP, 53));
    // The client's kernel quotes what it received: VIP:53 → client.
    let err = icmp_frame(CLIENT, UDP_VIP, ICMPV6_DEST_UNREACH, ICMPV6_PORT_UNREACH, [0; 4], &delivered[14..]);
    let (verdict, out) = f.run(&err);
    assert_eq!(verdict, TC_ACT_OK);
    let h = ipv6(&out);
    assert_eq!((h.src, h.dst), (CLIENT, backend.0), "the error must go to the backend, not to the VIP");
    let i = icmp6(&out);
    assert_eq!((i.ty, i.code), (ICMPV6_DEST_UNREACH, ICMPV6_PORT_UNREACH));
    assert_eq!((i.inner.src, i.inner_sport), backend, "the quote is what the backend sent");
    assert_eq!(&out[14 + 40 + 8..], &answer[14..], "byte for byte, checksum included");
    verify_checksum(&out).expect("ICMPv6 checksum");
    assert_eq!(f.counter(CNT_ICMP_TRANSLATED), 1);
}

/// Point 62 over XDP with SNAT: every fragment of a datagram to a UDP NodePort gets the same
/// DNAT and SNAT (later fragments in the IPv6 header only), and so does the fragmented reply.
#[test]
fn point_62_v6_fragmented_datagram_to_a_udp_nodeport_is_translated_over_xdp() {
    let Some(mut f) = node_fixture("point_62_v6_fragmented_datagram_to_a_udp_nodeport_is_translated_over_xdp") else { return };
    f.program(&state([nodeport_service("dns", UDP_VIP, 30053, Protocol::Udp, vec![remote(REMOTE1, 9000)])]));
    let client = (EXT_CLIENT, 5362);
    let payload = vec![0x5a; 2000 - 8];
    let dgram = udp(client, (NODE, 30053), &payload);
    let cuts = [0usize, 1448, dgram.len()];
    let mut reassembled = Vec::new();
    let mut snat = None;
    for (k, w) in cuts.windows(2).enumerate() {
        let more = w[1] < dgram.len();
        let input = fragment(EXT_CLIENT, NODE, NEXT_UDP, w[0], more, 0x4444, &dgram[w[0]..w[1]]);
        let (verdict, out) = f.run_xdp(&input);
        assert_eq!(verdict, XDP_PASS, "fragment {k}");
        let h = ipv6(&out);
        assert_eq!((h.src, h.dst), (NODE, REMOTE1), "fragment {k}: SNAT + DNAT");
        assert_eq!(&out[54..62], &input[54..62], "fragment {k}: the fragment header is unchanged");
        if k == 0 {
            let u = l4_bytes(&out);
            snat = Some(u16::from_be_bytes([u[0], u[1]]));
            assert_eq!(u16::from_be_bytes([u[2], u[3]]), 9000);
        } else {
            let expected = with_addr(&with_addr(&input, DADDR_OFF, REMOTE1), SADDR_OFF, NODE);
            assert_eq!(out, expected, "a later fragment changes in its IPv6 header only");
        }
        reassembled.extend_from_slice(l4_bytes(&out));
    }
    let snat = snat.expect("first fragment seen");
    assert!(SNAT_PORTS.contains(&snat));
    verify_udp_datagram(NODE, REMOTE1, &reassembled).expect("UDP checksum of the reassembled datagram");

    let answer = udp((REMOTE1, 9000), (NODE, snat), &payload);
    let mut reply = Vec::new();
    for (k, w) in cuts.windows(2).enumerate() {
        let more = w[1] < answer.len();
        let input = fragment(REMOTE1, NODE, NEXT_UDP, w[0], more, 0x4545, &answer[w[0]..w[1]]);
        let (verdict, out) = f.run_xdp(&input);
        assert_eq!(verdict, XDP_PASS, "reply fragment {k}");
        assert_eq!((ipv6(&out).src, ipv6(&out).dst), (NODE, EXT_CLIENT), "reply fragment {k}");
        reply.extend_from_slice(l4_bytes(&out));
    }
    assert_eq!(u16::from_be_bytes([reply[0], reply[1]]), 30053);
    assert_eq!(u16::from_be_bytes([reply[2], reply[3]]), client.1);
    verify_udp_datagram(NODE, EXT_CLIENT, &reply).expect("UDP checksum of the reassembled reply");
    assert_eq!(f.counter(CNT_FRAG_FOLLOWED), 2);
}

/// Point 25: the affinity record is per ServicePort, whichever of its addresses was used.
#[test]
fn point_25_v6_affinity_applies_whichever_address_of_the_service_is_used() {
    let Some(mut f) = node_fixture("point_25_v6_affinity_applies_whichever_address_of_the_service_is_used") else { return };
    let (spn, mut sp) = nodeport_service(
        "web",
        NP_VIP,
        NODEPORT,
        Protocol::Tcp,
        vec![local_ep(POD1, 8080), local_ep(POD2, 8080), local_ep(POD3, 8080)],
    );
    sp.affinity_timeout_s = Some(10800);
    f.program(&state([(spn, sp)]));
    for c in 1..=6u16 {
        let client = Ipv6Addr::new(0xfd00, 0x244, 5, 0, 0, 0, 0, c);
        let (_, out) = f.run(&tcp_frame((client, 47000), (NP_VIP, 80), 1000, TCP_SYN));
        let chosen = flow(&out).dst.0;
        assert!(backends().contains(&chosen));
        for i in 1..4 {
            let (_, out) = f.run(&tcp_frame((client, 47000 + i), (NODE, NODEPORT), 1000, TCP_SYN));
            assert_eq!(flow(&out).dst.0, chosen, "{client}: the NodePort must honour the ClusterIP's affinity record");
        }
    }
    assert_eq!(f.counter(CNT_AFFINITY_HIT), 6 * 3);
}
