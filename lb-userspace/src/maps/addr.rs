//! Addresses in the maps' 16-byte form: IPv6 as is, IPv4 IPv4-mapped (`::ffff:a.b.c.d`), so one
//! set of maps holds both families (see `lb_common`).

use std::net::{IpAddr, Ipv6Addr};

use lb_common::v4_mapped;

/// The 16-byte map representation of an address (IPv4-mapped for IPv4).
pub fn addr16(ip: IpAddr) -> [u8; 16] {
    match ip {
        IpAddr::V4(v4) => v4_mapped(v4.octets()),
        IpAddr::V6(v6) => v6.octets(),
    }
}

/// The address for a 16-byte map address.
pub fn ip_from16(a: [u8; 16]) -> IpAddr {
    let v6 = Ipv6Addr::from(a);
    match v6.to_ipv4_mapped() {
        Some(v4) => IpAddr::V4(v4),
        None => IpAddr::V6(v6),
    }
}
