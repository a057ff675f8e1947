"""A one-row matrix-vector product (decode's linear layers at batch 1) as a Triton kernel beside its reference,
F.linear: the bench's section b times it against cuBLAS on the 8B shape's matrices (flashspec/bench/gemv.py),
to learn whether a kernel of our own, into which norms and activations could later be fused, reads the weights
faster than cuBLAS's split-K GEMVs do. Not yet on the model's path.

Each program owns BLOCK_N output rows and reads their whole weight rows, BLOCK_K columns at a time, into
float32 sums: no split of K, so no second reduction kernel.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
import triton
import triton.language as tl
from torch import Tensor


@triton.jit
def _gemv_kernel(x_ptr, w_ptr, out_ptr, N, K: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    acc = tl.zeros([BLOCK_N], tl.float32)
    for k0 in range(0, K, BLOCK_K):
        cols = k0 + tl.arange(0, BLOCK_K)
        x = tl.load(x_ptr + cols, mask=cols < K, other=0.0).to(tl.float32)
        w = tl.load(w_ptr + rows[:, None].to(tl.int64) * K + cols[None, :],
                    mask=(rows[:, None] < N) & (cols[None, :] < K), other=0.0).to(tl.float32)
        acc += tl.sum(w * x[None, :], 1)
    tl.store(out_ptr + rows, acc.to(out_ptr.dtype.element_ty), mask=rows < N)


@dataclass(frozen=True)
class GemvConfig:
    block_n: int = 16
    block_k: int = 512
    num_warps: int = 4
    num_stages: int = 3


def gemv_reference(x: Tensor, w: Tensor) -> Tensor:
    return F.linear(x, w)


def gemv_triton(x: Tensor, w: Tensor, config: GemvConfig = GemvConfig()) -> Tensor:
    """x [K] (or [1, K]) times w [N, K] (contiguous) -> [N] (or [1, N]), F.linear's result."""
    n, k = w.shape
    if x.numel() != k or not w.is_contiguous():
        raise ValueError(f"gemv_triton takes one row of {k} values and a contiguous [N, K] weight: got x "
                         f"{tuple(x.shape)}, w {tuple(w.shape)}")
    out = torch.empty(*x.shape[:-1], n, dtype=x.dtype, device=x.device)
    _gemv_kernel[(triton.cdiv(n, config.block_n),)](
        x.contiguous(), w, out, n, K=k, BLOCK_N=config.block_n, BLOCK_K=config.block_k,
        num_warps=config.num_warps, num_stages=config.num_stages)
    return out
