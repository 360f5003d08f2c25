//! What storing a merged weight in a GGUF type keeps of the LoRA update: measured before merging,
//! reported, never silently lost. The measure is `lora_core::quant::requantize`'s for NF4, with
//! GGML's block types in place of NF4 (REFERENCE §3: "re-quantize only on request, and measure
//! what it costs"):
//!
//! ```text
//! Ŵ  = dequant(quant(W))          the base as the exported file would hold it without the adapter
//! W' = dequant(quant(W + ΔW))     the merged weight as the exported file holds it
//! survival       = ⟨W' − Ŵ, ΔW⟩ / ‖ΔW‖²       share of ΔW still there (1 all, 0 none)
//! relative_error = ‖W' − Ŵ − ΔW‖ / ‖ΔW‖       what the storage type got wrong, relative to ΔW
//! codes_changed  = #{i : W'ᵢ ≠ Ŵᵢ} / n        how many stored values the update moved
//! ```
//!
//! Blocks lie within rows, so the measure is the same before or after the q/k row permutation.

use lora_core::quant::RequantizeReport;
use lora_core::tensor_io::HostTensor;
use lora_core::{Adapter, LoraModel};

use super::merged::tensor_type;
use crate::checkpoint::names::hf_to_gguf;
use crate::error::ModelError;
use crate::gguf::{GgmlType, dequantize, quantize};
use crate::llama::Llama;

/// One adapted layer's measure.
#[derive(Clone, Debug, PartialEq)]
pub struct LayerSurvival {
    /// Module path, e.g. `model.layers.0.self_attn.q_proj`.
    pub path: String,
    /// The type the layer's weight is stored in (after any fallback).
    pub dtype: GgmlType,
    /// The measure.
    pub report: RequantizeReport,
}

/// [`RequantizeReport`] for storing `base + delta` as `dtype` (see the module docs). `base` and
/// `delta` are in the same row-major order with rows of `row` values; `None` if `ΔW` is all zero
/// (there is nothing to measure), the lengths differ, or `dtype` cannot encode these rows.
pub fn storage_survival(base: &[f32], delta: &[f32], dtype: GgmlType) -> Option<RequantizeReport> {
    if base.len() != delta.len() {
        return None;
    }
    let delta_sq: f64 = delta.iter().map(|&d| f64::from(d).powi(2)).sum();
    if delta_sq == 0.0 {
        return None;
    }
    let merged: Vec<f32> = base.iter().zip(delta).map(|(w, d)| w + d).collect();
    let w0 = dequantize(dtype, &quantize(dtype, base)?)?;
    let w1 = dequantize(dtype, &quantize(dtype, &merged)?)?;
    let (mut along, mut err_sq, mut changed) = (0.0f64, 0.0f64, 0usize);
    for ((&a, &b), &d) in w0.iter().zip(&w1).zip(delta) {
        let kept = f64::from(b) - f64::from(a);
        along += kept * f64::from(d);
        err_sq += (kept - f64::from(d)).powi(2);
        changed += usize::from(a != b);
    }
    Some(RequantizeReport {
        weights: base.len(),
        delta_norm: delta_sq.sqrt(),
        survival: along / delta_sq,
        relative_error: (err_sq / delta_sq).sqrt(),
        codes_changed: changed as f64 / base.len() as f64,
    })
}

/// Measures every layer of `model` that carries an unmerged adapter, as if merged and stored in
/// `target` (with the per-tensor type rules of [`tensor_type`]). Changes nothing.
///
/// # Errors
/// [`ModelError::Lora`] if device data cannot be read.
pub fn merge_survival(model: &Llama, target: GgmlType) -> Result<Vec<LayerSurvival>, ModelError> {
    let mut layers: Vec<(String, HostTensor, HostTensor)> = Vec::new();
    let mut failure = None;
    model.visit_linears(&mut |path, lin| {
        if lin.merged {
            return;
        }
        let Some(adapter) = &lin.adapter else {
            return;
        };
        // What merging adds to W: ΔW, or for DoRA the rescaled W + ΔW minus W (its magnitude
        // changes W itself, so ΔW alone would understate the update).
        let delta = match adapter {
            Adapter::Dora(_) => {
                let w = lin.weight.val();
                adapter.clone().merge_into(w.clone()) - w
            }
            other => other.delta_weight(),
        };
        // burn [d_in, d_out] → PyTorch [d_out, d_in]: the file's row order (rows along d_in).
        let host = |t: burn::tensor::Tensor<2>| HostTensor::from_tensor(t.transpose());
        match (host(lin.weight.val()), host(delta)) {
            (Ok(w), Ok(d)) => layers.push((path.to_string(), w, d)),
            (Err(e), _) | (_, Err(e)) => failure = Some(e),
        }
    });
    if let Some(e) = failure {
        return Err(e.into());
    }
    Ok(layers
        .into_iter()
        .filter_map(|(path, w, d)| {
            let name = hf_to_gguf(model.config.family, &format!("{path}.weight"))
                .map_or_else(|| path.clone(), |(n, _)| n);
            let dtype = tensor_type(&name, &w.shape, target);
            let report = storage_survival(&w.data, &d.data, dtype)?;
            Some(LayerSurvival {
                path,
                dtype,
                report,
            })
        })
        .collect())
}

/// Mean survival over `layers` (each layer counts once), or `None` if empty.
pub fn mean_survival(layers: &[LayerSurvival]) -> Option<f64> {
    let n = layers.len();
    (n > 0).then(|| layers.iter().map(|l| l.report.survival).sum::<f64>() / n as f64)
}
