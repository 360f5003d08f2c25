//! Deploying to where people run models: GGUF files for llama.cpp, Ollama and LM Studio.
//!
//! - [`export_merged_gguf`]: merge the adapters and write the model as a GGUF
//!   ([`merged`]), with the source's tokenizer ([`vocab`]) and an Ollama `Modelfile` next to it
//!   ([`modelfile`]); for a lossy weight type, first measure how much of each update the type
//!   keeps ([`survival`]);
//! - [`export_adapter_gguf`]: the adapter alone in llama.cpp's adapter format ([`adapter`]), to be
//!   applied at load time (`--lora`).
//!
//! Everything is for the `llama` architecture today; another architecture slots in through the
//! name table ([`checkpoint::names`](crate::checkpoint::names)) and its `*.` metadata keys
//! ([`merged::llama_metadata`]).

pub mod adapter;
pub mod merged;
pub mod modelfile;
pub mod survival;
pub mod vocab;

use std::path::{Path, PathBuf};

use lora_core::tensor_io::write_atomic;

use crate::error::ModelError;
use crate::family::Family;
use crate::gguf::{GgmlType, GgufFile, GgufValue};
use crate::llama::Llama;
use crate::pretrained::Pretrained;
pub use adapter::AdapterExport;
pub use merged::parse_weight_type;
pub use survival::LayerSurvival;
use vocab::Metadata;

/// `general.*` keys that describe the file itself; the exporter writes its own and never copies
/// these from the source.
const OWN_GENERAL_KEYS: &[&str] = &[
    "general.architecture",
    "general.type",
    "general.file_type",
    "general.quantization_version",
    "general.alignment",
];

/// The metadata an export carries over from the model it was loaded from: a GGUF file's
/// `tokenizer.*` keys and descriptive `general.*` keys (name, license, …); for a Hugging Face
/// directory the `tokenizer.*` keys built from `tokenizer.json` and `general.name` = the
/// directory's name.
///
/// # Errors
/// Those of [`GgufFile::open`] and [`vocab::tokenizer_metadata_from_hf_dir`].
pub fn source_metadata(source: &Path, vocab_size: usize) -> Result<Metadata, ModelError> {
    if source.is_dir() {
        let mut kv = vocab::tokenizer_metadata_from_hf_dir(source, vocab_size)?;
        if let Some(name) = source.file_name() {
            let name = GgufValue::String(name.to_string_lossy().into_owned());
            kv.insert(0, ("general.name".into(), name));
        }
        return Ok(kv);
    }
    let file = GgufFile::open(source)?;
    let mut kv: Metadata = file
        .metadata()
        .iter()
        .filter(|(k, _)| k.starts_with("general.") && !OWN_GENERAL_KEYS.contains(&k.as_str()))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    kv.extend(vocab::tokenizer_metadata_from_gguf(&file));
    Ok(kv)
}

/// What [`export_merged_gguf`] did.
#[derive(Debug)]
pub struct MergedExport {
    /// Adapted layers merged into the weights.
    pub merged_layers: usize,
    /// What the storage type keeps of each layer's update, measured before merging (empty for
    /// F32, which keeps it up to f32 rounding, and for a model without adapters).
    pub survival: Vec<LayerSurvival>,
    /// Size of the GGUF file in bytes.
    pub bytes: u64,
    /// Tensors written, by storage type name (e.g. `("Q5_0", 180)`), in first-seen order.
    pub tensor_types: Vec<(&'static str, usize)>,
    /// The Ollama Modelfile written next to the GGUF.
    pub modelfile: PathBuf,
}

/// Measures what `target` keeps of every adapter's update (unless `target` is F32), merges the
/// adapters of `pretrained`, writes the merged model to `out` as a GGUF in `target`, and writes
/// an Ollama `Modelfile` in the same directory. The files are written atomically.
///
/// # Errors
/// [`ModelError`] from merging, from reading the source's metadata (`pretrained.source`), from
/// the export checks (non-finite weights) or from writing.
pub fn export_merged_gguf(
    pretrained: &mut Pretrained,
    out: &Path,
    target: GgmlType,
) -> Result<MergedExport, ModelError> {
    check_exportable(&pretrained.model, out)?;
    let survival = if target == GgmlType::F32 {
        Vec::new()
    } else {
        survival::merge_survival(&pretrained.model, target)?
    };
    let merged_layers = lora_core::merge_and_unload(&mut pretrained.model)?;
    let extra = source_metadata(&pretrained.source, pretrained.model.config.vocab_size)?;
    let writer = merged::merged_gguf(&pretrained.model, target, &extra, out)?;
    let bytes = writer.write_file(out)?;
    let mut tensor_types: Vec<(&'static str, usize)> = Vec::new();
    for dtype in writer.tensor_types() {
        match tensor_types.iter_mut().find(|(n, _)| *n == dtype.name()) {
            Some((_, count)) => *count += 1,
            None => tensor_types.push((dtype.name(), 1)),
        }
    }
    let modelfile = out.with_file_name("Modelfile");
    let file_name = out
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let text = modelfile::modelfile(&file_name, &pretrained.tokenizer);
    write_atomic(&modelfile, text.as_bytes())?;
    Ok(MergedExport {
        merged_layers,
        survival,
        bytes,
        tensor_types,
        modelfile,
    })
}

/// Writes the (unmerged) adapters of `pretrained` to `out` in llama.cpp's adapter GGUF format,
/// for the base model `pretrained` was loaded from. Returns what was written.
///
/// # Errors
/// As [`adapter::adapter_gguf`], and [`ModelError::Gguf`] if writing fails.
pub fn export_adapter_gguf(
    pretrained: &Pretrained,
    out: &Path,
) -> Result<AdapterExport, ModelError> {
    check_exportable(&pretrained.model, out)?;
    let general = vec![(
        "general.name".to_string(),
        GgufValue::String(format!("{} LoRA adapter", pretrained.name())),
    )];
    let (writer, export) = adapter::adapter_gguf(&pretrained.model, &general, out)?;
    writer.write_file(out)?;
    Ok(export)
}

/// GGUF export writes llama.cpp's `llama` architecture (metadata keys, tensor names, q/k row
/// order), which is what llama.cpp's converter writes for Llama and Mistral checkpoints. The
/// other families need their own metadata writer: refused until it exists, rather than written as
/// a file llama.cpp would misread.
///
/// # Errors
/// [`ModelError::Export`] naming the family.
fn check_exportable(model: &Llama, out: &Path) -> Result<(), ModelError> {
    match model.config.family {
        Family::Llama | Family::Mistral => Ok(()),
        other => Err(ModelError::Export {
            path: out.to_path_buf(),
            message: format!(
                "GGUF export writes the llama architecture (Llama, SmolLM2, Mistral); {other} is not supported yet — merge to a Hugging Face directory instead (--format hf)"
            ),
        }),
    }
}
