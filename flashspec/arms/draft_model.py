"""A small draft model sharing the target's tokenizer, drafting autoregressively on its own KV cache."""

from __future__ import annotations

import torch
from torch import Tensor

from flashspec.arms.base import Arm, Draft
from flashspec.config import SamplingConfig
from flashspec.models import CausalLM
from flashspec.verify import process_logits, sample_from


class DraftModelArm(Arm):
    def __init__(self, model: CausalLM, name: str = "draft_model") -> None:
        self.model, self.name = model, name
        self.committed = 0  # cached tokens known to be committed context
        self.last: Draft | None = None  # the draft whose tokens are in the cache

    def begin(self, prompt: Tensor) -> None:
        self.model.reset()
        self.committed = 0

    def propose(self, context: Tensor, gamma: int, sampling: SamplingConfig, generator) -> Draft:
        gamma = min(gamma, self.model.max_context - len(context))
        if gamma < 1:
            return Draft(torch.empty(0, dtype=torch.long))
        # Re-feed at least the last token: its logits are what the first draft token is sampled from.
        keep = min(self.committed, len(context) - 1)
        self.model.crop(keep)
        logits = self.model.forward(context[keep:]).logits[-1:]
        tokens, probs = [], []
        for i in range(gamma):
            p = process_logits(logits, sampling)
            u = torch.rand(1, device=p.device, generator=generator)
            tokens.append(sample_from(p, u))
            probs.append(p)
            if i < gamma - 1:
                logits = self.model.forward(tokens[-1]).logits
        self.committed = len(context)
        self.last = Draft(torch.cat(tokens), None if sampling.greedy else torch.cat(probs))
        return self.last

    def observe(self, context: Tensor, draft: Draft, n_accepted: int) -> None:
        # Draft tokens 0..gamma-2 were fed to the cache; the accepted ones among them stay valid.
        if draft is self.last:
            self.committed += min(n_accepted, len(draft) - 1)
