//! 4x4 Sudoku generator: a random solved grid, then cells blanked in random order
//! while the puzzle keeps exactly one solution (checked with the counting solver); training
//! items drawn outside an excluded set (a test set), and a flawed row-only solver that writes
//! imperfect demonstrations.

use std::collections::HashSet;
use std::ops::RangeInclusive;

use rand::seq::SliceRandom;
use rand::Rng;

use crate::sudoku::{count_solutions, grid_string, Grid};
use crate::{Error, TaskItem};

/// Most blanks a 4x4 Sudoku with a unique solution can have (at least 4 clues are needed).
pub const MAX_UNIQUE_BLANKS: usize = 12;

/// Attempts (fresh grids and orders) before giving up on a blank count.
const ATTEMPTS: usize = 10_000;

/// Draws before giving up on finding a puzzle outside the excluded set.
const EXCLUSION_ATTEMPTS: usize = 10_000;

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

/// A training item whose puzzle is not in `excluded` (puzzle strings, e.g. a test set's): per
/// draw, a blank count uniform in `blanks` and an item seed from `rng`, the item being the one
/// [`sudoku_items`] makes from that seed; redrawn while its puzzle is excluded.
pub fn sudoku_item_excluding(
    rng: &mut impl Rng,
    blanks: RangeInclusive<usize>,
    excluded: &HashSet<String>,
) -> Result<TaskItem, Error> {
    if blanks.is_empty() {
        return Err(Error::Generator(format!(
            "empty blank range {}..={}",
            blanks.start(),
            blanks.end()
        )));
    }
    for _ in 0..EXCLUSION_ATTEMPTS {
        let count = rng.random_range(blanks.clone());
        let item_seed: u64 = rng.random();
        let (p, s) = sudoku_puzzle(&mut super::rng(item_seed), count)?;
        let puzzle = grid_string(&p);
        if !excluded.contains(&puzzle) {
            return Ok(TaskItem::sudoku(puzzle, grid_string(&s)));
        }
    }
    Err(Error::Generator(format!(
        "no 4x4 Sudoku outside the {} excluded puzzles after {EXCLUSION_ATTEMPTS} draws",
        excluded.len()
    )))
}

/// A flawed 4x4 Sudoku solver: each row's empty cells (`0`) get the digits missing from that
/// row, in ascending order, ignoring columns and boxes (a cell with no missing digit left gets
/// `1`). On the first 256 puzzles of the shipped 4x4 test set it fills 47.2% of the empty cells
/// correctly and solves 1.6% of the puzzles.
pub fn row_only_fill(puzzle: &str) -> String {
    let cells: Vec<u8> = puzzle.bytes().collect();
    let mut out = cells.clone();
    for (row, chunk) in cells.chunks(4).enumerate() {
        let mut missing = (b'1'..=b'4').filter(|d| !chunk.contains(d));
        for (col, &c) in chunk.iter().enumerate() {
            if c == b'0' {
                out[row * 4 + col] = missing.next().unwrap_or(b'1');
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn row_only_fill_fills_each_row_in_ascending_order() {
        // Row 0 misses 2 and 4 (filled in that order), row 1 is full, row 2 misses 1, row 3 all.
        let puzzle = "3010214320340000";
        assert_eq!(row_only_fill(puzzle), "3214214321341234");
        // It is wrong where a column or box constraint decides: the true solution differs.
        assert_ne!(row_only_fill("3102200002100320"), "3142243142131324");
    }

    #[test]
    fn row_only_fill_scores_as_documented_on_the_test_set() {
        let items: Vec<TaskItem> = crate::data::sudoku_4x4_test()
            .into_iter()
            .take(256)
            .collect();
        assert_eq!(items.len(), 256);
        let (mut right, mut blanks, mut solved) = (0usize, 0usize, 0usize);
        for item in &items {
            let crate::GroundTruth::Sudoku { puzzle, solution } = &item.truth else {
                panic!("not a Sudoku item: {item:?}")
            };
            let fill = row_only_fill(puzzle);
            assert!(!fill.contains('0'), "{puzzle} -> {fill}");
            let cells = crate::sudoku::correct_cells(&fill, puzzle, solution);
            right += cells;
            blanks += crate::sudoku::empty_cells(puzzle).len();
            solved += usize::from(fill == *solution);
        }
        assert_eq!(
            format!("{:.1}", 100.0 * right as f64 / blanks as f64),
            "47.2"
        );
        assert_eq!(format!("{:.1}", 100.0 * solved as f64 / 256.0), "1.6");
    }

    #[test]
    fn excluded_puzzles_are_never_drawn() {
        let mut rng = super::super::rng(3);
        let first = sudoku_item_excluding(&mut rng, 6..=10, &HashSet::new()).unwrap();
        let crate::GroundTruth::Sudoku { puzzle, .. } = &first.truth else {
            panic!("not a Sudoku item: {first:?}")
        };
        // The same stream with the first draw's puzzle excluded moves on to another puzzle.
        let excluded: HashSet<String> = [puzzle.clone()].into();
        let mut rng = super::super::rng(3);
        let other = sudoku_item_excluding(&mut rng, 6..=10, &excluded).unwrap();
        assert_ne!(other, first);
        let crate::GroundTruth::Sudoku { puzzle, .. } = &other.truth else {
            panic!("not a Sudoku item: {other:?}")
        };
        let blanks = crate::sudoku::empty_cells(puzzle).len();
        assert!((6..=10).contains(&blanks), "{blanks} blanks");
    }

    #[test]
    fn excluding_draws_the_items_of_sudoku_items() {
        let mut rng = super::super::rng(5);
        let item = sudoku_item_excluding(&mut rng, 8..=8, &HashSet::new()).unwrap();
        let mut rng = super::super::rng(5);
        let _ = rng.random_range(8..=8usize);
        let seed: u64 = rng.random();
        assert_eq!(vec![item], sudoku_items(seed, 1, 8).unwrap());
    }

    #[test]
    fn excluding_refuses_bad_blank_ranges() {
        let mut rng = super::super::rng(0);
        #[allow(clippy::reversed_empty_ranges)]
        let empty = 10..=6;
        assert!(sudoku_item_excluding(&mut rng, empty, &HashSet::new()).is_err());
        let too_many = MAX_UNIQUE_BLANKS + 1..=MAX_UNIQUE_BLANKS + 1;
        assert!(sudoku_item_excluding(&mut rng, too_many, &HashSet::new()).is_err());
    }
}
