//! What the model crate refuses before burn sees it (issue 19): configs whose dimensions cannot
//! be allocated, ids with no embedding row, empty prompts, non-finite weights, and a tokenizer
//! that does not fit the embedding.

mod common;

use common::*;
use lora_models::LlamaConfig;
use lora_models::config::{MAX_DIMENSION, MAX_LAYERS, MAX_PARAMS};
use lora_models::generate::{Sampler, SamplingConfig, check_ids, generate, step};
use lora_models::pretrained::load_hf_model;
use lora_models::tokenizer::TextTokenizer;

fn fixture(name: &str) -> std::path::PathBuf {
    std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../fixtures")
        .join(name)
}

/// Sets one dimension of a config.
type SetDimension = fn(&mut LlamaConfig, usize);

#[test]
fn dimensions_near_2_pow_62_are_refused_naming_the_key_and_the_limit() {
    let huge = 1usize << 62;
    let cases: [(&str, SetDimension); 5] = [
        ("num_hidden_layers", |c, v| c.n_layers = v),
        ("hidden_size", |c, v| c.d_model = v),
        ("intermediate_size", |c, v| c.d_ff = v),
        ("vocab_size", |c, v| c.vocab_size = v),
        ("max_position_embeddings", |c, v| c.max_seq_len = v),
    ];
    for (key, set) in cases {
        let mut c = LlamaConfig::tiny();
        set(&mut c, huge);
        let err = c.validate().unwrap_err();
        assert!(err.contains(key), "{key}: {err}");
        let limit = if key == "num_hidden_layers" {
            MAX_LAYERS
        } else {
            MAX_DIMENSION
        };
        assert!(err.contains(&limit.to_string()), "{key}: {err}");
    }
}

#[test]
fn a_parameter_count_past_the_limit_is_refused_without_overflow() {
    // Each dimension is within its own limit, but together they make ~2^50 parameters.
    let c = LlamaConfig {
        d_model: MAX_DIMENSION,
        d_ff: MAX_DIMENSION,
        n_layers: MAX_LAYERS,
        ..LlamaConfig::tiny()
    };
    assert_eq!(c.checked_num_params().map(|n| n > MAX_PARAMS), Some(true));
    let err = c.validate().unwrap_err();
    assert!(err.contains(&MAX_PARAMS.to_string()), "{err}");
    let overflow = LlamaConfig {
        head_dim: 1 << 40,
        n_heads: 1 << 40,
        ..LlamaConfig::tiny()
    };
    assert_eq!(overflow.checked_num_params(), None);
    assert_eq!(overflow.num_params(), usize::MAX);
    assert!(overflow.validate().is_err());
}

#[test]
fn non_finite_or_negative_config_numbers_are_refused_naming_them() {
    for (key, eps, theta) in [
        ("rms_norm_eps", -1.0, 10000.0),
        ("rms_norm_eps", f64::NAN, 10000.0),
        ("rope_theta", 1e-5, f64::NAN),
        ("rope_theta", 1e-5, f64::INFINITY),
    ] {
        let c = LlamaConfig {
            rms_norm_eps: eps,
            rope_theta: theta,
            ..LlamaConfig::tiny()
        };
        let err = c.validate().unwrap_err();
        assert!(err.contains(key), "{key}: {err}");
    }
}

#[test]
fn token_ids_outside_the_vocabulary_and_empty_prompts_are_refused_before_burn() {
    let model = load_hf_model(&fixture("tiny-llama"), &device()).unwrap();
    let v = model.config.vocab_size as u32;
    assert!(check_ids(&model, &[0, v - 1]).is_ok());
    let err = check_ids(&model, &[1, v]).unwrap_err().to_string();
    assert!(
        err.contains(&format!("token id {v}")) && err.contains("position 1"),
        "{err}"
    );
    let mut cache = model.new_cache();
    assert!(step(&model, &[], &mut cache).is_err());
    assert!(step(&model, &[u32::MAX], &mut cache).is_err());
    let err = generate(&model, &[], 4, SamplingConfig::default(), &[], |_| {}).unwrap_err();
    assert!(err.to_string().contains("empty"), "{err}");
    let batch = lora_models::generate::generate_greedy_batch(&model, &[&[1, v + 5]], 2, &[], 0);
    assert!(batch.is_err());
}

#[test]
fn a_non_finite_sampling_temperature_is_refused() {
    for t in [f64::NAN, f64::INFINITY, -1.0] {
        let c = SamplingConfig {
            temperature: t,
            ..SamplingConfig::default()
        };
        assert!(Sampler::new(c).is_err(), "{t}");
    }
}

#[test]
fn non_finite_base_weights_are_refused_naming_the_tensor() {
    let dir = std::env::temp_dir().join(format!("lora-models-nan-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::copy(fixture("tiny-llama/config.json"), dir.join("config.json")).unwrap();
    let weights = fixture("tiny-llama/model.safetensors");
    let bytes = std::fs::read(&weights).unwrap();
    // Overwrite the last f32 of the data section (some tensor's last value) with NaN.
    let mut bad = bytes.clone();
    let n = bad.len();
    bad[n - 4..].copy_from_slice(&f32::NAN.to_le_bytes());
    std::fs::write(dir.join("model.safetensors"), bad).unwrap();
    let err = load_hf_model(&dir, &device()).unwrap_err().to_string();
    assert!(
        err.contains("model.norm.weight") && err.contains("non-finite"),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_tokenizer_with_more_ids_than_embedding_rows_is_refused() {
    let tok = TextTokenizer::from_hf_dir(fixture("tiny-qwen2")).unwrap();
    let bound = tok.id_bound();
    assert!(tok.check_fits_embedding(bound).is_ok());
    let err = tok.check_fits_embedding(bound - 1).unwrap_err();
    assert!(err.contains(&format!("{}", bound - 1)), "{err}");
}
