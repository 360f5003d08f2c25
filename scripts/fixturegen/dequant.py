"""Part `dequant`: a tiny GGUF file with one small tensor per storage type, and gguf-py's dequantization."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from .common import log, save_tensors, write_json


# --------------------------------------------------------------------------------------------
# 3. A tiny GGUF file with one small tensor per storage type, and gguf-py's dequantization
# --------------------------------------------------------------------------------------------

def dequant_source_data(seed: int) -> np.ndarray:
    """[4, 64] f32 values (numpy shape; GGUF lists it as [64, 4]) covering the cases quantizers care
    about: plain Gaussian, an offset row (Q4_1's min), an all-zero block (scale 0) next to a block with
    one outlier, and a uniform row."""
    rng = np.random.default_rng(seed)
    x = np.empty((4, 64), dtype=np.float32)
    x[0] = rng.standard_normal(64)
    x[1] = 3.0 * rng.standard_normal(64) + 1.5
    x[2, :32] = 0.0
    x[2, 32:] = 0.05 * rng.standard_normal(32)
    x[2, 40] = -4.0
    x[3] = rng.uniform(-2.0, 2.0, 64)
    return x.astype(np.float32)


def random_k_blocks(qtype, n_blocks: int, seed: int) -> np.ndarray:
    """Raw K-quant blocks of random bytes with sane f16 super-block scales. gguf-py cannot *quantize*
    to K types, but any byte pattern is a valid block, so this still pins down dequantization."""
    import gguf

    block_elems, block_bytes = gguf.GGML_QUANT_SIZES[qtype]
    rng = np.random.default_rng(seed)
    blocks = rng.integers(0, 256, size=(n_blocks, block_bytes), dtype=np.uint8)
    d = np.array(([0.0123, -0.0071] * n_blocks)[:n_blocks], dtype=np.float16).view(np.uint8).reshape(n_blocks, 2)
    dmin = np.full(n_blocks, 0.0045, dtype=np.float16).view(np.uint8).reshape(n_blocks, 2)
    if qtype == gguf.GGMLQuantizationType.Q4_K:  # d, dmin, scales[12], qs[128]
        blocks[:, 0:2] = d
        blocks[:, 2:4] = dmin
    elif qtype == gguf.GGMLQuantizationType.Q6_K:  # ql[128], qh[64], scales[16] (i8), d
        blocks[:, block_bytes - 2:] = d
    else:
        raise ValueError(qtype)
    assert block_elems == 256
    return blocks


def make_dequant_fixture(out: Path, seed: int) -> None:
    import gguf
    from gguf import GGMLQuantizationType as T

    x = dequant_source_data(seed)
    gguf_path = out / "dequant.gguf"

    # name -> (type, numpy data as written: float array, or uint8 raw blocks)
    tensors: list[tuple[str, T, np.ndarray]] = []
    for name, qt in [("f32", T.F32), ("f16", T.F16), ("bf16", T.BF16),
                     ("q8_0", T.Q8_0), ("q4_0", T.Q4_0), ("q4_1", T.Q4_1)]:
        tensors.append((name, qt, gguf.quants.quantize(x, qt)))
    # A 1-D tensor (like a norm weight), and random raw K-quant blocks [2, 256].
    tensors.append(("norm_f32", T.F32, x[3].copy()))
    tensors.append(("q4_k", T.Q4_K, random_k_blocks(T.Q4_K, 2, seed + 1)))
    tensors.append(("q6_k", T.Q6_K, random_k_blocks(T.Q6_K, 2, seed + 2)))

    w = gguf.GGUFWriter(str(gguf_path), arch="llama")
    w.add_uint32("llama.context_length", 128)
    w.add_float32("llama.attention.layer_norm_rms_epsilon", 1e-5)
    w.add_string("general.name", "burn-lora dequant fixture")
    w.add_array("tokenizer.ggml.tokens", ["<unk>", "hello", " world", "café", "東京"])
    w.add_bool("burn_lora.test_flag", True)
    w.add_int32("burn_lora.test_i32", -7)
    for name, qt, data in tensors:
        if qt in (T.F32, T.F16):
            w.add_tensor(name, data)  # dtype tells the writer the type
        else:
            # uint8 raw bytes; the writer derives the element shape from the byte shape
            w.add_tensor(name, data, raw_shape=data.shape, raw_dtype=qt)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()

    # Read back and dequantize with gguf-py (the reference), in file element order.
    reader = gguf.GGUFReader(str(gguf_path))
    ref: dict[str, torch.Tensor] = {}
    info = []
    for t in reader.tensors:
        deq = gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float32)
        numpy_shape = [int(s) for s in reversed(t.shape.tolist())]
        deq = deq.reshape(numpy_shape)
        ref[t.name] = torch.from_numpy(deq.copy())
        info.append({
            "name": t.name,
            "type": t.tensor_type.name,
            "type_id": int(t.tensor_type),
            "gguf_dims": [int(s) for s in t.shape.tolist()],  # fastest dimension first (ne[0], ne[1], ...)
            "numpy_shape": numpy_shape,  # row-major shape of the dequantized values
            "n_elements": int(t.n_elements),
            "n_bytes": int(t.n_bytes),
            "data_offset": int(t.data_offset),  # absolute offset in the file
        })

    # Cross-check gguf-py against the ggml formulas written out by hand (REFERENCE.md section 5).
    def blocks_of(name):
        t = next(t for t in reader.tensors if t.name == name)
        return np.asarray(t.data, dtype=np.uint8).reshape(-1, gguf.GGML_QUANT_SIZES[t.tensor_type][1])

    b = blocks_of("q8_0")
    hand = b[:, :2].copy().view(np.float16).astype(np.float32) * b[:, 2:].view(np.int8).astype(np.float32)
    assert np.array_equal(hand.reshape(-1), ref["q8_0"].numpy().reshape(-1))
    b = blocks_of("q4_0")
    d = b[:, :2].copy().view(np.float16).astype(np.float32)
    q = np.concatenate([b[:, 2:] & 0x0F, b[:, 2:] >> 4], axis=1).astype(np.float32)
    assert np.array_equal((d * (q - 8)).reshape(-1), ref["q4_0"].numpy().reshape(-1))
    b = blocks_of("q4_1")
    d = b[:, :2].copy().view(np.float16).astype(np.float32)
    m = b[:, 2:4].copy().view(np.float16).astype(np.float32)
    q = np.concatenate([b[:, 4:] & 0x0F, b[:, 4:] >> 4], axis=1).astype(np.float32)
    assert np.allclose((d * q + m).reshape(-1), ref["q4_1"].numpy().reshape(-1), rtol=0, atol=1e-6)
    assert np.array_equal(ref["f32"].numpy(), x)

    save_tensors(out / "dequant-reference.safetensors", ref)
    meta = {}
    for field in reader.fields.values():
        if field.name.startswith("GGUF."):
            continue  # reader's pseudo-fields (version, counts)
        vt = field.types[0].name if field.types else None
        if field.types and field.types[0] == gguf.GGUFValueType.ARRAY:
            vt = f"ARRAY[{field.types[-1].name}]"
        meta[field.name] = {"type": vt, "value": field.contents()}
    errors = {name: float(np.abs(ref[name].numpy() - x).max())
              for name, _, _ in tensors if name in ("f16", "bf16", "q8_0", "q4_0", "q4_1")}
    write_json(out / "dequant-reference.json", {
        "file": "dequant.gguf",
        "gguf_version": int(reader.fields["GGUF.version"].contents()),
        "alignment": int(reader.alignment),
        "metadata": meta,
        "tensors": info,
        "notes": [
            "f32, f16, bf16, q8_0, q4_0, q4_1 quantize the same [4, 64] source values with gguf.quants.quantize; "
            "their values in dequant-reference.safetensors are gguf-py's dequantization (not the source).",
            "norm_f32 is a 1-D F32 tensor equal to row 3 of the source.",
            "q4_k and q6_k are random raw blocks (2 super-blocks of 256) with fixed f16 scales: gguf-py "
            "cannot quantize to K types, but it dequantizes them.",
            "max |dequantized - source| per type: " + json.dumps(errors),
        ],
    })
    log(f"  dequant: {len(info)} tensors, max abs error vs source {errors}")
