"""Medusa heads (Cai et al. 2024, arXiv 2401.10774): K extra heads on the target's last hidden state h_t;
head k (k = 1..K) predicts token t + k + 1, the target's own head having predicted token t + 1.

Head k is a residual block z = h + SiLU(W_k h + b_k) (W_k, b_k start at zero) and its own LM head, which
starts as the target's: logits = lm_head(z) + (z A_k) B_k, the target's frozen [V, D] head plus a rank-r
correction (B_k starts at zero). A full copy of the LM head per head would be K x V x D parameters (K x 4 MB
for the family's target); the correction keeps each head its own output layer at a fraction of that, and
the checkpoint stores only the blocks and the corrections.

The draft is a static sparse tree (Medusa's): node (r_1, ..., r_d) is the rank-r_d token of head d under
node (r_1, ..., r_{d-1}). `sparse_tree` grows it greedily from the heads' measured top-k accuracies.
"""

from __future__ import annotations

import heapq
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers import PretrainedConfig

from flashspec.drafters.checkpoint import load_checkpoint, save_checkpoint, target_signature

KIND = "medusa"
TREE_SIZE = 64  # nodes of the stored tree; the engine's gamma takes a prefix of it


class MedusaHeads(nn.Module):
    def __init__(self, lm_head: Tensor, n_heads: int, rank: int) -> None:
        """`lm_head`: the target's output weight [V, D], shared (a buffer, not stored in checkpoints)."""
        super().__init__()
        if n_heads < 1 or rank < 1:
            raise ValueError(f"medusa heads={n_heads}, rank={rank}: both must be at least 1")
        vocab, width = lm_head.shape
        self.register_buffer("lm_head", lm_head.detach(), persistent=False)
        self.block_weight = nn.Parameter(torch.zeros(n_heads, width, width))
        self.block_bias = nn.Parameter(torch.zeros(n_heads, width))
        self.down = nn.Parameter(torch.randn(n_heads, width, rank) / width**0.5)
        self.up = nn.Parameter(torch.zeros(n_heads, rank, vocab))

    @property
    def n_heads(self) -> int:
        return self.block_weight.shape[0]

    def forward(self, hidden: Tensor, heads: int | None = None) -> Tensor:
        """Logits [..., K, V] of the first `heads` (all by default) heads from hidden states [..., D]."""
        k = heads or self.n_heads
        h = hidden.to(self.block_weight.dtype)
        block = torch.einsum("...d,ked->...ke", h, self.block_weight[:k]) + self.block_bias[:k]
        z = h[..., None, :] + F.silu(block)
        low = torch.einsum("...kd,kdr->...kr", z, self.down[:k])
        return z @ self.lm_head.T + torch.einsum("...kr,krv->...kv", low, self.up[:k])


def sparse_tree(accuracy: list[list[float]], size: int = TREE_SIZE) -> list[tuple[int, ...]]:
    """Medusa's sparse tree: starting from the root, keep adding the candidate node with the highest
    estimated acceptance, the product of accuracy[d][r_d] along its path (accuracy[d][r]: how often head
    d + 1's rank-r token is the right one). A node enters after its parent, so every prefix is a tree."""
    heap = [(-accuracy[0][0], 0, (0,), 1.0)]  # (-probability, insertion order, path, parent's probability)
    order, paths = 1, []
    while heap and len(paths) < size:
        neg, _, path, parent_p = heapq.heappop(heap)
        paths.append(path)
        depth, rank = len(path), path[-1]
        candidates = []
        if rank + 1 < len(accuracy[depth - 1]):  # the next sibling
            candidates.append((parent_p * accuracy[depth - 1][rank + 1], path[:-1] + (rank + 1,), parent_p))
        if depth < len(accuracy):  # the first child
            candidates.append((-neg * accuracy[depth][0], path + (0,), -neg))
        for p, child, base in candidates:
            heapq.heappush(heap, (-p, order, child, base))
            order += 1
    return paths


def tree_tensors(paths: list[tuple[int, ...]]) -> tuple[Tensor, Tensor, Tensor]:
    """parents (-1 = root), depth (1 = children of the root) and rank of each node, parents first."""
    index = {path: i for i, path in enumerate(paths)}
    if any(len(p) > 1 and index.get(p[:-1], len(paths)) >= i for i, p in enumerate(paths)):
        raise ValueError("medusa tree: list every node after its parent (e.g. sparse_tree's order)")
    parents = torch.tensor([index[p[:-1]] if len(p) > 1 else -1 for p in paths], dtype=torch.long)
    depth = torch.tensor([len(p) for p in paths], dtype=torch.long)
    rank = torch.tensor([p[-1] for p in paths], dtype=torch.long)
    return parents, depth, rank


def save_medusa(
    path: str | Path, heads: MedusaHeads, target_config: PretrainedConfig, accuracy: list[list[float]],
    training: dict,
) -> Path:
    """bf16 tensors (the checkpoint stays small), the tree grown from `accuracy`, and the training record."""
    state = {k: v.to(torch.bfloat16) for k, v in heads.state_dict().items()}
    meta = {"target": target_signature(target_config), "heads": heads.n_heads, "rank": heads.down.shape[-1],
            "accuracy": accuracy, "tree": sparse_tree(accuracy), "training": training}
    return save_checkpoint(path, KIND, state, meta)


def load_medusa(
    path: str | Path, target_config: PretrainedConfig, lm_head: Tensor
) -> tuple[MedusaHeads, list[tuple[int, ...]]]:
    """The heads (on lm_head's device and dtype) and their tree's paths."""
    meta, state = load_checkpoint(path, KIND, target_config)
    heads = MedusaHeads(lm_head, meta["heads"], meta["rank"])
    heads.load_state_dict(state)
    return heads.to(device=lm_head.device, dtype=lm_head.dtype).eval(), [tuple(p) for p in meta["tree"]]
