//! Tests against reference data from gguf-py and transformers: `fixtures/dequant.gguf` (every
//! supported type) and, when present, the real SmolLM2 GGUF with
//! `fixtures/smollm2-reference.json` and values from
//! `scripts/gguf_expected.py --parts real`.

use super::tests::assert_close;
use super::testutil::{fixture, real_model_path, smollm2_reference};
use super::*;

#[test]
fn smollm2_metadata_and_tensor_table() {
    let Some(path) = real_model_path() else {
        return;
    };
    let f = GgufFile::open(path).unwrap();
    assert_eq!(f.tensors().len(), 272);
    assert_eq!(f.get_u32("llama.attention.head_count").unwrap(), 9);
    assert_eq!(f.get_u32("llama.attention.head_count_kv").unwrap(), 3);
    assert_eq!(
        f.get_str_array("tokenizer.ggml.tokens").unwrap().len(),
        49152
    );
    assert_eq!(f.data_start(), 1785664);
    let emb = f.tensor_info("token_embd.weight").unwrap();
    assert_eq!(
        (emb.dims.as_slice(), emb.dtype),
        ([49152, 576].as_slice(), GgmlType::Q8_0)
    );
    let k = f.tensor_info("blk.0.attn_k.weight").unwrap();
    assert_eq!(
        (k.dims.as_slice(), k.dtype),
        ([192, 576].as_slice(), GgmlType::Q4_1)
    );
    assert!(f.tensor_info("output.weight").is_none()); // tied embeddings
    let count = |t| f.tensors().iter().filter(|i| i.dtype == t).count();
    assert_eq!((count(GgmlType::Q4_1), count(GgmlType::F32)), (210, 61));
}

#[test]
fn smollm2_dequantization_matches_gguf_py() {
    let Some(path) = real_model_path() else {
        return;
    };
    let f = GgufFile::open(path).unwrap();
    let (shape, emb) = f.tensor_f32("token_embd.weight").unwrap();
    assert_eq!(shape, [49152, 576]);
    let sum: f64 = emb.iter().map(|&v| v as f64).sum();
    assert!((sum - -15353.04449415207).abs() < 1e-3, "{sum}");
    let row = [
        0.1096038818359375,
        0.017436981201171875,
        -0.09465789794921875,
        0.08220291137695312,
    ];
    for (i, want) in row.into_iter().enumerate() {
        assert_close(emb[504 * 576 + i], want, "token_embd[504]");
    }
    let (_, q) = f.tensor_f32("blk.0.attn_q.weight").unwrap();
    let sum: f64 = q.iter().map(|&v| v as f64).sum();
    assert!((sum - 59.22322082519531).abs() < 1e-4, "{sum}");
    for (i, want) in [
        -0.0963134765625,
        0.1573486328125,
        -0.0963134765625,
        -0.73046875,
    ]
    .into_iter()
    .enumerate()
    {
        assert_close(q[i], want, "attn_q[0]");
    }
    let (_, norm) = f.tensor_f32("blk.0.attn_norm.weight").unwrap();
    assert_close(norm[0], 0.01397705078125, "attn_norm[0]");
    assert_close(norm[1], 0.0238037109375, "attn_norm[1]");
}

#[test]
fn smollm2_attn_k_unpermute_matches_transformers() {
    let Some(path) = real_model_path() else {
        return;
    };
    let f = GgufFile::open(path).unwrap();
    let (shape, k) = f.tensor_f32("blk.0.attn_k.weight").unwrap();
    let n_kv = f.get_usize("llama.attention.head_count_kv").unwrap();
    let hf = unpermute_qk(&k, shape[0], shape[1], n_kv).unwrap();
    // transformers LlamaConverter._reverse_permute_weights
    // (`scripts/gguf_expected.py --parts real`)
    let want: [(usize, [f64; 3]); 5] = [
        (1, [0.203369140625, 0.09136962890625, 0.203369140625]),
        (31, [-0.1021728515625, -0.1021728515625, -0.011962890625]),
        (32, [0.056640625, 0.056640625, -0.126953125]),
        (100, [0.2972412109375, -0.07501220703125, 0.54541015625]),
        (191, [0.015869140625, -0.4342041015625, 0.015869140625]),
    ];
    for (row, vals) in want {
        for (c, v) in vals.into_iter().enumerate() {
            assert_close(hf[row * 576 + c], v, &format!("k_hf[{row}, {c}]"));
        }
    }
}

#[test]
fn smollm2_every_tensor_dequantizes_quickly() {
    let Some(path) = real_model_path() else {
        return;
    };
    let f = GgufFile::open(path).unwrap();
    let start = std::time::Instant::now();
    let mut n = 0usize;
    for t in f.tensors() {
        let (shape, v) = f.tensor_f32(&t.name).unwrap();
        assert_eq!(shape.iter().product::<usize>(), v.len());
        n += v.len();
    }
    let secs = start.elapsed().as_secs_f64();
    eprintln!("dequantized {n} values in {secs:.3} s");
    assert_eq!(n, 134_515_008);
}

fn floats(v: &serde_json::Value) -> Vec<f64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect()
}

#[test]
fn fixture_dequant_gguf_matches_gguf_py_for_every_type() {
    let f = GgufFile::open(fixture("dequant.gguf")).unwrap();
    let reference = std::fs::read(fixture("dequant-reference.safetensors")).unwrap();
    let reference = safetensors::SafeTensors::deserialize(&reference).unwrap();
    let meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture("dequant-reference.json")).unwrap())
            .unwrap();
    assert_eq!(
        f.get_str("general.name").unwrap(),
        "burn-lora dequant fixture"
    );
    assert_eq!(f.get_i64("burn_lora.test_i32").unwrap(), -7);
    assert!(f.get_bool("burn_lora.test_flag").unwrap());
    assert_eq!(
        f.get_str_array("tokenizer.ggml.tokens").unwrap(),
        ["<unk>", "hello", " world", "café", "東京"]
    );
    let infos = meta["tensors"].as_array().unwrap();
    assert_eq!(f.tensors().len(), infos.len());
    for want in infos {
        let name = want["name"].as_str().unwrap();
        let info = f.tensor_info(name).unwrap();
        assert_eq!(info.dtype.name(), want["type"].as_str().unwrap(), "{name}");
        assert_eq!(info.offset, want["data_offset"].as_u64().unwrap(), "{name}");
        assert_eq!(
            info.n_bytes as u64,
            want["n_bytes"].as_u64().unwrap(),
            "{name}"
        );
        let (shape, values) = f.tensor_f32(name).unwrap();
        let view = reference.tensor(name).unwrap();
        assert_eq!(shape, view.shape(), "{name}");
        let expected: Vec<f32> = view
            .data()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        for (i, (&got, &want)) in values.iter().zip(&expected).enumerate() {
            assert_close(got, want as f64, &format!("{name}[{i}]"));
        }
    }
}

#[test]
fn smollm2_tensors_and_unpermuted_qk_match_reference_fixture() {
    let (Some(path), Some(reference)) = (real_model_path(), smollm2_reference()) else {
        return;
    };
    let f = GgufFile::open(path).unwrap();
    for t in reference["tensors"].as_array().unwrap() {
        let name = t["gguf_name"].as_str().unwrap();
        let (shape, values) = f.tensor_f32(name).unwrap();
        let hf_shape: Vec<usize> = t["hf_shape"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d.as_u64().unwrap() as usize)
            .collect();
        assert_eq!(shape, hf_shape, "{name}");
        for (i, want) in floats(&t["gguf_first16"]).into_iter().enumerate() {
            assert_close(values[i], want, &format!("{name}[{i}]"));
        }
        let hf = match t["n_head"].as_u64() {
            Some(n_head) => unpermute_qk(&values, shape[0], shape[1], n_head as usize).unwrap(),
            None => values,
        };
        for (i, want) in floats(&t["hf_first16"]).into_iter().enumerate() {
            assert_close(hf[i], want, &format!("hf {name}[{i}]"));
        }
        if t["hf_col0_first_head"].is_array() {
            for (r, want) in floats(&t["hf_col0_first_head"]).into_iter().enumerate() {
                assert_close(hf[r * shape[1]], want, &format!("hf {name}[{r}, 0]"));
            }
        }
    }
}
