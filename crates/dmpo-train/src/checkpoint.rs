//! Checkpoints written atomically (a temporary directory, its files and itself flushed to disk,
//! then one rename; an old one is renamed away before it is deleted): the model as burn
//! records (exact resume, parameter ids included), the user-facing export (PEFT adapter or
//! Hugging Face model), optimiser state, and the step counters. Random state needs no file:
//! every random stream of step `k` is derived from `(seed, k)`.

use std::path::{Path, PathBuf};

use burn::module::{AutodiffModule, Module, ModuleMapper, ModuleVisitor, Param};
use burn::optim::Optimizer;
use burn::record::{BinFileRecorder, FullPrecisionSettings, Recorder, RecorderError};
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{DType, Tensor};
use dllm_model::DiffusionLm;
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

/// A burn recorder error as a sentence: its `Display` is its `Debug` form, which wraps an I/O
/// error's `Os { code: 28, kind: StorageFull, message: "No space left on device" }`; the
/// message inside is what a person needs.
fn record_err(path: &Path, e: RecorderError) -> TrainError {
    let (what, inner) = match e {
        RecorderError::FileNotFound(m) => ("file not found", m),
        RecorderError::DeserializeError(m) => ("unreadable record", m),
        RecorderError::Unknown(m) => ("cannot write or read the record", m),
    };
    // burn's messages wrap Debug dumps of its decoder's errors; only an I/O message inside
    // (disk full) says something a person can act on.
    let detail = inner
        .split_once("message: \"")
        .and_then(|(_, rest)| rest.split_once('"'))
        .map(|(m, _)| m.to_string());
    let detail = match (detail, what) {
        (Some(m), _) => m,
        (None, "file not found") => "not found".into(),
        (None, _) => "truncated or corrupt (it does not decode as a record of this version)".into(),
    };
    ckpt_err(path, format!("{what}: {detail}"))
}

fn recorder() -> BinFileRecorder<FullPrecisionSettings> {
    BinFileRecorder::<FullPrecisionSettings>::new()
}

/// What a checkpoint holds.
pub struct Snapshot<'a, B: AutodiffBackend, O> {
    /// The policy (burn record, and the user-facing export).
    pub model: &'a DiffusionLm<B>,
    /// The reference, when it moves during training.
    pub reference: Option<&'a DiffusionLm<B::InnerBackend>>,
    /// The optimiser.
    pub optimizer: &'a O,
    /// The step counters.
    pub state: TrainState,
    /// What the export is: a PEFT adapter (LoRA) or a Hugging Face model (full).
    pub finetune: Finetune,
    /// The base model's directory (named in the adapter config; its tokenizer is copied).
    pub base_model: &'a str,
    /// What the model was trained on, checked on resume.
    pub trained_on: &'a TrainedOn,
}

/// What a checkpoint was trained on, written beside its records (`trained_on.json`) and
/// compared on resume before anything is loaded: a model re-created at `model.path` with
/// other shapes, changed base weights, another fine-tuning mode or adapter, or record files
/// truncated or swapped are refused by name instead of loading silently or panicking.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainedOn {
    /// The model's configuration as loaded.
    pub config: serde_json::Value,
    /// The shape of every float parameter of the trained model, in record order.
    pub parameter_shapes: Vec<Vec<usize>>,
    /// LoRA or full fine-tuning.
    pub finetune: Finetune,
    /// The adapter trained (LoRA), as PEFT would describe it.
    pub adapter: Option<dllm_model::LoraConfig>,
    /// [`dllm_model::WeightFiles::sampled_digest`] of the weights at `model.path`, hex.
    pub base_digest: String,
    /// Bytes of each record file of the checkpoint (`model.bin`, `optimizer.bin`, …).
    #[serde(default)]
    pub record_bytes: std::collections::BTreeMap<String, u64>,
}

/// Shapes of a module's float parameters, in traversal order.
#[derive(Default)]
struct ParamShapes(Vec<Vec<usize>>);

impl<B: Backend> ModuleVisitor<B> for ParamShapes {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        self.0.push(param.val().dims().to_vec());
    }
}

impl TrainedOn {
    /// What `model`, fine-tuned as `finetune` from the weights in `base`, is trained on.
    pub fn of<B: Backend>(model: &DiffusionLm<B>, finetune: Finetune, base: &Path) -> Result<Self> {
        let mut shapes = ParamShapes::default();
        model.visit(&mut shapes);
        let digest = dllm_model::WeightFiles::open_dir(base)?.sampled_digest()?;
        Ok(Self {
            config: serde_json::to_value(&model.config).expect("a config serialises"),
            parameter_shapes: shapes.0,
            finetune,
            adapter: model.lora_config(),
            base_digest: format!("{digest:016x}"),
            record_bytes: Default::default(),
        })
    }

    /// Why a checkpoint trained on `saved` cannot be resumed into this, if it cannot.
    fn mismatch(&self, saved: &Self) -> Option<String> {
        if self.finetune != saved.finetune {
            return Some(format!(
                "it was trained with `model.finetune` {:?}, this run is {:?}",
                saved.finetune, self.finetune
            ));
        }
        if self.config != saved.config {
            let keys: Vec<String> = match (self.config.as_object(), saved.config.as_object()) {
                (Some(now), Some(then)) => now
                    .keys()
                    .chain(then.keys())
                    .filter(|k| now.get(*k) != then.get(*k))
                    .cloned()
                    .collect::<std::collections::BTreeSet<_>>()
                    .into_iter()
                    .collect(),
                _ => vec![],
            };
            return Some(format!(
                "the model at `model.path` is not the one it was trained on (config.json \
                 differs in {})",
                keys.join(", ")
            ));
        }
        if self.parameter_shapes != saved.parameter_shapes {
            return Some("its parameters have other shapes than this run's model".into());
        }
        if self.adapter != saved.adapter {
            return Some(format!(
                "it trained the adapter {:?}, this run builds {:?}",
                saved.adapter, self.adapter
            ));
        }
        if self.base_digest != saved.base_digest {
            return Some(
                "the weights at `model.path` changed since it was written (another or edited \
                 base model)"
                    .into(),
            );
        }
        None
    }
}

/// Saves `snapshot` as checkpoint `step-N` (`N` = `snapshot.state.step`) under
/// `dir/checkpoints`, points `latest` at it and keeps the newest `keep`.
pub fn save<B, O>(dir: &Path, snapshot: &Snapshot<'_, B, O>, keep: usize) -> Result<PathBuf>
where
    B: AutodiffBackend,
    O: Optimizer<DiffusionLm<B>, B>,
{
    let root = dir.join("checkpoints");
    let name = step_dir_name(snapshot.state.step);
    let tmp = root.join(format!(".tmp-{name}"));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(|e| TrainError::io(&tmp, e))?;
    }
    std::fs::create_dir_all(&tmp).map_err(|e| TrainError::io(&tmp, e))?;
    let written = write_contents(&tmp, snapshot).and_then(|()| sync_tree(&tmp));
    if let Err(e) = written {
        // A failed write (disk full, say) leaves no temporary directory behind.
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(e);
    }
    let fin = root.join(&name);
    if fin.exists() {
        // Replaced by two renames: a kill in between leaves the old copy under a `.trash-`
        // name (removed at the next start), never a half-deleted one under its final name.
        discard(&root, &name)?;
    }
    std::fs::rename(&tmp, &fin).map_err(|e| TrainError::io(&fin, e))?;
    sync_dir(&root)?;
    dllm_model::load::write_atomic(&root.join("latest"), name.as_bytes())?;
    sync_dir(&root)?;
    prune(&root, keep)?;
    Ok(fin)
}

/// The directory name of the checkpoint after `step` rollout steps.
fn step_dir_name(step: usize) -> String {
    format!("step-{step:06}")
}

/// Writes every file of a checkpoint into `tmp`; `state.json` last, so that a directory
/// holding it holds everything.
fn write_contents<B, O>(tmp: &Path, snapshot: &Snapshot<'_, B, O>) -> Result<()>
where
    B: AutodiffBackend,
    O: Optimizer<DiffusionLm<B>, B>,
{
    let Snapshot {
        model,
        reference,
        optimizer,
        state,
        finetune,
        base_model,
        trained_on: _,
    } = *snapshot;
    model
        .clone()
        .save_file(tmp.join("model"), &recorder())
        .map_err(|e| record_err(tmp, e))?;
    recorder()
        .record(optimizer.to_record(), tmp.join("optimizer"))
        .map_err(|e| record_err(tmp, e))?;
    if let Some(reference) = reference {
        reference
            .clone()
            .save_file(tmp.join(REFERENCE_FILE), &recorder())
            .map_err(|e| record_err(tmp, e))?;
    }
    match finetune {
        Finetune::Lora => model.save_adapter(tmp.join("adapter"), base_model)?,
        Finetune::Full => {
            dllm_model::save_model(&model.valid(), tmp.join("hf"))?;
            copy_tokenizer_files(Path::new(base_model), &tmp.join("hf"))?;
        }
    }
    let mut trained_on = snapshot.trained_on.clone();
    for name in RECORD_FILES {
        if let Ok(meta) = std::fs::metadata(tmp.join(name)) {
            trained_on.record_bytes.insert(name.to_string(), meta.len());
        }
    }
    let text = serde_json::to_string_pretty(&trained_on).expect("serialisable");
    let trained_on_path = tmp.join(TRAINED_ON_FILE);
    std::fs::write(&trained_on_path, text).map_err(|e| TrainError::io(&trained_on_path, e))?;
    let json = serde_json::to_string_pretty(&state).expect("serialisable");
    let state_path = tmp.join("state.json");
    std::fs::write(&state_path, json).map_err(|e| TrainError::io(&state_path, e))
}

/// Flushes every file under `dir` and the directories themselves to disk (before the rename
/// that publishes them).
fn sync_tree(dir: &Path) -> Result<()> {
    let entries = std::fs::read_dir(dir).map_err(|e| TrainError::io(dir, e))?;
    for entry in entries {
        let path = entry.map_err(|e| TrainError::io(dir, e))?.path();
        if path.is_dir() {
            sync_tree(&path)?;
        } else {
            let f = std::fs::File::open(&path).map_err(|e| TrainError::io(&path, e))?;
            f.sync_all().map_err(|e| TrainError::io(&path, e))?;
        }
    }
    sync_dir(dir)
}

/// Flushes a directory's entries (renames, new files) to disk.
fn sync_dir(dir: &Path) -> Result<()> {
    let f = std::fs::File::open(dir).map_err(|e| TrainError::io(dir, e))?;
    f.sync_all().map_err(|e| TrainError::io(dir, e))
}

/// Removes checkpoint `name` of `root`: renamed to `.trash-{name}` first (atomic), then deleted.
fn discard(root: &Path, name: &str) -> Result<()> {
    let (from, trash) = (root.join(name), root.join(format!(".trash-{name}")));
    if trash.exists() {
        std::fs::remove_dir_all(&trash).map_err(|e| TrainError::io(&trash, e))?;
    }
    std::fs::rename(&from, &trash).map_err(|e| TrainError::io(&from, e))?;
    sync_dir(root)?;
    std::fs::remove_dir_all(&trash).map_err(|e| TrainError::io(&trash, e))
}

/// The moving reference's record inside a checkpoint directory (extension added by burn).
const REFERENCE_FILE: &str = "reference";

/// The record files of a checkpoint, as burn names them.
const RECORD_FILES: [&str; 3] = ["model.bin", "optimizer.bin", "reference.bin"];

/// What a checkpoint was trained on ([`TrainedOn`]).
const TRAINED_ON_FILE: &str = "trained_on.json";

/// Restores a reference saved with the checkpoint at `path` into `reference`; `None` when the
/// checkpoint has none (a reference that never moved).
pub fn load_reference<B: Backend>(
    path: &Path,
    reference: &DiffusionLm<B>,
    device: &B::Device,
) -> Result<Option<DiffusionLm<B>>> {
    let file = path.join(REFERENCE_FILE);
    if !file.with_extension("bin").is_file() {
        return Ok(None);
    }
    let loaded = load_keeping_dtypes(reference.clone(), file, path, device)?;
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

/// The checkpoint directories of `root` (`step-N`), oldest first.
fn step_dirs(root: &Path) -> Result<Vec<(usize, String)>> {
    let Ok(entries) = std::fs::read_dir(root) else {
        return Ok(Vec::new());
    };
    let mut found: Vec<(usize, String)> = entries
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter_map(|n| Some((n.strip_prefix("step-")?.parse().ok()?, n)))
        .collect();
    found.sort();
    Ok(found)
}

/// Keeps the newest `keep` (at least one) checkpoints, discarding older ones atomically.
fn prune(root: &Path, keep: usize) -> Result<()> {
    let dirs = step_dirs(root)?;
    let excess = dirs.len().saturating_sub(keep.max(1));
    for (_, name) in &dirs[..excess] {
        discard(root, name)?;
    }
    Ok(())
}

/// The latest complete checkpoint of a run, if any: the highest `step-N` that holds its
/// `state.json`. A checkpoint is published by one rename of a complete directory, so every
/// `step-N` is complete; the `latest` pointer is a convenience for people and is not needed (a
/// kill between the rename and the pointer's update loses nothing).
pub fn latest(dir: &Path) -> Result<Option<PathBuf>> {
    let root = dir.join("checkpoints");
    let Some((_, name)) = step_dirs(&root)?.pop() else {
        return Ok(None);
    };
    let path = root.join(name);
    if !path.join("state.json").is_file() {
        return Err(ckpt_err(
            &path,
            "incomplete checkpoint (no state.json): it was not written by this version; remove it to resume from the one before",
        ));
    }
    Ok(Some(path))
}

/// The step of the newest checkpoint directory of a run, if any (complete or not:
/// [`latest`] says).
pub fn latest_step(dir: &Path) -> Result<Option<usize>> {
    Ok(step_dirs(&dir.join("checkpoints"))?
        .pop()
        .map(|(step, _)| step))
}

/// The complete checkpoint after `step` rollout steps, if the run keeps it.
pub fn at_step(dir: &Path, step: usize) -> Option<PathBuf> {
    let path = dir.join("checkpoints").join(step_dir_name(step));
    path.join("state.json").is_file().then_some(path)
}

/// The element type of every float parameter of a module, in traversal order (ids are no key:
/// loading a record replaces them with the record's).
#[derive(Default)]
struct ParamDTypes {
    dtypes: Vec<DType>,
    next: usize,
}

impl<B: Backend> ModuleVisitor<B> for ParamDTypes {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        self.dtypes.push(param.val().dtype());
    }
}

impl<B: Backend> ModuleMapper<B> for ParamDTypes {
    /// Casts a loaded parameter back to the element type the same parameter had before loading.
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
        let (id, tensor, mapper) = param.consume();
        let want = self.dtypes.get(self.next).copied();
        self.next += 1;
        let tensor = match want {
            Some(dtype) if dtype != tensor.dtype() => {
                // Through the host, so the parameter stays a leaf under autodiff.
                let (grad, device) = (tensor.is_require_grad(), tensor.device());
                Tensor::from_data(tensor.into_data(), (&device, dtype)).set_require_grad(grad)
            }
            _ => tensor,
        };
        Param::from_mapped_value(id, tensor, mapper)
    }
}

/// Loads the burn record `file` into `module`, keeping every parameter's element type: burn
/// converts a record to the backend's default float type (f32), which would silently turn a
/// bf16 model into an f32 one on resume. The record holds the values in f32 (full precision),
/// so casting back to bf16 or f16 restores them exactly.
fn load_keeping_dtypes<B: Backend, M: Module<B>>(
    module: M,
    file: PathBuf,
    path: &Path,
    device: &B::Device,
) -> Result<M> {
    let mut dtypes = ParamDTypes::default();
    module.visit(&mut dtypes);
    let named = path.join(format!(
        "{}.bin",
        file.file_name()
            .map_or("model".into(), |n| n.to_string_lossy())
    ));
    let loaded = guarded(&named, || {
        module
            .load_file(file, &recorder(), device)
            .map_err(|e| record_err(&named, e))
    })?;
    Ok(loaded.map(&mut dtypes))
}

/// Restores model, optimiser and counters from a checkpoint directory, once it is checked to
/// be of this run's model (`trained_on`) and whole.
pub fn load<B, O>(
    path: &Path,
    model: DiffusionLm<B>,
    optimizer: O,
    trained_on: &TrainedOn,
    device: &B::Device,
) -> Result<(DiffusionLm<B>, O, TrainState)>
where
    B: AutodiffBackend,
    O: Optimizer<DiffusionLm<B>, B>,
{
    let state = read_state(path)?;
    check_trained_on(path, trained_on)?;
    let model = load_keeping_dtypes(model, path.join("model"), path, device)?;
    let file = path.join("optimizer.bin");
    let record = guarded(&file, || {
        recorder()
            .load(path.join("optimizer"), device)
            .map_err(|e| record_err(&file, e))
    })?;
    let optimizer = optimizer.load_record(record);
    Ok((model, optimizer, state))
}

/// The counters of checkpoint `path`, which must be those of its directory's step.
fn read_state(path: &Path) -> Result<TrainState> {
    let state_path = path.join("state.json");
    let text = std::fs::read_to_string(&state_path).map_err(|e| TrainError::io(&state_path, e))?;
    let state: TrainState = serde_json::from_str(&text).map_err(|e| ckpt_err(&state_path, e))?;
    let named = path
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.strip_prefix("step-"))
        .and_then(|n| n.parse::<usize>().ok());
    if named != Some(state.step) {
        return Err(ckpt_err(
            &state_path,
            format!(
                "says step {}, but its directory is {}: the checkpoint was edited or moved",
                state.step,
                path.file_name().map_or("?".into(), |n| n.to_string_lossy())
            ),
        ));
    }
    Ok(state)
}

/// Refuses checkpoint `path` unless it was trained on what `now` describes and its record
/// files are the ones it wrote (by size), before any record is read.
fn check_trained_on(path: &Path, now: &TrainedOn) -> Result<()> {
    let file = path.join(TRAINED_ON_FILE);
    let text = std::fs::read_to_string(&file).map_err(|e| {
        ckpt_err(
            &file,
            format!(
                "{e}: without it the checkpoint cannot be checked against this run's model \
                 (a checkpoint of an earlier version, or an incomplete copy)"
            ),
        )
    })?;
    let saved: TrainedOn = serde_json::from_str(&text).map_err(|e| ckpt_err(&file, e))?;
    if let Some(why) = now.mismatch(&saved) {
        return Err(ckpt_err(path, format!("cannot be resumed here: {why}")));
    }
    for (name, &bytes) in &saved.record_bytes {
        let f = path.join(name);
        let found = std::fs::metadata(&f)
            .map_err(|e| TrainError::io(&f, e))?
            .len();
        if found != bytes {
            return Err(ckpt_err(
                &f,
                format!(
                    "is {found} bytes, the checkpoint wrote {bytes}: it was truncated or \
                     replaced"
                ),
            ));
        }
    }
    Ok(())
}

/// Runs a record read, turning a panic inside burn (a record whose bytes decode to values of
/// the wrong size) into an error naming `file`.
fn guarded<T>(file: &Path, read: impl FnOnce() -> Result<T>) -> Result<T> {
    // The panic is reported as this error: the default hook's message is held back meanwhile.
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let out = std::panic::catch_unwind(std::panic::AssertUnwindSafe(read));
    std::panic::set_hook(hook);
    out.unwrap_or_else(|_| {
        Err(ckpt_err(
            file,
            "unreadable record (corrupt: its values do not fit the model)",
        ))
    })
}
