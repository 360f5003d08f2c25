//! Host kernels for the fused ops on burn's flex backend: one pass over each tensor, rows split
//! across rayon's threads (burn-flex runs its own elementwise ops on one thread; see
//! `../shared/BURN.md`), f32 only.
//!
//! Each function returns `None` for anything it does not take — a dtype other than f32, a rank
//! other than 2, shapes that disagree — and the caller then runs the reference body. Sums over a
//! row use eight independent accumulators (a fixed order, so results are deterministic, and
//! the compiler can keep them in one vector register). Each task's loops run inside
//! [`simd`], compiled for the CPU's widest vector instructions, with [`sigmoid`]'s `exp` a
//! polynomial the compiler vectorises ([`super::vmath`]).
//!
//! The derivatives are on [`super::ops::FusedBackend`]'s methods.

use burn::backend::flex::FlexTensor;
use burn::tensor::{DType, TensorData};
use rayon::prelude::*;

use super::vmath::{dot, sigmoid, simd};

/// Elements handed to one rayon task: large enough that scheduling costs nothing measurable,
/// small enough that two cores share a SmolLM2-sized tensor evenly.
const ELEMS_PER_TASK: usize = 1 << 14;

/// A contiguous f32 `[rows, cols]` tensor's values and shape, or `None`.
pub(super) fn host(t: &FlexTensor) -> Option<(FlexTensor, usize, usize)> {
    if t.dtype() != DType::F32 {
        return None;
    }
    let &[rows, cols] = t.layout().shape().as_slice() else {
        return None;
    };
    Some((t.to_contiguous(), rows, cols))
}

/// Rows per rayon task for rows of `cols` elements (at least one).
fn rows_per_task(cols: usize) -> usize {
    (ELEMS_PER_TASK / cols.max(1)).max(1)
}

/// A `[rows, cols]` f32 tensor from its values.
pub(super) fn tensor(values: Vec<f32>, rows: usize, cols: usize) -> FlexTensor {
    FlexTensor::from_data(TensorData::new(values, [rows, cols]))
}

/// `p ⊙ (g − Σ_c g ⊙ p)` per row.
pub(super) fn softmax_backward(p: &FlexTensor, g: &FlexTensor) -> Option<FlexTensor> {
    let ((p, g), rows, cols) = pair(p, g)?;
    if cols == 0 {
        return None;
    }
    let (p, g) = (p.as_slice::<f32>()?, g.as_slice::<f32>()?);
    let mut out = vec![0f32; rows * cols];
    let chunk = rows_per_task(cols) * cols;
    out.par_chunks_mut(chunk)
        .zip(p.par_chunks(chunk).zip(g.par_chunks(chunk)))
        .for_each(|(o, (p, g))| {
            simd(|| {
                for ((o, p), g) in o.chunks_mut(cols).zip(p.chunks(cols)).zip(g.chunks(cols)) {
                    let d = dot(p, g);
                    for ((o, &p), &g) in o.iter_mut().zip(p).zip(g) {
                        *o = p * (g - d);
                    }
                }
            })
        });
    Some(tensor(out, rows, cols))
}

/// Two same-shaped contiguous f32 tensors' values, or `None`.
fn pair<'a>(
    a: &'a FlexTensor,
    b: &'a FlexTensor,
) -> Option<((FlexTensor, FlexTensor), usize, usize)> {
    let (a, rows, cols) = host(a)?;
    let (b, b_rows, b_cols) = host(b)?;
    ((b_rows, b_cols) == (rows, cols)).then_some(((a, b), rows, cols))
}

/// `gate · σ(gate) · up`, elementwise.
pub(super) fn swiglu(gate: &FlexTensor, up: &FlexTensor) -> Option<FlexTensor> {
    let ((gate, up), rows, cols) = pair(gate, up)?;
    let (gate, up) = (gate.as_slice::<f32>()?, up.as_slice::<f32>()?);
    let mut out = vec![0f32; rows * cols];
    out.par_chunks_mut(ELEMS_PER_TASK)
        .zip(
            gate.par_chunks(ELEMS_PER_TASK)
                .zip(up.par_chunks(ELEMS_PER_TASK)),
        )
        .for_each(|(o, (gate, up))| {
            simd(|| {
                for ((o, &z), &u) in o.iter_mut().zip(gate).zip(up) {
                    *o = z * sigmoid(z) * u;
                }
            })
        });
    Some(tensor(out, rows, cols))
}

/// `(∂gate, ∂up) = (g · up · σ · (1 + gate · (1 − σ)), g · gate · σ)` with `σ = σ(gate)`.
pub(super) fn swiglu_backward(
    gate: &FlexTensor,
    up: &FlexTensor,
    g: &FlexTensor,
) -> Option<(FlexTensor, FlexTensor)> {
    let ((gate, up), rows, cols) = pair(gate, up)?;
    let ((g, _), _, _) = pair(g, &up)?;
    let (gate, up, g) = (
        gate.as_slice::<f32>()?,
        up.as_slice::<f32>()?,
        g.as_slice::<f32>()?,
    );
    let mut d_gate = vec![0f32; rows * cols];
    let mut d_up = vec![0f32; rows * cols];
    let n = ELEMS_PER_TASK;
    d_gate
        .par_chunks_mut(n)
        .zip(d_up.par_chunks_mut(n))
        .zip(
            gate.par_chunks(n)
                .zip(up.par_chunks(n))
                .zip(g.par_chunks(n)),
        )
        .for_each(|((dg, du), ((gate, up), g))| {
            simd(|| {
                let n = dg
                    .len()
                    .min(du.len())
                    .min(gate.len())
                    .min(up.len())
                    .min(g.len());
                let (dg, du, gate, up, g) =
                    (&mut dg[..n], &mut du[..n], &gate[..n], &up[..n], &g[..n]);
                for i in 0..n {
                    let (z, s) = (gate[i], sigmoid(gate[i]));
                    du[i] = g[i] * z * s;
                    dg[i] = g[i] * up[i] * s * (1.0 + z * (1.0 - s));
                }
            })
        });
    Some((tensor(d_gate, rows, cols), tensor(d_up, rows, cols)))
}

/// `1/√(mean(x²) + ε)` of one row.
#[inline]
fn inv_rms(x: &[f32], eps: f64) -> f32 {
    let mean_sq = dot(x, x) / x.len() as f32;
    1.0 / (mean_sq + eps as f32).sqrt()
}

/// The gain as a host vector of `cols` values, or `None`.
fn gain_values(gain: &FlexTensor, cols: usize) -> Option<Vec<f32>> {
    if gain.dtype() != DType::F32 || gain.layout().shape().num_elements() != cols {
        return None;
    }
    Some(gain.to_contiguous().as_slice::<f32>()?.to_vec())
}

/// `x · r ⊙ gain` per row, `r = 1/√(mean(x²) + ε)`.
pub(super) fn rms_norm(x: &FlexTensor, gain: &FlexTensor, eps: f64) -> Option<FlexTensor> {
    let (x, rows, cols) = host(x)?;
    let gain = gain_values(gain, cols)?;
    if cols == 0 {
        return None;
    }
    let x = x.as_slice::<f32>()?;
    let mut out = vec![0f32; rows * cols];
    let chunk = rows_per_task(cols) * cols;
    out.par_chunks_mut(chunk)
        .zip(x.par_chunks(chunk))
        .for_each(|(o, x)| {
            simd(|| {
                for (o, x) in o.chunks_mut(cols).zip(x.chunks(cols)) {
                    let r = inv_rms(x, eps);
                    for ((o, &x), &w) in o.iter_mut().zip(x).zip(&gain) {
                        *o = x * r * w;
                    }
                }
            })
        });
    Some(tensor(out, rows, cols))
}

/// `(∂x, ∂gain)`: per row `r · (h − x̂ · mean(h ⊙ x̂))` with `x̂ = r·x`, `h = g ⊙ gain`; and
/// `Σ_rows g ⊙ x̂` (each task sums its rows, then the tasks' sums are added in order).
pub(super) fn rms_norm_backward(
    x: &FlexTensor,
    gain: &FlexTensor,
    g: &FlexTensor,
    eps: f64,
) -> Option<(FlexTensor, FlexTensor)> {
    let ((x, g), rows, cols) = pair(x, g)?;
    let gain = gain_values(gain, cols)?;
    if cols == 0 {
        return None;
    }
    let (x, g) = (x.as_slice::<f32>()?, g.as_slice::<f32>()?);
    let mut d_x = vec![0f32; rows * cols];
    let chunk = rows_per_task(cols) * cols;
    let partials: Vec<Vec<f32>> = d_x
        .par_chunks_mut(chunk)
        .zip(x.par_chunks(chunk).zip(g.par_chunks(chunk)))
        .map(|(dx, (x, g))| {
            simd(|| {
                let mut d_gain = vec![0f32; cols];
                let mut x_hat = vec![0f32; cols];
                let mut h = vec![0f32; cols];
                for ((dx, x), g) in dx.chunks_mut(cols).zip(x.chunks(cols)).zip(g.chunks(cols)) {
                    let r = inv_rms(x, eps);
                    for c in 0..cols {
                        x_hat[c] = x[c] * r;
                        h[c] = g[c] * gain[c];
                        d_gain[c] += g[c] * x_hat[c];
                    }
                    let mean_hx = dot(&h, &x_hat) / cols as f32;
                    for c in 0..cols {
                        dx[c] = (h[c] - x_hat[c] * mean_hx) * r;
                    }
                }
                d_gain
            })
        })
        .collect();
    let mut d_gain = vec![0f32; cols];
    for part in &partials {
        for (d, p) in d_gain.iter_mut().zip(part) {
            *d += p;
        }
    }
    let d_gain = FlexTensor::from_data(TensorData::new(d_gain, [cols]));
    Some((tensor(d_x, rows, cols), d_gain))
}

/// RoPE with the two middle axes swapped ([`super::rope_op`]). Forward (`backward = false`):
/// `x` `[B, T, N, E]` → `[B, N, T, E]`, each head vector rotated by its position's angles,
/// `s·(x₁cos₁ − x₂sin₁, x₂cos₂ + x₁sin₂)`. Backward: `g` `[B, N, T, E]` → `[B, T, N, E]`, the
/// transposed rotation `s·(g₁cos₁ + g₂sin₂, g₂cos₂ − g₁sin₁)`. `cos`, `sin`: `[T, E]`, `E` even.
/// Each task writes whole output rows; it reads one input row per output row.
pub(super) fn rope(
    x: &FlexTensor,
    cos: &FlexTensor,
    sin: &FlexTensor,
    scale: f64,
    backward: bool,
) -> Option<FlexTensor> {
    if x.dtype() != DType::F32 {
        return None;
    }
    let &[b, a, c, e] = x.layout().shape().as_slice() else {
        return None;
    };
    let (cos, t, e_cos) = host(cos)?;
    let (sin, t_sin, e_sin) = host(sin)?;
    // Forward reads positions along axis 1 (`a`), backward along axis 2 (`c`).
    let positions = if backward { c } else { a };
    if e == 0 || e % 2 != 0 || (t, e_cos) != (positions, e) || (t_sin, e_sin) != (t, e) {
        return None;
    }
    let x = x.to_contiguous();
    let (x, cos, sin) = (
        x.as_slice::<f32>()?,
        cos.as_slice::<f32>()?,
        sin.as_slice::<f32>()?,
    );
    let (h, s) = (e / 2, scale as f32);
    let mut out = vec![0f32; b * a * c * e];
    let rows = rows_per_task(e);
    out.par_chunks_mut(rows * e)
        .enumerate()
        .for_each(|(task, o)| {
            simd(|| {
                for (i, o) in o.chunks_mut(e).enumerate() {
                    // Output row (bi, ci, ai) of [B, C, A, E] reads input row (bi, ai, ci).
                    let r = task * rows + i;
                    let (ai, rest) = (r % a, r / a);
                    let (ci, bi) = (rest % c, rest / c);
                    let src = ((bi * a + ai) * c + ci) * e;
                    let x = &x[src..src + e];
                    let p = if backward { ci } else { ai } * e;
                    let (cos, sin) = (&cos[p..p + e], &sin[p..p + e]);
                    let (x1, x2) = x.split_at(h);
                    let (o1, o2) = o.split_at_mut(h);
                    if backward {
                        for j in 0..h {
                            o1[j] = s * (x1[j] * cos[j] + x2[j] * sin[h + j]);
                            o2[j] = s * (x2[j] * cos[h + j] - x1[j] * sin[j]);
                        }
                    } else {
                        for j in 0..h {
                            o1[j] = s * (x1[j] * cos[j] - x2[j] * sin[j]);
                            o2[j] = s * (x2[j] * cos[h + j] + x1[j] * sin[h + j]);
                        }
                    }
                }
            })
        });
    Some(FlexTensor::from_data(TensorData::new(out, [b, c, a, e])))
}
