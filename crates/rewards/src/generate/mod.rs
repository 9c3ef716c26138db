//! Seedable generators of unlimited training data (docs/algorithm.md §7 tasks): 4x4 Sudoku with a
//! unique solution and a chosen number of blanks (optionally outside an excluded set, with a
//! flawed row-only solver for imperfect demonstrations), and Countdown with 3–4 numbers and a
//! guaranteed solution (optionally only items solvable with the numbers in the order given; the
//! solvers' answers as compact text, and a flawed solver that adds every number). Both use `ChaCha8Rng` seeded explicitly, so the same seed (and
//! the same crate versions) gives the same data on every platform.

mod countdown;
mod sudoku;

pub use countdown::{
    countdown_item, countdown_items, in_order_solution, solution_text, sum_fill, CountdownConfig,
    COUNTDOWN_OPERATORS,
};
pub use sudoku::{
    random_solution, row_only_fill, sudoku_item_excluding, sudoku_items, sudoku_puzzle,
    MAX_UNIQUE_BLANKS,
};

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

/// The generators' random number generator, seeded explicitly.
pub fn rng(seed: u64) -> ChaCha8Rng {
    ChaCha8Rng::seed_from_u64(seed)
}
