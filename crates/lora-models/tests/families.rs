//! Each family beyond Llama computes what transformers computes, on the tiny random models of
//! `scripts/fixturegen/families.py` (`fixtures/tiny-{qwen2,qwen3,mistral,gemma3}/`):
//! - the Hugging Face directory: logits on two rows of 7 tokens, and 8 steps of KV-cache greedy
//!   decoding (past the sliding window of Mistral and Gemma 3);
//! - the GGUF written as llama.cpp writes that architecture: logits equal transformers' GGUF
//!   loader's, and the tokenizer built from its metadata gives transformers' ids;
//! - a PEFT LoRA adapter on all seven linear layers gives PEFT's logits, and saving it again
//!   writes the same tensors under the same names PEFT wrote.

mod common;

use std::path::PathBuf;

use common::*;
use lora_core::peft;
use lora_core::tensor_io::read_safetensors;
use lora_models::generate::{argmax, step};
use lora_models::pretrained::load_hf_model;
use serde_json::Value;

fn dir(family: &str) -> PathBuf {
    fixtures().join(format!("tiny-{family}"))
}

fn hf_logits_match(family: &str) {
    let d = device();
    let model = load_hf_model(&dir(family), &d).unwrap();
    assert_eq!(model.config.family.name(), family);
    let r = reference(&format!("tiny-{family}/reference.safetensors"));
    let logits = host(model.forward(ids(&r["input_ids"], &d), None));
    let err = rel_err(&logits, &r["logits"].data);
    assert!(
        err < 1e-4,
        "{family}: max abs error / max abs value = {err}"
    );
    eprintln!("{family} HF logits: relative error {err:.2e}");
}

fn kv_cache_decoding_matches(family: &str) {
    let d = device();
    let model = load_hf_model(&dir(family), &d).unwrap();
    let r = reference(&format!("tiny-{family}/reference.safetensors"));
    let prompt: Vec<u32> = r["input_ids"].data[..7].iter().map(|x| *x as u32).collect();
    let expected: Vec<u32> = r["greedy_ids"].data.iter().map(|x| *x as u32).collect();
    let [steps, v] = [
        r["greedy_step_logits"].shape[0],
        r["greedy_step_logits"].shape[1],
    ];
    let mut cache = model.new_cache();
    let mut seq = prompt.clone();
    let mut logits = step(&model, &prompt, &mut cache).unwrap();
    for s in 0..steps {
        let want = &r["greedy_step_logits"].data[s * v..(s + 1) * v];
        let err = rel_err(&logits, want);
        assert!(err < 1e-4, "{family} step {s}: vs transformers {err}");
        let next = argmax(&logits);
        seq.push(next);
        logits = step(&model, &[next], &mut cache).unwrap();
    }
    assert_eq!(seq, expected, "{family}: greedy ids");
}

fn gguf_reference_json(family: &str) -> Value {
    let path = dir(family).join("gguf-reference.json");
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

fn gguf_logits_match(family: &str) {
    let d = device();
    let p = lora_models::load(&dir(family).join("model.gguf"), &d).unwrap();
    let r = reference(&format!("tiny-{family}/gguf-reference.safetensors"));
    let logits = host(p.model.forward(ids(&r["input_ids"], &d), None));
    let err = rel_err(&logits, &r["logits"].data);
    assert!(
        err < 1e-4,
        "{family} GGUF: max abs error / max abs value = {err}"
    );
    eprintln!("{family} GGUF logits: relative error {err:.2e}");
}

fn gguf_tokenizer_matches(family: &str) {
    let p = lora_models::load(&dir(family).join("model.gguf"), &device()).unwrap();
    for sample in gguf_reference_json(family)["tokenizer"].as_array().unwrap() {
        let text = sample["text"].as_str().unwrap();
        let want: Vec<u32> = sample["ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap() as u32)
            .collect();
        let got = p.tokenizer.encode(text, true).unwrap();
        assert_eq!(got, want, "{family}: ids of {text:?}");
        let decoded = p.tokenizer.decode(&got).unwrap();
        assert_eq!(decoded, sample["decoded"].as_str().unwrap(), "{family}");
    }
}

fn peft_adapter_round_trips(family: &str) {
    let d = device();
    let model = load_hf_model(&dir(family), &d).unwrap();
    let adapter = dir(family).join("peft-adapter");
    let (model, cfg, report) = peft::load_adapter(model, &adapter, &d).unwrap();
    assert_eq!(report.modules.len(), 14, "{family}: 7 linear layers × 2");
    let r = reference(&format!("tiny-{family}/reference.safetensors"));
    let logits = host(model.forward(ids(&r["input_ids"], &d), None));
    let err = rel_err(&logits, &r["logits_adapter"].data);
    assert!(err < 1e-4, "{family} + PEFT adapter: {err}");
    eprintln!("{family} + PEFT adapter logits: relative error {err:.2e}");

    // Written back, the file holds PEFT's tensors under PEFT's names, nothing more.
    let out = std::env::temp_dir().join(format!(
        "burn-lora-families-{family}-{}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&out);
    peft::save_adapter(&model, &cfg, &format!("tiny-{family}"), &out).unwrap();
    let theirs = read_safetensors(&adapter.join("adapter_model.safetensors")).unwrap();
    let ours = read_safetensors(&out.join("adapter_model.safetensors")).unwrap();
    assert_eq!(
        ours.keys().collect::<Vec<_>>(),
        theirs.keys().collect::<Vec<_>>()
    );
    for (name, t) in &theirs {
        assert_eq!(ours[name].shape, t.shape, "{name}");
        assert_eq!(ours[name].data, t.data, "{name}");
    }
    let _ = std::fs::remove_dir_all(&out);
}

macro_rules! family_tests {
    ($family:ident) => {
        mod $family {
            #[test]
            fn logits_match_transformers_on_the_hf_directory() {
                super::hf_logits_match(stringify!($family));
            }

            #[test]
            fn kv_cache_greedy_decoding_matches_transformers() {
                super::kv_cache_decoding_matches(stringify!($family));
            }

            #[test]
            fn gguf_logits_match_transformers_gguf_loader() {
                super::gguf_logits_match(stringify!($family));
            }

            #[test]
            fn gguf_tokenizer_gives_transformers_ids() {
                super::gguf_tokenizer_matches(stringify!($family));
            }

            #[test]
            fn peft_adapter_gives_peft_logits_and_saves_as_peft_wrote_it() {
                super::peft_adapter_round_trips(stringify!($family));
            }
        }
    };
}

family_tests!(qwen2);
family_tests!(qwen3);
family_tests!(mistral);
family_tests!(gemma3);

/// A merged model written as a Hugging Face directory reads back as the same family with the
/// same logits (Gemma: `1 + w` norms, q/k norms and sandwich norms written under their names).
#[test]
fn merged_gemma3_directory_reads_back_with_the_same_logits() {
    let d = device();
    let model = load_hf_model(&dir("gemma3"), &d).unwrap();
    let r = reference("tiny-gemma3/reference.safetensors");
    let out = std::env::temp_dir().join(format!("burn-lora-families-save-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&out);
    lora_models::checkpoint::hf::save_hf_dir(&model, &out, Default::default()).unwrap();
    let back = load_hf_model(&out, &d).unwrap();
    assert_eq!(back.config, model.config);
    let logits = host(back.forward(ids(&r["input_ids"], &d), None));
    assert!(rel_err(&logits, &r["logits"].data) < 1e-4);
    let _ = std::fs::remove_dir_all(&out);
}

/// An architecture outside the supported list is refused by name, with the list.
#[test]
fn an_unsupported_architecture_is_an_error_naming_it_and_the_supported_ones() {
    let src = dir("qwen2");
    let out = std::env::temp_dir().join(format!("burn-lora-families-phi3-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&out);
    std::fs::create_dir_all(&out).unwrap();
    let cfg = std::fs::read_to_string(src.join("config.json")).unwrap();
    let mut v: Value = serde_json::from_str(&cfg).unwrap();
    v["model_type"] = "phi3".into();
    std::fs::write(out.join("config.json"), v.to_string()).unwrap();
    std::fs::copy(src.join("model.safetensors"), out.join("model.safetensors")).unwrap();
    let err = load_hf_model(&out, &device()).unwrap_err().to_string();
    assert!(err.contains("\"phi3\"") && err.contains("gemma3"), "{err}");
    let _ = std::fs::remove_dir_all(&out);
}
