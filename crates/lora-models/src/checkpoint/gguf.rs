//! GGUF checkpoints (llama.cpp): `{arch}.*` metadata becomes a [`LlamaConfig`], tensors are
//! dequantized to f32, renamed through the architecture's table in [`super::names`], and given
//! that table's fixups (q/k rows un-permuted for `llama`, Gemma's norm gains shifted back).

use std::collections::BTreeMap;
use std::path::Path;

use lora_core::tensor_io::HostTensor;

use crate::checkpoint::build::NamedWeights;
use crate::checkpoint::lazy::LazyTensor;
use crate::checkpoint::names::{Fixup, gguf_to_hf};
use crate::config::{LlamaConfig, SlidingWindow};
use crate::error::ModelError;
use crate::family::Family;
use crate::gguf::{GgufFile, unpermute_qk};

/// The family of a GGUF file, from `general.architecture`.
///
/// # Errors
/// [`ModelError::Config`] naming an unsupported architecture and the supported list.
pub fn family(file: &GgufFile) -> Result<Family, ModelError> {
    let arch = file.architecture()?;
    Family::from_gguf_architecture(arch).ok_or_else(|| ModelError::Config {
        path: file.path().to_path_buf(),
        message: format!(
            "general.architecture is {arch:?}, which is not supported; supported GGUF architectures: llama (also Mistral), qwen2, qwen3, gemma3"
        ),
    })
}

/// Reads the model shape from `{arch}.*` metadata (llama.cpp `llama-model.cpp`,
/// `load_hparams`, and what `convert_hf_to_gguf.py` writes for each architecture).
///
/// # Errors
/// [`ModelError::Config`] naming the missing key, or an unsupported architecture.
pub fn read_config(file: &GgufFile) -> Result<LlamaConfig, ModelError> {
    let path = file.path().to_path_buf();
    let family = family(file)?;
    let arch = file.architecture()?;
    let key = |k: &str| format!("{arch}.{k}");
    let d_model = file.get_usize(&key("embedding_length"))?;
    let n_layers = file.get_usize(&key("block_count"))?;
    let n_heads = file.get_usize(&key("attention.head_count"))?;
    let n_kv_heads = file
        .get_opt::<u64>(&key("attention.head_count_kv"))?
        .map_or(n_heads, |v| v as usize);
    // `attention.key_length` is the exact head width; `rope.dimension_count` equals it for
    // models with full rotary embeddings.
    let head_dim = match (
        file.get_opt::<u64>(&key("attention.key_length"))?,
        file.get_opt::<u64>(&key("rope.dimension_count"))?,
    ) {
        (Some(v), _) | (None, Some(v)) => v as usize,
        (None, None) => d_model.checked_div(n_heads).unwrap_or(0),
    };
    let embd = file
        .tensor_info("token_embd.weight")
        .ok_or_else(|| ModelError::Tensor {
            path: path.clone(),
            name: "token_embd.weight".into(),
            message: "missing".into(),
        })?;
    let vocab_size = embd.dims.first().copied().unwrap_or(0);
    let mut config = LlamaConfig {
        family,
        vocab_size,
        d_model,
        n_layers,
        n_heads,
        n_kv_heads,
        head_dim,
        d_ff: file.get_usize(&key("feed_forward_length"))?,
        rope_theta: file
            .get_opt::<f32>(&key("rope.freq_base"))?
            .map_or(10000.0, f64::from),
        rms_norm_eps: file
            .get_opt::<f32>(&key("attention.layer_norm_rms_epsilon"))?
            .map_or(1e-5, f64::from),
        max_seq_len: file.get_usize(&key("context_length"))?,
        tie_word_embeddings: file.tensor_info("output.weight").is_none(),
        variant: family.variant(),
        sliding_window: None,
        query_pre_attn_scalar: None,
    };
    // Biases are in the file or not (llama with `attention_bias`; Qwen2 always has q/k/v ones).
    config.variant.qkv_bias = file.tensor_info("blk.0.attn_q.bias").is_some();
    config.variant.o_bias = file.tensor_info("blk.0.attn_output.bias").is_some();
    if family == Family::Gemma3 {
        // llama.cpp `load_hparams` for LLM_ARCH_GEMMA3: `set_swa_pattern(6)` (every sixth layer
        // global), `rope_freq_base_train_swa = 10000`; the window is in the file.
        config.sliding_window = Some(SlidingWindow {
            size: file.get_usize(&key("attention.sliding_window"))?,
            layers: (0..n_layers).map(|i| (i + 1) % 6 != 0).collect(),
            rope_theta: Some(10000.0),
        });
        // The same place: the 27B model (62 layers) scales scores by 1/√(D/H), the others by
        // 1/√head_dim (transformers' `query_pre_attn_scalar`).
        config.query_pre_attn_scalar = Some(match n_layers {
            62 => (d_model / n_heads.max(1)) as f64,
            _ => head_dim as f64,
        });
    }
    config.validate().map_err(|message| ModelError::Config {
        path: path.clone(),
        message,
    })?;
    Ok(config)
}

/// Every tensor of `file` under its Hugging Face name, dequantized (and fixed up: q/k rows
/// un-permuted, Gemma norms shifted) only when the model builder takes it.
///
/// # Errors
/// [`ModelError::Tensor`] for a tensor no rule covers (named); the GGUF errors of
/// dequantization (which name the tensor and its type) come when it is taken.
pub fn read_weights<'a>(
    file: &'a GgufFile,
    config: &LlamaConfig,
) -> Result<NamedWeights<'a>, ModelError> {
    let path = file.path().to_path_buf();
    let mut tensors = BTreeMap::new();
    for info in file.tensors() {
        let (hf, fixup) =
            gguf_to_hf(config.family, &info.name).ok_or_else(|| ModelError::Tensor {
                path: path.clone(),
                name: info.name.clone(),
                message: format!(
                    "no {} weight has this name (unsupported tensor in this GGUF)",
                    config.family
                ),
            })?;
        let n_head = match fixup {
            Fixup::None | Fixup::MinusOne => None,
            Fixup::UnpermuteQ => Some(config.n_heads),
            Fixup::UnpermuteK => Some(config.n_kv_heads),
        };
        let shape = info.dims.clone(); // row-major already
        let name = info.name.clone();
        let lazy = LazyTensor::new(shape, move || {
            let (shape, mut data) = file.tensor_f32(&name)?;
            file.release(&name);
            if let Some(n_head) = n_head {
                // A bias is the one-column case.
                let (rows, cols) = match shape.as_slice() {
                    [rows, cols] => (*rows, *cols),
                    [rows] => (*rows, 1),
                    _ => (0, 0),
                };
                data = unpermute_qk(&data, rows, cols, n_head)?;
            }
            if fixup == Fixup::MinusOne {
                data.iter_mut().for_each(|w| *w -= 1.0);
            }
            Ok(HostTensor { shape, data })
        });
        tensors.insert(hf, lazy);
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gguf::GgufValue;
    use crate::gguf::testutil::GgufBuilder;

    #[test]
    fn an_unsupported_architecture_is_an_error_naming_it_and_the_supported_ones() {
        let b = GgufBuilder::new().kv("general.architecture", GgufValue::String("phi3".into()));
        let f = GgufFile::from_bytes("phi3.gguf", b.build()).unwrap();
        let err = read_config(&f).unwrap_err().to_string();
        assert!(
            err.contains("phi3.gguf") && err.contains("\"phi3\"") && err.contains("gemma3"),
            "{err}"
        );
    }
}
