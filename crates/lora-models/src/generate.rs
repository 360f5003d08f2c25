//! Text generation: prefill the prompt once, then decode one token at a time through the KV
//! cache, choosing each token greedily or by temperature / top-k / top-p sampling.

use burn::tensor::{Int, Tensor, TensorData};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::error::ModelError;
use crate::kv_cache::KvCache;
use crate::llama::Llama;

/// How the next token is chosen from the logits.
#[derive(Clone, Debug, PartialEq)]
pub struct SamplingConfig {
    /// Softmax temperature; `0` means greedy (argmax).
    pub temperature: f64,
    /// Keep only the `k` most likely tokens (`0` = no limit).
    pub top_k: usize,
    /// Nucleus sampling: keep the smallest set of tokens whose probability reaches `top_p`
    /// (`1.0` = no limit).
    pub top_p: f64,
    /// Seed of the sampler's random number generator.
    pub seed: u64,
}

impl Default for SamplingConfig {
    fn default() -> Self {
        SamplingConfig {
            temperature: 0.0,
            top_k: 0,
            top_p: 1.0,
            seed: 42,
        }
    }
}

/// Chooses tokens from logit vectors.
#[derive(Debug)]
pub struct Sampler {
    config: SamplingConfig,
    rng: StdRng,
}

impl Sampler {
    /// A sampler for `config`.
    ///
    /// # Errors
    /// [`ModelError::Generate`] for a negative temperature or `top_p` outside `(0, 1]`.
    pub fn new(config: SamplingConfig) -> Result<Self, ModelError> {
        if !(config.temperature >= 0.0 && config.temperature.is_finite()) {
            return Err(ModelError::Generate(format!(
                "temperature must be a finite number ≥ 0 (0 = greedy), got {}",
                config.temperature
            )));
        }
        if !(config.top_p > 0.0 && config.top_p <= 1.0) {
            return Err(ModelError::Generate(format!(
                "top_p must be in (0, 1], got {}",
                config.top_p
            )));
        }
        let rng = StdRng::seed_from_u64(config.seed);
        Ok(Sampler { config, rng })
    }

    /// Picks a token id from `logits` (`[V]`).
    pub fn sample(&mut self, logits: &[f32]) -> u32 {
        if self.config.temperature == 0.0 {
            return argmax(logits);
        }
        // Probabilities at temperature T, most likely first.
        let t = self.config.temperature as f32;
        let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let mut probs: Vec<(u32, f32)> = logits
            .iter()
            .enumerate()
            .map(|(i, l)| (i as u32, ((l - max) / t).exp()))
            .collect();
        probs.sort_by(|a, b| b.1.total_cmp(&a.1));
        if self.config.top_k > 0 {
            probs.truncate(self.config.top_k);
        }
        let total: f32 = probs.iter().map(|p| p.1).sum();
        // Nucleus: the shortest prefix whose mass reaches top_p.
        let mut kept = 0;
        let mut mass = 0.0;
        for (_, p) in &probs {
            kept += 1;
            mass += p / total;
            if mass >= self.config.top_p as f32 {
                break;
            }
        }
        probs.truncate(kept.max(1));
        let total: f32 = probs.iter().map(|p| p.1).sum();
        let mut u = self.rng.random::<f32>() * total;
        for (id, p) in &probs {
            if u < *p {
                return *id;
            }
            u -= p;
        }
        probs.last().map_or(0, |p| p.0)
    }
}

/// Index of the largest value (the first one on ties).
pub fn argmax(values: &[f32]) -> u32 {
    let mut best = 0;
    for (i, v) in values.iter().enumerate() {
        if *v > values[best] {
            best = i;
        }
    }
    best as u32
}

/// Logits of the last position of a `[1, T, V]` forward, as host values.
///
/// # Errors
/// [`ModelError::Generate`] if the device data cannot be read.
pub fn last_logits(logits: Tensor<3>) -> Result<Vec<f32>, ModelError> {
    let [_, t, v] = logits.dims();
    logits
        .slice([0..1, t - 1..t, 0..v])
        .into_data()
        .convert::<f32>()
        .try_to_vec::<f32>()
        .map_err(|e| ModelError::Generate(format!("reading logits: {e:?}")))
}

/// Checks token ids before burn sees them: an empty sequence (burn's causal mask indexes out of
/// bounds) and an id with no embedding row (burn's gather reads out of bounds) are errors.
///
/// # Errors
/// [`ModelError::Generate`] naming the first bad id and the vocabulary size.
pub fn check_ids(model: &Llama, tokens: &[u32]) -> Result<(), ModelError> {
    if tokens.is_empty() {
        return Err(ModelError::Generate(
            "the prompt is empty: give at least one token".into(),
        ));
    }
    let vocab = model.config.vocab_size;
    if let Some((i, id)) = tokens
        .iter()
        .enumerate()
        .find(|&(_, &id)| id as usize >= vocab)
    {
        return Err(ModelError::Generate(format!(
            "token id {id} (position {i}) is outside the model's vocabulary of {vocab} ids; the tokenizer does not belong to this model"
        )));
    }
    Ok(())
}

/// Runs `tokens` (one sequence) through the model, appending to `cache`; returns the logits of
/// the last position.
///
/// # Errors
/// [`ModelError::Generate`] for an empty sequence or an id outside the vocabulary
/// ([`check_ids`]), or if the sequence would exceed the model's context length.
pub fn step(model: &Llama, tokens: &[u32], cache: &mut KvCache) -> Result<Vec<f32>, ModelError> {
    check_ids(model, tokens)?;
    let max = model.config.max_seq_len;
    if cache.len() + tokens.len() > max {
        return Err(ModelError::Generate(format!(
            "{} tokens exceed the model's context of {max} positions",
            cache.len() + tokens.len()
        )));
    }
    let device = model.lm_head.weight.val().device();
    let ids: Vec<i64> = tokens.iter().map(|&t| t as i64).collect();
    let input = Tensor::<2, Int>::from_data(TensorData::new(ids, [1, tokens.len()]), &device);
    // Only the last position's logits are needed: the output head (D × V, a fifth of the
    // forward's work on a 256-token prompt) runs on that one position.
    let hidden = model.model.forward(input, Some(cache)); // [1, T, D]
    let [_, t, d] = hidden.dims();
    last_logits(model.lm_head.forward(hidden.slice([0..1, t - 1..t, 0..d])))
}

/// Generates up to `max_new_tokens` after `prompt`, stopping early at any of `stop_ids`.
/// `on_token` sees each new id as it is chosen (for streaming). Returns the new ids (without the
/// stop token).
///
/// # Errors
/// Those of [`step`] and [`Sampler::new`].
pub fn generate(
    model: &Llama,
    prompt: &[u32],
    max_new_tokens: usize,
    sampling: SamplingConfig,
    stop_ids: &[u32],
    mut on_token: impl FnMut(u32),
) -> Result<Vec<u32>, ModelError> {
    if prompt.is_empty() {
        return Err(ModelError::Generate("the prompt is empty".into()));
    }
    let mut sampler = Sampler::new(sampling)?;
    let mut cache = model.new_cache();
    let mut logits = step(model, prompt, &mut cache)?;
    let mut out = Vec::new();
    for _ in 0..max_new_tokens {
        let next = sampler.sample(&logits);
        if stop_ids.contains(&next) {
            break;
        }
        out.push(next);
        on_token(next);
        if out.len() == max_new_tokens {
            break;
        }
        logits = step(model, &[next], &mut cache)?;
    }
    Ok(out)
}

/// Greedy decoding of several prompts at once, for evaluation: the prompts are left-padded to
/// the longest, prefilled in one forward pass, then decoded one token per step for every row
/// together through one KV cache ([`crate::left_padding`]). A row stops at its first stop id
/// (not included in its output); the batch stops when every row has stopped, after
/// `max_new_tokens`, or when the longest row reaches the model's context length. Each row's
/// tokens are the ones [`generate`] with [`SamplingConfig::default`] (greedy) would choose for
/// that prompt alone, up to float rounding in near-ties.
///
/// Rows that have stopped keep being fed `pad_id` until the whole batch stops; their outputs
/// are ignored.
///
/// # Shapes
/// `prompts`: `B` id lists of any lengths → `B` lists of at most `max_new_tokens` ids
///
/// # Errors
/// [`ModelError::Generate`] for an empty prompt, a prompt that fills the context already, or
/// device data that cannot be read.
pub fn generate_greedy_batch(
    model: &Llama,
    prompts: &[&[u32]],
    max_new_tokens: usize,
    stop_ids: &[u32],
    pad_id: u32,
) -> Result<Vec<Vec<u32>>, ModelError> {
    let b = prompts.len();
    let longest = prompts.iter().map(|p| p.len()).max().unwrap_or(0);
    if prompts.iter().any(|p| p.is_empty()) {
        return Err(ModelError::Generate("a prompt is empty".into()));
    }
    for p in prompts {
        check_ids(model, p)?;
    }
    check_ids(model, &[pad_id])?;
    let context = model.config.max_seq_len;
    if b == 0 || max_new_tokens == 0 {
        return Ok(vec![Vec::new(); b]);
    }
    if longest >= context {
        return Err(ModelError::Generate(format!(
            "a prompt of {longest} tokens leaves no room in the model's context of {context} positions"
        )));
    }
    let max_new_tokens = max_new_tokens.min(context - longest);
    let device = model.device();
    let pads: Vec<usize> = prompts.iter().map(|p| longest - p.len()).collect();
    let mut ids = Vec::with_capacity(b * longest);
    for (p, &pad) in prompts.iter().zip(&pads) {
        ids.extend(std::iter::repeat_n(i64::from(pad_id), pad));
        ids.extend(p.iter().map(|&t| i64::from(t)));
    }
    let mut input = Tensor::<2, Int>::from_data(TensorData::new(ids, [b, longest]), &device);
    let mut cache = model.new_cache();
    let mut out = vec![Vec::new(); b];
    let mut stopped = vec![false; b];
    loop {
        let hidden = model
            .model
            .forward_left_padded(input, Some(&mut cache), &pads); // [B, T, D]
        let [_, t, d] = hidden.dims();
        // The head only at the last position, the argmax on the device: B ids come back.
        let next = model
            .lm_head
            .forward(hidden.slice([0..b, t - 1..t, 0..d])) // [B, 1, V]
            .argmax(2) // [B, 1, 1]
            .into_data()
            .convert::<i64>()
            .try_to_vec::<i64>()
            .map_err(|e| ModelError::Generate(format!("reading generated ids: {e:?}")))?;
        for ((row, done), id) in out.iter_mut().zip(&mut stopped).zip(&next) {
            let id = u32::try_from(*id).map_err(|_| {
                ModelError::Generate(format!("the model chose token id {id}, not a u32"))
            })?;
            if *done {
                continue;
            }
            if stop_ids.contains(&id) {
                *done = true;
            } else {
                row.push(id);
                *done = row.len() == max_new_tokens;
            }
        }
        if stopped.iter().all(|&s| s) {
            return Ok(out);
        }
        let fed: Vec<i64> = out
            .iter()
            .zip(&stopped)
            .map(|(row, &done)| match (done, row.last()) {
                (false, Some(&id)) => i64::from(id),
                _ => i64::from(pad_id),
            })
            .collect();
        input = Tensor::from_data(TensorData::new(fed, [b, 1]), &device);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greedy_sampling_is_argmax() {
        let mut s = Sampler::new(SamplingConfig::default()).unwrap();
        assert_eq!(s.sample(&[0.1, 3.0, -1.0, 2.9]), 1);
    }

    #[test]
    fn top_k_one_is_greedy_whatever_the_temperature() {
        let cfg = SamplingConfig {
            temperature: 5.0,
            top_k: 1,
            ..Default::default()
        };
        let mut s = Sampler::new(cfg).unwrap();
        for _ in 0..20 {
            assert_eq!(s.sample(&[0.1, 3.0, -1.0, 2.9]), 1);
        }
    }

    #[test]
    fn top_p_keeps_only_the_nucleus() {
        // p ≈ [0.0, 0.5, 0.0, 0.5]·…: with top_p = 0.4 only the single most likely token remains.
        let cfg = SamplingConfig {
            temperature: 1.0,
            top_p: 0.4,
            seed: 7,
            ..Default::default()
        };
        let mut s = Sampler::new(cfg).unwrap();
        for _ in 0..20 {
            assert_eq!(s.sample(&[-20.0, 1.01, -20.0, 1.0]), 1);
        }
    }

    #[test]
    fn same_seed_same_samples() {
        let cfg = SamplingConfig {
            temperature: 1.0,
            seed: 3,
            ..Default::default()
        };
        let logits: Vec<f32> = (0..50).map(|i| (i as f32 * 0.37).sin()).collect();
        let a: Vec<u32> = {
            let mut s = Sampler::new(cfg.clone()).unwrap();
            (0..10).map(|_| s.sample(&logits)).collect()
        };
        let b: Vec<u32> = {
            let mut s = Sampler::new(cfg).unwrap();
            (0..10).map(|_| s.sample(&logits)).collect()
        };
        assert_eq!(a, b);
    }

    #[test]
    fn bad_sampling_values_are_errors() {
        assert!(
            Sampler::new(SamplingConfig {
                temperature: -1.0,
                ..Default::default()
            })
            .is_err()
        );
        assert!(
            Sampler::new(SamplingConfig {
                top_p: 0.0,
                ..Default::default()
            })
            .is_err()
        );
    }
}
