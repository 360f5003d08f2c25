//! Target selection: which module paths a [`LoraConfig`] adapts, exactly as PEFT decides it
//! (`peft/tuners/tuners_utils.py`, `check_target_module_exists`; `peft/utils/other.py`,
//! `get_pattern_key`).

use regex::Regex;

use crate::config::{LoraConfig, TargetModules};
use crate::error::LoraError;

/// Module paths of output heads, which `all-linear` leaves out (PEFT excludes the model's
/// output embedding layer).
pub const OUTPUT_HEADS: &[&str] = &["lm_head"];

/// Layer-container names PEFT recognizes in front of the layer index (`layers_pattern` default).
const LAYER_CONTAINERS: &[&str] = &["layers", "h", "block", "blocks", "layer"];

/// A compiled [`LoraConfig`] selection.
#[derive(Debug)]
pub struct TargetMatcher {
    targets: TargetModules,
    regex: Option<Regex>,
    layers: Option<Vec<usize>>,
    layer_index: Regex,
    rank_patterns: Vec<(Regex, usize)>,
    alpha_patterns: Vec<(Regex, f64)>,
    default_r: usize,
    default_alpha: f64,
}

fn compile(pattern: &str, anchored_suffix: bool) -> Result<Regex, LoraError> {
    let full = if anchored_suffix {
        format!(r"^(.*\.)?(?:{pattern})$")
    } else {
        format!("^(?:{pattern})$")
    };
    Regex::new(&full).map_err(|source| LoraError::BadRegex {
        pattern: pattern.to_string(),
        source,
    })
}

impl TargetMatcher {
    /// Compiles the config's regexes.
    ///
    /// # Errors
    /// [`LoraError::BadRegex`] if `target_modules` (regex form), `rank_pattern` or
    /// `alpha_pattern` holds an invalid regular expression.
    pub fn new(config: &LoraConfig) -> Result<Self, LoraError> {
        let regex = match &config.target_modules {
            TargetModules::Regex(re) => Some(compile(re, false)?),
            _ => None,
        };
        let containers = LAYER_CONTAINERS.join("|");
        let layer_index = Regex::new(&format!(r"(?:^|\.)(?:{containers})\.(\d+)(?:\.|$)"))
            .map_err(|source| LoraError::BadRegex {
                pattern: containers.clone(),
                source,
            })?;
        let rank_patterns = config
            .rank_pattern
            .iter()
            .map(|(p, r)| Ok((compile(p, true)?, *r)))
            .collect::<Result<_, LoraError>>()?;
        let alpha_patterns = config
            .alpha_pattern
            .iter()
            .map(|(p, a)| Ok((compile(p, true)?, *a)))
            .collect::<Result<_, LoraError>>()?;
        Ok(TargetMatcher {
            targets: config.target_modules.clone(),
            regex,
            layers: config.layers_to_transform.clone(),
            layer_index,
            rank_patterns,
            alpha_patterns,
            default_r: config.r,
            default_alpha: config.lora_alpha,
        })
    }

    /// The layer index in a path like `model.layers.3.mlp.up_proj` (the first number after a
    /// layer container), or `None`.
    pub fn layer_index(&self, path: &str) -> Option<usize> {
        self.layer_index
            .captures(path)
            .and_then(|c| c.get(1))
            .and_then(|m| m.as_str().parse().ok())
    }

    /// Whether `path` names an output head (excluded by `all-linear`).
    pub fn is_output_head(path: &str) -> bool {
        OUTPUT_HEADS
            .iter()
            .any(|h| path == *h || path.ends_with(&format!(".{h}")))
    }

    /// Does the target selection (ignoring `layers_to_transform`) pick `path`?
    fn name_matches(&self, path: &str) -> bool {
        match &self.targets {
            TargetModules::Names(names) => names.iter().any(|n| path_matches_name(path, n)),
            TargetModules::Regex(_) => self.regex.as_ref().is_some_and(|r| r.is_match(path)),
            TargetModules::AllLinear => !Self::is_output_head(path),
        }
    }

    /// Whether the linear layer at `path` gets an adapter.
    pub fn matches(&self, path: &str) -> bool {
        if !self.name_matches(path) {
            return false;
        }
        match &self.layers {
            None => true,
            Some(layers) => self.layer_index(path).is_some_and(|i| layers.contains(&i)),
        }
    }

    /// `(r, lora_alpha)` for the layer at `path`, after `rank_pattern` / `alpha_pattern`
    /// (the first pattern, in key order, that matches the end of the path wins).
    pub fn rank_and_alpha(&self, path: &str) -> (usize, f64) {
        let r = self
            .rank_patterns
            .iter()
            .find(|(re, _)| re.is_match(path))
            .map_or(self.default_r, |(_, r)| *r);
        let a = self
            .alpha_patterns
            .iter()
            .find(|(re, _)| re.is_match(path))
            .map_or(self.default_alpha, |(_, a)| *a);
        (r, a)
    }

    /// Checks that every entry of the target selection picks at least one of `paths`.
    ///
    /// # Errors
    /// [`LoraError::TargetMatchesNothing`] naming the first entry that selects nothing.
    pub fn check_all_used(&self, paths: &[String]) -> Result<(), LoraError> {
        let example = paths.first().cloned().unwrap_or_default();
        let selected =
            |pred: &dyn Fn(&str) -> bool| paths.iter().any(|p| pred(p) && self.matches(p));
        match &self.targets {
            TargetModules::Names(names) => {
                for name in names {
                    if !selected(&|p| path_matches_name(p, name)) {
                        return Err(LoraError::TargetMatchesNothing {
                            target: name.clone(),
                            example,
                        });
                    }
                }
            }
            TargetModules::Regex(re) => {
                if !selected(&|_| true) {
                    return Err(LoraError::TargetMatchesNothing {
                        target: re.clone(),
                        example,
                    });
                }
            }
            TargetModules::AllLinear => {
                if !selected(&|_| true) {
                    return Err(LoraError::TargetMatchesNothing {
                        target: "all-linear".into(),
                        example,
                    });
                }
            }
        }
        Ok(())
    }
}

/// PEFT's list rule: the full path equals `name` or ends with `"." + name`.
pub fn path_matches_name(path: &str, name: &str) -> bool {
    path == name
        || (path.len() > name.len()
            && path.ends_with(name)
            && path.as_bytes()[path.len() - name.len() - 1] == b'.')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn paths() -> Vec<String> {
        let mut v = Vec::new();
        for i in 0..2 {
            for m in [
                "self_attn.q_proj",
                "self_attn.k_proj",
                "self_attn.v_proj",
                "self_attn.o_proj",
                "mlp.gate_proj",
                "mlp.up_proj",
                "mlp.down_proj",
            ] {
                v.push(format!("model.layers.{i}.{m}"));
            }
        }
        v.push("lm_head".into());
        v
    }

    fn selected(cfg: &LoraConfig) -> Vec<String> {
        let m = TargetMatcher::new(cfg).unwrap();
        paths().into_iter().filter(|p| m.matches(p)).collect()
    }

    #[test]
    fn names_match_the_last_path_components() {
        let cfg = LoraConfig::new(8, 16.0, TargetModules::names(&["q_proj", "v_proj"]));
        assert_eq!(selected(&cfg).len(), 4);
        assert!(path_matches_name(
            "model.layers.0.self_attn.q_proj",
            "self_attn.q_proj"
        ));
        assert!(!path_matches_name(
            "model.layers.0.self_attn.xq_proj",
            "q_proj"
        ));
    }

    #[test]
    fn layers_to_transform_selects_by_layer_index() {
        let cfg = LoraConfig {
            layers_to_transform: Some(vec![1]),
            ..LoraConfig::new(8, 16.0, TargetModules::names(&["q_proj", "v_proj"]))
        };
        assert_eq!(
            selected(&cfg),
            vec![
                "model.layers.1.self_attn.q_proj",
                "model.layers.1.self_attn.v_proj"
            ]
        );
    }

    #[test]
    fn all_linear_leaves_out_the_output_head() {
        let cfg = LoraConfig::new(8, 16.0, TargetModules::AllLinear);
        let s = selected(&cfg);
        assert_eq!(s.len(), 14);
        assert!(!s.contains(&"lm_head".to_string()));
    }

    #[test]
    fn regex_must_match_the_whole_path() {
        let cfg = LoraConfig::new(
            8,
            16.0,
            TargetModules::Regex(r".*\.0\.mlp\.(up|down)_proj".into()),
        );
        assert_eq!(
            selected(&cfg),
            vec!["model.layers.0.mlp.up_proj", "model.layers.0.mlp.down_proj"]
        );
        let partial = LoraConfig::new(8, 16.0, TargetModules::Regex("up_proj".into()));
        assert!(selected(&partial).is_empty());
    }

    #[test]
    fn a_target_that_matches_nothing_is_an_error_naming_it() {
        let cfg = LoraConfig::new(8, 16.0, TargetModules::names(&["q_proj", "nonexistent"]));
        let m = TargetMatcher::new(&cfg).unwrap();
        let err = m.check_all_used(&paths()).unwrap_err();
        assert!(err.to_string().contains("\"nonexistent\""), "{err}");
    }

    #[test]
    fn rank_and_alpha_patterns_override_per_module() {
        let mut cfg = LoraConfig::new(8, 16.0, TargetModules::AllLinear);
        cfg.rank_pattern.insert("q_proj".into(), 4);
        cfg.alpha_pattern
            .insert(r"layers\.1\.mlp\.up_proj".into(), 2.0);
        let m = TargetMatcher::new(&cfg).unwrap();
        assert_eq!(
            m.rank_and_alpha("model.layers.0.self_attn.q_proj"),
            (4, 16.0)
        );
        assert_eq!(m.rank_and_alpha("model.layers.1.mlp.up_proj"), (8, 2.0));
        assert_eq!(m.rank_and_alpha("model.layers.0.mlp.up_proj"), (8, 16.0));
        assert_eq!(m.layer_index("model.layers.12.mlp.up_proj"), Some(12));
    }
}
