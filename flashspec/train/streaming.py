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
from flashspec.train.feature_drafters import Distilled, train_drafter


@dataclass(frozen=True)
class StreamingPreset:
    n_layers: int  # top layers that become multi-stream layers (LoRA)
    n_streams: int  # speculative streams = the longest draft
    rank: int  # LoRA rank
    anchors: int  # anchors sampled per window each step
    lr: float  # replaces the FIT preset's
    stream_lr_scale: float  # the stream embeddings' learning rate, in multiples of lr


# Why cpu has lr 1e-2 and stream_lr_scale 10. A stream's input is the anchor's residual stream plus its stream
# embedding; at the family target's layer 7 that residual has RMS 3.1 per element (norm ~50), the embeddings
# start at 0.02 per element (norm 0.3), and Adam moves them by at most ~lr per element per step, so at lr 2e-3
# they stay ~2 % of the anchor (norm 1.0 after 400 steps; 0.8 in the 413-step run shipped before): every
# stream sees nearly the same input and the streams cannot tell which offset to predict. Greedy on 5 MT-Bench
# prompts, that run's streams 0-3 all agreed with x_{t+1}, the target's own next token, on 39-45 % of
# positions, and stream 0 with its own target x_{t+2} on 2.4 %. Same data, 400 steps, held-out loss /
# per-stream agreement (16 windows x 32 anchors): lr 2e-3: 5.88 / [0.14, 0.13, 0.12, 0.13]; lr 1e-2: 5.76 /
# [0.17, 0.13, 0.14, 0.13]; lr 1e-2 with stream_lr_scale 10 (the embeddings reach norm ~20): 5.71 / [0.21,
# 0.18, 0.12, 0.11]. The 780 s cpu run with this preset: stream 0 agrees with x_{t+2} on 23.8 % and with
# x_{t+1} on 20.6 % of those MT-Bench positions. h100 keeps its lr (not re-measured on a GPU).
PRESETS = {
    "tiny": StreamingPreset(n_layers=2, n_streams=3, rank=4, anchors=16, lr=3e-3, stream_lr_scale=10),
    "cpu": StreamingPreset(n_layers=2, n_streams=4, rank=8, anchors=32, lr=1e-2, stream_lr_scale=10),
    "h100": StreamingPreset(n_layers=2, n_streams=4, rank=16, anchors=64, lr=1e-3, stream_lr_scale=10),
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
          seed: int = 0, time_budget_s: float | None = None, data: Distilled | None = None) -> dict:
    """Train a Speculative Streaming drafter for the target at `target_path` into `out_dir` (for
    `time_budget_s` seconds, default the preset's); returns the training record."""
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}: use one of {sorted(PRESETS)}")
    shape = PRESETS[preset]

    def make(target: PreTrainedModel):
        drafter = StreamingDrafter(target, shape.n_layers, shape.n_streams, default_lora(shape.rank))
        return (drafter, lambda windows: streaming_states(target, drafter.first, windows),
                lambda states, g: streaming_loss(drafter, target, states, shape.anchors, g),
                lambda path, record, _: save_streaming(path, drafter, target, record))

    def groups(drafter: StreamingDrafter) -> list[dict]:
        lora = [p for name, p in drafter.named_parameters() if p.requires_grad and name != "streams"]
        return [{"params": lora}, {"params": [drafter.streams], "lr_scale": shape.stream_lr_scale}]

    return train_drafter("streaming", make, target_path, str(out_dir), preset, device, seed, lr=shape.lr,
                         time_budget_s=time_budget_s, groups=groups, data=data)
