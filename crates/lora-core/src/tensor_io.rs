//! Small, shared file helpers: safetensors in and out (f32 in memory; f32, f16 or bf16 on disk)
//! and atomic writes (temporary file, then rename), so an interrupted save never leaves a
//! half-written file where a good one was.

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::{Path, PathBuf};

use burn::tensor::{Device, Tensor, TensorData};
use safetensors::{Dtype, SafeTensors};

use crate::error::LoraError;

/// A host tensor: row-major `shape` and its `f32` values.
#[derive(Clone, Debug, PartialEq)]
pub struct HostTensor {
    /// Row-major shape, outermost dimension first.
    pub shape: Vec<usize>,
    /// `shape.iter().product()` values.
    pub data: Vec<f32>,
}

impl HostTensor {
    /// Checks that every value is finite.
    ///
    /// # Errors
    /// A message with the first non-finite value, its flat index and how many there are.
    pub fn check_finite(&self) -> Result<(), String> {
        let Some(i) = self.data.iter().position(|v| !v.is_finite()) else {
            return Ok(());
        };
        let n = self.data.iter().filter(|v| !v.is_finite()).count();
        Err(format!(
            "holds non-finite values ({} at flat index {i}; {n} of {} values)",
            self.data[i],
            self.data.len()
        ))
    }

    /// A 2-D host tensor `[rows, cols]` transposed to `[cols, rows]` (PyTorch ↔ burn layout).
    pub fn transposed_2d(&self) -> HostTensor {
        let (rows, cols) = (self.shape[0], self.shape[1]);
        let mut out = vec![0.0f32; rows * cols];
        for r in 0..rows {
            for c in 0..cols {
                out[c * rows + r] = self.data[r * cols + c];
            }
        }
        HostTensor {
            shape: vec![cols, rows],
            data: out,
        }
    }

    /// Uploads to `device` as a rank-`D` float tensor, handing over the host buffer (no copy on
    /// the CPU backends).
    pub fn into_tensor<const D: usize>(self, device: &Device) -> Tensor<D> {
        Tensor::from_data(TensorData::new(self.data, self.shape), device)
    }

    /// Uploads to `device` as a rank-`D` float tensor.
    pub fn to_tensor<const D: usize>(&self, device: &Device) -> Tensor<D> {
        Tensor::from_data(
            TensorData::new(self.data.clone(), self.shape.clone()),
            device,
        )
    }

    /// Downloads a float tensor (any backend, any float dtype) as `f32`.
    ///
    /// # Errors
    /// Never for float tensors; a conversion failure is reported as [`LoraError::InvalidConfig`].
    pub fn from_tensor<const D: usize>(t: Tensor<D>) -> Result<HostTensor, LoraError> {
        let shape = t.dims().to_vec();
        let data = t
            .into_data()
            .convert::<f32>()
            .try_to_vec::<f32>()
            .map_err(|e| LoraError::InvalidConfig(format!("could not read tensor data: {e:?}")))?;
        Ok(HostTensor { shape, data })
    }
}

/// Reads every tensor of a safetensors file as `f32` (F32, F16 and BF16 are accepted; I64 and
/// I32 tensors — token ids in test fixtures — and U8 ones are converted to `f32` too, exact
/// below 2²⁴).
///
/// # Errors
/// [`LoraError::Io`] if the file cannot be read, [`LoraError::Safetensors`] if it is not a valid
/// safetensors file, [`LoraError::AdapterTensor`] for a tensor of another dtype or one holding a
/// NaN or an infinity (non-finite values are refused where they enter).
pub fn read_safetensors(path: &Path) -> Result<BTreeMap<String, HostTensor>, LoraError> {
    let bytes = std::fs::read(path).map_err(|source| LoraError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let st = SafeTensors::deserialize(&bytes).map_err(|e| LoraError::Safetensors {
        path: path.to_path_buf(),
        message: e.to_string(),
    })?;
    let mut out = BTreeMap::new();
    for (name, view) in st.tensors() {
        let data = view_to_f32(&view).map_err(|message| LoraError::AdapterTensor {
            path: path.to_path_buf(),
            key: name.clone(),
            message,
        })?;
        let tensor = HostTensor {
            shape: view.shape().to_vec(),
            data,
        };
        if let Err(message) = tensor.check_finite() {
            return Err(LoraError::AdapterTensor {
                path: path.to_path_buf(),
                key: name,
                message: format!(
                    "{message}: the file is corrupt or the run that wrote it diverged"
                ),
            });
        }
        out.insert(name, tensor);
    }
    Ok(out)
}

/// The values of one safetensors tensor as `f32` (F32, F16, BF16; I64, I32 and U8 converted,
/// exact below 2²⁴).
///
/// # Errors
/// A message naming the dtype for any other.
pub fn view_to_f32(view: &safetensors::tensor::TensorView<'_>) -> Result<Vec<f32>, String> {
    let raw = view.data();
    Ok(match view.dtype() {
        Dtype::F32 => raw
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect(),
        Dtype::F16 => raw
            .chunks_exact(2)
            .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect(),
        Dtype::BF16 => raw
            .chunks_exact(2)
            .map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect(),
        Dtype::I64 => raw
            .chunks_exact(8)
            .map(|b| i64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]) as f32)
            .collect(),
        Dtype::I32 => raw
            .chunks_exact(4)
            .map(|b| i32::from_le_bytes([b[0], b[1], b[2], b[3]]) as f32)
            .collect(),
        Dtype::U8 => raw.iter().map(|&b| b as f32).collect(),
        other => {
            return Err(format!(
                "dtype {other:?} is not supported (expected F32, F16 or BF16)"
            ));
        }
    })
}

/// On-disk float format for [`write_safetensors`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum DiskDtype {
    /// 32-bit IEEE float.
    #[default]
    F32,
    /// bfloat16 (round to nearest even).
    BF16,
}

/// Writes tensors to a safetensors file atomically, with `metadata` in the header
/// (PEFT and transformers expect `{"format": "pt"}`).
///
/// # Errors
/// [`LoraError::Io`] / [`LoraError::Safetensors`] on write failure;
/// [`LoraError::AdapterTensor`] for a tensor holding a NaN or an infinity, checked before
/// anything is written (a non-finite adapter or merged model is never saved). The previous file,
/// if any, is left untouched.
pub fn write_safetensors(
    path: &Path,
    tensors: &BTreeMap<String, HostTensor>,
    dtype: DiskDtype,
    metadata: HashMap<String, String>,
) -> Result<(), LoraError> {
    for (key, t) in tensors {
        t.check_finite()
            .map_err(|message| LoraError::AdapterTensor {
                path: path.to_path_buf(),
                key: key.clone(),
                message: format!("{message}; nothing was written (did training diverge?)"),
            })?;
    }
    let encoded: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = tensors
        .iter()
        .map(|(k, t)| {
            let (dt, bytes) = match dtype {
                DiskDtype::F32 => (
                    Dtype::F32,
                    t.data.iter().flat_map(|v| v.to_le_bytes()).collect(),
                ),
                DiskDtype::BF16 => (
                    Dtype::BF16,
                    t.data
                        .iter()
                        .flat_map(|v| half::bf16::from_f32(*v).to_le_bytes())
                        .collect(),
                ),
            };
            (k.clone(), dt, t.shape.clone(), bytes)
        })
        .collect();
    let mut views = Vec::with_capacity(encoded.len());
    for (k, dt, shape, bytes) in &encoded {
        let view =
            safetensors::tensor::TensorView::new(*dt, shape.clone(), bytes).map_err(|e| {
                LoraError::Safetensors {
                    path: path.to_path_buf(),
                    message: format!("{k}: {e}"),
                }
            })?;
        views.push((k.clone(), view));
    }
    let bytes =
        safetensors::serialize(views, Some(metadata)).map_err(|e| LoraError::Safetensors {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
    write_atomic(path, &bytes)
}

/// The temporary name an atomic write of `path` goes through: `path` + `.tmp<pid>`, in the same
/// directory (so the final rename never crosses file systems).
pub fn temp_path(path: &Path) -> PathBuf {
    let mut name = path
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_default();
    name.push(format!(".tmp{}", std::process::id()));
    path.with_file_name(name)
}

/// Writes `bytes` to `path` through a temporary file in the same directory and a rename.
///
/// # Errors
/// [`LoraError::Io`] naming the path.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), LoraError> {
    let io = |source| LoraError::Io {
        path: path.to_path_buf(),
        source,
    };
    let tmp = temp_path(path);
    let mut f = std::fs::File::create(&tmp).map_err(io)?;
    f.write_all(bytes).map_err(io)?;
    f.sync_all().map_err(io)?;
    drop(f);
    std::fs::rename(&tmp, path).map_err(io)
}
