//! One DMPO update on the tiny Dream model (`fixtures/golden-dream`) equals the update computed
//! by the reference's formulas on Dream's own PyTorch forward (`scripts/dream_golden.py`,
//! `golden_train.safetensors`): the WDCE loss on fixed masks and weights, its gradients, and
//! every parameter after one AdamW step.

use std::path::PathBuf;

mod common;

use burn::backend::{Autodiff, Flex};
use burn::module::AutodiffModule;
use burn::optim::{AdamWConfig, GradientsParams, Optimizer};
use burn::tensor::{ElementConversion, Int, Tensor, TensorData};
use dllm_model::tensor_file::{read_floats, read_ints};
use dllm_model::{load_model, save_model, DiffusionLm, Family, LoadOptions};
use dmpo_core::{
    wdce_loss_with_masks, DmpoConfig, ModelView, ReplicateMasks, RolloutWeights, SequenceBatch,
};

type AB = Autodiff<Flex>;

fn dream() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/golden-dream")
}

fn golden(name: &str) -> Vec<f64> {
    read_floats(dream().join("golden_train.safetensors"), name)
        .unwrap_or_else(|e| panic!("{name}: {e}"))
        .values
}

/// The largest difference relative to the largest magnitude of `want`.
fn relative_diff(got: &[f32], want: &[f64]) -> f64 {
    assert_eq!(got.len(), want.len());
    let scale = want.iter().fold(0.0f64, |m, v| m.max(v.abs())).max(1e-12);
    got.iter()
        .zip(want)
        .map(|(g, w)| (*g as f64 - w).abs())
        .fold(0.0, f64::max)
        / scale
}

fn values<const D: usize>(t: Tensor<Flex, D>) -> Vec<f32> {
    t.into_data().convert::<f32>().to_vec::<f32>().unwrap()
}

#[test]
fn one_dmpo_update_on_dream_equals_the_reference_formulas() {
    let device = Default::default();
    let model: DiffusionLm<AB> = load_model(dream(), LoadOptions::default(), &device).unwrap();
    assert_eq!(model.config.family, Family::Dream);
    let seq = read_ints(dream().join("golden.safetensors"), "generation_entropy").unwrap();
    let [n, total] = [seq.shape[0], seq.shape[1]];
    let (prompt_len, gen) = (6, total - 6);
    let ids = Tensor::<AB, 2, Int>::from_data(TensorData::new(seq.values, [n, total]), &device);
    let batch = SequenceBatch::with_eos_index(ids, prompt_len, vec![gen; n]).unwrap();
    let masks = read_ints(dream().join("golden_train.safetensors"), "train_masks").unwrap();
    let masks =
        ReplicateMasks::from_rows(2, n, gen, masks.values.iter().map(|&m| m != 0).collect())
            .unwrap();
    let weights = RolloutWeights {
        group_size: 2,
        w_plus: vec![0.7, 0.3],
        w_minus: vec![0.2, 0.8],
        ell_cur: vec![0.0, 0.0],
        coeffs: vec![1.0],
    };
    let config = DmpoConfig {
        num_replicates: 2,
        ..Default::default()
    };
    let out = wdce_loss_with_masks(
        &ModelView::policy(&model),
        &batch,
        &weights,
        &config,
        &masks,
    )
    .unwrap();
    let loss: f64 = out.loss.clone().into_scalar().elem();
    let want = golden("train_loss")[0];
    assert!(
        (loss - want).abs() <= 1e-5 * want.abs().max(1.0),
        "loss {loss} vs {want}"
    );

    let grads = out.loss.backward();
    // Gradients of a tensor of each kind: embeddings, a biased projection, the MLP, the head.
    let block0 = &model.blocks[0];
    let block1 = &model.blocks[1];
    let linear = |l: &dllm_model::linear::Linear<AB>| {
        values(l.weight.val().grad(&grads).unwrap().transpose())
    };
    let checks: Vec<(&str, Vec<f32>)> = vec![
        (
            "model.embed_tokens.weight",
            values(model.wte.val().grad(&grads).unwrap()),
        ),
        (
            "model.layers.0.self_attn.q_proj.weight",
            linear(&block0.attn.q_proj),
        ),
        (
            "model.layers.0.self_attn.k_proj.bias",
            values(
                block0
                    .attn
                    .k_proj
                    .bias
                    .as_ref()
                    .unwrap()
                    .val()
                    .grad(&grads)
                    .unwrap(),
            ),
        ),
        (
            "model.layers.1.mlp.down_proj.weight",
            linear(&block1.ff_out),
        ),
        (
            "model.layers.1.post_attention_layernorm.weight",
            values(block1.ff_norm.weight.val().grad(&grads).unwrap()),
        ),
        ("lm_head.weight", linear(model.head.as_ref().unwrap())),
    ];
    for (name, got) in checks {
        let diff = relative_diff(&got, &golden(&format!("grad.{name}")));
        assert!(
            diff <= 1e-4,
            "gradient of {name}: relative difference {diff}"
        );
    }

    let grads = GradientsParams::from_grads(grads, &model);
    let mut optimizer = AdamWConfig::new()
        .with_beta_1(0.9)
        .with_beta_2(0.999)
        .with_epsilon(1e-8)
        .with_weight_decay(0.01)
        .init::<AB, DiffusionLm<AB>>();
    let updated = optimizer.step(1e-3, model, grads);
    let dir = tempfile::tempdir().unwrap();
    save_model(&updated.valid(), dir.path()).unwrap();
    let file = dir.path().join("model.safetensors");
    let mut checked = 0;
    for (name, _, _) in dllm_model::checkpoint_tensors(&updated.config) {
        let got: Vec<f32> = read_floats(&file, &name)
            .unwrap()
            .values
            .iter()
            .map(|&v| v as f32)
            .collect();
        let want = golden(&format!("after.{name}"));
        let grad = golden(&format!("grad.{name}"));
        // The first AdamW step moves a weight by `lr * g / (|g| + eps)` (plus the decay): a
        // gradient known to `d` (1e-4 of the tensor's largest, as checked above) fixes it to
        // `lr * eps * d / (|g| + eps)^2`. Where |g| is far above eps that is far below 1e-6;
        // where the gradient is rounding noise (the k_proj bias, whose exact gradient is zero: a
        // per-query constant leaves the softmax unchanged; unused embedding rows) only the
        // step's size, lr, is fixed.
        let d = 1e-4 * grad.iter().fold(0.0f64, |m, v| m.max(v.abs()));
        let (lr, eps) = (1e-3, 1e-8);
        for ((g, w), dg) in got.iter().zip(&want).zip(&grad) {
            let tol = 1e-6 + 2.0 * lr * (eps * d / (dg.abs() + eps).powi(2)).min(1.0);
            let diff = (*g as f64 - w).abs();
            assert!(
                diff <= tol,
                "{name} after AdamW: difference {diff} (gradient {dg})"
            );
        }
        checked += 1;
    }
    assert_eq!(checked, 2 * 12 + 3);
}

/// A tiny random Dream-layout model with a character-level ChatML tokenizer, saved as a Hugging
/// Face directory: what the Dream recipes can start on in a test.
fn tiny_dream_dir(dir: &std::path::Path) {
    use tokenizers::decoders::fuse::Fuse;
    use tokenizers::models::wordlevel::WordLevel;
    use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
    use tokenizers::{AddedToken, SplitDelimiterBehavior, Tokenizer};

    let chars: Vec<String> = (' '..='~').chain(['\n']).map(String::from).collect();
    let mut vocab: std::collections::HashMap<String, u32> = Default::default();
    vocab.insert("[UNK]".into(), 0);
    for c in &chars {
        let id = vocab.len() as u32;
        vocab.insert(c.clone(), id);
    }
    let model = WordLevel::builder()
        .vocab(vocab.into_iter().collect())
        .unk_token("[UNK]".into())
        .build()
        .unwrap();
    let mut tokenizer = Tokenizer::new(model);
    let split = Split::new(
        SplitPattern::Regex("(?s).".into()),
        SplitDelimiterBehavior::Isolated,
        false,
    )
    .unwrap();
    tokenizer.with_pre_tokenizer(Some(split));
    tokenizer.with_decoder(Some(Fuse::new()));
    let specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|mask|>"];
    let added: Vec<AddedToken> = specials
        .iter()
        .map(|s| AddedToken::from(*s, true))
        .collect();
    tokenizer.add_special_tokens(&added);
    std::fs::create_dir_all(dir).unwrap();
    tokenizer.save(dir.join("tokenizer.json"), false).unwrap();
    let id = |t: &str| tokenizer.token_to_id(t).unwrap();
    let vocab = tokenizer.get_vocab_size(true);

    let mut config = dllm_model::ModelConfig::from_file(dream().join("config.json")).unwrap();
    config.vocab_size = vocab;
    config.mask_token_id = id("<|mask|>");
    config.eos_token_id = id("<|endoftext|>");
    config.pad_token_id = id("<|endoftext|>");
    config.bos_token_id = Some(id("<|endoftext|>"));
    config.max_sequence_length = 512;
    let model = DiffusionLm::<Flex>::init(&config, &Default::default());
    save_model(&model, dir).unwrap();
}

/// The three Dream recipes start and run one step on flex in their own dtype (bf16), LoRA
/// targets (all seven of Dream's linears) and samplers (Fast-dLLM's block-wise Dream sampler for
/// the rollouts, `diffusion_generate` for the evaluation), shrunk by overrides to a tiny
/// Dream-layout model; and diffu-GRPO on the same model.
#[test]
fn dream_recipes_start_on_flex() {
    use dmpo_train::run_dir::StartMode;
    use dmpo_train::trainer::{train, RunOptions};
    use dmpo_train::Recipe;

    let tmp = tempfile::tempdir().unwrap();
    let model = tmp.path().join("tiny-dream");
    tiny_dream_dir(&model);
    let (gsm8k, _, countdown, sudoku) = common::two_row_task_files(tmp.path());
    let recipes = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../recipes");
    for (task, data, algorithm) in [
        ("sudoku", &sudoku, "dmpo"),
        ("countdown", &countdown, "dmpo"),
        ("gsm8k", &gsm8k, "dmpo"),
        ("sudoku", &sudoku, "diffu_grpo"),
    ] {
        let file = format!("dream7b-{task}");
        let name = format!("{file}-{algorithm}");
        let mut o = common::one_tiny_step(&model, tmp.path(), &name);
        o.push(format!("task.train=\"{}\"", data.display()));
        o.push(format!("train.algorithm=\"{algorithm}\""));
        if task == "gsm8k" {
            o.push(format!("task.eval=\"{}\"", data.display()));
        }
        let recipe = Recipe::load(&recipes.join(format!("{file}.toml")), &o)
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(recipe.rollout.method, dllm_sample::Method::Dream, "{name}");
        assert_eq!(recipe.eval.method, dllm_sample::Method::Dream, "{name}");
        assert_eq!(recipe.lora.target_modules.len(), 7, "{name}");
        let options = RunOptions {
            start: StartMode::Fresh,
            quiet: true,
            skip_eval: false,
            stop_after: None,
        };
        let summary = train::<Autodiff<Flex>>(&recipe, Default::default(), &options)
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(summary.steps, 1, "{name}");
        let text = std::fs::read_to_string(recipe.run_dir().join("metrics.jsonl")).unwrap();
        let row: serde_json::Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
        for key in ["loss", "grad_norm", "completion_length"] {
            assert!(
                row[key].as_f64().is_some_and(f64::is_finite),
                "{name}: {key} in {row}"
            );
        }
        // The adapter is saved with Dream's module names (PEFT loads it onto Dream's modules).
        let config = recipe
            .run_dir()
            .join("checkpoints/step-000001/adapter/adapter_config.json");
        let saved = dllm_model::lora::read_adapter_config(config.parent().unwrap()).unwrap();
        assert_eq!(
            saved.target_modules,
            Family::Dream.linear_names().map(String::from).to_vec(),
            "{name}"
        );
        // Evaluations ran with Dream's sampler, before and after.
        assert!(
            recipe.run_dir().join("eval_after_len16.json").is_file(),
            "{name}"
        );
    }
}

/// `dmpo inspect` and `dmpo generate` on the tiny Dream checkpoint: the family is reported, and
/// Dream's own sampler is the default, reproducing the reference's greedy generation.
#[test]
fn the_cli_inspects_and_generates_with_dream() {
    let dir = dream();
    let model = dir.to_str().unwrap();
    let out = common::dmpo(&dir, &["inspect", "--json", "--model", model]);
    assert!(out.status.success(), "{}", common::text(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["family"], "Dream", "{v}");

    let prompts = read_ints(dir.join("golden.safetensors"), "prompt_ids").unwrap();
    let want = read_ints(dir.join("golden.safetensors"), "generation_topk_margin").unwrap();
    let ids: Vec<String> = prompts.values[..6].iter().map(|v| v.to_string()).collect();
    let ids = ids.join(",");
    let generate = [
        "generate",
        "--model",
        model,
        "--prompt-ids",
        &ids,
        "--gen-length",
        "12",
    ];
    let out = common::dmpo(
        &dir,
        &[
            &generate[..],
            &["--steps", "12", "--alg", "topk_margin", "--json"],
        ]
        .concat(),
    );
    assert!(out.status.success(), "{}", common::text(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let got: Vec<i64> = v["ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_i64().unwrap())
        .collect();
    assert_eq!(got, want.values[6..18], "{v}");
    assert_eq!(v["nfe"], 12);

    // LLaDA's sampler settings with Dream's are refused, naming the setting.
    let llada = [
        "--steps",
        "12",
        "--block-length",
        "12",
        "--method",
        "llada",
        "--alg",
        "origin",
    ];
    let out = common::dmpo(&dir, &[&generate[..], &llada].concat());
    assert!(!out.status.success());
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(e.contains("alg is a setting of Dream's sampler"), "{e}");
}
