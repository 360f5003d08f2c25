//! Helpers the examples share. None of this is LoRA logic — that lives in `lora-core`,
//! `lora-models` and `lora-train`, which the examples call directly. Here are only the chores
//! of a small teaching program: picking the device, checking a claim out loud, reading tensors
//! back to the host, a host-side singular value decomposition, and timing.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use burn::tensor::{Device, Tensor};
use lora_core::{BackendKind, select_device};

/// The device named by `--backend NAME` on the command line (default `flex`, the CPU backend).
///
/// # Errors
/// An unknown backend name, or one not compiled into this build (`cargo xtask example NAME
/// --backend wgpu` adds the feature).
pub fn device_from_args() -> Result<Device> {
    let args: Vec<String> = std::env::args().collect();
    let mut kind = BackendKind::Flex;
    for (i, a) in args.iter().enumerate() {
        let name = if a == "--backend" {
            args.get(i + 1).map(String::as_str)
        } else {
            a.strip_prefix("--backend=")
        };
        if let Some(name) = name {
            kind = name.parse()?;
        }
    }
    let device = select_device(kind)?;
    println!("backend: {kind}");
    Ok(device)
}

/// Prints `ok: what` when `holds`, otherwise fails with `CLAIM FAILED: what (detail)` — the
/// examples end with a non-zero exit status then, so one that stops showing what it claims
/// cannot go unnoticed in CI.
///
/// # Errors
/// When `holds` is false.
pub fn check(holds: bool, what: &str, detail: impl std::fmt::Display) -> Result<()> {
    if holds {
        println!("ok: {what}");
        Ok(())
    } else {
        bail!("CLAIM FAILED: {what} ({detail})")
    }
}

/// Host copy of a float tensor as `f32` (any backend, autodiff or not).
///
/// # Errors
/// If the tensor's data cannot be read as `f32`.
pub fn host<const D: usize>(t: Tensor<D>) -> Result<Vec<f32>> {
    t.into_data()
        .convert::<f32>()
        .try_to_vec::<f32>()
        .map_err(|e| anyhow::anyhow!("reading tensor data: {e:?}"))
}

/// `max |a − b|` over two equally long slices.
pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs()))
}

/// `max |a|`.
pub fn max_abs(a: &[f32]) -> f32 {
    a.iter().fold(0f32, |m, x| m.max(x.abs()))
}

/// Frobenius norm `√Σ a²`, accumulated in f64.
pub fn frobenius(a: &[f32]) -> f64 {
    a.iter().map(|&x| (x as f64).powi(2)).sum::<f64>().sqrt()
}

/// Singular values of a row-major `rows × cols` matrix, largest first, by one-sided Jacobi
/// rotations (Hestenes 1958): columns are rotated pairwise until they are mutually orthogonal;
/// their norms are then the singular values. Plain f64 on the host — fine for the `[64, 48]`
/// matrices of a teaching example, and it needs no linear-algebra feature of burn.
pub fn singular_values(m: &[f64], rows: usize, cols: usize) -> Vec<f64> {
    assert_eq!(m.len(), rows * cols, "matrix data and shape disagree");
    // Work on the orientation with fewer columns: min(rows, cols) singular values.
    let (r, c, a) = if cols <= rows {
        (rows, cols, m.to_vec())
    } else {
        let mut t = vec![0.0; m.len()];
        for i in 0..rows {
            for j in 0..cols {
                t[j * rows + i] = m[i * cols + j];
            }
        }
        (cols, rows, t)
    };
    let mut a = a;
    let col = |a: &[f64], j: usize| -> Vec<f64> { (0..r).map(|i| a[i * c + j]).collect() };
    for _sweep in 0..60 {
        let mut rotated = false;
        for p in 0..c {
            for q in p + 1..c {
                let (cp, cq) = (col(&a, p), col(&a, q));
                let alpha: f64 = cp.iter().map(|x| x * x).sum();
                let beta: f64 = cq.iter().map(|x| x * x).sum();
                let gamma: f64 = cp.iter().zip(&cq).map(|(x, y)| x * y).sum();
                if gamma.abs() <= 1e-15 * (alpha * beta).sqrt() || gamma == 0.0 {
                    continue;
                }
                rotated = true;
                // The rotation that zeroes the off-diagonal entry of the 2×2 Gram matrix.
                let zeta = (beta - alpha) / (2.0 * gamma);
                let t = zeta.signum() / (zeta.abs() + (1.0 + zeta * zeta).sqrt());
                let cos = 1.0 / (1.0 + t * t).sqrt();
                let sin = cos * t;
                for i in 0..r {
                    let (x, y) = (a[i * c + p], a[i * c + q]);
                    a[i * c + p] = cos * x - sin * y;
                    a[i * c + q] = sin * x + cos * y;
                }
            }
        }
        if !rotated {
            break;
        }
    }
    let mut s: Vec<f64> = (0..c)
        .map(|j| col(&a, j).iter().map(|x| x * x).sum::<f64>().sqrt())
        .collect();
    s.sort_by(|x, y| y.total_cmp(x));
    s
}

/// Median wall time of `runs` calls of `f`, in milliseconds, after `warmup` untimed calls.
pub fn median_ms(warmup: usize, runs: usize, mut f: impl FnMut()) -> f64 {
    for _ in 0..warmup {
        f();
    }
    let mut times: Vec<f64> = (0..runs.max(1))
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    times.sort_by(f64::total_cmp);
    times[times.len() / 2]
}

/// A fresh, empty scratch directory under the system temp directory, unique to this process.
///
/// # Errors
/// If it cannot be created.
pub fn scratch_dir(name: &str) -> Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("burn-lora-example-{name}-{}", std::process::id()));
    if dir.exists() {
        std::fs::remove_dir_all(&dir).with_context(|| format!("clearing {}", dir.display()))?;
    }
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}

/// `fixtures/` at the repository root (the tiny Llama checkpoint lives there).
pub fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("fixtures")
}

/// A small deterministic pseudo-random generator (SplitMix64) for synthetic token data, so the
/// examples print the same task on every run and backend.
#[derive(Clone, Debug)]
pub struct SplitMix64(pub u64);

impl SplitMix64 {
    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A value in `lo..hi` (`hi > lo`).
    pub fn range(&mut self, lo: u32, hi: u32) -> u32 {
        lo + (self.next_u64() % u64::from(hi - lo)) as u32
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_claim_that_does_not_hold_is_an_error_naming_it() {
        assert!(check(true, "holds", "").is_ok());
        let err = check(false, "merged equals unmerged", 0.5).unwrap_err();
        assert_eq!(
            err.to_string(),
            "CLAIM FAILED: merged equals unmerged (0.5)"
        );
    }

    #[test]
    fn singular_values_of_a_known_matrix() {
        // diag(3, 2) padded to 3 × 2, with its rows permuted: singular values 3, 2.
        let m = [0.0, 2.0, 3.0, 0.0, 0.0, 0.0];
        let s = singular_values(&m, 3, 2);
        assert!(
            (s[0] - 3.0).abs() < 1e-12 && (s[1] - 2.0).abs() < 1e-12,
            "{s:?}"
        );
        // A rank-1 outer product u·vᵀ has one singular value |u|·|v| and zeros, wide or tall.
        let (u, v) = ([1.0, 2.0], [2.0, 0.0, 1.0]);
        let outer: Vec<f64> = u
            .iter()
            .flat_map(|a| v.iter().map(move |b| a * b))
            .collect();
        let s = singular_values(&outer, 2, 3);
        let expected = 5f64.sqrt() * 5f64.sqrt();
        assert!(
            (s[0] - expected).abs() < 1e-12 && s[1].abs() < 1e-12,
            "{s:?}"
        );
    }
}
