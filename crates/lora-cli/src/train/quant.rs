//! The QLoRA side of `burn-lora train` (`--quant nf4`): the NF4 base and what `summary.json`
//! records about it. (Moved out of `train.rs` unchanged, to keep that file short.)

use std::time::Instant;

use anyhow::Result;
use lora_models::Llama;
use lora_train::TrainConfig;
use serde::Serialize;

/// Storage of the NF4 base in the summary.
#[derive(Serialize)]
pub(super) struct QuantSummary {
    method: &'static str,
    block_size: usize,
    double_quant: bool,
    quantized_modules: usize,
    quantized_weights: usize,
    base_bytes_on_device: usize,
    pub(super) bits_per_weight: f64,
    f32_bytes_before: usize,
}

/// Quantizes every linear layer except `lm_head` to NF4 when the config asks for it (QLoRA;
/// transformers keeps `lm_head` in full precision too).
pub(super) fn quantize_if_asked(
    model: &mut Llama,
    cfg: &TrainConfig,
    json: bool,
) -> Result<Option<QuantSummary>> {
    let Some(nf4) = cfg.quant.to_nf4().map_err(|e| anyhow::anyhow!(e))? else {
        return Ok(None);
    };
    let t = Instant::now();
    let r = lora_core::quant::quantize_base(model, &nf4, &["lm_head"])?;
    if !json {
        eprintln!(
            "QLoRA: {} linear layers in NF4 (block {}, double quantization {}): {} weights in {:.1} MiB on the device, {:.3} bits/weight (f32: {:.1} MiB) in {:.1}s",
            r.modules.len(),
            nf4.block_size,
            if nf4.double_quant { "on" } else { "off" },
            r.weights,
            r.storage_bytes as f64 / (1u64 << 20) as f64,
            r.bits_per_weight(),
            r.dense_bytes as f64 / (1u64 << 20) as f64,
            t.elapsed().as_secs_f64()
        );
    }
    Ok(Some(QuantSummary {
        method: "nf4",
        block_size: nf4.block_size,
        double_quant: nf4.double_quant,
        quantized_modules: r.modules.len(),
        quantized_weights: r.weights,
        base_bytes_on_device: r.storage_bytes,
        bits_per_weight: r.bits_per_weight(),
        f32_bytes_before: r.dense_bytes,
    }))
}
