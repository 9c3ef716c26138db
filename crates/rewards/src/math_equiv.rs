//! Hendrycks MATH answer normalisation (`strip_string`) and equivalence (`is_equiv`),
//! as in DMPO's `math500_utils.py` and d1's `parser_helper.py` (docs/algorithm.md §7).
//!
//! The reference's helpers raise on some inputs (an `assert` in `remove_right_units`,
//! `IndexError` in `fix_sqrt`/`fix_fracs`, `ValueError` from `int()` in `fix_a_slash_b`);
//! `is_equiv` then falls back to comparing the raw strings. That control flow is
//! reproduced with [`Raised`]. Indexing is by code point, as in Python.

use crate::pycompat;

/// A Python exception raised inside `strip_string` (which makes `is_equiv` fall back
/// to raw string equality).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Raised;

/// Hard cap on the input size `strip_string` works on; longer strings are treated as
/// raising (then compared raw), which keeps the work linear and bounded.
pub const MAX_NORMALISE_LEN: usize = 1 << 16;

/// `fix_fracs`: `\frac12` → `\frac{1}{2}`, `\frac1b` → `\frac{1}{b}`, `\frac1{72}` → `\frac{1}{72}`.
pub fn fix_fracs(string: &str) -> Result<String, Raised> {
    let mut parts = string.split("\\frac");
    let mut new_str = parts.next().unwrap_or("").to_string();
    for substr in parts {
        new_str.push_str("\\frac");
        let mut cs = substr.chars();
        let a = cs.next().ok_or(Raised)?; // substr[0] on "" raises IndexError
        if a == '{' {
            new_str.push_str(substr);
            continue;
        }
        let Some(b) = cs.next() else {
            return Ok(string.to_string()); // `assert len(substr) >= 2` failed: give up
        };
        let post = cs.as_str();
        new_str.push('{');
        new_str.push(a);
        new_str.push('}');
        if b != '{' {
            new_str.push('{');
            new_str.push(b);
            new_str.push('}');
        } else {
            new_str.push(b);
        }
        new_str.push_str(post);
    }
    Ok(new_str)
}

/// `fix_a_slash_b`: `3/4` → `\frac{3}{4}` when both sides are canonical integers.
pub fn fix_a_slash_b(string: &str) -> Result<String, Raised> {
    let mut parts = string.split('/');
    let (Some(a), Some(b), None) = (parts.next(), parts.next(), parts.next()) else {
        return Ok(string.to_string());
    };
    // int() raising ValueError is not caught by the reference (only AssertionError is).
    let a = pycompat::int_canonical(a).ok_or(Raised)?;
    let b = pycompat::int_canonical(b).ok_or(Raised)?;
    if string == format!("{a}/{b}") {
        Ok(format!("\\frac{{{a}}}{{{b}}}"))
    } else {
        Ok(string.to_string())
    }
}

/// `remove_right_units`: drop everything from `\text{ ` on (raises if it occurs twice).
pub fn remove_right_units(string: &str) -> Result<String, Raised> {
    const UNIT: &str = "\\text{ ";
    match string.matches(UNIT).count() {
        0 => Ok(string.to_string()),
        1 => Ok(string.split(UNIT).next().unwrap_or("").to_string()),
        _ => Err(Raised),
    }
}

/// `fix_sqrt`: `\sqrt3` → `\sqrt{3}` (raises when `\sqrt` ends the string).
pub fn fix_sqrt(string: &str) -> Result<String, Raised> {
    if !string.contains("\\sqrt") {
        return Ok(string.to_string());
    }
    let mut parts = string.split("\\sqrt");
    let mut new_string = parts.next().unwrap_or("").to_string();
    for split in parts {
        let mut cs = split.chars();
        let a = cs.next().ok_or(Raised)?;
        if a != '{' {
            new_string.push_str("\\sqrt{");
            new_string.push(a);
            new_string.push('}');
            new_string.push_str(cs.as_str());
        } else {
            new_string.push_str("\\sqrt");
            new_string.push_str(split);
        }
    }
    Ok(new_string)
}

/// `strip_string`: the Hendrycks MATH normalisation (docs/algorithm.md §7): drop newlines, `\!`,
/// `\left`/`\right`, degrees, `\$`, right-hand units, `\%`; `tfrac`/`dfrac` → `frac`;
/// `.5` → `0.5`; drop a short `k = ` prefix; fix `\sqrt`, `\frac`; remove spaces;
/// `0.5` → `\frac{1}{2}`; `a/b` → `\frac{a}{b}`.
pub fn strip_string(input: &str) -> Result<String, Raised> {
    if input.len() > MAX_NORMALISE_LEN {
        return Err(Raised);
    }
    let mut s = input.replace('\n', "");
    s = s.replace("\\!", "");
    s = s.replace("\\\\", "\\");
    s = s.replace("tfrac", "frac");
    s = s.replace("dfrac", "frac");
    s = s.replace("\\left", "");
    s = s.replace("\\right", "");
    s = s.replace("^{\\circ}", "");
    s = s.replace("^\\circ", "");
    s = s.replace("\\$", "");
    s = remove_right_units(&s)?;
    s = s.replace("\\%", "");
    s = s.replace(" .", " 0.");
    s = s.replace("{.", "{0.");
    if s.is_empty() {
        return Ok(s);
    }
    if s.starts_with('.') {
        s.insert(0, '0');
    }
    {
        let mut parts = s.split('=');
        if let (Some(lhs), Some(rhs), None) = (parts.next(), parts.next(), parts.next()) {
            if lhs.chars().count() <= 2 {
                s = rhs.to_string();
            }
        }
    }
    s = fix_sqrt(&s)?;
    s = s.replace(' ', "");
    s = fix_fracs(&s)?;
    if s == "0.5" {
        s = "\\frac{1}{2}".to_string();
    }
    fix_a_slash_b(&s)
}

/// `is_equiv` on two answer strings: equal after [`strip_string`], or — when the
/// normalisation raises for either — equal as raw strings. `None` (Python `None`)
/// equals only `None`.
pub fn is_equiv(a: Option<&str>, b: Option<&str>) -> bool {
    match (a, b) {
        (None, None) => true,
        (None, _) | (_, None) => false,
        (Some(a), Some(b)) => match (strip_string(a), strip_string(b)) {
            (Ok(x), Ok(y)) => x == y,
            _ => a == b,
        },
    }
}

/// d1's `is_equiv` when one side is a Python float: `abs(float(a) - b) < 1e-6`.
pub fn is_equiv_float(a: &str, b: f64) -> bool {
    pycompat::float(a).is_some_and(|x| (x - b).abs() < 1e-6)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn eq(a: &str, b: &str) -> bool {
        is_equiv(Some(a), Some(b))
    }

    #[test]
    fn hendrycks_rules() {
        assert!(eq("\\frac12", "\\frac{1}{2}"));
        assert!(eq("\\dfrac{1}{2}", "\\frac{1}{2}"));
        assert!(eq("0.5", "\\frac{1}{2}"));
        assert!(eq(".5", "0.5"));
        assert!(eq("1/2", "\\frac{1}{2}"));
        assert!(eq("\\sqrt2", "\\sqrt{2}"));
        assert!(eq("16 \\sqrt{3}", "16\\sqrt3"));
        assert!(eq("x = 5", "5"));
        assert!(eq("\\left( 1, 2 \\right)", "(1,2)"));
        assert!(eq("90^\\circ", "90"));
        assert!(eq("90^{\\circ}", "90"));
        assert!(eq("\\$10", "10"));
        assert!(eq("10\\%", "10"));
        assert!(eq("5 \\text{ cm}", "5"));
        assert!(eq("\\tfrac{3}{4}", "3/4"));
        assert!(eq("a\n+b", "a+b"));
        assert!(eq("\\frac1{72}", "\\frac{1}{72}"));
        assert!(!eq("2", "3"));
        assert!(!eq("\\frac{1}{3}", "0.5"));
        // Long left-hand sides are kept.
        assert!(!eq("xyz = 5", "5"));
    }

    #[test]
    fn raising_paths_fall_back_to_raw_equality() {
        // Two "\text{ " raise in remove_right_units.
        assert_eq!(strip_string("1\\text{ a}\\text{ b}"), Err(Raised));
        // "\sqrt" at the end raises IndexError.
        assert_eq!(strip_string("2\\sqrt"), Err(Raised));
        assert!(!eq("2\\sqrt", "2\\sqrt{}"));
        assert!(eq("2\\sqrt", "2\\sqrt"));
        // int("x") raises ValueError in fix_a_slash_b: raw comparison.
        assert_eq!(strip_string("x/2"), Err(Raised));
        assert!(!eq("x/2", "x / 2"));
        // "\frac" at the end raises IndexError.
        assert_eq!(strip_string("\\frac"), Err(Raised));
        // Non-canonical ints keep the slash form.
        assert_eq!(strip_string("+3/4").as_deref(), Ok("+3/4"));
        assert_eq!(strip_string("03/4").as_deref(), Ok("03/4"));
        assert_eq!(strip_string("-3/4").as_deref(), Ok("\\frac{-3}{4}"));
    }

    #[test]
    fn odd_inputs() {
        assert_eq!(strip_string("").as_deref(), Ok(""));
        assert_eq!(strip_string("\\frac1").as_deref(), Ok("\\frac1"));
        assert_eq!(strip_string("\\fracé€x").as_deref(), Ok("\\frac{é}{€}x"));
        assert!(eq("ünïcødé", "ünïcødé"));
        assert!(is_equiv(None, None));
        assert!(!is_equiv(Some("1"), None));
        assert!(is_equiv_float(" 3.0 ", 3.0));
        assert!(!is_equiv_float("three", 3.0));
        let huge = "1".repeat(MAX_NORMALISE_LEN + 1);
        assert!(eq(&huge, &huge));
    }
}
