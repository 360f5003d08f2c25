//! `burn-lora eval`: held-out loss, perplexity, (for TREC) accuracy and exact match of a
//! model's greedy answers, with or without an adapter — the same held-out set, batches and
//! numbers as the "after" column of the `train` run that made the adapter, given the same
//! `--data`, `--eval-data`, `--seq-len`, `--eval-limit` and `--eval-metric`.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Result;
use clap::Args as ClapArgs;
use lora_train::eval::{AnswerSettings, evaluate_task};
use lora_train::task::load_task;

use crate::common::{MetricFlag, ModelArgs};

/// Arguments of `eval`.
#[derive(ClapArgs, Debug)]
pub struct Args {
    /// `trec` (default), a JSONL file (every 20th example is held out), or a folder with
    /// train.jsonl and valid.jsonl (valid.jsonl is evaluated).
    #[arg(long, default_value = "trec")]
    pub data: String,
    /// Evaluate on this JSONL file instead (e.g. DIR/test.jsonl).
    #[arg(long)]
    pub eval_data: Option<PathBuf>,
    /// How answers are scored: the answer equals (`exact`, the default for data with answers)
    /// or contains the reference, both trimmed and lowercased. TREC generates answers only when
    /// this is given (its accuracy scores the class words).
    #[arg(long, value_enum)]
    pub eval_metric: Option<MetricFlag>,
    /// Most tokens generated per answer (0 = the longest reference + 16).
    #[arg(long, default_value_t = 0)]
    pub eval_max_new_tokens: usize,
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
        args.eval_data.as_deref(),
        &p.tokenizer,
        args.seq_len.min(p.model.config.max_seq_len),
        args.eval_limit,
    )?;
    let settings = AnswerSettings {
        metric: args.eval_metric.map(MetricFlag::metric),
        max_new_tokens: args.eval_max_new_tokens,
    };
    let t = Instant::now();
    let (report, _) = evaluate_task(&p.model, &p.tokenizer, &task, settings, pad)?;
    eprintln!("evaluated in {:.1}s", t.elapsed().as_secs_f64());
    if args.json {
        println!(
            "{}",
            serde_json::json!({
                "task": task.name,
                "examples": report.examples,
                "loss": report.loss,
                "perplexity": report.perplexity,
                "accuracy": report.accuracy,
                "exact_match": report.exact_match,
                "exact_match_examples": report.exact_match_examples,
                "eval_metric": task.answer_metric(settings.metric),
            })
        );
    } else {
        println!("task {} · {} held-out examples", task.name, report.examples);
        println!("  loss         {:.4} nats/answer token", report.loss);
        println!("  perplexity   {:.3}", report.perplexity);
        if let Some(a) = report.accuracy {
            println!("  accuracy     {:.1}%", 100.0 * a);
        }
        if let Some(m) = report.exact_match {
            println!(
                "  {}  {:.1}%  ({} questions)",
                match task.answer_metric(settings.metric) {
                    Some(lora_train::config::EvalMetric::Contains) => "contains   ",
                    _ => "exact match",
                },
                100.0 * m,
                report.exact_match_examples
            );
        }
    }
    Ok(())
}
