//! MATH / MATH500: `\boxed{}` extraction, training reward (DMPO `reward_func.py`:
//! `correctness_reward_func_math` + `boxed_and_answer_tags_format_reward`) and d1
//! evaluation (`parse_math_answers`), docs/algorithm.md §7.

use regex::Regex;
use std::sync::LazyLock;

use crate::math_equiv::{is_equiv, is_equiv_float, Raised};
use crate::pycompat;
use crate::reward::{EvalScore, RewardBreakdown};

/// Component names, in the reference order (max 2.0 + 1.0 = 3.0).
pub const COMPONENTS: [&str; 2] = ["correctness", "format"];

static ANSWER: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"(?s)<answer>(.*?)</answer>").expect("static regex"));

/// `last_boxed_only_string`: the last `\boxed{...}` (or `\fbox{...}`) with balanced
/// braces, including the command; the `\boxed ` (space) form up to the next `$`; the
/// whole string when neither command occurs; `None` when the braces never close.
pub fn last_boxed_only_string(string: &str) -> Option<String> {
    if string.contains("\\boxed ") {
        let last = string.rsplit("\\boxed ").next().unwrap_or("");
        let body = last.split('$').next().unwrap_or("");
        return Some(format!("\\boxed {body}"));
    }
    let idx = match string.rfind("\\boxed").or_else(|| string.rfind("\\fbox")) {
        Some(i) => i,
        None => return Some(string.to_string()),
    };
    let mut open: i64 = 0;
    for (i, b) in string.bytes().enumerate().skip(idx) {
        match b {
            b'{' => open += 1,
            b'}' => {
                open -= 1;
                if open == 0 {
                    return Some(string[idx..=i].to_string());
                }
            }
            _ => {}
        }
    }
    None
}

/// `remove_boxed`: strip `\boxed ` or `\boxed{`...`}`; other strings are returned as is.
/// Raises (like the reference's `assert`) for a `\boxed ` that is not a prefix.
pub fn remove_boxed(s: &str) -> Result<String, Raised> {
    if s.contains("\\boxed ") {
        return s.strip_prefix("\\boxed ").map(str::to_string).ok_or(Raised);
    }
    match s.strip_prefix("\\boxed{").and_then(|r| r.strip_suffix('}')) {
        Some(inner) => Ok(inner.to_string()),
        None => Ok(s.to_string()),
    }
}

/// `remove_boxed(last_boxed_only_string(s))`, `None` where the reference raises.
pub fn extract_boxed(s: &str) -> Option<String> {
    last_boxed_only_string(s).and_then(|b| remove_boxed(&b).ok())
}

/// The training-side answer: the last boxed content, or the whole completion when
/// extraction raises (the reference's `try: ... except: pass`).
pub fn training_extract(completion: &str) -> String {
    extract_boxed(completion).unwrap_or_else(|| completion.to_string())
}

/// `correctness_reward_func_math`: 2.0 if the completion's last boxed answer is
/// equivalent (Hendrycks `is_equiv`) to the reference's.
pub fn correctness(completion: &str, answer: &str) -> f64 {
    let reference = extract_boxed(answer);
    let got = training_extract(completion);
    if is_equiv(Some(&got), reference.as_deref()) {
        2.0
    } else {
        0.0
    }
}

/// `boxed_and_answer_tags_format_reward`: `0.5 * (has <answer> + (1 if \boxed in the
/// first answer block, or in the whole text without one, else 0.5))`.
pub fn format(completion: &str) -> f64 {
    let mut parts = completion.split("<answer>");
    let first = parts.next().unwrap_or("");
    let (tag, scope) = match parts.next() {
        Some(after) => (1.0, after.split("</answer>").next().unwrap_or("")),
        None => (0.0, first),
    };
    let boxed = if scope.contains("\\boxed") { 1.0 } else { 0.5 };
    (tag + boxed) * 0.5
}

/// Both MATH training components (docs/algorithm.md §7, max 3.0). `answer` may be the final answer
/// or a full solution containing `\boxed{}`.
pub fn training_reward(completion: &str, answer: &str) -> RewardBreakdown {
    RewardBreakdown {
        components: vec![
            ("correctness", correctness(completion, answer)),
            ("format", format(completion)),
        ],
    }
}

/// A MATH ground truth as it appears in a generation file (JSON string, float, other).
#[derive(Debug, Clone, PartialEq)]
pub enum MathTruth {
    /// A JSON string: compared with `is_equiv`.
    Text(String),
    /// A JSON float: compared numerically within 1e-6 (d1's float branch).
    Float(f64),
    /// Anything else (null, integer, list...): never equivalent, as in the reference.
    Other,
}

/// d1 MATH answer parsing: the last boxed answer; if that fails or is empty, the
/// stripped content of the first `<answer>...</answer>`.
pub fn eval_parse(generation: &str) -> Option<String> {
    let parsed = extract_boxed(generation);
    if parsed.as_deref().is_some_and(|p| !p.is_empty()) {
        return parsed;
    }
    match ANSWER.captures(generation) {
        Some(c) => Some(pycompat::strip(&c[1]).to_string()),
        None => parsed,
    }
}

/// d1 MATH evaluation of one generation.
pub fn eval_score(generation: &str, truth: &MathTruth) -> EvalScore {
    let parsed = eval_parse(generation);
    let ok = match (&parsed, truth) {
        (None, _) => false,
        (Some(p), MathTruth::Text(t)) => is_equiv(Some(p), Some(t)),
        (Some(p), MathTruth::Float(f)) => is_equiv_float(p, *f),
        (Some(_), MathTruth::Other) => false,
    };
    EvalScore::binary(ok, parsed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boxed_extraction() {
        assert_eq!(
            extract_boxed("so \\boxed{\\frac{1}{2}} done").as_deref(),
            Some("\\frac{1}{2}")
        );
        assert_eq!(
            extract_boxed("\\boxed{1} and \\boxed{{2}}").as_deref(),
            Some("{2}")
        );
        assert_eq!(extract_boxed("\\fbox{7}").as_deref(), Some("\\fbox{7}"));
        assert_eq!(extract_boxed("no box").as_deref(), Some("no box"));
        assert_eq!(extract_boxed("\\boxed{unclosed"), None);
        assert_eq!(extract_boxed("$\\boxed 5$ ok").as_deref(), Some("5"));
        assert_eq!(extract_boxed("\\boxed{}").as_deref(), Some(""));
        assert_eq!(extract_boxed("").as_deref(), Some(""));
        assert_eq!(extract_boxed("é\\boxed{ü}").as_deref(), Some("ü"));
        // A '}' before the first '{' does not close the box.
        assert_eq!(extract_boxed("\\boxed}{5}"), None);
    }

    #[test]
    fn training_reward_values() {
        let c = "<reasoning>\nx\n</reasoning>\n<answer>\n\\boxed{\\dfrac12}\n</answer>";
        let r = training_reward(c, "The answer is $\\boxed{\\frac{1}{2}}$.");
        assert_eq!(r.get("correctness"), Some(2.0));
        assert_eq!(r.get("format"), Some(1.0));
        assert_eq!(r.total(), 3.0);
        // No answer tag, boxed present: 0.5 * (0 + 1).
        assert_eq!(format("\\boxed{3}"), 0.5);
        // Answer tag, no boxed: 0.5 * (1 + 0.5).
        assert_eq!(format("<answer>3</answer>"), 0.75);
        // Neither: 0.5 * 0.5.
        assert_eq!(format(""), 0.25);
        // Boxed outside the first answer block does not count.
        assert_eq!(format("<answer>3</answer>\\boxed{3}"), 0.75);
        // Unclosed box: the whole completion is compared (and fails).
        assert_eq!(correctness("\\boxed{3", "3"), 0.0);
        assert_eq!(correctness("3", "3"), 2.0);
    }

    #[test]
    fn eval_falls_back_to_answer_tags() {
        let t = MathTruth::Text("16 \\sqrt{3}".into());
        assert_eq!(eval_score("<answer>16\\sqrt3</answer>", &t).correct, 0); // whole text is parsed (no box)
        assert_eq!(
            eval_score("\\boxed{}<answer> 16\\sqrt3 </answer>", &t).correct,
            1
        );
        assert_eq!(eval_score("\\boxed{16\\sqrt{3}}", &t).correct, 1);
        assert_eq!(eval_score("\\boxed{x", &t).correct, 0);
        assert_eq!(
            eval_score("\\boxed{2.0}", &MathTruth::Float(2.0)).correct,
            1
        );
        assert_eq!(eval_score("\\boxed{2}", &MathTruth::Other).correct, 0);
    }
}
