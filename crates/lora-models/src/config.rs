//! [`LlamaConfig`]: the model's shape, in our own names. The checkpoint formats' key names
//! (`config.json`, GGUF `llama.*`) are read in `checkpoint/` and converted into this struct; the
//! model never sees them.

use serde::{Deserialize, Serialize};

/// Hyper-parameters of a Llama-style decoder.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LlamaConfig {
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
}

impl LlamaConfig {
    /// SmolLM2-135M(-Instruct): 30 layers, D = 576, 9 query / 3 key-value heads of 64,
    /// F = 1536, V = 49152, θ = 100000, tied embeddings.
    pub fn smollm2_135m() -> Self {
        LlamaConfig {
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
        }
    }

    /// A tiny model for tests and examples (2 layers, D = 64, 4/2 heads, V = 300).
    pub fn tiny() -> Self {
        LlamaConfig {
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
        Ok(())
    }

    /// Parameters in the model, counting a tied embedding once.
    pub fn num_params(&self) -> usize {
        let (d, e, f) = (self.d_model, self.head_dim, self.d_ff);
        let attn = d * self.n_heads * e * 2 + d * self.n_kv_heads * e * 2;
        let mlp = 3 * d * f;
        let layer = attn + mlp + 2 * d;
        let head = if self.tie_word_embeddings {
            0
        } else {
            self.vocab_size * d
        };
        self.vocab_size * d + self.n_layers * layer + d + head
    }
}
