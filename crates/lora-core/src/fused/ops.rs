//! The fused transformer ops as a burn backend extension: every backend's forward and backward is
//! the trait's default body (backend primitive ops, the reference), flex overrides them with
//! multi-threaded host kernels ([`super::flex`]), and `Autodiff<B, C>` makes each one autodiff
//! node with a hand-written backward step — instead of the five to eight nodes (each a pass over
//! the tensor, each keeping its inputs) that the same function composed of tensor ops becomes.
//!
//! All tensors are 2-d, `[rows, cols]`, the op working along `cols` (the wrappers in
//! [`super`] reshape).
//!
//! Source: the pattern is burn's `custom-cubecl-kernel`/`backend-extension` examples and
//! [`crate::quant::nf4_op`]; the derivatives are written out on each backward struct.

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind, unary};
use burn::backend::tensor::FloatTensor;
use burn::backend::{Autodiff, Backend, Shape, TensorMetadata, backend_extension};

/// Softmax, SwiGLU and RMSNorm, forward and backward, as backend operations (see the module
/// documentation). Shapes: `[rows, cols]`, along `cols`.
#[backend_extension(
    Flex: cfg(feature = "flex"),
    NdArray: cfg(feature = "ndarray"),
    Cube: cfg(feature = "wgpu"),
    Autodiff
)]
pub trait FusedBackend: Backend {
    /// `softmax(x)` along `cols`. `x`: `[R, C]` → `[R, C]`.
    fn fused_softmax(x: FloatTensor<Self>) -> FloatTensor<Self> {
        Self::softmax(x, 1)
    }

    /// The softmax's input gradient from its output `p` and output gradient `g`:
    /// `p ⊙ (g − Σ_c g ⊙ p)`. `[R, C]` each → `[R, C]`.
    fn fused_softmax_backward(p: FloatTensor<Self>, g: FloatTensor<Self>) -> FloatTensor<Self> {
        reference::softmax_backward::<Self>(p, g)
    }

    /// SwiGLU's gate: `silu(gate) ⊙ up` with `silu(z) = z · σ(z)`. `[R, C]` each → `[R, C]`.
    fn fused_swiglu(gate: FloatTensor<Self>, up: FloatTensor<Self>) -> FloatTensor<Self> {
        reference::swiglu::<Self>(gate, up)
    }

    /// The gradients of [`FusedBackend::fused_swiglu`] with respect to `gate` and `up`:
    /// `g ⊙ up ⊙ σ(gate) ⊙ (1 + gate ⊙ (1 − σ(gate)))` and `g ⊙ silu(gate)`.
    fn fused_swiglu_backward(
        gate: FloatTensor<Self>,
        up: FloatTensor<Self>,
        g: FloatTensor<Self>,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        reference::swiglu_backward::<Self>(gate, up, g)
    }

    /// RMSNorm: `x / √(mean_c(x²) + ε) ⊙ gain`. `x`: `[R, C]`, `gain`: `[C]` → `[R, C]`.
    fn fused_rms_norm(
        x: FloatTensor<Self>,
        gain: FloatTensor<Self>,
        eps: f64,
    ) -> FloatTensor<Self> {
        reference::rms_norm::<Self>(x, gain, eps)
    }

    /// The gradients of [`FusedBackend::fused_rms_norm`] with respect to `x` and `gain`, with
    /// `r = 1/√(mean(x²) + ε)`, `x̂ = r·x` and `h = g ⊙ gain`:
    /// `∂x = r · (h − x̂ · mean_c(h ⊙ x̂))` (`[R, C]`) and `∂gain = Σ_r g ⊙ x̂` (`[C]`).
    fn fused_rms_norm_backward(
        x: FloatTensor<Self>,
        gain: FloatTensor<Self>,
        g: FloatTensor<Self>,
        eps: f64,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        reference::rms_norm_backward::<Self>(x, gain, g, eps)
    }
}

/// flex runs the ops on all cores from host memory ([`super::flex`]; its softmax forward is
/// flex's own fused, row-parallel kernel, the default body); any layout or dtype the kernels do
/// not take goes to the reference bodies.
#[cfg(feature = "flex")]
impl FusedBackend for burn::backend::Flex {
    fn fused_softmax_backward(p: FloatTensor<Self>, g: FloatTensor<Self>) -> FloatTensor<Self> {
        match super::flex::softmax_backward(&p, &g) {
            Some(t) => t,
            None => reference::softmax_backward::<Self>(p, g),
        }
    }

    fn fused_swiglu(gate: FloatTensor<Self>, up: FloatTensor<Self>) -> FloatTensor<Self> {
        match super::flex::swiglu(&gate, &up) {
            Some(t) => t,
            None => reference::swiglu::<Self>(gate, up),
        }
    }

    fn fused_swiglu_backward(
        gate: FloatTensor<Self>,
        up: FloatTensor<Self>,
        g: FloatTensor<Self>,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        match super::flex::swiglu_backward(&gate, &up, &g) {
            Some(t) => t,
            None => reference::swiglu_backward::<Self>(gate, up, g),
        }
    }

    fn fused_rms_norm(
        x: FloatTensor<Self>,
        gain: FloatTensor<Self>,
        eps: f64,
    ) -> FloatTensor<Self> {
        match super::flex::rms_norm(&x, &gain, eps) {
            Some(t) => t,
            None => reference::rms_norm::<Self>(x, gain, eps),
        }
    }

    fn fused_rms_norm_backward(
        x: FloatTensor<Self>,
        gain: FloatTensor<Self>,
        g: FloatTensor<Self>,
        eps: f64,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        match super::flex::rms_norm_backward(&x, &gain, &g, eps) {
            Some(t) => t,
            None => reference::rms_norm_backward::<Self>(x, gain, g, eps),
        }
    }
}
#[cfg(feature = "ndarray")]
#[allow(deprecated)]
impl FusedBackend for burn::backend::NdArray {}
#[cfg(feature = "wgpu")]
impl FusedBackend for burn::backend::Cube {}

/// The reference bodies, in backend primitive ops: the trait's defaults, and flex's fallback.
mod reference {
    use super::*;

    /// `1/√(mean_c(x²) + ε)`, `[R, 1]`.
    fn inv_rms<B: Backend>(x: FloatTensor<B>, eps: f64) -> FloatTensor<B> {
        let mean_sq = B::float_mean_dim(B::float_mul(x.clone(), x), 1);
        B::float_recip(B::float_sqrt(B::float_add_scalar(mean_sq, eps.into())))
    }

    pub(super) fn softmax_backward<B: Backend>(
        p: FloatTensor<B>,
        g: FloatTensor<B>,
    ) -> FloatTensor<B> {
        let dot = B::float_sum_dim(B::float_mul(g.clone(), p.clone()), 1); // [R, 1]
        B::float_mul(p, B::float_sub(g, dot))
    }

    pub(super) fn swiglu<B: Backend>(gate: FloatTensor<B>, up: FloatTensor<B>) -> FloatTensor<B> {
        let silu = B::float_mul(gate.clone(), B::sigmoid(gate));
        B::float_mul(silu, up)
    }

    pub(super) fn swiglu_backward<B: Backend>(
        gate: FloatTensor<B>,
        up: FloatTensor<B>,
        g: FloatTensor<B>,
    ) -> (FloatTensor<B>, FloatTensor<B>) {
        let s = B::sigmoid(gate.clone());
        let silu = B::float_mul(gate.clone(), s.clone());
        let d_up = B::float_mul(g.clone(), silu);
        let one_minus_s = B::float_add_scalar(B::float_neg(s.clone()), 1.0.into());
        let slope = B::float_add_scalar(B::float_mul(gate, one_minus_s), 1.0.into());
        (
            B::float_mul(B::float_mul(B::float_mul(g, up), s), slope),
            d_up,
        )
    }

    pub(super) fn rms_norm<B: Backend>(
        x: FloatTensor<B>,
        gain: FloatTensor<B>,
        eps: f64,
    ) -> FloatTensor<B> {
        let cols = x.shape().dims::<2>()[1];
        let inv = inv_rms::<B>(x.clone(), eps); // [R, 1]
        B::float_mul(
            B::float_mul(x, inv),
            B::float_reshape(gain, Shape::new([1, cols])),
        )
    }

    pub(super) fn rms_norm_backward<B: Backend>(
        x: FloatTensor<B>,
        gain: FloatTensor<B>,
        g: FloatTensor<B>,
        eps: f64,
    ) -> (FloatTensor<B>, FloatTensor<B>) {
        let cols = x.shape().dims::<2>()[1];
        let inv = inv_rms::<B>(x.clone(), eps); // [R, 1]
        let x_hat = B::float_mul(x, inv.clone());
        let d_gain = B::float_reshape(
            B::float_sum_dim(B::float_mul(g.clone(), x_hat.clone()), 0),
            Shape::new([cols]),
        );
        let h = B::float_mul(g, B::float_reshape(gain, Shape::new([1, cols])));
        let mean_hx = B::float_mean_dim(B::float_mul(h.clone(), x_hat.clone()), 1); // [R, 1]
        (
            B::float_mul(B::float_sub(h, B::float_mul(x_hat, mean_hx)), inv),
            d_gain,
        )
    }
}

/// Backward of [`FusedBackend::fused_softmax`]; keeps the output `p` (what the composed softmax
/// keeps too, as its division's operand).
#[derive(Debug)]
struct SoftmaxBackward;

impl<B: FusedBackend> Backward<B, 1> for SoftmaxBackward {
    type State = FloatTensor<B>;

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let p = ops.state;
        unary::<B, _>(ops.parents, ops.node, grads, |g| {
            B::fused_softmax_backward(p, g)
        });
    }
}

/// Backward of [`FusedBackend::fused_swiglu`]; keeps `gate` and `up` (the outputs of the two
/// projections) — not `σ(gate)`, `silu(gate)` and the products the composed version keeps.
#[derive(Debug)]
struct SwigluBackward;

impl<B: FusedBackend> Backward<B, 2> for SwigluBackward {
    type State = (FloatTensor<B>, FloatTensor<B>);

    fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, _: &mut Checkpointer) {
        let (gate, up) = ops.state;
        let g = grads.consume::<B>(&ops.node);
        let [p_gate, p_up] = ops.parents;
        let (d_gate, d_up) = B::fused_swiglu_backward(gate, up, g);
        if let Some(node) = p_gate {
            grads.register::<B>(node.id, d_gate);
        }
        if let Some(node) = p_up {
            grads.register::<B>(node.id, d_up);
        }
    }
}

/// Backward of [`FusedBackend::fused_rms_norm`]; keeps `x` and `gain`.
#[derive(Debug)]
struct RmsNormBackward;

impl<B: FusedBackend> Backward<B, 2> for RmsNormBackward {
    type State = (FloatTensor<B>, FloatTensor<B>, f64);

    fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, _: &mut Checkpointer) {
        let (x, gain, eps) = ops.state;
        let g = grads.consume::<B>(&ops.node);
        let [p_x, p_gain] = ops.parents;
        let (d_x, d_gain) = B::fused_rms_norm_backward(x, gain, g, eps);
        if let Some(node) = p_x {
            grads.register::<B>(node.id, d_x);
        }
        if let Some(node) = p_gain {
            grads.register::<B>(node.id, d_gain);
        }
    }
}

/// Each op is one node; all three are marked compute-bound, so under gradient checkpointing
/// their outputs are kept rather than recomputed (they have no retro-forward).
impl<B: FusedBackend, C: CheckpointStrategy> FusedBackend for Autodiff<B, C> {
    fn fused_softmax(x: FloatTensor<Self>) -> FloatTensor<Self> {
        let (x, node) = x.into_parts();
        match SoftmaxBackward
            .prepare::<C>([node])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let p = B::fused_softmax(x);
                prep.finish(p.clone(), p)
            }
            OpsKind::UnTracked(prep) => prep.finish(B::fused_softmax(x)),
        }
    }

    fn fused_swiglu(gate: FloatTensor<Self>, up: FloatTensor<Self>) -> FloatTensor<Self> {
        let (gate, gate_node) = gate.into_parts();
        let (up, up_node) = up.into_parts();
        match SwigluBackward
            .prepare::<C>([gate_node, up_node])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let out = B::fused_swiglu(gate.clone(), up.clone());
                prep.finish((gate, up), out)
            }
            OpsKind::UnTracked(prep) => prep.finish(B::fused_swiglu(gate, up)),
        }
    }

    fn fused_rms_norm(
        x: FloatTensor<Self>,
        gain: FloatTensor<Self>,
        eps: f64,
    ) -> FloatTensor<Self> {
        let (x, x_node) = x.into_parts();
        let (gain, gain_node) = gain.into_parts();
        match RmsNormBackward
            .prepare::<C>([x_node, gain_node])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let out = B::fused_rms_norm(x.clone(), gain.clone(), eps);
                prep.finish((x, gain, eps), out)
            }
            OpsKind::UnTracked(prep) => prep.finish(B::fused_rms_norm(x, gain, eps)),
        }
    }
}
