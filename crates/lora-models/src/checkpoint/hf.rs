//! Hugging Face model directories: `config.json` + `model.safetensors` (or a sharded
//! `model.safetensors.index.json`), f32/f16/bf16. Reading converts PyTorch `[out, in]` weights
//! to burn's `[in, out]` (in `build.rs`); writing (a merged model) converts back.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use lora_core::LoraLinear;
use lora_core::tensor_io::{
    DiskDtype, HostTensor, read_safetensors, write_atomic, write_safetensors,
};
use serde::{Deserialize, Serialize};

use crate::checkpoint::build::{BuildOptions, NamedWeights};
use crate::config::LlamaConfig;
use crate::error::ModelError;
use crate::llama::Llama;

/// The fields of a Llama `config.json` we read and write (transformers `LlamaConfig`).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct HfLlamaConfig {
    /// `"llama"` (also accepted: `"mistral"`, `"qwen2"`-free Llama-shaped configs).
    #[serde(default = "llama")]
    pub model_type: String,
    /// Vocabulary size `V`.
    pub vocab_size: usize,
    /// `D`.
    pub hidden_size: usize,
    /// `F`.
    pub intermediate_size: usize,
    /// `N`.
    pub num_hidden_layers: usize,
    /// `H`.
    pub num_attention_heads: usize,
    /// `K`; defaults to `H` (multi-head attention).
    #[serde(default)]
    pub num_key_value_heads: Option<usize>,
    /// `E`; defaults to `D / H`.
    #[serde(default)]
    pub head_dim: Option<usize>,
    /// RMSNorm ε.
    #[serde(default = "default_eps")]
    pub rms_norm_eps: f64,
    /// RoPE base θ (transformers 4.x writes it at the top level).
    #[serde(default)]
    pub rope_theta: Option<f64>,
    /// RoPE scaling (transformers 4.x); only `null` is supported.
    #[serde(default)]
    pub rope_scaling: Option<serde_json::Value>,
    /// RoPE settings as transformers 5.x writes them: `{"rope_theta": …, "rope_type": "default"}`.
    #[serde(default)]
    pub rope_parameters: Option<RopeParameters>,
    /// Context length the RoPE tables cover.
    #[serde(default = "default_max_pos")]
    pub max_position_embeddings: usize,
    /// Tied input/output embeddings.
    #[serde(default)]
    pub tie_word_embeddings: bool,
    /// Biases on q/k/v/o.
    #[serde(default)]
    pub attention_bias: bool,
    /// Biases on the MLP projections.
    #[serde(default)]
    pub mlp_bias: bool,
    /// `silu` for Llama.
    #[serde(default = "silu")]
    pub hidden_act: String,
    /// Token ids, passed through when writing.
    #[serde(default)]
    pub bos_token_id: Option<serde_json::Value>,
    /// Token ids, passed through when writing.
    #[serde(default)]
    pub eos_token_id: Option<serde_json::Value>,
}

/// `rope_parameters` of a transformers 5.x `config.json`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RopeParameters {
    /// RoPE base θ.
    #[serde(default)]
    pub rope_theta: Option<f64>,
    /// Only `"default"` (plain RoPE) is supported.
    #[serde(default = "default_rope_type")]
    pub rope_type: String,
}

fn default_rope_type() -> String {
    "default".into()
}

fn llama() -> String {
    "llama".into()
}
fn silu() -> String {
    "silu".into()
}
fn default_eps() -> f64 {
    1e-6
}
fn default_max_pos() -> usize {
    2048
}

impl HfLlamaConfig {
    /// Converts to our runtime config.
    ///
    /// # Errors
    /// A message naming the unsupported or inconsistent field.
    pub fn to_config(&self) -> Result<(LlamaConfig, BuildOptions), String> {
        if !matches!(self.model_type.as_str(), "llama" | "mistral") {
            return Err(format!(
                "model_type {:?} is not a Llama-style model",
                self.model_type
            ));
        }
        if self.rope_scaling.as_ref().is_some_and(|v| !v.is_null()) {
            return Err("rope_scaling is set; only plain RoPE is supported".into());
        }
        if let Some(rp) = &self.rope_parameters
            && rp.rope_type != "default"
        {
            return Err(format!(
                "rope_parameters.rope_type {:?}: only \"default\" RoPE is supported",
                rp.rope_type
            ));
        }
        let rope_theta = self
            .rope_parameters
            .as_ref()
            .and_then(|rp| rp.rope_theta)
            .or(self.rope_theta)
            .unwrap_or(10000.0);
        if self.hidden_act != "silu" {
            return Err(format!(
                "hidden_act {:?}: only \"silu\" (SwiGLU) is supported",
                self.hidden_act
            ));
        }
        let n_heads = self.num_attention_heads;
        let config = LlamaConfig {
            vocab_size: self.vocab_size,
            d_model: self.hidden_size,
            n_layers: self.num_hidden_layers,
            n_heads,
            n_kv_heads: self.num_key_value_heads.unwrap_or(n_heads),
            head_dim: self.head_dim.unwrap_or(if n_heads == 0 {
                0
            } else {
                self.hidden_size / n_heads
            }),
            d_ff: self.intermediate_size,
            rope_theta,
            rms_norm_eps: self.rms_norm_eps,
            max_seq_len: self.max_position_embeddings,
            tie_word_embeddings: self.tie_word_embeddings,
        };
        config.validate()?;
        Ok((
            config,
            BuildOptions {
                attention_bias: self.attention_bias,
                mlp_bias: self.mlp_bias,
            },
        ))
    }

    /// The `config.json` transformers needs to load `config`.
    pub fn from_config(config: &LlamaConfig, tied: bool) -> Self {
        HfLlamaConfig {
            model_type: llama(),
            vocab_size: config.vocab_size,
            hidden_size: config.d_model,
            intermediate_size: config.d_ff,
            num_hidden_layers: config.n_layers,
            num_attention_heads: config.n_heads,
            num_key_value_heads: Some(config.n_kv_heads),
            head_dim: Some(config.head_dim),
            rms_norm_eps: config.rms_norm_eps,
            // Both spellings, so transformers 4.x and 5.x read the same θ.
            rope_theta: Some(config.rope_theta),
            rope_scaling: None,
            rope_parameters: Some(RopeParameters {
                rope_theta: Some(config.rope_theta),
                rope_type: default_rope_type(),
            }),
            max_position_embeddings: config.max_seq_len,
            tie_word_embeddings: tied,
            attention_bias: false,
            mlp_bias: false,
            hidden_act: silu(),
            bos_token_id: None,
            eos_token_id: None,
        }
    }
}

/// Reads `dir/config.json`.
///
/// # Errors
/// [`ModelError::Io`], or [`ModelError::Config`] naming the missing/bad field.
pub fn read_config(dir: &Path) -> Result<(LlamaConfig, BuildOptions), ModelError> {
    let path = dir.join("config.json");
    let text = std::fs::read_to_string(&path).map_err(|source| ModelError::Io {
        path: path.clone(),
        source,
    })?;
    let hf: HfLlamaConfig = serde_json::from_str(&text).map_err(|e| ModelError::Config {
        path: path.clone(),
        message: e.to_string(),
    })?;
    hf.to_config()
        .map_err(|message| ModelError::Config { path, message })
}

/// Reads every weight of a Hugging Face directory (single file or sharded).
///
/// # Errors
/// [`ModelError::Io`] / [`ModelError::Config`] for a missing or bad index, and the safetensors
/// errors of `lora_core::tensor_io::read_safetensors` (which name the file).
pub fn read_weights(dir: &Path) -> Result<NamedWeights, ModelError> {
    let single = dir.join("model.safetensors");
    let index = dir.join("model.safetensors.index.json");
    let mut tensors = BTreeMap::new();
    if single.exists() {
        tensors = read_safetensors(&single)?;
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
            tensors.extend(read_safetensors(&dir.join(shard))?);
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
        out.insert(
            format!("{p}.input_layernorm.weight"),
            HostTensor::from_tensor(layer.input_layernorm.weight.val())?,
        );
        out.insert(
            format!("{p}.post_attention_layernorm.weight"),
            HostTensor::from_tensor(layer.post_attention_layernorm.weight.val())?,
        );
        let a = &layer.self_attn;
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
        serde_json::to_value(HfLlamaConfig::from_config(&model.config, tied)).map_err(|e| {
            ModelError::Config {
                path: dir.join("config.json"),
                message: e.to_string(),
            }
        })?;
    if let Some(obj) = cfg.as_object_mut() {
        obj.insert(
            "architectures".into(),
            serde_json::json!(["LlamaForCausalLM"]),
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
