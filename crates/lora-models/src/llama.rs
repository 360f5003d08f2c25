//! A Llama-style decoder, top to bottom as the architecture is described:
//! token embedding → N × (RMSNorm → grouped-query self-attention with RoPE → residual →
//! RMSNorm → SwiGLU MLP → residual) → RMSNorm → output head.
//!
//! Sources: Touvron et al. 2023 (LLaMA, arXiv:2302.13971) §2.2; RMSNorm (Zhang & Sennrich 2019);
//! RoPE (Su et al. 2021, arXiv:2104.09864) in the rotate-half form of transformers'
//! `models/llama/modeling_llama.py`; SwiGLU (Shazeer 2020); grouped-query attention
//! (Ainslie et al. 2023). Module paths equal the Hugging Face names
//! (`model.layers.{i}.self_attn.q_proj`, …) because LoRA adapters are keyed by them.
//!
//! The other families ([`crate::family`]) are this decoder with a few named options, each
//! marked where it acts: biases on q/k/v (Qwen2); a norm on each query/key head (`q_norm`,
//! `k_norm`: Qwen3, Gemma 3); a sliding attention window (Mistral, Gemma 3); and for Gemma 3
//! embeddings scaled by √D, the `1 + w` norm gain, a GELU-tanh gate and [`SandwichNorms`].
//!
//! # Shape legend
//! `B` batch · `T` new tokens · `S` attended tokens (cached + new) · `D` model width ·
//! `H` query heads · `K` key/value heads · `E` head width · `F` MLP width · `V` vocabulary.

use burn::module::{Module, Param};
use burn::tensor::module::embedding;
use burn::tensor::{Bool, DType, Device, Int, Tensor};
use lora_core::LoraLinear;
use lora_core::fused;

use crate::config::LlamaConfig;
use crate::family::Activation;
use crate::kv_cache::{KvCache, LayerCache};
pub use crate::left_padding::left_padded_causal_mask;
pub use crate::mask::{causal_mask, sliding_window_mask};
pub use crate::norm::RmsNorm;
pub use crate::rope::RotaryEmbedding;

/// Grouped-query self-attention: `H` query heads share `K` key/value heads.
#[derive(Module, Debug)]
pub struct Attention {
    /// `W_Q`, `[D, H·E]`.
    pub q_proj: LoraLinear,
    /// `W_K`, `[D, K·E]`.
    pub k_proj: LoraLinear,
    /// `W_V`, `[D, K·E]`.
    pub v_proj: LoraLinear,
    /// `W_O`, `[H·E, D]`.
    pub o_proj: LoraLinear,
    /// Qwen3, Gemma 3: RMSNorm over `E` on each query head before RoPE, `[E]`.
    pub q_norm: Option<RmsNorm>,
    /// Qwen3, Gemma 3: the same on each key head.
    pub k_norm: Option<RmsNorm>,
    /// `H`.
    #[module(skip)]
    pub n_heads: usize,
    /// `K`.
    #[module(skip)]
    pub n_kv_heads: usize,
    /// `E`.
    #[module(skip)]
    pub head_dim: usize,
    /// The factor on `Q·Kᵀ`: `1/√E`, or Gemma's `1/√query_pre_attn_scalar`.
    #[module(skip)]
    pub scale: f64,
    /// Mistral, Gemma 3: keys further back than this many positions are hidden (the layer then
    /// gets the sliding-window mask and, in Gemma 3, the local RoPE table); `None` = full context.
    #[module(skip)]
    pub sliding_window: Option<usize>,
}

impl Attention {
    /// `softmax(Q·Kᵀ·scale + mask)·V`, then the output projection. With a cache, the new
    /// keys/values are appended and the new queries attend to everything cached.
    ///
    /// `mask` is [`causal_mask`] (or [`sliding_window_mask`] for a sliding layer) for this call's
    /// `T`, `S` and cache offset, built once per forward by [`LlamaModel::forward`] and shared by
    /// the layers of its kind (`None` when nothing is masked).
    ///
    /// # Shapes
    /// - `x`: `[B, T, D]` → `[B, T, D]`
    /// - `mask`: `[1, G·T, S]` (the same for every row) or `[B, G·T, S]` (per row, for
    ///   left-padded prompts: [`left_padded_causal_mask`]), with `G = H/K`, `true` where a query
    ///   may not look
    pub fn forward(
        &self,
        x: Tensor<3>,
        rope: &RotaryEmbedding,
        mask: Option<&Tensor<3, Bool>>,
        cache: Option<&mut LayerCache>,
    ) -> Tensor<3> {
        let [b, t, _] = x.dims();
        let (h, k, e) = (self.n_heads, self.n_kv_heads, self.head_dim);
        let g = h / k; // query heads per key/value head
        let offset = cache.as_ref().map_or(0, |c| c.len());

        // Project and split into heads: [B, T, heads·E] → [B, T, heads, E].
        let q = self.q_proj.forward(x.clone()).reshape([b, t, h, e]);
        let key = self.k_proj.forward(x.clone()).reshape([b, t, k, e]);
        let value = self.v_proj.forward(x).reshape([b, t, k, e]).swap_dims(1, 2);
        // Qwen3 / Gemma 3: each head normalized over its E values, before RoPE.
        let q = match &self.q_norm {
            Some(norm) => norm.forward(q),
            None => q,
        };
        let key = match &self.k_norm {
            Some(norm) => norm.forward(key),
            None => key,
        };

        // Positions enter through the rotation of queries and keys only; the rotation also
        // brings the heads before the positions: [B, T, heads, E] → [B, heads, T, E]. The scale
        // goes on the queries ([B, H, T, E]) rather than the scores ([B, H, T, S]): a smaller
        // tensor, the same product.
        let q = rope.apply(q, offset, self.scale);
        let key = rope.apply(key, offset, 1.0);

        // The cache holds every earlier key/value: [B, K, S, E] with S = offset + T.
        let (key, value) = match cache {
            Some(c) => c.append(key, value),
            None => (key, value),
        };

        // Grouped-query attention without copying keys/values: query heads k·G … k·G + G − 1
        // all read key/value head k, so they are stacked as G·T rows against that one head
        // (transformers' `repeat_kv` would materialize each key/value head G times).
        let q = q.reshape([b, k, g * t, e]); // [B, K, G·T, E], row j·T + i = head k·G + j, query i
        // softmax(Q·Kᵀ + mask)·V as one autodiff node; the mask ([1 or B, G·T, S]) is shared
        // by the K key/value heads, and on flex the products skip the keys it hides.
        let out = fused::attention(q, key, value, mask); // [B, K, G·T, E]

        let out = out
            .reshape([b, h, t, e])
            .swap_dims(1, 2)
            .reshape([b, t, h * e]); // [B, T, H·E]
        self.o_proj.forward(out)
    }
}

/// The gated feed-forward block: `down(act(gate(x)) ⊙ up(x))` — SwiGLU with SiLU (Llama, Qwen,
/// Mistral), GeGLU with tanh-GELU (Gemma 3).
#[derive(Module, Debug)]
pub struct Mlp {
    /// `[D, F]`.
    pub gate_proj: LoraLinear,
    /// `[D, F]`.
    pub up_proj: LoraLinear,
    /// `[F, D]`.
    pub down_proj: LoraLinear,
    /// The gate's activation.
    #[module(skip)]
    pub activation: Activation,
}

impl Mlp {
    /// # Shapes
    /// `x`: `[B, T, D]` → `[B, T, D]`
    pub fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        let gate = self.gate_proj.forward(x.clone()); // [B, T, F]
        let up = self.up_proj.forward(x); // [B, T, F]
        let hidden = match self.activation {
            Activation::Silu => fused::swiglu(gate, up), // one autodiff node
            Activation::GeluTanh => gelu_tanh(gate) * up,
        };
        self.down_proj.forward(hidden)
    }
}

/// `gelu_pytorch_tanh` (transformers `activations.py`, `PytorchGELUTanh`):
/// `½·x·(1 + tanh(√(2/π)·(x + 0.044715·x³)))`. `x³` is written as a product: a power with a
/// float exponent would take the logarithm of negative inputs.
fn gelu_tanh<const N: usize>(x: Tensor<N>) -> Tensor<N> {
    let sqrt_2_over_pi = (2.0 / std::f64::consts::PI).sqrt();
    let cube = x.clone() * x.clone() * x.clone();
    let inner = (x.clone() + cube.mul_scalar(0.044715)).mul_scalar(sqrt_2_over_pi);
    (x * inner.tanh().add_scalar(1.0)).mul_scalar(0.5)
}

/// Gemma's extra norms: each sublayer's output is normalized before its residual add, and the
/// MLP gets its own input norm (transformers `Gemma3DecoderLayer`).
#[derive(Module, Debug)]
pub struct SandwichNorms {
    /// RMSNorm before the MLP.
    pub pre_feedforward_layernorm: RmsNorm,
    /// RMSNorm on the MLP's output.
    pub post_feedforward_layernorm: RmsNorm,
}

/// One decoder layer.
#[derive(Module, Debug)]
pub struct DecoderLayer {
    /// RMSNorm before attention.
    pub input_layernorm: RmsNorm,
    /// Grouped-query self-attention.
    pub self_attn: Attention,
    /// RMSNorm before the MLP — or, with [`SandwichNorms`] (Gemma 3), on the attention output.
    pub post_attention_layernorm: RmsNorm,
    /// Gated MLP.
    pub mlp: Mlp,
    /// Gemma 3 only: the MLP's own input and output norms.
    pub sandwich: Option<SandwichNorms>,
}

impl DecoderLayer {
    /// # Shapes
    /// `x`: `[B, T, D]` → `[B, T, D]`
    pub fn forward(
        &self,
        x: Tensor<3>,
        rope: &RotaryEmbedding,
        mask: Option<&Tensor<3, Bool>>,
        cache: Option<&mut LayerCache>,
    ) -> Tensor<3> {
        let attn =
            self.self_attn
                .forward(self.input_layernorm.forward(x.clone()), rope, mask, cache);
        match &self.sandwich {
            // Pre-norm (Llama, Mistral, Qwen): x + attn(norm(x)), then x + mlp(norm(x)).
            None => {
                let x = x + attn;
                x.clone() + self.mlp.forward(self.post_attention_layernorm.forward(x))
            }
            // Gemma 3: x + norm(attn(norm(x))), then x + norm(mlp(norm(x))).
            Some(s) => {
                let x = x + self.post_attention_layernorm.forward(attn);
                let h = self
                    .mlp
                    .forward(s.pre_feedforward_layernorm.forward(x.clone()));
                x + s.post_feedforward_layernorm.forward(h)
            }
        }
    }
}

/// Token embedding table.
#[derive(Module, Debug)]
pub struct Embedding {
    /// `[V, D]`.
    pub weight: Param<Tensor<2>>,
    /// Gemma 3: the looked-up rows are multiplied by √D (`Gemma3TextScaledWordEmbedding`, the
    /// factor rounded to f32 as transformers does); `None` for the other families.
    #[module(skip)]
    pub scale: Option<f32>,
}

impl Embedding {
    /// The rows come out in f32 whatever type the table is stored in (`--base-dtype`): the
    /// activations between layers stay f32.
    ///
    /// # Shapes
    /// `tokens`: `[B, T]` → `[B, T, D]`
    pub fn forward(&self, tokens: Tensor<2, Int>) -> Tensor<3> {
        let rows = embedding(self.weight.val(), tokens);
        let x = if rows.dtype() == DType::F32 {
            rows
        } else {
            rows.cast(DType::F32)
        };
        match self.scale {
            Some(s) => x.mul_scalar(s),
            None => x,
        }
    }
}

/// The decoder stack without the output head (transformers' `LlamaModel`).
#[derive(Module, Debug)]
pub struct LlamaModel {
    /// Token embedding, `[V, D]`.
    pub embed_tokens: Embedding,
    /// The `N` decoder layers.
    pub layers: Vec<DecoderLayer>,
    /// Final RMSNorm.
    pub norm: RmsNorm,
    /// RoPE tables (not parameters).
    pub rotary_emb: RotaryEmbedding,
    /// Gemma 3: the sliding-window layers' own RoPE tables (base 10 000); `None` when every
    /// layer uses [`LlamaModel::rotary_emb`].
    pub rotary_emb_local: Option<RotaryEmbedding>,
}

impl LlamaModel {
    /// Final hidden states.
    ///
    /// # Shapes
    /// `tokens`: `[B, T]` → `[B, T, D]`
    pub fn forward(&self, tokens: Tensor<2, Int>, cache: Option<&mut KvCache>) -> Tensor<3> {
        self.forward_left_padded(tokens, cache, &[])
    }

    /// [`LlamaModel::forward`] for a batch of prompts of different lengths, left-padded to one
    /// length: row `b` starts with `left_pad[b]` padding tokens, which no real token attends to
    /// ([`left_padded_causal_mask`]). An empty `left_pad` means no padding.
    ///
    /// Positions stay the padded indices (row `b`'s first real token is at `left_pad[b]`): RoPE
    /// makes `q·k` depend only on the distance between the two positions (Su et al. 2021, §3.4),
    /// so shifting a whole row changes no attention score — transformers instead counts
    /// positions from the attention mask (`position_ids = cumsum(mask) − 1`); the two agree up
    /// to rounding.
    ///
    /// # Shapes
    /// `tokens`: `[B, T]` → `[B, T, D]`; `left_pad`: `[B]` or empty
    pub(crate) fn forward_left_padded(
        &self,
        tokens: Tensor<2, Int>,
        mut cache: Option<&mut KvCache>,
        left_pad: &[usize],
    ) -> Tensor<3> {
        let [_, t] = tokens.dims();
        let offset = cache.as_ref().map_or(0, |c| c.len());
        let mut x = self.embed_tokens.forward(tokens);
        // One mask per kind of layer (they share T, S and the grouping of query heads).
        let Some(first) = self.layers.first().map(|l| &l.self_attn) else {
            return self.norm.forward(x);
        };
        let groups = first.n_heads / first.n_kv_heads;
        let device = x.device();
        let padding = left_pad
            .iter()
            .any(|&p| p > 0)
            .then(|| left_padded_causal_mask(t, offset, groups, left_pad, &device)); // [B, G·T, S]
        let full = match &padding {
            Some(m) => Some(m.clone()),
            None => causal_mask(t, offset + t, offset, groups, &device).map(|m| m.unsqueeze()),
        };
        let window = self.layers.iter().find_map(|l| l.self_attn.sliding_window);
        let sliding = window.and_then(|w| {
            let local = sliding_window_mask(t, offset + t, offset, groups, w, &device)
                .map(|m| m.unsqueeze::<3>()); // [1, G·T, S]
            match (&padding, local) {
                // Left padding and the window: masked if either masks (a padding query still
                // sees itself, so no row is empty).
                (Some(p), Some(l)) => {
                    let [b, _, _] = p.dims();
                    Some(p.clone().bool_or(l.repeat_dim(0, b)))
                }
                (Some(p), None) => Some(p.clone()),
                (None, l) => l,
            }
        });
        // With gradient checkpointing (training only: no cache) each layer keeps only its input
        // for the backward pass and runs again there.
        let recompute = cache.is_none() && crate::recompute::wants_recompute(&x);
        for (i, layer) in self.layers.iter().enumerate() {
            let (rope, mask) = if layer.self_attn.sliding_window.is_some() {
                let local = self.rotary_emb_local.as_ref();
                (local.unwrap_or(&self.rotary_emb), sliding.as_ref())
            } else {
                (&self.rotary_emb, full.as_ref())
            };
            x = if recompute {
                crate::recompute::recomputed_layer(layer, x, rope, mask)
            } else {
                let layer_cache = cache.as_deref_mut().map(|c| c.layer_mut(i));
                layer.forward(x, rope, mask, layer_cache)
            };
        }
        self.norm.forward(x)
    }
}

/// A causal language model: [`LlamaModel`] plus the output head `lm_head` (`[D, V]`).
///
/// With tied embeddings the head holds the embedding table's transpose (the same storage until
/// something — a merged adapter on the head — changes it, which then leaves the input embedding
/// untouched).
#[derive(Module, Debug)]
pub struct Llama {
    /// The decoder stack.
    pub model: LlamaModel,
    /// Output projection to vocabulary logits, `[D, V]`.
    pub lm_head: LoraLinear,
    /// The shape this model was built with.
    #[module(skip)]
    pub config: LlamaConfig,
}

impl Llama {
    /// Next-token logits at every position.
    ///
    /// # Shapes
    /// `tokens`: `[B, T]` (ids) → `[B, T, V]`
    pub fn forward(&self, tokens: Tensor<2, Int>, cache: Option<&mut KvCache>) -> Tensor<3> {
        self.lm_head.forward(self.model.forward(tokens, cache))
    }

    /// Next-token logits at chosen positions only: the decoder runs over every token, the
    /// output head only over the rows asked for. A loss needs the head at the answer positions
    /// and an accuracy check at the last prompt position; the head (`D × V`, about a fifth of
    /// SmolLM2's forward cost) is wasted on the others.
    ///
    /// `rows` are flat positions `b·T + t` into the `[B, T]` input.
    ///
    /// # Shapes
    /// `tokens`: `[B, T]` (ids), `rows`: `[N]` → `[N, V]`
    pub fn logits_at(&self, tokens: Tensor<2, Int>, rows: Tensor<1, Int>) -> Tensor<2> {
        let hidden = self.model.forward(tokens, None); // [B, T, D]
        let [b, t, d] = hidden.dims();
        let picked = hidden.reshape([b * t, d]).select(0, rows); // [N, D]
        self.lm_head.forward(picked)
    }

    /// A new, empty KV cache (one slot per layer).
    pub fn new_cache(&self) -> KvCache {
        KvCache::new(self.config.n_layers)
    }

    /// The device the model's weights live on (read from the token embedding, which is never
    /// quantized, so asking costs nothing).
    pub fn device(&self) -> Device {
        self.model.embed_tokens.weight.val().device()
    }
}
