//! `burn-lora merge`: fold a LoRA adapter into the base weights and write a Hugging Face
//! directory (`config.json`, `model.safetensors`, tokenizer files) that transformers loads.
//!
//! With `--quant nf4` the adapter is merged into the dequantized weights, which are written in
//! `--dtype`; nothing is re-quantized. `--requantize-report` measures what re-quantizing the
//! merged weights to NF4 would keep of each adapter (`lora_core::quant::requantize_report`).

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::Args as ClapArgs;
use lora_core::quant::{RequantizeReport, requantize_report_layer};
use lora_core::tensor_io::DiskDtype;
use lora_core::{LoraModel, Nf4Config};

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

/// What re-quantizing each adapted NF4 layer after merging would keep of its update.
#[derive(Debug)]
pub struct RequantizeSummary {
    /// Module path and report of every measured layer, in model order.
    pub layers: Vec<(String, RequantizeReport)>,
    /// Module path and reason of every adapted NF4 layer that could not be measured (e.g. an
    /// all-zero ΔW from an untrained adapter).
    pub skipped: Vec<(String, String)>,
}

impl RequantizeSummary {
    /// Mean of the layers' `survival` (each layer counts once), or `None` if none was measured.
    pub fn mean_survival(&self) -> Option<f64> {
        let n = self.layers.len();
        (n > 0).then(|| self.layers.iter().map(|(_, r)| r.survival).sum::<f64>() / n as f64)
    }

    /// Mean of the layers' `relative_error`, or `None` if none was measured.
    pub fn mean_relative_error(&self) -> Option<f64> {
        let n = self.layers.len();
        (n > 0).then(|| {
            self.layers
                .iter()
                .map(|(_, r)| r.relative_error)
                .sum::<f64>()
                / n as f64
        })
    }
}

/// Measures every layer with an NF4 base and an unmerged adapter; changes nothing.
pub fn requantize_summary<M: LoraModel>(model: &M, nf4: &Nf4Config) -> RequantizeSummary {
    let mut summary = RequantizeSummary {
        layers: Vec::new(),
        skipped: Vec::new(),
    };
    model.visit_linears(&mut |path, lin| {
        if lin.adapter.is_none() || !lin.weight.is_quantized() {
            return;
        }
        match requantize_report_layer(lin, nf4, path) {
            Ok(r) => summary.layers.push((path.to_string(), r)),
            Err(e) => summary.skipped.push((path.to_string(), e.to_string())),
        }
    });
    summary
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
    if args.model.adapter.is_none() {
        bail!("merge needs --adapter DIR (a PEFT LoRA adapter directory)");
    }
    let dtype = match args.dtype.as_str() {
        "f32" | "float32" => DiskDtype::F32,
        "bf16" | "bfloat16" => DiskDtype::BF16,
        other => bail!("--dtype {other:?}: choose f32 or bf16"),
    };
    let nf4 = args.model.nf4_config()?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use lora_core::quant::quantize_base;
    use lora_core::{BackendKind, select_device};

    fn fixtures() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fixtures")
    }

    #[test]
    fn requantize_summary_measures_every_adapted_nf4_layer_and_changes_nothing() {
        let d = select_device(BackendKind::Flex).unwrap();
        let mut m =
            lora_models::pretrained::load_hf_model(&fixtures().join("tiny-llama"), &d).unwrap();
        let nf4 = Nf4Config::default();
        quantize_base(&mut m, &nf4, &["lm_head"]).unwrap();
        let (m, _, report) =
            lora_core::peft::load_adapter(m, &fixtures().join("tiny-llama/peft-adapter"), &d)
                .unwrap();
        let s = requantize_summary(&m, &nf4);
        assert_eq!(s.layers.len(), report.modules.len(), "{:?}", s.skipped);
        assert!(s.skipped.is_empty());
        for (path, r) in &s.layers {
            assert!(
                r.relative_error.is_finite() && r.delta_norm > 0.0,
                "{path}: {r:?}"
            );
            assert!((0.0..=1.0).contains(&r.codes_changed), "{path}: {r:?}");
        }
        let mean = s.mean_survival().unwrap();
        let by_hand = s.layers.iter().map(|(_, r)| r.survival).sum::<f64>() / s.layers.len() as f64;
        assert_eq!(mean, by_hand);
        // Measuring left every base in NF4 and every adapter unmerged.
        m.visit_linears(&mut |p, lin| {
            if p != "lm_head" {
                assert!(lin.weight.is_quantized() && !lin.merged, "{p}");
            }
        });
    }

    #[test]
    fn an_empty_summary_has_no_mean() {
        let s = RequantizeSummary {
            layers: Vec::new(),
            skipped: Vec::new(),
        };
        assert_eq!(s.mean_survival(), None);
        assert_eq!(s.mean_relative_error(), None);
    }
}
