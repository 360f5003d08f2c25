//! The declarative tables from GGUF tensor names (llama.cpp `gguf-py/gguf/constants.py`,
//! `MODEL_TENSORS[...]`, and `tensor_mapping.py`) to the Hugging Face names our modules carry,
//! one table per architecture, read in both directions: [`gguf_to_hf`] when loading a GGUF file,
//! [`hf_to_gguf`] when exporting one. Model code never sees GGUF names; these tables, `gguf.rs`
//! and the exporters are the only places that do.
//!
//! Two conversions ride along, each where llama.cpp's converter (`convert_hf_to_gguf.py`)
//! applies its inverse:
//! - **q/k row permutation**: `LlamaModel` sets `undo_permute = True` and permutes the rows of
//!   `q_proj`/`k_proj` (weights and biases) for llama.cpp's interleaved RoPE (`LLAMA_ROPE_TYPE_NORM`).
//!   `Qwen2Model`, `Qwen3Model` and `Gemma3Model` do not: their architectures use NEOX RoPE, which
//!   is transformers' rotate-half layout already. Mistral checkpoints are converted by
//!   `LlamaModel` to `general.architecture = "llama"`, so they are permuted too.
//! - **Gemma's norm gain**: `Gemma3Model.norm_shift` adds 1 to every `*norm.weight`, so llama.cpp
//!   can use a plain `x̂ · w` norm; transformers' `Gemma3RMSNorm` computes `x̂ · (1 + w)`, so
//!   reading subtracts the 1 again (as transformers' `Gemma2TensorProcessor` does).

use crate::family::Family;

/// What to do with a tensor on its way from GGUF to the model.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fixup {
    /// Use as stored.
    None,
    /// Undo llama.cpp's row permutation of `attn_q` (`LlamaModel.permute`) with the query head
    /// count, so the rows fit rotate-half RoPE again.
    UnpermuteQ,
    /// The same for `attn_k`, with the key/value head count.
    UnpermuteK,
    /// Subtract 1 (a Gemma norm gain stored as `1 + w`).
    MinusOne,
}

/// One rule: `{i}` stands for the layer index.
#[derive(Clone, Copy, Debug)]
pub struct NameRule {
    /// GGUF name pattern.
    pub gguf: &'static str,
    /// Hugging Face name pattern.
    pub hf: &'static str,
    /// Conversion on the way.
    pub fixup: Fixup,
}

const fn rule(gguf: &'static str, hf: &'static str, fixup: Fixup) -> NameRule {
    NameRule { gguf, hf, fixup }
}

use Fixup::{MinusOne, UnpermuteK, UnpermuteQ};

/// Tensors every architecture here stores the same way.
#[rustfmt::skip]
const SHARED: &[NameRule] = &[
    // Token embedding; with no `output.weight` the head is tied to it.
    rule("token_embd.weight", "model.embed_tokens.weight", Fixup::None),
    rule("blk.{i}.attn_v.weight", "model.layers.{i}.self_attn.v_proj.weight", Fixup::None),
    rule("blk.{i}.attn_output.weight", "model.layers.{i}.self_attn.o_proj.weight", Fixup::None),
    rule("blk.{i}.ffn_gate.weight", "model.layers.{i}.mlp.gate_proj.weight", Fixup::None),
    rule("blk.{i}.ffn_up.weight", "model.layers.{i}.mlp.up_proj.weight", Fixup::None),
    rule("blk.{i}.ffn_down.weight", "model.layers.{i}.mlp.down_proj.weight", Fixup::None),
    rule("output.weight", "lm_head.weight", Fixup::None),
];

/// `llama` (Llama, SmolLM2, Mistral): q/k rows permuted; `ffn_norm` is the pre-MLP norm.
#[rustfmt::skip]
const LLAMA: &[NameRule] = &[
    rule("blk.{i}.attn_norm.weight", "model.layers.{i}.input_layernorm.weight", Fixup::None),
    rule("blk.{i}.attn_q.weight", "model.layers.{i}.self_attn.q_proj.weight", UnpermuteQ),
    rule("blk.{i}.attn_k.weight", "model.layers.{i}.self_attn.k_proj.weight", UnpermuteK),
    // `attention_bias` checkpoints: the converter permutes `q_proj.bias`/`k_proj.bias` as well.
    rule("blk.{i}.attn_q.bias", "model.layers.{i}.self_attn.q_proj.bias", UnpermuteQ),
    rule("blk.{i}.attn_k.bias", "model.layers.{i}.self_attn.k_proj.bias", UnpermuteK),
    rule("blk.{i}.attn_v.bias", "model.layers.{i}.self_attn.v_proj.bias", Fixup::None),
    rule("blk.{i}.attn_output.bias", "model.layers.{i}.self_attn.o_proj.bias", Fixup::None),
    rule("blk.{i}.ffn_norm.weight", "model.layers.{i}.post_attention_layernorm.weight", Fixup::None),
    rule("output_norm.weight", "model.norm.weight", Fixup::None),
];

/// `qwen2`: no permutation; biases on q/k/v.
#[rustfmt::skip]
const QWEN2: &[NameRule] = &[
    rule("blk.{i}.attn_norm.weight", "model.layers.{i}.input_layernorm.weight", Fixup::None),
    rule("blk.{i}.attn_q.weight", "model.layers.{i}.self_attn.q_proj.weight", Fixup::None),
    rule("blk.{i}.attn_k.weight", "model.layers.{i}.self_attn.k_proj.weight", Fixup::None),
    rule("blk.{i}.attn_q.bias", "model.layers.{i}.self_attn.q_proj.bias", Fixup::None),
    rule("blk.{i}.attn_k.bias", "model.layers.{i}.self_attn.k_proj.bias", Fixup::None),
    rule("blk.{i}.attn_v.bias", "model.layers.{i}.self_attn.v_proj.bias", Fixup::None),
    rule("blk.{i}.ffn_norm.weight", "model.layers.{i}.post_attention_layernorm.weight", Fixup::None),
    rule("output_norm.weight", "model.norm.weight", Fixup::None),
];

/// `qwen3`: no permutation; per-head q/k norms.
#[rustfmt::skip]
const QWEN3: &[NameRule] = &[
    rule("blk.{i}.attn_norm.weight", "model.layers.{i}.input_layernorm.weight", Fixup::None),
    rule("blk.{i}.attn_q.weight", "model.layers.{i}.self_attn.q_proj.weight", Fixup::None),
    rule("blk.{i}.attn_k.weight", "model.layers.{i}.self_attn.k_proj.weight", Fixup::None),
    rule("blk.{i}.attn_q_norm.weight", "model.layers.{i}.self_attn.q_norm.weight", Fixup::None),
    rule("blk.{i}.attn_k_norm.weight", "model.layers.{i}.self_attn.k_norm.weight", Fixup::None),
    rule("blk.{i}.ffn_norm.weight", "model.layers.{i}.post_attention_layernorm.weight", Fixup::None),
    rule("output_norm.weight", "model.norm.weight", Fixup::None),
];

/// `gemma3`: no permutation; four norms per layer plus q/k norms, every gain stored as `1 + w`.
/// Note the shift of meaning: Gemma's `post_attention_layernorm` is `post_attention_norm` (on the
/// attention output) and `ffn_norm` is `pre_feedforward_layernorm`.
#[rustfmt::skip]
const GEMMA3: &[NameRule] = &[
    rule("blk.{i}.attn_norm.weight", "model.layers.{i}.input_layernorm.weight", MinusOne),
    rule("blk.{i}.attn_q.weight", "model.layers.{i}.self_attn.q_proj.weight", Fixup::None),
    rule("blk.{i}.attn_k.weight", "model.layers.{i}.self_attn.k_proj.weight", Fixup::None),
    rule("blk.{i}.attn_q_norm.weight", "model.layers.{i}.self_attn.q_norm.weight", MinusOne),
    rule("blk.{i}.attn_k_norm.weight", "model.layers.{i}.self_attn.k_norm.weight", MinusOne),
    rule("blk.{i}.post_attention_norm.weight", "model.layers.{i}.post_attention_layernorm.weight", MinusOne),
    rule("blk.{i}.ffn_norm.weight", "model.layers.{i}.pre_feedforward_layernorm.weight", MinusOne),
    rule("blk.{i}.post_ffw_norm.weight", "model.layers.{i}.post_feedforward_layernorm.weight", MinusOne),
    rule("output_norm.weight", "model.norm.weight", MinusOne),
];

/// The rules of `family`'s GGUF architecture, after the [`SHARED`] ones. (Mistral reads as
/// `llama`: that is the architecture llama.cpp writes for it.)
pub fn rules(family: Family) -> impl Iterator<Item = &'static NameRule> {
    let own = match family {
        Family::Llama | Family::Mistral => LLAMA,
        Family::Qwen2 => QWEN2,
        Family::Qwen3 => QWEN3,
        Family::Gemma3 => GEMMA3,
    };
    SHARED.iter().chain(own)
}

/// Maps a GGUF tensor name of a `family` file to `(hf name, fixup)`, or `None` for a name no
/// rule covers.
pub fn gguf_to_hf(family: Family, name: &str) -> Option<(String, Fixup)> {
    translate(family, name, |r| (r.gguf, r.hf))
}

/// Maps a Hugging Face tensor name to `(gguf name, fixup)` for a `family` file: the same table
/// read backwards. The fixup names the conversion to *undo* on loading; exporting applies its
/// inverse ([`permute_qk`](crate::gguf::permute_qk) for the q/k rows). `None` for a name no rule
/// covers.
pub fn hf_to_gguf(family: Family, name: &str) -> Option<(String, Fixup)> {
    translate(family, name, |r| (r.hf, r.gguf))
}

/// The first rule of `family` whose `from` pattern matches `name` (`{i}` matching a layer
/// index), with its `to` pattern filled in.
fn translate(
    family: Family,
    name: &str,
    sides: impl Fn(&NameRule) -> (&'static str, &'static str),
) -> Option<(String, Fixup)> {
    for r in rules(family) {
        let (from, to) = sides(r);
        if let Some((prefix, suffix)) = from.split_once("{i}") {
            let Some(rest) = name
                .strip_prefix(prefix)
                .and_then(|s| s.strip_suffix(suffix))
            else {
                continue;
            };
            if !rest.is_empty() && rest.bytes().all(|b| b.is_ascii_digit()) {
                return Some((to.replace("{i}", rest), r.fixup));
            }
        } else if from == name {
            return Some((to.to_string(), r.fixup));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layer_names_map_with_their_index() {
        let l = Family::Llama;
        assert_eq!(
            gguf_to_hf(l, "blk.12.ffn_down.weight"),
            Some(("model.layers.12.mlp.down_proj.weight".into(), Fixup::None))
        );
        assert_eq!(
            gguf_to_hf(l, "blk.3.attn_k.weight").map(|x| x.1),
            Some(Fixup::UnpermuteK)
        );
        assert_eq!(
            gguf_to_hf(l, "token_embd.weight").map(|x| x.0),
            Some("model.embed_tokens.weight".into())
        );
        assert_eq!(gguf_to_hf(l, "blk.x.attn_q.weight"), None);
        assert_eq!(gguf_to_hf(l, "rope_freqs.weight"), None);
    }

    /// llama.cpp's converter permutes q/k only in `LlamaModel` (`undo_permute = True`).
    #[test]
    fn only_the_llama_architecture_has_permuted_q_and_k() {
        for family in Family::ALL {
            for name in ["blk.0.attn_q.weight", "blk.0.attn_k.weight"] {
                let (_, fixup) = gguf_to_hf(family, name).unwrap();
                let permuted = matches!(fixup, Fixup::UnpermuteQ | Fixup::UnpermuteK);
                let llama = matches!(family, Family::Llama | Family::Mistral);
                assert_eq!(permuted, llama, "{family} {name}");
            }
        }
    }

    #[test]
    fn gemma_norms_are_shifted_and_renamed_and_its_linears_are_not() {
        let g = Family::Gemma3;
        assert_eq!(
            gguf_to_hf(g, "blk.4.ffn_norm.weight"),
            Some((
                "model.layers.4.pre_feedforward_layernorm.weight".into(),
                Fixup::MinusOne
            ))
        );
        assert_eq!(
            gguf_to_hf(g, "blk.4.post_attention_norm.weight").map(|x| x.0),
            Some("model.layers.4.post_attention_layernorm.weight".into())
        );
        for r in rules(g) {
            assert_eq!(
                r.gguf.ends_with("norm.weight"),
                r.fixup == MinusOne,
                "{r:?}"
            );
        }
        // Llama's ffn_norm is the pre-MLP norm under the Llama name.
        assert_eq!(
            gguf_to_hf(Family::Llama, "blk.4.ffn_norm.weight").map(|x| x.0),
            Some("model.layers.4.post_attention_layernorm.weight".into())
        );
    }

    #[test]
    fn every_rule_maps_back_to_the_name_it_came_from() {
        for family in Family::ALL {
            for r in rules(family) {
                let gguf = r.gguf.replace("{i}", "17");
                let (hf, fixup) = gguf_to_hf(family, &gguf).unwrap();
                assert_eq!(
                    hf_to_gguf(family, &hf),
                    Some((gguf, fixup)),
                    "{family} {}",
                    r.hf
                );
            }
        }
        let l = Family::Llama;
        assert_eq!(hf_to_gguf(l, "model.layers.x.mlp.up_proj.weight"), None);
        assert_eq!(hf_to_gguf(l, "model.rotary_emb.inv_freq"), None);
    }
}
