//! The flex backend's NF4 kernels (`quant/nf4_flex.rs`) compute what the reference does:
//! dequantizing equals the host dequantization (bitsandbytes' `dequantize_4bit`) bit for bit, and
//! the product `x · W` — fused from the packed codes for up to 8 rows, dequantize-then-gemm above —
//! equals `x · Wᵀ` computed by hand in f64 from that same `W`, for every layout the kernels
//! branch on: with and without double quantization, rows that end inside a block, a `d_in`
//! larger than a block, and an odd `d_in` (the fallback).

use burn::tensor::{Device, Tensor, TensorData};
use lora_core::quant::{Nf4Config, Nf4Weight, quantize_nf4};
use lora_core::{BackendKind, select_device};

fn device() -> Device {
    select_device(BackendKind::Flex).unwrap()
}

/// Deterministic values in [-1, 1) (a 64-bit LCG; no dependence on a random crate's stream).
fn values(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

/// Checks one shape: device dequantization against the host's, and the product for `rows`.
fn check(d_out: usize, d_in: usize, block_size: usize, double_quant: bool, rows: &[usize]) {
    let config = Nf4Config {
        block_size,
        double_quant,
    };
    let w = values(d_out * d_in, (d_out * 31 + d_in) as u64);
    let q = quantize_nf4(&w, &config).unwrap();
    let w_host = q.dequantize(); // row-major [d_out, d_in]
    let weight = Nf4Weight::from_host(&q, [d_out, d_in], &device());

    // burn layout [d_in, d_out]: element (i, o) is W[o, i].
    let got: Vec<f32> = weight
        .dequantize()
        .transpose()
        .into_data()
        .convert::<f32>()
        .try_into_vec::<f32>()
        .unwrap();
    let what = format!("{d_out}x{d_in} block {block_size} double {double_quant}");
    for (k, (g, h)) in got.iter().zip(&w_host).enumerate() {
        assert_eq!(g.to_bits(), h.to_bits(), "{what}: element {k}: {g} vs {h}");
    }

    for &n in rows {
        let x = values(n * d_in, 7 + n as u64);
        let xt = Tensor::<2>::from_data(TensorData::new(x.clone(), [n, d_in]), &device());
        let y: Vec<f32> = weight
            .matmul(xt)
            .into_data()
            .convert::<f32>()
            .try_into_vec::<f32>()
            .unwrap();
        assert_eq!(y.len(), n * d_out, "{what}: output size for {n} rows");
        for r in 0..n {
            for o in 0..d_out {
                let want: f64 = (0..d_in)
                    .map(|i| x[r * d_in + i] as f64 * w_host[o * d_in + i] as f64)
                    .sum();
                let norm: f64 = (0..d_in)
                    .map(|i| (x[r * d_in + i] as f64 * w_host[o * d_in + i] as f64).abs())
                    .sum();
                let err = (y[r * d_out + o] as f64 - want).abs();
                assert!(
                    err <= 1e-5 * norm.max(1.0),
                    "{what}: {n} rows, y[{r}, {o}] = {} vs {want} (error {err:e})",
                    y[r * d_out + o]
                );
            }
        }
    }
}

#[test]
fn flex_nf4_dequantize_and_product_equal_the_host_reference_double_quant() {
    // d_in = 96: rows start and end inside 64-weight blocks; 3 blocks of scales per 2 rows.
    check(40, 96, 64, true, &[1, 3, 8, 9, 17]);
}

#[test]
fn flex_nf4_dequantize_and_product_equal_the_host_reference_f32_absmax() {
    check(24, 160, 32, false, &[1, 2, 8, 12]);
}

#[test]
fn flex_nf4_product_spans_several_blocks_per_row_and_many_nested_groups() {
    // 300 × 576 (SmolLM2's width): 2,700 blocks, so the double-quantized scales span 11
    // groups of 256, and each row covers 9 whole blocks.
    check(300, 576, 64, true, &[1, 4]);
}

#[test]
fn flex_nf4_odd_d_in_takes_the_generic_path_with_the_same_result() {
    check(10, 65, 32, true, &[1, 5]);
    // 7 × 65 = 455 weights: the last block has an odd length, which the per-byte dequantize
    // loop does not take (it is decoded element by element).
    check(7, 65, 32, false, &[1, 3]);
}
