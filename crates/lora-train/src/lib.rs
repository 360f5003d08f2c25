//! # lora-train — fine-tuning with LoRA
//!
//! - [`data`]: JSONL datasets, the TREC task, tokenization with loss masks, batching;
//! - [`loss`]: the masked causal-LM cross-entropy, taken only at answer positions;
//! - [`trainer`]: the training loop (one function) and its [`trainer::Observer`];
//! - [`schedule`]: warm-up + cosine learning rate from burn's schedulers;
//! - [`checkpoint`]: atomic, bit-exact resumable checkpoints;
//! - [`eval`]: held-out loss, perplexity and accuracy;
//! - [`report`]: `metrics.jsonl`, `summary.json` and the `loss.png` picture;
//! - [`bench`]: timed training steps and inference for `burn-lora bench`;
//! - [`rank_report`]: an AdaLoRA run's final ranks as a table and the `ranks.png` heat map;
//! - [`config`]: [`config::TrainConfig`], TOML in and out.

pub mod bench;
pub mod checkpoint;
pub mod config;
pub mod data;
pub mod error;
pub mod eval;
pub mod loss;
pub mod rank_report;
pub mod report;
pub mod schedule;
pub mod trainer;

pub use config::TrainConfig;
pub use error::TrainError;
