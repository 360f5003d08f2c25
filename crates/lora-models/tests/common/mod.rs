//! Helpers shared by the integration tests: fixture paths, devices, comparisons.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::PathBuf;

use burn::tensor::{Device, Int, Tensor, TensorData};
use lora_core::tensor_io::{HostTensor, read_safetensors};
use lora_core::{BackendKind, select_device};

/// `fixtures/` at the repository root.
pub fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fixtures")
}

/// The CPU device the tests run on.
pub fn device() -> Device {
    select_device(BackendKind::Flex).expect("flex backend")
}

/// Reads a fixture safetensors file.
pub fn reference(rel: &str) -> BTreeMap<String, HostTensor> {
    read_safetensors(&fixtures().join(rel)).expect("fixture file (run scripts/make_fixtures.py)")
}

/// `[B, T]` token ids from a fixture tensor holding ids as floats.
pub fn ids(t: &HostTensor, device: &Device) -> Tensor<2, Int> {
    let v: Vec<i64> = t.data.iter().map(|x| *x as i64).collect();
    Tensor::from_data(TensorData::new(v, [t.shape[0], t.shape[1]]), device)
}

/// Host copy of any float tensor.
pub fn host<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data().convert::<f32>().try_to_vec::<f32>().unwrap()
}

/// max |a − b| / max |b|.
pub fn rel_err(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "length mismatch");
    let scale = b.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-12);
    a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs())) / scale
}

/// A known model's cached file, or `None` (with a note saying how to get it) when it has not
/// been fetched: the tests on real models are skipped then, not failed.
pub fn cached_model(model: &lora_models::cache::KnownModel) -> Option<PathBuf> {
    let p = model.path();
    if p.exists() {
        Some(p)
    } else {
        eprintln!(
            "skipping: {} not present (`cargo xtask fetch --model {}` fetches it)",
            p.display(),
            model.name
        );
        None
    }
}

/// Ids from a JSON array of numbers.
pub fn json_ids(v: &serde_json::Value) -> Vec<u32> {
    v.as_array()
        .expect("an array of ids")
        .iter()
        .map(|x| x.as_u64().expect("an id") as u32)
        .collect()
}

/// A fixture JSON file.
pub fn reference_json(name: &str) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(fixtures().join(name)).expect("fixture file"))
        .expect("valid JSON")
}

/// The ids of a reference prompt (`{"kind": "plain"|"chat", "text", "ids", "messages"?}`) as
/// `tok` makes them: a chat prompt through the chat template, which must render exactly
/// `text`; a plain one with the tokenizer's special tokens. Asserts they equal `ids`.
pub fn prompt_ids(
    tok: &lora_models::tokenizer::TextTokenizer,
    prompt: &serde_json::Value,
) -> Vec<u32> {
    let text = prompt["text"].as_str().expect("text");
    let ids = if prompt["kind"] == "chat" {
        let msgs: Vec<lora_models::tokenizer::ChatMessage> =
            serde_json::from_value(prompt["messages"].clone()).expect("messages");
        let rendered = tok.apply_chat_template(&msgs, true).expect("chat template");
        assert_eq!(rendered, text, "chat template renders as transformers does");
        tok.encode(&rendered, false).expect("encode")
    } else {
        tok.encode(text, true).expect("encode")
    };
    assert_eq!(ids, json_ids(&prompt["ids"]), "token ids of {text:?}");
    ids
}

/// Checks next-token logits against a reference `top5` list (`[{"id", "logit"}, ...]`): the same
/// five ids in the same order, each logit within `tol`. Returns the largest difference.
pub fn assert_top5(logits: &[f32], top5: &serde_json::Value, tol: f32, what: &str) -> f32 {
    let mut worst = 0f32;
    let mut order: Vec<usize> = (0..logits.len()).collect();
    order.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]));
    for (rank, e) in top5.as_array().expect("top5 list").iter().enumerate() {
        let id = e["id"].as_u64().expect("id") as usize;
        let want = e["logit"].as_f64().expect("logit") as f32;
        assert_eq!(order[rank], id, "{what}: rank {rank}");
        assert!(
            (logits[id] - want).abs() < tol,
            "{what}: logit of {id} is {}, reference {want}",
            logits[id]
        );
        worst = worst.max((logits[id] - want).abs());
    }
    worst
}

/// The real model's path, or `None` (with a note) when it has not been fetched.
pub fn real_model() -> Option<PathBuf> {
    let p = std::env::var_os("BURN_LORA_MODEL")
        .map(PathBuf::from)
        .unwrap_or_else(lora_models::cache::default_model_path);
    if p.exists() {
        Some(p)
    } else {
        eprintln!(
            "skipping: {} not present (cargo xtask generate fetches it; .ci/run does too)",
            p.display()
        );
        None
    }
}

/// One prompt of a `fixtures/smollm2-*-reference.json`: its token ids and the `(id, logit)`
/// pairs listed under `key` (`top5`, `base_top5`, `top20`).
pub fn prompt_ids_and_logits(
    prompt: &serde_json::Value,
    key: &str,
) -> (Vec<u32>, Vec<(usize, f32)>) {
    let ids = prompt["ids"]
        .as_array()
        .expect("ids")
        .iter()
        .map(|x| x.as_u64().expect("an id") as u32)
        .collect();
    let top = prompt[key]
        .as_array()
        .expect("top-k entries")
        .iter()
        .map(|e| {
            let id = e["id"].as_u64().expect("id") as usize;
            (id, e["logit"].as_f64().expect("logit") as f32)
        })
        .collect();
    (ids, top)
}

/// Token ids sorted by logit, highest first.
pub fn ranked(logits: &[f32]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..logits.len()).collect();
    order.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]));
    order
}
