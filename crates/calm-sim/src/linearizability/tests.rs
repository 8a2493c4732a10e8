//! The checker against hand-made histories (each planted violation must be
//! caught) and against histories generated from a correct store (each must
//! pass, and fail once corrupted).

use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

use super::*;

type Op = Operation<EtcdInput, EtcdOutput>;

const BUDGET: u64 = 10_000_000;

fn put(client: u64, call: u64, ret: u64, key: &str, value: &str, revision: i64) -> Op {
    Operation {
        client,
        call,
        ret: Some(ret),
        input: EtcdInput::Put {
            key: key.into(),
            value: value.into(),
        },
        output: Some(EtcdOutput::Put { revision }),
    }
}

fn get(client: u64, call: u64, ret: u64, key: &str, value: Option<&str>, revision: i64) -> Op {
    Operation {
        client,
        call,
        ret: Some(ret),
        input: EtcdInput::Get { key: key.into() },
        output: Some(EtcdOutput::Get {
            value: value.map(str::to_string),
            revision,
        }),
    }
}

fn cas(
    client: u64,
    call: u64,
    ret: u64,
    expected: i64,
    value: &str,
    ok: bool,
    revision: i64,
) -> Op {
    Operation {
        client,
        call,
        ret: Some(ret),
        input: EtcdInput::Cas {
            key: "k".into(),
            expected_mod_revision: expected,
            value: value.into(),
        },
        output: Some(EtcdOutput::Cas {
            succeeded: ok,
            revision,
        }),
    }
}

fn indeterminate_put(client: u64, call: u64, key: &str, value: &str) -> Op {
    Operation {
        client,
        call,
        ret: None,
        input: EtcdInput::Put {
            key: key.into(),
            value: value.into(),
        },
        output: None,
    }
}

fn verdict(history: &[Op]) -> Verdict {
    check(&EtcdModel, history, BUDGET)
}

#[test]
fn an_empty_history_is_linearizable() {
    assert_eq!(verdict(&[]), Verdict::Linearizable);
}

#[test]
fn overlapping_operations_may_take_effect_in_either_order() {
    // Two concurrent puts; a read overlapping both may see either order.
    let history = [
        put(1, 0, 10, "k", "a", 3),
        put(2, 1, 9, "k", "b", 2),
        get(3, 11, 12, "k", Some("a"), 3),
    ];
    assert_eq!(verdict(&history), Verdict::Linearizable);
}

#[test]
fn a_stale_read_after_an_acknowledged_write_is_caught() {
    // Linearizability: the read starts after the put returned, so it must
    // see it.
    let history = [
        put(1, 0, 5, "k", "a", 2),
        put(1, 6, 8, "k", "b", 3),
        get(2, 9, 10, "k", Some("a"), 2),
    ];
    assert!(matches!(verdict(&history), Verdict::Violation(_)));
}

#[test]
fn a_lost_acknowledged_write_is_caught() {
    let history = [put(1, 0, 5, "k", "a", 2), get(2, 10, 11, "k", None, 1)];
    let result = verdict(&history);
    assert!(matches!(result, Verdict::Violation(_)), "{result}");
}

#[test]
fn two_compare_and_swaps_on_one_expectation_cannot_both_succeed() {
    let history = [
        put(1, 0, 1, "k", "a", 2),
        cas(1, 2, 10, 2, "b", true, 3),
        cas(2, 3, 9, 2, "c", true, 4),
    ];
    assert!(matches!(verdict(&history), Verdict::Violation(_)));
    // One success and one failure is fine.
    let history = [
        put(1, 0, 1, "k", "a", 2),
        cas(1, 2, 10, 2, "b", true, 3),
        cas(2, 3, 9, 2, "c", false, 3),
    ];
    assert_eq!(verdict(&history), Verdict::Linearizable);
}

#[test]
fn a_header_revision_that_goes_backwards_is_caught() {
    // The value is right but the revision is from before the write.
    let history = [
        put(1, 0, 1, "k", "a", 2),
        put(1, 2, 3, "j", "x", 3),
        get(2, 4, 5, "k", Some("a"), 2),
    ];
    assert!(matches!(verdict(&history), Verdict::Violation(_)));
}

#[test]
fn revisions_that_skip_are_caught() {
    let history = [put(1, 0, 1, "k", "a", 2), put(1, 2, 3, "k", "b", 4)];
    assert!(matches!(verdict(&history), Verdict::Violation(_)));
}

#[test]
fn an_indeterminate_write_may_have_taken_effect_or_not() {
    // Seen by a later read: it took effect.
    let took_effect = [
        indeterminate_put(1, 0, "k", "a"),
        get(2, 5, 6, "k", Some("a"), 2),
    ];
    assert_eq!(verdict(&took_effect), Verdict::Linearizable);
    // Never seen: it did not.
    let never = [
        indeterminate_put(1, 0, "k", "a"),
        get(2, 5, 6, "k", None, 1),
        put(3, 7, 8, "k", "b", 2),
    ];
    assert_eq!(verdict(&never), Verdict::Linearizable);
    // It may even take effect long after its call: seen late, not early.
    let late = [
        indeterminate_put(1, 0, "k", "a"),
        get(2, 5, 6, "k", None, 1),
        get(2, 7, 8, "k", Some("a"), 2),
    ];
    assert_eq!(verdict(&late), Verdict::Linearizable);
    // But a value nobody wrote is still a violation.
    let invented = [
        indeterminate_put(1, 0, "k", "a"),
        get(2, 5, 6, "k", Some("z"), 2),
    ];
    assert!(matches!(verdict(&invented), Verdict::Violation(_)));
}

#[test]
fn a_violation_names_the_operations_it_could_not_place() {
    let history = [put(1, 0, 5, "k", "a", 2), get(2, 10, 11, "k", None, 1)];
    let Verdict::Violation(text) = verdict(&history) else {
        panic!("expected a violation");
    };
    assert!(text.contains("Get"), "{text}");
}

#[test]
fn histories_round_trip_through_json() {
    let history = vec![put(1, 0, 5, "k", "a", 2), indeterminate_put(2, 1, "k", "b")];
    let json = serde_json::to_string(&history).expect("encodes");
    let back: Vec<Op> = serde_json::from_str(&json).expect("decodes");
    assert_eq!(back, history);
}

/// A correct linearizable store under concurrent clients: each operation
/// takes effect at a random instant inside its interval; some clients lose
/// their reply (indeterminate), having taken effect or not.
fn generate(seed: u64, operations: usize, clients: u64, keys: usize) -> Vec<Op> {
    // One operation in a hundred loses its reply: about what a faulty run
    // gives, and few enough to keep the search fast (each open-ended
    // indeterminate write can double the states the search explores).
    generate_with(seed, operations, clients, keys, 10)
}

fn generate_with(
    seed: u64,
    operations: usize,
    clients: u64,
    keys: usize,
    indeterminate_per_mille: u32,
) -> Vec<Op> {
    let mut rng = StdRng::seed_from_u64(seed);
    let model = EtcdModel;
    let mut state = model.init();
    // Per client: busy until this time.
    let mut free_at = vec![0u64; clients as usize];
    let mut planned: Vec<(u64, u64, u64, EtcdInput, bool, bool)> = Vec::new();
    for n in 0..operations {
        let client = rng.random_range(0..clients);
        let call = free_at[client as usize] + rng.random_range(0..5);
        let ret = call + rng.random_range(1..20);
        free_at[client as usize] = ret + 1;
        let key = format!("k{}", rng.random_range(0..keys));
        let input = match rng.random_range(0..4) {
            0 => EtcdInput::Get { key },
            1 => EtcdInput::Put {
                key,
                value: format!("v{n}"),
            },
            2 => EtcdInput::Delete { key },
            _ => EtcdInput::Cas {
                key,
                expected_mod_revision: rng.random_range(0..(n as i64 + 2)),
                value: format!("v{n}"),
            },
        };
        let indeterminate = rng.random_range(0..1000) < indeterminate_per_mille;
        let applies = !indeterminate || rng.random_bool(0.5);
        planned.push((client, call, ret, input, indeterminate, applies));
    }
    // Linearization points: a random instant strictly inside each
    // interval (operations that merely touch are ordered by real time).
    let mut points: Vec<(u64, usize)> = planned
        .iter()
        .enumerate()
        .map(|(i, p)| (rng.random_range(p.1 * 10 + 1..p.2 * 10), i))
        .collect();
    points.sort();
    let mut outputs: Vec<Option<EtcdOutput>> = vec![None; planned.len()];
    for (_, i) in points {
        let (_, _, _, input, _, applies) = &planned[i];
        if *applies {
            let (next, output) = model.apply(&state, input);
            state = next;
            outputs[i] = Some(output);
        }
    }
    planned
        .into_iter()
        .zip(outputs)
        .map(
            |((client, call, ret, input, indeterminate, _), output)| Operation {
                client,
                call,
                ret: (!indeterminate).then_some(ret),
                input,
                output: if indeterminate { None } else { output },
            },
        )
        .collect()
}

#[test]
fn generated_correct_histories_are_linearizable() {
    for seed in 0..20 {
        let history = generate(seed, 1_000, 8, 4);
        let result = verdict(&history);
        assert_eq!(result, Verdict::Linearizable, "seed {seed}");
    }
}

#[test]
fn a_generated_history_with_one_corrupted_read_is_not() {
    let mut caught = 0;
    for seed in 0..20 {
        let mut history = generate(seed, 300, 6, 3);
        // Corrupt the first successful read of a present value: claim it
        // saw a value no one wrote.
        let Some(read) = history
            .iter_mut()
            .find(|op| matches!(op.output, Some(EtcdOutput::Get { value: Some(_), .. })))
        else {
            continue;
        };
        if let Some(EtcdOutput::Get { value, .. }) = &mut read.output {
            *value = Some("never written".to_string());
        }
        assert!(
            matches!(verdict(&history), Verdict::Violation(_)),
            "seed {seed}"
        );
        caught += 1;
    }
    assert!(caught >= 15, "most seeds had a read to corrupt ({caught})");
}

#[test]
fn an_exhausted_budget_is_unknown_not_a_pass() {
    let history = generate(7, 500, 8, 3);
    assert_eq!(check(&EtcdModel, &history, 10), Verdict::Unknown);
}
