"""Train the Speculative Streaming drafter: LoRA on the target's top N layers plus gamma stream embeddings,
on the future n-gram objective, distilled from the frozen target.

One forward of the target over a window, done once before training, gives everything: the residual stream
entering layer L - N at every position (the streams' input), the top layers' keys and values of the
context (recomputed from their inputs, exactly as the target's KV cache holds them at inference), and the
target's next-token distribution p at every position (from its final hidden state). At a sample of
anchors t, stream j is trained to match p at position t + 1 + j (the target's distribution of x_{t+2+j}
given the true prefix): cross-entropy with soft labels, where the paper uses the ground-truth tokens.
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
def streaming_states(target: PreTrainedModel, first: int, windows: Tensor, chunk: int = 64) -> Tensor:
    """[n, N + 1, S, D] per window: the inputs of the top layers first.. (the first one is the streams'
    anchor state; all give the context's keys and values) and the final hidden state (the teacher)."""
    return torch.cat([torch.stack(target(input_ids=w, output_hidden_states=True).hidden_states[first:], 1)
                      for w in windows.split(chunk)])


@torch.no_grad()
def teacher(target: PreTrainedModel, first: int, states: Tensor) -> tuple[Tensor, list, Tensor]:
    """From streaming_states [B, N + 1, S, D]: the anchor states [B, S, D], the keys and values of the top
    layers as the target's KV cache holds them ([B, Hkv, S, hd] each), and the target's p [B, S, V]."""
    lm = target.model
    seq = states.shape[2]
    positions = torch.arange(seq, device=states.device)[None].expand(len(states), -1)
    cos, sin = lm.rotary_emb(states[:, 0], positions)
    context = []
    for i, layer in enumerate(lm.layers[first:]):
        _, k, v = project(layer.self_attn, layer.input_layernorm(states[:, i]), cos, sin)
        context.append((k, v))
    return states[:, 0], context, target.lm_head(states[:, -1]).float().softmax(-1)


def streaming_loss(
    drafter: StreamingDrafter, target: PreTrainedModel, states: Tensor, n_anchors: int,
    generator: torch.Generator,
) -> tuple[Tensor, Tensor]:
    """Soft cross-entropy of the streams at `n_anchors` random anchors per window (states: streaming_states),
    and each stream's top-1 agreement with the target ([gamma])."""
    anchors_in, context, p = teacher(target, drafter.first, states)
    seq = states.shape[2]
    # Anchors t <= S - 2, so that at least stream 0's label (p at t + 1) lies inside the window.
    anchors = torch.randperm(seq - 1, generator=generator)[:n_anchors].sort().values.to(states.device)
    visible = torch.arange(seq, device=states.device)[None, :] <= anchors[:, None]
    logits = drafter(anchors_in[:, anchors], anchors, context, visible).float()
    label_at = anchors[:, None] + 1 + torch.arange(drafter.n_streams, device=states.device)  # [A, gamma]
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
        return (drafter, lambda windows: streaming_states(target, drafter.first, windows),
                lambda states, g: streaming_loss(drafter, target, states, shape.anchors, g),
                lambda path, record: save_streaming(path, drafter, target, record))

    return train_drafter("streaming", make, target_path, str(out_dir), preset, device, seed)
