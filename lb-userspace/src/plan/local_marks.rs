//! The policy-Local marks' contents (`LB_LOCAL_MARKS`): a bit per hashed IPv4 external frontend
//! ([`lb_common::local_mark_slot`]) whose flows are never source-NATed, that is of
//! `externalTrafficPolicy: Local` (points 31, 32). The datapath looks a packet to a marked
//! frontend up by its client's one entry first, and one to any other by its SNAT port slot
//! first. A bit set or missing by chance (a hash collision, a change not yet applied) only
//! changes which lookup comes first, never a flow's translation.

use std::collections::{BTreeMap, BTreeSet};

use lb_common::{SVC_F_ADDR_MARKER, SVC_F_EXTERNAL, SVC_F_SNAT, ServiceKey, ServiceValue, local_mark_slot};

/// The word and bit of frontend `key` with value `value`, when it is marked: an IPv4 external
/// frontend without source NAT.
pub fn mark_of(key: &ServiceKey, value: &ServiceValue) -> Option<(u32, u64)> {
    let marked = value.flags & (SVC_F_EXTERNAL | SVC_F_SNAT | SVC_F_ADDR_MARKER) == SVC_F_EXTERNAL;
    let addr = lb_common::ipv4_word(&key.addr).filter(|_| marked)?;
    Some(local_mark_slot(addr, key.port_be, key.proto))
}

/// Sets the mark of `key` in `words` when it has one ([`mark_of`]).
pub fn mark(words: &mut BTreeMap<u32, u64>, key: &ServiceKey, value: &ServiceValue) {
    if let Some((word, bit)) = mark_of(key, value) {
        *words.entry(word).or_insert(0) |= bit;
    }
}

/// The marks kept up to date as ServicePorts come and go (the incremental planner): how many
/// ServicePorts set each bit (a bit is one ServicePort's however many of its frontends set it).
/// The counts are allocated at the first mark, so nodes without policy-Local Services keep none.
#[derive(Debug, Default)]
pub struct MarkCounts(Vec<u32>);

impl MarkCounts {
    fn at(&mut self, word: u32, i: u32) -> &mut u32 {
        if self.0.is_empty() {
            self.0 = vec![0; lb_common::LOCAL_MARK_BITS as usize];
        }
        &mut self.0[(word * 64 + i) as usize]
    }

    /// One ServicePort's marks (its own `MapState::local_marks`) come (`add`) or go: the words
    /// whose bits change are updated in `words` and recorded in `touched`.
    pub fn update(&mut self, own: &[(u32, u64)], add: bool, words: &mut BTreeMap<u32, u64>, touched: &mut BTreeSet<u32>) {
        for &(word, bits) in own {
            for i in (0..64).filter(|i| bits & (1u64 << i) != 0) {
                let n = self.at(word, i);
                let flips = if add {
                    *n += 1;
                    *n == 1
                } else {
                    debug_assert!(*n > 0, "local marks: removing a mark nobody set");
                    *n = n.saturating_sub(1);
                    *n == 0
                };
                if !flips {
                    continue;
                }
                let w = words.entry(word).or_insert(0);
                if add {
                    *w |= 1u64 << i;
                } else {
                    *w &= !(1u64 << i);
                }
                if *w == 0 {
                    words.remove(&word);
                }
                touched.insert(word);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(addr: [u8; 4], port: u16) -> ServiceKey {
        ServiceKey { addr: lb_common::v4_mapped(addr), port_be: port.to_be(), proto: lb_common::IPPROTO_TCP, _pad: 0 }
    }

    fn value(flags: u32) -> ServiceValue {
        ServiceValue { flags, ..ServiceValue::default() }
    }

    #[test]
    fn only_ipv4_external_frontends_without_snat_are_marked() {
        let node = key([192, 168, 1, 10], 30080);
        assert!(mark_of(&node, &value(SVC_F_EXTERNAL | lb_common::SVC_F_NODEPORT)).is_some(), "policy Local NodePort");
        assert_eq!(mark_of(&node, &value(SVC_F_EXTERNAL | SVC_F_SNAT)), None, "policy Cluster");
        assert_eq!(mark_of(&node, &value(0)), None, "a ClusterIP (source-NATed from outside)");
        assert_eq!(mark_of(&node, &value(SVC_F_EXTERNAL | SVC_F_ADDR_MARKER)), None);
        let v6 = ServiceKey { addr: "fd00::10".parse::<std::net::Ipv6Addr>().unwrap().octets(), ..node };
        assert_eq!(mark_of(&v6, &value(SVC_F_EXTERNAL)), None, "no slots for IPv6, nothing to skip");
        let (word, bit) = mark_of(&node, &value(SVC_F_EXTERNAL)).unwrap();
        assert_eq!((word, bit), local_mark_slot(u32::from_ne_bytes([192, 168, 1, 10]), 30080u16.to_be(), lb_common::IPPROTO_TCP));
    }

    #[test]
    fn a_bit_stays_while_a_service_port_sets_it_and_clears_with_the_last() {
        let (k, v) = (key([192, 168, 1, 10], 30080), value(SVC_F_EXTERNAL));
        let mut own = BTreeMap::new();
        mark(&mut own, &k, &v);
        let own: Vec<(u32, u64)> = own.into_iter().collect();
        let (mut words, mut touched, mut counts) = (BTreeMap::new(), BTreeSet::new(), MarkCounts::default());
        counts.update(&own, true, &mut words, &mut touched);
        counts.update(&own, true, &mut words, &mut touched);
        assert_eq!(words.into_iter().collect::<Vec<_>>(), own);
        let mut words: BTreeMap<u32, u64> = own.iter().copied().collect();
        touched.clear();
        counts.update(&own, false, &mut words, &mut touched);
        assert_eq!(words.len(), 1, "the other ServicePort still sets it");
        assert!(touched.is_empty());
        counts.update(&own, false, &mut words, &mut touched);
        assert!(words.is_empty());
        assert_eq!(touched.len(), 1);
    }
}
