//! Fuzz the MATH answer normaliser and equivalence: never panics; equivalence is reflexive.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(s) = std::str::from_utf8(data) {
        let _ = rewards::math_equiv::strip_string(s);
        assert!(rewards::math_equiv::is_equiv(Some(s), Some(s)));
        let _ = rewards::math::eval_parse(s);
        let _ = rewards::math::extract_boxed(s);
    }
});
