//! Keys that several ServicePorts may write (backends, frontends, address markers, source
//! ranges): every writer's value, in name order; the map holds the last writer's, as the full
//! plan's last write (see [`super::incremental`]).
//!
//! Almost every key has one writer. Its value is then the one in the map, which the caller
//! passes in as `held`, so only the writer's name is kept (8 bytes, shared with the planner);
//! a key with several writers keeps each one's value in a list. Backends are kept by id
//! ([`ById`]): their ids are dense (they index `LB_BACKENDS`), so a vector indexed by id holds
//! their writers without hashing. A hash map of one-element lists took about 90 bytes per key
//! (a bucket and an allocation each).

use std::{cmp::Ordering, hash::Hash, sync::Arc};

use super::HashMap;
use crate::model::ServicePortName;

type Name = Arc<ServicePortName>;

/// Where the keys with one writer keep it: a vector by dense id, or a hash map.
pub trait Singles<K>: Default {
    fn get(&self, key: &K) -> Option<&Name>;
    fn take(&mut self, key: &K) -> Option<Name>;
    fn put(&mut self, key: K, name: Name);
}

impl Singles<u32> for Vec<Option<Name>> {
    fn get(&self, id: &u32) -> Option<&Name> {
        self.as_slice().get(*id as usize)?.as_ref()
    }

    fn take(&mut self, id: &u32) -> Option<Name> {
        self.get_mut(*id as usize)?.take()
    }

    fn put(&mut self, id: u32, name: Name) {
        let i = id as usize;
        if i >= self.len() {
            self.resize_with(i + 1, || None);
        }
        self[i] = Some(name);
    }
}

impl<K: Eq + Hash> Singles<K> for HashMap<K, Name> {
    fn get(&self, key: &K) -> Option<&Name> {
        HashMap::get(self, key)
    }

    fn take(&mut self, key: &K) -> Option<Name> {
        self.remove(key)
    }

    fn put(&mut self, key: K, name: Name) {
        self.insert(key, name);
    }
}

/// The writers of a map's shared keys (module docs).
#[derive(Debug, Default)]
pub struct Writers<K, V, S> {
    one: S,
    /// Keys with two writers or more: each one's value, in name order.
    many: HashMap<K, Vec<(Name, V)>>,
}

/// Writers by backend id.
pub type ById<V> = Writers<u32, V, Vec<Option<Name>>>;
/// Writers by key.
pub type ByKey<K, V> = Writers<K, V, HashMap<K, Name>>;

impl<K: Eq + Hash + Copy, V: Copy, S: Singles<K>> Writers<K, V, S> {
    /// Records `spn`'s value `v` for `key`, whose value in the map is `held`; returns the value
    /// the map holds now: the last writer's.
    pub fn add(&mut self, spn: &Name, key: K, v: V, held: Option<&V>) -> V {
        if let Some(by) = self.many.get_mut(&key) {
            match by.binary_search_by(|(s, _)| s.as_ref().cmp(spn)) {
                Ok(i) => by[i].1 = v,
                Err(i) => by.insert(i, (spn.clone(), v)),
            }
            return by.last().map_or(v, |(_, last)| *last);
        }
        match (self.one.take(&key), held) {
            (Some(only), Some(&held)) if only != *spn => {
                let (by, last) = match only.as_ref().cmp(spn) {
                    Ordering::Less => (vec![(only, held), (spn.clone(), v)], v),
                    _ => (vec![(spn.clone(), v), (only, held)], held),
                };
                self.many.insert(key, by);
                last
            }
            (was, _) => {
                debug_assert!(was.is_none_or(|w| w == *spn), "a key's only writer without its value");
                self.one.put(key, spn.clone());
                v
            }
        }
    }

    /// Drops `spn`'s value for `key`, whose value in the map is `held`; returns the value the
    /// map holds now, `None` when no ServicePort writes `key` any more.
    pub fn remove(&mut self, spn: &ServicePortName, key: K, held: Option<&V>) -> Option<V> {
        if let Some(by) = self.many.get_mut(&key) {
            if let Ok(i) = by.binary_search_by(|(s, _)| s.as_ref().cmp(spn)) {
                by.remove(i);
            }
            let last = by.last().map(|(_, v)| *v);
            if by.len() < 2 {
                let left = self.many.remove(&key).into_iter().flatten().next();
                if let Some((only, _)) = left {
                    self.one.put(key, only);
                }
            }
            return last;
        }
        match self.one.take(&key) {
            Some(only) if only.as_ref() == spn => None,
            Some(only) => {
                self.one.put(key, only);
                held.copied()
            }
            None => None,
        }
    }

    /// Some ServicePort writes `key`.
    pub fn contains(&self, key: &K) -> bool {
        self.one.get(key).is_some() || self.many.contains_key(key)
    }
}

impl<K: Eq + Hash, V> ByKey<K, V> {
    /// Room for the changes to come ([`crate::room`]).
    pub fn make_room(&mut self) {
        crate::room::make_room(&mut self.one);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Family, Protocol};

    fn spn(name: &str) -> Name {
        Arc::new(ServicePortName {
            namespace: "ns".into(),
            name: name.into(),
            port_name: String::new(),
            protocol: Protocol::Tcp,
            family: Family::V4,
        })
    }

    /// The map holds the last writer's value in name order, whatever order they come and go;
    /// a key with one writer keeps only its name. `map` stands for the caller's map.
    fn last_writer_wins<S: Singles<u32>>(mut w: Writers<u32, u8, S>) {
        let (a, b, c) = (spn("a"), spn("b"), spn("c"));
        let mut map: Option<u8> = None;
        let put = |w: &mut Writers<u32, u8, S>, s: &Name, v: u8, map: &mut Option<u8>| {
            *map = Some(w.add(s, 7, v, map.as_ref()));
            map.unwrap()
        };
        assert_eq!(put(&mut w, &b, 2, &mut map), 2);
        assert!(w.many.is_empty(), "one writer: its name only");
        assert_eq!(put(&mut w, &a, 1, &mut map), 2, "a comes before b: b's value stays");
        assert_eq!(put(&mut w, &c, 3, &mut map), 3);
        assert_eq!(put(&mut w, &b, 20, &mut map), 3, "b changes its value: still c's");
        let unput = |w: &mut Writers<u32, u8, S>, s: &ServicePortName, map: &mut Option<u8>| {
            *map = w.remove(s, 7, map.as_ref());
            *map
        };
        assert_eq!(unput(&mut w, &c, &mut map), Some(20), "c gone: b's new value");
        assert_eq!(unput(&mut w, &c, &mut map), Some(20), "removing a non-writer changes nothing");
        assert_eq!(unput(&mut w, &b, &mut map), Some(1));
        assert!(w.many.is_empty() && w.one.get(&7).is_some(), "one writer left: its name only again");
        assert_eq!(put(&mut w, &a, 5, &mut map), 5, "the only writer changes its value");
        assert_eq!(unput(&mut w, &c, &mut map), Some(5), "a non-writer again");
        assert_eq!(unput(&mut w, &a, &mut map), None);
        assert!(!w.contains(&7) && !w.contains(&1000));
        assert_eq!(w.remove(&a, 1000, None), None, "a key never written");
    }

    #[test]
    fn the_last_writer_in_name_order_is_what_the_map_holds() {
        last_writer_wins(ById::<u8>::default());
        last_writer_wins(ByKey::<u32, u8>::default());
    }
}
