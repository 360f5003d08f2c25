//! Exact-match accuracy: does the model now *answer* the held-out questions correctly?
//!
//! Each question's prompt is decoded greedily with the KV cache, many prompts per forward pass
//! ([`generate_greedy_batch`]), until the end-of-turn token ([`crate::data::end_of_turn_ids`])
//! or a token limit. The answer's text (special tokens dropped) and the reference are both
//! trimmed of surrounding whitespace and lowercased, then compared: equal (`exact`) or the
//! answer containing the reference (`contains`) — the normalization of the SQuAD / lm-eval
//! style exact match, without its punctuation and article stripping, so "human." is not
//! "human".

use lora_models::Llama;
use lora_models::generate::generate_greedy_batch;
use lora_models::tokenizer::TextTokenizer;
use serde::{Deserialize, Serialize};

use crate::config::EvalMetric;
use crate::data::Question;
use crate::error::TrainError;

/// Tokens allowed beyond the longest reference answer when the limit is automatic: room for a
/// different tokenization of the same text (case, spaces) and for `contains` answers.
const AUTO_EXTRA_TOKENS: usize = 16;

/// One generated answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Answer {
    /// The answer's text, special tokens dropped, as generated (not normalized).
    pub text: String,
    /// Whether it matches the reference under the run's [`EvalMetric`].
    pub correct: bool,
    /// Whether generation stopped at the token limit rather than at the end of the turn.
    pub cut_off: bool,
}

/// Trimmed of surrounding whitespace and lowercased (Unicode lowercase), the form answers are
/// compared in.
pub fn normalize(text: &str) -> String {
    text.trim().to_lowercase()
}

/// Whether `answer` matches `reference` under `metric`, after [`normalize`] on both.
pub fn answer_matches(metric: EvalMetric, answer: &str, reference: &str) -> bool {
    let (answer, reference) = (normalize(answer), normalize(reference));
    match metric {
        EvalMetric::Exact => answer == reference,
        EvalMetric::Contains => answer.contains(&reference),
    }
}

/// The token limit per answer: `configured`, or when that is 0 the longest reference answer in
/// tokens plus [`AUTO_EXTRA_TOKENS`].
///
/// # Errors
/// [`TrainError::Model`] if a reference cannot be tokenized.
pub fn max_new_tokens(
    questions: &[Question],
    tok: &TextTokenizer,
    configured: usize,
) -> Result<usize, TrainError> {
    if configured > 0 {
        return Ok(configured);
    }
    let mut longest = 0;
    for q in questions {
        longest = longest.max(
            tok.encode(&q.reference, false)
                .map_err(lora_models::ModelError::from)?
                .len(),
        );
    }
    Ok(longest + AUTO_EXTRA_TOKENS)
}

/// The model's greedy answers to `questions`, in order, `batch` prompts per forward pass.
/// Prompts are batched by length (shortest first) so little padding is needed; the order of
/// the returned answers is the order of `questions`.
///
/// # Errors
/// [`TrainError::Model`] if generation or decoding fails.
#[allow(clippy::too_many_arguments)]
pub fn answer_questions(
    model: &Llama,
    tok: &TextTokenizer,
    questions: &[Question],
    stop_ids: &[u32],
    metric: EvalMetric,
    max_new_tokens: usize,
    batch: usize,
    pad: u32,
) -> Result<Vec<Answer>, TrainError> {
    let mut order: Vec<usize> = (0..questions.len()).collect();
    order.sort_by_key(|&i| questions[i].prompt.len());
    let mut answers: Vec<Option<Answer>> = vec![None; questions.len()];
    for chunk in order.chunks(batch.max(1)) {
        let prompts: Vec<&[u32]> = chunk.iter().map(|&i| &questions[i].prompt[..]).collect();
        let generated = generate_greedy_batch(model, &prompts, max_new_tokens, stop_ids, pad)?;
        for (&i, ids) in chunk.iter().zip(generated) {
            let text = tok
                .decode_skip_special(&ids)
                .map_err(lora_models::ModelError::from)?;
            answers[i] = Some(Answer {
                correct: answer_matches(metric, &text, &questions[i].reference),
                cut_off: ids.len() == max_new_tokens,
                text,
            });
        }
    }
    Ok(answers.into_iter().flatten().collect())
}

/// The share of `answers` that are correct, in [0, 1]; `None` for no answers.
pub fn match_rate(answers: &[Answer]) -> Option<f64> {
    (!answers.is_empty())
        .then(|| answers.iter().filter(|a| a.correct).count() as f64 / answers.len() as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn comparison_ignores_surrounding_whitespace_and_case_only() {
        assert!(answer_matches(EvalMetric::Exact, "  Human\n", "human"));
        assert!(answer_matches(EvalMetric::Exact, "ÉTÉ", "été"));
        assert!(!answer_matches(EvalMetric::Exact, "human.", "human"));
        assert!(!answer_matches(EvalMetric::Exact, "a human", "human"));
        assert!(answer_matches(
            EvalMetric::Contains,
            "It is a Human.",
            "human"
        ));
        assert!(!answer_matches(EvalMetric::Contains, "location", "human"));
    }

    #[test]
    fn match_rate_is_the_share_correct() {
        let a = |correct| Answer {
            text: String::new(),
            correct,
            cut_off: false,
        };
        assert_eq!(
            match_rate(&[a(true), a(false), a(true), a(true)]),
            Some(0.75)
        );
        assert_eq!(match_rate(&[]), None);
    }
}
