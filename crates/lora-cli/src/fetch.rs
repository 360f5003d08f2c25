//! `burn-lora fetch`: put the default real inputs into the cache (~/.cache/burn-lora) now,
//! instead of on first use: the SmolLM2-135M-Instruct GGUF (or `--model NAME`), and the TREC
//! questions.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args as ClapArgs;
use lora_models::cache;

/// Arguments of `fetch`.
#[derive(ClapArgs, Debug)]
pub struct Args {
    /// A model name to fetch instead of the default (smollm2-135m, gemma3-270m).
    #[arg(long)]
    pub model: Option<PathBuf>,
}

/// Runs `fetch`.
pub fn run(args: Args) -> Result<()> {
    let model = match &args.model {
        Some(name) => cache::resolve_model(name)?,
        None => cache::ensure_default_model()?,
    };
    println!("model: {} (sha256 checked)", model.display());
    let trec = lora_train::data::load_trec()?;
    println!(
        "TREC: {} ({} unique questions: {} train, {} held out)",
        lora_train::data::trec::trec_path().display(),
        trec.stats.unique,
        trec.stats.train,
        trec.stats.test
    );
    Ok(())
}
