//! The fused ops (`lora_core::fused`) equal the same functions composed of burn tensor ops, in
//! value and in every input's gradient, on flex (where they run as multi-threaded host
//! kernels). Shapes are larger than one rayon task (2¹⁴ elements), so the row split is
//! exercised, and odd (not a multiple of the kernels' eight lanes).
//!
//! Attention (`fused::attention`) runs on flex as blocked host kernels that skip the keys a block
//! of query rows cannot see: it is checked on the model's masks — causal (also after a cache
//! offset, so `S > T`), a sliding window, per-row left padding, and none — with row counts that
//! are not multiples of the kernels' 64-row blocks.

use burn::tensor::activation::{sigmoid, softmax};
use burn::tensor::{Bool, Distribution, Tensor, TensorData};
use lora_core::fused;
use lora_core::{BackendKind, select_device};

fn device() -> burn::tensor::Device {
    select_device(BackendKind::Flex)
        .expect("flex is the default backend")
        .autodiff()
}

/// Largest `|a − b|` over the largest `|b|`.
fn rel_diff<const D: usize>(a: Tensor<D>, b: Tensor<D>) -> f32 {
    let scale = b.clone().abs().max().into_scalar::<f32>().max(1e-12);
    (a - b).abs().max().into_scalar::<f32>() / scale
}

/// A fixed random weighting of the output, so that every output element's gradient differs.
fn weights<const D: usize>(dims: [usize; D]) -> Tensor<D> {
    Tensor::random(dims, Distribution::Normal(0.0, 1.0), &device())
}

#[test]
fn fused_softmax_equals_the_composed_softmax_in_value_and_gradient() {
    let dims = [3, 37, 301];
    let x = Tensor::<3>::random(dims, Distribution::Normal(0.0, 4.0), &device());
    // Attention masks: −∞ entries must get probability 0 and gradient 0.
    let mask =
        Tensor::<3>::random(dims, Distribution::Uniform(0.0, 1.0), &device()).lower_elem(0.2);
    let x = x.mask_fill(mask, f32::NEG_INFINITY);
    let w = weights(dims);
    let (xa, xb) = (x.clone().require_grad(), x.require_grad());
    let (pa, pb) = (fused::softmax(xa.clone()), softmax(xb.clone(), 2));
    assert!(rel_diff(pa.clone(), pb.clone()) < 1e-6);
    let ga = xa.grad(&(pa * w.clone()).sum().backward()).unwrap();
    let gb = xb.grad(&(pb * w).sum().backward()).unwrap();
    assert!(!ga.clone().is_nan().any().into_scalar::<bool>());
    let d = rel_diff(ga, gb);
    assert!(d < 1e-5, "softmax gradients differ by {d} (relative)");
}

#[test]
fn fused_swiglu_equals_silu_times_up_in_value_and_both_gradients() {
    let dims = [2, 29, 611];
    // Gates up to ±40: σ saturates on both sides without overflow.
    let gate = Tensor::<3>::random(dims, Distribution::Normal(0.0, 10.0), &device());
    let up = Tensor::<3>::random(dims, Distribution::Normal(0.0, 1.0), &device());
    let w = weights(dims);
    let (ga, gb) = (gate.clone().require_grad(), gate.require_grad());
    let (ua, ub) = (up.clone().require_grad(), up.require_grad());
    let ya = fused::swiglu(ga.clone(), ua.clone());
    let yb = gb.clone() * sigmoid(gb.clone()) * ub.clone();
    assert!(rel_diff(ya.clone(), yb.clone()) < 1e-6);
    let grads_a = (ya * w.clone()).sum().backward();
    let grads_b = (yb * w).sum().backward();
    let d_gate = rel_diff(ga.grad(&grads_a).unwrap(), gb.grad(&grads_b).unwrap());
    let d_up = rel_diff(ua.grad(&grads_a).unwrap(), ub.grad(&grads_b).unwrap());
    assert!(d_gate < 1e-5, "gate gradients differ by {d_gate}");
    assert!(d_up < 1e-6, "up gradients differ by {d_up}");
}

#[test]
fn fused_rms_norm_equals_the_composed_norm_in_value_and_the_input_and_gain_gradients() {
    let (dims, eps) = ([4, 23, 577], 1e-5);
    let x = Tensor::<3>::random(dims, Distribution::Normal(0.5, 3.0), &device());
    let gain = Tensor::<1>::random([577], Distribution::Normal(1.0, 0.2), &device());
    let w = weights(dims);
    let (xa, xb) = (x.clone().require_grad(), x.require_grad());
    let (wa, wb) = (gain.clone().require_grad(), gain.require_grad());
    let ya = fused::rms_norm(xa.clone(), wa.clone(), eps);
    let rms = xb.clone().square().mean_dim(2).add_scalar(eps).sqrt();
    let yb = (xb.clone() / rms) * wb.clone().unsqueeze::<3>();
    assert!(rel_diff(ya.clone(), yb.clone()) < 1e-6);
    let grads_a = (ya * w.clone()).sum().backward();
    let grads_b = (yb * w).sum().backward();
    let d_x = rel_diff(xa.grad(&grads_a).unwrap(), xb.grad(&grads_b).unwrap());
    let d_gain = rel_diff(wa.grad(&grads_a).unwrap(), wb.grad(&grads_b).unwrap());
    assert!(d_x < 1e-5, "input gradients differ by {d_x}");
    assert!(d_gain < 1e-5, "gain gradients differ by {d_gain}");
}

#[test]
fn a_frozen_gain_gets_no_gradient_and_the_input_still_does() {
    let x = Tensor::<2>::random([5, 64], Distribution::Normal(0.0, 1.0), &device()).require_grad();
    let gain = Tensor::<1>::ones([64], &device()); // not tracked: a frozen norm weight
    let y = fused::rms_norm(x.clone(), gain.clone(), 1e-6);
    let grads = y.sum().backward();
    assert!(gain.grad(&grads).is_none());
    // Σ_c x̂_c has gradient r·(1 − x̂·mean(x̂)) per element: nonzero for random rows.
    let gx = x.grad(&grads).unwrap();
    assert!(gx.abs().max().into_scalar::<f32>() > 1e-3);
}

/// A `[M, G·T, S]` mask in the model's grouped layout: `masked(row, i, j)` for batch row `row`,
/// query `i` (of `T`), key `j` (of `S`), repeated for the `G` stacked query heads.
fn mask(
    m: usize,
    g: usize,
    t: usize,
    s: usize,
    masked: impl Fn(usize, usize, usize) -> bool,
) -> Tensor<3, Bool> {
    let mut data = Vec::with_capacity(m * g * t * s);
    for row in 0..m {
        for _ in 0..g {
            for i in 0..t {
                data.extend((0..s).map(|j| masked(row, i, j)));
            }
        }
    }
    Tensor::from_data(TensorData::new(data, [m, g * t, s]), &device())
}

/// Fused against composed attention on random `q`, `k`, `v` of the given shape.
fn check(b: usize, kh: usize, g: usize, t: usize, s: usize, mask: Option<Tensor<3, Bool>>) {
    let (r, e) = (g * t, 16);
    let d = device();
    let normal = Distribution::Normal(0.0, 1.0);
    let q = Tensor::<4>::random([b, kh, r, e], normal, &d).mul_scalar(0.5);
    let k = Tensor::<4>::random([b, kh, s, e], normal, &d);
    let v = Tensor::<4>::random([b, kh, s, e], normal, &d);
    let w = Tensor::<4>::random([b, kh, r, e], normal, &d);
    let (qa, qb) = (q.clone().require_grad(), q.require_grad());
    let (ka, kb) = (k.clone().require_grad(), k.require_grad());
    let (va, vb) = (v.clone().require_grad(), v.require_grad());

    let ya = fused::attention(qa.clone(), ka.clone(), va.clone(), mask.as_ref());
    let scores = qb.clone().matmul(kb.clone().swap_dims(2, 3));
    let scores = match &mask {
        Some(m) => scores.mask_fill(m.clone().unsqueeze_dim::<4>(1), f32::NEG_INFINITY),
        None => scores,
    };
    let yb = softmax(scores, 3).matmul(vb.clone());
    let dy = rel_diff(ya.clone(), yb.clone());
    assert!(dy < 1e-5, "outputs differ by {dy} (relative)");

    let grads_a = (ya * w.clone()).sum().backward();
    let grads_b = (yb * w).sum().backward();
    for (name, a, b) in [
        ("q", qa.grad(&grads_a), qb.grad(&grads_b)),
        ("k", ka.grad(&grads_a), kb.grad(&grads_b)),
        ("v", va.grad(&grads_a), vb.grad(&grads_b)),
    ] {
        let (a, b) = (a.unwrap(), b.unwrap());
        assert!(
            !a.clone().is_nan().any().into_scalar::<bool>(),
            "∂{name} has NaN"
        );
        let diff = rel_diff(a, b);
        assert!(diff < 1e-5, "∂{name} differs by {diff} (relative)");
    }
}

#[test]
fn causal_attention_equals_the_composed_ops_in_value_and_every_gradient() {
    // 3 query heads per key/value head, 70 positions: 210 rows, blocks of 64 + a partial one.
    let (b, g, t) = (2, 3, 70);
    check(b, 2, g, t, t, Some(mask(1, g, t, t, |_, i, j| j > i)));
}

#[test]
fn attention_after_a_cache_offset_sees_the_cached_keys() {
    // 5 new queries after 40 cached positions: query i sits at 40 + i.
    let (g, t, offset) = (2, 5, 40);
    let s = offset + t;
    check(
        1,
        3,
        g,
        t,
        s,
        Some(mask(1, g, t, s, |_, i, j| j > offset + i)),
    );
}

#[test]
fn sliding_window_attention_skips_keys_on_both_sides() {
    // Window 16 (Mistral, Gemma 3 local layers): key j visible for i − 16 < j ≤ i.
    let (g, t, window) = (2, 100, 16);
    check(
        2,
        1,
        g,
        t,
        t,
        Some(mask(1, g, t, t, |_, i, j| j > i || j + window <= i)),
    );
}

#[test]
fn left_padded_rows_each_use_their_own_mask() {
    // Batch row 0 has 7 padding positions, row 1 none (`left_padded_causal_mask`'s pattern: a
    // real query sees no padding key; a padding query sees the padding keys up to itself).
    let (g, t, pads) = (3, 33, [7usize, 0]);
    let m = mask(2, g, t, t, |row, i, j| {
        let pad = pads[row];
        j > i || (i >= pad && j < pad)
    });
    check(2, 2, g, t, t, Some(m));
}

#[test]
fn unmasked_attention_equals_the_composed_ops() {
    check(1, 2, 4, 9, 23, None);
}

/// RoPE composed of tensor ops, as `lora-models`' rotary embedding was written before the fused
/// op: swap the head axis forward, `x ⊙ cos + (−x₂, x₁) ⊙ sin`, times `scale`.
fn composed_rope(x: Tensor<4>, cos: Tensor<2>, sin: Tensor<2>, scale: f64) -> Tensor<4> {
    let x = x.swap_dims(1, 2); // [B, N, T, E]
    let e = x.dims()[3];
    let x1 = x.clone().narrow(3, 0, e / 2);
    let x2 = x.clone().narrow(3, e / 2, e / 2);
    let rotated = Tensor::cat(vec![x2.neg(), x1], 3);
    (x * cos.unsqueeze::<4>() + rotated * sin.unsqueeze::<4>()).mul_scalar(scale)
}

#[test]
fn fused_rope_equals_the_composed_rotation_in_value_and_gradient() {
    // 2·37·5 rows of 64: several rayon tasks. Random tables, different in the two halves, so
    // that each half's own cos/sin entry is checked (real tables repeat the frequencies).
    let (b, t, n, e, scale) = (2, 37, 5, 64, 0.125);
    let x = Tensor::<4>::random([b, t, n, e], Distribution::Normal(0.0, 2.0), &device());
    let cos = Tensor::<2>::random([t, e], Distribution::Uniform(-1.0, 1.0), &device());
    let sin = Tensor::<2>::random([t, e], Distribution::Uniform(-1.0, 1.0), &device());
    let w = weights([b, n, t, e]);
    let (xa, xb) = (x.clone().require_grad(), x.require_grad());
    let ya = fused::rope(xa.clone(), cos.clone(), sin.clone(), scale);
    let yb = composed_rope(xb.clone(), cos, sin, scale);
    assert_eq!(ya.dims(), [b, n, t, e]);
    let d = rel_diff(ya.clone(), yb.clone());
    assert!(d < 1e-6, "RoPE values differ by {d}");
    let ga = xa.grad(&(ya * w.clone()).sum().backward()).unwrap();
    let gb = xb.grad(&(yb * w).sum().backward()).unwrap();
    let d = rel_diff(ga, gb);
    assert!(d < 1e-6, "RoPE gradients differ by {d}");
}

#[test]
fn fused_rope_at_angle_zero_only_moves_the_heads_and_scales() {
    // cos = 1, sin = 0: the rotation is the identity, so the output is the scaled transpose.
    let (b, t, n, e) = (1, 3, 2, 4);
    let x = Tensor::<4>::random([b, t, n, e], Distribution::Normal(0.0, 1.0), &device());
    let ones = Tensor::<2>::ones([t, e], &device());
    let zeros = Tensor::<2>::zeros([t, e], &device());
    let y = fused::rope(x.clone(), ones, zeros, 3.0);
    let want = x.swap_dims(1, 2).mul_scalar(3.0);
    assert!(rel_diff(y, want) < 1e-7);
}

/// `x · w` and `∂x` of the frozen product against burn's matmul, for `w` stored `[K, M]` and for
/// `w` a transposed view of `[M, K]` (the tied output head; the backward's `Wᵀ`).
fn check_frozen_matmul(b: usize, t: usize, k: usize, m: usize) {
    let x = Tensor::<3>::random([b, t, k], Distribution::Normal(0.0, 1.0), &device());
    let g = weights([b, t, m]);
    for transposed in [false, true] {
        let w = if transposed {
            Tensor::<2>::random([m, k], Distribution::Normal(0.0, 1.0), &device()).transpose()
        } else {
            Tensor::<2>::random([k, m], Distribution::Normal(0.0, 1.0), &device())
        };
        let (xa, xb) = (x.clone().require_grad(), x.clone().require_grad());
        let ya = fused::frozen_matmul(xa.clone(), w.clone());
        let yb = xb.clone().matmul(w.unsqueeze::<3>());
        let d = rel_diff(ya.clone(), yb.clone());
        assert!(
            d < 1e-6,
            "{b}×{t}×{k}·{k}×{m} (transposed {transposed}): values differ by {d}"
        );
        let ga = xa.grad(&(ya * g.clone()).sum().backward()).unwrap();
        let gb = xb.grad(&(yb * g.clone()).sum().backward()).unwrap();
        let d = rel_diff(ga, gb);
        assert!(
            d < 1e-6,
            "{b}×{t}×{k}·{k}×{m} (transposed {transposed}): ∂x differs by {d}"
        );
    }
}

#[test]
fn frozen_matmul_split_across_threads_equals_matmul_in_value_and_input_gradient() {
    // 303 rows: one block per thread, the last one partial (not a multiple of 16).
    check_frozen_matmul(3, 101, 67, 45);
}

#[test]
fn frozen_matmul_of_a_few_rows_equals_matmul_in_value_and_input_gradient() {
    // 5 rows (a decode step's shape): one product, not split.
    check_frozen_matmul(1, 5, 130, 77);
}

#[test]
fn a_tracked_weight_through_frozen_matmul_gets_no_gradient() {
    let x = Tensor::<2>::random([70, 9], Distribution::Normal(0.0, 1.0), &device()).require_grad();
    let w = Tensor::<2>::random([9, 4], Distribution::Normal(0.0, 1.0), &device()).require_grad();
    let grads = fused::frozen_matmul(x.clone(), w.clone()).sum().backward();
    assert!(w.grad(&grads).is_none());
    // Σᵢⱼ (x·w)ᵢⱼ has ∂/∂x = 1 · wᵀ: every row of ∂x is w's row sums.
    let expected = w.clone().sum_dim(1).reshape([1, 9]).expand([70, 9]);
    assert!(rel_diff(x.grad(&grads).unwrap(), expected.inner()) < 1e-6);
}

#[test]
fn fused_cross_entropy_equals_log_softmax_at_the_target_in_value_and_gradient() {
    use burn::tensor::Int;
    use burn::tensor::activation::log_softmax;
    let (n, v) = (37, 1001);
    // Logits with std 30: a naive exp overflows, and most probabilities underflow f32.
    let x = Tensor::<2>::random([n, v], Distribution::Normal(0.0, 30.0), &device());
    let ids: Vec<i64> = (0..n as i64).map(|i| (i * 271) % v as i64).collect();
    let targets = Tensor::<1, Int>::from_data(TensorData::new(ids, [n]), &device());
    let w = weights([n]);
    let (xa, xb) = (x.clone().require_grad(), x.require_grad());
    let fused = fused::cross_entropy(xa.clone(), targets.clone());
    let textbook = log_softmax(xb.clone(), 1)
        .gather(1, targets.unsqueeze_dim::<2>(1))
        .squeeze_dim::<1>(1)
        .neg();
    let d = rel_diff(fused.clone(), textbook.clone());
    assert!(d < 1e-6, "losses differ by {d} (relative)");
    let ga = xa.grad(&(fused * w.clone()).sum().backward()).unwrap();
    let gb = xb.grad(&(textbook * w).sum().backward()).unwrap();
    let d = rel_diff(ga, gb);
    assert!(d < 1e-5, "gradients differ by {d} (relative)");
}
