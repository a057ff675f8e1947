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

from flashspec.drafters.eagle import EagleHead, head_config, save_eagle
from flashspec.train.feature_drafters import train_drafter

NOISE = 0.1  # EAGLE's U(-0.1, 0.1) feature augmentation
CLS_WEIGHT = 0.1


def eagle_loss(head: EagleHead, target: PreTrainedModel, batch: Tensor, generator: torch.Generator,
               noise: float = NOISE) -> tuple[Tensor, Tensor]:
    """The EAGLE loss over windows `batch` [B, S], and the head's top-1 agreement with the target ([1])."""
    with torch.no_grad():
        out = target(input_ids=batch, output_hidden_states=True)
    features = out.hidden_states[-1]  # after the final norm, as Scores.hidden
    p = out.logits[:, 1:].float().softmax(-1)
    jitter = (torch.rand(features[:, :-1].shape, generator=generator) * 2 - 1) * noise
    inputs = features[:, :-1] + jitter.to(features.device, features.dtype)
    n = batch.shape[1] - 1
    positions = torch.arange(n, device=batch.device)[None].expand(len(batch), -1)
    mask = torch.ones(n, n, dtype=torch.bool, device=batch.device).tril()
    predicted, _, _ = head(inputs, target.get_input_embeddings()(batch[:, 1:]), positions, mask)
    log_q = target.get_output_embeddings()(predicted).float().log_softmax(-1)
    regression = F.smooth_l1_loss(predicted.float(), features[:, 1:].float())
    classification = -(p * log_q).sum(-1).mean()
    agreement = (log_q.argmax(-1) == p.argmax(-1)).float().mean()
    return regression + CLS_WEIGHT * classification, agreement.view(1)


def train(target_path: str, out_dir: str | Path, preset: str = "tiny", device: str | None = None,
          seed: int = 0) -> dict:
    """Train an EAGLE head for the target at `target_path` into `out_dir`; returns the training record."""
    def make(target: PreTrainedModel):
        head = EagleHead(head_config(target.config)).to(target.device)
        return (head, lambda batch, g: eagle_loss(head, target, batch, g),
                lambda path, record: save_eagle(path, head, target.config, record))

    return train_drafter("eagle", make, target_path, str(out_dir), preset, device, seed)
