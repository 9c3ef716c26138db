//! Where a model's parameters come from while it is built.
//!
//! One constructor per module — [`DiffusionLm::build`](crate::DiffusionLm::build),
//! [`Block::build`](crate::block::Block::build),
//! [`Attention::build`](crate::attention::Attention::build),
//! [`Linear::build`](crate::linear::Linear::build), [`RmsNorm::build`](crate::norm::RmsNorm::build)
//! — asks a [`ParamSource`] for each of its tensors by its exact name in a LLaDA checkpoint
//! (`model.transformer.blocks.0.q_proj.weight`, …) and its shape, so random initialisation
//! and checkpoint loading build the same tree the same way, in the same order: every block
//! (`attn_norm`, `q_proj`, `k_proj`, `v_proj`, `attn_out`, `ff_norm`, `ff_proj`, `up_proj`,
//! `ff_out`), then `wte`, `ln_f` and the untied head.
//!
//! - [`RandomInit`] ignores the names: linear weights and the embedding table are drawn from
//!   `N(0, std)` by the backend's (seedable) generator in that order, norm weights are ones.
//! - [`Checkpoint`] reads each tensor from [`WeightFiles`], checks its shape, converts it to the
//!   requested element type, and once the model is built refuses any tensor nobody asked for.

use std::convert::Infallible;

use burn::tensor::{backend::Backend, Distribution, Tensor};

use crate::config::ModelConfig;
use crate::error::ModelError;
use crate::linear::LinearWeight;
use crate::nf4::Nf4Tensor;
use crate::nf4_weight::Nf4Weight;
use crate::quantization::{holds_nf4, read_nf4, Quantize};
use crate::weights::{WeightDType, WeightFiles};

/// Prefix of every tensor name in a LLaDA checkpoint.
pub const PREFIX: &str = "model.transformer";

/// How a checkpoint tensor is initialised when one is made up (`cargo xtask random-checkpoint`):
/// matrices at random, norm weights at one, biases at zero.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TensorRole {
    /// A linear weight or the embedding table.
    Matrix,
    /// A norm's per-channel weight.
    Norm,
    /// A linear layer's bias (Dream's q/k/v).
    Bias,
}

/// Every tensor of a checkpoint for `config` (in its family's names), in the order
/// [`DiffusionLm::build`](crate::DiffusionLm::build) asks for them: its name, its shape as
/// stored (linear weights `[out, in]`) and its role.
pub fn checkpoint_tensors(config: &ModelConfig) -> Vec<(String, Vec<usize>, TensorRole)> {
    let (d, h, e) = (config.d_model, config.mlp_hidden(), config.embed_size());
    let kv = config.num_kv_heads() * config.head_dim();
    let family = config.family;
    let paths = family.linear_paths();
    let [attn_norm, ff_norm] = family.norm_paths();
    let shapes = [(d, d), (d, kv), (d, kv), (d, d), (d, h), (d, h), (h, d)];
    let mut out = Vec::new();
    for i in 0..config.n_layers {
        let p = family.block_prefix(i);
        let norm = |n: &str| (format!("{p}.{n}.weight"), vec![d], TensorRole::Norm);
        out.push(norm(attn_norm));
        for (j, (path, (d_in, d_out))) in paths.iter().zip(shapes).enumerate() {
            if j == 4 {
                out.push(norm(ff_norm));
            }
            out.push((
                format!("{p}.{path}.weight"),
                vec![d_out, d_in],
                TensorRole::Matrix,
            ));
            if j < 3 && config.include_qkv_bias {
                out.push((format!("{p}.{path}.bias"), vec![d_out], TensorRole::Bias));
            }
        }
    }
    out.push((
        family.embedding_name().to_string(),
        vec![e, d],
        TensorRole::Matrix,
    ));
    out.push((
        family.final_norm_name().to_string(),
        vec![d],
        TensorRole::Norm,
    ));
    if !config.weight_tying {
        out.push((
            family.head_name().to_string(),
            vec![e, d],
            TensorRole::Matrix,
        ));
    }
    out
}

/// A supplier of the tensors a model is built from, asked for each by its checkpoint name.
pub trait ParamSource<B: Backend> {
    /// Why a tensor cannot be supplied.
    type Error;

    /// The weight `[d_in, d_out]` of the linear layer whose weight is named `name` (checkpoints
    /// store it `[d_out, d_in]`).
    fn linear_weight(
        &mut self,
        name: &str,
        d_in: usize,
        d_out: usize,
    ) -> Result<Tensor<B, 2>, Self::Error>;

    /// The base weight of the linear layer whose weight is named `name`: dense
    /// ([`linear_weight`](Self::linear_weight)) unless the source holds or makes it in NF4.
    fn linear(
        &mut self,
        name: &str,
        d_in: usize,
        d_out: usize,
    ) -> Result<LinearWeight<B>, Self::Error> {
        let weight = self.linear_weight(name, d_in, d_out)?;
        Ok(LinearWeight::Dense(burn::module::Param::from_tensor(
            weight,
        )))
    }

    /// The embedding table `[rows, cols]` named `name`.
    fn embedding(
        &mut self,
        name: &str,
        rows: usize,
        cols: usize,
    ) -> Result<Tensor<B, 2>, Self::Error>;

    /// The per-channel weight `[d]` of the norm whose weight is named `name`.
    fn norm_weight(&mut self, name: &str, d: usize) -> Result<Tensor<B, 1>, Self::Error>;

    /// The bias `[d]` of the linear layer whose bias is named `name`.
    fn bias(&mut self, name: &str, d: usize) -> Result<Tensor<B, 1>, Self::Error>;

    /// Called once the model of `config` is built: whatever the source holds beyond what was
    /// asked for is an error here.
    fn finish(&mut self, config: &ModelConfig) -> Result<(), Self::Error>;
}

/// Fresh parameters: `N(0, std)` matrices, unit norm weights, in f32 unless
/// [`in_dtype`](Self::in_dtype) asks for another element type.
pub struct RandomInit<'d, B: Backend> {
    std: f64,
    dtype: WeightDType,
    device: &'d B::Device,
}

impl<'d, B: Backend> RandomInit<'d, B> {
    /// Matrices drawn from `N(0, std)` on `device`.
    pub fn new(std: f64, device: &'d B::Device) -> Self {
        Self {
            std,
            dtype: WeightDType::F32,
            device,
        }
    }

    /// Every tensor made in `dtype` on the device: drawn in f32 one tensor at a time and cast
    /// there, so a full-size model never exists in f32 (the draws are those of f32).
    pub fn in_dtype(self, dtype: WeightDType) -> Self {
        Self { dtype, ..self }
    }

    /// A `[rows, cols]` matrix from `N(0, std)`.
    fn normal(&self, rows: usize, cols: usize) -> Tensor<B, 2> {
        let drawn = Tensor::random(
            [rows, cols],
            Distribution::Normal(0.0, self.std),
            self.device,
        );
        self.typed(drawn)
    }

    /// `t` in the requested element type.
    fn typed<const D: usize>(&self, t: Tensor<B, D>) -> Tensor<B, D> {
        match self.dtype {
            WeightDType::F32 => t,
            other => t.cast(other.burn()),
        }
    }
}

impl<B: Backend> ParamSource<B> for RandomInit<'_, B> {
    type Error = Infallible;

    fn linear_weight(
        &mut self,
        _: &str,
        d_in: usize,
        d_out: usize,
    ) -> Result<Tensor<B, 2>, Infallible> {
        Ok(self.normal(d_in, d_out))
    }

    fn embedding(&mut self, _: &str, rows: usize, cols: usize) -> Result<Tensor<B, 2>, Infallible> {
        Ok(self.normal(rows, cols))
    }

    fn norm_weight(&mut self, _: &str, d: usize) -> Result<Tensor<B, 1>, Infallible> {
        Ok(self.typed(Tensor::ones([d], self.device)))
    }

    /// Zero, as `DreamPreTrainedModel._init_weights`; no draw from the generator.
    fn bias(&mut self, _: &str, d: usize) -> Result<Tensor<B, 1>, Infallible> {
        Ok(self.typed(Tensor::zeros([d], self.device)))
    }

    fn finish(&mut self, _: &ModelConfig) -> Result<(), Infallible> {
        Ok(())
    }
}

/// Parameters read from opened checkpoint files by name, shape-checked, in one element type.
///
/// [`Checkpoint::verifying`] checks a checkpoint the same way without keeping it — every tensor
/// present, of the right shape and a readable dtype, finite, none left over — one tensor at a
/// time: the model it builds has empty (`[0, …]`) parameters and is only thrown away. `dmpo
/// inspect` uses it to validate a model directory without holding its weights.
pub struct Checkpoint<'a, B: Backend> {
    weights: &'a WeightFiles,
    dtype: WeightDType,
    /// Quantise dense block linears while loading.
    quantize: Option<Quantize>,
    device: &'a B::Device,
    /// `false` when verifying: tensors are read and checked, then dropped.
    keep: bool,
}

impl<'a, B: Backend> Checkpoint<'a, B> {
    /// Tensors of `weights`, converted to `dtype`, on `device`.
    pub fn new(weights: &'a WeightFiles, dtype: WeightDType, device: &'a B::Device) -> Self {
        Self {
            weights,
            dtype,
            quantize: None,
            device,
            keep: true,
        }
    }

    /// Dense block linears quantised as they load (one tensor at a time, in `dtype`).
    pub fn quantized(self, quantize: Option<Quantize>) -> Self {
        Self { quantize, ..self }
    }

    /// Every tensor of `weights` read and checked, none kept (placeholders on `device`).
    pub fn verifying(weights: &'a WeightFiles, device: &'a B::Device) -> Self {
        Self {
            keep: false,
            ..Self::new(weights, WeightDType::F32, device)
        }
    }

    /// Reads tensor `name` of `shape` (as stored) and puts it on the device, transposed when
    /// asked; an empty placeholder when verifying.
    fn tensor<const D: usize>(
        &self,
        name: &str,
        shape: [usize; D],
        transpose: bool,
    ) -> Result<Tensor<B, D>, ModelError> {
        let host = self.weights.read(name, &shape, self.dtype)?;
        if !self.keep {
            return Ok(Tensor::zeros([0; D], self.device));
        }
        let dtype = self.dtype.burn();
        // Half-precision weights the CPU kernels read in f32 keep the checkpoint's `[out, in]`
        // layout under a transposed view: no host transpose, no second copy (docs/memory.md).
        if transpose && crate::ops::activation_dtype::<B>(dtype) != dtype {
            let stored: Tensor<B, D> = Tensor::from_data(host.into_data(), (self.device, dtype));
            return Ok(stored.transpose());
        }
        let host = if transpose { host.transposed() } else { host };
        Ok(Tensor::from_data(host.into_data(), (self.device, dtype)))
    }
}

impl<B: Backend> ParamSource<B> for Checkpoint<'_, B> {
    type Error = ModelError;

    fn linear_weight(
        &mut self,
        name: &str,
        d_in: usize,
        d_out: usize,
    ) -> Result<Tensor<B, 2>, ModelError> {
        // Hugging Face stores linear weights `[out, in]`; burn's linear wants `[in, out]`.
        self.tensor(name, [d_out, d_in], true)
    }

    /// NF4 when the files hold the weight in NF4 or quantisation was asked for, else dense.
    fn linear(
        &mut self,
        name: &str,
        d_in: usize,
        d_out: usize,
    ) -> Result<LinearWeight<B>, ModelError> {
        let shape = [d_out, d_in];
        let nf4 = if holds_nf4(self.weights, name)? {
            read_nf4(self.weights, name, shape)?
        } else if self.quantize == Some(Quantize::Nf4) {
            let values = self.weights.read(name, &shape, self.dtype)?.values.to_f32();
            Nf4Tensor::quantize(&values, shape, self.dtype.nf4())
        } else {
            let weight = self.linear_weight(name, d_in, d_out)?;
            return Ok(LinearWeight::Dense(burn::module::Param::from_tensor(
                weight,
            )));
        };
        if !self.keep {
            let empty = Tensor::zeros([0, 0], self.device);
            return Ok(LinearWeight::Dense(burn::module::Param::from_tensor(empty)));
        }
        Ok(LinearWeight::Nf4(Nf4Weight::new(&nf4, self.device)))
    }

    fn embedding(
        &mut self,
        name: &str,
        rows: usize,
        cols: usize,
    ) -> Result<Tensor<B, 2>, ModelError> {
        self.tensor(name, [rows, cols], false)
    }

    fn norm_weight(&mut self, name: &str, d: usize) -> Result<Tensor<B, 1>, ModelError> {
        self.tensor(name, [d], false)
    }

    fn bias(&mut self, name: &str, d: usize) -> Result<Tensor<B, 1>, ModelError> {
        self.tensor(name, [d], false)
    }

    /// Refuses the tensors of the files that the model of `config` did not read.
    fn finish(&mut self, config: &ModelConfig) -> Result<(), ModelError> {
        unused_tensors(self.weights, config)
    }
}

/// Refuses the tensors of `weights` that the model of `config` did not read.
fn unused_tensors(weights: &WeightFiles, config: &ModelConfig) -> Result<(), ModelError> {
    let unused = weights.unused();
    match unused.first() {
        None => Ok(()),
        Some(first) => Err(ModelError::Safetensors {
            path: weights.file_of(first),
            message: format!(
                "config/weights mismatch: {} tensor(s) not used by the config ({}), e.g. `{first}`",
                unused.len(),
                describe(config)
            ),
        }),
    }
}

/// The config fields that decide which tensors a checkpoint must hold.
fn describe(c: &ModelConfig) -> String {
    format!(
        "{} family, n_layers {}, d_model {}, weight_tying {}",
        c.family.name(),
        c.n_layers,
        c.d_model,
        c.weight_tying
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::DiffusionLm;
    use burn::backend::Flex;

    /// Records what the model asks for and hands out zeros.
    #[derive(Default)]
    struct Requests {
        asked: Vec<String>,
        finished: usize,
    }

    impl ParamSource<Flex> for Requests {
        type Error = Infallible;

        fn linear_weight(
            &mut self,
            name: &str,
            d_in: usize,
            d_out: usize,
        ) -> Result<Tensor<Flex, 2>, Infallible> {
            self.asked.push(format!("{name} {:?}", [d_in, d_out]));
            Ok(Tensor::zeros([d_in, d_out], &Default::default()))
        }

        fn embedding(
            &mut self,
            name: &str,
            rows: usize,
            cols: usize,
        ) -> Result<Tensor<Flex, 2>, Infallible> {
            self.asked.push(format!("{name} {:?}", [rows, cols]));
            Ok(Tensor::zeros([rows, cols], &Default::default()))
        }

        fn norm_weight(&mut self, name: &str, d: usize) -> Result<Tensor<Flex, 1>, Infallible> {
            self.asked.push(format!("{name} {:?}", [d]));
            Ok(Tensor::zeros([d], &Default::default()))
        }

        fn bias(&mut self, name: &str, d: usize) -> Result<Tensor<Flex, 1>, Infallible> {
            self.norm_weight(name, d)
        }

        fn finish(&mut self, _: &ModelConfig) -> Result<(), Infallible> {
            self.finished += 1;
            Ok(())
        }
    }

    #[test]
    fn the_model_asks_for_every_tensor_once_by_its_checkpoint_name_in_order() {
        let mut config = ModelConfig::tiny(8, 1, 4, 12, 10, 9, 8);
        config.n_kv_heads = Some(2);
        let mut requests = Requests::default();
        let Ok(model) = DiffusionLm::<Flex>::build(&config, &mut requests);
        let block = "model.transformer.blocks.0";
        let want = [
            format!("{block}.attn_norm.weight [8]"),
            format!("{block}.q_proj.weight [8, 8]"),
            format!("{block}.k_proj.weight [8, 4]"),
            format!("{block}.v_proj.weight [8, 4]"),
            format!("{block}.attn_out.weight [8, 8]"),
            format!("{block}.ff_norm.weight [8]"),
            format!("{block}.ff_proj.weight [8, 12]"),
            format!("{block}.up_proj.weight [8, 12]"),
            format!("{block}.ff_out.weight [12, 8]"),
            "model.transformer.wte.weight [10, 8]".to_string(),
            "model.transformer.ln_f.weight [8]".to_string(),
            "model.transformer.ff_out.weight [8, 10]".to_string(),
        ];
        assert_eq!(requests.asked, want);
        assert_eq!(requests.finished, 1);
        // The listing of a checkpoint's tensors (stored `[out, in]`) is the same, in order.
        let listed: Vec<String> = checkpoint_tensors(&config)
            .into_iter()
            .map(|(name, shape, role)| {
                let shape = match role {
                    TensorRole::Matrix if !name.ends_with("wte.weight") => vec![shape[1], shape[0]],
                    _ => shape,
                };
                format!("{name} {shape:?}")
            })
            .collect();
        assert_eq!(listed, want);
        assert_eq!(model.blocks[0].attn.n_kv_heads, 2);
        assert_eq!(model.blocks[0].attn_norm.eps, config.rms_norm_eps);

        config.weight_tying = true;
        let mut requests = Requests::default();
        let Ok(model) = DiffusionLm::<Flex>::build(&config, &mut requests);
        assert_eq!(requests.asked[..], want[..11]);
        assert!(model.head.is_none());
    }
}
