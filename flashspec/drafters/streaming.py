"""Speculative Streaming (Bhendawade et al. 2024, arXiv 2402.11131) as a drafter for a lossless engine.

The paper turns the target's top N layers into multi-stream attention layers: after the main stream's token
at position t, gamma speculative streams (the main stream's hidden state entering those layers plus a learned
stream-identifier embedding) run through the top layers, each attending to the context and to the streams
before it, and stream j predicts x_{t+2+j}. LoRA adapters on the top layers and the stream embeddings are
the only new parameters, trained on that future n-gram objective.

Here the target itself stays untouched (verification is the original model's, so decoding stays lossless):
the drafter holds copies of the top N layers that *share* the target's weight tensors, with peft LoRA
injected into the copies only. The streams need three things the verification forward already computed:
the residual stream entering layer L - N at the anchor (the last token in the target's cache) and, as the
context, the keys and values of the top N layers in the target's own KV cache. Drafting therefore costs
N layers over gamma stream tokens; nothing is recomputed over the context (see flashspec/arms/streaming.py
for how close this is to "one forward verifies and drafts").
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch
from peft import LoraConfig
from torch import Tensor, nn
from transformers import PreTrainedModel

from flashspec.drafters.checkpoint import load_checkpoint, save_checkpoint, target_signature
from flashspec.drafters.layers import decoder_layer
from flashspec.lora import LoRAAdapter

KIND = "streaming"
PROJECTIONS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
STREAM_INIT_STD = 0.02


def default_lora(r: int = 8) -> LoraConfig:
    return LoraConfig(r=r, lora_alpha=2 * r, lora_dropout=0.0, target_modules=list(PROJECTIONS))


class StreamingDrafter(nn.Module):
    def __init__(
        self, target: PreTrainedModel, n_layers: int, n_streams: int, lora: LoraConfig | dict | None = None
    ) -> None:
        super().__init__()
        lm = target.model
        if not 1 <= n_layers <= len(lm.layers):
            depth = len(lm.layers)
            raise ValueError(f"n_layers={n_layers}: the target has {depth} layers; stream through 1 to "
                             f"{depth} of its top layers")
        if n_streams < 1:
            raise ValueError(f"n_streams={n_streams}: use at least one speculative stream")
        self.first = len(lm.layers) - n_layers  # the streams enter here
        shared = {id(t): t for t in [*target.parameters(), *target.buffers()]}
        top = nn.Module()
        top.layers = nn.ModuleList(copy.deepcopy(layer, shared) for layer in lm.layers[self.first :])
        self.adapter = LoRAAdapter(top, lora if lora is not None else default_lora())
        self.layers = top.layers  # now with LoRA inside; the target's own layers are untouched
        streams = torch.randn(n_streams, target.config.hidden_size, device=target.device, dtype=target.dtype)
        self.streams = nn.Parameter(streams * STREAM_INIT_STD)
        # The target's frozen final norm, lm_head and rotary embedding; a tuple keeps them out of state_dict.
        self.shared = (lm.norm, target.lm_head, lm.rotary_emb)

    @property
    def n_streams(self) -> int:
        return len(self.streams)

    def forward(
        self, anchors: Tensor, positions: Tensor, context: list[tuple[Tensor, Tensor]], context_mask: Tensor
    ) -> Tensor:
        """Logits [B, A, gamma, V] of the streams at A anchors: stream j of anchor t predicts x_{t+2+j}.

        anchors [B, A, D]: the residual stream entering layer `first` at the anchor positions `positions` [A];
        context: per top layer, the target's rotated keys and values [B, Hkv, S, hd] of the context;
        context_mask [A, S] bool: the context positions each anchor's streams may see."""
        b, a, width = anchors.shape
        g = self.n_streams
        x = (anchors[:, :, None] + self.streams).reshape(b, a * g, width)
        steps = torch.arange(1, g + 1, device=positions.device)
        norm, lm_head, rotary = self.shared
        cos, sin = rotary(x, (positions[:, None] + steps).reshape(1, a * g).expand(b, -1))
        # Stream j sees the streams of its own anchor up to itself, and the anchor's context.
        own = torch.kron(torch.eye(a, device=x.device), torch.ones(g, g, device=x.device).tril()).bool()
        mask = torch.cat([context_mask.repeat_interleave(g, 0), own], 1)
        for layer, past in zip(self.layers, context, strict=True):
            x, _, _ = decoder_layer(layer, x, cos, sin, past, mask)
        return lm_head(norm(x)).view(b, a, g, -1)

    def own_state(self) -> dict[str, Tensor]:
        """The drafter's new tensors only: the LoRA weights and the stream embeddings."""
        return {**self.adapter.lora_state_dict(), "streams": self.streams.detach()}

    def load_own_state(self, state: dict[str, Tensor]) -> None:
        state = dict(state)
        streams = state.pop("streams")
        if streams.shape != self.streams.shape:
            raise ValueError(f"stream embeddings of shape {tuple(streams.shape)} do not fit "
                             f"{tuple(self.streams.shape)}: load a checkpoint made for this target")
        self.streams.data.copy_(streams)
        self.adapter.load_lora_state_dict(state)


def save_streaming(
    path: str | Path, drafter: StreamingDrafter, target: PreTrainedModel, training: dict
) -> Path:
    lora = drafter.adapter.config
    meta = {
        "target": target_signature(target.config), "n_layers": len(drafter.layers),
        "n_streams": drafter.n_streams,
        "lora": {"r": lora.r, "lora_alpha": lora.lora_alpha, "lora_dropout": lora.lora_dropout,
                 "target_modules": sorted(lora.target_modules)},
        "training": training,
    }
    return save_checkpoint(path, KIND, drafter.own_state(), meta)


def load_streaming(path: str | Path, target: PreTrainedModel) -> StreamingDrafter:
    meta, state = load_checkpoint(path, KIND, target.config)
    drafter = StreamingDrafter(target, meta["n_layers"], meta["n_streams"], meta["lora"])
    drafter.load_own_state(state)
    return drafter.eval()
