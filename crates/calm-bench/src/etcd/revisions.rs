//! What the optimistic etcd workloads (`etcd-txn`, the linearizable
//! counter) last saw of each key: [`Revisions`], a sharded cache of each
//! key's mod revision and whatever the workload read with it, and
//! [`read_prefix`], the one range that fills it before a run so that keys
//! written by an earlier run do not fail their first compare.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use calm_proto::etcd::etcdserverpb::RangeRequest;
use calm_proto::etcd::etcdserverpb::kv_client::KvClient;
use calm_proto::etcd::mvccpb::KeyValue;

use super::{EtcdChannels, prefix_end, within};
use crate::workload::OpError;

/// The most keys a pre-run range reads (its answer is about 60 bytes a
/// key without values, so 6 MB at most); keys beyond it start uncached
/// and fail their first compare.
const PRELOAD_KEYS_MAX: i64 = 100_000;
/// The largest answer a pre-run range accepts, above the bound above even
/// with the counter's short values.
const PRELOAD_ANSWER_BYTES_MAX: usize = 64 << 20;
/// Shards of the cache: a lock is held for one map access, and 64 shards
/// keep the clients of a run from queueing behind one.
const SHARDS: u64 = 64;

/// Per key number: the latest mod revision seen and what was read with it
/// (`()` when only the revision matters). Shared by every bench client of
/// a workload; answers to concurrent requests arrive in any order, so an
/// older revision never replaces a newer one.
#[derive(Debug)]
pub(crate) struct Revisions<T> {
    // Std mutexes, not tokio ones: nothing awaits while one is held.
    shards: Vec<Mutex<HashMap<u64, (i64, T)>>>,
}

impl<T: Copy> Revisions<T> {
    /// An empty cache: every key is unseen.
    pub(crate) fn new() -> Revisions<T> {
        Revisions {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
        }
    }

    /// The latest mod revision seen of key `key` and what came with it;
    /// `None` if the key was never seen.
    pub(crate) fn seen(&self, key: u64) -> Option<(i64, T)> {
        self.shard(key).get(&key).copied()
    }

    /// Notes that key `key` was at mod revision `revision` holding `with`,
    /// unless a later revision was seen.
    pub(crate) fn remember(&self, key: u64, revision: i64, with: T) {
        let mut shard = self.shard(key);
        let seen = shard.entry(key).or_insert((revision, with));
        if revision > seen.0 {
            *seen = (revision, with);
        }
    }

    fn shard(&self, key: u64) -> MutexGuard<'_, HashMap<u64, (i64, T)>> {
        // A shard's map is consistent after every statement, so a
        // poisoned lock still guards a usable cache.
        self.shards[(key % SHARDS) as usize]
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

/// The first [`PRELOAD_KEYS_MAX`] keys under `prefix`, in key order, read
/// by one linearizable range on client 0's connection (`keys_only` leaves
/// the values out).
pub(crate) async fn read_prefix(
    channels: &EtcdChannels,
    timeout: Duration,
    prefix: Vec<u8>,
    keys_only: bool,
) -> Result<Vec<KeyValue>, OpError> {
    let request = RangeRequest {
        range_end: prefix_end(&prefix),
        key: prefix,
        keys_only,
        limit: PRELOAD_KEYS_MAX,
        ..RangeRequest::default()
    };
    let mut kv =
        KvClient::new(channels.channel(0)).max_decoding_message_size(PRELOAD_ANSWER_BYTES_MAX);
    let answer = within(timeout, kv.range(request)).await?.into_inner();
    Ok(answer.kvs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cache_keeps_the_latest_revision_seen_per_key() {
        let cache = Revisions::<i64>::new();
        assert_eq!(cache.seen(5), None);
        cache.remember(5, 10, 100);
        cache.remember(5, 7, 70);
        assert_eq!(cache.seen(5), Some((10, 100)), "a late, older answer loses");
        cache.remember(5, 11, 110);
        assert_eq!(cache.seen(5), Some((11, 110)));
        // Keys in one shard stay apart.
        cache.remember(5 + SHARDS, 3, 30);
        assert_eq!(cache.seen(5), Some((11, 110)));
        assert_eq!(cache.seen(5 + SHARDS), Some((3, 30)));
    }
}
