"""Part `gguf-quants`: reference blocks for the GGUF writer's quantizers.

The source is an [8, 512] f32 array of the cases quantizers care about. For F16, BF16, Q8_0, Q4_0 and
Q5_0 the blocks come from the `gguf` Python package (`gguf.quants.quantize`, a numpy mirror of
llama.cpp's reference kernels). gguf-py cannot quantize to Q4_K or Q6_K, so those blocks come from
llama.cpp itself: `ggml_quantize_chunk` in the `libggml-base` shared library that the PyPI package
`llama-cpp-python` builds (see scripts/check_gguf_export.sh); without it those two entries are left
out and the Rust test skips them. Where both exist, ggml's blocks are checked to equal gguf-py's.
"""

from __future__ import annotations

import ctypes
import glob
import os
from pathlib import Path

import numpy as np

from .common import log

ROWS, COLS = 8, 512  # 2 k-quant super-blocks, 16 blocks of 32 per row


def quant_source_data(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = np.empty((ROWS, COLS), dtype=np.float32)
    x[0] = rng.standard_normal(COLS) * 0.02  # a typical weight row
    x[1] = 3.0 * rng.standard_normal(COLS) + 1.5  # offset: every value positive in places
    x[2] = 0.0
    x[2, 256:] = 0.05 * rng.standard_normal(256)
    x[2, 300] = -4.0  # one outlier in a super-block, one all-zero super-block
    x[3] = rng.uniform(-2.0, 2.0, COLS)
    x[4] = np.abs(rng.standard_normal(COLS))  # all non-negative (Q4_K's min clamps to 0)
    x[5] = -np.abs(rng.standard_normal(COLS)) - 0.5  # all negative
    # Rounding ties: multiples of 1/16 with a block maximum of 8 land on half steps.
    x[6] = (rng.integers(-128, 129, COLS) / 16.0).astype(np.float32)
    x[6, ::32] = 8.0
    x[7] = rng.standard_normal(COLS) * 1e-20  # tiny values near the kernels' zero threshold
    x[7, :32] = 0.0
    x[7, 40] = 1e-3
    return x


def ggml_library() -> ctypes.CDLL | None:
    """libggml-base from the llama-cpp-python install ($LLAMA_CPP_LIB_DIR, or the default venv)."""
    dirs = [os.environ.get("LLAMA_CPP_LIB_DIR", "")]
    dirs += glob.glob(str(Path.home() / ".cache/burn-lora/llamacpp-venv/lib/python3*/site-packages/llama_cpp/lib"))
    for d in dirs:
        if d and (lib := next(iter(glob.glob(os.path.join(d, "libggml-base.so*"))), None)):
            ggml = ctypes.CDLL(lib)
            ggml.ggml_quantize_chunk.restype = ctypes.c_size_t
            ggml.ggml_quantize_chunk.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64,
                                                 ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p]
            return ggml
    return None


def ggml_quantize(ggml: ctypes.CDLL, x: np.ndarray, qtype) -> np.ndarray:
    """llama.cpp's own quantization of x (no importance matrix: the `_ref` kernels)."""
    import gguf

    block, size = gguf.GGML_QUANT_SIZES[qtype]
    rows, cols = x.shape
    out = np.zeros((rows, cols // block * size), dtype=np.uint8)
    src = np.ascontiguousarray(x, dtype=np.float32)
    n = ggml.ggml_quantize_chunk(int(qtype), src.ctypes.data, out.ctypes.data, 0, rows, cols, None)
    assert n == out.size, (n, out.size)
    return out


def make_gguf_quants_fixture(out: Path, seed: int) -> None:
    import gguf
    from gguf import GGMLQuantizationType as T
    from safetensors.numpy import save_file

    x = quant_source_data(seed)
    tensors: dict[str, np.ndarray] = {"source": x}
    for name, qt in [("f16", T.F16), ("bf16", T.BF16), ("q8_0", T.Q8_0), ("q4_0", T.Q4_0), ("q5_0", T.Q5_0)]:
        q = gguf.quants.quantize(x, qt)
        tensors[name] = np.ascontiguousarray(q.view(np.uint8).reshape(ROWS, -1))
    ggml = ggml_library()
    if ggml is None:
        log("  llama-cpp-python's libggml-base not found: Q4_K / Q6_K reference blocks left out "
            "(run scripts/check_gguf_export.sh --install first)")
    else:
        for name, qt in [("q8_0", T.Q8_0), ("q4_0", T.Q4_0), ("q5_0", T.Q5_0)]:
            same = np.array_equal(ggml_quantize(ggml, x, qt), tensors[name])
            log(f"  {name}: llama.cpp's blocks {'equal' if same else 'DIFFER FROM'} gguf-py's")
            assert same, name
        for name, qt in [("q4_k", T.Q4_K), ("q6_k", T.Q6_K)]:
            tensors[name] = ggml_quantize(ggml, x, qt)
            back = gguf.quants.dequantize(tensors[name], qt)
            log(f"  {name}: from llama.cpp, max |x - dequant(q)| = {np.abs(back - x).max():.4g}")
    save_file(tensors, str(out / "gguf-quants.safetensors"))
