//! The bench's list flags: `--targets qv,all`, `--impls ours,peft,…`, `--scale 1b,8b`.

use super::job::Implementation;
use crate::error::TrainError;

type Result<T> = std::result::Result<T, TrainError>;

/// Parses a comma-separated list with `parse`.
///
/// # Errors
/// The first item's error.
pub fn parse_list<T>(s: &str, parse: impl Fn(&str) -> Result<T>) -> Result<Vec<T>> {
    s.split(',')
        .map(str::trim)
        .filter(|x| !x.is_empty())
        .map(parse)
        .collect()
}

/// Parses an implementation name (`ours`, `burn`, `peft`, `ours-nf4`, `peft-nf4`).
///
/// # Errors
/// [`TrainError::Bench`] naming the unknown one.
pub fn parse_impl(s: &str) -> Result<Implementation> {
    match s {
        "ours" | "burn-lora" => Ok(Implementation::Ours),
        "burn" => Ok(Implementation::Burn),
        "peft" | "pytorch" => Ok(Implementation::Peft),
        "ours-nf4" | "qlora" => Ok(Implementation::OursNf4),
        "peft-nf4" | "qlora-peft" => Ok(Implementation::PeftNf4),
        other => Err(TrainError::Bench(format!(
            "unknown implementation {other:?}; use ours, burn, peft, ours-nf4 or peft-nf4"
        ))),
    }
}
