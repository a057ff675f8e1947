"""EAGLE-3 arm: an EAGLE-3 head as its authors released it (flashspec/drafters/eagle3.py) drafts the same
EAGLE-2 dynamic tree as the EAGLE arm (flashspec/arms/eagle.py), from the target's fused low, middle and high
features instead of its last hidden state, and over its reduced vocabulary mapped back to the target's ids.

The target hands over the inputs of its layers 2, L // 2 and L - 3 with every forward (the native backend's
capture, set here); the arm keeps fc of them per committed position. A chain (top_k = 1) samples from the
head's distribution over the target's vocabulary, zero outside the draft vocabulary, and states it; the
verifier keeps the output the target's either way.
"""

from __future__ import annotations

import torch
from torch import Tensor

from flashspec.arms.eagle import EagleArm, tree_params
from flashspec.config import ArmConfig
from flashspec.drafters.eagle3 import Eagle3Head, feature_layers, load_eagle3
from flashspec.drafters.official import EAGLE_FILES, is_official
from flashspec.models.base import CausalLM, Scores


class Eagle3Arm(EagleArm):
    def __init__(self, head: Eagle3Head, embed, vocab: int, max_context: int, top_k: int = 4, depth: int = 6,
                 name: str = "eagle3") -> None:
        super().__init__(head, embed, lambda out: head.logits(out, vocab), max_context, top_k, depth, name)

    @torch.inference_mode()
    def target_features(self, scores: Scores) -> Tensor:
        if scores.layer_hidden is None:
            raise RuntimeError("the eagle3 arm needs the target's captured layer inputs (set_capture_layer)")
        return self.head.fc(scores.layer_hidden.to(self.features.values.dtype))


def build_eagle3(cfg: ArmConfig, target: CausalLM) -> Eagle3Arm:
    """The arm for ArmConfig(kind="eagle3", model=RELEASED_HEAD, params={"top_k": 4, "depth": 6})."""
    if not cfg.model:
        raise ValueError("arm kind eagle3 needs `model`: a directory with an EAGLE-3 head as released")
    if not is_official(cfg.model, "eagle3"):
        raise ValueError(f"no eagle3 head at {cfg.model!r}: expected EAGLE-3's config.json (with draft_vocab_size) "
                         f"and {' or '.join(EAGLE_FILES)}, as its authors release them")
    top_k, depth = tree_params(cfg, target)
    if not hasattr(target, "set_capture_layer"):
        raise ValueError(f"eagle3 reads the target's inner layers, which {type(target).__name__} does not hand "
                         "over: use a Llama-family target on target.backend auto or native")
    hf = target.model
    layers = feature_layers(hf.config.num_hidden_layers)
    if target.capture_layer not in (None, layers):
        raise ValueError(f"the target already hands layer {target.capture_layer} to another arm (streaming): "
                         "eagle3 cannot share a target with it")
    head, own_embed = load_eagle3(cfg.model, hf.config)
    target.set_capture_layer(layers)
    embed = hf.get_input_embeddings() if own_embed is None else own_embed.to(hf.device, hf.dtype)
    head = head.to(device=hf.device, dtype=hf.dtype)
    return Eagle3Arm(head, embed, hf.config.vocab_size, target.max_context, top_k, depth)
