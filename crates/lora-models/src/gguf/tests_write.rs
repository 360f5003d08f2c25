//! Tests of the writer and the quantizers: files read back by our own reader, blocks against the
//! reference blocks of gguf-py and llama.cpp in `fixtures/gguf-quants.safetensors` (made by
//! `scripts/make_fixtures.py --parts gguf-quants`).

use safetensors::SafeTensors;

use super::testutil::fixture;
use super::*;

fn every_value_type() -> Vec<(&'static str, GgufValue)> {
    vec![
        ("t.u8", GgufValue::U8(200)),
        ("t.i8", GgufValue::I8(-100)),
        ("t.u16", GgufValue::U16(60000)),
        ("t.i16", GgufValue::I16(-30000)),
        ("t.u32", GgufValue::U32(4_000_000_000)),
        ("t.i32", GgufValue::I32(-2_000_000_000)),
        ("t.f32", GgufValue::F32(-1.5e-7)),
        ("t.bool", GgufValue::Bool(true)),
        ("t.string", GgufValue::String("café 東京".into())),
        ("t.u64", GgufValue::U64(u64::MAX)),
        ("t.i64", GgufValue::I64(i64::MIN)),
        ("t.f64", GgufValue::F64(std::f64::consts::PI)),
        (
            "t.array_str",
            GgufValue::Array(vec![
                GgufValue::String("a".into()),
                GgufValue::String("".into()),
            ]),
        ),
        (
            "t.array_nested",
            GgufValue::Array(vec![
                GgufValue::Array(vec![GgufValue::I32(1), GgufValue::I32(2)]),
                GgufValue::Array(vec![GgufValue::I32(3)]),
            ]),
        ),
    ]
}

#[test]
fn a_written_file_reads_back_with_every_value_type_shape_and_value() {
    let mut w = GgufWriter::new();
    for (k, v) in every_value_type() {
        w.set(k, v).unwrap();
    }
    let matrix: Vec<f32> = (0..3 * 64).map(|i| (i as f32 * 0.37).sin()).collect();
    w.add_tensor("m", &[3, 64], GgmlType::F32, matrix.clone())
        .unwrap();
    w.add_tensor("v", &[5], GgmlType::F32, vec![1.0, -2.0, 3.5, 0.0, 7.25])
        .unwrap();
    w.add_tensor("h", &[2, 64], GgmlType::F16, matrix[..128].to_vec())
        .unwrap();
    let f = GgufFile::from_bytes("mem.gguf", w.to_bytes()).unwrap();
    assert_eq!(f.version(), 3);
    for (k, v) in every_value_type() {
        assert_eq!(f.value(k), Some(&v), "{k}");
    }
    assert_eq!(f.metadata().len(), every_value_type().len());
    assert_eq!(f.alignment(), 32);
    assert!(f.value("general.alignment").is_none());
    let names: Vec<&str> = f.tensors().iter().map(|t| t.name.as_str()).collect();
    assert_eq!(names, ["m", "v", "h"]);
    let m = f.tensor_info("m").unwrap();
    assert_eq!((m.dims.clone(), m.dtype), (vec![3, 64], GgmlType::F32));
    assert_eq!(f.tensor_f32("m").unwrap().1, matrix);
    assert_eq!(
        f.tensor_f32("v").unwrap(),
        (vec![5], vec![1.0, -2.0, 3.5, 0.0, 7.25])
    );
    let h = f.tensor_f32("h").unwrap().1;
    assert!(
        h.iter()
            .zip(&matrix)
            .all(|(a, b)| (a - b).abs() <= 1e-3 * b.abs().max(1e-3))
    );
    for t in f.tensors() {
        assert_eq!((t.offset - f.data_start()) % 32, 0, "{}", t.name);
    }
}

#[test]
fn the_alignment_key_sets_every_tensor_offset() {
    let mut w = GgufWriter::new();
    w.set_alignment(256).unwrap();
    w.add_tensor("a", &[3], GgmlType::F32, vec![1.0; 3])
        .unwrap();
    w.add_tensor("b", &[32], GgmlType::Q8_0, vec![15.875; 32])
        .unwrap();
    let bytes = w.to_bytes();
    assert_eq!(bytes.len() % 256, 0, "the file ends padded");
    let f = GgufFile::from_bytes("mem.gguf", bytes).unwrap();
    assert_eq!(f.alignment(), 256);
    assert_eq!(f.value("general.alignment"), Some(&GgufValue::U32(256)));
    assert_eq!(f.data_start() % 256, 0);
    for t in f.tensors() {
        assert_eq!(t.offset % 256, 0, "{}", t.name);
    }
    // 15.875 = 127 · 0.125: the Q8_0 scale is exact in f16.
    assert_eq!(f.tensor_f32("b").unwrap().1, vec![15.875; 32]);
    assert!(w.set_alignment(48).is_err());
    assert!(w.set("general.alignment", GgufValue::U32(64)).is_err());
}

#[test]
fn setting_a_key_twice_replaces_it_in_place() {
    let mut w = GgufWriter::new();
    w.set_str("a", "1").unwrap();
    w.set_str("b", "2").unwrap();
    w.set_str("a", "3").unwrap();
    let keys: Vec<_> = w
        .metadata()
        .iter()
        .map(|(k, v)| (k.as_str(), v.clone()))
        .collect();
    assert_eq!(
        keys,
        [
            ("a", GgufValue::String("3".into())),
            ("b", GgufValue::String("2".into()))
        ]
    );
}

#[test]
fn invalid_tensors_and_values_are_errors_naming_them() {
    let mut w = GgufWriter::new();
    let e = w
        .add_tensor("q", &[2, 48], GgmlType::Q8_0, vec![0.0; 96])
        .unwrap_err();
    assert!(
        e.to_string().contains("\"q\"") && e.to_string().contains("Q8_0"),
        "{e}"
    );
    let e = w
        .add_tensor("nan", &[2], GgmlType::F32, vec![0.0, f32::NAN])
        .unwrap_err();
    assert!(e.to_string().contains("value 1 is NaN"), "{e}");
    let e = w
        .add_tensor("big", &[1], GgmlType::F16, vec![1e6])
        .unwrap_err();
    assert!(e.to_string().contains("f16"), "{e}");
    assert!(
        w.add_tensor("short", &[2, 3], GgmlType::F32, vec![0.0; 5])
            .is_err()
    );
    assert!(
        w.add_tensor("zero", &[0, 3], GgmlType::F32, vec![])
            .is_err()
    );
    assert!(
        w.add_tensor("q4_1", &[32], GgmlType::Q4_1, vec![0.0; 32])
            .is_err()
    );
    assert!(
        w.add_tensor("x".repeat(64), &[1], GgmlType::F32, vec![0.0])
            .is_err()
    );
    w.add_tensor("ok", &[1], GgmlType::F32, vec![0.0]).unwrap();
    assert!(w.add_tensor("ok", &[1], GgmlType::F32, vec![0.0]).is_err());
    let mixed = GgufValue::Array(vec![GgufValue::U32(1), GgufValue::I32(1)]);
    let e = w.set("k", mixed).unwrap_err();
    assert!(e.to_string().contains("\"k\""), "{e}");
}

#[test]
fn write_file_is_atomic_and_leaves_no_temporary_file() {
    let dir = std::env::temp_dir().join(format!("gguf-write-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("x.gguf");
    let mut w = GgufWriter::new();
    w.add_tensor("a", &[4], GgmlType::F32, vec![1.0, 2.0, 3.0, 4.0])
        .unwrap();
    let n = w.write_file(&path).unwrap();
    assert_eq!(std::fs::metadata(&path).unwrap().len(), n);
    assert_eq!(
        GgufFile::open(&path).unwrap().tensor_f32("a").unwrap().1,
        [1.0, 2.0, 3.0, 4.0]
    );
    let left: Vec<_> = std::fs::read_dir(&dir).unwrap().collect();
    assert_eq!(left.len(), 1, "only the file itself");
    // A directory that does not exist: an error naming the path, nothing left behind.
    let e = w.write_file(&dir.join("missing/y.gguf")).unwrap_err();
    assert!(e.to_string().contains("missing/y.gguf"), "{e}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn permute_qk_and_unpermute_qk_are_inverse() {
    let (rows, cols, n_head) = (24, 5, 3);
    let data: Vec<f32> = (0..rows * cols).map(|i| i as f32).collect();
    let p = permute_qk(&data, rows, cols, n_head).unwrap();
    assert_ne!(p, data);
    assert_eq!(unpermute_qk(&p, rows, cols, n_head).unwrap(), data);
    // Head 0, head_dim 8: GGUF row 2i + j holds HF row 4j + i; GGUF row 1 is HF row 4.
    assert_eq!(p[cols..2 * cols], data[4 * cols..5 * cols]);
    assert!(permute_qk(&data, rows, cols, 5).is_err());
}

/// The fixture's raw blocks of `name`, or `None` (with a message) if it is absent.
fn reference_blocks(st: &SafeTensors, name: &str) -> Option<Vec<u8>> {
    match st.tensor(name) {
        Ok(t) => Some(t.data().to_vec()),
        Err(_) => {
            eprintln!(
                "skipping {name}: not in the fixture (llama-cpp-python was not installed when it was made)"
            );
            None
        }
    }
}

#[test]
fn quantized_blocks_are_bit_identical_to_gguf_py_and_llama_cpp() {
    let bytes = std::fs::read(fixture("gguf-quants.safetensors")).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let src = st.tensor("source").unwrap();
    let x: Vec<f32> = src
        .data()
        .as_chunks::<4>()
        .0
        .iter()
        .map(|b| f32::from_le_bytes(*b))
        .collect();
    assert_eq!(x.len(), 8 * 512);
    let mut checked = 0;
    for (name, dtype) in [
        ("f16", GgmlType::F16),
        ("bf16", GgmlType::BF16),
        ("q8_0", GgmlType::Q8_0),
        ("q4_0", GgmlType::Q4_0),
        ("q5_0", GgmlType::Q5_0),
        ("q4_k", GgmlType::Q4_K),
        ("q6_k", GgmlType::Q6_K),
    ] {
        let Some(expected) = reference_blocks(&st, name) else {
            continue;
        };
        let ours = quantize(dtype, &x).unwrap();
        assert_eq!(ours.len(), expected.len(), "{name}");
        let (bs, ts) = (dtype.block_size(), dtype.type_size());
        let differing: Vec<usize> = (0..ours.len() / ts)
            .filter(|&b| ours[b * ts..(b + 1) * ts] != expected[b * ts..(b + 1) * ts])
            .collect();
        assert!(
            differing.is_empty(),
            "{name}: blocks {differing:?} of {} differ (values {}..)",
            ours.len() / ts,
            differing.first().map_or(0, |b| b * bs)
        );
        // And our dequantizer reads them back within one quantization step.
        let back = dequantize(dtype, &ours).unwrap();
        assert_eq!(back.len(), x.len());
        checked += 1;
    }
    assert!(checked >= 5, "only {checked} types had reference blocks");
}
