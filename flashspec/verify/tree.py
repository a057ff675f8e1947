"""Token-tree verification in plain PyTorch: the specification the Triton kernel (tree_triton.py) must match.

A tree draft is N nodes with `tokens` and `parents` (-1 = the root, i.e. the pending token); parents precede
their children. Row 0 of `target_logits` is the target at the root, row i + 1 the target at node i.

Greedy: the accepted path is the longest root-to-leaf path whose every token is the target's argmax at its
parent (the lowest node index among equally deep ends); the final token is the argmax at its last node.

Sampling: recursive rejection sampling over siblings (the multi-draft speculative sampling of SpecInfer and
SpecTr). Walking down from the root with a residual r (= p at each newly accepted node): the node's children
are tried in index order; child c with token x is accepted iff u_c * q_c(x) < r(x) / |r|; on rejection
r <- max(r / |r| - q_c, 0) and the next sibling is tried. When every child is rejected (or the node is a
leaf) the final token is sampled from r with u_N. A chain-shaped tree reproduces `verify_reference`.

Lossless (the emitted tokens are distributed exactly as the target's own samples) under this condition:
each sibling's token is drawn from its stated q_c independently of its earlier siblings' tokens, given the
path to their parent -- e.g. i.i.d. draws *with replacement* from one q -- and a node's subtree depends on its
own path only. Each sibling is then one standard speculative-sampling step from r towards r's residual:
min(r, q) + (1 - sum min(r, q)) * norm(max(r - q, 0)) = r, by induction over the siblings. A deterministic
sibling (draft_probs None: q_c one-hot at x) meets the condition trivially: distinct top-k tokens give "accept
x with probability r(x), else remove x from r and renormalise", i.e. sampling without replacement.
Not lossless: sampling siblings *without* replacement while stating q, or Medusa's typical acceptance.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from flashspec.models.base import tree_mask
from flashspec.verify.reference import process_logits, sample_from, to_device


def check_tree_inputs(
    target_logits: Tensor, tokens: Tensor, parents: Tensor, draft_probs: Tensor | None, uniforms: Tensor
) -> None:
    """Shapes and dtypes shared by both implementations (no host-device synchronisation)."""
    if target_logits.dim() != 2:
        raise ValueError(f"target_logits has shape {tuple(target_logits.shape)}: expected [N+1, V]")
    n1, vocab = target_logits.shape
    expected = {"tokens": (tokens, (n1 - 1,)), "parents": (parents, (n1 - 1,)), "uniforms": (uniforms, (n1,))}
    if draft_probs is not None:
        expected["draft_probs"] = (draft_probs, (n1 - 1, vocab))
    for name, (tensor, shape) in expected.items():
        if tuple(tensor.shape) != shape:
            raise ValueError(
                f"{name} has shape {tuple(tensor.shape)}: expected {shape} to match target_logits [N+1, V]"
            )
    for name, tensor in (("tokens", tokens), ("parents", parents)):
        if tensor.dtype != torch.int64:
            raise ValueError(f"{name} has dtype {tensor.dtype}: pass int64")


def check_parents(parents: Tensor) -> None:
    """Every parent is -1 (the root) or an earlier node: the order both verifiers walk the tree in."""
    bad = (parents < -1) | (parents >= torch.arange(len(parents), device=parents.device))
    if bad.any():
        i = int(bad.nonzero()[0])
        raise ValueError(
            f"parents[{i}] = {int(parents[i])}: each parent must be -1 (the pending token) or the index of "
            "an earlier node; list the tree's nodes parents-first (e.g. breadth-first)"
        )


def verify_tree_reference(
    target_logits: Tensor, tokens: Tensor, parents: Tensor, draft_probs: Tensor | None, sampling,
    uniforms: Tensor,
) -> tuple[Tensor, Tensor, Tensor]:
    """Verify one token tree: returns n_accepted ([] int64), path ([N]: the accepted nodes root-first, then
    -1) and tokens ([N+1]: the accepted tokens, the final token at index n_accepted, then -1)."""
    check_tree_inputs(target_logits, tokens, parents, draft_probs, uniforms)
    check_parents(parents.cpu())
    if not torch.isfinite(target_logits).all():
        raise ValueError(
            "non-finite logits (NaN or inf) in target_logits: check the target's weights and dtype "
            "(float16 often overflows; use bfloat16 or float32)"
        )
    tokens, parents, draft_probs, uniforms = to_device(target_logits.device, tokens, parents, draft_probs, uniforms)
    if sampling.temperature == 0:
        path = _greedy_path(target_logits.argmax(-1), tokens, parents)
        final = target_logits[path[-1] + 1 if path else 0].argmax()
    else:
        p = process_logits(target_logits, sampling)
        path, final = _sample_path(p, tokens, parents, draft_probs, uniforms)
    return _outputs(path, final, tokens)


def _greedy_path(argmax: Tensor, tokens: Tensor, parents: Tensor) -> list[int]:
    """The deepest node whose whole path matches the target's argmax, and its ancestors, root first."""
    if len(tokens) == 0:
        return []
    match = tokens == argmax[parents + 1]
    ancestry = tree_mask(parents.cpu()).to(tokens.device)  # [i, j]: j is i or an ancestor of i
    ok = ~(ancestry & ~match).any(-1)
    depth = ancestry.sum(-1) * ok
    best = int(depth.argmax())  # the first of the deepest
    return ancestry[best].nonzero()[:, 0].tolist() if ok[best] else []


def _sample_path(
    p: Tensor, tokens: Tensor, parents: Tensor, draft_probs: Tensor | None, uniforms: Tensor
) -> tuple[list[int], Tensor]:
    """Recursive rejection sampling. Children come after their parent, so one scan over the nodes meets the
    children of each newly accepted node in order. r is kept unnormalised with its mass, as in the chain."""
    node, r, mass = -1, p[0], 1.0
    path = []
    for c, (x, parent) in enumerate(zip(tokens.tolist(), parents.tolist(), strict=True)):
        if parent != node:
            continue
        q = draft_probs[c].float() if draft_probs is not None else F.one_hot(tokens[c], p.shape[-1]).float()
        if uniforms[c] * q[x] < r[x] / mass:
            path.append(c)
            node, r, mass = c, p[c + 1], 1.0
            continue
        residual = (r / mass - q).clamp(min=0)
        # The mass in float64, as the reference's sums (the order of additions must not show), then float32.
        left = residual.sum(dtype=torch.float64)
        # No residual mass: r == q up to rounding, so the rejection had probability 0; keep r.
        if left > 0:
            r, mass = residual, left.float()
    return path, sample_from(r, uniforms[-1])


def _outputs(path: list[int], final: Tensor, tokens: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    n, k = len(tokens), len(path)
    nodes = torch.tensor(path + [-1] * (n - k), dtype=torch.long, device=tokens.device)
    out = torch.cat([tokens[nodes[:k]], final.view(1).to(tokens.device), tokens.new_full((n - k,), -1)])
    return torch.tensor(k, device=tokens.device), nodes, out


def matched_length(tokens: Tensor, parents: Tensor | None, kept: list[int]) -> int:
    """How many leading tokens of `kept` the draft spells down one root path (a chain when parents is None):
    what a draft would have had accepted, for full-information bandits."""
    parents = torch.arange(len(tokens)) - 1 if parents is None else parents
    child = {}  # (parent, token) -> the first such node
    for c, key in enumerate(zip(parents.tolist(), tokens.tolist(), strict=True)):
        child.setdefault(key, c)
    node = -1
    for n, token in enumerate(kept):
        node = child.get((node, token))
        if node is None:
            return n
    return len(kept)
