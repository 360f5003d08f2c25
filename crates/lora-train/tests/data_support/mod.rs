//! Helpers shared by the data tests: a word-level tokenizer with a ChatML-like template,
//! temp files, and the real tokenizer when the model has been fetched.
#![allow(dead_code)]

use std::path::PathBuf;

use lora_models::tokenizer::{ChatMessage, TextTokenizer};
use lora_train::data::Sample;

use crate::common::real_model;

/// A unique temp path for this test process.
pub fn temp_path(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("lora-train-data-{}-{name}", std::process::id()))
}

/// A word-level tokenizer (whitespace split; `<eos>` = 1, `<pad>` = 2, the ChatML markers special)
/// written as a Hugging Face directory, with `template` as its chat template.
pub fn tiny_tokenizer(name: &str, template: Option<&str>) -> TextTokenizer {
    let words = [
        "<unk>",
        "<eos>",
        "<pad>",
        "<|im_start|>",
        "<|im_end|>",
        "user",
        "assistant",
        "bot",
        "hello",
        "there",
        "hi",
    ];
    let letters: Vec<String> = ('a'..='h').map(String::from).collect();
    let vocab: serde_json::Map<String, serde_json::Value> = words
        .iter()
        .map(|w| w.to_string())
        .chain(letters)
        .enumerate()
        .map(|(i, w)| (w, serde_json::json!(i)))
        .collect();
    let added: Vec<_> = (0..5)
        .map(|i| serde_json::json!({"id": i, "content": words[i], "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true}))
        .collect();
    let tokenizer = serde_json::json!({
        "version": "1.0", "truncation": null, "padding": null, "added_tokens": added,
        "normalizer": null, "pre_tokenizer": {"type": "Whitespace"}, "post_processor": null, "decoder": null,
        "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "<unk>"}
    });
    let mut config =
        serde_json::json!({"eos_token": "<eos>", "pad_token": "<pad>", "unk_token": "<unk>"});
    if let Some(t) = template {
        config["chat_template"] = serde_json::json!(t);
    }
    let dir = temp_path(&format!("tok-{name}"));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("tokenizer.json"), tokenizer.to_string()).unwrap();
    std::fs::write(dir.join("tokenizer_config.json"), config.to_string()).unwrap();
    TextTokenizer::from_hf_dir(&dir).unwrap()
}

/// ChatML without newlines: the generation prompt is exactly how an assistant turn starts.
pub const CHATML: &str = "{% for m in messages %}<|im_start|>{{ m.role }} {{ m.content }}<|im_end|>{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant{% endif %}";

pub fn chat(user: &str, answer: &str) -> Sample {
    Sample::Chat(vec![
        ChatMessage::user(user),
        ChatMessage::assistant(answer),
    ])
}

pub fn write_jsonl(name: &str, text: &str) -> PathBuf {
    let path = temp_path(name);
    std::fs::write(&path, text).unwrap();
    path
}

pub fn real_tokenizer() -> Option<TextTokenizer> {
    Some(TextTokenizer::from_gguf_path(real_model()?).unwrap())
}
