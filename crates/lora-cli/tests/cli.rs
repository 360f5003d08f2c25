//! The command line as a user meets it: bad input is refused with a clear message before
//! anything is written, and a short real training run leaves every file a run promises.

use std::path::PathBuf;
use std::process::Command;

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_burn-lora"))
}

fn scratch(name: &str) -> PathBuf {
    let p = std::env::temp_dir().join(format!("burn-lora-cli-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&p);
    p
}

fn stderr_of(args: &[&str]) -> String {
    let out = bin().args(args).output().unwrap();
    assert!(!out.status.success(), "{args:?} should fail");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Whether the default model has been fetched; when not, says so (the test then skips).
fn model_fetched() -> bool {
    let model = lora_models::cache::default_model_path();
    if !model.exists() {
        eprintln!(
            "skipping: {} not fetched (run cargo xtask fetch)",
            model.display()
        );
    }
    model.exists()
}

/// Fails the test with the command's stderr unless it succeeded.
fn assert_succeeded(out: &std::process::Output, what: &str) {
    assert!(
        out.status.success(),
        "{what} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn zero_steps_is_refused() {
    let err = stderr_of(&[
        "train",
        "--steps",
        "0",
        "--out",
        &scratch("zero").to_string_lossy(),
    ]);
    assert!(err.contains("steps must be at least 1"), "{err}");
}

#[test]
fn an_unknown_backend_is_refused_naming_it() {
    let err = stderr_of(&[
        "train",
        "--backend",
        "tpu",
        "--out",
        &scratch("tpu").to_string_lossy(),
    ]);
    assert!(err.contains("\"tpu\""), "{err}");
}

#[test]
fn an_output_directory_holding_another_run_is_left_untouched() {
    let dir = scratch("occupied");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("summary.json"), "{\"mine\": true}").unwrap();
    let err = stderr_of(&["train", "--out", &dir.to_string_lossy()]);
    assert!(
        err.contains("already holds files") && err.contains("--resume"),
        "{err}"
    );
    assert_eq!(
        std::fs::read_to_string(dir.join("summary.json")).unwrap(),
        "{\"mine\": true}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_requantize_report_without_an_nf4_base_is_refused() {
    let err = stderr_of(&[
        "merge",
        "--adapter",
        "some-adapter",
        "--requantize-report",
        "--out",
        &scratch("requant").to_string_lossy(),
    ]);
    assert!(err.contains("needs --quant nf4"), "{err}");
}

#[test]
fn several_adapters_need_names_and_weights() {
    let logits = |extra: &[&str]| {
        let mut args = vec!["logits", "--prompt", "hi"];
        args.extend_from_slice(extra);
        stderr_of(&args)
    };
    let err = logits(&["--adapter", "a=x", "--adapter", "b=y"]);
    assert!(err.contains("add --weights"), "{err}");
    let err = logits(&["--adapter", "x", "--adapter", "b=y", "--weights", "0.5,0.5"]);
    assert!(err.contains("NAME=DIR"), "{err}");
    let err = logits(&[
        "--adapter",
        "a=x",
        "--weights",
        "1",
        "--combination",
        "ties",
    ]);
    assert!(err.contains("linear, cat or svd"), "{err}");
}

/// `cat` with weights 0.5, 0.5 of one adapter and itself is that adapter (0.5·ΔW + 0.5·ΔW), so
/// `logits` gives the single adapter's numbers; `linear` does not (it mixes A and B separately:
/// (√0.5 + √0.5)²·ΔW = 2·ΔW). Needs the real SmolLM2; skipped without it.
#[test]
fn an_adapter_combined_with_itself_by_cat_is_that_adapter() {
    let model = lora_models::cache::default_model_path();
    if !model.exists() {
        eprintln!("skipping: {} not fetched", model.display());
        return;
    }
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/smollm2-peft-adapter");
    let dir = dir.to_string_lossy().into_owned();
    let top = |extra: &[String]| -> Vec<(u64, f64)> {
        let out = bin()
            .args(["logits", "--prompt", "The capital of France is", "--json"])
            .args(extra)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        v["top_k"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| (e["id"].as_u64().unwrap(), e["logit"].as_f64().unwrap()))
            .collect()
    };
    let single = top(&["--adapter".into(), dir.clone()]);
    let pair = |kind: &str| {
        top(&[
            "--adapter".into(),
            format!("a={dir}"),
            "--adapter".into(),
            format!("b={dir}"),
            "--weights".into(),
            "0.5,0.5".into(),
            "--combination".into(),
            kind.into(),
        ])
    };
    let cat = pair("cat");
    for (s, c) in single.iter().zip(&cat) {
        assert_eq!(s.0, c.0);
        assert!((s.1 - c.1).abs() < 1e-3, "{single:?} vs {cat:?}");
    }
    let linear = pair("linear");
    let moved = single
        .iter()
        .zip(&linear)
        .any(|(s, l)| (s.1 - l.1).abs() > 1e-2);
    assert!(moved, "linear doubles the update: {single:?} vs {linear:?}");
}

#[test]
fn resuming_a_directory_that_is_not_a_run_is_refused() {
    let dir = scratch("notarun");
    std::fs::create_dir_all(&dir).unwrap();
    let err = stderr_of(&["train", "--resume", &dir.to_string_lossy()]);
    assert!(err.contains("not a run directory"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_short_real_run_lowers_the_loss_and_leaves_every_file() {
    if !model_fetched() {
        return;
    }
    let dir = scratch("short-run");
    let out = bin()
        .args([
            "train",
            "--steps",
            "8",
            "--batch-size",
            "4",
            "--eval-limit",
            "32",
            "--lr",
            "1e-3",
            "--save-every",
            "4",
            "--json",
            "--out",
        ])
        .arg(&dir)
        .output()
        .unwrap();
    assert_succeeded(&out, "train");
    for f in [
        "adapter/adapter_config.json",
        "adapter/adapter_model.safetensors",
        "metrics.jsonl",
        "summary.json",
        "loss.png",
        "config.toml",
        "checkpoint/trainer_state.json",
        "checkpoint/optimizer.bpk",
    ] {
        assert!(dir.join(f).exists(), "{f} missing");
    }
    let png = std::fs::read(dir.join("loss.png")).unwrap();
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
    let steps = std::fs::read_to_string(dir.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .filter(|l| l.contains("\"grad_norm\""))
        .count();
    assert_eq!(steps, 8);
    let summary: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("summary.json")).unwrap()).unwrap();
    let (before, after) = (
        summary["before"]["loss"].as_f64().unwrap(),
        summary["after"]["loss"].as_f64().unwrap(),
    );
    assert!(
        after < before,
        "held-out loss went down: {before} → {after}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_short_adalora_run_ends_at_the_target_budget_and_writes_a_pruned_peft_adapter() {
    if !model_fetched() {
        return;
    }
    let dir = scratch("adalora-run");
    let out = bin()
        .args([
            "train",
            "--method",
            "adalora",
            "--init-r",
            "4",
            "--target-r",
            "2",
            "--tinit",
            "1",
            "--tfinal",
            "1",
            "--steps",
            "5",
            "--batch-size",
            "2",
            "--eval-limit",
            "8",
            "--json",
            "--out",
        ])
        .arg(&dir)
        .output()
        .unwrap();
    assert_succeeded(&out, "train");
    let png = std::fs::read(dir.join("ranks.png")).unwrap();
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
    let summary: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("summary.json")).unwrap()).unwrap();
    let ada = &summary["adalora"];
    assert_eq!(ada["average_rank"].as_f64(), Some(2.0), "{ada}");
    assert_eq!(
        ada["final_budget"].as_u64(),
        Some(2 * 120),
        "q/k/v/o of 30 layers"
    );
    let config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("adapter/adapter_config.json")).unwrap())
            .unwrap();
    assert_eq!(config["peft_type"], "ADALORA");
    assert_eq!(config["total_step"], 5);
    let pattern = config["rank_pattern"].as_object().unwrap();
    assert_eq!(pattern.len(), 120);
    let key = "model.layers.0.self_attn.q_proj";
    let kept = pattern[&format!("{key}.lora_E")]
        .as_array()
        .unwrap()
        .iter()
        .filter(|b| b.as_bool() == Some(true))
        .count();
    let tensors =
        lora_core::tensor_io::read_safetensors(&dir.join("adapter/adapter_model.safetensors"))
            .unwrap();
    assert_eq!(
        tensors[&format!("base_model.model.{key}.lora_A")].shape,
        vec![kept, 576],
        "only the kept triplets are saved"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn bench_on_the_tiny_model_fills_every_row_and_marks_peft_missing_without_python() {
    let model = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/tiny-llama");
    let dir = scratch("bench");
    let out = bin()
        .args(["bench", "--model"])
        .arg(&model)
        .args([
            "--steps",
            "2",
            "--warmup",
            "1",
            "--batch",
            "2",
            "--seq-len",
            "8",
        ])
        .args([
            "--rank",
            "4",
            "--prompt-len",
            "6",
            "--decode-tokens",
            "2",
            "--rounds",
            "1",
        ])
        .args(["--python", "/nonexistent/python", "--json", "--out"])
        .arg(&dir)
        .output()
        .unwrap();
    assert_succeeded(&out, "bench");
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(dir.join("bench.json").exists());
    let rows = json["training"].as_array().unwrap();
    assert_eq!(rows.len(), 10, "2 target sets × 5 implementations");
    for row in rows {
        let implementation = row["implementation"].as_str().unwrap();
        if implementation.starts_with("peft") {
            assert!(
                row["missing"].as_str().unwrap().contains("nonexistent"),
                "{row}"
            );
        } else {
            let s = &row["summary"];
            assert!(s["tokens_per_s"]["median"].as_f64().unwrap() > 0.0, "{row}");
            assert!(s["peak_rss_gib"].as_f64().unwrap() > 0.0, "{row}");
        }
    }
    // The gemm part: every product of the tiny model's step timed on our side, PyTorch's missing.
    let gemm = json["gemm"].as_array().unwrap();
    assert_eq!(
        gemm.len(),
        17,
        "5 projections × fwd/bwd, 5 attention products, 2 head products"
    );
    for row in gemm {
        assert!(row["ours_gflops"].as_f64().unwrap() > 0.0, "{row}");
        assert!(row["torch_gflops"].is_null(), "{row}");
    }
    // Ours and burn's apply_lora adapt the same weights at the same rank.
    let trainable = |i: &str, t: &str| {
        rows.iter()
            .find(|r| r["implementation"] == i && r["targets"] == t)
            .unwrap()["summary"]["trainable_params"]
            .as_u64()
            .unwrap()
    };
    for t in ["qv", "all-linear"] {
        assert_eq!(trainable("ours", t), trainable("burn", t), "{t}");
        assert_eq!(trainable("ours", t), trainable("ours-nf4", t), "{t}");
    }
    // The QLoRA rows' base is NF4: 4 bits per code plus block statistics (4.5 bits at most with
    // double quantization, block 64); the f32 rows' is 32 bits.
    let bits = |i: &str| {
        rows.iter().find(|r| r["implementation"] == i).unwrap()["summary"]["base_bits_per_weight"]
            .as_f64()
            .unwrap()
    };
    assert_eq!(bits("ours"), 32.0);
    let nf4 = bits("ours-nf4");
    assert!((4.0..4.5).contains(&nf4), "{nf4}");
    let inference = &json["inference"];
    assert_eq!(inference["rows"].as_array().unwrap().len(), 5);
    assert!(inference["merged_max_abs_logit_diff"].as_f64().unwrap() < 1e-4);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_data_folder_run_shows_exact_match_before_and_after_and_eval_reproduces_it() {
    if !model_fetched() {
        return;
    }
    let data = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/trec-chat");
    let dir = scratch("data-folder");
    let common = ["--eval-limit", "12"];
    let out = bin()
        .args([
            "train",
            "--steps",
            "3",
            "--batch-size",
            "4",
            "--json",
            "--data",
        ])
        .arg(&data)
        .args(common)
        .arg("--out")
        .arg(&dir)
        .output()
        .unwrap();
    assert_succeeded(&out, "train");
    let summary: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("summary.json")).unwrap()).unwrap();
    for when in ["before", "after"] {
        let m = summary[when]["exact_match"].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&m), "{when}: {m}");
        assert_eq!(summary[when]["exact_match_examples"], 12);
    }
    assert_eq!(summary["dataset"]["train"]["examples"], 240);
    assert_eq!(summary["dataset"]["test"]["examples"], 60);
    let samples = std::fs::read_to_string(dir.join("samples.md")).unwrap();
    assert!(
        samples.contains("| # | question | reference | base | tuned |"),
        "{samples}"
    );
    let answers = std::fs::read_to_string(dir.join("answers.jsonl")).unwrap();
    assert_eq!(answers.lines().count(), 12);

    let out = bin()
        .args(["eval", "--json", "--data"])
        .arg(&data)
        .args(common)
        .arg("--adapter")
        .arg(dir.join("adapter"))
        .output()
        .unwrap();
    assert_succeeded(&out, "eval");
    let eval: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(eval["exact_match"], summary["after"]["exact_match"]);
    let (a, b) = (
        eval["loss"].as_f64().unwrap(),
        summary["after"]["loss"].as_f64().unwrap(),
    );
    assert!(
        (a - b).abs() <= 1e-6 * b.abs(),
        "eval loss {a} vs train's after {b}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
