//! Block-level gradient checkpointing gives the gradients of the plain backward pass: LoRA on the
//! golden model (f32, and bf16-resident weights), full fine-tuning (every weight, embeddings
//! included), with a key-padding mask, and over two forwards in one loss; Dream with padding.

mod common;

use burn::backend::{Autodiff, Flex};
use burn::module::{Module, ModuleVisitor, Param, ParamId};
use burn::optim::GradientsParams;
use burn::tensor::{backend::Backend, Bool, Distribution, Int, Tensor, TensorData};
use common::*;
use dllm_model::{
    load_model, BlockCheckpoints, DiffusionLm, ForwardOptions, LoadOptions, LogitPositions,
    LoraConfig, WeightDType,
};

type AB = Autodiff<Flex>;

/// burn's generator is one per process: the tests of this file seed it and draw from it (the
/// weights `r` of the loss, the adapter's dropout masks), so they take turns.
static GENERATOR: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn generator() -> std::sync::MutexGuard<'static, ()> {
    GENERATOR.lock().unwrap_or_else(|e| e.into_inner())
}

fn ids() -> Tensor<AB, 2, Int> {
    let values: Vec<i64> = (0..2 * 12).map(|i| (i * 37 % 290) as i64).collect();
    Tensor::from_data(TensorData::new(values, [2, 12]), &Default::default())
}

/// Every float parameter's gradient (flattened to f32), by parameter id.
struct Collect<'a> {
    grads: &'a GradientsParams,
    out: Vec<(ParamId, Vec<f32>)>,
}

impl ModuleVisitor<AB> for Collect<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<AB, D>>) {
        if let Some(g) = self.grads.get::<Flex, D>(param.id) {
            let v = g.into_data().convert::<f32>().to_vec::<f32>().unwrap();
            self.out.push((param.id, v));
        }
    }
}

fn collect(model: &DiffusionLm<AB>, grads: &GradientsParams) -> Vec<(ParamId, Vec<f32>)> {
    let mut c = Collect {
        grads,
        out: Vec::new(),
    };
    model.visit(&mut c);
    c.out
}

/// `sum(logits * r)` over two forwards (one with the adapter off when `reference`), through
/// `checkpoints` when given.
fn loss(
    model: &DiffusionLm<AB>,
    checkpoints: Option<&BlockCheckpoints<AB>>,
    padding: Option<Tensor<AB, 2, Bool>>,
) -> Tensor<AB, 1> {
    let options = ForwardOptions {
        key_padding: padding,
        adapter: true,
    };
    let positions = LogitPositions::Range(4..12);
    let forward = |ids: Tensor<AB, 2, Int>| match checkpoints {
        Some(c) => c.forward(model, ids, &options, &positions),
        None => model.forward_with(ids, &options, &positions),
    };
    let a = forward(ids());
    let b = forward(ids().flip([1]));
    <AB as Backend>::seed(&Default::default(), 7);
    let r = Tensor::<AB, 3>::random(
        a.dims(),
        Distribution::Normal(0.0, 1.0),
        &Default::default(),
    );
    (a * r.clone()).sum() + (b * r).sum() * 0.5
}

fn assert_same_gradients(
    model: &DiffusionLm<AB>,
    padding: Option<Tensor<AB, 2, Bool>>,
    what: &str,
) {
    let plain = loss(model, None, padding.clone());
    let plain_value: f32 = plain.clone().into_scalar();
    let plain = collect(model, &GradientsParams::from_grads(plain.backward(), model));
    let checkpoints = BlockCheckpoints::<AB>::new();
    let ckpt = loss(model, Some(&checkpoints), padding);
    let ckpt_value: f32 = ckpt.clone().into_scalar();
    let ckpt = collect(model, &checkpoints.gradients(model, ckpt.backward()));
    assert!(
        (plain_value - ckpt_value).abs() <= 1e-4 * (1.0 + plain_value.abs()),
        "{what}: loss {plain_value} vs {ckpt_value}"
    );
    assert!(!plain.is_empty(), "{what}: nothing trained");
    assert_eq!(
        plain.len(),
        ckpt.len(),
        "{what}: parameters with a gradient"
    );
    for ((id, p), (id2, c)) in plain.iter().zip(&ckpt) {
        assert_eq!(id, id2);
        let scale = p.iter().fold(0.0f32, |m, v| m.max(v.abs())).max(1e-6);
        let diff = p
            .iter()
            .zip(c)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        assert!(
            diff <= 1e-4 * scale,
            "{what}: gradient differs by {diff} (scale {scale})"
        );
    }
}

fn lora(model: DiffusionLm<AB>) -> DiffusionLm<AB> {
    <AB as Backend>::seed(&Default::default(), 3);
    let config = LoraConfig {
        r: 4,
        lora_alpha: 8.0,
        lora_dropout: 0.0,
        ..LoraConfig::default()
    };
    let mut model = model.with_lora(&config, &Default::default()).unwrap();
    // A non-zero B, so the adapters change the output and every factor gets a gradient.
    for block in &mut model.blocks {
        for (_, lin) in block.linears_mut() {
            if let Some(l) = lin.lora.as_mut() {
                let b = l.b.val();
                let fresh = Tensor::random(b.dims(), Distribution::Normal(0.0, 0.1), &b.device());
                l.b = Param::from_tensor(fresh).set_require_grad(true);
            }
        }
    }
    model
}

#[test]
fn checkpointed_lora_gradients_equal_the_plain_ones_f32_and_bf16() {
    let _generator = generator();
    for dtype in [WeightDType::F32, WeightDType::BF16] {
        let base = load_model::<AB>(
            tiny_dir(),
            LoadOptions {
                dtype,
                quantize: None,
            },
            &Default::default(),
        )
        .unwrap();
        let model = lora(base);
        assert_same_gradients(&model, None, &format!("LoRA {dtype:?}"));
        let padding = Tensor::<AB, 2, Bool>::from_data(
            TensorData::new(
                (0..24).map(|i| i % 12 < 2 && i < 12).collect::<Vec<bool>>(),
                [2, 12],
            ),
            &Default::default(),
        );
        assert_same_gradients(&model, Some(padding), &format!("LoRA {dtype:?}, padding"));
    }
}

#[test]
fn checkpointed_full_finetuning_gradients_equal_the_plain_ones() {
    let _generator = generator();
    let model = load_model::<AB>(tiny_dir(), LoadOptions::default(), &Default::default()).unwrap();
    assert!(model.wte.is_require_grad());
    assert_same_gradients(&model, None, "full fine-tuning");
}

#[test]
fn with_adapter_dropout_the_checkpointed_gradient_is_that_of_the_returned_loss() {
    let _generator = generator();
    // The recomputation must draw the masks the kept forward drew: then a small step against the
    // gradient lowers the loss (same generator state, so same masks) by about `lr |g|^2`.
    let base = load_model::<AB>(tiny_dir(), LoadOptions::default(), &Default::default()).unwrap();
    let mut model = lora(base);
    for block in &mut model.blocks {
        for (_, lin) in block.linears_mut() {
            if let Some(l) = lin.lora.as_mut() {
                l.dropout.prob = 0.5;
            }
        }
    }
    let device = Default::default();
    let checkpoints = BlockCheckpoints::<AB>::new();
    <AB as Backend>::seed(&device, 11);
    let before = loss(&model, Some(&checkpoints), None);
    let before_value: f32 = before.clone().into_scalar();
    let grads = checkpoints.gradients(&model, before.backward());
    let squared: f32 = collect(&model, &grads)
        .iter()
        .flat_map(|(_, g)| g.iter().map(|v| v * v))
        .sum();
    let lr = 1e-2 / squared.sqrt();
    let mut sgd = burn::optim::SgdConfig::new().init::<AB, DiffusionLm<AB>>();
    let model = burn::optim::Optimizer::step(&mut sgd, lr as f64, model, grads);
    <AB as Backend>::seed(&device, 11);
    let after: f32 = loss(&model, Some(&checkpoints), None).into_scalar();
    checkpoints.clear();
    let predicted = lr * squared;
    let actual = before_value - after;
    assert!(
        (actual - predicted).abs() <= 0.15 * predicted,
        "loss fell by {actual}, the gradient predicts {predicted}"
    );
}

/// Dream: biases, shifted logits and left-padded rows (positioned from their first real token)
/// give the same gradients through the checkpointed blocks as through the plain ones.
#[test]
fn checkpointed_dream_gradients_equal_the_plain_ones_with_padding() {
    let _generator = generator();
    let dir = fixtures().join("golden-dream");
    let model = lora(load_model::<AB>(dir, LoadOptions::default(), &Default::default()).unwrap());
    assert_eq!(model.config.family, dllm_model::Family::Dream);
    let padding = Tensor::<AB, 2, Bool>::from_data(
        TensorData::new(
            (0..24).map(|i| i % 12 < 3 && i < 12).collect::<Vec<bool>>(),
            [2, 12],
        ),
        &Default::default(),
    );
    assert_same_gradients(&model, Some(padding), "Dream LoRA, padding");
}
