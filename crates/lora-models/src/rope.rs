//! Rotary position embedding (Su et al. 2021, arXiv:2104.09864) in the rotate-half convention of
//! transformers' `models/llama/modeling_llama.py` (`rotate_half`, `apply_rotary_pos_emb`).

use burn::module::Module;
use burn::tensor::{Device, Tensor, TensorData};

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

    /// Rotates queries or keys at positions `offset..offset + T` and multiplies them by `scale`
    /// (`1` for keys; the score factor for queries, which costs nothing here and spares a pass
    /// over the scores), moving the head axis before the position axis on the way — one
    /// autodiff node ([`lora_core::fused::rope`]).
    ///
    /// # Shapes
    /// `x`: `[B, T, heads, E]` (as the projection gives it) → `[B, heads, T, E]`
    pub fn apply(&self, x: Tensor<4>, offset: usize, scale: f64) -> Tensor<4> {
        let [_, t, _, e] = x.dims();
        let rows = |table: &Tensor<2>| table.clone().slice([offset..offset + t, 0..e]);
        lora_core::fused::rope(x, rows(&self.cos), rows(&self.sin), scale)
    }
}
