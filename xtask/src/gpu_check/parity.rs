//! Step 1 of the GPU check: the backend against flex on the golden tiny model, in f32 or bf16
//! (`dmpo_train::backend_check`; tolerances in its documentation and docs/gpu.md). In f32 it
//! also checks flex against the PyTorch golden logits and writes flex's cached-sampler tokens
//! and WDCE loss for `scripts/reference_gpu.py` to check its transcriptions against.

use std::path::Path;
use std::time::Instant;

use dllm_model::backend::BackendKind;
use dllm_model::WeightDType;
use dmpo_train::backend_check::{
    check_outputs, compare_bf16, compare_f32, compare_with_golden, CheckOutputs, Comparison,
};
use serde::{Deserialize, Serialize};

/// What the parity step writes.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ParityReport {
    /// The backend checked.
    pub backend: String,
    /// `f32` or `bf16`.
    pub dtype: String,
    /// Each compared quantity.
    pub comparisons: Vec<Comparison>,
    /// Every comparison passed.
    pub passed: bool,
    /// Seconds the step took (both backends, model loads and kernel compilation included).
    pub seconds: f64,
}

/// Flex's outputs that `scripts/reference_gpu.py` checks its samplers and loss against.
#[derive(Debug, Serialize)]
struct OursTiny {
    prefix_generation: Vec<Vec<u32>>,
    dual_generation: Vec<Vec<u32>>,
    wdce_loss: f64,
    wdce_grad_head_abs_sum: f64,
}

/// Runs the comparison of `kind` with flex on the tiny model in `fixture`; in f32 writes
/// flex's outputs to `ours_tiny` when given.
pub fn run(
    kind: BackendKind,
    dtype: WeightDType,
    fixture: &Path,
    ours_tiny: Option<&Path>,
) -> anyhow::Result<ParityReport> {
    let start = Instant::now();
    let flex = check_outputs(BackendKind::Flex, fixture, WeightDType::F32)?;
    let (name, comparisons) = match dtype {
        WeightDType::F32 => {
            if let Some(path) = ours_tiny {
                write_ours_tiny(&flex, path)?;
            }
            let mut comparisons = vec![compare_with_golden(&flex, fixture)?];
            let got = check_outputs(kind, fixture, WeightDType::F32)?;
            comparisons.extend(compare_f32(&got, &flex));
            ("f32", comparisons)
        }
        WeightDType::BF16 => {
            let flex_bf16 = check_outputs(BackendKind::Flex, fixture, WeightDType::BF16)?;
            let got = check_outputs(kind, fixture, WeightDType::BF16)?;
            ("bf16", compare_bf16(&got, &flex_bf16, &flex))
        }
        WeightDType::F16 => anyhow::bail!("the GPU check compares f32 and bf16"),
    };
    Ok(ParityReport {
        backend: kind.to_string(),
        dtype: name.to_string(),
        passed: comparisons.iter().all(|c| c.passed),
        comparisons,
        seconds: start.elapsed().as_secs_f64(),
    })
}

fn write_ours_tiny(flex: &CheckOutputs, path: &Path) -> anyhow::Result<()> {
    let ours = OursTiny {
        prefix_generation: flex.prefix_generation.clone(),
        dual_generation: flex.dual_generation.clone(),
        wdce_loss: flex.wdce_loss,
        wdce_grad_head_abs_sum: flex.grad_head.iter().map(|g| f64::from(g.abs())).sum(),
    };
    crate::gpu_check::write_json(path, &ours)
}
