//! The committed tiny model (`models/tiny-sudoku`, built by `cargo xtask pretrain`): its
//! tokenizer round-trips the training format exactly, and greedy generation with the RL
//! recipe's sampler gives answers the Sudoku reward can parse.

use std::path::PathBuf;

use burn::backend::Flex;
use dllm_model::{load_model, ChatTokenizer, LoadOptions};
use dllm_sample::{generate, SamplerConfig};
use dmpo_train::recipe::PromptStyle;
use dmpo_train::tasks::{completion_text, prompt_ids};
use rewards::{GroundTruth, Task};

fn model_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../models/tiny-sudoku")
}

fn tokenizer() -> ChatTokenizer {
    ChatTokenizer::from_file(model_dir().join("tokenizer.json")).expect("tiny tokenizer")
}

#[test]
fn tokenizer_round_trips_the_training_format() {
    let tok = tokenizer();
    for name in ["<|mdm_mask|>", "<|endoftext|>", "<answer>", "</answer>"] {
        assert!(tok.token_id(name).is_some(), "{name} is not a token");
    }
    let item = &rewards::data::sudoku_4x4_test()[0];
    let GroundTruth::Sudoku { solution, .. } = &item.truth else {
        panic!("not a Sudoku item")
    };
    let prompt = prompt_ids(&tok, item, PromptStyle::Compact, true, 200).expect("prompt");
    let completion = format!("<answer>{solution}</answer>{}", tok.eos);
    let completion_ids = tok.encode(&completion).expect("encode completion");
    // One token per digit, plus the two answer tags and EOS.
    assert_eq!(completion_ids.len(), 16 + 3);
    let ids: Vec<u32> = prompt.iter().chain(&completion_ids).copied().collect();
    let text = tok.decode(&ids, false).expect("decode");
    let prompt_text = tok.chat_template(
        &[dllm_model::ChatMessage::user(
            dmpo_train::tasks::prompt_text(item, PromptStyle::Compact, true),
        )],
        true,
    );
    assert_eq!(text, format!("{prompt_text}{completion}"));
    assert_eq!(tok.encode(&text).expect("re-encode"), ids);
    // The answer tags survive skipping special tokens; EOS does not.
    assert_eq!(
        completion_text(&tok, &completion_ids, tok.eos_id()).expect("completion text"),
        format!("<answer>{solution}</answer>")
    );
}

#[test]
fn greedy_generation_is_parseable() {
    let tok = tokenizer();
    let device = Default::default();
    let model = load_model::<Flex>(model_dir(), LoadOptions::default(), &device).expect("model");
    assert_eq!(
        model.config.mask_token_id,
        tok.token_id("<|mdm_mask|>").unwrap()
    );
    assert_eq!(model.config.eos_token_id, tok.eos_id());
    let items: Vec<_> = rewards::data::sudoku_4x4_test()
        .into_iter()
        .take(8)
        .collect();
    let prompts: Vec<Vec<u32>> = items
        .iter()
        .map(|it| prompt_ids(&tok, it, PromptStyle::Compact, true, 200).expect("prompt"))
        .collect();
    let config = SamplerConfig {
        gen_length: 24,
        block_length: 8,
        steps: 12,
        temperature: 0.0,
        ..Default::default()
    };
    let out = generate(&model, &prompts, &config).expect("generate");
    for (item, ids) in items.iter().zip(&out.completions) {
        let text = completion_text(&tok, ids, tok.eos_id()).expect("decode");
        let answer = rewards::sudoku::extract_answer(&text)
            .unwrap_or_else(|| panic!("no <answer> block in {text:?}"));
        assert_eq!(
            answer.len(),
            16,
            "answer {answer:?} of {text:?} is not 16 digits"
        );
        let score = rewards::eval_correct(Task::Sudoku, &text, item).expect("score");
        assert_eq!(score.total, 8);
    }
}
