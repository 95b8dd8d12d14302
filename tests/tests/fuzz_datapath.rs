//! Reliability scenario 1 (issue 7): fuzzed packets through BPF_PROG_TEST_RUN.
//!
//! Each of the four packet programs — the pod TC program (`lb_tc_pod_ingress`), the external TC
//! fallback (`lb_tc_ext_ingress`), XDP (`lb_xdp_ext`) and the egress reply program
//! (`lb_tc_egress`) — is loaded into the real kernel with a
//! programmed state (ClusterIP TCP and UDP, NodePort with SNAT, a LoadBalancer IP with source
//! ranges, services without endpoints, ClientIP affinity, an `externalTrafficPolicy: Local`
//! NodePort without local endpoints) and fed at least 100,000 random and mutated frames, one
//! BPF_PROG_TEST_RUN each: truncated headers, bad IHL and total lengths, IPv4 options,
//! fragments, VLAN tags, IPv6, non-IP, odd TCP flags, random bytes, ICMP errors, replies of
//! translated flows and byte-level mutations of valid service packets.
//!
//! Every frame is checked against an independent oracle:
//! - the verdict is a valid one (TC: OK, SHOT, REDIRECT; XDP: DROP, PASS, TX);
//! - the global counters moved by exactly one packet and exactly one verdict counter, and that
//!   verdict counter agrees with the return value;
//! - a "pass" leaves the frame byte-identical; traffic not addressed to a service address is
//!   only ever passed, or reverse-translated when a conntrack reply entry (or, for an ICMP error,
//!   the quoted flow's entry) justifies it;
//! - a translated frame changes only addresses, ports and checksums; checksums that were valid
//!   stay valid (a zero UDP checksum stays zero); the destination of a DNAT is a programmed
//!   backend of that frontend; a reverse NAT writes exactly what its conntrack entry says;
//! - a complete TCP/UDP packet to a frontend never leaves untranslated; drops happen only to
//!   service addresses; rejects only for services without endpoints, and are well-formed RSTs
//!   or ICMP port unreachables with valid checksums;
//! - the egress program never translates towards a backend nor rejects: it passes, drops only
//!   what the others drop to service addresses, and reverse-translates replies (the flows whose
//!   replies it sees are first created through the pod program);
//! - at the end: packets = pass + dnat + revnat + drop + reject, drop reasons add up to the
//!   drops and reject kinds to the rejects.
//!
//! The PRNG is seeded deterministically (printed; `LB_FUZZ_SEED=<n>` reproduces a run,
//! `LB_FUZZ_PACKETS=<n>` changes the count).

use std::{
    collections::{BTreeMap, BTreeSet, VecDeque},
    fmt::Write as _,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    time::Instant,
};

use aya::{
    maps::{Map, MapData, PerCpuArray},
    programs::{TestRun as _, TestRunOptions},
};
use lb_common::{
    CNT_DROP_BAD_L4, CNT_DROP_SNAT_PORTS, CNT_PACKETS, CNT_PASS_BAD_L3, CNT_PASS_NOT_IP, CNT_REJECT_ICMP, CNT_REJECT_TCP,
    CNT_VERDICT_DNAT, CNT_VERDICT_DROP, CNT_VERDICT_PASS, CNT_VERDICT_REJECT, CNT_VERDICT_REVNAT, CT_DIR_FORWARD, CT_DIR_REPLY,
    CT_F_SNAT, CtValue, PROG_TC_EGRESS, PROG_TC_EXT, PROG_TC_POD, v4_mapped,
};
use lb_tests::{
    addresses::{CLIENT, EXT_CLIENT, HAIRPIN, LB_IP, NODE, POD1, POD2, POD3, REMOTE1, REMOTE2, ROUTER, SNAT_PORTS, VIP},
    packet::{
        PROTO_ICMP, PROTO_ICMPV6, PROTO_TCP, PROTO_UDP, TCP_SYN, checksum, fix_ipv4_header_checksum, icmp_error, ipv4_frame,
        ipv4_header, ipv6_frame, pseudo_header_sum, tcp_frame, tcp_segment, udp_datagram,
    },
    verdict::{TC_ACT_OK, TC_ACT_REDIRECT, TC_ACT_SHOT, XDP_DROP, XDP_PASS, XDP_TX},
};
use lb_userspace::{
    maps::sizes::MapSizes,
    model::{Cidr, DesiredState, EndpointSet, Frontend, FrontendKind, Protocol, Selection},
};

mod common;

use common::{conntrack_key, desired_state, endpoint, node_config, service_port};

/// Clients: pods of this node, hosts outside (inside and outside the source ranges).
const CLIENTS: [Ipv4Addr; 8] = [
    CLIENT,
    Ipv4Addr::new(10, 244, 0, 51),
    POD1,
    EXT_CLIENT,
    Ipv4Addr::new(192, 168, 77, 120),
    Ipv4Addr::new(10, 1, 2, 3),
    Ipv4Addr::new(172, 16, 0, 9),
    Ipv4Addr::new(203, 0, 113, 5),
];

/// Which program a run feeds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Prog {
    PodTc,
    ExtTc,
    Xdp,
    /// Replies only (point 63); never a DNAT or a reject.
    Egress,
}

impl Prog {
    fn valid(self, v: i32) -> bool {
        match self {
            Self::PodTc | Self::ExtTc | Self::Egress => [TC_ACT_OK, TC_ACT_SHOT, TC_ACT_REDIRECT].contains(&v),
            Self::Xdp => [XDP_DROP, XDP_PASS, XDP_TX].contains(&v),
        }
    }

    /// The return value each verdict counter goes with.
    fn expected(self, verdict: Verdict) -> i32 {
        match (self, verdict) {
            (Self::Xdp, Verdict::Drop) => XDP_DROP,
            (Self::Xdp, Verdict::Reject) => XDP_TX,
            (Self::Xdp, _) => XDP_PASS,
            (_, Verdict::Drop) => TC_ACT_SHOT,
            (_, Verdict::Reject) => TC_ACT_REDIRECT,
            (_, _) => TC_ACT_OK,
        }
    }

    fn external(self) -> bool {
        matches!(self, Self::ExtTc | Self::Xdp)
    }

    /// The verdicts a run of this program must reach (the generator covers them).
    fn reachable(self) -> &'static [Verdict] {
        match self {
            Self::Egress => &[Verdict::Pass, Verdict::Revnat, Verdict::Drop],
            _ => &[Verdict::Pass, Verdict::Dnat, Verdict::Revnat, Verdict::Drop, Verdict::Reject],
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Verdict {
    Pass,
    Dnat,
    Revnat,
    Drop,
    Reject,
}

const VERDICTS: [(Verdict, u32); 5] = [
    (Verdict::Pass, CNT_VERDICT_PASS),
    (Verdict::Dnat, CNT_VERDICT_DNAT),
    (Verdict::Revnat, CNT_VERDICT_REVNAT),
    (Verdict::Drop, CNT_VERDICT_DROP),
    (Verdict::Reject, CNT_VERDICT_REJECT),
];

// ---------------------------------------------------------------------------------------------
// Deterministic PRNG (splitmix64): no dependency, same sequence everywhere.
// ---------------------------------------------------------------------------------------------

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }

    fn range(&mut self, lo: usize, hi_inclusive: usize) -> usize {
        lo + self.below(hi_inclusive - lo + 1)
    }

    fn chance(&mut self, percent: usize) -> bool {
        self.below(100) < percent
    }

    fn pick<T: Copy>(&mut self, xs: &[T]) -> T {
        xs[self.below(xs.len())]
    }

    fn u8(&mut self) -> u8 {
        self.next() as u8
    }

    fn u16(&mut self) -> u16 {
        self.next() as u16
    }

    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.u8()).collect()
    }

    fn bytes_upto(&mut self, lo: usize, hi_inclusive: usize) -> Vec<u8> {
        let n = self.range(lo, hi_inclusive);
        self.bytes(n)
    }
}

// ---------------------------------------------------------------------------------------------
// The programmed state.
// ---------------------------------------------------------------------------------------------

/// One programmed frontend and what the oracle needs about its service.
#[derive(Clone, Debug)]
struct Fe {
    addr: Ipv4Addr,
    port: u16,
    proto: u8,
    /// Every endpoint of the service (any set): a DNAT must go to one of these.
    backends: BTreeSet<(Ipv4Addr, u16)>,
    /// The service has no endpoints at all: rejects are expected.
    empty: bool,
}

fn fe(addr: Ipv4Addr, port: u16, kind: FrontendKind) -> Frontend {
    Frontend { addr: IpAddr::V4(addr), port, kind }
}

/// The fuzzed cluster: every kind of frontend the datapath handles.
fn desired() -> DesiredState {
    use FrontendKind::{ClusterIp, LoadBalancer, NodePort};
    let ip = |d: u8| Ipv4Addr::new(10, 96, 0, d);
    let three = || vec![endpoint(POD1, 8080, true), endpoint(POD2, 8080, true), endpoint(POD3, 8080, true)];
    let mut d = desired_state([
        service_port("kubia", Protocol::Tcp, vec![fe(ip(10), 80, ClusterIp)], three(), Selection::Random),
        service_port(
            "dns",
            Protocol::Udp,
            vec![fe(ip(20), 53, ClusterIp)],
            vec![endpoint(POD1, 9000, true), endpoint(POD2, 9000, true)],
            Selection::Maglev,
        ),
        service_port("empty", Protocol::Tcp, vec![fe(ip(30), 80, ClusterIp)], vec![], Selection::Random),
        service_port("empty-dns", Protocol::Udp, vec![fe(ip(31), 53, ClusterIp)], vec![], Selection::Random),
        service_port(
            "web",
            Protocol::Tcp,
            vec![fe(ip(40), 80, ClusterIp), fe(NODE, 30080, NodePort)],
            vec![endpoint(REMOTE1, 8080, false), endpoint(REMOTE2, 8080, false)],
            Selection::Maglev,
        ),
        service_port(
            "web-udp",
            Protocol::Udp,
            vec![fe(ip(41), 53, ClusterIp), fe(NODE, 30053, NodePort)],
            vec![endpoint(REMOTE1, 9000, false), endpoint(POD2, 9000, true)],
            Selection::Random,
        ),
    ]);
    // A LoadBalancer with source ranges (point 48): only the LB IP is restricted.
    let (spn, mut sp) = service_port(
        "lb",
        Protocol::Tcp,
        vec![fe(ip(50), 443, ClusterIp), fe(NODE, 30443, NodePort), fe(LB_IP, 443, LoadBalancer)],
        vec![endpoint(POD1, 8443, true), endpoint(REMOTE1, 8443, false)],
        Selection::Random,
    );
    sp.source_ranges = vec![
        Cidr { addr: IpAddr::V4(Ipv4Addr::new(10, 0, 0, 0)), prefix: 8 },
        Cidr { addr: IpAddr::V4(Ipv4Addr::new(192, 168, 77, 0)), prefix: 26 },
    ];
    d.services.insert(spn, std::sync::Arc::new(sp));
    // ClientIP affinity, TCP and UDP on one address.
    for (proto, port, eps) in
        [(Protocol::Tcp, 80, three()), (Protocol::Udp, 53, vec![endpoint(POD1, 9000, true), endpoint(POD3, 9000, true)])]
    {
        let (spn, mut sp) = service_port("sticky", proto, vec![fe(ip(60), port, ClusterIp)], eps, Selection::Random);
        sp.affinity_timeout_s = Some(10_800);
        d.services.insert(spn, std::sync::Arc::new(sp));
    }
    // externalTrafficPolicy: Local without a local endpoint: external traffic is dropped, pods
    // of this node get the Cluster set (point 34).
    let (spn, mut sp) = service_port(
        "local",
        Protocol::Tcp,
        vec![fe(ip(70), 80, ClusterIp), fe(NODE, 30081, NodePort)],
        vec![endpoint(REMOTE2, 8080, false)],
        Selection::Maglev,
    );
    sp.external = EndpointSet { endpoints: Default::default(), drop_if_empty: true };
    sp.external_snat = false;
    d.services.insert(spn, std::sync::Arc::new(sp));
    d
}

/// The oracle's view of [`desired`].
fn frontends(d: &DesiredState) -> Vec<Fe> {
    let mut out = Vec::new();
    for (spn, sp) in &d.services {
        let mut backends = BTreeSet::new();
        for e in sp.internal.endpoints.iter().chain(sp.external.endpoints.iter()).chain(sp.cluster.iter()) {
            let IpAddr::V4(a) = e.addr else { unreachable!() };
            backends.insert((a, e.port));
        }
        for f in &sp.frontends {
            let IpAddr::V4(a) = f.addr else { unreachable!() };
            out.push(Fe {
                addr: a,
                port: f.port,
                proto: spn.protocol.number(),
                empty: backends.is_empty(),
                backends: backends.clone(),
            });
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// The loaded datapath.
// ---------------------------------------------------------------------------------------------

/// The fuzzed datapath: the shared fixture (the modelled node's config, [`desired`] programmed,
/// a conntrack large enough for every flow of a run) and handles on its counters and conntrack.
struct Datapath {
    loaded: common::Fixture,
    stats: PerCpuArray<MapData, u64>,
    conntrack: common::ConntrackPins,
}

impl Datapath {
    fn new(test: &str) -> Option<Self> {
        let mut loaded = common::Fixture::with_sizes(test, MapSizes { conntrack: 65_536, ..MapSizes::default() })?;
        loaded.dp.set_config(&node_config()).expect("node config");
        loaded.program(&desired());
        let pins = loaded.dp.pin_path().to_owned();
        let open = |name: &str| Map::from_map_data(MapData::from_pin(pins.join(name)).expect("pin")).expect("map");
        let stats = PerCpuArray::try_from(open(lb_common::STATS)).expect("stats map");
        let conntrack = common::ConntrackPins::open(&pins);
        Some(Self { loaded, stats, conntrack })
    }

    /// One BPF_PROG_TEST_RUN: `None` when the kernel refuses the input (e.g. EINVAL for a frame
    /// the skb builder cannot take), so the program did not run.
    fn run(&self, prog: Prog, frame: &[u8]) -> Option<(i32, Vec<u8>)> {
        let mut out = vec![0u8; frame.len() + 256];
        let opts = TestRunOptions { data_in: Some(frame), data_out: Some(&mut out), repeat: 1, ..TestRunOptions::default() };
        let dp = &self.loaded.dp;
        let res = match prog {
            Prog::PodTc => dp.classifier(PROG_TC_POD).expect("program").test_run(opts),
            Prog::ExtTc => dp.classifier(PROG_TC_EXT).expect("program").test_run(opts),
            Prog::Xdp => dp.xdp_program().expect("program").test_run(opts),
            Prog::Egress => dp.classifier(PROG_TC_EGRESS).expect("program").test_run(opts),
        }
        .ok()?;
        out.truncate(res.data_size_out as usize);
        Some((res.return_value as i32, out))
    }

    fn counter(&self, i: u32) -> u64 {
        self.stats.get(&i, 0).expect("counter").iter().sum()
    }

    fn counters(&self, idx: &[u32]) -> Vec<u64> {
        idx.iter().map(|i| self.counter(*i)).collect()
    }

    /// The entry whose translation reply `src → dst` takes: its client's one entry when that
    /// names `src` as the backend, else its reply entry; the other way round for a reply to the
    /// SNAT or hairpin address. (Two flows of one client port to two frontends that chose the
    /// same backend share their replies' 5-tuple: the first one's entry answers for both.)
    fn reply_entry(&self, src: (Ipv4Addr, u16), dst: (Ipv4Addr, u16), proto: u8) -> Option<CtValue> {
        let key = conntrack_key(src, dst, proto, CT_DIR_REPLY);
        let (own, one) = (self.conntrack.raw(&key), self.conntrack.view(&key));
        if dst.0 == NODE || dst.0 == HAIRPIN { own.or(one) } else { one.or(own) }
    }

    fn ct_entry(&self, src: (Ipv4Addr, u16), dst: (Ipv4Addr, u16), proto: u8, dir: u8) -> Option<CtValue> {
        self.conntrack.get(&conntrack_key(src, dst, proto, dir))
    }
}

// ---------------------------------------------------------------------------------------------
// The oracle's own parse (mirrors the documented parse policy, never panics).
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Debug)]
struct Model {
    ipv4: bool,
    src: Ipv4Addr,
    dst: Ipv4Addr,
    proto: u8,
    ihl: usize,
    tot_len: usize,
    frag_first: bool,
    frag_later: bool,
    l4_off: usize,
    /// Ports from a complete minimal TCP/UDP header in the packet.
    ports: Option<(u16, u16)>,
    l4_truncated: bool,
    tcp_flags: u8,
    /// An ICMP error quoting TCP/UDP: (quoted src, quoted dst, proto, quoted ip offset, quoted l4 offset).
    icmp: Option<(Ipv4Addr, u16, Ipv4Addr, u16, u8, usize, usize)>,
}

fn addr_at(b: &[u8], o: usize) -> Ipv4Addr {
    Ipv4Addr::new(b[o], b[o + 1], b[o + 2], b[o + 3])
}

fn be16(b: &[u8], o: usize) -> u16 {
    u16::from_be_bytes([b[o], b[o + 1]])
}

fn model(b: &[u8]) -> Model {
    let mut m = Model {
        ipv4: false,
        src: Ipv4Addr::UNSPECIFIED,
        dst: Ipv4Addr::UNSPECIFIED,
        proto: 0,
        ihl: 0,
        tot_len: 0,
        frag_first: false,
        frag_later: false,
        l4_off: 0,
        ports: None,
        l4_truncated: false,
        tcp_flags: 0,
        icmp: None,
    };
    if b.len() < 14 || be16(b, 12) != 0x0800 || b.len() < 34 {
        return m;
    }
    let ihl = usize::from(b[14] & 0x0f) * 4;
    let tot_len = usize::from(be16(b, 16));
    if b[14] >> 4 != 4 || ihl < 20 || tot_len < ihl || b.len() < 14 + ihl {
        return m;
    }
    m.ipv4 = true;
    m.src = addr_at(b, 26);
    m.dst = addr_at(b, 30);
    m.proto = b[23];
    m.ihl = ihl;
    m.tot_len = tot_len;
    let frag = be16(b, 20);
    m.frag_first = frag & 0x1fff == 0 && frag & 0x2000 != 0;
    m.frag_later = frag & 0x1fff != 0;
    m.l4_off = 14 + ihl;
    if m.frag_later {
        return m;
    }
    let l4 = m.l4_off;
    match m.proto {
        PROTO_TCP | PROTO_UDP => {
            let min = if m.proto == PROTO_TCP { 20 } else { 8 };
            if b.len() < l4 + min || tot_len < ihl + min {
                m.l4_truncated = true;
                return m;
            }
            m.ports = Some((be16(b, l4), be16(b, l4 + 2)));
            if m.proto == PROTO_TCP {
                m.tcp_flags = b[l4 + 13];
            }
        }
        PROTO_ICMP if !m.frag_first => {
            // type in {3, 11, 12}; quoted IPv4 header valid; TCP/UDP; 8 quoted bytes.
            if b.len() < l4 + 2 || ![3u8, 11, 12].contains(&b[l4]) {
                return m;
            }
            let il3 = l4 + 8;
            if b.len() < il3 + 20 {
                return m;
            }
            let iihl = usize::from(b[il3] & 0x0f) * 4;
            let iproto = b[il3 + 9];
            if b[il3] >> 4 != 4 || iihl < 20 || (iproto != PROTO_TCP && iproto != PROTO_UDP) {
                return m;
            }
            let il4 = il3 + iihl;
            if tot_len - ihl < 8 + iihl + 8 || b.len() < il4 + 8 {
                return m;
            }
            m.icmp = Some((addr_at(b, il3 + 12), be16(b, il4), addr_at(b, il3 + 16), be16(b, il4 + 2), iproto, il3, il4));
        }
        _ => {}
    }
    m
}

/// The destination of an IPv6 frame (a whole 40-byte header), if it is one.
fn ipv6_dst(b: &[u8]) -> Option<[u8; 16]> {
    (b.len() >= 54 && be16(b, 12) == 0x86dd && b[14] >> 4 == 6).then(|| b[38..54].try_into().unwrap())
}

fn ip_csum_ok(b: &[u8], m: &Model) -> bool {
    checksum(&b[14..14 + m.ihl], 0) == 0
}

/// Checksum state of the complete TCP/UDP segment of an unfragmented packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum L4Csum {
    NotApplicable,
    Valid,
    Invalid,
    /// UDP without checksum (0).
    None,
}

fn l4_csum(b: &[u8], m: &Model) -> L4Csum {
    if m.ports.is_none() || m.frag_first || m.frag_later || 14 + m.tot_len > b.len() {
        return L4Csum::NotApplicable;
    }
    let seg = &b[m.l4_off..14 + m.tot_len];
    if m.proto == PROTO_UDP && seg[6] == 0 && seg[7] == 0 {
        return L4Csum::None;
    }
    let pseudo = pseudo_header_sum(m.src.into(), m.dst.into(), m.proto, seg.len());
    if checksum(seg, pseudo) == 0 { L4Csum::Valid } else { L4Csum::Invalid }
}

fn icmp_csum_ok(b: &[u8], m: &Model) -> Option<bool> {
    (14 + m.tot_len <= b.len()).then(|| checksum(&b[m.l4_off..14 + m.tot_len], 0) == 0)
}

// ---------------------------------------------------------------------------------------------
// Packet generation.
// ---------------------------------------------------------------------------------------------

/// A flow the datapath translated: what replies and ICMP errors are made of.
#[derive(Clone, Copy, Debug)]
struct Seen {
    /// What the backend sees as the client (after SNAT, if any).
    client: (Ipv4Addr, u16),
    backend: (Ipv4Addr, u16),
    proto: u8,
    /// What the client sent: its own address and the frontend.
    orig_client: (Ipv4Addr, u16),
    frontend: (Ipv4Addr, u16),
}

struct Gen {
    rng: Rng,
    fes: Vec<Fe>,
    flows: VecDeque<Seen>,
    /// First fragments sent: (src, dst, id, proto).
    frags: VecDeque<(Ipv4Addr, Ipv4Addr, u16, u8)>,
}

impl Gen {
    fn addr(&mut self) -> Ipv4Addr {
        let r = self.rng.below(10);
        match r {
            0..=3 => self.rng.pick(&CLIENTS),
            4..=5 => self.rng.pick(&[POD1, POD2, POD3, REMOTE1, REMOTE2, NODE, LB_IP, HAIRPIN]),
            6 => self.fes[self.rng.below(self.fes.len())].addr,
            7 => Ipv4Addr::new(10, 96, 0, self.rng.u8()),
            _ => Ipv4Addr::from(self.rng.next() as u32),
        }
    }

    fn sport(&mut self) -> u16 {
        if self.rng.chance(70) { 40000 + self.rng.below(64) as u16 } else { self.rng.u16() }
    }

    fn tcp_flags(&mut self) -> u8 {
        match self.rng.below(8) {
            0 | 1 => 0x02,                                                   // SYN
            2 | 3 => 0x10,                                                   // ACK
            4 => 0x12,                                                       // SYN|ACK
            5 => 0x11,                                                       // FIN|ACK
            6 => self.rng.pick(&[0x04, 0x14, 0x00, 0xff, 0x03, 0x06, 0x29]), // RST, RST|ACK, none, all, SYN|FIN, SYN|RST, XMAS
            _ => self.rng.u8(),
        }
    }

    fn options(&mut self) -> Vec<u8> {
        match self.rng.below(4) {
            0 => vec![0x94, 0x04, 0, 0],             // router alert
            1 => vec![1; 4 * self.rng.range(1, 10)], // NOPs, up to the 40-byte maximum
            2 => {
                let n = 4 * self.rng.range(1, 10);
                self.rng.bytes(n)
            }
            _ => vec![0x07, 0x07, 0x04, 0, 0, 0, 0, 0], // record route
        }
    }

    /// A TCP or UDP L4 segment with a valid checksum for `src → dst`.
    fn segment(&mut self, src: impl Into<SocketAddr>, dst: impl Into<SocketAddr>, proto: u8) -> Vec<u8> {
        let n = self.rng.below(48);
        let payload = self.rng.bytes(n);
        if proto == PROTO_TCP {
            let flags = self.tcp_flags();
            tcp_segment(src, dst, self.rng.next() as u32, self.rng.next() as u32, flags, &payload)
        } else {
            let mut d = udp_datagram(src, dst, &payload);
            if self.rng.chance(5) {
                d[6] = 0;
                d[7] = 0;
            }
            d
        }
    }

    /// A well-formed packet to a frontend (or near one).
    fn service_frame(&mut self) -> Vec<u8> {
        let f = self.fes[self.rng.below(self.fes.len())].clone();
        let proto = if self.rng.chance(90) { f.proto } else { self.rng.pick(&[PROTO_TCP, PROTO_UDP]) };
        let port = if self.rng.chance(92) { f.port } else { self.rng.u16() };
        let src = (self.rng.pick(&CLIENTS), self.sport());
        let seg = self.segment(src, (f.addr, port), proto);
        let opts = if self.rng.chance(10) { self.options() } else { Vec::new() };
        let mut frag = if self.rng.chance(50) { 0x4000 } else { 0 }; // DF
        let id = self.rng.u16();
        if self.rng.chance(5) {
            frag = 0x2000;
            self.frags.push_back((src.0, f.addr, id, proto));
            if self.frags.len() > 64 {
                self.frags.pop_front();
            }
        }
        ipv4_frame(src.0, f.addr, proto, id, frag, &opts, &seg)
    }

    /// A reply of a translated flow (or something that looks like one).
    fn reply(&mut self) -> Vec<u8> {
        let (from, to, proto) = match self.flows.get(self.rng.below(self.flows.len().max(1))).copied() {
            Some(s) if self.rng.chance(85) => (s.backend, s.client, s.proto),
            _ => {
                let be = self.rng.pick(&[(POD1, 8080), (POD2, 9000), (REMOTE1, 8080), (REMOTE1, 8443)]);
                (be, (self.rng.pick(&CLIENTS), self.sport()), self.rng.pick(&[PROTO_TCP, PROTO_UDP]))
            }
        };
        let seg = self.segment(from, to, proto);
        let opts = if self.rng.chance(10) { self.options() } else { Vec::new() };
        ipv4_frame(from.0, to.0, proto, self.rng.u16(), 0, &opts, &seg)
    }

    /// An ICMP error quoting a translated flow's packet to its backend.
    fn icmp_error(&mut self) -> Vec<u8> {
        let s = match self.flows.get(self.rng.below(self.flows.len().max(1))).copied() {
            Some(s) => s,
            None => Seen {
                client: (CLIENTS[0], 40000),
                backend: (POD1, 8080),
                proto: PROTO_TCP,
                orig_client: (CLIENTS[0], 40000),
                frontend: (VIP, 80),
            },
        };
        // Either about a packet the backend received (from the backend or a router, to the
        // client), or about a reply the client received (from the client, to the frontend).
        let about_reply = self.rng.chance(30);
        let (qsrc, qdst) = if about_reply { (s.frontend, s.orig_client) } else { (s.client, s.backend) };
        // The quoted header carries options sometimes (the parser finds the ports through IHL).
        let qopts = if self.rng.chance(10) { self.options() } else { Vec::new() };
        let mut quoted = ipv4_header(qsrc.0, qdst.0, s.proto, 1500, self.rng.u16(), 0x4000, &qopts);
        quoted.extend_from_slice(&qsrc.1.to_be_bytes());
        quoted.extend_from_slice(&qdst.1.to_be_bytes());
        quoted.extend_from_slice(&self.rng.bytes(4));
        let (ty, code) = self.rng.pick(&[(3u8, 4u8), (3, 1), (11, 0), (12, 0), (3, 3)]);
        let (from, to) = if about_reply {
            (if self.rng.chance(50) { s.orig_client.0 } else { ROUTER }, s.frontend.0)
        } else {
            (if self.rng.chance(50) { s.backend.0 } else { ROUTER }, s.client.0)
        };
        let msg = icmp_error(from.into(), to.into(), ty, code, [0, 0, 0x05, 0x78], &quoted);
        let opts = if self.rng.chance(10) { self.options() } else { Vec::new() };
        ipv4_frame(from, to, PROTO_ICMP, self.rng.u16(), 0, &opts, &msg)
    }

    /// A later fragment of a first fragment sent before, or an orphan.
    fn later_fragment(&mut self) -> Vec<u8> {
        let (src, dst, id, proto) = match self.frags.get(self.rng.below(self.frags.len().max(1))).copied() {
            Some(f) if self.rng.chance(80) => f,
            _ => (self.rng.pick(&CLIENTS), self.addr(), self.rng.u16(), self.rng.pick(&[PROTO_TCP, PROTO_UDP, PROTO_ICMP])),
        };
        let off = self.rng.range(1, 0x1fff) as u16;
        let more = if self.rng.chance(50) { 0x2000 } else { 0 };
        let n = 8 * self.rng.range(1, 8);
        let body = self.rng.bytes(n);
        ipv4_frame(src, dst, proto, id, off | more, &[], &body)
    }

    /// Traffic between addresses the datapath has no business with.
    fn other(&mut self) -> Vec<u8> {
        let (src, dst) = ((self.addr(), self.sport()), (self.addr(), self.rng.u16()));
        let any = self.rng.u8();
        let proto = self.rng.pick(&[PROTO_TCP, PROTO_UDP, PROTO_ICMP, 132, 47, any]);
        let l4 = match proto {
            PROTO_TCP | PROTO_UDP => self.segment(src, dst, proto),
            PROTO_ICMP => {
                let mut m = vec![8, 0, 0, 0, 0, 1, 0, 1]; // echo request
                m.extend(self.rng.bytes(16));
                let c = checksum(&m, 0);
                m[2..4].copy_from_slice(&c.to_be_bytes());
                m
            }
            _ => self.rng.bytes_upto(0, 63),
        };
        ipv4_frame(src.0, dst.0, proto, self.rng.u16(), 0, &[], &l4)
    }

    fn ipv6(&mut self) -> Vec<u8> {
        if self.rng.chance(50) {
            // A complete TCP/UDP segment (its checksum valid, or UDP's "none"), to an IPv4
            // frontend's address in IPv4-mapped form (never valid on the wire) or to an IPv6
            // address no service has.
            let fe = self.fes[self.rng.below(self.fes.len())].clone();
            let dst = if self.rng.chance(70) {
                fe.addr.to_ipv6_mapped()
            } else {
                Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, self.rng.u8().into())
            };
            let src = if self.rng.chance(50) {
                self.rng.pick(&CLIENTS).to_ipv6_mapped()
            } else {
                Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 0x100 | u16::from(self.rng.u8()))
            };
            let proto = if self.rng.chance(80) { fe.proto } else { self.rng.pick(&[PROTO_TCP, PROTO_UDP]) };
            let sport = self.sport();
            let seg = self.segment((src, sport), (dst, fe.port), proto);
            return ipv6_frame(src, dst, proto, &[], &seg);
        }
        let payload_len = self.rng.below(64);
        let next = self.rng.pick(&[PROTO_TCP, PROTO_UDP, PROTO_ICMPV6]);
        // Sources and destinations include IPv4-mapped service addresses.
        let src = self.ipv6_address();
        let dst = self.ipv6_address();
        let payload = self.rng.bytes(payload_len);
        ipv6_frame(src, dst, next, &[], &payload)
    }

    /// A frontend's address in IPv4-mapped form, or random bytes.
    fn ipv6_address(&mut self) -> Ipv6Addr {
        if self.rng.chance(50) {
            self.fes[self.rng.below(self.fes.len())].addr.to_ipv6_mapped()
        } else {
            Ipv6Addr::from(<[u8; 16]>::try_from(self.rng.bytes(16)).expect("16 bytes"))
        }
    }

    fn vlan(&mut self) -> Vec<u8> {
        let mut f = self.service_frame();
        let tpid: u16 = self.rng.pick(&[0x8100, 0x88a8]);
        let mut tag = tpid.to_be_bytes().to_vec();
        tag.extend_from_slice(&(self.rng.u16() & 0x0fff).to_be_bytes());
        f.splice(12..12, tag);
        f
    }

    fn non_ip(&mut self) -> Vec<u8> {
        let mut f = vec![0xff; 6];
        f.extend_from_slice(&[0x02, 0, 0, 0, 0, 0x01]);
        let et: u16 = self.rng.pick(&[0x0806, 0x8035, 0x88cc, 0x0000, 0xffff, 0x0801, 0x0008]);
        f.extend_from_slice(&et.to_be_bytes());
        f.extend(self.rng.bytes_upto(0, 60));
        f
    }

    fn random_bytes(&mut self) -> Vec<u8> {
        let mut f = self.rng.bytes_upto(14, 300);
        if self.rng.chance(60) {
            f[12] = 0x08;
            f[13] = 0x00;
            if self.rng.chance(50) && f.len() > 14 {
                f[14] = 0x40 | (f[14] & 0x0f);
            }
        }
        f
    }

    /// Byte-level mutations of a valid frame.
    fn mutate(&mut self, mut f: Vec<u8>) -> Vec<u8> {
        for _ in 0..self.rng.range(1, 4) {
            let n = f.len();
            match self.rng.below(12) {
                0 => {
                    let i = self.rng.below(n);
                    f[i] ^= 1 << self.rng.below(8);
                }
                1 => {
                    let i = self.rng.below(n);
                    f[i] = self.rng.u8();
                }
                2 => f.truncate(self.rng.range(14, n.max(14))),
                3 => {
                    let extra = self.rng.bytes_upto(1, 40);
                    f.extend(extra);
                }
                4 if n > 14 => f[14] = (f[14] & 0xf0) | self.rng.below(16) as u8, // IHL
                5 if n > 14 => f[14] = (self.rng.below(16) as u8) << 4 | (f[14] & 0x0f), // version
                6 if n > 17 => {
                    let any = self.rng.u16();
                    let v = self.rng.pick(&[0u16, 1, 19, 20, 21, 27, 28, 39, 40, (n - 14) as u16, (n - 15) as u16, 0xffff, any]);
                    f[16..18].copy_from_slice(&v.to_be_bytes());
                }
                7 if n > 21 => {
                    let any = self.rng.u16();
                    let v = self.rng.pick(&[0x2000u16, 0x2001, 0x0001, 0x1fff, 0x3fff, 0x4000, 0x8000, any]);
                    f[20..22].copy_from_slice(&v.to_be_bytes());
                }
                8 if n > 23 => f[23] = self.rng.pick(&[PROTO_TCP, PROTO_UDP, PROTO_ICMP, 132, 0, 255]),
                // A byte inside the L4 header (ports, flags, data offset, lengths).
                9 if n > 34 => {
                    let i = self.rng.range(34, n - 1);
                    f[i] = self.rng.u8();
                }
                10 if n > 38 => {
                    // Destination port to another frontend's.
                    let p = self.fes[self.rng.below(self.fes.len())].port;
                    let l4 = 14 + usize::from(f[14] & 0x0f) * 4;
                    if l4 + 4 <= n {
                        f[l4 + 2..l4 + 4].copy_from_slice(&p.to_be_bytes());
                    }
                }
                _ => {}
            }
        }
        // Mostly keep the IPv4 header checksum right, so the mutation tests what follows it.
        if self.rng.chance(70) && f.len() >= 34 && f[12..14] == [0x08, 0x00] {
            let ihl = usize::from(f[14] & 0x0f) * 4;
            if ihl >= 20 && f.len() >= 14 + ihl {
                fix_ipv4_header_checksum(&mut f);
            }
        }
        f
    }

    fn frame(&mut self) -> Vec<u8> {
        match self.rng.below(100) {
            0..=29 => self.service_frame(),
            30..=44 => self.reply(),
            45..=49 => self.icmp_error(),
            50..=54 => self.later_fragment(),
            55..=61 => self.other(),
            62..=64 => self.ipv6(),
            65..=67 => self.vlan(),
            68..=70 => self.non_ip(),
            71..=75 => self.random_bytes(),
            76..=89 => {
                let f = self.service_frame();
                self.mutate(f)
            }
            _ => {
                let f = if self.rng.chance(50) { self.reply() } else { self.icmp_error() };
                self.mutate(f)
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The oracle.
// ---------------------------------------------------------------------------------------------

#[derive(Default)]
struct Books {
    runs: u64,
    refused: u64,
    by_verdict: BTreeMap<Verdict, u64>,
    /// RSTs to a service without endpoints that were answered (must be 0: RFC 793).
    rst_answered: u64,
    /// IPv6 packets to an IPv4 service address in IPv4-mapped form, by verdict.
    cross_family: BTreeMap<Verdict, u64>,
    failures: Vec<String>,
    failed: u64,
}

fn hex(b: &[u8]) -> String {
    b.iter().fold(String::new(), |mut s, x| {
        let _ = write!(s, "{x:02x}");
        s
    })
}

/// Byte positions a NAT of a packet described by `m` may change.
fn nat_may_change(m: &Model, i: usize) -> bool {
    let ip = 14;
    if (ip + 10..ip + 20).contains(&i) {
        return true; // IPv4 checksum, source, destination
    }
    if m.ports.is_some() {
        let l4 = m.l4_off;
        let csum = l4 + if m.proto == PROTO_TCP { 16 } else { 6 };
        return (l4..l4 + 4).contains(&i) || (csum..csum + 2).contains(&i);
    }
    false
}

fn icmp_may_change(m: &Model, i: usize) -> bool {
    let Some((.., il3, il4)) = m.icmp else { return false };
    (24..34).contains(&i)
        || (m.l4_off + 2..m.l4_off + 4).contains(&i)
        || (il3 + 10..il3 + 20).contains(&i)
        || (il4..il4 + 4).contains(&i)
        || (il4 + 6..il4 + 8).contains(&i)
}

fn only_allowed_changes(inp: &[u8], out: &[u8], allowed: impl Fn(usize) -> bool) -> Result<(), String> {
    if inp.len() != out.len() {
        return Err(format!("length changed {} -> {}", inp.len(), out.len()));
    }
    match (0..inp.len()).find(|&i| inp[i] != out[i] && !allowed(i)) {
        Some(i) => Err(format!("byte {i} changed ({:02x} -> {:02x}) outside addresses, ports and checksums", inp[i], out[i])),
        None => Ok(()),
    }
}

struct Oracle<'a> {
    prog: Prog,
    fes: &'a [Fe],
    service_addrs: BTreeSet<Ipv4Addr>,
}

impl Oracle<'_> {
    fn frontend(&self, addr: Ipv4Addr, port: u16, proto: u8) -> Option<&Fe> {
        self.fes.iter().find(|f| f.addr == addr && f.port == port && f.proto == proto)
    }

    /// Checks one run; `Err` describes the violation.
    #[allow(clippy::too_many_arguments, reason = "one run: its fixture, frames, verdict and books")]
    fn check(
        &self,
        f: &Datapath,
        inp: &[u8],
        verdict: Verdict,
        rv: i32,
        out: &[u8],
        books: &mut Books,
        feed: &mut Gen,
    ) -> Result<(), String> {
        if !self.prog.valid(rv) {
            return Err(format!("invalid verdict {rv}"));
        }
        if rv != self.prog.expected(verdict) {
            return Err(format!("return value {rv} does not match the verdict counter {verdict:?}"));
        }
        let m = model(inp);
        if let Some(dst) = ipv6_dst(inp) {
            // IPv6: the services are IPv4 only. An IPv6 address that is not an IPv4-mapped
            // service address is no service's: passed untouched (or reverse-translated).
            let mapped = dst[..12] == v4_mapped([0; 4])[..12]
                && self.service_addrs.contains(&Ipv4Addr::new(dst[12], dst[13], dst[14], dst[15]));
            if mapped {
                // Never valid on the wire: passed untouched, never taken for the IPv4 service.
                *books.cross_family.entry(verdict).or_default() += 1;
                return match verdict {
                    Verdict::Pass if out == inp => Ok(()),
                    other => Err(format!("IPv6 packet to IPv4-mapped service address {dst:02x?} ended in {other:?}")),
                };
            }
            return match verdict {
                Verdict::Pass if out == inp => Ok(()),
                Verdict::Pass => Err("a passed IPv6 packet was modified".into()),
                Verdict::Revnat => Ok(()),
                other => Err(format!("IPv6 traffic to {dst:02x?}, no service's address, ended in {other:?}")),
            };
        }
        let to_service_addr = m.ipv4 && self.service_addrs.contains(&m.dst);
        let to_frontend = m.ports.and_then(|(_, dp)| self.frontend(m.dst, dp, m.proto));
        if self.prog == Prog::Egress && matches!(verdict, Verdict::Dnat | Verdict::Reject) {
            return Err(format!("the egress program ended a packet in {verdict:?}: it only translates replies"));
        }
        match verdict {
            Verdict::Pass => {
                if out != inp {
                    return Err("a passed packet was modified".into());
                }
                // Egress never looks up frontends: the ingress hooks translate those.
                if let Some(fe) = to_frontend.filter(|_| self.prog != Prog::Egress) {
                    return Err(format!("a complete {} packet to frontend {}:{} left untranslated", m.proto, fe.addr, fe.port));
                }
            }
            Verdict::Drop => {
                if !to_service_addr {
                    return Err("traffic not addressed to a service address was dropped".into());
                }
                if to_frontend.is_none() && !m.l4_truncated && !m.frag_later && !m.frag_first && m.icmp.is_none() {
                    // A complete packet to a service address on a port that is no frontend's.
                    if m.ports.is_some() {
                        return Err("a complete packet to a service address but no frontend was dropped".into());
                    }
                }
            }
            Verdict::Reject => {
                let Some(fe) = to_frontend else {
                    return Err("rejected a packet that is not to a frontend".into());
                };
                if !fe.empty {
                    return Err(format!("rejected a packet to {}:{}, which has endpoints", fe.addr, fe.port));
                }
                if m.proto == PROTO_TCP && m.tcp_flags & 0x04 != 0 {
                    books.rst_answered += 1;
                    return Err("a RST was answered with a RST (RFC 793: never)".into());
                }
                check_reject(inp, out, &m)?;
            }
            Verdict::Dnat => {
                if !to_service_addr {
                    return Err("DNAT of traffic not addressed to a service address".into());
                }
                only_allowed_changes(inp, out, |i| nat_may_change(&m, i))?;
                let om = model(out);
                if ip_csum_ok(inp, &m) && !ip_csum_ok(out, &om) {
                    return Err("IPv4 checksum broken by DNAT".into());
                }
                let (before, after) = (l4_csum(inp, &m), l4_csum(out, &om));
                if before != L4Csum::NotApplicable && before != L4Csum::Invalid && before != after {
                    return Err(format!("L4 checksum {before:?} before DNAT, {after:?} after"));
                }
                let backends: BTreeSet<(Ipv4Addr, u16)> = match to_frontend {
                    Some(fe) => fe.backends.clone(),
                    None => self
                        .fes
                        .iter()
                        .filter(|x| x.addr == m.dst && x.proto == m.proto)
                        .flat_map(|x| x.backends.iter().copied())
                        .collect(),
                };
                let dst_ok = match om.ports {
                    Some((_, dp)) if m.ports.is_some() => backends.contains(&(om.dst, dp)),
                    _ => backends.iter().any(|b| b.0 == om.dst),
                };
                if !dst_ok {
                    return Err(format!(
                        "DNAT to {}:{:?}, not a backend of the frontend {:?}",
                        om.dst,
                        om.ports.map(|p| p.1),
                        backends
                    ));
                }
                if om.src != m.src {
                    let ok = if self.prog.external() {
                        om.src == NODE && om.ports.is_none_or(|(sp, _)| SNAT_PORTS.contains(&sp))
                    } else {
                        // Hairpin (point 51): the client's port is kept when free, else one
                        // from the SNAT range (two frontends of one backend, same client port).
                        om.src == HAIRPIN
                            && om.dst == m.src
                            && (om.ports.map(|p| p.0) == m.ports.map(|p| p.0)
                                || om.ports.is_some_and(|(sp, _)| SNAT_PORTS.contains(&sp)))
                    };
                    if !ok {
                        return Err(format!("DNAT rewrote the source {} -> {} unexpectedly", m.src, om.src));
                    }
                } else if m.ports.is_some() && om.ports.map(|p| p.0) != m.ports.map(|p| p.0) {
                    return Err("DNAT changed the source port without SNAT".into());
                }
                if let (Some((sp, _)), Some((osp, odp))) = (m.ports, om.ports)
                    && !m.frag_first
                {
                    feed.flows.push_back(Seen {
                        client: (om.src, osp),
                        backend: (om.dst, odp),
                        proto: m.proto,
                        orig_client: (m.src, sp),
                        frontend: (m.dst, m.ports.map_or(0, |p| p.1)),
                    });
                    if feed.flows.len() > 256 {
                        feed.flows.pop_front();
                    }
                }
            }
            Verdict::Revnat => {
                if let Some((isrc, isp, idst, idp, iproto, ..)) = m.icmp {
                    // An ICMP error about a translated flow: the quoted packet went isrc → idst,
                    // either client → backend (the flow's reply entry is the quote reversed) or
                    // frontend → client (its forward entry is the quote reversed).
                    if f.ct_entry((idst, idp), (isrc, isp), iproto, CT_DIR_REPLY).is_none()
                        && f.ct_entry((idst, idp), (isrc, isp), iproto, CT_DIR_FORWARD).is_none()
                    {
                        return Err("ICMP error translated without a conntrack entry for the quoted flow".into());
                    }
                    only_allowed_changes(inp, out, |i| icmp_may_change(&m, i))?;
                    let om = model(out);
                    if ip_csum_ok(inp, &m) && !ip_csum_ok(out, &om) {
                        return Err("outer IPv4 checksum broken by the ICMP translation".into());
                    }
                    if icmp_csum_ok(inp, &m) == Some(true) && icmp_csum_ok(out, &om) != Some(true) {
                        return Err("ICMP checksum broken by the ICMP translation".into());
                    }
                    let il3 = m.icmp.map(|x| x.5).unwrap_or_default();
                    let iihl = usize::from(inp[il3] & 0x0f) * 4;
                    if checksum(&inp[il3..il3 + iihl], 0) == 0 && checksum(&out[il3..il3 + iihl], 0) != 0 {
                        return Err("quoted IPv4 checksum broken by the ICMP translation".into());
                    }
                    return Ok(());
                }
                only_allowed_changes(inp, out, |i| nat_may_change(&m, i))?;
                let om = model(out);
                if ip_csum_ok(inp, &m) && !ip_csum_ok(out, &om) {
                    return Err("IPv4 checksum broken by reverse NAT".into());
                }
                let (before, after) = (l4_csum(inp, &m), l4_csum(out, &om));
                if before != L4Csum::NotApplicable && before != L4Csum::Invalid && before != after {
                    return Err(format!("L4 checksum {before:?} before reverse NAT, {after:?} after"));
                }
                match m.ports {
                    Some((sp, dp)) => {
                        let Some(ct) = f.reply_entry((m.src, sp), (m.dst, dp), m.proto) else {
                            return Err("reverse NAT without a conntrack reply entry".into());
                        };
                        let nat =
                            (Ipv4Addr::from(<[u8; 4]>::try_from(&ct.nat_addr[12..]).unwrap()), u16::from_be(ct.nat_port_be));
                        let (osp, odp) = om.ports.unwrap_or_default();
                        if (om.src, osp) != nat {
                            return Err(format!("reverse NAT wrote source {}:{osp}, the entry says {nat:?}", om.src));
                        }
                        let want_dst = if ct.flags & CT_F_SNAT != 0 {
                            (Ipv4Addr::from(<[u8; 4]>::try_from(&ct.snat_addr[12..]).unwrap()), u16::from_be(ct.snat_port_be))
                        } else {
                            (m.dst, dp)
                        };
                        if (om.dst, odp) != want_dst {
                            return Err(format!("reverse NAT wrote destination {}:{odp}, expected {want_dst:?}", om.dst));
                        }
                    }
                    None => {
                        if !self.fes.iter().any(|x| x.addr == om.src) {
                            return Err(format!("reverse NAT of a fragment to source {}, not a frontend", om.src));
                        }
                    }
                }
            }
        }
        Ok(())
    }
}

fn check_reject(inp: &[u8], out: &[u8], m: &Model) -> Result<(), String> {
    let om = model(out);
    if !om.ipv4 || om.src != m.dst || om.dst != m.src || !ip_csum_ok(out, &om) {
        return Err(format!("malformed reject {}", hex(out)));
    }
    if out[0..6] != inp[6..12] || out[6..12] != inp[0..6] {
        return Err("reject not sent back to the sender's MAC".into());
    }
    let (sp, dp) = m.ports.unwrap_or_default();
    if m.proto == PROTO_TCP {
        if out.len() != 54 || om.proto != PROTO_TCP || om.ports != Some((dp, sp)) || out[14 + 20 + 13] & 0x04 == 0 {
            return Err(format!("malformed RST {}", hex(out)));
        }
        if l4_csum(out, &om) != L4Csum::Valid {
            return Err("RST with a wrong TCP checksum".into());
        }
    } else {
        if out.len() != 70 || om.proto != PROTO_ICMP || out[34] != 3 || out[35] != 3 || out[42..70] != inp[14..42] {
            return Err(format!("malformed ICMP port unreachable {}", hex(out)));
        }
        if icmp_csum_ok(out, &om) != Some(true) {
            return Err("ICMP port unreachable with a wrong checksum".into());
        }
    }
    Ok(())
}

/// The base seed (`LB_FUZZ_SEED`, decimal or 0x-hex); each program mixes in its own number.
fn base_seed() -> u64 {
    let base = std::env::var("LB_FUZZ_SEED")
        .ok()
        .and_then(|s| s.strip_prefix("0x").map_or_else(|| s.parse().ok(), |h| u64::from_str_radix(h, 16).ok()));
    base.unwrap_or(0x1b_f022_2024)
}

fn packets() -> u64 {
    std::env::var("LB_FUZZ_PACKETS").ok().and_then(|s| s.parse().ok()).unwrap_or(100_000)
}

const COUNTED: [u32; 6] =
    [CNT_PACKETS, CNT_VERDICT_PASS, CNT_VERDICT_DNAT, CNT_VERDICT_REVNAT, CNT_VERDICT_DROP, CNT_VERDICT_REJECT];

fn fuzz(test: &str, prog: Prog) {
    let Some(f) = Datapath::new(test) else { return };
    let base = base_seed();
    let seed = base ^ (prog as u64) << 56;
    let n = packets();
    eprintln!("{test}: seed {base:#x} (LB_FUZZ_SEED={base:#x} reproduces this run), {n} packets");
    let d = desired();
    let fes = frontends(&d);
    let oracle = Oracle { prog, fes: &fes, service_addrs: fes.iter().map(|x| x.addr).collect() };
    let mut feed = Gen { rng: Rng(seed), fes: fes.clone(), flows: VecDeque::new(), frags: VecDeque::new() };
    let mut books = Books::default();
    // The egress program translates replies of flows the ingress hooks created: create some
    // through the pod program first (checked by its own oracle), then count from there.
    let baseline: Vec<u64> = if prog == Prog::Egress {
        let pod = Oracle { prog: Prog::PodTc, fes: &fes, service_addrs: oracle.service_addrs.clone() };
        let mut pod_books = Books::default();
        for _ in 0..2000 {
            let frame = feed.frame();
            let before = f.counter(CNT_VERDICT_DNAT);
            if let Some((rv, out)) = f.run(Prog::PodTc, &frame)
                && f.counter(CNT_VERDICT_DNAT) > before
            {
                // The pod oracle checks the DNAT and records the flow for the generator's replies.
                if let Err(why) = pod.check(&f, &frame, Verdict::Dnat, rv, &out, &mut pod_books, &mut feed) {
                    panic!("pod program while creating flows: {why}");
                }
            }
        }
        assert!(!feed.flows.is_empty(), "the pod program created no flow for the egress program to answer");
        (0..lb_common::CNT_MAX).map(|k| f.counter(k)).collect()
    } else {
        vec![0; lb_common::CNT_MAX as usize]
    };
    let started = Instant::now();
    let mut before = f.counters(&COUNTED);
    let mut i = 0u64;
    while books.runs < n {
        i += 1;
        let frame = feed.frame();
        let Some((rv, out)) = f.run(prog, &frame) else {
            books.refused += 1;
            assert!(books.refused < n, "the kernel refuses almost every frame");
            continue;
        };
        books.runs += 1;
        let after = f.counters(&COUNTED);
        let delta: Vec<u64> = after.iter().zip(&before).map(|(a, b)| a - b).collect();
        before = after;
        let moved: Vec<Verdict> = VERDICTS.iter().enumerate().filter(|(k, _)| delta[k + 1] > 0).map(|(_, (v, _))| *v).collect();
        let result = if delta[0] != 1 || delta[1..].iter().sum::<u64>() != 1 || moved.len() != 1 {
            Err(format!("counters moved by {delta:?} (packets, pass, dnat, revnat, drop, reject): not exactly one verdict"))
        } else {
            *books.by_verdict.entry(moved[0]).or_default() += 1;
            oracle.check(&f, &frame, moved[0], rv, &out, &mut books, &mut feed)
        };
        if let Err(why) = result {
            books.failed += 1;
            if books.failures.len() < 10 {
                books.failures.push(format!("frame #{i} (verdict {rv}): {why}\n   in:  {}\n   out: {}", hex(&frame), hex(&out)));
            }
        }
    }
    let elapsed = started.elapsed();
    // The books: every packet ends in exactly one verdict; reasons add up.
    let all: Vec<u64> = (0..lb_common::CNT_MAX).map(|k| f.counter(k) - baseline[k as usize]).collect();
    let verdicts: u64 = VERDICTS.iter().map(|(_, k)| all[*k as usize]).sum();
    let drop_reasons: u64 = (CNT_DROP_BAD_L4..=CNT_DROP_SNAT_PORTS).map(|k| all[k as usize]).sum();
    let by: Vec<String> = VERDICTS.iter().map(|(v, k)| format!("{v:?}={}", all[*k as usize])).collect();
    eprintln!(
        "{test}: {} packets run ({} refused by BPF_PROG_TEST_RUN) in {:.1} s: {}; pass_not_ip={} pass_bad_l3={} drop reasons={} rejects tcp={} icmp={}; RSTs answered={}; IPv6 to IPv4-mapped service addresses: {:?}; failures={}",
        books.runs,
        books.refused,
        elapsed.as_secs_f64(),
        by.join(" "),
        all[CNT_PASS_NOT_IP as usize],
        all[CNT_PASS_BAD_L3 as usize],
        drop_reasons,
        all[CNT_REJECT_TCP as usize],
        all[CNT_REJECT_ICMP as usize],
        books.rst_answered,
        books.cross_family,
        books.failed
    );
    assert!(
        books.failures.is_empty(),
        "{} of {} fuzzed frames violated the oracle (LB_FUZZ_SEED={base:#x}); first ones:\n{}",
        books.failed,
        books.runs,
        books.failures.join("\n")
    );
    assert_eq!(all[CNT_PACKETS as usize], books.runs, "packets counted = programs run");
    assert_eq!(verdicts, books.runs, "verdict_pass + verdict_dnat + verdict_revnat + verdict_drop + verdict_reject = packets");
    assert_eq!(drop_reasons, all[CNT_VERDICT_DROP as usize], "every drop counts exactly one reason");
    assert_eq!(all[CNT_REJECT_TCP as usize] + all[CNT_REJECT_ICMP as usize], all[CNT_VERDICT_REJECT as usize]);
    assert!(all[CNT_PASS_NOT_IP as usize] + all[CNT_PASS_BAD_L3 as usize] <= all[CNT_VERDICT_PASS as usize]);
    // The fuzz reached every verdict (a generator that stopped producing a kind would hide it).
    for (v, k) in VERDICTS.iter().filter(|(v, _)| prog.reachable().contains(v)) {
        assert!(all[*k as usize] > 0, "no packet ended in {v:?}: the generator no longer covers it");
    }
}

#[test]
fn fuzz_pod_tc_program_100k_packets() {
    fuzz("fuzz_pod_tc_program_100k_packets", Prog::PodTc);
}

#[test]
fn fuzz_external_tc_fallback_100k_packets() {
    fuzz("fuzz_external_tc_fallback_100k_packets", Prog::ExtTc);
}

#[test]
fn fuzz_xdp_program_100k_packets() {
    fuzz("fuzz_xdp_program_100k_packets", Prog::Xdp);
}

#[test]
fn fuzz_egress_program_100k_packets() {
    fuzz("fuzz_egress_program_100k_packets", Prog::Egress);
}

/// IPv4-mapped addresses (`::ffff:a.b.c.d`) are the maps' internal spelling of IPv4 and never
/// valid on an IPv6 wire (RFC 4291 §2.5.5.2; Linux drops IPv6 packets with such a source). An
/// IPv6 packet to `::ffff:<ClusterIP>` must not be taken for the IPv4 Service.
#[test]
fn ipv6_packets_to_ipv4_mapped_service_addresses_are_not_translated() {
    let Some(f) = Datapath::new("ipv6_packets_to_ipv4_mapped_service_addresses_are_not_translated") else { return };
    let client = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 0x105);
    for (dst, port) in [(VIP, 80), (Ipv4Addr::new(10, 96, 0, 30), 80)] {
        let frame = tcp_frame((client, 40000), (dst.to_ipv6_mapped(), port), 1, 0, TCP_SYN);
        for prog in [Prog::PodTc, Prog::ExtTc, Prog::Xdp, Prog::Egress] {
            let (rv, out) = f.run(prog, &frame).expect("test run");
            assert!(
                rv == TC_ACT_OK || rv == XDP_PASS && prog == Prog::Xdp,
                "{prog:?}: IPv6 SYN to [::ffff:{dst}]:{port} got verdict {rv}"
            );
            assert_eq!(out, frame, "{prog:?}: IPv6 SYN to [::ffff:{dst}]:{port} was rewritten to {}", hex(&out));
        }
    }
}
