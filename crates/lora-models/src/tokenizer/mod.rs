//! Text tokenization: a byte-level BPE tokenizer built from GGUF metadata or loaded from a
//! Hugging Face directory, plus chat-template rendering.
//!
//! The GGUF path rebuilds what transformers builds for a GGUF file
//! (`integrations/gguf/gguf_tokenizer_mapping.py`, `byte_level_tokenizer` +
//! `add_gguf_special_tokens` + `set_split_regex`): a `GPT2Tokenizer`-style BPE over
//! `tokenizer.ggml.tokens` / `tokenizer.ggml.merges`, the tokens marked CONTROL (3) added as
//! special tokens and those marked USER_DEFINED (4) as plain added tokens, a GPT-2 `ByteLevel`
//! pre-tokenizer (or, for the `tokenizer.ggml.pre` names transformers knows, a `Split` on that
//! model's regex followed by `ByteLevel` without its regex), and a `ByteLevel` decoder. For
//! SmolLM2 (`pre = "smollm"`) that is the plain GPT-2 `ByteLevel` pre-tokenizer.

mod chat;
mod from_gguf;
mod sentencepiece;
mod special_tokens;
mod templates;
#[cfg(test)]
mod tests;

use std::path::{Path, PathBuf};

use serde_json::{Value as Json, json};
use tokenizers::Tokenizer;

use crate::gguf::GgufError;
pub use chat::ChatMessage;
pub use templates::family_chat_template;

/// Everything that can go wrong building or using a [`TextTokenizer`].
#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    /// Reading the GGUF metadata failed (missing or mistyped `tokenizer.ggml.*` key, ...).
    #[error(transparent)]
    Gguf(#[from] GgufError),
    /// A tokenizer file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A JSON file could not be parsed or written.
    #[error("{path}: invalid JSON: {source}")]
    Json {
        /// The file.
        path: PathBuf,
        /// The parse error.
        source: serde_json::Error,
    },
    /// `tokenizer.ggml.model` names a tokenizer other than byte-level BPE or SentencePiece.
    #[error(
        "{path}: tokenizer.ggml.model = {model:?} is not supported (only \"gpt2\" byte-level BPE and \"llama\" SentencePiece); load the model's tokenizer.json with TextTokenizer::from_hf_dir instead"
    )]
    UnsupportedModel {
        /// The GGUF file.
        path: PathBuf,
        /// The model name found.
        model: String,
    },
    /// A `tokenizer.ggml.merges` entry that is not two tokens separated by one space.
    #[error("{path}: tokenizer.ggml.merges[{index}] = {merge:?} is not \"left right\"")]
    BadMerge {
        /// The GGUF file.
        path: PathBuf,
        /// Index into the merges array.
        index: usize,
        /// The entry.
        merge: String,
    },
    /// A special-token id outside the vocabulary.
    #[error("{path}: {key} = {id} is outside the vocabulary of {vocab_size} tokens")]
    BadTokenId {
        /// The GGUF file or tokenizer directory.
        path: PathBuf,
        /// The key holding the id (e.g. `tokenizer.ggml.eos_token_id`).
        key: String,
        /// The id.
        id: u32,
        /// Vocabulary size.
        vocab_size: usize,
    },
    /// The `tokenizers` library rejected the vocabulary, an input, or a file.
    #[error("{context}: {source}")]
    Tokenizers {
        /// What was being done, e.g. `building BPE from model.gguf`.
        context: String,
        /// The library's error.
        source: tokenizers::Error,
    },
    /// [`TextTokenizer::apply_chat_template`] on a tokenizer without a template.
    #[error(
        "this tokenizer has no chat template (no tokenizer.chat_template in the GGUF, no chat_template in tokenizer_config.json); pass the prompt as plain text"
    )]
    NoChatTemplate,
    /// The chat template failed to parse or render (including `raise_exception` calls).
    #[error("chat template: {0:#}")]
    Template(#[from] minijinja::Error),
}

/// Shorthand for results in this module.
pub type Result<T, E = TokenizerError> = std::result::Result<T, E>;

/// A tokenizer for one model: the `tokenizers` pipeline plus the special tokens and chat
/// template a prompt needs.
#[derive(Clone)]
pub struct TextTokenizer {
    inner: Tokenizer,
    bos_id: Option<u32>,
    eos_id: Option<u32>,
    pad_id: Option<u32>,
    unk_id: Option<u32>,
    add_bos: bool,
    add_eos: bool,
    chat_template: Option<String>,
}

impl std::fmt::Debug for TextTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TextTokenizer")
            .field("vocab_size", &self.vocab_size())
            .field("bos_id", &self.bos_id)
            .field("eos_id", &self.eos_id)
            .field("add_bos", &self.add_bos)
            .field("chat_template", &self.chat_template.is_some())
            .finish()
    }
}

impl TextTokenizer {
    /// Loads a Hugging Face tokenizer directory: `tokenizer.json`, and from
    /// `tokenizer_config.json` the special tokens (`bos_token`, `eos_token`, `pad_token`,
    /// `unk_token`, as strings or `{"content": ...}` objects), `add_bos_token`/`add_eos_token`,
    /// and `chat_template` (a string, or a list of `{name, template}` where `default` is used).
    /// A `chat_template.jinja` file, as transformers 5 saves, takes precedence.
    ///
    /// Whether BOS is actually added by [`TextTokenizer::encode`] is decided by the post-processor
    /// in `tokenizer.json`; `add_bos_token` is only recorded.
    ///
    /// # Errors
    /// [`TokenizerError::Io`]/[`TokenizerError::Json`] for unreadable files,
    /// [`TokenizerError::Tokenizers`] for an invalid `tokenizer.json`.
    pub fn from_hf_dir(dir: impl AsRef<Path>) -> Result<Self> {
        let dir = dir.as_ref();
        let json_path = dir.join("tokenizer.json");
        let text = std::fs::read_to_string(&json_path).map_err(|source| TokenizerError::Io {
            path: json_path.clone(),
            source,
        })?;
        // Parse as plain JSON first: `tokenizers` 0.22 panics (`expect("Helper")` in its decoder
        // deserializer) on some malformed JSON instead of returning an error; valid JSON cannot
        // reach that panic, and this error names the line and column.
        serde_json::from_str::<Json>(&text).map_err(|source| TokenizerError::Json {
            path: json_path.clone(),
            source,
        })?;
        let inner: Tokenizer = text.parse().map_err(|source| TokenizerError::Tokenizers {
            context: format!("loading {}", json_path.display()),
            source,
        })?;
        let config_path = dir.join("tokenizer_config.json");
        let config: Json = match std::fs::read_to_string(&config_path) {
            Ok(text) => serde_json::from_str(&text).map_err(|source| TokenizerError::Json {
                path: config_path.clone(),
                source,
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Json::Null,
            Err(source) => {
                return Err(TokenizerError::Io {
                    path: config_path,
                    source,
                });
            }
        };
        let jinja_path = dir.join("chat_template.jinja");
        let chat_template = match std::fs::read_to_string(&jinja_path) {
            Ok(text) => Some(text),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => match &config["chat_template"] {
                Json::String(s) => Some(s.clone()),
                Json::Array(list) => list
                    .iter()
                    .find(|t| t["name"] == "default")
                    .and_then(|t| t["template"].as_str().map(str::to_owned)),
                _ => None,
            },
            Err(source) => {
                return Err(TokenizerError::Io {
                    path: jinja_path,
                    source,
                });
            }
        };
        let token_id = |key: &str| -> Option<u32> {
            let text = match &config[key] {
                Json::String(s) => s.as_str(),
                Json::Object(o) => o.get("content")?.as_str()?,
                _ => return None,
            };
            inner.token_to_id(text)
        };
        Ok(Self {
            bos_id: token_id("bos_token"),
            eos_id: token_id("eos_token"),
            pad_id: token_id("pad_token"),
            unk_id: token_id("unk_token"),
            add_bos: config["add_bos_token"].as_bool().unwrap_or(false),
            add_eos: config["add_eos_token"].as_bool().unwrap_or(false),
            chat_template,
            inner,
        })
    }

    /// Writes `tokenizer.json` and `tokenizer_config.json` (special tokens, `add_bos_token`,
    /// `add_eos_token`, `chat_template`, `tokenizer_class: PreTrainedTokenizerFast`) into `dir`,
    /// creating it, so transformers' `AutoTokenizer.from_pretrained(dir)` and
    /// [`TextTokenizer::from_hf_dir`] load the same tokenizer.
    ///
    /// # Errors
    /// [`TokenizerError::Io`], [`TokenizerError::Json`], or [`TokenizerError::Tokenizers`] if a
    /// file cannot be written.
    pub fn save_hf(&self, dir: impl AsRef<Path>) -> Result<()> {
        let dir = dir.as_ref();
        std::fs::create_dir_all(dir).map_err(|source| TokenizerError::Io {
            path: dir.into(),
            source,
        })?;
        let json_path = dir.join("tokenizer.json");
        self.inner
            .save(&json_path, false)
            .map_err(|source| TokenizerError::Tokenizers {
                context: format!("writing {}", json_path.display()),
                source,
            })?;
        let mut config = json!({
            "tokenizer_class": "PreTrainedTokenizerFast",
            "add_bos_token": self.add_bos,
            "add_eos_token": self.add_eos,
            "clean_up_tokenization_spaces": false,
        });
        for (key, id) in self.special_ids() {
            if let Some(text) = self.inner.id_to_token(id) {
                config[key] = Json::String(text);
            }
        }
        if let Some(t) = &self.chat_template {
            config["chat_template"] = Json::String(t.clone());
        }
        let config_path = dir.join("tokenizer_config.json");
        let text =
            serde_json::to_string_pretty(&config).map_err(|source| TokenizerError::Json {
                path: config_path.clone(),
                source,
            })?;
        std::fs::write(&config_path, text).map_err(|source| TokenizerError::Io {
            path: config_path,
            source,
        })
    }

    /// `(variable name, id)` of each special token that is set, e.g. `("bos_token", 1)`.
    fn special_ids(&self) -> Vec<(&'static str, u32)> {
        [
            ("bos_token", self.bos_id),
            ("eos_token", self.eos_id),
            ("unk_token", self.unk_id),
            ("pad_token", self.pad_id),
        ]
        .into_iter()
        .filter_map(|(k, id)| Some((k, id?)))
        .collect()
    }

    /// Token ids for `text`. Special tokens written in the text (`<|im_start|>`) are always
    /// matched as single ids; `add_special` also applies the post-processor (BOS/EOS if the
    /// model adds them). Encode a rendered chat template with `add_special = false`: templates
    /// write their own special tokens.
    ///
    /// # Errors
    /// [`TokenizerError::Tokenizers`] if the library fails.
    pub fn encode(&self, text: &str, add_special: bool) -> Result<Vec<u32>> {
        let encoding =
            self.inner
                .encode(text, add_special)
                .map_err(|source| TokenizerError::Tokenizers {
                    context: format!("encoding {} bytes of text", text.len()),
                    source,
                })?;
        Ok(encoding.get_ids().to_vec())
    }

    /// The text of `ids`, special tokens included. Invalid UTF-8 (a sequence cut inside a
    /// character) decodes to U+FFFD, as in transformers.
    ///
    /// # Errors
    /// [`TokenizerError::Tokenizers`] if the library fails.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.decode_with(ids, false)
    }

    /// The text of `ids` without special tokens (for showing generated text).
    ///
    /// # Errors
    /// [`TokenizerError::Tokenizers`] if the library fails.
    pub fn decode_skip_special(&self, ids: &[u32]) -> Result<String> {
        self.decode_with(ids, true)
    }

    fn decode_with(&self, ids: &[u32], skip_special: bool) -> Result<String> {
        self.inner
            .decode(ids, skip_special)
            .map_err(|source| TokenizerError::Tokenizers {
                context: format!("decoding {} token ids", ids.len()),
                source,
            })
    }

    /// The vocabulary entry of `id` as spelled in the vocabulary (byte-level form, e.g. `"Ġthe"`
    /// for `" the"`), or `None` outside the vocabulary. Use [`TextTokenizer::decode`] for text.
    pub fn token_text(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    /// The id of a vocabulary entry (byte-level spelling) or added token, e.g. `"<|im_end|>"`.
    pub fn token_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// Number of ids, added tokens included.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// One past the largest id the tokenizer can produce (added tokens included).
    pub fn id_bound(&self) -> usize {
        self.inner
            .get_vocab(true)
            .values()
            .map(|&id| id as usize + 1)
            .max()
            .unwrap_or(0)
    }

    /// Checks that every id this tokenizer produces has a row in an embedding of `rows` rows; an
    /// id past the last row would make the model's embedding lookup read out of bounds.
    ///
    /// # Errors
    /// A message naming both sizes.
    pub fn check_fits_embedding(&self, rows: usize) -> std::result::Result<(), String> {
        let bound = self.id_bound();
        if bound > rows {
            return Err(format!(
                "the tokenizer has ids up to {} but the embedding has only {rows} rows (vocab_size); the tokenizer and the weights come from different models",
                bound - 1
            ));
        }
        Ok(())
    }

    /// Beginning-of-sequence id, if the model has one.
    pub fn bos_id(&self) -> Option<u32> {
        self.bos_id
    }

    /// End-of-sequence id (generation stops here), if the model has one.
    pub fn eos_id(&self) -> Option<u32> {
        self.eos_id
    }

    /// Padding id, if the model has one.
    pub fn pad_id(&self) -> Option<u32> {
        self.pad_id
    }

    /// Unknown-token id, if the model has one.
    pub fn unk_id(&self) -> Option<u32> {
        self.unk_id
    }

    /// Whether encoding with special tokens appends EOS (`add_eos_token`).
    pub fn add_eos(&self) -> bool {
        self.add_eos
    }

    /// Whether encoding with special tokens prepends BOS (`add_bos_token`).
    pub fn add_bos(&self) -> bool {
        self.add_bos
    }

    /// The Jinja chat template, if any.
    pub fn chat_template(&self) -> Option<&str> {
        self.chat_template.as_deref()
    }

    /// Replaces the chat template (e.g. to give a base model one).
    pub fn set_chat_template(&mut self, template: Option<String>) {
        self.chat_template = template;
    }

    /// The underlying `tokenizers` pipeline.
    pub fn inner(&self) -> &Tokenizer {
        &self.inner
    }

    /// `messages` rendered with the chat template, as transformers'
    /// `apply_chat_template(messages, tokenize=False, add_generation_prompt=...)` renders them.
    /// `add_generation_prompt` appends the header of the assistant turn to come.
    ///
    /// # Errors
    /// [`TokenizerError::NoChatTemplate`] without a template; [`TokenizerError::Template`] if it
    /// does not parse or render, including a template's own `raise_exception`.
    pub fn apply_chat_template(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
    ) -> Result<String> {
        let template = self
            .chat_template
            .as_deref()
            .ok_or(TokenizerError::NoChatTemplate)?;
        let special: Vec<(&str, String)> = self
            .special_ids()
            .into_iter()
            .filter_map(|(k, id)| Some((k, self.inner.id_to_token(id)?)))
            .collect();
        Ok(chat::render(
            template,
            messages,
            add_generation_prompt,
            &special,
        )?)
    }
}
