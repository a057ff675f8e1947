"""Token-tree verification as one Triton kernel: the semantics and random numbers of `verify_tree_reference`.

Grid (N+1 rows, chunks of V). As in the chain kernel (triton_kernel.py, whose building blocks this reuses),
each program reduces its chunk of one logit row, the last chunk of a row to finish finds the row's statistics
(max, mass, top-k/top-p threshold, argmax), and the last row to finish walks the tree:

* greedy: one scan over the nodes (parents precede children) marks the nodes whose whole path matches the
  argmax and keeps the deepest; its ancestors are the path.
* sampling: one scan over the nodes meets the children of each newly accepted node in order (recursive
  rejection sampling). The residual lives in a [V] workspace, unnormalised, with its mass in a register:
  p is written there when a node is accepted, max(r / |r| - q, 0) when a child is rejected.

The walk is sequential and runs in one program: at most N + 1 passes over V, small next to the target
forward that produced the logits. Non-finite logits are the caller's check (the engine's one host sync).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from flashspec.verify.tree import check_parents, check_tree_inputs
from flashspec.verify.triton_kernel import (
    GPU,
    INTERPRETER,
    Launch,
    Launcher,
    Tuning,
    _arrive_last,
    _exp,
    _finish_row,
    _first_above,
    _store_chunk_stats,
    check_compiles,
    no_capture,
    plan_key,
    pow2,
)


@triton.jit
def _write_p(logits_ptr, stats_ptr, row, buf_ptr, T, V: tl.constexpr, BLOCK_V: tl.constexpr):
    """buf <- p of `row`, as the chain kernel computes it from the row's statistics (zm, 1 / mass, tau)."""
    zm = tl.load(stats_ptr + row * 3, cache_modifier=".cg").to(tl.float32)
    inv_mass = tl.load(stats_ptr + row * 3 + 1, cache_modifier=".cg").to(tl.float32)
    tau = tl.load(stats_ptr + row * 3 + 2, cache_modifier=".cg").to(tl.float32)
    x_row = logits_ptr + row * V  # (N + 1) * V < 2**31: trees are small
    for off in range(0, V, BLOCK_V):
        offs = off + tl.arange(0, BLOCK_V)
        x = tl.load(x_row + offs, mask=offs < V, other=-float("inf")).to(tl.float32)
        tl.store(buf_ptr + offs, tl.where(x >= tau, _exp(x, zm, T) * inv_mass, 0.0), mask=offs < V)
    tl.debug_barrier()  # the next reads of buf may come from other threads of this program


@triton.jit
def _residual_pass(buf_ptr, q_row, x_c, mass, WRITE: tl.constexpr, V: tl.constexpr,
                   STOCHASTIC: tl.constexpr, BLOCK_V: tl.constexpr):
    """Mass (float64) of max(buf / mass - q, 0) (q one-hot at x_c when deterministic); with WRITE, also
    store it. IEEE divisions, as the reference's."""
    total = tl.full([], 0, tl.float64)
    for off in range(0, V, BLOCK_V):
        offs = off + tl.arange(0, BLOCK_V)
        r = tl.load(buf_ptr + offs, mask=offs < V, other=0.0)
        if STOCHASTIC:
            q = tl.load(q_row + offs, mask=offs < V, other=0.0).to(tl.float32)
        else:
            q = tl.where(offs == x_c, 1.0, 0.0)
        res = tl.maximum(tl.math.div_rn(r, mass) - q, 0.0)
        total += tl.sum(res, 0, dtype=tl.float64)
        if WRITE:
            tl.store(buf_ptr + offs, res, mask=offs < V)
    tl.debug_barrier()
    return total


@triton.jit
def _sample_buffer(buf_ptr, u, bsum_ptr, V: tl.constexpr, BLOCK_V: tl.constexpr, NBLK_P2: tl.constexpr):
    """Inverse-CDF sample of the (unnormalised) buffer: block sums, then one block; cumulative sums in
    float64, as the reference's."""
    for off in range(0, V, BLOCK_V):
        offs = off + tl.arange(0, BLOCK_V)
        r = tl.load(buf_ptr + offs, mask=offs < V, other=0.0)
        tl.store(bsum_ptr + off // BLOCK_V, tl.sum(r, 0, dtype=tl.float64))
    tl.debug_barrier()
    k = tl.arange(0, NBLK_P2)
    bs = tl.load(bsum_ptr + k, mask=k < tl.cdiv(V, BLOCK_V), other=0.0)
    bcdf = tl.cumsum(bs, 0)
    x = u.to(tl.float64) * tl.max(bcdf, 0)
    blk = _first_above(bcdf, bs, x, NBLK_P2)
    carry = tl.sum(tl.where(k == blk - 1, bcdf, 0.0), 0)
    offs = blk * BLOCK_V + tl.arange(0, BLOCK_V)
    r = tl.load(buf_ptr + offs, mask=offs < V, other=0.0)
    return blk * BLOCK_V + _first_above(carry + tl.cumsum(r, 0, dtype=tl.float64), r, x, BLOCK_V)


@triton.jit
def _sample_walk(logits_ptr, tokens_ptr, parents_ptr, probs_ptr, uniforms_ptr, stats_ptr, buf_ptr, bsum_ptr,
                 N, T, V: tl.constexpr, STOCHASTIC: tl.constexpr, BLOCK_V: tl.constexpr,
                 NBLK_P2: tl.constexpr, N_P2: tl.constexpr):
    """Recursive rejection sampling; returns the path ([N_P2], -1 padded), its length and the final token."""
    i = tl.arange(0, N_P2)
    path = tl.full([N_P2], -1, tl.int32)
    n = 0
    node = -1
    mass = 1.0
    _write_p(logits_ptr, stats_ptr, 0, buf_ptr, T, V, BLOCK_V)
    for c in range(N_P2):  # a constexpr bound: one compilation per power of two of the tree size
        if (c < N) & (tl.load(parents_ptr + c, mask=c < N, other=-2) == node):
            x_c = tl.load(tokens_ptr + c)
            q_row = probs_ptr + c * V
            if STOCHASTIC:
                q_x = tl.load(q_row + x_c).to(tl.float32)
            else:
                q_x = 1.0
            if tl.load(uniforms_ptr + c) * q_x < tl.math.div_rn(tl.load(buf_ptr + x_c), mass):
                path = tl.where(i == n, c, path)
                n += 1
                node = c
                mass = 1.0
                _write_p(logits_ptr, stats_ptr, c + 1, buf_ptr, T, V, BLOCK_V)
            else:
                left = _residual_pass(buf_ptr, q_row, x_c, mass, False, V, STOCHASTIC, BLOCK_V)
                # No residual mass: r == q up to rounding, so the rejection had probability 0; keep r.
                if left > 0:
                    _residual_pass(buf_ptr, q_row, x_c, mass, True, V, STOCHASTIC, BLOCK_V)
                    mass = left.to(tl.float32)
    return path, n, _sample_buffer(buf_ptr, tl.load(uniforms_ptr + N), bsum_ptr, V, BLOCK_V, NBLK_P2)


@triton.jit
def _greedy_walk(tokens_ptr, parents_ptr, argmax_ptr, N, N_P2: tl.constexpr):
    """The deepest node whose whole path matches the argmax (the first of equals), walked back to the root."""
    i = tl.arange(0, N_P2)
    # int32 like `best`, which starts the walk below: a loop-carried value must keep its type (the GPU
    # compiler rejects int32 -> int64; the interpreter does not), and parents arrive as int64.
    parents = tl.load(parents_ptr + i, mask=i < N, other=-1).to(tl.int32)
    ok = tl.zeros([N_P2], tl.int32)
    depth = tl.zeros([N_P2], tl.int32)
    best = -1
    best_depth = 0
    for c in range(N_P2):
        parent = tl.load(parents_ptr + c, mask=c < N, other=-1)
        # Registers cannot be indexed: pick the parent's entries out with a mask (N is small).
        parent_ok = tl.where(parent < 0, 1, tl.sum(tl.where(i == parent, ok, 0), 0))
        d = tl.sum(tl.where(i == parent, depth, 0), 0) + 1
        token = tl.load(tokens_ptr + c, mask=c < N, other=-1)
        hit = parent_ok * (token == tl.load(argmax_ptr + parent + 1, cache_modifier=".cg"))
        ok = tl.where(i == c, hit, ok)
        depth = tl.where(i == c, d, depth)
        better = (hit > 0) & (d > best_depth)
        best = tl.where(better, c, best)
        best_depth = tl.where(better, d, best_depth)
    path = tl.full([N_P2], -1, tl.int32)
    node = best
    while node >= 0:
        path = tl.where(i == tl.sum(tl.where(i == node, depth, 0), 0) - 1, node, path)
        node = tl.sum(tl.where(i == node, parents, 0), 0)
    return path, best_depth, tl.load(argmax_ptr + best + 1, cache_modifier=".cg")


@triton.jit
def _tree_kernel(
    logits_ptr, tokens_ptr, parents_ptr, probs_ptr, uniforms_ptr,  # inputs
    n_accepted_ptr, path_ptr, out_tokens_ptr,  # outputs
    part_ptr, part_arg_ptr, stats_ptr, argmax_ptr, counters_ptr, cand_ptr, buf_ptr, bsum_ptr,  # workspace
    N, T, top_k, top_p,
    V: tl.constexpr, GREEDY: tl.constexpr, TOP_K: tl.constexpr, TOP_P: tl.constexpr, STOCHASTIC: tl.constexpr,
    CHUNK: tl.constexpr, BLOCK_V: tl.constexpr, CAP: tl.constexpr, P_ROW: tl.constexpr, P_CAND: tl.constexpr,
    NSPLIT_P2: tl.constexpr, NBLK_P2: tl.constexpr, N_P2: tl.constexpr,
):
    row = tl.program_id(0)
    c = tl.program_id(1)
    x_row = logits_ptr + row.to(tl.int64) * V
    _store_chunk_stats(x_row, row, c, part_ptr, part_arg_ptr, V, T, GREEDY, CHUNK, BLOCK_V, NSPLIT_P2, 3)
    nsplit = tl.cdiv(V, CHUNK)
    if _arrive_last(counters_ptr + row, nsplit):
        # The chain kernel's row finisher with G = 0: the row's statistics, no chain draft to test.
        _finish_row(x_row, row, 0, 0, 0, V, T, top_k, top_p, tokens_ptr, probs_ptr, uniforms_ptr,
                    part_ptr, part_arg_ptr, stats_ptr, argmax_ptr, counters_ptr, cand_ptr, nsplit,
                    GREEDY, TOP_K, TOP_P, STOCHASTIC, BLOCK_V, CAP, P_ROW, P_CAND, NSPLIT_P2)
        if _arrive_last(counters_ptr + N + 1, N + 1):
            if GREEDY:
                path, n, token = _greedy_walk(tokens_ptr, parents_ptr, argmax_ptr, N, N_P2)
            else:
                path, n, token = _sample_walk(logits_ptr, tokens_ptr, parents_ptr, probs_ptr, uniforms_ptr,
                                              stats_ptr, buf_ptr, bsum_ptr, N, T, V, STOCHASTIC, BLOCK_V,
                                              NBLK_P2, N_P2)
            i = tl.arange(0, N_P2)
            path_tokens = tl.load(tokens_ptr + path, mask=path >= 0, other=-1)
            tl.store(path_ptr + i, path.to(tl.int64), mask=i < N)
            out = tl.where(i == n, token.to(tl.int64), path_tokens.to(tl.int64))
            tl.store(out_tokens_ptr + i, out, mask=i <= N)
            tl.store(n_accepted_ptr, n.to(tl.int64))


class _TreePlan:
    """What verify_tree_triton derives from the input shapes, the sampling and the tuning, checked and allocated
    once. The tree kernel's counters do not reset themselves: one memset per call."""

    def __init__(self, target_logits: Tensor, tokens: Tensor, parents: Tensor, draft_probs: Tensor | None, sampling,
                 uniforms: Tensor, tuning: Tuning | None) -> None:
        check_tree_inputs(target_logits, tokens, parents, draft_probs, uniforms)
        n1, vocab = target_logits.shape
        if n1 * vocab >= 2**31:
            raise ValueError(f"a tree of {n1 - 1} nodes over {vocab} tokens overflows int32 offsets: draft fewer")
        dev = self.dev = target_logits.device
        check_compiles(dev, _tree_kernel, "verify_tree_triton", "verify_tree_reference")
        no_capture(dev, "verify_tree_triton")
        shape = Launch.of(vocab, sampling, tuning or (GPU if dev.type == "cuda" else INTERPRETER))
        nsplit_p2 = pow2(shape.nsplit)
        # Workspace: chunk partials, row stats, threshold candidates, block sums (float64, as the chain kernel's),
        # the residual (float32), counters.
        cap = shape.cap if shape.top_k or shape.top_p else 0
        sizes = [n1 * nsplit_p2 * 3, n1 * 3, n1 * cap, pow2(shape.nblk)]
        part, stats, cand, bsum = torch.empty(sum(sizes), dtype=torch.float64, device=dev).split(sizes)
        buf = torch.empty(vocab, dtype=torch.float32, device=dev)
        sizes = [n1 + 1, n1 * nsplit_p2, n1]
        self.counters, part_arg, argmax = torch.zeros(sum(sizes), dtype=torch.int32, device=dev).split(sizes)
        # The outputs too, as the chain plan's: each call returns the same tensors (n_accepted, path, tokens).
        out = torch.empty(2 * n1, dtype=torch.int64, device=dev)
        self.outputs = out[0], out[1:n1], out[n1:]
        self.launch = Launcher(_tree_kernel, (n1, shape.nsplit),
                               shape.constants(draft_probs is not None) | dict(N_P2=triton.next_power_of_2(n1)),
                               (*self.outputs, part, part_arg, stats, argmax, self.counters, cand, buf, bsum, n1 - 1,
                                *shape.scalars(sampling)))


_TREE_PLANS: dict[tuple, _TreePlan] = {}


def verify_tree_triton(
    target_logits: Tensor, tokens: Tensor, parents: Tensor, draft_probs: Tensor | None, sampling,
    uniforms: Tensor, tuning: Tuning | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """`verify_tree_reference` in one kernel launch. Shapes are checked once per shape (plan_key); `parents` is
    checked when it comes on the CPU (the engine's case; a device tensor would cost a sync) and is moved to
    the logits' device. The returned tensors are the plan's own, overwritten by the next call with the same
    shapes, dtypes, sampling and tuning: read (or clone) them before that."""
    key = plan_key(sampling, tuning, target_logits, tokens, draft_probs, uniforms, parents)
    plan = _TREE_PLANS.get(key)
    if plan is None:
        plan = _TREE_PLANS[key] = _TreePlan(target_logits, tokens, parents, draft_probs, sampling, uniforms, tuning)
    if parents.device.type == "cpu":
        check_parents(parents)
    dev = plan.dev
    plan.counters.zero_()
    logits = target_logits.contiguous()
    plan.launch(logits, tokens.to(dev).contiguous(), parents.to(dev, non_blocking=True).contiguous(),
                logits if draft_probs is None else draft_probs.contiguous(), uniforms.float().contiguous())
    return plan.outputs
