//! Test helpers shared by the crate's tests: [`GgufBuilder`] writes GGUF files in memory,
//! [`real_model_path`] finds the real SmolLM2 GGUF, [`fixture`] finds `fixtures/` files.

use std::path::{Path, PathBuf};

use super::GgufValue;
use super::value::write_str;

/// Builds GGUF v3 files in memory for tests.
pub(crate) struct GgufBuilder {
    pub version: u32,
    kvs: Vec<(String, GgufValue)>,
    tensors: Vec<(String, Vec<u64>, u32, Vec<u8>)>,
}

impl GgufBuilder {
    pub fn new() -> Self {
        Self {
            version: 3,
            kvs: Vec::new(),
            tensors: Vec::new(),
        }
    }

    pub fn kv(mut self, key: &str, value: GgufValue) -> Self {
        self.kvs.push((key.into(), value));
        self
    }

    /// A tensor with `ne` fastest-first, raw type id, and raw data bytes.
    pub fn tensor(mut self, name: &str, ne: &[u64], type_id: u32, data: Vec<u8>) -> Self {
        self.tensors.push((name.into(), ne.to_vec(), type_id, data));
        self
    }

    fn alignment(&self) -> usize {
        self.kvs
            .iter()
            .find(|(k, _)| k == "general.alignment")
            .and_then(|(_, v)| v.as_integer())
            .map_or(32, |a| a as usize)
    }

    pub fn build(&self) -> Vec<u8> {
        let mut out = b"GGUF".to_vec();
        out.extend(self.version.to_le_bytes());
        out.extend((self.tensors.len() as u64).to_le_bytes());
        out.extend((self.kvs.len() as u64).to_le_bytes());
        for (k, v) in &self.kvs {
            write_str(&mut out, k);
            out.extend(v.type_id().to_le_bytes());
            v.write_to(&mut out);
        }
        let align = self.alignment();
        let mut offset = 0usize;
        let mut offsets = Vec::new();
        for (name, ne, ty, data) in &self.tensors {
            write_str(&mut out, name);
            out.extend((ne.len() as u32).to_le_bytes());
            ne.iter().for_each(|d| out.extend(d.to_le_bytes()));
            out.extend(ty.to_le_bytes());
            out.extend((offset as u64).to_le_bytes());
            offsets.push(offset);
            offset = (offset + data.len()).div_ceil(align) * align;
        }
        out.resize(out.len().div_ceil(align) * align, 0);
        let start = out.len();
        for ((_, _, _, data), off) in self.tensors.iter().zip(offsets) {
            out.resize(start + off, 0);
            out.extend(data);
        }
        out
    }
}

/// The real SmolLM2 GGUF: `$BURN_LORA_MODEL`, else `~/.cache/burn-lora/models/...Q4_1.gguf`;
/// `None` (and a message) when absent, so tests needing it skip.
pub(crate) fn real_model_path() -> Option<PathBuf> {
    let path = std::env::var_os("BURN_LORA_MODEL")
        .map(PathBuf::from)
        .or_else(|| {
            let home = std::env::var_os("HOME")?;
            Some(
                PathBuf::from(home).join(".cache/burn-lora/models/SmolLM2-135M-Instruct.Q4_1.gguf"),
            )
        })?;
    if path.is_file() {
        Some(path)
    } else {
        eprintln!(
            "skipping: {} not found (set BURN_LORA_MODEL)",
            path.display()
        );
        None
    }
}

/// A file under the repository's `fixtures/` (made by `scripts/make_fixtures.py`).
pub(crate) fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../fixtures")
        .join(name)
}

/// `fixtures/smollm2-reference.json` as JSON (made by `scripts/make_fixtures.py` from the real
/// model); `None` (and a message) when absent, so tests needing it skip.
pub(crate) fn smollm2_reference() -> Option<serde_json::Value> {
    let path = fixture("smollm2-reference.json");
    let Ok(text) = std::fs::read_to_string(&path) else {
        eprintln!(
            "skipping: {} not found (run scripts/make_fixtures.py)",
            path.display()
        );
        return None;
    };
    Some(serde_json::from_str(&text).unwrap())
}
