//! A LoRA adapter as llama.cpp's adapter GGUF (`llama-cli -m base.gguf --lora adapter.gguf`), laid
//! out as `convert_lora_to_gguf.py` writes it and `src/llama-adapter.cpp` reads it:
//!
//! - `general.architecture` (must equal the base model's), `general.type = "adapter"`,
//!   `adapter.type = "lora"`, `adapter.lora.alpha` (f32);
//! - per adapted weight `W` (GGUF name `N`, e.g. `blk.0.attn_q.weight`): `N.lora_a` holding PEFT's
//!   `lora_A` `[r, d_in]` (`ne = [d_in, r]`) and `N.lora_b` holding `lora_B` `[d_out, r]`
//!   (`ne = [r, d_out]`), in F32. For `attn_q` / `attn_k` the rows of `lora_B` (the output
//!   dimension) carry the same permutation as the base weight (the converter permutes the product
//!   `B·A`, which moves `B`'s rows);
//! - llama.cpp scales each pair by `alpha / r` with `r = lora_b.ne[0]`
//!   (`llama_adapter_lora_weight::get_scale`). PEFT's scaling can differ per layer (`rank_pattern`,
//!   `alpha_pattern`, rsLoRA's `alpha/√r`); the file's alpha is the first adapted layer's
//!   `lora_alpha`, and a layer whose PEFT scaling differs from `alpha / r` has its `lora_b`
//!   multiplied by the ratio, so llama.cpp applies exactly PEFT's `ΔW` everywhere. (The Python
//!   converter writes `lora_alpha` alone and loses rsLoRA and per-layer patterns.)

use lora_core::tensor_io::HostTensor;
use lora_core::{Adapter, LoraModel};

use super::merged::to_gguf_rows;
use crate::checkpoint::names::hf_to_gguf;
use crate::error::ModelError;
use crate::gguf::{GgmlType, GgufValue, GgufWriter};
use crate::llama::Llama;

/// What went into an adapter GGUF.
#[derive(Clone, Debug, PartialEq)]
pub struct AdapterExport {
    /// `adapter.lora.alpha` written.
    pub alpha: f32,
    /// Adapted weights written (GGUF names of the base tensors).
    pub tensors: Vec<String>,
    /// Layers whose `lora_b` was rescaled to carry a PEFT scaling other than `alpha / r`.
    pub rescaled: Vec<String>,
}

/// The adapters of `model` (attached, not merged) as an adapter GGUF writer; `general` holds
/// descriptive `general.*` keys to add (e.g. `general.name`).
///
/// # Errors
/// [`ModelError::Export`] (`out` names the file in messages) if no layer carries an unmerged LoRA
/// adapter, if an adapter is AdaLoRA or DoRA (llama.cpp has no format for them: merge instead), or a
/// layer has no GGUF name; writer errors (non-finite values) as [`ModelError::Gguf`].
pub fn adapter_gguf(
    model: &Llama,
    general: &[(String, GgufValue)],
    out: &std::path::Path,
) -> Result<(GgufWriter, AdapterExport), ModelError> {
    let err = |message: String| ModelError::Export {
        path: out.to_path_buf(),
        message,
    };
    // (path, A [d_in, r], B [r, d_out], scaling, lora_alpha) in burn layout.
    let mut pairs = Vec::new();
    let mut problems = Vec::new();
    model.visit_linears(&mut |path, lin| {
        if lin.merged {
            problems.push(format!("{path} is merged; export the adapter before merging"));
        } else if let Some(kind @ (Adapter::AdaLora(_) | Adapter::Dora(_))) = &lin.adapter {
            let name = if kind.as_adalora().is_some() { "an AdaLoRA" } else { "a DoRA" };
            problems.push(format!(
                "{path} carries {name} adapter; llama.cpp reads only LoRA adapters (merge it instead: merge --format gguf)"
            ));
        } else if let Some(Adapter::Lora(a)) = &lin.adapter {
            pairs.push((
                path.to_string(),
                HostTensor::from_tensor(a.lora_a.val()),
                HostTensor::from_tensor(a.lora_b.val()),
                a.scaling,
                a.lora_alpha,
                a.r,
            ));
        }
    });
    if let Some(p) = problems.first() {
        return Err(err(p.clone()));
    }
    let alpha = pairs
        .first()
        .map(|p| p.4 as f32)
        .ok_or_else(|| err("the model carries no LoRA adapter to export".into()))?;
    let mut w = GgufWriter::new();
    w.set_str("general.architecture", "llama")?;
    w.set_str("general.type", "adapter")?;
    for (k, v) in general {
        w.set(k.clone(), v.clone())?;
    }
    w.set_str("adapter.type", "lora")?;
    w.set("adapter.lora.alpha", GgufValue::F32(alpha))?;
    w.set("general.quantization_version", GgufValue::U32(2))?;
    let mut export = AdapterExport {
        alpha,
        tensors: Vec::new(),
        rescaled: Vec::new(),
    };
    for (path, a, b, scaling, _, r) in pairs {
        let (name, fixup) = hf_to_gguf(model.config.family, &format!("{path}.weight"))
            .ok_or_else(|| err(format!("{path} has no GGUF name")))?;
        // burn A [d_in, r] → lora_A [r, d_in]; burn B [r, d_out] → lora_B [d_out, r].
        let a = a?.transposed_2d();
        let mut b = to_gguf_rows(b?.transposed_2d(), fixup, &model.config)?;
        let factor = (scaling * r as f64 / f64::from(alpha)) as f32;
        if factor != 1.0 {
            b.data.iter_mut().for_each(|v| *v *= factor);
            export.rescaled.push(path.clone());
        }
        w.add_tensor(format!("{name}.lora_a"), &a.shape, GgmlType::F32, a.data)?;
        w.add_tensor(format!("{name}.lora_b"), &b.shape, GgmlType::F32, b.data)?;
        export.tensors.push(name);
    }
    Ok((w, export))
}
