//! Scaled dot-product attention `softmax(Q·Kᵀ + mask)·V` as one backend operation with its own
//! backward, in the grouped layout of the model's attention (the `G` query heads that share a
//! key/value head stacked as `G·T` rows against it, so keys and values are never copied).
//!
//! Composed of tensor ops, attention is four autodiff nodes (two batched products, the mask
//! fill and the softmax), and every product runs over all `R × S` scores although a causal mask
//! hides about half of them. flex overrides the op ([`super::attention_flex`]): blocks of query
//! rows multiply only against the keys some row of the block may see, each (batch, key/value
//! head, row block) on its own core. Every other backend runs the default bodies, the reference.
//!
//! # Shapes
//! `q`: `[B, K, R, E]` (`R = G·T` query rows, already scaled), `k`, `v`: `[B, K, S, E]`,
//! `mask`: `[M, R, S]` with `M = 1` (shared by every batch row) or `M = B`, `true` = masked;
//! output `[B, K, R, E]`, probabilities `[B, K, R, S]`.
//!
//! Source: the derivatives of softmax attention as in FlashAttention (Dao et al. 2022, §B.2):
//! `∂V = Pᵀ·∂O`, `∂P = ∂O·Vᵀ`, `∂S = P ⊙ (∂P − rowsum(∂P ⊙ P))`, `∂Q = ∂S·K`, `∂K = ∂Sᵀ·Q`;
//! PyTorch's `_scaled_dot_product_attention_math` composes the same forward.

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::tensor::{BoolTensor, FloatTensor};
use burn::backend::{Autodiff, AutodiffBackend, Backend, Shape, TensorMetadata, backend_extension};

/// Attention forward and backward as backend operations (see the module documentation).
#[backend_extension(
    Flex: cfg(feature = "flex"),
    NdArray: cfg(feature = "ndarray"),
    Cube: cfg(feature = "wgpu"),
    Autodiff
)]
pub trait AttentionBackend: Backend {
    /// `(softmax(q·kᵀ + mask)·v, softmax(q·kᵀ + mask))`: the output `[B, K, R, E]` and the
    /// probabilities `[B, K, R, S]` (kept for the backward pass). A masked score is `−∞`.
    fn fused_attention(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        mask: BoolTensor<Self>,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        reference::attention::<Self>(q, k, v, mask)
    }

    /// `(∂q, ∂k, ∂v)` from the inputs, the probabilities `p` and the output gradient `g`.
    fn fused_attention_backward(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        p: FloatTensor<Self>,
        g: FloatTensor<Self>,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        reference::attention_backward::<Self>(q, k, v, p, g)
    }
}

/// flex: the blocked host kernels, or the reference for what they do not take.
#[cfg(feature = "flex")]
impl AttentionBackend for burn::backend::Flex {
    fn fused_attention(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        mask: BoolTensor<Self>,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        match super::attention_flex::attention(&q, &k, &v, &mask) {
            Some(t) => t,
            None => reference::attention::<Self>(q, k, v, mask),
        }
    }

    fn fused_attention_backward(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        p: FloatTensor<Self>,
        g: FloatTensor<Self>,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        match super::attention_flex::attention_backward(&q, &k, &v, &p, &g) {
            Some(t) => t,
            None => reference::attention_backward::<Self>(q, k, v, p, g),
        }
    }
}
#[cfg(feature = "ndarray")]
#[allow(deprecated)]
impl AttentionBackend for burn::backend::NdArray {}
#[cfg(feature = "wgpu")]
impl AttentionBackend for burn::backend::Cube {}

/// The reference bodies in backend primitive ops: the defaults, and flex's fallback.
mod reference {
    use super::*;

    pub(super) fn attention<B: Backend>(
        q: FloatTensor<B>,
        k: FloatTensor<B>,
        v: FloatTensor<B>,
        mask: BoolTensor<B>,
    ) -> (FloatTensor<B>, FloatTensor<B>) {
        let scores = B::float_matmul(q, B::float_swap_dims(k, 2, 3)); // [B, K, R, S]
        let [m, r, s] = mask.shape().dims::<3>();
        let mask = B::bool_reshape(mask, Shape::new([m, 1, r, s])); // broadcast over K (and B)
        let scores = B::float_mask_fill(scores, mask, f64::NEG_INFINITY.into());
        let p = B::softmax(scores, 3);
        (B::float_matmul(p.clone(), v), p)
    }

    pub(super) fn attention_backward<B: Backend>(
        q: FloatTensor<B>,
        k: FloatTensor<B>,
        v: FloatTensor<B>,
        p: FloatTensor<B>,
        g: FloatTensor<B>,
    ) -> (FloatTensor<B>, FloatTensor<B>, FloatTensor<B>) {
        let d_v = B::float_matmul(B::float_swap_dims(p.clone(), 2, 3), g.clone());
        let d_p = B::float_matmul(g, B::float_swap_dims(v, 2, 3)); // [B, K, R, S]
        let dot = B::float_sum_dim(B::float_mul(d_p.clone(), p.clone()), 3); // [B, K, R, 1]
        let d_s = B::float_mul(p, B::float_sub(d_p, dot));
        let d_q = B::float_matmul(d_s.clone(), k);
        let d_k = B::float_matmul(B::float_swap_dims(d_s, 2, 3), q);
        (d_q, d_k, d_v)
    }
}

/// Backward of [`AttentionBackend::fused_attention`]; keeps `q`, `k`, `v` and the
/// probabilities — what the composed ops keep too (the products' operands and the softmax's
/// output), without the masked scores.
#[derive(Debug)]
struct AttentionBackward;

impl<B: AttentionBackend> Backward<B, 3> for AttentionBackward {
    type State = [FloatTensor<B>; 4];

    fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [q, k, v, p] = ops.state;
        let g = grads.consume::<B>(&ops.node);
        let (d_q, d_k, d_v) = B::fused_attention_backward(q, k, v, p, g);
        for (parent, grad) in ops.parents.into_iter().zip([d_q, d_k, d_v]) {
            if let Some(node) = parent {
                grads.register::<B>(node.id, grad);
            }
        }
    }
}

/// One node, compute-bound: under gradient checkpointing its output is kept, not recomputed.
impl<B: AttentionBackend, C: CheckpointStrategy> AttentionBackend for Autodiff<B, C> {
    fn fused_attention(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        mask: BoolTensor<Self>,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        let (q, q_node) = q.into_parts();
        let (k, k_node) = k.into_parts();
        let (v, v_node) = v.into_parts();
        match AttentionBackward
            .prepare::<C>([q_node, k_node, v_node])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let (out, p) = B::fused_attention(q.clone(), k.clone(), v.clone(), mask);
                let p_out = <Self as AutodiffBackend>::from_inner(p.clone());
                (prep.finish([q, k, v, p], out), p_out)
            }
            OpsKind::UnTracked(prep) => {
                let (out, p) = B::fused_attention(q, k, v, mask);
                (prep.finish(out), <Self as AutodiffBackend>::from_inner(p))
            }
        }
    }
}
