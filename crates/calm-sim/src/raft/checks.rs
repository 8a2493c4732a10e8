//! The checkers: linearizability of the clients' history, agreement of
//! the replicas' applied states, durability of acknowledged writes, and
//! etcd's watch guarantees; and `settle`, the quiet run they expect first.

use calm_proto::etcd::etcdserverpb::RangeRequest;
use std::collections::HashMap;

use calm_proto::etcd::mvccpb::{Event, event::EventType};
use calm_raft::Keyspace;

use super::cluster::KeyspaceSim;
use super::workload::Settled;
use crate::check::Violation;
use crate::linearizability::{EtcdInput, EtcdModel, EtcdOutput, Operation, Verdict, check};
use crate::watch::{Completeness, check_watch};

/// The linearizability search's step budget: far above what a
/// simulation's history needs (a few hundred thousand steps), so running
/// out means something is wrong, and it is reported, never passed.
pub const LINEARIZABILITY_STEPS_MAX: u64 = 20_000_000;

/// How often `settle` looks for quiet, in ms of virtual time.
const SETTLE_STEP_MS: u64 = 50;

impl KeyspaceSim {
    /// Runs with no new requests until the cluster is quiet or `budget_ms`
    /// have passed: every node runs, agrees on one leader and term, and has
    /// applied everything committed, the same on every node, at two checks
    /// in a row; and no client waits. Returns whether it got quiet. Heal
    /// and restart first: a cut or crashed node never gets there.
    pub fn settle(&mut self, budget_ms: u64) -> bool {
        let deadline_ms = self.now_ms.saturating_add(budget_ms);
        let mut quiet_checks = 0;
        while quiet_checks < 2 {
            if self.now_ms >= deadline_ms {
                return false;
            }
            self.run_for(SETTLE_STEP_MS);
            quiet_checks = if self.is_quiet() { quiet_checks + 1 } else { 0 };
        }
        true
    }

    fn is_quiet(&self) -> bool {
        let mut views = Vec::new();
        for node in &self.nodes {
            let Some(keyspace) = node.keyspace.as_ref() else {
                return false;
            };
            if !node.is_active(self.now_ms) {
                return false;
            }
            let status = keyspace.raft_status();
            let applied = keyspace.state().applied();
            if status.commit != applied {
                return false;
            }
            // Raft's own view: the keyspace's `leader()` keeps the term in
            // which it last saw the leader change, not the current one.
            views.push((status.leader, status.term, applied));
        }
        let leader_known = views.first().is_some_and(|(leader, _, _)| leader.is_some());
        leader_known && views.windows(2).all(|w| w[0] == w[1]) && !self.workload_waiting()
    }

    /// Every checker, the violations seen while running first; the
    /// linearizability search, the costliest, last.
    pub fn check_all(&self) -> Result<(), Violation> {
        if let Some(violation) = self.seen.first() {
            return Err(violation.clone());
        }
        self.check_replicas_agree()?;
        self.check_writes_applied_once()?;
        self.check_acknowledged_writes()?;
        self.check_watches()?;
        if self.config.leases > 0 {
            // Lease writes bump revisions outside the clients' history.
            return self.check_leases();
        }
        self.check_linearizable()
    }

    /// etcd's API guarantee (and Raft §5's): every request appears to take
    /// effect at one instant between its call and its return, in one order
    /// that explains every reply, revisions included. Runs over
    /// [`resolved_history`](Self::resolved_history).
    pub fn check_linearizable(&self) -> Result<(), Violation> {
        let history = self.resolved_history()?;
        match check(&EtcdModel, &history, LINEARIZABILITY_STEPS_MAX) {
            Verdict::Linearizable => Ok(()),
            verdict => Err(self.violation("linearizability", verdict.to_string())),
        }
    }

    /// The [`history`](Self::history) with its indeterminate puts and swaps
    /// resolved against the agreed revision history, as etcd's robustness
    /// tests resolve theirs from watch events (which
    /// [`check_watches`](Self::check_watches) holds to that history): values
    /// are unique, so one found at revision `r` took effect there (its
    /// output is known, its return time is the end of the run), and one
    /// found nowhere never took effect (it is left out). Each open-ended
    /// write would double the states the search explores; resolved, a
    /// history of hundreds of operations checks in milliseconds.
    /// Indeterminate deletes carry no value; see [`resolve_deletes`].
    pub fn resolved_history(&self) -> Result<Vec<Operation<EtcdInput, EtcdOutput>>, Violation> {
        let written = self.written_revisions()?;
        let end = self.now_ms * 1_000 + 999;
        let mut history = Vec::new();
        let mut open_deletes = Vec::new();
        for record in &self.workload.records {
            let mut op = record.op.clone();
            match record.settled {
                Settled::NoEffect => continue,
                Settled::Answered => {}
                Settled::Waiting | Settled::Indeterminate => {
                    let Some(output) = resolve(&op.input, &written) else {
                        if matches!(op.input, EtcdInput::Delete { .. }) {
                            open_deletes.push(op);
                        }
                        continue;
                    };
                    op.ret = Some(end);
                    op.output = Some(output);
                }
            }
            history.push(op);
        }
        let deleted = self.delete_revisions()?;
        history.extend(resolve_deletes(&history, open_deletes, &deleted, end));
        history.sort_by_key(|op| op.call);
        Ok(history)
    }

    /// Every key's delete events in the agreed history, by revision.
    fn delete_revisions(&self) -> Result<HashMap<String, Vec<i64>>, Violation> {
        let mut deleted: HashMap<String, Vec<i64>> = HashMap::new();
        for event in self.agreed_events()? {
            if event.r#type != EventType::Delete as i32 {
                continue;
            }
            if let Some(kv) = event.kv {
                let key = String::from_utf8_lossy(&kv.key).into_owned();
                deleted.entry(key).or_default().push(kv.mod_revision);
            }
        }
        Ok(deleted)
    }

    /// Every value a put or swap wrote, and its revision, from the agreed
    /// history; a value written twice (a request applied twice) is a
    /// violation.
    fn written_revisions(&self) -> Result<HashMap<String, i64>, Violation> {
        let mut written = HashMap::new();
        for event in self.agreed_events()? {
            if event.r#type != EventType::Put as i32 {
                continue;
            }
            let Some(kv) = event.kv else {
                continue;
            };
            let value = String::from_utf8_lossy(&kv.value).into_owned();
            if let Some(first) = written.insert(value.clone(), kv.mod_revision) {
                let detail = format!(
                    "{value:?} was written at revisions {first} and {}: a request applied twice",
                    kv.mod_revision
                );
                return Err(self.violation("exactly once", detail));
            }
        }
        Ok(written)
    }

    /// Every event of the agreed history (the reference replica's), in
    /// revision order, as a watcher from revision 1 gets them.
    fn agreed_events(&self) -> Result<Vec<Event>, Violation> {
        let Some(reference) = self.reference() else {
            return Ok(Vec::new());
        };
        match reference.state().mvcc().changes(&[0], &[0], 1, usize::MAX) {
            Ok(events) => Ok(events.into_iter().map(without_prev_kv).collect()),
            Err(error) => Err(self.violation("history", error.to_string())),
        }
    }

    /// Raft's state machine safety (§5.4.3): the running replicas applied
    /// the same entries. Their revisions must be equal (after a quiet
    /// settle), and their MVCC hashes too. A hash covers every record at or
    /// below its revision, so one comparison covers the whole history; on a
    /// mismatch, a binary search names the first revision that differs.
    pub fn check_replicas_agree(&self) -> Result<(), Violation> {
        let running = self.running();
        let revisions: Vec<(u64, i64)> = running
            .iter()
            .map(|(id, keyspace)| (*id, keyspace.state().mvcc().revision()))
            .collect();
        if revisions.windows(2).any(|w| w[0].1 != w[1].1) {
            let detail = format!("revisions differ (node, revision): {revisions:?}");
            return Err(self.violation("replica agreement", detail));
        }
        let common = revisions.iter().map(|(_, r)| *r).min().unwrap_or(0);
        let Err(violation) = self.hashes_agree(&running, common) else {
            return Ok(());
        };
        let (mut agreed, mut differs) = (0, common);
        while differs - agreed > 1 {
            let middle = agreed + (differs - agreed) / 2;
            match self.hashes_agree(&running, middle) {
                Ok(()) => agreed = middle,
                Err(_) => differs = middle,
            }
        }
        Err(self
            .hashes_agree(&running, differs)
            .err()
            .unwrap_or(violation))
    }

    /// Exactly-once application: every value (each put and swap writes a
    /// new one) appears at most once in the agreed history, so no request
    /// was applied twice.
    pub fn check_writes_applied_once(&self) -> Result<(), Violation> {
        self.written_revisions().map(|_| ())
    }

    /// No acknowledged write is lost, and each reply belongs to its own
    /// request: the write is in the final state at the revision its reply
    /// named (a put or a successful swap: its value, with that mod
    /// revision; a delete that deleted: gone there, present just before).
    pub fn check_acknowledged_writes(&self) -> Result<(), Violation> {
        let Some(reference) = self.reference() else {
            return Ok(());
        };
        for (index, record) in self.workload.records.iter().enumerate() {
            if record.settled != Settled::Answered {
                continue;
            }
            let (Some(output), input) = (&record.op.output, &record.op.input) else {
                continue;
            };
            if let Err(detail) = write_holds(reference, input, output) {
                let detail = format!("request #{index} {input:?} -> {output:?}: {detail}");
                return Err(self.violation("acknowledged writes", detail));
            }
        }
        Ok(())
    }

    /// etcd's watch guarantees: each node's watcher (reopened after every
    /// crash from the revision after the last event it saw) was sent
    /// every event of the agreed history, in revision order, with no gap,
    /// no duplicate and nothing else; and a running node's watcher has
    /// caught up with the node.
    pub fn check_watches(&self) -> Result<(), Violation> {
        let truth = self.agreed_events()?;
        for node in &self.nodes {
            if let Some(cancelled) = &node.watch_cancelled {
                let detail = format!("node {}'s watcher was {cancelled}", node.id);
                return Err(self.violation("watch", detail));
            }
            if let Err(broken) = check_watch(&truth, &node.watched, Completeness::Prefix) {
                let detail = format!("node {}'s watcher: {broken}", node.id);
                return Err(self.violation("watch", detail));
            }
            let Some(keyspace) = node.keyspace.as_ref() else {
                continue;
            };
            let revision = keyspace.state().mvcc().revision();
            if node.watch.is_some() && node.watched_through.max(1) != revision {
                let detail = format!(
                    "node {}'s watcher saw up to revision {} of {revision}",
                    node.id, node.watched_through
                );
                return Err(self.violation("watch", detail));
            }
        }
        Ok(())
    }

    /// The online agreement check: the running replicas' hashes at the
    /// lowest revision they all reached, when it moved since the last
    /// check. A divergence is recorded once.
    pub(super) fn check_running_agree(&mut self) {
        if self.seen.iter().any(|v| v.checker == "replica agreement") {
            return;
        }
        let running = self.running();
        let common = running
            .iter()
            .map(|(_, keyspace)| keyspace.state().mvcc().revision())
            .min();
        let Some(common) = common else {
            return;
        };
        if common == self.agreed_revision {
            return;
        }
        let agreement = self.hashes_agree(&running, common);
        self.agreed_revision = common;
        if let Err(violation) = agreement {
            self.seen.push(violation);
        }
    }

    fn hashes_agree(&self, running: &[(u64, &Keyspace)], revision: i64) -> Result<(), Violation> {
        let hashes: Vec<(u64, Result<u32, String>)> = running
            .iter()
            .map(|(id, keyspace)| {
                let hash = keyspace.state().mvcc().hash_kv(revision);
                (*id, hash.map(|(h, _)| h).map_err(|e| e.to_string()))
            })
            .collect();
        if hashes.windows(2).all(|w| w[0].1 == w[1].1) && hashes.iter().all(|(_, h)| h.is_ok()) {
            return Ok(());
        }
        let detail = format!("hashes at revision {revision} (node, hash): {hashes:?}");
        Err(self.violation("replica agreement", detail))
    }

    fn running(&self) -> Vec<(u64, &Keyspace)> {
        self.nodes
            .iter()
            .filter_map(|node| Some((node.id, node.keyspace.as_ref()?)))
            .collect()
    }

    /// The running replica with the highest revision: the agreed state,
    /// once the replicas agree.
    fn reference(&self) -> Option<&Keyspace> {
        let running = self.running();
        running
            .into_iter()
            .max_by_key(|(id, keyspace)| (keyspace.state().mvcc().revision(), u64::MAX - id))
            .map(|(_, keyspace)| keyspace)
    }
}

/// Whether the acknowledged `output` of `input` is in `reference`'s
/// history; the error says what is there instead.
fn write_holds(reference: &Keyspace, input: &EtcdInput, output: &EtcdOutput) -> Result<(), String> {
    match (input, output) {
        (EtcdInput::Put { key, value }, EtcdOutput::Put { revision })
        | (
            EtcdInput::Cas { key, value, .. },
            EtcdOutput::Cas {
                succeeded: true,
                revision,
            },
        ) => {
            let found = value_at(reference, key, *revision)?;
            match found {
                Some((v, mod_revision)) if v == *value && mod_revision == *revision => Ok(()),
                other => Err(format!("the key holds {other:?} at that revision")),
            }
        }
        (
            EtcdInput::Delete { key },
            EtcdOutput::Delete {
                deleted: 1,
                revision,
            },
        ) => {
            let before = value_at(reference, key, revision - 1)?;
            let after = value_at(reference, key, *revision)?;
            match (before, after) {
                (Some(_), None) => Ok(()),
                other => Err(format!("the key held (before, after) {other:?}")),
            }
        }
        _ => Ok(()),
    }
}

/// `key`'s value and mod revision at `revision` in `keyspace`'s history.
fn value_at(
    keyspace: &Keyspace,
    key: &str,
    revision: i64,
) -> Result<Option<(String, i64)>, String> {
    let request = RangeRequest {
        key: key.as_bytes().to_vec(),
        revision,
        ..RangeRequest::default()
    };
    let range = keyspace
        .state()
        .mvcc()
        .range(&request)
        .map_err(|error| format!("reading revision {revision}: {error}"))?;
    Ok(range.kvs.first().map(|kv| {
        let value = String::from_utf8_lossy(&kv.value).into_owned();
        (value, kv.mod_revision)
    }))
}

/// The output of an indeterminate put or swap whose value the agreed
/// history holds at some revision.
/// Settles indeterminate deletes against the agreed delete events. A
/// delete that removed a key left an event at its revision; a delete of an
/// absent key changed nothing (no event, no new revision). So, per key, the
/// delete events no answered delete accounts for were made by open ones,
/// and the other open deletes changed nothing and may be left out.
///
/// Which open delete made which event is unknown, but need not be: the
/// model tells two deletes of one key apart only by their call times (their
/// returns are the end of the run). Matching the unaccounted revisions, in
/// order, to the earliest-called open deletes is the weakest constraint
/// any matching imposes, so it rejects no history another matching would
/// accept; a revision with no open delete left stays unmatched, and the
/// search then fails on the revision it cannot explain.
fn resolve_deletes(
    answered: &[Operation<EtcdInput, EtcdOutput>],
    mut open: Vec<Operation<EtcdInput, EtcdOutput>>,
    deleted: &HashMap<String, Vec<i64>>,
    end: u64,
) -> Vec<Operation<EtcdInput, EtcdOutput>> {
    let accounted: Vec<(&str, i64)> = answered
        .iter()
        .filter_map(|op| match (&op.input, &op.output) {
            (EtcdInput::Delete { key }, Some(EtcdOutput::Delete { deleted, revision }))
                if *deleted > 0 =>
            {
                Some((key.as_str(), *revision))
            }
            _ => None,
        })
        .collect();
    open.sort_by_key(|op| op.call);
    let mut resolved = Vec::new();
    for (key, revisions) in deleted {
        let mut candidates = open
            .iter()
            .filter(|op| matches!(&op.input, EtcdInput::Delete { key: k } if k == key));
        for &revision in revisions {
            if accounted.contains(&(key.as_str(), revision)) {
                continue;
            }
            let Some(op) = candidates.next() else {
                break;
            };
            let mut op = op.clone();
            op.ret = Some(end);
            op.output = Some(EtcdOutput::Delete {
                deleted: 1,
                revision,
            });
            resolved.push(op);
        }
    }
    resolved
}

fn resolve(input: &EtcdInput, written: &HashMap<String, i64>) -> Option<EtcdOutput> {
    match input {
        EtcdInput::Put { value, .. } => Some(EtcdOutput::Put {
            revision: *written.get(value)?,
        }),
        EtcdInput::Cas { value, .. } => Some(EtcdOutput::Cas {
            succeeded: true,
            revision: *written.get(value)?,
        }),
        EtcdInput::Get { .. } | EtcdInput::Delete { .. } => None,
    }
}

/// A watcher that did not ask for previous values gets none.
fn without_prev_kv(mut event: Event) -> Event {
    event.prev_kv = None;
    event
}
