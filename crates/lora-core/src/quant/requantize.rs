//! What re-quantizing a merged weight does to the adapter: measured, never done silently.
//!
//! Merging a LoRA update into an NF4 base gives `dequant(W) + ΔW` in f32 (what
//! [`LoraLinear::merge`] stores). Quantizing that back to 4 bits rounds every weight to one of 16
//! levels of its block: an update much smaller than half a code step (≈ 0.04 · absmax near zero)
//! vanishes, one of whole code steps survives. REFERENCE §3: "merging a LoRA delta into a 4-bit
//! base and re-quantizing can round the delta away entirely … re-quantize only on request, and
//! measure what it costs". This module measures it:
//!
//! ```text
//! Ŵ  = dequant(W)                               the base as the model sees it
//! W' = dequant(quantize(Ŵ + ΔW))                the merged weight after re-quantizing
//! survival       = ⟨W' − Ŵ, ΔW⟩ / ‖ΔW‖²          the share of ΔW still there (1 all, 0 none)
//! relative_error = ‖W' − Ŵ − ΔW‖ / ‖ΔW‖          what re-quantizing got wrong, relative to ΔW
//! codes_changed  = #{i : code'ᵢ ≠ codeᵢ} / n     how many 4-bit codes the update moved
//! ```
//!
//! Norms are Frobenius, accumulated in f64. Merging into the dequantized f32 weight instead keeps
//! ΔW up to f32 rounding (survival 1, relative error ~1e-7).
//!
//! With double quantization the block scales are re-quantized too: the new scales' mean differs
//! from the old one, so even a tiny ΔW can move some scales by an 8-bit code step. That noise is
//! part of what re-quantizing costs and shows in `relative_error` (not in `survival`: it is not
//! along ΔW).

use burn::tensor::Tensor;

use crate::error::LoraError;
use crate::quant::nf4::{Nf4Config, Nf4Tensor, quantize_nf4};
use crate::quant::nf4_weight::Nf4Weight;

/// What re-quantizing `dequant(W) + ΔW` to NF4 keeps of the update `ΔW` (see the module docs).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RequantizeReport {
    /// Number of weights `n`.
    pub weights: usize,
    /// `‖ΔW‖_F`.
    pub delta_norm: f64,
    /// `⟨W' − Ŵ, ΔW⟩ / ‖ΔW‖²`: 1 when the update survives whole, 0 when it is rounded away.
    pub survival: f64,
    /// `‖W' − Ŵ − ΔW‖ / ‖ΔW‖`: 0 when re-quantizing keeps `Ŵ + ΔW` exactly.
    pub relative_error: f64,
    /// Fraction of the `n` weights whose 4-bit code differs between `W` and the re-quantized
    /// weight, in [0, 1].
    pub codes_changed: f64,
}

/// Measures re-quantizing `dequant(base) + delta` with `config` (host computation).
///
/// `delta` holds `ΔW` in the element order of `base`: row-major PyTorch layout `[d_out, d_in]`
/// for a linear weight (as [`quantize_nf4`] and [`Nf4Weight::to_host`] lay it out).
///
/// # Errors
/// [`LoraError::InvalidConfig`] if `delta` and `base` differ in length, if `ΔW` is all zero
/// (nothing to measure: survival is 0 / 0), or for a bad block size in `config`.
pub fn requantize_report(
    base: &Nf4Tensor,
    delta: &[f32],
    config: &Nf4Config,
) -> Result<RequantizeReport, LoraError> {
    if delta.len() != base.len {
        return Err(LoraError::InvalidConfig(format!(
            "ΔW has {} values, the NF4 base {}",
            delta.len(),
            base.len
        )));
    }
    let delta_sq: f64 = delta.iter().map(|&d| f64::from(d).powi(2)).sum();
    if delta_sq == 0.0 {
        return Err(LoraError::InvalidConfig(
            "ΔW is all zero (an untrained adapter?): there is no update whose survival to measure"
                .into(),
        ));
    }
    let w = base.dequantize();
    // The merged weight exactly as `LoraLinear::merge` forms it: f32 addition.
    let merged: Vec<f32> = w.iter().zip(delta).map(|(a, d)| a + d).collect();
    let requant = quantize_nf4(&merged, config)?;
    let w2 = requant.dequantize();
    let (mut along, mut err_sq) = (0.0f64, 0.0f64);
    for ((&a, &b), &d) in w.iter().zip(&w2).zip(delta) {
        let kept = f64::from(b) - f64::from(a); // W' − Ŵ
        along += kept * f64::from(d);
        err_sq += (kept - f64::from(d)).powi(2);
    }
    let changed = (0..base.len)
        .filter(|&i| base.index(i) != requant.index(i))
        .count();
    Ok(RequantizeReport {
        weights: base.len,
        delta_norm: delta_sq.sqrt(),
        survival: along / delta_sq,
        relative_error: (err_sq / delta_sq).sqrt(),
        codes_changed: changed as f64 / base.len as f64,
    })
}

/// [`requantize_report`] for a weight on the device and a burn-layout update `delta`
/// `[d_in, d_out]` (e.g. [`LoraAdapter::delta_weight`](crate::LoraAdapter::delta_weight)).
///
/// # Errors
/// [`LoraError::InvalidConfig`] if `delta` is not `[d_in, d_out]` of `weight` or is all zero;
/// [`LoraError::Tensor`] if device data cannot be read.
pub fn requantize_report_weight(
    weight: &Nf4Weight,
    delta: Tensor<2>,
    config: &Nf4Config,
) -> Result<RequantizeReport, LoraError> {
    let [d_out, d_in] = weight.shape_out_in;
    let dims = delta.dims();
    if dims != [d_in, d_out] {
        return Err(LoraError::InvalidConfig(format!(
            "ΔW is {dims:?}, the NF4 weight is [{d_in}, {d_out}] (burn layout [d_in, d_out])"
        )));
    }
    let delta = delta
        .transpose() // to the PyTorch [d_out, d_in] order the NF4 data is in
        .into_data()
        .convert::<f32>()
        .try_into_vec::<f32>()
        .map_err(|e| LoraError::Tensor(format!("reading ΔW: {e:?}")))?;
    requantize_report(&weight.to_host()?, &delta, config)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::NF4_CODE;

    const PLAIN: Nf4Config = Nf4Config {
        block_size: 64,
        double_quant: false,
    };

    /// Two blocks of 64 whose values are exactly NF4 codes (absmax 1): element `i` holds code
    /// `i % 16`, so each block contains −1 and 1 and its absmax is 1.
    fn on_the_codes() -> Vec<f32> {
        (0..128).map(|i| NF4_CODE[i % 16]).collect()
    }

    /// Whether element `i` of [`on_the_codes`] is a block's ±1 (left alone, so absmax stays 1).
    fn extreme(i: usize) -> bool {
        matches!(i % 16, 0 | 15)
    }

    #[test]
    fn an_update_far_below_half_a_code_step_is_rounded_away() {
        let base = quantize_nf4(&on_the_codes(), &PLAIN).unwrap();
        // Half the smallest code gap is ≈ 0.04; 1e-3 is 40× smaller.
        let delta: Vec<f32> = (0..128)
            .map(|i| if extreme(i) { 0.0 } else { 1e-3 })
            .collect();
        let r = requantize_report(&base, &delta, &PLAIN).unwrap();
        assert_eq!(r.weights, 128);
        assert_eq!(r.survival, 0.0, "{r:?}");
        assert!((r.relative_error - 1.0).abs() < 1e-12, "{r:?}");
        assert_eq!(r.codes_changed, 0.0);
        let expected_norm = 112f64.sqrt() * f64::from(1e-3f32);
        assert!((r.delta_norm - expected_norm).abs() < 1e-9, "{r:?}");
    }

    #[test]
    fn an_update_of_whole_code_steps_survives() {
        let values = on_the_codes();
        let base = quantize_nf4(&values, &PLAIN).unwrap();
        // Every inner weight moves exactly one code up: codes 1..=14 → 2..=15.
        let delta: Vec<f32> = (0..128)
            .map(|i| {
                if extreme(i) {
                    0.0
                } else {
                    NF4_CODE[i % 16 + 1] - NF4_CODE[i % 16]
                }
            })
            .collect();
        let r = requantize_report(&base, &delta, &PLAIN).unwrap();
        assert!((r.survival - 1.0).abs() < 1e-6, "{r:?}");
        assert!(r.relative_error < 1e-6, "{r:?}");
        assert_eq!(r.codes_changed, 112.0 / 128.0);
    }

    #[test]
    fn half_a_step_more_or_less_rounds_to_the_nearer_code() {
        let base = quantize_nf4(&on_the_codes(), &PLAIN).unwrap();
        // 0.3 of the gap up rounds back (nothing kept), 0.7 of it rounds to the next code
        // (1/0.7 of the update kept): mixed half and half, survival is between.
        let delta: Vec<f32> = (0..128)
            .map(|i| {
                if extreme(i) {
                    return 0.0;
                }
                let gap = NF4_CODE[i % 16 + 1] - NF4_CODE[i % 16];
                if i < 64 { 0.3 * gap } else { 0.7 * gap }
            })
            .collect();
        let r = requantize_report(&base, &delta, &PLAIN).unwrap();
        assert_eq!(r.codes_changed, 56.0 / 128.0);
        // Σ over the 0.7 half of gap²·0.7 against Σ over both of gap²·(0.09 + 0.49):
        // the same gaps in each block, so survival = 0.7 / 0.58.
        assert!((r.survival - 0.7 / 0.58).abs() < 1e-5, "{r:?}");
        // Error: 0.3 of each gap on both halves → √(0.09 / 0.29).
        assert!(
            (r.relative_error - (0.09f64 / 0.29).sqrt()).abs() < 1e-5,
            "{r:?}"
        );
    }

    #[test]
    fn bad_inputs_are_errors() {
        let base = quantize_nf4(&on_the_codes(), &PLAIN).unwrap();
        let e = requantize_report(&base, &[0.0; 128], &PLAIN).unwrap_err();
        assert!(e.to_string().contains("all zero"), "{e}");
        let e = requantize_report(&base, &[1e-3; 100], &PLAIN).unwrap_err();
        assert!(e.to_string().contains("100 values"), "{e}");
        let bad = Nf4Config {
            block_size: 48,
            double_quant: false,
        };
        assert!(requantize_report(&base, &[1e-3; 128], &bad).is_err());
    }

    #[test]
    fn device_weight_reads_back_to_the_host_tensor_it_was_made_from() {
        use crate::{BackendKind, select_device};
        let d = select_device(BackendKind::Flex).unwrap();
        // 1001 weights: an odd count and a partial last block; 16 blocks of 64 → padding.
        let values: Vec<f32> = (0..1001)
            .map(|i| ((i * 37 % 211) as f32 - 105.0) / 50.0)
            .collect();
        for double_quant in [false, true] {
            let cfg = Nf4Config {
                block_size: 64,
                double_quant,
            };
            let q = quantize_nf4(&values, &cfg).unwrap();
            let w = Nf4Weight::from_host(&q, [7, 143], &d);
            assert_eq!(w.to_host().unwrap(), q, "double_quant = {double_quant}");
        }
    }
}
