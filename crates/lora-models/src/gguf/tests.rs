//! Unit tests of the GGUF reader on files built in memory. Expected dequantized values come
//! from gguf-py's reference `gguf.quants.dequantize`
//! (`scripts/gguf_expected.py --parts synthetic`).

use super::testutil::GgufBuilder;
use super::*;
use half::{bf16, f16};

fn h(x: f32) -> [u8; 2] {
    f16::from_f32(x).to_le_bytes()
}

fn s(x: &str) -> GgufValue {
    GgufValue::String(x.into())
}

/// Asserts `got` equals `want` to 1e-6 relative (absolute below 1).
pub(super) fn assert_close(got: f32, want: f64, what: &str) {
    let tol = 1e-6 * want.abs().max(1.0);
    assert!(
        (got as f64 - want).abs() <= tol,
        "{what}: got {got}, want {want}"
    );
}

#[test]
fn q8_0_block_is_scale_times_int8() {
    let mut block = h(0.5).to_vec();
    block.extend((0..32).map(|i| (i as i8 - 16) as u8));
    let y = dequantize(GgmlType::Q8_0, &block).unwrap();
    let want: Vec<f32> = (0..32).map(|i| 0.5 * (i as f32 - 16.0)).collect();
    assert_eq!(y, want);
}

#[test]
fn q4_0_low_nibbles_are_the_first_half_and_offset_by_8() {
    let mut block = h(2.0).to_vec();
    // byte j: low nibble j (element j), high nibble 15 - j (element j + 16)
    block.extend((0..16u8).map(|j| j | ((15 - j) << 4)));
    let y = dequantize(GgmlType::Q4_0, &block).unwrap();
    for j in 0..16 {
        assert_eq!(y[j], 2.0 * (j as f32 - 8.0));
        assert_eq!(y[j + 16], 2.0 * (7.0 - j as f32));
    }
}

#[test]
fn q4_1_is_scale_times_nibble_plus_min() {
    let mut block = [h(0.25), h(-1.0)].concat();
    block.extend((0..16u8).map(|j| j | (3 << 4)));
    let y = dequantize(GgmlType::Q4_1, &block).unwrap();
    for j in 0..16 {
        assert_eq!(y[j], 0.25 * j as f32 - 1.0);
        assert_eq!(y[j + 16], 0.25 * 3.0 - 1.0);
    }
}

#[test]
fn plain_float_types_are_read_little_endian() {
    let vals = [1.5f32, -2.25, 0.0, 65504.0];
    let f32s: Vec<u8> = vals.iter().flat_map(|v| v.to_le_bytes()).collect();
    let f16s: Vec<u8> = vals.iter().flat_map(|&v| h(v)).collect();
    let bf16s: Vec<u8> = vals
        .iter()
        .flat_map(|&v| bf16::from_f32(v).to_le_bytes())
        .collect();
    assert_eq!(dequantize(GgmlType::F32, &f32s).unwrap(), vals);
    assert_eq!(dequantize(GgmlType::F16, &f16s).unwrap(), vals);
    assert_eq!(
        dequantize(GgmlType::BF16, &bf16s).unwrap(),
        [1.5, -2.25, 0.0, 65536.0]
    );
}

/// `(type id, sum of all values, [(index, value)])` over two LCG blocks of that type.
type Expected = (u32, f64, &'static [(usize, f64)]);

/// From `scripts/gguf_expected.py --parts synthetic`.
#[rustfmt::skip]
const SYNTHETIC: &[Expected] = &[
    (2, 11.5572509765625, &[(0, 0.0), (5, -0.02459716796875), (10, -0.07379150390625), (15, 0.061492919921875), (20, -0.012298583984375), (25, -0.086090087890625), (30, 0.07379150390625), (35, 1.0), (40, 3.5), (45, -1.0), (50, 3.0), (55, -3.0), (60, -1.5)]),
    (3, 137.52769470214844, &[(0, 0.00360107421875), (5, 0.065093994140625), (10, 0.0281982421875), (15, 0.05279541015625), (20, 0.089691162109375), (25, 0.1265869140625), (30, 0.00360107421875), (35, 1.5007100105285645), (40, 7.5007100105285645), (45, 7.5007100105285645), (50, 4.0007100105285645), (55, 4.5007100105285645), (60, 1.5007100105285645)]),
    (6, -3.23748779296875, &[(0, 0.07379150390625), (5, 0.02459716796875), (10, 0.159881591796875), (15, -0.098388671875), (20, 0.061492919921875), (25, 0.135284423828125), (30, -0.086090087890625), (35, 5.5), (40, 0.5), (45, 7.5), (50, 1.5), (55, 3.5), (60, 1.5)]),
    (7, 230.3890151977539, &[(0, 0.286468505859375), (5, 0.15118408203125), (10, 0.10198974609375), (15, -0.02099609375), (20, 0.00360107421875), (25, 0.040496826171875), (30, -0.008697509765625), (35, 1.5007100105285645), (40, 6.5007100105285645), (45, 12.000709533691406), (50, 0.5007100105285645), (55, 11.000709533691406), (60, 9.000709533691406)]),
    (8, 17.011444091796875, &[(0, -0.2459716796875), (5, 0.824005126953125), (10, -0.91009521484375), (15, -1.561920166015625), (20, 0.8363037109375), (25, 1.217559814453125), (30, -0.295166015625), (35, 15.5), (40, 29.5), (45, 51.0), (50, -14.0), (55, -12.5), (60, 12.5)]),
    (12, 21950.750677108765, &[(0, 0.182373046875), (37, 4.494354248046875), (74, 3.516448974609375), (111, 1.18603515625), (148, 3.357177734375), (185, 7.38153076171875), (222, 1.04864501953125), (259, 28.96307945251465), (296, 129.9794158935547), (333, 223.96449279785156), (370, 10.955268859863281), (407, 15.980829238891602), (444, 35.9573974609375), (481, 40.4957389831543)]),
    (13, 71134.57652521133, &[(0, 14.36712646484375), (37, 3.915374755859375), (74, 14.4481201171875), (111, 13.39398193359375), (148, 1.7049560546875), (185, 0.731597900390625), (222, 0.31976318359375), (259, 175.96734619140625), (296, 186.99432373046875), (333, 370.9701843261719), (370, 16.47657012939453), (407, 402.9758605957031), (444, 840.9865112304688), (481, 143.96734619140625)]),
    (14, 8205.721801757812, &[(0, 13.0364990234375), (37, 17.98052978515625), (74, 6.456756591796875), (111, 11.499176025390625), (148, 20.14508056640625), (185, -43.869049072265625), (222, -9.383819580078125), (259, -93.0), (296, -49.0), (333, -203.0), (370, -102.0), (407, 913.5), (444, -56.0), (481, -588.0)]),
];

/// Byte offsets of each type's half-float scale fields (pinned to finite values).
fn scale_offsets(t: GgmlType) -> &'static [usize] {
    match t {
        GgmlType::Q4_1 | GgmlType::Q5_1 | GgmlType::Q4_K | GgmlType::Q5_K => &[0, 2],
        GgmlType::Q6_K => &[208],
        _ => &[0],
    }
}

fn lcg_bytes(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed;
    (0..n)
        .map(|_| {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((x >> 33) & 0xFF) as u8
        })
        .collect()
}

#[test]
fn every_quantized_type_matches_gguf_py_on_synthetic_blocks() {
    const HALVES: [f32; 4] = [0.0123, -0.0456, 0.5, 0.00071];
    for &(id, sum, picks) in SYNTHETIC {
        let t = GgmlType::from_id(id).unwrap();
        let ts = t.type_size();
        let mut data = lcg_bytes(2 * ts, id as u64);
        for b in 0..2 {
            for (k, &o) in scale_offsets(t).iter().enumerate() {
                data[b * ts + o..b * ts + o + 2].copy_from_slice(&h(HALVES[(b * 2 + k) % 4]));
            }
        }
        let y = dequantize(t, &data).unwrap();
        assert_eq!(y.len(), 2 * t.block_size(), "{t}");
        let got_sum: f64 = y.iter().map(|&v| v as f64).sum();
        assert!(
            (got_sum - sum).abs() < 1e-6 * sum.abs().max(1.0),
            "{t} sum {got_sum} vs {sum}"
        );
        for &(i, want) in picks {
            assert_close(y[i], want, &format!("{t}[{i}]"));
        }
    }
}

fn one_tensor_file() -> GgufBuilder {
    // ne = [32, 2]: two rows of one Q8_0 block each; row r holds r·32 + i at scale 1.
    let mut data = Vec::new();
    for r in 0..2 {
        data.extend(h(1.0));
        data.extend((0..32).map(|i| (r * 32 + i) as u8));
    }
    GgufBuilder::new()
        .kv("general.architecture", s("llama"))
        .kv("llama.block_count", GgufValue::I32(30))
        .kv("llama.rope.freq_base", GgufValue::F32(1e5))
        .kv(
            "tokenizer.ggml.tokens",
            GgufValue::Array(vec![s("a"), s("b")]),
        )
        .kv(
            "tokenizer.ggml.token_type",
            GgufValue::Array(vec![GgufValue::I32(1), GgufValue::I32(3)]),
        )
        .kv(
            "nested",
            GgufValue::Array(vec![
                GgufValue::Array(vec![GgufValue::U8(1)]),
                GgufValue::Array(vec![]),
            ]),
        )
        .kv("big", GgufValue::U64(u64::MAX))
        .kv("neg", GgufValue::I64(-5))
        .kv("flag", GgufValue::Bool(true))
        .kv("pi", GgufValue::F64(3.25))
        .tensor("w", &[32, 2], 8, data)
        .tensor(
            "norm",
            &[3],
            0,
            [1.0f32, 2.0, 3.0]
                .iter()
                .flat_map(|v| v.to_le_bytes())
                .collect(),
        )
}

#[test]
fn metadata_of_every_value_type_reads_back() {
    let f = GgufFile::from_bytes("t.gguf", one_tensor_file().build()).unwrap();
    assert_eq!(f.version(), 3);
    assert_eq!(f.architecture().unwrap(), "llama");
    assert_eq!(f.get_u32("llama.block_count").unwrap(), 30); // stored as i32
    assert_eq!(f.get_f32("llama.rope.freq_base").unwrap(), 1e5);
    assert_eq!(
        f.get_str_array("tokenizer.ggml.tokens").unwrap(),
        ["a", "b"]
    );
    assert_eq!(
        f.get_i32_array("tokenizer.ggml.token_type").unwrap(),
        [1, 3]
    );
    assert_eq!(
        f.get::<Vec<Vec<u8>>>("nested").unwrap(),
        vec![vec![1], vec![]]
    );
    assert_eq!(f.get_u64("big").unwrap(), u64::MAX);
    assert_eq!(f.get_i64("neg").unwrap(), -5);
    assert!(f.get_bool("flag").unwrap());
    assert_eq!(f.get_f32("pi").unwrap(), 3.25);
    assert_eq!(f.get_opt::<u32>("absent").unwrap(), None);
}

#[test]
fn getters_name_the_key_when_missing_or_mistyped() {
    let f = GgufFile::from_bytes("t.gguf", one_tensor_file().build()).unwrap();
    let e = f.get_u32("neg").unwrap_err().to_string();
    assert!(
        e.contains("t.gguf") && e.contains("\"neg\"") && e.contains("u32"),
        "{e}"
    );
    assert!(matches!(f.get_u32("big"), Err(GgufError::WrongType { .. })));
    assert!(matches!(
        f.get_str("flag"),
        Err(GgufError::WrongType { .. })
    ));
    let e = f.get_u32("absent").unwrap_err();
    assert!(matches!(e, GgufError::MissingKey { ref key, .. } if key == "absent"));
}

#[test]
fn dims_are_ne_reversed_and_values_are_in_file_order() {
    let f = GgufFile::from_bytes("t.gguf", one_tensor_file().build()).unwrap();
    let info = f.tensor_info("w").unwrap();
    assert_eq!(info.dims, [2, 32]);
    assert_eq!(info.dtype, GgmlType::Q8_0);
    assert_eq!(info.n_bytes, 68);
    assert_eq!(info.offset, f.data_start());
    assert_eq!(f.tensor_info("norm").unwrap().offset, f.data_start() + 96); // 68 padded to 32
    let (shape, values) = f.tensor_f32("w").unwrap();
    assert_eq!(shape, [2, 32]);
    assert_eq!(values, (0..64).map(|v| v as f32).collect::<Vec<_>>());
    assert_eq!(
        f.tensor_f32("norm").unwrap(),
        (vec![3], vec![1.0, 2.0, 3.0])
    );
    assert!(matches!(
        f.tensor_f32("nope"),
        Err(GgufError::MissingTensor { .. })
    ));
}

#[test]
fn general_alignment_moves_the_data_section() {
    let b = one_tensor_file().kv("general.alignment", GgufValue::U32(64));
    let f = GgufFile::from_bytes("t.gguf", b.build()).unwrap();
    assert_eq!(f.alignment(), 64);
    assert_eq!(f.data_start() % 64, 0);
    assert_eq!(f.tensor_f32("norm").unwrap().1, [1.0, 2.0, 3.0]);
    let bad = one_tensor_file().kv("general.alignment", GgufValue::U32(48));
    assert!(matches!(
        GgufFile::from_bytes("t", bad.build()),
        Err(GgufError::BadAlignment { .. })
    ));
}

#[test]
fn open_reads_a_file_from_disk() {
    let path = std::env::temp_dir().join(format!("gguf-open-{}.gguf", std::process::id()));
    std::fs::write(&path, one_tensor_file().build()).unwrap();
    let f = GgufFile::open(&path);
    std::fs::remove_file(&path).ok();
    assert_eq!(f.unwrap().tensors().len(), 2);
    let e = GgufFile::open("/nonexistent/x.gguf")
        .unwrap_err()
        .to_string();
    assert!(e.contains("/nonexistent/x.gguf"), "{e}");
}

#[test]
fn wrong_magic_and_versions_are_rejected() {
    let mut bytes = one_tensor_file().build();
    bytes[0] = b'X';
    assert!(matches!(
        GgufFile::from_bytes("t", bytes),
        Err(GgufError::BadMagic { .. })
    ));
    assert!(matches!(
        GgufFile::from_bytes("t", b"GG".to_vec()),
        Err(GgufError::BadMagic { .. })
    ));
    for version in [1, 4] {
        let mut b = one_tensor_file();
        b.version = version;
        let r = GgufFile::from_bytes("t", b.build());
        assert!(matches!(r, Err(GgufError::UnsupportedVersion { version: v, .. }) if v == version));
    }
    let mut b = one_tensor_file();
    b.version = 2;
    assert!(GgufFile::from_bytes("t", b.build()).is_ok());
}

#[test]
fn every_truncation_is_an_error_not_a_panic() {
    let bytes = one_tensor_file().build();
    for len in 0..bytes.len() {
        let r = GgufFile::from_bytes("t.gguf", bytes[..len].to_vec());
        assert!(r.is_err(), "prefix of {len} bytes parsed");
    }
}

#[test]
fn corrupted_bytes_never_panic() {
    let bytes = one_tensor_file().build();
    let noise = lcg_bytes(bytes.len() * 4, 7);
    for (i, pos) in (0..bytes.len()).enumerate() {
        for value in [0x00, 0xFF, noise[i]] {
            let mut b = bytes.clone();
            b[pos] = value;
            if let Ok(f) = GgufFile::from_bytes("t", b) {
                for t in f.tensors() {
                    let _ = f.tensor_f32(&t.name);
                }
            }
        }
    }
}

#[test]
fn unknown_tensor_type_id_names_the_tensor() {
    let b = GgufBuilder::new().tensor("blk.0.x", &[32], 4, vec![0; 32]);
    let e = GgufFile::from_bytes("t.gguf", b.build()).unwrap_err();
    assert!(matches!(e, GgufError::UnknownTensorType { type_id: 4, .. }));
    assert!(e.to_string().contains("blk.0.x"));
}

#[test]
fn known_but_unsupported_type_opens_and_errors_on_dequantize() {
    let b = GgufBuilder::new().tensor("q2", &[256], 10, vec![0; 84]); // Q2_K
    let f = GgufFile::from_bytes("t.gguf", b.build()).unwrap();
    let e = f.tensor_f32("q2").unwrap_err();
    assert!(matches!(
        e,
        GgufError::Unsupported {
            dtype: GgmlType::Q2_K,
            ..
        }
    ));
    assert!(e.to_string().contains("\"q2\"") && e.to_string().contains("Q2_K"));
    assert_eq!(f.tensor_bytes("q2").unwrap().len(), 84);
}

#[test]
fn tensor_data_past_eof_is_rejected() {
    let mut bytes = GgufBuilder::new().tensor("w", &[8], 0, vec![0; 32]).build();
    bytes.truncate(bytes.len() - 1);
    let e = GgufFile::from_bytes("t.gguf", bytes).unwrap_err();
    assert!(matches!(e, GgufError::TensorOutOfBounds { .. }), "{e}");
    assert!(e.to_string().contains("\"w\""));
}

/// Replaces the 8 bytes after the first occurrence of `marker` in `bytes`.
fn patch_after(bytes: &mut [u8], marker: &[u8], value: u64) {
    let at = bytes
        .windows(marker.len())
        .position(|w| w == marker)
        .unwrap()
        + marker.len();
    bytes[at..at + 8].copy_from_slice(&value.to_le_bytes());
}

#[test]
fn huge_offsets_and_counts_are_rejected_before_allocating() {
    // Tensor offset (last u64 of the info, right after the type id) set far past the end.
    let mut bytes = GgufBuilder::new().tensor("w", &[8], 0, vec![0; 32]).build();
    let type_pos = 4 + 4 + 8 + 8 + 8 + 1 + 4 + 8;
    bytes[type_pos + 4..type_pos + 12].copy_from_slice(&(1u64 << 62).to_le_bytes());
    assert!(matches!(
        GgufFile::from_bytes("t", bytes),
        Err(GgufError::TensorOutOfBounds { .. })
    ));
    // Offset that is in bounds but not aligned.
    let mut bytes = GgufBuilder::new().tensor("w", &[8], 0, vec![0; 64]).build();
    bytes[type_pos + 4..type_pos + 12].copy_from_slice(&4u64.to_le_bytes());
    assert!(matches!(
        GgufFile::from_bytes("t", bytes),
        Err(GgufError::TensorOutOfBounds { .. })
    ));
    // Array count, string length, tensor count, kv count.
    let b = GgufBuilder::new().kv("arr", GgufValue::Array(vec![s("x")]));
    let mut bytes = b.build();
    patch_after(&mut bytes, b"arr\x09\0\0\0\x08\0\0\0", u64::MAX / 2);
    assert!(matches!(
        GgufFile::from_bytes("t", bytes),
        Err(GgufError::ImplausibleCount { .. })
    ));
    let mut bytes = GgufBuilder::new().kv("k", s("v")).build();
    patch_after(&mut bytes, b"k\x08\0\0\0", u64::MAX);
    assert!(matches!(
        GgufFile::from_bytes("t", bytes),
        Err(GgufError::ImplausibleCount { .. })
    ));
    for field in [8, 16] {
        let mut bytes = GgufBuilder::new().build();
        bytes[field..field + 8].copy_from_slice(&(1u64 << 40).to_le_bytes());
        assert!(matches!(
            GgufFile::from_bytes("t", bytes),
            Err(GgufError::ImplausibleCount { .. })
        ));
    }
}

#[test]
fn malformed_structures_are_rejected() {
    let dup = GgufBuilder::new()
        .kv("k", GgufValue::U8(1))
        .kv("k", GgufValue::U8(2));
    assert!(matches!(
        GgufFile::from_bytes("t", dup.build()),
        Err(GgufError::DuplicateKey { .. })
    ));
    let dup = GgufBuilder::new()
        .tensor("w", &[1], 0, vec![0; 4])
        .tensor("w", &[1], 0, vec![0; 4]);
    assert!(matches!(
        GgufFile::from_bytes("t", dup.build()),
        Err(GgufError::DuplicateTensor { .. })
    ));
    let ragged = GgufBuilder::new().tensor("w", &[16, 2], 8, vec![0; 34]); // ne[0] < 32
    assert!(matches!(
        GgufFile::from_bytes("t", ragged.build()),
        Err(GgufError::BadShape { .. })
    ));
    let zero = GgufBuilder::new().tensor("w", &[0, 1 << 40, 1 << 40], 0, vec![]);
    assert!(matches!(
        GgufFile::from_bytes("t", zero.build()),
        Err(GgufError::BadShape { .. })
    ));
    let five = GgufBuilder::new().tensor("w", &[1, 1, 1, 1, 1], 0, vec![0; 4]);
    assert!(matches!(
        GgufFile::from_bytes("t", five.build()),
        Err(GgufError::BadShape { .. })
    ));
    let mut deep = GgufValue::U8(0);
    for _ in 0..10 {
        deep = GgufValue::Array(vec![deep]);
    }
    let deep = GgufBuilder::new().kv("deep", deep);
    assert!(matches!(
        GgufFile::from_bytes("t", deep.build()),
        Err(GgufError::BadValue { .. })
    ));
    let mut bytes = GgufBuilder::new().kv("k", GgufValue::U8(1)).build();
    let at = bytes.iter().position(|&b| b == b'k').unwrap() + 1;
    bytes[at..at + 4].copy_from_slice(&13u32.to_le_bytes()); // value type 13 does not exist
    assert!(matches!(
        GgufFile::from_bytes("t", bytes),
        Err(GgufError::BadValue { .. })
    ));
    let mut bytes = GgufBuilder::new().kv("k", s("ab")).build();
    let at = bytes.windows(2).position(|w| w == b"ab").unwrap();
    bytes[at] = 0xFF;
    assert!(matches!(
        GgufFile::from_bytes("t", bytes),
        Err(GgufError::InvalidUtf8 { .. })
    ));
}

/// llama.cpp `convert_hf_to_gguf.py` `LlamaModel.permute`, written out for the round trip.
fn permute(w: &[f32], rows: usize, cols: usize, n_head: usize) -> Vec<f32> {
    let (hd, half) = (rows / n_head, rows / n_head / 2);
    let mut out = vec![0.0; w.len()];
    for h in 0..n_head {
        for j in 0..2 {
            for i in 0..half {
                // HF row h·hd + j·half + i goes to GGUF row h·hd + 2i + j
                let (src, dst) = ((h * hd + j * half + i) * cols, (h * hd + 2 * i + j) * cols);
                out[dst..dst + cols].copy_from_slice(&w[src..src + cols]);
            }
        }
    }
    out
}

#[test]
fn unpermute_qk_regroups_interleaved_rotary_pairs() {
    // One head of size 4, one column: GGUF rows [x0, y0, x1, y1] -> HF rows [x0, x1, y0, y1].
    assert_eq!(
        unpermute_qk(&[0., 1., 2., 3.], 4, 1, 1).unwrap(),
        [0., 2., 1., 3.]
    );
    let (rows, cols, heads) = (24, 5, 3);
    let hf: Vec<f32> = (0..rows * cols).map(|v| v as f32).collect();
    assert_eq!(
        unpermute_qk(&permute(&hf, rows, cols, heads), rows, cols, heads).unwrap(),
        hf
    );
    for (rows, cols, heads, len) in [
        (24, 5, 0, 120),
        (24, 5, 5, 120),
        (6, 1, 2, 6),
        (24, 5, 3, 119),
    ] {
        let r = unpermute_qk(&vec![0.0; len], rows, cols, heads);
        assert!(
            matches!(r, Err(GgufError::BadPermutation { .. })),
            "{rows} {cols} {heads} {len}"
        );
    }
}
