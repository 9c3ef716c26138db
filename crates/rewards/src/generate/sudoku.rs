//! 4x4 Sudoku generator: a random solved grid, then cells blanked in random order
//! while the puzzle keeps exactly one solution (checked with the counting solver).

use rand::seq::SliceRandom;
use rand::Rng;

use crate::sudoku::{count_solutions, grid_string, Grid};
use crate::{Error, TaskItem};

/// Most blanks a 4x4 Sudoku with a unique solution can have (at least 4 clues are needed).
pub const MAX_UNIQUE_BLANKS: usize = 12;

/// Attempts (fresh grids and orders) before giving up on a blank count.
const ATTEMPTS: usize = 10_000;

fn fill(g: &mut Grid, rng: &mut impl Rng) -> bool {
    let Some(cell) = g.iter().position(|&d| d == 0) else {
        return true;
    };
    let mut digits = [1u8, 2, 3, 4];
    digits.shuffle(rng);
    for d in digits {
        g[cell] = d;
        if crate::sudoku::is_consistent(g) && fill(g, rng) {
            return true;
        }
    }
    g[cell] = 0;
    false
}

/// A random complete 4x4 Sudoku grid (backtracking over shuffled digits).
pub fn random_solution(rng: &mut impl Rng) -> Grid {
    let mut g = [0u8; 16];
    // An empty grid is always completable, so `fill` succeeds.
    fill(&mut g, rng);
    g
}

/// A `(puzzle, solution)` pair with exactly `blanks` empty cells and a unique solution.
pub fn sudoku_puzzle(rng: &mut impl Rng, blanks: usize) -> Result<(Grid, Grid), Error> {
    if blanks > MAX_UNIQUE_BLANKS {
        return Err(Error::Generator(format!(
            "a 4x4 Sudoku with a unique solution has at most {MAX_UNIQUE_BLANKS} blanks, asked for {blanks}"
        )));
    }
    for _ in 0..ATTEMPTS {
        let solution = random_solution(rng);
        let mut puzzle = solution;
        let mut order: Vec<usize> = (0..16).collect();
        order.shuffle(rng);
        let mut removed = 0;
        for cell in order {
            if removed == blanks {
                break;
            }
            let keep = puzzle[cell];
            puzzle[cell] = 0;
            if count_solutions(&puzzle, 2) == 1 {
                removed += 1;
            } else {
                puzzle[cell] = keep;
            }
        }
        if removed == blanks {
            return Ok((puzzle, solution));
        }
    }
    Err(Error::Generator(format!(
        "no unique 4x4 Sudoku with {blanks} blanks after {ATTEMPTS} attempts"
    )))
}

/// `count` Sudoku items with `blanks` empty cells each, from `seed`.
pub fn sudoku_items(seed: u64, count: usize, blanks: usize) -> Result<Vec<TaskItem>, Error> {
    let mut rng = super::rng(seed);
    (0..count)
        .map(|_| {
            let (p, s) = sudoku_puzzle(&mut rng, blanks)?;
            Ok(TaskItem::sudoku(grid_string(&p), grid_string(&s)))
        })
        .collect()
}
