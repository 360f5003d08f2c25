//! [`AdaLoraAdapter`]: the SVD-form update `ΔW = P·diag(λ)·Q` of one linear layer, attaching it
//! to a model ([`apply_adalora`]) and the orthogonality regularizer ([`orth_regularizer`]).
//!
//! ```text
//! y = x·W + b + scaling · ((dropout(x)·(Q ⊙ λ)ᵀ)·Pᵀ        scaling = lora_alpha / (init_r + 1e-5)
//! ```
//!
//! Source: Zhang et al. 2023 (arXiv:2303.10512) §3.1; PEFT `tuners/adalora/layer.py`
//! (`AdaLoraLayer.update_layer`, `reset_lora_parameters`, `SVDLinear.forward`,
//! `get_delta_weight`) and `model.py` (`AdaLoraModel.forward` for the regularizer).
//!
//! # Shapes (burn layout: every tensor is the transpose of PEFT's)
//! | here | burn shape | PEFT name | PEFT shape | paper |
//! |---|---|---|---|---|
//! | `lora_a` | `[d_in, r]` | `lora_A` | `[r, in]` | `Q` (right singular vectors) |
//! | `lora_e` | `[1, r]` | `lora_E` | `[r, 1]` | `λ` (singular values) |
//! | `lora_b` | `[r, d_out]` | `lora_B` | `[out, r]` | `P` (left singular vectors) |
//!
//! Keeping `λ` 2-D (`[1, r]`) lets it broadcast over `lora_a`'s columns and keeps every trainable
//! tensor 2-D, like LoRA's; the file boundary ([`crate::adalora::peft_io`]) transposes all three.

use burn::module::{Module, Param};
use burn::nn::{Dropout, DropoutConfig};
use burn::tensor::module::linear;
use burn::tensor::{Device, Distribution, Tensor};

use crate::adalora::config::AdaLoraConfig;
use crate::error::LoraError;
use crate::inject::{AdaptReport, LoraModel};
use crate::linear::LoraLinear;
use crate::targets::TargetMatcher;

/// The trainable SVD-form update of one linear layer (one AdaLoRA "incremental matrix").
#[derive(Module, Debug)]
pub struct AdaLoraAdapter {
    /// `Qᵀ`, `[d_in, r]` (PEFT `lora_A`, `[r, in]`); starts ~ N(0, 0.02²).
    pub lora_a: Param<Tensor<2>>,
    /// `λ`, `[1, r]` (PEFT `lora_E`, `[r, 1]`); starts at 0, so the adapter starts as a no-op.
    /// A pruned triplet has `λ_i = 0`.
    pub lora_e: Param<Tensor<2>>,
    /// `Pᵀ`, `[r, d_out]` (PEFT `lora_B`, `[out, r]`); starts ~ N(0, 0.02²).
    pub lora_b: Param<Tensor<2>>,
    /// Dropout on the adapter path's input only; inactive outside training.
    pub dropout: Dropout,
    /// Triplets held now: `init_r` while training; the kept count after loading a pruned adapter.
    #[module(skip)]
    pub r: usize,
    /// The layer's ORIGINAL rank `init_r` (PEFT `ranknum`), kept after pruning and reloading.
    #[module(skip)]
    pub ranknum: usize,
    /// `lora_alpha` of the adapter.
    #[module(skip)]
    pub lora_alpha: f64,
    /// `lora_alpha / (ranknum + 1e-5)` (see [`AdaLoraConfig::scaling`]).
    #[module(skip)]
    pub scaling: f64,
}

impl AdaLoraAdapter {
    /// A fresh adapter for a `[d_in, d_out]` layer with `config.init_r` triplets, initialised as
    /// PEFT's `reset_lora_parameters`: `λ = 0`, `P`, `Q` ~ N(0, 0.02²).
    ///
    /// # Errors
    /// [`LoraError::InvalidConfig`] from [`AdaLoraConfig::validate_layers`].
    pub fn init(
        d_in: usize,
        d_out: usize,
        config: &AdaLoraConfig,
        device: &Device,
    ) -> Result<Self, LoraError> {
        config.validate_layers()?;
        let r = config.init_r;
        let normal = Distribution::Normal(0.0, 0.02);
        Ok(Self::from_tensors(
            Tensor::random([d_in, r], normal, device),
            Tensor::zeros([1, r], device),
            Tensor::random([r, d_out], normal, device),
            config,
        ))
    }

    /// Wraps given factors (burn layout: `lora_a` `[d_in, r]`, `lora_e` `[1, r]`, `lora_b`
    /// `[r, d_out]`) as a trainable adapter. `r` may be below `config.init_r` (a pruned adapter);
    /// the scaling still uses `init_r`.
    pub fn from_tensors(
        lora_a: Tensor<2>,
        lora_e: Tensor<2>,
        lora_b: Tensor<2>,
        config: &AdaLoraConfig,
    ) -> Self {
        let r = lora_a.dims()[1];
        AdaLoraAdapter {
            lora_a: Param::from_tensor(lora_a),
            lora_e: Param::from_tensor(lora_e),
            lora_b: Param::from_tensor(lora_b),
            dropout: DropoutConfig::new(config.lora_dropout).init(),
            r,
            ranknum: config.init_r,
            lora_alpha: config.lora_alpha,
            scaling: config.scaling(),
        }
    }

    /// The adapter path: `scaling · (dropout(x)·(Qᵀ ⊙ λ))·Pᵀ`, in PEFT's order
    /// (`dropout(x) @ (lora_A * lora_E).T @ lora_B.T * scaling / ranknum`).
    ///
    /// # Shapes
    /// `x`: `[..., d_in]` → `[..., d_out]`
    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        let x = self.dropout.forward(x);
        let q_lambda = self.lora_a.val() * self.lora_e.val(); // [d_in, r] ⊙ [1, r]
        let down = linear(x, q_lambda, None); // [..., r]
        let up = linear(down, self.lora_b.val(), None); // [..., d_out]
        up.mul_scalar(self.scaling)
    }

    /// The dense update `ΔW = scaling · (Qᵀ ⊙ λ)·Pᵀ`, `[d_in, d_out]`, detached from the autodiff
    /// graph (PEFT `get_delta_weight`, transposed). No dropout.
    pub fn delta_weight(&self) -> Tensor<2> {
        (self.lora_a.val().detach() * self.lora_e.val().detach())
            .matmul(self.lora_b.val().detach())
            .mul_scalar(self.scaling)
    }

    /// Number of trainable values, `r · (d_in + d_out + 1)`.
    pub fn num_trainable(&self) -> usize {
        let [d_in, r] = self.lora_a.shape().dims();
        let [_, d_out] = self.lora_b.shape().dims();
        r * (d_in + d_out + 1)
    }

    /// Singular values that are not zero now (`λ_i ≠ 0`): the layer's effective rank.
    pub fn active_rank(&self) -> usize {
        let values = self
            .lora_e
            .val()
            .inner()
            .into_data()
            .convert::<f32>()
            .try_to_vec::<f32>()
            .unwrap_or_default();
        values.iter().filter(|v| **v != 0.0).count()
    }
}

impl LoraLinear {
    /// Attaches an AdaLoRA adapter (the layer must be unmerged and carry no LoRA adapter).
    ///
    /// # Errors
    /// [`LoraError::MergeState`] if the layer is merged or already has a LoRA adapter,
    /// [`LoraError::InvalidConfig`] if the adapter's shapes do not fit the base weight.
    pub fn attach_adalora(&mut self, adapter: AdaLoraAdapter, path: &str) -> Result<(), LoraError> {
        if self.merged || self.adapter.is_some() {
            return Err(LoraError::MergeState {
                path: path.into(),
                what:
                    "cannot attach an AdaLoRA adapter to a merged layer or one with a LoRA adapter"
                        .into(),
            });
        }
        let (d_in, d_out) = self.dims();
        let [a_in, r] = adapter.lora_a.shape().dims();
        let [e1, e_r] = adapter.lora_e.shape().dims();
        let [b_r, b_out] = adapter.lora_b.shape().dims();
        if (a_in, b_out) != (d_in, d_out) || (e1, e_r, b_r) != (1, r, r) {
            return Err(LoraError::InvalidConfig(format!(
                "{path}: AdaLoRA factors [{a_in}, {r}] / [{e1}, {e_r}] / [{b_r}, {b_out}] do not fit a [{d_in}, {d_out}] layer"
            )));
        }
        self.adalora = Some(adapter);
        Ok(())
    }
}

/// Freezes every parameter of `model`, then gives each linear layer that `config` selects a fresh
/// [`AdaLoraAdapter`] of rank `init_r` (PEFT `get_peft_model` with an `AdaLoraConfig`).
///
/// # Errors
/// [`LoraError::InvalidConfig`] / [`LoraError::BadRegex`] for a bad config,
/// [`LoraError::TargetMatchesNothing`] when a target entry selects no layer.
pub fn apply_adalora<M: LoraModel>(
    model: M,
    config: &AdaLoraConfig,
    device: &Device,
) -> Result<(M, AdaptReport), LoraError> {
    config.validate_layers()?;
    let matcher = TargetMatcher::new(&config.targets())?;
    matcher.check_all_used(&model.linear_paths())?;
    let mut model = model.no_grad();
    model.visit_linears_mut(&mut |path, lin| {
        if matcher.matches(path) {
            let (d_in, d_out) = lin.dims();
            lin.attach_adalora(AdaLoraAdapter::init(d_in, d_out, config, device)?, path)?;
        }
        Ok(())
    })?;
    let report = AdaptReport::of(&model);
    Ok((model, report))
}

/// `‖M − I‖_F`, the Frobenius norm (not squared) of a square `[r, r]` matrix minus the identity.
fn distance_from_identity(m: Tensor<2>) -> Tensor<1> {
    let [r, _] = m.dims();
    let eye = Tensor::<2>::eye(r, &m.device());
    (m - eye).square().sum().sqrt()
}

/// The orthogonality regularizer `R(P, Q)` as PEFT's `AdaLoraModel.forward` computes it, without
/// its weight: for every `Q` (`[r, in]`) `‖Q·Qᵀ − I‖_F`, for every `P` (`[out, r]`)
/// `‖Pᵀ·P − I‖_F`, summed and divided by the number of `P` and `Q` matrices. `None` when no
/// layer carries an AdaLoRA adapter. It stays on the autodiff graph, so its gradient flows
/// into `P` and `Q`. (The paper, eq. 4, squares the norms; PEFT does not, and we follow PEFT.)
///
/// # Shapes
/// returns `[1]`
pub fn orth_regularizer<M: LoraModel>(model: &M) -> Option<Tensor<1>> {
    let mut terms = Vec::new();
    model.visit_linears(&mut |_, lin| {
        if let Some(a) = &lin.adalora {
            let q_t = a.lora_a.val(); // Qᵀ [d_in, r]
            let p_t = a.lora_b.val(); // Pᵀ [r, d_out]
            terms.push(distance_from_identity(q_t.clone().transpose().matmul(q_t))); // Q·Qᵀ
            terms.push(distance_from_identity(p_t.clone().matmul(p_t.transpose()))); // Pᵀ·P
        }
    });
    let n = terms.len();
    let sum = terms.into_iter().reduce(|a, b| a + b)?;
    Some(sum.div_scalar(n as f64))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::{BackendKind, select_device};
    use burn::tensor::TensorData;

    fn device() -> Device {
        select_device(BackendKind::Flex).expect("flex")
    }

    fn t2(rows: usize, cols: usize, v: &[f32], d: &Device) -> Tensor<2> {
        Tensor::from_data(TensorData::new(v.to_vec(), [rows, cols]), d)
    }

    fn host<const D: usize>(t: Tensor<D>) -> Vec<f32> {
        t.into_data().convert::<f32>().try_to_vec::<f32>().unwrap()
    }

    /// A 2→3 layer with r = 2: Q = [[1, 2], [0, 1]] ([r, in]), λ = [3, 0], P = [[1, 0], [0, 1],
    /// [2, 1]] ([out, r]), alpha = 2, init_r = 2: scaling = 2 / 2.00001.
    fn tiny_adapter(d: &Device) -> AdaLoraAdapter {
        let cfg = AdaLoraConfig {
            init_r: 2,
            lora_alpha: 2.0,
            ..Default::default()
        };
        AdaLoraAdapter::from_tensors(
            t2(2, 2, &[1.0, 0.0, 2.0, 1.0], d), // Qᵀ
            t2(1, 2, &[3.0, 0.0], d),
            t2(2, 3, &[1.0, 0.0, 2.0, 0.0, 1.0, 1.0], d), // Pᵀ
            &cfg,
        )
    }

    #[test]
    fn forward_is_p_lambda_q_times_alpha_over_init_r() {
        let d = device();
        let a = tiny_adapter(&d);
        // x = [1, 1]: Q·x = [3, 1]; λ ⊙ = [9, 0]; P· = [9, 0, 18]; × 2 / 2.00001.
        let y = host(a.forward(t2(1, 2, &[1.0, 1.0], &d)));
        let s = 2.0 / 2.00001f32;
        for (got, want) in y.iter().zip([9.0 * s, 0.0, 18.0 * s]) {
            assert!((got - want).abs() < 1e-5, "{y:?}");
        }
        // ΔW (burn layout [in, out]) = scaling · (P·diag(λ)·Q)ᵀ: row j = input j.
        let dw = host(a.delta_weight());
        let want = [3.0 * s, 0.0, 6.0 * s, 6.0 * s, 0.0, 12.0 * s];
        for (got, want) in dw.iter().zip(want) {
            assert!((got - want).abs() < 1e-5, "{dw:?}");
        }
        assert_eq!(a.active_rank(), 1, "λ₂ = 0 is a pruned triplet");
        assert_eq!(a.num_trainable(), 2 * (2 + 3 + 1));
    }

    #[test]
    fn orth_regularizer_matches_a_hand_computed_value() {
        let d = device();
        let mut lin = LoraLinear::new(Tensor::zeros([2, 3], &d), None);
        lin.attach_adalora(tiny_adapter(&d), "l").unwrap();
        // Q·Qᵀ = [[5, 2], [2, 1]] − I = [[4, 2], [2, 0]] → √24.
        // Pᵀ·P = [[5, 2], [2, 2]] − I = [[4, 2], [2, 1]] → √25 = 5.
        let want = (24f32.sqrt() + 5.0) / 2.0;
        let got = host(orth_regularizer(&OneLayer { l: lin }).unwrap())[0];
        assert!((got - want).abs() < 1e-5, "{got} vs {want}");
    }

    #[test]
    fn orth_regularizer_is_zero_for_orthonormal_p_and_q() {
        let d = device();
        let (c, s) = (0.6f32, 0.8f32); // a rotation: orthonormal rows and columns
        let cfg = AdaLoraConfig {
            init_r: 2,
            ..Default::default()
        };
        let adapter = AdaLoraAdapter::from_tensors(
            t2(3, 2, &[c, -s, s, c, 0.0, 0.0], &d), // Qᵀ: Q has orthonormal rows
            t2(1, 2, &[1.0, 1.0], &d),
            t2(2, 2, &[0.0, 1.0, 1.0, 0.0], &d), // Pᵀ: a permutation
            &cfg,
        );
        let mut lin = LoraLinear::new(Tensor::zeros([3, 2], &d), None);
        lin.attach_adalora(adapter, "l").unwrap();
        let got = host(orth_regularizer(&OneLayer { l: lin }).unwrap())[0];
        assert!(got.abs() < 1e-6, "{got}");
    }

    /// A one-layer "model" for the regularizer tests.
    #[derive(Module, Debug)]
    struct OneLayer {
        l: LoraLinear,
    }

    impl LoraModel for OneLayer {
        fn visit_linears_mut(
            &mut self,
            f: &mut crate::inject::LinearVisitor<'_>,
        ) -> Result<(), LoraError> {
            f("l", &mut self.l)
        }
        fn visit_linears(&self, f: &mut dyn FnMut(&str, &LoraLinear)) {
            f("l", &self.l)
        }
    }
}
