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
        Self { src, dst, proto: PROTO_TCP, tcp_flags: flags, payload: Vec::new(), ip_options: Vec::new(), frag: 0, udp_no_checksum: false }
    }

    pub fn udp(src: (Ipv4Addr, u16), dst: (Ipv4Addr, u16), payload: &[u8]) -> Self {
        Self { src, dst, proto: PROTO_UDP, tcp_flags: 0, payload: payload.to_vec(), ip_options: Vec::new(), frag: 0, udp_no_checksum: false }
    }

    /// The frame as bytes.
    pub fn build(&self) -> Vec<u8> {
        let mut opts = self.ip_options.clone();
        while opts.len() % 4 != 0 {
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
    fn a_corrupted_packet_fails_verification() {
        let mut p = Spec::tcp((Ipv4Addr::new(10, 0, 0, 1), 1), (Ipv4Addr::new(10, 0, 0, 2), 2), TCP_SYN).build();
        p[30] ^= 1; // destination address, without fixing checksums
        assert!(verify_checksums(&p).is_err());
    }
}
