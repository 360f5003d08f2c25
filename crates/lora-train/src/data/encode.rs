//! Tokenizing a [`Sample`] and marking the tokens the loss covers.
//!
//! For chat data the prompt is rendered on its own with the generation prompt
//! (`apply_chat_template(messages[..n-1], add_generation_prompt=True)`) and the full
//! conversation without it; the answer is what the full sequence adds after the prompt. This is
//! how TRL's `SFTTrainer` finds the completion (`sft_trainer.py`, prompt-completion
//! tokenization), including its check that the prompt's ids are a prefix of the full ids — a
//! tokenizer can merge the prompt's last characters with the answer's first, and then "the ids
//! after the prompt" would be wrong without anyone noticing.
//!
//! A multi-turn chat is trained on every assistant turn, not only the last (TRL's
//! `assistant_only_loss`): assistant turn `i` spans the tokens that
//! `template(messages[..=i])` adds after `template(messages[..i], add_generation_prompt=True)`
//! — its content and the template's end-of-turn marker (`<|im_end|>` and the newline after it
//! in ChatML), exactly as the last turn's answer is found — and each of those renderings must be
//! a prefix of the full conversation's ids.

use std::ops::Range;

use lora_models::tokenizer::{ChatMessage, TextTokenizer};

use super::{DataError, Sample};

/// One tokenized example.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Encoded {
    /// Token ids, `[T]`, at most the `max_len` given to [`encode`].
    pub ids: Vec<u32>,
    /// Number of tokens before the (last) answer; `ids[prompt_len..]` is the last answer — for
    /// a single-turn example exactly the tokens the loss covers. Always at least 1 (token 0 has
    /// nothing before it to predict it) and less than `ids.len()`.
    pub prompt_len: usize,
    /// Earlier answers the loss also covers: the assistant turns of a multi-turn chat before the
    /// last, as sorted, disjoint, non-empty `start..end` token ranges below `prompt_len`. Empty
    /// for single-turn examples.
    pub earlier_answers: Vec<Range<usize>>,
}

impl Encoded {
    /// A single-turn example: the loss covers `ids[prompt_len..]`.
    pub fn new(ids: Vec<u32>, prompt_len: usize) -> Self {
        Encoded {
            ids,
            prompt_len,
            earlier_answers: Vec::new(),
        }
    }

    /// Number of tokens in the last answer, `ids.len() − prompt_len`.
    pub fn answer_len(&self) -> usize {
        self.ids.len().saturating_sub(self.prompt_len)
    }

    /// Every token range the loss covers, in order: the earlier answers, then the last.
    pub fn answer_spans(&self) -> impl Iterator<Item = Range<usize>> + '_ {
        self.earlier_answers
            .iter()
            .cloned()
            .chain(std::iter::once(self.prompt_len..self.ids.len()))
    }

    /// Number of tokens the loss covers (all answer spans, token 0 excluded).
    pub fn loss_tokens(&self) -> usize {
        self.answer_spans()
            .map(|r| r.end.saturating_sub(r.start.max(1)))
            .sum()
    }
}

/// A dataset after [`encode_all`]: the usable examples and what truncation did.
#[derive(Debug, Clone, Default)]
pub struct EncodedSet {
    /// The examples that kept at least one answer token.
    pub examples: Vec<Encoded>,
    /// Examples whose every answer fell past `max_len` and were dropped.
    pub skipped: usize,
    /// Examples longer than `max_len` that were cut (and kept).
    pub truncated: usize,
    /// Every example's length in tokens before truncation (dropped ones included), in order.
    pub full_lengths: Vec<usize>,
}

/// Tokenizes `sample` and truncates it to `max_len` tokens (from the right).
///
/// - [`Sample::Chat`]: prompt = template(messages[..n−1], generation prompt), full =
///   template(messages); both encoded without added special tokens (the template writes them).
///   Every earlier assistant turn is an answer too (see the module docs).
/// - [`Sample::Completion`]: as a user + assistant chat when the tokenizer has a template;
///   otherwise prompt = `prompt`, full = `prompt + completion` + EOS, encoded with special tokens.
/// - [`Sample::Text`]: the text with special tokens, + EOS; the answer is every token after the
///   first (`prompt_len = 1`).
///
/// Truncation keeps the answers that start before `max_len`; when the last answer is cut away
/// entirely, the last surviving earlier answer becomes the last one (and the tokens after it,
/// which would predict nothing, are dropped). Returns `Ok(None)` when no answer token
/// survives (or the answer is empty): the caller skips the example rather than train on an
/// empty mask.
///
/// # Errors
/// [`DataError::PromptNotPrefix`] when a prompt's ids are not a prefix of the full ids;
/// [`DataError::InvalidSample`] for a chat that is empty, does not end with an assistant
/// message, or needs a chat template the tokenizer lacks; [`DataError::Tokenizer`] if encoding
/// or rendering fails.
pub fn encode(
    sample: &Sample,
    tok: &TextTokenizer,
    max_len: usize,
) -> Result<Option<Encoded>, DataError> {
    Ok(truncate(encode_full(sample, tok)?, max_len))
}

/// [`encode`] without truncation.
fn encode_full(sample: &Sample, tok: &TextTokenizer) -> Result<Encoded, DataError> {
    let mut e = match sample {
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
            Encoded::new(full, prompt_ids.len())
        }
        Sample::Text(text) => {
            let mut ids = tok.encode(text, true)?;
            push_eos(&mut ids, tok);
            Encoded::new(ids, 1)
        }
    };
    // Token 0 is never predicted, so an answer cannot start there.
    e.prompt_len = e.prompt_len.max(1);
    e.earlier_answers = std::mem::take(&mut e.earlier_answers)
        .into_iter()
        .map(|r| r.start.max(1)..r.end)
        .filter(|r| !r.is_empty())
        .collect();
    Ok(e)
}

/// Cuts `e` to at most `max_len` tokens (see [`encode`]); `None` when no answer token is left.
fn truncate(mut e: Encoded, max_len: usize) -> Option<Encoded> {
    e.ids.truncate(max_len);
    let len = e.ids.len();
    e.earlier_answers = e
        .earlier_answers
        .into_iter()
        .map(|r| r.start..r.end.min(len))
        .filter(|r| !r.is_empty())
        .collect();
    if len > e.prompt_len {
        return Some(e);
    }
    // The last answer is gone: the last earlier one that survives takes its place.
    let last = e.earlier_answers.pop()?;
    e.ids.truncate(last.end);
    e.prompt_len = last.start;
    Some(e)
}

/// [`encode`] over a dataset, counting the examples truncated and dropped.
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
        let full = encode_full(sample, tok).map_err(|e| DataError::Example {
            index,
            source: Box::new(e),
        })?;
        set.full_lengths.push(full.ids.len());
        let cut = full.ids.len() > max_len;
        match truncate(full, max_len) {
            Some(e) => {
                set.truncated += usize::from(cut);
                set.examples.push(e);
            }
            None => set.skipped += 1,
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
    let len = e.ids.len();
    let mut mask = vec![0.0; len];
    for span in e.answer_spans() {
        let (start, end) = (span.start.max(1), span.end.min(len));
        if start < end {
            mask[start..end].fill(1.0);
        }
    }
    mask
}

/// The ids the model is asked to continue for the last answer of `sample` — the context and
/// the generation prompt, as [`encode`] renders them — or `None` for plain text (no answer to
/// ask for).
///
/// # Errors
/// As [`encode`].
pub(crate) fn last_prompt_ids(
    sample: &Sample,
    tok: &TextTokenizer,
) -> Result<Option<Vec<u32>>, DataError> {
    Ok(match sample {
        Sample::Chat(messages) => match messages.split_last() {
            Some((last, context)) if last.role == "assistant" => {
                Some(chat_prompt(sample, context, tok)?)
            }
            _ => return Err(not_ending_with_answer(sample)),
        },
        Sample::Completion { prompt, .. } if tok.chat_template().is_some() => Some(chat_prompt(
            sample,
            &[ChatMessage::user(prompt.as_str())],
            tok,
        )?),
        Sample::Completion { prompt, .. } => Some(tok.encode(prompt, true)?),
        Sample::Text(_) => None,
    })
}

/// The ids of `template(context, add_generation_prompt = true)`: what the model is asked to
/// continue with an assistant turn.
fn chat_prompt(
    sample: &Sample,
    context: &[ChatMessage],
    tok: &TextTokenizer,
) -> Result<Vec<u32>, DataError> {
    if tok.chat_template().is_none() {
        return Err(no_template(sample));
    }
    let prompt = tok.apply_chat_template(context, true)?;
    Ok(tok.encode(&prompt, false)?)
}

fn no_template(sample: &Sample) -> DataError {
    DataError::InvalidSample {
        example: sample.preview(),
        message: "chat data needs a tokenizer with a chat template; use a chat model, or write the data as {\"prompt\", \"completion\"} or {\"text\"}".into(),
    }
}

/// A chat rendered with the tokenizer's template: the full ids, where the last answer starts,
/// and the earlier answers' spans (see the module docs).
fn chat_ids(
    sample: &Sample,
    messages: &[ChatMessage],
    tok: &TextTokenizer,
) -> Result<Encoded, DataError> {
    let context = match messages.split_last() {
        Some((last, context)) if last.role == "assistant" => context,
        _ => return Err(not_ending_with_answer(sample)),
    };
    let render = |m: &[ChatMessage]| -> Result<Vec<u32>, DataError> {
        Ok(tok.encode(&tok.apply_chat_template(m, false)?, false)?)
    };
    // Each rendering must extend the one before: turn i's prompt, turn i, …, the last prompt,
    // the whole chat. Then the spans are in order, disjoint, and index the full ids.
    let mut before_turn: Vec<u32> = Vec::new();
    let mut earlier = Vec::new();
    for (i, m) in context.iter().enumerate() {
        if m.role != "assistant" {
            continue;
        }
        let prompt = chat_prompt(sample, &messages[..i], tok)?;
        let through = render(&messages[..=i])?;
        check_prefix(sample, &before_turn, &prompt)?;
        check_prefix(sample, &prompt, &through)?;
        earlier.push(prompt.len()..through.len());
        before_turn = through;
    }
    let prompt_ids = chat_prompt(sample, context, tok)?;
    let full_ids = render(messages)?;
    check_prefix(sample, &before_turn, &prompt_ids)?;
    check_prefix(sample, &prompt_ids, &full_ids)?;
    Ok(Encoded {
        ids: full_ids,
        prompt_len: prompt_ids.len(),
        earlier_answers: earlier,
    })
}

fn not_ending_with_answer(sample: &Sample) -> DataError {
    DataError::InvalidSample {
        example: sample.preview(),
        message: if matches!(sample, Sample::Chat(m) if m.is_empty()) {
            "the conversation has no messages".into()
        } else {
            "the last message must be the assistant's answer (the loss is computed on it)".into()
        },
    }
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
