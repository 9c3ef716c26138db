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
        if solve(&nums, target).is_some() {
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
