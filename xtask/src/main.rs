//! `cargo xtask <command> [args]` — a thin launcher with no dependencies.
//!
//! It runs the real `burn-lora` binary (crate `lora-cli`) or the test suite through cargo, with
//! one shared target directory (`$CARGO_TARGET_DIR`, default `~/.cache/burn-lora/target`) and one
//! profile, so tests and runs reuse a single optimized build of burn. `--backend wgpu|ndarray`
//! also switches on that backend's cargo feature, so the default build compiles only `flex`.
//!
//! Commands: `train`, `eval`, `generate`, `logits`, `merge`, `export-adapter`, `fetch`, `bench` (forwarded to
//! `burn-lora`),
//! `test` (the whole test suite; extra arguments go to `cargo test`) and `example` (the teaching
//! programs in `examples/`: list them, run one, or run them all).

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::Instant;

const USAGE: &str =
    "usage: cargo xtask <train|eval|generate|logits|merge|export-adapter|fetch|bench|test|example> [args...]
  cargo xtask train                       fine-tune SmolLM2 on TREC with LoRA (defaults)
  cargo xtask generate --chat --prompt \"What is the capital of France?\"
  cargo xtask logits --prompt \"The capital of France is\" --json
  cargo xtask bench                       speed and memory vs burn's apply_lora and PyTorch + PEFT
  cargo xtask bench --quick               the same, 3 timed steps (a few minutes)
  cargo xtask test                        run the whole test suite
  cargo xtask example [NAME|--all]        list the examples, run one, or run them all
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

/// The workspace root (the parent of this crate's directory).
fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// The examples declared in `examples/Cargo.toml` (`[[example]]` sections), in file order, each
/// with the one-line summary from its source's first line (`//! # name — summary`).
fn examples(root: &Path) -> Result<Vec<(String, String)>, String> {
    let dir = root.join("examples");
    let manifest = dir.join("Cargo.toml");
    let text = std::fs::read_to_string(&manifest)
        .map_err(|e| format!("cannot read {}: {e}", manifest.display()))?;
    let mut list = Vec::new();
    let mut in_example = false;
    for line in text.lines().map(str::trim) {
        if line.starts_with('[') {
            in_example = line == "[[example]]";
        } else if in_example && let Some(v) = line.strip_prefix("name") {
            let name = v
                .trim_start()
                .trim_start_matches('=')
                .trim()
                .trim_matches('"');
            let source =
                std::fs::read_to_string(dir.join(format!("{name}.rs"))).unwrap_or_default();
            let summary = source
                .lines()
                .next()
                .and_then(|l| l.split_once('—'))
                .map(|(_, s)| s.trim().to_string())
                .unwrap_or_default();
            list.push((name.to_string(), summary));
        }
    }
    Ok(list)
}

/// `cargo run --example NAME` from the workspace root. Run from the root, cargo selects the
/// default members (all crates but xtask), so features resolve exactly as for `cargo xtask test`
/// and the examples reuse that build of burn; `cargo run -p lora-examples` would resolve a
/// slightly different feature set and compile burn a second time.
fn example_command(cargo: &str, root: &Path, name: &str, feature: &Option<String>) -> Command {
    let mut cmd = Command::new(cargo);
    cmd.current_dir(root).env("CARGO_TARGET_DIR", target_dir());
    cmd.args(["run", "--example", name]);
    if let Some(f) = feature {
        cmd.args(["--features", f]);
    }
    cmd
}

/// `cargo xtask example [NAME [args...] | --all]`.
fn run_examples(cargo: &str, rest: &[String], feature: &Option<String>) -> ExitCode {
    let root = workspace_root();
    let list = match examples(&root) {
        Ok(list) => list,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let names: Vec<&str> = list.iter().map(|(n, _)| n.as_str()).collect();
    let listing = || {
        list.iter()
            .map(|(n, s)| format!("  {n:<22} {s}"))
            .collect::<Vec<_>>()
            .join("\n")
    };
    match rest.first().map(String::as_str) {
        None | Some("--list") => {
            println!("examples (run one with `cargo xtask example NAME`, all with `--all`):");
            println!("{}", listing());
            ExitCode::SUCCESS
        }
        Some("--all") => {
            // Build them all first, so the times below are the programs' own.
            let mut build = Command::new(cargo);
            build
                .current_dir(&root)
                .env("CARGO_TARGET_DIR", target_dir());
            build.args(["build", "--examples"]);
            if let Some(f) = feature {
                build.args(["--features", f]);
            }
            if !build.status().is_ok_and(|s| s.success()) {
                eprintln!("error: the examples do not build");
                return ExitCode::FAILURE;
            }
            let forwarded: Vec<&String> = rest[1..].iter().collect();
            let mut results = Vec::new();
            for name in &names {
                println!("\n======== cargo xtask example {name}");
                let started = Instant::now();
                let ok = example_command(cargo, &root, name, feature)
                    .arg("--")
                    .args(&forwarded)
                    .status()
                    .is_ok_and(|s| s.success());
                results.push((*name, ok, started.elapsed().as_secs_f64()));
            }
            println!("\n======== examples");
            for (name, ok, secs) in &results {
                let verdict = if *ok { "ok" } else { "FAILED" };
                println!("  {name:<22} {verdict:<7} {secs:>6.1} s");
            }
            if results.iter().all(|(_, ok, _)| *ok) {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Some(name) if names.contains(&name) => {
            let status = example_command(cargo, &root, name, feature)
                .arg("--")
                .args(&rest[1..])
                .status();
            exit_code(status)
        }
        Some(other) => {
            eprintln!(
                "unknown example {other:?}; the examples are:\n{}",
                listing()
            );
            ExitCode::from(2)
        }
    }
}

fn exit_code(status: std::io::Result<std::process::ExitStatus>) -> ExitCode {
    match status {
        Ok(status) if status.success() => ExitCode::SUCCESS,
        Ok(status) => ExitCode::from(status.code().unwrap_or(1).clamp(1, 255) as u8),
        Err(e) => {
            eprintln!("error: could not run cargo: {e}");
            ExitCode::FAILURE
        }
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
    // The same `--features` as `test`, so a `--backend` run shares the test build too.
    let features = feature.map(|f| format!("lora-cli/{f}"));
    if matches!(command.as_str(), "example" | "examples") {
        // `--backend NAME` stays in the arguments: the example program reads it.
        return run_examples(&cargo, rest, &features);
    }
    let mut cmd = Command::new(cargo);
    cmd.env("CARGO_TARGET_DIR", target_dir());
    match command.as_str() {
        "test" => {
            cmd.args(["test", "--workspace", "--exclude", "xtask"]);
            if let Some(f) = &features {
                cmd.args(["--features", f]);
            }
            cmd.args(rest.iter().filter(|a| !a.starts_with("--backend")));
        }
        "train" | "eval" | "generate" | "logits" | "merge" | "export-adapter" | "fetch"
        | "bench" => {
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
    exit_code(cmd.status())
}
