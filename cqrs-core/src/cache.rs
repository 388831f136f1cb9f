//! The repository's bounded cache of aggregate states (see `Repository::with_cache`).

use std::collections::HashMap;
use std::mem;
use std::sync::Mutex;

use crate::StreamId;

/// At most `capacity` states, each with the stream version it is the state after.
///
/// Two generations stand in for an LRU list: hits and inserts go to the young map; when
/// it holds half the capacity it becomes the old map and the previous old map is
/// dropped. A state used at least once per half-capacity inserts stays; one not used
/// for a whole generation goes. Every operation is O(1) under a short lock that is
/// never held across an `await`.
///
/// An entry is *taken* out for a command and put back with the new state after a
/// successful append, so two commands of one process on one aggregate never share a
/// state: the second finds no entry and loads from the store.
pub(crate) struct StateCache<A> {
    half: usize,
    generations: Mutex<Generations<A>>,
}

struct Generations<A> {
    young: HashMap<StreamId, (A, u64)>,
    old: HashMap<StreamId, (A, u64)>,
}

impl<A> StateCache<A> {
    /// A cache of at most `capacity` states (at least 2).
    pub(crate) fn new(capacity: usize) -> Self {
        StateCache {
            half: (capacity / 2).max(1),
            generations: Mutex::new(Generations {
                young: HashMap::new(),
                old: HashMap::new(),
            }),
        }
    }

    /// Takes the state of `stream` out of the cache, with its version.
    pub(crate) fn take(&self, stream: &StreamId) -> Option<(A, u64)> {
        let mut generations = self.lock();
        match generations.young.remove(stream) {
            Some(entry) => Some(entry),
            None => generations.old.remove(stream),
        }
    }

    /// A copy of the state of `stream`, with its version, left in the cache.
    pub(crate) fn peek(&self, stream: &StreamId) -> Option<(A, u64)>
    where
        A: Clone,
    {
        let generations = self.lock();
        let entry = generations.young.get(stream);
        entry.or_else(|| generations.old.get(stream)).cloned()
    }

    /// Puts the state of `stream` at `version` in the cache, unless it holds a later one
    /// (two commands of one process on one aggregate may finish in either order).
    pub(crate) fn put(&self, stream: StreamId, state: A, version: u64) {
        let retired = {
            let mut generations = self.lock();
            let newer = |map: &HashMap<StreamId, (A, u64)>| {
                map.get(&stream).is_some_and(|(_, held)| *held > version)
            };
            if newer(&generations.young) || newer(&generations.old) {
                return;
            }
            generations.old.remove(&stream);
            generations.young.insert(stream, (state, version));
            if generations.young.len() >= self.half {
                let young = mem::take(&mut generations.young);
                Some(mem::replace(&mut generations.old, young))
            } else {
                None
            }
        };
        // Dropped after the lock is released: a generation can be large.
        drop(retired);
    }

    /// How many states are cached.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        let generations = self.lock();
        generations.young.len() + generations.old.len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Generations<A>> {
        // A panic while the lock was held (in HashMap code: allocation failure) leaves
        // maps that are still valid; a cache may always lose entries, so go on.
        self.generations
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stream(n: usize) -> StreamId {
        StreamId::new("t", n.to_string()).expect("a valid id")
    }

    #[test]
    fn takes_what_was_put_and_stays_bounded() {
        let cache = StateCache::new(10);
        cache.put(stream(1), "one", 3);
        assert_eq!(cache.take(&stream(1)), Some(("one", 3)));
        assert_eq!(cache.take(&stream(1)), None, "taken entries are gone");

        for n in 0..1_000 {
            cache.put(stream(n), "x", n as u64);
            assert!(cache.len() <= 10, "{} entries after {n} puts", cache.len());
        }
        // The latest puts are still there; the earliest are not.
        assert_eq!(cache.take(&stream(999)), Some(("x", 999)));
        assert_eq!(cache.take(&stream(0)), None);

        // An older state never replaces a later one.
        cache.put(stream(5), "later", 9);
        cache.put(stream(5), "earlier", 8);
        assert_eq!(cache.take(&stream(5)), Some(("later", 9)));
    }

    #[test]
    fn a_state_in_use_survives_generations() {
        let cache = StateCache::new(4);
        cache.put(stream(0), "hot", 0);
        for n in 1..100 {
            // The hot state is taken and put back by every command.
            let (state, version) = cache.take(&stream(0)).expect("the hot state stays");
            cache.put(stream(0), state, version + 1);
            cache.put(stream(n), "cold", 0);
        }
        assert_eq!(cache.take(&stream(0)), Some(("hot", 99)));
    }
}
