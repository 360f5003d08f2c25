//! `burn-lora logits`: the prompt's token ids and the top-k next-token logits at the last
//! position — the numbers to compare against transformers.

use anyhow::Result;
use clap::Args as ClapArgs;
use lora_models::generate::step;
use serde::Serialize;

use crate::common::{ModelArgs, PromptArgs};

/// Arguments of `logits`.
#[derive(ClapArgs, Debug)]
pub struct Args {
    #[command(flatten)]
    pub prompt: PromptArgs,
    /// How many of the most likely next tokens to show.
    #[arg(long, default_value_t = 5)]
    pub top_k: usize,
    /// Print exactly one JSON object on stdout: `{"ids": [...], "top_k": [{"id", "token", "logit"}]}`.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub model: ModelArgs,
}

#[derive(Serialize)]
struct Entry {
    id: u32,
    token: String,
    logit: f32,
}

#[derive(Serialize)]
struct Output {
    ids: Vec<u32>,
    top_k: Vec<Entry>,
}

/// Runs `logits`.
pub fn run(args: Args) -> Result<()> {
    let device = args.model.device()?;
    let pretrained = args.model.load(&device)?;
    let tok = &pretrained.tokenizer;
    let ids = args.prompt.ids(tok)?;
    let mut cache = pretrained.model.new_cache();
    let logits = step(&pretrained.model, &ids, &mut cache)?;
    let mut order: Vec<usize> = (0..logits.len()).collect();
    order.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]));
    let top_k = order
        .iter()
        .take(args.top_k)
        .map(|&i| {
            Ok(Entry {
                id: i as u32,
                token: tok.decode(&[i as u32])?,
                logit: logits[i],
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let out = Output { ids, top_k };
    if args.json {
        println!("{}", serde_json::to_string(&out)?);
    } else {
        println!("ids: {:?}", out.ids);
        println!("{:>8}  {:>10}  token", "id", "logit");
        for e in &out.top_k {
            println!("{:>8}  {:>10.4}  {:?}", e.id, e.logit, e.token);
        }
    }
    Ok(())
}
