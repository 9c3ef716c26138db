//! Checkpoints written atomically (temporary directory, then rename): the model as burn
//! records (exact resume, parameter ids included), the user-facing export (PEFT adapter or
//! Hugging Face model), optimiser state, and the step counters. Random state needs no file:
//! every random stream of step `k` is derived from `(seed, k)`.

use std::path::{Path, PathBuf};

use burn::module::{AutodiffModule, Module};
use burn::optim::Optimizer;
use burn::record::{BinFileRecorder, FullPrecisionSettings, Recorder};
use burn::tensor::backend::{AutodiffBackend, Backend};
use dllm_model::Llada;
use serde::{Deserialize, Serialize};

use crate::error::{Result, TrainError};
use crate::recipe::Finetune;

/// Counters restored on resume.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct TrainState {
    /// Rollout steps completed.
    pub step: usize,
    /// Optimiser updates applied.
    pub updates: usize,
    /// Updates skipped for non-finite values.
    pub skipped: usize,
}

fn ckpt_err(path: &Path, message: impl std::fmt::Display) -> TrainError {
    TrainError::Checkpoint {
        path: path.to_path_buf(),
        message: message.to_string(),
    }
}

fn recorder() -> BinFileRecorder<FullPrecisionSettings> {
    BinFileRecorder::<FullPrecisionSettings>::new()
}

/// Saves checkpoint `state.step` under `dir/checkpoints/step-N` and points `latest` at it.
/// `reference` is saved too when given (a reference that moves during training).
#[allow(clippy::too_many_arguments)]
pub fn save<B, O>(
    dir: &Path,
    model: &Llada<B>,
    reference: Option<&Llada<B::InnerBackend>>,
    optimizer: &O,
    state: TrainState,
    finetune: Finetune,
    base_model: &str,
    keep: usize,
) -> Result<PathBuf>
where
    B: AutodiffBackend,
    O: Optimizer<Llada<B>, B>,
{
    let root = dir.join("checkpoints");
    let name = format!("step-{:06}", state.step);
    let tmp = root.join(format!(".tmp-{name}"));
    let fin = root.join(&name);
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(|e| TrainError::io(&tmp, e))?;
    }
    std::fs::create_dir_all(&tmp).map_err(|e| TrainError::io(&tmp, e))?;
    model
        .clone()
        .save_file(tmp.join("model"), &recorder())
        .map_err(|e| ckpt_err(&tmp, e))?;
    recorder()
        .record(optimizer.to_record(), tmp.join("optimizer"))
        .map_err(|e| ckpt_err(&tmp, e))?;
    if let Some(reference) = reference {
        reference
            .clone()
            .save_file(tmp.join(REFERENCE_FILE), &recorder())
            .map_err(|e| ckpt_err(&tmp, e))?;
    }
    match finetune {
        Finetune::Lora => model.save_adapter(tmp.join("adapter"), base_model)?,
        Finetune::Full => {
            dllm_model::save_model(&model.valid(), tmp.join("hf"))?;
            copy_tokenizer_files(Path::new(base_model), &tmp.join("hf"))?;
        }
    }
    let json = serde_json::to_string_pretty(&state).expect("serialisable");
    std::fs::write(tmp.join("state.json"), json).map_err(|e| TrainError::io(&tmp, e))?;
    if fin.exists() {
        std::fs::remove_dir_all(&fin).map_err(|e| TrainError::io(&fin, e))?;
    }
    std::fs::rename(&tmp, &fin).map_err(|e| TrainError::io(&fin, e))?;
    dllm_model::load::write_atomic(&root.join("latest"), name.as_bytes())?;
    prune(&root, keep)?;
    Ok(fin)
}

/// The moving reference's record inside a checkpoint directory (extension added by burn).
const REFERENCE_FILE: &str = "reference";

/// Restores a reference saved with the checkpoint at `path` into `reference`; `None` when the
/// checkpoint has none (a reference that never moved).
pub fn load_reference<B: Backend>(
    path: &Path,
    reference: &Llada<B>,
    device: &B::Device,
) -> Result<Option<Llada<B>>> {
    let file = path.join(REFERENCE_FILE);
    if !file.with_extension("bin").is_file() {
        return Ok(None);
    }
    let loaded = reference
        .clone()
        .load_file(file, &recorder(), device)
        .map_err(|e| ckpt_err(path, e))?;
    Ok(Some(loaded))
}

/// Tokenizer files a Hugging Face model directory carries beside its weights.
const TOKENIZER_FILES: [&str; 4] = [
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "generation_config.json",
];

/// Copies the base model's tokenizer files (those present) next to an exported model, so that
/// the export loads on its own (`dmpo generate`, `cargo xtask eval`).
fn copy_tokenizer_files(base: &Path, to: &Path) -> Result<()> {
    for name in TOKENIZER_FILES {
        let from = base.join(name);
        if from.is_file() {
            std::fs::copy(&from, to.join(name)).map_err(|e| TrainError::io(&from, e))?;
        }
    }
    Ok(())
}

fn prune(root: &Path, keep: usize) -> Result<()> {
    let mut names: Vec<String> = std::fs::read_dir(root)
        .map_err(|e| TrainError::io(root, e))?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("step-"))
        .collect();
    names.sort();
    while names.len() > keep.max(1) {
        let n = names.remove(0);
        let _ = std::fs::remove_dir_all(root.join(n));
    }
    Ok(())
}

/// The latest complete checkpoint of a run, if any.
pub fn latest(dir: &Path) -> Result<Option<PathBuf>> {
    let pointer = dir.join("checkpoints").join("latest");
    if !pointer.is_file() {
        return Ok(None);
    }
    let name = std::fs::read_to_string(&pointer).map_err(|e| TrainError::io(&pointer, e))?;
    let path = dir.join("checkpoints").join(name.trim());
    if !path.join("state.json").is_file() {
        return Err(ckpt_err(
            &path,
            "`latest` points at an incomplete checkpoint",
        ));
    }
    Ok(Some(path))
}

/// Restores model, optimiser and counters from a checkpoint directory.
pub fn load<B, O>(
    path: &Path,
    model: Llada<B>,
    optimizer: O,
    device: &B::Device,
) -> Result<(Llada<B>, O, TrainState)>
where
    B: AutodiffBackend,
    O: Optimizer<Llada<B>, B>,
{
    let model = model
        .load_file(path.join("model"), &recorder(), device)
        .map_err(|e| ckpt_err(path, e))?;
    let record = recorder()
        .load(path.join("optimizer"), device)
        .map_err(|e| ckpt_err(path, e))?;
    let optimizer = optimizer.load_record(record);
    let state_path = path.join("state.json");
    let text = std::fs::read_to_string(&state_path).map_err(|e| TrainError::io(&state_path, e))?;
    let state = serde_json::from_str(&text).map_err(|e| ckpt_err(path, e))?;
    Ok((model, optimizer, state))
}
