"""Train a shared-head draft model (flashspec/drafters/shared_head.py) on the frozen target by self-distillation:
its own copies of the target's first layers, on the target's frozen embedding and LM head, learn the
target's next-token distribution at every position of the target's own continuations (KL(p_target || q_draft),
the teacher read off the cached final hidden states through the target's head)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor
from transformers import PreTrainedModel

from flashspec.drafters.shared_head import SharedHeadDraft, save_shared_head
from flashspec.train.distill import target_hidden
from flashspec.train.feature_drafters import Distilled, train_drafter


@dataclass(frozen=True)
class DraftShape:
    layers: int  # the draft's own decoder layers, copies of the target's first ones
    lr: float


# The copied layers are a poor start: on SmolLM2-135M-Instruct, its first layer then its final norm and head
# are at KL 15.1 nats from the target (held-out, `--preset tiny --prompts chat` on the CPU), so the h100 preset
# trains at a small model's usual learning rate, not a fine-tuning one (not tuned: no GPU run yet).
SHAPES = {
    "tiny": DraftShape(layers=1, lr=3e-3),
    "cpu": DraftShape(layers=1, lr=1e-3),
    "h100": DraftShape(layers=2, lr=1e-3),
}


@torch.no_grad()
def draft_states(target: PreTrainedModel, windows: Tensor) -> Tensor:
    """[n, S, D + 1] per window: the target's final hidden states (the teacher) with the window's token ids as
    one more float column (exact: ids are far below 2^24), so one tensor carries both through fit's batching."""
    hidden = target_hidden(target, windows).float()
    return torch.cat([hidden, windows[..., None].float()], -1)


def draft_loss(draft: SharedHeadDraft, states: Tensor) -> tuple[Tensor, Tensor]:
    """Mean KL(p_target || q_draft) over every position of windows' states [B, S, D + 1] (draft_states), and
    the draft's top-1 agreement with the target ([1])."""
    hidden, ids = states[..., :-1], states[..., -1].long()
    with torch.no_grad():
        log_p = draft.lm_head(hidden).float().log_softmax(-1)
    with torch.autocast(states.device.type, dtype=torch.bfloat16, enabled=states.device.type == "cuda"):
        logits = draft(ids)
    log_q = logits.float().log_softmax(-1)
    kl = (log_p.exp() * (log_p - log_q)).sum(-1).mean()
    return kl, (log_q.argmax(-1) == log_p.argmax(-1)).float().mean().view(1)


def train(target_path: str, out_dir: str | Path, preset: str = "tiny", device: str | None = None,
          seed: int = 0, time_budget_s: float | None = None, data: Distilled | None = None) -> dict:
    """Train a shared-head draft for the target at `target_path` into `out_dir` (for `time_budget_s` seconds,
    default the FIT preset's); returns the training record."""
    if preset not in SHAPES:
        raise ValueError(f"unknown preset {preset!r}: use one of {sorted(SHAPES)}")
    shape = SHAPES[preset]

    def make(target: PreTrainedModel):
        draft = SharedHeadDraft.from_target(target, shape.layers)
        return (draft, lambda windows: draft_states(target, windows),
                lambda states, g: draft_loss(draft, states),
                lambda path, record, _: save_shared_head(path, draft, target.config, target_path, record))

    return train_drafter("draft", make, target_path, str(out_dir), preset, device, seed, lr=shape.lr,
                         time_budget_s=time_budget_s, extra={"layers": shape.layers, "init": "the target's first "
                                                             f"{shape.layers} layers and its final norm"},
                         data=data)
