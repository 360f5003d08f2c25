//! The causal language-modelling loss with a label mask: mean cross-entropy of the next token,
//! over the positions that count (the assistant's answer tokens), as transformers computes it
//! (`loss_utils.py` `ForCausalLMLoss`: shift by one, ignore index −100, mean over the rest).

use burn::tensor::{Int, Tensor};
use lora_models::Llama;

use crate::data::{Batch, index_tensor};

/// `Σᵢ wᵢ · (−log softmax(logits)ᵢ[targetᵢ])` — the weighted cross-entropy of each row against
/// its target — through [`lora_core::fused::cross_entropy`], whose backward is
/// `softmax(logits)ᵢ − one_hot(targetᵢ)` per row in one pass.
///
/// Why not `log_softmax` + `gather` under autodiff: over a 49,152-word vocabulary every
/// intermediate is a full `[N, V]` tensor, and the decomposed log-softmax keeps and revisits
/// about ten of them in the backward pass (measured: 1.37 CPU-s of a ~11 CPU-s SmolLM2 step at
/// `N` = 1,024). The fused op reads the logits once forward and once backward — PyTorch's fused
/// cross-entropy does the same.
///
/// # Shapes
/// - `logits`: `[N, V]`
/// - `targets`: `[N]` token ids (any valid id where the weight is 0)
/// - `weights`: `[N]`, e.g. `mask / count` for a masked mean
/// - returns `[1]`
pub fn weighted_cross_entropy(
    logits: Tensor<2>,
    targets: Tensor<1, Int>,
    weights: Tensor<1>,
) -> Tensor<1> {
    (lora_core::fused::cross_entropy(logits, targets) * weights).sum()
}

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
    let [b, t, v] = logits.dims();
    let count = mask.clone().sum().clamp_min(1.0); // [1]
    let weights = mask.reshape([b * t]) / count; // [B·T]
    weighted_cross_entropy(
        logits.reshape([b * t, v]),
        targets.reshape([b * t]),
        weights,
    )
}

/// The causal-LM loss from unshifted `labels` with `-100` for ignored positions (transformers'
/// convention): logits at `t` are scored against `labels[t + 1]`.
///
/// As transformers does, the labels are shifted (and the last position ignored) rather than the
/// logits sliced: slicing `[B, T, V]` would copy the largest tensor of the step.
///
/// # Shapes
/// `logits`: `[B, T, V]`, `labels`: `[B, T]` → `[1]`
pub fn causal_lm_loss(logits: Tensor<3>, labels: Tensor<2, Int>) -> Tensor<1> {
    let [b, t, _] = logits.dims();
    let ignored = Tensor::<2, Int>::full([b, 1], -100, &labels.device());
    let next = Tensor::cat(vec![labels.slice([0..b, 1..t]), ignored], 1); // [B, T]
    let mask = next.clone().greater_equal_elem(0).float();
    let targets = next.clamp_min(0);
    masked_cross_entropy(logits, targets, mask)
}

/// Mean answer-token cross-entropy of `model` on `batch`, with the output head computed only at
/// the answer positions ([`Llama::logits_at`]: the head is `D × V`, about a fifth of SmolLM2's
/// forward cost, and prompt positions do not need it).
///
/// # Shapes
/// returns `[1]` (0 when the batch has no answer token)
pub fn answer_loss(model: &Llama, batch: &Batch) -> Tensor<1> {
    let device = batch.input_ids.device();
    let n = batch.n_answer_tokens;
    let rows = index_tensor(&batch.answer_rows, &device);
    let targets = index_tensor(&batch.answer_targets, &device);
    let logits = model.logits_at(batch.input_ids.clone(), rows); // [N, V]
    let weights = Tensor::<1>::full([n], 1.0 / n.max(1) as f64, &device);
    weighted_cross_entropy(logits, targets, weights)
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::activation::log_softmax;
    use burn::tensor::{Distribution, TensorData};
    use lora_core::{BackendKind, select_device};

    /// The textbook formula, differentiated by autodiff: the reference for the fused one.
    fn reference(logits: Tensor<2>, targets: Tensor<1, Int>, weights: Tensor<1>) -> Tensor<1> {
        let picked = log_softmax(logits, 1)
            .gather(1, targets.unsqueeze_dim::<2>(1))
            .squeeze_dim::<1>(1);
        (picked * weights).sum().neg()
    }

    #[test]
    fn fused_cross_entropy_has_the_value_and_gradient_of_log_softmax() {
        let device = select_device(BackendKind::Flex).unwrap().autodiff();
        // Logits up to ±60 (std 20): a naive exp would overflow; a target's probability can be
        // far below f32's smallest normal.
        let x = Tensor::<2>::random([6, 50], Distribution::Normal(0.0, 20.0), &device);
        let targets =
            Tensor::<1, Int>::from_data(TensorData::new(vec![0i64, 7, 49, 3, 3, 20], [6]), &device);
        let weights = Tensor::<1>::from_data(
            TensorData::new(vec![0.2f32, 0.2, 0.0, 0.2, 0.2, 0.2], [6]),
            &device,
        );
        let (xa, xb) = (x.clone().require_grad(), x.require_grad());
        let fused = weighted_cross_entropy(xa.clone(), targets.clone(), weights.clone());
        let textbook = reference(xb.clone(), targets, weights);
        let (vf, vt) = (
            fused.clone().into_scalar::<f32>(),
            textbook.clone().into_scalar::<f32>(),
        );
        assert!((vf - vt).abs() <= 1e-5 * vt.abs(), "value {vf} vs {vt}");
        let ga = xa.grad(&fused.backward()).unwrap();
        let gb = xb.grad(&textbook.backward()).unwrap();
        let diff = (ga - gb).abs().max().into_scalar::<f32>();
        assert!(diff < 1e-6, "gradients differ by {diff}");
    }

    #[test]
    fn causal_loss_scores_each_position_against_the_next_label() {
        let device = select_device(BackendKind::Flex).unwrap();
        // Vocabulary of 3; logits favour token 1 everywhere.
        let logits = Tensor::<3>::from_data(
            TensorData::new(
                vec![0.0f32, 2.0, 0.0, 0.0, 2.0, 0.0, 0.0, 2.0, 0.0],
                [1, 3, 3],
            ),
            &device,
        );
        let p1 = (2f64.exp() / (2f64.exp() + 2.0)).ln();
        let p0 = (1.0 / (2f64.exp() + 2.0)).ln();
        // labels [x, 1, 0]: position 0 predicts 1, position 1 predicts 0, position 2 nothing.
        let labels =
            Tensor::<2, Int>::from_data(TensorData::new(vec![5i64, 1, 0], [1, 3]), &device);
        let loss = causal_lm_loss(logits.clone(), labels).into_scalar::<f32>() as f64;
        assert!((loss + (p1 + p0) / 2.0).abs() < 1e-6, "{loss}");
        // -100 ignores a position.
        let labels =
            Tensor::<2, Int>::from_data(TensorData::new(vec![5i64, 1, -100], [1, 3]), &device);
        let loss = causal_lm_loss(logits, labels).into_scalar::<f32>() as f64;
        assert!((loss + p1).abs() < 1e-6, "{loss}");
    }
}
