"""Draft arms, built from `ArmConfig`s. An arm kind is a config choice: add one here and in docs/."""

from __future__ import annotations

from dataclasses import replace

from transformers import PreTrainedTokenizerBase

from flashspec.arms.base import Arm, Draft
from flashspec.arms.draft_model import DraftModelArm, build_shared_head_draft
from flashspec.arms.eagle import EagleArm, build_eagle
from flashspec.arms.eagle3 import Eagle3Arm, build_eagle3
from flashspec.arms.layer_skip import build_layer_skip
from flashspec.arms.medusa import MedusaArm, build_medusa
from flashspec.arms.prompt_lookup import PromptLookupArm
from flashspec.arms.streaming import StreamingArm, build_streaming
from flashspec.config import ArmConfig, TargetConfig
from flashspec.drafters.shared_head import is_shared_head
from flashspec.models import CausalLM, load_model

__all__ = [
    "Arm", "Draft", "DraftModelArm", "Eagle3Arm", "EagleArm", "MedusaArm", "PromptLookupArm", "StreamingArm",
    "build_arm", "check_same_tokenizer",
]


def check_same_tokenizer(target: PreTrainedTokenizerBase, draft: PreTrainedTokenizerBase, name: str) -> None:
    """Speculative decoding compares token ids, so target and draft must share one vocabulary."""
    if target.get_vocab() != draft.get_vocab():
        raise ValueError(
            f"draft {name!r} does not share the target's tokenizer ({len(draft)} vs {len(target)} tokens, "
            "or the same size with different ids): pick a draft model from the target's family"
        )


def build_prompt_lookup(cfg: ArmConfig) -> PromptLookupArm:
    """Trees (candidates > 1) need a target that verifies them: the engine's check_tree_support says so."""
    unknown = sorted(set(cfg.params) - {"candidates"})
    if unknown:
        raise ValueError(f"unknown prompt_lookup params {unknown}: use candidates (continuations merged into a tree)")
    return PromptLookupArm(cfg.ngram_max, cfg.ngram_min, int(cfg.params.get("candidates", 1)))


def build_arm(cfg: ArmConfig, target: CausalLM, tokenizer: PreTrainedTokenizerBase, target_cfg: TargetConfig) -> Arm:
    if cfg.kind == "prompt_lookup":
        return build_prompt_lookup(cfg)
    if cfg.kind == "draft_model":
        if not cfg.model:
            raise ValueError("arm kind draft_model needs `model`: a path, hub id or 'tiny-draft'")
        if is_shared_head(cfg.model):
            return build_shared_head_draft(cfg, target)
        draft_cfg = replace(target_cfg, model=cfg.model, device_map=None)
        model, draft_tokenizer = load_model(cfg.model, draft_cfg)
        check_same_tokenizer(tokenizer, draft_tokenizer, cfg.model)
        if model.vocab_size != target.vocab_size:
            raise ValueError(
                f"draft {cfg.model!r} has {model.vocab_size} logits per token, the target {target.vocab_size}: "
                "their vocabularies must match; pick a draft model from the target's family"
            )
        return DraftModelArm(model, name=f"draft:{cfg.model.rstrip('/').split('/')[-1]}")
    if cfg.kind == "eagle":
        return build_eagle(cfg, target)
    if cfg.kind == "eagle3":
        return build_eagle3(cfg, target)
    if cfg.kind == "streaming":
        return build_streaming(cfg, target)
    if cfg.kind == "medusa":
        return build_medusa(cfg, target)
    if cfg.kind == "layer_skip":
        return build_layer_skip(cfg, target)
    raise ValueError(
        f"unknown arm kind {cfg.kind!r}: use prompt_lookup, draft_model, eagle, eagle3, streaming, medusa or "
        "layer_skip"
    )
