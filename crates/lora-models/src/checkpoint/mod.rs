//! Checkpoints in and out: GGUF files and Hugging Face directories become a [`Llama`] (with the
//! one name table in [`names`]), and a merged model becomes a Hugging Face directory again.
//!
//! Loading streams: [`lazy`] memory-maps the files and decodes a tensor only when [`build`]
//! takes it, [`convert`] turns it at once into what the model stores ([`Storage`]: f32, bf16,
//! f16, NF4), so the checkpoint never exists in f32 as a whole.

pub mod build;
pub mod convert;
pub mod gguf;
pub mod hf;
pub mod hf_config;
pub mod lazy;
pub mod names;

pub use build::{NamedWeights, build_llama, build_llama_as};
pub use convert::Storage;
