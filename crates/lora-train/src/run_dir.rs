//! [`RunDir`]: a run's directory — created fresh, or reopened to resume (with the saved
//! settings checked against the new ones) — and [`timestamped_dir`], the default name.

use std::path::{Path, PathBuf};

use crate::config::TrainConfig;
use crate::error::TrainError;

/// `runs/<prefix>-<unix seconds>`: the default directory of a run or a benchmark (not created
/// here).
pub fn timestamped_dir(prefix: &str) -> PathBuf {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    PathBuf::from("runs").join(format!("{prefix}-{secs}"))
}

/// The directory a run writes into: a new one, or one being resumed.
#[derive(Clone, Debug)]
pub struct RunDir {
    path: PathBuf,
    resuming: bool,
}

pub(crate) fn io(path: &Path) -> impl Fn(std::io::Error) -> TrainError + '_ {
    move |source| TrainError::Io {
        path: path.to_path_buf(),
        source,
    }
}

impl RunDir {
    /// A new run directory at `path` (default `runs/run-<unix seconds>`), created; it must not
    /// exist yet or be empty, so no earlier run is ever overwritten.
    ///
    /// # Errors
    /// [`TrainError::Config`] if it already holds files, [`TrainError::Io`] if it cannot be
    /// created.
    pub fn create(path: Option<&Path>) -> Result<Self, TrainError> {
        let path = path.map_or_else(|| timestamped_dir("run"), Path::to_path_buf);
        let holds_files = path.exists()
            && std::fs::read_dir(&path)
                .map(|mut d| d.next().is_some())
                .unwrap_or(true);
        if holds_files {
            return Err(TrainError::Config(format!(
                "{} already holds files (another run?); nothing was overwritten. Choose a new --out, or continue it with --resume {}",
                path.display(),
                path.display()
            )));
        }
        std::fs::create_dir_all(&path).map_err(io(&path))?;
        Ok(RunDir {
            path,
            resuming: false,
        })
    }

    /// An existing run directory to continue from its last checkpoint.
    ///
    /// # Errors
    /// [`TrainError::Config`] if `path` holds no `config.toml` (it is not a run directory).
    pub fn resume(path: &Path) -> Result<Self, TrainError> {
        if !path.join("config.toml").exists() {
            return Err(TrainError::Config(format!(
                "{} is not a run directory (no config.toml) — nothing to resume",
                path.display()
            )));
        }
        Ok(RunDir {
            path: path.to_path_buf(),
            resuming: true,
        })
    }

    /// Where the run's files go.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether this run continues an earlier one.
    pub fn is_resume(&self) -> bool {
        self.resuming
    }

    /// The config the run was started with (`config.toml`), as a layer for
    /// [`TrainConfig::layered`].
    ///
    /// # Errors
    /// As [`TrainConfig::read_table`].
    pub fn saved_config(&self) -> Result<toml::Table, TrainError> {
        TrainConfig::read_table(&self.path.join("config.toml"))
    }

    /// Checks that `cfg` continues the run saved here: a resumed run may run longer or report
    /// differently, but a setting that shapes the adapter, the model, the data or the
    /// optimizer must be the saved one (see [`TrainConfig::resume_conflicts`]).
    ///
    /// # Errors
    /// [`TrainError::Config`] listing every contradicting setting with its saved and given
    /// value, or the saved config's own error.
    pub fn check_same_run(&self, cfg: &TrainConfig) -> Result<(), TrainError> {
        let path = self.path.join("config.toml");
        let source = path.display().to_string();
        let saved = TrainConfig::layered(&[(source.as_str(), self.saved_config()?)])?;
        let conflicts = cfg.resume_conflicts(&saved)?;
        if conflicts.is_empty() {
            return Ok(());
        }
        Err(TrainError::Config(format!(
            "--resume {}: the given settings contradict the saved run ({}); a resumed run keeps its settings (only {} may change): drop those flags, or start a new run with --out",
            self.path.display(),
            conflicts.join("; "),
            crate::config::RESUMABLE_SETTINGS.join(", ")
        )))
    }
}
