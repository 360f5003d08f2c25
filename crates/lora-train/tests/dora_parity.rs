//! DoRA parity with Hugging Face PEFT (`use_dora=True`) on the tiny Llama fixture and on the
//! real SmolLM2: PEFT's DoRA adapters load here with PEFT's logits and gradients (magnitude
//! vectors included), fresh DoRA adapters start with PEFT's magnitudes, merging equals the
//! unmerged forward (on an NF4 base too), and adapters we write are PEFT files.

#[path = "../../lora-models/tests/common/mod.rs"]
mod common;

use common::*;
use lora_core::config::{InitLoraWeights, LoraConfig, TargetModules};
use lora_core::quant::quantize_base;
use lora_core::{LoraModel, Nf4Config, apply_lora, merge_all, peft, unmerge_all};
use lora_models::pretrained::load_hf_model;
use lora_train::loss::causal_lm_loss;

fn tiny() -> std::path::PathBuf {
    fixtures().join("tiny-llama")
}

fn scratch(name: &str) -> std::path::PathBuf {
    let p = std::env::temp_dir().join(format!("burn-lora-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&p);
    p
}

fn dora_config(targets: &[&str]) -> LoraConfig {
    LoraConfig {
        use_dora: true,
        ..LoraConfig::new(4, 8.0, TargetModules::names(targets))
    }
}

#[test]
fn peft_dora_adapter_loads_with_logits_equal_to_peft() {
    let d = device();
    let r = reference("tiny-llama/dora-reference.safetensors");
    let model = load_hf_model(&tiny(), &d).unwrap();
    let (model, cfg, report) = peft::load_adapter(model, &tiny().join("peft-dora"), &d).unwrap();
    assert!(cfg.as_lora().is_some_and(|c| c.use_dora), "{cfg:?}");
    assert_eq!(report.modules.len(), 14);
    let mut dora = 0;
    model.visit_adapters(&mut |_, a| dora += a.as_dora().is_some() as usize);
    assert_eq!(dora, 14, "every module carries a DoRA adapter");
    let logits = host(model.forward(ids(&r["input_ids"], &d), None));
    let err = rel_err(&logits, &r["logits_dora"].data);
    eprintln!("tiny DoRA logits vs PEFT: max rel err {err:.2e}");
    assert!(err < 1e-4, "logits vs PEFT {err}");
    assert!(
        rel_err(&logits, &r["logits_base"].data) > 1e-3,
        "adapter had no effect"
    );
}

#[test]
fn dora_gradients_equal_peft_gradients_magnitude_included() {
    let d = device().autodiff();
    let r = reference("tiny-llama/dora-reference.safetensors");
    let model = load_hf_model(&tiny(), &d).unwrap();
    let (model, _, _) = peft::load_adapter(model, &tiny().join("peft-dora"), &d).unwrap();
    let logits = model.forward(ids(&r["input_ids"], &d), None);
    let loss = causal_lm_loss(logits, ids(&r["labels"], &d));
    let loss_value = host(loss.clone())[0];
    let want_loss = r["loss"].data[0];
    assert!(
        (loss_value - want_loss).abs() < 1e-4 * want_loss.abs(),
        "{loss_value} vs {want_loss}"
    );
    let grads = loss.backward();
    let (mut checked, mut worst) = (0, 0f32);
    model.visit_adapters(&mut |path, a| {
        let a = a.as_dora().expect("a DoRA adapter");
        // burn [in, r] / [r, out] / [1, out] → PyTorch [r, in] / [out, r] / [out].
        let got = [
            (
                "lora_A",
                host(a.lora.lora_a.val().grad(&grads).unwrap().transpose()),
            ),
            (
                "lora_B",
                host(a.lora.lora_b.val().grad(&grads).unwrap().transpose()),
            ),
            (
                "lora_magnitude_vector",
                host(a.magnitude.val().grad(&grads).unwrap()),
            ),
        ];
        for (which, g) in got {
            let want = &r[&format!("grad.{path}.{which}")].data;
            let err = rel_err(&g, want);
            worst = worst.max(err);
            assert!(err < 1e-4, "{path}.{which} grad: {err}");
            checked += 1;
        }
    });
    eprintln!("tiny DoRA gradients vs PEFT: worst max rel err {worst:.2e} over {checked} tensors");
    assert_eq!(checked, 42);
}

#[test]
fn fresh_dora_magnitude_is_the_norm_of_w_as_peft_initialises_it() {
    let d = device();
    let r = reference("tiny-llama/dora-reference.safetensors");
    let model = load_hf_model(&tiny(), &d).unwrap();
    let before = host(model.forward(ids(&r["input_ids"], &d), None));
    let cfg = dora_config(&[
        "q_proj",
        "k_proj",
        "v_proj",
        "o_proj",
        "gate_proj",
        "up_proj",
        "down_proj",
    ]);
    let (model, report) = apply_lora(model, &cfg, &d).unwrap();
    // r·(in + out) + out per module.
    let expected: usize = report
        .modules
        .iter()
        .map(|m| 4 * (m.d_in + m.d_out) + m.d_out)
        .sum();
    assert_eq!(report.trainable_params, expected);
    let mut checked = 0;
    model.visit_adapters(&mut |path, a| {
        let m = host(a.as_dora().unwrap().magnitude.val());
        let want = &r[&format!("init.{path}.lora_magnitude_vector")].data;
        assert!(rel_err(&m, want) < 1e-6, "{path}: {}", rel_err(&m, want));
        checked += 1;
    });
    assert_eq!(checked, 14);
    // B = 0 and m = ‖W‖: the model is the base model.
    let after = host(model.forward(ids(&r["input_ids"], &d), None));
    assert!(
        rel_err(&after, &before) < 1e-6,
        "{}",
        rel_err(&after, &before)
    );
}

/// Regression: a fresh DoRA magnitude is computed from `W` with tensor ops; on the autodiff
/// device it must still become a trainable leaf, and one step moves A, B and m (not W).
#[test]
fn fresh_dora_adapters_train_on_the_autodiff_device() {
    use burn::optim::{AdamWConfig, GradientsParams};
    let d = device().autodiff();
    let r = reference("tiny-llama/dora-reference.safetensors");
    let cfg = LoraConfig {
        init_lora_weights: InitLoraWeights::Random,
        ..dora_config(&["q_proj", "v_proj"])
    };
    let (model, _) = apply_lora(load_hf_model(&tiny(), &d).unwrap(), &cfg, &d).unwrap();
    let snapshot = |m: &lora_models::Llama| {
        let mut v = Vec::new();
        m.visit_linears(&mut |_, lin| {
            v.push(host(lin.weight.val()));
            if let Some(a) = lin.adapter.as_ref().and_then(|a| a.as_dora()) {
                v.push(host(a.lora.lora_a.val()));
                v.push(host(a.lora.lora_b.val()));
                v.push(host(a.magnitude.val()));
            }
        });
        v
    };
    let before = snapshot(&model);
    let loss = causal_lm_loss(
        model.forward(ids(&r["input_ids"], &d), None),
        ids(&r["labels"], &d),
    );
    let grads = GradientsParams::from_grads(loss.backward(), &model);
    let model = AdamWConfig::new().init().step(1e-3, model, grads);
    let after = snapshot(&model);
    let changed: Vec<bool> = before.iter().zip(&after).map(|(b, a)| b != a).collect();
    // Per DoRA layer: W unchanged, then A, B, m changed; other layers: W unchanged.
    let mut i = 0;
    model.visit_linears(&mut |path, lin| {
        assert!(!changed[i], "{path}: W moved");
        i += 1;
        if lin.adapter.is_some() {
            assert!(
                changed[i] && changed[i + 1] && changed[i + 2],
                "{path}: A, B, m move"
            );
            i += 3;
        }
    });
}

#[test]
fn dora_merged_forward_equals_unmerged_and_unmerge_restores_the_model() {
    let d = device();
    let r = reference("tiny-llama/dora-reference.safetensors");
    let (mut model, _, _) = peft::load_adapter(
        load_hf_model(&tiny(), &d).unwrap(),
        &tiny().join("peft-dora"),
        &d,
    )
    .unwrap();
    let x = ids(&r["input_ids"], &d);
    let weight_before = host(model.model.layers[0].self_attn.q_proj.weight.val());
    let unmerged = host(model.forward(x.clone(), None));
    assert_eq!(merge_all(&mut model).unwrap(), 14);
    let merged = host(model.forward(x.clone(), None));
    let err = rel_err(&merged, &unmerged);
    eprintln!("DoRA merged vs unmerged: max rel err {err:.2e}");
    assert!(err < 1e-5, "merged vs unmerged {err}");
    unmerge_all(&mut model).unwrap();
    let w = host(model.model.layers[0].self_attn.q_proj.weight.val());
    assert!(rel_err(&w, &weight_before) < 1e-5, "unmerge restores W");
    let restored = host(model.forward(x, None));
    assert!(rel_err(&restored, &unmerged) < 1e-5);
}

#[test]
fn dora_on_an_nf4_base_reads_the_dequantized_weight_and_merges() {
    let d = device();
    let r = reference("tiny-llama/dora-reference.safetensors");
    let x = ids(&r["input_ids"], &d);
    let mut model = load_hf_model(&tiny(), &d).unwrap();
    quantize_base(&mut model, &Nf4Config::default(), &["lm_head"]).unwrap();
    let nf4_logits = host(model.forward(x.clone(), None));
    let cfg = LoraConfig {
        init_lora_weights: InitLoraWeights::Default,
        ..dora_config(&["q_proj", "v_proj", "down_proj"])
    };
    let (model, _) = apply_lora(model, &cfg, &d).unwrap();
    // m = ‖dequant(W)‖, B = 0: exactly the NF4 base model.
    model.visit_linears(&mut |path, lin| {
        if let Some(a) = lin.adapter.as_ref().and_then(|a| a.as_dora()) {
            let w = lin.weight.val();
            let norm = host(w.square().sum_dim(0).sqrt());
            assert!(rel_err(&host(a.magnitude.val()), &norm) < 1e-6, "{path}");
        }
    });
    assert!(rel_err(&host(model.forward(x.clone(), None)), &nf4_logits) < 1e-6);

    // PEFT's DoRA adapter on the NF4 base: merging into the dequantized weight keeps the output.
    let mut model = load_hf_model(&tiny(), &d).unwrap();
    quantize_base(&mut model, &Nf4Config::default(), &["lm_head"]).unwrap();
    let (mut model, _, _) = peft::load_adapter(model, &tiny().join("peft-dora"), &d).unwrap();
    let unmerged = host(model.forward(x.clone(), None));
    assert!(
        rel_err(&unmerged, &nf4_logits) > 1e-3,
        "the adapter moves the logits"
    );
    merge_all(&mut model).unwrap();
    let merged = host(model.forward(x, None));
    assert!(
        rel_err(&merged, &unmerged) < 1e-5,
        "{}",
        rel_err(&merged, &unmerged)
    );
}

#[test]
fn dora_adapter_saved_here_has_peft_keys_and_reloads_unchanged() {
    let d = device();
    let r = reference("tiny-llama/dora-reference.safetensors");
    let cfg = LoraConfig {
        init_lora_weights: InitLoraWeights::Random,
        ..dora_config(&["q_proj", "v_proj"])
    };
    let (model, _) = apply_lora(load_hf_model(&tiny(), &d).unwrap(), &cfg, &d).unwrap();
    let x = ids(&r["input_ids"], &d);
    let before = host(model.forward(x.clone(), None));
    let dir = scratch("dora-save");
    assert_eq!(
        peft::lora::save_adapter(&model, &cfg, "tiny-llama", &dir).unwrap(),
        4
    );
    let t = lora_core::tensor_io::read_safetensors(&dir.join("adapter_model.safetensors")).unwrap();
    let key = "base_model.model.model.layers.1.self_attn.v_proj.lora_magnitude_vector";
    assert_eq!(t[key].shape, vec![32], "PEFT's 1-D [out] magnitude");
    assert_eq!(t.len(), 12, "A, B and m for 4 modules");
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("adapter_config.json")).unwrap()).unwrap();
    assert_eq!(json["use_dora"], true);
    assert_eq!(json["peft_type"], "LORA");
    let (loaded, loaded_cfg, _) =
        peft::load_adapter(load_hf_model(&tiny(), &d).unwrap(), &dir, &d).unwrap();
    assert!(loaded_cfg.as_lora().unwrap().use_dora);
    assert_eq!(
        host(loaded.forward(x, None)),
        before,
        "bit-identical after a round trip"
    );
    // Saving DoRA adapters under a plain LoRA config would lose the magnitudes: an error.
    let plain = LoraConfig {
        use_dora: false,
        ..cfg
    };
    let err = peft::lora::save_adapter(&model, &plain, "tiny-llama", &scratch("dora-bad"));
    assert!(err.unwrap_err().to_string().contains("DoRA"));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_magnitude_vector_in_a_plain_lora_file_is_an_error() {
    let d = device();
    let dir = scratch("dora-mislabelled");
    std::fs::create_dir_all(&dir).unwrap();
    let src = tiny().join("peft-dora");
    std::fs::copy(
        src.join("adapter_model.safetensors"),
        dir.join("adapter_model.safetensors"),
    )
    .unwrap();
    let cfg = std::fs::read_to_string(src.join("adapter_config.json")).unwrap();
    std::fs::write(
        dir.join("adapter_config.json"),
        cfg.replace("\"use_dora\": true", "\"use_dora\": false"),
    )
    .unwrap();
    let err = peft::load_adapter(load_hf_model(&tiny(), &d).unwrap(), &dir, &d)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("lora_magnitude_vector") && err.contains("use_dora"),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// PEFT's DoRA adapter on the real SmolLM2 (r = 2, alpha = 4 on q_proj / v_proj of all 30
/// layers, random B, perturbed magnitudes) gives PEFT's top-20 next-token logits. Skipped (with a
/// note) when the model has not been fetched.
#[test]
fn peft_dora_adapter_on_smollm2_gives_peft_logits() {
    let Some(path) = real_model() else { return };
    let d = device();
    let r: serde_json::Value = serde_json::from_slice(
        &std::fs::read(fixtures().join("smollm2-dora-reference.json")).unwrap(),
    )
    .unwrap();
    let p = lora_models::load(&path, &d).unwrap();
    let (model, cfg, report) =
        peft::load_adapter(p.model, &fixtures().join("smollm2-dora-adapter"), &d).unwrap();
    assert_eq!(report.modules.len(), 60);
    assert!(cfg.as_lora().unwrap().use_dora);
    let (mut worst_abs, mut worst_rel) = (0f32, 0f32);
    for prompt in r["prompts"].as_array().unwrap() {
        let (ids, top) = prompt_ids_and_logits(prompt, "top20");
        let logits = lora_models::generate::step(&model, &ids, &mut model.new_cache()).unwrap();
        let order = ranked(&logits);
        let want_top5: Vec<usize> = top[..5].iter().map(|t| t.0).collect();
        assert_eq!(order[..5], want_top5[..], "top-5 ids (ours vs PEFT)");
        let scale = top.iter().fold(0f32, |m, t| m.max(t.1.abs()));
        for &(id, want) in &top {
            worst_abs = worst_abs.max((logits[id] - want).abs());
        }
        worst_rel = worst_rel.max(worst_abs / scale);
    }
    eprintln!(
        "smollm2 + PEFT DoRA adapter: top-20 logits max |ours - PEFT| {worst_abs:.3e} (relative to the largest logit {worst_rel:.2e})"
    );
    assert!(worst_rel < 1e-4, "{worst_rel}");
}
