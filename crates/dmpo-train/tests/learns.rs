//! The optimisation path (WDCE loss → backward → global clip → AdamW) moves the model toward
//! positively weighted sequences: fitting one Sudoku solution makes greedy decoding produce it.

use std::path::PathBuf;

use burn::module::AutodiffModule;
use burn::optim::{AdamWConfig, GradientsParams};
use burn::tensor::{Int, Tensor, TensorData};
use dllm_model::{load_model, ChatTokenizer, LoadOptions};
use dllm_sample::{generate, SamplerConfig};
use dmpo_core::{wdce_loss, Baseline, DmpoConfig, ModelView, RolloutWeights, SequenceBatch};
use dmpo_train::optim::apply_update;
use dmpo_train::recipe::PromptStyle;
use dmpo_train::tasks::{completion_text, prompt_ids};
use rand::SeedableRng;

type AB = burn::backend::Autodiff<burn::backend::Flex>;

#[test]
fn positive_weights_pull_greedy_decoding_to_the_sequence() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../models/tiny-sudoku");
    let device = Default::default();
    let tok = ChatTokenizer::from_file(dir.join("tokenizer.json")).unwrap();
    let mut model = load_model::<AB>(&dir, LoadOptions::default(), &device).unwrap();
    let item = rewards::data::sudoku_4x4_test()[3].clone();
    let solution = match &item.truth {
        rewards::GroundTruth::Sudoku { solution, .. } => solution.clone(),
        _ => unreachable!(),
    };
    let prompt = prompt_ids(&tok, &item, PromptStyle::Compact, false, 200).unwrap();
    let mut completion = tok.encode(&format!("<answer>{solution}</answer>")).unwrap();
    completion.resize(24, model.config.eos_token_id);
    // A group of two: the solution (weight 1) and a copy with weight 0 (baseline none).
    let seq: Vec<i64> = prompt
        .iter()
        .chain(&completion)
        .map(|&t| t as i64)
        .collect();
    let ids: Vec<i64> = seq.iter().chain(&seq).copied().collect();
    let len = seq.len();
    let x = Tensor::<AB, 2, Int>::from_data(TensorData::new(ids, [2, len]), &device);
    let eos = completion
        .iter()
        .position(|&t| t == model.config.eos_token_id)
        .unwrap();
    let batch = SequenceBatch::with_eos_index(x, prompt.len(), vec![eos, eos]).unwrap();
    let weights = RolloutWeights {
        group_size: 2,
        w_plus: vec![1.0, 0.0],
        w_minus: vec![0.0, 1.0],
        ell_cur: vec![0.0, 0.0],
        coeffs: vec![1.0],
    };
    let config = DmpoConfig {
        baseline: Baseline::None,
        ..Default::default()
    };
    let mut opt = AdamWConfig::new()
        .with_epsilon(1e-8)
        .with_weight_decay(0.0)
        .init::<AB, dllm_model::DiffusionLm<AB>>();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
    let sampler = SamplerConfig {
        gen_length: 24,
        block_length: 8,
        steps: 12,
        ..Default::default()
    };
    let greedy = |m: &dllm_model::DiffusionLm<AB>| {
        let out = generate(&m.valid(), std::slice::from_ref(&prompt), &sampler).unwrap();
        completion_text(&tok, &out.completions[0], m.config.eos_token_id).unwrap()
    };
    let target = format!("<answer>{solution}</answer>");
    let before = greedy(&model);
    let mut first_loss = None;
    let mut last_loss = 0.0;
    for _ in 0..30 {
        let out = wdce_loss(
            &ModelView::policy(&model),
            &batch,
            &weights,
            &config,
            &mut rng,
        )
        .unwrap();
        let value: f64 = burn::tensor::ElementConversion::elem(out.loss.clone().into_scalar());
        first_loss.get_or_insert(value);
        last_loss = value;
        let grads = GradientsParams::from_grads(out.loss.backward(), &model);
        model = apply_update(model, &mut opt, grads, value, 1e-3, 1.0).0;
    }
    let after = greedy(&model);
    assert!(
        last_loss < first_loss.unwrap() * 0.5,
        "loss {first_loss:?} -> {last_loss}"
    );
    assert_ne!(
        before, target,
        "the base already solves this puzzle; pick another"
    );
    assert_eq!(after, target, "before: {before}");
}
