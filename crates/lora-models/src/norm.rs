//! Root-mean-square layer norm (Zhang & Sennrich 2019), with the gain applied as Llama applies it
//! (`x̂ · w`) or as Gemma does (`x̂ · (1 + w)`, transformers `Gemma3RMSNorm`).

use burn::module::{Module, Param};
use burn::tensor::Tensor;

use crate::family::NormGain;

/// `y = x / √(mean(x²) + ε) · g`, with `g = w` or `g = 1 + w` ([`NormGain`]).
#[derive(Module, Debug)]
pub struct RmsNorm {
    /// Learned gain `w`, `[D]` (or `[E]` for a per-head q/k norm).
    pub weight: Param<Tensor<1>>,
    /// ε added to the mean square.
    #[module(skip)]
    pub eps: f64,
    /// How `w` enters: `x̂ · w` or `x̂ · (1 + w)`.
    #[module(skip)]
    pub gain: NormGain,
}

impl RmsNorm {
    /// Normalizes over the last dimension.
    ///
    /// # Shapes
    /// `x`: `[..., D]` → `[..., D]`
    pub fn forward<const N: usize>(&self, x: Tensor<N>) -> Tensor<N> {
        let gain = match self.gain {
            NormGain::Weight => self.weight.val(),
            NormGain::OnePlusWeight => self.weight.val().add_scalar(1.0),
        };
        // One fused op (flex: row-parallel, one pass each way) rather than six tensor ops.
        lora_core::fused::rms_norm(x, gain, self.eps)
    }
}
