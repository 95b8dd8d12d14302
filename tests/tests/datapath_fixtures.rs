//! Tier 1: BPF_PROG_TEST_RUN fixtures. The real eBPF object is loaded into the real kernel, its
//! maps are programmed through the agent's own planner and `Dataplane`, and packets go in to
//! come out with a verdict. Point numbers refer to k8s-service-semantics.md section 1.

use std::{
    collections::BTreeSet,
    net::{IpAddr, Ipv4Addr},
};

use aya::programs::{TestRun as _, TestRunOptions};
use lb_common::{
    CNT_CT_RESELECT, CNT_DROP_BAD_L4, CNT_DROP_FRAGMENT, CNT_DROP_NO_BACKEND, CNT_PASS_BAD_L3,
    CNT_PASS_NOT_IP, CNT_VERDICT_DNAT, CNT_VERDICT_PASS, CNT_VERDICT_REVNAT,
};
use lb_tests::{
    netns::unique_token,
    packet::{Spec, TCP_ACK, TCP_SYN, flow, verify_checksums},
    privilege,
};
use lb_userspace::{
    dataplane::{Dataplane, DataplaneConfig, cleanup},
    pinned::PinnedMaps,
    model::{
        DesiredState, Endpoint, EndpointSet, Frontend, FrontendKind, Protocol, Selection,
        ServicePortName, ServicePortState,
    },
    plan::{Ids, PlanConfig, map_state},
};

const TC_ACT_OK: i32 = 0;
const TC_ACT_SHOT: i32 = 2;

const VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
const UDP_VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 20);
const EMPTY_VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 30);
const CLIENT: Ipv4Addr = Ipv4Addr::new(10, 244, 0, 50);
const POD1: Ipv4Addr = Ipv4Addr::new(10, 244, 0, 11);
const POD2: Ipv4Addr = Ipv4Addr::new(10, 244, 0, 12);
const POD3: Ipv4Addr = Ipv4Addr::new(10, 244, 0, 13);

/// A loaded datapath with its own pins, removed on drop.
struct Fixture {
    dp: Dataplane,
    ids: Ids,
}

impl Fixture {
    fn new(test: &str) -> Option<Self> {
        if !privilege::require(test) {
            return None;
        }
        let cfg = DataplaneConfig {
            pin_path: format!("/sys/fs/bpf/lbt-{}", unique_token()).into(),
            conntrack_max: Some(4096),
        };
        let dp = Dataplane::load(&cfg).expect("loading the datapath");
        Some(Self { dp, ids: Ids::default() })
    }

    fn program(&mut self, desired: &DesiredState) {
        let st = map_state(desired, &mut self.ids, &PlanConfig::default());
        self.dp.apply(&st).expect("programming the maps");
    }

    /// Runs one frame through the pod-ingress program: (verdict, frame out).
    fn run(&self, frame: &[u8]) -> (i32, Vec<u8>) {
        let mut out = vec![0u8; frame.len() + 256];
        let prog = self.dp.tc_program().expect("program");
        let res = prog
            .test_run(TestRunOptions {
                data_in: Some(frame),
                data_out: Some(&mut out),
                ..TestRunOptions::default()
            })
            .expect("BPF_PROG_TEST_RUN");
        out.truncate(res.data_size_out as usize);
        (res.return_value as i32, out)
    }

    fn counter(&self, index: u32) -> u64 {
        PinnedMaps::open(self.dp.pin_path()).expect("open pins").counters().expect("counters")[index as usize]
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        let _ = cleanup(self.dp.pin_path());
    }
}

fn ep(ip: Ipv4Addr, port: u16) -> Endpoint {
    Endpoint { addr: IpAddr::V4(ip), port, local: true, terminating: false }
}

fn service(name: &str, vip: Ipv4Addr, port: u16, proto: Protocol, eps: Vec<Endpoint>) -> (ServicePortName, ServicePortState) {
    let set = EndpointSet { endpoints: eps, drop_if_empty: false };
    (
        ServicePortName { namespace: "default".into(), name: name.into(), port_name: String::new(), protocol: proto },
        ServicePortState {
            frontends: vec![Frontend { addr: IpAddr::V4(vip), port, kind: FrontendKind::ClusterIp }],
            internal: set.clone(),
            cluster: set.endpoints.clone(),
            external: set,
            external_snat: true,
            source_ranges: Vec::new(),
            affinity_timeout_s: None,
            selection: Selection::Random,
        },
    )
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

#[test]
fn fragments_to_a_service_address_are_dropped_never_mis_forwarded() {
    let Some(mut f) = Fixture::new("fragments_to_a_service_address_are_dropped_never_mis_forwarded") else { return };
    f.program(&cluster());
    let mut first = Spec::udp((CLIENT, 5355), (UDP_VIP, 53), &[7u8; 64]);
    first.frag = 0x2000; // more fragments
    let mut later = Spec::udp((CLIENT, 5355), (UDP_VIP, 53), &[7u8; 64]);
    later.frag = 0x0008; // offset 64 bytes
    for frame in [first.build(), later.build()] {
        let (verdict, _) = f.run(&frame);
        assert_eq!(verdict, TC_ACT_SHOT);
    }
    assert_eq!(f.counter(CNT_DROP_FRAGMENT), 2);
    let mut elsewhere = Spec::udp((CLIENT, 5355), (POD1, 53), &[7u8; 64]);
    elsewhere.frag = 0x0008;
    let frame = elsewhere.build();
    let (verdict, out) = f.run(&frame);
    assert_eq!((verdict, out), (TC_ACT_OK, frame), "fragments to other addresses pass untouched");
}

#[test]
fn point_37_service_without_endpoints_never_forwards() {
    let Some(mut f) = Fixture::new("point_37_service_without_endpoints_never_forwards") else { return };
    f.program(&cluster());
    let (verdict, _) = f.run(&Spec::tcp((CLIENT, 40013), (EMPTY_VIP, 80), TCP_SYN).build());
    assert_eq!(verdict, TC_ACT_SHOT);
    assert_eq!(f.counter(CNT_DROP_NO_BACKEND), 1);
}

#[test]
fn point_57_udp_flow_moves_when_its_backend_is_removed_and_tcp_flow_stays() {
    let Some(mut f) = Fixture::new("point_57_udp_flow_moves_when_its_backend_is_removed_and_tcp_flow_stays") else { return };
    f.program(&cluster());
    let udp = Spec::udp((CLIENT, 5356), (UDP_VIP, 53), b"q").build();
    let udp_backend = flow(&f.run(&udp).1).dst.0;
    let tcp_backend = flow(&f.run(&syn(40014)).1).dst.0;

    // Remove both backends from both services.
    let mut d = cluster();
    for sp in d.services.values_mut() {
        for set in [&mut sp.internal, &mut sp.external] {
            set.endpoints.retain(|e| e.addr != IpAddr::V4(udp_backend) && e.addr != IpAddr::V4(tcp_backend));
        }
    }
    f.program(&d);

    let moved = flow(&f.run(&udp).1).dst.0;
    assert_ne!(moved, udp_backend, "the UDP flow must leave its removed backend");
    assert_eq!(f.counter(CNT_CT_RESELECT), 1);
    let (verdict, out) = f.run(&Spec::tcp((CLIENT, 40014), (VIP, 80), TCP_ACK).build());
    assert_eq!(verdict, TC_ACT_OK);
    assert_eq!(flow(&out).dst.0, tcp_backend, "established TCP keeps its backend, as with kube-proxy's conntrack");
    // New TCP connections never go to a removed backend (point 21).
    for i in 0..30 {
        let dst = flow(&f.run(&syn(42000 + i)).1).dst.0;
        assert!(dst != tcp_backend && dst != udp_backend, "new connection sent to removed backend {dst}");
    }
}
