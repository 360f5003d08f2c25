//! Timed inference: prefill (one forward over a prompt, filling the KV cache) and decode (one
//! token at a time against the cache), greedy.

use std::time::Instant;

use lora_models::generate::{argmax, step};
use lora_models::{Llama, ModelError};

/// Runs a prefill of `prompt` (fresh cache) and then `new_tokens` greedy decode steps; returns
/// `(prefill seconds, seconds per decoded token)`. Each step reads the last position's logits
/// back to the host, as generation does.
///
/// # Errors
/// Those of [`step`] (e.g. more tokens than the model's context).
pub fn time_generation(
    model: &Llama,
    prompt: &[u32],
    new_tokens: usize,
) -> Result<(f64, f64), ModelError> {
    let mut cache = model.new_cache();
    let t0 = Instant::now();
    let mut logits = step(model, prompt, &mut cache)?;
    let prefill = t0.elapsed().as_secs_f64();
    let t1 = Instant::now();
    for _ in 0..new_tokens {
        logits = step(model, &[argmax(&logits)], &mut cache)?;
    }
    let decode = t1.elapsed().as_secs_f64() / new_tokens.max(1) as f64;
    Ok((prefill, decode))
}
