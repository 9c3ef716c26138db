"""Writes the evaluation order of d1's and DMPO's eval scripts for the shipped Countdown and Sudoku
test sets: `np.random.seed(42)` then `np.random.choice(n, 256, replace=False)` (eval/eval.py,
eval/gsm8k.py of both repositories). Run from the repository root:

    python scripts/reference_eval_order.py

(numpy from the Python registry; the legacy RandomState stream has been stable since numpy 1.0).
`crates/rewards/tests/eval_order.rs` recomputes the same indices in Rust and checks the files.
"""
import numpy as np

for name, n in [("countdown_cd3_test", 256), ("4x4_test_sudoku", 500)]:
    np.random.seed(42)
    order = np.random.choice(n, 256, replace=False)
    path = f"crates/rewards/data/{name}.order.txt"
    with open(path, "w") as f:
        f.write(f"# np.random.seed(42); np.random.choice({n}, 256, replace=False) (scripts/reference_eval_order.py)\n")
        f.write("\n".join(str(i) for i in order) + "\n")
    print(path, order[:5])
