//! `counter-incr` and `counter-get` at `--level linearizable`: the counter
//! an etcd user builds, since CRDT counters offer no linearizable level.
//! The counter is an etcd key in the coordinated keyspace holding a
//! decimal i64; an increment is an optimistic read-modify-write, a
//! [`compare_and_put`] of the value plus one against the mod revision last
//! seen, retried with what the failed compare read until it succeeds; a
//! read is a linearizable range of the key.
//!
//! One operation is one successful increment: its latency includes its
//! retries, and the report counts each failed compare as
//! `compare-failed`, so contention on hot counters shows as retries per
//! increment rather than as errors. Like `etcd-txn`, the values and
//! revisions last seen live in a sharded cache filled before the run, so
//! a counter left by an earlier run does not fail its first compare.
//!
//! The keys are `bench/etcd/counter/<n>`: under the etcd workloads'
//! prefix, so `etcdctl get --prefix bench/etcd/` shows them, but apart
//! from `etcd-put`'s `bench/etcd/<n>`, so a counter never parses a random
//! value. A value that is not a decimal i64 anyway (written by someone
//! else) fails the operation with `FAILED_PRECONDITION`.

use std::time::Duration;

use calm_proto::etcd::etcdserverpb::RangeRequest;
use calm_proto::etcd::etcdserverpb::kv_client::KvClient;
use tonic::Code;

use super::revisions::{Revisions, read_prefix};
use super::txn::{COMPARE_FAILED, compare_and_put, failed_read, revision_after};
use super::{EtcdChannels, kind_key_number, kind_prefix, within};
use crate::error::BenchError;
use crate::workload::{CounterOperation, Done, OpError, Workload, key_name};

/// The kind in the counter's key names: `bench/etcd/counter/<n>`.
pub const COUNTER_KIND: &str = "etcd/counter";
/// The most compares one increment tries before giving up with `ABORTED`:
/// a client that loses this many races in a row is starved, which the
/// report should show rather than wait out. Each loss means another
/// increment of the same counter succeeded, so only far more clients than
/// this on one key come near it.
pub const INCREMENT_ATTEMPTS_MAX: u64 = 1_000;
/// How much of a value that is not a counter an error message quotes.
const QUOTED_BYTES_MAX: usize = 32;

/// The linearizable counter on etcd's API, incrementing or reading.
#[derive(Debug)]
pub struct EtcdCounter {
    channels: EtcdChannels,
    operation: CounterOperation,
    timeout: Duration,
    /// Per counter: the mod revision and value last seen, which the next
    /// increment's first compare expects.
    seen: Revisions<i64>,
}

/// A successful increment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Incremented {
    /// The value the increment wrote (the one it read, plus one).
    pub value: i64,
    /// The compares that failed before it succeeded.
    pub failed_compares: u64,
}

impl EtcdCounter {
    /// The workload sending `operation` through `channels`, each call
    /// bounded by `timeout`, with nothing seen yet: the first increment of
    /// a counter that exists fails its compare once.
    pub fn new(
        channels: EtcdChannels,
        operation: CounterOperation,
        timeout: Duration,
    ) -> EtcdCounter {
        EtcdCounter {
            channels,
            operation,
            timeout,
            seen: Revisions::new(),
        }
    }

    /// The workload, and for increments the values and revisions of the
    /// counters below `keys`, read by one range before the run (the first
    /// 100,000 of the prefix at most; others, and values that are not
    /// counters, start unseen).
    pub async fn start(
        channels: EtcdChannels,
        operation: CounterOperation,
        timeout: Duration,
        keys: u64,
    ) -> Result<EtcdCounter, BenchError> {
        let counter = EtcdCounter::new(channels, operation, timeout);
        if operation == CounterOperation::Get {
            return Ok(counter);
        }
        let read = read_prefix(&counter.channels, timeout, counter_prefix(), false).await;
        let kvs = read.map_err(|error| {
            BenchError::Setup(format!("reading the counters: {}", error.message))
        })?;
        for kv in kvs {
            let Some(key) = counter_key_number(&kv.key).filter(|&key| key < keys) else {
                continue;
            };
            if let Ok(value) = counter_value(&kv.key, &kv.value) {
                counter.seen.remember(key, kv.mod_revision, value);
            }
        }
        Ok(counter)
    }

    /// Adds one to counter `key` as bench client `client`: compares the
    /// mod revision last seen, and while another writer got in first,
    /// retries from what the failed compare read. Fails on a failed call
    /// (whatever the increments before it did stays), a value that is not
    /// a counter or is at `i64::MAX` (nothing written), or
    /// [`INCREMENT_ATTEMPTS_MAX`] failed compares (nothing written).
    pub async fn increment(&self, client: usize, key: u64) -> Result<Incremented, OpError> {
        let name = counter_key(key);
        let mut kv = KvClient::new(self.channels.channel(client));
        // An unseen counter is expected absent: etcd compares an absent
        // key's mod revision as 0, and the counter starts from 0.
        let (mut revision, mut value) = self.seen.seen(key).unwrap_or((0, 0));
        for failed_compares in 0..INCREMENT_ATTEMPTS_MAX {
            let next = value.checked_add(1).ok_or_else(|| OpError {
                code: Code::FailedPrecondition,
                message: format!("{} is at i64::MAX", String::from_utf8_lossy(&name)),
            })?;
            let request = compare_and_put(name.clone(), revision, next.to_string().into_bytes());
            let answer = within(self.timeout, kv.txn(request)).await?.into_inner();
            if answer.succeeded {
                let revision = revision_after(&answer).ok_or_else(|| malformed("revision"))?;
                self.seen.remember(key, revision, next);
                return Ok(Incremented {
                    value: next,
                    failed_compares,
                });
            }
            // The failure branch read the counter as it is now, which the
            // next compare expects; the cache learns it for other clients.
            (revision, value) = match failed_read(&answer).ok_or_else(|| malformed("read"))? {
                None => (0, 0),
                Some(read) => (read.mod_revision, counter_value(&name, &read.value)?),
            };
            self.seen.remember(key, revision, value);
        }
        Err(OpError {
            code: Code::Aborted,
            message: format!(
                "{INCREMENT_ATTEMPTS_MAX} compares in a row failed on {}",
                String::from_utf8_lossy(&name)
            ),
        })
    }

    /// Counter `key`'s value, by a linearizable range as bench client
    /// `client`: 0 if the key is absent, an error if it holds anything but
    /// a decimal i64.
    pub async fn read(&self, client: usize, key: u64) -> Result<i64, OpError> {
        let name = counter_key(key);
        let request = RangeRequest {
            key: name.clone(),
            ..RangeRequest::default()
        };
        let mut kv = KvClient::new(self.channels.channel(client));
        let answer = within(self.timeout, kv.range(request)).await?.into_inner();
        answer
            .kvs
            .first()
            .map_or(Ok(0), |read| counter_value(&name, &read.value))
    }
}

impl Workload for EtcdCounter {
    async fn operate(&self, client: usize, key: u64) -> Result<Done, OpError> {
        match self.operation {
            CounterOperation::Increment => {
                let done = self.increment(client, key).await?;
                Ok(Done::counted_times(COMPARE_FAILED, done.failed_compares))
            }
            CounterOperation::Get => self.read(client, key).await.map(|_| Done::default()),
        }
    }
}

/// The key bytes of counter number `key` (`bench/etcd/counter/42`).
pub fn counter_key(key: u64) -> Vec<u8> {
    key_name(COUNTER_KIND, key).into_bytes()
}

/// The prefix of every counter key (`bench/etcd/counter/`).
pub fn counter_prefix() -> Vec<u8> {
    kind_prefix(COUNTER_KIND)
}

/// The number of a counter key (`bench/etcd/counter/42` is 42); `None` for
/// any other key.
pub fn counter_key_number(key: &[u8]) -> Option<u64> {
    kind_key_number(COUNTER_KIND, key)
}

/// The counter `value` of key `key` holds: a decimal i64, as `etcdctl put
/// key 42` writes it. Anything else is a `FAILED_PRECONDITION` error that
/// names the key and quotes the value's start.
pub fn counter_value(key: &[u8], value: &[u8]) -> Result<i64, OpError> {
    std::str::from_utf8(value)
        .ok()
        .and_then(|text| text.parse().ok())
        .ok_or_else(|| OpError {
            code: Code::FailedPrecondition,
            message: format!(
                "{} holds {:?}, not a decimal i64 counter",
                String::from_utf8_lossy(key),
                String::from_utf8_lossy(&value[..value.len().min(QUOTED_BYTES_MAX)])
            ),
        })
}

/// The error of a txn answer that lacks what a [`compare_and_put`] answer
/// carries.
fn malformed(lacking: &str) -> OpError {
    OpError {
        code: Code::Internal,
        message: format!("a txn answer without the counter's {lacking}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::etcd::kv_key_number;

    #[test]
    fn counter_keys_sit_under_the_etcd_prefix_apart_from_the_kv_keys() {
        assert_eq!(counter_key(42), b"bench/etcd/counter/42");
        assert_eq!(counter_prefix(), b"bench/etcd/counter/");
        for key in [0, 7, u64::MAX] {
            assert_eq!(counter_key_number(&counter_key(key)), Some(key));
            // etcd-txn's preload skips counters: they have no KV number.
            assert_eq!(kv_key_number(&counter_key(key)), None);
        }
        assert_eq!(counter_key_number(b"bench/etcd/42"), None);
        assert_eq!(counter_key_number(b"bench/etcd/counter/x"), None);
    }

    #[test]
    fn counter_values_are_decimal_i64s_and_anything_else_is_an_error() {
        let check = |value: &[u8], expected: Option<i64>| {
            let parsed = counter_value(b"bench/etcd/counter/1", value);
            assert_eq!(parsed.as_ref().ok().copied(), expected, "{value:?}");
            if let Err(error) = parsed {
                assert_eq!(error.code, Code::FailedPrecondition);
                assert!(error.message.contains("bench/etcd/counter/1"), "{error:?}");
                assert!(error.message.contains("not a decimal i64"), "{error:?}");
            }
        };
        check(b"0", Some(0));
        check(b"42", Some(42));
        check(b"-7", Some(-7));
        check(b"9223372036854775807", Some(i64::MAX));
        check(b"9223372036854775808", None);
        check(b"", None);
        check(b"abc", None);
        check(b" 1", None);
        check(b"1.5", None);
        check(&[0xff, 0xfe], None);
        // A long foreign value is quoted, not copied whole.
        let long = counter_value(b"k", &[b'x'; 10_000]).expect_err("not a counter");
        assert!(long.message.len() < 100, "{}", long.message);
    }
}
