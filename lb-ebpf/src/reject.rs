//! Answers for services without endpoints (point 37): a TCP RST for TCP, an ICMP port
//! unreachable for UDP, sent back out of the interface the packet came in on so the client gets
//! ECONNREFUSED at once. Headers are built from scratch with full checksums once the entry point
//! has given the buffer its new size (54 bytes for an RST; 70 for the ICMP error: the original
//! IPv4 header and first 8 bytes stay where they are, 28 bytes behind the new headers).
//!
//! Only packets without IPv4 options are answered; others are dropped (counted as no backend).

use lb_common::{IPPROTO_ICMP, IPPROTO_TCP};

use crate::{
    csum::checksum_words,
    parse::{
        ICMP_DEST_UNREACH, Packet, TCP_FLAG_ACK, TCP_FLAG_FIN, TCP_FLAG_RST, TCP_FLAG_SYN, ptr_at,
        ptr_at_mut,
    },
};

/// Frame length of the RST.
pub const RST_LEN: usize = 14 + 20 + 20;
/// Frame length of the ICMP error.
pub const ICMP_LEN: usize = 14 + 20 + 8 + 20 + 8;
/// Bytes the ICMP error puts in front of the original IPv4 header.
pub const ICMP_GROWTH: usize = 20 + 8;
const ICMP_PORT_UNREACH: u8 = 3;

/// What the answer needs from the original packet, taken before the buffer is resized.
#[derive(Clone, Copy)]
pub struct Original {
    pub eth_src: [u8; 6],
    pub eth_dst: [u8; 6],
    pub src: [u8; 4],
    pub dst: [u8; 4],
    pub sport_be: u16,
    pub dport_be: u16,
    pub seq: u32,
    pub ack: u32,
    pub tcp_flags: u8,
    /// TCP payload length.
    pub payload: u32,
}

/// Reads what the answer needs; `None` when the packet cannot be answered (options, no ports).
#[inline(always)]
pub fn capture(data: usize, end: usize, p: &Packet) -> Option<Original> {
    if p.ihl != 20 || !p.l4_in_packet || p.frag_later {
        return None;
    }
    let eth = ptr_at::<[u8; 12]>(data, end, 0)?;
    // SAFETY: bounds checked.
    let eth = unsafe { core::ptr::read_unaligned(eth) };
    let mut o = Original {
        eth_dst: [eth[0], eth[1], eth[2], eth[3], eth[4], eth[5]],
        eth_src: [eth[6], eth[7], eth[8], eth[9], eth[10], eth[11]],
        src: p.src,
        dst: p.dst,
        sport_be: p.sport_be,
        dport_be: p.dport_be,
        seq: 0,
        ack: 0,
        tcp_flags: p.tcp_flags,
        payload: 0,
    };
    if p.proto == IPPROTO_TCP {
        let seq = ptr_at::<[u32; 2]>(data, end, 14 + 20 + 4)?;
        // SAFETY: bounds checked.
        let seq = unsafe { core::ptr::read_unaligned(seq) };
        o.seq = u32::from_be(seq[0]);
        o.ack = u32::from_be(seq[1]);
        let doff = ptr_at::<u8>(data, end, 14 + 20 + 12)?;
        // SAFETY: bounds checked.
        let doff = u32::from(unsafe { *doff } >> 4) * 4;
        o.payload = p.ip_len.saturating_sub(20 + doff);
    }
    Some(o)
}

/// The Ethernet header (addresses swapped) and a fresh IPv4 header from the frontend back to
/// the client, at the start of `buf`.
///
/// # Safety
/// `buf` must point to at least 34 writable packet bytes.
#[inline(always)]
unsafe fn write_eth_ip(buf: *mut u8, o: &Original, total: u16, proto: u8) {
    let mut h = [0u8; 34];
    h[..6].copy_from_slice(&o.eth_src);
    h[6..12].copy_from_slice(&o.eth_dst);
    h[12] = 0x08;
    h[13] = 0x00;
    h[14] = 0x45;
    h[16..18].copy_from_slice(&total.to_be_bytes());
    h[20] = 0x40; // DF
    h[22] = 64;
    h[23] = proto;
    h[26..30].copy_from_slice(&o.dst);
    h[30..34].copy_from_slice(&o.src);
    // SAFETY: the caller guarantees 34 bytes; the IPv4 header is summed in place after.
    unsafe {
        core::ptr::write_unaligned(buf as *mut [u8; 34], h);
        let c = checksum_words(buf.add(14) as *const u16, 10, 0);
        core::ptr::write_unaligned(buf.add(24) as *mut u16, c);
    }
}

/// Writes the RST into a buffer of [`RST_LEN`] bytes.
#[inline(always)]
pub fn write_rst(data: usize, end: usize, o: &Original) -> Option<()> {
    // One bounds check for the whole frame; every write below is at a constant offset in it.
    let buf = ptr_at_mut::<[u8; RST_LEN]>(data, end, 0)? as *mut u8;
    // RFC 793 reset generation: answer an ACK with seq = its ack; otherwise seq 0 and ACK what
    // the segment occupied.
    let (seq, ack, flags) = if o.tcp_flags & TCP_FLAG_ACK != 0 {
        (o.ack, 0, TCP_FLAG_RST)
    } else {
        let len = o.payload
            + u32::from(o.tcp_flags & TCP_FLAG_SYN != 0)
            + u32::from(o.tcp_flags & TCP_FLAG_FIN != 0);
        (0, o.seq.wrapping_add(len), TCP_FLAG_RST | TCP_FLAG_ACK)
    };
    let mut h = [0u8; 20];
    h[0..2].copy_from_slice(&o.dport_be.to_ne_bytes());
    h[2..4].copy_from_slice(&o.sport_be.to_ne_bytes());
    h[4..8].copy_from_slice(&seq.to_be_bytes());
    h[8..12].copy_from_slice(&ack.to_be_bytes());
    h[12] = 5 << 4;
    h[13] = flags;
    // Pseudo-header: source, destination, protocol, TCP length.
    let mut pseudo = 0u32;
    for a in [o.dst, o.src] {
        pseudo += u32::from(u16::from_ne_bytes([a[0], a[1]])) + u32::from(u16::from_ne_bytes([a[2], a[3]]));
    }
    pseudo += u32::from(u16::from(IPPROTO_TCP).to_be()) + u32::from(20u16.to_be());
    // SAFETY: `buf` covers RST_LEN (54) bytes.
    unsafe {
        write_eth_ip(buf, o, 40, IPPROTO_TCP);
        core::ptr::write_unaligned(buf.add(34) as *mut [u8; 20], h);
        let c = checksum_words(buf.add(34) as *const u16, 10, pseudo);
        core::ptr::write_unaligned(buf.add(34 + 16) as *mut u16, c);
    }
    Some(())
}

/// Writes the ICMP port unreachable into a buffer of [`ICMP_LEN`] bytes whose last 28 bytes
/// already hold the original IPv4 header and its first 8 L4 bytes.
#[inline(always)]
pub fn write_icmp_unreach(data: usize, end: usize, o: &Original) -> Option<()> {
    let buf = ptr_at_mut::<[u8; ICMP_LEN]>(data, end, 0)? as *mut u8;
    let mut h = [0u8; 8];
    h[0] = ICMP_DEST_UNREACH;
    h[1] = ICMP_PORT_UNREACH;
    // SAFETY: `buf` covers ICMP_LEN (70) bytes: headers, ICMP header, the 28 quoted bytes.
    unsafe {
        write_eth_ip(buf, o, (ICMP_LEN - 14) as u16, IPPROTO_ICMP);
        core::ptr::write_unaligned(buf.add(34) as *mut [u8; 8], h);
        let c = checksum_words(buf.add(34) as *const u16, (8 + 28) / 2, 0);
        core::ptr::write_unaligned(buf.add(36) as *mut u16, c);
    }
    Some(())
}
