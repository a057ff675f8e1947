"""Prompt lookup: find the latest earlier occurrence of the context's last n tokens and propose what followed."""

from __future__ import annotations

import torch
from torch import Tensor

from flashspec.arms.base import Arm, Draft
from flashspec.config import SamplingConfig


class PromptLookupArm(Arm):
    def __init__(self, ngram_max: int = 3, ngram_min: int = 1) -> None:
        if not 1 <= ngram_min <= ngram_max:
            raise ValueError(f"prompt lookup needs 1 <= ngram_min <= ngram_max, got {ngram_min}, {ngram_max}")
        self.ngram_max, self.ngram_min = ngram_max, ngram_min
        self.name = "prompt_lookup"

    def propose(self, context: Tensor, gamma: int, sampling: SamplingConfig, generator) -> Draft:
        for n in range(min(self.ngram_max, len(context) - 1), self.ngram_min - 1, -1):
            # Windows that end before the last token, so something follows each match.
            windows = context[:-1].unfold(0, n, 1)
            hits = (windows == context[-n:]).all(dim=1).nonzero()
            if len(hits):
                start = int(hits[-1]) + n
                return Draft(context[start : start + gamma].clone())
        return Draft(torch.empty(0, dtype=torch.long))
