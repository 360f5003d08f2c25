//! The one error type of `lora-models`.

use std::path::PathBuf;

/// Errors while reading checkpoints, building the model, tokenizing or generating. Messages name
/// the file and the tensor or key involved.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// `config.json` (or GGUF metadata) lacks a field or holds a bad value.
    #[error("{path}: {message}")]
    Config {
        /// The config file (or GGUF file).
        path: PathBuf,
        /// What is missing or wrong, naming the key.
        message: String,
    },
    /// A weight the model needs is missing, has the wrong shape, or is left over unused.
    #[error("{path}: tensor {name:?}: {message}")]
    Tensor {
        /// The checkpoint file.
        path: PathBuf,
        /// The tensor name as stored in the file.
        name: String,
        /// What is wrong.
        message: String,
    },
    /// A GGUF file could not be parsed or dequantized.
    #[error(transparent)]
    Gguf(#[from] crate::gguf::GgufError),
    /// Tokenizer or chat-template failure.
    #[error(transparent)]
    Tokenizer(#[from] crate::tokenizer::TokenizerError),
    /// LoRA / safetensors helpers from lora-core.
    #[error(transparent)]
    Lora(#[from] lora_core::LoraError),
    /// A model or adapter cannot be exported as asked (unmerged adapters in a merged export, an
    /// architecture the exporter does not know, a tokenizer llama.cpp could not read back).
    #[error("export to {path}: {message}")]
    Export {
        /// The output file.
        path: PathBuf,
        /// What is wrong and how to fix it.
        message: String,
    },
    /// The default model could not be fetched into the cache.
    #[error("could not get the default model: {0}")]
    Fetch(String),
    /// Generation was asked for more positions than the model supports, or bad sampling values.
    #[error("generation: {0}")]
    Generate(String),
}
