//! Parity with Hugging Face PEFT on the tiny Llama fixture: adapters PEFT wrote load here with
//! the same logits and the same gradients, and adapters we write load back unchanged.

#[path = "../../lora-models/tests/common/mod.rs"]
mod common;

use burn::module::Module;
use common::*;
use lora_core::config::{InitLoraWeights, LoraConfig, TargetModules};
use lora_core::{LoraModel, apply_lora, merge_all, merge_and_unload, peft, unmerge_all};
use lora_models::pretrained::load_hf_model;
use lora_train::loss::causal_lm_loss;

fn tiny() -> std::path::PathBuf {
    fixtures().join("tiny-llama")
}

#[test]
fn peft_adapter_loads_with_logits_equal_to_peft() {
    let d = device();
    let r = reference("tiny-llama/peft-reference.safetensors");
    for (dir, key, n_modules, scaling) in [
        ("peft-adapter", "logits_adapter", 14, 2.0),
        (
            "peft-adapter-rslora",
            "logits_adapter_rslora",
            2,
            16.0 / 8f64.sqrt(),
        ),
    ] {
        let model = load_hf_model(&tiny(), &d).unwrap();
        let (model, cfg, report) = peft::lora::load_adapter(model, &tiny().join(dir), &d).unwrap();
        assert_eq!(report.modules.len(), n_modules, "{dir}");
        assert!(
            report
                .modules
                .iter()
                .all(|m| (m.scaling - scaling).abs() < 1e-12),
            "{dir}: scaling from the file's config"
        );
        assert_eq!(cfg.use_rslora, dir.contains("rslora"));
        let logits = host(model.forward(ids(&r["input_ids"], &d), None));
        let err = rel_err(&logits, &r[key].data);
        assert!(err < 1e-4, "{dir}: logits vs PEFT {err}");
        // The adapter really moves the logits.
        assert!(
            rel_err(&logits, &r["logits_base"].data) > 1e-3,
            "{dir}: adapter had no effect"
        );
    }
}

#[test]
fn lora_gradients_equal_peft_gradients() {
    let d = device().autodiff();
    let r = reference("tiny-llama/peft-reference.safetensors");
    let model = load_hf_model(&tiny(), &d).unwrap();
    let (model, _, _) = peft::lora::load_adapter(model, &tiny().join("peft-adapter"), &d).unwrap();
    let logits = model.forward(ids(&r["input_ids"], &d), None);
    let loss = causal_lm_loss(logits, ids(&r["labels"], &d));
    let loss_value = host(loss.clone())[0];
    assert!(
        (loss_value - r["loss"].data[0]).abs() < 1e-4 * r["loss"].data[0].abs(),
        "loss {loss_value} vs {}",
        r["loss"].data[0]
    );
    let grads = loss.backward();
    let mut checked = 0;
    model.visit_linears(&mut |path, lin| {
        let Some(a) = lin.adapter.as_ref().and_then(|a| a.as_lora()) else {
            return;
        };
        // burn [in, r] / [r, out] → PyTorch [r, in] / [out, r].
        let ga = host(
            a.lora_a
                .val()
                .grad(&grads)
                .expect("lora_A has a gradient")
                .transpose(),
        );
        let gb = host(
            a.lora_b
                .val()
                .grad(&grads)
                .expect("lora_B has a gradient")
                .transpose(),
        );
        let ea = &r[&format!("grad.{path}.lora_A")].data;
        let eb = &r[&format!("grad.{path}.lora_B")].data;
        assert!(
            rel_err(&ga, ea) < 1e-4,
            "{path}.lora_A grad: {}",
            rel_err(&ga, ea)
        );
        assert!(
            rel_err(&gb, eb) < 1e-4,
            "{path}.lora_B grad: {}",
            rel_err(&gb, eb)
        );
        checked += 1;
    });
    assert_eq!(checked, 14);
}

fn scratch(name: &str) -> std::path::PathBuf {
    let p = std::env::temp_dir().join(format!("burn-lora-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&p);
    p
}

#[test]
fn rslora_scaling_survives_save_and_load() {
    let d = device();
    let model = load_hf_model(&tiny(), &d).unwrap();
    let cfg = LoraConfig {
        use_rslora: true,
        init_lora_weights: InitLoraWeights::Random,
        ..LoraConfig::new(16, 16.0, TargetModules::names(&["q_proj"]))
    };
    let (model, report) = apply_lora(model, &cfg, &d).unwrap();
    assert!(report.modules.iter().all(|m| m.scaling == 4.0));
    let dir = scratch("rslora");
    peft::lora::save_adapter(&model, &cfg, "tiny-llama", &dir).unwrap();
    let fresh = load_hf_model(&tiny(), &d).unwrap();
    let (_, loaded_cfg, report) = peft::lora::load_adapter(fresh, &dir, &d).unwrap();
    assert!(loaded_cfg.use_rslora);
    assert!(
        report.modules.iter().all(|m| m.scaling == 4.0),
        "scaling after load: {:?}",
        report.modules
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn adapter_hyperparameters_come_from_the_file_not_the_callers_defaults() {
    let d = device();
    let r = reference("tiny-llama/peft-reference.safetensors");
    let model = load_hf_model(&tiny(), &d).unwrap();
    let cfg = LoraConfig {
        init_lora_weights: InitLoraWeights::Random,
        ..LoraConfig::new(8, 16.0, TargetModules::names(&["q_proj", "v_proj"]))
    };
    let (model, _) = apply_lora(model, &cfg, &d).unwrap();
    let before = host(model.forward(ids(&r["input_ids"], &d), None));
    let dir = scratch("r8");
    peft::lora::save_adapter(&model, &cfg, "tiny-llama", &dir).unwrap();

    // A program whose own default says r = 16 still gets r = 8 and scaling 2 from the file.
    let _program_default = LoraConfig::new(16, 16.0, TargetModules::AllLinear);
    let (loaded, loaded_cfg, report) =
        peft::lora::load_adapter(load_hf_model(&tiny(), &d).unwrap(), &dir, &d).unwrap();
    assert_eq!(loaded_cfg.r, 8);
    assert!(report.modules.iter().all(|m| m.r == 8 && m.scaling == 2.0));
    let after = host(loaded.forward(ids(&r["input_ids"], &d), None));
    assert_eq!(before, after, "outputs equal before save and after load");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn saved_adapter_has_peft_keys_layout_and_metadata() {
    let d = device();
    let cfg = LoraConfig::new(4, 8.0, TargetModules::names(&["q_proj", "v_proj"]));
    let (model, _) = apply_lora(load_hf_model(&tiny(), &d).unwrap(), &cfg, &d).unwrap();
    let dir = scratch("layout");
    assert_eq!(
        peft::lora::save_adapter(&model, &cfg, "tiny-llama", &dir).unwrap(),
        4
    );
    let bytes = std::fs::read(dir.join("adapter_model.safetensors")).unwrap();
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    assert_eq!(
        meta.metadata()
            .as_ref()
            .and_then(|m| m.get("format"))
            .map(String::as_str),
        Some("pt")
    );
    let t = lora_core::tensor_io::read_safetensors(&dir.join("adapter_model.safetensors")).unwrap();
    assert_eq!(
        t["base_model.model.model.layers.1.self_attn.v_proj.lora_A.weight"].shape,
        vec![4, 64]
    );
    assert_eq!(
        t["base_model.model.model.layers.1.self_attn.v_proj.lora_B.weight"].shape,
        vec![32, 4]
    );
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("adapter_config.json")).unwrap()).unwrap();
    for (k, v) in [
        ("peft_type", "LORA"),
        ("task_type", "CAUSAL_LM"),
        ("bias", "none"),
    ] {
        assert_eq!(json[k], v, "{k}");
    }
    assert_eq!(json["r"], 4);
    assert_eq!(json["fan_in_fan_out"], false);
    assert_eq!(json["use_dora"], false);
    assert_eq!(json["inference_mode"], true);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn loading_an_adapter_for_another_model_is_an_error_naming_the_key() {
    let d = device();
    // An adapter for another model: a copy of PEFT's adapter with one key moved to a layer
    // this model does not have.
    let dir = scratch("alien");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::copy(
        tiny().join("peft-adapter/adapter_config.json"),
        dir.join("adapter_config.json"),
    )
    .unwrap();
    let mut t = lora_core::tensor_io::read_safetensors(
        &tiny().join("peft-adapter/adapter_model.safetensors"),
    )
    .unwrap();
    let k = "base_model.model.model.layers.1.mlp.up_proj.lora_A.weight";
    let v = t.remove(k).unwrap();
    t.insert(
        "base_model.model.model.layers.7.mlp.up_proj.lora_A.weight".into(),
        v,
    );
    lora_core::tensor_io::write_safetensors(
        &dir.join("adapter_model.safetensors"),
        &t,
        Default::default(),
        Default::default(),
    )
    .unwrap();
    let err = peft::lora::load_adapter(load_hf_model(&tiny(), &d).unwrap(), &dir, &d)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("layers.7.mlp.up_proj") && err.contains("does not exist"),
        "{err}"
    );

    // A missing tensor is named too.
    t.remove("base_model.model.model.layers.7.mlp.up_proj.lora_A.weight");
    lora_core::tensor_io::write_safetensors(
        &dir.join("adapter_model.safetensors"),
        &t,
        Default::default(),
        Default::default(),
    )
    .unwrap();
    let err = peft::lora::load_adapter(load_hf_model(&tiny(), &d).unwrap(), &dir, &d)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("layers.1.mlp.up_proj.lora_A") && err.contains("missing"),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn target_selection_adapts_exactly_the_named_modules() {
    let d = device();
    let select =
        |cfg: LoraConfig| apply_lora(load_hf_model(&tiny(), &d).unwrap(), &cfg, &d).map(|(_, r)| r);
    let report = select(LoraConfig::new(
        8,
        16.0,
        TargetModules::names(&["q_proj", "v_proj"]),
    ))
    .unwrap();
    assert_eq!(report.modules.len(), 4);
    let qv = 2 * (8 * (64 + 64) + 8 * (64 + 32));
    assert_eq!(report.trainable_params, qv, "Σ r·(in + out)");
    let only1 = LoraConfig {
        layers_to_transform: Some(vec![1]),
        ..LoraConfig::new(8, 16.0, TargetModules::names(&["q_proj", "v_proj"]))
    };
    let report = select(only1).unwrap();
    assert!(
        report
            .modules
            .iter()
            .all(|m| m.path.starts_with("model.layers.1.")),
        "{:?}",
        report.modules
    );
    assert_eq!(report.modules.len(), 2);
    let err = select(LoraConfig::new(
        8,
        16.0,
        TargetModules::names(&["nonexistent"]),
    ))
    .unwrap_err();
    assert!(err.to_string().contains("nonexistent"));
    let all = select(LoraConfig::new(8, 16.0, TargetModules::AllLinear)).unwrap();
    assert_eq!(all.modules.len(), 14, "all-linear leaves out lm_head");
}

#[test]
fn b_is_zero_so_attaching_an_adapter_leaves_the_logits_unchanged() {
    let d = device();
    let r = reference("tiny-llama/reference.safetensors");
    let model = load_hf_model(&tiny(), &d).unwrap();
    let before = host(model.forward(ids(&r["input_ids"], &d), None));
    let (model, _) = apply_lora(
        model,
        &LoraConfig::new(8, 16.0, TargetModules::AllLinear),
        &d,
    )
    .unwrap();
    let after = host(model.forward(ids(&r["input_ids"], &d), None));
    assert_eq!(before, after, "bitwise equal on the CPU");
}

#[test]
fn merged_forward_equals_unmerged_and_unmerge_restores_the_model() {
    let d = device();
    let r = reference("tiny-llama/reference.safetensors");
    let base = load_hf_model(&tiny(), &d).unwrap();
    let base_logits = host(base.forward(ids(&r["input_ids"], &d), None));
    let (mut model, _, _) =
        peft::lora::load_adapter(base, &tiny().join("peft-adapter"), &d).unwrap();
    let unmerged = host(model.forward(ids(&r["input_ids"], &d), None));
    assert_eq!(merge_all(&mut model).unwrap(), 14);
    let merged = host(model.forward(ids(&r["input_ids"], &d), None));
    assert!(
        rel_err(&merged, &unmerged) < 1e-5,
        "merged vs unmerged {}",
        rel_err(&merged, &unmerged)
    );
    unmerge_all(&mut model).unwrap();
    let restored = host(model.forward(ids(&r["input_ids"], &d), None));
    assert!(rel_err(&restored, &unmerged) < 1e-5);
    merge_and_unload(&mut model).unwrap();
    let mut adapters = 0;
    model.visit_linears(&mut |_, l| adapters += l.adapter.is_some() as usize);
    assert_eq!(adapters, 0, "merge_and_unload leaves no LoRA");
    let plain = host(model.forward(ids(&r["input_ids"], &d), None));
    assert!(rel_err(&plain, &unmerged) < 1e-5);
    assert!(rel_err(&plain, &base_logits) > 1e-3);
}

#[test]
fn merging_an_adapter_on_a_tied_head_leaves_the_input_embedding_alone() {
    let d = device();
    let model = load_hf_model(&fixtures().join("tiny-llama-tied"), &d).unwrap();
    let embed_before = host(model.model.embed_tokens.weight.val());
    let cfg = LoraConfig {
        init_lora_weights: InitLoraWeights::Random,
        ..LoraConfig::new(4, 8.0, TargetModules::names(&["lm_head"]))
    };
    let (mut model, report) = apply_lora(model, &cfg, &d).unwrap();
    assert_eq!(report.modules.len(), 1);
    merge_all(&mut model).unwrap();
    assert_eq!(host(model.model.embed_tokens.weight.val()), embed_before);
    assert_ne!(
        host(model.lm_head.weight.val().transpose()),
        embed_before,
        "the head did change"
    );
}

#[test]
fn merged_model_saved_as_hf_directory_reloads_with_the_same_logits() {
    let d = device();
    let r = reference("tiny-llama/reference.safetensors");
    let (mut model, _, _) = peft::lora::load_adapter(
        load_hf_model(&tiny(), &d).unwrap(),
        &tiny().join("peft-adapter"),
        &d,
    )
    .unwrap();
    let expected = host(model.forward(ids(&r["input_ids"], &d), None));
    merge_and_unload(&mut model).unwrap();
    let dir = scratch("merged");
    lora_models::checkpoint::hf::save_hf_dir(&model, &dir, Default::default()).unwrap();
    let reloaded = load_hf_model(&dir, &d).unwrap();
    let got = host(reloaded.forward(ids(&r["input_ids"], &d), None));
    assert!(rel_err(&got, &expected) < 1e-5);
    let _ = std::fs::remove_dir_all(&dir);
    let _ = model.num_params();
}

/// An adapter PEFT made on the real SmolLM2 (r = 2, alpha = 4 on q_proj / v_proj of all 30
/// layers, random B) loads onto our GGUF model with PEFT's next-token logits. Skipped (with a
/// note) when the model has not been fetched.
#[test]
fn peft_adapter_on_smollm2_loads_with_peft_logits() {
    let Some(path) = real_model() else { return };
    let d = device();
    let r: serde_json::Value = serde_json::from_slice(
        &std::fs::read(fixtures().join("smollm2-peft-reference.json")).unwrap(),
    )
    .unwrap();
    let p = lora_models::load(&path, &d).unwrap();
    let (model, cfg, report) =
        peft::lora::load_adapter(p.model, &fixtures().join("smollm2-peft-adapter"), &d).unwrap();
    assert_eq!(report.modules.len(), 60, "q_proj and v_proj of 30 layers");
    assert!(
        report.modules.iter().all(|m| m.r == 2 && m.scaling == 2.0),
        "r = 2, scaling 4 / 2: {:?}",
        &report.modules[..2]
    );
    assert_eq!(cfg.r, 2);

    let mut max_diff = 0f32;
    let mut max_moved = 0f32;
    for prompt in r["prompts"].as_array().unwrap() {
        let kind = prompt["kind"].as_str().unwrap();
        let (ids, want) = prompt_ids_and_logits(prompt, "top5");
        let logits = lora_models::generate::step(&model, &ids, &mut model.new_cache()).unwrap();
        let order = ranked(&logits);
        let want_ids: Vec<usize> = want.iter().map(|w| w.0).collect();
        assert_eq!(
            order[..5],
            want_ids[..],
            "{kind} prompt: top-5 ids (ours vs PEFT)"
        );
        for &(id, l) in &want {
            let diff = (logits[id] - l).abs();
            max_diff = max_diff.max(diff);
            assert!(
                diff < 1e-3,
                "{kind} prompt: logit of {id} is {}, PEFT {l}",
                logits[id]
            );
        }
        // The adapter really moves the logits: compare with the base model's recorded top 5.
        for e in prompt["base_top5"].as_array().unwrap() {
            let id = e["id"].as_u64().unwrap() as usize;
            max_moved = max_moved.max((logits[id] - e["logit"].as_f64().unwrap() as f32).abs());
        }
    }
    eprintln!(
        "smollm2 + PEFT adapter: max |ours - PEFT| logit {max_diff:.3e}, adapter moved a base top-5 logit by {max_moved:.3}"
    );
    assert!(
        max_moved > 0.05,
        "the adapter barely changes the logits ({max_moved})"
    );
}
