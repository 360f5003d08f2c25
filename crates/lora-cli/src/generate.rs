//! `burn-lora generate`: stream a model's answer to a prompt.

use std::io::Write;
use std::time::Instant;

use anyhow::Result;
use clap::Args as ClapArgs;
use lora_models::generate::{SamplingConfig, generate};

use crate::common::{ModelArgs, PromptArgs};

/// Arguments of `generate`.
#[derive(ClapArgs, Debug)]
pub struct Args {
    #[command(flatten)]
    pub prompt: PromptArgs,
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
    let ids = args.prompt.ids(tok)?;
    // Stop at end-of-sequence, and at the end of the assistant's turn in chat templates.
    let stop: Vec<u32> = tok
        .eos_id()
        .into_iter()
        .chain(tok.token_id("<|im_end|>"))
        .collect();
    let sampling = SamplingConfig {
        temperature: args.temperature,
        top_k: args.top_k,
        top_p: args.top_p,
        seed: args.seed,
    };

    // Stream: decode everything generated so far and print only the new suffix, so multi-byte
    // characters split across tokens come out whole.
    let (mut so_far, mut printed) = (Vec::new(), String::new());
    let mut failure: Option<anyhow::Error> = None;
    let mut first_token_at = None;
    let t0 = Instant::now();
    let mut show = |next: u32| {
        first_token_at.get_or_insert_with(Instant::now);
        so_far.push(next);
        let shown = tok
            .decode(&so_far)
            .map_err(anyhow::Error::from)
            .and_then(|text| {
                if let Some(new) = text.strip_prefix(printed.as_str()) {
                    let mut lock = std::io::stdout().lock();
                    write!(lock, "{new}")?;
                    lock.flush()?;
                }
                printed = text;
                Ok(())
            });
        if let Err(e) = shown {
            failure.get_or_insert(e);
        }
    };
    let generated = generate(
        &pretrained.model,
        &ids,
        args.max_new_tokens,
        sampling,
        &stop,
        &mut show,
    )?;
    if let Some(e) = failure {
        return Err(e);
    }
    let t1 = first_token_at.unwrap_or_else(Instant::now);
    let prefill = (t1 - t0).as_secs_f64();
    println!();
    let decode = t1.elapsed().as_secs_f64();
    eprintln!(
        "prefill: {} tokens in {:.2}s ({:.1} tokens/s) · decode: {} tokens in {:.2}s ({:.1} tokens/s) · backend {}",
        ids.len(),
        prefill,
        ids.len() as f64 / prefill.max(1e-9),
        generated.len(),
        decode,
        generated.len() as f64 / decode.max(1e-9),
        args.model.backend
    );
    Ok(())
}
