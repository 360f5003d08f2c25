//! [`DoraAdapter`]: weight-decomposed LoRA (DoRA, Liu et al. 2024, arXiv:2402.09353). The
//! adapted weight is split into a direction, which LoRA updates, and a trainable magnitude `m`
//! per output unit:
//!
//! ```text
//! W' = m ⊙ (W + s·A·B) / ‖W + s·A·B‖          the norm per output unit, treated as a constant
//! y  = x·W' + b
//!    = x·W + b + (m/‖·‖ − 1) ⊙ (x·W) + (m/‖·‖) ⊙ s·(x·A)·B
//! ```
//!
//! Source: PEFT `tuners/lora/dora.py` (`DoraLinearLayer.update_layer`, `get_weight_norm`,
//! `forward`) and `tuners/lora/variants.py` (`DoraLinearVariant.forward`, `merge_safe`,
//! `unmerge`), followed step by step:
//! - `m` starts as `‖W + s·A·B‖` (which is `‖W‖` with the default `B = 0`), computed on the
//!   dequantized weight for an NF4 base (PEFT's `dequantize_module_weight`);
//! - the norm is detached (paper §4.3: "we suggest treating ‖V + ∆V‖_c as a constant"): it
//!   follows A and B but sends them no gradient; only `m` learns through the ratio `m/‖·‖`;
//! - dropout: with no active dropout the base term reuses the layer's `x·W`; with one (training,
//!   `lora_dropout > 0`) BOTH terms see the same dropped input `dropout(x)` and the base term is
//!   recomputed from it, as PEFT does (`base_result = None` → `F.linear(x, weight)`);
//! - merging writes `W' = (m/‖W + ΔW‖) ⊙ (W + ΔW)` and keeps that norm (PEFT caches it as
//!   `<adapter>-weight_norm`), so unmerging recovers `W = W'/(m/‖·‖) − ΔW`.
//!
//! # Shapes (burn layout, the transpose of PyTorch's)
//! - `W`: `[d_in, d_out]`; `A`: `[d_in, r]`; `B`: `[r, d_out]`
//! - `m` (`magnitude`): `[1, d_out]` — PEFT's `lora_magnitude_vector`, `[out]`; kept 2-D so every
//!   trainable tensor is 2-D (as AdaLoRA's `λ`) and it broadcasts over the rows of `W`
//! - the norm `‖W + s·A·B‖`: over `d_in` (PyTorch's `dim=1` of `[out, in]`), `[1, d_out]`

use burn::module::{Module, Param};
use burn::tensor::Tensor;
use burn::tensor::module::linear;

use crate::error::LoraError;
use crate::lora::LoraAdapter;

/// DoRA on one linear layer: LoRA's `A`, `B` for the direction plus a magnitude vector.
#[derive(Module, Debug)]
pub struct DoraAdapter {
    /// The LoRA factors, dropout, rank and scaling of the directional update.
    pub lora: LoraAdapter,
    /// `m`, `[1, d_out]`: the length of every output unit's weight vector (PEFT
    /// `lora_magnitude_vector`).
    pub magnitude: Param<Tensor<2>>,
    /// `‖W + s·A·B‖` when merged (PEFT's cached `weight_norm`): unmerging needs the norm of the
    /// unmerged weight, which the merged weight no longer gives.
    #[module(skip)]
    merged_norm: Option<Tensor<2>>,
}

impl DoraAdapter {
    /// DoRA around `lora` on a layer whose base weight is `weight` (`[d_in, d_out]`,
    /// dequantized for NF4): `m = ‖W + s·A·B‖` (PEFT `DoraLinearLayer.update_layer`).
    pub fn init(lora: LoraAdapter, weight: &Tensor<2>) -> Self {
        let magnitude = weight_norm(weight, &lora);
        Self::from_parts(lora, magnitude)
    }

    /// DoRA from given factors and a magnitude `[1, d_out]` (a loaded adapter).
    pub fn from_parts(lora: LoraAdapter, magnitude: Tensor<2>) -> Self {
        DoraAdapter {
            lora,
            // A trainable parameter must be a leaf of the autodiff graph (burn panics otherwise).
            magnitude: Param::from_tensor(magnitude.detach()),
            merged_norm: None,
        }
    }

    /// `(d_in, d_out)` of the layer.
    pub fn dims(&self) -> (usize, usize) {
        let [d_in, _] = self.lora.lora_a.shape().dims();
        let [_, d_out] = self.lora.lora_b.shape().dims();
        (d_in, d_out)
    }

    /// What DoRA adds to the base output `x·W + b`:
    /// `(m/‖W + s·A·B‖ − 1) ⊙ (x·W) + (m/‖W + s·A·B‖) ⊙ s·(x·A)·B`, with `x` replaced by
    /// `dropout(x)` in both terms while dropout is active (PEFT `DoraLinearVariant.forward`).
    ///
    /// # Shapes
    /// `x`: `[..., d_in]`; `base` (`x·W`, no bias): `[..., d_out]`; `weight`: `[d_in, d_out]`
    /// → `[..., d_out]`
    pub fn forward<const D: usize>(
        &self,
        x: Tensor<D>,
        base: &Tensor<D>,
        weight: &Tensor<2>,
    ) -> Tensor<D> {
        // m / ‖W + s·A·B‖: the norm is a constant for autodiff (weight_norm detaches it).
        let scale: Tensor<D> = (self.magnitude.val() / weight_norm(weight, &self.lora)).unsqueeze();
        let (x, base) = if self.lora.dropout_active(&x) {
            let dropped = self.lora.dropout.forward(x);
            let base = linear(dropped.clone(), weight.clone(), None);
            (dropped, base)
        } else {
            (x, base.clone())
        };
        let lora = self.lora.low_rank(x); // s·(x·A)·B
        (scale.clone() - 1.0) * base + scale * lora
    }

    /// The merged weight `W' = (m/‖W + ΔW‖) ⊙ (W + ΔW)` for the base `weight`, remembering the
    /// norm for [`unmerge_from`](Self::unmerge_from). Detached; no dropout.
    pub fn merge_into(&mut self, weight: Tensor<2>) -> Tensor<2> {
        let norm = weight_norm(&weight, &self.lora);
        let factor = self.magnitude.val().detach() / norm.clone();
        self.merged_norm = Some(norm);
        (weight + self.lora.delta_weight()) * factor
    }

    /// The base weight back from a merged one: `W = W'/(m/‖W + ΔW‖) − ΔW`, with the norm kept
    /// at merge time (PEFT `DoraLinearVariant.unmerge`).
    ///
    /// # Errors
    /// [`LoraError::MergeState`] if this adapter was never merged.
    pub fn unmerge_from(&mut self, merged: Tensor<2>, path: &str) -> Result<Tensor<2>, LoraError> {
        let norm = self
            .merged_norm
            .take()
            .ok_or_else(|| LoraError::MergeState {
                path: path.into(),
                what: "DoRA adapter has no weight norm from a merge; it is not merged".into(),
            })?;
        let factor = self.magnitude.val().detach() / norm;
        Ok(merged / factor - self.lora.delta_weight())
    }

    /// Number of trainable values: `r · (d_in + d_out) + d_out`.
    pub fn num_trainable(&self) -> usize {
        self.lora.num_trainable() + self.dims().1
    }
}

/// `‖W + s·A·B‖` per output unit, `[1, d_out]`, detached (PEFT `get_weight_norm` on
/// `lora_weight.detach()`, then `weight_norm.detach()`).
pub fn weight_norm(weight: &Tensor<2>, lora: &LoraAdapter) -> Tensor<2> {
    let full = weight.clone().detach() + lora.delta_weight(); // [d_in, d_out]
    full.square().sum_dim(0).sqrt() // [1, d_out]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{InitLoraWeights, LoraConfig, TargetModules};
    use crate::{BackendKind, select_device};
    use burn::tensor::TensorData;

    fn host<const D: usize>(t: Tensor<D>) -> Vec<f32> {
        t.into_data().convert::<f32>().try_to_vec::<f32>().unwrap()
    }

    /// W = [[3, 0], [4, 1]] (burn layout [d_in = 2, d_out = 2]): column norms 5 and 1.
    #[test]
    fn magnitude_starts_at_the_column_norms_of_w_and_the_layer_is_unchanged() {
        let d = select_device(BackendKind::Flex).unwrap();
        let w = Tensor::<2>::from_data(TensorData::new(vec![3f32, 0., 4., 1.], [2, 2]), &d);
        let cfg = LoraConfig::new(1, 2.0, TargetModules::AllLinear);
        let lora = LoraAdapter::init(2, 2, 1, 2.0, &cfg, &d).unwrap();
        let dora = DoraAdapter::init(lora, &w);
        assert_eq!(host(dora.magnitude.val()), vec![5.0, 1.0]);
        let x = Tensor::<2>::from_data(TensorData::new(vec![1f32, 2.], [1, 2]), &d);
        let base = x.clone().matmul(w.clone());
        // B = 0 and m = ‖W‖: the scale is exactly 1 and the DoRA term exactly 0.
        assert_eq!(host(dora.forward(x, &base, &w)), vec![0.0, 0.0]);
    }

    /// With dropout active, PEFT recomputes the base term from the dropped input. With B = 0,
    /// W = [[1]] and m = 2‖W‖ = 2, DoRA's term is (2 − 1)·dropout(x)·W: for x = 1 and p = 0.5 each
    /// output is 0 or 2 — never 1, which reusing the layer's x·W would give. Without dropout
    /// (no autodiff device: inference) every output is exactly 1.
    #[test]
    fn with_dropout_both_terms_see_the_same_dropped_input() {
        let d = select_device(BackendKind::Flex).unwrap();
        for (device, training) in [(d.clone().autodiff(), true), (d, false)] {
            let w = Tensor::<2>::ones([1, 1], &device);
            let cfg = LoraConfig {
                lora_dropout: 0.5,
                ..LoraConfig::new(1, 1.0, TargetModules::AllLinear)
            };
            let lora = LoraAdapter::init(1, 1, 1, 1.0, &cfg, &device).unwrap();
            let dora = DoraAdapter::from_parts(lora, Tensor::ones([1, 1], &device) * 2.0);
            let x = Tensor::<2>::ones([256, 1], &device);
            let base = x.clone().matmul(w.clone());
            let out = host(dora.forward(x, &base, &w));
            if training {
                assert!(out.iter().all(|v| *v == 0.0 || *v == 2.0), "{out:?}");
                assert!(out.contains(&0.0) && out.contains(&2.0), "{out:?}");
            } else {
                assert!(out.iter().all(|v| *v == 1.0), "{out:?}");
            }
        }
    }

    /// Hand-computed: W = [[3, 0], [4, 1]], A = [[1], [0]], B = [[0, 1]], s = 2, m = [10, 1].
    /// W + s·A·B = [[3, 2], [4, 1]]: norms 5 and √5. For x = [1, 2]: x·W = [11, 2],
    /// s·(x·A)·B = [0, 2]; y − x·W = (m/‖·‖ − 1)·x·W + (m/‖·‖)·lora
    /// = [(2 − 1)·11, (1/√5 − 1)·2 + (1/√5)·2] = [11, 4/√5 − 2].
    #[test]
    fn dora_term_matches_hand_computed_values_and_merge_equals_forward() {
        let d = select_device(BackendKind::Flex).unwrap();
        let t = |v: Vec<f32>, s: [usize; 2]| Tensor::<2>::from_data(TensorData::new(v, s), &d);
        let w = t(vec![3., 0., 4., 1.], [2, 2]);
        let cfg = LoraConfig {
            init_lora_weights: InitLoraWeights::Default,
            ..LoraConfig::new(1, 2.0, TargetModules::AllLinear)
        };
        let lora =
            LoraAdapter::from_tensors(t(vec![1., 0.], [2, 1]), t(vec![0., 1.], [1, 2]), 2.0, &cfg);
        let mut dora = DoraAdapter::from_parts(lora, t(vec![10., 1.], [1, 2]));
        let x = t(vec![1., 2.], [1, 2]);
        let base = x.clone().matmul(w.clone());
        let got = host(dora.forward(x.clone(), &base, &w));
        let want = [11.0, 4.0 / 5f32.sqrt() - 2.0];
        assert!(
            (got[0] - want[0]).abs() < 1e-5 && (got[1] - want[1]).abs() < 1e-5,
            "{got:?}"
        );

        let merged = dora.merge_into(w.clone());
        let y_merged = host(x.matmul(merged.clone()));
        let y = [11.0 + got[0], 2.0 + got[1]];
        assert!((y_merged[0] - y[0]).abs() < 1e-5 && (y_merged[1] - y[1]).abs() < 1e-5);
        let back = host(dora.unmerge_from(merged, "l").unwrap());
        for (a, b) in back.iter().zip([3., 0., 4., 1.]) {
            assert!((a - b).abs() < 1e-5, "{back:?}");
        }
        assert!(
            dora.unmerge_from(w, "l").is_err(),
            "unmerging twice is an error"
        );
    }
}
