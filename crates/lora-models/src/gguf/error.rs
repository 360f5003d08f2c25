//! The error type of the GGUF reader.

use std::path::PathBuf;

use super::GgmlType;

/// Everything that can go wrong reading a GGUF file. Messages name the file and the key or tensor.
#[derive(Debug, thiserror::Error)]
pub enum GgufError {
    /// The file could not be opened or mapped.
    #[error("{path}: cannot read GGUF file: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The file ends in the middle of a structure.
    #[error(
        "{path}: file ends at byte {len} while reading {what} at byte {offset}; the file is truncated (re-download it)"
    )]
    Truncated {
        /// The file.
        path: PathBuf,
        /// What was being read, e.g. `value of key "general.name"`.
        what: String,
        /// Where that read started.
        offset: u64,
        /// The file length.
        len: u64,
    },
    /// The first four bytes are not `GGUF`.
    #[error("{path}: not a GGUF file (starts with {found:?}, expected \"GGUF\")")]
    BadMagic {
        /// The file.
        path: PathBuf,
        /// The first bytes of the file (fewer than four if it is shorter).
        found: Vec<u8>,
    },
    /// A version other than 2 or 3.
    #[error(
        "{path}: GGUF version {version} is not supported (only 2 and 3); re-convert with a current llama.cpp"
    )]
    UnsupportedVersion {
        /// The file.
        path: PathBuf,
        /// The version in the header.
        version: u32,
    },
    /// A count in the file is larger than the rest of the file could hold.
    #[error(
        "{path}: {what} claims {count} entries at byte {offset}, more than the {remaining} bytes left could hold; the file is corrupt"
    )]
    ImplausibleCount {
        /// The file.
        path: PathBuf,
        /// What was counted, e.g. `tensor infos` or `array "tokenizer.ggml.tokens"`.
        what: String,
        /// The count read.
        count: u64,
        /// Where it was read.
        offset: u64,
        /// Bytes left in the file after the count.
        remaining: u64,
    },
    /// A string that is not UTF-8.
    #[error("{path}: {what} at byte {offset} is not valid UTF-8")]
    InvalidUtf8 {
        /// The file.
        path: PathBuf,
        /// Which string, e.g. `key` or `value of key "general.name"`.
        what: String,
        /// Where the string's bytes start.
        offset: u64,
    },
    /// A metadata value type id outside 0..=12, or arrays nested too deeply.
    #[error("{path}: metadata key {key:?} has {problem}")]
    BadValue {
        /// The file.
        path: PathBuf,
        /// The key.
        key: String,
        /// E.g. `unknown value type 42`.
        problem: String,
    },
    /// The same key twice.
    #[error("{path}: metadata key {key:?} appears twice")]
    DuplicateKey {
        /// The file.
        path: PathBuf,
        /// The key.
        key: String,
    },
    /// `general.alignment` is zero or not a power of two.
    #[error("{path}: general.alignment = {alignment} is not a power of two")]
    BadAlignment {
        /// The file.
        path: PathBuf,
        /// The value.
        alignment: u64,
    },
    /// A tensor type id ggml does not define.
    #[error(
        "{path}: tensor {tensor:?} has unknown ggml type id {type_id}; the file may need a newer reader"
    )]
    UnknownTensorType {
        /// The file.
        path: PathBuf,
        /// The tensor.
        tensor: String,
        /// The id read.
        type_id: u32,
    },
    /// Bad dimension count, a zero/overflowing shape, or a row not a whole number of blocks.
    #[error("{path}: tensor {tensor:?} has an invalid shape: {problem}")]
    BadShape {
        /// The file.
        path: PathBuf,
        /// The tensor.
        tensor: String,
        /// What is wrong.
        problem: String,
    },
    /// Two tensors with one name.
    #[error("{path}: tensor {tensor:?} appears twice")]
    DuplicateTensor {
        /// The file.
        path: PathBuf,
        /// The tensor.
        tensor: String,
    },
    /// A tensor's data lies (partly) past the end of the file or is misaligned.
    #[error(
        "{path}: tensor {tensor:?} data at bytes {start}..{end} does not fit the file ({len} bytes) or is not {alignment}-byte aligned; the file is truncated or corrupt"
    )]
    TensorOutOfBounds {
        /// The file.
        path: PathBuf,
        /// The tensor.
        tensor: String,
        /// Absolute start of its data (may be past the end).
        start: u64,
        /// Absolute end of its data.
        end: u64,
        /// The file length.
        len: u64,
        /// The required alignment.
        alignment: u64,
    },
    /// A metadata key the caller needs is absent.
    #[error("{path}: metadata key {key:?} is missing")]
    MissingKey {
        /// The file.
        path: PathBuf,
        /// The key.
        key: String,
    },
    /// A metadata key holds another type (or a number that does not fit).
    #[error("{path}: metadata key {key:?} should be {expected}, found {found}")]
    WrongType {
        /// The file.
        path: PathBuf,
        /// The key.
        key: String,
        /// What the caller asked for.
        expected: String,
        /// The stored value's type, e.g. `i32 -5` or `array`.
        found: String,
    },
    /// No tensor of that name.
    #[error("{path}: no tensor named {tensor:?}")]
    MissingTensor {
        /// The file.
        path: PathBuf,
        /// The name asked for.
        tensor: String,
    },
    /// A known element type this reader cannot dequantize.
    #[error(
        "{path}: tensor {tensor:?} is {dtype}, which cannot be dequantized here (supported: F32, F16, BF16, F64, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4_K, Q5_K, Q6_K); re-quantize the model to one of those"
    )]
    Unsupported {
        /// The file.
        path: PathBuf,
        /// The tensor.
        tensor: String,
        /// Its type.
        dtype: GgmlType,
    },
    /// [`unpermute_qk`](super::unpermute_qk) got a matrix whose rows do not split into `n_head` heads of even size.
    #[error(
        "cannot undo the q/k RoPE permutation: {rows}×{cols} matrix ({len} values) with {n_head} heads needs rows = n_head·head_dim with head_dim even; check attention.head_count(_kv)"
    )]
    BadPermutation {
        /// Rows given.
        rows: usize,
        /// Columns given.
        cols: usize,
        /// Values given.
        len: usize,
        /// Heads given.
        n_head: usize,
    },
    /// [`GgufWriter`](super::GgufWriter) was given a tensor it cannot write.
    #[error("cannot write tensor {tensor:?}: {problem}")]
    InvalidTensor {
        /// The tensor.
        tensor: String,
        /// What is wrong and how to fix it.
        problem: String,
    },
    /// [`GgufWriter`](super::GgufWriter) was given a metadata value it cannot write.
    #[error("cannot write metadata key {key:?}: {problem}")]
    InvalidMetadata {
        /// The key.
        key: String,
        /// What is wrong.
        problem: String,
    },
    /// Writing the output file failed (disk full, no permission, missing directory).
    #[error("{path}: cannot write GGUF file: {source}")]
    Write {
        /// The file being written.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
}
