"""Section b's GEMV experiment: our Triton GEMV (flashspec/models/gemv.py) against cuBLAS (F.linear) on each
linear layer of the 8B shape at batch 1, captured in CUDA graphs, each call on another copy of the weight so
that none is served from L2 (as in the step, where every layer's weights are new): µs per call and the
bandwidth it reaches. Where the Triton kernel wins, a fused GEMV (norm or activation in its prologue) can
replace cuBLAS's split-K pairs in the step; the profile says how much of the gap that would close."""

from __future__ import annotations

import itertools

import torch

from flashspec.bench.context import Bench, log
from flashspec.bench.measure import DEVICE, graph_us
from flashspec.bench.shapes import SHAPES, TARGET
from flashspec.models.gemv import GemvConfig, gemv_reference, gemv_triton

L2_FLUSH_BYTES = 256 << 20  # weight copies per matrix: at least this many bytes, five times the H200's L2
CONFIGS = [GemvConfig(block_n, block_k, warps) for block_n, block_k, warps in
           itertools.product((8, 16, 32), (256, 512), (4, 8))]


def matrices() -> dict[str, tuple[int, int]]:
    """The 8B shape's weights as the step multiplies them: [N, K], q/k/v and gate/up fused."""
    c = SHAPES[TARGET]
    d, heads, kv, ff = c["hidden_size"], c["num_attention_heads"], c["num_key_value_heads"], c["intermediate_size"]
    head = d // heads
    return {"qkv": ((heads + 2 * kv) * head, d), "o_proj": (d, d), "gate_up": (2 * ff, d), "down": (d, ff),
            "lm_head": (c["vocab_size"], d)}


def gemv(bench: Bench) -> list[dict]:
    rows = []
    for name, (n, k) in matrices().items():
        if bench.enough(30, f"gemv {name}"):
            rows.append(dict(matrix=name, n=n, k=k, mbytes=n * k * 2 / 1e6) | timed(name, n, k))
            log(f"gemv {name}: {rows[-1]}")
    return rows


def timed(name: str, n: int, k: int) -> dict:
    """cuBLAS's µs per call on [n, k] and the fastest of CONFIGS's, with the bandwidths they reach."""
    size = n * k * 2
    copies = max(1, -(-L2_FLUSH_BYTES // size))
    gen = torch.Generator(DEVICE).manual_seed(n)
    weights = [torch.randn(n, k, device=DEVICE, dtype=torch.bfloat16, generator=gen) for _ in range(copies)]
    x = torch.randn(1, k, device=DEVICE, dtype=torch.bfloat16, generator=gen)
    want = gemv_reference(x.float(), weights[0].float())
    cublas = graph_us(lambda: [gemv_reference(x, w) for w in weights]) / copies
    row, best = dict(cublas_us=cublas, cublas_tb_s=size / cublas / 1e6), None
    for config in CONFIGS:
        try:
            got = gemv_triton(x, weights[0], config)
            if ((got.float() - want).norm() / want.norm()).item() > 1e-2:
                raise ValueError("disagrees with F.linear")
            us = graph_us(lambda c=config: [gemv_triton(x, w, c) for w in weights]) / copies
        except Exception as err:  # a config the compiler refuses leaves the others
            log(f"gemv {name} {config}: {err!r}"[:300])
            continue
        if best is None or us < best[0]:
            best = (us, config)
    if best is not None:
        row |= dict(triton_us=best[0], triton_tb_s=size / best[0] / 1e6, triton_config=str(best[1]))
    return row
