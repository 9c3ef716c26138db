//! Countdown generator: random numbers, a target reached by a random expression over
//! all of them, and a final check with the exact solver.

use rand::seq::SliceRandom;
use rand::Rng;

use crate::countdown::solve;
use crate::rational::Rational;
use crate::{Error, TaskItem};

/// Ranges for generated Countdown items (defaults follow the 3-to-4-number reference data).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CountdownConfig {
    /// Fewest numbers per item (>= 2).
    pub min_count: usize,
    /// Most numbers per item (<= 6).
    pub max_count: usize,
    /// Smallest number.
    pub min_number: i64,
    /// Largest number.
    pub max_number: i64,
    /// Smallest target.
    pub min_target: i64,
    /// Largest target.
    pub max_target: i64,
    /// Keep only items with an [`in_order_solution`]: the numbers combined in the order given.
    pub in_order: bool,
    /// The operators the target is made with and an in-order solution may use, each once, from
    /// `+ - * /` (the verifier accepts any of the four whatever this says).
    pub operators: String,
}

/// The four operators of Countdown, in the order the generator and [`in_order_solution`] take them.
pub const COUNTDOWN_OPERATORS: &str = "+-*/";

impl Default for CountdownConfig {
    fn default() -> Self {
        CountdownConfig {
            min_count: 3,
            max_count: 4,
            min_number: 1,
            max_number: 100,
            min_target: 1,
            max_target: 100,
            in_order: false,
            operators: COUNTDOWN_OPERATORS.to_string(),
        }
    }
}

impl CountdownConfig {
    /// The configured operators, or why they are not a non-empty set drawn from `+ - * /`.
    fn operator_list(&self) -> Result<Vec<char>, String> {
        let ops: Vec<char> = self.operators.chars().collect();
        let mut seen = Vec::new();
        for &op in &ops {
            if !COUNTDOWN_OPERATORS.contains(op) {
                return Err(format!(
                    "operator {op:?} is not one of {COUNTDOWN_OPERATORS}"
                ));
            }
            if seen.contains(&op) {
                return Err(format!("operator {op:?} given twice"));
            }
            seen.push(op);
        }
        if ops.is_empty() {
            return Err("no operators".to_string());
        }
        Ok(ops)
    }
}

/// `a op b` in exact rational arithmetic (`op` one of `+ - * /`).
fn apply(op: char, a: Rational, b: Rational) -> Option<Rational> {
    match op {
        '+' => a.checked_add(b).ok(),
        '-' => a.checked_sub(b).ok(),
        '*' => a.checked_mul(b).ok(),
        '/' => a.checked_div(b).ok(),
        _ => None,
    }
}

const ATTEMPTS: usize = 100_000;

fn random_value(nums: &[i64], ops: &[char], rng: &mut impl Rng) -> Option<Rational> {
    let mut vals: Vec<Rational> = nums.iter().map(|&n| Rational::from_int(n)).collect();
    while vals.len() > 1 {
        vals.shuffle(rng);
        let b = vals.pop()?;
        let a = vals.pop()?;
        let v = apply(ops[rng.random_range(0..ops.len())], a, b)?;
        vals.push(v);
    }
    vals.pop()
}

/// One solvable Countdown item drawn with `rng` under `cfg`.
pub fn countdown_item(rng: &mut impl Rng, cfg: &CountdownConfig) -> Result<TaskItem, Error> {
    let valid = cfg.min_count >= 2
        && cfg.min_count <= cfg.max_count
        && cfg.max_count <= crate::countdown::MAX_SOLVER_NUMBERS
        && 0 <= cfg.min_number
        && cfg.min_number <= cfg.max_number
        && cfg.min_target <= cfg.max_target;
    if !valid {
        return Err(Error::Generator(format!(
            "invalid Countdown config {cfg:?}"
        )));
    }
    let ops = cfg
        .operator_list()
        .map_err(|e| Error::Generator(format!("invalid Countdown operators: {e}")))?;
    for _ in 0..ATTEMPTS {
        let n = rng.random_range(cfg.min_count..=cfg.max_count);
        let nums: Vec<i64> = (0..n)
            .map(|_| rng.random_range(cfg.min_number..=cfg.max_number))
            .collect();
        let Some(v) = random_value(&nums, &ops, rng) else {
            continue;
        };
        if !v.is_integer() {
            continue;
        }
        let Ok(target) = i64::try_from(v.numer()) else {
            continue;
        };
        if target < cfg.min_target || target > cfg.max_target {
            continue;
        }
        let solvable = if cfg.in_order {
            in_order_solution(&nums, target, &cfg.operators).is_some()
        } else {
            solve(&nums, target).is_some()
        };
        if solvable {
            return Ok(TaskItem::countdown(nums, target));
        }
    }
    Err(Error::Generator(format!(
        "no solvable Countdown item under {cfg:?} after {ATTEMPTS} attempts"
    )))
}

/// `count` solvable Countdown items from `seed`.
pub fn countdown_items(
    seed: u64,
    count: usize,
    cfg: &CountdownConfig,
) -> Result<Vec<TaskItem>, Error> {
    let mut rng = super::rng(seed);
    (0..count).map(|_| countdown_item(&mut rng, cfg)).collect()
}

/// The first expression that combines `numbers` in the order given, each number joining the
/// value so far (`(a op b) op c`), equal to `target` with exact rational arithmetic: the
/// `operators` (a subset of `+ - * /`) tried in the order `+ - * /` at each place, the first
/// place slowest. `None` if there is none.
pub fn in_order_solution(numbers: &[i64], target: i64, operators: &str) -> Option<String> {
    fn extend(
        value: Rational,
        text: String,
        rest: &[i64],
        target: Rational,
        operators: &str,
    ) -> Option<String> {
        let Some((&n, tail)) = rest.split_first() else {
            return (value == target).then_some(text);
        };
        let b = Rational::from_int(n);
        for op in COUNTDOWN_OPERATORS
            .chars()
            .filter(|&op| operators.contains(op))
        {
            let Some(v) = apply(op, value, b) else {
                continue;
            };
            let joined = if tail.is_empty() {
                format!("{text}{op}{n}")
            } else {
                format!("({text}{op}{n})")
            };
            if let Some(found) = extend(v, joined, tail, target, operators) {
                return Some(found);
            }
        }
        None
    }
    let (&first, rest) = numbers.split_first()?;
    if numbers.len() > crate::countdown::MAX_SOLVER_NUMBERS {
        return None;
    }
    extend(
        Rational::from_int(first),
        first.to_string(),
        rest,
        Rational::from_int(target),
        operators,
    )
}

/// The true answer the embedded tiny Countdown model is taught: [`solve`]'s expression with its
/// spaces removed (e.g. `(3+4)*5`); `None` when the item has no solution.
pub fn solution_text(numbers: &[i64], target: i64) -> Option<String> {
    solve(numbers, target).map(|e| e.chars().filter(|c| !c.is_whitespace()).collect())
}

/// A flawed Countdown solver: adds every number in the order given, whatever the target,
/// parenthesised as [`solution_text`] writes its nested pairs (`(3+4)+5`, so that for single
/// digits it has the length of a true answer). Right only when the target is the sum.
pub fn sum_fill(numbers: &[i64]) -> String {
    let mut text = String::new();
    for (i, n) in numbers.iter().enumerate() {
        text = match i {
            0 => n.to_string(),
            _ if i + 1 == numbers.len() => format!("{text}+{n}"),
            _ => format!("({text}+{n})"),
        };
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Three numbers from 1 to 9, targets from 10 to 30.
    fn small(in_order: bool) -> CountdownConfig {
        CountdownConfig {
            min_count: 3,
            max_count: 3,
            min_number: 1,
            max_number: 9,
            min_target: 10,
            max_target: 30,
            in_order,
            operators: COUNTDOWN_OPERATORS.to_string(),
        }
    }

    #[test]
    fn the_solution_text_reaches_the_target_and_the_sum_fill_only_the_sum() {
        let cfg = small(false);
        let items = countdown_items(7, 200, &cfg).unwrap();
        let (mut sums, mut right_sums) = (0, 0);
        for item in &items {
            let crate::GroundTruth::Countdown { numbers, target } = &item.truth else {
                panic!("not a Countdown item")
            };
            let text = solution_text(numbers, *target).unwrap();
            assert!(!text.contains(' '), "{text}");
            let answer = |e: &str| format!("<answer>{e}</answer>");
            let nums: Vec<f64> = numbers.iter().map(|&n| n as f64).collect();
            assert_eq!(
                crate::countdown::score(&answer(&text), &nums, *target as f64),
                1.0
            );
            let fill = sum_fill(numbers);
            assert_eq!(fill.len(), text.len(), "{fill} {text}");
            let is_sum = numbers.iter().sum::<i64>() == *target;
            let right = crate::countdown::score(&answer(&fill), &nums, *target as f64) == 1.0;
            assert_eq!(right, is_sum, "{fill} for {numbers:?} -> {target}");
            sums += usize::from(is_sum);
            right_sums += usize::from(right);
        }
        assert_eq!(sums, right_sums);
        assert!(sums > 0 && sums < items.len());
        assert_eq!(sum_fill(&[3, 4, 5]), "(3+4)+5");
        assert_eq!(sum_fill(&[3, 4, 5, 6]), "((3+4)+5)+6");
        assert_eq!(sum_fill(&[3, 4]), "3+4");
    }

    #[test]
    fn in_order_solutions_use_the_numbers_as_given() {
        assert_eq!(
            in_order_solution(&[3, 4, 5], 12, COUNTDOWN_OPERATORS).as_deref(),
            Some("(3+4)+5")
        );
        assert_eq!(
            in_order_solution(&[3, 4, 5], 35, COUNTDOWN_OPERATORS).as_deref(),
            Some("(3+4)*5")
        );
        assert_eq!(
            in_order_solution(&[8, 2, 3], 12, COUNTDOWN_OPERATORS).as_deref(),
            Some("(8/2)*3")
        );
        // 5*(4-3) = 5 needs another order.
        assert_eq!(in_order_solution(&[5, 4, 3], 5, COUNTDOWN_OPERATORS), None);
        assert!(solve(&[5, 4, 3], 5).is_some());
        let cfg = small(true);
        for item in countdown_items(11, 100, &cfg).unwrap() {
            let crate::GroundTruth::Countdown { numbers, target } = &item.truth else {
                panic!("not a Countdown item")
            };
            let text = in_order_solution(numbers, *target, &cfg.operators).unwrap();
            let nums: Vec<f64> = numbers.iter().map(|&n| n as f64).collect();
            let answer = format!("<answer>{text}</answer>");
            assert_eq!(crate::countdown::score(&answer, &nums, *target as f64), 1.0);
            let digits: Vec<char> = text.chars().filter(char::is_ascii_digit).collect();
            let given: Vec<char> = numbers.iter().map(|n| n.to_string().remove(0)).collect();
            assert_eq!(digits, given, "{text} for {numbers:?}");
        }
    }

    #[test]
    fn the_operators_bound_the_targets_and_the_in_order_solutions() {
        let cfg = CountdownConfig {
            operators: "+-".to_string(),
            min_target: 1,
            ..small(true)
        };
        for item in countdown_items(3, 200, &cfg).unwrap() {
            let crate::GroundTruth::Countdown { numbers, target } = &item.truth else {
                panic!("not a Countdown item")
            };
            let text = in_order_solution(numbers, *target, "+-").unwrap();
            assert!(!text.contains(['*', '/']), "{text}");
            let signed = [1, -1];
            let reachable = signed.iter().any(|s1| {
                signed
                    .iter()
                    .any(|s2| numbers[0] + s1 * numbers[1] + s2 * numbers[2] == *target)
            });
            assert!(reachable, "{numbers:?} -> {target}");
        }
        assert_eq!(
            in_order_solution(&[3, 4, 5], 35, "+-").as_deref(),
            None,
            "(3+4)*5 needs *"
        );
        assert_eq!(
            in_order_solution(&[3, 4, 5], 2, "+-").as_deref(),
            Some("(3+4)-5")
        );
        for bad in ["", "+x", "++", "+ "] {
            let cfg = CountdownConfig {
                operators: bad.to_string(),
                ..small(true)
            };
            let err = countdown_item(&mut crate::generate::rng(0), &cfg).unwrap_err();
            assert!(err.to_string().contains("operators"), "{bad:?}: {err}");
        }
    }
}
