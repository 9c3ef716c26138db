//! A safe arithmetic evaluator for Countdown answers (docs/algorithm.md §7), replacing the
//! reference's Python `eval` while keeping its results.
//!
//! Grammar (Python's, restricted to what the reference's character filter
//! `^[\d+\-*/().\s]+$` lets through):
//!
//! ```text
//! expr    := term (('+' | '-') term)*
//! term    := unary (('*' | '/' | '//') unary)*
//! unary   := ('+' | '-') unary | power
//! power   := primary ('**' unary)?
//! primary := NUMBER | '(' expr ')'
//! NUMBER  := digits ['.' digits*] | '.' digits      (Python literal rules: no `012`)
//! ```
//!
//! Values are exact rationals ([`Rational`]); `/` is exact (Python's true division
//! rounds to `f64`, which only matters at the 1e-5 target tolerance's edge). Hard limits:
//! [`MAX_EXPR_LEN`] bytes, [`MAX_DEPTH`] nesting levels, [`MAX_LITERAL_DIGITS`] digits per
//! literal, integer exponents up to 256 and `i128` overflow checks — so `9**9**9` is
//! an [`ExprError::Arith`] overflow after a handful of multiplications, not a hang.
//! Python semantics kept: newlines are only allowed inside parentheses or at the ends;
//! `**` is right-associative and binds tighter than a unary minus on its left.
//! Diverges from Python only where Python's result is not a finite rational within
//! the limits (float exponents, complex powers, values beyond `i128`): those are errors.

use crate::rational::{ArithError, Rational};

/// Longest accepted expression, in bytes.
pub const MAX_EXPR_LEN: usize = 4096;
/// Deepest accepted nesting of parentheses, unary signs and powers.
pub const MAX_DEPTH: usize = 64;
/// Most digits in one literal (integer and fraction digits together).
pub const MAX_LITERAL_DIGITS: usize = 30;

/// Why an expression was rejected (a clean failure, never a panic).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ExprError {
    /// Empty or whitespace-only input.
    #[error("empty expression")]
    Empty,
    /// Input longer than [`MAX_EXPR_LEN`].
    #[error("expression longer than {MAX_EXPR_LEN} bytes")]
    TooLong,
    /// Nesting deeper than [`MAX_DEPTH`].
    #[error("expression nested deeper than {MAX_DEPTH}")]
    TooDeep,
    /// A literal with more than [`MAX_LITERAL_DIGITS`] digits.
    #[error("number literal too large at byte {0}")]
    OperandTooLarge(usize),
    /// A character outside the arithmetic alphabet.
    #[error("unexpected character {ch:?} at byte {pos}")]
    BadChar {
        /// Byte offset.
        pos: usize,
        /// The character.
        ch: char,
    },
    /// A malformed number such as `012` (Python forbids leading zeros) or `.`.
    #[error("invalid number literal at byte {0}")]
    BadNumber(usize),
    /// A token where another was expected.
    #[error("syntax error at byte {0}")]
    Syntax(usize),
    /// The input ended inside an expression.
    #[error("unexpected end of expression")]
    UnexpectedEnd,
    /// A power with a non-integer or oversized exponent.
    #[error("unsupported exponent at byte {0}")]
    Exponent(usize),
    /// Division by zero or overflow during evaluation.
    #[error("{0}")]
    Arith(#[from] ArithError),
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Tok {
    Num(Rational),
    Plus,
    Minus,
    Star,
    Slash,
    DoubleSlash,
    DoubleStar,
    LParen,
    RParen,
}

fn lex_number(bytes: &[u8], start: usize) -> Result<(Rational, usize), ExprError> {
    let mut i = start;
    let int_start = i;
    while i < bytes.len() && bytes[i].is_ascii_digit() {
        i += 1;
    }
    let int_digits = &bytes[int_start..i];
    let mut frac_digits: &[u8] = &[];
    let mut is_float = false;
    if i < bytes.len() && bytes[i] == b'.' {
        is_float = true;
        i += 1;
        let f = i;
        while i < bytes.len() && bytes[i].is_ascii_digit() {
            i += 1;
        }
        frac_digits = &bytes[f..i];
    }
    if int_digits.is_empty() && frac_digits.is_empty() {
        return Err(ExprError::BadNumber(start)); // a lone "."
    }
    // Python: "012" is a SyntaxError, "00" and "012.5" are fine.
    if !is_float
        && int_digits.len() > 1
        && int_digits[0] == b'0'
        && int_digits.iter().any(|&d| d != b'0')
    {
        return Err(ExprError::BadNumber(start));
    }
    let significant = |d: &[u8]| d.iter().skip_while(|&&c| c == b'0').count();
    let frac_trimmed = frac_digits
        .iter()
        .rposition(|&c| c != b'0')
        .map_or(&frac_digits[..0], |p| &frac_digits[..=p]);
    if significant(int_digits) + frac_trimmed.len() > MAX_LITERAL_DIGITS {
        return Err(ExprError::OperandTooLarge(start));
    }
    let mut num: i128 = 0;
    for &d in int_digits.iter().chain(frac_trimmed) {
        num = num * 10 + i128::from(d - b'0'); // at most 30 digits: no overflow
    }
    let den = 10i128.pow(frac_trimmed.len() as u32);
    Ok((Rational::new(num, den)?, i))
}

fn tokenize(src: &str) -> Result<Vec<(Tok, usize)>, ExprError> {
    let bytes = src.as_bytes();
    let mut toks = Vec::new();
    let mut depth: usize = 0;
    let mut i = 0;
    // Python's eval ignores leading whitespace/newlines and a trailing newline block.
    let end = src.trim_end_matches([' ', '\t', '\x0c', '\n', '\r']).len();
    while i < bytes.len() {
        let b = bytes[i];
        let tok = match b {
            b' ' | b'\t' | b'\x0c' => {
                i += 1;
                continue;
            }
            b'\n' | b'\r' => {
                // A newline ends the logical line unless inside brackets (or trailing / leading).
                if depth == 0 && i < end && !toks.is_empty() {
                    return Err(ExprError::Syntax(i));
                }
                i += 1;
                continue;
            }
            b'0'..=b'9' | b'.' => {
                let (v, next) = lex_number(bytes, i)?;
                toks.push((Tok::Num(v), i));
                i = next;
                continue;
            }
            b'+' => Tok::Plus,
            b'-' => Tok::Minus,
            b'*' if bytes.get(i + 1) == Some(&b'*') => Tok::DoubleStar,
            b'*' => Tok::Star,
            b'/' if bytes.get(i + 1) == Some(&b'/') => Tok::DoubleSlash,
            b'/' => Tok::Slash,
            b'(' => {
                depth += 1;
                if depth > MAX_DEPTH {
                    return Err(ExprError::TooDeep);
                }
                Tok::LParen
            }
            b')' => {
                depth = depth.saturating_sub(1);
                Tok::RParen
            }
            _ => {
                let ch = src[i..].chars().next().unwrap_or('\u{fffd}');
                return Err(ExprError::BadChar { pos: i, ch });
            }
        };
        toks.push((tok, i));
        i += if matches!(tok, Tok::DoubleStar | Tok::DoubleSlash) {
            2
        } else {
            1
        };
    }
    Ok(toks)
}

struct Parser {
    toks: Vec<(Tok, usize)>,
    pos: usize,
    depth: usize,
}

impl Parser {
    fn peek(&self) -> Option<Tok> {
        self.toks.get(self.pos).map(|t| t.0)
    }

    fn offset(&self) -> usize {
        self.toks.get(self.pos).map_or(usize::MAX, |t| t.1)
    }

    fn enter(&mut self) -> Result<(), ExprError> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            Err(ExprError::TooDeep)
        } else {
            Ok(())
        }
    }

    fn expr(&mut self) -> Result<Rational, ExprError> {
        let mut acc = self.term()?;
        loop {
            match self.peek() {
                Some(Tok::Plus) => {
                    self.pos += 1;
                    acc = acc.checked_add(self.term()?)?;
                }
                Some(Tok::Minus) => {
                    self.pos += 1;
                    acc = acc.checked_sub(self.term()?)?;
                }
                _ => return Ok(acc),
            }
        }
    }

    fn term(&mut self) -> Result<Rational, ExprError> {
        let mut acc = self.unary()?;
        loop {
            match self.peek() {
                Some(Tok::Star) => {
                    self.pos += 1;
                    acc = acc.checked_mul(self.unary()?)?;
                }
                Some(Tok::Slash) => {
                    self.pos += 1;
                    acc = acc.checked_div(self.unary()?)?;
                }
                Some(Tok::DoubleSlash) => {
                    self.pos += 1;
                    acc = acc.floor_div(self.unary()?)?;
                }
                _ => return Ok(acc),
            }
        }
    }

    fn unary(&mut self) -> Result<Rational, ExprError> {
        match self.peek() {
            Some(Tok::Plus) => {
                self.pos += 1;
                self.enter()?;
                let v = self.unary();
                self.depth -= 1;
                v
            }
            Some(Tok::Minus) => {
                self.pos += 1;
                self.enter()?;
                let v = self
                    .unary()
                    .and_then(|v| v.checked_neg().map_err(ExprError::from));
                self.depth -= 1;
                v
            }
            _ => self.power(),
        }
    }

    fn power(&mut self) -> Result<Rational, ExprError> {
        let base = self.primary()?;
        if self.peek() != Some(Tok::DoubleStar) {
            return Ok(base);
        }
        let at = self.offset();
        self.pos += 1;
        self.enter()?;
        let exp = self.unary();
        self.depth -= 1;
        let exp = exp?;
        if !exp.is_integer() || exp.numer().unsigned_abs() > 1 << 40 {
            return Err(ExprError::Exponent(at));
        }
        Ok(base.pow(exp.numer() as i64)?)
    }

    fn primary(&mut self) -> Result<Rational, ExprError> {
        let at = self.offset();
        match self.peek() {
            Some(Tok::Num(v)) => {
                self.pos += 1;
                Ok(v)
            }
            Some(Tok::LParen) => {
                self.pos += 1;
                self.enter()?;
                let v = self.expr();
                self.depth -= 1;
                let v = v?;
                match self.peek() {
                    Some(Tok::RParen) => {
                        self.pos += 1;
                        Ok(v)
                    }
                    Some(_) => Err(ExprError::Syntax(self.offset())),
                    None => Err(ExprError::UnexpectedEnd),
                }
            }
            Some(_) => Err(ExprError::Syntax(at)),
            None => Err(ExprError::UnexpectedEnd),
        }
    }
}

/// Evaluate an arithmetic expression exactly (see the module docs for the grammar and limits).
pub fn evaluate(src: &str) -> Result<Rational, ExprError> {
    if src.len() > MAX_EXPR_LEN {
        return Err(ExprError::TooLong);
    }
    let toks = tokenize(src)?;
    if toks.is_empty() {
        return Err(ExprError::Empty);
    }
    let mut p = Parser {
        toks,
        pos: 0,
        depth: 0,
    };
    let v = p.expr()?;
    if p.pos != p.toks.len() {
        return Err(ExprError::Syntax(p.offset()));
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(s: &str) -> Result<Rational, ExprError> {
        evaluate(s)
    }

    fn val(s: &str) -> f64 {
        ev(s).unwrap().to_f64()
    }

    #[test]
    fn python_semantics() {
        assert_eq!(val("49 + 55 - 53"), 51.0);
        assert_eq!(val("2*4-3"), 5.0);
        assert_eq!(val("(100 - 93) * 30 / 10"), 21.0);
        assert_eq!(val("1/3*3"), 1.0);
        assert_eq!(val("-2**2"), -4.0);
        assert_eq!(val("2**-1"), 0.5);
        assert_eq!(val("2**3**2"), 512.0);
        assert_eq!(val("7//2"), 3.0);
        assert_eq!(val("-7//2"), -4.0);
        assert_eq!(val("--5"), 5.0);
        assert_eq!(val("5--3"), 8.0);
        assert_eq!(val("+-+5"), -5.0);
        assert_eq!(val(".5 + 5."), 5.5);
        assert_eq!(val("00"), 0.0);
        assert_eq!(val("012.5"), 12.5);
        assert_eq!(val("(1 +\n 2)"), 3.0);
        assert_eq!(val("\n 1 + 2 \n"), 3.0);
        // Exact: Python's floats give 0.30000000000000004; both are within 1e-5 of 0.3.
        assert_eq!(ev("0.1 + 0.2").unwrap(), Rational::new(3, 10).unwrap());
    }

    #[test]
    fn clean_failures() {
        assert_eq!(ev(""), Err(ExprError::Empty));
        assert_eq!(ev("  \n"), Err(ExprError::Empty));
        assert_eq!(ev("1/0"), Err(ExprError::Arith(ArithError::DivisionByZero)));
        assert_eq!(
            ev("1/(2-2)"),
            Err(ExprError::Arith(ArithError::DivisionByZero))
        );
        assert_eq!(
            ev("0**-1"),
            Err(ExprError::Arith(ArithError::DivisionByZero))
        );
        assert!(matches!(ev("012"), Err(ExprError::BadNumber(0))));
        assert!(matches!(ev("."), Err(ExprError::BadNumber(0))));
        assert!(matches!(ev("1.2.3"), Err(ExprError::Syntax(_))));
        assert!(matches!(ev("1 2"), Err(ExprError::Syntax(_))));
        assert!(matches!(ev("1 +\n 2"), Err(ExprError::Syntax(_))));
        assert!(matches!(ev("()"), Err(ExprError::Syntax(_))));
        assert!(matches!(ev("(1"), Err(ExprError::UnexpectedEnd)));
        assert!(matches!(ev("1)"), Err(ExprError::Syntax(_))));
        assert!(matches!(ev("1 +"), Err(ExprError::UnexpectedEnd)));
        assert!(matches!(
            ev("2 x 3"),
            Err(ExprError::BadChar { ch: 'x', .. })
        ));
        assert!(matches!(ev("١+٢"), Err(ExprError::BadChar { .. })));
        assert!(matches!(ev("1\u{a0}+ 2"), Err(ExprError::BadChar { .. })));
        assert!(matches!(ev("4**0.5"), Err(ExprError::Exponent(_))));
        assert!(matches!(ev("1*/2"), Err(ExprError::Syntax(_))));
        assert!(matches!(ev("1***2"), Err(ExprError::Syntax(_))));
    }

    #[test]
    fn limits_bound_the_work() {
        assert_eq!(ev("9**9**9"), Err(ExprError::Arith(ArithError::Overflow)));
        assert_eq!(ev("9**99999999999999"), Err(ExprError::Exponent(1)));
        assert_eq!(ev("9**99"), Err(ExprError::Arith(ArithError::Overflow)));
        assert_eq!(
            ev("10**38 * 10**38"),
            Err(ExprError::Arith(ArithError::Overflow))
        );
        assert_eq!(ev(&"1+".repeat(3000)), Err(ExprError::TooLong));
        assert_eq!(
            ev(&format!("{}1{}", "(".repeat(65), ")".repeat(65))),
            Err(ExprError::TooDeep)
        );
        assert_eq!(val(&format!("{}1{}", "(".repeat(60), ")".repeat(60))), 1.0);
        assert_eq!(
            ev(&format!("{}1", "-".repeat(100))),
            Err(ExprError::TooDeep)
        );
        assert!(matches!(
            ev(&"9".repeat(31)),
            Err(ExprError::OperandTooLarge(0))
        ));
        assert_eq!(val(&"9".repeat(30)), 1e30);
        assert_eq!(
            ev(&format!("0.{}1", "0".repeat(28))).unwrap(),
            Rational::new(1, 10i128.pow(29)).unwrap()
        );
    }
}
