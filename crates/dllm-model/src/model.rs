//! `DiffusionLm`: the masked-diffusion transformer of LLaDA and Dream (docs/algorithm.md §1).
//!
//! `logits = ff_out(ln_f(blocks(wte[ids])))`, bidirectional attention, untied head (or tied
//! when `weight_tying`). Forward passes can return logits for a subset of positions only, keep
//! or skip the LoRA adapter, hide padded keys, and fill or read a [`KvCache`].
//!
//! Whatever the [`Family`](crate::Family), the logit at position `i` is the prediction for token `i`: a Dream
//! head predicts token `i + 1` from position `i`, so its logit for position `i > 0` is the head
//! applied at `i - 1`, and position 0 keeps its own (Dream's `cat(logits[:, :1], logits[:, :-1])`;
//! in a cached span, the span's first position keeps its own, as Fast-dLLM's block sampler).

use std::ops::Range;

use burn::module::{Module, Param};
use burn::tensor::{backend::Backend, module::embedding, Bool, DType, Int, Tensor};

use crate::block::Block;
use crate::cache::{CacheUse, KvCache};
use crate::config::ModelConfig;
use crate::linear::Linear;
use crate::norm::RmsNorm;
use crate::params::{ParamSource, RandomInit};
use crate::rope::RopeTables;

/// A masked-diffusion language model of either family: embeddings, blocks, final norm and LM
/// head.
#[derive(Module, Debug)]
pub struct DiffusionLm<B: Backend> {
    /// Token embeddings `[embedding_size, d_model]` (`model.transformer.wte.weight`,
    /// `model.embed_tokens.weight`).
    pub wte: Param<Tensor<B, 2>>,
    /// Transformer blocks.
    pub blocks: Vec<Block<B>>,
    /// Final norm (`model.transformer.ln_f`, `model.norm`).
    pub ln_f: RmsNorm<B>,
    /// LM head `[d_model, embedding_size]` (`model.transformer.ff_out`, `lm_head`); `None` when
    /// tied.
    pub head: Option<Linear<B>>,
    /// The architecture.
    #[module(skip)]
    pub config: ModelConfig,
}

/// Which positions of the input get logits.
#[derive(Debug, Clone)]
pub enum LogitPositions<B: Backend> {
    /// Every position (the reference behaviour).
    All,
    /// A contiguous range of input positions, the same for every row.
    Range(Range<usize>),
    /// Per-row positions `[batch, n]`.
    Gather(Tensor<B, 2, Int>),
    /// Positions `[n]` in the flattened `[batch * len]` sequence (row `r`, position `j` is
    /// `r * len + j`); the logits come back as `[1, n, vocab]`. Rows may contribute any number of
    /// positions, so a loss over masked tokens pays the LM head only where it is evaluated.
    Flat(Tensor<B, 1, Int>),
}

/// Options of a forward pass beyond the token ids.
#[derive(Debug, Clone)]
pub struct ForwardOptions<B: Backend> {
    /// `[batch, total_len]`, true where the token is padding and must not be attended to.
    /// `None` reproduces LLaDA's reference, which attends to padding. For Dream it also sets
    /// the positions: a row's count from its first real token ([`crate::Family::positions_skip_padding`]).
    pub key_padding: Option<Tensor<B, 2, Bool>>,
    /// Whether LoRA adapters contribute; `false` runs the base (reference) model.
    pub adapter: bool,
}

impl<B: Backend> Default for ForwardOptions<B> {
    fn default() -> Self {
        Self {
            key_padding: None,
            adapter: true,
        }
    }
}

impl<B: Backend> ForwardOptions<B> {
    /// Options that run the base model with every adapter disabled (DMPO's reference policy).
    pub fn reference() -> Self {
        Self {
            key_padding: None,
            adapter: false,
        }
    }
}

impl<B: Backend> DiffusionLm<B> {
    /// Whether any block linear is stored in NF4 (frozen: only adapters train on it).
    pub fn has_nf4_weights(&self) -> bool {
        self.blocks
            .iter()
            .any(|b| b.linears().iter().any(|(_, l)| l.weight.is_nf4()))
    }

    /// A randomly initialised model (`N(0, 0.02)` weights, unit norms), for pretraining; the
    /// draws come from the backend's generator (`B::seed`) in the order [`build`](Self::build)
    /// asks for them.
    pub fn init(config: &ModelConfig, device: &B::Device) -> Self {
        let Ok(model) = Self::build(config, &mut RandomInit::new(0.02, device));
        model
    }

    /// A model of `config` with random weights made on `device` in `dtype` (as [`init`](Self::init),
    /// cast tensor by tensor): a full-size model for measurements, with no checkpoint on disk.
    /// A dtype the backend cannot compute in is refused.
    pub fn random(
        config: &ModelConfig,
        dtype: crate::WeightDType,
        device: &B::Device,
    ) -> crate::Result<Self> {
        crate::load::check_dtype_supported::<B>(dtype, device)?;
        let Ok(model) = Self::build(config, &mut RandomInit::new(0.02, device).in_dtype(dtype));
        Ok(model)
    }

    /// The model of `config` with every parameter from `source`, by the names of its
    /// [`Family`](crate::Family): each block in turn, then the embeddings, the final norm and (untied) the LM
    /// head; then [`ParamSource::finish`] (a checkpoint refuses tensors the config does not use).
    pub fn build<S: ParamSource<B> + ?Sized>(
        config: &ModelConfig,
        source: &mut S,
    ) -> Result<Self, S::Error> {
        let d = config.d_model;
        let e = config.embed_size();
        let family = config.family;
        let mut blocks = Vec::new();
        for i in 0..config.n_layers {
            blocks.push(Block::build(config, &family.block_prefix(i), source)?);
        }
        let strip = |name: &'static str| name.trim_end_matches(".weight");
        let model = Self {
            wte: Param::from_tensor(source.embedding(family.embedding_name(), e, d)?),
            blocks,
            ln_f: RmsNorm::build(
                strip(family.final_norm_name()),
                d,
                config.rms_norm_eps,
                source,
            )?,
            head: if config.weight_tying {
                None
            } else {
                Some(Linear::build_dense(
                    strip(family.head_name()),
                    d,
                    e,
                    source,
                )?)
            },
            config: config.clone(),
        };
        source.finish(config)?;
        Ok(model)
    }

    /// Logits for every position of `input_ids` `[batch, len]`: `[batch, len, embedding_size]`.
    /// Exactly the reference forward.
    pub fn forward(&self, input_ids: Tensor<B, 2, Int>) -> Tensor<B, 3> {
        self.forward_with(input_ids, &ForwardOptions::default(), &LogitPositions::All)
    }

    /// Logits at the chosen positions, `[batch, n_positions, embedding_size]`.
    pub fn forward_with(
        &self,
        input_ids: Tensor<B, 2, Int>,
        options: &ForwardOptions<B>,
        positions: &LogitPositions<B>,
    ) -> Tensor<B, 3> {
        let hidden = self.hidden(input_ids, 0, options, CacheUse::None);
        self.logits(hidden, positions)
    }

    /// A full forward pass that also records every layer's keys and values into `cache`
    /// (which is cleared first).
    pub fn forward_fill_cache(
        &self,
        input_ids: Tensor<B, 2, Int>,
        options: &ForwardOptions<B>,
        positions: &LogitPositions<B>,
        cache: &mut KvCache<B>,
    ) -> Tensor<B, 3> {
        cache.layers.clear();
        let hidden = self.hidden(input_ids, 0, options, CacheUse::Fill(cache));
        self.logits(hidden, positions)
    }

    /// A forward pass over the span `span_ids` `[batch, span]` placed at position `start` of a
    /// sequence whose other positions' keys and values come from `cache`. `positions` index
    /// into the span. `options.key_padding` covers the whole sequence.
    pub fn forward_cached(
        &self,
        span_ids: Tensor<B, 2, Int>,
        start: usize,
        options: &ForwardOptions<B>,
        positions: &LogitPositions<B>,
        cache: &KvCache<B>,
    ) -> Tensor<B, 3> {
        let hidden = self.hidden(span_ids, start, options, CacheUse::Read(cache, start));
        self.logits(hidden, positions)
    }

    /// WINO's shadow pass: `shadow_ids` `[batch, span]` stand at positions `start..start + span`
    /// of the sequence whose keys and values `cache` holds (filled by
    /// [`forward_fill_cache`](Self::forward_fill_cache)). Each attends to every cached position
    /// but the one it stands at, and to the whole shadow; the cache is not changed. The
    /// reference runs the sequence and its shadow as one input of `len + span` tokens whose
    /// attention mask hides the shadow from the sequence; the sequence's keys are those of the
    /// plain pass, so the two passes give the same logits. `positions` index into the shadow;
    /// `options.key_padding` covers the sequence.
    pub fn forward_shadow(
        &self,
        shadow_ids: Tensor<B, 2, Int>,
        start: usize,
        options: &ForwardOptions<B>,
        positions: &LogitPositions<B>,
        cache: &KvCache<B>,
    ) -> Tensor<B, 3> {
        let hidden = self.hidden(shadow_ids, start, options, CacheUse::Shadow(cache, start));
        self.logits(hidden, positions)
    }

    /// Final hidden states (after `ln_f`) of the tokens in `input_ids`, placed at `start`.
    fn hidden(
        &self,
        input_ids: Tensor<B, 2, Int>,
        start: usize,
        options: &ForwardOptions<B>,
        mut cache: CacheUse<'_, B>,
    ) -> Tensor<B, 3> {
        let [_, len] = input_ids.dims();
        let device = input_ids.device();
        let rope = self.rope_for(options.key_padding.as_ref(), start, len, &device);
        let mut x = self.embed(input_ids);
        for (layer, block) in self.blocks.iter().enumerate() {
            x = block.forward(
                x,
                &rope,
                options.key_padding.as_ref(),
                &mut cache,
                layer,
                options.adapter,
            );
        }
        self.ln_f.forward(x)
    }

    /// RoPE tables for positions `start..start + len` (queries, then keys: one table twice
    /// without grouped-query attention).
    fn rope_tables(
        &self,
        start: usize,
        len: usize,
        device: &B::Device,
    ) -> (RopeTables<B>, RopeTables<B>) {
        let c = &self.config;
        let table = |heads| RopeTables::new(c.rope_theta, c.head_dim(), heads, start, len, device);
        if c.num_kv_heads() == c.n_heads {
            let t = table(c.n_heads);
            (t.clone(), t)
        } else {
            (table(c.n_heads), table(c.num_kv_heads()))
        }
    }

    /// RoPE tables for positions `start..start + len` of rows padded as `key_padding`: counted
    /// from the left edge, or, for a family whose positions skip padding (Dream), from each
    /// row's first real token.
    pub(crate) fn rope_for(
        &self,
        key_padding: Option<&Tensor<B, 2, Bool>>,
        start: usize,
        len: usize,
        device: &B::Device,
    ) -> (RopeTables<B>, RopeTables<B>) {
        match key_padding {
            Some(padding) if self.config.family.positions_skip_padding() => {
                self.rope_tables_skipping(padding, start, len, device)
            }
            _ => self.rope_tables(start, len, device),
        }
    }

    /// RoPE tables for positions `start..start + len` of rows whose padding is `padding`
    /// `[batch, total_len]`: each position is the number of real tokens before it (Dream's
    /// `attention_mask.cumsum(-1) - 1`; padding itself at 1, as Dream's `masked_fill_`).
    fn rope_tables_skipping(
        &self,
        padding: &Tensor<B, 2, Bool>,
        start: usize,
        len: usize,
        device: &B::Device,
    ) -> (RopeTables<B>, RopeTables<B>) {
        let [_, total] = padding.dims();
        let flags: Vec<bool> = padding.to_data().iter::<bool>().collect();
        let rows: Vec<Vec<usize>> = flags
            .chunks(total.max(1))
            .map(|row| {
                let mut real = 0usize;
                let all: Vec<usize> = row
                    .iter()
                    .map(|&pad| {
                        if pad {
                            1
                        } else {
                            real += 1;
                            real - 1
                        }
                    })
                    .collect();
                all[start..start + len].to_vec()
            })
            .collect();
        let c = &self.config;
        let table = |heads| RopeTables::for_rows(c.rope_theta, c.head_dim(), heads, &rows, device);
        (table(c.n_heads), table(c.num_kv_heads()))
    }

    /// The embeddings of `input_ids`, in the dtype the blocks compute in
    /// ([`activation_dtype`](crate::ops::activation_dtype)).
    pub(crate) fn embed(&self, input_ids: Tensor<B, 2, Int>) -> Tensor<B, 3> {
        let x = embedding(self.wte.val(), input_ids);
        let compute = crate::ops::activation_dtype::<B>(x.dtype());
        if x.dtype() == compute {
            x
        } else {
            x.cast(compute)
        }
    }

    /// Applies the LM head at the chosen positions of `hidden` `[batch, len, d]`. Logits of a
    /// bf16 or f16 model are f32: on the CPU backend the head computes in f32 from the resident
    /// half-precision weights; elsewhere it runs in the weights' dtype and is upcast (the
    /// sampler's noise, log-softmax and losses work in f32, as d1 and DMPO call `.float()` on
    /// them); f32 and f64 logits keep their dtype.
    pub fn logits(&self, hidden: Tensor<B, 3>, positions: &LogitPositions<B>) -> Tensor<B, 3> {
        let selected = if self.config.family.shifts_logits() {
            predicting_hidden(hidden, positions)
        } else {
            select_hidden(hidden, positions)
        };
        let logits = match &self.head {
            Some(head) => head.forward(selected, true),
            None => {
                let [b, n, d] = selected.dims();
                let flat = selected.reshape([b * n, d]);
                let vocab = self.wte.val().dims()[0];
                crate::linear::product(&flat, self.wte.val().transpose()).reshape([b, n, vocab])
            }
        };
        match logits.dtype() {
            DType::BF16 | DType::F16 => logits.cast(DType::F32),
            _ => logits,
        }
    }

    /// Number of parameters (base model and adapters).
    pub fn num_parameters(&self) -> usize {
        self.num_params()
    }

    /// Whether any LoRA adapter applies dropout to its input.
    pub fn has_adapter_dropout(&self) -> bool {
        self.blocks.iter().any(|b| {
            b.linears()
                .iter()
                .any(|(_, l)| l.lora.as_ref().is_some_and(|a| a.dropout.prob > 0.0))
        })
    }

    /// Whether any layer carries a LoRA adapter.
    pub fn has_adapter(&self) -> bool {
        self.blocks
            .iter()
            .any(|b| b.linears().iter().any(|(_, l)| l.lora.is_some()))
    }

    /// The model with its LoRA dropout applied outside autodiff too (`on`) or only under it: the
    /// reference samples and scores its rollouts in HF's train mode, adapter dropout on.
    pub fn with_adapter_dropout_always(mut self, on: bool) -> Self {
        for block in &mut self.blocks {
            for (_, linear) in block.linears_mut() {
                if let Some(lora) = &mut linear.lora {
                    lora.dropout_always = on;
                }
            }
        }
        self
    }
}

/// The hidden states of a shifting family ([`crate::Family::shifts_logits`]) whose head output is the
/// logit for each chosen position: position `j > 0` of a row reads the state at `j - 1`,
/// position 0 its own.
fn predicting_hidden<B: Backend>(
    hidden: Tensor<B, 3>,
    positions: &LogitPositions<B>,
) -> Tensor<B, 3> {
    let len = hidden.dims()[1];
    match positions {
        LogitPositions::All if len > 1 => Tensor::cat(
            vec![hidden.clone().narrow(1, 0, 1), hidden.narrow(1, 0, len - 1)],
            1,
        ),
        LogitPositions::All => hidden,
        LogitPositions::Range(r) if r.start > 0 => hidden.narrow(1, r.start - 1, r.end - r.start),
        LogitPositions::Range(r) => predicting_hidden(
            hidden.narrow(1, 0, r.end.max(1)),
            &LogitPositions::All,
        )
        .narrow(1, 0, r.end - r.start),
        LogitPositions::Gather(idx) => {
            let shifted = (idx.clone() - 1).clamp_min(0);
            select_hidden(hidden, &LogitPositions::Gather(shifted))
        }
        LogitPositions::Flat(idx) => {
            // Flat index r * len + j: one back unless j is 0.
            let at_row_start = idx.clone().remainder_scalar(len as i64).clamp_max(1);
            let shifted = idx.clone() - at_row_start;
            select_hidden(hidden, &LogitPositions::Flat(shifted))
        }
    }
}

/// The hidden states at the chosen positions, `[batch, n, d]` (`[1, n, d]` for `Flat`).
fn select_hidden<B: Backend>(hidden: Tensor<B, 3>, positions: &LogitPositions<B>) -> Tensor<B, 3> {
    match positions {
        LogitPositions::All => hidden,
        LogitPositions::Range(r) => hidden.narrow(1, r.start, r.end - r.start),
        LogitPositions::Gather(idx) => {
            let [b, n] = idx.dims();
            let d = hidden.dims()[2];
            let idx = idx.clone().reshape([b, n, 1]).expand([b, n, d]);
            hidden.gather(1, idx)
        }
        LogitPositions::Flat(idx) => {
            let [b, len, d] = hidden.dims();
            let n = idx.dims()[0];
            hidden
                .reshape([b * len, d])
                .select(0, idx.clone())
                .reshape([1, n, d])
        }
    }
}
