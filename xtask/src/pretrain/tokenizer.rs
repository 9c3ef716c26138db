//! The pretraining tokenizer: a character-level WordLevel model trained with the `tokenizers`
//! crate over formatted training text (chat-templated prompt + target completion + EOS, and the
//! task's alphabet), with LLaDA's special tokens and the answer tags as added tokens.

use std::collections::HashSet;
use std::path::Path;

use anyhow::{ensure, Context};
use dllm_model::ChatTokenizer;
use dmpo_train::recipe::PromptStyle;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use tokenizers::decoders::fuse::Fuse;
use tokenizers::models::wordlevel::{WordLevel, WordLevelTrainer};
use tokenizers::models::TrainerWrapper;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::{AddedToken, SplitDelimiterBehavior, Tokenizer};

use super::task::PretrainTask;

/// Formatted training examples the tokenizer is trained on.
const TOKENIZER_CORPUS: usize = 512;

/// The mask token of the diffusion model.
pub const MASK_TOKEN: &str = "<|mdm_mask|>";
/// The unknown-character token of the word-level model.
pub const UNK_TOKEN: &str = "<unk>";
/// Special tokens, in id order (ids 0..).
pub const SPECIAL_TOKENS: [&str; 7] = [
    "<|startoftext|>",
    "<|endoftext|>",
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|eot_id|>",
    MASK_TOKEN,
    UNK_TOKEN,
];
/// The answer tags, added after the special tokens: normal added tokens (kept by
/// `decode(.., skip_special = true)`) or special ones, as [`PretrainTask::answer_tags_special`]
/// says.
pub const ANSWER_TOKENS: [&str; 2] = ["<answer>", "</answer>"];

/// Trains the character-level tokenizer over formatted training text and saves it.
pub fn build_tokenizer(
    task: PretrainTask,
    seed: u64,
    excluded: &HashSet<String>,
    path: &Path,
) -> anyhow::Result<ChatTokenizer> {
    let added: Vec<AddedToken> = SPECIAL_TOKENS
        .iter()
        .map(|t| AddedToken::from(*t, true))
        .chain(
            ANSWER_TOKENS
                .iter()
                .map(|t| AddedToken::from(*t, task.answer_tags_special())),
        )
        .collect();
    let model = WordLevel::builder()
        .unk_token(UNK_TOKEN.to_string())
        .build()
        .map_err(anyhow::Error::msg)?;
    let mut tokenizer = Tokenizer::new(model);
    let split = Split::new(
        SplitPattern::Regex("(?s).".into()),
        SplitDelimiterBehavior::Isolated,
        false,
    )
    .map_err(anyhow::Error::msg)?;
    tokenizer.with_pre_tokenizer(Some(split));
    tokenizer.with_decoder(Some(Fuse::new()));

    // The chat template comes from `ChatTokenizer`, which only needs the special tokens: a
    // throw-away copy carrying them renders the corpus.
    let mut with_added = tokenizer.clone();
    with_added.add_tokens(&added);
    let templater = ChatTokenizer::from_tokenizer(with_added, path)?;
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x746F_6B65_6E69_7A65);
    let mut corpus = Vec::with_capacity(TOKENIZER_CORPUS);
    for _ in 0..TOKENIZER_CORPUS {
        let item = task.train_item(&mut rng, excluded)?;
        let prompt = dmpo_train::tasks::prompt_text(&item, PromptStyle::Compact, false);
        corpus.push(format!(
            "{}{}{}",
            templater.chat_template(&[dllm_model::ChatMessage::user(prompt)], true),
            task.target_text(&item, false)?,
            templater.eos
        ));
    }
    // The trainer counts characters; the added tokens are not characters, and it puts them
    // first in the vocabulary itself (ids 0.. in `added`'s order), then registers them.
    let mut characters: Vec<String> = corpus
        .iter()
        .map(|text| {
            added
                .iter()
                .fold(text.clone(), |t, a| t.replace(&a.content, ""))
        })
        .collect();
    if !task.alphabet().is_empty() {
        characters.push(task.alphabet().to_string());
    }
    let mut trainer: TrainerWrapper = WordLevelTrainer::builder()
        .show_progress(false)
        .special_tokens(added.clone())
        .build()
        .map_err(anyhow::Error::msg)?
        .into();
    tokenizer
        .train(&mut trainer, characters.iter())
        .map_err(anyhow::Error::msg)?;
    for (i, t) in added.iter().enumerate() {
        ensure!(
            tokenizer.token_to_id(&t.content) == Some(i as u32),
            "token {} did not get id {i}",
            t.content
        );
    }
    tokenizer
        .save(path, true)
        .map_err(anyhow::Error::msg)
        .with_context(|| format!("writing {}", path.display()))?;
    let loaded = ChatTokenizer::from_file(path)?;
    for (i, t) in added.iter().enumerate() {
        ensure!(
            loaded.token_id(&t.content) == Some(i as u32),
            "token {} has id {:?} after reloading, not {i}",
            t.content,
            loaded.token_id(&t.content)
        );
    }
    let vocab = loaded.inner().get_vocab(true);
    ensure!(
        vocab.values().all(|&i| (i as usize) < loaded.vocab_size()),
        "the reloaded vocabulary has ids beyond its size {}",
        loaded.vocab_size()
    );
    for text in &corpus[..8] {
        let ids = loaded.encode(text)?;
        ensure!(
            loaded.decode(&ids, false)? == *text,
            "the tokenizer does not round-trip {text:?}"
        );
        ensure!(
            ids.iter()
                .all(|&i| loaded.inner().id_to_token(i).as_deref() != Some(UNK_TOKEN)),
            "the tokenizer maps a character of {text:?} to {UNK_TOKEN}"
        );
    }
    Ok(loaded)
}
