"""One Hugging Face Llama-family decoder layer run over a block that attends to keys and values from
elsewhere (a drafter's own cache, or the target's): drafters reuse the layer modules, not a copy of them."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers.models.llama.modeling_llama import apply_rotary_pos_emb


def project(attn: nn.Module, h: Tensor, cos: Tensor, sin: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Queries [B, H, n, hd], keys and values [B, Hkv, n, hd] of the normed input h [B, n, D], rotated."""
    b, n, _ = h.shape
    q = attn.q_proj(h).view(b, n, -1, attn.head_dim)
    k = attn.k_proj(h).view(b, n, -1, attn.head_dim)
    v = attn.v_proj(h).view(b, n, -1, attn.head_dim).transpose(1, 2)
    if hasattr(attn, "q_norm"):  # Qwen3 normalises each head before the rotation
        q, k = attn.q_norm(q), attn.k_norm(k)
    q, k = apply_rotary_pos_emb(q.transpose(1, 2), k.transpose(1, 2), cos, sin)
    return q, k, v


def decoder_layer(
    layer: nn.Module, x: Tensor, cos: Tensor, sin: Tensor, past: tuple[Tensor, Tensor] | None, mask: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    """`layer` over x [B, n, D] with rotary (cos, sin) [B, n, hd]: the block attends to `past` keys and values
    ([B, Hkv, S, hd], already rotated) and to itself, as `mask` ([n, S + n] bool, True = attend) allows.
    Returns the layer's output and the block's own keys and values (rotated), for a caller's cache."""
    return attend(layer, layer.input_layernorm(x), x, cos, sin, past, mask)


def attend(
    layer: nn.Module, h: Tensor, x: Tensor, cos: Tensor, sin: Tensor, past: tuple[Tensor, Tensor] | None,
    mask: Tensor,
) -> tuple[Tensor, Tensor, Tensor]:
    """decoder_layer with the attention's input `h` given: the layer's attention over h, added to the
    residual stream x, then its MLP block (EAGLE-3's layer attends over [embedding; feature], not x)."""
    attn = layer.self_attn
    q, k, v = project(attn, h, cos, sin)
    keys, values = (k, v) if past is None else (torch.cat([past[0], k], 2), torch.cat([past[1], v], 2))
    out = F.scaled_dot_product_attention(q, keys, values, attn_mask=mask, enable_gqa=True)
    x = x + attn.o_proj(out.transpose(1, 2).flatten(2))
    return x + layer.mlp(layer.post_attention_layernorm(x)), k, v
