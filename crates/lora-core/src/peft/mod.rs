//! Adapter files in Hugging Face PEFT's format, both directions, for every kind of adapter.
//!
//! A directory holds `adapter_config.json` and `adapter_model.safetensors` (header metadata
//! `{"format": "pt"}`) with keys `base_model.model.<module path>.<tensor>` in PyTorch layout.
//! Source: PEFT `utils/save_and_load.py` (`get_peft_model_state_dict`), `config.py`
//! (`PeftConfig`).
//!
//! - [`load_adapter`] / [`save_adapter`]: any adapter, dispatched on the file's `peft_type` and
//!   on [`AdapterConfig`] — the one place that knows which kinds exist;
//! - [`lora`]: `"LORA"` files (`lora_A.weight` `[r, in]`, `lora_B.weight` `[out, r]`; with
//!   `use_dora: true` also `lora_magnitude_vector` `[out]`);
//! - [`adalora`]: `"ADALORA"` files (`lora_A`, `lora_E`, `lora_B`, kept ranks only).
//!
//! Loading rebuilds every hyper-parameter from the file's config — never from the caller's
//! defaults — and every tensor must land on a layer: a key for a module the model does not have,
//! a missing tensor, or a shape that disagrees with the config is an error naming the key (PEFT
//! itself only warns and runs the base model unchanged).

pub mod adalora;
pub mod lora;

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use burn::tensor::Device;
use serde::{Deserialize, Serialize};

use crate::adalora::AdaLoraConfig;
use crate::config::LoraConfig;
use crate::error::LoraError;
use crate::inject::{AdaptReport, LoraModel};
use crate::targets::TargetMatcher;
use crate::tensor_io::{DiskDtype, HostTensor, write_atomic, write_safetensors};

pub use lora::{PeftLoraConfig, read_config};

/// File name of the adapter config inside an adapter directory.
pub const CONFIG_FILE: &str = "adapter_config.json";
/// File name of the adapter weights inside an adapter directory.
pub const WEIGHTS_FILE: &str = "adapter_model.safetensors";
/// Prefix PEFT puts in front of module paths (`PeftModel.base_model.model`).
pub const KEY_PREFIX: &str = "base_model.model.";

/// The `adapter_config.json` keys every PEFT adapter type shares (PEFT's `PeftConfig` and the
/// common part of `LoraConfig` / `AdaLoraConfig` in `peft/tuners/*/config.py`). Unknown keys are
/// ignored on read, as PEFT does.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PeftCommon {
    /// `"LORA"` or `"ADALORA"`.
    pub peft_type: String,
    /// `"CAUSAL_LM"` for language models.
    #[serde(default)]
    pub task_type: Option<String>,
    /// Name or path of the base model the adapter was trained on.
    #[serde(default)]
    pub base_model_name_or_path: Option<String>,
    /// Only `"none"` is supported (no trained biases).
    #[serde(default = "none_str")]
    pub bias: String,
    /// `true` only for GPT-2-style Conv1D weights; Llama layers are `false`.
    #[serde(default)]
    pub fan_in_fan_out: bool,
    /// Extra fully-trained modules; not supported.
    #[serde(default)]
    pub modules_to_save: Option<Vec<String>>,
    /// PEFT writes `true` when saving.
    #[serde(default)]
    pub inference_mode: bool,
}

fn none_str() -> String {
    "none".into()
}

impl PeftCommon {
    /// What PEFT writes for an adapter of `peft_type` trained on `base_model`.
    pub fn new(peft_type: &str, base_model: &str) -> Self {
        PeftCommon {
            peft_type: peft_type.into(),
            task_type: Some("CAUSAL_LM".into()),
            base_model_name_or_path: Some(base_model.into()),
            bias: none_str(),
            fan_in_fan_out: false,
            modules_to_save: None,
            inference_mode: true,
        }
    }

    /// Why an adapter with these shared settings cannot be loaded as `expected` (a PEFT type
    /// name), or `None` when it can: another `peft_type`, trained biases, Conv1D layouts or
    /// `modules_to_save`.
    pub fn unsupported(&self, expected: &str) -> Option<String> {
        if self.peft_type != expected {
            return Some(format!(
                "peft_type {:?} (this loader reads {expected:?}; LoRA adapters load with \
                 peft::load_adapter, AdaLoRA ones with adalora::load_adapter)",
                self.peft_type
            ));
        }
        if self.bias != "none" {
            return Some(format!("bias {:?} (only \"none\" is supported)", self.bias));
        }
        if self.fan_in_fan_out {
            return Some(
                "fan_in_fan_out: true (Conv1D layouts do not occur in Llama models)".into(),
            );
        }
        if self.modules_to_save.as_ref().is_some_and(|m| !m.is_empty()) {
            return Some("modules_to_save is not supported".into());
        }
        None
    }
}

/// Reads `dir/adapter_config.json` as `T` (a LoRA or AdaLoRA config); returns the file's path
/// too, for the caller's own error messages.
///
/// # Errors
/// [`LoraError::Io`] if the file cannot be read, [`LoraError::AdapterConfig`] for bad JSON or
/// missing fields.
pub(crate) fn read_config_json<T: serde::de::DeserializeOwned>(
    dir: &Path,
) -> Result<(std::path::PathBuf, T), LoraError> {
    let path = dir.join(CONFIG_FILE);
    let text = std::fs::read_to_string(&path).map_err(|source| LoraError::Io {
        path: path.clone(),
        source,
    })?;
    let value = serde_json::from_str(&text).map_err(|e| LoraError::AdapterConfig {
        path: path.clone(),
        message: match blame_key::<T>(&text) {
            Some(key) => format!("key {key:?}: {e}"),
            None => e.to_string(),
        },
    })?;
    Ok((path, value))
}

/// The top-level key of the JSON object `text` that makes it fail to deserialize as `T`: the one
/// whose value, replaced by some value of another JSON type, makes it deserialize. serde's errors
/// inside `#[serde(flatten)]` fields (PEFT configs flatten the LoRA settings) carry the position
/// of the closing brace rather than the key, so the key is found this way (on the error path
/// only). `None` when no single key is to blame.
fn blame_key<T: serde::de::DeserializeOwned>(text: &str) -> Option<String> {
    use serde_json::{Value, json};
    let Value::Object(object) = serde_json::from_str(text).ok()? else {
        return None;
    };
    let stand_ins = [
        json!(1),
        json!(0.5),
        json!(""),
        json!(true),
        json!(null),
        json!([]),
        json!({}),
    ];
    object.keys().find_map(|key| {
        stand_ins.iter().find_map(|v| {
            let mut changed = object.clone();
            changed.insert(key.clone(), v.clone());
            serde_json::from_value::<T>(Value::Object(changed))
                .ok()
                .map(|_| key.clone())
        })
    })
}

/// Writes an adapter directory: `dir` created if needed, `adapter_model.safetensors` (f32,
/// metadata `{"format": "pt"}`, as PEFT writes it) and `adapter_config.json`, each atomically.
///
/// # Errors
/// [`LoraError::Io`] / [`LoraError::Safetensors`] on write failure.
pub(crate) fn write_adapter_dir<T: Serialize>(
    dir: &Path,
    tensors: &BTreeMap<String, HostTensor>,
    config: &T,
) -> Result<(), LoraError> {
    std::fs::create_dir_all(dir).map_err(|source| LoraError::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    let meta = HashMap::from([("format".to_string(), "pt".to_string())]);
    write_safetensors(&dir.join(WEIGHTS_FILE), tensors, DiskDtype::F32, meta)?;
    let json = serde_json::to_string_pretty(config).map_err(|e| LoraError::AdapterConfig {
        path: dir.join(CONFIG_FILE),
        message: e.to_string(),
    })?;
    write_atomic(&dir.join(CONFIG_FILE), json.as_bytes())
}

/// Checks that every module an adapter file has tensors for exists in the model and is selected
/// by the adapter's own config (`matcher`); `key(path)` names the tensor to blame.
///
/// # Errors
/// [`LoraError::AdapterTensor`] naming the key: a module the model does not have (is the adapter
/// for another model?) or one the config does not select.
pub(crate) fn check_file_modules<'a>(
    modules: impl IntoIterator<Item = &'a String>,
    model_paths: &[String],
    matcher: &TargetMatcher,
    file: &Path,
    key: impl Fn(&str) -> String,
) -> Result<(), LoraError> {
    let err = |path: &str, message: String| LoraError::AdapterTensor {
        path: file.to_path_buf(),
        key: key(path),
        message,
    };
    for path in modules {
        if !model_paths.contains(path) {
            let hint = model_paths.first().cloned().unwrap_or_default();
            return Err(err(
                path,
                format!(
                    "module {path:?} does not exist in this model (its linear layers look like {hint:?}); is the adapter for another model?"
                ),
            ));
        }
        if !matcher.matches(path) {
            return Err(err(
                path,
                format!(
                    "module {path:?} is not selected by the adapter's target_modules / layers_to_transform"
                ),
            ));
        }
    }
    Ok(())
}

/// The hyper-parameters of a saved adapter, by kind: what [`load_adapter`] read from a file and
/// what [`save_adapter`] writes into one.
#[derive(Clone, Debug, PartialEq)]
pub enum AdapterConfig {
    /// A LoRA adapter (`peft_type: "LORA"`); a DoRA one when `use_dora` is set.
    Lora(LoraConfig),
    /// An AdaLoRA adapter (`peft_type: "ADALORA"`), with its rank pattern if pruned.
    AdaLora(AdaLoraConfig),
}

impl AdapterConfig {
    /// PEFT's `peft_type` for this kind.
    pub fn peft_type(&self) -> &'static str {
        match self {
            AdapterConfig::Lora(_) => "LORA",
            AdapterConfig::AdaLora(_) => "ADALORA",
        }
    }

    /// `lora_alpha`.
    pub fn lora_alpha(&self) -> f64 {
        match self {
            AdapterConfig::Lora(c) => c.lora_alpha,
            AdapterConfig::AdaLora(c) => c.lora_alpha,
        }
    }

    /// A short description for people: `LoRA r=8 α=16`, `DoRA r=8 α=16` or
    /// `AdaLoRA r=12→8 α=16`.
    pub fn describe(&self) -> String {
        match self {
            AdapterConfig::Lora(c) => {
                let kind = if c.use_dora { "DoRA" } else { "LoRA" };
                format!("{kind} r={} α={}", c.r, c.lora_alpha)
            }
            AdapterConfig::AdaLora(c) => {
                format!("AdaLoRA r={}→{} α={}", c.init_r, c.target_r, c.lora_alpha)
            }
        }
    }

    /// The LoRA config, if this is one.
    pub fn as_lora(&self) -> Option<&LoraConfig> {
        match self {
            AdapterConfig::Lora(c) => Some(c),
            AdapterConfig::AdaLora(_) => None,
        }
    }

    /// The AdaLoRA config, if this is one.
    pub fn as_adalora(&self) -> Option<&AdaLoraConfig> {
        match self {
            AdapterConfig::AdaLora(c) => Some(c),
            AdapterConfig::Lora(_) => None,
        }
    }
}

/// The `peft_type` of the adapter in `dir` (`"LORA"`, `"ADALORA"`, …).
///
/// # Errors
/// [`LoraError::Io`] / [`LoraError::AdapterConfig`] when `adapter_config.json` cannot be read
/// or has no `peft_type`.
pub fn peft_type(dir: &Path) -> Result<String, LoraError> {
    #[derive(Deserialize)]
    struct Kind {
        peft_type: String,
    }
    let (_, kind): (_, Kind) = read_config_json(dir)?;
    Ok(kind.peft_type)
}

/// Loads the PEFT adapter in `dir` onto `model`, whatever its kind (frozen first; the loaded
/// adapters are trainable, so training can resume from them). Returns the model, the adapter's
/// config and what was adapted.
///
/// # Errors
/// [`LoraError::UnsupportedAdapter`] for a `peft_type` other than `LORA` / `ADALORA`, and the
/// errors of [`lora::load_adapter`] / [`adalora::load_adapter`].
pub fn load_adapter<M: LoraModel>(
    model: M,
    dir: &Path,
    device: &Device,
) -> Result<(M, AdapterConfig, AdaptReport), LoraError> {
    match peft_type(dir)?.as_str() {
        "ADALORA" => {
            let (m, c, r) = adalora::load_adapter(model, dir, device)?;
            Ok((m, AdapterConfig::AdaLora(c), r))
        }
        "LORA" => {
            let (m, c, r) = lora::load_adapter(model, dir, device)?;
            Ok((m, AdapterConfig::Lora(c), r))
        }
        other => Err(LoraError::UnsupportedAdapter {
            path: dir.join(CONFIG_FILE),
            message: format!("peft_type {other:?}: burn-lora loads LORA and ADALORA adapters"),
        }),
    }
}

/// Saves every adapter of `model` as a PEFT adapter directory of `config`'s kind (`dir` is
/// created if needed; each file is written atomically). Returns the number of modules written.
///
/// # Errors
/// Those of [`lora::save_adapter`] / [`adalora::save_adapter`].
pub fn save_adapter<M: LoraModel>(
    model: &M,
    config: &AdapterConfig,
    base_model: &str,
    dir: &Path,
) -> Result<usize, LoraError> {
    match config {
        AdapterConfig::Lora(c) => lora::save_adapter(model, c, base_model, dir),
        AdapterConfig::AdaLora(c) => adalora::save_adapter(model, c, base_model, dir),
    }
}
