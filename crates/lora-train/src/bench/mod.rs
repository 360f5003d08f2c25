//! `burn-lora bench`: timed LoRA training steps and inference on fixed, reproducible inputs,
//! side by side with burn's own `apply_lora` and PyTorch + PEFT (`scripts/bench_peft.py`, which
//! draws the same token ids). Each configuration runs in a fresh process, so the OS's peak
//! resident memory belongs to one configuration.
//!
//! - [`suite`]: [`run_bench`], the whole comparison (rows, tables, `bench.json`);
//! - [`job`]: one configuration ([`JobSpec`]), run in a child process by [`run_one`];
//! - `train_steps` / `inference`: the timed loops; [`peft`]: the Python rows;
//! - [`gemm`]: the step's matrix products alone, ours and PyTorch's (`--parts gemm`);
//! - [`report`] and [`plot`]: rows, tables and `rank_sweep.png`.
//!
//! Timings are wall-clock seconds; [`process_cpu_seconds`] is recorded next to them because on a
//! shared machine the CPU time a step consumed is far steadier than its wall time.

pub mod gemm;
mod inference;
pub mod job;
mod machine;
mod parse;
pub mod peft;
pub mod plot;
pub mod report;
pub mod scale;
pub mod suite;
mod train_steps;

pub use inference::time_generation;
pub use job::{Implementation, JobSpec, TargetSet, TrainSettings, run_one};
pub use parse::{parse_impl, parse_list};
pub use suite::{BenchConfig, BenchOutcome, ChildCommand, SweepEval, run_bench};
pub use train_steps::{TrainTimings, time_training, trainable_params};

/// Progress of a bench job, for a progress bar: `Start`, then `Step`s, then `Done`.
#[derive(Clone, Debug)]
pub enum Progress<'a> {
    /// A job of `total` steps starts.
    Start {
        /// What is measured, e.g. `burn-lora (ours) q,v`.
        label: &'a str,
        /// Steps (or rounds) it will take.
        total: usize,
    },
    /// `done` steps are finished.
    Step {
        /// Steps finished so far.
        done: usize,
        /// The last step's numbers, for people.
        message: String,
    },
    /// The job finished.
    Done,
}

use burn::tensor::{Device, Int, Tensor, TensorData};
use serde::{Deserialize, Serialize};

/// The LCG multiplier and increment of [`bench_token_ids`] (Knuth's MMIX constants); the Python
/// side (`scripts/bench_peft.py`) uses the same ones.
const LCG: (u64, u64) = (6364136223846793005, 1442695040888963407);

/// Deterministic pseudo-random token ids, `batch` rows of `seq_len`, each in `0..vocab`.
/// Speed does not depend on the text, only on the shapes; fixed ids make runs comparable and
/// identical to the PyTorch side.
pub fn bench_token_ids(batch: usize, seq_len: usize, vocab: usize, seed: u64) -> Vec<Vec<u32>> {
    let mut state = seed;
    (0..batch)
        .map(|_| {
            (0..seq_len)
                .map(|_| {
                    state = state.wrapping_mul(LCG.0).wrapping_add(LCG.1);
                    ((state >> 33) % vocab as u64) as u32
                })
                .collect()
        })
        .collect()
}

/// `rows` as a `[B, T]` id tensor on `device`.
pub fn ids_tensor(rows: &[Vec<u32>], device: &Device) -> Tensor<2, Int> {
    let (b, t) = (rows.len(), rows.first().map_or(0, Vec::len));
    let flat: Vec<i64> = rows.iter().flatten().map(|&id| id as i64).collect();
    Tensor::from_data(TensorData::new(flat, [b, t]), device)
}

/// Median, minimum and maximum of a sample.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Stats {
    /// Median (mean of the two middle values for an even count).
    pub median: f64,
    /// Smallest value.
    pub min: f64,
    /// Largest value.
    pub max: f64,
}

impl Stats {
    /// Stats of `values` (all zero for an empty slice).
    pub fn of(values: &[f64]) -> Self {
        if values.is_empty() {
            return Stats::default();
        }
        let mut v = values.to_vec();
        v.sort_by(f64::total_cmp);
        let n = v.len();
        let median = if n % 2 == 1 {
            v[n / 2]
        } else {
            (v[n / 2 - 1] + v[n / 2]) / 2.0
        };
        Stats {
            median,
            min: v[0],
            max: v[n - 1],
        }
    }
}

/// CPU time (user + system, all threads) this process has used so far, in seconds; `None`
/// where `/proc` is missing.
pub fn process_cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15
    // (1-based), in clock ticks of 1/100 s on Linux.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / 100.0)
}

/// Resident memory of this process right now, in bytes (Linux `VmRSS`).
pub fn rss_now_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_ids_are_the_lcg_sequence_the_python_side_draws() {
        // First values of scripts/bench_peft.py's bench_token_ids(1, 4, 49152, 20240607).
        let ids = bench_token_ids(1, 4, 49152, 20240607);
        assert_eq!(ids[0], vec![1463, 47791, 17377, 3681]);
        assert!(ids[0].iter().all(|&i| i < 49152));
    }

    #[test]
    fn stats_take_the_middle_of_an_even_sample() {
        let s = Stats::of(&[4.0, 1.0, 3.0, 2.0]);
        assert_eq!((s.median, s.min, s.max), (2.5, 1.0, 4.0));
        assert_eq!(Stats::of(&[5.0, 1.0, 9.0]).median, 5.0);
    }

    #[test]
    fn cpu_time_grows_with_work() {
        let Some(t0) = process_cpu_seconds() else {
            return; // no /proc: nothing to check
        };
        let mut x = 0u64;
        let start = std::time::Instant::now();
        while start.elapsed().as_millis() < 50 {
            x = x.wrapping_add(std::hint::black_box(1));
        }
        assert!(process_cpu_seconds().unwrap() >= t0, "{x}");
    }
}
