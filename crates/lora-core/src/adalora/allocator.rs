//! [`RankAllocator`]: AdaLoRA's importance scores, budget schedule and pruning, step by step as
//! PEFT's `RankAllocator` and `AdaLoraModel.update_and_allocate` do them.
//!
//! Every step, after the optimizer step (PEFT's order):
//! 1. importance of every adapter entry `I = |w · ∂L/∂w|` (updated weight, this step's clipped
//!    gradient), smoothed: sensitivity `Ī ← β1·Ī + (1−β1)·I`, uncertainty
//!    `Ū ← β2·Ū + (1−β2)·|I − Ī|`, entry score `Ī·Ū` (paper §3.2, eqs. 5–7);
//! 2. triplet score `S_i = score(λ_i) + mean_j score(Q_ij) + mean_k score(P_ki)` (eq. 8);
//! 3. the budget `b(t)` ([`BudgetSchedule`]); on allocation steps the `Σ init_r − b(t)`
//!    lowest-scoring triplets of the whole model are pruned: `λ_i ← 0` (eq. 9). The kept set is
//!    the [`RankPattern`].
//!
//! Source: PEFT `tuners/adalora/layer.py` (`RankAllocator.update_ipt`, `budget_schedule`,
//! `mask_to_budget`, `update_and_allocate`, `mask_using_rank_pattern`) and `model.py`
//! (`AdaLoraModel.update_and_allocate`), with `global_step` 0-based as in PEFT's example
//! `peft_adalora_seq2seq.py`.

use std::collections::BTreeMap;

use burn::optim::GradientsParams;
use burn::tensor::{Bool, Tensor, TensorData};

use crate::adalora::config::{AdaLoraConfig, RankPattern};
use crate::adalora::model::orth_regularizer;
use crate::error::LoraError;
use crate::inject::LoraModel;

/// PEFT's budget schedule (`RankAllocator.budget_schedule`): how many triplets the whole model
/// may keep at a step, and whether that step allocates.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BudgetSchedule {
    /// `Σ init_r` over the adapted matrices.
    pub init_budget: usize,
    /// `target_r × (number of adapted matrices)`.
    pub target_budget: usize,
    /// Warm-up steps at the full budget.
    pub tinit: usize,
    /// Final steps at the target budget.
    pub tfinal: usize,
    /// Steps of the run.
    pub total_step: usize,
    /// Steps between allocations while the budget falls.
    pub delta_t: usize,
}

impl BudgetSchedule {
    /// `(budget, allocate)` at 0-based `step`:
    /// - `step ≤ tinit`: `(init, false)`;
    /// - `step > total_step − tfinal`: `(target, true)`;
    /// - otherwise `budget = ⌊(init − target)·(1 − (step − tinit)/(total_step − tfinal − tinit))³ + target⌋`,
    ///   allocating when `step % deltaT == 0`.
    ///
    /// The cubic is evaluated in f64 with `pow` like Python's `mul_coeff**3`, then truncated as `int()` does.
    pub fn at(&self, step: usize) -> (usize, bool) {
        if step <= self.tinit {
            return (self.init_budget, false);
        }
        if step + self.tfinal > self.total_step {
            return (self.target_budget, true);
        }
        let span = (self.total_step - self.tfinal - self.tinit) as f64;
        let mul = 1.0 - (step - self.tinit) as f64 / span;
        let init = self.init_budget as f64;
        let target = self.target_budget as f64;
        let budget = ((init - target) * mul.powf(3.0) + target) as usize;
        (budget, step.is_multiple_of(self.delta_t.max(1)))
    }
}

/// Keeps the triplets whose score is above the `(init_budget − budget)`-th smallest score of
/// the whole model; a score equal to that threshold is pruned too, as PEFT's
/// `triplet_ipt <= mask_threshold` does (so ties can prune a few more than asked). With nothing to
/// prune (`budget ≥ init_budget`) every triplet is kept.
///
/// `scores`: module path → one score per triplet.
pub fn mask_to_budget(
    scores: &BTreeMap<String, Vec<f32>>,
    init_budget: usize,
    budget: usize,
) -> RankPattern {
    let k = init_budget.saturating_sub(budget);
    let threshold = if k == 0 {
        None
    } else {
        let mut all: Vec<f32> = scores.values().flatten().copied().collect();
        all.sort_by(f32::total_cmp);
        all.get(k.min(all.len()) - 1).copied()
    };
    scores
        .iter()
        .map(|(path, s)| {
            let kept = s
                .iter()
                .map(|v| {
                    threshold.is_none_or(|t| v.partial_cmp(&t) == Some(std::cmp::Ordering::Greater))
                })
                .collect();
            (path.clone(), kept)
        })
        .collect()
}

/// One step's adapter gradients, taken before the optimizer consumes them: module path →
/// `[∂L/∂Qᵀ, ∂L/∂λ, ∂L/∂Pᵀ]` (burn layout, inner backend; `None` = no gradient).
#[derive(Debug, Default)]
pub struct TripletGradients(BTreeMap<String, [Option<Tensor<2>>; 3]>);

/// Sensitivity `Ī` and uncertainty `Ū` of one tensor's entries.
#[derive(Debug, Clone)]
struct Ema {
    sensitivity: Tensor<2>,
    uncertainty: Tensor<2>,
}

impl Ema {
    /// One smoothing step with the importance `I = |w ⊙ g|` (PEFT `update_ipt`).
    fn update(self, w: Tensor<2>, g: Option<Tensor<2>>, beta1: f64, beta2: f64) -> Ema {
        let ipt = match g {
            Some(g) => (w * g).abs(),
            None => w.zeros_like(), // PEFT would fail here; no gradient = no importance
        };
        let sensitivity = self.sensitivity.mul_scalar(beta1) + ipt.clone().mul_scalar(1.0 - beta1);
        let uncertainty = self.uncertainty.mul_scalar(beta2)
            + (ipt - sensitivity.clone()).abs().mul_scalar(1.0 - beta2);
        Ema {
            sensitivity,
            uncertainty,
        }
    }

    /// Entry scores `Ī ⊙ Ū`.
    fn score(&self) -> Tensor<2> {
        self.sensitivity.clone() * self.uncertainty.clone()
    }
}

/// What one step of the allocator did (kept for the run summary and the parity test).
#[derive(Clone, Debug, PartialEq)]
pub struct Allocation {
    /// The 0-based step.
    pub step: usize,
    /// The budget the schedule gives at this step.
    pub budget: usize,
    /// The kept triplets if this step allocated (pruned to the budget), else `None`.
    pub rank_pattern: Option<RankPattern>,
}

/// AdaLoRA's rank allocator for one model: importance EMAs, the budget schedule and the current
/// [`RankPattern`]. Drive it from the training loop: [`orth_penalty`](Self::orth_penalty) into the
/// loss, [`gradients`](Self::gradients) before the optimizer step,
/// [`update_and_allocate`](Self::update_and_allocate) after it.
#[derive(Debug)]
pub struct RankAllocator {
    config: AdaLoraConfig,
    schedule: BudgetSchedule,
    ema: BTreeMap<String, [Ema; 3]>,
    rank_pattern: Option<RankPattern>,
    history: Vec<Allocation>,
}

impl RankAllocator {
    /// An allocator for the AdaLoRA layers of `model`; the initial budget is `Σ r` over them
    /// (PEFT `_set_budget_scheduler`), the target `target_r × (number of layers)`.
    ///
    /// # Errors
    /// [`LoraError::InvalidConfig`] from [`AdaLoraConfig::validate_training`], or when the model
    /// has no AdaLoRA layer.
    pub fn new<M: LoraModel>(model: &M, config: &AdaLoraConfig) -> Result<Self, LoraError> {
        config.validate_training()?;
        let (mut init_budget, mut n) = (0, 0);
        model.visit_adapters(&mut |_, adapter| {
            if let Some(a) = adapter.as_adalora() {
                init_budget += a.r;
                n += 1;
            }
        });
        if n == 0 {
            return Err(LoraError::InvalidConfig(
                "the model has no AdaLoRA layer to allocate ranks for (apply_adalora first)".into(),
            ));
        }
        let schedule = BudgetSchedule {
            init_budget,
            target_budget: config.target_r * n,
            tinit: config.tinit,
            tfinal: config.tfinal,
            total_step: config.total_step.unwrap_or_default(),
            delta_t: config.delta_t,
        };
        Ok(RankAllocator {
            config: config.clone(),
            schedule,
            ema: BTreeMap::new(),
            rank_pattern: None,
            history: Vec::new(),
        })
    }

    /// The budget schedule.
    pub fn schedule(&self) -> &BudgetSchedule {
        &self.schedule
    }

    /// The kept triplets after the last allocation (`None` before the first).
    pub fn rank_pattern(&self) -> Option<&RankPattern> {
        self.rank_pattern.as_ref()
    }

    /// One record per [`update_and_allocate`](Self::update_and_allocate) call.
    pub fn history(&self) -> &[Allocation] {
        &self.history
    }

    /// The config with the current rank pattern: what the adapter file records.
    pub fn config(&self) -> AdaLoraConfig {
        AdaLoraConfig {
            rank_pattern: self.rank_pattern.clone(),
            ..self.config.clone()
        }
    }

    /// `orth_reg_weight · R(P, Q)` (see [`orth_regularizer`]), to add to each forward's loss as
    /// PEFT's `AdaLoraModel.forward` does. `None` when the weight is 0 (then PEFT adds nothing that
    /// moves the weights, and skipping it avoids `√0` in the backward pass).
    ///
    /// # Shapes
    /// returns `[1]`
    pub fn orth_penalty<M: LoraModel>(&self, model: &M) -> Option<Tensor<1>> {
        if self.config.orth_reg_weight == 0.0 {
            return None;
        }
        orth_regularizer(model).map(|r| r.mul_scalar(self.config.orth_reg_weight))
    }

    /// Takes the AdaLoRA gradients out of `grads` (copies; `grads` still feeds the optimizer).
    /// Call it after clipping: PEFT reads `p.grad` after `clip_grad_norm_` has scaled it.
    pub fn gradients<M: LoraModel>(&self, model: &M, grads: &GradientsParams) -> TripletGradients {
        let mut out = BTreeMap::new();
        model.visit_adapters(&mut |path, adapter| {
            if let Some(a) = adapter.as_adalora() {
                let g = |id| grads.get::<2>(id).map(Tensor::inner);
                out.insert(
                    path.to_string(),
                    [g(a.lora_a.id), g(a.lora_e.id), g(a.lora_b.id)],
                );
            }
        });
        TripletGradients(out)
    }

    /// PEFT's `update_and_allocate(global_step)`, called after the optimizer step with the
    /// 0-based `step`:
    /// - `step < total_step − tfinal`: update the importance EMAs; if the schedule allocates,
    ///   prune to the budget;
    /// - `step = total_step − tfinal`: prune to the target budget with the current scores (no
    ///   update), fix that pattern and drop the EMAs;
    /// - later steps: re-apply the fixed pattern (the optimizer moves pruned `λ` again).
    ///
    /// # Errors
    /// [`LoraError::InvalidConfig`] if the model's AdaLoRA layers changed since [`RankAllocator::new`].
    pub fn update_and_allocate<M: LoraModel>(
        &mut self,
        model: &mut M,
        step: usize,
        grads: TripletGradients,
    ) -> Result<(), LoraError> {
        let boundary = self.schedule.total_step - self.schedule.tfinal;
        let (budget, allocate) = self.schedule.at(step);
        let mut record = Allocation {
            step,
            budget,
            rank_pattern: None,
        };
        if step < boundary {
            self.update_importance(model, grads);
            if allocate {
                record.rank_pattern = Some(self.allocate(model, budget)?);
            }
        } else if step == boundary {
            record.rank_pattern = Some(self.allocate(model, budget)?);
            self.ema.clear();
        } else if let Some(pattern) = &self.rank_pattern {
            apply_rank_pattern(model, pattern)?;
        }
        self.history.push(record);
        Ok(())
    }

    /// Step 1: the EMAs of every entry of `Q`, `λ` and `P`.
    fn update_importance<M: LoraModel>(&mut self, model: &M, mut grads: TripletGradients) {
        let (beta1, beta2) = (self.config.beta1, self.config.beta2);
        model.visit_adapters(&mut |path, adapter| {
            let Some(a) = adapter.as_adalora() else {
                return;
            };
            let weights = [a.lora_a.val(), a.lora_e.val(), a.lora_b.val()].map(Tensor::inner);
            let g = grads.0.remove(path).unwrap_or([None, None, None]);
            let ema = self.ema.remove(path).unwrap_or_else(|| {
                weights.clone().map(|w| Ema {
                    sensitivity: w.zeros_like(),
                    uncertainty: w.zeros_like(),
                })
            });
            let [ea, ee, eb] = ema;
            let [wa, we, wb] = weights;
            let [ga, ge, gb] = g;
            self.ema.insert(
                path.to_string(),
                [
                    ea.update(wa, ga, beta1, beta2),
                    ee.update(we, ge, beta1, beta2),
                    eb.update(wb, gb, beta1, beta2),
                ],
            );
        });
    }

    /// Steps 2 and 3: triplet scores, pruning to `budget`, the new pattern applied to `λ`.
    fn allocate<M: LoraModel>(
        &mut self,
        model: &mut M,
        budget: usize,
    ) -> Result<RankPattern, LoraError> {
        let scores = self.triplet_scores(model);
        let pattern = mask_to_budget(&scores, self.schedule.init_budget, budget);
        apply_rank_pattern(model, &pattern)?;
        self.rank_pattern = Some(pattern.clone());
        Ok(pattern)
    }

    /// `S_i = score(λ_i) + (mean_j score(Q_ij) + mean_k score(P_ki))` per module (PEFT
    /// `mask_to_budget` / `_combine_ipt`), read back to the host in one transfer.
    fn triplet_scores<M: LoraModel>(&self, model: &M) -> BTreeMap<String, Vec<f32>> {
        let mut rows = Vec::new();
        let mut layout = Vec::new();
        model.visit_adapters(&mut |path, adapter| {
            let Some(a) = adapter.as_adalora() else {
                return;
            };
            let score = match self.ema.get(path) {
                Some([ea, ee, eb]) => {
                    let q = ea.score().mean_dim(0); // [d_in, r] → [1, r]
                    let p = eb.score().mean_dim(1).reshape([1, a.r]); // [r, d_out] → [1, r]
                    ee.score() + (q + p)
                }
                None => Tensor::zeros([1, a.r], &a.lora_e.val().inner().device()),
            };
            rows.push(score);
            layout.push((path.to_string(), a.r));
        });
        if rows.is_empty() {
            return BTreeMap::new();
        }
        let all = Tensor::cat(rows, 1)
            .into_data()
            .convert::<f32>()
            .try_to_vec::<f32>()
            .unwrap_or_default();
        let mut out = BTreeMap::new();
        let mut at = 0;
        for (path, r) in layout {
            out.insert(
                path,
                all.get(at..at + r).map(<[f32]>::to_vec).unwrap_or_default(),
            );
            at += r;
        }
        out
    }
}

/// Sets `λ_i = 0` wherever `pattern` says the triplet is pruned (PEFT `masked_fill_`). Layers
/// without an entry are left alone. The new `λ` is a fresh leaf with the same parameter id, so
/// the optimizer's state for it carries on.
///
/// # Errors
/// [`LoraError::InvalidConfig`] when an entry's length differs from the layer's rank.
pub fn apply_rank_pattern<M: LoraModel>(
    model: &mut M,
    pattern: &RankPattern,
) -> Result<(), LoraError> {
    model.visit_adapters_mut(&mut |path, adapter| {
        let (Some(a), Some(keep)) = (adapter.as_adalora_mut(), pattern.get(path)) else {
            return Ok(());
        };
        if keep.len() != a.r {
            return Err(LoraError::InvalidConfig(format!(
                "{path}: rank pattern has {} entries, the layer holds {} triplets",
                keep.len(),
                a.r
            )));
        }
        let pruned: Vec<bool> = keep.iter().map(|k| !k).collect();
        a.lora_e = a.lora_e.clone().map(|e| {
            let trains = e.is_require_grad();
            let mask =
                Tensor::<2, Bool>::from_data(TensorData::new(pruned, [1, keep.len()]), &e.device());
            // A fresh untracked leaf, masked, then marked trainable again.
            let masked = e.detach().set_require_grad(false).mask_fill(mask, 0.0);
            if trains {
                masked.require_grad()
            } else {
                masked
            }
        });
        Ok(())
    })
}

/// The kept rank of every adapted module, in model order: its `rank_pattern` count, or the
/// number of non-zero `λ` when there is no pattern entry.
pub fn final_ranks<M: LoraModel>(model: &M, pattern: Option<&RankPattern>) -> Vec<(String, usize)> {
    let mut out = Vec::new();
    model.visit_adapters(&mut |path, adapter| {
        if let Some(a) = adapter.as_adalora() {
            let rank = match pattern.and_then(|p| p.get(path)) {
                Some(keep) => keep.iter().filter(|k| **k).count(),
                None => a.active_rank(),
            };
            out.push((path.to_string(), rank));
        }
    });
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schedule() -> BudgetSchedule {
        // 10 matrices, init_r 12, target_r 8; tinit 10, tfinal 20, 100 steps, deltaT 5.
        BudgetSchedule {
            init_budget: 120,
            target_budget: 80,
            tinit: 10,
            tfinal: 20,
            total_step: 100,
            delta_t: 5,
        }
    }

    #[test]
    fn budget_follows_peft_cubic_schedule_at_its_landmarks() {
        let s = schedule();
        // Step 0 and step tinit: the full budget, no allocation.
        assert_eq!(s.at(0), (120, false));
        assert_eq!(s.at(10), (120, false));
        // Step 11: mul = 1 − 1/70; 40 · (69/70)³ + 80 = 118.31… → 118; 11 % 5 ≠ 0.
        assert_eq!(s.at(11), (118, false));
        // Midway, step 45: mul = 1 − 35/70 = 0.5; 40 · 0.125 + 80 = 85; 45 % 5 = 0.
        assert_eq!(s.at(45), (85, true));
        // Step 80 = total_step − tfinal: mul = 0 → the target; 80 % 5 = 0.
        assert_eq!(s.at(80), (80, true));
        // After it, and at the end: the target, always allocating.
        assert_eq!(s.at(81), (80, true));
        assert_eq!(s.at(99), (80, true));
        // Step 20: mul = 1 − 10/70 = 6/7; 40 · 216/343 + 80 = 105.18… → 105.
        assert_eq!(s.at(20), (105, true));
    }

    #[test]
    fn default_schedule_reaches_the_target_on_the_last_step() {
        // PEFT defaults (tinit = tfinal = 0, deltaT = 1) on 120 matrices, 200 steps: step 199 has
        // mul = 1/200, 480 · 1.25e-7 + 960 → 960.
        let s = BudgetSchedule {
            init_budget: 1440,
            target_budget: 960,
            tinit: 0,
            tfinal: 0,
            total_step: 200,
            delta_t: 1,
        };
        assert_eq!(s.at(0), (1440, false));
        assert_eq!(s.at(1), (1440 - 8, true)); // 480 · (199/200)³ = 472.8… → 1432
        assert_eq!(s.at(100), (1020, true)); // 480 · 0.125 + 960
        assert_eq!(s.at(199), (960, true));
    }

    fn fabricated() -> BTreeMap<String, Vec<f32>> {
        BTreeMap::from([
            ("a".to_string(), vec![0.9, 0.1, 0.5, 0.7]),
            ("b".to_string(), vec![0.2, 0.8, 0.3, 0.05]),
            ("c".to_string(), vec![0.6, 0.4, 1.0, 0.0]),
        ])
    }

    #[test]
    fn masking_prunes_exactly_the_lowest_scoring_triplets_to_the_budget() {
        let scores = fabricated();
        // Budget 7 of 12: prune the 5 lowest (0.0, 0.05, 0.1, 0.2, 0.3).
        let p = mask_to_budget(&scores, 12, 7);
        assert_eq!(p["a"], vec![true, false, true, true]);
        assert_eq!(p["b"], vec![false, true, false, false]);
        assert_eq!(p["c"], vec![true, true, true, false]);
        let kept: usize = p.values().flatten().filter(|k| **k).count();
        assert_eq!(kept, 7, "total active rank equals the budget");
        // The full budget prunes nothing; a budget of 0 prunes everything.
        assert!(
            mask_to_budget(&scores, 12, 12)
                .values()
                .flatten()
                .all(|k| *k)
        );
        assert!(
            mask_to_budget(&scores, 12, 0)
                .values()
                .flatten()
                .all(|k| !*k)
        );
    }

    #[test]
    fn ties_at_the_threshold_are_pruned_as_peft_does() {
        // Threshold = 2nd smallest = 0.5; both 0.5 entries go (`<=`), leaving 1 of 4 kept.
        let scores = BTreeMap::from([("m".to_string(), vec![0.5, 0.1, 0.5, 0.9])]);
        assert_eq!(
            mask_to_budget(&scores, 4, 2)["m"],
            vec![false, false, false, true]
        );
    }
}
