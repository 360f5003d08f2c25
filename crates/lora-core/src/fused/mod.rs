//! Fused transformer ops: softmax, SwiGLU, RMSNorm, RoPE, attention, the cross-entropy loss and
//! the frozen base product as single operations with their own backward, on every backend.
//!
//! Composed of tensor ops, each of these becomes five to eight autodiff nodes, and on the CPU
//! each node is a pass over the tensor that burn-flex runs on one thread. A SmolLM2 training
//! step spent about a third of its CPU time there while the other core waited (README,
//! "Benchmark"). Here each is one node that keeps only its inputs (softmax: its output), and
//! flex runs the forward and backward passes row-parallel on all cores ([`flex`]). The
//! composed versions stay as the reference: they are the default bodies every other backend
//! runs, and the tests compare the two (values and gradients).
//!
//! - [`softmax`]: along the last dimension.
//! - [`swiglu`]: `silu(gate) ⊙ up` (the gated MLP of Llama, Qwen, Mistral).
//! - [`rms_norm`]: `x / √(mean(x²) + ε) ⊙ gain` over the last dimension.
//! - [`attention`]: `softmax(Q·Kᵀ + mask)·V`, whose flex kernels skip what the mask hides
//!   ([`attention_op`]).
//! - [`rope`]: rotary position embedding on queries or keys, with the move of the head axis
//!   before the position axis and the query scale ([`rope_op`]).
//! - [`cross_entropy`]: `−log softmax(x)[t]` per row, with a backward that is one pass over the
//!   logits ([`cross_entropy_op`]).
//! - [`frozen_matmul`]: the frozen base weight's product `x · W`, all rows as one product split
//!   once per thread, with a backward that forms `∂x` only ([`frozen_matmul_op`]).
//!
//! Source: softmax's backward `p ⊙ (g − Σ g ⊙ p)`, SiLU's derivative `σ(z)(1 + z(1 − σ(z)))`
//! and RMSNorm's (Zhang & Sennrich 2019, §3) written out on [`FusedBackend`]; PyTorch's
//! `_softmax_backward_data`, `silu_backward` and the fused RMSNorm kernels compute the same.

#[cfg(feature = "flex")]
mod attention_flex;
pub mod attention_op;
#[cfg(feature = "flex")]
mod cross_entropy_flex;
pub mod cross_entropy_op;
#[cfg(feature = "flex")]
mod flex;
#[cfg(feature = "flex")]
mod frozen_matmul_flex;
pub mod frozen_matmul_op;
pub mod ops;
pub mod rope_op;
#[cfg(feature = "flex")]
mod vmath;

use burn::backend::Dispatch;
use burn::tensor::{Bool, Int, Tensor, TensorData};

pub use attention_op::AttentionBackend;
pub use cross_entropy_op::CrossEntropyBackend;
pub use frozen_matmul_op::FrozenMatmulBackend;
pub use ops::FusedBackend;
pub use rope_op::RopeBackend;

/// `softmax(q·kᵀ + mask)·v` with `−∞` where `mask` is `true`, as one autodiff node
/// ([`attention_op`]). The `G` query heads that share a key/value head come stacked as `R = G·T`
/// rows; `q` is already scaled.
///
/// # Shapes
/// `q`: `[B, K, R, E]`, `k`, `v`: `[B, K, S, E]`, `mask`: `[1, R, S]` or `[B, R, S]` (`None`:
/// nothing masked) → `[B, K, R, E]`
pub fn attention(
    q: Tensor<4>,
    k: Tensor<4>,
    v: Tensor<4>,
    mask: Option<&Tensor<3, Bool>>,
) -> Tensor<4> {
    let mask = match mask {
        Some(m) => m.clone(),
        None => {
            let ([_, _, r, _], s) = (q.dims(), k.dims()[2]);
            Tensor::from_data(TensorData::new(vec![false; r * s], [1, r, s]), &q.device())
        }
    };
    let (out, _probs) = <Dispatch as AttentionBackend>::fused_attention(
        q.into_dispatch(),
        k.into_dispatch(),
        v.into_dispatch(),
        mask.into_dispatch(),
    );
    Tensor::from_dispatch(out)
}

/// `softmax(x)` along the last dimension, as one autodiff node.
///
/// # Shapes
/// `x`: `[..., C]` → `[..., C]`
pub fn softmax<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    let dims = x.dims();
    let cols = dims[D - 1];
    let rows = dims[..D - 1].iter().product::<usize>();
    let x = x.reshape([rows, cols]).into_dispatch();
    Tensor::<2>::from_dispatch(<Dispatch as FusedBackend>::fused_softmax(x)).reshape(dims)
}

/// `silu(gate) ⊙ up`, `silu(z) = z · σ(z)`, as one autodiff node.
///
/// # Shapes
/// `gate`, `up`: `[..., F]` (the same shape) → `[..., F]`
pub fn swiglu<const D: usize>(gate: Tensor<D>, up: Tensor<D>) -> Tensor<D> {
    let dims = gate.dims();
    let cols = dims[D - 1];
    let rows = dims[..D - 1].iter().product::<usize>();
    let gate = gate.reshape([rows, cols]).into_dispatch();
    let up = up.reshape([rows, cols]).into_dispatch();
    Tensor::<2>::from_dispatch(<Dispatch as FusedBackend>::fused_swiglu(gate, up)).reshape(dims)
}

/// RMSNorm over the last dimension: `x / √(mean(x²) + eps) ⊙ gain`, as one autodiff node
/// (`gain` gets its gradient when it is tracked).
///
/// # Shapes
/// `x`: `[..., C]`, `gain`: `[C]` → `[..., C]`
pub fn rms_norm<const D: usize>(x: Tensor<D>, gain: Tensor<1>, eps: f64) -> Tensor<D> {
    let dims = x.dims();
    let cols = dims[D - 1];
    let rows = dims[..D - 1].iter().product::<usize>();
    let x = x.reshape([rows, cols]).into_dispatch();
    let gain = gain.into_dispatch();
    Tensor::<2>::from_dispatch(<Dispatch as FusedBackend>::fused_rms_norm(x, gain, eps))
        .reshape(dims)
}

/// Rotary position embedding `s·(x ⊙ cos + rotate_half(x) ⊙ sin)`, `rotate_half(x₁, x₂) =
/// (−x₂, x₁)`, with the head axis moved before the position axis, as one autodiff node that keeps
/// nothing of `x` ([`rope_op`]). `cos` and `sin` are the tables' rows for the `T` positions of
/// `x`; they are constants (no gradient flows to them). `scale` is `1` for keys and the score
/// factor for queries.
///
/// # Shapes
/// `x`: `[B, T, N, E]` (`E` even), `cos`, `sin`: `[T, E]` → `[B, N, T, E]`
pub fn rope(x: Tensor<4>, cos: Tensor<2>, sin: Tensor<2>, scale: f64) -> Tensor<4> {
    Tensor::from_dispatch(<Dispatch as RopeBackend>::fused_rope(
        x.into_dispatch(),
        cos.into_dispatch(),
        sin.into_dispatch(),
        scale,
    ))
}

/// `x · w` for a frozen weight `w`, as one autodiff node whose backward forms only `∂x = ∂y · wᵀ`
/// ([`frozen_matmul_op`]); all leading axes of `x` are one product. `w` gets no gradient even
/// when it is tracked: pass only frozen weights (a trainable one belongs in burn's `linear`).
///
/// # Shapes
/// `x`: `[..., K]`, `w`: `[K, M]` → `[..., M]`
pub fn frozen_matmul<const D: usize>(x: Tensor<D>, w: Tensor<2>) -> Tensor<D> {
    let mut dims = x.dims();
    let k = dims[D - 1];
    let rows = dims[..D - 1].iter().product::<usize>();
    dims[D - 1] = w.dims()[1];
    let x = x.reshape([rows, k]).into_dispatch();
    Tensor::<2>::from_dispatch(<Dispatch as FrozenMatmulBackend>::frozen_matmul(
        x,
        w.into_dispatch(),
    ))
    .reshape(dims)
}

/// The cross-entropy of each row of `logits` against its target, `−log softmax(logits)[t]`, as
/// one autodiff node whose backward is one pass over the logits ([`cross_entropy_op`]).
///
/// # Shapes
/// `logits`: `[N, V]`, `targets`: `[N]` token ids, each `< V` (ids come from the tokenizer
/// whose vocabulary sized the model's embedding) → `[N]`
pub fn cross_entropy(logits: Tensor<2>, targets: Tensor<1, Int>) -> Tensor<1> {
    let (nll, _lse) = <Dispatch as CrossEntropyBackend>::fused_cross_entropy(
        logits.into_dispatch(),
        targets.into_dispatch(),
    );
    Tensor::from_dispatch(nll)
}
