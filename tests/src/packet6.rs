//! IPv6 test packets: Ethernet + IPv6 (optionally with extension headers) + TCP/UDP/ICMPv6
//! with correct checksums, reading them back, and verifying the checksums of what the datapath
//! returns (the IPv6 pseudo-header covers both 16-byte addresses).

use std::net::Ipv6Addr;

use crate::packet::checksum;

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

/// Addresses and ports of a frame without extension headers.
pub fn flow(f: &[u8]) -> Flow6 {
    let port = |o: usize| u16::from_be_bytes([f[o], f[o + 1]]);
    Flow6 { src: (addr(&f[22..]), port(54)), dst: (addr(&f[38..]), port(56)), next: f[20] }
}

/// Checks the L4 checksum (TCP, UDP or ICMPv6) of a frame without extension headers.
pub fn verify_checksum(f: &[u8]) -> Result<(), String> {
    let len = usize::from(u16::from_be_bytes([f[18], f[19]]));
    let l4 = f.get(54..54 + len).ok_or("frame shorter than its payload length")?;
    let (src, dst, next) = (addr(&f[22..]), addr(&f[38..]), f[20]);
    if checksum(l4, pseudo_sum(src, dst, next, l4.len())) != 0 {
        return Err(format!("checksum of next header {next} is wrong"));
    }
    Ok(())
}
