//! The learning-rate schedule: linear warm-up, then cosine decay to `min_lr_ratio · lr`, built
//! from burn's own schedulers (`burn::lr_scheduler`: `Linear`, then `CosineAnnealing`, joined by
//! `Sequential`).

use burn::lr_scheduler::LrSchedulerConfig;
use burn::lr_scheduler::cosine::CosineAnnealingLrSchedulerConfig;
use burn::lr_scheduler::linear::LinearLrSchedulerConfig;
use burn::lr_scheduler::module_lr_scheduler::{ModuleLrScheduler, ModuleLrSchedulerConfig};
use burn::lr_scheduler::sequential::SequentialLrSchedulerConfig;
use burn::module::{ParamGroup, ParamId};

/// Builds the schedule for `total` optimizer steps.
///
/// Step `s` (0-based) gets: during warm-up (`s < warmup`) `lr · (s + 1) / (warmup + 1)` — burn's
/// linear scheduler cannot start at exactly 0 — and after it
/// `min + (lr − min) · (1 + cos(π · (s − warmup) / (total − warmup))) / 2`.
///
/// # Errors
/// burn's message for an out-of-range learning rate.
pub fn warmup_cosine(
    lr: f64,
    warmup: usize,
    total: usize,
    min_lr_ratio: f64,
) -> Result<ModuleLrScheduler, String> {
    ModuleLrSchedulerConfig::new(warmup_cosine_config(lr, warmup, total, min_lr_ratio)).init()
}

/// [`warmup_cosine`] for every parameter, and the same schedule scaled by `ratio` for the
/// parameters `scaled` (LoRA+: `lora_B` at `loraplus_lr_ratio` × the rate of `lora_A`, PEFT
/// `create_loraplus_optimizer`). Every value of the schedule is proportional to `lr`, so the
/// scaled group's rate is exactly `ratio` × the base rate at every step.
///
/// # Errors
/// burn's message for an out-of-range learning rate (`ratio · lr` must stay in (0, 1] too).
pub fn warmup_cosine_scaled(
    lr: f64,
    warmup: usize,
    total: usize,
    min_lr_ratio: f64,
    scaled: Vec<ParamId>,
    ratio: f64,
) -> Result<ModuleLrScheduler, String> {
    ModuleLrSchedulerConfig::new(warmup_cosine_config(lr, warmup, total, min_lr_ratio))
        .with_group(
            ParamGroup::from_ids(scaled),
            warmup_cosine_config(lr * ratio, warmup, total, min_lr_ratio),
        )
        .init()
        .map_err(|e| format!("loraplus_lr_ratio {ratio} × lr {lr}: {e}"))
}

fn warmup_cosine_config(
    lr: f64,
    warmup: usize,
    total: usize,
    min_lr_ratio: f64,
) -> LrSchedulerConfig {
    let decay_steps = total.saturating_sub(warmup).max(1);
    let cosine = LrSchedulerConfig::Cosine(
        CosineAnnealingLrSchedulerConfig::new(lr, decay_steps).with_min_lr(lr * min_lr_ratio),
    );
    if warmup == 0 {
        return SequentialLrSchedulerConfig::new(vec![cosine], vec![]).into();
    }
    let start = lr / (warmup as f64 + 1.0);
    let warm = LrSchedulerConfig::Linear(LinearLrSchedulerConfig::new(start, lr, warmup));
    SequentialLrSchedulerConfig::new(vec![warm, cosine], vec![warmup]).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lrs(lr: f64, warmup: usize, total: usize, min: f64) -> Vec<f64> {
        let mut s = warmup_cosine(lr, warmup, total, min).unwrap();
        (0..total).map(|_| s.step().base()).collect()
    }

    #[test]
    fn warmup_then_cosine_matches_hand_computed_values() {
        let lr = 1e-3;
        let v = lrs(lr, 10, 110, 0.1);
        let close = |a: f64, b: f64| (a - b).abs() < 1e-12;
        assert!(close(v[0], lr / 11.0), "warm-up start {}", v[0]);
        assert!(close(v[10], lr), "end of warm-up {}", v[10]); // first cosine step = peak
        let mid = 0.1 * lr + (lr - 0.1 * lr) * 0.5; // cos(π/2) = 0
        assert!(close(v[60], mid), "mid-cosine {} vs {mid}", v[60]);
        let last = 0.1 * lr + 0.9 * lr * (1.0 + (std::f64::consts::PI * 99.0 / 100.0).cos()) / 2.0;
        assert!(close(v[109], last), "end {} vs {last}", v[109]);
        assert!(v.windows(2).take(10).all(|w| w[1] > w[0]), "warm-up rises");
        assert!(v.windows(2).skip(10).all(|w| w[1] <= w[0]), "cosine falls");
    }

    #[test]
    fn loraplus_group_follows_the_schedule_at_ratio_times_the_rate() {
        let (b, a) = (ParamId::new(), ParamId::new());
        let mut s = warmup_cosine_scaled(1e-3, 10, 110, 0.1, vec![b], 16.0).unwrap();
        for _ in 0..110 {
            let lr = s.step();
            let (la, lb) = (lr.lr_from_param(a, None), lr.lr_from_param(b, None));
            assert_eq!(la, lr.base());
            assert!((lb / la - 16.0).abs() < 1e-9, "{lb} vs 16 × {la}");
        }
        assert!(
            warmup_cosine_scaled(0.1, 0, 10, 0.1, vec![b], 16.0).is_err(),
            "1.6 > 1"
        );
    }
}
