//! 4x4 Sudoku: training reward (DMPO `reward_func.py::sudoku_reward_func`), d1
//! evaluation (`parse_sudoku_answers`) and a solver that counts solutions (docs/algorithm.md §7).
//!
//! Grids are 16-character strings read left-to-right, top-to-bottom; `0` = empty.

use regex::Regex;
use std::sync::LazyLock;

use crate::pycompat;
use crate::reward::{EvalScore, RewardBreakdown};

/// Component names (max 1.0).
pub const COMPONENTS: [&str; 1] = ["sudoku"];

fn re(p: &str) -> Regex {
    Regex::new(p).expect("static regex")
}

static ANSWER: LazyLock<Regex> = LazyLock::new(|| re(r"(?s)<answer>(.*?)</answer>"));
// d1's five patterns, tried in order (all with re.DOTALL). `[\s\x1C-\x1F]` is Python's
// `\s`; Python's `$` (matching before a final newline too) is `\n?\z` here, which gives
// the same capture after stripping.
static EVAL_PATTERNS: LazyLock<[Regex; 5]> = LazyLock::new(|| {
    [
        re(r"(?s)<answer>.*?```[\s\x1C-\x1F]*([\d\s\x1C-\x1F]+)```"),
        re(r"(?s)<answer>(.*?)(?:<\|eot_id\|>|<\|endoftext\|>|</answer>)"),
        re(r"(?s)</answer>[\s\x1C-\x1F]*(.*?)(?:<\|eot_id\|>|<\|endoftext\|>|\n?\z)"),
        re(r"(?s).*?(\d{16})[\s\x1C-\x1F]*</answer>"),
        re(r"(?s)\b(\d{16})\b"),
    ]
});
static QUESTION_PUZZLE: LazyLock<Regex> = LazyLock::new(|| re(r"Sudoku puzzle: ([0-9]{16})"));

/// `extract_answer_sudoku`: the digits (Python `str.isdigit`) of the last
/// `<answer>...</answer>` block; `None` without a block.
pub fn extract_answer(completion: &str) -> Option<String> {
    let m = ANSWER.captures_iter(completion).last()?;
    Some(
        pycompat::strip(&m[1])
            .chars()
            .filter(|&c| pycompat::is_digit(c))
            .collect(),
    )
}

/// Pad with `0` / truncate to 16 characters (code points), as both references do.
fn fit16(s: &str) -> Vec<char> {
    let mut v: Vec<char> = s.chars().take(16).collect();
    v.resize(16, '0');
    v
}

/// Indices of the empty (`0`) cells among the puzzle's first 16 characters.
pub fn empty_cells(puzzle: &str) -> Vec<usize> {
    puzzle
        .chars()
        .take(16)
        .enumerate()
        .filter(|&(_, c)| c == '0')
        .map(|(i, _)| i)
        .collect()
}

/// Number of the puzzle's empty cells that `answer` (padded/truncated to 16) fills
/// with the solution's digit.
pub fn correct_cells(answer: &str, puzzle: &str, solution: &str) -> usize {
    let a = fit16(answer);
    let sol: Vec<char> = solution.chars().collect();
    empty_cells(puzzle)
        .into_iter()
        .filter(|&i| sol.get(i) == Some(&a[i]))
        .count()
}

/// `validate_sudoku_solution`: the fraction of originally empty cells solved
/// correctly (0 for an empty answer or a puzzle without empty cells).
pub fn validate_solution(answer: &str, puzzle: &str, solution: &str) -> f64 {
    if answer.is_empty() {
        return 0.0;
    }
    let empty = empty_cells(puzzle).len();
    if empty == 0 {
        return 0.0;
    }
    correct_cells(answer, puzzle, solution) as f64 / empty as f64
}

/// The Sudoku training reward (one component, docs/algorithm.md §7).
pub fn training_reward(completion: &str, puzzle: &str, solution: &str) -> RewardBreakdown {
    let v = extract_answer(completion).map_or(0.0, |a| validate_solution(&a, puzzle, solution));
    RewardBreakdown {
        components: vec![("sudoku", v)],
    }
}

/// d1's solution extraction: the first of its five patterns with a non-blank capture,
/// whitespace removed.
pub fn eval_extract(generation: &str) -> String {
    for p in EVAL_PATTERNS.iter() {
        if let Some(c) = p.captures(generation) {
            let s = pycompat::strip(&c[1]);
            if !s.is_empty() {
                return s.chars().filter(|&c| !pycompat::is_space(c)).collect();
            }
        }
    }
    String::new()
}

/// d1's puzzle recovery from the question: its first 16 characters if all digits,
/// else `Sudoku puzzle: <16 digits>`.
pub fn puzzle_from_question(question: &str) -> Option<String> {
    let head: String = question.chars().take(16).collect();
    if head.chars().count() == 16 && head.chars().all(pycompat::is_digit) {
        return Some(head);
    }
    QUESTION_PUZZLE.captures(question).map(|c| c[1].to_string())
}

/// d1 Sudoku evaluation of one generation: correct empty cells out of empty cells.
pub fn eval_score(generation: &str, puzzle: &str, solution: &str) -> EvalScore {
    let answer = eval_extract(generation);
    let total = empty_cells(puzzle).len() as u32;
    let correct = if answer.is_empty() {
        0
    } else {
        correct_cells(&answer, puzzle, solution) as u32
    };
    EvalScore {
        correct,
        total,
        extracted: Some(answer),
    }
}

/// A 4x4 grid of digits 0..=4 (0 = empty), row-major.
pub type Grid = [u8; 16];

/// Parse a 16-character grid of `0`-`4`; `None` otherwise.
pub fn parse_grid(s: &str) -> Option<Grid> {
    let b = s.as_bytes();
    if b.len() != 16 {
        return None;
    }
    let mut g = [0u8; 16];
    for (i, &c) in b.iter().enumerate() {
        if !(b'0'..=b'4').contains(&c) {
            return None;
        }
        g[i] = c - b'0';
    }
    Some(g)
}

/// The grid as a 16-character string.
pub fn grid_string(g: &Grid) -> String {
    g.iter().map(|&d| char::from(b'0' + d)).collect()
}

fn allowed(g: &Grid, cell: usize, d: u8) -> bool {
    let (r, c) = (cell / 4, cell % 4);
    let (br, bc) = (r / 2 * 2, c / 2 * 2);
    for k in 0..4 {
        if g[r * 4 + k] == d || g[k * 4 + c] == d {
            return false;
        }
        let (rr, cc) = (br + k / 2, bc + k % 2);
        if g[rr * 4 + cc] == d {
            return false;
        }
    }
    true
}

/// Whether the filled cells break no row, column or box constraint.
pub fn is_consistent(g: &Grid) -> bool {
    (0..16).all(|i| {
        let d = g[i];
        if d == 0 {
            return true;
        }
        let mut h = *g;
        h[i] = 0;
        allowed(&h, i, d)
    })
}

/// Whether `g` is a complete valid solution.
pub fn is_solved(g: &Grid) -> bool {
    g.iter().all(|&d| (1..=4).contains(&d)) && is_consistent(g)
}

fn count_rec(g: &mut Grid, limit: usize, first: &mut Option<Grid>) -> usize {
    let Some(cell) = g.iter().position(|&d| d == 0) else {
        if first.is_none() {
            *first = Some(*g);
        }
        return 1;
    };
    let mut n = 0;
    for d in 1..=4 {
        if allowed(g, cell, d) {
            g[cell] = d;
            n += count_rec(g, limit - n, first);
            g[cell] = 0;
            if n >= limit {
                break;
            }
        }
    }
    n
}

/// Count the solutions of `puzzle`, stopping at `limit` (use 2 to test uniqueness).
pub fn count_solutions(puzzle: &Grid, limit: usize) -> usize {
    if limit == 0 || !is_consistent(puzzle) {
        return 0;
    }
    count_rec(&mut puzzle.clone(), limit, &mut None)
}

/// The first solution found (in digit order), if any.
pub fn solve(puzzle: &Grid) -> Option<Grid> {
    if !is_consistent(puzzle) {
        return None;
    }
    let mut first = None;
    count_rec(&mut puzzle.clone(), 1, &mut first);
    first
}

#[cfg(test)]
mod tests {
    use super::*;

    const P: &str = "3102200002100320";
    const S: &str = "3142243142131324";

    #[test]
    fn training_values() {
        let r = |c: &str| training_reward(c, P, S).total();
        assert_eq!(r(&format!("<answer>\n{S}\n</answer>")), 1.0);
        assert_eq!(r("no answer"), 0.0);
        assert_eq!(r("<answer></answer>"), 0.0);
        // Separators are dropped (digits only).
        assert_eq!(r("<answer>3142 2431 4213 1324</answer>"), 1.0);
        // The puzzle itself solves none of the 8 empty cells.
        assert_eq!(r(&format!("<answer>{P}</answer>")), 0.0);
        // Short answers are padded with 0: of the first 5 cells only cell 2 is empty (and right).
        assert_eq!(r("<answer>31422</answer>"), 1.0 / 8.0);
        // Last block wins; a superscript digit counts as a digit and shifts every cell.
        assert_eq!(
            r(&format!("<answer>{S}</answer><answer>²{S}</answer>")),
            0.0
        );
    }

    #[test]
    fn eval_extraction() {
        assert_eq!(
            eval_extract(&format!("<answer>\n{S}\n</answer><|eot_id|>")),
            S
        );
        assert_eq!(eval_extract("<answer>```\n3142\n2431\n4213\n1324\n```"), S);
        assert_eq!(eval_extract(&format!("</answer>\n{S}<|endoftext|>")), S);
        assert_eq!(eval_extract(&format!("the grid {S} is done")), S);
        assert_eq!(eval_extract(""), "");
        let s = eval_score(&format!("<answer>{S}</answer>"), P, S);
        assert_eq!((s.correct, s.total), (8, 8));
        let s = eval_score("nothing", P, S);
        assert_eq!((s.correct, s.total), (0, 8));
        assert_eq!(
            puzzle_from_question(&format!("Solve the following Sudoku puzzle: {P}\n")).as_deref(),
            Some(P)
        );
        assert_eq!(puzzle_from_question(P).as_deref(), Some(P));
        assert_eq!(puzzle_from_question("no puzzle"), None);
    }

    #[test]
    fn solver() {
        let p = parse_grid(P).unwrap();
        assert_eq!(count_solutions(&p, 2), 1);
        assert_eq!(solve(&p).map(|g| grid_string(&g)).as_deref(), Some(S));
        assert!(is_solved(&parse_grid(S).unwrap()));
        assert_eq!(count_solutions(&[0; 16], 1000), 288);
        assert_eq!(parse_grid("12"), None);
        assert_eq!(parse_grid("5000000000000000"), None);
        assert_eq!(
            count_solutions(&parse_grid("1100000000000000").unwrap(), 2),
            0
        );
    }
}
