//! `bench --parts gemm`: the matrix products of one training step, on the model's real shapes,
//! timed alone in burn (the frozen base product [`lora_core::fused::frozen_matmul`], whose flex
//! kernel is one `gemm` call per thread) and in PyTorch (`scripts/bench_gemm.py`, the same shapes
//! and thread count), and weighted by how often a step runs each.
//!
//! A SmolLM2 training step spends about two thirds of its CPU time in gemm (README, "where the
//! time goes"), so whether the step can match PyTorch's is first a question of whether the
//! products can. Each row is one product `[m, k] · [k, n]` with its count per step:
//! - the forward of each base projection, `x · W` (`m` = batch · seq_len tokens);
//! - its backward to the input, `∂y · Wᵀ` (a frozen `W` gets no gradient: no third product);
//! - attention's `Q·Kᵀ` and `P·V` per key/value head, forward, and their two input-gradient
//!   products each in backward.
//!
//! FLOPs are `2·m·k·n` per product. LoRA's own products (rank 8) are a few percent of these and
//! are left out.

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use burn::tensor::{Distribution, Tensor};
use lora_models::LlamaConfig;
use serde::{Deserialize, Serialize};

use super::Stats;

/// One matrix product of a training step: `[m, k] · [k, n]`, `count` times per step; `rhs_t`
/// when the right operand is a transposed view (the backward's `Wᵀ`, attention's `Kᵀ`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GemmShape {
    /// What it is, e.g. `gate/up fwd`.
    pub name: String,
    /// Rows of the left operand (tokens).
    pub m: usize,
    /// The contracted dimension.
    pub k: usize,
    /// Columns of the result.
    pub n: usize,
    /// Whether the right operand is read transposed (stored `[n, k]`).
    pub rhs_t: bool,
    /// How many times one training step runs it (layers × heads × projections).
    pub count: usize,
}

/// A timed shape: our and PyTorch's GFLOP/s (`None` where not measured).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct GemmRow {
    /// The product.
    #[serde(flatten)]
    pub shape: GemmShape,
    /// burn (flex) GFLOP/s, median of the repetitions.
    pub ours_gflops: f64,
    /// PyTorch GFLOP/s, median, when it ran.
    pub torch_gflops: Option<f64>,
}

/// The products of one training step of `cfg` at `tokens = batch · seq_len` (`seq_len` for the
/// attention products), all linear layers frozen, the output head included.
pub fn step_shapes(cfg: &LlamaConfig, batch: usize, seq_len: usize) -> Vec<GemmShape> {
    let (d, f, e) = (cfg.d_model, cfg.d_ff, cfg.head_dim);
    let (h, kv, layers) = (cfg.n_heads, cfg.n_kv_heads, cfg.n_layers);
    let tokens = batch * seq_len;
    let group = h / kv.max(1);
    let shape = |name: &str, m, k, n, rhs_t, count| GemmShape {
        name: name.into(),
        m,
        k,
        n,
        rhs_t,
        count,
    };
    // (name, d_in, d_out, projections of this shape per layer)
    let projections = [
        ("q", d, h * e, 1),
        ("k/v", d, kv * e, 2),
        ("o", h * e, d, 1),
        ("gate/up", d, f, 2),
        ("down", f, d, 1),
    ];
    let mut out = Vec::new();
    for (name, d_in, d_out, per_layer) in projections {
        let count = per_layer * layers;
        out.push(shape(
            &format!("{name} fwd"),
            tokens,
            d_in,
            d_out,
            false,
            count,
        ));
        out.push(shape(
            &format!("{name} bwd ∂x"),
            tokens,
            d_out,
            d_in,
            true,
            count,
        ));
    }
    // Grouped attention: per batch row and key/value head, the G query heads stacked as G·T rows.
    let heads = batch * kv * layers;
    let (rows, s) = (group * seq_len, seq_len);
    out.push(shape("Q·Kᵀ fwd", rows, e, s, true, heads));
    out.push(shape("P·V fwd", rows, s, e, false, heads));
    out.push(shape("attn bwd ∂Q", rows, s, e, false, heads));
    out.push(shape("attn bwd ∂P", rows, e, s, true, heads));
    out.push(shape("attn bwd ∂K, ∂V", s, rows, e, false, 2 * heads));
    out.push(shape("lm_head fwd", tokens, d, cfg.vocab_size, false, 1));
    out.push(shape("lm_head bwd ∂x", tokens, cfg.vocab_size, d, true, 1));
    out
}

/// GFLOP/s of `[m, k] · [k, n]` on `device` through [`lora_core::fused::frozen_matmul`], the
/// product a training step runs for every frozen weight: one warm-up product, then the median
/// over `reps` timed ones (each read back, so the time includes the whole product).
pub fn time_gemm(shape: &GemmShape, reps: usize, device: &burn::tensor::Device) -> f64 {
    let lhs = Tensor::<2>::random([shape.m, shape.k], Distribution::Default, device);
    let rhs = if shape.rhs_t {
        Tensor::<2>::random([shape.n, shape.k], Distribution::Default, device).transpose()
    } else {
        Tensor::<2>::random([shape.k, shape.n], Distribution::Default, device)
    };
    let run = || {
        let t = Instant::now();
        let y = lora_core::fused::frozen_matmul(lhs.clone(), rhs.clone());
        let _ = y.into_data();
        t.elapsed().as_secs_f64()
    };
    run();
    let times: Vec<f64> = (0..reps.max(1)).map(|_| run()).collect();
    let flops = 2.0 * (shape.m * shape.k * shape.n) as f64;
    flops / Stats::of(&times).median / 1e9
}

/// PyTorch's GFLOP/s for `shapes` (`scripts/bench_gemm.py` with `threads` intra-op threads),
/// in order, or why they could not be measured.
pub fn torch_gemm(
    python: &Path,
    script: &Path,
    shapes: &[GemmShape],
    reps: usize,
    threads: usize,
) -> Result<Vec<f64>, String> {
    let spec = serde_json::to_string(shapes).map_err(|e| e.to_string())?;
    let out = Command::new(python)
        .arg(script)
        .args([
            "--threads",
            &threads.to_string(),
            "--reps",
            &reps.to_string(),
        ])
        .arg("--shapes")
        .arg(spec)
        .output()
        .map_err(|e| format!("{}: {e}", python.display()))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        return Err(err.lines().last().unwrap_or("failed").to_string());
    }
    let values: Vec<f64> = serde_json::from_slice(&out.stdout).map_err(|e| e.to_string())?;
    if values.len() != shapes.len() {
        return Err(format!(
            "{} results for {} shapes",
            values.len(),
            shapes.len()
        ));
    }
    Ok(values)
}

/// Seconds one training step spends in these products at the measured rates: `Σ count ·
/// flops / rate`. `None` when a rate is missing.
pub fn step_seconds(rows: &[GemmRow], rate: impl Fn(&GemmRow) -> Option<f64>) -> Option<f64> {
    rows.iter()
        .map(|r| {
            let flops = 2.0 * (r.shape.m * r.shape.k * r.shape.n) as f64 * r.shape.count as f64;
            rate(r).filter(|&g| g > 0.0).map(|g| flops / (g * 1e9))
        })
        .sum()
}

/// The table: one line per product, then the step's total time in gemm for each side.
pub fn gemm_table(rows: &[GemmRow], threads: usize) -> String {
    let mut t = format!(
        "\nGEMM on the training step's shapes (flex vs PyTorch, {threads} threads; GFLOP/s, median)\n\
         {:<20} {:>6} {:>6} {:>6} {:>5} {:>9} {:>9} {:>6}\n",
        "product", "m", "k", "n", "×step", "burn", "PyTorch", "ratio"
    );
    for r in rows {
        let s = &r.shape;
        let (torch, ratio) = match r.torch_gflops {
            Some(g) => (format!("{g:.1}"), format!("{:.2}", r.ours_gflops / g)),
            None => ("–".into(), "–".into()),
        };
        t.push_str(&format!(
            "{:<20} {:>6} {:>6} {:>6} {:>5} {:>9.1} {:>9} {:>6}\n",
            s.name, s.m, s.k, s.n, s.count, r.ours_gflops, torch, ratio
        ));
    }
    let ours = step_seconds(rows, |r| Some(r.ours_gflops));
    let torch = step_seconds(rows, |r| r.torch_gflops);
    if let Some(o) = ours {
        t.push_str(&format!("gemm seconds per training step: burn {o:.2}"));
        if let Some(p) = torch {
            t.push_str(&format!(", PyTorch {p:.2} (burn/PyTorch {:.2})", o / p));
        }
        t.push('\n');
    }
    t
}

/// Repetitions per product on each side.
const REPS: usize = 5;

/// Where and how [`run_gemm_rows`] measures.
pub struct GemmRun<'a> {
    /// The model whose shapes are timed (GGUF file or Hugging Face directory).
    pub model: &'a Path,
    /// Sequences per training step.
    pub batch: usize,
    /// Tokens per sequence.
    pub seq_len: usize,
    /// The Python for the PyTorch side.
    pub python: &'a Path,
    /// Threads on both sides.
    pub threads: usize,
}

/// Times `shapes` with `reps` repetitions each: GFLOP/s in order, or why not.
pub type GemmTimer<'a> = dyn FnMut(&[GemmShape], usize) -> Result<Vec<f64>, String> + 'a;

/// The products of a training step of `run.model`, timed by `ours` (the bench runs it in a child
/// process with `run.threads` rayon threads: GFLOP/s in order) and in PyTorch when `run.python`
/// has torch. A side that fails is reported through `status`; ours failing leaves no rows.
pub fn run_gemm_rows(
    run: &GemmRun<'_>,
    ours: &mut GemmTimer<'_>,
    status: &mut dyn FnMut(&str),
) -> Vec<GemmRow> {
    let model = match model_config(run.model) {
        Ok(c) => c,
        Err(e) => {
            status(&format!("  gemm: {e}"));
            return Vec::new();
        }
    };
    let shapes = step_shapes(&model, run.batch, run.seq_len);
    status(&format!(
        "[gemm] the {} products of a training step, ours",
        shapes.len()
    ));
    let ours = match ours(&shapes, REPS) {
        Ok(v) if v.len() == shapes.len() => v,
        Ok(v) => {
            status(&format!(
                "  gemm: {} results for {} products",
                v.len(),
                shapes.len()
            ));
            return Vec::new();
        }
        Err(e) => {
            status(&format!("  gemm: {e}"));
            return Vec::new();
        }
    };
    status("[gemm] the same products in PyTorch");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/bench_gemm.py");
    let torch = torch_gemm(run.python, &script, &shapes, REPS, run.threads)
        .inspect_err(|e| status(&format!("  gemm, PyTorch side missing: {e}")))
        .ok();
    shapes
        .into_iter()
        .zip(ours)
        .enumerate()
        .map(|(i, (shape, ours_gflops))| GemmRow {
            shape,
            ours_gflops,
            torch_gflops: torch.as_ref().and_then(|t| t.get(i).copied()),
        })
        .collect()
}

/// The model's configuration, read without loading its weights.
fn model_config(path: &Path) -> Result<LlamaConfig, lora_models::ModelError> {
    if path.is_dir() {
        lora_models::checkpoint::hf::read_config(path)
    } else {
        lora_models::checkpoint::gguf::read_config(&lora_models::gguf::GgufFile::open(path)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(m: usize, k: usize, n: usize, count: usize, ours: f64, torch: Option<f64>) -> GemmRow {
        GemmRow {
            shape: GemmShape {
                name: "x".into(),
                m,
                k,
                n,
                rhs_t: false,
                count,
            },
            ours_gflops: ours,
            torch_gflops: torch,
        }
    }

    #[test]
    fn step_time_is_flops_over_rate_summed_over_the_products() {
        // 2·1000·1000·500 = 1e9 FLOPs, twice: 2 s at 1 GFLOP/s; plus 1e9 at 2 GFLOP/s = 0.5 s.
        let rows = [
            row(1000, 1000, 500, 2, 1.0, Some(4.0)),
            row(500, 1000, 1000, 1, 2.0, Some(4.0)),
        ];
        assert!((step_seconds(&rows, |r| Some(r.ours_gflops)).unwrap() - 2.5).abs() < 1e-12);
        assert!((step_seconds(&rows, |r| r.torch_gflops).unwrap() - 0.75).abs() < 1e-12);
        let missing = [row(1, 1, 1, 1, 1.0, None)];
        assert!(step_seconds(&missing, |r| r.torch_gflops).is_none());
    }

    #[test]
    fn smollm2_step_products_add_up_to_the_hand_count() {
        let cfg = LlamaConfig::smollm2_135m();
        let shapes = step_shapes(&cfg, 4, 256);
        let flops: f64 = shapes
            .iter()
            .map(|s| 2.0 * (s.m * s.k * s.n * s.count) as f64)
            .sum();
        // By hand: per token and layer the projections hold 576·(576+2·192+576+2·1536) + 1536·576
        // = 3,538,944 weights (q, k, v, o, gate, up, down): 2 FLOPs each forward, 2 backward.
        let proj = 4.0 * 1024.0 * 30.0 * 3_538_944.0;
        // Attention: 4 rows × 3 kv heads × 30 layers, each 768×64×256 products: 2 fwd + 4 bwd.
        let attn = 6.0 * 2.0 * (4 * 3 * 30) as f64 * (768 * 64 * 256) as f64;
        let head = 2.0 * 2.0 * 1024.0 * 576.0 * 49152.0;
        assert!(
            (flops - (proj + attn + head)).abs() < 1.0,
            "{flops} vs {}",
            proj + attn + head
        );
    }
}
