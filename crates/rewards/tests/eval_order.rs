//! The shipped reference evaluation orders equal numpy's `np.random.seed(42);
//! np.random.choice(n, 256, replace=False)`, recomputed here from numpy's algorithm: the legacy
//! `RandomState` is MT19937 seeded by `init_genrand(42)`; `choice` without replacement takes the
//! first 256 of `permutation(n)`, a Fisher-Yates shuffle drawing `j` in `0..=i` for `i = n-1..1`
//! by masked rejection sampling of 32-bit outputs (numpy's `random_interval`).

use rewards::data::{countdown_cd3_test, reference_eval_order, sudoku_4x4_test};
use rewards::Task;

/// MT19937, the reference generator of numpy's legacy `RandomState`.
struct Mt19937 {
    state: [u32; 624],
    index: usize,
}

impl Mt19937 {
    fn new(seed: u32) -> Self {
        let mut state = [0u32; 624];
        state[0] = seed;
        for i in 1..624 {
            let prev = state[i - 1];
            state[i] = 1_812_433_253u32
                .wrapping_mul(prev ^ (prev >> 30))
                .wrapping_add(i as u32);
        }
        Self { state, index: 624 }
    }

    fn next_u32(&mut self) -> u32 {
        if self.index == 624 {
            for i in 0..624 {
                let y = (self.state[i] & 0x8000_0000) | (self.state[(i + 1) % 624] & 0x7fff_ffff);
                let mut v = self.state[(i + 397) % 624] ^ (y >> 1);
                if y & 1 == 1 {
                    v ^= 0x9908_b0df;
                }
                self.state[i] = v;
            }
            self.index = 0;
        }
        let mut y = self.state[self.index];
        self.index += 1;
        y ^= y >> 11;
        y ^= (y << 7) & 0x9d2c_5680;
        y ^= (y << 15) & 0xefc6_0000;
        y ^ (y >> 18)
    }

    /// numpy's `random_interval(max)`: uniform in `0..=max` (here `max < 2^32`).
    fn interval(&mut self, max: u32) -> u32 {
        if max == 0 {
            return 0;
        }
        let mut mask = max;
        for shift in [1, 2, 4, 8, 16] {
            mask |= mask >> shift;
        }
        loop {
            let v = self.next_u32() & mask;
            if v <= max {
                return v;
            }
        }
    }
}

fn numpy_choice(n: usize, size: usize, seed: u32) -> Vec<usize> {
    let mut rng = Mt19937::new(seed);
    let mut perm: Vec<usize> = (0..n).collect();
    for i in (1..n).rev() {
        let j = rng.interval(i as u32) as usize;
        perm.swap(i, j);
    }
    perm.truncate(size);
    perm
}

#[test]
fn mt19937_matches_the_reference_stream() {
    // The first outputs of init_genrand(5489), the reference implementation's default seed.
    let mut rng = Mt19937::new(5489);
    let first: Vec<u32> = (0..3).map(|_| rng.next_u32()).collect();
    assert_eq!(first, [3_499_211_612, 581_869_302, 3_890_346_734]);
}

#[test]
fn shipped_orders_equal_numpy_choice_with_seed_42() {
    for (task, n) in [
        (Task::Countdown, countdown_cd3_test().len()),
        (Task::Sudoku, sudoku_4x4_test().len()),
    ] {
        let shipped = reference_eval_order(task).expect("an order");
        assert_eq!(shipped.len(), 256, "{task}");
        assert_eq!(shipped, numpy_choice(n, 256, 42), "{task}");
    }
    assert_eq!(
        (countdown_cd3_test().len(), sudoku_4x4_test().len()),
        (256, 500)
    );
    assert!(reference_eval_order(Task::Gsm8k).is_none());
}
