//! The dataset summary printed before training: per split, how many examples there are, how
//! long they are, what truncation did, and how much of each sequence the loss sees.

use std::fmt;

use serde::{Deserialize, Serialize};

use super::encode::EncodedSet;

/// One split after tokenization.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct SplitStats {
    /// Examples kept (at least one answer token within `seq_len`).
    pub examples: usize,
    /// Examples dropped: every answer token fell past `seq_len`.
    pub dropped: usize,
    /// Kept examples that were cut to `seq_len`.
    pub truncated: usize,
    /// Shortest example in tokens, before truncation (dropped ones included).
    pub tokens_min: usize,
    /// Median example length in tokens, before truncation (the upper median for an even count).
    pub tokens_median: usize,
    /// Longest example in tokens, before truncation.
    pub tokens_max: usize,
    /// Share of the kept examples' tokens (after truncation) that the loss is computed on, in
    /// [0, 1].
    pub loss_token_share: f64,
}

impl SplitStats {
    /// The numbers of one encoded split.
    pub fn of(set: &EncodedSet) -> Self {
        let mut lengths = set.full_lengths.clone();
        lengths.sort_unstable();
        let tokens: usize = set.examples.iter().map(|e| e.ids.len()).sum();
        let loss: usize = set.examples.iter().map(|e| e.loss_tokens()).sum();
        SplitStats {
            examples: set.examples.len(),
            dropped: set.skipped,
            truncated: set.truncated,
            tokens_min: lengths.first().copied().unwrap_or(0),
            tokens_median: lengths.get(lengths.len() / 2).copied().unwrap_or(0),
            tokens_max: lengths.last().copied().unwrap_or(0),
            loss_token_share: loss as f64 / tokens.max(1) as f64,
        }
    }
}

impl fmt::Display for SplitStats {
    /// `1520 examples · tokens/example 41 / 52 / 88 (min / median / max) · 0 truncated, 0
    /// dropped · loss on 6.1% of tokens`
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} examples · tokens/example {} / {} / {} (min / median / max) · {} truncated, {} dropped · loss on {:.1}% of tokens",
            self.examples,
            self.tokens_min,
            self.tokens_median,
            self.tokens_max,
            self.truncated,
            self.dropped,
            100.0 * self.loss_token_share
        )
    }
}

/// The summary of a run's data: the training split, the held-out split the run evaluates on,
/// and a `test.jsonl` beside them, which training never reads beyond counting it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct DatasetSummary {
    /// The training split.
    pub train: SplitStats,
    /// The held-out split (loss, accuracy, exact match).
    pub held_out: SplitStats,
    /// A data folder's `test.jsonl`, when there is one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub test: Option<SplitStats>,
    /// Where each split came from, e.g. `train.jsonl`, `valid.jsonl`, `every 20th line`.
    pub sources: [String; 2],
    /// The sequence length the examples were cut to.
    pub seq_len: usize,
}

impl fmt::Display for DatasetSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "data (seq_len {}):", self.seq_len)?;
        writeln!(f, "  train     {} — {}", self.sources[0], self.train)?;
        write!(f, "  held-out  {} — {}", self.sources[1], self.held_out)?;
        if let Some(test) = &self.test {
            write!(
                f,
                "\n  test      test.jsonl — {test} (not used in training; `eval --eval-data …/test.jsonl` scores it)"
            )?;
        }
        Ok(())
    }
}
