//! `cargo xtask <command> [args]` — a thin launcher with no dependencies.
//!
//! It runs the real `burn-lora` binary (crate `lora-cli`) or the test suite through cargo, with
//! one shared target directory (`$CARGO_TARGET_DIR`, default `~/.cache/burn-lora/target`) and one
//! profile, so tests and runs reuse a single optimized build of burn. `--backend wgpu|ndarray`
//! also switches on that backend's cargo feature, so the default build compiles only `flex`.
//!
//! Commands: `train`, `eval`, `generate`, `logits`, `merge`, `fetch`, `bench` (forwarded to
//! `burn-lora`) and
//! `test` (the whole test suite; extra arguments go to `cargo test`).

use std::path::PathBuf;
use std::process::{Command, ExitCode};

const USAGE: &str =
    "usage: cargo xtask <train|eval|generate|logits|merge|fetch|bench|test> [args...]
  cargo xtask train                       fine-tune SmolLM2 on TREC with LoRA (defaults)
  cargo xtask generate --chat --prompt \"What is the capital of France?\"
  cargo xtask logits --prompt \"The capital of France is\" --json
  cargo xtask bench                       speed and memory vs burn's apply_lora and PyTorch + PEFT
  cargo xtask bench --quick               the same, 3 timed steps (a few minutes)
  cargo xtask test                        run the whole test suite
  add --backend flex|ndarray|wgpu to pick the backend (flex, the CPU backend, is the default)";

fn target_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("CARGO_TARGET_DIR") {
        return PathBuf::from(dir);
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."));
    home.join(".cache").join("burn-lora").join("target")
}

/// The cargo feature for `--backend NAME` (or `--backend=NAME`), if it is not the default.
fn backend_feature(args: &[String]) -> Result<Option<&'static str>, String> {
    let mut name = None;
    for (i, a) in args.iter().enumerate() {
        if a == "--backend" {
            name = args.get(i + 1).map(String::as_str);
        } else if let Some(v) = a.strip_prefix("--backend=") {
            name = Some(v);
        }
    }
    match name.map(str::to_ascii_lowercase).as_deref() {
        None | Some("flex") | Some("cpu") => Ok(None),
        Some("ndarray") => Ok(Some("ndarray")),
        Some("wgpu") | Some("gpu") | Some("dx12") => Ok(Some("wgpu")),
        Some("vulkan") => Ok(Some("vulkan")),
        Some("metal") => Ok(Some("metal")),
        Some(other) => Err(format!(
            "unknown backend {other:?}; choose one of flex, ndarray, wgpu"
        )),
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(command) = args.first().cloned() else {
        eprintln!("{USAGE}");
        return ExitCode::from(2);
    };
    let rest = &args[1..];
    let feature = match backend_feature(rest) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.env("CARGO_TARGET_DIR", target_dir());
    let features = feature.map(|f| format!("lora-cli/{f}"));
    match command.as_str() {
        "test" => {
            cmd.args(["test", "--workspace", "--exclude", "xtask"]);
            if let Some(f) = &features {
                cmd.args(["--features", f]);
            }
            cmd.args(rest.iter().filter(|a| !a.starts_with("--backend")));
        }
        "train" | "eval" | "generate" | "logits" | "merge" | "fetch" | "bench" => {
            cmd.args(["run", "-p", "lora-cli", "--bin", "burn-lora"]);
            if let Some(f) = &features {
                cmd.args(["--features", f]);
            }
            cmd.arg("--").arg(&command).args(rest);
        }
        "-h" | "--help" | "help" => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        other => {
            eprintln!("unknown command {other:?}\n{USAGE}");
            return ExitCode::from(2);
        }
    }
    match cmd.status() {
        Ok(status) if status.success() => ExitCode::SUCCESS,
        Ok(status) => ExitCode::from(status.code().unwrap_or(1).clamp(1, 255) as u8),
        Err(e) => {
            eprintln!("error: could not run cargo: {e}");
            ExitCode::FAILURE
        }
    }
}
