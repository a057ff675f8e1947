"""The EAGLE head (Li et al. 2024, arXiv 2401.15077): autoregression over the target's features, not tokens.

Entry i of the head reads the target's feature f_i (its last hidden state, after the final norm, at position
i) and the embedding of the token x_{i+1} that followed it:

    g_i = Decoder(fc([embed(x_{i+1}); f_i]))   ~ f_{i+1},   and   lm_head(g_i) ~ the target's p(x_{i+2})

The embedding and lm_head are the target's own, frozen and not stored: the head's parameters are fc and one
Llama decoder layer with the target's widths. While drafting, a predicted feature g_i stands in for the
unknown f_{i+1} and the head runs on; once the target has verified, its real features replace them.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor, nn
from transformers import LlamaConfig, PretrainedConfig
from transformers.models.llama.modeling_llama import LlamaDecoderLayer, LlamaRotaryEmbedding

from flashspec.drafters.checkpoint import load_checkpoint, save_checkpoint, target_signature
from flashspec.drafters.layers import decoder_layer

KIND = "eagle"


def head_config(target: PretrainedConfig) -> LlamaConfig:
    """One Llama layer with the target's widths, heads and rotary embedding."""
    return LlamaConfig(
        vocab_size=target.vocab_size, hidden_size=target.hidden_size,
        intermediate_size=target.intermediate_size,
        num_attention_heads=target.num_attention_heads, num_key_value_heads=target.num_key_value_heads,
        head_dim=getattr(target, "head_dim", None) or target.hidden_size // target.num_attention_heads,
        rms_norm_eps=target.rms_norm_eps, max_position_embeddings=target.max_position_embeddings,
        rope_parameters=target.rope_parameters, num_hidden_layers=1,
    )


class EagleHead(nn.Module):
    def __init__(self, config: LlamaConfig) -> None:
        super().__init__()
        self.config = config
        width = config.hidden_size
        self.fc = nn.Linear(2 * width, width)
        self.layer = LlamaDecoderLayer(config, layer_idx=0)
        self.rotary = LlamaRotaryEmbedding(config)

    def forward(
        self, features: Tensor, embeds: Tensor, positions: Tensor, mask: Tensor,
        past: tuple[Tensor, Tensor] | None = None,
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Predicted next features [B, n, D] from features f_i and embeddings of x_{i+1} ([B, n, D] each) at
        positions i ([B, n]); the block attends to `past` keys/values and itself under `mask` ([n, S + n]).
        Also returns the block's keys and values, for the caller's cache."""
        x = self.fc(torch.cat([embeds, features], -1))
        cos, sin = self.rotary(x, positions)
        return decoder_layer(self.layer, x, cos, sin, past, mask)


def save_eagle(path: str | Path, head: EagleHead, target_config: PretrainedConfig, training: dict) -> Path:
    meta = {"target": target_signature(target_config), "head": head.config.to_dict(), "training": training}
    return save_checkpoint(path, KIND, head.state_dict(), meta)


def load_eagle(path: str | Path, target_config: PretrainedConfig) -> EagleHead:
    meta, state = load_checkpoint(path, KIND, target_config)
    head = EagleHead(LlamaConfig(**meta["head"]))
    head.load_state_dict(state)
    return head.eval()
