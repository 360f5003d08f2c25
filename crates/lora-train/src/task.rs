//! [`Task`]: the data a run works on — TREC (the default), a JSONL file, or a folder of
//! `train.jsonl` / `valid.jsonl` / `test.jsonl` — tokenized with the model's tokenizer and split
//! into training and held-out examples, with the held-out questions for exact match.
//!
//! Split rules ([`load_task`]):
//!
//! | `data` | trains on | evaluates on (unless `eval_data` names a file) |
//! |---|---|---|
//! | `trec` | TREC's training questions | TREC's held-out questions (a fixed hash split) |
//! | `FILE.jsonl` | every example but each 20th | every 20th example (lines 20, 40, …) |
//! | `FILE.jsonl` + `eval_data` | every example | `eval_data` |
//! | `DIR` | `DIR/train.jsonl` | `DIR/valid.jsonl` |
//!
//! A folder's `test.jsonl` is only counted (and checked) by training — it is the set to score
//! once at the end, with `eval --eval-data DIR/test.jsonl` (mlx-lm's layout and use).

use std::path::Path;

use lora_models::tokenizer::TextTokenizer;

use crate::config::EvalMetric;
use crate::data::{
    DatasetSummary, Encoded, EncodedSet, Question, Sample, SplitStats, TrecExample, encode_all,
    end_of_turn_ids, load_trec, questions, read_jsonl, trec_candidates, trec_sample,
};
use crate::error::TrainError;

/// Every 20th example of a single data file is held out.
const HOLD_OUT_EVERY: usize = 20;

/// A classification task's held-out side: `(prompt ids, class index)` per held-out example,
/// and each class's answer ids (owned; [`Choices`] borrows it).
pub type TrecChoices = (Vec<(Vec<u32>, usize)>, Vec<Vec<u32>>);

/// A classification task's held-out side: `(prompt ids, class index)` per example, and each
/// class's answer ids (`candidates[c]`).
pub type Choices<'a> = (&'a [(Vec<u32>, usize)], &'a [Vec<u32>]);

/// Tokenized training and held-out examples, the held-out questions, and (for classification)
/// the choices.
#[derive(Debug, Clone)]
pub struct Task {
    /// Short name for reports (`trec`, the file name or the folder name).
    pub name: String,
    /// Training examples.
    pub train: Vec<Encoded>,
    /// Held-out examples.
    pub test: Vec<Encoded>,
    /// For TREC: `(prompt ids, class index)` per held-out example, and each class's answer ids.
    pub choices: Option<TrecChoices>,
    /// Examples dropped because no answer token fit in `seq_len`.
    pub skipped: usize,
    /// The held-out examples that have a reference answer, as questions for exact match.
    pub questions: Vec<Question>,
    /// The ids that end a generated answer ([`end_of_turn_ids`]).
    pub stop_ids: Vec<u32>,
    /// Examples per split, lengths, truncation, loss share.
    pub summary: DatasetSummary,
}

impl Task {
    /// How held-out answers are scored for a `requested` metric: as requested, else `exact`
    /// for data with reference answers, and not at all for a classification task (TREC: its
    /// accuracy scores the class words) or data without answers.
    pub fn answer_metric(&self, requested: Option<EvalMetric>) -> Option<EvalMetric> {
        if self.questions.is_empty() {
            return None;
        }
        requested.or_else(|| self.choices.is_none().then_some(EvalMetric::Exact))
    }

    /// The choices as slices, for [`crate::eval::evaluate`].
    pub fn choices(&self) -> Option<Choices<'_>> {
        self.choices
            .as_ref()
            .map(|(items, cands)| (&items[..], &cands[..]))
    }
}

/// Where a run's training and held-out examples come from, before tokenization.
struct Splits {
    name: String,
    train: Vec<Sample>,
    held_out: Vec<Sample>,
    /// `[train, held-out]` origins for the summary.
    sources: [String; 2],
    /// A folder's `test.jsonl`, read only to be counted.
    test: Option<Vec<Sample>>,
    /// TREC's held-out questions with their classes, when those are the held-out split.
    trec_labels: Option<Vec<TrecExample>>,
}

/// `path`'s last component, for names in reports.
fn file_name(path: &Path) -> String {
    path.file_name().map_or_else(
        || path.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    )
}

/// The samples of `data` (a JSONL file or a data folder) split by the rules in the module docs.
fn jsonl_splits(data: &str, eval_data: Option<&Path>) -> Result<Splits, TrainError> {
    let path = Path::new(data);
    let eval = |fallback: &str| -> Result<(Option<Vec<Sample>>, String), TrainError> {
        Ok(match eval_data {
            Some(p) => (Some(read_jsonl(p)?), p.display().to_string()),
            None => (None, fallback.to_string()),
        })
    };
    if path.is_dir() {
        let train_path = path.join("train.jsonl");
        if !train_path.is_file() {
            return Err(TrainError::Config(format!(
                "{} has no train.jsonl; a data folder holds train.jsonl, valid.jsonl and optionally test.jsonl (one JSON example per line)",
                path.display()
            )));
        }
        let valid_path = path.join("valid.jsonl");
        let (held_out, held_out_source) = match eval("valid.jsonl")? {
            (Some(h), source) => (h, source),
            (None, source) if valid_path.is_file() => (read_jsonl(&valid_path)?, source),
            (None, _) => {
                return Err(TrainError::Config(format!(
                    "{} has train.jsonl but no valid.jsonl; add the held-out examples as valid.jsonl, or name a file with --eval-data FILE",
                    path.display()
                )));
            }
        };
        let test_path = path.join("test.jsonl");
        return Ok(Splits {
            name: file_name(path),
            train: read_jsonl(&train_path)?,
            held_out,
            sources: ["train.jsonl".into(), held_out_source],
            test: test_path
                .is_file()
                .then(|| read_jsonl(&test_path))
                .transpose()?,
            trec_labels: None,
        });
    }
    if !path.is_file() {
        return Err(TrainError::Config(format!(
            "{data}: no such file or folder; --data takes `trec`, a JSONL file, or a folder holding train.jsonl and valid.jsonl"
        )));
    }
    let samples = read_jsonl(path)?;
    let name = file_name(path);
    let (held_out, held_out_source) = eval(&format!("every {HOLD_OUT_EVERY}th line"))?;
    let (train, held_out) = match held_out {
        Some(held_out) => (samples, held_out),
        None => {
            let (mut train, mut held_out) = (Vec::new(), Vec::new());
            for (i, s) in samples.into_iter().enumerate() {
                if i % HOLD_OUT_EVERY == HOLD_OUT_EVERY - 1 {
                    held_out.push(s);
                } else {
                    train.push(s);
                }
            }
            (train, held_out)
        }
    };
    let train_source = if eval_data.is_some() {
        name.clone()
    } else {
        format!("{name} but every {HOLD_OUT_EVERY}th line")
    };
    Ok(Splits {
        name,
        train,
        held_out,
        sources: [train_source, held_out_source],
        test: None,
        trec_labels: None,
    })
}

/// Loads `data` (`trec`, a JSONL file or a data folder; see the module docs for the split
/// rules) with sequences of at most `seq_len` tokens and at most `eval_limit` held-out examples
/// (0 = all). `eval_data` replaces the held-out split with a JSONL file of its own.
///
/// # Errors
/// [`TrainError::Data`] for unreadable or malformed data (naming file and line),
/// [`TrainError::Config`] for a data folder without `train.jsonl` or `valid.jsonl`, held-out
/// TREC questions that do not fit in `seq_len`, or no training example that does. An empty
/// held-out split is not an error: [`Task::test`] is then empty and nothing is evaluated.
pub fn load_task(
    data: &str,
    eval_data: Option<&Path>,
    tok: &TextTokenizer,
    seq_len: usize,
    eval_limit: usize,
) -> Result<Task, TrainError> {
    let is_trec = data == "trec";
    let mut splits = if is_trec {
        let split = load_trec()?;
        let eval_file = eval_data.map(read_jsonl).transpose()?;
        let from_trec = eval_file.is_none();
        Splits {
            name: "trec".into(),
            train: split.train.iter().map(trec_sample).collect(),
            held_out: eval_file.unwrap_or_else(|| split.test.iter().map(trec_sample).collect()),
            sources: [
                "TREC training questions".into(),
                eval_data.map_or_else(
                    || "TREC held-out questions".into(),
                    |p| p.display().to_string(),
                ),
            ],
            test: None,
            trec_labels: from_trec.then_some(split.test),
        }
    } else {
        jsonl_splits(data, eval_data)?
    };
    if eval_limit > 0 {
        splits.held_out.truncate(eval_limit);
        if let Some(labels) = &mut splits.trec_labels {
            labels.truncate(eval_limit);
        }
    }
    let train = encode_all(&splits.train, tok, seq_len)?;
    let held_out = encode_all(&splits.held_out, tok, seq_len)?;
    let test = splits
        .test
        .as_ref()
        .map(|t| encode_all(t, tok, seq_len))
        .transpose()?;
    if train.examples.is_empty() {
        return Err(TrainError::Config(format!(
            "{}: no training example fits in --seq-len {seq_len}",
            splits.sources[0]
        )));
    }
    // No held-out example is allowed (a tiny dataset): the run trains and says that nothing was
    // evaluated rather than reporting numbers it did not measure.
    let choices = match &splits.trec_labels {
        Some(labels) => Some(trec_choices(&held_out, labels, tok, seq_len)?),
        None => None,
    };
    let (questions, _) = questions(&splits.held_out, tok, seq_len)?;
    let summary = DatasetSummary {
        train: SplitStats::of(&train),
        held_out: SplitStats::of(&held_out),
        test: test.as_ref().map(SplitStats::of),
        sources: splits.sources.clone(),
        seq_len,
    };
    Ok(Task {
        name: splits.name,
        skipped: train.skipped + held_out.skipped,
        train: train.examples,
        test: held_out.examples,
        choices,
        questions,
        stop_ids: end_of_turn_ids(tok)?,
        summary,
    })
}

/// TREC's classification side: each held-out question's prompt ids and class, and the six
/// classes' answer ids.
///
/// # Errors
/// [`TrainError::Config`] when a held-out question does not fit in `seq_len` (its class could
/// not be scored), [`TrainError::Data`] when the answer tokens depend on the question.
fn trec_choices(
    held_out: &EncodedSet,
    labels: &[TrecExample],
    tok: &TextTokenizer,
    seq_len: usize,
) -> Result<TrecChoices, TrainError> {
    if held_out.skipped > 0 {
        return Err(TrainError::Config(format!(
            "{} held-out TREC examples do not fit in --seq-len {seq_len}; raise it",
            held_out.skipped
        )));
    }
    let items = held_out
        .examples
        .iter()
        .zip(labels)
        .map(|(e, ex)| (e.ids[..e.prompt_len].to_vec(), ex.label.index()))
        .collect();
    Ok((items, trec_candidates(tok)?))
}
