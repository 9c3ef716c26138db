//! Run-time backend selection over the backends compiled in (cargo features `flex`,
//! `ndarray`, `wgpu`, `cuda`).

use burn::tensor::backend::Backend;

use crate::error::{ModelError, Result};

/// A burn backend this toolkit can run on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendKind {
    /// burn's pure-Rust CPU backend (default).
    Flex,
    /// The ndarray CPU backend.
    Ndarray,
    /// WGPU (Vulkan, Metal, DX12; lavapipe on CPU-only machines).
    Wgpu,
    /// NVIDIA CUDA.
    Cuda,
}

impl std::str::FromStr for BackendKind {
    type Err = ModelError;
    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "flex" | "cpu" => Ok(Self::Flex),
            "ndarray" => Ok(Self::Ndarray),
            "wgpu" | "vulkan" => Ok(Self::Wgpu),
            "cuda" => Ok(Self::Cuda),
            other => Err(ModelError::Input(format!(
                "unknown backend `{other}` (expected flex, ndarray, wgpu or cuda)"
            ))),
        }
    }
}

impl std::fmt::Display for BackendKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Flex => "flex",
            Self::Ndarray => "ndarray",
            Self::Wgpu => "wgpu",
            Self::Cuda => "cuda",
        })
    }
}

impl BackendKind {
    /// Every backend, compiled in or not.
    pub const ALL: [BackendKind; 4] = [Self::Flex, Self::Ndarray, Self::Wgpu, Self::Cuda];

    /// Whether this binary was built with the backend's cargo feature.
    pub fn is_compiled(self) -> bool {
        match self {
            Self::Flex => cfg!(feature = "flex"),
            Self::Ndarray => cfg!(feature = "ndarray"),
            Self::Wgpu => cfg!(feature = "wgpu"),
            Self::Cuda => cfg!(feature = "cuda"),
        }
    }

    /// The backends compiled into this binary.
    pub fn compiled() -> Vec<Self> {
        Self::ALL.into_iter().filter(|b| b.is_compiled()).collect()
    }
}

/// Code generic over the backend, run by [`dispatch`] on the backend chosen at run time.
pub trait BackendTask {
    /// What the task returns.
    type Output;
    /// Runs the task on backend `B` and `device`.
    fn run<B: Backend>(self, device: B::Device) -> Self::Output;
}

/// Runs `task` on the backend `kind`, or explains that it was not compiled in.
pub fn dispatch<T: BackendTask>(kind: BackendKind, task: T) -> Result<T::Output> {
    let _ = &task;
    match kind {
        #[cfg(feature = "flex")]
        BackendKind::Flex => Ok(task.run::<burn::backend::Flex>(Default::default())),
        #[cfg(feature = "ndarray")]
        BackendKind::Ndarray => Ok(task.run::<burn::backend::NdArray>(Default::default())),
        #[cfg(feature = "wgpu")]
        BackendKind::Wgpu => Ok(task.run::<burn::backend::Wgpu>(Default::default())),
        #[cfg(feature = "cuda")]
        BackendKind::Cuda => Ok(task.run::<burn::backend::Cuda>(Default::default())),
        #[allow(unreachable_patterns)]
        other => Err(ModelError::Input(format!(
            "backend `{other}` was not compiled in; rebuild with `--features {other}` (compiled: {})",
            BackendKind::compiled()
                .iter()
                .map(|b| b.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ))),
    }
}
