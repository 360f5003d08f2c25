//! The causal language-modelling loss with a label mask: mean cross-entropy of the next token,
//! over the positions that count (the assistant's answer tokens), as transformers computes it
//! (`loss_utils.py` `ForCausalLMLoss`: shift by one, ignore index −100, mean over the rest).

use burn::tensor::activation::log_softmax;
use burn::tensor::{Device, Int, Tensor, TensorData};
use lora_models::Llama;

/// Mean of `−log p(target)` over the positions where `mask` is 1.
///
/// # Shapes
/// - `logits`: `[B, T, V]` (already aligned: position `t` predicts `targets[t]`)
/// - `targets`: `[B, T]` token ids (any valid id where `mask` is 0)
/// - `mask`: `[B, T]`, 1.0 where the position counts, 0.0 elsewhere
/// - returns `[1]`
///
/// With no position counted the result is 0 (not NaN): the sum is divided by `max(count, 1)`.
pub fn masked_cross_entropy(
    logits: Tensor<3>,
    targets: Tensor<2, Int>,
    mask: Tensor<2>,
) -> Tensor<1> {
    let logp = log_softmax(logits, 2); // [B, T, V]
    let picked = logp
        .gather(2, targets.unsqueeze_dim::<3>(2))
        .squeeze_dim::<2>(2); // [B, T]
    let count = mask.clone().sum().clamp_min(1.0);
    (picked * mask).sum().neg() / count
}

/// The causal-LM loss from unshifted `labels` with `-100` for ignored positions (transformers'
/// convention): logits at `t` are scored against `labels[t + 1]`.
///
/// # Shapes
/// `logits`: `[B, T, V]`, `labels`: `[B, T]` → `[1]`
pub fn causal_lm_loss(logits: Tensor<3>, labels: Tensor<2, Int>) -> Tensor<1> {
    let [b, t, v] = logits.dims();
    let logits = logits.slice([0..b, 0..t - 1, 0..v]);
    let next = labels.slice([0..b, 1..t]);
    let mask = next.clone().greater_equal_elem(0).float(); // [B, T−1]
    let targets = next.clamp_min(0);
    masked_cross_entropy(logits, targets, mask)
}

/// Where the loss is taken in a right-padded batch: the flat positions `b·T + t` whose *next*
/// token `ids[b][t + 1]` is an answer token, and those next tokens.
#[derive(Clone, Debug, PartialEq)]
pub struct AnswerPositions {
    /// Flat row indices into `[B·T, …]`.
    pub rows: Vec<i64>,
    /// The token each row must predict.
    pub targets: Vec<i64>,
}

impl AnswerPositions {
    /// Positions for sequences `ids[i]` whose answer starts at `prompt_len[i]`, padded to `t`.
    pub fn new<'a>(seqs: impl IntoIterator<Item = (&'a [u32], usize)>, t: usize) -> Self {
        let mut rows = Vec::new();
        let mut targets = Vec::new();
        for (b, (ids, prompt_len)) in seqs.into_iter().enumerate() {
            // Token k (k ≥ prompt_len, k ≥ 1) is predicted at position k − 1.
            for k in prompt_len.max(1)..ids.len().min(t) {
                rows.push((b * t + k - 1) as i64);
                targets.push(ids[k] as i64);
            }
        }
        AnswerPositions { rows, targets }
    }

    /// Number of predicted tokens `N`.
    pub fn len(&self) -> usize {
        self.rows.len()
    }

    /// Whether no token is predicted.
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }
}

/// Mean answer-token cross-entropy of `model` on a batch, computing the output head only at
/// the answer positions (the head is `D × V`, about a fifth of SmolLM2's forward cost, and
/// prompt positions do not need it).
///
/// # Shapes
/// `input_ids`: `[B, T]` → `[1]`
pub fn answer_loss(
    model: &Llama,
    input_ids: Tensor<2, Int>,
    pos: &AnswerPositions,
    device: &Device,
) -> Tensor<1> {
    let hidden = model.model.forward(input_ids, None); // [B, T, D]
    let [b, t, d] = hidden.dims();
    let n = pos.len();
    let rows = Tensor::<1, Int>::from_data(TensorData::new(pos.rows.clone(), [n]), device);
    let targets = Tensor::<1, Int>::from_data(TensorData::new(pos.targets.clone(), [n]), device);
    let picked = hidden.reshape([b * t, d]).select(0, rows); // [N, D]
    let logits = model.lm_head.forward(picked); // [N, V]
    let logp = log_softmax(logits, 1);
    let chosen = logp.gather(1, targets.unsqueeze_dim::<2>(1)); // [N, 1]
    chosen.sum().neg().div_scalar(n.max(1) as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answer_positions_follow_the_shift() {
        // 5 prompt tokens + 3 answer tokens: tokens 5, 6, 7 are predicted at positions 4, 5, 6.
        let ids = [10u32, 11, 12, 13, 14, 20, 21, 22];
        let p = AnswerPositions::new([(&ids[..], 5)], 8);
        assert_eq!(p.rows, vec![4, 5, 6]);
        assert_eq!(p.targets, vec![20, 21, 22]);
        // Second sequence in a batch padded to T = 10 starts at row 10.
        let p = AnswerPositions::new([(&ids[..], 5), (&ids[..2], 1)], 10);
        assert_eq!(p.rows, vec![4, 5, 6, 10]);
    }
}
