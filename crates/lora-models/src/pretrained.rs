//! One entry point for "give me a model": a GGUF file or a Hugging Face directory becomes a
//! [`Llama`] plus its tokenizer, ready for inference or for LoRA.

use std::path::{Path, PathBuf};

use burn::tensor::Device;

use crate::checkpoint;
use crate::error::ModelError;
use crate::family::Family;
use crate::llama::Llama;
use crate::tokenizer::{TextTokenizer, family_chat_template};

/// A loaded model with its tokenizer.
#[derive(Debug)]
pub struct Pretrained {
    /// The model (every parameter frozen).
    pub model: Llama,
    /// Its tokenizer and chat template.
    pub tokenizer: TextTokenizer,
    /// Where it was loaded from.
    pub source: PathBuf,
    /// `Some(family)` when the checkpoint carried no chat template and the family's documented
    /// one ([`family_chat_template`]) was put in its place (a note says so on stderr).
    pub chat_template_fallback: Option<Family>,
}

impl Pretrained {
    /// A short name for the model (file stem or directory name), used as
    /// `base_model_name_or_path` in adapter configs.
    pub fn name(&self) -> String {
        self.source
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| self.source.display().to_string())
    }
}

/// Loads a GGUF file or a Hugging Face directory (`config.json`, `model.safetensors`,
/// `tokenizer.json`) onto `device`.
///
/// # Errors
/// [`ModelError`] naming the file and the key or tensor that is missing, misshaped, unused or
/// unsupported.
pub fn load(path: &Path, device: &Device) -> Result<Pretrained, ModelError> {
    let (model, mut tokenizer) = if path.is_dir() {
        let config = checkpoint::hf::read_config(path)?;
        let weights = checkpoint::hf::read_weights(path)?;
        let model = checkpoint::build_llama(&config, weights, device)?;
        (model, TextTokenizer::from_hf_dir(path)?)
    } else {
        let file = checkpoint::gguf::open(path)?;
        let config = checkpoint::gguf::read_config(&file)?;
        let weights = checkpoint::gguf::read_weights(&file, &config)?;
        let model = checkpoint::build_llama(&config, weights, device)?;
        (model, TextTokenizer::from_gguf(&file)?)
    };
    let family = model.config.family;
    let fallback = family_chat_template(family).filter(|_| tokenizer.chat_template().is_none());
    if let Some(template) = fallback {
        eprintln!(
            "note: {} carries no chat template; using the documented {family} template",
            path.display()
        );
        tokenizer.set_chat_template(Some(template.to_owned()));
    }
    Ok(Pretrained {
        model,
        tokenizer,
        source: path.to_path_buf(),
        chat_template_fallback: fallback.map(|_| family),
    })
}

/// Loads only the model from a Hugging Face directory (no tokenizer needed), e.g. the tiny test
/// fixtures.
///
/// # Errors
/// As [`load`].
pub fn load_hf_model(dir: &Path, device: &Device) -> Result<Llama, ModelError> {
    let config = checkpoint::hf::read_config(dir)?;
    let weights = checkpoint::hf::read_weights(dir)?;
    checkpoint::build_llama(&config, weights, device)
}
