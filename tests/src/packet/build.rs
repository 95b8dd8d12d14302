//! Builders: frames, IP headers, L4 segments and ICMP errors with correct checksums.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use super::{
    ETH_HEADER_LEN, ETHERTYPE_IPV4, ETHERTYPE_IPV6, IPV4_HEADER_LEN, MAC_DST, MAC_SRC, NEXT_FRAGMENT, PROTO_ICMP, PROTO_ICMPV6,
    PROTO_TCP, PROTO_UDP, checksum, parse_ip_header, pseudo_header_sum,
};

/// The IPv4 identification of frames built without one.
const IPV4_ID: u16 = 0x1234;
/// The TTL (IPv4) and hop limit (IPv6) of every built packet.
const TTL: u8 = 64;
/// The IPv4 flags + fragment offset field: more fragments, don't fragment.
const IPV4_MORE_FRAGMENTS: u16 = 0x2000;
const IPV4_DONT_FRAGMENT: u16 = 0x4000;

/// Both endpoints of a packet, which must be of one family.
fn endpoints(src: impl Into<SocketAddr>, dst: impl Into<SocketAddr>) -> (SocketAddr, SocketAddr) {
    let (src, dst) = (src.into(), dst.into());
    assert_eq!(src.is_ipv4(), dst.is_ipv4(), "{src} → {dst}: a packet has one family");
    (src, dst)
}

fn ethernet(ethertype: u16, ip_packet: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(ETH_HEADER_LEN + ip_packet.len());
    f.extend_from_slice(&MAC_DST);
    f.extend_from_slice(&MAC_SRC);
    f.extend_from_slice(&ethertype.to_be_bytes());
    f.extend_from_slice(ip_packet);
    f
}

/// An IPv4 header (options padded to a multiple of 4 bytes) with a valid checksum. `frag` is the
/// flags + fragment offset field, host order (0x2000: more fragments; 0x4000: don't fragment).
pub fn ipv4_header(src: Ipv4Addr, dst: Ipv4Addr, proto: u8, total_len: u16, id: u16, frag: u16, options: &[u8]) -> Vec<u8> {
    let padded = options.len().div_ceil(4) * 4;
    let ihl = IPV4_HEADER_LEN + padded;
    let mut h = Vec::with_capacity(ihl);
    h.push(0x40 | (ihl / 4) as u8);
    h.push(0);
    h.extend_from_slice(&total_len.to_be_bytes());
    h.extend_from_slice(&id.to_be_bytes());
    h.extend_from_slice(&frag.to_be_bytes());
    h.push(TTL);
    h.push(proto);
    h.extend_from_slice(&[0, 0]);
    h.extend_from_slice(&src.octets());
    h.extend_from_slice(&dst.octets());
    h.extend_from_slice(options);
    h.resize(ihl, 0);
    let c = checksum(&h, 0);
    h[10..12].copy_from_slice(&c.to_be_bytes());
    h
}

/// Ethernet + IPv4 (total length: header + `l4.len()`) + `l4` as given.
pub fn ipv4_frame(src: Ipv4Addr, dst: Ipv4Addr, proto: u8, id: u16, frag: u16, options: &[u8], l4: &[u8]) -> Vec<u8> {
    let ihl = IPV4_HEADER_LEN + options.len().div_ceil(4) * 4;
    let mut packet = ipv4_header(src, dst, proto, (ihl + l4.len()) as u16, id, frag, options);
    packet.extend_from_slice(l4);
    ethernet(ETHERTYPE_IPV4, &packet)
}

/// An IPv6 header with payload length `payload_len` whose next header is `next`.
fn ipv6_header(src: Ipv6Addr, dst: Ipv6Addr, next: u8, payload_len: u16) -> Vec<u8> {
    let mut h = vec![0x60, 0, 0, 0];
    h.extend_from_slice(&payload_len.to_be_bytes());
    h.push(next);
    h.push(TTL);
    h.extend_from_slice(&src.octets());
    h.extend_from_slice(&dst.octets());
    h
}

/// Ethernet + IPv6 + `extensions` (extension headers already chained, the first of which is
/// `first_next`; without extensions `first_next` is the upper-layer protocol) + `l4` as given.
pub fn ipv6_frame(src: Ipv6Addr, dst: Ipv6Addr, first_next: u8, extensions: &[u8], l4: &[u8]) -> Vec<u8> {
    let mut packet = ipv6_header(src, dst, first_next, (extensions.len() + l4.len()) as u16);
    packet.extend_from_slice(extensions);
    packet.extend_from_slice(l4);
    ethernet(ETHERTYPE_IPV6, &packet)
}

/// Ethernet + an IP header of the addresses' family, without options or extension headers (IPv4:
/// identification 0x1234, not fragmented) + `l4`, whose protocol is `proto`.
pub fn ip_frame(src: IpAddr, dst: IpAddr, proto: u8, l4: &[u8]) -> Vec<u8> {
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => ipv4_frame(s, d, proto, IPV4_ID, 0, &[], l4),
        (IpAddr::V6(s), IpAddr::V6(d)) => ipv6_frame(s, d, proto, &[], l4),
        _ => panic!("{src} → {dst}: a packet has one family"),
    }
}

/// A TCP segment (20-byte header + payload) with chosen sequence and acknowledgement numbers and
/// its checksum for `src` → `dst`.
pub fn tcp_segment(
    src: impl Into<SocketAddr>,
    dst: impl Into<SocketAddr>,
    seq: u32,
    ack: u32,
    flags: u8,
    payload: &[u8],
) -> Vec<u8> {
    let (src, dst) = endpoints(src, dst);
    let mut t = Vec::with_capacity(20 + payload.len());
    t.extend_from_slice(&src.port().to_be_bytes());
    t.extend_from_slice(&dst.port().to_be_bytes());
    t.extend_from_slice(&seq.to_be_bytes());
    t.extend_from_slice(&ack.to_be_bytes());
    t.push(5 << 4);
    t.push(flags);
    t.extend_from_slice(&65535u16.to_be_bytes());
    t.extend_from_slice(&[0, 0, 0, 0]); // checksum, urgent pointer
    t.extend_from_slice(payload);
    let c = checksum(&t, pseudo_header_sum(src.ip(), dst.ip(), PROTO_TCP, t.len()));
    t[16..18].copy_from_slice(&c.to_be_bytes());
    t
}

/// A whole UDP datagram (header + payload) with its checksum for `src` → `dst`: the L4 bytes of
/// one packet, or of several fragments (cut it at multiples of 8 bytes).
pub fn udp_datagram(src: impl Into<SocketAddr>, dst: impl Into<SocketAddr>, payload: &[u8]) -> Vec<u8> {
    let (src, dst) = endpoints(src, dst);
    let len = 8 + payload.len();
    let mut u = Vec::with_capacity(len);
    u.extend_from_slice(&src.port().to_be_bytes());
    u.extend_from_slice(&dst.port().to_be_bytes());
    u.extend_from_slice(&(len as u16).to_be_bytes());
    u.extend_from_slice(&[0, 0]);
    u.extend_from_slice(payload);
    let c = match checksum(&u, pseudo_header_sum(src.ip(), dst.ip(), PROTO_UDP, len)) {
        0 => 0xffff, // 0 means "no checksum"
        c => c,
    };
    u[6..8].copy_from_slice(&c.to_be_bytes());
    u
}

/// A TCP frame without payload, options or extension headers.
pub fn tcp_frame(src: impl Into<SocketAddr>, dst: impl Into<SocketAddr>, seq: u32, ack: u32, flags: u8) -> Vec<u8> {
    let (src, dst) = endpoints(src, dst);
    ip_frame(src.ip(), dst.ip(), PROTO_TCP, &tcp_segment(src, dst, seq, ack, flags, &[]))
}

/// A UDP frame without options or extension headers.
pub fn udp_frame(src: impl Into<SocketAddr>, dst: impl Into<SocketAddr>, payload: &[u8]) -> Vec<u8> {
    let (src, dst) = endpoints(src, dst);
    ip_frame(src.ip(), dst.ip(), PROTO_UDP, &udp_datagram(src, dst, payload))
}

/// A UDP frame whose checksum is 0: "no checksum" in IPv4, invalid in IPv6 (RFC 8200 §8.1).
pub fn udp_frame_without_checksum(src: impl Into<SocketAddr>, dst: impl Into<SocketAddr>, payload: &[u8]) -> Vec<u8> {
    let (src, dst) = endpoints(src, dst);
    let mut datagram = udp_datagram(src, dst, payload);
    datagram[6..8].copy_from_slice(&[0, 0]);
    ip_frame(src.ip(), dst.ip(), PROTO_UDP, &datagram)
}

/// An ICMP (IPv4) or ICMPv6 error message `src` → `dst`: type, code, the 4 bytes after the
/// checksum (e.g. the next-hop MTU of "fragmentation needed" or "packet too big") and the
/// quoted bytes (an IP header and at least 8 bytes of what followed it), with its checksum
/// (ICMPv6's covers the pseudo-header).
pub fn icmp_error(src: IpAddr, dst: IpAddr, ty: u8, code: u8, rest: [u8; 4], quoted: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(8 + quoted.len());
    m.extend_from_slice(&[ty, code, 0, 0]);
    m.extend_from_slice(&rest);
    m.extend_from_slice(quoted);
    let pseudo = if src.is_ipv4() { 0 } else { pseudo_header_sum(src, dst, PROTO_ICMPV6, m.len()) };
    let c = checksum(&m, pseudo);
    m[2..4].copy_from_slice(&c.to_be_bytes());
    m
}

/// An ICMP (IPv4) or ICMPv6 error frame `src` → `dst` (see [`icmp_error`]).
pub fn icmp_error_frame(src: IpAddr, dst: IpAddr, ty: u8, code: u8, rest: [u8; 4], quoted: &[u8]) -> Vec<u8> {
    let proto = if src.is_ipv4() { PROTO_ICMP } else { PROTO_ICMPV6 };
    ip_frame(src, dst, proto, &icmp_error(src, dst, ty, code, rest, quoted))
}

/// What an ICMP error quotes of a TCP packet `src → dst` whose L4 part (header and data) was
/// `l4_len` bytes long: its IP header (IPv4 with don't-fragment set) and the first 8 bytes of
/// its TCP header (ports and sequence number).
pub fn quoted_tcp(src: impl Into<SocketAddr>, dst: impl Into<SocketAddr>, l4_len: u16, seq: u32) -> Vec<u8> {
    let (src, dst) = endpoints(src, dst);
    let mut q = match (src.ip(), dst.ip()) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            ipv4_header(s, d, PROTO_TCP, IPV4_HEADER_LEN as u16 + l4_len, 0x4242, IPV4_DONT_FRAGMENT, &[])
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => ipv6_header(s, d, PROTO_TCP, l4_len),
        _ => unreachable!("one family, checked above"),
    };
    q.extend_from_slice(&src.port().to_be_bytes());
    q.extend_from_slice(&dst.port().to_be_bytes());
    q.extend_from_slice(&seq.to_be_bytes());
    q
}

/// A fragment of a datagram of protocol `proto` whose fragments share `id`: `data` starts
/// `offset` bytes into the datagram (a multiple of 8); `more` says whether more fragments
/// follow. IPv4 carries this in its header (so `id` must fit 16 bits), IPv6 in a fragment
/// header.
pub fn fragment_frame(src: IpAddr, dst: IpAddr, proto: u8, id: u32, offset: usize, more: bool, data: &[u8]) -> Vec<u8> {
    assert!(offset.is_multiple_of(8), "fragment offset {offset} is no multiple of 8");
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            let id = u16::try_from(id).expect("an IPv4 fragment id has 16 bits");
            let frag = if more { IPV4_MORE_FRAGMENTS } else { 0 } | (offset / 8) as u16;
            ipv4_frame(s, d, proto, id, frag, &[], data)
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => ipv6_frame(s, d, NEXT_FRAGMENT, &ipv6_fragment_header(proto, offset, more, id), data),
        _ => panic!("{src} → {dst}: a packet has one family"),
    }
}

/// An IPv6 fragment header leading to `next`: `offset` in bytes (a multiple of 8), the
/// more-fragments flag and the identification.
pub fn ipv6_fragment_header(next: u8, offset: usize, more: bool, id: u32) -> Vec<u8> {
    assert!(offset.is_multiple_of(8), "fragment offset {offset} is no multiple of 8");
    let field = (offset as u16) | u16::from(more);
    let mut h = vec![next, 0];
    h.extend_from_slice(&field.to_be_bytes());
    h.extend_from_slice(&id.to_be_bytes());
    h
}

/// An IPv6 hop-by-hop or destination options header of `len` bytes (a multiple of 8, 8 to 2048)
/// leading to `next`, filled with PadN options.
pub fn ipv6_options_header(next: u8, len: usize) -> Vec<u8> {
    assert!(len >= 8 && len.is_multiple_of(8) && len <= 2048, "options header length {len}");
    let mut h = vec![next, (len / 8 - 1) as u8];
    let mut left = len - 2;
    while left > 0 {
        let n = left.min(257);
        h.push(1);
        h.push((n - 2) as u8);
        h.extend(std::iter::repeat_n(0, n - 2));
        left -= n;
    }
    h
}

/// An IPv6 hop-by-hop header with a router alert option (RFC 2711, value 0: MLD) leading to
/// `next`.
pub fn ipv6_router_alert_header(next: u8) -> Vec<u8> {
    vec![next, 0, 5, 2, 0, 0, 1, 0]
}

/// An IPv6 routing header (type 0, segments left 0: ignored by every node) leading to `next`.
pub fn ipv6_routing_header(next: u8) -> Vec<u8> {
    vec![next, 0, 0, 0, 0, 0, 0, 0]
}

/// `frame` cut `l4_len` bytes behind its IP header (options and extension headers included), its
/// IP length field saying so (IPv4: total length, header checksum fixed; IPv6: payload length):
/// a packet whose L4 header is truncated, with nothing else wrong.
pub fn truncated_frame(frame: &[u8], l4_len: usize) -> Vec<u8> {
    let h = parse_ip_header(frame);
    let ip_start = ETH_HEADER_LEN;
    let mut f = frame[..ip_start + h.header_len + l4_len].to_vec();
    if h.version == 4 {
        f[ip_start + 2..ip_start + 4].copy_from_slice(&((h.header_len + l4_len) as u16).to_be_bytes());
        fix_ipv4_header_checksum(&mut f);
    } else {
        let payload_len = h.header_len - super::IPV6_HEADER_LEN + l4_len;
        f[ip_start + 4..ip_start + 6].copy_from_slice(&(payload_len as u16).to_be_bytes());
    }
    f
}

/// `frame` with its IP source address replaced (and the IPv4 header checksum recomputed), nothing
/// else changed: what a later fragment (no L4 header) must look like after source NAT.
pub fn frame_with_source(frame: &[u8], ip: IpAddr) -> Vec<u8> {
    readdressed_frame(frame, ip, (12, 8))
}

/// `frame` with its IP destination address replaced (see [`frame_with_source`]).
pub fn frame_with_destination(frame: &[u8], ip: IpAddr) -> Vec<u8> {
    readdressed_frame(frame, ip, (16, 24))
}

/// `frame` with the address at header offset `offsets.0` (IPv4) or `offsets.1` (IPv6) replaced.
fn readdressed_frame(frame: &[u8], ip: IpAddr, offsets: (usize, usize)) -> Vec<u8> {
    let mut f = frame.to_vec();
    let ip_start = ETH_HEADER_LEN;
    match ip {
        IpAddr::V4(a) => {
            let at = ip_start + offsets.0;
            f[at..at + 4].copy_from_slice(&a.octets());
            fix_ipv4_header_checksum(&mut f);
        }
        IpAddr::V6(a) => {
            let at = ip_start + offsets.1;
            f[at..at + 16].copy_from_slice(&a.octets());
        }
    }
    f
}

/// Recomputes the IPv4 header checksum of `frame` in place (after a test changed its header).
pub fn fix_ipv4_header_checksum(frame: &mut [u8]) {
    let ip_start = ETH_HEADER_LEN;
    let ihl = usize::from(frame[ip_start] & 0x0f) * 4;
    frame[ip_start + 10..ip_start + 12].copy_from_slice(&[0, 0]);
    let c = checksum(&frame[ip_start..ip_start + ihl], 0);
    frame[ip_start + 10..ip_start + 12].copy_from_slice(&c.to_be_bytes());
}
