//! Rotary position embedding on queries or keys as one backend operation with its own backward,
//! fused with the move of the head axis before the position axis and with a constant factor.
//!
//! The projections give `[B, T, N, E]` (position, then head); attention wants `[B, N, T, E]`.
//! Composed of tensor ops, RoPE in the rotate-half form is seven autodiff nodes (two halves, a
//! negation, a concatenation, two products and their sum, then the query scale), each a pass
//! over the tensor that burn-flex runs on one thread, and the swap of axes costs one more copy
//! when attention reads the result. Here it is one node that keeps nothing of its input: the
//! rotation is linear, so its backward needs only the tables — the rotation by `−θ`, the
//! transpose of the rotation by `θ`. flex runs both directions row-parallel on all cores
//! ([`super::flex`]); every other backend runs the default bodies, the reference.
//!
//! # Shapes
//! forward `x`: `[B, T, N, E]` → `[B, N, T, E]`; backward `g`: `[B, N, T, E]` → `[B, T, N, E]`;
//! `cos`, `sin`: `[T, E]`, the rows for this call's positions.
//!
//! Source: Su et al. 2021 (RoFormer, arXiv:2104.09864) §3.4.2 in the rotate-half convention of
//! transformers' `models/llama/modeling_llama.py` (`rotate_half`, `apply_rotary_pos_emb`):
//! `y = s·(x ⊙ cos + rotate_half(x) ⊙ sin)` with `rotate_half(x₁, x₂) = (−x₂, x₁)`; its input
//! gradient is `s·(g ⊙ cos + rotate_halfᵀ(g ⊙ sin))` with `rotate_halfᵀ(u₁, u₂) = (u₂, −u₁)`.

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind, unary};
use burn::backend::tensor::FloatTensor;
use burn::backend::{Autodiff, Backend, Shape, TensorMetadata, backend_extension};
use burn::tensor::Slice;

/// RoPE forward and backward as backend operations (see the module documentation).
#[backend_extension(
    Flex: cfg(feature = "flex"),
    NdArray: cfg(feature = "ndarray"),
    Cube: cfg(feature = "wgpu"),
    Autodiff
)]
pub trait RopeBackend: Backend {
    /// `s·(x ⊙ cos + rotate_half(x) ⊙ sin)` with the head axis moved before the position axis:
    /// `x`: `[B, T, N, E]`, `cos`, `sin`: `[T, E]` → `[B, N, T, E]`.
    fn fused_rope(
        x: FloatTensor<Self>,
        cos: FloatTensor<Self>,
        sin: FloatTensor<Self>,
        scale: f64,
    ) -> FloatTensor<Self> {
        reference::rope::<Self>(x, cos, sin, scale)
    }

    /// The input gradient of [`RopeBackend::fused_rope`]:
    /// `s·(g ⊙ cos + rotate_halfᵀ(g ⊙ sin))` with the axes moved back:
    /// `g`: `[B, N, T, E]`, `cos`, `sin`: `[T, E]` → `[B, T, N, E]`.
    fn fused_rope_backward(
        g: FloatTensor<Self>,
        cos: FloatTensor<Self>,
        sin: FloatTensor<Self>,
        scale: f64,
    ) -> FloatTensor<Self> {
        reference::rope_backward::<Self>(g, cos, sin, scale)
    }
}

/// flex: the row-parallel host kernel, or the reference for what it does not take.
#[cfg(feature = "flex")]
impl RopeBackend for burn::backend::Flex {
    fn fused_rope(
        x: FloatTensor<Self>,
        cos: FloatTensor<Self>,
        sin: FloatTensor<Self>,
        scale: f64,
    ) -> FloatTensor<Self> {
        match super::flex::rope(&x, &cos, &sin, scale, false) {
            Some(t) => t,
            None => reference::rope::<Self>(x, cos, sin, scale),
        }
    }

    fn fused_rope_backward(
        g: FloatTensor<Self>,
        cos: FloatTensor<Self>,
        sin: FloatTensor<Self>,
        scale: f64,
    ) -> FloatTensor<Self> {
        match super::flex::rope(&g, &cos, &sin, scale, true) {
            Some(t) => t,
            None => reference::rope_backward::<Self>(g, cos, sin, scale),
        }
    }
}
#[cfg(feature = "ndarray")]
#[allow(deprecated)]
impl RopeBackend for burn::backend::NdArray {}
#[cfg(feature = "wgpu")]
impl RopeBackend for burn::backend::Cube {}

/// The reference bodies in backend primitive ops: the defaults, and flex's fallback.
mod reference {
    use super::*;

    /// The two halves of the last axis of a rank-4 tensor.
    fn halves<B: Backend>(x: FloatTensor<B>) -> (FloatTensor<B>, FloatTensor<B>) {
        let e = x.shape().dims::<4>()[3];
        let part = |r: std::ops::Range<usize>| {
            let mut s = [Slice::full(), Slice::full(), Slice::full(), Slice::full()];
            s[3] = Slice::new(r.start as isize, Some(r.end as isize), 1);
            B::float_slice(x.clone(), &s)
        };
        (part(0..e / 2), part(e / 2..e))
    }

    /// A `[T, E]` table as `[1, 1, T, E]`, to broadcast over batch and heads.
    fn table<B: Backend>(t: FloatTensor<B>) -> FloatTensor<B> {
        let [rows, cols] = t.shape().dims::<2>();
        B::float_reshape(t, Shape::new([1, 1, rows, cols]))
    }

    pub(super) fn rope<B: Backend>(
        x: FloatTensor<B>,
        cos: FloatTensor<B>,
        sin: FloatTensor<B>,
        scale: f64,
    ) -> FloatTensor<B> {
        let x = B::float_swap_dims(x, 1, 2); // [B, N, T, E]
        let (x1, x2) = halves::<B>(x.clone());
        let rotated = B::float_cat(vec![B::float_neg(x2), x1], 3); // (−x₂, x₁)
        let y = B::float_add(
            B::float_mul(x, table::<B>(cos)),
            B::float_mul(rotated, table::<B>(sin)),
        );
        B::float_mul_scalar(y, scale.into())
    }

    pub(super) fn rope_backward<B: Backend>(
        g: FloatTensor<B>,
        cos: FloatTensor<B>,
        sin: FloatTensor<B>,
        scale: f64,
    ) -> FloatTensor<B> {
        let (u1, u2) = halves::<B>(B::float_mul(g.clone(), table::<B>(sin)));
        let back = B::float_cat(vec![u2, B::float_neg(u1)], 3); // rotate_halfᵀ(g ⊙ sin)
        let d = B::float_add(B::float_mul(g, table::<B>(cos)), back);
        B::float_swap_dims(B::float_mul_scalar(d, scale.into()), 1, 2) // [B, T, N, E]
    }
}

/// Backward of [`RopeBackend::fused_rope`]; keeps the two tables and the factor, nothing of the
/// input (the op is linear in it).
#[derive(Debug)]
struct RopeBackward;

impl<B: RopeBackend> Backward<B, 1> for RopeBackward {
    type State = (FloatTensor<B>, FloatTensor<B>, f64);

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let (cos, sin, scale) = ops.state;
        unary::<B, _>(ops.parents, ops.node, grads, |g| {
            B::fused_rope_backward(g, cos, sin, scale)
        });
    }
}

/// One node, compute-bound (no retro-forward: under gradient checkpointing its output is kept).
/// The tables are constants: no gradient flows to them, tracked or not.
impl<B: RopeBackend, C: CheckpointStrategy> RopeBackend for Autodiff<B, C> {
    fn fused_rope(
        x: FloatTensor<Self>,
        cos: FloatTensor<Self>,
        sin: FloatTensor<Self>,
        scale: f64,
    ) -> FloatTensor<Self> {
        let (x, node) = x.into_parts();
        let (cos, _) = cos.into_parts();
        let (sin, _) = sin.into_parts();
        match RopeBackward.prepare::<C>([node]).compute_bound().stateful() {
            OpsKind::Tracked(prep) => {
                let out = B::fused_rope(x, cos.clone(), sin.clone(), scale);
                prep.finish((cos, sin, scale), out)
            }
            OpsKind::UnTracked(prep) => prep.finish(B::fused_rope(x, cos, sin, scale)),
        }
    }
}
