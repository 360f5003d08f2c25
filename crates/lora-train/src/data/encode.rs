//! Tokenizing a [`Sample`] and marking where its answer starts.
//!
//! For chat data the prompt is rendered on its own with the generation prompt
//! (`apply_chat_template(messages[..n-1], add_generation_prompt=True)`) and the full
//! conversation without it; the answer is what the full sequence adds after the prompt. This is
//! how TRL's `SFTTrainer` finds the completion (`sft_trainer.py`, prompt-completion
//! tokenization), including its check that the prompt's ids are a prefix of the full ids — a
//! tokenizer can merge the prompt's last characters with the answer's first, and then "the ids
//! after the prompt" would be wrong without anyone noticing.

use lora_models::tokenizer::{ChatMessage, TextTokenizer};

use super::{DataError, Sample};

/// One tokenized example.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Encoded {
    /// Token ids, `[T]`, at most the `max_len` given to [`encode`].
    pub ids: Vec<u32>,
    /// Number of prompt tokens; `ids[prompt_len..]` is the answer, exactly the tokens the loss
    /// covers. Always at least 1 (token 0 has nothing before it to predict it) and less than
    /// `ids.len()`.
    pub prompt_len: usize,
}

impl Encoded {
    /// Number of answer tokens, `ids.len() − prompt_len`.
    pub fn answer_len(&self) -> usize {
        self.ids.len().saturating_sub(self.prompt_len)
    }
}

/// A dataset after [`encode_all`]: the usable examples and how many were dropped.
#[derive(Debug, Clone, Default)]
pub struct EncodedSet {
    /// The examples that kept at least one answer token.
    pub examples: Vec<Encoded>,
    /// Examples whose whole answer fell past `max_len` and were skipped.
    pub skipped: usize,
}

/// Tokenizes `sample` and truncates it to `max_len` tokens (from the right).
///
/// - [`Sample::Chat`]: prompt = template(messages[..n−1], generation prompt), full =
///   template(messages); both encoded without added special tokens (the template writes them).
/// - [`Sample::Completion`]: as a user + assistant chat when the tokenizer has a template;
///   otherwise prompt = `prompt`, full = `prompt + completion` + EOS, encoded with special tokens.
/// - [`Sample::Text`]: the text with special tokens, + EOS; the answer is every token after the
///   first (`prompt_len = 1`).
///
/// Returns `Ok(None)` when no answer token survives truncation (or the answer is empty): the
/// caller skips the example rather than train on an empty mask.
///
/// # Errors
/// [`DataError::PromptNotPrefix`] when the prompt's ids are not a prefix of the full ids;
/// [`DataError::InvalidSample`] for a chat that is empty, does not end with an assistant
/// message, or needs a chat template the tokenizer lacks; [`DataError::Tokenizer`] if encoding
/// or rendering fails.
pub fn encode(
    sample: &Sample,
    tok: &TextTokenizer,
    max_len: usize,
) -> Result<Option<Encoded>, DataError> {
    let (prompt_len, mut ids) = match sample {
        Sample::Chat(messages) => chat_ids(sample, messages, tok)?,
        Sample::Completion { prompt, completion } if tok.chat_template().is_some() => {
            let messages = [
                ChatMessage::user(prompt.as_str()),
                ChatMessage::assistant(completion.as_str()),
            ];
            chat_ids(sample, &messages, tok)?
        }
        Sample::Completion { prompt, completion } => {
            let prompt_ids = tok.encode(prompt, true)?;
            let mut full = tok.encode(&format!("{prompt}{completion}"), true)?;
            check_prefix(sample, &prompt_ids, &full)?;
            push_eos(&mut full, tok);
            (prompt_ids.len(), full)
        }
        Sample::Text(text) => {
            let mut ids = tok.encode(text, true)?;
            push_eos(&mut ids, tok);
            (1, ids)
        }
    };
    // Token 0 is never predicted, so an answer cannot start there.
    let prompt_len = prompt_len.max(1);
    ids.truncate(max_len);
    if ids.len() <= prompt_len {
        return Ok(None);
    }
    Ok(Some(Encoded { ids, prompt_len }))
}

/// [`encode`] over a dataset, counting the examples skipped by truncation.
///
/// # Errors
/// The first error of [`encode`], wrapped in [`DataError::Example`] with the example's index.
pub fn encode_all(
    samples: &[Sample],
    tok: &TextTokenizer,
    max_len: usize,
) -> Result<EncodedSet, DataError> {
    let mut set = EncodedSet::default();
    for (index, sample) in samples.iter().enumerate() {
        match encode(sample, tok, max_len) {
            Ok(Some(e)) => set.examples.push(e),
            Ok(None) => set.skipped += 1,
            Err(e) => {
                return Err(DataError::Example {
                    index,
                    source: Box::new(e),
                });
            }
        }
    }
    Ok(set)
}

/// The per-token loss mask of `e`, `[T]`, indexed like `e.ids` (transformers' label
/// convention: `mask[t] = 1.0` when token `t` is an answer token, i.e. `labels[t] = ids[t]`;
/// 0.0 where `labels[t] = −100`). The loss shifts it by one against the logits.
///
/// 5 prompt tokens + 3 answer tokens ⇒ `[0, 0, 0, 0, 0, 1, 1, 1]`.
pub fn label_mask(e: &Encoded) -> Vec<f32> {
    let start = e.prompt_len.max(1);
    (0..e.ids.len())
        .map(|t| if t >= start { 1.0 } else { 0.0 })
        .collect()
}

/// `(prompt_len, full ids)` of a chat rendered with the tokenizer's template.
fn chat_ids(
    sample: &Sample,
    messages: &[ChatMessage],
    tok: &TextTokenizer,
) -> Result<(usize, Vec<u32>), DataError> {
    let invalid = |message: &str| DataError::InvalidSample {
        example: sample.preview(),
        message: message.to_string(),
    };
    let Some((last, context)) = messages.split_last() else {
        return Err(invalid("the conversation has no messages"));
    };
    if last.role != "assistant" {
        return Err(invalid(
            "the last message must be the assistant's answer (the loss is computed on it)",
        ));
    }
    if tok.chat_template().is_none() {
        return Err(invalid(
            "chat data needs a tokenizer with a chat template; use a chat model, or write the data as {\"prompt\", \"completion\"} or {\"text\"}",
        ));
    }
    let prompt = tok.apply_chat_template(context, true)?;
    let full = tok.apply_chat_template(messages, false)?;
    let prompt_ids = tok.encode(&prompt, false)?;
    let full_ids = tok.encode(&full, false)?;
    check_prefix(sample, &prompt_ids, &full_ids)?;
    Ok((prompt_ids.len(), full_ids))
}

fn check_prefix(sample: &Sample, prompt: &[u32], full: &[u32]) -> Result<(), DataError> {
    if full.starts_with(prompt) {
        return Ok(());
    }
    let first_difference = prompt.iter().zip(full).take_while(|(a, b)| a == b).count();
    Err(DataError::PromptNotPrefix {
        example: sample.preview(),
        prompt_tokens: prompt.len(),
        first_difference,
    })
}

/// Appends EOS unless the tokenizer's post-processor already did, so the model learns to stop.
fn push_eos(ids: &mut Vec<u32>, tok: &TextTokenizer) {
    if let Some(eos) = tok.eos_id()
        && ids.last() != Some(&eos)
    {
        ids.push(eos);
    }
}
