//! [`TrainConfig`]: everything a training run needs to know, with the defaults of the main job
//! (`cargo xtask train` with no arguments), under one name per setting from the TOML file to the
//! flag to the struct. The LoRA and AdaLoRA settings are PEFT's own config structs with PEFT's
//! field names (`[lora] r`, `lora_alpha`, `lora_dropout`, `target_modules`, `use_rslora`;
//! `[adalora] init_r`, `target_r`, `tinit`, `tfinal`, `deltaT`, …).
//!
//! A config is built in one way only, by layers ([`TrainConfig::layered`]): the defaults, then
//! each TOML table given (a `--config` file, a resumed run's saved `config.toml`, the command
//! line's flags as a table), each overriding only the keys it names. An unknown key is an error
//! naming it; the effective config is written into the run directory.

use std::path::{Path, PathBuf};

use lora_core::BaseDtype;
use lora_core::adalora::AdaLoraConfig;
use lora_core::config::{LoraConfig, TargetModules};
use lora_core::quant::Nf4Config;
use serde::{Deserialize, Serialize};

use crate::error::TrainError;

/// The most optimizer (or warm-up) steps a run may ask for: 10^8, far beyond any fine-tuning
/// run, and small enough that a resumed run's schedule fast-forward stays instant.
pub const MAX_STEPS: usize = 100_000_000;
/// The most sequences in one micro-batch, or micro-batches in one step.
pub const MAX_BATCH: usize = 65_536;
/// The longest sequence (or generated answer) in tokens a run may ask for: 2^20.
pub const MAX_SEQ_LEN: usize = 1 << 20;

/// The settings a resumed run may change: how long it runs and how it evaluates and reports.
/// Every other setting defines the run and must stay as saved ([`TrainConfig::resume_conflicts`]).
pub const RESUMABLE_SETTINGS: &[&str] = &[
    "steps",
    "eval_every",
    "save_every",
    "eval_limit",
    "eval_metric",
    "eval_max_new_tokens",
    "backend",
];

/// Which adapter a run trains.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Method {
    /// LoRA (`ΔW = B·A`, fixed rank `r`): the `[lora]` settings.
    #[default]
    Lora,
    /// AdaLoRA (`ΔW = P·diag(λ)·Q`, rank pruned from `init_r` to `target_r` on average): the
    /// `[adalora]` settings.
    Adalora,
}

/// How a generated answer is compared with the reference (both trimmed of surrounding
/// whitespace and lowercased first).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EvalMetric {
    /// The answer equals the reference: for short answers (a class label, a number, a word).
    #[default]
    Exact,
    /// The answer contains the reference: for answers that come with more text around them.
    Contains,
}

/// How the frozen base weights are stored.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum QuantMethod {
    /// As loaded (f32).
    #[default]
    #[serde(alias = "f32")]
    None,
    /// QLoRA's 4-bit NormalFloat, every linear layer except `lm_head`; adapters stay f32.
    Nf4,
}

/// Base-weight quantization (`[quant]`): QLoRA when `method = "nf4"`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuantSection {
    /// `none` (default) or `nf4`.
    pub method: QuantMethod,
    /// Weights per NF4 block (a power of two, 32–4096; bitsandbytes' default 64).
    pub block_size: usize,
    /// Quantize the per-block scales again to 8 bits (QLoRA's double quantization).
    pub double_quant: bool,
}

impl Default for QuantSection {
    fn default() -> Self {
        let nf4 = Nf4Config::default();
        QuantSection {
            method: QuantMethod::None,
            block_size: nf4.block_size,
            double_quant: nf4.double_quant,
        }
    }
}

impl QuantSection {
    /// The NF4 settings, or `None` for an unquantized base.
    ///
    /// # Errors
    /// A message for a bad block size.
    pub fn to_nf4(&self) -> Result<Option<Nf4Config>, String> {
        match self.method {
            QuantMethod::None => Ok(None),
            QuantMethod::Nf4 => {
                let c = Nf4Config {
                    block_size: self.block_size,
                    double_quant: self.double_quant,
                };
                c.validate().map_err(|e| e.to_string())?;
                Ok(Some(c))
            }
        }
    }
}

/// A training run's configuration.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainConfig {
    /// GGUF file or Hugging Face directory; `None` = the default SmolLM2-135M-Instruct.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<PathBuf>,
    /// `trec`, a JSONL file (every 20th example held out), or a folder with `train.jsonl`,
    /// `valid.jsonl` (held out) and optionally `test.jsonl` (never read by training).
    pub data: String,
    /// A JSONL file to evaluate on instead of the held-out split `data` gives (then all of a
    /// single `data` file trains).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eval_data: Option<String>,
    /// How held-out answers are scored: `exact` or `contains`. Unset: `exact` for data with
    /// answers, and no generated answers for TREC (its accuracy scores the six class words
    /// instead; generating 501 answers twice would add minutes to the default run).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eval_metric: Option<EvalMetric>,
    /// Most tokens generated per held-out answer; 0 = the longest reference answer + 16.
    pub eval_max_new_tokens: usize,
    /// Optimizer steps.
    pub steps: usize,
    /// Sequences per micro-batch.
    pub batch_size: usize,
    /// Micro-batches per optimizer step (gradient accumulation).
    pub grad_accum: usize,
    /// Peak learning rate (AdamW).
    pub lr: f64,
    /// Linear warm-up steps before the cosine decay.
    pub warmup_steps: usize,
    /// The learning rate at the end of the cosine decay, as a fraction of `lr`.
    pub min_lr_ratio: f64,
    /// AdamW decoupled weight decay.
    pub weight_decay: f64,
    /// Clip the global gradient norm (over all adapter parameters) to this value; 0 = off.
    pub max_grad_norm: f64,
    /// LoRA+ (Hayou et al. 2024, arXiv:2402.12354): `lora_B` (and DoRA's magnitude) learn at
    /// this many times `lr`, as PEFT's `create_loraplus_optimizer(loraplus_lr_ratio = λ)`;
    /// absent = plain LoRA. The paper and PEFT suggest λ = 16.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub loraplus_lr_ratio: Option<f64>,
    /// Longest sequence in tokens (longer examples are truncated from the right).
    pub seq_len: usize,
    /// Seed for initialisation, data order and dropout.
    pub seed: u64,
    /// Evaluate on the held-out set every N steps (0 = only before and after).
    pub eval_every: usize,
    /// Write a checkpoint every N steps (0 = only at the end).
    pub save_every: usize,
    /// Use at most this many held-out examples for evaluation (0 = all).
    pub eval_limit: usize,
    /// Backend: flex, ndarray or wgpu.
    pub backend: String,
    /// `lora` (default) or `adalora`.
    pub method: Method,
    /// LoRA settings, PEFT's `LoraConfig` (used when `method = "lora"`).
    pub lora: LoraConfig,
    /// AdaLoRA settings, PEFT's `AdaLoraConfig` (used when `method = "adalora"`); its
    /// `total_step` defaults to `steps`.
    pub adalora: AdaLoraConfig,
    /// Base-weight quantization (QLoRA).
    pub quant: QuantSection,
    /// The type the frozen base weights are stored and multiplied in: `f32`, `bf16` or `f16`
    /// (adapters, their gradients and the optimizer state stay f32). With `quant.method = "nf4"`
    /// it applies to what stays dense: the embedding and `lm_head`.
    #[serde(default)]
    pub base_dtype: BaseDtype,
    /// burn's gradient checkpointing: memory-bound activations are recomputed in the backward
    /// pass instead of kept (same losses and gradients, less memory, more compute).
    #[serde(default)]
    pub gradient_checkpointing: bool,
}

/// The main job's targets: the four attention projections.
fn attention_targets() -> TargetModules {
    TargetModules::names(&["q_proj", "k_proj", "v_proj", "o_proj"])
}

impl Default for TrainConfig {
    fn default() -> Self {
        let (lora_alpha, lora_dropout) = (16.0, 0.05);
        TrainConfig {
            model: None,
            data: "trec".into(),
            eval_data: None,
            eval_metric: None,
            eval_max_new_tokens: 0,
            steps: 200,
            batch_size: 8,
            grad_accum: 1,
            lr: 1e-3,
            warmup_steps: 10,
            min_lr_ratio: 0.1,
            weight_decay: 0.0,
            max_grad_norm: 1.0,
            loraplus_lr_ratio: None,
            seq_len: 256,
            seed: 42,
            eval_every: 0,
            save_every: 50,
            eval_limit: 0,
            backend: "flex".into(),
            method: Method::Lora,
            lora: LoraConfig {
                lora_dropout,
                ..LoraConfig::new(8, lora_alpha, attention_targets())
            },
            // PEFT's AdaLoRA defaults, on the same targets, alpha and dropout as the LoRA run.
            adalora: AdaLoraConfig {
                lora_alpha,
                lora_dropout,
                target_modules: attention_targets(),
                ..AdaLoraConfig::default()
            },
            quant: QuantSection::default(),
            base_dtype: BaseDtype::default(),
            gradient_checkpointing: false,
        }
    }
}

/// Merges `over` into `base`: tables key by key (recursively), anything else replaced.
fn merge_into(base: &mut toml::Table, over: &toml::Table) {
    for (key, value) in over {
        match (base.get_mut(key), value) {
            (Some(toml::Value::Table(b)), toml::Value::Table(o)) => merge_into(b, o),
            _ => {
                base.insert(key.clone(), value.clone());
            }
        }
    }
}

/// Appends every leaf of `table` as `(dotted key, value as TOML text)`.
fn flatten(prefix: &str, table: &toml::Table, out: &mut Vec<(String, String)>) {
    for (key, value) in table {
        let key = if prefix.is_empty() {
            key.clone()
        } else {
            format!("{prefix}.{key}")
        };
        match value {
            toml::Value::Table(t) => flatten(&key, t, out),
            v => out.push((key, v.to_string())),
        }
    }
}

/// Deserializes `table` as a [`TrainConfig`], refusing keys the config does not have.
fn from_table(table: toml::Table, source: &str) -> Result<TrainConfig, TrainError> {
    let mut unknown = Vec::new();
    let config: TrainConfig = serde_ignored::deserialize(toml::Value::Table(table), |path| {
        unknown.push(path.to_string())
    })
    .map_err(|e| TrainError::Config(format!("{source}: {e}")))?;
    if let Some(key) = unknown.first() {
        return Err(TrainError::Config(format!(
            "{source}: unknown setting `{key}` (see the README's config keys; PEFT's names: lora.r, lora.lora_alpha, lora.target_modules, …)"
        )));
    }
    Ok(config)
}

impl TrainConfig {
    /// The defaults with each `(source name, table)` layered on top in order, checked.
    ///
    /// # Errors
    /// [`TrainError::Config`] naming the source and the key for an unknown key or a value of
    /// the wrong type, or naming the field for a value a run cannot start with.
    pub fn layered(layers: &[(&str, toml::Table)]) -> Result<Self, TrainError> {
        let defaults = toml::Table::try_from(TrainConfig::default())
            .map_err(|e| TrainError::Config(format!("defaults: {e}")))?;
        let mut merged = defaults.clone();
        for (source, layer) in layers {
            // Each layer alone on the defaults, so an unknown key is blamed on its source.
            let mut alone = defaults.clone();
            merge_into(&mut alone, layer);
            from_table(alone, source)?;
            merge_into(&mut merged, layer);
        }
        let config = from_table(merged, "config")?;
        config.validate().map_err(TrainError::Config)?;
        Ok(config)
    }

    /// Reads a TOML file as a table for [`TrainConfig::layered`].
    ///
    /// # Errors
    /// [`TrainError::Io`] if it cannot be read, [`TrainError::Config`] for invalid TOML (with
    /// the line).
    pub fn read_table(path: &Path) -> Result<toml::Table, TrainError> {
        let text = std::fs::read_to_string(path).map_err(|source| TrainError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        text.parse::<toml::Table>()
            .map_err(|e| TrainError::Config(format!("{}: {e}", path.display())))
    }

    /// The config as TOML, as written into a run directory.
    ///
    /// # Errors
    /// [`TrainError::Config`] if it cannot be serialized.
    pub fn to_toml(&self) -> Result<String, TrainError> {
        toml::to_string_pretty(self).map_err(|e| TrainError::Config(format!("config: {e}")))
    }

    /// Checks the values a run cannot start with.
    ///
    /// # Errors
    /// A message naming the bad field.
    pub fn validate(&self) -> Result<(), String> {
        if self.steps == 0 {
            return Err("steps must be at least 1".into());
        }
        if self.batch_size == 0 || self.grad_accum == 0 {
            return Err("batch_size and grad_accum must be at least 1".into());
        }
        if !(self.lr > 0.0 && self.lr <= 1.0) {
            return Err(format!("lr must be in (0, 1], got {}", self.lr));
        }
        if !(0.0..=1.0).contains(&self.min_lr_ratio) {
            return Err(format!(
                "min_lr_ratio must be in [0, 1], got {}",
                self.min_lr_ratio
            ));
        }
        if let Some(ratio) = self.loraplus_lr_ratio
            && !(ratio.is_finite() && ratio > 0.0 && ratio * self.lr <= 1.0)
        {
            return Err(format!(
                "loraplus_lr_ratio must be finite, above 0 and at most 1 / lr = {} (lora_B's rate is ratio × lr), got {ratio}",
                1.0 / self.lr
            ));
        }
        if self.seq_len < 2 {
            return Err("seq_len must be at least 2".into());
        }
        if let Ok(kind) = self.backend.parse::<lora_core::BackendKind>() {
            self.base_dtype
                .check_backend(kind)
                .map_err(|e| e.to_string())?;
        }
        // Counts a run multiplies or loops over are capped so that no setting can overflow a
        // counter, spin for hours before the first step, or size a batch beyond any memory.
        let capped = [
            ("steps", self.steps, MAX_STEPS),
            ("warmup_steps", self.warmup_steps, MAX_STEPS),
            ("batch_size", self.batch_size, MAX_BATCH),
            ("grad_accum", self.grad_accum, MAX_BATCH),
            ("seq_len", self.seq_len, MAX_SEQ_LEN),
            ("eval_max_new_tokens", self.eval_max_new_tokens, MAX_SEQ_LEN),
        ];
        if let Some((name, v, max)) = capped.iter().find(|(_, v, max)| v > max) {
            return Err(format!("{name} must be at most {max}, got {v}"));
        }
        for (name, v) in [
            ("weight_decay", self.weight_decay),
            ("max_grad_norm", self.max_grad_norm),
        ] {
            if !(v.is_finite() && v >= 0.0) {
                return Err(format!(
                    "{name} must be a finite number ≥ 0 (0 turns it off), got {v}"
                ));
            }
        }
        self.quant.to_nf4()?;
        self.lora.validate().map_err(|e| e.to_string())?;
        if self.method == Method::Adalora && self.lora.use_dora {
            return Err(
                "lora.use_dora applies to method = \"lora\" (PEFT's AdaLoRA has no DoRA form); drop --use-dora or --method adalora".into(),
            );
        }
        if self.method == Method::Adalora {
            self.adalora_config()
                .validate_training()
                .map_err(|e| e.to_string())?;
        }
        Ok(())
    }

    /// The settings in which `self` differs from `saved` (the config a run was started with)
    /// other than [`RESUMABLE_SETTINGS`], each as `key: saved → given`, in key order. Resuming
    /// with any of them changed would make a different run: an adapter whose config contradicts
    /// its tensors (rank), a different update scale (alpha), other data or another optimizer.
    ///
    /// # Errors
    /// [`TrainError::Config`] if either config cannot be written as TOML.
    pub fn resume_conflicts(&self, saved: &TrainConfig) -> Result<Vec<String>, TrainError> {
        let table = |c: &TrainConfig| {
            toml::Table::try_from(c).map_err(|e| TrainError::Config(format!("config: {e}")))
        };
        let (mut given, mut was) = (Vec::new(), Vec::new());
        flatten("", &table(self)?, &mut given);
        flatten("", &table(saved)?, &mut was);
        let given: std::collections::BTreeMap<_, _> = given.into_iter().collect();
        let was: std::collections::BTreeMap<_, _> = was.into_iter().collect();
        let keys: std::collections::BTreeSet<&String> = given.keys().chain(was.keys()).collect();
        let shown = |v: Option<&String>| v.map_or("(unset)".to_string(), Clone::clone);
        Ok(keys
            .into_iter()
            .filter(|k| !RESUMABLE_SETTINGS.contains(&k.as_str()))
            .filter(|k| given.get(*k) != was.get(*k))
            .map(|k| format!("{k}: {} → {}", shown(was.get(k)), shown(given.get(k))))
            .collect())
    }

    /// The run's [`AdaLoraConfig`]: `[adalora]` with `total_step` = `steps` unless set.
    pub fn adalora_config(&self) -> AdaLoraConfig {
        AdaLoraConfig {
            total_step: self.adalora.total_step.or(Some(self.steps)),
            ..self.adalora.clone()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layered(toml: &str) -> Result<TrainConfig, TrainError> {
        TrainConfig::layered(&[("test", toml.parse().unwrap())])
    }

    #[test]
    fn optimizer_and_schedule_settings_must_be_finite_and_in_range() {
        for (setting, key) in [
            ("weight_decay = nan", "weight_decay"),
            ("weight_decay = -0.1", "weight_decay"),
            ("max_grad_norm = -1.0", "max_grad_norm"),
            ("max_grad_norm = inf", "max_grad_norm"),
            ("warmup_steps = 1000000000000", "warmup_steps"),
            ("steps = 1000000000000", "steps"),
            ("batch_size = 1000000", "batch_size"),
            ("seq_len = 100000000", "seq_len"),
            ("lr = nan", "lr"),
            ("min_lr_ratio = nan", "min_lr_ratio"),
            ("[lora]\nlora_alpha = nan", "lora_alpha"),
            ("[lora]\nlora_dropout = nan", "lora_dropout"),
            ("[lora]\nr = 5000", "r = 5000"),
            (
                "method = \"adalora\"\n[adalora]\north_reg_weight = inf",
                "orth_reg_weight",
            ),
        ] {
            let err = layered(setting).unwrap_err().to_string();
            assert!(err.contains(key), "{setting}: {err}");
        }
        assert!(layered("weight_decay = 0.01\nmax_grad_norm = 0.0").is_ok());
    }

    #[test]
    fn resume_conflicts_list_what_defines_the_run_and_allow_what_does_not() {
        let saved = TrainConfig::default();
        let given = TrainConfig {
            steps: 400,
            eval_every: 10,
            backend: "ndarray".into(),
            ..saved.clone()
        };
        assert!(given.resume_conflicts(&saved).unwrap().is_empty());
        let mut given = saved.clone();
        given.lora.r = 16;
        given.lora.lora_alpha = 32.0;
        given.data = "other.jsonl".into();
        given.quant.method = QuantMethod::Nf4;
        let conflicts = given.resume_conflicts(&saved).unwrap();
        assert_eq!(
            conflicts,
            vec![
                "data: \"trec\" → \"other.jsonl\"",
                "lora.lora_alpha: 16.0 → 32.0",
                "lora.r: 8 → 16",
                "quant.method: \"none\" → \"nf4\"",
            ]
        );
        let model = TrainConfig {
            model: Some("other.gguf".into()),
            ..saved.clone()
        };
        assert_eq!(
            model.resume_conflicts(&saved).unwrap(),
            vec!["model: (unset) → \"other.gguf\""]
        );
    }
}
