//! AdaLoRA adapter files in PEFT's format, both directions.
//!
//! `adapter_config.json` has `peft_type: "ADALORA"`, the [`AdaLoraConfig`] fields (`init_r`,
//! `target_r`, `tinit`, `tfinal`, `deltaT`, `beta1`, `beta2`, `orth_reg_weight`, `total_step`,
//! `lora_alpha`, `target_modules`, ...) and `rank_pattern`: `"<module>.lora_E"` → `init_r`
//! booleans. `adapter_model.safetensors` holds, per module, `base_model.model.<module>.lora_A`
//! (`Q`, `[r, in]`), `.lora_B` (`P`, `[out, r]`) and `.lora_E` (`λ`, `[r, 1]`) — no `.weight`
//! suffix, since PEFT keeps them as bare parameters — where `r` is the module's KEPT rank: PEFT
//! saves only the triplets `rank_pattern` marks true, and loading resizes each layer to that
//! count while keeping the original scale `lora_alpha / (init_r + 1e-5)`.
//!
//! Source: PEFT `tuners/adalora/model.py` (`_get_adapter_state_dict`,
//! `resize_state_dict_by_rank_pattern`, `_remap_adapter_state_dict_for_load`,
//! `resize_modules_by_rank_pattern`), `config.py`; checked against files PEFT 0.21.2 wrote
//! (`fixtures/tiny-llama/peft-adalora`).
//!
//! (Kept-rank bookkeeping after training — `final_ranks` — is in [`crate::adalora::allocator`].)

use std::collections::BTreeMap;
use std::path::Path;

use burn::tensor::Device;
use serde::{Deserialize, Serialize};

use crate::adalora::adapter::AdaLoraAdapter;
use crate::adalora::config::AdaLoraConfig;
use crate::error::LoraError;
use crate::inject::{AdaptReport, LoraModel};
use crate::peft::{
    KEY_PREFIX, PeftCommon, WEIGHTS_FILE, check_file_modules, read_config_json, write_adapter_dir,
};
use crate::targets::TargetMatcher;
use crate::tensor_io::{HostTensor, read_safetensors};

/// `adapter_config.json` of an AdaLoRA adapter. Unknown keys are ignored on read, as PEFT does.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PeftAdaLoraConfig {
    /// The keys every PEFT adapter has (`peft_type` is `"ADALORA"`).
    #[serde(flatten)]
    pub common: PeftCommon,
    /// LoRA's `r`, which AdaLoRA ignores; PEFT writes its default 8.
    #[serde(default = "lora_r")]
    pub r: usize,
    /// `"<module>.lora_E"` → kept triplets; `null` before any pruning.
    #[serde(default)]
    pub rank_pattern: Option<BTreeMap<String, Vec<bool>>>,
    /// The AdaLoRA hyper-parameters.
    #[serde(flatten)]
    pub adalora: AdaLoraConfig,
}

fn lora_r() -> usize {
    8
}

/// The module path of a `rank_pattern` key: PEFT drops the last component (`lora_E`), or the
/// last two when the adapter name is still attached (`lora_E.default`).
fn pattern_key_to_path(key: &str) -> &str {
    let key = key.strip_suffix(".default").unwrap_or(key);
    key.strip_suffix(".lora_E").unwrap_or(key)
}

/// Reads `dir/adapter_config.json` as an AdaLoRA config (with its rank pattern keyed by module
/// path).
///
/// # Errors
/// [`LoraError::Io`], [`LoraError::AdapterConfig`] (bad JSON or values), or
/// [`LoraError::UnsupportedAdapter`] for another `peft_type`, biases, Conv1D layouts or
/// `modules_to_save`.
pub fn read_config(dir: &Path) -> Result<AdaLoraConfig, LoraError> {
    let (path, file): (_, PeftAdaLoraConfig) = read_config_json(dir)?;
    let unsupported = |message: String| LoraError::UnsupportedAdapter {
        path: path.clone(),
        message,
    };
    if let Some(why) = file.common.unsupported("ADALORA") {
        return Err(unsupported(why));
    }
    let mut cfg = file.adalora;
    cfg.rank_pattern = file.rank_pattern.map(|p| {
        p.into_iter()
            .map(|(k, v)| (pattern_key_to_path(&k).to_string(), v))
            .collect()
    });
    cfg.validate_layers()
        .map_err(|e| LoraError::AdapterConfig {
            path: path.clone(),
            message: e.to_string(),
        })?;
    if let Some((k, v)) = cfg
        .rank_pattern
        .iter()
        .flatten()
        .find(|(_, v)| v.len() != cfg.init_r)
    {
        return Err(LoraError::AdapterConfig {
            path,
            message: format!(
                "rank_pattern {k:?} has {} entries, init_r is {}",
                v.len(),
                cfg.init_r
            ),
        });
    }
    Ok(cfg)
}

/// Columns `kept` of a row-major `[rows, cols]` host tensor.
fn keep_columns(t: &HostTensor, kept: &[usize]) -> HostTensor {
    let (rows, cols) = (t.shape[0], t.shape[1]);
    let mut data = Vec::with_capacity(rows * kept.len());
    for r in 0..rows {
        data.extend(kept.iter().map(|&c| t.data[r * cols + c]));
    }
    HostTensor {
        shape: vec![rows, kept.len()],
        data,
    }
}

/// Saves every AdaLoRA adapter of `model` as a PEFT adapter directory. With a rank pattern in
/// `config`, only the kept triplets are written (PEFT `resize_state_dict_by_rank_pattern`); a
/// layer already at its kept rank (loaded from a pruned file) is written as it is, and a module
/// the pattern prunes to rank 0 gets PEFT's empty tensors. Returns the number of modules written.
///
/// # Errors
/// [`LoraError::InvalidConfig`] when `config` lacks what PEFT needs to load the file
/// (`total_step > tinit + tfinal`) or a layer's rank fits neither `init_r` nor its kept count;
/// [`LoraError::Io`] / [`LoraError::Safetensors`] on write failure.
pub fn save_adapter<M: LoraModel>(
    model: &M,
    config: &AdaLoraConfig,
    base_model: &str,
    dir: &Path,
) -> Result<usize, LoraError> {
    let total = config.total_step.unwrap_or(0);
    if total == 0 || config.tinit + config.tfinal >= total {
        return Err(LoraError::InvalidConfig(format!(
            "AdaLoRA adapters need total_step > tinit + tfinal for PEFT to load them (total_step {:?}, tinit {}, tfinal {})",
            config.total_step, config.tinit, config.tfinal
        )));
    }
    let mut tensors = BTreeMap::new();
    let mut failure = None;
    model.visit_linears(&mut |path, lin| {
        let pattern = config.rank_pattern.as_ref().and_then(|p| p.get(path));
        let key = |name: &str| format!("{KEY_PREFIX}{path}.{name}");
        let Some(a) = lin.adapter.as_ref().and_then(|a| a.as_adalora()) else {
            // A module pruned to rank 0 carries no adapter here; PEFT still saves (and on load
            // expects) its empty tensors.
            if pattern.is_some_and(|keep| !keep.iter().any(|k| *k)) {
                let (d_in, d_out) = lin.dims();
                let empty = |shape: Vec<usize>| HostTensor { shape, data: Vec::new() };
                tensors.insert(key("lora_A"), empty(vec![0, d_in]));
                tensors.insert(key("lora_E"), empty(vec![0, 1]));
                tensors.insert(key("lora_B"), empty(vec![d_out, 0]));
            }
            return;
        };
        let mut write = || -> Result<(), LoraError> {
            let kept: Vec<usize> = match pattern {
                Some(keep) if keep.len() == a.r => (0..a.r).filter(|&i| keep[i]).collect(),
                Some(keep) if keep.iter().filter(|k| **k).count() == a.r => (0..a.r).collect(),
                Some(keep) => {
                    return Err(LoraError::InvalidConfig(format!(
                        "{path}: the layer holds {} triplets, its rank pattern has {} entries with {} kept",
                        a.r,
                        keep.len(),
                        keep.iter().filter(|k| **k).count()
                    )));
                }
                None => (0..a.r).collect(),
            };
            // burn [d_in, r] / [1, r] / [r, d_out] → PyTorch [r, in] / [r, 1] / [out, r].
            let q = keep_columns(&HostTensor::from_tensor(a.lora_a.val())?, &kept);
            let e = keep_columns(&HostTensor::from_tensor(a.lora_e.val())?, &kept);
            let p = HostTensor::from_tensor(a.lora_b.val().transpose())?;
            tensors.insert(key("lora_A"), q.transposed_2d());
            tensors.insert(key("lora_E"), e.transposed_2d());
            tensors.insert(key("lora_B"), keep_columns(&p, &kept));
            Ok(())
        };
        if let Err(e) = write()
            && failure.is_none()
        {
            failure = Some(e);
        }
    });
    if let Some(e) = failure {
        return Err(e);
    }
    let file = PeftAdaLoraConfig {
        common: PeftCommon::new("ADALORA", base_model),
        r: lora_r(),
        rank_pattern: config.rank_pattern.as_ref().map(|p| {
            p.iter()
                .map(|(k, v)| (format!("{k}.lora_E"), v.clone()))
                .collect()
        }),
        adalora: config.clone(),
    };
    write_adapter_dir(dir, &tensors, &file)?;
    Ok(tensors.len() / 3)
}

/// Splits `base_model.model.<path>.lora_{A,B,E}` into `(path, 0 | 1 | 2)` for Q, λ, P.
fn parse_key(key: &str) -> Option<(&str, usize)> {
    let rest = key.strip_prefix(KEY_PREFIX)?;
    [(".lora_A", 0), (".lora_E", 1), (".lora_B", 2)]
        .into_iter()
        .find_map(|(suffix, i)| rest.strip_suffix(suffix).map(|p| (p, i)))
}

/// Loads the PEFT AdaLoRA adapter in `dir` onto `model` (frozen first; the adapters are
/// trainable). Each layer gets the rank its tensors hold — `init_r`, or the kept count of its
/// `rank_pattern` entry — and the original scale `lora_alpha / (init_r + 1e-5)`. A module pruned
/// to rank 0 gets no adapter (it adds nothing). Returns the model, the config (with its rank
/// pattern) and what was adapted.
///
/// # Errors
/// Those of [`read_config`] and [`read_safetensors`], plus [`LoraError::AdapterTensor`] naming
/// the key for a tensor that is not an AdaLoRA tensor, a module the model does not have or the
/// config does not select, a missing tensor, or a shape that disagrees with the model or the
/// rank pattern.
pub fn load_adapter<M: LoraModel>(
    model: M,
    dir: &Path,
    device: &Device,
) -> Result<(M, AdaLoraConfig, AdaptReport), LoraError> {
    let cfg = read_config(dir)?;
    let file = dir.join(WEIGHTS_FILE);
    let err = |key: &str, message: String| LoraError::AdapterTensor {
        path: file.clone(),
        key: key.to_string(),
        message,
    };
    let mut by_module: BTreeMap<String, [Option<HostTensor>; 3]> = BTreeMap::new();
    for (key, t) in read_safetensors(&file)? {
        let (path, i) = parse_key(&key).ok_or_else(|| {
            err(&key, "not an AdaLoRA tensor (expected base_model.model.<module>.lora_A / .lora_E / .lora_B)".into())
        })?;
        if t.shape.len() != 2 {
            return Err(err(
                &key,
                format!("expected a 2-D tensor, found shape {:?}", t.shape),
            ));
        }
        by_module.entry(path.to_string()).or_default()[i] = Some(t);
    }
    if by_module.is_empty() {
        return Err(err("", "the adapter file holds no AdaLoRA tensors".into()));
    }
    let matcher = TargetMatcher::new(&cfg.targets())?;
    check_file_modules(
        by_module.keys(),
        &model.linear_paths(),
        &matcher,
        &file,
        |p| format!("{KEY_PREFIX}{p}.lora_A"),
    )?;

    let mut model = model.no_grad();
    model.visit_linears_mut(&mut |path, lin| {
        if !matcher.matches(path) {
            return Ok(());
        }
        let key = |name: &str| format!("{KEY_PREFIX}{path}.{name}");
        let kept = match cfg.rank_pattern.as_ref().and_then(|p| p.get(path)) {
            Some(keep) => keep.iter().filter(|k| **k).count(),
            None => cfg.init_r,
        };
        let Some([q, e, p]) = by_module.remove(path) else {
            return Err(err(&key("lora_A"), "missing: the config selects this module but the file has no tensors for it".into()));
        };
        let (d_in, d_out) = lin.dims();
        let check = |t: Option<HostTensor>, name: &str, want: [usize; 2]| {
            let t = t.ok_or_else(|| err(&key(name), "missing".into()))?;
            if t.shape != want {
                return Err(err(&key(name), format!("shape {:?}, expected {want:?} from the model and the rank pattern (kept rank {kept})", t.shape)));
            }
            Ok(t)
        };
        let q = check(q, "lora_A", [kept, d_in])?;
        let e = check(e, "lora_E", [kept, 1])?;
        let p = check(p, "lora_B", [d_out, kept])?;
        if kept == 0 {
            return Ok(()); // every triplet pruned: the layer adds nothing
        }
        // PyTorch [r, in] / [r, 1] / [out, r] → burn [d_in, r] / [1, r] / [r, d_out].
        let adapter = AdaLoraAdapter::from_tensors(
            q.transposed_2d().to_tensor(device),
            e.transposed_2d().to_tensor(device),
            p.transposed_2d().to_tensor(device),
            &cfg,
        );
        lin.attach(adapter, path)
    })?;
    let report = AdaptReport::of(&model);
    Ok((model, cfg, report))
}
