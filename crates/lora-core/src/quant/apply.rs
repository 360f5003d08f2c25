//! Quantizing a whole model's base weights to NF4 (what `load_in_4bit=True` does in
//! transformers with bitsandbytes), and measuring what re-quantizing after a merge would keep.

use crate::error::LoraError;
use crate::inject::LoraModel;
use crate::quant::{Nf4Config, RequantizeReport};

/// What [`quantize_base`] did: how many weights went to NF4 and what they cost on the device.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct QuantReport {
    /// Module paths of the quantized layers.
    pub modules: Vec<String>,
    /// Weights stored in NF4.
    pub weights: usize,
    /// Bytes those weights occupy on the device (codes + statistics).
    pub storage_bytes: usize,
    /// Bytes the same weights took before (at their dtype then, usually f32).
    pub dense_bytes: usize,
}

impl QuantReport {
    /// What is stored in NF4 in `model` now (e.g. after loading straight into NF4); the f32
    /// size is 4 bytes per weight.
    pub fn of<M: LoraModel>(model: &M) -> Self {
        let mut report = QuantReport::default();
        model.visit_linears(&mut |path, lin| {
            if lin.weight.is_quantized() {
                let n = lin.weight.shape().num_elements();
                report.modules.push(path.to_string());
                report.weights += n;
                report.storage_bytes += lin.weight.storage_bytes();
                report.dense_bytes += 4 * n;
            }
        });
        report
    }

    /// Device storage of the quantized weights in bits per weight (≈ 4.127 with double
    /// quantization and block size 64, 4.5 without).
    pub fn bits_per_weight(&self) -> f64 {
        if self.weights == 0 {
            return 0.0;
        }
        8.0 * self.storage_bytes as f64 / self.weights as f64
    }
}

/// Quantizes the base weight of every linear layer of `model` to NF4, except the layers whose
/// module path is in `skip` (transformers keeps `lm_head` in full precision by default:
/// `BitsAndBytesConfig.llm_int8_skip_modules`). Adapters stay in full precision.
///
/// # Errors
/// [`LoraError::InvalidConfig`] for a bad block size or a `skip` entry that names no layer;
/// [`LoraError::MergeState`] if a layer has a merged adapter.
pub fn quantize_base<M: LoraModel>(
    model: &mut M,
    config: &Nf4Config,
    skip: &[&str],
) -> Result<QuantReport, LoraError> {
    config.validate()?;
    let paths = model.linear_paths();
    if let Some(missing) = skip.iter().find(|s| !paths.iter().any(|p| p == *s)) {
        return Err(LoraError::InvalidConfig(format!(
            "NF4 skip list names {missing:?}, which is not a linear layer of this model"
        )));
    }
    let mut report = QuantReport::default();
    model.visit_linears_mut(&mut |path, lin| {
        if skip.contains(&path) {
            return Ok(());
        }
        report.dense_bytes += lin.weight.storage_bytes();
        lin.quantize_nf4(config, path)?;
        report.modules.push(path.to_string());
        report.weights += lin.weight.shape().num_elements();
        report.storage_bytes += lin.weight.storage_bytes();
        Ok(())
    })?;
    Ok(report)
}

/// What re-quantizing each adapted NF4 layer after merging would keep of its update
/// ([`requantize_summary`]).
#[derive(Debug)]
pub struct RequantizeSummary {
    /// Module path and report of every measured layer, in model order.
    pub layers: Vec<(String, RequantizeReport)>,
    /// Module path and reason of every adapted NF4 layer that could not be measured (e.g. an
    /// all-zero ΔW from an untrained adapter).
    pub skipped: Vec<(String, String)>,
}

impl RequantizeSummary {
    /// Mean of the layers' `survival` (each layer counts once), or `None` if none was measured.
    pub fn mean_survival(&self) -> Option<f64> {
        let n = self.layers.len();
        (n > 0).then(|| self.layers.iter().map(|(_, r)| r.survival).sum::<f64>() / n as f64)
    }

    /// Mean of the layers' `relative_error`, or `None` if none was measured.
    pub fn mean_relative_error(&self) -> Option<f64> {
        let n = self.layers.len();
        (n > 0).then(|| {
            self.layers
                .iter()
                .map(|(_, r)| r.relative_error)
                .sum::<f64>()
                / n as f64
        })
    }
}

/// Measures every layer with an NF4 base and an unmerged adapter
/// ([`LoraLinear::requantize_report`](crate::LoraLinear::requantize_report)); changes nothing.
pub fn requantize_summary<M: LoraModel>(model: &M, nf4: &Nf4Config) -> RequantizeSummary {
    let mut summary = RequantizeSummary {
        layers: Vec::new(),
        skipped: Vec::new(),
    };
    model.visit_linears(&mut |path, lin| {
        if lin.adapter.is_none() || !lin.weight.is_quantized() {
            return;
        }
        match lin.requantize_report(nf4, path) {
            Ok(r) => summary.layers.push((path.to_string(), r)),
            Err(e) => summary.skipped.push((path.to_string(), e.to_string())),
        }
    });
    summary
}
