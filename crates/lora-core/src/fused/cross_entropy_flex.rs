//! flex's kernels for the per-row cross-entropy ([`super::cross_entropy_op`]): one row per
//! rayon task, each loop vectorised ([`super::vmath`]). Return `None` for what they do not take —
//! dtypes other than f32 logits and i64/i32 targets, shapes that disagree, a target outside the
//! vocabulary — and the caller then runs the reference body (whose gather reports the bad id).

use burn::backend::flex::FlexTensor;
use burn::tensor::{DType, TensorData};
use rayon::prelude::*;

use super::flex::{host, tensor};
use super::vmath::{exp, log_sum_exp, simd};

/// Per row `i` of `x` `[N, V]`: `lseᵢ = mᵢ + ln Σⱼ exp(xᵢⱼ − mᵢ)` with `mᵢ = maxⱼ xᵢⱼ`, and the
/// loss `lseᵢ − xᵢ,ₜᵢ` → (`[N]`, `[N]`).
pub(super) fn cross_entropy(x: &FlexTensor, t: &FlexTensor) -> Option<(FlexTensor, FlexTensor)> {
    let (x, n, v) = host(x)?;
    let t = targets(t, n, v)?;
    let x = x.as_slice::<f32>()?;
    let mut nll = vec![0f32; n];
    let mut lse = vec![0f32; n];
    nll.par_iter_mut()
        .zip(lse.par_iter_mut())
        .enumerate()
        .for_each(|(i, (nll, lse))| {
            let row = &x[i * v..(i + 1) * v];
            let l = log_sum_exp(row);
            *lse = l;
            *nll = l - row[t[i]];
        });
    Some((vector(nll), vector(lse)))
}

/// `∂xᵢⱼ = gᵢ · (exp(xᵢⱼ − lseᵢ) − [j = tᵢ])`: `x` `[N, V]`, `lse`, `g`, `t` `[N]` → `[N, V]`.
pub(super) fn cross_entropy_backward(
    x: &FlexTensor,
    lse: &FlexTensor,
    t: &FlexTensor,
    g: &FlexTensor,
) -> Option<FlexTensor> {
    let (x, n, v) = host(x)?;
    let t = targets(t, n, v)?;
    let (lse, g) = (values(lse, n)?, values(g, n)?);
    let x = x.as_slice::<f32>()?;
    let mut out = vec![0f32; n.checked_mul(v)?];
    out.par_chunks_mut(v.max(1)).enumerate().for_each(|(i, o)| {
        let (row, l, gi) = (&x[i * v..(i + 1) * v], lse[i], g[i]);
        simd(|| {
            for (o, &x) in o.iter_mut().zip(row) {
                *o = gi * exp(x - l);
            }
        });
        o[t[i]] -= gi;
    });
    Some(tensor(out, n, v))
}

/// The target ids of an `[N]` integer tensor as indices, each checked `< V`; `None` otherwise.
fn targets(t: &FlexTensor, n: usize, v: usize) -> Option<Vec<usize>> {
    if t.layout().shape().as_slice() != [n] || v == 0 {
        return None;
    }
    let t = t.to_contiguous();
    let ids: Vec<i64> = match t.dtype() {
        DType::I64 => t.as_slice::<i64>()?.to_vec(),
        DType::I32 => t.as_slice::<i32>()?.iter().map(|&i| i64::from(i)).collect(),
        _ => return None,
    };
    ids.into_iter()
        .map(|i| usize::try_from(i).ok().filter(|&i| i < v))
        .collect()
}

/// The values of an `[N]` f32 tensor.
fn values(t: &FlexTensor, n: usize) -> Option<Vec<f32>> {
    if t.dtype() != DType::F32 || t.layout().shape().as_slice() != [n] {
        return None;
    }
    Some(t.to_contiguous().as_slice::<f32>()?.to_vec())
}

/// An `[N]` f32 tensor from its values.
fn vector(values: Vec<f32>) -> FlexTensor {
    let n = values.len();
    FlexTensor::from_data(TensorData::new(values, [n]))
}
