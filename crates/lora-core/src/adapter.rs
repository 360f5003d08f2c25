//! [`Adapter`]: the trainable update one linear layer carries — one enum, so that every
//! operation on "the adapter" (forward, the dense update for merging, counting, the parameters
//! the optimizer and the checkpoint see) dispatches in this one place.
//!
//! | variant | update | source |
//! |---|---|---|
//! | [`Adapter::Lora`] | `ΔW = (lora_alpha / r) · A·B` | [`crate::lora`]; PEFT `tuners/lora/layer.py` |
//! | [`Adapter::AdaLora`] | `ΔW = lora_alpha / (init_r + 1e-5) · (Qᵀ ⊙ λ)·Pᵀ` | [`crate::adalora`]; PEFT `tuners/adalora/layer.py` |
//!
//! A new kind of adapter (DoRA, …) is one more variant here and one more file beside
//! [`crate::lora`]; the layer ([`crate::LoraLinear`]) does not change.

use burn::module::{Module, ParamId};
use burn::tensor::Tensor;

use crate::adalora::AdaLoraAdapter;
use crate::lora::LoraAdapter;

/// The update of one adapted linear layer, in burn layout (`[d_in, ·]` / `[·, d_out]`).
#[derive(Module, Debug)]
pub enum Adapter {
    /// LoRA: `A` `[d_in, r]`, `B` `[r, d_out]`.
    Lora(LoraAdapter),
    /// AdaLoRA's SVD form: `Qᵀ` `[d_in, r]`, `λ` `[1, r]`, `Pᵀ` `[r, d_out]`.
    AdaLora(AdaLoraAdapter),
}

impl Adapter {
    /// The adapter path's output, added to the base layer's: `scaling · (dropout(x)·A)·B` for
    /// LoRA, `scaling · (dropout(x)·(Qᵀ ⊙ λ))·Pᵀ` for AdaLoRA.
    ///
    /// # Shapes
    /// `x`: `[..., d_in]` → `[..., d_out]`
    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        match self {
            Adapter::Lora(a) => a.forward(x),
            Adapter::AdaLora(a) => a.forward(x),
        }
    }

    /// The dense update `ΔW`, `[d_in, d_out]`, detached from the autodiff graph and without
    /// dropout (merging never depends on the training mode).
    pub fn delta_weight(&self) -> Tensor<2> {
        match self {
            Adapter::Lora(a) => a.delta_weight(),
            Adapter::AdaLora(a) => a.delta_weight(),
        }
    }

    /// `(d_in, d_out)` of the layer the adapter fits.
    pub fn dims(&self) -> (usize, usize) {
        let (a, b) = match self {
            Adapter::Lora(a) => (&a.lora_a, &a.lora_b),
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
        }
    }

    /// The factor the update is multiplied by (`lora_alpha / r`, `/ √r` with rsLoRA, or
    /// AdaLoRA's `lora_alpha / (init_r + 1e-5)`).
    pub fn scaling(&self) -> f64 {
        match self {
            Adapter::Lora(a) => a.scaling,
            Adapter::AdaLora(a) => a.scaling,
        }
    }

    /// Number of trainable values: `r·(d_in + d_out)` for LoRA, `r·(d_in + d_out + 1)` for
    /// AdaLoRA.
    pub fn num_trainable(&self) -> usize {
        match self {
            Adapter::Lora(a) => a.num_trainable(),
            Adapter::AdaLora(a) => a.num_trainable(),
        }
    }

    /// The ids of the trainable tensors, in a fixed order (`A, B` or `Q, λ, P`): what gradient
    /// clipping sums over and what a training checkpoint records so the optimizer state
    /// (keyed by id) finds its tensors again after a restart.
    pub fn param_ids(&self) -> Vec<ParamId> {
        match self {
            Adapter::Lora(a) => vec![a.lora_a.id, a.lora_b.id],
            Adapter::AdaLora(a) => vec![a.lora_a.id, a.lora_e.id, a.lora_b.id],
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
            _ => false,
        }
    }

    /// The LoRA adapter, if this is one.
    pub fn as_lora(&self) -> Option<&LoraAdapter> {
        match self {
            Adapter::Lora(a) => Some(a),
            Adapter::AdaLora(_) => None,
        }
    }

    /// The AdaLoRA adapter, if this is one.
    pub fn as_adalora(&self) -> Option<&AdaLoraAdapter> {
        match self {
            Adapter::AdaLora(a) => Some(a),
            Adapter::Lora(_) => None,
        }
    }

    /// Mutable access to the LoRA adapter, if this is one.
    pub fn as_lora_mut(&mut self) -> Option<&mut LoraAdapter> {
        match self {
            Adapter::Lora(a) => Some(a),
            Adapter::AdaLora(_) => None,
        }
    }

    /// Mutable access to the AdaLoRA adapter, if this is one.
    pub fn as_adalora_mut(&mut self) -> Option<&mut AdaLoraAdapter> {
        match self {
            Adapter::AdaLora(a) => Some(a),
            Adapter::Lora(_) => None,
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
