"""A small draft model sharing the target's tokenizer, drafting autoregressively on its own KV cache; or one
sharing the target's embedding and LM head too (flashspec/drafters/shared_head.py), attached at load time."""

from __future__ import annotations

import torch
from torch import Tensor

from flashspec.arms.base import Arm, Draft
from flashspec.config import ArmConfig, SamplingConfig
from flashspec.drafters.shared_head import load_shared_head
from flashspec.models import CausalLM
from flashspec.models.native import NativeLlama, is_supported
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


def build_shared_head_draft(cfg: ArmConfig, target: CausalLM) -> DraftModelArm:
    """The arm for a shared-head draft directory: its layers on the target's own embedding and head, decoding
    like the target (captured static steps where the target uses them)."""
    hf = getattr(target, "model", None)
    if hf is None or not is_supported(hf):
        raise ValueError(
            f"the draft at {cfg.model} borrows a Llama-family target's embedding and head; "
            f"{type(hf).__name__} is not one: use a whole draft model"
        )
    draft = NativeLlama(load_shared_head(cfg.model, hf), target.max_context, graphs=getattr(target, "graphs", False))
    return DraftModelArm(draft, name=f"draft:{cfg.model.rstrip('/').split('/')[-1]}")
