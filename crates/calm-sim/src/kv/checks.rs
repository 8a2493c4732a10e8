//! The KV checkers: reads see acknowledged writes under strict quorums
//! that overlap, acknowledged writes survive crashes, hinted writes reach
//! their owners, owners converge, and superseded values stay dead.

use std::fmt::Write as _;

use calm_clock::Dot;
use calm_types::NodeId;

use super::cluster::{KvSim, node_id, violation};
use super::workload::{Ended, OpKind, Record};
use crate::check::Violation;

impl KvSim {
    /// Every checker, and the violations seen while running.
    pub fn check_all(&self) -> Result<(), Violation> {
        if let Some(seen) = self.seen.first() {
            return Err(seen.clone());
        }
        self.check_reads_see_acknowledged_writes()?;
        self.check_acknowledged_writes_kept()?;
        self.check_hinted_writes_reach_owners()?;
        self.check_convergence()?;
        self.check_no_resurrection()
    }

    /// Dynamo §4.5's claim for `r + w > n`: a strict read (no fallback
    /// answers) that starts after a write was acknowledged by `w` natural
    /// owners (no hinted ack) returns it or a causal successor, that is, the
    /// clock of the merged object it returned contains the write's dot. Any
    /// time, not only after a heal.
    pub fn check_reads_see_acknowledged_writes(&self) -> Result<(), Violation> {
        let history = &self.workload.history;
        for read in history {
            let Ended::Read { clock } = &read.ended else {
                continue;
            };
            if read.sloppy {
                continue;
            }
            let missed = history.iter().find(|write| {
                write.key == read.key
                    && write.ended == Ended::Written { hinted: 0 }
                    && write.end_seq < read.start_seq
                    && write.quorum.w() + read.quorum.r() > write.quorum.n()
                    && write.dot.is_some_and(|dot| !clock.contains(dot))
            });
            if let Some(write) = missed {
                let detail = format!(
                    "a read of {} (r = {}) started at {} ms returned {clock:?}, missing {}",
                    key_name(&read.key),
                    read.quorum.r(),
                    read.start_ms,
                    describe(write),
                );
                return Err(self.violation("read sees acknowledged writes", detail));
            }
        }
        Ok(())
    }

    /// After a heal and the restart of every node: every acknowledged
    /// write's dot is covered by every owner's object clock, however many
    /// nodes crashed on the way.
    pub fn check_acknowledged_writes_kept(&self) -> Result<(), Violation> {
        let acknowledged = self.acknowledged().map(|w| (w, self.owners(&w.key)));
        self.check_writes_at("acknowledged write kept", acknowledged)
    }

    /// Sloppy quorum's promise (Dynamo §4.6): a write acknowledged while
    /// fallbacks stood in for down owners reaches each of those owners
    /// after it returns (by handoff, or anti-entropy). Run after a heal.
    pub fn check_hinted_writes_reach_owners(&self) -> Result<(), Violation> {
        let hinted = self
            .acknowledged()
            .filter(|write| !write.hinted_owners.is_empty())
            .map(|write| (write, write.hinted_owners.clone()));
        self.check_writes_at("hinted write reaches its owner", hinted)
    }

    /// After a heal: every owner of every key holds the same object (the
    /// same digest).
    pub fn check_convergence(&self) -> Result<(), Violation> {
        for key in &self.workload.keys {
            let digests = self.owner_digests(key);
            if digests.windows(2).any(|pair| pair[0].1 != pair[1].1) {
                let detail = format!("{}: owners' digests {digests:x?}", key_name(key));
                return Err(self.violation("convergence", detail));
            }
        }
        Ok(())
    }

    /// After a heal: no value that an acknowledged write with a context
    /// superseded (a delete or a put whose context's read returned it) is
    /// live at any owner. Values are unique per write, so a live copy is
    /// that very value back, whatever dot it carries now.
    pub fn check_no_resurrection(&self) -> Result<(), Violation> {
        for write in self.acknowledged().filter(|w| !w.superseded.is_empty()) {
            for owner in self.owners(&write.key) {
                let Some(object) = self.object(owner, &write.key) else {
                    continue;
                };
                let back = object.dotted_siblings().find_map(|(dot, sibling)| {
                    let value = sibling.as_ref()?;
                    write.superseded.contains(value).then_some((dot, value))
                });
                if let Some((dot, value)) = back {
                    let detail = format!(
                        "{}: {:?}, superseded by {}, is live again at {owner} with dot {dot}",
                        key_name(&write.key),
                        key_name(value),
                        describe(write),
                    );
                    return Err(self.violation("no resurrection", detail));
                }
            }
        }
        Ok(())
    }

    /// How many keys' owners disagree (a down owner disagrees).
    pub(super) fn differences(&self) -> usize {
        let keys = &self.workload.keys;
        keys.iter()
            .filter(|key| {
                let digests = self.owner_digests(key);
                digests.windows(2).any(|pair| pair[0].1 != pair[1].1)
            })
            .count()
    }

    fn owner_digests(&self, key: &[u8]) -> Vec<(NodeId, Option<u64>)> {
        let owners = self.owner_indexes(key).into_iter();
        owners
            .map(|index| (node_id(index), self.digest(index, key)))
            .collect()
    }

    fn acknowledged(&self) -> impl Iterator<Item = &Record> + '_ {
        self.workload
            .history
            .iter()
            .filter(|record| matches!(record.ended, Ended::Written { .. }))
    }

    /// Checks that each write's dot is in the object clock of each of its
    /// nodes.
    fn check_writes_at<'a>(
        &self,
        checker: &'static str,
        writes: impl Iterator<Item = (&'a Record, Vec<NodeId>)>,
    ) -> Result<(), Violation> {
        for (write, nodes) in writes {
            let Some(dot) = write.dot else { continue };
            for node in nodes {
                let held = self.object(node, &write.key);
                if !held.is_some_and(|object| object.clock().contains(dot)) {
                    let detail = format!("{} is not at {node}", describe(write));
                    return Err(self.violation(checker, detail));
                }
            }
        }
        Ok(())
    }

    fn violation(&self, checker: &'static str, detail: String) -> Violation {
        violation(self.config.seed, checker, detail)
    }
}

/// A write as a violation names it.
fn describe(write: &Record) -> String {
    let kind = match write.kind {
        OpKind::Delete => "delete",
        _ => "put",
    };
    let mut text = format!("the {kind} of {}", key_name(&write.key));
    if let Some(Dot { node, counter }) = write.dot {
        let _ = write!(text, " with dot ({node}, {counter})");
    }
    let _ = write!(
        text,
        " acknowledged at {} ms (w = {}, {})",
        write.end_ms,
        write.quorum.w(),
        if write.sloppy { "sloppy" } else { "strict" }
    );
    text
}

fn key_name(key: &[u8]) -> String {
    String::from_utf8_lossy(key).into_owned()
}
