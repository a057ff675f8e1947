"""What the engine needs from a causal LM: score new tokens on top of a KV cache, and roll the cache back."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class Scores:
    logits: Tensor  # [n, V] float32, one row per new token
    hidden: Tensor  # [n, D] final hidden state (after the last norm), the feature EAGLE / Medusa heads read
    # [n, D] the residual stream entering layer `capture_layer` (models that capture one; [n, k * D] for k layers)
    layer_hidden: Tensor | None = None

    def rows(self, index: slice | Tensor) -> Scores:
        """The scores of some rows (e.g. the ones the verifier kept)."""
        layer = None if self.layer_hidden is None else self.layer_hidden[index]
        return Scores(self.logits[index], self.hidden[index], layer)


class CausalLM(ABC):
    """A model plus the KV cache of one request; `length` tokens are cached."""

    vocab_size: int
    max_context: int
    supports_tree: bool = False
    length: int = 0
    capture_layer: int | tuple[int, ...] | None = None  # fill Scores.layer_hidden with these layers' inputs
    rollback_problem: str | None = None  # why `crop` cannot work (then only autoregressive decoding can)
    per_token_rope: bool = False  # rotates every token as `generate` does, whatever the RoPE type

    @abstractmethod
    def reset(self) -> None:
        """Start a new request (empty cache)."""

    @abstractmethod
    def forward(self, tokens: Tensor, parents: Tensor | None = None) -> Scores:
        """Append `tokens` ([n] int64) to the cache and score them.

        `parents` ([n], -1 = the last cached token) makes the block a token tree: each node attends to the
        cache and its own ancestors only. Only models with `supports_tree` accept it."""

    @abstractmethod
    def crop(self, length: int) -> None:
        """Keep the first `length` cached tokens."""

    def keep_path(self, start: int, nodes: Tensor) -> None:
        """After a tree forward from `start`, keep the cache entries of `nodes` (a root-to-leaf path)."""
        raise NotImplementedError(f"{type(self).__name__} cannot verify token trees")

    def check_room(self, n: int) -> None:
        if self.length + n > self.max_context:
            raise ValueError(
                f"context of {self.length + n} tokens exceeds max_context={self.max_context}: "
                "shorten the prompt, lower max_new_tokens or raise target.max_context"
            )


def tree_depths(parents: Tensor) -> Tensor:
    """Depth of each node (1 for children of the root); parents precede their children."""
    depth = torch.zeros(len(parents), dtype=torch.long)
    for i, p in enumerate(parents.tolist()):
        depth[i] = 1 if p < 0 else depth[p] + 1
    return depth


def tree_mask(parents: Tensor) -> Tensor:
    """[n, n] bool: node i may attend to node j iff j is i or one of its ancestors."""
    n = len(parents)
    mask = torch.eye(n, dtype=torch.bool)
    for i, p in enumerate(parents.tolist()):
        if p >= 0:
            mask[i] |= mask[p]
    return mask
