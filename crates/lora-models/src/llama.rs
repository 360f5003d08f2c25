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
//! # Shape legend
//! `B` batch · `T` new tokens · `S` attended tokens (cached + new) · `D` model width ·
//! `H` query heads · `K` key/value heads · `E` head width · `F` MLP width · `V` vocabulary.

use burn::module::{Module, Param};
use burn::tensor::activation::{silu, softmax};
use burn::tensor::module::embedding;
use burn::tensor::{Bool, DType, Device, Distribution, Int, Tensor, TensorData};
use lora_core::LoraLinear;

use crate::config::LlamaConfig;
use crate::kv_cache::{KvCache, LayerCache};
pub use crate::left_padding::left_padded_causal_mask;

/// Root-mean-square layer norm: `y = x / √(mean(x²) + ε) · g`.
#[derive(Module, Debug)]
pub struct RmsNorm {
    /// Gain `g`, `[D]`.
    pub weight: Param<Tensor<1>>,
    /// ε added to the mean square.
    #[module(skip)]
    pub eps: f64,
}

impl RmsNorm {
    /// # Shapes
    /// `x`: `[..., D]` → `[..., D]`
    pub fn forward<const N: usize>(&self, x: Tensor<N>) -> Tensor<N> {
        let rms = x
            .clone()
            .square()
            .mean_dim(N - 1)
            .add_scalar(self.eps)
            .sqrt(); // [..., 1]
        (x / rms) * self.weight.val().unsqueeze::<N>()
    }
}

/// Rotary position embedding tables, rotate-half convention: the head vector is split into
/// halves `(x₁, x₂)` and rotated as `x·cos θ + (−x₂, x₁)·sin θ`, with `θ_{p,i} = p · base^(−2i/E)`.
#[derive(Module, Debug)]
pub struct RotaryEmbedding {
    /// `cos θ`, `[max_seq_len, E]` (each frequency twice: `[f₀ … f_{E/2−1}, f₀ … f_{E/2−1}]`).
    pub cos: Tensor<2>,
    /// `sin θ`, `[max_seq_len, E]`.
    pub sin: Tensor<2>,
}

impl RotaryEmbedding {
    /// Builds the tables for positions `0..max_seq_len` (computed in f64, stored as f32).
    pub fn new(head_dim: usize, max_seq_len: usize, theta: f64, device: &Device) -> Self {
        let half = head_dim / 2;
        let inv_freq: Vec<f64> = (0..half)
            .map(|i| 1.0 / theta.powf((2 * i) as f64 / head_dim as f64))
            .collect();
        let mut cos = Vec::with_capacity(max_seq_len * head_dim);
        let mut sin = Vec::with_capacity(max_seq_len * head_dim);
        for p in 0..max_seq_len {
            for _half in 0..2 {
                for f in &inv_freq {
                    let angle = (p as f64 * *f) as f32; // transformers forms the angle in f32
                    cos.push(angle.cos());
                    sin.push(angle.sin());
                }
            }
        }
        let shape = [max_seq_len, head_dim];
        RotaryEmbedding {
            cos: Tensor::from_data(TensorData::new(cos, shape), device),
            sin: Tensor::from_data(TensorData::new(sin, shape), device),
        }
    }

    /// Rotates queries or keys at positions `offset..offset + T`.
    ///
    /// # Shapes
    /// `x`: `[B, heads, T, E]` → `[B, heads, T, E]`
    pub fn apply(&self, x: Tensor<4>, offset: usize) -> Tensor<4> {
        let [_, _, t, e] = x.dims();
        let cos = self
            .cos
            .clone()
            .slice([offset..offset + t, 0..e])
            .unsqueeze::<4>(); // [1, 1, T, E]
        let sin = self
            .sin
            .clone()
            .slice([offset..offset + t, 0..e])
            .unsqueeze::<4>();
        let x1 = x.clone().narrow(3, 0, e / 2);
        let x2 = x.clone().narrow(3, e / 2, e / 2);
        let rotated = Tensor::cat(vec![x2.neg(), x1], 3); // (−x₂, x₁)
        x * cos + rotated * sin
    }
}

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
    /// `H`.
    #[module(skip)]
    pub n_heads: usize,
    /// `K`.
    #[module(skip)]
    pub n_kv_heads: usize,
    /// `E`.
    #[module(skip)]
    pub head_dim: usize,
}

impl Attention {
    /// `softmax(Q·Kᵀ/√E + causal mask)·V`, then the output projection. With a cache, the new
    /// keys/values are appended and the new queries attend to everything cached.
    ///
    /// `mask` is [`causal_mask`] for this call's `T`, `S` and cache offset (or, for a batch of
    /// left-padded prompts, [`left_padded_causal_mask`]), built once per forward by
    /// [`LlamaModel::forward`] and shared by every layer (`None` when nothing is masked).
    ///
    /// # Shapes
    /// - `x`: `[B, T, D]` → `[B, T, D]`
    /// - `mask`: `[1, G·T, S]` (the same for every row) or `[B, G·T, S]` (per row), with
    ///   `G = H/K`, `true` where a query may not look
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

        // Project and split into heads: [B, T, heads·E] → [B, heads, T, E].
        let q = self
            .q_proj
            .forward(x.clone())
            .reshape([b, t, h, e])
            .swap_dims(1, 2);
        let key = self
            .k_proj
            .forward(x.clone())
            .reshape([b, t, k, e])
            .swap_dims(1, 2);
        let value = self.v_proj.forward(x).reshape([b, t, k, e]).swap_dims(1, 2);

        // Positions enter through the rotation of queries and keys only. The 1/√E scale goes on
        // the queries ([B, H, T, E]) rather than the scores ([B, H, T, S]): a smaller tensor, the
        // same product.
        let q = rope.apply(q, offset).div_scalar((e as f64).sqrt());
        let key = rope.apply(key, offset);

        // The cache holds every earlier key/value: [B, K, S, E] with S = offset + T.
        let (key, value) = match cache {
            Some(c) => c.append(key, value),
            None => (key, value),
        };

        // Grouped-query attention without copying keys/values: query heads k·G … k·G + G − 1
        // all read key/value head k, so they are stacked as G·T rows against that one head
        // (transformers' `repeat_kv` would materialize each key/value head G times).
        let q = q.reshape([b, k, g * t, e]); // [B, K, G·T, E], row j·T + i = head k·G + j, query i
        let scores = q.matmul(key.swap_dims(2, 3)); // [B, K, G·T, S]
        let scores = match mask {
            // [1 or B, 1, G·T, S] broadcast over the K key/value heads.
            Some(m) => scores.mask_fill(m.clone().unsqueeze_dim::<4>(1), f32::NEG_INFINITY),
            None => scores,
        };
        let probs = softmax(scores, 3);
        let out = probs.matmul(value); // [B, K, G·T, E]

        let out = out
            .reshape([b, h, t, e])
            .swap_dims(1, 2)
            .reshape([b, t, h * e]); // [B, T, H·E]
        self.o_proj.forward(out)
    }
}

/// The causal mask of [`Attention::forward`]'s grouped layout: query `i` sits at position
/// `offset + i` and may see keys `0..=offset + i`; the `[T, S]` pattern repeats for each of the
/// `G` query heads that share a key/value head. `None` when nothing is masked (one new token:
/// decoding with a cache).
///
/// # Shapes
/// returns `[G·T, S]`, `true` = masked
pub fn causal_mask(
    t: usize,
    s: usize,
    offset: usize,
    groups: usize,
    device: &Device,
) -> Option<Tensor<2, Bool>> {
    if t == 1 && s == offset + 1 {
        return None;
    }
    let future: Tensor<2, Bool> = Tensor::tril_mask([t, s], offset as i64, device); // [T, S]
    Some(
        future
            .unsqueeze::<3>()
            .repeat_dim(0, groups)
            .reshape([groups * t, s]),
    )
}

/// The SwiGLU feed-forward block: `down(silu(gate(x)) ⊙ up(x))`.
#[derive(Module, Debug)]
pub struct Mlp {
    /// `[D, F]`.
    pub gate_proj: LoraLinear,
    /// `[D, F]`.
    pub up_proj: LoraLinear,
    /// `[F, D]`.
    pub down_proj: LoraLinear,
}

impl Mlp {
    /// # Shapes
    /// `x`: `[B, T, D]` → `[B, T, D]`
    pub fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        let gate = silu(self.gate_proj.forward(x.clone())); // [B, T, F]
        self.down_proj.forward(gate * self.up_proj.forward(x))
    }
}

/// One pre-norm decoder layer.
#[derive(Module, Debug)]
pub struct DecoderLayer {
    /// RMSNorm before attention.
    pub input_layernorm: RmsNorm,
    /// Grouped-query self-attention.
    pub self_attn: Attention,
    /// RMSNorm before the MLP.
    pub post_attention_layernorm: RmsNorm,
    /// SwiGLU MLP.
    pub mlp: Mlp,
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
        let x = x.clone()
            + self
                .self_attn
                .forward(self.input_layernorm.forward(x), rope, mask, cache);
        x.clone() + self.mlp.forward(self.post_attention_layernorm.forward(x))
    }
}

/// Token embedding table.
#[derive(Module, Debug)]
pub struct Embedding {
    /// `[V, D]`.
    pub weight: Param<Tensor<2>>,
}

impl Embedding {
    /// The rows come out in f32 whatever type the table is stored in (`--base-dtype`): the
    /// activations between layers stay f32.
    ///
    /// # Shapes
    /// `tokens`: `[B, T]` → `[B, T, D]`
    pub fn forward(&self, tokens: Tensor<2, Int>) -> Tensor<3> {
        let rows = embedding(self.weight.val(), tokens);
        if rows.dtype() == DType::F32 {
            rows
        } else {
            rows.cast(DType::F32)
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
        // One mask for all layers (they share T, S and the grouping of query heads).
        let mask = self.layers.first().and_then(|l| {
            let a = &l.self_attn;
            let groups = a.n_heads / a.n_kv_heads;
            if left_pad.iter().any(|&p| p > 0) {
                Some(left_padded_causal_mask(
                    t,
                    offset,
                    groups,
                    left_pad,
                    &x.device(),
                ))
            } else {
                causal_mask(t, offset + t, offset, groups, &x.device()).map(|m| m.unsqueeze())
            }
        });
        // With gradient checkpointing (training only: no cache) each layer keeps only its input
        // for the backward pass and runs again there.
        let recompute = cache.is_none() && crate::recompute::wants_recompute(&x);
        for (i, layer) in self.layers.iter().enumerate() {
            x = if recompute {
                crate::recompute::recomputed_layer(layer, x, &self.rotary_emb, mask.as_ref())
            } else {
                let layer_cache = cache.as_deref_mut().map(|c| c.layer_mut(i));
                layer.forward(x, &self.rotary_emb, mask.as_ref(), layer_cache)
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

impl LlamaConfig {
    /// A randomly initialised model (weights ~ N(0, 0.02²), norms at 1), frozen like a
    /// pretrained base; for tests and examples.
    pub fn init(&self, device: &Device) -> Llama {
        let dist = Distribution::Normal(0.0, 0.02);
        let lin = |d_in: usize, d_out: usize| {
            LoraLinear::new(Tensor::random([d_in, d_out], dist, device), None)
        };
        let norm = || RmsNorm {
            weight: Param::from_tensor(Tensor::ones([self.d_model], device))
                .set_require_grad(false),
            eps: self.rms_norm_eps,
        };
        let (d, h, k, e, f) = (
            self.d_model,
            self.n_heads,
            self.n_kv_heads,
            self.head_dim,
            self.d_ff,
        );
        let layers = (0..self.n_layers)
            .map(|_| DecoderLayer {
                input_layernorm: norm(),
                self_attn: Attention {
                    q_proj: lin(d, h * e),
                    k_proj: lin(d, k * e),
                    v_proj: lin(d, k * e),
                    o_proj: lin(h * e, d),
                    n_heads: h,
                    n_kv_heads: k,
                    head_dim: e,
                },
                post_attention_layernorm: norm(),
                mlp: Mlp {
                    gate_proj: lin(d, f),
                    up_proj: lin(d, f),
                    down_proj: lin(f, d),
                },
            })
            .collect();
        let embed = Tensor::random([self.vocab_size, d], dist, device);
        let lm_head = if self.tie_word_embeddings {
            LoraLinear::new(embed.clone().transpose(), None)
        } else {
            lin(d, self.vocab_size)
        };
        Llama {
            model: LlamaModel {
                embed_tokens: Embedding {
                    weight: Param::from_tensor(embed).set_require_grad(false),
                },
                layers,
                norm: norm(),
                rotary_emb: RotaryEmbedding::new(e, self.max_seq_len, self.rope_theta, device),
            },
            lm_head,
            config: self.clone(),
        }
    }
}
