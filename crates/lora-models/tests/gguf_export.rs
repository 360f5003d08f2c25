//! GGUF export: merged models read back by our own loader with the same logits, the tensor table
//! and metadata llama.cpp expects, adapters whose `B·A` is the merged update in GGUF row order,
//! and the survival measure. (llama.cpp itself reads these files in scripts/check_gguf_export.sh.)

mod common;

use std::path::{Path, PathBuf};

use common::{device, fixtures, host, real_model, reference, rel_err};
use lora_core::peft::load_adapter;
use lora_models::Llama;
use lora_models::checkpoint::{build_llama, gguf as ckpt_gguf};
use lora_models::export::adapter::adapter_gguf;
use lora_models::export::merged::{merged_gguf, tensor_type};
use lora_models::export::survival::storage_survival;
use lora_models::gguf::{GgmlType, GgufFile, GgufValue};
use lora_models::pretrained::load_hf_model;

fn tmp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("gguf-export-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

fn tiny_with_adapter(model: &str, adapter: &str) -> Llama {
    let d = device();
    let m = load_hf_model(&fixtures().join(model), &d).unwrap();
    load_adapter(m, &fixtures().join(model).join(adapter), &d)
        .unwrap()
        .0
}

fn tiny_logits(model: &Llama) -> Vec<f32> {
    let r = reference("tiny-llama/reference.safetensors");
    host(model.forward(common::ids(&r["input_ids"], &device()), None))
}

/// Writes `model` (merged) as GGUF in `dtype` and reads it back through our loader.
fn round_trip(model: &Llama, dtype: GgmlType, name: &str) -> (GgufFile, Llama) {
    let path = tmp(name);
    merged_gguf(model, dtype, &Vec::new(), &path)
        .unwrap()
        .write_file(&path)
        .unwrap();
    let file = GgufFile::open(&path).unwrap();
    let config = ckpt_gguf::read_config(&file).unwrap();
    let weights = ckpt_gguf::read_weights(&file, &config).unwrap();
    let back = build_llama(&config, weights, &device()).unwrap();
    (file, back)
}

#[test]
fn merged_f32_gguf_reads_back_with_the_same_logits_and_llama_metadata() {
    let mut m = tiny_with_adapter("tiny-llama", "peft-adapter");
    assert_eq!(lora_core::merge_and_unload(&mut m).unwrap(), 14);
    let (file, back) = round_trip(&m, GgmlType::F32, "f32.gguf");
    let (a, b) = (tiny_logits(&m), tiny_logits(&back));
    assert!(rel_err(&b, &a) < 1e-6, "{}", rel_err(&b, &a));
    for (key, v) in [
        ("general.architecture", GgufValue::String("llama".into())),
        ("general.type", GgufValue::String("model".into())),
        ("general.file_type", GgufValue::U32(0)),
        ("general.quantization_version", GgufValue::U32(2)),
        ("llama.block_count", GgufValue::U32(2)),
        ("llama.embedding_length", GgufValue::U32(64)),
        ("llama.attention.head_count", GgufValue::U32(4)),
        ("llama.attention.head_count_kv", GgufValue::U32(2)),
        ("llama.rope.dimension_count", GgufValue::U32(16)),
        ("llama.vocab_size", GgufValue::U32(300)),
    ] {
        assert_eq!(file.value(key), Some(&v), "{key}");
    }
    // 2 layers × 9 tensors, embedding, final norm, untied head; ne = [in, out].
    assert_eq!(file.tensors().len(), 21);
    let q = file.tensor_info("blk.1.attn_q.weight").unwrap();
    assert_eq!((q.dims.clone(), q.dtype), (vec![64, 64], GgmlType::F32));
    assert_eq!(
        file.tensor_info("blk.0.ffn_down.weight").unwrap().dims,
        [64, 128]
    );
    assert!(file.tensor_info("output.weight").is_some());
}

#[test]
fn a_tied_head_is_not_written_and_reads_back_tied() {
    let m = load_hf_model(&fixtures().join("tiny-llama-tied"), &device()).unwrap();
    let (file, back) = round_trip(&m, GgmlType::F32, "tied.gguf");
    assert!(file.tensor_info("output.weight").is_none());
    assert!(back.config.tie_word_embeddings);
    assert!(rel_err(&tiny_logits(&back), &tiny_logits(&m)) < 1e-6);
}

#[test]
fn quantized_exports_store_matrices_quantized_norms_f32_and_read_back_close() {
    let mut m = tiny_with_adapter("tiny-llama", "peft-adapter");
    lora_core::merge_and_unload(&mut m).unwrap();
    let exact = tiny_logits(&m);
    // Rows of 64 and 128: Q8_0 / Q4_0 fit; Q4_K's 256-blocks do not and fall back to Q5_0.
    for (dtype, stored, bound) in [
        (GgmlType::F16, GgmlType::F16, 2e-3),
        (GgmlType::BF16, GgmlType::BF16, 2e-2),
        (GgmlType::Q8_0, GgmlType::Q8_0, 2e-2),
        (GgmlType::Q4_0, GgmlType::Q4_0, 0.3),
        (GgmlType::Q4_K, GgmlType::Q5_0, 0.2),
    ] {
        let (file, back) = round_trip(&m, dtype, &format!("{}.gguf", dtype.name()));
        assert_eq!(
            file.tensor_info("blk.0.attn_v.weight").unwrap().dtype,
            stored
        );
        assert_eq!(file.tensor_info("token_embd.weight").unwrap().dtype, stored);
        assert_eq!(
            file.tensor_info("blk.0.attn_norm.weight").unwrap().dtype,
            GgmlType::F32
        );
        let err = rel_err(&tiny_logits(&back), &exact);
        eprintln!("{dtype}: logits max rel error {err:.2e}");
        assert!(err > 0.0 && err < bound, "{dtype}: {err}");
    }
}

#[test]
fn unmerged_adapters_are_an_error_not_a_silent_base_model() {
    let m = tiny_with_adapter("tiny-llama", "peft-adapter");
    let e = merged_gguf(&m, GgmlType::F32, &Vec::new(), Path::new("x.gguf")).unwrap_err();
    assert!(e.to_string().contains("unmerged"), "{e}");
}

/// GGUF weight `name` as f32 rows.
fn weight(file: &GgufFile, name: &str) -> Vec<f32> {
    file.tensor_f32(name).unwrap().1
}

/// `scale · B·A` from an adapter GGUF, `[d_out, d_in]` in GGUF row order.
fn adapter_delta(file: &GgufFile, name: &str) -> Vec<f32> {
    let (a_dims, a) = file.tensor_f32(&format!("{name}.lora_a")).unwrap();
    let (b_dims, b) = file.tensor_f32(&format!("{name}.lora_b")).unwrap();
    let (r, d_in, d_out) = (a_dims[0], a_dims[1], b_dims[0]);
    assert_eq!(b_dims[1], r, "lora_b is [d_out, r]");
    let alpha = file.get_f32("adapter.lora.alpha").unwrap();
    let scale = alpha / r as f32; // what llama.cpp applies
    let mut out = vec![0.0f32; d_out * d_in];
    for o in 0..d_out {
        for k in 0..r {
            for i in 0..d_in {
                out[o * d_in + i] += scale * b[o * r + k] * a[k * d_in + i];
            }
        }
    }
    out
}

/// Exports `adapter` (adapting `names`, GGUF names) and checks it against the merged model.
fn check_adapter_matches_merge(adapter: &str, names: &[&str], expect_rescaled: bool) {
    let m = tiny_with_adapter("tiny-llama", adapter);
    let path = tmp(&format!("{adapter}.gguf"));
    let (w, export) = adapter_gguf(&m, &[], &path).unwrap();
    w.write_file(&path).unwrap();
    assert_eq!(export.tensors.len(), names.len());
    assert_eq!(!export.rescaled.is_empty(), expect_rescaled, "{export:?}");
    let file = GgufFile::open(&path).unwrap();
    assert_eq!(file.get_str("general.type").unwrap(), "adapter");
    assert_eq!(file.get_str("adapter.type").unwrap(), "lora");
    assert_eq!(file.get_str("general.architecture").unwrap(), "llama");
    // The adapter's update equals (merged − base) in the exported model files, q/k permutation
    // included.
    let base = load_hf_model(&fixtures().join("tiny-llama"), &device()).unwrap();
    let (base_file, _) = round_trip(&base, GgmlType::F32, &format!("{adapter}-base.gguf"));
    let mut merged = m;
    lora_core::merge_and_unload(&mut merged).unwrap();
    let (merged_file, _) = round_trip(&merged, GgmlType::F32, &format!("{adapter}-merged.gguf"));
    for name in names {
        let diff: Vec<f32> = weight(&merged_file, name)
            .iter()
            .zip(weight(&base_file, name))
            .map(|(m, b)| m - b)
            .collect();
        let delta = adapter_delta(&file, name);
        assert!(
            rel_err(&delta, &diff) < 1e-4,
            "{name}: {}",
            rel_err(&delta, &diff)
        );
    }
}

#[test]
fn adapter_gguf_b_times_a_is_the_merged_update_in_gguf_row_order() {
    let kinds = [
        "attn_q",
        "attn_k",
        "attn_v",
        "attn_output",
        "ffn_gate",
        "ffn_up",
        "ffn_down",
    ];
    let names: Vec<String> = (0..2)
        .flat_map(|i| kinds.map(|k| format!("blk.{i}.{k}.weight")))
        .collect();
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    check_adapter_matches_merge("peft-adapter", &names, false);
}

#[test]
fn adapter_gguf_keeps_rslora_scaling_by_rescaling_lora_b() {
    // q_proj and v_proj of layer 1 only, r = 8, α = 16: PEFT scales by α/√r, llama.cpp by α/r.
    let names = ["blk.1.attn_q.weight", "blk.1.attn_v.weight"];
    check_adapter_matches_merge("peft-adapter-rslora", &names, true);
}

#[test]
fn survival_is_one_for_f32_and_zero_when_an_update_rounds_away() {
    let base: Vec<f32> = (0..64).map(|i| (i as f32 - 32.0) * 0.01).collect();
    let delta: Vec<f32> = (0..64)
        .map(|i| if i % 7 == 0 { 1e-3 } else { 0.0 })
        .collect();
    let r = storage_survival(&base, &delta, GgmlType::F32).unwrap();
    assert!(
        (r.survival - 1.0).abs() < 1e-4 && r.relative_error < 1e-3,
        "{r:?}"
    );
    // Q8_0 steps are absmax/127 ≈ 2.5e-3 here: an update of 1e-5 rounds away entirely.
    let tiny: Vec<f32> = delta.iter().map(|d| d * 1e-2).collect();
    let r = storage_survival(&base, &tiny, GgmlType::Q8_0).unwrap();
    assert_eq!((r.survival, r.codes_changed), (0.0, 0.0), "{r:?}");
    assert!(storage_survival(&base, &[0.0; 64], GgmlType::Q8_0).is_none());
}

#[test]
fn k_quant_rows_that_are_not_whole_super_blocks_fall_back_as_llama_quantize_does() {
    assert_eq!(
        tensor_type("blk.0.attn_q.weight", &[576, 576], GgmlType::Q4_K),
        GgmlType::Q5_0
    );
    assert_eq!(
        tensor_type("blk.0.ffn_down.weight", &[576, 1536], GgmlType::Q4_K),
        GgmlType::Q4_K
    );
    assert_eq!(
        tensor_type("blk.0.attn_q.weight", &[576, 576], GgmlType::Q6_K),
        GgmlType::Q8_0
    );
    assert_eq!(
        tensor_type("x.weight", &[8, 40], GgmlType::Q8_0),
        GgmlType::F16
    );
    assert_eq!(
        tensor_type("output_norm.weight", &[576], GgmlType::Q8_0),
        GgmlType::F32
    );
}

#[test]
fn smollm2_tokenizer_and_chat_template_carry_over() {
    use lora_models::export::modelfile::{ChatFormat, detect_chat_format};
    use lora_models::export::vocab::{bpe_metadata, tokenizer_metadata_from_gguf};
    use lora_models::tokenizer::TextTokenizer;
    let Some(path) = real_model() else { return };
    let file = GgufFile::open(&path).unwrap();
    let copied = tokenizer_metadata_from_gguf(&file);
    assert!(copied.iter().any(|(k, _)| k == "tokenizer.chat_template"));
    assert_eq!(
        copied.len(),
        file.metadata()
            .keys()
            .filter(|k| k.starts_with("tokenizer."))
            .count()
    );
    // The Hugging Face route rebuilds the same tokens, types and merges as the GGUF holds.
    let tok = TextTokenizer::from_gguf(&file).unwrap();
    let dir = tmp("smollm2-tokenizer");
    tok.save_hf(&dir).unwrap();
    let hf = TextTokenizer::from_hf_dir(&dir).unwrap();
    let built = bpe_metadata(&hf, 49152, "smollm", &dir).unwrap();
    let get =
        |kv: &[(String, GgufValue)], k: &str| kv.iter().find(|(n, _)| n == k).map(|p| p.1.clone());
    for key in [
        "tokenizer.ggml.tokens",
        "tokenizer.ggml.token_type",
        "tokenizer.ggml.merges",
        "tokenizer.ggml.eos_token_id",
        "tokenizer.chat_template",
    ] {
        assert_eq!(get(&built, key), get(&copied, key), "{key}");
    }
    match detect_chat_format(&tok) {
        ChatFormat::ChatMl { default_system } => {
            assert!(default_system.unwrap().contains("SmolLM"));
        }
        ChatFormat::Unknown => panic!("SmolLM2's template is ChatML"),
    }
}
