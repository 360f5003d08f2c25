//! The model families this crate runs, and where each one's decoder departs from Llama's.
//!
//! Every family here is the Llama decoder of [`crate::llama`] with a few named changes, read off
//! transformers' `models/{llama,mistral,qwen2,qwen3,gemma3}/modeling_*.py`:
//!
//! | family | differs from Llama in |
//! |---|---|
//! | `llama` | — (SmolLM2, Llama 2/3) |
//! | `mistral` | a sliding-window attention limit (`sliding_window`) on every layer |
//! | `qwen2` | a bias on the q/k/v projections (not on o_proj) |
//! | `qwen3` | RMSNorm over each query/key head before RoPE (`q_norm`, `k_norm`); explicit `head_dim` |
//! | `gemma3` | embeddings × √D; RMSNorm gain `1 + w`; GELU-tanh gate; norms after attention and MLP too; q/k norm; scores scaled by `query_pre_attn_scalar^-½`; 5 of every 6 layers sliding-window with their own RoPE base |
//!
//! The fixed part of each row is [`Family::variant`]; what a checkpoint states (window size,
//! RoPE bases, `attention_bias`) is read into [`crate::LlamaConfig`] by `checkpoint/`.

use serde::{Deserialize, Serialize};

/// A model family, by transformers' `model_type`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Family {
    /// Llama (and SmolLM2, and every Llama-architecture GGUF).
    #[default]
    Llama,
    /// Mistral 7B-style: Llama with a sliding attention window.
    Mistral,
    /// Qwen2 and Qwen2.5.
    Qwen2,
    /// Qwen3 (dense).
    Qwen3,
    /// Gemma 3, text part (`gemma3_text`).
    Gemma3,
}

impl Family {
    /// Every supported family, for error messages and documentation.
    pub const ALL: [Family; 5] = [
        Family::Llama,
        Family::Mistral,
        Family::Qwen2,
        Family::Qwen3,
        Family::Gemma3,
    ];

    /// Our short name, e.g. `"gemma3"`.
    pub fn name(self) -> &'static str {
        match self {
            Family::Llama => "llama",
            Family::Mistral => "mistral",
            Family::Qwen2 => "qwen2",
            Family::Qwen3 => "qwen3",
            Family::Gemma3 => "gemma3",
        }
    }

    /// The `model_type` transformers writes into `config.json` for this family's causal LM.
    pub fn model_type(self) -> &'static str {
        match self {
            Family::Gemma3 => "gemma3_text",
            other => other.name(),
        }
    }

    /// The `architectures` entry of `config.json` (the transformers class to load).
    pub fn hf_class(self) -> &'static str {
        match self {
            Family::Llama => "LlamaForCausalLM",
            Family::Mistral => "MistralForCausalLM",
            Family::Qwen2 => "Qwen2ForCausalLM",
            Family::Qwen3 => "Qwen3ForCausalLM",
            Family::Gemma3 => "Gemma3ForCausalLM",
        }
    }

    /// The family of a `config.json` `model_type` (`"gemma3"` is accepted for `"gemma3_text"`).
    pub fn from_model_type(model_type: &str) -> Option<Family> {
        match model_type {
            "gemma3_text" | "gemma3" => Some(Family::Gemma3),
            other => Family::ALL.into_iter().find(|f| f.name() == other),
        }
    }

    /// The family of a GGUF `general.architecture`. llama.cpp converts Mistral checkpoints to
    /// `"llama"` (`convert_hf_to_gguf.py` registers `MistralForCausalLM` on `LlamaModel`), so
    /// there is no `"mistral"` architecture to read.
    pub fn from_gguf_architecture(arch: &str) -> Option<Family> {
        match arch {
            "llama" => Some(Family::Llama),
            "qwen2" => Some(Family::Qwen2),
            "qwen3" => Some(Family::Qwen3),
            "gemma3" => Some(Family::Gemma3),
            _ => None,
        }
    }

    /// `"llama, mistral, qwen2, qwen3, gemma3"`, for error messages.
    pub fn supported_list() -> String {
        Family::ALL.map(Family::name).join(", ")
    }

    /// The ways this family's decoder departs from Llama's that no checkpoint setting changes.
    pub fn variant(self) -> Variant {
        let llama = Variant::default();
        match self {
            Family::Llama | Family::Mistral => llama,
            // modeling_qwen2.py: `nn.Linear(..., bias=True)` for q/k/v, `bias=False` for o_proj.
            Family::Qwen2 => Variant {
                qkv_bias: true,
                ..llama
            },
            // modeling_qwen3.py: `q_norm`/`k_norm` = Qwen3RMSNorm(head_dim) on each head.
            Family::Qwen3 => Variant {
                qk_norm: true,
                ..llama
            },
            // modeling_gemma3.py: Gemma3TextScaledWordEmbedding, Gemma3RMSNorm (`1 + w`),
            // `gelu_pytorch_tanh`, four norms per layer, q/k norm.
            Family::Gemma3 => Variant {
                qk_norm: true,
                norm_gain: NormGain::OnePlusWeight,
                activation: Activation::GeluTanh,
                sandwich_norms: true,
                scale_embeddings: true,
                ..llama
            },
        }
    }
}

impl std::fmt::Display for Family {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// How an RMSNorm applies its learned gain `w` to the normalized `x̂ = x / √(mean(x²) + ε)`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NormGain {
    /// `x̂ · w`, `w` starting at 1 (Llama, Qwen, Mistral).
    #[default]
    Weight,
    /// `x̂ · (1 + w)`, `w` starting at 0 (Gemma's `Gemma3RMSNorm`). llama.cpp's converter stores
    /// `1 + w` in the GGUF instead, so loading a Gemma GGUF subtracts 1 (`checkpoint/names.rs`).
    OnePlusWeight,
}

/// The activation on the MLP's gate: `down(act(gate(x)) ⊙ up(x))`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Activation {
    /// SiLU (`hidden_act = "silu"`): SwiGLU (Shazeer 2020).
    #[default]
    Silu,
    /// GELU with the tanh approximation (`gelu_pytorch_tanh`): GeGLU.
    GeluTanh,
}

/// The fixed departures of a family from the Llama decoder (all off/default for Llama).
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Variant {
    /// q/k/v projections carry a bias (Qwen2 always; Llama's `attention_bias`).
    #[serde(default)]
    pub qkv_bias: bool,
    /// o_proj carries a bias (Llama's `attention_bias` sets both).
    #[serde(default)]
    pub o_bias: bool,
    /// The MLP projections carry biases (`mlp_bias`).
    #[serde(default)]
    pub mlp_bias: bool,
    /// RMSNorm over the head width on each query and key head before RoPE (`q_norm`, `k_norm`).
    #[serde(default)]
    pub qk_norm: bool,
    /// How every RMSNorm of the model applies its gain.
    #[serde(default)]
    pub norm_gain: NormGain,
    /// The MLP gate's activation.
    #[serde(default)]
    pub activation: Activation,
    /// Besides the pre-norms, a norm on the attention output and one on the MLP output, each
    /// before its residual add (`post_attention_layernorm` is then the attention's output norm
    /// and `pre_feedforward_layernorm` the MLP's input norm).
    #[serde(default)]
    pub sandwich_norms: bool,
    /// The token embeddings are multiplied by √D (the output head, tied or not, is not).
    #[serde(default)]
    pub scale_embeddings: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn family_names_round_trip_through_model_type_and_gguf_architecture() {
        for f in Family::ALL {
            assert_eq!(Family::from_model_type(f.model_type()), Some(f));
            assert_eq!(Family::from_model_type(f.name()), Some(f));
        }
        assert_eq!(
            Family::from_gguf_architecture("gemma3"),
            Some(Family::Gemma3)
        );
        assert_eq!(Family::from_gguf_architecture("phi3"), None);
        assert_eq!(Family::from_model_type("phi3"), None);
    }

    #[test]
    fn llama_and_mistral_have_no_fixed_departures() {
        assert_eq!(Family::Llama.variant(), Variant::default());
        assert_eq!(Family::Mistral.variant(), Variant::default());
        assert!(Family::Gemma3.variant().sandwich_norms);
    }
}
