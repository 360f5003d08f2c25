//! What the model answers, before and after: `samples.md` (the first held-out questions with
//! the base model's and the fine-tuned model's answers side by side, and how the right answers
//! moved) and `answers.jsonl` (every held-out question, one line each).

use std::fmt::Write as _;
use std::path::Path;

use lora_core::tensor_io::write_atomic;
use serde::Serialize;

use crate::config::EvalMetric;
use crate::data::Question;
use crate::error::TrainError;
use crate::exact_match::Answer;

/// Questions shown in `samples.md`.
pub const SHOWN: usize = 10;

/// Longest cell text in `samples.md`, in characters; longer texts keep their start and end.
const CELL_CHARS: usize = 240;

/// One line of `answers.jsonl`.
#[derive(Serialize)]
struct AnswerLine<'a> {
    question: &'a str,
    reference: &'a str,
    base: Option<&'a str>,
    tuned: &'a str,
    base_correct: Option<bool>,
    tuned_correct: bool,
}

/// `text` as one Markdown table cell: newlines as `<br>`, pipes escaped, long texts elided in
/// the middle (a prompt's question often comes after a long instruction).
fn cell(text: &str) -> String {
    let chars: Vec<char> = text.trim().chars().collect();
    let short: String = if chars.len() > CELL_CHARS {
        let head: String = chars[..CELL_CHARS / 3].iter().collect();
        let tail: String = chars[chars.len() - 2 * CELL_CHARS / 3..].iter().collect();
        format!("{head} … {tail}")
    } else {
        chars.into_iter().collect()
    };
    if short.is_empty() {
        return "*(empty)*".into();
    }
    short
        .replace('|', "\\|")
        .replace("\r\n", "<br>")
        .replace('\n', "<br>")
}

fn mark(correct: bool) -> &'static str {
    if correct { "✓" } else { "✗" }
}

/// The text of `samples.md`. `base` is `None` when the base model's answers are not at hand (a
/// resumed run whose first part predates them).
pub fn samples_markdown(
    task: &str,
    metric: EvalMetric,
    questions: &[Question],
    base: Option<&[Answer]>,
    tuned: &[Answer],
) -> String {
    let mut md = String::new();
    let rule = match metric {
        EvalMetric::Exact => "equal to the reference",
        EvalMetric::Contains => "containing the reference",
    };
    let _ = writeln!(
        md,
        "# Held-out answers before and after fine-tuning — {task}\n"
    );
    let _ = writeln!(
        md,
        "{} held-out questions, answered greedily until the end of the turn; an answer is right (✓) when, trimmed and lowercased, it is {rule}.\n",
        questions.len()
    );
    if let Some(base) = base {
        let count = |b: bool, t: bool| {
            base.iter()
                .zip(tuned)
                .filter(|(x, y)| x.correct == b && y.correct == t)
                .count()
        };
        let _ = writeln!(md, "| | tuned ✓ | tuned ✗ |\n|---|---:|---:|");
        let _ = writeln!(
            md,
            "| **base ✓** | {} | {} |",
            count(true, true),
            count(true, false)
        );
        let _ = writeln!(
            md,
            "| **base ✗** | {} | {} |\n",
            count(false, true),
            count(false, false)
        );
    }
    let _ = writeln!(
        md,
        "The first {} questions (`answers.jsonl` has them all; \"…\" at the end of an answer: cut off at the token limit):\n",
        SHOWN.min(questions.len())
    );
    let _ = writeln!(
        md,
        "| # | question | reference | base | tuned |\n|---:|---|---|---|---|"
    );
    for (i, (q, t)) in questions.iter().zip(tuned).enumerate().take(SHOWN) {
        let answer = |a: &Answer| {
            format!(
                "{} {}{}",
                mark(a.correct),
                cell(&a.text),
                if a.cut_off { " …" } else { "" }
            )
        };
        let b = base
            .and_then(|b| b.get(i))
            .map_or_else(|| "—".into(), answer);
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} |",
            i + 1,
            cell(&q.text),
            cell(&q.reference),
            b,
            answer(t)
        );
    }
    md
}

/// Writes `samples.md` and `answers.jsonl` into `dir`, each atomically.
///
/// # Errors
/// [`TrainError::Io`] if a file cannot be written, [`TrainError::Checkpoint`] if a line cannot
/// be serialized.
pub fn write_samples(
    dir: &Path,
    task: &str,
    metric: EvalMetric,
    questions: &[Question],
    base: Option<&[Answer]>,
    tuned: &[Answer],
) -> Result<(), TrainError> {
    let md = samples_markdown(task, metric, questions, base, tuned);
    write_atomic(&dir.join("samples.md"), md.as_bytes())?;
    let mut lines = String::new();
    for (i, (q, t)) in questions.iter().zip(tuned).enumerate() {
        let b = base.and_then(|b| b.get(i));
        let line = AnswerLine {
            question: &q.text,
            reference: &q.reference,
            base: b.map(|a| a.text.as_str()),
            tuned: &t.text,
            base_correct: b.map(|a| a.correct),
            tuned_correct: t.correct,
        };
        let json = serde_json::to_string(&line)
            .map_err(|e| TrainError::Checkpoint(format!("answers.jsonl: {e}")))?;
        lines.push_str(&json);
        lines.push('\n');
    }
    write_atomic(&dir.join("answers.jsonl"), lines.as_bytes())?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(text: &str, reference: &str) -> Question {
        Question {
            prompt: vec![1],
            reference: reference.into(),
            text: text.into(),
        }
    }

    fn a(text: &str, correct: bool) -> Answer {
        Answer {
            text: text.into(),
            correct,
            cut_off: false,
        }
    }

    #[test]
    fn samples_show_both_answers_and_count_the_moves() {
        let questions = [q("Who wrote Hamlet ?", "human"), q("a|b\nc", "number")];
        let base = [a("William Shakespeare", false), a("number", true)];
        let tuned = [a("human", true), a("location", false)];
        let md = samples_markdown("demo", EvalMetric::Exact, &questions, Some(&base), &tuned);
        assert!(md.contains("| **base ✓** | 0 | 1 |"), "{md}");
        assert!(md.contains("| **base ✗** | 1 | 0 |"), "{md}");
        assert!(
            md.contains("| 1 | Who wrote Hamlet ? | human | ✗ William Shakespeare | ✓ human |"),
            "{md}"
        );
        assert!(
            md.contains("| 2 | a\\|b<br>c | number | ✓ number | ✗ location |"),
            "{md}"
        );
        let resumed = samples_markdown("demo", EvalMetric::Exact, &questions, None, &tuned);
        assert!(resumed.contains("| 1 | Who wrote Hamlet ? | human | — | ✓ human |"));
    }

    #[test]
    fn long_cells_keep_their_start_and_end() {
        let long = format!("{}QUESTION?", "instruction ".repeat(50));
        let c = cell(&long);
        assert!(
            c.starts_with("instruction") && c.ends_with("QUESTION?"),
            "{c}"
        );
        assert!(c.chars().count() < CELL_CHARS + 5);
    }
}
