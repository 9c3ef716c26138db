//! Task data loaders for the reference formats (docs/algorithm.md §7): GSM8K JSONL (`question`,
//! `answer` with `####`), MATH JSONL (`problem`, `answer` or `solution`), Countdown JSONL
//! (`{"input": "30,100,93", "output": "23"}` or `{"nums": [..], "target": n}`), Sudoku CSV
//! (`Puzzle,Solution`), and Parquet with the same columns (cargo feature `parquet`).
//!
//! Every malformed row is an [`Error::BadRow`] naming the file and line; nothing panics.

use serde_json::Value;
use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::Path;

use crate::task::{Task, TaskItem};
use crate::{gsm8k, math, sudoku, Error};

fn io_err(path: &Path, source: std::io::Error) -> Error {
    Error::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The longest message a bad row produces: a row's values are quoted in messages, and a 50 MB
/// field must not be echoed whole.
const MAX_MESSAGE_CHARS: usize = 300;

fn bad(path: &Path, line: u64, message: impl Into<String>) -> Error {
    let message = message.into();
    let message = match message.char_indices().nth(MAX_MESSAGE_CHARS) {
        Some((cut, _)) => format!(
            "{}… ({} more bytes not shown)",
            &message[..cut],
            message.len() - cut
        ),
        None => message,
    };
    Error::BadRow {
        path: path.to_path_buf(),
        line,
        message,
    }
}

fn str_field<'a>(row: &'a Value, key: &str) -> Result<&'a str, String> {
    match row.get(key) {
        Some(Value::String(s)) => Ok(s),
        Some(other) => Err(format!("field {key:?} is not a string: {other}")),
        None => Err(format!("missing field {key:?}")),
    }
}

fn int_value(v: &Value, what: &str) -> Result<i64, String> {
    match v {
        Value::Number(n) => n
            .as_i64()
            .or_else(|| {
                n.as_f64()
                    .filter(|f| f.fract() == 0.0 && f.abs() < 9e15)
                    .map(|f| f as i64)
            })
            .ok_or_else(|| match n.as_f64() {
                Some(f) if f.fract() == 0.0 => {
                    format!("{what} is out of range: {n} (integers up to ±9e15 are read)")
                }
                _ => format!("{what} is not an integer: {n}"),
            }),
        Value::String(s) => s
            .trim()
            .parse::<i64>()
            .map_err(|_| format!("{what} is not an integer: {s:?}")),
        other => Err(format!("{what} is not an integer: {other}")),
    }
}

/// One GSM8K row (`question`, `answer` containing `#### N`) as a task item.
pub fn gsm8k_item(row: &Value) -> Result<TaskItem, String> {
    let question = str_field(row, "question")?;
    let answer = str_field(row, "answer")?;
    let hash = gsm8k::extract_hash_answer(answer)
        .ok_or_else(|| "answer has no \"####\" final answer".to_string())?;
    Ok(TaskItem::gsm8k(question, hash))
}

/// One MATH row (`problem` plus `answer`, or a `solution` with a `\boxed{}`) as a task item.
pub fn math_item(row: &Value) -> Result<TaskItem, String> {
    let problem = str_field(row, "problem")?;
    if let Ok(answer) = str_field(row, "answer") {
        return Ok(TaskItem::math(problem, answer));
    }
    let solution = str_field(row, "solution")
        .map_err(|_| "needs an \"answer\" or a \"solution\" string".to_string())?;
    if !solution.contains("\\boxed") && !solution.contains("\\fbox") {
        return Err("solution has no \\boxed{} answer".into());
    }
    let answer = math::extract_boxed(solution)
        .ok_or_else(|| "solution's last \\boxed{} is not closed".to_string())?;
    Ok(TaskItem::math(problem, answer))
}

/// One Countdown row (`input`/`output` strings or `nums`/`target`) as a task item.
pub fn countdown_item(row: &Value) -> Result<TaskItem, String> {
    let (numbers, target) = if let Some(input) = row.get("input") {
        let input = input
            .as_str()
            .ok_or_else(|| "field \"input\" is not a string".to_string())?;
        let numbers = input
            .split(',')
            .map(|p| {
                p.trim()
                    .parse::<i64>()
                    .map_err(|_| format!("bad number {p:?} in \"input\""))
            })
            .collect::<Result<Vec<i64>, String>>()?;
        let output = row.get("output").ok_or("missing field \"output\"")?;
        (numbers, int_value(output, "\"output\"")?)
    } else {
        let nums = row
            .get("nums")
            .and_then(Value::as_array)
            .ok_or_else(|| "needs \"input\"/\"output\" or \"nums\"/\"target\"".to_string())?;
        let numbers = nums
            .iter()
            .map(|v| int_value(v, "a number in \"nums\""))
            .collect::<Result<Vec<i64>, String>>()?;
        let target = row.get("target").ok_or("missing field \"target\"")?;
        (numbers, int_value(target, "\"target\"")?)
    };
    if numbers.is_empty() {
        return Err("no numbers".into());
    }
    if numbers.iter().any(|&n| n < 0) {
        return Err("negative numbers are not supported".into());
    }
    Ok(TaskItem::countdown(numbers, target))
}

/// One Sudoku pair (puzzle, solution) checked for consistency, as a task item.
pub fn sudoku_item(puzzle: &str, solution: &str) -> Result<TaskItem, String> {
    let p = sudoku::parse_grid(puzzle)
        .ok_or_else(|| format!("puzzle {puzzle:?} is not 16 digits 0-4"))?;
    let s = sudoku::parse_grid(solution)
        .ok_or_else(|| format!("solution {solution:?} is not 16 digits 0-4"))?;
    if !sudoku::is_solved(&s) {
        return Err(format!("solution {solution:?} is not a valid 4x4 Sudoku"));
    }
    if p.iter().zip(&s).any(|(&a, &b)| a != 0 && a != b) {
        return Err(format!(
            "solution {solution:?} contradicts puzzle {puzzle:?}"
        ));
    }
    Ok(TaskItem::sudoku(puzzle, solution))
}

/// One JSON row of the given task as a task item (Sudoku rows use `Puzzle`/`Solution`).
pub fn item_from_json(task: Task, row: &Value) -> Result<TaskItem, String> {
    if !row.is_object() {
        return Err("row is not a JSON object".into());
    }
    match task {
        Task::Gsm8k => gsm8k_item(row),
        Task::Math => math_item(row),
        Task::Countdown => countdown_item(row),
        Task::Sudoku => sudoku_item(str_field(row, "Puzzle")?, str_field(row, "Solution")?),
    }
}

/// Parse JSON Lines from a reader; `path` is only used in errors. Blank lines are skipped.
pub fn read_jsonl<R: Read>(task: Task, reader: R, path: &Path) -> Result<Vec<TaskItem>, Error> {
    let mut items = Vec::new();
    for (i, line) in BufReader::new(reader).lines().enumerate() {
        let n = i as u64 + 1;
        let line = line.map_err(|e| bad(path, n, format!("unreadable line: {e}")))?;
        // A byte-order mark before the first row (Windows editors) is not JSON.
        let line = match (n, line.strip_prefix('\u{feff}')) {
            (1, Some(rest)) => rest.to_string(),
            _ => line,
        };
        if line.trim().is_empty() {
            continue;
        }
        let row: Value = serde_json::from_str(&line).map_err(|e| {
            bad(
                path,
                n,
                format!(
                    "invalid JSON: {e} (a data file holds one JSON object per line: JSON Lines)"
                ),
            )
        })?;
        items.push(item_from_json(task, &row).map_err(|m| bad(path, n, m))?);
    }
    Ok(items)
}

/// Parse a `Puzzle,Solution` CSV from a reader (header required); `path` is used in errors.
pub fn read_sudoku_csv<R: Read>(reader: R, path: &Path) -> Result<Vec<TaskItem>, Error> {
    let mut rdr = csv::ReaderBuilder::new()
        .has_headers(true)
        .from_reader(reader);
    let headers = rdr
        .headers()
        .map_err(|e| bad(path, 1, format!("bad CSV header: {e}")))?
        .clone();
    let col = |name: &str| {
        headers
            .iter()
            .position(|h| h.trim() == name)
            .ok_or_else(|| bad(path, 1, format!("missing column {name:?}")))
    };
    let (pc, sc) = (col("Puzzle")?, col("Solution")?);
    let mut items = Vec::new();
    for rec in rdr.records() {
        let rec = rec.map_err(|e| {
            let line = e.position().map_or(0, |p| p.line());
            bad(path, line, format!("bad CSV row: {e}"))
        })?;
        let line = rec.position().map_or(0, |p| p.line());
        let (Some(p), Some(s)) = (rec.get(pc), rec.get(sc)) else {
            return Err(bad(path, line, "missing Puzzle or Solution value"));
        };
        items.push(sudoku_item(p.trim(), s.trim()).map_err(|m| bad(path, line, m))?);
    }
    Ok(items)
}

/// The longest line a data file may hold (a task row is a few kilobytes; a file without
/// newlines, `/dev/zero` say, must not be read into memory whole).
pub const MAX_LINE_BYTES: usize = 16 << 20;
/// The most a JSON Lines or CSV data file may hold.
pub const MAX_DATA_BYTES: u64 = 1 << 30;

/// A reader that fails, with a message saying which limit, once a line runs past
/// [`MAX_LINE_BYTES`] or the file past [`MAX_DATA_BYTES`].
struct Bounded<R> {
    inner: R,
    line: usize,
    total: u64,
}

impl<R: Read> Read for Bounded<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.total += n as u64;
        for &b in &buf[..n] {
            self.line = if b == b'\n' { 0 } else { self.line + 1 };
            if self.line > MAX_LINE_BYTES {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!(
                        "a line longer than {} MiB (a data file holds one row per line)",
                        MAX_LINE_BYTES >> 20
                    ),
                ));
            }
        }
        if self.total > MAX_DATA_BYTES {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("the file is larger than {} MiB", MAX_DATA_BYTES >> 20),
            ));
        }
        Ok(n)
    }
}

fn open(path: &Path) -> Result<Bounded<File>, Error> {
    let inner = File::open(path).map_err(|e| io_err(path, e))?;
    Ok(Bounded {
        inner,
        line: 0,
        total: 0,
    })
}

/// Load GSM8K JSONL (`question`, `answer`).
pub fn load_gsm8k_jsonl(path: impl AsRef<Path>) -> Result<Vec<TaskItem>, Error> {
    let path = path.as_ref();
    read_jsonl(Task::Gsm8k, open(path)?, path)
}

/// Load MATH JSONL (`problem`, `answer` or `solution`).
pub fn load_math_jsonl(path: impl AsRef<Path>) -> Result<Vec<TaskItem>, Error> {
    let path = path.as_ref();
    read_jsonl(Task::Math, open(path)?, path)
}

/// Load Countdown JSONL (`input`/`output` or `nums`/`target`).
pub fn load_countdown_jsonl(path: impl AsRef<Path>) -> Result<Vec<TaskItem>, Error> {
    let path = path.as_ref();
    read_jsonl(Task::Countdown, open(path)?, path)
}

/// Load a Sudoku CSV (`Puzzle,Solution`).
pub fn load_sudoku_csv(path: impl AsRef<Path>) -> Result<Vec<TaskItem>, Error> {
    let path = path.as_ref();
    read_sudoku_csv(open(path)?, path)
}

/// Load any supported file for a task, by extension: `.jsonl`/`.json` (JSON Lines),
/// `.csv` (Sudoku), `.parquet` (needs the `parquet` feature).
pub fn load(task: Task, path: impl AsRef<Path>) -> Result<Vec<TaskItem>, Error> {
    let path = path.as_ref();
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase)
        .unwrap_or_default();
    match ext.as_str() {
        "parquet" => load_parquet(task, path),
        "csv" if task == Task::Sudoku => load_sudoku_csv(path),
        "csv" => Err(bad(
            path,
            1,
            format!(
                "CSV files are read for Sudoku only; {task} data is JSON Lines (.jsonl) or Parquet"
            ),
        )),
        _ => read_jsonl(task, open(path)?, path),
    }
}

/// Load a Parquet file (Hugging Face datasets' format) with the task's columns;
/// each row is reported by its 1-based row number on error.
#[cfg(feature = "parquet")]
pub fn load_parquet(task: Task, path: impl AsRef<Path>) -> Result<Vec<TaskItem>, Error> {
    use parquet::file::reader::{FileReader, SerializedFileReader};
    let path = path.as_ref();
    let perr = |e: parquet::errors::ParquetError| Error::BadFile {
        path: path.to_path_buf(),
        message: format!("parquet: {e}"),
    };
    let reader = SerializedFileReader::new(open(path)?).map_err(perr)?;
    let mut items = Vec::new();
    for (i, row) in reader.get_row_iter(None).map_err(perr)?.enumerate() {
        let n = i as u64 + 1;
        let row = row.map_err(|e| bad(path, n, format!("parquet: {e}")))?;
        let value = row.to_json_value();
        items.push(item_from_json(task, &value).map_err(|m| bad(path, n, m))?);
    }
    Ok(items)
}

/// Load a Parquet file: unavailable without the `parquet` cargo feature.
#[cfg(not(feature = "parquet"))]
pub fn load_parquet(task: Task, path: impl AsRef<Path>) -> Result<Vec<TaskItem>, Error> {
    let _ = task;
    Err(Error::Unsupported(format!(
        "{}: reading Parquet needs the `parquet` cargo feature (of `rewards`, or of `dmpo-train`: \
         `cargo install --path crates/dmpo-train --features parquet`, implied by `download`)",
        path.as_ref().display()
    )))
}

/// The Countdown evaluation set shipped with this crate (256 items, d1/DMPO, Apache-2.0).
pub fn countdown_cd3_test() -> Vec<TaskItem> {
    read_jsonl(
        Task::Countdown,
        include_str!("../data/countdown_cd3_test.jsonl").as_bytes(),
        Path::new("countdown_cd3_test.jsonl"),
    )
    .unwrap_or_default()
}

/// The 4x4 Sudoku evaluation set shipped with this crate (500 items, d1/DMPO, Apache-2.0).
pub fn sudoku_4x4_test() -> Vec<TaskItem> {
    read_sudoku_csv(
        include_str!("../data/4x4_test_sudoku.csv").as_bytes(),
        Path::new("4x4_test_sudoku.csv"),
    )
    .unwrap_or_default()
}

/// The order in which d1's and DMPO's evaluations score a shipped test set: indices into
/// [`countdown_cd3_test`] or [`sudoku_4x4_test`] from `np.random.seed(42);
/// np.random.choice(n, 256, replace=False)` (their `eval/gsm8k.py`), computed once by
/// `scripts/reference_eval_order.py`. `None` for GSM8K and MATH, which they score in file order.
pub fn reference_eval_order(task: Task) -> Option<Vec<usize>> {
    let text = match task {
        Task::Countdown => include_str!("../data/countdown_cd3_test.order.txt"),
        Task::Sudoku => include_str!("../data/4x4_test_sudoku.order.txt"),
        Task::Gsm8k | Task::Math => return None,
    };
    Some(
        text.lines()
            .filter(|l| !l.starts_with('#'))
            .map(|l| l.trim().parse().expect("shipped order files hold indices"))
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p() -> &'static Path {
        Path::new("mem.jsonl")
    }

    #[test]
    fn a_huge_bad_field_is_not_echoed_whole() {
        // A 5 MB list where GSM8K wants an answer string.
        let row = format!(
            "{{\"question\": \"q\", \"answer\": [\"{}\"]}}\n",
            "7".repeat(5_000_000)
        );
        let err = read_jsonl(Task::Gsm8k, row.as_bytes(), p())
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("mem.jsonl:1: "), "{}", &err[..80]);
        assert!(err.len() < 600, "message of {} bytes", err.len());
        assert!(err.contains("more bytes not shown"), "{err}");
    }

    #[test]
    fn shipped_sets_load() {
        assert_eq!(countdown_cd3_test().len(), 256);
        assert_eq!(sudoku_4x4_test().len(), 500);
    }

    #[test]
    fn gsm8k_rows() {
        let s = "{\"question\":\"q\",\"answer\":\"work\\n#### 72\"}\n\n{\"question\":\"q2\",\"answer\":\"#### 1,000\"}\n";
        let items = read_jsonl(Task::Gsm8k, s.as_bytes(), p()).unwrap();
        assert_eq!(items[0], TaskItem::gsm8k("q", "72"));
        assert_eq!(items[1], TaskItem::gsm8k("q2", "1,000"));
        let e = read_jsonl(
            Task::Gsm8k,
            "{\"question\":\"q\",\"answer\":\"72\"}\n".as_bytes(),
            p(),
        )
        .unwrap_err();
        assert!(e.to_string().starts_with("mem.jsonl:1:"), "{e}");
        let e = read_jsonl(Task::Gsm8k, "\n{\"question\": 3}".as_bytes(), p()).unwrap_err();
        assert!(matches!(e, Error::BadRow { line: 2, .. }), "{e}");
        let e = read_jsonl(Task::Gsm8k, "not json".as_bytes(), p()).unwrap_err();
        assert!(e.to_string().contains("invalid JSON"), "{e}");
        let e = read_jsonl(Task::Gsm8k, "[1]".as_bytes(), p()).unwrap_err();
        assert!(e.to_string().contains("not a JSON object"), "{e}");
    }

    #[test]
    fn math_rows() {
        let s = r#"{"problem":"p","solution":"so $\\boxed{\\frac{1}{2}}$"}
{"problem":"p","answer":"3","solution":"\\boxed{4}"}"#;
        let items = read_jsonl(Task::Math, s.as_bytes(), p()).unwrap();
        assert_eq!(items[0], TaskItem::math("p", "\\frac{1}{2}"));
        assert_eq!(items[1], TaskItem::math("p", "3"));
        for bad_row in [
            r#"{"problem":"p","solution":"no box"}"#,
            r#"{"problem":"p","solution":"\\boxed{1"}"#,
            r#"{"problem":"p"}"#,
        ] {
            assert!(
                read_jsonl(Task::Math, bad_row.as_bytes(), p()).is_err(),
                "{bad_row}"
            );
        }
    }

    #[test]
    fn countdown_rows() {
        let s = r#"{"input": "30,100,93", "output": "23"}
{"nums": [3, 4, 5], "target": 12}
{"nums": [3.0, 4], "target": 7.0}"#;
        let items = read_jsonl(Task::Countdown, s.as_bytes(), p()).unwrap();
        assert_eq!(items[0], TaskItem::countdown(vec![30, 100, 93], 23));
        assert_eq!(items[1], TaskItem::countdown(vec![3, 4, 5], 12));
        assert_eq!(items[2], TaskItem::countdown(vec![3, 4], 7));
        for bad_row in [
            r#"{"input": "30,,93", "output": "23"}"#,
            r#"{"input": "30,93"}"#,
            r#"{"nums": [1.5], "target": 1}"#,
            r#"{"nums": [-1], "target": 1}"#,
            r#"{"target": 1}"#,
            r#"{"input": 5, "output": 1}"#,
        ] {
            assert!(
                read_jsonl(Task::Countdown, bad_row.as_bytes(), p()).is_err(),
                "{bad_row}"
            );
        }
    }

    #[test]
    fn sudoku_csv() {
        let ok = "Puzzle,Solution\n3102200002100320,3142243142131324\n";
        assert_eq!(read_sudoku_csv(ok.as_bytes(), p()).unwrap().len(), 1);
        let cases = [
            (
                "Puzzle,Solution\n3102200002100320,3142243142131324\n31,3142\n",
                3,
            ),
            ("Puzzle,Solution\n3102200002100320,3142243142131323\n", 2),
            ("Puzzle,Solution\n4102200002100320,3142243142131324\n", 2),
            ("Puzzle,Solution\n3102200002100320\n", 2),
            ("Puzzle\n3102200002100320\n", 1),
        ];
        for (text, line) in cases {
            match read_sudoku_csv(text.as_bytes(), p()) {
                Err(Error::BadRow { line: l, .. }) => assert_eq!(l, line, "{text}"),
                other => panic!("{text}: {other:?}"),
            }
        }
    }

    #[test]
    fn missing_file_is_an_error() {
        let e = load(Task::Gsm8k, "/nonexistent/x.jsonl").unwrap_err();
        assert!(matches!(e, Error::Io { .. }));
    }
}
