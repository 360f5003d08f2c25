//! Seeded fuzzing of every loader a user's file reaches (issue 19): corrupted copies of real
//! fixtures — a GGUF model, a Hugging Face directory (`config.json` + `model.safetensors` +
//! `tokenizer.json`), PEFT LoRA, DoRA and AdaLoRA adapter directories, JSONL data and a TOML run
//! config — go through the loaders, which must return `Ok` or `Err` and never panic (each case
//! runs under `catch_unwind`) nor ask for one allocation above [`ALLOC_CAP`] (the counting
//! global allocator below refuses it, which aborts this test binary with the size).
//!
//! Mutations: truncation, bit flips, byte runs overwritten with extreme integers or non-finite
//! floats, and (for text) numbers replaced by extreme, negative, fractional and non-finite
//! values. Each target runs [`CASES`] cases or for [`BUDGET`], whichever ends first, so the
//! whole file takes well under a minute on CI's two cores. `FUZZ_CASES=N` and `FUZZ_SEED=S` run
//! longer or elsewhere, `FUZZ_VERBOSE=1` prints every error; a failure prints the target, seed
//! and case to reproduce it.

use std::alloc::{GlobalAlloc, Layout, System};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use burn::tensor::Device;
use lora_core::{BackendKind, select_device};
use lora_models::Llama;
use lora_train::TrainConfig;

/// The largest single allocation any loader may ask for on these inputs: 64 MiB. The fixtures are
/// under 1 MiB; a corrupt count or shape must be refused before it becomes an allocation.
const ALLOC_CAP: usize = 64 << 20;

/// Cases per target unless `FUZZ_CASES` says otherwise.
const CASES: usize = 200;

/// Wall-clock budget per target.
const BUDGET: Duration = Duration::from_secs(8);

/// The system allocator, refusing any single allocation over [`ALLOC_CAP`].
struct CappedAlloc;

/// The largest allocation refused (0 = none), for the abort message's context.
static REFUSED: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards to `System` unchanged, except that it returns null (allocation failure) for
// sizes over the cap, which every caller must already handle.
unsafe impl GlobalAlloc for CappedAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if layout.size() > ALLOC_CAP {
            REFUSED.fetch_max(layout.size(), Ordering::SeqCst);
            return std::ptr::null_mut();
        }
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from `System.alloc` with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if layout.size() > ALLOC_CAP {
            REFUSED.fetch_max(layout.size(), Ordering::SeqCst);
            return std::ptr::null_mut();
        }
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if new_size > ALLOC_CAP {
            REFUSED.fetch_max(new_size, Ordering::SeqCst);
            return std::ptr::null_mut();
        }
        // SAFETY: same contract as the caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOC: CappedAlloc = CappedAlloc;

/// SplitMix64: a small seeded generator, so a case is reproducible from (seed, index) alone.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// Integers and floats that break careless arithmetic, as little-endian byte patterns.
fn extreme_bytes(rng: &mut Rng) -> Vec<u8> {
    match rng.below(8) {
        0 => u64::MAX.to_le_bytes().to_vec(),
        1 => (1u64 << 62).to_le_bytes().to_vec(),
        2 => (1u64 << 40).to_le_bytes().to_vec(),
        3 => 0u64.to_le_bytes().to_vec(),
        4 => u32::MAX.to_le_bytes().to_vec(),
        5 => f32::NAN.to_le_bytes().to_vec(),
        6 => f32::INFINITY.to_le_bytes().to_vec(),
        _ => f64::NEG_INFINITY.to_le_bytes().to_vec(),
    }
}

/// A corrupted copy of binary `bytes`; mutations favour the header (the first 4 KiB), where
/// counts, lengths, shapes and offsets live.
fn mutate_bytes(bytes: &[u8], rng: &mut Rng) -> Vec<u8> {
    let mut b = bytes.to_vec();
    let at = |rng: &mut Rng, len: usize| {
        if rng.below(4) == 0 {
            rng.below(len)
        } else {
            rng.below(len.min(4096))
        }
    };
    for _ in 0..=rng.below(3) {
        if b.is_empty() {
            break;
        }
        match rng.below(4) {
            0 => {
                let cut = at(rng, b.len());
                b.truncate(cut);
            }
            1 => {
                for _ in 0..=rng.below(8) {
                    let i = at(rng, b.len());
                    b[i] ^= 1 << rng.below(8);
                }
            }
            _ => {
                let i = at(rng, b.len());
                for (k, v) in extreme_bytes(rng).into_iter().enumerate() {
                    if let Some(x) = b.get_mut(i + k) {
                        *x = v;
                    }
                }
            }
        }
    }
    b
}

/// Numbers that a config or data file might carry by mistake.
const EXTREME_NUMBERS: [&str; 12] = [
    "0",
    "-1",
    "1.5",
    "1e308",
    "-1e308",
    "NaN",
    "nan",
    "inf",
    "-inf",
    "18446744073709551615",
    "4611686018427387904",
    "1099511627776",
];

/// A corrupted copy of `text`: a number replaced by an extreme one, a truncation, or a byte
/// flip (which may make it invalid UTF-8).
fn mutate_text(text: &str, rng: &mut Rng) -> Vec<u8> {
    let mut b = text.as_bytes().to_vec();
    for _ in 0..=rng.below(2) {
        match rng.below(5) {
            0 => {
                let cut = rng.below(b.len() + 1);
                b.truncate(cut);
            }
            1 if !b.is_empty() => {
                let i = rng.below(b.len());
                b[i] ^= 1 << rng.below(8);
            }
            _ => {
                // Replace the k-th run of digits (with its sign and fraction) by an extreme value.
                let s = String::from_utf8_lossy(&b).into_owned();
                let starts: Vec<usize> = s
                    .char_indices()
                    .filter(|&(i, c)| {
                        c.is_ascii_digit()
                            && !s[..i]
                                .chars()
                                .next_back()
                                .is_some_and(|p| p.is_ascii_digit() || p == '.' || p == '-')
                    })
                    .map(|(i, _)| i)
                    .collect();
                if starts.is_empty() {
                    continue;
                }
                let start = starts[rng.below(starts.len())];
                let end = s[start..]
                    .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == 'e' || c == '-'))
                    .map_or(s.len(), |n| start + n);
                let new = EXTREME_NUMBERS[rng.below(EXTREME_NUMBERS.len())];
                b = format!("{}{new}{}", &s[..start], &s[end..]).into_bytes();
            }
        }
    }
    b
}

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fixtures")
}

fn device() -> Device {
    select_device(BackendKind::Flex).expect("flex backend")
}

fn scratch(name: &str) -> PathBuf {
    let p = std::env::temp_dir().join(format!("burn-lora-fuzz-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&p);
    std::fs::create_dir_all(&p).unwrap();
    p
}

/// Copies every file of `from` into `to`.
fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let p = e.unwrap().path();
        if p.is_file() {
            std::fs::copy(&p, to.join(p.file_name().unwrap())).unwrap();
        }
    }
}

/// Runs `case(rng)` for each case of the target `name` under `catch_unwind`; returns how many
/// cases ran, and fails listing every case that panicked.
fn fuzz<T, E: std::fmt::Display>(
    name: &str,
    mut case: impl FnMut(&mut Rng) -> Result<T, E>,
) -> usize {
    let seed: u64 = std::env::var("FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(19);
    let cases: usize = std::env::var("FUZZ_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(CASES);
    let t0 = Instant::now();
    let (mut panics, mut errors, mut ran) = (Vec::new(), 0, 0);
    for i in 0..cases {
        if t0.elapsed() > BUDGET && std::env::var("FUZZ_CASES").is_err() {
            break;
        }
        let mut rng = Rng(seed.wrapping_mul(1_000_003).wrapping_add(i as u64));
        match catch_unwind(AssertUnwindSafe(|| case(&mut rng))) {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => {
                errors += 1;
                if std::env::var("FUZZ_VERBOSE").is_ok() {
                    eprintln!("{name} case {i}: {e}");
                }
            }
            Err(p) => {
                let msg = p
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default();
                panics.push(format!("{name} seed {seed} case {i}: {msg}"));
            }
        }
        ran += 1;
    }
    eprintln!(
        "{name}: {ran} cases in {:.1}s, {errors} refused with an error, {} panics",
        t0.elapsed().as_secs_f64(),
        panics.len()
    );
    assert!(panics.is_empty(), "panics:\n{}", panics.join("\n"));
    assert_eq!(
        REFUSED.load(Ordering::SeqCst),
        0,
        "an allocation was refused"
    );
    ran
}

#[test]
fn corrupted_gguf_models_load_or_fail_without_panic_or_huge_allocation() {
    let original = std::fs::read(fixtures().join("tiny-qwen2/model.gguf")).unwrap();
    let dir = scratch("gguf");
    let path = dir.join("model.gguf");
    let device = device();
    let ran = fuzz("gguf", |rng| {
        std::fs::write(&path, mutate_bytes(&original, rng)).unwrap();
        lora_models::load(&path, &device)
    });
    assert!(ran > 0);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn corrupted_hugging_face_directories_load_or_fail_without_panic_or_huge_allocation() {
    let dir = scratch("hf");
    let model = dir.join("model");
    copy_dir(&fixtures().join("tiny-qwen2"), &model);
    let device = device();
    let files = ["config.json", "model.safetensors", "tokenizer.json"];
    let originals: Vec<Vec<u8>> = files
        .iter()
        .map(|f| std::fs::read(model.join(f)).unwrap())
        .collect();
    let ran = fuzz("hf", |rng| {
        let k = rng.below(files.len());
        for (f, o) in files.iter().zip(&originals) {
            std::fs::write(model.join(f), o).unwrap();
        }
        let bytes = if files[k].ends_with(".json") {
            mutate_text(&String::from_utf8_lossy(&originals[k]), rng)
        } else {
            mutate_bytes(&originals[k], rng)
        };
        std::fs::write(model.join(files[k]), bytes).unwrap();
        lora_models::load(&model, &device)
    });
    assert!(ran > 0);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Fuzzes the adapter directory `adapter` (relative to `fixtures/`) on `base`.
fn fuzz_adapter(name: &str, base: Llama, adapter: &str) {
    let dir = scratch(name);
    let adapter_dir = dir.join("adapter");
    copy_dir(&fixtures().join(adapter), &adapter_dir);
    let device = device();
    let files = ["adapter_config.json", "adapter_model.safetensors"];
    let originals: Vec<Vec<u8>> = files
        .iter()
        .map(|f| std::fs::read(adapter_dir.join(f)).unwrap())
        .collect();
    let ran = fuzz(name, |rng| {
        let k = rng.below(files.len());
        for (f, o) in files.iter().zip(&originals) {
            std::fs::write(adapter_dir.join(f), o).unwrap();
        }
        let bytes = if k == 0 {
            mutate_text(&String::from_utf8_lossy(&originals[k]), rng)
        } else {
            mutate_bytes(&originals[k], rng)
        };
        std::fs::write(adapter_dir.join(files[k]), bytes).unwrap();
        lora_core::peft::load_adapter(base.clone(), &adapter_dir, &device)
    });
    assert!(ran > 0);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn corrupted_lora_adapters_load_or_fail_without_panic_or_huge_allocation() {
    let base =
        lora_models::pretrained::load_hf_model(&fixtures().join("tiny-qwen2"), &device()).unwrap();
    fuzz_adapter("lora-adapter", base, "tiny-qwen2/peft-adapter");
}

#[test]
fn corrupted_adalora_adapters_load_or_fail_without_panic_or_huge_allocation() {
    let base =
        lora_models::pretrained::load_hf_model(&fixtures().join("tiny-llama"), &device()).unwrap();
    fuzz_adapter("adalora-adapter", base, "tiny-llama/peft-adalora");
}

#[test]
fn corrupted_dora_adapters_load_or_fail_without_panic_or_huge_allocation() {
    let base =
        lora_models::pretrained::load_hf_model(&fixtures().join("tiny-llama"), &device()).unwrap();
    fuzz_adapter("dora-adapter", base, "tiny-llama/peft-dora");
}

#[test]
fn corrupted_jsonl_data_parses_and_encodes_or_fails_without_panic() {
    // Every line format the loader reads, with numbers inside the text for the number mutations.
    let train = std::fs::read_to_string(fixtures().join("trec-chat/train.jsonl")).unwrap();
    let mut original: String = train.lines().take(4).map(|l| format!("{l}\n")).collect();
    original.push_str(concat!(
        r#"{"prompt": "2 + 2 =", "completion": " 4"}"#,
        "\n",
        r#"{"instruction": "Add 1.5 and 2", "input": "", "output": "3.5"}"#,
        "\n",
        r#"{"text": "The year 1999 had 365 days."}"#,
        "\n",
        r#"{"conversations": [{"from": "human", "value": "7 * 6?"}, {"from": "gpt", "value": "42"}]}"#,
        "\n",
    ));
    let mut tok =
        lora_models::tokenizer::TextTokenizer::from_hf_dir(fixtures().join("tiny-qwen2")).unwrap();
    let template = lora_models::tokenizer::family_chat_template(lora_models::Family::Qwen2);
    tok.set_chat_template(template.map(str::to_owned));
    let dir = scratch("jsonl");
    let path = dir.join("data.jsonl");
    let ran = fuzz("jsonl", |rng| {
        std::fs::write(&path, mutate_text(&original, rng)).unwrap();
        let samples = lora_train::data::jsonl::read_jsonl(&path).map_err(|e| e.to_string())?;
        lora_train::data::encode::encode_all(&samples, &tok, 64).map_err(|e| e.to_string())
    });
    assert!(ran > 0);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn corrupted_run_configs_are_refused_or_valid() {
    let original = TrainConfig::default().to_toml().unwrap();
    let ran = fuzz("toml", |rng| {
        let text = String::from_utf8(mutate_text(&original, rng)).map_err(|e| e.to_string())?;
        let table: toml::Table = text.parse().map_err(|e: toml::de::Error| e.to_string())?;
        let cfg = TrainConfig::layered(&[("fuzz", table)]).map_err(|e| e.to_string())?;
        // What is accepted must be usable: validated, and its AdaLoRA view too.
        cfg.validate()?;
        if cfg.method == lora_train::config::Method::Adalora {
            cfg.adalora_config()
                .validate_training()
                .map_err(|e| e.to_string())?;
        }
        Ok::<(), String>(())
    });
    assert!(ran > 0);
}
