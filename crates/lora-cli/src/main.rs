//! `burn-lora`: the command line behind `cargo xtask`. It parses arguments, picks the backend
//! and calls the libraries; all the work happens in `lora-core`, `lora-models` and `lora-train`.

mod bench;
mod common;
mod eval;
mod fetch;
mod generate;
mod gguf_out;
mod logits;
mod malloc;
mod merge;
mod train;

use anyhow::Result;
use clap::{Parser, Subcommand};

/// LoRA fine-tuning of Llama-family models on burn (CPU or any wgpu GPU).
#[derive(Parser, Debug)]
#[command(name = "burn-lora", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Generate text from a prompt (streams the answer).
    Generate(generate::Args),
    /// Print the prompt's token ids and the top-k next-token logits.
    Logits(logits::Args),
    /// Merge a LoRA adapter into the base model and write a Hugging Face directory, or a GGUF
    /// file with an Ollama Modelfile (`--format gguf`).
    Merge(merge::Args),
    /// Write a LoRA adapter as a GGUF file in llama.cpp's adapter format (`--lora`).
    ExportAdapter(gguf_out::ExportAdapterArgs),
    /// Fine-tune LoRA adapters (default: SmolLM2-135M-Instruct on TREC question classification).
    Train(train::Args),
    /// Held-out loss, perplexity and (TREC) accuracy, with or without an adapter.
    Eval(eval::Args),
    /// Fetch the default model and dataset into the cache now.
    Fetch(fetch::Args),
    /// Training and inference speed and memory, side by side with burn's apply_lora and
    /// PyTorch + PEFT; `--sweep-rank` for the rank trade-off.
    Bench(bench::Args),
}

/// Runs the command; an error is printed as one line (`error: what: why`, anyhow's chain joined
/// by `: `) with exit code 1, rather than `main`'s multi-line `Debug` form.
fn main() -> std::process::ExitCode {
    malloc::keep_freed_memory();
    let cli = Cli::parse();
    match dispatch(cli.command) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            let line = format!("{e:#}").replace('\n', " ");
            eprintln!("error: {line}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn dispatch(command: Command) -> Result<()> {
    match command {
        Command::Generate(args) => generate::run(args),
        Command::Logits(args) => logits::run(args),
        Command::Merge(args) => merge::run(args),
        Command::ExportAdapter(args) => gguf_out::export_adapter(args),
        Command::Fetch(args) => fetch::run(args),
        Command::Train(args) => train::run(args),
        Command::Eval(args) => eval::run(args),
        Command::Bench(args) => bench::run(args),
    }
}
