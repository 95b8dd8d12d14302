//! Test frames for both address families: Ethernet + IPv4 (options allowed) or IPv6 (extension
//! headers allowed) + TCP, UDP or an ICMP/ICMPv6 error, built with correct checksums
//! ([`build`]), and what the datapath returns, read back and checked ([`parse`]).
//!
//! One vocabulary for both families. Builders are nouns named after what they make
//! (`tcp_frame`, `udp_datagram`, `icmp_error`, `quoted_tcp`, ...) and take [`IpAddr`]s and
//! endpoints that are anything `Into<SocketAddr>` (`(Ipv4Addr, u16)`, `(IpAddr, u16)`, a
//! `SocketAddr`): the addresses' family picks the IP version. Parsers are `parse_*` and return
//! family-neutral values ([`Flow`] with `SocketAddr`s, [`IpHeader`] with `IpAddr`s). Checks are
//! `verify_*` and say what is wrong. What only one family has is named after it: `ipv4_header`,
//! `ipv4_frame` (options, identification, flags) and `fix_ipv4_header_checksum`, and
//! `ipv6_frame` with its `ipv6_*_header`s.

mod build;
mod parse;

use std::net::IpAddr;

pub use build::*;
pub use parse::*;

/// IP protocol numbers (IPv4 protocol, IPv6 next header).
pub const PROTO_ICMP: u8 = 1;
pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;
pub const PROTO_ICMPV6: u8 = 58;
/// IPv6 extension headers (next header values).
pub const NEXT_HOP_BY_HOP: u8 = 0;
pub const NEXT_ROUTING: u8 = 43;
pub const NEXT_FRAGMENT: u8 = 44;
pub const NEXT_AH: u8 = 51;
pub const NEXT_DEST_OPTIONS: u8 = 60;

/// TCP flags.
pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_ACK: u8 = 0x10;

/// ICMP (IPv4) error types and codes.
pub const ICMP_DEST_UNREACH: u8 = 3;
pub const ICMP_PORT_UNREACH: u8 = 3;
pub const ICMP_FRAG_NEEDED: u8 = 4;
pub const ICMP_TIME_EXCEEDED: u8 = 11;
pub const ICMP_PARAMETER_PROBLEM: u8 = 12;
/// ICMPv6 error types and codes.
pub const ICMPV6_DEST_UNREACH: u8 = 1;
pub const ICMPV6_PORT_UNREACH: u8 = 4;
pub const ICMPV6_PACKET_TOO_BIG: u8 = 2;
pub const ICMPV6_TIME_EXCEEDED: u8 = 3;
pub const ICMPV6_PARAMETER_PROBLEM: u8 = 4;

/// The source MAC of every built frame.
pub const MAC_SRC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
/// The destination MAC of every built frame.
pub const MAC_DST: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];
pub const ETHERTYPE_IPV4: u16 = 0x0800;
pub const ETHERTYPE_IPV6: u16 = 0x86dd;
/// The Ethernet header: where the IP header of a frame starts.
pub const ETH_HEADER_LEN: usize = 14;
/// IP headers without options or extension headers.
pub const IPV4_HEADER_LEN: usize = 20;
pub const IPV6_HEADER_LEN: usize = 40;

/// Internet checksum of `data` with an initial sum (e.g. a pseudo-header's).
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

/// The sum of the pseudo-header that TCP, UDP and ICMPv6 checksums cover: both addresses (4 or
/// 16 bytes each), the upper-layer protocol and length.
pub fn pseudo_header_sum(src: IpAddr, dst: IpAddr, proto: u8, len: usize) -> u32 {
    let words = |ip: IpAddr| -> Vec<u8> {
        match ip {
            IpAddr::V4(a) => a.octets().to_vec(),
            IpAddr::V6(a) => a.octets().to_vec(),
        }
    };
    assert_eq!(src.is_ipv4(), dst.is_ipv4(), "{src} → {dst}: a pseudo-header has one family");
    let addresses: u32 = [words(src), words(dst)].concat().chunks(2).map(|w| u32::from(u16::from_be_bytes([w[0], w[1]]))).sum();
    addresses + u32::from(proto) + (len as u32 >> 16) + (len as u32 & 0xffff)
}

#[cfg(test)]
mod tests;
