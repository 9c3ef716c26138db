//! Exact rational numbers over `i128` with overflow checks (used by the Countdown
//! expression evaluator and solver).

use std::cmp::Ordering;
use std::fmt;

/// An exact rational `num / den` in lowest terms with `den > 0`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Rational {
    num: i128,
    den: i128,
}

/// Arithmetic failure of [`Rational`] operations.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ArithError {
    /// Division (or a negative power) of zero.
    #[error("division by zero")]
    DivisionByZero,
    /// A numerator or denominator left the `i128` range.
    #[error("arithmetic overflow")]
    Overflow,
}

fn gcd(mut a: i128, mut b: i128) -> i128 {
    // Works on non-negative values; callers guarantee no i128::MIN.
    while b != 0 {
        let t = a % b;
        a = b;
        b = t;
    }
    a.abs()
}

impl Rational {
    /// Zero.
    pub const ZERO: Rational = Rational { num: 0, den: 1 };
    /// One.
    pub const ONE: Rational = Rational { num: 1, den: 1 };

    /// `num / den` reduced; fails on a zero denominator or on `i128::MIN`.
    pub fn new(num: i128, den: i128) -> Result<Self, ArithError> {
        if den == 0 {
            return Err(ArithError::DivisionByZero);
        }
        if num == i128::MIN || den == i128::MIN {
            return Err(ArithError::Overflow);
        }
        let g = gcd(num.abs(), den.abs()).max(1);
        let (mut n, mut d) = (num / g, den / g);
        if d < 0 {
            n = -n;
            d = -d;
        }
        Ok(Rational { num: n, den: d })
    }

    /// The integer `n`.
    pub fn from_int(n: i64) -> Self {
        Rational {
            num: i128::from(n),
            den: 1,
        }
    }

    /// Numerator (sign carrier).
    pub fn numer(&self) -> i128 {
        self.num
    }

    /// Denominator (always positive).
    pub fn denom(&self) -> i128 {
        self.den
    }

    /// Whether the value is an integer.
    pub fn is_integer(&self) -> bool {
        self.den == 1
    }

    /// Whether the value is zero.
    pub fn is_zero(&self) -> bool {
        self.num == 0
    }

    /// The nearest `f64`.
    pub fn to_f64(&self) -> f64 {
        self.num as f64 / self.den as f64
    }

    /// Checked sum.
    pub fn checked_add(self, o: Rational) -> Result<Rational, ArithError> {
        let g = gcd(self.den, o.den).max(1);
        let l = self.den / g;
        let r = o.den / g;
        let a = self.num.checked_mul(r).ok_or(ArithError::Overflow)?;
        let b = o.num.checked_mul(l).ok_or(ArithError::Overflow)?;
        let n = a.checked_add(b).ok_or(ArithError::Overflow)?;
        let d = self.den.checked_mul(r).ok_or(ArithError::Overflow)?;
        Rational::new(n, d)
    }

    /// Checked negation.
    pub fn checked_neg(self) -> Result<Rational, ArithError> {
        Ok(Rational {
            num: self.num.checked_neg().ok_or(ArithError::Overflow)?,
            den: self.den,
        })
    }

    /// Checked difference.
    pub fn checked_sub(self, o: Rational) -> Result<Rational, ArithError> {
        self.checked_add(o.checked_neg()?)
    }

    /// Checked product.
    pub fn checked_mul(self, o: Rational) -> Result<Rational, ArithError> {
        let g1 = gcd(self.num.abs(), o.den).max(1);
        let g2 = gcd(o.num.abs(), self.den).max(1);
        let n = (self.num / g1)
            .checked_mul(o.num / g2)
            .ok_or(ArithError::Overflow)?;
        let d = (self.den / g2)
            .checked_mul(o.den / g1)
            .ok_or(ArithError::Overflow)?;
        Rational::new(n, d)
    }

    /// Checked quotient (division by zero is an error, never a panic).
    pub fn checked_div(self, o: Rational) -> Result<Rational, ArithError> {
        if o.num == 0 {
            return Err(ArithError::DivisionByZero);
        }
        self.checked_mul(Rational {
            num: o.den,
            den: o.num,
        })
        .and_then(|r| Rational::new(r.num, r.den))
    }

    /// Python's floor division `a // b` (the floor of the exact quotient).
    pub fn floor_div(self, o: Rational) -> Result<Rational, ArithError> {
        let q = self.checked_div(o)?;
        Ok(Rational {
            num: q.num.div_euclid(q.den),
            den: 1,
        })
    }

    /// Integer power with `|exp| <= 256`, checked.
    pub fn pow(self, exp: i64) -> Result<Rational, ArithError> {
        if exp.unsigned_abs() > 256 {
            // Only 0, 1 and -1 survive such exponents without overflow.
            return match (self.num, self.den) {
                (0, _) if exp > 0 => Ok(Rational::ZERO),
                (0, _) => Err(ArithError::DivisionByZero),
                (1, 1) => Ok(Rational::ONE),
                (-1, 1) => Ok(if exp % 2 == 0 { Rational::ONE } else { self }),
                _ => Err(ArithError::Overflow),
            };
        }
        let base = if exp < 0 {
            Rational::ONE.checked_div(self)?
        } else {
            self
        };
        let mut acc = Rational::ONE;
        for _ in 0..exp.unsigned_abs() {
            acc = acc.checked_mul(base)?;
        }
        Ok(acc)
    }

    /// Whether `|self - target| < 1e-5` (the reference's Countdown check), exact for
    /// integer targets.
    pub fn close_to(&self, target: f64) -> bool {
        if target.is_finite() && target.fract() == 0.0 && target.abs() < 1e15 {
            let t = target as i128;
            // |n/d - t| < 1/100000  <=>  100000 * |n - t*d| < d
            let diff = t
                .checked_mul(self.den)
                .and_then(|td| self.num.checked_sub(td))
                .and_then(|x| x.checked_abs())
                .and_then(|x| x.checked_mul(100_000));
            match diff {
                Some(x) => x < self.den,
                None => false, // the difference exceeds i128 / 1e5: far from the target
            }
        } else {
            (self.to_f64() - target).abs() < 1e-5
        }
    }
}

impl PartialOrd for Rational {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Rational {
    fn cmp(&self, other: &Self) -> Ordering {
        // Exact for values whose cross products fit; f64 otherwise.
        match (
            self.num.checked_mul(other.den),
            other.num.checked_mul(self.den),
        ) {
            (Some(a), Some(b)) => a.cmp(&b),
            _ => self.to_f64().total_cmp(&other.to_f64()),
        }
    }
}

impl fmt::Display for Rational {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.den == 1 {
            write!(f, "{}", self.num)
        } else {
            write!(f, "{}/{}", self.num, self.den)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(n: i128, d: i128) -> Rational {
        Rational::new(n, d).unwrap()
    }

    #[test]
    fn arithmetic() {
        assert_eq!(r(1, 2).checked_add(r(1, 3)).unwrap(), r(5, 6));
        assert_eq!(r(1, 2).checked_sub(r(1, 2)).unwrap(), Rational::ZERO);
        assert_eq!(r(2, 3).checked_mul(r(3, 4)).unwrap(), r(1, 2));
        assert_eq!(r(1, 2).checked_div(r(1, 4)).unwrap(), r(2, 1));
        assert_eq!(
            r(1, 2).checked_div(Rational::ZERO),
            Err(ArithError::DivisionByZero)
        );
        assert_eq!(r(-7, 2).floor_div(Rational::ONE).unwrap(), r(-4, 1));
        assert_eq!(r(2, 1).pow(-2).unwrap(), r(1, 4));
        assert_eq!(r(10, 1).pow(200), Err(ArithError::Overflow));
        assert_eq!(Rational::ZERO.pow(-1), Err(ArithError::DivisionByZero));
        assert_eq!(r(-1, 1).pow(1 << 40).unwrap(), Rational::ONE);
        assert_eq!(r(1, -2), r(-1, 2));
        assert!(Rational::new(i128::MAX, 1)
            .unwrap()
            .checked_add(Rational::ONE)
            .is_err());
        assert!(r(1, 3) < r(1, 2));
    }

    #[test]
    fn closeness() {
        assert!(r(51, 1).close_to(51.0));
        assert!(!r(51, 1).close_to(52.0));
        assert!(r(7, 2).close_to(3.5));
        assert!(r(2_000_001, 200_000).close_to(10.0)); // 1/200000 off
        assert!(!r(100_001, 10_000).close_to(10.0)); // 1e-4 off
    }
}
