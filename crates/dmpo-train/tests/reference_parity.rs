//! docs/reference-parity.md, one test per row that is not covered elsewhere: the paper recipes'
//! values against a table read from the reference code, the training and evaluation defaults, the
//! prompt text byte for byte (through `dmpo prompt`), the evaluation order, the training-data
//! preparation and the completion text the rewards and scores read.

mod common;

use std::path::{Path, PathBuf};

use common::{dmpo, fails, succeeds};
use dmpo_train::recipe::{CompletionText, EvalOrder, PromptStyle};
use dmpo_train::tasks::{eval_items, prepare_training_items};
use dmpo_train::Recipe;
use rewards::{GroundTruth, Task, TaskItem};

fn recipe(name: &str) -> Recipe {
    let p = common::root().join("recipes").join(name);
    Recipe::load(&p, &[]).unwrap_or_else(|e| panic!("{name}: {e}"))
}

/// `recipe`'s value of `key` (`section.key`) as TOML.
fn value(recipe: &Recipe, key: &str) -> toml::Value {
    let (section, field) = key.split_once('.').unwrap();
    let table = toml::Value::try_from(recipe).unwrap();
    table[section]
        .get(field)
        .unwrap_or_else(|| panic!("{key} not serialised"))
        .clone()
}

/// Settings both references share (LoRA r 128 / α 64 / dropout 0.05 on the four layers PEFT finds,
/// AdamW (0.9, 0.99) with weight decay 0.1, clip 0.2, prompts ≤ 200 tokens, data shuffled with
/// seed 42, 256 tokens in blocks of 32 over 128 steps; evaluation in blocks of 32, the seed-42
/// item order, pads attended).
const COMMON: &[(&str, &str)] = &[
    // `load_in_4bit` with double quantisation and NF4 (docs/quantization.md).
    ("model.quantize", "\"nf4\""),
    ("train.beta1", "0.9"),
    ("train.beta2", "0.99"),
    ("train.weight_decay", "0.1"),
    ("train.max_grad_norm", "0.2"),
    ("lora.r", "128"),
    ("lora.alpha", "64.0"),
    ("lora.dropout", "0.05"),
    (
        "lora.target_modules",
        "[\"q_proj\", \"k_proj\", \"v_proj\", \"up_proj\"]",
    ),
    ("task.max_prompt_tokens", "200"),
    ("task.shuffle_seed", "42"),
    ("rollout.gen_length", "256"),
    ("rollout.block_length", "32"),
    ("rollout.steps", "128"),
    ("eval.block_length", "32"),
    ("eval.order", "\"reference\""),
    ("eval.padding_mask", "false"),
];

/// The reference's settings (yuchen-zhu-zyc/DMPO `DMPO/run_dmpo.sh`, `dmpo_train_config.yaml`,
/// `DMPO_config.py`; 8 GPUs x 4 rows x 2 accumulation steps), the same for every task.
const DMPO: &[(&str, &str)] = &[
    ("train.algorithm", "\"dmpo\""),
    ("train.lr", "1e-6"),
    ("train.eps", "1e-8"),
    ("train.group_size", "16"),
    ("train.prompts_per_step", "4"),
    ("train.num_iterations", "8"),
    ("train.loss_unit_rows", "4"),
    (
        "lora.target_modules",
        "[\"q_proj\", \"k_proj\", \"v_proj\", \"up_proj\"]",
    ),
    ("task.prompt_style", "\"reference\""),
    ("task.reward_text", "\"whole\""),
    ("rollout.temperature", "0.2"),
    ("rollout.cache", "\"prefix\""),
    ("rollout.remasking", "\"low_confidence\""),
    ("rollout.cfg_scale", "0.0"),
    ("dmpo.alpha", "0.04"),
    ("dmpo.coeff", "1.0"),
    ("dmpo.num_replicates", "4"),
    ("dmpo.antithetic", "true"),
    ("dmpo.clamp_mask_prob", "true"),
    ("dmpo.mask_after_eos", "true"),
    ("dmpo.baseline", "\"negative_centering\""),
    ("dmpo.centering_strength", "1.0"),
    ("dmpo.loss", "\"wdce\""),
    ("eval.steps_per_token", "1.0"),
    ("eval.gen_lengths", "[128, 256, 512]"),
    ("eval.completion_text", "\"whole_with_special\""),
];

/// d1's settings (dllm-reasoning/d1 `diffu-grpo/slurm_scripts/train.yaml`, the task sbatch
/// scripts, `diffu_grpo_config.py`; 8 GPUs x 6 rows x 2 accumulation steps).
const D1: &[(&str, &str)] = &[
    ("train.algorithm", "\"diffu_grpo\""),
    ("train.lr", "3e-6"),
    ("train.group_size", "6"),
    ("train.prompts_per_step", "16"),
    ("train.loss_unit_rows", "6"),
    (
        "lora.target_modules",
        "[\"q_proj\", \"k_proj\", \"v_proj\", \"up_proj\"]",
    ),
    ("rollout.temperature", "0.9"),
    ("rollout.cache", "\"none\""),
    ("grpo.epsilon", "0.5"),
    ("grpo.beta", "0.04"),
    ("grpo.p_mask_prompt", "0.15"),
    ("grpo.scale_rewards", "false"),
    ("grpo.d1_accumulation_steps", "2"),
    ("eval.steps_per_token", "0.5"),
];

fn parse(v: &str) -> toml::Value {
    toml::from_str::<toml::Table>(&format!("v = {v}")).unwrap()["v"].clone()
}

#[test]
fn paper_recipes_hold_the_reference_values() {
    for task in ["gsm8k", "math", "countdown", "sudoku"] {
        for (file, table, mu) in [
            (format!("llada8b-{task}.toml"), DMPO, 8),
            (
                format!("llada8b-{task}-d1.toml"),
                D1,
                if matches!(task, "gsm8k" | "math") {
                    12
                } else {
                    8
                },
            ),
        ] {
            let r = recipe(&file);
            for (key, want) in COMMON.iter().chain(table.iter()) {
                assert_eq!(value(&r, key), parse(want), "{file}: {key}");
            }
            assert_eq!(r.train.num_iterations, mu, "{file}: num_iterations");
            assert_eq!(r.task.name, task, "{file}");
            // The training split: Countdown's 3-number rows; 500 rows held out of Countdown and Sudoku.
            let held = if matches!(task, "countdown" | "sudoku") {
                500
            } else {
                0
            };
            assert_eq!(r.task.holdout, held, "{file}: holdout");
            assert_eq!(
                r.task.countdown_numbers,
                if task == "countdown" { 3 } else { 0 }
            );
            // Training masks the pads (our default, a named setting), evaluation attends them.
            assert!(r.rollout.padding_mask, "{file}: rollout.padding_mask");
            // 64 (DMPO) or 96 (d1) completions per optimiser step, as the 8-GPU reference.
            assert_eq!(r.train.rows_per_step(), if table == DMPO { 64 } else { 96 });
        }
    }
}

#[test]
fn training_masks_padding_unless_told_and_evaluation_attends_it() {
    let base = "[model]\npath = \"m\"\n[task]\nname = \"gsm8k\"\n";
    let parse = |text: &str, o: &[&str]| {
        let o: Vec<String> = o.iter().map(|s| s.to_string()).collect();
        Recipe::parse(text, Path::new("r.toml"), &o).unwrap()
    };
    // No [rollout], a [rollout] without the key, and an override turning it off.
    assert!(parse(base, &[]).rollout.padding_mask);
    let with_rollout = format!("{base}[rollout]\ngen_length = 64\nblock_length = 32\nsteps = 32\n");
    assert!(parse(&with_rollout, &[]).rollout.padding_mask);
    assert!(
        !parse(&with_rollout, &["rollout.padding_mask=false"])
            .rollout
            .padding_mask
    );
    let r = parse(base, &[]);
    assert!(!r.eval.padding_mask);
    assert_eq!(r.eval.order, EvalOrder::Reference);
    assert_eq!(r.eval.completion_text, CompletionText::WholeWithSpecial);
    assert_eq!(r.task.reward_text, CompletionText::Whole);
    // d1's advantages are not std-scaled; DMPO's DDO splits the replicates in halves.
    assert!(!r.grpo.scale_rewards && r.dmpo.ddo_independent_sets);
    assert!(!r.lora.rollout_dropout);
    // PEFT's "all-linear" names every LLaDA linear layer.
    let all = parse(base, &["lora.target_modules=\"all-linear\""]);
    assert_eq!(all.lora.target_modules, dllm_model::LINEAR_NAMES.to_vec());
    let bad = Recipe::parse(
        base,
        Path::new("r.toml"),
        &["lora.target_modules=\"everything\"".to_string()],
    )
    .unwrap_err()
    .to_string();
    assert!(
        bad.contains("everything") && bad.contains("all-linear"),
        "{bad}"
    );
    // A unit must divide the step's rows.
    let bad = Recipe::parse(
        base,
        Path::new("r.toml"),
        &["train.loss_unit_rows=5".to_string()],
    )
    .unwrap_err()
    .to_string();
    assert!(bad.contains("train.loss_unit_rows"), "{bad}");
}

fn gsm8k_file(dir: &Path) -> PathBuf {
    let path = dir.join("gsm8k.jsonl");
    std::fs::write(
        &path,
        concat!(
            r#"{"question": "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. How many clips did Natalia sell altogether in April and May?", "answer": "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\nNatalia sold 48+24 = <<48+24=72>>72 clips altogether in April and May.\n#### 72"}"#,
            "\n"
        ),
    )
    .unwrap();
    path
}

const GSM8K_QUESTION: &str = "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. How many clips did Natalia sell altogether in April and May?";

fn prompt(dir: &Path, args: &[&str]) -> String {
    let out = dmpo(dir, args);
    succeeds("dmpo prompt", &out);
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn prompts_equal_the_reference_strings_byte_for_byte() {
    let dir = tempfile::tempdir().unwrap();
    let data = gsm8k_file(dir.path());
    let data = data.to_str().unwrap();
    // DMPO/d1 eval/gsm8k.py: GSM_SYSTEM_PROMPT + "\n\n" + question in the chat template (content
    // stripped), then "<reasoning>" appended.
    let want_eval = format!(
        "<|startoftext|><|start_header_id|>user<|end_header_id|>\n\n\
         You are a math expert. You will be given a question to solve. Solve it step by step. \
         Wrap the final answer in a \\boxed{{}}. \nRespond in the following format:\n<reasoning>\n\
         Your reasoning here\n</reasoning>\n<answer>\n\\boxed{{...}}\n</answer>\n\n{GSM8K_QUESTION}\
         <|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n<reasoning>"
    );
    let args = ["prompt", "--task", "gsm8k", "--data", data, "--index", "0"];
    assert_eq!(
        prompt(dir.path(), &[&args[..], &["--eval"]].concat()),
        want_eval
    );
    // DMPO/data_utils.py: SYSTEM_PROMPT + "\n\n" + question; no prefill in training (the leading
    // newline of SYSTEM_PROMPT is stripped by the template).
    let want_train = format!(
        "<|startoftext|><|start_header_id|>user<|end_header_id|>\n\n\
         Respond in the following format:\n<reasoning>\n...\n</reasoning>\n<answer>\n...\n</answer>\n\n\n\
         {GSM8K_QUESTION}<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n"
    );
    assert_eq!(prompt(dir.path(), &args), want_train);
    // The tiny model's tokenizer gives the same template tokens.
    let model = common::root().join("models/tiny-sudoku");
    let with_model = [&args[..], &["--model", model.to_str().unwrap()]].concat();
    assert_eq!(prompt(dir.path(), &with_model), want_train);
    // The first Sudoku item an evaluation scores is row 361 of the test CSV (numpy's order).
    let sudoku = prompt(
        dir.path(),
        &[
            "prompt", "--task", "sudoku", "--data", "builtin", "--index", "0", "--eval",
        ],
    );
    let GroundTruth::Sudoku { puzzle, .. } = &rewards::data::sudoku_4x4_test()[361].truth else {
        panic!("not sudoku")
    };
    let tail = format!(
        "Solve the following Sudoku puzzle: {puzzle}<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n<reasoning>"
    );
    assert!(sudoku.ends_with(&tail), "{sudoku}");
    fails(
        "index out of range",
        &dmpo(
            dir.path(),
            &["prompt", "--task", "gsm8k", "--data", data, "--index", "7"],
        ),
        &["--index 7", "1 items"],
    );
}

#[test]
fn evaluation_scores_the_reference_subset_in_its_order() {
    let section = recipe("llada8b-countdown.toml").task;
    let all = rewards::data::countdown_cd3_test();
    let ordered = eval_items(&section, Task::Countdown, EvalOrder::Reference, 0).unwrap();
    let order = rewards::data::reference_eval_order(Task::Countdown).unwrap();
    assert_eq!(ordered.len(), 256);
    for (item, &i) in ordered.iter().zip(&order) {
        assert_eq!(item, &all[i]);
    }
    // `limit` keeps the first of the order; file order keeps the file's first.
    let first = eval_items(&section, Task::Countdown, EvalOrder::Reference, 3).unwrap();
    assert_eq!(first, ordered[..3].to_vec());
    let file = eval_items(&section, Task::Countdown, EvalOrder::File, 3).unwrap();
    assert_eq!(file, all[..3].to_vec());
    let sudoku = recipe("llada8b-sudoku.toml").task;
    assert_eq!(
        eval_items(&sudoku, Task::Sudoku, EvalOrder::Reference, 0)
            .unwrap()
            .len(),
        256
    );
}

#[test]
fn training_data_keeps_the_three_number_rows_shuffled_less_the_holdout() {
    let mut section = recipe("llada8b-countdown.toml").task;
    let items: Vec<TaskItem> = (0..1000)
        .map(|i| {
            let n = if i % 2 == 0 { 3 } else { 4 };
            TaskItem::countdown((0..n).map(|k| (i * 10 + k) as i64).collect(), i as i64)
        })
        .collect();
    let prepared = prepare_training_items(items.clone(), &section);
    // 500 three-number rows, all held out: none is left.
    assert!(prepared.is_empty());
    section.holdout = 100;
    let prepared = prepare_training_items(items.clone(), &section);
    assert_eq!(prepared.len(), 400);
    assert!(prepared.iter().all(|it| matches!(
        &it.truth,
        GroundTruth::Countdown { numbers, .. } if numbers.len() == 3
    )));
    // Shuffled (not the file order), the same for the same seed.
    let threes: Vec<&TaskItem> = items.iter().step_by(2).collect();
    assert!(prepared.iter().zip(&threes).any(|(a, b)| a != *b));
    assert_eq!(prepared, prepare_training_items(items, &section));
    let _ = PromptStyle::Reference;
}

#[test]
fn completion_text_modes_read_the_whole_completion_or_stop_at_eos() {
    let tok = dllm_model::ChatTokenizer::from_file(
        common::root().join("models/tiny-sudoku/tokenizer.json"),
    )
    .unwrap();
    let eos = tok.eos_id();
    let mut ids = tok.encode("<answer>1234</answer>").unwrap();
    ids.push(eos);
    ids.extend(tok.encode("<answer>4321</answer>").unwrap());
    ids.push(eos);
    let read = |m| dmpo_train::tasks::completion_text_as(&tok, &ids, eos, m).unwrap();
    assert_eq!(read(CompletionText::UntilEos), "<answer>1234</answer>");
    assert_eq!(
        read(CompletionText::Whole),
        "<answer>1234</answer><answer>4321</answer>"
    );
    assert_eq!(
        read(CompletionText::WholeWithSpecial),
        format!("<answer>1234</answer>{0}<answer>4321</answer>{0}", tok.eos)
    );
}

#[test]
fn the_update_does_not_depend_on_the_micro_batch() {
    // docs/algorithm.md §5.2: the gradient is the mean over loss units, whatever the passes. One
    // step of 8 rows (2 groups of 4), one update, in one pass of 8 or two passes of 4, with a unit
    // of the whole step (spanning both passes) or of 2 rows.
    let dir = tempfile::tempdir().unwrap();
    let model = common::root().join("models/tiny-sudoku");
    for (algorithm, unit) in [
        ("dmpo", "0"),
        ("dmpo", "2"),
        ("diffu_grpo", "0"),
        ("diffu_grpo", "2"),
    ] {
        let mut results = Vec::new();
        for micro_batch in ["8", "4"] {
            let name = format!("{algorithm}-{unit}-{micro_batch}");
            let sets = [
                format!("train.algorithm=\"{algorithm}\""),
                format!("train.loss_unit_rows={unit}"),
                format!("train.micro_batch={micro_batch}"),
                format!("run.name=\"{name}\""),
            ];
            let extra: Vec<&str> = sets.iter().map(String::as_str).collect();
            let out = common::train(dir.path(), &model, &extra, &["--skip-eval"]);
            succeeds(&name, &out);
            let row = common::metrics(&dir.path().join("runs").join(&name)).remove(0);
            results.push((
                row["loss"].as_f64().unwrap(),
                row["grad_norm"].as_f64().unwrap(),
            ));
        }
        let ((l1, g1), (l2, g2)) = (results[0], results[1]);
        let close = |a: f64, b: f64| (a - b).abs() <= 1e-5 * a.abs().max(b.abs()).max(1e-3);
        assert!(
            close(l1, l2) && close(g1, g2),
            "{algorithm}, unit {unit}: loss {l1} vs {l2}, grad norm {g1} vs {g2}"
        );
    }
}

#[test]
fn rollout_dropout_changes_the_rollouts_and_is_reproducible() {
    // The reference samples with LoRA dropout on; `lora.rollout_dropout` does the same (drawn from
    // the step's backend seed, so a rerun repeats it).
    let dir = tempfile::tempdir().unwrap();
    let model = common::root().join("models/tiny-sudoku");
    let run = |name: &str, dropout: bool| {
        let sets = [
            "model.finetune=\"lora\"".to_string(),
            "lora.r=4".into(),
            "lora.dropout=0.5".into(),
            format!("lora.rollout_dropout={dropout}"),
            "train.steps=2".into(),
            "train.sync_ref_model=false".into(),
            "train.lr=1e-2".into(),
            "rollout.gen_length=24".into(),
            "rollout.steps=24".into(),
            format!("run.name=\"{name}\""),
        ];
        let extra: Vec<&str> = sets.iter().map(String::as_str).collect();
        let out = common::train(dir.path(), &model, &extra, &["--skip-eval"]);
        succeeds(name, &out);
        common::metrics(&dir.path().join("runs").join(name))
    };
    let (off, on, again) = (run("off", false), run("on", true), run("again", true));
    assert_eq!(on, again, "same seed, same dropout");
    // Step 0's adapter is fresh (B = 0), so dropout cannot change it; step 1's can.
    assert_eq!(off[0]["sample_completion"], on[0]["sample_completion"]);
    assert_ne!(
        off[1], on[1],
        "dropout in the rollout of an updated adapter"
    );
}
