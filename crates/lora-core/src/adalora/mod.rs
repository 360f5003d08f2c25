//! # AdaLoRA — a rank budget that moves to the layers that matter
//!
//! Zhang et al. 2023, "AdaLoRA: Adaptive Budget Allocation for Parameter-Efficient Fine-Tuning"
//! (arXiv:2303.10512), as Hugging Face PEFT implements it (`src/peft/tuners/adalora/`). Each
//! adapted layer learns its update in SVD form, `ΔW = P·diag(λ)·Q` with `init_r` singular
//! triplets; during training a [`RankAllocator`] scores every triplet by the smoothed importance
//! of its entries and prunes the least important ones (`λ_i ← 0`) until the whole model holds
//! `target_r` triplets per adapted matrix on average — so layers that matter keep more rank.
//!
//! - [`config`]: [`AdaLoraConfig`] (PEFT's field names and defaults) and [`RankPattern`];
//! - [`layer`]: [`AdaLoraAdapter`] (forward, merge delta), [`apply_adalora`],
//!   [`orth_regularizer`];
//! - [`allocator`]: [`RankAllocator`], [`BudgetSchedule`], [`mask_to_budget`];
//! - [`peft_io`]: PEFT `"ADALORA"` adapter files (only kept ranks saved; original scale kept).
//!
//! A layer holds its adapter in [`LoraLinear::adalora`](crate::linear::LoraLinear), next to the
//! LoRA slot; merging, unmerging and `merge_and_unload` work on it as on a LoRA adapter.

pub mod allocator;
pub mod config;
pub mod layer;
pub mod peft_io;

pub use allocator::{Allocation, BudgetSchedule, RankAllocator, TripletGradients, mask_to_budget};
pub use config::{AdaLoraConfig, RankPattern};
pub use layer::{AdaLoraAdapter, apply_adalora, orth_regularizer};
