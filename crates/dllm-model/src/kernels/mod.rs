//! Hand-written, row-parallel CPU kernels for the model's elementwise and attention work
//! (docs/algorithm.md §1) and for the per-token quantities the sampler and the losses read (docs/algorithm.md §2–§6).
//!
//! burn's CPU backend (flex) runs elementwise ops on one thread, one op per pass over memory:
//! `silu(g) * u` is four passes and a scalar `expf` per element, RMSNorm six. Profiled on the
//! bench model, these serial passes held the second core idle for about a quarter of a forward
//! (docs/performance.md). On flex with f32 tensors each kernel computes a row in one pass on all
//! cores — inside autodiff too, with a hand-written backward pass — and every entry point
//! returns `None` on other backends and other dtypes, so the caller keeps its tensor expression
//! and GPU backends keep their own kernels. ([`log_probs::token_log_probs`] runs that fallback
//! itself and always returns the tensor.)
//!
//! One file per kernel, each holding its entry point, its forward and backward host loops, its
//! autodiff op and its tests:
//!
//! | kernel | entry point |
//! |---|---|
//! | [`rms_norm`] | [`rms_norm_rows`](rms_norm::rms_norm_rows) |
//! | [`swiglu`] | [`swiglu`](swiglu::swiglu) |
//! | [`rope`] | [`rope_heads_first`](rope::rope_heads_first) |
//! | [`attention`] | [`attention_rows`](attention::attention_rows) |
//! | [`log_probs`] | [`token_log_probs`](log_probs::token_log_probs) |
//! | [`matmul`] | [`matmul_2d`](matmul::matmul_2d) |
//! | [`matmul_half`] | [`matmul_2d`](matmul::matmul_2d) with a bf16 or f16 weight |
//! | [`matmul_nf4`] | [`matmul_nf4`](matmul_nf4::matmul_nf4), a frozen NF4 weight |
//! | [`splice`] | [`splice_positions`](splice::splice_positions) |
//! | [`argmax`] | [`argmax_with_confidence`](argmax::argmax_with_confidence) |
//!
//! beside the shared pieces: `flex` (the bridge to flex and `Autodiff<Flex, C>`, compiled with
//! the `flex` feature), [`simd`] (vectorised reductions and `exp`) and `gemm` (strided matrix
//! views and products). Callers outside this module use [`crate::ops`].
//!
//! Every reduction runs in a fixed order, so results do not depend on thread scheduling
//! (training on CPU is deterministic).

// Without the flex backend compiled in, the host kernels have no caller and the entry points
// read only the arguments they check.
#![cfg_attr(not(feature = "flex"), allow(dead_code, unused_variables))]

use burn::tensor::DType;

/// Elements per parallel task: large enough to amortise rayon's dispatch.
const CHUNK: usize = 16 * 1024;

/// Whether every tensor is f32, the one precision the kernels compute in.
fn all_f32(dtypes: &[DType]) -> bool {
    dtypes.iter().all(|d| *d == DType::F32)
}

/// Whether a weight of this dtype is stored in half precision, which the linear product reads
/// panel by panel into f32 ([`matmul_half`]).
fn is_half(dtype: DType) -> bool {
    matches!(dtype, DType::BF16 | DType::F16)
}

/// An entry point's flex path: `$flex` (an `Option`) with the flex backend compiled in, `None`
/// without it — so each entry point is written once for both builds.
#[cfg(feature = "flex")]
macro_rules! on_flex {
    ($flex:expr) => {
        $flex
    };
}

/// An entry point's flex path: `$flex` (an `Option`) with the flex backend compiled in, `None`
/// without it — so each entry point is written once for both builds.
#[cfg(not(feature = "flex"))]
macro_rules! on_flex {
    ($flex:expr) => {
        None
    };
}

/// The dtype a model whose weights are `weights` computes its activations in on backend `B`:
/// f32 on the CPU backend when the weights are bf16 or f16 (the kernels read them in f32
/// panels, [`matmul_half`]), the weights' own dtype everywhere else (GPUs compute in it).
pub fn activation_dtype<B: burn::tensor::backend::Backend>(weights: DType) -> DType {
    let on_cpu_kernels: Option<bool> = on_flex!(Some(flex::runs_on_flex::<B>()));
    if is_half(weights) && on_cpu_kernels == Some(true) {
        DType::F32
    } else {
        weights
    }
}

#[cfg(feature = "flex")]
mod flex;
mod gemm;
pub(crate) mod simd;

pub(crate) mod argmax;
pub(crate) mod attention;
pub(crate) mod log_probs;
pub(crate) mod matmul;
pub(crate) mod matmul_half;
pub(crate) mod matmul_nf4;
pub(crate) mod rms_norm;
pub(crate) mod rope;
pub(crate) mod splice;
pub(crate) mod swiglu;

#[cfg(test)]
mod testing;
