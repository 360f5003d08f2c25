//! Parsing the header, metadata and tensor-info table, with every count and offset checked
//! against the file size (gguf-py `gguf/gguf_reader.py`, llama.cpp `ggml/src/gguf.cpp`).

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use super::{
    Bytes, DEFAULT_ALIGNMENT, FromGgufValue, GgmlType, GgufError, GgufFile, GgufValue,
    MAX_ARRAY_DEPTH, MAX_DIMS, Result, TensorInfo,
};

impl GgufFile {
    /// Parses and validates everything up to the tensor data; the data is read lazily.
    pub(super) fn parse(path: PathBuf, bytes: Bytes) -> Result<Self> {
        let mut r = Cursor {
            bytes: &bytes,
            pos: 0,
            path: &path,
        };
        let magic = r.bytes.get(..4).unwrap_or(r.bytes);
        if magic != b"GGUF" {
            return Err(GgufError::BadMagic {
                path: path.clone(),
                found: magic.to_vec(),
            });
        }
        r.pos = 4;
        let version = r.u32("header version")?;
        if !(2..=3).contains(&version) {
            return Err(GgufError::UnsupportedVersion {
                path: path.clone(),
                version,
            });
        }
        // Minimum sizes: a tensor info is name len (8) + n_dims (4) + type (4) + offset (8); a
        // key/value is key len (8) + type (4) + one byte of value.
        let n_tensors = r.count(24, "tensor infos")?;
        let n_kv = r.count(13, "metadata key/values")?;

        let mut metadata = BTreeMap::new();
        for _ in 0..n_kv {
            let key = r.string("metadata key")?;
            let what = format!("value of key {key:?}");
            let type_id = r.u32(&what)?;
            let value = r.value(type_id, &key, 0)?;
            if metadata.insert(key.clone(), value).is_some() {
                return Err(GgufError::DuplicateKey {
                    path: path.clone(),
                    key,
                });
            }
        }

        let alignment = match metadata.get("general.alignment") {
            None => DEFAULT_ALIGNMENT,
            Some(v) => u64::from_gguf(v).ok_or_else(|| GgufError::WrongType {
                path: path.clone(),
                key: "general.alignment".into(),
                expected: "an unsigned integer".into(),
                found: v.type_name().into(),
            })?,
        };
        if !alignment.is_power_of_two() {
            return Err(GgufError::BadAlignment {
                path: path.clone(),
                alignment,
            });
        }

        // Capacities are capped: counts were checked against the file size, but a small file could
        // still claim many small entries.
        let mut raw = Vec::with_capacity(n_tensors.min(1 << 16));
        for _ in 0..n_tensors {
            raw.push(r.tensor_info()?);
        }
        let len = bytes.len() as u64;
        let data_start = (r.pos as u64).div_ceil(alignment).saturating_mul(alignment);

        let mut tensors = Vec::with_capacity(raw.len());
        let mut by_name = HashMap::with_capacity(raw.len());
        for (name, ne, type_id, rel) in raw {
            let info = tensor_info(&path, name, &ne, type_id, rel, data_start, alignment, len)?;
            if by_name.insert(info.name.clone(), tensors.len()).is_some() {
                return Err(GgufError::DuplicateTensor {
                    path: path.clone(),
                    tensor: info.name,
                });
            }
            tensors.push(info);
        }
        Ok(Self {
            path,
            bytes,
            version,
            metadata,
            tensors,
            by_name,
            alignment,
            data_start,
        })
    }
}

/// Validates one raw tensor-info entry against the file and builds its [`TensorInfo`].
#[allow(clippy::too_many_arguments)]
fn tensor_info(
    path: &Path,
    name: String,
    ne: &[u64],
    type_id: u32,
    rel_offset: u64,
    data_start: u64,
    alignment: u64,
    len: u64,
) -> Result<TensorInfo> {
    let bad = |problem: String| GgufError::BadShape {
        path: path.into(),
        tensor: name.clone(),
        problem,
    };
    let dtype = GgmlType::from_id(type_id).ok_or_else(|| GgufError::UnknownTensorType {
        path: path.into(),
        tensor: name.clone(),
        type_id,
    })?;
    let mut n_elements: u64 = 1;
    for &d in ne {
        if d == 0 {
            return Err(bad(format!("ne = {ne:?} has a zero dimension")));
        }
        n_elements = n_elements
            .checked_mul(d)
            .ok_or_else(|| bad(format!("ne = {ne:?} overflows")))?;
    }
    let block = dtype.block_size() as u64;
    let row = ne.first().copied().unwrap_or(1);
    if !row.is_multiple_of(block) {
        return Err(bad(format!(
            "row length ne[0] = {row} is not a multiple of the {dtype} block size {block}"
        )));
    }
    let n_bytes = (n_elements / block)
        .checked_mul(dtype.type_size() as u64)
        .ok_or_else(|| bad(format!("ne = {ne:?} overflows")))?;
    let start = data_start.saturating_add(rel_offset);
    let end = start.saturating_add(n_bytes);
    if end > len || !rel_offset.is_multiple_of(alignment) {
        return Err(GgufError::TensorOutOfBounds {
            path: path.into(),
            tensor: name,
            start,
            end,
            len,
            alignment,
        });
    }
    // `end <= len`, and `len` is the length of an in-memory slice, so these all fit in usize.
    let dims = ne.iter().rev().map(|&d| d as usize).collect();
    Ok(TensorInfo {
        name,
        dims,
        dtype,
        offset: start,
        n_bytes: (end - start) as usize,
    })
}

/// A bounds-checked little-endian reader over the file bytes.
struct Cursor<'a> {
    bytes: &'a [u8],
    pos: usize,
    path: &'a Path,
}

impl Cursor<'_> {
    fn remaining(&self) -> usize {
        self.bytes.len().saturating_sub(self.pos)
    }

    fn take<const N: usize>(&mut self, what: &str) -> Result<[u8; N]> {
        let chunk = self.bytes.get(self.pos..self.pos.saturating_add(N));
        match chunk.and_then(|c| <[u8; N]>::try_from(c).ok()) {
            Some(a) => {
                self.pos += N;
                Ok(a)
            }
            None => Err(self.truncated(what)),
        }
    }

    fn truncated(&self, what: &str) -> GgufError {
        GgufError::Truncated {
            path: self.path.into(),
            what: what.into(),
            offset: self.pos as u64,
            len: self.bytes.len() as u64,
        }
    }

    fn u32(&mut self, what: &str) -> Result<u32> {
        self.take(what).map(u32::from_le_bytes)
    }

    fn u64(&mut self, what: &str) -> Result<u64> {
        self.take(what).map(u64::from_le_bytes)
    }

    /// A u64 count of items each at least `min_size` bytes, checked against what is left.
    fn count(&mut self, min_size: u64, what: &str) -> Result<usize> {
        let offset = self.pos as u64;
        let count = self.u64(what)?;
        let remaining = self.remaining() as u64;
        if count.saturating_mul(min_size) > remaining {
            return Err(GgufError::ImplausibleCount {
                path: self.path.into(),
                what: what.into(),
                count,
                offset,
                remaining,
            });
        }
        Ok(count as usize) // <= remaining, which is a usize
    }

    fn string(&mut self, what: &str) -> Result<String> {
        let len = self.count(1, what)?;
        let start = self.pos;
        let bytes = self
            .bytes
            .get(start..start + len)
            .ok_or_else(|| self.truncated(what))?;
        self.pos += len;
        String::from_utf8(bytes.to_vec()).map_err(|_| GgufError::InvalidUtf8 {
            path: self.path.into(),
            what: what.into(),
            offset: start as u64,
        })
    }

    /// A value of type `type_id` for metadata key `key`, inside `depth` enclosing arrays.
    fn value(&mut self, type_id: u32, key: &str, depth: usize) -> Result<GgufValue> {
        let what = || format!("value of key {key:?}");
        Ok(match type_id {
            0 => GgufValue::U8(u8::from_le_bytes(self.take(&what())?)),
            1 => GgufValue::I8(i8::from_le_bytes(self.take(&what())?)),
            2 => GgufValue::U16(u16::from_le_bytes(self.take(&what())?)),
            3 => GgufValue::I16(i16::from_le_bytes(self.take(&what())?)),
            4 => GgufValue::U32(u32::from_le_bytes(self.take(&what())?)),
            5 => GgufValue::I32(i32::from_le_bytes(self.take(&what())?)),
            6 => GgufValue::F32(f32::from_le_bytes(self.take(&what())?)),
            7 => GgufValue::Bool(u8::from_le_bytes(self.take(&what())?) != 0),
            8 => GgufValue::String(self.string(&what())?),
            9 => {
                if depth >= MAX_ARRAY_DEPTH {
                    return Err(GgufError::BadValue {
                        path: self.path.into(),
                        key: key.into(),
                        problem: format!("arrays nested deeper than {MAX_ARRAY_DEPTH}"),
                    });
                }
                let elem_type = self.u32(&what())?;
                // Smallest encoding per element, so the count is checked before allocating.
                let min_size = match elem_type {
                    0 | 1 | 7 => 1,
                    2 | 3 => 2,
                    4..=6 => 4,
                    8 | 10..=12 => 8,
                    9 => 12,
                    _ => 1, // rejected below, on the first element
                };
                let n = self.count(min_size, &format!("array {key:?}"))?;
                let mut items = Vec::with_capacity(n.min(1 << 16));
                for _ in 0..n {
                    items.push(self.value(elem_type, key, depth + 1)?);
                }
                GgufValue::Array(items)
            }
            10 => GgufValue::U64(u64::from_le_bytes(self.take(&what())?)),
            11 => GgufValue::I64(i64::from_le_bytes(self.take(&what())?)),
            12 => GgufValue::F64(f64::from_le_bytes(self.take(&what())?)),
            other => {
                return Err(GgufError::BadValue {
                    path: self.path.into(),
                    key: key.into(),
                    problem: format!("unknown value type {other}"),
                });
            }
        })
    }

    /// One raw tensor-info entry: `(name, ne, type id, offset relative to the data section)`.
    fn tensor_info(&mut self) -> Result<(String, Vec<u64>, u32, u64)> {
        let name = self.string("tensor name")?;
        let what = format!("info of tensor {name:?}");
        let n_dims = self.u32(&what)?;
        if n_dims > MAX_DIMS {
            return Err(GgufError::BadShape {
                path: self.path.into(),
                tensor: name,
                problem: format!("{n_dims} dimensions (at most {MAX_DIMS})"),
            });
        }
        let mut ne = Vec::with_capacity(n_dims as usize);
        for _ in 0..n_dims {
            ne.push(self.u64(&what)?);
        }
        let type_id = self.u32(&what)?;
        let offset = self.u64(&what)?;
        Ok((name, ne, type_id, offset))
    }
}
