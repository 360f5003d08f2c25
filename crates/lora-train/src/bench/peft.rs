//! The PyTorch + PEFT rows: `scripts/bench_peft.py` run with a Python that has torch,
//! transformers and peft. Anything missing makes the row "missing", never a failed bench.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use lora_models::cache;

use lora_core::BaseDtype;

use super::job::{RawTrain, TargetSet, TrainSettings};
use super::scale::{ScaleBase, ScaleShape};

/// The script, found next to this crate in the repository.
pub fn default_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("..")
        .join("scripts")
        .join("bench_peft.py")
}

/// The project's Python environment (`~/.cache/burn-lora/venv/bin/python`), else `python3`.
pub fn default_python() -> PathBuf {
    let venv = cache::cache_dir().join("venv").join("bin").join("python");
    if venv.exists() {
        venv
    } else {
        PathBuf::from("python3")
    }
}

/// Why PEFT rows cannot run with `python`, or `None` when they can.
pub fn unavailable(python: &Path, script: &Path) -> Option<String> {
    if !script.exists() {
        return Some(format!("{} not found", script.display()));
    }
    let probe = Command::new(python)
        .args(["-c", "import torch, transformers, peft"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    match probe {
        Ok(s) if s.success() => None,
        Ok(_) => Some(format!(
            "{} lacks torch, transformers or peft (pip install torch transformers peft gguf, or pass --python)",
            python.display()
        )),
        Err(e) => Some(format!("cannot run {}: {e}", python.display())),
    }
}

/// The model a PEFT row trains.
#[derive(Clone, Debug)]
pub enum PeftModel<'a> {
    /// A GGUF file or Hugging Face directory, in f32 / `base_dtype`, or on a bitsandbytes NF4
    /// base when `nf4`.
    File {
        /// The file or directory.
        path: &'a Path,
        /// QLoRA's NF4 base.
        nf4: bool,
        /// `torch_dtype` of the frozen weights.
        base_dtype: BaseDtype,
    },
    /// A random-weight real-size shape (`bench --scale`).
    Scale {
        /// The shape.
        shape: ScaleShape,
        /// Its base.
        base: ScaleBase,
    },
}

impl PeftModel<'_> {
    /// The script's arguments that pick the model.
    fn args(&self) -> Vec<String> {
        match self {
            PeftModel::File {
                path,
                nf4,
                base_dtype,
            } => {
                let mut a = vec!["--model".to_string(), path.display().to_string()];
                if *nf4 {
                    a.extend(["--quant".into(), "nf4".into()]);
                }
                if *base_dtype != BaseDtype::F32 {
                    a.extend(["--base".into(), base_dtype.name().into()]);
                }
                a
            }
            PeftModel::Scale { shape, base } => vec![
                "--shape".into(),
                shape.name().into(),
                "--base".into(),
                base.name().into(),
            ],
        }
    }
}

/// Runs one PEFT configuration; progress lines go to stderr as they come. Returns the raw
/// result, or a one-line reason it failed.
pub fn run(
    python: &Path,
    script: &Path,
    model: &PeftModel<'_>,
    targets: TargetSet,
    s: &TrainSettings,
    threads: usize,
) -> Result<RawTrain, String> {
    let mut child = Command::new(python)
        .arg(script)
        .args(model.args())
        .args(["--targets", targets.modules()])
        .args(["--rank", &s.rank.to_string()])
        .args(["--alpha", &s.alpha.to_string()])
        .args(["--batch", &s.batch.to_string()])
        .args(["--seq-len", &s.seq_len.to_string()])
        .args(["--steps", &s.steps.to_string()])
        .args(["--warmup", &s.warmup.to_string()])
        .args(["--threads", &threads.to_string()])
        .args(["--lr", &s.lr.to_string()])
        .args(["--weight-decay", &s.weight_decay.to_string()])
        .args(["--seed", &s.seed.to_string()])
        .args(if s.checkpointing {
            &["--checkpointing"][..]
        } else {
            &[]
        })
        // The thread pools PyTorch may use besides its intra-op pool.
        .env("OMP_NUM_THREADS", threads.to_string())
        .env("MKL_NUM_THREADS", threads.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run {}: {e}", python.display()))?;
    // Show the script's own progress lines; keep the tail for an error message.
    let Some(stderr) = child.stderr.take() else {
        return Err("bench_peft.py: no stderr pipe".into());
    };
    let relay = std::thread::spawn(move || {
        let mut tail = Vec::new();
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if line.starts_with("peft") {
                eprintln!("  {line}");
            }
            tail.push(line);
            if tail.len() > 20 {
                tail.remove(0);
            }
        }
        tail
    });
    let output = child
        .wait_with_output()
        .map_err(|e| format!("waiting for {}: {e}", script.display()))?;
    let tail = relay.join().unwrap_or_default();
    if !output.status.success() {
        return Err(format!(
            "bench_peft.py failed ({}): {}",
            output.status,
            tail.last().cloned().unwrap_or_default()
        ));
    }
    let stdout = String::from_utf8_lossy(&output.stdout);
    let last = stdout.lines().last().unwrap_or_default();
    serde_json::from_str(last).map_err(|e| format!("bench_peft.py printed no result ({e})"))
}
