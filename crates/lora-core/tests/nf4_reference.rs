//! NF4 quantization against bitsandbytes 0.50.2 (fixtures/nf4, written by
//! `scripts/make_fixtures.py --parts nf4` with bitsandbytes' own CPU quantizer).

use std::collections::BTreeMap;
use std::path::PathBuf;

use burn::tensor::{Device, TensorData};
use lora_core::quant::dynamic_map::dynamic_map;
use lora_core::quant::nf4::Absmax;
use lora_core::quant::{NF4_CODE, Nf4Config, Nf4Weight, quantize_nf4};
use lora_core::tensor_io::{HostTensor, read_safetensors};
use lora_core::{BackendKind, BaseWeight, LoraLinear, select_device};

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/nf4")
}

fn reference() -> (BTreeMap<String, HostTensor>, serde_json::Value) {
    let t = read_safetensors(&fixtures().join("reference.safetensors")).unwrap();
    let meta: serde_json::Value =
        serde_json::from_slice(&std::fs::read(fixtures().join("reference.json")).unwrap()).unwrap();
    (t, meta)
}

fn bytes(t: &HostTensor) -> Vec<u8> {
    t.data.iter().map(|&v| v as u8).collect()
}

/// Asserts bit equality, reporting the first differing element (not the whole vector).
fn assert_same(got: &[f32], want: &[f32], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    if let Some(i) = (0..got.len()).find(|&i| got[i].to_bits() != want[i].to_bits()) {
        panic!("{what}: element {i}: {} vs {}", got[i], want[i]);
    }
}

/// Equal within `ulps` units in the last place (relative to the larger magnitude).
fn assert_close_ulps(got: &[f32], want: &[f32], ulps: f32, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let tol = ulps * f32::EPSILON * g.abs().max(w.abs());
        assert!((g - w).abs() <= tol, "{what}: element {i}: {g} vs {w}");
    }
}

fn device() -> Device {
    select_device(BackendKind::Flex).unwrap()
}

#[test]
fn code_tables_equal_bitsandbytes() {
    let (t, _) = reference();
    assert_eq!(t["nf4_code"].data, NF4_CODE.to_vec());
    assert_same(&dynamic_map(), &t["dynamic_code"].data, "dynamic map");
}

#[test]
fn packed_codes_and_block_statistics_match_bitsandbytes() {
    let (t, meta) = reference();
    for (name, case) in meta["cases"].as_object().unwrap() {
        let config = Nf4Config {
            block_size: case["block_size"].as_u64().unwrap() as usize,
            double_quant: case["double_quant"].as_bool().unwrap(),
        };
        let input = &t[&format!("{name}.input")].data;
        let q = quantize_nf4(input, &config).unwrap();
        assert_eq!(
            q.packed,
            bytes(&t[&format!("{name}.packed")]),
            "{name}: packed"
        );
        // Blocks whose scale both sides store identically (all, without double quantization).
        let mut same_scale = vec![true; input.len().div_ceil(config.block_size)];
        match &q.absmax {
            Absmax::F32(a) => assert_eq!(a, &t[&format!("{name}.absmax")].data, "{name}"),
            Absmax::Double { quantized, offset } => {
                // torch's f32 mean sums in a CPU-dependent order; ours is the correctly rounded
                // mean. They agree within an ulp.
                let want = t[&format!("{name}.offset")].data[0];
                assert_close_ulps(&[*offset], &[want], 1.0, &format!("{name}: offset"));
                // bitsandbytes' CPU 8-bit quantizer finds codes with an approximate O(1) search
                // (BinSearch `Direct2`) that now and then returns a code next to the nearest one;
                // ours is always the nearest. Every difference must be that case, and rare.
                let theirs = bytes(&t[&format!("{name}.qabsmax")]);
                let plain = Nf4Config {
                    double_quant: false,
                    ..config
                };
                let Absmax::F32(raw) = quantize_nf4(input, &plain).unwrap().absmax else {
                    unreachable!()
                };
                let code = dynamic_map();
                let mut differ = 0;
                for (i, (&ours, &bnb)) in quantized.codes.iter().zip(&theirs).enumerate() {
                    if ours != bnb {
                        differ += 1;
                        same_scale[i] = false;
                        let x = (raw[i] - offset) / quantized.absmax[i / 256];
                        let (d_ours, d_bnb) = (
                            (x - code[ours as usize]).abs(),
                            (x - code[bnb as usize]).abs(),
                        );
                        assert!(d_ours < d_bnb, "{name}: absmax code {i}: {ours} vs {bnb}");
                    }
                }
                assert!(
                    differ * 100 <= theirs.len(),
                    "{name}: {differ} codes differ"
                );
                let want = &t[&format!("{name}.absmax2")].data;
                assert_close_ulps(&quantized.absmax, want, 1.0, &format!("{name}: absmax2"));
            }
        }
        let want = &t[&format!("{name}.dequant")].data;
        if config.double_quant {
            // The offset's ulp carries into every absmax (|absmax| ≤ its largest value), and
            // |code| ≤ 1: each value is within a few ulp of the largest absmax.
            let scale = q.absmax.values().iter().fold(0.0f32, |m, a| m.max(a.abs()));
            for (i, (g, w)) in q.dequantize().iter().zip(want).enumerate() {
                if !same_scale[i / config.block_size] {
                    continue;
                }
                assert!(
                    (g - w).abs() <= 4.0 * f32::EPSILON * scale,
                    "{name}[{i}]: {g} vs {w}"
                );
            }
        } else {
            assert_same(&q.dequantize(), want, name);
        }
    }
}

/// The device path (shifts, masks, table lookups in burn ops) does the host's f32 operations; the
/// backend may contract `code · absmax₂ + offset` into a fused multiply-add: within 2 ulp.
#[test]
fn device_dequantization_equals_host_dequantization() {
    let (t, meta) = reference();
    let d = device();
    for (name, case) in meta["cases"].as_object().unwrap() {
        let config = Nf4Config {
            block_size: case["block_size"].as_u64().unwrap() as usize,
            double_quant: case["double_quant"].as_bool().unwrap(),
        };
        let input = &t[&format!("{name}.input")].data;
        let q = quantize_nf4(input, &config).unwrap();
        // The flat data as a [1, n] PyTorch-layout weight; dequantize() returns its transpose.
        let w = Nf4Weight::from_host(&q, [1, input.len()], &d);
        let got = w.dequantize().into_data().try_to_vec::<f32>().unwrap();
        assert_close_ulps(&got, &q.dequantize(), 2.0, name);
    }
}

#[test]
fn gaussian_quantization_error_matches_bitsandbytes() {
    let (t, meta) = reference();
    let input = &t["gauss_b64_dq.input"].data;
    let deq = quantize_nf4(input, &Nf4Config::default())
        .unwrap()
        .dequantize();
    let ours = input
        .iter()
        .zip(&deq)
        .map(|(a, b)| (a - b).abs() as f64)
        .sum::<f64>()
        / input.len() as f64;
    let theirs = meta["cases"]["gauss_b64_dq"]["mean_abs_error"]
        .as_f64()
        .unwrap();
    assert!((ours - theirs).abs() / theirs < 0.02, "{ours} vs {theirs}");
    // And it is the error QLoRA's code is known for on N(0, 1): about 0.07.
    assert!((0.06..0.085).contains(&ours), "{ours}");
}

#[test]
fn double_quantized_linear_stores_at_most_4_13_bits_per_weight() {
    let d = device();
    let w = burn::tensor::Tensor::<2>::random(
        [576, 1536],
        burn::tensor::Distribution::Normal(0.0, 0.02),
        &d,
    );
    let dq = Nf4Weight::quantize(w.clone(), &Nf4Config::default()).unwrap();
    assert!(dq.bits_per_weight() <= 4.13, "{}", dq.bits_per_weight());
    let plain = Nf4Weight::quantize(
        w,
        &Nf4Config {
            double_quant: false,
            ..Nf4Config::default()
        },
    )
    .unwrap();
    assert!(
        plain.bits_per_weight() <= 4.51,
        "{}",
        plain.bits_per_weight()
    );
}

#[test]
fn quantized_layer_forward_uses_the_dequantized_weight() {
    let d = device();
    let (d_in, d_out) = (96, 40);
    let w = burn::tensor::Tensor::<2>::random(
        [d_in, d_out],
        burn::tensor::Distribution::Normal(0.0, 1.0),
        &d,
    );
    let mut layer = LoraLinear::new(w.clone(), None);
    layer.quantize_nf4(&Nf4Config::default(), "layer").unwrap();
    assert!(layer.weight.is_quantized());
    // Host reference: quantize the PyTorch-layout data, dequantize, transpose back.
    let host_w = w.transpose().into_data().try_to_vec::<f32>().unwrap();
    let deq = quantize_nf4(&host_w, &Nf4Config::default())
        .unwrap()
        .dequantize();
    let got = layer
        .weight
        .val()
        .transpose()
        .into_data()
        .try_to_vec::<f32>()
        .unwrap();
    assert_eq!(got, deq);
    let x = burn::tensor::Tensor::<2>::from_data(
        TensorData::new(
            (0..3 * d_in).map(|i| (i as f32 * 0.37).sin()).collect(),
            [3, d_in],
        ),
        &d,
    );
    let y = layer.forward(x.clone());
    let expected = x.matmul(BaseWeight::dense(layer.weight.val()).val());
    let diff = (y - expected).abs().max().into_scalar::<f32>();
    assert!(diff < 1e-5, "{diff}");
}
