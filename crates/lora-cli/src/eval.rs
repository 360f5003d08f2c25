//! `burn-lora eval`: held-out loss, perplexity and (for TREC) accuracy of a model, with or
//! without an adapter.

use anyhow::Result;
use clap::Args as ClapArgs;
use lora_train::eval::evaluate;
use lora_train::task::load_task;

use crate::common::ModelArgs;

/// Arguments of `eval`.
#[derive(ClapArgs, Debug)]
pub struct Args {
    /// `trec` (default) or a JSONL file (every 20th example is held out).
    #[arg(long, default_value = "trec")]
    pub data: String,
    /// Use at most N held-out examples (0 = all).
    #[arg(long, default_value_t = 0)]
    pub eval_limit: usize,
    /// Longest sequence in tokens.
    #[arg(long, default_value_t = 256)]
    pub seq_len: usize,
    /// Print one JSON object on stdout.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub model: ModelArgs,
}

/// Runs `eval`.
pub fn run(args: Args) -> Result<()> {
    let device = args.model.device()?;
    let p = args.model.load(&device)?;
    let pad = p.tokenizer.pad_id().or(p.tokenizer.eos_id()).unwrap_or(0);
    let task = load_task(
        &args.data,
        &p.tokenizer,
        args.seq_len.min(p.model.config.max_seq_len),
        args.eval_limit,
    )?;
    let report = evaluate(&p.model, &task.test, task.choices(), 32, pad)?;
    if args.json {
        println!(
            "{}",
            serde_json::json!({"task": task.name, "examples": report.examples, "loss": report.loss, "perplexity": report.perplexity, "accuracy": report.accuracy})
        );
    } else {
        println!("task {} · {} held-out examples", task.name, report.examples);
        println!("  loss        {:.4} nats/answer token", report.loss);
        println!("  perplexity  {:.3}", report.perplexity);
        if let Some(a) = report.accuracy {
            println!("  accuracy    {:.1}%", 100.0 * a);
        }
    }
    Ok(())
}
