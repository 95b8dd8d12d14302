//! Keys that several ServicePorts may write (backends, frontends, address markers, source
//! ranges): every writer's value, in name order; the map holds the last writer's, as the full
//! plan's last write (see [`super::incremental`]).
//!
//! Almost every key has one writer, so one is held inline ([`Writers::One`]) and only a key
//! with more allocates a list. Backends are kept by id ([`ById`]): their ids are dense (they
//! index `LB_BACKENDS`), so a vector indexed by id holds them without hashing. At 10,000
//! Services × 10 endpoints of their own that is 32 bytes per backend, where a hash map of
//! one-element lists took about 90 (a bucket and an allocation each).

use std::{cmp::Ordering, hash::Hash, sync::Arc};

use super::HashMap;
use crate::model::ServicePortName;

/// The writers of one key and their values, in name order.
#[derive(Debug)]
pub enum Writers<V> {
    One(Arc<ServicePortName>, V),
    /// Two or more.
    Many(Vec<(Arc<ServicePortName>, V)>),
}

/// Records `spn`'s value `v` in `slot`; returns the value the map holds: the last writer's.
fn add<V: Copy>(slot: &mut Option<Writers<V>>, spn: &Arc<ServicePortName>, v: V) -> V {
    match slot {
        None => {
            *slot = Some(Writers::One(spn.clone(), v));
            v
        }
        Some(Writers::One(only, old)) => {
            let first = (only.clone(), *old);
            match first.0.as_ref().cmp(spn) {
                Ordering::Equal => {
                    *old = v;
                    v
                }
                Ordering::Less => {
                    *slot = Some(Writers::Many(vec![first, (spn.clone(), v)]));
                    v
                }
                Ordering::Greater => {
                    let last = first.1;
                    *slot = Some(Writers::Many(vec![(spn.clone(), v), first]));
                    last
                }
            }
        }
        Some(Writers::Many(by)) => {
            match by.binary_search_by(|(s, _)| s.as_ref().cmp(spn)) {
                Ok(i) => by[i].1 = v,
                Err(i) => by.insert(i, (spn.clone(), v)),
            }
            by.last().map_or(v, |(_, last)| *last)
        }
    }
}

/// Drops `spn`'s value from `slot`; returns the value the map holds now (the last remaining
/// writer's), or `None` when nobody writes the key any more (`slot` is then `None`).
fn remove<V: Copy>(slot: &mut Option<Writers<V>>, spn: &ServicePortName) -> Option<V> {
    match slot {
        None => None,
        Some(Writers::One(only, v)) => {
            if only.as_ref() == spn {
                *slot = None;
                return None;
            }
            Some(*v)
        }
        Some(Writers::Many(by)) => {
            if let Ok(i) = by.binary_search_by(|(s, _)| s.as_ref().cmp(spn)) {
                by.remove(i);
            }
            match by.len() {
                0 => {
                    *slot = None;
                    None
                }
                1 => {
                    let (only, v) = by.pop().expect("one writer");
                    *slot = Some(Writers::One(only, v));
                    Some(v)
                }
                _ => by.last().map(|(_, v)| *v),
            }
        }
    }
}

/// Writers by key.
#[derive(Debug)]
pub struct ByKey<K, V>(HashMap<K, Option<Writers<V>>>);

impl<K, V> Default for ByKey<K, V> {
    fn default() -> Self {
        Self(HashMap::default())
    }
}

impl<K: Eq + Hash, V: Copy> ByKey<K, V> {
    /// Records `spn`'s value for `key`; returns the value the map holds.
    pub fn add(&mut self, spn: &Arc<ServicePortName>, key: K, v: V) -> V {
        add(self.0.entry(key).or_default(), spn, v)
    }

    /// Drops `spn`'s value for `key`; returns the value the map holds now, `None` when no
    /// ServicePort writes `key` any more.
    pub fn remove(&mut self, spn: &ServicePortName, key: K) -> Option<V> {
        let slot = self.0.get_mut(&key)?;
        let left = remove(slot, spn);
        if slot.is_none() {
            self.0.remove(&key);
        }
        left
    }

    /// Room for the changes to come ([`crate::room`]).
    pub fn make_room(&mut self) {
        crate::room::make_room(&mut self.0);
    }
}

/// Writers by dense id (backend ids).
#[derive(Debug, Default)]
pub struct ById<V>(Vec<Option<Writers<V>>>);

impl<V: Copy> ById<V> {
    /// Records `spn`'s value for `id`; returns the value the map holds.
    pub fn add(&mut self, spn: &Arc<ServicePortName>, id: u32, v: V) -> V {
        let i = id as usize;
        if i >= self.0.len() {
            self.0.resize_with(i + 1, || None);
        }
        add(&mut self.0[i], spn, v)
    }

    /// Drops `spn`'s value for `id`; returns the value the map holds now, `None` when no
    /// ServicePort writes `id` any more.
    pub fn remove(&mut self, spn: &ServicePortName, id: u32) -> Option<V> {
        remove(self.0.get_mut(id as usize)?, spn)
    }

    /// Some ServicePort writes `id`.
    pub fn contains(&self, id: u32) -> bool {
        self.0.get(id as usize).is_some_and(Option::is_some)
    }
}

// A backend's writers take 32 bytes, inline (module docs).
const _: () = assert!(size_of::<Option<Writers<lb_common::Backend>>>() == 32);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Family, Protocol};

    fn spn(name: &str) -> Arc<ServicePortName> {
        Arc::new(ServicePortName {
            namespace: "ns".into(),
            name: name.into(),
            port_name: String::new(),
            protocol: Protocol::Tcp,
            family: Family::V4,
        })
    }

    /// The map holds the last writer's value in name order, whatever order they come and go.
    #[test]
    fn the_last_writer_in_name_order_is_what_the_map_holds() {
        let (a, b, c) = (spn("a"), spn("b"), spn("c"));
        let mut w: ById<u8> = ById::default();
        assert_eq!(w.add(&b, 7, 2), 2);
        assert_eq!(w.add(&a, 7, 1), 2, "a comes before b: b's value stays");
        assert_eq!(w.add(&c, 7, 3), 3);
        assert_eq!(w.add(&b, 7, 20), 3, "b changes its value: still c's");
        assert_eq!(w.remove(&c, 7), Some(20), "c gone: b's new value");
        assert_eq!(w.remove(&c, 7), Some(20), "removing a non-writer changes nothing");
        assert_eq!(w.remove(&b, 7), Some(1));
        assert!(matches!(w.0[7], Some(Writers::One(..))), "one writer left: held inline again");
        assert_eq!(w.remove(&a, 7), None);
        assert!(!w.contains(7) && !w.contains(1000));
        assert_eq!(w.remove(&a, 1000), None, "an id never written");

        let mut k: ByKey<&str, u8> = ByKey::default();
        assert_eq!(k.add(&c, "x", 3), 3);
        assert_eq!(k.add(&a, "x", 1), 3);
        assert_eq!(k.remove(&c, "x"), Some(1));
        assert_eq!(k.remove(&a, "x"), None);
        assert!(k.0.is_empty(), "a key nobody writes is forgotten");
    }
}
