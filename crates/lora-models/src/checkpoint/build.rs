//! Building a [`Llama`] from named weights: every tensor the model needs must be present with
//! the right shape, and every tensor in the checkpoint must be used. No silent partial loads.
//!
//! Streaming: the tensors are [`LazyTensor`]s, decoded one at a time as [`assemble`] asks for
//! them and converted at once to the weights' [`Storage`] (f32, bf16, f16, NF4;
//! `checkpoint/convert.rs`), so the load holds the model built so far plus one tensor in f32.

use std::collections::BTreeMap;
use std::path::PathBuf;

use burn::tensor::{Device, Tensor};
use lora_core::LoraLinear;
use lora_core::tensor_io::HostTensor;

use crate::assemble::{WeightSource, assemble};
use crate::checkpoint::convert::{self, Storage};
use crate::checkpoint::lazy::LazyTensor;
use crate::config::LlamaConfig;
use crate::error::ModelError;
use crate::llama::Llama;

/// Weights by Hugging Face name, in PyTorch layout (a linear weight is `[out, in]`), not
/// decoded yet.
#[derive(Debug)]
pub struct NamedWeights<'a> {
    /// The file (or directory) the weights came from, for error messages.
    pub source: PathBuf,
    /// Tensors by name.
    pub tensors: BTreeMap<String, LazyTensor<'a>>,
}

impl NamedWeights<'_> {
    /// Decodes the tensor `name` after checking its shape.
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
        let t = t.load()?;
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
struct Loader<'a> {
    weights: NamedWeights<'a>,
    storage: Storage,
    device: Device,
    /// Whether the head is tied to the embedding: then it is made from the embedding's values
    /// while they are decoded (never a second f32 copy kept around).
    tied: bool,
    /// The tied head, made with the embedding.
    head: Option<LoraLinear>,
}

impl WeightSource for Loader<'_> {
    fn device(&self) -> &Device {
        &self.device
    }

    /// `[out, in]` → burn `[in, out]` (or NF4 blocks of `[out, in]`): the one place this
    /// transpose happens. transformers keeps `lm_head` out of NF4 (`llm_int8_skip_modules`);
    /// so do we.
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
        let weight = convert::linear_weight(w, &self.storage, prefix != "lm_head", &self.device)?;
        let b = if bias {
            let b = self.weights.take(&format!("{prefix}.bias"), &[d_out])?;
            Some(b.into_tensor::<1>(&self.device))
        } else {
            None
        };
        Ok(LoraLinear::from_base(weight, b))
    }

    fn vector(&mut self, name: &str, len: usize, _neutral: f32) -> Result<Tensor<1>, ModelError> {
        Ok(self
            .weights
            .take(name, &[len])?
            .into_tensor::<1>(&self.device))
    }

    fn embedding(&mut self, vocab: usize, d_model: usize) -> Result<Tensor<2>, ModelError> {
        let host = self
            .weights
            .take("model.embed_tokens.weight", &[vocab, d_model])?;
        let dtype = self.storage.dtype;
        if self.tied {
            let head = convert::dense_transposed(&host, dtype, &self.device);
            self.head = Some(LoraLinear::new(head, None));
        }
        Ok(convert::dense::<2>(host, dtype, &self.device))
    }

    fn tied_head(&mut self, embed: &Tensor<2>) -> LoraLinear {
        // Some tied checkpoints still carry a copy of the head; it must equal the embedding.
        self.weights.tensors.remove("lm_head.weight");
        match self.head.take() {
            Some(head) => head,
            None => LoraLinear::new(embed.clone().transpose(), None),
        }
    }
}

/// Builds the model from `ckpt`, consuming it, every weight in f32.
///
/// # Errors
/// [`ModelError::Tensor`] for a missing, misshaped or non-finite tensor, or for tensors left
/// unused (named).
pub fn build_llama(
    config: &LlamaConfig,
    ckpt: NamedWeights<'_>,
    device: &Device,
) -> Result<Llama, ModelError> {
    build_llama_as(config, ckpt, &Storage::default(), device)
}

/// Builds the model from `ckpt`, consuming it, every weight stored as `storage` says.
///
/// # Errors
/// As [`build_llama`]; [`ModelError::Lora`] for a bad NF4 block size.
pub fn build_llama_as(
    config: &LlamaConfig,
    ckpt: NamedWeights<'_>,
    storage: &Storage,
    device: &Device,
) -> Result<Llama, ModelError> {
    let mut loader = Loader {
        weights: ckpt,
        storage: *storage,
        device: device.clone(),
        tied: config.tie_word_embeddings,
        head: None,
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
