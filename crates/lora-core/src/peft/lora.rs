//! LoRA (and DoRA) adapter files in Hugging Face PEFT's format, both directions.
//!
//! A directory holds `adapter_config.json` and `adapter_model.safetensors` (header metadata
//! `{"format": "pt"}`) with keys `base_model.model.<module path>.lora_A.weight` (`[r, d_in]`)
//! and `.lora_B.weight` (`[d_out, r]`) in PyTorch layout. Source: PEFT
//! `utils/save_and_load.py` (`get_peft_model_state_dict`), `config.py` (`PeftConfig`).
//!
//! A DoRA adapter is a LoRA file with `use_dora: true` and one more tensor per module,
//! `base_model.model.<module path>.lora_magnitude_vector` (`[d_out]`, no `.weight` suffix: PEFT
//! `tuners/lora/model.py` `_get_adapter_state_dict` strips it to keep the older format).
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
use crate::dora::DoraAdapter;
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
/// [`LoraError::UnsupportedAdapter`] for another `peft_type`, biases, Conv1D layouts or
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

/// The PEFT tensors of one LoRA or DoRA adapter at `path`, in PyTorch layout.
fn adapter_tensors(
    path: &str,
    adapter: &Adapter,
    use_dora: bool,
) -> Result<Vec<(String, HostTensor)>, LoraError> {
    let (lora, magnitude) = match (adapter, use_dora) {
        (Adapter::Lora(a), false) => (a, None),
        (Adapter::Dora(a), true) => (&a.lora, Some(&a.magnitude)),
        (other, _) => {
            let kind = match other {
                Adapter::Lora(_) => "a LoRA",
                Adapter::Dora(_) => "a DoRA",
                Adapter::AdaLora(_) => "an AdaLoRA",
            };
            return Err(LoraError::InvalidConfig(format!(
                "{path} carries {kind} adapter, but the config to save says use_dora = {use_dora}; save with the adapter's own config"
            )));
        }
    };
    // burn [d_in, r] / [r, d_out] → PyTorch [r, d_in] / [d_out, r]: transpose here only.
    let mut out = vec![
        (
            format!("{KEY_PREFIX}{path}.lora_A.weight"),
            HostTensor::from_tensor(lora.lora_a.val().transpose())?,
        ),
        (
            format!("{KEY_PREFIX}{path}.lora_B.weight"),
            HostTensor::from_tensor(lora.lora_b.val().transpose())?,
        ),
    ];
    if let Some(m) = magnitude {
        // [1, d_out] → PEFT's 1-D [d_out].
        let m = HostTensor::from_tensor(m.val().flatten::<1>(0, 1))?;
        out.push((format!("{KEY_PREFIX}{path}.lora_magnitude_vector"), m));
    }
    Ok(out)
}

/// Saves every adapter of `model` as a PEFT adapter directory (`dir` is created if needed):
/// LoRA, or DoRA when `config.use_dora`. Each file is written atomically. Returns the number of
/// adapted modules written.
///
/// # Errors
/// [`LoraError::Io`] / [`LoraError::Safetensors`] on write failure,
/// [`LoraError::InvalidConfig`] if a layer carries another kind of adapter than `config` says.
pub fn save_adapter<M: LoraModel>(
    model: &M,
    config: &LoraConfig,
    base_model: &str,
    dir: &Path,
) -> Result<usize, LoraError> {
    let mut tensors = BTreeMap::new();
    let mut n = 0;
    let mut failure = None;
    model.visit_adapters(&mut |path, adapter| {
        match adapter_tensors(path, adapter, config.use_dora) {
            Ok(ts) => tensors.extend(ts),
            Err(e) => failure = failure.take().or(Some(e)),
        }
        n += 1;
    });
    if let Some(e) = failure {
        return Err(e);
    }
    write_adapter_dir(
        dir,
        &tensors,
        &PeftLoraConfig::new(config.clone(), base_model),
    )?;
    Ok(n)
}

/// Which tensor of a module a file key holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Part {
    /// `lora_A.weight`.
    A,
    /// `lora_B.weight`.
    B,
    /// DoRA's `lora_magnitude_vector`.
    Magnitude,
}

/// Splits `base_model.model.<path>.lora_{A,B}[.default].weight` (or DoRA's
/// `.lora_magnitude_vector[.default][.weight]`) into `(path, part)`.
fn parse_key(key: &str) -> Option<(&str, Part)> {
    let rest = key.strip_prefix(KEY_PREFIX)?;
    for (suffix, part) in [
        (".lora_A.weight", Part::A),
        (".lora_B.weight", Part::B),
        (".lora_A.default.weight", Part::A),
        (".lora_B.default.weight", Part::B),
        (".lora_magnitude_vector", Part::Magnitude),
        (".lora_magnitude_vector.weight", Part::Magnitude),
        (".lora_magnitude_vector.default.weight", Part::Magnitude),
    ] {
        if let Some(path) = rest.strip_suffix(suffix) {
            return Some((path, part));
        }
    }
    None
}

/// Loads the PEFT LoRA (or DoRA, `use_dora: true`) adapter in `dir` onto `model` (frozen
/// first; the loaded adapters are trainable, so training can resume from them). Returns the
/// model, the adapter's config and what was adapted.
///
/// # Errors
/// Those of [`read_config`] and [`read_safetensors`], plus [`LoraError::AdapterTensor`] for a
/// key that is not a LoRA tensor, a module the model does not have, a module the config does not
/// select, a missing `lora_A`/`lora_B` (or DoRA magnitude), a magnitude in a file without
/// `use_dora`, or a shape that disagrees with the model or the config.
pub fn load_adapter<M: LoraModel>(
    model: M,
    dir: &Path,
    device: &Device,
) -> Result<(M, LoraConfig, AdaptReport), LoraError> {
    let cfg = read_config(dir)?.lora;
    let file = dir.join(WEIGHTS_FILE);
    let tensors = read_safetensors(&file)?;
    let err = |key: &str, message: String| LoraError::AdapterTensor {
        path: file.clone(),
        key: key.to_string(),
        message,
    };

    // Group the file's tensors by module path.
    let mut by_module: BTreeMap<String, BTreeMap<Part, (String, HostTensor)>> = BTreeMap::new();
    for (key, t) in tensors {
        let (path, part) = parse_key(&key).ok_or_else(|| {
            err(&key, "not a LoRA tensor (expected base_model.model.<module>.lora_A.weight / .lora_B.weight / .lora_magnitude_vector)".into())
        })?;
        let rank = if part == Part::Magnitude { 1 } else { 2 };
        if t.shape.len() != rank {
            return Err(err(
                &key,
                format!("expected a {rank}-D tensor, found shape {:?}", t.shape),
            ));
        }
        if part == Part::Magnitude && !cfg.use_dora {
            return Err(err(
                &key,
                "a DoRA magnitude vector, but adapter_config.json does not say use_dora: true"
                    .into(),
            ));
        }
        let module = by_module.entry(path.to_string()).or_default();
        module.insert(part, (key, t));
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
        let mut parts = by_module.remove(path).unwrap_or_default();
        let mut take = |part: Part, suffix: &str| {
            parts.remove(&part).ok_or_else(|| {
                err(
                    &format!("{KEY_PREFIX}{path}.{suffix}"),
                    "missing: the config selects this module but the file has no such tensor"
                        .into(),
                )
            })
        };
        let (a_key, a) = take(Part::A, "lora_A.weight")?;
        let (b_key, b) = take(Part::B, "lora_B.weight")?;
        let magnitude = if cfg.use_dora {
            Some(take(Part::Magnitude, "lora_magnitude_vector")?)
        } else {
            None
        };
        let (d_in, d_out) = lin.dims();
        let (r, alpha) = matcher.rank_and_alpha(path);
        let shape_err = |key: &str, got: &[usize], want: String| {
            err(
                key,
                format!("shape {got:?}, expected {want} from the config and the model"),
            )
        };
        if a.shape != [r, d_in] {
            return Err(shape_err(
                &a_key,
                &a.shape,
                format!("[r = {r}, d_in = {d_in}]"),
            ));
        }
        if b.shape != [d_out, r] {
            return Err(shape_err(
                &b_key,
                &b.shape,
                format!("[d_out = {d_out}, r = {r}]"),
            ));
        }
        // PyTorch [r, d_in] / [d_out, r] → burn [d_in, r] / [r, d_out].
        let lora = LoraAdapter::from_tensors(
            a.transposed_2d().to_tensor(device),
            b.transposed_2d().to_tensor(device),
            alpha,
            &cfg,
        );
        let adapter = match magnitude {
            None => Adapter::Lora(lora),
            Some((m_key, m)) => {
                if m.shape != [d_out] {
                    return Err(shape_err(&m_key, &m.shape, format!("[d_out = {d_out}]")));
                }
                if let Some(bad) = m.data.iter().find(|v| !v.is_finite()) {
                    return Err(err(&m_key, format!("holds a non-finite value ({bad})")));
                }
                // PEFT [d_out] → burn [1, d_out].
                let m = HostTensor {
                    shape: vec![1, d_out],
                    data: m.data,
                };
                Adapter::Dora(DoraAdapter::from_parts(lora, m.to_tensor(device)))
            }
        };
        lin.attach(adapter, path)
    })?;
    let report = AdaptReport::of(&model);
    Ok((model, cfg, report))
}
