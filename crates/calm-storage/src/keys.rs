//! Keyspaces, key ranges and scan order: how callers name the data they read and write.

use std::ops::Bound;

/// A key range as the bounds ordered maps take.
pub(crate) type ByteBounds<'a> = (Bound<&'a [u8]>, Bound<&'a [u8]>);

/// Longest keyspace name, in bytes.
pub const KEYSPACE_NAME_BYTES_MAX: usize = 64;

/// A named, separately ordered set of keys (a redb table on disk).
///
/// Keyspaces keep unrelated data apart so that a scan of one (the Raft log, say) never walks
/// another's keys (the CRDT store's), and one batch may still write several atomically (log
/// entries with the hard state). Names are fixed at compile time: each owner declares its own
/// as a `const`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Keyspace(&'static str);

impl Keyspace {
    /// A keyspace called `name`.
    ///
    /// # Panics
    ///
    /// If `name` is empty or longer than [`KEYSPACE_NAME_BYTES_MAX`]; in a `const` this is a
    /// compile error.
    pub const fn new(name: &'static str) -> Self {
        assert!(
            !name.is_empty() && name.len() <= KEYSPACE_NAME_BYTES_MAX,
            "a keyspace name must be 1 to KEYSPACE_NAME_BYTES_MAX bytes"
        );
        Self(name)
    }

    /// The keyspace's name.
    pub const fn name(self) -> &'static str {
        self.0
    }
}

/// A half-open range of keys, `[start, end)`; no `end` means unbounded above.
///
/// Half-open ranges are enough for prefixes, for etcd's `[key, range_end)` and for paging: a
/// forward page continues from the last key with a zero byte appended, a reverse page
/// continues with the last key as the new `end`. A range whose `start` is not below its
/// `end` is empty.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct KeyRange {
    start: Vec<u8>,
    end: Option<Vec<u8>>,
}

impl KeyRange {
    /// Keys `k` with `start <= k < end`.
    pub fn new(start: impl Into<Vec<u8>>, end: impl Into<Vec<u8>>) -> Self {
        Self {
            start: start.into(),
            end: Some(end.into()),
        }
    }

    /// Keys `k` with `start <= k`.
    pub fn starting_at(start: impl Into<Vec<u8>>) -> Self {
        Self {
            start: start.into(),
            end: None,
        }
    }

    /// Every key.
    pub fn all() -> Self {
        Self::starting_at(Vec::new())
    }

    /// Every key that begins with `prefix`.
    pub fn prefix(prefix: &[u8]) -> Self {
        Self {
            start: prefix.to_vec(),
            end: prefix_successor(prefix),
        }
    }

    /// The inclusive lower bound.
    pub fn start(&self) -> &[u8] {
        &self.start
    }

    /// The exclusive upper bound, if any.
    pub fn end(&self) -> Option<&[u8]> {
        self.end.as_deref()
    }

    /// Whether `key` lies inside the range.
    pub fn contains(&self, key: &[u8]) -> bool {
        key >= self.start() && self.end().is_none_or(|end| key < end)
    }

    /// Whether no key can lie inside the range.
    pub fn is_empty(&self) -> bool {
        self.end().is_some_and(|end| end <= self.start())
    }

    /// The range as map bounds, or `None` if it is empty: engines answer an empty range
    /// without looking, since `BTreeMap::range` panics on a start above the end.
    pub(crate) fn bounds(&self) -> Option<ByteBounds<'_>> {
        if self.is_empty() {
            return None;
        }
        Some((
            Bound::Included(self.start()),
            self.end().map_or(Bound::Unbounded, Bound::Excluded),
        ))
    }
}

/// The smallest key above every key that begins with `prefix`, or `None` if there is none
/// (the prefix is empty or all `0xFF`): drop trailing `0xFF` bytes, then add one to the last.
fn prefix_successor(prefix: &[u8]) -> Option<Vec<u8>> {
    let kept = prefix.iter().rposition(|&byte| byte != u8::MAX)?;
    let mut end = prefix[..=kept].to_vec();
    end[kept] += 1;
    Some(end)
}

/// The order a scan returns keys in.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Order {
    /// Smallest key first.
    #[default]
    Ascending,
    /// Largest key first (the newest Raft entry or MVCC revision, say).
    Descending,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check_prefix(prefix: &[u8], expected_end: Option<&[u8]>) {
        let range = KeyRange::prefix(prefix);
        assert_eq!(range.start(), prefix);
        assert_eq!(range.end(), expected_end, "prefix {prefix:?}");
    }

    #[test]
    fn prefix_range_ends_at_the_prefix_successor() {
        check_prefix(b"", None);
        check_prefix(b"a", Some(b"b"));
        check_prefix(b"a\xff", Some(b"b"));
        check_prefix(b"a\xff\xff", Some(b"b"));
        check_prefix(b"\xff\xff", None);
        check_prefix(b"ab\x00", Some(b"ab\x01"));
    }

    #[test]
    fn prefix_range_contains_exactly_the_keys_with_that_prefix() {
        let alphabet = [0u8, 1, b'a', 0xFE, 0xFF];
        let mut keys = vec![Vec::new()];
        for _ in 0..3 {
            let longer: Vec<Vec<u8>> = keys
                .iter()
                .flat_map(|key| {
                    alphabet
                        .iter()
                        .map(move |&b| [key.as_slice(), &[b]].concat())
                })
                .collect();
            keys.extend(longer);
        }
        for prefix in &keys {
            let range = KeyRange::prefix(prefix);
            for key in &keys {
                assert_eq!(
                    range.contains(key),
                    key.starts_with(prefix),
                    "{prefix:?} {key:?}"
                );
            }
        }
    }

    #[test]
    fn range_with_start_not_below_end_is_empty() {
        assert!(KeyRange::new(b"b".to_vec(), b"a".to_vec()).is_empty());
        assert!(KeyRange::new(b"a".to_vec(), b"a".to_vec()).is_empty());
        assert!(!KeyRange::new(b"a".to_vec(), b"b".to_vec()).is_empty());
        assert!(!KeyRange::all().is_empty());
    }
}
