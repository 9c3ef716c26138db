//! The real evaluation sets (shipped in `data/`, copied from d1/DMPO): their own
//! solutions score 100%, shuffled solutions score low; d1 generation-file excerpts
//! score exactly as d1's `parse_and_get_acc.py` does.

use rewards::{
    countdown, data, eval_correct, score_files, training_reward, GroundTruth, Task, TaskItem,
};
use std::path::PathBuf;

fn countdown_solutions(items: &[TaskItem]) -> Vec<String> {
    items
        .iter()
        .map(|it| match &it.truth {
            GroundTruth::Countdown { numbers, target } => countdown::solve(numbers, *target)
                .unwrap_or_else(|| panic!("solver found nothing for {numbers:?} -> {target}")),
            _ => unreachable!(),
        })
        .collect()
}

fn sudoku_solutions(items: &[TaskItem]) -> Vec<String> {
    items
        .iter()
        .map(|it| match &it.truth {
            GroundTruth::Sudoku { solution, .. } => solution.clone(),
            _ => unreachable!(),
        })
        .collect()
}

/// A generation in each task's evaluation answer format: `\boxed{}` inside `<answer>`,
/// except Sudoku, whose prompt asks for the bare 16 digits (d1's Sudoku parser keeps a
/// `\boxed{` prefix as part of the answer).
fn eval_generation(task: Task, ans: &str) -> String {
    if task == Task::Sudoku {
        format!("<reasoning>\nx\n</reasoning>\n<answer>\n{ans}\n</answer><|eot_id|>")
    } else {
        format!("<reasoning>\nx\n</reasoning>\n<answer>\n\\boxed{{{ans}}}\n</answer><|eot_id|>")
    }
}

/// (training reward sum, eval correct, eval total) with answer `i` given to item `(i + shift) % n`.
fn run(task: Task, items: &[TaskItem], answers: &[String], shift: usize) -> (f64, u64, u64) {
    let n = items.len();
    let (mut reward, mut correct, mut total) = (0.0, 0u64, 0u64);
    for (i, ans) in answers.iter().enumerate() {
        let item = &items[(i + shift) % n];
        let train = format!("<reasoning>\nsolved\n</reasoning>\n<answer>\n{ans}\n</answer>\n");
        let eval = eval_generation(task, ans);
        reward += training_reward(task, &train, item).unwrap().total();
        let s = eval_correct(task, &eval, item).unwrap();
        correct += u64::from(s.correct);
        total += u64::from(s.total);
    }
    (reward, correct, total)
}

#[test]
fn countdown_set_own_solutions_score_100_percent() {
    let items = data::countdown_cd3_test();
    assert_eq!(items.len(), 256);
    let sols = countdown_solutions(&items);
    let (reward, correct, total) = run(Task::Countdown, &items, &sols, 0);
    assert_eq!((correct, total), (256, 256));
    assert_eq!(reward, 256.0);
    // Shuffled: every answer uses another item's numbers -> 0 correct, 0.1 format score each.
    let (reward, correct, total) = run(Task::Countdown, &items, &sols, 1);
    assert_eq!((correct, total), (0, 256));
    assert!((reward - 25.6).abs() < 1e-9, "{reward}");
}

#[test]
fn sudoku_set_own_solutions_score_100_percent() {
    let items = data::sudoku_4x4_test();
    assert_eq!(items.len(), 500);
    let sols = sudoku_solutions(&items);
    let (reward, correct, total) = run(Task::Sudoku, &items, &sols, 0);
    assert_eq!(total, 500 * 8);
    assert_eq!(correct, total);
    assert_eq!(reward, 500.0);
    // Shuffled: another grid's digits match an empty cell about 1 time in 4.
    let (reward, correct, total) = run(Task::Sudoku, &items, &sols, 1);
    let acc = correct as f64 / total as f64;
    assert!((0.15..0.35).contains(&acc), "{acc}");
    assert!((reward / 500.0 - acc).abs() < 1e-9);
}

#[test]
fn sudoku_test_set_facts() {
    // Every test puzzle has 8 blanks and its solution solves it, but unlike the training
    // file (`4x4_sudoku_unique_puzzles.csv`) many test puzzles have several solutions:
    // the reference still scores against the one listed.
    let mut unique = 0;
    for it in data::sudoku_4x4_test() {
        let GroundTruth::Sudoku { puzzle, solution } = &it.truth else {
            unreachable!()
        };
        let p = rewards::sudoku::parse_grid(puzzle).unwrap();
        assert_eq!(p.iter().filter(|&&d| d == 0).count(), 8);
        let s = rewards::sudoku::parse_grid(solution).unwrap();
        assert!(rewards::sudoku::is_solved(&s));
        let n = rewards::sudoku::count_solutions(&p, 1000);
        assert!(n >= 1);
        unique += usize::from(n == 1);
    }
    assert_eq!(unique, UNIQUE_TEST_PUZZLES);
}

/// How many of the 500 test puzzles have exactly one solution (measured).
const UNIQUE_TEST_PUZZLES: usize = 376;

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

#[test]
fn d1_generation_excerpts_score_like_d1() {
    let expected: serde_json::Value =
        serde_json::from_str(include_str!("fixtures/d1_excerpt_expected.json")).unwrap();
    for (name, want) in expected.as_object().unwrap() {
        let task: Task = want["task"].as_str().unwrap().parse().unwrap();
        let report = score_files(task, &[fixture(name)]).unwrap();
        assert_eq!(report.correct, want["correct"].as_u64().unwrap(), "{name}");
        assert_eq!(report.total, want["total"].as_u64().unwrap(), "{name}");
        assert_eq!(report.files.len(), 1);
    }
}

#[test]
fn excerpts_with_ground_truth_substituted_score_100_percent() {
    for task in Task::ALL {
        let path = fixture(&format!("d1_{task}_256_excerpt_generations.json"));
        let mut data: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        let mut shuffled = data.clone();
        let recs = data["generations"].as_array_mut().unwrap();
        let n = recs.len();
        let answers: Vec<String> = recs
            .iter()
            .map(|r| {
                let gt = &r["ground_truth"];
                match task {
                    Task::Gsm8k => format!("{}", gt.as_f64().unwrap()),
                    Task::Math | Task::Sudoku => gt.as_str().unwrap().to_string(),
                    Task::Countdown => {
                        let nums: Vec<i64> = gt[0]
                            .as_array()
                            .unwrap()
                            .iter()
                            .map(|x| x.as_i64().unwrap())
                            .collect();
                        countdown::solve(&nums, gt[1].as_i64().unwrap()).unwrap()
                    }
                }
            })
            .collect();
        let gen = |a: &str| eval_generation(task, a);
        for (r, a) in recs.iter_mut().zip(&answers) {
            r["generations"] = gen(a).into();
        }
        for (i, r) in shuffled["generations"]
            .as_array_mut()
            .unwrap()
            .iter_mut()
            .enumerate()
        {
            r["generations"] = gen(&answers[(i + 1) % n]).into();
        }
        let dir = tempfile::tempdir().unwrap();
        let (good, bad) = (dir.path().join("good.json"), dir.path().join("bad.json"));
        std::fs::write(&good, data.to_string()).unwrap();
        std::fs::write(&bad, shuffled.to_string()).unwrap();
        let r = score_files(task, &[&good]).unwrap();
        assert_eq!(r.correct, r.total, "{task}");
        assert_eq!(r.accuracy_pct, 100.0);
        let r = score_files(task, &[&good, &bad]).unwrap();
        assert_eq!(r.files[0].accuracy_pct, 100.0);
        assert!(
            r.files[1].accuracy_pct < 40.0,
            "{task}: {}",
            r.files[1].accuracy_pct
        );
        assert_eq!(r.items, 2 * n as u64);
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(json["task"], task.name());
    }
}

/// Cross-check against all of d1's published baseline generation files (4 tasks x 3
/// lengths, 85 shards). Needs a checkout: `D1_EVAL_BASELINES=/path/to/d1/eval/eval_baselines
/// cargo test -p rewards --test eval_sets -- --ignored`.
#[test]
#[ignore]
fn d1_full_baselines_match() {
    let dir = PathBuf::from(std::env::var("D1_EVAL_BASELINES").expect("set D1_EVAL_BASELINES"));
    let expected: serde_json::Value =
        serde_json::from_str(include_str!("fixtures/d1_baselines_expected.json")).unwrap();
    for (name, want) in expected.as_object().unwrap() {
        let task: Task = want["task"].as_str().unwrap().parse().unwrap();
        let r = score_files(task, &[dir.join(name)]).unwrap();
        assert_eq!(
            (r.correct, r.total),
            (
                want["correct"].as_u64().unwrap(),
                want["total"].as_u64().unwrap()
            ),
            "{name}"
        );
    }
}
