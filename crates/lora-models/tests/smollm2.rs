//! The real SmolLM2-135M-Instruct GGUF computes what transformers computes on the same file:
//! identical token ids, identical top-5 next tokens, logits within 1e-2, the same greedy chat
//! answer through the KV cache. Skipped (with a note) when the model has not been fetched.

mod common;

use common::*;
use lora_models::generate::{SamplingConfig, generate};
use serde_json::Value;

fn reference() -> Value {
    reference_json("smollm2-reference.json")
}

#[test]
fn top5_logits_match_transformers_on_smollm2() {
    let Some(path) = real_model() else { return };
    let d = device();
    let p = lora_models::load(&path, &d).unwrap();
    let r = reference();
    for prompt in r["prompts"].as_array().unwrap() {
        let text = prompt["text"].as_str().unwrap();
        let ids = prompt_ids(&p.tokenizer, prompt);
        let mut cache = p.model.new_cache();
        let logits = lora_models::generate::step(&p.model, &ids, &mut cache).unwrap();
        let worst = assert_top5(&logits, &prompt["top5"], 1e-2, text);
        eprintln!("{text:?}: top-5 identical, largest logit difference {worst:.2e}");
    }
}

#[test]
fn greedy_chat_answer_matches_transformers_on_smollm2() {
    let Some(path) = real_model() else { return };
    let d = device();
    let p = lora_models::load(&path, &d).unwrap();
    let g = &reference()["greedy_chat"];
    let prompt = json_ids(&g["prompt_ids"]);
    let eos = g["eos_token_id"].as_u64().unwrap() as u32;
    let out = generate(
        &p.model,
        &prompt,
        20,
        SamplingConfig::default(),
        &[eos],
        |_| {},
    )
    .unwrap();
    let mut expected = json_ids(&g["new_ids"]);
    expected.retain(|&t| t != eos);
    assert_eq!(out, expected);
    assert_eq!(
        p.tokenizer.decode(&out).unwrap(),
        g["text_skip_special"].as_str().unwrap()
    );
}

/// QLoRA's base on the real model: every linear layer but `lm_head` in NF4 (block 64, double
/// quantization) gives transformers + bitsandbytes' top-5 next tokens, logits within 5e-2
/// (bitsandbytes picks a neighbouring 8-bit code for a few block scales; see nf4_reference.rs).
#[test]
fn nf4_base_top5_matches_bitsandbytes_on_smollm2() {
    let Some(path) = real_model() else { return };
    let d = device();
    let mut p = lora_models::load(&path, &d).unwrap();
    let cfg = lora_core::quant::Nf4Config::default();
    let report = lora_core::quant::quantize_base(&mut p.model, &cfg, &["lm_head"]).unwrap();
    assert!(
        report.bits_per_weight() <= 4.13,
        "{}",
        report.bits_per_weight()
    );
    let r = reference_json("smollm2-nf4-reference.json");
    for prompt in r["prompts"].as_array().unwrap() {
        let ids = json_ids(&prompt["ids"]);
        let mut cache = p.model.new_cache();
        let logits = lora_models::generate::step(&p.model, &ids, &mut cache).unwrap();
        let text = prompt["text"].to_string();
        let worst = assert_top5(&logits, &prompt["top5"], 5e-2, &text);
        eprintln!("{text}: NF4 top-5 identical, largest logit difference {worst:.2e}");
    }
}
