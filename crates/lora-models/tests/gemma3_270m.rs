//! The real Gemma 3 270M GGUF (`cargo xtask fetch --model gemma3-270m`) computes what
//! transformers' GGUF loader computes on the same file (`fixtures/gemma3-270m-reference.json`,
//! `scripts/make_fixtures.py --parts gemma3-270m`): the SentencePiece tokenizer gives its ids,
//! the next-token top-5 is identical with logits within 1e-2, the documented chat template
//! stands in for the missing one, and greedy decoding through the KV cache gives its tokens.
//! Skipped (with a note) when the model has not been fetched.

mod common;

use common::*;
use lora_models::cache::GEMMA3_270M;
use lora_models::generate::{SamplingConfig, generate, step};
use lora_models::{Family, Pretrained};
use serde_json::Value;

fn reference() -> Value {
    reference_json("gemma3-270m-reference.json")
}

fn load() -> Option<Pretrained> {
    let path = cached_model(&GEMMA3_270M)?;
    Some(lora_models::load(&path, &device()).unwrap())
}

#[test]
fn gemma3_270m_top5_logits_and_ids_match_transformers() {
    let Some(p) = load() else { return };
    assert_eq!(p.model.config.family, Family::Gemma3);
    // The file has no chat template: the documented Gemma 3 one stands in, and says so.
    assert_eq!(p.chat_template_fallback, Some(Family::Gemma3));
    for prompt in reference()["prompts"].as_array().unwrap() {
        let text = prompt["text"].as_str().unwrap();
        let ids = prompt_ids(&p.tokenizer, prompt);
        let mut cache = p.model.new_cache();
        let logits = step(&p.model, &ids, &mut cache).unwrap();
        let worst = assert_top5(&logits, &prompt["top5"], 1e-2, text);
        eprintln!("{text:?}: top-5 identical, largest logit difference {worst:.2e}");
    }
}

#[test]
fn gemma3_270m_tokenizer_round_trips_match_transformers() {
    let Some(path) = cached_model(&GEMMA3_270M) else {
        return;
    };
    let tok = lora_models::tokenizer::TextTokenizer::from_gguf_path(&path).unwrap();
    for r in reference()["tokenizer_round_trips"].as_array().unwrap() {
        let text = r["text"].as_str().unwrap();
        let ids = tok.encode(text, false).unwrap();
        assert_eq!(ids, json_ids(&r["ids"]), "ids of {text:?}");
        assert_eq!(tok.decode(&ids).unwrap(), r["decoded"].as_str().unwrap());
    }
}

#[test]
fn gemma3_270m_greedy_continuation_matches_transformers() {
    let Some(p) = load() else { return };
    let g = &reference()["greedy"];
    let prompt = json_ids(&g["prompt_ids"]);
    let n = g["max_new_tokens"].as_u64().unwrap() as usize;
    let out = generate(&p.model, &prompt, n, SamplingConfig::default(), &[], |_| {}).unwrap();
    assert_eq!(out, json_ids(&g["new_ids"]));
    assert_eq!(
        p.tokenizer.decode(&out).unwrap(),
        g["text"].as_str().unwrap()
    );
}
