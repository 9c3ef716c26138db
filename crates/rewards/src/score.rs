//! Scoring of generation files in the d1/DMPO evaluation JSON layout (docs/algorithm.md §8.3):
//! `{"generations": [{"question", "generations", "ground_truth"}, ...], ...}`, one or more
//! shard files per run. Accuracy is correct / processed over all items of all files
//! (for Sudoku: correct empty cells / empty cells), as d1's `parse_and_get_acc.py`.

use serde::Serialize;
use serde_json::Value;
use std::path::Path;

use crate::math::MathTruth;
use crate::reward::EvalScore;
use crate::{countdown, gsm8k, math, sudoku, Error, Task};

/// The score of one generation file.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FileScore {
    /// The file, as given.
    pub path: String,
    /// Items in the file.
    pub items: u64,
    /// Units correct (items, or Sudoku cells).
    pub correct: u64,
    /// Units scored (items, or Sudoku empty cells).
    pub total: u64,
    /// `100 * correct / total` (0 when empty), as d1 prints it.
    pub accuracy_pct: f64,
}

/// The score of a set of generation files (one evaluation run, possibly sharded).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ScoreReport {
    /// The task scored.
    pub task: Task,
    /// Per-file scores, in the order given.
    pub files: Vec<FileScore>,
    /// Items over all files.
    pub items: u64,
    /// Units correct over all files.
    pub correct: u64,
    /// Units scored over all files.
    pub total: u64,
    /// `100 * correct / total` over all files.
    pub accuracy_pct: f64,
}

fn pct(correct: u64, total: u64) -> f64 {
    if total == 0 {
        0.0
    } else {
        100.0 * correct as f64 / total as f64
    }
}

fn str_or_default<'a>(item: &'a Value, key: &str) -> Result<&'a str, String> {
    match item.get(key) {
        None => Ok(""),
        Some(Value::String(s)) => Ok(s),
        Some(other) => Err(format!("{key:?} is not a string: {other}")),
    }
}

fn numbers_of(v: &Value) -> Vec<f64> {
    // A non-list or a non-numeric entry makes d1's validate_equation fail; NaN never matches.
    match v.as_array() {
        Some(a) => a.iter().map(|x| x.as_f64().unwrap_or(f64::NAN)).collect(),
        None => vec![f64::NAN],
    }
}

/// Refuses a record whose ground truth cannot be one of `task`'s, so that a file of another
/// task is an error rather than a score of 0: a number for GSM8K (d1 and `dmpo` store
/// numbers), a string or number for MATH, a `[numbers,
/// target]` pair for Countdown (or none, the question then carries them), and for Sudoku a
/// solved 16-digit grid that agrees with the question's puzzle.
fn check_truth(task: Task, question: &str, truth: Option<&Value>) -> Result<(), String> {
    let shown = || truth.map_or("none".to_string(), |t| t.to_string());
    let ok = match (task, truth) {
        (Task::Gsm8k, Some(Value::Number(_))) => true,
        (Task::Math, Some(Value::String(_) | Value::Number(_)) | None) => true,
        // A pair is scored as d1 scores it (a malformed one never validates).
        (Task::Countdown, Some(Value::Array(pair))) => pair.len() == 2,
        (Task::Countdown, None | Some(Value::Null)) => {
            countdown::truth_from_question(question).1.is_some()
        }
        (Task::Sudoku, Some(Value::String(solution))) => {
            let puzzle = sudoku::puzzle_from_question(question).unwrap_or_default();
            crate::data::sudoku_item(&puzzle, solution).is_ok()
        }
        _ => false,
    };
    if ok {
        Ok(())
    } else {
        Err(format!(
            "ground_truth {} is not a {task} answer ({})",
            shown(),
            match task {
                Task::Gsm8k => "a number",
                Task::Math => "a string or a number",
                Task::Countdown => "a [numbers, target] pair",
                Task::Sudoku => "a solved 16-digit grid that agrees with the question's puzzle",
            }
        ))
    }
}

/// Score one generation record (`question`, `generations`, `ground_truth`) of a task.
pub fn score_record(task: Task, item: &Value) -> Result<EvalScore, String> {
    if !item.is_object() {
        return Err("generation record is not a JSON object".into());
    }
    let question = str_or_default(item, "question")?;
    check_truth(task, question, item.get("ground_truth"))?;
    let generation = str_or_default(item, "generations")?;
    let truth = item.get("ground_truth").unwrap_or(&Value::Null);
    Ok(match task {
        // `parsed == ground_truth`: only a JSON number can compare equal to a float.
        Task::Gsm8k => gsm8k::eval_score(generation, truth.as_f64()),
        Task::Math => {
            let t = match truth {
                Value::String(s) => MathTruth::Text(s.clone()),
                Value::Number(n) if n.is_f64() => MathTruth::Float(n.as_f64().unwrap_or(f64::NAN)),
                Value::Null if item.get("ground_truth").is_none() => MathTruth::Text(String::new()),
                _ => MathTruth::Other,
            };
            math::eval_score(generation, &t)
        }
        Task::Countdown => {
            let (numbers, target) = match truth.as_array() {
                Some(pair) if pair.len() == 2 => (numbers_of(&pair[0]), pair[1].as_f64()),
                _ => countdown::truth_from_question(question),
            };
            countdown::eval_score(generation, &numbers, target)
        }
        Task::Sudoku => {
            let puzzle = sudoku::puzzle_from_question(question)
                .ok_or_else(|| format!("no 16-digit puzzle in question {question:?}"))?;
            let solution = truth
                .as_str()
                .ok_or_else(|| format!("ground_truth is not a string: {truth}"))?;
            sudoku::eval_score(generation, &puzzle, solution)
        }
    })
}

/// Score a parsed generation file; `path` names it in the result and in errors.
pub fn score_value(task: Task, data: &Value, path: &str) -> Result<FileScore, Error> {
    let bad = |message: String| Error::BadFile {
        path: path.into(),
        message,
    };
    if !data.is_object() {
        return Err(bad("top level is not a JSON object".into()));
    }
    // Files written by `dmpo` name their task; d1's are named after it.
    let named = match data.get("task") {
        Some(Value::String(t)) => t.parse::<Task>().ok(),
        _ => task_from_file_name(path),
    };
    if let Some(other) = named.filter(|&t| t != task) {
        return Err(bad(format!(
            "holds {other} generations, not {task} (the file's `task` or name says so)"
        )));
    }
    let records = match data.get("generations") {
        None => {
            return Err(bad(
                "no \"generations\" list: not an evaluation file ({\"generations\": [{\"question\", \"generations\", \"ground_truth\"}, …]})"
                    .into(),
            ))
        }
        Some(Value::Array(a)) => &a[..],
        Some(_) => return Err(bad("\"generations\" is not a list".into())),
    };
    let (mut correct, mut total) = (0u64, 0u64);
    for (i, rec) in records.iter().enumerate() {
        let s = score_record(task, rec).map_err(|m| bad(format!("generation {i}: {m}")))?;
        correct += u64::from(s.correct);
        total += u64::from(s.total);
    }
    Ok(FileScore {
        path: path.into(),
        items: records.len() as u64,
        correct,
        total,
        accuracy_pct: pct(correct, total),
    })
}

/// The largest generation file read (256 MiB; d1's largest, LLaDA-8B on MATH500, is ~3 MB): a
/// larger input (or an endless one such as `/dev/zero`) is refused before it fills memory.
pub const MAX_FILE_BYTES: u64 = 256 << 20;

/// Reads `path` as UTF-8, refusing more than `limit` bytes.
fn read_limited(path: &Path, limit: u64) -> Result<String, Error> {
    use std::io::Read;
    let io = |source| Error::Io {
        path: path.to_path_buf(),
        source,
    };
    let file = std::fs::File::open(path).map_err(io)?;
    let mut bytes = Vec::new();
    file.take(limit + 1).read_to_end(&mut bytes).map_err(io)?;
    if bytes.len() as u64 > limit {
        return Err(Error::BadFile {
            path: path.to_path_buf(),
            message: format!(
                "larger than the {} MiB a generation file may hold",
                limit >> 20
            ),
        });
    }
    let text = String::from_utf8(bytes).map_err(|e| Error::BadFile {
        path: path.to_path_buf(),
        message: format!("not UTF-8 text ({e})"),
    })?;
    // A leading byte-order mark (Windows editors) is not JSON; it is skipped.
    Ok(match text.strip_prefix('\u{feff}') {
        Some(rest) => rest.to_string(),
        None => text,
    })
}

/// Score one generation file.
pub fn score_file(task: Task, path: impl AsRef<Path>) -> Result<FileScore, Error> {
    let path = path.as_ref();
    let text = read_limited(path, MAX_FILE_BYTES)?;
    let data: Value = serde_json::from_str(&text).map_err(|e| Error::BadFile {
        path: path.to_path_buf(),
        message: format!("invalid JSON: {e}"),
    })?;
    score_value(task, &data, &path.display().to_string())
}

/// Score generation files (e.g. the shards of one run): per-file and total accuracy. A file
/// given twice (the same file by any path) and a set with nothing to score are refused.
pub fn score_files<P: AsRef<Path>>(task: Task, paths: &[P]) -> Result<ScoreReport, Error> {
    let mut seen = Vec::new();
    for p in paths {
        let p = p.as_ref();
        let key = std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf());
        if seen.contains(&key) {
            return Err(Error::BadFile {
                path: p.to_path_buf(),
                message: "given twice: its items would be counted twice".into(),
            });
        }
        seen.push(key);
    }
    let files = paths
        .iter()
        .map(|p| score_file(task, p))
        .collect::<Result<Vec<_>, _>>()?;
    if let Some(first) = paths.first().filter(|_| files.iter().all(|f| f.total == 0)) {
        return Err(Error::BadFile {
            path: first.as_ref().to_path_buf(),
            message: "nothing to score: no generation record in the files given".into(),
        });
    }
    let items = files.iter().map(|f| f.items).sum();
    let correct = files.iter().map(|f| f.correct).sum();
    let total = files.iter().map(|f| f.total).sum();
    Ok(ScoreReport {
        task,
        files,
        items,
        correct,
        total,
        accuracy_pct: pct(correct, total),
    })
}

/// Guess the task from a d1 file name (`gsm8k_...`, `math500_...`, `countdown_...`,
/// `sudoku_...`), as d1's aggregation does by substring.
pub fn task_from_file_name(path: impl AsRef<Path>) -> Option<Task> {
    let name = path.as_ref().file_name()?.to_str()?;
    if name.contains("gsm") {
        Some(Task::Gsm8k)
    } else if name.contains("math") {
        Some(Task::Math)
    } else if name.contains("countdown") {
        Some(Task::Countdown)
    } else if name.contains("sudoku") {
        Some(Task::Sudoku)
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn layout_errors_and_defaults() {
        assert!(score_value(Task::Gsm8k, &json!([1]), "x").is_err());
        assert!(score_value(Task::Gsm8k, &json!({"generations": 3}), "x").is_err());
        // Not an evaluation file: no `generations`.
        let e = score_value(Task::Gsm8k, &json!({"metrics": {}}), "x").unwrap_err();
        assert!(e.to_string().contains("not an evaluation file"), "{e}");
        let empty = score_value(Task::Gsm8k, &json!({"generations": []}), "x").unwrap();
        assert_eq!((empty.items, empty.total, empty.accuracy_pct), (0, 0, 0.0));
        // Another task's file, by its `task` or its name.
        let e = score_value(
            Task::Gsm8k,
            &json!({"task": "sudoku", "generations": []}),
            "x",
        );
        assert!(e.unwrap_err().to_string().contains("sudoku generations"));
        let e = score_value(
            Task::Math,
            &json!({"generations": []}),
            "countdown_shard0.json",
        );
        assert!(e.unwrap_err().to_string().contains("countdown generations"));
        let e = score_value(
            Task::Gsm8k,
            &json!({"generations": [{"generations": 5}]}),
            "x",
        );
        assert!(e.unwrap_err().to_string().contains("generation 0"));
        let e = score_value(
            Task::Sudoku,
            &json!({"generations": [{"question": "?", "ground_truth": "1"}]}),
            "x",
        );
        assert!(e.is_err());
    }

    #[test]
    fn ground_truth_types_follow_python() {
        let rec =
            |gt: Value| json!({"question": "q", "generations": "\\boxed{18}", "ground_truth": gt});
        assert_eq!(
            score_record(Task::Gsm8k, &rec(json!(18.0)))
                .unwrap()
                .correct,
            1
        );
        assert_eq!(
            score_record(Task::Gsm8k, &rec(json!(18))).unwrap().correct,
            1
        );
        // d1's `parsed == ground_truth` never holds for a string; d1 and `dmpo` store numbers,
        // so a string is another task's truth (a Sudoku grid, say) and is refused rather than
        // scored 0.
        let e = score_record(Task::Gsm8k, &rec(json!("18"))).unwrap_err();
        assert!(e.contains("not a gsm8k answer"), "{e}");
        assert_eq!(
            score_record(Task::Math, &rec(json!("18"))).unwrap().correct,
            1
        );
        assert_eq!(
            score_record(Task::Math, &rec(json!(18.0))).unwrap().correct,
            1
        );
        assert_eq!(
            score_record(Task::Math, &rec(json!(18))).unwrap().correct,
            0
        );
        let cd = json!({"question": "Numbers: [49, 55, 53]\nTarget: 51", "generations": "\\boxed{49+55-53}", "ground_truth": null});
        assert_eq!(score_record(Task::Countdown, &cd).unwrap().correct, 1);
        let cd = json!({"generations": "\\boxed{49+55-53}", "ground_truth": [[49, 55, 53], 51]});
        assert_eq!(score_record(Task::Countdown, &cd).unwrap().correct, 1);
        let cd = json!({"generations": "\\boxed{49+55-53}", "ground_truth": [49, 51]});
        assert_eq!(score_record(Task::Countdown, &cd).unwrap().correct, 0);
    }

    #[test]
    fn file_names() {
        assert_eq!(
            task_from_file_name("a/gsm8k_instruct_256_128_0_generations.json"),
            Some(Task::Gsm8k)
        );
        assert_eq!(task_from_file_name("math500_x.json"), Some(Task::Math));
        assert_eq!(task_from_file_name("other.json"), None);
    }
}
