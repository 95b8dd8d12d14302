//! The IPv6 twins of the BPF_PROG_TEST_RUN fixtures: the same programs, the same maps (16-byte
//! addresses), IPv6 frames. Point numbers refer to k8s-service-semantics.md section 1.

mod common;

use std::{
    collections::BTreeSet,
    net::{IpAddr, Ipv6Addr},
};

use common::{Ext, Fixture, TC_ACT_OK, TC_ACT_REDIRECT, TC_ACT_SHOT, XDP_TX};
use lb_common::{
    CFG_F_HAIRPIN6_READY, CFG_F_SNAT6_READY, CNT_DROP_BAD_L4, CNT_FRAG_FOLLOWED, CNT_ICMP_TRANSLATED,
    CNT_REJECT_ICMP, CNT_REJECT_TCP, CNT_VERDICT_DNAT, CNT_VERDICT_REVNAT,
};
use lb_tests::packet6::{
    NEXT_AH, NEXT_FRAGMENT, NEXT_HOP, NEXT_ICMPV6, NEXT_TCP, NEXT_UDP, flow, fragment_header, frame,
    hop_by_hop, icmp_error, packet, tcp, tcp_frame, udp, udp_frame, verify_checksum,
};
use lb_userspace::model::{
    Cidr, DesiredState, Endpoint, EndpointSet, Family, Frontend, FrontendKind, Protocol, Selection,
    ServicePortName, ServicePortState,
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
    Endpoint { addr: IpAddr::V6(ip), port, local, terminating: false }
}

fn port_state(frontends: Vec<Frontend>, eps: Vec<Endpoint>, selection: Selection) -> ServicePortState {
    let set = EndpointSet { endpoints: eps, drop_if_empty: false };
    ServicePortState {
        frontends,
        internal: set.clone(),
        cluster: set.endpoints.clone(),
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
        port_state(vec![clusterip(vip(), 80)], vec![ep(p1, 8080, true), ep(p2, 8080, true), ep(p3, 8080, true)], Selection::Random),
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
    let Some(f) = fixture("point_22_v6_syn_to_clusterip_is_dnated_with_a_valid_checksum_and_reaches_every_backend") else { return };
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
    let sum = lb_tests::packet::checksum(l4, lb_tests::packet6::pseudo_sum(client(), dst, NEXT_TCP, l4.len()));
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
    d.services.insert(name("self", Protocol::Tcp), port_state(vec![clusterip(vip(), 80)], vec![ep(p, 8080, true)], Selection::Random));
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
