//! Building a [`Llama`] from named weights: every tensor the model needs must be present with
//! the right shape, and every tensor in the checkpoint must be used. No silent partial loads.

use std::collections::BTreeMap;
use std::path::PathBuf;

use burn::module::Param;
use burn::tensor::{Device, Tensor};
use lora_core::LoraLinear;
use lora_core::tensor_io::HostTensor;

use crate::config::LlamaConfig;
use crate::error::ModelError;
use crate::llama::{
    Attention, DecoderLayer, Embedding, Llama, LlamaModel, Mlp, RmsNorm, RotaryEmbedding,
};

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
        Ok(t)
    }

    fn frozen<const D: usize>(t: HostTensor, device: &Device) -> Param<Tensor<D>> {
        Param::from_tensor(t.to_tensor::<D>(device)).set_require_grad(false)
    }

    /// A linear layer from `{prefix}.weight` (`[out, in]` → burn `[in, out]`, the one place
    /// this transpose happens) and, if `bias`, `{prefix}.bias`.
    fn linear(
        &mut self,
        prefix: &str,
        d_in: usize,
        d_out: usize,
        bias: bool,
        device: &Device,
    ) -> Result<LoraLinear, ModelError> {
        let w = self.take(&format!("{prefix}.weight"), &[d_out, d_in])?;
        let b = if bias {
            Some(
                self.take(&format!("{prefix}.bias"), &[d_out])?
                    .to_tensor::<1>(device),
            )
        } else {
            None
        };
        Ok(LoraLinear::new(w.transposed_2d().to_tensor::<2>(device), b))
    }

    fn norm(
        &mut self,
        name: &str,
        d: usize,
        eps: f64,
        device: &Device,
    ) -> Result<RmsNorm, ModelError> {
        Ok(RmsNorm {
            weight: Self::frozen(self.take(name, &[d])?, device),
            eps,
        })
    }
}

/// Options that are not part of the model's shape.
#[derive(Clone, Copy, Debug, Default)]
pub struct BuildOptions {
    /// Whether q/k/v/o projections carry biases (`attention_bias`).
    pub attention_bias: bool,
    /// Whether the MLP projections carry biases (`mlp_bias`).
    pub mlp_bias: bool,
}

/// Builds the model from `ckpt`, consuming it.
///
/// # Errors
/// [`ModelError::Tensor`] for a missing or misshaped tensor, or for tensors left unused (named).
pub fn build_llama(
    config: &LlamaConfig,
    mut ckpt: NamedWeights,
    opts: BuildOptions,
    device: &Device,
) -> Result<Llama, ModelError> {
    let (d, h, k, e, f, v) = (
        config.d_model,
        config.n_heads,
        config.n_kv_heads,
        config.head_dim,
        config.d_ff,
        config.vocab_size,
    );
    let eps = config.rms_norm_eps;
    let embed_host = ckpt.take("model.embed_tokens.weight", &[v, d])?;
    let embed = embed_host.to_tensor::<2>(device);
    let mut layers = Vec::with_capacity(config.n_layers);
    for i in 0..config.n_layers {
        let p = format!("model.layers.{i}");
        let (ab, mb) = (opts.attention_bias, opts.mlp_bias);
        layers.push(DecoderLayer {
            input_layernorm: ckpt.norm(&format!("{p}.input_layernorm.weight"), d, eps, device)?,
            self_attn: Attention {
                q_proj: ckpt.linear(&format!("{p}.self_attn.q_proj"), d, h * e, ab, device)?,
                k_proj: ckpt.linear(&format!("{p}.self_attn.k_proj"), d, k * e, ab, device)?,
                v_proj: ckpt.linear(&format!("{p}.self_attn.v_proj"), d, k * e, ab, device)?,
                o_proj: ckpt.linear(&format!("{p}.self_attn.o_proj"), h * e, d, ab, device)?,
                n_heads: h,
                n_kv_heads: k,
                head_dim: e,
            },
            post_attention_layernorm: ckpt.norm(
                &format!("{p}.post_attention_layernorm.weight"),
                d,
                eps,
                device,
            )?,
            mlp: Mlp {
                gate_proj: ckpt.linear(&format!("{p}.mlp.gate_proj"), d, f, mb, device)?,
                up_proj: ckpt.linear(&format!("{p}.mlp.up_proj"), d, f, mb, device)?,
                down_proj: ckpt.linear(&format!("{p}.mlp.down_proj"), f, d, mb, device)?,
            },
        });
    }
    let norm = ckpt.norm("model.norm.weight", d, eps, device)?;
    let lm_head = if config.tie_word_embeddings {
        // Some tied checkpoints still carry a copy of the head; it must equal the embedding.
        ckpt.tensors.remove("lm_head.weight");
        // A contiguous `[D, V]` copy: a transposed view of the embedding would be copied into
        // contiguous memory by the matmul at every forward (measured: most of decode time).
        LoraLinear::new(embed_host.transposed_2d().to_tensor::<2>(device), None)
    } else {
        ckpt.linear("lm_head", d, v, false, device)?
    };
    if let Some(name) = ckpt.tensors.keys().next() {
        return Err(ModelError::Tensor {
            path: ckpt.source.clone(),
            name: name.clone(),
            message: format!(
                "unused: the model has no place for it ({} unused tensors in all)",
                ckpt.tensors.len()
            ),
        });
    }
    Ok(Llama {
        model: LlamaModel {
            embed_tokens: Embedding {
                weight: Param::from_tensor(embed).set_require_grad(false),
            },
            layers,
            norm,
            rotary_emb: RotaryEmbedding::new(e, config.max_seq_len, config.rope_theta, device),
        },
        lm_head,
        config: config.clone(),
    })
}
