//! `exp` and `σ` in a form the compiler turns into SIMD code, the fused kernels' eight-lane
//! reductions (`sum`, `dot`, `max`, `Σ exp`, the row log-sum-exp), and [`simd`], which runs a
//! loop with the widest vector instructions the CPU has.
//!
//! The fused kernels' elementwise loops called the C library's `expf` once per element — a
//! function call the compiler cannot vectorise — and SwiGLU's forward and backward spent about
//! 10 % of a SmolLM2 training step's CPU time there (README, "where the time goes"). Written
//! without calls and branches, the same loop runs 8 or 16 lanes at a time; [`simd`] compiles it
//! for AVX2 + FMA where the CPU has them (pulp's run-time dispatch, the crate gemm uses).
//!
//! Source: Cody–Waite range reduction and the minimax polynomial of Cephes' `expf`
//! (S. L. Moshier, `cephes/single/expf.c`): `eˣ = 2ⁿ · e^r` with `n = round(x / ln 2)`,
//! `r = x − n·ln 2` (`ln 2` split in two so that `n·C₁` is exact), `|r| ≤ ln 2 / 2`.
//! Relative error ≤ 2 ulp on the whole range (checked against `f32::exp` below).

/// `x` below this gives `eˣ` under f32's smallest normal number (`e^−87.34`): the result is 0.
const EXP_MIN: f32 = -87.33;
/// `x` above this gives `+∞`. f32 itself overflows only at `e^88.72`; the last 0.35 are given
/// up so that `2ⁿ` fits one exponent field (`n ≤ 127`). No kernel comes near: softmax takes
/// `x ≤ 0`, and σ's `e^−z` there means `σ(z) < 10⁻³⁸`.
const EXP_MAX: f32 = 88.37;

/// `eˣ` without branches or calls (see the module documentation). `−∞` and anything below
/// [`EXP_MIN`] give 0, anything above [`EXP_MAX`] gives `+∞`, NaN gives NaN.
#[inline(always)]
pub(super) fn exp(x: f32) -> f32 {
    const LOG2_E: f32 = std::f32::consts::LOG2_E;
    const C1: f32 = 0.693_359_4; // ln 2, high part: 8 significant bits, so n·C1 is exact
    const C2: f32 = -2.121_944_4e-4; // ln 2 − C1
    // Adding and subtracting 1.5·2²³ rounds to the nearest integer (ties to even) in f32.
    const ROUND: f32 = 12_582_912.0;
    let xc = x.clamp(EXP_MIN, EXP_MAX);
    let t = xc * LOG2_E + ROUND; // 1.5·2²³ + n, exactly
    let n = t - ROUND;
    let r = (xc - n * C1) - n * C2;
    let p = ((((1.987_569_1e-4 * r + 1.398_199_9e-3) * r + 8.333_452e-3) * r + 4.166_579_6e-2) * r
        + 1.666_666_5e-1)
        * r
        + 5.000_000_1e-1;
    let e_r = p * (r * r) + r + 1.0;
    // 2ⁿ built from its exponent bits: n ∈ [−126, 127], so n + 127 ∈ [1, 254]. `t` lies in
    // [2²³, 2²⁴), where f32's step is 1, so its bits are ROUND's plus n: integer arithmetic on
    // them gives n without `n as i32` (Rust's saturating conversion compiled to scalar code, one
    // element at a time). Wrapping, because a checked `+` — debug builds check overflow — would
    // be a branch per element, and stop vectorisation too.
    let n_bits = t.to_bits().wrapping_sub(ROUND.to_bits());
    let two_n = f32::from_bits(n_bits.wrapping_add(127) << 23);
    let y = e_r * two_n;
    if x < EXP_MIN {
        0.0
    } else if x > EXP_MAX {
        f32::INFINITY
    } else {
        y
    }
}

/// `σ(z) = 1 / (1 + e^−z)`, via [`exp`]: exact to a few ulp, 0 and 1 in the limits.
#[inline(always)]
pub(super) fn sigmoid(z: f32) -> f32 {
    1.0 / (1.0 + exp(-z))
}

/// `Σ x` in eight lanes: a fixed order (deterministic results) that the compiler keeps in one
/// vector register, where a running sum would be one long chain of dependent additions.
#[inline]
pub(super) fn sum(x: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let chunks = x.chunks_exact(8);
    let tail: f32 = chunks.remainder().iter().sum();
    for c in chunks {
        for l in 0..8 {
            acc[l] += c[l];
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// `Σ a ⊙ b` in eight lanes (as [`sum`]); the shorter slice sets the length.
#[inline]
pub(super) fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let (a8, b8) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = a8
        .remainder()
        .iter()
        .zip(b8.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in a8.zip(b8) {
        for l in 0..8 {
            acc[l] += x[l] * y[l];
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// `max x` in eight lanes (`−∞` for an empty slice). A NaN may be skipped here; callers that
/// go on to `Σ exp(x − max)` get NaN from the sum all the same.
#[inline(always)]
pub(super) fn max(x: &[f32]) -> f32 {
    let mut acc = [f32::NEG_INFINITY; 8];
    let chunks = x.chunks_exact(8);
    let tail = chunks
        .remainder()
        .iter()
        .fold(f32::NEG_INFINITY, |m, &v| if v > m { v } else { m });
    for c in chunks {
        for l in 0..8 {
            acc[l] = if c[l] > acc[l] { c[l] } else { acc[l] };
        }
    }
    acc.iter().fold(tail, |m, &v| if v > m { v } else { m })
}

/// `Σ exp(x − shift)` in eight lanes. The exponentials go through a small buffer, 64 at a
/// time: written as a plain loop they vectorise (as in the other kernels), while `exp` inside
/// the eight-lane accumulation compiled to scalar code with a branch per element (seen in the
/// disassembly).
#[inline(always)]
pub(super) fn sum_exp(x: &[f32], shift: f32) -> f32 {
    let mut acc = [0f32; 8];
    let mut buf = [0f32; 64];
    let mut tail = 0f32;
    for c in x.chunks(64) {
        let b = &mut buf[..c.len()];
        for (o, &v) in b.iter_mut().zip(c) {
            *o = exp(v - shift);
        }
        let lanes = b.chunks_exact(8);
        tail += lanes.remainder().iter().sum::<f32>();
        for e in lanes {
            for l in 0..8 {
                acc[l] += e[l];
            }
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// `log Σ exp(x)` of one row, `m + ln Σ exp(x − m)` with `m = max x`, compiled for the widest
/// SIMD instructions this CPU has. Through pulp's [`pulp::WithSimd`] with an always-inlined
/// body rather than [`simd`]: a closure holding both loops was compiled out of line, for the
/// baseline, and ran scalar (seen in the disassembly).
pub(super) fn log_sum_exp(row: &[f32]) -> f32 {
    struct Lse<'a>(&'a [f32]);
    impl pulp::WithSimd for Lse<'_> {
        type Output = f32;
        #[inline(always)]
        fn with_simd<S: pulp::Simd>(self, _: S) -> f32 {
            let m = max(self.0);
            m + sum_exp(self.0, m).ln()
        }
    }
    pulp::Arch::new().dispatch(Lse(row))
}

/// Runs `f` compiled for the widest SIMD instructions this CPU has (AVX2 + FMA on x86-64 where
/// present, else the baseline), so that the loops in it — inlined into `f` — are vectorised for
/// them.
#[inline(always)]
pub(super) fn simd<R>(f: impl FnOnce() -> R) -> R {
    pulp::Arch::new().dispatch(f)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Relative difference in units of f32's machine epsilon.
    fn ulps(a: f32, b: f32) -> f32 {
        ((a - b) / b).abs() / f32::EPSILON
    }

    #[test]
    fn exp_is_within_two_ulp_of_the_c_library_over_the_whole_range() {
        let mut worst = 0f32;
        let mut x = EXP_MIN;
        while x < EXP_MAX - 0.5 {
            // compare in f64 to avoid the reference's own rounding
            let want = (x as f64).exp() as f32;
            worst = worst.max(ulps(simd(|| exp(x)), want));
            x += 0.0137;
        }
        assert!(worst <= 2.0, "worst error {worst} ulp");
    }

    #[test]
    fn sum_adds_every_element_once() {
        let x: Vec<f32> = (1..=1001).map(|i| i as f32).collect();
        assert_eq!(sum(&x), 1001.0 * 1002.0 / 2.0);
        assert_eq!(sum(&[]), 0.0);
    }

    #[test]
    fn exp_limits_are_zero_infinity_and_nan() {
        assert_eq!(exp(f32::NEG_INFINITY), 0.0);
        assert_eq!(exp(-100.0), 0.0);
        assert_eq!(exp(0.0), 1.0);
        assert_eq!(exp(89.0), f32::INFINITY);
        assert!(exp(f32::NAN).is_nan());
        assert_eq!(sigmoid(-200.0), 0.0);
        assert_eq!(sigmoid(200.0), 1.0);
        assert_eq!(sigmoid(0.0), 0.5);
    }

    #[test]
    fn the_vectorised_loop_equals_the_scalar_function() {
        let xs: Vec<f32> = (0..1000).map(|i| (i as f32 - 500.0) * 0.173).collect();
        let mut v = vec![0f32; xs.len()];
        simd(|| {
            for (o, &x) in v.iter_mut().zip(&xs) {
                *o = exp(x);
            }
        });
        for (&o, &x) in v.iter().zip(&xs) {
            assert_eq!(o.to_bits(), exp(x).to_bits(), "at {x}");
        }
    }

    #[test]
    fn max_finds_the_largest_element_in_any_lane_or_the_tail() {
        let mut x: Vec<f32> = (0..203).map(|i| -(i as f32)).collect();
        assert_eq!(max(&x), 0.0);
        for at in [5, 100, 202] {
            x[at] = 7.5 + at as f32;
            assert_eq!(max(&x), 7.5 + at as f32, "largest at {at}");
        }
        assert_eq!(max(&[]), f32::NEG_INFINITY);
    }

    #[test]
    fn sum_exp_is_the_sum_of_the_exponentials() {
        let x: Vec<f32> = (0..203).map(|i| (i as f32 - 100.0) * 0.05).collect();
        let want: f64 = x.iter().map(|&v| ((v - 1.0) as f64).exp()).sum();
        let got = simd(|| sum_exp(&x, 1.0));
        assert!(((got as f64 - want) / want).abs() < 1e-6, "{got} vs {want}");
        // The row's log-sum-exp, shifted by its maximum (4.95) so nothing overflows.
        let want = want.ln() + 1.0;
        let got = log_sum_exp(&x) as f64;
        assert!((got - want).abs() < 1e-6 * want.abs(), "{got} vs {want}");
    }
}
