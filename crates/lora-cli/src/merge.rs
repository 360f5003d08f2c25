//! `burn-lora merge`: fold a LoRA adapter into the base weights and write a Hugging Face
//! directory (`config.json`, `model.safetensors`, tokenizer files) that transformers loads.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::Args as ClapArgs;
use lora_core::tensor_io::DiskDtype;

use crate::common::ModelArgs;

/// Arguments of `merge`.
#[derive(ClapArgs, Debug)]
pub struct Args {
    /// Output directory (must not exist or be empty).
    #[arg(long)]
    pub out: PathBuf,
    /// Weight precision on disk: f32 or bf16.
    #[arg(long, default_value = "f32")]
    pub dtype: String,
    #[command(flatten)]
    pub model: ModelArgs,
}

/// Runs `merge`.
pub fn run(args: Args) -> Result<()> {
    if args.model.adapter.is_none() {
        bail!("merge needs --adapter DIR (a PEFT LoRA adapter directory)");
    }
    let dtype = match args.dtype.as_str() {
        "f32" | "float32" => DiskDtype::F32,
        "bf16" | "bfloat16" => DiskDtype::BF16,
        other => bail!("--dtype {other:?}: choose f32 or bf16"),
    };
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
    let n = lora_core::merge_and_unload(&mut pretrained.model)?;
    lora_models::checkpoint::hf::save_hf_dir(&pretrained.model, &args.out, dtype)
        .with_context(|| format!("writing {}", args.out.display()))?;
    pretrained.tokenizer.save_hf(&args.out)?;
    eprintln!("merged {n} adapted modules; wrote {}", args.out.display());
    Ok(())
}
