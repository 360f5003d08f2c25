//! [`LlamaConfig`]: the model's shape and its family's departures from Llama, in our own names.
//! The checkpoint formats' key names (`config.json`, GGUF `llama.*`, `gemma3.*`, …) are read in
//! `checkpoint/` and converted into this struct; the model never sees them.

use serde::{Deserialize, Serialize};

use crate::family::{Family, Variant};

/// The most values a RoPE table may hold (`max_seq_len × head_dim`): 2^28, 1 GiB of f32.
const MAX_ROPE_TABLE: usize = 1 << 28;
/// The largest any one dimension (vocabulary, widths, heads, context) may be: 2^24. The largest
/// real values are far below (Gemma 3's vocabulary 262 144 = 2^18, Llama 3.1's context 2^17).
pub const MAX_DIMENSION: usize = 1 << 24;
/// The most decoder layers: 1024 (the deepest open models have about 128).
pub const MAX_LAYERS: usize = 1024;
/// The most parameters a model may have: 2^38 (a trillion f32 values is 1 TiB; no machine this
/// runs on holds that). Checked with overflow-safe arithmetic, so [`LlamaConfig::num_params`]
/// cannot overflow on a validated config.
pub const MAX_PARAMS: usize = 1 << 38;

/// Hyper-parameters of a Llama-style decoder (of any [`Family`]).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LlamaConfig {
    /// The family: names in checkpoints, and the preset of [`LlamaConfig::variant`].
    #[serde(default)]
    pub family: Family,
    /// Number of tokens in the vocabulary, `V`.
    pub vocab_size: usize,
    /// Width of the residual stream, `D` (`hidden_size`).
    pub d_model: usize,
    /// Number of decoder layers, `N`.
    pub n_layers: usize,
    /// Number of query heads, `H`.
    pub n_heads: usize,
    /// Number of key/value heads, `K` (grouped-query attention: `H` is a multiple of `K`).
    pub n_kv_heads: usize,
    /// Width of one attention head, `E` (usually `D / H`).
    pub head_dim: usize,
    /// Hidden width of the SwiGLU MLP, `F` (`intermediate_size`).
    pub d_ff: usize,
    /// RoPE base θ (`rope_theta`), e.g. 10000 or 100000.
    pub rope_theta: f64,
    /// RMSNorm ε.
    pub rms_norm_eps: f64,
    /// Longest sequence the RoPE tables are built for (`max_position_embeddings`).
    pub max_seq_len: usize,
    /// Whether the output head reuses the token embedding (`tie_word_embeddings`).
    pub tie_word_embeddings: bool,
    /// Where the decoder departs from Llama's (all default for Llama).
    #[serde(default)]
    pub variant: Variant,
    /// Sliding-window attention on some or all layers (Mistral, Gemma 3), or `None`.
    #[serde(default)]
    pub sliding_window: Option<SlidingWindow>,
    /// Attention scores are scaled by `query_pre_attn_scalar^-½` (Gemma's
    /// `query_pre_attn_scalar`); `None` means `head_dim`, the usual `1/√E`.
    #[serde(default)]
    pub query_pre_attn_scalar: Option<f64>,
}

/// Sliding-window attention: a query at position `p` sees only the keys at `p − size + 1 ..= p`
/// (transformers' `sliding_window_overlay`: `kv_idx > q_idx − sliding_window`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SlidingWindow {
    /// The window in tokens, the query's own position included (`sliding_window`).
    pub size: usize,
    /// For each layer, whether it uses the window (`layer_types[i] == "sliding_attention"`); the
    /// others attend to the whole context.
    pub layers: Vec<bool>,
    /// The RoPE base θ of the sliding layers when it differs from [`LlamaConfig::rope_theta`]
    /// (Gemma 3: 10 000, `rope_local_base_freq`).
    #[serde(default)]
    pub rope_theta: Option<f64>,
}

impl SlidingWindow {
    /// Whether layer `i` uses the window.
    pub fn applies_to(&self, layer: usize) -> bool {
        self.layers.get(layer).copied().unwrap_or(false)
    }
}

impl LlamaConfig {
    /// SmolLM2-135M(-Instruct): 30 layers, D = 576, 9 query / 3 key-value heads of 64,
    /// F = 1536, V = 49152, θ = 100000, tied embeddings.
    pub fn smollm2_135m() -> Self {
        LlamaConfig {
            family: Family::Llama,
            vocab_size: 49152,
            d_model: 576,
            n_layers: 30,
            n_heads: 9,
            n_kv_heads: 3,
            head_dim: 64,
            d_ff: 1536,
            rope_theta: 100000.0,
            rms_norm_eps: 1e-5,
            max_seq_len: 8192,
            tie_word_embeddings: true,
            variant: Variant::default(),
            sliding_window: None,
            query_pre_attn_scalar: None,
        }
    }

    /// A tiny model for tests and examples (2 layers, D = 64, 4/2 heads, V = 300).
    pub fn tiny() -> Self {
        LlamaConfig {
            family: Family::Llama,
            vocab_size: 300,
            d_model: 64,
            n_layers: 2,
            n_heads: 4,
            n_kv_heads: 2,
            head_dim: 16,
            d_ff: 128,
            rope_theta: 10000.0,
            rms_norm_eps: 1e-5,
            max_seq_len: 128,
            tie_word_embeddings: false,
            variant: Variant::default(),
            sliding_window: None,
            query_pre_attn_scalar: None,
        }
    }

    /// Checks that the numbers describe a buildable model.
    ///
    /// # Errors
    /// A message naming the first inconsistent field.
    pub fn validate(&self) -> Result<(), String> {
        let positive = [
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.d_model),
            ("num_hidden_layers", self.n_layers),
            ("num_attention_heads", self.n_heads),
            ("num_key_value_heads", self.n_kv_heads),
            ("head_dim", self.head_dim),
            ("intermediate_size", self.d_ff),
            ("max_position_embeddings", self.max_seq_len),
        ];
        if let Some((name, _)) = positive.iter().find(|(_, v)| *v == 0) {
            return Err(format!("{name} must be positive"));
        }
        if self.n_layers > MAX_LAYERS {
            return Err(format!(
                "num_hidden_layers is {}, over the limit of {MAX_LAYERS}; the config is corrupt",
                self.n_layers
            ));
        }
        if let Some((name, v)) = positive.iter().find(|(_, v)| *v > MAX_DIMENSION) {
            return Err(format!(
                "{name} is {v}, over the limit of {MAX_DIMENSION}; the config is corrupt or not a language model's"
            ));
        }
        if self.checked_num_params().is_none_or(|n| n > MAX_PARAMS) {
            return Err(format!(
                "these dimensions make a model of more than {MAX_PARAMS} parameters (hidden_size {}, intermediate_size {}, {} layers, vocab_size {}); the config is corrupt",
                self.d_model, self.d_ff, self.n_layers, self.vocab_size
            ));
        }
        if !self.n_heads.is_multiple_of(self.n_kv_heads) {
            return Err(format!(
                "num_attention_heads ({}) must be a multiple of num_key_value_heads ({})",
                self.n_heads, self.n_kv_heads
            ));
        }
        if !self.head_dim.is_multiple_of(2) {
            return Err(format!(
                "head_dim ({}) must be even for RoPE",
                self.head_dim
            ));
        }
        let finite = [
            ("rope_theta", Some(self.rope_theta)),
            ("rms_norm_eps", Some(self.rms_norm_eps)),
            ("query_pre_attn_scalar", self.query_pre_attn_scalar),
            (
                "the sliding layers' rope_theta",
                self.sliding_window.as_ref().and_then(|w| w.rope_theta),
            ),
        ];
        for (name, v) in finite {
            if let Some(v) = v
                && !(v.is_finite() && v > 0.0)
            {
                return Err(format!("{name} must be a positive finite number, got {v}"));
            }
        }
        // The RoPE tables hold max_seq_len × head_dim values each; refuse sizes no real model has
        // rather than allocate without bound (Llama 3.1: 131072 × 128 = 2^24).
        let table = self.max_seq_len.checked_mul(self.head_dim);
        if table.is_none_or(|n| n > MAX_ROPE_TABLE) {
            return Err(format!(
                "max_position_embeddings ({}) × head_dim ({}) is over {MAX_ROPE_TABLE} values per RoPE table; lower max_position_embeddings in the config",
                self.max_seq_len, self.head_dim
            ));
        }
        if let Some(w) = &self.sliding_window {
            if w.size == 0 {
                return Err("sliding_window must be positive".into());
            }
            if w.layers.len() != self.n_layers {
                return Err(format!(
                    "layer_types lists {} layers, num_hidden_layers is {}",
                    w.layers.len(),
                    self.n_layers
                ));
            }
        }
        Ok(())
    }

    /// The factor on `Q·Kᵀ`: `1/√query_pre_attn_scalar` (Gemma) or `1/√head_dim`.
    pub fn attention_scale(&self) -> f64 {
        1.0 / self
            .query_pre_attn_scalar
            .unwrap_or(self.head_dim as f64)
            .sqrt()
    }

    /// Parameters in the model, counting a tied embedding once (saturating at `usize::MAX`
    /// for dimensions [`LlamaConfig::validate`] refuses).
    pub fn num_params(&self) -> usize {
        self.checked_num_params().unwrap_or(usize::MAX)
    }

    /// [`LlamaConfig::num_params`] with overflow-checked arithmetic: `None` if the count does
    /// not fit in `usize`.
    pub fn checked_num_params(&self) -> Option<usize> {
        let (d, e, f, v) = (self.d_model, self.head_dim, self.d_ff, &self.variant);
        let (h, k) = (self.n_heads, self.n_kv_heads);
        let mul = |xs: &[usize]| xs.iter().try_fold(1usize, |a, &x| a.checked_mul(x));
        let sum = |xs: &[Option<usize>]| {
            xs.iter()
                .try_fold(0usize, |a, x| x.and_then(|x| a.checked_add(x)))
        };
        let on = |flag: bool, n: Option<usize>| if flag { n } else { Some(0) };
        let attn = sum(&[
            mul(&[d, h, e, 2]),
            mul(&[d, k, e, 2]),
            on(v.qkv_bias, mul(&[h.checked_add(k.checked_mul(2)?)?, e])),
            on(v.o_bias, Some(d)),
            on(v.qk_norm, mul(&[2, e])),
        ])?;
        let mlp = sum(&[
            mul(&[3, d, f]),
            on(v.mlp_bias, sum(&[mul(&[2, f]), Some(d)])),
        ])?;
        let norms = mul(&[if v.sandwich_norms { 4 } else { 2 }, d])?;
        let layer = sum(&[Some(attn), Some(mlp), Some(norms)])?;
        let embed = mul(&[self.vocab_size, d]);
        let head = on(!self.tie_word_embeddings, embed);
        sum(&[embed, mul(&[self.n_layers, layer]), Some(d), head])
    }
}
