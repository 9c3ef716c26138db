//! `LogitsModel`: what the objective needs from a denoiser — logits at the completion
//! positions of (partially masked) sequences. Implemented for the LLaDA policy (adapter on),
//! for its reference view (adapter off), and by test oracles.

use burn::tensor::{backend::Backend, Bool, Int, Tensor};
use dllm_model::{ForwardOptions, Llada, LogitPositions};

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

fn llada_logits<B: Backend>(
    model: &Llada<B>,
    input_ids: Tensor<B, 2, Int>,
    prompt_len: usize,
    key_padding: Option<Tensor<B, 2, Bool>>,
    adapter: bool,
) -> Tensor<B, 3> {
    let seq = input_ids.dims()[1];
    let options = ForwardOptions {
        key_padding,
        adapter,
    };
    // Memory-aware: the LM head runs only at completion positions.
    model.forward_with(input_ids, &options, &LogitPositions::Range(prompt_len..seq))
}

/// LLaDA's logits at flat completion positions `r * gen_len + j`, `[n, vocab]`: the LM head runs
/// only there.
fn llada_logits_at<B: Backend>(
    model: &Llada<B>,
    input_ids: Tensor<B, 2, Int>,
    prompt_len: usize,
    key_padding: Option<Tensor<B, 2, Bool>>,
    positions: Tensor<B, 1, Int>,
    adapter: bool,
) -> Tensor<B, 2> {
    let seq = input_ids.dims()[1];
    let gen_len = seq - prompt_len;
    // r * gen_len + j  ->  r * seq + prompt_len + j
    let rows = positions.clone().div_scalar(gen_len as i64);
    let flat = positions + rows.mul_scalar(prompt_len as i64) + prompt_len as i64;
    let options = ForwardOptions {
        key_padding,
        adapter,
    };
    let logits = model.forward_with(input_ids, &options, &LogitPositions::Flat(flat));
    let [_, n, vocab] = logits.dims();
    logits.reshape([n, vocab])
}

/// The policy: LLaDA with its LoRA adapters (if any) enabled.
impl<B: Backend> LogitsModel<B> for Llada<B> {
    fn completion_logits(
        &self,
        input_ids: Tensor<B, 2, Int>,
        prompt_len: usize,
        key_padding: Option<Tensor<B, 2, Bool>>,
    ) -> Tensor<B, 3> {
        llada_logits(self, input_ids, prompt_len, key_padding, true)
    }

    fn completion_logits_at(
        &self,
        input_ids: Tensor<B, 2, Int>,
        prompt_len: usize,
        key_padding: Option<Tensor<B, 2, Bool>>,
        positions: Tensor<B, 1, Int>,
    ) -> Tensor<B, 2> {
        llada_logits_at(self, input_ids, prompt_len, key_padding, positions, true)
    }

    fn mask_token_id(&self) -> u32 {
        self.config.mask_token_id
    }

    fn vocab_size(&self) -> usize {
        self.config.embed_size()
    }
}

/// DMPO's reference policy: the same LLaDA weights with every adapter disabled (spec §3).
#[derive(Debug, Clone, Copy)]
pub struct AdapterDisabled<'a, B: Backend>(pub &'a Llada<B>);

impl<B: Backend> LogitsModel<B> for AdapterDisabled<'_, B> {
    fn completion_logits(
        &self,
        input_ids: Tensor<B, 2, Int>,
        prompt_len: usize,
        key_padding: Option<Tensor<B, 2, Bool>>,
    ) -> Tensor<B, 3> {
        llada_logits(self.0, input_ids, prompt_len, key_padding, false)
    }

    fn completion_logits_at(
        &self,
        input_ids: Tensor<B, 2, Int>,
        prompt_len: usize,
        key_padding: Option<Tensor<B, 2, Bool>>,
        positions: Tensor<B, 1, Int>,
    ) -> Tensor<B, 2> {
        llada_logits_at(self.0, input_ids, prompt_len, key_padding, positions, false)
    }

    fn mask_token_id(&self) -> u32 {
        self.0.config.mask_token_id
    }

    fn vocab_size(&self) -> usize {
        self.0.config.embed_size()
    }
}
