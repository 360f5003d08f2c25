//! The one error type of `lora-core`.

use std::path::PathBuf;

/// Everything that can go wrong while configuring, attaching, merging, saving or loading LoRA
/// adapters. Each message names the module, key or file involved and, where possible, the fix.
#[derive(Debug, thiserror::Error)]
pub enum LoraError {
    /// An entry of `target_modules` matched no linear layer of the model (PEFT raises the same).
    #[error(
        "target module {target:?} matches no linear layer of the model; linear layers look like {example:?} (use the last path component, e.g. \"q_proj\", a full-match regex, or \"all-linear\")"
    )]
    TargetMatchesNothing {
        /// The `target_modules` entry (or regex) that matched nothing.
        target: String,
        /// One linear-layer path of the model, as a hint.
        example: String,
    },
    /// A `target_modules` / `rank_pattern` / `alpha_pattern` regex does not compile.
    #[error("invalid regex {pattern:?} in the LoRA config: {source}")]
    BadRegex {
        /// The pattern as written in the config.
        pattern: String,
        /// What the regex engine said.
        source: regex::Error,
    },
    /// A configuration value is outside its domain (e.g. `r = 0`, dropout ≥ 1).
    #[error("invalid LoRA config: {0}")]
    InvalidConfig(String),
    /// The asked-for backend was not compiled into this binary.
    #[error(
        "backend {name:?} is not compiled into this build; rebuild with `--features {feature}` (cargo xtask adds it for you when you pass `--backend {name}`)"
    )]
    BackendNotCompiled {
        /// The backend name the user asked for.
        name: String,
        /// The cargo feature that compiles it in.
        feature: String,
    },
    /// A backend name that does not exist at all.
    #[error("unknown backend {0:?}; choose one of flex, ndarray, wgpu")]
    UnknownBackend(String),
    /// `merge()` on a layer that is already merged, or `unmerge()` on one that is not.
    #[error("layer {path:?}: {what}")]
    MergeState {
        /// Module path of the layer.
        path: String,
        /// What was wrong (already merged / not merged / no adapter).
        what: String,
    },
    /// Reading or writing an adapter file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// `adapter_config.json` is not valid JSON or misses a required field.
    #[error("{path}: invalid adapter config: {message}")]
    AdapterConfig {
        /// The `adapter_config.json` path.
        path: PathBuf,
        /// What is wrong with it.
        message: String,
    },
    /// The adapter is of a kind this loader does not handle (e.g. `peft_type: "IA3"`).
    #[error("{path}: unsupported adapter: {message}")]
    UnsupportedAdapter {
        /// The adapter directory or file.
        path: PathBuf,
        /// What is unsupported.
        message: String,
    },
    /// A tensor in `adapter_model.safetensors` is missing, unexpected, or has the wrong shape.
    #[error("{path}: tensor {key:?}: {message}")]
    AdapterTensor {
        /// The safetensors file.
        path: PathBuf,
        /// The tensor key as stored in the file.
        key: String,
        /// What is wrong with it.
        message: String,
    },
    /// The safetensors container itself could not be read or written.
    #[error("{path}: safetensors: {message}")]
    Safetensors {
        /// The safetensors file.
        path: PathBuf,
        /// The library's message.
        message: String,
    },
    /// A tensor's data could not be read back from the device (e.g. an unexpected dtype).
    #[error("tensor data: {0}")]
    Tensor(String),
}

/// `Result` with [`LoraError`].
pub type Result<T, E = LoraError> = std::result::Result<T, E>;
