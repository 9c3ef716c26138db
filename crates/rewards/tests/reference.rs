//! Differential test against the Python references (docs/algorithm.md §7): `fixtures/reference_cases.json`
//! holds completions (hand-written edge cases, real LLaDA generations from d1's
//! `eval/eval_baselines/`, and mutations of them) with the values computed by running
//! DMPO's `reward_func.py`/`math500_utils.py` and d1's `parse_and_get_acc.py` on them.

use rewards::{score::score_record, training_reward, Task, TaskItem};
use serde_json::Value;

#[derive(serde::Deserialize)]
struct Case {
    task: Task,
    completion: String,
    record: Value,
    item: TaskItem,
    /// Values for display; `train_bits` holds the exact IEEE bits (JSON float parsing
    /// in serde_json is not always correctly rounded).
    train: std::collections::BTreeMap<String, f64>,
    train_bits: std::collections::BTreeMap<String, u64>,
    eval: Expected,
}

#[derive(serde::Deserialize)]
struct Expected {
    correct: u32,
    total: u32,
}

fn cases() -> Vec<Case> {
    serde_json::from_str(include_str!("fixtures/reference_cases.json")).expect("fixture")
}

#[test]
fn training_rewards_match_python_bit_for_bit() {
    let cases = cases();
    assert!(cases.len() > 700);
    let mut failures = Vec::new();
    for (i, c) in cases.iter().enumerate() {
        let got = training_reward(c.task, &c.completion, &c.item).unwrap();
        assert_eq!(got.components.len(), c.train.len());
        for (name, v) in &got.components {
            let want = f64::from_bits(c.train_bits[*name]);
            assert!((want - c.train[*name]).abs() < 1e-12);
            if v.to_bits() != want.to_bits() {
                failures.push(format!(
                    "case {i} {} {name}: got {v} want {want}: {:?}",
                    c.task, c.completion
                ));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} mismatches:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn evaluation_matches_d1() {
    let mut failures = Vec::new();
    for (i, c) in cases().iter().enumerate() {
        let got = score_record(c.task, &c.record).unwrap();
        if (got.correct, got.total) != (c.eval.correct, c.eval.total) {
            failures.push(format!(
                "case {i} {}: got {}/{} want {}/{} (extracted {:?}): {:?}",
                c.task,
                got.correct,
                got.total,
                c.eval.correct,
                c.eval.total,
                got.extracted,
                c.completion
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} mismatches:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
