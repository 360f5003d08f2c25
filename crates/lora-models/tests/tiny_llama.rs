//! The model computes what transformers computes: logits on a tiny random Llama (untied and
//! tied), KV-cache decoding equal to full forwards, and clear errors on broken checkpoints.

mod common;

use std::path::Path;

use common::*;
use lora_models::generate::argmax;
use lora_models::pretrained::load_hf_model;

fn logits_match(dir: &str) {
    let d = device();
    let model = load_hf_model(&fixtures().join(dir), &d).unwrap();
    let r = reference(&format!("{dir}/reference.safetensors"));
    let logits = host(model.forward(ids(&r["input_ids"], &d), None));
    let err = rel_err(&logits, &r["logits"].data);
    assert!(err < 1e-4, "{dir}: max abs error / max abs value = {err}");
}

#[test]
fn logits_match_transformers_on_tiny_llama() {
    logits_match("tiny-llama");
}

#[test]
fn logits_match_transformers_on_tiny_llama_with_tied_embeddings() {
    logits_match("tiny-llama-tied");
}

#[test]
fn kv_cache_decoding_gives_the_full_forward_logits_at_every_step() {
    let d = device();
    let model = load_hf_model(&fixtures().join("tiny-llama"), &d).unwrap();
    let r = reference("tiny-llama/reference.safetensors");
    let prompt: Vec<u32> = r["input_ids"].data[..7].iter().map(|x| *x as u32).collect();
    let expected_ids: Vec<u32> = r["greedy_ids"].data.iter().map(|x| *x as u32).collect();
    let steps = r["greedy_step_logits"].shape[0];
    let v = r["greedy_step_logits"].shape[1];

    let mut cache = model.new_cache();
    let mut seq = prompt.clone();
    let mut logits = lora_models::generate::step(&model, &prompt, &mut cache).unwrap();
    for s in 0..steps {
        // Same logits as a full forward over the whole sequence without a cache ...
        let full = {
            let mut c = model.new_cache();
            lora_models::generate::step(&model, &seq, &mut c).unwrap()
        };
        let err = rel_err(&logits, &full);
        assert!(err < 1e-4, "step {s}: cached vs full forward {err}");
        // ... and as transformers' own cached decoding.
        let err = rel_err(&logits, &r["greedy_step_logits"].data[s * v..(s + 1) * v]);
        assert!(err < 1e-4, "step {s}: vs transformers {err}");
        let next = argmax(&logits);
        seq.push(next);
        logits = lora_models::generate::step(&model, &[next], &mut cache).unwrap();
    }
    assert_eq!(seq, expected_ids);
}

fn copy_fixture(name: &str) -> tempdir::Dir {
    let dir = tempdir::Dir::new(name);
    for f in ["config.json", "model.safetensors"] {
        std::fs::copy(fixtures().join("tiny-llama").join(f), dir.path().join(f)).unwrap();
    }
    dir
}

mod tempdir {
    use std::path::{Path, PathBuf};
    /// A scratch directory removed on drop.
    pub struct Dir(PathBuf);
    impl Dir {
        pub fn new(name: &str) -> Self {
            let p =
                std::env::temp_dir().join(format!("burn-lora-test-{name}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&p);
            std::fs::create_dir_all(&p).unwrap();
            Dir(p)
        }
        pub fn path(&self) -> &Path {
            &self.0
        }
    }
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

fn load_err(dir: &Path) -> String {
    load_hf_model(dir, &device()).unwrap_err().to_string()
}

#[test]
fn a_config_missing_a_field_is_an_error_naming_file_and_field() {
    let dir = copy_fixture("nofield");
    let cfg = std::fs::read_to_string(dir.path().join("config.json")).unwrap();
    let mut v: serde_json::Value = serde_json::from_str(&cfg).unwrap();
    v.as_object_mut().unwrap().remove("hidden_size");
    std::fs::write(dir.path().join("config.json"), v.to_string()).unwrap();
    let err = load_err(dir.path());
    assert!(
        err.contains("config.json") && err.contains("hidden_size"),
        "{err}"
    );
}

#[test]
fn a_misshaped_tensor_is_an_error_naming_it() {
    let dir = copy_fixture("shape");
    let st = dir.path().join("model.safetensors");
    let mut t = lora_core::tensor_io::read_safetensors(&st).unwrap();
    let k = "model.layers.1.self_attn.v_proj.weight";
    let bad = lora_core::tensor_io::HostTensor {
        shape: vec![16, 64],
        data: vec![0.0; 16 * 64],
    };
    t.insert(k.to_string(), bad);
    lora_core::tensor_io::write_safetensors(&st, &t, Default::default(), Default::default())
        .unwrap();
    let err = load_err(dir.path());
    assert!(err.contains(k) && err.contains("[16, 64]"), "{err}");
}

#[test]
fn missing_and_unused_tensors_are_errors_naming_them() {
    let dir = copy_fixture("missing");
    let st = dir.path().join("model.safetensors");
    let mut t = lora_core::tensor_io::read_safetensors(&st).unwrap();
    let k = "model.layers.0.mlp.up_proj.weight";
    let moved = t.remove(k).unwrap();
    lora_core::tensor_io::write_safetensors(&st, &t, Default::default(), Default::default())
        .unwrap();
    let err = load_err(dir.path());
    assert!(err.contains(k) && err.contains("missing"), "{err}");

    t.insert(k.to_string(), moved);
    t.insert(
        "model.layers.0.mlp.extra.weight".into(),
        lora_core::tensor_io::HostTensor {
            shape: vec![1],
            data: vec![0.0],
        },
    );
    lora_core::tensor_io::write_safetensors(&st, &t, Default::default(), Default::default())
        .unwrap();
    let err = load_err(dir.path());
    assert!(
        err.contains("model.layers.0.mlp.extra.weight") && err.contains("unused"),
        "{err}"
    );
}

#[test]
fn a_truncated_safetensors_file_is_an_error_naming_the_file() {
    let dir = copy_fixture("trunc");
    let st = dir.path().join("model.safetensors");
    let bytes = std::fs::read(&st).unwrap();
    std::fs::write(&st, &bytes[..bytes.len() / 2]).unwrap();
    let err = load_err(dir.path());
    assert!(err.contains("model.safetensors"), "{err}");
}
