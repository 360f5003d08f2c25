//! [`AdapterSet`]: several named adapters on one model, one of them active — PEFT's adapter
//! names (`PeftModel.load_adapter(dir, adapter_name)`, `set_adapter`, `disable_adapter`,
//! `add_weighted_adapter`).
//!
//! A layer has one adapter slot ([`LoraLinear::adapter`](crate::LoraLinear)); the set keeps
//! the adapters that are not active "parked" beside the model, by name and module path, and
//! switching moves them in and out of the slots (no copies, no recomputation). The active
//! adapter is the one in the model; with none active the model is the base model.

use std::collections::BTreeMap;
use std::path::Path;

use burn::tensor::Device;

use crate::adapter::Adapter;
use crate::combine::{Combination, WeightedCombination, combine_layer, combined_config};
use crate::error::LoraError;
use crate::inject::{AdaptReport, LoraModel};
use crate::lora::LoraAdapter;
use crate::peft::{self, AdapterConfig};
use crate::targets::TargetMatcher;

/// Named adapters for one model; at most one is in the model's layers (active).
#[derive(Debug, Default)]
pub struct AdapterSet {
    /// Every adapter's config, by name.
    configs: BTreeMap<String, AdapterConfig>,
    /// The adapters not in the model now: name → module path → adapter.
    parked: BTreeMap<String, BTreeMap<String, Adapter>>,
    /// The adapter in the model's layers, if any.
    active: Option<String>,
}

impl AdapterSet {
    /// An empty set (the model carries no adapter, or one the set does not manage).
    pub fn new() -> Self {
        Self::default()
    }

    /// The adapters' names, in order.
    pub fn names(&self) -> Vec<&str> {
        self.configs.keys().map(String::as_str).collect()
    }

    /// The active adapter's name; `None` when the model runs as the base model.
    pub fn active(&self) -> Option<&str> {
        self.active.as_deref()
    }

    /// The config of adapter `name`.
    pub fn config(&self, name: &str) -> Option<&AdapterConfig> {
        self.configs.get(name)
    }

    fn unknown(&self, name: &str) -> LoraError {
        LoraError::InvalidConfig(format!(
            "no adapter named {name:?}; the loaded adapters are {:?}",
            self.names()
        ))
    }

    /// Loads the PEFT adapter in `dir` as `name` (PEFT `load_adapter`). The first adapter of a
    /// set becomes active; later ones are parked and the active one stays (as in PEFT). Returns
    /// the model and what the new adapter adapts.
    ///
    /// # Errors
    /// [`LoraError::InvalidConfig`] for a name in use or a merged layer, and the errors of
    /// [`peft::load_adapter`].
    pub fn load<M: LoraModel>(
        &mut self,
        model: M,
        name: &str,
        dir: &Path,
        device: &Device,
    ) -> Result<(M, AdaptReport), LoraError> {
        if self.configs.contains_key(name) {
            return Err(LoraError::InvalidConfig(format!(
                "an adapter named {name:?} is already loaded; choose another name"
            )));
        }
        let mut model = model;
        let previous = self.active.take();
        self.park(&mut model, previous.as_deref())?;
        let (mut model, config, report) = peft::load_adapter(model, dir, device)?;
        self.configs.insert(name.to_string(), config);
        self.active = Some(name.to_string());
        if let Some(previous) = previous {
            self.set_active(&mut model, &previous)?;
        }
        Ok((model, report))
    }

    /// Makes `name` the active adapter (PEFT `set_adapter`).
    ///
    /// # Errors
    /// [`LoraError::InvalidConfig`] for an unknown name, [`LoraError::MergeState`] if the
    /// active adapter is merged (unmerge first).
    pub fn set_active<M: LoraModel>(&mut self, model: &mut M, name: &str) -> Result<(), LoraError> {
        if !self.configs.contains_key(name) {
            return Err(self.unknown(name));
        }
        if self.active.as_deref() == Some(name) {
            return Ok(());
        }
        self.disable(model)?;
        let mut layers = self.parked.remove(name).unwrap_or_default();
        model.visit_linears_mut(&mut |path, lin| match layers.remove(path) {
            Some(a) => lin.attach(a, path),
            None => Ok(()),
        })?;
        self.active = Some(name.to_string());
        Ok(())
    }

    /// Takes the active adapter out of the model, which then runs as the base model (PEFT's
    /// `disable_adapter`); [`set_active`](Self::set_active) brings any adapter back.
    ///
    /// # Errors
    /// [`LoraError::MergeState`] if the active adapter is merged (unmerge first).
    pub fn disable<M: LoraModel>(&mut self, model: &mut M) -> Result<(), LoraError> {
        let active = self.active.take();
        self.park(model, active.as_deref())
    }

    /// Moves every adapter in `model`'s layers to the parked adapters of `name` (nothing to do
    /// when no adapter is active).
    fn park<M: LoraModel>(&mut self, model: &mut M, name: Option<&str>) -> Result<(), LoraError> {
        let Some(name) = name else { return Ok(()) };
        let mut layers = BTreeMap::new();
        model.visit_linears_mut(&mut |path, lin| {
            if lin.merged {
                return Err(LoraError::MergeState {
                    path: path.into(),
                    what: "is merged; unmerge before switching adapters".into(),
                });
            }
            if let Some(a) = lin.adapter.take() {
                layers.insert(path.to_string(), a);
            }
            Ok(())
        })?;
        self.parked.insert(name.to_string(), layers);
        Ok(())
    }

    /// Adds `new_name`: the adapters `sources` combined with `request`'s weights as PEFT's
    /// `add_weighted_adapter` does (see [`crate::combine`]); the active adapter stays active.
    /// Returns the combination that ran (one source is always `linear`).
    ///
    /// # Errors
    /// [`LoraError::InvalidConfig`] for a name in use or unknown, a source that is not a plain
    /// LoRA adapter (AdaLoRA; DoRA, whose magnitude PEFT's combination would drop), and the
    /// errors of [`combined_config`] and [`combine_layer`].
    pub fn add_weighted<M: LoraModel>(
        &mut self,
        model: &mut M,
        sources: &[&str],
        request: &WeightedCombination,
        new_name: &str,
    ) -> Result<Combination, LoraError> {
        if self.configs.contains_key(new_name) {
            return Err(LoraError::InvalidConfig(format!(
                "an adapter named {new_name:?} is already loaded; choose another name"
            )));
        }
        let mut configs = Vec::new();
        for name in sources {
            let config = self.configs.get(*name).ok_or_else(|| self.unknown(name))?;
            match config {
                AdapterConfig::Lora(c) if !c.use_dora => configs.push(c),
                other => {
                    return Err(LoraError::InvalidConfig(format!(
                        "adapter {name:?} is {}: only LoRA adapters combine (PEFT's add_weighted_adapter mixes lora_A / lora_B and would drop DoRA's magnitude or AdaLoRA's λ)",
                        other.describe()
                    )));
                }
            }
        }
        let (combination, config) = combined_config(&configs, request, &model.linear_paths())?;
        let matcher = TargetMatcher::new(&config)?;
        let active = self.active.clone();
        self.disable(model)?; // every source is parked now
        let mut layers = BTreeMap::new();
        let result = model.linear_paths().iter().try_for_each(|path| {
            if !matcher.matches(path) {
                return Ok(());
            }
            let parts = sources
                .iter()
                .zip(&request.weights)
                .filter_map(|(name, w)| {
                    let a = self.parked.get(*name)?.get(path)?.as_lora()?;
                    Some((a, *w))
                })
                .collect::<Vec<_>>();
            if parts.is_empty() {
                return Err(LoraError::InvalidConfig(format!(
                    "{path}: the combined targets select this layer but no adapter to combine adapts it"
                )));
            }
            let (a, b) = combine_layer(path, &parts, combination, config.r)?;
            let adapter = LoraAdapter::from_tensors(a, b, config.lora_alpha, &config);
            layers.insert(path.clone(), Adapter::Lora(adapter));
            Ok(())
        });
        if let Some(active) = active {
            self.set_active(model, &active)?;
        }
        result?;
        self.configs
            .insert(new_name.to_string(), AdapterConfig::Lora(config));
        self.parked.insert(new_name.to_string(), layers);
        Ok(combination)
    }

    /// Saves adapter `name` as a PEFT adapter directory (it is made active for the time of the
    /// write). Returns the number of modules written.
    ///
    /// # Errors
    /// Those of [`set_active`](Self::set_active) and [`peft::save_adapter`].
    pub fn save<M: LoraModel>(
        &mut self,
        model: &mut M,
        name: &str,
        base_model: &str,
        dir: &Path,
    ) -> Result<usize, LoraError> {
        let config = self
            .configs
            .get(name)
            .cloned()
            .ok_or_else(|| self.unknown(name))?;
        let active = self.active.clone();
        self.set_active(model, name)?;
        let written = peft::save_adapter(model, &config, base_model, dir);
        match active {
            Some(a) => self.set_active(model, &a)?,
            None => self.disable(model)?,
        }
        written
    }
}
