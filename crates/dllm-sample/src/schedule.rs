//! LLaDA's `get_num_transfer_tokens` (docs/algorithm.md §2, step 4).

/// How many tokens to commit at each of `steps` steps when `masked` positions are masked at
/// the start of a block: `masked / steps` per step, the remainder added one each to the first
/// steps (e.g. 16 over 5 steps gives 4, 3, 3, 3, 3).
pub fn num_transfer_tokens(masked: usize, steps: usize) -> Vec<usize> {
    assert!(steps > 0, "steps must be positive");
    let base = masked / steps;
    let remainder = masked % steps;
    (0..steps)
        .map(|i| base + usize::from(i < remainder))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uneven_schedule_front_loads_the_remainder() {
        assert_eq!(num_transfer_tokens(16, 5), vec![4, 3, 3, 3, 3]);
        assert_eq!(num_transfer_tokens(8, 8), vec![1; 8]);
        assert_eq!(num_transfer_tokens(3, 4), vec![1, 1, 1, 0]);
    }
}
