"""Decode attention over the filled part of a static KV cache: a split-KV (FlashDecoding) Triton kernel beside
its PyTorch reference.

A decoding block of n query rows in cache slots `positions` (a device tensor) attends to the cache: row i sees
the slots <= positions[i], so the block is causal within itself and the used length is max(positions) + 1.
A token tree (`paths` given: each node's ancestors, itself last, as block rows) sees the slots before the block
and its ancestors' slots, as autoregressive decoding would have laid them out: the kernel reads node i's
ancestors as if they sat in the slots right after the cache, in the tiles and splits of a one-token step at
its position, so a node's attention is the autoregressive step's to the bit (one token per program, its own
used length) and a kept path continues exactly as decoding one token at a time would have. Neither function
reads a Python number off the device, so one captured CUDA graph serves every length.

The reference runs SDPA over the whole cache behind a mask. The kernel reads only the used length: a grid of
(KV head, split, query block) programs, with the used length cut into at most `max_splits` splits of whole
key blocks (the split size follows the length, read on the device), so short contexts cost a few programs
and long ones fill the GPU; programs past the length exit at once. Each program keeps the rep = H / Hkv query
heads of its KV head together (the rows of one tl.dot), so keys and values are read once. A second kernel
combines the splits' partial softmaxes by log-sum-exp. (One launch whose last split program combined the
splits, found by an atomic ticket, and rotated q as it loaded it, measured slower on the H200: 12.7 us per
Llama-3-8B-shape layer at ~1100 cached tokens, against 5.6 + 2.1 us for these two kernels and ~1.1 us for the
q rotation as a pointwise kernel of its own; the package bench's profile, commits e5a232b and 7d3a374.)
"""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
import triton
import triton.language as tl
from torch import Tensor

PROGRAMS_PER_SM = 2  # programs of the split kernel to aim for per SM on long contexts
INTERPRETER_SMS = 4  # on the CPU (Triton's interpreter): a few splits, so tests cover their combination
MAX_BLOCK_M = 64  # query rows per program at most; a tree node's query heads must fit one program


def decode_attention_reference(
    q: Tensor, k_cache: Tensor, v_cache: Tensor, positions: Tensor, paths: Tensor | None = None
) -> Tensor:
    """q [n, H, D] in slots `positions` [n] over the cache [Hkv, S, D] -> [n, H, D]; row i sees slots <=
    positions[i], or with `paths` those before the block and its ancestors' (visible_slots)."""
    return grouped_attention(q, k_cache, v_cache, visible_slots(positions, paths, k_cache.shape[1]))


def visible_slots(positions: Tensor, paths: Tensor | None, span: int) -> Tensor:
    """[n, span] bool: the cache slots each row sees. A chain's row i: slots <= positions[i]. A tree's, whose rows
    fill the slots start .. start + n - 1 in order: the slots before start, and start + j for every block row j
    on paths[i] (its ancestors and itself)."""
    slots = torch.arange(span, device=positions.device)[None, :]
    if paths is None:
        return slots <= positions[:, None]
    n = len(positions)
    rows = torch.arange(n, device=positions.device)
    on_path = (paths[:, :, None] == rows[None, None, :]).any(1)  # [n, n]: row j is on row i's path
    rel = slots - (positions - rows)[:, None]
    return (rel < 0) | ((rel < n) & on_path.gather(1, rel.clamp(0, n - 1)))


def tree_paths(parents: Tensor) -> Tensor:
    """[n, n] int32: row i lists node i's ancestors from the root down, itself last, then -1 (parents precede
    their children; -1: a root). Python lists, then one NumPy array (not a tensor built element by element):
    it runs on the host on every tree step."""
    n, paths = len(parents), []
    for i, p in enumerate(parents.tolist()):
        paths.append([*paths[p], i] if p >= 0 else [i])
    table = np.full((n, n), -1, dtype=np.int32)
    for i, path in enumerate(paths):
        table[i, : len(path)] = path
    return torch.from_numpy(table)


def grouped_attention(q: Tensor, k_cache: Tensor, v_cache: Tensor, mask: Tensor) -> Tensor:
    """q [n, H, D] over the whole cache [Hkv, S, D] behind `mask` [n, S] -> [n, H, D]. The H / Hkv query heads
    of one KV head become that head's query rows, so keys and values are read once and never repeated."""
    n, heads, dim = q.shape
    kv_heads, span = k_cache.shape[0], k_cache.shape[1]
    rep = heads // kv_heads
    q = q.reshape(n, kv_heads, rep, dim).permute(1, 0, 2, 3).reshape(1, kv_heads, n * rep, dim)
    rows = mask[:, None, :].expand(n, rep, span).reshape(n * rep, span)
    out = F.scaled_dot_product_attention(q, k_cache[None], v_cache[None], attn_mask=rows)
    return out.view(kv_heads, n, rep, dim).permute(1, 0, 2, 3).reshape(n, heads, dim)


@triton.jit
def _split_size(pos_ptr, n, max_splits, N_P2: tl.constexpr, BLOCK_N: tl.constexpr):
    """Used length (max position + 1) and tokens per split: the length over `max_splits`, in whole blocks."""
    i = tl.arange(0, N_P2)
    used = (tl.max(tl.load(pos_ptr + i, mask=i < n, other=0), 0) + 1).to(tl.int32)
    per_split = tl.cdiv(tl.cdiv(used, max_splits), BLOCK_N) * BLOCK_N
    return used, per_split


@triton.jit
def _dot(a, b, PRECISION: tl.constexpr, UPCAST: tl.constexpr):
    if UPCAST:  # Triton's interpreter multiplies bfloat16 operands' bits as integers: give it float32
        c = tl.dot(a.to(tl.float32), b.to(tl.float32), input_precision="ieee")
    else:
        c = tl.dot(a, b, input_precision=PRECISION)
    return c


@triton.jit
def _decode_attention_split(
    q_ptr, k_ptr, v_ptr, pos_ptr, path_ptr, acc_ptr, ml_ptr, n, rep, max_splits, qk_scale,
    stride_qt, stride_qh, stride_qd, stride_kh, stride_ks, stride_kd, stride_vh, stride_vs, stride_vd,
    D: tl.constexpr, D_PAD: tl.constexpr, M_PAD: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    N_P2: tl.constexpr, PRECISION: tl.constexpr, UPCAST: tl.constexpr, TREE: tl.constexpr,
):
    """One split of one KV head for BLOCK_M query rows (row = token * rep + head within the group): the
    unnormalised output, the running max (log2 units) and the softmax sum over the split's slots. TREE: one
    token per program (axis 2), which reads the slots before the block, then its ancestors (path_ptr's row of
    block rows, itself last) as if they followed them: the tiles, splits and sums of a one-token step."""
    kvh = tl.program_id(0)
    split = tl.program_id(1)
    lane = tl.arange(0, BLOCK_M)
    if TREE:
        t = tl.program_id(2)
        rows = t * rep + lane
        token = t + lane * 0
        live = lane < rep
        first = tl.load(pos_ptr + t).to(tl.int32) - t  # the block's first slot: row i is in slot first + i
        j = tl.arange(0, N_P2)
        depth = tl.sum((tl.load(path_ptr + t * n + j, mask=j < n, other=-1) >= 0).to(tl.int32), 0)
        used = first + depth  # the one-token step's: the cache, then the path
        per_split = tl.cdiv(tl.cdiv(used, max_splits), BLOCK_N) * BLOCK_N
    else:
        rows = tl.program_id(2) * BLOCK_M + lane
        token = rows // rep
        live = rows < n * rep
        used, per_split = _split_size(pos_ptr, n, max_splits, N_P2, BLOCK_N)
        pos = tl.load(pos_ptr + token, mask=live, other=-1).to(tl.int32)  # padding rows see nothing
    lo = split * per_split
    hi = tl.minimum(lo + per_split, used)  # lo >= hi past the used length: no iterations, no stores
    head = kvh * rep + rows % rep
    d = tl.arange(0, D_PAD)
    q = tl.load(q_ptr + token[:, None] * stride_qt + head[:, None] * stride_qh + d[None, :] * stride_qd,
                mask=live[:, None] & (d[None, :] < D), other=0.0)
    k_base = k_ptr + kvh.to(tl.int64) * stride_kh
    v_base = v_ptr + kvh.to(tl.int64) * stride_vh

    m = tl.full([BLOCK_M], -float("inf"), tl.float32)
    sum_p = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, D_PAD], tl.float32)
    for start in range(lo, hi, BLOCK_N):
        slot = start + tl.arange(0, BLOCK_N)  # a tree's: where the one-token step would find them
        where = slot
        if TREE:  # the path's block rows, past the cache
            rel = slot - first
            on_path = (rel >= 0) & (rel < depth)
            where = tl.where(rel < 0, slot, first + tl.load(path_ptr + t * n + rel, mask=on_path, other=0))
            seen = live[:, None] & (slot[None, :] < hi)
        else:
            seen = (slot[None, :] <= pos[:, None]) & (slot[None, :] < hi)
        inside = (slot[:, None] < hi) & (d[None, :] < D)  # never load past the split: unused slots stay unread
        k = tl.load(k_base + where[:, None] * stride_ks + d[None, :] * stride_kd, mask=inside, other=0.0)
        v = tl.load(v_base + where[:, None] * stride_vs + d[None, :] * stride_vd, mask=inside, other=0.0)
        s = _dot(q, tl.trans(k), PRECISION, UPCAST) * qk_scale
        s = tl.where(seen, s, -float("inf"))
        m_new = tl.maximum(m, tl.max(s, 1))
        m_safe = tl.where(m_new == -float("inf"), 0.0, m_new)  # a row that has seen nothing yet stays at 0
        p = tl.exp2(s - m_safe[:, None])
        alpha = tl.exp2(m - m_safe)
        sum_p = sum_p * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None] + _dot(p.to(v.dtype), v, PRECISION, UPCAST)
        m = m_new

    # Every split writes its max (-inf where a row saw nothing, so the combination skips it); only splits
    # inside the used length write their outputs.
    part = (kvh * max_splits + split) * M_PAD + rows
    tl.store(ml_ptr + part * 2, m, mask=live)
    tl.store(ml_ptr + part * 2 + 1, sum_p, mask=live)
    inside_used = live & (lane * 0 + lo < used)  # a vector compare: the interpreter rejects scalar & vector masks
    tl.store(acc_ptr + part[:, None] * D_PAD + d[None, :], acc, mask=inside_used[:, None])


@triton.jit
def _decode_attention_combine(
    out_ptr, acc_ptr, ml_ptr, rep, max_splits, stride_ot, stride_oh,
    D: tl.constexpr, D_PAD: tl.constexpr, M_PAD: tl.constexpr, SPLITS: tl.constexpr,
):
    """One output row (token, head): the splits written by _decode_attention_split, weighted by
    log-sum-exp."""
    token = tl.program_id(0)
    head = tl.program_id(1)
    split = tl.arange(0, SPLITS)
    part = ((head // rep) * max_splits + split) * M_PAD + token * rep + head % rep
    m = tl.load(ml_ptr + part * 2)
    sum_p = tl.load(ml_ptr + part * 2 + 1)
    w = tl.exp2(m - tl.max(m, 0))  # split 0 holds slot 0, which every row sees: the max is finite
    d = tl.arange(0, D_PAD)
    acc = tl.load(acc_ptr + part[:, None] * D_PAD + d[None, :], mask=(w[:, None] > 0) & (d[None, :] < D),
                  other=0.0)
    out = tl.sum(acc * w[:, None], 0) / tl.sum(sum_p * w, 0)
    tl.store(out_ptr + token * stride_ot + head * stride_oh + d, out.to(out_ptr.dtype.element_ty), mask=d < D)


@functools.cache
def sm_count(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return INTERPRETER_SMS


def check_inputs(q: Tensor, k_cache: Tensor, v_cache: Tensor, positions: Tensor, paths: Tensor | None) -> None:
    """One clear line for each way the kernel's inputs can be wrong (host metadata only: no device reads)."""
    if q.dim() != 3 or k_cache.dim() != 3 or k_cache.shape != v_cache.shape:
        raise ValueError(f"decode attention takes q [n, H, D] and caches [Hkv, S, D] of one shape: got "
                         f"{tuple(q.shape)}, {tuple(k_cache.shape)}, {tuple(v_cache.shape)}")
    if q.shape[1] % k_cache.shape[0] or q.shape[2] != k_cache.shape[2]:
        raise ValueError(f"q {tuple(q.shape)} does not fit the cache {tuple(k_cache.shape)}: H must be a multiple "
                         "of Hkv and the head sizes must match")
    if positions.shape != (q.shape[0],) or positions.dtype not in (torch.int32, torch.int64):
        raise ValueError(f"positions must be [n] int32/int64, one per query row: got {tuple(positions.shape)} "
                         f"{positions.dtype}")
    n = len(positions)
    if paths is not None and (paths.shape != (n, n) or paths.dtype != torch.int32):
        raise ValueError(f"paths must be [n, n] int32, each query row's ancestors (tree_paths): got "
                         f"{tuple(paths.shape)} {paths.dtype} for {n} rows")
    if q.device.type == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
        raise ValueError("the Triton decode attention runs on CUDA, or on the CPU with TRITON_INTERPRET=1 set "
                         "before triton is imported: use the reference on the CPU")


def tiling(rows: int, dim: int, kv_heads: int, span: int, sms: int) -> tuple[int, ...]:
    """Padded head size, query rows and keys per block, query blocks, and splits: a power of two near
    PROGRAMS_PER_SM programs per SM over all KV heads and query blocks on a device of `sms` multiprocessors
    (H200's 132, Llama-3-8B, one row: 32 splits, so 64 tokens each at 2048 cached tokens; 8 splits at 512),
    never more than the cache has key blocks."""
    d_pad = max(16, triton.next_power_of_2(dim))  # tl.dot needs 16 or more on every side
    block_m = min(MAX_BLOCK_M, max(16, triton.next_power_of_2(rows)))
    block_n = 64 if d_pad <= 128 else 32
    m_blocks = triton.cdiv(rows, block_m)
    splits = min(PROGRAMS_PER_SM * sms // (kv_heads * m_blocks), triton.cdiv(span, block_n))
    return d_pad, block_m, block_n, m_blocks, triton.next_power_of_2(splits + 1) // 2 if splits > 1 else 1


@torch.library.custom_op("flashspec::decode_attention", mutates_args=())
def decode_attention_triton(
    q: Tensor, k_cache: Tensor, v_cache: Tensor, positions: Tensor, paths: Tensor | None = None
) -> Tensor:
    """decode_attention_reference's result, reading only the used part of the cache (see the module doc).
    A custom op, so torch.compile calls it as one opaque op instead of tracing into the launches."""
    check_inputs(q, k_cache, v_cache, positions, paths)
    return launch(q, k_cache, v_cache, positions, sm_count(q.device), upcast=q.device.type == "cpu", paths=paths)


def launch(q: Tensor, k_cache: Tensor, v_cache: Tensor, positions: Tensor, sms: int, upcast: bool,
           paths: Tensor | None = None) -> Tensor:
    """The two launches for a device of `sms` multiprocessors; `upcast`: float32 dots (the interpreter's).
    Apart from the custom op, so tests/test_verify_compile.py can record the GPU's launches on any machine.
    A tree's nodes get a one-token step's tiling each (its tile, warps and splits), one program per node."""
    n, heads, dim = q.shape
    kv_heads = k_cache.shape[0]
    rep = heads // kv_heads
    d_pad, block_m, block_n, m_blocks, max_splits = tiling((1 if paths is not None else n) * rep, dim, kv_heads,
                                                           k_cache.shape[1], sms)
    if paths is not None:
        if block_m < rep:
            raise ValueError(f"a tree's node takes one program of {block_m} rows, fewer than its {rep} query heads per "
                             "KV head: decode this model's trees on the eager path (NativeLlama.static_trees)")
        m_blocks = n
    m_pad = max(m_blocks * block_m, n * rep)
    acc = torch.empty(kv_heads, max_splits, m_pad, d_pad, dtype=torch.float32, device=q.device)
    ml = torch.empty(kv_heads, max_splits, m_pad, 2, dtype=torch.float32, device=q.device)
    out = torch.empty_like(q, memory_format=torch.contiguous_format)
    positions = positions.contiguous()
    n_p2 = triton.next_power_of_2(n)
    precision = "ieee" if q.dtype == torch.float32 else "tf32"
    qk_scale = dim**-0.5 * 1.4426950408889634  # softmax in base 2: exp(x) = exp2(x * log2(e))
    _decode_attention_split[(kv_heads, max_splits, m_blocks)](
        q, k_cache, v_cache, positions, positions if paths is None else paths.contiguous(), acc, ml, n, rep,
        max_splits, qk_scale, *q.stride(), *k_cache.stride(), *v_cache.stride(), D=dim, D_PAD=d_pad, M_PAD=m_pad,
        BLOCK_M=block_m, BLOCK_N=block_n, N_P2=n_p2, PRECISION=precision, UPCAST=upcast, TREE=paths is not None,
        num_warps=4 if block_m <= 16 else 8, num_stages=2,  # no register spills on sm_90 (ptxas, Triton 3.9)
    )
    _decode_attention_combine[(n, heads)](
        out, acc, ml, rep, max_splits, out.stride(0), out.stride(1), D=dim, D_PAD=d_pad, M_PAD=m_pad,
        SPLITS=max_splits,
    )
    return out


@decode_attention_triton.register_fake
def _(q: Tensor, k_cache: Tensor, v_cache: Tensor, positions: Tensor, paths: Tensor | None = None) -> Tensor:
    return torch.empty_like(q, memory_format=torch.contiguous_format)


IMPLEMENTATIONS = {"triton": decode_attention_triton, "reference": decode_attention_reference}


def time_decode_attention(
    n: int, lengths: Sequence[int], impl: str = "triton", heads: int = 32, kv_heads: int = 8, head_dim: int = 128,
    max_context: int = 2048, dtype: torch.dtype = torch.bfloat16, reps: int = 200,
) -> dict[int, float]:
    """Device microseconds per call of `impl` for a block of n rows ending at each of `lengths` cached tokens,
    as the engine runs it: one CUDA graph captured once, each length written into its positions tensor
    before the replays. Defaults: one layer of the Llama-3-8B shape."""
    attend = IMPLEMENTATIONS[impl]
    gen = torch.Generator(device="cuda").manual_seed(0)
    q = torch.randn(n, heads, head_dim, device="cuda", dtype=dtype, generator=gen)
    k, v = (torch.randn(kv_heads, max_context, head_dim, device="cuda", dtype=dtype, generator=gen) for _ in "kv")
    positions = torch.arange(n, device="cuda")
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # compile and warm up outside the capture
        attend(q, k, v, positions)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        attend(q, k, v, positions)
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    times = {}
    for length in lengths:
        positions.copy_(torch.arange(length - n, length))
        graph.replay()
        start.record()
        for _ in range(reps):
            graph.replay()
        end.record()
        end.synchronize()
        times[length] = start.elapsed_time(end) / reps * 1e3
    return times
