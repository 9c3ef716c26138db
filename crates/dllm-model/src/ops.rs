//! The CPU kernels' entry points, named by what they compute (docs/algorithm.md §1–§6).
//!
//! On burn's flex backend with f32 tensors — plain or inside autodiff — each runs one parallel
//! pass per row instead of a chain of single-threaded tensor ops (see `src/kernels/`). On every
//! other backend or dtype they return `None` and the caller keeps its tensor expression;
//! [`token_log_probs`] runs that fallback itself.

pub use crate::kernels::activation_dtype;
pub use crate::kernels::argmax::argmax_with_confidence;
pub use crate::kernels::attention::attention_rows;
pub use crate::kernels::log_probs::token_log_probs;
pub use crate::kernels::matmul::matmul_2d;
pub use crate::kernels::matmul_nf4::matmul_nf4;
pub use crate::kernels::rms_norm::rms_norm_rows;
pub use crate::kernels::rope::rope_heads_first;
pub use crate::kernels::simd::exp_f32;
pub use crate::kernels::splice::splice_positions;
pub use crate::kernels::swiglu::swiglu;
