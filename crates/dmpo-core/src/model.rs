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

    fn mask_token_id(&self) -> u32 {
        self.0.config.mask_token_id
    }

    fn vocab_size(&self) -> usize {
        self.0.config.embed_size()
    }
}
