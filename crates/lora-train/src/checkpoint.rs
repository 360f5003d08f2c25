//! Checkpoints that let a run continue exactly where it stopped: the adapter (PEFT format), the
//! adapters' parameter ids (the optimizer state is keyed by them), the AdamW moments, the step
//! and the data position. The schedule is a pure function of the step and dropout is seeded per
//! step, so nothing else is needed for a bit-exact resume on the CPU.
//!
//! A checkpoint is written into `checkpoint.tmp/` and then swapped in by renames, so a crash
//! mid-write never destroys the last good one.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use burn::module::ParamId;
use burn::optim::ModuleOptimizer;
use lora_core::adalora::AdaLoraConfig;
use lora_core::config::LoraConfig;
use lora_core::tensor_io::write_atomic;
use lora_core::{LoraModel, peft};
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

/// The checkpoint directory of a run (`<run>/checkpoint`).
#[derive(Clone, Debug)]
pub struct Checkpoint {
    /// `<run>/checkpoint`.
    pub dir: PathBuf,
    /// The adapter's config (written into `adapter_config.json`).
    pub lora: LoraConfig,
    /// `base_model_name_or_path` for the adapter.
    pub base_model: String,
    /// For AdaLoRA runs: the adapter is saved in PEFT's AdaLoRA format at the full `init_r`
    /// (no rank pattern; pruned triplets are saved with `λ = 0`), so the checkpoint computes
    /// exactly what the model does.
    pub adalora: Option<AdaLoraConfig>,
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> TrainError + '_ {
    move |source| TrainError::Io {
        path: path.to_path_buf(),
        source,
    }
}

impl Checkpoint {
    /// The checkpoint of the run in `run_dir`.
    pub fn new(run_dir: &Path, lora: LoraConfig, base_model: &str) -> Self {
        Checkpoint {
            dir: run_dir.join("checkpoint"),
            lora,
            base_model: base_model.to_string(),
            adalora: None,
        }
    }

    /// The same checkpoint, saving the model's AdaLoRA adapters with `config`.
    pub fn with_adalora(self, config: AdaLoraConfig) -> Self {
        Checkpoint {
            adalora: Some(AdaLoraConfig {
                rank_pattern: None,
                ..config
            }),
            ..self
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
        match &self.adalora {
            Some(c) => lora_core::adalora::peft_io::save_adapter(
                model,
                c,
                &self.base_model,
                &tmp.join("adapter"),
            )?,
            None => peft::save_adapter(model, &self.lora, &self.base_model, &tmp.join("adapter"))?,
        };
        let ids: BTreeMap<String, (u64, u64)> = crate::trainer::adapter_param_ids(model)
            .into_iter()
            .map(|(p, a, b)| (p, (a.val(), b.val())))
            .collect();
        let json = |v: &dyn erased::Json, name: &str| -> Result<(), TrainError> {
            let path = tmp.join(name);
            write_atomic(&path, v.to_json().as_bytes())?;
            Ok(())
        };
        json(&ids, "param_ids.json")?;
        json(state, "trainer_state.json")?;
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
        let path = self.existing_dir()?.join("trainer_state.json");
        let text = std::fs::read_to_string(&path).map_err(io(&path))?;
        serde_json::from_str(&text)
            .map_err(|e| TrainError::Checkpoint(format!("{}: {e}", path.display())))
    }

    /// The adapter directory inside the checkpoint.
    ///
    /// # Errors
    /// As [`Checkpoint::load_state`].
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
        let text = std::fs::read_to_string(&path).map_err(io(&path))?;
        let ids: BTreeMap<String, (u64, u64)> = serde_json::from_str(&text)
            .map_err(|e| TrainError::Checkpoint(format!("{}: {e}", path.display())))?;
        let mut seen = 0;
        model.visit_linears_mut(&mut |p, lin| {
            if let Some(a) = lin.adapter.as_mut()
                && let Some((ia, ib)) = ids.get(p)
            {
                a.lora_a.id = ParamId::from(*ia);
                a.lora_b.id = ParamId::from(*ib);
                seen += 1;
            }
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

mod erased {
    /// Serialize-to-JSON through a trait object.
    pub trait Json {
        fn to_json(&self) -> String;
    }
    impl<T: serde::Serialize> Json for T {
        fn to_json(&self) -> String {
            serde_json::to_string_pretty(self).unwrap_or_default()
        }
    }
}
