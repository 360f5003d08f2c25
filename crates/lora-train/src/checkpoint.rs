//! [`RunCheckpoint`]: what lets a training run continue exactly where it stopped — the adapter
//! (PEFT format), the adapters' parameter ids (the optimizer state is keyed by them), the AdamW
//! moments, the step and the data position. The schedule is a pure function of the step and
//! dropout is seeded per step, so nothing else is needed for a bit-exact resume on the CPU.
//!
//! A checkpoint is written into `checkpoint.tmp/` and then swapped in by renames, so a crash
//! mid-write never destroys the last good one. (Not to be confused with a model checkpoint —
//! the pretrained weights `lora_models::checkpoint` reads.)

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use burn::module::ParamId;
use burn::optim::ModuleOptimizer;
use lora_core::peft::{self, AdapterConfig};
use lora_core::tensor_io::write_atomic;
use lora_core::{LoraError, LoraModel};
use lora_models::Llama;
use serde::{Deserialize, Serialize};

use crate::config::TrainConfig;
use crate::data::SamplerState;
use crate::error::TrainError;

/// Where the loop stands.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrainerState {
    /// Optimizer steps completed.
    pub step: usize,
    /// The data sampler's position.
    pub sampler: SamplerState,
}

/// The training checkpoint of a run (`<run>/checkpoint`).
#[derive(Clone, Debug)]
pub struct RunCheckpoint {
    /// `<run>/checkpoint`.
    pub dir: PathBuf,
    /// The adapter's config (written into `adapter_config.json`). An AdaLoRA adapter is saved
    /// at the full `init_r`, with no rank pattern (pruned triplets are saved with `λ = 0`), so
    /// the checkpoint computes exactly what the model does.
    pub adapter: AdapterConfig,
    /// `base_model_name_or_path` for the adapter.
    pub base_model: String,
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> TrainError + '_ {
    move |source| TrainError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Writes `value` as pretty JSON to `path`, atomically.
fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<(), TrainError> {
    let text = serde_json::to_string_pretty(value)
        .map_err(|e| TrainError::Checkpoint(format!("{}: {e}", path.display())))?;
    write_atomic(path, text.as_bytes())?;
    Ok(())
}

/// Reads `path` as JSON of type `T`.
fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T, TrainError> {
    let text = std::fs::read_to_string(path).map_err(io(path))?;
    serde_json::from_str(&text)
        .map_err(|e| TrainError::Checkpoint(format!("{}: {e}", path.display())))
}

impl RunCheckpoint {
    /// The checkpoint of the run in `run_dir`, saving adapters of `adapter`'s kind.
    pub fn new(run_dir: &Path, adapter: AdapterConfig, base_model: &str) -> Self {
        let adapter = match adapter {
            AdapterConfig::AdaLora(c) => {
                AdapterConfig::AdaLora(lora_core::adalora::AdaLoraConfig {
                    rank_pattern: None,
                    ..c
                })
            }
            lora => lora,
        };
        RunCheckpoint {
            dir: run_dir.join("checkpoint"),
            adapter,
            base_model: base_model.to_string(),
        }
    }

    /// Writes a checkpoint, replacing the previous one only once the new one is complete.
    ///
    /// # Errors
    /// [`TrainError::Io`] / [`TrainError::Checkpoint`] naming the file.
    pub fn save(
        &self,
        model: &Llama,
        optim: &ModuleOptimizer,
        state: &TrainerState,
        cfg: &TrainConfig,
    ) -> Result<(), TrainError> {
        let tmp = self.dir.with_extension("tmp");
        if tmp.exists() {
            std::fs::remove_dir_all(&tmp).map_err(io(&tmp))?;
        }
        std::fs::create_dir_all(&tmp).map_err(io(&tmp))?;
        peft::save_adapter(model, &self.adapter, &self.base_model, &tmp.join("adapter"))?;
        write_json(&tmp.join("param_ids.json"), &param_ids(model))?;
        write_json(&tmp.join("trainer_state.json"), state)?;
        let text = toml::to_string_pretty(cfg)
            .map_err(|e| TrainError::Checkpoint(format!("config: {e}")))?;
        write_atomic(&tmp.join("config.toml"), text.as_bytes())?;
        let opt_path = tmp.join("optimizer.bpk");
        optim
            .save(&opt_path)
            .map_err(|e| TrainError::Checkpoint(format!("{}: {e}", opt_path.display())))?;

        // Swap: old → .old, tmp → checkpoint, drop .old.
        let old = self.dir.with_extension("old");
        if self.dir.exists() {
            if old.exists() {
                std::fs::remove_dir_all(&old).map_err(io(&old))?;
            }
            std::fs::rename(&self.dir, &old).map_err(io(&self.dir))?;
        }
        std::fs::rename(&tmp, &self.dir).map_err(io(&tmp))?;
        if old.exists() {
            std::fs::remove_dir_all(&old).map_err(io(&old))?;
        }
        Ok(())
    }

    /// Reads the trainer state of the checkpoint (falling back to `checkpoint.old` if a crash
    /// interrupted the last swap).
    ///
    /// # Errors
    /// [`TrainError::Checkpoint`] if there is no readable checkpoint.
    pub fn load_state(&self) -> Result<TrainerState, TrainError> {
        read_json(&self.existing_dir()?.join("trainer_state.json"))
    }

    /// The adapter directory inside the checkpoint.
    ///
    /// # Errors
    /// As [`RunCheckpoint::load_state`].
    pub fn adapter_dir(&self) -> Result<PathBuf, TrainError> {
        Ok(self.existing_dir()?.join("adapter"))
    }

    fn existing_dir(&self) -> Result<PathBuf, TrainError> {
        for d in [self.dir.clone(), self.dir.with_extension("old")] {
            if d.join("trainer_state.json").exists() {
                return Ok(d);
            }
        }
        Err(TrainError::Checkpoint(format!(
            "no checkpoint in {}",
            self.dir.display()
        )))
    }

    /// Gives the loaded adapters back the parameter ids they had when saved, so the optimizer
    /// state (keyed by id) applies to them again.
    ///
    /// # Errors
    /// [`TrainError::Checkpoint`] if the saved ids do not cover exactly the adapted modules.
    pub fn restore_param_ids(&self, model: &mut Llama) -> Result<(), TrainError> {
        let path = self.existing_dir()?.join("param_ids.json");
        let ids: BTreeMap<String, Vec<u64>> = read_json(&path)?;
        let mut seen = 0;
        model.visit_adapters_mut(&mut |p, adapter| {
            let Some(saved) = ids.get(p) else {
                return Ok(());
            };
            let saved: Vec<ParamId> = saved.iter().copied().map(ParamId::from).collect();
            if !adapter.set_param_ids(&saved) {
                return Err(LoraError::InvalidConfig(format!(
                    "{}: {p} has {} saved ids, its adapter has {} tensors",
                    path.display(),
                    saved.len(),
                    adapter.param_ids().len()
                )));
            }
            seen += 1;
            Ok(())
        })?;
        if seen != ids.len() {
            return Err(TrainError::Checkpoint(format!(
                "{}: ids for {} modules, {seen} adapted",
                path.display(),
                ids.len()
            )));
        }
        Ok(())
    }

    /// Loads the AdamW state saved with the checkpoint into `optim`.
    ///
    /// # Errors
    /// [`TrainError::Checkpoint`] naming the file.
    pub fn load_optimizer(&self, optim: ModuleOptimizer) -> Result<ModuleOptimizer, TrainError> {
        let path = self.existing_dir()?.join("optimizer.bpk");
        optim
            .load(&path)
            .map_err(|e| TrainError::Checkpoint(format!("{}: {e}", path.display())))
    }
}

/// Every adapter's parameter ids by module path, as the checkpoint records them.
fn param_ids(model: &Llama) -> BTreeMap<String, Vec<u64>> {
    let mut ids = BTreeMap::new();
    model.visit_adapters(&mut |path, a| {
        ids.insert(
            path.to_string(),
            a.param_ids().into_iter().map(|id| id.val()).collect(),
        );
    });
    ids
}
