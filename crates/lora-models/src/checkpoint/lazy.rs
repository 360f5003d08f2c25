//! Checkpoint tensors read one at a time: a [`LazyTensor`] knows its shape and decodes its
//! values only when the model builder takes it, so loading never holds the whole checkpoint in
//! f32 — each tensor is decoded, converted to what the model stores (f32, bf16, f16 or NF4,
//! `checkpoint/convert.rs`) and dropped before the next one.
//!
//! GGUF files and safetensors files are memory-mapped; the pages of a tensor are read when it is
//! decoded and released (dropped from the resident set) right after.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use lora_core::tensor_io::{HostTensor, view_to_f32};
use safetensors::SafeTensors;

use crate::error::ModelError;

type Decode<'a> = Box<dyn FnOnce() -> Result<HostTensor, ModelError> + 'a>;

/// A checkpoint tensor not decoded yet.
pub struct LazyTensor<'a> {
    /// Row-major shape, as stored (PyTorch layout).
    pub shape: Vec<usize>,
    decode: Decode<'a>,
}

impl std::fmt::Debug for LazyTensor<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "LazyTensor({:?})", self.shape)
    }
}

impl<'a> LazyTensor<'a> {
    /// A tensor whose values `decode` produces when asked.
    pub fn new(
        shape: Vec<usize>,
        decode: impl FnOnce() -> Result<HostTensor, ModelError> + 'a,
    ) -> Self {
        LazyTensor {
            shape,
            decode: Box::new(decode),
        }
    }

    /// A tensor already in memory.
    pub fn ready(t: HostTensor) -> Self {
        LazyTensor::new(t.shape.clone(), move || Ok(t))
    }

    /// Decodes the values.
    ///
    /// # Errors
    /// Whatever decoding reports (a GGUF block type, a safetensors dtype), naming the tensor.
    pub fn load(self) -> Result<HostTensor, ModelError> {
        (self.decode)()
    }
}

/// A memory-mapped safetensors file.
struct MappedSafetensors {
    path: PathBuf,
    map: memmap2::Mmap,
}

impl MappedSafetensors {
    /// Drops the pages of `bytes` (a slice of the map) from the resident set once decoded; they
    /// are read from the file again if touched (see `GgufFile::release`).
    fn release(&self, bytes: &[u8]) {
        let offset = (bytes.as_ptr() as usize).wrapping_sub(self.map.as_ptr() as usize);
        #[cfg(unix)]
        if offset
            .checked_add(bytes.len())
            .is_some_and(|end| end <= self.map.len())
        {
            // SAFETY: a read-only shared file mapping: MADV_DONTNEED drops the pages and a later
            // access reads the same bytes from the file again (madvise(2)); no view changes.
            let _ = unsafe {
                self.map.unchecked_advise_range(
                    memmap2::UncheckedAdvice::DontNeed,
                    offset,
                    bytes.len(),
                )
            };
        }
        #[cfg(not(unix))]
        let _ = offset;
    }
}

/// Every tensor of the safetensors file at `path`, by name, not decoded yet.
///
/// # Errors
/// [`ModelError::Io`] if the file cannot be opened, [`ModelError::Tensor`] if it is not a valid
/// safetensors file.
pub fn safetensors_lazy(path: &Path) -> Result<Vec<(String, LazyTensor<'static>)>, ModelError> {
    let io = |source| ModelError::Io {
        path: path.to_path_buf(),
        source,
    };
    let file = std::fs::File::open(path).map_err(io)?;
    // SAFETY: read-only map, kept alive by the closures below; like every mmap-based loader we
    // assume the file is not truncated or rewritten while the model loads.
    let map = unsafe { memmap2::Mmap::map(&file) }.map_err(io)?;
    let file = Arc::new(MappedSafetensors {
        path: path.to_path_buf(),
        map,
    });
    let invalid = |message: String| ModelError::Tensor {
        path: path.to_path_buf(),
        name: "(header)".into(),
        message: format!("not a valid safetensors file: {message}"),
    };
    let st = SafeTensors::deserialize(&file.map).map_err(|e| invalid(e.to_string()))?;
    let mut out = Vec::new();
    for (name, view) in st.tensors() {
        let shape = view.shape().to_vec();
        let file = Arc::clone(&file);
        let key = name.clone();
        out.push((
            name,
            LazyTensor::new(shape.clone(), move || {
                let err = |message: String| ModelError::Tensor {
                    path: file.path.clone(),
                    name: key.clone(),
                    message,
                };
                let st = SafeTensors::deserialize(&file.map).map_err(|e| err(e.to_string()))?;
                let view = st.tensor(&key).map_err(|e| err(e.to_string()))?;
                let data = view_to_f32(&view).map_err(err)?;
                file.release(view.data());
                Ok(HostTensor { shape, data })
            }),
        ));
    }
    Ok(out)
}
