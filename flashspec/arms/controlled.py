"""A benchmark arm with a set acceptance rate: the target's own greedy continuation, each token replaced by a
wrong one with probability 1 - rate, drafted at the cost of a real draft model.

It measures the system, not a drafter. Each draft token is accepted with probability `rate` independently,
so a gamma-token draft yields (1 - rate^(gamma+1)) / (1 - rate) tokens per target step, and every draft
costs the draft model's own forwards and sampling (which it runs, discarding their tokens), so measured
speedups can be set against the ideal formula. Greedy decoding only: the continuation is what the target
emits under greedy decoding. Not a config kind: benchmarks build it directly (flashspec/bench/speculative.py).
"""

from __future__ import annotations

import torch
from torch import Tensor

from flashspec.arms.base import Arm, Draft
from flashspec.arms.draft_model import DraftModelArm
from flashspec.config import SamplingConfig
from flashspec.models import CausalLM


class ControlledArm(Arm):
    name = "controlled"

    def __init__(
        self, target: CausalLM, draft: DraftModelArm, rate: float, horizon: int = 256, seed: int = 0
    ) -> None:
        """`rate`: per-token acceptance probability (may be changed between requests); `horizon`: how many
        greedy tokens of the target to precompute per prompt (beyond them the arm drafts nothing)."""
        self.target, self.draft, self.horizon, self.seed = target, draft, horizon, seed
        self.rate = rate
        self.rng = torch.Generator().manual_seed(seed)
        self.continuations: dict[tuple[int, ...], Tensor] = {}  # per prompt: the precomputing is slow
        self.tested = self.hits = 0  # draft tokens the verifier looked at, and those it accepted

    @property
    def rate(self) -> float:
        return self._rate

    @rate.setter
    def rate(self, value: float) -> None:
        if not 0 <= value <= 1:
            raise ValueError(f"controlled arm rate={value}: use an acceptance probability in [0, 1]")
        self._rate = value

    @property
    def realized_rate(self) -> float:
        """Accepted over tested draft tokens (tested: up to a draft's first rejection); estimates `rate`."""
        return self.hits / self.tested if self.tested else float("nan")

    def begin(self, prompt: Tensor) -> None:
        """Runs the target on its own cache (the engine resets it next): call before the request's prefill."""
        self.draft.begin(prompt)
        self.rng.manual_seed(self.seed)
        key = tuple(prompt.tolist())
        if key not in self.continuations:
            self.continuations[key] = greedy_continuation(self.target, prompt, self.horizon)
        self.truth, self.prompt_len = self.continuations[key], len(prompt)

    def propose(self, context: Tensor, gamma: int, sampling: SamplingConfig, generator) -> Draft:
        start = len(context) - self.prompt_len
        truth = self.truth[start : start + gamma]
        if len(truth) == 0:
            return Draft(torch.empty(0, dtype=torch.long))
        self.draft.propose(context, len(truth), sampling, generator)  # what a real drafter would cost
        wrong = torch.rand(len(truth), generator=self.rng) >= self.rate
        shift = torch.randint(1, self.target.vocab_size, (len(truth),), generator=self.rng)
        return Draft(torch.where(wrong, (truth + shift) % self.target.vocab_size, truth))

    def observe(self, context: Tensor, draft: Draft, n_accepted: int) -> None:
        self.draft.observe(context, self.draft.last, n_accepted)
        self.tested += min(n_accepted + 1, len(draft))
        self.hits += n_accepted


@torch.inference_mode()
def greedy_continuation(target: CausalLM, prompt: Tensor, n: int) -> Tensor:
    """The target's next `n` greedy tokens after `prompt` (CPU int64, fewer if the context ends first)."""
    n = min(n, target.max_context - len(prompt))
    target.reset()
    logits = target.forward(prompt).logits[-1]
    tokens = []
    for i in range(n):
        tokens.append(logits.argmax()[None])  # stays on the device: one copy to the host at the end
        if i < n - 1:
            logits = target.forward(tokens[-1]).logits[-1]
    target.reset()
    return torch.cat(tokens).cpu() if tokens else torch.empty(0, dtype=torch.long)
