//! Duplicate detection for set members, hash fields and sorted-set members.
//!
//! Redis rejects a collection that names the same member twice. Checking that
//! needs a memory of every member seen, so members are reduced to 128-bit keyed
//! fingerprints (two SipHash-1-3 hashes with random keys). A collection with
//! more than `MAX_TRACKED` members stops being checked, so memory stays bounded
//! whatever the collection size. The walker counts such collections.

use std::collections::HashSet;
use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};

/// Members tracked per collection: 16 bytes each, so at most about 8 MiB with
/// the hash set's overhead.
pub(crate) const MAX_TRACKED: usize = 256 * 1024;

pub(crate) type Fingerprint = (u64, u64);

pub(crate) struct FingerprintKeys {
    first: RandomState,
    second: RandomState,
}

impl FingerprintKeys {
    pub(crate) fn new() -> Self {
        FingerprintKeys { first: RandomState::new(), second: RandomState::new() }
    }

    pub(crate) fn start(&self) -> FingerprintBuilder {
        FingerprintBuilder { first: self.first.build_hasher(), second: self.second.build_hasher(), len: 0 }
    }

    pub(crate) fn of(&self, bytes: &[u8]) -> Fingerprint {
        let mut builder = self.start();
        builder.update(bytes);
        builder.finish()
    }
}

pub(crate) struct FingerprintBuilder {
    first: std::collections::hash_map::DefaultHasher,
    second: std::collections::hash_map::DefaultHasher,
    len: u64,
}

impl FingerprintBuilder {
    pub(crate) fn update(&mut self, bytes: &[u8]) {
        self.first.write(bytes);
        self.second.write(bytes);
        self.len += bytes.len() as u64;
    }

    pub(crate) fn finish(mut self) -> Fingerprint {
        // The length ends the message, as `Hash for [u8]` does.
        self.first.write_u64(self.len);
        self.second.write_u64(self.len);
        (self.first.finish(), self.second.finish())
    }
}

/// Members seen so far in one collection.
#[derive(Default)]
pub(crate) struct MemberSet {
    seen: HashSet<Fingerprint>,
    /// The collection outgrew `MAX_TRACKED`; later members are not checked.
    gave_up: bool,
}

impl MemberSet {
    pub(crate) fn clear(&mut self) {
        self.seen.clear();
        if self.seen.capacity() > 4096 {
            self.seen.shrink_to(4096);
        }
        self.gave_up = false;
    }

    /// Records a member; returns `false` if it was already recorded.
    pub(crate) fn insert(&mut self, member: Fingerprint) -> bool {
        if self.gave_up {
            return true;
        }
        if self.seen.len() >= MAX_TRACKED {
            self.gave_up = true;
            self.seen.clear();
            self.seen.shrink_to_fit();
            return true;
        }
        self.seen.insert(member)
    }

    pub(crate) fn gave_up(&self) -> bool {
        self.gave_up
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunking_does_not_change_fingerprint() {
        let keys = FingerprintKeys::new();
        let whole = keys.of(b"session:12345");
        let mut builder = keys.start();
        builder.update(b"sess");
        builder.update(b"ion:1");
        builder.update(b"2345");
        assert_eq!(builder.finish(), whole);
    }

    #[test]
    fn member_set_reports_duplicates() {
        let keys = FingerprintKeys::new();
        let mut set = MemberSet::default();
        assert!(set.insert(keys.of(b"a")));
        assert!(set.insert(keys.of(b"b")));
        assert!(!set.insert(keys.of(b"a")));
    }

    #[test]
    fn member_set_stops_tracking_past_limit() {
        let mut set = MemberSet::default();
        for index in 0..=MAX_TRACKED as u64 {
            assert!(set.insert((index, 0)));
        }
        assert!(set.gave_up());
        assert!(set.insert((0, 0)));
    }
}
