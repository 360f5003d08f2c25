#!/usr/bin/env python3
"""PyTorch's side of `burn-lora bench --parts gemm`: GFLOP/s of each matrix product.

Reads the shapes as JSON (`[{"name", "m", "k", "n", "rhs_t", "count"}, ...]`, from
`crates/lora-train/src/bench/gemm.rs`), times `lhs @ rhs` for each in f32 with the given number
of intra-op threads (one warm-up, then the median of `--reps`), and prints one JSON list of
GFLOP/s, in order. `rhs_t` means the right operand is a transposed view of an `[n, k]` tensor,
as `F.linear`'s weight is; PyTorch hands that to its BLAS as a transpose flag, not a copy.
"""

import argparse
import json
import statistics
import sys
import time

import torch


def gflops(m: int, k: int, n: int, rhs_t: bool, reps: int) -> float:
    lhs = torch.rand(m, k)
    rhs = torch.rand(n, k).t() if rhs_t else torch.rand(k, n)
    lhs @ rhs  # warm-up
    times = []
    for _ in range(max(reps, 1)):
        t = time.perf_counter()
        lhs @ rhs
        times.append(time.perf_counter() - t)
    return 2.0 * m * k * n / statistics.median(times) / 1e9


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shapes", required=True, help="JSON list of shapes")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--reps", type=int, default=5)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    shapes = json.loads(args.shapes)
    print(json.dumps([gflops(s["m"], s["k"], s["n"], s["rhs_t"], args.reps) for s in shapes]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
