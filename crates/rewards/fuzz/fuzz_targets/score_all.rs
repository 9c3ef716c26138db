//! Fuzz every task's training reward and evaluation on arbitrary completions.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rewards::{eval_correct, training_reward, Task, TaskItem};

fuzz_target!(|data: &[u8]| {
    if let Ok(s) = std::str::from_utf8(data) {
        let items = [
            (Task::Gsm8k, TaskItem::gsm8k("q", "42")),
            (Task::Math, TaskItem::math("q", "\\frac{1}{2}")),
            (Task::Countdown, TaskItem::countdown(vec![49, 55, 53], 51)),
            (
                Task::Sudoku,
                TaskItem::sudoku("3102200002100320", "3142243142131324"),
            ),
        ];
        for (t, it) in &items {
            let r = training_reward(*t, s, it).unwrap();
            assert!(r.total().is_finite());
            let e = eval_correct(*t, s, it).unwrap();
            assert!(e.correct <= e.total);
        }
    }
});
