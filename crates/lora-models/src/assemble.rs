//! Putting a [`Llama`] together from a [`LlamaConfig`]: which module goes where, under which
//! Hugging Face name, with which shape. The weights come from a [`WeightSource`] — a checkpoint
//! (`checkpoint/build.rs`) or random values (`init.rs`) — so the structure is written once.

use burn::module::Param;
use burn::tensor::{Device, Tensor};
use lora_core::LoraLinear;

use crate::config::LlamaConfig;
use crate::error::ModelError;
use crate::family::NormGain;
use crate::llama::{
    Attention, DecoderLayer, Embedding, Llama, LlamaModel, Mlp, RmsNorm, RotaryEmbedding,
    SandwichNorms,
};

/// Where the weights of a model being assembled come from. Names are Hugging Face names
/// (`model.layers.0.self_attn.q_proj`), shapes PyTorch's (`[out, in]`).
pub trait WeightSource {
    /// The device the weights go to.
    fn device(&self) -> &Device;

    /// A linear layer from `{prefix}.weight` (`[d_out, d_in]`) and, if `bias`, `{prefix}.bias`.
    ///
    /// # Errors
    /// A missing or misshaped tensor.
    fn linear(
        &mut self,
        prefix: &str,
        d_in: usize,
        d_out: usize,
        bias: bool,
    ) -> Result<LoraLinear, ModelError>;

    /// A `[len]` vector (a norm's gain) named `name`; `neutral` is the value that leaves the
    /// input unchanged (1 for `x̂·w`, 0 for `x̂·(1 + w)`), for sources that make up weights.
    ///
    /// # Errors
    /// A missing or misshaped tensor.
    fn vector(&mut self, name: &str, len: usize, neutral: f32) -> Result<Tensor<1>, ModelError>;

    /// The token embedding `model.embed_tokens.weight`, `[V, D]`.
    ///
    /// # Errors
    /// A missing or misshaped tensor.
    fn embedding(&mut self, vocab: usize, d_model: usize) -> Result<Tensor<2>, ModelError>;

    /// The output head tied to `embed` (what [`WeightSource::embedding`] returned): a contiguous
    /// `[D, V]` copy of its transpose, so a merged adapter on the head leaves the input embedding
    /// as it was. (A transposed view would be copied into contiguous memory by the matmul at
    /// every forward; measured: most of decode time.)
    fn tied_head(&mut self, embed: &Tensor<2>) -> LoraLinear;
}

fn frozen<const D: usize>(t: Tensor<D>) -> Param<Tensor<D>> {
    Param::from_tensor(t).set_require_grad(false)
}

fn norm(
    src: &mut impl WeightSource,
    name: &str,
    dim: usize,
    config: &LlamaConfig,
) -> Result<RmsNorm, ModelError> {
    let gain = config.variant.norm_gain;
    let neutral = match gain {
        NormGain::Weight => 1.0,
        NormGain::OnePlusWeight => 0.0,
    };
    Ok(RmsNorm {
        weight: frozen(src.vector(&format!("{name}.weight"), dim, neutral)?),
        eps: config.rms_norm_eps,
        gain,
    })
}

/// Builds the model `config` describes, every weight from `src`, every parameter frozen.
///
/// # Errors
/// Whatever `src` reports for a missing or misshaped tensor.
pub fn assemble(config: &LlamaConfig, src: &mut impl WeightSource) -> Result<Llama, ModelError> {
    let (d, h, k, e, f, v) = (
        config.d_model,
        config.n_heads,
        config.n_kv_heads,
        config.head_dim,
        config.d_ff,
        config.vocab_size,
    );
    let var = config.variant;
    let embed = src.embedding(v, d)?;
    let mut layers = Vec::with_capacity(config.n_layers);
    for i in 0..config.n_layers {
        let p = format!("model.layers.{i}");
        let a = format!("{p}.self_attn");
        let (qkv_b, o_b, mlp_b) = (var.qkv_bias, var.o_bias, var.mlp_bias);
        let qk_norm = |src: &mut _, which: &str| {
            if var.qk_norm {
                norm(src, &format!("{a}.{which}"), e, config).map(Some)
            } else {
                Ok(None)
            }
        };
        let self_attn = Attention {
            q_proj: src.linear(&format!("{a}.q_proj"), d, h * e, qkv_b)?,
            k_proj: src.linear(&format!("{a}.k_proj"), d, k * e, qkv_b)?,
            v_proj: src.linear(&format!("{a}.v_proj"), d, k * e, qkv_b)?,
            o_proj: src.linear(&format!("{a}.o_proj"), h * e, d, o_b)?,
            q_norm: qk_norm(src, "q_norm")?,
            k_norm: qk_norm(src, "k_norm")?,
            n_heads: h,
            n_kv_heads: k,
            head_dim: e,
            scale: config.attention_scale(),
            sliding_window: config
                .sliding_window
                .as_ref()
                .filter(|w| w.applies_to(i))
                .map(|w| w.size),
        };
        let sandwich = if var.sandwich_norms {
            Some(SandwichNorms {
                pre_feedforward_layernorm: norm(
                    src,
                    &format!("{p}.pre_feedforward_layernorm"),
                    d,
                    config,
                )?,
                post_feedforward_layernorm: norm(
                    src,
                    &format!("{p}.post_feedforward_layernorm"),
                    d,
                    config,
                )?,
            })
        } else {
            None
        };
        layers.push(DecoderLayer {
            input_layernorm: norm(src, &format!("{p}.input_layernorm"), d, config)?,
            self_attn,
            post_attention_layernorm: norm(
                src,
                &format!("{p}.post_attention_layernorm"),
                d,
                config,
            )?,
            mlp: Mlp {
                gate_proj: src.linear(&format!("{p}.mlp.gate_proj"), d, f, mlp_b)?,
                up_proj: src.linear(&format!("{p}.mlp.up_proj"), d, f, mlp_b)?,
                down_proj: src.linear(&format!("{p}.mlp.down_proj"), f, d, mlp_b)?,
                activation: var.activation,
            },
            sandwich,
        });
    }
    let final_norm = norm(src, "model.norm", d, config)?;
    let lm_head = if config.tie_word_embeddings {
        src.tied_head(&embed)
    } else {
        src.linear("lm_head", d, v, false)?
    };
    let device = src.device().clone();
    let rope = |theta| RotaryEmbedding::new(e, config.max_seq_len, theta, &device);
    Ok(Llama {
        model: LlamaModel {
            embed_tokens: Embedding {
                weight: frozen(embed),
                // transformers: `torch.tensor(hidden_size**0.5)`, an f32 scalar.
                scale: var.scale_embeddings.then(|| (d as f64).sqrt() as f32),
            },
            layers,
            norm: final_norm,
            rotary_emb: rope(config.rope_theta),
            rotary_emb_local: config
                .sliding_window
                .as_ref()
                .and_then(|w| w.rope_theta)
                .map(rope),
        },
        lm_head,
        config: config.clone(),
    })
}
