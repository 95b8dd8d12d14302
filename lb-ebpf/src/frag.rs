//! Fragments: the first fragment of a datagram carries the ports and is translated like any
//! packet; its ports are remembered by (source, destination, id, protocol) so that the later
//! fragments, which carry no ports, get the same translation.

use lb_common::{CNT_FRAG_FOLLOWED, FRAG_LIFETIME_NS, FragKey, FragValue};

use crate::{clock::age, counters::count, maps::LB_FRAGS, parse::Packet, scratch::Keys};

/// A later fragment whose first fragment was seen takes its ports; false otherwise.
#[inline(always)]
pub fn follow(p: &mut Packet, sc: &mut Keys, now: u64) -> bool {
    sc.frag = FragKey { src: p.src, dst: p.dst, id: p.frag_id, proto: p.proto, _pad: [0; 3] };
    // SAFETY: copied out immediately.
    match unsafe { LB_FRAGS.get(&sc.frag) }.copied() {
        Some(f) if age(now, f.seen_ns) < FRAG_LIFETIME_NS => {
            p.sport_be = f.sport_be;
            p.dport_be = f.dport_be;
            p.has_ports = true;
            count(CNT_FRAG_FOLLOWED);
            true
        }
        _ => false,
    }
}

/// Remembers a first fragment's ports (losing the entry only leaves later fragments unmatched).
#[inline(always)]
pub fn remember_first(p: &Packet, sc: &mut Keys, now: u64) {
    sc.frag = FragKey { src: p.src, dst: p.dst, id: p.frag_id, proto: p.proto, _pad: [0; 3] };
    sc.fragv = FragValue { seen_ns: now, sport_be: p.sport_be, dport_be: p.dport_be, _pad: 0 };
    let _ = LB_FRAGS.insert(&sc.frag, &sc.fragv, 0);
}
