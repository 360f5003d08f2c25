//! # lora-train — fine-tuning with LoRA
//!
//! - [`loss`]: the masked causal-LM cross-entropy.

pub mod loss;
