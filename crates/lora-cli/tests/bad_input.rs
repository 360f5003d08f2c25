//! Bad input as a new user meets it (issue 19): a checkpoint with a corrupt config, an adapter
//! full of NaN and a resume with a different rank each end with one readable error line and exit
//! code 1, and leave every file that was already written as it was. Runs on the tiny Llama
//! fixture with a word-level tokenizer written here, so each command takes well under a second.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_burn-lora"))
}

fn scratch(name: &str) -> PathBuf {
    let p = std::env::temp_dir().join(format!("burn-lora-bad-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&p);
    std::fs::create_dir_all(&p).unwrap();
    p
}

/// The tiny Llama fixture (V = 300) with a 27-word tokenizer and a ChatML-like template, as a
/// Hugging Face directory under `dir/model`.
fn tiny_model(dir: &Path) -> PathBuf {
    let fixture = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/tiny-llama");
    let model = dir.join("model");
    std::fs::create_dir_all(&model).unwrap();
    for f in ["config.json", "model.safetensors"] {
        std::fs::copy(fixture.join(f), model.join(f)).unwrap();
    }
    let specials = ["<unk>", "<eos>", "<pad>", "<|im_start|>", "<|im_end|>"];
    let words: Vec<String> = specials
        .iter()
        .map(|s| s.to_string())
        .chain(["user".into(), "assistant".into()])
        .chain((0..20).map(|i| format!("w{i}")))
        .collect();
    let vocab: serde_json::Map<String, serde_json::Value> = words
        .iter()
        .enumerate()
        .map(|(i, w)| (w.clone(), serde_json::json!(i)))
        .collect();
    let added: Vec<_> = specials
        .iter()
        .enumerate()
        .map(|(i, w)| serde_json::json!({"id": i, "content": w, "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true}))
        .collect();
    let tokenizer = serde_json::json!({
        "version": "1.0", "truncation": null, "padding": null, "added_tokens": added,
        "normalizer": null, "pre_tokenizer": {"type": "Whitespace"}, "post_processor": null,
        "decoder": null, "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "<unk>"}
    });
    let template = "{% for m in messages %}<|im_start|>{{ m.role }} {{ m.content }}<|im_end|>{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant{% endif %}";
    let config = serde_json::json!({"eos_token": "<eos>", "pad_token": "<pad>", "unk_token": "<unk>", "chat_template": template});
    std::fs::write(model.join("tokenizer.json"), tokenizer.to_string()).unwrap();
    std::fs::write(model.join("tokenizer_config.json"), config.to_string()).unwrap();
    model
}

/// `n` prompt/completion lines over the tokenizer's words (every 20th is held out).
fn tiny_data(dir: &Path, n: usize) -> PathBuf {
    let path = dir.join(format!("data-{n}.jsonl"));
    let lines: String = (0..n)
        .map(|i| {
            let line = serde_json::json!({
                "prompt": format!("w{} w{}", i % 20, (i * 3) % 20),
                "completion": format!("w{}", (i * 7) % 20),
            });
            format!("{line}\n")
        })
        .collect();
    std::fs::write(&path, lines).unwrap();
    path
}

/// `train` on `model` and `data` for two steps of two examples, with `extra` flags, into `run`.
fn train_two_steps(model: &Path, data: &Path, extra: &[&str], run: &Path) -> Output {
    bin()
        .args(["train", "--steps", "2", "--batch-size", "2", "--model"])
        .arg(model)
        .arg("--data")
        .arg(data)
        .args(extra)
        .arg("--out")
        .arg(run)
        .output()
        .unwrap()
}

/// Trains the tiny model for two steps into `dir/run` and returns the run directory.
fn tiny_run(dir: &Path, model: &Path) -> PathBuf {
    let run = dir.join("run");
    let out = train_two_steps(model, &tiny_data(dir, 24), &["--save-every", "1"], &run);
    assert_succeeded(&out);
    run
}

/// Fails with the command's stderr unless it succeeded.
/// A scratch directory `name` with the tiny model and a finished two-step run in it:
/// `(dir, model, run)`.
fn trained(name: &str) -> (PathBuf, PathBuf, PathBuf) {
    let dir = scratch(name);
    let model = tiny_model(&dir);
    let run = tiny_run(&dir, &model);
    (dir, model, run)
}

fn assert_succeeded(out: &Output) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
}

/// Every file under `dir` with its bytes.
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut files = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else {
                files.insert(path.clone(), std::fs::read(&path).unwrap());
            }
        }
    }
    files
}

/// Asserts the command failed with exit code 1 and exactly one `error:` line (no panic, no
/// backtrace), and returns that line.
fn one_error_line(out: &Output) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "exit code; stderr: {stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    let errors: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error")).collect();
    assert_eq!(errors.len(), 1, "one error line: {stderr}");
    errors[0].to_string()
}

#[test]
fn a_checkpoint_with_a_corrupt_config_ends_with_one_error_line_naming_the_key() {
    let dir = scratch("corrupt-config");
    let model = tiny_model(&dir);
    let config = model.join("config.json");
    let text = std::fs::read_to_string(&config).unwrap();
    for (key, bad) in [
        ("num_hidden_layers", "4611686018427387904"),
        ("head_dim", "4611686018427387904"),
        ("hidden_size", "1099511627776"),
        ("rms_norm_eps", "-1.0"),
    ] {
        let mut json: serde_json::Value = serde_json::from_str(&text).unwrap();
        json[key] = serde_json::from_str(bad).unwrap();
        std::fs::write(&config, json.to_string()).unwrap();
        let before = snapshot(&dir);
        let out = bin()
            .args(["generate", "--prompt", "w1 w2", "--model"])
            .arg(&model)
            .output()
            .unwrap();
        let line = one_error_line(&out);
        assert!(
            line.contains("config.json") && line.contains(key),
            "{key}: {line}"
        );
        assert_eq!(snapshot(&dir), before, "{key}: files changed");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn an_adapter_full_of_nan_is_refused_naming_the_tensor_and_nothing_is_written() {
    let (dir, model, run) = trained("nan-adapter");
    let weights = run.join("adapter/adapter_model.safetensors");
    let mut tensors = lora_core::tensor_io::read_safetensors(&weights).unwrap();
    for t in tensors.values_mut() {
        t.data.iter_mut().for_each(|v| *v = f32::NAN);
    }
    // Written by hand: our own writer refuses non-finite values.
    write_raw_f32_safetensors(&weights, &tensors);
    let before = snapshot(&dir);
    let merged = dir.join("merged");
    for args in [
        vec!["merge", "--out", merged.to_str().unwrap()],
        vec!["generate", "--prompt", "w1"],
    ] {
        let out = bin()
            .args(&args)
            .arg("--model")
            .arg(&model)
            .arg("--adapter")
            .arg(run.join("adapter"))
            .output()
            .unwrap();
        let line = one_error_line(&out);
        assert!(
            line.contains("adapter_model.safetensors")
                && line.contains("lora_")
                && line.contains("NaN"),
            "{args:?}: {line}"
        );
    }
    assert!(!merged.exists(), "no merged model is written");
    assert_eq!(snapshot(&dir), before);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Writes `tensors` as an F32 safetensors file (header JSON + raw little-endian data) without
/// our writer's finiteness check.
fn write_raw_f32_safetensors(
    path: &Path,
    tensors: &BTreeMap<String, lora_core::tensor_io::HostTensor>,
) {
    let mut header = serde_json::Map::new();
    let mut data = Vec::new();
    for (name, t) in tensors {
        let start = data.len();
        data.extend(t.data.iter().flat_map(|v| v.to_le_bytes()));
        header.insert(
            name.clone(),
            serde_json::json!({"dtype": "F32", "shape": t.shape, "data_offsets": [start, data.len()]}),
        );
    }
    let header = serde_json::Value::Object(header).to_string();
    let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
    bytes.extend(header.as_bytes());
    bytes.extend(data);
    std::fs::write(path, bytes).unwrap();
}

#[test]
fn resuming_with_a_different_rank_is_refused_listing_it_and_changes_nothing() {
    let (dir, _model, run) = trained("resume-rank");
    let before = snapshot(&run);
    let out = bin()
        .args([
            "train", "--rank", "16", "--alpha", "8", "--steps", "4", "--resume",
        ])
        .arg(&run)
        .output()
        .unwrap();
    let line = one_error_line(&out);
    assert!(
        line.contains("lora.r: 8 → 16") && line.contains("lora.lora_alpha: 16.0 → 8.0"),
        "{line}"
    );
    assert_eq!(snapshot(&run), before, "the run directory is unchanged");

    // The same flags as the saved run, and a longer schedule, continue it.
    let out = bin()
        .args(["train", "--rank", "8", "--steps", "3", "--resume"])
        .arg(&run)
        .output()
        .unwrap();
    assert_succeeded(&out);
    // A schedule shorter than the saved step is refused.
    let out = bin()
        .args(["train", "--steps", "1", "--resume"])
        .arg(&run)
        .output()
        .unwrap();
    let line = one_error_line(&out);
    assert!(
        line.contains("step 3") && line.contains("--steps 3"),
        "{line}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn out_and_config_with_resume_are_refused_not_ignored() {
    for flag in ["--out", "--config"] {
        let out = bin()
            .args(["train", "--resume", "somewhere", flag, "x"])
            .output()
            .unwrap();
        assert!(!out.status.success());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains("cannot be used with") && stderr.contains(flag),
            "{stderr}"
        );
    }
}

#[test]
fn a_dataset_without_held_out_examples_trains_and_reports_nothing_measured() {
    let dir = scratch("no-heldout");
    let model = tiny_model(&dir);
    let run = dir.join("run");
    // 5 lines: every 20th is held out, so none is.
    let out = train_two_steps(&model, &tiny_data(&dir, 5), &["--eval-every", "1"], &run);
    assert_succeeded(&out);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("no held-out examples"), "{stderr}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("no held-out examples"), "{stdout}");
    assert!(!stdout.contains("held-out loss"), "{stdout}");
    let summary: serde_json::Value =
        serde_json::from_slice(&std::fs::read(run.join("summary.json")).unwrap()).unwrap();
    assert!(summary["before"].is_null() && summary["after"].is_null());
    assert!(run.join("adapter/adapter_model.safetensors").exists());
    assert!(!run.join("eval_before.json").exists());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn bad_settings_and_prompts_end_with_one_error_line_naming_the_setting() {
    let dir = scratch("settings");
    let model = tiny_model(&dir);
    let data = tiny_data(&dir, 24);
    let toml = dir.join("bad.toml");
    for (setting, expect) in [
        ("weight_decay = nan", "weight_decay"),
        ("max_grad_norm = -1.0", "max_grad_norm"),
        (
            "warmup_steps = 1000000000000",
            "warmup_steps must be at most",
        ),
        ("[lora]\nlora_alpha = inf", "lora_alpha"),
        ("[lora]\nr = 100000000", "r = 100000000"),
        ("batch_size = 100", "batch_size 100"),
    ] {
        std::fs::write(&toml, setting).unwrap();
        let out = bin()
            .args(["train", "--model"])
            .arg(&model)
            .arg("--data")
            .arg(&data)
            .arg("--config")
            .arg(&toml)
            .arg("--out")
            .arg(dir.join("run-settings"))
            .output()
            .unwrap();
        let line = one_error_line(&out);
        assert!(line.contains(expect), "{setting}: {line}");
        let _ = std::fs::remove_dir_all(dir.join("run-settings"));
    }
    for command in ["generate", "logits"] {
        let out = bin()
            .args([command, "--prompt", "", "--model"])
            .arg(&model)
            .output()
            .unwrap();
        let line = one_error_line(&out);
        assert!(line.contains("prompt is empty"), "{command}: {line}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_fractional_r_in_adapter_config_names_the_key() {
    let (dir, model, run) = trained("fractional-r");
    let config = run.join("adapter/adapter_config.json");
    let mut json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&config).unwrap()).unwrap();
    json["r"] = serde_json::json!(8.5);
    std::fs::write(&config, json.to_string()).unwrap();
    let out = bin()
        .args(["generate", "--prompt", "w1", "--model"])
        .arg(&model)
        .arg("--adapter")
        .arg(run.join("adapter"))
        .output()
        .unwrap();
    let line = one_error_line(&out);
    assert!(
        line.contains("adapter_config.json") && line.contains("key \"r\""),
        "{line}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
