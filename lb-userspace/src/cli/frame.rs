//! The synthetic packets of `lb explain`: an Ethernet frame carrying one TCP segment or UDP
//! datagram (IPv4 or IPv6, valid checksums), and the reading of what the datapath made of it
//! (addresses, ports, checksums verified).

use std::net::{IpAddr, SocketAddr};

use lb_common::IPPROTO_ICMP as PROTO_ICMP;
pub use lb_common::{IPPROTO_TCP as PROTO_TCP, IPPROTO_UDP as PROTO_UDP};

const PROTO_ICMPV6: u8 = 58;
const ETH_LEN: usize = 14;
const ETHERTYPE_IPV4: u16 = 0x0800;
const ETHERTYPE_IPV6: u16 = 0x86dd;

pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_PSH: u8 = 0x08;
pub const TCP_ACK: u8 = 0x10;

/// The UDP payload of a probe datagram.
const UDP_PAYLOAD: &[u8] = b"lb explain";

/// An Ethernet frame from `src` to `dst` (same family) with a TCP segment (`tcp_flags`) or a
/// UDP datagram (`proto`), checksums computed.
pub fn build(proto: u8, src: SocketAddr, dst: SocketAddr, tcp_flags: u8) -> Vec<u8> {
    let l4 = if proto == PROTO_TCP {
        let mut t = vec![0u8; 20];
        t[0..2].copy_from_slice(&src.port().to_be_bytes());
        t[2..4].copy_from_slice(&dst.port().to_be_bytes());
        t[4..8].copy_from_slice(&1u32.to_be_bytes()); // sequence number
        if tcp_flags & TCP_ACK != 0 {
            t[8..12].copy_from_slice(&1u32.to_be_bytes());
        }
        t[12] = 5 << 4;
        t[13] = tcp_flags;
        t[14..16].copy_from_slice(&64240u16.to_be_bytes());
        t
    } else {
        let mut u = vec![0u8; 8];
        u[0..2].copy_from_slice(&src.port().to_be_bytes());
        u[2..4].copy_from_slice(&dst.port().to_be_bytes());
        u[4..6].copy_from_slice(&((8 + UDP_PAYLOAD.len()) as u16).to_be_bytes());
        u.extend_from_slice(UDP_PAYLOAD);
        u
    };
    let mut l4 = l4;
    let sum = checksum(&l4, pseudo_header_sum(src.ip(), dst.ip(), proto, l4.len()));
    let at = if proto == PROTO_TCP { 16 } else { 6 };
    let sum = if proto == PROTO_UDP && sum == 0 { 0xffff } else { sum };
    l4[at..at + 2].copy_from_slice(&sum.to_be_bytes());

    let mut f = Vec::with_capacity(ETH_LEN + 40 + l4.len());
    f.extend_from_slice(&[0x02, 0, 0, 0, 0, 0x02, 0x02, 0, 0, 0, 0, 0x01]);
    match (src.ip(), dst.ip()) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            f.extend_from_slice(&ETHERTYPE_IPV4.to_be_bytes());
            let mut h = vec![0u8; 20];
            h[0] = 0x45;
            h[2..4].copy_from_slice(&((20 + l4.len()) as u16).to_be_bytes());
            h[4..6].copy_from_slice(&0x1b1bu16.to_be_bytes());
            h[6] = 0x40; // don't fragment
            h[8] = 64;
            h[9] = proto;
            h[12..16].copy_from_slice(&s.octets());
            h[16..20].copy_from_slice(&d.octets());
            let c = checksum(&h, 0);
            h[10..12].copy_from_slice(&c.to_be_bytes());
            f.extend_from_slice(&h);
        }
        (s, d) => {
            f.extend_from_slice(&ETHERTYPE_IPV6.to_be_bytes());
            let mut h = vec![0u8; 40];
            h[0] = 0x60;
            h[4..6].copy_from_slice(&(l4.len() as u16).to_be_bytes());
            h[6] = proto;
            h[7] = 64;
            h[8..24].copy_from_slice(&v6_octets(s));
            h[24..40].copy_from_slice(&v6_octets(d));
            f.extend_from_slice(&h);
        }
    }
    f.extend_from_slice(&l4);
    f
}

fn v6_octets(a: IpAddr) -> [u8; 16] {
    match a {
        IpAddr::V6(a) => a.octets(),
        IpAddr::V4(a) => a.to_ipv6_mapped().octets(),
    }
}

/// What a frame carries, as `lb explain` reports the packet the datapath left.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Seen {
    pub proto: u8,
    pub src: IpAddr,
    pub dst: IpAddr,
    /// Ports (TCP, UDP), or `None` for ICMP.
    pub ports: Option<(u16, u16)>,
    /// TCP flags.
    pub tcp_flags: u8,
    /// ICMP type and code.
    pub icmp: Option<(u8, u8)>,
    /// Every checksum the frame carries is valid.
    pub checksums_ok: bool,
}

impl Seen {
    /// `tcp 10.0.0.1:40000 -> 10.96.0.10:80 [SYN]`, `icmp 10.0.0.1 -> 10.0.0.2 type 3 code 3`.
    pub fn describe(&self) -> String {
        match (self.ports, self.icmp) {
            (Some((sp, dp)), _) => {
                let flags =
                    if self.proto == PROTO_TCP { format!(" [{}]", tcp_flag_names(self.tcp_flags)) } else { String::new() };
                format!(
                    "{} {} -> {}{flags}",
                    proto_word(self.proto),
                    SocketAddr::new(self.src, sp),
                    SocketAddr::new(self.dst, dp)
                )
            }
            (None, Some((t, c))) => format!("{} {} -> {} type {t} code {c}", proto_word(self.proto), self.src, self.dst),
            (None, None) => format!("proto {} {} -> {}", self.proto, self.src, self.dst),
        }
    }
}

pub fn proto_word(proto: u8) -> &'static str {
    match proto {
        PROTO_TCP => "tcp",
        PROTO_UDP => "udp",
        PROTO_ICMP => "icmp",
        PROTO_ICMPV6 => "icmpv6",
        _ => "ip",
    }
}

pub fn tcp_flag_names(flags: u8) -> String {
    let names: Vec<&str> = [(TCP_SYN, "SYN"), (TCP_ACK, "ACK"), (TCP_FIN, "FIN"), (TCP_RST, "RST"), (TCP_PSH, "PSH")]
        .into_iter()
        .filter(|(b, _)| flags & b != 0)
        .map(|(_, n)| n)
        .collect();
    names.join(",")
}

/// Reads an Ethernet frame with an IPv4 or IPv6 packet (no extension headers); `None` when it
/// is something else or cut short.
pub fn read(f: &[u8]) -> Option<Seen> {
    let ethertype = u16::from_be_bytes([*f.get(12)?, *f.get(13)?]);
    let (proto, src, dst, l3_ok, l4) = match ethertype {
        ETHERTYPE_IPV4 => {
            let h = f.get(ETH_LEN..ETH_LEN + 20)?;
            let ihl = usize::from(h[0] & 0x0f) * 4;
            let total = usize::from(u16::from_be_bytes([h[2], h[3]]));
            let hdr = f.get(ETH_LEN..ETH_LEN + ihl)?;
            let s = IpAddr::from(<[u8; 4]>::try_from(&h[12..16]).ok()?);
            let d = IpAddr::from(<[u8; 4]>::try_from(&h[16..20]).ok()?);
            (h[9], s, d, checksum(hdr, 0) == 0, f.get(ETH_LEN + ihl..ETH_LEN + total)?)
        }
        ETHERTYPE_IPV6 => {
            let h = f.get(ETH_LEN..ETH_LEN + 40)?;
            let len = usize::from(u16::from_be_bytes([h[4], h[5]]));
            let s = IpAddr::from(<[u8; 16]>::try_from(&h[8..24]).ok()?);
            let d = IpAddr::from(<[u8; 16]>::try_from(&h[24..40]).ok()?);
            (h[6], s, d, true, f.get(ETH_LEN + 40..ETH_LEN + 40 + len)?)
        }
        _ => return None,
    };
    let pseudo = pseudo_header_sum(src, dst, proto, l4.len());
    let (ports, tcp_flags, icmp, l4_ok) = match proto {
        PROTO_TCP => {
            let t = l4.get(..20)?;
            let ports = (u16::from_be_bytes([t[0], t[1]]), u16::from_be_bytes([t[2], t[3]]));
            (Some(ports), t[13], None, checksum(l4, pseudo) == 0)
        }
        PROTO_UDP => {
            let u = l4.get(..8)?;
            let ports = (u16::from_be_bytes([u[0], u[1]]), u16::from_be_bytes([u[2], u[3]]));
            let ok = (src.is_ipv4() && u[6] == 0 && u[7] == 0) || checksum(l4, pseudo) == 0;
            (Some(ports), 0, None, ok)
        }
        PROTO_ICMP => (None, 0, Some((*l4.first()?, *l4.get(1)?)), checksum(l4, 0) == 0),
        PROTO_ICMPV6 => (None, 0, Some((*l4.first()?, *l4.get(1)?)), checksum(l4, pseudo) == 0),
        _ => (None, 0, None, true),
    };
    Some(Seen { proto, src, dst, ports, tcp_flags, icmp, checksums_ok: l3_ok && l4_ok })
}

/// The ones' complement sum of `data` folded onto `initial`, complemented (RFC 1071): 0 when a
/// region with its checksum in place is valid.
fn checksum(data: &[u8], initial: u32) -> u16 {
    let mut sum = u64::from(initial);
    let mut chunks = data.chunks_exact(2);
    for c in &mut chunks {
        sum += u64::from(u16::from_be_bytes([c[0], c[1]]));
    }
    if let [last] = chunks.remainder() {
        sum += u64::from(*last) << 8;
    }
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// The unfolded sum of the TCP/UDP/ICMPv6 pseudo-header.
fn pseudo_header_sum(src: IpAddr, dst: IpAddr, proto: u8, len: usize) -> u32 {
    let words = |b: &[u8]| b.chunks(2).map(|c| u32::from(u16::from_be_bytes([c[0], c[1]]))).sum::<u32>();
    let addrs = match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => words(&s.octets()) + words(&d.octets()),
        (s, d) => words(&v6_octets(s)) + words(&v6_octets(d)),
    };
    addrs + u32::from(proto) + len as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn built_frames_read_back_with_valid_checksums() {
        for (src, dst) in [("10.244.0.12:40000", "10.96.0.10:80"), ("[fd00:10:244::c]:40000", "[fd00:10:96::a]:80")] {
            let (src, dst): (SocketAddr, SocketAddr) = (src.parse().unwrap(), dst.parse().unwrap());
            for (proto, flags) in [(PROTO_TCP, TCP_SYN), (PROTO_TCP, TCP_ACK | TCP_PSH), (PROTO_UDP, 0)] {
                let seen = read(&build(proto, src, dst, flags)).unwrap();
                assert!(seen.checksums_ok, "{}", seen.describe());
                assert_eq!((seen.src, seen.dst, seen.ports), (src.ip(), dst.ip(), Some((src.port(), dst.port()))));
                assert_eq!(seen.tcp_flags, flags);
            }
        }
    }

    #[test]
    fn a_changed_byte_breaks_the_checksum() {
        let mut f = build(PROTO_TCP, "10.0.0.1:1".parse().unwrap(), "10.0.0.2:2".parse().unwrap(), TCP_SYN);
        let n = f.len();
        f[n - 1] ^= 0x10;
        assert!(!read(&f).unwrap().checksums_ok);
    }

    #[test]
    fn descriptions_name_protocol_addresses_and_flags() {
        let f = build(PROTO_TCP, "10.0.0.1:40000".parse().unwrap(), "10.96.0.10:80".parse().unwrap(), TCP_SYN);
        assert_eq!(read(&f).unwrap().describe(), "tcp 10.0.0.1:40000 -> 10.96.0.10:80 [SYN]");
    }
}
