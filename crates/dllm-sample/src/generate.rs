//! LLaDA's `generate` (docs/algorithm.md §2), exact by default, with Fast-dLLM caches and threshold
//! decoding; with `method = dream` the same entry points run Dream's sampler ([`crate::dream`]).
//!
//! The loop keeps the sequences on the host and, each step, asks the model for logits only at
//! the positions that can be committed (the current block, plus any earlier position that is
//! still masked because the model predicted the mask token there). Everything else about a step
//! is the reference's: Gumbel-max candidates, untempered softmax confidence (or uniform noise),
//! `-inf` confidence outside the candidates, and the top-`k` commit of `get_num_transfer_tokens`.

use std::ops::Range;

use burn::tensor::{backend::Backend, Bool, Int, Tensor, TensorData};
use dllm_model::{DiffusionLm, ForwardOptions, KvCache, LogitPositions};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::config::{CacheKind, Method, Remasking, SamplerConfig};
use crate::schedule::num_transfer_tokens;
use crate::SampleError;

/// What `generate` returns: the completions and what training needs to know about them.
#[derive(Debug, Clone, PartialEq)]
pub struct Generation {
    /// Generated ids per row, `gen_length` each (a position the model left masked keeps the mask id).
    pub completions: Vec<Vec<u32>>,
    /// Prompt ids per row, left-padded with `pad_token_id` to a common length.
    pub padded_prompts: Vec<Vec<u32>>,
    /// Number of left pad tokens per row.
    pub pad_lengths: Vec<usize>,
    /// Global step at which each completion position was committed (`None`: still masked).
    pub decode_step: Vec<Vec<Option<usize>>>,
    /// First end-of-sequence position inside each completion.
    pub eos_position: Vec<Option<usize>>,
    /// Model evaluations (forward passes over the batch; classifier-free guidance counts two).
    pub nfe: usize,
    /// Denoising steps taken.
    pub steps: usize,
    /// ROAR: the log-probability of each completion token under the sampling policy when it
    /// was drawn (untempered; 0 where nothing was drawn); `None` for the other samplers.
    pub token_log_probs: Option<Vec<Vec<f32>>>,
    /// ROAR with [`SamplerConfig::reference_log_probs`]: the same under the model without its
    /// adapter, on the same inputs.
    pub reference_token_log_probs: Option<Vec<Vec<f32>>>,
}

impl Generation {
    /// Full sequences `[padded prompt | completion]` per row.
    pub fn sequences(&self) -> Vec<Vec<u32>> {
        self.padded_prompts
            .iter()
            .zip(&self.completions)
            .map(|(p, c)| p.iter().chain(c).copied().collect())
            .collect()
    }

    /// Common (padded) prompt length.
    pub fn prompt_len(&self) -> usize {
        self.padded_prompts.first().map_or(0, Vec::len)
    }
}

/// The state shown to an observer after every step (for streaming output).
#[derive(Debug)]
pub struct StepEvent<'a> {
    /// Global step index (0-based) just taken.
    pub step: usize,
    /// Current block.
    pub block: usize,
    /// Current completions (mask id where not yet decoded).
    pub completions: &'a [Vec<u32>],
}

/// Where a batch's rows sit in a larger batch split across workers (data-parallel peers): the
/// global index of its first row, and the prompt length of the whole batch. Each row draws its
/// noise from its own random stream (`config.seed`, stream = the row's global index), and every
/// prompt is left-padded to `prompt_len`, so a row is generated the same whichever worker
/// generates it alongside whichever other rows.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RowPlacement {
    /// Global index of the first row.
    pub first_row: usize,
    /// The common prompt length to left-pad to (`None`: the longest of these prompts).
    pub prompt_len: Option<usize>,
}

/// Generates completions for `prompts` (token ids, any lengths) with `config`.
pub fn generate<B: Backend>(
    model: &DiffusionLm<B>,
    prompts: &[Vec<u32>],
    config: &SamplerConfig,
) -> Result<Generation, SampleError> {
    generate_with_observer(model, prompts, config, &mut |_| {})
}

/// [`generate`], calling `observer` after every step.
pub fn generate_with_observer<B: Backend>(
    model: &DiffusionLm<B>,
    prompts: &[Vec<u32>],
    config: &SamplerConfig,
    observer: &mut dyn FnMut(&StepEvent<'_>),
) -> Result<Generation, SampleError> {
    config.validate()?;
    Sampler::new(model, prompts, config, RowPlacement::default())?.run(observer)
}

/// [`generate`] for the rows `placement` places in a larger batch.
pub fn generate_rows<B: Backend>(
    model: &DiffusionLm<B>,
    prompts: &[Vec<u32>],
    config: &SamplerConfig,
    placement: RowPlacement,
) -> Result<Generation, SampleError> {
    config.validate()?;
    Sampler::new(model, prompts, config, placement)?.run(&mut |_| {})
}

/// The state of one generation, shared by LLaDA's loop (here) and Dream's (`crate::dream`).
pub(crate) struct Sampler<'m, B: Backend> {
    pub(crate) model: &'m DiffusionLm<B>,
    pub(crate) config: &'m SamplerConfig,
    pub(crate) device: B::Device,
    pub(crate) batch: usize,
    pub(crate) prompt_len: usize,
    pub(crate) total: usize,
    pub(crate) mask_id: i64,
    /// Sequences `[batch * total]`.
    pub(crate) x: Vec<i64>,
    /// Positions that are prompt (never masked for CFG's unconditional input).
    pub(crate) pad_lengths: Vec<usize>,
    pub(crate) decode_step: Vec<Vec<Option<usize>>>,
    /// One random stream per row ([`RowPlacement`]).
    pub(crate) rngs: Vec<ChaCha8Rng>,
    pub(crate) cache: KvCache<B>,
    pub(crate) nfe: usize,
}

impl<'m, B: Backend> Sampler<'m, B> {
    fn new(
        model: &'m DiffusionLm<B>,
        prompts: &[Vec<u32>],
        config: &'m SamplerConfig,
        placement: RowPlacement,
    ) -> Result<Self, SampleError> {
        if prompts.is_empty() {
            return Err(SampleError::Input("no prompts".into()));
        }
        if config.method == Method::Llada
            && config.cache != CacheKind::None
            && model.config.family.shifts_logits()
        {
            // A cached span's first logit would be its own position's, not its left neighbour's.
            return Err(SampleError::Config(format!(
                "LLaDA's cached sampler cannot run a {} model (its logits are shifted); use \
                 method = \"dream\" (Fast-dLLM's block-wise Dream sampler) or cache = \"none\"",
                model.config.family.name()
            )));
        }
        let vocab = model.config.embed_size();
        let mask = model.config.mask_token_id;
        for (i, p) in prompts.iter().enumerate() {
            if p.is_empty() {
                return Err(SampleError::Input(format!("prompt {i} is empty")));
            }
            if let Some(bad) = p.iter().find(|&&t| t as usize >= vocab || t == mask) {
                return Err(SampleError::Input(format!(
                    "prompt {i} contains id {bad}, outside the vocabulary ({vocab}) or the mask id"
                )));
            }
        }
        let longest = prompts.iter().map(Vec::len).max().unwrap_or(0);
        let prompt_len = match placement.prompt_len {
            Some(len) if len < longest => {
                return Err(SampleError::Input(format!(
                    "a prompt of {longest} tokens is longer than the batch's prompt length {len}"
                )))
            }
            Some(len) => len,
            None => longest,
        };
        let total = prompt_len.saturating_add(config.gen_length);
        let context = model.config.max_sequence_length;
        if total > context {
            return Err(SampleError::Input(format!(
                "prompt ({prompt_len} tokens) + gen_length ({}) = {total} tokens exceeds the \
                 model's context (max_sequence_length {context})",
                config.gen_length
            )));
        }
        let pad = model.config.pad_token_id as i64;
        let mut x = Vec::with_capacity(prompts.len() * total);
        let mut pad_lengths = Vec::with_capacity(prompts.len());
        for p in prompts {
            let n_pad = prompt_len - p.len();
            pad_lengths.push(n_pad);
            x.extend(std::iter::repeat_n(pad, n_pad));
            x.extend(p.iter().map(|&t| t as i64));
            x.extend(std::iter::repeat_n(mask as i64, config.gen_length));
        }
        Ok(Self {
            device: model.wte.val().device(),
            model,
            config,
            batch: prompts.len(),
            prompt_len,
            total,
            mask_id: mask as i64,
            x,
            pad_lengths,
            decode_step: vec![vec![None; config.gen_length]; prompts.len()],
            rngs: (0..prompts.len())
                .map(|b| {
                    let mut rng = ChaCha8Rng::seed_from_u64(config.seed);
                    rng.set_stream((placement.first_row + b) as u64);
                    rng
                })
                .collect(),
            cache: KvCache::new(),
            nfe: 0,
        })
    }

    fn run(mut self, observer: &mut dyn FnMut(&StepEvent<'_>)) -> Result<Generation, SampleError> {
        match self.config.method {
            Method::Dream => return self.run_dream(observer),
            Method::Wino => return self.run_wino(observer),
            Method::Roar => return self.run_roar(observer),
            Method::Llada => {}
        }
        let c = self.config;
        let num_blocks = c.gen_length / c.block_length;
        let mut step = 0usize;
        for block in 0..num_blocks {
            let start = self.prompt_len + block * c.block_length;
            let end = start + c.block_length;
            let schedule: Vec<Vec<usize>> = (0..self.batch)
                .map(|b| {
                    let masked = self.row(b)[start..end]
                        .iter()
                        .filter(|&&t| t == self.mask_id)
                        .count();
                    num_transfer_tokens(masked, c.steps_per_block().max(1))
                })
                .collect();
            // Threshold and factor decoding run until the block is decoded (the reference's
            // `while True`), here at most `PARALLEL_STEPS_PER_POSITION` steps per position.
            let parallel = c.threshold.is_some() || c.factor.is_some();
            let max_steps = match parallel {
                true => c.block_length * PARALLEL_STEPS_PER_POSITION,
                false => c.steps_per_block(),
            };
            for s in 0..max_steps {
                if parallel && !self.any_masked(start..end) {
                    break;
                }
                let refresh = s == 0 || c.refresh_every.is_some_and(|r| s % r == 0);
                let (lo, x0, conf) = self.step_predictions(start, end, refresh)?;
                let ks: Vec<usize> = (0..self.batch)
                    .map(|b| schedule[b].get(s).copied().unwrap_or(0))
                    .collect();
                let progressed = self.commit(lo, end, &x0, &conf, &ks, step);
                self.observe(observer, step, block);
                step += 1;
                let next_refresh = c.refresh_every.is_some_and(|r| (s + 1) % r == 0);
                let same_pass_next = c.cache == CacheKind::None || !(refresh || next_refresh);
                if parallel && !progressed && same_pass_next && self.repeats_when_unchanged() {
                    // Every committed position got the mask id itself: the sequence is
                    // unchanged and the next step runs the same pass, so each later step would
                    // be this one again (the reference loops forever). The block ends with
                    // those positions masked.
                    break;
                }
            }
        }
        Ok(self.finish(step))
    }

    /// The generation as it stands after `steps` steps.
    pub(crate) fn finish(self, steps: usize) -> Generation {
        let completions = self.completions();
        let eos = self.model.config.eos_token_id;
        Generation {
            eos_position: completions
                .iter()
                .map(|c| c.iter().position(|&t| t == eos))
                .collect(),
            padded_prompts: (0..self.batch)
                .map(|b| {
                    self.row(b)[..self.prompt_len]
                        .iter()
                        .map(|&t| t as u32)
                        .collect()
                })
                .collect(),
            completions,
            pad_lengths: self.pad_lengths,
            decode_step: self.decode_step,
            nfe: self.nfe,
            steps,
            token_log_probs: None,
            reference_token_log_probs: None,
        }
    }

    /// Shows `observer` the completions after step `step` of block `block`.
    pub(crate) fn observe(
        &self,
        observer: &mut dyn FnMut(&StepEvent<'_>),
        step: usize,
        block: usize,
    ) {
        let completions = self.completions();
        observer(&StepEvent {
            step,
            block,
            completions: &completions,
        });
    }

    /// Writes `token` at position `pos` of row `b` and records the step that decoded it; a mask
    /// id leaves (or makes) the position masked, with no step.
    pub(crate) fn put(&mut self, b: usize, pos: usize, token: i64, step: usize) {
        self.x[b * self.total + pos] = token;
        self.decode_step[b][pos - self.prompt_len] = (token != self.mask_id).then_some(step);
    }

    pub(crate) fn row(&self, b: usize) -> &[i64] {
        &self.x[b * self.total..(b + 1) * self.total]
    }

    pub(crate) fn completions(&self) -> Vec<Vec<u32>> {
        (0..self.batch)
            .map(|b| {
                self.row(b)[self.prompt_len..]
                    .iter()
                    .map(|&t| t as u32)
                    .collect()
            })
            .collect()
    }

    fn any_masked(&self, range: Range<usize>) -> bool {
        (0..self.batch).any(|b| self.row(b)[range.clone()].contains(&self.mask_id))
    }

    /// First position, at or before `start`, from which masked positions must be scored.
    fn first_candidate(&self, start: usize) -> usize {
        (0..self.batch)
            .filter_map(|b| {
                self.row(b)[self.prompt_len..start]
                    .iter()
                    .position(|&t| t == self.mask_id)
            })
            .min()
            .map_or(start, |p| self.prompt_len + p)
    }

    /// Runs the model for one step and returns the first scored position with the candidate
    /// token and its confidence for every position of `[lo, end)`, row-major.
    fn step_predictions(
        &mut self,
        start: usize,
        end: usize,
        refresh: bool,
    ) -> Result<(usize, Vec<i64>, Vec<f32>), SampleError> {
        let lo = self.first_candidate(start);
        let cfg = self.config.cfg_scale > 0.0;
        let rows = if cfg { 2 * self.batch } else { self.batch };
        let ids = self.model_input(cfg);
        let options = ForwardOptions {
            key_padding: self.key_padding(rows),
            adapter: self.config.adapter,
        };
        let cached = self.config.cache != CacheKind::None;
        let logits = if cached && refresh {
            let ids = Tensor::<B, 2, Int>::from_data(
                TensorData::new(ids, [rows, self.total]),
                &self.device,
            );
            self.model.forward_fill_cache(
                ids,
                &options,
                &LogitPositions::Range(lo..end),
                &mut self.cache,
            )
        } else if cached && lo == start {
            let span_end = match self.config.cache {
                CacheKind::Dual => end,
                _ => self.total,
            };
            let span: Vec<i64> = (0..rows)
                .flat_map(|r| {
                    ids[r * self.total + start..r * self.total + span_end]
                        .iter()
                        .copied()
                })
                .collect();
            let span = Tensor::<B, 2, Int>::from_data(
                TensorData::new(span, [rows, span_end - start]),
                &self.device,
            );
            self.model.forward_cached(
                span,
                start,
                &options,
                &LogitPositions::Range(0..end - start),
                &self.cache,
            )
        } else {
            let ids = Tensor::<B, 2, Int>::from_data(
                TensorData::new(ids, [rows, self.total]),
                &self.device,
            );
            self.model
                .forward_with(ids, &options, &LogitPositions::Range(lo..end))
        };
        self.nfe += if cfg { 2 } else { 1 };
        let (x0, conf) = self.candidates(self.guided(logits))?;
        Ok((lo, x0, conf))
    }

    /// Logits of the input [`Self::model_input`] made: as they are, or with classifier-free
    /// guidance `un + (cfg + 1) * (cond - un)` (docs/algorithm.md §2).
    pub(crate) fn guided(&self, logits: Tensor<B, 3>) -> Tensor<B, 3> {
        if self.config.cfg_scale <= 0.0 {
            return logits;
        }
        let cond = logits.clone().narrow(0, 0, self.batch);
        let un = logits.narrow(0, self.batch, self.batch);
        un.clone() + (cond - un) * (self.config.cfg_scale + 1.0)
    }

    /// `[x]`, or `[x; x with the prompt masked]` for classifier-free guidance.
    pub(crate) fn model_input(&self, cfg: bool) -> Vec<i64> {
        let mut ids = self.x.clone();
        if cfg {
            for b in 0..self.batch {
                let mut row = self.row(b).to_vec();
                row[..self.prompt_len].fill(self.mask_id);
                ids.extend(row);
            }
        }
        ids
    }

    pub(crate) fn key_padding(&self, rows: usize) -> Option<Tensor<B, 2, Bool>> {
        let of: Vec<usize> = (0..rows).map(|r| r % self.batch).collect();
        self.key_padding_of(&of)
    }

    /// The key padding of the input made of rows `rows` (indices into the batch), in order.
    pub(crate) fn key_padding_of(&self, rows: &[usize]) -> Option<Tensor<B, 2, Bool>> {
        if !self.config.padding_mask || rows.iter().all(|&r| self.pad_lengths[r] == 0) {
            return None;
        }
        let mask: Vec<bool> = rows
            .iter()
            .flat_map(|&r| {
                let pad = self.pad_lengths[r];
                (0..self.total).map(move |i| i < pad)
            })
            .collect();
        Some(Tensor::from_data(
            TensorData::new(mask, [rows.len(), self.total]),
            &self.device,
        ))
    }

    /// Candidate tokens (Gumbel-max) and confidences for logits `[batch, n, vocab]`.
    pub(crate) fn candidates(
        &mut self,
        logits: Tensor<B, 3>,
    ) -> Result<(Vec<i64>, Vec<f32>), SampleError> {
        let rows: Vec<usize> = (0..logits.dims()[0]).collect();
        self.candidates_of(logits, &rows)
    }

    /// [`Self::candidates`] for logits `[rows.len(), n, vocab]` of the rows `rows` (indices into
    /// the batch): each row's draws come from its own stream.
    pub(crate) fn candidates_of(
        &mut self,
        logits: Tensor<B, 3>,
        rows: &[usize],
    ) -> Result<(Vec<i64>, Vec<f32>), SampleError> {
        let [_, n, vocab] = logits.dims();
        let t = self.config.temperature;
        let logits = if self.config.logits_eos_inf {
            let eos = self.model.config.eos_token_id as usize;
            without_token(logits, eos)
        } else {
            logits
        };
        let eot = self
            .config
            .confidence_eos_eot_inf
            .then_some(self.config.eot_token_id)
            .flatten()
            .map(|e| e as usize)
            .filter(|&e| e < vocab);
        let eot_logits = eot.map(|e| (e, logits.clone()));
        // docs/algorithm.md §2 step 2: argmax(logits + T * gumbel), gumbel = -ln(-ln u), in f64
        // as LLaDA and Fast-dLLM (on the CPU kernel; other backends add it in f32).
        // Row-major: row b's `n * vocab` draws come from its own stream.
        let noise: Option<Vec<f64>> = (t > 0.0).then(|| {
            let mut noise = Vec::with_capacity(rows.len() * n * vocab);
            for &r in rows {
                let rng = &mut self.rngs[r];
                noise.extend((0..n * vocab).map(|_| {
                    let u: f64 = rng.random::<f64>().max(f64::MIN_POSITIVE);
                    -(-u.ln()).ln() * t
                }));
            }
            noise
        });
        // docs/algorithm.md §2 step 3: confidence softmax(logits)[x0], untempered, or uniform draws.
        let low_confidence = self.config.remasking == Remasking::LowConfidence;
        // The confidences are computed for random remasking too: a NaN or infinite logit makes
        // its softmax NaN, and diverged or overflowing weights (f16) must not decode silently to
        // arbitrary tokens under either rule.
        let (x0, conf) = match dllm_model::ops::argmax_with_confidence(&logits, noise.as_deref()) {
            Some(fused) => fused,
            None => self.candidates_on_device(logits, noise),
        };
        check_finite(&conf, n)?;
        if low_confidence {
            let conf = match eot_logits {
                Some((eot, logits)) => confidence_without(logits, eot, &x0, conf),
                None => conf,
            };
            Ok((x0, conf))
        } else {
            let mut draws = Vec::with_capacity(rows.len() * n);
            for &r in rows {
                let rng = &mut self.rngs[r];
                draws.extend((0..n).map(|_| rng.random::<f32>()));
            }
            Ok((x0, draws))
        }
    }

    /// [`Self::candidates`]' argmax and its probability as tensor operations (backends without
    /// a fused kernel); only `[batch, n]` results are read back.
    fn candidates_on_device(
        &self,
        logits: Tensor<B, 3>,
        noise: Option<Vec<f64>>,
    ) -> (Vec<i64>, Vec<f32>) {
        let [batch, n, vocab] = logits.dims();
        let scores = match noise {
            Some(noise) => {
                let noise: Vec<f32> = noise.into_iter().map(|z| z as f32).collect();
                logits.clone()
                    + Tensor::<B, 3>::from_data(
                        TensorData::new(noise, [batch, n, vocab]),
                        &self.device,
                    )
            }
            None => logits.clone(),
        };
        let x0 = scores.argmax(2);
        let max = logits.clone().max_dim(2);
        let lse = max.clone() + (logits.clone() - max).exp().sum_dim(2).log();
        let chosen = logits.gather(2, x0.clone());
        (host_ids(x0), host_floats((chosen - lse).exp()))
    }

    /// Whether a step that leaves the sequence unchanged would be repeated exactly by every later
    /// step: greedy candidates ranked by their probability depend on the sequence alone.
    fn repeats_when_unchanged(&self) -> bool {
        self.config.temperature == 0.0 && self.config.remasking == Remasking::LowConfidence
    }

    /// Commits positions of `[lo, end)` per row: the top-`k` masked positions by confidence,
    /// with a threshold every masked position above it (at least one), with a factor those
    /// [`factor_count`] keeps. Returns whether any position received a token other than the
    /// mask id.
    fn commit(
        &mut self,
        lo: usize,
        end: usize,
        x0: &[i64],
        conf: &[f32],
        ks: &[usize],
        step: usize,
    ) -> bool {
        let n = end - lo;
        let mut progressed = false;
        for b in 0..self.batch {
            let mut cands: Vec<(usize, f32)> = (0..n)
                .filter(|&j| self.x[b * self.total + lo + j] == self.mask_id)
                .map(|j| (j, conf[b * n + j]))
                .collect();
            // Highest confidence first; ties go to the earlier position.
            cands.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
            let take = match (self.config.threshold, self.config.factor) {
                (Some(th), _) => reaching_threshold(&cands, th),
                (None, Some(f)) => factor_count(&cands, f),
                (None, None) => ks[b],
            }
            .min(cands.len());
            for &(j, _) in &cands[..take] {
                let tok = x0[b * n + j];
                self.put(b, lo + j, tok, step);
                progressed |= tok != self.mask_id;
            }
        }
        progressed
    }
}

/// A `[batch, n, 1]` float tensor read back as `[batch * n]` f32 values.
pub(crate) fn host_floats<B: Backend>(t: Tensor<B, 3>) -> Vec<f32> {
    let [batch, n, _] = t.dims();
    t.reshape([batch * n])
        .into_data()
        .convert::<f32>()
        .to_vec::<f32>()
        .expect("f32 after convert")
}

/// A `[batch, n, 1]` id tensor read back as `[batch * n]` values.
pub(crate) fn host_ids<B: Backend>(t: Tensor<B, 3, Int>) -> Vec<i64> {
    let [batch, n, _] = t.dims();
    t.reshape([batch * n])
        .into_data()
        .convert::<i64>()
        .to_vec::<i64>()
        .expect("i64 after convert")
}

/// Refuses confidences `[rows * n]` that are not finite: a NaN or infinite logit (diverged or
/// overflowing weights) would otherwise decode silently to arbitrary tokens.
pub(crate) fn check_finite(conf: &[f32], n: usize) -> Result<(), SampleError> {
    match conf.iter().position(|c| !c.is_finite()) {
        Some(i) => Err(SampleError::NonFinite(format!(
            "non-finite logits at row {}, position {} (diverged weights, or an f16 overflow: try \
             bf16 or f32)",
            i / n,
            i % n
        ))),
        None => Ok(()),
    }
}

/// How many of `cands` (sorted by confidence, highest first) threshold decoding commits: those
/// whose confidence reaches `threshold` (`>=`, as Fast-dLLM, which drops `confidence <
/// threshold`), at least one.
fn reaching_threshold(cands: &[(usize, f32)], threshold: f64) -> usize {
    cands
        .iter()
        .filter(|c| c.1 as f64 >= threshold)
        .count()
        .max(1)
}

/// How many of `cands` (sorted by confidence, highest first) factor-based decoding commits
/// (Fast-dLLM's `get_transfer_index_dynamic`): the `i`-th is kept while its confidence reaches
/// `1 - factor / (i + 2)` (strict `<` stops), the first always; when the first one below its bar
/// is the last candidate, or none is below, all are kept. A row without candidates commits
/// nothing (the reference indexes an empty list there and stops with an error).
fn factor_count(cands: &[(usize, f32)], factor: f64) -> usize {
    let n = cands.len();
    if n == 0 {
        return 0;
    }
    let below = (1..n).find(|&i| (cands[i].1 as f64) < 1.0 - factor / (i as f64 + 2.0));
    match below {
        Some(i) if i < n - 1 => i,
        _ => n,
    }
}

/// Steps per position of the block after which threshold and factor decoding end a block that
/// still has masked positions (each step commits at least one position per row; a row whose
/// committed candidates are the mask id itself makes no progress).
pub(crate) const PARALLEL_STEPS_PER_POSITION: usize = 4;

/// `logits` with token `id`'s logit set to `-inf` at every position.
fn without_token<B: Backend>(logits: Tensor<B, 3>, id: usize) -> Tensor<B, 3> {
    let [batch, n, _] = logits.dims();
    let device = logits.device();
    logits.slice_assign(
        [0..batch, 0..n, id..id + 1],
        Tensor::full([batch, n, 1], f32::NEG_INFINITY, &device),
    )
}

/// LLaDA's `confidence_eos_eot_inf`: the probability of each candidate `x0` under the softmax of
/// `logits` without token `eot`, from its probability `conf` with it: `p / (1 - p_eot)`, and 0
/// for an EOT candidate.
fn confidence_without<B: Backend>(
    logits: Tensor<B, 3>,
    eot: usize,
    x0: &[i64],
    conf: Vec<f32>,
) -> Vec<f32> {
    let p_eot = host_floats(burn::tensor::activation::softmax(logits, 2).narrow(2, eot, 1));
    conf.iter()
        .zip(&p_eot)
        .zip(x0)
        .map(|((&p, &pe), &x)| {
            let rest = 1.0 - pe;
            if x as usize == eot || rest <= 0.0 {
                0.0
            } else {
                p / rest
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    type B = burn::backend::Flex;

    #[test]
    fn a_confidence_equal_to_the_threshold_is_committed() {
        let cands = [(0, 0.75f32), (1, 0.5), (2, 0.25)];
        assert_eq!(reaching_threshold(&cands, 0.5), 2);
        assert_eq!(reaching_threshold(&cands, 0.9), 1);
    }

    #[test]
    fn factor_keeps_candidates_above_their_falling_bar() {
        let c = |v: &[f32]| v.iter().copied().enumerate().collect::<Vec<_>>();
        // factor 1: bars -1, 2/3, 3/4, 4/5, 5/6, ...
        assert_eq!(factor_count(&c(&[0.95, 0.9, 0.8, 0.1, 0.1]), 1.0), 3);
        // The first below its bar is the second: one kept.
        assert_eq!(factor_count(&c(&[0.9, 0.5, 0.4, 0.3]), 1.0), 1);
        // A bar is reached with equality (`<` stops).
        assert_eq!(factor_count(&c(&[0.9, 0.75, 0.75, 0.1, 0.0]), 0.75), 2);
        // The first below its bar is the last candidate: all kept, as the reference.
        assert_eq!(factor_count(&c(&[0.9, 0.9, 0.1]), 1.0), 3);
        // None below: all kept; one candidate: kept; none: nothing.
        assert_eq!(factor_count(&c(&[0.99, 0.99, 0.99]), 1.0), 3);
        assert_eq!(factor_count(&c(&[0.01]), 1.0), 1);
        assert_eq!(factor_count(&[], 1.0), 0);
    }

    #[test]
    fn eot_confidence_is_the_softmax_without_eot() {
        let logits = Tensor::<B, 3>::from_data(
            TensorData::new(vec![0.0f32, 1.0, 2.0, 0.0, 1.0, 2.0], [1, 2, 3]),
            &Default::default(),
        );
        let e = std::f32::consts::E;
        let with_eot = e / (1.0 + e + e * e);
        // Candidate 1 at position 0, the EOT candidate 2 at position 1.
        let conf = confidence_without(logits.clone(), 2, &[1, 2], vec![with_eot, 0.7]);
        assert!((conf[0] - e / (1.0 + e)).abs() < 1e-6, "{conf:?}");
        assert_eq!(conf[1], 0.0);
        // Without EOS: its column is -inf everywhere.
        let v: Vec<f32> = without_token(logits, 0).into_data().to_vec().unwrap();
        assert_eq!(
            v,
            [f32::NEG_INFINITY, 1.0, 2.0, f32::NEG_INFINITY, 1.0, 2.0]
        );
    }
}
