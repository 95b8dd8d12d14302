//! Tier 1: BPF_PROG_TEST_RUN fixtures. The real eBPF object is loaded into the real kernel, its
//! maps are programmed through the agent's own planner and `Dataplane`, and packets go in to
//! come out with a verdict. Point numbers refer to k8s-service-semantics.md section 1.
//!
//! Three programs are exercised: the pod-interface TC program (`Fixture::run`), the external
//! XDP program (`Fixture::run_xdp`) and its TC fallback (`Fixture::run_ext` with `Ext::Tc`).
//! External fixtures model a node 192.168.77.1 whose agent configured SNAT to that address
//! (ports 61000..=65000) and the hairpin address 169.254.42.1.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, Ipv4Addr},
    time::Duration,
};

use lb_common::{
    CFG_F_HAIRPIN_READY, CFG_F_SNAT_READY, CNT_AFFINITY_HIT, CNT_CT_RESELECT, CNT_DROP_BAD_L4, CNT_DROP_FRAGMENT,
    CNT_DROP_NO_BACKEND, CNT_DROP_NO_LOCAL_BACKEND, CNT_DROP_SOURCE_RANGE, CNT_FRAG_FOLLOWED, CNT_HAIRPIN, CNT_ICMP_TRANSLATED,
    CNT_NEW_FLOWS, CNT_PASS_BAD_L3, CNT_PASS_NOT_IP, CNT_REJECT_ICMP, CNT_REJECT_TCP, CNT_SNAT, CNT_VERDICT_DNAT,
    CNT_VERDICT_DROP, CNT_VERDICT_PASS, CNT_VERDICT_REJECT, CNT_VERDICT_REVNAT, FlowCounters, IPPROTO_TCP, IPPROTO_UDP,
    PROG_TC_EGRESS, v4_mapped,
};
use lb_tests::packet::{
    ICMP_DEST_UNREACH, ICMP_FRAG_NEEDED, ICMP_PORT_UNREACH, MAC_DST, MAC_SRC, PROTO_ICMP, PROTO_TCP, PROTO_UDP, Spec, TCP_ACK,
    TCP_RST, TCP_SYN, checksum, flow, icmp, icmp_error, ipv4, ipv4_frame, l4_bytes, quote_tcp, tcp, tcp_frame, tcp_segment,
    udp_datagram, verify_checksums, verify_icmp_checksums, verify_ipv4_checksum, verify_udp_datagram,
};
mod common;

use common::{Ext, Fixture, TC_ACT_OK, TC_ACT_REDIRECT, TC_ACT_SHOT, XDP_DROP, XDP_PASS, XDP_TX};
use lb_userspace::{
    maps::pinned::PinnedMaps,
    model::{
        Cidr, DesiredState, Endpoint, EndpointSet, Frontend, FrontendKind, Protocol, Selection, ServicePortName, ServicePortState,
    },
};

const VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
const UDP_VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 20);
const EMPTY_VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 30);
const EMPTY_UDP_VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 31);
const CLIENT: Ipv4Addr = Ipv4Addr::new(10, 244, 0, 50);
const POD1: Ipv4Addr = Ipv4Addr::new(10, 244, 0, 11);
const POD2: Ipv4Addr = Ipv4Addr::new(10, 244, 0, 12);
const POD3: Ipv4Addr = Ipv4Addr::new(10, 244, 0, 13);
/// A router between this node and the pods (source of ICMP errors that are not the backend's).
const ROUTER: Ipv4Addr = Ipv4Addr::new(10, 244, 0, 1);

/// This node's address: NodePort frontend and SNAT source.
const NODE: Ipv4Addr = Ipv4Addr::new(192, 168, 77, 1);
/// A client outside the cluster.
const EXT_CLIENT: Ipv4Addr = Ipv4Addr::new(192, 168, 77, 50);
const HAIRPIN: Ipv4Addr = Ipv4Addr::new(169, 254, 42, 1);
const SNAT_PORTS: std::ops::RangeInclusive<u16> = 61000..=65000;
/// Endpoints on other nodes.
const REMOTE1: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 21);
const REMOTE2: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 22);
/// ClusterIP of the NodePort services.
const NP_VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 40);
const NODEPORT: u16 = 30080;

/// A fixture for node [`NODE`]: SNAT to the node address, hairpin address set.
fn node(test: &str) -> Option<Fixture> {
    Fixture::with_config(
        test,
        &lb_common::Config {
            snat_addr: v4_mapped(NODE.octets()),
            hairpin_addr: v4_mapped(HAIRPIN.octets()),
            snat_port_min: *SNAT_PORTS.start(),
            snat_port_max: *SNAT_PORTS.end(),
            flags: CFG_F_SNAT_READY | CFG_F_HAIRPIN_READY,
            ..Default::default()
        },
    )
}

fn ep(ip: Ipv4Addr, port: u16) -> Endpoint {
    Endpoint { addr: IpAddr::V4(ip), port, local: true, terminating: false, host: false }
}

fn remote(ip: Ipv4Addr, port: u16) -> Endpoint {
    Endpoint { addr: IpAddr::V4(ip), port, local: false, terminating: false, host: false }
}

fn service(name: &str, vip: Ipv4Addr, port: u16, proto: Protocol, eps: Vec<Endpoint>) -> (ServicePortName, ServicePortState) {
    let set = EndpointSet { endpoints: eps, drop_if_empty: false };
    (
        ServicePortName {
            namespace: "default".into(),
            name: name.into(),
            port_name: String::new(),
            protocol: proto,
            family: Default::default(),
        },
        ServicePortState {
            frontends: vec![Frontend { addr: IpAddr::V4(vip), port, kind: FrontendKind::ClusterIp }],
            internal: set.clone(),
            cluster: set.endpoints.clone(),
            serving: set.endpoints.clone(),
            external: set,
            external_snat: true,
            source_ranges: Vec::new(),
            affinity_timeout_s: None,
            selection: Selection::Random,
        },
    )
}

/// A NodePort service (ClusterIP `vip`:80 and NODE:`nodeport`) with externalTrafficPolicy
/// Cluster: every endpoint serves external traffic, which is source-NATed to the node.
fn nodeport_service(
    name: &str,
    vip: Ipv4Addr,
    nodeport: u16,
    proto: Protocol,
    eps: Vec<Endpoint>,
) -> (ServicePortName, ServicePortState) {
    let (spn, mut sp) = service(name, vip, 80, proto, eps);
    sp.frontends.push(Frontend { addr: IpAddr::V4(NODE), port: nodeport, kind: FrontendKind::NodePort });
    (spn, sp)
}

fn state(services: impl IntoIterator<Item = (ServicePortName, ServicePortState)>) -> DesiredState {
    let mut d = DesiredState::default();
    d.services.extend(services);
    d
}

/// kubia (TCP 80 → 8080 on three pods), a UDP service (53 → 9000) and a service without
/// endpoints.
fn cluster() -> DesiredState {
    let mut d = DesiredState::default();
    d.services.extend([
        service("kubia", VIP, 80, Protocol::Tcp, vec![ep(POD1, 8080), ep(POD2, 8080), ep(POD3, 8080)]),
        service("dns", UDP_VIP, 53, Protocol::Udp, vec![ep(POD1, 9000), ep(POD2, 9000)]),
        service("empty", EMPTY_VIP, 80, Protocol::Tcp, vec![]),
    ]);
    d
}

fn backends() -> BTreeSet<Ipv4Addr> {
    [POD1, POD2, POD3].into()
}

fn syn(sport: u16) -> Vec<u8> {
    Spec::tcp((CLIENT, sport), (VIP, 80), TCP_SYN).build()
}

#[test]
fn point_22_syn_to_clusterip_is_dnated_to_a_backend_with_valid_checksums() {
    let Some(mut f) = Fixture::new("point_22_syn_to_clusterip_is_dnated_to_a_backend_with_valid_checksums") else { return };
    f.program(&cluster());
    let (verdict, out) = f.run(&syn(40000));
    assert_eq!(verdict, TC_ACT_OK, "a translated packet continues to the stack");
    let fl = flow(&out);
    assert!(backends().contains(&fl.dst.0), "destination {} is not a kubia backend", fl.dst.0);
    assert_eq!(fl.dst.1, 8080, "destination port is the endpoint's port");
    assert_eq!(fl.src, (CLIENT, 40000), "source is preserved (point 31)");
    verify_checksums(&out).expect("checksums after DNAT");
    assert_eq!(out.len(), syn(40000).len());
    assert_eq!(f.counter(CNT_VERDICT_DNAT), 1);
}

#[test]
fn point_23_reply_from_backend_is_reverse_nated_to_the_clusterip() {
    let Some(mut f) = Fixture::new("point_23_reply_from_backend_is_reverse_nated_to_the_clusterip") else { return };
    f.program(&cluster());
    let (_, out) = f.run(&syn(40001));
    let backend = flow(&out).dst;
    let reply = Spec::tcp(backend, (CLIENT, 40001), TCP_SYN | TCP_ACK).build();
    let (verdict, back) = f.run(&reply);
    assert_eq!(verdict, TC_ACT_OK);
    let fl = flow(&back);
    assert_eq!(fl.src, (VIP, 80), "the client must see the ClusterIP:port");
    assert_eq!(fl.dst, (CLIENT, 40001));
    verify_checksums(&back).expect("checksums after reverse NAT");
    assert_eq!(f.counter(CNT_VERDICT_REVNAT), 1);
}

#[test]
fn point_23_every_packet_of_a_flow_keeps_its_backend() {
    let Some(mut f) = Fixture::new("point_23_every_packet_of_a_flow_keeps_its_backend") else { return };
    f.program(&cluster());
    let (_, first) = f.run(&syn(40002));
    let chosen = flow(&first).dst;
    for _ in 0..30 {
        let (_, out) = f.run(&Spec::tcp((CLIENT, 40002), (VIP, 80), TCP_ACK).build());
        assert_eq!(flow(&out).dst, chosen, "an established flow moved to another backend");
    }
}

#[test]
fn point_22_new_flows_reach_every_backend() {
    let Some(mut f) = Fixture::new("point_22_new_flows_reach_every_backend") else { return };
    f.program(&cluster());
    let seen: BTreeSet<Ipv4Addr> = (0..60).map(|i| flow(&f.run(&syn(41000 + i)).1).dst.0).collect();
    assert_eq!(seen, backends(), "60 new flows must reach all three backends");
}

#[test]
fn udp_to_clusterip_is_translated_both_ways_with_valid_checksums() {
    let Some(mut f) = Fixture::new("udp_to_clusterip_is_translated_both_ways_with_valid_checksums") else { return };
    f.program(&cluster());
    let (verdict, out) = f.run(&Spec::udp((CLIENT, 5353), (UDP_VIP, 53), b"query").build());
    assert_eq!(verdict, TC_ACT_OK);
    let fl = flow(&out);
    assert!([POD1, POD2].contains(&fl.dst.0));
    assert_eq!(fl.dst.1, 9000);
    verify_checksums(&out).expect("UDP checksum after DNAT");
    let (_, back) = f.run(&Spec::udp(fl.dst, (CLIENT, 5353), b"answer").build());
    assert_eq!(flow(&back).src, (UDP_VIP, 53));
    verify_checksums(&back).expect("UDP checksum after reverse NAT");
}

#[test]
fn udp_without_checksum_stays_without_checksum() {
    let Some(mut f) = Fixture::new("udp_without_checksum_stays_without_checksum") else { return };
    f.program(&cluster());
    let mut spec = Spec::udp((CLIENT, 5354), (UDP_VIP, 53), b"query");
    spec.udp_no_checksum = true;
    let (_, out) = f.run(&spec.build());
    assert_eq!(flow(&out).dst.1, 9000);
    let udp_csum = &out[14 + 20 + 6..14 + 20 + 8];
    assert_eq!(udp_csum, &[0, 0], "a zero UDP checksum means none and must stay zero");
    verify_checksums(&out).expect("IPv4 checksum");
}

#[test]
fn ipv4_options_are_honoured() {
    let Some(mut f) = Fixture::new("ipv4_options_are_honoured") else { return };
    f.program(&cluster());
    let mut spec = Spec::tcp((CLIENT, 40003), (VIP, 80), TCP_SYN);
    spec.ip_options = vec![0x94, 0x04, 0, 0]; // router alert
    let (verdict, out) = f.run(&spec.build());
    assert_eq!(verdict, TC_ACT_OK);
    let fl = flow(&out);
    assert!(backends().contains(&fl.dst.0));
    assert_eq!(fl.dst.1, 8080, "the port after the options was rewritten");
    verify_checksums(&out).expect("checksums with options");
}

#[test]
fn traffic_that_is_not_for_a_service_passes_untouched() {
    let Some(mut f) = Fixture::new("traffic_that_is_not_for_a_service_passes_untouched") else { return };
    f.program(&cluster());
    let frames = [
        // pod to pod
        Spec::tcp((CLIENT, 40004), (POD1, 8080), TCP_SYN).build(),
        // the ClusterIP on a port the service does not define
        Spec::tcp((CLIENT, 40005), (VIP, 81), TCP_SYN).build(),
        // UDP to a TCP service port
        Spec::udp((CLIENT, 40006), (VIP, 80), b"x").build(),
        // a reply-looking packet without a flow
        Spec::tcp((POD1, 8080), (CLIENT, 40007), TCP_SYN | TCP_ACK).build(),
    ];
    for frame in &frames {
        let (verdict, out) = f.run(frame);
        assert_eq!(verdict, TC_ACT_OK);
        assert_eq!(&out, frame, "non-service traffic must be byte-for-byte unchanged");
    }
    assert_eq!(f.counter(CNT_VERDICT_PASS), frames.len() as u64);
    // A non-IP frame (ARP).
    let mut arp = vec![0xff; 6];
    arp.extend_from_slice(&[2, 0, 0, 0, 0, 1, 0x08, 0x06]);
    arp.extend_from_slice(&[0u8; 28]);
    let (verdict, out) = f.run(&arp);
    assert_eq!((verdict, &out), (TC_ACT_OK, &arp));
    assert_eq!(f.counter(CNT_PASS_NOT_IP), 1);
}

#[test]
fn malformed_ipv4_headers_pass_untouched() {
    let Some(mut f) = Fixture::new("malformed_ipv4_headers_pass_untouched") else { return };
    f.program(&cluster());
    let good = syn(40010);
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

#[test]
fn truncated_l4_header_to_a_service_address_is_dropped() {
    let Some(mut f) = Fixture::new("truncated_l4_header_to_a_service_address_is_dropped") else { return };
    f.program(&cluster());
    let mut cut = syn(40011)[..14 + 20 + 8].to_vec(); // 8 of 20 TCP header bytes
    cut[16..18].copy_from_slice(&28u16.to_be_bytes());
    let (verdict, _) = f.run(&cut);
    assert_eq!(verdict, TC_ACT_SHOT, "untranslatable traffic to a VIP must not leak");
    assert_eq!(f.counter(CNT_DROP_BAD_L4), 1);
    // The same truncation to an address that is no service passes untouched.
    let mut other = Spec::tcp((CLIENT, 40012), (POD1, 80), TCP_SYN).build()[..14 + 20 + 8].to_vec();
    other[16..18].copy_from_slice(&28u16.to_be_bytes());
    let (verdict, out) = f.run(&other);
    assert_eq!((verdict, out), (TC_ACT_OK, other));
}

/// The frame `frame` with its IPv4 destination replaced and the IPv4 checksum recomputed, and
/// nothing else changed: what a later fragment (no L4 header) must look like after DNAT.
fn with_ipv4_addr(frame: &[u8], off: usize, addr: Ipv4Addr) -> Vec<u8> {
    let mut f = frame.to_vec();
    f[off..off + 4].copy_from_slice(&addr.octets());
    let ihl = usize::from(f[14] & 0x0f) * 4;
    f[24..26].copy_from_slice(&[0, 0]);
    let c = checksum(&f[14..14 + ihl], 0);
    f[24..26].copy_from_slice(&c.to_be_bytes());
    f
}

/// Point 62 (large UDP datagrams through the VIP): a fragmented datagram is translated as a
/// whole. The first fragment (offset 0, more-fragments) selects the backend and has its ports
/// rewritten; later fragments (no L4 header) get the same destination, IPv4 header and checksum
/// only; reassembled, the datagram carries a valid UDP checksum for its new addresses. The same
/// holds for a fragmented reply. A later fragment whose first fragment was never seen is dropped
/// if it is addressed to a service address, and passed untouched otherwise.
#[test]
fn point_62_later_fragments_follow_their_first_fragment_and_orphans_to_a_service_are_dropped() {
    let Some(mut f) = Fixture::new("point_62_later_fragments_follow_their_first_fragment_and_orphans_to_a_service_are_dropped")
    else {
        return;
    };
    f.program(&cluster());
    let client = (CLIENT, 5355);
    let payload: Vec<u8> = (0..100u8).collect();
    let dgram = udp_datagram(client, (UDP_VIP, 53), &payload); // 108 bytes
    let id = 0x5151;
    let first = ipv4_frame(CLIENT, UDP_VIP, PROTO_UDP, id, 0x2000, &[], &dgram[..64]);
    let middle = ipv4_frame(CLIENT, UDP_VIP, PROTO_UDP, id, 0x2000 | 8, &[], &dgram[64..88]);
    let last = ipv4_frame(CLIENT, UDP_VIP, PROTO_UDP, id, 11, &[], &dgram[88..]);

    let (verdict, out_first) = f.run(&first);
    assert_eq!(verdict, TC_ACT_OK, "the first fragment is translated like any packet");
    let h = ipv4(&out_first);
    let backend = h.dst;
    assert!([POD1, POD2].contains(&backend), "first fragment sent to {backend}, not a dns backend");
    assert_eq!((h.src, h.id, h.frag, h.total_len), (CLIENT, id, 0x2000, 84), "only addresses and ports change");
    verify_ipv4_checksum(&out_first).expect("IPv4 checksum of the first fragment");
    let udp = l4_bytes(&out_first);
    assert_eq!(u16::from_be_bytes([udp[2], udp[3]]), 9000, "the first fragment's destination port is the endpoint's");
    assert_eq!(u16::from_be_bytes([udp[0], udp[1]]), 5355);

    let mut reassembled = udp.to_vec();
    for later in [&middle, &last] {
        let (verdict, out) = f.run(later);
        assert_eq!(verdict, TC_ACT_OK, "a later fragment of a known datagram is translated");
        verify_ipv4_checksum(&out).expect("IPv4 checksum of a later fragment");
        assert_eq!(
            out,
            with_ipv4_addr(later, 30, backend),
            "a later fragment gets the first fragment's destination (IPv4 header and checksum only)"
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
    let answer = udp_datagram((backend, 9000), client, &payload);
    let a_first = ipv4_frame(backend, CLIENT, PROTO_UDP, 0x6262, 0x2000, &[], &answer[..64]);
    let a_last = ipv4_frame(backend, CLIENT, PROTO_UDP, 0x6262, 8, &[], &answer[64..]);
    let (verdict, out) = f.run(&a_first);
    assert_eq!(verdict, TC_ACT_OK);
    assert_eq!(flow(&out).src, (UDP_VIP, 53), "the first reply fragment comes from the ClusterIP:port");
    let mut reply = l4_bytes(&out).to_vec();
    let (verdict, out) = f.run(&a_last);
    assert_eq!(verdict, TC_ACT_OK);
    assert_eq!(out, with_ipv4_addr(&a_last, 26, UDP_VIP), "a later reply fragment gets the ClusterIP as source");
    reply.extend_from_slice(l4_bytes(&out));
    verify_udp_datagram(UDP_VIP, CLIENT, &reply).expect("the reassembled reply's UDP checksum after reverse NAT");
    assert_eq!(f.counter(CNT_FRAG_FOLLOWED), 3);
    assert_eq!(f.counter(CNT_VERDICT_REVNAT), 2);

    // A later fragment whose first fragment was never seen: dropped when addressed to a service
    // address (even on a port no service defines), passed untouched otherwise.
    assert_eq!(f.counter(CNT_DROP_FRAGMENT), 0);
    let orphan = ipv4_frame(CLIENT, UDP_VIP, PROTO_UDP, 0x7373, 8, &[], &dgram[64..]);
    let (verdict, _) = f.run(&orphan);
    assert_eq!(verdict, TC_ACT_SHOT, "an untranslatable fragment to a service address must not leak");
    assert_eq!(f.counter(CNT_DROP_FRAGMENT), 1);
    let orphan_tcp = ipv4_frame(CLIENT, VIP, PROTO_TCP, 0x7374, 8, &[], &[0u8; 32]);
    let (verdict, _) = f.run(&orphan_tcp);
    assert_eq!(verdict, TC_ACT_SHOT);
    assert_eq!(f.counter(CNT_DROP_FRAGMENT), 2);
    let elsewhere = ipv4_frame(CLIENT, POD1, PROTO_UDP, 0x7375, 8, &[], &dgram[64..]);
    let (verdict, out) = f.run(&elsewhere);
    assert_eq!((verdict, out), (TC_ACT_OK, elsewhere), "fragments to other addresses pass untouched");
    assert_eq!(f.counter(CNT_DROP_FRAGMENT), 2);
    assert_eq!(f.counter(CNT_FRAG_FOLLOWED), 3);
}

/// kubia, dns and empty, plus a UDP service without endpoints.
fn cluster_with_empty_udp() -> DesiredState {
    let mut d = cluster();
    d.services.extend([service("empty-dns", EMPTY_UDP_VIP, 53, Protocol::Udp, vec![])]);
    d
}

/// Checks a TCP RST|ACK answering a SYN `client → frontend` with sequence number `seq`.
fn assert_rst_answers_syn(out: &[u8], client: (Ipv4Addr, u16), frontend: (Ipv4Addr, u16), seq: u32) {
    assert_eq!(out.len(), 54, "a RST is Ethernet + IPv4 + TCP without options");
    assert_eq!(&out[0..6], &MAC_SRC, "sent back to the client's MAC");
    assert_eq!(&out[6..12], &MAC_DST, "from the MAC the SYN was sent to");
    assert_eq!(&out[12..14], &[0x08, 0x00]);
    let h = ipv4(out);
    assert_eq!((h.src, h.dst, h.proto, h.ihl, h.total_len), (frontend.0, client.0, PROTO_TCP, 20, 40));
    let t = tcp(out);
    assert_eq!((t.sport, t.dport), (frontend.1, client.1), "the RST comes from the frontend to the client's port");
    assert_eq!(t.flags, TCP_RST | TCP_ACK, "RST|ACK");
    assert_eq!(t.ack, seq.wrapping_add(1), "it acknowledges the SYN (RFC 793 reset generation)");
    assert_eq!(t.seq, 0);
    verify_checksums(out).expect("RST checksums");
}

/// Checks an ICMP port unreachable answering `orig` (a UDP frame `client → frontend`).
fn assert_port_unreachable_answers(out: &[u8], orig: &[u8], client: Ipv4Addr, frontend: Ipv4Addr) {
    assert_eq!(out.len(), 70, "Ethernet + IPv4 + ICMP + quoted IPv4 header + 8 bytes");
    assert_eq!(&out[0..6], &MAC_SRC);
    assert_eq!(&out[6..12], &MAC_DST);
    assert_eq!(&out[12..14], &[0x08, 0x00]);
    let h = ipv4(out);
    assert_eq!((h.src, h.dst, h.proto, h.ihl, h.total_len), (frontend, client, PROTO_ICMP, 20, 56));
    let i = icmp(out);
    assert_eq!((i.ty, i.code), (ICMP_DEST_UNREACH, ICMP_PORT_UNREACH), "type 3 code 3");
    assert_eq!(&out[42..70], &orig[14..42], "quotes the original IPv4 header and its first 8 bytes");
    verify_icmp_checksums(out).expect("ICMP and IPv4 checksums");
}

/// Point 37: a service without endpoints rejects new connections: a TCP SYN gets a RST|ACK from
/// the ClusterIP:port, a UDP datagram an ICMP port unreachable, both sent back out of the
/// interface the packet came in on (TC_ACT_REDIRECT).
#[test]
fn point_37_service_without_endpoints_rejects_tcp_with_rst_and_udp_with_icmp_port_unreachable() {
    let Some(mut f) = Fixture::new("point_37_service_without_endpoints_rejects_tcp_with_rst_and_udp_with_icmp_port_unreachable")
    else {
        return;
    };
    f.program(&cluster_with_empty_udp());
    let seq = 0x1234_5678;
    let (verdict, out) = f.run(&tcp_frame((CLIENT, 40013), (EMPTY_VIP, 80), seq, 0, TCP_SYN));
    assert_eq!(verdict, TC_ACT_REDIRECT, "the RST goes back out of the interface");
    assert_rst_answers_syn(&out, (CLIENT, 40013), (EMPTY_VIP, 80), seq);
    assert_eq!((f.counter(CNT_REJECT_TCP), f.counter(CNT_VERDICT_REJECT)), (1, 1));

    let query = Spec::udp((CLIENT, 5357), (EMPTY_UDP_VIP, 53), b"query").build();
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
fn point_37_resets_for_other_segments_follow_rfc_793() {
    let Some(mut f) = Fixture::new("point_37_resets_for_other_segments_follow_rfc_793") else { return };
    f.program(&cluster());
    let client = (CLIENT, 40060);
    // SYN with 10 bytes of data (TCP Fast Open): ack = seq + 1 + 10.
    let seg = tcp_segment(client, (EMPTY_VIP, 80), 500, 0, TCP_SYN, &[1; 10]);
    let (verdict, out) = f.run(&ipv4_frame(CLIENT, EMPTY_VIP, PROTO_TCP, 1, 0, &[], &seg));
    assert_eq!(verdict, TC_ACT_REDIRECT);
    assert_eq!(out.len(), 54);
    let t = tcp(&out);
    assert_eq!((t.seq, t.ack, t.flags), (0, 511, TCP_RST | TCP_ACK));
    verify_checksums(&out).expect("RST checksums");
    // A data segment with ACK (no flow known): RST with seq = its ack, no ACK flag.
    let seg = tcp_segment(client, (EMPTY_VIP, 80), 600, 0xabcd_0001, TCP_ACK, &[2; 33]);
    let (verdict, out) = f.run(&ipv4_frame(CLIENT, EMPTY_VIP, PROTO_TCP, 2, 0, &[], &seg));
    assert_eq!(verdict, TC_ACT_REDIRECT);
    assert_eq!(out.len(), 54, "the answer carries no data");
    let t = tcp(&out);
    assert_eq!((t.sport, t.dport), (80, client.1));
    assert_eq!((t.seq, t.ack, t.flags), (0xabcd_0001, 0, TCP_RST));
    verify_checksums(&out).expect("RST checksums");
    assert_eq!(f.counter(CNT_REJECT_TCP), 2);
}

/// Point 37 must never answer a reset with a reset (RFC 793: "an incoming segment containing a
/// RST is discarded"; Linux's REJECT --reject-with tcp-reset does not answer RSTs either).
#[test]
fn point_37_a_reset_to_a_service_without_endpoints_is_not_answered() {
    let Some(mut f) = Fixture::new("point_37_a_reset_to_a_service_without_endpoints_is_not_answered") else { return };
    f.program(&cluster());
    for (i, flags) in [TCP_RST, TCP_RST | TCP_ACK].into_iter().enumerate() {
        let (verdict, out) = f.run(&tcp_frame((CLIENT, 40070 + i as u16), (EMPTY_VIP, 80), 700, 800, flags));
        assert_ne!(verdict, TC_ACT_REDIRECT, "a RST (flags {flags:#x}) was answered: {:?}", tcp(&out));
        assert_eq!(verdict, TC_ACT_SHOT, "a RST to a service without endpoints is dropped");
    }
    assert_eq!(f.counter(CNT_REJECT_TCP), 0);
    assert_eq!(f.counter(CNT_VERDICT_DNAT), 0);
}

/// Point 37 on external frontends: a NodePort without endpoints rejects over XDP (XDP_TX).
#[test]
fn point_37_nodeport_without_endpoints_rejects_over_xdp() {
    let Some(mut f) = node("point_37_nodeport_without_endpoints_rejects_over_xdp") else { return };
    f.program(&state([
        nodeport_service("empty-web", NP_VIP, NODEPORT, Protocol::Tcp, vec![]),
        nodeport_service("empty-dns", EMPTY_UDP_VIP, 30053, Protocol::Udp, vec![]),
    ]));
    let seq = 0xffff_ffff; // the acknowledgement wraps
    let (verdict, out) = f.run_xdp(&tcp_frame((EXT_CLIENT, 40000), (NODE, NODEPORT), seq, 0, TCP_SYN));
    assert_eq!(verdict, XDP_TX, "the RST is sent back out of the interface");
    assert_rst_answers_syn(&out, (EXT_CLIENT, 40000), (NODE, NODEPORT), seq);
    let query = Spec::udp((EXT_CLIENT, 5357), (NODE, 30053), b"query").build();
    let (verdict, out) = f.run_xdp(&query);
    assert_eq!(verdict, XDP_TX);
    assert_port_unreachable_answers(&out, &query, EXT_CLIENT, NODE);
    assert_eq!((f.counter(CNT_REJECT_TCP), f.counter(CNT_REJECT_ICMP), f.counter(CNT_VERDICT_REJECT)), (1, 1, 2));
    assert_eq!(f.counter(CNT_SNAT), 0);
}

#[test]
fn point_57_udp_flow_moves_when_its_backend_is_removed_and_tcp_flow_stays() {
    let Some(mut f) = Fixture::new("point_57_udp_flow_moves_when_its_backend_is_removed_and_tcp_flow_stays") else { return };
    f.program(&cluster());
    let udp = Spec::udp((CLIENT, 5356), (UDP_VIP, 53), b"q").build();
    let udp_backend = flow(&f.run(&udp).1).dst.0;
    // A TCP flow whose backend is not dns's other backend, so that dns keeps one endpoint after
    // the removal (with none left the UDP flow would be rejected, not moved).
    let other_dns = if udp_backend == POD1 { POD2 } else { POD1 };
    let (tcp_sport, tcp_backend) = (40014..40114)
        .map(|sport| (sport, flow(&f.run(&syn(sport)).1).dst.0))
        .find(|(_, b)| *b != other_dns)
        .expect("100 new flows all went to one backend");

    // Remove both backends from both services.
    let mut d = cluster();
    for sp in d.services.values_mut() {
        let gone = |e: &Endpoint| e.addr == IpAddr::V4(udp_backend) || e.addr == IpAddr::V4(tcp_backend);
        for set in [&mut sp.internal.endpoints, &mut sp.external.endpoints, &mut sp.cluster, &mut sp.serving] {
            set.retain(|e| !gone(e));
        }
    }
    f.program(&d);

    let (verdict, out) = f.run(&udp);
    assert_eq!(verdict, TC_ACT_OK);
    let moved = flow(&out).dst.0;
    assert_ne!(moved, udp_backend, "the UDP flow must leave its removed backend");
    assert_eq!((moved, flow(&out).dst.1), (other_dns, 9000), "the UDP flow moves to dns's remaining backend");
    verify_checksums(&out).expect("UDP checksum after re-selection");
    assert_eq!(f.counter(CNT_CT_RESELECT), 1);
    let (verdict, out) = f.run(&Spec::tcp((CLIENT, tcp_sport), (VIP, 80), TCP_ACK).build());
    assert_eq!(verdict, TC_ACT_OK);
    assert_eq!(flow(&out).dst.0, tcp_backend, "established TCP keeps its backend, as with kube-proxy's conntrack");
    // New TCP connections never go to a removed backend (point 21).
    for i in 0..30 {
        let dst = flow(&f.run(&syn(42000 + i)).1).dst.0;
        assert!(dst != tcp_backend && dst != udp_backend, "new connection sent to removed backend {dst}");
    }
}

/// Point 57, per Service: a UDP flow leaves a backend that left *its* Service, although the pod
/// still serves another Service (its backend entry stays in the maps).
#[test]
fn point_57_udp_flow_leaves_a_backend_removed_from_its_service_while_another_keeps_it() {
    let Some(mut f) = Fixture::new("point_57_udp_flow_leaves_a_backend_removed_from_its_service_while_another_keeps_it") else {
        return;
    };
    let other = |eps| service("syslog", Ipv4Addr::new(10, 96, 0, 21), 514, Protocol::Udp, eps);
    let mut d = cluster();
    d.services.extend([other(vec![ep(POD1, 9000), ep(POD2, 9000)])]);
    f.program(&d);
    let udp = Spec::udp((CLIENT, 5360), (UDP_VIP, 53), b"q").build();
    let old = flow(&f.run(&udp).1).dst.0;
    let new = if old == POD1 { POD2 } else { POD1 };
    // A blue/green switch: dns now selects only `new`; syslog keeps both pods.
    let mut d = cluster();
    d.services
        .extend([service("dns", UDP_VIP, 53, Protocol::Udp, vec![ep(new, 9000)]), other(vec![ep(POD1, 9000), ep(POD2, 9000)])]);
    f.program(&d);
    assert!(f.dp.state().backends.values().any(|b| b.addr == v4_mapped(old.octets())), "the old pod is still a backend");
    let (verdict, out) = f.run(&udp);
    assert_eq!(verdict, TC_ACT_OK);
    assert_eq!(flow(&out).dst, (new, 9000), "the same client port reaches the new endpoint");
    verify_checksums(&out).unwrap();
    assert_eq!(f.counter(CNT_CT_RESELECT), 1);
    // The flow now stays on `new`.
    for _ in 0..5 {
        assert_eq!(flow(&f.run(&udp).1).dst, (new, 9000));
    }
}

/// Point 57 keeps what kube-proxy keeps: a terminating endpoint that still serves is no longer
/// selected by new flows (point 19), but an existing UDP flow stays on it.
#[test]
fn point_57_udp_flow_stays_on_a_terminating_backend_that_still_serves() {
    let Some(mut f) = Fixture::new("point_57_udp_flow_stays_on_a_terminating_backend_that_still_serves") else { return };
    f.program(&cluster());
    let udp = Spec::udp((CLIENT, 5361), (UDP_VIP, 53), b"q").build();
    let old = flow(&f.run(&udp).1).dst.0;
    let other = if old == POD1 { POD2 } else { POD1 };
    let mut d = cluster();
    let (_, dns) = d.services.iter_mut().find(|(n, _)| n.name == "dns").unwrap();
    for set in [&mut dns.internal.endpoints, &mut dns.external.endpoints, &mut dns.cluster] {
        set.retain(|e| e.addr == IpAddr::V4(other));
    }
    for e in &mut dns.serving {
        e.terminating = e.addr == IpAddr::V4(old);
    }
    f.program(&d);
    for _ in 0..5 {
        assert_eq!(flow(&f.run(&udp).1).dst, (old, 9000), "a flow stays on a serving endpoint");
    }
    assert_eq!(f.counter(CNT_CT_RESELECT), 0);
    for sport in 6000..6020 {
        let out = f.run(&Spec::udp((CLIENT, sport), (UDP_VIP, 53), b"q").build()).1;
        assert_eq!(flow(&out).dst, (other, 9000), "new flows select only ready endpoints");
    }
}

/// An endpoint on the node's own address (a hostNetwork pod): the frontend's service whose one
/// endpoint is NODE:8080.
fn host_backend_service() -> DesiredState {
    let mut host = ep(NODE, 8080);
    host.host = true;
    state([nodeport_service("ingress", NP_VIP, NODEPORT, Protocol::Tcp, vec![host])])
}

/// Point 63, external client: the NodePort SYN reaches the node's own socket with the client's
/// address (no SNAT, as kube-proxy delivers it), and the node's SYN-ACK, which leaves through
/// the external interface's egress, is translated back to the NodePort there.
#[test]
fn point_63_nodeport_to_a_host_backend_keeps_the_client_and_its_reply_is_translated_on_egress() {
    let Some(mut f) = node("point_63_nodeport_to_a_host_backend_keeps_the_client_and_its_reply_is_translated_on_egress") else {
        return;
    };
    f.program(&host_backend_service());
    for ext in [Ext::Xdp, Ext::Tc] {
        let sport = if ext == Ext::Xdp { 40700 } else { 40701 };
        let (verdict, out) = f.run_ext(ext, &tcp_frame((EXT_CLIENT, sport), (NODE, NODEPORT), 1, 0, TCP_SYN));
        assert_eq!(verdict, ext.pass(), "{ext:?}");
        assert_eq!(flow(&out).src, (EXT_CLIENT, sport), "{ext:?}: the host backend sees the client");
        assert_eq!(flow(&out).dst, (NODE, 8080), "{ext:?}");
        verify_checksums(&out).unwrap();
        let reply = tcp_frame((NODE, 8080), (EXT_CLIENT, sport), 7, 2, TCP_SYN | TCP_ACK);
        let (verdict, back) = f.run_tc(PROG_TC_EGRESS, &reply);
        assert_eq!(verdict, TC_ACT_OK);
        assert_eq!((flow(&back).src, flow(&back).dst), ((NODE, NODEPORT), (EXT_CLIENT, sport)), "{ext:?}");
        verify_checksums(&back).unwrap();
    }
    assert_eq!(f.counter(CNT_SNAT), 0);
    assert_eq!(f.counter(CNT_VERDICT_REVNAT), 2);
    // Anything else leaving the node passes untouched.
    let other = tcp_frame((NODE, 8080), (EXT_CLIENT, 9999), 7, 2, TCP_ACK);
    let (verdict, out) = f.run_tc(PROG_TC_EGRESS, &other);
    assert_eq!((verdict, out), (TC_ACT_OK, other));
}

/// Point 63, pod client: a pod reaching a ClusterIP whose endpoint is the node itself; the
/// node's reply leaves through the pod interface's egress and is translated there.
#[test]
fn point_63_clusterip_from_a_pod_to_a_host_backend_is_translated_back_on_the_pod_egress() {
    let Some(mut f) = node("point_63_clusterip_from_a_pod_to_a_host_backend_is_translated_back_on_the_pod_egress") else {
        return;
    };
    f.program(&host_backend_service());
    let (verdict, out) = f.run(&Spec::tcp((CLIENT, 40710), (NP_VIP, 80), TCP_SYN).build());
    assert_eq!(verdict, TC_ACT_OK);
    assert_eq!((flow(&out).src, flow(&out).dst), ((CLIENT, 40710), (NODE, 8080)));
    let reply = Spec::tcp((NODE, 8080), (CLIENT, 40710), TCP_SYN | TCP_ACK).build();
    let (verdict, back) = f.run_tc(PROG_TC_EGRESS, &reply);
    assert_eq!(verdict, TC_ACT_OK);
    assert_eq!((flow(&back).src, flow(&back).dst), ((NP_VIP, 80), (CLIENT, 40710)));
    verify_checksums(&back).unwrap();
    assert_eq!(f.counter(CNT_VERDICT_REVNAT), 1);
}

/// Point 23: a connection whose reply entry was lost (LRU eviction under pressure) before the
/// handshake completed is healed by the client's retransmitted SYN; without it the SYN-ACK
/// would leave untranslated and `connect()` would time out.
#[test]
fn point_23_a_retransmitted_syn_restores_a_lost_reply_entry() {
    use aya::maps::{HashMap as BpfHashMap, Map, MapData};
    let Some(mut f) = Fixture::new("point_23_a_retransmitted_syn_restores_a_lost_reply_entry") else { return };
    f.program(&cluster());
    let backend = flow(&f.run(&syn(40300)).1).dst;
    let mut ct: BpfHashMap<MapData, lb_common::CtKey, lb_common::CtValue> = BpfHashMap::try_from(
        Map::from_map_data(MapData::from_pin(f.dp.pin_path().join(lb_common::CONNTRACK)).expect("conntrack pin")).unwrap(),
    )
    .unwrap();
    let reply_key = lb_common::CtKey {
        src: v4_mapped(backend.0.octets()),
        dst: v4_mapped(CLIENT.octets()),
        sport_be: backend.1.to_be(),
        dport_be: 40300u16.to_be(),
        proto: IPPROTO_TCP,
        dir: lb_common::CT_DIR_REPLY,
        _pad: [0; 2],
    };
    ct.remove(&reply_key).expect("the SYN created a reply entry");
    // The retransmission: translated again, and the reply entry is back.
    let (verdict, out) = f.run(&syn(40300));
    assert_eq!(verdict, TC_ACT_OK);
    let again = flow(&out).dst;
    assert!(backends().contains(&again.0) && again.1 == 8080);
    verify_checksums(&out).unwrap();
    assert_eq!(f.counter(CNT_CT_RESELECT), 1, "the orphaned entry was replaced");
    let (verdict, back) = f.run(&tcp_frame(again, (CLIENT, 40300), 1000, 1, TCP_SYN | TCP_ACK));
    assert_eq!(verdict, TC_ACT_OK);
    assert_eq!(flow(&back).src, (VIP, 80), "the SYN-ACK is reverse-NATed to the ClusterIP");
    verify_checksums(&back).unwrap();
    // A retransmitted SYN with both entries present keeps its backend and is no re-selection.
    assert_eq!(flow(&f.run(&syn(40300)).1).dst, again);
    assert_eq!(f.counter(CNT_CT_RESELECT), 1);
}

// ---------------------------------------------------------------------------------------------
// Point 22: Maglev
// ---------------------------------------------------------------------------------------------

const MAGLEV_BACKENDS: [Ipv4Addr; 5] = [
    Ipv4Addr::new(10, 244, 2, 1),
    Ipv4Addr::new(10, 244, 2, 2),
    Ipv4Addr::new(10, 244, 2, 3),
    Ipv4Addr::new(10, 244, 2, 4),
    Ipv4Addr::new(10, 244, 2, 5),
];

/// A LoadBalancer IP every node announces (ECMP): the case Maglev is for.
const MAGLEV_LB_IP: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 9);

fn maglev_state(backends: &[Ipv4Addr]) -> DesiredState {
    let (spn, mut sp) = service("web", VIP, 80, Protocol::Tcp, backends.iter().map(|b| remote(*b, 8080)).collect());
    sp.frontends.push(Frontend { addr: IpAddr::V4(MAGLEV_LB_IP), port: 80, kind: FrontendKind::LoadBalancer });
    sp.selection = Selection::Maglev;
    state([(spn, sp)])
}

/// 200 distinct flows: 50 clients, several source ports each.
fn maglev_flows() -> Vec<(Ipv4Addr, u16)> {
    (0..200u16).map(|i| (Ipv4Addr::new(10, 244, 9, (i % 50) as u8 + 1), 30000 + i * 7)).collect()
}

/// The backend each of [`maglev_flows`] gets from a datapath programmed with `backends`.
fn maglev_choices(f: &mut Fixture, backends: &[Ipv4Addr]) -> Vec<Ipv4Addr> {
    f.program(&maglev_state(backends));
    maglev_flows()
        .into_iter()
        .map(|src| {
            let (verdict, out) = f.run(&Spec::tcp(src, (VIP, 80), TCP_SYN).build());
            assert_eq!(verdict, TC_ACT_OK);
            verify_checksums(&out).expect("checksums after DNAT");
            let dst = flow(&out).dst;
            assert_eq!(dst.1, 8080);
            dst.0
        })
        .collect()
}

/// Point 22 with Maglev: the choice depends on the flow alone, so two nodes (two separately
/// loaded datapaths, with their own ids) send the same 5-tuple to the same backend, and new
/// flows spread over every backend.
#[test]
fn point_22_maglev_picks_the_same_backend_for_a_flow_on_every_node_and_reaches_all() {
    let test = "point_22_maglev_picks_the_same_backend_for_a_flow_on_every_node_and_reaches_all";
    let Some(mut node_a) = Fixture::new(test) else { return };
    let Some(mut node_b) = Fixture::new(test) else { return };
    // Node b learns the endpoints in another order (ids differ); the table must not.
    let mut reversed = MAGLEV_BACKENDS;
    reversed.reverse();
    let a = maglev_choices(&mut node_a, &MAGLEV_BACKENDS);
    let b = maglev_choices(&mut node_b, &reversed);
    let differ = a.iter().zip(&b).filter(|(x, y)| x != y).count();
    assert_eq!(differ, 0, "{differ} of 200 flows got another backend on the second node");
    let mut per: BTreeMap<Ipv4Addr, usize> = BTreeMap::new();
    for b in &a {
        *per.entry(*b).or_default() += 1;
    }
    assert_eq!(per.keys().copied().collect::<Vec<_>>(), MAGLEV_BACKENDS.to_vec(), "200 flows must reach all 5 backends");
    for (b, n) in &per {
        assert!(*n >= 15, "backend {b} got only {n} of 200 flows (expected about 40): {per:?}");
    }
    // The same flow again on the same node (a new connection after the first closed, here a
    // retransmitted SYN) stays where it is.
    let again = maglev_choices(&mut node_a, &MAGLEV_BACKENDS);
    assert_eq!(again, a);
    // External flows to the LoadBalancer IP over XDP: the same on both nodes too.
    let over_xdp = |f: &Fixture| -> Vec<Ipv4Addr> {
        maglev_flows()
            .into_iter()
            .map(|(_, sport)| {
                let (verdict, out) = f.run_xdp(&Spec::tcp((EXT_CLIENT, sport), (MAGLEV_LB_IP, 80), TCP_SYN).build());
                assert_eq!(verdict, XDP_PASS);
                verify_checksums(&out).expect("checksums after DNAT");
                flow(&out).dst.0
            })
            .collect()
    };
    let (xa, xb) = (over_xdp(&node_a), over_xdp(&node_b));
    assert_eq!(xa, xb, "an external flow must get the same backend on whichever node ECMP sends it to");
    assert_eq!(xa.iter().copied().collect::<BTreeSet<_>>(), MAGLEV_BACKENDS.into_iter().collect::<BTreeSet<_>>());
}

/// Maglev's point: removing one of 5 backends moves (almost) no flow whose backend survived.
/// Each side is measured in a fresh datapath, so no conntrack entry hides a move.
#[test]
fn point_22_maglev_removing_one_of_five_backends_keeps_the_flows_of_the_others() {
    let test = "point_22_maglev_removing_one_of_five_backends_keeps_the_flows_of_the_others";
    let Some(mut before) = Fixture::new(test) else { return };
    let Some(mut after) = Fixture::new(test) else { return };
    let removed = MAGLEV_BACKENDS[2];
    let rest: Vec<Ipv4Addr> = MAGLEV_BACKENDS.iter().copied().filter(|b| *b != removed).collect();
    let old = maglev_choices(&mut before, &MAGLEV_BACKENDS);
    let new = maglev_choices(&mut after, &rest);
    assert!(!new.contains(&removed), "a flow was sent to the removed backend");
    let survivors: Vec<usize> = (0..old.len()).filter(|i| old[*i] != removed).collect();
    let moved = survivors.iter().filter(|i| old[**i] != new[**i]).count();
    assert!(survivors.len() >= 120, "only {} of 200 flows were on surviving backends", survivors.len());
    assert!(moved * 10 <= survivors.len(), "{moved} of {} flows whose backend survived moved (at most 10% may)", survivors.len());
}

/// The same with 3 backends going to 2.
#[test]
fn point_22_maglev_removing_one_of_three_backends_keeps_the_flows_of_the_others() {
    let test = "point_22_maglev_removing_one_of_three_backends_keeps_the_flows_of_the_others";
    let Some(mut before) = Fixture::new(test) else { return };
    let Some(mut after) = Fixture::new(test) else { return };
    let three = &MAGLEV_BACKENDS[..3];
    let old = maglev_choices(&mut before, three);
    let new = maglev_choices(&mut after, &three[..2]);
    let survivors: Vec<usize> = (0..old.len()).filter(|i| old[*i] != three[2]).collect();
    let moved = survivors.iter().filter(|i| old[**i] != new[**i]).count();
    assert!(moved * 10 <= survivors.len(), "{moved} of {} flows whose backend survived moved (at most 10% may)", survivors.len());
}

// ---------------------------------------------------------------------------------------------
// Points 24-28: session affinity
// ---------------------------------------------------------------------------------------------

fn sticky_state(timeout: Option<u32>, backends: &[Ipv4Addr]) -> DesiredState {
    let (spn, mut sp) = service("sticky", VIP, 80, Protocol::Tcp, backends.iter().map(|b| ep(*b, 8080)).collect());
    sp.affinity_timeout_s = timeout;
    sp.selection = Selection::Random;
    state([(spn, sp)])
}

/// A new connection from `client:sport` to the sticky service: the backend it was sent to.
fn connect(f: &Fixture, client: Ipv4Addr, sport: u16) -> Ipv4Addr {
    let (verdict, out) = f.run(&Spec::tcp((client, sport), (VIP, 80), TCP_SYN).build());
    assert_eq!(verdict, TC_ACT_OK);
    let fl = flow(&out);
    assert_eq!((fl.src, fl.dst.1), ((client, sport), 8080));
    fl.dst.0
}

/// Points 24, 25: with ClientIP affinity every new connection of a client (any source port)
/// goes to one backend; the key is the client address, so different clients spread.
#[test]
fn point_24_25_client_ip_affinity_sends_every_connection_of_a_client_to_one_backend() {
    let Some(mut f) = Fixture::new("point_24_25_client_ip_affinity_sends_every_connection_of_a_client_to_one_backend") else {
        return;
    };
    f.program(&sticky_state(Some(10800), &[POD1, POD2, POD3]));
    let chosen: BTreeSet<Ipv4Addr> = (0..20).map(|i| connect(&f, CLIENT, 43000 + i)).collect();
    assert_eq!(chosen.len(), 1, "20 connections of one client went to {chosen:?}");
    assert_eq!(f.counter(CNT_AFFINITY_HIT), 19);
    let mut firsts = BTreeSet::new();
    for c in 1..=12u8 {
        let client = Ipv4Addr::new(10, 244, 3, c);
        let theirs: BTreeSet<Ipv4Addr> = (0..5).map(|i| connect(&f, client, 44000 + i)).collect();
        assert_eq!(theirs.len(), 1, "client {client}: {theirs:?}");
        firsts.extend(theirs);
    }
    assert!(firsts.len() >= 2, "12 clients all went to {firsts:?}: the first choice of a client must be random");
    assert_eq!(f.counter(CNT_AFFINITY_HIT), 19 + 12 * 4);
    assert_eq!(f.counter(CNT_NEW_FLOWS), 20 + 12 * 5);
}

/// Point 28: turning affinity off (and on again) takes effect for the next connections.
#[test]
fn point_28_toggling_affinity_takes_effect_for_new_connections() {
    let Some(mut f) = Fixture::new("point_28_toggling_affinity_takes_effect_for_new_connections") else { return };
    f.program(&sticky_state(Some(10800), &[POD1, POD2, POD3]));
    let on: BTreeSet<Ipv4Addr> = (0..5).map(|i| connect(&f, CLIENT, 43000 + i)).collect();
    assert_eq!(on.len(), 1);
    f.program(&sticky_state(None, &[POD1, POD2, POD3]));
    let hits = f.counter(CNT_AFFINITY_HIT);
    let off: BTreeSet<Ipv4Addr> = (0..40).map(|i| connect(&f, CLIENT, 43100 + i)).collect();
    assert!(off.len() >= 2, "with affinity off 40 new connections all went to {off:?}");
    assert_eq!(f.counter(CNT_AFFINITY_HIT), hits, "no affinity hit while affinity is off");
    f.program(&sticky_state(Some(10800), &[POD1, POD2, POD3]));
    let on_again: BTreeSet<Ipv4Addr> = (0..10).map(|i| connect(&f, CLIENT, 43200 + i)).collect();
    assert_eq!(on_again.len(), 1, "affinity back on: {on_again:?}");
}

/// Point 26: the record expires `timeoutSeconds` after the last new connection (sliding), after
/// which the next connection selects at random again.
#[test]
fn point_26_affinity_slides_with_each_connection_and_expires_after_the_timeout() {
    let Some(mut f) = Fixture::new("point_26_affinity_slides_with_each_connection_and_expires_after_the_timeout") else { return };
    f.program(&sticky_state(Some(1), &[POD1, POD2, POD3]));
    let clients: Vec<Ipv4Addr> = (1..=30u8).map(|c| Ipv4Addr::new(10, 244, 4, c)).collect();
    let mut first = Vec::new();
    for c in &clients {
        let b = connect(&f, *c, 45000);
        assert_eq!(connect(&f, *c, 45001), b, "{c}: a second connection within the timeout");
        first.push(b);
    }
    assert_eq!(f.counter(CNT_AFFINITY_HIT), 30);
    // Sliding: 0.6 s apart, each connection is within 1 s of the previous one.
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

/// Point 27: a remembered backend that left the endpoint set is not used; the client falls
/// through to random selection and sticks to the new choice.
#[test]
fn point_27_a_remembered_backend_removed_from_the_set_is_not_used() {
    let Some(mut f) = Fixture::new("point_27_a_remembered_backend_removed_from_the_set_is_not_used") else { return };
    f.program(&sticky_state(Some(10800), &[POD1, POD2, POD3]));
    let remembered = connect(&f, CLIENT, 46000);
    for i in 1..5 {
        assert_eq!(connect(&f, CLIENT, 46000 + i), remembered);
    }
    let rest: Vec<Ipv4Addr> = [POD1, POD2, POD3].into_iter().filter(|b| *b != remembered).collect();
    f.program(&sticky_state(Some(10800), &rest));
    let after: BTreeSet<Ipv4Addr> = (0..10).map(|i| connect(&f, CLIENT, 46100 + i)).collect();
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
        nodeport_service("single", Ipv4Addr::new(10, 96, 0, 41), 30081, Protocol::Tcp, vec![remote(REMOTE1, 8080)]),
    ])
}

fn nodeport_cluster_policy(test: &str, ext: Ext) {
    let Some(mut f) = node(test) else { return };
    f.program(&nodeport_cluster_state());
    let client = (EXT_CLIENT, 40000);
    let syn = tcp_frame(client, (NODE, NODEPORT), 5000, 0, TCP_SYN);
    let (verdict, out) = f.run_ext(ext, &syn);
    assert_eq!(verdict, ext.pass(), "a translated packet continues to the stack");
    assert_eq!(out.len(), syn.len());
    verify_checksums(&out).expect("checksums after DNAT + SNAT");
    let fl = flow(&out);
    assert!([REMOTE1, REMOTE2].contains(&fl.dst.0), "sent to {}, not a backend", fl.dst.0);
    assert_eq!(fl.dst.1, 8080);
    assert_eq!(fl.src.0, NODE, "point 32: external traffic is masqueraded to the node address");
    let snat_port = fl.src.1;
    assert!(SNAT_PORTS.contains(&snat_port), "SNAT port {snat_port} outside 61000..=65000");
    assert_eq!(tcp(&out).seq, 5000);
    let backend = fl.dst;

    // The backend's SYN-ACK to node:port goes back to the client from node:nodeport.
    let synack = tcp_frame(backend, (NODE, snat_port), 9000, 5001, TCP_SYN | TCP_ACK);
    let (verdict, back) = f.run_ext(ext, &synack);
    assert_eq!(verdict, ext.pass());
    verify_checksums(&back).expect("checksums after reverse NAT");
    let fl = flow(&back);
    assert_eq!(fl.src, (NODE, NODEPORT), "the client sees the NodePort");
    assert_eq!(fl.dst, client, "un-SNATed back to the client");
    assert_eq!((tcp(&back).seq, tcp(&back).ack), (9000, 5001));

    // The rest of the flow keeps its backend and its SNAT port.
    let (verdict, out) = f.run_ext(ext, &tcp_frame(client, (NODE, NODEPORT), 5001, 9001, TCP_ACK));
    assert_eq!(verdict, ext.pass());
    assert_eq!(flow(&out).src, (NODE, snat_port));
    assert_eq!(flow(&out).dst, backend);
    verify_checksums(&out).expect("checksums of an established packet");

    // 20 parallel flows of one client to a one-backend service: 20 distinct SNAT ports (the
    // translated 5-tuples would collide otherwise), each reply back to its own client port.
    let mut ports = BTreeSet::new();
    for i in 0..20u16 {
        let client = (EXT_CLIENT, 41000 + i);
        let (verdict, out) = f.run_ext(ext, &tcp_frame(client, (NODE, 30081), 1, 0, TCP_SYN));
        assert_eq!(verdict, ext.pass());
        verify_checksums(&out).expect("checksums after DNAT + SNAT");
        let fl = flow(&out);
        assert_eq!((fl.src.0, fl.dst), (NODE, (REMOTE1, 8080)));
        assert!(SNAT_PORTS.contains(&fl.src.1));
        assert!(ports.insert(fl.src.1), "SNAT port {} given to two flows", fl.src.1);
        let (verdict, back) = f.run_ext(ext, &tcp_frame((REMOTE1, 8080), fl.src, 1, 2, TCP_SYN | TCP_ACK));
        assert_eq!(verdict, ext.pass());
        assert_eq!((flow(&back).src, flow(&back).dst), ((NODE, 30081), client));
        verify_checksums(&back).expect("checksums after reverse NAT");
    }
    assert_eq!(f.counter(CNT_SNAT), 21);
    assert_eq!(f.counter(CNT_NEW_FLOWS), 21);
    assert_eq!(f.counter(CNT_VERDICT_REVNAT), 21);
}

/// Points 32, 41: a NodePort on the node address over XDP, externalTrafficPolicy Cluster:
/// DNAT to any endpoint plus SNAT to the node with a port from the configured range; replies
/// are un-SNATed to the client.
#[test]
fn point_32_41_nodeport_over_xdp_with_cluster_policy_is_snated_and_reverse_translated() {
    nodeport_cluster_policy("point_32_41_nodeport_over_xdp_with_cluster_policy_is_snated_and_reverse_translated", Ext::Xdp);
}

/// The same through the TC fallback of the XDP program.
#[test]
fn point_32_41_nodeport_over_tc_fallback_with_cluster_policy_is_snated_and_reverse_translated() {
    nodeport_cluster_policy(
        "point_32_41_nodeport_over_tc_fallback_with_cluster_policy_is_snated_and_reverse_translated",
        Ext::Tc,
    );
}

/// A NodePort service with externalTrafficPolicy Local: external traffic goes to local
/// endpoints only, without SNAT; pods of this node get the Cluster set.
fn nodeport_local_state(endpoints: Vec<Endpoint>) -> DesiredState {
    let local: Vec<Endpoint> = endpoints.iter().filter(|e| e.local).cloned().collect();
    let (spn, mut sp) = nodeport_service("web", NP_VIP, NODEPORT, Protocol::Tcp, endpoints);
    sp.external = EndpointSet { drop_if_empty: local.is_empty() && !sp.cluster.is_empty(), endpoints: local };
    sp.external_snat = false;
    state([(spn, sp)])
}

/// Point 33: with externalTrafficPolicy Local external traffic reaches only local endpoints and
/// keeps the client's source address (no SNAT); the reply still comes from the NodePort.
#[test]
fn point_33_local_policy_nodeport_keeps_the_client_source_and_uses_local_endpoints() {
    let Some(mut f) = node("point_33_local_policy_nodeport_keeps_the_client_source_and_uses_local_endpoints") else { return };
    f.program(&nodeport_local_state(vec![ep(POD1, 8080), remote(REMOTE1, 8080)]));
    for ext in [Ext::Xdp, Ext::Tc] {
        for i in 0..10u16 {
            let client = (EXT_CLIENT, 40000 + i + if ext == Ext::Tc { 100 } else { 0 });
            let (verdict, out) = f.run_ext(ext, &Spec::tcp(client, (NODE, NODEPORT), TCP_SYN).build());
            assert_eq!(verdict, ext.pass());
            verify_checksums(&out).expect("checksums after DNAT");
            let fl = flow(&out);
            assert_eq!(fl.dst, (POD1, 8080), "{ext:?}: only the local endpoint serves external traffic");
            assert_eq!(fl.src, client, "{ext:?}: the client's source address and port are kept");
            // The local endpoint answers through its pod interface.
            let (verdict, back) = f.run(&Spec::tcp((POD1, 8080), client, TCP_SYN | TCP_ACK).build());
            assert_eq!(verdict, TC_ACT_OK);
            assert_eq!((flow(&back).src, flow(&back).dst), ((NODE, NODEPORT), client));
            verify_checksums(&back).expect("checksums after reverse NAT");
        }
    }
    assert_eq!(f.counter(CNT_SNAT), 0);
}

/// Points 33, 38: externalTrafficPolicy Local without a local endpoint (endpoints exist on other
/// nodes): external traffic is dropped silently, not rejected.
#[test]
fn point_33_38_local_policy_without_local_endpoint_drops_external_traffic() {
    let Some(mut f) = node("point_33_38_local_policy_without_local_endpoint_drops_external_traffic") else { return };
    f.program(&nodeport_local_state(vec![remote(REMOTE1, 8080)]));
    let syn = Spec::tcp((EXT_CLIENT, 40000), (NODE, NODEPORT), TCP_SYN).build();
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
#[test]
fn point_34_pod_to_nodeport_of_local_policy_service_uses_the_cluster_set() {
    let Some(mut f) = node("point_34_pod_to_nodeport_of_local_policy_service_uses_the_cluster_set") else { return };
    f.program(&nodeport_local_state(vec![remote(REMOTE1, 8080)]));
    let (verdict, out) = f.run(&Spec::tcp((CLIENT, 40020), (NODE, NODEPORT), TCP_SYN).build());
    assert_eq!(verdict, TC_ACT_OK);
    let fl = flow(&out);
    assert_eq!(fl.dst, (REMOTE1, 8080), "the Cluster set serves this node's pods");
    assert_eq!(fl.src, (CLIENT, 40020), "pod traffic is not source-NATed");
    verify_checksums(&out).expect("checksums after DNAT");
    let (_, back) = f.run(&Spec::tcp((REMOTE1, 8080), (CLIENT, 40020), TCP_SYN | TCP_ACK).build());
    assert_eq!((flow(&back).src, flow(&back).dst), ((NODE, NODEPORT), (CLIENT, 40020)));
    assert_eq!(f.counter(CNT_DROP_NO_LOCAL_BACKEND), 0);
}

// ---------------------------------------------------------------------------------------------
// Point 51: hairpin
// ---------------------------------------------------------------------------------------------

/// Point 51: a pod reaching itself through its service is source-NATed to the hairpin address
/// (its own port kept), so its reply comes back through the node and is translated back.
#[test]
fn point_51_pod_reaching_itself_through_its_service_is_hairpinned() {
    let Some(mut f) = node("point_51_pod_reaching_itself_through_its_service_is_hairpinned") else { return };
    f.program(&state([service("self", VIP, 80, Protocol::Tcp, vec![ep(POD1, 8080)])]));
    let (verdict, out) = f.run(&tcp_frame((POD1, 45000), (VIP, 80), 77, 0, TCP_SYN));
    assert_eq!(verdict, TC_ACT_OK);
    verify_checksums(&out).expect("checksums after DNAT + hairpin SNAT");
    assert_eq!(flow(&out).dst, (POD1, 8080));
    assert_eq!(flow(&out).src, (HAIRPIN, 45000), "source-NATed to the hairpin address, port kept");
    let (verdict, back) = f.run(&tcp_frame((POD1, 8080), (HAIRPIN, 45000), 900, 78, TCP_SYN | TCP_ACK));
    assert_eq!(verdict, TC_ACT_OK);
    verify_checksums(&back).expect("checksums after reverse NAT");
    assert_eq!(flow(&back).src, (VIP, 80), "the pod sees its service");
    assert_eq!(flow(&back).dst, (POD1, 45000));
    assert_eq!(f.counter(CNT_HAIRPIN), 1);
    // Another pod reaching the same service keeps its source (point 31).
    let (_, out) = f.run(&Spec::tcp((CLIENT, 45001), (VIP, 80), TCP_SYN).build());
    assert_eq!(flow(&out).src, (CLIENT, 45001));
    assert_eq!(f.counter(CNT_HAIRPIN), 1);
}

/// Point 51 through a NodePort: the endpoint pod reaching its own service's NodePort (the
/// networking "endpoint-Service" check) is hairpinned too.
#[test]
fn point_51_pod_reaching_itself_through_its_nodeport_is_hairpinned() {
    let Some(mut f) = node("point_51_pod_reaching_itself_through_its_nodeport_is_hairpinned") else { return };
    f.program(&state([nodeport_service("self", NP_VIP, NODEPORT, Protocol::Tcp, vec![ep(POD1, 8080)])]));
    let (verdict, out) = f.run(&Spec::tcp((POD1, 45100), (NODE, NODEPORT), TCP_SYN).build());
    assert_eq!(verdict, TC_ACT_OK);
    verify_checksums(&out).expect("checksums after DNAT + hairpin SNAT");
    assert_eq!((flow(&out).src, flow(&out).dst), ((HAIRPIN, 45100), (POD1, 8080)));
    let (_, back) = f.run(&Spec::tcp((POD1, 8080), (HAIRPIN, 45100), TCP_SYN | TCP_ACK).build());
    assert_eq!((flow(&back).src, flow(&back).dst), ((NODE, NODEPORT), (POD1, 45100)));
    verify_checksums(&back).expect("checksums after reverse NAT");
    assert_eq!(f.counter(CNT_HAIRPIN), 1);
}

// ---------------------------------------------------------------------------------------------
// Point 58: ICMP errors about translated flows
// ---------------------------------------------------------------------------------------------

/// "Fragmentation needed, next-hop MTU 1400".
const MTU_1400: [u8; 4] = [0, 0, 0x05, 0x78];

/// Point 58 (nothing of a translated flow reaches the client with the backend's address): an
/// ICMP error from the backend about a DNATed flow is translated back: the quoted packet becomes
/// what the client sent (destination VIP:80) and the error comes from the VIP; an error from a
/// router on the path keeps its source.
#[test]
fn point_58_icmp_errors_about_a_clusterip_flow_are_translated_back() {
    let Some(mut f) = Fixture::new("point_58_icmp_errors_about_a_clusterip_flow_are_translated_back") else { return };
    f.program(&cluster());
    let client = (CLIENT, 40030);
    let (_, out) = f.run(&tcp_frame(client, (VIP, 80), 1000, 0, TCP_SYN));
    let backend = flow(&out).dst;
    assert!(backends().contains(&backend.0));

    let quote = quote_tcp(client, backend, 1500, 1001);
    let err =
        ipv4_frame(backend.0, CLIENT, PROTO_ICMP, 7, 0, &[], &icmp_error(ICMP_DEST_UNREACH, ICMP_FRAG_NEEDED, MTU_1400, &quote));
    verify_icmp_checksums(&err).expect("the built error");
    let (verdict, out) = f.run(&err);
    assert_eq!(verdict, TC_ACT_OK);
    assert_eq!(out.len(), err.len());
    let h = ipv4(&out);
    assert_eq!((h.src, h.dst), (VIP, CLIENT), "an error the backend sent appears to come from the VIP");
    let i = icmp(&out);
    assert_eq!((i.ty, i.code, i.rest), (ICMP_DEST_UNREACH, ICMP_FRAG_NEEDED, MTU_1400));
    assert_eq!((i.inner.src, i.inner_sport), client, "quoted source unchanged (no SNAT)");
    assert_eq!((i.inner.dst, i.inner_dport), (VIP, 80), "the quoted packet is what the client sent");
    verify_icmp_checksums(&out).expect("ICMP, quoted IPv4 and outer IPv4 checksums");
    assert_eq!(f.counter(CNT_ICMP_TRANSLATED), 1);

    // From a router on the path (quoting more than 8 bytes, as Linux does): the outer source is
    // the router's and stays.
    let mut long_quote = quote_tcp(client, backend, 1500, 1001);
    long_quote.extend_from_slice(&[0x50, 0x10, 0xff, 0xff, 0, 0, 0, 0]);
    long_quote.extend_from_slice(&[0xab; 101]);
    let err = ipv4_frame(
        ROUTER,
        CLIENT,
        PROTO_ICMP,
        8,
        0,
        &[],
        &icmp_error(ICMP_DEST_UNREACH, ICMP_FRAG_NEEDED, MTU_1400, &long_quote),
    );
    let (verdict, out) = f.run(&err);
    assert_eq!(verdict, TC_ACT_OK);
    let h = ipv4(&out);
    assert_eq!((h.src, h.dst), (ROUTER, CLIENT), "a router's error keeps the router's address");
    let i = icmp(&out);
    assert_eq!((i.inner.dst, i.inner_dport), (VIP, 80));
    assert_eq!((i.inner.src, i.inner_sport), client);
    assert_eq!(&out[out.len() - 101..], &[0xab; 101][..], "the rest of the quote is untouched");
    verify_icmp_checksums(&out).expect("ICMP, quoted IPv4 and outer IPv4 checksums");
    assert_eq!(f.counter(CNT_ICMP_TRANSLATED), 2);

    // A UDP flow: the backend's port unreachable quoting the whole datagram it received. Once
    // translated, the quote is byte for byte what the client sent (the quoted UDP checksum too).
    let query = Spec::udp((CLIENT, 5360), (UDP_VIP, 53), b"query").build();
    let (_, received) = f.run(&query);
    let backend = flow(&received).dst;
    assert_eq!(backend.1, 9000);
    let unreachable = icmp_error(ICMP_DEST_UNREACH, ICMP_PORT_UNREACH, [0; 4], &received[14..]);
    let err = ipv4_frame(backend.0, CLIENT, PROTO_ICMP, 9, 0, &[], &unreachable);
    let (verdict, out) = f.run(&err);
    assert_eq!(verdict, TC_ACT_OK);
    assert_eq!(ipv4(&out).src, UDP_VIP);
    assert_eq!(&out[14 + 20 + 8..], &query[14..], "the quoted datagram is the client's, checksums included");
    verify_icmp_checksums(&out).expect("ICMP and IPv4 checksums");
    assert_eq!(f.counter(CNT_ICMP_TRANSLATED), 3);

    // An error quoting a flow that was never translated passes untouched.
    let unknown = quote_tcp((CLIENT, 40031), (POD3, 8080), 1500, 1);
    let other =
        ipv4_frame(POD3, CLIENT, PROTO_ICMP, 10, 0, &[], &icmp_error(ICMP_DEST_UNREACH, ICMP_FRAG_NEEDED, MTU_1400, &unknown));
    let (verdict, out) = f.run(&other);
    assert_eq!((verdict, out), (TC_ACT_OK, other));
    assert_eq!(f.counter(CNT_ICMP_TRANSLATED), 3);
}

/// Point 58 for a source-NATed NodePort flow over XDP: the backend's error is addressed to the
/// node and quotes node:snat-port → backend; it must reach the client quoting what the client
/// sent (client:port → node:nodeport).
#[test]
fn point_58_icmp_error_about_a_snated_nodeport_flow_reaches_the_client_over_xdp() {
    snated_icmp_error("point_58_icmp_error_about_a_snated_nodeport_flow_reaches_the_client_over_xdp", Ext::Xdp);
}

/// The same through the TC fallback.
#[test]
fn point_58_icmp_error_about_a_snated_nodeport_flow_reaches_the_client_over_tc_fallback() {
    snated_icmp_error("point_58_icmp_error_about_a_snated_nodeport_flow_reaches_the_client_over_tc_fallback", Ext::Tc);
}

fn snated_icmp_error(test: &str, ext: Ext) {
    let Some(mut f) = node(test) else { return };
    f.program(&nodeport_cluster_state());
    let client = (EXT_CLIENT, 40000);
    let (verdict, out) = f.run_ext(ext, &tcp_frame(client, (NODE, NODEPORT), 5000, 0, TCP_SYN));
    assert_eq!(verdict, ext.pass());
    let (snat, backend) = (flow(&out).src, flow(&out).dst);
    assert_eq!(snat.0, NODE);

    let quote = quote_tcp(snat, backend, 1500, 5001);
    let err =
        ipv4_frame(backend.0, NODE, PROTO_ICMP, 11, 0, &[], &icmp_error(ICMP_DEST_UNREACH, ICMP_FRAG_NEEDED, MTU_1400, &quote));
    let (verdict, out) = f.run_ext(ext, &err);
    assert_eq!(verdict, ext.pass());
    let h = ipv4(&out);
    assert_eq!(h.dst, EXT_CLIENT, "the error is addressed to the client");
    assert_eq!(h.src, NODE, "from the address the client talked to");
    let i = icmp(&out);
    assert_eq!((i.ty, i.code, i.rest), (ICMP_DEST_UNREACH, ICMP_FRAG_NEEDED, MTU_1400));
    assert_eq!((i.inner.src, i.inner_sport), client, "quoted source: the client, un-SNATed");
    assert_eq!((i.inner.dst, i.inner_dport), (NODE, NODEPORT), "quoted destination: the NodePort");
    verify_icmp_checksums(&out).expect("ICMP, quoted IPv4 and outer IPv4 checksums");
    assert_eq!(f.counter(CNT_ICMP_TRANSLATED), 1);
}

// ---------------------------------------------------------------------------------------------
// Point 48: loadBalancerSourceRanges
// ---------------------------------------------------------------------------------------------

/// Point 48: source ranges restrict the LoadBalancer IP only; the same service's NodePort (and
/// ClusterIP) are not restricted.
#[test]
fn point_48_load_balancer_source_ranges_restrict_only_the_load_balancer_ip() {
    let Some(mut f) = node("point_48_load_balancer_source_ranges_restrict_only_the_load_balancer_ip") else { return };
    let lb_ip = Ipv4Addr::new(198, 51, 100, 7);
    let (spn, mut sp) = service("lb", Ipv4Addr::new(10, 96, 0, 50), 443, Protocol::Tcp, vec![remote(REMOTE1, 8443)]);
    sp.frontends.push(Frontend { addr: IpAddr::V4(NODE), port: 30443, kind: FrontendKind::NodePort });
    sp.frontends.push(Frontend { addr: IpAddr::V4(lb_ip), port: 443, kind: FrontendKind::LoadBalancer });
    sp.source_ranges = vec![Cidr { addr: IpAddr::V4(Ipv4Addr::new(10, 0, 0, 0)), prefix: 8 }];
    let (spn2, mut sp2) = (spn.clone(), sp.clone());
    f.program(&state([(spn, sp)]));

    for (src, allowed) in [
        (Ipv4Addr::new(10, 1, 2, 3), true),
        (Ipv4Addr::new(10, 255, 255, 254), true),
        (Ipv4Addr::new(192, 168, 9, 9), false),
        (Ipv4Addr::new(11, 0, 0, 1), false),
        (Ipv4Addr::new(9, 255, 255, 255), false),
    ] {
        let (verdict, out) = f.run_xdp(&Spec::tcp((src, 40000), (lb_ip, 443), TCP_SYN).build());
        if allowed {
            assert_eq!(verdict, XDP_PASS, "{src} is inside 10.0.0.0/8");
            assert_eq!(flow(&out).dst, (REMOTE1, 8443));
            verify_checksums(&out).expect("checksums");
        } else {
            assert_eq!(verdict, XDP_DROP, "{src} is outside 10.0.0.0/8");
        }
    }
    assert_eq!(f.counter(CNT_DROP_SOURCE_RANGE), 3);
    // The NodePort of the same service is not subject to the ranges.
    let (verdict, out) = f.run_xdp(&Spec::tcp((Ipv4Addr::new(192, 168, 9, 9), 40001), (NODE, 30443), TCP_SYN).build());
    assert_eq!(verdict, XDP_PASS);
    assert_eq!(flow(&out).dst, (REMOTE1, 8443));
    // Nor is the ClusterIP from a pod outside the ranges' family of addresses.
    let (verdict, out) =
        f.run(&Spec::tcp((Ipv4Addr::new(172, 16, 0, 5), 40002), (Ipv4Addr::new(10, 96, 0, 50), 443), TCP_SYN).build());
    assert_eq!(verdict, TC_ACT_OK);
    assert_eq!(flow(&out).dst, (REMOTE1, 8443));
    assert_eq!(f.counter(CNT_DROP_SOURCE_RANGE), 3);
    assert_eq!(f.counter(CNT_NEW_FLOWS), 4);

    // Changing the ranges takes effect live: 192.168.0.0/16 only, then none.
    let outsider = Ipv4Addr::new(192, 168, 9, 9);
    sp2.source_ranges = vec![Cidr { addr: IpAddr::V4(Ipv4Addr::new(192, 168, 0, 0)), prefix: 16 }];
    f.program(&state([(spn2.clone(), sp2.clone())]));
    let (verdict, _) = f.run_xdp(&Spec::tcp((outsider, 40010), (lb_ip, 443), TCP_SYN).build());
    assert_eq!(verdict, XDP_PASS, "{outsider} is inside the new range");
    let (verdict, _) = f.run_xdp(&Spec::tcp((Ipv4Addr::new(10, 1, 2, 3), 40011), (lb_ip, 443), TCP_SYN).build());
    assert_eq!(verdict, XDP_DROP, "10.1.2.3 is outside the new range");
    sp2.source_ranges.clear();
    f.program(&state([(spn2, sp2)]));
    let (verdict, _) = f.run_xdp(&Spec::tcp((Ipv4Addr::new(10, 1, 2, 3), 40012), (lb_ip, 443), TCP_SYN).build());
    assert_eq!(verdict, XDP_PASS, "without ranges every source is allowed");
    assert_eq!(f.counter(CNT_DROP_SOURCE_RANGE), 4);
}

// ---------------------------------------------------------------------------------------------
// Per-service and per-backend counters
// ---------------------------------------------------------------------------------------------

fn stats_of(v: &[(u32, FlowCounters)], id: u32) -> FlowCounters {
    v.iter().find(|(k, _)| *k == id).map(|(_, s)| *s).unwrap_or_default()
}

/// Point 23 (a flow is one connection to one backend), as the operator sees it: every packet of
/// a flow, both directions, counts against its service and its backend, and the flow counts
/// once as a new connection.
#[test]
fn point_23_per_service_and_per_backend_counters_count_every_packet_of_a_flow() {
    let Some(mut f) = Fixture::new("point_23_per_service_and_per_backend_counters_count_every_packet_of_a_flow") else { return };
    f.program(&cluster());
    let client = (CLIENT, 40040);
    let (_, out) = f.run(&syn(client.1));
    let backend = flow(&out).dst;
    for _ in 0..4 {
        f.run(&Spec::tcp(client, (VIP, 80), TCP_ACK).build());
    }
    for _ in 0..3 {
        let (_, back) = f.run(&Spec::tcp(backend, client, TCP_ACK).build());
        assert_eq!(flow(&back).src, (VIP, 80));
    }
    let pins = PinnedMaps::open(f.dp.pin_path()).expect("open pins");
    let svc = f.svc_id(VIP, 80, IPPROTO_TCP);
    let be = f.backend_id(backend.0, 8080, IPPROTO_TCP);
    let expected = FlowCounters { packets: 8, bytes: 8 * 40, new_flows: 1 };
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
// Point 41 with IPv4 options
// ---------------------------------------------------------------------------------------------

/// Point 41: a NodePort packet carrying IPv4 options (router alert; the longest possible, 40
/// bytes) is translated with the L4 header found through IHL, options kept, checksums valid,
/// over XDP and its TC fallback; so is its reply.
#[test]
fn point_41_nodeport_packets_with_ipv4_options_are_translated() {
    let Some(mut f) = node("point_41_nodeport_packets_with_ipv4_options_are_translated") else { return };
    f.program(&nodeport_cluster_state());
    let router_alert = vec![0x94, 0x04, 0, 0];
    let mut longest = vec![1u8; 39]; // NOPs
    longest.push(0); // end of options
    let mut sport = 40100;
    for ext in [Ext::Xdp, Ext::Tc] {
        for opts in [&router_alert, &longest] {
            sport += 1;
            let client = (EXT_CLIENT, sport);
            let seg = tcp_segment(client, (NODE, NODEPORT), 10, 0, TCP_SYN, b"");
            let frame = ipv4_frame(EXT_CLIENT, NODE, PROTO_TCP, 1, 0, opts, &seg);
            let (verdict, out) = f.run_ext(ext, &frame);
            assert_eq!(verdict, ext.pass(), "{ext:?} with {} bytes of options", opts.len());
            assert_eq!(out.len(), frame.len());
            verify_checksums(&out).expect("checksums with options");
            let ihl = 20 + opts.len();
            assert_eq!(ipv4(&out).ihl, ihl);
            assert_eq!(&out[34..14 + ihl], &opts[..], "options kept");
            let fl = flow(&out);
            assert!([REMOTE1, REMOTE2].contains(&fl.dst.0));
            assert_eq!(fl.dst.1, 8080, "the port after the options was rewritten");
            assert_eq!(fl.src.0, NODE);
            assert!(SNAT_PORTS.contains(&fl.src.1));
            let reply_seg = tcp_segment(fl.dst, fl.src, 20, 11, TCP_SYN | TCP_ACK, b"");
            let reply = ipv4_frame(fl.dst.0, NODE, PROTO_TCP, 2, 0, opts, &reply_seg);
            let (verdict, back) = f.run_ext(ext, &reply);
            assert_eq!(verdict, ext.pass());
            verify_checksums(&back).expect("checksums of the reply with options");
            assert_eq!((flow(&back).src, flow(&back).dst), ((NODE, NODEPORT), client));
        }
    }
    assert_eq!(f.counter(CNT_SNAT), 4);
}

// ---------------------------------------------------------------------------------------------
// Additional findings
// ---------------------------------------------------------------------------------------------

/// Point 58, the other direction: a UDP client that closed its socket answers the backend's
/// (reverse-translated) reply VIP:53 → client with an ICMP port unreachable addressed to the VIP.
/// Like conntrack's RELATED NAT it must reach the backend (outer destination and quoted source
/// translated to the backend), not leave for the VIP untranslated.
#[test]
fn point_58_icmp_error_from_the_client_about_a_reply_reaches_the_backend() {
    let Some(mut f) = Fixture::new("point_58_icmp_error_from_the_client_about_a_reply_reaches_the_backend") else { return };
    f.program(&cluster());
    let client = (CLIENT, 5361);
    let (_, received) = f.run(&Spec::udp(client, (UDP_VIP, 53), b"query").build());
    let backend = flow(&received).dst;
    let answer = Spec::udp(backend, client, b"answer").build();
    let (_, delivered) = f.run(&answer);
    assert_eq!(flow(&delivered).src, (UDP_VIP, 53));
    // The client's kernel quotes what it received: VIP:53 → client.
    let unreachable = icmp_error(ICMP_DEST_UNREACH, ICMP_PORT_UNREACH, [0; 4], &delivered[14..]);
    let err = ipv4_frame(CLIENT, UDP_VIP, PROTO_ICMP, 12, 0, &[], &unreachable);
    let (verdict, out) = f.run(&err);
    assert_eq!(verdict, TC_ACT_OK);
    let h = ipv4(&out);
    assert_eq!((h.src, h.dst), (CLIENT, backend.0), "the error must go to the backend, not to the VIP");
    let i = icmp(&out);
    assert_eq!((i.inner.src, i.inner_sport), backend, "the quote is what the backend sent");
    assert_eq!(&out[14 + 20 + 8..], &answer[14..], "byte for byte, checksums included");
    verify_icmp_checksums(&out).expect("ICMP and IPv4 checksums");
}

/// Point 62 over XDP with SNAT: every fragment of a datagram to a UDP NodePort gets the same
/// DNAT and SNAT (later fragments in the IPv4 header only), and so does the fragmented reply.
#[test]
fn point_62_fragmented_datagram_to_a_udp_nodeport_is_translated_over_xdp() {
    let Some(mut f) = node("point_62_fragmented_datagram_to_a_udp_nodeport_is_translated_over_xdp") else { return };
    f.program(&state([nodeport_service("dns", UDP_VIP, 30053, Protocol::Udp, vec![remote(REMOTE1, 9000)])]));
    let client = (EXT_CLIENT, 5362);
    let payload = vec![0x5a; 2000 - 8];
    let dgram = udp_datagram(client, (NODE, 30053), &payload);
    let cuts = [0usize, 1480, dgram.len()];
    let mut reassembled = Vec::new();
    let mut snat = None;
    for (k, w) in cuts.windows(2).enumerate() {
        let more = if w[1] < dgram.len() { 0x2000 } else { 0 };
        let frame = ipv4_frame(EXT_CLIENT, NODE, PROTO_UDP, 0x4444, more | (w[0] / 8) as u16, &[], &dgram[w[0]..w[1]]);
        let (verdict, out) = f.run_xdp(&frame);
        assert_eq!(verdict, XDP_PASS, "fragment {k}");
        verify_ipv4_checksum(&out).expect("IPv4 checksum");
        let h = ipv4(&out);
        assert_eq!((h.src, h.dst), (NODE, REMOTE1), "fragment {k}: SNAT + DNAT");
        if k == 0 {
            let u = l4_bytes(&out);
            snat = Some(u16::from_be_bytes([u[0], u[1]]));
            assert_eq!(u16::from_be_bytes([u[2], u[3]]), 9000);
        } else {
            let mut expected = with_ipv4_addr(&frame, 30, REMOTE1);
            expected = with_ipv4_addr(&expected, 26, NODE);
            assert_eq!(out, expected, "a later fragment changes in its IPv4 header only");
        }
        reassembled.extend_from_slice(l4_bytes(&out));
    }
    let snat = snat.expect("first fragment seen");
    assert!(SNAT_PORTS.contains(&snat));
    verify_udp_datagram(NODE, REMOTE1, &reassembled).expect("UDP checksum of the reassembled datagram");

    let answer = udp_datagram((REMOTE1, 9000), (NODE, snat), &payload);
    let mut reply = Vec::new();
    for (k, w) in cuts.windows(2).enumerate() {
        let more = if w[1] < answer.len() { 0x2000 } else { 0 };
        let frame = ipv4_frame(REMOTE1, NODE, PROTO_UDP, 0x4545, more | (w[0] / 8) as u16, &[], &answer[w[0]..w[1]]);
        let (verdict, out) = f.run_xdp(&frame);
        assert_eq!(verdict, XDP_PASS, "reply fragment {k}");
        verify_ipv4_checksum(&out).expect("IPv4 checksum");
        assert_eq!((ipv4(&out).src, ipv4(&out).dst), (NODE, EXT_CLIENT), "reply fragment {k}");
        reply.extend_from_slice(l4_bytes(&out));
    }
    assert_eq!(u16::from_be_bytes([reply[0], reply[1]]), 30053);
    assert_eq!(u16::from_be_bytes([reply[2], reply[3]]), client.1);
    verify_udp_datagram(NODE, EXT_CLIENT, &reply).expect("UDP checksum of the reassembled reply");
    assert_eq!(f.counter(CNT_FRAG_FOLLOWED), 2);
}

/// Point 25: the affinity record is per ServicePort, whichever of its addresses was used: a
/// client that reached a backend through the ClusterIP gets it through the NodePort too.
#[test]
fn point_25_affinity_applies_whichever_address_of_the_service_is_used() {
    let Some(mut f) = node("point_25_affinity_applies_whichever_address_of_the_service_is_used") else { return };
    let (spn, mut sp) =
        nodeport_service("web", NP_VIP, NODEPORT, Protocol::Tcp, vec![ep(POD1, 8080), ep(POD2, 8080), ep(POD3, 8080)]);
    sp.affinity_timeout_s = Some(10800);
    f.program(&state([(spn, sp)]));
    for c in 1..=6u8 {
        let client = Ipv4Addr::new(10, 244, 5, c);
        let (_, out) = f.run(&Spec::tcp((client, 47000), (NP_VIP, 80), TCP_SYN).build());
        let chosen = flow(&out).dst.0;
        for i in 1..4 {
            let (_, out) = f.run(&Spec::tcp((client, 47000 + i), (NODE, NODEPORT), TCP_SYN).build());
            assert_eq!(flow(&out).dst.0, chosen, "{client}: the NodePort must honour the ClusterIP's affinity record");
        }
    }
    assert_eq!(f.counter(CNT_AFFINITY_HIT), 6 * 3);
}
