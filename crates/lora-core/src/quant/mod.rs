//! QLoRA's 4-bit NormalFloat (NF4) base weights with double quantization.
//!
//! QLoRA (Dettmers et al. 2023, arXiv:2305.14314) keeps the frozen base in NF4 — 16 values at
//! the quantiles of a normal distribution, one f32 scale (`absmax`) per block of 64 weights — and
//! trains ordinary LoRA adapters in full precision on top. Double quantization stores the scales
//! themselves in 8 bits, bringing the cost to ≈ 4.127 bits per weight.
//!
//! - [`nf4`]: the code book and blockwise quantization on the host, bit for bit as bitsandbytes.
//! - [`dynamic_map`]: the 8-bit dynamic code used for the scales.
//! - [`nf4_weight`]: [`Nf4Weight`], the packed weight kept on the device and dequantized in
//!   `forward` (any backend);
//! - [`nf4_op`]: the dequantize and the base product as backend operations, with an autodiff
//!   backward that dequantizes again instead of keeping an f32 `W` (bitsandbytes' `MatMul4Bit`).
//! - [`apply`]: [`quantize_base`], a whole model's linear layers at once, and
//!   [`requantize_summary`], what re-quantizing after a merge would keep, layer by layer.
//! - [`requantize`]: what re-quantizing a merged weight would keep of the adapter (measured on
//!   request; merging never re-quantizes).

pub mod apply;
pub mod dynamic_map;
pub mod nf4;
pub mod nf4_op;
pub mod nf4_weight;
pub mod requantize;

pub use apply::{QuantReport, RequantizeSummary, quantize_base, requantize_summary};
pub use nf4::{NF4_CODE, Nf4Config, Nf4Tensor, quantize_nf4};
pub use nf4_weight::Nf4Weight;
pub use requantize::{RequantizeReport, requantize_report, requantize_report_weight};
