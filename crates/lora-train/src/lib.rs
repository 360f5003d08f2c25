//! # lora-train — fine-tuning with LoRA
//!
//! The whole job is one call, [`run_training`]: `TrainConfig` in, a run directory and a
//! [`Summary`] out (see [`run`] for a three-line example).
//!
//! ## The files, in the order to read them
//! 1. [`run`] — [`run_training`]: load, split, attach, evaluate, train, save, evaluate again;
//!    [`run_dir`] — the run's directory, new or resumed;
//! 2. [`trainer`] — the training loop itself, one function ([`trainer::train`]), and the
//!    [`Observer`] it reports to;
//! 3. [`data`] — JSONL datasets in five shapes and the TREC task → tokenized
//!    [`data::Encoded`] examples → padded [`data::Batch`]es; [`task`] puts them together for a
//!    run (the train / held-out split rules, the dataset summary, the held-out questions);
//! 4. [`loss`] — the masked causal-LM cross-entropy, taken only at answer positions;
//! 5. [`eval`] — held-out loss, perplexity and accuracy; [`exact_match`] — the model's greedy
//!    answers (batched, KV cache) against the references, and [`samples`] — `samples.md`;
//! 6. [`schedule`] — warm-up + cosine learning rate from burn's schedulers;
//! 7. [`checkpoint`] — atomic, bit-exact resumable training checkpoints;
//! 8. [`config`] — [`TrainConfig`], built from layered TOML (defaults ← file ← flags);
//! 9. [`report`] and [`rank_report`] — `metrics.jsonl`, `loss.png`, AdaLoRA's `ranks.png`;
//! 10. [`bench`] — timed training steps and inference for `burn-lora bench`.

pub mod bench;
pub mod checkpoint;
pub mod config;
pub mod data;
pub mod error;
pub mod eval;
pub mod exact_match;
pub mod loss;
pub mod rank_report;
pub mod report;
pub mod run;
pub mod run_dir;
pub mod samples;
pub mod schedule;
pub mod task;
pub mod trainer;

pub use config::TrainConfig;
pub use error::TrainError;
pub use run::{RunDir, Summary, run_training};
pub use trainer::{Observer, Silent};
