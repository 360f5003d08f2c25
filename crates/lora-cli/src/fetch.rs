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
