//! An in-tree linearizability checker: Wing and Gong's search with Lowe's
//! memoisation ("Testing for linearizability", 2017), as porcupine and
//! etcd's robustness tests use it.
//!
//! A history is a list of operations, each with the time it was called, the
//! time it returned and what it returned. It is linearizable if some total
//! order of the operations (1) respects real time: an operation that
//! returned before another was called comes first, and (2) is a legal run of
//! the sequential [`Model`]. The search walks the history in call order,
//! tries each operation that could be next (one called before every
//! still-pending operation returned), and backtracks; a cache of (set of
//! linearized operations, model state) pairs already explored prunes the
//! exponential search to what distinct states make necessary.
//!
//! **Indeterminate operations** (timed out, connection lost: they may or
//! may not have taken effect) are handled as porcupine and etcd's robustness
//! tests handle them: they never return (return time +∞), so they never
//! force an order, and their output is unknown ([`Model::step_unknown`]).
//! The search succeeds once every *determinate* operation is linearized: an
//! indeterminate one may take effect at any point after its call, or never.
//!
//! Cost: O(n) per step, and at most one expansion per distinct (subset,
//! state) pair; histories whose concurrency stays small (a few clients)
//! check in milliseconds: 1,000 operations of 8 clients on 4 keys in about
//! 5 ms, 80 ms with 1% of them indeterminate. Open-ended indeterminate
//! writes are what make it expensive (each can double the states to
//! explore: 1.6 s at 2%), so an indeterminate write some read observed is
//! first bounded by that read (see [`check`]). A step budget bounds the
//! worst case; exhausting it is [`Verdict::Unknown`], never a pass.

use std::collections::HashSet;
use std::fmt::{self, Debug};
use std::hash::Hash;

use serde::{Deserialize, Serialize};

/// A sequential specification of an object.
pub trait Model {
    /// The object's state.
    type State: Clone + Eq + Hash + Debug;
    /// An operation's input.
    type Input: Clone + Debug;
    /// An operation's output.
    type Output: Clone + Debug;

    /// The state before any operation.
    fn init(&self) -> Self::State;

    /// The state after `input` ran in `state` and returned `output`, or
    /// `None` if it could not have returned that.
    fn step(
        &self,
        state: &Self::State,
        input: &Self::Input,
        output: &Self::Output,
    ) -> Option<Self::State>;

    /// The states `input` may leave when its output is unknown (an
    /// indeterminate operation that did take effect).
    fn step_unknown(&self, state: &Self::State, input: &Self::Input) -> Vec<Self::State>;

    /// Whether a read that returned `read` saw the effect of `write` (a
    /// unique value it wrote). An indeterminate write seen by a read took
    /// effect before that read returned, which bounds the search.
    fn observed_by(&self, write: &Self::Input, read: &Self::Output) -> bool {
        let _ = (write, read);
        false
    }
}

/// One operation of a history.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Operation<I, O> {
    /// Who called it (a client runs one operation at a time).
    pub client: u64,
    /// When it was called, on a clock shared by all clients.
    pub call: u64,
    /// When it returned; `None` if it is indeterminate.
    pub ret: Option<u64>,
    /// What it was asked.
    pub input: I,
    /// What it returned; `None` if it is indeterminate.
    pub output: Option<O>,
}

/// What the checker concluded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Some order explains every operation.
    Linearizable,
    /// None does; the text names the operations that could not be placed
    /// after the longest explainable prefix.
    Violation(String),
    /// The step budget ran out first.
    Unknown,
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Verdict::Linearizable => write!(f, "linearizable"),
            Verdict::Violation(explanation) => write!(f, "NOT linearizable: {explanation}"),
            Verdict::Unknown => write!(f, "unknown (search budget exhausted)"),
        }
    }
}

/// Checks `history` against `model`, exploring at most `steps_max` search
/// steps.
pub fn check<M: Model>(
    model: &M,
    history: &[Operation<M::Input, M::Output>],
    steps_max: u64,
) -> Verdict {
    let history = bound_indeterminate(model, history);
    let mut search = Search::new(model, &history);
    search.run(steps_max)
}

/// etcd's robustness tests' patch: an indeterminate write that some read
/// observed took effect, at the latest when the first such read returned;
/// giving it that return time (its output stays unknown) means the search
/// must place it, and only before then. Unobserved ones stay open-ended.
fn bound_indeterminate<M: Model>(
    model: &M,
    history: &[Operation<M::Input, M::Output>],
) -> Vec<Operation<M::Input, M::Output>> {
    let mut patched = history.to_vec();
    for op in patched.iter_mut().filter(|op| op.ret.is_none()) {
        let seen_at = history
            .iter()
            .filter_map(|read| match (&read.output, read.ret) {
                (Some(output), Some(ret)) if model.observed_by(&op.input, output) => Some(ret),
                _ => None,
            })
            .min();
        if let Some(ret) = seen_at {
            op.ret = Some(ret.max(op.call));
            op.output = None;
        }
    }
    patched
}

/// One call or return in the time-ordered event list.
#[derive(Clone, Copy, Debug)]
struct Event {
    op: usize,
    is_call: bool,
}

/// The search state: a doubly linked list over the events (so lifting an
/// operation out and putting it back are O(1)), the linearized set, and
/// the stack of choices made.
struct Search<'h, M: Model> {
    model: &'h M,
    history: &'h [Operation<M::Input, M::Output>],
    events: Vec<Event>,
    next: Vec<usize>,
    prev: Vec<usize>,
    /// Index of each operation's return event (or none, for indeterminate
    /// ones: they have no return event).
    return_of: Vec<Option<usize>>,
    call_of: Vec<usize>,
    linearized: Vec<u64>,
    determinate_left: usize,
    cache: HashSet<(Vec<u64>, M::State)>,
    /// The head sentinel is `events.len()`.
    head: usize,
    best: usize,
    best_stuck: Vec<usize>,
}

impl<'h, M: Model> Search<'h, M> {
    fn new(model: &'h M, history: &'h [Operation<M::Input, M::Output>]) -> Self {
        let mut stamped: Vec<(u64, u8, usize)> = Vec::new();
        for (i, op) in history.iter().enumerate() {
            // At equal times a return sorts before a call: operations that
            // merely touch are not concurrent.
            stamped.push((op.call, 1, i));
            if let Some(ret) = op.ret {
                stamped.push((ret.max(op.call), 0, i));
            }
        }
        stamped.sort();
        let events: Vec<Event> = stamped
            .iter()
            .map(|&(_, kind, op)| Event {
                op,
                is_call: kind == 1,
            })
            .collect();
        let n = events.len();
        // Slots 0..n are events in time order; slot n is the head sentinel,
        // which also ends the (circular) list.
        let head = n;
        let mut next: Vec<usize> = (0..=n)
            .map(|i| if i + 1 >= n { head } else { i + 1 })
            .collect();
        next[head] = if n == 0 { head } else { 0 };
        let mut prev: Vec<usize> = (0..=n).map(|i| if i == 0 { head } else { i - 1 }).collect();
        prev[head] = if n == 0 { head } else { n - 1 };
        let mut return_of = vec![None; history.len()];
        let mut call_of = vec![0; history.len()];
        for (i, event) in events.iter().enumerate() {
            if event.is_call {
                call_of[event.op] = i;
            } else {
                return_of[event.op] = Some(i);
            }
        }
        let determinate_left = return_of.iter().filter(|r| r.is_some()).count();
        Search {
            model,
            history,
            events,
            next,
            prev,
            return_of,
            call_of,
            linearized: vec![0; history.len().div_ceil(64)],
            determinate_left,
            cache: HashSet::new(),
            head,
            best: 0,
            best_stuck: Vec::new(),
        }
    }

    fn run(&mut self, steps_max: u64) -> Verdict {
        let mut state = self.model.init();
        // Each frame: the operation linearized, the state before it, and
        // which of its successor states was taken.
        let mut stack: Vec<(usize, M::State, usize)> = Vec::new();
        let mut entry = self.next[self.head];
        let mut steps = 0u64;
        while self.determinate_left > 0 {
            steps += 1;
            if steps > steps_max {
                return Verdict::Unknown;
            }
            let is_call = entry != self.head && self.events[entry].is_call;
            if is_call {
                let op = self.events[entry].op;
                match self.try_linearize(&state, op, 0) {
                    Some((after, taken)) => {
                        stack.push((op, std::mem::replace(&mut state, after), taken));
                        self.lift(op);
                        entry = self.next[self.head];
                    }
                    None => entry = self.next[entry],
                }
                continue;
            }
            // A pending operation's return (or the list's end): everything
            // before it was tried; undo the last choice and try the next.
            if entry != self.head {
                self.note_stuck(stack.len(), entry);
            }
            let Some((op, before, taken)) = stack.pop() else {
                return Verdict::Violation(self.explain());
            };
            self.unlift(op);
            state = before;
            match self.try_linearize(&state, op, taken + 1) {
                Some((after, taken)) => {
                    stack.push((op, std::mem::replace(&mut state, after), taken));
                    self.lift(op);
                    entry = self.next[self.head];
                }
                None => entry = self.next[self.call_of[op]],
            }
        }
        Verdict::Linearizable
    }

    /// Linearizes `op` next if one of its successor states, from the
    /// `from`-th on, is new to the cache: returns it and its index.
    fn try_linearize(
        &mut self,
        state: &M::State,
        op: usize,
        from: usize,
    ) -> Option<(M::State, usize)> {
        let successors = self.successors(state, op);
        self.set(op, true);
        for (i, after) in successors.into_iter().enumerate().skip(from) {
            if self.cache.insert((self.linearized.clone(), after.clone())) {
                return Some((after, i));
            }
        }
        self.set(op, false);
        None
    }

    /// The states operation `op` may lead to from `state`.
    fn successors(&self, state: &M::State, op: usize) -> Vec<M::State> {
        let operation = &self.history[op];
        match &operation.output {
            Some(output) => self
                .model
                .step(state, &operation.input, output)
                .into_iter()
                .collect(),
            _ => self.model.step_unknown(state, &operation.input),
        }
    }

    /// Takes `op`'s call and return out of the event list.
    fn lift(&mut self, op: usize) {
        self.unlink(self.call_of[op]);
        if let Some(ret) = self.return_of[op] {
            self.unlink(ret);
            self.determinate_left -= 1;
        }
    }

    /// Puts `op` back, undoing [`lift`](Self::lift) (in reverse order).
    fn unlift(&mut self, op: usize) {
        if let Some(ret) = self.return_of[op] {
            self.relink(ret);
            self.determinate_left += 1;
        }
        self.relink(self.call_of[op]);
        self.set(op, false);
    }

    fn unlink(&mut self, slot: usize) {
        let (prev, next) = (self.prev[slot], self.next[slot]);
        self.next[prev] = next;
        self.prev[next] = prev;
    }

    fn relink(&mut self, slot: usize) {
        let (prev, next) = (self.prev[slot], self.next[slot]);
        self.next[prev] = slot;
        self.prev[next] = slot;
    }

    fn set(&mut self, op: usize, on: bool) {
        let (word, bit) = (op / 64, op % 64);
        if on {
            self.linearized[word] |= 1 << bit;
        } else {
            self.linearized[word] &= !(1 << bit);
        }
    }

    /// Remembers the deepest point the search reached and the operation
    /// whose return it could not get past.
    fn note_stuck(&mut self, depth: usize, return_event: usize) {
        if depth > self.best {
            self.best = depth;
            self.best_stuck.clear();
        }
        if depth == self.best {
            let op = self.events[return_event].op;
            if !self.best_stuck.contains(&op) {
                self.best_stuck.push(op);
            }
        }
    }

    fn explain(&self) -> String {
        let mut text = format!(
            "after linearizing {} operations, none of these could be placed:",
            self.best
        );
        for &op in &self.best_stuck {
            let operation = &self.history[op];
            text.push_str(&format!(
                "\n  #{op} client {} called {} returned {:?}: {:?} -> {:?}",
                operation.client, operation.call, operation.ret, operation.input, operation.output
            ));
        }
        text
    }
}

// ---- The etcd keyspace ----

/// etcd's keyspace as one object: a global revision orders every write, so
/// splitting it per key would be unsound (a read's header revision ties it
/// to every other key's writes).
#[derive(Clone, Copy, Debug, Default)]
pub struct EtcdModel;

/// An etcd request on a few keys.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum EtcdInput {
    /// A linearizable range of one key.
    Get {
        /// The key.
        key: String,
    },
    /// A put.
    Put {
        /// The key.
        key: String,
        /// Its new value (unique per put, so reads name their write).
        value: String,
    },
    /// A delete of one key.
    Delete {
        /// The key.
        key: String,
    },
    /// A txn: put `value` if the key's mod revision is
    /// `expected_mod_revision` (0: the key is absent).
    Cas {
        /// The key.
        key: String,
        /// The mod revision compared.
        expected_mod_revision: i64,
        /// The value put on success.
        value: String,
    },
}

/// What etcd answered; `revision` is the response header's.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum EtcdOutput {
    /// The key's value, if any.
    Get {
        /// The value.
        value: Option<String>,
        /// The header revision.
        revision: i64,
    },
    /// A put's revision.
    Put {
        /// The header revision.
        revision: i64,
    },
    /// How many keys went.
    Delete {
        /// 0 or 1.
        deleted: i64,
        /// The header revision.
        revision: i64,
    },
    /// Whether the compare held.
    Cas {
        /// Whether the put ran.
        succeeded: bool,
        /// The header revision.
        revision: i64,
    },
}

/// The keyspace: each key's value and mod revision, and the revision.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct EtcdState {
    keys: Vec<(String, String, i64)>,
    revision: i64,
}

impl EtcdState {
    fn get(&self, key: &str) -> Option<&(String, String, i64)> {
        self.keys.iter().find(|(k, _, _)| k == key)
    }

    fn put(&self, key: &str, value: &str) -> EtcdState {
        let revision = self.revision + 1;
        let mut keys: Vec<_> = self
            .keys
            .iter()
            .filter(|(k, _, _)| k != key)
            .cloned()
            .collect();
        keys.push((key.to_string(), value.to_string(), revision));
        keys.sort();
        EtcdState { keys, revision }
    }

    fn delete(&self, key: &str) -> (EtcdState, i64) {
        if self.get(key).is_none() {
            return (self.clone(), 0);
        }
        let keys = self
            .keys
            .iter()
            .filter(|(k, _, _)| k != key)
            .cloned()
            .collect();
        let state = EtcdState {
            keys,
            revision: self.revision + 1,
        };
        (state, 1)
    }

    fn compare(&self, key: &str, expected_mod_revision: i64) -> bool {
        self.get(key).map_or(0, |(_, _, m)| *m) == expected_mod_revision
    }
}

impl Model for EtcdModel {
    type State = EtcdState;
    type Input = EtcdInput;
    type Output = EtcdOutput;

    fn init(&self) -> EtcdState {
        // A fresh etcd (and calm) keyspace is at revision 1.
        EtcdState {
            keys: Vec::new(),
            revision: 1,
        }
    }

    fn step(&self, state: &EtcdState, input: &EtcdInput, output: &EtcdOutput) -> Option<EtcdState> {
        let (next, expected) = self.apply(state, input);
        (expected == *output).then_some(next)
    }

    fn step_unknown(&self, state: &EtcdState, input: &EtcdInput) -> Vec<EtcdState> {
        vec![self.apply(state, input).0]
    }

    fn observed_by(&self, write: &EtcdInput, read: &EtcdOutput) -> bool {
        // Values are unique per write, so a read of one saw its write.
        let written = match write {
            EtcdInput::Put { value, .. } | EtcdInput::Cas { value, .. } => value,
            EtcdInput::Get { .. } | EtcdInput::Delete { .. } => return false,
        };
        matches!(read, EtcdOutput::Get { value: Some(v), .. } if v == written)
    }
}

impl EtcdModel {
    /// The state after `input` and the only output it may return.
    fn apply(&self, state: &EtcdState, input: &EtcdInput) -> (EtcdState, EtcdOutput) {
        match input {
            EtcdInput::Get { key } => {
                let value = state.get(key).map(|(_, v, _)| v.clone());
                let output = EtcdOutput::Get {
                    value,
                    revision: state.revision,
                };
                (state.clone(), output)
            }
            EtcdInput::Put { key, value } => {
                let next = state.put(key, value);
                let revision = next.revision;
                (next, EtcdOutput::Put { revision })
            }
            EtcdInput::Delete { key } => {
                let (next, deleted) = state.delete(key);
                let revision = next.revision;
                (next, EtcdOutput::Delete { deleted, revision })
            }
            EtcdInput::Cas {
                key,
                expected_mod_revision,
                value,
            } => {
                if state.compare(key, *expected_mod_revision) {
                    let next = state.put(key, value);
                    let revision = next.revision;
                    (
                        next,
                        EtcdOutput::Cas {
                            succeeded: true,
                            revision,
                        },
                    )
                } else {
                    let output = EtcdOutput::Cas {
                        succeeded: false,
                        revision: state.revision,
                    };
                    (state.clone(), output)
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;
