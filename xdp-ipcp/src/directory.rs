//! The shim data of the reference (`shim-data.c`): the registry of local names, the directory
//! cache of remote names and the outstanding name queries. Plain data, no I/O, no clock.

use core::time::Duration;

use o7s_proto::MacAddr;

use crate::time::Instant;

/// How long a name query waits for a NAME_QUERY_REPLY (the reference's 2000 ms).
pub const QUERY_TIMEOUT: Duration = Duration::from_millis(2000);

/// Name hashes registered at this IPCP. Adding is idempotent, removing an unknown hash is OK.
#[derive(Debug, Default, Clone)]
pub struct Registry {
    hashes: Vec<Box<[u8]>>,
}

impl Registry {
    /// Adds `hash`; returns whether it was new.
    pub fn add(&mut self, hash: &[u8]) -> bool {
        if self.contains(hash) {
            return false;
        }
        self.hashes.push(hash.into());
        true
    }

    /// Removes `hash`; returns whether it was present.
    pub fn remove(&mut self, hash: &[u8]) -> bool {
        let before = self.hashes.len();
        self.hashes.retain(|h| &**h != hash);
        self.hashes.len() != before
    }

    /// Whether `hash` is registered.
    #[must_use]
    pub fn contains(&self, hash: &[u8]) -> bool {
        self.hashes.iter().any(|h| &**h == hash)
    }

    /// Number of registered hashes.
    #[must_use]
    pub fn len(&self) -> usize {
        self.hashes.len()
    }

    /// Whether nothing is registered.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.hashes.is_empty()
    }
}

/// The directory cache: (hash, MAC) pairs, newest first. An identical pair is refused; lookup
/// returns the newest MAC for a hash. As in the reference, entries never expire.
#[derive(Debug, Default, Clone)]
pub struct Directory {
    entries: Vec<(Box<[u8]>, MacAddr)>,
}

impl Directory {
    /// Adds (`hash`, `mac`) as the newest entry; returns false (and changes nothing) if the
    /// identical pair is already present.
    pub fn add(&mut self, hash: &[u8], mac: MacAddr) -> bool {
        if self.entries.iter().any(|(h, m)| &**h == hash && *m == mac) {
            return false;
        }
        self.entries.insert(0, (hash.into(), mac));
        true
    }

    /// The newest MAC recorded for `hash`.
    #[must_use]
    pub fn lookup(&self, hash: &[u8]) -> Option<MacAddr> {
        self.entries
            .iter()
            .find(|(h, _)| &**h == hash)
            .map(|&(_, m)| m)
    }

    /// Removes every entry for `hash`; returns how many there were.
    pub fn remove(&mut self, hash: &[u8]) -> usize {
        let before = self.entries.len();
        self.entries.retain(|(h, _)| &**h != hash);
        before - self.entries.len()
    }

    /// Number of entries.
    #[must_use]
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the cache is empty.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// Identifies one outstanding name query, as returned by [`crate::Layer::query`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct QueryId(pub u64);

/// One outstanding name query.
#[derive(Debug, Clone)]
pub(crate) struct Query {
    pub(crate) id: QueryId,
    pub(crate) hash: Box<[u8]>,
    pub(crate) deadline: Instant,
}

/// Outstanding name queries, in the order they were started.
#[derive(Debug, Default, Clone)]
pub(crate) struct Queries {
    next_id: u64,
    pending: Vec<Query>,
}

impl Queries {
    /// Starts a query for `hash` that expires at `deadline`.
    pub(crate) fn start(&mut self, hash: &[u8], deadline: Instant) -> QueryId {
        let id = QueryId(self.next_id);
        self.next_id += 1;
        self.pending.push(Query {
            id,
            hash: hash.into(),
            deadline,
        });
        id
    }

    /// Removes and returns every query for `hash`.
    pub(crate) fn complete(&mut self, hash: &[u8]) -> Vec<Query> {
        let (done, keep) = core::mem::take(&mut self.pending)
            .into_iter()
            .partition(|q| &*q.hash == hash);
        self.pending = keep;
        done
    }

    /// Removes and returns every query whose deadline is at or before `now`.
    pub(crate) fn expire(&mut self, now: Instant) -> Vec<Query> {
        let (done, keep) = core::mem::take(&mut self.pending)
            .into_iter()
            .partition(|q| q.deadline <= now);
        self.pending = keep;
        done
    }

    /// The earliest deadline.
    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        self.pending.iter().map(|q| q.deadline).min()
    }

    /// Number of outstanding queries.
    pub(crate) fn len(&self) -> usize {
        self.pending.len()
    }
}

#[cfg(test)]
mod test {
    use super::*;

    const M1: MacAddr = MacAddr([2, 0, 0, 0, 0, 1]);
    const M2: MacAddr = MacAddr([2, 0, 0, 0, 0, 2]);

    #[test]
    fn registry_is_idempotent() {
        let mut r = Registry::default();
        assert!(r.add(b"a"));
        assert!(!r.add(b"a"));
        assert_eq!(r.len(), 1);
        assert!(r.contains(b"a"));
        assert!(!r.remove(b"b"));
        assert!(r.remove(b"a"));
        assert!(r.is_empty());
    }

    #[test]
    fn directory_newest_first_identical_refused() {
        let mut d = Directory::default();
        assert!(d.add(b"h", M1));
        assert!(!d.add(b"h", M1));
        assert_eq!(d.lookup(b"h"), Some(M1));
        assert!(d.add(b"h", M2));
        assert_eq!(d.lookup(b"h"), Some(M2));
        assert_eq!(d.len(), 2);
        assert_eq!(d.lookup(b"x"), None);
        assert_eq!(d.remove(b"h"), 2);
        assert!(d.is_empty());
    }

    #[test]
    fn queries_complete_and_expire() {
        let mut q = Queries::default();
        let a = q.start(b"a", Instant::from_millis(10));
        let b = q.start(b"b", Instant::from_millis(5));
        let a2 = q.start(b"a", Instant::from_millis(20));
        assert_eq!(q.next_deadline(), Some(Instant::from_millis(5)));
        let ids: Vec<_> = q.complete(b"a").iter().map(|x| x.id).collect();
        assert_eq!(ids, [a, a2]);
        assert!(q.expire(Instant::from_millis(4)).is_empty());
        assert_eq!(q.expire(Instant::from_millis(5))[0].id, b);
        assert_eq!(q.len(), 0);
        assert_eq!(q.next_deadline(), None);
    }
}
