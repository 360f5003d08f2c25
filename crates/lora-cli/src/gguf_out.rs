//! `merge --format gguf` and `export-adapter`: thin wrappers over `lora_models::export`, which
//! holds all the logic (file layout, types, tokenizer, Modelfile, survival measure).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::Args as ClapArgs;
use lora_models::export::survival::mean_survival;
use lora_models::export::{export_adapter_gguf, export_merged_gguf, parse_weight_type};

use crate::common::ModelArgs;

/// Below this mean survival the merge warns loudly: the storage type erases much of the update.
const SURVIVAL_WARNING: f64 = 0.9;

/// `merge --format gguf`: merge, write `out` as a GGUF of `type_name`, and a Modelfile beside it.
pub fn merge_to_gguf(model: &ModelArgs, out: &Path, type_name: &str) -> Result<()> {
    let Some(target) = parse_weight_type(type_name) else {
        bail!("--type {type_name:?}: choose f32, f16, bf16, q8_0, q6_k, q5_0, q4_k or q4_0");
    };
    let device = model.device()?;
    let mut pretrained = model.load(&device)?;
    let report = export_merged_gguf(&mut pretrained, out, target)
        .with_context(|| format!("writing {}", out.display()))?;
    if !report.survival.is_empty() {
        eprintln!(
            "share of each update ΔW that survives storing the merged weights as {type_name} (⟨W'−Ŵ, ΔW⟩/‖ΔW‖²):"
        );
        for l in &report.survival {
            eprintln!(
                "{:>40} {:>5} survival {:.4}  error ‖W'−Ŵ−ΔW‖/‖ΔW‖ {:.4}",
                l.path,
                l.dtype.name(),
                l.report.survival,
                l.report.relative_error
            );
        }
        if let Some(mean) = mean_survival(&report.survival) {
            let warn = if mean < SURVIVAL_WARNING {
                "WARNING: "
            } else {
                ""
            };
            eprintln!(
                "{warn}mean survival over {} layers: {mean:.4} — {type_name} keeps {:.1}% of the adapter's update",
                report.survival.len(),
                100.0 * mean
            );
        }
    }
    let types: Vec<String> = report
        .tensor_types
        .iter()
        .map(|(t, n)| format!("{n} × {t}"))
        .collect();
    eprintln!(
        "merged {} adapted modules; wrote {} ({:.1} MB: {}) and {}",
        report.merged_layers,
        out.display(),
        report.bytes as f64 / 1e6,
        types.join(", "),
        report.modelfile.display()
    );
    Ok(())
}

/// Arguments of `export-adapter`.
#[derive(ClapArgs, Debug)]
pub struct ExportAdapterArgs {
    /// Output GGUF file (llama.cpp's LoRA adapter format, for `llama-cli --lora FILE`).
    #[arg(long)]
    pub out: PathBuf,
    #[command(flatten)]
    pub model: ModelArgs,
}

/// Runs `export-adapter`.
pub fn export_adapter(args: ExportAdapterArgs) -> Result<()> {
    if !args.model.has_adapter() {
        bail!("export-adapter needs --adapter DIR (a PEFT LoRA adapter directory)");
    }
    let device = args.model.device()?;
    let pretrained = args.model.load(&device)?;
    let e = export_adapter_gguf(&pretrained, &args.out)
        .with_context(|| format!("writing {}", args.out.display()))?;
    eprintln!(
        "wrote {} ({} adapted weights, adapter.lora.alpha = {}{}); apply it with: llama-cli -m BASE.gguf --lora {}",
        args.out.display(),
        e.tensors.len(),
        e.alpha,
        if e.rescaled.is_empty() {
            String::new()
        } else {
            format!(
                ", {} lora_b rescaled to keep PEFT's per-layer scaling",
                e.rescaled.len()
            )
        },
        args.out.display()
    );
    Ok(())
}
