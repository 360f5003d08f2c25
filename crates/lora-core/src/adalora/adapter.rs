//! [`AdaLoraAdapter`]: the SVD-form update `ΔW = P·diag(λ)·Q` of one linear layer. Attaching it
//! to a model and the orthogonality regularizer are in [`crate::adalora::model`].
//!
//! ```text
//! y = x·W + b + scaling · ((dropout(x)·(Q ⊙ λ)ᵀ)·Pᵀ        scaling = lora_alpha / (init_r + 1e-5)
//! ```
//!
//! Source: Zhang et al. 2023 (arXiv:2303.10512) §3.1; PEFT `tuners/adalora/layer.py`
//! (`AdaLoraLayer.update_layer`, `reset_lora_parameters`, `SVDLinear.forward`,
//! `get_delta_weight`).
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
