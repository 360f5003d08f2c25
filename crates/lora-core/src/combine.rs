//! Several LoRA adapters combined into one, as PEFT's `LoraModel.add_weighted_adapter` does
//! (peft `tuners/lora/model.py`: `_check_add_weighted_adapter`, `add_weighted_adapter`,
//! `_generalized_task_arithmetic_weighted_adapter`,
//! `_svd_generalized_task_arithmetic_weighted_adapter`). With weights `w_i` and each source's
//! scaling `s_i`, the combined update of a layer is
//!
//! | combination | combined `A`, `B` (burn layout) | combined `ΔW` | rank |
//! |---|---|---|---|
//! | `linear` | `A = Σ sign(w_i s_i)·√|w_i s_i|·A_i`, `B = Σ √|w_i s_i|·B_i` | `A·B` — not `Σ w_i ΔW_i` (cross terms) | the sources' (all equal) |
//! | `cat` | `A = [w_1 s_1 A_1 | w_2 s_2 A_2 | …]`, `B = [B_1; B_2; …]` | exactly `Σ w_i s_i A_i B_i` | `Σ r_i` |
//! | `svd` | the top `svd_rank` singular triplets of `Σ w_i s_i A_i B_i` | that, truncated | `svd_rank` or `max r_i` |
//!
//! and the combined adapter's config is the FIRST source's with `r = lora_alpha = new rank`,
//! the union of the target modules and no rank / alpha patterns — so its scaling is 1 (or
//! `√new_rank` when the first source uses rsLoRA: `lora_alpha / √r`, as in PEFT). A layer only
//! some sources adapt combines those sources; in `cat` the missing ones leave zero rows.
//!
//! `svd` here factors the low-rank sum exactly (QR of the stacked factors, then the SVD of a
//! small `R × R` matrix, in f64) instead of a dense SVD of the `[d_out, d_in]` update as PEFT
//! does in f32; the truncated product is the same up to rounding when the singular values at
//! the cut differ (`svd_clamp` and the other PEFT combinations — `ties`, `dare_*`,
//! `magnitude_prune` — are not implemented).

use std::fmt;
use std::str::FromStr;

use burn::tensor::{Tensor, TensorData};
use nalgebra::DMatrix;

use crate::config::{LoraConfig, TargetModules};
use crate::error::LoraError;
use crate::lora::LoraAdapter;
use crate::tensor_io::HostTensor;

/// How the sources are combined (PEFT's `combination_type`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Combination {
    /// Mix the `A`s and the `B`s separately (cheap; not the weighted sum of the updates).
    Linear,
    /// Concatenate the factors: exactly the weighted sum of the updates, rank `Σ r_i`.
    Cat,
    /// The weighted sum of the updates, truncated to a rank by its SVD (PEFT's default).
    Svd,
}

impl FromStr for Combination {
    type Err = LoraError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "linear" => Ok(Combination::Linear),
            "cat" => Ok(Combination::Cat),
            "svd" => Ok(Combination::Svd),
            other => Err(LoraError::InvalidConfig(format!(
                "combination {other:?}: choose linear, cat or svd (PEFT's ties / dare / magnitude_prune are not implemented)"
            ))),
        }
    }
}

impl fmt::Display for Combination {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Combination::Linear => "linear",
            Combination::Cat => "cat",
            Combination::Svd => "svd",
        })
    }
}

/// A weighted combination request: PEFT's `add_weighted_adapter(adapters, weights,
/// combination_type, svd_rank)` without the adapter names.
#[derive(Clone, Debug, PartialEq)]
pub struct WeightedCombination {
    /// How to combine.
    pub combination: Combination,
    /// One weight per source, in order (negative weights subtract).
    pub weights: Vec<f64>,
    /// `svd` only: the rank to keep (default: the largest source rank).
    pub svd_rank: Option<usize>,
}

/// The largest rank a source config gives any layer (`r`, or more in `rank_pattern`).
fn max_rank(c: &LoraConfig) -> usize {
    c.rank_pattern.values().copied().fold(c.r, usize::max)
}

/// The combination PEFT actually runs and the combined adapter's config
/// (`_check_add_weighted_adapter` and the `replace(...)` in `add_weighted_adapter`): a single
/// source is always combined `linear`; `linear` needs equal ranks; the targets are the union.
/// `linear_paths` are the model's linear layers (for `"all-linear"`, which PEFT expands to the
/// layers' last path components, `lm_head` excepted).
///
/// # Errors
/// [`LoraError::InvalidConfig`] for no source, a weight count that differs from the source
/// count, a non-finite weight, unequal ranks with `linear`, a zero `svd_rank`, or a mix of
/// name-list and regex targets (PEFT refuses it too).
pub fn combined_config(
    sources: &[&LoraConfig],
    request: &WeightedCombination,
    linear_paths: &[String],
) -> Result<(Combination, LoraConfig), LoraError> {
    let bad = |m: String| Err(LoraError::InvalidConfig(m));
    let Some(first) = sources.first() else {
        return bad("no adapters to combine".into());
    };
    if request.weights.len() != sources.len() {
        return bad(format!(
            "{} weights for {} adapters; give one weight per adapter",
            request.weights.len(),
            sources.len()
        ));
    }
    if let Some(w) = request.weights.iter().find(|w| !w.is_finite()) {
        return bad(format!("weight {w} is not finite"));
    }
    let combination = if sources.len() == 1 {
        Combination::Linear
    } else {
        request.combination
    };
    let ranks: Vec<usize> = sources.iter().map(|c| max_rank(c)).collect();
    let new_rank = match combination {
        Combination::Linear => {
            if ranks.iter().any(|r| *r != ranks[0]) {
                return bad(format!(
                    "combination linear needs adapters of one rank, got r = {ranks:?}; use cat or svd"
                ));
            }
            ranks[0]
        }
        Combination::Cat => ranks.iter().sum(),
        Combination::Svd => match request.svd_rank {
            Some(0) => return bad("svd_rank must be at least 1".into()),
            Some(r) => r,
            None => ranks.iter().copied().fold(0, usize::max),
        },
    };
    let target_modules = union_targets(sources, linear_paths)?;
    let config = LoraConfig {
        r: new_rank,
        lora_alpha: new_rank as f64,
        target_modules,
        rank_pattern: Default::default(),
        alpha_pattern: Default::default(),
        ..(*first).clone()
    };
    Ok((combination, config))
}

/// PEFT's union of `target_modules`: name lists → their set union (sorted), regexes →
/// `(re_1)|(re_2)`; `"all-linear"` counts as the list of the model's layer names.
fn union_targets(
    sources: &[&LoraConfig],
    linear_paths: &[String],
) -> Result<TargetModules, LoraError> {
    let all_linear = || -> Vec<String> {
        linear_paths
            .iter()
            .map(|p| p.rsplit('.').next().unwrap_or(p).to_string())
            .filter(|n| n != "lm_head")
            .collect()
    };
    let mut names = std::collections::BTreeSet::new();
    let mut regexes = Vec::new();
    for c in sources {
        match &c.target_modules {
            TargetModules::Names(n) => names.extend(n.iter().cloned()),
            TargetModules::AllLinear => names.extend(all_linear()),
            TargetModules::Regex(re) => regexes.push(format!("({re})")),
        }
    }
    match (names.is_empty(), regexes.is_empty()) {
        (_, true) => Ok(TargetModules::Names(names.into_iter().collect())),
        (true, false) => Ok(TargetModules::Regex(regexes.join("|"))),
        (false, false) => Err(LoraError::InvalidConfig(
            "cannot combine adapters whose target_modules mix name lists and regexes (PEFT refuses it too)".into(),
        )),
    }
}

/// One layer's combined factors `(A [d_in, rank], B [rank, d_out])` from its sources (each with
/// its weight `w_i`; `s_i` is the source's scaling), on the sources' device. `cat` and `svd` pad
/// with zeros up to `rank`.
///
/// # Errors
/// [`LoraError::InvalidConfig`] for no source, sources of other shapes, `linear` sources of
/// another rank than `rank`, `svd` with `rank` above `min(d_in, d_out)`, or an SVD that does
/// not converge; [`LoraError::Tensor`] if a factor cannot be read.
pub fn combine_layer(
    path: &str,
    sources: &[(&LoraAdapter, f64)],
    combination: Combination,
    rank: usize,
) -> Result<(Tensor<2>, Tensor<2>), LoraError> {
    let bad = |m: String| Err(LoraError::InvalidConfig(format!("{path}: {m}")));
    let Some((first, _)) = sources.first() else {
        return bad("no adapter to combine".into());
    };
    let device = first.lora_a.val().device();
    let [d_in, _] = first.lora_a.shape().dims();
    let [_, d_out] = first.lora_b.shape().dims();
    if sources.iter().any(|(a, _)| {
        a.lora_a.shape().dims::<2>()[0] != d_in || a.lora_b.shape().dims::<2>()[1] != d_out
    }) {
        return bad("the adapters were made for layers of different shapes".into());
    }
    let a = |s: &LoraAdapter| s.lora_a.val().detach();
    let b = |s: &LoraAdapter| s.lora_b.val().detach();
    match combination {
        Combination::Linear => {
            if let Some((s, _)) = sources.iter().find(|(s, _)| s.r != rank) {
                return bad(format!(
                    "combination linear needs rank {rank} at every layer; one adapter has {}",
                    s.r
                ));
            }
            let (mut sum_a, mut sum_b) = (
                Tensor::<2>::zeros([d_in, rank], &device),
                Tensor::<2>::zeros([rank, d_out], &device),
            );
            for (s, w) in sources {
                // The sign goes on A only, so that a negative weight is not squared away.
                let ws = w * s.scaling;
                sum_a = sum_a + a(s).mul_scalar(ws.signum() * ws.abs().sqrt());
                sum_b = sum_b + b(s).mul_scalar(ws.abs().sqrt());
            }
            Ok((sum_a, sum_b))
        }
        Combination::Cat => {
            let total: usize = sources.iter().map(|(s, _)| s.r).sum();
            if total > rank {
                return bad(format!("the adapters' ranks add up to {total} > {rank}"));
            }
            let mut parts_a: Vec<Tensor<2>> = sources
                .iter()
                .map(|(s, w)| a(s).mul_scalar(w * s.scaling))
                .collect();
            let mut parts_b: Vec<Tensor<2>> = sources.iter().map(|(s, _)| b(s)).collect();
            if total < rank {
                // A layer only some sources adapt: PEFT leaves the other rows at zero.
                parts_a.push(Tensor::zeros([d_in, rank - total], &device));
                parts_b.push(Tensor::zeros([rank - total, d_out], &device));
            }
            Ok((Tensor::cat(parts_a, 1), Tensor::cat(parts_b, 0)))
        }
        Combination::Svd => {
            if rank > d_in.min(d_out) {
                return bad(format!(
                    "svd_rank {rank} is above min(d_in, d_out) = {}",
                    d_in.min(d_out)
                ));
            }
            // ΔW = P·Q with P = [w_i s_i A_i] (d_in × R) and Q = [B_i] (R × d_out).
            let p = Tensor::cat(
                sources
                    .iter()
                    .map(|(s, w)| a(s).mul_scalar(w * s.scaling))
                    .collect(),
                1,
            );
            let q = Tensor::cat(sources.iter().map(|(s, _)| b(s)).collect(), 0);
            let (a_new, b_new) =
                truncated_svd(to_matrix(p)?, to_matrix(q)?, rank).ok_or_else(|| {
                    LoraError::InvalidConfig(format!("{path}: the SVD did not converge"))
                })?;
            Ok((from_matrix(&a_new, &device), from_matrix(&b_new, &device)))
        }
    }
}

/// The best rank-`k` factors `(A [m, k], B [k, n])` of `P·Q` (`P` `[m, R]`, `Q` `[R, n]`),
/// `A = U_k`, `B = S_k·V_kᵀ`: with `P = Q_p R_p` and `Qᵀ = Q_q R_q` (thin QR),
/// `P·Q = Q_p (R_p R_qᵀ) Q_qᵀ`, so the SVD of the small `R_p R_qᵀ` gives that of `P·Q`.
/// Columns beyond the rank of `P·Q` are zero. `None` if the SVD does not converge.
fn truncated_svd(
    p: DMatrix<f64>,
    q: DMatrix<f64>,
    k: usize,
) -> Option<(DMatrix<f64>, DMatrix<f64>)> {
    let (m, n, r) = (p.nrows(), q.ncols(), p.ncols());
    let (left, middle, right) = if r <= m.min(n) {
        let qr_p = p.qr();
        let qr_q = q.transpose().qr();
        (qr_p.q(), qr_p.r() * qr_q.r().transpose(), qr_q.q())
    } else {
        (DMatrix::identity(m, m), p * q, DMatrix::identity(n, n))
    };
    // `svd` sorts the singular values in descending order; bound the iterations (never hang).
    let svd = middle.try_svd(true, true, 1e-14, 100_000)?;
    let (u, v_t) = (svd.u?, svd.v_t?);
    let kept = k.min(svd.singular_values.len());
    let mut a = DMatrix::zeros(m, k);
    let mut b = DMatrix::zeros(k, n);
    let u = left * u; // m × R
    let v = right * v_t.transpose(); // n × R
    for i in 0..kept {
        a.set_column(i, &u.column(i));
        b.set_row(i, &(v.column(i) * svd.singular_values[i]).transpose());
    }
    Some((a, b))
}

fn to_matrix(t: Tensor<2>) -> Result<DMatrix<f64>, LoraError> {
    let h = HostTensor::from_tensor(t)?;
    let (rows, cols) = (h.shape[0], h.shape[1]);
    Ok(DMatrix::from_row_iterator(
        rows,
        cols,
        h.data.iter().map(|v| *v as f64),
    ))
}

fn from_matrix(m: &DMatrix<f64>, device: &burn::tensor::Device) -> Tensor<2> {
    let data: Vec<f32> = m.transpose().iter().map(|v| *v as f32).collect(); // row-major
    Tensor::from_data(TensorData::new(data, [m.nrows(), m.ncols()]), device)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{BackendKind, select_device};

    fn host(t: Tensor<2>) -> Vec<f32> {
        t.into_data().convert::<f32>().try_to_vec::<f32>().unwrap()
    }

    fn adapter(seed: f32, r: usize, alpha: f64, d: &burn::tensor::Device) -> LoraAdapter {
        let cfg = LoraConfig::new(r, alpha, TargetModules::AllLinear);
        let v = |n: usize, k: f32| {
            (0..n)
                .map(|i| ((i as f32 + k) * 0.37).sin())
                .collect::<Vec<_>>()
        };
        let a = Tensor::from_data(TensorData::new(v(6 * r, seed), [6, r]), d);
        let b = Tensor::from_data(TensorData::new(v(r * 5, seed + 1.0), [r, 5]), d);
        LoraAdapter::from_tensors(a, b, alpha, &cfg)
    }

    fn max_diff(a: &[f32], b: &[f32]) -> f32 {
        a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs()))
    }

    #[test]
    fn cat_is_exactly_the_weighted_sum_and_svd_its_best_truncation() {
        let d = select_device(BackendKind::Flex).unwrap();
        let (x, y) = (adapter(0.0, 2, 4.0, &d), adapter(3.0, 3, 3.0, &d));
        let want = x.delta_weight().mul_scalar(0.7) + y.delta_weight().mul_scalar(-0.4);
        let parts = [(&x, 0.7), (&y, -0.4)];
        let (a, b) = combine_layer("l", &parts, Combination::Cat, 6).unwrap();
        assert_eq!(a.dims(), [6, 6], "padded to the requested rank");
        assert!(max_diff(&host(a.matmul(b)), &host(want.clone())) < 1e-5);
        // Rank 5 = the rank of the sum: the truncation loses nothing.
        let (a, b) = combine_layer("l", &parts, Combination::Svd, 5).unwrap();
        assert!(max_diff(&host(a.matmul(b)), &host(want.clone())) < 1e-5);
        // Rank 2: the error is the next singular value (Eckart–Young), checked with nalgebra.
        let (a, b) = combine_layer("l", &parts, Combination::Svd, 2).unwrap();
        let dense = to_matrix(want.clone()).unwrap();
        let s = dense.clone().svd(false, false).singular_values;
        let err = to_matrix(a.matmul(b)).unwrap() - dense;
        assert!((err.norm() - (s[2] * s[2] + s[3] * s[3] + s[4] * s[4]).sqrt()).abs() < 1e-5);
    }

    #[test]
    fn linear_mixes_factors_with_the_sign_on_a() {
        let d = select_device(BackendKind::Flex).unwrap();
        let (x, y) = (adapter(0.0, 2, 4.0, &d), adapter(3.0, 2, 2.0, &d));
        let (a, b) = combine_layer("l", &[(&x, 0.5), (&y, -2.0)], Combination::Linear, 2).unwrap();
        // w·s = 1 for x and -2 for y: A = A_x − √2·A_y, B = B_x + √2·B_y.
        let r2 = 2f32.sqrt();
        let want_a = host(x.lora_a.val())
            .iter()
            .zip(host(y.lora_a.val()))
            .map(|(p, q)| p - r2 * q)
            .collect::<Vec<_>>();
        let want_b = host(x.lora_b.val())
            .iter()
            .zip(host(y.lora_b.val()))
            .map(|(p, q)| p + r2 * q)
            .collect::<Vec<_>>();
        assert!(max_diff(&host(a), &want_a) < 1e-6 && max_diff(&host(b), &want_b) < 1e-6);
        let z = adapter(1.0, 3, 3.0, &d);
        assert!(combine_layer("l", &[(&x, 1.0), (&z, 1.0)], Combination::Linear, 2).is_err());
    }

    #[test]
    fn combined_config_follows_peft_rank_and_target_rules() {
        let a = LoraConfig::new(4, 8.0, TargetModules::names(&["q_proj", "v_proj"]));
        let b = LoraConfig::new(8, 16.0, TargetModules::names(&["k_proj"]));
        let req = |c, w: &[f64]| WeightedCombination {
            combination: c,
            weights: w.to_vec(),
            svd_rank: None,
        };
        let (c, cfg) =
            combined_config(&[&a, &b], &req(Combination::Cat, &[1.0, 1.0]), &[]).unwrap();
        assert_eq!((c, cfg.r, cfg.lora_alpha), (Combination::Cat, 12, 12.0));
        assert_eq!(
            cfg.target_modules,
            TargetModules::names(&["k_proj", "q_proj", "v_proj"])
        );
        assert_eq!(cfg.scaling(cfg.r, cfg.lora_alpha), 1.0);
        let (_, cfg) =
            combined_config(&[&a, &b], &req(Combination::Svd, &[1.0, 1.0]), &[]).unwrap();
        assert_eq!(cfg.r, 8, "svd: the largest rank");
        assert!(combined_config(&[&a, &b], &req(Combination::Linear, &[1.0, 1.0]), &[]).is_err());
        assert!(combined_config(&[&a, &b], &req(Combination::Cat, &[1.0]), &[]).is_err());
        let (c, _) = combined_config(&[&b], &req(Combination::Cat, &[0.5]), &[]).unwrap();
        assert_eq!(
            c,
            Combination::Linear,
            "one adapter is always combined linearly"
        );
        let re = LoraConfig::new(4, 8.0, TargetModules::Regex(".*q_proj".into()));
        assert!(combined_config(&[&a, &re], &req(Combination::Cat, &[1.0, 1.0]), &[]).is_err());
    }
}
