//! NF4 blockwise quantization on the host, bit for bit as bitsandbytes does it.
//!
//! ```text
//! absmax_b = max |w| over block b                       (blocks of `block_size` consecutive weights)
//! idx      = nearest NF4 code to w · (1 / absmax_b)     (ties → the lower code)
//! ŵ        = NF4[idx] · absmax_b
//! ```
//!
//! Two indices share a byte, the first element in the HIGH nibble. A last block shorter than
//! `block_size` gets its own `absmax`, as in bitsandbytes.
//!
//! Source: Dettmers et al. 2023, *QLoRA* (arXiv:2305.14314) §3 "4-bit NormalFloat"; bitsandbytes
//! `functional.py` (`quantize_4bit`, `get_4bit_type`) and `backends/default/ops.py` (the
//! midpoint `bucketize` rounding this file reproduces).

use crate::error::LoraError;
use crate::quant::dynamic_map::{QuantizedBlockwise8, quantize_blockwise_8bit};

/// The 16 NF4 values in index order (QLoRA appendix E; bitsandbytes `get_4bit_type("nf4")`):
/// quantiles of N(0, 1) scaled to [−1, 1], with an exact zero at index 7.
#[allow(clippy::excessive_precision)] // the f64 spellings from bitsandbytes, rounded to f32
pub const NF4_CODE: [f32; 16] = [
    -1.0,
    -0.6961928009986877,
    -0.5250730514526367,
    -0.39491748809814453,
    -0.28444138169288635,
    -0.18477343022823334,
    -0.09105003625154495,
    0.0,
    0.07958029955625534,
    0.16093020141124725,
    0.24611230194568634,
    0.33791524171829224,
    0.44070982933044434,
    0.5626170039176941,
    0.7229568362236023,
    1.0,
];

/// Block size of the second (double) quantization of the `absmax` values (bitsandbytes'
/// `compress_statistics` uses 256).
pub const NESTED_BLOCK_SIZE: usize = 256;

/// Settings of NF4 quantization (the fields of transformers' `BitsAndBytesConfig` that matter).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Nf4Config {
    /// Weights per block sharing one `absmax`: a power of two in 32..=4096 (bitsandbytes accepts
    /// exactly these). Default 64.
    pub block_size: usize,
    /// Quantize the `absmax` values again to 8 bits (`bnb_4bit_use_double_quant`). Default on.
    pub double_quant: bool,
}

impl Default for Nf4Config {
    fn default() -> Self {
        Nf4Config {
            block_size: 64,
            double_quant: true,
        }
    }
}

impl Nf4Config {
    /// Checks the block size.
    ///
    /// # Errors
    /// [`LoraError::InvalidConfig`] unless `block_size` is a power of two in 32..=4096.
    pub fn validate(&self) -> Result<(), LoraError> {
        let b = self.block_size;
        if !b.is_power_of_two() || !(32..=4096).contains(&b) {
            return Err(LoraError::InvalidConfig(format!(
                "NF4 block size must be a power of two between 32 and 4096 (bitsandbytes' set), got {b}"
            )));
        }
        Ok(())
    }

    /// Storage cost in bits per weight for `n` weights: 4 for the codes plus the statistics
    /// (32-bit `absmax` per block, or 8-bit codes per block + a 32-bit scale per 256 blocks +
    /// one 32-bit mean with double quantization).
    pub fn bits_per_weight(&self, n: usize) -> f64 {
        let blocks = n.div_ceil(self.block_size);
        let stats_bits = if self.double_quant {
            8 * blocks + 32 * blocks.div_ceil(NESTED_BLOCK_SIZE) + 32
        } else {
            32 * blocks
        };
        (4 * n + stats_bits) as f64 / n as f64
    }
}

/// The per-block scales of a quantized tensor: plain f32, or 8-bit codes (double quantization).
#[derive(Clone, Debug, PartialEq)]
pub enum Absmax {
    /// One f32 `absmax` per block.
    F32(Vec<f32>),
    /// `absmax − offset` quantized blockwise to 8 bits with the dynamic map; `offset` is the
    /// mean of the f32 `absmax` values (bitsandbytes `quantize_4bit(compress_statistics=True)`).
    Double {
        /// 8-bit codes of `absmax − offset`, blockwise over [`NESTED_BLOCK_SIZE`] values.
        quantized: QuantizedBlockwise8,
        /// The mean of the original `absmax` values.
        offset: f32,
    },
}

impl Absmax {
    /// The f32 `absmax` per block (dequantized when double-quantized:
    /// `dynamic[q] · absmax₂ + offset`, bitsandbytes `dequantize_4bit`).
    pub fn values(&self) -> Vec<f32> {
        match self {
            Absmax::F32(v) => v.clone(),
            Absmax::Double { quantized, offset } => quantized
                .dequantize()
                .into_iter()
                .map(|a| a + offset)
                .collect(),
        }
    }
}

/// A tensor quantized to NF4 on the host: packed codes and block statistics.
#[derive(Clone, Debug, PartialEq)]
pub struct Nf4Tensor {
    /// Two codes per byte, first element in the high nibble; `⌈n / 2⌉` bytes.
    pub packed: Vec<u8>,
    /// Per-block scales.
    pub absmax: Absmax,
    /// Number of weights `n`.
    pub len: usize,
    /// Weights per block.
    pub block_size: usize,
}

/// The NF4 index of a value already scaled into [−1, 1]: the number of code midpoints strictly
/// below it (torch `bucketize(x, midpoints)`, right = False), so a value exactly on a midpoint
/// takes the lower code.
pub fn nf4_index(scaled: f32) -> u8 {
    let mut idx = 0u8;
    for i in 0..15 {
        // The midpoint is computed in f32, as bitsandbytes does.
        let mid = (NF4_CODE[i] + NF4_CODE[i + 1]) / 2.0;
        if mid < scaled {
            idx += 1;
        }
    }
    idx
}

/// Quantizes `values` (flattened row-major, PyTorch's `[out, in]` order for a linear weight) to
/// NF4 with the settings of `config`.
///
/// # Errors
/// [`LoraError::InvalidConfig`] for a bad block size or an empty tensor.
pub fn quantize_nf4(values: &[f32], config: &Nf4Config) -> Result<Nf4Tensor, LoraError> {
    config.validate()?;
    if values.is_empty() {
        return Err(LoraError::InvalidConfig(
            "cannot NF4-quantize an empty tensor".into(),
        ));
    }
    let bs = config.block_size;
    let mut absmax = Vec::with_capacity(values.len().div_ceil(bs));
    let mut packed = vec![0u8; values.len().div_ceil(2)];
    for (b, block) in values.chunks(bs).enumerate() {
        let amax = block.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        // bitsandbytes multiplies by the reciprocal for full blocks and divides for the last,
        // partial one; both guard a zero block with 1e-38.
        let full = block.len() == bs;
        let guarded = amax.max(1e-38);
        let inv = 1.0 / guarded;
        // Full blocks store the raw maximum, the partial last block the guarded one (as bnb).
        absmax.push(if full { amax } else { guarded });
        for (j, &v) in block.iter().enumerate() {
            let scaled = if full { v * inv } else { v / guarded }.clamp(-1.0, 1.0);
            let idx = nf4_index(scaled);
            let i = b * bs + j;
            packed[i / 2] |= if i.is_multiple_of(2) { idx << 4 } else { idx };
        }
    }
    if values.len() % 2 == 1 {
        // bitsandbytes pads an odd count with one scaled 0.0, whose code fills the last low nibble.
        if let Some(last) = packed.last_mut() {
            *last |= nf4_index(0.0);
        }
    }
    let absmax = if config.double_quant {
        // The mean in f64, rounded once: torch's f32 reduction is within rounding of it.
        let offset = (absmax.iter().map(|&a| a as f64).sum::<f64>() / absmax.len() as f64) as f32;
        let centred: Vec<f32> = absmax.iter().map(|a| a - offset).collect();
        Absmax::Double {
            quantized: quantize_blockwise_8bit(&centred, NESTED_BLOCK_SIZE),
            offset,
        }
    } else {
        Absmax::F32(absmax)
    };
    Ok(Nf4Tensor {
        packed,
        absmax,
        len: values.len(),
        block_size: bs,
    })
}

impl Nf4Tensor {
    /// The code index of element `i`.
    pub fn index(&self, i: usize) -> u8 {
        let byte = self.packed[i / 2];
        if i.is_multiple_of(2) {
            byte >> 4
        } else {
            byte & 0x0F
        }
    }

    /// Dequantizes on the host: `NF4[idx] · absmax[block]` in f32 (bitsandbytes
    /// `dequantize_4bit`).
    pub fn dequantize(&self) -> Vec<f32> {
        let absmax = self.absmax.values();
        (0..self.len)
            .map(|i| NF4_CODE[self.index(i) as usize] * absmax[i / self.block_size])
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hand_made_block_gets_expected_indices_and_high_nibble_first_bytes() {
        // absmax = 2: scaled values are the codes themselves (exactly representable halves).
        let mut block = vec![0.0f32; 64];
        block[0] = -2.0; // code 0
        block[1] = 2.0; // code 15
        block[2] = 0.0; // code 7
        block[3] = 2.0 * NF4_CODE[9]; // code 9
        let q = quantize_nf4(
            &block,
            &Nf4Config {
                block_size: 64,
                double_quant: false,
            },
        )
        .unwrap();
        assert_eq!(q.absmax, Absmax::F32(vec![2.0]));
        assert_eq!(q.packed[0], 0x0F); // elements 0 (high) and 1 (low)
        assert_eq!(q.packed[1], 0x79);
        assert!(q.packed[2..].iter().all(|&b| b == 0x77));
        let deq = q.dequantize();
        for i in 0..64 {
            assert_eq!(deq[i], NF4_CODE[q.index(i) as usize] * 2.0);
        }
        assert_eq!(deq[3], block[3]);
    }

    #[test]
    fn values_on_a_midpoint_take_the_lower_code() {
        let mid = (NF4_CODE[7] + NF4_CODE[8]) / 2.0;
        assert_eq!(nf4_index(mid), 7);
        assert_eq!(nf4_index(f32::from_bits(mid.to_bits() + 1)), 8);
        assert_eq!(nf4_index(-1.0), 0);
        assert_eq!(nf4_index(1.0), 15);
    }

    #[test]
    fn block_size_must_be_a_power_of_two_in_range() {
        for bs in [0, 16, 48, 100, 8192] {
            let c = Nf4Config {
                block_size: bs,
                double_quant: true,
            };
            let err = quantize_nf4(&[1.0; 64], &c).unwrap_err().to_string();
            assert!(err.contains("power of two"), "{err}");
        }
        assert!(quantize_nf4(&[], &Nf4Config::default()).is_err());
    }

    #[test]
    fn storage_cost_matches_the_qlora_paper() {
        let n = 64 * 256 * 100;
        let dq = Nf4Config::default().bits_per_weight(n);
        assert!(
            (dq - (4.0 + 8.0 / 64.0 + 32.0 / (64.0 * 256.0))).abs() < 1e-4,
            "{dq}"
        );
        let plain = Nf4Config {
            double_quant: false,
            ..Nf4Config::default()
        };
        assert_eq!(plain.bits_per_weight(n), 4.5);
    }
}
