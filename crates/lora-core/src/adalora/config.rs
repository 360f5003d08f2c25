//! [`AdaLoraConfig`]: the AdaLoRA hyper-parameters with PEFT's names and defaults.
//!
//! Source: PEFT `tuners/adalora/config.py` (`AdaLoraConfig`, which extends `LoraConfig`). AdaLoRA
//! ignores LoRA's `r` (the rank is `init_r`) and gives `rank_pattern` another meaning: not
//! "module → rank" but "module → `init_r` booleans, true = singular triplet kept".

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

// AdaLoraConfig inherits lora_alpha and target_modules' defaults from PEFT's LoraConfig.
use crate::config::{LoraConfig, TargetModules, default_alpha, default_targets};
use crate::error::LoraError;

/// Kept singular triplets per adapted module: module path (`model.layers.0.self_attn.q_proj`) →
/// `init_r` booleans, `true` where the triplet `(P[:, i], λ_i, Q[i, :])` is kept.
///
/// In memory the keys are module paths; PEFT's files key the same lists by `<path>.lora_E` (see
/// [`crate::peft::adalora`]).
pub type RankPattern = BTreeMap<String, Vec<bool>>;

/// The AdaLoRA settings (PEFT `AdaLoraConfig`; the paper is Zhang et al. 2023, arXiv:2303.10512).
///
/// Defaults are PEFT's: `init_r` 12, `target_r` 8, `tinit` 0, `tfinal` 0, `deltaT` 1,
/// `beta1` = `beta2` = 0.85, `orth_reg_weight` 0.5, `lora_alpha` 8, no dropout, targets
/// `q_proj`/`v_proj` (PEFT's Llama default).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AdaLoraConfig {
    /// Rank every adapted layer starts with (the number of singular triplets).
    #[serde(default = "default_init_r")]
    pub init_r: usize,
    /// Target average rank per adapted matrix once the budget has fallen.
    #[serde(default = "default_target_r")]
    pub target_r: usize,
    /// Steps of initial training at the full budget, before any pruning.
    #[serde(default)]
    pub tinit: usize,
    /// Steps of final training at the target budget, with the masks fixed.
    #[serde(default)]
    pub tfinal: usize,
    /// Steps between two budget allocations while the budget falls (PEFT `deltaT`).
    #[serde(rename = "deltaT", default = "default_delta_t")]
    pub delta_t: usize,
    /// EMA factor of the sensitivity `Ī` (paper eq. 5).
    #[serde(default = "default_beta")]
    pub beta1: f64,
    /// EMA factor of the uncertainty `Ū` (paper eq. 6).
    #[serde(default = "default_beta")]
    pub beta2: f64,
    /// Weight of the orthogonality penalty added to the training loss (paper eq. 4).
    #[serde(default = "default_orth")]
    pub orth_reg_weight: f64,
    /// Total optimizer steps of the run; the budget schedule ends at `total_step − tfinal`.
    /// PEFT refuses a config without it, so files always carry it.
    #[serde(default)]
    pub total_step: Option<usize>,
    /// `lora_alpha`; the update is scaled by `lora_alpha / (init_r + 1e-5)`.
    #[serde(default = "default_alpha")]
    pub lora_alpha: f64,
    /// Dropout on the adapter path's input, training only.
    #[serde(default)]
    pub lora_dropout: f64,
    /// Which linear layers receive an adapter (PEFT's matching rules, as for LoRA).
    #[serde(default = "default_targets")]
    pub target_modules: TargetModules,
    /// Only adapt layers whose index (`model.layers.<i>.`) is listed; `None` = all layers.
    #[serde(default)]
    pub layers_to_transform: Option<Vec<usize>>,
    /// The kept triplets after the last allocation; `None` before any pruning. Not serialized
    /// here: [`crate::peft::adalora`] writes it with PEFT's `<path>.lora_E` keys.
    #[serde(skip)]
    pub rank_pattern: Option<RankPattern>,
}

fn default_init_r() -> usize {
    12
}
fn default_target_r() -> usize {
    8
}
fn default_delta_t() -> usize {
    1
}
fn default_beta() -> f64 {
    0.85
}
fn default_orth() -> f64 {
    0.5
}

impl Default for AdaLoraConfig {
    fn default() -> Self {
        AdaLoraConfig {
            init_r: default_init_r(),
            target_r: default_target_r(),
            tinit: 0,
            tfinal: 0,
            delta_t: default_delta_t(),
            beta1: default_beta(),
            beta2: default_beta(),
            orth_reg_weight: default_orth(),
            total_step: None,
            lora_alpha: default_alpha(),
            lora_dropout: 0.0,
            target_modules: default_targets(),
            layers_to_transform: None,
            rank_pattern: None,
        }
    }
}

impl AdaLoraConfig {
    /// The output scale of every layer: `lora_alpha / (init_r + 1e-5)`.
    ///
    /// PEFT (`tuners/adalora/layer.py`, `SVDLinear.forward`) multiplies by
    /// `scaling / (ranknum + 1e-5)` with `scaling = lora_alpha` (or `r` when `lora_alpha ≤ 0`) and
    /// `ranknum` the layer's ORIGINAL rank: `resize_modules_by_rank_pattern` copies it back after
    /// pruning ("the scaling is exactly as the previous"), so the scale never changes.
    pub fn scaling(&self) -> f64 {
        let numerator = if self.lora_alpha > 0.0 {
            self.lora_alpha
        } else {
            self.init_r as f64
        };
        numerator / (self.init_r as f64 + 1e-5)
    }

    /// The LoRA view of this config used for target selection (`init_r` as `r`).
    pub fn targets(&self) -> LoraConfig {
        LoraConfig {
            lora_dropout: self.lora_dropout,
            layers_to_transform: self.layers_to_transform.clone(),
            ..LoraConfig::new(self.init_r, self.lora_alpha, self.target_modules.clone())
        }
    }

    /// Checks what a layer needs: `init_r ≥ 1`, a finite `lora_alpha`, dropout in `[0, 1)`, and
    /// a non-empty target list.
    ///
    /// # Errors
    /// [`LoraError::InvalidConfig`] naming the field.
    pub fn validate_layers(&self) -> Result<(), LoraError> {
        if self.init_r == 0 {
            return Err(LoraError::InvalidConfig(
                "AdaLoRA init_r must be at least 1".into(),
            ));
        }
        self.targets().validate()
    }

    /// Checks what training needs, as PEFT's `AdaLoraConfig.__post_init__` does, plus
    /// `target_r ≤ init_r` (PEFT's allocator cannot raise the budget) and `deltaT ≥ 1`.
    ///
    /// # Errors
    /// [`LoraError::InvalidConfig`] naming the field: a missing or zero `total_step`,
    /// `tinit ≥ total_step − tfinal` (no budgeting phase), betas outside (0, 1), a negative
    /// `orth_reg_weight`, `target_r > init_r`, or `deltaT = 0`.
    pub fn validate_training(&self) -> Result<(), LoraError> {
        self.validate_layers()?;
        let bad = |m: String| Err(LoraError::InvalidConfig(m));
        let Some(total) = self.total_step.filter(|t| *t > 0) else {
            return bad("AdaLoRA needs total_step > 0 (the run's number of steps)".into());
        };
        if self.tinit + self.tfinal >= total {
            return bad(format!(
                "AdaLoRA schedule leaves no budgeting phase: tinit {} + tfinal {} must be below total_step {total}; lower --tinit / --tfinal or raise --steps",
                self.tinit, self.tfinal
            ));
        }
        for (name, b) in [("beta1", self.beta1), ("beta2", self.beta2)] {
            if !(b > 0.0 && b < 1.0) {
                return bad(format!("AdaLoRA {name} must be in (0, 1), got {b}"));
            }
        }
        if !(self.orth_reg_weight.is_finite() && self.orth_reg_weight >= 0.0) {
            return bad(format!(
                "AdaLoRA orth_reg_weight must be a finite number ≥ 0, got {}",
                self.orth_reg_weight
            ));
        }
        if self.target_r > self.init_r {
            return bad(format!(
                "AdaLoRA target_r {} is above init_r {}: the budget can only fall",
                self.target_r, self.init_r
            ));
        }
        if self.delta_t == 0 {
            return bad("AdaLoRA deltaT must be at least 1".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scaling_keeps_the_original_rank_in_the_denominator() {
        let cfg = AdaLoraConfig {
            lora_alpha: 16.0,
            ..Default::default()
        };
        assert_eq!(cfg.scaling(), 16.0 / 12.00001);
        let zero_alpha = AdaLoraConfig {
            lora_alpha: 0.0,
            init_r: 4,
            ..Default::default()
        };
        assert_eq!(
            zero_alpha.scaling(),
            4.0 / 4.00001,
            "PEFT uses r when alpha ≤ 0"
        );
    }

    #[test]
    fn config_reads_peft_field_names_with_peft_defaults() {
        let cfg: AdaLoraConfig =
            serde_json::from_str(r#"{"init_r": 6, "deltaT": 3, "total_step": 50}"#).unwrap();
        assert_eq!((cfg.init_r, cfg.target_r, cfg.delta_t), (6, 8, 3));
        assert_eq!(
            (cfg.beta1, cfg.beta2, cfg.orth_reg_weight),
            (0.85, 0.85, 0.5)
        );
        let json = serde_json::to_value(&cfg).unwrap();
        assert_eq!(json["deltaT"], 3);
    }

    #[test]
    fn training_config_without_a_budgeting_phase_is_rejected() {
        let ok = AdaLoraConfig {
            total_step: Some(10),
            tinit: 3,
            tfinal: 6,
            ..Default::default()
        };
        ok.validate_training().unwrap();
        let none = AdaLoraConfig {
            tfinal: 7,
            ..ok.clone()
        };
        assert!(none.validate_training().is_err());
        let no_total = AdaLoraConfig {
            total_step: None,
            ..ok.clone()
        };
        assert!(no_total.validate_training().is_err());
        let rising = AdaLoraConfig { target_r: 13, ..ok };
        assert!(rising.validate_training().is_err());
    }
}
