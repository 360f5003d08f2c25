//! `burn-lora generate`: stream a model's answer to a prompt.

use std::io::Write;
use std::time::Instant;

use anyhow::Result;
use clap::Args as ClapArgs;
use lora_models::generate::{Sampler, SamplingConfig, step};

use crate::common::{ModelArgs, encode_prompt};

/// Arguments of `generate`.
#[derive(ClapArgs, Debug)]
pub struct Args {
    /// The prompt text.
    #[arg(long)]
    pub prompt: String,
    /// Wrap the prompt as a user turn in the model's chat template.
    #[arg(long)]
    pub chat: bool,
    /// Most tokens to generate.
    #[arg(long, default_value_t = 128)]
    pub max_new_tokens: usize,
    /// Sampling temperature (0 = greedy).
    #[arg(long, default_value_t = 0.0)]
    pub temperature: f64,
    /// Nucleus sampling threshold.
    #[arg(long, default_value_t = 1.0)]
    pub top_p: f64,
    /// Keep only the k most likely tokens (0 = all).
    #[arg(long, default_value_t = 0)]
    pub top_k: usize,
    /// Random seed for sampling.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    #[command(flatten)]
    pub model: ModelArgs,
}

/// Runs `generate`.
pub fn run(args: Args) -> Result<()> {
    let device = args.model.device()?;
    let pretrained = args.model.load(&device)?;
    let tok = &pretrained.tokenizer;
    let ids = encode_prompt(tok, &args.prompt, args.chat)?;
    // Stop at end-of-sequence, and at the end of the assistant's turn in chat templates.
    let stop: Vec<u32> = tok
        .eos_id()
        .into_iter()
        .chain(tok.token_id("<|im_end|>"))
        .collect();
    let mut sampler = Sampler::new(SamplingConfig {
        temperature: args.temperature,
        top_k: args.top_k,
        top_p: args.top_p,
        seed: args.seed,
    })?;

    let model = &pretrained.model;
    let mut cache = model.new_cache();
    let t0 = Instant::now();
    let mut logits = step(model, &ids, &mut cache)?;
    let prefill = t0.elapsed().as_secs_f64();

    // Stream: decode everything generated so far and print only the new suffix, so multi-byte
    // characters split across tokens come out whole.
    let mut out_ids: Vec<u32> = Vec::new();
    let mut printed = String::new();
    let stdout = std::io::stdout();
    let t1 = Instant::now();
    for _ in 0..args.max_new_tokens {
        let next = sampler.sample(&logits);
        if stop.contains(&next) {
            break;
        }
        out_ids.push(next);
        let text = tok.decode(&out_ids)?;
        if let Some(new) = text.strip_prefix(printed.as_str()) {
            let mut lock = stdout.lock();
            write!(lock, "{new}")?;
            lock.flush()?;
        }
        printed = text;
        if out_ids.len() == args.max_new_tokens {
            break;
        }
        logits = step(model, &[next], &mut cache)?;
    }
    println!();
    let decode = t1.elapsed().as_secs_f64();
    eprintln!(
        "prefill: {} tokens in {:.2}s ({:.1} tokens/s) · decode: {} tokens in {:.2}s ({:.1} tokens/s) · backend {}",
        ids.len(),
        prefill,
        ids.len() as f64 / prefill.max(1e-9),
        out_ids.len(),
        decode,
        out_ids.len() as f64 / decode.max(1e-9),
        args.model.backend
    );
    Ok(())
}
