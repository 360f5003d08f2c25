//! [`TrainConfig`]: everything a training run needs to know, with the defaults of the main job
//! (`cargo xtask train` with no arguments). It round-trips through TOML: `--config FILE.toml`
//! reads one, and the effective config is written into the run directory.

use std::path::PathBuf;

use lora_core::config::{LoraConfig, TargetModules};
use lora_core::quant::Nf4Config;
use serde::{Deserialize, Serialize};

/// LoRA settings as they appear in a TOML file (`[lora]`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LoraSection {
    /// Rank `r`.
    pub r: usize,
    /// `lora_alpha` (scaling = alpha / r).
    pub alpha: f64,
    /// Dropout on the LoRA path.
    pub dropout: f64,
    /// `q_proj,v_proj`-style list, `all-linear`, or `re:<regex>`.
    pub targets: String,
    /// rsLoRA scaling `alpha / √r`.
    pub rslora: bool,
}

impl Default for LoraSection {
    fn default() -> Self {
        LoraSection {
            r: 8,
            alpha: 16.0,
            dropout: 0.05,
            targets: "q_proj,k_proj,v_proj,o_proj".into(),
            rslora: false,
        }
    }
}

impl LoraSection {
    /// The PEFT-style [`LoraConfig`] for these settings.
    pub fn to_lora_config(&self) -> LoraConfig {
        LoraConfig {
            lora_dropout: self.dropout,
            use_rslora: self.rslora,
            ..LoraConfig::new(self.r, self.alpha, TargetModules::parse_cli(&self.targets))
        }
    }
}

/// Base-weight quantization as it appears in a TOML file (`[quant]`): QLoRA when `method = "nf4"`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct QuantSection {
    /// `none` (f32 base, default) or `nf4` (QLoRA: 4-bit NormalFloat base, adapters in f32).
    pub method: String,
    /// Weights per NF4 block (a power of two, 32–4096; bitsandbytes' default 64).
    pub block_size: usize,
    /// Quantize the per-block scales again to 8 bits (QLoRA's double quantization).
    pub double_quant: bool,
}

impl Default for QuantSection {
    fn default() -> Self {
        QuantSection {
            method: "none".into(),
            block_size: 64,
            double_quant: true,
        }
    }
}

impl QuantSection {
    /// The NF4 settings, or `None` for an unquantized base.
    ///
    /// # Errors
    /// A message for a method other than `none`/`nf4`, or a bad block size.
    pub fn to_nf4(&self) -> Result<Option<Nf4Config>, String> {
        match self.method.to_ascii_lowercase().as_str() {
            "none" | "" | "f32" => Ok(None),
            "nf4" => {
                let c = Nf4Config {
                    block_size: self.block_size,
                    double_quant: self.double_quant,
                };
                c.validate().map_err(|e| e.to_string())?;
                Ok(Some(c))
            }
            other => Err(format!("quant method must be none or nf4, got {other:?}")),
        }
    }
}

/// A training run's configuration.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrainConfig {
    /// GGUF file or Hugging Face directory; `None` = the default SmolLM2-135M-Instruct.
    pub model: Option<PathBuf>,
    /// `trec` or a JSONL file.
    pub data: String,
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
    /// LoRA settings.
    pub lora: LoraSection,
    /// Base-weight quantization (QLoRA).
    pub quant: QuantSection,
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            model: None,
            data: "trec".into(),
            steps: 200,
            batch_size: 8,
            grad_accum: 1,
            lr: 1e-3,
            warmup_steps: 10,
            min_lr_ratio: 0.1,
            weight_decay: 0.0,
            max_grad_norm: 1.0,
            seq_len: 256,
            seed: 42,
            eval_every: 0,
            save_every: 50,
            eval_limit: 0,
            backend: "flex".into(),
            lora: LoraSection::default(),
            quant: QuantSection::default(),
        }
    }
}

impl TrainConfig {
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
        if self.seq_len < 2 {
            return Err("seq_len must be at least 2".into());
        }
        self.quant.to_nf4()?;
        self.lora
            .to_lora_config()
            .validate()
            .map_err(|e| e.to_string())
    }
}
