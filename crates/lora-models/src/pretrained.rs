//! One entry point for "give me a model": a GGUF file or a Hugging Face directory becomes a
//! [`Llama`] plus its tokenizer, ready for inference or for LoRA.

use std::path::{Path, PathBuf};

use burn::tensor::Device;

use crate::checkpoint::{self, BuildOptions};
use crate::error::ModelError;
use crate::llama::Llama;
use crate::tokenizer::TextTokenizer;

/// A loaded model with its tokenizer.
#[derive(Debug)]
pub struct Pretrained {
    /// The model (every parameter frozen).
    pub model: Llama,
    /// Its tokenizer and chat template.
    pub tokenizer: TextTokenizer,
    /// Where it was loaded from.
    pub source: PathBuf,
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
    if path.is_dir() {
        let (config, opts) = checkpoint::hf::read_config(path)?;
        let weights = checkpoint::hf::read_weights(path)?;
        let model = checkpoint::build_llama(&config, weights, opts, device)?;
        let tokenizer = TextTokenizer::from_hf_dir(path)?;
        Ok(Pretrained {
            model,
            tokenizer,
            source: path.to_path_buf(),
        })
    } else {
        let file = checkpoint::gguf::open(path)?;
        let config = checkpoint::gguf::read_config(&file)?;
        let weights = checkpoint::gguf::read_weights(&file, &config)?;
        let model = checkpoint::build_llama(&config, weights, BuildOptions::default(), device)?;
        let tokenizer = TextTokenizer::from_gguf(&file)?;
        Ok(Pretrained {
            model,
            tokenizer,
            source: path.to_path_buf(),
        })
    }
}

/// Loads only the model from a Hugging Face directory (no tokenizer needed), e.g. the tiny test
/// fixtures.
///
/// # Errors
/// As [`load`].
pub fn load_hf_model(dir: &Path, device: &Device) -> Result<Llama, ModelError> {
    let (config, opts) = checkpoint::hf::read_config(dir)?;
    let weights = checkpoint::hf::read_weights(dir)?;
    checkpoint::build_llama(&config, weights, opts, device)
}
