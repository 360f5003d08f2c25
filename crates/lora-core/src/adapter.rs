//! [`Adapter`]: the trainable update one linear layer carries — one enum, so that every
//! operation on "the adapter" (forward, the dense update for merging, counting, the parameters
//! the optimizer and the checkpoint see) dispatches in this one place.
//!
//! | variant | update | source |
//! |---|---|---|
//! | [`Adapter::Lora`] | `ΔW = (lora_alpha / r) · A·B` | [`crate::lora`]; PEFT `tuners/lora/layer.py` |
//! | [`Adapter::AdaLora`] | `ΔW = lora_alpha / (init_r + 1e-5) · (Qᵀ ⊙ λ)·Pᵀ` | [`crate::adalora`]; PEFT `tuners/adalora/layer.py` |
//! | [`Adapter::Dora`] | `W' = m ⊙ (W + s·A·B) / ‖W + s·A·B‖` | [`crate::dora`]; PEFT `tuners/lora/dora.py` |
//!
//! A new kind of adapter is one more variant here and one more file beside [`crate::lora`]; the
//! layer ([`crate::LoraLinear`]) does not change. Every variant gets the frozen layer's `W` and
//! `x·W` in [`Adapter::forward`]; only DoRA reads them (its norm is taken over `W + ΔW`).

use burn::module::{Module, ParamId};
use burn::tensor::Tensor;

use crate::adalora::AdaLoraAdapter;
use crate::dora::DoraAdapter;
use crate::error::LoraError;
use crate::lora::LoraAdapter;

/// The update of one adapted linear layer, in burn layout (`[d_in, ·]` / `[·, d_out]`).
// One adapter per linear layer (a few hundred per model): the variants' size difference (DoRA
// carries LoRA's fields plus its magnitude) costs nothing worth a box, which burn's Module
// derive would not see through.
#[allow(clippy::large_enum_variant)]
#[derive(Module, Debug)]
pub enum Adapter {
    /// LoRA: `A` `[d_in, r]`, `B` `[r, d_out]`.
    Lora(LoraAdapter),
    /// AdaLoRA's SVD form: `Qᵀ` `[d_in, r]`, `λ` `[1, r]`, `Pᵀ` `[r, d_out]`.
    AdaLora(AdaLoraAdapter),
    /// DoRA: LoRA's `A` `[d_in, r]`, `B` `[r, d_out]` plus the magnitude `m` `[1, d_out]`.
    Dora(DoraAdapter),
}

impl Adapter {
    /// The adapter's output, added to the base layer's `x·W + b`: `scaling · (dropout(x)·A)·B`
    /// for LoRA, `scaling · (dropout(x)·(Qᵀ ⊙ λ))·Pᵀ` for AdaLoRA, and DoRA's
    /// `(m/‖W + ΔW‖ − 1) ⊙ (x·W) + (m/‖W + ΔW‖) ⊙ scaling · (x·A)·B`, which needs the layer's
    /// `weight` and its output `base` (see [`DoraAdapter::forward`]).
    ///
    /// # Shapes
    /// `x`: `[..., d_in]`; `base` (`x·W`, no bias): `[..., d_out]`; `weight` makes `W` in f32
    /// (dequantized for NF4), `[d_in, d_out]`, only when DoRA asks for it → `[..., d_out]`
    pub fn forward<const D: usize>(
        &self,
        x: Tensor<D>,
        base: &Tensor<D>,
        weight: impl FnOnce() -> Tensor<2>,
    ) -> Tensor<D> {
        match self {
            Adapter::Lora(a) => a.forward(x),
            Adapter::AdaLora(a) => a.forward(x),
            Adapter::Dora(a) => a.forward(x, base, &weight()),
        }
    }

    /// The low-rank update `ΔW`, `[d_in, d_out]`, detached from the autodiff graph and without
    /// dropout (merging never depends on the training mode). For DoRA this is its LoRA part
    /// `scaling · A·B`, as PEFT's `get_delta_weight` returns it (the magnitude rescaling is
    /// applied by [`Adapter::merge_into`]).
    pub fn delta_weight(&self) -> Tensor<2> {
        match self {
            Adapter::Lora(a) => a.delta_weight(),
            Adapter::AdaLora(a) => a.delta_weight(),
            Adapter::Dora(a) => a.lora.delta_weight(),
        }
    }

    /// The merged weight for the base `weight` (`[d_in, d_out]`): `W + ΔW`, or DoRA's
    /// `(m/‖W + ΔW‖) ⊙ (W + ΔW)` (which keeps the norm for [`Adapter::unmerge_from`]).
    pub fn merge_into(&mut self, weight: Tensor<2>) -> Tensor<2> {
        match self {
            Adapter::Dora(a) => a.merge_into(weight),
            other => weight + other.delta_weight(),
        }
    }

    /// The base weight back from a merged one: `W' − ΔW`, or DoRA's `W'/(m/‖W + ΔW‖) − ΔW`.
    ///
    /// # Errors
    /// [`LoraError::MergeState`] for a DoRA adapter that was not merged.
    pub fn unmerge_from(&mut self, merged: Tensor<2>, path: &str) -> Result<Tensor<2>, LoraError> {
        match self {
            Adapter::Dora(a) => a.unmerge_from(merged, path),
            other => Ok(merged - other.delta_weight()),
        }
    }

    /// What merging changes in the base `weight`: `ΔW`, or DoRA's `W' − W` (for measuring
    /// re-quantization).
    pub fn effective_delta(&self, weight: &Tensor<2>) -> Tensor<2> {
        match self {
            Adapter::Dora(a) => {
                let norm = crate::dora::weight_norm(weight, &a.lora);
                let factor = a.magnitude.val().detach() / norm;
                (weight.clone() + a.lora.delta_weight()) * factor - weight.clone()
            }
            other => other.delta_weight(),
        }
    }

    /// `(d_in, d_out)` of the layer the adapter fits.
    pub fn dims(&self) -> (usize, usize) {
        let (a, b) = match self {
            Adapter::Lora(a) | Adapter::Dora(DoraAdapter { lora: a, .. }) => (&a.lora_a, &a.lora_b),
            Adapter::AdaLora(a) => (&a.lora_a, &a.lora_b),
        };
        let [d_in, _] = a.shape().dims();
        let [_, d_out] = b.shape().dims();
        (d_in, d_out)
    }

    /// The rank the adapter holds now: LoRA's `r`; AdaLoRA's triplet count (`init_r` while
    /// training, the kept count after loading a pruned adapter).
    pub fn rank(&self) -> usize {
        match self {
            Adapter::Lora(a) => a.r,
            Adapter::AdaLora(a) => a.r,
            Adapter::Dora(a) => a.lora.r,
        }
    }

    /// The factor the update is multiplied by (`lora_alpha / r`, `/ √r` with rsLoRA, or
    /// AdaLoRA's `lora_alpha / (init_r + 1e-5)`).
    pub fn scaling(&self) -> f64 {
        match self {
            Adapter::Lora(a) => a.scaling,
            Adapter::AdaLora(a) => a.scaling,
            Adapter::Dora(a) => a.lora.scaling,
        }
    }

    /// Number of trainable values: `r·(d_in + d_out)` for LoRA, `r·(d_in + d_out + 1)` for
    /// AdaLoRA, `r·(d_in + d_out) + d_out` for DoRA.
    pub fn num_trainable(&self) -> usize {
        match self {
            Adapter::Lora(a) => a.num_trainable(),
            Adapter::AdaLora(a) => a.num_trainable(),
            Adapter::Dora(a) => a.num_trainable(),
        }
    }

    /// The ids of the trainable tensors, in a fixed order (`A, B`, `Q, λ, P` or `A, B, m`):
    /// what gradient clipping sums over and what a training checkpoint records so the optimizer
    /// state (keyed by id) finds its tensors again after a restart.
    pub fn param_ids(&self) -> Vec<ParamId> {
        match self {
            Adapter::Lora(a) => vec![a.lora_a.id, a.lora_b.id],
            Adapter::AdaLora(a) => vec![a.lora_a.id, a.lora_e.id, a.lora_b.id],
            Adapter::Dora(a) => vec![a.lora.lora_a.id, a.lora.lora_b.id, a.magnitude.id],
        }
    }

    /// The ids LoRA+ trains at `loraplus_lr_ratio` × the learning rate: PEFT's
    /// `create_loraplus_optimizer` puts every parameter named `lora_B` and every 1-D parameter
    /// (DoRA's `lora_magnitude_vector`) in that group; `lora_A` and AdaLoRA's `lora_E` (`[r, 1]`
    /// in PEFT) keep the base rate.
    pub fn loraplus_ids(&self) -> Vec<ParamId> {
        match self {
            Adapter::Lora(a) => vec![a.lora_b.id],
            Adapter::AdaLora(a) => vec![a.lora_b.id],
            Adapter::Dora(a) => vec![a.lora.lora_b.id, a.magnitude.id],
        }
    }

    /// Gives the trainable tensors the ids `ids` (in [`Adapter::param_ids`]' order); returns
    /// `false`, changing nothing, when the count does not fit this kind of adapter.
    pub fn set_param_ids(&mut self, ids: &[ParamId]) -> bool {
        match (self, ids) {
            (Adapter::Lora(a), &[ia, ib]) => {
                (a.lora_a.id, a.lora_b.id) = (ia, ib);
                true
            }
            (Adapter::AdaLora(a), &[ia, ie, ib]) => {
                (a.lora_a.id, a.lora_e.id, a.lora_b.id) = (ia, ie, ib);
                true
            }
            (Adapter::Dora(a), &[ia, ib, im]) => {
                (a.lora.lora_a.id, a.lora.lora_b.id, a.magnitude.id) = (ia, ib, im);
                true
            }
            _ => false,
        }
    }

    /// The LoRA adapter, if this is one (not DoRA: see [`Adapter::lora_factors`]).
    pub fn as_lora(&self) -> Option<&LoraAdapter> {
        match self {
            Adapter::Lora(a) => Some(a),
            _ => None,
        }
    }

    /// LoRA's factors `A`, `B` (and scaling): those of a LoRA adapter or of a DoRA adapter's
    /// direction; `None` for AdaLoRA.
    pub fn lora_factors(&self) -> Option<&LoraAdapter> {
        match self {
            Adapter::Lora(a) | Adapter::Dora(DoraAdapter { lora: a, .. }) => Some(a),
            Adapter::AdaLora(_) => None,
        }
    }

    /// The AdaLoRA adapter, if this is one.
    pub fn as_adalora(&self) -> Option<&AdaLoraAdapter> {
        match self {
            Adapter::AdaLora(a) => Some(a),
            _ => None,
        }
    }

    /// The DoRA adapter, if this is one.
    pub fn as_dora(&self) -> Option<&DoraAdapter> {
        match self {
            Adapter::Dora(a) => Some(a),
            _ => None,
        }
    }

    /// Mutable access to the LoRA adapter, if this is one.
    pub fn as_lora_mut(&mut self) -> Option<&mut LoraAdapter> {
        match self {
            Adapter::Lora(a) => Some(a),
            _ => None,
        }
    }

    /// Mutable access to the AdaLoRA adapter, if this is one.
    pub fn as_adalora_mut(&mut self) -> Option<&mut AdaLoraAdapter> {
        match self {
            Adapter::AdaLora(a) => Some(a),
            _ => None,
        }
    }

    /// Mutable access to the DoRA adapter, if this is one.
    pub fn as_dora_mut(&mut self) -> Option<&mut DoraAdapter> {
        match self {
            Adapter::Dora(a) => Some(a),
            _ => None,
        }
    }
}

impl From<LoraAdapter> for Adapter {
    fn from(a: LoraAdapter) -> Self {
        Adapter::Lora(a)
    }
}

impl From<AdaLoraAdapter> for Adapter {
    fn from(a: AdaLoraAdapter) -> Self {
        Adapter::AdaLora(a)
    }
}

impl From<DoraAdapter> for Adapter {
    fn from(a: DoraAdapter) -> Self {
        Adapter::Dora(a)
    }
}
