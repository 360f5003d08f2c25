//! The one declarative table from GGUF tensor names (llama.cpp `gguf-py/gguf/constants.py`,
//! `MODEL_TENSORS[LLAMA]`) to the Hugging Face names our modules carry, read in both directions:
//! [`gguf_to_hf`] when loading a GGUF file, [`hf_to_gguf`] when exporting one. Model code never
//! sees GGUF names; this table, `gguf.rs` and the exporters are the only places that do.

/// What to do with a tensor on its way from GGUF to the model.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fixup {
    /// Use as stored.
    None,
    /// Undo llama.cpp's row permutation of `attn_q` (`convert_hf_to_gguf.py` `LlamaModel.permute`)
    /// with the query head count, so the rows fit rotate-half RoPE again.
    UnpermuteQ,
    /// The same for `attn_k`, with the key/value head count.
    UnpermuteK,
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

/// GGUF → Hugging Face, one line per tensor kind.
pub const GGUF_TO_HF: &[NameRule] = &[
    // Token embedding; with no `output.weight` the head is tied to it.
    rule(
        "token_embd.weight",
        "model.embed_tokens.weight",
        Fixup::None,
    ),
    rule(
        "blk.{i}.attn_norm.weight",
        "model.layers.{i}.input_layernorm.weight",
        Fixup::None,
    ),
    // llama.cpp stores Q and K rows interleaved for its own RoPE layout.
    rule(
        "blk.{i}.attn_q.weight",
        "model.layers.{i}.self_attn.q_proj.weight",
        Fixup::UnpermuteQ,
    ),
    rule(
        "blk.{i}.attn_k.weight",
        "model.layers.{i}.self_attn.k_proj.weight",
        Fixup::UnpermuteK,
    ),
    rule(
        "blk.{i}.attn_v.weight",
        "model.layers.{i}.self_attn.v_proj.weight",
        Fixup::None,
    ),
    rule(
        "blk.{i}.attn_output.weight",
        "model.layers.{i}.self_attn.o_proj.weight",
        Fixup::None,
    ),
    rule(
        "blk.{i}.ffn_norm.weight",
        "model.layers.{i}.post_attention_layernorm.weight",
        Fixup::None,
    ),
    rule(
        "blk.{i}.ffn_gate.weight",
        "model.layers.{i}.mlp.gate_proj.weight",
        Fixup::None,
    ),
    rule(
        "blk.{i}.ffn_up.weight",
        "model.layers.{i}.mlp.up_proj.weight",
        Fixup::None,
    ),
    rule(
        "blk.{i}.ffn_down.weight",
        "model.layers.{i}.mlp.down_proj.weight",
        Fixup::None,
    ),
    rule("output_norm.weight", "model.norm.weight", Fixup::None),
    rule("output.weight", "lm_head.weight", Fixup::None),
];

/// Maps a GGUF tensor name to `(hf name, fixup)`, or `None` for a name no rule covers.
pub fn gguf_to_hf(name: &str) -> Option<(String, Fixup)> {
    translate(name, |r| (r.gguf, r.hf))
}

/// Maps a Hugging Face tensor name to `(gguf name, fixup)`: the same table read backwards. The
/// fixup names the permutation to *undo* on loading; exporting applies its inverse
/// ([`permute_qk`](crate::gguf::permute_qk)). `None` for a name no rule covers.
pub fn hf_to_gguf(name: &str) -> Option<(String, Fixup)> {
    translate(name, |r| (r.hf, r.gguf))
}

/// The first rule whose `from` pattern matches `name` (`{i}` matching a layer index), with its
/// `to` pattern filled in.
fn translate(
    name: &str,
    sides: impl Fn(&NameRule) -> (&'static str, &'static str),
) -> Option<(String, Fixup)> {
    for r in GGUF_TO_HF {
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
        assert_eq!(
            gguf_to_hf("blk.12.ffn_down.weight"),
            Some(("model.layers.12.mlp.down_proj.weight".into(), Fixup::None))
        );
        assert_eq!(
            gguf_to_hf("blk.3.attn_k.weight").map(|x| x.1),
            Some(Fixup::UnpermuteK)
        );
        assert_eq!(
            gguf_to_hf("token_embd.weight").map(|x| x.0),
            Some("model.embed_tokens.weight".into())
        );
        assert_eq!(gguf_to_hf("blk.x.attn_q.weight"), None);
        assert_eq!(gguf_to_hf("rope_freqs.weight"), None);
    }

    #[test]
    fn every_rule_maps_back_to_the_name_it_came_from() {
        for r in GGUF_TO_HF {
            let gguf = r.gguf.replace("{i}", "17");
            let (hf, fixup) = gguf_to_hf(&gguf).unwrap();
            assert_eq!(hf_to_gguf(&hf), Some((gguf, fixup)), "{}", r.hf);
        }
        assert_eq!(hf_to_gguf("model.layers.x.mlp.up_proj.weight"), None);
        assert_eq!(hf_to_gguf("model.rotary_emb.inv_freq"), None);
    }
}
