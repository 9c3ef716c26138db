//! Sampler settings (docs/algorithm.md §2).

use serde::{Deserialize, Serialize};

/// WINO's default acceptance threshold (the reference's `sampler_threshold_wino`).
pub const DEFAULT_WINO_THRESHOLD: f64 = 0.6;

/// WINO's default re-masking threshold (the reference's `sampler_threshold_wino_back`).
pub const DEFAULT_WINO_THRESHOLD_BACK: f64 = 0.9;

/// The smallest positive temperature: logits up to about 1e8 divided by it stay finite in f32.
pub const MIN_TEMPERATURE: f64 = 1e-30;

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

/// Which reverse process decides what to unmask at each step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Method {
    /// LLaDA's `generate`: blocks, a uniform number of tokens per step, `remasking`.
    #[default]
    Llada,
    /// Dream's `diffusion_generate`: timesteps `linspace(1, eps, steps + 1)`, `alg` picks the
    /// positions; with a cache, Fast-dLLM's block-wise Dream sampler (`crate::dream`).
    Dream,
    /// WINO (wide-in, narrow-out; `crate::wino`): a shadow of the block, made of mask tokens
    /// after the sequence, re-scores accepted tokens; a step accepts every masked position
    /// above `wino_threshold` (capped) and re-masks accepted ones whose shadow confidence falls
    /// below `wino_threshold_back`. LLaDA models; `steps` is not used.
    Wino,
    /// ROAR (random-order autoregression per block; `crate::roar`): one token per step, at a
    /// position drawn uniformly from the block's masked ones, sampled from the model at
    /// `temperature`; records each token's log-probability. LLaDA models; `steps` is not used.
    Roar,
}

impl Method {
    /// The family's own sampler: Dream's for Dream models, LLaDA's otherwise.
    pub fn of_family(family: dllm_model::Family) -> Self {
        match family {
            dllm_model::Family::Dream => Self::Dream,
            dllm_model::Family::Llada => Self::Llada,
        }
    }
}

impl std::str::FromStr for Method {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "llada" => Ok(Self::Llada),
            "dream" => Ok(Self::Dream),
            "wino" => Ok(Self::Wino),
            "roar" => Ok(Self::Roar),
            o => Err(format!("unknown method `{o}` (llada, dream, wino or roar)")),
        }
    }
}

/// Dream's `alg`: which positions of a step are unmasked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum DreamAlg {
    /// Each masked position independently with probability `1 - s / t`.
    Origin,
    /// The most probable candidates (`max p`).
    MaskgitPlus,
    /// The largest margin between the two most probable tokens (`p1 - p2`).
    TopkMargin,
    /// The lowest entropy (`sum p log p`, highest first); Dream's recommended setting.
    #[default]
    Entropy,
}

impl std::str::FromStr for DreamAlg {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "origin" => Ok(Self::Origin),
            "maskgit_plus" => Ok(Self::MaskgitPlus),
            "topk_margin" => Ok(Self::TopkMargin),
            "entropy" => Ok(Self::Entropy),
            o => Err(format!(
                "unknown alg `{o}` (origin, maskgit_plus, topk_margin or entropy)"
            )),
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
    /// Factor-based parallel decoding (Fast-dLLM's `factor`): per row, with the masked positions
    /// of the block sorted by confidence, the `i`-th (from 0) is committed while its confidence
    /// reaches `1 - factor / (i + 2)`, the first always (`steps` is then ignored). When the
    /// first position below its bar is the last candidate, every candidate is committed, as
    /// the reference does.
    pub factor: Option<f64>,
    /// WINO: a masked position is accepted when its confidence is above this (strict `>`;
    /// `sampler_threshold_wino`, default 0.6).
    pub wino_threshold: Option<f64>,
    /// WINO: an accepted token is re-masked when its shadow confidence is below this (strict
    /// `<`; `sampler_threshold_wino_back`, default 0.9).
    pub wino_threshold_back: Option<f64>,
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
    /// The reverse process: LLaDA's (default) or Dream's.
    pub method: Method,
    /// Dream: which positions a step unmasks.
    pub alg: DreamAlg,
    /// Dream: `0` takes the top positions by confidence; above 0 draws them without replacement
    /// from `softmax(confidence / alg_temp)`.
    pub alg_temp: f64,
    /// Dream: the last timestep of `linspace(1, eps, steps + 1)`.
    pub eps: f64,
    /// Dream: nucleus filtering of the candidates' distribution (`None` or 1: off).
    pub top_p: Option<f64>,
    /// Dream: keep only the `top_k` most probable tokens (`None`: off).
    pub top_k: Option<usize>,
    /// ROAR: also score each drawn token under the model without its adapter (the reference
    /// policy), one more pass per step (DMPO's `compute_ref_log_prob_elbo = false`). Set by the
    /// trainer from `dmpo.rollout_elbo = false`; not read from the sampler's own settings.
    #[serde(skip)]
    pub reference_log_probs: bool,
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
            factor: None,
            wino_threshold: None,
            wino_threshold_back: None,
            padding_mask: false,
            logits_eos_inf: false,
            confidence_eos_eot_inf: false,
            eot_token_id: None,
            adapter: true,
            seed: 0,
            method: Method::Llada,
            alg: DreamAlg::Entropy,
            alg_temp: 0.0,
            eps: 1e-3,
            top_p: None,
            top_k: None,
            reference_log_probs: false,
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
        let uses_steps = matches!(self.method, Method::Llada | Method::Dream);
        if uses_steps && self.steps > self.gen_length {
            return bad(format!(
                "steps {} exceeds gen_length {}: every step commits at least one token, so more \
                 steps than tokens cannot do work",
                self.steps, self.gen_length
            ));
        }
        let blocks = self.gen_length / self.block_length;
        let parallel = self.threshold.is_some() || self.factor.is_some();
        if uses_steps && !parallel && (self.steps == 0 || !self.steps.is_multiple_of(blocks)) {
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
        if self.temperature > 0.0 && self.temperature < MIN_TEMPERATURE {
            // Dream divides the logits by the temperature: below this, f32 logits overflow.
            return bad(format!(
                "temperature {:?} is too small to divide logits by in f32 (0 is greedy decoding; \
                 otherwise at least {MIN_TEMPERATURE:e})",
                self.temperature
            ));
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
        if let Some(f) = self.factor {
            if !(f.is_finite() && f > 0.0) {
                return bad(format!("factor {f} must be a positive finite number"));
            }
            if self.threshold.is_some() {
                return bad(
                    "threshold and factor are two rules for the same choice: set one".into(),
                );
            }
        }
        for (name, value) in [
            ("wino_threshold", self.wino_threshold),
            ("wino_threshold_back", self.wino_threshold_back),
        ] {
            if let Some(t) = value {
                if !(0.0..=1.0).contains(&t) {
                    return bad(format!("{name} {t} must be in [0, 1]"));
                }
            }
        }
        if self.reference_log_probs && self.method != Method::Roar {
            return bad(
                "per-token reference log-probabilities come from ROAR's draws: method must be roar"
                    .into(),
            );
        }
        match self.method {
            Method::Llada => {
                self.refuse_dream_settings()?;
                self.refuse_wino_settings()
            }
            Method::Dream => {
                self.refuse_wino_settings()?;
                self.validate_dream()
            }
            Method::Wino => {
                self.refuse_dream_settings()?;
                self.refuse_settings_of_other_samplers("wino")
            }
            Method::Roar => {
                self.refuse_dream_settings()?;
                self.refuse_wino_settings()?;
                self.refuse_settings_of_other_samplers("roar")
            }
        }
    }

    /// WINO's thresholds left unset when the method is another (they would be ignored).
    fn refuse_wino_settings(&self) -> Result<(), crate::SampleError> {
        let set = [
            ("wino_threshold", self.wino_threshold.is_some()),
            ("wino_threshold_back", self.wino_threshold_back.is_some()),
        ];
        refuse_any(&set, |field| {
            format!("{field} is a setting of WINO's sampler: set method = \"wino\" to use it")
        })
    }

    /// The settings WINO's and ROAR's reference loops do not have, refused by name: they
    /// decode without a cache, rank by the untempered probability and have no step schedule.
    fn refuse_settings_of_other_samplers(&self, method: &str) -> Result<(), crate::SampleError> {
        let d = Self::default();
        let set = [
            ("cache", self.cache != CacheKind::None),
            ("refresh_every", self.refresh_every.is_some()),
            ("threshold", self.threshold.is_some()),
            ("factor", self.factor.is_some()),
            ("remasking", self.remasking != d.remasking),
            ("logits_eos_inf", self.logits_eos_inf),
            ("confidence_eos_eot_inf", self.confidence_eos_eot_inf),
            ("cfg_scale", method == "wino" && self.cfg_scale > 0.0),
        ];
        refuse_any(&set, |field| {
            format!(
                "{field} is not a setting of the {method} sampler (docs/algorithm.md §2.10): \
                 leave it unset"
            )
        })
    }

    /// WINO's thresholds (`sampler_threshold_wino`, `sampler_threshold_wino_back`), defaults
    /// filled in.
    pub fn wino_thresholds(&self) -> (f64, f64) {
        (
            self.wino_threshold.unwrap_or(DEFAULT_WINO_THRESHOLD),
            self.wino_threshold_back
                .unwrap_or(DEFAULT_WINO_THRESHOLD_BACK),
        )
    }

    /// Dream's settings left at their defaults when the method is another (they would be ignored).
    fn refuse_dream_settings(&self) -> Result<(), crate::SampleError> {
        let d = Self::default();
        let set = [
            ("alg", self.alg != d.alg),
            ("alg_temp", self.alg_temp != d.alg_temp),
            ("eps", self.eps != d.eps),
            ("top_p", self.top_p.is_some()),
            ("top_k", self.top_k.is_some()),
        ];
        refuse_any(&set, |field| {
            format!("{field} is a setting of Dream's sampler: set method = \"dream\" to use it")
        })
    }

    /// The combinations Dream's samplers (`diffusion_generate`, Fast-dLLM's block-wise one) define.
    fn validate_dream(&self) -> Result<(), crate::SampleError> {
        let bad = |m: String| Err(crate::SampleError::Config(m));
        if !(self.eps > 0.0 && self.eps < 1.0) {
            return bad(format!("eps {} must be in (0, 1)", self.eps));
        }
        if !self.alg_temp.is_finite() || self.alg_temp < 0.0 {
            return bad(format!("alg_temp {} must be >= 0", self.alg_temp));
        }
        if let Some(p) = self.top_p {
            if !(p > 0.0 && p <= 1.0) {
                return bad(format!("top_p {p} must be in (0, 1]"));
            }
        }
        if self.top_k == Some(0) {
            return bad("top_k must be positive".into());
        }
        if self.cfg_scale > 0.0 || self.remasking != Remasking::LowConfidence {
            return bad("cfg_scale and remasking are LLaDA's; Dream's sampler has alg".into());
        }
        if self.logits_eos_inf || self.confidence_eos_eot_inf || self.refresh_every.is_some() {
            return bad(
                "logits_eos_inf, confidence_eos_eot_inf and refresh_every are LLaDA's settings"
                    .into(),
            );
        }
        if self.factor.is_some() {
            return bad(
                "factor is Fast-dLLM's rule for LLaDA's sampler; Dream's block-wise sampler has \
                 threshold"
                    .into(),
            );
        }
        match (self.cache, self.threshold) {
            (CacheKind::None, Some(_)) => bad(
                "threshold decoding is Fast-dLLM's block-wise Dream sampler: set cache = \"prefix\" \
                 or \"dual\""
                    .into(),
            ),
            (CacheKind::None, None) => Ok(()),
            (_, None) if self.alg != DreamAlg::Entropy => bad(format!(
                "with a cache, Dream's block-wise sampler ranks positions by entropy: alg must be \
                 entropy (is {:?})",
                self.alg
            )),
            (_, Some(_)) if self.alg != DreamAlg::MaskgitPlus => bad(format!(
                "threshold decoding ranks positions by their probability: alg must be \
                 maskgit_plus (is {:?})",
                self.alg
            )),
            _ => Ok(()),
        }
    }

    /// A short description of the sampler and its deciding settings, for tables:
    /// `llada`, `llada prefix factor 1`, `wino 0.6/0.9`, `roar`, ...
    pub fn label(&self) -> String {
        let method = match self.method {
            Method::Llada => "llada",
            Method::Dream => "dream",
            Method::Wino => {
                let (t, b) = self.wino_thresholds();
                return format!("wino {t}/{b}");
            }
            Method::Roar => return "roar".into(),
        };
        let mut label = method.to_string();
        match self.cache {
            CacheKind::None => {}
            CacheKind::Prefix => label.push_str(" prefix"),
            CacheKind::Dual => label.push_str(" dual"),
        }
        if let Some(t) = self.threshold {
            label.push_str(&format!(" threshold {t}"));
        }
        if let Some(f) = self.factor {
            label.push_str(&format!(" factor {f}"));
        }
        label
    }

    /// Steps per block (`steps / num_blocks`).
    pub fn steps_per_block(&self) -> usize {
        self.steps / (self.gen_length / self.block_length)
    }
}

/// Refuses the first of `settings` (name, whether set) that is set, with `message(name)`.
fn refuse_any(
    settings: &[(&str, bool)],
    message: impl Fn(&str) -> String,
) -> Result<(), crate::SampleError> {
    match settings.iter().find(|(_, on)| *on) {
        Some((field, _)) => Err(crate::SampleError::Config(message(field))),
        None => Ok(()),
    }
}
