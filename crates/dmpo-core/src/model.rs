//! `LogitsModel`: what the objective needs from a denoiser — logits at the completion
//! positions of (partially masked) sequences. Implemented once for LLaDA, by [`ModelView`]
//! (the policy with its adapter on, or its reference view with the adapter off), and by test
//! oracles.

use burn::tensor::{backend::Backend, Bool, Int, Tensor};
use dllm_model::{BlockCheckpoints, DiffusionLm, ForwardOptions, LogitPositions};

/// A masked-diffusion denoiser seen through its completion logits.
pub trait LogitsModel<B: Backend> {
    /// Logits `[rows, seq_len - prompt_len, vocab]` at the completion positions of `input_ids`
    /// `[rows, seq_len]`; `key_padding` (`[rows, seq_len]`, true = padding) hides keys.
    fn completion_logits(
        &self,
        input_ids: Tensor<B, 2, Int>,
        prompt_len: usize,
        key_padding: Option<Tensor<B, 2, Bool>>,
    ) -> Tensor<B, 3>;

    /// Logits `[n, vocab]` at `n` completion positions given as flat indices `r * gen_len + j`
    /// (row `r` of `input_ids`, completion position `j`). A loss over masked tokens needs the LM
    /// head only there; the default computes every completion position and selects.
    fn completion_logits_at(
        &self,
        input_ids: Tensor<B, 2, Int>,
        prompt_len: usize,
        key_padding: Option<Tensor<B, 2, Bool>>,
        positions: Tensor<B, 1, Int>,
    ) -> Tensor<B, 2> {
        let logits = self.completion_logits(input_ids, prompt_len, key_padding);
        let [rows, gen_len, vocab] = logits.dims();
        logits.reshape([rows * gen_len, vocab]).select(0, positions)
    }

    /// Id of the MASK token.
    fn mask_token_id(&self) -> u32;

    /// Size of the logits' last dimension.
    fn vocab_size(&self) -> usize;
}

/// Completion positions `prompt_len..seq` of every row: the LM head runs only there.
fn completion_range<B: Backend>(
    input_ids: &Tensor<B, 2, Int>,
    prompt_len: usize,
) -> LogitPositions<B> {
    LogitPositions::Range(prompt_len..input_ids.dims()[1])
}

/// Flat completion positions `r * gen_len + j` as positions `r * seq + prompt_len + j` of the
/// flattened sequence: the LM head runs only there, and the logits come back `[n, vocab]`.
fn flat_positions<B: Backend>(
    input_ids: &Tensor<B, 2, Int>,
    prompt_len: usize,
    positions: Tensor<B, 1, Int>,
) -> LogitPositions<B> {
    let gen_len = input_ids.dims()[1] - prompt_len;
    let rows = positions.clone().div_scalar(gen_len as i64);
    LogitPositions::Flat(positions + rows.mul_scalar(prompt_len as i64) + prompt_len as i64)
}

/// `[1, n, vocab]` logits of a [`LogitPositions::Flat`] call as `[n, vocab]`.
fn squeeze_flat<B: Backend>(logits: Tensor<B, 3>) -> Tensor<B, 2> {
    let [_, n, vocab] = logits.dims();
    logits.reshape([n, vocab])
}

/// LLaDA seen as a denoiser: the policy (adapters on, as trained) or its reference view (the
/// same weights with every LoRA adapter disabled, docs/algorithm.md §3). The one [`LogitsModel`] of LLaDA.
#[derive(Debug, Clone, Copy)]
pub struct ModelView<'a, B: Backend> {
    model: &'a DiffusionLm<B>,
    adapter: bool,
    /// Training forwards checkpoint their blocks here (gradient checkpointing).
    checkpoints: Option<&'a BlockCheckpoints<B>>,
}

impl<'a, B: Backend> ModelView<'a, B> {
    /// `model` as it is: its LoRA adapters (if any) on. A model without adapters is seen whole.
    pub fn policy(model: &'a DiffusionLm<B>) -> Self {
        Self {
            model,
            adapter: true,
            checkpoints: None,
        }
    }

    /// The policy whose forwards checkpoint their blocks in `checkpoints` when given (training
    /// with gradient checkpointing; docs/memory.md), as [`policy`](Self::policy) otherwise.
    pub fn policy_checkpointed(
        model: &'a DiffusionLm<B>,
        checkpoints: Option<&'a BlockCheckpoints<B>>,
    ) -> Self {
        Self {
            checkpoints,
            ..Self::policy(model)
        }
    }

    /// DMPO's reference policy under LoRA: the same weights with every adapter disabled (docs/algorithm.md §3).
    pub fn without_adapter(model: &'a DiffusionLm<B>) -> Self {
        Self {
            model,
            adapter: false,
            checkpoints: None,
        }
    }

    /// The logits at `positions`, with this view's adapter setting.
    fn logits(
        &self,
        input_ids: Tensor<B, 2, Int>,
        key_padding: Option<Tensor<B, 2, Bool>>,
        positions: &LogitPositions<B>,
    ) -> Tensor<B, 3> {
        let options = ForwardOptions {
            key_padding,
            adapter: self.adapter,
        };
        match self.checkpoints {
            Some(c) => c.forward(self.model, input_ids, &options, positions),
            None => self.model.forward_with(input_ids, &options, positions),
        }
    }
}

impl<B: Backend> LogitsModel<B> for ModelView<'_, B> {
    fn completion_logits(
        &self,
        input_ids: Tensor<B, 2, Int>,
        prompt_len: usize,
        key_padding: Option<Tensor<B, 2, Bool>>,
    ) -> Tensor<B, 3> {
        let positions = completion_range(&input_ids, prompt_len);
        self.logits(input_ids, key_padding, &positions)
    }

    fn completion_logits_at(
        &self,
        input_ids: Tensor<B, 2, Int>,
        prompt_len: usize,
        key_padding: Option<Tensor<B, 2, Bool>>,
        positions: Tensor<B, 1, Int>,
    ) -> Tensor<B, 2> {
        let positions = flat_positions(&input_ids, prompt_len, positions);
        squeeze_flat(self.logits(input_ids, key_padding, &positions))
    }

    fn mask_token_id(&self) -> u32 {
        self.model.config.mask_token_id
    }

    fn vocab_size(&self) -> usize {
        self.model.config.embed_size()
    }
}
