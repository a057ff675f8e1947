"""The draft-arm interface: propose tokens (a chain, or a tree through `parents`), then hear what was kept."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import torch
from torch import Tensor

from flashspec.config import SamplingConfig
from flashspec.models.base import Scores


@dataclass
class Draft:
    tokens: Tensor  # [n] int64
    probs: Tensor | None = None  # [n, V] the distribution each token was sampled from; None = deterministic
    parents: Tensor | None = None  # [n] tree parent of each node (-1 = the pending token); None = a chain

    def __len__(self) -> int:
        return len(self.tokens)


class Arm(ABC):
    name: str
    tree: bool = False  # drafts token trees (Draft.parents): the engine then needs a target with supports_tree

    def begin(self, prompt: Tensor) -> None:
        """A new request starts with `prompt` ([n] int64, CPU)."""

    @abstractmethod
    def propose(self, context: Tensor, gamma: int, sampling: SamplingConfig, generator) -> Draft:
        """Up to `gamma` tokens to follow `context` (all committed ids, CPU); fewer, even none, is allowed."""

    def observe_target(self, start: int, scores: Scores) -> None:
        """After every target forward (the prefill included, whichever arm drafted): `scores` has the rows of
        the tokens it committed to the cache, positions [start, start + n). Arms that draft from the target's
        states (EAGLE, Medusa, Speculative Streaming) keep what they need."""

    def observe(self, context: Tensor, draft: Draft, n_accepted: int) -> None:
        """The target kept the first `n_accepted` tokens of this arm's last `draft`; `context` is now committed."""


class TargetStates:
    """The target's last hidden state at each committed position, as handed to `Arm.observe_target`: what the
    arms that draft from the target's features (EAGLE, Medusa) read."""

    def __init__(self, max_context: int, width: int, device: torch.device, dtype: torch.dtype) -> None:
        self.values = torch.zeros(max_context, width, device=device, dtype=dtype)
        self.known = 0  # states known for positions [0, known)

    def write(self, start: int, hidden: Tensor) -> None:
        self.values[start : start + len(hidden)] = hidden
        self.known = start + len(hidden)

    def upto(self, t: int, arm: str) -> Tensor:
        """The states of positions [0, t); an engine that skipped `observe_target` is a bug, named here."""
        if self.known < t:
            raise RuntimeError(
                f"the {arm} arm knows the target's hidden states up to position {self.known}, needs {t}: the "
                "engine must hand every target forward's kept rows to observe_target"
            )
        return self.values[:t]
