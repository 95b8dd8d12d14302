//! Packet parsing: one bounds-checked cursor, one pass, into a [`Packet`] description. No map is
//! looked up and no byte is written before parsing is complete.
//!
//! # Malformed-packet and fragment policy (tested by the fixtures)
//! - Not IPv4 (other ethertype, including VLAN-tagged frames): pass untouched.
//! - IPv4 header that is truncated, has version != 4, IHL < 5, or a total length shorter than
//!   its header: pass untouched (`CNT_PASS_BAD_L3`); the kernel's IP input validates and drops
//!   these, and nothing is looked up from garbage.
//! - IPv4 options: honoured (the L4 header is found through IHL).
//! - Fragments: the first fragment carries the ports and is translated like any packet; its
//!   ports are remembered by (source, destination, IP id, protocol) so that later fragments,
//!   which carry no ports, get the same translation (`CNT_FRAG_FOLLOWED`). A later fragment
//!   whose first fragment was not seen is dropped if it is addressed to a service
//!   (`CNT_DROP_FRAGMENT`) and passed untouched otherwise.
//! - TCP/UDP whose L4 header is truncated: dropped if addressed to a service
//!   (`CNT_DROP_BAD_L4`), passed untouched otherwise. Nothing addressed to a service address
//!   ever leaves untranslated.

use core::mem::size_of;

use lb_common::{IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP};

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

/// Offsets inside headers.
pub const TCP_CSUM_OFF: usize = 16;
pub const UDP_CSUM_OFF: usize = 6;
pub const TCP_MIN_HLEN: usize = 20;
pub const UDP_HLEN: usize = 8;
pub const ICMP_HLEN: usize = 8;
pub const IPV4_CSUM_OFF: usize = 10;
pub const IPV4_SADDR_OFF: usize = 12;
pub const IPV4_DADDR_OFF: usize = 16;

pub const TCP_FLAG_FIN: u8 = 0x01;
pub const TCP_FLAG_SYN: u8 = 0x02;
pub const TCP_FLAG_RST: u8 = 0x04;
pub const TCP_FLAG_ACK: u8 = 0x10;

pub const ICMP_DEST_UNREACH: u8 = 3;
pub const ICMP_TIME_EXCEEDED: u8 = 11;
pub const ICMP_PARAMETERPROB: u8 = 12;

/// A stateful bounds-checked reader over `[data, data_end)`. Every read checks
/// `data + off + size_of::<T>() <= data_end` right before it: the verifier needs the check next
/// to the access.
pub struct Cursor {
    data: usize,
    data_end: usize,
    pub off: usize,
}

impl Cursor {
    #[inline(always)]
    pub fn new(data: usize, data_end: usize) -> Self {
        Self { data, data_end, off: 0 }
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
        ptr_at(self.data, self.data_end, off)
    }
}

/// A pointer to a `T` at `data + off`, if it lies inside the packet.
#[inline(always)]
pub fn ptr_at<T>(data: usize, data_end: usize, off: usize) -> Option<*const T> {
    let start = data + off;
    if start + size_of::<T>() > data_end {
        return None;
    }
    Some(start as *const T)
}

/// Mutable counterpart of [`ptr_at`].
#[inline(always)]
pub fn ptr_at_mut<T>(data: usize, data_end: usize, off: usize) -> Option<*mut T> {
    ptr_at::<T>(data, data_end, off).map(|p| p as *mut T)
}

/// What parsing found.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Parsed {
    /// Not IPv4.
    NotIp,
    /// IPv4 header invalid or truncated.
    BadL3,
    /// Valid IPv4 header: the packet description was written.
    Ip,
}

/// The packet an ICMP error quotes (as it was sent by whoever the error goes back to).
#[derive(Clone, Copy, Default)]
pub struct Inner {
    pub src: [u8; 4],
    pub dst: [u8; 4],
    pub sport_be: u16,
    pub dport_be: u16,
    pub proto: u8,
    /// Offset of the quoted IPv4 header (header offsets are all below 256: one byte keeps
    /// this struct small on the BPF stack).
    pub l3_off: u8,
    /// Offset of the quoted L4 header.
    pub l4_off: u8,
}

/// An IPv4 packet's flow description plus the offsets a rewrite needs. Kept small: it lives on
/// the 512-byte BPF stack next to the map keys.
#[derive(Clone, Copy, Default)]
pub struct Packet {
    pub src: [u8; 4],
    pub dst: [u8; 4],
    pub sport_be: u16,
    pub dport_be: u16,
    pub ip_id_be: u16,
    pub proto: u8,
    pub tcp_flags: u8,
    /// Ports are known: from the L4 header, or from the fragment table for later fragments.
    pub has_ports: bool,
    /// The TCP/UDP header is in this packet (false for later fragments).
    pub l4_in_packet: bool,
    /// First fragment of a fragmented datagram (offset 0, more-fragments set).
    pub frag_first: bool,
    /// A later fragment (non-zero offset).
    pub frag_later: bool,
    /// TCP/UDP header shorter than its minimum.
    pub l4_truncated: bool,
    /// An ICMP error quoting a TCP/UDP packet: `icmp` is valid. (Not an `Option<Inner>`: the
    /// undefined payload of a `None` compiles to reads of uninitialised registers, which the
    /// verifier rejects.)
    pub is_icmp_error: bool,
    pub icmp: Inner,
    /// IPv4 header length in bytes.
    pub ihl: u8,
    /// Offset of the IPv4 header.
    pub l3_off: u8,
    /// Offset of the L4 header (after IPv4 options).
    pub l4_off: u8,
    /// IPv4 total length (bytes counted per service).
    pub ip_len: u32,
}

/// Parses Ethernet + IPv4 + the TCP/UDP ports (or the flow an ICMP error quotes). A BPF
/// subprogram of its own: its temporaries stay off the entry point's stack frame.
#[inline(never)]
pub fn parse(data: usize, data_end: usize, out: &mut Packet) -> Parsed {
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
    let offset = frag & 0x1fff;
    let more = frag & 0x2000 != 0;

    let p = out;
    *p = Packet {
        src: ip.saddr,
        dst: ip.daddr,
        sport_be: 0,
        dport_be: 0,
        ip_id_be: ip.id_be,
        proto: ip.proto,
        tcp_flags: 0,
        has_ports: false,
        l4_in_packet: false,
        frag_first: offset == 0 && more,
        frag_later: offset != 0,
        l4_truncated: false,
        is_icmp_error: false,
        icmp: Inner::default(),
        ihl: ihl as u8,
        l3_off: l3_off as u8,
        l4_off: l4_off as u8,
        ip_len: tot_len as u32,
    };
    if p.frag_later {
        return Parsed::Ip;
    }
    match ip.proto {
        IPPROTO_TCP | IPPROTO_UDP => {}
        IPPROTO_ICMP => {
            if !p.frag_first {
                if let Some(inner) = parse_icmp_error(&c, l4_off, tot_len - ihl) {
                    p.icmp = inner;
                    p.is_icmp_error = true;
                }
            }
            return Parsed::Ip;
        }
        _ => return Parsed::Ip,
    }
    let min_l4 = if ip.proto == IPPROTO_TCP { TCP_MIN_HLEN } else { UDP_HLEN };
    // The whole minimal L4 header (so the checksum field is inside the packet), and within the
    // IP total length.
    if c.peek_at::<u8>(l4_off + min_l4 - 1).is_none() || tot_len < ihl + min_l4 {
        p.l4_truncated = true;
        return Parsed::Ip;
    }
    let Some(ports) = c.peek_at::<L4Ports>(l4_off) else {
        p.l4_truncated = true;
        return Parsed::Ip;
    };
    // SAFETY: bounds checked by `peek_at`.
    let ports = unsafe { core::ptr::read_unaligned(ports) };
    p.sport_be = ports.sport_be;
    p.dport_be = ports.dport_be;
    if ip.proto == IPPROTO_TCP {
        // Two bytes (data offset, flags): a one-byte bound check compiles to a form the
        // verifier cannot use.
        if let Some(w) = c.peek_at::<[u8; 2]>(l4_off + 12) {
            // SAFETY: bounds checked by `peek_at`.
            p.tcp_flags = unsafe { core::ptr::read_unaligned(w) }[1];
        }
    }
    p.has_ports = true;
    p.l4_in_packet = true;
    Parsed::Ip
}

/// An ICMP destination-unreachable, time-exceeded or parameter-problem message quoting the
/// IPv4 header and the first 8 bytes (the ports) of a TCP or UDP packet.
#[inline(always)]
fn parse_icmp_error(c: &Cursor, icmp_off: usize, icmp_len: usize) -> Option<Inner> {
    // Type and code together (see the TCP flags read above).
    let ty = c.peek_at::<[u8; 2]>(icmp_off)?;
    // SAFETY: bounds checked by `peek_at`.
    let ty = unsafe { core::ptr::read_unaligned(ty) }[0];
    if ty != ICMP_DEST_UNREACH && ty != ICMP_TIME_EXCEEDED && ty != ICMP_PARAMETERPROB {
        return None;
    }
    let inner_l3 = icmp_off + ICMP_HLEN;
    let ip = c.peek_at::<Ipv4Hdr>(inner_l3)?;
    // SAFETY: bounds checked by `peek_at`.
    let ip = unsafe { core::ptr::read_unaligned(ip) };
    let ihl = usize::from(ip.version_ihl & 0x0f) * 4;
    if ip.version_ihl >> 4 != 4 || ihl < IPV4_MIN_HLEN || ihl > 60 {
        return None;
    }
    if ip.proto != IPPROTO_TCP && ip.proto != IPPROTO_UDP {
        return None;
    }
    let inner_l4 = inner_l3 + ihl;
    if icmp_len < ICMP_HLEN + ihl + 8 {
        return None;
    }
    let ports = c.peek_at::<L4Ports>(inner_l4)?;
    // The 8 quoted L4 bytes must be there (we may rewrite the UDP checksum at offset 6).
    c.peek_at::<[u8; 8]>(inner_l4)?;
    // SAFETY: bounds checked by `peek_at`.
    let ports = unsafe { core::ptr::read_unaligned(ports) };
    Some(Inner {
        src: ip.saddr,
        dst: ip.daddr,
        sport_be: ports.sport_be,
        dport_be: ports.dport_be,
        proto: ip.proto,
        l3_off: inner_l3 as u8,
        l4_off: inner_l4 as u8,
    })
}
