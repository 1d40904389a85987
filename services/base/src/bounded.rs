//! A map that never grows past a size: the one shape every in-memory cache
//! keyed by outside data takes (server keys, destinations, interned names,
//! rate limits), so no stranger can grow a process's memory without end.

use std::collections::HashMap;

/// A bounded map that starts over when full: crude, but the hot entries
/// come straight back, lookups stay one hash, and nothing grows without
/// limit.
pub struct Bounded<K, V> {
    map: HashMap<K, V>,
    capacity: usize,
}

impl<K: std::hash::Hash + Eq, V> Bounded<K, V> {
    /// A map of at most `capacity` entries (at least one).
    pub fn new(capacity: usize) -> Self {
        Bounded {
            map: HashMap::new(),
            capacity: capacity.max(1),
        }
    }

    /// A copy of the value held for `key`.
    pub fn get<Q>(&self, key: &Q) -> Option<V>
    where
        K: std::borrow::Borrow<Q>,
        Q: std::hash::Hash + Eq + ?Sized,
        V: Clone,
    {
        self.map.get(key).cloned()
    }

    /// The value held for `key`.
    pub fn peek<Q>(&self, key: &Q) -> Option<&V>
    where
        K: std::borrow::Borrow<Q>,
        Q: std::hash::Hash + Eq + ?Sized,
    {
        self.map.get(key)
    }

    pub fn get_mut<Q>(&mut self, key: &Q) -> Option<&mut V>
    where
        K: std::borrow::Borrow<Q>,
        Q: std::hash::Hash + Eq + ?Sized,
    {
        self.map.get_mut(key)
    }

    pub fn remove<Q>(&mut self, key: &Q) -> Option<V>
    where
        K: std::borrow::Borrow<Q>,
        Q: std::hash::Hash + Eq + ?Sized,
    {
        self.map.remove(key)
    }

    pub fn retain(&mut self, keep: impl FnMut(&K, &mut V) -> bool) {
        self.map.retain(keep);
    }

    /// Inserts, first emptying the map if it is full and `key` is new.
    /// Returns whether the map was emptied (a cache of two maps that must
    /// agree empties the other too).
    pub fn insert(&mut self, key: K, value: V) -> bool {
        let emptied = self.map.len() >= self.capacity && !self.map.contains_key(&key);
        if emptied {
            self.map.clear();
        }
        self.map.insert(key, value);
        emptied
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    pub fn clear(&mut self) {
        self.map.clear();
    }
}

impl<K, V> Default for Bounded<K, V> {
    /// 10 000 entries.
    fn default() -> Self {
        Bounded {
            map: HashMap::new(),
            capacity: 10_000,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Bounded;

    #[test]
    fn never_holds_more_than_its_capacity() {
        let mut map = Bounded::new(3);
        for i in 0..1000 {
            map.insert(i, i);
            assert!(map.len() <= 3);
        }
        assert_eq!(map.get(&999), Some(999));
        // Replacing a held key does not empty it.
        let mut map = Bounded::new(2);
        map.insert("a", 1);
        map.insert("b", 2);
        assert!(!map.insert("b", 3));
        assert_eq!(map.len(), 2);
        assert!(map.insert("c", 4));
        assert_eq!(map.len(), 1);
    }
}
