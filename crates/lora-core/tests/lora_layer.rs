//! The LoRA layer's invariants, checked against numbers computed by hand.

use burn::module::Module;
use burn::tensor::{Device, Tensor, TensorData};
use lora_core::config::{InitLoraWeights, LoraConfig, TargetModules};
use lora_core::{BackendKind, LoraAdapter, LoraLinear, select_device};

fn device() -> Device {
    select_device(BackendKind::Flex).expect("flex is the default backend")
}

fn t2(rows: usize, cols: usize, v: &[f32], d: &Device) -> Tensor<2> {
    Tensor::from_data(TensorData::new(v.to_vec(), [rows, cols]), d)
}

fn host(t: Tensor<2>) -> Vec<f32> {
    t.into_data().try_to_vec::<f32>().unwrap()
}

fn cfg(r: usize, alpha: f64) -> LoraConfig {
    LoraConfig::new(r, alpha, TargetModules::AllLinear)
}

/// `x·W + (α/r)·x·A·B` in f64, burn layout (`W` `[in, out]`, `A` `[in, r]`, `B` `[r, out]`).
// Every operand and dimension of the formula, by name: a struct would only rename them.
#[allow(clippy::too_many_arguments)]
fn by_hand(
    x: &[f32],
    w: &[f32],
    a: &[f32],
    b: &[f32],
    n: usize,
    d_in: usize,
    d_out: usize,
    r: usize,
    s: f64,
) -> Vec<f32> {
    let mut y = vec![0.0f64; n * d_out];
    for i in 0..n {
        for o in 0..d_out {
            let mut acc = 0.0;
            for k in 0..d_in {
                acc += x[i * d_in + k] as f64 * w[k * d_out + o] as f64;
            }
            let mut low = 0.0;
            for j in 0..r {
                let mut xa = 0.0;
                for k in 0..d_in {
                    xa += x[i * d_in + k] as f64 * a[k * r + j] as f64;
                }
                low += xa * b[j * d_out + o] as f64;
            }
            y[i * d_out + o] = acc + s * low;
        }
    }
    y.into_iter().map(|v| v as f32).collect()
}

#[test]
fn output_and_merged_weight_equal_the_hand_computed_formula() {
    let d = device();
    let (d_in, d_out, r, n) = (4, 6, 2, 3);
    // Small integers: every product and sum is exact in f32.
    let w: Vec<f32> = (0..d_in * d_out)
        .map(|i| ((i * 7) % 5) as f32 - 2.0)
        .collect();
    let a: Vec<f32> = (0..d_in * r).map(|i| ((i * 3) % 4) as f32 - 1.0).collect();
    let b: Vec<f32> = (0..r * d_out).map(|i| ((i * 5) % 3) as f32 - 1.0).collect();
    let x: Vec<f32> = (0..n * d_in).map(|i| ((i * 11) % 7) as f32 - 3.0).collect();

    let mut layer = LoraLinear::new(t2(d_in, d_out, &w, &d), None);
    let adapter =
        LoraAdapter::from_tensors(t2(d_in, r, &a, &d), t2(r, d_out, &b, &d), 4.0, &cfg(r, 4.0));
    assert_eq!(adapter.scaling, 2.0);
    layer.attach(adapter, "layer").unwrap();

    let expected = by_hand(&x, &w, &a, &b, n, d_in, d_out, r, 2.0);
    assert_eq!(host(layer.forward(t2(n, d_in, &x, &d))), expected);

    // Merged weight: W + 2·A·B (computed with x = I).
    let eye: Vec<f32> = (0..d_in * d_in)
        .map(|i| if i / d_in == i % d_in { 1.0 } else { 0.0 })
        .collect();
    let merged_expected = by_hand(&eye, &w, &a, &b, d_in, d_in, d_out, r, 2.0);
    layer.merge("layer").unwrap();
    assert_eq!(host(layer.weight.val()), merged_expected);
    // And the merged layer gives the same output, without adding the update twice.
    assert_eq!(host(layer.forward(t2(n, d_in, &x, &d))), expected);
}

#[test]
fn identity_update_on_zero_weight_gives_the_input_back_once() {
    let d = device();
    let mut layer = LoraLinear::new(Tensor::zeros([2, 2], &d), None);
    let eye = [1.0, 0.0, 0.0, 1.0];
    // r = 2, alpha = 2 → scaling 1; A·B = I.
    layer
        .attach(
            LoraAdapter::from_tensors(t2(2, 2, &eye, &d), t2(2, 2, &eye, &d), 2.0, &cfg(2, 2.0)),
            "l",
        )
        .unwrap();
    let one_hot = t2(1, 2, &[0.0, 1.0], &d);
    assert_eq!(host(layer.forward(one_hot.clone())), vec![0.0, 1.0]);
    layer.merge("l").unwrap();
    assert_eq!(host(layer.weight.val()), eye.to_vec());
    assert_eq!(
        host(layer.forward(one_hot)),
        vec![0.0, 1.0],
        "a merged layer must not add B·A again"
    );
}

#[test]
fn merge_then_unmerge_restores_the_weight() {
    let d = device();
    let mut c = cfg(8, 16.0);
    c.init_lora_weights = InitLoraWeights::Random;
    let w = Tensor::<2>::random([64, 48], burn::tensor::Distribution::Normal(0.0, 1.0), &d);
    let mut layer = LoraLinear::new(w.clone(), None);
    layer
        .attach(LoraAdapter::init(64, 48, 8, 16.0, &c, &d).unwrap(), "l")
        .unwrap();
    let x = Tensor::<2>::random([5, 64], burn::tensor::Distribution::Normal(0.0, 1.0), &d);
    let unmerged = host(layer.forward(x.clone()));
    layer.merge("l").unwrap();
    let merged = host(layer.forward(x));
    let max_abs = unmerged.iter().fold(0f32, |m, v| m.max(v.abs()));
    let err = unmerged
        .iter()
        .zip(&merged)
        .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
    assert!(
        err <= 1e-5 * max_abs,
        "merged vs unmerged: {err} (max {max_abs})"
    );
    assert!(layer.merge("l").is_err(), "merging twice is an error");
    layer.unmerge("l").unwrap();
    let w0 = host(w);
    let w1 = host(layer.weight.val());
    let scale = w0.iter().fold(0f32, |m, v| m.max(v.abs()));
    let err = w0
        .iter()
        .zip(&w1)
        .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
    assert!(
        err <= 1e-6 * scale,
        "unmerge restores W: {err} (max {scale})"
    );
}

#[test]
fn b_is_zero_at_init_so_the_output_is_unchanged() {
    let d = device();
    let w = Tensor::<2>::random([16, 8], burn::tensor::Distribution::Normal(0.0, 1.0), &d);
    let x = Tensor::<2>::random([3, 16], burn::tensor::Distribution::Normal(0.0, 1.0), &d);
    let mut layer = LoraLinear::new(w, None);
    let before = host(layer.forward(x.clone()));
    for init in [InitLoraWeights::Default, InitLoraWeights::Gaussian] {
        let mut c = cfg(4, 8.0);
        c.init_lora_weights = init;
        let adapter = LoraAdapter::init(16, 8, 4, 8.0, &c, &d).unwrap();
        assert!(
            host(adapter.lora_a.val()).iter().any(|v| *v != 0.0),
            "A starts random"
        );
        assert!(
            host(adapter.lora_b.val()).iter().all(|v| *v == 0.0),
            "B starts at zero"
        );
        layer.attach(adapter, "l").unwrap();
        assert_eq!(host(layer.forward(x.clone())), before);
    }
}

#[test]
fn kaiming_init_of_a_stays_within_one_over_sqrt_d_in() {
    let d = device();
    let a = LoraAdapter::init(100, 10, 8, 8.0, &cfg(8, 8.0), &d).unwrap();
    let bound = 1.0 / 10.0;
    assert!(host(a.lora_a.val()).iter().all(|v| v.abs() <= bound));
}

#[test]
fn dropout_acts_only_on_the_lora_path_and_only_in_training() {
    let d = device().autodiff();
    let mut c = cfg(4, 4.0);
    c.init_lora_weights = InitLoraWeights::Random;
    c.lora_dropout = 0.9;
    let w = Tensor::<2>::random([32, 8], burn::tensor::Distribution::Normal(0.0, 1.0), &d);
    let x = Tensor::<2>::random([4, 32], burn::tensor::Distribution::Normal(0.0, 1.0), &d);

    // The frozen base alone has no training-mode behaviour.
    let base = LoraLinear::new(w.clone(), None);
    assert_eq!(host(base.forward(x.clone())), host(base.forward(x.clone())));

    let mut layer = LoraLinear::new(w, None);
    layer
        .attach(LoraAdapter::init(32, 8, 4, 4.0, &c, &d).unwrap(), "l")
        .unwrap();
    let t1 = host(layer.forward(x.clone()));
    let t2_ = host(layer.forward(x.clone()));
    assert_ne!(
        t1, t2_,
        "dropout 0.9 on the LoRA path changes training forwards"
    );

    // In evaluation (valid) dropout is off: base + the full low-rank path, deterministic.
    let eval = layer.valid();
    let e1 = host(eval.forward(x.clone().inner()));
    let e2 = host(eval.forward(x.clone().inner()));
    assert_eq!(e1, e2);
    let base_out = host(base.valid().forward(x.clone().inner()));
    let adapter = eval.adapter.as_ref().and_then(|a| a.as_lora()).unwrap();
    let low = host(
        adapter
            .lora_a
            .val()
            .matmul(adapter.lora_b.val())
            .mul_scalar(adapter.scaling),
    );
    let xv = host(x.inner());
    let expected: Vec<f32> = (0..4)
        .flat_map(|i| {
            let (xv, low, base_out) = (&xv, &low, &base_out);
            (0..8).map(move |o| {
                base_out[i * 8 + o]
                    + (0..32)
                        .map(|k| xv[i * 32 + k] * low[k * 8 + o])
                        .sum::<f32>()
            })
        })
        .collect();
    let err = e1
        .iter()
        .zip(&expected)
        .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
    assert!(err < 1e-4, "eval output = base + full LoRA path ({err})");
}

#[test]
fn merge_ignores_dropout_whatever_the_mode() {
    let d = device().autodiff();
    let mut c = cfg(4, 4.0);
    c.init_lora_weights = InitLoraWeights::Random;
    c.lora_dropout = 0.5;
    let w = Tensor::<2>::zeros([6, 5], &d);
    let mut layer = LoraLinear::new(w, None);
    layer
        .attach(LoraAdapter::init(6, 5, 4, 4.0, &c, &d).unwrap(), "l")
        .unwrap();
    let adapter = layer.adapter.as_ref().and_then(|a| a.as_lora()).unwrap();
    let expected = host(
        adapter
            .lora_a
            .val()
            .matmul(adapter.lora_b.val())
            .mul_scalar(adapter.scaling),
    );
    layer.merge("l").unwrap(); // still in training mode
    assert_eq!(host(layer.weight.val()), expected);
}

#[test]
fn merging_without_an_adapter_is_an_error_naming_the_layer() {
    let mut layer = LoraLinear::new(Tensor::zeros([2, 2], &device()), None);
    let err = layer.merge("model.layers.0.mlp.up_proj").unwrap_err();
    assert!(
        err.to_string().contains("model.layers.0.mlp.up_proj"),
        "{err}"
    );
}
