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
    for method in ["wino", "roar"] {
        fails(
            &format!("--steps with {method}"),
            &generate(dir, &good, &["--steps", "4", "--method", method]),
            &["--steps is not a setting"],
        );
    }

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

/// `dmpo` with arguments that need not be UTF-8.
fn dmpo_os(dir: &Path, args: &[&std::ffi::OsStr]) -> Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_dmpo"))
        .args(args)
        .current_dir(dir)
        .env("RUST_LOG", "warn")
        .output()
        .unwrap()
}

#[test]
fn plan_counts_durations_and_output() {
    use std::os::unix::ffi::OsStrExt;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let recipe = root().join("recipes/tiny-sudoku.toml");
    let r = recipe.to_str().unwrap();
    let config = root().join("models/tiny-sudoku/config.json");
    let c = config.to_str().unwrap();
    let plan = |sets: &[&str]| {
        let mut args = vec!["plan", r, "--json", "--config", c];
        for s in sets {
            args.extend(["--set", s]);
        }
        dmpo(dir, &args)
    };
    // A step of 2^63 rows is answered at once (the largest micro-batch by bisection).
    succeeds(
        "2^63 rows",
        &plan(&[
            "train.prompts_per_step=4294967296",
            "train.group_size=2147483648",
        ]),
    );
    // What training would refuse, planning refuses too, naming it.
    let lora = ["model.finetune=\"lora\"", "train.sync_ref_model=false"];
    fails(
        "lora.r 2^62",
        &plan(&[lora[0], lora[1], "lora.r=4611686018427387904"]),
        &["lora.r", "rank"],
    );
    fails(
        "gen_length 2^40",
        &plan(&[
            "rollout.gen_length=1099511627776",
            "rollout.block_length=1099511627776",
            "rollout.steps=1",
        ]),
        &["rollout.gen_length", "max_sequence_length"],
    );
    // Durations and counts that overflow are refused by key.
    let model = model_copy(dir, "m", |_| {});
    fails(
        "timeout 1e300",
        &train(
            dir,
            &model,
            &["distributed.timeout_s=1e300"],
            &["--skip-eval"],
        ),
        &["distributed.timeout_s"],
    );
    fails(
        "devices beyond any count of rows",
        &train(
            dir,
            &model,
            &["distributed.devices=4611686018427387904"],
            &["--skip-eval"],
        ),
        &["distributed.devices"],
    );
    // Paths that are not UTF-8 are printed, not a panic.
    let odd = dir.join(std::ffi::OsStr::from_bytes(b"r\xff.toml"));
    std::fs::copy(&recipe, &odd).unwrap();
    let out = dmpo_os(
        dir,
        &[
            "plan".as_ref(),
            odd.as_os_str(),
            "--json".as_ref(),
            "--config".as_ref(),
            config.as_os_str(),
        ],
    );
    succeeds("plan --json, non-UTF-8 recipe name", &out);
    let odd_model = dir.join(std::ffi::OsStr::from_bytes(b"m\xff"));
    std::fs::rename(&model, &odd_model).unwrap();
    let out = dmpo_os(
        dir,
        &[
            "inspect".as_ref(),
            "--model".as_ref(),
            odd_model.as_os_str(),
            "--json".as_ref(),
        ],
    );
    succeeds("inspect, non-UTF-8 model directory", &out);
    // A closed stdout ends the process quietly.
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_dmpo"))
        .args(["plan", r, "--config", c])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    assert!(!String::from_utf8_lossy(&out.stderr).contains("panicked"));
}

/// A LoRA adapter trained one step on the tiny model, in `dir/adapter`.
fn trained_adapter(dir: &Path, model: &Path) -> std::path::PathBuf {
    let sets = [
        "model.finetune=\"lora\"",
        "train.sync_ref_model=false",
        "lora.r=4",
        "lora.alpha=8",
        "lora.dropout=0",
        "train.lr=0.05",
        "run.name=\"lora\"",
    ];
    succeeds("LoRA run", &train(dir, model, &sets, &["--skip-eval"]));
    let from = dir.join("runs/lora/checkpoints/step-000001/adapter");
    let to = dir.join("adapter");
    std::fs::create_dir_all(&to).unwrap();
    for f in ["adapter_config.json", "adapter_model.safetensors"] {
        std::fs::copy(from.join(f), to.join(f)).unwrap();
    }
    to
}

/// A copy of `adapter` with `key` of its config set to `value`.
fn adapter_with(
    dir: &Path,
    adapter: &Path,
    name: &str,
    key: &str,
    value: serde_json::Value,
) -> std::path::PathBuf {
    let to = dir.join(name);
    std::fs::create_dir_all(&to).unwrap();
    std::fs::copy(
        adapter.join("adapter_model.safetensors"),
        to.join("adapter_model.safetensors"),
    )
    .unwrap();
    let mut c: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(adapter.join("adapter_config.json")).unwrap(),
    )
    .unwrap();
    c[key] = value;
    std::fs::write(to.join("adapter_config.json"), c.to_string()).unwrap();
    to
}

#[test]
fn adapters_are_read_as_peft_reads_them_and_checked_by_inspect() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let model = model_copy(dir, "m", |_| {});
    let adapter = trained_adapter(dir, &model);
    let gen = |a: &Path| generate(dir, &model, &["--adapter", a.to_str().unwrap(), "--json"]);
    let ids = |out: &Output| -> serde_json::Value {
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()["ids"].clone()
    };
    let plain = gen(&adapter);
    succeeds("adapter", &plain);
    // Keys that change PEFT's computation are refused by name; their off values are not.
    for (key, value) in [
        ("use_dora", serde_json::json!(true)),
        ("alpha_pattern", serde_json::json!({"q_proj": 80})),
        ("rank_pattern", serde_json::json!({"q_proj": 2})),
        ("layers_to_transform", serde_json::json!([0])),
        ("a_key_of_a_later_peft", serde_json::json!(3)),
    ] {
        let a = adapter_with(dir, &adapter, key, key, value);
        fails(key, &gen(&a), &[key, "adapter_config.json"]);
    }
    let off = adapter_with(dir, &adapter, "off", "use_dora", serde_json::json!(false));
    assert_eq!(
        ids(&gen(&off)),
        ids(&plain),
        "use_dora false is PEFT's default"
    );
    let all = adapter_with(
        dir,
        &adapter,
        "all",
        "target_modules",
        serde_json::json!("all-linear"),
    );
    assert_eq!(
        ids(&gen(&all)),
        ids(&plain),
        "all-linear: every block linear"
    );

    // inspect reads the adapter's weights as generate does.
    let inspect = |a: &Path| {
        dmpo(
            dir,
            &[
                "inspect",
                "--model",
                model.to_str().unwrap(),
                "--adapter",
                a.to_str().unwrap(),
            ],
        )
    };
    succeeds("inspect adapter", &inspect(&adapter));
    let r8 = adapter_with(dir, &adapter, "r8", "r", serde_json::json!(8));
    fails(
        "rank 8 config over rank 4 tensors",
        &inspect(&r8),
        &["adapter_model.safetensors"],
    );
    let gone = adapter_with(dir, &adapter, "gone", "r", serde_json::json!(4));
    std::fs::remove_file(gone.join("adapter_model.safetensors")).unwrap();
    fails(
        "no weights",
        &inspect(&gone),
        &["adapter_model.safetensors"],
    );

    // model.adapter brings its own rank and layers: [lora] beside it is a conflict; with full
    // fine-tuning the adapter is merged into the starting weights.
    let with_adapter = format!("model.adapter=\"{}\"", adapter.display());
    fails(
        "lora.r beside model.adapter",
        &train(
            dir,
            &model,
            &[
                &with_adapter,
                "model.finetune=\"lora\"",
                "train.sync_ref_model=false",
                "lora.r=8",
                "run.name=\"e61\"",
            ],
            &["--skip-eval"],
        ),
        &["lora.r", "model.adapter"],
    );
    succeeds(
        "adapter resumed as LoRA",
        &train(
            dir,
            &model,
            &[
                &with_adapter,
                "model.finetune=\"lora\"",
                "train.sync_ref_model=false",
                "run.name=\"cont\"",
            ],
            &["--skip-eval"],
        ),
    );
    let recorded = std::fs::read_to_string(dir.join("runs/cont/recipe.toml")).unwrap();
    assert!(
        !recorded.contains("\nr = "),
        "recipe.toml records the adapter's own rank:\n{recorded}"
    );
    succeeds(
        "full fine-tuning from an adapter",
        &train(
            dir,
            &model,
            &[&with_adapter, "run.name=\"full\""],
            &["--skip-eval"],
        ),
    );
}

#[test]
fn configs_and_tokenizers_that_disagree_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let inspect = |m: &Path| dmpo(dir, &["inspect", "--model", m.to_str().unwrap()]);
    for (name, key, value, needle) in [
        (
            "gpt2",
            "model_type",
            serde_json::json!("gpt2"),
            "model_type",
        ),
        (
            "mask-eos",
            "mask_token_id",
            serde_json::json!(1),
            "mask_token_id",
        ),
        (
            "mask-bos",
            "mask_token_id",
            serde_json::json!(0),
            "mask_token_id",
        ),
        ("clip", "clip_qkv", serde_json::json!(8.0), "clip_qkv"),
        (
            "affine",
            "layer_norm_with_affine",
            serde_json::json!(false),
            "layer_norm_with_affine",
        ),
        (
            "bias",
            "bias_for_layer_norm",
            serde_json::json!(true),
            "bias_for_layer_norm",
        ),
    ] {
        let m = model_copy(dir, name, |c| c[key] = value);
        fails(name, &inspect(&m), &[needle, "config.json"]);
    }
    // The tokenizer must be the config's: the same mask and end-of-text ids, no token beyond
    // the embedding table; inspect checks it as generate does.
    let edit_tokenizer = |name: &str, edit: &dyn Fn(&mut serde_json::Value)| {
        let m = model_copy(dir, name, |_| {});
        let p = m.join("tokenizer.json");
        let mut t: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
        edit(&mut t);
        std::fs::write(&p, t.to_string()).unwrap();
        m
    };
    let swap = |a: &'static str, b: &'static str| {
        move |t: &mut serde_json::Value| {
            let id = |t: &serde_json::Value, s: &str| t["model"]["vocab"][s].clone();
            let (ia, ib) = (id(t, a), id(t, b));
            for e in t["added_tokens"].as_array_mut().unwrap() {
                if e["content"] == a {
                    e["id"] = ib.clone();
                } else if e["content"] == b {
                    e["id"] = ia.clone();
                }
            }
            t["model"]["vocab"][a] = ib.clone();
            t["model"]["vocab"][b] = ia.clone();
        }
    };
    let mask = edit_tokenizer("mask", &swap("<|mdm_mask|>", "<unk>"));
    fails(
        "mask id",
        &inspect(&mask),
        &["<|mdm_mask|>", "mask_token_id", "disagree"],
    );
    fails(
        "mask id, generate",
        &generate(dir, &mask, &[]),
        &["mask_token_id"],
    );
    let eos = edit_tokenizer("eos", &swap("<|endoftext|>", "<|startoftext|>"));
    fails("eos id", &inspect(&eos), &["eos_token_id", "disagree"]);
    // transformers ignores the file's truncation and padding when encoding a prompt.
    let prompt = |m: &Path| {
        dmpo(
            dir,
            &[
                "prompt",
                "--task",
                "sudoku",
                "--data",
                "builtin",
                "--index",
                "0",
                "--style",
                "compact",
                "--model",
                m.to_str().unwrap(),
            ],
        )
    };
    let plain = prompt(&model_copy(dir, "plain", |_| {}));
    succeeds("prompt", &plain);
    let truncating = edit_tokenizer("trunc", &|t| {
        t["truncation"] = serde_json::json!({"direction": "Right", "max_length": 4, "strategy": "LongestFirst", "stride": 0});
        t["padding"] = serde_json::json!({"strategy": {"Fixed": 64}, "direction": "Right", "pad_to_multiple_of": null, "pad_id": 1, "pad_type_id": 0, "pad_token": "<|endoftext|>"});
    });
    assert_eq!(prompt(&truncating).stdout, plain.stdout);
    // A byte-order mark before config.json's text is skipped.
    let bom = model_copy(dir, "bom", |_| {});
    let text = std::fs::read_to_string(bom.join("config.json")).unwrap();
    std::fs::write(bom.join("config.json"), format!("\u{feff}{text}")).unwrap();
    succeeds("BOM", &inspect(&bom));
}

#[test]
fn score_refuses_files_of_another_task_and_counts_once() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let record = |truth: &str| serde_json::json!({"question": "3102200002100320", "generations": "<answer>3142243142131324</answer>", "ground_truth": truth});
    let write = |name: &str, doc: serde_json::Value| {
        let p = dir.join(name);
        std::fs::write(&p, doc.to_string()).unwrap();
        p.display().to_string()
    };
    let good = write(
        "eval_after_len8.json",
        serde_json::json!({"task": "sudoku", "generations": [record("3142243142131324")]}),
    );
    let score = |task: &str, files: &[&str]| {
        let mut args = vec!["score", "--task", task];
        args.extend(files);
        dmpo(dir, &args)
    };
    succeeds("sudoku", &score("sudoku", &[&good]));
    for task in ["gsm8k", "countdown", "math"] {
        fails(task, &score(task, &[&good]), &["sudoku generations", task]);
    }
    // Without the `task` key, the ground truths still tell.
    let untagged = write(
        "plain.json",
        serde_json::json!({"generations": [record("3142243142131324")]}),
    );
    fails(
        "untagged as gsm8k",
        &score("gsm8k", &[&untagged]),
        &["ground_truth", "gsm8k"],
    );
    fails("twice", &score("sudoku", &[&good, &good]), &["given twice"]);
    let other = write(
        "summary.json",
        serde_json::json!({"before": [], "after": []}),
    );
    fails(
        "not an evaluation file",
        &score("sudoku", &[&other]),
        &["not an evaluation file"],
    );
    let bad_truth = write(
        "bad.json",
        serde_json::json!({"generations": [record("123")]}),
    );
    fails(
        "invalid ground truth",
        &score("sudoku", &[&bad_truth]),
        &["ground_truth", "123"],
    );
    let bom = dir.join("bom.json");
    std::fs::write(
        &bom,
        format!("\u{feff}{}", std::fs::read_to_string(&good).unwrap()),
    )
    .unwrap();
    succeeds("BOM", &score("sudoku", &[bom.to_str().unwrap()]));
}

#[test]
fn resume_and_overwrite_touch_only_what_a_run_made() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let model = model_copy(dir, "m", |_| {});
    let run = dir.join("runs/r");
    fails(
        "nothing to resume",
        &train(dir, &model, &[], &["--resume", "--skip-eval"]),
        &["nothing to resume"],
    );
    assert!(!run.exists(), "a refused resume creates nothing");
    succeeds("first run", &train(dir, &model, &[], &["--skip-eval"]));
    fails(
        "overwrite with a mistyped data path",
        &train(
            dir,
            &model,
            &["task.train=\"missing.csv\""],
            &["--overwrite", "--skip-eval"],
        ),
        &["missing.csv"],
    );
    assert!(
        run.join("checkpoints/step-000001/state.json").is_file(),
        "a refused overwrite keeps the previous run"
    );
    std::fs::write(run.join("eval_notes.json"), "{}").unwrap();
    std::fs::write(run.join("eval_after_len8.json"), "{}").unwrap();
    succeeds(
        "overwrite",
        &train(dir, &model, &[], &["--overwrite", "--skip-eval"]),
    );
    assert!(
        run.join("eval_notes.json").is_file(),
        "a user's file is kept"
    );
    assert!(
        !run.join("eval_after_len8.json").exists(),
        "the run's own evaluation is removed"
    );
    std::fs::remove_file(run.join("recipe.toml")).unwrap();
    fails(
        "recipe.toml deleted",
        &train(
            dir,
            &model,
            &["train.steps=2", "run.seed=7"],
            &["--resume", "--skip-eval"],
        ),
        &["recipe.toml", "missing"],
    );
}

#[test]
fn samplers_and_data_files_at_their_limits() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let model = root().join("models/tiny-sudoku");
    // Random remasking checks the logits as low-confidence remasking does.
    for remasking in ["random", "low_confidence"] {
        fails(
            remasking,
            &generate(
                dir,
                &model,
                &["--cfg", "1e38", "--remasking", remasking, "--json"],
            ),
            &["non-finite"],
        );
    }
    // Dream's top_k at or beyond the vocabulary keeps every token (Hugging Face clamps it).
    let dream = root().join("fixtures/golden-dream");
    let d = dream.to_str().unwrap();
    let base = [
        "generate",
        "--model",
        d,
        "--prompt-ids",
        "7,8,9",
        "--gen-length",
        "8",
        "--json",
    ];
    let plain = dmpo(dir, &base);
    succeeds("dream", &plain);
    let mut clamped = base.to_vec();
    clamped.extend(["--top-k", "100000"]);
    let out = dmpo(dir, &clamped);
    succeeds("top_k beyond the vocabulary", &out);
    let ids =
        |o: &Output| serde_json::from_slice::<serde_json::Value>(&o.stdout).unwrap()["ids"].clone();
    assert_eq!(
        ids(&out),
        ids(&plain),
        "a top_k of the whole vocabulary filters nothing"
    );
    // An all-padding row has no logits.
    let input = dir.join("pad.st");
    write_i64(
        &input,
        &[
            ("input_ids", &[7, 8, 9, 7, 8, 9], &[2, 3]),
            ("attention_mask", &[1, 1, 1, 0, 0, 0], &[2, 3]),
        ],
    )
    .unwrap();
    fails(
        "all-padding row",
        &dmpo(
            dir,
            &[
                "logits",
                "--model",
                model.to_str().unwrap(),
                "--input",
                "pad.st",
                "--output",
                "o.st",
            ],
        ),
        &["row 1", "attention_mask"],
    );
    // A data file with no line end is not read whole.
    fails(
        "endless data file",
        &dmpo(
            dir,
            &[
                "prompt",
                "--task",
                "countdown",
                "--data",
                "/dev/zero",
                "--index",
                "0",
            ],
        ),
        &["/dev/zero", "MiB"],
    );
}

#[test]
fn resume_checks_what_the_checkpoint_was_trained_on() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let resume = |model: &Path, name: &str, extra: &[&str]| {
        let run = format!("run.name=\"{name}\"");
        let mut sets = vec![run.as_str(), "train.steps=2"];
        sets.extend(extra);
        train(dir, model, &sets, &["--resume", "--skip-eval"])
    };
    let first = |model: &Path, name: &str, extra: &[&str]| {
        let run = format!("run.name=\"{name}\"");
        let mut sets = vec![run.as_str()];
        sets.extend(extra);
        succeeds(name, &train(dir, model, &sets, &["--skip-eval"]));
        dir.join("runs").join(name).join("checkpoints/step-000001")
    };
    let lora = [
        "model.finetune=\"lora\"",
        "train.sync_ref_model=false",
        "lora.r=4",
    ];

    // The base weights at model.path changed (LoRA trains on them).
    let m = model_copy(dir, "edited", |_| {});
    first(&m, "edited", &lora);
    rewrite_weights(
        &m,
        None,
        Some(("model.transformer.ln_f.weight", 2.0)),
        false,
    );
    fails(
        "edited base",
        &resume(&m, "edited", &lora),
        &["model.path", "changed"],
    );

    // The model was re-created with another configuration.
    let m = model_copy(dir, "recreated", |_| {});
    first(&m, "recreated", &[]);
    let p = m.join("config.json");
    let mut c: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
    c["rope_theta"] = serde_json::json!(10000.0);
    std::fs::write(&p, c.to_string()).unwrap();
    fails(
        "re-created model",
        &resume(&m, "recreated", &[]),
        &["config.json", "rope_theta"],
    );

    // Record files truncated, zero-filled or swapped for another run's.
    let m = model_copy(dir, "m", |_| {});
    let full = first(&m, "full", &[]);
    let lora_ckpt = first(&m, "lora", &lora);
    let bin = full.join("model.bin");
    let original = std::fs::read(&bin).unwrap();
    std::fs::write(&bin, &original[..original.len() / 2]).unwrap();
    fails(
        "truncated",
        &resume(&m, "full", &[]),
        &["model.bin", "truncated or replaced"],
    );
    std::fs::write(&bin, vec![0u8; original.len()]).unwrap();
    fails("zero-filled", &resume(&m, "full", &[]), &["model.bin"]);
    std::fs::copy(lora_ckpt.join("model.bin"), &bin).unwrap();
    fails(
        "another run's record",
        &resume(&m, "full", &[]),
        &["model.bin"],
    );
    std::fs::write(&bin, &original).unwrap();
    // state.json must be its directory's step.
    let state = full.join("state.json");
    let text = std::fs::read_to_string(&state).unwrap();
    std::fs::write(&state, text.replace("\"step\": 1", "\"step\": 7")).unwrap();
    fails(
        "edited state.json",
        &resume(&m, "full", &[]),
        &["state.json", "step 7"],
    );
    std::fs::write(&state, text).unwrap();
    succeeds("restored", &resume(&m, "full", &[]));
}

#[test]
fn unclear_errors_name_the_file_key_and_limit() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    // A finite weight beyond f16's range is an overflow, not "non-finite".
    let big = model_copy(dir, "big", |_| {});
    rewrite_weights(
        &big,
        None,
        Some(("model.transformer.ln_f.weight", 1e5)),
        false,
    );
    fails(
        "1e5 in f16",
        &generate(dir, &big, &["--dtype", "f16"]),
        &["ln_f.weight", "100000", "beyond the range of f16"],
    );
    // A temperature too small to divide by is named.
    let dream = root().join("fixtures/golden-dream");
    fails(
        "temperature 1e-300",
        &dmpo(
            dir,
            &[
                "generate",
                "--model",
                dream.to_str().unwrap(),
                "--prompt-ids",
                "7,8,9",
                "--gen-length",
                "8",
                "--temperature",
                "1e-300",
            ],
        ),
        &["temperature"],
    );
    // A safetensors header whose offsets lie beyond the data names the tensor.
    let lying = model_copy(dir, "lying", |_| {});
    let file = lying.join("model.safetensors");
    let bytes = std::fs::read(&file).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let mut header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    let end = header["model.transformer.wte.weight"]["data_offsets"][1]
        .as_u64()
        .unwrap();
    header["model.transformer.wte.weight"]["data_offsets"][1] = serde_json::json!(end + 4096);
    let mut text = header.to_string().into_bytes();
    text.resize(text.len().div_ceil(8) * 8, b' ');
    let mut out = (text.len() as u64).to_le_bytes().to_vec();
    out.extend(&text);
    out.extend(&bytes[8 + n..]);
    std::fs::write(&file, out).unwrap();
    fails(
        "offsets beyond the data",
        &dmpo(dir, &["inspect", "--model", lying.to_str().unwrap()]),
        &["model.safetensors", "wte.weight"],
    );
    // Data files: the format expected is said.
    std::fs::write(
        dir.join("a.json"),
        "[\n {\"question\": \"q\", \"answer\": \"#### 5\"}\n]\n",
    )
    .unwrap();
    let prompt = |task: &str, file: &str| {
        dmpo(
            dir,
            &["prompt", "--task", task, "--data", file, "--index", "0"],
        )
    };
    fails(
        "JSON array",
        &prompt("gsm8k", "a.json"),
        &["a.json", "one JSON object per line"],
    );
    std::fs::write(dir.join("g.csv"), "question,answer\nq,#### 5\n").unwrap();
    fails(
        "GSM8K as CSV",
        &prompt("gsm8k", "g.csv"),
        &["g.csv", "Sudoku only"],
    );
    std::fs::write(
        dir.join("c.jsonl"),
        "{\"nums\": [10000000000000000000, 2], \"target\": 6}\n",
    )
    .unwrap();
    fails(
        "1e19",
        &prompt("countdown", "c.jsonl"),
        &["c.jsonl", "out of range"],
    );
    // An empty model path is named.
    let model = model_copy(dir, "m", |_| {});
    fails(
        "model.path empty",
        &train(dir, &model, &["model.path=\"\""], &["--skip-eval"]),
        &["model.path", "empty"],
    );
}

#[test]
fn a_resume_with_another_evaluation_set_compares_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let model = model_copy(dir, "m", |_| {});
    succeeds("4 items", &train(dir, &model, &["eval.limit=4"], &[]));
    succeeds(
        "8 items",
        &train(
            dir,
            &model,
            &["eval.limit=8", "train.steps=2"],
            &["--resume"],
        ),
    );
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("runs/r/summary.json")).unwrap())
            .unwrap();
    let items = |key: &str| -> Vec<u64> {
        summary[key]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["items"].as_u64().unwrap())
            .collect()
    };
    assert_eq!(items("after"), [8]);
    assert!(items("before").iter().all(|&n| n == 8), "{summary}");
}
