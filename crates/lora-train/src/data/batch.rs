//! Batches: right-padded token tensors with their label mask, and the seeded order examples
//! are drawn in.
//!
//! Right padding is safe for a causal model without an attention mask: a real token only
//! attends to positions before it, which are never padding; the padded positions get mask 0 so
//! the loss ignores them.

use burn::tensor::{Device, Int, Tensor, TensorData};
use rand::SeedableRng;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use serde::{Deserialize, Serialize};

use super::DataError;
use super::encode::{Encoded, label_mask};

/// A batch of `B` examples padded to the longest, `T` tokens.
#[derive(Debug, Clone)]
pub struct Batch {
    /// Token ids, `[B, T]`, padded on the right with the pad id.
    pub input_ids: Tensor<2, Int>,
    /// `[B, T]` f32: 1.0 where token `t` is an answer token (always `t ≥ 1`), 0.0 on prompt
    /// tokens and padding. Shift by one against the logits: logits at `t − 1` predict token `t`.
    pub label_mask: Tensor<2>,
    /// Real (non-padding) tokens in the batch.
    pub n_tokens: usize,
    /// Answer tokens in the batch (the sum of `label_mask`).
    pub n_answer_tokens: usize,
}

/// Stacks `examples` into a [`Batch`], right-padding each to the longest with `pad_id`.
///
/// # Shapes
/// `B = examples.len()`, `T = max ids.len()`; an empty slice gives `[0, 0]` tensors.
pub fn make_batch(examples: &[&Encoded], pad_id: u32, device: &Device) -> Batch {
    let b = examples.len();
    let t = examples.iter().map(|e| e.ids.len()).max().unwrap_or(0);
    let mut ids = Vec::with_capacity(b * t);
    let mut mask = Vec::with_capacity(b * t);
    for e in examples {
        let pad = t - e.ids.len();
        ids.extend(e.ids.iter().map(|&id| i64::from(id)));
        ids.extend(std::iter::repeat_n(i64::from(pad_id), pad));
        mask.extend(label_mask(e));
        mask.extend(std::iter::repeat_n(0.0f32, pad));
    }
    Batch {
        input_ids: Tensor::from_data(TensorData::new(ids, [b, t]), device),
        label_mask: Tensor::from_data(TensorData::new(mask, [b, t]), device),
        n_tokens: examples.iter().map(|e| e.ids.len()).sum(),
        n_answer_tokens: examples.iter().map(|e| e.answer_len()).sum(),
    }
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
    /// [`DataError::Sampler`] if `n` or `batch_size` is 0.
    pub fn new(n: usize, batch_size: usize, seed: u64) -> Result<Self, DataError> {
        Self::from_state(n, batch_size, seed, SamplerState::default())
    }

    /// A sampler resumed at `state` (from [`BatchSampler::position`]).
    ///
    /// # Errors
    /// [`DataError::Sampler`] if `n` or `batch_size` is 0, or `state.cursor ≥ n` (the dataset
    /// is not the one the state was saved with).
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
