//! The `dmpo` binary against hostile but realistic inputs: each case must end in a clear error
//! (exit status 1 or 2, a message naming the file or key, no panic, no abort) or in the
//! correct success. Runs on copies of the embedded tiny model in a temporary directory.

mod common;

use std::path::Path;
use std::process::Output;

use common::{dmpo, fails, model_copy, root, succeeds, train};
use dllm_model::tensor_file::{names, read_floats, write_f32, write_i64};

/// Rewrites `dir/model.safetensors` with every tensor kept but `drop` and one value of
/// `poison` (if given) replaced.
fn rewrite_weights(dir: &Path, drop: Option<&str>, poison: Option<(&str, f32)>, extra: bool) {
    let file = dir.join("model.safetensors");
    let mut arrays: Vec<(String, Vec<f32>, Vec<usize>)> = names(&file)
        .unwrap()
        .into_iter()
        .filter(|n| Some(n.as_str()) != drop)
        .map(|n| {
            let a = read_floats(&file, &n).unwrap();
            let mut v: Vec<f32> = a.values.iter().map(|&x| x as f32).collect();
            if let Some((name, value)) = poison {
                if name == n {
                    v[3] = value;
                }
            }
            (n, v, a.shape)
        })
        .collect();
    if extra {
        arrays.push((
            "model.transformer.blocks.9.q_proj.weight".into(),
            vec![0.0; 4],
            vec![2, 2],
        ));
    }
    let refs: Vec<(&str, &[f32], &[usize])> = arrays
        .iter()
        .map(|(n, v, s)| (n.as_str(), v.as_slice(), s.as_slice()))
        .collect();
    write_f32(&file, &refs).unwrap();
}

const PROMPT: [&str; 2] = ["--prompt-ids", "7,8,9,10"];

fn generate(dir: &Path, model: &Path, extra: &[&str]) -> Output {
    let m = model.to_str().unwrap();
    let mut args = vec!["generate", "--model", m];
    if !extra.contains(&"--gen-length") {
        args.extend(["--gen-length", "8", "--block-length", "8"]);
    }
    args.extend(PROMPT);
    args.extend(extra);
    dmpo(dir, &args)
}

#[test]
fn generation_and_model_files() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let good = model_copy(dir, "good", |_| {});

    // Half precision with temperature > 0 (crashed with a dtype mismatch).
    for dtype in ["bf16", "f16"] {
        let out = generate(
            dir,
            &good,
            &["--steps", "4", "--dtype", dtype, "--temperature", "1"],
        );
        succeeds(&format!("{dtype} sampling"), &out);
    }
    // Sizes beyond what the model or the request can use.
    fails(
        "gen-length beyond the context",
        &generate(
            dir,
            &good,
            &["--gen-length", "1000000", "--block-length", "1000000"],
        ),
        &["max_sequence_length 512"],
    );
    fails(
        "steps = u64::MAX",
        &generate(dir, &good, &["--steps", "18446744073709551615"]),
        &["steps", "exceeds gen_length"],
    );
    fails(
        "1e12 steps with a threshold",
        &generate(
            dir,
            &good,
            &["--steps", "1000000000000", "--threshold", "0.5"],
        ),
        &["steps", "exceeds gen_length"],
    );

    // Configs every loader refuses; inspect refuses them too, naming the field.
    let cases: [(&str, serde_json::Value, &str); 4] = [
        ("n_layers", 1_000_000_000u64.into(), "parameters"),
        ("rms_norm_eps", 1e300.into(), "rms_norm_eps"),
        ("max_sequence_length", 0.into(), "max_sequence_length"),
        ("d_model", 1_000_000_000_000u64.into(), "parameters"),
    ];
    for (key, value, needle) in cases {
        let m = model_copy(dir, &format!("bad-{key}"), |c| c[key] = value.clone());
        let path = m.to_str().unwrap();
        fails(
            &format!("generate {key}"),
            &generate(dir, &m, &[]),
            &[needle, "config.json"],
        );
        fails(
            &format!("inspect {key}"),
            &dmpo(dir, &["inspect", "--model", path]),
            &[needle],
        );
    }

    // Weights: a NaN, a missing tensor, an unused tensor.
    let nan = model_copy(dir, "nan", |_| {});
    rewrite_weights(
        &nan,
        None,
        Some(("model.transformer.ln_f.weight", f32::NAN)),
        false,
    );
    let missing = model_copy(dir, "missing", |_| {});
    rewrite_weights(&missing, Some("model.transformer.ln_f.weight"), None, false);
    let extra = model_copy(dir, "extra", |_| {});
    rewrite_weights(&extra, None, None, true);
    for (name, m, needle) in [
        ("NaN weight", &nan, "non-finite"),
        ("missing tensor", &missing, "missing tensor"),
        ("unused tensor", &extra, "not used by the config"),
    ] {
        let path = m.to_str().unwrap();
        fails(
            &format!("generate: {name}"),
            &generate(dir, m, &[]),
            &[needle],
        );
        fails(
            &format!("inspect: {name}"),
            &dmpo(dir, &["inspect", "--model", path]),
            &[needle],
        );
    }
    succeeds(
        "inspect a good model",
        &dmpo(dir, &["inspect", "--model", good.to_str().unwrap()]),
    );

    // A tokenizer with more tokens than the model embeds.
    let foreign = model_copy(dir, "foreign-tokenizer", |_| {});
    let tok_path = foreign.join("tokenizer.json");
    let mut tok: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&tok_path).unwrap()).unwrap();
    tok["added_tokens"]
        .as_array_mut()
        .unwrap()
        .push(serde_json::json!({
            "id": 23, "content": "<|extra|>", "single_word": false, "lstrip": false,
            "rstrip": false, "normalized": false, "special": true
        }));
    std::fs::write(&tok_path, tok.to_string()).unwrap();
    fails(
        "foreign tokenizer",
        &generate(dir, &foreign, &[]),
        &["tokenizer.json", "embedding table"],
    );
}

#[test]
fn logits_inputs() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let model = root().join("models/tiny-sudoku");
    let m = model.to_str().unwrap();
    let logits = |input: &Path| {
        dmpo(
            dir,
            &[
                "logits",
                "--model",
                m,
                "--input",
                input.to_str().unwrap(),
                "--output",
                "out.st",
            ],
        )
    };
    let long = dir.join("long.st");
    write_i64(&long, &[("input_ids", &vec![7i64; 600], &[1, 600])]).unwrap();
    fails(
        "600 tokens, context 512",
        &logits(&long),
        &["long.st", "max_sequence_length 512"],
    );
    let empty = dir.join("empty.st");
    write_i64(&empty, &[("input_ids", &[], &[1, 0])]).unwrap();
    fails(
        "input_ids [1, 0]",
        &logits(&empty),
        &["empty.st", "input_ids"],
    );
    let unknown = dir.join("unknown.st");
    write_i64(
        &unknown,
        &[
            ("input_ids", &[7, 8], &[1, 2]),
            ("labels", &[7, 8], &[1, 2]),
        ],
    )
    .unwrap();
    fails(
        "unknown tensor",
        &logits(&unknown),
        &["unknown.st", "labels"],
    );
    let bad_mask = dir.join("bad-mask.st");
    write_i64(
        &bad_mask,
        &[
            ("input_ids", &[7, 8], &[1, 2]),
            ("attention_mask", &[1, 2], &[1, 2]),
        ],
    )
    .unwrap();
    fails(
        "attention_mask of 2",
        &logits(&bad_mask),
        &["attention_mask"],
    );

    // The mask is used: masking a left pad gives the unpadded logits at the real tokens.
    let padded = dir.join("padded.st");
    write_i64(
        &padded,
        &[
            ("input_ids", &[1, 7, 8, 9], &[1, 4]),
            ("attention_mask", &[0, 1, 1, 1], &[1, 4]),
        ],
    )
    .unwrap();
    succeeds("padded logits", &logits(&padded));
    let with_pad = read_floats(dir.join("out.st"), "logits").unwrap().values;
    let plain = dir.join("plain.st");
    write_i64(&plain, &[("input_ids", &[7, 8, 9], &[1, 3])]).unwrap();
    succeeds("plain logits", &logits(&plain));
    let without = read_floats(dir.join("out.st"), "logits").unwrap().values;
    let vocab = without.len() / 3;
    for (a, b) in with_pad[vocab..].iter().zip(&without) {
        assert!(
            (a - b).abs() < 1e-4,
            "masked pad changes logits: {a} vs {b}"
        );
    }
}

#[test]
fn score_inputs() {
    let tmp = tempfile::tempdir().unwrap();
    fails(
        "endless input",
        &dmpo(tmp.path(), &["score", "--task", "sudoku", "/dev/zero"]),
        &["/dev/zero", "MiB"],
    );
}

#[test]
fn recipe_values_are_checked_before_any_work() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let model = model_copy(dir, "m", |_| {});
    let cases: &[(&str, &[&str])] = &[
        ("train.beta2=nan", &["train.beta2"]),
        ("train.weight_decay=nan", &["train.weight_decay"]),
        ("dmpo.centering_strength=nan", &["centering_strength"]),
        ("dmpo.ddo_beta=nan", &["ddo_beta"]),
        ("train.beta1=1.5", &["train.beta1"]),
        ("train.eps=-1", &["train.eps"]),
        ("train.eps=0", &["train.eps"]),
        ("train.weight_decay=-10", &["train.weight_decay"]),
        ("eval.steps_per_token=nan", &["[eval]", "steps_per_token"]),
        ("eval.steps_per_token=1e300", &["[eval]", "steps_per_token"]),
        ("eval.gen_lengths=[0]", &["[eval]", "gen_lengths"]),
        ("eval.gen_lengths=[25]", &["[eval]", "gen_lengths", "25"]),
        ("eval.block_length=0", &["[eval]", "block_length"]),
        ("task.max_prompt_tokens=0", &["task.max_prompt_tokens"]),
        ("run.name=\"../../elsewhere\"", &["run.name"]),
        ("run.name=\"\"", &["run.name"]),
        ("train.steps=9223372036854775807", &["train.steps"]),
        (
            "rollout.gen_length=1000",
            &["rollout.gen_length", "max_sequence_length"],
        ),
        ("lora.r=1000000000", &["rank"]),
        ("lora.alpha=nan", &["lora", "alpha"]),
    ];
    for (set, needles) in cases {
        let extra: Vec<&str> = if set.starts_with("lora.") {
            vec![set, "model.finetune=\"lora\"", "train.sync_ref_model=false"]
        } else if set.starts_with("rollout.gen_length") {
            // One block, so that the sampler settings are valid and only the context is not.
            vec![set, "rollout.block_length=1000"]
        } else {
            // Three iterations: steps x num_iterations must overflow 64 bits for the `train.steps` case.
            vec![set, "train.num_iterations=3"]
        };
        let needles: Vec<&str> = needles.to_vec();
        fails(set, &train(dir, &model, &extra, &["--skip-eval"]), &needles);
        // Nothing was trained: no metrics row, no checkpoint.
        assert!(
            !dir.join("runs/r/metrics.jsonl").exists(),
            "{set}: training started"
        );
    }
    assert!(!dir.join("elsewhere").exists() && !tmp.path().join("../elsewhere").exists());
}

#[test]
fn run_directories_keep_previous_runs() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let model = model_copy(dir, "m", |_| {});
    let run = dir.join("runs/r");
    succeeds("first run", &train(dir, &model, &[], &["--skip-eval"]));
    let ckpt = run.join("checkpoints/step-000001/state.json");
    assert!(ckpt.is_file());
    let metrics = std::fs::read(run.join("metrics.jsonl")).unwrap();

    // A plain re-run is refused and leaves the run as it was.
    fails(
        "re-run",
        &train(dir, &model, &[], &["--skip-eval"]),
        &["--resume", "--overwrite"],
    );
    assert!(ckpt.is_file(), "the refused re-run kept the checkpoint");
    assert_eq!(std::fs::read(run.join("metrics.jsonl")).unwrap(), metrics);

    // A resume with settings that shape the weights is refused, naming them.
    for (set, key) in [
        ("run.seed=5", "run.seed"),
        ("train.group_size=8", "train.group_size"),
        ("model.finetune=\"lora\"", "model.finetune"),
    ] {
        // (sync_ref_model off: LoRA refuses it, and that error must not be what is seen here.)
        let sets = [set, "train.sync_ref_model=false"];
        fails(
            set,
            &train(dir, &model, &sets, &["--resume", "--skip-eval"]),
            &[key, "differ from the run's"],
        );
    }
    // More steps may be asked for on resume.
    succeeds(
        "resume to 2 steps",
        &train(
            dir,
            &model,
            &["train.steps=2"],
            &["--resume", "--skip-eval"],
        ),
    );
    assert!(run.join("checkpoints/step-000002/state.json").is_file());

    // A second run while the first holds the directory fails at once.
    let held =
        dmpo_train::run_dir::RunDir::open(&run, dmpo_train::run_dir::StartMode::Resume).unwrap();
    fails(
        "concurrent run",
        &train(
            dir,
            &model,
            &["train.steps=3"],
            &["--resume", "--skip-eval"],
        ),
        &["another `dmpo train`"],
    );
    drop(held);

    // --overwrite replaces it.
    succeeds(
        "overwrite",
        &train(dir, &model, &[], &["--overwrite", "--skip-eval"]),
    );
    assert!(!run.join("checkpoints/step-000002").exists());
    assert!(run.join("checkpoints/step-000001/state.json").is_file());
}
