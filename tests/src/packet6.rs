//! IPv6 test packets: Ethernet + IPv6 (optionally with extension headers) + TCP/UDP/ICMPv6
//! with correct checksums, reading them back, and verifying the checksums of what the datapath
//! returns (the IPv6 pseudo-header covers both 16-byte addresses).

use std::net::Ipv6Addr;

use crate::packet::{TcpInfo, checksum};

pub const NEXT_TCP: u8 = 6;
pub const NEXT_UDP: u8 = 17;
pub const NEXT_ICMPV6: u8 = 58;
pub const NEXT_HOP: u8 = 0;
pub const NEXT_FRAGMENT: u8 = 44;
pub const NEXT_AH: u8 = 51;

/// The sum of an IPv6 pseudo-header.
pub fn pseudo_sum(src: Ipv6Addr, dst: Ipv6Addr, next: u8, len: usize) -> u32 {
    let mut s = 0u32;
    for a in [src.octets(), dst.octets()] {
        for c in a.chunks(2) {
            s += u32::from(u16::from_be_bytes([c[0], c[1]]));
        }
    }
    s + (len as u32 >> 16) + (len as u32 & 0xffff) + u32::from(next)
}

/// A TCP segment (20-byte header) with its checksum for `src` → `dst`.
pub fn tcp(src: (Ipv6Addr, u16), dst: (Ipv6Addr, u16), seq: u32, flags: u8, payload: &[u8]) -> Vec<u8> {
    let mut t = Vec::new();
    t.extend_from_slice(&src.1.to_be_bytes());
    t.extend_from_slice(&dst.1.to_be_bytes());
    t.extend_from_slice(&seq.to_be_bytes());
    t.extend_from_slice(&0u32.to_be_bytes());
    t.push(5 << 4);
    t.push(flags);
    t.extend_from_slice(&65535u16.to_be_bytes());
    t.extend_from_slice(&[0, 0, 0, 0]);
    t.extend_from_slice(payload);
    let c = checksum(&t, pseudo_sum(src.0, dst.0, NEXT_TCP, t.len()));
    t[16..18].copy_from_slice(&c.to_be_bytes());
    t
}

/// A UDP datagram with its checksum for `src` → `dst`.
pub fn udp(src: (Ipv6Addr, u16), dst: (Ipv6Addr, u16), payload: &[u8]) -> Vec<u8> {
    let mut u = Vec::new();
    u.extend_from_slice(&src.1.to_be_bytes());
    u.extend_from_slice(&dst.1.to_be_bytes());
    u.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    u.extend_from_slice(&[0, 0]);
    u.extend_from_slice(payload);
    let mut c = checksum(&u, pseudo_sum(src.0, dst.0, NEXT_UDP, u.len()));
    if c == 0 {
        c = 0xffff;
    }
    u[6..8].copy_from_slice(&c.to_be_bytes());
    u
}

/// An ICMPv6 error (`ty`, `code`, 4 bytes of `rest`) quoting `quoted`, with its checksum.
pub fn icmp_error(src: Ipv6Addr, dst: Ipv6Addr, ty: u8, code: u8, rest: [u8; 4], quoted: &[u8]) -> Vec<u8> {
    let mut m = vec![ty, code, 0, 0];
    m.extend_from_slice(&rest);
    m.extend_from_slice(quoted);
    let c = checksum(&m, pseudo_sum(src, dst, NEXT_ICMPV6, m.len()));
    m[2..4].copy_from_slice(&c.to_be_bytes());
    m
}

/// An IPv6 header plus `ext` (already chained extension headers, whose first next-header is
/// `first_next`) plus `l4`.
pub fn packet(src: Ipv6Addr, dst: Ipv6Addr, first_next: u8, ext: &[u8], l4: &[u8]) -> Vec<u8> {
    let mut p = vec![0x60, 0, 0, 0];
    p.extend_from_slice(&((ext.len() + l4.len()) as u16).to_be_bytes());
    p.push(first_next);
    p.push(64);
    p.extend_from_slice(&src.octets());
    p.extend_from_slice(&dst.octets());
    p.extend_from_slice(ext);
    p.extend_from_slice(l4);
    p
}

/// An Ethernet frame around an IPv6 packet.
pub fn frame(ip: &[u8]) -> Vec<u8> {
    let mut f = vec![0x02, 0, 0, 0, 0, 0x02, 0x02, 0, 0, 0, 0, 0x01, 0x86, 0xdd];
    f.extend_from_slice(ip);
    f
}

/// A TCP frame without extension headers.
pub fn tcp_frame(src: (Ipv6Addr, u16), dst: (Ipv6Addr, u16), seq: u32, flags: u8) -> Vec<u8> {
    frame(&packet(src.0, dst.0, NEXT_TCP, &[], &tcp(src, dst, seq, flags, &[])))
}

/// A UDP frame without extension headers.
pub fn udp_frame(src: (Ipv6Addr, u16), dst: (Ipv6Addr, u16), payload: &[u8]) -> Vec<u8> {
    frame(&packet(src.0, dst.0, NEXT_UDP, &[], &udp(src, dst, payload)))
}

/// A hop-by-hop options header (8 bytes, PadN) leading to `next`.
pub fn hop_by_hop(next: u8) -> Vec<u8> {
    vec![next, 0, 1, 4, 0, 0, 0, 0]
}

/// A fragment header leading to `next`: `offset` in 8-byte units, more-fragments flag, id.
pub fn fragment_header(next: u8, offset: u16, more: bool, id: u32) -> Vec<u8> {
    let fo = (offset << 3) | u16::from(more);
    let mut h = vec![next, 0];
    h.extend_from_slice(&fo.to_be_bytes());
    h.extend_from_slice(&id.to_be_bytes());
    h
}

/// The fields of a frame the datapath returned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Flow6 {
    pub src: (Ipv6Addr, u16),
    pub dst: (Ipv6Addr, u16),
    pub next: u8,
}

fn addr(b: &[u8]) -> Ipv6Addr {
    let mut a = [0u8; 16];
    a.copy_from_slice(&b[..16]);
    Ipv6Addr::from(a)
}

/// Addresses and ports of a frame, behind any hop-by-hop, routing, destination options or
/// fragment headers; `next` is the upper-layer protocol (ports are meaningful for an
/// unfragmented packet or a first fragment only).
pub fn flow(f: &[u8]) -> Flow6 {
    let c = chain(f);
    let port = |o: usize| u16::from_be_bytes([f[o], f[o + 1]]);
    Flow6 { src: (addr(&f[SADDR_OFF..]), port(c.l4_off)), dst: (addr(&f[DADDR_OFF..]), port(c.l4_off + 2)), next: c.proto }
}

/// Checks the L4 checksum (TCP, UDP or ICMPv6) of an unfragmented frame, behind any extension
/// headers (the pseudo-header length is what follows them).
pub fn verify_checksum(f: &[u8]) -> Result<(), String> {
    let c = chain(f);
    if c.frag.is_some() {
        return Err("a fragment: verify the reassembled datagram".into());
    }
    let len = usize::from(u16::from_be_bytes([f[18], f[19]]));
    let l4 = f.get(c.l4_off..14 + 40 + len).ok_or("frame shorter than its payload length")?;
    let (src, dst) = (addr(&f[SADDR_OFF..]), addr(&f[DADDR_OFF..]));
    if checksum(l4, pseudo_sum(src, dst, c.proto, l4.len())) != 0 {
        return Err(format!("checksum of next header {} is wrong", c.proto));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// More builders: extension headers, TCP segments with chosen numbers, ICMPv6 quotes.
// ---------------------------------------------------------------------------------------------

pub const NEXT_ROUTING: u8 = 43;
pub const NEXT_DEST: u8 = 60;
pub const ICMPV6_DEST_UNREACH: u8 = 1;
pub const ICMPV6_PORT_UNREACH: u8 = 4;
pub const ICMPV6_PKT_TOOBIG: u8 = 2;
pub const ICMPV6_TIME_EXCEED: u8 = 3;
pub const ICMPV6_PARAMPROB: u8 = 4;
/// Offsets of the source and destination addresses in a frame.
pub const SADDR_OFF: usize = 14 + 8;
pub const DADDR_OFF: usize = 14 + 24;

/// A hop-by-hop or destination options header of `len` bytes (a multiple of 8, at least 8,
/// at most 2048) leading to `next`, filled with one PadN option.
pub fn options_header(next: u8, len: usize) -> Vec<u8> {
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

/// A hop-by-hop header with a router alert option (RFC 2711, value 0: MLD) leading to `next`.
pub fn router_alert(next: u8) -> Vec<u8> {
    vec![next, 0, 5, 2, 0, 0, 1, 0]
}

/// A routing header (type 0, segments left 0: ignored by every node) leading to `next`.
pub fn routing_header(next: u8) -> Vec<u8> {
    vec![next, 0, 0, 0, 0, 0, 0, 0]
}

/// A TCP segment (20-byte header + payload) with chosen sequence and acknowledgement numbers and
/// its checksum for `src` → `dst`.
pub fn tcp_segment(src: (Ipv6Addr, u16), dst: (Ipv6Addr, u16), seq: u32, ack: u32, flags: u8, payload: &[u8]) -> Vec<u8> {
    let mut t = tcp(src, dst, seq, flags, payload);
    t[8..12].copy_from_slice(&ack.to_be_bytes());
    t[16..18].copy_from_slice(&[0, 0]);
    let c = checksum(&t, pseudo_sum(src.0, dst.0, NEXT_TCP, t.len()));
    t[16..18].copy_from_slice(&c.to_be_bytes());
    t
}

/// A TCP frame without extension headers, with chosen sequence and acknowledgement numbers.
pub fn tcp_frame_ack(src: (Ipv6Addr, u16), dst: (Ipv6Addr, u16), seq: u32, ack: u32, flags: u8) -> Vec<u8> {
    frame(&packet(src.0, dst.0, NEXT_TCP, &[], &tcp_segment(src, dst, seq, ack, flags, &[])))
}

/// A fragment of a datagram (`data` starts `offset` bytes into it, a multiple of 8) behind a
/// fragment header with `id`.
pub fn fragment(src: Ipv6Addr, dst: Ipv6Addr, next: u8, offset: usize, more: bool, id: u32, data: &[u8]) -> Vec<u8> {
    assert!(offset.is_multiple_of(8));
    frame(&packet(src, dst, NEXT_FRAGMENT, &fragment_header(next, (offset / 8) as u16, more, id), data))
}

/// What an ICMPv6 error quotes of a TCP packet `src → dst`: its IPv6 header (payload length
/// `payload_len`) and the first 8 bytes of its TCP header (ports and sequence number).
pub fn quote_tcp(src: (Ipv6Addr, u16), dst: (Ipv6Addr, u16), payload_len: u16, seq: u32) -> Vec<u8> {
    let mut q = vec![0x60, 0, 0, 0];
    q.extend_from_slice(&payload_len.to_be_bytes());
    q.push(NEXT_TCP);
    q.push(64);
    q.extend_from_slice(&src.0.octets());
    q.extend_from_slice(&dst.0.octets());
    q.extend_from_slice(&src.1.to_be_bytes());
    q.extend_from_slice(&dst.1.to_be_bytes());
    q.extend_from_slice(&seq.to_be_bytes());
    q
}

/// `f` with the 16 address bytes at `off` ([`SADDR_OFF`], [`DADDR_OFF`]) replaced and nothing
/// else changed: what a later fragment (no L4 header, no IPv6 header checksum) must look like
/// after translation.
pub fn with_addr(f: &[u8], off: usize, a: Ipv6Addr) -> Vec<u8> {
    let mut g = f.to_vec();
    g[off..off + 16].copy_from_slice(&a.octets());
    g
}

// ---------------------------------------------------------------------------------------------
// Parsers for frames the datapath returns.
// ---------------------------------------------------------------------------------------------

/// An IPv6 header's fields.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ipv6Info {
    pub version: u8,
    pub src: Ipv6Addr,
    pub dst: Ipv6Addr,
    /// The header's own next header (the first extension header, if any).
    pub next: u8,
    pub payload_len: usize,
    pub hop_limit: u8,
}

/// The IPv6 header at byte `off` of `b`.
pub fn ipv6_at(b: &[u8], off: usize) -> Ipv6Info {
    Ipv6Info {
        version: b[off] >> 4,
        src: addr(&b[off + 8..]),
        dst: addr(&b[off + 24..]),
        next: b[off + 6],
        payload_len: usize::from(u16::from_be_bytes([b[off + 4], b[off + 5]])),
        hop_limit: b[off + 7],
    }
}

/// The IPv6 header of a frame.
pub fn ipv6(f: &[u8]) -> Ipv6Info {
    ipv6_at(f, 14)
}

/// A fragment header's fields.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Frag6 {
    /// Offset in bytes.
    pub offset: usize,
    pub more: bool,
    pub id: u32,
}

/// Where the upper-layer header of a frame is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Chain {
    /// Offset of the upper-layer header in the frame.
    pub l4_off: usize,
    /// Upper-layer protocol.
    pub proto: u8,
    pub frag: Option<Frag6>,
}

/// Walks the hop-by-hop, routing, destination options and fragment headers of a frame.
pub fn chain(f: &[u8]) -> Chain {
    let mut next = f[20];
    let mut off = 14 + 40;
    let mut frag = None;
    loop {
        match next {
            NEXT_HOP | NEXT_ROUTING | NEXT_DEST => {
                next = f[off];
                off += (usize::from(f[off + 1]) + 1) * 8;
            }
            NEXT_FRAGMENT => {
                let fo = u16::from_be_bytes([f[off + 2], f[off + 3]]);
                let id = u32::from_be_bytes([f[off + 4], f[off + 5], f[off + 6], f[off + 7]]);
                frag = Some(Frag6 { offset: usize::from(fo >> 3) * 8, more: fo & 1 != 0, id });
                next = f[off];
                off += 8;
            }
            _ => return Chain { l4_off: off, proto: next, frag },
        }
    }
}

/// The upper-layer bytes of a frame (after its extension headers, up to the payload length).
pub fn l4_bytes(f: &[u8]) -> &[u8] {
    &f[chain(f).l4_off..14 + 40 + ipv6(f).payload_len]
}

/// The TCP header of a frame.
pub fn tcp_info(f: &[u8]) -> TcpInfo {
    let t = l4_bytes(f);
    TcpInfo {
        sport: u16::from_be_bytes([t[0], t[1]]),
        dport: u16::from_be_bytes([t[2], t[3]]),
        seq: u32::from_be_bytes([t[4], t[5], t[6], t[7]]),
        ack: u32::from_be_bytes([t[8], t[9], t[10], t[11]]),
        flags: t[13],
        doff: usize::from(t[12] >> 4) * 4,
    }
}

/// An ICMPv6 error's fields and the flow it quotes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Icmp6Info {
    pub ty: u8,
    pub code: u8,
    /// The 4 bytes after the checksum (MTU, pointer or unused).
    pub rest: [u8; 4],
    /// The quoted IPv6 header.
    pub inner: Ipv6Info,
    /// The quoted ports (assumes no extension headers in the quote).
    pub inner_sport: u16,
    pub inner_dport: u16,
    /// Offset of the quoted IPv6 header in the frame.
    pub inner_off: usize,
}

/// The ICMPv6 error of a frame.
pub fn icmp6(f: &[u8]) -> Icmp6Info {
    let m = chain(f).l4_off;
    let inner_off = m + 8;
    let l4 = inner_off + 40;
    Icmp6Info {
        ty: f[m],
        code: f[m + 1],
        rest: [f[m + 4], f[m + 5], f[m + 6], f[m + 7]],
        inner: ipv6_at(f, inner_off),
        inner_sport: u16::from_be_bytes([f[l4], f[l4 + 1]]),
        inner_dport: u16::from_be_bytes([f[l4 + 2], f[l4 + 3]]),
        inner_off,
    }
}

/// Checks a UDP checksum over a whole (possibly reassembled) datagram with the pseudo-header of
/// `src → dst`. (Zero is no valid IPv6 UDP checksum: it fails here.)
pub fn verify_udp_datagram(src: Ipv6Addr, dst: Ipv6Addr, datagram: &[u8]) -> Result<(), String> {
    if datagram[6] == 0 && datagram[7] == 0 {
        return Err("UDP checksum 0 (none) in an IPv6 datagram".into());
    }
    if checksum(datagram, pseudo_sum(src, dst, NEXT_UDP, datagram.len())) != 0 {
        return Err("UDP checksum of the datagram is wrong".into());
    }
    Ok(())
}
