//! The law and convergence harness every CRDT's tests run through.
//!
//! Two kinds of check live here, both generic over [`DeltaCrdt`]:
//!
//! * [`check_join_laws`] and [`check_delta_is_join`]: the semilattice laws on
//!   arbitrary states, meant to be fed by proptest strategies;
//! * [`Convergence`]: N replicas apply a script of operations, and the deltas
//!   (sometimes whole states) they produce travel through a seeded network
//!   that reorders, duplicates and loses messages. Lost messages are
//!   retransmitted later, as an anti-entropy round would. After the network
//!   drains, every replica must hold the same state.
//!
//! Each check returns `Err(description)` instead of panicking, so that a test
//! can also assert that a deliberately broken merge *fails* the check.

use rand::{RngExt, SeedableRng, rngs::StdRng};

use crate::DeltaCrdt;

/// Checks that `join` is commutative, associative and idempotent on these
/// states, and that the default state is its identity.
pub fn check_join_laws<T: DeltaCrdt>(a: &T, b: &T, c: &T) -> Result<(), String> {
    let ab = joined(a, b);
    let ba = joined(b, a);
    if ab != ba {
        return Err(format!(
            "join is not commutative:\n a⊔b = {ab:?}\n b⊔a = {ba:?}"
        ));
    }
    let ab_c = joined(&ab, c);
    let a_bc = joined(a, &joined(b, c));
    if ab_c != a_bc {
        return Err(format!(
            "join is not associative:\n (a⊔b)⊔c = {ab_c:?}\n a⊔(b⊔c) = {a_bc:?}"
        ));
    }
    let aa = joined(a, a);
    if &aa != a {
        return Err(format!(
            "join is not idempotent:\n a = {a:?}\n a⊔a = {aa:?}"
        ));
    }
    let a_bottom = joined(a, &T::default());
    if &a_bottom != a {
        return Err(format!(
            "default is not the bottom:\n a = {a:?}\n a⊔⊥ = {a_bottom:?}"
        ));
    }
    Ok(())
}

/// Checks that applying `delta` to `state` equals joining it, that both
/// survive an encode/decode round trip, and that a delta decoded from the
/// wire has the same effect as the original.
pub fn check_delta_is_join<T: DeltaCrdt>(state: &T, delta: &T) -> Result<(), String> {
    let mut applied = state.clone();
    applied.apply_delta(delta);
    let merged = joined(state, delta);
    if applied != merged {
        return Err(format!(
            "apply_delta differs from join:\n applied = {applied:?}\n joined = {merged:?}"
        ));
    }
    // Deltas travel on the wire as much as states do, so both must survive
    // the codec, and the delta must still have its effect after decoding.
    check_round_trip(state)?;
    check_round_trip(delta)?;
    let mut via_wire = state.clone();
    via_wire.apply_delta(&T::decode(&delta.encode()).map_err(|e| e.to_string())?);
    if via_wire != merged {
        return Err(format!(
            "a delta decoded from the wire has another effect:\n direct = {merged:?}\n via wire = {via_wire:?}"
        ));
    }
    Ok(())
}

fn check_round_trip<T: DeltaCrdt>(value: &T) -> Result<(), String> {
    match T::decode(&value.encode()) {
        Ok(decoded) if &decoded == value => Ok(()),
        Ok(decoded) => Err(format!(
            "encode/decode changed the value: {value:?} -> {decoded:?}"
        )),
        Err(e) => Err(format!("a valid value failed to decode: {e}")),
    }
}

fn joined<T: DeltaCrdt>(a: &T, b: &T) -> T {
    let mut out = a.clone();
    out.join(b);
    out
}

/// Faults the simulated network injects, as probabilities per message.
#[derive(Debug, Clone, Copy)]
pub struct NetworkFaults {
    /// A message is lost now and retransmitted after the script ends.
    pub loss: f64,
    /// A message is delivered twice.
    pub duplication: f64,
    /// A replica ships its whole state instead of the delta (state-based
    /// anti-entropy mixed with delta propagation).
    pub full_state: f64,
}

impl Default for NetworkFaults {
    fn default() -> Self {
        Self {
            loss: 0.2,
            duplication: 0.2,
            full_state: 0.1,
        }
    }
}

/// A convergence run: replicas, a network and the operations applied so far.
///
/// Drive it with [`Convergence::apply`] for each scripted operation, then
/// call [`Convergence::settle`] and check the replicas it returns.
pub struct Convergence<T: DeltaCrdt> {
    replicas: Vec<T>,
    in_flight: Vec<(usize, T)>,
    lost: Vec<(usize, T)>,
    rng: StdRng,
    faults: NetworkFaults,
}

impl<T: DeltaCrdt> Convergence<T> {
    /// `replicas` replicas at bottom, with a network seeded by `seed`.
    pub fn new(replicas: usize, seed: u64, faults: NetworkFaults) -> Self {
        assert!(replicas > 0, "a convergence run needs at least one replica");
        Self {
            replicas: vec![T::default(); replicas],
            in_flight: Vec::new(),
            lost: Vec::new(),
            rng: StdRng::seed_from_u64(seed),
            faults,
        }
    }

    /// The number of replicas.
    pub fn len(&self) -> usize {
        self.replicas.len()
    }

    /// Always false: a run has at least one replica.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// A replica's current state.
    pub fn replica(&self, index: usize) -> &T {
        &self.replicas[index]
    }

    /// Runs a mutator on replica `index % len`. If it returns a delta, the
    /// delta is joined locally and sent to every other replica; then a few
    /// in-flight messages are delivered in random order. Returns whether the
    /// mutator produced a delta (mutators may refuse, e.g. an escrow
    /// decrement without rights).
    pub fn apply(&mut self, index: usize, op: impl FnOnce(&T, usize) -> Option<T>) -> bool {
        let at = index % self.replicas.len();
        let Some(delta) = op(&self.replicas[at], at) else {
            self.deliver_some();
            return false;
        };
        self.replicas[at].apply_delta(&delta);
        let payload = if self.rng.random_bool(self.faults.full_state) {
            self.replicas[at].clone()
        } else {
            delta
        };
        for to in (0..self.replicas.len()).filter(|&to| to != at) {
            self.in_flight.push((to, payload.clone()));
        }
        self.deliver_some();
        true
    }

    fn deliver_some(&mut self) {
        let count = self.rng.random_range(0..=self.in_flight.len().min(4));
        for _ in 0..count {
            self.deliver_one();
        }
    }

    fn deliver_one(&mut self) {
        if self.in_flight.is_empty() {
            return;
        }
        let pick = self.rng.random_range(0..self.in_flight.len());
        let (to, message) = self.in_flight.swap_remove(pick);
        if self.rng.random_bool(self.faults.loss) {
            self.lost.push((to, message));
            return;
        }
        if self.rng.random_bool(self.faults.duplication) {
            self.in_flight.push((to, message.clone()));
        }
        self.replicas[to].apply_delta(&message);
    }

    /// Delivers everything in flight, then retransmits every lost message
    /// (reliably, as anti-entropy would), and returns the replicas.
    pub fn settle(mut self) -> Vec<T> {
        self.faults.loss = 0.0;
        while !self.in_flight.is_empty() {
            self.deliver_one();
        }
        for (to, message) in std::mem::take(&mut self.lost) {
            self.replicas[to].apply_delta(&message);
        }
        self.replicas
    }
}

/// Checks that every replica holds the same state.
pub fn check_converged<T: DeltaCrdt>(replicas: &[T]) -> Result<(), String> {
    match replicas.iter().position(|r| r != &replicas[0]) {
        None => Ok(()),
        Some(i) => Err(format!(
            "replicas diverged after settling:\n replica 0 = {:?}\n replica {i} = {:?}",
            replicas[0], replicas[i]
        )),
    }
}
