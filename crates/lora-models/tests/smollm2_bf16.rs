//! `--base-dtype bf16` on the real SmolLM2-135M-Instruct: the same next tokens as transformers
//! loaded with `torch_dtype=torch.bfloat16` (fixtures/smollm2-bf16-reference.json; exact ties of
//! its bf16 logits are interchangeable), logits within what bf16 rounding allows. Skipped (with a note) when the
//! model has not been fetched.

mod common;

use common::*;
use lora_core::BaseDtype;
use lora_models::LoadOptions;
use serde_json::Value;

/// How far our bf16 logits may sit from transformers' bf16 logits: 5 bf16 steps at the size of
/// these logits (|logit| in [16, 32), a step of 1/8). Both round the same weights to bf16 (8-bit
/// mantissa, relative step 2⁻⁸), but transformers also rounds every activation to bf16 while we
/// keep them in f32, so the two land on different sides of the f32 result: transformers' own
/// bf16-vs-f32 distance on these prompts is 0.34, 0.67 and 0.71 at most over the vocabulary,
/// ours (printed) is 0.10–0.13 over transformers' top 20.
const LOGIT_BOUND: f32 = 0.625;

fn as_ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

#[test]
fn bf16_base_gives_transformers_bf16_top5_on_smollm2() {
    let Some(path) = real_model() else { return };
    let d = device();
    let options = LoadOptions {
        base_dtype: BaseDtype::Bf16,
        ..LoadOptions::default()
    };
    let model = lora_models::load_with(&path, &options, &d)
        .unwrap()
        .pretrained
        .model;
    assert_eq!(
        model.model.embed_tokens.weight.val().dtype(),
        burn::tensor::DType::BF16
    );
    let r: Value = serde_json::from_slice(
        &std::fs::read(fixtures().join("smollm2-bf16-reference.json")).unwrap(),
    )
    .unwrap();
    for prompt in r["prompts"].as_array().unwrap() {
        let ids = as_ids(&prompt["ids"]);
        let mut cache = model.new_cache();
        let logits = lora_models::generate::step(&model, &ids, &mut cache).unwrap();
        let mut order: Vec<usize> = (0..logits.len()).collect();
        order.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]));
        let want: Vec<usize> = as_ids(&prompt["top5"])
            .iter()
            .map(|&i| i as usize)
            .collect();
        let (mut ours_vs_bf16, mut ours_vs_f32) = (0f32, 0f32);
        for e in prompt["top20"].as_array().unwrap() {
            let id = e["id"].as_u64().unwrap() as usize;
            let bf16 = e["logit_bf16"].as_f64().unwrap() as f32;
            let f32_ref = e["logit_f32"].as_f64().unwrap() as f32;
            ours_vs_bf16 = ours_vs_bf16.max((logits[id] - bf16).abs());
            ours_vs_f32 = ours_vs_f32.max((logits[id] - f32_ref).abs());
        }
        let text = prompt["text"].as_str().unwrap();
        eprintln!(
            "{:?}: top-5 ours {:?} / transformers bf16 {want:?}; max |Δlogit| over its top 20: vs bf16 {ours_vs_bf16:.3}, vs f32 {ours_vs_f32:.3}",
            &text[..text.len().min(24)],
            &order[..5]
        );
        // Ranks agree up to near-ties. transformers' logits are bf16 themselves (a step of 1/8
        // at 25), and no two bf16 computations order tokens the same when their logits sit
        // closer than the rounding moves them: ids 216 and 1315 tie at exactly 13.0 at rank 5
        // of "The capital of France is"; for "def fibonacci(n):" transformers' bf16 run puts 216
        // (25.5) over 16390 (25.25) where its f32 run has 16390 first (25.61 vs 25.58); on the
        // chat prompt 504 and 60 are 0.08 apart in f32. So: every token of our top 5 scores
        // within the bound of transformers' 5th, every token transformers puts more than the
        // bound above its 6th is in our top 5, and our order never inverts two of its tokens by
        // more than the bound.
        let reference: Vec<(usize, f32)> = prompt["top20"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| {
                (
                    e["id"].as_u64().unwrap() as usize,
                    e["logit_bf16"].as_f64().unwrap() as f32,
                )
            })
            .collect();
        let theirs = |id: usize| reference.iter().find(|(i, _)| *i == id).map(|(_, l)| *l);
        let (fifth, sixth) = (reference[4].1, reference[5].1);
        for (k, &id) in order[..5].iter().enumerate() {
            let l = theirs(id).unwrap_or(f32::NEG_INFINITY);
            assert!(
                l >= fifth - LOGIT_BOUND,
                "{text:?}: our rank {k} ({id}) scores {l} in transformers bf16, below its 5th ({fifth}) by more than {LOGIT_BOUND}"
            );
            for &later in &order[k + 1..5] {
                let m = theirs(later).unwrap_or(f32::NEG_INFINITY);
                assert!(l >= m - LOGIT_BOUND, "{text:?}: {id} before {later}");
            }
        }
        for &(id, l) in reference.iter().filter(|(_, l)| *l > sixth + LOGIT_BOUND) {
            assert!(
                order[..5].contains(&id),
                "{text:?}: {id} ({l}) missing from our top 5"
            );
        }
        assert!(want.iter().zip(&reference).all(|(w, (r, _))| w == r));
        assert!(ours_vs_bf16 <= LOGIT_BOUND, "{text:?}: {ours_vs_bf16}");
    }
}
