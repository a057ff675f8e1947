"""Train the EAGLE head on the frozen target (Li et al. 2024): from the target's features f_i and the
embedding of x_{i+1}, predict f_{i+1} (smooth L1) and, through the target's lm_head, the target's
distribution of x_{i+2} (cross-entropy with the target's probabilities, weight 0.1), with uniform noise on
the input features so the head tolerates its own, imperfect predictions while drafting."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor
from transformers import PreTrainedModel

from flashspec.drafters.eagle import EagleHead, head_config, save_eagle, save_official_eagle
from flashspec.train.distill import target_hidden
from flashspec.train.feature_drafters import Distilled, train_drafter

NOISE = 0.1  # EAGLE's U(-0.1, 0.1) feature augmentation
CLS_WEIGHT = 0.1


@torch.no_grad()
def eagle_states(target: PreTrainedModel, windows: Tensor, chunk: int = 64) -> Tensor:
    """[n, 2, S, D] per window: the embeddings of its tokens and the target's features (last hidden state,
    after the final norm, as Scores.hidden): all the head trains on."""
    return torch.stack([target.get_input_embeddings()(windows), target_hidden(target, windows, chunk)], 1)


def eagle_loss(head: EagleHead, target: PreTrainedModel, states: Tensor, generator: torch.Generator,
               noise: float = NOISE) -> tuple[Tensor, Tensor]:
    """The EAGLE loss over windows' states [B, 2, S, D] (eagle_states), and the head's top-1 agreement with
    the target ([1])."""
    embeds, features = states[:, 0], states[:, 1]
    lm_head = target.get_output_embeddings()
    with torch.no_grad():
        p = lm_head(features[:, 1:]).float().softmax(-1)  # the target's distribution of x_{i+2}
    jitter = (torch.rand(features[:, :-1].shape, generator=generator) * 2 - 1) * noise
    inputs = features[:, :-1] + jitter.to(features.device, features.dtype)
    n = features.shape[1] - 1
    positions = torch.arange(n, device=features.device)[None].expand(len(features), -1)
    mask = torch.ones(n, n, dtype=torch.bool, device=features.device).tril()
    predicted, _, _ = head(inputs, embeds[:, 1:], positions, mask)
    log_q = lm_head(predicted).float().log_softmax(-1)
    regression = F.smooth_l1_loss(predicted.float(), features[:, 1:].float())
    classification = -(p * log_q).sum(-1).mean()
    agreement = (log_q.argmax(-1) == p.argmax(-1)).float().mean()
    return regression + CLS_WEIGHT * classification, agreement.view(1)


def train(target_path: str, out_dir: str | Path, preset: str = "tiny", device: str | None = None,
          seed: int = 0, time_budget_s: float | None = None, data: Distilled | None = None,
          official: bool = False) -> dict:
    """Train an EAGLE head for the target at `target_path` into `out_dir` (for `time_budget_s` seconds,
    default the preset's); returns the training record. `official`: EAGLE-1/2's head (no input norm on its
    layer), written in their layout (save_official_eagle), which their code loads."""
    def make(target: PreTrainedModel):
        head = EagleHead(head_config(target.config), input_norm=not official).to(target.device)

        def save(path: str, record: dict, _: Tensor) -> None:
            if official:
                save_official_eagle(path, head, target.get_input_embeddings().weight, target.config)
            else:
                save_eagle(path, head, target.config, record)

        return (head, lambda windows: eagle_states(target, windows),
                lambda states, g: eagle_loss(head, target, states, g), save)

    return train_drafter("eagle", make, target_path, str(out_dir), preset, device, seed,
                         time_budget_s=time_budget_s, data=data)
