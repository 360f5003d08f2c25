//! Host kernels for [`super::attention_op`] on burn's flex backend: attention in blocks of
//! query rows, each block multiplied only against the keys some row in it may see.
//!
//! Under a causal mask, the rows of a block of 64 queries see at most the keys up to the
//! block's last position, so the `Q·Kᵀ`, `P·V` products and their backward ones skip the
//! masked upper triangle — about half of attention's multiply-adds at training lengths — and the
//! softmax runs over the visible part only. The products are the `gemm` crate's kernels (what
//! burn-flex's matmul calls), single-threaded, with the (batch, key/value head, row block)
//! items spread over rayon's threads: burn-flex's batched matmul split its cores inside each
//! small product of these shapes and reached about half of PyTorch's rate on them (README,
//! "where the time goes").
//!
//! A row whose keys are all masked gets probabilities 0 and output 0 (the composed reference
//! gives `0/0 = NaN`; the model never builds such a row). The backward pass reads each row's
//! visible keys off its probabilities: an entry with `p = 0` adds nothing to any gradient
//! (`∂V = Pᵀ·∂O`, `∂S = P ⊙ (…)`), so skipping it is exact.
//!
//! Each function returns `None` for anything it does not take (a dtype other than f32, other
//! ranks, shapes that disagree); the caller then runs the reference body.

use burn::backend::flex::FlexTensor;
use burn::tensor::{BoolStore, DType, TensorData};
use rayon::prelude::*;

use super::vmath::{exp, simd, sum};

/// Query rows per block: one block's scores (64 × S) stay in L2 for S up to a few thousand.
const BLOCK_ROWS: usize = 64;

/// A contiguous f32 tensor of rank 4, with its shape.
fn f32_4d(t: &FlexTensor) -> Option<(FlexTensor, [usize; 4])> {
    if t.dtype() != DType::F32 {
        return None;
    }
    let &[a, b, c, d] = t.layout().shape().as_slice() else {
        return None;
    };
    Some((t.to_contiguous(), [a, b, c, d]))
}

/// A read-only matrix view of `data`: element `(i, j)` at `i·rs + j·cs`.
#[derive(Clone, Copy)]
struct View<'a> {
    data: &'a [f32],
    rows: usize,
    cols: usize,
    rs: usize,
    cs: usize,
}

impl<'a> View<'a> {
    /// Row-major `rows × cols` at `offset` with row stride `rs`.
    fn rows(data: &'a [f32], offset: usize, rows: usize, cols: usize, rs: usize) -> Self {
        View {
            data: &data[offset..],
            rows,
            cols,
            rs,
            cs: 1,
        }
    }

    /// The transpose: the same elements, rows and columns swapped.
    fn t(self) -> Self {
        View {
            rows: self.cols,
            cols: self.rows,
            rs: self.cs,
            cs: self.rs,
            ..self
        }
    }

    /// Whether every element lies inside `data`.
    fn in_bounds(&self) -> bool {
        self.rows == 0
            || self.cols == 0
            || (self.rows - 1) * self.rs + (self.cols - 1) * self.cs < self.data.len()
    }
}

/// `dst = lhs · rhs` (or `dst += lhs · rhs` with `accumulate`), `dst` row-major with row
/// stride `dst_rs`, on this thread.
fn gemm(dst: &mut [f32], dst_rs: usize, lhs: View<'_>, rhs: View<'_>, accumulate: bool) {
    let (m, k, n) = (lhs.rows, lhs.cols, rhs.cols);
    if m == 0 || n == 0 {
        return;
    }
    // Every pointer the kernel reads or writes must lie in its slice: checked, not assumed.
    assert!(
        rhs.rows == k && lhs.in_bounds() && rhs.in_bounds() && (m - 1) * dst_rs + n <= dst.len(),
        "attention gemm: views out of bounds"
    );
    if k == 0 {
        if !accumulate {
            dst.chunks_mut(dst_rs)
                .take(m)
                .for_each(|r| r[..n].fill(0.0));
        }
        return;
    }
    // SAFETY: the assert above keeps every strided access of the three matrices inside the
    // slices; `dst` is borrowed mutably and cannot alias `lhs` or `rhs`.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            dst_rs as isize,
            accumulate,
            lhs.data.as_ptr(),
            lhs.cs as isize,
            lhs.rs as isize,
            rhs.data.as_ptr(),
            rhs.cs as isize,
            rhs.rs as isize,
            1.0f32,
            1.0f32,
            false,
            false,
            false,
            gemm::Parallelism::None,
        );
    }
}

/// The columns `lo..hi` spanning every entry of `rows` (each `s` long) that `on` holds for —
/// the keys a block of query rows may see (mask entry 0) or has a nonzero probability for —
/// or `(0, 0)` if there is none.
fn extent<T: Copy>(rows: &[T], s: usize, on: impl Fn(T) -> bool) -> (usize, usize) {
    let (mut lo, mut hi) = (s, 0);
    for row in rows.chunks(s) {
        if let Some(first) = row.iter().position(|&x| on(x)) {
            lo = lo.min(first);
            let last = row.iter().rposition(|&x| on(x)).unwrap_or(first);
            hi = hi.max(last + 1);
        }
    }
    if hi > lo { (lo, hi) } else { (0, 0) }
}

/// `(softmax(q·kᵀ + mask)·v, probabilities)`, see the module documentation.
pub(super) fn attention(
    q: &FlexTensor,
    k: &FlexTensor,
    v: &FlexTensor,
    mask: &FlexTensor,
) -> Option<(FlexTensor, FlexTensor)> {
    let (q, [b, kh, r, e]) = f32_4d(q)?;
    let (k, [kb, kk, s, ke]) = f32_4d(k)?;
    let (v, v_dims) = f32_4d(v)?;
    let bool_bytes = matches!(mask.dtype(), DType::Bool(BoolStore::Native | BoolStore::U8));
    if (kb, kk, ke) != (b, kh, e) || v_dims != [b, kh, s, e] || !bool_bytes {
        return None;
    }
    let &[mb, mr, ms] = mask.layout().shape().as_slice() else {
        return None;
    };
    if !(mb == 1 || mb == b) || (mr, ms) != (r, s) || r == 0 || s == 0 || e == 0 {
        return None;
    }
    let mask = mask.to_contiguous();
    let (q, k, v) = (
        q.as_slice::<f32>()?,
        k.as_slice::<f32>()?,
        v.as_slice::<f32>()?,
    );
    let (start, end) = mask.layout().contiguous_offsets()?;
    let m = &mask.storage::<u8>()[start..end]; // one byte per entry, nonzero = masked
    let (bk, br) = (b.checked_mul(kh)?, BLOCK_ROWS);
    let mut out = vec![0f32; bk.checked_mul(r)?.checked_mul(e)?];
    let mut probs = vec![0f32; bk.checked_mul(r)?.checked_mul(s)?];
    out.par_chunks_mut(r * e)
        .zip(probs.par_chunks_mut(r * s))
        .enumerate()
        .for_each(|(head, (out, probs))| {
            let (qh, kv) = (head * r * e, head * s * e);
            let mask = &m[(head / kh % mb) * r * s..][..r * s];
            out.par_chunks_mut(br * e)
                .zip(probs.par_chunks_mut(br * s))
                .enumerate()
                .for_each(|(blk, (out, probs))| {
                    let (r0, nr) = (blk * br, out.len() / e);
                    let rows = &mask[r0 * s..(r0 + nr) * s];
                    let (lo, hi) = extent(rows, s, |m: u8| m == 0);
                    let w = hi - lo;
                    if w == 0 {
                        return; // every key masked: probabilities and output stay 0
                    }
                    let mut p = vec![0f32; nr * w];
                    let q_blk = View::rows(q, qh + r0 * e, nr, e, e);
                    let k_vis = View::rows(k, kv + lo * e, w, e, e);
                    gemm(&mut p, w, q_blk, k_vis.t(), false);
                    for (i, row) in p.chunks_mut(w).enumerate() {
                        let mrow = &rows[i * s + lo..i * s + hi];
                        let mut max = f32::NEG_INFINITY;
                        for (x, &mk) in row.iter_mut().zip(mrow) {
                            if mk != 0 {
                                *x = f32::NEG_INFINITY;
                            }
                            max = max.max(*x);
                        }
                        if max == f32::NEG_INFINITY {
                            row.fill(0.0);
                            continue;
                        }
                        simd(|| {
                            for x in row.iter_mut() {
                                *x = exp(*x - max);
                            }
                        });
                        let inv = 1.0 / sum(row);
                        for x in row.iter_mut() {
                            *x *= inv;
                        }
                        probs[i * s + lo..i * s + hi].copy_from_slice(row);
                    }
                    let v_vis = View::rows(v, kv + lo * e, w, e, e);
                    gemm(out, e, View::rows(&p, 0, nr, w, w), v_vis, false);
                });
        });
    Some((
        FlexTensor::from_data(TensorData::new(out, [b, kh, r, e])),
        FlexTensor::from_data(TensorData::new(probs, [b, kh, r, s])),
    ))
}

/// `(∂q, ∂k, ∂v)` of [`attention`] from the probabilities `p` and the output gradient `g`.
pub(super) fn attention_backward(
    q: &FlexTensor,
    k: &FlexTensor,
    v: &FlexTensor,
    p: &FlexTensor,
    g: &FlexTensor,
) -> Option<(FlexTensor, FlexTensor, FlexTensor)> {
    let (q, [b, kh, r, e]) = f32_4d(q)?;
    let (k, k_dims) = f32_4d(k)?;
    let s = k_dims[2];
    let (v, v_dims) = f32_4d(v)?;
    let (p, p_dims) = f32_4d(p)?;
    let (g, g_dims) = f32_4d(g)?;
    if k_dims != [b, kh, s, e]
        || v_dims != k_dims
        || p_dims != [b, kh, r, s]
        || g_dims != [b, kh, r, e]
    {
        return None;
    }
    if r == 0 || s == 0 || e == 0 {
        return None;
    }
    let (q, k, v) = (
        q.as_slice::<f32>()?,
        k.as_slice::<f32>()?,
        v.as_slice::<f32>()?,
    );
    let (p, g) = (p.as_slice::<f32>()?, g.as_slice::<f32>()?);
    let bk = b.checked_mul(kh)?;
    let mut d_q = vec![0f32; bk.checked_mul(r)?.checked_mul(e)?];
    let mut d_k = vec![0f32; bk.checked_mul(s)?.checked_mul(e)?];
    let mut d_v = vec![0f32; d_k.len()];
    // ∂K and ∂V sum over every row block of a head: one head per task, its blocks in order.
    d_q.par_chunks_mut(r * e)
        .zip(d_k.par_chunks_mut(s * e))
        .zip(d_v.par_chunks_mut(s * e))
        .enumerate()
        .for_each(|(head, ((d_q, d_k), d_v))| {
            let (qh, kv, ph) = (head * r * e, head * s * e, head * r * s);
            let mut d_s = Vec::new();
            for r0 in (0..r).step_by(BLOCK_ROWS) {
                let nr = BLOCK_ROWS.min(r - r0);
                let p_rows = &p[ph + r0 * s..ph + (r0 + nr) * s];
                let (lo, hi) = extent(p_rows, s, |p: f32| p != 0.0);
                let w = hi - lo;
                if w == 0 {
                    continue; // no visible key: every gradient of these rows is 0
                }
                let p_blk = View::rows(p_rows, lo, nr, w, s);
                let g_blk = View::rows(g, qh + r0 * e, nr, e, e);
                let q_blk = View::rows(q, qh + r0 * e, nr, e, e);
                // ∂V[lo..hi] += Pᵀ·∂O
                gemm(&mut d_v[lo * e..hi * e], e, p_blk.t(), g_blk, true);
                // ∂P = ∂O·Vᵀ, then ∂S = P ⊙ (∂P − rowsum(∂P ⊙ P)) in place
                d_s.clear();
                d_s.resize(nr * w, 0.0);
                gemm(
                    &mut d_s,
                    w,
                    g_blk,
                    View::rows(v, kv + lo * e, w, e, e).t(),
                    false,
                );
                for (i, row) in d_s.chunks_mut(w).enumerate() {
                    let p_row = &p_rows[i * s + lo..i * s + hi];
                    let dot: f32 = row.iter().zip(p_row).map(|(d, p)| d * p).sum();
                    for (d, &p) in row.iter_mut().zip(p_row) {
                        *d = p * (*d - dot);
                    }
                }
                let ds_blk = View::rows(&d_s, 0, nr, w, w);
                // ∂Q = ∂S·K, ∂K[lo..hi] += ∂Sᵀ·Q
                let k_vis = View::rows(k, kv + lo * e, w, e, e);
                gemm(&mut d_q[r0 * e..(r0 + nr) * e], e, ds_blk, k_vis, false);
                gemm(&mut d_k[lo * e..hi * e], e, ds_blk.t(), q_blk, true);
            }
        });
    let t = |x: Vec<f32>, n: usize| FlexTensor::from_data(TensorData::new(x, [b, kh, n, e]));
    Some((t(d_q, r), t(d_k, s), t(d_v, s)))
}
