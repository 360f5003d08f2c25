//! The frozen base product `x · W` as one backend operation with its own backward: `W` gets no
//! gradient, so the backward is one product, `∂x = ∂y · Wᵀ`, and it keeps nothing but `W` — a
//! tensor the model holds anyway (cloning it shares its buffer).
//!
//! Every other backend runs the default body, burn's `matmul`, the reference. flex runs
//! [`super::frozen_matmul_flex`]: all rows of the batch in one product, split once per thread,
//! instead of burn-flex's per-sequence products (measured there); the backward is the same
//! kernel on `W`'s transposed view, with no copy.
//!
//! # Shapes
//! `x`: `[N, d_in]`, `W`: `[d_in, d_out]` (burn's layout; any strides) → `[N, d_out]`.
//!
//! Source: the product of LoRA's frozen path, `h = W₀x` (Hu et al. 2021, §4.1); PyTorch's
//! `F.linear` backward computes `grad_input = grad_output · weight` and skips `grad_weight` for a
//! weight with `requires_grad = False` (`torch/csrc/autograd/FunctionsManual.cpp`).

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind, unary};
use burn::backend::tensor::FloatTensor;
use burn::backend::{Autodiff, Backend, backend_extension};

/// The frozen base product as a backend operation (see the module documentation).
#[backend_extension(
    Flex: cfg(feature = "flex"),
    NdArray: cfg(feature = "ndarray"),
    Cube: cfg(feature = "wgpu"),
    Autodiff
)]
pub trait FrozenMatmulBackend: Backend {
    /// `x · w`: `x` `[N, K]`, `w` `[K, M]` → `[N, M]`. Under autodiff `w` gets no gradient
    /// (tracked or not): callers pass only frozen weights.
    fn frozen_matmul(x: FloatTensor<Self>, w: FloatTensor<Self>) -> FloatTensor<Self> {
        reference::<Self>(x, w)
    }
}

/// The reference body: burn's matmul.
fn reference<B: Backend>(x: FloatTensor<B>, w: FloatTensor<B>) -> FloatTensor<B> {
    B::float_matmul(x, w)
}

/// flex: the row-split host kernel, or burn-flex's matmul for what it does not take.
#[cfg(feature = "flex")]
impl FrozenMatmulBackend for burn::backend::Flex {
    fn frozen_matmul(x: FloatTensor<Self>, w: FloatTensor<Self>) -> FloatTensor<Self> {
        match super::frozen_matmul_flex::matmul(&x, &w) {
            Some(t) => t,
            None => reference::<Self>(x, w),
        }
    }
}
#[cfg(feature = "ndarray")]
#[allow(deprecated)]
impl FrozenMatmulBackend for burn::backend::NdArray {}
#[cfg(feature = "wgpu")]
impl FrozenMatmulBackend for burn::backend::Cube {}

/// Backward of [`FrozenMatmulBackend::frozen_matmul`]: keeps `W`, nothing of `x`.
#[derive(Debug)]
struct FrozenMatmulBackward;

impl<B: FrozenMatmulBackend> Backward<B, 1> for FrozenMatmulBackward {
    type State = FloatTensor<B>;

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let w = ops.state;
        unary::<B, _>(ops.parents, ops.node, grads, |g| {
            B::frozen_matmul(g, B::float_swap_dims(w, 0, 1)) // ∂y · Wᵀ, a view of W
        });
    }
}

/// One node, compute-bound (no retro-forward: under gradient checkpointing its output is kept,
/// as burn's own matmul's is).
impl<B: FrozenMatmulBackend, C: CheckpointStrategy> FrozenMatmulBackend for Autodiff<B, C> {
    fn frozen_matmul(x: FloatTensor<Self>, w: FloatTensor<Self>) -> FloatTensor<Self> {
        let (x, node) = x.into_parts();
        let (w, _) = w.into_parts();
        match FrozenMatmulBackward
            .prepare::<C>([node])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let out = B::frozen_matmul(x, w.clone());
                prep.finish(w, out)
            }
            OpsKind::UnTracked(prep) => prep.finish(B::frozen_matmul(x, w)),
        }
    }
}
