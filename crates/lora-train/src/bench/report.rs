//! What `bench` reports: the rows of `bench.json` and the printed tables, with ratios to
//! PyTorch + PEFT (training) and to the base model (inference).

use std::fmt::Write as _;

use super::Stats;
use serde::Serialize;

use super::job::{Implementation, RawInference, RawTrain, TargetSet, TrainSettings};
use super::scale::{ScaleBase, ScaleShape};

const GIB: f64 = (1u64 << 30) as f64;

/// One training configuration's numbers (or why there are none).
#[derive(Clone, Debug, Serialize)]
pub struct TrainRow {
    /// Which LoRA.
    pub implementation: Implementation,
    /// Which layers.
    pub targets: TargetSet,
    /// LoRA rank.
    pub rank: usize,
    /// Tokens per step (`B·T`).
    pub tokens_per_step: usize,
    /// The summary, when the configuration ran.
    pub summary: Option<TrainSummary>,
    /// Why the row is empty (missing Python, a failed child, ...).
    pub missing: Option<String>,
    /// Every per-step number, for comparisons across commits.
    pub raw: Option<RawTrain>,
}

/// Medians (min–max) over the timed steps.
#[derive(Clone, Debug, Serialize)]
pub struct TrainSummary {
    /// Tokens per wall second.
    pub tokens_per_s: Stats,
    /// Tokens per CPU second (all threads together).
    pub tokens_per_cpu_s: Option<Stats>,
    /// Wall seconds per step.
    pub step_s: Stats,
    /// Forward + loss.
    pub forward_s: Stats,
    /// Backward.
    pub backward_s: Stats,
    /// Optimizer.
    pub optimizer_s: Stats,
    /// Peak resident memory of the process, GiB.
    pub peak_rss_gib: f64,
    /// Resident memory after loading, GiB.
    pub rss_after_load_gib: f64,
    /// Trainable values.
    pub trainable_params: usize,
    /// Loss of the first and last timed step.
    pub loss_first_last: (f64, f64),
    /// Storage of the frozen linear weights (all but `lm_head`), bits per weight.
    pub base_bits_per_weight: Option<f64>,
}

/// Tokens per second from seconds per step: the median of the rates is the rate of the median
/// step; the slowest step gives the minimum.
fn rate(tokens: usize, secs: &[f64]) -> Stats {
    let s = Stats::of(secs);
    let r = |x: f64| tokens as f64 / x.max(1e-12);
    Stats {
        median: r(s.median),
        min: r(s.max),
        max: r(s.min),
    }
}

impl TrainRow {
    /// A row from a raw result.
    pub fn from_raw(
        implementation: Implementation,
        targets: TargetSet,
        s: &TrainSettings,
        raw: RawTrain,
    ) -> Self {
        let tokens = s.batch * s.seq_len;
        let summary = TrainSummary {
            tokens_per_s: rate(tokens, &raw.step_s),
            // CPU time is counted in 10 ms ticks: a step shorter than one reads as 0.
            tokens_per_cpu_s: raw
                .cpu_s
                .iter()
                .all(|&c| c > 0.0)
                .then(|| rate(tokens, &raw.cpu_s))
                .filter(|_| !raw.cpu_s.is_empty()),
            step_s: Stats::of(&raw.step_s),
            forward_s: Stats::of(&raw.forward_s),
            backward_s: Stats::of(&raw.backward_s),
            optimizer_s: Stats::of(&raw.optimizer_s),
            peak_rss_gib: raw.peak_rss_bytes as f64 / GIB,
            rss_after_load_gib: raw.rss_after_load_bytes as f64 / GIB,
            trainable_params: raw.trainable_params,
            loss_first_last: (
                raw.losses.first().copied().unwrap_or(f64::NAN),
                raw.losses.last().copied().unwrap_or(f64::NAN),
            ),
            base_bits_per_weight: raw.base_bits_per_weight,
        };
        TrainRow {
            implementation,
            targets,
            rank: s.rank,
            tokens_per_step: tokens,
            summary: Some(summary),
            missing: None,
            raw: Some(raw),
        }
    }

    /// A row with no numbers, and why.
    pub fn missing(
        implementation: Implementation,
        targets: TargetSet,
        s: &TrainSettings,
        why: String,
    ) -> Self {
        TrainRow {
            implementation,
            targets,
            rank: s.rank,
            tokens_per_step: s.batch * s.seq_len,
            summary: None,
            missing: Some(why),
            raw: None,
        }
    }
}

/// Inference numbers per model variant.
#[derive(Clone, Debug, Serialize)]
pub struct InferenceRow {
    /// `base`, `base + adapter (unmerged)` or `merged`.
    pub variant: String,
    /// Prefill tokens per second.
    pub prefill_tokens_per_s: Stats,
    /// Decode tokens per second (one sequence).
    pub decode_tokens_per_s: Stats,
}

/// The inference section of `bench.json`.
#[derive(Clone, Debug, Serialize)]
pub struct InferenceReport {
    /// Per variant.
    pub rows: Vec<InferenceRow>,
    /// Merged over base, medians: prefill and decode (should be 1.00 ± 0.02).
    pub merged_over_base: (f64, f64),
    /// The same from the fastest round of each (less sensitive to a busy machine).
    pub merged_over_base_best: (f64, f64),
    /// Largest |logit difference| between the unmerged and merged models.
    pub merged_max_abs_logit_diff: f64,
    /// Prompt tokens.
    pub prompt_len: usize,
    /// Decoded tokens per round.
    pub decode_tokens: usize,
}

impl InferenceReport {
    /// Summarises a raw inference result.
    pub fn from_raw(raw: &RawInference) -> Self {
        let rows: Vec<InferenceRow> = raw
            .variants
            .iter()
            .map(|(name, prefill, decode)| InferenceRow {
                variant: name.clone(),
                prefill_tokens_per_s: rate(raw.prompt_len, prefill),
                decode_tokens_per_s: rate(1, decode),
            })
            .collect();
        let find = |v: &str| rows.iter().find(|r| r.variant == v);
        let ratio = |pick: fn(&Stats) -> f64| match (find("merged"), find("base")) {
            (Some(m), Some(b)) => (
                pick(&m.prefill_tokens_per_s) / pick(&b.prefill_tokens_per_s),
                pick(&m.decode_tokens_per_s) / pick(&b.decode_tokens_per_s),
            ),
            _ => (f64::NAN, f64::NAN),
        };
        let merged_over_base = ratio(|s| s.median);
        let merged_over_base_best = ratio(|s| s.max);
        InferenceReport {
            rows,
            merged_over_base,
            merged_over_base_best,
            merged_max_abs_logit_diff: raw.merged_max_abs_diff,
            prompt_len: raw.prompt_len,
            decode_tokens: raw.decode_tokens,
        }
    }
}

/// Who produced a scale row.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum ScaleImpl {
    /// burn-lora.
    #[serde(rename = "burn-lora")]
    Ours,
    /// PyTorch + PEFT (bitsandbytes for the NF4 base).
    #[serde(rename = "peft")]
    Peft,
}

impl ScaleImpl {
    /// How the table names it.
    pub fn label(self) -> &'static str {
        match self {
            ScaleImpl::Ours => "burn-lora",
            ScaleImpl::Peft => "PyTorch + PEFT",
        }
    }
}

/// One row of `bench --scale`: a shape × base × implementation (`bench.json`'s `scale`).
#[derive(Clone, Debug, Serialize)]
pub struct ScaleRow {
    /// `1b`, `3b`, `8b`.
    pub shape: ScaleShape,
    /// `f32`, `bf16`, `nf4`.
    pub base: ScaleBase,
    /// `burn-lora` or `peft`.
    #[serde(rename = "impl")]
    pub implementation: ScaleImpl,
    /// Median training tokens per wall second.
    pub tokens_per_s: Option<f64>,
    /// Peak resident memory of the process (building the model included), GiB.
    pub peak_rss_gib: Option<f64>,
    /// Storage of the frozen linear weights but `lm_head`, bits per weight.
    pub bits_per_weight: Option<f64>,
    /// Resident memory once the model is built, before the first step, GiB.
    pub rss_after_load_gib: Option<f64>,
    /// Seconds to build (draw and convert) the model.
    pub load_s: Option<f64>,
    /// Median tokens per CPU second (all threads).
    pub tokens_per_cpu_s: Option<f64>,
    /// Why there are no numbers (does not fit, no Python, a failed child).
    pub missing: Option<String>,
    /// Every per-step number.
    pub raw: Option<RawTrain>,
}

impl ScaleRow {
    /// A row from a raw result (`tokens` per step).
    pub fn from_raw(
        shape: ScaleShape,
        base: ScaleBase,
        implementation: ScaleImpl,
        tokens: usize,
        raw: RawTrain,
    ) -> Self {
        let cpu = (!raw.cpu_s.is_empty() && raw.cpu_s.iter().all(|&c| c > 0.0))
            .then(|| rate(tokens, &raw.cpu_s).median);
        ScaleRow {
            shape,
            base,
            implementation,
            tokens_per_s: Some(rate(tokens, &raw.step_s).median),
            peak_rss_gib: Some(raw.peak_rss_bytes as f64 / GIB),
            bits_per_weight: raw.base_bits_per_weight,
            rss_after_load_gib: Some(raw.rss_after_load_bytes as f64 / GIB),
            load_s: Some(raw.load_s),
            tokens_per_cpu_s: cpu,
            missing: None,
            raw: Some(raw),
        }
    }

    /// A row with no numbers, and why.
    pub fn missing(
        shape: ScaleShape,
        base: ScaleBase,
        implementation: ScaleImpl,
        why: String,
    ) -> Self {
        ScaleRow {
            shape,
            base,
            implementation,
            tokens_per_s: None,
            peak_rss_gib: None,
            bits_per_weight: None,
            rss_after_load_gib: None,
            load_s: None,
            tokens_per_cpu_s: None,
            missing: Some(why),
            raw: None,
        }
    }
}

/// The scale table: per shape × base, burn-lora and PEFT, with burn-lora's peak memory as a
/// fraction of its own f32 row and both ratios to PEFT on the same shape and base.
pub fn scale_table(rows: &[ScaleRow], s: &TrainSettings) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "Scale: random-weight Llama shapes, batch {} × {} tokens, r {}, lora_alpha {}, all-linear, gradient checkpointing {}; median of {} timed steps after {} warm-up",
        s.batch,
        s.seq_len,
        s.rank,
        s.alpha,
        if s.checkpointing { "on" } else { "off" },
        s.steps,
        s.warmup
    );
    let _ = writeln!(
        out,
        "×f32: peak memory over the same implementation's f32 row of the shape; ×PEFT: ours over PyTorch + PEFT on the same shape and base
"
    );
    let _ = writeln!(
        out,
        "{:<5} {:<5} {:<15} {:>9} {:>6} {:>9} {:>6} {:>6} {:>10} {:>7} {:>7}",
        "shape",
        "base",
        "implementation",
        "tokens/s",
        "×PEFT",
        "peak RSS",
        "×f32",
        "×PEFT",
        "after load",
        "bits/w",
        "build s"
    );
    let find = |r: &ScaleRow, base: ScaleBase, imp: ScaleImpl| {
        rows.iter()
            .find(|x| x.shape == r.shape && x.base == base && x.implementation == imp)
    };
    for r in rows {
        let (Some(tps), Some(peak)) = (r.tokens_per_s, r.peak_rss_gib) else {
            let _ = writeln!(
                out,
                "{:<5} {:<5} {:<15} {}",
                r.shape.name(),
                r.base.name(),
                r.implementation.label(),
                r.missing.as_deref().unwrap_or("no result")
            );
            continue;
        };
        let peft = (r.implementation == ScaleImpl::Ours)
            .then(|| find(r, r.base, ScaleImpl::Peft))
            .flatten();
        let f32_row = find(r, ScaleBase::F32, r.implementation).and_then(|x| x.peak_rss_gib);
        let _ = writeln!(
            out,
            "{:<5} {:<5} {:<15} {:>9.2} {:>6} {:>5.2} GiB {:>6} {:>6} {:>6.2} GiB {:>7} {:>7}",
            r.shape.name(),
            r.base.name(),
            r.implementation.label(),
            tps,
            ratio(tps, peft.and_then(|p| p.tokens_per_s)),
            peak,
            ratio(peak, f32_row),
            ratio(peak, peft.and_then(|p| p.peak_rss_gib)),
            r.rss_after_load_gib.unwrap_or(f64::NAN),
            r.bits_per_weight.map_or("–".into(), |b| format!("{b:.2}")),
            r.load_s.map_or("–".into(), |b| format!("{b:.0}"))
        );
    }
    out
}

/// One rank of `--sweep-rank`.
#[derive(Clone, Debug, Serialize)]
pub struct SweepRow {
    /// LoRA rank.
    pub rank: usize,
    /// Trainable values.
    pub trainable_params: usize,
    /// Peak resident memory, GiB.
    pub peak_rss_gib: f64,
    /// Median training tokens per second.
    pub tokens_per_s: f64,
    /// TREC accuracy after the fixed number of steps (`--eval`).
    pub accuracy: Option<f64>,
}

fn ratio(ours: f64, theirs: Option<f64>) -> String {
    match theirs {
        Some(t) if t > 0.0 => format!("{:.2}", ours / t),
        _ => "–".into(),
    }
}

/// The training table: one line per configuration, ratios to PEFT on the same target set and
/// the same kind of base (f32 rows to PEFT, NF4 rows to PEFT on a bitsandbytes NF4 base).
pub fn training_table(rows: &[TrainRow], s: &TrainSettings, header: &str) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "{header}");
    let _ = writeln!(
        out,
        "batch {} × {} tokens, r {}, lora_alpha {}, dropout 0, AdamW lr {:e}; median (min–max) of {} timed steps after {} warm-up",
        s.batch, s.seq_len, s.rank, s.alpha, s.lr, s.steps, s.warmup
    );
    let _ = writeln!(
        out,
        "×PEFT: ratio to PyTorch + PEFT on the same targets and base (NF4 rows: to PEFT + bitsandbytes NF4); tokens/s: higher is better; memory: lower is better\n"
    );
    let _ = writeln!(
        out,
        "{:<10} {:<17} {:>22} {:>6} {:>9} {:>6} {:>6} {:>6} {:>6} {:>9} {:>6} {:>10} {:>6}",
        "targets",
        "implementation",
        "tokens/s (min–max)",
        "×PEFT",
        "tok/CPU·s",
        "×PEFT",
        "fwd s",
        "bwd s",
        "opt s",
        "peak RSS",
        "×PEFT",
        "trainable",
        "bits/w"
    );
    for row in rows {
        let peft = rows
            .iter()
            .find(|r| {
                r.targets == row.targets && r.implementation == row.implementation.reference()
            })
            .and_then(|r| r.summary.as_ref());
        let Some(m) = &row.summary else {
            let _ = writeln!(
                out,
                "{:<10} {:<17} missing: {}",
                row.targets.label(),
                row.implementation.label(),
                row.missing.as_deref().unwrap_or("no result")
            );
            continue;
        };
        let cpu = m.tokens_per_cpu_s.map(|c| c.median);
        let _ = writeln!(
            out,
            "{:<10} {:<17} {:>22} {:>6} {:>9} {:>6} {:>6.2} {:>6.2} {:>6.2} {:>5.2} GiB {:>6} {:>10} {:>6}",
            row.targets.label(),
            row.implementation.label(),
            format!(
                "{:.1} ({:.1}–{:.1})",
                m.tokens_per_s.median, m.tokens_per_s.min, m.tokens_per_s.max
            ),
            ratio(m.tokens_per_s.median, peft.map(|p| p.tokens_per_s.median)),
            cpu.map_or("–".into(), |c| format!("{c:.1}")),
            cpu.map_or("–".into(), |c| ratio(
                c,
                peft.and_then(|p| p.tokens_per_cpu_s.map(|x| x.median))
            )),
            m.forward_s.median,
            m.backward_s.median,
            m.optimizer_s.median,
            m.peak_rss_gib,
            ratio(m.peak_rss_gib, peft.map(|p| p.peak_rss_gib)),
            m.trainable_params,
            m.base_bits_per_weight
                .map_or("–".into(), |b| format!("{b:.2}"))
        );
    }
    out
}

/// The inference table.
pub fn inference_table(r: &InferenceReport, adapter: &str) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "Inference: prefill {} tokens, then {} greedy decode tokens (batch 1, KV cache); median (min–max) of the rounds; adapter {adapter}\n",
        r.prompt_len, r.decode_tokens
    );
    let _ = writeln!(
        out,
        "{:<27} {:>26} {:>24}",
        "model", "prefill tokens/s", "decode tokens/s"
    );
    for row in &r.rows {
        let p = row.prefill_tokens_per_s;
        let d = row.decode_tokens_per_s;
        let _ = writeln!(
            out,
            "{:<27} {:>26} {:>24}",
            row.variant,
            format!("{:.1} ({:.1}–{:.1})", p.median, p.min, p.max),
            format!("{:.2} ({:.2}–{:.2})", d.median, d.min, d.max)
        );
    }
    let (p, d) = r.merged_over_base;
    let (pb, db) = r.merged_over_base_best;
    let _ = writeln!(
        out,
        "merged / base: prefill {p:.2}, decode {d:.2} (medians); {pb:.2}, {db:.2} (fastest rounds); expected 1.00 ± 0.02 (over the default 7 rounds; fewer are noisier)\nmax |logit difference| merged vs unmerged: {:.1e}",
        r.merged_max_abs_logit_diff
    );
    out
}

/// The rank-sweep table.
pub fn sweep_table(rows: &[SweepRow], targets: TargetSet) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "Rank sweep (ours, {}):\n", targets.label());
    let _ = writeln!(
        out,
        "{:>5} {:>12} {:>10} {:>10} {:>10}",
        "rank", "trainable", "peak RSS", "tokens/s", "accuracy"
    );
    for r in rows {
        let _ = writeln!(
            out,
            "{:>5} {:>12} {:>6.2} GiB {:>10.1} {:>10}",
            r.rank,
            r.trainable_params,
            r.peak_rss_gib,
            r.tokens_per_s,
            r.accuracy
                .map_or("–".into(), |a| format!("{:.1} %", 100.0 * a))
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_of_the_slowest_step_is_the_minimum() {
        let r = rate(1000, &[2.0, 4.0, 1.0]);
        assert_eq!((r.median, r.min, r.max), (500.0, 250.0, 1000.0));
    }

    #[test]
    fn ratio_without_a_reference_is_a_dash() {
        assert_eq!(ratio(2.0, None), "–");
        assert_eq!(ratio(3.0, Some(2.0)), "1.50");
    }
}
