//! Gradient checkpointing by transformer block (docs/memory.md), the memory/compute trade of
//! Hugging Face's `gradient_checkpointing_enable()`.
//!
//! A training forward through [`BlockCheckpoints::forward`] runs the blocks without autodiff,
//! keeping only each block's input `[batch, len, d_model]`; the final norm, the LM head and the
//! loss are recorded as usual from a tracked leaf standing for the last block's output. After
//! the loss's backward pass, [`BlockCheckpoints::gradients`] walks the blocks backwards: each is
//! run again under autodiff from its kept input and differentiated against the gradient of its
//! output, one block's activations alive at a time. Cost: one more forward of the blocks per
//! training pass; memory: `n_layers x tokens x d_model` floats instead of every block's
//! intermediate tensors (LLaDA-8B, 768 tokens: 0.4 GB instead of about 12 GB).
//!
//! Adapter dropout: the kept forward applies the same dropout as training, and each block
//! reseeds the backend's generator before it runs, so its recomputation draws the same masks
//! (as `torch.utils.checkpoint` restores the RNG state). burn's generator is one per process:
//! another thread drawing from it between a block's seeding and its dropout (a second training
//! step, a test seeding it) changes the masks, so with adapter dropout one training step runs
//! at a time per process.
//!
//! Written here rather than with burn's `BalancedCheckpointing` strategy: that strategy
//! recomputes memory-bound operations only and keeps the output of every compute-bound one
//! (all the matrix products), so on this model it saves next to nothing; burn cannot run a
//! nested backward pass inside an operation's backward, which a block-level checkpoint
//! operation would need.

use std::any::Any;
use std::cell::RefCell;

use burn::module::AutodiffModule;
use burn::optim::{GradientsAccumulator, GradientsParams};
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{Bool, Distribution, Int, Tensor};

use crate::cache::CacheUse;
use crate::model::{DiffusionLm, ForwardOptions, LogitPositions};

/// The forward a [`BlockCheckpoints`] runs, fixed when it is made for an autodiff backend.
type CheckpointedForward<B> = fn(
    &DiffusionLm<B>,
    &BlockCheckpoints<B>,
    Tensor<B, 2, Int>,
    &ForwardOptions<B>,
    &LogitPositions<B>,
) -> Tensor<B, 3>;

/// The block inputs of the training forwards since the last
/// [`gradients`](BlockCheckpoints::gradients), and the forward that records them.
pub struct BlockCheckpoints<B: Backend> {
    /// One [`Record`] per forward, type-erased (the record names `B`'s inner backend).
    records: RefCell<Vec<Box<dyn Any>>>,
    forward: CheckpointedForward<B>,
}

/// What one checkpointed forward keeps.
struct Record<AB: AutodiffBackend> {
    /// Input of every block, no autodiff.
    inputs: Vec<Tensor<AB::InnerBackend, 3>>,
    /// Generator seed each block ran with (empty when no adapter dropout applies).
    seeds: Vec<u64>,
    /// The tracked leaf standing for the last block's output.
    leaf: Tensor<AB, 3>,
    ids: Tensor<AB, 2, Int>,
    key_padding: Option<Tensor<AB, 2, Bool>>,
    adapter: bool,
}

impl<B: Backend> std::fmt::Debug for BlockCheckpoints<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlockCheckpoints")
            .field("records", &self.records.borrow().len())
            .finish()
    }
}

impl<B: Backend> BlockCheckpoints<B> {
    /// Logits at `positions`, as [`DiffusionLm::forward_with`], with the blocks checkpointed.
    pub fn forward(
        &self,
        model: &DiffusionLm<B>,
        input_ids: Tensor<B, 2, Int>,
        options: &ForwardOptions<B>,
        positions: &LogitPositions<B>,
    ) -> Tensor<B, 3> {
        (self.forward)(model, self, input_ids, options, positions)
    }

    /// Forgets the kept inputs (a pass whose loss was not finite is not differentiated).
    pub fn clear(&self) {
        self.records.borrow_mut().clear();
    }
}

impl<AB: AutodiffBackend> Default for BlockCheckpoints<AB> {
    fn default() -> Self {
        Self::new()
    }
}

impl<AB: AutodiffBackend> BlockCheckpoints<AB> {
    /// Nothing kept yet.
    pub fn new() -> Self {
        Self {
            records: RefCell::new(Vec::new()),
            forward: checkpointed_forward::<AB>,
        }
    }

    /// The parameter gradients of the loss whose backward pass gave `grads`: those of the
    /// final norm and head from `grads`, those of every block (and of the embeddings, when
    /// trained) by recomputing the blocks of each recorded forward, last block first.
    pub fn gradients(&self, model: &DiffusionLm<AB>, grads: AB::Gradients) -> GradientsParams {
        let records: Vec<Record<AB>> = std::mem::take(&mut *self.records.borrow_mut())
            .into_iter()
            .map(|r| *r.downcast::<Record<AB>>().expect("records of this backend"))
            .collect();
        let outputs: Vec<_> = records.iter().map(|r| r.leaf.grad(&grads)).collect();
        let mut acc = GradientsAccumulator::<DiffusionLm<AB>>::new();
        acc.accumulate(model, GradientsParams::from_grads(grads, model));
        for (record, grad) in records.into_iter().zip(outputs) {
            // A forward the loss did not use contributes nothing.
            let Some(mut grad) = grad else { continue };
            let device = record.ids.device();
            let len = record.ids.dims()[1];
            let rope = model.rope_for(record.key_padding.as_ref(), 0, len, &device);
            for (layer, block) in model.blocks.iter().enumerate().rev() {
                let x = Tensor::<AB, 3>::from_inner(record.inputs[layer].clone()).require_grad();
                if let Some(&seed) = record.seeds.get(layer) {
                    AB::seed(&device, seed);
                }
                let out = block.forward(
                    x.clone(),
                    &rope,
                    record.key_padding.as_ref(),
                    &mut CacheUse::None,
                    layer,
                    record.adapter,
                );
                let mut block_grads = (out * Tensor::from_inner(grad)).sum().backward();
                grad = x.grad(&block_grads).expect("the block input is tracked");
                acc.accumulate(model, GradientsParams::from_module(&mut block_grads, block));
            }
            if model.wte.is_require_grad() {
                let embedded = model.embed(record.ids);
                let grads = (embedded * Tensor::from_inner(grad)).sum().backward();
                acc.accumulate(model, GradientsParams::from_grads(grads, model));
            }
        }
        acc.grads()
    }
}

/// A generator seed drawn from the backend's generator (so a seeded run stays reproducible).
fn draw_seed<B: Backend>(device: &B::Device) -> u64 {
    let draws: Vec<f32> = Tensor::<B, 1>::random([2], Distribution::Uniform(0.0, 65536.0), device)
        .into_data()
        .convert::<f32>()
        .to_vec()
        .unwrap_or_default();
    draws
        .iter()
        .fold(0u64, |s, &v| (s << 16) ^ v as u64)
        .wrapping_mul(0x9E37_79B9_7F4A_7C15)
}

/// The blocks without autodiff, keeping their inputs; the final norm and head tracked.
fn checkpointed_forward<AB: AutodiffBackend>(
    model: &DiffusionLm<AB>,
    checkpoints: &BlockCheckpoints<AB>,
    input_ids: Tensor<AB, 2, Int>,
    options: &ForwardOptions<AB>,
    positions: &LogitPositions<AB>,
) -> Tensor<AB, 3> {
    // Dropout outside autodiff too, so the kept inputs are those of a training forward.
    let inner = model.valid().with_adapter_dropout_always(true);
    let dropout = options.adapter && model.has_adapter_dropout();
    let ids = input_ids.clone().inner();
    let key_padding = options.key_padding.clone().map(|m| m.inner());
    let device = ids.device();
    let rope = inner.rope_for(key_padding.as_ref(), 0, ids.dims()[1], &device);
    let mut x = inner.embed(ids);
    let mut inputs = Vec::with_capacity(inner.blocks.len());
    let mut seeds = Vec::new();
    for (layer, block) in inner.blocks.iter().enumerate() {
        inputs.push(x.clone());
        if dropout {
            let seed = draw_seed::<AB::InnerBackend>(&device);
            AB::InnerBackend::seed(&device, seed);
            seeds.push(seed);
        }
        x = block.forward(
            x,
            &rope,
            key_padding.as_ref(),
            &mut CacheUse::None,
            layer,
            options.adapter,
        );
    }
    let leaf = Tensor::<AB, 3>::from_inner(x).require_grad();
    checkpoints
        .records
        .borrow_mut()
        .push(Box::new(Record::<AB> {
            inputs,
            seeds,
            leaf: leaf.clone(),
            ids: input_ids,
            key_padding: options.key_padding.clone(),
            adapter: options.adapter,
        }));
    model.logits(model.ln_f.forward(leaf), positions)
}
