//! A merged [`Llama`] as a GGUF file llama.cpp loads: the layout `convert_hf_to_gguf.py`
//! (`TextModel.set_gguf_parameters`, `LlamaModel`) writes for the `llama` architecture.
//!
//! - `general.architecture`, `general.type = "model"`, `general.file_type` (llama.cpp's
//!   `LlamaFileType` of the chosen weight type), `general.quantization_version = 2`, plus the
//!   source's descriptive `general.*` keys (name, license, …);
//! - `llama.*`: `block_count`, `context_length`, `embedding_length`, `feed_forward_length`,
//!   `attention.head_count`, `attention.head_count_kv`, `rope.freq_base`,
//!   `attention.layer_norm_rms_epsilon`, `attention.key_length` / `value_length`, `vocab_size`,
//!   `rope.dimension_count` (integers as u32, floats as f32, as gguf-py's writer types them);
//! - the source's `tokenizer.*` keys ([`vocab`](super::vocab));
//! - tensors renamed through [`hf_to_gguf`] (the loader's table read backwards), `attn_q` /
//!   `attn_k` rows permuted for llama.cpp's RoPE ([`permute_qk`]); no `output.weight` when the
//!   head still equals the embedding (tied).
//!
//! Storage types follow the converter and `llama-quantize`: 1-D tensors and norms stay F32; every
//! other tensor takes the requested type, or its fallback when its rows are not a whole number of
//! blocks (`tensor_type_fallback` in `src/llama-quant.cpp`: Q4_K → Q5_0, Q6_K → Q8_0, then F16).

use std::path::Path;

use lora_core::LoraModel;
use lora_core::tensor_io::HostTensor;

use super::vocab::Metadata;
use crate::checkpoint::hf::model_weights;
use crate::checkpoint::names::{Fixup, hf_to_gguf};
use crate::config::LlamaConfig;
use crate::error::ModelError;
use crate::gguf::{GgmlType, GgufValue, GgufWriter, permute_qk};
use crate::llama::Llama;

/// `GGML_QNT_VERSION`: the quantization format version written as `general.quantization_version`.
const QUANTIZATION_VERSION: u32 = 2;

/// The weight types an export can ask for, by their command-line names.
pub const WEIGHT_TYPES: &[(&str, GgmlType)] = &[
    ("f32", GgmlType::F32),
    ("f16", GgmlType::F16),
    ("bf16", GgmlType::BF16),
    ("q8_0", GgmlType::Q8_0),
    ("q6_k", GgmlType::Q6_K),
    ("q5_0", GgmlType::Q5_0),
    ("q4_k", GgmlType::Q4_K),
    ("q4_0", GgmlType::Q4_0),
];

/// The weight type named `name` (`f32`, `f16`, `bf16`, `q8_0`, `q6_k`, `q5_0`, `q4_k`, `q4_0`;
/// case-insensitive), or `None`.
pub fn parse_weight_type(name: &str) -> Option<GgmlType> {
    let name = name.to_ascii_lowercase();
    WEIGHT_TYPES.iter().find(|(n, _)| *n == name).map(|t| t.1)
}

/// llama.cpp's `general.file_type` (`LlamaFileType` in gguf-py `constants.py`) for a file whose
/// matrices are mostly `dtype`: ALL_F32 0, MOSTLY_F16 1, MOSTLY_Q4_0 2, MOSTLY_Q8_0 7,
/// MOSTLY_Q5_0 8, MOSTLY_Q4_K_S 14, MOSTLY_Q6_K 18, MOSTLY_BF16 32.
pub fn file_type(dtype: GgmlType) -> u32 {
    match dtype {
        GgmlType::F16 => 1,
        GgmlType::Q4_0 => 2,
        GgmlType::Q8_0 => 7,
        GgmlType::Q5_0 => 8,
        GgmlType::Q4_K => 14,
        GgmlType::Q6_K => 18,
        GgmlType::BF16 => 32,
        _ => 0,
    }
}

/// The type a tensor named `name` of row-major shape `dims` is stored in when `target` is asked
/// for (see the module docs).
pub fn tensor_type(name: &str, dims: &[usize], target: GgmlType) -> GgmlType {
    if dims.len() <= 1 || name.ends_with("_norm.weight") {
        return GgmlType::F32;
    }
    let row = dims.last().copied().unwrap_or(1);
    let fits = |t: GgmlType| row.is_multiple_of(t.block_size());
    if fits(target) {
        return target;
    }
    let fallback = match target {
        GgmlType::Q4_K => GgmlType::Q5_0,
        GgmlType::Q6_K => GgmlType::Q8_0,
        other => other,
    };
    if fits(fallback) {
        fallback
    } else {
        GgmlType::F16
    }
}

/// The `llama.*` keys for `config` (see the module docs).
pub fn llama_metadata(config: &LlamaConfig) -> Result<Metadata, String> {
    let u32_of = |key: &str, v: usize| -> Result<(String, GgufValue), String> {
        let v = u32::try_from(v).map_err(|_| format!("{key} = {v} does not fit in u32"))?;
        Ok((format!("llama.{key}"), GgufValue::U32(v)))
    };
    Ok(vec![
        u32_of("block_count", config.n_layers)?,
        u32_of("context_length", config.max_seq_len)?,
        u32_of("embedding_length", config.d_model)?,
        u32_of("feed_forward_length", config.d_ff)?,
        u32_of("attention.head_count", config.n_heads)?,
        u32_of("attention.head_count_kv", config.n_kv_heads)?,
        (
            "llama.rope.freq_base".into(),
            GgufValue::F32(config.rope_theta as f32),
        ),
        (
            "llama.attention.layer_norm_rms_epsilon".into(),
            GgufValue::F32(config.rms_norm_eps as f32),
        ),
        u32_of("attention.key_length", config.head_dim)?,
        u32_of("attention.value_length", config.head_dim)?,
        u32_of("vocab_size", config.vocab_size)?,
        u32_of("rope.dimension_count", config.head_dim)?,
    ])
}

/// Whether the head still equals the embedding exactly (then no `output.weight` is written).
fn head_is_tied(model: &Llama) -> bool {
    model.config.tie_word_embeddings && {
        let head = model.lm_head.weight.val().transpose();
        let emb = model.model.embed_tokens.weight.val();
        head.equal(emb).all().into_scalar::<bool>()
    }
}

/// Errors unless every adapter of `model` is merged and unloaded: their updates would otherwise be
/// silently missing from the exported weights.
fn check_no_adapters(model: &Llama, out: &Path) -> Result<(), ModelError> {
    let mut pending = Vec::new();
    model.visit_linears(&mut |path, lin| {
        if lin.adapter.is_some() && !lin.merged {
            pending.push(path.to_string());
        }
    });
    match pending.first() {
        None => Ok(()),
        Some(first) => Err(ModelError::Export {
            path: out.to_path_buf(),
            message: format!(
                "{} layers (first: {first}) carry unmerged adapters; merge them first (lora_core::merge_and_unload)",
                pending.len()
            ),
        }),
    }
}

/// A tensor as the GGUF file stores it: the inverse of the loader's fixup — q/k rows permuted
/// for llama.cpp's RoPE, Gemma's norm gains stored as `1 + w` — everything else as is.
pub(super) fn to_gguf_rows(
    t: HostTensor,
    fixup: Fixup,
    config: &LlamaConfig,
) -> Result<HostTensor, ModelError> {
    let n_head = match fixup {
        Fixup::None => return Ok(t),
        Fixup::MinusOne => {
            let data = t.data.iter().map(|w| w + 1.0).collect();
            return Ok(HostTensor {
                shape: t.shape,
                data,
            });
        }
        Fixup::UnpermuteQ => config.n_heads,
        Fixup::UnpermuteK => config.n_kv_heads,
    };
    let (rows, cols) = match t.shape.as_slice() {
        [rows, cols] => (*rows, *cols),
        [rows] => (*rows, 1),
        _ => (0, 0),
    };
    let data = permute_qk(&t.data, rows, cols, n_head)?;
    Ok(HostTensor {
        shape: t.shape,
        data,
    })
}

/// The merged model as a GGUF writer (nothing written yet): metadata as the module docs say, then
/// `extra` (the source's `tokenizer.*` and descriptive `general.*` keys), then the tensors in
/// `target` (with the per-tensor rules of [`tensor_type`]).
///
/// # Errors
/// [`ModelError::Export`] if an adapter is still unmerged or a weight has no GGUF name;
/// the writer's errors (non-finite weights) as [`ModelError::Gguf`].
pub fn merged_gguf(
    model: &Llama,
    target: GgmlType,
    extra: &Metadata,
    out: &Path,
) -> Result<GgufWriter, ModelError> {
    check_no_adapters(model, out)?;
    let export_err = |message: String| ModelError::Export {
        path: out.to_path_buf(),
        message,
    };
    let mut w = GgufWriter::new();
    w.set_str("general.architecture", "llama")?;
    w.set_str("general.type", "model")?;
    for (k, v) in extra.iter().filter(|(k, _)| k.starts_with("general.")) {
        w.set(k.clone(), v.clone())?;
    }
    for (k, v) in llama_metadata(&model.config).map_err(export_err)? {
        w.set(k, v)?;
    }
    w.set("general.file_type", GgufValue::U32(file_type(target)))?;
    w.set(
        "general.quantization_version",
        GgufValue::U32(QUANTIZATION_VERSION),
    )?;
    for (k, v) in extra.iter().filter(|(k, _)| !k.starts_with("general.")) {
        w.set(k.clone(), v.clone())?;
    }
    for (hf, t) in model_weights(model, head_is_tied(model))? {
        let (name, fixup) = hf_to_gguf(model.config.family, &hf)
            .ok_or_else(|| export_err(format!("weight {hf:?} has no GGUF name")))?;
        let t = to_gguf_rows(t, fixup, &model.config)?;
        let dtype = tensor_type(&name, &t.shape, target);
        w.add_tensor(name, &t.shape, dtype, t.data)?;
    }
    Ok(w)
}
