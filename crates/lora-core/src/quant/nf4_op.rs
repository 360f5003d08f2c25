//! The NF4 base product `x · dequant(W)` as one autodiff operation whose backward dequantizes
//! `W` again from the packed codes, so training keeps 4 bits per weight, never an f32 copy.
//!
//! Composed of ordinary tensor ops, `x.matmul(dequant(W))` leaves autodiff holding the
//! dequantized f32 `W` of every layer until the backward pass reaches it (a matmul keeps its
//! right operand to form `∂L/∂x = ∂L/∂y · Wᵀ`): on SmolLM2 that made QLoRA training peak *higher*
//! than training on the f32 base. bitsandbytes' `MatMul4Bit` (`bitsandbytes/autograd/
//! _functions.py`) dequantizes a second time in backward instead; [`Nf4Backend::nf4_matmul`]
//! does the same here. What its backward step keeps is the layer's packed codes and scales —
//! tensors the model holds anyway — and nothing else: `W` gets no gradient (it is frozen), so
//! not even the input activation `x` is needed.
//!
//! burn 0.22 routes a custom operation through its `#[backend_extension]` (burn's `extension`
//! feature): the forward of every execution backend (ndarray, wgpu) is the trait's default
//! body, written with backend primitive ops; flex overrides it with host kernels that read the
//! packed bytes ([`crate::quant::nf4_flex`], checked against the default body's results); and
//! `Autodiff<B, C>` implements the op with its own backward step.
//!
//! # Shapes
//! `x`: `[N, d_in]`, the dequantized `W`: `[d_in, d_out]` (burn layout), output `[N, d_out]`.

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind, unary};
use burn::backend::tensor::{FloatTensor, IntTensor};
use burn::backend::{
    Autodiff, AutodiffBackend, Backend, ExtensionType, Shape, Slice, TensorMetadata,
    backend_extension,
};

#[cfg(feature = "flex")]
use crate::fused::FrozenMatmulBackend;
use crate::quant::nf4::NESTED_BLOCK_SIZE;

/// Bit offsets of the 4 bytes of a little-endian word of bitsandbytes bytes, in element order
/// (byte k holds elements 2k and 2k + 1).
const BYTE_SHIFTS: [i32; 4] = [0, 8, 16, 24];

/// The per-block scales of an NF4 weight, as stored (see [`crate::quant::nf4_weight`]).
#[derive(ExtensionType, Clone, Debug)]
pub enum Nf4Scales<B: Backend> {
    /// One f32 `absmax` per block, `[blocks]`.
    F32 {
        /// `[blocks]`.
        absmax: FloatTensor<B>,
    },
    /// Double quantization: 8-bit dynamic codes of `absmax − offset` (4 per word) and one f32
    /// scale per 256 blocks (QLoRA §3, eq. 6).
    Double {
        /// `[padded_blocks / 4]` words.
        codes: IntTensor<B>,
        /// `[⌈blocks / 256⌉]`.
        absmax2: FloatTensor<B>,
        /// The 256-value dynamic map.
        dynamic: FloatTensor<B>,
        /// The mean of the original `absmax` values.
        offset: f32,
    },
}

/// Everything needed to dequantize one NF4 weight: the model's own stored tensors (cloning them
/// shares their buffers) and the shape.
#[derive(ExtensionType, Clone, Debug)]
pub struct Nf4Parts<B: Backend> {
    /// NF4 codes, 8 per word, `[padded_len / 8]`.
    pub packed: IntTensor<B>,
    /// Both NF4 values of every byte value, `[256, 2]`.
    pub pairs: FloatTensor<B>,
    /// The per-block scales.
    #[extension_type]
    pub scales: Nf4Scales<B>,
    /// Rows of the PyTorch-layout weight (`d_out`).
    pub d_out: usize,
    /// Columns of the PyTorch-layout weight (`d_in`).
    pub d_in: usize,
    /// Weights per block.
    pub block_size: usize,
}

/// The NF4 operations every backend runs: dequantize, and the base product with a backward
/// that dequantizes again. The default bodies use backend primitive ops only, so flex, ndarray
/// and wgpu share them; `Autodiff<B, C>` adds the backward step.
#[backend_extension(
    Flex: cfg(feature = "flex"),
    NdArray: cfg(feature = "ndarray"),
    Cube: cfg(feature = "wgpu"),
    Autodiff
)]
pub trait Nf4Backend: Backend {
    /// `W` in burn layout, `[d_in, d_out]`: `NF4[code] · absmax[block]` (a transposed view of
    /// the row-major `[d_out, d_in]` result). Never tracked by autodiff.
    fn nf4_dequantize(#[extension_type] w: Nf4Parts<Self>) -> FloatTensor<Self> {
        dequantize::<Self>(w)
    }

    /// `x · W` with `W` dequantized from `w`; on an autodiff backend the backward dequantizes
    /// again instead of keeping `W`.
    ///
    /// # Shapes
    /// `x`: `[N, d_in]` → `[N, d_out]`
    fn nf4_matmul(x: FloatTensor<Self>, #[extension_type] w: Nf4Parts<Self>) -> FloatTensor<Self> {
        Self::float_matmul(x, Self::nf4_dequantize(w))
    }

    /// The input gradient of [`Nf4Backend::nf4_matmul`], `g · Wᵀ`, with `W` dequantized again.
    ///
    /// # Shapes
    /// `g`: `[N, d_out]` → `[N, d_in]`
    fn nf4_matmul_backward(
        g: FloatTensor<Self>,
        #[extension_type] w: Nf4Parts<Self>,
    ) -> FloatTensor<Self> {
        Self::float_matmul(g, Self::float_transpose(Self::nf4_dequantize(w)))
    }
}

/// flex reads the packed bytes on the host: dequantizing in parallel over blocks, and the
/// product with a few rows (decoding) without writing `W` ([`crate::quant::nf4_flex`]); a
/// dequantized `W` is as frozen as a dense one, so its products (forward and backward) are
/// [`FrozenMatmulBackend::frozen_matmul`]'s; anything else takes the generic path.
#[cfg(feature = "flex")]
impl Nf4Backend for burn::backend::Flex {
    fn nf4_dequantize(w: Nf4Parts<Self>) -> FloatTensor<Self> {
        match crate::quant::nf4_flex::dequantize(&w) {
            Some(t) => t,
            None => dequantize::<Self>(w),
        }
    }

    fn nf4_matmul(x: FloatTensor<Self>, w: Nf4Parts<Self>) -> FloatTensor<Self> {
        match crate::quant::nf4_flex::fused_matmul(&x, &w) {
            Some(y) => y,
            None => Self::frozen_matmul(x, Self::nf4_dequantize(w)),
        }
    }

    fn nf4_matmul_backward(g: FloatTensor<Self>, w: Nf4Parts<Self>) -> FloatTensor<Self> {
        Self::frozen_matmul(g, transpose::<Self>(Self::nf4_dequantize(w)))
    }
}
#[cfg(feature = "ndarray")]
#[allow(deprecated)]
impl Nf4Backend for burn::backend::NdArray {}
#[cfg(feature = "wgpu")]
impl Nf4Backend for burn::backend::Cube {}

/// `wᵀ`, a view (a generic bound brings the backend's float ops into scope for a concrete
/// backend).
#[cfg(feature = "flex")]
fn transpose<B: Backend>(w: FloatTensor<B>) -> FloatTensor<B> {
    B::float_transpose(w)
}

/// The four bytes of every 32-bit word, lowest first (the order [`BYTE_SHIFTS`] packs them
/// in), as `[4 · words]` ids.
fn unpack_bytes<B: Backend>(words: IntTensor<B>) -> IntTensor<B> {
    let n = words.shape().num_elements();
    let parts = BYTE_SHIFTS
        .iter()
        .map(|&s| {
            let byte = B::bitwise_and_scalar(
                B::bitwise_right_shift_scalar(words.clone(), s.into()),
                0xFF.into(),
            );
            B::int_reshape(byte, Shape::new([n, 1]))
        })
        .collect();
    B::int_reshape(B::int_cat(parts, 1), Shape::new([n * 4]))
}

/// The per-block `absmax`, `[blocks]`: `dynamic[q] · absmax₂ + offset` with double quantization
/// (QLoRA eq. 6), the stored f32 values without.
fn absmax_values<B: Backend>(scales: Nf4Scales<B>, blocks: usize) -> FloatTensor<B> {
    match scales {
        Nf4Scales::F32 { absmax } => absmax,
        Nf4Scales::Double {
            codes,
            absmax2,
            dynamic,
            offset,
        } => {
            let idx = unpack_bytes::<B>(codes); // [padded_blocks]
            let groups = absmax2.shape().num_elements();
            let values = B::float_reshape(
                B::float_select(dynamic, 0, idx),
                Shape::new([groups, NESTED_BLOCK_SIZE]),
            );
            let values = B::float_mul(values, B::float_reshape(absmax2, Shape::new([groups, 1])));
            let values = B::float_add_scalar(
                B::float_reshape(values, Shape::new([groups * NESTED_BLOCK_SIZE])),
                offset.into(),
            );
            B::float_slice(values, &[Slice::from(0..blocks)])
        }
    }
}

/// Dequantizes to the burn layout `[d_in, d_out]`: one table lookup per byte (a `[256, 2]`
/// table holds both elements of every byte value), times the block's `absmax`; bit-identical to
/// bitsandbytes' `dequantize_4bit` on flex.
fn dequantize<B: Backend>(w: Nf4Parts<B>) -> FloatTensor<B> {
    let len = w.d_out * w.d_in;
    let blocks = len.div_ceil(w.block_size);
    let bytes = unpack_bytes::<B>(w.packed); // [blocks · block / 2]
    let values = B::float_reshape(
        B::float_select(w.pairs, 0, bytes), // [blocks · block / 2, 2]
        Shape::new([blocks, w.block_size]),
    );
    let absmax = absmax_values::<B>(w.scales, blocks);
    let values = B::float_mul(values, B::float_reshape(absmax, Shape::new([blocks, 1])));
    let values = B::float_slice(
        B::float_reshape(values, Shape::new([blocks * w.block_size])),
        &[Slice::from(0..len)],
    );
    B::float_transpose(B::float_reshape(values, Shape::new([w.d_out, w.d_in])))
}

impl<B: Backend, C: CheckpointStrategy> Nf4Parts<Autodiff<B, C>> {
    /// The same parts on the inner backend (autodiff wraps only float tensors).
    fn into_inner(self) -> Nf4Parts<B> {
        let scales = match self.scales {
            Nf4Scales::F32 { absmax } => Nf4Scales::F32 {
                absmax: absmax.into_primitive(),
            },
            Nf4Scales::Double {
                codes,
                absmax2,
                dynamic,
                offset,
            } => Nf4Scales::Double {
                codes,
                absmax2: absmax2.into_primitive(),
                dynamic: dynamic.into_primitive(),
                offset,
            },
        };
        Nf4Parts {
            packed: self.packed,
            pairs: self.pairs.into_primitive(),
            scales,
            d_out: self.d_out,
            d_in: self.d_in,
            block_size: self.block_size,
        }
    }
}

/// The backward step of [`Nf4Backend::nf4_matmul`]: `∂L/∂x = ∂L/∂y · dequant(W)ᵀ`. Its state is
/// the layer's stored NF4 tensors, so between forward and backward a layer costs its 4-bit
/// codes and nothing more.
#[derive(Debug)]
struct Nf4MatmulBackward;

impl<B: Nf4Backend> Backward<B, 1> for Nf4MatmulBackward {
    type State = Nf4Parts<B>;

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let Ops {
            parents,
            node,
            state,
        } = ops;
        unary::<B, _>(parents, node, grads, |grad| {
            B::nf4_matmul_backward(grad, state)
        });
    }
}

impl<B: Nf4Backend, C: CheckpointStrategy> Nf4Backend for Autodiff<B, C> {
    fn nf4_dequantize(w: Nf4Parts<Self>) -> FloatTensor<Self> {
        // A constant: a leaf that requires no gradient.
        <Self as AutodiffBackend>::from_inner(B::nf4_dequantize(w.into_inner()))
    }

    fn nf4_matmul(x: FloatTensor<Self>, w: Nf4Parts<Self>) -> FloatTensor<Self> {
        let w = w.into_inner();
        let (x, node) = x.into_parts();
        // Compute-bound: under gradient checkpointing the output is kept, never recomputed.
        match Nf4MatmulBackward
            .prepare::<C>([node])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let out = B::nf4_matmul(x, w.clone());
                prep.finish(w, out)
            }
            OpsKind::UnTracked(prep) => prep.finish(B::nf4_matmul(x, w)),
        }
    }
}
