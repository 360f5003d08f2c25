//! # lora-core — the LoRA layer for burn
//!
//! Low-Rank Adaptation (Hu et al. 2021, arXiv:2106.09685) freezes a pretrained weight `W` and
//! learns a low-rank update `ΔW = B·A` with rank `r ≪ min(d_in, d_out)`:
//!
//! ```text
//! y = x·W + (lora_alpha / r) · B(A(dropout(x)))
//! ```
//!
//! This crate holds that layer ([`LoraLinear`]), the configuration that decides which layers of
//! a model get it ([`LoraConfig`]), merging for free inference, and adapter files in Hugging Face
//! PEFT's format so adapters move between PEFT and burn in both directions ([`peft`]).
//!
//! Layout convention, written down once: burn stores a linear weight as `[d_in, d_out]` (the
//! transpose of PyTorch's `[out, in]`). Inside this crate `lora_A` is `[d_in, r]` and `lora_B`
//! is `[r, d_out]`; PEFT files hold `lora_A.weight` `[r, in]` and `lora_B.weight` `[out, r]`, and
//! [`peft`] transposes at the file boundary and nowhere else.
//!
//! Every backend burn compiles in (flex, ndarray, wgpu) runs the same code: the [`backend`]
//! module maps a cargo feature and a `--backend` name to a burn `Device`.

pub mod adalora;
pub mod backend;
pub mod base_weight;
pub mod config;
pub mod error;
pub mod inject;
pub mod linear;
pub mod peft;
pub mod quant;
pub mod targets;
pub mod tensor_io;

pub use backend::{BackendKind, select_device};
pub use base_weight::BaseWeight;
pub use config::{InitLoraWeights, LoraConfig, TargetModules};
pub use error::LoraError;
pub use inject::{
    AdaptReport, LinearVisitor, LoraModel, apply_lora, merge_all, merge_and_unload, unmerge_all,
};
pub use linear::{LoraAdapter, LoraLinear};
pub use quant::{Nf4Config, Nf4Weight};
