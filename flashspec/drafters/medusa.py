"""Medusa heads (Cai et al. 2024, arXiv 2401.10774): K extra heads on the target's last hidden state h_t;
head k (k = 1..K) predicts token t + k + 1, the target's own head having predicted token t + 1.

Head k is a residual block z = h + SiLU(W_k h + b_k) (W_k, b_k start at zero) and its own LM head, which
starts as the target's: logits = lm_head(z) + (z A_k) B_k, the target's frozen [V, D] head plus a rank-r
correction (B_k starts at zero). A full copy of the LM head per head would be K x V x D parameters (K x 4 MB
for the family's target); the correction keeps each head its own output layer at a fraction of that, and
the checkpoint stores only the blocks and the corrections.

The draft is a static sparse tree (Medusa's): node (r_1, ..., r_d) is the rank-r_d token of head d under
node (r_1, ..., r_{d-1}). `sparse_tree` grows it greedily from the heads' measured top-k accuracies.

Medusa-1 as its authors released it (`ResBlockHeads`, FasterDecoding/Medusa medusa/model/medusa_model.py):
head k is `medusa_num_layers` residual blocks then its own full Linear(D, V) without bias; their files hold
no tree, so those heads draft Medusa's default tree (`OFFICIAL_TREE`). `save_official_medusa` writes our
heads in that layout (the correction folded into each head's Linear), with our tree as `medusa_choices`.
"""

from __future__ import annotations

import heapq
import json
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers import PretrainedConfig

from flashspec.drafters.checkpoint import CONFIG, load_checkpoint, save_checkpoint, target_signature
from flashspec.drafters.official import MEDUSA_FILES, check_shape, read_official

KIND = "medusa"
TREE_SIZE = 64  # nodes of the stored tree; the engine's gamma takes a prefix of it
# Medusa's default tree, `mc_sim_7b_63` of FasterDecoding/Medusa medusa/model/medusa_choices.py (what their
# medusa_generate falls back to for a base model it has no tuned tree for).
OFFICIAL_TREE = [
    (0,), (0, 0), (1,), (0, 1), (2,), (0, 0, 0), (1, 0), (0, 2), (3,), (0, 3), (4,), (0, 4), (2, 0), (0, 5),
    (0, 0, 1), (5,), (0, 6), (6,), (0, 7), (0, 1, 0), (1, 1), (7,), (0, 8), (0, 0, 2), (3, 0), (0, 9), (8,),
    (9,), (1, 0, 0), (0, 2, 0), (1, 2), (0, 0, 3), (4, 0), (2, 1), (0, 0, 4), (0, 0, 5), (0, 0, 0, 0),
    (0, 1, 1), (0, 0, 6), (0, 3, 0), (5, 0), (1, 3), (0, 0, 7), (0, 0, 8), (0, 0, 9), (6, 0), (0, 4, 0),
    (1, 4), (7, 0), (0, 1, 2), (2, 0, 0), (3, 1), (2, 2), (8, 0), (0, 5, 0), (1, 5), (1, 0, 1), (0, 2, 1),
    (9, 0), (0, 6, 0), (0, 0, 0, 1), (1, 6), (0, 7, 0),
]


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


class ResBlockHeads(nn.Module):
    """Medusa-1's heads: head k maps h through `layers` blocks z <- z + SiLU(W z + b), then its Linear(D, V)."""

    def __init__(self, n_heads: int, layers: int, width: int, vocab: int) -> None:
        super().__init__()
        self.block_weight = nn.Parameter(torch.zeros(n_heads, layers, width, width))
        self.block_bias = nn.Parameter(torch.zeros(n_heads, layers, width))
        self.lm_heads = nn.Parameter(torch.zeros(n_heads, vocab, width))

    @property
    def n_heads(self) -> int:
        return self.block_weight.shape[0]

    def forward(self, hidden: Tensor, heads: int | None = None) -> Tensor:
        """Logits [..., K, V] of the first `heads` (all by default) heads from hidden states [..., D]."""
        k = heads or self.n_heads
        z = hidden.to(self.block_weight.dtype)[..., None, :].expand(*hidden.shape[:-1], k, hidden.shape[-1])
        for j in range(self.block_weight.shape[1]):
            z = z + F.silu(torch.einsum("...kd,ked->...ke", z, self.block_weight[:k, j]) + self.block_bias[:k, j])
        return torch.einsum("...kd,kvd->...kv", z, self.lm_heads[:k])


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


def load_official_medusa(
    path: str | Path, target_config: PretrainedConfig, lm_head: Tensor
) -> tuple[ResBlockHeads, list[tuple[int, ...]]]:
    """Medusa-1 heads as released (on lm_head's device and dtype) and the tree they draft. The heads are
    counted in the weights, not read from `medusa_num_heads`, as their loader does (medusa_model.py sets 5
    over the uploaded config's count: "TODO: fix the uploaded config (only include 2 heads)")."""
    path, config, state = read_official(path, MEDUSA_FILES)
    state = {k.removeprefix("medusa_head."): v for k, v in state.items()}
    layers = int(config.get("medusa_num_layers", 1))
    n_heads = len({k.split(".")[0] for k in state})
    width, vocab = target_config.hidden_size, target_config.vocab_size
    heads = ResBlockHeads(n_heads, layers, width, vocab)
    with torch.no_grad():
        for k in range(n_heads):
            for j in range(layers):
                name = f"{k}.{j}.linear"
                heads.block_weight[k, j] = check_shape(KIND, path, f"{name}.weight", state.get(f"{name}.weight"),
                                                       (width, width), "hidden x hidden")
                heads.block_bias[k, j] = check_shape(KIND, path, f"{name}.bias", state.get(f"{name}.bias"),
                                                     (width,), "hidden")
            heads.lm_heads[k] = check_shape(KIND, path, f"{k}.{layers}.weight", state.get(f"{k}.{layers}.weight"),
                                            (vocab, width), "vocab x hidden")
    tree = [tuple(p) for p in config.get("medusa_choices", OFFICIAL_TREE) if len(p) <= n_heads]
    return heads.to(device=lm_head.device, dtype=lm_head.dtype).eval(), tree


def save_official_medusa(path: str | Path, heads: MedusaHeads, tree: list[tuple[int, ...]], base_model: str) -> Path:
    """Our heads in Medusa-1's layout, loadable by their MedusaModel.from_pretrained: `medusa_lm_head.pt`
    (each head's block, then its Linear = the target's head plus our correction) and a MedusaConfig."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    state = {}
    with torch.no_grad():
        for k in range(heads.n_heads):
            state[f"{k}.0.linear.weight"] = heads.block_weight[k].detach().clone()
            state[f"{k}.0.linear.bias"] = heads.block_bias[k].detach().clone()
            state[f"{k}.1.weight"] = heads.lm_head + (heads.down[k] @ heads.up[k]).T
    torch.save({k: v.float().cpu().contiguous() for k, v in state.items()}, path / MEDUSA_FILES[1])
    config = {"medusa_num_heads": heads.n_heads, "medusa_num_layers": 1, "base_model_name_or_path": base_model,
              "medusa_choices": [list(p) for p in tree]}
    (path / CONFIG).write_text(json.dumps(config, indent=2) + "\n")
    return path
