//! Answers for services without endpoints (point 37): a TCP RST for TCP, an ICMP port
//! unreachable (ICMPv6 type 1 code 4 for IPv6) for UDP, sent back out of the interface the
//! packet came in on so the client gets ECONNREFUSED at once. Headers are built from scratch
//! with full checksums once the entry point has given the buffer its new size:
//! - RST: 54 bytes (IPv4), 74 (IPv6);
//! - ICMP error: 70 bytes (IPv4), 110 (IPv6): the original IP header and first 8 bytes stay
//!   where they are, [`icmp_growth`] bytes behind the new headers.
//!
//! Only packets without IPv4 options or IPv6 extension headers are answered; others are
//! dropped (counted as no backend).

use lb_common::{IPPROTO_ICMP, IPPROTO_TCP};

use crate::{
    csum::checksum_words,
    parse::{
        ICMP_DEST_UNREACH, ICMPV6_DEST_UNREACH, IPPROTO_ICMPV6, Packet, TCP_FLAG_ACK, TCP_FLAG_FIN, TCP_FLAG_RST, TCP_FLAG_SYN,
        ptr_at, ptr_at_mut,
    },
};

const RST_LEN4: usize = 14 + 20 + 20;
const RST_LEN6: usize = 14 + 40 + 20;
const ICMP_LEN4: usize = 14 + 20 + 8 + 20 + 8;
const ICMP_LEN6: usize = 14 + 40 + 8 + 40 + 8;
const ICMP_PORT_UNREACH: u8 = 3;
const ICMPV6_PORT_UNREACH: u8 = 4;

/// Frame length of the RST.
#[inline(always)]
pub fn rst_len(v6: bool) -> usize {
    if v6 { RST_LEN6 } else { RST_LEN4 }
}

/// Frame length of the ICMP error.
#[inline(always)]
pub fn icmp_len(v6: bool) -> usize {
    if v6 { ICMP_LEN6 } else { ICMP_LEN4 }
}

/// Bytes the ICMP error puts in front of the original IP header (new IP header + ICMP header).
#[inline(always)]
pub fn icmp_growth(v6: bool) -> usize {
    if v6 { 40 + 8 } else { 20 + 8 }
}

/// What the answer needs from the original packet, taken before the buffer is resized.
#[derive(Clone, Copy)]
pub struct Original {
    pub eth_src: [u8; 6],
    pub eth_dst: [u8; 6],
    pub src: [u8; 16],
    pub dst: [u8; 16],
    pub sport_be: u16,
    pub dport_be: u16,
    pub seq: u32,
    pub ack: u32,
    pub tcp_flags: u8,
    pub v6: bool,
    /// TCP payload length.
    pub payload: u32,
}

/// Reads what the answer needs into `o` (scratch space: the rejecting subprogram's own frame is
/// tight); `None` when the packet cannot be answered (options or extension headers, no ports).
#[inline(always)]
pub fn capture(data: usize, end: usize, p: &Packet, o: &mut Original) -> Option<()> {
    let hlen = if p.is_v6 { 40 } else { 20 };
    if usize::from(p.l4_off) != 14 + hlen || !p.l4_in_packet || p.frag_later {
        return None;
    }
    let eth = ptr_at::<[u8; 12]>(data, end, 0)?;
    // SAFETY: bounds checked.
    let eth = unsafe { core::ptr::read_unaligned(eth) };
    o.eth_dst = [eth[0], eth[1], eth[2], eth[3], eth[4], eth[5]];
    o.eth_src = [eth[6], eth[7], eth[8], eth[9], eth[10], eth[11]];
    o.src = p.src;
    o.dst = p.dst;
    o.sport_be = p.sport_be;
    o.dport_be = p.dport_be;
    o.seq = 0;
    o.ack = 0;
    o.tcp_flags = p.tcp_flags;
    o.v6 = p.is_v6;
    o.payload = 0;
    if p.proto == IPPROTO_TCP {
        let off = if p.is_v6 { 14 + 40 } else { 14 + 20 };
        // Sequence, acknowledgement, data offset: one bounds check.
        let h = ptr_at::<[u8; 13]>(data, end, off + 4)?;
        // SAFETY: bounds checked.
        let h = unsafe { core::ptr::read_unaligned(h) };
        o.seq = u32::from_be_bytes([h[0], h[1], h[2], h[3]]);
        o.ack = u32::from_be_bytes([h[4], h[5], h[6], h[7]]);
        let doff = u32::from(h[8] >> 4) * 4;
        o.payload = p.ip_len.saturating_sub(hlen as u32 + doff);
    }
    Some(())
}

/// The sum of a pseudo-header (RFC 793 / RFC 8200 §8.1): addresses, upper-layer length, next
/// header. Raw words, as `checksum_words` sums them.
#[inline(always)]
fn pseudo_sum(o: &Original, len: u16, proto: u8) -> u32 {
    let mut sum = 0u32;
    let (first, last) = if o.v6 { (0, 8) } else { (6, 8) };
    let mut i = first;
    while i < last {
        sum += u32::from(u16::from_ne_bytes([o.dst[i * 2], o.dst[i * 2 + 1]]));
        sum += u32::from(u16::from_ne_bytes([o.src[i * 2], o.src[i * 2 + 1]]));
        i += 1;
    }
    sum + u32::from(u16::from(proto).to_be()) + u32::from(len.to_be())
}

/// The Ethernet header (addresses swapped) and a fresh IP header from the frontend back to the
/// client, at the start of `buf`; returns the L4 offset.
///
/// # Safety
/// `buf` must point to at least 54 (IPv6) or 34 (IPv4) writable packet bytes.
#[inline(always)]
unsafe fn write_eth_ip(buf: *mut u8, o: &Original, l4_len: u16, proto: u8) -> usize {
    let mut eth = [0u8; 14];
    eth[..6].copy_from_slice(&o.eth_src);
    eth[6..12].copy_from_slice(&o.eth_dst);
    // SAFETY: the caller guarantees the bytes.
    unsafe {
        if o.v6 {
            eth[12] = 0x86;
            eth[13] = 0xdd;
            let mut h = [0u8; 40];
            h[0] = 0x60;
            h[4..6].copy_from_slice(&l4_len.to_be_bytes());
            h[6] = proto;
            h[7] = 64;
            h[8..24].copy_from_slice(&o.dst);
            h[24..40].copy_from_slice(&o.src);
            core::ptr::write_unaligned(buf as *mut [u8; 14], eth);
            core::ptr::write_unaligned(buf.add(14) as *mut [u8; 40], h);
            14 + 40
        } else {
            eth[12] = 0x08;
            let mut h = [0u8; 20];
            h[0] = 0x45;
            h[2..4].copy_from_slice(&(l4_len + 20).to_be_bytes());
            h[6] = 0x40; // DF
            h[8] = 64;
            h[9] = proto;
            h[12..16].copy_from_slice(&o.dst[12..]);
            h[16..20].copy_from_slice(&o.src[12..]);
            core::ptr::write_unaligned(buf as *mut [u8; 14], eth);
            core::ptr::write_unaligned(buf.add(14) as *mut [u8; 20], h);
            let c = checksum_words(buf.add(14) as *const u16, 10, 0);
            core::ptr::write_unaligned(buf.add(24) as *mut u16, c);
            14 + 20
        }
    }
}

/// Writes the RST into a buffer of [`rst_len`] bytes.
#[inline(always)]
pub fn write_rst(data: usize, end: usize, o: &Original) -> Option<()> {
    // One bounds check for the whole frame; every write below is at a constant offset in it.
    let buf = if o.v6 {
        ptr_at_mut::<[u8; RST_LEN6]>(data, end, 0)? as *mut u8
    } else {
        ptr_at_mut::<[u8; RST_LEN4]>(data, end, 0)? as *mut u8
    };
    // RFC 793 reset generation: answer an ACK with seq = its ack; otherwise seq 0 and ACK what
    // the segment occupied.
    let (seq, ack, flags) = if o.tcp_flags & TCP_FLAG_ACK != 0 {
        (o.ack, 0, TCP_FLAG_RST)
    } else {
        let len = o.payload + u32::from(o.tcp_flags & TCP_FLAG_SYN != 0) + u32::from(o.tcp_flags & TCP_FLAG_FIN != 0);
        (0, o.seq.wrapping_add(len), TCP_FLAG_RST | TCP_FLAG_ACK)
    };
    let mut h = [0u8; 20];
    h[0..2].copy_from_slice(&o.dport_be.to_ne_bytes());
    h[2..4].copy_from_slice(&o.sport_be.to_ne_bytes());
    h[4..8].copy_from_slice(&seq.to_be_bytes());
    h[8..12].copy_from_slice(&ack.to_be_bytes());
    h[12] = 5 << 4;
    h[13] = flags;
    let pseudo = pseudo_sum(o, 20, IPPROTO_TCP);
    // SAFETY: `buf` covers the whole RST frame.
    unsafe {
        let l4 = write_eth_ip(buf, o, 20, IPPROTO_TCP);
        core::ptr::write_unaligned(buf.add(l4) as *mut [u8; 20], h);
        let c = checksum_words(buf.add(l4) as *const u16, 10, pseudo);
        core::ptr::write_unaligned(buf.add(l4 + 16) as *mut u16, c);
    }
    Some(())
}

/// Writes the port unreachable into a buffer of [`icmp_len`] bytes whose last bytes already hold
/// the original IP header and its first 8 L4 bytes.
#[inline(always)]
pub fn write_icmp_unreach(data: usize, end: usize, o: &Original) -> Option<()> {
    let (buf, body, ty, code, proto, pseudo) = if o.v6 {
        let buf = ptr_at_mut::<[u8; ICMP_LEN6]>(data, end, 0)? as *mut u8;
        let body = (ICMP_LEN6 - 14 - 40) as u16;
        (buf, body, ICMPV6_DEST_UNREACH, ICMPV6_PORT_UNREACH, IPPROTO_ICMPV6, pseudo_sum(o, body, IPPROTO_ICMPV6))
    } else {
        let buf = ptr_at_mut::<[u8; ICMP_LEN4]>(data, end, 0)? as *mut u8;
        // ICMPv4 has no pseudo-header.
        (buf, (ICMP_LEN4 - 14 - 20) as u16, ICMP_DEST_UNREACH, ICMP_PORT_UNREACH, IPPROTO_ICMP, 0)
    };
    let h = [ty, code, 0, 0, 0, 0, 0, 0];
    // SAFETY: `buf` covers the whole frame: headers, ICMP header, the quoted bytes.
    unsafe {
        let l4 = write_eth_ip(buf, o, body, proto);
        core::ptr::write_unaligned(buf.add(l4) as *mut [u8; 8], h);
        let c = checksum_words(buf.add(l4) as *const u16, usize::from(body) / 2, pseudo);
        core::ptr::write_unaligned(buf.add(l4 + 2) as *mut u16, c);
    }
    Some(())
}
