//! Packet parsing: one bounds-checked cursor, one pass, into a [`Packet`] description. No map is
//! looked up and no byte is written before parsing is complete, apart from the address filter's
//! pre-read ([`filter_addrs`]: the addresses of a packet whose fate the filter alone decides, so
//! most packets that are none of ours pass without being parsed into the scratch space). IPv4
//! and IPv6 parse into the same description, with 16-byte addresses (IPv4-mapped for IPv4), so
//! everything after parsing is family-independent except the rewrite itself.
//!
//! # Malformed-packet and fragment policy (tested by the fixtures)
//! - Neither IPv4 nor IPv6 (other ethertypes, including VLAN-tagged frames): pass untouched.
//! - IPv6 extension headers: hop-by-hop options, routing and destination options headers are
//!   skipped (up to 4, and only while the L4 header stays within the first 255 bytes); a
//!   fragment header is handled like IPv4 fragmentation (below). Any other chain (AH, ESP, more
//!   headers, truncated) leaves the packet without ports: dropped if addressed to a service,
//!   passed untouched otherwise.
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

use lb_common::{CtKey, IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP, v4_mapped};

pub const ETH_HLEN: usize = 14;
pub const ETH_P_IP: u16 = 0x0800;
pub const ETH_P_IPV6: u16 = 0x86dd;
pub const IPV6_HLEN: usize = 40;
const IPV4_MIN_HLEN: usize = 20;
/// The third 32-bit word of an IPv4-mapped address (`::ffff:a.b.c.d`), as it lies in memory.
const V4_MAPPED_WORD: u32 = u32::from_ne_bytes([0, 0, 0xff, 0xff]);

/// The 32-bit words of the IPv4-mapped form of `a`, as [`Packet::addr_words`] reads them.
#[inline(always)]
fn v4_mapped_words(a: [u8; 4]) -> [u32; 4] {
    [0, 0, V4_MAPPED_WORD, u32::from_ne_bytes(a)]
}

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

/// IPv6 header as on the wire.
#[repr(C)]
pub struct Ipv6Hdr {
    pub vtc_flow: [u8; 4],
    pub payload_len_be: u16,
    pub nexthdr: u8,
    pub hop_limit: u8,
    pub saddr: [u8; 16],
    pub daddr: [u8; 16],
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
pub const IPV6_SADDR_OFF: usize = 8;
pub const IPV6_DADDR_OFF: usize = 24;

pub const IPPROTO_ICMPV6: u8 = 58;
pub const ICMPV6_DEST_UNREACH: u8 = 1;
pub const ICMPV6_PKT_TOOBIG: u8 = 2;
pub const ICMPV6_TIME_EXCEED: u8 = 3;
pub const ICMPV6_PARAMPROB: u8 = 4;
const NEXTHDR_HOP: u8 = 0;
const NEXTHDR_ROUTING: u8 = 43;
const NEXTHDR_FRAGMENT: u8 = 44;
const NEXTHDR_DEST: u8 = 60;

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
    /// Neither IPv4 nor IPv6.
    NotIp,
    /// IP header invalid or truncated.
    BadL3,
    /// Valid IP header: the packet description was written.
    Ip,
}

/// The packet an ICMP error quotes (as it was sent by whoever the error goes back to). Aligned
/// to 4: its addresses are copied with word moves (`nat::copy_addr`).
#[repr(C, align(4))]
#[derive(Clone, Copy, Default)]
pub struct Inner {
    pub src: [u8; 16],
    pub dst: [u8; 16],
    pub sport_be: u16,
    pub dport_be: u16,
    pub proto: u8,
    /// Offset of the quoted IP header (header offsets are all below 256: one byte keeps this
    /// struct small on the BPF stack).
    pub l3_off: u8,
    /// Offset of the quoted L4 header.
    pub l4_off: u8,
}

/// A packet's flow description plus the offsets a rewrite needs. It lives in the per-CPU
/// scratch space (`scratch`), not on the 512-byte BPF stack, which could not hold it next to the
/// map keys of the deepest call chain.
///
/// It begins with the layout of a [`CtKey`]: the packet's own 5-tuple is its conntrack key
/// ([`Packet::flow_key`]), looked up without copying it anywhere.
#[repr(C, align(8))]
#[derive(Clone, Copy, Default)]
pub struct Packet {
    /// Addresses in the 16-byte format (IPv4-mapped for IPv4), network byte order.
    pub src: [u8; 16],
    pub dst: [u8; 16],
    pub sport_be: u16,
    pub dport_be: u16,
    pub proto: u8,
    /// `CtKey::dir` and its padding: written by [`Packet::flow_key`] (padding always 0).
    ct_dir: u8,
    ct_pad: [u8; 2],
    /// IPv4 identification, or the IPv6 fragment header's identification.
    pub frag_id: u32,
    pub tcp_flags: u8,
    pub is_v6: bool,
    /// Ports are known: from the L4 header, or from the fragment table for later fragments.
    pub has_ports: bool,
    /// The TCP/UDP header is in this packet (false for later fragments).
    pub l4_in_packet: bool,
    /// First fragment of a fragmented datagram (offset 0, more-fragments set).
    pub frag_first: bool,
    /// A later fragment (non-zero offset).
    pub frag_later: bool,
    /// TCP/UDP header shorter than its minimum, or an IPv6 header chain we do not follow.
    pub l4_truncated: bool,
    /// An ICMP or ICMPv6 error quoting a TCP/UDP packet: `icmp` is valid. (Not an
    /// `Option<Inner>`: the undefined payload of a `None` compiles to reads of uninitialised
    /// registers, which the verifier rejects.)
    pub is_icmp_error: bool,
    pub icmp: Inner,
    /// IP header length in bytes (IPv4 with options; 40 for IPv6).
    pub ihl: u8,
    /// Offset of the IP header.
    pub l3_off: u8,
    /// Offset of the L4 header (after IPv4 options or IPv6 extension headers).
    pub l4_off: u8,
    /// Datagram length: IPv4 total length, or IPv6 payload length + 40 (bytes counted per
    /// service).
    pub ip_len: u32,
}

// `Packet::flow_key` reads the packet's first 40 bytes as a `CtKey`.
const _: () = {
    use core::mem::{align_of, offset_of};
    assert!(offset_of!(Packet, src) == offset_of!(CtKey, src));
    assert!(offset_of!(Packet, dst) == offset_of!(CtKey, dst));
    assert!(offset_of!(Packet, sport_be) == offset_of!(CtKey, sport_be));
    assert!(offset_of!(Packet, dport_be) == offset_of!(CtKey, dport_be));
    assert!(offset_of!(Packet, proto) == offset_of!(CtKey, proto));
    assert!(offset_of!(Packet, ct_dir) == offset_of!(CtKey, dir));
    assert!(offset_of!(Packet, ct_pad) == offset_of!(CtKey, _pad));
    assert!(offset_of!(Packet, frag_id) >= size_of::<CtKey>());
    assert!(align_of::<Packet>() >= align_of::<CtKey>());
    assert!(offset_of!(Packet, src) == 0 && offset_of!(Packet, dst) == 16 && align_of::<Packet>() >= 4);
    // `Packet::reset`'s words: bytes 32..52 are these fields, packed.
    assert!(offset_of!(Packet, sport_be) == 32 && offset_of!(Packet, ct_pad) == 38);
    assert!(offset_of!(Packet, frag_id) == 40 && offset_of!(Packet, tcp_flags) == 44);
    assert!(offset_of!(Packet, is_v6) == 45 && offset_of!(Packet, has_ports) == 46 && offset_of!(Packet, l4_in_packet) == 47);
    assert!(offset_of!(Packet, frag_first) == 48 && offset_of!(Packet, frag_later) == 49);
    assert!(offset_of!(Packet, l4_truncated) == 50 && offset_of!(Packet, is_icmp_error) == 51);
    assert!(offset_of!(Packet, icmp) == 52 && align_of::<Packet>() == 8);
};

impl Packet {
    /// The packet's 5-tuple as the conntrack key of direction `dir` (`CT_DIR_*`): a forward
    /// entry is keyed by the packet as it arrives from the client, a reply entry by the reply as
    /// it arrives from the backend.
    #[inline(always)]
    pub fn flow_key(&mut self, dir: u8) -> &CtKey {
        self.ct_dir = dir;
        // SAFETY: `Packet` is `repr(C)`, at least as aligned as `CtKey`, and its first fields
        // are `CtKey`'s at the same offsets (asserted above), the padding always 0; every bit
        // pattern is a valid `CtKey`.
        unsafe { &*(self as *const Packet).cast::<CtKey>() }
    }

    /// Writes the IPv4-mapped forms (`::ffff:a.b.c.d`) of `src` and `dst` as eight aligned word
    /// stores (volatile: zero words merged into a `memset` would compile to a byte-loop call).
    #[inline(always)]
    fn set_v4_addrs(&mut self, src: [u8; 4], dst: [u8; 4]) {
        for (to, a) in [(&mut self.src, src), (&mut self.dst, dst)] {
            let w = (to as *mut [u8; 16]).cast::<u32>();
            let [w0, w1, w2, w3] = v4_mapped_words(a);
            // SAFETY: `Packet` is 8-aligned with `src` at 0 and `dst` at 16 (asserted above), so
            // both are 4-aligned; four words are the array's 16 bytes.
            unsafe {
                w.write_volatile(w0);
                w.add(1).write_volatile(w1);
                w.add(2).write_volatile(w2);
                w.add(3).write_volatile(w3);
            }
        }
    }

    /// The source and destination addresses as 32-bit words (four aligned loads each).
    #[inline(always)]
    pub fn addr_words(&self) -> ([u32; 4], [u32; 4]) {
        let (s, d) = ((&self.src as *const [u8; 16]).cast::<u32>(), (&self.dst as *const [u8; 16]).cast::<u32>());
        // SAFETY: `src` and `dst` are 4-aligned (asserted above); four words are 16 bytes.
        unsafe {
            (
                [s.read(), s.add(1).read(), s.add(2).read(), s.add(3).read()],
                [d.read(), d.add(1).read(), d.add(2).read(), d.add(3).read()],
            )
        }
    }

    /// Clears what a parse may leave unwritten (the addresses and offsets are always written;
    /// `icmp` is read only when `is_icmp_error`). In three volatile word stores over the fields
    /// packed at bytes 32..52 and two byte stores: an aggregate reset compiles to a call of the
    /// BPF `memset`, a byte loop, which cost more than the whole rest of a non-service packet's
    /// path, and sixteen field stores were 2 ns of it.
    #[inline(always)]
    fn reset(&mut self) {
        let base = (self as *mut Self).cast::<u8>();
        // SAFETY: `Packet` is 8-aligned; bytes 32..52 hold exactly the ports, `proto`, `ct_dir`,
        // `ct_pad`, `frag_id`, `tcp_flags` and the seven flags (checked below), plain integers
        // and bools for which zero bytes are 0 and false; the words are aligned.
        unsafe {
            core::ptr::write_volatile(base.add(32).cast::<u64>(), 0);
            core::ptr::write_volatile(base.add(40).cast::<u64>(), 0);
            core::ptr::write_volatile(base.add(48).cast::<u32>(), 0);
            core::ptr::write_volatile(&mut self.ihl, 0);
            core::ptr::write_volatile(&mut self.l4_off, 0);
        }
    }
}

/// `filter` of the source and destination of a packet for which the address filter alone
/// decides (as the 32-bit words of their 16-byte forms, as [`Packet::addr_words`] gives them
/// after [`parse`]), read straight from the headers before anything is written: a valid IPv4
/// header carrying anything but ICMP, or an IPv6 header (no IPv4-mapped address) followed
/// directly by TCP or UDP. For such a packet `parse` would return [`Parsed::Ip`] with no ICMP
/// error, so if neither address is ours the verdict is a plain pass, whatever else the packet
/// holds. `None`: the full parse decides.
#[inline(always)]
pub fn filter_addrs<R>(data: usize, data_end: usize, filter: impl FnOnce([u32; 4], [u32; 4]) -> R) -> Option<R> {
    let mut c = Cursor::new(data, data_end);
    let eth = c.take::<EthHdr>()?;
    // SAFETY: bounds checked by `take`; unaligned reads of packet memory.
    let ether_type = u16::from_be(unsafe { core::ptr::read_unaligned(core::ptr::addr_of!((*eth).ether_type_be)) });
    if ether_type == ETH_P_IP {
        let Ipv4Fields { proto, saddr, daddr, .. } = ipv4_fields(&c, c.off)?;
        if proto == IPPROTO_ICMP {
            return None;
        }
        return Some(filter(v4_mapped_words(saddr), v4_mapped_words(daddr)));
    }
    if ether_type != ETH_P_IPV6 {
        return None;
    }
    v6_filter_addrs(data, data_end, filter)
}

/// [`filter_addrs`] of IPv6 (after the Ethernet header): a subprogram of its own, whose eight
/// address words stay off the entry point's stack frame.
#[inline(never)]
fn v6_filter_addrs<R>(data: usize, data_end: usize, filter: impl FnOnce([u32; 4], [u32; 4]) -> R) -> Option<R> {
    let ip = ptr_at::<Ipv6Hdr>(data, data_end, ETH_HLEN)?;
    // SAFETY: as above; the addresses are read as unaligned words.
    let (vtc0, next, s, d) = unsafe {
        use core::ptr::{addr_of, read_unaligned};
        let words = |a: *const [u8; 16]| {
            let w = a.cast::<[u8; 4]>();
            [0, 1, 2, 3].map(|i| u32::from_ne_bytes(read_unaligned(w.add(i))))
        };
        (
            read_unaligned(addr_of!((*ip).vtc_flow))[0],
            read_unaligned(addr_of!((*ip).nexthdr)),
            words(addr_of!((*ip).saddr)),
            words(addr_of!((*ip).daddr)),
        )
    };
    let mapped = |w: [u32; 4]| w[0] == 0 && w[1] == 0 && w[2] == V4_MAPPED_WORD;
    if vtc0 >> 4 != 6 || mapped(s) || mapped(d) || (next != IPPROTO_TCP && next != IPPROTO_UDP) {
        return None;
    }
    Some(filter(s, d))
}

/// Parses Ethernet + IPv4 or IPv6 + the TCP/UDP ports (or the flow an ICMP error quotes). A BPF
/// subprogram of its own: its temporaries stay off the entry point's stack frame.
#[inline(never)]
pub fn parse(data: usize, data_end: usize, out: &mut Packet) -> Parsed {
    let mut c = Cursor::new(data, data_end);
    let Some(eth) = c.take::<EthHdr>() else {
        return Parsed::NotIp;
    };
    // SAFETY: `take` checked the bounds; packet memory may be unaligned.
    let ether_type = u16::from_be(unsafe { core::ptr::read_unaligned(eth) }.ether_type_be);
    out.reset();
    match ether_type {
        ETH_P_IP => parse_v4(&c, out),
        ETH_P_IPV6 => parse_v6(&c, out),
        _ => Parsed::NotIp,
    }
}

/// What parsing uses of an IPv4 header.
struct Ipv4Fields {
    /// Header length in bytes (with options).
    ihl: usize,
    tot_len: usize,
    id_be: u16,
    frag_off_be: u16,
    proto: u8,
    saddr: [u8; 4],
    daddr: [u8; 4],
}

/// The IPv4 header at `l3_off`, if valid; `None` is [`Parsed::BadL3`]: cut short, version other
/// than 4, IHL below 5, a total length shorter than the header, or options beyond the packet.
#[inline(always)]
fn ipv4_fields(c: &Cursor, l3_off: usize) -> Option<Ipv4Fields> {
    let hdr = c.peek_at::<Ipv4Hdr>(l3_off)?;
    // Only the fields used, each read where it lies (a copy of the whole header costs a load
    // and a store per byte). SAFETY: bounds checked by `peek_at`; unaligned reads.
    let (version_ihl, tot_len_be, id_be, frag_off_be, proto, saddr, daddr) = unsafe {
        use core::ptr::{addr_of, read_unaligned};
        (
            read_unaligned(addr_of!((*hdr).version_ihl)),
            read_unaligned(addr_of!((*hdr).tot_len_be)),
            read_unaligned(addr_of!((*hdr).id_be)),
            read_unaligned(addr_of!((*hdr).frag_off_be)),
            read_unaligned(addr_of!((*hdr).proto)),
            read_unaligned(addr_of!((*hdr).saddr)),
            read_unaligned(addr_of!((*hdr).daddr)),
        )
    };
    let ihl = usize::from(version_ihl & 0x0f) * 4;
    let tot_len = usize::from(u16::from_be(tot_len_be));
    if version_ihl >> 4 != 4 || ihl < IPV4_MIN_HLEN || tot_len < ihl {
        return None;
    }
    // Options must be present in the packet too.
    c.peek_at::<u8>(l3_off + ihl - 1)?;
    Some(Ipv4Fields { ihl, tot_len, id_be, frag_off_be, proto, saddr, daddr })
}

#[inline(always)]
fn parse_v4(c: &Cursor, p: &mut Packet) -> Parsed {
    let l3_off = c.off;
    let Some(Ipv4Fields { ihl, tot_len, id_be, frag_off_be, proto, saddr, daddr }) = ipv4_fields(c, l3_off) else {
        return Parsed::BadL3;
    };
    let l4_off = l3_off + ihl;
    let frag = u16::from_be(frag_off_be);
    let offset = frag & 0x1fff;
    let more = frag & 0x2000 != 0;
    p.set_v4_addrs(saddr, daddr);
    p.frag_id = u32::from(id_be);
    p.proto = proto;
    p.frag_first = offset == 0 && more;
    p.frag_later = offset != 0;
    p.ihl = ihl as u8;
    p.l3_off = l3_off as u8;
    p.l4_off = l4_off as u8;
    p.ip_len = tot_len as u32;
    if p.frag_later {
        return Parsed::Ip;
    }
    match proto {
        IPPROTO_TCP | IPPROTO_UDP => parse_l4(c, p, l4_off, tot_len - ihl),
        IPPROTO_ICMP if !p.frag_first => {
            parse_icmp_error(c, p, l4_off, tot_len - ihl, false);
        }
        _ => {}
    }
    Parsed::Ip
}

/// `::ffff:0:0/96`.
#[inline(always)]
fn is_v4_mapped(a: &[u8; 16]) -> bool {
    a[..10] == [0; 10] && a[10] == 0xff && a[11] == 0xff
}

#[inline(always)]
fn parse_v6(c: &Cursor, p: &mut Packet) -> Parsed {
    let l3_off = c.off;
    let Some(ip) = c.peek_at::<Ipv6Hdr>(l3_off) else {
        return Parsed::BadL3;
    };
    // SAFETY: bounds checked by `peek_at`.
    let ip = unsafe { core::ptr::read_unaligned(ip) };
    if ip.vtc_flow[0] >> 4 != 6 {
        return Parsed::BadL3;
    }
    // IPv4-mapped addresses (::ffff:a.b.c.d) are the maps' spelling of IPv4 and never valid on
    // an IPv6 wire (RFC 4291 2.5.5.2): such a packet must not be taken for an IPv4 flow.
    if is_v4_mapped(&ip.saddr) || is_v4_mapped(&ip.daddr) {
        return Parsed::BadL3;
    }
    let payload = usize::from(u16::from_be(ip.payload_len_be));
    p.is_v6 = true;
    p.src = ip.saddr;
    p.dst = ip.daddr;
    p.ihl = IPV6_HLEN as u8;
    p.l3_off = l3_off as u8;
    p.ip_len = (payload + IPV6_HLEN) as u32;
    // Walk the extension headers we can skip.
    let mut next = ip.nexthdr;
    let mut off = l3_off + IPV6_HLEN;
    let mut i = 0;
    while i < 4 {
        if next == NEXTHDR_HOP || next == NEXTHDR_ROUTING || next == NEXTHDR_DEST {
            let Some(h) = c.peek_at::<[u8; 2]>(off) else {
                p.proto = next;
                p.l4_truncated = true;
                return Parsed::Ip;
            };
            // SAFETY: bounds checked by `peek_at`.
            let h = unsafe { core::ptr::read_unaligned(h) };
            next = h[0];
            off += (usize::from(h[1]) + 1) * 8;
        } else if next == NEXTHDR_FRAGMENT {
            let Some(h) = c.peek_at::<[u8; 8]>(off) else {
                p.proto = next;
                p.l4_truncated = true;
                return Parsed::Ip;
            };
            // SAFETY: bounds checked by `peek_at`.
            let h = unsafe { core::ptr::read_unaligned(h) };
            next = h[0];
            let fo = u16::from_be_bytes([h[2], h[3]]);
            p.frag_first = fo >> 3 == 0 && fo & 1 != 0;
            p.frag_later = fo >> 3 != 0;
            p.frag_id = u32::from_ne_bytes([h[4], h[5], h[6], h[7]]);
            off += 8;
        } else {
            break;
        }
        i += 1;
    }
    p.proto = next;
    let ext = off - (l3_off + IPV6_HLEN);
    // Chains we do not follow: more than 4 skippable headers, or AH, ESP, mobility, HIP, shim6
    // and the experimental ones in front of the transport header.
    let unfollowed =
        matches!(next, NEXTHDR_HOP | NEXTHDR_ROUTING | NEXTHDR_DEST | NEXTHDR_FRAGMENT | 50 | 51 | 135 | 139 | 140 | 253 | 254);
    if off > 255 || ext > payload || unfollowed {
        p.l4_truncated = true;
        return Parsed::Ip;
    }
    p.l4_off = off as u8;
    if p.frag_later {
        return Parsed::Ip;
    }
    match next {
        IPPROTO_TCP | IPPROTO_UDP => parse_l4(c, p, off, payload - ext),
        IPPROTO_ICMPV6 if !p.frag_first => {
            parse_icmp_error(c, p, off, payload - ext, true);
        }
        _ => {}
    }
    Parsed::Ip
}

/// The TCP/UDP ports at `l4_off`; `l4_len` is what the IP header says follows.
#[inline(always)]
fn parse_l4(c: &Cursor, p: &mut Packet, l4_off: usize, l4_len: usize) {
    let min_l4 = if p.proto == IPPROTO_TCP { TCP_MIN_HLEN } else { UDP_HLEN };
    // The whole minimal L4 header (so the checksum field is inside the packet), and within the
    // IP length.
    if c.peek_at::<u8>(l4_off + min_l4 - 1).is_none() || l4_len < min_l4 {
        p.l4_truncated = true;
        return;
    }
    let Some(ports) = c.peek_at::<L4Ports>(l4_off) else {
        p.l4_truncated = true;
        return;
    };
    // SAFETY: bounds checked by `peek_at`.
    let ports = unsafe { core::ptr::read_unaligned(ports) };
    p.sport_be = ports.sport_be;
    p.dport_be = ports.dport_be;
    if p.proto == IPPROTO_TCP {
        // Two bytes (data offset, flags): a one-byte bound check compiles to a form the
        // verifier cannot use.
        if let Some(w) = c.peek_at::<[u8; 2]>(l4_off + 12) {
            // SAFETY: bounds checked by `peek_at`.
            p.tcp_flags = unsafe { core::ptr::read_unaligned(w) }[1];
        }
    }
    p.has_ports = true;
    p.l4_in_packet = true;
}

/// An ICMP destination-unreachable, time-exceeded or parameter-problem message (or their
/// ICMPv6 counterparts, and packet-too-big) quoting the IP header and the first 8 bytes (the
/// ports) of a TCP or UDP packet.
#[inline(always)]
fn parse_icmp_error(c: &Cursor, p: &mut Packet, icmp_off: usize, icmp_len: usize, v6: bool) {
    // Type and code together (see the TCP flags read above).
    let Some(ty) = c.peek_at::<[u8; 2]>(icmp_off) else {
        return;
    };
    // SAFETY: bounds checked by `peek_at`.
    let ty = unsafe { core::ptr::read_unaligned(ty) }[0];
    let inner_l3 = icmp_off + ICMP_HLEN;
    let mut inner = Inner { l3_off: inner_l3 as u8, ..Inner::default() };
    let ihl;
    if v6 {
        if !matches!(ty, ICMPV6_DEST_UNREACH | ICMPV6_PKT_TOOBIG | ICMPV6_TIME_EXCEED | ICMPV6_PARAMPROB) {
            return;
        }
        let Some(ip) = c.peek_at::<Ipv6Hdr>(inner_l3) else {
            return;
        };
        // SAFETY: bounds checked by `peek_at`.
        let ip = unsafe { core::ptr::read_unaligned(ip) };
        if ip.vtc_flow[0] >> 4 != 6 || is_v4_mapped(&ip.saddr) || is_v4_mapped(&ip.daddr) {
            return;
        }
        ihl = IPV6_HLEN;
        inner.src = ip.saddr;
        inner.dst = ip.daddr;
        inner.proto = ip.nexthdr;
    } else {
        if ty != ICMP_DEST_UNREACH && ty != ICMP_TIME_EXCEEDED && ty != ICMP_PARAMETERPROB {
            return;
        }
        let Some(ip) = c.peek_at::<Ipv4Hdr>(inner_l3) else {
            return;
        };
        // SAFETY: bounds checked by `peek_at`.
        let ip = unsafe { core::ptr::read_unaligned(ip) };
        let h = usize::from(ip.version_ihl & 0x0f) * 4;
        if ip.version_ihl >> 4 != 4 || !(IPV4_MIN_HLEN..=60).contains(&h) {
            return;
        }
        ihl = h;
        inner.src = v4_mapped(ip.saddr);
        inner.dst = v4_mapped(ip.daddr);
        inner.proto = ip.proto;
    }
    if inner.proto != IPPROTO_TCP && inner.proto != IPPROTO_UDP {
        return;
    }
    let inner_l4 = inner_l3 + ihl;
    if icmp_len < ICMP_HLEN + ihl + 8 || inner_l4 > 255 {
        return;
    }
    // The 8 quoted L4 bytes must be there (we may rewrite the UDP checksum at offset 6).
    let Some(ports) = c.peek_at::<[u8; 8]>(inner_l4) else {
        return;
    };
    // SAFETY: bounds checked by `peek_at`.
    let ports = unsafe { core::ptr::read_unaligned(ports) };
    inner.sport_be = u16::from_ne_bytes([ports[0], ports[1]]);
    inner.dport_be = u16::from_ne_bytes([ports[2], ports[3]]);
    inner.l4_off = inner_l4 as u8;
    p.icmp = inner;
    p.is_icmp_error = true;
}
