"""Layer-skip self-drafting (Draft & Verify, Zhang et al. 2024; LayerSkip, Elhoushi et al. 2024), training-free:
the draft is the target's own first k layers, then its final norm and LM head.

The draft model is a NativeLlama over those shared modules (no weight is copied) with its own KV cache of k
layers, driven exactly like a separate draft model (DraftModelArm). Reusing the target's cache for those
layers would also be correct: the target writes the same keys and values there for every token it keeps. But
the draft would then write its draft positions into the target's cache behind the target's `length`, the
two would have to agree on which slots hold what after every rollback and tree path, and only the native
target could share. A separate k-layer cache costs k/L of the target's cache and a k-layer prefill per
prompt, and keeps the target's cache owned by the target alone.
"""

from __future__ import annotations

import copy

from torch import nn

from flashspec.arms.draft_model import DraftModelArm
from flashspec.config import ArmConfig
from flashspec.models.base import CausalLM
from flashspec.models.native import NativeLlama, is_supported


class LayerPrefix(nn.Module):
    """A Llama-family causal LM cut after its first k decoder layers, sharing every module with it: what
    NativeLlama needs (`config`, `model.embed_tokens / layers / norm / rotary_emb`, `lm_head`)."""

    def __init__(self, model: nn.Module, k: int) -> None:
        super().__init__()
        self.config = copy.copy(model.config)
        self.config.num_hidden_layers = k
        body = model.model
        self.model = nn.Module()
        self.model.embed_tokens, self.model.norm, self.model.rotary_emb = body.embed_tokens, body.norm, body.rotary_emb
        self.model.layers = nn.ModuleList(body.layers[:k])
        self.lm_head = model.lm_head


def build_layer_skip(cfg: ArmConfig, target: CausalLM) -> DraftModelArm:
    """The arm for ArmConfig(kind="layer_skip", params={"k": K}); k defaults to a quarter of the layers."""
    unknown = sorted(set(cfg.params) - {"k"})
    if unknown:
        raise ValueError(f"unknown layer_skip params {unknown}: use k (how many of the target's layers draft)")
    hf = getattr(target, "model", None)
    if hf is None or not is_supported(hf):
        raise ValueError(
            f"arm kind layer_skip drafts with the target's own layers, which needs a Llama-family target; "
            f"{type(hf).__name__} is not one: use another arm"
        )
    layers = len(hf.model.layers)
    k = cfg.params.get("k")
    k = max(1, layers // 4) if k is None else int(k)
    if not 1 <= k < layers:
        raise ValueError(f"layer_skip k={k}: use 1 to {layers - 1} (the target has {layers} layers)")
    # The draft decodes like the target: captured static steps where the target uses them.
    draft = NativeLlama(LayerPrefix(hf, k), target.max_context, graphs=getattr(target, "graphs", False))
    return DraftModelArm(draft, name=f"layer_skip:{k}")
