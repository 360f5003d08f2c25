//! GGML tensor element types and their dequantization to `f32`.
//!
//! Block layouts and formulas follow llama.cpp `ggml/src/ggml-common.h` (the `block_*` structs)
//! and `ggml/src/ggml-quants.c` (`dequantize_row_*`); type ids and `(block size, type size)`
//! pairs follow gguf-py `gguf/constants.py` (`GGMLQuantizationType`, `GGML_QUANT_SIZES`).
//! Every block stores its scales as little-endian IEEE half floats.
//!
//! Each kernel walks the byte slice one whole block at a time (`<[u8]>::as_chunks`), so the
//! inner loops index fixed-size arrays with constant bounds and carry no bounds checks.

use half::{bf16, f16};

/// The element type of a GGUF tensor (`ggml_type` in llama.cpp `ggml/include/ggml.h`).
///
/// All ids that gguf-py 0.19 knows are listed so that any current file can be opened and its
/// tensors listed; [`GgmlType::can_dequantize`] says which ones [`dequantize`] can expand.
#[allow(non_camel_case_types, missing_docs)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GgmlType {
    F32,
    F16,
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
    Q8_0,
    Q8_1,
    Q2_K,
    Q3_K,
    Q4_K,
    Q5_K,
    Q6_K,
    Q8_K,
    IQ2_XXS,
    IQ2_XS,
    IQ3_XXS,
    IQ1_S,
    IQ4_NL,
    IQ3_S,
    IQ2_S,
    IQ4_XS,
    I8,
    I16,
    I32,
    I64,
    F64,
    IQ1_M,
    BF16,
    TQ1_0,
    TQ2_0,
    MXFP4,
    NVFP4,
    Q1_0,
}

/// Super-block length of the k-quants (`QK_K` in `ggml-common.h`).
const QK_K: usize = 256;

/// `(type, id, name, elements per block, bytes per block)` for every type, from gguf-py
/// `GGML_QUANT_SIZES`. Ids 4, 5, 31–33 and 36–38 were removed from ggml and are not valid.
const TYPES: [(GgmlType, u32, &str, usize, usize); 34] = [
    (GgmlType::F32, 0, "F32", 1, 4),
    (GgmlType::F16, 1, "F16", 1, 2),
    (GgmlType::Q4_0, 2, "Q4_0", 32, 2 + 16),
    (GgmlType::Q4_1, 3, "Q4_1", 32, 2 + 2 + 16),
    (GgmlType::Q5_0, 6, "Q5_0", 32, 2 + 4 + 16),
    (GgmlType::Q5_1, 7, "Q5_1", 32, 2 + 2 + 4 + 16),
    (GgmlType::Q8_0, 8, "Q8_0", 32, 2 + 32),
    (GgmlType::Q8_1, 9, "Q8_1", 32, 4 + 4 + 32),
    (
        GgmlType::Q2_K,
        10,
        "Q2_K",
        QK_K,
        2 + 2 + QK_K / 16 + QK_K / 4,
    ),
    (
        GgmlType::Q3_K,
        11,
        "Q3_K",
        QK_K,
        2 + QK_K / 4 + QK_K / 8 + 12,
    ),
    (GgmlType::Q4_K, 12, "Q4_K", QK_K, 2 + 2 + QK_K / 2 + 12),
    (
        GgmlType::Q5_K,
        13,
        "Q5_K",
        QK_K,
        2 + 2 + QK_K / 2 + QK_K / 8 + 12,
    ),
    (
        GgmlType::Q6_K,
        14,
        "Q6_K",
        QK_K,
        2 + QK_K / 2 + QK_K / 4 + QK_K / 16,
    ),
    (GgmlType::Q8_K, 15, "Q8_K", QK_K, 4 + QK_K + QK_K / 8),
    (GgmlType::IQ2_XXS, 16, "IQ2_XXS", QK_K, 2 + QK_K / 4),
    (
        GgmlType::IQ2_XS,
        17,
        "IQ2_XS",
        QK_K,
        2 + QK_K / 4 + QK_K / 32,
    ),
    (
        GgmlType::IQ3_XXS,
        18,
        "IQ3_XXS",
        QK_K,
        2 + QK_K / 4 + QK_K / 8,
    ),
    (GgmlType::IQ1_S, 19, "IQ1_S", QK_K, 2 + QK_K / 8 + QK_K / 16),
    (GgmlType::IQ4_NL, 20, "IQ4_NL", 32, 2 + 16),
    (
        GgmlType::IQ3_S,
        21,
        "IQ3_S",
        QK_K,
        2 + QK_K / 4 + QK_K / 8 + QK_K / 32 + 4,
    ),
    (GgmlType::IQ2_S, 22, "IQ2_S", QK_K, 2 + QK_K / 4 + QK_K / 16),
    (
        GgmlType::IQ4_XS,
        23,
        "IQ4_XS",
        QK_K,
        2 + 2 + QK_K / 2 + QK_K / 64,
    ),
    (GgmlType::I8, 24, "I8", 1, 1),
    (GgmlType::I16, 25, "I16", 1, 2),
    (GgmlType::I32, 26, "I32", 1, 4),
    (GgmlType::I64, 27, "I64", 1, 8),
    (GgmlType::F64, 28, "F64", 1, 8),
    (
        GgmlType::IQ1_M,
        29,
        "IQ1_M",
        QK_K,
        QK_K / 8 + QK_K / 16 + QK_K / 32,
    ),
    (GgmlType::BF16, 30, "BF16", 1, 2),
    (GgmlType::TQ1_0, 34, "TQ1_0", QK_K, 2 + 4 * 13),
    (GgmlType::TQ2_0, 35, "TQ2_0", QK_K, 2 + 64),
    (GgmlType::MXFP4, 39, "MXFP4", 32, 1 + 16),
    (GgmlType::NVFP4, 40, "NVFP4", 64, 4 + 32),
    (GgmlType::Q1_0, 41, "Q1_0", 128, 2 + 16),
];

impl GgmlType {
    /// The type with this `ggml_type` id, or `None` for an id ggml does not define.
    pub fn from_id(id: u32) -> Option<Self> {
        TYPES.iter().find(|t| t.1 == id).map(|t| t.0)
    }

    fn row(self) -> (GgmlType, u32, &'static str, usize, usize) {
        // Every variant has a row; the fallback is never taken and keeps this free of panics.
        TYPES
            .iter()
            .copied()
            .find(|t| t.0 == self)
            .unwrap_or((self, u32::MAX, "?", 1, 1))
    }

    /// The `ggml_type` id written in GGUF tensor infos.
    pub fn id(self) -> u32 {
        self.row().1
    }

    /// llama.cpp's name for the type, e.g. `"Q4_K"`.
    pub fn name(self) -> &'static str {
        self.row().2
    }

    /// Elements per block (1 for plain types, 32 or 256 for quantized ones).
    pub fn block_size(self) -> usize {
        self.row().3
    }

    /// Bytes per block.
    pub fn type_size(self) -> usize {
        self.row().4
    }

    /// Whether [`dequantize`] supports this type: F32, F16, BF16, F64, Q4_0, Q4_1, Q5_0, Q5_1,
    /// Q8_0, Q4_K, Q5_K and Q6_K.
    pub fn can_dequantize(self) -> bool {
        use GgmlType::*;
        matches!(
            self,
            F32 | F16 | BF16 | F64 | Q4_0 | Q4_1 | Q5_0 | Q5_1 | Q8_0 | Q4_K | Q5_K | Q6_K
        )
    }
}

impl std::fmt::Display for GgmlType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Expands `bytes`, the raw data of a tensor of element type `dtype`, into `f32` values in file
/// order. Returns `None` when `dtype` is not supported (see [`GgmlType::can_dequantize`]).
///
/// `bytes` should hold a whole number of blocks (`dtype.type_size()` bytes each); a trailing
/// partial block is ignored. The result has `bytes.len() / type_size * block_size` elements.
pub fn dequantize(dtype: GgmlType, bytes: &[u8]) -> Option<Vec<f32>> {
    let n_blocks = bytes.len() / dtype.type_size();
    let mut out = Vec::with_capacity(n_blocks.saturating_mul(dtype.block_size()));
    match dtype {
        GgmlType::F32 => out.extend(
            bytes
                .as_chunks::<4>()
                .0
                .iter()
                .map(|b| f32::from_le_bytes(*b)),
        ),
        GgmlType::F64 => out.extend(
            bytes
                .as_chunks::<8>()
                .0
                .iter()
                .map(|b| f64::from_le_bytes(*b) as f32),
        ),
        GgmlType::F16 => out.extend(bytes.as_chunks::<2>().0.iter().map(|b| half(b[0], b[1]))),
        GgmlType::BF16 => out.extend(
            bytes
                .as_chunks::<2>()
                .0
                .iter()
                .map(|b| bf16::from_le_bytes(*b).to_f32()),
        ),
        GgmlType::Q4_0 => blocks::<18, 32>(bytes, &mut out, q4_0),
        GgmlType::Q4_1 => blocks::<20, 32>(bytes, &mut out, q4_1),
        GgmlType::Q5_0 => blocks::<22, 32>(bytes, &mut out, q5_0),
        GgmlType::Q5_1 => blocks::<24, 32>(bytes, &mut out, q5_1),
        GgmlType::Q8_0 => blocks::<34, 32>(bytes, &mut out, q8_0),
        GgmlType::Q4_K => blocks::<144, 256>(bytes, &mut out, q4_k),
        GgmlType::Q5_K => blocks::<176, 256>(bytes, &mut out, q5_k),
        GgmlType::Q6_K => blocks::<210, 256>(bytes, &mut out, q6_k),
        _ => return None,
    }
    Some(out)
}

/// Runs `kernel` on each `B`-byte block, appending its `N` values to `out`.
fn blocks<const B: usize, const N: usize>(
    bytes: &[u8],
    out: &mut Vec<f32>,
    kernel: fn(&[u8; B], &mut [f32; N]),
) {
    let mut y = [0.0f32; N];
    for block in bytes.as_chunks::<B>().0 {
        kernel(block, &mut y);
        out.extend_from_slice(&y);
    }
}

/// A little-endian half float from its two bytes.
#[inline(always)]
fn half(lo: u8, hi: u8) -> f32 {
    f16::from_le_bytes([lo, hi]).to_f32()
}

/// `block_q4_0 { half d; u8 qs[16]; }`: y[j] = d·(lo(qs[j]) − 8), y[j+16] = d·(hi(qs[j]) − 8).
fn q4_0(b: &[u8; 18], y: &mut [f32; 32]) {
    let d = half(b[0], b[1]);
    for j in 0..16 {
        let q = b[2 + j];
        y[j] = ((q & 0x0F) as i32 - 8) as f32 * d;
        y[j + 16] = ((q >> 4) as i32 - 8) as f32 * d;
    }
}

/// `block_q4_1 { half d; half m; u8 qs[16]; }`: y[j] = d·lo(qs[j]) + m, y[j+16] = d·hi(qs[j]) + m.
fn q4_1(b: &[u8; 20], y: &mut [f32; 32]) {
    let d = half(b[0], b[1]);
    let m = half(b[2], b[3]);
    for j in 0..16 {
        let q = b[4 + j];
        y[j] = (q & 0x0F) as f32 * d + m;
        y[j + 16] = (q >> 4) as f32 * d + m;
    }
}

/// `block_q5_0 { half d; u8 qh[4]; u8 qs[16]; }`: 5-bit values, the fifth bit of element j in
/// bit j of the little-endian u32 `qh`; y = d·(q − 16).
fn q5_0(b: &[u8; 22], y: &mut [f32; 32]) {
    let d = half(b[0], b[1]);
    let qh = u32::from_le_bytes([b[2], b[3], b[4], b[5]]);
    for j in 0..16 {
        let q = b[6 + j];
        let h0 = (((qh >> j) << 4) & 0x10) as u8;
        let h1 = ((qh >> (j + 12)) & 0x10) as u8;
        y[j] = (((q & 0x0F) | h0) as i32 - 16) as f32 * d;
        y[j + 16] = (((q >> 4) | h1) as i32 - 16) as f32 * d;
    }
}

/// `block_q5_1 { half d; half m; u8 qh[4]; u8 qs[16]; }`: as Q5_0 without the −16; y = d·q + m.
fn q5_1(b: &[u8; 24], y: &mut [f32; 32]) {
    let d = half(b[0], b[1]);
    let m = half(b[2], b[3]);
    let qh = u32::from_le_bytes([b[4], b[5], b[6], b[7]]);
    for j in 0..16 {
        let q = b[8 + j];
        let h0 = (((qh >> j) << 4) & 0x10) as u8;
        let h1 = ((qh >> (j + 12)) & 0x10) as u8;
        y[j] = ((q & 0x0F) | h0) as f32 * d + m;
        y[j + 16] = ((q >> 4) | h1) as f32 * d + m;
    }
}

/// `block_q8_0 { half d; i8 qs[32]; }`: y = d·q.
fn q8_0(b: &[u8; 34], y: &mut [f32; 32]) {
    let d = half(b[0], b[1]);
    for j in 0..32 {
        y[j] = (b[2 + j] as i8) as f32 * d;
    }
}

/// The 6-bit scale and min of sub-block `j` (0..8) packed in the 12 `scales` bytes of Q4_K and
/// Q5_K (`get_scale_min_k4` in `ggml-quants.c`).
#[inline(always)]
pub(super) fn scale_min_k4(j: usize, q: &[u8; 12]) -> (f32, f32) {
    if j < 4 {
        ((q[j] & 63) as f32, (q[j + 4] & 63) as f32)
    } else {
        let (j4, jm4) = ((j + 4) % 12, (j + 8) % 12); // j+4 and j-4 for j in 4..8
        let sc = (q[j4] & 0x0F) | ((q[jm4] >> 6) << 4);
        let m = (q[j4] >> 4) | ((q[j % 12] >> 6) << 4);
        (sc as f32, m as f32)
    }
}

/// Splits a block into a fixed-size array starting at `at`. Only called with constant ranges
/// that lie inside the block, so the fallback (zeros) is never taken.
#[inline(always)]
fn sub<const B: usize, const L: usize>(b: &[u8; B], at: usize) -> [u8; L] {
    b.get(at..at + L)
        .and_then(|s| s.try_into().ok())
        .unwrap_or([0; L])
}

/// `block_q4_K { half d; half dmin; u8 scales[12]; u8 qs[128]; }`: eight 32-element sub-blocks
/// with 6-bit scale `sc` and min `m`; y = d·sc·q − dmin·m.
fn q4_k(b: &[u8; 144], y: &mut [f32; 256]) {
    let d = half(b[0], b[1]);
    let dmin = half(b[2], b[3]);
    let scales: [u8; 12] = sub(b, 4);
    let qs: [u8; 128] = sub(b, 16);
    for chunk in 0..4 {
        let (sc1, m1) = scale_min_k4(2 * chunk, &scales);
        let (sc2, m2) = scale_min_k4(2 * chunk + 1, &scales);
        let (d1, m1, d2, m2) = (d * sc1, dmin * m1, d * sc2, dmin * m2);
        for l in 0..32 {
            let q = qs[32 * chunk + l];
            y[64 * chunk + l] = d1 * (q & 0x0F) as f32 - m1;
            y[64 * chunk + 32 + l] = d2 * (q >> 4) as f32 - m2;
        }
    }
}

/// `block_q5_K { half d; half dmin; u8 scales[12]; u8 qh[32]; u8 qs[128]; }`: as Q4_K with a
/// fifth bit per element taken from `qh` (bit 2·chunk for the low nibbles, 2·chunk+1 for high).
fn q5_k(b: &[u8; 176], y: &mut [f32; 256]) {
    let d = half(b[0], b[1]);
    let dmin = half(b[2], b[3]);
    let scales: [u8; 12] = sub(b, 4);
    let qh: [u8; 32] = sub(b, 16);
    let qs: [u8; 128] = sub(b, 48);
    for chunk in 0..4 {
        let (sc1, m1) = scale_min_k4(2 * chunk, &scales);
        let (sc2, m2) = scale_min_k4(2 * chunk + 1, &scales);
        let (d1, m1, d2, m2) = (d * sc1, dmin * m1, d * sc2, dmin * m2);
        let (u1, u2) = (1u8 << (2 * chunk), 2u8 << (2 * chunk));
        for l in 0..32 {
            let q = qs[32 * chunk + l];
            let h1 = if qh[l] & u1 != 0 { 16 } else { 0 };
            let h2 = if qh[l] & u2 != 0 { 16 } else { 0 };
            y[64 * chunk + l] = d1 * ((q & 0x0F) + h1) as f32 - m1;
            y[64 * chunk + 32 + l] = d2 * ((q >> 4) + h2) as f32 - m2;
        }
    }
}

/// `block_q6_K { u8 ql[128]; u8 qh[64]; i8 scales[16]; half d; }`: 6-bit values (low four bits
/// in `ql`, high two in `qh`) in sixteen 16-element sub-blocks with i8 scales; y = d·sc·(q − 32).
fn q6_k(b: &[u8; 210], y: &mut [f32; 256]) {
    let ql: [u8; 128] = sub(b, 0);
    let qh: [u8; 64] = sub(b, 128);
    let sc: [u8; 16] = sub(b, 192);
    let d = half(b[208], b[209]);
    let scale = |i: usize| d * (sc[i % 16] as i8) as f32;
    for half_block in 0..2 {
        let (l0, h0, s0, y0) = (
            64 * half_block,
            32 * half_block,
            8 * half_block,
            128 * half_block,
        );
        for l in 0..32 {
            let is = l / 16;
            let h = qh[h0 + l];
            let a = ql[l0 + l];
            let c = ql[l0 + l + 32];
            let q1 = ((a & 0x0F) | ((h & 3) << 4)) as i32 - 32;
            let q2 = ((c & 0x0F) | (((h >> 2) & 3) << 4)) as i32 - 32;
            let q3 = ((a >> 4) | (((h >> 4) & 3) << 4)) as i32 - 32;
            let q4 = ((c >> 4) | (((h >> 6) & 3) << 4)) as i32 - 32;
            y[y0 + l] = scale(s0 + is) * q1 as f32;
            y[y0 + l + 32] = scale(s0 + is + 2) * q2 as f32;
            y[y0 + l + 64] = scale(s0 + is + 4) * q3 as f32;
            y[y0 + l + 96] = scale(s0 + is + 6) * q4 as f32;
        }
    }
}
