//! GGUF checkpoints (llama.cpp): `llama.*` metadata becomes a [`LlamaConfig`], tensors are
//! dequantized to f32, renamed through [`GGUF_TO_HF`](super::names::GGUF_TO_HF), and the q/k rows
//! are un-permuted back to the rotate-half layout transformers uses.

use std::collections::BTreeMap;
use std::path::Path;

use lora_core::tensor_io::HostTensor;

use crate::checkpoint::build::NamedWeights;
use crate::checkpoint::names::{Fixup, gguf_to_hf};
use crate::config::LlamaConfig;
use crate::error::ModelError;
use crate::gguf::{GgufFile, unpermute_qk};

/// Reads the model shape from `llama.*` metadata.
///
/// # Errors
/// [`ModelError::Config`] naming the missing key, or an architecture other than `llama`.
pub fn read_config(file: &GgufFile) -> Result<LlamaConfig, ModelError> {
    let path = file.path().to_path_buf();
    let cfg_err = |message: String| ModelError::Config {
        path: path.clone(),
        message,
    };
    let arch = file.architecture()?;
    if arch != "llama" {
        return Err(cfg_err(format!(
            "general.architecture is {arch:?}; only \"llama\" is supported"
        )));
    }
    let d_model = file.get_usize("llama.embedding_length")?;
    let n_heads = file.get_usize("llama.attention.head_count")?;
    let n_kv_heads = file
        .get_opt::<u64>("llama.attention.head_count_kv")?
        .map_or(n_heads, |v| v as usize);
    // `attention.key_length` is the exact head width; `rope.dimension_count` equals it for
    // models with full rotary embeddings.
    let head_dim = match (
        file.get_opt::<u64>("llama.attention.key_length")?,
        file.get_opt::<u64>("llama.rope.dimension_count")?,
    ) {
        (Some(v), _) | (None, Some(v)) => v as usize,
        (None, None) => d_model / n_heads.max(1),
    };
    let embd = file
        .tensor_info("token_embd.weight")
        .ok_or_else(|| ModelError::Tensor {
            path: path.clone(),
            name: "token_embd.weight".into(),
            message: "missing".into(),
        })?;
    let vocab_size = embd.dims.first().copied().unwrap_or(0);
    let config = LlamaConfig {
        vocab_size,
        d_model,
        n_layers: file.get_usize("llama.block_count")?,
        n_heads,
        n_kv_heads,
        head_dim,
        d_ff: file.get_usize("llama.feed_forward_length")?,
        rope_theta: file
            .get_opt::<f32>("llama.rope.freq_base")?
            .map_or(10000.0, f64::from),
        rms_norm_eps: file
            .get_opt::<f32>("llama.attention.layer_norm_rms_epsilon")?
            .map_or(1e-5, f64::from),
        max_seq_len: file.get_usize("llama.context_length")?,
        tie_word_embeddings: file.tensor_info("output.weight").is_none(),
    };
    config.validate().map_err(cfg_err)?;
    Ok(config)
}

/// Dequantizes and renames every tensor of `file`.
///
/// # Errors
/// [`ModelError::Tensor`] for a tensor no rule covers (named), and the GGUF errors of
/// dequantization (which name the tensor and its type).
pub fn read_weights(file: &GgufFile, config: &LlamaConfig) -> Result<NamedWeights, ModelError> {
    let path = file.path().to_path_buf();
    let mut tensors = BTreeMap::new();
    for info in file.tensors() {
        let (hf, fixup) = gguf_to_hf(&info.name).ok_or_else(|| ModelError::Tensor {
            path: path.clone(),
            name: info.name.clone(),
            message: "no Llama weight has this name (unsupported tensor in this GGUF)".into(),
        })?;
        let (shape, mut data) = file.tensor_f32(&info.name)?;
        let n_head = match fixup {
            Fixup::None => None,
            Fixup::UnpermuteQ => Some(config.n_heads),
            Fixup::UnpermuteK => Some(config.n_kv_heads),
        };
        if let (Some(n_head), [rows, cols]) = (n_head, shape.as_slice()) {
            data = unpermute_qk(&data, *rows, *cols, n_head)?;
        }
        tensors.insert(hf, HostTensor { shape, data });
    }
    Ok(NamedWeights {
        source: path,
        tensors,
    })
}

/// Opens a GGUF file.
///
/// # Errors
/// The parse errors of [`GgufFile::open`], which name the file.
pub fn open(path: &Path) -> Result<GgufFile, ModelError> {
    Ok(GgufFile::open(path)?)
}
