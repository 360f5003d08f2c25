//! Several adapters on one model ([`AdapterSet`]) and their combinations, against PEFT's
//! `add_weighted_adapter` on the tiny Llama (`fixtures/tiny-llama/combine-reference.*`, made by
//! `scripts/make_fixtures.py --parts combine`): the same logits for `linear`, `cat` and `svd`,
//! switching and disabling adapters, merging a combination, saving it as a PEFT adapter.

#[path = "../../lora-models/tests/common/mod.rs"]
mod common;

use common::*;
use lora_core::{
    AdapterSet, Combination, LoraModel, WeightedCombination, merge_all, peft, unmerge_all,
};
use lora_models::Llama;
use lora_models::pretrained::load_hf_model;

fn tiny() -> std::path::PathBuf {
    fixtures().join("tiny-llama")
}

/// The tiny model with PEFT's adapters "a" (r = 4, α = 8, every linear layer) and "b" (r = 4,
/// α = 16, attention projections), "a" active.
fn two_adapters(d: &burn::tensor::Device) -> (Llama, AdapterSet) {
    let mut set = AdapterSet::new();
    let model = load_hf_model(&tiny(), d).unwrap();
    let (model, _) = set
        .load(model, "a", &tiny().join("peft-adapter"), d)
        .unwrap();
    let (model, report) = set
        .load(model, "b", &tiny().join("peft-adapter-b"), d)
        .unwrap();
    assert_eq!(report.modules.len(), 8);
    (model, set)
}

#[test]
fn named_adapters_switch_and_disable_with_peft_logits() {
    let d = device();
    let r = reference("tiny-llama/combine-reference.safetensors");
    let base = reference("tiny-llama/peft-reference.safetensors");
    let x = ids(&r["input_ids"], &d);
    let (mut model, mut set) = two_adapters(&d);
    assert_eq!(
        set.active(),
        Some("a"),
        "the first adapter loaded is active, as in PEFT"
    );
    let logits = |m: &Llama| host(m.forward(x.clone(), None));
    assert!(rel_err(&logits(&model), &r["logits_a"].data) < 1e-5);
    set.set_active(&mut model, "b").unwrap();
    assert!(rel_err(&logits(&model), &r["logits_b"].data) < 1e-5);
    set.disable(&mut model).unwrap();
    assert_eq!(set.active(), None);
    assert!(
        rel_err(&logits(&model), &base["logits_base"].data) < 1e-5,
        "the base model"
    );
    set.set_active(&mut model, "a").unwrap();
    assert!(rel_err(&logits(&model), &r["logits_a"].data) < 1e-5);
    let err = set.set_active(&mut model, "c").unwrap_err().to_string();
    assert!(err.contains("\"c\"") && err.contains("\"a\""), "{err}");
    // A merged adapter cannot be switched away.
    merge_all(&mut model).unwrap();
    assert!(set.set_active(&mut model, "b").is_err());
    unmerge_all(&mut model).unwrap();
    set.set_active(&mut model, "b").unwrap();
}

#[test]
fn combinations_give_the_logits_of_peft_add_weighted_adapter() {
    let d = device();
    let r = reference("tiny-llama/combine-reference.safetensors");
    let x = ids(&r["input_ids"], &d);
    let (mut model, mut set) = two_adapters(&d);
    for (name, combination, weights, rank) in [
        ("linear", Combination::Linear, [0.7, 0.3], 4),
        ("linear_neg", Combination::Linear, [1.0, -0.5], 4),
        ("cat", Combination::Cat, [0.7, 0.3], 8),
        ("svd", Combination::Svd, [0.7, 0.3], 4),
    ] {
        let request = WeightedCombination {
            combination,
            weights: weights.to_vec(),
            svd_rank: None,
        };
        set.add_weighted(&mut model, &["a", "b"], &request, name)
            .unwrap();
        assert_eq!(set.active(), Some("a"), "adding does not switch (PEFT)");
        let cfg = set.config(name).unwrap().as_lora().unwrap().clone();
        assert_eq!((cfg.r, cfg.lora_alpha), (rank, rank as f64), "{name}");
        set.set_active(&mut model, name).unwrap();
        let got = host(model.forward(x.clone(), None));
        let err = rel_err(&got, &r[&format!("logits_{name}")].data);
        eprintln!("{name}: logits vs PEFT max rel err {err:.2e}");
        assert!(err < 1e-4, "{name}: {err}");
        set.set_active(&mut model, "a").unwrap();
    }
    assert!(
        rel_err(&r["logits_svd"].data, &r["logits_cat"].data) > 1e-2,
        "the svd truncation is visible (so the svd check above is not a cat check)"
    );
    let again = WeightedCombination {
        combination: Combination::Cat,
        weights: vec![1.0, 1.0],
        svd_rank: None,
    };
    assert!(
        set.add_weighted(&mut model, &["a", "b"], &again, "cat")
            .is_err(),
        "name in use"
    );
}

#[test]
fn merged_combination_equals_the_combined_forward_and_saves_as_a_peft_adapter() {
    let d = device();
    let r = reference("tiny-llama/combine-reference.safetensors");
    let x = ids(&r["input_ids"], &d);
    let (mut model, mut set) = two_adapters(&d);
    let request = WeightedCombination {
        combination: Combination::Cat,
        weights: vec![0.7, 0.3],
        svd_rank: None,
    };
    set.add_weighted(&mut model, &["a", "b"], &request, "cat")
        .unwrap();
    set.set_active(&mut model, "cat").unwrap();
    let combined = host(model.forward(x.clone(), None));
    let dir = std::env::temp_dir().join(format!("burn-lora-combined-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(set.save(&mut model, "cat", "tiny-llama", &dir).unwrap(), 14);
    assert_eq!(merge_all(&mut model).unwrap(), 14);
    let merged = host(model.forward(x.clone(), None));
    assert!(
        rel_err(&merged, &combined) < 1e-5,
        "{}",
        rel_err(&merged, &combined)
    );
    let (reloaded, cfg, _) =
        peft::load_adapter(load_hf_model(&tiny(), &d).unwrap(), &dir, &d).unwrap();
    assert_eq!(cfg.as_lora().unwrap().r, 8);
    assert!(rel_err(&host(reloaded.forward(x, None)), &combined) < 1e-6);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn dora_and_adalora_adapters_do_not_combine() {
    let d = device();
    let mut set = AdapterSet::new();
    let model = load_hf_model(&tiny(), &d).unwrap();
    let (model, _) = set
        .load(model, "a", &tiny().join("peft-adapter"), &d)
        .unwrap();
    let (model, _) = set
        .load(model, "dora", &tiny().join("peft-dora"), &d)
        .unwrap();
    let (mut model, _) = set
        .load(model, "ada", &tiny().join("peft-adalora"), &d)
        .unwrap();
    let request = WeightedCombination {
        combination: Combination::Cat,
        weights: vec![0.5, 0.5],
        svd_rank: None,
    };
    for other in ["dora", "ada"] {
        let err = set
            .add_weighted(&mut model, &["a", other], &request, "mix")
            .unwrap_err();
        assert!(
            err.to_string().contains("only LoRA adapters combine"),
            "{err}"
        );
    }
    let mut n = 0;
    model.visit_adapters(&mut |_, a| n += a.as_lora().is_some() as usize);
    assert_eq!(
        n, 14,
        "a failed combination leaves the active adapter in place"
    );
}
