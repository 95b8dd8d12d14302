//! Building test packets (Ethernet + IPv4 + TCP/UDP) with correct checksums, reading them back,
//! and verifying the checksums of what the datapath returns.

use std::net::Ipv4Addr;

pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_ACK: u8 = 0x10;
pub const TCP_FIN: u8 = 0x01;

/// What to build.
#[derive(Clone, Debug)]
pub struct Spec {
    pub src: (Ipv4Addr, u16),
    pub dst: (Ipv4Addr, u16),
    pub proto: u8,
    pub tcp_flags: u8,
    pub payload: Vec<u8>,
    /// IPv4 options (padded to a multiple of 4 bytes).
    pub ip_options: Vec<u8>,
    /// The IPv4 flags + fragment offset field, host order (0x2000 = more fragments).
    pub frag: u16,
    /// Leave the UDP checksum 0 ("no checksum").
    pub udp_no_checksum: bool,
}

impl Spec {
    pub fn tcp(src: (Ipv4Addr, u16), dst: (Ipv4Addr, u16), flags: u8) -> Self {
        Self {
            src,
            dst,
            proto: PROTO_TCP,
            tcp_flags: flags,
            payload: Vec::new(),
            ip_options: Vec::new(),
            frag: 0,
            udp_no_checksum: false,
        }
    }

    pub fn udp(src: (Ipv4Addr, u16), dst: (Ipv4Addr, u16), payload: &[u8]) -> Self {
        Self {
            src,
            dst,
            proto: PROTO_UDP,
            tcp_flags: 0,
            payload: payload.to_vec(),
            ip_options: Vec::new(),
            frag: 0,
            udp_no_checksum: false,
        }
    }

    /// The frame as bytes.
    pub fn build(&self) -> Vec<u8> {
        let mut opts = self.ip_options.clone();
        while !opts.len().is_multiple_of(4) {
            opts.push(0);
        }
        let ihl = 20 + opts.len();
        let l4_len = match self.proto {
            PROTO_TCP => 20,
            _ => 8,
        } + self.payload.len();
        let mut p = Vec::new();
        p.extend_from_slice(&[0x02, 0, 0, 0, 0, 0x02]); // dst mac
        p.extend_from_slice(&[0x02, 0, 0, 0, 0, 0x01]); // src mac
        p.extend_from_slice(&0x0800u16.to_be_bytes());
        let ip_start = p.len();
        p.push(0x40 | (ihl / 4) as u8);
        p.push(0);
        p.extend_from_slice(&((ihl + l4_len) as u16).to_be_bytes());
        p.extend_from_slice(&0x1234u16.to_be_bytes());
        p.extend_from_slice(&self.frag.to_be_bytes());
        p.push(64);
        p.push(self.proto);
        p.extend_from_slice(&[0, 0]);
        p.extend_from_slice(&self.src.0.octets());
        p.extend_from_slice(&self.dst.0.octets());
        p.extend_from_slice(&opts);
        let csum = checksum(&p[ip_start..ip_start + ihl], 0);
        p[ip_start + 10..ip_start + 12].copy_from_slice(&csum.to_be_bytes());
        let l4_start = p.len();
        p.extend_from_slice(&self.src.1.to_be_bytes());
        p.extend_from_slice(&self.dst.1.to_be_bytes());
        if self.proto == PROTO_TCP {
            p.extend_from_slice(&1000u32.to_be_bytes()); // seq
            p.extend_from_slice(&0u32.to_be_bytes()); // ack
            p.push(5 << 4);
            p.push(self.tcp_flags);
            p.extend_from_slice(&65535u16.to_be_bytes());
            p.extend_from_slice(&[0, 0, 0, 0]); // checksum, urgent
        } else {
            p.extend_from_slice(&(l4_len as u16).to_be_bytes());
            p.extend_from_slice(&[0, 0]);
        }
        p.extend_from_slice(&self.payload);
        let skip_csum = self.proto == PROTO_UDP && self.udp_no_checksum;
        if !skip_csum {
            let mut c = checksum(&p[l4_start..], pseudo_sum(self.src.0, self.dst.0, self.proto, l4_len));
            if self.proto == PROTO_UDP && c == 0 {
                c = 0xffff;
            }
            let off = l4_start + if self.proto == PROTO_TCP { 16 } else { 6 };
            p[off..off + 2].copy_from_slice(&c.to_be_bytes());
        }
        p
    }
}

fn pseudo_sum(src: Ipv4Addr, dst: Ipv4Addr, proto: u8, len: usize) -> u32 {
    let mut s = 0u32;
    for chunk in src.octets().chunks(2).chain(dst.octets().chunks(2)) {
        s += u32::from(u16::from_be_bytes([chunk[0], chunk[1]]));
    }
    s + u32::from(proto) + len as u32
}

/// Internet checksum of `data` with an initial sum.
pub fn checksum(data: &[u8], initial: u32) -> u16 {
    let mut sum = initial;
    for chunk in data.chunks(2) {
        let word = if chunk.len() == 2 { u16::from_be_bytes([chunk[0], chunk[1]]) } else { u16::from_be_bytes([chunk[0], 0]) };
        sum += u32::from(word);
    }
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// The flow fields of a built or returned frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Flow {
    pub src: (Ipv4Addr, u16),
    pub dst: (Ipv4Addr, u16),
    pub proto: u8,
}

/// Reads the addresses and ports back (assumes a well-formed, unfragmented frame).
pub fn flow(p: &[u8]) -> Flow {
    let ihl = usize::from(p[14] & 0x0f) * 4;
    let l4 = 14 + ihl;
    let ip = |o: usize| Ipv4Addr::new(p[o], p[o + 1], p[o + 2], p[o + 3]);
    let port = |o: usize| u16::from_be_bytes([p[o], p[o + 1]]);
    Flow { src: (ip(26), port(l4)), dst: (ip(30), port(l4 + 2)), proto: p[23] }
}

/// Checks the IPv4 header checksum and the TCP/UDP checksum; `Err` says which is wrong.
pub fn verify_checksums(p: &[u8]) -> Result<(), String> {
    let ihl = usize::from(p[14] & 0x0f) * 4;
    if checksum(&p[14..14 + ihl], 0) != 0 {
        return Err("IPv4 header checksum is wrong".into());
    }
    let tot = usize::from(u16::from_be_bytes([p[16], p[17]]));
    let l4 = &p[14 + ihl..14 + tot];
    let proto = p[23];
    if proto == PROTO_UDP && l4[6] == 0 && l4[7] == 0 {
        return Ok(()); // no checksum
    }
    let src = Ipv4Addr::new(p[26], p[27], p[28], p[29]);
    let dst = Ipv4Addr::new(p[30], p[31], p[32], p[33]);
    if checksum(l4, pseudo_sum(src, dst, proto, l4.len())) != 0 {
        return Err(format!("{} checksum is wrong", if proto == PROTO_TCP { "TCP" } else { "UDP" }));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Raw builders: any L4 bytes behind an IPv4 header of one's choosing (fragments, ICMP errors,
// TCP segments with chosen sequence numbers).
// ---------------------------------------------------------------------------------------------

pub const PROTO_ICMP: u8 = 1;
pub const TCP_RST: u8 = 0x04;
pub const ICMP_DEST_UNREACH: u8 = 3;
pub const ICMP_PORT_UNREACH: u8 = 3;
pub const ICMP_FRAG_NEEDED: u8 = 4;
/// The source MAC of every built frame.
pub const MAC_SRC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
/// The destination MAC of every built frame.
pub const MAC_DST: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];

/// An IPv4 header (options padded to a multiple of 4 bytes) with a valid checksum.
/// `frag` is the flags + fragment offset field, host order.
pub fn ipv4_header(src: Ipv4Addr, dst: Ipv4Addr, proto: u8, total_len: u16, id: u16, frag: u16, options: &[u8]) -> Vec<u8> {
    let mut opts = options.to_vec();
    while !opts.len().is_multiple_of(4) {
        opts.push(0);
    }
    let ihl = 20 + opts.len();
    let mut h = Vec::with_capacity(ihl);
    h.push(0x40 | (ihl / 4) as u8);
    h.push(0);
    h.extend_from_slice(&total_len.to_be_bytes());
    h.extend_from_slice(&id.to_be_bytes());
    h.extend_from_slice(&frag.to_be_bytes());
    h.push(64);
    h.push(proto);
    h.extend_from_slice(&[0, 0]);
    h.extend_from_slice(&src.octets());
    h.extend_from_slice(&dst.octets());
    h.extend_from_slice(&opts);
    let c = checksum(&h, 0);
    h[10..12].copy_from_slice(&c.to_be_bytes());
    h
}

/// Ethernet + IPv4 (total length = header + `l4.len()`) + `l4` as given.
pub fn ipv4_frame(src: Ipv4Addr, dst: Ipv4Addr, proto: u8, id: u16, frag: u16, options: &[u8], l4: &[u8]) -> Vec<u8> {
    let ihl = 20 + options.len().div_ceil(4) * 4;
    let mut p = Vec::with_capacity(14 + ihl + l4.len());
    p.extend_from_slice(&MAC_DST);
    p.extend_from_slice(&MAC_SRC);
    p.extend_from_slice(&0x0800u16.to_be_bytes());
    p.extend_from_slice(&ipv4_header(src, dst, proto, (ihl + l4.len()) as u16, id, frag, options));
    p.extend_from_slice(l4);
    p
}

/// A whole UDP datagram (header + payload) with its checksum, as the L4 bytes of one or more
/// IPv4 packets (cut it into fragments at multiples of 8 bytes).
pub fn udp_datagram(src: (Ipv4Addr, u16), dst: (Ipv4Addr, u16), payload: &[u8]) -> Vec<u8> {
    let len = 8 + payload.len();
    let mut u = Vec::with_capacity(len);
    u.extend_from_slice(&src.1.to_be_bytes());
    u.extend_from_slice(&dst.1.to_be_bytes());
    u.extend_from_slice(&(len as u16).to_be_bytes());
    u.extend_from_slice(&[0, 0]);
    u.extend_from_slice(payload);
    let mut c = checksum(&u, pseudo_sum(src.0, dst.0, PROTO_UDP, len));
    if c == 0 {
        c = 0xffff;
    }
    u[6..8].copy_from_slice(&c.to_be_bytes());
    u
}

/// A TCP segment (20-byte header + payload) with chosen sequence numbers and its checksum.
pub fn tcp_segment(src: (Ipv4Addr, u16), dst: (Ipv4Addr, u16), seq: u32, ack: u32, flags: u8, payload: &[u8]) -> Vec<u8> {
    let mut t = Vec::with_capacity(20 + payload.len());
    t.extend_from_slice(&src.1.to_be_bytes());
    t.extend_from_slice(&dst.1.to_be_bytes());
    t.extend_from_slice(&seq.to_be_bytes());
    t.extend_from_slice(&ack.to_be_bytes());
    t.push(5 << 4);
    t.push(flags);
    t.extend_from_slice(&65535u16.to_be_bytes());
    t.extend_from_slice(&[0, 0, 0, 0]);
    t.extend_from_slice(payload);
    let c = checksum(&t, pseudo_sum(src.0, dst.0, PROTO_TCP, t.len()));
    t[16..18].copy_from_slice(&c.to_be_bytes());
    t
}

/// A TCP frame with chosen sequence numbers.
pub fn tcp_frame(src: (Ipv4Addr, u16), dst: (Ipv4Addr, u16), seq: u32, ack: u32, flags: u8) -> Vec<u8> {
    ipv4_frame(src.0, dst.0, PROTO_TCP, 0x1234, 0, &[], &tcp_segment(src, dst, seq, ack, flags, &[]))
}

/// An ICMP error message: type, code, the 4 bytes after the checksum (e.g. `[0, 0, mtu_hi,
/// mtu_lo]` for "fragmentation needed"), and the quoted bytes (an IPv4 header and at least 8
/// bytes of what followed it), with its checksum.
pub fn icmp_error(ty: u8, code: u8, rest: [u8; 4], quoted: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(8 + quoted.len());
    m.push(ty);
    m.push(code);
    m.extend_from_slice(&[0, 0]);
    m.extend_from_slice(&rest);
    m.extend_from_slice(quoted);
    let c = checksum(&m, 0);
    m[2..4].copy_from_slice(&c.to_be_bytes());
    m
}

/// What an ICMP error quotes of a TCP packet `src → dst`: its IPv4 header (total length
/// `orig_len`, DF set) and the first 8 bytes of its TCP header (ports and sequence number).
pub fn quote_tcp(src: (Ipv4Addr, u16), dst: (Ipv4Addr, u16), orig_len: u16, seq: u32) -> Vec<u8> {
    let mut q = ipv4_header(src.0, dst.0, PROTO_TCP, orig_len, 0x4242, 0x4000, &[]);
    q.extend_from_slice(&src.1.to_be_bytes());
    q.extend_from_slice(&dst.1.to_be_bytes());
    q.extend_from_slice(&seq.to_be_bytes());
    q
}

// ---------------------------------------------------------------------------------------------
// Parsers for frames the datapath returns.
// ---------------------------------------------------------------------------------------------

/// An IPv4 header's fields.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ipv4Info {
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub proto: u8,
    /// Header length in bytes.
    pub ihl: usize,
    pub total_len: usize,
    pub id: u16,
    /// Flags + fragment offset, host order.
    pub frag: u16,
    pub ttl: u8,
}

/// The IPv4 header at byte `off` of `b`.
pub fn ipv4_at(b: &[u8], off: usize) -> Ipv4Info {
    let ip = |o: usize| Ipv4Addr::new(b[off + o], b[off + o + 1], b[off + o + 2], b[off + o + 3]);
    Ipv4Info {
        src: ip(12),
        dst: ip(16),
        proto: b[off + 9],
        ihl: usize::from(b[off] & 0x0f) * 4,
        total_len: usize::from(u16::from_be_bytes([b[off + 2], b[off + 3]])),
        id: u16::from_be_bytes([b[off + 4], b[off + 5]]),
        frag: u16::from_be_bytes([b[off + 6], b[off + 7]]),
        ttl: b[off + 8],
    }
}

/// The IPv4 header of a frame.
pub fn ipv4(frame: &[u8]) -> Ipv4Info {
    ipv4_at(frame, 14)
}

/// The L4 bytes of a frame (after the IPv4 header and its options, up to the IPv4 total length).
pub fn l4_bytes(frame: &[u8]) -> &[u8] {
    let h = ipv4(frame);
    &frame[14 + h.ihl..14 + h.total_len]
}

/// Checks the IPv4 header checksum only (for packets without an L4 header: later fragments).
pub fn verify_ipv4_checksum(frame: &[u8]) -> Result<(), String> {
    let ihl = usize::from(frame[14] & 0x0f) * 4;
    if checksum(&frame[14..14 + ihl], 0) != 0 {
        return Err("IPv4 header checksum is wrong".into());
    }
    Ok(())
}

/// Checks a UDP checksum over a whole (possibly reassembled) datagram with the pseudo-header of
/// `src → dst`.
pub fn verify_udp_datagram(src: Ipv4Addr, dst: Ipv4Addr, datagram: &[u8]) -> Result<(), String> {
    if datagram[6] == 0 && datagram[7] == 0 {
        return Ok(());
    }
    if checksum(datagram, pseudo_sum(src, dst, PROTO_UDP, datagram.len())) != 0 {
        return Err("UDP checksum of the datagram is wrong".into());
    }
    Ok(())
}

/// A TCP header's fields.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TcpInfo {
    pub sport: u16,
    pub dport: u16,
    pub seq: u32,
    pub ack: u32,
    pub flags: u8,
    /// Header length in bytes.
    pub doff: usize,
}

/// The TCP header of a frame.
pub fn tcp(frame: &[u8]) -> TcpInfo {
    let t = l4_bytes(frame);
    TcpInfo {
        sport: u16::from_be_bytes([t[0], t[1]]),
        dport: u16::from_be_bytes([t[2], t[3]]),
        seq: u32::from_be_bytes([t[4], t[5], t[6], t[7]]),
        ack: u32::from_be_bytes([t[8], t[9], t[10], t[11]]),
        flags: t[13],
        doff: usize::from(t[12] >> 4) * 4,
    }
}

/// An ICMP error's fields and the flow it quotes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IcmpInfo {
    pub ty: u8,
    pub code: u8,
    /// The 4 bytes after the checksum.
    pub rest: [u8; 4],
    /// The quoted IPv4 header.
    pub inner: Ipv4Info,
    /// The quoted ports.
    pub inner_sport: u16,
    pub inner_dport: u16,
    /// Offset of the quoted IPv4 header in the frame.
    pub inner_off: usize,
}

/// The ICMP message of a frame (assumes an error quoting an IPv4 header and 8 bytes).
pub fn icmp(frame: &[u8]) -> IcmpInfo {
    let h = ipv4(frame);
    let m = 14 + h.ihl;
    let inner_off = m + 8;
    let inner = ipv4_at(frame, inner_off);
    let l4 = inner_off + inner.ihl;
    IcmpInfo {
        ty: frame[m],
        code: frame[m + 1],
        rest: [frame[m + 4], frame[m + 5], frame[m + 6], frame[m + 7]],
        inner_sport: u16::from_be_bytes([frame[l4], frame[l4 + 1]]),
        inner_dport: u16::from_be_bytes([frame[l4 + 2], frame[l4 + 3]]),
        inner,
        inner_off,
    }
}

/// Checks the outer IPv4 checksum, the ICMP checksum (over the whole ICMP message) and the
/// quoted IPv4 header's checksum of an ICMP error frame; `Err` says which is wrong.
pub fn verify_icmp_checksums(frame: &[u8]) -> Result<(), String> {
    verify_ipv4_checksum(frame)?;
    if checksum(l4_bytes(frame), 0) != 0 {
        return Err("ICMP checksum is wrong".into());
    }
    let i = icmp(frame);
    if checksum(&frame[i.inner_off..i.inner_off + i.inner.ihl], 0) != 0 {
        return Err("quoted IPv4 header checksum is wrong".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn built_packets_have_valid_checksums() {
        let a = (Ipv4Addr::new(10, 0, 0, 1), 1234);
        let b = (Ipv4Addr::new(10, 96, 0, 10), 80);
        verify_checksums(&Spec::tcp(a, b, TCP_SYN).build()).unwrap();
        verify_checksums(&Spec::udp(a, b, b"hello").build()).unwrap();
        let mut with_opts = Spec::tcp(a, b, TCP_SYN);
        with_opts.ip_options = vec![1, 1, 1, 1];
        let p = with_opts.build();
        verify_checksums(&p).unwrap();
        assert_eq!(flow(&p).dst, b);
    }

    #[test]
    fn raw_builders_round_trip() {
        let a = (Ipv4Addr::new(10, 0, 0, 1), 1234);
        let b = (Ipv4Addr::new(10, 96, 0, 10), 80);
        let f = tcp_frame(a, b, 0xdead_beef, 7, TCP_SYN);
        verify_checksums(&f).unwrap();
        assert_eq!(flow(&f), flow(&Spec::tcp(a, b, TCP_SYN).build()));
        let t = tcp(&f);
        assert_eq!((t.seq, t.ack, t.flags, t.doff), (0xdead_beef, 7, TCP_SYN, 20));
        let d = udp_datagram(a, b, &[9u8; 100]);
        verify_udp_datagram(a.0, b.0, &d).unwrap();
        let frag = ipv4_frame(a.0, b.0, PROTO_UDP, 77, 0x2000, &[], &d[..64]);
        verify_ipv4_checksum(&frag).unwrap();
        assert_eq!((ipv4(&frag).id, ipv4(&frag).frag, ipv4(&frag).total_len), (77, 0x2000, 84));
        let e = ipv4_frame(b.0, a.0, PROTO_ICMP, 1, 0, &[], &icmp_error(3, 4, [0, 0, 0x05, 0x78], &quote_tcp(a, b, 1500, 5)));
        verify_icmp_checksums(&e).unwrap();
        let i = icmp(&e);
        assert_eq!((i.ty, i.code, i.inner.src, i.inner.dst, i.inner_sport, i.inner_dport), (3, 4, a.0, b.0, a.1, b.1));
        let mut bad = e.clone();
        bad[14 + 20 + 8 + 12] ^= 1; // quoted source address
        assert!(verify_icmp_checksums(&bad).is_err());
    }

    #[test]
    fn a_corrupted_packet_fails_verification() {
        let mut p = Spec::tcp((Ipv4Addr::new(10, 0, 0, 1), 1), (Ipv4Addr::new(10, 0, 0, 2), 2), TCP_SYN).build();
        p[30] ^= 1; // destination address, without fixing checksums
        assert!(verify_checksums(&p).is_err());
    }
}
