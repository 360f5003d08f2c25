//! The k-quant encoders Q4_K and Q6_K (256-value super-blocks), following llama.cpp
//! `ggml/src/ggml-quants.c` (`quantize_row_q4_K_ref`, `quantize_row_q6_K_ref` and their helpers
//! `make_qkx2_quants`, `make_qx_quants`, `nearest_int`) operation for operation in `f32`, so the
//! blocks are bit-identical to llama.cpp's when it quantizes without an importance matrix.
//! Evaluation order matters for bit-identity: every sum below accumulates left to right, and
//! products are grouped as in the C source (`w*x[i]*l` is `(w·x)·l`).

use half::f16;

/// `GROUP_MAX_EPS`: a sub-block whose largest magnitude is below this is all zero.
const GROUP_MAX_EPS: f32 = 1e-15;

/// The f16 bytes of a block scale (`GGML_FP32_TO_FP16`: round to nearest even).
pub(super) fn half_bytes(v: f32) -> [u8; 2] {
    f16::from_f32(v).to_le_bytes()
}

/// `nearest_int`: round to nearest, ties to even, by adding 1.5·2²³ and reading the mantissa
/// (valid for |x| ≤ 4194303, which the kernels guarantee by construction).
fn nearest_int(x: f32) -> i32 {
    let v = x + 12_582_912.0;
    (v.to_bits() & 0x007f_ffff) as i32 - 0x0040_0000
}

/// `make_qkx2_quants(32, 15, x, weights, L, &the_min, Laux, -1, 0.1, 20, false)`: a 4-bit scale
/// and min for one 32-value sub-block by weighted least squares over 21 candidate scales.
/// Returns `(scale, the_min)` and writes the codes into `l`.
fn make_qkx2_quants(x: &[f32; 32], weights: &[f32; 32], l: &mut [u8; 32]) -> (f32, f32) {
    const NMAX: i32 = 15;
    const NMAX_F: f32 = 15.0;
    let (rmin, rdelta, nstep) = (-1.0f32, 0.1f32, 20);
    let mut min = x[0];
    let mut max = x[0];
    let mut sum_w = weights[0];
    let mut sum_x = sum_w * x[0];
    for i in 1..32 {
        if x[i] < min {
            min = x[i];
        }
        if x[i] > max {
            max = x[i];
        }
        let w = weights[i];
        sum_w += w;
        sum_x += w * x[i];
    }
    if min > 0.0 {
        min = 0.0;
    }
    if max == min {
        l.fill(0);
        return (0.0, -min);
    }
    let mut iscale = NMAX_F / (max - min);
    let mut scale = 1.0 / iscale;
    let mut best_error = 0.0f32;
    for i in 0..32 {
        let q = nearest_int(iscale * (x[i] - min)).clamp(0, NMAX);
        l[i] = q as u8;
        let diff = scale * q as f32 + min - x[i];
        best_error += weights[i] * (diff * diff);
    }
    let mut laux = [0u8; 32];
    for is in 0..=nstep {
        iscale = (rmin + rdelta * is as f32 + NMAX_F) / (max - min);
        let (mut sum_l, mut sum_l2, mut sum_xl) = (0.0f32, 0.0f32, 0.0f32);
        for i in 0..32 {
            let q = nearest_int(iscale * (x[i] - min)).clamp(0, NMAX);
            laux[i] = q as u8;
            let (w, qf) = (weights[i], q as f32);
            sum_l += w * qf;
            sum_l2 += w * qf * qf;
            sum_xl += w * qf * x[i];
        }
        let det = sum_w * sum_l2 - sum_l * sum_l;
        if det > 0.0 {
            let mut this_scale = (sum_w * sum_xl - sum_x * sum_l) / det;
            let mut this_min = (sum_l2 * sum_x - sum_l * sum_xl) / det;
            if this_min > 0.0 {
                this_min = 0.0;
                this_scale = sum_xl / sum_l2;
            }
            let mut cur_error = 0.0f32;
            for i in 0..32 {
                let diff = this_scale * laux[i] as f32 + this_min - x[i];
                cur_error += weights[i] * (diff * diff);
            }
            if cur_error < best_error {
                *l = laux;
                best_error = cur_error;
                scale = this_scale;
                min = this_min;
            }
        }
    }
    (scale, -min)
}

/// `block_q4_K { half d; half dmin; u8 scales[12]; u8 qs[128]; }` from `quantize_row_q4_K_ref`:
/// eight 32-value sub-blocks, each with a 6-bit scale and min relative to the super-block's `d`
/// and `dmin`; codes of sub-blocks 2c and 2c+1 share the bytes `qs[32c..32c+32]` (low, high nibble).
pub(super) fn q4_k(x: &[f32; 256]) -> [u8; 144] {
    let mut codes = [[0u8; 32]; 8];
    let mut scales = [0.0f32; 8];
    let mut mins = [0.0f32; 8];
    let (mut max_scale, mut max_min) = (0.0f32, 0.0f32);
    for (j, sub) in x.as_chunks::<32>().0.iter().enumerate() {
        let sum_x2 = sub.iter().fold(0.0f32, |s, v| s + v * v);
        let av_x = (sum_x2 / 32.0).sqrt();
        let weights = sub.map(|v| av_x + v.abs());
        let (scale, min) = make_qkx2_quants(sub, &weights, &mut codes[j]);
        scales[j] = scale;
        mins[j] = min;
        if scale > max_scale {
            max_scale = scale;
        }
        if min > max_min {
            max_min = min;
        }
    }
    let inv_scale = if max_scale > 0.0 {
        63.0 / max_scale
    } else {
        0.0
    };
    let inv_min = if max_min > 0.0 { 63.0 / max_min } else { 0.0 };
    let mut packed = [0u8; 12];
    for j in 0..8 {
        // `uint8_t ls = nearest_int(...)` keeps the low byte, then MIN(63, ls).
        let ls = (nearest_int(inv_scale * scales[j]) as u8).min(63);
        let lm = (nearest_int(inv_min * mins[j]) as u8).min(63);
        if j < 4 {
            packed[j] = ls;
            packed[j + 4] = lm;
        } else {
            packed[j + 4] = (ls & 0x0F) | ((lm & 0x0F) << 4);
            packed[j - 4] |= (ls >> 4) << 6;
            packed[j] |= (lm >> 4) << 6;
        }
    }
    let d_bytes = half_bytes(max_scale / 63.0);
    let dmin_bytes = half_bytes(max_min / 63.0);
    let d = half::f16::from_le_bytes(d_bytes).to_f32();
    let dmin = half::f16::from_le_bytes(dmin_bytes).to_f32();
    for (j, sub) in x.as_chunks::<32>().0.iter().enumerate() {
        let (sc, m) = super::dequant::scale_min_k4(j, &packed);
        let dj = d * sc;
        if dj == 0.0 {
            continue;
        }
        let dm = dmin * m;
        for (code, v) in codes[j].iter_mut().zip(sub) {
            *code = nearest_int((v + dm) / dj).clamp(0, 15) as u8;
        }
    }
    let mut b = [0u8; 144];
    b[0..2].copy_from_slice(&d_bytes);
    b[2..4].copy_from_slice(&dmin_bytes);
    b[4..16].copy_from_slice(&packed);
    for chunk in 0..4 {
        let (lo, hi) = (&codes[2 * chunk], &codes[2 * chunk + 1]);
        for l in 0..32 {
            b[16 + 32 * chunk + l] = lo[l] | (hi[l] << 4);
        }
    }
    b
}

/// `make_qx_quants(16, 32, x, L, rmse_type = 1, NULL)`: a signed 6-bit scale for one 16-value
/// sub-block, weights `x²`, searched over 19 candidate scales. Returns the scale and writes the
/// codes (offset by 32) into `l`.
fn make_qx_quants(x: &[f32; 16], l: &mut [i8; 16]) -> f32 {
    const NMAX: i32 = 32;
    let mut max = 0.0f32;
    let mut amax = 0.0f32;
    for &v in x {
        if v.abs() > amax {
            amax = v.abs();
            max = v;
        }
    }
    if amax < GROUP_MAX_EPS {
        l.fill(0);
        return 0.0;
    }
    let code = |iscale: f32, v: f32| nearest_int(iscale * v).clamp(-NMAX, NMAX - 1);
    let sums = |iscale: f32| {
        let (mut sumlx, mut suml2) = (0.0f32, 0.0f32);
        for &v in x {
            let q = code(iscale, v) as f32;
            let w = v * v;
            sumlx += w * v * q;
            suml2 += w * q * q;
        }
        (sumlx, suml2)
    };
    let mut iscale = -(NMAX as f32) / max;
    for (li, &v) in l.iter_mut().zip(x) {
        *li = (code(iscale, v) + NMAX) as i8;
    }
    let (sumlx, suml2) = sums(iscale);
    let mut scale = if suml2 != 0.0 { sumlx / suml2 } else { 0.0 };
    let mut best = scale * sumlx;
    for is in -9i32..=9 {
        if is == 0 {
            continue;
        }
        iscale = -(NMAX as f32 + 0.1 * is as f32) / max;
        let (sumlx, suml2) = sums(iscale);
        if suml2 > 0.0 && sumlx * sumlx > best * suml2 {
            for (li, &v) in l.iter_mut().zip(x) {
                *li = (code(iscale, v) + NMAX) as i8;
            }
            scale = sumlx / suml2;
            best = scale * sumlx;
        }
    }
    scale
}

/// `block_q6_K { u8 ql[128]; u8 qh[64]; i8 scales[16]; half d; }` from `quantize_row_q6_K_ref`:
/// sixteen 16-value sub-blocks with signed 8-bit scales relative to `d`; 6-bit codes split into
/// low nibbles (`ql`) and high bit pairs (`qh`) in llama.cpp's interleaved order.
pub(super) fn q6_k(x: &[f32; 256]) -> [u8; 210] {
    let mut codes = [[0i8; 16]; 16];
    let mut scales = [0.0f32; 16];
    let (mut max_scale, mut max_abs_scale) = (0.0f32, 0.0f32);
    for (ib, sub) in x.as_chunks::<16>().0.iter().enumerate() {
        let scale = make_qx_quants(sub, &mut codes[ib]);
        scales[ib] = scale;
        if scale.abs() > max_abs_scale {
            max_abs_scale = scale.abs();
            max_scale = scale;
        }
    }
    let mut b = [0u8; 210];
    if max_abs_scale < GROUP_MAX_EPS {
        // All zero: an all-zero block (d = +0.0).
        return b;
    }
    let iscale = -128.0 / max_scale;
    let d_bytes = half_bytes(1.0 / iscale);
    let d = half::f16::from_le_bytes(d_bytes).to_f32();
    let mut sc = [0i8; 16];
    for (s, &scale) in sc.iter_mut().zip(&scales) {
        *s = nearest_int(iscale * scale).min(127) as i8;
    }
    for (j, sub) in x.as_chunks::<16>().0.iter().enumerate() {
        let dj = d * f32::from(sc[j]);
        if dj == 0.0 {
            continue; // keeps the codes make_qx_quants chose, as the C kernel does
        }
        for (code, v) in codes[j].iter_mut().zip(sub) {
            *code = (nearest_int(v / dj).clamp(-32, 31) + 32) as i8;
        }
    }
    let flat: Vec<u8> = codes.iter().flatten().map(|&c| c as u8).collect();
    let at = |i: usize| flat.get(i).copied().unwrap_or(0);
    for half_block in 0..2 {
        let (j, ql0, qh0) = (128 * half_block, 64 * half_block, 128 + 32 * half_block);
        for l in 0..32 {
            let (q1, q2, q3, q4) = (at(j + l), at(j + l + 32), at(j + l + 64), at(j + l + 96));
            b[ql0 + l] = (q1 & 0x0F) | ((q3 & 0x0F) << 4);
            b[ql0 + l + 32] = (q2 & 0x0F) | ((q4 & 0x0F) << 4);
            b[qh0 + l] = (q1 >> 4) | ((q2 >> 4) << 2) | ((q3 >> 4) << 4) | ((q4 >> 4) << 6);
        }
    }
    for (dst, s) in b[192..208].iter_mut().zip(sc) {
        *dst = s as u8;
    }
    b[208..210].copy_from_slice(&d_bytes);
    b
}
