//! The cross-entropy of each row of logits against its target token, `−log softmax(x)[t]`, as one
//! backend operation with its own backward.
//!
//! Over a 49,152-word vocabulary every pass over the logits is a pass over the largest tensor of
//! the step (`[N, V]`, 200 MB at `N` = 1,024). Written with tensor ops — a softmax, two row
//! maxima, the weighting, a scatter of the one-hot term, a product with the logits and its sum —
//! the loss made about a dozen such passes, most on one thread under burn-flex. Here the forward
//! is one read of the logits per row (the maximum, then `Σ exp(x − max)` while the row is in
//! cache) and the backward one read and one write, `g · (exp(x − lse) − one_hot(t))`, both
//! row-parallel on flex with the vectorised `exp` ([`super::vmath`]). It keeps the logits (which
//! the composed version's gradient needed too, as the softmax) and one log-sum-exp per row.
//!
//! Every other backend runs the default bodies, the reference the tests compare against.
//!
//! # Shapes
//! `logits`: `[N, V]`, `targets`: `[N]` token ids (each `< V`) → per-row loss `[N]` and per-row
//! log-sum-exp `[N]`; backward `g`: `[N]` → `[N, V]`.
//!
//! Source: `log softmax(x)ᵢ = xᵢ − log Σⱼ exp(xⱼ)`, computed after subtracting the row maximum;
//! its gradient `softmax(x) − one_hot(t)` is PyTorch's `nll_loss` ∘ `log_softmax` backward
//! (`aten/src/ATen/native/LossNLL.cpp`, `SoftMax.cpp`), which its fused `cross_entropy` runs.

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind, unary};
use burn::backend::tensor::{FloatTensor, IntTensor};
use burn::backend::{Autodiff, AutodiffBackend, Backend, Shape, TensorMetadata, backend_extension};
use burn::tensor::IndexingUpdateOp;

/// Cross-entropy per row as backend operations (see the module documentation).
#[backend_extension(
    Flex: cfg(feature = "flex"),
    NdArray: cfg(feature = "ndarray"),
    Cube: cfg(feature = "wgpu"),
    Autodiff
)]
pub trait CrossEntropyBackend: Backend {
    /// `(−log softmax(x)[t], log Σ exp(x))` per row: `logits` `[N, V]`, `targets` `[N]` →
    /// (`[N]`, `[N]`). Only the first output has a gradient.
    fn fused_cross_entropy(
        logits: FloatTensor<Self>,
        targets: IntTensor<Self>,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        reference::cross_entropy::<Self>(logits, targets)
    }

    /// The logits' gradient `g ⊙ (exp(x − lse) − one_hot(t))` (row `i` scaled by `gᵢ`):
    /// `logits` `[N, V]`, `lse`, `g` `[N]`, `targets` `[N]` → `[N, V]`.
    fn fused_cross_entropy_backward(
        logits: FloatTensor<Self>,
        lse: FloatTensor<Self>,
        targets: IntTensor<Self>,
        g: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        reference::cross_entropy_backward::<Self>(logits, lse, targets, g)
    }
}

/// flex: the row-parallel host kernels, or the reference for what they do not take.
#[cfg(feature = "flex")]
impl CrossEntropyBackend for burn::backend::Flex {
    fn fused_cross_entropy(
        logits: FloatTensor<Self>,
        targets: IntTensor<Self>,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        match super::cross_entropy_flex::cross_entropy(&logits, &targets) {
            Some(t) => t,
            None => reference::cross_entropy::<Self>(logits, targets),
        }
    }

    fn fused_cross_entropy_backward(
        logits: FloatTensor<Self>,
        lse: FloatTensor<Self>,
        targets: IntTensor<Self>,
        g: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        match super::cross_entropy_flex::cross_entropy_backward(&logits, &lse, &targets, &g) {
            Some(t) => t,
            None => reference::cross_entropy_backward::<Self>(logits, lse, targets, g),
        }
    }
}
#[cfg(feature = "ndarray")]
#[allow(deprecated)]
impl CrossEntropyBackend for burn::backend::NdArray {}
#[cfg(feature = "wgpu")]
impl CrossEntropyBackend for burn::backend::Cube {}

/// The reference bodies in backend primitive ops: the defaults, and flex's fallback.
mod reference {
    use super::*;

    /// `[N]` → `[N, 1]`.
    fn column<B: Backend>(t: FloatTensor<B>) -> FloatTensor<B> {
        let n = t.shape().dims::<1>()[0];
        B::float_reshape(t, Shape::new([n, 1]))
    }

    /// `[N, 1]` → `[N]`.
    fn flat<B: Backend>(t: FloatTensor<B>) -> FloatTensor<B> {
        let n = t.shape().dims::<2>()[0];
        B::float_reshape(t, Shape::new([n]))
    }

    /// Targets `[N]` as gather/scatter indices `[N, 1]`.
    fn index_column<B: Backend>(t: IntTensor<B>) -> IntTensor<B> {
        let n = t.shape().dims::<1>()[0];
        B::int_reshape(t, Shape::new([n, 1]))
    }

    pub(super) fn cross_entropy<B: Backend>(
        x: FloatTensor<B>,
        targets: IntTensor<B>,
    ) -> (FloatTensor<B>, FloatTensor<B>) {
        let max = B::float_max_dim(x.clone(), 1); // [N, 1]
        let shifted = B::float_sub(x.clone(), max.clone());
        let sum = B::float_sum_dim(B::float_exp(shifted), 1); // [N, 1]
        let lse = B::float_add(max, B::float_log(sum)); // [N, 1]
        let picked = B::float_gather(1, x, index_column::<B>(targets)); // [N, 1]
        (flat::<B>(B::float_sub(lse.clone(), picked)), flat::<B>(lse))
    }

    pub(super) fn cross_entropy_backward<B: Backend>(
        x: FloatTensor<B>,
        lse: FloatTensor<B>,
        targets: IntTensor<B>,
        g: FloatTensor<B>,
    ) -> FloatTensor<B> {
        let g = column::<B>(g); // [N, 1]
        let p = B::float_exp(B::float_sub(x, column::<B>(lse))); // softmax, [N, V]
        let scaled = B::float_mul(p, g.clone());
        let minus_g = B::float_neg(g);
        let idx = index_column::<B>(targets);
        B::float_scatter(1, scaled, idx, minus_g, IndexingUpdateOp::Add)
    }
}

/// Backward of [`CrossEntropyBackend::fused_cross_entropy`]: keeps the logits, the per-row
/// log-sum-exp and the targets.
#[derive(Debug)]
struct CrossEntropyBackward;

impl<B: CrossEntropyBackend> Backward<B, 1> for CrossEntropyBackward {
    type State = (FloatTensor<B>, FloatTensor<B>, IntTensor<B>);

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let (logits, lse, targets) = ops.state;
        unary::<B, _>(ops.parents, ops.node, grads, |g| {
            B::fused_cross_entropy_backward(logits, lse, targets, g)
        });
    }
}

/// One node, compute-bound (its output is kept under gradient checkpointing); the log-sum-exp
/// output is a constant.
impl<B: CrossEntropyBackend, C: CheckpointStrategy> CrossEntropyBackend for Autodiff<B, C> {
    fn fused_cross_entropy(
        logits: FloatTensor<Self>,
        targets: IntTensor<Self>,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        let (x, node) = logits.into_parts();
        let (nll, lse) = B::fused_cross_entropy(x.clone(), targets.clone());
        let lse_out = <Self as AutodiffBackend>::from_inner(lse.clone());
        match CrossEntropyBackward
            .prepare::<C>([node])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => (prep.finish((x, lse, targets), nll), lse_out),
            OpsKind::UnTracked(prep) => (prep.finish(nll), lse_out),
        }
    }
}
