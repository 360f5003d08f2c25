//! Hugging Face model directories: `config.json` + `model.safetensors` (or a sharded
//! `model.safetensors.index.json`), f32/f16/bf16. Reading converts PyTorch `[out, in]` weights
//! to burn's `[in, out]` (in `build.rs`); writing (a merged model) converts back.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use lora_core::LoraLinear;
use lora_core::tensor_io::{DiskDtype, HostTensor, write_atomic, write_safetensors};
use serde::Deserialize;

use crate::checkpoint::build::NamedWeights;
use crate::checkpoint::hf_config::HfConfig;
use crate::checkpoint::lazy::safetensors_lazy;
use crate::config::LlamaConfig;
use crate::error::ModelError;
use crate::llama::Llama;

/// Reads `dir/config.json`.
///
/// # Errors
/// [`ModelError::Io`], or [`ModelError::Config`] naming the missing/bad field.
pub fn read_config(dir: &Path) -> Result<LlamaConfig, ModelError> {
    let path = dir.join("config.json");
    let text = std::fs::read_to_string(&path).map_err(|source| ModelError::Io {
        path: path.clone(),
        source,
    })?;
    let hf: HfConfig = serde_json::from_str(&text).map_err(|e| ModelError::Config {
        path: path.clone(),
        message: e.to_string(),
    })?;
    hf.to_config()
        .map_err(|message| ModelError::Config { path, message })
}

/// Every weight of a Hugging Face directory (single file or sharded), memory-mapped: each is
/// decoded when the model builder takes it.
///
/// # Errors
/// [`ModelError::Io`] / [`ModelError::Config`] for a missing or bad index, [`ModelError::Tensor`]
/// for a file that is not valid safetensors (named).
pub fn read_weights(dir: &Path) -> Result<NamedWeights<'static>, ModelError> {
    let single = dir.join("model.safetensors");
    let index = dir.join("model.safetensors.index.json");
    let mut tensors = BTreeMap::new();
    if single.exists() {
        tensors.extend(safetensors_lazy(&single)?);
    } else if index.exists() {
        #[derive(Deserialize)]
        struct Index {
            weight_map: BTreeMap<String, String>,
        }
        let text = std::fs::read_to_string(&index).map_err(|source| ModelError::Io {
            path: index.clone(),
            source,
        })?;
        let idx: Index = serde_json::from_str(&text).map_err(|e| ModelError::Config {
            path: index.clone(),
            message: e.to_string(),
        })?;
        let shards: std::collections::BTreeSet<&String> = idx.weight_map.values().collect();
        for shard in shards {
            tensors.extend(safetensors_lazy(&dir.join(shard))?);
        }
    } else {
        return Err(ModelError::Io {
            path: single,
            source: std::io::Error::new(
                std::io::ErrorKind::NotFound,
                "no model.safetensors or model.safetensors.index.json",
            ),
        });
    }
    Ok(NamedWeights {
        source: dir.to_path_buf(),
        tensors,
    })
}

fn linear_out(
    lin: &LoraLinear,
    name: &str,
    out: &mut BTreeMap<String, HostTensor>,
) -> Result<(), ModelError> {
    // burn [in, out] → PyTorch [out, in].
    out.insert(
        format!("{name}.weight"),
        HostTensor::from_tensor(lin.weight.val().transpose())?,
    );
    if let Some(b) = &lin.bias {
        out.insert(format!("{name}.bias"), HostTensor::from_tensor(b.val())?);
    }
    Ok(())
}

/// All weights of `model` by Hugging Face name in PyTorch layout. The head is written only when
/// it differs from the embedding (`tied == false`).
///
/// # Errors
/// Reading tensor data back from the device failed.
pub fn model_weights(
    model: &Llama,
    tied: bool,
) -> Result<BTreeMap<String, HostTensor>, ModelError> {
    let mut out = BTreeMap::new();
    out.insert(
        "model.embed_tokens.weight".into(),
        HostTensor::from_tensor(model.model.embed_tokens.weight.val())?,
    );
    for (i, layer) in model.model.layers.iter().enumerate() {
        let p = format!("model.layers.{i}");
        let a = &layer.self_attn;
        let norms = [
            ("input_layernorm", Some(&layer.input_layernorm)),
            (
                "post_attention_layernorm",
                Some(&layer.post_attention_layernorm),
            ),
            ("self_attn.q_norm", a.q_norm.as_ref()),
            ("self_attn.k_norm", a.k_norm.as_ref()),
            (
                "pre_feedforward_layernorm",
                layer
                    .sandwich
                    .as_ref()
                    .map(|s| &s.pre_feedforward_layernorm),
            ),
            (
                "post_feedforward_layernorm",
                layer
                    .sandwich
                    .as_ref()
                    .map(|s| &s.post_feedforward_layernorm),
            ),
        ];
        for (name, norm) in norms.into_iter().filter_map(|(n, x)| Some((n, x?))) {
            out.insert(
                format!("{p}.{name}.weight"),
                HostTensor::from_tensor(norm.weight.val())?,
            );
        }
        for (lin, n) in [
            (&a.q_proj, "q_proj"),
            (&a.k_proj, "k_proj"),
            (&a.v_proj, "v_proj"),
            (&a.o_proj, "o_proj"),
        ] {
            linear_out(lin, &format!("{p}.self_attn.{n}"), &mut out)?;
        }
        let m = &layer.mlp;
        for (lin, n) in [
            (&m.gate_proj, "gate_proj"),
            (&m.up_proj, "up_proj"),
            (&m.down_proj, "down_proj"),
        ] {
            linear_out(lin, &format!("{p}.mlp.{n}"), &mut out)?;
        }
    }
    out.insert(
        "model.norm.weight".into(),
        HostTensor::from_tensor(model.model.norm.weight.val())?,
    );
    if !tied {
        linear_out(&model.lm_head, "lm_head", &mut out)?;
    }
    Ok(out)
}

/// Writes `model` (which must carry no unmerged adapters) as a Hugging Face directory:
/// `config.json` and `model.safetensors` (`dtype` f32 or bf16). The head stays tied only when it
/// still equals the embedding exactly. Tokenizer files are written by the caller.
///
/// # Errors
/// [`ModelError::Io`] / safetensors errors; files are written atomically.
pub fn save_hf_dir(model: &Llama, dir: &Path, dtype: DiskDtype) -> Result<(), ModelError> {
    std::fs::create_dir_all(dir).map_err(|source| ModelError::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    let tied = model.config.tie_word_embeddings && {
        let head = model.lm_head.weight.val().transpose();
        let emb = model.model.embed_tokens.weight.val();
        head.equal(emb).all().into_scalar::<bool>()
    };
    let weights = model_weights(model, tied)?;
    let meta = HashMap::from([("format".to_string(), "pt".to_string())]);
    write_safetensors(&dir.join("model.safetensors"), &weights, dtype, meta)?;
    let mut cfg =
        serde_json::to_value(HfConfig::from_config(&model.config, tied)).map_err(|e| {
            ModelError::Config {
                path: dir.join("config.json"),
                message: e.to_string(),
            }
        })?;
    if let Some(obj) = cfg.as_object_mut() {
        obj.insert(
            "architectures".into(),
            serde_json::json!([model.config.family.hf_class()]),
        );
        let dt = match dtype {
            DiskDtype::F32 => "float32",
            DiskDtype::BF16 => "bfloat16",
        };
        obj.insert("torch_dtype".into(), serde_json::json!(dt));
        obj.insert("dtype".into(), serde_json::json!(dt));
        obj.remove("bos_token_id");
        obj.remove("eos_token_id");
    }
    let text = serde_json::to_string_pretty(&cfg).map_err(|e| ModelError::Config {
        path: dir.join("config.json"),
        message: e.to_string(),
    })?;
    write_atomic(&dir.join("config.json"), text.as_bytes())?;
    Ok(())
}
