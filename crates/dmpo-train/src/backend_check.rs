//! One backend against another on the golden tiny model (`fixtures/llada-tiny`): the logits of
//! its golden input, greedy generations with each sampler (exact, prefix cache, dual cache), and
//! one WDCE loss on fixed masks and weights with its gradient on the LM head. The
//! `backend_parity` test and `cargo xtask gpu-check parity` both run it; docs/gpu.md states the
//! tolerances.
//!
//! **f32** results must agree within 1e-4 (logits, gradient: absolute; loss: relative) and the
//! generations token for token.
//!
//! **bf16** results cannot agree that closely: two correct bf16 implementations round at
//! different points (a matmul's accumulation order, where an activation is stored in bf16), and
//! each lands within bf16's rounding error `e` of the f32 result. Measuring `e` as the distance
//! of flex's bf16 result from flex's f32 result on the same quantity, and allowing the backend's
//! bf16 error up to twice flex's, the triangle inequality bounds the two bf16 results' distance
//! by `3e`: the tolerance. A greedy generation in bf16 may flip a near-tie, so it must agree
//! with flex's bf16 tokens in at least as many places as flex's bf16 tokens agree with its f32
//! ones.

use std::path::Path;

use burn::backend::Autodiff;
use burn::module::AutodiffModule;
use burn::tensor::{backend::Backend, ElementConversion, Int, Tensor, TensorData};
use dllm_model::backend::{dispatch, BackendKind, BackendTask};
use dllm_model::tensor_file::{read_floats, read_ints};
use dllm_model::{load_model, DiffusionLm, LoadOptions, WeightDType};
use dllm_sample::{generate, CacheKind, SamplerConfig};
use dmpo_core::{
    wdce_loss_with_masks, DmpoConfig, ModelView, ReplicateMasks, RolloutWeights, SequenceBatch,
};
use serde::{Deserialize, Serialize};

use crate::error::{Result, TrainError};

/// Rows and sequence length of the golden input.
const GOLDEN_SHAPE: [usize; 2] = [2, 24];
/// Prompt length of the golden generations and of the fixed loss.
const PROMPT_LEN: usize = 8;
/// Completion length of the golden generations and of the fixed loss.
const GEN_LEN: usize = 16;

/// What one backend computes on the golden tiny model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CheckOutputs {
    /// Logits of the golden `input_ids`, `[2, 24, vocab]` flattened.
    pub logits: Vec<f32>,
    /// Greedy completions of `gen_prompts` (16 tokens, blocks of 8, 16 steps), exact sampler.
    pub exact_generation: Vec<Vec<u32>>,
    /// The same with Fast-dLLM's prefix cache.
    pub prefix_generation: Vec<Vec<u32>>,
    /// The same with Fast-dLLM's dual cache.
    pub dual_generation: Vec<Vec<u32>>,
    /// The WDCE loss of [`fixed_wdce_loss`].
    pub wdce_loss: f64,
    /// Its gradient on the LM head's weight, flattened.
    pub grad_head: Vec<f32>,
}

/// One compared quantity.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Comparison {
    /// What was compared.
    pub name: String,
    /// The distance found: largest absolute difference, relative difference for the loss, or
    /// the number of differing tokens for a generation.
    pub difference: f64,
    /// The largest distance allowed.
    pub tolerance: f64,
    /// `difference <= tolerance`.
    pub passed: bool,
}

impl Comparison {
    fn new(name: impl Into<String>, difference: f64, tolerance: f64) -> Self {
        Self {
            name: name.into(),
            difference,
            tolerance,
            passed: difference <= tolerance,
        }
    }
}

/// The tiny model's outputs on the backend it runs on.
struct Outputs<'a> {
    fixture: &'a Path,
    dtype: WeightDType,
}

impl BackendTask for Outputs<'_> {
    type Output = Result<CheckOutputs>;
    fn run<B: Backend>(self, device: B::Device) -> Result<CheckOutputs> {
        outputs_on::<B>(self.fixture, self.dtype, &device)
    }
}

/// What backend `kind` computes on the tiny model in `fixture` with weights in `dtype`.
pub fn check_outputs(
    kind: BackendKind,
    fixture: &Path,
    dtype: WeightDType,
) -> Result<CheckOutputs> {
    dispatch(kind, Outputs { fixture, dtype })?
}

fn outputs_on<B: Backend>(
    fixture: &Path,
    dtype: WeightDType,
    device: &B::Device,
) -> Result<CheckOutputs> {
    let golden = fixture.join("golden.safetensors");
    let options = LoadOptions {
        dtype,
        quantize: None,
    };
    let model = load_model::<Autodiff<B>>(fixture, options, device)?;
    let inner = model.valid();

    let ids = read_ints(&golden, "input_ids")?;
    let input = Tensor::<B, 2, Int>::from_data(TensorData::new(ids.values, GOLDEN_SHAPE), device);
    let logits = floats(inner.forward(input).into_data())?;

    let prompts = golden_prompts(&golden)?;
    let greedy = |cache| SamplerConfig {
        gen_length: GEN_LEN,
        block_length: 8,
        steps: GEN_LEN,
        cache,
        ..Default::default()
    };
    let mut generations = Vec::new();
    for cache in [CacheKind::None, CacheKind::Prefix, CacheKind::Dual] {
        generations.push(generate(&inner, &prompts, &greedy(cache))?.completions);
    }
    let [exact_generation, prefix_generation, dual_generation]: [Vec<Vec<u32>>; 3] =
        generations.try_into().expect("three samplers");

    let loss = fixed_wdce_loss(&model, fixture, device)?;
    let wdce_loss: f64 = loss.clone().into_scalar().elem();
    let grads = loss.backward();
    let head = model
        .head
        .as_ref()
        .ok_or_else(|| TrainError::Data("the golden tiny model has an untied head".into()))?
        .weight
        .val();
    let grad = head
        .grad(&grads)
        .ok_or_else(|| TrainError::Data("the LM head received no gradient".into()))?;
    Ok(CheckOutputs {
        logits,
        exact_generation,
        prefix_generation,
        dual_generation,
        wdce_loss,
        grad_head: floats(grad.into_data())?,
    })
}

/// The golden `gen_prompts` rows.
fn golden_prompts(golden: &Path) -> Result<Vec<Vec<u32>>> {
    let p = read_ints(golden, "gen_prompts")?;
    Ok(p.values
        .chunks(PROMPT_LEN)
        .map(|r| r.iter().map(|&t| t as u32).collect())
        .collect())
}

/// A tensor's values as f32 on the host.
fn floats(data: TensorData) -> Result<Vec<f32>> {
    data.convert::<f32>()
        .to_vec::<f32>()
        .map_err(|e| TrainError::Data(format!("reading a tensor back: {e:?}")))
}

/// The WDCE loss of `model` on the golden targets of `fixture` with fixed masks (`(i * 7) % 3
/// == 0` over the replicate-major mask entries) and fixed weights (a group of 2, two replicates).
pub fn fixed_wdce_loss<B: Backend>(
    model: &DiffusionLm<Autodiff<B>>,
    fixture: &Path,
    device: &B::Device,
) -> Result<Tensor<Autodiff<B>, 1>> {
    let seq = read_ints(fixture.join("golden.safetensors"), "targets")?;
    let x =
        Tensor::<Autodiff<B>, 2, Int>::from_data(TensorData::new(seq.values, GOLDEN_SHAPE), device);
    let batch = SequenceBatch::with_eos_index(x, PROMPT_LEN, vec![GEN_LEN; 2])?;
    let masked: Vec<bool> = (0..2 * 2 * GEN_LEN).map(|i| (i * 7) % 3 == 0).collect();
    let masks = ReplicateMasks::from_rows(2, 2, GEN_LEN, masked)?;
    let weights = RolloutWeights {
        group_size: 2,
        w_plus: vec![0.7, 0.3],
        w_minus: vec![0.2, 0.8],
        ell_cur: vec![-10.0, -12.0],
        coeffs: vec![1.0],
    };
    let config = DmpoConfig {
        num_replicates: 2,
        ..Default::default()
    };
    Ok(wdce_loss_with_masks(&ModelView::policy(model), &batch, &weights, &config, &masks)?.loss)
}

/// The golden PyTorch logits of `fixture` (f32).
pub fn golden_logits(fixture: &Path) -> Result<Vec<f32>> {
    let want = read_floats(fixture.join("golden.safetensors"), "logits")?;
    Ok(want.values.iter().map(|&v| v as f32).collect())
}

/// Largest absolute difference of two equally long slices (infinite where a value is not finite
/// or the lengths differ).
pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f64 {
    if a.len() != b.len() {
        return f64::INFINITY;
    }
    a.iter().zip(b).fold(0.0, |m: f64, (x, y)| {
        let d = (f64::from(*x) - f64::from(*y)).abs();
        if d.is_nan() {
            f64::INFINITY
        } else {
            m.max(d)
        }
    })
}

/// Relative difference of two losses (relative to `max(|want|, 1)`).
fn loss_diff(got: f64, want: f64) -> f64 {
    let d = (got - want).abs() / want.abs().max(1.0);
    if d.is_nan() {
        f64::INFINITY
    } else {
        d
    }
}

/// Number of positions where two generations differ (every position of a missing row counts).
pub fn differing_tokens(a: &[Vec<u32>], b: &[Vec<u32>]) -> usize {
    let rows = a.len().max(b.len());
    (0..rows)
        .map(|r| match (a.get(r), b.get(r)) {
            (Some(x), Some(y)) => {
                x.iter().zip(y).filter(|(p, q)| p != q).count() + x.len().abs_diff(y.len())
            }
            (Some(x), None) | (None, Some(x)) => x.len(),
            (None, None) => 0,
        })
        .sum()
}

/// The three generations of `o` by sampler name.
fn generations(o: &CheckOutputs) -> [(&'static str, &[Vec<u32>]); 3] {
    [
        ("exact", &o.exact_generation),
        ("prefix cache", &o.prefix_generation),
        ("dual cache", &o.dual_generation),
    ]
}

/// How far each quantity may be from the reference.
struct Tolerances {
    logits: f64,
    /// Differing tokens allowed per sampler, in the order of [`generations`].
    tokens: [f64; 3],
    loss: f64,
    grad: f64,
}

/// `got` against `want`, quantity by quantity, within `tol`.
fn compare(got: &CheckOutputs, want: &CheckOutputs, tol: Tolerances) -> Vec<Comparison> {
    let mut out = vec![Comparison::new(
        "logits (max |diff|)",
        max_abs_diff(&got.logits, &want.logits),
        tol.logits,
    )];
    for (((name, g), (_, w)), allowed) in generations(got)
        .into_iter()
        .zip(generations(want))
        .zip(tol.tokens)
    {
        out.push(Comparison::new(
            format!("greedy generation, {name} (differing tokens)"),
            differing_tokens(g, w) as f64,
            allowed,
        ));
    }
    out.push(Comparison::new(
        "WDCE loss (relative)",
        loss_diff(got.wdce_loss, want.wdce_loss),
        tol.loss,
    ));
    out.push(Comparison::new(
        "WDCE gradient of the LM head (max |diff|)",
        max_abs_diff(&got.grad_head, &want.grad_head),
        tol.grad,
    ));
    out
}

/// f32: `got` against `want` (flex) within 1e-4, generations token for token.
pub fn compare_f32(got: &CheckOutputs, want: &CheckOutputs) -> Vec<Comparison> {
    const TOL: f64 = 1e-4;
    let tol = Tolerances {
        logits: TOL,
        tokens: [0.0; 3],
        loss: TOL,
        grad: TOL,
    };
    compare(got, want, tol)
}

/// bf16: `got` against `want` (flex, bf16) within three times bf16's own error, measured as
/// `want` against `want_f32` (flex, f32); see the module documentation.
pub fn compare_bf16(
    got: &CheckOutputs,
    want: &CheckOutputs,
    want_f32: &CheckOutputs,
) -> Vec<Comparison> {
    // Floor: flex's bf16 and f32 could agree exactly on a quantity by chance.
    const FLOOR: f64 = 1e-6;
    let bound = |rounding: f64| 3.0 * rounding.max(FLOOR);
    let (w, w32) = (generations(want), generations(want_f32));
    let tol = Tolerances {
        logits: bound(max_abs_diff(&want.logits, &want_f32.logits)),
        tokens: std::array::from_fn(|i| differing_tokens(w[i].1, w32[i].1) as f64),
        loss: bound(loss_diff(want.wdce_loss, want_f32.wdce_loss)),
        grad: bound(max_abs_diff(&want.grad_head, &want_f32.grad_head)),
    };
    compare(got, want, tol)
}

/// Flex's f32 logits of the tiny model in `fixture` against PyTorch's golden ones, within 1e-4.
pub fn compare_with_golden(flex: &CheckOutputs, fixture: &Path) -> Result<Comparison> {
    Ok(Comparison::new(
        "flex against the PyTorch golden logits (max |diff|)",
        max_abs_diff(&flex.logits, &golden_logits(fixture)?),
        1e-4,
    ))
}
