//! Generators: unique Sudoku, solvable Countdown, reproducible from the seed.

use rewards::generate::{countdown_items, sudoku_items, CountdownConfig, MAX_UNIQUE_BLANKS};
use rewards::{countdown, expr, sudoku, training_reward, GroundTruth, Task};

#[test]
fn every_sudoku_has_exactly_one_solution() {
    for blanks in [1, 4, 8, 10, MAX_UNIQUE_BLANKS] {
        let items = sudoku_items(7, 40, blanks).unwrap();
        assert_eq!(items.len(), 40);
        for it in &items {
            let GroundTruth::Sudoku { puzzle, solution } = &it.truth else {
                panic!()
            };
            let p = sudoku::parse_grid(puzzle).unwrap();
            assert_eq!(p.iter().filter(|&&d| d == 0).count(), blanks);
            assert_eq!(sudoku::count_solutions(&p, 2), 1, "{puzzle}");
            assert_eq!(&sudoku::grid_string(&sudoku::solve(&p).unwrap()), solution);
            let answer = format!("<answer>{solution}</answer>");
            assert_eq!(
                training_reward(Task::Sudoku, &answer, it).unwrap().total(),
                1.0
            );
        }
    }
    assert!(sudoku_items(1, 1, MAX_UNIQUE_BLANKS + 1).is_err());
}

#[test]
fn every_countdown_item_is_solvable() {
    let cfg = CountdownConfig::default();
    let items = countdown_items(11, 200, &cfg).unwrap();
    let mut sizes = [0usize; 5];
    for it in &items {
        let GroundTruth::Countdown { numbers, target } = &it.truth else {
            panic!()
        };
        sizes[numbers.len()] += 1;
        assert!((cfg.min_target..=cfg.max_target).contains(target));
        assert!(numbers
            .iter()
            .all(|n| (cfg.min_number..=cfg.max_number).contains(n)));
        let e = countdown::solve(numbers, *target).expect("solvable");
        assert!(expr::evaluate(&e).unwrap().close_to(*target as f64));
        let answer = format!("<answer>{e}</answer>");
        assert_eq!(
            training_reward(Task::Countdown, &answer, it)
                .unwrap()
                .total(),
            1.0
        );
    }
    assert!(sizes[3] > 0 && sizes[4] > 0, "{sizes:?}");
    let bad = CountdownConfig {
        min_count: 5,
        max_count: 4,
        ..cfg
    };
    assert!(countdown_items(1, 1, &bad).is_err());
}

#[test]
fn same_seed_same_data() {
    let cfg = CountdownConfig::default();
    assert_eq!(
        sudoku_items(42, 50, 8).unwrap(),
        sudoku_items(42, 50, 8).unwrap()
    );
    assert_ne!(
        sudoku_items(42, 50, 8).unwrap(),
        sudoku_items(43, 50, 8).unwrap()
    );
    assert_eq!(
        countdown_items(42, 50, &cfg).unwrap(),
        countdown_items(42, 50, &cfg).unwrap()
    );
    assert_ne!(
        countdown_items(42, 50, &cfg).unwrap(),
        countdown_items(43, 50, &cfg).unwrap()
    );
}
