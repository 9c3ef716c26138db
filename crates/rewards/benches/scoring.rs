//! Timing of every public scoring function on inputs under 4 KiB (the issue's
//! "< 1 ms per input" requirement). Run: `cargo bench -p rewards --bench scoring`.

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use rewards::{eval_correct, training_reward, Task, TaskItem};

fn inputs() -> Vec<String> {
    let good = "<reasoning>\nthink\n</reasoning>\n<answer>\n\\boxed{49 + 55 - 53}\n</answer>\n";
    vec![
        good.repeat(4000 / good.len()),
        "{".repeat(4000),
        "\\boxed{".repeat(570),
        "<answer>".repeat(500),
        format!("<answer>{}</answer>", "(".repeat(3900)),
        format!("<answer>{}1</answer>", "9**".repeat(1300)),
        "\\frac\\sqrt".repeat(400),
        "1/2=".repeat(1000),
        "é".repeat(2000),
    ]
}

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

fn bench(c: &mut Criterion) {
    let inputs = inputs();
    for (task, item) in items() {
        c.bench_function(
            &format!("{task}/training+eval, 9 adversarial 4 KiB inputs"),
            |b| {
                b.iter(|| {
                    for s in &inputs {
                        black_box(training_reward(task, black_box(s), &item).ok());
                        black_box(eval_correct(task, black_box(s), &item).ok());
                    }
                })
            },
        );
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
