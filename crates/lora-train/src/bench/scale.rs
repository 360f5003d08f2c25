//! `bench --scale 1b,3b,8b`: LoRA training of real-size Llama shapes with random weights, on an
//! f32, a bf16 and an NF4 base, next to PyTorch + PEFT on the same shapes.
//!
//! Random weights measure memory and speed exactly as real weights would, and need no download.
//! The model is built one tensor at a time and each tensor is converted the moment it is drawn
//! (cast to bf16, or quantized to NF4 on the host), so the largest f32 tensor in memory while
//! building is one linear weight: the 8B-shaped NF4 model never exists in f32.

use std::time::Instant;

use burn::tensor::Device;
use lora_core::quant::Nf4Config;
use lora_core::{BaseDtype, LoraConfig, LoraModel, TargetModules, apply_lora};
use lora_models::checkpoint::Storage;
use lora_models::family::Variant;
use lora_models::{Family, Llama, LlamaConfig};
use serde::{Deserialize, Serialize};

use super::Progress;
use super::job::{RawTrain, TrainSettings, timed_training, training_device};
use crate::error::TrainError;

/// The vocabulary of every scale shape: SmolLM2's tokenizer (49,152 tokens), so the embedding
/// and head are the size a fine-tune with that tokenizer would have.
pub const SCALE_VOCAB: usize = 49152;

/// A real-size Llama shape (`--scale 1b,3b,8b`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ScaleShape {
    /// Llama-3.2-1B: D 2048, 16 layers, 32 / 8 heads of 64, FFN 8192, tied embeddings.
    #[serde(rename = "1b")]
    B1,
    /// Llama-3.2-3B: D 3072, 28 layers, 24 / 8 heads of 128, FFN 8192, tied embeddings.
    #[serde(rename = "3b")]
    B3,
    /// Llama-3.1-8B: D 4096, 32 layers, 32 / 8 heads of 128, FFN 14336, untied.
    #[serde(rename = "8b")]
    B8,
}

impl ScaleShape {
    /// `1b`, `3b`, `8b`.
    pub fn name(self) -> &'static str {
        match self {
            ScaleShape::B1 => "1b",
            ScaleShape::B3 => "3b",
            ScaleShape::B8 => "8b",
        }
    }

    /// Parses `1b`, `3b`, `8b`.
    ///
    /// # Errors
    /// [`TrainError::Bench`] naming the choices.
    pub fn parse(s: &str) -> Result<Self, TrainError> {
        match s.to_ascii_lowercase().as_str() {
            "1b" => Ok(ScaleShape::B1),
            "3b" => Ok(ScaleShape::B3),
            "8b" => Ok(ScaleShape::B8),
            other => Err(TrainError::Bench(format!(
                "unknown scale shape {other:?}; use 1b, 3b or 8b"
            ))),
        }
    }

    /// The shape as a model config (Llama 3's RoPE base 500000, RMSNorm ε 1e-5).
    pub fn config(self) -> LlamaConfig {
        let (d_model, n_layers, n_heads, d_ff, tied) = match self {
            ScaleShape::B1 => (2048, 16, 32, 8192, true),
            ScaleShape::B3 => (3072, 28, 24, 8192, true),
            ScaleShape::B8 => (4096, 32, 32, 14336, false),
        };
        LlamaConfig {
            family: Family::Llama,
            vocab_size: SCALE_VOCAB,
            d_model,
            n_layers,
            n_heads,
            n_kv_heads: 8,
            head_dim: d_model / n_heads,
            d_ff,
            rope_theta: 500000.0,
            rms_norm_eps: 1e-5,
            max_seq_len: 2048,
            tie_word_embeddings: tied,
            variant: Variant::default(),
            sliding_window: None,
            query_pre_attn_scalar: None,
        }
    }
}

/// How the frozen base of a scale row is stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ScaleBase {
    /// Everything f32.
    F32,
    /// Every frozen weight bf16 (`--base-dtype bf16`).
    Bf16,
    /// Every linear layer but `lm_head` NF4 with double quantization (`--quant nf4`); the
    /// embedding and `lm_head` f32, as transformers + bitsandbytes keeps them.
    Nf4,
}

impl ScaleBase {
    /// `f32`, `bf16`, `nf4`.
    pub fn name(self) -> &'static str {
        match self {
            ScaleBase::F32 => "f32",
            ScaleBase::Bf16 => "bf16",
            ScaleBase::Nf4 => "nf4",
        }
    }

    /// Parses `f32`, `bf16`, `nf4`.
    ///
    /// # Errors
    /// [`TrainError::Bench`] naming the choices.
    pub fn parse(s: &str) -> Result<Self, TrainError> {
        match s.to_ascii_lowercase().as_str() {
            "f32" => Ok(ScaleBase::F32),
            "bf16" => Ok(ScaleBase::Bf16),
            "nf4" => Ok(ScaleBase::Nf4),
            other => Err(TrainError::Bench(format!(
                "unknown scale base {other:?}; use f32, bf16 or nf4"
            ))),
        }
    }

    /// The dense dtype: what every weight is in, or (NF4) what stays dense.
    fn dense(self) -> BaseDtype {
        match self {
            ScaleBase::Bf16 => BaseDtype::Bf16,
            ScaleBase::F32 | ScaleBase::Nf4 => BaseDtype::F32,
        }
    }

    /// Storage of the frozen linear weights (all but `lm_head`) in bits per weight, for the
    /// default NF4 settings (block 64, double quantization: 4 + 8/64 + 32/(64·256)).
    pub fn bits_per_weight(self) -> f64 {
        match self {
            ScaleBase::F32 => 32.0,
            ScaleBase::Bf16 => 16.0,
            ScaleBase::Nf4 => 4.0 + 8.0 / 64.0 + 32.0 / (64.0 * 256.0),
        }
    }
}

/// Weights in the linear layers but `lm_head`, and in the embedding and head together (a tied
/// head counted once).
fn weight_counts(config: &LlamaConfig) -> (u64, u64) {
    let (d, e, f) = (config.d_model, config.head_dim, config.d_ff);
    let layer = d * config.n_heads * e * 2 + d * config.n_kv_heads * e * 2 + 3 * d * f;
    let vocab = config.vocab_size * d * if config.tie_word_embeddings { 1 } else { 2 };
    ((config.n_layers * layer) as u64, vocab as u64)
}

/// Bytes the frozen weights of `shape` take in `base` (what must fit in memory before a single
/// activation exists).
pub fn weight_bytes(shape: ScaleShape, base: ScaleBase) -> u64 {
    let (linear, vocab) = weight_counts(&shape.config());
    let linear_bytes = (linear as f64 * base.bits_per_weight() / 8.0) as u64;
    linear_bytes + vocab * (base.dense().bits() / 8) as u64
}

/// `MemAvailable` of `/proc/meminfo`, bytes; `None` where it cannot be read.
pub fn mem_available_bytes() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = info.lines().find(|l| l.starts_with("MemAvailable:"))?;
    Some(line.split_whitespace().nth(1)?.parse::<u64>().ok()? * 1024)
}

/// Why a row cannot run here, or `None` when its weights fit: the weights plus a quarter for
/// activations, optimizer state and temporaries must fit in the memory available now.
pub fn does_not_fit(shape: ScaleShape, base: ScaleBase, available: Option<u64>) -> Option<String> {
    let need = weight_bytes(shape, base);
    let available = available?;
    let gib = |b: u64| b as f64 / (1u64 << 30) as f64;
    (need + need / 4 > available).then(|| {
        format!(
            "does not fit: its weights alone are {:.1} GiB ({} in {}), {:.1} GiB of memory is available",
            gib(need),
            shape.name(),
            base.name(),
            gib(available)
        )
    })
}

impl ScaleBase {
    /// How the model stores its frozen weights in this base.
    pub fn storage(self) -> Storage {
        Storage {
            dtype: self.dense(),
            nf4: (self == ScaleBase::Nf4).then(Nf4Config::default),
        }
    }
}

/// A random-weight model of `shape` in `base` on `device`, built tensor by tensor (see the
/// module docs). A tied head is a transposed view of the embedding (one copy, as PyTorch keeps).
///
/// # Errors
/// [`TrainError`] if a weight cannot be quantized.
pub fn random_model(
    shape: ScaleShape,
    base: ScaleBase,
    device: &Device,
) -> Result<Llama, TrainError> {
    Ok(shape.config().init_stored(&base.storage(), device)?)
}

/// Storage of the frozen linear weights but `lm_head`, bits per weight, from what is stored.
pub fn base_bits_per_weight(model: &Llama) -> f64 {
    let (mut bytes, mut weights) = (0usize, 0usize);
    model.visit_linears(&mut |path, lin| {
        if path != "lm_head" {
            bytes += lin.weight.storage_bytes();
            weights += lin.weight.shape().num_elements();
        }
    });
    8.0 * bytes as f64 / weights.max(1) as f64
}

/// Builds the random `shape` in `base` (timed as its load), puts LoRA on every linear layer but
/// the head, and times the training steps `settings` asks for.
///
/// # Errors
/// [`TrainError`] if the model cannot be built or a step fails.
pub fn run_scale(
    shape: ScaleShape,
    base: ScaleBase,
    settings: &TrainSettings,
    device: &Device,
    progress: &mut dyn FnMut(Progress<'_>),
) -> Result<RawTrain, TrainError> {
    let device = training_device(device, settings);
    device.seed(settings.seed);
    let t0 = Instant::now();
    let model = random_model(shape, base, &device)?;
    let load_s = t0.elapsed().as_secs_f64();
    let bits = base_bits_per_weight(&model);
    let lora = LoraConfig::new(settings.rank, settings.alpha, TargetModules::AllLinear);
    let (model, _) = apply_lora(model, &lora, &device)?;
    let label = format!("burn-lora {} {}", shape.name(), base.name());
    timed_training(model, settings, load_s, bits, &label, progress)
}

#[cfg(test)]
mod tests {
    use super::*;
    use lora_core::{BackendKind, select_device};

    #[test]
    fn shapes_have_the_parameter_counts_of_the_llama_releases() {
        // Llama-3.2-1B / 3B / 3.1-8B with a 49,152-token vocabulary instead of 128,256.
        let n = |s: ScaleShape| s.config().num_params() as f64 / 1e9;
        assert!(
            (n(ScaleShape::B1) - 1.074).abs() < 0.01,
            "{}",
            n(ScaleShape::B1)
        );
        assert!(
            (n(ScaleShape::B3) - 2.97).abs() < 0.01,
            "{}",
            n(ScaleShape::B3)
        );
        assert!(
            (n(ScaleShape::B8) - 7.38).abs() < 0.01,
            "{}",
            n(ScaleShape::B8)
        );
        for s in [ScaleShape::B1, ScaleShape::B3, ScaleShape::B8] {
            s.config().validate().unwrap();
            assert_eq!(ScaleShape::parse(s.name()).unwrap(), s);
        }
    }

    #[test]
    fn the_8b_shape_in_f32_does_not_fit_24_gib_and_in_nf4_it_does() {
        let gib = 1u64 << 30;
        let f32 = weight_bytes(ScaleShape::B8, ScaleBase::F32) as f64 / gib as f64;
        let nf4 = weight_bytes(ScaleShape::B8, ScaleBase::Nf4) as f64 / gib as f64;
        assert!((f32 - 27.5).abs() < 0.1, "{f32}");
        assert!((nf4 - 4.85).abs() < 0.05, "{nf4}");
        let why = does_not_fit(ScaleShape::B8, ScaleBase::F32, Some(24 * gib)).unwrap();
        assert!(why.contains("does not fit"), "{why}");
        assert!(does_not_fit(ScaleShape::B8, ScaleBase::Nf4, Some(24 * gib)).is_none());
        assert!(does_not_fit(ScaleShape::B8, ScaleBase::F32, None).is_none());
    }

    #[test]
    fn a_random_model_is_stored_as_its_base_says() {
        let d = select_device(BackendKind::Flex).unwrap();
        let mut config = LlamaConfig::tiny();
        config.tie_word_embeddings = false;
        let q = config.init_stored(&ScaleBase::Nf4.storage(), &d).unwrap();
        let p = &q.model.layers[0].self_attn.q_proj;
        assert!(p.weight.is_quantized());
        assert_eq!(p.dims(), (config.d_model, config.n_heads * config.head_dim));
        assert!(!q.lm_head.weight.is_quantized(), "lm_head stays dense");
        let b = config.init_stored(&ScaleBase::Bf16.storage(), &d).unwrap();
        let up = &b.model.layers[0].mlp.up_proj;
        assert_eq!(up.weight.val().dtype(), burn::tensor::DType::BF16);
        // The layer still computes in f32 around its bf16 product.
        let y = up.forward(burn::tensor::Tensor::<2>::ones([3, config.d_model], &d));
        assert_eq!(
            (y.dims(), y.dtype()),
            ([3, config.d_ff], burn::tensor::DType::F32)
        );
    }
}
