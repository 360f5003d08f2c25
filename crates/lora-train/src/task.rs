//! [`Task`]: the data a run works on — TREC (the default) or a JSONL file — tokenized with the
//! model's tokenizer and split into training and held-out examples.

use std::path::Path;

use lora_models::tokenizer::TextTokenizer;

use crate::data::{
    Encoded, Sample, encode_all, load_trec, read_jsonl, trec_candidates, trec_sample,
};
use crate::error::TrainError;

/// Tokenized training and held-out examples, and (for classification) the choices.
#[derive(Debug, Clone)]
pub struct Task {
    /// Short name for reports (`trec` or the file name).
    pub name: String,
    /// Training examples.
    pub train: Vec<Encoded>,
    /// Held-out examples.
    pub test: Vec<Encoded>,
    /// For TREC: `(prompt ids, class index)` per held-out example, and each class's answer ids.
    pub choices: Option<(Vec<(Vec<u32>, usize)>, Vec<Vec<u32>>)>,
    /// Examples dropped because their answer did not fit in `seq_len`.
    pub skipped: usize,
}

impl Task {
    /// The choices as slices, for [`crate::eval::evaluate`].
    pub fn choices(&self) -> Option<crate::eval::Choices<'_>> {
        self.choices
            .as_ref()
            .map(|(items, cands)| (&items[..], &cands[..]))
    }
}

/// Loads `data` (`trec` or a JSONL path) with sequences of at most `seq_len` tokens and at most
/// `eval_limit` held-out examples (0 = all). A JSONL file is split deterministically: every
/// 20th example is held out.
///
/// # Errors
/// [`TrainError::Data`] for unreadable or malformed data, [`TrainError::Config`] when held-out
/// TREC questions do not fit in `seq_len` or no training example does.
pub fn load_task(
    data: &str,
    tok: &TextTokenizer,
    seq_len: usize,
    eval_limit: usize,
) -> Result<Task, TrainError> {
    if data == "trec" {
        let split = load_trec()?;
        let train_samples: Vec<Sample> = split.train.iter().map(trec_sample).collect();
        let mut test_ex = split.test.clone();
        if eval_limit > 0 {
            test_ex.truncate(eval_limit);
        }
        let test_samples: Vec<Sample> = test_ex.iter().map(trec_sample).collect();
        let train = encode_all(&train_samples, tok, seq_len)?;
        let test = encode_all(&test_samples, tok, seq_len)?;
        if test.skipped > 0 {
            return Err(TrainError::Config(format!(
                "{} held-out TREC examples do not fit in --seq-len {seq_len}; raise it",
                test.skipped
            )));
        }
        let items = test
            .examples
            .iter()
            .zip(&test_ex)
            .map(|(e, ex)| (e.ids[..e.prompt_len].to_vec(), ex.label.index()))
            .collect();
        let candidates = trec_candidates(tok)?;
        return Ok(Task {
            name: "trec".into(),
            train: train.examples,
            test: test.examples,
            choices: Some((items, candidates)),
            skipped: train.skipped,
        });
    }
    let path = Path::new(data);
    let samples = read_jsonl(path)?;
    let (mut train_s, mut test_s) = (Vec::new(), Vec::new());
    for (i, s) in samples.into_iter().enumerate() {
        if i % 20 == 19 {
            test_s.push(s)
        } else {
            train_s.push(s)
        }
    }
    if eval_limit > 0 {
        test_s.truncate(eval_limit);
    }
    let train = encode_all(&train_s, tok, seq_len)?;
    let test = encode_all(&test_s, tok, seq_len)?;
    if train.examples.is_empty() {
        return Err(TrainError::Config(format!(
            "{}: no training example fits in --seq-len {seq_len}",
            path.display()
        )));
    }
    let name = path
        .file_name()
        .map_or_else(|| data.to_string(), |n| n.to_string_lossy().into_owned());
    Ok(Task {
        name,
        train: train.examples,
        test: test.examples,
        choices: None,
        skipped: train.skipped + test.skipped,
    })
}
