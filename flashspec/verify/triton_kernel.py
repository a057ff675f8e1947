"""The verifier as one fused Triton kernel: same semantics as `reference.verify_reference`.

Grid (B, G+1, chunks of V). Each program reduces its chunk of one logit row (max, sum of exps, min or
argmax). The last chunk of a row to finish (an atomic counter) combines the partials, finds the top-k /
top-p threshold and runs the acceptance test of that row's draft; the last row of a batch entry to finish
finds the first rejection and samples the residual (or bonus) token by inverse CDF. "Last to finish"
needs no grid-wide barrier, so any grid size is safe, and the interpreter (sequential programs) runs it.

Thresholds are exact: among each chunk's largest logits when they hold them; else multi-way bisection over
logit values, each step snapped to actual logits, first across the row's chunks (_search_kernel, one launch
a step), then over the few logits left, in registers.

Non-finite logits are the caller's check (the engine folds it into its one host sync per step).
"""

from __future__ import annotations

import operator
import warnings
from dataclasses import dataclass
from functools import reduce

import torch
import triton
import triton.language as tl
from torch import Tensor
from triton import knobs
from triton.compiler import CompiledKernel
from triton.runtime.jit import JITFunction

from flashspec.verify.reference import check_inputs


@triton.jit
def _arrive_last(counter_ptr, n):
    """Count this program in at `counter_ptr`; True for the last of `n`, which then sees all their stores."""
    tl.debug_barrier()  # every thread's stores come before the release below
    return tl.atomic_add(counter_ptr, 1, sem="acq_rel", scope="gpu") == n - 1


@triton.jit
def _exp(x, zm, T):
    """exp(z - zm) for z = x / T, computed as the reference computes it (an IEEE division, then exp)."""
    return tl.exp(tl.math.div_rn(x, T) - zm)


@triton.jit
def _chunk_stats(x_row, V: tl.constexpr, start, T, GREEDY: tl.constexpr, CHUNK: tl.constexpr,
                 BLOCK_V: tl.constexpr):
    """Max, sum (float64) of exp(z - max z) for z = x / T, min and first argmax of logits
    [start, start + CHUNK)."""
    m = -float("inf")
    s = tl.full([], 0, tl.float64)
    lo = float("inf")
    am = 0
    for i in range(CHUNK // BLOCK_V):
        off = start + i * BLOCK_V
        offs = off + tl.arange(0, BLOCK_V)
        x = tl.load(x_row + offs, mask=offs < V, other=-float("inf")).to(tl.float32)
        bm = tl.max(x, 0)
        if GREEDY:
            am = tl.where(bm > m, off + tl.argmax(x, 0), am)
            m = tl.maximum(m, bm)
        else:
            m_new = tl.maximum(m, bm)
            zm_new = tl.math.div_rn(m_new, T)
            rescale = tl.exp(tl.math.div_rn(m, T).to(tl.float64) - zm_new)  # float64: no systematic error
            s = s * rescale + tl.sum(_exp(x, zm_new, T), 0, dtype=tl.float64)
            m = m_new
            lo = tl.minimum(lo, tl.min(tl.where(offs < V, x, float("inf")), 0))
    return m, s, lo, am


@triton.jit
def _store_chunk_stats(x_row, row, c, part_ptr, part_arg_ptr, V: tl.constexpr, T, GREEDY: tl.constexpr,
                       CHUNK: tl.constexpr, BLOCK_V: tl.constexpr, NSPLIT_P2: tl.constexpr, STRIDE: tl.constexpr):
    """Chunk c's statistics of logits row `row` (max, mass, min; argmax apart), into its slot of the per-row
    partials, STRIDE values a slot; returns the slot, max and min."""
    m, s, lo, am = _chunk_stats(x_row, V, c * CHUNK, T, GREEDY, CHUNK, BLOCK_V)
    slot = row * NSPLIT_P2 + c
    tl.store(part_ptr + slot * STRIDE, m)
    tl.store(part_ptr + slot * STRIDE + 1, s)
    tl.store(part_ptr + slot * STRIDE + 2, lo)
    tl.store(part_arg_ptr + slot, am)
    return slot, m, lo


@triton.jit
def _pivots(lo, hi, P: tl.constexpr):
    """P increasing pivots: lo, then evenly spaced in (lo, hi]; [lo, hi, hi, ...] when hi - lo is tiny."""
    k = tl.arange(0, P)
    piv = lo + (hi - lo) * (k.to(tl.float32) / P)
    return tl.where(lo + (hi - lo) / P > lo, piv, tl.where(k == 0, lo, hi))


@triton.jit
def _pivot_stats(x, e, piv, hi):
    """Per pivot, over logits x (exps e): count and mass of x in [pivot, hi], the nearest x at or above the
    pivot and the nearest below it. The exps become float64 before they are broadcast over the pivots (the
    same sums): one conversion per logit asked for, not one per (logit, pivot) pair, as Hopper converts to
    float64 at a quarter of its float64 add rate. The compiled search kernel has as many conversions either
    way (182 against 181 F2F.F64.F32 in its sm_90 SASS, Triton 3.6), so the compiler had likely hoisted them:
    what makes a search step's pass cost ~97 us a launch on the H200 is still to be measured."""
    xx = x[:, None]
    ge = xx >= piv[None, :]
    inside = ge & (xx <= hi)
    e64 = e.to(tl.float64)[:, None]
    return (tl.sum(inside.to(tl.float32), 0), tl.sum(tl.where(inside, e64, 0.0), 0),
            tl.min(tl.where(ge, xx, float("inf")), 0), tl.max(tl.where(ge, -float("inf"), xx), 0))


@triton.jit
def _pivot_stats_range(x_row, V: tl.constexpr, start, LENGTH: tl.constexpr, piv, hi, zm, T, BLOCK_V: tl.constexpr,
                       P: tl.constexpr):
    """_pivot_stats over logits [start, start + LENGTH) of a row (the whole row, or one program's chunk)."""
    count = tl.zeros([P], tl.float32)
    mass = tl.zeros([P], tl.float64)
    up = tl.full([P], float("inf"), tl.float32)
    down = tl.full([P], -float("inf"), tl.float32)
    for off in range(0, LENGTH, BLOCK_V):
        offs = start + off + tl.arange(0, BLOCK_V)
        x = tl.load(x_row + offs, mask=offs < V, other=-float("inf")).to(tl.float32)
        b_count, b_mass, b_up, b_down = _pivot_stats(x, _exp(x, zm, T), piv, hi)
        count += b_count
        mass += b_mass
        up = tl.minimum(up, b_up)
        down = tl.maximum(down, b_down)
    return count, mass, up, down


@triton.jit
def _narrow(lo, hi, n_above, mass_above, target, count, mass, up, down,
            BY_MASS: tl.constexpr, P: tl.constexpr):
    """Shrink [lo, hi] around t given the pivot stats: t lies between the last pivot whose F reaches the
    target (so t >= the nearest logit at or above it) and the next pivot (t < it, so t <= the nearest logit
    below it). Returns lo, hi, count and mass inside, count and mass above hi."""
    k = tl.arange(0, P)
    if BY_MASS:
        reached = mass_above + mass >= target
    else:
        reached = n_above + count >= target
    last = tl.maximum(tl.sum(reached.to(tl.int32), 0) - 1, 0)  # F(lo) reaches it unless rounding says no
    nxt = k == last + 1  # no such pivot when last = P - 1: its count and mass then read 0
    n_from = tl.sum(tl.where(k == last, count, 0.0), 0)
    mass_from = tl.sum(tl.where(k == last, mass, 0.0), 0)
    n_next = tl.sum(tl.where(nxt, count, 0.0), 0)
    mass_next = tl.sum(tl.where(nxt, mass, 0.0), 0)
    new_lo = tl.min(tl.where(k == last, up, float("inf")), 0)
    new_hi = tl.where(last + 1 < P, tl.max(tl.where(nxt, down, -float("inf")), 0), hi)
    return new_lo, new_hi, n_from - n_next, mass_from - mass_next, n_above + n_next, mass_above + mass_next


@triton.jit
def _store_in_range(x_row, V: tl.constexpr, start, LENGTH: tl.constexpr, lo, hi, out_ptr, BLOCK_V: tl.constexpr):
    """Store the logits of [start, start + LENGTH) that lie in [lo, hi] at out_ptr, in order; return how many."""
    n = 0
    for off in range(0, LENGTH, BLOCK_V):
        offs = start + off + tl.arange(0, BLOCK_V)
        x = tl.load(x_row + offs, mask=offs < V, other=-float("inf")).to(tl.float32)
        sel = (x >= lo) & (x <= hi)
        tl.store(out_ptr + n + tl.cumsum(sel.to(tl.int32), 0) - 1, x, mask=sel)
        n += tl.sum(sel.to(tl.int32), 0)
    return n


@triton.jit
def _gather(x_row, V: tl.constexpr, lo, hi, cand_ptr, BLOCK_V: tl.constexpr, CAP: tl.constexpr):
    """The (at most CAP) logits in [lo, hi] as one vector, padded with -inf."""
    n = _store_in_range(x_row, V, 0, V, lo, hi, cand_ptr, BLOCK_V)
    tl.debug_barrier()  # the candidates were stored by other threads of this program
    i = tl.arange(0, CAP)
    return tl.load(cand_ptr + i, mask=i < n, other=-float("inf"), cache_modifier=".cg").to(tl.float32)


@triton.jit
def _gathered(gather_ptr, count_ptr, COUNT_STRIDE: tl.constexpr, nsplit, NSPLIT_P2: tl.constexpr,
              CAP: tl.constexpr):
    """The logits the row's chunks stored (_store_in_range; chunk k's `count_ptr[k * COUNT_STRIDE]` of them at
    gather_ptr + k * CAP), as one vector of CAP in row order, padded with -inf."""
    k = tl.arange(0, NSPLIT_P2)
    counts = tl.load(count_ptr + k * COUNT_STRIDE, mask=k < nsplit, other=0, cache_modifier=".cg").to(tl.int32)
    ends = tl.cumsum(counts, 0)
    i = tl.arange(0, CAP)
    chunk = tl.sum((ends[None, :] <= i[:, None]).to(tl.int32), 1)  # the chunk holding the i-th logit
    start = tl.sum(tl.where(k[None, :] == chunk[:, None], ends - counts, 0), 1)
    return tl.load(gather_ptr + chunk * CAP + i - start, mask=i < tl.sum(counts, 0), other=-float("inf"),
                   cache_modifier=".cg").to(tl.float32)


@triton.jit
def _threshold(x_row, V: tl.constexpr, lo, hi, n_in, mass_in, n_above, mass_above, zm, T, target, cand_ptr,
               BY_MASS: tl.constexpr, BLOCK_V: tl.constexpr, CAP: tl.constexpr, P_ROW: tl.constexpr,
               P_CAND: tl.constexpr):
    """Largest logit t with F(t) >= target, F(t) = count (or exp mass) of logits >= t, and F's count and mass
    at t. Needs logits lo <= t <= hi, n_in / mass_in = count / mass of the logits in [lo, hi], n_above /
    mass_above (float32 / float64) those above hi. Multi-way bisection over values, snapped to logits: passes
    over the row (P_ROW pivots) until at most CAP logits are left in [lo, hi], then on those in registers
    (P_CAND pivots)."""
    while (lo < hi) & (n_in > CAP):
        count, mass, up, down = _pivot_stats_range(x_row, V, 0, V, _pivots(lo, hi, P_ROW), hi, zm, T, BLOCK_V,
                                                   P_ROW)
        lo, hi, n_in, mass_in, n_above, mass_above = _narrow(lo, hi, n_above, mass_above, target,
                                                             count, mass, up, down, BY_MASS, P_ROW)
    if lo < hi:
        x = _gather(x_row, V, lo, hi, cand_ptr, BLOCK_V, CAP)
        lo, n_in, mass_in = _threshold_among(x, _exp(x, zm, T), lo, hi, n_in, mass_in, n_above, mass_above,
                                             target, BY_MASS, P_CAND)
    else:
        n_in = n_above + n_in
        mass_in = mass_above + mass_in
    return lo, n_in, mass_in


@triton.jit
def _threshold_among(x, e, lo, hi, n_in, mass_in, n_above, mass_above, target, BY_MASS: tl.constexpr,
                     P: tl.constexpr):
    """_threshold on logits in registers: x (exps e) holds every logit of the row in [lo, hi], the others
    being below lo (-inf for padding); n_above / mass_above: count and mass above hi."""
    while lo < hi:
        count, mass, up, down = _pivot_stats(x, e, _pivots(lo, hi, P), hi)
        lo, hi, n_in, mass_in, n_above, mass_above = _narrow(lo, hi, n_above, mass_above, target,
                                                             count, mass, up, down, BY_MASS, P)
    return lo, n_above + n_in, mass_above + mass_in


@triton.jit
def _residual(x_row, q_row, offs, x_n, q_on, zm, inv_mass, tau, T, V: tl.constexpr, STOCHASTIC: tl.constexpr):
    """max(p - q, 0) at `offs`; q is the draft row (one-hot at x_n when deterministic), or 0 when not q_on."""
    in_v = offs < V
    # Broadcast the int32 flag to a vector before comparing: Triton 3.9's interpreter turns scalar-bool & vector
    # into an int32 mask, which tl.load rejects.
    q_on = (offs * 0 + q_on) != 0
    x = tl.load(x_row + offs, mask=in_v, other=-float("inf")).to(tl.float32)
    p = tl.where(in_v & (x >= tau), _exp(x, zm, T) * inv_mass, 0.0)
    if STOCHASTIC:
        q = tl.load(q_row + offs, mask=in_v & q_on, other=0.0).to(tl.float32)
    else:
        q = tl.where((offs == x_n) & q_on, 1.0, 0.0)
    return tl.maximum(p - q, 0.0)


@triton.jit
def _block_sums(x_row, q_row, x_n, q_on, zm, inv_mass, tau, T, V: tl.constexpr, bsum_ptr,
                STOCHASTIC: tl.constexpr, BLOCK_V: tl.constexpr, NBLK_P2: tl.constexpr):
    """Residual mass (float64) of each BLOCK_V block, through `bsum_ptr` (written, then read back as one
    vector)."""
    for off in range(0, V, BLOCK_V):
        offs = off + tl.arange(0, BLOCK_V)
        r = _residual(x_row, q_row, offs, x_n, q_on, zm, inv_mass, tau, T, V, STOCHASTIC)
        tl.store(bsum_ptr + off // BLOCK_V, tl.sum(r, 0, dtype=tl.float64))
    tl.debug_barrier()
    k = tl.arange(0, NBLK_P2)
    return tl.load(bsum_ptr + k, mask=k < tl.cdiv(V, BLOCK_V), other=0.0, cache_modifier=".cg")


@triton.jit
def _first_above(cum, mass, x, SIZE: tl.constexpr):
    """Inverse CDF: the first index whose cumulative mass exceeds x; rounding may leave none: the last
    index with mass then."""
    i = tl.arange(0, SIZE)
    first = tl.min(tl.where((cum > x) & (mass > 0), i, SIZE), 0)
    return tl.where(first == SIZE, tl.max(tl.where(mass > 0, i, 0), 0), first)


@triton.jit
def _sample_residual(x_row, q_row, x_n, q_on, zm, inv_mass, tau, T, u, bsum_ptr, V: tl.constexpr,
                     STOCHASTIC: tl.constexpr, BLOCK_V: tl.constexpr, NBLK_P2: tl.constexpr):
    """Inverse-CDF sample of norm(max(p - q, 0)) (of p when that has no mass), given the residual's block sums
    at `bsum_ptr` (written by other programs): the block, then the token in it. Cumulative sums run in
    float64, as in the reference, so the summation order does not show."""
    k = tl.arange(0, NBLK_P2)
    bs = tl.load(bsum_ptr + k, mask=k < tl.cdiv(V, BLOCK_V), other=0.0, cache_modifier=".cg")
    # No residual mass: p == q up to rounding, so the rejection had probability 0; sample p instead (one pass
    # over the row in this program: rare).
    q_on = q_on * (tl.sum(bs, 0) > 0).to(tl.int32)
    if tl.sum(bs, 0) <= 0:
        bs = _block_sums(x_row, q_row, x_n, q_on, zm, inv_mass, tau, T, V, bsum_ptr, STOCHASTIC, BLOCK_V,
                         NBLK_P2)
    bcdf = tl.cumsum(bs, 0)
    x = u.to(tl.float64) * tl.max(bcdf, 0)
    blk = _first_above(bcdf, bs, x, NBLK_P2)
    carry = tl.sum(tl.where(k == blk - 1, bcdf, 0.0), 0)
    r = _residual(x_row, q_row, blk * BLOCK_V + tl.arange(0, BLOCK_V), x_n, q_on, zm, inv_mass, tau, T, V,
                  STOCHASTIC)
    return blk * BLOCK_V + _first_above(carry + tl.cumsum(r, 0, dtype=tl.float64), r, x, BLOCK_V)


@triton.jit
def _bins(x, lo, scale, NBINS: tl.constexpr):
    """Histogram bin of logits x >= lo: monotone in x, so a chunk's top bins hold its largest logits."""
    return tl.minimum(((x - lo) * scale).to(tl.int32), NBINS - 1)


@triton.jit
def _store_candidates(x_row, c, lo, hi, cand_ptr, V: tl.constexpr, CHUNK: tl.constexpr, BLOCK_V: tl.constexpr,
                      M: tl.constexpr, NBINS: tl.constexpr):
    """Store the chunk's largest logits (those in its top histogram bins, at most M) at cand_ptr; return how
    many, and the largest logit of the chunk left out (-inf if none): every larger one is stored."""
    scale = tl.where(hi > lo, NBINS / (hi - lo), 0.0)
    counts = tl.zeros([NBINS], tl.int32)
    for i in range(CHUNK // BLOCK_V):
        offs = c * CHUNK + i * BLOCK_V + tl.arange(0, BLOCK_V)
        x = tl.load(x_row + offs, mask=offs < V, other=lo).to(tl.float32)  # padding counts in bin 0
        counts += tl.histogram(_bins(x, lo, scale, NBINS), NBINS)
    above = tl.sum(counts, 0) - tl.cumsum(counts, 0) + counts  # logits in this bin or above
    first = tl.sum((above > M).to(tl.int32), 0)  # bins >= first hold at most M logits
    n = 0
    left_out = -float("inf")
    for i in range(CHUNK // BLOCK_V):
        offs = c * CHUNK + i * BLOCK_V + tl.arange(0, BLOCK_V)
        live = offs < V
        x = tl.load(x_row + offs, mask=live, other=lo).to(tl.float32)
        sel = live & (_bins(x, lo, scale, NBINS) >= first)
        tl.store(cand_ptr + n + tl.cumsum(sel.to(tl.int32), 0) - 1, x, mask=sel)
        n += tl.sum(sel.to(tl.int32), 0)
        left_out = tl.maximum(left_out, tl.max(tl.where(live & ~sel, x, -float("inf")), 0))
    return n, left_out


@triton.jit
def _combine_chunks(part_ptr, part_arg_ptr, row, nsplit, T, V: tl.constexpr, GREEDY: tl.constexpr,
                    NSPLIT_P2: tl.constexpr, STRIDE: tl.constexpr):
    """A row's max, zm = max / T, exp mass (float64), min and first argmax, from its chunks' partials (STRIDE
    values per chunk: max, mass, min, ...)."""
    k = tl.arange(0, NSPLIT_P2)
    live = k < nsplit
    part_ptr += row * NSPLIT_P2 * STRIDE
    pm = tl.load(part_ptr + k * STRIDE, mask=live, other=-float("inf"), cache_modifier=".cg").to(tl.float32)
    m = tl.max(pm, 0)
    zm = tl.math.div_rn(m, T)
    mass = tl.full([], 1, tl.float64)
    lo = m
    am = 0
    if GREEDY:
        pa = tl.load(part_arg_ptr + row * NSPLIT_P2 + k, mask=live, other=0, cache_modifier=".cg")
        am = tl.min(tl.where(live & (pm == m), pa, V), 0)
    else:
        ps = tl.load(part_ptr + k * STRIDE + 1, mask=live, other=0.0, cache_modifier=".cg")
        mass = tl.sum(ps * tl.exp(tl.math.div_rn(pm, T).to(tl.float64) - zm), 0)
        lo = tl.min(tl.load(part_ptr + k * STRIDE + 2, mask=live, other=float("inf"), cache_modifier=".cg"), 0)
        lo = lo.to(tl.float32)
    return m, zm, mass, lo, am


@triton.jit
def _search_thresholds(x_row, V: tl.constexpr, lo, m, mass, zm, T, top_k, top_p, cand_ptr, TOP_K: tl.constexpr,
                       TOP_P: tl.constexpr, BLOCK_V: tl.constexpr, CAP: tl.constexpr, P_ROW: tl.constexpr,
                       P_CAND: tl.constexpr):
    """Top-k then top-p threshold of a row by passes over it (_threshold), and the mass they keep."""
    n_kept = V * 1.0
    tau = lo
    none = tl.zeros([], tl.float32)  # nothing above the row's max
    no_mass = tl.zeros([], tl.float64)
    if TOP_K:
        tau, n_kept, mass = _threshold(x_row, V, lo, m, n_kept, mass, none, no_mass, zm, T, top_k * 1.0, cand_ptr,
                                       False, BLOCK_V, CAP, P_ROW, P_CAND)
    if TOP_P:
        tau, n_kept, mass = _threshold(x_row, V, tau, m, n_kept, mass, none, no_mass, zm, T, mass * top_p, cand_ptr,
                                       True, BLOCK_V, CAP, P_ROW, P_CAND)
    return tau, mass


@triton.jit
def _candidate_thresholds(row, nsplit, m, zm, mass, T, top_k, top_p, part_ptr, part_arg_ptr, cand_ptr,
                          TOP_K: tl.constexpr, TOP_P: tl.constexpr, CAP: tl.constexpr, P_CAND: tl.constexpr,
                          M: tl.constexpr, NSPLIT_P2: tl.constexpr, SORT: tl.constexpr):
    """Top-k then top-p threshold from the chunks' stored candidates, in registers. Exact when the thresholds
    lie above W, the largest logit left out: every logit above W is a candidate. Returns tau, the mass kept,
    and 1 when both were found (else 0: the caller searches the row)."""
    i = tl.arange(0, CAP)
    count = tl.load(part_arg_ptr + row * NSPLIT_P2 + i // M, mask=i // M < nsplit, other=0, cache_modifier=".cg")
    x = tl.load(cand_ptr + i, mask=(i % M) < count, other=-float("inf"), cache_modifier=".cg").to(tl.float32)
    k = tl.arange(0, NSPLIT_P2)
    w = tl.load(part_ptr + (row * NSPLIT_P2 + k) * 4 + 3, mask=k < nsplit, other=-float("inf"),
                cache_modifier=".cg")
    x = tl.where(x > tl.max(w, 0).to(tl.float32), x, -float("inf"))
    if SORT:
        tau, kept, found = _sorted_thresholds(x, zm, mass, T, top_k, top_p, TOP_K, TOP_P, CAP)
    else:
        tau, kept, found = _bisected_thresholds(x, m, zm, mass, T, top_k, top_p, TOP_K, TOP_P, P_CAND)
    return tau, kept, found


@triton.jit
def _sorted_thresholds(x, zm, mass, T, top_k, top_p, TOP_K: tl.constexpr, TOP_P: tl.constexpr, CAP: tl.constexpr):
    """_candidate_thresholds by one sort (the GPU's way; the interpreter sorts slowly): the k-th largest
    logit, then the first, from the top, at which the cumulative mass reaches top_p of the mass kept."""
    i = tl.arange(0, CAP)
    x = tl.sort(x, 0, descending=True)
    e = tl.where(x > -float("inf"), _exp(x, zm, T), 0.0)
    tau = -float("inf")
    kept = mass
    found = 1
    if TOP_K:
        found = (tl.sum((x > -float("inf")).to(tl.int32), 0) >= top_k).to(tl.int32)
        tau = tl.max(tl.where(i == top_k - 1, x, -float("inf")), 0)
        kept = tl.sum(tl.where(x >= tau, e, 0.0), 0, dtype=tl.float64)
    if TOP_P:
        reached = (tl.cumsum(e.to(tl.float64), 0) >= kept * top_p) & (x >= tau) & (x > -float("inf"))
        found = found * (tl.sum(reached.to(tl.int32), 0) > 0).to(tl.int32)
        tau = tl.max(tl.where(reached, x, -float("inf")), 0)
        kept = tl.sum(tl.where(x >= tau, e, 0.0), 0, dtype=tl.float64)
    return tau, kept, found


@triton.jit
def _bisected_thresholds(x, m, zm, mass, T, top_k, top_p, TOP_K: tl.constexpr, TOP_P: tl.constexpr,
                         P_CAND: tl.constexpr):
    """_candidate_thresholds by bisection over the candidates' values (_threshold_among)."""
    e = _exp(x, zm, T)
    tau = tl.min(tl.where(x > -float("inf"), x, float("inf")), 0)  # +inf when there is none
    n_kept = tl.sum((x > -float("inf")).to(tl.float32), 0)
    kept = tl.sum(e, 0, dtype=tl.float64)
    found = 1
    if TOP_K:
        found = (n_kept >= top_k).to(tl.int32)
        if found != 0:
            tau, n_kept, kept = _threshold_among(x, e, tau, m, n_kept, kept, tl.zeros([], tl.float32),
                                                 tl.zeros([], tl.float64),
                                                 top_k * 1.0, False, P_CAND)
    if TOP_P:
        target = mass * top_p
        if TOP_K:
            target = kept * top_p
        found = found * (kept >= target).to(tl.int32)
        if found != 0:
            tau, n_kept, kept = _threshold_among(x, e, tau, m, n_kept, kept, tl.zeros([], tl.float32),
                                                 tl.zeros([], tl.float64),
                                                 target, True, P_CAND)
    return tau, kept, found


@triton.jit
def _store_row_and_test(x_row, row, b, j, G, zm, inv_mass, tau, am, draft_tokens_ptr, draft_probs_ptr,
                        uniforms_ptr, stats_ptr, argmax_ptr, flags_ptr, V: tl.constexpr, T,
                        GREEDY: tl.constexpr, STOCHASTIC: tl.constexpr):
    """Store the row's statistics (zm, 1 / mass, tau, argmax) and test its draft token (when j < G)."""
    tl.store(stats_ptr + row * 3, zm)
    tl.store(stats_ptr + row * 3 + 1, inv_mass)
    tl.store(stats_ptr + row * 3 + 2, tau)
    tl.store(argmax_ptr + row, am)
    if j < G:
        tok = tl.load(draft_tokens_ptr + b * G + j)
        if GREEDY:
            p_x = (tok == am).to(tl.float32)
        else:
            x_tok = tl.load(x_row + tok).to(tl.float32)
            p_x = tl.where(x_tok >= tau, _exp(x_tok, zm, T) * inv_mass, 0.0)
        if STOCHASTIC:
            q_x = tl.load(draft_probs_ptr + (b * G + j).to(tl.int64) * V + tok).to(tl.float32)
        else:
            q_x = 1.0
        tl.store(flags_ptr + row, (tl.load(uniforms_ptr + row) * q_x < p_x).to(tl.int32))


@triton.jit
def _finish_row(x_row, row, b, j, G, V: tl.constexpr, T, top_k, top_p, draft_tokens_ptr, draft_probs_ptr,
                uniforms_ptr, part_ptr, part_arg_ptr, stats_ptr, argmax_ptr, flags_ptr, cand_ptr, nsplit,
                GREEDY: tl.constexpr, TOP_K: tl.constexpr, TOP_P: tl.constexpr, STOCHASTIC: tl.constexpr,
                BLOCK_V: tl.constexpr, CAP: tl.constexpr, P_ROW: tl.constexpr, P_CAND: tl.constexpr,
                NSPLIT_P2: tl.constexpr):
    """Combine the chunk partials of one row, find its thresholds by passes over the row, and test its draft
    token (when j < G). The tree kernel's row finisher (the chain kernel's: _finish_chain_row)."""
    m, zm, mass, lo, am = _combine_chunks(part_ptr, part_arg_ptr, row, nsplit, T, V, GREEDY, NSPLIT_P2, 3)
    tau = -float("inf")  # keeps every logit
    inv_mass = 1.0
    if not GREEDY:
        if TOP_K or TOP_P:
            tau, mass = _search_thresholds(x_row, V, lo, m, mass, zm, T, top_k, top_p, cand_ptr + row * CAP,
                                           TOP_K, TOP_P, BLOCK_V, CAP, P_ROW, P_CAND)
        inv_mass = (1.0 / mass).to(tl.float32)
    _store_row_and_test(x_row, row, b, j, G, zm, inv_mass, tau, am, draft_tokens_ptr, draft_probs_ptr,
                        uniforms_ptr, stats_ptr, argmax_ptr, flags_ptr, V, T, GREEDY, STOCHASTIC)


@triton.jit
def _finish_chain_row(x_row, row, b, j, G, V: tl.constexpr, T, top_k, top_p, draft_tokens_ptr, draft_probs_ptr,
                      uniforms_ptr, part_ptr, part_arg_ptr, stats_ptr, argmax_ptr, flags_ptr, cand_ptr, nsplit,
                      GREEDY: tl.constexpr, TOP_K: tl.constexpr, TOP_P: tl.constexpr, STOCHASTIC: tl.constexpr,
                      BLOCK_V: tl.constexpr, CAP: tl.constexpr, P_ROW: tl.constexpr, P_CAND: tl.constexpr,
                      NSPLIT_P2: tl.constexpr, M: tl.constexpr, SORT: tl.constexpr, search_ptr,
                      SEARCH: tl.constexpr):
    """_finish_row for the chain kernel: thresholds from the chunks' candidates when they hold them (one sort
    in registers); otherwise, with SEARCH, the row's search starts at search_ptr for _search_kernel to finish
    (across programs), else by passes over the row here."""
    m, zm, mass, lo, am = _combine_chunks(part_ptr, part_arg_ptr, row, nsplit, T, V, GREEDY, NSPLIT_P2, 4)
    tau = -float("inf")  # keeps every logit
    inv_mass = 1.0
    pending = 0
    if not GREEDY:
        if TOP_K or TOP_P:
            cand_ptr += row * CAP
            full = mass
            tau, mass, found = _candidate_thresholds(row, nsplit, m, zm, mass, T, top_k, top_p, part_ptr,
                                                     part_arg_ptr, cand_ptr, TOP_K, TOP_P, CAP, P_CAND, M,
                                                     NSPLIT_P2, SORT)
            if found == 0:  # a threshold among the logits left out: search the row (this reuses the buffer)
                if SEARCH:
                    pending = 1
                    none = tl.zeros([], tl.float64)
                    if TOP_K:
                        _store_search(search_ptr + row * 9, 1, lo, m, V * 1.0, full, none, none, top_k * 1.0, m)
                    else:
                        _store_search(search_ptr + row * 9, 2, lo, m, V * 1.0, full, none, none, full * top_p, m)
                else:
                    tau, mass = _search_thresholds(x_row, V, lo, m, full, zm, T, top_k, top_p, cand_ptr, TOP_K,
                                                   TOP_P, BLOCK_V, CAP, P_ROW, P_CAND)
        inv_mass = (1.0 / mass).to(tl.float32)
    if pending == 0:
        _store_row_and_test(x_row, row, b, j, G, zm, inv_mass, tau, am, draft_tokens_ptr, draft_probs_ptr,
                            uniforms_ptr, stats_ptr, argmax_ptr, flags_ptr, V, T, GREEDY, STOCHASTIC)


@triton.jit
def _store_search(state_ptr, stage, lo, hi, n_in, mass_in, n_above, mass_above, target, m):
    """A row's threshold search between passes, as float64 (exact for the float32 values): the stage (1: top-k,
    2: top-p, 0: done), the interval [lo, hi] holding the threshold, the count and mass inside it and above it,
    the target F must reach, and the row's max."""
    tl.store(state_ptr, stage)
    tl.store(state_ptr + 1, lo)
    tl.store(state_ptr + 2, hi)
    tl.store(state_ptr + 3, n_in)
    tl.store(state_ptr + 4, mass_in)
    tl.store(state_ptr + 5, n_above)
    tl.store(state_ptr + 6, mass_above)
    tl.store(state_ptr + 7, target)
    tl.store(state_ptr + 8, m)


@triton.jit
def _first_rejection(flags_ptr, first, G, G1_P2: tl.constexpr):
    """Index of a batch entry's first rejected draft (G when all were accepted), from its rows' flags."""
    i = tl.arange(0, G1_P2)
    accepted = tl.load(flags_ptr + first + i, mask=i < G, other=0, cache_modifier=".cg")
    return tl.min(tl.where((accepted == 0) & (i < G), i, G), 0)


@triton.jit
def _store_outputs(b, G, n, token, draft_tokens_ptr, n_accepted_ptr, tokens_ptr, G1_P2: tl.constexpr):
    """tokens[b] = the accepted drafts, then `token` at n (its tail is unspecified); n_accepted[b] = n."""
    i = tl.arange(0, G1_P2)
    drafts = tl.load(draft_tokens_ptr + b * G + i, mask=i < G, other=0)
    tl.store(tokens_ptr + b * (G + 1) + i, tl.where((i == n) | (i == G), token.to(tl.int64), drafts), mask=i <= G)
    tl.store(n_accepted_ptr + b, n.to(tl.int64))


# Integers that vary with the draft are not specialised on (Triton would compile apart 1 and multiples of 16):
# one compiled kernel serves every draft length up to 31.
@triton.jit(do_not_specialize=["B", "G"])
def _verify_kernel(
    logits_ptr, draft_tokens_ptr, draft_probs_ptr, uniforms_ptr,  # inputs
    n_accepted_ptr, tokens_ptr,  # outputs (greedy; the sampled ones come from _residual_kernel)
    part_ptr, part_arg_ptr, stats_ptr, argmax_ptr, flags_ptr, counters_ptr, cand_ptr, search_ptr,  # workspace
    B, G, T, top_k, top_p,
    V: tl.constexpr, GREEDY: tl.constexpr, TOP_K: tl.constexpr, TOP_P: tl.constexpr, STOCHASTIC: tl.constexpr,
    CHUNK: tl.constexpr, BLOCK_V: tl.constexpr, CAP: tl.constexpr, P_ROW: tl.constexpr, P_CAND: tl.constexpr,
    NSPLIT_P2: tl.constexpr, G1_P2: tl.constexpr, M: tl.constexpr, NBINS: tl.constexpr, SORT: tl.constexpr,
    SEARCH: tl.constexpr,
):
    """Grid (B, G+1, chunks): chunk statistics (and, with top-k / top-p, the chunk's largest logits), then the
    last chunk of a row finishes it (_finish_chain_row, which may leave a threshold search to _search_kernel);
    greedy: the last row of a batch entry finishes it."""
    b = tl.program_id(0)
    j = tl.program_id(1)
    c = tl.program_id(2)
    row = b * (G + 1) + j
    x_row = logits_ptr + row.to(tl.int64) * V
    slot, m, lo = _store_chunk_stats(x_row, row, c, part_ptr, part_arg_ptr, V, T, GREEDY, CHUNK, BLOCK_V,
                                     NSPLIT_P2, 4)
    if not GREEDY:
        if TOP_K or TOP_P:  # part_arg then holds the candidate count
            n, left_out = _store_candidates(x_row, c, lo, m, cand_ptr + row * CAP + c * M, V, CHUNK, BLOCK_V, M,
                                            NBINS)
            tl.store(part_arg_ptr + slot, n)
            tl.store(part_ptr + slot * 4 + 3, left_out)
    nsplit = tl.cdiv(V, CHUNK)
    if _arrive_last(counters_ptr + row, nsplit):
        tl.store(counters_ptr + row, 0)  # counters reset themselves: no memset before the next call
        _finish_chain_row(x_row, row, b, j, G, V, T, top_k, top_p, draft_tokens_ptr, draft_probs_ptr,
                          uniforms_ptr, part_ptr, part_arg_ptr, stats_ptr, argmax_ptr, flags_ptr, cand_ptr, nsplit,
                          GREEDY, TOP_K, TOP_P, STOCHASTIC, BLOCK_V, CAP, P_ROW, P_CAND, NSPLIT_P2, M, SORT,
                          search_ptr, SEARCH)
        if GREEDY:
            batch_counter = counters_ptr + B * (G + 1) + b
            if _arrive_last(batch_counter, G + 1):
                tl.store(batch_counter, 0)
                n = _first_rejection(flags_ptr, b * (G + 1), G, G1_P2)
                token = tl.load(argmax_ptr + b * (G + 1) + n, cache_modifier=".cg")
                _store_outputs(b, G, n, token, draft_tokens_ptr, n_accepted_ptr, tokens_ptr, G1_P2)


@triton.jit(do_not_specialize=["G", "finish"])
def _search_kernel(
    logits_ptr, draft_tokens_ptr, draft_probs_ptr, uniforms_ptr,  # inputs
    stats_ptr, argmax_ptr, flags_ptr, counters_ptr, cand_ptr, search_ptr, pivot_ptr, gather_ptr,  # workspace
    G, T, top_p, finish,
    V: tl.constexpr, STAGE: tl.constexpr, TOP_P: tl.constexpr, STOCHASTIC: tl.constexpr, CHUNK: tl.constexpr,
    BLOCK_V: tl.constexpr, BLOCK_S: tl.constexpr, CAP: tl.constexpr, P_ROW: tl.constexpr, P_CAND: tl.constexpr,
    P_SEARCH: tl.constexpr, NSPLIT_P2: tl.constexpr,
):
    """Grid (B, G+1, chunks), for the rows whose threshold search _verify_kernel left at this STAGE (1: top-k,
    2: top-p; the other rows' programs return at once): one step of the search spread over the row's chunks.
    While the row's interval holds more than CAP logits, the step is one of bisection: each program measures its
    chunk against P_SEARCH pivots (count and float64 mass at or above each, nearest logits either side:
    _pivot_stats), and the last of the row to finish adds them up and narrows the interval, as _threshold's
    passes over the row do in one program. Once it holds at most CAP, each program stores its chunk's logits in
    the interval, and the last one finishes the search on them in registers. A search that ends (there, or with
    `finish` by the last program's own passes over the row) starts the top-p stage after top-k, or stores the
    row's statistics and tests its draft; its state keeps the last interval for tests, stage 0 (-1 when it ended
    on logits gathered across programs)."""
    b = tl.program_id(0)
    j = tl.program_id(1)
    c = tl.program_id(2)
    row = b * (G + 1) + j
    state = search_ptr + row * 9
    if tl.load(state, cache_modifier=".cg") == STAGE:
        x_row = logits_ptr + row.to(tl.int64) * V
        lo = tl.load(state + 1, cache_modifier=".cg").to(tl.float32)
        hi = tl.load(state + 2, cache_modifier=".cg").to(tl.float32)
        n_in = tl.load(state + 3, cache_modifier=".cg").to(tl.float32)
        m = tl.load(state + 8, cache_modifier=".cg").to(tl.float32)
        zm = tl.math.div_rn(m, T)
        slot = pivot_ptr + (row * NSPLIT_P2 + c) * 4 * P_SEARCH
        gather = (n_in <= CAP) & (lo < hi)
        if gather:
            tl.store(slot, _store_in_range(x_row, V, c * CHUNK, CHUNK, lo, hi,
                                           gather_ptr + (row * NSPLIT_P2 + c) * CAP, BLOCK_V))
        else:
            count, mass, up, down = _pivot_stats_range(x_row, V, c * CHUNK, CHUNK, _pivots(lo, hi, P_SEARCH), hi,
                                                       zm, T, BLOCK_S, P_SEARCH)
            k = tl.arange(0, P_SEARCH)
            tl.store(slot + k, count)
            tl.store(slot + P_SEARCH + k, mass)
            tl.store(slot + 2 * P_SEARCH + k, up)
            tl.store(slot + 3 * P_SEARCH + k, down)
        nsplit = tl.cdiv(V, CHUNK)
        if _arrive_last(counters_ptr + row, nsplit):
            tl.store(counters_ptr + row, 0)
            mass_in = tl.load(state + 4, cache_modifier=".cg")
            n_above = tl.load(state + 5, cache_modifier=".cg").to(tl.float32)
            mass_above = tl.load(state + 6, cache_modifier=".cg")
            target = tl.load(state + 7, cache_modifier=".cg")
            if STAGE == 1:
                target = target.to(tl.float32)  # a count, as _search_thresholds passes it
            rows = pivot_ptr + row * NSPLIT_P2 * 4 * P_SEARCH
            if gather:
                _store_search(state, -1, lo, hi, n_in, mass_in, n_above, mass_above, target, m)
                x = _gathered(gather_ptr + row * NSPLIT_P2 * CAP, rows, 4 * P_SEARCH, nsplit, NSPLIT_P2, CAP)
                tau, n_kept, kept = _threshold_among(x, _exp(x, zm, T), lo, hi, n_in, mass_in, n_above, mass_above,
                                                     target, STAGE == 2, P_CAND)
                _end_search(x_row, row, b, j, G, state, tau, n_kept, kept, m, zm, T, top_p, draft_tokens_ptr,
                            draft_probs_ptr, uniforms_ptr, stats_ptr, argmax_ptr, flags_ptr, V, STAGE, TOP_P,
                            STOCHASTIC)
            else:
                count, mass, up, down = _sum_pivot_stats(rows, nsplit, NSPLIT_P2, P_SEARCH)
                if lo < hi:
                    lo, hi, n_in, mass_in, n_above, mass_above = _narrow(lo, hi, n_above, mass_above, target, count,
                                                                         mass, up, down, STAGE == 2, P_SEARCH)
                if finish == 0:
                    _store_search(state, STAGE, lo, hi, n_in, mass_in, n_above, mass_above, target, m)
                else:
                    _store_search(state, 0, lo, hi, n_in, mass_in, n_above, mass_above, target, m)
                    tau, n_kept, kept = _threshold(x_row, V, lo, hi, n_in, mass_in, n_above, mass_above, zm, T,
                                                   target, cand_ptr + row * CAP, STAGE == 2, BLOCK_V, CAP, P_ROW,
                                                   P_CAND)
                    _end_search(x_row, row, b, j, G, state, tau, n_kept, kept, m, zm, T, top_p, draft_tokens_ptr,
                                draft_probs_ptr, uniforms_ptr, stats_ptr, argmax_ptr, flags_ptr, V, STAGE, TOP_P,
                                STOCHASTIC)


@triton.jit
def _end_search(x_row, row, b, j, G, state, tau, n_kept, kept, m, zm, T, top_p, draft_tokens_ptr, draft_probs_ptr,
                uniforms_ptr, stats_ptr, argmax_ptr, flags_ptr, V: tl.constexpr, STAGE: tl.constexpr,
                TOP_P: tl.constexpr, STOCHASTIC: tl.constexpr):
    """A row's threshold found (tau, with n_kept logits and mass kept at or above it): start the top-p stage
    after top-k, or store the row's statistics and test its draft."""
    if STAGE == 1 and TOP_P:
        none = tl.zeros([], tl.float64)
        _store_search(state, 2, tau, m, n_kept, kept, none, none, kept * top_p, m)
    else:
        _store_row_and_test(x_row, row, b, j, G, zm, (1.0 / kept).to(tl.float32), tau, 0, draft_tokens_ptr,
                            draft_probs_ptr, uniforms_ptr, stats_ptr, argmax_ptr, flags_ptr, V, T, False, STOCHASTIC)


@triton.jit
def _sum_pivot_stats(pivot_ptr, nsplit, NSPLIT_P2: tl.constexpr, P: tl.constexpr):
    """A row's pivot statistics from its chunks' (4 vectors of P per chunk: count, mass, up, down)."""
    at = tl.arange(0, NSPLIT_P2)[:, None] * 4 * P + tl.arange(0, P)[None, :]
    live = tl.arange(0, NSPLIT_P2)[:, None] < nsplit
    count = tl.sum(tl.load(pivot_ptr + at, mask=live, other=0.0, cache_modifier=".cg"), 0).to(tl.float32)
    mass = tl.sum(tl.load(pivot_ptr + P + at, mask=live, other=0.0, cache_modifier=".cg"), 0)
    up = tl.min(tl.load(pivot_ptr + 2 * P + at, mask=live, other=float("inf"), cache_modifier=".cg"), 0)
    down = tl.max(tl.load(pivot_ptr + 3 * P + at, mask=live, other=-float("inf"), cache_modifier=".cg"), 0)
    return count, mass, up.to(tl.float32), down.to(tl.float32)


@triton.jit(do_not_specialize=["G"])
def _residual_kernel(
    logits_ptr, draft_tokens_ptr, draft_probs_ptr, uniforms_ptr,  # inputs
    n_accepted_ptr, tokens_ptr,  # outputs
    stats_ptr, flags_ptr, counters_ptr, bsum_ptr,  # workspace, filled by _verify_kernel
    G, T,
    V: tl.constexpr, STOCHASTIC: tl.constexpr, CHUNK: tl.constexpr, BLOCK_V: tl.constexpr,
    NBLK_P2: tl.constexpr, G1_P2: tl.constexpr,
):
    """Sampled modes, grid (B, chunks): each program finds the first rejection n and sums the residual
    max(p_n - q_n, 0) over its chunk's blocks (float64); the last to finish samples from the block sums."""
    b = tl.program_id(0)
    c = tl.program_id(1)
    first = b * (G + 1)
    n = _first_rejection(flags_ptr, first, G, G1_P2)
    rn = first + n
    zm = tl.load(stats_ptr + rn * 3, cache_modifier=".cg").to(tl.float32)
    inv_mass = tl.load(stats_ptr + rn * 3 + 1, cache_modifier=".cg").to(tl.float32)
    tau = tl.load(stats_ptr + rn * 3 + 2, cache_modifier=".cg").to(tl.float32)
    x_n = tl.load(draft_tokens_ptr + b * G + n, mask=n < G, other=-1)
    q_on = (n < G).to(tl.int32)  # after G acceptances the bonus token comes from p
    x_row = logits_ptr + rn.to(tl.int64) * V
    q_row = draft_probs_ptr + (b * G + n).to(tl.int64) * V  # read only when n < G
    bsum_ptr += b * NBLK_P2
    for i in range(CHUNK // BLOCK_V):
        off = c * CHUNK + i * BLOCK_V
        r = _residual(x_row, q_row, off + tl.arange(0, BLOCK_V), x_n, q_on, zm, inv_mass, tau, T, V, STOCHASTIC)
        tl.store(bsum_ptr + off // BLOCK_V, tl.sum(r, 0, dtype=tl.float64), mask=off < V)
    if _arrive_last(counters_ptr + b, tl.cdiv(V, CHUNK)):
        tl.store(counters_ptr + b, 0)
        token = _sample_residual(x_row, q_row, x_n, q_on, zm, inv_mass, tau, T, tl.load(uniforms_ptr + first + G),
                                 bsum_ptr, V, STOCHASTIC, BLOCK_V, NBLK_P2)
        _store_outputs(b, G, n, token, draft_tokens_ptr, n_accepted_ptr, tokens_ptr, G1_P2)


@dataclass(frozen=True)
class Tuning:
    """Launch shape; any values give the same result. block_v: elements per vector op; chunk: per program
    of the first stage; cap: logits kept in registers by the threshold search (the chain kernel's candidates:
    cap / chunks per row from each chunk); pivots_row / pivots_cand: pivots per bisection step over the row /
    the candidates; bins: histogram bins that pick a chunk's candidates (powers of two); sort: find the
    chain kernel's thresholds among its candidates by sorting them (else by bisection); pivots_search,
    search_passes, block_search: when a chain row's threshold lies beyond its candidates, bisection steps spread
    over the row's chunks (_search_kernel), with this many pivots, this many steps per top-k / top-p stage
    (0: passes over the row in one program instead), over blocks of this many logits (a power of two, at most
    block_v, which it then divides, as it divides the chunks)."""

    block_v: int
    chunk: int
    cap: int
    pivots_row: int
    pivots_cand: int
    num_warps: int
    bins: int = 64
    sort: bool = True
    pivots_search: int = 32
    search_passes: int = 2
    block_search: int = 512


# cap 2048: the sampled call at gamma 8 over 128256 flat logits takes 128.5 us against 218 at cap 1024 (more
# candidates, so one sort finds most thresholds and the search's passes rarely run; H200, results/gpu/db4d4c2).
GPU = Tuning(block_v=2048, chunk=8192, cap=2048, pivots_row=2, pivots_cand=8, num_warps=8)
# The interpreter pays per operation, not per element: whole rows at once, wide bisection steps, no sorts.
INTERPRETER = Tuning(block_v=1 << 17, chunk=1 << 17, cap=4096, pivots_row=8, pivots_cand=16, num_warps=1,
                     bins=256, sort=False, pivots_search=16, block_search=1 << 14)


@dataclass(frozen=True)
class Launch:
    """What both verifier kernels (chain and tree) derive from the vocabulary, the sampling and the tuning:
    the vocabulary's split into chunks (one program each) and blocks, and the compile-time switches."""

    vocab: int
    tuning: Tuning
    block_v: int
    chunk: int
    nsplit: int
    nblk: int
    greedy: bool
    top_k: bool
    top_p: bool

    @classmethod
    def of(cls, vocab: int, sampling, tuning: Tuning) -> Launch:
        block_v = min(tuning.block_v, triton.next_power_of_2(vocab))
        nblk = triton.cdiv(vocab, block_v)
        chunk = block_v * min(triton.cdiv(tuning.chunk, block_v), nblk)
        greedy = sampling.temperature == 0
        return cls(vocab, tuning, block_v, chunk, triton.cdiv(vocab, chunk), nblk, greedy,
                   not greedy and 0 < sampling.top_k < vocab, not greedy and sampling.top_p < 1)

    @property
    def cap(self) -> int:
        """Logits the threshold search keeps in registers: below the chunk size, since Triton 3.6's coalescing
        pass crashes on the kernels when cap >= chunk (seen for vocabularies up to 4096 on sm_90). A smaller
        cap only means more bisection passes over the row; the threshold found is the same."""
        return min(self.tuning.cap, self.chunk // 2)

    def scalars(self, sampling) -> tuple[float, int, float]:
        """Temperature (1 when greedy: unused), top_k, and top_p as its float32 value, interpreted too."""
        top_p = torch.tensor(sampling.top_p, dtype=torch.float32).item()
        return 1.0 if self.greedy else sampling.temperature, sampling.top_k, top_p

    def constants(self, stochastic: bool) -> dict:
        t = self.tuning
        return dict(V=self.vocab, GREEDY=self.greedy, TOP_K=self.top_k, TOP_P=self.top_p, STOCHASTIC=stochastic,
                    CHUNK=self.chunk, BLOCK_V=self.block_v, CAP=self.cap, P_ROW=t.pivots_row, P_CAND=t.pivots_cand,
                    NSPLIT_P2=pow2(self.nsplit), NBLK_P2=pow2(self.nblk),
                    num_warps=t.num_warps)


def pow2(n: int) -> int:
    """The power of two >= n that sizes a per-chunk or per-block vector: at least 2, since Triton 3.6's
    coalescing pass asserts on one-element vectors (seen for V = 1000 on the H200)."""
    return max(2, triton.next_power_of_2(n))


def check_compiles(device: torch.device, kernel, name: str, reference: str) -> None:
    """Triton compiles for GPUs only: elsewhere the kernel runs only in the interpreter."""
    if device.type != "cuda" and isinstance(kernel, JITFunction):
        raise ValueError(
            f"{name} got {device} tensors, but Triton compiles for GPUs only: set TRITON_INTERPRET=1 before "
            f"anything imports triton (tests/conftest.py does), or use {reference}"
        )


def no_capture(device: torch.device, name: str) -> None:
    """A new shape allocates and zeroes its workspace: that must happen outside a CUDA graph capture."""
    if device.type == "cuda" and torch.cuda.is_current_stream_capturing():
        raise ValueError(f"{name} met a new shape while capturing a CUDA graph: call it once with these shapes "
                         "and sampling before capturing (a warm-up run)")


class Launcher:
    """One kernel's launches for one plan, whose grid, compile-time constants and trailing arguments (`fixed`:
    outputs, workspace, scalars) are fixed, so a call passes only its inputs. The first launch goes through
    Triton's JIT (`kernel[grid](...)`), which binds and specialises every argument, builds a cache key and
    compiles: most of a verifier call's host time when done on every call. Later launches reuse the compiled
    kernel it returned, with every parameter in signature order, constexprs included. That holds while the
    arguments specialise as at the first launch: a plan fixes shapes, dtypes, integers and workspace, so only
    the inputs' 16-byte alignment can change, and a call whose inputs are not all aligned takes the JIT path.

    The reuse is raw where Triton's C launcher has the layout it was written for (Triton 3.6, RAW_LAYOUT): the
    launcher itself, with every pointer as an int (its data_ptr() taken once for `fixed`), so the launcher
    neither calls data_ptr() nor asks the driver about each pointer (cuPointerGetAttribute), and no Python
    runner stands between. Elsewhere (another layout, a kernel needing scratch memory, a launch hook set) it
    calls the compiled kernel's runner (`CompiledKernel[grid]`). Either way the grid is 3-D (the runner reads
    grid[2], where the JIT fills it in; a 2-D grid raised IndexError on the H200). Should a reuse raise (nothing
    has launched then: the arguments are parsed first), reuse is switched off for the process with one warning,
    and the JIT path launches instead. The interpreter returns no compiled kernel: always the JIT path there."""

    enabled = True  # class-wide: cleared by the first direct launch that raises

    def __init__(self, kernel: JITFunction, grid: tuple, constants: dict, fixed: tuple = ()) -> None:
        self.kernel, self.grid, self.constants = kernel, tuple(grid) + (1,) * (3 - len(grid)), constants
        self.fixed = fixed
        self.direct = None
        self.raw = False  # whether `direct` calls the C launcher itself (reused_launch)

    def __call__(self, *inputs: Tensor) -> None:
        pointers = [t.data_ptr() for t in inputs]
        aligned = not reduce(operator.or_, pointers) % 16
        if aligned and self.direct is not None and Launcher.enabled:
            try:
                self.direct(*pointers)
                return
            except Exception as err:  # noqa: BLE001 - any failure: fall back to the JIT, which launches the same
                Launcher.enabled = False
                warnings.warn(f"verify_triton: direct kernel launches failed ({err!r}); launching through Triton's "
                              "JIT from now on (correct, with more host time per call)", RuntimeWarning, stacklevel=2)
        args = (*inputs, *self.fixed)
        compiled = self.kernel[self.grid](*args, **self.constants)
        if aligned and isinstance(compiled, CompiledKernel):
            tail = tuple(self.constants[name] for name in self.kernel.arg_names[len(args):])
            device = inputs[0].device.index or 0
            self.direct, self.raw = reused_launch(compiled, self.grid, device, (*self.fixed, *tail))


# The C launcher's leading arguments in Triton 3.6 (nvidia/driver.py's _BASE_ARGS_FORMAT): grid x, y, z, stream,
# function, cooperative, pdl, global scratch, profile scratch, kernel metadata, launch metadata, enter and exit hooks.
RAW_LAYOUT = "iiiKKppOOOOOO"


def raw_layout() -> str | None:
    try:
        from triton.backends.nvidia.driver import _BASE_ARGS_FORMAT
    except ImportError:
        return None
    return _BASE_ARGS_FORMAT


def current_stream(device: int) -> int:
    """The device's current CUDA stream as an int, as Triton's runner asks for it (capture runs on a side one)."""
    return torch._C._cuda_getCurrentRawStream(device)


def reused_launch(compiled: CompiledKernel, grid: tuple, device: int, tail: tuple):
    """A launch of `compiled` over `grid` taking the inputs' pointers (ints) then `tail` (tensors become their
    pointers here, once), and whether it is raw: the C launcher called directly where its layout is RAW_LAYOUT,
    else the runner."""
    run = compiled.run
    launch = getattr(run, "launch", None)
    hooks = knobs.runtime.launch_enter_hook, knobs.runtime.launch_exit_hook  # HookChains in 3.6, None before
    plain = (launch is not None and raw_layout() == RAW_LAYOUT and not any(getattr(h, "calls", h) for h in hooks)
             and not getattr(run, "global_scratch_size", 1) and not getattr(run, "profile_scratch_size", 1))
    if not plain:
        runner = compiled[grid]
        return (lambda *pointers: runner(*pointers, *tail)), False
    tail = tuple(a.data_ptr() if isinstance(a, Tensor) else a for a in tail)
    gx, gy, gz = grid
    function, cooperative, pdl, packed = (compiled.function, run.launch_cooperative_grid, run.launch_pdl,
                                          compiled.packed_metadata)
    return (lambda *pointers: launch(gx, gy, gz, current_stream(device), function, cooperative, pdl, None, None,
                                     packed, None, None, None, *pointers, *tail)), True


class _ChainPlan:
    """Everything verify_triton derives from the input shapes, the sampling and the tuning: checked, sized and
    allocated once (the workspace and the outputs too: its counters reset themselves), with its launches (each
    kernel's grid and compile-time constants bound), so a call only launches."""

    def __init__(self, target_logits: Tensor, draft_tokens: Tensor, draft_probs: Tensor | None, sampling,
                 uniforms: Tensor, tuning: Tuning | None) -> None:
        check_inputs(target_logits, draft_tokens, draft_probs, uniforms)
        dev = target_logits.device
        check_compiles(dev, _verify_kernel, "verify_triton", "verify_reference")
        no_capture(dev, "verify_triton")
        b, g1, vocab = target_logits.shape
        shape = Launch.of(vocab, sampling, tuning or (GPU if dev.type == "cuda" else INTERPRETER))
        t = shape.tuning
        rows, nsplit_p2, nblk_p2 = b * g1, pow2(shape.nsplit), pow2(shape.nblk)
        cap = max(shape.cap, nsplit_p2)  # at least one candidate per chunk
        stages = [stage for stage, on in ((1, shape.top_k), (2, shape.top_p)) if on]
        passes = t.search_passes if stages else 0
        # Workspace: chunk partials (max, mass, min, largest logit left out), row stats, candidates, block sums,
        # threshold searches, their per-chunk pivot statistics and the logits their chunks gather (float64: sums of
        # probabilities accumulate in float64); counters start at 0 and reset themselves.
        sizes = [rows * nsplit_p2 * 4, rows * 3, rows * cap, b * nblk_p2, rows * 9,
                 rows * nsplit_p2 * 4 * t.pivots_search, rows * nsplit_p2 * cap if passes else 1]
        part, stats, cand, bsum, self.search, pivots, gather = torch.zeros(sum(sizes), dtype=torch.float64,
                                                                           device=dev).split(sizes)
        sizes = [rows + 2 * b, rows * nsplit_p2, rows, rows]
        counters, part_arg, argmax, flags = torch.zeros(sum(sizes), dtype=torch.int32, device=dev).split(sizes)
        self.counters = counters
        # The outputs too (allocating and slicing them took a quarter of a call's host time): each call returns
        # the same two tensors, overwritten by the next call with this plan.
        out = torch.empty(b * (g1 + 1), dtype=torch.int64, device=dev)
        self.outputs = out[:b], out[b:].view(b, g1)
        temperature, top_k, top_p = shape.scalars(sampling)
        stochastic = draft_probs is not None
        # Draft lengths up to 31 share one compiled kernel (G is not specialised on either).
        g1_p2 = max(32, triton.next_power_of_2(g1))
        common = dict(V=vocab, STOCHASTIC=stochastic, CHUNK=shape.chunk, BLOCK_V=shape.block_v, num_warps=t.num_warps)
        constants = {k: v for k, v in shape.constants(stochastic).items() if k != "NBLK_P2"} | dict(
            CAP=cap, G1_P2=g1_p2, M=cap // nsplit_p2, NBINS=t.bins, SORT=t.sort, SEARCH=passes > 0)
        outputs = self.outputs
        self.launches = [Launcher(_verify_kernel, (b, g1, shape.nsplit), constants, (
            *outputs, part, part_arg, stats, argmax, flags, counters, cand, self.search, b, g1 - 1, temperature, top_k,
            top_p))]
        # The threshold searches the first kernel leaves to several programs: `passes` bisection steps per stage.
        search = common | dict(TOP_P=shape.top_p, BLOCK_S=min(t.block_search, shape.block_v), CAP=cap,
                               P_ROW=t.pivots_row, P_CAND=t.pivots_cand, P_SEARCH=t.pivots_search, NSPLIT_P2=nsplit_p2)
        self.launches += [Launcher(_search_kernel, (b, g1, shape.nsplit), search | dict(STAGE=stage), (
            stats, argmax, flags, counters, cand, self.search, pivots, gather, g1 - 1, temperature, top_p,
            int(step == passes - 1))) for stage in stages for step in range(passes)]
        if not shape.greedy:
            residual = common | dict(NBLK_P2=nblk_p2, G1_P2=g1_p2)
            self.launches.append(Launcher(_residual_kernel, (b, shape.nsplit), residual, (
                *outputs, stats, flags, counters[rows + b:], bsum, g1 - 1, temperature)))

    def launch(self, logits: Tensor, draft_tokens: Tensor, draft_probs: Tensor | None,
               uniforms: Tensor) -> tuple[Tensor, Tensor]:
        probs = logits if draft_probs is None else draft_probs
        for launch in self.launches:
            launch(logits, draft_tokens, probs, uniforms)
        return self.outputs


_CHAIN_PLANS: dict[tuple, _ChainPlan] = {}


def plan_key(sampling, tuning: Tuning | None, logits: Tensor, tokens: Tensor, probs: Tensor | None, uniforms: Tensor,
             parents: Tensor | None = None) -> tuple:
    """What a plan depends on, cheap to build (spelled out: a loop costs microseconds): the sampling, the tuning,
    the inputs' shapes and dtypes, and the logits' device."""
    return (sampling.temperature, sampling.top_k, sampling.top_p, tuning, logits.device, logits.dtype, logits.shape,
            tokens.shape, tokens.dtype, None if probs is None else (probs.shape, probs.dtype), uniforms.shape,
            uniforms.dtype, None if parents is None else parents.shape)


def verify_triton(
    target_logits: Tensor, draft_tokens: Tensor, draft_probs: Tensor | None, sampling, uniforms: Tensor,
    tuning: Tuning | None = None,
) -> tuple[Tensor, Tensor]:
    """`verify_reference` in one kernel launch (greedy) or two (sampled; more when a top-k / top-p threshold
    lies beyond the candidates, Tuning.search_passes). Inputs are checked the first time a shape, dtype,
    sampling and tuning come (then cached); non-finite logits are the caller's check. No host sync: the call
    can be captured in a CUDA graph once that combination has run outside it. Calls on one device share a
    workspace: keep them on one stream. The returned tensors are the plan's own, overwritten by the next call
    with the same shapes, dtypes, sampling and tuning: read (or clone) them before that."""
    key = plan_key(sampling, tuning, target_logits, draft_tokens, draft_probs, uniforms)
    plan = _CHAIN_PLANS.get(key)
    if plan is None:
        plan = _CHAIN_PLANS[key] = _ChainPlan(target_logits, draft_tokens, draft_probs, sampling, uniforms, tuning)
    return plan.launch(target_logits.contiguous(), draft_tokens.contiguous(),
                       None if draft_probs is None else draft_probs.contiguous(), uniforms.float().contiguous())
