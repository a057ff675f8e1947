"""Speculative Streaming arm: the target drafts for itself through its LoRA-adapted top layers.

After every target forward the engine hands over the kept rows (`observe_target`); the arm keeps the
residual stream entering layer L - N at the last of them, the anchor t - 1 (t = the pending token's
position; the target's logits there produced the pending token). `propose` runs the gamma speculative
streams of that anchor through the drafter's top N layers, attending to the target's own KV cache of those
layers, and stream j proposes x_{t+1+j}. Streams do not see each other's sampled tokens, so each stream's
token is sampled from its own distribution q_j, which the draft states: a standard, lossless chain draft.

How close this is to the paper (Bhendawade et al. 2024):
* Same: multi-stream attention in the top N layers (streams = anchor state + stream embedding, each
  attending to the context and to the earlier streams), LoRA on those layers, the future n-gram objective,
  drafting costs N layers over gamma tokens and reuses the verification forward's work (the layer input at
  the anchor and the context's keys/values) instead of a separate model or a pass over the context.
* Different: the paper computes the streams inside the verification forward itself, for every tree
  candidate, and fine-tunes the main stream with LoRA too. Here verification is the unmodified target
  (so the output is exactly the target's), and the streams run as a second small pass after the verifier
  has picked the anchor, so the engine's one-target-forward-per-step loop and its other arms are unchanged;
  the paper's tree drafting and tree pruning layer are not used (the draft is a chain).
"""

from __future__ import annotations

import torch
from torch import Tensor

from flashspec.arms.base import Arm, Draft
from flashspec.config import ArmConfig, SamplingConfig
from flashspec.drafters.streaming import StreamingDrafter, load_streaming
from flashspec.models import CausalLM, NativeLlama
from flashspec.models.base import Scores
from flashspec.verify import process_logits, sample_from


class StreamingArm(Arm):
    def __init__(self, drafter: StreamingDrafter, target: NativeLlama, name: str = "streaming") -> None:
        check_native(target)
        if target.capture_layer not in (None, drafter.first):  # one captured set per target: eagle3's, or another
            raise ValueError(f"the target already hands layer(s) {target.capture_layer} to another arm: the "
                             f"streaming arm (layer {drafter.first}) cannot share a target with it")
        self.drafter, self.target, self.name = drafter.eval(), target, name
        target.set_capture_layer(drafter.first)
        self.anchor: Tensor | None = None  # the layer input at position `anchor_position`
        self.anchor_position = -1

    def begin(self, prompt: Tensor) -> None:
        self.anchor, self.anchor_position = None, -1

    def observe_target(self, start: int, scores: Scores) -> None:
        self.anchor = scores.layer_hidden[-1]
        self.anchor_position = start + len(scores.layer_hidden) - 1

    @torch.inference_mode()
    def propose(self, context: Tensor, gamma: int, sampling: SamplingConfig, generator) -> Draft:
        t = len(context) - 1
        if self.anchor_position != t - 1:
            raise RuntimeError(
                f"the streaming arm's anchor is position {self.anchor_position}, needs {t - 1}: the engine "
                "must hand every target forward's kept rows to observe_target"
            )
        first = self.drafter.first
        caches = zip(self.target.k_cache[first:], self.target.v_cache[first:], strict=True)
        context_kv = [(k[None, :, :t], v[None, :, :t]) for k, v in caches]
        device = self.anchor.device
        visible = torch.ones(1, t, dtype=torch.bool, device=device)
        position = torch.full((1,), t - 1, device=device)  # a fill on the device, not a copy from the host
        logits = self.drafter(self.anchor[None, None], position, context_kv, visible)
        q = process_logits(logits[0, 0, :gamma], sampling)
        tokens = sample_from(q, torch.rand(len(q), device=device, generator=generator))
        return Draft(tokens, None if sampling.greedy else q)


def build_streaming(cfg: ArmConfig, target: CausalLM) -> StreamingArm:
    """The arm for ArmConfig(kind="streaming", model=CHECKPOINT); it drafts up to the checkpoint's streams."""
    if cfg.params:
        raise ValueError(f"the streaming arm takes no params (got {sorted(cfg.params)}): its shape comes "
                         "from the checkpoint")
    check_native(target)
    return StreamingArm(load_streaming(cfg.model, target.model), target)


def check_native(target: CausalLM) -> None:
    if not isinstance(target, NativeLlama):
        raise ValueError(
            f"the streaming arm reads the target's KV cache, which only the native Llama backend exposes "
            f"(this target runs on {type(target).__name__}): set target.backend to auto or native"
        )
