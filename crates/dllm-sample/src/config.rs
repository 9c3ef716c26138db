//! Sampler settings (docs/algorithm.md §2).

use serde::{Deserialize, Serialize};

/// How the confidence that ranks masked positions is computed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Remasking {
    /// `softmax(logits)[x0]`, untempered (LLaDA's default).
    #[default]
    LowConfidence,
    /// `U(0, 1)`.
    Random,
}

impl std::str::FromStr for Remasking {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "low_confidence" => Ok(Self::LowConfidence),
            "random" => Ok(Self::Random),
            o => Err(format!(
                "unknown remasking `{o}` (low_confidence or random)"
            )),
        }
    }
}

/// Key/value caching (Fast-dLLM).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum CacheKind {
    /// Every step runs the whole sequence: exactly LLaDA.
    #[default]
    None,
    /// Full pass at each block start; later steps re-run only `[block | suffix]`.
    Prefix,
    /// Full pass at each block start; later steps re-run only the block.
    Dual,
}

impl std::str::FromStr for CacheKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "none" => Ok(Self::None),
            "prefix" => Ok(Self::Prefix),
            "dual" => Ok(Self::Dual),
            o => Err(format!("unknown cache `{o}` (none, prefix or dual)")),
        }
    }
}

/// Everything `generate` needs besides the model and prompts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SamplerConfig {
    /// Number of tokens to generate (`L`).
    pub gen_length: usize,
    /// Tokens per semi-autoregressive block; must divide `gen_length`.
    pub block_length: usize,
    /// Total denoising steps, split evenly over blocks; must be a multiple of the block count.
    pub steps: usize,
    /// Gumbel-max temperature; 0 is argmax.
    pub temperature: f64,
    /// Confidence used to pick positions.
    pub remasking: Remasking,
    /// Classifier-free guidance scale; 0 disables it.
    pub cfg_scale: f64,
    /// Key/value caching.
    pub cache: CacheKind,
    /// With a cache: refresh it with a full pass every this many steps inside a block
    /// (`None` = only at block starts, as Fast-dLLM).
    pub refresh_every: Option<usize>,
    /// Confidence-threshold parallel decoding: commit every masked position of the block
    /// whose confidence reaches this (`>=`, as Fast-dLLM), at least one per step (`steps` is
    /// then ignored).
    pub threshold: Option<f64>,
    /// Hide left padding from attention (off reproduces the reference, which attends to it).
    pub padding_mask: bool,
    /// LLaDA's `logits_eos_inf`: the EOS logit is set to `-inf` before the candidates are drawn,
    /// so EOS is never generated.
    pub logits_eos_inf: bool,
    /// LLaDA's `confidence_eos_eot_inf`: after the candidates are drawn, the confidence is the
    /// softmax of the logits with `eot_token_id`'s set to `-inf` (an EOT candidate gets
    /// confidence 0; LLaDA's line also sets EOS in the noised logits, which nothing reads after).
    pub confidence_eos_eot_inf: bool,
    /// The end-of-turn id `confidence_eos_eot_inf` needs (`<|eot_id|>`, 126348 for LLaDA-8B).
    pub eot_token_id: Option<u32>,
    /// Whether the LoRA adapter is active (true = the policy being trained).
    pub adapter: bool,
    /// Seed of the sampler's random numbers (Gumbel noise, random remasking).
    pub seed: u64,
}

impl Default for SamplerConfig {
    /// LLaDA's evaluation setting at length 256: block 32, 128 steps, greedy, low confidence.
    fn default() -> Self {
        Self {
            gen_length: 256,
            block_length: 32,
            steps: 128,
            temperature: 0.0,
            remasking: Remasking::LowConfidence,
            cfg_scale: 0.0,
            cache: CacheKind::None,
            refresh_every: None,
            threshold: None,
            padding_mask: false,
            logits_eos_inf: false,
            confidence_eos_eot_inf: false,
            eot_token_id: None,
            adapter: true,
            seed: 0,
        }
    }
}

impl SamplerConfig {
    /// Checks the divisibility rules of LLaDA's `generate`.
    pub fn validate(&self) -> Result<(), crate::SampleError> {
        let bad = |m: String| Err(crate::SampleError::Config(m));
        if self.gen_length == 0 || self.block_length == 0 {
            return bad("gen_length and block_length must be positive".into());
        }
        if !self.gen_length.is_multiple_of(self.block_length) {
            return bad(format!(
                "gen_length {} is not a multiple of block_length {}",
                self.gen_length, self.block_length
            ));
        }
        if self.steps > self.gen_length {
            return bad(format!(
                "steps {} exceeds gen_length {}: every step commits at least one token, so more \
                 steps than tokens cannot do work",
                self.steps, self.gen_length
            ));
        }
        let blocks = self.gen_length / self.block_length;
        if self.threshold.is_none() && (self.steps == 0 || !self.steps.is_multiple_of(blocks)) {
            return bad(format!(
                "steps {} must be a positive multiple of the number of blocks {blocks}",
                self.steps
            ));
        }
        if self.confidence_eos_eot_inf && self.eot_token_id.is_none() {
            return bad("confidence_eos_eot_inf needs eot_token_id (126348 for LLaDA-8B)".into());
        }
        if !self.temperature.is_finite() || self.temperature < 0.0 {
            return bad(format!("temperature {} must be >= 0", self.temperature));
        }
        if !self.cfg_scale.is_finite() || self.cfg_scale < 0.0 {
            return bad(format!("cfg_scale {} must be >= 0", self.cfg_scale));
        }
        if let Some(t) = self.threshold {
            if !(0.0..=1.0).contains(&t) {
                return bad(format!("threshold {t} must be in [0, 1]"));
            }
        }
        if self.refresh_every == Some(0) {
            return bad("refresh_every must be positive".into());
        }
        Ok(())
    }

    /// Steps per block (`steps / num_blocks`).
    pub fn steps_per_block(&self) -> usize {
        self.steps / (self.gen_length / self.block_length)
    }
}
