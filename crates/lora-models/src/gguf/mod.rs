//! Reading GGUF files: header, metadata, tensor infos, and tensors dequantized to `f32`.
//!
//! Layout (GGUF v2/v3, little-endian; see llama.cpp `docs/gguf.md`, gguf-py
//! `gguf/gguf_reader.py`):
//!
//! ```text
//! u32 magic "GGUF" | u32 version | u64 tensor_count | u64 kv_count
//! kv_count × { string key | u32 value_type | value }
//! tensor_count × { string name | u32 n_dims | u64 ne[n_dims] | u32 ggml_type | u64 offset }
//! padding to `general.alignment` (default 32)
//! tensor data; each tensor at data_start + offset
//! ```
//!
//! A string is `u64 len` + UTF-8 bytes; an array is `u32 element_type | u64 count | elements`.
//! Dimensions `ne` are listed fastest-varying first, so a PyTorch `[out, in]` weight is stored
//! with `ne = [in, out]`; [`TensorInfo::dims`] gives the reversed, row-major shape.
//!
//! Every count and offset from the file is checked against the file size before it is used, so
//! a truncated or malformed file gives a [`GgufError`], never a panic or a huge allocation.

mod dequant;
mod error;
mod parse;
mod quantize;
mod quantize_k;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_reference;
#[cfg(test)]
mod tests_write;
#[cfg(test)]
pub(crate) mod testutil;
mod value;
mod write;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

pub use dequant::{GgmlType, dequantize};
pub use error::GgufError;
pub use quantize::{can_quantize, quantize};
pub use value::{FromGgufValue, GgufValue};
pub use write::{GgufWriter, MAX_TENSOR_NAME};

/// Alignment of the tensor data section when `general.alignment` is absent
/// (`GGUF_DEFAULT_ALIGNMENT`).
pub const DEFAULT_ALIGNMENT: u64 = 32;

/// Deepest array nesting accepted in metadata (real files use at most 2).
const MAX_ARRAY_DEPTH: usize = 8;

/// Most dimensions a tensor may have (`GGML_MAX_DIMS`).
const MAX_DIMS: u32 = 4;

/// Shorthand for results in this module.
pub type Result<T, E = GgufError> = std::result::Result<T, E>;

/// One tensor's description from the tensor-info table.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorInfo {
    /// Name, e.g. `blk.0.attn_q.weight`.
    pub name: String,
    /// Row-major (logical) shape: the file's `ne` reversed, slowest dimension first. A PyTorch
    /// `[out, in]` weight stored as `ne = [in, out]` has `dims = [out, in]`.
    pub dims: Vec<usize>,
    /// Element type.
    pub dtype: GgmlType,
    /// Absolute byte offset of the data in the file (data section start + the stored offset).
    pub offset: u64,
    /// Length of the data in bytes (`elements / block_size × type_size`).
    pub n_bytes: usize,
}

impl TensorInfo {
    /// Number of elements (product of `dims`).
    pub fn n_elements(&self) -> usize {
        self.dims.iter().fold(1usize, |n, &d| n.saturating_mul(d))
    }
}

/// The bytes of an open file: memory-mapped, or owned (for files built in memory).
enum Bytes {
    Mapped(memmap2::Mmap),
    Owned(Vec<u8>),
}

impl std::ops::Deref for Bytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            Bytes::Mapped(m) => m,
            Bytes::Owned(v) => v,
        }
    }
}

/// An open GGUF file: parsed metadata and tensor table over the mapped bytes.
pub struct GgufFile {
    path: PathBuf,
    bytes: Bytes,
    version: u32,
    metadata: BTreeMap<String, GgufValue>,
    tensors: Vec<TensorInfo>,
    by_name: HashMap<String, usize>,
    alignment: u64,
    data_start: u64,
}

impl std::fmt::Debug for GgufFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GgufFile")
            .field("path", &self.path)
            .field("version", &self.version)
            .field("keys", &self.metadata.len())
            .field("tensors", &self.tensors.len())
            .finish()
    }
}

impl GgufFile {
    /// Memory-maps and parses the file at `path`.
    ///
    /// # Errors
    /// [`GgufError::Io`] if it cannot be opened, and every structural error listed on
    /// [`GgufError`] if it is not a well-formed GGUF v2/v3 file.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        let io = |source| GgufError::Io {
            path: path.clone(),
            source,
        };
        let file = std::fs::File::open(&path).map_err(io)?;
        // SAFETY: the map is read-only and lives as long as `self`. Like every mmap-based model
        // loader (llama.cpp, safetensors), we assume no one truncates or rewrites the file while
        // it is open; that would be undefined behaviour outside Rust's control.
        let map = unsafe { memmap2::Mmap::map(&file) }.map_err(io)?;
        Self::parse(path, Bytes::Mapped(map))
    }

    /// Parses a GGUF file already in memory; `label` stands in for the path in error messages.
    ///
    /// # Errors
    /// As [`GgufFile::open`], without the I/O error.
    pub fn from_bytes(label: impl Into<PathBuf>, bytes: Vec<u8>) -> Result<Self> {
        Self::parse(label.into(), Bytes::Owned(bytes))
    }

    /// The path given to [`GgufFile::open`] (or the label given to [`GgufFile::from_bytes`]).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The GGUF version (2 or 3).
    pub fn version(&self) -> u32 {
        self.version
    }

    /// Data-section alignment in bytes (`general.alignment`, default 32).
    pub fn alignment(&self) -> u64 {
        self.alignment
    }

    /// Absolute byte offset where the tensor data section starts.
    pub fn data_start(&self) -> u64 {
        self.data_start
    }

    /// All metadata, by key.
    pub fn metadata(&self) -> &BTreeMap<String, GgufValue> {
        &self.metadata
    }

    /// The raw value of `key`, if present.
    pub fn value(&self, key: &str) -> Option<&GgufValue> {
        self.metadata.get(key)
    }

    /// `key` converted to `T` (see [`FromGgufValue`] for what converts).
    ///
    /// # Errors
    /// [`GgufError::MissingKey`] if absent, [`GgufError::WrongType`] if it does not convert.
    pub fn get<'a, T: FromGgufValue<'a>>(&'a self, key: &str) -> Result<T> {
        self.get_opt(key)?.ok_or_else(|| GgufError::MissingKey {
            path: self.path.clone(),
            key: key.into(),
        })
    }

    /// Like [`GgufFile::get`], but `Ok(None)` when the key is absent.
    ///
    /// # Errors
    /// [`GgufError::WrongType`] if present but it does not convert.
    pub fn get_opt<'a, T: FromGgufValue<'a>>(&'a self, key: &str) -> Result<Option<T>> {
        let Some(value) = self.metadata.get(key) else {
            return Ok(None);
        };
        T::from_gguf(value)
            .map(Some)
            .ok_or_else(|| GgufError::WrongType {
                path: self.path.clone(),
                key: key.into(),
                expected: T::expected(),
                found: match value {
                    GgufValue::Array(a) => format!("array of {} elements", a.len()),
                    GgufValue::String(_) => "string".into(),
                    v => format!("{} {v:?}", v.type_name()),
                },
            })
    }

    /// `key` as a `u32` (any integer type whose value fits). Errors as [`GgufFile::get`].
    pub fn get_u32(&self, key: &str) -> Result<u32> {
        self.get(key)
    }

    /// `key` as a `u64` (any non-negative integer). Errors as [`GgufFile::get`].
    pub fn get_u64(&self, key: &str) -> Result<u64> {
        self.get(key)
    }

    /// `key` as a `usize` (any integer type whose value fits). Errors as [`GgufFile::get`].
    pub fn get_usize(&self, key: &str) -> Result<usize> {
        self.get(key)
    }

    /// `key` as an `i64` (any integer type whose value fits). Errors as [`GgufFile::get`].
    pub fn get_i64(&self, key: &str) -> Result<i64> {
        self.get(key)
    }

    /// `key` as an `f32` (a float, or an integer converted). Errors as [`GgufFile::get`].
    pub fn get_f32(&self, key: &str) -> Result<f32> {
        self.get(key)
    }

    /// `key` as a `bool`. Errors as [`GgufFile::get`].
    pub fn get_bool(&self, key: &str) -> Result<bool> {
        self.get(key)
    }

    /// `key` as a string slice. Errors as [`GgufFile::get`].
    pub fn get_str(&self, key: &str) -> Result<&str> {
        self.get(key)
    }

    /// `key` as an array of strings, e.g. `tokenizer.ggml.tokens`. Errors as [`GgufFile::get`].
    pub fn get_str_array(&self, key: &str) -> Result<Vec<&str>> {
        self.get(key)
    }

    /// `key` as an array of `i32` (any integer elements that fit), e.g.
    /// `tokenizer.ggml.token_type`.
    /// Errors as [`GgufFile::get`].
    pub fn get_i32_array(&self, key: &str) -> Result<Vec<i32>> {
        self.get(key)
    }

    /// `key` as an array of `u32` (any integer elements that fit). Errors as [`GgufFile::get`].
    pub fn get_u32_array(&self, key: &str) -> Result<Vec<u32>> {
        self.get(key)
    }

    /// `key` as an array of `f32` (float or integer elements). Errors as [`GgufFile::get`].
    pub fn get_f32_array(&self, key: &str) -> Result<Vec<f32>> {
        self.get(key)
    }

    /// `general.architecture`, e.g. `"llama"`. Errors as [`GgufFile::get`].
    pub fn architecture(&self) -> Result<&str> {
        self.get_str("general.architecture")
    }

    /// All tensor infos, in file order.
    pub fn tensors(&self) -> &[TensorInfo] {
        &self.tensors
    }

    /// The info of tensor `name`, if present.
    pub fn tensor_info(&self, name: &str) -> Option<&TensorInfo> {
        self.by_name.get(name).and_then(|&i| self.tensors.get(i))
    }

    fn info_or_err(&self, name: &str) -> Result<&TensorInfo> {
        self.tensor_info(name)
            .ok_or_else(|| GgufError::MissingTensor {
                path: self.path.clone(),
                tensor: name.into(),
            })
    }

    /// The raw (still quantized) bytes of tensor `name`: `info.n_bytes` bytes.
    ///
    /// # Errors
    /// [`GgufError::MissingTensor`] if there is no such tensor.
    pub fn tensor_bytes(&self, name: &str) -> Result<&[u8]> {
        let info = self.info_or_err(name)?;
        Ok(self.slice(info))
    }

    /// Drops the pages of tensor `name` from this process's resident memory; they are read from
    /// the file again if touched. A streaming load calls it after decoding each tensor, so the
    /// mapped file does not pile up in the resident set (the load peak stays the model plus one
    /// tensor). A no-op for a file built in memory or a name not in the file.
    pub fn release(&self, name: &str) {
        #[cfg(unix)]
        if let (Bytes::Mapped(map), Some(&i)) = (&self.bytes, self.by_name.get(name)) {
            let info = &self.tensors[i];
            // SAFETY: a read-only shared file mapping: MADV_DONTNEED drops the pages and a later
            // access reads the same bytes from the file again (madvise(2)), so no view of them
            // changes. Failure only means the pages stay resident.
            let _ = unsafe {
                map.unchecked_advise_range(
                    memmap2::UncheckedAdvice::DontNeed,
                    info.offset as usize,
                    info.n_bytes,
                )
            };
        }
        #[cfg(not(unix))]
        let _ = name;
    }

    fn slice(&self, info: &TensorInfo) -> &[u8] {
        // Bounds were checked when the file was parsed; `get` keeps this panic-free regardless.
        let start = info.offset as usize;
        self.bytes
            .get(start..start.saturating_add(info.n_bytes))
            .unwrap_or(&[])
    }

    /// Tensor `name` dequantized to `f32`: its row-major shape ([`TensorInfo::dims`]) and its
    /// values in file order (row-major over that shape).
    ///
    /// # Errors
    /// [`GgufError::MissingTensor`] if absent; [`GgufError::Unsupported`] if its type cannot be
    /// dequantized (see [`GgmlType::can_dequantize`]).
    pub fn tensor_f32(&self, name: &str) -> Result<(Vec<usize>, Vec<f32>)> {
        let info = self.info_or_err(name)?;
        let unsupported = || GgufError::Unsupported {
            path: self.path.clone(),
            tensor: name.into(),
            dtype: info.dtype,
        };
        let values = dequantize(info.dtype, self.slice(info)).ok_or_else(unsupported)?;
        if values.len() != info.n_elements() {
            // Unreachable for a parsed file (n_bytes was derived from the shape); kept as an error.
            return Err(GgufError::TensorOutOfBounds {
                path: self.path.clone(),
                tensor: name.into(),
                start: info.offset,
                end: info.offset.saturating_add(info.n_bytes as u64),
                len: self.bytes.len() as u64,
                alignment: self.alignment,
            });
        }
        Ok((info.dims.clone(), values))
    }
}

/// Undoes the row permutation llama.cpp's converter applies to `attn_q` / `attn_k` weights, so
/// they fit Hugging Face's rotate-half RoPE again.
///
/// `convert_hf_to_gguf.py` `LlamaModel.permute` reshapes the `[rows, cols]` matrix to
/// `[n_head, 2, head_dim/2, cols]` and swaps axes 1 and 2, interleaving each head's two rotary
/// halves. This is the inverse, the same as transformers' `LlamaConverter._reverse_permute_weights`
/// (`modeling_gguf_pytorch_utils.py`): GGUF row `h·head_dim + 2i + j` becomes HF row
/// `h·head_dim + j·head_dim/2 + i` (`i < head_dim/2`, `j ∈ {0, 1}`).
///
/// `data` is row-major `[rows, cols]` (as from [`GgufFile::tensor_f32`]); `rows = n_head ·
/// head_dim`, where `n_head` is `attention.head_count` for q and `attention.head_count_kv` for
/// k. A bias vector is the case `cols = 1`. Returns the matrix in HF row order.
///
/// # Errors
/// [`GgufError::BadPermutation`] if `data.len() != rows·cols` or `rows` is not `n_head` times
/// an even head size.
pub fn unpermute_qk(data: &[f32], rows: usize, cols: usize, n_head: usize) -> Result<Vec<f32>> {
    permute_rows(data, rows, cols, n_head, false)
}

/// Applies the row permutation of llama.cpp's converter to an `attn_q` / `attn_k` weight (or
/// bias, `cols = 1`) in Hugging Face row order: the inverse of [`unpermute_qk`]. HF row
/// `h·head_dim + j·head_dim/2 + i` becomes GGUF row `h·head_dim + 2i + j`
/// (`convert_hf_to_gguf.py` `LlamaModel.permute`: reshape to `[n_head, 2, head_dim/2, cols]`,
/// swap axes 1 and 2).
///
/// # Errors
/// As [`unpermute_qk`].
pub fn permute_qk(data: &[f32], rows: usize, cols: usize, n_head: usize) -> Result<Vec<f32>> {
    permute_rows(data, rows, cols, n_head, true)
}

/// The two directions of the q/k row permutation (see [`unpermute_qk`], [`permute_qk`]).
fn permute_rows(
    data: &[f32],
    rows: usize,
    cols: usize,
    n_head: usize,
    to_gguf: bool,
) -> Result<Vec<f32>> {
    let bad = || GgufError::BadPermutation {
        rows,
        cols,
        len: data.len(),
        n_head,
    };
    if n_head == 0 || !rows.is_multiple_of(n_head) || !(rows / n_head).is_multiple_of(2) {
        return Err(bad());
    }
    if rows.checked_mul(cols) != Some(data.len()) {
        return Err(bad());
    }
    let head_dim = rows / n_head;
    let half = head_dim / 2;
    let mut out = Vec::with_capacity(data.len());
    for h in 0..n_head {
        // Output rows in order; `src` is the input row that lands there.
        for a in 0..2 * half {
            let src = if to_gguf {
                // GGUF row 2i + j holds HF row j·half + i.
                let (i, j) = (a / 2, a % 2);
                h * head_dim + j * half + i
            } else {
                // HF row j·half + i holds GGUF row 2i + j.
                let (j, i) = (a / half, a % half);
                h * head_dim + 2 * i + j
            };
            out.extend_from_slice(data.get(src * cols..(src + 1) * cols).ok_or_else(bad)?);
        }
    }
    Ok(out)
}
