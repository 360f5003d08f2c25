//! The one error type of `lora-train`.

use std::path::PathBuf;

/// Errors of datasets, training and evaluation. Messages name the file, line or step.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// A setting a run cannot start with (`--steps 0`, an empty dataset, ...).
    #[error("invalid training config: {0}")]
    Config(String),
    /// The loss became NaN or infinite; the last good checkpoint is kept.
    #[error(
        "the loss became {loss} at step {step}; stopping (the last good checkpoint is kept). Try a lower --lr"
    )]
    NonFinite {
        /// The step (1-based) whose loss was not finite.
        step: usize,
        /// The loss value.
        loss: f64,
    },
    /// Reading or writing a file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// A checkpoint is missing or unreadable.
    #[error("checkpoint: {0}")]
    Checkpoint(String),
    /// Dataset problems (malformed lines, empty files, ...).
    #[error(transparent)]
    Data(#[from] crate::data::DataError),
    /// LoRA / adapter errors.
    #[error(transparent)]
    Lora(#[from] lora_core::LoraError),
    /// Model / tokenizer errors.
    #[error(transparent)]
    Model(#[from] lora_models::ModelError),
    /// Drawing the loss curve failed.
    #[error("plot: {0}")]
    Plot(String),
    /// A benchmark row could not be set up or run (a child process, the Python side).
    #[error("bench: {0}")]
    Bench(String),
    /// A result could not be read back from the device (a backend failure, not bad input).
    #[error("reading a result back from the device failed: {0}")]
    ReadBack(String),
}
