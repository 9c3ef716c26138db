//! GSM8K: training reward components (DMPO/d1 `reward_func.py`) and d1 evaluation
//! parsing (`parse_and_get_acc.py::parse_gsm_answers`), docs/algorithm.md §7.
//!
//! The reference's format regexes run under Python `re.match` **without** `re.DOTALL`:
//! they are anchored at the start of the completion and `.` does not cross a newline.
//! So the soft format only matches when `<reasoning>...</reasoning>` sits on one line at
//! the very start, and the strict format only when reasoning and answer are each one
//! line. That is the reference behaviour (it rarely fires on multi-line reasoning) and it
//! is reproduced here on purpose. Python's `$` also matches before one final `\n`.

use regex::Regex;
use std::sync::LazyLock;

use crate::pycompat;
use crate::reward::{EvalScore, RewardBreakdown};

/// Component names, in the reference order (max 0.5 + 0.5 + 0.5 + 0.5 + 2.0 = 4.0).
pub const COMPONENTS: [&str; 5] = [
    "xmlcount",
    "soft_format",
    "strict_format",
    "int",
    "correctness",
];

fn re(p: &str) -> Regex {
    Regex::new(p).expect("static regex")
}

// `[\s\x1C-\x1F]` is Python's `\s` (Rust's `\s` lacks U+001C..U+001F).
static STRICT: LazyLock<Regex> =
    LazyLock::new(|| re(r"\A<reasoning>\n.*?\n</reasoning>\n<answer>\n.*?\n</answer>\n\n?\z"));
static SOFT: LazyLock<Regex> =
    LazyLock::new(|| re(r"\A<reasoning>.*?</reasoning>[\s\x1C-\x1F]*<answer>.*?</answer>"));
static BOXED: LazyLock<Regex> = LazyLock::new(|| re(r"\\boxed\{(.*?)\}"));
static NUMBER: LazyLock<Regex> = LazyLock::new(|| re(r"-?\d+\.?\d*"));
static ANSWER: LazyLock<Regex> = LazyLock::new(|| re(r"(?s)<answer>(.*?)</answer>"));
static HASH_VALUE: LazyLock<Regex> =
    LazyLock::new(|| re(r"####[\s\x1C-\x1F]*\$?([\d,]+(?:\.\d+)?)"));

/// `extract_xml_answer`: the text after the last `<answer>`, up to the next
/// `</answer>`, stripped (the whole completion when there is no `<answer>`).
pub fn extract_xml_answer(text: &str) -> &str {
    let after = text.rsplit("<answer>").next().unwrap_or(text);
    let inner = after.split("</answer>").next().unwrap_or(after);
    pycompat::strip(inner)
}

/// `extract_hash_answer`: the text after the first `####`, up to a second `####`,
/// stripped; `None` without `####`.
pub fn extract_hash_answer(text: &str) -> Option<&str> {
    let mut parts = text.split("####");
    parts.next();
    parts.next().map(pycompat::strip)
}

fn chars(s: &str) -> usize {
    s.chars().count()
}

/// `count_xml`: 0.125 per well-formed tag, minus 0.001 per character after the
/// closing tag (same float operation order as the reference, so equal bits).
pub fn xmlcount(text: &str) -> f64 {
    let mut count = 0.0f64;
    if text.matches("<reasoning>\n").count() == 1 {
        count += 0.125;
    }
    if text.matches("\n</reasoning>\n").count() == 1 {
        count += 0.125;
    }
    if text.matches("\n<answer>\n").count() == 1 {
        count += 0.125;
        let tail = text.rsplit("\n</answer>\n").next().unwrap_or(text);
        count -= chars(tail) as f64 * 0.001;
    }
    if text.matches("\n</answer>").count() == 1 {
        count += 0.125;
        let tail = text.rsplit("\n</answer>").next().unwrap_or(text);
        // `len(...) - 1` is -1 when the text ends with the tag: a 0.001 bonus, as in the reference.
        count -= (chars(tail) as f64 - 1.0) * 0.001;
    }
    count
}

/// `soft_format_reward_func`: 0.5 if the completion starts with
/// `<reasoning>...</reasoning>` (one line), optional whitespace, `<answer>...</answer>`.
pub fn soft_format(text: &str) -> f64 {
    if SOFT.is_match(text) {
        0.5
    } else {
        0.0
    }
}

/// `strict_format_reward_func`: 0.5 iff the completion is exactly
/// `<reasoning>\nONE LINE\n</reasoning>\n<answer>\nONE LINE\n</answer>\n` (plus at most one `\n`).
pub fn strict_format(text: &str) -> f64 {
    if STRICT.is_match(text) {
        0.5
    } else {
        0.0
    }
}

/// `int_reward_func`: 0.5 if the extracted answer is all digits (Python `str.isdigit`).
pub fn int_reward(text: &str) -> f64 {
    if pycompat::str_is_digit(extract_xml_answer(text)) {
        0.5
    } else {
        0.0
    }
}

/// `correctness_reward_func`: 2.0 if the extracted answer equals `answer` exactly.
pub fn correctness(text: &str, answer: &str) -> f64 {
    if extract_xml_answer(text) == answer {
        2.0
    } else {
        0.0
    }
}

/// All five GSM8K training components for one completion (docs/algorithm.md §7, max 4.0).
pub fn training_reward(completion: &str, answer: &str) -> RewardBreakdown {
    RewardBreakdown {
        components: vec![
            ("xmlcount", xmlcount(completion)),
            ("soft_format", soft_format(completion)),
            ("strict_format", strict_format(completion)),
            ("int", int_reward(completion)),
            ("correctness", correctness(completion, answer)),
        ],
    }
}

/// d1's `Parser.extract_answer_gsm8k` applied to `"#### " + answer`: the numeric value of a
/// GSM8K answer (`$` and thousands separators allowed), or `None`.
pub fn reference_value(answer: &str) -> Option<f64> {
    let text = format!("#### {answer}");
    let caps = HASH_VALUE.captures(&text)?;
    pycompat::float(&caps[1].replace(',', ""))
}

fn parse_number_text(text: &str, first: bool) -> Option<f64> {
    if let Some(v) = pycompat::float(text) {
        return Some(v);
    }
    let mut it = NUMBER.find_iter(text);
    let m = if first { it.next() } else { it.last() };
    m.and_then(|m| pycompat::float(m.as_str()))
}

/// d1 GSM8K answer parsing: the first `\boxed{..}` (single line, up to the first `}`)
/// whose content parses as a float or contains a number; else the content of the first
/// `<answer>...</answer>` as a float, or its last number.
pub fn eval_parse(generation: &str) -> Option<f64> {
    for caps in BOXED.captures_iter(generation) {
        let content = pycompat::strip(&caps[1]);
        let all_dots = !content.is_empty() && content.chars().all(|c| c == '.');
        if content.is_empty() || content == "..." || all_dots {
            continue;
        }
        if let Some(v) = parse_number_text(content, true) {
            return Some(v);
        }
    }
    let caps = ANSWER.captures(generation)?;
    let text = pycompat::strip(&caps[1]);
    if text.is_empty() {
        return None;
    }
    parse_number_text(text, false)
}

/// d1 GSM8K evaluation of one generation against a numeric ground truth
/// (`parsed == ground_truth` as floats; `None` truth is never matched).
pub fn eval_score(generation: &str, truth: Option<f64>) -> EvalScore {
    let parsed = eval_parse(generation);
    let ok = matches!((parsed, truth), (Some(p), Some(t)) if p == t);
    EvalScore::binary(ok, parsed.map(|p| format!("{p}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "<reasoning>\nthink\n</reasoning>\n<answer>\n42\n</answer>\n";

    #[test]
    fn well_formed_completion() {
        let r = training_reward(GOOD, "42");
        // xmlcount: 4 tags; tail after "\n</answer>\n" is empty; tail after "\n</answer>" is "\n" (len 1).
        assert_eq!(r.get("xmlcount"), Some(0.5));
        // Soft format: `.` does not cross the newlines inside <reasoning> (no DOTALL).
        assert_eq!(r.get("soft_format"), Some(0.0));
        assert_eq!(r.get("strict_format"), Some(0.5));
        assert_eq!(r.get("int"), Some(0.5));
        assert_eq!(r.get("correctness"), Some(2.0));
        assert_eq!(r.total(), 3.5);
        // The soft format fires on single-line blocks.
        let one_line = "<reasoning>think</reasoning>\n<answer>42</answer>";
        let r = training_reward(one_line, "42");
        assert_eq!(r.get("soft_format"), Some(0.5));
        assert_eq!(r.get("correctness"), Some(2.0));
    }

    #[test]
    fn xmlcount_edge_cases() {
        assert_eq!(xmlcount(""), 0.0);
        // Ends right at "\n</answer>": the reference's `len - 1` gives a 0.001 bonus.
        let t = "<reasoning>\nx\n</reasoning>\n<answer>\n1\n</answer>";
        let expect = 0.125 + 0.125 + 0.125 - (t.len() as f64) * 0.001 + 0.125 + 0.001;
        assert_eq!(xmlcount(t), expect);
        // Trailing text costs 0.001 per character (code points, not bytes).
        let t2 = format!("{GOOD}éé");
        let v = xmlcount(&t2);
        assert!((v - (0.5 - 0.002 - 0.002)).abs() < 1e-12, "{v}");
        // Duplicated tags are not counted.
        let dup = format!("{GOOD}{GOOD}");
        assert_eq!(xmlcount(&dup), 0.0);
    }

    #[test]
    fn strict_requires_single_lines_like_python_without_dotall() {
        assert_eq!(strict_format(GOOD), 0.5);
        assert_eq!(strict_format(&format!("{GOOD}\n")), 0.5); // `$` before a final newline
        assert_eq!(strict_format(&format!("{GOOD}\n\n")), 0.0);
        assert_eq!(strict_format(&format!("{GOOD}x")), 0.0);
        let multi = "<reasoning>\na\nb\n</reasoning>\n<answer>\n42\n</answer>\n";
        assert_eq!(strict_format(multi), 0.0);
        assert_eq!(strict_format(&format!(" {GOOD}")), 0.0);
    }

    #[test]
    fn soft_is_anchored_and_single_line() {
        assert_eq!(
            soft_format("<reasoning>a</reasoning> \n <answer>1</answer> trailing"),
            0.5
        );
        assert_eq!(
            soft_format("x<reasoning>a</reasoning><answer>1</answer>"),
            0.0
        );
        assert_eq!(soft_format(GOOD), 0.0); // newline inside the reasoning: no DOTALL
        assert_eq!(
            soft_format("<reasoning>a</reasoning>\u{1f}<answer>1</answer>"),
            0.5
        );
        assert_eq!(soft_format(""), 0.0);
    }

    #[test]
    fn answer_extraction_uses_last_open_tag() {
        let t = "<answer>1</answer> then <answer> 2 </answer> junk";
        assert_eq!(extract_xml_answer(t), "2");
        assert_eq!(extract_xml_answer("no tags at all "), "no tags at all");
        assert_eq!(extract_xml_answer("<answer>\n7"), "7");
        assert_eq!(extract_xml_answer(""), "");
        assert_eq!(correctness(t, "2"), 2.0);
        assert_eq!(correctness(t, "1"), 0.0);
        assert_eq!(int_reward("<answer>١٢</answer>"), 0.5); // Python isdigit is Unicode
        assert_eq!(int_reward("<answer>-3</answer>"), 0.0);
        assert_eq!(int_reward("<answer>3.0</answer>"), 0.0);
        assert_eq!(int_reward("<answer></answer>"), 0.0);
    }

    #[test]
    fn hash_answer() {
        assert_eq!(extract_hash_answer("so 5+5=10\n#### 10"), Some("10"));
        assert_eq!(extract_hash_answer("a #### 1 #### 2"), Some("1"));
        assert_eq!(extract_hash_answer("none"), None);
        assert_eq!(reference_value("1,234"), Some(1234.0));
        assert_eq!(reference_value("$5.50"), Some(5.5));
        assert_eq!(reference_value("abc"), None);
    }

    #[test]
    fn eval_parsing_follows_d1() {
        assert_eq!(eval_parse("<answer>\n\\boxed{18}\n</answer>"), Some(18.0));
        // First parsable boxed wins; "..." and empties are skipped.
        assert_eq!(
            eval_parse("\\boxed{...} \\boxed{} \\boxed{x = 3} \\boxed{4}"),
            Some(3.0)
        );
        // Boxed content stops at the first '}' (nested braces are cut).
        assert_eq!(eval_parse("\\boxed{\\frac{1}{2}}"), Some(1.0));
        // No boxed: last number of the first <answer> block.
        assert_eq!(
            eval_parse("<answer>She has 3 then 5 apples</answer><answer>9</answer>"),
            Some(5.0)
        );
        assert_eq!(eval_parse("<answer> -2.5 </answer>"), Some(-2.5));
        assert_eq!(eval_parse("The answer is 5"), None);
        assert_eq!(eval_parse(""), None);
        // Boxed content does not cross lines.
        assert_eq!(eval_parse("\\boxed{1\n2}<answer>7</answer>"), Some(7.0));
        assert_eq!(eval_score("\\boxed{72}", Some(72.0)).correct, 1);
        assert_eq!(eval_score("\\boxed{72}", None).correct, 0);
        assert_eq!(eval_score("\\boxed{nan}", Some(f64::NAN)).correct, 0);
    }
}
