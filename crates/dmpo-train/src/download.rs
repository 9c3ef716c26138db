//! `dmpo download`: models and the reference's training and evaluation datasets from the Hugging
//! Face Hub through `hf-hub` (the `download` feature; tests never use the network). Files land in
//! the hub cache (`HF_HOME`), and the command prints where.

use std::path::PathBuf;

use hf_hub::api::sync::{Api, ApiBuilder};
use hf_hub::{Repo, RepoType};

use crate::error::{Result, TrainError};

/// A dataset the paper recipes train or evaluate on: its hub repository and the files to fetch
/// (the parquet files whose path starts with one of `prefixes`).
pub struct DatasetSource {
    /// The name `dmpo download --dataset` takes.
    pub name: &'static str,
    /// The hub dataset repository.
    pub repo: &'static str,
    /// Path prefixes of the files fetched.
    pub prefixes: &'static [&'static str],
}

/// The reference's datasets (DMPO `dmpo_train.py`, `data_utils.py`; `eval/*.py`). The 4x4 Sudoku
/// training CSV is not on the hub: it ships in the DMPO and d1 repositories (`dataset/`).
pub const DATASETS: [DatasetSource; 4] = [
    DatasetSource {
        name: "gsm8k",
        repo: "openai/gsm8k",
        prefixes: &["main/train-", "main/test-"],
    },
    DatasetSource {
        name: "math",
        repo: "ankner/math-500",
        prefixes: &["data/train-", "data/test-"],
    },
    DatasetSource {
        name: "math500",
        repo: "HuggingFaceH4/MATH-500",
        prefixes: &["test.jsonl"],
    },
    DatasetSource {
        name: "countdown",
        repo: "Jiayi-Pan/Countdown-Tasks-3to4",
        prefixes: &["data/train-"],
    },
];

fn api() -> Result<Api> {
    ApiBuilder::from_env()
        .with_progress(true)
        .build()
        .map_err(|e| TrainError::Data(format!("Hugging Face Hub client: {e}")))
}

/// Downloads a model repository's config, tokenizer and weights; returns its local directory.
pub fn download(repo_id: &str, revision: &str) -> Result<PathBuf> {
    let repo = api()?.repo(Repo::with_revision(
        repo_id.to_string(),
        RepoType::Model,
        revision.to_string(),
    ));
    let hub = |e: hf_hub::api::sync::ApiError| TrainError::Data(format!("{repo_id}: {e}"));
    let info = repo.info().map_err(hub)?;
    let mut dir = None;
    for file in info.siblings.iter().map(|s| s.rfilename.as_str()) {
        let wanted = file.ends_with(".safetensors")
            || file.ends_with(".json")
            || file.ends_with(".py")
            || file.ends_with(".txt");
        if wanted {
            let path = repo.get(file).map_err(hub)?;
            dir.get_or_insert_with(|| path.parent().map(PathBuf::from).unwrap_or_default());
        }
    }
    dir.ok_or_else(|| TrainError::Data(format!("{repo_id}: no model files at {revision}")))
}

/// Downloads the files of the dataset `name` (one of [`DATASETS`]); returns their local paths.
pub fn download_dataset(name: &str) -> Result<Vec<PathBuf>> {
    let source = DATASETS.iter().find(|d| d.name == name).ok_or_else(|| {
        let names: Vec<&str> = DATASETS.iter().map(|d| d.name).collect();
        TrainError::Data(format!(
            "unknown dataset `{name}` (one of {names:?}; the Sudoku training CSV ships in the \
             DMPO and d1 repositories, dataset/4x4_sudoku_unique_puzzles.csv)"
        ))
    })?;
    let repo = api()?.repo(Repo::new(source.repo.to_string(), RepoType::Dataset));
    let hub = |e: hf_hub::api::sync::ApiError| TrainError::Data(format!("{}: {e}", source.repo));
    let info = repo.info().map_err(hub)?;
    let mut out = Vec::new();
    for file in info.siblings.iter().map(|s| s.rfilename.as_str()) {
        if source.prefixes.iter().any(|p| file.starts_with(p)) {
            out.push(repo.get(file).map_err(hub)?);
        }
    }
    if out.is_empty() {
        let files: Vec<&str> = info.siblings.iter().map(|s| s.rfilename.as_str()).collect();
        return Err(TrainError::Data(format!(
            "{}: no file starts with {:?} (the repository holds {files:?})",
            source.repo, source.prefixes
        )));
    }
    Ok(out)
}
