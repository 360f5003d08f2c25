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
//!
//! ## The files, in the order to read them
//! 1. [`linear`] — [`LoraLinear`]: `y = x·W + b + adapter(x)`, merge and unmerge;
//! 2. [`lora`] — [`LoraAdapter`]: LoRA's `scaling · (dropout(x)·A)·B` and its initialisation;
//! 3. [`adapter`] — [`Adapter`]: the kinds of update a layer can carry, dispatched in one place;
//!    [`dora`] — [`DoraAdapter`]: DoRA's magnitude and direction on top of LoRA's factors;
//! 4. [`config`] and [`targets`] — [`LoraConfig`] (PEFT's names and defaults) and which module
//!    paths it selects;
//! 5. [`inject`] — [`LoraModel`] (a model's linear layers by path), [`apply_lora`],
//!    [`merge_and_unload`];
//! 6. [`peft`] — adapter files both ways ([`peft::load_adapter`], [`peft::save_adapter`]);
//!    [`adapter_set`] — [`AdapterSet`]: several named adapters, one active, and [`combine`]:
//!    PEFT's `add_weighted_adapter` (`linear`, `cat`, `svd`);
//! 7. [`base_weight`], [`base_dtype`] and [`quant`] — the frozen `W`: dense (f32, bf16 or f16)
//!    or NF4 (QLoRA);
//! 8. [`adalora`] — AdaLoRA: the SVD-form adapter and its rank allocator;
//! 9. [`recompute`] — block-level gradient checkpointing (a layer runs again in backward);
//!    [`fused`] — softmax, SwiGLU, RMSNorm, RoPE, attention, the cross-entropy and the frozen
//!    base product as one autodiff op each (multi-threaded and vectorised on the CPU);
//! 10. [`tensor_io`], [`backend`], [`error`] — safetensors on the host, devices, the error type.

pub mod adalora;
pub mod adapter;
pub mod adapter_set;
pub mod backend;
pub mod base_dtype;
pub mod base_weight;
pub mod combine;
pub mod config;
pub mod dora;
pub mod error;
pub mod fused;
pub mod inject;
pub mod linear;
pub mod lora;
pub mod peft;
pub mod quant;
pub mod recompute;
pub mod targets;
pub mod tensor_io;

pub use adapter::Adapter;
pub use adapter_set::AdapterSet;
pub use backend::{BackendKind, select_device};
pub use base_dtype::{BaseDtype, cast_base};
pub use base_weight::BaseWeight;
pub use combine::{Combination, WeightedCombination};
pub use config::{InitLoraWeights, LoraConfig, TargetModules};
pub use dora::DoraAdapter;
pub use error::LoraError;
pub use inject::{
    AdaptReport, AdaptedModule, LinearVisitor, LoraModel, Slot, apply_lora, attach_adapters,
    merge_all, merge_and_unload, unmerge_all,
};
pub use linear::LoraLinear;
pub use lora::LoraAdapter;
pub use peft::AdapterConfig;
pub use quant::{Nf4Config, Nf4Weight};
