//! One entry point for "give me a model": a GGUF file or a Hugging Face directory becomes a
//! [`Llama`] plus its tokenizer, ready for inference or for LoRA.

use std::path::{Path, PathBuf};

use burn::tensor::Device;
use lora_core::peft::{self, AdapterConfig};
use lora_core::quant::{Nf4Config, QuantReport};
use lora_core::{AdaptReport, AdapterSet, BaseDtype, WeightedCombination};

use crate::checkpoint::{self, Storage};
use crate::error::ModelError;
use crate::family::Family;
use crate::llama::Llama;
use crate::tokenizer::{TextTokenizer, family_chat_template};

/// A loaded model with its tokenizer.
#[derive(Debug)]
pub struct Pretrained {
    /// The model (every parameter frozen).
    pub model: Llama,
    /// Its tokenizer and chat template.
    pub tokenizer: TextTokenizer,
    /// Where it was loaded from.
    pub source: PathBuf,
    /// `Some(family)` when the checkpoint carried no chat template and the family's documented
    /// one ([`family_chat_template`]) was put in its place (a note says so on stderr).
    pub chat_template_fallback: Option<Family>,
}

impl Pretrained {
    /// A short name for the model (file stem or directory name), used as
    /// `base_model_name_or_path` in adapter configs.
    pub fn name(&self) -> String {
        self.source
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| self.source.display().to_string())
    }
}

/// Loads a GGUF file or a Hugging Face directory (`config.json`, `model.safetensors`,
/// `tokenizer.json`) onto `device`, every weight in f32.
///
/// # Errors
/// [`ModelError`] naming the file and the key or tensor that is missing, misshaped, unused or
/// unsupported.
pub fn load(path: &Path, device: &Device) -> Result<Pretrained, ModelError> {
    load_stored(path, &Storage::default(), device)
}

/// [`load`], streaming: each tensor is decoded and converted to `storage` (bf16/f16, NF4) as
/// the model takes it, so the checkpoint never exists in f32 as a whole (load peak ≈ the
/// loaded model plus the largest tensor in f32).
///
/// # Errors
/// As [`load`]; [`ModelError::Lora`] for a bad NF4 block size.
pub fn load_stored(
    path: &Path,
    storage: &Storage,
    device: &Device,
) -> Result<Pretrained, ModelError> {
    let (model, mut tokenizer) = if path.is_dir() {
        let model = load_hf_model_as(path, storage, device)?;
        (model, TextTokenizer::from_hf_dir(path)?)
    } else {
        let file = checkpoint::gguf::open(path)?;
        let config = checkpoint::gguf::read_config(&file)?;
        let weights = checkpoint::gguf::read_weights(&file, &config)?;
        let model = checkpoint::build_llama_as(&config, weights, storage, device)?;
        (model, TextTokenizer::from_gguf(&file)?)
    };
    tokenizer
        .check_fits_embedding(model.config.vocab_size)
        .map_err(|message| ModelError::Config {
            path: path.to_path_buf(),
            message,
        })?;
    let family = model.config.family;
    let fallback = family_chat_template(family).filter(|_| tokenizer.chat_template().is_none());
    if let Some(template) = fallback {
        eprintln!(
            "note: {} carries no chat template; using the documented {family} template",
            path.display()
        );
        tokenizer.set_chat_template(Some(template.to_owned()));
    }
    Ok(Pretrained {
        model,
        tokenizer,
        source: path.to_path_buf(),
        chat_template_fallback: fallback.map(|_| family),
    })
}

/// Loads only the model from a Hugging Face directory (no tokenizer needed), e.g. the tiny test
/// fixtures.
///
/// # Errors
/// As [`load`].
pub fn load_hf_model(dir: &Path, device: &Device) -> Result<Llama, ModelError> {
    load_hf_model_as(dir, &Storage::default(), device)
}

/// [`load_hf_model`] with the weights stored as `storage` says (bf16/f16, NF4).
///
/// # Errors
/// As [`load`]; [`ModelError::Lora`] for a bad NF4 block size.
pub fn load_hf_model_as(
    dir: &Path,
    storage: &Storage,
    device: &Device,
) -> Result<Llama, ModelError> {
    let config = checkpoint::hf::read_config(dir)?;
    let weights = checkpoint::hf::read_weights(dir)?;
    checkpoint::build_llama_as(&config, weights, storage, device)
}

/// How to load a model for inference or evaluation: the base as stored, in bf16/f16 or in NF4,
/// with or without an adapter.
#[derive(Clone, Debug, Default)]
pub struct LoadOptions {
    /// Store every linear layer except `lm_head` in NF4 (QLoRA's base; dequantized in each
    /// forward). transformers keeps `lm_head` in full precision too.
    pub nf4: Option<Nf4Config>,
    /// A PEFT adapter directory (LoRA, DoRA or AdaLoRA, ours or PEFT's) to attach.
    pub adapter: Option<PathBuf>,
    /// The type the frozen weights are stored and multiplied in (after NF4 quantization, what
    /// stays dense: the embedding and `lm_head`).
    pub base_dtype: BaseDtype,
    /// Several PEFT adapters by name (`name`, directory), loaded in order into an
    /// [`AdapterSet`]: the first is active, unless `combine` is set (instead of `adapter`).
    pub adapters: Vec<(String, PathBuf)>,
    /// Combine all of `adapters` with these weights as PEFT's `add_weighted_adapter` does, into
    /// one adapter named [`COMBINED`], which is made active.
    pub combine: Option<WeightedCombination>,
}

/// The name [`load_with`] gives the combination of [`LoadOptions::adapters`].
pub const COMBINED: &str = "combined";

/// A model loaded with [`load_with`], and what was done to it.
#[derive(Debug)]
pub struct Loaded {
    /// The model and tokenizer.
    pub pretrained: Pretrained,
    /// What NF4 quantization did, if asked.
    pub quant: Option<QuantReport>,
    /// The active adapter's config and what it adapts, if one was attached.
    pub adapter: Option<(AdapterConfig, AdaptReport)>,
    /// The named adapters, when [`LoadOptions::adapters`] gave several (switch the active one,
    /// disable them all, combine them further).
    pub adapters: Option<AdapterSet>,
}

/// [`load_stored`] (the base streamed into NF4 and/or `base_dtype`), then attach an adapter as
/// `options` say.
///
/// # Errors
/// As [`load`]; [`ModelError::Lora`] for a bad block size or an adapter that does not fit
/// (naming the file and key).
pub fn load_with(
    path: &Path,
    options: &LoadOptions,
    device: &Device,
) -> Result<Loaded, ModelError> {
    let storage = Storage {
        dtype: options.base_dtype,
        nf4: options.nf4,
    };
    let mut pretrained = load_stored(path, &storage, device)?;
    let quant = options.nf4.map(|_| QuantReport::of(&pretrained.model));
    let mut adapters = None;
    let adapter = match (&options.adapter, options.adapters.is_empty()) {
        (Some(_), false) => {
            return Err(ModelError::Lora(lora_core::LoraError::InvalidConfig(
                "give one adapter directory or several named adapters, not both".into(),
            )));
        }
        (Some(dir), true) => {
            let (model, config, report) = peft::load_adapter(pretrained.model, dir, device)?;
            pretrained.model = model;
            Some((config, report))
        }
        (None, false) => {
            let (model, set) = load_named(pretrained.model, options, device)?;
            pretrained.model = model;
            let config = set.active().and_then(|name| set.config(name)).cloned();
            adapters = Some(set);
            config.map(|c| (c, AdaptReport::of(&pretrained.model)))
        }
        (None, true) if options.combine.is_some() => {
            return Err(ModelError::Lora(lora_core::LoraError::InvalidConfig(
                "a combination needs named adapters (LoadOptions::adapters)".into(),
            )));
        }
        (None, true) => None,
    };
    Ok(Loaded {
        pretrained,
        quant,
        adapter,
        adapters,
    })
}

/// Loads `options.adapters` by name into an [`AdapterSet`] and, with `options.combine`, adds
/// their combination as [`COMBINED`] and makes it active.
fn load_named(
    model: Llama,
    options: &LoadOptions,
    device: &Device,
) -> Result<(Llama, AdapterSet), ModelError> {
    let mut set = AdapterSet::new();
    let mut model = model;
    for (name, dir) in &options.adapters {
        model = set.load(model, name, dir, device)?.0;
    }
    if let Some(request) = &options.combine {
        let names: Vec<&str> = options.adapters.iter().map(|(n, _)| n.as_str()).collect();
        set.add_weighted(&mut model, &names, request, COMBINED)?;
        set.set_active(&mut model, COMBINED)?;
    }
    Ok((model, set))
}
