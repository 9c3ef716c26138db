//! Property tests: every public scoring function returns (never panics) on arbitrary
//! strings up to 64 KiB, including adversarial structure. Timing is checked separately
//! (criterion bench `scoring` and the ignored test in `timing.rs`), never asserted here.

use proptest::prelude::*;
use rewards::{countdown, expr, gsm8k, math, math_equiv, score, sudoku, Task, TaskItem};

fn items() -> Vec<(Task, TaskItem)> {
    vec![
        (Task::Gsm8k, TaskItem::gsm8k("q", "42")),
        (Task::Math, TaskItem::math("q", "\\frac{1}{2}")),
        (Task::Countdown, TaskItem::countdown(vec![49, 55, 53], 51)),
        (
            Task::Sudoku,
            TaskItem::sudoku("3102200002100320", "3142243142131324"),
        ),
    ]
}

/// Arbitrary text biased towards the tokens the parsers look for.
fn text() -> impl Strategy<Value = String> {
    let atom = prop_oneof![
        4 => any::<char>().prop_map(String::from),
        2 => "[0-9+*/() .=-]{1,8}",
        1 => Just("<answer>".to_string()),
        1 => Just("</answer>".to_string()),
        1 => Just("<reasoning>\n".to_string()),
        1 => Just("\\boxed{".to_string()),
        1 => Just("\\boxed ".to_string()),
        1 => Just("}".to_string()),
        1 => Just("{".to_string()),
        1 => Just("\\frac".to_string()),
        1 => Just("\\sqrt".to_string()),
        1 => Just("\\text{ ".to_string()),
        1 => Just("**".to_string()),
        1 => Just("$".to_string()),
        1 => Just("\n".to_string()),
        1 => Just("<|eot_id|>".to_string()),
        1 => Just("```".to_string()),
    ];
    prop_oneof![
        // Short structured strings.
        prop::collection::vec(atom.clone(), 0..64).prop_map(|v| v.concat()),
        // Up to 64 KiB: a structured seed repeated.
        (prop::collection::vec(atom, 1..16), 1usize..4096).prop_map(|(v, n)| {
            let s = v.concat();
            let reps = (65536 / s.len().max(1)).min(n);
            s.repeat(reps)
        }),
        // Up to 64 KiB of arbitrary characters.
        prop::collection::vec(any::<char>(), 0..16384).prop_map(|v| v.into_iter().collect()),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn scoring_never_panics(s in text()) {
        prop_assert!(s.len() <= 65536 * 2);
        for (task, item) in items() {
            let r = rewards::training_reward(task, &s, &item).unwrap();
            prop_assert!(r.total().is_finite());
            prop_assert!(r.total() <= rewards::max_reward(task) + 0.01);
            let e = rewards::eval_correct(task, &s, &item).unwrap();
            prop_assert!(e.correct <= e.total);
            let rec = serde_json::json!({"question": s, "generations": s, "ground_truth": s});
            let _ = score::score_record(task, &rec);
        }
        let _ = expr::evaluate(&s);
        let _ = math_equiv::strip_string(&s);
        let _ = math_equiv::is_equiv(Some(&s), Some("\\frac{1}{2}"));
        let _ = math::eval_parse(&s);
        let _ = math::last_boxed_only_string(&s);
        let _ = gsm8k::eval_parse(&s);
        let _ = countdown::eval_extract(&s);
        let _ = countdown::truth_from_question(&s);
        let _ = sudoku::eval_extract(&s);
        let _ = sudoku::puzzle_from_question(&s);
        let _ = rewards::pycompat::float(&s);
        let _ = rewards::pycompat::int_canonical(&s);
    }

    #[test]
    fn evaluator_agrees_with_rational_arithmetic(a in 0i64..1000, b in 1i64..1000, c in 0i64..1000) {
        let v = expr::evaluate(&format!("({a} + {c}) * {b} / {b} - {c}")).unwrap();
        prop_assert_eq!(v, rewards::rational::Rational::from_int(a));
    }
}
