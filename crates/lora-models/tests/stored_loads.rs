//! Streaming loads (`load_stored`, `load_hf_model_as`): every family's checkpoint goes straight
//! into the base's storage, tensor by tensor, and gives the same model as the old two-step path
//! (load everything in f32, then cast to bf16 / quantize to NF4):
//! - NF4 (every linear but `lm_head`) and bf16 bases equal the converted f32 model exactly, on
//!   the tiny Llama (tied and untied), Qwen2, Qwen3, Mistral and Gemma 3 fixtures, from the
//!   Hugging Face directory and (where the fixture has one) the GGUF file;
//! - a bf16 base's logits stay within bf16 rounding of the f32 model's ([`BF16_BOUND`]).

mod common;

use std::path::{Path, PathBuf};

use common::*;
use lora_core::BaseDtype;
use lora_core::quant::{Nf4Config, quantize_base};
use lora_models::Llama;
use lora_models::checkpoint::Storage;
use lora_models::pretrained::{load_hf_model, load_hf_model_as};

/// Every tiny model fixture: the Llama ones and one per family.
const MODELS: [&str; 6] = [
    "tiny-llama",
    "tiny-llama-tied",
    "tiny-qwen2",
    "tiny-qwen3",
    "tiny-mistral",
    "tiny-gemma3",
];

/// max |logit_bf16 − logit_f32| / max |logit_f32| allowed for a bf16 base. bf16 keeps 8
/// significant bits (unit roundoff u = 2⁻⁸ ≈ 3.9e-3): every frozen weight (embedding, linear
/// layers, head) moves by at most u of itself while the activations stay f32. A logit is a sum
/// of many such products whose size is well above the logit's own on these random 2-layer
/// models (the sums cancel), so its error measured against the largest logit is a few u:
/// measured (printed) 6.0e-3 (Qwen3, Mistral, Llama) to 1.6e-2 (tied Llama, whose embedding is
/// rounded twice in effect: input and head), i.e. 1.5–4 u. The bound is 8 u.
const BF16_BOUND: f32 = 8.0 / 256.0;

const NF4: Storage = Storage {
    dtype: BaseDtype::F32,
    nf4: Some(Nf4Config {
        block_size: 64,
        double_quant: true,
    }),
};

const BF16: Storage = Storage {
    dtype: BaseDtype::Bf16,
    nf4: None,
};

fn dir(name: &str) -> PathBuf {
    fixtures().join(name)
}

fn logits(model: &Llama, fixture: &Path) -> Vec<f32> {
    let r = reference(&format!(
        "{}/reference.safetensors",
        fixture.file_name().unwrap().to_string_lossy()
    ));
    host(model.forward(ids(&r["input_ids"], &device()), None))
}

/// The old path: the f32 model, then converted in place as `storage` says.
fn converted(mut model: Llama, storage: &Storage) -> Llama {
    if let Some(nf4) = &storage.nf4 {
        quantize_base(&mut model, nf4, &["lm_head"]).unwrap();
    }
    if storage.dtype != BaseDtype::F32 {
        model.cast_base(storage.dtype).unwrap();
    }
    model
}

#[test]
fn a_streamed_nf4_or_bf16_load_equals_converting_the_f32_model_for_every_family() {
    let d = device();
    for name in MODELS {
        let path = dir(name);
        for (label, storage) in [("nf4", NF4), ("bf16", BF16)] {
            let streamed = load_hf_model_as(&path, &storage, &d).unwrap();
            let q = &streamed.model.layers[0].mlp.down_proj.weight;
            assert_eq!(q.is_quantized(), storage.nf4.is_some(), "{name} {label}");
            assert!(
                !streamed.lm_head.weight.is_quantized(),
                "{name}: lm_head dense"
            );
            let old = converted(load_hf_model(&path, &d).unwrap(), &storage);
            assert_eq!(
                logits(&streamed, &path),
                logits(&old, &path),
                "{name} {label}: streamed vs converted"
            );
        }
        let gguf = path.join("model.gguf");
        if gguf.exists() {
            let streamed = lora_models::load_stored(&gguf, &NF4, &d).unwrap().model;
            let old = converted(lora_models::load(&gguf, &d).unwrap().model, &NF4);
            assert_eq!(
                logits(&streamed, &path),
                logits(&old, &path),
                "{name} GGUF nf4: streamed vs converted"
            );
        }
    }
}

#[test]
fn a_bf16_base_stays_within_bf16_rounding_of_the_f32_logits_for_every_family() {
    let d = device();
    for name in MODELS {
        let path = dir(name);
        let f32 = logits(&load_hf_model(&path, &d).unwrap(), &path);
        let bf16_model = load_hf_model_as(&path, &BF16, &d).unwrap();
        assert_eq!(
            bf16_model.model.embed_tokens.weight.val().dtype(),
            burn::tensor::DType::BF16
        );
        let bf16 = logits(&bf16_model, &path);
        assert!(bf16.iter().all(|v| v.is_finite()), "{name}");
        let err = rel_err(&bf16, &f32);
        eprintln!("{name}: bf16 vs f32 logits, max |Δ| / max |logit| = {err:.2e}");
        assert!(err < BF16_BOUND, "{name}: {err} ≥ {BF16_BOUND}");
    }
}
