//! Fuzz the Countdown expression evaluator: never panics; accepted results are exact.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(s) = std::str::from_utf8(data) {
        if let Ok(v) = rewards::expr::evaluate(s) {
            // Results are reduced fractions with a positive denominator.
            assert!(v.denom() > 0);
            let _ = v.close_to(24.0);
        }
        let _ = rewards::countdown::evaluate_equation(s);
    }
});
