//! The causal language-modelling loss with a label mask: mean cross-entropy of the next token,
//! over the positions that count (the assistant's answer tokens), as transformers computes it
//! (`loss_utils.py` `ForCausalLMLoss`: shift by one, ignore index −100, mean over the rest).

use burn::tensor::activation::log_softmax;
use burn::tensor::{Int, Tensor};

/// Mean of `−log p(target)` over the positions where `mask` is 1.
///
/// # Shapes
/// - `logits`: `[B, T, V]` (already aligned: position `t` predicts `targets[t]`)
/// - `targets`: `[B, T]` token ids (any valid id where `mask` is 0)
/// - `mask`: `[B, T]`, 1.0 where the position counts, 0.0 elsewhere
/// - returns `[1]`
///
/// With no position counted the result is 0 (not NaN): the sum is divided by `max(count, 1)`.
pub fn masked_cross_entropy(logits: Tensor<3>, targets: Tensor<2, Int>, mask: Tensor<2>) -> Tensor<1> {
    let logp = log_softmax(logits, 2); // [B, T, V]
    let picked = logp.gather(2, targets.unsqueeze_dim::<3>(2)).squeeze_dim::<2>(2); // [B, T]
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
