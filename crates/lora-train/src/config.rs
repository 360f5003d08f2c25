//! [`TrainConfig`]: everything a training run needs to know, with the defaults of the main job
//! (`cargo xtask train` with no arguments). It round-trips through TOML: `--config FILE.toml`
//! reads one, and the effective config is written into the run directory.

use std::path::PathBuf;

use lora_core::adalora::AdaLoraConfig;
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

/// Which adapter a run trains.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Method {
    /// LoRA (`ΔW = B·A`, fixed rank `r`).
    #[default]
    Lora,
    /// AdaLoRA (`ΔW = P·diag(λ)·Q`, rank pruned from `init_r` to `target_r` on average).
    Adalora,
}

impl std::str::FromStr for Method {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "lora" => Ok(Method::Lora),
            "adalora" => Ok(Method::Adalora),
            other => Err(format!("unknown method {other:?}; choose lora or adalora")),
        }
    }
}

/// AdaLoRA settings as they appear in a TOML file (`[adalora]`); PEFT's defaults. `lora_alpha`,
/// dropout and targets come from `[lora]`; `total_step` is the run's `steps`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdaLoraSection {
    /// Rank every layer starts with.
    pub init_r: usize,
    /// Average rank per adapted matrix at the end.
    pub target_r: usize,
    /// Steps at the full budget before pruning starts.
    pub tinit: usize,
    /// Steps at the target budget at the end, masks fixed.
    pub tfinal: usize,
    /// Steps between budget allocations (PEFT `deltaT`).
    pub delta_t: usize,
    /// EMA factor of the sensitivity.
    pub beta1: f64,
    /// EMA factor of the uncertainty.
    pub beta2: f64,
    /// Weight of the orthogonality penalty in the loss.
    pub orth_reg_weight: f64,
}

impl Default for AdaLoraSection {
    fn default() -> Self {
        let peft = AdaLoraConfig::default();
        AdaLoraSection {
            init_r: peft.init_r,
            target_r: peft.target_r,
            tinit: peft.tinit,
            tfinal: peft.tfinal,
            delta_t: peft.delta_t,
            beta1: peft.beta1,
            beta2: peft.beta2,
            orth_reg_weight: peft.orth_reg_weight,
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
    /// LoRA settings (alpha, dropout and targets apply to AdaLoRA too).
    pub lora: LoraSection,
    /// `lora` (default) or `adalora`.
    pub method: Method,
    /// AdaLoRA settings, used when `method = "adalora"`.
    pub adalora: AdaLoraSection,
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
            method: Method::Lora,
            adalora: AdaLoraSection::default(),
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
            .map_err(|e| e.to_string())?;
        if self.method == Method::Adalora {
            self.adalora_config()
                .validate_training()
                .map_err(|e| e.to_string())?;
        }
        Ok(())
    }

    /// The PEFT-style [`AdaLoraConfig`] of this run: `[adalora]` plus alpha, dropout and
    /// targets from `[lora]`, with `total_step` = `steps`.
    pub fn adalora_config(&self) -> AdaLoraConfig {
        let a = &self.adalora;
        AdaLoraConfig {
            init_r: a.init_r,
            target_r: a.target_r,
            tinit: a.tinit,
            tfinal: a.tfinal,
            delta_t: a.delta_t,
            beta1: a.beta1,
            beta2: a.beta2,
            orth_reg_weight: a.orth_reg_weight,
            total_step: Some(self.steps),
            lora_alpha: self.lora.alpha,
            lora_dropout: self.lora.dropout,
            target_modules: TargetModules::parse_cli(&self.lora.targets),
            layers_to_transform: None,
            rank_pattern: None,
        }
    }
}
