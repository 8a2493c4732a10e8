//! Session state: [`CausalToken`], and the bounded per-key cache of the
//! latest token a client received, which is what gives a session
//! read-your-writes and monotonic reads across nodes.

use std::collections::{BTreeMap, HashMap};
use std::fmt;

/// An opaque token from a response header: it covers a write, or
/// everything a read observed, for one key. Sent with the next request on
/// that key, it makes the receiving node (any node) serve a state that
/// includes everything the token covers.
#[derive(Clone, Default, PartialEq, Eq, Hash)]
pub struct CausalToken(Vec<u8>);

impl CausalToken {
    /// Wraps bytes received from a server, for example a token another
    /// process passed on. Tokens are opaque: build none by hand.
    pub fn from_bytes(bytes: Vec<u8>) -> CausalToken {
        CausalToken(bytes)
    }

    /// The token's bytes, as sent on the wire.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// Whether the token is empty (covers nothing).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The token as lower-case hex, for printing.
    pub fn to_hex(&self) -> String {
        use fmt::Write;
        let mut hex = String::with_capacity(self.0.len() * 2);
        for byte in &self.0 {
            write!(hex, "{byte:02x}").expect("writing to a String cannot fail");
        }
        hex
    }
}

impl fmt::Debug for CausalToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CausalToken({})", self.to_hex())
    }
}

/// The latest token received per key, holding at most `keys_max` keys;
/// when full, the key whose token arrived longest ago is evicted. An
/// evicted key only loses its session guarantees (its next request carries
/// no token), never correctness of the data.
#[derive(Debug)]
pub(crate) struct TokenCache {
    keys_max: usize,
    /// A counter that orders receipts; `u64` cannot wrap in practice.
    next_stamp: u64,
    by_key: HashMap<Vec<u8>, (CausalToken, u64)>,
    /// Receipt order, oldest first, for eviction.
    by_age: BTreeMap<u64, Vec<u8>>,
}

impl TokenCache {
    /// An empty cache for at most `keys_max` keys (at least one).
    pub(crate) fn new(keys_max: usize) -> TokenCache {
        assert!(keys_max > 0, "the client validates token_keys_max");
        TokenCache {
            keys_max,
            next_stamp: 0,
            by_key: HashMap::new(),
            by_age: BTreeMap::new(),
        }
    }

    /// The latest token received for `key`.
    pub(crate) fn get(&self, key: &[u8]) -> Option<&CausalToken> {
        self.by_key.get(key).map(|(token, _)| token)
    }

    /// Records `token` as the latest for `key`. An empty token is ignored:
    /// it covers nothing, so it must not replace one that covers something.
    pub(crate) fn record(&mut self, key: &[u8], token: CausalToken) {
        if token.is_empty() {
            return;
        }
        let stamp = self.next_stamp;
        self.next_stamp += 1;
        if let Some((_, old_stamp)) = self.by_key.insert(key.to_vec(), (token, stamp)) {
            self.by_age.remove(&old_stamp);
        }
        self.by_age.insert(stamp, key.to_vec());
        while self.by_key.len() > self.keys_max {
            let Some((_, oldest)) = self.by_age.pop_first() else {
                break;
            };
            self.by_key.remove(&oldest);
        }
    }

    /// Forgets every token.
    pub(crate) fn clear(&mut self) {
        self.by_key.clear();
        self.by_age.clear();
    }

    /// How many keys hold a token.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.by_key.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(bytes: &[u8]) -> CausalToken {
        CausalToken::from_bytes(bytes.to_vec())
    }

    #[test]
    fn the_latest_token_per_key_wins() {
        let mut cache = TokenCache::new(10);
        cache.record(b"a", token(b"1"));
        cache.record(b"a", token(b"2"));
        cache.record(b"b", token(b"3"));
        assert_eq!(cache.get(b"a"), Some(&token(b"2")));
        assert_eq!(cache.get(b"b"), Some(&token(b"3")));
        assert_eq!(cache.get(b"c"), None);
        assert_eq!(cache.len(), 2);
    }

    #[test]
    fn an_empty_token_does_not_replace_a_real_one() {
        let mut cache = TokenCache::new(10);
        cache.record(b"a", token(b"1"));
        cache.record(b"a", CausalToken::default());
        cache.record(b"b", CausalToken::default());
        assert_eq!(cache.get(b"a"), Some(&token(b"1")));
        assert_eq!(cache.get(b"b"), None);
    }

    #[test]
    fn when_full_the_key_updated_longest_ago_is_evicted() {
        let mut cache = TokenCache::new(2);
        cache.record(b"a", token(b"1"));
        cache.record(b"b", token(b"2"));
        // Refreshing "a" makes "b" the oldest.
        cache.record(b"a", token(b"3"));
        cache.record(b"c", token(b"4"));
        assert_eq!(cache.len(), 2);
        assert_eq!(cache.get(b"b"), None);
        assert_eq!(cache.get(b"a"), Some(&token(b"3")));
        assert_eq!(cache.get(b"c"), Some(&token(b"4")));
        cache.clear();
        assert_eq!(cache.len(), 0);
    }

    #[test]
    fn tokens_print_as_lower_case_hex() {
        assert_eq!(token(&[0x00, 0xab, 0x10]).to_hex(), "00ab10");
        assert_eq!(format!("{:?}", token(&[0xca])), "CausalToken(ca)");
    }
}
