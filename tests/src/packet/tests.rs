use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use super::*;

/// A client and a Service of each family.
fn endpoints() -> [(SocketAddr, SocketAddr); 2] {
    [
        ((Ipv4Addr::new(10, 0, 0, 1), 1234).into(), (Ipv4Addr::new(10, 96, 0, 10), 80).into()),
        (
            (Ipv6Addr::new(0xfd00, 0x244, 0, 0, 0, 0, 0, 0x50), 1234).into(),
            (Ipv6Addr::new(0xfd00, 0x96, 0, 0, 0, 0, 0, 0x10), 80).into(),
        ),
    ]
}

fn header_len(ip: IpAddr) -> usize {
    if ip.is_ipv4() { IPV4_HEADER_LEN } else { IPV6_HEADER_LEN }
}

#[test]
fn tcp_and_udp_frames_round_trip_with_valid_checksums() {
    for (a, b) in endpoints() {
        let f = tcp_frame(a, b, 0xdead_beef, 7, TCP_SYN);
        verify_checksums(&f).unwrap();
        let t = parse_tcp(&f);
        assert_eq!((t.sport, t.dport, t.seq, t.ack, t.flags, t.header_len), (1234, 80, 0xdead_beef, 7, TCP_SYN, 20));
        let h = parse_ip_header(&f);
        let version = if a.is_ipv4() { 4 } else { 6 };
        let ip_len = header_len(a.ip());
        assert_eq!((h.version, h.src, h.dst, h.next_header, h.proto), (version, a.ip(), b.ip(), PROTO_TCP, PROTO_TCP));
        assert_eq!((h.header_len, h.total_len, h.ttl, h.fragment), (ip_len, ip_len + 20, 64, None));
        assert_eq!(parse_flow(&f), Flow { src: a, dst: b, proto: PROTO_TCP });
        assert_eq!(parse_l4_bytes(&f), &tcp_segment(a, b, 0xdead_beef, 7, TCP_SYN, &[])[..]);

        let u = udp_frame(a, b, b"hello");
        verify_checksums(&u).unwrap();
        assert_eq!(parse_flow(&u), Flow { src: a, dst: b, proto: PROTO_UDP });
        verify_udp_datagram(a.ip(), b.ip(), &udp_datagram(a, b, &[9u8; 100])).unwrap();
    }
}

#[test]
fn a_corrupted_packet_fails_verification() {
    for (a, b) in endpoints() {
        let mut p = tcp_frame(a, b, 1, 0, TCP_SYN);
        let dst_last_byte = ETH_HEADER_LEN + if a.is_ipv4() { 19 } else { 39 };
        p[dst_last_byte] ^= 1; // the destination address, checksums not fixed
        assert!(verify_checksums(&p).is_err(), "{a} → {b}");
    }
}

#[test]
fn a_udp_checksum_of_zero_is_none_in_ipv4_and_wrong_in_ipv6() {
    let [(a4, b4), (a6, b6)] = endpoints();
    verify_checksums(&udp_frame_without_checksum(a4, b4, b"q")).expect("IPv4: no checksum");
    assert!(verify_checksums(&udp_frame_without_checksum(a6, b6, b"q")).is_err(), "IPv6: a zero UDP checksum is invalid");
}

#[test]
fn fragments_round_trip() {
    for (a, b) in endpoints() {
        let d = udp_datagram(a, b, &[9u8; 100]);
        let first = fragment_frame(a.ip(), b.ip(), PROTO_UDP, 77, 0, true, &d[..64]);
        let later = fragment_frame(a.ip(), b.ip(), PROTO_UDP, 77, 64, false, &d[64..]);
        for (f, offset, more, data) in [(&first, 0, true, &d[..64]), (&later, 64, false, &d[64..])] {
            verify_ip_header_checksum(f).unwrap();
            assert!(verify_checksums(f).is_err(), "a fragment cannot be verified alone");
            let h = parse_ip_header(f);
            assert_eq!((h.proto, h.fragment), (PROTO_UDP, Some(Fragment { id: 77, offset, more })));
            assert_eq!(parse_l4_bytes(f), data);
        }
        assert_eq!(parse_flow(&first).dst, b, "a first fragment carries the ports");
        let moved = frame_with_destination(&later, a.ip());
        verify_ip_header_checksum(&moved).unwrap();
        assert_eq!(parse_ip_header(&moved).dst, a.ip());
        assert_eq!(parse_ip_header(&frame_with_source(&later, b.ip())).src, b.ip());
    }
    let v6 = fragment_frame(endpoints()[1].0.ip(), endpoints()[1].1.ip(), PROTO_UDP, 0x0102_0304, 8, true, &[0; 8]);
    assert_eq!(parse_ip_header(&v6).fragment, Some(Fragment { id: 0x0102_0304, offset: 8, more: true }), "32-bit IPv6 ids");
}

#[test]
fn icmp_errors_round_trip() {
    let mtu_1400 = [0, 0, 0x05, 0x78];
    for (a, b) in endpoints() {
        let (ty, code) = if a.is_ipv4() { (ICMP_DEST_UNREACH, ICMP_FRAG_NEEDED) } else { (ICMPV6_PACKET_TOO_BIG, 0) };
        let e = icmp_error_frame(b.ip(), a.ip(), ty, code, mtu_1400, &quoted_tcp(a, b, 1480, 5));
        verify_checksums(&e).unwrap();
        let i = parse_icmp_error(&e);
        assert_eq!((i.ty, i.code, i.rest), (ty, code, mtu_1400));
        assert_eq!(i.quoted, Flow { src: a, dst: b, proto: PROTO_TCP });
        let quoted_len = header_len(a.ip());
        assert_eq!((i.quoted_header.total_len, i.quoted_off), (quoted_len + 1480, ETH_HEADER_LEN + quoted_len + 8));
        assert_eq!(i.quoted_l4_off, i.quoted_off + quoted_len);
        let mut bad = e.clone();
        bad[i.quoted_off + if a.is_ipv4() { 12 } else { 8 }] ^= 1; // the quoted source address
        assert!(verify_checksums(&bad).is_err(), "{a}: a changed quote must fail the checks");
    }
}

#[test]
fn ipv4_options_move_the_l4_header() {
    let [(a, b), _] = endpoints();
    let (IpAddr::V4(src), IpAddr::V4(dst)) = (a.ip(), b.ip()) else { unreachable!() };
    let f = ipv4_frame(src, dst, PROTO_TCP, 1, 0, &[1, 1, 1], &tcp_segment(a, b, 1, 0, TCP_SYN, &[]));
    verify_checksums(&f).unwrap();
    assert_eq!(parse_ip_header(&f).header_len, 24, "options padded to 4 bytes");
    assert_eq!(parse_flow(&f).dst, b);
}

#[test]
fn ipv6_extension_headers_are_walked() {
    let [_, (a, b)] = endpoints();
    let (IpAddr::V6(src), IpAddr::V6(dst)) = (a.ip(), b.ip()) else { unreachable!() };
    let mut ext = ipv6_router_alert_header(NEXT_DEST_OPTIONS);
    ext.extend(ipv6_options_header(NEXT_ROUTING, 200 - 16));
    ext.extend(ipv6_routing_header(PROTO_TCP));
    assert_eq!(ext.len(), 200);
    let g = ipv6_frame(src, dst, NEXT_HOP_BY_HOP, &ext, &tcp_segment(a, b, 1, 2, TCP_ACK, b"abc"));
    let h = parse_ip_header(&g);
    assert_eq!((h.next_header, h.proto, h.header_len, h.fragment), (NEXT_HOP_BY_HOP, PROTO_TCP, 240, None), "TCP at byte 254");
    assert_eq!(parse_flow(&g), Flow { src: a, dst: b, proto: PROTO_TCP });
    verify_checksums(&g).unwrap();
    let mut bad = g.clone();
    bad[ETH_HEADER_LEN + 39] ^= 1;
    assert!(verify_checksums(&bad).is_err());
}
