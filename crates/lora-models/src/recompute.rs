//! Decoder layers as [`Recompute`] blocks: with `--gradient-checkpointing` (a device whose
//! autodiff strategy is burn's `gradient_checkpointing()`), [`LlamaModel::forward`] keeps only
//! each layer's input for the backward pass and runs the layer again there
//! ([`lora_core::recompute`]), as transformers' `gradient_checkpointing_enable()` does per
//! decoder layer.
//!
//! [`LlamaModel::forward`]: crate::llama::LlamaModel::forward

use std::sync::Arc;

use burn::backend::{DispatchTensor, GradientCheckpointingStrategy};
use burn::module::{Module, ModuleVisitor, Param};
use burn::tensor::{Bool, Distribution, Int, Tensor};
use lora_core::recompute::{Recompute, checkpointed};

use crate::llama::{DecoderLayer, RotaryEmbedding};

/// One decoder layer with what its forward needs besides the input.
#[derive(Debug)]
struct LayerBlock {
    /// The layer as trained (its adapters tracked).
    layer: DecoderLayer,
    /// The same layer without autodiff, for the forward that records nothing.
    untracked: DecoderLayer,
    rope: RotaryEmbedding,
    untracked_rope: RotaryEmbedding,
    mask: Option<Tensor<3, Bool>>,
}

impl Recompute for LayerBlock {
    fn forward(&self, x: Tensor<3>, seed: u64) -> Tensor<3> {
        x.device().seed(seed);
        self.layer.forward(x, &self.rope, self.mask.as_ref(), None)
    }

    fn forward_untracked(&self, x: Tensor<3>, seed: u64) -> Tensor<3> {
        x.device().seed(seed);
        let mask = self.mask.clone().map(Tensor::inner);
        self.untracked
            .forward(x, &self.untracked_rope, mask.as_ref(), None)
    }

    fn param_grads(
        &self,
        grads: &burn::tensor::Gradients,
    ) -> Vec<(DispatchTensor, DispatchTensor)> {
        struct Collect<'a> {
            grads: &'a burn::tensor::Gradients,
            out: Vec<(DispatchTensor, DispatchTensor)>,
        }
        impl ModuleVisitor for Collect<'_> {
            fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
                if !param.is_require_grad() {
                    return;
                }
                let value = param.val();
                if let Some(grad) = value.grad(self.grads) {
                    self.out.push((value.into_dispatch(), grad.into_dispatch()));
                }
            }
        }
        let mut c = Collect {
            grads,
            out: Vec::new(),
        };
        self.layer.visit(&mut c);
        c.out
    }
}

/// Whether `x` lives on a device with burn's gradient checkpointing: then the layers run as
/// recomputed blocks.
pub(crate) fn wants_recompute(x: &Tensor<3>) -> bool {
    x.gradient_checkpointing_strategy() == Some(GradientCheckpointingStrategy::Balanced)
}

/// `layer(x)` as a recomputed block. The layer's randomness (LoRA dropout) is drawn from a seed
/// taken from the device's generator, so the recomputation draws the same masks; the masks are
/// therefore not the ones a run without checkpointing draws (the same distribution, other
/// samples). Without dropout the values are identical.
pub(crate) fn recomputed_layer(
    layer: &DecoderLayer,
    x: Tensor<3>,
    rope: &RotaryEmbedding,
    mask: Option<&Tensor<3, Bool>>,
) -> Tensor<3> {
    let seed = Tensor::<1, Int>::random([1], Distribution::Uniform(0.0, 2147483647.0), &x.device())
        .into_scalar::<i64>() as u64;
    let block = LayerBlock {
        layer: layer.clone(),
        untracked: layer.clone().valid(),
        rope: rope.clone(),
        untracked_rope: rope.clone().valid(),
        mask: mask.cloned(),
    };
    checkpointed(x, Arc::new(block), seed)
}
