"""Train the Speculative Streaming drafter: LoRA on the target's top N layers plus gamma stream embeddings,
on the future n-gram objective, distilled from the frozen target.

One forward of the target over a window gives everything: the residual stream entering layer L - N at
every position (the streams' input), the top layers' keys and values of the context (recomputed from their
inputs, exactly as the target's KV cache holds them at inference), and the target's next-token
distribution p at every position. At a sample of anchors t, stream j is trained to match p at position
t + 1 + j (the target's distribution of x_{t+2+j} given the true prefix): cross-entropy with soft labels,
where the paper uses the ground-truth tokens.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor
from transformers import PreTrainedModel

from flashspec.drafters.layers import project
from flashspec.drafters.streaming import StreamingDrafter, default_lora, save_streaming
from flashspec.train.feature_drafters import train_drafter


@dataclass(frozen=True)
class StreamingPreset:
    n_layers: int  # top layers that become multi-stream layers (LoRA)
    n_streams: int  # speculative streams = the longest draft
    rank: int  # LoRA rank
    anchors: int  # anchors sampled per window each step


PRESETS = {
    "tiny": StreamingPreset(n_layers=2, n_streams=3, rank=4, anchors=16),
    "cpu": StreamingPreset(n_layers=2, n_streams=4, rank=8, anchors=32),
    "h100": StreamingPreset(n_layers=2, n_streams=4, rank=16, anchors=64),
}


@torch.no_grad()
def teacher_context(target: PreTrainedModel, first: int, batch: Tensor) -> tuple[Tensor, list, Tensor]:
    """For windows `batch` [B, S]: the residual stream entering layer `first` [B, S, D], the keys and values
    of layers first.. as the target's KV cache holds them ([B, Hkv, S, hd] each), and p [B, S, V]."""
    out = target(input_ids=batch, output_hidden_states=True)
    lm = target.model
    positions = torch.arange(batch.shape[1], device=batch.device)[None].expand(len(batch), -1)
    cos, sin = lm.rotary_emb(out.hidden_states[first], positions)
    context = []
    for i in range(first, len(lm.layers)):
        layer = lm.layers[i]
        _, k, v = project(layer.self_attn, layer.input_layernorm(out.hidden_states[i]), cos, sin)
        context.append((k, v))
    return out.hidden_states[first], context, out.logits.float().softmax(-1)


def streaming_loss(
    drafter: StreamingDrafter, target: PreTrainedModel, batch: Tensor, n_anchors: int,
    generator: torch.Generator,
) -> tuple[Tensor, Tensor]:
    """Soft cross-entropy of the streams at `n_anchors` random anchors per window, and each stream's top-1
    agreement with the target ([gamma])."""
    anchors_in, context, p = teacher_context(target, drafter.first, batch)
    seq = batch.shape[1]
    # Anchors t <= S - 2, so that at least stream 0's label (p at t + 1) lies inside the window.
    anchors = torch.randperm(seq - 1, generator=generator)[:n_anchors].sort().values.to(batch.device)
    visible = torch.arange(seq, device=batch.device)[None, :] <= anchors[:, None]
    logits = drafter(anchors_in[:, anchors], anchors, context, visible).float()
    label_at = anchors[:, None] + 1 + torch.arange(drafter.n_streams, device=batch.device)  # [A, gamma]
    valid = (label_at < seq).float()
    labels = p[:, label_at.clamp(max=seq - 1)]  # [B, A, gamma, V]
    loss = -(labels * logits.log_softmax(-1)).sum(-1)
    agree = (logits.argmax(-1) == labels.argmax(-1)).float()
    weight = valid.expand_as(loss)
    per_stream = (agree * weight).sum((0, 1)) / weight.sum((0, 1)).clamp(min=1)
    return (loss * weight).sum() / weight.sum(), per_stream


def train(target_path: str, out_dir: str | Path, preset: str = "tiny", device: str | None = None,
          seed: int = 0) -> dict:
    """Train a Speculative Streaming drafter for the target at `target_path` into `out_dir`; returns the
    training record."""
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}: use one of {sorted(PRESETS)}")
    shape = PRESETS[preset]

    def make(target: PreTrainedModel):
        drafter = StreamingDrafter(target, shape.n_layers, shape.n_streams, default_lora(shape.rank))
        return (drafter, lambda batch, g: streaming_loss(drafter, target, batch, shape.anchors, g),
                lambda path, record: save_streaming(path, drafter, target, record))

    return train_drafter("streaming", make, target_path, str(out_dir), preset, device, seed)
