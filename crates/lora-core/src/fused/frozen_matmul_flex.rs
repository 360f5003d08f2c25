//! flex's kernel for the frozen base product ([`super::frozen_matmul_op`]): `x · W` with the rows
//! of `x` split into one block per rayon thread, each block one single-threaded `gemm` call
//! (the crate burn-flex's own matmul calls), written straight into an output nothing filled first.
//!
//! Why not burn-flex's matmul: a linear layer's `[B, T, d_in] · [d_in, d_out]` reaches it as a
//! batched product (burn's `linear` keeps the batch when `T` is a multiple of its row tile), so
//! flex runs `B` separate products of `T` rows — each packing all of `W` again — and zero-fills
//! the output before `gemm` overwrites it (3.7 % of a SmolLM2 step's CPU time, README). Measured
//! on SmolLM2's shapes (`x` `[4, 256, 576]`, `W` up to `576 × 1536`, interleaved repetitions,
//! median): one block per thread ran 10–25 % faster than four 256-row products on one thread and
//! 3–15 % faster on two, most on the backward's transposed `W`.
//!
//! Returns `None` for what it does not take — a dtype other than f32, ranks other than 2, a
//! negative stride, a view that reaches outside its storage — and the caller then runs the
//! reference body.

use burn::backend::flex::FlexTensor;
use burn::tensor::DType;
use rayon::prelude::*;

use super::flex::tensor;

/// Fewer rows per thread than this and the rows are not split: each block repacks `W`, which
/// would cost more than the second core saves (a decode step's single row, LoRA-sized inputs).
const MIN_ROWS_PER_BLOCK: usize = 64;

/// Row blocks are multiples of this: gemm's f32 micro-tiles are 16 rows tall (AVX-512) or 8
/// (AVX2), so only the last block has a partial tile.
const ROW_ALIGN: usize = 16;

/// Below this many multiply-adds an unsplit product runs on one thread: burn-flex's own
/// threshold (`ops/matmul.rs`, `PARALLEL_THRESHOLD`).
const PARALLEL_MACS: usize = 192 * 192 * 192;

/// `x · w`: `x` `[m, k]` (any layout; copied once if not contiguous), `w` `[k, n]` read through
/// its strides (a transposed view costs no copy) → `[m, n]` row-major.
pub(super) fn matmul(x: &FlexTensor, w: &FlexTensor) -> Option<FlexTensor> {
    if x.dtype() != DType::F32 || w.dtype() != DType::F32 {
        return None;
    }
    let &[m, k] = x.layout().shape().as_slice() else {
        return None;
    };
    let &[k_w, n] = w.layout().shape().as_slice() else {
        return None;
    };
    let &[w_rs, w_cs] = w.layout().strides() else {
        return None;
    };
    if k_w != k || w_rs < 0 || w_cs < 0 {
        return None;
    }
    let len = m.checked_mul(n)?;
    if m == 0 || n == 0 || k == 0 {
        // An empty sum is zero; gemm is not asked to write what it would not read.
        return Some(tensor(vec![0f32; len], m, n));
    }
    let (w_rs, w_cs) = (w_rs as usize, w_cs as usize);
    let w_start = w.layout().start_offset();
    let w_data: &[f32] = w.storage();
    // The last element `W[k-1, n-1]` must lie inside the storage: checked, not assumed.
    let w_last = (k - 1)
        .checked_mul(w_rs)?
        .checked_add((n - 1).checked_mul(w_cs)?)?
        .checked_add(w_start)?;
    if w_last >= w_data.len() {
        return None;
    }
    let w_data = &w_data[w_start..];
    let x = x.to_contiguous();
    let x_data = x.as_slice::<f32>()?;
    if x_data.len() != m.checked_mul(k)? {
        return None;
    }

    let threads = rayon::current_num_threads();
    let per_block = m.div_ceil(threads).next_multiple_of(ROW_ALIGN);
    let mut out: Vec<f32> = Vec::with_capacity(len);
    let out_addr = out.as_mut_ptr() as usize;
    // Rows `r0..r0 + rows` of the product, with `parallelism` inside gemm.
    let block = |r0: usize, rows: usize, parallelism: gemm::Parallelism| {
        // SAFETY: `x_data` holds `m·k` values and `r0 + rows ≤ m`; every element of `W` the
        // strides reach lies inside `w_data` (checked above); the output rows `r0..r0 + rows`
        // lie inside `out`'s capacity of `m·n` and no two blocks share a row. `read_dst` is
        // false, so gemm writes every output element and reads none.
        unsafe {
            gemm::gemm(
                rows,
                n,
                k,
                (out_addr as *mut f32).add(r0 * n),
                1,
                n as isize,
                false,
                x_data.as_ptr().add(r0 * k),
                1,
                k as isize,
                w_data.as_ptr(),
                w_cs as isize,
                w_rs as isize,
                0.0f32,
                1.0f32,
                false,
                false,
                false,
                parallelism,
            );
        }
    };
    if threads > 1 && per_block >= MIN_ROWS_PER_BLOCK && m > per_block {
        (0..m.div_ceil(per_block)).into_par_iter().for_each(|b| {
            block(
                b * per_block,
                per_block.min(m - b * per_block),
                gemm::Parallelism::None,
            )
        });
    } else {
        let macs = len.saturating_mul(k);
        let parallelism = if threads > 1 && macs >= PARALLEL_MACS {
            gemm::Parallelism::Rayon(threads)
        } else {
            gemm::Parallelism::None
        };
        block(0, m, parallelism);
    }
    // SAFETY: the blocks above wrote all `m·n` elements (they cover rows `0..m`).
    unsafe { out.set_len(len) };
    Some(tensor(out, m, n))
}
