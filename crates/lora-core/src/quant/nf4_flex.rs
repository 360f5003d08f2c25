//! NF4 on the CPU (burn's flex backend): dequantizing, and the product with a few rows of
//! activations, read straight from the packed bytes, multi-threaded over the weight's rows.
//!
//! The generic path of [`crate::quant::nf4_op`] is written with backend primitive ops so that
//! every backend shares it, but on the CPU that is about ten passes over the weight (unpack the
//! words with shifts and a concatenation, a table `select`, a broadcast multiply, a slice), each
//! on one thread, and then a full f32 copy of `W` for the matrix product. Decoding a token is a
//! matrix–vector product per layer, so that copy is most of the work: on SmolLM2 an NF4 base
//! decoded 26× slower than the f32 base (README, "Benchmark").
//!
//! Here, on flex only (the generic path stays the reference every other backend runs, and the
//! fallback here for any layout this file does not handle):
//! - [`dequantize`] writes each block's `NF4[code] · absmax[block]` once, in parallel over blocks,
//!   with the same f32 operations as the generic path (bit-identical results);
//! - [`fused_matmul`], for at most [`FUSED_MAX_ROWS`] rows of `x` (decoding; a prompt or a
//!   training batch has more and uses the dequantized `W` with burn's gemm), never writes `W`:
//!   every output unit's row of codes is read once and multiplied into the rows of `x` as it is
//!   decoded, one block at a time (QLoRA's "dequantize, then multiply" fused as llama.cpp's CPU
//!   `ggml_vec_dot_*` kernels fuse it for their block formats).
//!
//! Bytes follow bitsandbytes: element `2k` in the high nibble of byte `k`, four bytes to a
//! little-endian 32-bit word (see [`crate::quant::nf4_weight`]).
//!
//! Source: QLoRA (arXiv:2305.14314) §3, eq. 5–6; bitsandbytes `functional.py`
//! `dequantize_4bit`; llama.cpp `ggml-cpu/quants.c` (the fused dot-product idea, not its code).

use burn::backend::flex::FlexTensor;
use burn::tensor::{DType, TensorData};
use rayon::prelude::*;

use crate::quant::nf4::NESTED_BLOCK_SIZE;
use crate::quant::nf4_op::{Nf4Parts, Nf4Scales};

/// The most rows of `x` that [`fused_matmul`] takes: one token per sequence while decoding a
/// small batch. Above it a dequantized `W` and burn's vectorised gemm are faster, since the
/// fused loop does one scalar multiply-add per weight and row.
pub const FUSED_MAX_ROWS: usize = 8;

/// Output units handed to one rayon task (a few thousand weights each at SmolLM2's widths).
const ROWS_PER_TASK: usize = 16;

/// Blocks handed to one rayon task at least when dequantizing (64 blocks of 64: 4,096 weights).
const BLOCKS_PER_TASK: usize = 64;

type Flex = burn::backend::Flex;

/// An NF4 weight's parts as host slices: the packed bytes, the per-block `absmax` (already
/// dequantized when double quantization is on) and the `[256, 2]` byte table.
struct HostNf4<'a> {
    bytes: &'a [u8],
    absmax: Vec<f32>,
    pairs: &'a [f32],
    d_out: usize,
    d_in: usize,
    block: usize,
}

/// The packed words as bytes in element order, if the host is little-endian (the words were
/// packed little-endian) and the tensor is a contiguous `i32` buffer.
fn packed_bytes(words: &FlexTensor) -> Option<&[u8]> {
    if cfg!(target_endian = "big") {
        return None;
    }
    words.as_slice::<i32>().map(bytemuck::cast_slice)
}

/// The per-block `absmax`, `[blocks]`: the stored values, or `dynamic[q] · absmax₂ + offset`
/// with double quantization (QLoRA eq. 6) — the generic path's operations, in its order.
fn host_absmax(scales: &Nf4Scales<Flex>, blocks: usize) -> Option<Vec<f32>> {
    match scales {
        Nf4Scales::F32 { absmax } => Some(absmax.as_slice::<f32>()?.get(..blocks)?.to_vec()),
        Nf4Scales::Double {
            codes,
            absmax2,
            dynamic,
            offset,
        } => {
            let codes = packed_bytes(codes)?.get(..blocks)?;
            let absmax2 = absmax2.as_slice::<f32>()?;
            let dynamic = dynamic.as_slice::<f32>()?;
            if dynamic.len() != 256 || absmax2.len() < blocks.div_ceil(NESTED_BLOCK_SIZE) {
                return None;
            }
            Some(
                codes
                    .iter()
                    .enumerate()
                    .map(|(b, &q)| dynamic[q as usize] * absmax2[b / NESTED_BLOCK_SIZE] + *offset)
                    .collect(),
            )
        }
    }
}

impl<'a> HostNf4<'a> {
    /// Host views of `w`, or `None` when a part is not a contiguous f32/i32 buffer of the
    /// expected size (the caller then takes the generic path).
    fn new(w: &'a Nf4Parts<Flex>) -> Option<Self> {
        let len = w.d_out.checked_mul(w.d_in)?;
        let blocks = len.div_ceil(w.block_size);
        let bytes = packed_bytes(&w.packed)?.get(..len.div_ceil(2))?;
        let pairs = w.pairs.as_slice::<f32>()?;
        if pairs.len() != 512 || w.block_size == 0 {
            return None;
        }
        Some(Self {
            bytes,
            absmax: host_absmax(&w.scales, blocks)?,
            pairs,
            d_out: w.d_out,
            d_in: w.d_in,
            block: w.block_size,
        })
    }

    /// Element `f` of the row-major `[d_out, d_in]` weight.
    #[inline]
    fn value(&self, f: usize) -> f32 {
        self.pairs[2 * self.bytes[f / 2] as usize + f % 2] * self.absmax[f / self.block]
    }
}

/// `W` in burn layout, `[d_in, d_out]` (a transposed view of the row-major `[d_out, d_in]`
/// values), or `None` to take the generic path. Bit-identical to it.
pub(crate) fn dequantize(w: &Nf4Parts<Flex>) -> Option<FlexTensor> {
    let host = HostNf4::new(w)?;
    let mut out = vec![0f32; host.d_out * host.d_in];
    out.par_chunks_mut(host.block)
        .with_min_len(BLOCKS_PER_TASK)
        .enumerate()
        .for_each(|(b, chunk)| {
            let start = b * host.block;
            if start.is_multiple_of(2) && chunk.len().is_multiple_of(2) {
                // The block starts on a byte: one table pair and one multiply per byte, with no
                // division or bounds check per element (the loop `value` runs for other blocks).
                let scale = host.absmax[b];
                let bytes = &host.bytes[start / 2..(start + chunk.len()) / 2];
                for (out, &byte) in chunk.chunks_exact_mut(2).zip(bytes) {
                    let i = 2 * byte as usize;
                    let pair = &host.pairs[i..i + 2];
                    out[0] = pair[0] * scale;
                    out[1] = pair[1] * scale;
                }
            } else {
                for (j, v) in chunk.iter_mut().enumerate() {
                    *v = host.value(start + j);
                }
            }
        });
    let t = FlexTensor::from_data(TensorData::new(out, [host.d_out, host.d_in]));
    Some(t.transpose(0, 1))
}

/// `x · W` for `x` of at most [`FUSED_MAX_ROWS`] rows, `[N, d_in]` → `[N, d_out]`, computed from
/// the packed codes without writing `W`; `None` to take the dequantize-then-gemm path (more
/// rows, another dtype, or an odd `d_in` or block size, where rows would start mid-byte).
pub(crate) fn fused_matmul(x: &FlexTensor, w: &Nf4Parts<Flex>) -> Option<FlexTensor> {
    let dims = x.layout().shape().clone();
    let &[n, d_in] = dims.as_slice() else {
        return None;
    };
    if n == 0 || n > FUSED_MAX_ROWS || d_in != w.d_in || x.dtype() != DType::F32 {
        return None;
    }
    if !w.d_in.is_multiple_of(2) || !w.block_size.is_multiple_of(2) {
        return None;
    }
    let x = x.to_contiguous();
    let x = x.as_slice::<f32>()?;
    let host = HostNf4::new(w)?;
    // Output units × rows, filled in parallel over units, then transposed to [N, d_out].
    let mut yt = vec![0f32; host.d_out * n];
    yt.par_chunks_mut(n * ROWS_PER_TASK)
        .enumerate()
        .for_each(|(task, chunk)| {
            for (k, y) in chunk.chunks_mut(n).enumerate() {
                row_dot(&host, task * ROWS_PER_TASK + k, x, y);
            }
        });
    let mut y = vec![0f32; n * host.d_out];
    for (o, row) in yt.chunks(n).enumerate() {
        for (r, &v) in row.iter().enumerate() {
            y[r * host.d_out + o] = v;
        }
    }
    Some(FlexTensor::from_data(TensorData::new(y, [n, host.d_out])))
}

/// `y[r] = Σ_i x[r, i] · W[o, i]` for output unit `o`: per block, the codes' values are summed
/// against `x` and the block's `absmax` is applied once to that sum.
fn row_dot(w: &HostNf4, o: usize, x: &[f32], y: &mut [f32]) {
    let (d_in, n) = (w.d_in, y.len());
    let start = o * d_in;
    let end = start + d_in;
    let mut f = start;
    while f < end {
        let b = f / w.block;
        let seg_end = ((b + 1) * w.block).min(end);
        let codes = &w.bytes[f / 2..seg_end / 2];
        let i0 = f - start;
        for (r, out) in y.iter_mut().enumerate().take(n) {
            let xs = &x[r * d_in + i0..r * d_in + i0 + 2 * codes.len()];
            // Two accumulators (even and odd elements) keep the adds independent.
            let (mut even, mut odd) = (0f32, 0f32);
            for (&byte, pair) in codes.iter().zip(xs.chunks_exact(2)) {
                let p = 2 * byte as usize;
                even += pair[0] * w.pairs[p];
                odd += pair[1] * w.pairs[p + 1];
            }
            *out += (even + odd) * w.absmax[b];
        }
        f = seg_end;
    }
}
