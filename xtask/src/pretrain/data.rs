//! The pretraining data stream and its token ids: one independent stream per step, and the ids
//! of prompts and completions (the true or the flawed answer, [`PretrainTask::target_text`]).

use anyhow::ensure;
use dllm_model::ChatTokenizer;
use dmpo_train::recipe::PromptStyle;
use dmpo_train::tasks::prompt_ids;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rewards::TaskItem;

use super::task::PretrainTask;
use super::MAX_PROMPT_TOKENS;

/// The data stream of step `step`: independent of every other step, fixed by the seed.
pub fn step_rng(seed: u64, step: usize) -> ChaCha8Rng {
    ChaCha8Rng::seed_from_u64(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ (step as u64 + 1))
}

/// Prompt and completion ids of training items, every prompt `prompt_len` tokens.
pub struct Encoder<'a> {
    /// The task the items belong to.
    pub task: PretrainTask,
    /// The trained tokenizer.
    pub tokenizer: &'a ChatTokenizer,
    /// The length every prompt has.
    pub prompt_len: usize,
    /// The EOS id that pads completions to the task's generation length.
    pub eos: u32,
}

impl Encoder<'_> {
    /// The prompt ids of `item`, left-padded with EOS to `prompt_len` as the samplers pad a
    /// batch's shorter prompts; refused if longer.
    pub fn prompt(&self, item: &TaskItem) -> anyhow::Result<Vec<u32>> {
        let ids = prompt_ids(
            self.tokenizer,
            item,
            PromptStyle::Compact,
            false,
            MAX_PROMPT_TOKENS,
        )?;
        ensure!(
            ids.len() <= self.prompt_len,
            "prompt of {} tokens, longer than the held-out prompts' {}",
            ids.len(),
            self.prompt_len
        );
        let mut padded = vec![self.eos; self.prompt_len - ids.len()];
        padded.extend(ids);
        Ok(padded)
    }

    /// The completion ids of `item`, padded with EOS to the task's generation length.
    pub fn completion(&self, item: &TaskItem, flawed: bool) -> anyhow::Result<Vec<u32>> {
        let gen_length = self.task.gen_length();
        let mut ids = self
            .tokenizer
            .encode(&self.task.target_text(item, flawed)?)?;
        ensure!(
            ids.len() <= gen_length,
            "target of {} tokens does not fit gen_length {gen_length}",
            ids.len()
        );
        ids.resize(gen_length, self.eos);
        Ok(ids)
    }
}
