//! [`LoraConfig`]: which layers get an adapter, and with which rank and scaling.
//!
//! Field names, defaults and semantics follow Hugging Face PEFT (`src/peft/tuners/lora/config.py`)
//! so the struct serializes straight into the LoRA part of an `adapter_config.json`.

use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::error::LoraError;

/// The largest rank a config may ask for: 4096 (the widest layers of open models are 16 384;
/// published LoRA ranks stay at or below a few hundred). The memory the adapters take is checked
/// separately, per model, when they are attached.
pub const MAX_RANK: usize = 4096;

/// Which linear layers receive an adapter (PEFT's `target_modules`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TargetModules {
    /// A list of names: a layer is selected when its full module path equals a name or ends with
    /// `"." + name` (so `"q_proj"` selects `model.layers.3.self_attn.q_proj`).
    Names(Vec<String>),
    /// A regular expression that must match the whole module path.
    Regex(String),
    /// `"all-linear"`: every linear layer except the output head (`lm_head`).
    AllLinear,
}

impl TargetModules {
    /// Builds a name list from string slices.
    pub fn names<S: AsRef<str>>(names: &[S]) -> Self {
        TargetModules::Names(names.iter().map(|s| s.as_ref().to_string()).collect())
    }

    /// Parses the command-line form: `all-linear`, `re:<regex>`, or a comma-separated list.
    pub fn parse_cli(s: &str) -> Self {
        let s = s.trim();
        if s == "all-linear" {
            TargetModules::AllLinear
        } else if let Some(re) = s.strip_prefix("re:") {
            TargetModules::Regex(re.to_string())
        } else {
            TargetModules::Names(
                s.split(',')
                    .map(str::trim)
                    .filter(|x| !x.is_empty())
                    .map(String::from)
                    .collect(),
            )
        }
    }
}

impl Serialize for TargetModules {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            TargetModules::Names(names) => names.serialize(serializer),
            TargetModules::Regex(re) => re.serialize(serializer),
            TargetModules::AllLinear => "all-linear".serialize(serializer),
        }
    }
}

impl<'de> Deserialize<'de> for TargetModules {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            List(Vec<String>),
            One(String),
        }
        Ok(match Raw::deserialize(deserializer)? {
            Raw::List(names) => TargetModules::Names(names),
            Raw::One(s) if s == "all-linear" => TargetModules::AllLinear,
            Raw::One(s) => TargetModules::Regex(s),
        })
    }
}

/// How `lora_A` and `lora_B` start (PEFT's `init_lora_weights`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum InitLoraWeights {
    /// PEFT's default (`true`): A ~ kaiming-uniform with a = √5, i.e. U(±1/√d_in); B = 0.
    #[default]
    Default,
    /// `"gaussian"`: A ~ N(0, (1/r)²) (standard deviation 1/r, as PEFT writes it); B = 0.
    Gaussian,
    /// `false`: A and B both random (kaiming-uniform), so the adapter is NOT a no-op at step 0.
    /// Only for tests and debugging, as in PEFT.
    Random,
}

impl Serialize for InitLoraWeights {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            InitLoraWeights::Default => serializer.serialize_bool(true),
            InitLoraWeights::Gaussian => serializer.serialize_str("gaussian"),
            InitLoraWeights::Random => serializer.serialize_bool(false),
        }
    }
}

impl<'de> Deserialize<'de> for InitLoraWeights {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Flag(bool),
            Name(String),
        }
        // Other PEFT initialisations (pissa, olora, loftq, ...) only change the starting point;
        // the saved tensors already hold the trained values, so loading treats them as Default.
        Ok(match Raw::deserialize(deserializer)? {
            Raw::Flag(true) => InitLoraWeights::Default,
            Raw::Flag(false) => InitLoraWeights::Random,
            Raw::Name(n) if n == "gaussian" => InitLoraWeights::Gaussian,
            Raw::Name(_) => InitLoraWeights::Default,
        })
    }
}

/// The LoRA hyper-parameters, with PEFT's names and defaults.
///
/// Source: PEFT `tuners/lora/config.py` (`LoraConfig`); scaling from `tuners/lora/layer.py`
/// (`update_layer`): `lora_alpha / r`, or `lora_alpha / √r` with rsLoRA (Kalajdzievski 2023,
/// arXiv:2312.03732).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LoraConfig {
    /// Rank `r` of the update `ΔW = B·A`. PEFT default 8.
    #[serde(default = "default_r")]
    pub r: usize,
    /// `lora_alpha`; the update is scaled by `lora_alpha / r`. PEFT default 8.
    #[serde(default = "default_alpha")]
    pub lora_alpha: f64,
    /// Dropout probability on the LoRA path's input, training only. PEFT default 0.
    #[serde(default)]
    pub lora_dropout: f64,
    /// Which linear layers receive an adapter.
    #[serde(default = "default_targets")]
    pub target_modules: TargetModules,
    /// Only adapt layers whose index (`model.layers.<i>.`) is listed; `None` = all layers.
    #[serde(default)]
    pub layers_to_transform: Option<Vec<usize>>,
    /// rsLoRA: scale by `lora_alpha / √r` instead of `lora_alpha / r`.
    #[serde(default)]
    pub use_rslora: bool,
    /// DoRA (Liu et al. 2024): a trainable magnitude per output unit on top of LoRA's direction,
    /// `W' = m ⊙ (W + s·A·B) / ‖W + s·A·B‖` ([`crate::dora`]). PEFT default `false`.
    #[serde(default)]
    pub use_dora: bool,
    /// How A and B start.
    #[serde(default)]
    pub init_lora_weights: InitLoraWeights,
    /// Per-module rank overrides: pattern → r (PEFT semantics: the pattern must match the end of
    /// the module path, `(.*\.)?pattern`).
    #[serde(default)]
    pub rank_pattern: BTreeMap<String, usize>,
    /// Per-module `lora_alpha` overrides, matched like `rank_pattern`.
    #[serde(default)]
    pub alpha_pattern: BTreeMap<String, f64>,
}

fn default_r() -> usize {
    8
}
/// PEFT's default `lora_alpha` (8), for LoRA and AdaLoRA.
pub(crate) fn default_alpha() -> f64 {
    8.0
}
/// PEFT's default targets for Llama models: `q_proj`, `v_proj`.
pub(crate) fn default_targets() -> TargetModules {
    TargetModules::names(&["q_proj", "v_proj"])
}

impl Default for LoraConfig {
    fn default() -> Self {
        LoraConfig {
            r: default_r(),
            lora_alpha: default_alpha(),
            lora_dropout: 0.0,
            target_modules: default_targets(),
            layers_to_transform: None,
            use_rslora: false,
            use_dora: false,
            init_lora_weights: InitLoraWeights::Default,
            rank_pattern: BTreeMap::new(),
            alpha_pattern: BTreeMap::new(),
        }
    }
}

impl LoraConfig {
    /// A config with rank `r`, `lora_alpha` and the given target names; everything else default.
    pub fn new(r: usize, lora_alpha: f64, targets: TargetModules) -> Self {
        LoraConfig {
            r,
            lora_alpha,
            target_modules: targets,
            ..Default::default()
        }
    }

    /// The scaling factor for a layer of rank `r` and alpha `alpha`: `alpha / r`, or
    /// `alpha / √r` with rsLoRA.
    pub fn scaling(&self, r: usize, alpha: f64) -> f64 {
        if self.use_rslora {
            alpha / (r as f64).sqrt()
        } else {
            alpha / r as f64
        }
    }

    /// Checks value domains.
    ///
    /// # Errors
    /// [`LoraError::InvalidConfig`] for `r = 0`, a non-finite alpha, dropout outside `[0, 1)`, an
    /// empty target list, or a zero rank in `rank_pattern`.
    pub fn validate(&self) -> Result<(), LoraError> {
        let bad = |m: String| Err(LoraError::InvalidConfig(m));
        if self.r == 0 {
            return bad("r must be at least 1".into());
        }
        if let Some((k, r)) = std::iter::once(("r", &self.r))
            .chain(self.rank_pattern.iter().map(|(k, r)| (k.as_str(), r)))
            .find(|(_, r)| **r > MAX_RANK)
        {
            return bad(format!(
                "{k} = {r} is over the limit of {MAX_RANK} (LoRA ranks are usually 4–256)"
            ));
        }
        if !self.lora_alpha.is_finite() {
            return bad(format!(
                "lora_alpha must be finite, got {}",
                self.lora_alpha
            ));
        }
        if !(0.0..1.0).contains(&self.lora_dropout) {
            return bad(format!(
                "lora_dropout must be in [0, 1), got {}",
                self.lora_dropout
            ));
        }
        if let TargetModules::Names(names) = &self.target_modules
            && names.is_empty()
        {
            return bad("target_modules is empty".into());
        }
        if let Some((k, a)) = self.alpha_pattern.iter().find(|(_, a)| !a.is_finite()) {
            return bad(format!(
                "alpha_pattern {k:?} sets lora_alpha = {a}; it must be finite"
            ));
        }
        if let Some((k, _)) = self.rank_pattern.iter().find(|(_, r)| **r == 0) {
            return bad(format!("rank_pattern {k:?} sets r = 0"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rslora_scaling_is_alpha_over_sqrt_r() {
        let cfg = LoraConfig {
            use_rslora: true,
            ..LoraConfig::new(16, 16.0, TargetModules::AllLinear)
        };
        assert_eq!(cfg.scaling(16, 16.0), 4.0);
        let plain = LoraConfig::new(8, 16.0, TargetModules::AllLinear);
        assert_eq!(plain.scaling(8, 16.0), 2.0);
    }

    #[test]
    fn target_modules_serialize_as_peft_writes_them() {
        let list: TargetModules = serde_json::from_str(r#"["q_proj","v_proj"]"#).unwrap();
        assert_eq!(list, TargetModules::names(&["q_proj", "v_proj"]));
        let all: TargetModules = serde_json::from_str(r#""all-linear""#).unwrap();
        assert_eq!(all, TargetModules::AllLinear);
        let re: TargetModules = serde_json::from_str(r#"".*q_proj""#).unwrap();
        assert_eq!(re, TargetModules::Regex(".*q_proj".into()));
        assert_eq!(
            serde_json::to_string(&TargetModules::AllLinear).unwrap(),
            r#""all-linear""#
        );
    }

    #[test]
    fn init_lora_weights_reads_peft_values() {
        let t: InitLoraWeights = serde_json::from_str("true").unwrap();
        let g: InitLoraWeights = serde_json::from_str(r#""gaussian""#).unwrap();
        let f: InitLoraWeights = serde_json::from_str("false").unwrap();
        assert_eq!(
            (t, g, f),
            (
                InitLoraWeights::Default,
                InitLoraWeights::Gaussian,
                InitLoraWeights::Random
            )
        );
    }

    #[test]
    fn zero_rank_and_bad_dropout_are_rejected() {
        assert!(
            LoraConfig::new(0, 8.0, TargetModules::AllLinear)
                .validate()
                .is_err()
        );
        let cfg = LoraConfig {
            lora_dropout: 1.0,
            ..Default::default()
        };
        assert!(cfg.validate().is_err());
    }

    #[test]
    fn cli_targets_parse() {
        assert_eq!(
            TargetModules::parse_cli("q_proj, v_proj"),
            TargetModules::names(&["q_proj", "v_proj"])
        );
        assert_eq!(
            TargetModules::parse_cli("all-linear"),
            TargetModules::AllLinear
        );
        assert_eq!(
            TargetModules::parse_cli("re:.*proj"),
            TargetModules::Regex(".*proj".into())
        );
    }
}
