//! Checkpoints in and out: GGUF files and Hugging Face directories become a [`Llama`] (with the
//! one name table in [`names`]), and a merged model becomes a Hugging Face directory again.

pub mod build;
pub mod gguf;
pub mod hf;
pub mod hf_config;
pub mod names;

pub use build::{NamedWeights, build_llama};
