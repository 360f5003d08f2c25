//! The 8-bit signed "dynamic" code and blockwise 8-bit quantization, used by double
//! quantization to store NF4's per-block `absmax` values in 8 bits.
//!
//! The code (Dettmers 2015, "8-Bit Approximations for Parallelism in Deep Learning") spends its
//! 256 values densely near zero: for exponent `e = 0..7` it holds `±10^(e−6)` times the midpoints
//! of `2^e` equal steps of [0.1, 1], plus 0 and 1, sorted ascending. bitsandbytes' CPU quantizer
//! searches a copy whose first value (−0.993) is replaced by −1.0, so every normalised input has a
//! code at or below it; dequantization uses the table as generated (checked against the table
//! bitsandbytes 0.50 stores in its quantization state).
//!
//! Source: bitsandbytes `functional.py` (`create_dynamic_map(signed=True, max_exponent_bits=7,
//! total_bits=8)`, `quantize_blockwise`) and `csrc/common.cpp` (`quantize_block`: divide by the
//! block's absmax, take the code at or below, step right when that one is strictly nearer).

/// `torch.linspace(start, end, steps)` in f32 as ATen's vectorized CPU kernel computes it: an f32
/// step; the first half counts up from `start`, the second half down from `end`, each value with
/// one rounding (a fused multiply-add) — checked against torch for 9, 17, 33 and 65 steps.
fn linspace_f32(start: f32, end: f32, steps: usize) -> Vec<f32> {
    let step = (end - start) / (steps - 1) as f32;
    let halfway = steps / 2;
    (0..steps)
        .map(|i| {
            if i < halfway {
                step.mul_add(i as f32, start)
            } else {
                (-step).mul_add((steps - i - 1) as f32, end)
            }
        })
        .collect()
}

/// The 256-entry signed dynamic code, ascending (`code[0]` ≈ −0.993, `code[255]` = 1).
pub fn dynamic_map() -> [f32; 256] {
    // 10^(e−6): a Python float times an f32 tensor, which torch computes in f32.
    const POW10: [f32; 7] = [1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0];
    let mut code: Vec<f32> = Vec::with_capacity(256);
    for (e, &scale) in POW10.iter().enumerate() {
        let bounds = linspace_f32(0.1, 1.0, (1 << e) + 1);
        let means: Vec<f32> = bounds.windows(2).map(|w| (w[0] + w[1]) / 2.0).collect();
        code.extend(means.iter().map(|&m| scale * m));
        code.extend(means.iter().map(|&m| -scale * m));
    }
    code.push(0.0);
    code.push(1.0);
    code.sort_by(f32::total_cmp);
    let mut out = [0.0f32; 256];
    out.copy_from_slice(&code);
    out
}

/// Values quantized blockwise to 8-bit dynamic codes (bitsandbytes `quantize_blockwise`).
#[derive(Clone, Debug, PartialEq)]
pub struct QuantizedBlockwise8 {
    /// One code index per value.
    pub codes: Vec<u8>,
    /// `max |x|` per block, f32.
    pub absmax: Vec<f32>,
    /// Values per block.
    pub block_size: usize,
}

/// Quantizes `values` in blocks of `block_size`: `idx = nearest code to x / absmax_block`.
pub fn quantize_blockwise_8bit(values: &[f32], block_size: usize) -> QuantizedBlockwise8 {
    // The search table: −1.0 first (bitsandbytes `quantize_cpu`), so x = −1 finds a code.
    let mut code = dynamic_map();
    code[0] = -1.0;
    let zero = code.iter().position(|&c| c == 0.0).unwrap_or(0);
    let mut codes = Vec::with_capacity(values.len());
    let mut absmax = Vec::with_capacity(values.len().div_ceil(block_size));
    for block in values.chunks(block_size) {
        let amax = block.iter().fold(f32::MIN, |m, v| m.max(v.abs()));
        absmax.push(amax);
        for &v in block {
            let x = v / amax;
            if x.is_nan() {
                codes.push(zero as u8); // an all-zero block: 0/0; its values are all zero
                continue;
            }
            // The code at or below x (binary search), then the right neighbour if strictly nearer.
            let mut idx = code.partition_point(|&c| c <= x).saturating_sub(1);
            if idx < 255 && (x - code[idx + 1]).abs() < (x - code[idx]).abs() {
                idx += 1;
            }
            codes.push(idx as u8);
        }
    }
    QuantizedBlockwise8 {
        codes,
        absmax,
        block_size,
    }
}

impl QuantizedBlockwise8 {
    /// `code[idx] · absmax[block]` in f32 (bitsandbytes `dequantize_blockwise`).
    pub fn dequantize(&self) -> Vec<f32> {
        let code = dynamic_map();
        self.codes
            .iter()
            .enumerate()
            .map(|(i, &q)| code[q as usize] * self.absmax[i / self.block_size])
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dynamic_map_is_sorted_signed_and_dense_near_zero() {
        let c = dynamic_map();
        assert!(c.windows(2).all(|w| w[0] <= w[1]));
        assert!((c[0] + 0.99297).abs() < 1e-5, "{}", c[0]);
        assert_eq!(c[255], 1.0);
        assert!(c.contains(&0.0));
        // The smallest non-zero magnitude is 10⁻⁶ · 0.55 (one step of [0.1, 1]).
        let smallest = c
            .iter()
            .filter(|v| **v > 0.0)
            .fold(f32::MAX, |m, v| m.min(*v));
        assert!((smallest - 0.55e-6).abs() < 1e-12, "{smallest}");
    }

    #[test]
    fn blockwise_8bit_round_trip_is_within_half_a_code_step() {
        let x: Vec<f32> = (0..600)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) / 7.0)
            .collect();
        let q = quantize_blockwise_8bit(&x, 256);
        assert_eq!(q.absmax.len(), 3);
        let d = q.dequantize();
        let mut code = dynamic_map();
        code[0] = -1.0;
        for (i, (&a, &b)) in x.iter().zip(&d).enumerate() {
            let amax = q.absmax[i / 256];
            // No other code is nearer to x / absmax than the chosen one.
            let chosen = (a / amax - code[q.codes[i] as usize]).abs();
            assert!(code.iter().all(|c| (a / amax - c).abs() >= chosen - 1e-7));
            assert!((a - b).abs() <= amax * 0.02, "{a} vs {b}");
        }
    }
}
