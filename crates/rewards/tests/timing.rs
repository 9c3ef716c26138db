//! The latency budget: every public scoring function under 1 ms per input below
//! 4 KiB. Timed, so it is `#[ignore]`d (shared CI machines make timings flaky); run with
//! `cargo test -p rewards --release --test timing -- --ignored --nocapture`.
//! The criterion bench `scoring` measures the same inputs.

use rewards::{eval_correct, training_reward, Task, TaskItem};
use std::time::{Duration, Instant};

fn inputs() -> Vec<String> {
    let good = "<reasoning>\nthink\n</reasoning>\n<answer>\n\\boxed{49 + 55 - 53}\n</answer>\n";
    let mut v = vec![
        good.repeat(4000 / good.len()),
        "{".repeat(4000),
        "\\boxed{".repeat(570),
        "\\boxed ".repeat(570),
        "<answer>".repeat(500),
        "<answer></answer>".repeat(235),
        format!("<answer>{}</answer>", "(".repeat(3900)),
        format!("<answer>{}1</answer>", "9**".repeat(1300)),
        format!("<answer>{}</answer>", "1+".repeat(1990)),
        "\\frac\\sqrt".repeat(400),
        "1/2=".repeat(1000),
        "é".repeat(2000),
        "9".repeat(4000),
        format!("{}</answer>", "1".repeat(4000)),
    ];
    let cases: Vec<serde_json::Value> =
        serde_json::from_str(include_str!("fixtures/reference_cases.json")).unwrap();
    v.extend(
        cases
            .iter()
            .map(|c| c["completion"].as_str().unwrap().to_string())
            .filter(|s| s.len() < 4096),
    );
    v
}

#[test]
#[ignore]
fn every_scoring_call_under_one_millisecond() {
    let items = [
        (Task::Gsm8k, TaskItem::gsm8k("q", "42")),
        (Task::Math, TaskItem::math("q", "\\frac{1}{2}")),
        (Task::Countdown, TaskItem::countdown(vec![49, 55, 53], 51)),
        (
            Task::Sudoku,
            TaskItem::sudoku("3102200002100320", "3142243142131324"),
        ),
    ];
    let inputs = inputs();
    // Warm up lazily compiled regexes.
    for (t, it) in &items {
        let _ = training_reward(*t, "", it);
        let _ = eval_correct(*t, "", it);
    }
    let mut worst = (Duration::ZERO, String::new());
    for s in &inputs {
        assert!(s.len() < 4096, "{}", s.len());
        for (t, it) in &items {
            // Best of 3 to filter scheduler noise.
            let d = (0..3)
                .map(|_| {
                    let start = Instant::now();
                    let _ = training_reward(*t, s, it);
                    let _ = eval_correct(*t, s, it);
                    start.elapsed()
                })
                .min()
                .unwrap();
            if d > worst.0 {
                worst = (d, format!("{t}: {:?}", &s[..s.len().min(40)]));
            }
        }
    }
    println!(
        "{} inputs, worst training+eval pair: {:?} ({})",
        inputs.len(),
        worst.0,
        worst.1
    );
    assert!(worst.0 < Duration::from_millis(1), "{worst:?}");
}
