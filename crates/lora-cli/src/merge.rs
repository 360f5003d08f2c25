//! `burn-lora merge`: fold a LoRA / DoRA / AdaLoRA adapter — or a weighted combination of
//! several (`--adapter NAME=DIR … --weights …`) — into the base weights and write a Hugging Face
//! directory (`config.json`, `model.safetensors`, tokenizer files) that transformers loads.
//!
//! With `--quant nf4` the adapter is merged into the dequantized weights, which are written in
//! `--dtype`; nothing is re-quantized. `--requantize-report` measures what re-quantizing the
//! merged weights to NF4 would keep of each adapter (`lora_core::quant::requantize_report`).

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::Args as ClapArgs;
use lora_core::quant::{RequantizeSummary, requantize_summary};
use lora_core::tensor_io::DiskDtype;

use crate::common::ModelArgs;

/// Arguments of `merge`.
#[derive(ClapArgs, Debug)]
pub struct Args {
    /// Output directory (must not exist or be empty), or with `--format gguf` the GGUF file.
    #[arg(long)]
    pub out: PathBuf,
    /// `hf` (a Hugging Face directory, the default) or `gguf` (one file for llama.cpp / Ollama,
    /// with a Modelfile next to it).
    #[arg(long, default_value = "hf")]
    pub format: String,
    /// With `--format gguf`: the weight type, f32 (default), f16, bf16, q8_0, q6_k, q5_0, q4_k or
    /// q4_0 (quantized by our own code as llama.cpp does; norms stay f32).
    #[arg(long = "type", default_value = "f32")]
    pub weight_type: String,
    /// Weight precision on disk: f32 or bf16.
    #[arg(long, default_value = "f32")]
    pub dtype: String,
    /// With `--quant nf4`: before merging, print per layer how much of the adapter's update
    /// would survive re-quantizing the merged weight to NF4, and the mean over layers. A report
    /// only: the merged weights are still written in --dtype, never re-quantized.
    #[arg(long)]
    pub requantize_report: bool,
    #[command(flatten)]
    pub model: ModelArgs,
}

fn print_summary(s: &RequantizeSummary) {
    eprintln!(
        "re-quantizing the merged weights to NF4 would keep (report only; nothing is re-quantized):"
    );
    eprintln!(
        "{:>48} {:>9} {:>16} {:>14}",
        "layer", "survival", "‖W'−Ŵ−ΔW‖/‖ΔW‖", "codes changed"
    );
    for (path, r) in &s.layers {
        eprintln!(
            "{path:>48} {:>9.4} {:>16.4} {:>13.1}%",
            r.survival,
            r.relative_error,
            100.0 * r.codes_changed
        );
    }
    for (path, why) in &s.skipped {
        eprintln!("{path:>48} skipped: {why}");
    }
    match (s.mean_survival(), s.mean_relative_error()) {
        (Some(surv), Some(err)) => eprintln!(
            "mean over {} layers: survival {surv:.4}, relative error {err:.4}",
            s.layers.len()
        ),
        _ => eprintln!("no adapted NF4 layer could be measured"),
    }
}

/// Runs `merge`.
pub fn run(args: Args) -> Result<()> {
    match args.format.as_str() {
        "hf" => {}
        // Without --adapter the model is converted as it is (e.g. the base for `--lora`).
        "gguf" => return crate::gguf_out::merge_to_gguf(&args.model, &args.out, &args.weight_type),
        other => bail!("--format {other:?}: choose hf or gguf"),
    }
    if !args.model.has_adapter() {
        bail!(
            "merge needs --adapter DIR (a PEFT adapter directory), or several --adapter NAME=DIR with --weights"
        );
    }
    let dtype = match args.dtype.as_str() {
        "f32" | "float32" => DiskDtype::F32,
        "bf16" | "bfloat16" => DiskDtype::BF16,
        other => bail!("--dtype {other:?}: choose f32 or bf16"),
    };
    let nf4 = args.model.quant.nf4()?;
    if args.requantize_report && nf4.is_none() {
        bail!(
            "--requantize-report measures re-quantizing to NF4 after merging; it needs --quant nf4"
        );
    }
    if args.out.exists()
        && std::fs::read_dir(&args.out)
            .map(|mut d| d.next().is_some())
            .unwrap_or(true)
    {
        bail!(
            "{} exists and is not empty; choose a new --out directory",
            args.out.display()
        );
    }
    let device = args.model.device()?;
    let mut pretrained = args.model.load(&device)?;
    if let (true, Some(nf4)) = (args.requantize_report, &nf4) {
        print_summary(&requantize_summary(&pretrained.model, nf4));
    }
    let n = lora_core::merge_and_unload(&mut pretrained.model)?;
    lora_models::checkpoint::hf::save_hf_dir(&pretrained.model, &args.out, dtype)
        .with_context(|| format!("writing {}", args.out.display()))?;
    pretrained.tokenizer.save_hf(&args.out)?;
    eprintln!("merged {n} adapted modules; wrote {}", args.out.display());
    Ok(())
}
