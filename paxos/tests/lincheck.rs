//! Tests of the linearizability checker itself (`support/lincheck.rs`): hand-written
//! histories with a known answer, and random small histories cross-checked against an
//! exhaustive search.

#[path = "support/lincheck.rs"]
mod lincheck;

use lincheck::{KvInput, KvModel, KvOutput, Operation, Verdict, check_brute_force, check_kv};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::collections::BTreeMap;

const STEPS_MAX: u64 = 1_000_000;

fn put(client: u64, key: &str, value: &str, call: u64, ret: u64) -> Operation<KvInput, KvOutput> {
    Operation {
        client,
        input: KvInput::Put {
            key: key.into(),
            value: value.into(),
        },
        call_time: call,
        return_time: Some(ret),
        output: Some(KvOutput::Done),
    }
}

fn append(
    client: u64,
    key: &str,
    value: &str,
    call: u64,
    ret: u64,
) -> Operation<KvInput, KvOutput> {
    Operation {
        input: KvInput::Append {
            key: key.into(),
            value: value.into(),
        },
        ..put(client, key, value, call, ret)
    }
}

fn get(
    client: u64,
    key: &str,
    seen: Option<&str>,
    call: u64,
    ret: u64,
) -> Operation<KvInput, KvOutput> {
    Operation {
        client,
        input: KvInput::Get { key: key.into() },
        call_time: call,
        return_time: Some(ret),
        output: Some(KvOutput::Value(seen.map(str::to_owned))),
    }
}

/// The client gave up: it never learned whether the operation happened.
fn timed_out(mut operation: Operation<KvInput, KvOutput>) -> Operation<KvInput, KvOutput> {
    operation.return_time = None;
    operation.output = None;
    operation
}

fn is_linearizable(history: &[Operation<KvInput, KvOutput>]) -> bool {
    match check_kv(history, STEPS_MAX) {
        Verdict::Linearizable => true,
        Verdict::NotLinearizable { .. } => false,
        Verdict::Unknown { steps } => panic!("budget exhausted after {steps} steps"),
    }
}

#[test]
fn empty_history_is_linearizable() {
    assert!(is_linearizable(&[]));
}

#[test]
fn sequential_put_then_get_is_linearizable() {
    let history = [put(1, "x", "a", 0, 1), get(2, "x", Some("a"), 2, 3)];
    assert!(is_linearizable(&history));
}

#[test]
fn stale_read_after_completed_put_is_not_linearizable() {
    let history = [put(1, "x", "a", 0, 1), get(2, "x", None, 2, 3)];
    assert!(!is_linearizable(&history));
}

#[test]
fn read_concurrent_with_put_may_see_either_value() {
    let old = [put(1, "x", "a", 0, 10), get(2, "x", None, 1, 2)];
    let new = [put(1, "x", "a", 0, 10), get(2, "x", Some("a"), 1, 2)];
    assert!(is_linearizable(&old));
    assert!(is_linearizable(&new));
}

#[test]
fn new_then_old_read_during_one_put_is_not_linearizable() {
    // Both reads overlap the put, but the second starts after the first returned: once
    // "a" has been seen, the old value may not come back.
    let history = [
        put(1, "x", "a", 0, 100),
        get(2, "x", Some("a"), 1, 2),
        get(3, "x", None, 3, 4),
    ];
    assert!(!is_linearizable(&history));
}

#[test]
fn read_of_a_never_written_value_is_not_linearizable() {
    let history = [put(1, "x", "a", 0, 10), get(2, "x", Some("b"), 1, 2)];
    assert!(!is_linearizable(&history));
}

#[test]
fn timed_out_put_may_have_happened() {
    let history = [
        timed_out(put(1, "x", "a", 0, 0)),
        get(2, "x", Some("a"), 5, 6),
    ];
    assert!(is_linearizable(&history));
}

#[test]
fn timed_out_put_may_not_have_happened() {
    let history = [timed_out(put(1, "x", "a", 0, 0)), get(2, "x", None, 5, 6)];
    assert!(is_linearizable(&history));
}

#[test]
fn timed_out_put_cannot_happen_before_its_call() {
    let history = [
        get(2, "x", Some("a"), 0, 1),
        timed_out(put(1, "x", "a", 5, 0)),
    ];
    assert!(!is_linearizable(&history));
}

#[test]
fn timed_out_put_seen_then_unseen_is_not_linearizable() {
    let history = [
        timed_out(put(1, "x", "a", 0, 0)),
        get(2, "x", Some("a"), 5, 6),
        get(3, "x", None, 7, 8),
    ];
    assert!(!is_linearizable(&history));
}

#[test]
fn concurrent_appends_take_one_order_only() {
    let ab = [
        append(1, "x", "a", 0, 10),
        append(2, "x", "b", 0, 10),
        get(3, "x", Some("ba"), 11, 12),
    ];
    assert!(is_linearizable(&ab));
    let contradicting = [
        append(1, "x", "a", 0, 10),
        append(2, "x", "b", 0, 10),
        get(3, "x", Some("ba"), 11, 12),
        get(4, "x", Some("ab"), 13, 14),
    ];
    assert!(!is_linearizable(&contradicting));
    let duplicated = [
        append(1, "x", "a", 0, 10),
        append(2, "x", "b", 0, 10),
        get(3, "x", Some("aab"), 11, 12),
    ];
    assert!(!is_linearizable(&duplicated));
}

#[test]
fn real_time_order_between_appends_is_respected() {
    let history = [
        append(1, "x", "a", 0, 1),
        append(2, "x", "b", 2, 3),
        get(3, "x", Some("ba"), 4, 5),
    ];
    assert!(!is_linearizable(&history));
}

#[test]
fn violation_is_reported_with_its_key() {
    let history = [
        put(1, "x", "a", 0, 1),
        get(2, "x", Some("a"), 2, 3),
        put(1, "y", "b", 0, 1),
        get(2, "y", None, 2, 3),
    ];
    match check_kv(&history, STEPS_MAX) {
        Verdict::NotLinearizable {
            partition,
            operations,
            ..
        } => {
            assert_eq!(partition, "\"y\"");
            assert_eq!(operations, vec![2, 3]);
        }
        other => panic!("expected a violation on y, got {other:?}"),
    }
}

#[test]
fn exhausted_budget_gives_unknown() {
    let history: Vec<_> = (0..20)
        .map(|i| append(i, "x", &i.to_string(), 0, 100))
        .chain([get(99, "x", Some("nonsense"), 101, 102)])
        .collect();
    assert!(matches!(check_kv(&history, 50), Verdict::Unknown { .. }));
}

/// A random history: intervals at random, each operation takes effect at a random
/// point inside its interval (so the truth is linearizable), then some outputs are
/// corrupted and some operations lose their outcome.
fn random_history(
    rng: &mut ChaCha8Rng,
    operations: usize,
    keys: usize,
    time_max: u64,
) -> Vec<Operation<KvInput, KvOutput>> {
    let key_names = ["x", "y", "z", "w"];
    let mut drafts = Vec::new();
    for client in 0..operations as u64 {
        let key = key_names[rng.random_range(0..keys)].to_owned();
        let value = format!("{}", rng.random_range(0..3));
        let input = match rng.random_range(0..3) {
            0 => KvInput::Put { key, value },
            1 => KvInput::Append { key, value },
            _ => KvInput::Get { key },
        };
        let call = rng.random_range(0..time_max);
        let ret = call + rng.random_range(0..time_max / 2);
        let effect = rng.random_range(call..=ret);
        drafts.push((effect, client, input, call, ret));
    }
    drafts.sort_by_key(|draft| (draft.0, draft.1));
    let mut store = BTreeMap::new();
    let mut history = Vec::new();
    for (_, client, input, call, ret) in drafts {
        let output = KvModel::apply(&mut store, &input);
        history.push(Operation {
            client,
            input,
            call_time: call,
            return_time: Some(ret),
            output: Some(output),
        });
    }
    for operation in &mut history {
        let roll = rng.random_range(0..10);
        if roll == 0 {
            operation.return_time = None;
            operation.output = None;
        } else if roll < 3 && matches!(operation.input, KvInput::Get { .. }) {
            let guess = match rng.random_range(0..4) {
                0 => None,
                n => Some(format!("{}", n - 1)),
            };
            operation.output = Some(KvOutput::Value(guess));
        }
    }
    history
}

#[test]
fn random_small_histories_agree_with_brute_force() {
    let mut rng = ChaCha8Rng::seed_from_u64(0x11ca_5eed);
    let (mut linearizable, mut violations) = (0, 0);
    for case in 0..3000 {
        let operations = rng.random_range(1..=7);
        let keys = rng.random_range(1..=2);
        let history = random_history(&mut rng, operations, keys, 20);
        let expected = check_brute_force(&KvModel, &history);
        let actual = is_linearizable(&history);
        assert_eq!(
            actual, expected,
            "case {case}: checker and brute force disagree on {history:#?}"
        );
        if expected {
            linearizable += 1;
        } else {
            violations += 1;
        }
    }
    // The generator must exercise both answers, or this test proves little.
    assert!(linearizable > 500, "only {linearizable} linearizable cases");
    assert!(violations > 300, "only {violations} violating cases");
}

#[test]
fn long_linearizable_history_is_checked_within_budget() {
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    // Mostly short intervals, as in a simulation: bounded concurrency per key.
    let mut history = Vec::new();
    let mut store = BTreeMap::new();
    let mut time = 0;
    let mut pending: Vec<(u64, Operation<KvInput, KvOutput>)> = Vec::new();
    for client in 0..3000_u64 {
        time += rng.random_range(1..4);
        let key = ["x", "y", "z"][rng.random_range(0..3)].to_owned();
        let input = match rng.random_range(0..3) {
            0 => KvInput::Append {
                key,
                value: client.to_string(),
            },
            1 => KvInput::Put {
                key,
                value: client.to_string(),
            },
            _ => KvInput::Get { key },
        };
        let output = KvModel::apply(&mut store, &input);
        let unknown = rng.random_range(0..20) == 0;
        let call = time - rng.random_range(0..3).min(time);
        let ret = time + rng.random_range(0..6);
        pending.push((
            ret,
            Operation {
                client,
                input,
                call_time: call,
                return_time: (!unknown).then_some(ret),
                output: (!unknown).then_some(output),
            },
        ));
    }
    history.extend(pending.into_iter().map(|(_, operation)| operation));
    assert_eq!(check_kv(&history, 10_000_000), Verdict::Linearizable);
    // The same history with one early read corrupted is caught. (A violation near the
    // end would need the whole space of linearizations before it explored, which the
    // memo bounds but does not make cheap.)
    let early_get = history
        .iter()
        .skip(200)
        .position(|operation| {
            matches!(operation.input, KvInput::Get { .. }) && operation.output.is_some()
        })
        .expect("a completed get")
        + 200;
    history[early_get].output = Some(KvOutput::Value(Some("never written".into())));
    assert!(matches!(
        check_kv(&history, 10_000_000),
        Verdict::NotLinearizable { .. }
    ));
}
