//! Batched greedy generation (left-padded prompts, one KV cache) chooses what one-prompt-at-a-
//! time greedy generation chooses, on the tiny random Llama.

mod common;

use common::*;
use lora_models::generate::{SamplingConfig, generate, generate_greedy_batch};
use lora_models::pretrained::load_hf_model;

/// Prompts of lengths 1 … 12 (ids below the tiny model's vocabulary of 300).
fn prompts() -> Vec<Vec<u32>> {
    [5usize, 1, 12, 7, 3]
        .iter()
        .enumerate()
        .map(|(r, &n)| {
            (0..n)
                .map(|i| ((r * 37 + i * 11 + 3) % 300) as u32)
                .collect()
        })
        .collect()
}

fn one_at_a_time(model: &lora_models::Llama, prompt: &[u32], n: usize, stop: &[u32]) -> Vec<u32> {
    generate(model, prompt, n, SamplingConfig::default(), stop, |_| {}).unwrap()
}

#[test]
fn batched_greedy_decoding_equals_one_prompt_at_a_time() {
    let d = device();
    let model = load_hf_model(&fixtures().join("tiny-llama"), &d).unwrap();
    let prompts = prompts();
    let refs: Vec<&[u32]> = prompts.iter().map(Vec::as_slice).collect();
    let batched = generate_greedy_batch(&model, &refs, 12, &[], 0).unwrap();
    for (p, got) in prompts.iter().zip(&batched) {
        assert_eq!(got, &one_at_a_time(&model, p, 12, &[]), "prompt {p:?}");
        assert_eq!(got.len(), 12);
    }

    // A stop id ends its row early (not included); the other rows go on.
    let stop = batched[2][4];
    let stopped = generate_greedy_batch(&model, &refs, 12, &[stop], 0).unwrap();
    for (p, got) in prompts.iter().zip(&stopped) {
        assert_eq!(got, &one_at_a_time(&model, p, 12, &[stop]), "prompt {p:?}");
        assert!(!got.contains(&stop));
    }
    assert!(stopped[2].len() <= 4);
    assert!(stopped.iter().any(|row| row.len() == 12));
}

#[test]
fn batched_generation_stops_at_the_context_length_and_rejects_empty_prompts() {
    let d = device();
    let model = load_hf_model(&fixtures().join("tiny-llama"), &d).unwrap();
    let context = model.config.max_seq_len; // 128
    let long: Vec<u32> = (0..context as u32 - 3).map(|i| i % 300).collect();
    let short = [7u32, 8];
    let out = generate_greedy_batch(&model, &[&long, &short], 50, &[], 0).unwrap();
    assert_eq!(
        [out[0].len(), out[1].len()],
        [3, 3],
        "the longest row fills the context"
    );

    let full: Vec<u32> = (0..context as u32).map(|i| i % 300).collect();
    let err = generate_greedy_batch(&model, &[&full], 5, &[], 0).unwrap_err();
    assert!(err.to_string().contains("no room"), "{err}");
    let err = generate_greedy_batch(&model, &[&short, &[]], 5, &[], 0).unwrap_err();
    assert!(err.to_string().contains("empty"), "{err}");
    assert!(
        generate_greedy_batch(&model, &[], 5, &[], 0)
            .unwrap()
            .is_empty()
    );
}
