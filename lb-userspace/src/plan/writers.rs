//! Keys that several ServicePorts may write (backends, frontends, address markers, source
//! ranges): every writer's value, in name order; the map holds the last writer's, as the full
//! plan's last write (see [`super::incremental`]).
//!
//! Almost every key has one writer, so one is held inline ([`Writers::One`]) and only a key
//! with more allocates a list. Backends are kept by id ([`ById`]): their ids are dense (they
//! index `LB_BACKENDS`), so a vector indexed by id holds a backend's only writer in 8 bytes,
//! where a hash map of one-element lists took about 90 (a bucket and an allocation each).

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

/// Writers by dense id (backend ids). An id with one writer (nearly all) holds only its name:
/// its value is the one in the map, which the caller passes in as `held`. Ids with several
/// writers keep every writer's value, as [`Writers::Many`] does.
#[derive(Debug, Default)]
pub struct ById<V> {
    /// By id: the only writer, if the id has exactly one.
    one: Vec<Option<Arc<ServicePortName>>>,
    /// Ids with two writers or more.
    many: HashMap<u32, Vec<(Arc<ServicePortName>, V)>>,
}

impl<V: Copy> ById<V> {
    /// Records `spn`'s value `v` for `id`, whose value in the map is `held`; returns the value
    /// the map holds now.
    pub fn add(&mut self, spn: &Arc<ServicePortName>, id: u32, v: V, held: Option<&V>) -> V {
        let i = id as usize;
        if let Some(by) = self.many.get_mut(&id) {
            let mut slot = Some(Writers::Many(std::mem::take(by)));
            let last = add(&mut slot, spn, v);
            if let Some(Writers::Many(back)) = slot {
                *by = back;
            }
            return last;
        }
        if i >= self.one.len() {
            self.one.resize_with(i + 1, || None);
        }
        match (self.one[i].take(), held) {
            (Some(only), Some(held)) if only.as_ref() != spn.as_ref() => {
                let mut slot = Some(Writers::One(only, *held));
                let last = add(&mut slot, spn, v);
                if let Some(Writers::Many(by)) = slot {
                    self.many.insert(id, by);
                }
                last
            }
            (was, _) => {
                debug_assert!(was.as_deref().is_none_or(|w| w == spn.as_ref()), "id {id}: its writer's value is not held");
                self.one[i] = Some(spn.clone());
                v
            }
        }
    }

    /// Drops `spn`'s value for `id`, whose value in the map is `held`; returns the value the
    /// map holds now, `None` when no ServicePort writes `id` any more.
    pub fn remove(&mut self, spn: &ServicePortName, id: u32, held: Option<&V>) -> Option<V> {
        if let Some(by) = self.many.get_mut(&id) {
            let mut slot = Some(Writers::Many(std::mem::take(by)));
            let left = remove(&mut slot, spn);
            match slot {
                Some(Writers::Many(back)) => *by = back,
                Some(Writers::One(only, _)) => {
                    self.many.remove(&id);
                    self.one[id as usize] = Some(only);
                }
                None => {
                    self.many.remove(&id);
                }
            }
            return left;
        }
        let slot = self.one.get_mut(id as usize)?;
        if slot.as_deref() == Some(spn) {
            *slot = None;
            return None;
        }
        slot.as_ref().and(held.copied())
    }

    /// Some ServicePort writes `id`.
    pub fn contains(&self, id: u32) -> bool {
        self.one.get(id as usize).is_some_and(Option::is_some) || self.many.contains_key(&id)
    }
}

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
        // `held` is what the map holds for the id: the caller's state, kept here as `map`.
        let mut w: ById<u8> = ById::default();
        let mut map: Option<u8> = None;
        let put = |w: &mut ById<u8>, s: &Arc<ServicePortName>, v: u8, map: &mut Option<u8>| {
            *map = Some(w.add(s, 7, v, map.as_ref()));
            map.unwrap()
        };
        assert_eq!(put(&mut w, &b, 2, &mut map), 2);
        assert!(w.many.is_empty(), "one writer: its name only");
        assert_eq!(put(&mut w, &a, 1, &mut map), 2, "a comes before b: b's value stays");
        assert_eq!(put(&mut w, &c, 3, &mut map), 3);
        assert_eq!(put(&mut w, &b, 20, &mut map), 3, "b changes its value: still c's");
        let unput = |w: &mut ById<u8>, s: &ServicePortName, map: &mut Option<u8>| {
            *map = w.remove(s, 7, map.as_ref());
            *map
        };
        assert_eq!(unput(&mut w, &c, &mut map), Some(20), "c gone: b's new value");
        assert_eq!(unput(&mut w, &c, &mut map), Some(20), "removing a non-writer changes nothing");
        assert_eq!(unput(&mut w, &b, &mut map), Some(1));
        assert!(w.many.is_empty() && w.one[7].is_some(), "one writer left: its name only again");
        assert_eq!(put(&mut w, &a, 5, &mut map), 5, "the only writer changes its value");
        assert_eq!(unput(&mut w, &a, &mut map), None);
        assert!(!w.contains(7) && !w.contains(1000));
        assert_eq!(w.remove(&a, 1000, None), None, "an id never written");

        let mut k: ByKey<&str, u8> = ByKey::default();
        assert_eq!(k.add(&c, "x", 3), 3);
        assert_eq!(k.add(&a, "x", 1), 3);
        assert_eq!(k.remove(&c, "x"), Some(1));
        assert_eq!(k.remove(&a, "x"), None);
        assert!(k.0.is_empty(), "a key nobody writes is forgotten");
    }
}
