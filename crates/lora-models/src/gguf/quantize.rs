//! Encoding `f32` values into GGML tensor types: the inverse of [`dequantize`](super::dequantize).
//!
//! Each quantizer follows llama.cpp's reference ("`_ref`") kernel in `ggml/src/ggml-quants.c`
//! operation for operation, in `f32`, so the blocks are bit-identical to what llama.cpp and the
//! `gguf` Python package (`gguf/quants.py`, which mirrors the same kernels in numpy) write:
//!
//! | type | kernel | block |
//! |---|---|---|
//! | F32 | little-endian bytes | 1 value |
//! | F16 | IEEE half, round to nearest even | 1 value |
//! | BF16 | `ggml_compute_fp32_to_bf16`: round to nearest even, NaN kept quiet | 1 value |
//! | Q8_0 | `quantize_row_q8_0_ref`: d = absmax/127, q = round(x/d) | 32 → 34 bytes |
//! | Q4_0 | `quantize_row_q4_0_ref`: d = max/−8 (max = the value of largest magnitude), q = min(15, ⌊x/d + 8.5⌋) | 32 → 18 bytes |
//! | Q5_0 | `quantize_row_q5_0_ref`: d = max/−16, q = min(31, ⌊x/d + 16.5⌋), fifth bits in `qh` | 32 → 22 bytes |
//! | Q4_K, Q6_K | in [`quantize_k`](super::quantize_k) | 256 → 144 / 210 bytes |
//!
//! Blocks never span rows as long as the row length (`ne[0]`) is a multiple of the block size,
//! which [`GgufWriter`](super::GgufWriter) checks; a tensor is then one flat run of blocks.

use half::f16;

use super::GgmlType;
use super::quantize_k::{half_bytes, q4_k, q6_k};

/// Whether [`quantize`] can encode `dtype`: F32, F16, BF16, Q8_0, Q4_0, Q5_0, Q4_K, Q6_K.
pub fn can_quantize(dtype: GgmlType) -> bool {
    use GgmlType::*;
    matches!(dtype, F32 | F16 | BF16 | Q8_0 | Q4_0 | Q5_0 | Q4_K | Q6_K)
}

/// `values` encoded as `dtype`, `values.len() / block_size · type_size` bytes.
///
/// Returns `None` if `dtype` cannot be encoded (see [`can_quantize`]) or `values.len()` is not a
/// whole number of blocks. Values should be finite (the writer checks): a NaN or infinity in a
/// block gives that block a meaningless scale, as in llama.cpp.
pub fn quantize(dtype: GgmlType, values: &[f32]) -> Option<Vec<u8>> {
    if !can_quantize(dtype) || !values.len().is_multiple_of(dtype.block_size()) {
        return None;
    }
    let n_bytes = (values.len() / dtype.block_size()).checked_mul(dtype.type_size())?;
    let mut out = Vec::with_capacity(n_bytes);
    match dtype {
        GgmlType::F32 => values
            .iter()
            .for_each(|v| out.extend_from_slice(&v.to_le_bytes())),
        GgmlType::F16 => values
            .iter()
            .for_each(|v| out.extend_from_slice(&f16::from_f32(*v).to_le_bytes())),
        GgmlType::BF16 => values
            .iter()
            .for_each(|v| out.extend_from_slice(&f32_to_bf16(*v).to_le_bytes())),
        GgmlType::Q8_0 => blocks::<32, 34>(values, &mut out, q8_0),
        GgmlType::Q4_0 => blocks::<32, 18>(values, &mut out, q4_0),
        GgmlType::Q5_0 => blocks::<32, 22>(values, &mut out, q5_0),
        GgmlType::Q4_K => blocks::<256, 144>(values, &mut out, q4_k),
        GgmlType::Q6_K => blocks::<256, 210>(values, &mut out, q6_k),
        _ => return None,
    }
    Some(out)
}

/// Runs `kernel` on each whole block of `N` values, appending its `B` bytes.
fn blocks<const N: usize, const B: usize>(
    values: &[f32],
    out: &mut Vec<u8>,
    kernel: fn(&[f32; N]) -> [u8; B],
) {
    for block in values.as_chunks::<N>().0 {
        out.extend_from_slice(&kernel(block));
    }
}

/// `ggml_compute_fp32_to_bf16` (ggml-impl.h), as gguf-py's `BF16.quantize_blocks`: round to
/// nearest even on the upper 16 bits; a NaN stays a (quiet) NaN instead of rounding to infinity.
pub(super) fn f32_to_bf16(v: f32) -> u16 {
    let bits = v.to_bits();
    if bits & 0x7fff_ffff > 0x7f80_0000 {
        return ((bits >> 16) | 64) as u16;
    }
    ((u64::from(bits) + 0x7fff + u64::from((bits >> 16) & 1)) >> 16) as u16
}

/// The value of largest magnitude in `x`, the first one on ties, as the `_ref` kernels find it
/// (`if (amax < fabsf(v)) { amax = fabsf(v); max = v; }`); 0 for an all-zero block.
fn signed_absmax(x: &[f32]) -> f32 {
    let (mut amax, mut max) = (0.0f32, 0.0f32);
    for &v in x {
        if amax < v.abs() {
            amax = v.abs();
            max = v;
        }
    }
    max
}

/// `1/d`, or 0 when `d` is 0 (an all-zero block stores d = 0 and codes for 0).
fn inverse(d: f32) -> f32 {
    if d != 0.0 { 1.0 / d } else { 0.0 }
}

/// `block_q8_0 { half d; i8 qs[32]; }` from `quantize_row_q8_0_ref`: `roundf` rounds half away
/// from zero, as Rust's `f32::round` does.
fn q8_0(x: &[f32; 32]) -> [u8; 34] {
    let amax = x.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    let d = amax / 127.0;
    let id = inverse(d);
    let mut b = [0u8; 34];
    b[..2].copy_from_slice(&half_bytes(d));
    for (q, v) in b[2..].iter_mut().zip(x) {
        *q = ((v * id).round() as i8) as u8;
    }
    b
}

/// `block_q4_0 { half d; u8 qs[16]; }` from `quantize_row_q4_0_ref`: element j in the low nibble
/// of `qs[j]`, element j+16 in its high nibble; the C cast `(int8_t)(x + 8.5f)` truncates.
fn q4_0(x: &[f32; 32]) -> [u8; 18] {
    let d = signed_absmax(x) / -8.0;
    let id = inverse(d);
    let code = |v: f32| ((v * id + 8.5) as i8).min(15) as u8;
    let mut b = [0u8; 18];
    b[..2].copy_from_slice(&half_bytes(d));
    for j in 0..16 {
        b[2 + j] = code(x[j]) | (code(x[j + 16]) << 4);
    }
    b
}

/// `block_q5_0 { half d; u32 qh; u8 qs[16]; }` from `quantize_row_q5_0_ref`: the low four bits
/// as in Q4_0, bit 4 of element j in bit j of `qh`.
fn q5_0(x: &[f32; 32]) -> [u8; 22] {
    let d = signed_absmax(x) / -16.0;
    let id = inverse(d);
    let code = |v: f32| ((v * id + 16.5) as i8).min(31) as u8;
    let mut b = [0u8; 22];
    b[..2].copy_from_slice(&half_bytes(d));
    let mut qh = 0u32;
    for j in 0..16 {
        let (lo, hi) = (code(x[j]), code(x[j + 16]));
        b[6 + j] = (lo & 0x0F) | ((hi & 0x0F) << 4);
        qh |= u32::from(lo >> 4) << j;
        qh |= u32::from(hi >> 4) << (j + 16);
    }
    b[2..6].copy_from_slice(&qh.to_le_bytes());
    b
}
