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
}

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
        }
    }
}

const ATTEMPTS: usize = 100_000;

fn random_value(nums: &[i64], rng: &mut impl Rng) -> Option<Rational> {
    let mut vals: Vec<Rational> = nums.iter().map(|&n| Rational::from_int(n)).collect();
    while vals.len() > 1 {
        vals.shuffle(rng);
        let b = vals.pop()?;
        let a = vals.pop()?;
        let v = match rng.random_range(0..4) {
            0 => a.checked_add(b),
            1 => a.checked_sub(b),
            2 => a.checked_mul(b),
            _ => a.checked_div(b),
        }
        .ok()?;
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
    for _ in 0..ATTEMPTS {
        let n = rng.random_range(cfg.min_count..=cfg.max_count);
        let nums: Vec<i64> = (0..n)
            .map(|_| rng.random_range(cfg.min_number..=cfg.max_number))
            .collect();
        let Some(v) = random_value(&nums, rng) else {
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
            in_order_solution(&nums, target).is_some()
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
/// operators tried `+ - * /` at each place, the first place slowest. `None` if there is none.
pub fn in_order_solution(numbers: &[i64], target: i64) -> Option<String> {
    fn extend(value: Rational, text: String, rest: &[i64], target: Rational) -> Option<String> {
        let Some((&n, tail)) = rest.split_first() else {
            return (value == target).then_some(text);
        };
        let b = Rational::from_int(n);
        for (op, v) in [
            ('+', value.checked_add(b)),
            ('-', value.checked_sub(b)),
            ('*', value.checked_mul(b)),
            ('/', value.checked_div(b)),
        ] {
            let Ok(v) = v else { continue };
            let joined = if tail.is_empty() {
                format!("{text}{op}{n}")
            } else {
                format!("({text}{op}{n})")
            };
            if let Some(found) = extend(v, joined, tail, target) {
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
            in_order_solution(&[3, 4, 5], 12).as_deref(),
            Some("(3+4)+5")
        );
        assert_eq!(
            in_order_solution(&[3, 4, 5], 35).as_deref(),
            Some("(3+4)*5")
        );
        assert_eq!(
            in_order_solution(&[8, 2, 3], 12).as_deref(),
            Some("(8/2)*3")
        );
        // 5*(4-3) = 5 needs another order.
        assert_eq!(in_order_solution(&[5, 4, 3], 5), None);
        assert!(solve(&[5, 4, 3], 5).is_some());
        let cfg = small(true);
        for item in countdown_items(11, 100, &cfg).unwrap() {
            let crate::GroundTruth::Countdown { numbers, target } = &item.truth else {
                panic!("not a Countdown item")
            };
            let text = in_order_solution(numbers, *target).unwrap();
            let nums: Vec<f64> = numbers.iter().map(|&n| n as f64).collect();
            let answer = format!("<answer>{text}</answer>");
            assert_eq!(crate::countdown::score(&answer, &nums, *target as f64), 1.0);
            let digits: Vec<char> = text.chars().filter(char::is_ascii_digit).collect();
            let given: Vec<char> = numbers.iter().map(|n| n.to_string().remove(0)).collect();
            assert_eq!(digits, given, "{text} for {numbers:?}");
        }
    }
}
