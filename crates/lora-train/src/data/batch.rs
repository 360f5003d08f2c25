//! Batches: right-padded token ids and where the loss is taken, and the seeded order examples
//! are drawn in.
//!
//! Right padding is safe for a causal model without an attention mask: a real token only
//! attends to positions before it, which are never padding; padded positions are never scored.

use burn::tensor::{Device, Int, Tensor, TensorData};
use rand::SeedableRng;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use serde::{Deserialize, Serialize};

use super::DataError;
use super::encode::Encoded;

/// `B` examples padded to the longest (`T` tokens), with the positions the loss is taken at.
///
/// Positions are flat indices `b·T + t` into the `[B, T]` input. Answer token `k` of an example
/// (`k` in one of [`Encoded::answer_spans`], `k ≥ 1`) is predicted by the logits at position
/// `k − 1`: that position is
/// an *answer row* and token `k` its *target* — transformers' shift-by-one of `labels`
/// (`loss_utils.py`, `ForCausalLMLoss`), without materialising the `−100` labels.
#[derive(Debug, Clone)]
pub struct Batch {
    /// Token ids, `[B, T]`, padded on the right with the pad id.
    pub input_ids: Tensor<2, Int>,
    /// `T`, the padded length.
    pub seq_len: usize,
    /// Flat positions whose logits predict an answer token, `[N]`, in example order.
    pub answer_rows: Vec<i64>,
    /// The answer token each of `answer_rows` predicts, `[N]`.
    pub answer_targets: Vec<i64>,
    /// Flat position of each example's last prompt token, `[B]`: the logits there predict the
    /// first answer token (what a classification by the answer's first token reads).
    pub last_prompt_rows: Vec<i64>,
    /// Real (non-padding) tokens in the batch.
    pub n_tokens: usize,
    /// Answer tokens in the batch (`N`).
    pub n_answer_tokens: usize,
}

/// Stacks `examples` into a [`Batch`], right-padding each to the longest with `pad_id`. An
/// example may have no answer (`prompt_len = ids.len()`, a prompt to score): it adds no answer
/// row.
///
/// # Shapes
/// `B = examples.len()`, `T = max ids.len()` (at least 1).
pub fn make_batch(examples: &[&Encoded], pad_id: u32, device: &Device) -> Batch {
    let b = examples.len();
    let t = examples
        .iter()
        .map(|e| e.ids.len())
        .max()
        .unwrap_or(1)
        .max(1);
    let mut ids = Vec::with_capacity(b * t);
    let (mut answer_rows, mut answer_targets) = (Vec::new(), Vec::new());
    let mut last_prompt_rows = Vec::with_capacity(b);
    for (i, e) in examples.iter().enumerate() {
        ids.extend(e.ids.iter().map(|&id| i64::from(id)));
        ids.extend(std::iter::repeat_n(i64::from(pad_id), t - e.ids.len()));
        let row = |k: usize| (i * t + k) as i64;
        // Answer token k (k ≥ 1) is predicted at position k − 1; a multi-turn chat has one
        // span per assistant turn.
        for span in e.answer_spans() {
            for k in span.start.max(1)..span.end.min(e.ids.len()) {
                answer_rows.push(row(k - 1));
                answer_targets.push(i64::from(e.ids[k]));
            }
        }
        last_prompt_rows.push(row(e.prompt_len.clamp(1, e.ids.len().max(1)) - 1));
    }
    Batch {
        input_ids: Tensor::from_data(TensorData::new(ids, [b, t]), device),
        seq_len: t,
        n_answer_tokens: answer_rows.len(),
        answer_rows,
        answer_targets,
        last_prompt_rows,
        n_tokens: examples.iter().map(|e| e.ids.len()).sum(),
    }
}

impl Batch {
    /// `[B, T]` f32 in transformers' label convention: 1.0 where token `t` is an answer token
    /// (`labels[t] = ids[t]`, i.e. position `t − 1` is an answer row), 0.0 on prompt tokens and
    /// padding. The loss reads [`Batch::answer_rows`]; this view is for inspection and tests.
    pub fn label_mask(&self, device: &Device) -> Tensor<2> {
        let [b, t] = self.input_ids.dims();
        let mut mask = vec![0.0f32; b * t];
        for &row in &self.answer_rows {
            mask[row as usize + 1] = 1.0;
        }
        Tensor::from_data(TensorData::new(mask, [b, t]), device)
    }
}

/// `values` as a `[N]` id tensor on `device` (row or target lists of a [`Batch`]).
pub fn index_tensor(values: &[i64], device: &Device) -> Tensor<1, Int> {
    Tensor::from_data(TensorData::new(values.to_vec(), [values.len()]), device)
}

/// Where a [`BatchSampler`] stands: the checkpointable part of its state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct SamplerState {
    /// Epochs completed (0 during the first pass).
    pub epoch: u64,
    /// Position in this epoch's order of the next example to draw, `< n`.
    pub cursor: usize,
}
/// Draws batches of example indices: each epoch visits every index once in an order shuffled
/// from `(seed, epoch)`. A batch that reaches the end of an epoch is completed from the next
/// one, so every batch has exactly `batch_size` indices.
///
/// Each epoch's order depends only on the seed and the epoch number, so
/// [`BatchSampler::from_state`] with a saved [`SamplerState`] continues with exactly the batches
/// an uninterrupted run would have drawn.
#[derive(Debug, Clone)]
pub struct BatchSampler {
    n: usize,
    batch_size: usize,
    seed: u64,
    state: SamplerState,
    order: Vec<usize>,
}

impl BatchSampler {
    /// A sampler over indices `0..n` at the start of epoch 0.
    ///
    /// # Errors
    /// As [`BatchSampler::from_state`].
    pub fn new(n: usize, batch_size: usize, seed: u64) -> Result<Self, DataError> {
        Self::from_state(n, batch_size, seed, SamplerState::default())
    }

    /// A sampler resumed at `state` (from [`BatchSampler::position`]).
    ///
    /// # Errors
    /// [`DataError::Sampler`] if `n` or `batch_size` is 0, `batch_size > n`, or
    /// `state.cursor ≥ n` (the dataset is not the one the state was saved with).
    pub fn from_state(
        n: usize,
        batch_size: usize,
        seed: u64,
        state: SamplerState,
    ) -> Result<Self, DataError> {
        if n == 0 {
            return Err(DataError::Sampler("no examples to draw from".into()));
        }
        if batch_size == 0 {
            return Err(DataError::Sampler("batch size must be at least 1".into()));
        }
        // A batch larger than the data would hold the same examples several times over and only
        // cost memory (a huge one cannot be allocated at all).
        if batch_size > n {
            return Err(DataError::Sampler(format!(
                "batch_size {batch_size} is larger than the {n} training examples; lower --batch-size to at most {n} (use --grad-accum for larger effective batches)"
            )));
        }
        if state.cursor >= n {
            return Err(DataError::Sampler(format!(
                "saved position {} is past the end of a dataset of {n} examples; resume with the same data and settings",
                state.cursor
            )));
        }
        Ok(Self {
            n,
            batch_size,
            seed,
            state,
            order: epoch_order(n, seed, state.epoch),
        })
    }

    /// The position to save in a checkpoint.
    pub fn position(&self) -> SamplerState {
        self.state
    }

    /// The next `batch_size` example indices.
    pub fn next_batch(&mut self) -> Vec<usize> {
        let mut batch = Vec::with_capacity(self.batch_size);
        while batch.len() < self.batch_size {
            batch.push(self.order[self.state.cursor]);
            self.state.cursor += 1;
            if self.state.cursor == self.n {
                self.state = SamplerState {
                    epoch: self.state.epoch + 1,
                    cursor: 0,
                };
                self.order = epoch_order(self.n, self.seed, self.state.epoch);
            }
        }
        batch
    }
}

impl Iterator for BatchSampler {
    type Item = Vec<usize>;

    /// Never ends: see [`BatchSampler::next_batch`].
    fn next(&mut self) -> Option<Vec<usize>> {
        Some(self.next_batch())
    }
}

/// `0..n` shuffled by an RNG seeded from `(seed, epoch)` alone.
fn epoch_order(n: usize, seed: u64, epoch: u64) -> Vec<usize> {
    // Golden-ratio increment (as in SplitMix64) so neighbouring epochs get unrelated seeds.
    let mut rng = StdRng::seed_from_u64(seed ^ epoch.wrapping_mul(0x9E37_79B9_7F4A_7C15));
    let mut order: Vec<usize> = (0..n).collect();
    order.shuffle(&mut rng);
    order
}
