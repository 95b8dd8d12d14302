//! Parsers and checks for frames the datapath returns (assumed well formed: these read what a
//! test built or the datapath wrote, and panic on a frame too short for what they read).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use super::{
    ETH_HEADER_LEN, IPV6_HEADER_LEN, NEXT_DEST_OPTIONS, NEXT_FRAGMENT, NEXT_HOP_BY_HOP, NEXT_ROUTING, PROTO_ICMP, PROTO_ICMPV6,
    PROTO_TCP, PROTO_UDP, checksum, pseudo_header_sum,
};

/// An IP header's fields, IPv4 or IPv6.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IpHeader {
    /// 4 or 6.
    pub version: u8,
    pub src: IpAddr,
    pub dst: IpAddr,
    /// The header's own protocol (IPv4) or next header (IPv6: the first extension header, if any).
    pub next_header: u8,
    /// The upper-layer protocol, behind any IPv6 hop-by-hop, routing, destination options and
    /// fragment headers.
    pub proto: u8,
    /// From the start of the IP header to the upper-layer header: IPv4's IHL (options
    /// included), or 40 plus the IPv6 extension headers.
    pub header_len: usize,
    /// The packet's length as its header says: the IPv4 total length, or 40 plus the IPv6
    /// payload length.
    pub total_len: usize,
    /// TTL or hop limit.
    pub ttl: u8,
    /// The packet's place in a fragmented datagram; `None` when it is a whole datagram.
    pub fragment: Option<Fragment>,
}

/// Where a fragment belongs: IPv4's identification and flags + offset, or an IPv6 fragment
/// header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fragment {
    pub id: u32,
    /// Offset in bytes.
    pub offset: usize,
    pub more: bool,
}

fn be16(b: &[u8], off: usize) -> u16 {
    u16::from_be_bytes([b[off], b[off + 1]])
}

fn be32(b: &[u8], off: usize) -> u32 {
    u32::from_be_bytes([b[off], b[off + 1], b[off + 2], b[off + 3]])
}

fn ipv6_addr(b: &[u8], off: usize) -> Ipv6Addr {
    Ipv6Addr::from(<[u8; 16]>::try_from(&b[off..off + 16]).expect("16 bytes"))
}

/// The IP header at byte `off` of `b` (a frame, or the quote of an ICMP error), by its version.
pub fn parse_ip_header_at(b: &[u8], off: usize) -> IpHeader {
    match b[off] >> 4 {
        4 => {
            let frag = be16(b, off + 6);
            // More fragments (0x2000) or an offset (0x1fff); don't-fragment (0x4000) is no fragment.
            let fragmented = frag & 0x3fff != 0;
            IpHeader {
                version: 4,
                src: Ipv4Addr::new(b[off + 12], b[off + 13], b[off + 14], b[off + 15]).into(),
                dst: Ipv4Addr::new(b[off + 16], b[off + 17], b[off + 18], b[off + 19]).into(),
                next_header: b[off + 9],
                proto: b[off + 9],
                header_len: usize::from(b[off] & 0x0f) * 4,
                total_len: usize::from(be16(b, off + 2)),
                ttl: b[off + 8],
                fragment: fragmented.then(|| Fragment {
                    id: u32::from(be16(b, off + 4)),
                    offset: usize::from(frag & 0x1fff) * 8,
                    more: frag & 0x2000 != 0,
                }),
            }
        }
        6 => {
            // Walk the hop-by-hop, routing, destination options and fragment headers.
            let mut proto = b[off + 6];
            let mut header_len = IPV6_HEADER_LEN;
            let mut fragment = None;
            loop {
                let ext = off + header_len;
                match proto {
                    NEXT_HOP_BY_HOP | NEXT_ROUTING | NEXT_DEST_OPTIONS => header_len += (usize::from(b[ext + 1]) + 1) * 8,
                    NEXT_FRAGMENT => {
                        let field = be16(b, ext + 2);
                        fragment = Some(Fragment { id: be32(b, ext + 4), offset: usize::from(field & !7), more: field & 1 != 0 });
                        header_len += 8;
                    }
                    _ => break,
                }
                proto = b[ext];
            }
            IpHeader {
                version: 6,
                src: ipv6_addr(b, off + 8).into(),
                dst: ipv6_addr(b, off + 24).into(),
                next_header: b[off + 6],
                proto,
                header_len,
                total_len: IPV6_HEADER_LEN + usize::from(be16(b, off + 4)),
                ttl: b[off + 7],
                fragment,
            }
        }
        v => panic!("IP version {v} at byte {off}"),
    }
}

/// The IP header of a frame.
pub fn parse_ip_header(frame: &[u8]) -> IpHeader {
    parse_ip_header_at(frame, ETH_HEADER_LEN)
}

/// The upper-layer bytes of a frame: after the IP header (options, extension headers) up to the
/// length the IP header gives.
pub fn parse_l4_bytes(frame: &[u8]) -> &[u8] {
    let h = parse_ip_header(frame);
    &frame[ETH_HEADER_LEN + h.header_len..ETH_HEADER_LEN + h.total_len]
}

/// The addresses, ports and upper-layer protocol of a packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Flow {
    pub src: SocketAddr,
    pub dst: SocketAddr,
    pub proto: u8,
}

/// The flow of a frame (its ports are meaningful in a whole datagram or a first fragment only).
pub fn parse_flow(frame: &[u8]) -> Flow {
    let h = parse_ip_header(frame);
    let l4 = ETH_HEADER_LEN + h.header_len;
    Flow { src: SocketAddr::new(h.src, be16(frame, l4)), dst: SocketAddr::new(h.dst, be16(frame, l4 + 2)), proto: h.proto }
}

/// A TCP header's fields.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TcpHeader {
    pub sport: u16,
    pub dport: u16,
    pub seq: u32,
    pub ack: u32,
    pub flags: u8,
    /// Header length in bytes (data offset).
    pub header_len: usize,
}

/// The TCP header of a frame.
pub fn parse_tcp(frame: &[u8]) -> TcpHeader {
    let t = parse_l4_bytes(frame);
    TcpHeader {
        sport: be16(t, 0),
        dport: be16(t, 2),
        seq: be32(t, 4),
        ack: be32(t, 8),
        flags: t[13],
        header_len: usize::from(t[12] >> 4) * 4,
    }
}

/// An ICMP or ICMPv6 error's fields and what it quotes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IcmpError {
    pub ty: u8,
    pub code: u8,
    /// The 4 bytes after the checksum (MTU, pointer or unused).
    pub rest: [u8; 4],
    /// The quoted IP header.
    pub quoted_header: IpHeader,
    /// The quoted packet's addresses and TCP/UDP ports.
    pub quoted: Flow,
    /// Offsets in the frame of the quoted IP header and of the quoted TCP/UDP header.
    pub quoted_off: usize,
    pub quoted_l4_off: usize,
}

/// The ICMP or ICMPv6 error of a frame (quoting an IP header and at least 8 bytes).
pub fn parse_icmp_error(frame: &[u8]) -> IcmpError {
    let m = ETH_HEADER_LEN + parse_ip_header(frame).header_len;
    let quoted_off = m + 8;
    let quoted_header = parse_ip_header_at(frame, quoted_off);
    let quoted_l4_off = quoted_off + quoted_header.header_len;
    IcmpError {
        ty: frame[m],
        code: frame[m + 1],
        rest: [frame[m + 4], frame[m + 5], frame[m + 6], frame[m + 7]],
        quoted: Flow {
            src: SocketAddr::new(quoted_header.src, be16(frame, quoted_l4_off)),
            dst: SocketAddr::new(quoted_header.dst, be16(frame, quoted_l4_off + 2)),
            proto: quoted_header.proto,
        },
        quoted_header,
        quoted_off,
        quoted_l4_off,
    }
}

/// Checks the IPv4 header checksum at byte `off` of `b`.
fn verify_ipv4_header_at(b: &[u8], off: usize, what: &str) -> Result<(), String> {
    let ihl = usize::from(b[off] & 0x0f) * 4;
    if checksum(&b[off..off + ihl], 0) != 0 {
        return Err(format!("{what} checksum is wrong"));
    }
    Ok(())
}

/// Checks the IPv4 header checksum of a frame (IPv6 has none): all there is to check in a
/// fragment without the rest of its datagram.
pub fn verify_ip_header_checksum(frame: &[u8]) -> Result<(), String> {
    match parse_ip_header(frame).version {
        4 => verify_ipv4_header_at(frame, ETH_HEADER_LEN, "IPv4 header"),
        _ => Ok(()),
    }
}

/// Checks every checksum of a whole (unfragmented) packet: the IPv4 header's, the TCP, UDP,
/// ICMP or ICMPv6 checksum (pseudo-header included where the family has one; UDP's 0 is "no
/// checksum" in IPv4 and wrong in IPv6), and the quoted IPv4 header's of an ICMP error. `Err`
/// says which is wrong.
pub fn verify_checksums(frame: &[u8]) -> Result<(), String> {
    verify_ip_header_checksum(frame)?;
    let h = parse_ip_header(frame);
    if h.fragment.is_some() {
        return Err("a fragment: check its IP header and the reassembled datagram instead".into());
    }
    let l4 = frame
        .get(ETH_HEADER_LEN + h.header_len..ETH_HEADER_LEN + h.total_len)
        .ok_or("the frame is shorter than its IP header says")?;
    match h.proto {
        PROTO_UDP => verify_udp_datagram(h.src, h.dst, l4),
        PROTO_TCP | PROTO_ICMPV6 => match checksum(l4, pseudo_header_sum(h.src, h.dst, h.proto, l4.len())) {
            0 => Ok(()),
            _ => Err(format!("{} checksum is wrong", if h.proto == PROTO_TCP { "TCP" } else { "ICMPv6" })),
        },
        PROTO_ICMP => {
            if checksum(l4, 0) != 0 {
                return Err("ICMP checksum is wrong".into());
            }
            verify_ipv4_header_at(frame, parse_icmp_error(frame).quoted_off, "quoted IPv4 header")
        }
        other => Err(format!("no checksum to check for protocol {other}")),
    }
}

/// Checks the UDP checksum of a whole (possibly reassembled) datagram with the pseudo-header of
/// `src → dst`. A zero checksum is "no checksum" in IPv4 and wrong in IPv6 (RFC 8200 §8.1).
pub fn verify_udp_datagram(src: IpAddr, dst: IpAddr, datagram: &[u8]) -> Result<(), String> {
    if datagram[6..8] == [0, 0] {
        return if src.is_ipv4() { Ok(()) } else { Err("UDP checksum 0 (none) in an IPv6 datagram".into()) };
    }
    if checksum(datagram, pseudo_header_sum(src, dst, PROTO_UDP, datagram.len())) != 0 {
        return Err("UDP checksum is wrong".into());
    }
    Ok(())
}
