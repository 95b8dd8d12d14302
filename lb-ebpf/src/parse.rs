//! Packet parsing: one bounds-checked cursor, one pass, into a [`Packet`] description. No map is
//! looked up and no byte is written before parsing is complete.
//!
//! # Malformed-packet policy (tested by the fixtures)
//! - Not IPv4 (other ethertype, including VLAN-tagged frames): pass untouched.
//! - IPv4 header that is truncated, has version != 4, IHL < 5, or a total length shorter than
//!   its header: pass untouched (`CNT_PASS_BAD_L3`); the kernel's IP input validates and drops
//!   these, and we never look anything up from garbage.
//! - IPv4 options: honoured (the L4 header is found through IHL).
//! - TCP/UDP whose L4 header is truncated, and IPv4 fragments: translated never; dropped if the
//!   destination is a service address (`CNT_DROP_BAD_L4`, `CNT_DROP_FRAGMENT`), passed
//!   untouched otherwise. Leaking untranslated packets to a virtual IP is never an option.

use core::mem::size_of;

use lb_common::{IPPROTO_TCP, IPPROTO_UDP, v4_mapped};

pub const ETH_HLEN: usize = 14;
pub const ETH_P_IP: u16 = 0x0800;
const IPV4_MIN_HLEN: usize = 20;

/// Ethernet header as on the wire.
#[repr(C)]
pub struct EthHdr {
    pub dst: [u8; 6],
    pub src: [u8; 6],
    /// Network byte order, compared as a raw integer (never transmuted into an enum).
    pub ether_type_be: u16,
}

/// IPv4 header as on the wire (without options).
#[repr(C)]
pub struct Ipv4Hdr {
    pub version_ihl: u8,
    pub tos: u8,
    pub tot_len_be: u16,
    pub id_be: u16,
    pub frag_off_be: u16,
    pub ttl: u8,
    pub proto: u8,
    pub check: u16,
    pub saddr: [u8; 4],
    pub daddr: [u8; 4],
}

/// The first bytes of TCP and UDP headers: the ports.
#[repr(C)]
pub struct L4Ports {
    pub sport_be: u16,
    pub dport_be: u16,
}

/// Byte offset of the checksum field inside the L4 header.
pub const TCP_CSUM_OFF: usize = 16;
pub const UDP_CSUM_OFF: usize = 6;
const TCP_MIN_HLEN: usize = 20;
const UDP_HLEN: usize = 8;
pub const IPV4_CSUM_OFF: usize = 10;
pub const IPV4_SADDR_OFF: usize = 12;
pub const IPV4_DADDR_OFF: usize = 16;

pub const TCP_FLAG_FIN: u8 = 0x01;
pub const TCP_FLAG_SYN: u8 = 0x02;
pub const TCP_FLAG_RST: u8 = 0x04;
pub const TCP_FLAG_ACK: u8 = 0x10;

/// A stateful bounds-checked reader over `[data, data_end)`. Every read checks
/// `data + off + size_of::<T>() <= data_end` right before it: the verifier needs the check next
/// to the access, and so do we.
pub struct Cursor {
    data: usize,
    data_end: usize,
    pub off: usize,
}

impl Cursor {
    #[inline(always)]
    pub fn new(data: usize, data_end: usize) -> Self {
        Self {
            data,
            data_end,
            off: 0,
        }
    }

    /// A pointer to a `T` at the current offset, advancing past it.
    #[inline(always)]
    pub fn take<T>(&mut self) -> Option<*const T> {
        let p = self.peek_at::<T>(self.off)?;
        self.off += size_of::<T>();
        Some(p)
    }

    /// A pointer to a `T` at absolute offset `off`, without moving.
    #[inline(always)]
    pub fn peek_at<T>(&self, off: usize) -> Option<*const T> {
        let start = self.data + off;
        if start + size_of::<T>() > self.data_end {
            return None;
        }
        Some(start as *const T)
    }
}

/// What parsing found.
pub enum Parsed {
    /// Not IPv4.
    NotIp,
    /// IPv4 header invalid or truncated.
    BadL3,
    /// Valid IPv4 header.
    Ip(Packet),
}

/// An IPv4 packet's flow description plus the offsets the rewrite needs.
pub struct Packet {
    pub src: [u8; 16],
    pub dst: [u8; 16],
    pub src_v4: [u8; 4],
    pub dst_v4: [u8; 4],
    pub sport_be: u16,
    pub dport_be: u16,
    pub proto: u8,
    pub tcp_flags: u8,
    /// TCP or UDP with a complete L4 header and not a fragment: ports are valid.
    pub has_ports: bool,
    /// More-fragments set or a non-zero fragment offset.
    pub is_fragment: bool,
    /// TCP/UDP header shorter than its minimum.
    pub l4_truncated: bool,
    /// Offset of the IPv4 header.
    pub l3_off: usize,
    /// Offset of the L4 header (after IPv4 options).
    pub l4_off: usize,
    /// IPv4 total length (bytes counted per service).
    pub ip_len: u32,
}

/// Parses Ethernet + IPv4 + the TCP/UDP ports.
#[inline(always)]
pub fn parse(data: usize, data_end: usize) -> Parsed {
    let mut c = Cursor::new(data, data_end);
    let Some(eth) = c.take::<EthHdr>() else {
        return Parsed::NotIp;
    };
    // SAFETY: `take` checked the bounds; packet memory may be unaligned.
    let ether_type = u16::from_be(unsafe { core::ptr::read_unaligned(eth) }.ether_type_be);
    if ether_type != ETH_P_IP {
        return Parsed::NotIp;
    }
    let l3_off = c.off;
    let Some(ip) = c.take::<Ipv4Hdr>() else {
        return Parsed::BadL3;
    };
    // SAFETY: bounds checked by `take`.
    let ip = unsafe { core::ptr::read_unaligned(ip) };
    let ihl = usize::from(ip.version_ihl & 0x0f) * 4;
    let tot_len = usize::from(u16::from_be(ip.tot_len_be));
    if ip.version_ihl >> 4 != 4 || ihl < IPV4_MIN_HLEN || tot_len < ihl {
        return Parsed::BadL3;
    }
    // Options must be present in the packet too.
    if c.peek_at::<u8>(l3_off + ihl - 1).is_none() {
        return Parsed::BadL3;
    }
    let l4_off = l3_off + ihl;
    let frag = u16::from_be(ip.frag_off_be);
    // MF flag (0x2000) or a fragment offset (low 13 bits).
    let is_fragment = frag & 0x3fff != 0;

    let mut p = Packet {
        src: v4_mapped(ip.saddr),
        dst: v4_mapped(ip.daddr),
        src_v4: ip.saddr,
        dst_v4: ip.daddr,
        sport_be: 0,
        dport_be: 0,
        proto: ip.proto,
        tcp_flags: 0,
        has_ports: false,
        is_fragment,
        l4_truncated: false,
        l3_off,
        l4_off,
        ip_len: tot_len as u32,
    };
    if is_fragment {
        return Parsed::Ip(p);
    }
    let min_l4 = match ip.proto {
        IPPROTO_TCP => TCP_MIN_HLEN,
        IPPROTO_UDP => UDP_HLEN,
        _ => return Parsed::Ip(p),
    };
    // The whole minimal L4 header (so the checksum field is inside the packet), and within the
    // IP total length.
    if c.peek_at::<u8>(l4_off + min_l4 - 1).is_none() || tot_len < ihl + min_l4 {
        p.l4_truncated = true;
        return Parsed::Ip(p);
    }
    let Some(ports) = c.peek_at::<L4Ports>(l4_off) else {
        p.l4_truncated = true;
        return Parsed::Ip(p);
    };
    // SAFETY: bounds checked by `peek_at`.
    let ports = unsafe { core::ptr::read_unaligned(ports) };
    p.sport_be = ports.sport_be;
    p.dport_be = ports.dport_be;
    if ip.proto == IPPROTO_TCP {
        if let Some(flags) = c.peek_at::<u8>(l4_off + 13) {
            // SAFETY: bounds checked by `peek_at`.
            p.tcp_flags = unsafe { *flags };
        }
    }
    p.has_ports = true;
    Parsed::Ip(p)
}
