//! The keys of `LB_SERVICES` a ServicePort's frontends are written under, built one way for the
//! planner and for the adoption of pinned ids.

use std::net::IpAddr;

use lb_common::ServiceKey;

use crate::{maps::addr16, model::Protocol};

/// The key of frontend `addr:port/proto`.
pub(crate) fn service_key(addr: IpAddr, port: u16, proto: Protocol) -> ServiceKey {
    ServiceKey { addr: addr16(addr), port_be: port.to_be(), proto: proto.number(), _pad: 0 }
}

/// Address marker key (see [`ServiceKey`]).
pub(crate) fn marker_key(addr: IpAddr) -> ServiceKey {
    ServiceKey { addr: addr16(addr), port_be: 0, proto: 0, _pad: 0 }
}
