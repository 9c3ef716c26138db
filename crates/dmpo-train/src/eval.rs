//! Evaluation with the d1 protocol: greedy LLaDA sampling, task scoring, and output files in
//! the d1 JSON layout (readable by `dmpo score`).

use std::path::Path;

use burn::tensor::backend::Backend;
use dllm_model::{ChatTokenizer, DiffusionLm};
use dllm_sample::{generate, SamplerConfig};
use rewards::{Task, TaskItem};
use serde::Serialize;

use crate::error::{Result, TrainError};
use crate::recipe::{EvalSection, PromptStyle};
use crate::tasks::{completion_text_as, prompt_ids, prompt_text};

/// Accuracy of one evaluation.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct EvalResult {
    /// Generation length evaluated.
    pub gen_length: usize,
    /// Correct units (items, or Sudoku cells).
    pub correct: u64,
    /// Scored units.
    pub total: u64,
    /// `100 * correct / total`.
    pub accuracy_pct: f64,
    /// Items evaluated.
    pub items: usize,
}

impl EvalResult {
    /// The result recorded in an evaluation file [`evaluate`] wrote (d1 layout: `metrics` and
    /// `generations`).
    pub fn read(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| TrainError::io(path, e))?;
        let bad = |what: &str| TrainError::Data(format!("{}: {what}", path.display()));
        let doc: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| bad(&format!("not JSON ({e})")))?;
        let m = &doc["metrics"];
        let field = |k: &str| {
            m[k].as_u64()
                .ok_or_else(|| bad(&format!("no `metrics.{k}`")))
        };
        Ok(Self {
            gen_length: field("gen_length")? as usize,
            correct: field("correct")?,
            total: field("total")?,
            accuracy_pct: m["accuracy"]
                .as_f64()
                .ok_or_else(|| bad("no `metrics.accuracy`"))?,
            items: doc["generations"]
                .as_array()
                .ok_or_else(|| bad("no `generations`"))?
                .len(),
        })
    }
}

/// The sampler settings of an evaluation at `gen_length`.
pub fn eval_sampler(section: &EvalSection, gen_length: usize) -> SamplerConfig {
    let dream_whole = section.method == dllm_sample::Method::Dream
        && section.cache == dllm_sample::CacheKind::None;
    let block = if dream_whole {
        gen_length
    } else {
        section.block_length.min(gen_length)
    };
    let blocks = gen_length / block;
    let steps = ((gen_length as f64 * section.steps_per_token).round() as usize).max(blocks);
    SamplerConfig {
        gen_length,
        block_length: block,
        steps: steps / blocks * blocks,
        temperature: section.temperature,
        cache: section.cache,
        padding_mask: section.padding_mask,
        method: section.method,
        alg: section.alg,
        top_p: section.top_p,
        threshold: section.threshold,
        factor: section.factor,
        wino_threshold: section.wino_threshold,
        wino_threshold_back: section.wino_threshold_back,
        ..SamplerConfig::default()
    }
}

/// Generates for every item, scores, and (if `out` is given) writes the d1-layout JSON.
#[allow(clippy::too_many_arguments)]
pub fn evaluate<B: Backend>(
    model: &DiffusionLm<B>,
    tokenizer: &ChatTokenizer,
    task: Task,
    items: &[TaskItem],
    style: PromptStyle,
    max_prompt_tokens: usize,
    section: &EvalSection,
    gen_length: usize,
    out: Option<&Path>,
) -> Result<EvalResult> {
    let setup = EvalSetup {
        tokenizer,
        task,
        items,
        style,
        max_prompt_tokens,
        section,
    };
    let completions = setup.generate(model, 0..setup.batches(), gen_length)?;
    setup.score(model.config.eos_token_id, gen_length, &completions, out)
}

/// What an evaluation reads besides the model: the items, how to prompt them, how to sample
/// and score. Split in two ([`EvalSetup::generate`] on batches, [`EvalSetup::score`] on every
/// completion) so that peers can share the generation (crate::trainer).
#[derive(Clone, Copy)]
pub struct EvalSetup<'a> {
    /// The model's tokenizer.
    pub tokenizer: &'a ChatTokenizer,
    /// The task that scores.
    pub task: Task,
    /// The evaluation set, in order.
    pub items: &'a [TaskItem],
    /// How items become prompts.
    pub style: PromptStyle,
    /// Longest prompt (left-truncated beyond).
    pub max_prompt_tokens: usize,
    /// Sampler and batching settings.
    pub section: &'a EvalSection,
}

impl EvalSetup<'_> {
    /// Batches of `section.batch_size` items (the last one may be shorter).
    pub fn batches(&self) -> usize {
        self.items.len().div_ceil(self.batch_size())
    }

    /// The items of `batches`, as a range of item indices.
    pub fn items_of(&self, batches: std::ops::Range<usize>) -> std::ops::Range<usize> {
        let b = self.batch_size();
        (batches.start * b).min(self.items.len())..(batches.end * b).min(self.items.len())
    }

    fn batch_size(&self) -> usize {
        self.section.batch_size.max(1)
    }

    /// The completions (`gen_length` ids each) of the items of `batches`, in order: a batch is
    /// sampled together, so the same batches give the same completions wherever they run.
    pub fn generate<B: Backend>(
        &self,
        model: &DiffusionLm<B>,
        batches: std::ops::Range<usize>,
        gen_length: usize,
    ) -> Result<Vec<Vec<u32>>> {
        let sampler = eval_sampler(self.section, gen_length);
        let items = &self.items[self.items_of(batches)];
        let mut completions = Vec::with_capacity(items.len());
        for chunk in items.chunks(self.batch_size()) {
            let prompts = chunk
                .iter()
                .map(|it| prompt_ids(self.tokenizer, it, self.style, true, self.max_prompt_tokens))
                .collect::<Result<Vec<_>>>()?;
            completions.extend(generate(model, &prompts, &sampler)?.completions);
        }
        Ok(completions)
    }

    /// Scores one completion per item and (if `out` is given) writes the d1-layout JSON.
    pub fn score(
        &self,
        eos: u32,
        gen_length: usize,
        completions: &[Vec<u32>],
        out: Option<&Path>,
    ) -> Result<EvalResult> {
        if completions.len() != self.items.len() {
            return Err(TrainError::Data(format!(
                "evaluation: {} completions for {} items",
                completions.len(),
                self.items.len()
            )));
        }
        let (mut correct, mut total) = (0u64, 0u64);
        let mut records = Vec::with_capacity(self.items.len());
        for (item, ids) in self.items.iter().zip(completions) {
            let text = completion_text_as(self.tokenizer, ids, eos, self.section.completion_text)?;
            let score = rewards::eval_correct(self.task, &text, item)?;
            correct += score.correct as u64;
            total += score.total as u64;
            records.push(d1_record(item, self.style, &text));
        }
        let result = EvalResult {
            gen_length,
            correct,
            total,
            accuracy_pct: if total == 0 {
                0.0
            } else {
                100.0 * correct as f64 / total as f64
            },
            items: self.items.len(),
        };
        if let Some(path) = out {
            let sampler = eval_sampler(self.section, gen_length);
            let doc = serde_json::json!({
                "task": self.task.name(),
                "generations": records,
                "metrics": {
                    "correct": correct, "total": total, "accuracy": result.accuracy_pct,
                    "gen_length": gen_length, "steps": sampler.steps, "block_length": sampler.block_length,
                },
            });
            let text = serde_json::to_string_pretty(&doc).expect("serialisable");
            dllm_model::load::write_atomic(path, text.as_bytes())?;
        }
        Ok(result)
    }
}

/// One generation record in the d1 layout: the question (which carries the Sudoku puzzle or
/// Countdown numbers), the generation, and the task's ground truth.
fn d1_record(item: &TaskItem, style: PromptStyle, text: &str) -> serde_json::Value {
    use rewards::GroundTruth as G;
    let truth = match &item.truth {
        G::Gsm8k { answer } => answer
            .parse::<f64>()
            .map(serde_json::Value::from)
            .unwrap_or_else(|_| answer.clone().into()),
        G::Math { answer } => answer.clone().into(),
        G::Countdown { numbers, target } => serde_json::json!([numbers, target]),
        G::Sudoku { solution, .. } => solution.clone().into(),
    };
    let question = match &item.truth {
        G::Sudoku { puzzle, .. } if style == PromptStyle::Compact => puzzle.clone(),
        _ => prompt_text(item, PromptStyle::Reference, true),
    };
    serde_json::json!({"question": question, "generations": text, "ground_truth": truth})
}
