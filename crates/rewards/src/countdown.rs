//! Countdown: training reward (DMPO `reward_func.py::compute_score`), d1 evaluation
//! (`parse_countdown_answers`) and an exact solver (docs/algorithm.md §7).
//!
//! The reference evaluates answers with Python `eval`; here the safe evaluator in
//! [`crate::expr`] computes the same value. Both references use Python's Unicode `\d`
//! for the number check; matching ASCII digits only gives identical scores, because an
//! expression containing a non-ASCII digit can never be evaluated (Python's `eval`
//! raises on it, and so does ours), which scores the same as a failed number check.

use regex::Regex;
use std::collections::HashMap;
use std::sync::LazyLock;

use crate::expr;
use crate::math::{last_boxed_only_string, remove_boxed};
use crate::pycompat;
use crate::rational::Rational;
use crate::reward::{EvalScore, RewardBreakdown};

/// Component names (max 1.0).
pub const COMPONENTS: [&str; 1] = ["countdown"];
/// Score for an answer that is present but wrong or invalid (`format_score`).
pub const FORMAT_SCORE: f64 = 0.1;
/// Score for a correct expression.
pub const CORRECT_SCORE: f64 = 1.0;

fn re(p: &str) -> Regex {
    Regex::new(p).expect("static regex")
}

static ANSWER: LazyLock<Regex> = LazyLock::new(|| re(r"(?s)<answer>(.*?)</answer>"));
static DIGITS: LazyLock<Regex> = LazyLock::new(|| re(r"[0-9]+"));
static EQUALS: LazyLock<Regex> = LazyLock::new(|| re(r"([0-9+\-*/() ]+)=[0-9. ]+"));
static Q_NUMBERS: LazyLock<Regex> = LazyLock::new(|| re(r"(?i)Numbers: \[([\d, ]+)\]"));
static Q_TARGET: LazyLock<Regex> = LazyLock::new(|| re(r"(?i)Target: (\d+)"));

/// `extract_solution`: the last `<answer>...</answer>` block, stripped.
pub fn extract_solution(completion: &str) -> Option<&str> {
    ANSWER
        .captures_iter(completion)
        .last()
        .and_then(|c| c.get(1))
        .map(|m| pycompat::strip(m.as_str()))
}

fn integral(x: f64) -> Option<i128> {
    (x.is_finite() && x.fract() == 0.0 && x.abs() < 1e30).then_some(x as i128)
}

/// `validate_equation`: the integers written in the expression are exactly the
/// available numbers (as multisets).
pub fn uses_numbers(equation: &str, available: &[f64]) -> bool {
    let mut want: Vec<i128> = Vec::with_capacity(available.len());
    for &a in available {
        match integral(a) {
            Some(v) => want.push(v),
            None => return false, // no digit run equals a fractional number
        }
    }
    let mut got: Vec<i128> = Vec::with_capacity(want.len());
    for m in DIGITS.find_iter(equation) {
        let d = m.as_str().trim_start_matches('0');
        if d.len() > 30 || got.len() > want.len() {
            return false;
        }
        got.push(d.parse::<i128>().unwrap_or(0));
    }
    want.sort_unstable();
    got.sort_unstable();
    want == got
}

/// `evaluate_equation`: the character filter then the (safe) evaluation; `None` when
/// the reference's `eval` would fail.
pub fn evaluate_equation(equation: &str) -> Option<Rational> {
    let allowed =
        |c: char| pycompat::is_decimal(c) || pycompat::is_space(c) || "+-*/().".contains(c);
    if equation.is_empty() || !equation.chars().all(allowed) {
        return None;
    }
    expr::evaluate(pycompat::strip(equation)).ok()
}

/// `compute_score`: 0 without an `<answer>` block; 0.1 when the numbers are wrong, the
/// expression fails, or the value misses the target; 1.0 within 1e-5 of the target.
pub fn score(completion: &str, numbers: &[f64], target: f64) -> f64 {
    let Some(equation) = extract_solution(completion) else {
        return 0.0;
    };
    if !uses_numbers(equation, numbers) {
        return FORMAT_SCORE;
    }
    match evaluate_equation(equation) {
        Some(v) if v.close_to(target) => CORRECT_SCORE,
        _ => FORMAT_SCORE,
    }
}

/// The Countdown training reward (one component, docs/algorithm.md §7).
pub fn training_reward(completion: &str, numbers: &[i64], target: i64) -> RewardBreakdown {
    let nums: Vec<f64> = numbers.iter().map(|&n| n as f64).collect();
    RewardBreakdown {
        components: vec![("countdown", score(completion, &nums, target as f64))],
    }
}

/// d1's expression extraction: the last `\boxed{}` (falling back to the first
/// `<answer>` block, then the whole text, where boxed extraction raises), with `\div`,
/// `\times`, `\cdot` mapped and a trailing `= result` removed.
pub fn eval_extract(generation: &str) -> String {
    let boxed = last_boxed_only_string(generation).and_then(|b| remove_boxed(&b).ok());
    let mut equation = match boxed {
        Some(e) => e,
        None => match ANSWER.captures(generation) {
            Some(c) => pycompat::strip(&c[1]).to_string(),
            None => generation.to_string(),
        },
    };
    equation = equation
        .replace("\\div", "/")
        .replace("\\times", "*")
        .replace("\\cdot", "*");
    if let Some(c) = EQUALS.captures(&equation) {
        equation = pycompat::strip(&c[1]).to_string();
    }
    equation
}

/// d1's fallback when the ground truth is not `[numbers, target]`: parse
/// `Numbers: [..]` and `Target: N` from the question.
pub fn truth_from_question(question: &str) -> (Vec<f64>, Option<f64>) {
    let numbers = Q_NUMBERS
        .captures(question)
        .and_then(|c| {
            c[1].split(',')
                .map(|p| pycompat::float(p.trim()).filter(|v| v.fract() == 0.0))
                .collect::<Option<Vec<f64>>>()
        })
        .unwrap_or_default();
    let target = Q_TARGET
        .captures(question)
        .and_then(|c| pycompat::float(&c[1]));
    (numbers, target)
}

/// d1 Countdown evaluation of one generation.
pub fn eval_score(generation: &str, numbers: &[f64], target: Option<f64>) -> EvalScore {
    let equation = eval_extract(generation);
    let ok = match target {
        Some(t) if uses_numbers(&equation, numbers) => {
            evaluate_equation(&equation).is_some_and(|v| v.close_to(t))
        }
        _ => false,
    };
    EvalScore::binary(ok, Some(equation))
}

/// Most numbers [`solve`] accepts (the search is exponential in this).
pub const MAX_SOLVER_NUMBERS: usize = 6;

fn search(
    items: &[(Rational, String)],
    target: Rational,
    seen: &mut HashMap<Vec<Rational>, ()>,
) -> Option<String> {
    if items.len() == 1 {
        return (items[0].0 == target).then(|| items[0].1.clone());
    }
    let mut key: Vec<Rational> = items.iter().map(|x| x.0).collect();
    key.sort_unstable();
    if seen.insert(key, ()).is_some() {
        return None;
    }
    let n = items.len();
    for i in 0..n {
        for j in (i + 1)..n {
            let (a, ea) = items[i].clone();
            let (b, eb) = items[j].clone();
            let cands = [
                (a.checked_add(b), format!("({ea} + {eb})")),
                (a.checked_sub(b), format!("({ea} - {eb})")),
                (b.checked_sub(a), format!("({eb} - {ea})")),
                (a.checked_mul(b), format!("({ea} * {eb})")),
                (a.checked_div(b), format!("({ea} / {eb})")),
                (b.checked_div(a), format!("({eb} / {ea})")),
            ];
            let mut rest: Vec<(Rational, String)> = items
                .iter()
                .enumerate()
                .filter(|&(k, _)| k != i && k != j)
                .map(|(_, x)| x.clone())
                .collect();
            for (v, e) in cands {
                let Ok(v) = v else { continue };
                rest.push((v, e));
                if let Some(found) = search(&rest, target, seen) {
                    return Some(found);
                }
                rest.pop();
            }
        }
    }
    None
}

/// Find an expression using every number exactly once with `+ - * /` (exact rational
/// arithmetic, fractions allowed in between) that equals `target`; `None` if there is
/// none or more than [`MAX_SOLVER_NUMBERS`] numbers (or a negative one) are given.
pub fn solve(numbers: &[i64], target: i64) -> Option<String> {
    if numbers.is_empty() || numbers.len() > MAX_SOLVER_NUMBERS || numbers.iter().any(|&n| n < 0) {
        return None;
    }
    let items: Vec<(Rational, String)> = numbers
        .iter()
        .map(|&n| (Rational::from_int(n), n.to_string()))
        .collect();
    let mut seen = HashMap::new();
    let e = search(&items, Rational::from_int(target), &mut seen)?;
    // Drop the redundant outer parentheses.
    Some(
        match e.strip_prefix('(').and_then(|s| s.strip_suffix(')')) {
            Some(inner) if numbers.len() > 1 => inner.to_string(),
            _ => e,
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const NUMS: [f64; 3] = [49.0, 55.0, 53.0];

    #[test]
    fn training_score_values() {
        assert_eq!(score("no tags", &NUMS, 51.0), 0.0);
        assert_eq!(score("", &NUMS, 51.0), 0.0);
        assert_eq!(score("<answer>49 + 55 - 53</answer>", &NUMS, 51.0), 1.0);
        assert_eq!(score("<answer>\n55 - 53 + 49\n</answer>", &NUMS, 51.0), 1.0);
        // Wrong value, right numbers.
        assert_eq!(score("<answer>49 + 55 + 53</answer>", &NUMS, 51.0), 0.1);
        // Wrong numbers.
        assert_eq!(score("<answer>49 + 2</answer>", &NUMS, 51.0), 0.1);
        // Last block wins.
        assert_eq!(
            score("<answer>1</answer><answer>49+55-53</answer>", &NUMS, 51.0),
            1.0
        );
        assert_eq!(
            score("<answer>49+55-53</answer><answer>1</answer>", &NUMS, 51.0),
            0.1
        );
        // Includes "= 51": the digits 5,1 break the number check.
        assert_eq!(
            score("<answer>49 + 55 - 53 = 51</answer>", &NUMS, 51.0),
            0.1
        );
        // Python's filter lets ** through; the safe evaluator rejects the overflow cleanly.
        assert_eq!(score("<answer>49**55**53</answer>", &NUMS, 51.0), 0.1);
        // Division by zero is a clean failure.
        assert_eq!(
            score(
                "<answer>49/(55-55)*53</answer>",
                &[49.0, 55.0, 55.0, 53.0],
                1.0
            ),
            0.1
        );
        // Unicode digits: eval fails, 0.1 either way.
        assert_eq!(score("<answer>٤٩ + 55 - 53</answer>", &NUMS, 51.0), 0.1);
        // Letters are rejected by the filter.
        assert_eq!(
            score("<answer>abs(49) + 55 - 53</answer>", &NUMS, 51.0),
            0.1
        );
        // Leading zeros are still the same numbers, but Python rejects "049".
        assert_eq!(score("<answer>049 + 55 - 53</answer>", &NUMS, 51.0), 0.1);
    }

    #[test]
    fn eval_extraction_like_d1() {
        assert_eq!(
            eval_extract("<answer>\\boxed{49 + 55 - 53}</answer>"),
            "49 + 55 - 53"
        );
        assert_eq!(eval_extract("\\boxed{6 \\times 4 \\div 2}"), "6 * 4 / 2");
        assert_eq!(eval_extract("\\boxed{49 + 55 - 53 = 51}"), "49 + 55 - 53");
        // Unclosed box: first <answer> block.
        assert_eq!(
            eval_extract("\\boxed{1 <answer> 2+3 </answer><answer>9</answer>"),
            "2+3"
        );
        // Unclosed box and no answer: the whole text.
        assert_eq!(eval_extract("\\boxed{2+3"), "\\boxed{2+3");
        // No box at all: the whole text (then the `= result` rule).
        assert_eq!(eval_extract("we get 49 + 55 - 53 = 51 ok"), "49 + 55 - 53");
        let s = eval_score("\\boxed{49 + 55 - 53}", &NUMS, Some(51.0));
        assert_eq!(s.correct, 1);
        assert_eq!(eval_score("\\boxed{49 + 55 - 53}", &NUMS, None).correct, 0);
        assert_eq!(
            eval_score("\\boxed{(55 - 53) * 49}", &NUMS, Some(98.0)).correct,
            1
        );
    }

    #[test]
    fn question_fallback() {
        let (n, t) = truth_from_question("Numbers: [49, 55, 53]\nTarget: 51");
        assert_eq!(n, NUMS.to_vec());
        assert_eq!(t, Some(51.0));
        assert_eq!(truth_from_question("nothing"), (vec![], None));
    }

    #[test]
    fn solver_finds_valid_expressions() {
        for (nums, target) in [
            (vec![30, 100, 93], 23),
            (vec![49, 55, 53], 51),
            (vec![2, 3, 4], 5),
            (vec![1, 5, 5, 5], 24), // needs fractions: (5 - 1/5) * 5
            (vec![7], 7),
        ] {
            let e = solve(&nums, target).unwrap_or_else(|| panic!("{nums:?} {target}"));
            let fl: Vec<f64> = nums.iter().map(|&x| x as f64).collect();
            assert!(uses_numbers(&e, &fl), "{e}");
            assert!(expr::evaluate(&e).unwrap().close_to(target as f64), "{e}");
            assert_eq!(
                score(&format!("<answer>{e}</answer>"), &fl, target as f64),
                1.0
            );
        }
        assert_eq!(solve(&[1, 1, 1], 100), None);
        assert_eq!(solve(&[], 0), None);
        assert_eq!(solve(&[1; 7], 7), None);
    }
}
