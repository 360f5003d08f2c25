//! The data a `train` or `eval` run works on: TREC (the default) or a JSONL file, tokenized with
//! the model's tokenizer, split into training and held-out examples.

use std::path::Path;

use anyhow::{Context, Result, bail};
use lora_models::tokenizer::TextTokenizer;
use lora_train::data::{
    Encoded, Sample, encode_all, load_trec, read_jsonl, trec_candidates, trec_sample,
};

/// Tokenized training and held-out examples, and (for classification) the choices.
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

/// Loads `data` (`trec` or a JSONL path). A JSONL file is split deterministically: every 20th
/// example is held out.
pub fn load_task(
    data: &str,
    tok: &TextTokenizer,
    seq_len: usize,
    eval_limit: usize,
) -> Result<Task> {
    if data == "trec" {
        let split = load_trec().context("loading TREC")?;
        let train_samples: Vec<Sample> = split.train.iter().map(trec_sample).collect();
        let mut test_ex = split.test.clone();
        if eval_limit > 0 {
            test_ex.truncate(eval_limit);
        }
        let test_samples: Vec<Sample> = test_ex.iter().map(trec_sample).collect();
        let train = encode_all(&train_samples, tok, seq_len)?;
        let test = encode_all(&test_samples, tok, seq_len)?;
        if test.skipped > 0 {
            bail!(
                "{} held-out TREC examples do not fit in --seq-len {seq_len}; raise it",
                test.skipped
            );
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
        bail!(
            "{}: no training example fits in --seq-len {seq_len}",
            path.display()
        );
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
