//! `tokenizer.json` loading and the chat templates of both families (docs/algorithm.md §1):
//! LLaDA's header-token template and Dream's Qwen2 ChatML, chosen by the special tokens the
//! tokenizer holds.

use std::path::{Path, PathBuf};

use tokenizers::Tokenizer;

use crate::error::{ModelError, Result};

/// A chat message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChatMessage {
    /// `system`, `user` or `assistant`.
    pub role: String,
    /// The message text (stripped of surrounding whitespace when templated).
    pub content: String,
}

impl ChatMessage {
    /// A user message.
    pub fn user(content: impl Into<String>) -> Self {
        Self {
            role: "user".into(),
            content: content.into(),
        }
    }

    /// A system message.
    pub fn system(content: impl Into<String>) -> Self {
        Self {
            role: "system".into(),
            content: content.into(),
        }
    }
}

/// A Hugging Face tokenizer plus the special tokens the chat template and sampler need,
/// found by name in the tokenizer's vocabulary rather than hard-coded for one model.
#[derive(Clone)]
pub struct ChatTokenizer {
    inner: Tokenizer,
    /// The template its special tokens spell (`<|im_start|>` present: Dream's ChatML).
    pub format: ChatFormat,
    /// The file it was loaded from (named in errors).
    path: PathBuf,
    /// Beginning-of-text token, e.g. `<|startoftext|>` (126080 for LLaDA-8B).
    pub bos: String,
    /// End-of-text token, e.g. `<|endoftext|>`.
    pub eos: String,
    /// Start of a role header.
    pub start_header: String,
    /// End of a role header.
    pub end_header: String,
    /// End of a turn.
    pub eot: String,
}

impl std::fmt::Debug for ChatTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatTokenizer")
            .field("vocab_size", &self.inner.get_vocab_size(true))
            .field("bos", &self.bos)
            .field("eos", &self.eos)
            .finish()
    }
}

/// The shape of a chat template.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChatFormat {
    /// LLaDA-8B-Instruct's: BOS, then `<|start_header_id|>{role}<|end_header_id|>\n\n{content}<|eot_id|>`.
    Headers,
    /// Dream's (Qwen2's ChatML): `<|im_start|>{role}\n{content}<|im_end|>\n`, with Qwen's default
    /// system message when the conversation has none.
    ChatMl,
}

/// The system message Dream's (Qwen2's) template inserts when the first message is not one.
pub const CHATML_DEFAULT_SYSTEM: &str = "You are a helpful assistant.";

/// The special-token strings a chat template is written with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChatTokens<'a> {
    /// Which template.
    pub format: ChatFormat,
    /// Beginning of text.
    pub bos: &'a str,
    /// Start of a role header.
    pub start_header: &'a str,
    /// End of a role header.
    pub end_header: &'a str,
    /// End of a turn.
    pub eot: &'a str,
}

impl ChatTokens<'static> {
    /// LLaDA-8B-Instruct's (`tokenizer_config.json` chat template).
    pub const LLADA: Self = Self {
        format: ChatFormat::Headers,
        bos: "<|startoftext|>",
        start_header: "<|start_header_id|>",
        end_header: "<|end_header_id|>",
        eot: "<|eot_id|>",
    };

    /// Dream-v0-Instruct-7B's (Qwen2's ChatML; no BOS, no end-of-header token).
    pub const DREAM: Self = Self {
        format: ChatFormat::ChatMl,
        bos: "",
        start_header: "<|im_start|>",
        end_header: "",
        eot: "<|im_end|>",
    };
}

impl ChatTokens<'_> {
    /// Renders the chat template. LLaDA's ([`ChatFormat::Headers`]): `<BOS>` then, per message,
    /// `<|start_header_id|>{role}<|end_header_id|>\n\n{content.strip()}<|eot_id|>`, then
    /// `<|start_header_id|>assistant<|end_header_id|>\n\n` when `add_generation_prompt`. Dream's
    /// ([`ChatFormat::ChatMl`]): `<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n`
    /// unless the first message is a system one, per message `<|im_start|>{role}\n{content}<|im_end|>\n`
    /// (content as written), then `<|im_start|>assistant\n`.
    pub fn render(&self, messages: &[ChatMessage], add_generation_prompt: bool) -> String {
        if self.format == ChatFormat::ChatMl {
            return self.render_chatml(messages, add_generation_prompt);
        }
        let mut s = self.bos.to_string();
        for m in messages {
            s.push_str(&format!(
                "{}{}{}\n\n{}{}",
                self.start_header,
                m.role,
                self.end_header,
                m.content.trim(),
                self.eot
            ));
        }
        if add_generation_prompt {
            s.push_str(&format!(
                "{}assistant{}\n\n",
                self.start_header, self.end_header
            ));
        }
        s
    }
}

impl ChatTokens<'_> {
    fn render_chatml(&self, messages: &[ChatMessage], add_generation_prompt: bool) -> String {
        let (start, end) = (self.start_header, self.eot);
        let mut s = String::new();
        if messages.first().is_none_or(|m| m.role != "system") {
            s.push_str(&format!("{start}system\n{CHATML_DEFAULT_SYSTEM}{end}\n"));
        }
        for m in messages {
            s.push_str(&format!("{start}{}\n{}{end}\n", m.role, m.content));
        }
        if add_generation_prompt {
            s.push_str(&format!("{start}assistant\n"));
        }
        s
    }
}

const BOS_NAMES: [&str; 3] = ["<|startoftext|>", "<|begin_of_text|>", "<s>"];
const EOS_NAMES: [&str; 3] = ["<|endoftext|>", "<|end_of_text|>", "</s>"];
/// The mask token of LLaDA's and of Dream's tokenizer.
const MASK_NAMES: [&str; 2] = ["<|mdm_mask|>", "<|mask|>"];

impl ChatTokenizer {
    /// Loads `tokenizer.json` (no network).
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        if !path.is_file() {
            return Err(ModelError::io(
                path,
                std::io::Error::new(std::io::ErrorKind::NotFound, "tokenizer.json not found"),
            ));
        }
        let text = crate::text_file::read_text(path)?;
        let mut inner: Tokenizer =
            text.parse()
                .map_err(|e: tokenizers::Error| ModelError::Tokenizer {
                    path: path.to_path_buf(),
                    message: e.to_string(),
                })?;
        // transformers turns the file's `truncation` and `padding` off when it encodes a
        // prompt (padding and truncation are per-call arguments there); so do we.
        inner
            .with_truncation(None)
            .map_err(|e| ModelError::Tokenizer {
                path: path.to_path_buf(),
                message: e.to_string(),
            })?
            .with_padding(None);
        Self::from_tokenizer(inner, path)
    }

    /// Wraps an in-memory tokenizer; `path` names it in errors.
    pub fn from_tokenizer(inner: Tokenizer, path: impl AsRef<Path>) -> Result<Self> {
        let path: PathBuf = path.as_ref().to_path_buf();
        let find = |names: &[&str], what: &str| -> Result<String> {
            names
                .iter()
                .find(|n| inner.token_to_id(n).is_some())
                .map(|n| n.to_string())
                .ok_or_else(|| ModelError::Tokenizer {
                    path: path.clone(),
                    message: format!("no {what} token (looked for {names:?})"),
                })
        };
        let chatml = inner.token_to_id("<|im_start|>").is_some()
            && inner.token_to_id("<|start_header_id|>").is_none();
        if chatml {
            let eos = find(&EOS_NAMES, "end-of-text")?;
            return Ok(Self {
                path: path.clone(),
                format: ChatFormat::ChatMl,
                // Qwen2's tokenizer has no BOS; Dream's config names `<|endoftext|>` for it.
                bos: eos.clone(),
                eos,
                start_header: "<|im_start|>".into(),
                end_header: String::new(),
                eot: find(&["<|im_end|>"], "end-of-turn")?,
                inner,
            });
        }
        Ok(Self {
            path: path.clone(),
            format: ChatFormat::Headers,
            bos: find(&BOS_NAMES, "beginning-of-text")?,
            eos: find(&EOS_NAMES, "end-of-text")?,
            start_header: find(&["<|start_header_id|>"], "start-header")?,
            end_header: find(&["<|end_header_id|>"], "end-header")?,
            eot: find(&["<|eot_id|>"], "end-of-turn")?,
            inner,
        })
    }

    /// The wrapped `tokenizers::Tokenizer`.
    pub fn inner(&self) -> &Tokenizer {
        &self.inner
    }

    /// Id of a token by its text.
    pub fn token_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// Id of the end-of-text token.
    pub fn eos_id(&self) -> u32 {
        self.inner.token_to_id(&self.eos).expect("checked at load")
    }

    /// The special-token strings of this tokenizer's chat template.
    pub fn chat_tokens(&self) -> ChatTokens<'_> {
        ChatTokens {
            format: self.format,
            bos: &self.bos,
            start_header: &self.start_header,
            end_header: &self.end_header,
            eot: &self.eot,
        }
    }

    /// Renders this tokenizer's chat template with its special tokens ([`ChatTokens::render`]).
    pub fn chat_template(&self, messages: &[ChatMessage], add_generation_prompt: bool) -> String {
        self.chat_tokens().render(messages, add_generation_prompt)
    }

    /// Token ids of `text`; special tokens written in the text are recognised, and no
    /// post-processor tokens are added (the chat template already carries BOS).
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        self.inner
            .encode(text, false)
            .map(|e| e.get_ids().to_vec())
            .map_err(|e| ModelError::Tokenizer {
                path: self.path.clone(),
                message: e.to_string(),
            })
    }

    /// Ids of a templated chat prompt ready for generation.
    pub fn encode_chat(&self, messages: &[ChatMessage]) -> Result<Vec<u32>> {
        self.encode(&self.chat_template(messages, true))
    }

    /// Text of `ids`, special tokens removed when `skip_special` is true.
    pub fn decode(&self, ids: &[u32], skip_special: bool) -> Result<String> {
        self.inner
            .decode(ids, skip_special)
            .map_err(|e| ModelError::Tokenizer {
                path: self.path.clone(),
                message: e.to_string(),
            })
    }

    /// Checks that every id this tokenizer produces has a row in the model's embedding table
    /// (a tokenizer from another model would otherwise yield ids the model cannot read).
    /// Its special tokens must also be the config's: the mask token (`<|mdm_mask|>` or
    /// `<|mask|>`), the end of text, and (LLaDA's format) the beginning of text.
    pub fn check_model(&self, config: &crate::ModelConfig) -> Result<()> {
        let bad = |message: String| {
            Err(ModelError::Tokenizer {
                path: self.path.clone(),
                message,
            })
        };
        let (vocab, embed) = (self.vocab_size(), config.embed_size());
        if vocab > embed {
            return bad(format!(
                "{vocab} tokens, but the model's embedding table has {embed} rows: the \
                 tokenizer belongs to another model"
            ));
        }
        // (token, its id here, the config's key, the config's id), where both sides have one.
        let mask = MASK_NAMES
            .iter()
            .find_map(|n| Some((*n, self.token_id(n)?)));
        let bos = match self.format {
            ChatFormat::Headers => config
                .bos_token_id
                .zip(self.token_id(&self.bos))
                .map(|(want, id)| (self.bos.as_str(), id, "bos_token_id", want)),
            ChatFormat::ChatMl => None,
        };
        let pairs = [
            mask.map(|(name, id)| (name, id, "mask_token_id", config.mask_token_id)),
            Some((
                self.eos.as_str(),
                self.eos_id(),
                "eos_token_id",
                config.eos_token_id,
            )),
            bos,
        ];
        for (name, id, field, want) in pairs.into_iter().flatten() {
            if id != want {
                return bad(format!(
                    "`{name}` is id {id} here, but config.json's `{field}` is {want}: the \
                     tokenizer and the config disagree"
                ));
            }
        }
        Ok(())
    }

    /// Vocabulary size including added tokens.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokenizers::models::wordlevel::WordLevel;
    use tokenizers::AddedToken;

    /// A word-level tokenizer holding `specials` and a few words.
    fn tokenizer(specials: &[&str]) -> Tokenizer {
        let vocab = ["[UNK]", "hi", "there"]
            .iter()
            .enumerate()
            .map(|(i, w)| (w.to_string(), i as u32))
            .collect();
        let model = WordLevel::builder()
            .vocab(vocab)
            .unk_token("[UNK]".into())
            .build()
            .unwrap();
        let mut t = Tokenizer::new(model);
        let added: Vec<AddedToken> = specials
            .iter()
            .map(|s| AddedToken::from(*s, true))
            .collect();
        t.add_special_tokens(&added);
        t
    }

    #[test]
    fn chatml_renders_dreams_template() {
        // The shape of Dream-v0-Instruct-7B's prompts (Fast-dLLM's `demo_multiturn_chat.py`).
        let text = ChatTokens::DREAM.render(&[ChatMessage::user("What is 2 + 2?")], true);
        assert_eq!(
            text,
            "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n\
             <|im_start|>user\nWhat is 2 + 2?<|im_end|>\n<|im_start|>assistant\n"
        );
        let own = ChatTokens::DREAM.render(
            &[ChatMessage::system("Be brief."), ChatMessage::user(" x ")],
            false,
        );
        assert_eq!(
            own,
            "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\n x <|im_end|>\n"
        );
    }

    #[test]
    fn the_template_follows_the_tokenizers_special_tokens() {
        let qwen = tokenizer(&["<|endoftext|>", "<|im_start|>", "<|im_end|>"]);
        let t = ChatTokenizer::from_tokenizer(qwen, "qwen/tokenizer.json").unwrap();
        assert_eq!(t.format, ChatFormat::ChatMl);
        assert_eq!(t.chat_tokens().eot, "<|im_end|>");
        assert_eq!(
            t.chat_template(&[ChatMessage::user("hi")], true),
            ChatTokens::DREAM.render(&[ChatMessage::user("hi")], true)
        );
        let ids = t.encode_chat(&[ChatMessage::user("hi")]).unwrap();
        assert_eq!(ids[0], t.token_id("<|im_start|>").unwrap());

        let llada = tokenizer(&[
            "<|startoftext|>",
            "<|endoftext|>",
            "<|start_header_id|>",
            "<|end_header_id|>",
            "<|eot_id|>",
        ]);
        let t = ChatTokenizer::from_tokenizer(llada, "llada/tokenizer.json").unwrap();
        assert_eq!(t.format, ChatFormat::Headers);
        assert_eq!(t.chat_tokens(), ChatTokens::LLADA);

        let neither = tokenizer(&["<|endoftext|>"]);
        let e = ChatTokenizer::from_tokenizer(neither, "x/tokenizer.json")
            .unwrap_err()
            .to_string();
        assert!(e.contains("x/tokenizer.json"), "{e}");
    }
}
