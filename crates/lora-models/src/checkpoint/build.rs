//! Building a [`Llama`] from named weights: every tensor the model needs must be present with
//! the right shape, and every tensor in the checkpoint must be used. No silent partial loads.

use std::collections::BTreeMap;
use std::path::PathBuf;

use burn::tensor::{Device, Tensor};
use lora_core::LoraLinear;
use lora_core::tensor_io::HostTensor;

use crate::assemble::{WeightSource, assemble};
use crate::config::LlamaConfig;
use crate::error::ModelError;
use crate::llama::Llama;

/// Weights by Hugging Face name, in PyTorch layout (a linear weight is `[out, in]`).
#[derive(Debug)]
pub struct NamedWeights {
    /// The file (or directory) the weights came from, for error messages.
    pub source: PathBuf,
    /// Tensors by name.
    pub tensors: BTreeMap<String, HostTensor>,
}

impl NamedWeights {
    fn take(&mut self, name: &str, shape: &[usize]) -> Result<HostTensor, ModelError> {
        let t = self
            .tensors
            .remove(name)
            .ok_or_else(|| ModelError::Tensor {
                path: self.source.clone(),
                name: name.into(),
                message: format!("missing (the model needs it with shape {shape:?})"),
            })?;
        if t.shape != shape {
            return Err(ModelError::Tensor {
                path: self.source.clone(),
                name: name.into(),
                message: format!("shape {:?}, expected {shape:?}", t.shape),
            });
        }
        // Non-finite weights would give NaN logits much later; refuse them where they enter.
        t.check_finite().map_err(|message| ModelError::Tensor {
            path: self.source.clone(),
            name: name.into(),
            message: format!("{message}: the checkpoint is corrupt"),
        })?;
        Ok(t)
    }
}

/// [`NamedWeights`] being consumed onto a device.
struct Loader {
    weights: NamedWeights,
    device: Device,
    /// The embedding's host copy, kept for a tied head.
    embed: Option<HostTensor>,
}

impl WeightSource for Loader {
    fn device(&self) -> &Device {
        &self.device
    }

    /// `[out, in]` → burn `[in, out]`: the one place this transpose happens.
    fn linear(
        &mut self,
        prefix: &str,
        d_in: usize,
        d_out: usize,
        bias: bool,
    ) -> Result<LoraLinear, ModelError> {
        let w = self
            .weights
            .take(&format!("{prefix}.weight"), &[d_out, d_in])?;
        let b = if bias {
            let b = self.weights.take(&format!("{prefix}.bias"), &[d_out])?;
            Some(b.to_tensor::<1>(&self.device))
        } else {
            None
        };
        Ok(LoraLinear::new(
            w.transposed_2d().to_tensor::<2>(&self.device),
            b,
        ))
    }

    fn vector(&mut self, name: &str, len: usize, _neutral: f32) -> Result<Tensor<1>, ModelError> {
        Ok(self
            .weights
            .take(name, &[len])?
            .to_tensor::<1>(&self.device))
    }

    fn embedding(&mut self, vocab: usize, d_model: usize) -> Result<Tensor<2>, ModelError> {
        let host = self
            .weights
            .take("model.embed_tokens.weight", &[vocab, d_model])?;
        let t = host.to_tensor::<2>(&self.device);
        self.embed = Some(host);
        Ok(t)
    }

    fn tied_head(&mut self, embed: &Tensor<2>) -> LoraLinear {
        // Some tied checkpoints still carry a copy of the head; it must equal the embedding.
        self.weights.tensors.remove("lm_head.weight");
        match self.embed.take() {
            Some(host) => LoraLinear::new(host.transposed_2d().to_tensor::<2>(&self.device), None),
            None => LoraLinear::new(embed.clone().transpose(), None),
        }
    }
}

/// Builds the model from `ckpt`, consuming it.
///
/// # Errors
/// [`ModelError::Tensor`] for a missing, misshaped or non-finite tensor, or for tensors left
/// unused (named).
pub fn build_llama(
    config: &LlamaConfig,
    ckpt: NamedWeights,
    device: &Device,
) -> Result<Llama, ModelError> {
    let mut loader = Loader {
        weights: ckpt,
        device: device.clone(),
        embed: None,
    };
    let model = assemble(config, &mut loader)?;
    let left = &loader.weights;
    if let Some(name) = left.tensors.keys().next() {
        return Err(ModelError::Tensor {
            path: left.source.clone(),
            name: name.clone(),
            message: format!(
                "unused: the {} model has no place for it ({} unused tensors in all)",
                config.family,
                left.tensors.len()
            ),
        });
    }
    Ok(model)
}
