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
//! - [`adapter`]: [`AdaLoraAdapter`] (forward, merge delta) — one layer's update;
//! - [`model`]: [`apply_adalora`] and [`orth_regularizer`] over a whole model;
//! - [`allocator`]: [`RankAllocator`], [`BudgetSchedule`], [`mask_to_budget`], [`final_ranks`].
//!
//! A layer holds its adapter as [`Adapter::AdaLora`](crate::Adapter::AdaLora) in the one
//! adapter slot of [`LoraLinear`](crate::LoraLinear); merging, unmerging and
//! `merge_and_unload` work on it as on a LoRA adapter. PEFT `"ADALORA"` files (only kept ranks
//! saved; original scale kept) are read and written by [`crate::peft::adalora`].

pub mod adapter;
pub mod allocator;
pub mod config;
pub mod model;

pub use adapter::AdaLoraAdapter;
pub use allocator::{
    Allocation, BudgetSchedule, RankAllocator, TripletGradients, final_ranks, mask_to_budget,
};
pub use config::{AdaLoraConfig, RankPattern};
pub use model::{apply_adalora, orth_regularizer};
