//! Held-out questions for exact-match accuracy: what the model is asked (the conversation up to
//! its last answer, with the generation prompt) and the answer it should give (the last
//! assistant message or the completion, as written in the data) — and the tokens that end an
//! answer.

use lora_models::tokenizer::{ChatMessage, TextTokenizer};
use serde::Serialize;

use super::encode::last_prompt_ids;
use super::{DataError, Sample};

/// One held-out question.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Question {
    /// Prompt ids, `[P]`: the context and the generation prompt, as training renders them.
    pub prompt: Vec<u32>,
    /// The reference answer, as written in the data.
    pub reference: String,
    /// The question as a person reads it (the last user message, or the prompt), for
    /// `samples.md`.
    pub text: String,
}

/// The held-out questions of `samples`, in order, and how many examples were left out: plain
/// text (nothing to answer) and prompts of `max_prompt_len` tokens or more (no room to answer
/// within the sequence length the run uses).
///
/// # Errors
/// As [`super::encode`], wrapped in [`DataError::Example`] with the example's index.
pub fn questions(
    samples: &[Sample],
    tok: &TextTokenizer,
    max_prompt_len: usize,
) -> Result<(Vec<Question>, usize), DataError> {
    let mut out = Vec::new();
    let mut left_out = 0;
    for (index, sample) in samples.iter().enumerate() {
        let prompt = last_prompt_ids(sample, tok).map_err(|e| DataError::Example {
            index,
            source: Box::new(e),
        })?;
        let (Some(prompt), Some((text, reference))) = (prompt, question_and_answer(sample)) else {
            left_out += 1;
            continue;
        };
        if prompt.len() >= max_prompt_len {
            left_out += 1;
            continue;
        }
        out.push(Question {
            prompt,
            reference,
            text,
        });
    }
    Ok((out, left_out))
}

/// `(question text, reference answer)` of a sample with an answer.
fn question_and_answer(sample: &Sample) -> Option<(String, String)> {
    match sample {
        Sample::Chat(messages) => {
            let (last, context) = messages.split_last()?;
            let user = context.iter().rev().find(|m| m.role == "user");
            let text = user.map_or_else(String::new, |m| m.content.clone());
            Some((text, last.content.clone()))
        }
        Sample::Completion { prompt, completion } => Some((prompt.clone(), completion.clone())),
        Sample::Text(_) => None,
    }
}

/// The ids that end an answer: EOS, and the special tokens the chat template puts after an
/// assistant message (`<|im_end|>` in ChatML, `<end_of_turn>` in Gemma's, `<|eot_id|>` in
/// Llama 3's), found by rendering a one-turn chat and keeping the answer's special tokens — a
/// special token is one that decoding with `skip_special_tokens` drops.
///
/// # Errors
/// [`DataError::Tokenizer`] if the template does not render or encoding fails.
pub fn end_of_turn_ids(tok: &TextTokenizer) -> Result<Vec<u32>, DataError> {
    let mut stop: Vec<u32> = tok.eos_id().into_iter().collect();
    if tok.chat_template().is_some() {
        let user = [ChatMessage::user("Say yes.")];
        let prompt = tok.encode(&tok.apply_chat_template(&user, true)?, false)?;
        let chat = [user[0].clone(), ChatMessage::assistant("yes")];
        let full = tok.encode(&tok.apply_chat_template(&chat, false)?, false)?;
        let answer = full.get(prompt.len()..).unwrap_or_default();
        // The content's own ids are not markers (an unknown-word id can be special too).
        let content = tok.encode("yes", false)?;
        for &id in answer {
            let special =
                tok.decode_skip_special(&[id])?.is_empty() && !tok.decode(&[id])?.is_empty();
            if special && !content.contains(&id) && !stop.contains(&id) {
                stop.push(id);
            }
        }
    }
    Ok(stop)
}
