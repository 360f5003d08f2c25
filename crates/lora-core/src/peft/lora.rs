//! LoRA adapter files in Hugging Face PEFT's format, both directions.
//!
//! A directory holds `adapter_config.json` and `adapter_model.safetensors` (header metadata
//! `{"format": "pt"}`) with keys `base_model.model.<module path>.lora_A.weight` (`[r, d_in]`)
//! and `.lora_B.weight` (`[d_out, r]`) in PyTorch layout. Source: PEFT
//! `utils/save_and_load.py` (`get_peft_model_state_dict`), `config.py` (`PeftConfig`).
//!
//! Loading rebuilds `r`, `lora_alpha`, rsLoRA and the patterns from the file's config — never
//! from the caller's defaults — and every tensor must land on a layer: a key for a module the
//! model does not have, a missing tensor, or a shape that disagrees with the config is an error
//! naming the key (PEFT itself only warns and runs the base model unchanged).

use std::collections::BTreeMap;
use std::path::Path;

use burn::tensor::Device;
use serde::{Deserialize, Serialize};

use crate::adapter::Adapter;
use crate::config::LoraConfig;
use crate::error::LoraError;
use crate::inject::{AdaptReport, LoraModel};
use crate::lora::LoraAdapter;
use crate::peft::{
    KEY_PREFIX, PeftCommon, WEIGHTS_FILE, check_file_modules, read_config_json, write_adapter_dir,
};
use crate::targets::TargetMatcher;
use crate::tensor_io::{HostTensor, read_safetensors};

/// `adapter_config.json` for a LoRA adapter: the [`LoraConfig`] fields plus PEFT's bookkeeping.
/// Unknown keys are ignored on read, as PEFT does.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PeftLoraConfig {
    /// The keys every PEFT adapter has (`peft_type` is `"LORA"`).
    #[serde(flatten)]
    pub common: PeftCommon,
    /// DoRA (weight-decomposed LoRA); not supported yet.
    #[serde(default)]
    pub use_dora: bool,
    /// LoRA on biases (PEFT ≥ 0.14); must be `false`.
    #[serde(default)]
    pub lora_bias: bool,
    /// Modules excluded from the targets (PEFT ≥ 0.14); not supported when non-empty.
    #[serde(default)]
    pub exclude_modules: Option<serde_json::Value>,
    /// LoRA on raw parameters instead of modules (PEFT ≥ 0.17); not supported.
    #[serde(default)]
    pub target_parameters: Option<serde_json::Value>,
    /// PEFT's layer-container override for `layers_to_transform`.
    #[serde(default)]
    pub layers_pattern: Option<serde_json::Value>,
    /// The LoRA hyper-parameters.
    #[serde(flatten)]
    pub lora: LoraConfig,
}

impl PeftLoraConfig {
    /// The config PEFT would write for `lora` on `base_model`.
    pub fn new(lora: LoraConfig, base_model: &str) -> Self {
        PeftLoraConfig {
            common: PeftCommon::new("LORA", base_model),
            use_dora: false,
            lora_bias: false,
            exclude_modules: None,
            target_parameters: None,
            layers_pattern: None,
            lora,
        }
    }
}

/// Reads `dir/adapter_config.json` as a LoRA adapter config.
///
/// # Errors
/// [`LoraError::Io`], [`LoraError::AdapterConfig`] (bad JSON, missing fields, bad values), or
/// [`LoraError::UnsupportedAdapter`] for another `peft_type`, DoRA, biases, Conv1D layouts or
/// `modules_to_save`.
pub fn read_config(dir: &Path) -> Result<PeftLoraConfig, LoraError> {
    let (path, cfg): (_, PeftLoraConfig) = read_config_json(dir)?;
    let unsupported = |m: String| {
        Err(LoraError::UnsupportedAdapter {
            path: path.clone(),
            message: m,
        })
    };
    if let Some(why) = cfg.common.unsupported("LORA") {
        return unsupported(why);
    }
    if cfg.use_dora {
        return unsupported("use_dora: true (DoRA adapters are not supported yet)".into());
    }
    if cfg.lora_bias {
        return unsupported("lora_bias: true is not supported".into());
    }
    let non_empty = |v: &Option<serde_json::Value>| {
        v.as_ref().is_some_and(|v| {
            !(v.is_null() || v.as_array().is_some_and(|a| a.is_empty()) || v.as_str() == Some(""))
        })
    };
    if non_empty(&cfg.exclude_modules) {
        return unsupported("exclude_modules is not supported yet".into());
    }
    if non_empty(&cfg.target_parameters) {
        return unsupported("target_parameters (LoRA on raw parameters) is not supported".into());
    }
    cfg.lora.validate().map_err(|e| LoraError::AdapterConfig {
        path: path.clone(),
        message: e.to_string(),
    })?;
    Ok(cfg)
}

/// Saves every adapter of `model` as a PEFT adapter directory (`dir` is created if needed).
/// Each file is written atomically. Returns the number of adapted modules written.
///
/// # Errors
/// [`LoraError::Io`] / [`LoraError::Safetensors`] on write failure.
pub fn save_adapter<M: LoraModel>(
    model: &M,
    config: &LoraConfig,
    base_model: &str,
    dir: &Path,
) -> Result<usize, LoraError> {
    let mut tensors = BTreeMap::new();
    let mut failure = None;
    model.visit_adapters(&mut |path, adapter| {
        let Adapter::Lora(adapter) = adapter else {
            return;
        };
        // burn [d_in, r] / [r, d_out] → PyTorch [r, d_in] / [d_out, r]: transpose here only.
        let a = HostTensor::from_tensor(adapter.lora_a.val().transpose());
        let b = HostTensor::from_tensor(adapter.lora_b.val().transpose());
        match (a, b) {
            (Ok(a), Ok(b)) => {
                tensors.insert(format!("{KEY_PREFIX}{path}.lora_A.weight"), a);
                tensors.insert(format!("{KEY_PREFIX}{path}.lora_B.weight"), b);
            }
            (Err(e), _) | (_, Err(e)) => failure = Some(e),
        }
    });
    if let Some(e) = failure {
        return Err(e);
    }
    write_adapter_dir(
        dir,
        &tensors,
        &PeftLoraConfig::new(config.clone(), base_model),
    )?;
    Ok(tensors.len() / 2)
}

/// Splits `base_model.model.<path>.lora_{A,B}[.default].weight` into `(path, is_a)`.
fn parse_key(key: &str) -> Option<(&str, bool)> {
    let rest = key.strip_prefix(KEY_PREFIX)?;
    for (suffix, is_a) in [
        (".lora_A.weight", true),
        (".lora_B.weight", false),
        (".lora_A.default.weight", true),
        (".lora_B.default.weight", false),
    ] {
        if let Some(path) = rest.strip_suffix(suffix) {
            return Some((path, is_a));
        }
    }
    None
}

/// Loads the PEFT LoRA adapter in `dir` onto `model` (frozen first; the loaded adapters are
/// trainable, so training can resume from them). Returns the model, the adapter's config and
/// what was adapted.
///
/// # Errors
/// Those of [`read_config`] and [`read_safetensors`], plus [`LoraError::AdapterTensor`] for a
/// key that is not a LoRA tensor, a module the model does not have, a module the config does not
/// select, a missing `lora_A`/`lora_B`, or a shape that disagrees with the model or the config.
pub fn load_adapter<M: LoraModel>(
    model: M,
    dir: &Path,
    device: &Device,
) -> Result<(M, LoraConfig, AdaptReport), LoraError> {
    let cfg = read_config(dir)?.lora;
    let file = dir.join(WEIGHTS_FILE);
    let mut tensors = read_safetensors(&file)?;
    let err = |key: &str, message: String| LoraError::AdapterTensor {
        path: file.clone(),
        key: key.to_string(),
        message,
    };

    // Group the file's tensors by module path.
    let mut by_module: BTreeMap<
        String,
        (Option<(String, HostTensor)>, Option<(String, HostTensor)>),
    > = BTreeMap::new();
    for (key, t) in std::mem::take(&mut tensors) {
        let (path, is_a) = parse_key(&key).ok_or_else(|| {
            err(&key, "not a LoRA tensor (expected base_model.model.<module>.lora_A.weight / .lora_B.weight)".into())
        })?;
        if t.shape.len() != 2 {
            return Err(err(
                &key,
                format!("expected a 2-D tensor, found shape {:?}", t.shape),
            ));
        }
        let entry = by_module.entry(path.to_string()).or_default();
        if is_a {
            entry.0 = Some((key, t))
        } else {
            entry.1 = Some((key, t))
        }
    }

    let matcher = TargetMatcher::new(&cfg)?;
    check_file_modules(
        by_module.keys(),
        &model.linear_paths(),
        &matcher,
        &file,
        |p| format!("{KEY_PREFIX}{p}.lora_A.weight"),
    )?;
    if by_module.is_empty() {
        return Err(err("", "the adapter file holds no LoRA tensors".into()));
    }

    let mut model = model.no_grad();
    model.visit_linears_mut(&mut |path, lin| {
        if !matcher.matches(path) {
            return Ok(());
        }
        let Some((a, b)) = by_module.remove(path) else {
            return Err(err(
                &format!("{KEY_PREFIX}{path}.lora_A.weight"),
                "missing: the config selects this module but the file has no tensors for it".into(),
            ));
        };
        let (a_key, a) = a.ok_or_else(|| {
            err(
                &format!("{KEY_PREFIX}{path}.lora_A.weight"),
                "missing".into(),
            )
        })?;
        let (b_key, b) = b.ok_or_else(|| {
            err(
                &format!("{KEY_PREFIX}{path}.lora_B.weight"),
                "missing".into(),
            )
        })?;
        let (d_in, d_out) = lin.dims();
        let (r, alpha) = matcher.rank_and_alpha(path);
        if a.shape != [r, d_in] {
            return Err(err(
                &a_key,
                format!(
                    "shape {:?}, expected [r = {r}, d_in = {d_in}] from the config and the model",
                    a.shape
                ),
            ));
        }
        if b.shape != [d_out, r] {
            return Err(err(
                &b_key,
                format!(
                    "shape {:?}, expected [d_out = {d_out}, r = {r}] from the config and the model",
                    b.shape
                ),
            ));
        }
        // PyTorch [r, d_in] / [d_out, r] → burn [d_in, r] / [r, d_out].
        let adapter = LoraAdapter::from_tensors(
            a.transposed_2d().to_tensor(device),
            b.transposed_2d().to_tensor(device),
            alpha,
            &cfg,
        );
        lin.attach(adapter, path)
    })?;
    let report = AdaptReport::of(&model);
    Ok((model, cfg, report))
}
