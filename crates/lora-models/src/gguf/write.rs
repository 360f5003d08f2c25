//! Writing GGUF v3 files: the layout [`GgufFile`](super::GgufFile) reads (see the module docs
//! of [`gguf`](super)), as gguf-py `gguf/gguf_writer.py` and llama.cpp `ggml/src/gguf.cpp` write
//! it: header, metadata in insertion order, tensor infos, padding to the alignment, then each
//! tensor's data at an aligned offset, padded to the alignment after it.
//!
//! Tensors are given as `f32` values and encoded (quantized) only while the file is written, one
//! at a time; the file goes to a temporary name in the same directory and is renamed into place
//! when complete, so an interrupted export never leaves a half-written `.gguf` behind.

use std::io::Write;
use std::path::Path;

use lora_core::tensor_io::temp_path;

use super::quantize::{can_quantize, quantize};
use super::value::write_str;
use super::{DEFAULT_ALIGNMENT, GgmlType, GgufError, GgufValue, MAX_DIMS, Result};

/// Longest tensor name llama.cpp accepts: `GGML_MAX_NAME` (64) bytes including the final NUL.
pub const MAX_TENSOR_NAME: usize = 63;

/// One tensor waiting to be written.
#[derive(Debug, Clone)]
struct PendingTensor {
    name: String,
    /// Row-major shape (slowest first); the file lists it reversed (`ne`).
    dims: Vec<usize>,
    dtype: GgmlType,
    values: Vec<f32>,
}

impl PendingTensor {
    fn n_bytes(&self) -> usize {
        self.values.len() / self.dtype.block_size() * self.dtype.type_size()
    }
}

/// A GGUF file being assembled in memory: metadata and `f32` tensors, encoded on write.
#[derive(Debug, Clone, Default)]
pub struct GgufWriter {
    metadata: Vec<(String, GgufValue)>,
    tensors: Vec<PendingTensor>,
    alignment: Option<u64>,
}

impl GgufWriter {
    /// An empty file (no metadata, no tensors, alignment 32).
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets `key` to `value`, replacing an earlier value of the same key in place (keys stay
    /// unique and in first-insertion order).
    ///
    /// # Errors
    /// [`GgufError::InvalidMetadata`] for an empty key, an array whose elements are not all of
    /// one type, or `general.alignment` (use [`GgufWriter::set_alignment`]).
    pub fn set(&mut self, key: impl Into<String>, value: GgufValue) -> Result<()> {
        let key = key.into();
        let bad = |problem: String| GgufError::InvalidMetadata {
            key: key.clone(),
            problem,
        };
        if key.is_empty() {
            return Err(bad("the key is empty".into()));
        }
        if key == "general.alignment" {
            return Err(bad("set it with GgufWriter::set_alignment".into()));
        }
        if let Some(problem) = value.array_problem() {
            return Err(bad(problem));
        }
        match self.metadata.iter_mut().find(|(k, _)| *k == key) {
            Some((_, v)) => *v = value,
            None => self.metadata.push((key, value)),
        }
        Ok(())
    }

    /// Shorthand for [`GgufWriter::set`] with a string value.
    ///
    /// # Errors
    /// As [`GgufWriter::set`].
    pub fn set_str(&mut self, key: impl Into<String>, value: impl Into<String>) -> Result<()> {
        self.set(key, GgufValue::String(value.into()))
    }

    /// Aligns the data section and every tensor to `alignment` bytes and records it as
    /// `general.alignment` (u32). Without this call the alignment is 32 and the key is absent,
    /// as the spec's default.
    ///
    /// # Errors
    /// [`GgufError::InvalidMetadata`] unless `alignment` is a power of two that fits in a u32.
    pub fn set_alignment(&mut self, alignment: u64) -> Result<()> {
        if !alignment.is_power_of_two() || u32::try_from(alignment).is_err() {
            return Err(GgufError::InvalidMetadata {
                key: "general.alignment".into(),
                problem: format!("{alignment} is not a power of two below 2^32"),
            });
        }
        self.alignment = Some(alignment);
        Ok(())
    }

    /// The data alignment in bytes.
    pub fn alignment(&self) -> u64 {
        self.alignment.unwrap_or(DEFAULT_ALIGNMENT)
    }

    /// The metadata set so far, in file order (without `general.alignment`).
    pub fn metadata(&self) -> &[(String, GgufValue)] {
        &self.metadata
    }

    /// The value of `key`, if set.
    pub fn value(&self, key: &str) -> Option<&GgufValue> {
        self.metadata.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    /// The storage type of each tensor added, in order.
    pub fn tensor_types(&self) -> impl Iterator<Item = GgmlType> + '_ {
        self.tensors.iter().map(|t| t.dtype)
    }

    /// Number of tensors added.
    pub fn tensor_count(&self) -> usize {
        self.tensors.len()
    }

    /// Adds a tensor with row-major shape `dims` (a PyTorch `[out, in]` weight is `[out, in]`
    /// here and `ne = [in, out]` in the file), to be stored as `dtype`.
    ///
    /// # Errors
    /// [`GgufError::InvalidTensor`] for a name that is empty, too long (over
    /// [`MAX_TENSOR_NAME`] bytes) or already used; 0 or more than 4 dimensions, a zero
    /// dimension, or `values.len()` not their product; a type [`quantize`] cannot encode; a row
    /// length (`dims.last()`) that is not a multiple of the type's block size; or a value that is
    /// not finite (a NaN or infinity in a weight is a broken model, not something to ship).
    pub fn add_tensor(
        &mut self,
        name: impl Into<String>,
        dims: &[usize],
        dtype: GgmlType,
        values: Vec<f32>,
    ) -> Result<()> {
        let name = name.into();
        let bad = |problem: String| GgufError::InvalidTensor {
            tensor: name.clone(),
            problem,
        };
        if name.is_empty() || name.len() > MAX_TENSOR_NAME {
            return Err(bad(format!(
                "the name is {} bytes; llama.cpp accepts 1 to {MAX_TENSOR_NAME}",
                name.len()
            )));
        }
        if self.tensors.iter().any(|t| t.name == name) {
            return Err(bad("a tensor of this name was already added".into()));
        }
        if dims.is_empty() || dims.len() > MAX_DIMS as usize || dims.contains(&0) {
            return Err(bad(format!(
                "shape {dims:?}: GGUF tensors have 1 to 4 non-zero dimensions"
            )));
        }
        let n = dims.iter().try_fold(1usize, |n, &d| n.checked_mul(d));
        if n != Some(values.len()) {
            return Err(bad(format!(
                "shape {dims:?} does not hold the {} values given",
                values.len()
            )));
        }
        if !can_quantize(dtype) {
            return Err(bad(format!(
                "{dtype} cannot be written (supported: F32, F16, BF16, Q8_0, Q4_0, Q5_0, Q4_K, Q6_K)"
            )));
        }
        let row = dims.last().copied().unwrap_or(1);
        if !row.is_multiple_of(dtype.block_size()) {
            return Err(bad(format!(
                "rows of {row} values are not a whole number of {dtype} blocks ({}); choose another type for this tensor",
                dtype.block_size()
            )));
        }
        if let Some(i) = values.iter().position(|v| !v.is_finite()) {
            return Err(bad(format!(
                "value {i} is {}; the weights are broken",
                values[i]
            )));
        }
        if dtype == GgmlType::F16
            && let Some(v) = values.iter().find(|v| v.abs() > f32::from(half::f16::MAX))
        {
            return Err(bad(format!(
                "{v} does not fit in f16 (largest 65504); write it as F32 or BF16"
            )));
        }
        self.tensors.push(PendingTensor {
            name,
            dims: dims.to_vec(),
            dtype,
            values,
        });
        Ok(())
    }

    /// Everything before the tensor data: header, metadata, tensor infos, padding.
    fn header(&self) -> Vec<u8> {
        let align = self.alignment();
        let mut out = b"GGUF".to_vec();
        out.extend(3u32.to_le_bytes());
        out.extend((self.tensors.len() as u64).to_le_bytes());
        let n_kv = self.metadata.len() + usize::from(self.alignment.is_some());
        out.extend((n_kv as u64).to_le_bytes());
        if let Some(a) = self.alignment {
            write_str(&mut out, "general.alignment");
            let v = GgufValue::U32(a as u32);
            out.extend(v.type_id().to_le_bytes());
            v.write_to(&mut out);
        }
        for (key, value) in &self.metadata {
            write_str(&mut out, key);
            out.extend(value.type_id().to_le_bytes());
            value.write_to(&mut out);
        }
        let mut offset = 0u64;
        for t in &self.tensors {
            write_str(&mut out, &t.name);
            out.extend((t.dims.len() as u32).to_le_bytes());
            for d in t.dims.iter().rev() {
                out.extend((*d as u64).to_le_bytes());
            }
            out.extend(t.dtype.id().to_le_bytes());
            out.extend(offset.to_le_bytes());
            offset = (offset + t.n_bytes() as u64).next_multiple_of(align);
        }
        out.resize((out.len() as u64).next_multiple_of(align) as usize, 0);
        out
    }

    /// Writes the whole file to `w`, encoding one tensor at a time; returns the bytes written.
    ///
    /// # Errors
    /// The writer's I/O error.
    pub fn write_to<W: Write>(&self, mut w: W) -> std::io::Result<u64> {
        let align = self.alignment();
        let header = self.header();
        w.write_all(&header)?;
        let mut written = header.len() as u64;
        for t in &self.tensors {
            // `add_tensor` checked the type and the row length, so this cannot fail.
            let bytes = quantize(t.dtype, &t.values).unwrap_or_default();
            w.write_all(&bytes)?;
            let padded = (bytes.len() as u64).next_multiple_of(align);
            w.write_all(&vec![0u8; (padded - bytes.len() as u64) as usize])?;
            written += padded;
        }
        w.flush()?;
        Ok(written)
    }

    /// The whole file in memory (for tests and small files).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        // Writing to a Vec cannot fail.
        let _ = self.write_to(&mut out);
        out
    }

    /// Writes the file to `path` atomically: into `path` + `.tmp<pid>` in the same directory,
    /// synced, then renamed over `path`. Returns the file size in bytes.
    ///
    /// # Errors
    /// [`GgufError::Write`] naming the path; the temporary file is removed on failure.
    pub fn write_file(&self, path: &Path) -> Result<u64> {
        let tmp = temp_path(path);
        let result = (|| {
            let file = std::fs::File::create(&tmp)?;
            let mut buf = std::io::BufWriter::with_capacity(1 << 20, file);
            let n = self.write_to(&mut buf)?;
            let file = buf.into_inner().map_err(|e| e.into_error())?;
            file.sync_all()?;
            std::fs::rename(&tmp, path)?;
            Ok(n)
        })();
        result.map_err(|source| {
            let _ = std::fs::remove_file(&tmp);
            GgufError::Write {
                path: path.to_path_buf(),
                source,
            }
        })
    }
}
